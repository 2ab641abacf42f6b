"""Dense bag-of-words features through the plain API: ``model(x, edge_index)`` with a dense, mostly-zero ``x``
takes the sparse CSR path by itself (cached per ``x`` tensor) and computes what the dense path computes."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

import archlab
from archlab.graph import sparse_features
from archlab.models.graph.base import random_graph

pytestmark = pytest.mark.usefixtures("single_thread")


def _bag_of_words(n: int = 40, f: int = 60, seed: int = 0) -> torch.Tensor:
    """Row-normalized 0/1 features, about 5% non-zero (like Cora's 1.3%), every row non-empty."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, f, generator=gen) < 0.05).float()
    x[torch.arange(n), torch.randint(0, f, (n,), generator=gen)] = 1.0
    return x / x.sum(1, keepdim=True)


# Dropout off so that train mode is deterministic: the sparse path draws its dropout masks over the
# non-zeros only (same distribution, different random stream), so only dropout-free steps compare exactly.
NO_DROPOUT: dict[str, dict[str, Any]] = {
    "gcn": {"dropout": 0.0},
    "gat": {"dropout": 0.0, "attn_dropout": 0.0, "heads": 2, "hidden_channels": 4},
    "sage": {"dropout": 0.0},
}


def test_sparse_features_converts_only_mostly_zero_float_matrices():
    x = _bag_of_words()
    csr = sparse_features(x)
    assert csr.layout == torch.sparse_csr
    torch.testing.assert_close(csr.to_dense(), x, atol=0, rtol=0)
    dense = torch.randn(10, 6)
    assert sparse_features(dense) is dense  # no zeros: stays dense
    assert sparse_features(x, below=0.01) is x  # threshold below the density
    assert sparse_features(csr) is csr
    assert sparse_features(x.long()).layout == torch.strided  # integer ids are not features to multiply
    wants_grad = x.clone().requires_grad_()
    assert sparse_features(wants_grad) is wants_grad  # the sparse path gives no gradient for x


@pytest.mark.parametrize("name", ["gcn", "gat", "sage"])
def test_plain_api_dense_features_equal_dense_path(name: str):
    """Forward and every parameter gradient of ``model(dense x)`` (sparse path) equal the dense path's."""
    x = _bag_of_words()
    _, edge_index = random_graph(40, 1, seed=1)
    torch.manual_seed(0)
    model = archlab.create(name, in_channels=60, out_channels=5, **NO_DROPOUT[name])
    assert model.input_features(x).layout == torch.sparse_csr  # the fast path is taken

    def step(sparse_below: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.sparse_features_below = sparse_below  # 0: keep x dense (the reference path)
        model.zero_grad(set_to_none=True)
        out = model(x, edge_index)
        F.cross_entropy(out, torch.arange(40) % 5).backward()
        return out.detach(), [p.grad.clone() for p in model.parameters()]

    model.train()
    out_sparse, grads_sparse = step(0.25)
    out_dense, grads_dense = step(0.0)
    torch.testing.assert_close(out_sparse, out_dense, atol=1e-5, rtol=1e-5)
    for g_sparse, g_dense in zip(grads_sparse, grads_dense, strict=True):
        torch.testing.assert_close(g_sparse, g_dense, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["gcn", "gat", "sage"])
def test_plain_api_eval_equals_dense_path_and_explicit_csr(name: str):
    """Default dropouts, eval mode: dense ``x`` (auto), dense path and an explicit CSR ``x`` agree."""
    x = _bag_of_words(seed=2)
    _, edge_index = random_graph(40, 1, seed=3)
    model = archlab.create(name, in_channels=60, out_channels=5).eval()
    with torch.no_grad():
        auto = model(x, edge_index)
        explicit = model(x.to_sparse_csr(), edge_index)
        model.sparse_features_below = 0.0
        dense = model(x, edge_index)
    torch.testing.assert_close(auto, dense, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(auto, explicit, atol=0, rtol=0)


def test_input_features_are_cached_per_tensor_and_rebuilt_after_changes():
    model = archlab.create("gcn", in_channels=60, out_channels=5)
    x = _bag_of_words()
    first = model.input_features(x)
    assert model.input_features(x) is first  # same tensor: converted once
    x.mul_(2.0)  # in place: the cached copy is stale
    again = model.input_features(x)
    assert again is not first
    torch.testing.assert_close(again.to_dense(), x, atol=0, rtol=0)
    other = _bag_of_words(seed=4)
    torch.testing.assert_close(model.input_features(other).to_dense(), other, atol=0, rtol=0)


def test_features_that_require_grad_stay_dense_and_get_gradients():
    """Attribution methods differentiate with respect to ``x``: that input must not go sparse."""
    model = archlab.create("gcn", in_channels=60, out_channels=5).eval()
    _, edge_index = random_graph(40, 1, seed=5)
    x = _bag_of_words().requires_grad_()
    assert model.input_features(x) is x
    model(x, edge_index).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
