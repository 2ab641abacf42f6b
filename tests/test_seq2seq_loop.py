"""The generated digit-string tasks and the seq2seq loop: data properties, scoring, learning, resume, errors."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

import archlab
from archlab.data.seq2seq import EOS, FIRST_DIGIT, PAD, Seq2SeqDataset, load_seq2seq_dataset
from archlab.engine.metrics import read_metrics
from archlab.recipe import from_dict
from archlab.runner import train
from archlab.train.seq2seq import compare_outputs, shift_right

SMALL = {"min_len": 1, "max_len": 3, "num_train": 400, "num_val": 50, "num_test": 50}


def _digits(row: torch.Tensor) -> list[int]:
    return [t - FIRST_DIGIT for t in row.tolist() if t >= FIRST_DIGIT]


@pytest.mark.parametrize("name", ["digits_sort", "digits_reverse"])
def test_digit_tasks_are_well_formed(name: str):
    ds = load_seq2seq_dataset(name, {"min_len": 4, "max_len": 12, "num_train": 600, "num_val": 100,
                                     "num_test": 100})
    assert (len(ds.train), len(ds.val), len(ds.test)) == (600, 100, 100) and ds.vocab_size == 12
    for split in (ds.train, ds.val, ds.test):
        assert split.source.shape == split.target.shape == (len(split), 13)
        assert split.source.dtype == torch.long and int(split.source.max()) < ds.vocab_size
        for src, n_src, tgt, n_tgt in zip(split.source[:50], split.source_lengths[:50], split.target[:50],
                                          split.target_lengths[:50], strict=True):
            n = int(n_src)
            assert 5 <= n <= 13 and int(n_tgt) == n  # 4..12 digits + eos
            assert src[n - 1] == EOS and tgt[n - 1] == EOS and (src[n:] == PAD).all() and (tgt[n:] == PAD).all()
            assert (src[:n - 1] >= FIRST_DIGIT).all()
            digits = _digits(src)
            assert _digits(tgt) == (sorted(digits) if name == "digits_sort" else digits[::-1])
    assert Seq2SeqDataset.decode(torch.tensor([FIRST_DIGIT + 3, FIRST_DIGIT, EOS, FIRST_DIGIT])) == "30"


def test_test_set_is_fixed_and_disjoint_from_training_data():
    a = load_seq2seq_dataset("digits_sort", SMALL, split_seed=0)
    b = load_seq2seq_dataset("digits_sort", {**SMALL, "num_train": 300}, split_seed=5)
    assert torch.equal(a.test.source, b.test.source)  # neither split seed nor pool size moves it
    assert not torch.equal(a.val.source, load_seq2seq_dataset("digits_sort", SMALL, split_seed=5).val.source)
    again = load_seq2seq_dataset("digits_sort", SMALL, split_seed=0)
    assert torch.equal(a.train.source, again.train.source) and torch.equal(a.val.target, again.val.target)
    test_strings = {tuple(r.tolist()) for r in a.test.source}
    assert not test_strings & {tuple(r.tolist()) for r in torch.cat([a.train.source, a.val.source])}
    a.train.source.zero_()  # callers get copies
    assert load_seq2seq_dataset("digits_sort", SMALL).train.source.any()


def test_bad_options_fail_with_one_line():
    with pytest.raises(archlab.ArchlabError, match="min_len"):
        load_seq2seq_dataset("digits_sort", {"min_len": 5, "max_len": 3})
    with pytest.raises(archlab.ArchlabError, match="distinct strings"):
        load_seq2seq_dataset("digits_sort", {"min_len": 1, "max_len": 2})
    with pytest.raises(archlab.ArchlabError, match="not a sequence-to-sequence dataset"):
        load_seq2seq_dataset("digits")


def test_shift_right_and_exact_match_scoring():
    target = torch.tensor([[5, 6, EOS, PAD], [7, EOS, PAD, PAD]])
    assert shift_right(target, 0).tolist() == [[0, 5, 6, EOS], [0, 7, EOS, PAD]]
    generated = torch.tensor([
        [5, 6, EOS, 9, 9],      # junk after eos is ignored -> exact
        [7, 8, EOS, PAD, PAD],  # one token too many
    ])
    exact, correct = compare_outputs(generated, target, PAD, EOS)
    assert exact.tolist() == [True, False] and correct.tolist() == [3, 1]
    no_eos = torch.tensor([[5, 6], [7, 3]])  # output cut off before its eos never matches
    exact, correct = compare_outputs(no_eos, target, PAD, EOS)
    assert exact.tolist() == [False, False] and correct.tolist() == [2, 1]


# ------------------------------------------------------------------------------------- the loop
MODELS = {"t5": {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_heads": 4, "num_layers": 1, "num_decoder_layers": 1,
                 "dropout": 0.0},
          "bart": {"d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 4,
                   "decoder_attention_heads": 4, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "dropout": 0.0},
          "seq2seq_gru": {"emb_dim": 32, "hidden": 32}}


def _registered(model: str) -> bool:
    try:
        archlab.registry.get(model)
    except archlab.ArchlabError:
        return False
    return True


def _recipe(model: str = "t5", **train_keys: Any) -> dict[str, Any]:
    return {"name": f"{model}-reverse", "seed": 0, "model": {"name": model, **MODELS[model]},
            "data": {"name": "digits_reverse", "batch_size": 32, "eval_batch_size": 100, "options": SMALL},
            "optim": {"lr": 1e-2},
            "train": {"loop": "seq2seq", "steps": 40, "eval_every": 10, "log_every": 10, "threads": 1,
                      "device": "cpu", "monitor": "val_exact_match", **train_keys}}


def _run(raw: dict[str, Any], out: Path, resume: bool = False) -> dict[str, Any]:
    return train(from_dict(copy.deepcopy(raw)), out=out, resume=resume, progress=False, log=lambda _m: None)


@pytest.mark.parametrize("model", list(MODELS))
def test_tiny_model_learns_reversal(model: str, tmp_path: Path):
    if not _registered(model):
        pytest.skip(f"model {model!r} is not registered yet")
    summary = _run(_recipe(model), tmp_path / "run")
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    losses = [r["loss"] for r in records if r["split"] == "train"]
    val = [r for r in records if r["split"] == "val"]
    m = summary["metrics"]
    assert losses[-1] < 0.75 * losses[0]
    assert val[-1]["val_token_acc"] > val[0]["val_token_acc"] + 0.1
    assert m["val_exact_match"] == max(r["val_exact_match"] for r in val) > val[0]["val_exact_match"]
    assert set(m) >= {"val_exact_match", "test_exact_match", "val_token_acc", "val_loss", "best_step"}
    assert (tmp_path / "run" / "samples.txt").read_text().count("->") == 20


def test_resume_is_bit_identical(assert_resume_exact):
    if not _registered("t5"):
        pytest.skip("model 't5' is not registered yet")
    raw = _recipe(steps=12, eval_every=4, log_every=2, checkpoint_every=5)
    assert_resume_exact(raw)


def test_bad_seq2seq_recipes_fail_with_one_line(tmp_path: Path):
    if not _registered("t5"):
        pytest.skip("model 't5' is not registered yet")
    raw = _recipe()
    with pytest.raises(archlab.ArchlabError, match="kind 'arrays' but loop 'seq2seq' needs kind 'seq2seq'"):
        from_dict({**raw, "data": {"name": "digits"}})
    with pytest.raises(archlab.ArchlabError, match="kind 'seq2seq' but loop 'supervised'"):
        from_dict({**raw, "train": {**raw["train"], "loop": "supervised"}})
    with pytest.raises(archlab.ArchlabError, match="'mlp' is a classic model and loop 'seq2seq' cannot train it"):
        _run({**raw, "model": {"name": "mlp", "in_features": 4}}, tmp_path / "r")
    with pytest.raises(archlab.ArchlabError, match="not an encoder-decoder"):
        _run({**raw, "model": {"name": "bert", "hidden_size": 16, "num_layers": 1, "num_heads": 2,
                               "intermediate_size": 16}}, tmp_path / "r")
    with pytest.raises(archlab.ArchlabError, match="train.monitor: loop 'seq2seq' does not report 'val_acc'"):
        _run(_recipe(monitor="val_acc"), tmp_path / "r2")
    with pytest.raises(archlab.ArchlabError, match="model.eos_token_id: the digits_reverse data uses 1, got 5"):
        _run({**raw, "model": {**raw["model"], "eos_token_id": 5}}, tmp_path / "r3")
    with pytest.raises(archlab.ArchlabError, match="model.vocab_size"):
        _run({**raw, "model": {**raw["model"], "vocab_size": 8}}, tmp_path / "r4")
    assert not any(tmp_path.iterdir())
