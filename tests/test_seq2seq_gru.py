"""GRU encoder-decoder with Bahdanau attention: shapes, masking, alignments, greedy and beam decoding, learning."""

from __future__ import annotations

import itertools
import time

import pytest
import torch
import torch.nn.functional as F

import archlab

PAD, EOS, START = 0, 1, 0
TINY = dict(vocab_size=12, emb_dim=16, hidden=32)


pytestmark = pytest.mark.usefixtures("single_thread")


def _model(seed: int = 0, **kw):
    torch.manual_seed(seed)
    return archlab.create("seq2seq_gru", **{**TINY, **kw}).eval()


def _copy_batch(n: int, lo: int = 2, hi: int = 5, vocab: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Digit strings (ids 2..vocab-1) of lengths lo..hi, then EOS, right-padded; and their mask."""
    lengths = torch.randint(lo, hi + 1, (n,))
    s = hi + 1
    pos = torch.arange(s)
    x = torch.randint(2, vocab, (n, s))
    x = torch.where(pos == lengths[:, None], EOS, x).masked_fill(pos > lengths[:, None], PAD)
    return x, (pos <= lengths[:, None]).long()


def _shift(target: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.full_like(target[:, :1], START), target[:, :-1]], dim=1)


def test_shapes():
    model = _model()
    x, mask = _copy_batch(3)
    dec = _shift(x)
    logits, weights = model(x, dec, mask, output_attentions=True)
    assert logits.shape == (3, x.shape[1], 12) and weights.shape == (3, x.shape[1], x.shape[1])
    assert torch.equal(model(x, dec, mask), logits)
    out = model.generate(x, mask, max_new_tokens=4)
    assert out.dtype == torch.long and out.shape[0] == 3 and out.shape[1] <= 4
    assert model.generate(x, mask, max_new_tokens=0).shape == (3, 0)


def test_source_padding_changes_nothing():
    """Each row alone and unpadded gives the same logits and alignments as inside a padded batch,
    whatever token ids sit in the padding."""
    model = _model()
    x, mask = _copy_batch(4, lo=1, hi=6)
    x = torch.where(mask.bool(), x, torch.randint(2, 12, x.shape))     # junk in the padding
    dec = torch.randint(0, 12, (4, 5))
    logits, weights = model(x, dec, mask, output_attentions=True)
    for i in range(4):
        n = int(mask[i].sum())
        alone, w_alone = model(x[i:i + 1, :n], dec[i:i + 1], output_attentions=True)
        torch.testing.assert_close(logits[i:i + 1], alone, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(weights[i:i + 1, :, :n], w_alone, atol=1e-6, rtol=1e-5)
        assert (weights[i, :, n:] == 0).all()


def test_attention_weights_are_distributions_over_real_tokens():
    model = _model()
    x, mask = _copy_batch(5, lo=1, hi=6)
    w = model.attention_weights(x, _shift(x), mask)
    assert w.shape == (5, x.shape[1], x.shape[1]) and (w >= 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(5, x.shape[1]))
    assert (w.masked_select(~mask.bool()[:, None, :].expand_as(w)) == 0).all()


def test_left_padding_is_refused():
    model = _model()
    x = torch.tensor([[PAD, 3, 4, EOS]])
    with pytest.raises(ValueError, match="right"):
        model(x, x, torch.tensor([[0, 1, 1, 1]]))


def test_greedy_generation_feeds_back_the_argmax():
    model = _model(seed=3)
    x, mask = _copy_batch(6)
    gen = model.generate(x, mask, max_new_tokens=8)
    logits = model(x, _shift(gen), mask)
    # up to and including its first EOS, every generated token is the argmax given the previous ones
    is_eos = (gen == EOS).long()
    live = (is_eos.cumsum(1) - is_eos) == 0
    assert torch.equal(logits.argmax(-1)[live], gen[live])
    assert (gen[~live] == PAD).all()


@torch.no_grad()
def test_beam_search_finds_the_best_sequence():
    """With as many beams as prefixes, beam search is exhaustive: it must return the sequence with the
    best length-normalized log-probability among all that end in EOS (or at the length limit). A length
    penalty > 1 favours long outputs, so the beams must be reordered correctly for several steps."""
    vocab, steps, lp = 4, 4, 2.0
    model = _model(seed=4, vocab_size=vocab)
    # make the next token depend on the history through the GRU state only, and strongly: a beam that
    # carried another beam's state would then score its extensions wrongly
    model.readout.weight[:, 3 * model.config.hidden:] = 0.0
    model.out.weight.mul_(20.0)
    x = torch.randint(2, vocab, (6, 3))          # with seed 4, a beam that kept a wrong state changes row 1
    got = model.generate(x, max_new_tokens=steps, num_beams=(vocab - 1) ** (steps - 1) + 5,
                         length_penalty=lp, early_stopping="never")
    for b in range(len(x)):
        best, best_seq = -float("inf"), None
        for length in range(1, steps + 1):
            seqs = [s for s in itertools.product(range(vocab), repeat=length)
                    if EOS not in s[:-1] and (length == steps or s[-1] == EOS)]
            y = torch.tensor(seqs)
            logp = F.log_softmax(model(x[b:b + 1].expand(len(y), -1), _shift(y)), -1)
            scores = logp.gather(-1, y[..., None]).squeeze(-1).sum(1) / length ** lp
            i = int(scores.argmax())
            if scores[i] > best:
                best, best_seq = float(scores[i]), list(seqs[i])
        row = got[b].tolist()
        assert (row[:row.index(EOS) + 1] if EOS in row else row) == best_seq


def test_copy_task_learns():
    torch.manual_seed(0)
    model = archlab.create("seq2seq_gru", **TINY)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    start = time.perf_counter()
    for _ in range(60):
        x, mask = _copy_batch(64)
        labels = x.masked_fill(mask == 0, -100)
        loss = F.cross_entropy(model(x, _shift(x), mask).flatten(0, 1), labels.flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert time.perf_counter() - start < 3.0 * 3      # generous on a loaded machine; ~1 s alone
    assert sum(losses[-5:]) / 5 < 0.3 * losses[0]
    model.eval()
    x, mask = _copy_batch(100)
    for beams in (1, 3):
        out = model.generate(x, mask, max_new_tokens=x.shape[1], num_beams=beams)
        exact = (out == x[:, :out.shape[1]]).all(1) & (x[:, out.shape[1]:] == PAD).all(1)
        assert exact.float().mean() > 0.5, beams


def test_config_validation():
    with pytest.raises(archlab.ArchlabError, match="eos_token_id"):
        archlab.create("seq2seq_gru", vocab_size=4, eos_token_id=7)
