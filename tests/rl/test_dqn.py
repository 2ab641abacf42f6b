"""DQN (with Double and dueling options) and the replay buffer: learning a toy env, determinism, save/load,
bit-exact resume, the fast path's hand-written backward pass against autograd, and one-line errors
(the whole fast path against the reference: test_fast_offpolicy.py)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from archlab.errors import ArchlabError
from archlab.rl.buffers import ReplayBuffer
from archlab.rl.dqn import DQN, QNetwork
from archlab.rl.fast import FlatParams
from archlab.rl.fast_offpolicy import dqn_backward_huber, dqn_forward, linear_layers

FAST = dict(net_arch=[32], learning_rate=3e-3, learning_starts=100, batch_size=32, train_freq=10, gradient_steps=5,
            target_update_interval=100, exploration_fraction=0.3, exploration_final_eps=0.02, gamma=0.5)
CARTPOLE = dict(net_arch=[16, 16], learning_starts=50, batch_size=16, train_freq=8, gradient_steps=2,
                target_update_interval=40, buffer_size=300)


@pytest.mark.parametrize("options", [{}, {"double": True}, {"dueling": True},
                                     {"double": True, "dueling": True, "activation": "tanh"},
                                     {"activation": "silu"}])  # silu: the autograd path
def test_learns_identity(options: dict) -> None:
    agent = DQN("archlab/Identity-v0", seed=0, **FAST, **options)
    agent.learn(2000, progress=False)
    mean, _, _ = agent.evaluate(10)
    assert mean >= 18.0  # optimum 20, random play 5
    assert agent.num_updates > 0 and agent.episodes


def test_same_seed_same_run() -> None:
    runs = []
    for _ in range(2):
        agent = DQN("CartPole-v1", seed=3, n_envs=2, **CARTPOLE)
        agent.learn(600, progress=False)
        runs.append(([r for _, r, _ in agent.episodes], agent.fast.flat.param.clone()))
    assert runs[0][0] == runs[1][0] and len(runs[0][0]) > 5
    assert torch.equal(runs[0][1], runs[1][1])


def test_save_load_predict(tmp_path) -> None:
    agent = DQN("CartPole-v1", seed=0, dueling=True, **CARTPOLE)
    agent.learn(300, progress=False)
    agent.save(tmp_path / "dqn")
    loaded = DQN.load(tmp_path / "dqn")
    obs = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    assert np.array_equal(agent.predict(obs), loaded.predict(obs))
    assert loaded.predict(obs[0]).shape == ()
    assert loaded.cfg.dueling and loaded.cfg.net_arch == [16, 16]


@pytest.mark.parametrize("options", [{}, {"double": True, "tau": 0.5, "target_update_interval": 8}])
def test_resume_is_bit_exact(options: dict) -> None:
    hp = {**CARTPOLE, **options}
    full = DQN("CartPole-v1", seed=1, n_envs=2, total_steps=800, **hp)
    while full.num_steps < 800:
        full.iteration()
    first = DQN("CartPole-v1", seed=1, n_envs=2, total_steps=800, **hp)
    while first.num_steps < 400:
        first.iteration()
    state = first.state_dict()
    resumed = DQN("CartPole-v1", seed=99, n_envs=2, total_steps=800, **hp)  # the state overrides everything
    resumed.load_state_dict(state)
    while resumed.num_steps < 800:
        resumed.iteration()
    assert [r for _, r, _ in resumed.episodes] == [r for _, r, _ in full.episodes]
    assert torch.equal(resumed.fast.flat.param, full.fast.flat.param)
    assert torch.equal(resumed.fast.target_flat.param, full.fast.target_flat.param)
    assert resumed.num_updates == full.num_updates


def test_epsilon_schedule_and_random_start() -> None:
    agent = DQN("CartPole-v1", seed=0, exploration_fraction=0.5, exploration_initial_eps=1.0,
                exploration_final_eps=0.1, total_steps=1000)
    assert agent.epsilon() == 1.0
    agent.num_steps = 250
    assert agent.epsilon() == pytest.approx(0.55)
    agent.num_steps = 600
    assert agent.epsilon() == pytest.approx(0.1)


def test_target_updates() -> None:
    # Hard: the target is the online network as it was when last copied (every interval, during collection).
    agent = DQN("CartPole-v1", seed=0, learning_starts=0, train_freq=4, gradient_steps=3, target_update_interval=4,
                net_arch=[8])
    agent.iteration()  # copies (nothing trained yet), then 3 gradient steps
    assert agent.num_updates == 3 and not torch.equal(agent.fast.flat.param, agent.fast.target_flat.param)
    before = agent.fast.flat.param.clone()
    agent.iteration()  # copies the weights after those 3 steps, then trains on
    assert torch.equal(agent.fast.target_flat.param, before)
    # Soft: theta' <- (1 - tau) theta' + tau theta.
    soft = DQN("CartPole-v1", seed=0, tau=0.25, net_arch=[8])
    with torch.no_grad():
        soft.fast.flat.param.add_(1.0)
    old = soft.fast.target_flat.param.clone()
    soft.update_target()
    assert torch.allclose(soft.fast.target_flat.param, 0.75 * old + 0.25 * soft.fast.flat.param)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("dueling", [False, True])
@pytest.mark.parametrize("n_obs,arch", [(0, [32, 16]), (5, [8]), (0, [])])
def test_manual_backward_matches_autograd(activation: str, dueling: bool, n_obs: int, arch: list[int]) -> None:
    torch.manual_seed(0)
    q = QNetwork(n_obs or 3, n_obs, 4, arch, activation, dueling)
    flat = FlatParams([q])
    x = torch.randint(0, 5, (10,)) if n_obs else torch.randn(10, 3) * 3
    actions, y = torch.randint(0, 4, (6, 1)), torch.randn(6) * 3  # loss on the first 6 of 10 rows (Double DQN)
    loss = F.smooth_l1_loss(q(x)[:6].gather(1, actions).squeeze(1), y)
    flat.zero_grad()
    loss.backward()
    expected = flat.param.grad.clone()
    layers = linear_layers(q)
    values, inputs = dqn_forward(q, layers, x)
    assert torch.allclose(values, q(x).detach())
    flat.param.grad.fill_(123.0)  # dqn_backward_huber overwrites, never accumulates
    manual = dqn_backward_huber(q, layers, values, inputs, actions, y)
    assert torch.allclose(manual, loss.detach())
    assert torch.allclose(flat.param.grad, expected, atol=1e-6)


def test_errors_are_one_line() -> None:
    with pytest.raises(ArchlabError, match="exploration_final_eps") as exc:
        DQN("CartPole-v1", exploration_final_eps=1.5)
    assert "\n" not in str(exc.value)
    with pytest.raises(ArchlabError, match="gradient_steps"):
        DQN("CartPole-v1", gradient_steps=-2)
    with pytest.raises(ArchlabError, match="unknown key"):
        DQN("CartPole-v1", n_steps=5)
    with pytest.raises(ArchlabError, match="discrete action space") as exc:
        DQN("archlab/IdentityBox-v0")
    assert "\n" not in str(exc.value)


# ------------------------------------------------------------------------------ the replay buffer
def test_replay_buffer_ring_sampling_and_state() -> None:
    buf = ReplayBuffer(5, (2,), (), np.float32, np.int64)
    for t in range(3):  # batches of 2 transitions; obs = [t, copy], reward = 10 t + copy
        obs = np.array([[t, 0], [t, 1]], np.float32)
        buf.add(obs, np.array([t, t + 1]), np.array([10 * t, 10 * t + 1], np.float32), obs + 100,
                np.array([0.0, 1.0], np.float32))
    # 6 transitions into 5 slots: the 6th (t=2, copy 1) overwrote slot 0.
    assert len(buf) == 5 and buf.pos == 1
    assert buf.rewards.tolist() == [21, 1, 10, 11, 20]
    assert buf.obs[:, 0].tolist() == [2, 0, 1, 1, 2] and buf.obs[:, 1].tolist() == [1, 1, 0, 1, 0]
    assert buf.actions.tolist() == [3, 1, 1, 2, 2]
    assert buf.next_obs[0].tolist() == [102, 101] and buf.terminated.tolist() == [1, 1, 0, 1, 0]

    batch = buf.sample(7, np.random.default_rng(0))
    assert batch["obs"].shape == (7, 2) and batch["next_obs"].shape == (7, 2)
    assert batch["actions"].shape == (7,) and batch["actions"].dtype == torch.int64
    assert batch["rewards"].shape == (7,) and batch["terminated"].shape == (7,)
    idx = np.random.default_rng(0).integers(0, 5, 7)  # the same draws
    assert batch["rewards"].tolist() == buf.rewards[idx].tolist()
    assert torch.equal(batch["next_obs"], batch["obs"] + 100)

    state = buf.state_dict()
    assert all(isinstance(state[k], torch.Tensor) for k in ("obs", "next_obs", "actions", "rewards", "terminated"))
    copy = ReplayBuffer(5, (2,), (), np.float32, np.int64)
    copy.load_state_dict(state)
    assert (copy.pos, copy.size) == (1, 5)
    for k in ("obs", "next_obs", "actions", "rewards", "terminated"):
        assert np.array_equal(getattr(copy, k), getattr(buf, k))
    # Partly filled: only the filled part is saved, and it comes back.
    small = ReplayBuffer(10, (2,), (), np.float32, np.int64)
    small.add(np.ones((3, 2), np.float32), np.array([0, 1, 2]), np.arange(3, dtype=np.float32),
              np.zeros((3, 2), np.float32), np.zeros(3, np.float32))
    state = small.state_dict()
    assert state["obs"].shape == (3, 2)
    again = ReplayBuffer(10, (2,), (), np.float32, np.int64)
    again.load_state_dict(state)
    assert (again.pos, again.size) == (3, 3) and again.rewards[:3].tolist() == [0, 1, 2]


def test_truncation_stores_final_obs_not_terminal() -> None:
    # A 3-step time limit truncates every episode (a pole does not fall that fast).
    agent = DQN("CartPole-v1", seed=0, env_options={"max_episode_steps": 3}, learning_starts=1000, train_freq=6,
                net_arch=[8])
    agent.iteration()
    buf = agent.buffer
    assert len(buf) == 6 and buf.terminated[:6].sum() == 0  # truncated, not terminated
    # Replay the first episode: the transition that ended it stores its true last observation as s'.
    env = gym.make("CartPole-v1", max_episode_steps=3)
    obs, _ = env.reset(seed=0)
    for t in range(3):
        assert np.array_equal(buf.obs[t], obs)
        obs, _, _, truncated, _ = env.step(int(buf.actions[t]))
        assert np.array_equal(buf.next_obs[t], obs)
    assert truncated and not np.array_equal(buf.next_obs[2], buf.obs[3])  # obs[3]: the next episode's reset


@pytest.mark.parametrize("env,options", [("CartPole-v1", {}), ("CartPole-v1", {"dueling": True, "activation": "tanh"}),
                                         ("FrozenLake-v1", {"dueling": True})])
def test_numpy_acting_matches_torch(env: str, options: dict) -> None:
    # The training envs act through NumPy views of the weights; they must follow the network's updates.
    agent = DQN(env, seed=0, learning_starts=0, train_freq=16, gradient_steps=4, net_arch=[16, 16], **options)
    agent.learn(64, progress=False)  # the weights have moved since the views were taken
    rng = np.random.default_rng(0)
    obs = np.arange(16) if agent.spaces.n_obs else rng.normal(size=(64, 4)).astype(np.float32)
    q = agent.q(agent.tensor(obs)).detach()
    top2 = q.topk(2, 1).values
    clear = (top2[:, 0] - top2[:, 1] > 1e-4).numpy()  # leave out near-ties, where rounding may differ
    assert clear.sum() > len(obs) // 2
    assert np.array_equal(agent.fast.greedy(obs)[clear], q.argmax(1).numpy()[clear])
