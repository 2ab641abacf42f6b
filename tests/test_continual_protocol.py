"""Continual learning: the protocol details of van de Ven & Tolias' code (GMvandeVen/continual-learning,
2019 version) that the loop reproduces -- the seeded digit order of Split MNIST and LwF's Class-IL
distillation over every active unit with zero targets on the new task's units."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from archlab.continual import METHODS, MethodContext
from archlab.continual.lwf import distillation
from archlab.continual.streams import TaskStream, class_permutation
from archlab.data import load_dataset
from archlab.recipe import from_dict
from archlab.registry import create
from archlab.runner import train
from archlab.train.stream import ContinualConfig

pytestmark = pytest.mark.usefixtures("single_thread")


def test_class_permutation_is_numpys_draw_and_seed_zero_keeps_the_order():
    assert class_permutation(10, 0) == list(range(10))
    for seed in (1, 2, 7):
        assert class_permutation(10, seed) == np.random.RandomState(seed).permutation(10).tolist()


@pytest.mark.parametrize("scenario", ["task", "domain", "class"])
def test_seeded_split_stream_groups_the_renamed_digits(scenario):
    data = load_dataset("digits", val_fraction=0.0)
    fixed = TaskStream(data, "split", scenario, tasks=5)
    zero = TaskStream(data, "split", scenario, tasks=5, class_order="seeded", order_seed=0)
    assert zero.task_classes == fixed.task_classes
    s = TaskStream(data, "split", scenario, tasks=5, class_order="seeded", order_seed=1)
    name = class_permutation(10, 1)
    # task t holds the digits renamed 2t and 2t+1, first the one renamed 2t
    assert s.task_classes == [[name.index(2 * t), name.index(2 * t + 1)] for t in range(5)]
    assert sorted(c for pair in s.task_classes for c in pair) == list(range(10))
    assert s.task_classes != fixed.task_classes
    for t in range(5):
        idx = s.index["train"][t][:60]
        y = data.train.y[idx]
        assert set(y.tolist()) == set(s.task_classes[t])
        _, target = s.batch("train", t, idx)
        position = (y == s.task_classes[t][1]).long()  # 0: the first digit of the pair, 1: the second
        assert torch.equal(target, position if scenario == "domain" else position + 2 * t)
    assert s.outputs == fixed.outputs and torch.equal(s.active(2, 3), fixed.active(2, 3))


def _lwf(scenario: str, **cfg):
    torch.manual_seed(0)
    data = load_dataset("digits", val_fraction=0.0)
    stream = TaskStream(data, "split", scenario, tasks=5)
    model = create("mlp", in_features=64, num_classes=stream.outputs, hidden=[16])
    m = METHODS["lwf"](MethodContext(ContinualConfig(scenario=scenario, method="lwf", **cfg), model, stream,
                                     torch.device("cpu"), 0, 16, iters=8))
    return m, model, stream


def test_lwf_class_il_distils_over_every_active_unit_with_zero_targets_on_the_new_ones():
    m, model, stream = _lwf("class", lwf_temperature=2.0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    m.end_task(1)  # the frozen copy that labels tasks 2's inputs
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x, target = stream.batch("train", 2, stream.index["train"][2][:12])
    loss, logs = m.loss(x, target, 2)
    logits, old, T = model(x), m.previous(x), 2.0
    # by hand: softmax over units 0..5, the old model's softmax over 0..3 padded with zeros for 4, 5
    soft = torch.cat([F.softmax(old[:, :4] / T, 1), torch.zeros(12, 2)], 1)
    kd = -(soft * F.log_softmax(logits[:, :6] / T, 1)).sum(1).mean() * T ** 2
    ce = F.cross_entropy(logits[:, :6], target)
    torch.testing.assert_close(loss, ce / 3 + kd * 2 / 3)
    assert logs["distill"] == pytest.approx(float(kd.detach()), rel=1e-6)
    # the "old" form ignores the new units: its distillation term differs and is softmax(0..3) only
    m.cfg.lwf_softmax = "old"
    _, logs_old = m.loss(x, target, 2)
    assert logs_old["distill"] == pytest.approx(float(distillation(logits, old, torch.arange(4), T).detach()), rel=1e-6)
    assert logs_old["distill"] < logs["distill"]  # the padded zeros add the new units' mass to the loss


def test_lwf_active_softmax_changes_nothing_outside_class_il():
    for scenario in ("task", "domain"):
        losses = []
        for form in ("active", "old"):
            m, model, stream = _lwf(scenario, lwf_softmax=form)
            m.end_task(0)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.3 * torch.randn_like(p))
            x, target = stream.batch("train", 1, stream.index["train"][1][:12])
            losses.append(m.loss(x, target, 1)[0])
        torch.testing.assert_close(losses[0], losses[1])


def test_continual_loop_runs_with_the_seeded_digit_order(tmp_path):
    recipe = {"name": "cl_tiny", "seed": 1, "model": {"name": "mlp", "hidden": [16]},
              "data": {"name": "digits", "batch_size": 16, "val_fraction": 0.0},
              "optim": {"name": "adam", "lr": 1e-2},
              "train": {"loop": "continual", "steps": 50, "log_every": 10},
              "loop": {"stream": "split", "scenario": "task", "tasks": 5, "method": "lwf",
                       "class_order": "seeded"}}
    train(from_dict(recipe), out=tmp_path / "run", progress=False, log=lambda _m: None)
    R = json.loads((tmp_path / "run" / "accuracy_matrix.json").read_text())["R"]
    assert len(R) == 5 and R[4][4] > 0.6  # it learned the last pair (digits 8/1 under seed 1)
