"""archlab ensemble (archlab/toolbox/ensemble.py): ECE by hand, ensemble = mean of member probabilities."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import toolbox_tiny

from archlab.cli import main
from archlab.errors import ArchlabError
from archlab.recipe import from_dict
from archlab.runner import train
from archlab.toolbox.ensemble import ensemble, expected_calibration_error, run_log_probabilities

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = toolbox_tiny(steps=25, log_every=25)


def test_ece_by_hand() -> None:
    # confidences 0.9 (right), 0.8 (wrong), 0.55 (right), 0.6 (right): bins (0.8667, 0.9333], (0.7333, 0.8],
    # (0.5333, 0.6] holding 0.55 and 0.6 -> |1 - 0.9|/4 + |0 - 0.8|/4 + 2/4 |1 - 0.575|
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.55, 0.45], [0.4, 0.6]])
    y = torch.tensor([0, 0, 0, 1])
    assert expected_calibration_error(probs, y) == pytest.approx(0.1 / 4 + 0.8 / 4 + 0.5 * 0.425)
    assert expected_calibration_error(F.one_hot(y, 2).float(), y) == 0.0  # sure and right: calibrated


def test_ensemble_averages_member_probabilities(tmp_path: Path) -> None:
    runs = []
    for seed in (0, 1):
        raw = copy.deepcopy(TINY)
        raw["seed"] = seed
        train(from_dict(raw), out=tmp_path / f"s{seed}", progress=False)
        runs.append(tmp_path / f"s{seed}")
    result = ensemble(runs)
    (l0, y, _), (l1, _, _) = run_log_probabilities(runs[0], "test"), run_log_probabilities(runs[1], "test")
    p0, p1 = l0.exp(), l1.exp()
    mean = (p0 + p1) / 2
    assert result["ensemble"]["nll"] == pytest.approx(float(F.nll_loss(mean.log(), y)), rel=1e-5)
    assert result["ensemble"]["acc"] == pytest.approx(float((mean.argmax(-1) == y).float().mean()))
    assert result["ensemble"]["ece"] == pytest.approx(expected_calibration_error(mean, y))
    assert [m["acc"] for m in result["members"]] == [pytest.approx(float((p.argmax(-1) == y).float().mean()))
                                                     for p in (p0, p1)]
    other = copy.deepcopy(TINY)
    other["data"]["split_seed"] = 3
    train(from_dict(other), out=tmp_path / "other", progress=False)
    with pytest.raises(ArchlabError, match="members must share the test split"):
        ensemble([runs[0], tmp_path / "other"])
    assert main(["ensemble", str(runs[0])]) == 2
