"""A3C: learning on toy envs, save/load, checkpoints, worker-process lifetime, errors.

A3C is asynchronous, hence not reproducible run to run; these tests check what must hold anyway.
"""

from __future__ import annotations

import gc
import io
import multiprocessing as mp
import os
import subprocess
import sys
import textwrap

import gymnasium as gym
import numpy as np
import pytest
import torch

import archlab.rl
from archlab.engine.optim import OptimConfig
from archlab.errors import ArchlabError
from archlab.rl.a3c import A3C, SharedOptimizer

FAST = dict(n_workers=2, n_envs=2, learning_rate=3e-3, steps_per_round=500)


def gone(pid: int) -> bool:
    """The process no longer runs (reaped, or a zombie waiting for init to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def worker_pids(agent: A3C) -> list[int]:
    assert agent._workers is not None
    return [p.pid for p in agent._workers.procs]


def assert_no_workers(pids: list[int]) -> None:
    assert mp.active_children() == []
    if sys.platform.startswith("linux"):
        assert all(gone(p) for p in pids)


def test_learns_identity() -> None:
    agent = A3C("archlab/Identity-v0", seed=0, **FAST)
    agent.learn(2500, progress=False)
    mean, _, _ = agent.evaluate(10)
    assert mean >= 18.0  # optimum 20, random play 5
    assert agent.num_steps >= 2500 and agent.num_updates > 0 and agent.episodes
    assert mp.active_children() == []  # learn() stops the workers


def test_learns_continuous_identity() -> None:
    # A narrower initial Gaussian, a smaller step and a short horizon (the env is a contextual bandit):
    # 20/20 seeds tried reach >= -0.6 in 3000 steps.
    agent = A3C("archlab/IdentityBox-v0", seed=0, **{**FAST, "learning_rate": 1e-3}, log_std_init=-1.0,
                gamma=0.9, ent_coef=0.0)
    agent.learn(3000, progress=False)
    assert agent.evaluate(10)[0] > -3.0  # optimum 0; the initial (mean 0) policy about -6.7
    actions = agent.predict(np.linspace(-1, 1, 7, dtype=np.float32)[:, None], deterministic=False)
    assert actions.shape == (7, 1) and np.all(np.abs(actions) <= 1.0)


def test_save_load_same_actions(tmp_path) -> None:
    agent = A3C("CartPole-v1", seed=0, n_workers=2, n_envs=2, steps_per_round=300)
    agent.iteration()
    agent.iteration()
    agent.close()
    obs = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    agent.save(tmp_path / "a3c")
    for loaded in (A3C.load(tmp_path / "a3c"), archlab.rl.load(tmp_path / "a3c")):
        assert isinstance(loaded, A3C) and loaded.num_steps == agent.num_steps
        np.testing.assert_array_equal(loaded.predict(obs), agent.predict(obs))
        assert loaded.predict(obs[0]) == agent.predict(obs[0])


def test_checkpoint_round_trip() -> None:
    agent = A3C("archlab/Identity-v0", seed=0, optimizer="adam", **FAST)
    agent.iteration()
    agent.iteration()
    state = agent.state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)
    snapshot = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)

    agent.iteration()  # the checkpoint is a copy: later rounds must not change it
    for k, v in agent.model.state_dict().items():
        torch.testing.assert_close(state["networks"]["policy"][k], snapshot["networks"]["policy"][k], rtol=0, atol=0)
        assert not torch.equal(v, snapshot["networks"]["policy"][k])
    agent.close()

    resumed = A3C("archlab/Identity-v0", seed=0, optimizer="adam", **FAST)
    resumed.load_state_dict(snapshot)
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, snapshot["networks"]["policy"][k])
    for k, v in resumed.shared.opt_state.items():
        assert torch.equal(v, snapshot["train"]["optimizer_state"][k])
    assert int(resumed.shared.opt_state["step"]) > 0
    assert resumed.num_steps == snapshot["num_steps"] and resumed.num_updates == snapshot["num_updates"]
    assert len(resumed.episodes) == len(snapshot["episodes"])
    resumed.iteration()  # training continues from the restored counters and weights
    assert resumed.num_steps >= snapshot["num_steps"] + FAST["steps_per_round"]
    assert int(resumed.shared.opt_state["step"]) > int(snapshot["train"]["optimizer_state"]["step"])
    resumed.close()

    other = A3C("archlab/Identity-v0", seed=0, **FAST)  # rmsprop
    with pytest.raises(ArchlabError, match="optimizer"):
        other.load_state_dict(snapshot)


def test_workers_start_lazily_and_shut_down_cleanly() -> None:
    agent = A3C("archlab/Identity-v0", seed=0, **FAST)
    assert agent._workers is None and mp.active_children() == []
    agent.iteration()
    first = worker_pids(agent)
    assert len(first) == 2 and len(mp.active_children()) == 2
    agent.close()
    assert_no_workers(first)
    agent.close()  # idempotent
    agent.iteration()  # restarts new workers
    second = worker_pids(agent)
    assert set(second).isdisjoint(first)
    del agent
    gc.collect()  # garbage collection stops them too
    assert_no_workers(second)


def test_workers_started_from_a_thread_outlive_it() -> None:
    import threading

    agent = A3C("archlab/Identity-v0", seed=0, **FAST)
    t = threading.Thread(target=agent.iteration)
    t.start()
    t.join()
    agent.iteration()  # the workers are still there after the starting thread ended
    assert agent.num_steps >= 2 * FAST["steps_per_round"]
    pids = worker_pids(agent)
    agent.close()
    assert_no_workers(pids)


class CrashEnv(gym.Env):
    """Raises inside the worker after a few steps."""

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        if self.t > 30:
            raise ValueError("boom in the env")
        return np.zeros(2, np.float32), 0.0, False, False, {}


def test_worker_error_is_raised_and_workers_stopped() -> None:
    if "ArchlabTest/Crash-v0" not in gym.registry:
        gym.register("ArchlabTest/Crash-v0", entry_point=CrashEnv)
    agent = A3C("ArchlabTest/Crash-v0", seed=0, n_workers=2)
    with pytest.raises(RuntimeError, match="boom in the env"):
        agent.iteration()
    assert agent._workers is None
    assert mp.active_children() == []


def test_interrupt_and_killed_main_process_leave_no_workers(tmp_path) -> None:
    # Ctrl-C in the middle of a round stops the workers; a SIGKILLed main process takes them along.
    # SIGINT's handler is set explicitly: a shell starts background jobs with SIGINT ignored, and Python
    # then installs no KeyboardInterrupt handler (so under `make test &` the round would never end).
    # If the script hangs anyway, faulthandler prints where before the timeout.
    script = textwrap.dedent("""
        import faulthandler, multiprocessing as mp, os, signal, sys, threading
        faulthandler.dump_traceback_later(90, exit=True, file=sys.stderr)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        import archlab.rl
        agent = archlab.rl.A3C("archlab/Identity-v0", seed=0, n_workers=2, steps_per_round=10**9)
        threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()
        try:
            agent.iteration()
        except KeyboardInterrupt:
            print("interrupted", len(mp.active_children()), flush=True)
        agent.cfg.steps_per_round = 100
        agent.iteration()
        print(*[p.pid for p in agent._workers.procs], flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    lines = out.stdout.splitlines()
    assert lines and lines[0] == "interrupted 0", f"exit code {out.returncode}, stdout {out.stdout!r}\n{out.stderr}"
    pids = [int(p) for p in lines[1].split()]
    assert len(pids) == 2
    if sys.platform.startswith("linux"):  # PR_SET_PDEATHSIG: the kernel kills them with the parent
        import time

        deadline = time.monotonic() + 10
        while not all(gone(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(gone(p) for p in pids)


def test_spawn_start_method() -> None:
    # One worker: a spawned process imports torch and gymnasium afresh (seconds on a busy machine).
    agent = A3C("archlab/Identity-v0", seed=0, start_method="spawn", optimizer="adam", **{**FAST, "n_workers": 1})
    agent.iteration()
    agent.iteration()
    assert agent.num_steps >= 1000 and agent.num_updates > 0
    pids = worker_pids(agent)
    agent.close()
    assert_no_workers(pids)


@pytest.mark.parametrize("name", ["rmsprop", "adam"])
def test_shared_optimizer_matches_torch_optim(name: str) -> None:
    gen = torch.Generator().manual_seed(0)
    p0 = torch.randn(50, generator=gen)
    ours = SharedOptimizer(OptimConfig(name=name, eps=1e-5, alpha=0.99), p0.clone()).share_memory_()
    ref_p = torch.nn.Parameter(p0.clone())
    ref = (torch.optim.RMSprop([ref_p], lr=1e-2, alpha=0.99, eps=1e-5, foreach=False) if name == "rmsprop"
           else torch.optim.Adam([ref_p], lr=1e-2, eps=1e-5, foreach=False))
    for _ in range(10):
        g = torch.randn(50, generator=gen)
        ours.step(g, 1e-2)
        ref_p.grad = g.clone()
        ref.step()
    torch.testing.assert_close(ours.param, ref_p.detach(), rtol=1e-6, atol=1e-7)
    assert int(ours.state["step"]) == 10


@pytest.mark.parametrize("hp", [dict(n_workers=0), dict(n_steps=0), dict(optimizer="sgd"),
                                dict(normalize_obs=True), dict(start_method="thread"), dict(max_grad_norm=-1.0),
                                dict(steps_per_round=0), dict(gae_lambda=1.5), dict(nworkers=2)])
def test_bad_hyperparameter_is_one_line_error(hp) -> None:
    with pytest.raises(ArchlabError) as exc:
        A3C("CartPole-v1", **hp)
    assert "\n" not in str(exc.value)


def test_runs_on_cpu_whatever_the_device() -> None:
    with pytest.warns(UserWarning, match="CPU"):
        agent = A3C("CartPole-v1", device="meta")
    assert agent.device.type == "cpu" and agent.predict(np.zeros(4, np.float32)) in (0, 1)
