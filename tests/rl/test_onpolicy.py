"""PPO, A2C and REINFORCE, and what they share (archlab.rl.policies, compute_gae): learning toy envs,
determinism, save/load, bit-exact resume, GAE against a hand-computed example, truncation
bootstrapping, schedules and one-line errors. The fast path against the reference: test_fast.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from archlab.engine.checkpoint import load_state, save_state
from archlab.errors import ArchlabError
from archlab.rl import A2C, PPO, REINFORCE
from archlab.rl.buffers import compute_gae
from archlab.rl.policies import collect_rollout

# Small, fast settings per algorithm (Identity: optimum 20, random play 5).
TOY = {
    PPO: dict(n_envs=4, n_steps=64, batch_size=64, n_epochs=4, learning_rate=3e-3),
    A2C: dict(n_envs=4, n_steps=5, learning_rate=3e-3),
    REINFORCE: dict(n_envs=4, n_episodes=4, learning_rate=3e-3),
}
CARTPOLE = {
    PPO: dict(n_envs=2, n_steps=32, batch_size=16, n_epochs=2, net_arch=[16, 16], lr_schedule="linear",
              clip_schedule="linear", clip_range_vf=0.2, ent_coef=0.01),
    A2C: dict(n_envs=2, n_steps=5, net_arch=[16, 16], ent_coef=0.01),
    REINFORCE: dict(n_envs=2, n_episodes=2, net_arch=[16, 16], max_grad_norm=0.5),
}
ALGOS = [PPO, A2C, REINFORCE]


# ------------------------------------------------------------------------------ GAE
def test_gae_hand_computed() -> None:
    # One env, 3 steps, the episode terminates after step 1 (d_1 = 1), gamma 0.9, lambda 0.5.
    r = np.array([[1.0], [2.0], [3.0]], np.float32)
    v = np.array([[0.5], [1.0], [2.0]], np.float32)
    d = np.array([[0.0], [1.0], [0.0]], np.float32)
    last = np.array([4.0], np.float32)
    adv, ret = compute_gae(r, v, d, last, gamma=0.9, lam=0.5)
    # delta_2 = 3 + 0.9*4 - 2 = 4.6;               A_2 = 4.6
    # delta_1 = 2 + 0 - 1 = 1 (terminal);          A_1 = 1            (no bootstrap across the end)
    # delta_0 = 1 + 0.9*1.0 - 0.5 = 1.4;           A_0 = 1.4 + 0.9*0.5*1 = 1.85
    assert np.allclose(adv[:, 0], [1.85, 1.0, 4.6])
    assert np.allclose(ret[:, 0], [2.35, 2.0, 6.6])  # R_t = A_t + V(s_t)


def test_gae_lambda_one_is_n_step_return() -> None:
    rng = np.random.default_rng(0)
    r, v = rng.normal(size=(5, 2)).astype(np.float32), rng.normal(size=(5, 2)).astype(np.float32)
    d = np.zeros((5, 2), np.float32)
    last = rng.normal(size=2).astype(np.float32)
    _, ret = compute_gae(r, v, d, last, gamma=0.99, lam=1.0)
    expected = last.copy()
    for t in reversed(range(5)):
        expected = r[t] + 0.99 * expected
        assert np.allclose(ret[t], expected, atol=1e-5)
    adv0, _ = compute_gae(r, v, d, last, gamma=0.99, lam=0.0)  # lambda 0: one-step TD errors
    assert np.allclose(adv0[:-1], r[:-1] + 0.99 * v[1:] - v[:-1], atol=1e-6)


# ------------------------------------------------------------------------------ learning
@pytest.mark.parametrize("cls", ALGOS)
def test_learns_identity(cls: type) -> None:
    agent = cls("archlab/Identity-v0", seed=0, **TOY[cls])
    agent.learn(4000, progress=False)
    mean, _, _ = agent.evaluate(10)
    assert mean >= 18.0  # optimum 20, random play 5
    assert agent.num_updates > 0 and agent.episodes


def test_ppo_learns_continuous_actions() -> None:
    agent = PPO("archlab/IdentityBox-v0", seed=0, **TOY[PPO])
    agent.learn(8000, progress=False)
    mean, _, _ = agent.evaluate(10)
    assert mean > -3.0  # optimum 0, random play about -13
    std = agent.model.log_std.exp().item()
    assert std < 1.0  # the state-independent std shrank from exp(0)


# ------------------------------------------------------------------------------ reproducibility
@pytest.mark.parametrize("cls", ALGOS)
def test_same_seed_same_run(cls: type) -> None:
    runs = []
    for _ in range(2):
        agent = cls("CartPole-v1", seed=3, **CARTPOLE[cls])
        agent.learn(1500, progress=False)
        runs.append(([r for _, r, _ in agent.episodes], agent.flat.param.clone()))
    assert runs[0][0] == runs[1][0] and len(runs[0][0]) > 5
    assert torch.equal(runs[0][1], runs[1][1])


@pytest.mark.parametrize("cls", ALGOS)
def test_save_load_predict(cls: type, tmp_path) -> None:
    agent = cls("CartPole-v1", seed=0, **CARTPOLE[cls], normalize_obs=True)
    agent.learn(500, progress=False)
    agent.save(tmp_path / "agent")
    loaded = cls.load(tmp_path / "agent")
    obs = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    assert np.array_equal(agent.predict(obs), loaded.predict(obs))
    assert loaded.predict(obs[0]).shape == ()
    assert loaded.cfg.net_arch == [16, 16]


def test_save_load_continuous(tmp_path) -> None:
    agent = PPO("archlab/IdentityBox-v0", seed=0, **TOY[PPO], log_std_init=-0.5, shared=True)
    agent.learn(300, progress=False)
    agent.save(tmp_path / "box")
    loaded = PPO.load(tmp_path / "box")
    obs = np.random.default_rng(0).uniform(-1, 1, size=(8, 1)).astype(np.float32)
    a = loaded.predict(obs)
    assert np.array_equal(agent.predict(obs), a) and a.shape == (8, 1)
    assert np.all(np.abs(agent.predict(obs * 100, deterministic=False)) <= 1.0)  # clipped to the Box


def _train_to(agent, steps: int):
    while agent.num_steps < steps:
        agent.iteration()
    return agent


def _resume(first, fresh, tmp_path):
    """``fresh`` (an agent built with another seed) loaded with ``first``'s state, saved and read back
    through the engine's checkpoint format: the state overrides everything."""
    save_state(first.state_dict(), tmp_path / "state.safetensors")
    fresh.load_state_dict(load_state(tmp_path / "state.safetensors"))
    return fresh


@pytest.mark.parametrize("cls", ALGOS)
def test_resume_is_bit_exact(cls: type, tmp_path) -> None:
    hp = CARTPOLE[cls]
    full = _train_to(cls("CartPole-v1", seed=1, total_steps=3000, **hp), 3000)
    first = _train_to(cls("CartPole-v1", seed=1, total_steps=3000, **hp), 1200)
    resumed = _train_to(_resume(first, cls("CartPole-v1", seed=99, total_steps=3000, **hp), tmp_path), 3000)
    assert [r for _, r, _ in resumed.episodes] == [r for _, r, _ in full.episodes]
    assert torch.equal(resumed.flat.param, full.flat.param)
    assert resumed.num_updates == full.num_updates


def test_resume_with_obs_and_reward_normalization(tmp_path) -> None:
    # the return statistic is a scalar (shape ()), which a numpy update turns into a numpy scalar
    hp = {**CARTPOLE[PPO], "normalize_obs": True, "normalize_reward": True}
    full = _train_to(PPO("CartPole-v1", seed=2, total_steps=2000, **hp), 2000)
    first = _train_to(PPO("CartPole-v1", seed=2, total_steps=2000, **hp), 800)
    resumed = _resume(first, PPO("CartPole-v1", seed=5, total_steps=2000, **hp), tmp_path)
    assert resumed.normalizer.ret_rms.var == pytest.approx(float(first.normalizer.ret_rms.var))
    _train_to(resumed, 2000)
    assert [r for _, r, _ in resumed.episodes] == [r for _, r, _ in full.episodes]
    assert torch.equal(resumed.flat.param, full.flat.param)


def test_reinforce_checkpoint_holds_running_episodes() -> None:
    agent = REINFORCE("CartPole-v1", seed=0, **CARTPOLE[REINFORCE])
    agent.iteration()
    state = agent.state_dict()["train"]["traj"]
    assert len(state) == 2 and all(isinstance(v, torch.Tensor) for tr in state for v in tr.values())
    assert sum(len(tr["rewards"]) for tr in state) > 0  # one env copy is mid-episode


# ------------------------------------------------------------------------------ pieces
def test_shared_body_trains_on_the_reference() -> None:
    agent = PPO("CartPole-v1", seed=0, shared=True, activation="elu", net_arch=[16], n_steps=64, batch_size=32)
    assert agent.fast is None  # no hand-written backward for a shared body: the autograd reference
    before = torch.nn.utils.parameters_to_vector(agent.model.parameters())
    agent.learn(200, progress=False)
    after = torch.nn.utils.parameters_to_vector(agent.model.parameters())
    assert agent.num_updates > 0 and torch.isfinite(after).all() and not torch.equal(before, after)


def test_categorical_sampling_frequencies() -> None:
    agent = PPO("CartPole-v1", seed=0)
    logits = torch.log(torch.tensor([[0.2, 0.8]])).expand(20000, 2)
    a, logp = agent.model.sample(logits, torch.Generator().manual_seed(0))
    assert abs(a.float().mean().item() - 0.8) < 0.01
    assert torch.allclose(logp, torch.log(torch.tensor([0.2, 0.8]))[a])


def test_truncation_bootstraps_with_final_value() -> None:
    # Identity episodes are cut at 20 steps by a time limit: the last reward gets + gamma * V(final_obs).
    agent = PPO("archlab/Identity-v0", seed=0, n_envs=2, n_steps=20, gamma=0.9)
    finals = {}
    step = agent.env_step

    def spy(actions):
        out = step(actions)
        if out[4]["final_obs"]:
            finals.update(out[4]["final_obs"])
        return out

    agent.env_step = spy
    collect_rollout(agent, agent.buffer, 0.95)
    assert sorted(finals) == [0, 1] and agent.buffer.dones[19].tolist() == [1.0, 1.0]
    with torch.no_grad():
        v_final = agent.model.value(torch.from_numpy(np.stack([finals[0], finals[1]]))).numpy()
    extra = agent.buffer.rewards[19] - 0.9 * v_final  # what is left is the env's own 0/1 reward
    assert np.allclose(extra, np.round(extra), atol=1e-5)


def test_linear_schedules_decay() -> None:
    agent = PPO("CartPole-v1", seed=0, n_envs=2, n_steps=16, batch_size=32, n_epochs=1, learning_rate=1e-3,
                lr_schedule="linear", clip_schedule="linear", clip_range=0.2)
    agent.learn(320, progress=False)
    stats = agent.iteration()  # past the end: both schedules are at 0
    assert stats["lr"] == 0.0 and stats["clip_range"] == 0.0
    mid = PPO("CartPole-v1", seed=0, n_envs=2, n_steps=16, batch_size=32, learning_rate=1e-3, lr_schedule="linear",
              clip_schedule="linear", total_steps=64)
    stats = mid.iteration()  # 32 of 64 steps done
    assert stats["lr"] == pytest.approx(5e-4) and stats["clip_range"] == pytest.approx(0.1)


def test_target_kl_stops_epochs_early() -> None:
    agent = PPO("CartPole-v1", seed=0, n_envs=2, n_steps=64, batch_size=16, n_epochs=10, learning_rate=0.05,
                target_kl=1e-4)
    agent.iteration()
    assert agent.num_updates < 10 * 8


def test_a2c_uses_rmsprop_like_sb3() -> None:
    agent = A2C("CartPole-v1", seed=0)
    opt = agent.optimizer
    assert isinstance(opt, torch.optim.RMSprop)
    assert opt.defaults["alpha"] == 0.99 and opt.defaults["eps"] == 1e-5 and opt.defaults["lr"] == 7e-4
    assert isinstance(A2C("CartPole-v1", seed=0, optimizer="adam").optimizer, torch.optim.Adam)


@pytest.mark.parametrize("cls,bad", [
    (PPO, {"clip_range": -0.1}), (PPO, {"batch_size": 0}), (PPO, {"gae_lambda": 1.5}), (PPO, {"clip_schedule": "cos"}),
    (PPO, {"n_stepz": 8}), (A2C, {"n_steps": 0}), (A2C, {"optimizer": "adamax"}), (REINFORCE, {"n_episodes": 0}),
    (REINFORCE, {"max_grad_norm": -1.0}), (PPO, {"activation": "swish"}),
])
def test_bad_hyperparameter_is_one_line_error(cls: type, bad: dict) -> None:
    with pytest.raises(ArchlabError) as exc:
        cls("CartPole-v1", **bad)
    assert "\n" not in str(exc.value)


def test_reinforce_without_baseline_leaves_the_critic_alone() -> None:
    agent = REINFORCE("archlab/Identity-v0", seed=0, baseline=False, **TOY[REINFORCE])
    critic = [p.clone() for p in agent.model.vf_net.parameters()]
    stats = agent.iteration()
    assert "value_loss" not in stats and agent.num_updates == 1
    assert all(torch.equal(a, b) for a, b in zip(critic, agent.model.vf_net.parameters(), strict=True))
