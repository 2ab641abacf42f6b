"""Fast one-token decoding for :class:`~archlab.models.transformers.gpt.GPT` (the speed path beside the reference).

:meth:`GPT.generate` reads as the reference: after the prompt fills the KV caches, each new token goes through
``hidden_states(token, caches=caches)``, the same code as training. Token-by-token decoding is bound by
reading the weights, and that general path spends its time elsewhere, so ``generate(fast=True)`` (the
default) hands each one-token step to a :class:`FastDecoder` from this module instead:

- *eager*: the block matrices are transposed once per ``generate`` call into ``[in, out]`` copies (on CPU the
  BLAS kernel for a single row streams that layout at about twice the speed of ``nn.Linear``'s ``[out, in]``;
  memory: one more copy of the block weights while generation runs) and the step is a short sequence of
  plain tensor calls (:func:`decode_step`);
- *compiled* (``generate(compile=True)``): the step is one ``torch.compile`` graph (:func:`graph_step`), learned
  positions and multi-head attention only, no autocast; on CPU with up to 4 rows every projection is a
  row-wise multiply-and-sum over the ``[out, in]`` weight, which inductor turns into one streaming loop.

Both are tested equal to the reference step (tests/test_gpt.py); the timings are in
``benchmarks/results/gpt_generate.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ...nn.attention import KVCache

if TYPE_CHECKING:
    from .gpt import GPT

Weights = list[tuple[torch.Tensor | None, ...]]


def supported(model: GPT) -> bool:
    """Whether the fast step applies: eval mode, dot-product attention, pre-norm blocks without cross-attention
    or gated feed-forward (everything :func:`decode_step` writes out)."""
    c = model.config
    return (not model.training and c.attn_kind == "dot" and all(
        layer.norm_first and layer.cross_attn is None and layer.ffn.gate is None for layer in model.layers))


def decode_weights(model: GPT) -> Weights:
    """Per layer: (W_qkv', b_qkv, W_out', b_out, W_1', b_1, W_2', b_2) with each W' = W^T ([in, out])."""
    def t(lin: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
        w = lin.weight.detach().t()
        return (w.contiguous() if w.device.type == "cpu" else w), lin.bias

    return [(*t(layer.attn.qkv), *t(layer.attn.out), *t(layer.ffn.fc1), *t(layer.ffn.fc2))
            for layer in model.layers]


def decode_step(model: GPT, token: torch.Tensor, caches: list[KVCache], weights: Weights) -> torch.Tensor:
    """Hidden state after feeding one token per row at the next cached position: what
    ``model.hidden_states(token[:, None], caches=caches)[:, -1]`` returns, with fewer calls.

    Shapes: token ``[B]`` -> ``[B, n_embd]``"""
    def linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return x @ w if bias is None else torch.addmm(bias, x, w)

    pos = caches[0].length
    if pos + 1 > model.config.block_size:
        raise ValueError(f"{pos + 1} positions exceed block_size ({model.config.block_size})")
    x = model.wte(token)
    if model.wpe is not None:
        x = x + model.wpe.weight[pos]
    b = x.shape[0]
    for layer, cache, weight in zip(model.layers, caches, weights, strict=True):
        w_qkv, b_qkv, w_o, b_o, w_1, b_1, w_2, b_2 = weight
        attn = layer.attn
        hq, hkv, d = attn.n_head, attn.n_kv_head, attn.head_dim
        q, k, v = linear(layer.norm1(x), w_qkv, b_qkv).split([hq * d, hkv * d, hkv * d], dim=-1)
        q, k, v = q.view(b, hq, 1, d), k.view(b, hkv, 1, d), v.view(b, hkv, 1, d)
        if attn.rotary is not None:
            q, k = attn.rotary(q, k, pos)
        # KVCache.append without its checks (the length was checked above)
        cache.k[:, :, pos:pos + 1] = k
        cache.v[:, :, pos:pos + 1] = v
        cache.length = pos + 1
        a = F.scaled_dot_product_attention(q, cache.k[:, :, :pos + 1], cache.v[:, :, :pos + 1], scale=attn.scale,
                                           enable_gqa=hkv != hq)
        x = x + linear(a.view(b, hq * d), w_o, b_o)
        x = x + linear(layer.ffn.act(linear(layer.norm2(x), w_1, b_1)), w_2, b_2)
    return model.ln_f(x)


def graph_step(model: GPT, token: torch.Tensor, pos: torch.Tensor, ks: list[torch.Tensor],
               vs: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """The traced body of a compiled decoding step (learned positions, multi-head attention): the token at
    position ``pos`` (a 0-d tensor, so one graph serves every position) attends to the cached positions
    ``< pos`` (read only; the full buffers are read and the unfilled tail masked) and to itself. Returns the
    logits and each layer's new key and value rows.

    Shapes: token ``[B]``; ks, vs ``[B, H, L, D]`` per layer -> ``[B, vocab]``, ``[B, H, D]`` per layer"""
    # x W^T as a multiply-and-sum over rows of the [out, in] weight: one streaming loop on CPU for a few rows;
    # for larger batches and on other devices the ordinary product
    rowwise = token.device.type == "cpu" and token.shape[0] <= 4

    def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        y = (x[:, None, :] * weight).sum(-1) if rowwise else F.linear(x, weight)
        return y if bias is None else y + bias

    b = token.shape[0]
    x = F.embedding(token, model.wte.weight) + F.embedding(pos.view(1), model.wpe.weight)
    new_k, new_v = [], []
    for layer, kc, vc in zip(model.layers, ks, vs, strict=True):
        attn = layer.attn
        h, d = attn.n_head, attn.head_dim
        scale = d ** -0.5 if attn.scale is None else attn.scale
        q, k, v = linear(layer.norm1(x), attn.qkv.weight, attn.qkv.bias).view(b, 3, h, d).unbind(1)
        past = torch.einsum("bhd,bhld->bhl", q, kc) * scale
        past = past.masked_fill(torch.arange(kc.shape[2], device=kc.device) >= pos, float("-inf"))
        probs = torch.softmax(torch.cat((past, (q * k).sum(-1, keepdim=True) * scale), -1), -1)
        a = torch.einsum("bhl,bhld->bhd", probs[..., :-1], vc) + probs[..., -1:] * v
        x = x + linear(a.reshape(b, h * d), attn.out.weight, attn.out.bias)
        x = x + linear(layer.ffn.act(linear(layer.norm2(x), layer.ffn.fc1.weight, layer.ffn.fc1.bias)),
                       layer.ffn.fc2.weight, layer.ffn.fc2.bias)
        new_k.append(k)
        new_v.append(v)
    x = model.ln_f(x)
    head = model.wte.weight if model.lm_head is None else model.lm_head.weight
    return linear(x, head), new_k, new_v


def compiled_step(model: GPT) -> Any:
    """``torch.compile`` of :func:`graph_step` for this model, made once per model (torch recompiles it for each
    new batch size and cache length)."""
    step = model.__dict__.get("_compiled_graph_step")
    if step is None:
        step = torch.compile(lambda *args: graph_step(model, *args), fullgraph=True)
        model.__dict__["_compiled_graph_step"] = step
    return step


def graph_decode(model: GPT, graph: Any, token: torch.Tensor, caches: list[KVCache]) -> torch.Tensor:
    """One decoding step through the compiled graph: logits ``[B, vocab]`` for ``token [B]`` at the next cached
    position; the new keys and values are written into ``caches`` afterwards."""
    pos = caches[0].length
    if pos + 1 > model.config.block_size:
        raise ValueError(f"{pos + 1} positions exceed block_size ({model.config.block_size})")
    pos_t = torch.tensor(pos, device=token.device)
    logits, ks, vs = graph(token, pos_t, [c.k for c in caches], [c.v for c in caches])
    for cache, k, v in zip(caches, ks, vs, strict=True):
        cache.append(k.unsqueeze(2), v.unsqueeze(2))
    return logits


class FastDecoder:
    """The one-token step :meth:`GPT.generate` uses when ``fast=True``: :func:`decode_step` (transposed weights
    made on first use) or, with ``compile=True`` where it applies, the compiled :func:`graph_step`."""

    def __init__(self, model: GPT, compile: bool = False) -> None:
        c = model.config
        self.model = model
        self.weights: Weights | None = None
        self.graph = None
        if (compile and c.positional == "learned" and c.n_kv_head in (None, c.n_head)
                and not torch.is_autocast_enabled(model.wte.weight.device.type)):
            self.graph = compiled_step(model)

    def logits(self, token: torch.Tensor, caches: list[KVCache]) -> torch.Tensor:
        """Logits ``[B, vocab]`` for ``token [B]`` at the next cached position (the caches are extended)."""
        if self.graph is not None:
            return graph_decode(self.model, self.graph, token, caches)
        if self.weights is None:
            self.weights = decode_weights(self.model)
        return self.model._head(decode_step(self.model, token, caches, self.weights))
