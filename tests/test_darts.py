"""DARTS (archlab/models/search/darts.py, archlab/train/darts.py).

Checked: the second-order architecture gradient (finite-difference Hessian-vector product, eq. 8)
equals the exact gradient of L_val(w - xi grad_w L_train(w, alpha), alpha) through autograd, in
float64; the first-order step is the plain gradient of the alpha-half loss; derivation keeps two
non-``none`` edges per node, the strongest; derived networks run on any length; a search resumes
bit-exactly and writes its genotype, which builds a ``darts_net``.
"""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import archlab
from archlab.data import Split
from archlab.engine.device import Precision
from archlab.engine.distributed import DistInfo
from archlab.engine.loop import Context
from archlab.errors import ArchlabError
from archlab.models.search.darts import PRIMITIVES, derive
from archlab.recipe import from_dict
from archlab.runner import train
from archlab.train.darts import Darts

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = tomllib.loads("""
name = "darts_tiny"
[model]
name = "darts_supernet"
channels = 4
layers = 3
steps = 2
multiplier = 2
[data]
name = "mnist1d"
batch_size = 16
options = { num_samples = 300 }
[optim]
name = "sgd"
lr = 0.05
momentum = 0.9
[optim.arch]
name = "adam"
lr = 3e-3
betas = [0.5, 0.999]
weight_decay = 1e-3
[train]
loop = "darts"
steps = 4
eval_every = 2
log_every = 2
checkpoint_every = 2
checkpoint_minutes = 0
[loop]
order = 2
""")


def make_loop(raw: dict, dtype: torch.dtype = torch.float32) -> Darts:
    recipe = from_dict(copy.deepcopy(raw))
    torch.manual_seed(0)
    data = Darts.load_data(recipe)
    model = Darts.build_model(recipe, data, torch.device("cpu")).to(dtype)
    cpu = torch.device("cpu")
    loop = Darts(recipe, model, data, Context(device=cpu, precision=Precision("fp32", cpu), dist=DistInfo(), seed=0))
    loop.w_split = Split(loop.w_split.x.to(dtype), loop.w_split.y)
    loop.a_split = Split(loop.a_split.x.to(dtype), loop.a_split.y)
    return loop


def test_second_order_gradient_equals_autograd_through_the_virtual_step() -> None:
    # The paper's step (hvp_eps 0.01) is an approximation; a small step in float64 checks the algebra.
    raw = copy.deepcopy(TINY)
    raw["loop"]["hvp_eps"] = 1e-6
    loop = make_loop(raw, torch.float64)
    model = loop.model
    w_idx, a_idx = loop.w_stream.next(), loop.a_stream.next()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loop.a.zero_grad()
    loop._unrolled_arch_grad(w_idx, a_idx)
    approx = [a.grad.clone() for a in model.arch.parameters()]
    after = model.state_dict()
    # The weights come back exactly (BatchNorm running statistics aside: extra forwards update them).
    assert all(torch.equal(before[k], after[k]) for k in before if "running" not in k and "num_batches" not in k)

    # Exact: differentiate L_val(w - xi grad_w L_train(w, alpha), alpha) w.r.t. alpha through the step.
    names = [n for n, _ in model.body.named_parameters()]
    weights = [p for _, p in model.body.named_parameters()]
    alphas = list(model.arch.parameters())
    xi = loop.w.lr

    def loss(params: list[torch.Tensor], split: Split, idx: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, {**{f"body.{n}": p for n, p in zip(names, params, strict=True)}},
                              (split.x[idx],))
        return F.cross_entropy(out, split.y[idx])

    g_train = torch.autograd.grad(loss(weights, loop.w_split, w_idx), weights, create_graph=True)
    unrolled = [w - xi * g for w, g in zip(weights, g_train, strict=True)]
    exact = torch.autograd.grad(loss(unrolled, loop.a_split, a_idx), alphas)
    for a, e in zip(approx, exact, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-9)
    # ... and it differs from the first-order gradient (the correction term is not negligible here).
    first = torch.autograd.grad(loss(weights, loop.a_split, a_idx), alphas)
    assert any((f - e).abs().max() > 1e-4 * e.abs().max() for f, e in zip(first, exact, strict=True))


def test_first_order_step_uses_the_alpha_half_gradient_and_arch_start_freezes_alpha() -> None:
    raw = copy.deepcopy(TINY)
    raw["loop"] = {"order": 1}
    raw["optim"]["arch"]["name"] = "sgd"
    raw["optim"]["arch"]["betas"] = [0.9, 0.999]
    raw["optim"]["arch"]["weight_decay"] = 0.0
    loop = make_loop(raw)
    alpha0 = [a.detach().clone() for a in loop.model.arch.parameters()]
    w_state = copy.deepcopy(loop.w_stream.state_dict())
    a_state = copy.deepcopy(loop.a_stream.state_dict())
    a_idx = loop.a_stream.next()
    expected = torch.autograd.grad(F.cross_entropy(loop.model.train()(loop.a_split.x[a_idx]), loop.a_split.y[a_idx]),
                                   list(loop.model.arch.parameters()))
    loop.w_stream.load_state_dict(w_state)
    loop.a_stream.load_state_dict(a_state)
    loop.train_step(0)
    lr = raw["optim"]["arch"]["lr"]
    for a, a0, g in zip(loop.model.arch.parameters(), alpha0, expected, strict=True):
        torch.testing.assert_close(a.detach(), a0 - lr * g, rtol=1e-4, atol=1e-7)

    raw["loop"] = {"order": 1, "arch_start": 100}
    loop = make_loop(raw)
    alpha0 = [a.detach().clone() for a in loop.model.arch.parameters()]
    out = loop.train_step(0)
    assert "arch_loss" not in out
    assert all(torch.equal(a, b) for a, b in zip(loop.model.arch.parameters(), alpha0, strict=True))


def test_derive_keeps_the_two_strongest_non_none_edges_per_node() -> None:
    steps, n_ops = 3, len(PRIMITIVES)
    alpha = torch.zeros(2 + 3 + 4, n_ops)
    none, sep3, pool = PRIMITIVES.index("none"), PRIMITIVES.index("sep_conv_3"), PRIMITIVES.index("max_pool_3")
    alpha[:, none] = 10.0  # 'none' dominates everywhere and must still never be chosen
    alpha[0, sep3], alpha[1, pool] = 3.0, 1.0                 # node 0: inputs 0 and 1
    alpha[2, pool], alpha[3, sep3], alpha[4, sep3] = 0.5, 4.0, 5.0  # node 1: edges from 1 and 2 win
    alpha[5, sep3], alpha[8, pool] = 2.0, 6.0                 # node 2: edges from 0 and 3 win
    assert derive(alpha, steps) == ["sep_conv_3:0", "max_pool_3:1", "sep_conv_3:1", "sep_conv_3:2",
                                    "sep_conv_3:0", "max_pool_3:3"]


@pytest.mark.parametrize("length", [40, 33, 7])
def test_derived_network_runs_on_any_length_and_rejects_bad_genotypes(length: int) -> None:
    net = archlab.create("darts_net", channels=4, normal=["dil_conv_5:0", "skip_connect:1", "avg_pool_3:2",
                                                         "sep_conv_5:0", "max_pool_3:1", "dil_conv_3:3"],
                         reduce=["skip_connect:0", "sep_conv_3:1", "skip_connect:2", "max_pool_3:0",
                                 "dil_conv_5:3", "avg_pool_3:1"])
    out = net(torch.randn(3, length))
    assert out.shape == (3, 10)
    out.sum().backward()
    with pytest.raises(ArchlabError, match=r"normal\[2\] = 'sep_conv_3:3': expected 'op:input'"):
        archlab.create("darts_net", normal=["sep_conv_3:0", "sep_conv_3:1", "sep_conv_3:3", "sep_conv_3:1",
                                            "sep_conv_3:0", "sep_conv_3:1"])
    with pytest.raises(ArchlabError, match="2 entries per intermediate node"):
        archlab.create("darts_net", normal=["none:0"])


def test_search_resumes_exactly_and_writes_a_buildable_genotype(assert_resume_exact, tmp_path: Path) -> None:
    assert_resume_exact(TINY)
    summary = train(from_dict(copy.deepcopy(TINY)), out=tmp_path / "run", progress=False)
    assert summary["steps"] == 4 and (tmp_path / "run" / "plots" / "alpha.png").is_file()
    genotype = json.loads((tmp_path / "run" / "genotype.json").read_text())
    assert genotype["normal"] == archlab.load(tmp_path / "run").genotype()["normal"]
    net = archlab.create("darts_net", steps=2, multiplier=2, normal=genotype["normal"], reduce=genotype["reduce"])
    assert net(torch.randn(2, 40)).shape == (2, 10)


def test_darts_loop_rejects_models_it_cannot_search() -> None:
    raw = copy.deepcopy(TINY)
    raw["model"] = {"name": "darts_net"}
    with pytest.raises(ArchlabError, match="searches a supernet"):
        train(from_dict(raw), out=None, progress=False)
    raw = copy.deepcopy(TINY)
    raw["model"]["name"] = "cnn1d"
    with pytest.raises(ArchlabError, match="cannot train it"):
        from_dict(raw)


def test_images_are_read_in_raster_order():
    """digits' [B, 1, 8, 8] is the 64-sample signal [B, 1, 64] for the supernet and a derived net."""
    x = torch.rand(3, 1, 8, 8)
    for name in ("darts_supernet", "darts_net"):
        torch.manual_seed(0)
        net = archlab.create(name, channels=4).eval()
        torch.testing.assert_close(net(x), net(x.reshape(3, 1, 64)))
