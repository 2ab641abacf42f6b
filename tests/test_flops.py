"""archlab.toolbox.flops: counts checked against hand-computed multiply-adds."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import archlab
from archlab.toolbox.flops import count_flops

pytestmark = pytest.mark.usefixtures("single_thread")


def test_linear_is_two_flops_per_multiply_add():
    count = count_flops(nn.Linear(7, 5), (3, 7))
    assert count.flops == 2 * 3 * 7 * 5  # [3, 7] @ [7, 5]; the bias add is not counted
    assert count.macs == 3 * 7 * 5
    assert count.by_operator == {"addmm": 210}
    assert count_flops(nn.Linear(7, 5, bias=False), (3, 7)).flops == 210


@pytest.mark.parametrize("stride, padding, out_side", [(1, 1, 9), (2, 1, 5), (1, 0, 7)])
def test_conv_counts_every_output_position(stride, padding, out_side):
    conv = nn.Conv2d(3, 4, 3, stride=stride, padding=padding)
    x = torch.randn(2, 3, 9, 9)
    assert conv(x).shape[-1] == out_side
    # each output value is a 3x3x3 dot product: 27 multiply-adds
    assert count_flops(conv, x).macs == 2 * 4 * out_side * out_side * 27


def test_grouped_and_depthwise_conv():
    depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    assert count_flops(depthwise, (1, 8, 6, 6)).macs == 8 * 36 * 9  # one 3x3 filter per channel
    grouped = nn.Conv2d(8, 6, 1, groups=2, bias=False)
    assert count_flops(grouped, (1, 8, 6, 6)).macs == 6 * 36 * 4  # each output sees 8 / 2 inputs


def test_resnet20_by_hand():
    """CIFAR ResNet-20 at 32x32, layer by layer (option-A shortcuts cost nothing)."""
    model = archlab.create("resnet20")
    hand = (32 * 32 * 27 * 16  # stem 3 -> 16
            + 6 * 32 * 32 * 144 * 16  # stage 1: six 3x3 convs 16 -> 16
            + 16 * 16 * 144 * 32 + 5 * 16 * 16 * 288 * 32  # stage 2: 16 -> 32 (stride 2), five 32 -> 32
            + 8 * 8 * 288 * 64 + 5 * 8 * 8 * 576 * 64  # stage 3: 32 -> 64 (stride 2), five 64 -> 64
            + 64 * 10)  # classifier
    count = count_flops(model, (1, 3, 32, 32), depth=3)
    assert count.macs == hand == 40_551_040
    assert count.by_module[""] == count.flops
    assert count.by_module["stem"] == 2 * 32 * 32 * 27 * 16 and count.by_module["head"] == 2 * 64 * 10
    blocks = {k: v for k, v in count.by_module.items() if k.count(".") == 2}  # stages.<i>.<j>: the nine blocks
    assert len(blocks) == 9 and blocks["stages.0.0"] == 2 * 2 * 32 * 32 * 144 * 16
    assert sum(blocks.values()) + count.by_module["stem"] + count.by_module["head"] == count.flops
    assert count_flops(model, (4, 3, 32, 32)).macs == 4 * hand  # linear in the batch


def test_tensor_or_shape_and_mode_is_restored():
    model = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5), nn.BatchNorm1d(3))
    model.train()
    assert count_flops(model, torch.randn(5, 4)).flops == count_flops(model, (5, 4)).flops == 2 * 5 * 4 * 3
    assert model.training and all(m.training for m in model)
    assert count_flops(model.eval(), (5, 4)).flops == 120 and not model.training
    with pytest.raises(ValueError, match="shape"):
        count_flops(model, (5, -4))
