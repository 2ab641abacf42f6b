"""train.init_skip / train.freeze (archlab/engine/init.py) and the digits transfer study's data
(archlab/toolbox/transfer.py)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from archlab.errors import ArchlabError
from archlab.recipe import from_dict
from archlab.registry import create
from archlab.runner import train
from archlab.toolbox.transfer import label_subset, target_dataset, upsample_digits

pytestmark = pytest.mark.usefixtures("single_thread")

CNN = """
name = "tiny_cnn"
[model]
name = "cnn2d"
image_size = 8
channels = [4]
hidden = 8
num_classes = 10
[data]
name = "digits"
batch_size = 32
[optim]
name = "adam"
lr = 1e-2
[train]
steps = 5
log_every = 5
checkpoint_minutes = 0
"""


def _recipe(**train_keys: object) -> object:
    raw = tomllib.loads(CNN)
    raw["train"].update(train_keys)
    return from_dict(raw)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("src") / "run"
    train(_recipe(), out=out, progress=False, log=lambda m: None)
    return out


def test_init_skip_keeps_the_fresh_head_and_copies_the_rest(source: Path, tmp_path: Path) -> None:
    from archlab.engine.init import init_from

    saved = load_file(str(source / "model.safetensors"))
    torch.manual_seed(5)
    model = create("cnn2d", image_size=8, channels=[4], hidden=8, num_classes=3)  # another head shape
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ArchlabError, match="shape"):
        init_from(model, source)
    kept = init_from(model, source, skip=["head.5"])
    assert kept == ["head.5.bias", "head.5.weight"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, fresh[key] if key.startswith("head.5.") else saved[key]), key
    with pytest.raises(ArchlabError, match="init_skip"):
        init_from(model, source, skip=["head.9"])


def test_freeze_fixes_the_body_while_the_head_trains(source: Path, tmp_path: Path) -> None:
    saved = load_file(str(source / "model.safetensors"))
    train(_recipe(init_from=str(source), init_skip=["head.5"], freeze=["features", "head.2"]),
          out=tmp_path / "probe", progress=False, log=lambda m: None)
    after = load_file(str(tmp_path / "probe" / "model.safetensors"))
    for key in ("features.0.weight", "features.1.weight", "features.1.bias", "head.2.weight", "head.2.bias"):
        assert torch.equal(after[key], saved[key]), key
    assert not torch.equal(after["head.5.weight"], saved["head.5.weight"])
    # batch-norm running statistics are buffers: they still follow the new data (documented)
    assert not torch.equal(after["features.1.running_mean"], saved["features.1.running_mean"])


def test_freeze_and_init_skip_are_validated(source: Path, tmp_path: Path) -> None:
    with pytest.raises(ArchlabError, match="no parameter under 'body'"):
        train(_recipe(freeze=["body"]), out=tmp_path / "a", progress=False, log=lambda m: None)
    with pytest.raises(ArchlabError, match="every parameter"):
        train(_recipe(freeze=["features", "head"]), out=tmp_path / "b", progress=False, log=lambda m: None)
    with pytest.raises(ArchlabError, match="init_skip needs init_from"):
        _recipe(init_skip=["head"])
    with pytest.raises(ArchlabError, match="prefixes"):
        _recipe(freeze=[".features"])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_upsampled_digits_sit_in_a_20px_box_of_28() -> None:
    x = torch.rand(3, 1, 8, 8)
    up = upsample_digits(x)
    assert up.shape == (3, 1, 28, 28)
    assert up[..., :4, :].abs().sum() == 0 and up[..., 24:, :].abs().sum() == 0 and up[..., :, :4].abs().sum() == 0
    # bilinear: the mean intensity is about preserved, the range too
    assert torch.allclose(up[..., 4:24, 4:24].mean((1, 2, 3)), x.mean((1, 2, 3)), atol=0.05)
    assert 0 <= up.min() and up.max() <= 1


def test_label_subset_is_stratified_and_seeded() -> None:
    raw = tomllib.loads(CNN)
    recipe = from_dict(raw)
    data = recipe.loop_class.load_data(recipe)
    tenth = target_dataset(data, 0.1, seed=3)
    assert len(tenth.train) == round(0.1 * len(data.train)) and len(tenth.test) == len(data.test)
    counts = torch.bincount(tenth.train.y, minlength=10)
    assert counts.min() >= int(0.1 * torch.bincount(data.train.y).min())  # every class present in proportion
    again = label_subset(data.train, 0.1, seed=3)
    assert torch.equal(again.y, tenth.train.y)
    other = label_subset(data.train, 0.1, seed=4)
    assert not torch.equal(other.x, again.x)
