"""Integrated Gradients' fast path (integrated_gradients_fast.py) equals the reference (``fast=False``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import archlab
import archlab.explain as E
from archlab.errors import ArchlabError
from archlab.explain.integrated_gradients_fast import first_affine_layer

pytestmark = pytest.mark.usefixtures("single_thread")


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3), nn.Tanh(),
                         nn.Flatten(), nn.Linear(6 * 2 * 2, 5)).eval()


class InputSkip(nn.Module):
    """Uses the raw input twice: through the first conv and directly (a nonlinear term of x itself)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.head = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x)).mean((2, 3))
        return self.head(h) + torch.sin(x).flatten(1).sum(1, keepdim=True) * torch.arange(4.0)


class Twice(nn.Module):
    """Calls its first conv twice: the fast path must not apply."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(torch.relu(self.conv(x)))).flatten(1)[:, :3]


def both(model: nn.Module, x: torch.Tensor, target, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    fast = E.attribute(model, x, target, "integrated_gradients", **kw)
    ref = E.attribute(model, x, target, "integrated_gradients", fast=False, **kw)
    return fast, ref


@pytest.mark.parametrize("rule", ["gausslegendre", "riemann_right", "riemann_trapezoid"])
def test_fast_path_equals_the_reference_on_a_cnn(rule):
    model = cnn()
    x = torch.randn(5, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    assert first_affine_layer(model, x) is model[0]
    base = torch.randn(5, 2, 8, 8, generator=torch.Generator().manual_seed(2))
    for target, kw in ((torch.tensor([0, 1, 2, 3, 4]), {}), (3, {"baselines": base}),
                       (torch.tensor([4, 4, 0, 1, 2]), {"baselines": -0.5, "internal_batch_size": 7})):
        fast, ref = both(model, x, target, n_steps=20, rule=rule, **kw)
        assert (fast - ref).abs().max() <= 1e-5 * max(1.0, float(ref.abs().max()))
        assert fast.abs().sum() > 0
    assert "forward" not in model[0].__dict__          # the layer's own forward is back


def test_fast_path_is_complete_and_equal_on_the_vit_and_an_mlp():
    torch.manual_seed(0)
    vit = archlab.create("vit", image_size=8, patch_size=4, in_channels=1, num_classes=3, dim=16, depth=2, heads=2,
                         mlp_dim=32).eval()
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    assert first_affine_layer(vit, x) is vit.patch_embed
    fast, ref = both(vit, x, torch.tensor([0, 1, 2]), n_steps=256)
    assert (fast - ref).abs().max() <= 1e-5
    with torch.no_grad():
        gap = vit(x)[torch.arange(3), torch.arange(3)] - vit(torch.zeros_like(x))[torch.arange(3), torch.arange(3)]
    assert (fast.flatten(1).sum(1) - gap).abs().max() <= 1e-3              # completeness, as the reference
    mlp = nn.Sequential(nn.Linear(6, 8), nn.Softplus(), nn.Linear(8, 2)).eval()
    v = torch.randn(4, 6)
    assert first_affine_layer(mlp, v) is mlp[0]
    fast, ref = both(mlp, v, 1, n_steps=16)
    assert (fast - ref).abs().max() <= 1e-6


def test_other_uses_of_the_input_keep_their_gradient():
    torch.manual_seed(0)
    model = InputSkip().eval()
    x = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(4))
    assert first_affine_layer(model, x) is model.conv
    fast, ref = both(model, x, torch.tensor([1, 2, 3, 0]), n_steps=32, internal_batch_size=50)
    assert (fast - ref).abs().max() <= 1e-5
    conv_only = E.attribute(model, x, 0, "integrated_gradients", n_steps=32)  # target 0: the sin term has weight 0
    assert (conv_only - E.attribute(model, x, 0, "integrated_gradients", n_steps=32, fast=False)).abs().max() <= 1e-5


def test_the_reference_runs_where_the_fast_path_does_not_apply():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 5, 5)
    twice = Twice().eval()
    assert first_affine_layer(twice, x) is None                              # called twice
    flat = nn.Sequential(nn.Flatten(), nn.Linear(25, 3)).eval()
    assert first_affine_layer(flat, x) is None                               # the Linear gets a reshaped copy

    class MyLinear(nn.Linear):                                               # a subclass may compute anything
        def forward(self, v: torch.Tensor) -> torch.Tensor:
            return super().forward(v) ** 2

    assert first_affine_layer(nn.Sequential(MyLinear(5, 3)).eval(), x) is None
    for model in (twice, flat):
        fast, ref = both(model, x, 1, n_steps=8)
        assert torch.equal(fast, ref)


def test_the_layer_is_restored_after_an_error():
    model = cnn()
    x = torch.randn(2, 2, 8, 8)
    with pytest.raises(ArchlabError, match="target"):
        E.attribute(model, x, 9, "integrated_gradients", n_steps=4)
    assert "forward" not in model[0].__dict__
    assert model(x).shape == (2, 5)
