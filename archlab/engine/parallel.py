"""Parallel training strategies over ``torch.distributed`` (``train.parallel``), for any loop that declares them.

``archlab train --nproc N`` starts N workers (:mod:`archlab.engine.distributed`); ``train.parallel`` says how
they share one training run. Every strategy computes, up to floating-point summation order, the update a
single process computes on the whole global batch -- except local SGD, which is a different algorithm:

``ddp`` (data parallel)
    every rank holds the whole model and optimizer, takes 1/N of each global batch, and gradients are
    averaged with one all-reduce before the optimizer step: ``g = (1/N) sum_r g_r``.
``fsdp`` (fully sharded data parallel, ZeRO-3; ``torch.distributed.fsdp.fully_shard``, "FSDP2")
    as ddp, but every parameter (and so every gradient and optimizer state) is split in N row shards
    ``W = [W_0; ...; W_{N-1}]``, rank r keeping ``W_r`` only. Each block (every module of an
    ``nn.ModuleList`` of the model: transformer layers, MLP layers; else the whole model) all-gathers
    its full weights just before its forward and backward and frees them after; gradients are
    reduce-scattered, so rank r receives only ``g_r`` and steps only its shard. Memory per rank for
    parameters, gradients and optimizer state ~ 1/N.
``tensor`` (tensor parallel, Megatron-LM, Shoeybi et al. 2019; ``torch.distributed.tensor.parallel``)
    every rank sees the whole batch; inside each transformer layer the heads and the MLP's hidden units
    are split across ranks. Attention: ``qkv`` is column-parallel (rank r computes the q, k, v of heads
    ``r H/N .. (r+1) H/N - 1``), ``out`` row-parallel (each rank multiplies its heads' slice of ``W_o``;
    one all-reduce sums the N partial outputs). MLP: ``fc1`` (and ``gate``) column-parallel, ``fc2``
    row-parallel: ``Y = sum_r act(X W_1[:, r]) W_2[r, :]``. Embeddings, norms and heads are replicated.
``pipeline`` (GPT only; ``torch.distributed.pipelining``)
    the GPT's layers are cut into N consecutive stages (the embeddings go with the first, the final
    norm and the head with the last); each global batch is split into ``train.microbatches`` micro-
    batches that flow through the stages in a GPipe (all forwards, then all backwards; Huang et al.
    2019) or 1F1B (one forward, one backward, interleaved; Narayanan et al. 2019, PipeDream-Flush)
    schedule. Gradients are then summed over stages so every rank applies the same optimizer step
    (see :class:`Pipeline` for what that costs and buys).
``local_sgd`` (Local SGD, Stich 2019; DiLoCo, Douillard et al. 2023)
    every rank steps its own copy on its 1/N of each global batch without any communication; every
    ``train.local_sgd_every`` = H steps (and after the last one) the copies are merged by an outer step
    on the pseudo-gradient ``Delta = theta_outer - mean_r theta_r`` with Nesterov-momentum SGD
    (``train.outer_lr``, ``train.outer_momentum``); every rank restarts from the new ``theta_outer``.
    ``outer_lr = 1, outer_momentum = 0`` is plain parameter averaging (local SGD); DiLoCo uses
    ``outer_lr = 0.7, outer_momentum = 0.9`` and an AdamW inner optimizer.

A loop uses a strategy through its :class:`~archlab.engine.loop.Trainable` (``batch_step``, ``step``,
``state_dict``) and declares which strategies it supports (``Loop.parallel``). Checkpoints of every
strategy hold full, unsharded tensors in the usual layout, written by rank 0 (local SGD: each rank's own
copy, stacked), so they load on any number of ranks of the same strategy; the final model is a plain
module. With one process every strategy but local SGD is plain training.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..errors import ArchlabError
from ..nn.attention import MultiHeadAttention
from ..nn.transformer import FeedForward
from .distributed import DistInfo, average_gradients
from .optim import OptimConfig, build_optimizer

if TYPE_CHECKING:
    from .loop import Trainable

StrategyName = Literal["ddp", "fsdp", "tensor", "pipeline", "local_sgd"]
PipelineSchedule = Literal["gpipe", "1f1b"]
STRATEGIES: tuple[str, ...] = get_args(StrategyName)


@dataclass
class ParallelConfig:
    """How ``--nproc`` workers share a run (the ``train.parallel*`` recipe keys; documented in recipe.py)."""

    parallel: StrategyName = "ddp"
    local_sgd_every: int = 1
    outer_lr: float = 1.0
    outer_momentum: float = 0.0
    microbatches: int = 2
    pipeline_schedule: PipelineSchedule = "1f1b"

    def __post_init__(self) -> None:
        if self.parallel not in STRATEGIES:
            raise ValueError(f"parallel must be one of {', '.join(STRATEGIES)}, got {self.parallel!r}")
        if self.pipeline_schedule not in get_args(PipelineSchedule):
            raise ValueError(f"pipeline_schedule must be gpipe or 1f1b, got {self.pipeline_schedule!r}")
        if not 1 <= self.local_sgd_every <= 10**6 or not 1 <= self.microbatches <= 4096:
            raise ValueError(f"need 1 <= local_sgd_every <= 1e6 and 1 <= microbatches <= 4096, got "
                             f"{self.local_sgd_every}, {self.microbatches}")
        if not 0 < self.outer_lr <= 10 or not 0 <= self.outer_momentum < 1:
            raise ValueError(f"need 0 < outer_lr <= 10 and 0 <= outer_momentum < 1, got {self.outer_lr}, "
                             f"{self.outer_momentum}")


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """``obj`` (nested dicts, lists, tuples) with every tensor leaf replaced by ``fn(leaf)``."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(map_tensors(v, fn) for v in obj)
    return obj


def model_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of ``model``: members (with parameters) of its outermost ``nn.ModuleList``\\ s."""
    blocks: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            if isinstance(child, nn.ModuleList):
                blocks.extend(m for m in child if any(True for _ in m.parameters()))
            else:
                visit(child)

    visit(model)
    return blocks


def _skeleton(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with its buffers but parameters on the meta device (no memory): what
    :meth:`Strategy.unshard` fills with the gathered weights (``load_state_dict(assign=True)``)."""
    memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad) for p in module.parameters()}
    return copy.deepcopy(module, memo)


class Strategy:
    """Data parallel (``ddp``), and the interface every strategy implements.

    Order in one optimizer step (:meth:`archlab.engine.loop.Trainable.batch_step`): for each micro-batch
    :meth:`forward_backward` (on :meth:`local_batch`), then :meth:`global_loss`, :meth:`reduce_gradients`,
    :meth:`clip_grad_norm`, the optimizer step, :meth:`after_step`."""

    def __init__(self, cfg: ParallelConfig, info: DistInfo, device: torch.device, total_steps: int) -> None:
        self.cfg, self.info, self.device, self.total_steps = cfg, info, device, total_steps

    # -- before the optimizer exists ---------------------------------------------------------------
    def check(self, module: nn.Module, train: Any, eval_every: int) -> None:
        """One-line :class:`ArchlabError` when ``module``, the ``[train]`` settings ``train`` or the loop's
        evaluation interval cannot run under this strategy."""

    def prepare(self, module: nn.Module) -> None:
        """Shard / split ``module`` in place; the optimizer is built over its parameters afterwards."""

    def build_optimizer(self, module: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
        """The optimizer over ``module`` after :meth:`prepare`."""
        return build_optimizer(module, cfg)

    # -- one step ------------------------------------------------------------------------------------
    def local_batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's part of a global micro-batch: rows ``r B/N .. (r+1) B/N - 1``."""
        if not self.info.enabled:
            return x, y
        b, r = len(x) // self.info.world_size, self.info.rank
        return x[r * b:(r + 1) * b], y[r * b:(r + 1) * b]

    def forward_backward(self, trainable: Trainable, x: torch.Tensor, y: torch.Tensor,
                         forward: Callable[[torch.Tensor], torch.Tensor],
                         loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                         l1: float, accumulate: int) -> torch.Tensor:
        """Backpropagate ``(loss_fn(forward(x), y) + l1 sum|W|) / accumulate`` on this rank's part of the
        global micro-batch ``(x, y)``; return that loss (detached)."""
        from .optim import l1_penalty

        x, y = self.local_batch(x, y)
        with trainable.precision.autocast():
            out = forward(x)
        loss = loss_fn(out, y)
        if l1:
            loss = loss + l1 * l1_penalty(trainable.module.parameters())
        loss = loss / accumulate
        trainable.backward(loss)
        return loss.detach()

    def global_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss of the whole global batch, on every rank (each rank computed its part's)."""
        if self.info.enabled:
            dist.all_reduce(loss)
            loss /= self.info.world_size
        return loss

    def reduce_gradients(self, module: nn.Module) -> None:
        average_gradients(module, self.info)

    def clip_grad_norm(self, module: nn.Module, max_norm: float) -> None:
        """Scale the gradients so that their global norm ``||g||_2`` is at most ``max_norm``."""
        torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm)

    def after_step(self, module: nn.Module) -> None:
        """After the optimizer step (local SGD: the periodic outer step)."""

    # -- checkpoints and the final model -------------------------------------------------------------
    def state_dict(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """``{"module", "optimizer"}`` as full tensors in the model's own layout (called on every rank)."""
        return {"module": module.state_dict(), "optimizer": optimizer.state_dict()}

    def load_state_dict(self, module: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        module.load_state_dict(state["module"])
        optimizer.load_state_dict(state["optimizer"])

    def unshard(self, module: nn.Module) -> nn.Module:
        """A plain module with the full trained weights (called on every rank after the last step)."""
        return module


# ---------------------------------------------------------------------------------- sharded strategies
def _unsupported(name: str, train: Any) -> None:
    """fsdp, tensor and pipeline: no fp16 loss scaling, torch.compile or L1 penalty (not implemented over
    sharded or staged weights)."""
    for bad, what in ((train.precision == "fp16", 'precision = "fp16" (use "bf16")'),
                      (train.compile, "train.compile"), (train.l1, "train.l1")):
        if bad:
            raise ArchlabError(f"train.parallel = {name!r} does not support {what}")


class _Sharded(Strategy):
    """Shared by fsdp and tensor: parameters become DTensors; checkpoints gather them to full tensors."""

    def check(self, module: nn.Module, train: Any, eval_every: int) -> None:
        _unsupported(self.cfg.parallel, train)
        blocker = getattr(type(module), "sharding_blocker", None)  # declared by archlab models, absent elsewhere
        if blocker:
            raise ArchlabError(f"train.parallel = {self.cfg.parallel!r} cannot shard {type(module).__name__}: "
                               f"{blocker}")

    def prepare(self, module: nn.Module) -> None:
        from torch.distributed.device_mesh import init_device_mesh

        self.mesh = init_device_mesh(self.device.type, (self.info.world_size,))
        self.skeleton = _skeleton(module)
        self.shard(module)

    def shard(self, module: nn.Module) -> None:
        raise NotImplementedError

    def reduce_gradients(self, module: nn.Module) -> None:
        pass  # fsdp reduce-scattered them in the backward pass; tensor parallel's are complete already

    def build_optimizer(self, module: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
        """As usual, but sharded (DTensor) and replicated (plain) parameters in separate groups: one
        foreach kernel call takes one kind of tensor."""
        from torch.distributed.tensor import DTensor

        opt = build_optimizer(module, cfg)
        groups = [{**group, "params": params} for group in opt.param_groups for sharded in (True, False)
                  if (params := [p for p in group["params"] if isinstance(p, DTensor) == sharded])]
        opt.param_groups.clear()  # no state yet: regrouping changes nothing else
        for group in groups:
            opt.add_param_group(group)
        return opt

    # The layout of a full tensor as the shards see it can differ from the model's (tensor: fused qkv).
    def to_model_layout(self, name: str, full: torch.Tensor) -> torch.Tensor:
        return full

    def to_shard_layout(self, name: str, full: torch.Tensor) -> torch.Tensor:
        return full

    def _full(self, name: str, t: torch.Tensor) -> torch.Tensor:
        from torch.distributed.tensor import DTensor

        return self.to_model_layout(name, t.full_tensor()) if isinstance(t, DTensor) else t

    def _shard_like(self, like: torch.Tensor, name: str, full: torch.Tensor) -> torch.Tensor:
        from torch.distributed.tensor import DTensor, distribute_tensor

        if not isinstance(like, DTensor):
            return full.to(like.device)
        # every rank read the same full tensor: each keeps its own shard, no communication
        return distribute_tensor(self.to_shard_layout(name, full).to(like.device), like.device_mesh,
                                 like.placements, src_data_rank=None)

    def _param_names(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) in the order the optimizer numbers its state (``state_dict()["state"]`` keys)."""
        names = {id(p): n for n, p in module.named_parameters()}
        return [(names[id(p)], p) for group in optimizer.param_groups for p in group["params"]]

    def state_dict(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        model = {n: self._full(n, t) for n, t in module.state_dict().items()}
        opt = optimizer.state_dict()
        params = self._param_names(module, optimizer)
        opt["state"] = {i: {k: self._full(params[i][0], v) if isinstance(v, torch.Tensor) else v
                            for k, v in s.items()} for i, s in opt["state"].items()}
        return {"module": model, "optimizer": opt}

    def load_state_dict(self, module: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        current = module.state_dict()
        module.load_state_dict({n: self._shard_like(current[n], n, t) for n, t in state["module"].items()})
        params = self._param_names(module, optimizer)
        opt = dict(state["optimizer"])
        opt["state"] = {i: {k: self._shard_like(params[i][1], params[i][0], v)
                            if isinstance(v, torch.Tensor) and v.shape == params[i][1].shape else v
                            for k, v in s.items()} for i, s in opt["state"].items()}
        optimizer.load_state_dict(opt)

    def clip_grad_norm(self, module: nn.Module, max_norm: float) -> None:
        """As torch's ``clip_grad_norm_``, over gradients some of which are sharded (the norm of a
        sharded gradient is reduced across ranks)."""
        from torch.distributed.tensor import DTensor

        grads = [p.grad for p in module.parameters() if p.grad is not None]
        norms = [torch.linalg.vector_norm(g) for g in grads]
        norms = [n.full_tensor() if isinstance(n, DTensor) else n for n in norms]
        total = torch.linalg.vector_norm(torch.stack(norms))
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0).item()
        for g in grads:
            g.mul_(coef)

    def unshard(self, module: nn.Module) -> nn.Module:
        full = {n: self._full(n, t) for n, t in module.state_dict().items()}
        self.skeleton.load_state_dict(full, assign=True)
        return self.skeleton


class FSDP(_Sharded):
    """``fsdp``: ``fully_shard`` every block (:func:`model_blocks`), then the whole model (module docstring)."""

    def shard(self, module: nn.Module) -> None:
        from torch.distributed.fsdp import fully_shard

        for block in model_blocks(module):
            fully_shard(block, mesh=self.mesh)
        fully_shard(module, mesh=self.mesh)


def regroup(full: torch.Tensor, sizes: list[int], n: int) -> torch.Tensor:
    """Rows of a fused projection ``[A; B; ...]`` (block sizes ``sizes``) reordered to
    ``[A_0; B_0; ...; A_1; B_1; ...]``, ``A_r`` the r-th of n equal row chunks of ``A``: an even split of the
    result in n gives rank r exactly its heads' rows of every block. :func:`ungroup` is the inverse."""
    blocks = [b.chunk(n) for b in full.split(sizes)]
    return torch.cat([blocks[j][r] for r in range(n) for j in range(len(sizes))])


def ungroup(grouped: torch.Tensor, sizes: list[int], n: int) -> torch.Tensor:
    parts = grouped.split([s // n for _ in range(n) for s in sizes])
    return torch.cat([parts[r * len(sizes) + j] for j in range(len(sizes)) for r in range(n)])


class Tensor(_Sharded):
    """``tensor``: column-parallel qkv / fc1 (gate), row-parallel out / fc2 in every transformer layer."""

    def check(self, module: nn.Module, train: Any, eval_every: int) -> None:
        super().check(module, train, eval_every)
        attns = [m for m in module.modules() if isinstance(m, MultiHeadAttention)]
        ffns = [m for m in module.modules() if isinstance(m, FeedForward)]
        if not attns:
            raise ArchlabError(f"tensor parallel supports the transformer family (models built from "
                               f"archlab.nn.transformer layers); {type(module).__name__} has no attention layer")
        n = self.info.world_size
        for a in attns:
            if a.n_head % n or a.n_kv_head % n:
                raise ArchlabError(f"tensor parallel over {n} processes needs attention heads divisible by {n}; "
                                   f"the model has n_head={a.n_head}, n_kv_head={a.n_kv_head}")
        for f in ffns:
            if f.fc1.out_features % n:
                raise ArchlabError(f"tensor parallel over {n} processes needs the MLP width divisible by {n}; "
                                   f"the model's is {f.fc1.out_features}")

    def local_batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y  # every rank computes the whole batch, with its part of each layer

    def global_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return loss  # the same on every rank

    def shard(self, module: nn.Module) -> None:
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

        n = self.info.world_size
        self.fused: dict[str, list[int]] = {}
        """Full name -> block sizes of every fused projection whose rows are regrouped (:func:`regroup`)."""
        for name, m in module.named_modules():
            if isinstance(m, MultiHeadAttention):
                inner, inner_kv = m.n_head * m.head_dim, m.n_kv_head * m.head_dim
                fused = {"kv": [inner_kv, inner_kv]} if m.cross else {"qkv": [inner, inner_kv, inner_kv]}
                for proj, sizes in fused.items():
                    linear = getattr(m, proj)
                    for pname, p in linear.named_parameters():
                        self.fused[f"{name}.{proj}.{pname}"] = sizes
                        with torch.no_grad():
                            p.copy_(regroup(p, sizes, n))
                plan = {proj: ColwiseParallel() for proj in ("q", *fused)} if m.cross else {"qkv": ColwiseParallel()}
                parallelize_module(m, self.mesh, {**plan, "out": RowwiseParallel()})
                m.n_head, m.n_kv_head = m.n_head // n, m.n_kv_head // n  # the heads this rank computes
            elif isinstance(m, FeedForward):
                plan = {"fc1": ColwiseParallel(), "fc2": RowwiseParallel()}
                if m.gate is not None:
                    plan["gate"] = ColwiseParallel()
                parallelize_module(m, self.mesh, plan)

    def to_model_layout(self, name: str, full: torch.Tensor) -> torch.Tensor:
        sizes = self.fused.get(name)
        return full if sizes is None else ungroup(full, sizes, self.info.world_size)

    def to_shard_layout(self, name: str, full: torch.Tensor) -> torch.Tensor:
        sizes = self.fused.get(name)
        return full if sizes is None else regroup(full, sizes, self.info.world_size)


# -------------------------------------------------------------------------------------------- pipeline
class GPTStage(nn.Module):
    """Layers ``lo .. hi - 1`` of a GPT, with the embeddings (first stage) and the final norm and head
    (last stage): the first stage maps token ids ``[B, T]`` to hidden states ``[B, T, C]``, the last
    hidden states to logits ``[B, T, V]`` (``GPT.hidden_states`` without padding masks or caches). The
    stage shares the GPT's modules; the tied head of the last stage is the embedding matrix itself."""

    def __init__(self, gpt: nn.Module, lo: int, hi: int, first: bool, last: bool) -> None:
        super().__init__()
        self.first, self.last = first, last
        self.layers = nn.ModuleList(gpt.layers[lo:hi])
        if first:
            self.wte, self.wpe, self.drop = gpt.wte, gpt.wpe, gpt.drop
        if last:
            self.ln_f, self.lm_head = gpt.ln_f, gpt.lm_head
            self.head_weight = gpt.wte.weight if gpt.lm_head is None else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.first:
            h = self.wte(h)
            if self.wpe is not None:
                h = self.wpe(h, 0)
            h = self.drop(h)
        for layer in self.layers:
            h = layer(h, causal=True)
        if self.last:
            h = self.ln_f(h)
            h = F.linear(h, self.head_weight) if self.lm_head is None else self.lm_head(h)
        return h


class Pipeline(Strategy):
    """``pipeline``: rank r runs stage r of the GPT under a GPipe or 1F1B schedule.

    What is split is the forward and backward compute and its activations: rank r only runs its layers,
    on one micro-batch at a time. Every rank draws the whole global batch (the first stage reads the
    tokens, the last the targets). After the schedule, the gradients of all stages are summed with one
    all-reduce -- each parameter's gradient lives on the stage that uses it (the tied embedding on the
    first and the last, which the sum adds up as one process would) -- so every rank applies the same
    optimizer step to a full replica of the weights. That replica costs the memory a pipeline usually
    saves, but keeps evaluation, checkpoints and the saved model exactly as in ddp."""

    def check(self, module: nn.Module, train: Any, eval_every: int) -> None:
        _unsupported("pipeline", train)
        if getattr(module, "registry_name", None) != "gpt":
            raise ArchlabError(f"pipeline needs a GPT model (model.name = \"gpt\"), got "
                               f"{getattr(module, 'registry_name', type(module).__name__)!r}")
        c = module.config
        if c.attn_kind == "sparse":
            raise ArchlabError("pipeline does not support sparse attention (attn_kind = \"sparse\")")
        n, m = self.info.world_size, self.cfg.microbatches
        if c.n_layer < n:
            raise ArchlabError(f"pipeline over {n} processes needs at least {n} layers, the GPT has {c.n_layer}")
        if self.cfg.pipeline_schedule == "1f1b" and m < n:
            raise ArchlabError(f"the 1f1b schedule needs train.microbatches >= the {n} stages, got {m}")

    def prepare(self, module: nn.Module) -> None:
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

        n, r = self.info.world_size, self.info.rank
        bounds = [int(i) for i in torch.linspace(0, module.config.n_layer, n + 1).round()]
        self.first, self.last = r == 0, r == n - 1
        stage = GPTStage(module, bounds[r], bounds[r + 1], self.first, self.last)
        device = torch.device("cuda", self.info.local_rank) if self.device.type == "cuda" else self.device
        self.stage = PipelineStage(stage, r, n, device)
        schedule = ScheduleGPipe if self.cfg.pipeline_schedule == "gpipe" else Schedule1F1B
        # per micro-batch mean losses; the schedule divides the summed gradients by the micro-batches
        self.schedule = schedule(self.stage, n_microbatches=self.cfg.microbatches, loss_fn=self._loss)
        self._loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
        self._accumulate = 1

    def _loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self._loss_fn(out, target) / self._accumulate

    def local_batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y

    def forward_backward(self, trainable: Trainable, x: torch.Tensor, y: torch.Tensor,
                         forward: Callable[[torch.Tensor], torch.Tensor],
                         loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                         l1: float, accumulate: int) -> torch.Tensor:
        if len(x) % self.cfg.microbatches:
            raise ArchlabError(f"data.batch_size {len(x)} must be divisible by train.microbatches "
                               f"{self.cfg.microbatches}")
        self._loss_fn, self._accumulate = loss_fn, accumulate
        losses: list[torch.Tensor] = []
        with trainable.precision.autocast():
            if self.first:
                self.schedule.step(x)
            elif self.last:
                self.schedule.step(target=y, losses=losses)
            else:
                self.schedule.step()
        if not self.last:
            return torch.zeros((), device=self.device)
        return torch.stack(losses).mean().detach().float()

    def global_loss(self, loss: torch.Tensor) -> torch.Tensor:
        dist.broadcast(loss, src=self.info.world_size - 1)  # only the last stage computed it
        return loss

    def reduce_gradients(self, module: nn.Module) -> None:
        """``g = sum over stages`` (zeros where a stage does not use a parameter), one all-reduce."""
        params = list(module.parameters())
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        dist.all_reduce(flat)
        offset = 0
        for p in params:
            p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()


# -------------------------------------------------------------------------------- local SGD / DiLoCo
class LocalSGD(Strategy):
    """``local_sgd``: H local steps per rank, then an outer step on the averaged pseudo-gradient.

    Outer step (Douillard et al. 2023, Algorithm 1; ``torch.optim.SGD`` with Nesterov momentum mu)::

        Delta = theta_outer - (1/N) sum_r theta_r          pseudo-gradient
        b     = mu b + Delta                               momentum buffer
        theta_outer <- theta_outer - lr_outer (Delta + mu b)   (mu = 0: theta_outer - lr_outer Delta)
        theta_r     <- theta_outer  on every rank

    Floating-point buffers (BatchNorm statistics) are averaged. The inner optimizers keep their own
    state. A rank's weights differ from the others' between outer steps, so a checkpoint keeps every
    rank's own module and optimizer state (each tensor stacked over ranks on a new first dimension)."""

    def check(self, module: nn.Module, train: Any, eval_every: int) -> None:
        h = self.cfg.local_sgd_every
        if eval_every % h:
            raise ArchlabError(f"train.parallel = 'local_sgd': evaluations (every {eval_every} steps) must fall "
                               f"on outer steps (every train.local_sgd_every = {h}); make train.eval_every a "
                               f"multiple of {h}")

    def prepare(self, module: nn.Module) -> None:
        self.outer = [p.detach().clone() for p in module.parameters()]
        mu = self.cfg.outer_momentum
        self.outer_opt = torch.optim.SGD(self.outer, lr=self.cfg.outer_lr, momentum=mu, nesterov=mu > 0)
        self.steps = 0

    def reduce_gradients(self, module: nn.Module) -> None:
        pass  # each rank steps on its own gradient

    def after_step(self, module: nn.Module) -> None:
        self.steps += 1
        if self.steps % self.cfg.local_sgd_every == 0 or self.steps == self.total_steps:
            self.outer_step(module)

    def _mean(self, t: torch.Tensor) -> torch.Tensor:
        if self.info.enabled:
            dist.all_reduce(t)
            t /= self.info.world_size
        return t

    @torch.no_grad()
    def outer_step(self, module: nn.Module) -> None:
        params = list(module.parameters())
        mean = self._mean(torch.cat([p.reshape(-1) for p in params]))
        offset = 0
        for outer, p in zip(self.outer, params, strict=True):
            outer.grad = outer - mean[offset:offset + p.numel()].view_as(p)  # Delta
            offset += p.numel()
        self.outer_opt.step()
        for outer, p in zip(self.outer, params, strict=True):
            p.copy_(outer)
        for b in module.buffers():
            if b.is_floating_point():
                b.copy_(self._mean(b.clone()))

    def _stack(self, t: torch.Tensor) -> torch.Tensor:
        if not self.info.enabled:
            return t.unsqueeze(0)
        parts = [torch.empty_like(t) for _ in range(self.info.world_size)]
        dist.all_gather(parts, t.contiguous())
        return torch.stack(parts)

    def state_dict(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        own = {"module": module.state_dict(), "optimizer": optimizer.state_dict()}
        return {**map_tensors(own, self._stack), "outer": self.outer, "outer_opt": self.outer_opt.state_dict(),
                "steps": self.steps}

    def load_state_dict(self, module: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        world = self.info.world_size
        if state["module"] and next(iter(state["module"].values())).shape[0] != world:
            raise ArchlabError(f"this local_sgd checkpoint holds {next(iter(state['module'].values())).shape[0]} "
                               f"workers' states; resume it with --nproc of that number, not {world}")
        own = map_tensors({"module": state["module"], "optimizer": state["optimizer"]}, lambda t: t[self.info.rank])
        super().load_state_dict(module, optimizer, own)
        with torch.no_grad():
            for outer, saved in zip(self.outer, state["outer"], strict=True):
                outer.copy_(saved)
        self.outer_opt.load_state_dict(state["outer_opt"])
        self.steps = state["steps"]


def make_strategy(cfg: ParallelConfig, info: DistInfo, device: torch.device, total_steps: int) -> Strategy:
    """The strategy ``cfg.parallel`` names. With one process fsdp, tensor and pipeline are plain training
    (``ddp`` on one rank); their :meth:`Strategy.check` still runs, so a recipe fails the same way on one
    process as on many."""
    classes: dict[str, type[Strategy]] = {"ddp": Strategy, "fsdp": FSDP, "tensor": Tensor, "pipeline": Pipeline,
                                          "local_sgd": LocalSGD}
    cls = classes[cfg.parallel]
    if not info.enabled and cls in (FSDP, Tensor, Pipeline):
        return _OneProcess(cls(cfg, info, device, total_steps), cfg, info, device, total_steps)
    return cls(cfg, info, device, total_steps)


class _OneProcess(Strategy):
    """fsdp, tensor or pipeline on one process: plain training after the strategy's own checks."""

    def __init__(self, inner: Strategy, *args: Any) -> None:
        super().__init__(*args)
        self.inner = inner

    def check(self, module: nn.Module, train: Any, eval_every: int) -> None:
        self.inner.check(module, train, eval_every)
