"""Meta-learning recipes and the full-Omniglot (Vinyals split) reader.

Every recipe in ``recipes/meta`` validates, builds its learner, passes the episodic loop's fit check and
takes one meta-gradient step and one evaluation on random episodes of its own shapes -- without the
data, so the ``full``-suite recipes on the full Omniglot (not on the build machine) are checked too.
The Vinyals-split reader is tested on zips generated in the official layout, with the expected counts
scaled down.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from archlab import recipe as recipe_mod
from archlab.data import omniglot
from archlab.data.episodes import EpisodeSampler, FewShotData, load_fewshot
from archlab.data.registry import Split
from archlab.engine.loop import LOOPS
from archlab.errors import ArchlabError, DataUnavailable

# the episodic recipes (recipes/meta also holds the zero-shot ones, tests/test_zeroshot_compat.py)
META = sorted(p for p in (Path(__file__).resolve().parents[1] / "recipes" / "meta").glob("*.toml")
              if recipe_mod.load(p).train.loop == "episodic")
# The published full-Omniglot numbers the `full`-suite recipes aim at (percent), minus 1.0 as issue 16 asks.
PUBLISHED = {("matching_net", 5): 98.1, ("protonet", 5): 98.8, ("maml", 5): 98.7,
             ("matching_net", 20): 93.8, ("protonet", 20): 96.0, ("maml", 20): 95.8}


pytestmark = pytest.mark.usefixtures("single_thread")


def _random_data(classes: int, per_class: int = 20, size: int = 28) -> FewShotData:
    g = torch.Generator().manual_seed(0)

    def split() -> Split:
        return Split(torch.rand(classes * per_class, 1, size, size, generator=g),
                     torch.arange(classes).repeat_interleave(per_class))

    return FewShotData("omniglot", split(), split(), split(), (1, size, size))


def test_the_meta_recipes_are_found():
    names = {p.stem for p in META}
    assert {"protonet_omniglot_small1", "maml_omniglot_small1", "fomaml_omniglot_small1", "reptile_omniglot_small1",
            "matching_omniglot_small1", "protonet_omniglot_lake_runs"} <= names
    assert sum(recipe_mod.load(p).data.options.get("split") == "vinyals" for p in META) == 6


@pytest.mark.parametrize("path", META, ids=[p.stem for p in META])
def test_meta_recipe_builds_and_takes_a_step_without_the_data(path: Path):
    recipe = recipe_mod.load(path)
    loop = LOOPS.get(recipe.train.loop).obj
    cfg = recipe.loop
    ways, shots, queries = cfg.eval_shape
    data = _random_data(max(cfg.ways, ways))
    model = loop.build_model(recipe, data, torch.device("cpu"))
    loop.check_fit(recipe, data, model)
    model.train()
    ep = EpisodeSampler(data.train, cfg.ways, cfg.shots, cfg.queries, 0).sample()
    loss, logits = model.meta_loss(ep.support_x, ep.support_y, ep.query_x, ep.query_y)
    loss.backward()
    assert torch.isfinite(loss) and logits.shape == (cfg.ways * cfg.queries, cfg.ways)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    ep = EpisodeSampler(data.test, ways, shots, queries, 1).sample()
    with torch.no_grad():
        assert model.predict(ep.support_x, ep.support_y, ep.query_x).shape == (ways * queries, ways)


@pytest.mark.parametrize("path", META, ids=[p.stem for p in META])
def test_full_data_recipes_carry_the_published_target_minus_one_point(path: Path):
    recipe = recipe_mod.load(path)
    if recipe.data.options.get("split") != "vinyals":
        assert recipe.expect is None  # background_small1 has no published number
        return
    ways = recipe.loop.eval_shape[0]
    published = PUBLISHED[(recipe.model_name, ways)]
    assert recipe.expect.metric == "test_acc" and recipe.expect.compare == "min"
    assert recipe.expect.value == pytest.approx((published - 1.0) / 100)
    assert f"{published}" in recipe.expect.source and "Table 1" in recipe.expect.source
    assert recipe.loop.eval_shape[1] == 1 and recipe.loop.test_episodes >= 1000
    assert recipe.quick is False


# ------------------------------------------------------------------------ full Omniglot, Vinyals split
def _png(value: int, size: int = 10) -> bytes:
    from PIL import Image

    pixels = np.full((size, size), 255, dtype=np.uint8)
    pixels[value % size, :] = 0  # a stroke whose row identifies the character
    pixels[:, value // size % size] = 0
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _write_zip(path: Path, top: str, alphabets: dict[str, int], drawings: int, start: int,
               reverse: bool = False) -> int:
    """An Omniglot images zip: top/Alphabet/characterNN/IIII_DD.png; returns the next character id."""
    members = []
    for alphabet, chars in alphabets.items():
        for c in range(chars):
            for d in range(drawings):
                members.append((f"{top}/{alphabet}/character{c + 1:02d}/{start:04d}_{d + 1:02d}.png", _png(start)))
            start += 1
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in (reversed(members) if reverse else members):
            zf.writestr(name, data)
    return start


@pytest.fixture
def full_omniglot(tmp_path, monkeypatch):
    """Both zips (3 + 2 alphabets, 6 + 4 characters, 20 drawings each) and the counts scaled to them."""
    monkeypatch.setattr(omniglot, "FULL_COUNTS", {"images_background.zip": (3, 6, 120),
                                                  "images_evaluation.zip": (2, 4, 80)})
    monkeypatch.setattr(omniglot, "VINYALS_SIZES", {"train": 5, "val": 2, "test": 3})
    folder = tmp_path / "omniglot"
    folder.mkdir()
    nxt = _write_zip(folder / "images_background.zip", "images_background", {"Aa": 2, "Bb": 2, "Cc": 2}, 20, 0)
    _write_zip(folder / "images_evaluation.zip", "images_evaluation", {"Dd": 2, "Ee": 2}, 20, nxt)
    monkeypatch.setenv("ARCHLAB_DATA", str(tmp_path))
    return folder


def _characters(split: Split) -> set[bytes]:
    """The unrotated drawings of a split (class 4c), as bytes: identifies its characters."""
    return {split.x[i].numpy().round(4).tobytes() for i in torch.nonzero(split.y % 4 == 0).flatten().tolist()}


def test_vinyals_split_pools_both_zips_and_splits_by_character(full_omniglot):
    data = load_fewshot("omniglot", {"split": "vinyals", "image_size": 12, "download": False})
    assert data.input_shape == (1, 12, 12)
    assert [data.classes(s) for s in ("train", "val", "test")] == [20, 8, 12]  # (5, 2, 3) characters x 4 rotations
    assert [len(getattr(data, s).y) for s in ("train", "val", "test")] == [400, 160, 240]
    chars = [_characters(getattr(data, s)) for s in ("train", "val", "test")]
    assert [len(c) for c in chars] == [5, 2, 3]
    assert not (chars[0] & chars[1] or chars[0] & chars[2] or chars[1] & chars[2])  # no character in two splits
    x, y = data.train.x, data.train.y
    for r in range(4):  # class 4c + r is class 4c turned by r quarter turns
        assert torch.equal(x[y == r], torch.rot90(x[y == 0], r, dims=(2, 3)))


def test_vinyals_split_does_not_depend_on_member_order(full_omniglot, tmp_path, monkeypatch):
    first = load_fewshot("omniglot", {"split": "vinyals", "image_size": 12, "download": False})
    other = tmp_path / "other" / "omniglot"
    other.mkdir(parents=True)
    nxt = _write_zip(other / "images_background.zip", "images_background", {"Aa": 2, "Bb": 2, "Cc": 2}, 20, 0,
                     reverse=True)
    _write_zip(other / "images_evaluation.zip", "images_evaluation", {"Dd": 2, "Ee": 2}, 20, nxt, reverse=True)
    monkeypatch.setenv("ARCHLAB_DATA", str(other.parent))
    second = load_fewshot("omniglot", {"split": "vinyals", "image_size": 12, "download": False})
    for s in ("train", "val", "test"):
        assert _characters(getattr(first, s)) == _characters(getattr(second, s))


def test_vinyals_split_refuses_damaged_miscounted_and_missing_zips(full_omniglot, tmp_path):
    options = {"split": "vinyals", "image_size": 12, "download": False}
    evaluation = full_omniglot / "images_evaluation.zip"
    good = evaluation.read_bytes()
    with zipfile.ZipFile(evaluation, "w") as zf:  # one drawing short
        with zipfile.ZipFile(io.BytesIO(good)) as src:
            for name in src.namelist()[1:]:
                zf.writestr(name, src.read(name))
    with pytest.raises(ArchlabError, match="expected 2/4/80 alphabets/characters/drawings, found 2/4/79"):
        load_fewshot("omniglot", options)
    data = bytearray(good)
    with zipfile.ZipFile(io.BytesIO(good)) as src:
        info = src.infolist()[3]
    data[info.header_offset + 30 + len(info.filename) + 5] ^= 0xFF  # flip a byte inside a stored member
    evaluation.write_bytes(bytes(data))
    with pytest.raises(ArchlabError, match="damaged member"):
        load_fewshot("omniglot", options)
    evaluation.write_bytes(b"not a zip")
    with pytest.raises(ArchlabError, match="not a readable zip"):
        load_fewshot("omniglot", options)
    evaluation.unlink()
    with pytest.raises(DataUnavailable, match="images_evaluation.zip.*put it in"):
        load_fewshot("omniglot", options)
