"""Attention backends and variants against the eager reference; positional encodings; the shared layer."""

from __future__ import annotations

import math

import pytest
import torch

from archlab.nn.attention import (
    AdditiveAttention,
    AttentionOptions,
    KVCache,
    MultiHeadAttention,
    MultiplicativeAttention,
    attention,
    causal_mask,
    linear_attention,
    linear_attention_quadratic,
    padding_mask,
    sliding_window_attention,
    sliding_window_mask,
    sparse_attention,
    sparse_mask,
)
from archlab.nn.positional import (
    LearnedPositionalEmbedding,
    RelativePositionBias,
    RotaryEmbedding,
    SinusoidalEncoding,
    relative_position_bucket,
    sinusoidal_table,
)
from archlab.nn.transformer import TransformerLayer


def qkv(b=2, h=4, t=12, d=8, hkv=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, t, d, generator=g), torch.randn(b, hkv or h, t, d, generator=g),
            torch.randn(b, hkv or h, t, d, generator=g))


def naive(q, k, v, keep=None, bias=None, scale=None):
    """Textbook attention, written independently of archlab's eager path."""
    h = q.shape[1]
    k = k.repeat_interleave(h // k.shape[1], 1)
    v = v.repeat_interleave(h // v.shape[1], 1)
    s = q @ k.transpose(-1, -2) * (scale if scale is not None else 1 / math.sqrt(q.shape[-1]))
    if bias is not None:
        s = s + bias
    if keep is not None:
        s = s.masked_fill(~keep, float("-inf"))
    return torch.softmax(s, -1) @ v


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
@pytest.mark.parametrize("hkv", [4, 2, 1])
def test_backends_equal_reference(backend, hkv):
    q, k, v = qkv(hkv=hkv)
    pad = torch.ones(2, 12, dtype=torch.bool)
    pad[1, 8:] = False
    bias = torch.randn(1, 4, 12, 12)
    cases = [
        ({}, None, None),
        ({"causal": True}, causal_mask(12, 12), None),
        ({"mask": padding_mask(pad)}, padding_mask(pad), None),
        ({"mask": padding_mask(pad), "causal": True}, padding_mask(pad) & causal_mask(12, 12), None),
        ({"bias": bias, "mask": padding_mask(pad)}, padding_mask(pad), bias),
        ({"scale": 1.0}, None, None),
    ]
    for kwargs, keep, b in cases:
        out = attention(q, k, v, backend=backend, **kwargs)
        ref = naive(q, k, v, keep, b, kwargs.get("scale"))
        assert (out - ref).abs().max() <= 1e-5, kwargs


def test_eager_returns_weights_and_sdpa_refuses():
    q, k, v = qkv()
    out, w = attention(q, k, v, causal=True, backend="eager", return_weights=True)
    assert torch.allclose(w.sum(-1), torch.ones(2, 4, 12), atol=1e-6)
    assert (w.triu(1) == 0).all()
    with pytest.raises(ValueError, match="eager"):
        attention(q, k, v, return_weights=True)


def test_causal_with_cache_offset():
    """Queries that are the last positions of the keys see exactly the keys up to themselves."""
    q, k, v = qkv()
    full = attention(q, k, v, causal=True)
    tail = attention(q[:, :, -3:], k, v, causal=True)
    assert (full[:, :, -3:] - tail).abs().max() <= 1e-5


def test_changing_future_tokens_leaves_past_unchanged():
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4).eval()
    x = torch.randn(2, 10, 32)
    y = x.clone()
    y[:, 6:] = torch.randn(2, 4, 32)
    a, b = mha(x, causal=True), mha(y, causal=True)
    assert (a[:, :6] - b[:, :6]).abs().max() <= 1e-6
    assert (a[:, 6:] - b[:, 6:]).abs().max() > 1e-3


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("t,window", [(12, 3), (13, 4), (8, 8), (5, 16)])
def test_sliding_window_equals_masked_dense(causal, t, window):
    q, k, v = qkv(t=t)
    out = sliding_window_attention(q, k, v, window, causal=causal)
    ref = naive(q, k, v, sliding_window_mask(t, t, window, causal=causal))
    assert (out - ref).abs().max() <= 1e-5


def test_sliding_window_with_padding():
    q, k, v = qkv(t=10)
    keep = torch.ones(2, 10, dtype=torch.bool)
    keep[0, 7:] = False
    out = sliding_window_attention(q, k, v, 4, causal=False, key_mask=keep)
    ref = naive(q, k, v, sliding_window_mask(10, 10, 4, causal=False) & padding_mask(keep))
    assert (out - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("block,summary", [(4, 1), (4, 2), (6, 3)])
def test_sparse_equals_masked_dense(causal, block, summary):
    q, k, v = qkv(t=24)
    out = sparse_attention(q, k, v, block, summary, causal=causal)
    ref = naive(q, k, v, sparse_mask(24, block, summary, causal=causal))
    assert (out - ref).abs().max() <= 1e-5


def test_sparse_mask_pattern():
    m = sparse_mask(8, 4, 1, causal=True)
    # query 6 (block 1) sees 4, 5, 6 of its own block and summary column 3 of block 0
    assert m[6].nonzero().flatten().tolist() == [3, 4, 5, 6]
    assert m.sum() < causal_mask(8, 8).sum()


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("chunk", [3, 5, 128])
def test_linear_attention_equals_quadratic_form(causal, chunk):
    q, k, v = qkv(t=13)
    out = linear_attention(q, k, v, causal=causal, chunk=chunk)
    ref = linear_attention_quadratic(q, k, v, causal=causal)
    assert (out - ref).abs().max() <= 1e-5


def test_linear_attention_is_causal():
    q, k, v = qkv(t=10)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 7:] += 1.0
    v2[:, :, 7:] -= 2.0
    a = linear_attention(q, k, v, causal=True, chunk=4)
    b = linear_attention(q, k2, v2, causal=True, chunk=4)
    assert (a[:, :, :7] - b[:, :, :7]).abs().max() <= 1e-6


@pytest.mark.parametrize("kind", ["local", "sparse", "linear"])
def test_mha_variants_are_causal(kind):
    torch.manual_seed(0)
    opts = AttentionOptions(kind=kind, window=4, block=4, summary=1)
    mha = MultiHeadAttention(16, 2, options=opts).eval()
    x = torch.randn(2, 12, 16)
    y = x.clone()
    y[:, 8:] = 0.0
    a, b = mha(x, causal=True), mha(y, causal=True)
    assert (a[:, :8] - b[:, :8]).abs().max() <= 1e-6


def test_mha_local_equals_dot_with_window_mask():
    torch.manual_seed(0)
    local = MultiHeadAttention(16, 2, options=AttentionOptions(kind="local", window=3)).eval()
    dot = MultiHeadAttention(16, 2).eval()
    dot.load_state_dict(local.state_dict())
    x = torch.randn(2, 9, 16)
    ref = dot(x, mask=sliding_window_mask(9, 9, 3))
    assert (local(x, causal=True) - ref).abs().max() <= 1e-5


def test_kv_cache_incremental_equals_full():
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4, n_kv_head=2, rotary=RotaryEmbedding(8)).eval()
    x = torch.randn(2, 9, 32)
    full = mha(x, causal=True)
    cache = KVCache(2, 2, 8, max_len=9)
    steps = [mha(x[:, :5], causal=True, cache=cache)]
    steps += [mha(x[:, i:i + 1], causal=True, cache=cache) for i in range(5, 9)]
    assert (torch.cat(steps, 1) - full).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="full"):
        cache.append(torch.zeros(2, 2, 1, 8), torch.zeros(2, 2, 1, 8))


def test_cross_attention_cache_reuses_memory():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 2, cross=True, d_memory=24).eval()
    x, mem = torch.randn(2, 3, 16), torch.randn(2, 7, 24)
    keep = torch.ones(2, 7, dtype=torch.bool)
    keep[1, 5:] = False
    full = mha(x, mem, mask=padding_mask(keep))
    cache = KVCache(2, 2, 8, max_len=7)
    parts = [mha(x[:, i:i + 1], mem, mask=padding_mask(keep), cache=cache) for i in range(3)]
    assert cache.length == 7
    assert (torch.cat(parts, 1) - full).abs().max() <= 1e-6


def test_gqa_and_mqa_shapes_and_reference():
    torch.manual_seed(0)
    for hkv in (1, 2, 4):
        mha = MultiHeadAttention(32, 4, n_kv_head=hkv).eval()
        assert mha.qkv.out_features == 32 + 2 * 8 * hkv
        x = torch.randn(2, 5, 32)
        a = mha(x, causal=True)
        mha.options.backend = "eager"
        assert (a - mha(x, causal=True)).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="multiple"):
        MultiHeadAttention(32, 4, n_kv_head=3)


def test_additive_and_multiplicative_attention():
    torch.manual_seed(0)
    keys = torch.randn(2, 6, 10)
    keep = torch.ones(2, 6, dtype=torch.bool)
    keep[0, 4:] = False
    add = AdditiveAttention(8, 10, 12)
    s = torch.randn(2, 8)
    ctx, w = add(s, keys, keep)
    assert ctx.shape == (2, 10) and w.shape == (2, 6)
    assert torch.allclose(w.sum(-1), torch.ones(2)) and (w[0, 4:] == 0).all()
    # e_j = v^T tanh(W s + U h_j), written out
    e = (torch.tanh(s @ add.w_query.weight.T + (keys @ add.w_key.weight.T + add.w_key.bias)[:, :, :]
                    .transpose(0, 1)).transpose(0, 1) @ add.v.weight.T).squeeze(-1)
    e = e.masked_fill(~keep, float("-inf"))
    assert torch.allclose(w, torch.softmax(e, -1), atol=1e-6)
    mul = MultiplicativeAttention(8, 10)
    ctx, w = mul(torch.randn(2, 3, 8), keys, keep)
    assert ctx.shape == (2, 3, 10) and torch.allclose(w.sum(-1), torch.ones(2, 3))


def test_sinusoidal_table_matches_formula():
    t = sinusoidal_table(50, 16)
    p, i = 17, 3
    assert abs(t[p, 2 * i] - math.sin(p / 10000 ** (2 * i / 16))) < 1e-5
    assert abs(t[p, 2 * i + 1] - math.cos(p / 10000 ** (2 * i / 16))) < 1e-5
    x = torch.zeros(1, 5, 16)
    assert torch.equal(SinusoidalEncoding(16)(x, offset=2)[0], sinusoidal_table(4096, 16)[2:7])
    learned = LearnedPositionalEmbedding(8, 4)
    with pytest.raises(ValueError, match="longer"):
        learned(torch.zeros(1, 9, 4))


def test_rotary_depends_on_relative_position_only():
    rope = RotaryEmbedding(8)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(m, n):
        qm, _ = rope(q, q, offset=m)
        _, kn = rope(k, k, offset=n)
        return float((qm * kn).sum())

    assert abs(score(3, 1) - score(10, 8)) < 1e-4
    assert abs(score(3, 1) - score(3, 2)) > 1e-4
    qr, _ = rope(q, k, offset=5)  # a rotation keeps the norm
    assert torch.allclose(qr.norm(), q.norm(), atol=1e-5)


def test_t5_relative_buckets():
    rel = torch.arange(-200, 201)
    b = relative_position_bucket(rel, bidirectional=True, num_buckets=32, max_distance=128)
    assert b.min() >= 0 and b.max() <= 31
    assert b[200] == 0                       # distance 0
    assert b[201] == 16 + 1 and b[199] == 1  # exact buckets next to the query, by direction
    assert b[-1] == 31 and b[0] == 15        # beyond max_distance: the last bucket of each direction
    causal = relative_position_bucket(rel, bidirectional=False, num_buckets=32, max_distance=128)
    assert (causal[201:] == 0).all()         # future keys all share bucket 0 in the decoder
    bias = RelativePositionBias(4, 32, 128)(5, 7)
    assert bias.shape == (1, 4, 5, 7)


@pytest.mark.parametrize("norm_first", [True, False])
def test_transformer_layer_pre_and_post_norm(norm_first):
    torch.manual_seed(0)
    layer = TransformerLayer(16, 2, 32, norm_first=norm_first, cross_attention=True, d_memory=8).eval()
    x, mem = torch.randn(2, 5, 16), torch.randn(2, 4, 8)
    out, w = layer(x, causal=True, memory=mem, need_weights=True)
    assert out.shape == x.shape and w.shape == (2, 2, 5, 5)
    # the same computation written out
    def sub(h, fn, norm):
        return h + fn(norm(h)) if norm_first else norm(h + fn(h))
    h = sub(x, lambda z: layer.attn(z, causal=True), layer.norm1)
    h = sub(h, lambda z: layer.cross_attn(z, mem), layer.norm_cross)
    h = sub(h, layer.ffn, layer.norm2)
    assert (out - h).abs().max() <= 1e-6


def test_cpu_bf16_short_sequences_take_the_math_path_with_same_result():
    q, k, v = (t.bfloat16() for t in qkv())
    fused = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    out = attention(q, k, v, causal=True)
    assert (out.float() - fused.float()).abs().max() <= 2e-2  # bf16 rounding only
    assert (out.float() - naive(*(t.float() for t in (q, k, v)), causal_mask(12, 12))).abs().max() <= 2e-2
