"""Continual learning, the architectural and generative methods: DGR's replay (labels from the previous
solver, a generator trained on the stream, exact resume), PackNet's pruning and its zero forgetting by
construction, progressive networks' frozen columns (zero forgetting by construction)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from archlab.continual import METHODS, MethodContext
from archlab.continual.streams import TaskStream
from archlab.data import load_dataset
from archlab.errors import ArchlabError
from archlab.recipe import from_dict
from archlab.registry import create
from archlab.runner import train
from archlab.train.stream import ContinualConfig

pytestmark = pytest.mark.usefixtures("single_thread")


def _recipe(method: str, scenario: str = "task", steps: int = 10, **loop) -> dict:
    return {"name": "cl_tiny", "seed": 0, "model": {"name": "mlp", "hidden": [16]},
            "data": {"name": "digits", "batch_size": 16, "val_fraction": 0.1},
            "optim": {"name": "adam", "lr": 1e-2},
            "train": {"loop": "continual", "steps": steps, "log_every": 1, "checkpoint_every": 3},
            "loop": {"stream": "split", "scenario": scenario, "tasks": 5, "method": method,
                     "dgr_hidden": [16], "dgr_latent": 4, **loop}}


def _trainable(name, module):
    """A stand-in for Loop.trainable: plain Adam with the Trainable calls the methods use."""
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)

    class T:
        def zero_grad(self):
            opt.zero_grad()

        def backward(self, loss):
            loss.backward()

        def step(self):
            opt.step()

        def state_dict(self):
            return {"module": module.state_dict(), "opt": opt.state_dict()}

        def load_state_dict(self, s):
            module.load_state_dict(s["module"])
            opt.load_state_dict(s["opt"])

    return T()


def _method(method: str, scenario: str = "task", iters: int = 8, hidden: int = 16, **cfg):
    torch.manual_seed(0)
    data = load_dataset("digits", val_fraction=0.0)
    stream = TaskStream(data, "split", scenario, tasks=5)
    model = create("mlp", in_features=64, num_classes=stream.outputs, hidden=[hidden, hidden])
    config = ContinualConfig(scenario=scenario, method=method, dgr_hidden=[16], dgr_latent=4, **cfg)
    ctx = MethodContext(config, model, stream, torch.device("cpu"), 0, 16, iters=iters, trainable=_trainable)
    return METHODS[method](ctx), model, stream


def _run_stream(m, model, stream, iters: int, probe: torch.Tensor, on_task_end=None):
    """Train every task for ``iters`` steps through the method's hooks (as the loop does); after task j the
    logits of ``probe`` under task j's inference. Returns {j: logits after task j}, {j: logits at the end}."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    after = {}
    for t in range(stream.tasks):
        idx_all = stream.index["train"][t]
        for i in range(iters):
            m.begin_step(t, i)
            idx = idx_all[torch.randint(len(idx_all), (16,), generator=gen)]
            x, y = stream.batch("train", t, idx)
            opt.zero_grad()
            loss, _ = m.loss(x, y, t)
            loss.backward()
            m.after_backward()
            opt.step()
            m.after_step()
        with torch.no_grad():
            after[t] = m.forward(probe, t).clone()
        if on_task_end is not None:
            on_task_end(t)
        m.end_task(t)
    with torch.no_grad():
        final = {j: m.forward(probe, j) for j in range(stream.tasks)}
    return after, final


# -- DGR -------------------------------------------------------------------------------------------
def test_dgr_replays_generator_samples_labelled_by_the_previous_solver():
    m, model, stream = _method("dgr", scenario="class")
    before = [p.detach().clone() for p in m.generator.parameters()]
    probe = stream.batch("test", 0, stream.index["test"][0][:8])[0]
    _run_stream(m, model, stream, iters=3, probe=probe, on_task_end=lambda t: None)
    # the generator trained (its weights moved) and the frozen copies exist
    assert any(not torch.equal(a, b) for a, b in zip(before, m.generator.parameters(), strict=True))
    assert m.previous_solver is not None and m.previous_generator is not None
    assert all(not p.requires_grad for p in m.previous_generator.parameters())
    # samples live in the dataset's scale: [min, max] of the training inputs
    rx = m.replay_inputs(32)
    assert rx.shape == (32, 64) and rx.min() >= m.lo - 1e-5 and rx.max() <= m.lo + m.span + 1e-5
    # hard targets (Class-IL, task 3 training): the previous solver's argmax over units 0..5, the
    # cross-entropy over every unit active now (0..7), so replayed inputs push the new units down
    logits = model(rx)
    old = m.previous_solver(rx)
    target = stream.active(2, 2)[old[:, :6].argmax(1)]
    assert torch.allclose(m.replay_loss(logits, old, 3), F.cross_entropy(logits[:, :8], target))
    assert set(target.tolist()) <= set(range(6))
    # soft targets: zero probability on the new units 6, 7
    m.cfg.dgr_targets = "soft"
    soft = torch.cat([F.softmax(old[:, :6] / 2.0, 1), torch.zeros(32, 2)], 1)
    want = -(soft * F.log_softmax(logits[:, :8] / 2.0, 1)).sum(1).mean() * 4.0
    assert torch.allclose(m.replay_loss(logits, old, 3), want)


def test_dgr_task_il_replays_every_earlier_task_on_its_own_units_soft_targets():
    m, model, stream = _method("dgr", scenario="task", dgr_targets="soft", lwf_temperature=2.0)
    logits, old = torch.randn(5, 10), torch.randn(5, 10)
    want = 0.0
    for j in range(3):
        u = stream.units[j]
        soft = F.softmax(old[:, u] / 2.0, 1)
        want = want + -(soft * F.log_softmax(logits[:, u] / 2.0, 1)).sum(1).mean() * 4.0
    assert torch.allclose(m.replay_loss(logits, old, 3), want / 3)


@pytest.mark.parametrize("scenario", ["class", "task"])
def test_continual_loop_with_dgr_resumes_exactly(scenario, assert_resume_exact):
    assert_resume_exact(_recipe("dgr", scenario=scenario))


# -- PackNet ---------------------------------------------------------------------------------------
def test_packnet_has_zero_forgetting_by_construction():
    m, model, stream = _method("packnet", iters=8)
    probe = stream.data.test.x[:40].flatten(1)
    snapshots = {}

    def keep(t):  # the weights task t owns, as they are when it ends
        snapshots[t] = {n: (m.params[n] * (m.owner[n] == t)).detach().clone() for n in m.weights}

    after, final = _run_stream(m, model, stream, iters=8, probe=probe, on_task_end=keep)
    for j in range(stream.tasks):  # task j's function is exactly the same after every later task
        assert torch.equal(after[j], final[j]), j
        for n in m.weights:
            assert torch.equal(snapshots[j][n], m.params[n] * (m.owner[n] == j))
    # the tasks did learn different functions (the masks route them)
    assert not torch.equal(final[0], final[4])


def test_packnet_prunes_the_trained_free_weights_by_magnitude():
    m, model, stream = _method("packnet", iters=4, packnet_prune=0.75, packnet_retrain=0.5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for i in range(2):  # steps before the prune (prune_at = 2)
        m.begin_step(0, i)
        x, y = stream.batch("train", 0, stream.index["train"][0][:16])
        opt.zero_grad()
        m.loss(x, y, 0)[0].backward()
        m.after_backward()
        opt.step()
        m.after_step()
    before = {n: m.params[n].detach().clone() for n in m.weights}
    changed = {n: before[n] != m.start[n] for n in m.weights}
    m.begin_step(0, 2)
    for n in m.weights:
        kept = m.owner[n] == 0
        assert int(kept.sum()) == round(0.25 * int(changed[n].sum()))
        assert bool((kept <= changed[n]).all())
        if kept.any() and (changed[n] & ~kept).any():  # kept entries are the largest in magnitude
            assert before[n][kept].abs().min() >= before[n][changed[n] & ~kept].abs().max()
        assert bool((m.params[n][~kept] == 0).all())


def test_packnet_continual_loop_matrix_never_forgets(tmp_path):
    summary = train(from_dict(_recipe("packnet", steps=20)), out=tmp_path / "run", progress=False,
                    log=lambda _m: None)
    R = torch.tensor(json.loads((tmp_path / "run" / "accuracy_matrix.json").read_text())["R"])
    for j in range(5):
        assert torch.all(R[j:, j] == R[j, j])
    assert summary["metrics"]["test_bwt"] == 0.0 and summary["metrics"]["test_forgetting"] == 0.0


def test_packnet_resumes_exactly(assert_resume_exact):
    assert_resume_exact(_recipe("packnet"))


def test_packnet_needs_the_task_il_scenario(tmp_path):
    with pytest.raises(ArchlabError, match="scenario"):
        train(from_dict(_recipe("packnet", scenario="class")), out=tmp_path / "run", progress=False,
              log=lambda _m: None)


# -- progressive networks --------------------------------------------------------------------------
def test_progressive_columns_have_zero_forgetting_by_construction():
    m, model, stream = _method("progressive", iters=6, progressive_adapter=8)
    probe = stream.data.test.x[:40].flatten(1)
    frozen = {}

    def keep(t):
        frozen[t] = [p.detach().clone() for p in m.net.columns[t].parameters()]

    after, final = _run_stream(m, model, stream, iters=6, probe=probe, on_task_end=keep)
    for j in range(stream.tasks):
        assert torch.equal(after[j], final[j]), j
        assert all(torch.equal(a, b) for a, b in zip(frozen[j], m.net.columns[j].parameters(), strict=True))
    # later columns read the earlier ones: the laterals' inputs have (k columns x width) features
    assert m.net.columns[3].laterals[0].V.in_features == 3 * 16 and not len(m.net.columns[0].laterals)
    # and the laterals matter: zeroing column 4's adapters changes its output
    with torch.no_grad():
        for lat in m.net.columns[4].laterals:
            lat.U.weight.zero_()
        assert not torch.equal(m.forward(probe, 4), final[4])


def test_progressive_loop_never_forgets_and_resumes_exactly(tmp_path, assert_resume_exact):
    summary = train(from_dict(_recipe("progressive", steps=20, progressive_adapter=8)), out=tmp_path / "run",
                    progress=False, log=lambda _m: None)
    R = torch.tensor(json.loads((tmp_path / "run" / "accuracy_matrix.json").read_text())["R"])
    for j in range(5):
        assert torch.all(R[j:, j] == R[j, j])
    assert summary["metrics"]["test_forgetting"] == 0.0
    assert_resume_exact(_recipe("progressive", progressive_adapter=8))
