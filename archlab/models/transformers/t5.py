"""T5: the Text-to-Text Transfer Transformer (Raffel et al. 2020, "Exploring the Limits of Transfer
Learning with a Unified Text-to-Text Transformer", sec. 2.1 and 3.1).

An encoder-decoder transformer with three departures from Vaswani et al. 2017:

* **pre-norm with RMSNorm** (scale only, no mean subtraction, no bias; eps 1e-6) and no biases in any
  linear layer: ``x = x + Dropout(Sublayer(RMSNorm(x)))``, and a final RMSNorm after each stack;
* **relative position bias** instead of position embeddings: every attention logit gets a learned
  scalar per head and per bucket of the distance ``j - i``,

      A = softmax(Q K^T + B_rel + M),        B_rel[h, i, j] = b[h, bucket(j - i)]

  with **no** ``1 / sqrt(d_kv)`` scaling (it is folded into the initialization of ``W_q``). The
  encoder's buckets are bidirectional, the decoder's causal; one bias table per stack, computed once
  and shared by all its layers (Hugging Face stores it in layer 0). Cross-attention has no bias;
* **feed-forward** ``W_o relu(W_i x)`` (T5) or gated ``W_o (gelu_tanh(W_i0 x) * W_i1 x)`` (T5 v1.1).

One embedding matrix is shared by encoder and decoder inputs. The LM head reuses it
(``tie_word_embeddings``), the decoder output then scaled by ``d_model ** -0.5`` (Mesh TensorFlow's
convention, ``scale_decoder_outputs``); T5 v1.1 has a separate ``lm_head`` and no scaling.

Decoding (greedy and beam search, KV caches) lives in :mod:`.decoding`.

Shapes:
    input_ids, attention_mask: ``[B, S]``; decoder_input_ids, decoder_attention_mask: ``[B, T]``
    -> logits ``[B, T, vocab_size]``
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ArchlabError
from ...nn import Activation
from ...nn.attention import padding_mask
from ...nn.checkpointing import ActivationCheckpointing
from ...nn.positional import RelativePositionBias
from ...nn.transformer import TransformerLayer
from ...registry import register
from .decoding import DecoderCache, EarlyStopping, generate
from .hf import ACT_FROM_HF, ACT_TO_HF, HFModel


@dataclass
class T5Config:
    vocab_size: int = 100
    """token vocabulary size (shared by encoder and decoder)"""
    d_model: int = 32
    """width of the residual stream"""
    d_kv: int = 8
    """dimension of each attention head (T5 does not tie it to d_model / num_heads)"""
    d_ff: int = 64
    """hidden width of the feed-forward network"""
    num_layers: int = 2
    """encoder layers"""
    num_decoder_layers: int = 2
    """decoder layers"""
    num_heads: int = 4
    """attention heads"""
    relative_attention_num_buckets: int = 32
    """relative-distance buckets of the position bias"""
    relative_attention_max_distance: int = 128
    """distances from this one on share the last bucket"""
    dropout: float = 0.1
    """dropout on embeddings, attention weights, sublayer outputs, the FFN hidden layer and stack outputs"""
    layer_norm_eps: float = 1e-6
    """RMSNorm epsilon"""
    activation: Activation = "relu"
    """feed-forward nonlinearity: relu (T5) or gelu_tanh (T5 v1.1, with gated)"""
    gated: bool = False
    """gated feed-forward W_o (act(W_i0 x) * W_i1 x) (T5 v1.1 "gated-gelu")"""
    tie_word_embeddings: bool = True
    """the LM head reuses the shared embedding matrix; False gives a separate lm_head (T5 v1.1)"""
    scale_decoder_outputs: bool = True
    """multiply the decoder output by d_model ** -0.5 before the LM head (T5: yes, T5 v1.1: no)"""
    pad_token_id: int = 0
    """padding token (filled in after EOS by generate)"""
    eos_token_id: int = 1
    """end-of-sequence token (generation stops there)"""
    decoder_start_token_id: int = 0
    """first decoder input (T5 uses the padding token)"""
    init_factor: float = 1.0
    """multiplies every initialization standard deviation (Hugging Face's initializer_factor)"""

    def __post_init__(self) -> None:
        if min(self.vocab_size, self.d_model, self.d_kv, self.d_ff, self.num_heads) < 1:
            raise ValueError("vocab_size, d_model, d_kv, d_ff and num_heads must be >= 1")
        if self.num_layers < 1 or self.num_decoder_layers < 1:
            raise ValueError("num_layers and num_decoder_layers must be >= 1")
        if self.relative_attention_num_buckets < 2 or self.relative_attention_max_distance < 2:
            raise ValueError("relative_attention_num_buckets and relative_attention_max_distance must be >= 2")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        for name in ("pad_token_id", "eos_token_id", "decoder_start_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(f"{name} must be in [0, vocab_size), got {getattr(self, name)}")


@register("t5", family="transformers")
class T5(HFModel, ActivationCheckpointing):
    """T5 encoder-decoder (Raffel et al. 2020) with relative position bias and greedy / beam decoding.

    Shapes:
        input_ids ``[B, S]``, decoder_input_ids ``[B, T]`` (+ optional 0/1 masks of the same shapes)
        -> logits ``[B, T, vocab_size]``
    """

    config_class = T5Config
    export_blocker: ClassVar[str | None] = (
        "torch 2.13 decomposes scaled_dot_product_attention with a bias computed in the graph (the relative "
        "position bias) into a layout the traced reshape after it cannot view (exporter limitation)")
    hf_model_types: ClassVar[tuple[str, ...]] = ("t5",)

    def __init__(self, config: T5Config) -> None:
        super().__init__(config)
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)

        def layer(cross: bool) -> TransformerLayer:
            return TransformerLayer(c.d_model, c.num_heads, c.d_ff, norm_first=True, norm="rms", eps=c.layer_norm_eps,
                                    bias=False, activation=c.activation, gated=c.gated, dropout=c.dropout,
                                    attn_dropout=c.dropout, act_dropout=c.dropout, cross_attention=cross,
                                    head_dim=c.d_kv, scale=1.0)

        self.encoder = nn.ModuleList(layer(False) for _ in range(c.num_layers))
        self.decoder = nn.ModuleList(layer(True) for _ in range(c.num_decoder_layers))
        buckets, distance = c.relative_attention_num_buckets, c.relative_attention_max_distance
        self.encoder_bias = RelativePositionBias(c.num_heads, buckets, distance, bidirectional=True)
        self.decoder_bias = RelativePositionBias(c.num_heads, buckets, distance, bidirectional=False)
        self.encoder_norm = nn.RMSNorm(c.d_model, eps=c.layer_norm_eps)
        self.decoder_norm = nn.RMSNorm(c.d_model, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.dropout)
        self.lm_head = None if c.tie_word_embeddings else nn.Linear(c.d_model, c.vocab_size, bias=False)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """Mesh TensorFlow's initialization (as in the T5 code): N(0, sigma) with sigma = 1 for embeddings,
        ``(d_model * d_kv) ** -0.5`` for W_q -- the attention's missing ``1 / sqrt(d_kv)`` --,
        ``d_model ** -0.5`` for W_k, W_v, W_i and the position bias, ``fan_in ** -0.5`` for W_o."""
        c, f = self.config, self.config.init_factor
        nn.init.normal_(self.embed.weight, std=f)
        if self.lm_head is not None:
            nn.init.normal_(self.lm_head.weight, std=f)
        for bias in (self.encoder_bias, self.decoder_bias):
            nn.init.normal_(bias.relative_attention_bias.weight, std=f * c.d_model ** -0.5)
        inner = c.num_heads * c.d_kv
        for layer in [*self.encoder, *self.decoder]:
            attns = [layer.attn] if layer.cross_attn is None else [layer.attn, layer.cross_attn]
            for attn in attns:
                q = attn.q.weight if attn.cross else attn.qkv.weight[:inner]
                kv = attn.kv.weight if attn.cross else attn.qkv.weight[inner:]
                nn.init.normal_(q, std=f * (c.d_model * c.d_kv) ** -0.5)
                nn.init.normal_(kv, std=f * c.d_model ** -0.5)
                nn.init.normal_(attn.out.weight, std=f * inner ** -0.5)
            for lin in (layer.ffn.fc1, layer.ffn.gate):
                if lin is not None:
                    nn.init.normal_(lin.weight, std=f * c.d_model ** -0.5)
            nn.init.normal_(layer.ffn.fc2.weight, std=f * c.d_ff ** -0.5)

    @classmethod
    def example_input(cls, config: T5Config, batch_size: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.randint(0, config.vocab_size, (batch_size, 7)),
                torch.randint(0, config.vocab_size, (batch_size, 5)))

    # ------------------------------------------------------------------------------------ forward
    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder stack: ``[B, S]`` token ids (and 0/1 padding mask) -> memory ``[B, S, d_model]``."""
        x = self.dropout(self.embed(input_ids))
        s = x.shape[1]
        bias = self.encoder_bias(s, s)                  # computed once, shared by every layer
        mask = padding_mask(attention_mask) if attention_mask is not None else None
        for layer in self.encoder:
            x = self.checkpointed(layer, x, mask=mask, bias=bias)
        return self.dropout(self.encoder_norm(x))

    def decode(self, decoder_input_ids: torch.Tensor, memory: torch.Tensor,
               attention_mask: torch.Tensor | None = None, decoder_attention_mask: torch.Tensor | None = None,
               cache: DecoderCache | None = None) -> torch.Tensor:
        """Decoder stack + LM head: ``[B, T]`` ids over memory ``[B, S, d_model]`` -> logits ``[B, T, V]``.

        ``attention_mask`` ``[B, S]`` masks padded memory; ``decoder_attention_mask`` ``[B, P + T]``
        masks decoder positions (``P`` = positions already in ``cache``)."""
        x = self.dropout(self.embed(decoder_input_ids))
        offset = cache.length if cache is not None else 0
        t = x.shape[1]
        bias = self.decoder_bias(t, offset + t, offset)
        mask = padding_mask(decoder_attention_mask) if decoder_attention_mask is not None else None
        memory_mask = padding_mask(attention_mask) if attention_mask is not None else None
        for i, layer in enumerate(self.decoder):
            x = self.checkpointed(layer, x, mask=mask, bias=bias, causal=True, memory=memory, memory_mask=memory_mask,
                                  cache=cache.self_attn[i] if cache is not None else None,
                                  cross_cache=cache.cross_attn[i] if cache is not None else None)
        h = self.dropout(self.decoder_norm(x))
        if self.config.scale_decoder_outputs:
            h = h * self.config.d_model ** -0.5
        return self.lm_head(h) if self.lm_head is not None else F.linear(h, self.embed.weight)

    def forward(self, input_ids: torch.Tensor, decoder_input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None,
                decoder_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        memory = self.encode(input_ids, attention_mask)
        return self.decode(decoder_input_ids, memory, attention_mask, decoder_attention_mask)

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 max_new_tokens: int = 32, num_beams: int = 1, length_penalty: float = 1.0,
                 early_stopping: EarlyStopping = False) -> torch.Tensor:
        """Greedy (``num_beams == 1``) or beam-search decoding with KV caches (see :mod:`.decoding`).

        Shapes: ``[B, S]`` -> LongTensor ``[B, L]`` generated tokens, start token excluded, padding after EOS"""
        c = self.config
        return generate(self, input_ids, attention_mask, start_id=c.decoder_start_token_id, eos_id=c.eos_token_id,
                        pad_id=c.pad_token_id, max_new_tokens=max_new_tokens, num_beams=num_beams,
                        length_penalty=length_penalty, early_stopping=early_stopping)

    # ---------------------------------------------------------------------- Hugging Face format
    @classmethod
    def config_from_hf(cls, hf: dict[str, Any]) -> T5Config:
        proj = hf.get("feed_forward_proj", "relu")
        parts = proj.split("-")
        gated = len(parts) == 2 and parts[0] == "gated"
        if len(parts) > 2 or (len(parts) == 2 and not gated):
            raise ArchlabError(f"unsupported T5 feed_forward_proj {proj!r}")
        # Hugging Face's backward-compatible quirk: "gated-gelu" means the tanh approximation
        hf_act = "gelu_new" if proj == "gated-gelu" else parts[-1]
        if hf_act not in ACT_FROM_HF:
            raise ArchlabError(f"unsupported T5 activation {hf_act!r}")
        eos = hf.get("eos_token_id", 1)
        if isinstance(eos, list):
            if len(eos) != 1:
                raise ArchlabError(f"T5 decoding supports one eos_token_id, got {eos}")
            eos = eos[0]
        pad = hf.get("pad_token_id", 0)
        tie = hf.get("tie_word_embeddings", True)
        # Before transformers 5, a separate LM head (tie_word_embeddings=false) also meant "no scaling"
        scale = hf.get("scale_decoder_outputs", tie is not False)
        num_layers = hf.get("num_layers", 6)
        start = hf.get("decoder_start_token_id")  # T5 starts decoding with the padding token
        return T5Config(
            vocab_size=hf.get("vocab_size", 32128), d_model=hf.get("d_model", 512), d_kv=hf.get("d_kv", 64),
            d_ff=hf.get("d_ff", 2048), num_layers=num_layers,
            num_decoder_layers=hf.get("num_decoder_layers") or num_layers, num_heads=hf.get("num_heads", 8),
            relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
            relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
            dropout=float(hf.get("dropout_rate", 0.1)), layer_norm_eps=hf.get("layer_norm_epsilon", 1e-6),
            activation=ACT_FROM_HF[hf_act], gated=gated, tie_word_embeddings=bool(tie),
            scale_decoder_outputs=bool(scale), pad_token_id=pad, eos_token_id=eos,
            decoder_start_token_id=start if start is not None else pad,
            init_factor=float(hf.get("initializer_factor", 1.0)))

    def config_to_hf(self) -> dict[str, Any]:
        c = self.config
        if c.gated and c.activation == "gelu":
            raise ArchlabError("Hugging Face T5 cannot express a gated exact-GELU FFN ('gated-gelu' means gelu_tanh)")
        act = ACT_TO_HF[c.activation]
        proj = ("gated-gelu" if act == "gelu_new" else f"gated-{act}") if c.gated else act
        return {
            "model_type": "t5", "architectures": ["T5ForConditionalGeneration"], "vocab_size": c.vocab_size,
            "d_model": c.d_model, "d_kv": c.d_kv, "d_ff": c.d_ff, "num_layers": c.num_layers,
            "num_decoder_layers": c.num_decoder_layers, "num_heads": c.num_heads,
            "relative_attention_num_buckets": c.relative_attention_num_buckets,
            "relative_attention_max_distance": c.relative_attention_max_distance, "dropout_rate": c.dropout,
            "layer_norm_epsilon": c.layer_norm_eps, "initializer_factor": c.init_factor, "feed_forward_proj": proj,
            "is_encoder_decoder": True, "use_cache": True, "pad_token_id": c.pad_token_id,
            "eos_token_id": c.eos_token_id, "decoder_start_token_id": c.decoder_start_token_id,
            "tie_word_embeddings": c.tie_word_embeddings, "scale_decoder_outputs": c.scale_decoder_outputs,
        }

    @staticmethod
    def _layer_names(config: T5Config) -> list[tuple[str, str]]:
        """``(ours, HF)`` prefixes of every sublayer (attention prefixes map q/k/v/o, see state_from_hf)."""
        pairs = []
        for stack, n, cross in (("encoder", config.num_layers, False), ("decoder", config.num_decoder_layers, True)):
            for i in range(n):
                ours, hf = f"{stack}.{i}", f"{stack}.block.{i}.layer"
                pairs += [(f"{ours}.attn", f"{hf}.0.SelfAttention"), (f"{ours}.norm1", f"{hf}.0.layer_norm")]
                ff = 1
                if cross:
                    pairs += [(f"{ours}.cross_attn", f"{hf}.1.EncDecAttention"),
                              (f"{ours}.norm_cross", f"{hf}.1.layer_norm")]
                    ff = 2
                pairs += [(f"{ours}.ffn", f"{hf}.{ff}.DenseReluDense"), (f"{ours}.norm2", f"{hf}.{ff}.layer_norm")]
        return pairs

    @classmethod
    def state_from_hf(cls, config: T5Config, hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {"embed.weight": hf_state["shared.weight"],
               "encoder_bias.relative_attention_bias.weight":
                   hf_state["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"],
               "decoder_bias.relative_attention_bias.weight":
                   hf_state["decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"],
               "encoder_norm.weight": hf_state["encoder.final_layer_norm.weight"],
               "decoder_norm.weight": hf_state["decoder.final_layer_norm.weight"]}
        lm_head = hf_state.get("lm_head.weight")
        if config.tie_word_embeddings:
            if lm_head is not None and not torch.equal(lm_head, hf_state["shared.weight"]):
                raise ArchlabError("the checkpoint has an lm_head different from the shared embedding but the config "
                                 "ties them; load with tie_word_embeddings=False")
        else:
            if lm_head is None:
                raise ArchlabError("tie_word_embeddings is false but the checkpoint has no lm_head.weight")
            out["lm_head.weight"] = lm_head
        for ours, theirs in cls._layer_names(config):
            if ours.endswith("cross_attn"):
                out[f"{ours}.q.weight"] = hf_state[f"{theirs}.q.weight"]
                out[f"{ours}.kv.weight"] = torch.cat([hf_state[f"{theirs}.{p}.weight"] for p in "kv"])
                out[f"{ours}.out.weight"] = hf_state[f"{theirs}.o.weight"]
            elif ours.endswith("attn"):
                out[f"{ours}.qkv.weight"] = torch.cat([hf_state[f"{theirs}.{p}.weight"] for p in "qkv"])
                out[f"{ours}.out.weight"] = hf_state[f"{theirs}.o.weight"]
            elif ours.endswith("ffn"):
                if config.gated:
                    out[f"{ours}.gate.weight"] = hf_state[f"{theirs}.wi_0.weight"]
                    out[f"{ours}.fc1.weight"] = hf_state[f"{theirs}.wi_1.weight"]
                else:
                    out[f"{ours}.fc1.weight"] = hf_state[f"{theirs}.wi.weight"]
                out[f"{ours}.fc2.weight"] = hf_state[f"{theirs}.wo.weight"]
            else:
                out[f"{ours}.weight"] = hf_state[f"{theirs}.weight"]
        return out

    def state_to_hf(self) -> dict[str, torch.Tensor]:
        c, sd = self.config, self.state_dict()
        inner = c.num_heads * c.d_kv
        out = {"shared.weight": sd["embed.weight"],
               "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight":
                   sd["encoder_bias.relative_attention_bias.weight"],
               "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight":
                   sd["decoder_bias.relative_attention_bias.weight"],
               "encoder.final_layer_norm.weight": sd["encoder_norm.weight"],
               "decoder.final_layer_norm.weight": sd["decoder_norm.weight"]}
        if self.lm_head is not None:
            out["lm_head.weight"] = sd["lm_head.weight"]
        for ours, theirs in self._layer_names(c):
            if ours.endswith("cross_attn"):
                out[f"{theirs}.q.weight"] = sd[f"{ours}.q.weight"]
                out[f"{theirs}.k.weight"], out[f"{theirs}.v.weight"] = sd[f"{ours}.kv.weight"].split(inner)
                out[f"{theirs}.o.weight"] = sd[f"{ours}.out.weight"]
            elif ours.endswith("attn"):
                q, k, v = sd[f"{ours}.qkv.weight"].split(inner)
                out.update({f"{theirs}.q.weight": q, f"{theirs}.k.weight": k, f"{theirs}.v.weight": v,
                            f"{theirs}.o.weight": sd[f"{ours}.out.weight"]})
            elif ours.endswith("ffn"):
                if c.gated:
                    out[f"{theirs}.wi_0.weight"] = sd[f"{ours}.gate.weight"]
                    out[f"{theirs}.wi_1.weight"] = sd[f"{ours}.fc1.weight"]
                else:
                    out[f"{theirs}.wi.weight"] = sd[f"{ours}.fc1.weight"]
                out[f"{theirs}.wo.weight"] = sd[f"{ours}.fc2.weight"]
            else:
                out[f"{theirs}.weight"] = sd[f"{ours}.weight"]
        return out
