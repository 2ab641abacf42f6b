"""Attention: one entry point, two backends, and the variants the transformer family uses.

Scaled dot-product attention (Vaswani et al. 2017, eq. 1), per head:

    A = softmax(Q K^T * scale + B + M),   out = A V,        scale = 1 / sqrt(d_head) by default

``B`` is an additive bias (T5's relative position bias, ALiBi ...), ``M`` is 0 where a query may look
and -inf where it may not (causal mask, key padding, sliding window, sparse pattern).

:func:`attention` runs this with either backend:

* ``"sdpa"`` (default): PyTorch's fused ``scaled_dot_product_attention`` (flash / memory-efficient
  kernels, no T x T weights kept for the backward where the kernel allows);
* ``"eager"``: the formula above written out; slower, but it can return the weights ``A``.

Grouped-query attention (Ainslie et al. 2023) shares each key/value head among ``n_head / n_kv_head``
query heads; multi-query attention (Shazeer 2019) is ``n_kv_head = 1``.

Variants with their own cost profile (all take ``[B, H, T, D]`` tensors):

* :func:`sliding_window_attention` -- each query sees the ``window`` keys before it (Longformer /
  Mistral local attention): computed block by block in O(T * window) time and memory;
* :func:`sparse_attention` -- Child et al. 2019's *fixed* factorized pattern: a query sees its own
  block of ``block`` positions plus the last ``summary`` positions of every earlier block (the
  "strided" summary columns): O(T * (block + T * summary / block));
* :func:`linear_attention` -- Katharopoulos et al. 2020: ``softmax(q k^T)`` replaced by the kernel
  ``phi(q) . phi(k)`` with ``phi = elu + 1``, which reassociates to O(T) time and memory;
* :class:`AdditiveAttention` (Bahdanau et al. 2015) and :class:`MultiplicativeAttention` (Luong et
  al. 2015, "general") -- the scoring functions of RNN encoder-decoders.

:class:`MultiHeadAttention` projects inputs to heads and back, handles self- and cross-attention,
rotary position embeddings, and a :class:`KVCache` for incremental decoding.

Masks everywhere are boolean with ``True`` = *may attend*, broadcastable to ``[B, H, Tq, Tk]``;
:func:`padding_mask` turns a ``[B, Tk]`` attention mask into that form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Backend = Literal["sdpa", "eager"]
AttentionKind = Literal["dot", "local", "sparse", "linear"]


# ----------------------------------------------------------------------------------------- masks
def causal_mask(tq: int, tk: int, device: torch.device | None = None) -> torch.Tensor:
    """``[tq, tk]`` bool, True where key ``j`` is not in the future of query ``i``.

    The queries are the *last* ``tq`` positions of the ``tk`` keys (incremental decoding with a cache:
    query ``i`` sits at absolute position ``tk - tq + i``)."""
    i = torch.arange(tq, device=device)[:, None] + (tk - tq)
    j = torch.arange(tk, device=device)[None, :]
    return j <= i


def sliding_window_mask(tq: int, tk: int, window: int, causal: bool = True,
                        device: torch.device | None = None) -> torch.Tensor:
    """``[tq, tk]`` bool: key ``j`` is visible from query ``i`` when ``0 <= i - j < window`` (causal) or
    ``|i - j| < window`` (bidirectional); positions aligned at the end as in :func:`causal_mask`."""
    i = torch.arange(tq, device=device)[:, None] + (tk - tq)
    j = torch.arange(tk, device=device)[None, :]
    d = i - j
    return (d >= 0) & (d < window) if causal else d.abs() < window


def sparse_mask(t: int, block: int, summary: int = 1, causal: bool = True,
                device: torch.device | None = None) -> torch.Tensor:
    """``[t, t]`` bool mask of the fixed factorized pattern (Child et al. 2019, sec. 4.2): query ``i``
    sees the keys of its own block ``floor(i / block)`` and the last ``summary`` positions of every
    block (``j mod block >= block - summary``); with ``causal`` only keys ``j <= i``."""
    i = torch.arange(t, device=device)[:, None]
    j = torch.arange(t, device=device)[None, :]
    keep = (i // block == j // block) | (j % block >= block - summary)
    return keep & (j <= i) if causal else keep


def padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[B, Tk]`` (1/True = real token, 0/False = padding) -> ``[B, 1, 1, Tk]`` bool attention mask."""
    return attention_mask.bool()[:, None, None, :]


# ------------------------------------------------------------------------------ dot-product core
_LOW_PRECISION = (torch.bfloat16, torch.float16)
CPU_LOWP_MATH_MAX = 512 * 512
"""On CPU in bf16/fp16, ``backend="sdpa"`` runs the eager formula up to this many scores (Tq * Tk) per head."""

def _expand_kv(x: torch.Tensor, n_head: int) -> torch.Tensor:
    """Repeat each of the ``Hkv`` key/value heads ``n_head / Hkv`` times: ``[B, Hkv, T, D] -> [B, H, T, D]``."""
    hkv = x.shape[1]
    if hkv == n_head:
        return x
    return x.repeat_interleave(n_head // hkv, dim=1)


def _as_bias(mask: torch.Tensor | None, bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Fold a bool mask into an additive float bias. The most negative finite value (not -inf) keeps
    a row with no visible key finite (uniform weights) instead of NaN, as HF models do."""
    if mask is None:
        return bias
    neg = torch.zeros((), dtype=dtype, device=mask.device).masked_fill(torch.tensor(True), torch.finfo(dtype).min)
    m = torch.where(mask, torch.zeros((), dtype=dtype, device=mask.device), neg)
    return m if bias is None else bias.to(dtype) + m


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, mask: torch.Tensor | None = None,
              bias: torch.Tensor | None = None, causal: bool = False, dropout_p: float = 0.0,
              scale: float | None = None, backend: Backend = "sdpa",
              return_weights: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention (module docstring), with masks, bias, GQA and dropout.

    Shapes:
        q: ``[B, H, Tq, D]``; k, v: ``[B, Hkv, Tk, D]`` with ``H % Hkv == 0``;
        mask (bool, True = attend) and bias (float): broadcastable to ``[B, H, Tq, Tk]``;
        -> out ``[B, H, Tq, D]`` (and weights ``[B, H, Tq, Tk]`` with ``return_weights``, eager only).

    ``causal`` masks keys after each query (queries are the last ``Tq`` positions, see
    :func:`causal_mask`); it combines with ``mask`` and ``bias``.
    """
    h = q.shape[1]
    if h % k.shape[1]:
        raise ValueError(f"{h} query heads cannot share {k.shape[1]} key/value heads evenly")
    if return_weights and backend != "eager":
        raise ValueError("attention weights are only available from the eager backend")
    tq, tk = q.shape[-2], k.shape[-2]
    if backend == "sdpa" and q.device.type == "cpu" and q.dtype in _LOW_PRECISION and tq * tk <= CPU_LOWP_MATH_MAX:
        # PyTorch's fused CPU kernel is 1.3-5x slower than plain matmul + softmax in bf16 at these sizes
        # (measured on [128,4,50,16], [12,4,64,32] and [16,6,256,64], forward + backward); beyond this many
        # scores per head the fused kernel's O(T) memory matters more.
        backend = "eager"
    if backend == "sdpa":
        if causal and mask is None and bias is None and tq == tk:
            # the fast path: the kernel builds the triangle itself and can skip masked blocks
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, scale=scale,
                                                  enable_gqa=k.shape[1] != h)
        if causal:
            cm = causal_mask(tq, tk, q.device)
            mask = cm if mask is None else mask & cm
        attn_mask = mask if bias is None else _as_bias(mask, bias, q.dtype)
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            attn_mask = _as_bias(attn_mask, None, q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale,
                                              enable_gqa=k.shape[1] != h)
    if backend != "eager":
        raise ValueError(f"unknown attention backend {backend!r}; choose 'sdpa' or 'eager'")
    k, v = _expand_kv(k, h), _expand_kv(v, h)
    scores = torch.matmul(q, k.transpose(-2, -1)) * (scale if scale is not None else 1.0 / math.sqrt(q.shape[-1]))
    if causal:
        cm = causal_mask(tq, tk, q.device)
        mask = cm if mask is None else mask & cm
    add = _as_bias(mask, bias, scores.dtype)
    if add is not None:
        scores = scores + add
    weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    if dropout_p > 0.0:
        weights_d = F.dropout(weights, dropout_p)
    else:
        weights_d = weights
    out = torch.matmul(weights_d, v)
    return (out, weights) if return_weights else out


# ------------------------------------------------------------------------------------- variants
def sliding_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, *,
                             causal: bool = True, scale: float | None = None,
                             key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Local attention in O(T * window): queries are cut into blocks of ``window`` positions; block
    ``b`` can only see keys in blocks ``b - 1``, ``b`` (and ``b + 1`` when not causal), so each block
    attends to at most ``3 * window`` keys and the exact mask (:func:`sliding_window_mask`) is applied
    inside that band. Equals :func:`attention` with that mask.

    Shapes:
        q, k, v: ``[B, H, T, D]`` (self-attention, same T); key_mask: ``[B, T]`` bool or None -> ``[B, H, T, D]``
    """
    b, h, t, d = q.shape
    w = window
    if t <= w:  # the band covers everything up to the window: one masked dense call is cheaper than blocks
        mask = sliding_window_mask(t, t, w, causal, q.device)
        if key_mask is not None:
            mask = mask & padding_mask(key_mask)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=_as_bias(mask, None, q.dtype), scale=scale)
    nb = -(-t // w)
    pad = nb * w - t
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
    valid = torch.ones(b, nb * w, dtype=torch.bool, device=q.device)
    if pad:
        valid[:, t:] = False
    if key_mask is not None:
        valid[:, :t] &= key_mask.bool()
    qb = q.view(b, h, nb, w, d)
    offsets = [-1, 0] if causal else [-1, 0, 1]

    def shifted(x: torch.Tensor, off: int) -> torch.Tensor:
        # block b gets the contents of block b + off (zeros past either end)
        if off == 0:
            return x
        x = torch.roll(x, -off * w, dims=-2)
        if off < 0:
            x[..., : -off * w, :] = 0
        else:
            x[..., x.shape[-2] - off * w:, :] = 0
        return x

    ks = torch.cat([shifted(k, o).view(b, h, nb, w, d) for o in offsets], dim=3)  # [B,H,nb,len(off)*w,D]
    vs = torch.cat([shifted(v, o).view(b, h, nb, w, d) for o in offsets], dim=3)
    # exact positions of the keys each block sees, to build the band mask and the padding mask
    pos_q = torch.arange(nb * w, device=q.device).view(nb, w)
    pos_k = torch.cat([pos_q + o * w for o in offsets], dim=1)  # [nb, len(off)*w]
    diff = pos_q[:, :, None] - pos_k[:, None, :]
    band = (diff >= 0) & (diff < w) if causal else diff.abs() < w
    in_range = (pos_k >= 0) & (pos_k < nb * w)
    kvalid = torch.zeros(b, nb, pos_k.shape[1], dtype=torch.bool, device=q.device)
    kvalid[:, in_range] = valid[:, pos_k[in_range]]
    mask = band[None, None] & kvalid[:, None, :, None, :]  # [B,1,nb,w,K]
    out = F.scaled_dot_product_attention(qb, ks, vs, attn_mask=_as_bias(mask, None, q.dtype), scale=scale)
    return out.reshape(b, h, nb * w, d)[:, :, :t]


def sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: int, summary: int = 1, *,
                     causal: bool = True, scale: float | None = None) -> torch.Tensor:
    """Fixed factorized sparse attention (Child et al. 2019) without building the T x T matrix: block
    ``b`` of queries attends to its own block plus the ``summary`` last positions of all blocks (the
    pattern of :func:`sparse_mask`), one softmax over both sets. Cost O(T * (block + T * summary / block)).

    Shapes:
        q, k, v: ``[B, H, T, D]`` with ``T % block == 0`` -> ``[B, H, T, D]``
    """
    b, h, t, d = q.shape
    if t % block:
        raise ValueError(f"sparse attention needs T ({t}) to be a multiple of block ({block})")
    nb, c = t // block, summary
    qb, kb, vb = (x.view(b, h, nb, block, d) for x in (q, k, v))
    # keys: [own block (block)] + [summary columns of all blocks (nb * c)]
    k_sum = kb[:, :, :, block - c:, :].reshape(b, h, 1, nb * c, d).expand(b, h, nb, nb * c, d)
    v_sum = vb[:, :, :, block - c:, :].reshape(b, h, 1, nb * c, d).expand(b, h, nb, nb * c, d)
    ks, vs = torch.cat([kb, k_sum], dim=3), torch.cat([vb, v_sum], dim=3)
    i = torch.arange(t, device=q.device).view(nb, block)                     # query positions per block
    j_own = i                                                               # own-block key positions
    j_sum = (torch.arange(nb, device=q.device)[:, None] * block + torch.arange(block - c, block, device=q.device))
    j_sum = j_sum.reshape(1, nb * c).expand(nb, nb * c)
    own_block = (j_sum // block) == torch.arange(nb, device=q.device)[:, None]
    # a summary column inside the query's own block is already among the own-block keys: drop the copy
    keep_sum = ~own_block[:, None, :]
    keep_own = torch.ones(nb, block, block, dtype=torch.bool, device=q.device)
    if causal:
        keep_own = j_own[:, None, :] <= i[:, :, None]
        keep_sum = keep_sum & (j_sum[:, None, :] <= i[:, :, None])
    else:
        keep_sum = keep_sum.expand(nb, block, nb * c)
    mask = torch.cat([keep_own, keep_sum], dim=2)  # [nb, block, block + nb*c]
    out = F.scaled_dot_product_attention(qb, ks, vs, attn_mask=_as_bias(mask, None, q.dtype), scale=scale)
    return out.reshape(b, h, t, d)


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """phi(x) = elu(x) + 1 > 0 (Katharopoulos et al. 2020, eq. 7)."""
    return F.elu(x) + 1.0


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                     eps: float = 1e-6, key_mask: torch.Tensor | None = None, chunk: int = 128) -> torch.Tensor:
    """Linear attention (Katharopoulos et al. 2020, eq. 4-9) with ``phi = elu + 1``:

        out_i = phi(q_i)^T S_i / (phi(q_i)^T z_i),   S_i = sum_j phi(k_j) v_j^T,   z_i = sum_j phi(k_j)

    where the sums run over all keys, or over ``j <= i`` when ``causal``. Non-causal cost is
    O(T * D^2); the causal prefix sums are computed chunk by chunk (quadratic only inside a chunk of
    ``chunk`` positions, a running ``D x D`` state between chunks), so memory stays O(T * D).

    Shapes:
        q, k: ``[B, H, T, D]``; v: ``[B, H, T, Dv]``; key_mask: ``[B, T]`` bool -> ``[B, H, T, Dv]``
    """
    fq, fk = elu_feature_map(q), elu_feature_map(k)
    if key_mask is not None:
        fk = fk * key_mask[:, None, :, None].to(fk.dtype)
    if not causal:
        s = torch.einsum("bhtd,bhte->bhde", fk, v)
        z = fk.sum(dim=2)
        num = torch.einsum("bhtd,bhde->bhte", fq, s)
        den = torch.einsum("bhtd,bhd->bht", fq, z)
        return num / (den[..., None] + eps)
    b, h, t, d = q.shape
    s = q.new_zeros(b, h, d, v.shape[-1])
    z = q.new_zeros(b, h, d)
    outs = []
    for start in range(0, t, chunk):
        cq, ck, cv = fq[:, :, start:start + chunk], fk[:, :, start:start + chunk], v[:, :, start:start + chunk]
        n = cq.shape[2]
        tri = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
        a = torch.matmul(cq, ck.transpose(-2, -1)).masked_fill(~tri, 0.0)   # within-chunk kernel
        num = torch.matmul(a, cv) + torch.matmul(cq, s)
        den = a.sum(-1) + torch.einsum("bhtd,bhd->bht", cq, z)
        outs.append(num / (den[..., None] + eps))
        s = s + torch.matmul(ck.transpose(-2, -1), cv)
        z = z + ck.sum(dim=2)
    return torch.cat(outs, dim=2)


def linear_attention_quadratic(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                               eps: float = 1e-6) -> torch.Tensor:
    """The same quantity as :func:`linear_attention` computed as an explicit T x T kernel matrix
    (the reference the O(T) form is tested against)."""
    a = torch.matmul(elu_feature_map(q), elu_feature_map(k).transpose(-2, -1))
    if causal:
        a = a * causal_mask(q.shape[2], k.shape[2], q.device)
    return torch.matmul(a, v) / (a.sum(-1, keepdim=True) + eps)


# --------------------------------------------------------------------------- RNN-style scorers
class AdditiveAttention(nn.Module):
    """Bahdanau et al. 2015 (eq. 6, appendix A.1.2): ``e_ij = v^T tanh(W s_i + U h_j)``,
    ``a_ij = softmax_j(e_ij)``, context ``c_i = sum_j a_ij h_j``.

    Shapes:
        query s: ``[B, Tq, Dq]`` (or ``[B, Dq]``); keys h: ``[B, Tk, Dk]``; mask: ``[B, Tk]`` bool
        -> context ``[B, Tq, Dk]`` (or ``[B, Dk]``), weights ``[B, Tq, Tk]`` (or ``[B, Tk]``)
    """

    def __init__(self, d_query: int, d_key: int, d_attn: int) -> None:
        super().__init__()
        self.w_query = nn.Linear(d_query, d_attn, bias=False)
        self.w_key = nn.Linear(d_key, d_attn)
        self.v = nn.Linear(d_attn, 1, bias=False)

    def project_keys(self, keys: torch.Tensor) -> torch.Tensor:
        """``U h_j``: independent of the decoder step, so decoders compute it once per sequence."""
        return self.w_key(keys)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor | None = None,
                projected_keys: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        single = query.dim() == 2
        if single:
            query = query[:, None]
        uk = self.project_keys(keys) if projected_keys is None else projected_keys
        scores = self.v(torch.tanh(self.w_query(query)[:, :, None, :] + uk[:, None, :, :])).squeeze(-1)
        return _finish(scores, keys, mask, single)


class MultiplicativeAttention(nn.Module):
    """Luong et al. 2015 "general" score: ``e_ij = s_i^T W h_j``; softmax and context as in
    :class:`AdditiveAttention` (same shapes)."""

    def __init__(self, d_query: int, d_key: int) -> None:
        super().__init__()
        self.w = nn.Linear(d_key, d_query, bias=False)

    def forward(self, query: torch.Tensor, keys: torch.Tensor,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        single = query.dim() == 2
        if single:
            query = query[:, None]
        scores = torch.matmul(query, self.w(keys).transpose(1, 2))
        return _finish(scores, keys, mask, single)


def _finish(scores: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor | None,
            single: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if mask is not None:
        scores = scores.masked_fill(~mask.bool()[:, None, :], torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1)
    context = torch.matmul(weights, keys)
    return (context[:, 0], weights[:, 0]) if single else (context, weights)


# ------------------------------------------------------------------------------------- KV cache
class KVCache:
    """Keys and values of the positions decoded so far, for one attention layer.

    Buffers are allocated once for ``max_len`` positions and filled in place, so a decoding step costs
    no reallocation or concatenation of the whole history.

    Shapes:
        k, v buffers: ``[B, Hkv, max_len, D]``; ``length`` positions are filled.
    """

    def __init__(self, batch: int, n_kv_head: int, head_dim: int, max_len: int, *,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        # zeros, not empty: a reader that masks the unfilled tail (a compiled decoding step reads the whole
        # buffer) multiplies it by zero weights, and uninitialized memory may hold NaN
        self.k = torch.zeros(batch, n_kv_head, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new positions; return keys and values of every position so far."""
        n = k.shape[2]
        if self.length + n > self.max_len:
            raise ValueError(f"KV cache full: {self.length} + {n} positions > max_len {self.max_len}")
        self.k[:, :, self.length:self.length + n] = k
        self.v[:, :, self.length:self.length + n] = v
        self.length += n
        return self.k[:, :, :self.length], self.v[:, :, :self.length]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows ``index`` (beam search re-ranks hypotheses every step)."""
        self.k = self.k.index_select(0, index)
        self.v = self.v.index_select(0, index)


# ------------------------------------------------------------------------------- multi-head module
@dataclass
class AttentionOptions:
    """How a :class:`MultiHeadAttention` computes its scores (the variant knobs)."""

    kind: AttentionKind = "dot"
    """dot (full, scaled dot product) | local (sliding window) | sparse (fixed pattern) | linear"""
    backend: Backend = "sdpa"
    """sdpa (fused kernel) | eager (reference; can return the weights) -- for kind = dot"""
    window: int = 256
    """local: keys visible to a query, itself included"""
    block: int = 64
    """sparse: block length"""
    summary: int = 8
    """sparse: summary positions at the end of every block"""


class MultiHeadAttention(nn.Module):
    """Multi-head (grouped-query) attention: ``MHA(x) = W_o concat_h Attn(x W_q^h, m W_k^h, m W_v^h)``
    with ``m = x`` (self-attention) or the encoder memory (cross-attention).

    Parameters: self-attention keeps Q, K and V in one fused projection ``qkv`` (one matmul);
    cross-attention has ``q`` on the queries and a fused ``kv`` on the memory; ``out`` maps back.
    With ``rotary`` the queries and keys are rotated by position (RoFormer) before the dot product.

    Shapes:
        x: ``[B, Tq, d_model]``; memory: ``[B, Tk, d_memory]``;
        mask: bool broadcastable to ``[B, H, Tq, Tk]`` (see :func:`padding_mask`); bias: float, same;
        -> ``[B, Tq, d_model]`` (and weights ``[B, H, Tq, Tk]`` with ``need_weights``)
    """

    def __init__(self, d_model: int, n_head: int, *, n_kv_head: int | None = None, head_dim: int | None = None,
                 cross: bool = False, d_memory: int | None = None, bias: bool = True, out_bias: bool | None = None,
                 dropout: float = 0.0, scale: float | None = None, options: AttentionOptions | None = None,
                 rotary: nn.Module | None = None) -> None:
        super().__init__()
        self.n_head = n_head
        self.n_kv_head = n_kv_head or n_head
        if n_head % self.n_kv_head:
            raise ValueError(f"n_head ({n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        if head_dim is None and d_model % n_head:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_head ({n_head})")
        self.head_dim = head_dim or d_model // n_head
        self.cross = cross
        self.scale = scale
        self.dropout = dropout
        self.options = options or AttentionOptions()
        self.rotary = rotary
        inner, inner_kv = n_head * self.head_dim, self.n_kv_head * self.head_dim
        if cross:
            self.q = nn.Linear(d_model, inner, bias=bias)
            self.kv = nn.Linear(d_memory or d_model, 2 * inner_kv, bias=bias)
        else:
            self.qkv = nn.Linear(d_model, inner + 2 * inner_kv, bias=bias)
        self.out = nn.Linear(inner, d_model, bias=bias if out_bias is None else out_bias)

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, n, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None = None, *, mask: torch.Tensor | None = None,
                bias: torch.Tensor | None = None, causal: bool = False, cache: KVCache | None = None,
                need_weights: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        b, tq, _ = x.shape
        inner, inner_kv = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        if self.cross:
            if memory is None:
                raise ValueError("cross-attention needs the encoder memory")
            q = self._heads(self.q(x), self.n_head)
            if cache is not None and cache.length:      # memory keys/values were computed at the first step
                k, v = cache.k[:, :, :cache.length], cache.v[:, :, :cache.length]
            else:
                k, v = (self._heads(t, self.n_kv_head) for t in self.kv(memory).split(inner_kv, dim=-1))
                if cache is not None:
                    k, v = cache.append(k, v)
        else:
            q, k, v = self.qkv(x).split([inner, inner_kv, inner_kv], dim=-1)
            q, k, v = self._heads(q, self.n_head), self._heads(k, self.n_kv_head), self._heads(v, self.n_kv_head)
            if self.rotary is not None:
                offset = cache.length if cache is not None else 0
                q, k = self.rotary(q, k, offset)
            if cache is not None:
                k, v = cache.append(k, v)
        p = self.dropout if self.training else 0.0
        kind = self.options.kind
        weights = None
        if kind == "dot" or need_weights:
            backend = "eager" if need_weights else self.options.backend
            res = attention(q, k, v, mask=mask, bias=bias, causal=causal, dropout_p=p, scale=self.scale,
                            backend=backend, return_weights=need_weights)
            out, weights = res if need_weights else (res, None)
        else:
            if self.cross or cache is not None or bias is not None:
                raise ValueError(f"{kind} attention supports self-attention without cache or bias only")
            key_mask = None
            if mask is not None:
                if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[2] != 1:
                    raise ValueError(f"{kind} attention accepts a key padding mask [B, 1, 1, T] only")
                key_mask = mask[:, 0, 0]
            k, v = _expand_kv(k, self.n_head), _expand_kv(v, self.n_head)
            if kind == "local":
                out = sliding_window_attention(q, k, v, self.options.window, causal=causal, scale=self.scale,
                                               key_mask=key_mask)
            elif kind == "sparse":
                if key_mask is not None:
                    raise ValueError("sparse attention does not take a padding mask")
                out = sparse_attention(q, k, v, self.options.block, self.options.summary, causal=causal,
                                       scale=self.scale)
            elif kind == "linear":
                out = linear_attention(q, k, v, causal=causal, key_mask=key_mask)
            else:
                raise ValueError(f"unknown attention kind {kind!r}; choose dot, local, sparse or linear")
        out = self.out(out.transpose(1, 2).reshape(b, tq, inner))
        return (out, weights) if need_weights else out
