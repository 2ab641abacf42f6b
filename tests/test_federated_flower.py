"""Flower backends of the federated rounds loop: the same clients and server math, Flower as transport.

``flower-sim`` (Flower's Simulation Engine on Ray) must give the in-process global model after 2 rounds with
the same seed; ``flower`` runs a real SuperLink and 2 SuperNodes on 127.0.0.1 as separate processes."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import archlab
from archlab.errors import ArchlabError
from archlab.recipe import from_dict
from archlab.runner import train

HAVE_FLWR = importlib.util.find_spec("flwr") is not None and importlib.util.find_spec("ray") is not None
needs_flwr = pytest.mark.skipif(not HAVE_FLWR,
                                reason="flwr[simulation] not installed (pip install 'archlab[federated]')")


def recipe(**loop) -> dict:
    return {
        "name": "fed_flower", "seed": 3,
        "model": {"name": "mlp", "in_features": 64, "hidden": [8]},
        "data": {"name": "digits", "batch_size": 32, "val_fraction": 0.0},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.0},
        "train": {"loop": "federated", "steps": 2, "log_every": 1, "eval_every": 2},
        "loop": {"clients": 4, "fraction": 0.5, "server": "fedadam", "server_lr": 0.01, **loop},
    }


def _final(raw: dict, out) -> dict[str, torch.Tensor]:
    train(from_dict(raw), out=out, progress=False, log=lambda _m: None)
    return archlab.load(out).state_dict()


def test_flower_backends_refuse_what_they_cannot_carry(tmp_path):
    with pytest.raises(ArchlabError, match="backend 'flower-sim' cannot run parallel_clients"):
        from_dict(recipe(backend="flower-sim", parallel_clients=True))
    if HAVE_FLWR:  # outside a ServerApp there is no grid to send rounds to
        with pytest.raises(ArchlabError, match="trains inside Flower's ServerApp"):
            train(from_dict(recipe(backend="flower")), out=tmp_path / "r", progress=False, log=lambda _m: None)


@needs_flwr
def test_flower_simulation_equals_inprocess(tmp_path, monkeypatch):
    from archlab import flower_apps
    from archlab.federated import flower

    monkeypatch.setattr(flower, "ROUND_TIMEOUT", 180.0)  # Ray's start included; a hung round fails the test
    monkeypatch.setattr(flower_apps, "_WORKERS", {})  # whatever in-process node tests left here
    raw = recipe(algorithm="fedprox", mu=0.1, secure_aggregation=True)  # the protocol's steps as Flower messages
    ref = _final(raw, tmp_path / "inprocess")
    sim = _final({**raw, "loop": {**raw["loop"], "backend": "flower-sim", "sim_nodes": 2}}, tmp_path / "sim")
    assert not flower_apps._WORKERS  # the clients trained in Ray's worker processes, not in this one
    assert sim.keys() == ref.keys()
    for k in ref:
        torch.testing.assert_close(sim[k], ref[k], rtol=0, atol=1e-6)


@needs_flwr
@pytest.mark.parametrize("case", ["scaffold+finetune", "topk+fedper resumed on flower-sim"])
def test_flower_simulation_carries_per_client_state(tmp_path, monkeypatch, case):
    """SCAFFOLD's variates and FedPer's heads in the messages, top-k packed on the nodes with its residuals in
    their contexts (handed over from an in-process checkpoint, collected into the final one), personalization
    evaluated by ``evaluate`` messages: the same model, client accuracies and checkpoint as in-process.
    (tests/test_federated_flower_state.py covers every combination without Ray.)"""
    from test_federated_flower_state import assert_same_run, cut_run

    from archlab.federated import flower

    monkeypatch.setattr(flower, "ROUND_TIMEOUT", 180.0)
    personal = {"local_test_fraction": 0.2}
    if case == "scaffold+finetune":
        raw = recipe(algorithm="scaffold", personalization="finetune", **personal)
    else:
        raw = recipe(compression="topk", topk_fraction=0.05, personalization="fedper", **personal)
        raw["train"] = {**raw["train"], "steps": 3, "checkpoint_every": 1, "keep_checkpoints": 5}
        raw["loop"] = {**raw["loop"], "clients": 3, "fraction": 0.67}  # 2 of 3 per round: clients come back
    train(from_dict(raw), out=tmp_path / "inprocess", progress=False, log=lambda _m: None)
    sim = {**raw, "loop": {**raw["loop"], "backend": "flower-sim", "sim_nodes": 2}}
    if case == "scaffold+finetune":
        train(from_dict(sim), out=tmp_path / "sim", progress=False, log=lambda _m: None)
    else:  # round 0 in-process, rounds 1-2 on Flower's Simulation Engine
        cut_run(tmp_path / "inprocess", tmp_path / "sim", at=1)
        train(from_dict(sim), out=tmp_path / "sim", resume=True, progress=False, log=lambda _m: None)
    assert_same_run(tmp_path / "inprocess", tmp_path / "sim")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_flwr
@pytest.mark.parametrize("secure", [False, True], ids=["plain", "secure-aggregation"])
def test_flower_deployment_superlink_and_two_supernodes(tmp_path, secure):
    """`archlab federate serve|client|run` as real processes on 127.0.0.1: 2 rounds equal the in-process run
    (also with secure aggregation, whose steps are messages to the SuperNodes)."""
    raw = recipe(secure_aggregation=secure)
    path = tmp_path / "r.toml"
    path.write_text(from_dict(raw).to_toml())
    ref = _final(raw, tmp_path / "inprocess")
    exe = [sys.executable, "-m", "archlab.cli"]
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr_home"), "FLWR_TELEMETRY_ENABLED": "0",
           "OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    link = f"127.0.0.1:{_free_port()}"
    procs: list[subprocess.Popen] = []

    def start(*args: str, log: str) -> None:
        with open(tmp_path / log, "wb") as fh:
            procs.append(subprocess.Popen([*exe, "federate", *args], env=env, stdout=fh, stderr=subprocess.STDOUT,
                                          start_new_session=True))
    try:
        start("serve", "--port", link.split(":")[1], log="superlink.log")
        time.sleep(5)
        for i in range(2):
            start("client", "--superlink", link, "--port", str(_free_port()), log=f"supernode{i}.log")
        time.sleep(5)
        done = subprocess.run([*exe, "federate", "run", str(path), "--superlink", link, "--out",
                               str(tmp_path / "flower")], env=env, capture_output=True, timeout=420)
        assert done.returncode == 0, done.stdout.decode()[-2000:] + done.stderr.decode()[-2000:]
    finally:
        for p in procs:  # each process group: the SuperLink/SuperNode and the Flower processes it started
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
    got = archlab.load(tmp_path / "flower").state_dict()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=1e-6)
