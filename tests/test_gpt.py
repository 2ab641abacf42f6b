"""GPT: equal to Hugging Face GPT-2 (weights in and out), causal, KV-cache generation, sampling filters."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import archlab
from archlab.models.transformers import gpt_decode
from archlab.models.transformers.gpt import GPT, GPTConfig, filter_logits

TINY = dict(vocab_size=97, block_size=32, n_layer=2, n_head=4, n_embd=32)


pytestmark = pytest.mark.usefixtures("single_thread")


def _tiny(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return archlab.create("gpt", **{**TINY, **overrides}).eval()


def _hf_gpt2(seed: int = 0, head: bool = True, **overrides):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    kw = dict(vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
              attn_pdrop=0.0, bos_token_id=None, eos_token_id=None, **overrides)
    cfg = transformers.GPT2Config(**kw, attn_implementation="eager")
    cls = transformers.GPT2LMHeadModel if head else transformers.GPT2Model
    return cls(cfg).eval()


def _right_padded(batch: int = 3, t: int = 12, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 97, (batch, t), generator=g)
    mask = torch.ones(batch, t, dtype=torch.long)
    mask[1, 8:] = 0
    mask[2, 3:] = 0
    return ids, mask


def _naive_greedy(model: GPT, ids: torch.Tensor, n: int) -> torch.Tensor:
    """Reference: recompute the (cropped) prefix for every new token, no cache."""
    out = ids
    for _ in range(n):
        logits = model(out[:, -model.config.block_size:])[:, -1]
        out = torch.cat([out, logits.argmax(-1, keepdim=True)], dim=1)
    return out


# ------------------------------------------------------------------------------ Hugging Face
UNTIED_RELU = {"tie_word_embeddings": False, "n_inner": 48, "activation_function": "relu"}


@pytest.mark.parametrize("overrides", [{}, UNTIED_RELU], ids=["tied", "untied_relu"])
def test_from_hf_equals_hf_with_padding(tmp_path, overrides):
    hf = _hf_gpt2(**overrides)
    hf.save_pretrained(tmp_path)
    model = archlab.from_hf(tmp_path)
    assert isinstance(model, GPT) and model.config.tie_weights == overrides.get("tie_word_embeddings", True)
    ids, mask = _right_padded()
    real = mask.bool()
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask)
        ref_hidden = hf.transformer(ids, attention_mask=mask).last_hidden_state
        logits = model(ids, attention_mask=mask)
        hidden = model.hidden_states(ids, attention_mask=mask)
    assert (logits - ref.logits)[real].abs().max() <= 1e-4
    assert (hidden - ref_hidden)[real].abs().max() <= 1e-4
    # without a mask, every position agrees
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max() <= 1e-4


def test_save_hf_round_trip(tmp_path):
    transformers = pytest.importorskip("transformers")
    model = _tiny(n_inner=40)
    model.save_hf(tmp_path)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids, mask = _right_padded()
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max() <= 1e-4
        assert (model(ids, mask) - hf(ids, attention_mask=mask).logits)[mask.bool()].abs().max() <= 1e-4
    # and back again, bit for bit
    again = archlab.from_hf(tmp_path)
    assert again.config == model.config
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())


def test_untied_round_trip_writes_lm_head(tmp_path):
    model = _tiny(tie_weights=False)
    model.save_hf(tmp_path)
    assert "lm_head.weight" in load_file(tmp_path / "model.safetensors")
    again = archlab.from_hf(tmp_path)
    ids = torch.randint(0, 97, (2, 10))
    with torch.no_grad():
        assert torch.equal(model(ids), again(ids))


def test_from_hf_gpt2model_directory(tmp_path):
    hf = _hf_gpt2(head=False)
    hf.save_pretrained(tmp_path)
    assert not any(k.startswith("transformer.") for k in load_file(tmp_path / "model.safetensors"))
    model = archlab.from_hf(tmp_path)
    ids, mask = _right_padded()
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask).last_hidden_state
        assert (model.hidden_states(ids, mask) - ref)[mask.bool()].abs().max() <= 1e-4


def test_from_hf_old_checkpoint_with_mask_buffers_and_tied_head(tmp_path):
    """Old GPT-2 files store the causal-mask buffers and a copy of the tied head: both are ignored."""
    hf = _hf_gpt2()
    hf.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    for i in range(2):
        state[f"transformer.h.{i}.attn.bias"] = torch.ones(1, 1, 32, 32).tril()
        state[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    state["lm_head.weight"] = state["transformer.wte.weight"].clone()
    save_file(state, tmp_path / "model.safetensors")
    model = archlab.from_hf(tmp_path)
    ids = torch.randint(0, 97, (2, 10))
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max() <= 1e-4


def test_pickled_weights_are_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 32, "n_layer": 2,
                                                      "n_head": 4, "vocab_size": 97, "n_positions": 32}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(archlab.ArchlabError, match="safetensors"):
        archlab.from_hf(tmp_path)


@pytest.mark.parametrize("overrides", [{"positional": "rotary"}, {"n_kv_head": 2}, {"attn_kind": "local"},
                                       {"bias": False}])
def test_configs_without_gpt2_equivalent_are_refused(tmp_path, overrides):
    with pytest.raises(archlab.ArchlabError, match="no Hugging Face GPT-2 equivalent"):
        _tiny(**overrides).save_hf(tmp_path)


def test_greedy_generate_equals_hf(tmp_path):
    hf = _hf_gpt2()
    hf.save_pretrained(tmp_path)
    model = archlab.from_hf(tmp_path)
    ids = torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(3))
    ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                      pad_token_id=0)
    assert torch.equal(model.generate(ids, 12, temperature=0.0), ref)


# ------------------------------------------------------------------------------------ causality
VARIANTS = {"dot": {}, "eager": {"attn_backend": "eager"}, "gqa": {"n_kv_head": 2}, "mqa": {"n_kv_head": 1},
            "rotary": {"positional": "rotary"}, "local": {"attn_kind": "local", "window": 4},
            "sparse": {"attn_kind": "sparse", "sparse_block": 8, "sparse_summary": 2},
            "linear": {"attn_kind": "linear"}, "untied_nobias": {"tie_weights": False, "bias": False}}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variants_are_causal(name):
    model = _tiny(**VARIANTS[name])
    ids = torch.randint(0, 97, (2, 20))  # 20 is not a multiple of the sparse block: padded inside
    changed = ids.clone()
    changed[:, 11:] = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert a.shape == (2, 20, 97) and torch.isfinite(a).all()
    assert (a[:, :11] - b[:, :11]).abs().max() <= 1e-5
    assert (a[:, 11:] - b[:, 11:]).abs().max() > 1e-3


def test_too_long_input_is_refused():
    with pytest.raises(ValueError, match="block_size"):
        _tiny()(torch.zeros(1, 33, dtype=torch.long))


# ------------------------------------------------------------------------------------ KV cache
@pytest.mark.parametrize("name", ["dot", "gqa", "rotary"])
def test_cached_logits_equal_full_forward(name):
    model = _tiny(**VARIANTS[name])
    ids = torch.randint(0, 97, (2, 14))
    caches = model.new_caches(2, 14)
    with torch.no_grad():
        full = model(ids)
        steps = [model(ids[:, :6], caches=caches)] + [model(ids[:, i:i + 1], caches=caches) for i in range(6, 14)]
    assert caches[0].length == 14
    assert (torch.cat(steps, dim=1) - full).abs().max() <= 1e-5


def test_cached_logits_with_padding_mask_equal_full_forward():
    model = _tiny()
    ids, mask = _right_padded(t=10)
    caches = model.new_caches(3, 10)
    with torch.no_grad():
        full = model(ids, mask)
        first = model(ids[:, :7], mask[:, :7], caches=caches)
        rest = model(ids[:, 7:], mask, caches=caches)
    assert (torch.cat([first, rest], dim=1) - full)[mask.bool()].abs().max() <= 1e-5


@pytest.mark.parametrize("name", ["dot", "gqa", "rotary", "local"])
def test_cached_greedy_generation_equals_recomputation(name):
    model = _tiny(**VARIANTS[name])
    ids = torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(4))
    # 5 + 40 > block_size 32: the last steps crop the context and recompute
    out = model.generate(ids, 40, temperature=0.0)
    assert out.shape == (2, 45) and torch.equal(out[:, :5], ids)
    assert torch.equal(out, _naive_greedy(model, ids, 40))


@pytest.mark.parametrize("name", ["dot", "eager", "gqa", "mqa", "rotary", "untied_nobias", "relu"])
def test_one_token_decode_step_equals_cached_forward(name):
    # generate() feeds each new token through gpt_decode.decode_step (transposed weight copies, fewer calls)
    model = _tiny(**({"activation": "relu", "n_inner": 48} if name == "relu" else VARIANTS[name]))
    ids = torch.randint(0, 97, (3, 12), generator=torch.Generator().manual_seed(6))
    slow, fast = model.new_caches(3, 12), model.new_caches(3, 12)
    weights = gpt_decode.decode_weights(model)
    assert gpt_decode.supported(model)
    with torch.no_grad():
        model.hidden_states(ids[:, :5], caches=slow)
        model.hidden_states(ids[:, :5], caches=fast)
        for i in range(5, 12):
            want = model.hidden_states(ids[:, i:i + 1], caches=slow)[:, -1]
            got = gpt_decode.decode_step(model, ids[:, i], fast, weights)
            assert (got - want).abs().max() <= 1e-5
    assert fast[0].length == slow[0].length == 12
    for f, s in zip(fast, slow, strict=True):
        assert torch.allclose(f.k, s.k, atol=1e-6) and torch.allclose(f.v, s.v, atol=1e-6)


@pytest.mark.parametrize("name", ["dot", "gqa", "rotary", "untied_nobias"])
def test_generate_fast_path_equals_reference(name):
    # generate(fast=False) is the reference (every token through hidden_states); the default fast step must
    # give the same greedy tokens and, with a seeded generator, the same samples
    model = _tiny(**VARIANTS[name])
    ids = torch.randint(0, 97, (2, 4), generator=torch.Generator().manual_seed(12))
    assert torch.equal(model.generate(ids, 20, temperature=0.0, fast=False), model.generate(ids, 20, temperature=0.0))
    a = model.generate(ids, 20, temperature=1.0, generator=torch.Generator().manual_seed(3), fast=False)
    b = model.generate(ids, 20, temperature=1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_decode_step_under_bf16_autocast_matches_cached_forward():
    model = _tiny()
    ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(7))
    slow, fast = (model.new_caches(2, 9, dtype=torch.bfloat16) for _ in range(2))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model.hidden_states(ids[:, :8], caches=slow)
        model.hidden_states(ids[:, :8], caches=fast)
        want = model.hidden_states(ids[:, 8:], caches=slow)[:, -1]
        got = gpt_decode.decode_step(model, ids[:, 8], fast, gpt_decode.decode_weights(model))
        out = model.generate(ids, 6, temperature=0.0)
    assert got.dtype == want.dtype and (got - want).float().abs().max() <= 2e-2
    assert out.shape == (2, 15) and torch.equal(out[:, :9], ids)


def _has_cxx() -> bool:
    import shutil

    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


needs_cxx = pytest.mark.skipif(not _has_cxx(), reason="torch.compile on CPU needs a C++ compiler")


@needs_cxx
def test_compiled_decode_step_equals_eager_step_and_generate_uses_it(monkeypatch):
    # one compiled graph (untied head, no biases, batch 3): logits and new cache rows equal the eager step's
    model = _tiny(**VARIANTS["untied_nobias"])
    ids = torch.randint(0, 97, (3, 14), generator=torch.Generator().manual_seed(8))
    eager, comp = model.new_caches(3, 14), model.new_caches(3, 14)
    weights, graph = gpt_decode.decode_weights(model), gpt_decode.compiled_step(model)
    with torch.no_grad():
        model.hidden_states(ids[:, :5], caches=eager)
        model.hidden_states(ids[:, :5], caches=comp)
        for i in range(5, 14):
            want = model._head(gpt_decode.decode_step(model, ids[:, i], eager, weights))
            got = gpt_decode.graph_decode(model, graph, ids[:, i], comp)
            assert got.shape == want.shape == (3, 97) and (got - want).abs().max() <= 1e-5
    assert comp[0].length == eager[0].length == 14
    for c, e in zip(comp, eager, strict=True):
        assert torch.allclose(c.k, e.k, atol=1e-6) and torch.allclose(c.v, e.v, atol=1e-6)
    # generate(compile=True) decodes through the graph, and greedy tokens match the eager path
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)  # wide logit margins: no near-ties for rounding to flip
    calls = []
    original = gpt_decode.graph_decode
    monkeypatch.setattr(gpt_decode, "graph_decode", lambda *a: calls.append(1) or original(*a))
    out = model.generate(ids[:, :5], 20, temperature=0.0, compile=True)
    assert len(calls) == 19  # every token after the first (which comes from the prompt pass)
    assert torch.equal(out, model.generate(ids[:, :5], 20, temperature=0.0))
    # more than 4 rows: the graph uses ordinary matrix products instead of the row-wise loop
    wide = torch.cat([ids[:, :5], ids[:, 5:10]])
    assert torch.equal(model.generate(wide, 6, temperature=0.0, compile=True), model.generate(wide, 6, temperature=0.0))


def test_compile_falls_back_where_the_graph_does_not_apply():
    # rotary positions and grouped-query attention are outside the compiled step: ordinary decoding
    for name in ("rotary", "gqa"):
        model = _tiny(**VARIANTS[name])
        ids = torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(9))
        assert torch.equal(model.generate(ids, 8, temperature=0.0, compile=True),
                           model.generate(ids, 8, temperature=0.0))


def test_generate_stops_at_eos():
    model = _tiny()
    ids = torch.randint(0, 97, (2, 4), generator=torch.Generator().manual_seed(5))
    greedy = model.generate(ids, 8, temperature=0.0)
    eos = int(greedy[0, 5])  # row 0's second new token
    expected, stop = greedy.clone(), 4
    for row in expected:  # rows are independent: each continues greedily until its first eos
        hits = (row[4:] == eos).nonzero()
        if len(hits):
            k = 4 + int(hits[0])
            row[k:] = eos
            stop = max(stop, k + 1)
        else:
            stop = 12
    out = model.generate(ids, 8, temperature=0.0, eos_token_id=eos)
    assert torch.equal(out, expected[:, :stop])
    # a lone row stops right after its eos
    first = int(greedy[0, 4])
    assert torch.equal(model.generate(ids[:1], 8, temperature=0.0, eos_token_id=first), greedy[:1, :5])


# ------------------------------------------------------------------------------------ sampling
def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    kept = filter_logits(logits, top_k=2).isfinite()
    assert kept.tolist() == [[False, True, False, True, False]]
    assert filter_logits(logits, top_k=100).isfinite().all()


def test_top_p_keeps_the_nucleus():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    assert filter_logits(logits, top_p=0.75).isfinite().tolist() == [[True, True, False, False]]
    assert filter_logits(logits, top_p=0.85).isfinite().tolist() == [[True, True, True, False]]
    assert filter_logits(logits, top_p=0.1).isfinite().tolist() == [[True, False, False, False]]
    shuffled = logits[:, [2, 0, 3, 1]]
    assert filter_logits(shuffled, top_p=0.75).isfinite().tolist() == [[False, True, False, True]]


@pytest.mark.parametrize("kw", [{"top_k": 3}, {"top_p": 0.5}, {"top_k": 5, "top_p": 0.6}])
def test_sampled_tokens_are_allowed_and_reproducible(kw):
    model = _tiny()
    ids = torch.randint(0, 97, (3, 4))
    out = model.generate(ids, 10, temperature=1.5, generator=torch.Generator().manual_seed(0), **kw)
    again = model.generate(ids, 10, temperature=1.5, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(out, again)
    with torch.no_grad():
        logits = model(out[:, :-1])[:, 3:] / 1.5
    allowed = filter_logits(logits.reshape(-1, 97), **kw).isfinite()
    assert allowed.gather(1, out[:, 4:].reshape(-1, 1)).all()


def test_tiny_top_p_is_greedy():
    model = _tiny()
    ids = torch.randint(0, 97, (2, 4))
    sampled = model.generate(ids, 8, top_p=1e-6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sampled, model.generate(ids, 8, temperature=0.0))


# ------------------------------------------------------------------------------------ config, init
@pytest.mark.parametrize("bad", [{"n_embd": 30}, {"n_kv_head": 3}, {"dropout": 1.0}, {"positional": "alibi"},
                                 {"attn_kind": "sparse", "sparse_block": 24}, {"n_embd": 36,
                                                                               "positional": "rotary"}])
def test_bad_config_is_rejected(bad):
    with pytest.raises(ValueError):
        GPTConfig(**{**TINY, **bad})
    with pytest.raises(archlab.ArchlabError):
        archlab.create("gpt", **{**TINY, **bad})


def test_defaults_are_nanogpt_shakespeare_char_cpu():
    c = GPTConfig()
    assert (c.vocab_size, c.block_size, c.n_layer, c.n_head, c.n_embd, c.dropout) == (65, 64, 4, 4, 128, 0.0)


def test_gpt2_init_and_param_groups():
    model = _tiny(n_layer=4, n_embd=64, vocab_size=512)
    assert abs(model.wte.weight.std().item() - 0.02) < 2e-3
    assert abs(model.layers[0].ffn.fc2.weight.std().item() - 0.02 / 8 ** 0.5) < 1e-3
    assert model.layers[0].attn.qkv.bias.abs().max() == 0
    decay, no_decay = model.param_groups(0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"] + no_decay["params"]} == {id(p) for p in model.parameters()}
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
