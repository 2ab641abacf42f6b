"""RoBERTa (Liu et al. 2019): BERT's architecture, trained longer on more data without next-sentence
prediction, with dynamic masking and a byte-level BPE vocabulary.

The network is :class:`~archlab.models.transformers.bert.Bert` with three differences inherited from
fairseq:

* positions count real tokens only and start after the padding index ``pad``:
  ``p_t = pad + sum_{s <= t} [x_s != pad]`` for a real token, ``p_t = pad`` for padding -- so a
  model with ``max_position_embeddings = n`` reads at most ``n - pad - 1`` tokens (514 -> 512);
* no segments (``type_vocab_size = 1``: one learned vector added to every token), LayerNorm eps 1e-5;
* the masked-LM transform always uses the exact GELU, and the classification head is
  ``logits = W_o Dropout(tanh(W_d Dropout(h_<s>) + b_d)) + b_o`` (no pooler in the base model).

Hugging Face format: ``RobertaModel`` / ``RobertaForMaskedLM`` / ``RobertaForSequenceClassification``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ...registry import register
from .bert import Bert, BertConfig, BertEmbeddings, MaskedLMHead, SequenceClassifier


@dataclass
class RobertaConfig(BertConfig):
    max_position_embeddings: int = 130
    """learned position vectors; positions start at pad_token_id + 1, so 130 serves 128 tokens (roberta-base: 514)"""
    type_vocab_size: int = 1
    """segment embeddings: RoBERTa has none beyond the one vector added to every token"""
    layer_norm_eps: float = 1e-5
    """epsilon of every LayerNorm"""
    pad_token_id: int | None = 1
    """padding token; also the position index of padding (real tokens count from pad_token_id + 1)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pad_token_id is None:
            raise ValueError("RoBERTa needs a pad_token_id: positions are counted from it")
        if self.max_position_embeddings <= self.pad_token_id + 1:
            raise ValueError(f"max_position_embeddings ({self.max_position_embeddings}) must exceed "
                             f"pad_token_id + 1 ({self.pad_token_id + 1})")


class RobertaEmbeddings(BertEmbeddings):
    """:class:`BertEmbeddings` with fairseq positions (module docstring); the padding position's
    vector starts at zero and gets no gradient."""

    def __init__(self, c: RobertaConfig) -> None:
        super().__init__(c.vocab_size, c.hidden_size, c.max_position_embeddings, c.type_vocab_size,
                         c.pad_token_id, c.layer_norm_eps, c.dropout, position_padding_idx=c.pad_token_id)
        self.pad = c.pad_token_id

    def max_length(self) -> int:
        return self.position_embeddings.num_embeddings - self.pad - 1

    def position_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        real = input_ids.ne(self.pad).long()
        return torch.cumsum(real, dim=1) * real + self.pad


@register("roberta", family="transformers")
class Roberta(Bert):
    """RoBERTa encoder (Liu et al. 2019): BERT with fairseq positions, no segments, its own heads.

    Shapes:
        input_ids, attention_mask (1 = token, 0 = padding): ``[B, T]`` ->
        ``[B, T, vocab]`` (mlm) | ``[B, num_labels]`` (classify) | ``[B, T, hidden]`` (none)
    """

    config_class = RobertaConfig
    hf_model_types: ClassVar[tuple[str, ...]] = ("roberta",)
    hf_stem: ClassVar[str] = "Roberta"
    hf_prefix: ClassVar[str] = "roberta"
    hf_defaults: ClassVar[dict[str, Any]] = {**Bert.hf_defaults, "vocab_size": 50265, "pad_token_id": 1}

    def _build_embeddings(self) -> RobertaEmbeddings:
        return RobertaEmbeddings(self.config)

    def _build_mlm_head(self) -> MaskedLMHead:
        c = self.config
        return MaskedLMHead(c.hidden_size, c.hidden_size, c.vocab_size, "gelu", c.layer_norm_eps)

    def _build_classifier(self) -> SequenceClassifier:
        c = self.config
        dropout = c.dropout if c.classifier_dropout is None else c.classifier_dropout
        return SequenceClassifier(c.hidden_size, c.num_labels, "tanh", dropout, input_dropout=dropout)

    @classmethod
    def max_length(cls, config: Any) -> int:
        return config.max_position_embeddings - config.pad_token_id - 1

    @classmethod
    def hf_modules(cls, config: Any) -> dict[str, str | tuple[str, ...]]:
        names = super().hf_modules(config)
        names.update({"mlm_head.dense": "lm_head.dense", "mlm_head.norm": "lm_head.layer_norm",
                      "mlm_head": "lm_head", "classifier.pool.dense": "classifier.dense",
                      "classifier.out": "classifier.out_proj"})
        return names

    @classmethod
    def hf_ignored(cls, config: Any) -> tuple[str, ...]:
        ignored = ("lm_head.decoder.", "embeddings.position_ids", "embeddings.token_type_ids")
        return ignored if config.pooler else (*ignored, "pooler.")

    @classmethod
    def hf_aliases(cls) -> dict[str, str]:
        return {"lm_head.bias": "lm_head.decoder.bias"}
