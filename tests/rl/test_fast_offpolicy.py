"""The off-policy fast path (archlab.rl.fast_offpolicy) against the plain-autograd reference (dqn.py,
sac.py, td3.py, offpolicy.py): short training runs with ``fast=True`` and ``fast=False`` from the same
seed make the same updates (parameters and logged losses to float tolerance, the same episodes)."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_fast_tracks_reference

from archlab.rl import DQN, SAC, TD3


def _params(agent) -> torch.Tensor:
    return torch.nn.utils.parameters_to_vector([p for net in agent.networks().values()
                                                for p in net.parameters()]).detach()


# Each case: a few iterations that exercise every branch of its update (plain and Double DQN targets,
# dueling heads, hard and soft target updates, an autograd-only activation, a linear lr schedule, SAC's
# learned and fixed temperature and delayed target updates, TD3's delayed actor).
CASES = {
    "dqn": (DQN, "CartPole-v1", dict(net_arch=[16, 16], learning_starts=40, batch_size=16, train_freq=8,
                                     gradient_steps=4, target_update_interval=16, learning_rate=3e-3)),
    "dqn_double_dueling_soft": (DQN, "CartPole-v1", dict(net_arch=[16], learning_starts=40, batch_size=16,
                                                         train_freq=8, gradient_steps=-1, double=True, dueling=True,
                                                         tau=0.5, target_update_interval=8, activation="tanh",
                                                         lr_schedule="linear")),
    "dqn_silu_onehot": (DQN, "FrozenLake-v1", dict(net_arch=[8], learning_starts=20, batch_size=8, train_freq=4,
                                                   gradient_steps=2, target_update_interval=8, activation="silu")),
    "sac": (SAC, "Pendulum-v1", dict(net_arch=[16, 16], learning_starts=40, batch_size=16, train_freq=4,
                                     gradient_steps=2, learning_rate=3e-3)),
    "sac_fixed_alpha": (SAC, "Pendulum-v1", dict(net_arch=[16], learning_starts=40, batch_size=16, train_freq=4,
                                                 ent_coef=0.1, target_update_interval=2, lr_schedule="linear")),
    "td3": (TD3, "Pendulum-v1", dict(net_arch=[16, 16], learning_starts=40, batch_size=16, train_freq=4,
                                     gradient_steps=3, learning_rate=3e-3)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fast_path_equals_reference(case: str) -> None:
    cls, env, hp = CASES[case]
    fast = cls(env, seed=0, total_steps=200, fast=True, **hp)
    ref = cls(env, seed=0, total_steps=200, fast=False, **hp)
    assert fast.fast and not ref.fast
    assert torch.equal(_params(fast), _params(ref))  # the same initial weights
    assert_fast_tracks_reference(fast, ref, lambda: cls(env, seed=0, fast=False, **hp), 24, _params,
                                 same_keys=True)
    lrs = [{name: opt.param_groups[0]["lr"] for name, opt in _optimizers(a).items()} for a in (fast, ref)]
    assert lrs[0] == lrs[1] and len(lrs[0]) == len(fast.optim)


def _optimizers(agent) -> dict[str, torch.optim.Optimizer]:
    return {"q": agent.optimizer} if isinstance(agent, DQN) else agent.optimizers()


def test_reference_resumes_exactly() -> None:
    hp = CASES["sac"][2]
    full = SAC("Pendulum-v1", seed=1, total_steps=160, fast=False, **hp)
    while full.num_steps < 160:
        full.iteration()
    first = SAC("Pendulum-v1", seed=1, total_steps=160, fast=False, **hp)
    while first.num_steps < 80:
        first.iteration()
    resumed = SAC("Pendulum-v1", seed=5, total_steps=160, fast=False, **hp)
    resumed.load_state_dict(first.state_dict())
    while resumed.num_steps < 160:
        resumed.iteration()
    assert torch.equal(_params(resumed), _params(full))


def test_bfloat16_products_need_the_fast_path() -> None:
    from archlab.errors import ArchlabError

    with pytest.raises(ArchlabError, match="fast-path option"):
        TD3("Pendulum-v1", matmul_dtype="bfloat16", fast=False)
