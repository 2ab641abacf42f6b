"""Bad environment input found by fuzzing: one-line errors naming the env and the options, not tracebacks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

gym = pytest.importorskip("gymnasium")

from archlab.errors import ArchlabError  # noqa: E402  (after the skip: the modules below need gymnasium)
from archlab.rl.env import VecEnv, make_single  # noqa: E402
from archlab.rl.qlearning import QLearning  # noqa: E402


def one_line_error(make: Any) -> str:
    with pytest.raises(ArchlabError) as info:
        make()
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_an_option_the_env_chokes_on_names_the_env_and_the_options() -> None:
    # FrozenLake looks map_name up in its table of maps: a KeyError from deep inside gymnasium
    message = one_line_error(lambda: make_single("FrozenLake-v1", {"map_name": "9x9", "is_slippery": False}))
    assert message == ('env.options: FrozenLake-v1 rejected {map_name = "9x9", is_slippery = false} '
                       "(KeyError: '9x9')")


@pytest.mark.parametrize(("env_id", "options", "reason"), [
    ("CartPole-v1", {"bogus": 1}, "TypeError"),  # not a keyword of the env
    ("CartPole-v1", {"max_episode_steps": -3}, "ValueError"),  # refused by gymnasium.make itself
    ("archlab/Identity-v0", {"n": 0}, "ValueError"),  # archlab's own toy envs too
])
def test_bad_options_are_one_line(env_id: str, options: dict[str, Any], reason: str) -> None:
    message = one_line_error(lambda: VecEnv(env_id, 2, 0, options))
    assert message.startswith(f"env.options: {env_id} rejected {{") and f"({reason}: " in message


class _StartsAt(gym.Env):
    """Reads its option only at reset, as many third-party environments do."""

    observation_space = gym.spaces.Discrete(4)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, start: int = 0) -> None:
        self.start = start

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[int, dict]:
        super().reset(seed=seed)
        return [0, 1, 2, 3][self.start], {}


@pytest.fixture
def starts_at() -> Iterator[str]:
    env_id = "archlab-test/StartsAt-v0"
    gym.register(env_id, entry_point=_StartsAt)
    yield env_id
    del gym.registry[env_id]


def test_an_option_only_read_at_reset_is_one_line_too(starts_at: str) -> None:
    env = VecEnv(starts_at, 1, 0, {"start": 9})  # building it is fine
    message = one_line_error(env.reset)
    assert message == f"env.options: {starts_at} rejected {{start = 9}} (IndexError: list index out of range)"
    assert VecEnv(starts_at, 1, 0, {"start": 2}).reset().tolist() == [2]


@pytest.mark.parametrize("seed", [-1, 1.5])
def test_a_negative_seed_is_one_line(seed: Any) -> None:
    # gymnasium refuses negative seeds at the first reset, NumPy's default_rng before that: check up front
    assert one_line_error(lambda: VecEnv("CartPole-v1", 1, seed)).startswith("seed must be an integer >= 0")
    assert one_line_error(lambda: QLearning("FrozenLake-v1", seed=seed)).startswith("seed must be an integer >= 0")


def test_seeds_beyond_the_top_of_the_seed_range_still_seed_envs() -> None:
    # evaluation seeds environments at the run's seed + 100000: above 2**32 - 1 for the highest seeds
    obs = VecEnv("CartPole-v1", 2, 2**32 - 1 + 100_000).reset()
    assert obs.shape == (2, 4) and np.isfinite(obs).all()
