"""Low-rank factorization: exact at full rank, Eckart-Young error falling with the rank, parameter counts,
energy-chosen ranks, a reloadable LowRankNet, and ``archlab compress --method lowrank``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import archlab
from archlab.cli import main
from archlab.compress.lowrank import LowRankNet, choose_rank, factorize, factorize_model, factorized_params, lowrank_net
from archlab.errors import ArchlabError
from archlab.recipe import from_dict
from archlab.runner import evaluate, train

pytestmark = pytest.mark.usefixtures("single_thread")


def _layers() -> list[nn.Module]:
    torch.manual_seed(0)
    return [nn.Linear(20, 12), nn.Linear(9, 15, bias=False),
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Conv2d(4, 6, (3, 2), dilation=2, bias=False)]


def _input(layer: nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if isinstance(layer, nn.Linear):
        return torch.randn(5, layer.in_features, generator=g)
    return torch.randn(2, layer.in_channels, 11, 10, generator=g)


@pytest.mark.parametrize("index", range(4), ids=["linear", "linear_nobias", "conv", "conv_dilated_nobias"])
def test_full_rank_is_exact_and_parameters_follow_the_formula(index):
    layer = _layers()[index]
    out, cols = layer.weight.flatten(1).shape
    full = factorize(layer, rank=10**6)  # capped at min(out, cols)
    x = _input(layer)
    with torch.no_grad():
        torch.testing.assert_close(full(x), layer(x), atol=1e-5, rtol=1e-5)
    for r in (1, 2, min(out, cols)):
        f = factorize(layer, rank=r)
        bias = out if layer.bias is not None else 0
        assert sum(p.numel() for p in f.parameters()) == factorized_params(layer, r) == r * (cols + out) + bias
        assert f[0].weight.shape[0] == r and f[1].weight.shape[:2] == (out, r)


@pytest.mark.parametrize("index", [0, 2], ids=["linear", "conv"])
def test_error_falls_with_rank_as_eckart_young_says(index):
    layer = _layers()[index]
    w = layer.weight.detach().flatten(1).double()
    s = torch.linalg.svdvals(w)
    errors = []
    for r in range(1, len(s) + 1):
        f = factorize(layer, rank=r)
        product = (f[1].weight.flatten(1).double() @ f[0].weight.flatten(1).double())
        errors.append(torch.linalg.matrix_norm(w - product).item())
        # the Frobenius error of the best rank-r approximation is the norm of the dropped singular values
        assert errors[-1] == pytest.approx(s[r:].pow(2).sum().sqrt().item(), abs=1e-5)
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False))
    assert errors[-1] < 1e-5


def test_energy_picks_the_smallest_rank_that_keeps_it():
    s = torch.tensor([3.0, 2.0, 1.0])  # squared shares 9/14, 13/14, 14/14
    assert [choose_rank(s, energy=e) for e in (0.5, 9 / 14, 0.65, 0.9, 13 / 14, 0.95, 1.0)] == [1, 1, 2, 2, 2, 3, 3]
    assert choose_rank(s, rank=7) == 3
    with pytest.raises(ValueError, match="exactly one"):
        choose_rank(s, rank=2, energy=0.5)
    with pytest.raises(ValueError, match=r"energy must be in \(0, 1\]"):
        choose_rank(s, energy=0.0)


def test_factorize_model_only_where_it_saves_and_lowrank_net_reloads(tmp_path):
    torch.manual_seed(0)
    mlp = archlab.create("mlp", in_features=64, hidden=[48, 32]).eval()
    x = torch.randn(4, 64)
    net, reports = lowrank_net(mlp, rank=8)
    by_name = {r.name: r for r in reports}
    # 64x48 and 48x32 shrink at rank 8; the 32->10 head would grow (8*(32+10) > 320) and stays
    assert by_name["layers.0.linear"].factorized and by_name["layers.1.linear"].factorized
    assert not by_name["head"].factorized and isinstance(net.net.head, nn.Linear)
    assert net.config.ranks == {"layers.0.linear": 8, "layers.1.linear": 8}
    assert net.num_parameters() == sum(r.params_after for r in reports) + 0  # every parameter is in a candidate
    net.save_pretrained(tmp_path)
    again = archlab.load(tmp_path)
    assert isinstance(again, LowRankNet)
    with torch.no_grad():
        assert torch.equal(again(x), net(x))
        # at full rank the factorized network computes the original function
        full, _ = lowrank_net(mlp, energy=1.0)
        assert not full.config.ranks  # full rank never saves parameters here: nothing replaced
        exact, _ = factorize_model(archlab.create("mlp", in_features=64, hidden=[48]).eval(), rank=10, skip=("head",))
        assert isinstance(exact.layers[0].linear, nn.Sequential)
    # the original model is untouched
    assert isinstance(mlp.layers[0].linear, nn.Linear)


def test_factorized_conv_net_keeps_its_function_at_high_energy():
    torch.manual_seed(0)
    cnn = archlab.create("cnn2d", image_size=8, channels=[8, 16], hidden=32).eval()
    x = torch.randn(3, 1, 8, 8)
    net, reports = lowrank_net(cnn, energy=0.999999)
    assert any(r.factorized and r.name.startswith("features") for r in reports) or not any(
        r.factorized for r in reports)
    with torch.no_grad():
        torch.testing.assert_close(net(x), cnn(x), atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------ archlab compress --method lowrank
RAW = {"name": "digits_mlp_tiny", "seed": 0,
       "model": {"name": "mlp", "in_features": 64, "hidden": [64, 64]},
       "data": {"name": "digits", "batch_size": 64, "val_fraction": 0.1},
       "optim": {"name": "adam", "lr": 3e-3},
       "train": {"loop": "supervised", "steps": 60, "log_every": 30}}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lowrank") / "run"
    train(from_dict(RAW), out=out, progress=False, log=lambda _m: None)
    return out


def _compress(run: Path, out: Path, *extra: str) -> int:
    return main(["compress", str(run), "--method", "lowrank", "--out", str(out), "--latency-repeats", "5", *extra])


def test_compress_lowrank_writes_a_smaller_loadable_run(run_dir, tmp_path):
    out = tmp_path / "r8"
    assert _compress(run_dir, out, "--rank", "8", "--lowrank-finetune-epochs", "0.5") == 0
    report = json.loads((out / "compress.json").read_text())
    before, after = report["before"], report["after"]
    # 64x64 -> 8*(64+64) twice, and the 64->10 head 640 -> 8*(64+10) (biases stay)
    assert before["params"] - after["params"] == 2 * (64 * 64 - 8 * 128) + 64 * 10 - 8 * 74
    assert after["size_bytes"] < before["size_bytes"]
    assert [lay["rank"] for lay in report["settings"]["layers"] if lay["factorized"]] == [8, 8, 8]
    assert len(report["settings"]["finetune_losses"]) >= 1
    model = archlab.load(out)
    assert isinstance(model, LowRankNet) and model.num_parameters() == after["params"]
    assert evaluate(out, device="cpu")["test_acc"] == pytest.approx(after["test_acc"])
    # energy 1.0 keeps every singular value: nothing gets smaller, which is a one-line error
    assert _compress(run_dir, tmp_path / "full", "--energy", "1.0") == 2


@pytest.mark.parametrize("extra, match", [((), "exactly one of --rank R and --energy E"),
                                          (("--rank", "4", "--energy", "0.9"), "exactly one"),
                                          (("--energy", "1.5"), r"--energy must be in \(0, 1\]"),
                                          (("--rank", "0"), "--rank must be >= 1")])
def test_compress_lowrank_bad_options(run_dir, tmp_path, capsys, extra, match):
    assert _compress(run_dir, tmp_path / "bad", *extra) == 2
    assert pytest.importorskip("re").search(match, capsys.readouterr().err)


def test_grouped_convolutions_are_refused():
    with pytest.raises(ArchlabError, match="grouped convolution"):
        factorize(nn.Conv2d(4, 4, 3, groups=4), rank=1)
