"""Low-rank factorization of Linear and Conv2d layers by truncated SVD.

**Linear.** A weight ``W`` ``[out, in]`` has the SVD ``W = U S V^T``. Keeping the ``r`` largest singular
values gives the best rank-``r`` approximation in Frobenius and spectral norm (Eckart-Young):

    W ~ W_r = U_r S_r V_r^T = (U_r S_r^{1/2}) (S_r^{1/2} V_r^T) = B A,     A: [r, in],  B: [out, r]

so ``y = W x + b`` becomes two layers ``y = B (A x) + b``: ``Linear(in, r, bias=False)`` then
``Linear(r, out)``. Parameters ``out*in (+out)`` -> ``r*(in + out) (+out)``; it pays when
``r < out*in / (in + out)``. The singular values are split evenly (``S^{1/2}`` on each side) so both
factors have the same scale.

**Conv2d** (``groups = 1``). A kernel ``K`` ``[out, in, kh, kw]`` is the matrix ``[out, in*kh*kw]``
acting on image patches; its truncated SVD gives a ``kh x kw`` convolution with ``r`` filters
(``S_r^{1/2} V_r^T`` reshaped to ``[r, in, kh, kw]``, the original stride, padding and dilation, no
bias) followed by a ``1 x 1`` convolution ``[out, r, 1, 1]`` (``U_r S_r^{1/2}``, with the bias): the
scheme of Zhang et al. 2016 (Accelerating very deep convolutional networks, §3) without their
nonlinear reconstruction. Parameters ``out*in*kh*kw`` -> ``r*(in*kh*kw + out)``.

**Rank.** Either a fixed ``rank`` (capped at ``min(out, in*kh*kw)``) or the smallest ``r`` whose
singular values keep a share ``energy`` of the squared Frobenius norm:
``sum_{i<=r} s_i^2 / sum_i s_i^2 >= energy``. :func:`factorize_model` replaces only the layers where the
factorization has fewer parameters than the original.

:class:`LowRankNet` (registered ``lowrank``) is the factorized network as a saved, reloadable model:
its base network plus the rank of each factorized layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import ArchlabError
from ..models.base import ArchModel
from ..registry import create, get, register


def choose_rank(s: torch.Tensor, rank: int | None = None, energy: float | None = None) -> int:
    """The rank to keep from the singular values ``s`` (descending): ``rank`` capped at ``len(s)``, or
    the smallest ``r`` with ``sum(s[:r]^2) / sum(s^2) >= energy``."""
    if (rank is None) == (energy is None):
        raise ValueError("give exactly one of rank and energy")
    if rank is not None:
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        return min(rank, len(s))
    if not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    share = (s.double() ** 2).cumsum(0) / (s.double() ** 2).sum().clamp_min(1e-300)
    # tiny float slack so energy = 1 keeps every nonzero value, not one past the end
    return min(int((share < energy - 1e-12).sum()) + 1, len(s))


def matrix_of(layer: nn.Module) -> torch.Tensor:
    """The layer's weight as a matrix ``[out, in]`` (Linear) or ``[out, in*kh*kw]`` (Conv2d)."""
    return layer.weight.detach().flatten(1)


def factorized_params(layer: nn.Module, rank: int) -> int:
    """Parameters of ``layer`` factorized at ``rank``: ``r * (cols + out)`` plus the bias."""
    out, cols = matrix_of(layer).shape
    return rank * (cols + out) + (out if layer.bias is not None else 0)


def _shell(layer: nn.Module, rank: int) -> nn.Sequential:
    """Freshly initialized two-layer replacement of ``layer`` at ``rank`` (weights set by the caller)."""
    bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        return nn.Sequential(nn.Linear(layer.in_features, rank, bias=False), nn.Linear(rank, layer.out_features, bias))
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1:
            raise ArchlabError(f"low-rank: a grouped convolution (groups={layer.groups}) is not factorized")
        first = nn.Conv2d(layer.in_channels, rank, layer.kernel_size, stride=layer.stride, padding=layer.padding,
                          dilation=layer.dilation, bias=False, padding_mode=layer.padding_mode)
        return nn.Sequential(first, nn.Conv2d(rank, layer.out_channels, 1, bias=bias))
    raise ArchlabError(f"low-rank: cannot factorize a {type(layer).__name__} (Linear and Conv2d only)")


@torch.no_grad()
def factorize(layer: nn.Module, rank: int | None = None, energy: float | None = None) -> nn.Sequential:
    """``layer`` (Linear or Conv2d) as two layers from its truncated SVD (module docstring).

    Shapes: the same input and output as ``layer``."""
    w = matrix_of(layer)
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    r = choose_rank(s, rank, energy)
    root = s[:r].sqrt()
    a = (root[:, None] * vh[:r]).to(w.dtype)   # [r, cols]
    b = (u[:, :r] * root[None, :]).to(w.dtype)  # [out, r]
    new = _shell(layer, r).to(w.device)
    new[0].weight.copy_(a.view_as(new[0].weight))
    new[1].weight.copy_(b.view_as(new[1].weight))
    if layer.bias is not None:
        new[1].bias.copy_(layer.bias)
    return new


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


@dataclass
class LayerReport:
    """What happened to one layer."""

    name: str
    rank: int
    """kept rank (the full rank when the layer was left alone)"""
    full_rank: int
    params_before: int
    params_after: int
    energy: float
    """share of the squared Frobenius norm kept: sum(s[:r]^2) / sum(s^2)"""
    factorized: bool


@torch.no_grad()
def factorize_model(model: nn.Module, rank: int | None = None, energy: float | None = None,
                    skip: tuple[str, ...] = ()) -> tuple[nn.Module, list[LayerReport]]:
    """Factorize every Linear and (ungrouped) Conv2d of ``model`` in place where that saves parameters;
    ``skip`` names layers to leave alone. Returns the model and one report per candidate layer."""
    candidates = [(n, m) for n, m in model.named_modules()
                  if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)]
    reports = []
    for name, layer in candidates:
        if name in skip:
            continue
        s = torch.linalg.svdvals(matrix_of(layer).double())
        r = choose_rank(s, rank, energy)
        before = sum(p.numel() for p in layer.parameters())
        after = factorized_params(layer, r)
        kept = float((s[:r] ** 2).sum() / (s ** 2).sum().clamp_min(1e-300))
        smaller = after < before
        if smaller:
            _set_submodule(model, name, factorize(layer, rank=r))
        reports.append(LayerReport(name, r if smaller else len(s), len(s), before, after if smaller else before,
                                   kept if smaller else 1.0, smaller))
    return model, reports


@dataclass
class LowRankConfig:
    base: str = "mlp"
    """registered name of the network that was factorized"""
    base_config: dict[str, Any] = field(default_factory=dict)
    """its config keys"""
    ranks: dict[str, int] = field(default_factory=dict)
    """module path -> kept rank of each factorized Linear / Conv2d"""
    factorized: int = 0
    """number of factorized layers (must equal the entries of ``ranks``: a check on hand-edited configs)"""

    def __post_init__(self) -> None:
        if any(not isinstance(r, int) or r < 1 for r in self.ranks.values()):
            raise ValueError(f"ranks must be integers >= 1, got {self.ranks}")
        if self.factorized != len(self.ranks):
            raise ValueError(f"factorized is {self.factorized} but ranks lists {len(self.ranks)} layers")


@register("lowrank", family="compress")
class LowRankNet(ArchModel):
    """A registered network whose layers in ``ranks`` are replaced by their rank-``r`` factorizations
    (weights under ``net.``; a factorized layer ``L`` holds ``L.0`` (A) and ``L.1`` (B, with the bias)).

    Shapes: those of the base network."""

    config_class = LowRankConfig

    def __init__(self, config: LowRankConfig) -> None:
        super().__init__(config)
        self.net = create(config.base, **config.base_config)
        for path, r in config.ranks.items():
            try:
                old = self.net.get_submodule(path)
            except AttributeError:
                raise ArchlabError(f"lowrank model: {config.base!r} has no module {path!r}") from None
            _set_submodule(self.net, path, _shell(old, r))

    @classmethod
    def example_input(cls, config: LowRankConfig, batch_size: int = 2) -> torch.Tensor:
        base = get(config.base).cls
        return base.example_input(base.create(**config.base_config).config, batch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def lowrank_net(model: nn.Module, rank: int | None = None, energy: float | None = None,
                skip: tuple[str, ...] = ()) -> tuple[LowRankNet, list[LayerReport]]:
    """A :class:`LowRankNet` holding a factorized copy of the registered ``model`` (left unchanged)."""
    from .. import config as _config

    if not isinstance(model, ArchModel):
        raise ArchlabError(f"low-rank: need a registered archlab model, got {type(model).__name__}")
    base, base_config = model.registry_name, _config.to_dict(model.config)
    prefix, ranks = "", {}
    if isinstance(model, LowRankNet):  # factorize further: keep the same base, add to its ranks
        c = model.config
        base, base_config, ranks, prefix = c.base, dict(c.base_config), dict(c.ranks), "net."
    net = LowRankNet(LowRankConfig(base, base_config, ranks, len(ranks)))
    net.net.load_state_dict({k.removeprefix(prefix): v for k, v in model.state_dict().items()})
    _, reports = factorize_model(net.net, rank, energy, skip)
    net.config.ranks = {**ranks, **{r.name: r.rank for r in reports if r.factorized}}
    net.config.factorized = len(net.config.ranks)
    return net.eval(), reports


# ------------------------------------------------------------------------------ archlab compress --method lowrank
HELP = ("truncated-SVD factorization of every Linear and Conv2d layer (two thinner layers) where it saves "
        "parameters, at a fixed --rank or the smallest rank keeping --energy of each weight's squared norm")


def add_arguments(group: Any) -> None:
    """Options of ``archlab compress --method lowrank``."""
    group.add_argument("--rank", type=int, default=None, help="rank kept in every factorized layer")
    group.add_argument("--energy", type=float, default=None,
                       help="instead of --rank: share of each weight's squared singular values to keep, in (0, 1]")
    group.add_argument("--lowrank-skip", default="", help="comma-separated layer names to leave alone")
    group.add_argument("--lowrank-finetune-epochs", type=float, default=0.0,
                       help="fine-tune the factorized network on the run's training split (default 0)")
    group.add_argument("--lowrank-finetune-lr", type=float, default=1e-4, help="Adam learning rate (1e-4)")


def apply(model: nn.Module, args: Any, ctx: Any) -> Any:
    """Factorize ``model`` as the command's options say; returns a :class:`~archlab.compress.command.Compressed`."""
    from .command import Compressed

    rank, energy = args.rank, args.energy
    if (rank is None) == (energy is None):
        raise ArchlabError("--method lowrank needs exactly one of --rank R and --energy E")
    if rank is not None and rank < 1:
        raise ArchlabError(f"--rank must be >= 1, got {rank}")
    if energy is not None and not 0 < energy <= 1:
        raise ArchlabError(f"--energy must be in (0, 1], got {energy}")
    skip = tuple(s.strip() for s in args.lowrank_skip.split(",") if s.strip())
    net, reports = lowrank_net(model, rank, energy, skip)
    if not any(r.factorized for r in reports):
        raise ArchlabError("low-rank: no layer gets smaller at this rank / energy (factorizing would add parameters)")
    losses = ctx.finetune(net, args.lowrank_finetune_epochs, lr=args.lowrank_finetune_lr)
    settings = {"rank": rank, "energy": energy, "skip": list(skip), "finetune_epochs": args.lowrank_finetune_epochs,
                "finetune_losses": losses,
                "layers": [{"name": r.name, "rank": r.rank, "full_rank": r.full_rank, "params_before": r.params_before,
                            "params_after": r.params_after, "energy_kept": r.energy, "factorized": r.factorized}
                           for r in reports]}
    return Compressed(net.eval(), settings=settings)
