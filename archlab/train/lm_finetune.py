"""Language-model fine-tuning, full or with LoRA adapters, after an optional pretraining phase -- one run.

The training stream ``s`` (the dataset's train split) is cut at ``loop.split``: the first part is the
pretraining text, the rest the fine-tuning text, so the fine-tuning data are held out from pretraining.

1. ``pretrain`` (``loop.pretrain_steps`` steps, optimizer ``[optim.pretrain]``): next-token training of
   the whole model on the first part, exactly as the ``lm`` loop trains (random windows, cross-entropy).
   With ``pretrain_steps = 0`` the model comes from ``train.init_from`` (a finished run) instead.
2. ``model`` (``train.steps``, optimizer ``[optim.model]``): fine-tuning on the second part. With
   ``loop.lora_rank = r > 0`` the Linear layers named by ``loop.lora_targets`` get LoRA adapters
   (:mod:`archlab.nn.lora`, Hu et al. 2021) and only the adapters train; ``lora_rank = 0`` trains every
   weight (full fine-tuning).

Both recipes of a LoRA-versus-full comparison therefore share the pretraining phase bit for bit (same
seed, model and ``[optim.pretrain]``) and the fine-tuning batches (their own generator).

Metrics: ``train_loss`` (on the fine-tuning text), ``val_loss`` and ``val_ppl`` as in the ``lm`` loop;
``pretrained_val_loss`` (the same estimate, same batches, just before fine-tuning starts);
``trainable_params`` and ``trainable_fraction`` (trainable parameters of the fine-tuning phase over the
base model's parameters). The saved model is the fine-tuned one with the adapters merged into the
weights (``W_0 + (alpha / r) B A``): a plain model of the same architecture, for ``archlab generate``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..data.text import TextDataset
from ..engine.loop import Context, Trainable, register_loop
from ..errors import ArchlabError
from ..models.base import ArchModel
from ..nn.lora import LoRAConfig, LoRAInit, count_trainable, inject_lora, merge_lora
from .lm import LanguageModeling, LMConfig, random_windows

if TYPE_CHECKING:
    from ..recipe import Recipe

#: Offset of the fine-tuning batches' generator from the run seed (pretraining draws from ``seed``, the
#: lm loop's generator; the final estimate from ``seed + 2``).
FINETUNE_SEED = 3


@dataclass
class LMFinetuneConfig(LMConfig):
    """``[loop]`` of the lm_finetune loop."""

    eval_iters: int = 200
    """Random batches of train and of val averaged per evaluation (as in the lm loop)."""
    pretrain_steps: int = 0
    """Steps of the pretraining phase on the first ``split`` of the text (0: none; use train.init_from)."""
    split: float = 0.5
    """Share of the training stream, from its start, that is pretraining text; fine-tuning uses the rest
    (0: fine-tune on all of it, only without a pretraining phase)."""
    lora_rank: int = 0
    """LoRA rank r of the fine-tuning phase; 0: full fine-tuning of every weight."""
    lora_alpha: float = 16.0
    """LoRA scale numerator: the update is (alpha / r) B A."""
    lora_dropout: float = 0.0
    """Dropout on the adapters' input."""
    lora_targets: list[str] = field(default_factory=lambda: ["attn.qkv", "attn.out"])
    """Linear layers that get adapters, by name or name suffix (GPT: attn.qkv, attn.out, ffn.fc1, ffn.fc2)."""
    lora_init: LoRAInit = "kaiming"
    """Initialization of A (B starts at zero): kaiming (peft's default) or gaussian."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.pretrain_steps <= 10**9:
            raise ValueError(f"pretrain_steps must be in [0, 1e9], got {self.pretrain_steps}")
        if not 0 <= self.split < 1 or (self.pretrain_steps and self.split == 0):
            raise ValueError(f"split must be in [0, 1), and > 0 with a pretraining phase, got {self.split}")
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0, got {self.lora_rank}")
        if self.lora_rank:  # the adapter settings' own checks
            LoRAConfig(self.lora_rank, self.lora_alpha, self.lora_dropout, list(self.lora_targets), self.lora_init)


@register_loop("lm_finetune")
class LMFinetune(LanguageModeling):
    """Pretrain (optional) then fine-tune a language model, all weights or LoRA adapters (Hu et al. 2021)."""

    Config = LMFinetuneConfig
    trainables = ("pretrain", "model")
    parallel = ("ddp",)  # the lm loop's data-parallel steps; adapters are not sharded
    metrics = ("train_loss", "val_loss", "val_ppl", "pretrained_val_loss", "trainable_params", "trainable_fraction")

    def __init__(self, recipe: Recipe, model: ArchModel, data: TextDataset, ctx: Context) -> None:
        super().__init__(recipe, model, data, ctx)  # checks, streams, generators; total_steps = fine-tuning
        cfg: LMFinetuneConfig = self.cfg
        tc = recipe.train
        stream = self.ids["train"]
        cut = int(len(stream) * cfg.split)
        self.streams = {"pretrain": stream[:cut], "finetune": stream[cut:]}
        for part, ids in self.streams.items():
            if (part == "finetune" or cfg.pretrain_steps) and len(ids) <= self.block_size:
                raise ArchlabError(f"loop.split {cfg.split}: the {part} text has {len(ids)} tokens, not more than "
                                   f"block_size {self.block_size}")
        self.pretrain_steps = cfg.pretrain_steps
        self.finetune_steps = self.total_steps
        self.total_steps = self.pretrain_steps + self.finetune_steps
        self.eval_every = tc.eval_every or self.total_steps
        self.pre_opt: Trainable | None = None
        if self.pretrain_steps:
            self.pre_opt = Trainable("pretrain", self.model, recipe.optim["pretrain"], self.pretrain_steps, ctx,
                                     tc.grad_clip)
            self.ids["train"] = self.streams["pretrain"]
        else:
            self.ids["train"] = self.streams["finetune"]
        self.opt = None  # the fine-tuning Trainable, built when fine-tuning starts (after LoRA injection)
        self.ft_gen = torch.Generator().manual_seed(ctx.seed + FINETUNE_SEED)
        self.pretrained_val_loss: float | None = None
        self.trainable_params = self.base_params = 0
        self.merged = False

    # ----------------------------------------------------------------------------- phases
    def _start_finetune(self, measure: bool = True) -> None:
        """Estimate the pretrained model's loss, add the adapters (LoRA) and build the fine-tuning optimizer."""
        cfg: LMFinetuneConfig = self.cfg
        self.ids["train"] = self.streams["finetune"]
        if measure:
            self.pretrained_val_loss = self.estimate_loss(
                torch.Generator().manual_seed(self.ctx.seed + 2))["val_loss"]
        self.base_params = count_trainable(self.model)[1]
        if cfg.lora_rank:
            lora = LoRAConfig(cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, list(cfg.lora_targets), cfg.lora_init)
            try:
                inject_lora(self.model, lora)
            except ValueError as exc:
                raise ArchlabError(f"loop.lora_targets: {exc}"[:300]) from None
        self.trainable_params = count_trainable(self.model)[0]
        self.pre_opt = None  # pretraining is over: its optimizer state is not needed any more
        self.opt = Trainable("model", self.model, self.recipe.optim["model"], self.finetune_steps, self.ctx,
                             self.recipe.train.grad_clip)

    def train_step(self, step: int) -> dict[str, Any]:
        pretraining = step < self.pretrain_steps
        if not pretraining and self.opt is None:
            self._start_finetune()
        opt = self.pre_opt if pretraining else self.opt
        gen = self.gen if pretraining else self.ft_gen
        ids = self.streams["pretrain" if pretraining else "finetune"]
        d = self.ctx.dist

        def micro_loss() -> torch.Tensor:
            # Every worker draws the same global batch (same generator) and keeps its own slice.
            x, y = random_windows(ids, self.block_size, self.recipe.data.batch_size, gen, self.offsets)
            if d.enabled:
                b = len(x) // d.world_size
                x, y = x[d.rank * b:(d.rank + 1) * b], y[d.rank * b:(d.rank + 1) * b]
            return self._loss(x, y)

        tc = self.recipe.train
        assert opt is not None
        return {**opt.accumulated_step(tc.accumulate, tc.l1, micro_loss), "phase": 0 if pretraining else 1}

    # ----------------------------------------------------------------------------- results
    def final_metrics(self) -> dict[str, float]:
        out = super().final_metrics()
        if self.pretrained_val_loss is not None:
            out["pretrained_val_loss"] = self.pretrained_val_loss
        if self.base_params:
            out["trainable_params"] = float(self.trainable_params)
            out["trainable_fraction"] = self.trainable_params / self.base_params
        return out

    def final_object(self) -> Any:
        """The fine-tuned model with its adapters merged into the weights (a plain model again)."""
        if not self.merged:
            merge_lora(self.model)
            self.merged = True
        return self.model

    @classmethod
    def evaluate_run(cls, run_dir: str | os.PathLike, recipe: Recipe, ctx: Context) -> dict[str, float]:
        """``archlab eval RUN``: losses of the saved (merged) model; the training-time counts stay in summary.json."""
        from ..registry import load

        loop = cls(recipe, load(run_dir, map_location=str(ctx.device)), cls.load_data(recipe), ctx)
        loop.ids["train"] = loop.streams["finetune"]
        return loop.final_metrics()

    # ----------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"pretrain": self.pre_opt.state_dict() if self.pre_opt is not None and self.opt is None else None,
                "model": self.opt.state_dict() if self.opt is not None else None,
                "gen": self.gen.get_state(), "ft_gen": self.ft_gen.get_state(), "eval_gen": self.eval_gen.get_state(),
                "pretrained_val_loss": self.pretrained_val_loss,
                "trainable_params": self.trainable_params, "base_params": self.base_params}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["model"] is not None:  # fine-tuning had started: same adapters, then their trained values
            if self.opt is None:
                self._start_finetune(measure=False)
            assert self.opt is not None
            self.opt.load_state_dict(state["model"])
        elif self.pre_opt is not None:
            self.pre_opt.load_state_dict(state["pretrain"])
        self.gen.set_state(state["gen"])
        self.ft_gen.set_state(state["ft_gen"])
        self.eval_gen.set_state(state["eval_gen"])
        self.pretrained_val_loss = state["pretrained_val_loss"]
        self.trainable_params, self.base_params = state["trainable_params"], state["base_params"]
