"""Per-client state over the Flower backends: SCAFFOLD's control variates and FedPer's heads travel in the
messages, compressed updates are packed on the node (top-k's residual kept in the node's Flower context),
and personalization is evaluated by ``evaluate`` messages. Each run must give the in-process run's global
model, per-client accuracies, bytes and checkpoint (<= 1e-6), including resumes that move a run between the
in-process loop and Flower.

These tests drive archlab's real ClientApp through :class:`LocalGrid`, a stand-in for Flower's ``Grid`` that
serves the nodes in this process (each with its own ``Context.state``), so they need no Ray and run in
seconds; ``tests/test_federated_flower.py`` runs the same protocol on Flower's Simulation Engine."""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

import archlab
from archlab.engine.checkpoint import load_state
from archlab.engine.metrics import read_metrics
from archlab.errors import ArchlabError
from archlab.recipe import from_dict
from archlab.runner import train

pytestmark = [pytest.mark.usefixtures("single_thread", "serverapp_identity"),
              pytest.mark.skipif(importlib.util.find_spec("flwr") is None,
                                 reason="flwr not installed (pip install 'archlab[federated]')")]


@pytest.fixture
def serverapp_identity(monkeypatch):
    """Flower creates messages only inside a ServerApp process, whose runtime sets the process' task identity
    (flwr/server/compat/app.py); the test plays that process."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, attr, value)


class LocalGrid:
    """Flower's ``Grid`` interface (``get_node_ids``, ``send_and_receive``) over ``nodes`` nodes that run
    ``archlab.flower_apps:client_app`` in this process; a node's ``Context.state`` persists across messages, as a
    SuperNode's does for a run. Like Flower's Simulation Engine, the messages of one call may run at once: each
    works on a copy of its node's state taken when the call starts and the last copy written wins. Replies come
    back in reverse order (Flower gives no order)."""

    def __init__(self, nodes: int) -> None:
        from flwr.app import RecordDict

        self.states = {1000 + 7 * i: RecordDict() for i in range(nodes)}
        self.sent: list[tuple[int, str]] = []  # (node, message type) of every message

    def get_node_ids(self) -> list[int]:
        return list(self.states)

    def send_and_receive(self, messages, timeout=None):  # noqa: ARG002 -- Flower's signature
        from flwr.app import Context

        from archlab.flower_apps import client_app

        replies = []
        start = {node: copy.deepcopy(state) for node, state in self.states.items()}
        for msg in messages:
            node = msg.metadata.dst_node_id
            self.sent.append((node, msg.metadata.message_type))
            ctx = Context(run_id=1, node_id=node, node_config={}, state=copy.deepcopy(start[node]), run_config={})
            replies.append(client_app(msg, ctx))
            self.states[node] = ctx.state
        return replies[::-1]


def recipe(steps: int = 2, **loop) -> dict:
    return {
        "name": "fed_state", "seed": 5,
        "model": {"name": "mlp", "in_features": 64, "hidden": [8]},
        "data": {"name": "digits", "batch_size": 32, "val_fraction": 0.0},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.0},
        "train": {"loop": "federated", "steps": steps, "log_every": 1, "eval_every": 1, "checkpoint_every": 1,
                  "keep_checkpoints": 10},
        "loop": {"clients": 3, "fraction": 0.67, **loop},
    }


def _train(raw: dict, out: Path, grid: LocalGrid | None = None, resume: bool = False) -> None:
    from archlab.federated.flower import using_grid

    if grid is None:
        train(from_dict(raw), out=out, resume=resume, progress=False, log=lambda _m: None)
        return
    raw = {**raw, "loop": {**raw["loop"], "backend": "flower"}}
    with using_grid(grid):
        train(from_dict(raw), out=out, resume=resume, progress=False, log=lambda _m: None)


def _flat(obj, prefix: str = "") -> dict[str, object]:
    """A nested checkpoint state as {path: leaf}."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}{k}/"))
        return out
    return {prefix: obj}


def assert_same_run(a: Path, b: Path, checkpoints: bool = True) -> None:
    """Same final model, metrics (test accuracy, bytes sent, ...) and per-client accuracies (<= 1e-6); with
    ``checkpoints`` the same loop state in the final checkpoint (variates, heads, residuals, server moments)."""
    ma, mb = archlab.load(a).state_dict(), archlab.load(b).state_dict()
    assert ma.keys() == mb.keys()
    for k in ma:
        torch.testing.assert_close(mb[k], ma[k], rtol=0, atol=1e-6)
    ra, rb = read_metrics(a / "metrics.jsonl"), read_metrics(b / "metrics.jsonl")
    assert len(ra) == len(rb)
    for x, y in zip(ra, rb, strict=True):
        assert x.keys() == y.keys()
        for key, v in x.items():
            assert y[key] == (v if isinstance(v, str) else pytest.approx(v, rel=0, abs=1e-6)), key
    if (a / "clients.json").exists():
        ca, cb = (json.loads((p / "clients.json").read_text())["client_acc"] for p in (a, b))
        assert cb == pytest.approx(ca, abs=1e-6)
    if checkpoints:
        last = max(p.name for p in (a / "checkpoints").glob("step-*"))
        sa, sb = (_flat(load_state(p / "checkpoints" / last)["paradigm"]) for p in (a, b))
        assert sa.keys() == sb.keys()
        for k, v in sa.items():
            if isinstance(v, torch.Tensor):
                torch.testing.assert_close(sb[k], v, rtol=0, atol=1e-6, msg=k)
            else:
                assert sb[k] == v, k


CASES = {
    "scaffold+fedper+fedadam": dict(algorithm="scaffold", personalization="fedper", local_test_fraction=0.2,
                                    server="fedadam", server_lr=0.01),
    "topk-error-feedback+finetune": dict(compression="topk", topk_fraction=0.05, personalization="finetune",
                                         local_test_fraction=0.2),
    "int8+fedper+fedprox": dict(compression="int8", algorithm="fedprox", mu=0.1, personalization="fedper",
                                local_test_fraction=0.2),
    "secagg+fedper+fedprox": dict(secure_aggregation=True, algorithm="fedprox", mu=0.1, personalization="fedper",
                                  local_test_fraction=0.2),
}
SECAGG_STEPS = {"query.secagg_share", "query.secagg_mask", "query.secagg_unmask"}


@pytest.mark.parametrize("case", list(CASES))
def test_flower_messages_carry_per_client_state(tmp_path, case):
    raw = recipe(**CASES[case])
    _train(raw, tmp_path / "inprocess")
    grid = LocalGrid(2)
    _train(raw, tmp_path / "flower", grid)
    assert_same_run(tmp_path / "inprocess", tmp_path / "flower")
    kinds = {t for _, t in grid.sent}
    assert kinds == {"train", "evaluate"} | ({"query"} if "topk" in case else set()) \
        | (SECAGG_STEPS if "secagg" in case else set())
    if "secagg" in case:  # every client's protocol state is gone from its node once the round is summed
        assert not [key for st in grid.states.values() for key in st.config_records]
    if "topk" in case:  # the residuals live on the nodes, each client's on its own node (k mod 2)
        held = {int(key.split(".")[1]): node for node, st in grid.states.items() for key in st.array_records}
        nodes = sorted(grid.states)
        assert held and all(node == nodes[k % 2] for k, node in held.items())


def cut_run(full: Path, cut: Path, at: int) -> None:
    """A copy of run ``full`` that died after its checkpoint of step ``at``."""
    shutil.copytree(full, cut)
    (cut / "summary.json").unlink()
    for ckpt in (cut / "checkpoints").glob("step-*"):
        if int(ckpt.name.split("-")[1].split(".")[0]) > at:
            ckpt.unlink()


def test_topk_residuals_survive_resume_between_inprocess_and_flower(tmp_path):
    """A checkpoint of a Flower run holds the residuals the nodes kept (a ``query`` message); a run resumed
    on Flower hands the checkpoint's residuals to the nodes with each client's next message."""
    raw = recipe(steps=4, compression="topk", topk_fraction=0.05)
    _train(raw, tmp_path / "inprocess")
    cut_run(tmp_path / "inprocess", tmp_path / "to_flower", at=2)  # in-process rounds 0-1, Flower rounds 2-3
    _train(raw, tmp_path / "to_flower", LocalGrid(2), resume=True)
    assert_same_run(tmp_path / "inprocess", tmp_path / "to_flower")
    _train(raw, tmp_path / "flower", LocalGrid(3))
    cut_run(tmp_path / "flower", tmp_path / "from_flower", at=2)  # Flower rounds 0-1, in-process rounds 2-3
    state = load_state(next((tmp_path / "from_flower" / "checkpoints").glob("step-*2.safetensors")))
    assert state["paradigm"]["feedback"]  # collected from the nodes
    _train(raw, tmp_path / "from_flower", resume=True)
    assert_same_run(tmp_path / "inprocess", tmp_path / "from_flower")


def test_what_flower_cannot_carry_is_refused_in_one_line():
    for loop, match in [({"secure_aggregation": True, "algorithm": "scaffold"},
                         "cannot combine secure_aggregation with SCAFFOLD"),
                        ({"parallel_clients": True}, "cannot run parallel_clients"),
                        ({"algorithm": "scaffold", "compression": "int8"}, "cannot combine SCAFFOLD with compression")]:
        for backend in ("flower-sim", "flower"):
            with pytest.raises(ArchlabError, match=match):
                from_dict(recipe(backend=backend, **loop))


def test_a_node_that_held_residuals_leaving_fails_the_run_in_one_line(tmp_path):
    class ShrinkingGrid(LocalGrid):
        def send_and_receive(self, messages, timeout=None):
            replies = super().send_and_receive(messages, timeout)
            self.states.pop(max(self.states))  # a SuperNode disconnects after the first round
            return replies

    with pytest.raises(ArchlabError, match=r"left the run; they held top-k residuals"):
        _train(recipe(compression="topk", topk_fraction=0.05), tmp_path / "r", ShrinkingGrid(2))
    _train(recipe(compression="int8"), tmp_path / "stateless", ShrinkingGrid(3))  # nothing on the nodes: goes on


class DroppingGrid(LocalGrid):
    """Clients whose replies to one secure-aggregation step never arrive (a phone that went offline); records
    every client's encoded input from its node's state after the ``train`` messages."""

    def __init__(self, nodes: int, drop: dict[str, set[int]]) -> None:
        super().__init__(nodes)
        self.drop, self.inputs = drop, {}

    def send_and_receive(self, messages, timeout=None):
        from archlab.federated.secagg import SecAggClient

        replies = super().send_and_receive(messages, timeout)
        kind = messages[0].metadata.message_type
        if kind == "train":
            for st in self.states.values():
                for key, rec in st.config_records.items():
                    self.inputs[int(key.split(".")[1])] = SecAggClient.from_state(dict(rec)).x
        lost = self.drop.get(kind, set())
        return [r for r in replies if int(r.content["config"]["client"]) not in lost] if lost else replies


@pytest.mark.parametrize(("drop", "summed"), [({"query.secagg_mask": {1}}, {0, 2, 3}),
                                              ({"query.secagg_unmask": {2}}, {0, 1, 2, 3}),
                                              ({}, {0, 1, 2, 3})])
def test_secure_aggregation_over_flower_survives_dropouts_below_the_threshold(tmp_path, monkeypatch, drop, summed):
    """Four clients, threshold 3: a client lost before its masked input is left out of the sum (its pairwise
    masks are rebuilt from the others' shares); one lost before unmasking is still summed (its self mask is
    rebuilt). The sum the server recovers is exactly the sum of the surviving clients' encoded inputs."""
    import numpy as np

    from archlab.federated import secagg

    sums = []
    real = secagg.unmask_sum
    monkeypatch.setattr(secagg, "unmask_sum", lambda *a: sums.append(real(*a)) or sums[-1])
    grid = DroppingGrid(3, drop)
    raw = recipe(steps=1, clients=4, fraction=1.0, secure_aggregation=True)
    _train(raw, tmp_path / "r", grid)
    (z,) = sums
    expected = np.zeros_like(z)
    for k in summed:
        expected = expected + grid.inputs[k]
    np.testing.assert_array_equal(z, expected)
    (train_row,) = [r for r in read_metrics(tmp_path / "r" / "metrics.jsonl") if r["split"] == "train"]
    assert train_row["secagg_dropped"] == 4 - len(summed)


@pytest.mark.parametrize(("step", "what"), [("query.secagg_mask", "masking"), ("query.secagg_unmask", "unmasking")])
def test_secure_aggregation_over_flower_fails_in_one_line_above_the_threshold(tmp_path, step, what):
    with pytest.raises(ArchlabError, match=rf"^round 0: 2 clients answered the {what} step .* threshold is 3;"):
        _train(recipe(steps=1, clients=4, fraction=1.0, secure_aggregation=True), tmp_path / "r",
               DroppingGrid(3, {step: {0, 3}}))


def test_residuals_of_two_clients_on_one_node_both_survive(tmp_path):
    """Four clients a round on two nodes: each node trains two clients whose top-k residuals it keeps. The
    messages that write a node's context go one at a time, so neither client's residual is lost to the other's
    concurrent write (LocalGrid keeps the last copy written, as Flower's Simulation Engine does)."""
    raw = recipe(steps=3, clients=4, fraction=1.0, compression="topk", topk_fraction=0.05)
    _train(raw, tmp_path / "inprocess")
    grid = LocalGrid(2)
    _train(raw, tmp_path / "flower", grid)
    assert_same_run(tmp_path / "inprocess", tmp_path / "flower")
    assert sorted(int(key.split(".")[1]) for st in grid.states.values() for key in st.array_records) == [0, 1, 2, 3]
