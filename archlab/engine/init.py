"""``train.init_from``: start a run from the weights of an earlier run (fine-tuning, compression,
adapters), for every loop alike.

Tensors are copied by name from ``DIR/model.safetensors`` (a finished run directory or any folder
written by ``save_pretrained``). Keys the new model has and the saved one lacks -- a LoRA adapter, a
fresh head -- keep their fresh initialization and are reported; a saved tensor the new model has no
place for, or one of another shape, is an error, since silently dropping weights would hide a
mismatched architecture. ``train.init_skip`` names key prefixes of saved tensors *not* to copy (a new
head keeps its fresh initialization, whatever its shape); ``train.init_rename`` moves saved keys from one
prefix to another before they are matched (:func:`rename_keys`: ``{encoder = ""}`` lifts the ViT out of a
pre-trained MAE into a plain ViT classifier, ``{"" = "backbone"}`` puts a whole saved model under a wrapper's
``backbone``); ``train.freeze`` names parameter prefixes kept fixed during training (:func:`freeze`), e.g.
the body of a transferred network.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ..errors import ArchlabError

WEIGHTS_FILE = "model.safetensors"


def matches(key: str, prefix: str) -> bool:
    """Whether a dotted state-dict key lies under ``prefix`` (``head`` covers ``head`` and ``head.0.weight``,
    not ``header.weight``)."""
    return key == prefix or key.startswith(prefix + ".")


def rename_keys(saved: Mapping[str, torch.Tensor], rename: Mapping[str, str],
                where: str = "the saved weights") -> dict[str, torch.Tensor]:
    """Move every key under a source prefix of ``rename`` to its target prefix; other keys stay as they are.

    ``"a.b.w"`` under ``{"a": "c"}`` becomes ``"c.b.w"``; an empty target drops the prefix (``{"a": ""}``:
    ``"b.w"``), an empty source matches every key (``{"": "c"}``: ``"c.a.b.w"``). A key under several sources
    takes the longest one. Each source must match a key, and no two keys may land on the same name."""
    for source in rename:
        if source and not any(matches(k, source) for k in saved):
            raise ArchlabError(f"train.init_rename: no saved tensor of {where} lies under {source!r}")
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in saved.items():
        hits = [s for s in rename if s == "" or matches(key, s)]
        new = key
        if hits:
            source = max(hits, key=len)
            rest = key if source == "" else key[len(source) + 1:]
            new = ".".join(part for part in (rename[source], rest) if part)
            if not new:
                raise ArchlabError(f"train.init_rename: {key!r} would lose its whole name (rename a prefix, "
                                   "not a full key, to the root)")
        if new in out:
            raise ArchlabError(f"train.init_rename: {origin[new]!r} and {key!r} of {where} both become {new!r}")
        out[new], origin[new] = value, key
    return out


def init_from(model: object, directory: str | os.PathLike, skip: Sequence[str] = (),
              rename: Mapping[str, str] | None = None) -> list[str]:
    """Copy the saved weights of ``directory`` into ``model`` in place, except the keys under a prefix of
    ``skip`` (saved names), after moving keys by ``rename`` (:func:`rename_keys`); return the model's keys
    that kept their initialization (sorted)."""
    if not isinstance(model, nn.Module):
        raise ArchlabError(f"train.init_from: a {type(model).__name__} has no weights to initialize")
    weights = Path(directory) / WEIGHTS_FILE
    if not weights.is_file():
        raise ArchlabError(f"train.init_from: {str(directory)[:200]} has no {WEIGHTS_FILE} "
                           "(give a finished run directory or a save_pretrained folder)")
    try:
        saved = load_file(str(weights), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise ArchlabError(f"train.init_from: {weights} is damaged: {exc}") from None
    for prefix in skip:
        if not any(matches(k, prefix) for k in saved):
            raise ArchlabError(f"train.init_skip: no saved tensor of {weights} lies under {prefix!r}")
    saved = {k: v for k, v in saved.items() if not any(matches(k, p) for p in skip)}
    if rename:
        saved = rename_keys(saved, rename, str(weights))
    own = model.state_dict()
    extra = sorted(set(saved) - set(own))
    if extra:
        raise ArchlabError(f"train.init_from: {weights} has {len(extra)} tensor(s) this model lacks "
                           f"(first: {extra[0]}); the architectures differ")
    for key, value in saved.items():
        if own[key].shape != value.shape:
            raise ArchlabError(f"train.init_from: {key} has shape {tuple(value.shape)} in {weights}, "
                               f"{tuple(own[key].shape)} in this model")
    with torch.no_grad():
        for key, value in saved.items():
            own[key].copy_(value)  # state_dict tensors share storage with the parameters and buffers
    return sorted(set(own) - set(saved))


def freeze(model: nn.Module, prefixes: Sequence[str]) -> list[str]:
    """Stop the gradients of every parameter under one of ``prefixes`` (requires_grad = False); return
    their names. Each prefix must name at least one parameter, and something must stay trainable."""
    names = [n for n, _ in model.named_parameters()]
    for prefix in prefixes:
        if not any(matches(n, prefix) for n in names):
            raise ArchlabError(f"train.freeze: {type(model).__name__} has no parameter under {prefix!r} "
                               f"(its top-level modules: {', '.join(n for n, _ in model.named_children())})")
    frozen = [n for n, p in model.named_parameters() if any(matches(n, q) for q in prefixes)]
    if len(frozen) == len(names):
        raise ArchlabError("train.freeze: it freezes every parameter; nothing would train")
    for n, p in model.named_parameters():
        if n in frozen:
            p.requires_grad_(False)
    return frozen
