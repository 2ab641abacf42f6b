"""Magnitude pruning: unstructured masks (layer-wise or global) and structured L1-norm channel pruning.

**Unstructured** (Han et al. 2015, "Learning both Weights and Connections for Efficient Neural
Networks"). The prunable tensors are the weights ``W_l`` of every ``Linear`` and ``Conv`` layer
(biases and norms stay dense; they are < 1% of the parameters of the models here). A mask
``M_l in {0, 1}^{shape(W_l)}`` keeps the largest magnitudes:

    layer-wise, sparsity s:   M_l[i] = 1  iff  |W_l[i]| is not among the round(s * n_l) smallest of |W_l|
    global,     sparsity s:   M_l[i] = 1  iff  |W_l[i]| is not among the round(s * sum_l n_l) smallest of
                              all |W| pooled over layers

and the network computes with ``W_l * M_l``. Weights already masked count as the smallest, so a
mask only ever loses entries (iterative pruning). This is what ``torch.nn.utils.prune``'s
``l1_unstructured`` / ``global_unstructured`` compute for one shot (``tests/compress`` checks the
masks are equal).

Masks persist through training (:meth:`Masks.attach`): a gradient hook multiplies ``dL/dW`` by ``M``
(so the optimizer's moments of pruned entries stay 0) and an optimizer post-step hook re-applies
``W <- W * M`` (weight decay and momentum cannot revive a pruned weight): pruned weights are exactly 0
after every step.

**Structured** (Li et al. 2017, "Pruning Filters for Efficient ConvNets"): the output channel ``c``
of a conv (or unit ``c`` of a linear layer) is ranked by the L1 norm of its filter,
``||W[c, ...]||_1``; the smallest ``round(s * C)`` channels are *removed*: rows of the layer's weight
and bias, the channel of a BatchNorm after it, and the matching input columns of the next layer.
The result is a physically smaller network (:class:`PrunedNet`), equal in output to the masked one.

Which layers are prunable (:func:`structured_plan`) is found from the traced data flow
(``torch.fx``): a ``Conv``/``Linear`` layer P is prunable when its output reaches exactly one other
``Conv``/``Linear`` layer C, and only through per-channel operations (BatchNorm, elementwise
activations, dropout, pooling, flatten). The classifier head is never pruned; a layer whose output
is added to a residual shortcut (ResNet's ``conv2``, the stem) or feeds a norm that mixes channels
(GroupNorm, LayerNorm) is not prunable: in a ResNet basic block only ``conv1`` (its inner channels)
is pruned. MLPs: every hidden layer; LeNet-5: C1, C3, C5, F6; cnn2d / cnn1d: every conv and the hidden
linear layer; resnet20: the first conv of every block.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ArchlabError
from ..models.base import ArchModel
from ..registry import create, get, register

Scope = Literal["layer", "global"]
CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
WEIGHTED = (nn.Linear, *CONV)


# ------------------------------------------------------------------------------ unstructured masks


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """``{module_name.weight: W}`` of every Linear and Conv layer, in registration order."""
    return {f"{name}.weight": m.weight for name, m in model.named_modules() if isinstance(m, WEIGHTED)}


def _k(sparsity: float, n: int) -> int:
    """Entries to prune: ``round(s * n)``, as ``torch.nn.utils.prune`` counts a float amount."""
    return round(sparsity * n)


def magnitude_masks(weights: dict[str, torch.Tensor], sparsity: float | dict[str, float], scope: Scope = "layer",
                    masks: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Boolean masks keeping the largest ``|W|`` (module docstring); ``sparsity`` is the fraction of
    entries to be zero when done (of each layer for ``"layer"`` -- a float, or one per weight name --
    or of all of them pooled for ``"global"``). Entries masked in ``masks`` count as the smallest."""
    if scope not in ("layer", "global"):
        raise ArchlabError(f"pruning scope must be 'layer' or 'global', got {scope!r}")
    scores = {}
    for name, w in weights.items():
        s = w.detach().abs().float()
        if masks is not None and name in masks:
            s = torch.where(masks[name], s, torch.full_like(s, -1.0))  # already pruned: always among the smallest
        scores[name] = s
    if scope == "global":
        if isinstance(sparsity, dict):
            raise ArchlabError("global pruning takes one sparsity for all layers")
        _check_sparsity(sparsity)
        flat = torch.cat([s.flatten() for s in scores.values()])
        keep = torch.ones_like(flat, dtype=torch.bool)
        k = _k(sparsity, flat.numel())
        if k:
            keep[torch.topk(flat, k, largest=False).indices] = False
        out, i = {}, 0
        for name, s in scores.items():
            out[name] = keep[i:i + s.numel()].view_as(s)
            i += s.numel()
        return out
    out = {}
    for name, s in scores.items():
        rate = sparsity[name] if isinstance(sparsity, dict) else sparsity
        _check_sparsity(rate)
        keep = torch.ones(s.numel(), dtype=torch.bool, device=s.device)
        k = _k(rate, s.numel())
        if k:
            keep[torch.topk(s.flatten(), k, largest=False).indices] = False
        out[name] = keep.view_as(s)
    return out


def _check_sparsity(s: float) -> None:
    if not 0.0 <= s < 1.0:
        raise ArchlabError(f"sparsity must be in [0, 1), got {s}")


class Masks:
    """Pruning masks of a model's weights (``{param_name: bool tensor}``), kept in force while training."""

    def __init__(self, masks: dict[str, torch.Tensor]) -> None:
        self.masks = masks
        self._handles: list[Any] = []

    @classmethod
    def dense(cls, model: nn.Module) -> Masks:
        return cls({n: torch.ones_like(w, dtype=torch.bool) for n, w in prunable_weights(model).items()})

    @torch.no_grad()
    def apply(self, model: nn.Module) -> None:
        """``W <- W * M`` for every masked weight."""
        params = dict(model.named_parameters())
        for name, m in self.masks.items():
            params[name].mul_(m.to(params[name].dtype))

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Apply the masks now and keep them: gradients of pruned entries are zeroed by a hook, and after
        every ``optimizer.step()`` the masks are applied again (weight decay cannot revive a weight)."""
        self.detach()
        self.apply(model)
        params = dict(model.named_parameters())
        for name, m in self.masks.items():
            mask = m.to(params[name].dtype)
            self._handles.append(params[name].register_hook(lambda g, mask=mask: g * mask))
        if optimizer is not None:
            self._handles.append(optimizer.register_step_post_hook(lambda *_: self.apply(model)))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.masks)

    def remaining(self) -> float:
        """Fraction of the masked weights that are kept."""
        total = sum(m.numel() for m in self.masks.values())
        return sum(int(m.sum()) for m in self.masks.values()) / max(total, 1)


def prune_magnitude(model: nn.Module, sparsity: float, scope: Scope = "layer",
                    masks: Masks | None = None) -> Masks:
    """Prune ``model``'s Linear/Conv weights in place to ``sparsity`` (layer-wise or global); returns the masks."""
    weights = prunable_weights(model)
    new = Masks(magnitude_masks(weights, sparsity, scope, None if masks is None else masks.masks))
    new.apply(model)
    return new


@dataclass
class Sparsity:
    """What a (pruned) model holds: nonzero weights of its Linear/Conv layers and nonzero parameters."""

    weights: int
    weights_nonzero: int
    params: int
    params_nonzero: int
    per_layer: dict[str, float] = field(default_factory=dict)
    """Fraction of each layer's weights that are nonzero."""

    @property
    def weights_remaining(self) -> float:
        return self.weights_nonzero / max(self.weights, 1)

    @property
    def params_remaining(self) -> float:
        return self.params_nonzero / max(self.params, 1)


@torch.no_grad()
def sparsity_report(model: nn.Module) -> Sparsity:
    """Count zeros (exact) in the weights of every Linear/Conv layer and in all parameters."""
    per_layer, w_total, w_nz = {}, 0, 0
    for name, w in prunable_weights(model).items():
        nz = int(torch.count_nonzero(w))
        per_layer[name] = nz / w.numel()
        w_total += w.numel()
        w_nz += nz
    params = list(model.parameters())
    return Sparsity(w_total, w_nz, sum(p.numel() for p in params), sum(int(torch.count_nonzero(p)) for p in params),
                    per_layer)


# ---------------------------------------------------------------------------- structured pruning


# Operations that act on every channel separately (and keep the channel axis where it was).
_PER_CHANNEL_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU,
                        nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Hardswish, nn.Mish, nn.Softplus, nn.Identity,
                        nn.Dropout, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d,
                        nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_PER_CHANNEL_FUNCTIONS = (F.relu, F.gelu, F.silu, F.tanh, torch.relu, torch.tanh, torch.sigmoid, F.dropout,
                          F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class Group:
    """One prunable layer: ``producer``'s output channels, the norms on the way, the layer consuming them.

    ``columns`` is how many input columns of ``consumer`` one channel feeds: 1 for a conv or a linear
    layer after a linear layer, ``H * W`` for a linear layer after ``flatten`` of ``[C, H, W]`` maps."""

    producer: str
    norms: list[str]
    consumer: str
    columns: int


def _fx_module_target(node: Any, modules: dict[str, nn.Module]) -> nn.Module | None:
    return modules.get(node.target) if node.op == "call_module" else None


def structured_plan(model: nn.Module) -> list[Group]:
    """The prunable layers of ``model`` (rule in the module docstring), found from its ``torch.fx`` trace."""
    import torch.fx

    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:  # fx raises many types for untraceable Python control flow
        raise ArchlabError(f"structured pruning cannot trace {type(model).__name__} with torch.fx: "
                           f"{str(exc).splitlines()[0][:160]}") from None
    modules = dict(model.named_modules())
    groups = []
    for node in graph.nodes:
        producer = _fx_module_target(node, modules)
        if not isinstance(producer, WEIGHTED) or getattr(producer, "groups", 1) != 1:
            continue
        norms, cur, flattened = [], node, False
        while True:
            users = list(cur.users)
            if len(users) != 1:
                break
            nxt = users[0]
            mod = _fx_module_target(nxt, modules)
            if isinstance(mod, WEIGHTED):
                if getattr(mod, "groups", 1) == 1 and (not flattened or isinstance(mod, nn.Linear)):
                    out = producer.out_features if isinstance(producer, nn.Linear) else producer.out_channels
                    width = mod.in_features if isinstance(mod, nn.Linear) else mod.in_channels
                    if width % out == 0 and (flattened or width == out):
                        groups.append(Group(node.target, norms, nxt.target, width // out))
                break
            if isinstance(mod, _NORMS):
                norms.append(nxt.target)
            elif isinstance(mod, nn.Flatten) and mod.start_dim == 1:
                flattened = True
            elif mod is not None and isinstance(mod, _PER_CHANNEL_MODULES):
                pass
            elif nxt.op == "call_function" and nxt.target in _PER_CHANNEL_FUNCTIONS:
                pass
            elif nxt.op == "call_function" and nxt.target is torch.flatten \
                    and (nxt.args[1] if len(nxt.args) > 1 else nxt.kwargs.get("start_dim", 0)) == 1:
                flattened = True
            elif nxt.op == "call_method" and nxt.target == "flatten" and nxt.args[1:] == (1,):
                flattened = True
            elif nxt.op == "call_method" and nxt.target in ("relu", "tanh", "sigmoid"):
                pass
            else:  # add (residual), cat, view, GroupNorm/LayerNorm, the output ...: channels are tied elsewhere
                break
            cur = nxt
    return groups


def _ranked_keep(weight: torch.Tensor, amount: float) -> torch.Tensor:
    """Indices (sorted) of the output channels to keep: all but the ``round(amount * C)`` smallest L1 norms
    (at least one channel stays)."""
    norms = weight.detach().abs().flatten(1).sum(1)
    c = norms.numel()
    drop = min(_k(amount, c), c - 1)
    order = torch.argsort(norms, descending=True, stable=True)
    return order[: c - drop].sort().values


def channel_keep(model: nn.Module, amount: float, plan: list[Group] | None = None) -> dict[str, torch.Tensor]:
    """``{producer: kept channel indices}`` for every prunable layer, pruning ``amount`` of its channels by L1 norm."""
    _check_sparsity(amount)
    modules = dict(model.named_modules())
    return {g.producer: _ranked_keep(modules[g.producer].weight, amount) for g in (plan or structured_plan(model))}


@torch.no_grad()
def channel_masks(model: nn.Module, keep: dict[str, torch.Tensor], plan: list[Group]) -> None:
    """Zero, in place, the removed channels: the producer's rows (weight and bias) and the norms' scale and
    shift. The masked model then computes what the physically smaller one does."""
    modules = dict(model.named_modules())
    for g in plan:
        p = modules[g.producer]
        mask = torch.zeros(p.weight.shape[0], dtype=torch.bool, device=p.weight.device)
        mask[keep[g.producer]] = True
        p.weight[~mask] = 0
        if p.bias is not None:
            p.bias[~mask] = 0
        for n in g.norms:
            norm = modules[n]
            if norm.affine:
                norm.weight[~mask] = 0
                norm.bias[~mask] = 0
            # A zero channel through BN gives (0 - mean) / std * 0 + 0 = 0 only with affine; without affine
            # the running mean would leak through, so it is zeroed with the scale set to match.
            elif norm.running_mean is not None:
                norm.running_mean[~mask] = 0


def _resized(module: nn.Module, shape: list[int]) -> nn.Module:
    """A fresh module of ``module``'s type and settings with the weight shape ``[out, in]`` (norms: ``[n]``)."""
    if isinstance(module, _NORMS):
        return type(module)(shape[0], eps=module.eps, momentum=module.momentum, affine=module.affine,
                            track_running_stats=module.track_running_stats)
    if isinstance(module, nn.Linear):
        return nn.Linear(shape[1], shape[0], bias=module.bias is not None)
    if isinstance(module, CONV):
        return type(module)(shape[1], shape[0], module.kernel_size, stride=module.stride, padding=module.padding,
                            dilation=module.dilation, groups=module.groups, bias=module.bias is not None,
                            padding_mode=module.padding_mode)
    raise ArchlabError(f"cannot resize a {type(module).__name__}")


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


@dataclass
class PrunedConfig:
    base: str = "mlp"
    """registered name of the network that was pruned"""
    base_config: dict[str, Any] = field(default_factory=dict)
    """its config keys"""
    shapes: dict[str, list[int]] = field(default_factory=dict)
    """module path -> new weight shape: [out, in] for Linear/Conv layers, [features] for BatchNorm"""
    channels_removed: int = 0
    """output channels / units removed over all pruned layers (checked against ``shapes`` when built)"""

    def __post_init__(self) -> None:
        if self.channels_removed < 0:
            raise ValueError(f"channels_removed must be >= 0, got {self.channels_removed}")


@register("pruned", family="compress")
class PrunedNet(ArchModel):
    """A registered network with some layers made narrower by structured pruning (weights under ``net.``).

    Built as ``base`` from ``base_config``, then every module named in ``shapes`` is replaced by one of
    the same type with the new width. ``archlab.load`` reads it back like any model.

    Shapes: those of the base network (the input and the logits are unchanged).
    """

    config_class = PrunedConfig

    def __init__(self, config: PrunedConfig) -> None:
        super().__init__(config)
        self.net = create(config.base, **config.base_config)
        removed = 0
        for path, shape in config.shapes.items():
            try:
                old = self.net.get_submodule(path)
            except AttributeError:
                raise ArchlabError(f"pruned model: {config.base!r} has no module {path!r}") from None
            if isinstance(old, WEIGHTED):
                removed += old.weight.shape[0] - shape[0]
            _set_submodule(self.net, path, _resized(old, list(shape)))
        if removed != config.channels_removed:
            raise ArchlabError(f"pruned model: shapes remove {removed} channels, config says {config.channels_removed}")

    @classmethod
    def example_input(cls, config: PrunedConfig, batch_size: int = 2) -> torch.Tensor:
        base = get(config.base).cls
        return base.example_input(base.create(**config.base_config).config, batch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _base(model: nn.Module) -> tuple[str, dict[str, Any], dict[str, list[int]], int, nn.Module]:
    """(base name, base config, shapes so far, channels removed so far, network) of a model or a PrunedNet."""
    from .. import config as _config

    if isinstance(model, PrunedNet):
        c = model.config
        return c.base, dict(c.base_config), dict(c.shapes), c.channels_removed, model.net
    if not isinstance(model, ArchModel):
        raise ArchlabError(f"structured pruning needs a registered archlab model, got {type(model).__name__}")
    return model.registry_name, _config.to_dict(model.config), {}, 0, model


@torch.no_grad()
def prune_channels(model: nn.Module, amount: float, plan: list[Group] | None = None) -> PrunedNet:
    """A physically smaller copy of ``model``: ``amount`` of the output channels of every prunable layer
    (:func:`structured_plan`) removed by L1 norm, the BatchNorms and next layers sliced to match."""
    name, base_config, shapes, removed, net = _base(model)
    plan = structured_plan(net) if plan is None else plan
    if not plan:
        raise ArchlabError(f"{name}: no layer can be pruned structurally (every layer feeds a residual sum, "
                           "a channel-mixing norm or the output)")
    keep = channel_keep(net, amount, plan)
    modules = dict(net.named_modules())
    new_state = {k: v.clone() for k, v in net.state_dict().items()}
    consumers: dict[str, tuple[torch.Tensor, int]] = {}
    for g in plan:
        idx = keep[g.producer]
        p = modules[g.producer]
        removed += p.weight.shape[0] - len(idx)
        for key in ("weight", "bias"):
            if getattr(p, key, None) is not None:
                new_state[f"{g.producer}.{key}"] = new_state[f"{g.producer}.{key}"][idx]
        for n in g.norms:
            for key in ("weight", "bias", "running_mean", "running_var"):
                if f"{n}.{key}" in new_state:
                    new_state[f"{n}.{key}"] = new_state[f"{n}.{key}"][idx]
            shapes[n] = [len(idx)]
        # A flattened [C, H, W] map feeds columns c*HW .. (c+1)*HW - 1 of the next linear layer.
        cols = (idx[:, None] * g.columns + torch.arange(g.columns)).flatten()
        consumers[g.consumer] = (cols, g.columns)
    for g in plan:
        w = new_state[f"{g.producer}.weight"]
        shapes[g.producer] = [w.shape[0], w.shape[1]]
    for consumer, (cols, _) in consumers.items():
        w = new_state[f"{consumer}.weight"][:, cols]
        new_state[f"{consumer}.weight"] = w
        shapes[consumer] = [w.shape[0], w.shape[1]]
    out = PrunedNet(PrunedConfig(name, base_config, shapes, removed))
    out.net.load_state_dict(new_state)
    return out.to(next(net.parameters()).device).train(model.training)


# ------------------------------------------------------------------- `archlab compress --method prune`

HELP = ("magnitude pruning: unstructured masks (layer-wise or global; zeros stay zeros while fine-tuning) or, with "
        "--structured, L1-norm channel removal giving a smaller, faster network")


def add_arguments(group: Any) -> None:
    """Options of ``archlab compress --method prune``."""
    group.add_argument("--sparsity", type=float, default=0.5,
                       help="fraction of the weights (unstructured) or of each prunable layer's channels "
                            "(--structured) to remove (default 0.5)")
    group.add_argument("--structured", action="store_true",
                       help="remove whole channels / units by L1 norm (the network gets physically smaller)")
    group.add_argument("--scope", choices=["layer", "global"], default="layer",
                       help="unstructured: the same sparsity in every layer, or one threshold over all (default layer)")
    group.add_argument("--finetune-epochs", type=float, default=0.0,
                       help="fine-tune the pruned network on the run's training split for this many epochs (default 0)")
    group.add_argument("--finetune-lr", type=float, default=1e-4, help="Adam learning rate of the fine-tuning (1e-4)")


def apply(model: nn.Module, args: Any, ctx: Any) -> Any:
    """Prune ``model`` as the command's options say; returns a :class:`~archlab.compress.command.Compressed`."""
    from .command import Compressed

    if not 0.0 < args.sparsity < 1.0:
        raise ArchlabError(f"--sparsity must be in (0, 1), got {args.sparsity}")
    if args.finetune_epochs < 0 or not 0 < args.finetune_lr < 1:
        raise ArchlabError("--finetune-epochs must be >= 0 and --finetune-lr in (0, 1)")
    settings: dict[str, Any] = {"sparsity": args.sparsity, "structured": args.structured,
                                "finetune_epochs": args.finetune_epochs, "finetune_lr": args.finetune_lr}
    if args.structured:
        small = prune_channels(model, args.sparsity)
        ctx.finetune(small, args.finetune_epochs, args.finetune_lr)
        settings["layers"] = {k: v for k, v in small.config.shapes.items()}
        return Compressed(small.eval(), settings=settings)
    settings["scope"] = args.scope
    masks = prune_magnitude(model, args.sparsity, args.scope)
    ctx.finetune(model, args.finetune_epochs, args.finetune_lr, setup=lambda opt: masks.attach(model, opt))
    masks.detach()
    report = sparsity_report(model)
    settings["weights_remaining"] = report.weights_remaining
    settings["per_layer_remaining"] = report.per_layer
    return Compressed(model.eval(), nonzero=report.params_nonzero, settings=settings)
