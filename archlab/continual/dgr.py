"""Deep Generative Replay (Shin et al. 2017, "Continual Learning with Deep Generative Replay"), in the
form van de Ven & Tolias 2019 ("Three scenarios for continual learning", Sec. 4) use: a VAE generator
learns the inputs of every task so far, and samples from it, labelled by the solver as it was after
the previous task, are replayed alongside the current task.

While task t (0-based) trains, each step draws a replay batch x' (B', 784) from the generator G_{t-1}
frozen at the end of task t-1 (z ~ N(0, I), x' = sigmoid(decoder(z)), the decoder's mean), labels it
with the frozen solver S_{t-1}, and trains

    solver     L_S = 1/(t+1) * CE(current batch) + t/(t+1) * L_replay(x')
    generator  L_G = 1/(t+1) * ELBO-loss(current x) + t/(t+1) * ELBO-loss(x')       (per pixel)

with L_replay, per scenario (van de Ven & Tolias' code):

- Class-IL: cross-entropy over the units of tasks 0..t (the current task's included), target argmax of
  S_{t-1}(x') over the units of tasks 0..t-1 (``dgr_targets = "hard"``, their "DGR"), or the soft
  targets softmax(S_{t-1}(x') / T) on those units, zero on the new ones, with the T^2-scaled
  cross-entropy of LwF (``"soft"``, their "DGR+distill");
- Domain-IL: the same over the shared units;
- Task-IL: the same on each previous task's own units, averaged over the t previous tasks (every
  replayed sample is replayed once as each earlier task).

At task 0 both train on the current task only. The generator is the generative family's VAE
(:mod:`archlab.models.generative.vae`, built by name through the registry: MLP encoder
784-``dgr_hidden``-``dgr_latent``, ReLU, Bernoulli decoder), optimized by ``[optim.generator]``
(default: the recipe's ``[optim]``, Adam 1e-3 in the paper). Its step happens after the solver's.
The generator works in pixel space [0, 1]: the dataset's inputs (MNIST: standardised) are mapped there
affinely with the training split's extremes, x01 = (x - min) / (max - min), and samples back.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from .base import Method, MethodContext, active_cross_entropy, register_method


def frozen(module: torch.nn.Module) -> torch.nn.Module:
    """An evaluation-mode copy of ``module`` with no gradients."""
    out = copy.deepcopy(module).eval()
    for p in out.parameters():
        p.requires_grad_(False)
    return out


@register_method("dgr")
class DGR(Method):
    """Generative replay: a VAE replays the inputs of earlier tasks, the previous solver labels them."""

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__(ctx)
        from ..registry import create

        if ctx.trainable is None:
            raise ValueError("DGR trains a generator: the loop must hand the method its trainable factory")
        self.generator = create("vae", input_dim=ctx.stream.features, image_shape=[ctx.stream.features],
                                hidden=list(self.cfg.dgr_hidden), latent_dim=self.cfg.dgr_latent,
                                activation="relu", likelihood="bernoulli").to(ctx.device)
        self.gen_opt = ctx.trainable("generator", self.generator)
        self.previous_solver: torch.nn.Module | None = None
        self.previous_generator: torch.nn.Module | None = None
        self.noise = torch.Generator().manual_seed(ctx.seed + 7919)
        train_x = ctx.stream.data.train.x
        self.lo, self.span = float(train_x.min()), float(train_x.max() - train_x.min())
        self._batch: tuple[torch.Tensor, torch.Tensor | None, int] | None = None

    # -- replay --------------------------------------------------------------------------------------
    @torch.no_grad()
    def replay_inputs(self, n: int) -> torch.Tensor:
        """``n`` samples (n, D) of the previous generator: decoder means at z ~ N(0, I)."""
        z = torch.randn(n, self.cfg.dgr_latent, generator=self.noise).to(self.ctx.device)
        return self.previous_generator.decode(z).sigmoid() * self.span + self.lo

    def replay_loss(self, logits: torch.Tensor, old: torch.Tensor, task: int) -> torch.Tensor:
        """L_replay of the replayed batch: solver logits vs the previous solver's, per scenario. Domain- and
        Class-IL: the softmax runs over every unit active now (the current task's too, so replayed old
        inputs push the new units down), the targets come from the previous solver's units (soft: zero
        probability on the new units, as van de Ven & Tolias' code pads them)."""
        stream, dev = self.stream, logits.device
        if stream.scenario == "task":
            pairs = [(stream.units[j].to(dev), stream.units[j].to(dev)) for j in range(task)]
        else:
            pairs = [(stream.active(task, task).to(dev), stream.active(task - 1, task - 1).to(dev))]
        total = logits.new_zeros(())
        for units, old_units in pairs:
            if self.cfg.dgr_targets == "soft":
                T = self.cfg.lwf_temperature
                soft = torch.zeros(len(logits), len(units), device=dev)
                position = torch.searchsorted(units, old_units)
                soft[:, position] = torch.softmax(old[:, old_units] / T, dim=1)
                log_p = torch.log_softmax(logits[:, units] / T, dim=1)
                total = total - (soft * log_p).sum(1).mean() * T ** 2
            else:
                target = old_units[old[:, old_units].argmax(1)]
                total = total + active_cross_entropy(logits, target, units)
        return total / len(pairs)

    def loss(self, x: torch.Tensor, target: torch.Tensor, task: int) -> tuple[torch.Tensor, dict[str, float]]:
        ce = self.current_loss(x, target, task)
        if self.previous_solver is None or task == 0:
            self._batch = (x.detach(), None, task)
            return ce, {}
        rx = self.replay_inputs(self.ctx.batch_size)
        with torch.no_grad():
            old = self.previous_solver(rx)
        replayed = self.replay_loss(self.model(rx), old, task)
        self._batch = (x.detach(), rx, task)
        w = 1.0 / (task + 1)
        return w * ce + (1 - w) * replayed, {"replay_loss": float(replayed.detach())}

    # -- the generator's step --------------------------------------------------------------------------
    def generator_loss(self, x: torch.Tensor, rx: torch.Tensor | None, task: int) -> torch.Tensor:
        """The VAE's negative ELBO per pixel, current and replayed inputs (dataset scale) weighted like the solver's."""
        per_pixel = self.ctx.stream.features
        x = ((x - self.lo) / self.span).clamp(0, 1)
        rx = None if rx is None else ((rx - self.lo) / self.span).clamp(0, 1)
        current = self.generator.terms(x)["loss"].mean() / per_pixel
        if rx is None:
            return current
        w = 1.0 / (task + 1)
        return w * current + (1 - w) * self.generator.terms(rx)["loss"].mean() / per_pixel

    def after_step(self) -> None:
        if self._batch is None:
            return
        x, rx, task = self._batch
        self._batch = None
        self.generator.train()
        self.gen_opt.zero_grad()
        self.gen_opt.backward(self.generator_loss(x, rx, task))
        self.gen_opt.step()

    def end_task(self, task: int) -> None:
        self.previous_solver = frozen(self.model)
        self.previous_generator = frozen(self.generator)

    # -- state -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.gen_opt.state_dict(), "noise": self.noise.get_state(),
                "previous_solver": None if self.previous_solver is None else self.previous_solver.state_dict(),
                "previous_generator": (None if self.previous_generator is None
                                       else self.previous_generator.state_dict())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gen_opt.load_state_dict(state["generator"])
        self.noise.set_state(state["noise"])
        if state["previous_solver"] is not None:
            self.end_task(-1)
            self.previous_solver.load_state_dict(state["previous_solver"])
            self.previous_generator.load_state_dict(state["previous_generator"])

