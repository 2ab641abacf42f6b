"""Attention and transformer models (GPT, BERT family, T5, BART, ViT, Seq2Seq). Importing registers them."""

from . import albert, bart, bert, distilbert, gpt, roberta, seq2seq, t5, vit  # noqa: F401
from .hf import from_hf, save_hf

__all__ = ["from_hf", "save_hf"]
