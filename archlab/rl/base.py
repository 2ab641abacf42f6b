"""The agent interface every algorithm implements, and everything algorithms share.

An algorithm is a subclass of :class:`Agent` with a hyperparameter dataclass (``Config``, a
docstring per field) and four methods:

- ``build()``: networks, optimizers and buffers (called once, under the agent's seed);
- ``trainable_names(cfg)``: the names of its optimizers (PPO ``policy``; SAC ``actor``, ``critic``,
  ``temperature`` ...) and ``optim_defaults``, the optimizer it uses by default (SB3's);
- ``iteration() -> dict``: collect some environment steps and update (one rollout + PPO epochs,
  ``train_freq`` DQN steps + gradient steps, ...); returns scalars to log (``loss`` among them);
- ``act(obs, deterministic) -> np.ndarray``: actions the environment accepts, for a batch of
  (already normalized) observations as a float tensor;
- ``networks() -> dict[str, nn.Module]``: what ``save`` writes; ``train_state()`` /
  ``load_train_state()``: optimizers, buffers and counters for checkpoints.

The base class provides the Stable-Baselines3-style API -- ``learn(total_steps)``,
``predict(obs)``, ``evaluate(n_episodes)``, ``save(dir)``, ``Agent.load(dir)`` -- and the pieces of
bookkeeping every algorithm needs: the vectorized env, observation/reward normalization, the
episode log, private random generators, and checkpointable state. The engine's RL loop
(``archlab.train.rl``) drives ``iteration()``; ``learn`` is the same loop without run directories.

Optimizers come from the engine (:mod:`archlab.engine.optim`): one
:class:`~archlab.engine.optim.OptimConfig` per named trainable -- in a recipe the ``[optim]`` table
(shared keys) and ``[optim.NAME]`` (one trainable); in the plain API ``optim=OptimConfig(...)`` (every
trainable), ``optim={"actor": OptimConfig(...), ...}``, or Stable-Baselines3's keywords
``learning_rate``, ``lr_schedule`` (``constant``/``linear``), ``optimizer`` (``adam``/``rmsprop``),
``optimizer_eps`` and ``rmsprop_alpha``. Learning-rate schedules run on the RL clock: the schedule's
step is the environment step and its length ``total_steps`` (``linear`` decays to 0 over the run, as
rl-zoo's ``lin_``; warm-up and step milestones count environment steps too).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from .. import config as _config
from ..engine.optim import OptimConfig, build_optimizer, lr_factor
from ..errors import ArchlabError
from ..registry import CONFIG_FILE, WEIGHTS_FILE, read_saved
from .env import Normalizer, VecEnv

OPTIM_KEYWORDS = {"learning_rate": "lr", "lr_schedule": "schedule", "optimizer": "name",
                  "optimizer_eps": "eps", "rmsprop_alpha": "alpha"}
"""The plain API's Stable-Baselines3-style optimizer keywords and the ``OptimConfig`` key each sets."""


@dataclasses.dataclass
class AgentConfig:
    """Hyperparameters every algorithm has. Algorithms extend this dataclass."""

    moved_keys: ClassVar[dict[str, str]] = {key: f"optim.{new}" for key, new in OPTIM_KEYWORDS.items()}
    """Optimizer keys an ``[algo]`` table once had: naming one is an error that names its new place."""

    n_envs: int = 1
    """Environment copies stepped in lock step."""
    gamma: float = 0.99
    """Discount factor."""
    net_arch: list[int] = dataclasses.field(default_factory=lambda: [64, 64])
    """Hidden layer widths of the networks."""
    activation: str = "tanh"
    """Hidden activation: tanh, relu, elu, gelu or silu."""
    normalize_obs: bool = False
    """Running mean/std normalization of observations (SB3 VecNormalize)."""
    normalize_reward: bool = False
    """Scale rewards by the running std of the discounted return (SB3 VecNormalize)."""

    def __post_init__(self) -> None:
        if self.n_envs < 1:
            raise ValueError(f"n_envs must be >= 1, got {self.n_envs}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")
        if any(w < 1 for w in self.net_arch):
            raise ValueError(f"net_arch widths must be >= 1, got {self.net_arch}")


class Agent:
    """Base class of every RL algorithm (see the module docstring)."""

    algo: ClassVar[str] = ""
    export_blocker: ClassVar[str | None] = ("an RL agent acts in an environment (rollouts, buffers, several "
                                            "networks); it is not one network with a tensor input")
    """Why ``archlab export`` does not apply (see :attr:`archlab.models.base.ArchModel.export_blocker`)."""
    Config: ClassVar[type[AgentConfig]] = AgentConfig
    optim_defaults: ClassVar[dict[str, Any]] = {"name": "adam", "lr": 3e-4}
    """The optimizer of every trainable unless ``[optim]`` says otherwise (Stable-Baselines3's)."""

    @classmethod
    def trainable_names(cls, cfg: Any) -> tuple[str, ...]:
        """Names of the optimized units (``[optim.NAME]``) of an agent with hyperparameters ``cfg``."""
        return ()

    @classmethod
    def trainables_for(cls, hyperparameters: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """The engine's view (:meth:`archlab.engine.loop.Loop.trainables_for`): each trainable of an
        agent with these ``[algo]`` keys, with its ``[optim]`` defaults."""
        cfg = _config.build(cls.Config, dict(hyperparameters), "algo")
        return {name: dict(cls.optim_defaults) for name in cls.trainable_names(cfg)}

    @classmethod
    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.config_class = cls.Config  # the registry's name for the hyperparameter dataclass
        cls.registry_name = cls.algo

    def __init__(self, env: str, *, seed: int = 0, device: str = "cpu", env_options: dict[str, Any] | None = None,
                 total_steps: int | None = None, optim: OptimConfig | Mapping[str, OptimConfig] | None = None,
                 **hyperparameters: Any) -> None:
        """Build an agent for gymnasium env id ``env`` with ``hyperparameters`` (the fields of
        ``Config``; unknown names and bad values are one-line errors). ``total_steps`` sets the
        horizon of learning-rate schedules (``learn`` sets it too). The optimizers: ``optim`` (one
        ``OptimConfig`` for every trainable, or one per name), or the keywords ``learning_rate``,
        ``lr_schedule``, ``optimizer``, ``optimizer_eps``, ``rmsprop_alpha`` over ``optim_defaults``."""
        if not isinstance(env, str):
            raise ArchlabError("pass the environment as a gymnasium id string, e.g. 'CartPole-v1'")
        own = set(_config.field_names(self.Config))  # Q-learning's learning_rate is its own (the TD step size)
        keywords = {OPTIM_KEYWORDS[k]: hyperparameters.pop(k) for k in list(hyperparameters)
                    if k in OPTIM_KEYWORDS and k not in own}
        self.cfg = _config.build(self.Config, hyperparameters, "algo")
        self.optim = self._resolve_optim(optim, keywords)
        """One engine ``OptimConfig`` per trainable name."""
        self.env_id, self.env_options, self.seed = env, dict(env_options or {}), seed
        self.device = torch.device(device)
        self.env = VecEnv(env, self.cfg.n_envs, seed, self.env_options)
        self.spaces = self.env.info
        self.normalizer = Normalizer(self.spaces.obs_shape, self.cfg.n_envs, self.cfg.normalize_obs,
                                     self.cfg.normalize_reward, self.cfg.gamma)
        # Private generators: the same seed gives the same run whatever else uses the global RNGs.
        self.gen = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.total_steps = total_steps or 0
        self.num_steps = 0
        self.num_updates = 0
        self.episodes: list[tuple[int, float, int]] = []
        """(env step at the end, return, length) of every finished training episode."""
        self.obs: np.ndarray | None = None
        """The current (normalized) observations of the training envs."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.build()
        for net in self.networks().values():
            net.to(self.device)

    def _resolve_optim(self, optim: OptimConfig | Mapping[str, Any] | None,
                       keywords: dict[str, Any]) -> dict[str, OptimConfig]:
        names = self.trainable_names(self.cfg)
        if optim is not None and keywords:
            raise ArchlabError(f"pass the optimizer either as optim= or as keywords ({', '.join(sorted(keywords))}), "
                               f"not both")
        if isinstance(optim, OptimConfig):
            optim = {name: optim for name in names}
        optim = dict(optim or {})
        unknown = sorted(set(optim) - set(names))
        if unknown:
            raise ArchlabError(f"optim.{unknown[0]}: {self.algo} has no optimizer {unknown[0]!r}; its optimizers: "
                               f"{', '.join(names) or 'none'}")
        out = {}
        for name in names:
            cfg = optim.get(name)
            if cfg is None:
                cfg = _config.build(OptimConfig, {**self.optim_defaults, **keywords}, "optim")
            elif not isinstance(cfg, OptimConfig):  # a saved agent's config.json
                cfg = _config.build(OptimConfig, cfg, f"optim.{name}")
            out[name] = cfg
        return out

    def make_optimizer(self, name: str, params: nn.Module | Iterable[torch.Tensor],
                       fused: bool = False) -> torch.optim.Optimizer:
        """The engine optimizer of trainable ``name`` (``[optim.NAME]``) over ``params`` (a module:
        no weight decay on biases; a list of tensors, e.g. one flat parameter: decay on all);
        ``fused``: one kernel per step for a few large tensors (see ``build_optimizer``)."""
        return build_optimizer(params if isinstance(params, nn.Module) else list(params), self.optim[name], fused)

    # -- what algorithms implement --------------------------------------------------------------
    def build(self) -> None:
        raise NotImplementedError

    def iteration(self) -> dict[str, Any]:
        raise NotImplementedError

    def act(self, obs: torch.Tensor, deterministic: bool) -> np.ndarray:
        raise NotImplementedError

    def networks(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def train_state(self) -> dict[str, Any]:
        """Optimizers, buffers and algorithm counters (tensors and JSON-able values)."""
        return {}

    def load_train_state(self, state: dict[str, Any]) -> None:
        pass

    @property
    def iteration_steps(self) -> int:
        """Environment steps one ``iteration()`` takes (a lower bound when iterations are whole
        episodes); the engine converts step budgets and intervals with it. Default: one rollout of
        ``n_steps`` per env copy when the config has ``n_steps``, else one step per env copy."""
        if "_iteration_steps" in self.__dict__:  # set by the algorithm
            return self.__dict__["_iteration_steps"]
        return getattr(self.cfg, "n_steps", 1) * self.cfg.n_envs

    @iteration_steps.setter
    def iteration_steps(self, value: int) -> None:
        self.__dict__["_iteration_steps"] = value

    # -- helpers for algorithms -----------------------------------------------------------------
    def start(self) -> np.ndarray:
        """Reset the training envs on first use; returns the current normalized observations."""
        if self.obs is None:
            raw = self.env.reset()
            self.normalizer.observe(raw)
            self.obs = self.normalizer.obs(raw)
        return self.obs

    def env_step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step the training envs; update counters, the episode log and normalization statistics.

        Returns (next normalized obs, normalized reward, terminated, truncated, info); for copies
        whose episode ended, ``info["final_obs"][i]`` is the normalized last observation."""
        raw, rew, term, trunc, info = self.env.step(actions)
        self.num_steps += self.env.n
        for ret, length in info["episodes"]:
            self.episodes.append((self.num_steps, ret, length))
        self.normalizer.observe(raw)
        obs = self.normalizer.obs(raw)
        if info["final_obs"] and self.normalizer.norm_obs:
            info["final_obs"] = {i: self.normalizer.obs(o) for i, o in info["final_obs"].items()}
        rew = self.normalizer.reward(rew, term | trunc)
        self.obs = obs
        return obs, rew, term, trunc, info

    def tensor(self, x: np.ndarray) -> torch.Tensor:
        """Observations as the float tensor the networks take (discrete states stay integer)."""
        t = torch.from_numpy(np.ascontiguousarray(x))
        return t.to(self.device) if self.device.type != "cpu" else t

    def progress_remaining(self) -> float:
        """1 at the start of the run, 0 at ``total_steps`` (SB3's ``progress_remaining``)."""
        if not self.total_steps:
            return 1.0
        return max(0.0, 1.0 - self.num_steps / self.total_steps)

    def current_lr(self, name: str) -> float:
        """Trainable ``name``'s learning rate now: ``optim.lr`` times its schedule at the current
        environment step of ``total_steps`` (the peak lr when no horizon is known)."""
        cfg = self.optim[name]
        if not self.total_steps:
            return cfg.lr
        return cfg.lr * lr_factor(self.num_steps, self.total_steps, cfg)

    @staticmethod
    def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
        for g in optimizer.param_groups:
            g["lr"] = lr

    def recent_return(self, n: int = 100) -> float | None:
        """Mean raw return of the last ``n`` finished training episodes."""
        if not self.episodes:
            return None
        return float(np.mean([r for _, r, _ in self.episodes[-n:]]))

    # -- the user API ---------------------------------------------------------------------------
    def learn(self, total_steps: int, progress: bool = True, log_interval_s: float = 10.0) -> Agent:
        """Train until ``total_steps`` environment steps (counted over all env copies) are done."""
        from ..engine.progress import Progress

        if total_steps < 1:
            raise ArchlabError(f"total_steps must be >= 1, got {total_steps}")
        self.total_steps = total_steps
        bar = Progress(total_steps, self.algo, enabled=progress, interval_s=log_interval_s)
        t0, s0 = time.perf_counter(), self.num_steps
        while self.num_steps < total_steps:
            self.iteration()
            bar.update(min(self.num_steps, total_steps), **self.progress_stats(t0, s0))
        bar.close(min(self.num_steps, total_steps))
        return self

    def progress_stats(self, t0: float, s0: int) -> dict[str, Any]:
        rate = (self.num_steps - s0) / max(1e-9, time.perf_counter() - t0)
        stats: dict[str, Any] = {"episodes": len(self.episodes)}
        ret = self.recent_return()
        if ret is not None:
            stats["return"] = round(ret, 2)
        stats["steps/s"] = int(rate)
        return stats

    @torch.no_grad()
    def predict(self, obs: Any, deterministic: bool = True) -> np.ndarray:
        """Actions for raw observations: one observation -> one action; a batch -> a batch."""
        obs = np.asarray(obs)
        single = obs.shape == self.spaces.obs_shape
        batch = obs[None] if single else obs
        if batch.shape[1:] != self.spaces.obs_shape:
            raise ArchlabError(f"observation shape {obs.shape} does not match the env's {self.spaces.obs_shape}")
        batch = batch.astype(np.int64 if self.spaces.n_obs else np.float32)
        if self.normalizer.norm_obs:
            batch = self.normalizer.obs(batch)
        actions = self.act(self.tensor(batch), deterministic)
        return actions[0] if single else actions

    @torch.no_grad()
    def evaluate(self, n_episodes: int = 10, seed: int | None = None,
                 deterministic: bool = True) -> tuple[float, float, list[float]]:
        """Play ``n_episodes`` episodes (one per env copy, in parallel) on fresh envs seeded
        ``seed, seed+1, ...`` (default: a seed disjoint from training's); returns mean, std and the
        per-episode raw returns."""
        if n_episodes < 1:
            raise ArchlabError(f"n_episodes must be >= 1, got {n_episodes}")
        seed = self.seed + 100_000 if seed is None else seed
        env = VecEnv(self.env_id, n_episodes, seed, self.env_options)
        raw = env.reset()
        returns: list[float | None] = [None] * n_episodes
        was_training = self.normalizer.training
        self.normalizer.training = False
        try:
            while any(r is None for r in returns):
                a = self.act(self.tensor(self.normalizer.obs(raw)), deterministic)
                raw, _, term, trunc, info = env.step(a)
                done = term | trunc
                if done.any():
                    for i in np.flatnonzero(done):
                        if returns[i] is None:
                            returns[i] = float(info_return(info, i, env))
        finally:
            self.normalizer.training = was_training
            env.close()
        values = np.asarray(returns, np.float64)
        return float(values.mean()), float(values.std()), values.tolist()

    def parameters(self) -> list[nn.Parameter]:
        return [p for net in self.networks().values() for p in net.parameters()]

    # -- files ----------------------------------------------------------------------------------
    @classmethod
    def create(cls, env: str | None = None, **hyperparameters: Any) -> Agent:
        """``archlab.create(name, env=..., seed=..., **hyperparameters)``: the registry's way in."""
        if env is None:
            raise ArchlabError(f"{cls.algo} is a reinforcement-learning algorithm: pass env=, e.g. "
                               f"archlab.create({cls.algo!r}, env='CartPole-v1')")
        return cls(env, **hyperparameters)

    def describe(self) -> dict[str, Any]:
        from .. import __version__

        return {"kind": "agent", "name": self.algo, "env_id": self.env_id, "env_options": self.env_options,
                "config": _config.to_dict(self.cfg), "optim": {k: _config.to_dict(v) for k, v in self.optim.items()},
                "seed": self.seed, "num_steps": self.num_steps, "archlab_version": __version__}

    def save(self, path: str | Path) -> Path:
        """Write ``config.json`` (kind, algorithm, env, hyperparameters) and ``model.safetensors``
        (network weights and normalization statistics) to folder ``path``."""
        from ..io import atomic_write_bytes, save_tensors_atomic

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {f"{name}.{k}": v.detach().cpu() for name, net in self.networks().items()
                   for k, v in net.state_dict().items()}
        if self.normalizer.active:
            rms = self.normalizer
            tensors.update({"normalizer.obs_mean": torch.from_numpy(rms.obs_rms.mean),
                            "normalizer.obs_var": torch.from_numpy(rms.obs_rms.var),
                            "normalizer.ret_var": torch.tensor(float(rms.ret_rms.var), dtype=torch.float64)})
        save_tensors_atomic(tensors, path / WEIGHTS_FILE)
        atomic_write_bytes(path / CONFIG_FILE, (json.dumps(self.describe(), indent=2) + "\n").encode())
        return path

    save_pretrained = save  # the run directory contract: the runner saves "the model" this way

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> Agent:
        """An agent saved with :meth:`save` (on ``load`` of the base class, of whichever algorithm
        wrote it). The weights are loaded strictly: a missing or unexpected tensor is an error."""
        from safetensors.torch import load_file

        from . import get_algo

        path = Path(path)
        meta = read_saved(path)
        if meta["kind"] != "agent":
            raise ArchlabError(f"{path} holds a model ({meta['name']!r}), not an RL agent")
        algo_cls = get_algo(meta["name"]) if cls is Agent else cls
        if algo_cls.algo != meta["name"]:
            raise ArchlabError(f"{path} holds a {meta['name']!r} agent, not {cls.algo!r}")
        if not (path / WEIGHTS_FILE).is_file():
            raise ArchlabError(f"{path} has no {WEIGHTS_FILE}")
        # Agents saved before the optimizers moved to the engine have learning_rate etc. in "config".
        agent = algo_cls(meta["env_id"], seed=meta.get("seed", 0), device=device,
                         env_options=meta.get("env_options"), optim=meta.get("optim"), **meta["config"])
        tensors = load_file(str(path / WEIGHTS_FILE))
        for name, net in agent.networks().items():
            sd = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}
            try:
                net.load_state_dict(sd, strict=True)
            except RuntimeError as exc:
                raise ArchlabError(f"{path / WEIGHTS_FILE}: weights do not match the {name} network "
                                   f"({str(exc).splitlines()[0]})") from None
        if agent.normalizer.active:
            agent.normalizer.obs_rms.mean = tensors["normalizer.obs_mean"].numpy().copy()
            agent.normalizer.obs_rms.var = tensors["normalizer.obs_var"].numpy().copy()
            agent.normalizer.ret_rms.var = float(tensors["normalizer.ret_var"])
        agent.normalizer.training = False
        agent.num_steps = meta.get("num_steps", 0)
        return agent

    @classmethod
    def from_pretrained(cls, path: str | Path, map_location: str = "cpu") -> Agent:
        """The registry's name for :meth:`load` (``archlab.load`` calls it)."""
        return cls.load(path, device=map_location)

    # -- checkpoints (engine) -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        episodes = torch.tensor(self.episodes, dtype=torch.float64).reshape(-1, 3)
        return {"networks": {k: v.state_dict() for k, v in self.networks().items()},
                "train": self.train_state(), "normalizer": self.normalizer.state_dict(),
                "env": self.env.state_dict(), "obs": None if self.obs is None else torch.from_numpy(self.obs.copy()),
                "num_steps": self.num_steps, "num_updates": self.num_updates, "total_steps": self.total_steps,
                "episodes": episodes, "gen": self.gen.get_state(), "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, net in self.networks().items():
            net.load_state_dict(state["networks"][k])
        self.load_train_state(state["train"])
        self.normalizer.load_state_dict(state["normalizer"])
        exact = self.env.load_state_dict(state["env"])
        if exact and state["obs"] is not None:
            self.obs = np.asarray(state["obs"]).copy()
        else:  # the env could not be restored: start fresh episodes from its reset observations
            self.normalizer.observe(self.env.obs)
            self.obs = self.normalizer.obs(self.env.obs)
        self.num_steps, self.num_updates = state["num_steps"], state["num_updates"]
        self.total_steps = state["total_steps"]
        self.episodes = [(int(s), float(r), int(n)) for s, r, n in state["episodes"].tolist()]
        self.gen.set_state(state["gen"])
        self.rng.bit_generator.state = state["rng"]


def check_epsilon_schedule(cfg: Any) -> None:
    """Validate the epsilon-greedy schedule fields that DQN and Q-learning share
    (``exploration_fraction``, ``exploration_initial_eps``, ``exploration_final_eps``)."""
    if not 0.0 <= cfg.exploration_fraction <= 1.0:
        raise ValueError(f"exploration_fraction must be in [0, 1], got {cfg.exploration_fraction}")
    for name in ("exploration_initial_eps", "exploration_final_eps"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {getattr(cfg, name)}")


def linear_epsilon(cfg: Any, progress: float) -> float:
    """Epsilon at ``progress`` (0 -> 1) of the run: linear from ``exploration_initial_eps`` to
    ``exploration_final_eps`` over the first ``exploration_fraction``, then constant."""
    if progress >= cfg.exploration_fraction:
        return cfg.exploration_final_eps
    return cfg.exploration_initial_eps + progress * (cfg.exploration_final_eps
                                                     - cfg.exploration_initial_eps) / cfg.exploration_fraction


def info_return(info: dict[str, Any], i: int, env: VecEnv) -> float:
    """The raw return of the episode env copy ``i`` just finished."""
    # env.step appends finished episodes in index order; find copy i's among them.
    done_ids = sorted(info["final_obs"])
    return info["episodes"][done_ids.index(i)][0]
