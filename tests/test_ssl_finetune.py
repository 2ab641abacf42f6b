"""Fine-tuning a pre-trained MAE / SimMIM run as a ViT classifier: ``train.init_rename`` (archlab/engine/init.py)
and the ``*_mnist_finetune`` recipes (recipes/ssl/)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from archlab.engine.init import init_from, rename_keys
from archlab.errors import ArchlabError
from archlab.recipe import from_dict, prerequisites
from archlab.registry import create
from archlab.runner import train

pytestmark = pytest.mark.usefixtures("single_thread")

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "ssl"
TINY_VIT = {"image_size": 8, "patch_size": 2, "dim": 16, "depth": 1, "heads": 2, "mlp_dim": 16, "pool": "mean"}
SKIP = {"mae": ["mask_token", "decoder_embed", "decoder_pos", "decoder", "decoder_norm", "decoder_pred"],
        "simmim": ["mask_token", "head"]}


def _pretrain_recipe(method: str) -> dict:
    model = {"name": method, "encoder_config": TINY_VIT}
    if method == "mae":
        model |= {"decoder_dim": 16, "decoder_depth": 1}
    return {"name": f"{method}_tiny", "seed": 0, "model": model,
            "data": {"name": "digits", "batch_size": 32, "val_fraction": 0.1},
            "optim": {"name": "adamw", "lr": 1e-2},
            "train": {"loop": "ssl", "steps": 4, "log_every": 2, "checkpoint_minutes": 0},
            "loop": {"augment": ["translate:1"], "knn_k": 5, "linear_probe": False}}


def _finetune_recipe(method: str, source: Path | str, lr: float = 1e-2, **train_keys: object) -> dict:
    return {"name": f"{method}_tiny_finetune", "seed": 1,
            "model": {"name": "vit", "num_classes": 10, **TINY_VIT},
            "data": {"name": "digits", "batch_size": 32, "val_fraction": 0.1},
            "optim": {"name": "adamw", "lr": lr},
            "train": {"loop": "supervised", "steps": 3, "log_every": 3, "checkpoint_minutes": 0,
                      "init_from": str(source), "init_skip": SKIP[method], "init_rename": {"encoder": ""},
                      **train_keys}}


@pytest.fixture(scope="module", params=["mae", "simmim"])
def pretrained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp(request.param) / "run"
    train(from_dict(_pretrain_recipe(request.param)), out=out, progress=False, log=lambda m: None)
    return request.param, out


# ------------------------------------------------------------------------------------------ rename_keys


def test_rename_moves_prefixes_and_leaves_other_keys():
    t = {k: torch.tensor(float(i)) for i, k in enumerate(["enc.a.w", "enc.b", "encoder2.w", "head.w"])}
    out = rename_keys(t, {"enc": ""})
    assert list(out) == ["a.w", "b", "encoder2.w", "head.w"]          # "enc" does not cover "encoder2"
    assert all(out[n] is t[o] for n, o in zip(out, t, strict=True))
    assert list(rename_keys(t, {"enc": "backbone.body", "head": "fc"})) == [
        "backbone.body.a.w", "backbone.body.b", "encoder2.w", "fc.w"]
    assert list(rename_keys(t, {"": "net"})) == ["net.enc.a.w", "net.enc.b", "net.encoder2.w", "net.head.w"]
    assert list(rename_keys(t, {"": "net", "enc.a": "x"})) == ["x.w", "net.enc.b", "net.encoder2.w", "net.head.w"]


def test_rename_errors_are_one_line():
    t = {"enc.a": torch.zeros(1), "a": torch.zeros(1), "enc": torch.zeros(1)}
    with pytest.raises(ArchlabError, match="no saved tensor .* under 'dec'"):
        rename_keys(t, {"dec": ""})
    with pytest.raises(ArchlabError, match="'a' and 'enc.a' .* both become 'a'|'enc.a' and 'a' .* both become 'a'"):
        rename_keys(t, {"enc": ""})
    with pytest.raises(ArchlabError, match="lose its whole name"):
        rename_keys({"enc": torch.zeros(1)}, {"enc": ""})


def test_init_rename_is_validated_in_the_recipe():
    raw = _finetune_recipe("mae", "somewhere")
    raw["train"].pop("init_from")
    raw["train"].pop("init_skip")
    with pytest.raises(ArchlabError, match="init_rename needs init_from"):
        from_dict(raw)
    raw = _finetune_recipe("mae", "somewhere", init_rename={"encoder.": ""})
    with pytest.raises(ArchlabError, match="init_rename maps key prefixes"):
        from_dict(raw)
    raw = _finetune_recipe("mae", "somewhere", init_rename={"encoder": 3})
    with pytest.raises(ArchlabError, match="init_rename maps key prefixes"):
        from_dict(raw)


# ------------------------------------------------------------------------------------------ fine-tuning


def test_finetune_run_starts_from_the_pretrained_encoder(pretrained, tmp_path):
    """With lr = 0 (and no weight decay) training changes nothing, so the fine-tuned run's weights are exactly
    what it started from: every ViT tensor equals the pre-trained ``encoder.*`` tensor, the head is fresh."""
    method, source = pretrained
    saved = load_file(str(source / "model.safetensors"))
    lines: list[str] = []
    out = tmp_path / "ft"
    train(from_dict(_finetune_recipe(method, source, lr=0.0)), out=out, progress=False, log=lines.append)
    tuned = load_file(str(out / "model.safetensors"))
    encoder = {k[len("encoder."):]: v for k, v in saved.items() if k.startswith("encoder.")}
    assert set(tuned) == set(encoder) | {"head.weight", "head.bias"}
    for key, value in encoder.items():
        assert torch.equal(tuned[key], value), key
    fresh = create("vit", num_classes=10, **TINY_VIT).state_dict()
    assert not any(torch.equal(encoder[k], fresh[k]) for k in ("patch_embed.weight", "layers.0.attn.qkv.weight"))
    assert any("initialized from" in line and "2 tensor(s) keep their fresh initialization (head.bias, head.weight)"
               in line for line in lines)


def test_finetune_trains_every_weight(pretrained, tmp_path):
    method, source = pretrained
    saved = load_file(str(source / "model.safetensors"))
    out = tmp_path / "ft"
    train(from_dict(_finetune_recipe(method, source)), out=out, progress=False, log=lambda m: None)
    tuned = load_file(str(out / "model.safetensors"))
    assert not torch.equal(tuned["layers.0.attn.qkv.weight"], saved["encoder.layers.0.attn.qkv.weight"])


def test_finetune_without_skipping_the_pretraining_head_is_an_error(pretrained, tmp_path):
    method, source = pretrained
    with pytest.raises(ArchlabError, match="this model lacks|has shape"):
        train(from_dict(_finetune_recipe(method, source, init_skip=[])), out=tmp_path / "ft", progress=False,
              log=lambda m: None)
    assert not (tmp_path / "ft").exists()


def test_missing_pretraining_run_is_one_line_and_creates_nothing(tmp_path):
    with pytest.raises(ArchlabError) as info:
        train(from_dict(_finetune_recipe("mae", tmp_path / "no_such_run")), out=tmp_path / "ft", progress=False,
              log=lambda m: None)
    assert "no_such_run has no model.safetensors" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "ft").exists()


@pytest.mark.parametrize("method", ["mae", "simmim"])
def test_recipes_map_every_pretrained_tensor(method, tmp_path):
    """The shipped fine-tuning recipe fits its pre-training recipe: every encoder tensor of a model built from
    ``<method>_mnist.toml`` lands in the ViT of ``<method>_mnist_finetune.toml``; only the new head stays fresh."""
    pre = from_dict(tomllib.loads((RECIPES / f"{method}_mnist.toml").read_text()))
    ft_raw = tomllib.loads((RECIPES / f"{method}_mnist_finetune.toml").read_text())
    ft = from_dict(ft_raw)
    assert ft.train.loop == "supervised" and ft.train.init_from == f"recipe:ssl/{method}_mnist"
    assert prerequisites(ft) == [(f"ssl/{method}_mnist", RECIPES / f"{method}_mnist.toml")]  # its run, same seed
    source = create(pre.model["name"], **{k: v for k, v in pre.model.items() if k != "name"})
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "model.safetensors"))
    target = create("vit", **{k: v for k, v in ft.model.items() if k != "name"})
    fresh = init_from(target, tmp_path, ft.train.init_skip, ft.train.init_rename)
    assert fresh == ["head.bias", "head.weight"]
    for key, value in target.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(value, source.state_dict()[f"encoder.{key}"]), key
    assert ft_raw["model"]["pool"] == pre.model["encoder_config"]["pool"]
