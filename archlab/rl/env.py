"""Environments: gymnasium ids -> a small synchronous vector env, normalization, state snapshots.

:class:`VecEnv` steps ``n`` copies of one gymnasium environment in lock step and resets a copy as
soon as its episode ends ("same-step" autoreset, as Stable-Baselines3 does): the observation
returned for a finished copy is already the first one of its next episode, and the last
observation of the finished episode is in ``info["final_obs"][i]`` -- needed to bootstrap
``V(s_T)`` when an episode was *truncated* by a time limit rather than *terminated*.

Episode returns and lengths are counted here (before any reward normalization), so every
algorithm logs the same, raw returns.

Shapes: ``reset() -> obs [n, *obs_shape]``;
``step(actions [n, *act_shape]) -> obs [n, ...], reward [n], terminated [n], truncated [n], info``.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ArchlabError


def require_gymnasium() -> Any:
    try:
        import gymnasium
    except ImportError:
        raise ArchlabError("reinforcement learning needs gymnasium: pip install 'archlab[rl]'") from None
    return gymnasium


def _custom_envs() -> dict[str, Any]:
    from .toy_envs import TOY_ENVS

    return TOY_ENVS


def _rejected(env_id: str, options: dict[str, Any], exc: Exception) -> ArchlabError:
    """The one-line error for an environment that failed on the user's ``env.options``.

    Which option was wrong only the environment knows (FrozenLake's ``map_name = "9x9"`` ends in a
    ``KeyError`` deep inside it), so name them all, as the recipe spells them, and the env's complaint."""
    shown = ", ".join(f"{key} = {json.dumps(value, default=repr)}" for key, value in options.items())
    first_line = str(exc).splitlines()[0] if str(exc) else ""
    reason = f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__
    return ArchlabError(f"env.options: {env_id} rejected {{{shown}}} ({reason})")


def make_single(env_id: str, options: dict[str, Any] | None = None, render_mode: str | None = None) -> Any:
    """One gymnasium environment; an unknown id or bad option is a one-line :class:`ArchlabError`.

    With ``options`` given, any exception the environment raises while it is built is blamed on them;
    without, it is a bug and keeps its traceback."""
    gym = require_gymnasium()
    options = dict(options or {})
    toys = _custom_envs()
    if env_id in toys:
        try:
            env = toys[env_id](**options)
        except Exception as exc:
            if not options:
                raise
            raise _rejected(env_id, options, exc) from None
        return gym.wrappers.TimeLimit(env, env.max_steps) if getattr(env, "max_steps", None) else env
    kwargs = options if render_mode is None else {**options, "render_mode": render_mode}
    try:
        return gym.make(env_id, **kwargs)
    except gym.error.Error as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, gym.error.DependencyNotInstalled):  # a registered env whose physics package is missing
            extra = ' (pip install "archlab[box2d]")' if "box2d" in msg.lower() else ""
            raise ArchlabError(f"env.id {env_id!r} needs a package that is not installed{extra}: {msg}") from None
        known = sorted(gym.registry) + sorted(toys)
        close = difflib.get_close_matches(env_id, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ArchlabError(f"env.id {env_id!r}: {msg}{hint}") from None
    except ImportError as exc:  # e.g. Box2D missing for LunarLander
        raise ArchlabError(f"env.id {env_id!r} needs a package that is not installed: {exc}") from None
    except Exception as exc:  # KeyError, ValueError, TypeError (an unknown keyword), ... from the env's __init__
        if not options:
            raise
        raise _rejected(env_id, options, exc) from None


@dataclass
class SpaceInfo:
    """What a network needs to know about the spaces."""

    obs_shape: tuple[int, ...]
    discrete: bool
    """Discrete actions (``n_actions`` of them) or a Box (``act_shape``, ``low``, ``high``)."""
    n_actions: int = 0
    act_shape: tuple[int, ...] = ()
    low: np.ndarray | None = None
    high: np.ndarray | None = None
    n_obs: int = 0
    """Discrete observation spaces (FrozenLake, Taxi): the number of states (``obs_shape`` is ())."""

    @property
    def obs_dim(self) -> int:
        return self.n_obs if self.n_obs else int(np.prod(self.obs_shape))

    @property
    def act_dim(self) -> int:
        return self.n_actions if self.discrete else int(np.prod(self.act_shape))


def space_info(observation_space: Any, action_space: Any) -> SpaceInfo:
    gym = require_gymnasium()
    spaces = gym.spaces
    if isinstance(observation_space, spaces.Discrete):
        obs_shape, n_obs = (), int(observation_space.n)
    elif isinstance(observation_space, spaces.Box):
        obs_shape, n_obs = tuple(observation_space.shape), 0
    else:
        raise ArchlabError(f"observation space {observation_space} is not supported (Box or Discrete only)")
    if isinstance(action_space, spaces.Discrete):
        return SpaceInfo(obs_shape, True, n_actions=int(action_space.n), n_obs=n_obs)
    if isinstance(action_space, spaces.Box):
        return SpaceInfo(obs_shape, False, act_shape=tuple(action_space.shape),
                         low=action_space.low.astype(np.float32), high=action_space.high.astype(np.float32),
                         n_obs=n_obs)
    raise ArchlabError(f"action space {action_space} is not supported (Box or Discrete only)")


# ------------------------------------------------------------------------------ env state snapshots
_SNAPSHOT_MODULES = ("gymnasium.envs.classic_control", "gymnasium.envs.toy_text", "archlab.rl.toy_envs")
_PLAIN = (bool, int, float, np.integer, np.floating, np.bool_)


def _plain(v: Any) -> Any:
    """A JSON-able copy of a numeric attribute, or ``None`` when it is not one."""
    if v is None:
        return {"s": None}
    if isinstance(v, _PLAIN):
        return {"s": v.item() if isinstance(v, np.generic) else v}
    if isinstance(v, np.ndarray) and v.dtype.kind in "biuf":
        return {"a": v.tolist(), "dtype": str(v.dtype), "shape": list(v.shape)}
    if isinstance(v, tuple) and all(isinstance(x, _PLAIN) for x in v):
        return {"t": [x.item() if isinstance(x, np.generic) else x for x in v]}
    return None


def _unplain(d: dict[str, Any]) -> Any:
    if "s" in d:
        return d["s"]
    if "a" in d:
        return np.asarray(d["a"], dtype=d["dtype"]).reshape(d["shape"])
    return tuple(d["t"])


def snapshot_supported(env: Any) -> bool:
    return type(env.unwrapped).__module__.startswith(_SNAPSHOT_MODULES)


def env_snapshot(env: Any) -> dict[str, Any] | None:
    """The numeric state of a classic-control / toy-text env and its wrappers, plus its RNG state.

    Enough to continue an episode exactly after a resume; ``None`` for envs whose state lives
    elsewhere (physics engines), which are reset on resume instead."""
    if not snapshot_supported(env):
        return None
    layers = []
    e = env
    while True:
        layers.append({k: p for k, v in vars(e).items() if not k.startswith("__") and (p := _plain(v)) is not None})
        if not hasattr(e, "env"):
            break
        e = e.env
    rng = env.unwrapped.np_random.bit_generator.state if env.unwrapped._np_random is not None else None
    return {"layers": layers, "rng": rng}


def restore_snapshot(env: Any, snap: dict[str, Any]) -> None:
    e = env
    for layer in snap["layers"]:
        for k, v in layer.items():
            setattr(e, k, _unplain(v))
        e = getattr(e, "env", e)
    if snap["rng"] is not None:
        env.unwrapped.np_random.bit_generator.state = snap["rng"]


# ------------------------------------------------------------------------------ vector env
class VecEnv:
    """``n`` copies of a gymnasium env stepped in lock step with same-step autoreset.

    Copy ``i`` is seeded with ``seed + i`` on the first reset only (later resets continue each copy's
    own RNG stream), so a run is reproducible from one seed."""

    def __init__(self, env_id: str, n: int = 1, seed: int = 0, options: dict[str, Any] | None = None,
                 render_mode: str | None = None) -> None:
        if n < 1:
            raise ArchlabError(f"env.n_envs must be >= 1, got {n}")
        if not isinstance(seed, int) or seed < 0:  # gymnasium's rule for reset(seed=)
            raise ArchlabError(f"seed must be an integer >= 0 to seed {env_id}, got {seed!r}")
        self.env_id, self.n, self.seed, self.options = env_id, n, seed, dict(options or {})
        self.envs = [make_single(env_id, options, render_mode) for _ in range(n)]
        first = self.envs[0]
        self.observation_space, self.action_space = first.observation_space, first.action_space
        self.info = space_info(self.observation_space, self.action_space)
        self.discrete_obs = self.info.n_obs > 0
        self.ep_return = np.zeros(n, dtype=np.float64)
        self.ep_length = np.zeros(n, dtype=np.int64)
        self.obs: np.ndarray | None = None
        self._seeded = False

    def _obs(self, o: Any) -> np.ndarray:
        return np.asarray(o, dtype=np.int64 if self.discrete_obs else np.float32)

    def reset(self) -> np.ndarray:
        obs = []
        for i, env in enumerate(self.envs):
            try:
                o, _ = env.reset(seed=None if self._seeded else self.seed + i)
            except Exception as exc:  # some options are only read here (e.g. a start state out of range)
                if not self.options:
                    raise
                raise _rejected(self.env_id, self.options, exc) from None
            obs.append(self._obs(o))
        self._seeded = True
        self.ep_return[:] = 0
        self.ep_length[:] = 0
        self.obs = np.stack(obs)
        return self.obs

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every copy; ``info`` has ``final_obs`` (dict i -> obs) and ``episodes`` (list of
        (return, length)) for the copies whose episode ended here."""
        n = self.n
        obs = np.empty((n, *self.info.obs_shape), dtype=np.int64 if self.discrete_obs else np.float32)
        rew = np.empty(n, dtype=np.float32)
        term = np.empty(n, dtype=bool)
        trunc = np.empty(n, dtype=bool)
        final_obs: dict[int, np.ndarray] = {}
        episodes: list[tuple[float, int]] = []
        for i, env in enumerate(self.envs):
            a = actions[i]
            o, r, te, tr, _ = env.step(a.item() if self.info.discrete else a)
            rew[i], term[i], trunc[i] = r, te, tr
            self.ep_return[i] += r
            self.ep_length[i] += 1
            if te or tr:
                final_obs[i] = self._obs(o)
                episodes.append((float(self.ep_return[i]), int(self.ep_length[i])))
                self.ep_return[i] = 0
                self.ep_length[i] = 0
                o, _ = env.reset()
            obs[i] = o
        self.obs = obs
        return obs, rew, term, trunc, {"final_obs": final_obs, "episodes": episodes}

    def render(self) -> Any:
        return self.envs[0].render()

    def close(self) -> None:
        for env in self.envs:
            env.close()

    # -- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        snaps = [env_snapshot(e) for e in self.envs]
        return {"snapshots": snaps if all(s is not None for s in snaps) else None,
                "obs": None if self.obs is None else torch.from_numpy(self.obs.copy()),
                "ep_return": torch.from_numpy(self.ep_return.copy()),
                "ep_length": torch.from_numpy(self.ep_length.copy()),
                "seeded": self._seeded}

    def load_state_dict(self, state: dict[str, Any]) -> bool:
        """Continue where the snapshot stopped; returns False when the env could not be restored
        exactly (then every copy is reset and the caller must use the new ``self.obs``)."""
        if state["snapshots"] is None or state["obs"] is None:
            self.seed += 7919  # fresh episodes, not a replay of the first ones
            self._seeded = False
            self.reset()
            return False
        for env, snap in zip(self.envs, state["snapshots"], strict=True):
            if env.unwrapped._np_random is None:  # gymnasium creates the generator on first reset
                env.reset(seed=0)
            restore_snapshot(env, snap)
        self.obs = np.asarray(state["obs"])
        self.ep_return = np.asarray(state["ep_return"], dtype=np.float64).copy()
        self.ep_length = np.asarray(state["ep_length"], dtype=np.int64).copy()
        self._seeded = bool(state["seeded"])
        return True


# ------------------------------------------------------------------------------ normalization
class RunningMeanStd:
    """Streaming mean and variance (Chan et al. parallel update), for observation/return scaling."""

    def __init__(self, shape: tuple[int, ...] = ()) -> None:
        self.mean = np.zeros(shape, np.float64)
        self.var = np.ones(shape, np.float64)
        self.count = 1e-4

    def update(self, x: np.ndarray) -> None:
        b_mean, b_var, b_count = x.mean(0), x.var(0), x.shape[0]
        delta = b_mean - self.mean
        total = self.count + b_count
        self.mean = self.mean + delta * b_count / total
        m2 = self.var * self.count + b_var * b_count + delta**2 * self.count * b_count / total
        self.var = m2 / total
        self.count = total

    def state_dict(self) -> dict[str, Any]:
        # a scalar statistic (the return's, shape ()) becomes a numpy scalar after update(): re-wrap it
        return {"mean": torch.from_numpy(np.array(self.mean, np.float64)),
                "var": torch.from_numpy(np.array(self.var, np.float64)),
                "count": float(self.count)}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.mean, self.var = np.asarray(s["mean"], np.float64), np.asarray(s["var"], np.float64)
        self.count = s["count"]


class Normalizer:
    """Observation and reward normalization in the manner of SB3's ``VecNormalize``.

    obs  <- clip((obs - mu) / sqrt(var + eps), -clip_obs, clip_obs)     (running stats of raw obs)
    rew  <- clip(rew / sqrt(var_R + eps), -clip_reward, clip_reward)    (var of the discounted return R)

    Statistics update only while ``training`` is True; evaluation uses frozen statistics."""

    def __init__(self, obs_shape: tuple[int, ...], n_envs: int, obs: bool, reward: bool, gamma: float,
                 clip_obs: float = 10.0, clip_reward: float = 10.0, eps: float = 1e-8) -> None:
        self.norm_obs, self.norm_reward = obs, reward
        self.obs_rms = RunningMeanStd(obs_shape)
        self.ret_rms = RunningMeanStd(())
        self.returns = np.zeros(n_envs, np.float64)
        self.gamma, self.clip_obs, self.clip_reward, self.eps = gamma, clip_obs, clip_reward, eps
        self.training = True

    @property
    def active(self) -> bool:
        return self.norm_obs or self.norm_reward

    def observe(self, obs: np.ndarray) -> None:
        """Update the observation statistics with a batch of raw observations."""
        if self.norm_obs and self.training:
            self.obs_rms.update(obs.astype(np.float64))

    def obs(self, obs: np.ndarray) -> np.ndarray:
        if not self.norm_obs:
            return obs
        z = (obs - self.obs_rms.mean) / np.sqrt(self.obs_rms.var + self.eps)
        return np.clip(z, -self.clip_obs, self.clip_obs).astype(np.float32)

    def reward(self, rew: np.ndarray, done: np.ndarray) -> np.ndarray:
        if not self.norm_reward:
            return rew
        if self.training:
            self.returns = self.returns * self.gamma + rew
            self.ret_rms.update(self.returns)
            self.returns[done] = 0.0
        return np.clip(rew / math.sqrt(self.ret_rms.var + self.eps), -self.clip_reward,
                       self.clip_reward).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        return {"obs_rms": self.obs_rms.state_dict(), "ret_rms": self.ret_rms.state_dict(),
                "returns": torch.from_numpy(self.returns.copy())}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.obs_rms.load_state_dict(s["obs_rms"])
        self.ret_rms.load_state_dict(s["ret_rms"])
        self.returns = np.asarray(s["returns"], np.float64).copy()
