"""Link prediction: ranking metrics, the edge split, GAE / VGAE and their loop, TGN and the temporal loop."""

from __future__ import annotations

import copy
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import archlab
from archlab.data.events import load_event_dataset
from archlab.engine.metrics import read_metrics
from archlab.errors import ArchlabError
from archlab.graph import to_undirected
from archlab.graph.metrics import average_precision, roc_auc
from archlab.graph.temporal import EventStream, synthetic_event_stream
from archlab.recipe import from_dict
from archlab.runner import train
from archlab.train.link import reconstruction_loss, split_edges, undirected_pairs

pytestmark = pytest.mark.usefixtures("single_thread")


def run(raw: dict[str, Any], out: Path, resume: bool = False) -> dict[str, Any]:
    return train(from_dict(copy.deepcopy(raw)), out=out, resume=resume, progress=False, log=lambda _m: None)


def assert_resume_bit_identical(raw: dict[str, Any], tmp_path: Path, resume_from: int) -> dict[str, Any]:
    """Run ``raw`` through; then copy the run, keep only the checkpoints up to ``resume_from``, resume,
    and compare final weights, train records and final metrics."""
    full = tmp_path / "full"
    summary = run(raw, full)
    part = tmp_path / "part"
    shutil.copytree(full, part)
    for f in ("summary.json", "model.safetensors", "config.json"):
        (part / f).unlink()
    for ckpt in (part / "checkpoints").glob("step-*.safetensors"):
        if int(ckpt.stem.split("-")[1]) > resume_from:
            ckpt.unlink()
    resumed = run(raw, part, resume=True)
    a, b = load_file(str(full / "model.safetensors")), load_file(str(part / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    records = [[r for r in read_metrics(d / "metrics.jsonl")] for d in (full, part)]
    assert records[0] == records[1]
    assert resumed["metrics"] == summary["metrics"]
    return summary


# ---------------------------------------------------------------------------------------- metrics


def test_metrics_match_sklearn_with_and_without_ties():
    sk = pytest.importorskip("sklearn.metrics")
    gen = torch.Generator().manual_seed(0)
    checked = 0
    for i in range(60):
        n = int(torch.randint(2, 80, (1,), generator=gen))
        # Odd rounds: few distinct scores, so ties between positives and negatives are common.
        scores = torch.randint(0, 4, (n,), generator=gen).float() if i % 2 else torch.randn(n, generator=gen)
        labels = torch.randint(0, 2, (n,), generator=gen)
        if labels.all() or not labels.any():
            continue
        assert roc_auc(scores, labels) == pytest.approx(sk.roc_auc_score(labels, scores), abs=1e-12)
        assert average_precision(scores, labels) == pytest.approx(sk.average_precision_score(labels, scores),
                                                                  abs=1e-12)
        checked += 1
    assert checked > 40


def test_metrics_hand_values_and_one_class_error():
    labels = torch.tensor([1, 0, 1, 0])
    assert roc_auc(torch.tensor([0.9, 0.1, 0.8, 0.2]), labels) == 1.0
    assert roc_auc(torch.tensor([0.5, 0.5, 0.5, 0.5]), labels) == 0.5  # all tied: chance
    # Ranking 1, 0, 1, 0: precision 1 at recall 1/2, 2/3 at recall 1.
    assert average_precision(torch.tensor([4.0, 3.0, 2.0, 1.0]), labels) == pytest.approx(0.5 + 0.5 * 2 / 3)
    with pytest.raises(ValueError, match="both"):
        roc_auc(torch.rand(3), torch.ones(3))


# ------------------------------------------------------------------------------------ edge split


def _random_graph(n: int = 120, m: int = 600, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, n, (2, m), generator=gen)
    return to_undirected(ei[:, ei[0] != ei[1]], n)


def _keys(pairs: torch.Tensor, n: int) -> set[int]:
    return set((pairs[0] * n + pairs[1]).tolist())


def test_edge_split_invariants():
    n = 120
    ei = _random_graph(n)
    pairs = undirected_pairs(ei, n)
    e = pairs.shape[1]
    assert e == ei.shape[1] // 2  # each undirected edge once
    s = split_edges(ei, n, 0.05, 0.10, seed=3)
    assert s.val_pos.shape[1] == e // 20 and s.test_pos.shape[1] == e // 10
    assert s.val_neg.shape == s.val_pos.shape and s.test_neg.shape == s.test_pos.shape
    for p in (s.train, s.val_pos, s.val_neg, s.test_pos, s.test_neg):
        assert bool((p[0] < p[1]).all())  # canonical, no self pairs
        assert len(_keys(p, n)) == p.shape[1]  # no repeats
    tr, vp, tp = _keys(s.train, n), _keys(s.val_pos, n), _keys(s.test_pos, n)
    assert not (tr & vp) and not (tr & tp) and not (vp & tp)
    assert tr | vp | tp == _keys(pairs, n)
    vn, tn = _keys(s.val_neg, n), _keys(s.test_neg, n)
    assert not (vn & tn) and not ((vn | tn) & _keys(pairs, n))  # negatives are non-edges of the full graph

    again, other = split_edges(ei, n, 0.05, 0.10, seed=3), split_edges(ei, n, 0.05, 0.10, seed=4)
    assert all(torch.equal(getattr(s, f), getattr(again, f)) for f in vars(s))
    assert not torch.equal(s.test_pos, other.test_pos)


def test_edge_split_rejects_a_split_without_training_edges():
    with pytest.raises(ArchlabError, match="no training edges"):
        split_edges(_random_graph(), 120, 0.5, 0.5)


# --------------------------------------------------------------------------------- GAE and VGAE


def test_reconstruction_loss_matches_dense_weighted_bce():
    n = 7
    ei = _random_graph(n, 10, seed=1)
    targets = torch.cat([ei, torch.arange(n).repeat(2, 1)], 1)
    z = torch.randn(n, 3)
    labels = torch.zeros(n, n)
    labels[targets[0], targets[1]] = 1
    e = ei.shape[1]
    w, norm = (n * n - e) / e, n * n / (2 * (n * n - e))
    dense = norm * torch.nn.functional.binary_cross_entropy_with_logits(z @ z.T, labels, pos_weight=torch.tensor(w))
    assert reconstruction_loss(z, targets, e).item() == pytest.approx(dense.item(), rel=1e-6)


def test_vgae_loss_by_hand_on_a_path_graph():
    """Path 0-1-2, zero weights, bias μ = m, log σ = s: every z_i = m, every logit c = |m|²."""
    model = archlab.create("vgae", in_channels=2, hidden_channels=4, latent_channels=2, bias=True).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.conv_mu.bias.copy_(torch.tensor([0.5, -1.0]))
        model.conv_logstd.bias.copy_(torch.tensor([0.2, -0.3]))
    ei = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
    z = model(torch.ones(3, 2), ei)
    assert torch.allclose(z, torch.tensor([0.5, -1.0]).expand(3, 2))
    targets = torch.cat([ei, torch.arange(3).repeat(2, 1)], 1)  # A + I: 7 ones among 9 entries
    c = 0.25 + 1.0
    w, norm = (9 - 4) / 4, 9 / (2 * (9 - 4))
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731
    expected = norm * (7 * w * softplus(-c) + 2 * softplus(c)) / 9
    assert reconstruction_loss(z, targets, 4).item() == pytest.approx(expected, rel=1e-6)
    kl = -0.5 * sum(1 + 2 * s - m * m - math.exp(2 * s) for m, s in ((0.5, 0.2), (-1.0, -0.3)))
    assert model.kl_loss().item() == pytest.approx(kl, rel=1e-6)


def test_vgae_samples_in_training_and_returns_the_mean_in_eval():
    model = archlab.create("vgae", in_channels=5)
    x, ei = type(model).example_input(model.config)
    torch.manual_seed(0)
    a, b = model(x, ei), model(x, ei)
    assert not torch.equal(a, b)
    model.eval()
    assert torch.equal(model(x, ei), model(x, ei))
    assert torch.allclose(model.decode(a, ei), torch.sigmoid((a[ei[0]] * a[ei[1]]).sum(-1)))


def link_recipe(model: str = "gae", **train_cfg: Any) -> dict[str, Any]:
    return {"name": "link", "seed": 1, "model": {"name": model},
            "data": {"name": "sbm", "val_fraction": 0.05,
                     "options": {"num_nodes": 240, "p_in": 0.08, "p_out": 0.004}},
            "loop": {"test_fraction": 0.1},
            "optim": {"name": "adam", "lr": 0.01},
            "train": {"loop": "link", "epochs": 60, "eval_every": 20, "log_every": 10, "device": "cpu",
                      "threads": 1, **train_cfg}}


def test_gae_learns_links_on_an_sbm(tmp_path):
    summary = run(link_recipe("gae"), tmp_path / "run")
    m = summary["metrics"]
    # The loop's metrics plus the driver's best evaluation on the default monitor, val_auc.
    assert set(m) == {"val_auc", "val_ap", "test_auc", "test_ap", "best_val_auc", "best_step"}
    assert m["test_auc"] > 0.75 and m["test_ap"] > 0.7, m
    vals = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["split"] == "val"]
    assert [r["step"] for r in vals] == [20, 40, 60] and "val_auc" in vals[0]
    best = max(vals, key=lambda r: r["val_auc"])
    assert (m["best_val_auc"], m["best_step"]) == (best["val_auc"], best["step"])


def test_vgae_link_loop_resumes_bit_identically(tmp_path):
    raw = link_recipe("vgae", epochs=12, eval_every=4, checkpoint_every=5)
    summary = assert_resume_bit_identical(raw, tmp_path, resume_from=5)
    assert summary["steps"] == 12


def test_link_loop_refuses_an_event_stream():
    raw = link_recipe()
    raw["data"] = {"name": "synthetic_events"}
    with pytest.raises(ArchlabError, match="kind 'temporal'"):
        from_dict(raw)


# ---------------------------------------------------------------------------------------- TGN


def _stream(num_events: int = 90, n: int = 12, d: int = 3, seed: int = 0) -> EventStream:
    return synthetic_event_stream(num_nodes=n, num_events=num_events, num_communities=2, edge_dim=d, seed=seed)


def _tgn(**cfg: Any):
    torch.manual_seed(0)
    base = {"num_nodes": 12, "edge_dim": 3, "memory_dim": 8, "time_dim": 8, "embedding_dim": 8,
            "num_neighbors": 4, "dropout": 0.0}
    return archlab.create("tgn", **{**base, **cfg}).eval()


def test_synthetic_stream_is_seeded_sorted_and_splits_by_time():
    s = _stream(400, 20)
    assert torch.equal(s.dst, _stream(400, 20).dst) and not torch.equal(s.dst, _stream(400, 20, seed=1).dst)
    assert bool((s.src != s.dst).all()) and bool((s.t[1:] >= s.t[:-1]).all())
    tr, va, te = s.chronological_split(0.15, 0.15)
    assert (len(tr), len(va), len(te)) == (280, 60, 60)
    assert tr.t.max() < va.t.min() and va.t.max() < te.t.min()


@pytest.mark.parametrize("cfg", [{}, {"memory_dim": 0}, {"num_neighbors": 0}])
def test_tgn_predictions_use_only_past_batches(cfg):
    model = _tgn(**cfg)
    s = _stream()
    batch = torch.arange(3).repeat_interleave(30)
    base = model(s.src, s.dst, s.t, s.edge_feat, batch)
    # Change event 59, the last of batch 1 (so the "last" aggregator keeps its message): its own logit
    # and batch 2 may change; batch 0 and the rest of batch 1 must not.
    dst, feat = s.dst.clone(), s.edge_feat.clone()
    dst[59], feat[59] = (dst[59] + 1) % 12, feat[59] + 5
    changed = model(s.src, dst, s.t, feat, batch)
    same = torch.ones(90, dtype=torch.bool)
    same[59] = False
    same[60:] = False
    assert torch.equal(base[same], changed[same])
    assert not torch.allclose(base[60:], changed[60:])  # the change does reach later batches


def test_tgn_forward_with_batches_equals_score_then_observe():
    model = _tgn()
    s = _stream()
    batch = torch.arange(3).repeat_interleave(30)
    together = model(s.src, s.dst, s.t, s.edge_feat, batch)
    neg = torch.randint(0, 12, (90,), generator=torch.Generator().manual_seed(0))
    parts = []
    for a in range(0, 90, 30):
        out = model(s.src[a:a + 30], s.dst[a:a + 30], s.t[a:a + 30], s.edge_feat[a:a + 30], neg_dst=neg[a:a + 30])
        parts.append(out[0])
        model.observe(s.src[a:a + 30], s.dst[a:a + 30], s.t[a:a + 30], s.edge_feat[a:a + 30])
    assert torch.allclose(together, torch.cat(parts), atol=1e-6)
    assert model.pending_src.shape == (30,) and bool((model.nbr_id >= 0).any())
    model.reset_state()
    assert not model.memory.any() and bool((model.nbr_id == -1).all()) and model.pending_src.numel() == 0


def test_tgn_neighbour_buffer_keeps_the_latest_k():
    model = _tgn(num_neighbors=2)
    src = torch.tensor([0, 0, 0, 1])
    dst = torch.tensor([1, 2, 3, 2])
    t = torch.tensor([1.0, 2.0, 3.0, 4.0])
    model.observe(src, dst, t)
    assert sorted(model.nbr_id[0].tolist()) == [2, 3]  # 1 was pushed out by two later partners
    assert sorted(model.nbr_t[0].tolist()) == [2.0, 3.0]
    assert sorted(model.nbr_id[2].tolist()) == [0, 1]
    model.observe(torch.tensor([0]), torch.tensor([5]), torch.tensor([5.0]))
    assert sorted(model.nbr_id[0].tolist()) == [3, 5]
    assert model.last_update[0] == 3.0 and model.memory[0].abs().sum() > 0  # the first batch is in memory


def tgn_recipe(**model_cfg: Any) -> dict[str, Any]:
    return {"name": "tgn", "seed": 0,
            "model": {"name": "tgn", "memory_dim": 16, "time_dim": 16, "embedding_dim": 16, "num_neighbors": 5,
                      **model_cfg},
            "data": {"name": "synthetic_events", "batch_size": 50, "val_fraction": 0.15,
                     "options": {"num_nodes": 40, "num_events": 1000, "num_communities": 4, "period": 200.0}},
            "loop": {"test_fraction": 0.15},
            "optim": {"name": "adam", "lr": 0.01},
            "train": {"loop": "temporal", "epochs": 3, "log_every": 5, "monitor": "val_ap", "device": "cpu",
                      "threads": 1}}


def test_tgn_learns_future_links(tmp_path):
    summary = run(tgn_recipe(), tmp_path / "run")
    m = summary["metrics"]
    assert m["test_ap"] > 0.65 and m["test_auc"] > 0.65, m
    assert {"val_ap", "val_auc", "test_ap", "test_auc", "final_test_ap", "best_step"} <= set(m)


def test_temporal_loop_resumes_mid_epoch_bit_identically(tmp_path):
    raw = tgn_recipe()
    raw["train"] = {**raw["train"], "steps": 20, "eval_every": 7, "checkpoint_every": 5}
    assert_resume_bit_identical(raw, tmp_path, resume_from=10)  # epoch = 14 steps: step 10 is mid-epoch


def test_event_dataset_and_temporal_loop_errors():
    ds = load_event_dataset("synthetic_events", {"num_nodes": 30, "num_events": 200})
    assert (ds.num_nodes, ds.edge_dim, len(ds.stream)) == (30, 4, 200)
    with pytest.raises(ArchlabError, match="num_evnts"):
        load_event_dataset("synthetic_events", {"num_evnts": 3})
    with pytest.raises(ArchlabError, match="not an event stream"):
        load_event_dataset("sbm")
    raw = tgn_recipe()
    raw["model"] = {"name": "gae"}
    with pytest.raises(ArchlabError, match="keeps no temporal state"):
        run(raw, Path("/nonexistent/never-created"))
