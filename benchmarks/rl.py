"""``archlab bench rl``: archlab vs Stable-Baselines3, same algorithm, hyperparameters, env and budget.

For each case (an archlab RL recipe) and seed, both libraries train from scratch in this process at
1 thread, one after the other (the order alternates with the seed). Measured per run: wall time of
training, environment steps per second, the wall time at which the mean return of the last 10
training episodes first reached the recipe's target ("time to target"; "-" when never), and the
mean return of 10 deterministic evaluation episodes at the end (each library evaluates its own
policy on fresh envs). SB3 gets the recipe's hyperparameters translated to its names, its own
VecNormalize when the recipe normalizes, and a DummyVecEnv of ``n_envs`` copies (SB3's default).
"""

from __future__ import annotations

import dataclasses
import inspect
import statistics
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch

WINDOW = 10
RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "rl"
# archlab hyperparameter names that SB3 spells differently or handles outside the constructor
_HANDLED = {"n_envs", "net_arch", "activation", "normalize_obs", "normalize_reward", "clip_schedule", "clip_range"}


def _recipe(name: str) -> Any:
    from archlab import recipe as recipe_mod

    return recipe_mod.load(RECIPES / f"{name}.toml")


def run_ours(rec: Any, seed: int, target: float) -> dict[str, Any]:
    from archlab.train.rl import make_agent

    agent = make_agent(rec, seed=seed)
    t0 = time.perf_counter()
    reached = None
    while agent.num_steps < rec.train.steps:
        agent.iteration()
        if reached is None and len(agent.episodes) >= WINDOW and agent.recent_return(WINDOW) >= target:
            reached = time.perf_counter() - t0
    wall = time.perf_counter() - t0
    mean, _, _ = agent.evaluate(10, seed=seed + 1_000_000)
    steps = agent.num_steps
    if hasattr(agent, "close"):
        agent.close()
    return {"wall_s": wall, "steps": steps, "steps_per_s": steps / wall, "time_to_target_s": reached,
            "eval_return": mean}


def _sb3_model(rec: Any, seed: int) -> tuple[Any, Any]:
    import stable_baselines3 as sb3
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    hp = dict(rec.model_config)
    algo = rec.model_name
    cls = {"ppo": sb3.PPO, "a2c": sb3.A2C, "dqn": sb3.DQN, "sac": sb3.SAC, "td3": sb3.TD3}[algo]
    env_cfg = rec.tables["env"]
    env = make_vec_env(env_cfg.id, n_envs=hp.get("n_envs", 1), seed=seed, env_kwargs=env_cfg.options or None)
    if hp.get("normalize_obs") or hp.get("normalize_reward"):
        env = VecNormalize(env, norm_obs=hp.get("normalize_obs", False), norm_reward=hp.get("normalize_reward", False),
                           gamma=hp.get("gamma", 0.99))
    accepted = set(inspect.signature(cls.__init__).parameters)
    kwargs = {k: v for k, v in hp.items() if k not in _HANDLED and k in accepted}

    def schedule(value: float, kind: str) -> Any:
        return (lambda progress: progress * value) if kind == "linear" else value

    # the recipe's [optim] (the benchmarked recipes give every trainable the same lr and schedule)
    opt = next(iter(rec.optim.values()))
    kwargs["learning_rate"] = schedule(opt.lr, opt.schedule)
    if "clip_range" in hp:
        kwargs["clip_range"] = schedule(hp["clip_range"], hp.get("clip_schedule", "constant"))
    policy_kwargs: dict[str, Any] = {}
    if "net_arch" in hp:
        policy_kwargs["net_arch"] = (dict(pi=hp["net_arch"], vf=hp["net_arch"]) if algo in ("ppo", "a2c")
                                     else hp["net_arch"])
    if "activation" in hp:
        acts = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU, "elu": torch.nn.ELU}
        policy_kwargs["activation_fn"] = acts[hp["activation"]]
    for k in ("log_std_init", "ortho_init"):  # SB3 takes these as policy arguments
        if k in hp:
            policy_kwargs[k] = hp[k]
    if algo == "td3" and "action_noise" in hp:
        from stable_baselines3.common.noise import NormalActionNoise

        n = env.action_space.shape[0]
        kwargs["action_noise"] = NormalActionNoise(np.zeros(n), hp["action_noise"] * np.ones(n))
    return cls("MlpPolicy", env, seed=seed, policy_kwargs=policy_kwargs, device="cpu", verbose=0, **kwargs), env


def run_sb3(rec: Any, seed: int, target: float) -> dict[str, Any]:
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.evaluation import evaluate_policy

    model, env = _sb3_model(rec, seed)

    class Watch(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.returns: deque[float] = deque(maxlen=WINDOW)
            self.reached: float | None = None

        def _on_step(self) -> bool:
            for info in self.locals.get("infos", []):
                if "episode" in info:
                    self.returns.append(info["episode"]["r"])
            if self.reached is None and len(self.returns) == WINDOW and np.mean(self.returns) >= target:
                self.reached = time.perf_counter() - t0
            return True

    watch = Watch()
    t0 = time.perf_counter()
    model.learn(rec.train.steps, callback=watch)
    wall = time.perf_counter() - t0
    eval_env = model.get_env()
    if hasattr(eval_env, "training"):
        eval_env.training, eval_env.norm_reward = False, False
    mean, _ = evaluate_policy(model, eval_env, n_eval_episodes=10, deterministic=True)
    steps = model.num_timesteps
    env.close()
    return {"wall_s": wall, "steps": steps, "steps_per_s": steps / wall, "time_to_target_s": watch.reached,
            "eval_return": float(mean)}


def run(params: dict[str, Any], log: Any) -> tuple[dict[str, Any], str]:
    torch.set_num_threads(int(params.get("threads", 1)))
    seeds = int(params.get("seeds", 1))
    rows = []
    for name in params["cases"]:
        rec = _recipe(name)
        if name in params.get("steps", {}):  # a shorter budget for the slow cases (speed, not returns)
            rec.train.steps = int(params["steps"][name])
        target = rec.expect.value
        # extra archlab rows: name -> [algo] overrides (e.g. {"archlab bf16" = {matmul_dtype = "bfloat16"}})
        variants = {"archlab": {}, **params.get("variants", {}).get(name, {})}
        runs: dict[str, list[dict[str, Any]]] = {side: [] for side in (*variants, "sb3")}
        for seed in range(seeds):
            order = (*variants, "sb3") if seed % 2 == 0 else ("sb3", *variants)
            for side in order:
                torch.manual_seed(seed)
                if side == "sb3":
                    res = run_sb3(rec, seed, target)
                else:
                    res = run_ours(dataclasses.replace(rec, model={**rec.model, **variants[side]}), seed, target)
                runs[side].append(res)
                log(f"{name} seed {seed} {side}: {res['steps_per_s']:.0f} steps/s, {res['wall_s']:.1f} s, "
                    f"eval return {res['eval_return']:.1f}, time to target {res['time_to_target_s']}")
        rows.append({"case": name, "algo": rec.model_name, "env": rec.tables["env"].id, "steps": rec.train.steps,
                     "target": target, "runs": runs})
    return {"params": params, "rows": rows}, _markdown(rows)


def _fmt_ttt(values: list[float | None]) -> str:
    hit = [v for v in values if v is not None]
    if not hit:
        return "never"
    return f"{statistics.median(hit):.1f} s ({len(hit)}/{len(values)} seeds)"


def _markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| case | env, steps | library | steps/s (median) | wall (median) | time to target (median) | "
             "eval return (mean ± std over seeds) | archlab / SB3 steps/s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sps = {k: statistics.median(x["steps_per_s"] for x in v) for k, v in r["runs"].items()}
        for side in r["runs"]:
            v = r["runs"][side]
            ev = [x["eval_return"] for x in v]
            std = statistics.stdev(ev) if len(ev) > 1 else 0.0
            ratio = f"**{sps[side] / sps['sb3']:.2f}x**" if side != "sb3" else ""
            lines.append(f"| {r['case']} | {r['env']}, {r['steps']:,} | {side} | {sps[side]:,.0f} | "
                         f"{statistics.median(x['wall_s'] for x in v):.1f} s | "
                         f"{_fmt_ttt([x['time_to_target_s'] for x in v])} | {statistics.fmean(ev):.1f} ± {std:.1f} "
                         f"| {ratio} |")
    lines.append("")
    targets = ", ".join(f"{r['case']} {r['target']:g}" for r in rows)
    lines.append(f"Time to target: first time the mean of the last {WINDOW} training episodes reached the "
                 f"recipe's target ({targets}).")
    return "\n".join(lines) + "\n"
