"""Born machine (bars and stripes) and the barren-plateau study."""

from __future__ import annotations

import pytest
import torch

from archlab.models.quantum.born_machine import bars_and_stripes
from archlab.quantum.barren import gradient_variance
from archlab.recipe import from_dict
from archlab.runner import train

pytestmark = pytest.mark.usefixtures("single_thread")


def test_bars_and_stripes_images():
    images = bars_and_stripes(3, 3)
    assert len(images) == 14 and len(set(images.tolist())) == 14
    assert {0, 0b111111111, 0b111000000, 0b100100100} <= set(images.tolist())
    assert bars_and_stripes(2, 2).tolist() == [0b0000, 0b0011, 0b0101, 0b1010, 0b1100, 0b1111]


def test_born_loop_learns_2x2_bars_and_stripes(tmp_path):
    raw = {"name": "born_tiny", "seed": 0, "model": {"name": "born_machine", "rows": 2, "cols": 2, "layers": 3},
           "optim": {"name": "adam", "lr": 0.1}, "train": {"loop": "born", "steps": 60, "eval_every": 30}}
    summary = train(from_dict(raw), out=tmp_path / "run", progress=False, log=lambda _m: None)
    m = summary["metrics"]
    assert m["tv_distance"] < 0.3 and m["valid_fraction"] > 0.7  # uniform over 16 strings: TV 0.625, valid 0.375
    assert (tmp_path / "run" / "plots" / "samples.png").is_file()


def test_gradient_variance_decays_with_qubits():
    """McClean et al. 2018: Var[dE/dtheta] of random circuits falls exponentially with the qubit count."""
    v2, v6 = gradient_variance(2, 20, 100), gradient_variance(6, 20, 100)
    assert 0 < v6 < v2 / 3
    assert torch.isfinite(torch.tensor([v2, v6])).all()
