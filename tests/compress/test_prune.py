"""Pruning: magnitude masks equal torch.nn.utils.prune's, masks survive training, structured pruning gives a
smaller network with the masked network's outputs, lottery rewinding, and the prune loop (resume exact)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

import archlab
from archlab.compress import (
    Masks,
    PrunedNet,
    magnitude_masks,
    prunable_weights,
    prune_channels,
    prune_magnitude,
    sparsity_report,
    structured_plan,
)
from archlab.compress.lottery import layer_rates, random_reinit, rewind, round_sparsity
from archlab.compress.prune import channel_keep, channel_masks
from archlab.errors import ArchlabError
from archlab.recipe import from_dict
from archlab.runner import train

pytestmark = pytest.mark.usefixtures("single_thread")


def _lenet300(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return archlab.create("mlp", in_features=784, hidden=[300, 100])


# ------------------------------------------------------------------------------ unstructured masks


@pytest.mark.parametrize("amount", [0.3, 0.9])
def test_layerwise_masks_equal_torch_l1_unstructured(amount):
    model = _lenet300()
    ours = magnitude_masks(prunable_weights(model), amount, "layer")
    peer = copy.deepcopy(model)
    for name, module in peer.named_modules():
        if isinstance(module, nn.Linear):
            torch_prune.l1_unstructured(module, "weight", amount=amount)
            assert torch.equal(ours[f"{name}.weight"], module.weight_mask.bool()), name


@pytest.mark.parametrize("amount", [0.5, 0.92])
def test_global_masks_equal_torch_global_unstructured(amount):
    torch.manual_seed(1)
    model = archlab.create("lenet5")
    ours = magnitude_masks(prunable_weights(model), amount, "global")
    peer = copy.deepcopy(model)
    params = [(m, "weight") for m in peer.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=amount)
    names = [n for n, m in peer.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    for name, (module, _) in zip(names, params, strict=True):
        assert torch.equal(ours[f"{name}.weight"], module.weight_mask.bool()), name
    kept = sum(int(m.sum()) for m in ours.values())
    total = sum(m.numel() for m in ours.values())
    assert total - kept == round(amount * total)


def test_iterative_pruning_only_removes_more():
    model = _lenet300()
    first = prune_magnitude(model, 0.5, "global")
    second = prune_magnitude(model, 0.8, "global", masks=first)
    for name, m in first.masks.items():
        assert not (second.masks[name] & ~m).any(), "a pruned weight came back"
    report = sparsity_report(model)
    assert report.weights_remaining == pytest.approx(0.2, abs=1e-5)
    assert report.params_nonzero == report.weights_nonzero + sum(int((m.bias != 0).sum()) for m in model.modules()
                                                                 if isinstance(m, nn.Linear))


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_masked_weights_stay_exactly_zero_through_training(optimizer):
    model = _lenet300()
    masks = prune_magnitude(model, 0.9, "layer")
    opt = (torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1) if optimizer == "adamw"
           else torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3))
    masks.attach(model, opt)
    x, y = torch.randn(32, 784), torch.randint(0, 10, (32,))
    before = {n: w.detach().clone() for n, w in prunable_weights(model).items()}
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for name, w in prunable_weights(model).items():
        m = masks.masks[name]
        assert (w[~m] == 0).all(), name  # exactly zero, not merely small
        assert not torch.equal(w[m], before[name][m]), "kept weights train"
    masks.detach()
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    assert any((w[~masks.masks[n]] != 0).any() for n, w in prunable_weights(model).items()), "detach releases"


def test_bad_sparsity_is_one_line():
    with pytest.raises(ArchlabError, match=r"sparsity must be in \[0, 1\)"):
        prune_magnitude(_lenet300(), 1.0)
    with pytest.raises(ArchlabError, match="scope"):
        prune_magnitude(_lenet300(), 0.5, "per_row")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- structured pruning


def _randomize_norms(model: nn.Module) -> None:
    """Non-trivial BatchNorm statistics and affine parameters, so slicing them wrongly shows."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))


CASES = {
    "lenet300": ("mlp", {"in_features": 784, "hidden": [300, 100]}, ["layers.0.linear", "layers.1.linear"]),
    "lenet5": ("lenet5", {}, ["c1.0", "c3.0", "c5.0", "f6.2"]),
    "lenet5_bn": ("lenet5", {"norm": "batch"}, ["c1.0", "c3.0", "c5.0", "f6.2"]),
    "cnn2d": ("cnn2d", {"channels": [8, 16]}, ["features.0", "features.4", "head.2"]),
    "resnet20": ("resnet20", {"in_channels": 1}, [f"stages.{s}.{b}.conv1" for s in range(3) for b in range(3)]),
}


@pytest.mark.parametrize("case", list(CASES))
@torch.no_grad()
def test_structured_pruning_equals_the_masked_network_and_is_smaller(case, tmp_path):
    name, config, prunable = CASES[case]
    torch.manual_seed(0)
    model = archlab.create(name, **config).eval()
    _randomize_norms(model)
    plan = structured_plan(model)
    assert [g.producer for g in plan] == prunable
    x = type(model).example_input(model.config, batch_size=3)
    small = prune_channels(model, 0.5, plan).eval()
    masked = copy.deepcopy(model)
    channel_masks(masked, channel_keep(model, 0.5, plan), plan)
    torch.testing.assert_close(small(x), masked(x), rtol=1e-5, atol=1e-5)
    assert small.num_parameters() < 0.75 * model.num_parameters()
    for g in plan:  # the producer lost half its output channels
        assert small.net.get_submodule(g.producer).weight.shape[0] == -(-model.get_submodule(g.producer).weight.shape[0]
                                                                        // 2)
    small.save_pretrained(tmp_path / case)
    loaded = archlab.load(tmp_path / case).eval()
    assert isinstance(loaded, PrunedNet) and torch.equal(loaded(x), small(x))


@torch.no_grad()
def test_structured_pruning_removes_the_smallest_l1_filters_and_composes():
    torch.manual_seed(0)
    model = archlab.create("mlp", in_features=20, hidden=[6, 4]).eval()
    w = model.layers[0].linear.weight
    w.copy_(torch.arange(1, 7, dtype=torch.float)[:, None].expand(6, 20) * torch.tensor([1, -1] * 10))
    keep = channel_keep(model, 0.5)
    assert keep["layers.0.linear"].tolist() == [3, 4, 5]  # rows with the largest |W| sums
    once = prune_channels(model, 0.5)
    twice = prune_channels(once, 0.5)  # pruning a pruned network narrows it further
    assert once.net.layers[0].linear.weight.shape == (3, 20) and once.net.layers[1].linear.weight.shape == (2, 3)
    assert twice.net.layers[0].linear.weight.shape == (1, 20) and twice.net.layers[1].linear.weight.shape == (1, 1)
    assert twice.config.channels_removed > once.config.channels_removed


def test_structured_pruning_refuses_what_it_cannot_do():
    with pytest.raises(ArchlabError, match="cannot trace"):
        structured_plan(archlab.create("cnn1d"))
    with pytest.raises(ArchlabError, match="no layer can be pruned structurally"):
        prune_channels(archlab.create("mlp", hidden=[16, 16], residual=True, norm="none"), 0.5)
    assert [g.producer for g in structured_plan(archlab.create("cnn2d", norm="layer"))] == ["head.2"]


# -------------------------------------------------------------------------------------- lottery


def test_rewind_and_random_reinit_apply_the_mask():
    model = _lenet300(0)
    theta0 = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # "training"
    masks = prune_magnitude(model, 0.8, "layer")
    rewind(model, theta0, masks)
    for name, w in prunable_weights(model).items():
        m = masks.masks[name]
        assert torch.equal(w[m], theta0[name][m]) and (w[~m] == 0).all()
    fresh = _lenet300(1)
    random_reinit(model, fresh, masks)
    w = model.layers[0].linear.weight
    assert torch.equal(w[masks.masks["layers.0.linear.weight"]], fresh.layers[0].linear.weight[
        masks.masks["layers.0.linear.weight"]])


def test_frankle_rates_reach_seven_percent_in_twelve_rounds():
    names = list(prunable_weights(_lenet300()))
    s = round_sparsity(layer_rates(names, 0.2, 0.5), 12)
    assert s[names[0]] == pytest.approx(1 - 0.8**12) and s[names[-1]] == pytest.approx(1 - 0.9**12)


# ------------------------------------------------------------------------------------ the loop

TINY = {"name": "prune_tiny", "seed": 0,
        "model": {"name": "mlp", "in_features": 64, "hidden": [32, 16]},
        "data": {"name": "digits", "batch_size": 32, "val_fraction": 0.1},
        "optim": {"name": "adam", "lr": 3e-3},
        "train": {"loop": "prune", "steps": 30, "log_every": 5, "checkpoint_every": 37},
        "loop": {"mode": "lottery", "rounds": 2, "rate": 0.5, "output_rate_scale": 0.5, "retrain_epochs": 0.4,
                 "random_control": True, "rewind_step": 3}}


def test_lottery_loop_resumes_mid_round_exactly(assert_resume_exact):
    # Phases: dense 0-30 (theta_3 kept for rewinding), round 1 30-50, control 50-70, round 2 70-90, control 90-110;
    # the run is cut back to its first checkpoint, step 37, in the middle of round 1.
    assert_resume_exact(TINY)


def test_han_loop_reaches_its_schedule_with_exact_zeros(tmp_path):
    raw = copy.deepcopy(TINY)
    raw["loop"] = {"mode": "han", "rounds": 2, "schedule": [0.5, 0.8], "scope": "global", "retrain_epochs": 0.4,
                   "retrain_lr": 1e-3, "max_remaining": 0.25}
    summary = train(from_dict(raw), out=tmp_path / "run", progress=False, log=lambda _m: None)
    m = summary["metrics"]
    assert m["weights_remaining"] == pytest.approx(0.2, abs=1e-3)
    assert m["sparse_test_err"] == pytest.approx(m["test_err"])  # 20% <= max_remaining 25%
    model = archlab.load(tmp_path / "run")
    assert sparsity_report(model).weights_remaining == pytest.approx(0.2, abs=1e-3)
    rounds = json.loads((tmp_path / "run" / "prune.json").read_text())["rounds"]
    assert [r["phase"] for r in rounds] == ["dense", "round", "round"]
    assert [round(r["weights_remaining"], 3) for r in rounds] == [1.0, 0.5, 0.2]
    assert (tmp_path / "run" / "plots" / "prune.png").is_file()


def test_sparsity_condition_reports_a_miss(tmp_path):
    raw = copy.deepcopy(TINY)
    raw["loop"] = {"mode": "han", "rounds": 1, "schedule": [0.5], "retrain_epochs": 0.2, "max_remaining": 0.1}
    m = train(from_dict(raw), out=tmp_path / "run", progress=False, log=lambda _m: None)["metrics"]
    assert m["weights_remaining"] > 0.1 and m["sparse_test_err"] == 1.0 and m["ticket_gap"] == -1.0


@pytest.mark.parametrize("loop, message", [
    ({"rounds": 2, "schedule": [0.5]}, "schedule has 1 entries but rounds = 2"),
    ({"scope": "global"}, "needs a schedule"),
    ({"mode": "han", "random_control": True}, "belong to the lottery modes"),
    ({"mode": "lottery", "rewind_step": 1000}, "rewind_step 1000 must be smaller"),
])
def test_bad_loop_settings_are_one_line(tmp_path, loop, message):
    raw = copy.deepcopy(TINY)
    raw["loop"] = loop
    with pytest.raises(ArchlabError, match=message):
        train(from_dict(raw), out=tmp_path / "run", progress=False, log=lambda _m: None)


def test_masks_state_round_trip():
    model = _lenet300()
    masks = prune_magnitude(model, 0.7)
    again = Masks(masks.state_dict())
    assert again.remaining() == pytest.approx(0.3, abs=1e-3)
