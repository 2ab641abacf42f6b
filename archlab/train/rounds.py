"""Federated rounds: one step = one round of a client algorithm and a server optimizer (``train.loop = "federated"``).

The training split is partitioned once among ``loop.clients`` clients (:mod:`archlab.federated.partition`,
a plot of the client x class counts goes into ``RUN/plots/partition.png``). Round ``t`` (0-based):

    S_t   <- sorted sample of m = max(1, round(C * K)) clients, without replacement   (seed, t)
    for k in S_t:                                                                   (in process, in order)
        w_k <- x_t;  local epochs of minibatches of data.batch_size from client k's examples (seed, t, k)
        (FedAvg / FedProx / SCAFFOLD local rule, client optimizer [optim] at lr(t))
        delta_k <- w_k - x_t
    delta <- sum_k p_k delta_k     p_k = n_k / sum n  (loop.weighting = "samples")  or 1 / m  ("uniform")
    x_{t+1} <- server_optimizer(x_t, delta)                      (fedavg / fedavgm / fedadagrad / fedyogi / fedadam)

With ``loop.dp_clip`` > 0 the round is DP-FedAvg (:mod:`archlab.federated.dp_fedavg`): Poisson client
sampling, every update clipped to norm S, the sum divided by C K and noised; ``epsilon`` is reported.

Every random choice of round ``t`` comes from generators seeded by ``(seed, t)`` and ``(seed, t, k)``,
so the client sampler needs no state; the checkpoint holds the global model, the server optimizer's
moments and the algorithm's per-client state (SCAFFOLD's control variates), and a resumed run is
bit-identical to an uninterrupted one. Client optimizers start fresh every round (as in the papers).

Evaluation: every ``train.eval_every`` rounds (default 1) the global model is scored on the validation
split (when there is one) *and* on the test split: McMahan et al. 2017 report test accuracy per round
and "rounds to reach a target", which this loop reports as ``rounds_to_target`` (the first evaluated
round with test accuracy >= ``loop.target_acc``; ``inf`` when the run never reached it).
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from ..data import Dataset, Split
from ..engine.loop import Context, Loop, register_loop
from ..engine.metrics import read_metrics
from ..engine.optim import build_optimizer, lr_factor
from ..errors import ArchlabError
from ..federated import FedAvg, FedProx, Scaffold, ServerOptConfig, ServerOptimizer, class_counts, partition
from ..federated.compression import ErrorFeedback, packed_bytes, quantize8_pack, topk_pack, unpack
from ..federated.dp_fedavg import clip_update, noisy_mean
from ..federated.parallel import local_sgd_together
from ..federated.partition import Scheme, plot_counts
from ..federated.personalization import LocalHeads, split_local
from ..federated.secagg import decode_sum, encode, secure_sum
from ..federated.server import ServerName
from ..io import atomic_write_bytes, pyplot
from ..models.base import ArchModel
from ..privacy import epsilon
from .supervised import Supervised, classification_scores

if TYPE_CHECKING:
    from ..recipe import Recipe


@dataclass
class FederatedConfig:
    """``[loop]`` of the federated loop. The local batch size B is ``data.batch_size``."""

    clients: int = 100
    """K, the number of clients the training split is partitioned among."""
    fraction: float = 0.1
    """C, the share of clients sampled each round (at least one client)."""
    local_epochs: int = 1
    """E, passes over its own examples each sampled client makes per round."""
    full_batch: bool = False
    """B = infinity: one full-batch step per local epoch (with local_epochs = 1: FedSGD)."""
    partition: Scheme = "iid"
    """How the training split is dealt: iid, pathological (sorted shards), dirichlet (label skew), quantity."""
    alpha: float = 0.5
    """Dirichlet concentration of the dirichlet and quantity partitions (small: more skew)."""
    shards_per_client: int = 2
    """Shards per client of the pathological partition (McMahan et al. 2017: 2)."""
    min_size: int = 1
    """Dirichlet partitions are redrawn until every client holds at least this many examples."""
    weighting: Literal["samples", "uniform"] = "samples"
    """Weights of the client updates: n_k / n (FedAvg) or 1 / m (SCAFFOLD's mean)."""
    algorithm: Literal["fedavg", "fedprox", "scaffold"] = "fedavg"
    """Client algorithm (archlab/federated/): FedAvg/FedSGD, FedProx, SCAFFOLD."""
    mu: float = 0.01
    """FedProx's proximal strength (0: FedAvg)."""
    server: ServerName = "fedavg"
    """Server optimizer (Reddi et al. 2021): fedavg, fedavgm, fedadagrad, fedyogi, fedadam."""
    server_lr: float = 1.0
    """eta of the server step (1 with fedavg: the plain weighted average)."""
    server_momentum: float = 0.9
    """beta of fedavgm."""
    server_betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    """beta1, beta2 of fedadagrad / fedyogi / fedadam."""
    tau: float = 1e-3
    """Adaptivity tau of fedadagrad / fedyogi / fedadam."""
    compression: Literal["none", "topk", "int8"] = "none"
    """How clients compress their updates (archlab/federated/compression.py): top-k sparsification, or
    8-bit unbiased stochastic quantization; bytes_up counts what is sent."""
    topk_fraction: float = 0.01
    """Share of the update's entries top-k sends."""
    error_feedback: bool = True
    """Top-k keeps what it did not send in a per-client residual and adds it to the next update."""
    secure_aggregation: bool = False
    """Sum the client updates with Bonawitz et al.'s protocol (archlab/federated/secagg.py): the server sees only
    masked vectors and their sum; updates are quantized to 2^32 / m levels over [-secagg_clip, secagg_clip]. On the
    Flower backends each node encodes and masks its clients' updates and the protocol's steps are messages."""
    secagg_clip: float = 0.1
    """Range of every (weighted) update entry for secure aggregation; larger entries are clipped."""
    secagg_threshold: int = 0
    """Shamir threshold t of secure aggregation (0: a majority of the round's clients)."""
    personalization: Literal["none", "fedper", "finetune"] = "none"
    """fedper: clients keep their own head (the last head_params tensors), only the body is averaged; finetune:
    every client fine-tunes the final global model on its own data before its local test."""
    head_params: int = 2
    """FedPer: the model's last this-many parameter tensors form the head (2: the last layer's weight and bias)."""
    finetune_epochs: int = 1
    """finetune: local epochs each client trains the final global model for."""
    local_test_fraction: float = 0.0
    """Hold out this share of every client's examples and report client_acc_mean / client_acc_min on them."""
    dp_clip: float = 0.0
    """DP-FedAvg (McMahan et al. 2018): clip each client's update to this L2 norm S, sample clients by Poisson
    with probability ``fraction``, average with the fixed denominator C K and add noise (0: no DP)."""
    dp_noise: float = 0.0
    """DP-FedAvg noise multiplier z: noise std z S / (C K) on the averaged update."""
    dp_delta: float = 1e-5
    """delta of the client-level (epsilon, delta) guarantee the run reports as ``epsilon``."""
    target_acc: float = 0.0
    """Report rounds_to_target: the first round whose test accuracy reaches this (0: not reported)."""
    parallel_clients: bool = False
    """Fast path: train a round's clients side by side with torch.func (archlab/federated/parallel.py); needs
    equal client sizes, plain SGD clients, FedAvg or FedProx, no DP, and a model without BatchNorm or dropout."""
    backend: Literal["inprocess", "flower-sim", "flower"] = "inprocess"
    """Where clients train: in this process, one after another; ``flower-sim``: on Flower's Simulation Engine
    (Ray workers, ``loop.sim_nodes`` SuperNodes); ``flower``: on the SuperNodes of a Flower deployment, the run
    started with ``flwr run`` (archlab/federated/flower.py, docs/federated.md). Sampling, weighting and the
    server step stay here: Flower is the transport."""
    sim_nodes: int = 2
    """flower-sim: how many simulated SuperNodes share the clients (client k trains on node k mod sim_nodes)."""

    def __post_init__(self) -> None:
        if not 1 <= self.clients <= 10**6 or not 0 < self.fraction <= 1 or not 1 <= self.local_epochs <= 1000:
            raise ValueError("need 1 <= clients <= 1e6, 0 < fraction <= 1 and 1 <= local_epochs <= 1000")
        if not 1e-3 <= self.alpha <= 1e6 or not 1 <= self.shards_per_client <= 1000 or not 1 <= self.min_size <= 10**6:
            raise ValueError("need 1e-3 <= alpha <= 1e6, 1 <= shards_per_client <= 1000 and 1 <= min_size <= 1e6")
        if not 0 <= self.mu <= 1e3 or not 0 < self.server_lr <= 100 or not 0 <= self.server_momentum < 1:
            raise ValueError("need 0 <= mu <= 1000, 0 < server_lr <= 100 and 0 <= server_momentum < 1")
        if len(self.server_betas) != 2 or not all(0 <= b < 1 for b in self.server_betas):
            raise ValueError(f"server_betas must be two numbers in [0, 1), got {self.server_betas}")
        if not 0 < self.tau <= 10 or not 0 <= self.target_acc <= 1:
            raise ValueError("need 0 < tau <= 10 and 0 <= target_acc <= 1")
        if not 0 <= self.dp_clip <= 1e6 or not 0 <= self.dp_noise <= 1e3 or not 0 < self.dp_delta < 1:
            raise ValueError("need 0 <= dp_clip <= 1e6, 0 <= dp_noise <= 1000 and 0 < dp_delta < 1")
        if not 0 < self.topk_fraction <= 1:
            raise ValueError(f"topk_fraction must be in (0, 1], got {self.topk_fraction}")
        if not 1 <= self.head_params <= 1000 or not 1 <= self.finetune_epochs <= 1000:
            raise ValueError("need 1 <= head_params <= 1000 and 1 <= finetune_epochs <= 1000")
        if not 0 <= self.local_test_fraction < 1:
            raise ValueError(f"local_test_fraction must be in [0, 1), got {self.local_test_fraction}")
        if self.personalization != "none" and not self.local_test_fraction:
            raise ValueError("personalization needs local_test_fraction > 0 (each client's test examples)")
        if not 0 < self.secagg_clip <= 1e6 or not 0 <= self.secagg_threshold <= 10**6:
            raise ValueError("need 0 < secagg_clip <= 1e6 and 0 <= secagg_threshold <= 1e6")
        if self.secure_aggregation and (self.compression != "none" or self.dp_clip):
            raise ValueError("secure_aggregation cannot be combined with compression or DP-FedAvg yet")
        if self.compression != "none" and self.dp_clip:
            raise ValueError("compression cannot be combined with DP-FedAvg (dp_clip > 0) yet")
        if self.dp_noise and not self.dp_clip:
            raise ValueError("dp_noise needs dp_clip > 0 (the noise is calibrated to the clipping norm)")
        if not 1 <= self.sim_nodes <= 1000:
            raise ValueError(f"sim_nodes must be in 1..1000, got {self.sim_nodes}")
        if self.backend != "inprocess" and self.parallel_clients:
            raise ValueError(f"backend {self.backend!r} cannot run parallel_clients (it batches clients in this "
                             "process): use backend = 'inprocess'")
        if self.backend != "inprocess" and self.secure_aggregation and self.algorithm == "scaffold":
            raise ValueError(f"backend {self.backend!r} cannot combine secure_aggregation with SCAFFOLD: the server "
                             "updates c_i from the client's model, which a node that masks its update does not send")
        if self.backend != "inprocess" and self.algorithm == "scaffold" and self.compression != "none":
            raise ValueError(f"backend {self.backend!r} cannot combine SCAFFOLD with compression: the server updates "
                             "c_i from the client's uncompressed model, which a compressing node does not send")


def _seed(*parts: int) -> int:
    """A 63-bit seed from a tuple of integers (independent streams per round and client)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(2, np.uint64)[0] >> np.uint64(1))


@register_loop("federated")
class Federated(Loop):
    """Federated averaging family on an in-memory dataset: one step is one round."""

    Config = FederatedConfig
    model_families = ("classic", "transformers")
    trainables = ("client",)
    metrics = ("val_acc", "val_loss", "test_acc", "test_loss", "rounds_to_target", "epsilon", "client_acc_mean",
               "client_acc_min")
    progress_keys = ("loss", "test_acc")

    @classmethod
    def check_fit(cls, recipe: Recipe, data: Dataset, model: ArchModel) -> None:
        if recipe.train.steps < 1:
            raise ArchlabError("train.steps: the federated loop counts rounds in train.steps; set it (>= 1)")
        if recipe.train.accumulate != 1 or recipe.train.l1 or recipe.data.augment:
            raise ArchlabError("train.accumulate, train.l1 and data.augment are not used by the federated loop; "
                               "leave them at their defaults")
        cfg: FederatedConfig = recipe.loop
        if cfg.clients > len(data.train):
            raise ArchlabError(f"loop.clients: {cfg.clients} clients but only {len(data.train)} training examples")
        Supervised.check_fit(recipe, data, model)

    def __init__(self, recipe: Recipe, model: ArchModel, data: Dataset, ctx: Context) -> None:
        if ctx.dist.enabled:
            raise ArchlabError("the federated loop simulates its clients in one process; drop --nproc")
        super().__init__(recipe, model.to(ctx.device), data, ctx)
        cfg: FederatedConfig = self.cfg
        self.total_steps = recipe.train.steps
        self.eval_every = recipe.train.eval_every or 1
        self.train_x, self.train_y = data.train.x.to(ctx.device), data.train.y.to(ctx.device)
        self.parts = partition(data.train.y.numpy(), cfg.clients, cfg.partition, seed=ctx.seed, alpha=cfg.alpha,
                               shards_per_client=cfg.shards_per_client, min_size=cfg.min_size)
        self.local_tests: list[np.ndarray] = []
        if cfg.local_test_fraction:
            self.parts, self.local_tests = split_local(self.parts, cfg.local_test_fraction, _seed(ctx.seed, 2**32 - 2))
        names = [n for n, _ in model.named_parameters()]
        self.heads = LocalHeads(names[-cfg.head_params:] if cfg.personalization == "fedper" else [])
        self.client_accs: list[float] = []
        self.per_round = max(1, round(cfg.fraction * cfg.clients))
        self.client_optim = recipe.optim["client"]
        self.local = copy.deepcopy(self.model)  # the working copy every client trains
        if cfg.algorithm == "scaffold":
            self.algo: FedAvg = Scaffold(self.model)
        elif cfg.algorithm == "fedprox":
            self.algo = FedProx(cfg.mu)
        else:
            self.algo = FedAvg()
        b1, b2 = cfg.server_betas
        self.server = ServerOptimizer(ServerOptConfig(cfg.server, cfg.server_lr, cfg.server_momentum, b1, b2, cfg.tau),
                                      self._float_state(self.model))
        if cfg.parallel_clients:
            self._check_parallel()
        self.feedback = ErrorFeedback()
        self.bytes_total = 0  # bytes the clients have sent so far
        self.reached: int | None = None  # first round whose test accuracy reached target_acc
        self.round = 0
        self.transport = None
        if cfg.backend != "inprocess":
            from ..federated.flower import open_transport  # flwr is an optional extra

            self.transport = open_transport(cfg.backend, recipe, ctx.seed)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def _check_parallel(self) -> None:
        cfg, o = self.cfg, self.client_optim
        why = []
        if cfg.algorithm not in ("fedavg", "fedprox") or cfg.dp_clip or cfg.compression != "none" \
                or cfg.personalization != "none" or cfg.secure_aggregation:
            why.append("loop.algorithm fedavg/fedprox without DP, compression, secure aggregation or personalization")
        if o.name != "sgd" or o.momentum or o.weight_decay:
            why.append("optim.name = 'sgd' with momentum = 0 and weight_decay = 0")
        if len({len(p) for p in self.parts}) != 1:
            why.append(f"clients of equal size (partition {cfg.partition!r} gives unequal ones)")
        if any(isinstance(m, torch.nn.Dropout) and m.p for m in self.model.modules()) or list(self.model.buffers()):
            why.append("a model without dropout, BatchNorm or other buffers")
        if why:
            raise ArchlabError(f"loop.parallel_clients needs {'; '.join(why)}")

    @staticmethod
    def _float_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Parameters and floating buffers (what is averaged); integer buffers (BatchNorm's counter) are copied."""
        return {k: v for k, v in module.state_dict().items() if v.is_floating_point()}

    def sample_clients(self, rnd: int) -> list[int]:
        """The clients of round ``rnd``: a sorted sample without replacement, a function of (seed, rnd);
        with DP-FedAvg every client independently with probability ``fraction`` (possibly none)."""
        rng = np.random.default_rng(_seed(self.ctx.seed, rnd))
        if self.cfg.dp_clip:
            return [int(k) for k in np.flatnonzero(rng.random(self.cfg.clients) < self.cfg.fraction)]
        return sorted(int(k) for k in rng.choice(self.cfg.clients, self.per_round, replace=False))

    def client_batches(self, rnd: int, client: int, epochs: int | None = None
                       ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Client ``client``'s minibatches of round ``rnd``: ``epochs`` (default ``local_epochs``) seeded shuffles
        of its examples, cut into batches of ``data.batch_size`` (the last one of an epoch may be smaller)."""
        idx = torch.from_numpy(self.parts[client]).to(self.ctx.device)
        gen = torch.Generator().manual_seed(_seed(self.ctx.seed, rnd, client))
        b = len(idx) if self.cfg.full_batch else self.recipe.data.batch_size
        out = []
        for _ in range(epochs or self.cfg.local_epochs):
            order = idx[torch.randperm(len(idx), generator=gen).to(self.ctx.device)]
            x, y = self.train_x[order], self.train_y[order]  # one gather per epoch; the batches are views of it
            out += [(x[i:i + b], y[i:i + b]) for i in range(0, len(order), b)]
        return out

    def train_client(self, step: int, k: int, lr: float, global_state: dict[str, torch.Tensor],
                     global_params: dict[str, torch.Tensor]) -> tuple[int, float]:
        """ClientUpdate of client ``k`` in round ``step`` from the global model, into ``self.local``.
        Returns (steps taken, summed loss). A Flower node runs exactly this (archlab/federated/flower.py)."""
        self.local.load_state_dict(global_state)
        self.heads.load(k, self.local)
        opt = build_optimizer(self.local, self.client_optim)
        for group in opt.param_groups:
            group["lr"] = lr
        return self.algo.local_train(self.local, opt, self.client_batches(step, k), global_params, k)

    # Per-client state over Flower. SCAFFOLD's variates (c, c_i) and FedPer's head stay with the server (in the
    # checkpoint) and travel in the client's message; top-k's residual stays on the node that trains the client
    # (its Flower context), and comes back only in a checkpoint (:meth:`state_dict`).
    def head_payload(self, k: int) -> dict[str, torch.Tensor]:
        """Server side: client ``k``'s FedPer head (``head.*``; empty without one), for its messages."""
        return {f"head.{n}": v for n, v in self.heads.heads.get(k, {}).items()}

    def client_payload(self, k: int) -> dict[str, torch.Tensor]:
        """Server side: the per-client tensors of client ``k``'s ``train`` message (``c.*``, ``c_i.*``, ``head.*``,
        and a ``residual.*`` restored from a checkpoint that the node has not got yet)."""
        out = self.head_payload(k)
        if isinstance(self.algo, Scaffold):
            c_i = self.algo.client_variate(k)
            out.update({f"c.{n}": v for n, v in self.algo.c.items()})
            out.update({f"c_i.{n}": v for n, v in c_i.items()})
        out.update({f"residual.{n}": v for n, v in self.feedback.residual.pop(k, {}).items()})
        return out

    def load_client_payload(self, k: int, payload: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """Node side: install client ``k``'s tensors from its message (nothing of an earlier client stays);
        returns the residual the message carried, if any."""
        def part(prefix: str) -> dict[str, torch.Tensor]:
            return {n[len(prefix):]: v for n, v in payload.items() if n.startswith(prefix)}

        if isinstance(self.algo, Scaffold):
            self.algo.c, self.algo.c_i = part("c."), {k: part("c_i.")}
        self.heads.heads = {k: head} if (head := part("head.")) else {}
        return part("residual.") or None

    def body_update(self, state: dict[str, torch.Tensor], global_state: dict[str, torch.Tensor]
                     ) -> dict[str, torch.Tensor]:
        """w_k - x_t over the averaged tensors (floating, not FedPer's head), in state_dict order."""
        return {n: v - global_state[n] for n, v in state.items() if v.is_floating_point() and n not in self.heads.names}

    def pack_update(self, step: int, k: int, update: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What client ``k`` sends for its (compressed) update in round ``step`` (``loop.compression`` != none)."""
        cfg = self.cfg
        if cfg.compression == "topk":
            return self.feedback.pack(k, update, cfg.topk_fraction) if cfg.error_feedback \
                else topk_pack(update, cfg.topk_fraction)
        return quantize8_pack(update, torch.Generator().manual_seed(_seed(self.ctx.seed, step, k, 1)))

    @torch.no_grad()
    def train_remote_client(self, step: int, k: int, lr: float, global_state: dict[str, torch.Tensor],
                            payload: dict[str, torch.Tensor], residual: dict[str, torch.Tensor] | None
                            ) -> tuple[dict[str, torch.Tensor], int, float, dict[str, torch.Tensor] | None,
                                       dict[str, torch.Tensor] | None]:
        """What a Flower node does for client ``k`` (archlab/flower_apps.py): :meth:`train_client` with the
        message's per-client tensors; ``residual`` is top-k's residual the node kept (the message's wins).
        Returns (state to send, steps, summed loss, packed update or None, the client's new residual or None):
        without compression the whole local state; with it, the packed update and the tensors that are not
        averaged (FedPer's head, integer buffers)."""
        residual = self.load_client_payload(k, payload) or residual
        global_params = {n: global_state[n].clone() for n, _ in self.local.named_parameters()}
        with torch.enable_grad():
            steps, loss = self.train_client(step, k, lr, global_state, global_params)
        state = {n: v.detach().clone() for n, v in self.local.state_dict().items()}
        if self.cfg.compression == "none":
            return state, steps, loss, None, None
        update = self.body_update(state, global_state)
        self.feedback.residual = {k: residual} if residual else {}
        packed = self.pack_update(step, k, update)
        return ({n: v for n, v in state.items() if n not in update}, steps, loss, packed,
                self.feedback.residual.pop(k, None))

    def train_step(self, step: int) -> dict[str, Any]:
        cfg = self.cfg
        clients = self.sample_clients(step)
        lr = self.client_optim.lr * lr_factor(step, self.total_steps, self.client_optim)
        global_state = {k: v.clone() for k, v in self.model.state_dict().items()}
        global_params = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        sizes = [len(self.parts[k]) for k in clients]
        if cfg.dp_clip:  # DP-FedAvg sums clipped updates; the fixed denominator comes after the loop
            weights = [1.0] * len(clients)
        elif cfg.weighting == "samples":
            weights = [n / sum(sizes) for n in sizes]
        else:
            weights = [1 / len(clients)] * len(clients)
        # FedPer's heads stay with the clients: the server averages and steps the body only.
        body = {k: v for k, v in self._float_state(self.model).items() if k not in self.heads.names}
        delta = {k: torch.zeros_like(v) for k, v in body.items()}
        steps = loss_sum = 0.0
        full_size = sum(v.numel() * v.element_size() for v in delta.values())
        sent = 0
        if cfg.parallel_clients and clients:
            mu = cfg.mu if cfg.algorithm == "fedprox" else 0.0
            stacked, steps, loss_sum = local_sgd_together(
                self.local, global_params, [self.client_batches(step, k) for k in clients], lr, mu)
            w = torch.tensor(weights)
            for name, v in stacked.items():  # sum_k w_k (W_k - x_t)
                delta[name] = torch.einsum("k,k...->...", w.to(v), v - global_params[name])
            clients_to_train: list[tuple[int, float]] = []
            sent = full_size * len(clients)
        else:
            clients_to_train = list(zip(clients, weights, strict=True))
        secagg_inputs: dict[int, np.ndarray] = {}
        levels = (2**32 - 1) // max(1, len(clients))  # the sum of m encoded entries stays below 2^32
        remote: dict = {}
        masked_sum = None  # (z, surviving clients) of secure aggregation run by Flower nodes
        if self.transport is not None and clients_to_train:
            ids = [k for k, _ in clients_to_train]
            payloads = {k: self.client_payload(k) for k in ids}
            if cfg.secure_aggregation and len(ids) > 1:  # the nodes encode and mask; the server gets only the sum
                scales = {k: w * len(clients) for k, w in clients_to_train}
                remote, z, survivors = self.transport.secure_train(step, ids, lr, global_state, payloads, scales,
                                                                   cfg.secagg_clip, levels, self.secagg_t(len(ids)))
                masked_sum = (z, survivors)
            else:
                remote = self.transport.train(step, ids, lr, global_state, payloads)
        for k, w in clients_to_train:
            packed = None
            if remote:  # the client trained on a Flower node: its local state, or its packed update + the rest
                local_state, n_steps, k_loss, packed = remote[k]
                self.local.load_state_dict({**global_state, **local_state})
            else:
                n_steps, k_loss = self.train_client(step, k, lr, global_state, global_params)
            self.algo.end_client(k, self.local, global_params, n_steps, lr)
            self.heads.store(k, self.local)
            steps, loss_sum = steps + n_steps, loss_sum + k_loss
            if masked_sum is not None:  # encoded and masked on the client's node (no DP, no compression)
                sent += full_size
                continue
            with torch.no_grad():
                update = self.body_update(self.local.state_dict(), global_state)
                if cfg.dp_clip:
                    update = clip_update(update, cfg.dp_clip)
                if cfg.compression != "none":  # packed by the client (here, or on its Flower node)
                    packed = self.pack_update(step, k, update) if packed is None else packed
                    update, size = unpack(packed, update), packed_bytes(packed)
                else:
                    size = full_size
                sent += size
                if cfg.secure_aggregation:  # the client sends m * w_k * update, encoded; the server sees only sums
                    secagg_inputs[k] = self.secagg_encode(update, w * len(clients), levels)
                    continue
                for name, v in update.items():
                    delta[name].add_(v, alpha=w)
        dropped = 0  # clients left out of secure aggregation's sum
        if secagg_inputs or masked_sum is not None:
            if masked_sum is not None:
                z, survivors = masked_sum
            elif len(secagg_inputs) > 1:
                z, _ = secure_sum(secagg_inputs, self.secagg_t(len(secagg_inputs)))
                survivors = list(secagg_inputs)
            else:  # a single client has no one to hide its update among
                (z,), survivors = secagg_inputs.values(), list(secagg_inputs)
            total = torch.from_numpy(decode_sum(z, len(survivors), cfg.secagg_clip, levels) / len(clients))
            dropped = len(clients) - len(survivors)
            if dropped:  # clients dropped out of the protocol: average over the others
                kept = set(survivors)
                total = total / sum(w for k, w in zip(clients, weights, strict=True) if k in kept)
            start = 0
            for name, v in delta.items():
                delta[name] = total[start:start + v.numel()].view_as(v).to(v)
                start += v.numel()
        if cfg.dp_clip:
            noise = torch.Generator().manual_seed(_seed(self.ctx.seed, step, 2**32 - 1))  # no client has this index
            delta = noisy_mean(delta, cfg.fraction, cfg.clients, cfg.dp_clip, cfg.dp_noise, noise)
        # Integer buffers (BatchNorm's num_batches_tracked) cannot be averaged: keep the last client's.
        with torch.no_grad():
            for name, v in self.local.state_dict().items():
                if clients and not v.is_floating_point():
                    self.model.state_dict()[name].copy_(v)
        self.server.step(body, delta)
        self.algo.end_round(clients, cfg.clients)
        self.round = step + 1
        self.bytes_total += sent
        out = {"loss": loss_sum / max(steps, 1), "lr": lr, "clients": len(clients), "local_steps": steps,
               "bytes_up": sent}
        if cfg.secure_aggregation:
            out["secagg_dropped"] = dropped
        return out

    def secagg_encode(self, update: dict[str, torch.Tensor], scale: float, levels: int) -> np.ndarray:
        """What a client feeds secure aggregation: ``scale * update`` flattened and encoded to integers (in this
        process, or on the client's Flower node)."""
        flat = torch.cat([v.flatten() for v in update.values()]).double().numpy() * scale
        return encode(flat, self.cfg.secagg_clip, levels)

    def secagg_t(self, m: int) -> int:
        """Shamir threshold of secure aggregation among ``m`` clients (loop.secagg_threshold, default a majority)."""
        return min(max(self.cfg.secagg_threshold or m // 2 + 1, 2), m)

    @torch.no_grad()
    def _score(self, part: Split, split: str) -> dict[str, float]:
        self.model.eval()
        return classification_scores(self.model, part, split, self.recipe.data.eval_batch_size, self.ctx.device)

    def evaluate(self, split: str) -> dict[str, float]:
        if split != "val":
            return self._score(getattr(self.data, split), split)
        out = self._score(self.data.val, "val") if len(self.data.val) else {}
        test = self._score(self.data.test, "test")  # the per-round curve the papers plot
        if self.cfg.target_acc and self.reached is None and test["test_acc"] >= self.cfg.target_acc:
            self.reached = self.round
        if self.cfg.dp_clip:
            test["epsilon"] = self._epsilon()
        return {**out, **test, "bytes_up_total": float(self.bytes_total)}

    def final_metrics(self) -> dict[str, float]:
        out = {**(self._score(self.data.val, "val") if len(self.data.val) else {}), **self.evaluate("test")}
        if self.cfg.target_acc:
            out["rounds_to_target"] = math.inf if self.reached is None else float(self.reached)
        if self.cfg.dp_clip:
            out["epsilon"] = self._epsilon()
        if self.local_tests:
            self.client_accs = self.client_accuracies()
            out["client_acc_mean"] = float(np.mean(self.client_accs))
            out["client_acc_min"] = float(np.min(self.client_accs))
        return out

    @torch.no_grad()
    def _accuracy(self, model: torch.nn.Module, idx: np.ndarray) -> float:
        model.eval()
        i = torch.from_numpy(idx).to(self.ctx.device)
        x, y = self.train_x[i], self.train_y[i]
        return (model(x).argmax(-1) == y).float().mean().item() if len(idx) else float("nan")

    def client_accuracies(self) -> list[float]:
        """Every client's accuracy on its held-out examples: the global model, with the client's own head
        (fedper) or after ``finetune_epochs`` of local training (finetune). Over Flower each client's node
        computes it (an ``evaluate`` message per client)."""
        global_state = {k: v.clone() for k, v in self.model.state_dict().items()}
        lr = self.client_optim.lr * lr_factor(self.total_steps - 1, self.total_steps, self.client_optim)
        clients = list(range(self.cfg.clients))
        if self.transport is not None:
            accs = self.transport.evaluate(self.total_steps, clients, lr, global_state,
                                           {k: self.head_payload(k) for k in clients})
            return [accs[k] for k in clients]
        return [self.client_accuracy(k, global_state, lr) for k in clients]

    def client_accuracy(self, k: int, global_state: dict[str, torch.Tensor], lr: float) -> float:
        """Client ``k``'s accuracy on its held-out examples (see :meth:`client_accuracies`)."""
        self.local.load_state_dict(global_state)
        self.heads.load(k, self.local)
        if self.cfg.personalization == "finetune":
            opt = build_optimizer(self.local, self.client_optim)
            for group in opt.param_groups:
                group["lr"] = lr
            batches = self.client_batches(self.total_steps, k, self.cfg.finetune_epochs)
            FedAvg().local_train(self.local, opt, batches, {}, k)
        return self._accuracy(self.local, self.local_tests[k])

    @classmethod
    def evaluate_run(cls, run_dir: str | os.PathLike, recipe: Recipe, ctx: Context) -> dict[str, float]:
        """``archlab eval``: what the saved global model alone determines; rounds_to_target, epsilon and FedPer's
        per-client heads belong to the training history, which a run directory does not keep."""
        history = {"rounds_to_target", "epsilon"}
        if recipe.loop.personalization == "fedper":
            history |= {"client_acc_mean", "client_acc_min"}
        return {k: v for k, v in super().evaluate_run(run_dir, recipe, ctx).items() if k not in history}

    def _epsilon(self) -> float:
        """Client-level epsilon of the rounds run so far (DP-FedAvg; inf without noise)."""
        c = self.cfg
        return epsilon(sample_rate=c.fraction, noise_multiplier=c.dp_noise, steps=self.round, delta=c.dp_delta)

    def write_artifacts(self, run_dir: str | os.PathLike) -> None:
        """``plots/partition.png`` (client x class counts), ``partition.json`` (the counts) and
        ``plots/bytes_vs_accuracy.png`` (test accuracy against the bytes clients have sent)."""
        records = [r for r in read_metrics(Path(run_dir) / "metrics.jsonl") if "bytes_up_total" in r]
        if records:
            plt = pyplot()
            fig, ax = plt.subplots(figsize=(6, 4))
            ax.plot([r["bytes_up_total"] / 2**20 for r in records], [r["test_acc"] for r in records], marker=".")
            ax.set_xlabel("MiB sent by clients (cumulative)")
            ax.set_ylabel("test accuracy")
            ax.set_title(f"{self.recipe.name}: compression {self.cfg.compression}")
            ax.grid(alpha=0.3)
            fig.tight_layout()
            (Path(run_dir) / "plots").mkdir(exist_ok=True)
            fig.savefig(Path(run_dir) / "plots" / "bytes_vs_accuracy.png", dpi=100)
            plt.close(fig)
        counts = class_counts(self.data.train.y.numpy(), self.parts, self.data.num_classes)
        c = self.cfg
        if self.client_accs:
            atomic_write_bytes(Path(run_dir) / "clients.json", (json.dumps(
                {"personalization": c.personalization, "client_acc": self.client_accs}) + "\n").encode())
        plot_counts(counts, Path(run_dir) / "plots" / "partition.png",
                    f"{c.partition} partition of {self.recipe.data.name}: {c.clients} clients")
        atomic_write_bytes(Path(run_dir) / "partition.json",
                           (json.dumps({"scheme": c.partition, "counts": counts.tolist()}) + "\n").encode())

    def state_dict(self) -> dict[str, Any]:
        feedback = self.feedback.state_dict()
        if self.transport is not None and self.cfg.compression == "topk" and self.cfg.error_feedback:
            # over Flower the residuals live on the nodes: ask them (residuals restored from an earlier
            # checkpoint that no node has received yet are still here)
            feedback = {**self.transport.collect_residuals(), **feedback}
        return {"global": self.model.state_dict(), "server": self.server.state_dict(),
                "algorithm": self.algo.state_dict(), "round": self.round, "feedback": feedback,
                "bytes_total": self.bytes_total, "heads": self.heads.state_dict(),
                "reached": -1 if self.reached is None else self.reached}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["global"])
        self.server.load_state_dict(state["server"])
        self.algo.load_state_dict(state["algorithm"])
        self.round = state["round"]
        self.feedback.load_state_dict(state["feedback"])
        self.bytes_total = state["bytes_total"]
        self.heads.load_state_dict(state["heads"])
        self.reached = None if state["reached"] < 0 else state["reached"]
