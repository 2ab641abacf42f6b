"""BERT (Devlin et al. 2019): a bidirectional Transformer encoder pre-trained by masked language modeling.

Input representation (sec. 3.2, fig. 2): token ``x_t`` at position ``t`` in segment ``s_t`` enters as

    e_t = Dropout(LayerNorm(E_word[x_t] + E_type[s_t] + E_pos[t]))

then ``L`` post-norm Transformer layers (Vaswani et al. 2017) attend in both directions; padded keys
(``attention_mask == 0``) are masked out of every softmax:

    a = LayerNorm(h + Dropout(MHA(h)))          h' = LayerNorm(a + Dropout(W_2 act(W_1 a)))

Heads on the final states ``h_t``:

* ``mlm`` -- masked-LM (sec. 3.1, task 1): ``logits_t = LayerNorm(act(W h_t + b)) E_word^T + b_vocab``; the
  decoder shares its weights with the input embedding (Press & Wolf 2017), only its bias is its own;
* ``classify`` -- sequence classification: the *pooler* ``p = tanh(W_p h_[CLS] + b_p)`` (the first
  token's state), then ``logits = W_o Dropout(p) + b_o``;
* ``none`` -- the states ``h`` themselves (Hugging Face's ``BertModel``; its pooler is kept with
  ``pooler=True``, see :attr:`BertConfig.pooler`).

The building blocks here (:class:`BertEmbeddings`, :class:`MaskedLMHead`, :class:`Pooler`,
:class:`SequenceClassifier`, the Hugging Face name mapping) are shared by RoBERTa, ALBERT and
DistilBERT, which subclass :class:`Bert` and change what differs.

Hugging Face format: ``BertModel`` / ``BertForMaskedLM`` (``BertForPreTraining`` files too; the
next-sentence head is dropped) / ``BertForSequenceClassification`` read and write with
:func:`archlab.from_hf` and ``model.save_hf``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ArchlabError
from ...nn import Activation, activation_layer
from ...nn.attention import padding_mask
from ...nn.checkpointing import ActivationCheckpointing
from ...nn.transformer import TransformerLayer
from ...registry import register
from .hf import ACT_FROM_HF, ACT_TO_HF, HFModel

Head = Literal["mlm", "classify", "none"]


@dataclass
class BertConfig:
    vocab_size: int = 1000
    """number of tokens in the vocabulary (30522 for bert-base-uncased)"""
    hidden_size: int = 64
    """width of the hidden states (768 for bert-base)"""
    num_layers: int = 2
    """number of Transformer layers (12 for bert-base)"""
    num_heads: int = 4
    """attention heads per layer; must divide hidden_size"""
    intermediate_size: int = 128
    """width of the feed-forward layer (4 x hidden_size in the paper)"""
    max_position_embeddings: int = 128
    """learned position vectors, i.e. the longest input (512 for bert-base)"""
    type_vocab_size: int = 2
    """segment (token type) embeddings: sentence A / B"""
    activation: Activation = "gelu"
    """feed-forward and MLM-transform nonlinearity (BERT: exact GELU)"""
    layer_norm_eps: float = 1e-12
    """epsilon of every LayerNorm"""
    dropout: float = 0.1
    """dropout on embeddings and on every sublayer output"""
    attention_dropout: float = 0.1
    """dropout on the attention weights"""
    classifier_dropout: float | None = None
    """dropout before the classification layer; None = dropout"""
    pad_token_id: int | None = 0
    """padding token: its embedding row starts at zero and gets no gradient; None = no padding row"""
    initializer_range: float = 0.02
    """std of the normal initialization of every weight matrix and embedding"""
    head: Head = "mlm"
    """mlm (logits [B, T, vocab]) | classify (logits [B, num_labels]) | none (hidden states [B, T, hidden])"""
    num_labels: int = 2
    """classes of the classify head (1 = regression, as in Hugging Face)"""
    pooler: bool = False
    """head none: keep the pooler (dense + tanh on the first token, ``model.pooler``) that Hugging Face's
    base model carries; it is not part of the output (classify always has one)"""

    def __post_init__(self) -> None:
        check_encoder_config(self)
        if self.type_vocab_size < 1:
            raise ValueError(f"type_vocab_size must be >= 1, got {self.type_vocab_size}")
        if self.classifier_dropout is not None and not 0.0 <= self.classifier_dropout < 1.0:
            raise ValueError(f"classifier_dropout must be in [0, 1), got {self.classifier_dropout}")
        if self.pooler and self.head != "none":
            raise ValueError("pooler=True is for head 'none' (classify has its own pooler, mlm uses none)")


def check_encoder_config(c: Any) -> None:
    """Checks every config of the family shares."""
    if min(c.vocab_size, c.hidden_size, c.num_layers, c.num_heads, c.intermediate_size,
           c.max_position_embeddings, c.num_labels) < 1 or c.vocab_size < 2:
        raise ValueError("vocab_size must be >= 2; sizes, num_layers, num_heads and num_labels >= 1")
    if c.hidden_size % c.num_heads:
        raise ValueError(f"hidden_size ({c.hidden_size}) must be divisible by num_heads ({c.num_heads})")
    if c.pad_token_id is not None and not 0 <= c.pad_token_id < c.vocab_size:
        raise ValueError(f"pad_token_id {c.pad_token_id} is outside the vocabulary of {c.vocab_size}")
    for name in ("dropout", "attention_dropout"):
        if not 0.0 <= getattr(c, name) < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {getattr(c, name)}")


# ------------------------------------------------------------------------------ shared building blocks
class BertEmbeddings(nn.Module):
    """``Dropout(LayerNorm(E_word[x] + E_type[s] + E_pos[p]))`` with positions ``p = 0, 1, ...``.

    ``type_vocab_size = 0`` leaves out the segment embedding (DistilBERT); without ``token_type_ids``
    every token is segment 0. Subclasses change the positions (:meth:`position_ids`).

    Shapes:
        input_ids, token_type_ids: ``[B, T]`` -> ``[B, T, dim]``
    """

    def __init__(self, vocab_size: int, dim: int, max_positions: int, type_vocab_size: int,
                 pad_token_id: int | None, eps: float, dropout: float, position_padding_idx: int | None = None) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, dim, padding_idx=pad_token_id)
        self.position_embeddings = nn.Embedding(max_positions, dim, padding_idx=position_padding_idx)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, dim) if type_vocab_size else None
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def max_length(self) -> int:
        """The longest input the position table covers."""
        return self.position_embeddings.num_embeddings

    def position_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.arange(input_ids.shape[1], device=input_ids.device)[None]

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        if input_ids.shape[1] > self.max_length():
            raise ValueError(f"input of {input_ids.shape[1]} tokens is longer than the {self.max_length()} "
                             "positions of the model")
        e = self.word_embeddings(input_ids)
        if self.token_type_embeddings is not None:
            # segment 0 for everyone: add the row instead of looking up a tensor of zeros
            e = e + (self.token_type_embeddings.weight[0] if token_type_ids is None
                     else self.token_type_embeddings(token_type_ids))
        elif token_type_ids is not None:
            raise ValueError("this model has no token type (segment) embeddings; pass token_type_ids=None")
        e = e + self.position_embeddings(self.position_ids(input_ids))
        return self.dropout(self.norm(e))


class MaskedLMHead(nn.Module):
    """``logits = LayerNorm(act(W h + b)) E^T + b_vocab`` with ``E`` the (tied) input embedding matrix.

    ``W`` maps ``d_model -> d_embed`` (ALBERT's embeddings are narrower than its hidden states).

    Shapes:
        h: ``[B, T, d_model]``, embedding: ``[vocab, d_embed]`` -> ``[B, T, vocab]``
    """

    def __init__(self, d_model: int, d_embed: int, vocab_size: int, activation: str, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(d_model, d_embed)
        self.act = activation_layer(activation)
        self.norm = nn.LayerNorm(d_embed, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, h: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        return F.linear(self.norm(self.act(self.dense(h))), embedding, self.bias)


class Pooler(nn.Module):
    """``p = act(W h_0 + b)`` on the first token's final state ([CLS] / <s>).

    Shapes: h ``[B, T, dim]`` -> ``[B, dim]``"""

    def __init__(self, dim: int, activation: str = "tanh") -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.act = activation_layer(activation)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(h[:, 0]))


class SequenceClassifier(nn.Module):
    """``logits = W_o Dropout(act(W_p Dropout_in(h_0) + b_p)) + b_o`` on the first token.

    BERT / ALBERT: the pooler (tanh) then the classifier; RoBERTa: the same with dropout on the input
    as well (``input_dropout``); DistilBERT: ReLU instead of tanh.

    Shapes: h ``[B, T, dim]`` -> ``[B, num_labels]``"""

    def __init__(self, dim: int, num_labels: int, activation: str = "tanh", dropout: float = 0.1,
                 input_dropout: float = 0.0) -> None:
        super().__init__()
        self.input_dropout = nn.Dropout(input_dropout)
        self.pool = Pooler(dim, activation)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(dim, num_labels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(self.pool(self.input_dropout(h))))


def encoder_layer(c: Any, eps: float | None = None) -> TransformerLayer:
    """One post-norm encoder layer of the family (``eps`` defaults to ``c.layer_norm_eps``)."""
    return TransformerLayer(c.hidden_size, c.num_heads, c.intermediate_size, norm_first=False,
                            eps=c.layer_norm_eps if eps is None else eps, activation=c.activation,
                            dropout=c.dropout, attn_dropout=c.attention_dropout)


def head_from_architectures(hf_config: dict[str, Any], stem: str) -> Head:
    """``{stem}Model`` -> none, ``{stem}ForMaskedLM`` (or ``ForPreTraining``) -> mlm,
    ``{stem}ForSequenceClassification`` -> classify; no ``architectures`` -> none."""
    archs = hf_config.get("architectures") or [f"{stem}Model"]
    heads = {f"{stem}Model": "none", f"{stem}ForMaskedLM": "mlm", f"{stem}ForPreTraining": "mlm",
             f"{stem}ForSequenceClassification": "classify"}
    if archs[0] not in heads:
        raise ArchlabError(f"architecture {archs[0]} is not supported; supported: {', '.join(heads)}")
    return heads[archs[0]]  # type: ignore[return-value]


def hf_num_labels(hf_config: dict[str, Any]) -> int:
    return len(hf_config["id2label"]) if hf_config.get("id2label") else int(hf_config.get("num_labels", 2))


def hf_activation(name: str) -> str:
    if name not in ACT_FROM_HF:
        raise ArchlabError(f"activation {name!r} is not supported; supported: {', '.join(ACT_FROM_HF)}")
    return ACT_FROM_HF[name]


def hf_head_fields(c: Any, stem: str) -> dict[str, Any]:
    """``architectures`` and the labels for ``config_to_hf``."""
    arch = {"mlm": "ForMaskedLM", "classify": "ForSequenceClassification", "none": "Model"}[c.head]
    # the labels are written for every head (as Hugging Face does), so num_labels survives a round trip
    return {"architectures": [stem + arch], "id2label": {str(i): f"LABEL_{i}" for i in range(c.num_labels)},
            "label2id": {f"LABEL_{i}": i for i in range(c.num_labels)}}


def check_tied(hf_config: dict[str, Any]) -> None:
    if not hf_config.get("tie_word_embeddings", True):
        raise ArchlabError("untied MLM decoders (tie_word_embeddings=false) are not supported")


# Hugging Face modules that belong to the base model (saved under "bert." etc. in a model with a head).
_BACKBONE_ROOTS = ("embeddings.", "encoder.", "pooler", "transformer.")


# ------------------------------------------------------------------------------------------- the model
@register("bert", family="transformers")
class Bert(HFModel, ActivationCheckpointing):
    """BERT encoder (Devlin et al. 2019) with a masked-LM, sequence-classification or no head.

    Shapes:
        input_ids, attention_mask (1 = token, 0 = padding), token_type_ids: ``[B, T]`` ->
        ``[B, T, vocab]`` (mlm) | ``[B, num_labels]`` (classify) | ``[B, T, hidden]`` (none)
    """

    config_class = BertConfig
    hf_model_types: ClassVar[tuple[str, ...]] = ("bert",)
    hf_stem: ClassVar[str] = "Bert"
    """Hugging Face class names: ``{stem}Model``, ``{stem}ForMaskedLM`` ..."""
    hf_prefix: ClassVar[str] = "bert"
    """where a Hugging Face model with a head keeps its base model"""
    hf_defaults: ClassVar[dict[str, Any]] = {
        "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
        "intermediate_size": 3072, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 512, "type_vocab_size": 2,
        "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0}
    """Hugging Face's defaults for the keys a ``config.json`` may leave out"""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.embeddings = self._build_embeddings()
        self.layers = self._build_layers()
        self.pooler = Pooler(config.hidden_size) if config.pooler else None
        self.mlm_head = self._build_mlm_head() if config.head == "mlm" else None
        self.classifier = self._build_classifier() if config.head == "classify" else None
        self.apply(self._init_module)

    # -- construction hooks (subclasses override what differs)
    def _build_embeddings(self) -> BertEmbeddings:
        c = self.config
        return BertEmbeddings(c.vocab_size, c.hidden_size, c.max_position_embeddings, c.type_vocab_size,
                              c.pad_token_id, c.layer_norm_eps, c.dropout)

    def _build_layers(self) -> nn.ModuleList:
        return nn.ModuleList(encoder_layer(self.config) for _ in range(self.config.num_layers))

    def _build_mlm_head(self) -> MaskedLMHead:
        c = self.config
        return MaskedLMHead(c.hidden_size, c.hidden_size, c.vocab_size, c.activation, c.layer_norm_eps)

    def _build_classifier(self) -> SequenceClassifier:
        c = self.config
        dropout = c.dropout if c.classifier_dropout is None else c.classifier_dropout
        return SequenceClassifier(c.hidden_size, c.num_labels, "tanh", dropout)

    def _init_module(self, m: nn.Module) -> None:
        """Hugging Face's initialization: N(0, initializer_range) weights, zero biases, unit LayerNorms."""
        std = self.config.initializer_range
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def layer_sequence(self) -> Sequence[TransformerLayer]:
        """The layers in the order they are applied (ALBERT applies shared layers repeatedly)."""
        return self.layers  # type: ignore[return-value]

    # -- forward
    @classmethod
    def max_length(cls, config: Any) -> int:
        """The longest input the model accepts."""
        return config.max_position_embeddings

    @classmethod
    def example_input(cls, config: Any, batch_size: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
        """Random ``(input_ids, attention_mask)``; the last row's final quarter is padding."""
        t = min(16, cls.max_length(config))
        ids = torch.randint(0, config.vocab_size, (batch_size, t))
        mask = torch.ones(batch_size, t, dtype=torch.long)
        mask[-1, t - t // 4:] = 0
        pad = config.pad_token_id
        if pad is not None:
            ids[ids == pad] = (pad + 1) % config.vocab_size
            ids[mask == 0] = pad
        return ids, mask

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None,
               output_hidden_states: bool = False) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Final hidden states ``[B, T, hidden]``; with ``output_hidden_states`` also the list of the
        embedding output and every layer's output (``num_layers + 1`` tensors, as Hugging Face)."""
        h = self.embeddings(input_ids, token_type_ids)
        mask = padding_mask(attention_mask) if attention_mask is not None else None
        states = [h]
        for layer in self.layer_sequence():
            h = self.checkpointed(layer, h, mask=mask)
            states.append(h)
        return (h, states) if output_hidden_states else h

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        h = self.encode(input_ids, attention_mask, token_type_ids)
        if self.mlm_head is not None:
            return self.mlm_head(h, self.embeddings.word_embeddings.weight)
        if self.classifier is not None:
            return self.classifier(h)
        return h

    # -- Hugging Face format
    @classmethod
    def config_from_hf(cls, hf_config: dict[str, Any]) -> BertConfig:
        return cls.config_class(**cls.hf_config_fields({**cls.hf_defaults, **hf_config}))

    @classmethod
    def hf_config_fields(cls, hf_config: dict[str, Any]) -> dict[str, Any]:
        """Our config fields from a Hugging Face ``config.json`` completed with :attr:`hf_defaults`."""
        check_tied(hf_config)
        if hf_config.get("is_decoder") or hf_config.get("add_cross_attention"):
            raise ArchlabError("BERT as a decoder (is_decoder / add_cross_attention) is not supported")
        if hf_config.get("position_embedding_type", "absolute") != "absolute":
            raise ArchlabError(f"position_embedding_type {hf_config['position_embedding_type']!r} is not "
                               "supported; only 'absolute'")
        head = head_from_architectures(hf_config, cls.hf_stem)
        return dict(
            vocab_size=hf_config["vocab_size"], hidden_size=hf_config["hidden_size"],
            num_layers=hf_config["num_hidden_layers"], num_heads=hf_config["num_attention_heads"],
            intermediate_size=hf_config["intermediate_size"],
            max_position_embeddings=hf_config["max_position_embeddings"],
            type_vocab_size=hf_config["type_vocab_size"], activation=hf_activation(hf_config["hidden_act"]),
            layer_norm_eps=hf_config["layer_norm_eps"], dropout=hf_config["hidden_dropout_prob"],
            attention_dropout=hf_config["attention_probs_dropout_prob"],
            classifier_dropout=hf_config.get("classifier_dropout"), pad_token_id=hf_config["pad_token_id"],
            initializer_range=hf_config["initializer_range"], head=head,
            num_labels=hf_num_labels(hf_config), pooler=head == "none")

    def config_to_hf(self) -> dict[str, Any]:
        c = self.config
        return {**hf_head_fields(c, self.hf_stem), "model_type": self.hf_model_types[0],
                "vocab_size": c.vocab_size, "hidden_size": c.hidden_size, "num_hidden_layers": c.num_layers,
                "num_attention_heads": c.num_heads, "intermediate_size": c.intermediate_size,
                "hidden_act": ACT_TO_HF[c.activation], "hidden_dropout_prob": c.dropout,
                "attention_probs_dropout_prob": c.attention_dropout, "classifier_dropout": c.classifier_dropout,
                "max_position_embeddings": c.max_position_embeddings, "type_vocab_size": c.type_vocab_size,
                "initializer_range": c.initializer_range, "layer_norm_eps": c.layer_norm_eps,
                "pad_token_id": c.pad_token_id, "position_embedding_type": "absolute", "is_decoder": False,
                "add_cross_attention": False, "tie_word_embeddings": True}

    @classmethod
    def hf_modules(cls, config: Any) -> dict[str, str | tuple[str, ...]]:
        """Our module name -> the Hugging Face module it is stored as (without the base-model prefix);
        a tuple lists the modules concatenated into ours (separate q, k, v -> fused ``qkv``)."""
        names: dict[str, str | tuple[str, ...]] = {
            "embeddings.word_embeddings": "embeddings.word_embeddings",
            "embeddings.position_embeddings": "embeddings.position_embeddings",
            "embeddings.token_type_embeddings": "embeddings.token_type_embeddings",
            "embeddings.norm": "embeddings.LayerNorm",
            "pooler.dense": "pooler.dense",
            "mlm_head.dense": "cls.predictions.transform.dense",
            "mlm_head.norm": "cls.predictions.transform.LayerNorm",
            "mlm_head": "cls.predictions",
            "classifier.pool.dense": "pooler.dense",
            "classifier.out": "classifier",
        }
        for i in range(config.num_layers):
            names.update(bert_layer_modules(f"layers.{i}", f"encoder.layer.{i}"))
        return names

    @classmethod
    def hf_ignored(cls, config: Any) -> tuple[str, ...]:
        """Hugging Face tensors dropped on import: copies of tied weights, pre-training heads, a pooler
        the model does not use, and position/segment-id buffers that old versions saved."""
        ignored = ("cls.predictions.decoder.", "cls.seq_relationship.", "embeddings.position_ids",
                   "embeddings.token_type_ids")
        return ignored if config.head == "classify" or config.pooler else (*ignored, "pooler.")

    @classmethod
    def hf_aliases(cls) -> dict[str, str]:
        """Hugging Face name -> older name of the same tensor, tried when the first is absent."""
        return {"cls.predictions.bias": "cls.predictions.decoder.bias"}

    @classmethod
    def state_from_hf(cls, config: Any, hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        prefix = cls.hf_prefix + "."
        state = {_modern_name(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in hf_state.items()}
        with torch.device("meta"):  # the key set only, without allocating or initializing weights
            keys = list(cls(config).state_dict())
        aliases = cls.hf_aliases()
        out: dict[str, torch.Tensor] = {}
        used: set[str] = set()
        missing: list[str] = []
        for ours, hf in _key_table(keys, cls.hf_modules(config)).items():
            names = [n if n in state or n not in aliases else aliases[n] for n in (hf if isinstance(hf, tuple)
                                                                                  else (hf,))]
            absent = [n for n in names if n not in state]
            if absent:
                missing += absent
                continue
            used.update(names)
            out[ours] = torch.cat([state[n] for n in names]) if len(names) > 1 else state[names[0]]
        ignored = cls.hf_ignored(config)
        unexpected = sorted(k for k in state if k not in used and not k.startswith(ignored))
        if missing or unexpected:
            raise ArchlabError(f"Hugging Face weights do not match {cls.registry_name} (head {config.head!r}): "
                               f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        return out

    def state_to_hf(self) -> dict[str, torch.Tensor]:
        state = self.state_dict()
        prefix = "" if self.config.head == "none" else self.hf_prefix + "."
        out: dict[str, torch.Tensor] = {}
        for ours, hf in _key_table(state, self.hf_modules(self.config)).items():
            names = hf if isinstance(hf, tuple) else (hf,)
            parts = state[ours].chunk(len(names)) if len(names) > 1 else (state[ours],)
            for name, t in zip(names, parts, strict=True):
                out[prefix + name if name.startswith(_BACKBONE_ROOTS) else name] = t
        return out


def bert_layer_modules(ours: str, hf: str) -> dict[str, str | tuple[str, ...]]:
    """Module names of one BERT-layout encoder layer (BERT, RoBERTa)."""
    return {f"{ours}.attn.qkv": tuple(f"{hf}.attention.self.{n}" for n in ("query", "key", "value")),
            f"{ours}.attn.out": f"{hf}.attention.output.dense",
            f"{ours}.norm1": f"{hf}.attention.output.LayerNorm",
            f"{ours}.ffn.fc1": f"{hf}.intermediate.dense",
            f"{ours}.ffn.fc2": f"{hf}.output.dense",
            f"{ours}.norm2": f"{hf}.output.LayerNorm"}


def _key_table(keys: Iterable[str], modules: dict[str, str | tuple[str, ...]]) -> dict[str, str | tuple[str, ...]]:
    """Our state-dict key -> Hugging Face key(s), by module name (the parameter name is kept)."""
    table: dict[str, str | tuple[str, ...]] = {}
    for key in keys:
        module, _, leaf = key.rpartition(".")
        hf = modules[module]
        table[key] = tuple(f"{m}.{leaf}" for m in hf) if isinstance(hf, tuple) else f"{hf}.{leaf}"
    return table


def _modern_name(key: str) -> str:
    """Original TensorFlow-converted checkpoints call LayerNorm parameters gamma / beta."""
    if "LayerNorm." in key or "layer_norm." in key:
        return key.replace(".gamma", ".weight").replace(".beta", ".bias")
    return key
