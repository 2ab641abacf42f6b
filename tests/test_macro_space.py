"""The macro search space (archlab/search/macro.py) and its chain network (models/search/macro_chain.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import archlab
from archlab.errors import ArchlabError
from archlab.search.categorical import mutate, sample
from archlab.search.evolution import EvolutionConfig, RegularizedEvolution
from archlab.search.macro import FIELDS, MacroSpace
from archlab.search.random_search import RandomSearch

SPACE = MacroSpace(num_layers=4, widths=(8, 16, 32), kernels=(3, 5, 7), stem_channels=16)


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_choices_and_contains():
    assert SPACE.choices == (4, 3, 3, 2, 4, 3, 3, 3, 4, 3, 3, 4, 4, 3, 3, 5)
    assert SPACE.contains((1, 2, 1, 1) + (0, 0, 0, 0) * 3)
    assert not SPACE.contains((0, 0, 0, 0) * 4)                    # every layer absent
    assert not SPACE.contains((1, 0, 0, 0) + (0, 1, 0, 0) + (0, 0, 0, 0) * 2)  # identity with a width
    assert not SPACE.contains((1, 0, 0, 2) + (0, 0, 0, 0) * 3)     # layer 0 skips from before the stem
    assert not SPACE.contains((1, 0, 0, 0) * 3)                     # wrong length


def test_samples_are_valid_chains_and_cover_the_space():
    rng = np.random.default_rng(0)
    seen = [sample(SPACE, rng) for _ in range(400)]
    assert all(SPACE.contains(g) for g in seen)
    layers = [SPACE.decode(g) for g in seen]
    # every op, width, kernel and every skip distance of the last layer occurs
    flat = [t for chain in layers for t in chain]
    assert {t.split(":")[0] for t in flat} == {"identity", "conv", "sep_conv", "dil_conv"}
    assert {int(t.split(":")[1]) for t in flat if t != "identity"} == {8, 16, 32}
    assert {int(t.split(":")[2]) for t in flat if t != "identity"} == {3, 5, 7}
    assert {int(c[3].split(":")[3]) for c in layers if c[3] != "identity"} == {0, 1, 2, 3, 4}
    assert all(SPACE.encode(c) == g for c, g in zip(layers, seen, strict=True))


def test_mutation_changes_one_layer_and_stays_valid():
    rng = np.random.default_rng(1)
    g = sample(SPACE, rng)
    for _ in range(300):
        child = mutate(SPACE, g, rng)
        assert SPACE.contains(child) and child != g
        changed = {i // FIELDS for i in range(len(g)) if child[i] != g[i]}
        assert len(changed) == 1  # a single position changes, one layer
        g = child


def test_evolution_and_random_search_stay_in_the_space():
    for strategy in (RandomSearch(SPACE, 3), RegularizedEvolution(SPACE, 3, EvolutionConfig(5, 2))):
        for _ in range(30):
            g = strategy.ask()
            assert SPACE.contains(g)
            strategy.tell(g, float(SPACE.num_params(g) % 97))  # any deterministic score


def test_decoded_chain_builds_with_the_right_parameter_count():
    # stem 1->16 (k 3): 48 + BN 32; layer 0 conv 16->32 k5: 2560 + 64, skip 1 from 16 wide: proj 512;
    # layer 1 identity; layer 2 sep_conv 32->8 k3: 96 + 256 + 16, no skip; layer 3 dil_conv 8->8 k7:
    # 448 + 16, skip 4 (the stem, 16 wide): proj 128; head 8*10 + 10
    layers = ["conv:32:5:1", "identity", "sep_conv:8:3:0", "dil_conv:8:7:4"]
    g = SPACE.encode(layers)
    expected = 48 + 32 + 2560 + 64 + 512 + 96 + 256 + 16 + 448 + 16 + 128 + 90
    model = archlab.create("macro_chain", **SPACE.model_config(g))
    assert count(model) == SPACE.num_params(g) == expected
    x = torch.randn(3, 40)
    assert model(x).shape == (3, 10)
    rng = np.random.default_rng(2)
    for _ in range(25):  # the closed form agrees with the built network everywhere
        g = sample(SPACE, rng)
        model = archlab.create("macro_chain", **SPACE.model_config(g))
        assert count(model) == SPACE.num_params(g)
        assert model(torch.randn(2, 1, 40)).shape == (2, 10)


def test_skip_adds_the_right_state():
    model = archlab.create("macro_chain", stem_channels=8, layers=["conv:8:3:0", "conv:8:3:2"]).eval()
    x = torch.randn(2, 1, 40)
    h0 = model.stem(x)
    h1 = model.ops[0](h0)
    h2 = model.ops[1](h1) + h0  # skip 2 from layer 1 = the stem's output, same width: no projection
    torch.testing.assert_close(model(x), model.head(h2.mean(-1)))


def test_bad_chains_are_one_line_errors():
    with pytest.raises(ArchlabError, match="not a chain"):
        SPACE.decode((0,) * 16)
    with pytest.raises(ArchlabError, match="not in this space"):
        SPACE.encode(["conv:12:3:0", "identity", "identity", "identity"])
    with pytest.raises(ArchlabError, match="kernels odd"):
        MacroSpace(kernels=(4,))
    with pytest.raises(ArchlabError, match="skip 3 reaches before the stem"):
        archlab.create("macro_chain", layers=["conv:8:3:0", "conv:8:3:3"])
