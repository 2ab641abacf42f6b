"""archlab.explain beyond images: graph-classification explanations (edge occlusion, node attributions)
and their `archlab explain` view; BERT probing and masked-LM token views."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import archlab
from archlab.errors import ArchlabError

pytestmark = pytest.mark.usefixtures("single_thread")


class CountsTypedEdges(nn.Module):
    """Graph classifier with a known answer: class-1 logit = 3 * (number of directed edges from a type-0
    node to a type-1 node) - 1 (types: one-hot node features); class-0 logit = 0."""

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, batch: torch.Tensor | None = None,
                num_graphs: int | None = None) -> torch.Tensor:
        batch = torch.zeros(len(x), dtype=torch.long) if batch is None else batch
        num_graphs = int(batch.max()) + 1 if num_graphs is None else num_graphs
        hits = x[edge_index[0], 0] * x[edge_index[1], 1]
        count = torch.zeros(num_graphs).index_add(0, batch[edge_index[0]], hits)
        return torch.stack([torch.zeros(num_graphs), 3 * count - 1], dim=1)


def chain_graph() -> tuple[torch.Tensor, torch.Tensor]:
    """Path 0-1-2-3-4 (both directions); node 2 is type 0, node 3 type 1, the rest type 2: exactly one
    undirected edge (2, 3) carries the class-1 evidence."""
    x = torch.nn.functional.one_hot(torch.tensor([2, 2, 0, 1, 2]), 3).float()
    src = torch.tensor([0, 1, 2, 3])
    edge_index = torch.cat([torch.stack([src, src + 1]), torch.stack([src + 1, src])], dim=1)
    return x, edge_index


def test_edge_occlusion_finds_the_deciding_edge_and_fidelity_agrees():
    from archlab.explain.graph_occlusion import edge_occlusion, graph_fidelity, undirected_pairs

    x, edge_index = chain_graph()
    pairs, drop = edge_occlusion(CountsTypedEdges(), x, edge_index, target=1)
    assert pairs.tolist() == [[0, 1], [1, 2], [2, 3], [3, 4]]
    p1 = torch.tensor([0.0, 2.0]).softmax(0)[1]       # logit 3 * 1 - 1 = 2 with the edge
    p0 = torch.tensor([0.0, -1.0]).softmax(0)[1]      # -1 without it
    odds = lambda p: float((p / (1 - p)).log())        # noqa: E731
    assert abs(float(drop[2]) - (odds(p1) - odds(p0))) < 1e-5 and abs(float(drop[2]) - 3.0) < 1e-5
    assert drop[[0, 1, 3]].abs().max() < 1e-7         # the other edges change nothing
    plus, minus = graph_fidelity(CountsTypedEdges(), x, edge_index, 1, drop, k=1)
    assert abs(plus - float(p1 - p0)) < 1e-6 and abs(minus) < 1e-6   # necessary and sufficient
    _, inverse = undirected_pairs(edge_index)
    assert inverse.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]


def test_edge_occlusion_removes_the_edge_features_with_the_edges():
    from archlab.explain.graph_occlusion import edge_occlusion

    class SumsEdgeFeatures(nn.Module):
        """class-1 logit = sum of the edge features of the graph."""

        def forward(self, x, edge_index, edge_attr=None, batch=None, num_graphs=None):
            graph_of_edge = batch[edge_index[0]]
            total = torch.zeros(num_graphs).index_add(0, graph_of_edge, edge_attr[:, 0])
            return torch.stack([torch.zeros(num_graphs), total], dim=1)

    x, edge_index = chain_graph()
    attr = torch.tensor([[0.0], [0.5], [0.0], [0.0], [0.0], [0.5], [0.0], [0.0]])   # edge (1, 2), both directions
    pairs, drop = edge_occlusion(SumsEdgeFeatures(), x, edge_index, target=1, edge_attr=attr)
    assert abs(float(drop[1]) - 1.0) < 1e-6 and drop[[0, 2, 3]].abs().max() < 1e-6   # log-odds 1 -> 0


def test_graph_classifier_batches_copies_and_integrated_gradients_is_complete():
    import archlab.explain as E
    from archlab.explain.graph_occlusion import GraphClassifier
    from archlab.models.graph.gin import GIN, GINConfig

    torch.manual_seed(0)
    gin = GIN(GINConfig(in_channels=3, hidden_channels=8, out_channels=2, num_layers=3, dropout=0.0)).eval()
    x, edge_index = chain_graph()
    wrapped = GraphClassifier(gin, edge_index)
    xs = torch.stack([x, x.flip(0), torch.rand(5, 3)])
    with torch.no_grad():
        merged = wrapped(xs)
        alone = torch.cat([gin(v, edge_index) for v in xs])
    assert (merged - alone).abs().max() < 1e-5
    attr = E.attribute(wrapped, x[None], 1, "integrated_gradients", baselines=0.0, n_steps=256)
    with torch.no_grad():
        gap = wrapped(x[None])[0, 1] - wrapped(torch.zeros(1, 5, 3))[0, 1]
    assert attr.shape == (1, 5, 3) and abs(float(attr.sum() - gap)) < 1e-3
    with pytest.raises(ArchlabError, match="batch"):
        GraphClassifier(nn.Linear(3, 2), edge_index)


def test_spring_layout_keeps_neighbours_closer_than_strangers():
    from archlab.explain.graph_occlusion import spring_layout

    # two triangles joined by nothing: within-triangle distances beat between-triangle ones
    src = torch.tensor([0, 1, 2, 3, 4, 5])
    dst = torch.tensor([1, 2, 0, 4, 5, 3])
    pos = spring_layout(torch.stack([src, dst]), 6, seed=0)
    d = torch.cdist(pos, pos)
    assert pos.abs().max() <= 1.0 + 1e-6 and torch.isfinite(pos).all()
    assert d[:3, :3].max() < d[:3, 3:].min()


def test_explain_command_on_a_graph_classification_run(tmp_path, capsys):
    from archlab.cli import main
    from archlab.recipe import from_dict
    from archlab.runner import train

    raw = {"name": "gin_tiny", "seed": 0, "model": {"name": "gin", "hidden_channels": 8, "num_layers": 2,
                                                    "dropout": 0.0},
           "data": {"name": "graph_sbm", "batch_size": 8, "val_fraction": 0.0,
                    "options": {"num_graphs": 24, "max_nodes": 12}},
           "optim": {"name": "adam", "lr": 0.01}, "train": {"loop": "graph", "epochs": 2, "log_every": 50},
           "loop": {"test_fraction": 0.25}}
    run = tmp_path / "run"
    train(from_dict(raw), out=run, progress=False, log=lambda _m: None)
    png = tmp_path / "g.png"
    capsys.readouterr()
    assert main(["explain", str(run), "--index", "0", "--index", "1", "--steps", "16", "--out", str(png)]) == 0
    assert png.stat().st_size > 1000 and "top edges" in capsys.readouterr().out
    assert main(["explain", str(run), "--faithfulness", "3", "--method", "saliency", "--out",
                 str(tmp_path / "fid")]) == 0
    summary = json.loads((tmp_path / "fid.json").read_text())
    assert set(summary["methods"]) == {"occlusion", "saliency (a_u + a_v)", "random"}
    assert summary["meta"]["graphs"] <= 3 and "| occlusion |" in (tmp_path / "fid.md").read_text()
    assert main(["explain", str(run), "--method", "gradcam", "--out", str(png)]) == 2   # one-line error
    assert main(["explain", str(run), "--index", "99", "--out", str(png)]) == 2
    # the test split is the loop's own: 25% of 24 graphs, stratified
    import numpy as np

    from archlab import recipe as recipe_mod
    from archlab.explain.graph_level_command import split_indices

    recipe = recipe_mod.load(run / "recipe.toml")
    labels = np.array([int(g.y) for g in recipe.loop_class.load_data(recipe).graphs])
    assert len(split_indices(str(run), labels, "test")) == 6


# ----------------------------------------------------------------------------- masked language models


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory):
    from archlab.recipe import from_dict
    from archlab.runner import train

    raw = {"name": "bert_tiny", "seed": 0,
           "model": {"name": "bert", "hidden_size": 16, "num_layers": 2, "num_heads": 2, "intermediate_size": 32,
                     "dropout": 0.0, "attention_dropout": 0.0},
           "data": {"name": "text_toy", "batch_size": 4}, "optim": {"name": "adamw", "lr": 1e-3},
           "train": {"loop": "mlm", "steps": 3, "eval_every": 3}, "loop": {"seq_len": 8}}
    run = tmp_path_factory.mktemp("bert") / "run"
    train(from_dict(raw), out=run, progress=False, log=lambda _m: None)
    return run


def test_masked_token_attributions_are_complete_against_the_all_masked_baseline(bert_run):
    from archlab.explain.text_command import MaskedToken, masked_token_attributions
    from archlab.train.mlm import SpecialTokens

    model = archlab.load(bert_run).eval()
    special = SpecialTokens(model.config.vocab_size - 4)
    ids = torch.tensor([1, 2, 3, 4, 5])
    attr, inputs, target = masked_token_attributions(model, ids, 2, special, steps=64)
    assert inputs.tolist() == [special.cls, 1, 2, special.mask, 4, 5, special.sep]
    assert attr.shape == (7,) and 0 <= target < special.num_text
    baseline = inputs.clone()
    baseline[1:-1] = special.mask
    with torch.no_grad():
        f = MaskedToken(model, 3)
        gap = f(inputs[None])[0, target] - f(baseline[None])[0, target]
    assert abs(float(attr.sum() - gap)) < 1e-3          # completeness in embedding space
    # the special tokens and the masked position equal the baseline: exactly zero attribution
    assert attr[[0, 3, 6]].abs().max() == 0
    assert not model.training


def test_explain_command_on_a_masked_lm_run(bert_run, tmp_path, capsys):
    from archlab.cli import main

    png = tmp_path / "masked.png"
    capsys.readouterr()
    assert main(["explain", str(bert_run), "--prompt", "abcab", "--mask-at", "-1", "--steps", "16",
                 "--out", str(png)]) == 0
    out = capsys.readouterr().out
    assert png.stat().st_size > 1000 and "'[MASK]'" in out and "masked position 4" in out
    assert main(["explain", str(bert_run), "--prompt", "abc", "--mask-at", "3", "--out", str(png)]) == 2
    assert main(["explain", str(bert_run), "--probe", "60", "--out", str(tmp_path / "probe")]) == 0
    result = json.loads((tmp_path / "probe.json").read_text())
    assert [r["layer"] for r in result["layers"]] == ["embedding", "block 1", "block 2"]
    assert result["meta"]["model"] == "Bert"
    assert all(0 <= r["task"] <= 1 and abs(r["selectivity"] - (r["task"] - r["control"])) < 1e-12
               for r in result["layers"])


def test_probe_skips_the_special_tokens_of_an_encoder():
    """With prefix/suffix tokens the probed states are those of the text positions (a model that writes each
    position's previous token into its state gives a perfect probe only if the offsets are right)."""
    from archlab.explain.probing import language_model_probe

    class PreviousToken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embeddings = nn.Identity()
            self.layers = nn.ModuleList([nn.Identity()])

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            h = self.embeddings(torch.nn.functional.one_hot(ids, 12).float())
            prev = torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], dim=1)
            return self.layers[0](torch.cat([h, prev], dim=-1))

    stream = torch.randint(0, 10, (3000,), generator=torch.Generator().manual_seed(0))
    decode = "aeXbc  d!f".__getitem__
    rows = language_model_probe(PreviousToken(), stream, decode, block=9, n_train=300, n_test=150,
                                prefix=(10,), suffix=(11,))
    assert rows[1]["task"] == 1.0 and rows[0]["task"] < 0.8


# ----------------------------------------------------------------------------- DeepSHAP in archlab explain


def test_explain_command_runs_deep_shap_with_training_images_as_background(tmp_path, capsys):
    import argparse

    from archlab.cli import main
    from archlab.explain.command import options
    from archlab.recipe import from_dict
    from archlab.runner import train

    raw = {"name": "digits_tiny", "seed": 0,
           "model": {"name": "cnn2d", "in_channels": 1, "image_size": 8, "num_classes": 10, "channels": [4, 8],
                     "hidden": 16, "norm": "none"},
           "data": {"name": "digits", "batch_size": 64, "val_fraction": 0.1},
           "optim": {"name": "adamw", "lr": 3e-3}, "train": {"steps": 5, "log_every": 5}}
    run = tmp_path / "run"
    train(from_dict(raw), out=run, progress=False, log=lambda _m: None)
    png = tmp_path / "shap.png"
    assert main(["explain", str(run), "--method", "deep_shap", "--index", "0", "--shap-background", "8",
                 "--out", str(png)]) == 0 and png.stat().st_size > 1000
    assert main(["explain", str(run), "--method", "deep_shap", "--shap-background", "0", "--out", str(png)]) == 2
    # the options the command hands to deep_shap: its background samples; the map is the mean of DeepLIFT maps
    # over them (summation-to-delta is not exact here: cnn2d max-pools)
    model = archlab.load(run).eval()
    from archlab import recipe as recipe_mod

    recipe = recipe_mod.load(run / "recipe.toml")
    data = recipe.loop_class.load_data(recipe)
    x = data.test.x[:2]
    args = argparse.Namespace(seed=0, shap_samples=data.train.x[:8], steps=8, samples=8, layer=None)
    opts = options("deep_shap", x, 0.0, args)
    assert opts["baselines"].shape == (8, 1, 8, 8)
    import archlab.explain as E

    attr = E.attribute(model, x, 3, "deep_shap", **opts)
    each = torch.stack([E.attribute(model, x, 3, "deeplift", baselines=b[None].expand_as(x)) for b in data.train.x[:8]])
    assert (attr - each.mean(0)).abs().max() < 1e-5
