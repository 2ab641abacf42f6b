"""Federated learning: partitions are exact and deterministic; the rounds loop reduces to plain SGD where
the papers say it does (FedAvg with one client and one step, FedSGD = full-batch SGD, FedProx mu=0 = FedAvg,
SCAFFOLD's first round = FedAvg); server optimizers follow Reddi et al. 2021's update rules; runs resume
bit-exactly with server moments and per-client state in the checkpoint."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import archlab
from archlab.errors import ArchlabError
from archlab.federated import ServerOptConfig, ServerOptimizer, class_counts, partition, plot_counts
from archlab.recipe import from_dict
from archlab.runner import train

pytestmark = pytest.mark.usefixtures("single_thread")

LABELS = np.repeat(np.arange(10), 60)  # 600 examples, 60 per class, sorted
np.random.default_rng(0).shuffle(LABELS)


@pytest.mark.parametrize("scheme", ["iid", "pathological", "dirichlet", "quantity"])
def test_partition_is_exact_and_deterministic(scheme):
    parts = partition(LABELS, 20, scheme, seed=3, alpha=0.3, min_size=5)
    assert len(parts) == 20
    joined = np.concatenate(parts)
    assert np.array_equal(np.sort(joined), np.arange(len(LABELS)))  # every example exactly once
    assert all(np.array_equal(p, np.sort(p)) and p.dtype == np.int64 for p in parts)
    again = partition(LABELS, 20, scheme, seed=3, alpha=0.3, min_size=5)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition(LABELS, 20, scheme, seed=4, alpha=0.3, min_size=5)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))
    if scheme != "pathological":
        assert min(len(p) for p in parts) >= 5


def test_partition_shapes_of_each_scheme(tmp_path):
    sizes = [len(p) for p in partition(LABELS, 7, "iid")]
    assert max(sizes) - min(sizes) <= 1
    # McMahan's pathological split: 60 shards of 10 sorted examples; a shard never spans two classes here,
    # so every client holds at most 2 classes, 20 examples.
    counts = class_counts(LABELS, partition(LABELS, 30, "pathological", seed=1), 10)
    assert counts.sum() == 600 and ((counts > 0).sum(1) <= 2).all() and (counts.sum(1) == 20).all()
    # Smaller Dirichlet alpha: each client's largest class takes a larger share of its examples.
    def top_share(alpha: float) -> float:
        c = class_counts(LABELS, partition(LABELS, 10, "dirichlet", seed=0, alpha=alpha), 10)
        return float((c.max(1) / c.sum(1)).mean())
    assert top_share(0.1) > top_share(1.0) > top_share(100.0)
    q = [len(p) for p in partition(LABELS, 10, "quantity", seed=0, alpha=0.5)]
    assert max(q) > 2 * min(q)  # skewed sizes
    png = plot_counts(counts, tmp_path / "p.png")
    assert png.stat().st_size > 1000
    with pytest.raises(ArchlabError, match="loop.clients: cannot split 600 examples among 400 clients"):
        partition(LABELS, 400, "pathological")
    with pytest.raises(ArchlabError, match="below loop.min_size=50"):
        partition(LABELS, 12, "dirichlet", alpha=0.01, min_size=50)


def _ref(delta: torch.Tensor, name: str, rounds: int, **kw) -> torch.Tensor:
    """Reddi et al. 2021 Algorithm 2, written out on one tensor, for ``rounds`` equal updates."""
    c = ServerOptConfig(name, **kw)
    x, m, v = torch.zeros_like(delta), torch.zeros_like(delta), torch.full_like(delta, c.tau ** 2)
    for _ in range(rounds):
        m = c.beta1 * m + (1 - c.beta1) * delta
        if name == "fedadagrad":
            v = v + delta ** 2
        elif name == "fedyogi":
            v = v - (1 - c.beta2) * delta ** 2 * torch.sign(v - delta ** 2)
        else:
            v = c.beta2 * v + (1 - c.beta2) * delta ** 2
        x = x + c.lr * m / (v.sqrt() + c.tau)
    return x


@pytest.mark.parametrize("name", ["fedadagrad", "fedyogi", "fedadam"])
def test_adaptive_server_optimizers_follow_reddi_et_al(name):
    delta = torch.tensor([0.3, -0.02, 0.0, 1e-4])
    x = {"w": torch.zeros(4)}
    opt = ServerOptimizer(ServerOptConfig(name, lr=0.1, tau=1e-2), x)
    for _ in range(3):
        opt.step(x, {"w": delta})
    torch.testing.assert_close(x["w"], _ref(delta, name, 3, lr=0.1, tau=1e-2), rtol=1e-6, atol=1e-7)


def test_fedavgm_is_heavy_ball_and_fedavg_is_the_average():
    delta = {"w": torch.tensor([1.0, -2.0])}
    x = {"w": torch.zeros(2)}
    opt = ServerOptimizer(ServerOptConfig("fedavgm", lr=0.5, momentum=0.5), x)
    opt.step(x, delta)  # v = d, x = 0.5 d
    opt.step(x, delta)  # v = 1.5 d, x = 0.5 d + 0.75 d
    torch.testing.assert_close(x["w"], 1.25 * delta["w"])
    y = {"w": torch.ones(2)}
    ServerOptimizer(ServerOptConfig("fedavg"), y).step(y, delta)
    torch.testing.assert_close(y["w"], 1 + delta["w"])


def recipe(**loop) -> dict:
    return {
        "name": "fed_tiny", "seed": 0,
        "model": {"name": "mlp", "in_features": 64, "hidden": [16]},
        "data": {"name": "digits", "batch_size": 20, "val_fraction": 0.0},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.0},
        "train": {"loop": "federated", "steps": 4, "log_every": 1, "checkpoint_every": 2},
        "loop": {"clients": 6, "fraction": 0.5, **loop},
    }


def _run(raw: dict, out: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    summary = train(from_dict(raw), out=out, progress=False, log=lambda _m: None)
    return summary, archlab.load(out).state_dict()


def _init(raw: dict) -> torch.nn.Module:
    torch.manual_seed(raw["seed"])  # the runner seeds everything with the recipe's seed before building
    return archlab.create("mlp", in_features=64, hidden=[16])


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_fedavg_with_one_client_and_one_step_is_sgd(tmp_path):
    raw = recipe(clients=1, fraction=1.0, full_batch=True)
    raw["train"]["steps"] = 1
    _, fed = _run(raw, tmp_path / "fed")
    from archlab.data import load_dataset

    data = load_dataset("digits", {}, 0.0, 0)
    model = _init(raw)
    assert not _same(model.state_dict(), fed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    F.cross_entropy(model(data.train.x), data.train.y).backward()
    opt.step()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(fed[k], v, rtol=1e-5, atol=1e-6)


def test_fedsgd_is_full_batch_sgd_over_the_sampled_clients(tmp_path):
    """One full-batch step on each of 4 IID clients, averaged with weights n_k / n, is one SGD step on the
    union of their data (McMahan et al. 2017, Sec. 2: FedSGD)."""
    raw = recipe(clients=4, fraction=1.0, full_batch=True)
    raw["train"]["steps"] = 1
    _, fed = _run(raw, tmp_path / "fed")
    from archlab.data import load_dataset

    data = load_dataset("digits", {}, 0.0, 0)
    model = _init(raw)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    F.cross_entropy(model(data.train.x), data.train.y).backward()
    opt.step()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(fed[k], v, rtol=1e-4, atol=1e-6)


def test_fedprox_mu0_is_fedavg_and_mu_pulls_towards_the_global_model(tmp_path):
    _, avg = _run(recipe(), tmp_path / "avg")
    _, prox0 = _run(recipe(algorithm="fedprox", mu=0.0), tmp_path / "p0")
    assert _same(avg, prox0)
    _, prox = _run(recipe(algorithm="fedprox", mu=10.0), tmp_path / "p")
    start = _init(recipe()).state_dict()
    dist = {name: sum((m[k] - start[k]).norm() ** 2 for k in m) for name, m in (("avg", avg), ("prox", prox))}
    assert dist["prox"] < dist["avg"]


def test_scaffold_first_round_is_fedavg_then_differs(tmp_path):
    one = recipe(weighting="uniform")
    one["train"]["steps"] = 1
    _, avg = _run(one, tmp_path / "avg1")
    _, sca = _run({**one, "loop": {**one["loop"], "algorithm": "scaffold"}}, tmp_path / "sca1")
    assert _same(avg, sca)  # all control variates start at zero
    _, avg4 = _run(recipe(weighting="uniform"), tmp_path / "avg4")
    _, sca4 = _run(recipe(weighting="uniform", algorithm="scaffold"), tmp_path / "sca4")
    assert not _same(avg4, sca4)


def test_scaffold_server_variate_is_the_mean_of_client_variates():
    """With every client in every round, c = (1/N) sum_i c_i after each round (c and c_i start at 0)."""
    from archlab.federated import Scaffold

    model = torch.nn.Linear(3, 2)
    algo = Scaffold(model)
    g = {n: p.detach().clone() for n, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        for k in range(3):
            local = copy.deepcopy(model)
            with torch.no_grad():
                for p in local.parameters():
                    p.add_(torch.randn(p.shape, generator=gen))
            algo.end_client(k, local, g, steps=5, lr=0.1)
        algo.end_round([0, 1, 2], 3)
        for n, c in algo.c.items():
            torch.testing.assert_close(c, sum(algo.c_i[k][n] for k in range(3)) / 3)


@pytest.mark.parametrize("loop", [
    {"algorithm": "scaffold", "server": "fedadam", "server_lr": 0.01},
    {"algorithm": "fedprox", "server": "fedyogi", "server_lr": 0.01, "partition": "dirichlet", "alpha": 0.3},
    {"server": "fedavgm", "partition": "pathological"},
])
def test_rounds_resume_exactly(loop, assert_resume_exact):
    assert_resume_exact(recipe(**loop))


def test_run_learns_and_writes_the_partition(tmp_path):
    raw = recipe(target_acc=0.5, local_epochs=3)
    raw["train"]["steps"] = 6
    summary, _ = _run(raw, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    curve = [r["test_acc"] for r in records if r["split"] == "val"]
    assert len(curve) == 6  # one test evaluation per round
    m = summary["metrics"]
    assert m["test_acc"] == curve[-1] > 0.5 > curve[0]
    assert m["rounds_to_target"] == 1 + next(i for i, a in enumerate(curve) if a >= 0.5)
    train_rows = [r for r in records if r["split"] == "train"]
    assert train_rows[0]["loss"] > train_rows[-1]["loss"] and train_rows[0]["bytes_up"] > 0
    counts = np.array(json.loads((tmp_path / "run" / "partition.json").read_text())["counts"])
    assert counts.shape == (6, 10) and counts.sum() == 1438 and counts.sum(1).max() - counts.sum(1).min() <= 1
    assert (tmp_path / "run" / "plots" / "partition.png").exists()
    from archlab.runner import evaluate

    again = evaluate(tmp_path / "run", device="cpu")  # the saved global model, without the training history
    assert again == {"test_acc": m["test_acc"], "test_loss": m["test_loss"]}


def test_bad_federated_recipes_fail_before_training(tmp_path):
    raw = recipe()
    raw["train"] = {"loop": "federated", "epochs": 1}
    with pytest.raises(ArchlabError, match="train.steps: the federated loop counts rounds"):
        _run(raw, tmp_path / "a")
    with pytest.raises(ArchlabError, match="loop.clients: 5000 clients but only 1438"):
        _run(recipe(clients=5000), tmp_path / "b")
    with pytest.raises(ArchlabError, match="loop"):
        from_dict(recipe(fraction=0.0))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_dp_fedavg_without_clipping_or_noise_is_uniform_fedavg(tmp_path):
    _, avg = _run(recipe(fraction=1.0, weighting="uniform"), tmp_path / "avg")
    _, dp = _run(recipe(fraction=1.0, dp_clip=1e6), tmp_path / "dp")  # Poisson with q = 1: every client
    for k in avg:
        torch.testing.assert_close(dp[k], avg[k], rtol=1e-5, atol=1e-6)


def test_dp_fedavg_clips_updates_reports_epsilon_and_resumes(tmp_path, assert_resume_exact):
    one = recipe(fraction=1.0, dp_clip=0.01)
    one["train"]["steps"] = 1
    _, moved = _run(one, tmp_path / "clip")
    start = _init(one).state_dict()
    step = torch.stack([(moved[k] - start[k]).norm() for k in start]).norm()
    assert 0.005 < step <= 0.01 + 1e-6  # the mean of K updates clipped to norm S has norm <= S
    noisy = recipe(fraction=0.5, dp_clip=1.0, dp_noise=1.1)
    summary, _ = _run(noisy, tmp_path / "noisy")
    from archlab import privacy

    assert summary["metrics"]["epsilon"] == privacy.epsilon(sample_rate=0.5, noise_multiplier=1.1, steps=4,
                                                            delta=1e-5)
    assert_resume_exact(noisy)
    with pytest.raises(ArchlabError, match="dp_noise needs dp_clip > 0"):
        from_dict(recipe(dp_noise=1.0))


@pytest.mark.parametrize("loop", [{}, {"algorithm": "fedprox", "mu": 0.5, "local_epochs": 2}])
def test_parallel_clients_fast_path_equals_the_reference(tmp_path, loop):
    raw = recipe(clients=2, fraction=1.0, **loop)  # 1,438 digits: two clients of 719
    raw["train"]["steps"] = 3
    ref_summary, ref = _run(raw, tmp_path / "ref")
    fast_raw = recipe(clients=2, fraction=1.0, parallel_clients=True, **loop)
    fast_raw["train"]["steps"] = 3
    fast_summary, fast = _run(fast_raw, tmp_path / "fast")
    for k in ref:
        torch.testing.assert_close(fast[k], ref[k], rtol=1e-4, atol=1e-5)
    assert fast_summary["metrics"]["test_acc"] == pytest.approx(ref_summary["metrics"]["test_acc"], abs=2e-3)


def test_parallel_clients_refuses_what_it_cannot_batch(tmp_path):
    with pytest.raises(ArchlabError, match="loop.parallel_clients needs .*clients of equal size"):
        _run(recipe(parallel_clients=True), tmp_path / "a")  # 1,438 digits over 6 clients: 240 and 239
    raw = recipe(clients=2, parallel_clients=True, algorithm="scaffold")
    raw["optim"]["momentum"] = 0.9
    with pytest.raises(ArchlabError, match="or personalization; optim.name = 'sgd' with momentum = 0"):
        _run(raw, tmp_path / "b")


def test_topk_keeps_the_largest_entries_and_error_feedback_loses_nothing():
    from archlab.federated.compression import ErrorFeedback, topk

    update = {"a": torch.tensor([0.1, -3.0, 0.2]), "b": torch.tensor([[2.0, -0.05], [0.0, 1.0]])}
    sent, size = topk(update, 3 / 7)
    assert torch.equal(sent["a"], torch.tensor([0.0, -3.0, 0.0]))
    assert torch.equal(sent["b"], torch.tensor([[2.0, 0.0], [0.0, 1.0]])) and size == 3 * 8
    ef, gen = ErrorFeedback(), torch.Generator().manual_seed(0)
    total_sent = {n: torch.zeros_like(v) for n, v in update.items()}
    total_true = {n: torch.zeros_like(v) for n, v in update.items()}
    for _ in range(5):
        u = {n: torch.randn(v.shape, generator=gen) for n, v in update.items()}
        s, _ = ef.compress(7, u, 0.2)
        for n in u:
            total_sent[n] += s[n]
            total_true[n] += u[n]
    for n in update:  # what was sent plus what is still owed is exactly what was computed
        torch.testing.assert_close(total_sent[n] + ef.residual[7][n], total_true[n])


def test_int8_quantization_is_unbiased_and_within_one_step():
    from archlab.federated.compression import quantize8

    v = {"w": torch.linspace(-1, 2, 50)}
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([quantize8(v, gen)[0]["w"] for _ in range(2000)])
    step = 3 / 255
    assert (draws - v["w"]).abs().max() < step + 1e-6
    assert (draws.mean(0) - v["w"]).abs().max() < 0.1 * step  # E[v_hat] = v
    assert len(torch.unique(draws)) <= 256 and quantize8(v, gen)[1] == 50 + 8


@pytest.mark.parametrize("loop", [{"compression": "topk", "topk_fraction": 0.05},
                                  {"compression": "int8"}])
def test_compressed_rounds_learn_count_bytes_and_resume(tmp_path, loop, assert_resume_exact):
    summary, _ = _run(recipe(local_epochs=3, **loop), tmp_path / "run")
    plain, _ = _run(recipe(local_epochs=3), tmp_path / "plain")
    logs = {name: [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
            for name in ("run", "plain")}
    sent = {name: [r["bytes_up"] for r in rows if r["split"] == "train"] for name, rows in logs.items()}
    ratio = sum(sent["run"]) / sum(sent["plain"])
    assert ratio == pytest.approx(0.1 if "topk_fraction" in loop else 0.25, rel=0.05)  # 8 of 4 bytes x 5%; 1 of 4
    assert summary["metrics"]["test_acc"] > 0.3
    assert (tmp_path / "run" / "plots" / "bytes_vs_accuracy.png").exists()
    assert_resume_exact(recipe(**loop))


def test_split_local_holds_out_a_share_of_every_client():
    from archlab.federated.personalization import split_local

    parts = partition(LABELS, 10, "dirichlet", seed=0, alpha=0.5, min_size=5)
    train, test = split_local(parts, 0.25, seed=1)
    for p, a, b in zip(parts, train, test, strict=True):
        assert np.array_equal(np.sort(np.concatenate([a, b])), p) and len(b) == min(len(p) - 1, round(0.25 * len(p)))


def test_fedper_keeps_heads_local_and_finetuning_personalizes(tmp_path, assert_resume_exact):
    base = {"partition": "pathological", "local_test_fraction": 0.3, "local_epochs": 2}
    none, _ = _run(recipe(**base), tmp_path / "none")
    fedper, fedper_model = _run(recipe(personalization="fedper", **base), tmp_path / "fedper")
    tuned, _ = _run(recipe(personalization="finetune", finetune_epochs=3, **base), tmp_path / "tuned")
    start = _init(recipe()).state_dict()
    head = list(start)[-2:]  # the last layer's weight and bias: never averaged under FedPer
    assert all(torch.equal(fedper_model[k], start[k]) for k in head)
    assert not torch.equal(fedper_model[list(start)[0]], start[list(start)[0]])
    # Clients of the pathological split hold 2-4 digits: a local head / local fine-tuning beats the global model.
    m = {name: s["metrics"] for name, s in (("none", none), ("fedper", fedper), ("tuned", tuned))}
    assert m["tuned"]["client_acc_mean"] > m["none"]["client_acc_mean"]
    assert m["fedper"]["client_acc_mean"] > m["none"]["client_acc_mean"]
    accs = json.loads((tmp_path / "tuned" / "clients.json").read_text())["client_acc"]
    assert len(accs) == 6 and min(accs) == m["tuned"]["client_acc_min"]
    assert_resume_exact(recipe(personalization="fedper", **base))


def _plain_fedavg_round(loop, step: int) -> tuple[dict[str, torch.Tensor], float]:
    """Round ``step`` of size-weighted FedAvg written out the plain way the loop used to run it: a fresh copy of
    the global model per client, its examples gathered batch by batch, torch.optim.SGD (foreach, as the engine's
    optimizer), ``loss.item()`` after every step, then x + sum_k p_k (w_k - x)."""
    from archlab.train.rounds import _seed

    lr, b, epochs = loop.client_optim.lr, loop.recipe.data.batch_size, loop.cfg.local_epochs
    clients = sorted(int(k) for k in np.random.default_rng(_seed(0, step)).choice(
        loop.cfg.clients, loop.per_round, replace=False))
    x_t = {n: v.clone() for n, v in loop.model.state_dict().items()}
    sizes = [len(loop.parts[k]) for k in clients]
    delta = {n: torch.zeros_like(v) for n, v in x_t.items()}
    steps, loss_sum = 0, 0.0
    for k, n_k in zip(clients, sizes, strict=True):
        model = copy.deepcopy(loop.model)
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=lr, foreach=True)
        idx = torch.from_numpy(loop.parts[k])
        gen = torch.Generator().manual_seed(_seed(0, step, k))
        for _ in range(epochs):
            order = idx[torch.randperm(len(idx), generator=gen)]
            for i in range(0, len(order), b):
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(loop.train_x[order[i:i + b]]), loop.train_y[order[i:i + b]])
                loss.backward()
                opt.step()
                steps, loss_sum = steps + 1, loss_sum + loss.item()
        with torch.no_grad():
            for n, v in model.state_dict().items():
                delta[n].add_(v - x_t[n], alpha=n_k / sum(sizes))
    return {n: x_t[n].add_(delta[n], alpha=1.0) for n in x_t}, loss_sum / steps


def test_rounds_are_bit_identical_to_plain_fedavg():
    """The loop's client path (one gather per epoch sliced into batches, the losses read once per client) is a
    pure speed-up: its rounds equal the plain per-batch round exactly, model and logged loss (2 rounds, unequal
    Dirichlet clients, 2 local epochs, batches of 7 with a smaller last one)."""
    from archlab.engine.device import Precision
    from archlab.engine.distributed import DistInfo
    from archlab.engine.loop import Context

    raw = recipe(partition="dirichlet", alpha=1.0, local_epochs=2)
    raw["data"]["batch_size"] = 7
    rec = from_dict(raw)
    data = rec.loop_class.load_data(rec)
    cpu = torch.device("cpu")
    loop = rec.loop_class(rec, _init(raw), data, Context(device=cpu, precision=Precision("fp32", cpu),
                                                          dist=DistInfo(), seed=0))
    assert len({len(p) for p in loop.parts}) > 1 and any(len(p) % 7 for p in loop.parts)
    for step in range(2):
        want, want_loss = _plain_fedavg_round(loop, step)
        got = loop.train_step(step)
        assert got["loss"] == want_loss
        assert _same(want, loop.model.state_dict())
