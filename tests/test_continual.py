"""Continual learning: task streams and scenarios, the accuracy-matrix summaries, EWC's Fisher against
one-sample-at-a-time gradients, SI's path integral on a quadratic, the reservoir's uniformity, and the
continual loop (artifacts, exact resume for every method)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from archlab.continual import METHODS, MethodContext
from archlab.continual.ewc import diagonal_fisher
from archlab.continual.metrics import summarize
from archlab.continual.replay import Reservoir
from archlab.continual.streams import TaskStream
from archlab.data import load_dataset
from archlab.errors import ArchlabError
from archlab.recipe import from_dict
from archlab.runner import evaluate, train

pytestmark = pytest.mark.usefixtures("single_thread")


def test_split_stream_targets_and_units_in_the_three_scenarios():
    data = load_dataset("digits", val_fraction=0.0)
    for scenario, outputs in (("task", 10), ("domain", 2), ("class", 10)):
        s = TaskStream(data, "split", scenario, tasks=5)
        assert s.outputs == outputs and s.features == 64
        x, t = s.batch("train", 2, s.index["train"][2][:50])
        y = data.train.y[s.index["train"][2][:50]]
        assert set(y.tolist()) <= {4, 5} and x.shape == (50, 64)
        assert torch.equal(t, y - 4 if scenario == "domain" else y)
        active = s.active(2, seen=3).tolist()
        assert active == {"task": [4, 5], "domain": [0, 1], "class": list(range(8))}[scenario]


def test_permuted_stream_permutes_pixels_per_task():
    data = load_dataset("digits", val_fraction=0.0)
    s = TaskStream(data, "permuted", "task", tasks=3, perm_seed=1)
    assert s.outputs == 30 and s.perms[0] is None
    idx = torch.arange(5)
    x0, t0 = s.batch("train", 0, idx)
    x2, t2 = s.batch("train", 2, idx)
    assert torch.equal(x2, x0[:, s.perms[2]]) and torch.equal(t2, t0 + 20)
    assert s.active(1, 2).tolist() == list(range(10, 20))
    assert TaskStream(data, "permuted", "domain", tasks=3).outputs == 10


def test_summaries_of_an_accuracy_matrix():
    R = torch.tensor([[0.9, 0.1, 0.2], [0.5, 0.8, 0.3], [0.4, 0.6, 0.7]], dtype=torch.float64)
    b = torch.tensor([0.1, 0.1, 0.2], dtype=torch.float64)
    out = summarize(R, b)
    assert out["acc"] == pytest.approx((0.4 + 0.6 + 0.7) / 3)
    assert out["bwt"] == pytest.approx(((0.4 - 0.9) + (0.6 - 0.8)) / 2)
    assert out["forgetting"] == pytest.approx(((0.9 - 0.4) + (0.8 - 0.6)) / 2)
    assert out["fwt"] == pytest.approx(((0.1 - 0.1) + (0.3 - 0.2)) / 2)


def test_ewc_fisher_is_the_mean_of_squared_single_sample_gradients():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6)).double()
    x = torch.randn(11, 5, dtype=torch.float64)
    active = torch.tensor([1, 3, 4])
    fisher = diagonal_fisher(model, x, active, chunk=4)
    expected = {k: torch.zeros_like(p) for k, p in model.named_parameters()}
    for xi in x:  # one sample at a time, plain autograd
        model.zero_grad()
        logits = model(xi[None])[0, active]
        F.log_softmax(logits, 0)[logits.argmax()].backward()
        for k, p in model.named_parameters():
            expected[k] += p.grad.pow(2) / len(x)
    for k in expected:
        torch.testing.assert_close(fisher[k], expected[k], rtol=1e-10, atol=1e-14)
    assert fisher["2.weight"][[0, 2, 5]].abs().max() == 0  # inactive units get no Fisher


class _Quadratic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_si_importance_is_the_path_integral_on_a_quadratic():
    # L(theta) = 1/2 sum a_i theta_i^2; gradient descent with a small step from theta0 to theta1: the path
    # integral of -g . dtheta per parameter is the loss decrease 1/2 a_i (theta0_i^2 - theta1_i^2).
    a = torch.tensor([1.0, 0.3, 2.0], dtype=torch.float64)
    model = _Quadratic()

    class Cfg:
        si_c, si_xi = 1.0, 0.1

    si = METHODS["si"](MethodContext(Cfg, model, None, torch.device("cpu"), 0, 1))
    theta0 = model.theta.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    for _ in range(1500):
        opt.zero_grad()
        (0.5 * (a * model.theta ** 2).sum()).backward()
        si.after_backward()
        opt.step()
        si.after_step()
    theta1 = model.theta.detach().clone()
    decrease = 0.5 * a * (theta0 ** 2 - theta1 ** 2)
    torch.testing.assert_close(si.omega["theta"], decrease, rtol=2e-3, atol=1e-6)
    si.end_task(0)
    torch.testing.assert_close(si.importance["theta"], decrease / ((theta1 - theta0) ** 2 + 0.1), rtol=2e-3, atol=1e-6)
    assert torch.equal(si.anchor["theta"], theta1) and si.omega["theta"].abs().max() == 0


def test_reservoir_keeps_a_uniform_sample_of_the_stream():
    stats = pytest.importorskip("scipy.stats")
    n, size, trials = 40, 8, 600
    counts = torch.zeros(n)
    for trial in range(trials):
        r = Reservoir(size, seed=trial)
        for start in range(0, n, 7):  # arrives in batches, like training batches
            r.add(task=start // 20, index=torch.arange(start, min(start + 7, n)))
        assert r.seen == n and len(set(r.index.tolist())) == size
        counts[r.index] += 1
    # each item is kept with probability size / n: chi-square goodness of fit over the n items
    chi2, p = stats.chisquare(counts.numpy(), f_exp=[trials * size / n] * n)
    assert p > 0.001, (chi2, p)


def _recipe(method: str, scenario: str = "class", **loop) -> dict:
    return {"name": "cl_tiny", "seed": 0, "model": {"name": "mlp", "hidden": [16]},
            "data": {"name": "digits", "batch_size": 16, "val_fraction": 0.1},
            "optim": {"name": "adam", "lr": 1e-2},
            "train": {"loop": "continual", "steps": 10, "log_every": 1, "checkpoint_every": 3},
            "loop": {"stream": "split", "scenario": scenario, "tasks": 5, "method": method, "buffer_size": 20,
                     "fisher_samples": 30, **loop}}


def test_continual_loop_writes_the_accuracy_matrix_and_its_pictures(tmp_path):
    summary = train(from_dict(_recipe("finetune")), out=tmp_path / "run", progress=False, log=lambda _m: None)
    m = summary["metrics"]
    assert {"test_acc", "test_bwt", "test_forgetting", "test_fwt", "val_acc"} <= set(m)
    saved = json.loads((tmp_path / "run" / "accuracy_matrix.json").read_text())
    R = torch.tensor(saved["R"])
    assert R.shape == (5, 5) and m["test_acc"] == pytest.approx(float(R[-1].mean()))
    for name in ("accuracy_matrix.png", "task_accuracy.png"):
        assert (tmp_path / "run" / "plots" / name).is_file()
    again = evaluate(tmp_path / "run", device="cpu")
    assert again["test_acc"] == pytest.approx(m["test_acc"]) and again["test_bwt"] == m["test_bwt"]


@pytest.mark.parametrize("method", ["ewc", "si", "lwf", "replay"])
def test_continual_loop_resumes_exactly(method, assert_resume_exact):
    assert_resume_exact(_recipe(method, scenario="task"))


def test_continual_loop_rejects_a_budget_that_does_not_split(tmp_path):
    raw = _recipe("finetune")
    raw["train"]["steps"] = 11
    with pytest.raises(ArchlabError, match="splits evenly"):
        train(from_dict(raw), out=tmp_path / "a", progress=False, log=lambda _m: None)
    raw = _recipe("finetune", tasks=3)
    with pytest.raises(ArchlabError, match="does not divide"):
        train(from_dict(raw), out=tmp_path / "b", progress=False, log=lambda _m: None)
