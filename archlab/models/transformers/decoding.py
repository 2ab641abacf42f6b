"""Decoding for sequence-to-sequence models: greedy search and beam search, with KV caches.

Both searches are written against a small protocol, so that any decoder that produces next-token
logits one step at a time can use them (T5 and BART here, a GRU encoder-decoder elsewhere):

* ``state``: whatever the decoder carries from one step to the next (KV caches, an RNN hidden
  state, the encoder memory ...), holding one row per hypothesis;
* ``step_fn(tokens, state) -> (logits, state)``: feed the last token of every hypothesis
  (``tokens``: LongTensor ``[N]``) and return the next-token logits ``[N, V]`` (log-probabilities
  do as well: the searches normalize with ``log_softmax``) and the new state;
* ``reorder_fn(state, index) -> state`` (beam search only): keep rows ``index`` (LongTensor ``[N]``)
  of the state, in that order.

Beam search lays out the ``N = B * K`` hypotheses of a batch of ``B`` inputs and ``K`` beams as row
``b * K + k`` for beam ``k`` of input ``b``; the caller builds the initial state that way (e.g.
``memory.repeat_interleave(K, dim=0)``). Every ``index`` passed to ``reorder_fn`` only permutes rows
*within* a group: ``index[b * K + k] // K == b``. A state part that is the same for all beams of an
input (the encoder memory, the cross-attention keys and values) therefore never needs reordering.

Greedy search picks ``argmax`` at every step. Beam search (as Hugging Face ``generate`` does it with
``do_sample=False``) keeps, per input, the ``K`` best running hypotheses by summed log-probability
``s = sum_t log p(y_t | y_<t, x)`` and a pool of the ``K`` best finished ones by the length-normalized
score ``s / L ** length_penalty`` (``L`` = generated tokens, EOS included). Each step ranks the ``2K``
best one-token extensions of the running beams; an extension that ends (EOS, or the length limit)
among the top ``K`` ranks goes to the pool, the best ``K`` that do not end keep running. An input is
done when its pool is full and no running beam can still beat the worst finished score (with
``early_stopping=True``: as soon as the pool is full; ``"never"``: the bound uses the longest length
still reachable when ``length_penalty > 0``).

:func:`generate` runs either search on an encoder-decoder transformer (:class:`EncoderDecoder`)
with a :class:`DecoderCache` of self-attention keys/values (grown one position per step) and
cross-attention keys/values (computed from the memory at the first step, then reused).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

import torch

from ...nn.attention import KVCache
from ...nn.transformer import TransformerLayer

S = TypeVar("S")
StepFn = Callable[[torch.Tensor, S], tuple[torch.Tensor, S]]
ReorderFn = Callable[[S, torch.Tensor], S]
EarlyStopping = bool | Literal["never"]

# Hugging Face marks impossible hypotheses with -1e9 rather than -inf; the same constant keeps the
# ranking of such hypotheses (and hence the outputs) identical on corner cases.
_NEG = -1.0e9


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """Decoder inputs for teacher forcing: ``[start, y_1, ..., y_{T-1}]`` from targets ``[y_1, ..., y_T]``
    (label value -100, "ignore", becomes ``pad_token_id``).

    Shapes: labels ``[B, T]`` -> ``[B, T]``"""
    shifted = labels.new_full(labels.shape, decoder_start_token_id)
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == -100, pad_token_id)


# ------------------------------------------------------------------------------------- searches
@torch.no_grad()
def greedy_search(step_fn: StepFn, state: S, batch_size: int, *, start_id: int, eos_id: int, pad_id: int,
                  max_new_tokens: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Greedy decoding (module docstring): ``y_t = argmax_v logits_t[v]``; after its EOS a sequence
    gets ``pad_id``. Stops when every sequence has produced EOS, or after ``max_new_tokens``.

    Shapes: -> LongTensor ``[B, L]`` (``L <= max_new_tokens``; the start token is not included)"""
    tokens = torch.full((batch_size,), start_id, dtype=torch.long, device=device)
    done = torch.zeros(batch_size, dtype=torch.bool, device=device)
    out = []
    for _ in range(max_new_tokens):
        logits, state = step_fn(tokens, state)
        tokens = logits.argmax(-1).masked_fill(done, pad_id)
        out.append(tokens)
        done |= tokens == eos_id
        if bool(done.all()):
            break
    return torch.stack(out, dim=1) if out else torch.empty(batch_size, 0, dtype=torch.long, device=device)


@torch.no_grad()
def beam_search(step_fn: StepFn, state: S, reorder_fn: ReorderFn, batch_size: int, *, start_id: int, eos_id: int,
                pad_id: int, num_beams: int, max_new_tokens: int, length_penalty: float = 1.0,
                early_stopping: EarlyStopping = False, device: torch.device | str | None = None) -> torch.Tensor:
    """Beam search (module docstring); ``state`` holds ``batch_size * num_beams`` rows, beam ``k`` of
    input ``b`` in row ``b * num_beams + k``. Returns the best finished hypothesis of every input,
    padded with ``pad_id`` after its EOS.

    Shapes: -> LongTensor ``[B, L]`` (``L <= max_new_tokens``; the start token is not included)"""
    b, k = batch_size, num_beams
    rank_in_top_k = torch.arange(2 * k, device=device) < k
    group = torch.arange(b, device=device)[:, None] * k
    tokens = torch.full((b * k,), start_id, dtype=torch.long, device=device)
    run_seqs = torch.empty(b, k, 0, dtype=torch.long, device=device)
    # all beams start identical: only beam 0 may expand at the first step, or the K beams would be K copies
    run_scores = torch.zeros(b, k, device=device)
    run_scores[:, 1:] = _NEG
    fin_seqs = torch.full((b, k, max_new_tokens), pad_id, dtype=torch.long, device=device)
    fin_scores = torch.full((b, k), _NEG, device=device)
    fin_done = torch.zeros(b, k, dtype=torch.bool, device=device)
    fin_len = torch.zeros(b, k, dtype=torch.long, device=device)
    can_improve = torch.ones(b, dtype=torch.bool, device=device)
    for t in range(max_new_tokens):
        length = t + 1
        logits, state = step_fn(tokens, state)
        v = logits.shape[-1]
        logp = torch.log_softmax(logits.float(), dim=-1).view(b, k, v) + run_scores[..., None]
        cand_scores, flat = logp.view(b, k * v).topk(2 * k, dim=1)
        src, tok = flat // v, flat % v                                     # [B, 2K] source beam, new token
        cand_seqs = torch.cat([run_seqs.gather(1, src[..., None].expand(-1, -1, t)), tok[..., None]], dim=2)
        ends = (tok == eos_id) | (length == max_new_tokens)

        # finished: extensions that end, ranked in the top K, for inputs whose pool can still change
        accept = ends & rank_in_top_k & can_improve[:, None]
        if early_stopping is True:
            accept &= ~fin_done.all(dim=1, keepdim=True)
        new_scores = torch.where(accept, cand_scores / length ** length_penalty, _NEG)
        padded = torch.nn.functional.pad(cand_seqs, (0, max_new_tokens - length), value=pad_id)
        pool_scores, keep = torch.cat([fin_scores, new_scores], dim=1).topk(k, dim=1)
        fin_seqs = torch.cat([fin_seqs, padded], dim=1).gather(1, keep[..., None].expand(-1, -1, max_new_tokens))
        fin_done = torch.cat([fin_done, accept], dim=1).gather(1, keep)
        fin_len = torch.cat([fin_len, torch.full_like(tok, length)], dim=1).gather(1, keep)
        fin_scores = pool_scores

        # running: the K best extensions that do not end
        run_scores, pick = torch.where(ends, cand_scores + _NEG, cand_scores).topk(k, dim=1)
        run_seqs = cand_seqs.gather(1, pick[..., None].expand(-1, -1, length))
        tokens = tok.gather(1, pick).view(-1)

        # can the best running beam still beat the worst finished one?
        best_len = max_new_tokens if early_stopping == "never" and length_penalty > 0 else length
        best_possible = run_scores[:, 0] / best_len ** length_penalty
        can_improve &= ~fin_done.all(dim=1) | (best_possible > fin_scores.min(dim=1).values)
        if length == max_new_tokens or not bool(can_improve.any()) or (early_stopping is True
                                                                         and bool(fin_done.all())):
            break
        state = reorder_fn(state, (group + src.gather(1, pick)).view(-1))
    n = int(fin_len[:, 0].max()) if max_new_tokens else 0
    return fin_seqs[:, 0, :n]


# ----------------------------------------------------------------------- encoder-decoder models
@dataclass
class DecoderCache:
    """Per decoder layer: the self-attention keys/values of the positions decoded so far, and the
    cross-attention keys/values of the encoder memory (filled by the first step)."""

    self_attn: list[KVCache]
    cross_attn: list[KVCache]

    @classmethod
    def for_layers(cls, layers: Sequence[TransformerLayer], batch: int, max_len: int, memory_len: int, *,
                   dtype: torch.dtype, device: torch.device) -> DecoderCache:
        """Empty caches for decoding up to ``max_len`` positions over a memory of ``memory_len``."""

        def cache(attn, n: int) -> KVCache:
            return KVCache(batch, attn.n_kv_head, attn.head_dim, n, dtype=dtype, device=device)

        return cls([cache(layer.attn, max_len) for layer in layers],
                   [cache(layer.cross_attn, memory_len) for layer in layers])

    @property
    def length(self) -> int:
        """Decoder positions already cached (the absolute position of the next token)."""
        return self.self_attn[0].length if self.self_attn else 0

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` of the self-attention caches. The cross-attention caches are left alone:
        beam search only permutes the beams of one input, whose memory is the same."""
        for c in self.self_attn:
            c.reorder(index)


class EncoderDecoder(Protocol):
    """What :func:`generate` needs from a model (T5, BART)."""

    decoder: Sequence[TransformerLayer]

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor: ...

    def decode(self, decoder_input_ids: torch.Tensor, memory: torch.Tensor,
               attention_mask: torch.Tensor | None = None, decoder_attention_mask: torch.Tensor | None = None,
               cache: DecoderCache | None = None) -> torch.Tensor: ...


@torch.no_grad()
def generate(model: EncoderDecoder, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
             start_id: int, eos_id: int, pad_id: int, max_new_tokens: int = 32, num_beams: int = 1,
             length_penalty: float = 1.0, early_stopping: EarlyStopping = False) -> torch.Tensor:
    """Encode ``input_ids`` once, then decode with KV caches by greedy (``num_beams == 1``) or beam search.

    Shapes: input_ids, attention_mask ``[B, S]`` -> LongTensor ``[B, L]``, ``L <= max_new_tokens``
    (generated tokens without the start token; ``pad_id`` after a sequence's EOS)"""
    if num_beams < 1 or max_new_tokens < 0:
        raise ValueError(f"need num_beams >= 1 and max_new_tokens >= 0, got {num_beams} and {max_new_tokens}")
    batch = input_ids.shape[0]
    memory = model.encode(input_ids, attention_mask)
    if num_beams > 1:
        memory = memory.repeat_interleave(num_beams, dim=0)
        if attention_mask is not None:
            attention_mask = attention_mask.repeat_interleave(num_beams, dim=0)
    cache = DecoderCache.for_layers(model.decoder, memory.shape[0], max(max_new_tokens, 1), memory.shape[1],
                                    dtype=memory.dtype, device=memory.device)

    def step(tokens: torch.Tensor, cache: DecoderCache) -> tuple[torch.Tensor, DecoderCache]:
        return model.decode(tokens[:, None], memory, attention_mask, cache=cache)[:, -1], cache

    def reorder(cache: DecoderCache, index: torch.Tensor) -> DecoderCache:
        cache.reorder(index)
        return cache

    if num_beams == 1:
        return greedy_search(step, cache, batch, start_id=start_id, eos_id=eos_id, pad_id=pad_id,
                             max_new_tokens=max_new_tokens, device=input_ids.device)
    return beam_search(step, cache, reorder, batch, start_id=start_id, eos_id=eos_id, pad_id=pad_id,
                       num_beams=num_beams, max_new_tokens=max_new_tokens, length_penalty=length_penalty,
                       early_stopping=early_stopping, device=input_ids.device)
