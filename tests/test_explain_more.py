"""archlab.explain beyond images: graph-classification explanations (edge occlusion, node attributions)
and their `archlab explain` view; BERT probing and masked-LM token views."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

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
    assert abs(float(drop[2]) - float(p1 - p0)) < 1e-6
    assert drop[[0, 1, 3]].abs().max() < 1e-7         # the other edges change nothing
    plus, minus = graph_fidelity(CountsTypedEdges(), x, edge_index, 1, drop, k=1)
    assert abs(plus - float(p1 - p0)) < 1e-6 and abs(minus) < 1e-6   # necessary and sufficient
    _, inverse = undirected_pairs(edge_index)
    assert inverse.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]


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
