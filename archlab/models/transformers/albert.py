"""ALBERT (Lan et al. 2020): BERT with far fewer parameters through two reductions.

* Factorized embedding parameterization (sec. 3.1): tokens are embedded in a small space ``E`` and
  projected up to the hidden width ``H``: ``e_t = W_in LayerNorm(E_word[x_t] + E_type[s_t] + E_pos[t])``,
  ``V x E + E x H`` parameters instead of ``V x H``. The masked-LM transform maps back to ``E`` so the
  tied decoder can reuse the ``V x E`` embedding.
* Cross-layer parameter sharing (sec. 3.1): the ``L`` layers are ``num_hidden_groups`` groups of
  ``inner_group_num`` layers; layer ``i`` runs group ``floor(i * G / L)``. The default -- one group of
  one layer -- applies the *same* post-norm Transformer layer ``L`` times.

Sentence-order prediction (the paper's replacement for next-sentence prediction) is a pre-training
head only; the classify head is BERT's (pooler + linear).

Known difference from Hugging Face in *training* mode only: its ALBERT layer adds the feed-forward
output to the residual without dropout, while archlab's layer applies ``dropout`` there too (0 by
default, as in ALBERT v2).

Hugging Face format: ``AlbertModel`` / ``AlbertForMaskedLM`` (``AlbertForPreTraining`` files too; the
sentence-order head is dropped) / ``AlbertForSequenceClassification``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ...nn import Activation
from ...nn.transformer import TransformerLayer
from ...registry import register
from .bert import Bert, BertConfig, BertEmbeddings, MaskedLMHead, encoder_layer


@dataclass
class AlbertConfig(BertConfig):
    activation: Activation = "gelu_tanh"
    """feed-forward and MLM-transform nonlinearity (ALBERT: tanh-approximated GELU, HF "gelu_new")"""
    dropout: float = 0.0
    """dropout on embeddings and sublayer outputs (ALBERT v2 trains without)"""
    attention_dropout: float = 0.0
    """dropout on the attention weights"""
    classifier_dropout: float | None = 0.1
    """dropout before the classification layer; None = dropout"""
    embedding_size: int = 32
    """width E of the token embeddings, projected to hidden_size (128 in the paper)"""
    num_hidden_groups: int = 1
    """groups of layers with their own parameters; num_layers are spread evenly over them"""
    inner_group_num: int = 1
    """distinct layers inside a group, applied one after the other"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.embedding_size, self.num_hidden_groups, self.inner_group_num) < 1:
            raise ValueError("embedding_size, num_hidden_groups and inner_group_num must be >= 1")
        if self.num_hidden_groups > self.num_layers:
            raise ValueError(f"num_hidden_groups ({self.num_hidden_groups}) > num_layers ({self.num_layers}) "
                             "would leave groups unused")


class FactorizedEmbeddings(BertEmbeddings):
    """:class:`BertEmbeddings` of width ``embedding_size`` followed by the projection ``project``
    to ``hidden_size``. Shapes: ``[B, T]`` -> ``[B, T, hidden_size]``"""

    def __init__(self, c: AlbertConfig) -> None:
        super().__init__(c.vocab_size, c.embedding_size, c.max_position_embeddings, c.type_vocab_size,
                         c.pad_token_id, c.layer_norm_eps, c.dropout)
        self.project = nn.Linear(c.embedding_size, c.hidden_size)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.project(super().forward(input_ids, token_type_ids))


@register("albert", family="transformers")
class Albert(Bert):
    """ALBERT encoder (Lan et al. 2020): factorized embeddings and one set of layers shared across depth.

    Shapes:
        input_ids, attention_mask (1 = token, 0 = padding), token_type_ids: ``[B, T]`` ->
        ``[B, T, vocab]`` (mlm) | ``[B, num_labels]`` (classify) | ``[B, T, hidden]`` (none)
    """

    config_class = AlbertConfig
    hf_model_types: ClassVar[tuple[str, ...]] = ("albert",)
    hf_stem: ClassVar[str] = "Albert"
    hf_prefix: ClassVar[str] = "albert"
    hf_defaults: ClassVar[dict[str, Any]] = {
        **Bert.hf_defaults, "vocab_size": 30000, "embedding_size": 128, "hidden_size": 4096,
        "num_attention_heads": 64, "intermediate_size": 16384, "num_hidden_groups": 1, "inner_group_num": 1,
        "hidden_act": "gelu_new", "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
        "classifier_dropout_prob": 0.1}

    def _build_embeddings(self) -> FactorizedEmbeddings:
        return FactorizedEmbeddings(self.config)

    def _build_layers(self) -> nn.ModuleList:
        """``layers[g][j]``: layer ``j`` of group ``g``."""
        c = self.config
        return nn.ModuleList(nn.ModuleList(encoder_layer(c) for _ in range(c.inner_group_num))
                             for _ in range(c.num_hidden_groups))

    def layer_sequence(self) -> Sequence[TransformerLayer]:
        c = self.config
        return [layer for i in range(c.num_layers)
                for layer in self.layers[i * c.num_hidden_groups // c.num_layers]]

    def _build_mlm_head(self) -> MaskedLMHead:
        c = self.config
        return MaskedLMHead(c.hidden_size, c.embedding_size, c.vocab_size, c.activation, c.layer_norm_eps)

    @classmethod
    def hf_config_fields(cls, hf_config: dict[str, Any]) -> dict[str, Any]:
        return {**super().hf_config_fields(hf_config),
                "classifier_dropout": hf_config["classifier_dropout_prob"],
                "embedding_size": hf_config["embedding_size"], "num_hidden_groups": hf_config["num_hidden_groups"],
                "inner_group_num": hf_config["inner_group_num"]}

    def config_to_hf(self) -> dict[str, Any]:
        c = self.config
        out = super().config_to_hf()
        for key in ("classifier_dropout", "position_embedding_type", "is_decoder", "add_cross_attention"):
            del out[key]
        return {**out, "classifier_dropout_prob": c.classifier_dropout, "embedding_size": c.embedding_size,
                "num_hidden_groups": c.num_hidden_groups, "inner_group_num": c.inner_group_num}

    @classmethod
    def hf_modules(cls, config: Any) -> dict[str, str | tuple[str, ...]]:
        names: dict[str, str | tuple[str, ...]] = {
            "embeddings.word_embeddings": "embeddings.word_embeddings",
            "embeddings.position_embeddings": "embeddings.position_embeddings",
            "embeddings.token_type_embeddings": "embeddings.token_type_embeddings",
            "embeddings.norm": "embeddings.LayerNorm",
            "embeddings.project": "encoder.embedding_hidden_mapping_in",
            "pooler.dense": "pooler",
            "mlm_head.dense": "predictions.dense",
            "mlm_head.norm": "predictions.LayerNorm",
            "mlm_head": "predictions",
            "classifier.pool.dense": "pooler",
            "classifier.out": "classifier",
        }
        for g in range(config.num_hidden_groups):
            for j in range(config.inner_group_num):
                ours, hf = f"layers.{g}.{j}", f"encoder.albert_layer_groups.{g}.albert_layers.{j}"
                names.update({f"{ours}.attn.qkv": tuple(f"{hf}.attention.{n}" for n in ("query", "key", "value")),
                              f"{ours}.attn.out": f"{hf}.attention.dense",
                              f"{ours}.norm1": f"{hf}.attention.LayerNorm",
                              f"{ours}.ffn.fc1": f"{hf}.ffn",
                              f"{ours}.ffn.fc2": f"{hf}.ffn_output",
                              f"{ours}.norm2": f"{hf}.full_layer_layer_norm"})
        return names

    @classmethod
    def hf_ignored(cls, config: Any) -> tuple[str, ...]:
        ignored = ("predictions.decoder.", "sop_classifier.", "embeddings.position_ids", "embeddings.token_type_ids")
        return ignored if config.head == "classify" or config.pooler else (*ignored, "pooler.")

    @classmethod
    def hf_aliases(cls) -> dict[str, str]:
        return {"predictions.bias": "predictions.decoder.bias"}
