"""DistilBERT (Sanh et al. 2019): a BERT half as deep, trained to imitate a full BERT teacher.

Architecture: :class:`~archlab.models.transformers.bert.Bert` without segment embeddings and without
a pooler -- ``e_t = Dropout(LayerNorm(E_word[x_t] + E_pos[t]))`` with learned positions (Hugging Face's
default) or the fixed sinusoidal table of Vaswani et al. (``sinusoidal_positions``, frozen as in the
original code), then post-norm Transformer layers. Heads: BERT's masked-LM head, or the classifier
``logits = W_o Dropout(ReLU(W_p h_[CLS] + b_p)) + b_o``.

Training signal (sec. 2): knowledge distillation (Hinton et al. 2015) -- the student matches the
teacher's output distribution softened by a temperature ``T``, next to the usual hard-label loss:

    L = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, y)

(:func:`distillation_loss`; the ``T^2`` keeps the soft term's gradient scale independent of ``T``).
The paper adds a cosine loss between hidden states; it needs no code beyond ``encode``.

Known difference from Hugging Face in *training* mode only: every archlab layer applies dropout to
both sublayer outputs, while DistilBERT's attention output goes into the residual without dropout.

Hugging Face format: ``DistilBertModel`` / ``DistilBertForMaskedLM`` / ``DistilBertForSequenceClassification``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ...nn import Activation
from ...nn.positional import sinusoidal_table
from ...registry import register
from .bert import (
    Bert,
    Head,
    SequenceClassifier,
    check_encoder_config,
    check_tied,
    head_from_architectures,
    hf_activation,
    hf_head_fields,
    hf_num_labels,
)
from .hf import ACT_TO_HF


@dataclass
class DistilBertConfig:
    vocab_size: int = 1000
    """number of tokens in the vocabulary (30522 for distilbert-base-uncased)"""
    hidden_size: int = 64
    """width of the hidden states (768; HF "dim")"""
    num_layers: int = 2
    """number of Transformer layers (6; HF "n_layers")"""
    num_heads: int = 4
    """attention heads per layer; must divide hidden_size"""
    intermediate_size: int = 128
    """width of the feed-forward layer (3072; HF "hidden_dim")"""
    max_position_embeddings: int = 128
    """positions, i.e. the longest input (512)"""
    sinusoidal_positions: bool = False
    """fixed sinusoidal position table (frozen) instead of learned positions"""
    activation: Activation = "gelu"
    """feed-forward and MLM-transform nonlinearity"""
    dropout: float = 0.1
    """dropout on embeddings and sublayer outputs"""
    attention_dropout: float = 0.1
    """dropout on the attention weights"""
    classifier_dropout: float = 0.2
    """dropout before the classification layer (HF "seq_classif_dropout")"""
    pad_token_id: int | None = 0
    """padding token: its embedding row starts at zero and gets no gradient; None = no padding row"""
    initializer_range: float = 0.02
    """std of the normal initialization of every weight matrix and embedding"""
    head: Head = "mlm"
    """mlm (logits [B, T, vocab]) | classify (logits [B, num_labels]) | none (hidden states [B, T, hidden])"""
    num_labels: int = 2
    """classes of the classify head (1 = regression, as in Hugging Face)"""

    type_vocab_size: ClassVar[int] = 0
    """no segment embeddings"""
    layer_norm_eps: ClassVar[float] = 1e-12
    """fixed in DistilBERT"""
    pooler: ClassVar[bool] = False
    """no pooler in the base model"""

    def __post_init__(self) -> None:
        check_encoder_config(self)
        if not 0.0 <= self.classifier_dropout < 1.0:
            raise ValueError(f"classifier_dropout must be in [0, 1), got {self.classifier_dropout}")


@register("distilbert", family="transformers")
class DistilBert(Bert):
    """DistilBERT encoder (Sanh et al. 2019): BERT without segments or pooler, trained by distillation.

    Shapes:
        input_ids, attention_mask (1 = token, 0 = padding): ``[B, T]`` ->
        ``[B, T, vocab]`` (mlm) | ``[B, num_labels]`` (classify) | ``[B, T, hidden]`` (none)
    """

    config_class = DistilBertConfig
    hf_model_types: ClassVar[tuple[str, ...]] = ("distilbert",)
    hf_stem: ClassVar[str] = "DistilBert"
    hf_prefix: ClassVar[str] = "distilbert"
    hf_defaults: ClassVar[dict[str, Any]] = {
        "vocab_size": 30522, "dim": 768, "n_layers": 6, "n_heads": 12, "hidden_dim": 3072,
        "max_position_embeddings": 512, "sinusoidal_pos_embds": False, "activation": "gelu", "dropout": 0.1,
        "attention_dropout": 0.1, "seq_classif_dropout": 0.2, "initializer_range": 0.02, "pad_token_id": 0}

    def __init__(self, config: DistilBertConfig) -> None:
        super().__init__(config)
        if config.sinusoidal_positions:
            table = self.embeddings.position_embeddings.weight
            with torch.no_grad():
                table.copy_(sinusoidal_table(*table.shape))
            table.requires_grad_(False)

    def _build_classifier(self) -> SequenceClassifier:
        c = self.config
        return SequenceClassifier(c.hidden_size, c.num_labels, "relu", c.classifier_dropout)

    @classmethod
    def hf_config_fields(cls, hf_config: dict[str, Any]) -> dict[str, Any]:
        check_tied(hf_config)
        h = hf_config
        return dict(vocab_size=h["vocab_size"], hidden_size=h["dim"], num_layers=h["n_layers"],
                    num_heads=h["n_heads"], intermediate_size=h["hidden_dim"],
                    max_position_embeddings=h["max_position_embeddings"],
                    sinusoidal_positions=h["sinusoidal_pos_embds"], activation=hf_activation(h["activation"]),
                    dropout=h["dropout"], attention_dropout=h["attention_dropout"],
                    classifier_dropout=h["seq_classif_dropout"], pad_token_id=h["pad_token_id"],
                    initializer_range=h["initializer_range"], head=head_from_architectures(h, cls.hf_stem),
                    num_labels=hf_num_labels(h))

    def config_to_hf(self) -> dict[str, Any]:
        c = self.config
        return {**hf_head_fields(c, self.hf_stem), "model_type": "distilbert", "vocab_size": c.vocab_size,
                "dim": c.hidden_size, "n_layers": c.num_layers, "n_heads": c.num_heads,
                "hidden_dim": c.intermediate_size, "max_position_embeddings": c.max_position_embeddings,
                "sinusoidal_pos_embds": c.sinusoidal_positions, "activation": ACT_TO_HF[c.activation],
                "dropout": c.dropout, "attention_dropout": c.attention_dropout,
                "seq_classif_dropout": c.classifier_dropout, "initializer_range": c.initializer_range,
                "pad_token_id": c.pad_token_id, "tie_word_embeddings": True}

    @classmethod
    def hf_modules(cls, config: Any) -> dict[str, str | tuple[str, ...]]:
        names: dict[str, str | tuple[str, ...]] = {
            "embeddings.word_embeddings": "embeddings.word_embeddings",
            "embeddings.position_embeddings": "embeddings.position_embeddings",
            "embeddings.norm": "embeddings.LayerNorm",
            "mlm_head.dense": "vocab_transform",
            "mlm_head.norm": "vocab_layer_norm",
            "mlm_head": "vocab_projector",
            "classifier.pool.dense": "pre_classifier",
            "classifier.out": "classifier",
        }
        for i in range(config.num_layers):
            ours, hf = f"layers.{i}", f"transformer.layer.{i}"
            names.update({f"{ours}.attn.qkv": tuple(f"{hf}.attention.{n}_lin" for n in "qkv"),
                          f"{ours}.attn.out": f"{hf}.attention.out_lin",
                          f"{ours}.norm1": f"{hf}.sa_layer_norm",
                          f"{ours}.ffn.fc1": f"{hf}.ffn.lin1",
                          f"{ours}.ffn.fc2": f"{hf}.ffn.lin2",
                          f"{ours}.norm2": f"{hf}.output_layer_norm"})
        return names

    @classmethod
    def hf_ignored(cls, config: Any) -> tuple[str, ...]:
        return ("vocab_projector.weight", "embeddings.position_ids")

    @classmethod
    def hf_aliases(cls) -> dict[str, str]:
        return {}


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      temperature: float = 2.0, alpha: float = 0.5, ignore_index: int = -100) -> torch.Tensor:
    """Knowledge-distillation loss (Hinton et al. 2015; module docstring):
    ``alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)``.

    Both terms average over the positions whose label is not ``ignore_index`` (for masked-LM logits:
    the masked tokens, as DistilBERT does); the KL sums over classes ("batchmean"). The teacher gets
    no gradient.

    Shapes:
        student_logits, teacher_logits: ``[..., C]``; labels: ``[...]`` (int) -> scalar
    """
    if not temperature > 0 or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"need temperature > 0 and alpha in [0, 1], got {temperature}, {alpha}")
    c = student_logits.shape[-1]
    s, t, y = student_logits.reshape(-1, c), teacher_logits.detach().reshape(-1, c), labels.reshape(-1)
    keep = y != ignore_index
    s, t, y = s[keep], t[keep], y[keep]
    log_p_s = F.log_softmax(s / temperature, dim=-1)
    log_p_t = F.log_softmax(t / temperature, dim=-1)
    kl = F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean")
    return alpha * temperature ** 2 * kl + (1.0 - alpha) * F.cross_entropy(s, y)
