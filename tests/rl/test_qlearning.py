"""Tabular Q-learning: the optimal FrozenLake policy, the update rule by hand, determinism, save/load,
bit-exact resume, and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from archlab.errors import ArchlabError
from archlab.rl.env import make_single
from archlab.rl.qlearning import QLearning

LAKE = {"is_slippery": False}


def optimal_q(env_id: str, options: dict, gamma: float) -> np.ndarray:
    """Q* by value iteration on the environment's transition table ``P[s][a] = [(p, s', r, done)]``."""
    P = make_single(env_id, options).unwrapped.P
    Q = np.zeros((len(P), len(P[0])))
    for _ in range(1000):
        V = Q.max(1)
        Q = np.array([[sum(p * (r + gamma * (0.0 if done else V[s2])) for p, s2, r, done in P[s][a])
                       for a in range(len(P[s]))] for s in range(len(P))])
    return Q


def test_frozenlake_optimal_policy() -> None:
    agent = QLearning("FrozenLake-v1", env_options=LAKE, seed=0)
    agent.learn(20_000, progress=False)
    mean, std, _ = agent.evaluate(10)
    assert (mean, std) == (1.0, 0.0)
    # The greedy path from the start reaches the goal in 6 steps (the shortest path on the 4x4 map),
    # and every action on it is optimal under Q* (value iteration, same gamma).
    q_star = optimal_q("FrozenLake-v1", LAKE, agent.cfg.gamma)
    env = make_single("FrozenLake-v1", LAKE)
    s, _ = env.reset(seed=0)
    steps, terminated = 0, False
    while not terminated and steps < 100:
        a = int(agent.predict(s))
        assert q_star[s, a] == pytest.approx(q_star[s].max())
        s, r, terminated, _, _ = env.step(a)
        steps += 1
    assert (steps, r, s) == (6, 1.0, 15)


def test_update_rule_by_hand() -> None:
    # One step of FrozenLake from state 0 with a table of known values:
    # Q[s, a] <- Q[s, a] + alpha (r + gamma max_a' Q[s', a'] - Q[s, a])
    agent = QLearning("FrozenLake-v1", env_options=LAKE, seed=0, learning_rate=0.5, gamma=0.9,
                      steps_per_iteration=1, exploration_initial_eps=0.0, exploration_final_eps=0.0)
    table = agent.q.table
    table[0] = torch.tensor([0.0, 2.0, 1.0, 0.0])  # greedy: action 1 (down) -> state 4
    table[4] = torch.tensor([0.0, 0.0, 3.0, 0.0])
    agent.iteration()
    assert table[0, 1].item() == pytest.approx(2.0 + 0.5 * (0.0 + 0.9 * 3.0 - 2.0))  # 2.35
    assert agent.obs.tolist() == [4]
    # A terminal step does not bootstrap: state 14 -> right -> goal 15 (reward 1).
    agent.obs = np.array([14])
    agent.env.envs[0].unwrapped.s = 14
    table[14] = torch.tensor([0.0, 0.0, 4.0, 0.0])
    table[15] = 100.0
    agent.iteration()
    assert table[14, 2].item() == pytest.approx(4.0 + 0.5 * (1.0 - 4.0))


def test_same_seed_same_run() -> None:
    runs = []
    for _ in range(2):
        agent = QLearning("Taxi-v4", seed=5, n_envs=2, steps_per_iteration=500)
        agent.learn(5000, progress=False)
        runs.append(([r for _, r, _ in agent.episodes], agent.q.table.clone()))
    assert runs[0][0] == runs[1][0] and len(runs[0][0]) > 5
    assert torch.equal(runs[0][1], runs[1][1])


def test_save_load_predict(tmp_path) -> None:
    agent = QLearning("Taxi-v4", seed=0)
    agent.learn(3000, progress=False)
    agent.save(tmp_path / "q")
    loaded = QLearning.load(tmp_path / "q")
    states = np.arange(500)
    assert np.array_equal(agent.predict(states), loaded.predict(states))
    assert loaded.predict(7).shape == ()
    assert torch.equal(agent.q.table, loaded.q.table)


def test_resume_is_bit_exact() -> None:
    hp = dict(n_envs=2, steps_per_iteration=250, lr_schedule="linear")
    full = QLearning("Taxi-v4", seed=1, total_steps=4000, **hp)
    while full.num_steps < 4000:
        full.iteration()
    first = QLearning("Taxi-v4", seed=1, total_steps=4000, **hp)
    while first.num_steps < 2000:
        first.iteration()
    resumed = QLearning("Taxi-v4", seed=42, total_steps=4000, **hp)
    resumed.load_state_dict(first.state_dict())
    while resumed.num_steps < 4000:
        resumed.iteration()
    assert [r for _, r, _ in resumed.episodes] == [r for _, r, _ in full.episodes]
    assert torch.equal(resumed.q.table, full.q.table)


def test_errors_are_one_line() -> None:
    with pytest.raises(ArchlabError, match="discrete observation space") as exc:
        QLearning("CartPole-v1")
    assert "\n" not in str(exc.value)
    with pytest.raises(ArchlabError, match="learning_rate") as exc:
        QLearning("FrozenLake-v1", learning_rate=1.5)
    assert "\n" not in str(exc.value)
    with pytest.raises(ArchlabError, match="exploration_fraction"):
        QLearning("FrozenLake-v1", exploration_fraction=-0.1)
