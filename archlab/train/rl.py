"""Reinforcement learning on the engine: an agent's ``iteration()`` is the driver's step.

Optimizers: every algorithm names its trainables (on-policy ``policy``, DQN ``q``, SAC ``actor``,
``critic`` and ``temperature``, TD3 ``actor`` and ``critic``); ``[optim]`` sets keys shared by all of
them and ``[optim.NAME]`` one, over the algorithm's defaults (Stable-Baselines3's). Schedules count
environment steps (``linear`` decays to ``lr * min_lr_ratio`` at ``train.steps``).

One driver step = one algorithm iteration (a PPO rollout + its epochs, a chunk of DQN env steps and
gradient steps, an A3C round ...). Everything in the recipe counts *environment steps* (all env copies
together): ``train.steps`` is the budget, ``train.eval_every`` and ``train.checkpoint_every`` are
intervals in environment steps, converted here into iterations. ``train.log_every`` counts iterations.

Every evaluation plays ``env.eval_episodes`` episodes of the deterministic policy on fresh envs and
reports ``val_return_mean`` / ``val_return_std`` (logged under split "val"). The run's final metrics are
an evaluation seeded from the run's seed -- ``eval_return_mean``, ``eval_return_std`` -- plus
``train_return_mean`` (last 100 training episodes), ``episodes`` and ``env_steps``.

Checkpoints hold the networks, optimizers, normalization statistics, the agent's generators, the
episode log, the replay buffer (off-policy: its filled part) and, for classic-control and toy-text
environments, the environments' own state -- so a resumed run continues exactly. Environments with
other internal state (Box2D physics) start fresh episodes on resume.

Files: ``episodes.csv`` (step, return, length of every training episode) and ``plots/returns.png``.
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..engine.loop import Context, Loop, register_loop
from ..errors import ArchlabError
from ..io import atomic_write_bytes

if TYPE_CHECKING:
    from ..recipe import Recipe

EPISODES_FILE = "episodes.csv"


@dataclass
class EnvConfig:
    """``[env]`` of RL recipes: the environment."""

    id: str
    """gymnasium environment id, e.g. ``CartPole-v1`` (or one of archlab's toy envs, ``archlab/Identity-v0``)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of ``gymnasium.make``, e.g. ``{ is_slippery = false }``."""
    eval_episodes: int = 10
    """Episodes of the deterministic policy averaged by each evaluation."""

    def __post_init__(self) -> None:
        if not 1 <= self.eval_episodes <= 10_000:
            raise ValueError(f"eval_episodes must be in [1, 10000], got {self.eval_episodes}")


def make_agent(recipe: Recipe, seed: int | None = None, device: str = "cpu") -> Any:
    from ..rl import get_algo

    env = recipe.tables["env"]
    cls = get_algo(recipe.model_name)
    return cls(env.id, seed=recipe.seed if seed is None else seed, device=device, env_options=env.options,
               total_steps=recipe.train.steps, optim=recipe.optim, **recipe.model_config)


@register_loop("rl")
class ReinforcementLearning(Loop):
    """Reinforcement learning on gymnasium environments: one step = one iteration of the algorithm."""

    model_table = "algo"
    model_families = ("rl",)
    uses_data = False
    tables = {"env": EnvConfig}
    # Every name an algorithm may use; each algorithm declares its own (trainables_for): on-policy
    # "policy", DQN "q", SAC "actor" + "critic" + "temperature", TD3 "actor" + "critic", Q-learning none.
    trainables = ("policy", "q", "actor", "critic", "temperature")
    metrics = ("eval_return_mean", "eval_return_std", "train_return_mean", "episodes", "env_steps",
               "val_return_mean", "val_return_std")
    monitor = ("val_return_mean", "max")
    progress_keys = ("env_steps", "episodes", "return", "steps_per_s")

    @classmethod
    def trainables_for(cls, model_name: str, model_config: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """The algorithm's optimizers (``[optim.NAME]``) with its own defaults (SB3's: e.g. A2C's
        RMSprop at 7e-4, DQN's Adam at 1e-4); the algorithm has checked its ``[algo]`` keys already."""
        from ..rl import get_algo

        return get_algo(model_name).trainables_for(model_config)

    @classmethod
    def build_model(cls, recipe: Recipe, data: Any, device: torch.device) -> Any:
        if recipe.train.steps < 1:
            raise ArchlabError("train.steps: reinforcement learning counts environment steps; set train.steps")
        return make_agent(recipe, device=str(device))

    def __init__(self, recipe: Recipe, agent: Any, data: Any, ctx: Context) -> None:
        if ctx.dist.world_size > 1:
            raise ArchlabError("--nproc is not supported for reinforcement learning (A3C has its own workers)")
        super().__init__(recipe, agent, data, ctx)
        self.agent = agent
        self.env = recipe.tables["env"]
        tc = recipe.train
        self.env_steps = tc.steps
        per_iter = self.steps_per_iteration()
        self.total_steps = math.ceil(tc.steps / per_iter)
        # The driver asks after every iteration; evaluate() answers only when the iteration crossed a
        # multiple of train.eval_every environment steps (iterations can vary in length).
        self.eval_every = 1 if tc.eval_every else 0
        self._before = 0
        self._checkpoint_every = max(1, round(tc.checkpoint_every / per_iter)) if tc.checkpoint_every else 0
        self._t0: float | None = None
        self._s0 = 0

    def steps_per_iteration(self) -> int:
        """Environment steps one iteration takes (at least, for algorithms whose iterations are whole
        episodes); the algorithms declare it as ``iteration_steps``."""
        return max(1, int(self.agent.iteration_steps))

    @property
    def checkpoint_every(self) -> int:
        """``train.checkpoint_every`` counts environment steps: converted into iterations."""
        return self._checkpoint_every

    def finished(self) -> bool:
        """The environment-step budget is spent (the driver's step count is only an upper bound when
        iterations vary in length)."""
        return self.agent.num_steps >= self.env_steps

    # -- the driver's interface ------------------------------------------------------------------
    def train_step(self, step: int) -> dict[str, Any]:
        if self._t0 is None:
            self._t0, self._s0 = time.perf_counter(), self.agent.num_steps
        self._before = self.agent.num_steps
        out = dict(self.agent.iteration())
        a = self.agent
        out["env_steps"] = a.num_steps
        out["episodes"] = len(a.episodes)
        ret = a.recent_return()
        if ret is not None:
            out["return"] = ret
        out["steps_per_s"] = int((a.num_steps - self._s0) / max(1e-9, time.perf_counter() - self._t0))
        out.setdefault("loss", 0.0)
        return out

    def evaluate(self, split: str) -> dict[str, float]:
        every, now = self.recipe.train.eval_every, self.agent.num_steps
        if now // every == self._before // every and not self.finished():
            return {}
        seed = self.ctx.seed + 10_000 + self.agent.num_steps  # fresh episodes at every evaluation
        mean, std, _ = self.agent.evaluate(self.env.eval_episodes, seed=seed)
        return {f"{split}_return_mean": mean, f"{split}_return_std": std, "env_steps": self.agent.num_steps}

    def final_metrics(self) -> dict[str, float]:
        return final_metrics(self.agent, self.recipe, self.ctx.seed)

    def final_object(self) -> Any:
        return self.agent

    def close(self) -> None:
        if hasattr(self.agent, "close"):  # A3C's worker processes
            self.agent.close()

    def state_dict(self) -> dict[str, Any]:
        return {"agent": self.agent.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.agent.load_state_dict(state["agent"])

    # -- files -----------------------------------------------------------------------------------
    def write_artifacts(self, run_dir: str | os.PathLike) -> None:
        run_dir = Path(run_dir)
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["step", "return", "length"])
        w.writerows(self.agent.episodes)
        atomic_write_bytes(run_dir / EPISODES_FILE, buf.getvalue().encode())
        from ..plots import plot_returns

        plot_returns([read_episodes(run_dir)], run_dir / "plots" / "returns.png", title=run_dir.name,
                     evals=_eval_points(run_dir))

    @classmethod
    def write_seed_artifacts(cls, run_dirs: list[Path], out: Path, name: str) -> None:
        """Learning curves of all seeds, mean ± std: ``{name}_returns.png``."""
        from ..plots import plot_returns

        plot_returns([read_episodes(d) for d in run_dirs], out / f"{name}_returns.png", title=name)

    @classmethod
    def evaluate_run(cls, run_dir: str | os.PathLike, recipe: Recipe, ctx: Context) -> dict[str, float]:
        """``archlab eval RUN``: the final metrics of a finished RL run, recomputed (the training
        episodes come from its ``episodes.csv``)."""
        from ..rl import load

        agent = load(run_dir, device=str(ctx.device))
        try:
            return final_metrics(agent, recipe, recipe.seed, episodes=read_episodes(run_dir))
        finally:
            if hasattr(agent, "close"):
                agent.close()


def final_metrics(agent: Any, recipe: Recipe, seed: int,
                  episodes: list[tuple[int, float, int]] | None = None) -> dict[str, float]:
    mean, std, _ = agent.evaluate(recipe.tables["env"].eval_episodes, seed=seed + 1_000_000)
    eps = agent.episodes if episodes is None else episodes
    out = {"eval_return_mean": mean, "eval_return_std": std, "episodes": len(eps),
           "env_steps": eps[-1][0] if episodes is not None and eps else agent.num_steps}
    if eps:
        last = [r for _, r, _ in eps[-100:]]
        out["train_return_mean"] = sum(last) / len(last)
    return out


def read_episodes(run_dir: str | os.PathLike) -> list[tuple[int, float, int]]:
    path = Path(run_dir) / EPISODES_FILE
    if not path.is_file():
        raise ArchlabError(f"{run_dir} has no {EPISODES_FILE}: not a finished RL run")
    with path.open() as fh:
        rows = list(csv.reader(fh))[1:]
    return [(int(s), float(r), int(n)) for s, r, n in rows]


def _eval_points(run_dir: Path) -> list[tuple[int, float, float]]:
    """(env step, mean, std) of the periodic evaluations in metrics.jsonl."""
    from ..engine.metrics import read_metrics

    return [(r["env_steps"], r["val_return_mean"], r["val_return_std"])
            for r in read_metrics(run_dir / "metrics.jsonl") if r["split"] == "val" and "val_return_mean" in r]
