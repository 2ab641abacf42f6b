"""GPT: a decoder-only transformer language model (Radford et al. 2018, 2019; GPT-2 layout, nanoGPT style).

Tokens ``x_1 .. x_T`` are embedded and given their position, then pass through ``n_layer`` pre-norm
blocks with causal self-attention, a final LayerNorm, and the language-model head:

    h_0 = Dropout(W_te[x_t] + W_pe[t])
    a_l = h_{l-1} + Dropout(CausalSelfAttention(LN_1(h_{l-1})))          (GPT-2, sec. 2.3: LN moved
    h_l = a_l + Dropout(W_2 gelu(W_1 LN_2(a_l) + b_1) + b_2)              to each sub-block's input)
    logits_t = LN_f(h_L)_t W_te^T                                         (head tied to the embedding)

``p(x_{t+1} | x_{<=t}) = softmax(logits_t)``; causal attention lets position ``t`` see ``1 .. t`` only.

Initialization follows GPT-2 (and nanoGPT): every weight ~ N(0, 0.02^2), biases 0, and the two
projections that write into the residual stream (attention output, second MLP layer) ~
N(0, (0.02 / sqrt(2 n_layer))^2), so the variance of the residual stream does not grow with depth.

Options beyond GPT-2: grouped-query / multi-query attention (``n_kv_head``), rotary positions
instead of learned ones, and local, sparse or linear attention (``attn_kind``, see
:mod:`archlab.nn.attention`).

Generation (:meth:`GPT.generate`) keeps one :class:`~archlab.nn.attention.KVCache` per layer, allocated
once, so each new token costs one position's worth of compute instead of the whole prefix. The method
reads as the reference (each new token through ``hidden_states``); the faster one-token step it uses by
default (``fast=True``; ``compile=True`` for one ``torch.compile`` graph) is in
:mod:`archlab.models.transformers.gpt_decode`, tested equal.

Hugging Face format: ``model_type = "gpt2"`` (``GPT2LMHeadModel``). GPT-2 stores its projections as
``Conv1D`` with weights ``[in, out]``, the transpose of ``nn.Linear``; its fused ``c_attn`` has the
same ``[q; k; v]`` layout as our ``qkv``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ArchlabError
from ...nn import Activation
from ...nn.attention import AttentionKind, AttentionOptions, Backend, KVCache, causal_mask, padding_mask
from ...nn.checkpointing import ActivationCheckpointing
from ...nn.positional import LearnedPositionalEmbedding, RotaryEmbedding
from ...nn.transformer import TransformerLayer
from ...registry import register
from . import gpt_decode
from .hf import ACT_FROM_HF, ACT_TO_HF, HFModel

Positional = Literal["learned", "rotary"]



@dataclass
class GPTConfig:
    """Defaults: nanoGPT's shakespeare_char CPU configuration (4 layers, 4 heads, 128 dims, block 64)."""

    vocab_size: int = 65
    """number of token ids (65 characters of tinyshakespeare; 50257 for GPT-2's BPE)"""
    block_size: int = 64
    """longest context (number of positions) the model sees"""
    n_layer: int = 4
    """number of transformer blocks"""
    n_head: int = 4
    """attention heads per block"""
    n_embd: int = 128
    """width of the residual stream (must be divisible by n_head)"""
    n_kv_head: int | None = None
    """key/value heads (grouped-query attention); None = n_head (multi-head), 1 = multi-query"""
    n_inner: int | None = None
    """hidden width of the MLP; None = 4 * n_embd"""
    dropout: float = 0.0
    """dropout on the embeddings, the attention weights and both residual branches"""
    bias: bool = True
    """biases in the linear layers and LayerNorms (GPT-2 has them)"""
    layer_norm_eps: float = 1e-5
    """epsilon of every LayerNorm"""
    activation: Activation = "gelu_tanh"
    """MLP nonlinearity; GPT-2 uses the tanh approximation of GELU ("gelu_new" in HF)"""
    tie_weights: bool = True
    """share the token embedding matrix with the output head (Press & Wolf 2017)"""
    positional: Positional = "learned"
    """learned: a trained vector per position (GPT-2) | rotary: RoFormer rotation of queries and keys"""
    rotary_base: float = 10000.0
    """rotary: base of the rotation frequencies"""
    attn_kind: AttentionKind = "dot"
    """dot: full causal attention | local: sliding window | sparse: fixed factorized pattern | linear"""
    attn_backend: Backend = "sdpa"
    """dot attention: sdpa (fused kernel) | eager (the formula written out)"""
    window: int = 32
    """local attention: keys each query sees, itself included"""
    sparse_block: int = 16
    """sparse attention: block length (must divide block_size)"""
    sparse_summary: int = 4
    """sparse attention: summary positions at the end of every block"""
    init_std: float = 0.02
    """standard deviation of the normal initialization (HF: initializer_range)"""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_kv_head is not None and (self.n_kv_head < 1 or self.n_head % self.n_kv_head):
            raise ValueError(f"n_kv_head ({self.n_kv_head}) must be >= 1 and divide n_head ({self.n_head})")
        if self.n_inner is not None and self.n_inner < 1:
            raise ValueError(f"n_inner must be >= 1 or None, got {self.n_inner}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.layer_norm_eps <= 0 or self.init_std <= 0:
            raise ValueError("layer_norm_eps and init_std must be > 0")
        for name, allowed in (("activation", get_args(Activation)), ("positional", get_args(Positional)),
                              ("attn_kind", get_args(AttentionKind)), ("attn_backend", get_args(Backend))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.positional == "rotary" and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"rotary positions need an even head dimension, got {self.n_embd // self.n_head}")
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        if not 1 <= self.sparse_summary <= self.sparse_block:
            raise ValueError(f"sparse_summary ({self.sparse_summary}) must be in [1, sparse_block "
                             f"({self.sparse_block})]")
        if self.attn_kind == "sparse" and self.block_size % self.sparse_block:
            raise ValueError(f"sparse attention needs sparse_block ({self.sparse_block}) to divide block_size "
                             f"({self.block_size})")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set to -inf every logit outside the ``top_k`` largest and outside the nucleus (Holtzman et al.
    2020): the smallest set of most likely tokens whose probability sums to at least ``top_p``. The most
    likely token always survives.

    Shapes: logits ``[B, V]`` -> ``[B, V]`` (a new tensor)."""
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # a token is dropped when the tokens more likely than it already reach top_p
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


@register("gpt", family="transformers")
class GPT(HFModel, ActivationCheckpointing):
    """GPT decoder-only language model (GPT-2 architecture; equations in the module docstring).

    Submodules: ``wte`` (token embedding), ``wpe`` (learned positions; absent with rotary), ``drop``,
    ``layers`` (pre-norm :class:`~archlab.nn.transformer.TransformerLayer`), ``ln_f``, ``lm_head``
    (only when the head is not tied to ``wte``).

    Shapes:
        input_ids: ``[B, T]`` (long, ``T <= block_size``); attention_mask: ``[B, T]`` (1 = token,
        0 = padding) -> logits ``[B, T, vocab_size]``
    """

    config_class = GPTConfig
    hf_model_types: ClassVar[tuple[str, ...]] = ("gpt2",)

    def __init__(self, config: GPTConfig) -> None:
        super().__init__(config)
        c = config
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.wpe = LearnedPositionalEmbedding(c.block_size, c.n_embd) if c.positional == "learned" else None
        # one rotary table shared by every layer (buffers only, nothing to train)
        rotary = RotaryEmbedding(c.head_dim, c.rotary_base, c.block_size) if c.positional == "rotary" else None
        self.drop = nn.Dropout(c.dropout)
        options = AttentionOptions(kind=c.attn_kind, backend=c.attn_backend, window=c.window,
                                   block=c.sparse_block, summary=c.sparse_summary)
        self.layers = nn.ModuleList(
            TransformerLayer(c.n_embd, c.n_head, c.n_inner or 4 * c.n_embd, norm_first=True, norm="layer",
                             eps=c.layer_norm_eps, bias=c.bias, activation=c.activation, dropout=c.dropout,
                             attn_dropout=c.dropout, n_kv_head=c.n_kv_head, attn_options=options, rotary=rotary)
            for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd, eps=c.layer_norm_eps, bias=c.bias)
        # a tied head is the embedding matrix itself (F.linear in _head), so no second parameter exists
        self.lm_head = None if c.tie_weights else nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self._init_weights()

    def _init_weights(self) -> None:
        std = self.config.init_std
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, 0.0, std)
        # GPT-2: scale the residual-stream writers by 1/sqrt(number of residual branches)
        resid_std = std / math.sqrt(2 * self.config.n_layer)
        for layer in self.layers:
            nn.init.normal_(layer.attn.out.weight, 0.0, resid_std)
            nn.init.normal_(layer.ffn.fc2.weight, 0.0, resid_std)

    @classmethod
    def example_input(cls, config: GPTConfig, batch_size: int = 2) -> torch.Tensor:
        return torch.randint(0, config.vocab_size, (batch_size, config.block_size))

    # ------------------------------------------------------------------------------------ forward
    def new_caches(self, batch: int, max_len: int, *, dtype: torch.dtype | None = None,
                   device: torch.device | str | None = None) -> list[KVCache]:
        """One empty :class:`KVCache` per layer for ``max_len`` positions (``<= block_size``)."""
        c = self.config
        if max_len > c.block_size:
            raise ValueError(f"a cache of {max_len} positions exceeds block_size ({c.block_size})")
        p = self.wte.weight
        return [KVCache(batch, c.n_kv_head or c.n_head, c.head_dim, max_len, dtype=dtype or p.dtype,
                        device=device or p.device) for _ in range(c.n_layer)]

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      caches: list[KVCache] | None = None) -> torch.Tensor:
        """Final hidden states ``LN_f(h_L)`` (HF's ``last_hidden_state``).

        With ``caches`` (from :meth:`new_caches`) ``input_ids`` are the positions after those already
        cached, which are appended; ``attention_mask`` then covers the cached positions too.
        Position ids are ``0 .. T-1`` (after the cache) whatever the padding, as in HF's GPT-2 forward:
        pad on the right so that real tokens keep their positions.

        Shapes: input_ids ``[B, T]``; attention_mask ``[B, past + T]`` -> ``[B, T, n_embd]``
        """
        c = self.config
        t = input_ids.shape[1]
        past = caches[0].length if caches else 0
        if past + t > c.block_size:
            raise ValueError(f"{past + t} positions exceed block_size ({c.block_size})")
        if attention_mask is not None and attention_mask.shape != (input_ids.shape[0], past + t):
            raise ValueError(f"attention_mask must have shape {(input_ids.shape[0], past + t)}, "
                             f"got {tuple(attention_mask.shape)}")
        pad = -t % c.sparse_block if c.attn_kind == "sparse" else 0
        if pad:
            # the sparse kernel works on whole blocks; appended positions are in the future of every
            # real one, so under the causal mask they change nothing and are cut off below
            input_ids = F.pad(input_ids, (0, pad))
        x = self.wte(input_ids)
        if self.wpe is not None:
            x = self.wpe(x, past)
        x = self.drop(x)
        tq, tk = t + pad, past + t + pad
        mask, causal = None, True
        if attention_mask is not None:
            mask = padding_mask(F.pad(attention_mask, (0, pad), value=1))
            if c.attn_kind == "dot":
                # combine once here instead of in every layer
                mask, causal = mask & causal_mask(tq, tk, x.device), False
        elif tq == 1:
            causal = False  # one query after the cache sees every key: no mask at all
        for i, layer in enumerate(self.layers):
            x = self.checkpointed(layer, x, mask=mask, causal=causal, cache=caches[i] if caches else None)
        x = self.ln_f(x)
        return x[:, :t] if pad else x

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.wte.weight) if self.lm_head is None else self.lm_head(h)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                caches: list[KVCache] | None = None) -> torch.Tensor:
        """Next-token logits at every position (arguments as in :meth:`hidden_states`).

        Shapes: input_ids ``[B, T]`` -> logits ``[B, T, vocab_size]``"""
        return self._head(self.hidden_states(input_ids, attention_mask, caches))

    # --------------------------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, generator: torch.Generator | None = None,
                 eos_token_id: int | None = None, fast: bool = True, compile: bool = False) -> torch.Tensor:
        """Continue each prompt by ``max_new_tokens`` tokens, sampled one at a time from
        ``softmax(logits / temperature)`` after :func:`filter_logits` (``temperature == 0``: argmax).

        The prompt is run once to fill the per-layer KV caches; each later step feeds only the newest
        token. When the sequence outgrows ``block_size`` the context is cropped to its last
        ``block_size`` tokens (as nanoGPT does) and, since the learned positions of the window shift,
        every step from then on recomputes that window without the cache. Local, sparse and linear
        attention have no cache and always recompute. Once every row has produced ``eos_token_id``
        generation stops (finished rows are filled with it). Call ``eval()`` first to turn off dropout.

        This method is the reference. ``fast=True`` (the default) runs each one-token step through
        :class:`~archlab.models.transformers.gpt_decode.FastDecoder` instead (transposed weight copies, fewer
        calls; tested equal); ``compile=True`` makes that step one graph built by ``torch.compile`` (needs a
        C++ compiler on CPU): the first call compiles for a few seconds per new batch size and cache length,
        later steps are faster. It covers learned positions and multi-head attention; other configurations
        run the eager fast step.

        Shapes: input_ids ``[B, T]`` -> ``[B, T + n]`` with ``n <= max_new_tokens``
        """
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        c = self.config
        b, t0 = input_ids.shape
        if t0 < 1:
            raise ValueError("generate needs a prompt of at least one token")
        out = input_ids.new_empty(b, t0 + max_new_tokens)
        out[:, :t0] = input_ids
        caches = None
        if c.attn_kind == "dot" and t0 < c.block_size:
            dev = input_ids.device
            dtype = torch.get_autocast_dtype(dev.type) if torch.is_autocast_enabled(dev.type) else None
            caches = self.new_caches(b, min(t0 + max_new_tokens, c.block_size), dtype=dtype, device=dev)
        finished = torch.zeros(b, dtype=torch.bool, device=input_ids.device) if eos_token_id is not None else None
        decoder = None
        if (fast or compile) and caches is not None and gpt_decode.supported(self):
            decoder = gpt_decode.FastDecoder(self, compile=compile)
        n = t0
        while n < t0 + max_new_tokens:
            if caches is not None and n <= c.block_size:
                done = caches[0].length
                if decoder is not None and done == n - 1:
                    logits = decoder.logits(out[:, n - 1], caches)
                else:
                    logits = self._head(self.hidden_states(out[:, done:n], caches=caches)[:, -1])
            else:
                logits = self._head(self.hidden_states(out[:, max(0, n - c.block_size):n])[:, -1])
            logits = logits.float()
            if temperature == 0:
                nxt = logits.argmax(dim=-1)
            else:
                probs = torch.softmax(filter_logits(logits / temperature, top_k, top_p), dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]
            if finished is not None:
                nxt = nxt.masked_fill(finished, eos_token_id)
                finished |= nxt == eos_token_id
            out[:, n] = nxt
            n += 1
            if finished is not None and bool(finished.all()):
                break
        return out[:, :n]

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW parameter groups as in nanoGPT: decay on matrices (linear weights, embeddings), none on
        biases and LayerNorm gains."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]

    # ---------------------------------------------------------------------- Hugging Face format
    @classmethod
    def config_from_hf(cls, hf_config: dict[str, Any]) -> GPTConfig:
        """GPT2Config fields -> :class:`GPTConfig` (dropout from ``resid_pdrop``)."""
        h = hf_config
        if h.get("add_cross_attention"):
            raise ArchlabError("GPT-2 with cross-attention (add_cross_attention) is not supported")
        if not h.get("scale_attn_weights", True) or h.get("scale_attn_by_inverse_layer_idx", False):
            raise ArchlabError("GPT-2 with scale_attn_weights=False or scale_attn_by_inverse_layer_idx is "
                               "not supported")
        act = h.get("activation_function", "gelu_new")
        ours = ACT_FROM_HF.get(act)
        if ours is None:
            raise ArchlabError(f"GPT-2 activation_function {act!r} is not supported; supported: "
                               f"{', '.join(ACT_FROM_HF)}")
        try:
            return GPTConfig(vocab_size=h.get("vocab_size", 50257), block_size=h.get("n_positions", 1024),
                             n_layer=h.get("n_layer", 12), n_head=h.get("n_head", 12), n_embd=h.get("n_embd", 768),
                             n_inner=h.get("n_inner"), dropout=h.get("resid_pdrop", 0.1),
                             layer_norm_eps=h.get("layer_norm_epsilon", 1e-5), activation=ours,
                             tie_weights=h.get("tie_word_embeddings", True),
                             init_std=h.get("initializer_range", 0.02))
        except ValueError as exc:
            raise ArchlabError(f"GPT-2 config: {exc}") from None

    def _check_gpt2_compatible(self) -> None:
        c = self.config
        blockers = [(c.positional != "learned", "rotary positions"),
                    (c.n_kv_head not in (None, c.n_head), "grouped-query attention (n_kv_head)"),
                    (c.attn_kind != "dot", f"{c.attn_kind} attention"),
                    (not c.bias, "bias=False")]
        for blocked, what in blockers:
            if blocked:
                raise ArchlabError(f"a GPT with {what} has no Hugging Face GPT-2 equivalent")

    def config_to_hf(self) -> dict[str, Any]:
        """:class:`GPTConfig` -> a complete GPT2Config ``config.json`` dict."""
        self._check_gpt2_compatible()
        c = self.config
        eot = 50256 if c.vocab_size > 50256 else None
        return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": c.vocab_size,
                "n_positions": c.block_size, "n_embd": c.n_embd, "n_layer": c.n_layer, "n_head": c.n_head,
                "n_inner": c.n_inner, "activation_function": ACT_TO_HF[c.activation],
                "resid_pdrop": c.dropout, "embd_pdrop": c.dropout, "attn_pdrop": c.dropout,
                "layer_norm_epsilon": c.layer_norm_eps, "initializer_range": c.init_std,
                "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                "reorder_and_upcast_attn": False, "tie_word_embeddings": c.tie_weights, "use_cache": True,
                # <|endoftext|> exists only in GPT-2's own vocabulary; elsewhere HF's default id would be out of range
                "bos_token_id": eot, "eos_token_id": eot}

    @staticmethod
    def _hf_names(n_layer: int) -> list[tuple[str, str, bool]]:
        """(archlab name, HF name without ``transformer.``, HF stores it transposed as Conv1D)."""
        names = [("wte.weight", "wte.weight", False), ("wpe.weight", "wpe.weight", False),
                 ("ln_f.weight", "ln_f.weight", False), ("ln_f.bias", "ln_f.bias", False)]
        per_layer = [("norm1", "ln_1", False), ("attn.qkv", "attn.c_attn", True), ("attn.out", "attn.c_proj", True),
                     ("norm2", "ln_2", False), ("ffn.fc1", "mlp.c_fc", True), ("ffn.fc2", "mlp.c_proj", True)]
        for i in range(n_layer):
            for ours, theirs, conv in per_layer:
                names.append((f"layers.{i}.{ours}.weight", f"h.{i}.{theirs}.weight", conv))
                names.append((f"layers.{i}.{ours}.bias", f"h.{i}.{theirs}.bias", False))
        return names

    @classmethod
    def state_from_hf(cls, config: GPTConfig, hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """GPT2LMHeadModel (``transformer.*``) or GPT2Model (no prefix) tensors -> archlab state dict.

        Old checkpoints carry the causal-mask buffers ``attn.bias`` / ``attn.masked_bias``: dropped.
        ``lm_head.weight`` is ignored when the head is tied (it is ``wte.weight`` again, or absent)."""
        state = {}
        for key, value in hf_state.items():
            key = key.removeprefix("transformer.")
            if key.endswith((".attn.bias", ".attn.masked_bias")):
                continue
            if key == "lm_head.weight" and config.tie_weights:
                continue
            state[key] = value
        out = {}
        for ours, theirs, conv in cls._hf_names(config.n_layer):
            if theirs in state:
                value = state.pop(theirs)
                out[ours] = value.t().contiguous() if conv else value
        if "lm_head.weight" in state:
            out["lm_head.weight"] = state.pop("lm_head.weight")
        out.update(state)  # anything left is reported by the loader as unexpected
        return out

    def state_to_hf(self) -> dict[str, torch.Tensor]:
        """archlab state dict -> GPT2LMHeadModel tensor names (Conv1D weights transposed)."""
        self._check_gpt2_compatible()
        state = self.state_dict()
        out = {f"transformer.{theirs}": state[ours].t().contiguous() if conv else state[ours]
               for ours, theirs, conv in self._hf_names(self.config.n_layer)}
        if self.lm_head is not None:
            out["lm_head.weight"] = state["lm_head.weight"]
        return out
