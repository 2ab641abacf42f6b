"""Captions for digit images, generated from the label and attributes measured on the image.

CLIP (Radford et al. 2021) learns from images paired with free text. MNIST has labels only, so archlab
writes the text: each caption names the digit (as a word, "seven", or a numeral, "7") in one of several
templates and wordings, and may mention attributes measured on the pixels:

- **thickness** from the ink mass ``m = sum_p (x_p - min x)``: "thin" / "thick" for the lowest / highest
  third of the image's class (class-wise tertiles of the set being captioned), else nothing;
- **slant** from the image moments: with ``mu_pq`` the central moments of the ink,
  ``s = mu_11 / mu_02`` is the shear that makes the strokes upright; "slanted right" when ``s`` is in the
  class's lowest third (ink leans right as it goes up: the row axis points down), "slanted left" in
  the highest third;
- **size** from the height of the ink's bounding box (pixels above 30% of the maximum): "small" /
  "large" by class-wise tertiles.

Attribute words are measured facts about the image, so a caption never contradicts its picture (as far
as these rough measures go). Which template and wording is used is drawn from a ``torch.Generator``:
the same generator state gives the same captions (:class:`CaptionGenerator` is deterministic under a
seed). Zero-shot classification uses the label-only :data:`PROMPTS` (prompt ensembling, CLIP Sec. 3.1.4).

Text becomes ids with the character tokenizer (:func:`caption_tokenizer`): id 0 is padding ``_``; a
caption of ``L`` characters fills positions ``0 .. L-1`` of a ``[context_length]`` row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ArchlabError
from .tokenizers import CharTokenizer

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ALPHABET = "_ ,.0123456789abcdefghijklmnopqrstuvwxyz"
"""The caption vocabulary; ``_`` (id 0) pads."""

#: Label-only templates: ``{w}`` the digit as a word, ``{d}`` as a numeral. Also the zero-shot prompts.
PROMPTS = (
    "a handwritten {w}",
    "the digit {d}",
    "a photo of the number {w}",
    "the number {w}, written by hand",
    "a {d}",
    "digit {d}, {w}",
)

#: Templates with an attribute phrase ``{a}`` (e.g. "thick", "slanted left", "small").
ATTRIBUTE_TEMPLATES = (
    "a {a} handwritten {w}",
    "the digit {d}, drawn {a}",
    "a {a} {d}",
    "a handwritten {w}, {a}",
    "the number {w} written {a}",
)

THICKNESS = ("thin", "", "thick")
SLANT = ("slanted right", "", "slanted left")
SIZE = ("small", "", "large")


def caption_tokenizer() -> CharTokenizer:
    """The character tokenizer of the captions (``len(ALPHABET)`` = 40 symbols, ``_`` = 0 pads)."""
    return CharTokenizer(ALPHABET)


def _tertile(values: Tensor, labels: Tensor) -> Tensor:
    """0 / 1 / 2 = lowest / middle / highest third of ``values`` within each label's examples."""
    out = torch.ones(len(values), dtype=torch.long)
    for c in labels.unique():
        idx = (labels == c).nonzero().squeeze(1)
        v = values[idx]
        lo, hi = torch.quantile(v, torch.tensor([1 / 3, 2 / 3], dtype=v.dtype))
        out[idx] = (v > lo).long() + (v > hi).long()
    return out


def measure(x: Tensor) -> dict[str, Tensor]:
    """Raw attributes of images ``x`` ``[N, 1, H, W]``: ink mass, slant ``mu_11 / mu_02``, ink height; ``[N]`` each."""
    if x.dim() != 4:
        raise ArchlabError(f"captions need images [N, C, H, W], got shape {tuple(x.shape)}")
    ink = x.float().mean(1)
    ink = ink - ink.amin(dim=(1, 2), keepdim=True)                                 # [N, H, W] >= 0
    mass = ink.sum((1, 2)).clamp_min(1e-6)
    rows = torch.arange(ink.shape[1], dtype=torch.float32).view(1, -1, 1)
    cols = torch.arange(ink.shape[2], dtype=torch.float32).view(1, 1, -1)
    r0 = (ink * rows).sum((1, 2)) / mass
    c0 = (ink * cols).sum((1, 2)) / mass
    dr, dc = rows - r0.view(-1, 1, 1), cols - c0.view(-1, 1, 1)
    mu11 = (ink * dr * dc).sum((1, 2)) / mass
    mu02 = (ink * dr * dr).sum((1, 2)) / mass
    on = ink > 0.3 * ink.amax(dim=(1, 2), keepdim=True)
    any_row = on.any(2)                                                             # [N, H]
    idx = torch.arange(ink.shape[1]).expand_as(any_row)
    top = torch.where(any_row, idx, ink.shape[1]).amin(1)
    bottom = torch.where(any_row, idx, -1).amax(1)
    return {"mass": mass, "slant": mu11 / mu02.clamp_min(1e-6), "height": (bottom - top + 1).float()}


def attributes(x: Tensor, y: Tensor) -> Tensor:
    """Discrete attributes ``[N, 3]`` (thickness, slant, size; 0/1/2 = low/middle/high third of the class)."""
    m = measure(x)
    return torch.stack([_tertile(m["mass"], y), _tertile(m["slant"], y), _tertile(m["height"], y)], dim=1)


def attribute_phrase(attrs: Tensor) -> list[str]:
    """The non-empty attribute words of one example's ``[3]`` attributes."""
    words = [THICKNESS[int(attrs[0])], SLANT[int(attrs[1])], SIZE[int(attrs[2])]]
    return [w for w in words if w]


@dataclass
class CaptionGenerator:
    """Draws captions for labelled images; ``p_attribute`` is the chance that a caption mentions an attribute
    (when the image has one outside its class's middle third)."""

    p_attribute: float = 0.5

    def caption(self, label: int, attrs: Tensor, generator: torch.Generator) -> str:
        """One caption of digit ``label`` with attributes ``attrs`` ``[3]``; four draws from ``generator``."""
        u = torch.rand(4, generator=generator).tolist()
        phrases = attribute_phrase(attrs)
        w, d = WORDS[label], str(label)
        if phrases and u[0] < self.p_attribute:
            template = ATTRIBUTE_TEMPLATES[int(u[1] * len(ATTRIBUTE_TEMPLATES))]
            a = phrases[int(u[2] * len(phrases))]
            if len(phrases) > 1 and u[3] < 0.3:   # sometimes two attributes: "thick and small"
                a = " and ".join(phrases[:2])
            return template.format(w=w, d=d, a=a)
        return PROMPTS[int(u[1] * len(PROMPTS))].format(w=w, d=d)

    def captions(self, labels: Tensor, attrs: Tensor, generator: torch.Generator) -> list[str]:
        """One caption per example: ``labels`` ``[N]``, ``attrs`` ``[N, 3]``."""
        return [self.caption(int(c), a, generator) for c, a in zip(labels, attrs, strict=True)]


def encode(texts: list[str], tokenizer: CharTokenizer, context_length: int) -> Tensor:
    """Ids ``[N, context_length]``, 0-padded on the right; a text longer than the context is an error."""
    out = torch.zeros(len(texts), context_length, dtype=torch.long)
    for i, t in enumerate(texts):
        ids = tokenizer.encode(t)
        if not 0 < len(ids) <= context_length:
            raise ArchlabError(f"caption {t!r} has {len(ids)} characters; the text context holds {context_length}")
        out[i, :len(ids)] = torch.tensor(ids)
    return out


def class_prompts(num_classes: int = 10, templates: tuple[str, ...] = PROMPTS) -> list[list[str]]:
    """Zero-shot prompts: for each class, every template filled with its word and numeral."""
    if num_classes > len(WORDS):
        raise ArchlabError(f"caption prompts name digits 0-9; the dataset has {num_classes} classes")
    return [[t.format(w=WORDS[c], d=str(c)) for t in templates] for c in range(num_classes)]
