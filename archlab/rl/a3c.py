"""A3C: asynchronous advantage actor-critic (Mnih et al. 2016, "Asynchronous Methods for Deep
Reinforcement Learning", Algorithm S3).

``n_workers`` CPU processes ("actor-learners") each own a copy of the environment and a *local*
copy of the actor-critic. Each worker repeatedly

1. copies the shared parameters into its local network (``theta' <- theta``, ``theta_v' <- theta_v``);
2. plays ``n_steps`` (the paper's ``t_max``) steps with the local policy;
3. computes the n-step returns and advantages on the local network

       R_t = r_t + gamma r_{t+1} + ... + gamma^{k-1} r_{t+k-1} + gamma^k V(s_{t+k}; theta_v')
       A_t = R_t - V(s_t; theta_v')                                        (GAE with lambda = 1)

   and the gradient of ``loss = -log pi(a_t|s_t; theta') A_t + vf_coef (R_t - V(s_t))^2
   - ent_coef H[pi(.|s_t)]`` (mean over the rollout);
4. applies that gradient to the *shared* parameters with a *shared* optimizer -- the paper's
   "shared RMSProp": the statistics ``g`` live in shared memory as well -- without any lock
   (Hogwild!, Recht et al. 2011).

The shared parameters, the optimizer statistics and a few counters are one-flat-tensor each in
shared memory (``share_memory_()``); workers read and write them in place.

How it fits the engine's loop: ``iteration()`` is one bounded *round*. The main process lets the
workers run asynchronously until together they have done ``steps_per_round`` environment steps
(each worker counts its own steps in a shared counter and stops at the round's target), then every
worker pauses and reports its finished episodes and loss statistics. Between rounds nothing moves,
so ``state_dict()`` is a consistent snapshot of the shared model and optimizer. Workers start on the
first ``iteration()`` and stop on :meth:`A3C.close` (also called at the end of ``learn``, when the
agent is garbage collected, and at interpreter exit); they ignore Ctrl-C, die with the main process
(``PR_SET_PDEATHSIG`` on Linux, a parent check elsewhere), and an interrupted round terminates them.

Workers start with ``fork`` where the platform has it (``start_method``): it takes milliseconds,
and, unlike ``spawn``/``forkserver``, it works from scripts that lack an ``if __name__ ==
"__main__":`` guard. Workers only touch torch after ``torch.set_num_threads(1)``, so the main
process's thread pools do not matter; a main process whose *other threads* hold locks the workers
need (rare; logging handlers) would call for ``start_method = "spawn"``.

**Not deterministic.** The order in which asynchronous workers write the shared parameters depends
on OS scheduling, so two runs with the same seed differ (this is inherent to A3C; use A2C, its
synchronous version, for reproducible runs). What is exact: ``save``/``load`` and
``state_dict``/``load_state_dict`` round-trip the network and the optimizer state bit for bit, so a
loaded agent's ``predict`` gives the same actions.

Not supported: observation/reward normalization (the running statistics would have to be shared
between processes too). Everything runs on the CPU (workers are CPU processes by design); another
``device`` is ignored with a warning.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import sys
import threading
import traceback
import warnings
import weakref
from multiprocessing.connection import wait as mp_wait
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..engine.optim import OptimConfig
from ..errors import ArchlabError
from .base import Agent, AgentConfig
from .buffers import RolloutBuffer
from .env import SpaceInfo, VecEnv
from .fast import FastActorCritic, FlatParams
from .policies import ActorCritic, env_actions


@dataclasses.dataclass
class A3CConfig(AgentConfig):
    """A3C hyperparameters. ``n_envs`` is the number of env copies *per worker* (the paper: 1)."""

    n_workers: int = 2
    """Asynchronous actor-learner processes (the paper: 16 CPU threads)."""
    n_steps: int = 5
    """Steps per env copy between two updates of a worker (the paper's t_max = 5)."""
    gae_lambda: float = 1.0
    """1.0 gives the paper's n-step returns; < 1 uses generalized advantage estimation."""
    ent_coef: float = 0.01
    """Entropy bonus weight (the paper's beta = 0.01)."""
    vf_coef: float = 0.5
    """Value-loss weight."""
    max_grad_norm: float = 0.5
    """Clip each worker's gradient to this global norm before applying it; 0 disables clipping."""
    shared_net: bool = False
    """One body with policy and value heads (the paper) instead of two separate MLPs (SB3's default)."""
    ortho_init: bool = True
    """Orthogonal initialization (OpenAI baselines / SB3)."""
    log_std_init: float = 0.0
    """Initial log standard deviation of the Gaussian policy (Box actions)."""
    steps_per_round: int = 1000
    """Environment steps (all workers together) per ``iteration()``: the engine logs and may
    checkpoint between rounds, while the workers are paused."""
    start_method: str = "auto"
    """How workers start: ``fork`` (fast, and works in scripts without ``if __name__ == '__main__'``),
    ``spawn``, ``forkserver``, or ``auto`` (fork where the platform has it, else spawn)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_workers < 1:
            raise ValueError(f"n_workers must be >= 1, got {self.n_workers}")
        if self.n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {self.n_steps}")
        if not 0.0 <= self.gae_lambda <= 1.0:
            raise ValueError(f"gae_lambda must be in [0, 1], got {self.gae_lambda}")
        for name in ("ent_coef", "vf_coef", "max_grad_norm"):
            if not 0 <= getattr(self, name) <= 1e6:
                raise ValueError(f"{name} must be in [0, 1e6], got {getattr(self, name)}")
        if self.steps_per_round < 1:
            raise ValueError(f"steps_per_round must be >= 1, got {self.steps_per_round}")
        if self.start_method not in ("auto", "fork", "spawn", "forkserver"):
            raise ValueError(f"start_method must be auto, fork, spawn or forkserver, got {self.start_method!r}")
        if self.normalize_obs or self.normalize_reward:
            raise ValueError("A3C does not support normalize_obs/normalize_reward (the running statistics "
                             "would have to be shared between worker processes); use A2C or PPO")


# ------------------------------------------------------------------------------ shared state
class SharedOptimizer:
    """RMSProp or Adam whose statistics live in shared memory, stepped by every worker without a lock.

    The paper's "shared RMSProp" (Mnih et al. 2016, sec. 4 and S2): with ``g`` shared by all threads,

        g     <- alpha g + (1 - alpha) dtheta^2
        theta <- theta - lr dtheta / (sqrt(g) + eps)          (eps outside the root, as torch.optim)

    Adam (Kingma & Ba 2015, Alg. 1; the "SharedAdam" of common PyTorch A3C ports), with a shared
    step count ``t``:

        m <- b1 m + (1 - b1) d;   v <- b2 v + (1 - b2) d^2
        theta <- theta - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

    The same arithmetic as ``torch.optim.RMSprop`` / ``Adam`` (single-tensor path), written out
    because the statistics must be preallocated shared tensors and because each step is a handful
    of in-place ops on one flat tensor -- less overhead than ``Optimizer.step`` for these small
    networks, and no ``torch._dynamo`` import (seconds) in every worker. So A3C does not step an
    engine optimizer; it reads its settings from the engine's ``OptimConfig`` (``[optim]``, trainable
    ``policy``: ``name`` rmsprop or adam, ``lr``, ``eps``, ``alpha``, ``betas``, ``schedule``), and the
    learning rate of each round from the schedule, as every RL algorithm does.
    """

    def __init__(self, cfg: OptimConfig, param: torch.Tensor, state: dict[str, torch.Tensor] | None = None) -> None:
        if cfg.name not in ("rmsprop", "adam") or cfg.weight_decay:
            raise ArchlabError(f"optim.name: A3C's shared optimizer is rmsprop or adam without weight decay, "
                               f"got {cfg.name!r} (weight_decay {cfg.weight_decay})")
        name = cfg.name
        self.name, self.param, self.eps, self.alpha = name, param, cfg.eps, cfg.alpha
        self.betas = tuple(cfg.betas)
        if state is None:
            keys = ("exp_avg", "exp_avg_sq") if name == "adam" else ("square_avg",)
            state = {"step": torch.zeros((), dtype=torch.int64), **{k: torch.zeros_like(param) for k in keys}}
        self.state = state

    def share_memory_(self) -> SharedOptimizer:
        for v in self.state.values():
            v.share_memory_()
        return self

    @torch.no_grad()
    def step(self, grad: torch.Tensor, lr: float) -> None:
        """Apply the gradient ``grad`` (``dtheta``, shaped like ``param``) to ``param`` in place."""
        st = self.state
        st["step"] += 1  # racy between workers, like every Hogwild write; only Adam reads it
        if self.name == "rmsprop":
            g = st["square_avg"]
            g.mul_(self.alpha).addcmul_(grad, grad, value=1.0 - self.alpha)
            self.param.addcdiv_(grad, g.sqrt().add_(self.eps), value=-lr)
        else:
            b1, b2 = self.betas
            t = int(st["step"])
            m, v = st["exp_avg"], st["exp_avg_sq"]
            m.lerp_(grad, 1.0 - b1)
            v.mul_(b2).addcmul_(grad, grad, value=1.0 - b2)
            denom = (v.sqrt() / math.sqrt(1.0 - b2**t)).add_(self.eps)
            self.param.addcdiv_(m, denom, value=-lr / (1.0 - b1**t))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.state.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k, v in self.state.items():
            v.copy_(state[k])  # in place: the workers keep seeing the same shared tensors


@dataclasses.dataclass
class _Shared:
    """Everything the workers share with the main process (tensors in shared memory)."""

    param: torch.Tensor
    """The flat parameter vector of the actor-critic ``[n_params]``."""
    opt_state: dict[str, torch.Tensor]
    """The optimizer statistics of ``param`` (:class:`SharedOptimizer`)."""
    steps: torch.Tensor
    """int64 ``[1 + n_workers]``: ``[0]`` the round's target step count (-1: stop now), ``[1 + w]`` the
    env steps worker ``w`` has done (written only by ``w``, so no lock); their sum is ``num_steps``."""
    lr: torch.Tensor
    """float64 ``[1]``: the learning rate for this round (linear schedules)."""


# ------------------------------------------------------------------------------ worker process
def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this worker when the main process dies (even by SIGKILL)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass


def _worker_main(wid: int, spec: dict[str, Any], shared: _Shared, conn: Any, parent_pid: int) -> None:
    """Entry point of worker ``wid``: serve ``run`` / ``stop`` commands from the main process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's business; it stops us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not a handler inherited through fork (the engine's)
    if spec["main_thread"]:  # PDEATHSIG fires when the parent *thread* ends: only for the main thread
        _die_with_parent()
    if os.getppid() != parent_pid:  # the parent died before that took effect
        return
    torch.set_num_threads(1)
    try:
        worker = _Worker(wid, spec, shared)
        while True:
            while not conn.poll(1.0):
                if os.getppid() != parent_pid:  # orphaned (platforms without PR_SET_PDEATHSIG)
                    return
            cmd = conn.recv()
            if cmd == "stop":
                return
            conn.send(("done", wid, *worker.run_round()))
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        return
    except BaseException:  # report, so the main process raises it instead of waiting forever
        try:
            conn.send(("error", wid, traceback.format_exc()))
        except (OSError, ValueError):
            pass


class _Worker:
    """One actor-learner: its env, its local network and its view of the shared optimizer."""

    def __init__(self, wid: int, spec: dict[str, Any], shared: _Shared) -> None:
        cfg: A3CConfig = spec["cfg"]
        spaces: SpaceInfo = spec["spaces"]
        self.wid, self.cfg, self.spaces, self.shared = wid, cfg, spaces, shared
        self.env = VecEnv(spec["env_id"], cfg.n_envs, spec["seed"], spec["env_options"])
        self.gen = torch.Generator().manual_seed(spec["seed"])
        self.local = _make_net(cfg, spaces)  # theta', theta_v'
        self.flat = FlatParams([self.local])
        self.fast = FastActorCritic(self.local)  # each MLP one autograd node: less overhead per update
        # Steps the shared parameters with the shared statistics, from the local gradient (dtheta).
        self.opt = SharedOptimizer(spec["optim"], shared.param, shared.opt_state)
        self.lr = float(shared.lr[0])
        self.buffer = RolloutBuffer(cfg.n_steps, cfg.n_envs, spaces.obs_shape,
                                    () if spaces.discrete else (spaces.act_dim,),
                                    np.int64 if spaces.n_obs else np.float32,
                                    np.int64 if spaces.discrete else np.float32)
        self.obs = self.env.reset()

    def run_round(self) -> tuple[list[tuple[int, float, int]], list[float], int]:
        """Update until the workers together reach the round's target step count.

        Returns the finished episodes (approximate global step, return, length), the summed
        (loss, policy loss, value loss, entropy, grad norm) and the number of updates."""
        steps, cfg = self.shared.steps, self.cfg
        self.lr = float(self.shared.lr[0])
        episodes: list[tuple[int, float, int]] = []
        sums = torch.zeros(5, dtype=torch.float64)
        updates = 0
        batch = cfg.n_steps * cfg.n_envs
        while int(steps[1:].sum()) < int(steps[0]):
            # theta' <- theta: start every rollout from the current shared weights.
            self.flat.param.data.copy_(self.shared.param)
            self.rollout(episodes)
            sums += self.update()
            steps[1 + self.wid] += batch
            updates += 1
        return episodes, sums.tolist(), updates

    @torch.inference_mode()
    def rollout(self, episodes: list[tuple[int, float, int]]) -> None:
        """``n_steps`` steps of every env copy with the local policy; then returns R_t and A_t."""
        model, buf, gamma = self.local, self.buffer, self.cfg.gamma
        obs = self.obs
        while not buf.full:
            x = torch.from_numpy(obs)
            pi, value = model(x)
            actions, logp = model.sample(pi, self.gen)
            next_obs, rew, term, trunc, info = self.env.step(env_actions(actions, self.spaces))
            truncated = trunc & ~term
            if truncated.any():  # time limit: bootstrap r_t + gamma V(s_T) (as SB3)
                idx = np.flatnonzero(truncated)
                final = torch.from_numpy(np.stack([info["final_obs"][i] for i in idx]))
                rew = rew.copy()
                rew[idx] += gamma * model.value(final).numpy()
            if info["episodes"]:
                at = int(self.shared.steps[1:].sum()) + (buf.t + 1) * self.env.n
                episodes.extend((at, ret, length) for ret, length in info["episodes"])
            buf.add(obs, actions.numpy().reshape(buf.actions.shape[1:]), rew, term | trunc,
                    value.numpy(), logp.numpy())
            obs = next_obs
        self.obs = obs
        # R = V(s_{t_max}) (0 after a terminal state, via the done mask), then R <- r_i + gamma R.
        buf.finish(model.value(torch.from_numpy(obs)).numpy(), gamma, self.cfg.gae_lambda)

    def update(self) -> torch.Tensor:
        """Accumulate the gradient on the local network, then apply it to the shared parameters."""
        cfg, model = self.cfg, self.local
        data = self.buffer.tensors()
        pi, values = self.fast.forward(data["obs"])
        logp, entropy = model.log_prob_entropy(pi, data["actions"])
        # d theta  <- grad_theta' log pi(a_i|s_i; theta') (R - V(s_i; theta_v')) + beta grad H  (Alg. S3)
        policy_loss = -(data["advantages"] * logp).mean()
        # d theta_v <- d (R - V(s_i; theta_v'))^2 / d theta_v'
        value_loss = F.mse_loss(values, data["returns"])
        entropy = entropy.mean()
        loss = policy_loss + cfg.vf_coef * value_loss - cfg.ent_coef * entropy
        self.flat.zero_grad()
        loss.backward()
        norm = (self.flat.clip_grad_norm(cfg.max_grad_norm) if cfg.max_grad_norm > 0
                else torch.linalg.vector_norm(self.flat.param.grad))
        self.opt.step(self.flat.param.grad, self.lr)  # on the shared theta, no lock (Hogwild)
        return torch.stack([loss, policy_loss, value_loss, entropy, norm]).detach().double()


def _make_net(cfg: A3CConfig, spaces: SpaceInfo) -> ActorCritic:
    return ActorCritic(spaces, cfg.net_arch, cfg.activation, ortho_init=cfg.ortho_init,
                       log_std_init=cfg.log_std_init, shared=cfg.shared_net)


class _Workers:
    """The running worker processes and the main process's ends of their pipes.

    Holds no reference to the agent, so a ``weakref.finalize`` on the agent can stop them."""

    def __init__(self, ctx: Any, spec: dict[str, Any], shared: _Shared, seeds: list[int]) -> None:
        self.shared = shared
        self.procs: list[Any] = []
        self.conns: list[Any] = []
        try:
            for w, seed in enumerate(seeds):
                parent, child = ctx.Pipe()
                p = ctx.Process(target=_worker_main, args=(w, {**spec, "seed": seed}, shared, child, os.getpid()),
                                name=f"archlab-a3c-{w}", daemon=True)
                p.start()
                child.close()
                self.procs.append(p)
                self.conns.append(parent)
        except BaseException:
            self.close()
            raise

    def run_round(self) -> list[tuple[Any, ...]]:
        """Start a round on every worker and wait until all of them have paused."""
        for c in self.conns:
            c.send("run")
        results: dict[int, tuple[Any, ...]] = {}
        pending = set(range(len(self.procs)))
        while pending:
            # Wake on a message or on the death of a worker we still wait for (no polling).
            handles = {self.conns[w]: w for w in pending} | {self.procs[w].sentinel: w for w in pending}
            for ready in mp_wait(list(handles)):
                w = handles[ready]
                if w not in pending:
                    continue
                msg: tuple[Any, ...] | None = None
                if self.conns[w].poll():  # a message (possibly sent just before exiting), or EOF
                    try:
                        msg = self.conns[w].recv()
                    except (EOFError, OSError):  # the worker died mid-message
                        msg = None
                if msg is None:
                    if self.procs[w].is_alive():
                        continue
                    self.procs[w].join(timeout=1.0)
                    raise RuntimeError(f"A3C worker {w} (pid {self.procs[w].pid}) died with exit code "
                                       f"{self.procs[w].exitcode}")
                if msg[0] == "error":
                    raise RuntimeError(f"A3C worker {w} failed:\n{msg[2]}")
                results[w] = msg
                pending.discard(w)
        return [results[w] for w in range(len(self.procs))]

    def close(self) -> None:
        """Stop every worker: ask politely, then terminate; reap them all (no zombies)."""
        self.shared.steps[0] = -1  # a worker in the middle of a round stops after its current update
        for c in self.conns:
            try:
                c.send("stop")
            except (OSError, ValueError):
                pass
        for p in self.procs:
            p.join(timeout=2.0)
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=2.0)
            if p.is_alive():
                p.kill()
                p.join()
        for c in self.conns:
            c.close()
        self.procs, self.conns = [], []


# ------------------------------------------------------------------------------ the agent
class A3C(Agent):
    """Asynchronous advantage actor-critic (see the module docstring). Not deterministic."""

    algo = "a3c"
    Config = A3CConfig
    cfg: A3CConfig
    # SB3's A2C RMSprop (the paper's shared RMSProp, alpha 0.99)
    optim_defaults = {"name": "rmsprop", "lr": 7e-4, "alpha": 0.99, "eps": 1e-5}

    @classmethod
    def trainable_names(cls, cfg: A3CConfig) -> tuple[str, ...]:
        return ("policy",)

    def build(self) -> None:
        if self.device.type != "cpu":  # e.g. train.device = "auto" on a GPU machine
            warnings.warn(f"A3C trains in CPU worker processes; using the CPU, not {str(self.device)!r}",
                          stacklevel=3)
            self.device = torch.device("cpu")
        cfg = self.cfg
        self.model = _make_net(cfg, self.spaces)
        self.flat = FlatParams([self.model])
        self.flat.param.data.share_memory_()  # the module's parameters are views of it: all shared now
        self.optimizer = SharedOptimizer(self.optim["policy"], self.flat.param.data).share_memory_()
        self.shared = _Shared(self.flat.param.data, self.optimizer.state,
                              torch.zeros(1 + cfg.n_workers, dtype=torch.int64).share_memory_(),
                              torch.full((1,), self.optim["policy"].lr, dtype=torch.float64).share_memory_())
        self.iteration_steps = cfg.steps_per_round  # the engine converts step intervals with it
        self._workers: _Workers | None = None
        self._finalizer: weakref.finalize | None = None

    def networks(self) -> dict[str, nn.Module]:
        return {"policy": self.model}

    # -- workers --------------------------------------------------------------------------------
    def _start_workers(self) -> _Workers:
        import torch.multiprocessing as mp  # registers the reducers that pass shared tensors to spawn

        method = self.cfg.start_method
        if method == "auto":
            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        ctx = mp.get_context(method)
        spec = {"cfg": self.cfg, "optim": self.optim["policy"], "spaces": self.spaces, "env_id": self.env_id,
                "env_options": self.env_options,
                "main_thread": threading.current_thread() is threading.main_thread()}
        # Worker seeds come from the agent's generator (checkpointed), so a resumed run does not
        # replay the episodes the first workers started with.
        seeds = [int(s) for s in self.rng.integers(0, 2**31 - 1, self.cfg.n_workers)]
        self._sync_counters()
        workers = _Workers(ctx, spec, self.shared, seeds)
        self._finalizer = weakref.finalize(self, workers.close)
        return workers

    def _sync_counters(self) -> None:
        steps = self.shared.steps
        steps.zero_()
        steps[1] = self.num_steps

    def close(self) -> None:
        """Stop the worker processes (the next ``iteration()`` starts new ones)."""
        if self._finalizer is not None:
            self._finalizer()  # runs workers.close once
        self._workers, self._finalizer = None, None

    # -- training -------------------------------------------------------------------------------
    def iteration(self) -> dict[str, Any]:
        """One round: the workers run asynchronously for ``steps_per_round`` env steps, then pause."""
        if self._workers is None:
            self._workers = self._start_workers()
        lr = self.current_lr("policy")  # schedules are piecewise constant over rounds
        self.shared.lr[0] = lr
        # The round ends at the next multiple of steps_per_round (or at total_steps): a round's
        # overshoot (< n_workers * n_steps * n_envs) is taken off the next one, so the engine's
        # count of iterations x steps_per_round stays the number of env steps actually done.
        spr = self.cfg.steps_per_round
        target = (self.num_steps // spr + 1) * spr
        if self.num_steps < self.total_steps < target:
            target = self.total_steps
        self.shared.steps[0] = target
        try:
            results = self._workers.run_round()
        except BaseException:  # interrupted or a worker failed: workers are mid-round, stop them
            self.close()
            raise
        self.num_steps = int(self.shared.steps[1:].sum())
        episodes = sorted(ep for r in results for ep in r[2])
        self.episodes.extend((min(at, self.num_steps), ret, length) for at, ret, length in episodes)
        sums = np.sum([r[3] for r in results], axis=0)
        updates = sum(r[4] for r in results)
        self.num_updates += updates
        mean = sums / max(1, updates)
        return {"loss": float(mean[0]), "policy_loss": float(mean[1]), "value_loss": float(mean[2]),
                "entropy": float(mean[3]), "grad_norm": float(mean[4]), "updates": updates, "lr": lr}

    def learn(self, total_steps: int, progress: bool = True, log_interval_s: float = 10.0) -> A3C:
        """As :meth:`Agent.learn`; the workers are stopped at the end (or on an error)."""
        try:
            super().learn(total_steps, progress, log_interval_s)
        finally:
            self.close()
        return self

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool) -> np.ndarray:
        pi = self.model.policy(obs)
        actions = self.model.mode(pi) if deterministic else self.model.sample(pi, self.gen)[0]
        return env_actions(actions, self.spaces)

    # -- checkpoints ----------------------------------------------------------------------------
    def train_state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.name,
                "optimizer_state": self.optimizer.state_dict()}

    def load_train_state(self, state: dict[str, Any]) -> None:
        if state["optimizer"] != self.optimizer.name:
            raise ArchlabError(f"the checkpoint has {state['optimizer']!r} optimizer state, "
                               f"this agent uses {self.optimizer.name!r}")
        self.optimizer.load_state_dict(state["optimizer_state"])

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        # Clone the weights: they are shared memory that the next round overwrites in place.
        state["networks"] = {k: {n: t.clone() for n, t in sd.items()} for k, sd in state["networks"].items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._sync_counters()
