"""MobileNetV2 and EfficientNet: published parameter counts and multiply-adds, shapes at MNIST and ImageNet
sizes, width multiplier and compound scaling, squeeze-and-excitation, inverted residuals, stochastic depth."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import pytest
import torch
from torch import nn

import archlab
from archlab.models.classic.efficientnet import ALPHA, BETA, GAMMA
from archlab.nn.mobile import ConvBNAct, InvertedResidual, SqueezeExcitation, drop_path, make_divisible
from archlab.toolbox.flops import count_flops

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "classic"


pytestmark = pytest.mark.usefixtures("single_thread")


def _recipe_model(name: str) -> nn.Module:
    table = dict(tomllib.loads((RECIPES / f"{name}.toml").read_text())["model"])
    return archlab.create(table.pop("name"), **table)


def _blocks(model: nn.Module) -> list[InvertedResidual]:
    return [m for m in model.modules() if isinstance(m, InvertedResidual)]


# ------------------------------------------------------------------- published sizes (ImageNet configurations)


def test_mobilenetv2_imagenet_parameters_and_madds():
    with torch.device("meta"):  # shapes only: counting needs no arithmetic
        model = archlab.create("mobilenetv2")
    assert (model.config.num_classes, model.config.in_channels, model.config.width_mult) == (1000, 3, 1.0)
    assert model.num_parameters() == 3_504_872  # torchvision mobilenet_v2; paper Table 4: 3.4M
    madds = count_flops(model, (1, 3, 224, 224)).macs
    assert madds == pytest.approx(300e6, rel=0.01)  # paper Table 4: 300M MAdds
    assert len(_blocks(model)) == 17 and model.config.last_channels == 1280


@pytest.mark.parametrize("variant, params, gmadds", [
    ("b0", 5_288_548, 0.39), ("b1", 7_794_184, 0.69), ("b2", 9_109_994, None), ("b3", 12_233_232, None),
    ("b4", 19_341_616, 4.39), ("b5", 30_389_784, None), ("b6", 43_040_704, 19.07), ("b7", 66_347_960, 37.75)])
def test_efficientnet_b0_to_b7(variant, params, gmadds):
    """B0's 5,288,548 is the issue's (paper Table 2: 5.3M); every count and the multiply-adds at each variant's
    resolution are torchvision's efficientnet_b* ``num_params`` / ``GFLOPS``. Built on the meta device: shapes only."""
    with torch.device("meta"):
        model = archlab.create("efficientnet", variant=variant)
    assert model.num_parameters() == params
    if gmadds is not None:
        side = model.config.coefficients()[2]
        assert count_flops(model, (1, 3, side, side)).macs / 1e9 == pytest.approx(gmadds, abs=0.005)


def test_efficientnet_b0_madds():
    with torch.device("meta"):
        model = archlab.create("efficientnet")
    assert model.config.coefficients() == (1.0, 1.0, 224, 0.2)
    assert count_flops(model, (1, 3, 224, 224)).macs / 1e9 == pytest.approx(0.39, abs=0.005)  # paper Table 2
    assert len(_blocks(model)) == 16 and model.last_channels == 1280


@pytest.mark.parametrize("name", ["mobilenetv2", "efficientnet"])
def test_forward_at_imagenet_size(name):
    model = archlab.create(name).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert model.features(x).shape[-2:] == (7, 7)  # total stride 32
        assert model(x).shape == (1, 1000)


# ------------------------------------------------------------------------------- the MNIST recipes' models


@pytest.mark.parametrize("recipe, params", [("mnist_mobilenetv2", 2_236_106), ("mnist_efficientnet_b0", 4_019_782)])
def test_mnist_recipe_models(recipe, params):
    model = _recipe_model(recipe).eval()
    assert model.num_parameters() == params
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert model.features(x).shape[-2:] == (2, 2)  # 28 -> 14 -> 7 -> 4 -> 2, stage 6 keeps stride 1
        assert model(x).shape == (3, 10)
    # the strides change where the blocks run, never their parameters: the same network at ImageNet strides
    cfg = dict(tomllib.loads((RECIPES / f"{recipe}.toml").read_text())["model"])
    name = cfg.pop("name")
    cfg.pop("strides")
    assert archlab.create(name, **cfg).num_parameters() == params


# ---------------------------------------------------------------------------------------- channel rounding


def test_make_divisible():
    assert make_divisible(32 * 0.35) == 16  # 11.2 -> 8 would lose more than 10%, so one step up
    assert make_divisible(24 * 1.1) == 24 and make_divisible(1280 * 1.4) == 1792 and make_divisible(3) == 8
    for v in torch.linspace(8, 2000, 997).tolist():
        r = make_divisible(v)
        assert r % 8 == 0 and 0.9 * v <= r < v + 8


@pytest.mark.parametrize("alpha", [0.35, 0.5, 0.75, 1.0, 1.4])
def test_width_multiplier(alpha):
    model = archlab.create("mobilenetv2", width_mult=alpha, num_classes=10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.out_channels % 8 == 0 for c in convs)
    outs = sorted({b.block[-1][0].out_channels for b in _blocks(model)})
    assert outs == sorted({make_divisible(c * alpha) for c in (16, 24, 32, 64, 96, 160, 320)})
    assert model.config.last_channels == make_divisible(1280 * max(1.0, alpha))  # the head never shrinks
    assert convs[0].out_channels == make_divisible(32 * alpha)


def test_width_multiplier_cost_is_about_quadratic():
    base = count_flops(archlab.create("mobilenetv2"), (1, 3, 224, 224)).macs
    half = count_flops(archlab.create("mobilenetv2", width_mult=0.5), (1, 3, 224, 224)).macs
    assert 0.25 * 0.9 < half / base < 0.25 * 1.5  # alpha^2, plus the unshrunk 1280-wide head


# ------------------------------------------------------------------------------------------ compound scaling


def test_compound_scaling_from_phi():
    assert ALPHA * BETA**2 * GAMMA**2 == pytest.approx(2.0, abs=0.1)  # the paper's constraint
    zero = archlab.create("efficientnet", phi=0.0)
    assert zero.config.coefficients()[:3] == (1.0, 1.0, 224)
    assert zero.num_parameters() == 5_288_548
    cfg = archlab.create("efficientnet", phi=1.0).config
    width, depth, resolution, _ = cfg.coefficients()
    assert (width, depth, resolution) == (pytest.approx(1.1), pytest.approx(1.2), 258)  # 224 * 1.15 = 257.6


def test_compound_scaling_cost():
    """Width and resolution at phi = 1 multiply the cost by about beta^2 gamma^2 = 1.6 (channel rounding and
    ceil'd feature maps make it 1.72); depth adds more (its ceil doubles the one-block stages: 2.57x in all,
    the paper's "about 2^phi" is loose)."""
    b0 = count_flops(archlab.create("efficientnet"), (1, 3, 224, 224)).macs

    def ratio(**overrides):
        model = archlab.create("efficientnet", **overrides)
        side = model.config.coefficients()[2]
        return count_flops(model, (1, 3, side, side)).macs / b0

    shallow = ratio(phi=1.0, depth_coefficient=1.0)
    assert shallow == pytest.approx(BETA**2 * GAMMA**2, rel=0.1)
    assert ratio(phi=1.0) > shallow > ratio(phi=1.0, depth_coefficient=1.0, width_coefficient=1.0) > 1


def test_depth_and_width_coefficients():
    b1 = archlab.create("efficientnet", variant="b1")
    assert len(_blocks(b1)) == sum(math.ceil(1.1 * n) for n in (1, 2, 2, 3, 3, 4, 1)) == 23
    # explicit coefficients override the variant's: B2 with B0's width and depth is B0 (up to dropout)
    assert archlab.create("efficientnet", variant="b2", width_coefficient=1.0,
                          depth_coefficient=1.0).num_parameters() == 5_288_548
    b2 = archlab.create("efficientnet", variant="b2").config
    assert b2.coefficients() == (1.1, 1.2, 260, 0.3)
    assert b2.width(32) == 32 and b2.width(1280) == 1408 and b2.repeats(4) == 5
    b3 = archlab.registry.get("efficientnet").config_class(variant="b3")
    assert archlab.registry.get("efficientnet").cls.example_input(b3, 1).shape == (1, 3, 300, 300)


def test_bad_configs_are_one_line_errors():
    with pytest.raises(archlab.ArchlabError, match="strides"):
        archlab.create("mobilenetv2", strides=[1, 2, 2])
    with pytest.raises(archlab.ArchlabError, match="stem_stride"):
        archlab.create("efficientnet", stem_stride=3)
    with pytest.raises(archlab.ArchlabError, match="'b7'"):
        archlab.create("efficientnet", variant="b8")
    with pytest.raises(archlab.ArchlabError, match="width_coefficient"):
        archlab.create("efficientnet", width_coefficient=0.0)


# ------------------------------------------------------------------------------------------------ blocks


def test_squeeze_excitation_is_a_per_channel_gate():
    torch.manual_seed(0)
    se = SqueezeExcitation(6, 2)
    h = torch.randn(3, 6, 5, 4)
    gate = se(h) / h
    assert torch.allclose(gate, gate[..., :1, :1].expand_as(gate), atol=1e-5)  # constant over H, W
    assert ((gate > 0) & (gate < 1)).all()
    with torch.no_grad():  # a zero excitation layer gives sigmoid(0) = 1/2 everywhere
        se.expand.weight.zero_()
        se.expand.bias.zero_()
    torch.testing.assert_close(se(h), h / 2)
    # the gate depends on the channel means only: any spatial permutation commutes with SE
    perm = torch.randperm(20)
    flat = h.flatten(2)[..., perm].reshape_as(h)
    torch.testing.assert_close(se(flat), se(h).flatten(2)[..., perm].reshape_as(h))


def test_efficientnet_se_width_is_a_quarter_of_the_block_input():
    model = archlab.create("efficientnet")
    for block in _blocks(model):
        c_in = block.block[0][0].in_channels
        se = next(m for m in block.modules() if isinstance(m, SqueezeExcitation))
        assert se.reduce.out_channels == max(1, int(c_in * 0.25))
    assert not any(isinstance(m, SqueezeExcitation) for m in archlab.create("efficientnet", se_ratio=0.0).modules())
    assert not any(isinstance(m, SqueezeExcitation) for m in archlab.create("mobilenetv2").modules())
    assert any(isinstance(m, nn.SiLU) for m in model.modules())
    assert not any(isinstance(m, nn.ReLU6) for m in model.modules())
    assert any(isinstance(m, nn.ReLU6) for m in archlab.create("mobilenetv2").modules())


def test_inverted_residual_structure():
    block = InvertedResidual(16, 16, stride=1, expand_ratio=6)
    expand, depthwise, project = block.block
    assert expand[0].out_channels == 96 and depthwise[0].groups == 96 and project[0].out_channels == 16
    assert len(project) == 2 and isinstance(project[1], nn.BatchNorm2d)  # linear bottleneck: no activation
    assert block.use_residual
    assert not InvertedResidual(16, 16, stride=2).use_residual
    assert not InvertedResidual(16, 24, stride=1).use_residual
    no_expand = InvertedResidual(32, 16, expand_ratio=1)
    assert len(no_expand.block) == 2 and no_expand.block[0][0].groups == 32  # depthwise straight away
    assert InvertedResidual(8, 12, stride=2, kernel_size=5)(torch.randn(2, 8, 7, 7)).shape == (2, 12, 4, 4)


def test_inverted_residual_identity_and_linear_output():
    torch.manual_seed(0)
    block = InvertedResidual(8, 8, expand_ratio=4).eval()
    x = torch.randn(2, 8, 5, 5)
    assert (block(x) - x).min() < 0  # the projection is linear: the branch can be negative
    with torch.no_grad():
        block.block[-1][1].weight.zero_()  # projection BN gamma = 0 (and beta = 0): the branch is zero
    torch.testing.assert_close(block(x), x)  # ... and the block is exactly the identity


def test_drop_path():
    torch.manual_seed(0)
    x = torch.ones(20000, 3, 2, 2)
    assert drop_path(x, 0.3, training=False) is x and drop_path(x, 0.0, training=True) is x
    y = drop_path(x, 0.3, training=True)
    per_example = y.flatten(1)
    assert torch.all((per_example == 0).all(1) | torch.isclose(per_example, torch.tensor(1 / 0.7)).all(1))
    assert (per_example[:, 0] == 0).float().mean().item() == pytest.approx(0.3, abs=0.015)
    assert y.mean().item() == pytest.approx(1.0, abs=0.03)  # unbiased


def test_stochastic_depth_grows_linearly_and_only_in_training():
    model = archlab.create("efficientnet", drop_connect=0.2)
    probs = [b.drop_path for b in _blocks(model)]
    assert probs == pytest.approx([0.2 * j / 16 for j in range(16)])
    model, x = _recipe_model("mnist_efficientnet_b0"), torch.randn(4, 1, 28, 28)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))  # eval: deterministic
    model.train()
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    assert not torch.allclose(a, model(x))  # train: random branches dropped (and dropout)


def test_conv_bn_act():
    layer = ConvBNAct(3, 8, 3, stride=2, act=nn.SiLU)
    assert layer[0].bias is None and isinstance(layer[2], nn.SiLU)
    assert layer(torch.randn(1, 3, 9, 9)).shape == (1, 8, 5, 5)
