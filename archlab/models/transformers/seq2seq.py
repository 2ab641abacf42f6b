"""RNN encoder-decoder with additive attention (Bahdanau, Cho & Bengio 2015, "Neural Machine Translation
by Jointly Learning to Align and Translate").

Encoder: a bidirectional GRU over the source embeddings; annotation ``h_j`` concatenates both directions,
so each source position is described by what precedes and what follows it (sec. 3.2):

    h_j = [h_j^fwd ; h_j^bwd]                                                  [B, S, 2n]

Decoder, for target step ``i`` (sec. 3.1, appendix A.1.2 / A.2.2), with ``y_0`` = the start token:

    s_0 = tanh(W_s h_1^bwd)                                      initial state from the backward GRU
    e_ij = v^T tanh(W_a s_{i-1} + U_a h_j),  a_ij = softmax_j(e_ij)          alignment (eq. 6)
    c_i = sum_j a_ij h_j                                                      context (eq. 5)
    s_i = GRU([E y_{i-1} ; c_i], s_{i-1})                                     decoder state (eq. 4)
    t_i = maxout_2(U_o s_i + V_o E y_{i-1} + C_o c_i)                         deep output, pool size 2
    p(y_i | y_<i, x) = softmax(W_o t_i)

``U_a h_j`` does not depend on ``i``: it is computed once per source sentence
(:meth:`AdditiveAttention.project_keys`). The readout uses ``s_i`` as in the paper's eq. (4) (its
appendix writes ``s_{i-1}``; both are used in practice). Padding is masked out of the alignment, and
the encoder runs on packed sequences, so the backward GRU starts at each sentence's last real token:
padded and unpadded inputs give the same outputs. Padding must be on the right.

Training uses teacher forcing (``decoder_input_ids`` = the target shifted right); :meth:`Seq2SeqGRU.generate`
decodes greedily or with beam search (:mod:`.decoding`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ...nn.attention import AdditiveAttention
from ...registry import register
from ..base import ArchModel
from .decoding import EarlyStopping, beam_search, greedy_search


@dataclass
class Seq2SeqGRUConfig:
    vocab_size: int = 16
    """token vocabulary size (source and target share the ids; each side has its own embedding)"""
    emb_dim: int = 64
    """token embedding width m"""
    hidden: int = 128
    """GRU state width n (encoder annotations are 2n wide); also the alignment and maxout widths"""
    dropout: float = 0.0
    """dropout on the embeddings and on the deep-output features"""
    pad_token_id: int = 0
    """padding id (masked out of the source)"""
    eos_token_id: int = 1
    """end-of-sequence id: generation stops there"""
    decoder_start_token_id: int = 0
    """the decoder's first input y_0"""

    def __post_init__(self) -> None:
        if min(self.vocab_size, self.emb_dim, self.hidden) < 1:
            raise ValueError("vocab_size, emb_dim and hidden must be >= 1")
        for name in ("pad_token_id", "eos_token_id", "decoder_start_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(f"{name} ({getattr(self, name)}) must be in [0, vocab_size={self.vocab_size})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass
class Memory:
    """The encoded source, shared by every decoder step."""

    annotations: torch.Tensor
    """``h``: ``[B, S, 2n]``"""
    keys: torch.Tensor
    """``U_a h``: ``[B, S, n]``"""
    mask: torch.Tensor | None
    """``[B, S]`` bool, True = real token (None: no padding)"""
    state: torch.Tensor
    """``s_0``: ``[B, n]``"""

    def repeat(self, k: int) -> Memory:
        """Each row ``k`` times in a row (the beams of one input are rows ``b * k .. b * k + k - 1``)."""
        mask = None if self.mask is None else self.mask.repeat_interleave(k, 0)
        return Memory(self.annotations.repeat_interleave(k, 0), self.keys.repeat_interleave(k, 0), mask,
                      self.state.repeat_interleave(k, 0))


@register("seq2seq_gru", family="transformers")
class Seq2SeqGRU(ArchModel):
    """GRU encoder-decoder with Bahdanau (additive) attention, teacher forcing, greedy / beam decoding.

    Shapes:
        input_ids: ``[B, S]``; decoder_input_ids: ``[B, T]``; attention_mask: ``[B, S]`` (1 = token,
        0 = padding, on the right) -> logits ``[B, T, vocab_size]``
    """

    config_class = Seq2SeqGRUConfig

    def __init__(self, config: Seq2SeqGRUConfig) -> None:
        super().__init__(config)
        c = config
        n = c.hidden
        self.src_embed = nn.Embedding(c.vocab_size, c.emb_dim)
        self.tgt_embed = nn.Embedding(c.vocab_size, c.emb_dim)
        self.encoder = nn.GRU(c.emb_dim, n, batch_first=True, bidirectional=True)
        self.init_state = nn.Linear(n, n)                               # W_s
        self.attention = AdditiveAttention(d_query=n, d_key=2 * n, d_attn=n)
        self.cell = nn.GRUCell(c.emb_dim + 2 * n, n)
        self.readout = nn.Linear(n + 2 * n + c.emb_dim, 2 * n)          # [U_o; C_o; V_o], then maxout
        self.out = nn.Linear(n, c.vocab_size)                           # W_o
        self.dropout = nn.Dropout(c.dropout)

    @classmethod
    def example_input(cls, config: Seq2SeqGRUConfig, batch_size: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.randint(0, config.vocab_size, (batch_size, 7)),
                torch.randint(0, config.vocab_size, (batch_size, 5)))

    # ------------------------------------------------------------------------------------ encoder
    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Memory:
        """Annotations, projected keys and the initial decoder state of a source batch."""
        b, s = input_ids.shape
        x = self.dropout(self.src_embed(input_ids))
        mask = None
        if attention_mask is not None:
            mask = attention_mask.bool()
            lengths = mask.sum(1)
            if not torch.equal(mask, torch.arange(s, device=mask.device) < lengths[:, None]):
                raise ValueError("attention_mask must mark a prefix of every row (padding on the right)")
            if bool((lengths == 0).any()):
                raise ValueError("every source needs at least one token")
            if bool((lengths == s).all()):
                mask = None                                          # no padding: skip the packing
        if mask is None:
            h, last = self.encoder(x)
        else:
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            h, last = self.encoder(packed)
            h, _ = pad_packed_sequence(h, batch_first=True, total_length=s)
        # last[1]: the backward GRU's state after reading the sentence right to left, i.e. h_1^bwd
        state = torch.tanh(self.init_state(last[1]))
        return Memory(h, self.attention.project_keys(h), mask, state)

    # ------------------------------------------------------------------------------------ decoder
    def _recur(self, emb: torch.Tensor, state: torch.Tensor,
               memory: Memory) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One decoder step: alignment on ``s_{i-1}``, context, new state. Returns (s_i, c_i, a_i)."""
        context, weights = self.attention(state, memory.annotations, memory.mask, projected_keys=memory.keys)
        state = self.cell(torch.cat([emb, context], dim=-1), state)
        return state, context, weights

    def _logits(self, state: torch.Tensor, context: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Deep output with maxout (pool 2) -> vocabulary logits; any leading dims."""
        t = self.readout(self.dropout(torch.cat([state, context, emb], dim=-1)))
        t = t.unflatten(-1, (-1, 2)).amax(dim=-1)
        return self.out(t)

    def forward(self, input_ids: torch.Tensor, decoder_input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None,
                output_attentions: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced logits ``[B, T, V]``; with ``output_attentions`` also the alignments
        ``a_ij``: ``[B, T, S]`` (rows sum to 1, zero on padding)."""
        memory = self.encode(input_ids, attention_mask)
        emb = self.dropout(self.tgt_embed(decoder_input_ids))
        state = memory.state
        states, contexts, weights = [], [], []
        for i in range(emb.shape[1]):               # the recurrence is sequential; the readout is not
            state, context, a = self._recur(emb[:, i], state, memory)
            states.append(state)
            contexts.append(context)
            weights.append(a)
        logits = self._logits(torch.stack(states, 1), torch.stack(contexts, 1), emb)
        return (logits, torch.stack(weights, 1)) if output_attentions else logits

    def attention_weights(self, input_ids: torch.Tensor, decoder_input_ids: torch.Tensor,
                          attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The alignments ``a_ij`` under teacher forcing: ``[B, T, S]`` (for alignment plots)."""
        return self(input_ids, decoder_input_ids, attention_mask, output_attentions=True)[1]

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 max_new_tokens: int = 32, num_beams: int = 1, length_penalty: float = 1.0,
                 early_stopping: EarlyStopping = False) -> torch.Tensor:
        """Greedy (``num_beams == 1``) or beam-search decoding (see :mod:`.decoding`).

        Shapes: ``[B, S]`` -> LongTensor ``[B, L]``, ``L <= max_new_tokens``: generated tokens without
        the start token, ``pad_token_id`` after each sequence's EOS"""
        if num_beams < 1 or max_new_tokens < 0:
            raise ValueError(f"need num_beams >= 1 and max_new_tokens >= 0, got {num_beams} and {max_new_tokens}")
        c = self.config
        batch = input_ids.shape[0]
        memory = self.encode(input_ids, attention_mask)
        if num_beams > 1:
            memory = memory.repeat(num_beams)

        def step(tokens: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            emb = self.dropout(self.tgt_embed(tokens))
            state, context, _ = self._recur(emb, state, memory)
            return self._logits(state, context, emb), state

        common = dict(start_id=c.decoder_start_token_id, eos_id=c.eos_token_id, pad_id=c.pad_token_id,
                      max_new_tokens=max_new_tokens, device=input_ids.device)
        if num_beams == 1:
            return greedy_search(step, memory.state, batch, **common)
        # the memory is the same for all beams of an input; only the decoder state follows the beams
        return beam_search(step, memory.state, lambda state, index: state.index_select(0, index), batch,
                           num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping,
                           **common)
