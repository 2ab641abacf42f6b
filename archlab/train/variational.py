"""What the variational quantum loops (``vqe``, ``qaoa``, ``born``) share: one step = one optimizer step on a
differentiable objective of a circuit model, no data, one process, the best evaluation kept.

Not a registered loop: :class:`VariationalLoop` is the base each of those files subclasses, naming the model
attribute that identifies its models (``model_attr``) and writing :meth:`objective`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..engine.loop import Context, Loop
from ..errors import ArchlabError

if TYPE_CHECKING:
    from ..recipe import Recipe


class VariationalLoop(Loop):
    """One optimizer step per driver step on :meth:`objective`; evaluation every tenth of the run by default."""

    model_families = ("quantum",)
    uses_data = False
    keep_best = True
    model_attr = ""
    """An attribute every model this loop trains has (checked before any work)."""
    model_kind = ""
    """What those models are called (in messages)."""

    @classmethod
    def check_fit(cls, recipe: Recipe, data: Any, model: Any) -> None:
        if not hasattr(model, cls.model_attr):
            raise ArchlabError(f"the {cls.name} loop trains {cls.model_kind}; {recipe.model_name!r} is not one")

    def __init__(self, recipe: Recipe, model: Any, data: Any, ctx: Context) -> None:
        if ctx.dist.enabled:
            raise ArchlabError(f"the {self.name} loop runs in one process; drop --nproc")
        super().__init__(recipe, model, data, ctx)
        tc = recipe.train
        if not tc.steps:
            raise ArchlabError(f"train.steps: the {self.name} loop needs a number of optimizer steps")
        self.total_steps = tc.steps
        self.eval_every = tc.eval_every or max(1, tc.steps // 10)
        self.opt = self.trainable("model", model)

    def objective(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(what to minimize, the loss to log) for the current parameters."""
        raise NotImplementedError

    def train_step(self, step: int) -> dict[str, Any]:
        loss, logged = self.objective()
        self.opt.zero_grad()
        self.opt.backward(loss)
        return {"loss": logged.detach(), "lr": self.opt.step()}

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["model"])
