"""RL optimizers come from the engine: named trainables per algorithm, [optim] / [optim.NAME] in recipes,
SB3-style keywords in the plain API, schedules on the environment-step clock, moved [algo] keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("gymnasium", reason="the rl extra (gymnasium) is not installed")

from archlab import recipe as recipe_mod  # noqa: E402
from archlab.engine.optim import OptimConfig, build_optimizer  # noqa: E402
from archlab.errors import ArchlabError  # noqa: E402
from archlab.rl import A2C, A3C, DQN, PPO, SAC, TD3, QLearning  # noqa: E402
from archlab.rl.base import Agent  # noqa: E402


def rl_recipe(algo: dict, env: str, optim: dict | None = None) -> dict:
    raw = {"algo": algo, "env": {"id": env}, "train": {"loop": "rl", "steps": 1000}}
    if optim is not None:
        raw["optim"] = optim
    return raw


@pytest.mark.parametrize("algo, env, names", [
    ({"name": "ppo"}, "CartPole-v1", ("policy",)),
    ({"name": "a2c"}, "CartPole-v1", ("policy",)),
    ({"name": "reinforce"}, "CartPole-v1", ("policy",)),
    ({"name": "a3c"}, "CartPole-v1", ("policy",)),
    ({"name": "dqn"}, "CartPole-v1", ("q",)),
    ({"name": "sac"}, "Pendulum-v1", ("actor", "critic", "temperature")),
    ({"name": "sac", "ent_coef": 0.1}, "Pendulum-v1", ("actor", "critic")),  # a fixed temperature is not trained
    ({"name": "td3"}, "Pendulum-v1", ("actor", "critic")),
    ({"name": "qlearning"}, "FrozenLake-v1", ()),
])
def test_each_algorithm_declares_its_trainables(algo: dict, env: str, names: tuple[str, ...]) -> None:
    rec = recipe_mod.from_dict(rl_recipe(algo, env))
    assert tuple(rec.optim) == names


def test_algorithm_defaults_are_sb3s_and_recipe_keys_win() -> None:
    a2c = recipe_mod.from_dict(rl_recipe({"name": "a2c"}, "CartPole-v1")).optim["policy"]
    assert (a2c.name, a2c.lr, a2c.alpha, a2c.eps) == ("rmsprop", 7e-4, 0.99, 1e-5)
    dqn = recipe_mod.from_dict(rl_recipe({"name": "dqn"}, "CartPole-v1")).optim["q"]
    assert (dqn.name, dqn.lr, dqn.eps) == ("adam", 1e-4, 1e-8)
    rec = recipe_mod.from_dict(rl_recipe({"name": "sac"}, "Pendulum-v1",
                                         {"lr": 1e-3, "critic": {"lr": 2e-3, "eps": 1e-6}}))
    assert [rec.optim[n].lr for n in ("actor", "critic", "temperature")] == [1e-3, 2e-3, 1e-3]
    assert rec.optim["critic"].eps == 1e-6 and rec.optim["actor"].eps == 1e-8
    assert recipe_mod.from_dict(rec.to_dict()).optim == rec.optim  # the resolved recipe round-trips


@pytest.mark.parametrize("raw, message", [
    (rl_recipe({"name": "dqn", "learning_rate": 1e-3}, "CartPole-v1"), "algo.learning_rate has moved to optim.lr"),
    (rl_recipe({"name": "a2c", "optimizer": "adam"}, "CartPole-v1"), "algo.optimizer has moved to optim.name"),
    (rl_recipe({"name": "a3c", "rmsprop_alpha": 0.9}, "CartPole-v1"), "algo.rmsprop_alpha has moved to optim.alpha"),
    (rl_recipe({"name": "td3"}, "Pendulum-v1", {"temperature": {"lr": 1.0}}),
     "optim.temperature: loop 'rl' has no optimizer 'temperature'; its optimizers: actor, critic"),
    (rl_recipe({"name": "qlearning"}, "FrozenLake-v1", {"lr": 0.1}), "[optim] is not used by loop 'rl'"),
    (rl_recipe({"name": "ppo"}, "CartPole-v1", {"alpha": 1.0}), "alpha must be in [0, 1)"),
])
def test_bad_optimizer_settings_are_one_line_errors(raw: dict, message: str) -> None:
    with pytest.raises(ArchlabError) as exc:
        recipe_mod.from_dict(raw)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_plain_api_keywords_equal_an_optim_config() -> None:
    a = PPO("CartPole-v1", seed=0, learning_rate=1e-3, lr_schedule="linear", optimizer_eps=1e-6)
    b = PPO("CartPole-v1", seed=0, optim=OptimConfig(name="adam", lr=1e-3, schedule="linear", eps=1e-6))
    assert a.optim == b.optim
    assert A2C("CartPole-v1").optim["policy"].name == "rmsprop"
    assert isinstance(A2C("CartPole-v1", optimizer="adam").optimizer, torch.optim.Adam)
    assert isinstance(A3C("CartPole-v1", optimizer="adam").optimizer.state["exp_avg"], torch.Tensor)
    sac = SAC("Pendulum-v1", optim={"critic": OptimConfig(name="adam", lr=5e-4)})
    assert sac.optimizers()["critic"].param_groups[0]["lr"] == 5e-4
    assert sac.optimizers()["actor"].param_groups[0]["lr"] == 3e-4  # SB3's default for the others
    assert QLearning("FrozenLake-v1", learning_rate=0.5).cfg.learning_rate == 0.5  # alpha, not an optimizer's
    with pytest.raises(ArchlabError, match="not both"):
        PPO("CartPole-v1", learning_rate=1e-3, optim=OptimConfig())
    with pytest.raises(ArchlabError, match="td3 has no optimizer 'q'"):
        TD3("Pendulum-v1", optim={"q": OptimConfig()})
    with pytest.raises(ArchlabError, match="optim: lr must be"):
        DQN("CartPole-v1", learning_rate=-1.0)


def test_schedules_run_on_the_environment_step_clock() -> None:
    agent = PPO("CartPole-v1", seed=0, n_envs=2, n_steps=16, batch_size=32, n_epochs=1,
                optim=OptimConfig(name="adam", lr=1e-3, schedule="linear"))
    agent.learn(64, progress=False)  # 2 iterations of 32 env steps; the lr is set after each rollout
    assert agent.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * (1 - 64 / 64))
    step = PPO("CartPole-v1", seed=0, n_envs=2, n_steps=16, batch_size=32, n_epochs=1, total_steps=1000,
               optim=OptimConfig(name="adam", lr=1e-3, schedule="step", milestones=[32], gamma=0.5))
    step.iteration()
    assert step.optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)  # 32 env steps done: one milestone
    warm = DQN("CartPole-v1", total_steps=100, optim=OptimConfig(name="adam", lr=1e-3, warmup_steps=50))
    warm.num_steps = 10
    assert warm.current_lr("q") == pytest.approx(1e-3 * 11 / 50)


def test_engine_rmsprop_and_fused_flat_parameter_match_torch() -> None:
    cfg = OptimConfig(name="rmsprop", lr=1e-2, alpha=0.9, eps=1e-5)
    p = torch.nn.Parameter(torch.randn(10))
    opt = build_optimizer([p], cfg, fused=True)
    assert isinstance(opt, torch.optim.RMSprop) and opt.defaults["alpha"] == 0.9 and opt.defaults["eps"] == 1e-5
    adam = build_optimizer([p], OptimConfig(name="adam"), fused=True)
    assert adam.defaults["fused"]
    with pytest.raises(ValueError, match="alpha"):
        OptimConfig(alpha=float("nan"))


def test_saved_agent_keeps_its_optimizer_and_old_saves_still_load(tmp_path: Path) -> None:
    agent = DQN("CartPole-v1", seed=0, learning_rate=2e-3)
    agent.save(tmp_path / "new")
    assert Agent.load(tmp_path / "new").optim["q"].lr == 2e-3
    meta = json.loads((tmp_path / "new" / "config.json").read_text())
    del meta["optim"]  # as written before the optimizers moved to the engine
    meta["config"]["learning_rate"] = 5e-4
    (tmp_path / "new" / "config.json").write_text(json.dumps(meta))
    assert Agent.load(tmp_path / "new").optim["q"].lr == 5e-4
