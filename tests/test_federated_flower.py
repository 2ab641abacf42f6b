"""Flower backends of the federated rounds loop: the same clients and server math, Flower as transport.

``flower-sim`` (Flower's Simulation Engine on Ray) must give the in-process global model after 2 rounds with
the same seed; ``flower`` runs a real SuperLink and 2 SuperNodes on 127.0.0.1 as separate processes."""

from __future__ import annotations

import importlib.util

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
    with pytest.raises(ArchlabError, match="backend 'flower-sim' runs fedavg/fedprox"):
        from_dict(recipe(backend="flower-sim", algorithm="scaffold"))
    if HAVE_FLWR:  # outside a ServerApp there is no grid to send rounds to
        with pytest.raises(ArchlabError, match="trains inside Flower's ServerApp"):
            train(from_dict(recipe(backend="flower")), out=tmp_path / "r", progress=False, log=lambda _m: None)


@needs_flwr
def test_flower_simulation_equals_inprocess(tmp_path, monkeypatch):
    from archlab.federated import flower

    monkeypatch.setattr(flower, "ROUND_TIMEOUT", 180.0)  # Ray's start included; a hung round fails the test
    raw = recipe(algorithm="fedprox", mu=0.1)
    ref = _final(raw, tmp_path / "inprocess")
    sim = _final({**raw, "loop": {**raw["loop"], "backend": "flower-sim", "sim_nodes": 2}}, tmp_path / "sim")
    assert not flower._WORKERS  # the clients trained in Ray's worker processes, not in this one
    assert sim.keys() == ref.keys()
    for k in ref:
        torch.testing.assert_close(sim[k], ref[k], rtol=0, atol=1e-6)
