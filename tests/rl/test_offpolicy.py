"""SAC and TD3 (and what they share in offpolicy.py): learning a toy env, determinism, save/load,
bit-exact resume, the fast path's stacked-MLP backward pass against autograd (whole updates of the
fast path against the reference: test_fast_offpolicy.py), the squashed-Gaussian density
against torch.distributions, action scaling, and one-line errors."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
from torch.distributions import Independent, Normal, TanhTransform, TransformedDistribution

from archlab.errors import ArchlabError
from archlab.rl.fast_offpolicy import StackedRunner
from archlab.rl.networks import squashed_gaussian
from archlab.rl.offpolicy import StackedMLP
from archlab.rl.sac import SAC, squashed_sample
from archlab.rl.td3 import TD3

ALGOS = {"sac": SAC, "td3": TD3}
FAST = dict(net_arch=[32, 32], learning_rate=3e-3, batch_size=64, learning_starts=100, gamma=0.9)
PENDULUM = dict(net_arch=[16, 16], batch_size=32, learning_starts=60, buffer_size=500)


@pytest.mark.parametrize("algo", ["sac", "td3"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_learns_identity_box(algo: str, dtype: str) -> None:
    agent = ALGOS[algo]("archlab/IdentityBox-v0", seed=0, matmul_dtype=dtype, **FAST)
    agent.learn(600, progress=False)
    mean, _, _ = agent.evaluate(10)
    assert mean > -2.0  # optimum 0, random play about -13
    assert agent.num_updates == 600 - 100


@pytest.mark.parametrize("algo", ["sac", "td3"])
def test_same_seed_same_run(algo: str) -> None:
    runs = []
    for _ in range(2):
        agent = ALGOS[algo]("Pendulum-v1", seed=3, n_envs=2, **PENDULUM)
        agent.learn(800, progress=False)
        returns = [r for _, r, _ in agent.episodes]
        runs.append((returns, agent.actor_flat.param.clone(), agent.critic_flat.param.clone()))
    assert runs[0][0] == runs[1][0] and len(runs[0][0]) == 4
    assert torch.equal(runs[0][1], runs[1][1]) and torch.equal(runs[0][2], runs[1][2])


@pytest.mark.parametrize("algo", ["sac", "td3"])
def test_save_load_predict(algo: str, tmp_path) -> None:
    agent = ALGOS[algo]("Pendulum-v1", seed=0, **PENDULUM)
    agent.learn(200, progress=False)
    agent.save(tmp_path / algo)
    loaded = ALGOS[algo].load(tmp_path / algo)
    obs = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
    a = agent.predict(obs)
    assert np.array_equal(a, loaded.predict(obs))
    assert a.shape == (16, 1) and np.all(np.abs(a) <= 2.0)  # Pendulum's torque bounds
    assert loaded.predict(obs[0]).shape == (1,)
    assert loaded.cfg.net_arch == [16, 16]


@pytest.mark.parametrize("algo,options", [("sac", {}), ("sac", {"ent_coef": 0.05, "lr_schedule": "linear"}),
                                          ("sac", {"matmul_dtype": "bfloat16"}), ("td3", {"policy_delay": 3}),
                                          ("td3", {"train_freq": 4, "gradient_steps": -1, "activation": "tanh"})])
def test_resume_is_bit_exact(algo: str, options: dict) -> None:
    cls, hp = ALGOS[algo], {**PENDULUM, **options}
    full = cls("Pendulum-v1", seed=1, n_envs=2, total_steps=700, **hp)
    while full.num_steps < 700:
        full.iteration()
    part = cls("Pendulum-v1", seed=1, n_envs=2, total_steps=700, **hp)
    while part.num_steps < 300:
        part.iteration()
    buf = io.BytesIO()
    torch.save(part.state_dict(), buf)
    buf.seek(0)
    resumed = cls("Pendulum-v1", seed=1, n_envs=2, **hp)
    resumed.load_state_dict(torch.load(buf, weights_only=False))
    while resumed.num_steps < 700:
        resumed.iteration()
    assert [r for _, r, _ in resumed.episodes] == [r for _, r, _ in full.episodes]
    for name, net in full.networks().items():
        for k, v in net.state_dict().items():
            assert torch.equal(v, resumed.networks()[name].state_dict()[k]), f"{name}.{k}"
    assert resumed.num_updates == full.num_updates


@pytest.mark.parametrize("hp,match", [({"tau": 1.5}, "tau"), ({"ent_coef": "fixed"}, "ent_coef"),
                                      ({"ent_coef": "auto_x"}, "ent_coef"), ({"gradient_steps": -2}, "gradient_steps"),
                                      ({"target_entropy": "high"}, "target_entropy"), ({"batch_size": 0}, "batch_size"),
                                      ({"activation": "gelu"}, "activation"), ({"bogus": 1}, "bogus"),
                                      ({"matmul_dtype": "float16"}, "matmul_dtype")])
def test_bad_hyperparameter_is_one_line_error(hp: dict, match: str) -> None:
    with pytest.raises(ArchlabError, match=match) as err:
        SAC("Pendulum-v1", **hp)
    assert "\n" not in str(err.value)


def test_td3_bad_hyperparameters_and_discrete_actions() -> None:
    with pytest.raises(ArchlabError, match="policy_delay"):
        TD3("Pendulum-v1", policy_delay=0)
    with pytest.raises(ArchlabError, match="action_noise"):
        TD3("Pendulum-v1", action_noise=-0.1)
    with pytest.raises(ArchlabError, match="continuous"):
        SAC("CartPole-v1")


def test_squashed_gaussian_log_prob_matches_torch_distributions() -> None:
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(64, 3, generator=g)
    log_std = torch.rand(64, 3, generator=g) * 3 - 2
    for sample in (lambda: squashed_gaussian(mean, log_std, torch.Generator().manual_seed(1)),
                   lambda: squashed_sample(mean, log_std, torch.Generator().manual_seed(1))[:2]):
        a, logp = sample()
        u = mean + log_std.exp() * torch.randn(mean.shape, generator=torch.Generator().manual_seed(1))
        tanh = TanhTransform(cache_size=1)
        dist = TransformedDistribution(Independent(Normal(mean, log_std.exp()), 1), [tanh])
        y = tanh(u)  # caches u, so log_prob does not invert tanh numerically
        assert torch.allclose(a, y)
        assert torch.allclose(logp, dist.log_prob(y), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("n_used", [1, 2])
def test_stacked_mlp_backward_matches_autograd(activation: str, n_used: int) -> None:
    torch.manual_seed(0)
    ref = StackedMLP(2, [5, 16, 12, 3], activation)
    net = StackedRunner(copy.deepcopy(ref))
    x = torch.randn(7, 5)
    grad_out = torch.randn(n_used, 7, 3)
    out = net.run(x, n=n_used)
    dx = net.backward_run(grad_out, input_grad=True)
    x_ref = x.clone().requires_grad_()
    out_ref = ref(x_ref)[:n_used]
    assert torch.allclose(out, out_ref, atol=1e-6)
    (out_ref * grad_out).sum().backward()
    assert torch.allclose(dx, x_ref.grad, atol=1e-6)
    for p, q in zip(net.net.parameters(), ref.parameters(), strict=True):
        assert torch.allclose(p.grad[:n_used], q.grad[:n_used], atol=1e-6)
    assert net.backward_run(grad_out, weight_grads=False) is None


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_stacked_mlp_bfloat16_is_close_to_float32(activation: str) -> None:
    torch.manual_seed(0)
    net = StackedMLP(2, [4, 64, 64, 1], activation)
    low = StackedRunner(net, hidden_dtype=torch.bfloat16)
    assert low.dtypes == [torch.float32, torch.bfloat16, torch.float32]
    ref = StackedRunner(copy.deepcopy(net))
    x, grad_out = torch.randn(128, 4), torch.randn(2, 128, 1)
    out, out_ref = low.run(x).clone(), ref.run(x).clone()
    dx, dx_ref = low.backward_run(grad_out, input_grad=True), ref.backward_run(grad_out, input_grad=True)

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).norm() / b.norm())

    assert rel(out, out_ref) < 0.02 and rel(dx, dx_ref) < 0.1
    for p, q in zip(low.net.parameters(), ref.net.parameters(), strict=True):
        assert p.grad.dtype == torch.float32 and rel(p.grad, q.grad) < 0.1


def test_action_scaling_and_truncation_bootstrap() -> None:
    agent = SAC("Pendulum-v1", seed=0, **PENDULUM)
    assert np.allclose(agent.to_env(np.array([[-1.0], [0.0], [1.0]], np.float32)), [[-2.0], [0.0], [2.0]])
    agent.learn(400, progress=False)  # two 200-step episodes, both truncated by the time limit
    assert len(agent.episodes) == 2
    buf = agent.buffer
    assert buf.terminated[:400].sum() == 0  # truncation is not termination: targets still bootstrap
    # the stored s' of an episode's last step is its final observation, not the next episode's first
    assert not np.allclose(buf.next_obs[199], buf.obs[200])
    assert np.allclose(buf.next_obs[198], buf.obs[199])
    assert np.all(np.abs(buf.actions[:400]) <= 1.0)  # the buffer holds [-1, 1] actions
