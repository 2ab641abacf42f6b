"""Text datasets for language models: one long stream of token ids per split.

    from archlab.data.text import load_text_dataset
    ds = load_text_dataset("tinyshakespeare")        # file under data_root()/tinyshakespeare
    ds.train.shape, ds.val.shape, ds.vocab_size       # (1003854,), (111540,), 65
    ds.tokenizer.decode(ds.train[:14].tolist())       # 'First Citizen:'

The split follows nanoGPT's ``data/shakespeare_char/prepare.py``: the first 90% of the *characters*
are train, the last 10% val, each encoded on its own. With ``tokenizer = "char"`` the vocabulary is the
sorted set of characters of the whole text (65 for tinyshakespeare); with ``tokenizer = "gpt2"`` it is
GPT-2's byte-level BPE from the ``vocab_file`` / ``merges_file`` options.

Registered: ``tinyshakespeare`` (Karpathy's char-rnn corpus, 1,115,394 characters of Shakespeare's
plays; downloaded and verified by sha256 when missing) and ``text_toy`` (a generated repeating
pattern, for tests and smoke runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from .. import config as _config
from ..errors import ArchlabError
from .download import RemoteFile, data_root, ensure_files
from .registry import DATASETS, get_entry, register_dataset
from .tokenizers import CharTokenizer, GPT2Tokenizer, Tokenizer

TokenizerKind = Literal["char", "gpt2"]

TINYSHAKESPEARE = RemoteFile(
    "input.txt",
    ("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",),
    "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
)

TRAIN_FRACTION = 0.9


@dataclass
class TextDataset:
    """A tokenized corpus: train and val are 1-D int64 tensors of token ids, in text order."""

    name: str
    train: torch.Tensor
    val: torch.Tensor
    tokenizer: Tokenizer
    vocab_size: int


@dataclass(frozen=True)
class TinyShakespeareConfig:
    """Options of the ``tinyshakespeare`` dataset."""

    tokenizer: TokenizerKind = "char"
    """char: one token per character (nanoGPT shakespeare_char) | gpt2: GPT-2 byte-level BPE."""
    vocab_file: str = ""
    """gpt2: path of GPT-2's ``vocab.json``."""
    merges_file: str = ""
    """gpt2: path of GPT-2's ``merges.txt``."""
    download: bool = True
    """Download the file when missing; False never touches the network."""


@dataclass(frozen=True)
class TextToyConfig:
    """Options of ``text_toy``: ``pattern`` repeated ``repeats`` times (no file, nothing to download)."""

    pattern: str = "the quick brown fox jumps over the lazy dog.\n"
    repeats: int = 100
    tokenizer: TokenizerKind = "char"
    vocab_file: str = ""
    merges_file: str = ""

    def __post_init__(self) -> None:
        if not self.pattern or self.repeats < 1:
            raise ValueError("pattern must be non-empty and repeats >= 1")


def make_tokenizer(kind: str, text: str, vocab_file: str = "", merges_file: str = "") -> Tokenizer:
    """``char``: the character set of ``text``; ``gpt2``: BPE from the two files (both required)."""
    if kind == "char":
        return CharTokenizer.from_text(text)
    if not vocab_file or not merges_file:
        raise ArchlabError("data.options: tokenizer = \"gpt2\" needs vocab_file and merges_file (the paths of "
                           "GPT-2's vocab.json and merges.txt)")
    return GPT2Tokenizer.from_files(Path(vocab_file).expanduser(), Path(merges_file).expanduser())


def tokenize_corpus(name: str, text: str, tokenizer: Tokenizer) -> TextDataset:
    """Split ``text`` 90/10 by characters (nanoGPT) and encode each part."""
    n = int(len(text) * TRAIN_FRACTION)
    train = torch.tensor(tokenizer.encode(text[:n]), dtype=torch.long)
    val = torch.tensor(tokenizer.encode(text[n:]), dtype=torch.long)
    return TextDataset(name, train, val, tokenizer, tokenizer.vocab_size)


@register_dataset("tinyshakespeare", TinyShakespeareConfig, num_classes=0, kind="text")
def _load_tinyshakespeare(cfg: TinyShakespeareConfig) -> TextDataset:
    (path,) = ensure_files("tinyshakespeare", [TINYSHAKESPEARE], data_root() / "tinyshakespeare",
                           download=cfg.download)
    text = path.read_text(encoding="utf-8")
    return tokenize_corpus("tinyshakespeare", text, make_tokenizer(cfg.tokenizer, text, cfg.vocab_file,
                                                                   cfg.merges_file))


@register_dataset("text_toy", TextToyConfig, num_classes=0, kind="text")
def _load_text_toy(cfg: TextToyConfig) -> TextDataset:
    text = cfg.pattern * cfg.repeats
    return tokenize_corpus("text_toy", text, make_tokenizer(cfg.tokenizer, text, cfg.vocab_file, cfg.merges_file))


_CACHE: dict[tuple, TextDataset] = {}


def load_text_dataset(name: str, options: dict | None = None) -> TextDataset:
    """Load text dataset ``name`` with its ``options`` (validated); each call returns fresh tensors."""
    entry = get_entry(name)
    if entry.kind != "text":
        raise ArchlabError(f"dataset {name!r} is not a text dataset; text datasets: {', '.join(text_dataset_names())}")
    cfg = _config.build(entry.config_class, options or {}, "data.options")
    key = (name, str(data_root()), cfg)
    if key not in _CACHE:
        _CACHE[key] = entry.loader(cfg)
    ds = _CACHE[key]
    return TextDataset(ds.name, ds.train.clone(), ds.val.clone(), ds.tokenizer, ds.vocab_size)


def text_dataset_names() -> list[str]:
    return [e.name for e in DATASETS.entries("text")]
