"""Language-model data and training: tokenizers, text datasets (tinyshakespeare, text_toy, downloads),
the ``lm`` loop (learning, resume, artifacts) and ``archlab generate``."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import closed_port_url
from safetensors.torch import load_file

import archlab
from archlab.cli import main
from archlab.data import text as text_module
from archlab.data.download import RemoteFile, data_root
from archlab.data.text import load_text_dataset
from archlab.data.tokenizers import CharTokenizer, GPT2Tokenizer, load_tokenizer, tokenizer_from_dict
from archlab.engine.metrics import read_metrics
from archlab.engine.optim import lr_factor
from archlab.errors import ArchlabError, DataUnavailable
from archlab.recipe import OptimConfig, from_dict
from archlab.runner import evaluate, train
from archlab.train.lm import random_windows

pytest.importorskip("archlab.models.transformers.gpt")  # importing it registers "gpt"

TOY_TEXT = "the quick brown fox jumps over the lazy dog.\n" * 100

# ----------------------------------------------------------------------------- tokenizers


def test_char_tokenizer_round_trip_and_save(tmp_path: Path) -> None:
    tok = CharTokenizer.from_text("hello world\n")
    assert tok.chars == sorted(set("hello world\n")) and tok.vocab_size == 9
    ids = tok.encode("hello\nworld")
    assert ids[0] == tok.chars.index("h") and tok.decode(ids) == "hello\nworld"
    path = tok.save(tmp_path / "tok.json")
    assert json.loads(path.read_text())["type"] == "char"
    again = load_tokenizer(path)
    assert isinstance(again, CharTokenizer) and again.chars == tok.chars
    assert CharTokenizer.load(path).encode("low") == tok.encode("low")
    with pytest.raises(ArchlabError, match="'Z'") as info:
        tok.encode("hello Z")
    assert "\n" not in str(info.value)
    with pytest.raises(ArchlabError, match="unknown tokenizer type"):
        tokenizer_from_dict({"type": "sentencepiece"})


GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
SAMPLES = ["Hello world! It's 2024, isn't it?", "  multiple   spaces\n\nand\ttabs", "First Citizen:\nBefore we",
           "ünïcödé — 日本語 🙂", "<|endoftext|> is plain text here", ""]


@pytest.fixture(scope="module")
def bpe_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small byte-level BPE (vocab.json + merges.txt, GPT-2 format) trained with `tokenizers`."""
    tk = pytest.importorskip("tokenizers")
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = tk.trainers.BpeTrainer(vocab_size=400, initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
                                     show_progress=False)
    tok.train_from_iterator([TOY_TEXT, "Hello world! It's the citizens' time, isn't it? 1234 5678\n" * 20], trainer)
    folder = tmp_path_factory.mktemp("bpe")
    vocab, merges = tok.model.save(str(folder))
    return Path(vocab), Path(merges)


def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable-character <-> byte table, written out from the paper's code description."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def test_gpt2_bpe_equals_tiktoken(bpe_files: tuple[Path, Path]) -> None:
    tiktoken = pytest.importorskip("tiktoken")
    tok = GPT2Tokenizer.from_files(*bpe_files)
    decoder = _byte_decoder()
    ranks = {bytes(decoder[c] for c in token): i for token, i in tok.vocab.items()}
    reference = tiktoken.Encoding("toy", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={})
    for text in SAMPLES:
        ids = tok.encode(text)
        assert ids == reference.encode_ordinary(text), text
        assert tok.decode(ids) == text
    assert tok.vocab_size == len(json.loads(bpe_files[0].read_text())) > 256


def test_gpt2_bpe_equals_transformers(bpe_files: tuple[Path, Path]) -> None:
    transformers = pytest.importorskip("transformers")
    tok = GPT2Tokenizer.from_files(*bpe_files)
    hf = transformers.GPT2TokenizerFast.from_pretrained(str(bpe_files[0].parent))  # reads vocab.json + merges.txt
    for text in SAMPLES[:-2]:  # HF treats <|endoftext|> as special when the vocabulary has it
        assert tok.encode(text) == hf.encode(text), text


def test_gpt2_tokenizer_save_load_and_errors(bpe_files: tuple[Path, Path], tmp_path: Path, monkeypatch) -> None:
    tok = GPT2Tokenizer.from_files(*bpe_files)
    again = load_tokenizer(tok.save(tmp_path / "tokenizer.json"))
    assert isinstance(again, GPT2Tokenizer) and all(again.encode(t) == tok.encode(t) for t in SAMPLES)
    with pytest.raises(ArchlabError, match="not found"):
        GPT2Tokenizer.from_files(tmp_path / "nope.json", bpe_files[1])
    (tmp_path / "bad.txt").write_text("#version: 0.2\nĠ t\nnot-a-merge\n")
    with pytest.raises(ArchlabError, match="line 3"):
        GPT2Tokenizer.from_files(bpe_files[0], tmp_path / "bad.txt")
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # as if the extra were not installed
    with pytest.raises(ArchlabError, match=r"pip install 'archlab\[text\]'"):
        GPT2Tokenizer.from_files(*bpe_files)


# ----------------------------------------------------------------------------- datasets


def test_text_toy_split_and_options(bpe_files: tuple[Path, Path]) -> None:
    ds = load_text_dataset("text_toy")
    n = int(len(TOY_TEXT) * 0.9)
    assert (len(ds.train), len(ds.val)) == (n, len(TOY_TEXT) - n) and ds.train.dtype == torch.long
    assert ds.tokenizer.decode(ds.train.tolist()) + ds.tokenizer.decode(ds.val.tolist()) == TOY_TEXT
    assert ds.vocab_size == len(set(TOY_TEXT))
    ds.train[:] = -1  # fresh copies: the cache is not touched
    assert load_text_dataset("text_toy").train.min() >= 0
    with pytest.raises(ArchlabError, match="data.options"):
        load_text_dataset("text_toy", {"repeat": 3})
    with pytest.raises(ArchlabError, match="vocab_file and merges_file") as info:
        load_text_dataset("text_toy", {"tokenizer": "gpt2"})
    assert "\n" not in str(info.value)
    bpe = load_text_dataset("text_toy", {"tokenizer": "gpt2", "vocab_file": str(bpe_files[0]),
                                         "merges_file": str(bpe_files[1])})
    assert bpe.vocab_size == len(json.loads(bpe_files[0].read_text()))
    assert len(bpe.train) < n / 3  # BPE merges whole words of the pattern
    assert bpe.tokenizer.decode(bpe.train.tolist()) == TOY_TEXT[:n]
    with pytest.raises(ArchlabError, match="not a text dataset"):
        load_text_dataset("digits")


def test_tinyshakespeare_from_archlab_data(archlab_data: Path) -> None:
    if not (data_root() / "tinyshakespeare" / "input.txt").is_file():
        pytest.skip(f"no tinyshakespeare/input.txt under {data_root()}")
    ds = load_text_dataset("tinyshakespeare", {"download": False})
    # nanoGPT data/shakespeare_char/prepare.py: 65 symbols, 1,003,854 train and 111,540 val tokens
    assert (ds.vocab_size, len(ds.train), len(ds.val)) == (65, 1003854, 111540)
    assert ds.tokenizer.decode(ds.train[:14].tolist()) == "First Citizen:"


def test_tinyshakespeare_download_from_a_local_server(http_dir: tuple[str, Path], tmp_path: Path,
                                                      monkeypatch) -> None:
    url, served = http_dir
    content = b"First Citizen:\nBefore we proceed any further, hear me speak.\n" * 20
    (served / "input.txt").write_bytes(content)
    good = RemoteFile("input.txt", (url + "missing.txt", url + "input.txt"), hashlib.sha256(content).hexdigest())
    monkeypatch.setattr(text_module, "TINYSHAKESPEARE", good)
    monkeypatch.setenv("ARCHLAB_DATA", str(tmp_path / "data"))
    ds = load_text_dataset("tinyshakespeare")
    assert os.listdir(tmp_path / "data" / "tinyshakespeare") == ["input.txt"]
    assert ds.vocab_size == len(set(content.decode())) and len(ds.train) + len(ds.val) == len(content)

    monkeypatch.setenv("ARCHLAB_DATA", str(tmp_path / "data2"))
    monkeypatch.setattr(text_module, "TINYSHAKESPEARE", RemoteFile("input.txt", (url + "input.txt",), "0" * 64))
    with pytest.raises(DataUnavailable, match="checksum mismatch"):
        load_text_dataset("tinyshakespeare")
    assert os.listdir(tmp_path / "data2" / "tinyshakespeare") == []  # neither the file nor a part

    closed = closed_port_url() + "input.txt"
    monkeypatch.setattr(text_module, "TINYSHAKESPEARE", RemoteFile("input.txt", (closed,), "0" * 64))
    with pytest.raises(DataUnavailable) as info:
        load_text_dataset("tinyshakespeare")
    message = str(info.value)
    assert "\n" not in message and "input.txt" in message and str(tmp_path / "data2" / "tinyshakespeare") in message


def test_the_official_file_is_the_expected_one() -> None:
    assert text_module.TINYSHAKESPEARE.urls == (
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",)
    assert text_module.TINYSHAKESPEARE.sha256 == "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


# ----------------------------------------------------------------------------- the lm loop


def test_random_windows_are_shifted_slices() -> None:
    ids = torch.arange(100)
    x, y = random_windows(ids, 8, 5, torch.Generator().manual_seed(0), torch.arange(9))
    assert x.shape == y.shape == (5, 8)
    assert torch.equal(y, x + 1) and torch.equal(x - x[:, :1], torch.arange(8).expand(5, 8))
    assert int(x[:, 0].max()) <= 100 - 9


def test_cosine_schedule_is_nanogpts_after_warmup() -> None:
    # nanoGPT train.py get_lr with learning_rate 1e-3, min_lr 1e-4, warmup_iters 100, lr_decay_iters 2000
    cfg = OptimConfig(lr=1e-3, schedule="cosine", warmup_steps=100, min_lr_ratio=0.1)
    for it in (100, 500, 1000, 1999):
        coeff = 0.5 * (1.0 + math.cos(math.pi * (it - 100) / (2000 - 100)))
        assert 1e-3 * lr_factor(it, 2000, cfg) == pytest.approx(1e-4 + coeff * (1e-3 - 1e-4), rel=1e-12)
    assert lr_factor(0, 2000, cfg) == pytest.approx(0.01)


def _recipe(eval_iters: int = 4, **train: Any) -> dict[str, Any]:
    return {
        "name": "toy_lm",
        "model": {"name": "gpt", "n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16, "dropout": 0.1},
        "data": {"name": "text_toy", "batch_size": 8},
        "optim": {"lr": 3e-3, "betas": [0.9, 0.99], "weight_decay": 0.1, "schedule": "cosine", "warmup_steps": 5,
                  "min_lr_ratio": 0.1},
        "train": {"loop": "lm", "steps": 40, "eval_every": 10, "log_every": 5, "grad_clip": 1.0,
                  "checkpoint_every": 20, **train},
        "loop": {"eval_iters": eval_iters},
    }


def _run(raw: dict[str, Any], out: Path, resume: bool = False) -> dict[str, Any]:
    return train(from_dict(copy.deepcopy(raw)), out=out, resume=resume, progress=False, log=lambda m: None)


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("lm") / "run"
    return out, _run(_recipe(), out)


def test_lm_loop_learns_and_writes_artifacts(lm_run: tuple[Path, dict[str, Any]]) -> None:
    out, summary = lm_run
    m = summary["metrics"]
    vocab = len(set(TOY_TEXT))
    evals = [r for r in read_metrics(out / "metrics.jsonl") if r["split"] == "val"]
    assert [r["step"] for r in evals] == [10, 20, 30, 40]
    assert evals[0]["val_loss"] < math.log(vocab) and m["val_loss"] < 0.6 * math.log(vocab)
    assert m["val_ppl"] == pytest.approx(math.exp(m["val_loss"]))
    assert m["best_val_loss"] == min(r["val_loss"] for r in evals) and "train_loss" in m
    assert archlab.load(out).config.vocab_size == vocab  # taken from the data
    assert isinstance(load_tokenizer(out / "tokenizer.json"), CharTokenizer)
    sample = (out / "samples.txt").read_text()
    assert len(sample) == 501 and sample[0] == "\n" and set(sample) <= set(TOY_TEXT)
    # the final metrics use a generator seeded from the run's seed: re-evaluation gives them again
    again = evaluate(out, device="cpu")
    assert again["val_loss"] == pytest.approx(m["val_loss"], abs=1e-6)


def test_lm_resume_is_bit_identical(lm_run: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    full, summary = lm_run
    cut = tmp_path / "cut"
    raw = _recipe()
    # A run that died after its step-20 checkpoint: a finished run cut back to that checkpoint.
    _run(raw, cut)
    (cut / "checkpoints" / "step-00000040.safetensors").unlink()
    (cut / "summary.json").unlink()
    resumed = _run(raw, cut, resume=True)
    a, b = load_file(str(full / "model.safetensors")), load_file(str(cut / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_metrics(full / "metrics.jsonl") == read_metrics(cut / "metrics.jsonl")
    assert resumed["metrics"] == summary["metrics"]
    assert (full / "samples.txt").read_text() == (cut / "samples.txt").read_text()


def test_lm_recipes_check_the_data_kind(tmp_path: Path) -> None:
    with pytest.raises(ArchlabError, match="kind 'text'"):
        from_dict({**_recipe(), "data": {"name": "digits"}})
    with pytest.raises(ArchlabError, match="kind 'text'"):
        from_dict({**_recipe(), "train": {"loop": "supervised", "steps": 1}})
    with pytest.raises(ArchlabError, match="vocab_size"):
        _run({**_recipe(), "model": {"name": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 8, "vocab_size": 5}},
             tmp_path / "r")
    with pytest.raises(ArchlabError, match="eval_iters"):
        from_dict(_recipe(eval_iters=0))
    with pytest.raises(ArchlabError, match="train.eval_iters has moved to loop.eval_iters"):
        from_dict({**_recipe(), "train": {**_recipe()["train"], "eval_iters": 4}})
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- archlab generate


def test_generate_cli(lm_run: tuple[Path, dict[str, Any]], capsys) -> None:
    out, _ = lm_run
    args = ["generate", str(out), "--prompt", "the quick", "--tokens", "30", "--seed", "3", "--device", "cpu"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert first.startswith("the quick") and len(first) == len("the quick") + 30 + 1  # + print's newline
    assert main(args) == 0 and capsys.readouterr().out == first  # same seed, same text
    assert main([*args[:-4], "--temperature", "0", "--top-k", "3", "--top-p", "0.9"]) == 0
    assert set(capsys.readouterr().out) <= set(TOY_TEXT)


@pytest.mark.parametrize("case", ["prompt", "no_dir", "not_lm", "empty", "top_p"])
def test_generate_cli_errors_are_one_line(case: str, lm_run: tuple[Path, dict[str, Any]], tmp_path: Path,
                                          capsys) -> None:
    out, _ = lm_run
    args = {"prompt": [str(out), "--prompt", "THE QUICK"],
            "no_dir": [str(tmp_path / "nothing")],
            "not_lm": [str(tmp_path / "mlp")],
            "empty": [str(out), "--prompt", ""],
            "top_p": [str(out), "--top-p", "1.5"]}[case]
    if case == "not_lm":
        archlab.create("mlp", in_features=4, num_classes=2).save_pretrained(tmp_path / "mlp")
        (tmp_path / "mlp" / "tokenizer.json").write_bytes((out / "tokenizer.json").read_bytes())
    assert main(["generate", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("archlab: error:")
    expected = {"prompt": "'Q'", "no_dir": "not found", "not_lm": "cannot generate", "empty": "empty",
                "top_p": "top-p"}[case]
    assert expected in err
