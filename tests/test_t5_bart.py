"""T5 and BART: equal to Hugging Face (weights in and out, logits, greedy and beam-search generation),
cached decoding equal to the full decoder, and the shared beam search against brute force."""

from __future__ import annotations

import itertools

import pytest
import torch

import archlab
from archlab import from_hf
from archlab.models.transformers.decoding import DecoderCache, beam_search, greedy_search, shift_tokens_right

V = 24  # small vocabulary: random models then reach EOS within a few steps, so stopping is exercised


pytestmark = pytest.mark.usefixtures("single_thread")


def _hf_t5(ff: str = "relu", seed: int = 0, **overrides):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    kw = dict(vocab_size=V, d_model=32, d_kv=8, d_ff=40, num_layers=2, num_decoder_layers=3, num_heads=4,
              relative_attention_num_buckets=8, relative_attention_max_distance=20, dropout_rate=0.0,
              feed_forward_proj=ff, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    kw.update(overrides)
    return transformers.T5ForConditionalGeneration(transformers.T5Config(**kw, attn_implementation="eager")).eval()


def _hf_bart(seed: int = 0, **overrides):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    kw = dict(vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
              decoder_attention_heads=2, encoder_ffn_dim=40, decoder_ffn_dim=48, max_position_embeddings=40,
              dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, pad_token_id=1, bos_token_id=0,
              eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None, scale_embedding=True,
              init_std=0.5)  # a large init makes the random model's predictions input-dependent
    kw.update(overrides)
    model = transformers.BartForConditionalGeneration(transformers.BartConfig(**kw, attn_implementation="eager"))
    with torch.no_grad():
        model.final_logits_bias.normal_()
    return model.eval()


def _batch(pad: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Encoder inputs of 13 tokens and decoder inputs of 9, both right-padded in some rows."""
    g = torch.Generator().manual_seed(seed)
    ids, dec = torch.randint(3, V, (3, 13), generator=g), torch.randint(3, V, (3, 9), generator=g)
    mask, dec_mask = torch.ones_like(ids), torch.ones_like(dec)
    mask[1, 9:], mask[2, 4:], dec_mask[2, 6:] = 0, 0, 0
    return ids.masked_fill(mask == 0, pad), mask, dec.masked_fill(dec_mask == 0, pad), dec_mask


def _check_equal_to_hf(hf_model, pad: int, tmp_path, **overrides):
    hf_model.save_pretrained(tmp_path / "hf")
    model = from_hf(tmp_path / "hf", **overrides)
    ids, mask, dec, dec_mask = _batch(pad)
    with torch.no_grad():
        ref = hf_model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask)
        logits = model(ids, dec, mask, dec_mask)
        memory = model.encode(ids, mask)
    assert (memory - ref.encoder_last_hidden_state).abs().max() <= 1e-4
    assert (logits - ref.logits).abs().max() <= 1e-4
    # round trip: archlab -> HF format -> transformers
    model.save_hf(tmp_path / "back")
    again = type(hf_model).from_pretrained(tmp_path / "back", attn_implementation="eager").eval()
    with torch.no_grad():
        back = again(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask)
    assert (back.logits - ref.logits).abs().max() <= 1e-4
    return model


# ------------------------------------------------------------------------------ Hugging Face
@pytest.mark.parametrize("ff", ["relu", "gated-gelu"])
def test_t5_matches_hf(ff, tmp_path):
    model = _check_equal_to_hf(_hf_t5(ff), 0, tmp_path)
    assert model.config.gated == (ff == "gated-gelu")
    assert model.config.activation == ("gelu_tanh" if ff == "gated-gelu" else "relu")
    assert model.lm_head is None and model.config.scale_decoder_outputs
    assert len(model.decoder) == 3


def test_t5_v1_1_untied_head_matches_hf(tmp_path):
    """T5 v1.1: separate lm_head and no output scaling (transformers 5 keeps the flags apart)."""
    transformers = pytest.importorskip("transformers")
    hf = _hf_t5("gated-gelu")
    cfg = hf.config.to_dict()
    cfg.update(tie_word_embeddings=False, scale_decoder_outputs=False)
    hf = transformers.T5ForConditionalGeneration(transformers.T5Config(**cfg)).eval()
    with torch.no_grad():
        hf.lm_head.weight = torch.nn.Parameter(torch.randn_like(hf.lm_head.weight))
    hf.save_pretrained(tmp_path / "hf")
    with pytest.raises(archlab.ArchlabError, match="tie_word_embeddings=False"):
        from_hf(tmp_path / "hf")
    model = _check_equal_to_hf(hf, 0, tmp_path, tie_word_embeddings=False)
    assert model.lm_head is not None and not model.config.scale_decoder_outputs
    assert model.config_to_hf()["tie_word_embeddings"] is False


def test_t5_config_from_older_transformers():
    """Before transformers 5, tie_word_embeddings=false alone meant: separate head, no scaling."""
    from archlab.models.transformers.t5 import T5

    cfg = T5.config_from_hf({"vocab_size": V, "d_model": 32, "num_layers": 2, "num_heads": 4, "d_kv": 8,
                             "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False})
    assert not cfg.tie_word_embeddings and not cfg.scale_decoder_outputs
    assert cfg.num_decoder_layers == 2 and cfg.decoder_start_token_id == cfg.pad_token_id == 0


def test_bart_matches_hf(tmp_path):
    hf = _hf_bart()
    model = _check_equal_to_hf(hf, 1, tmp_path)
    assert torch.equal(model.final_logits_bias, hf.final_logits_bias)
    # without decoder inputs both shift the encoder inputs right (denoising setting)
    ids, mask, _, _ = _batch(1)
    with torch.no_grad():
        torch.testing.assert_close(model(ids, attention_mask=mask), hf(input_ids=ids, attention_mask=mask).logits,
                                   atol=1e-4, rtol=0)
    assert torch.equal(shift_tokens_right(torch.tensor([[5, 6, -100]]), 1, 2), torch.tensor([[2, 5, 6]]))


def test_bart_untied_head_and_bare_model(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = _hf_bart(tie_word_embeddings=False, scale_embedding=False, activation_function="relu")
    assert hf.lm_head.weight.data_ptr() != hf.model.shared.weight.data_ptr()
    # transformers 5 unties the stacks' input embeddings too; one shared input embedding is BART's design
    hf.save_pretrained(tmp_path / "apart")
    with pytest.raises(archlab.ArchlabError, match="one token embedding"):
        from_hf(tmp_path / "apart")
    with torch.no_grad():
        hf.model.encoder.embed_tokens.weight.copy_(hf.model.shared.weight)
        hf.model.decoder.embed_tokens.weight.copy_(hf.model.shared.weight)
    model = _check_equal_to_hf(hf, 1, tmp_path)
    assert model.lm_head is not None and model.config.activation == "relu"
    # BartModel (no LM head, no "model." prefix) loads into the tied model; its decoder states are ours
    bare = transformers.BartModel(hf.config.__class__(**{**hf.config.to_dict(), "tie_word_embeddings": True}))
    bare.eval().save_pretrained(tmp_path / "bare")
    loaded = from_hf(tmp_path / "bare")
    ids, mask, dec, dec_mask = _batch(1)
    with torch.no_grad():
        hidden = bare(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).last_hidden_state
        logits = loaded(ids, dec, mask)
    torch.testing.assert_close(logits, hidden @ bare.shared.weight.T, atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------ generation
def _hf_generate(hf_model, ids, mask, **kw):
    out = hf_model.generate(input_ids=ids, attention_mask=mask, do_sample=False, min_length=0,
                            no_repeat_ngram_size=0, repetition_penalty=1.0, num_return_sequences=1, **kw)
    return out[:, 1:]  # drop the decoder start token


def _after_eos(tokens: torch.Tensor, eos: int, pad: int) -> torch.Tensor:
    """Positions after each row's first EOS set to ``pad`` (HF fills them with EOS or pad, depending)."""
    seen = (tokens == eos).long().cumsum(1)
    after = (seen - (tokens == eos).long()) > 0
    return tokens.masked_fill(after, pad)


def _generation_models(tmp_path):
    """Random models with all weights ~ N(0, 1) and an LM head apart from the input embedding: tied
    random models just repeat their input token, these produce varied sequences that reach EOS."""
    # HF's generate sizes its T5 cache by the encoder depth: equal depths here
    t5 = _hf_t5("relu", seed=3, num_decoder_layers=2, eos_token_id=2)
    bart = _hf_bart(seed=3, tie_word_embeddings=False)
    out = []
    for name, hf in (("t5", t5), ("bart", bart)):
        torch.manual_seed(5)
        with torch.no_grad():
            for pname, p in hf.named_parameters():
                if "norm" not in pname:
                    p.copy_(torch.randn_like(p))
            if name == "t5":  # transformers 5 always ties T5's head at init; a different head stays apart
                hf.lm_head.weight = torch.nn.Parameter(torch.randn_like(hf.lm_head.weight))
            else:
                hf.model.encoder.embed_tokens.weight.copy_(hf.model.shared.weight)
                hf.model.decoder.embed_tokens.weight.copy_(hf.model.shared.weight)
        hf.save_pretrained(tmp_path / name)
        model = from_hf(tmp_path / name, tie_word_embeddings=False)
        out.append((hf, model, model.config.pad_token_id, model.config.eos_token_id))
    return out


def test_greedy_generate_matches_hf(tmp_path):
    finished = 0
    for hf, model, pad, eos in _generation_models(tmp_path):
        for seed in range(3):
            ids, mask, _, _ = _batch(pad, seed)
            ours = model.generate(ids, mask, max_new_tokens=12)
            ref = _hf_generate(hf, ids, mask, num_beams=1, max_new_tokens=12)
            assert torch.equal(ours, ref), (type(model).__name__, seed, ours, ref)
            finished += int((ours == eos).any(1).sum())
    assert finished > 0  # some sequences did stop at EOS


@pytest.mark.parametrize(("length_penalty", "early_stopping"), [(1.0, False), (2.0, True), (-0.5, "never")])
def test_beam_search_matches_hf(tmp_path, length_penalty, early_stopping):
    for hf, model, pad, eos in _generation_models(tmp_path):
        for seed in range(2):
            ids, mask, _, _ = _batch(pad, seed)
            kw = dict(num_beams=3, max_new_tokens=10, length_penalty=length_penalty, early_stopping=early_stopping)
            ours = model.generate(ids, mask, **kw)
            ref = _after_eos(_hf_generate(hf, ids, mask, **kw), eos, pad)
            assert torch.equal(ours, ref), (type(model).__name__, seed, ours, ref)


@pytest.mark.parametrize("name", ["t5", "bart"])
def test_cached_decoding_equals_full_decoder(name):
    torch.manual_seed(0)
    model = archlab.create(name, vocab_size=V).eval()
    ids, mask, dec, _ = _batch(model.config.pad_token_id)
    with torch.no_grad():
        memory = model.encode(ids, mask)
        full = model.decode(dec, memory, mask)
        cache = DecoderCache.for_layers(model.decoder, 3, dec.shape[1], ids.shape[1], dtype=memory.dtype,
                                        device=memory.device)
        first = model.decode(dec[:, :4], memory, mask, cache=cache)          # a prompt of 4, then one by one
        steps = [model.decode(dec[:, t:t + 1], memory, mask, cache=cache) for t in range(4, dec.shape[1])]
    torch.testing.assert_close(torch.cat([first, *steps], dim=1), full, atol=1e-5, rtol=0)


def test_generate_output_contract():
    torch.manual_seed(0)
    model = archlab.create("t5", vocab_size=V).eval()
    ids, mask, _, _ = _batch(0)
    for beams in (1, 2):
        out = model.generate(ids, mask, max_new_tokens=6, num_beams=beams)
        assert out.dtype == torch.long and out.shape[0] == 3 and out.shape[1] <= 6
        assert torch.equal(out, _after_eos(out, 1, 0))  # only padding after EOS
    assert model.generate(ids, mask, max_new_tokens=0).shape == (3, 0)


# ------------------------------------------------------------------------- the search itself
class _TreeModel:
    """A toy decoder whose next-token logits depend on the whole prefix and on the input row: the state
    is ``(row, prefix code)``, so a wrong reordering of the state changes the result."""

    def __init__(self, batch: int, vocab: int, depth: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.vocab = vocab
        self.table = torch.randn(batch, (vocab + 1) ** (depth + 1), vocab, generator=g) * 2

    def step(self, tokens, state):
        rows, codes = state
        codes = codes * (self.vocab + 1) + tokens + 1
        return self.table[rows, codes], (rows, codes)

    @staticmethod
    def reorder(state, index):
        rows, codes = state
        return rows[index], codes[index]

    def log_prob(self, row: int, seq: tuple[int, ...], start: int) -> float:
        state, prev, total = (torch.tensor([row]), torch.zeros(1, dtype=torch.long)), start, 0.0
        for tok in seq:
            logits, state = self.step(torch.tensor([prev]), state)
            total += torch.log_softmax(logits[0], -1)[tok].item()
            prev = tok
        return total


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
def test_beam_search_with_full_width_is_exhaustive(length_penalty):
    """With enough beams nothing is pruned: beam search must return the best of all hypotheses under
    ``sum log p / L ** length_penalty`` (hypotheses end at EOS or at the length limit)."""
    vocab, depth, eos, start, pad, batch = 4, 3, 1, 0, -1, 2
    toy = _TreeModel(batch, vocab, depth)
    k = 64  # >= every hypothesis alive or finished at any step, so the pool never fills and never prunes
    state = (torch.arange(batch).repeat_interleave(k), torch.zeros(batch * k, dtype=torch.long))
    out = beam_search(toy.step, state, toy.reorder, batch, start_id=start, eos_id=eos, pad_id=pad, num_beams=k,
                      max_new_tokens=depth, length_penalty=length_penalty, early_stopping="never")
    for row in range(batch):
        hyps = [s for n in range(1, depth + 1) for s in itertools.product(range(vocab), repeat=n)
                if eos not in s[:-1] and (s[-1] == eos or n == depth)]
        best = max(hyps, key=lambda s: toy.log_prob(row, s, start) / len(s) ** length_penalty)
        got = tuple(t for t in out[row].tolist() if t != pad)
        assert got == best, (row, got, best)


def test_greedy_search_follows_the_argmax():
    vocab, depth, eos, start, pad = 5, 4, 1, 0, -1
    toy = _TreeModel(2, vocab, depth, seed=1)
    state = (torch.arange(2), torch.zeros(2, dtype=torch.long))
    out = greedy_search(toy.step, state, 2, start_id=start, eos_id=eos, pad_id=pad, max_new_tokens=depth)
    for row in range(2):
        st, prev, expect = (torch.tensor([row]), torch.zeros(1, dtype=torch.long)), start, []
        while len(expect) < depth and eos not in expect:
            logits, st = toy.step(torch.tensor([prev]), st)
            prev = int(logits.argmax())
            expect.append(prev)
        assert out[row, :len(expect)].tolist() == expect
        assert all(t == pad for t in out[row, len(expect):].tolist())
