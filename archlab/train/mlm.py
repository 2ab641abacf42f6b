"""Masked-language-model pre-training (BERT, RoBERTa, ALBERT, DistilBERT) on a text dataset.

Special tokens come after the text vocabulary of size ``V``: ``[PAD] = V``, ``[MASK] = V + 1``,
``[CLS] = V + 2``, ``[SEP] = V + 3``; the model's vocabulary is ``V + 4``. One step (Devlin et al.
2019, Sec. 3.1 and Appendix A.1):

    w       = data.batch_size random windows of loop.seq_len consecutive training tokens
    x       = [CLS] w_1 .. w_L [SEP]
    M       = each text position independently with probability loop.mask_prob (15%)
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
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..config import field_names
from ..data.text import TextDataset, load_text_dataset
from ..engine.loop import Context, Loop, register_loop
from ..errors import ArchlabError
from ..models.base import ArchModel
from ..registry import build_config, get

if TYPE_CHECKING:
    from ..recipe import Recipe

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


@dataclass
class MLMConfig:
    """``[loop]`` of the masked-LM loop."""

    seq_len: int = 128
    """Text tokens per training window ([CLS] and [SEP] come on top)."""
    mask_prob: float = 0.15
    """Share of the text tokens the model must predict (Devlin et al. 2019: 0.15)."""

    def __post_init__(self) -> None:
        if not 1 <= self.seq_len <= 10**6 or not 0.0 < self.mask_prob < 1.0:
            raise ValueError(f"need 1 <= seq_len <= 1e6 and 0 < mask_prob < 1, got {self.seq_len}, {self.mask_prob}")


@register_loop("mlm")
class MaskedLM(Loop):
    """Masked-language-model pre-training (BERT family); one step = one optimizer update."""

    Config = MLMConfig
    data_kind = "text"
    model_families = ("transformers",)
    metrics = ("val_mlm_acc", "val_loss")
    monitor = ("val_loss", "min")

    @classmethod
    def load_data(cls, recipe: Recipe) -> TextDataset:
        data = load_text_dataset(recipe.data.name, recipe.data.options)
        n = recipe.loop.seq_len
        if len(data.train) <= n or len(data.val) < n:
            raise ArchlabError(f"loop.seq_len: {n} tokens do not fit the text of {recipe.data.name!r} "
                               f"({len(data.train)} train, {len(data.val)} val tokens)")
        return data

    @classmethod
    def model_defaults(cls, recipe: Recipe, data: TextDataset) -> dict[str, Any]:
        """Vocabulary (text + 4 special tokens), the pad id, a position table long enough for a window
        with [CLS] and [SEP], and the MLM head -- for the keys the model's config has."""
        model_cls = get(recipe.model_name).cls
        special = SpecialTokens(data.vocab_size)
        need = recipe.loop.seq_len + 2
        values: dict[str, Any] = {"vocab_size": special.vocab_size, "pad_token_id": special.pad, "head": "mlm",
                                  "max_position_embeddings": need}
        have = set(field_names(model_cls.config_class))
        values = {k: v for k, v in values.items() if k in have}
        if "max_position_embeddings" in values and hasattr(model_cls, "max_length"):
            # Some models lose rows of the table to an offset (RoBERTa numbers positions from pad + 1):
            # ask the model how many rows a roomy table loses, and add them.
            base = {**values, **recipe.model_config}
            roomy = need + int(base.get("vocab_size", 0)) + 1
            probe = build_config(recipe.model_name, {**base, "max_position_embeddings": roomy})
            values["max_position_embeddings"] = need + roomy - model_cls.max_length(probe)
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
        tc, dc, lc = recipe.train, recipe.data, recipe.loop
        if hasattr(model, "max_length") and model.max_length(model.config) < lc.seq_len + 2:
            raise ArchlabError(f"model.max_position_embeddings: {recipe.model_name!r} takes at most "
                               f"{model.max_length(model.config)} tokens, but a window of loop.seq_len = {lc.seq_len} "
                               f"has {lc.seq_len + 2} with [CLS] and [SEP]")
        super().__init__(recipe, model.to(ctx.device), data, ctx)
        self.seq_len = lc.seq_len
        per_epoch = max(1, len(data.train) // (dc.batch_size * lc.seq_len * tc.accumulate))
        self.total_steps = tc.steps or max(1, round(tc.epochs * per_epoch))
        self.eval_every = tc.eval_every or per_epoch
        self.opt = self.trainable("model", self.model)
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
        return masking(ids, self.special.num_text, self.special.mask, gen, self.cfg.mask_prob)

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

        tc = self.recipe.train
        return self.opt.accumulated_step(tc.accumulate, tc.l1, micro_loss)

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
        return {"model": self.opt.state_dict(), "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["model"])
        self.gen.set_state(state["gen"])
