"""Sequence-to-sequence training with teacher forcing (T5, BART, GRU + Bahdanau) on padded token ids.

One step = ``accumulate`` micro-batches -> one optimizer update (Sutskever et al. 2014; Vaswani et al. 2017):

    x            = x_1 .. x_S eos                         source (padding masked out)
    y            = y_1 .. y_T eos                         target
    dec_in       = start y_1 .. y_T                       the target shifted right: teacher forcing
    logits       = f(x, dec_in)                           (B, T + 1, V)
    loss         = CE(logits, y; loop.label_smoothing)       mean over the non-pad target tokens
    W           <- optimizer(W, clip(grad loss)),   lr <- schedule(step)

``start`` is the model's ``decoder_start_token_id`` (pad = 0 here, as T5 does). Batches come from a
seeded permutation per epoch (:class:`~archlab.train.supervised.BatchStream`), cut to the longest
row of the batch, so a resumed run sees exactly the batches an uninterrupted one would.

Evaluation decodes greedily (``model.generate``, no teacher forcing) and compares with the target:

    {split}_exact_match   share of examples whose output up to and including its first eos equals
                          the target (digits and eos)
    {split}_token_acc     share of target tokens (eos included) equal to the output at their position
    {split}_loss          teacher-forced cross-entropy per target token (nats)

The driver keeps the weights with the best ``train.monitor`` (default ``val_exact_match``; ties go to the lower
``val_loss``) are kept; the run's final metrics -- and the saved model -- are theirs, ``final_*``
those of the last step.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..config import field_names
from ..data.seq2seq import Seq2SeqDataset, Seq2SeqSplit, load_seq2seq_dataset
from ..engine.loop import Context, Loop, register_loop
from ..errors import ArchlabError
from ..io import atomic_write_bytes
from ..models.base import ArchModel
from ..registry import get
from .supervised import BatchStream, SupervisedConfig

if TYPE_CHECKING:
    from ..recipe import Recipe

METRICS = ("exact_match", "token_acc", "loss")


def shift_right(target: torch.Tensor, start_id: int) -> torch.Tensor:
    """Decoder inputs for teacher forcing: ``[start, y_1 .. y_{T-1}]`` from targets ``(B, T)``."""
    start = torch.full_like(target[:, :1], start_id)
    return torch.cat([start, target[:, :-1]], dim=1)


def compare_outputs(generated: torch.Tensor, target: torch.Tensor, pad_id: int,
                    eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Score decoded sequences against targets.

    ``generated`` (B, L): tokens after the start token; everything after its first eos is ignored.
    ``target`` (B, T): ends with eos, then pad. Returns (exact (B,) bool: the output up to and
    including its first eos equals the target; correct (B,) int64: target tokens, eos included,
    that the output matches at the same position).
    """
    is_eos = (generated == eos_id).long()
    after_eos = (is_eos.cumsum(1) - is_eos) > 0
    generated = generated.masked_fill(after_eos, pad_id)
    width = max(generated.shape[1], target.shape[1])
    generated = F.pad(generated, (0, width - generated.shape[1]), value=pad_id)
    target = F.pad(target, (0, width - target.shape[1]), value=pad_id)
    same = generated == target
    return same.all(1), (same & (target != pad_id)).sum(1)


@register_loop("seq2seq")
class Seq2Seq(Loop):
    """Encoder-decoder training with teacher forcing, scored by greedy generation (T5, BART, GRU seq2seq)."""

    Config = SupervisedConfig
    data_kind = "seq2seq"
    model_families = ("transformers",)
    metrics = tuple(f"{s}_{m}" for s in ("val", "test") for m in METRICS)
    monitor = ("val_exact_match", "max")
    keep_best = True
    tie_break = "val_loss"

    @classmethod
    def load_data(cls, recipe: Recipe) -> Seq2SeqDataset:
        return load_seq2seq_dataset(recipe.data.name, recipe.data.options, recipe.data.split_seed)

    @classmethod
    def model_defaults(cls, recipe: Recipe, data: Seq2SeqDataset) -> dict[str, Any]:
        """Vocabulary size and special token ids, for the keys the model's config has."""
        have = set(field_names(get(recipe.model_name).config_class))
        values = {"vocab_size": data.vocab_size, "pad_token_id": data.pad_token_id,
                  "eos_token_id": data.eos_token_id, "decoder_start_token_id": data.pad_token_id}
        return {k: v for k, v in values.items() if k in have}

    def __init__(self, recipe: Recipe, model: ArchModel, data: Seq2SeqDataset, ctx: Context) -> None:
        if ctx.dist.enabled:
            raise ArchlabError("the seq2seq loop trains in one process; drop --nproc")
        if not hasattr(model, "generate"):
            raise ArchlabError(f"model.name: {recipe.model_name!r} is not an encoder-decoder; the seq2seq loop "
                               "needs a model with generate() such as t5, bart or seq2seq_gru")
        # The data decides these (model_defaults); a recipe that overrides them would train on garbage.
        wanted = {"pad_token_id": data.pad_token_id, "eos_token_id": data.eos_token_id}
        for key, value in wanted.items():
            if getattr(model.config, key, value) != value:
                raise ArchlabError(f"model.{key}: the {data.name} data uses {value}, got {getattr(model.config, key)}")
        if getattr(model.config, "vocab_size", data.vocab_size) < data.vocab_size:
            raise ArchlabError(f"model.vocab_size: the {data.name} data has {data.vocab_size} tokens, "
                               f"got {model.config.vocab_size}")
        super().__init__(recipe, model.to(ctx.device), data, ctx)
        tc, dc = recipe.train, recipe.data
        self.pad_id, self.eos_id = data.pad_token_id, data.eos_token_id
        self.start_id = getattr(model.config, "decoder_start_token_id", data.pad_token_id)
        self.train_split = data.train.to(ctx.device)
        self.stream = BatchStream(len(data.train), dc.batch_size, seed=ctx.seed)
        per_epoch = max(1, len(data.train) // (dc.batch_size * tc.accumulate))
        self.total_steps = tc.steps or max(1, round(tc.epochs * per_epoch))
        self.eval_every = (tc.eval_every or per_epoch) if len(data.val) else 0
        self.opt = self.trainable("model", self.model)
        self.forward = torch.compile(self.model) if tc.compile else self.model

    # ----------------------------------------------------------------------------- training
    def _batch(self, split: Seq2SeqSplit, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(source, attention mask, decoder inputs, labels) of rows ``idx``, cut to their longest row."""
        s = int(split.source_lengths[idx].max())
        t = int(split.target_lengths[idx].max())
        source = split.source[idx, :s].to(self.ctx.device)
        target = split.target[idx, :t].to(self.ctx.device)
        mask = (source != self.pad_id).long()
        labels = target.masked_fill(target == self.pad_id, -100)
        return source, mask, shift_right(target, self.start_id), labels

    def train_step(self, step: int) -> dict[str, Any]:
        tc = self.recipe.train

        def micro_loss() -> torch.Tensor:
            source, mask, dec_in, labels = self._batch(self.train_split, self.stream.next().to(self.ctx.device))
            with self.ctx.precision.autocast():
                logits = self.forward(source, dec_in, attention_mask=mask)
                return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100,
                                       label_smoothing=self.cfg.label_smoothing)

        return self.opt.accumulated_step(tc.accumulate, tc.l1, micro_loss)

    # ----------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def _scores(self, split: str) -> dict[str, float]:
        part: Seq2SeqSplit = getattr(self.data, split)
        if len(part) == 0:
            return {}
        self.model.eval()
        exact = correct = tokens = 0
        loss_sum = 0.0
        bs = self.recipe.data.eval_batch_size
        for i in range(0, len(part), bs):
            idx = torch.arange(i, min(i + bs, len(part)))
            source, mask, dec_in, labels = self._batch(part, idx)
            with self.ctx.precision.autocast():
                logits = self.model(source, dec_in, attention_mask=mask).float()
                generated = self.model.generate(source, attention_mask=mask, max_new_tokens=labels.shape[1])
            loss_sum += F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100,
                                        reduction="sum").item()
            target = labels.masked_fill(labels == -100, self.pad_id)
            ex, cor = compare_outputs(generated, target, self.pad_id, self.eos_id)
            exact += int(ex.sum())
            correct += int(cor.sum())
            tokens += int((labels != -100).sum())
        return {f"{split}_exact_match": exact / len(part), f"{split}_token_acc": correct / tokens,
                f"{split}_loss": loss_sum / tokens}

    def evaluate(self, split: str) -> dict[str, float]:
        return self._scores(split)

    def write_artifacts(self, run_dir: Path) -> None:
        """``samples.txt``: the first test examples as source -> output (target), for a quick look."""
        part = self.data.test.take(torch.arange(min(20, len(self.data.test))))
        source, mask, _, labels = self._batch(part, torch.arange(len(part)))
        self.model.eval()
        with torch.no_grad(), self.ctx.precision.autocast():
            generated = self.model.generate(source, attention_mask=mask, max_new_tokens=labels.shape[1])
        decode = self.data.decode
        lines = [f"{decode(s)} -> {decode(g)} ({decode(t)})"
                 for s, g, t in zip(part.source, generated.cpu(), part.target, strict=True)]
        atomic_write_bytes(Path(run_dir) / "samples.txt", ("\n".join(lines) + "\n").encode())

    # ----------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"model": self.opt.state_dict(), "stream": self.stream.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["model"])
        self.stream.load_state_dict(state["stream"])
