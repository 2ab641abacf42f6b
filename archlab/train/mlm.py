"""Masked-language-model pre-training (BERT, RoBERTa, ALBERT, DistilBERT) on a text dataset.

Special tokens come after the text vocabulary of size ``V``: ``[PAD] = V``, ``[MASK] = V + 1``,
``[CLS] = V + 2``, ``[SEP] = V + 3``; the model's vocabulary is ``V + 4``. One step (Devlin et al.
2019, Sec. 3.1 and Appendix A.1):

    w       = data.batch_size random windows of data.seq_len consecutive training tokens
    x       = [CLS] w_1 .. w_L [SEP]
    M       = each text position independently with probability data.mask_prob (15%)
    x~_i    = [MASK] (80% of M) | a random text token (10%) | x_i (10%)          for i in M
    loss    = CE(f(x~)_i, x_i) averaged over i in M           (labels -100 elsewhere)
    W      <- optimizer(W, clip(grad loss)),   lr <- schedule(step)

Random replacements are drawn from the text tokens only, so no special token ever appears inside a
window. Evaluation covers the whole validation text in consecutive windows of ``seq_len`` tokens with
one fixed masking (the same every evaluation and every run, so numbers are comparable):

    val_mlm_acc   share of the masked positions whose argmax prediction is the original token
    val_loss      cross-entropy per masked position (nats)

The model is the one of the last step (pre-training keeps no "best" weights); ``train.early_stopping``
on ``val_loss`` or ``val_mlm_acc`` can end the run early.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..config import field_names
from ..data.text import TextDataset, load_text_dataset
from ..engine.optim import build_optimizer, build_scheduler
from ..errors import ArchlabError
from ..models.base import ArchModel
from ..recipe import Recipe
from ..registry import build_config, get
from . import Context, accumulated_step

#: Seed of the fixed validation masking.
EVAL_SEED = 0
#: Probabilities of the three fates of a chosen position (Devlin et al. 2019, Sec. 3.1).
MASK_SHARE, RANDOM_SHARE = 0.8, 0.1


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of the special tokens appended after a text vocabulary of ``num_text`` tokens."""

    num_text: int

    @property
    def pad(self) -> int:
        return self.num_text

    @property
    def mask(self) -> int:
        return self.num_text + 1

    @property
    def cls(self) -> int:
        return self.num_text + 2

    @property
    def sep(self) -> int:
        return self.num_text + 3

    @property
    def vocab_size(self) -> int:
        return self.num_text + 4


def masking(ids: torch.Tensor, num_text: int, mask_id: int, generator: torch.Generator,
            prob: float = 0.15, special: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking of token ids ``ids`` (any shape and device; ``generator`` is a CPU generator).

    Each position that is not ``special`` (default: ids >= ``num_text``) is chosen with probability
    ``prob``; a chosen position becomes ``mask_id`` with probability 0.8, a uniform random text token
    (``0 .. num_text - 1``) with 0.1, and stays as it is with 0.1. Returns (inputs, labels): labels
    hold the original id at chosen positions and -100 everywhere else. The generator is advanced by
    the same amount whatever ``ids`` holds, so a stream of batches stays reproducible.
    """
    if special is None:
        special = ids >= num_text
    chosen = (torch.rand(ids.shape, generator=generator) < prob).to(ids.device) & ~special
    fate = torch.rand(ids.shape, generator=generator).to(ids.device)
    random_ids = torch.randint(0, num_text, ids.shape, generator=generator).to(ids.device)
    labels = ids.masked_fill(~chosen, -100)
    inputs = torch.where(chosen & (fate < MASK_SHARE), mask_id, ids)
    swap = chosen & (fate >= MASK_SHARE) & (fate < MASK_SHARE + RANDOM_SHARE)
    inputs = torch.where(swap, random_ids, inputs)
    return inputs, labels


class MaskedLM:
    """Paradigm for masked-language-model training; one step = one optimizer update."""

    data_kind: ClassVar[str] = "text"

    @staticmethod
    def load_data(recipe: Recipe) -> TextDataset:
        data = load_text_dataset(recipe.data.name, recipe.data.options)
        n = recipe.data.seq_len
        if len(data.train) <= n or len(data.val) < n:
            raise ArchlabError(f"data.seq_len: {n} tokens do not fit the text of {recipe.data.name!r} "
                               f"({len(data.train)} train, {len(data.val)} val tokens)")
        return data

    @staticmethod
    def model_defaults(recipe: Recipe, data: TextDataset) -> dict[str, Any]:
        """Vocabulary (text + 4 special tokens), the pad id, a position table long enough for a window
        with [CLS] and [SEP], and the MLM head -- for the keys the model's config has."""
        cls = get(recipe.model_name).cls
        special = SpecialTokens(data.vocab_size)
        need = recipe.data.seq_len + 2
        values: dict[str, Any] = {"vocab_size": special.vocab_size, "pad_token_id": special.pad, "head": "mlm",
                                  "max_position_embeddings": need}
        have = set(field_names(cls.config_class))
        values = {k: v for k, v in values.items() if k in have}
        if "max_position_embeddings" in values and hasattr(cls, "max_length"):
            # Some models lose rows of the table to an offset (RoBERTa numbers positions from pad + 1):
            # ask the model how many rows a roomy table loses, and add them.
            base = {**values, **recipe.model_config}
            roomy = need + int(base.get("vocab_size", 0)) + 1
            probe = build_config(recipe.model_name, {**base, "max_position_embeddings": roomy})
            values["max_position_embeddings"] = need + roomy - cls.max_length(probe)
        return values

    def __init__(self, recipe: Recipe, model: ArchModel, data: TextDataset, ctx: Context) -> None:
        if ctx.dist.enabled:
            raise ArchlabError("the mlm loop trains in one process; drop --nproc")
        self.special = SpecialTokens(data.vocab_size)
        vocab = getattr(model.config, "vocab_size", None)
        if vocab != self.special.vocab_size:
            raise ArchlabError(f"model.vocab_size: the mlm loop needs {self.special.vocab_size} (text vocabulary "
                               f"{data.vocab_size} + 4 special tokens), got {vocab}")
        if getattr(model.config, "head", "mlm") != "mlm":
            raise ArchlabError(f"model.head: the mlm loop trains the masked-LM head, got {model.config.head!r}")
        tc, dc = recipe.train, recipe.data
        if hasattr(model, "max_length") and model.max_length(model.config) < dc.seq_len + 2:
            raise ArchlabError(f"model.max_position_embeddings: {recipe.model_name!r} takes at most "
                               f"{model.max_length(model.config)} tokens, but a window of data.seq_len = {dc.seq_len} "
                               f"has {dc.seq_len + 2} with [CLS] and [SEP]")
        reported = {"val_mlm_acc", "val_loss"}
        if tc.early_stopping and tc.monitor not in reported:
            raise ArchlabError(f"train.monitor: {tc.monitor!r} is not reported by the mlm loop; "
                               f"choose one of {', '.join(sorted(reported))}")
        self.recipe, self.ctx, self.data = recipe, ctx, data
        self.model = model.to(ctx.device)
        self.seq_len = dc.seq_len
        per_epoch = max(1, len(data.train) // (dc.batch_size * dc.seq_len * tc.accumulate))
        self.total_steps = tc.steps or max(1, round(tc.epochs * per_epoch))
        self.eval_every = tc.eval_every or per_epoch
        self.optimizer = build_optimizer(self.model, recipe.optim)
        self.scheduler = build_scheduler(self.optimizer, recipe.optim, self.total_steps)
        self.forward = torch.compile(self.model) if tc.compile else self.model
        self.gen = torch.Generator().manual_seed(ctx.seed)
        self.val_batch = self._val_windows()

    def _wrap(self, windows: torch.Tensor) -> torch.Tensor:
        """(B, L) text tokens -> (B, L + 2) with [CLS] in front and [SEP] at the end."""
        b = len(windows)
        cls = windows.new_full((b, 1), self.special.cls)
        sep = windows.new_full((b, 1), self.special.sep)
        return torch.cat([cls, windows, sep], dim=1)

    def _mask(self, ids: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return masking(ids, self.special.num_text, self.special.mask, gen, self.recipe.data.mask_prob)

    def _val_windows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The validation text as consecutive windows (the incomplete tail dropped), masked once."""
        n = len(self.data.val) // self.seq_len
        ids = self._wrap(self.data.val[:n * self.seq_len].view(n, self.seq_len))
        inputs, labels = self._mask(ids, torch.Generator().manual_seed(EVAL_SEED))
        return inputs.to(self.ctx.device), labels.to(self.ctx.device)

    def _train_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        n, b = self.seq_len, self.recipe.data.batch_size
        starts = torch.randint(0, len(self.data.train) - n + 1, (b,), generator=self.gen)
        ids = self._wrap(self.data.train[starts[:, None] + torch.arange(n)])
        inputs, labels = self._mask(ids, self.gen)
        return inputs.to(self.ctx.device), labels.to(self.ctx.device)

    @staticmethod
    def _loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")

    def train_step(self, step: int) -> dict[str, Any]:
        def micro_loss() -> torch.Tensor:
            inputs, labels = self._train_batch()
            with self.ctx.precision.autocast():
                logits = self.forward(inputs)
                # A batch with no chosen position (possible for tiny windows) contributes zero, not NaN.
                return self._loss_sum(logits, labels) / (labels != -100).sum().clamp(min=1)

        return accumulated_step(self.ctx, self.model, self.optimizer, self.scheduler, self.recipe.train, micro_loss)

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        if split != "val":
            return {}
        self.model.eval()
        inputs, labels = self.val_batch
        correct, loss_sum = 0, 0.0
        bs = self.recipe.data.eval_batch_size
        for i in range(0, len(inputs), bs):
            x, y = inputs[i:i + bs], labels[i:i + bs]
            with self.ctx.precision.autocast():
                logits = self.model(x).float()
            loss_sum += self._loss_sum(logits, y).item()
            correct += int(((logits.argmax(-1) == y) & (y != -100)).sum())
        count = max(1, int((labels != -100).sum()))
        return {"val_mlm_acc": correct / count, "val_loss": loss_sum / count}

    def final_metrics(self) -> dict[str, float]:
        return self.evaluate("val")

    def write_artifacts(self, run_dir: Path) -> None:
        """``tokenizer.json``: the text tokenizer (special tokens follow its vocabulary, see above)."""
        self.data.tokenizer.save(Path(run_dir) / "tokenizer.json")

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "gen": self.gen.get_state(),
                "precision": self.ctx.precision.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.gen.set_state(state["gen"])
        self.ctx.precision.load_state_dict(state["precision"])
