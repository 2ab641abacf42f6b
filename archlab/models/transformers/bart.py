"""BART: a denoising sequence-to-sequence transformer (Lewis et al. 2020, "BART: Denoising
Sequence-to-Sequence Pre-training for Natural Language Generation, Translation, and Comprehension").

The architecture is the original encoder-decoder transformer (Vaswani et al. 2017) with GPT's
choices (sec. 2.1): GELU feed-forward, learned position embeddings, and post-norm layers with biases

    x = LayerNorm(x + Dropout(Sublayer(x)))

Inputs of both stacks are ``LayerNorm(E[token] * s + P[position + 2])`` with ``s = sqrt(d_model)``
when ``scale_embedding`` else 1, and the offset 2 inherited from fairseq (rows 0 and 1 of the
position table are never used). One token embedding ``E`` is shared by encoder, decoder and the LM
head (``tie_word_embeddings``); the logits get a fixed ``final_logits_bias`` (a buffer, zero unless a
checkpoint carries one). Decoder inputs are the targets shifted right behind
``decoder_start_token_id`` (:func:`~.decoding.shift_tokens_right`); when ``decoder_input_ids`` is not
given, the forward pass shifts ``input_ids`` (the denoising-autoencoder setting).

Decoding (greedy and beam search, KV caches) lives in :mod:`.decoding`.

Shapes:
    input_ids, attention_mask: ``[B, S]``; decoder_input_ids, decoder_attention_mask: ``[B, T]``
    -> logits ``[B, T, vocab_size]``
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ArchlabError
from ...nn import Activation
from ...nn.attention import padding_mask
from ...nn.checkpointing import ActivationCheckpointing
from ...nn.positional import LearnedPositionalEmbedding
from ...nn.transformer import TransformerLayer
from ...registry import register
from .decoding import DecoderCache, EarlyStopping, generate, shift_tokens_right
from .hf import ACT_FROM_HF, ACT_TO_HF, HFModel

_POSITION_OFFSET = 2  # fairseq reserved the first two rows of the position table


@dataclass
class BartConfig:
    vocab_size: int = 100
    """token vocabulary size (shared by encoder and decoder)"""
    d_model: int = 32
    """width of the residual stream"""
    encoder_layers: int = 2
    """encoder layers"""
    decoder_layers: int = 2
    """decoder layers"""
    encoder_attention_heads: int = 4
    """attention heads in the encoder"""
    decoder_attention_heads: int = 4
    """attention heads in the decoder (self- and cross-attention)"""
    encoder_ffn_dim: int = 64
    """hidden width of the encoder feed-forward networks"""
    decoder_ffn_dim: int = 64
    """hidden width of the decoder feed-forward networks"""
    max_position_embeddings: int = 128
    """longest input (and output) sequence: rows of the learned position tables"""
    activation: Activation = "gelu"
    """feed-forward nonlinearity"""
    dropout: float = 0.1
    """dropout on the embeddings and on every sublayer output"""
    attention_dropout: float = 0.0
    """dropout on the attention weights"""
    activation_dropout: float = 0.0
    """dropout on the feed-forward hidden layer"""
    scale_embedding: bool = False
    """multiply token embeddings by sqrt(d_model)"""
    tie_word_embeddings: bool = True
    """the LM head reuses the token embedding matrix; False gives a separate lm_head"""
    pad_token_id: int = 1
    """padding token (its embedding row gets no gradient; filled in after EOS by generate)"""
    eos_token_id: int = 2
    """end-of-sequence token (generation stops there)"""
    decoder_start_token_id: int = 2
    """first decoder input (BART starts with EOS)"""
    init_std: float = 0.02
    """standard deviation of the normal initialization of linear and embedding weights"""

    def __post_init__(self) -> None:
        if min(self.vocab_size, self.d_model, self.encoder_ffn_dim, self.decoder_ffn_dim,
               self.max_position_embeddings) < 1:
            raise ValueError("vocab_size, d_model, ffn dims and max_position_embeddings must be >= 1")
        if self.encoder_layers < 1 or self.decoder_layers < 1:
            raise ValueError("encoder_layers and decoder_layers must be >= 1")
        for heads in (self.encoder_attention_heads, self.decoder_attention_heads):
            if heads < 1 or self.d_model % heads:
                raise ValueError(f"d_model ({self.d_model}) must be divisible by the number of heads ({heads})")
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("pad_token_id", "eos_token_id", "decoder_start_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(f"{name} must be in [0, vocab_size), got {getattr(self, name)}")


@register("bart", family="transformers")
class Bart(HFModel, ActivationCheckpointing):
    """BART encoder-decoder (Lewis et al. 2020): post-norm, learned positions, greedy / beam decoding.

    Shapes:
        input_ids ``[B, S]``, decoder_input_ids ``[B, T]`` (+ optional 0/1 masks of the same shapes)
        -> logits ``[B, T, vocab_size]``
    """

    config_class = BartConfig
    hf_model_types: ClassVar[tuple[str, ...]] = ("bart",)

    def __init__(self, config: BartConfig) -> None:
        super().__init__(config)
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model, padding_idx=c.pad_token_id)
        self.embed_scale = math.sqrt(c.d_model) if c.scale_embedding else 1.0

        def layer(n_head: int, d_ff: int, cross: bool) -> TransformerLayer:
            return TransformerLayer(c.d_model, n_head, d_ff, norm_first=False, norm="layer", eps=1e-5, bias=True,
                                    activation=c.activation, dropout=c.dropout, attn_dropout=c.attention_dropout,
                                    act_dropout=c.activation_dropout, cross_attention=cross)

        n_pos = c.max_position_embeddings + _POSITION_OFFSET
        self.encoder_pos = LearnedPositionalEmbedding(n_pos, c.d_model)
        self.encoder_norm = nn.LayerNorm(c.d_model)      # "layernorm_embedding"
        self.encoder = nn.ModuleList(layer(c.encoder_attention_heads, c.encoder_ffn_dim, False)
                                     for _ in range(c.encoder_layers))
        self.decoder_pos = LearnedPositionalEmbedding(n_pos, c.d_model)
        self.decoder_norm = nn.LayerNorm(c.d_model)
        self.decoder = nn.ModuleList(layer(c.decoder_attention_heads, c.decoder_ffn_dim, True)
                                     for _ in range(c.decoder_layers))
        self.dropout = nn.Dropout(c.dropout)
        self.lm_head = None if c.tie_word_embeddings else nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.register_buffer("final_logits_bias", torch.zeros(1, c.vocab_size))
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """BART's initialization: N(0, init_std) weights, zero biases, a zero padding embedding."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=self.config.init_std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=self.config.init_std)
        self.embed.weight[self.config.pad_token_id].zero_()

    @classmethod
    def example_input(cls, config: BartConfig, batch_size: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.randint(0, config.vocab_size, (batch_size, 7)),
                torch.randint(0, config.vocab_size, (batch_size, 5)))

    # ------------------------------------------------------------------------------------ forward
    def _embed(self, ids: torch.Tensor, pos: LearnedPositionalEmbedding, norm: nn.LayerNorm,
               offset: int) -> torch.Tensor:
        x = pos(self.embed(ids) * self.embed_scale, offset + _POSITION_OFFSET)
        return self.dropout(norm(x))

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder stack: ``[B, S]`` token ids (and 0/1 padding mask) -> memory ``[B, S, d_model]``."""
        x = self._embed(input_ids, self.encoder_pos, self.encoder_norm, 0)
        mask = padding_mask(attention_mask) if attention_mask is not None else None
        for layer in self.encoder:
            x = self.checkpointed(layer, x, mask=mask)
        return x

    def decode(self, decoder_input_ids: torch.Tensor, memory: torch.Tensor,
               attention_mask: torch.Tensor | None = None, decoder_attention_mask: torch.Tensor | None = None,
               cache: DecoderCache | None = None) -> torch.Tensor:
        """Decoder stack + LM head: ``[B, T]`` ids over memory ``[B, S, d_model]`` -> logits ``[B, T, V]``.

        ``attention_mask`` ``[B, S]`` masks padded memory; ``decoder_attention_mask`` ``[B, P + T]``
        masks decoder positions (``P`` = positions already in ``cache``)."""
        offset = cache.length if cache is not None else 0
        x = self._embed(decoder_input_ids, self.decoder_pos, self.decoder_norm, offset)
        mask = padding_mask(decoder_attention_mask) if decoder_attention_mask is not None else None
        memory_mask = padding_mask(attention_mask) if attention_mask is not None else None
        for i, layer in enumerate(self.decoder):
            x = self.checkpointed(layer, x, mask=mask, causal=True, memory=memory, memory_mask=memory_mask,
                                  cache=cache.self_attn[i] if cache is not None else None,
                                  cross_cache=cache.cross_attn[i] if cache is not None else None)
        logits = self.lm_head(x) if self.lm_head is not None else F.linear(x, self.embed.weight)
        return logits + self.final_logits_bias

    def forward(self, input_ids: torch.Tensor, decoder_input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                decoder_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if decoder_input_ids is None:
            decoder_input_ids = shift_tokens_right(input_ids, self.config.pad_token_id,
                                                   self.config.decoder_start_token_id)
        memory = self.encode(input_ids, attention_mask)
        return self.decode(decoder_input_ids, memory, attention_mask, decoder_attention_mask)

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 max_new_tokens: int = 32, num_beams: int = 1, length_penalty: float = 1.0,
                 early_stopping: EarlyStopping = False) -> torch.Tensor:
        """Greedy (``num_beams == 1``) or beam-search decoding with KV caches (see :mod:`.decoding`).

        Shapes: ``[B, S]`` -> LongTensor ``[B, L]`` generated tokens, start token excluded, padding after EOS"""
        c = self.config
        if max_new_tokens > c.max_position_embeddings:
            raise ValueError(f"max_new_tokens ({max_new_tokens}) exceeds max_position_embeddings "
                             f"({c.max_position_embeddings})")
        return generate(self, input_ids, attention_mask, start_id=c.decoder_start_token_id, eos_id=c.eos_token_id,
                        pad_id=c.pad_token_id, max_new_tokens=max_new_tokens, num_beams=num_beams,
                        length_penalty=length_penalty, early_stopping=early_stopping)

    # ---------------------------------------------------------------------- Hugging Face format
    @classmethod
    def config_from_hf(cls, hf: dict[str, Any]) -> BartConfig:
        act = hf.get("activation_function", "gelu")
        if act not in ACT_FROM_HF:
            raise ArchlabError(f"unsupported BART activation_function {act!r}")
        eos = hf.get("eos_token_id", 2)
        if isinstance(eos, list):
            if len(eos) != 1:
                raise ArchlabError(f"BART decoding supports one eos_token_id, got {eos}")
            eos = eos[0]
        start = hf.get("decoder_start_token_id")
        return BartConfig(
            vocab_size=hf.get("vocab_size", 50265), d_model=hf.get("d_model", 1024),
            encoder_layers=hf.get("encoder_layers", 12), decoder_layers=hf.get("decoder_layers", 12),
            encoder_attention_heads=hf.get("encoder_attention_heads", 16),
            decoder_attention_heads=hf.get("decoder_attention_heads", 16),
            encoder_ffn_dim=hf.get("encoder_ffn_dim", 4096), decoder_ffn_dim=hf.get("decoder_ffn_dim", 4096),
            max_position_embeddings=hf.get("max_position_embeddings", 1024), activation=ACT_FROM_HF[act],
            dropout=float(hf.get("dropout", 0.1)), attention_dropout=float(hf.get("attention_dropout", 0.0)),
            activation_dropout=float(hf.get("activation_dropout", 0.0)),
            scale_embedding=bool(hf.get("scale_embedding", False)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)), pad_token_id=hf.get("pad_token_id", 1),
            eos_token_id=eos, decoder_start_token_id=start if start is not None else eos,
            init_std=float(hf.get("init_std", 0.02)))

    def config_to_hf(self) -> dict[str, Any]:
        c = self.config
        return {
            "model_type": "bart", "architectures": ["BartForConditionalGeneration"], "vocab_size": c.vocab_size,
            "d_model": c.d_model, "encoder_layers": c.encoder_layers, "decoder_layers": c.decoder_layers,
            "encoder_attention_heads": c.encoder_attention_heads,
            "decoder_attention_heads": c.decoder_attention_heads, "encoder_ffn_dim": c.encoder_ffn_dim,
            "decoder_ffn_dim": c.decoder_ffn_dim, "max_position_embeddings": c.max_position_embeddings,
            "activation_function": ACT_TO_HF[c.activation], "dropout": c.dropout,
            "attention_dropout": c.attention_dropout, "activation_dropout": c.activation_dropout,
            "scale_embedding": c.scale_embedding, "init_std": c.init_std, "is_encoder_decoder": True,
            "use_cache": True, "tie_word_embeddings": c.tie_word_embeddings, "pad_token_id": c.pad_token_id,
            "eos_token_id": c.eos_token_id, "decoder_start_token_id": c.decoder_start_token_id,
            # BartConfig defaults to forcing EOS at the length limit in generate; this model does not
            "forced_eos_token_id": None,
        }

    @staticmethod
    def _names(config: BartConfig) -> list[tuple[str, str]]:
        """``(ours, HF)`` names of every tensor (attention q/k/v are fused separately, see state_from_hf)."""
        pairs = [("encoder_pos.weight", "encoder.embed_positions.weight"),
                 ("decoder_pos.weight", "decoder.embed_positions.weight")]
        for p in ("weight", "bias"):
            pairs += [(f"encoder_norm.{p}", f"encoder.layernorm_embedding.{p}"),
                      (f"decoder_norm.{p}", f"decoder.layernorm_embedding.{p}")]
        for stack, n in (("encoder", config.encoder_layers), ("decoder", config.decoder_layers)):
            for i in range(n):
                ours, hf = f"{stack}.{i}", f"{stack}.layers.{i}"
                subs = [("attn.out", "self_attn.out_proj"), ("norm1", "self_attn_layer_norm"),
                        ("ffn.fc1", "fc1"), ("ffn.fc2", "fc2"), ("norm2", "final_layer_norm")]
                if stack == "decoder":
                    subs += [("cross_attn.q", "encoder_attn.q_proj"), ("cross_attn.out", "encoder_attn.out_proj"),
                             ("norm_cross", "encoder_attn_layer_norm")]
                pairs += [(f"{ours}.{a}.{p}", f"{hf}.{b}.{p}") for a, b in subs for p in ("weight", "bias")]
        return pairs

    @staticmethod
    def _fused(config: BartConfig) -> list[tuple[str, str, str]]:
        """``(ours, HF prefix, projections)`` of the fused attention projections."""
        out = [(f"encoder.{i}.attn.qkv", f"encoder.layers.{i}.self_attn", "qkv") for i in range(config.encoder_layers)]
        for i in range(config.decoder_layers):
            out += [(f"decoder.{i}.attn.qkv", f"decoder.layers.{i}.self_attn", "qkv"),
                    (f"decoder.{i}.cross_attn.kv", f"decoder.layers.{i}.encoder_attn", "kv")]
        return out

    @classmethod
    def state_from_hf(cls, config: BartConfig, hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # BartForConditionalGeneration nests the network under "model."; BartModel does not
        hf = {k.removeprefix("model."): v for k, v in hf_state.items()}
        # transformers 5 unties the stacks' input embeddings from "shared" along with the LM head when
        # tie_word_embeddings is false; the stacks' own copies are then the ones in use
        shared = hf.get("shared.weight")
        enc, dec = hf.get("encoder.embed_tokens.weight", shared), hf.get("decoder.embed_tokens.weight", shared)
        if enc is None or dec is None or not torch.equal(enc, dec):
            raise ArchlabError("BART needs one token embedding for encoder and decoder (model.shared.weight)")
        out = {"embed.weight": enc}
        out.update({ours: hf[theirs] for ours, theirs in cls._names(config)})
        for ours, theirs, projs in cls._fused(config):
            for p in ("weight", "bias"):
                out[f"{ours}.{p}"] = torch.cat([hf[f"{theirs}.{x}_proj.{p}"] for x in projs])
        if config.tie_word_embeddings:
            if "lm_head.weight" in hf and not torch.equal(hf["lm_head.weight"], out["embed.weight"]):
                raise ArchlabError("the checkpoint has an lm_head different from the shared embedding but the config "
                                 "ties them; load with tie_word_embeddings=False")
        else:
            if "lm_head.weight" not in hf:
                raise ArchlabError("tie_word_embeddings is false but the checkpoint has no lm_head.weight")
            out["lm_head.weight"] = hf["lm_head.weight"]
        out["final_logits_bias"] = hf.get("final_logits_bias", torch.zeros(1, config.vocab_size))
        return out

    def state_to_hf(self) -> dict[str, torch.Tensor]:
        sd = self.state_dict()
        out = {"model.shared.weight": sd["embed.weight"], "final_logits_bias": sd["final_logits_bias"]}
        if self.lm_head is not None:
            out["lm_head.weight"] = sd["lm_head.weight"]
            # untied, transformers 5 reads each stack's input embedding from its own entry (copies: a
            # safetensors file cannot hold one tensor twice)
            for stack in ("encoder", "decoder"):
                out[f"model.{stack}.embed_tokens.weight"] = sd["embed.weight"].clone()
        out.update({f"model.{theirs}": sd[ours] for ours, theirs in self._names(self.config)})
        for ours, theirs, projs in self._fused(self.config):
            for p in ("weight", "bias"):
                for x, t in zip(projs, sd[f"{ours}.{p}"].chunk(len(projs)), strict=True):
                    out[f"model.{theirs}.{x}_proj.{p}"] = t
        return out
