"""Tokenizers for language models: characters, and GPT-2's byte-level BPE.

Every tokenizer speaks the small :class:`Tokenizer` protocol::

    tok = CharTokenizer.from_text(text)      # vocabulary: the sorted set of the text's characters
    ids = tok.encode("First Citizen:")       # list[int]
    tok.decode(ids) == "First Citizen:"
    tok.save("run/tokenizer.json")           # JSON with a "type" field
    tok = load_tokenizer("run/tokenizer.json")

:class:`CharTokenizer` is nanoGPT's ``shakespeare_char`` encoding: token ``i`` is the ``i``-th
character of the sorted vocabulary (65 symbols for tinyshakespeare). :class:`GPT2Tokenizer` is
GPT-2's byte-level BPE read from its ``vocab.json`` + ``merges.txt``; the merging itself is done by
the Hugging Face ``tokenizers`` library (an optional extra), not reimplemented here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol

from ..errors import ArchlabError


class Tokenizer(Protocol):
    """What the language-model loop and ``archlab generate`` need from a tokenizer."""

    vocab_size: int

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; text the tokenizer cannot represent raises ArchlabError."""

    def decode(self, ids: list[int]) -> str:
        """The text of ``ids`` (inverse of :meth:`encode`)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable description with a ``type`` field (see :func:`tokenizer_from_dict`)."""

    def save(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_dict` as JSON to ``path``."""


def _write_json(path: str | os.PathLike, obj: dict[str, Any]) -> Path:
    from ..io import atomic_write_bytes

    path = Path(path)
    atomic_write_bytes(path, json.dumps(obj, ensure_ascii=False).encode())
    return path


class CharTokenizer:
    """One token per character; ids follow the sorted character set (nanoGPT's ``stoi`` / ``itos``)."""

    def __init__(self, chars: str | list[str]) -> None:
        chars = list(chars)
        if not chars or any(len(c) != 1 for c in chars) or len(set(chars)) != len(chars):
            raise ArchlabError("char tokenizer: the vocabulary must be a non-empty list of distinct characters")
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """The vocabulary of ``text``: its distinct characters, sorted by code point."""
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            unknown = sorted(set(text) - set(self.stoi))
            shown = ", ".join(repr(c) for c in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
            raise ArchlabError(f"text has characters outside the tokenizer's {self.vocab_size}-symbol "
                               f"vocabulary: {shown}") from None

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "char", "chars": "".join(self.chars)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CharTokenizer:
        if not isinstance(d.get("chars"), str):
            raise ArchlabError("char tokenizer: 'chars' must be a string of the vocabulary's characters")
        return cls(d["chars"])

    def save(self, path: str | os.PathLike) -> Path:
        return _write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> CharTokenizer:
        tok = load_tokenizer(path)
        if not isinstance(tok, cls):
            raise ArchlabError(f"{path} holds a {type(tok).__name__}, not a CharTokenizer")
        return tok


def _require_tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError:
        raise ArchlabError("the GPT-2 tokenizer needs the `tokenizers` package: pip install 'archlab[text]'") from None
    return tokenizers


def _parse_merges(lines: list[str], where: str) -> list[tuple[str, str]]:
    """``merges.txt`` lines -> pairs. The optional ``#version`` header and blank lines are skipped."""
    merges = []
    for n, line in enumerate(lines, 1):
        line = line.rstrip("\r\n")
        if not line or (n == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise ArchlabError(f"{where}: line {n} is not a merge ('left right'): {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


class GPT2Tokenizer:
    """GPT-2's byte-level BPE (Radford et al. 2019) from ``vocab.json`` + ``merges.txt``.

    Text is split by GPT-2's pre-tokenization regex, each piece's UTF-8 bytes are mapped to printable
    characters, and the merges are applied in rank order -- all by the ``tokenizers`` library, set up
    as Hugging Face's ``GPT2TokenizerFast`` is (no prefix space, no special-token handling, so
    ``<|endoftext|>`` in the text is ordinary text, like tiktoken's ``encode_ordinary``).
    """

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]]) -> None:
        tk = _require_tokenizers()
        if not vocab:
            raise ArchlabError("GPT-2 tokenizer: empty vocabulary")
        self.vocab = dict(vocab)
        self.merges = list(merges)
        missing = next((m for m in self.merges if m[0] not in vocab or m[1] not in vocab
                        or m[0] + m[1] not in vocab), None)
        if missing is not None:
            raise ArchlabError(f"GPT-2 tokenizer: merge {' '.join(missing)!r} uses a token that is not in the "
                               "vocabulary (vocab.json and merges.txt do not belong together)")
        tok = tk.Tokenizer(tk.models.BPE(vocab=self.vocab, merges=self.merges))
        tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = tk.decoders.ByteLevel()
        self._tok = tok

    @classmethod
    def from_files(cls, vocab_file: str | os.PathLike, merges_file: str | os.PathLike) -> GPT2Tokenizer:
        """Read GPT-2's ``vocab.json`` (token -> id) and ``merges.txt`` (one ``left right`` pair a line)."""
        vocab_file, merges_file = Path(vocab_file), Path(merges_file)
        for f in (vocab_file, merges_file):
            if not f.is_file():
                raise ArchlabError(f"GPT-2 tokenizer file not found: {f}")
        try:
            vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ArchlabError(f"{vocab_file}: not a JSON vocabulary ({exc})") from None
        if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
            raise ArchlabError(f"{vocab_file}: expected a JSON object mapping tokens to integer ids")
        try:
            lines = merges_file.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise ArchlabError(f"{merges_file}: not a UTF-8 text file") from None
        return cls(vocab, _parse_merges(lines, str(merges_file)))

    @property
    def vocab_size(self) -> int:
        # Ids may leave gaps in principle; the embedding must cover the largest one.
        return max(self.vocab.values()) + 1

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "gpt2", "vocab": self.vocab, "merges": [f"{a} {b}" for a, b in self.merges]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPT2Tokenizer:
        if not isinstance(d.get("vocab"), dict) or not isinstance(d.get("merges"), list):
            raise ArchlabError("GPT-2 tokenizer: 'vocab' (object) and 'merges' (list) are required")
        return cls(d["vocab"], _parse_merges(d["merges"], "tokenizer merges"))

    def save(self, path: str | os.PathLike) -> Path:
        return _write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> GPT2Tokenizer:
        tok = load_tokenizer(path)
        if not isinstance(tok, cls):
            raise ArchlabError(f"{path} holds a {type(tok).__name__}, not a GPT2Tokenizer")
        return tok


TOKENIZER_TYPES: dict[str, type] = {"char": CharTokenizer, "gpt2": GPT2Tokenizer}


def tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from its :meth:`~Tokenizer.to_dict`, dispatching on ``d["type"]``."""
    kind = d.get("type") if isinstance(d, dict) else None
    if kind not in TOKENIZER_TYPES:
        raise ArchlabError(f"unknown tokenizer type {kind!r}; types: {', '.join(TOKENIZER_TYPES)}")
    return TOKENIZER_TYPES[kind].from_dict(d)


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Read a tokenizer saved with ``save(path)`` (any type)."""
    path = Path(path)
    if not path.is_file():
        raise ArchlabError(f"tokenizer file not found: {path}")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArchlabError(f"{path}: not a tokenizer JSON file ({exc})") from None
    try:
        return tokenizer_from_dict(d)
    except ArchlabError as exc:
        raise ArchlabError(f"{path}: {exc}") from None
