"""The on-policy fast path (archlab.rl.fast) against the plain-autograd reference (archlab.rl.policies,
ppo.py, a2c.py, reinforce.py): whole training runs with ``fast=True`` and ``fast=False`` from the same
seed end with the same parameters and losses; and piece by piece, the one-node MLP, the hand-written
backward through the distributions, PPO's closed-form gradient and the fused rollout forward."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_fast_tracks_reference

from archlab.rl import A2C, PPO, REINFORCE
from archlab.rl.fast import clipped_surrogate, mlp_forward
from archlab.rl.networks import mlp


def _params(agent) -> torch.Tensor:
    return torch.nn.utils.parameters_to_vector(agent.model.parameters()).detach()


# Each case: a few iterations that exercise every branch of its update (minibatches and a full
# batch, entropy bonus, value clipping, the KL early stop, RMSprop, Box actions, no baseline).
CASES = {
    "ppo_minibatches": (PPO, "CartPole-v1", dict(n_envs=2, n_steps=32, batch_size=16, n_epochs=3, net_arch=[16, 16],
                                                 ent_coef=0.01, clip_range_vf=0.2, lr_schedule="linear",
                                                 clip_schedule="linear", target_kl=0.02, learning_rate=3e-3)),
    "ppo_kl_stop": (PPO, "CartPole-v1", dict(n_envs=2, n_steps=64, batch_size=16, n_epochs=10, net_arch=[16],
                                             learning_rate=0.05, target_kl=1e-3)),
    "ppo_full_batch_relu": (PPO, "CartPole-v1", dict(n_envs=2, n_steps=32, batch_size=64, n_epochs=4,
                                                     net_arch=[16, 16], activation="relu")),
    "ppo_box": (PPO, "Pendulum-v1", dict(n_envs=2, n_steps=32, batch_size=32, n_epochs=2, net_arch=[16, 16],
                                         ent_coef=0.01, log_std_init=-0.5)),
    "a2c_rmsprop": (A2C, "CartPole-v1", dict(n_envs=2, n_steps=5, net_arch=[16, 16], ent_coef=0.01)),
    "a2c_adam_box": (A2C, "Pendulum-v1", dict(n_envs=2, n_steps=8, net_arch=[16], optimizer="adam",
                                              normalize_advantage=True)),
    "reinforce": (REINFORCE, "CartPole-v1", dict(n_envs=2, n_episodes=2, net_arch=[16, 16], max_grad_norm=0.5,
                                                 ent_coef=0.01)),
    "reinforce_no_baseline": (REINFORCE, "archlab/Identity-v0", dict(n_envs=2, n_episodes=2, net_arch=[16],
                                                                     baseline=False)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fast_path_equals_reference(case: str) -> None:
    cls, env, hp = CASES[case]
    fast = cls(env, seed=0, total_steps=2000, fast=True, **hp)
    ref = cls(env, seed=0, total_steps=2000, fast=False, **hp)
    assert fast.fast is not None and ref.fast is None
    assert torch.equal(_params(fast), _params(ref))  # the same initial weights
    assert_fast_tracks_reference(fast, ref, lambda: cls(env, seed=0, fast=False, **hp), 4, _params,
                                 same_keys=False)


def test_fast_path_needs_separate_tanh_or_relu_networks() -> None:
    assert PPO("CartPole-v1", seed=0, activation="elu").fast is None
    assert A2C("CartPole-v1", seed=0, shared=True).fast is None
    assert REINFORCE("CartPole-v1", seed=0).fast is not None


# ------------------------------------------------------------------------------ pieces
@pytest.mark.parametrize("act", ["tanh", "relu"])
@pytest.mark.parametrize("sizes", [[4, 64, 64, 2], [3, 5, 1], [6, 2]])
def test_one_node_mlp_matches_autograd(act: str, sizes: list[int]) -> None:
    torch.manual_seed(0)
    net = mlp(sizes, act)
    x = torch.randn(9, sizes[0], requires_grad=True)
    grads = []
    for fn in (net, lambda inp: mlp_forward(net, inp)):
        for p in net.parameters():
            p.grad = None
        x.grad = None
        y = fn(x)
        (y * torch.arange(y.numel()).view_as(y)).sum().backward()
        grads.append((y.detach(), [p.grad.clone() for p in net.parameters()], x.grad.clone()))
    (y1, g1, x1), (y2, g2, x2) = grads
    assert torch.allclose(y1, y2, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g1, g2, strict=True))
    assert torch.allclose(x1, x2, atol=1e-5)


@pytest.mark.parametrize("env", ["CartPole-v1", "Pendulum-v1", "FrozenLake-v1"])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("value_grad", [True, False])
def test_hand_written_backward_matches_autograd(env: str, activation: str, value_grad: bool) -> None:
    agent = PPO(env, seed=0, activation=activation, net_arch=[32, 16], log_std_init=-0.3)
    model, fast = agent.model, agent.fast
    assert fast is not None
    g = torch.Generator().manual_seed(0)
    s = agent.spaces
    obs = (torch.randint(0, s.n_obs, (20,), generator=g) if s.n_obs
           else torch.randn(20, *s.obs_shape, generator=g))
    actions = (torch.randint(0, s.n_actions, (20,), generator=g) if s.discrete
               else torch.randn(20, s.act_dim, generator=g))
    d_logp, d_v = torch.randn(20, generator=g), torch.randn(20, generator=g)
    # autograd reference: a scalar whose gradient w.r.t. (log pi, V, H) is (d_logp, d_v, -0.3)
    agent.flat.zero_grad()
    pi, v = model(obs)
    logp, ent = model.log_prob_entropy(pi, actions)
    ref = (logp * d_logp).sum() - 0.3 * ent.sum() + ((v * d_v).sum() if value_grad else 0.0)
    ref.backward()
    want = agent.flat.param.grad.clone()
    agent.flat.param.grad.fill_(7.0)  # set_grads overwrites, it does not accumulate
    ev = fast.evaluate(obs, actions)
    assert torch.allclose(ev.logp, logp.detach(), atol=1e-5) and torch.allclose(ev.values, v.detach(), atol=1e-5)
    assert torch.allclose(ev.entropy, ent.detach(), atol=1e-5)
    fast.set_grads(ev, d_logp, d_v if value_grad else None, -0.3)
    assert torch.allclose(agent.flat.param.grad, want, atol=1e-5)


@pytest.mark.parametrize("clip_vf", [None, 0.3])
def test_clipped_surrogate_gradient_matches_autograd(clip_vf: float | None) -> None:
    g = torch.Generator().manual_seed(0)
    n = 64
    logp = (torch.randn(n, generator=g) * 0.3).requires_grad_()
    values = torch.randn(n, generator=g).requires_grad_()
    old_logp, adv = torch.randn(n, generator=g) * 0.3, torch.randn(n, generator=g)
    returns, old_values = torch.randn(n, generator=g), torch.randn(n, generator=g)
    old_logp[:8] = logp.detach()[:8]  # ratio exactly 1 for some samples (ties of the two branches)
    pg, vf, loss, d_logp, d_v = clipped_surrogate(logp.detach(), values.detach(), old_logp, adv, returns,
                                                  old_values, 0.2, clip_vf, 0.7)
    ratio = (logp - old_logp).exp()
    ref_pg = -torch.min(adv * ratio, adv * ratio.clamp(0.8, 1.2)).mean()  # the paper's form, via autograd
    v = values if clip_vf is None else old_values + (values - old_values).clamp(-clip_vf, clip_vf)
    ref_vf = torch.nn.functional.mse_loss(v, returns)
    ref = ref_pg + 0.7 * ref_vf
    d_ref = torch.autograd.grad(ref, (logp, values))
    assert torch.allclose(loss, ref) and torch.allclose(pg, ref_pg) and torch.allclose(vf, ref_vf)
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip((d_logp, d_v), d_ref, strict=True))
    assert (ratio.detach() - 1).abs().max() > 0.2  # some samples are clipped


@pytest.mark.parametrize("discrete", [True, False])
@pytest.mark.parametrize("shared", [False, True])
def test_frozen_forward_matches_forward(discrete: bool, shared: bool) -> None:
    env = "CartPole-v1" if discrete else "Pendulum-v1"
    agent = PPO(env, seed=0, shared=shared, net_arch=[32, 16])
    obs = torch.randn(7, *agent.spaces.obs_shape)
    with torch.no_grad():
        pi, v = agent.model(obs)
        pi2, v2 = agent.rollout_forward()(obs)
    assert pi.shape == (7, agent.spaces.act_dim) and v.shape == (7,)
    assert torch.allclose(pi, pi2, atol=1e-5) and torch.allclose(v, v2, atol=1e-5)


