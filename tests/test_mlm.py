"""The masked-LM loop: BERT masking, special tokens, model defaults, learning, resume, errors."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

import archlab
from archlab.engine.loop import get_loop
from archlab.engine.metrics import read_metrics
from archlab.recipe import from_dict
from archlab.runner import train
from archlab.train.mlm import SpecialTokens, masking


def test_masking_follows_bert_rates_and_spares_special_tokens():
    num_text = 50
    special = SpecialTokens(num_text)
    ids = torch.randint(0, num_text, (1000, 130), generator=torch.Generator().manual_seed(1))
    ids[:, 0], ids[:, -1] = special.cls, special.sep
    ids[:10, 100:] = special.pad
    inputs, labels = masking(ids, num_text, special.mask, torch.Generator().manual_seed(0))
    is_special = ids >= num_text
    chosen = labels != -100
    assert not (chosen & is_special).any() and torch.equal(inputs[is_special], ids[is_special])
    assert torch.equal(labels[chosen], ids[chosen])  # labels: the original token, -100 elsewhere
    assert torch.equal(inputs[~chosen], ids[~chosen])  # positions not chosen are never touched
    n = int(chosen.sum())
    assert abs(n / int((~is_special).sum()) - 0.15) < 0.005
    as_mask = int((inputs[chosen] == special.mask).sum()) / n
    kept = int((inputs[chosen] == ids[chosen]).sum()) / n  # includes random draws of the same token
    # ~19,000 chosen positions: a standard error of 0.003 on these shares
    assert abs(as_mask - 0.8) < 0.012 and abs(kept - (0.1 + 0.1 / num_text)) < 0.01
    assert int(inputs.max()) <= special.sep and not (inputs[chosen] > special.mask).any()
    again = masking(ids, num_text, special.mask, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], inputs) and torch.equal(again[1], labels)
    half, _ = masking(ids, num_text, special.mask, torch.Generator().manual_seed(0), prob=0.5)
    assert abs(float((half != ids).float().mean()) - 0.5 * 0.9 * 128 / 130) < 0.01


def test_special_tokens_follow_the_text_vocabulary():
    s = SpecialTokens(65)
    assert (s.pad, s.mask, s.cls, s.sep, s.vocab_size) == (65, 66, 67, 68, 69)


def _recipe(model: str = "bert", **train_keys: Any) -> dict[str, Any]:
    sizes = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "intermediate_size": 64}
    if model == "albert":
        sizes["embedding_size"] = 16
    # A short period: every masked letter follows from its neighbours once attention finds them.
    return {"name": f"{model}-toy", "seed": 0, "model": {"name": model, **sizes, "dropout": 0.0},
            "data": {"name": "text_toy", "batch_size": 32, "options": {"pattern": "abcdefgh", "repeats": 300}},
            "loop": {"seq_len": 16},
            "optim": {"lr": 5e-3},
            "train": {"loop": "mlm", "steps": 90, "eval_every": 30, "log_every": 10, "threads": 1,
                      "device": "cpu", **train_keys}}


def _run(raw: dict[str, Any], out: Path, resume: bool = False) -> dict[str, Any]:
    return train(from_dict(copy.deepcopy(raw)), out=out, resume=resume, progress=False, log=lambda _m: None)


@pytest.mark.parametrize("model", ["bert", "roberta", "albert", "distilbert"])
def test_model_defaults_fit_vocabulary_and_window(model: str):
    rec = from_dict(_recipe(model))
    loop = get_loop("mlm")
    data = loop.load_data(rec)
    net = loop.build_model(rec, data, torch.device("cpu"))
    loop.check_fit(rec, data, net)
    c = net.config
    assert c.vocab_size == data.vocab_size + 4 and c.pad_token_id == data.vocab_size
    assert type(net).max_length(c) == rec.loop.seq_len + 2  # RoBERTa's offset positions included
    logits = net(torch.randint(0, c.vocab_size, (2, rec.loop.seq_len + 2)))
    assert logits.shape == (2, rec.loop.seq_len + 2, c.vocab_size)


def test_tiny_bert_learns_masked_tokens(tmp_path: Path):
    summary = _run(_recipe(), tmp_path / "run")
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    losses = [r["loss"] for r in records if r["split"] == "train"]
    val = [r for r in records if r["split"] == "val"]
    assert losses[-1] < 0.6 * losses[0]
    assert val[-1]["val_mlm_acc"] > val[0]["val_mlm_acc"] + 0.1 and val[-1]["val_loss"] < 0.6 * val[0]["val_loss"]
    # The last evaluation's metrics, plus the driver's best validation loss (the loop's default monitor).
    assert summary["metrics"] == {**{k: val[-1][k] for k in ("val_mlm_acc", "val_loss")},
                                  "best_val_loss": min(r["val_loss"] for r in val),
                                  "best_step": min(val, key=lambda r: r["val_loss"])["step"]}
    assert (tmp_path / "run" / "tokenizer.json").is_file()


def test_mlm_resume_is_bit_identical(assert_resume_exact):
    raw = _recipe(steps=10, eval_every=4, log_every=2, checkpoint_every=5)
    assert_resume_exact(raw)


def test_bad_mlm_recipes_fail_with_one_line(tmp_path: Path):
    raw = _recipe()
    with pytest.raises(archlab.ArchlabError, match="kind 'seq2seq' but loop 'mlm' needs kind 'text'"):
        from_dict({**raw, "data": {"name": "digits_sort"}})
    with pytest.raises(archlab.ArchlabError, match="loop.seq_len"):
        _run({**raw, "loop": {"seq_len": 100000}}, tmp_path / "r1")
    with pytest.raises(archlab.ArchlabError, match="model.max_position_embeddings"):
        _run({**raw, "model": {**raw["model"], "max_position_embeddings": 12}}, tmp_path / "r2")
    with pytest.raises(archlab.ArchlabError, match="model.vocab_size"):
        _run({**raw, "model": {**raw["model"], "vocab_size": 30}}, tmp_path / "r3")
    with pytest.raises(archlab.ArchlabError, match="model.head"):
        _run({**raw, "model": {**raw["model"], "head": "classify"}}, tmp_path / "r5")
    with pytest.raises(archlab.ArchlabError, match="train.monitor"):
        _run(_recipe(early_stopping=2, monitor="val_acc"), tmp_path / "r4")  # val_acc is not reported
    with pytest.raises(archlab.ArchlabError, match="mask_prob"):
        from_dict({**raw, "loop": {**raw["loop"], "mask_prob": 1.5}})
    assert not any(tmp_path.iterdir())
