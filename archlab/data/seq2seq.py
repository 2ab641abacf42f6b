"""Generated sequence-to-sequence tasks for the ``seq2seq`` loop: digit strings in, digit strings out.

    from archlab.data.seq2seq import load_seq2seq_dataset
    ds = load_seq2seq_dataset("digits_sort", {"min_len": 4, "max_len": 12})
    ds.train.source.shape, ds.vocab_size       # (20000, 13), 12
    ds.decode(ds.train.target[0])              # e.g. "0124569"

Registered here: ``digits_sort`` (target = the source digits in ascending order) and ``digits_reverse``
(target = the source digits back to front). Each example draws a length ``n`` uniformly from
``min_len..max_len`` and ``n`` digits uniformly from 0..9.

Tokens (T5 convention: no BOS; the encoder input and the target both end with EOS):

    pad = 0, eos = 1, digit d = d + 2                     vocab_size = 12
    source = d_1 .. d_n eos pad ..                        (N, max_len + 1), source_lengths = n + 1
    target = t_1 .. t_n eos pad ..                        (N, max_len + 1), target_lengths = n + 1

Splits: the test set (``num_test`` examples) is drawn first from ``seed``, so it depends only on
``seed``, ``min_len``, ``max_len`` and ``num_test`` -- never on the split seed. Then
``num_train + num_val`` further examples are drawn, skipping any whose digits also appear in the
test set (short strings repeat often: there are only 10^4 of length 4), and ``split_seed`` chooses
which ``num_val`` of them validate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from .. import config as _config
from ..errors import ArchlabError
from .download import data_root
from .registry import get_entry, register_dataset

PAD, EOS, FIRST_DIGIT = 0, 1, 2
VOCAB_SIZE = FIRST_DIGIT + 10


@dataclass
class Seq2SeqSplit:
    """Padded token ids of one split. ``source`` (N, S) and ``target`` (N, T): int64, pad = 0 after
    each row's EOS; ``source_lengths`` / ``target_lengths`` (N,): tokens per row, EOS included."""

    source: torch.Tensor
    source_lengths: torch.Tensor
    target: torch.Tensor
    target_lengths: torch.Tensor

    def __post_init__(self) -> None:
        sizes = {len(self.source), len(self.source_lengths), len(self.target), len(self.target_lengths)}
        if len(sizes) != 1:
            raise ValueError(f"Seq2SeqSplit: tensors disagree on the number of examples: {sorted(sizes)}")

    def __len__(self) -> int:
        return len(self.source)

    def take(self, idx: torch.Tensor) -> Seq2SeqSplit:
        """The examples at ``idx`` (a copy)."""
        return Seq2SeqSplit(self.source[idx], self.source_lengths[idx], self.target[idx], self.target_lengths[idx])

    def to(self, device: torch.device) -> Seq2SeqSplit:
        return Seq2SeqSplit(self.source.to(device), self.source_lengths.to(device), self.target.to(device),
                            self.target_lengths.to(device))


@dataclass
class Seq2SeqDataset:
    """A sequence-to-sequence dataset in memory."""

    name: str
    train: Seq2SeqSplit
    val: Seq2SeqSplit
    test: Seq2SeqSplit
    vocab_size: int = VOCAB_SIZE
    pad_token_id: int = PAD
    eos_token_id: int = EOS
    info: dict = field(default_factory=dict)

    @staticmethod
    def decode(ids: torch.Tensor) -> str:
        """Token ids (1-D) -> the digits before the first EOS, as a string; pad is skipped, other
        non-digit ids show as ``?``."""
        out = []
        for t in ids.tolist():
            if t == EOS:
                break
            if t != PAD:
                out.append(str(t - FIRST_DIGIT) if FIRST_DIGIT <= t < VOCAB_SIZE else "?")
        return "".join(out)


@dataclass(frozen=True)
class DigitTaskConfig:
    """Options of the generated digit-string tasks."""

    min_len: int = 4
    """Fewest digits in a source string."""
    max_len: int = 12
    """Most digits in a source string."""
    num_train: int = 20000
    num_val: int = 1000
    num_test: int = 1000
    seed: int = 0
    """Seed of the generator (test set first, then the train + validation pool)."""

    def __post_init__(self) -> None:
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError(f"need 1 <= min_len <= max_len, got {self.min_len}, {self.max_len}")
        if self.num_train < 1 or self.num_val < 0 or self.num_test < 1:
            raise ValueError("need num_train >= 1, num_val >= 0 and num_test >= 1")
        # The pool must be able to avoid the test strings; there are sum_n 10^n distinct strings.
        distinct = sum(10 ** n for n in range(self.min_len, min(self.max_len, 9) + 1))
        if self.max_len < 9 and self.num_train + self.num_val + self.num_test > distinct // 2:
            raise ValueError(f"only {distinct} distinct strings of {self.min_len}..{self.max_len} digits: "
                             "ask for fewer examples or allow longer strings")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


Task = Literal["sort", "reverse"]


def _draw(n: int, cfg: DigitTaskConfig, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random digit strings: (digits (n, max_len) with -1 after each row's end, lengths (n,))."""
    lengths = torch.randint(cfg.min_len, cfg.max_len + 1, (n,), generator=gen)
    digits = torch.randint(0, 10, (n, cfg.max_len), generator=gen)
    valid = torch.arange(cfg.max_len) < lengths[:, None]
    return torch.where(valid, digits, -1), lengths


def _encode(digits: torch.Tensor, lengths: torch.Tensor, task: Task) -> Seq2SeqSplit:
    n, width = digits.shape
    pos = torch.arange(width)
    valid = pos < lengths[:, None]
    if task == "sort":
        # Padding (-1 -> 10) sorts after every digit, so the first `length` entries are the sorted digits.
        out = torch.where(valid, digits, 10).sort(dim=1).values
    else:
        # Row i reads back to front: position j takes digit length_i - 1 - j (valid positions only).
        src = (lengths[:, None] - 1 - pos).clamp(min=0)
        out = digits.gather(1, src)
    def tokens(d: torch.Tensor) -> torch.Tensor:
        t = torch.full((n, width + 1), PAD, dtype=torch.long)
        t[:, :width] = torch.where(valid, d + FIRST_DIGIT, PAD)
        t[torch.arange(n), lengths] = EOS
        return t
    return Seq2SeqSplit(tokens(digits), lengths + 1, tokens(out), lengths + 1)


def make_digit_task(task: Task, cfg: DigitTaskConfig) -> tuple[Seq2SeqSplit, Seq2SeqSplit]:
    """(train + validation pool, test) for ``task``; see the module docstring."""
    gen = torch.Generator().manual_seed(cfg.seed)
    test_digits, test_lengths = _draw(cfg.num_test, cfg, gen)
    seen = {tuple(row[:n].tolist()) for row, n in zip(test_digits, test_lengths, strict=True)}
    need = cfg.num_train + cfg.num_val
    kept_digits, kept_lengths = [], []
    while need > 0:
        digits, lengths = _draw(need + need // 4 + 16, cfg, gen)
        fresh = torch.tensor([tuple(row[:n].tolist()) not in seen for row, n in zip(digits, lengths, strict=True)])
        idx = fresh.nonzero().flatten()[:need]
        kept_digits.append(digits[idx])
        kept_lengths.append(lengths[idx])
        need -= len(idx)
    pool = _encode(torch.cat(kept_digits), torch.cat(kept_lengths), task)
    return pool, _encode(test_digits, test_lengths, task)


@register_dataset("digits_sort", DigitTaskConfig, num_classes=0, kind="seq2seq")
def _load_sort(cfg: DigitTaskConfig) -> tuple[Seq2SeqSplit, Seq2SeqSplit]:
    return make_digit_task("sort", cfg)


@register_dataset("digits_reverse", DigitTaskConfig, num_classes=0, kind="seq2seq")
def _load_reverse(cfg: DigitTaskConfig) -> tuple[Seq2SeqSplit, Seq2SeqSplit]:
    return make_digit_task("reverse", cfg)


# (name, data root, config) -> (pool, test) as the loader made them; never handed out (see registry._CACHE).
_CACHE: dict[tuple, tuple[Seq2SeqSplit, Seq2SeqSplit]] = {}


def load_seq2seq_dataset(name: str, options: dict | None = None, split_seed: int = 0) -> Seq2SeqDataset:
    """Load seq2seq dataset ``name`` with its ``options`` (validated); ``split_seed`` picks the validation
    examples out of the pool. Returns fresh copies each call."""
    entry = get_entry(name)
    if entry.kind != "seq2seq":
        from .registry import DATASETS

        names = ", ".join(e.name for e in DATASETS.entries("seq2seq"))
        raise ArchlabError(f"dataset {name!r} is not a sequence-to-sequence dataset (kind {entry.kind!r}); "
                           f"seq2seq datasets: {names}")
    cfg = _config.build(entry.config_class, options or {}, "data.options")
    if not 0 <= split_seed < 2**63:
        raise ArchlabError(f"data.split_seed: must be >= 0, got {split_seed!r}")
    key = (name, str(data_root()), cfg)
    if key not in _CACHE:
        _CACHE[key] = entry.loader(cfg)
    pool, test = _CACHE[key]
    perm = torch.randperm(len(pool), generator=torch.Generator().manual_seed(split_seed))
    val_idx, train_idx = perm[:cfg.num_val].sort().values, perm[cfg.num_val:].sort().values
    return Seq2SeqDataset(name, pool.take(train_idx), pool.take(val_idx), test.take(torch.arange(len(test))),
                          info={"min_len": cfg.min_len, "max_len": cfg.max_len})
