"""What the on-policy algorithms (REINFORCE, A2C, A3C, PPO) share: the actor-critic network, action
sampling and log-probabilities for discrete and continuous actions, the rollout loop, and the agent
plumbing (model, optimizer, one gradient step, checkpoints). Plain autograd throughout: this is the
reference. The default ``fast`` path (``fast.py``: hand-written backward passes, flat parameters, a
NumPy rollout forward) computes the same updates and is tested equal to this one.

Action distributions (no ``torch.distributions`` objects: they cost more than the math here):

- Discrete: a categorical over ``logits [B, A]``.
- Box: a diagonal Gaussian ``N(mean(s), exp(log_std)^2)`` with a state-independent, learned
  ``log_std`` (Schulman et al. 2017, PPO sec. 6.1; SB3's default). Samples are unbounded; the env
  gets them clipped to ``[low, high]`` while the update uses the unclipped sample (as SB3).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import fast as fast_path
from .base import Agent, AgentConfig
from .buffers import RolloutBuffer
from .env import SpaceInfo
from .networks import activation as activation_cls
from .networks import encode_obs, gaussian_entropy, gaussian_log_prob, gaussian_sample, mlp

SQRT2 = math.sqrt(2.0)


class ActorCritic(nn.Module):
    """Policy ``pi(a|s)`` and value ``V(s)`` as MLPs over the (one-hot encoded, for discrete
    observation spaces) observation.

    ``shared=False`` (SB3's default for MLPs): two separate networks ``obs -> net_arch -> logits``
    and ``obs -> net_arch -> 1``. ``shared=True``: one body ``obs -> net_arch`` with two linear heads.
    ``ortho_init``: orthogonal weights, zero biases, gains sqrt(2) for hidden layers, 0.01 for the
    policy head (near-uniform initial policy) and 1 for the value head (OpenAI baselines / SB3).

    ``forward(obs) -> (pi, value)``: ``pi`` is the logits ``[B, n_actions]`` (discrete) or the
    Gaussian mean ``[B, act_dim]`` (Box; the std is ``exp(self.log_std)``); ``value`` is ``[B]``.
    """

    def __init__(self, spaces: SpaceInfo, net_arch: Sequence[int] = (64, 64), activation: str = "tanh",
                 ortho_init: bool = True, log_std_init: float = 0.0, shared: bool = False) -> None:
        super().__init__()
        self.discrete, self.n_obs, self.shared = spaces.discrete, spaces.n_obs, shared
        self.act_shape = spaces.act_shape
        obs_dim, out_dim, arch = spaces.obs_dim, spaces.act_dim, list(net_arch)
        hidden, pi_gain, vf_gain = (SQRT2, 0.01, 1.0) if ortho_init else (None, None, None)
        if shared:
            body = mlp([obs_dim, *arch], activation, out_gain=hidden, hidden_gain=hidden) if arch else nn.Identity()
            self.body = nn.Sequential(*body, activation_cls(activation)()) if arch else body
            width = arch[-1] if arch else obs_dim
            self.pi_net = mlp([width, out_dim], out_gain=pi_gain)
            self.vf_net = mlp([width, 1], out_gain=vf_gain)
        else:
            self.pi_net = mlp([obs_dim, *arch, out_dim], activation, out_gain=pi_gain, hidden_gain=hidden)
            self.vf_net = mlp([obs_dim, *arch, 1], activation, out_gain=vf_gain, hidden_gain=hidden)
        if not self.discrete:
            self.log_std = nn.Parameter(torch.full((out_dim,), float(log_std_init)))

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        x = encode_obs(obs, self.n_obs)
        return x if x.dim() == 2 else x.flatten(1)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.encode(obs)
        if self.shared:
            x = self.body(x)
        return self.pi_net(x), self.vf_net(x).squeeze(-1)

    def policy(self, obs: torch.Tensor) -> torch.Tensor:
        """Logits or Gaussian mean only (acting without the critic)."""
        x = self.encode(obs)
        return self.pi_net(self.body(x) if self.shared else x)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        x = self.encode(obs)
        return self.vf_net(self.body(x) if self.shared else x).squeeze(-1)

    # -- the action distribution ----------------------------------------------------------------
    def sample(self, pi: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Actions ``a ~ pi(.|s)`` and ``log pi(a|s)`` (``[B]``)."""
        if self.discrete:
            # Inverse-CDF sampling: a = #{k : P(A <= k) < u}, u ~ U[0, 1) (cheaper than torch.multinomial).
            logp_all = torch.log_softmax(pi, -1)
            u = torch.rand(pi.shape[0], 1, generator=generator, device=pi.device)
            a = (logp_all.exp().cumsum(-1)[:, :-1] < u).sum(-1, keepdim=True)
            return a.squeeze(-1), logp_all.gather(-1, a).squeeze(-1)
        a = gaussian_sample(pi, self.log_std, generator)
        return a, gaussian_log_prob(pi, self.log_std, a)

    def log_prob_entropy(self, pi: torch.Tensor, actions: torch.Tensor,
                         entropy: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``log pi(a|s)`` ``[B]`` and the entropy ``H[pi(.|s)]`` ``[B]`` (``None`` when not asked for).

        Categorical: H = -sum_a p_a log p_a. Gaussian: H = sum_i (log sigma_i + (1 + log 2 pi) / 2)."""
        if self.discrete:
            if not entropy:  # one fused node instead of log_softmax + gather
                return -F.cross_entropy(pi, actions.long(), reduction="none"), None
            logp_all = torch.log_softmax(pi, -1)
            logp = logp_all.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
            return logp, -(logp_all.exp() * logp_all).sum(-1)
        logp = gaussian_log_prob(pi, self.log_std, actions)
        ent = gaussian_entropy(self.log_std).expand(pi.shape[0]) if entropy else None
        return logp, ent

    def mode(self, pi: torch.Tensor) -> torch.Tensor:
        """The deterministic action: argmax of the logits, or the Gaussian mean."""
        return pi.argmax(-1) if self.discrete else pi


def env_actions(actions: torch.Tensor, spaces: SpaceInfo) -> np.ndarray:
    """Network actions -> what the env accepts: integer ids, or Box actions clipped to its bounds."""
    a = actions.cpu().numpy()
    if spaces.discrete:
        return a
    return np.clip(a.reshape(len(a), *spaces.act_shape), spaces.low, spaces.high)


@torch.inference_mode()
def collect_rollout(agent: ActorCriticAgent, buffer: RolloutBuffer, gae_lambda: float) -> None:
    """Fill ``buffer`` with ``n_steps`` steps of every env copy under the current policy, then
    compute advantages (GAE) and value targets.

    Time-limit truncation: the reward of the last step gets ``+ gamma * V(final_obs)`` (the value
    the episode would have continued with), and the step counts as done -- as SB3 does."""
    gamma, spaces, model = agent.cfg.gamma, agent.spaces, agent.model
    obs = agent.start()
    forward = agent.rollout_forward()
    while not buffer.full:
        pi, value = forward(agent.tensor(obs))
        actions, logp = model.sample(pi, agent.gen)
        next_obs, rew, term, trunc, info = agent.env_step(env_actions(actions, spaces))
        truncated = trunc & ~term
        if truncated.any():
            idx = np.flatnonzero(truncated)
            final = np.stack([info["final_obs"][i] for i in idx])
            rew = rew.copy()
            rew[idx] += gamma * forward(agent.tensor(final))[1].cpu().numpy()
        buffer.add(obs, actions.cpu().numpy().reshape(buffer.actions.shape[1:]), rew, term | trunc,
                   value.cpu().numpy(), logp.cpu().numpy())
        obs = next_obs
    buffer.finish(forward(agent.tensor(obs))[1].cpu().numpy(), gamma, gae_lambda)


# ------------------------------------------------------------------------------ the agent base
@dataclasses.dataclass
class ActorCriticConfig(AgentConfig):
    """Hyperparameters of every actor-critic algorithm here (SB3's defaults)."""

    ent_coef: float = 0.0
    """Weight of the entropy bonus in the loss."""
    vf_coef: float = 0.5
    """Weight of the value loss in the loss."""
    max_grad_norm: float | None = 0.5
    """Clip the global gradient norm to this (``None``: no clipping)."""
    normalize_advantage: bool = True
    """Standardize advantages (per minibatch) before the policy loss."""
    shared: bool = False
    """One MLP body with policy and value heads, instead of two separate MLPs (SB3's default)."""
    ortho_init: bool = True
    """Orthogonal initialization (gains sqrt 2 / 0.01 / 1) instead of PyTorch's default."""
    log_std_init: float = 0.0
    """Initial log standard deviation of the Gaussian policy (Box actions)."""
    fast: bool = True
    """Train on the fast path (``fast.py``: hand-written backward passes, flat parameters, a NumPy
    rollout forward), the same updates as the plain-autograd reference here, tested equal to it.
    Separate actor and critic MLPs with tanh or ReLU only; other networks use the reference. A
    checkpoint resumes on the path that wrote it (their optimizer states differ in shape)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        # Upper bounds far beyond sensible values: they catch typos such as 1e308.
        if not (0 <= self.ent_coef <= 1e6 and 0 <= self.vf_coef <= 1e6):
            raise ValueError(f"ent_coef and vf_coef must be in [0, 1e6], got {self.ent_coef}, {self.vf_coef}")
        if self.max_grad_norm is not None and not 0 < self.max_grad_norm <= 1e6:
            raise ValueError(f"max_grad_norm must be in (0, 1e6] (or None), got {self.max_grad_norm}")


class ActorCriticAgent(Agent):
    """The plumbing PPO, A2C and REINFORCE share: one :class:`ActorCritic` (saved as ``policy``),
    its optimizer (the engine's, configured by ``[optim]``: trainable ``policy``), one gradient step,
    acting, and checkpoint state. Subclasses write the loss."""

    cfg: ActorCriticConfig
    optim_defaults = {"name": "adam", "lr": 3e-4, "eps": 1e-5}  # SB3's on-policy Adam (eps 1e-5)

    @classmethod
    def trainable_names(cls, cfg: ActorCriticConfig) -> tuple[str, ...]:
        return ("policy",)
    fast: fast_path.FastActorCritic | None
    """The model's fast path (``None``: the reference trains)."""

    def build_model(self) -> None:
        cfg = self.cfg
        self.model = ActorCritic(self.spaces, cfg.net_arch, cfg.activation, cfg.ortho_init, cfg.log_std_init,
                                 cfg.shared).to(self.device)
        self.fast = None
        if fast_path.supports(cfg):
            fast_path.build(self)  # flat parameters and their optimizer
        else:
            self.optimizer = self.make_optimizer("policy", self.model)

    def build_rollout(self) -> None:
        """The model plus a rollout buffer of ``n_steps`` per env copy (PPO, A2C); an iteration is then
        ``n_steps * n_envs`` env steps, the base class's default ``iteration_steps``."""
        self.build_model()
        s = self.spaces
        self.buffer = RolloutBuffer(self.cfg.n_steps, self.cfg.n_envs, s.obs_shape, () if s.discrete else (s.act_dim,),
                                    np.int64 if s.n_obs else np.float32)

    def rollout_forward(self) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """``obs -> (pi, V)`` for a stretch of env steps where the weights do not change (a rollout):
        the model itself, or on the fast path a NumPy copy with actor and critic fused."""
        return self.model if self.fast is None else self.fast.frozen_forward()

    def optimize(self, loss: torch.Tensor) -> None:
        """One gradient step: theta <- opt(theta, clip(d loss / d theta)), the global norm clipped to
        ``max_grad_norm``."""
        self.optimizer.zero_grad()
        loss.backward()
        if self.cfg.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        self.optimizer.step()
        self.num_updates += 1

    @torch.inference_mode()
    def act(self, obs: torch.Tensor, deterministic: bool) -> np.ndarray:
        pi = self.model.policy(obs)
        actions = self.model.mode(pi) if deterministic else self.model.sample(pi, self.gen)[0]
        return env_actions(actions, self.spaces)

    def networks(self) -> dict[str, nn.Module]:
        return {"policy": self.model}

    def train_state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_train_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
