"""What every attribution method shares: the method registry, target selection, baselines, layers.

An attribution method answers "how much did each input feature contribute to output ``target``
of ``model`` at ``inputs``?". Every method here is a function

    method(model, inputs, target, **options) -> attributions      # same shape as ``inputs``

(layer methods such as Grad-CAM return the shape of the chosen layer's output instead). ``model`` is
any ``nn.Module`` mapping ``[B, ...]`` to ``[B, C]`` scores (or ``[B]`` for a scalar output, with
``target=None``). Keyword names follow Captum's where the concept is the same (``baselines``,
``n_steps``, ``layer``, ``sliding_window_shapes``, ``strides``, ``n_samples``).

Shapes:
    inputs: ``[B, *F]``; target: ``None`` | ``int`` | ``[B]`` class indices; baselines: ``None`` (zeros)
    | a number | a tensor broadcastable to ``[B, *F]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..errors import ArchlabError

Target = int | Sequence[int] | torch.Tensor | None
Method = Callable[..., torch.Tensor]

METHODS: dict[str, Method] = {}


def register_method(name: str) -> Callable[[Method], Method]:
    """Decorator: make ``fn`` available as ``archlab.explain.attribute(..., method=name)``."""

    def add(fn: Method) -> Method:
        if name in METHODS:
            raise ValueError(f"attribution method {name!r} is registered twice")
        METHODS[name] = fn
        return fn

    return add


def select(output: torch.Tensor, target: Target) -> torch.Tensor:
    """The score each example's attribution explains: ``output[b, target[b]]``, shape ``[B]``.

    A model with one score per example (output ``[B]`` or ``[B, 1]``) needs no target.
    """
    if output.dim() == 1 or (output.dim() == 2 and output.shape[1] == 1 and target is None):
        return output.reshape(output.shape[0])
    if target is None:
        raise ArchlabError(f"the model returns {output.shape[1]} scores per example: pass target= (a class index "
                           "or one per example)")
    if output.dim() != 2:
        raise ArchlabError(f"attribution needs model outputs of shape [B, C], got {tuple(output.shape)}")
    idx = torch.as_tensor(target, device=output.device, dtype=torch.long).reshape(-1)
    if idx.numel() == 1:
        idx = idx.expand(output.shape[0])
    if idx.numel() != output.shape[0]:
        raise ArchlabError(f"target has {idx.numel()} entries for a batch of {output.shape[0]}")
    if idx.min() < 0 or idx.max() >= output.shape[1]:
        raise ArchlabError(f"target must be in [0, {output.shape[1] - 1}], got {idx.tolist()}")
    return output.gather(1, idx[:, None]).squeeze(1)


def repeat_target(target: Target, times: int, interleave: bool = False) -> Target:
    """The target of a batch repeated ``times`` times: ``x.repeat(times, ...)`` (blocks of the whole batch)
    or, with ``interleave``, ``x.repeat_interleave(times, 0)`` (each example's copies next to each other)."""
    if target is None:
        return None
    idx = torch.as_tensor(target, dtype=torch.long).reshape(-1)
    if idx.numel() == 1:
        return int(idx)
    return idx.repeat_interleave(times) if interleave else idx.repeat(times)


def score(model: nn.Module, x: torch.Tensor, target: Target) -> torch.Tensor:
    """``select(model(x), target)``: one score per example, ``[B]``."""
    return select(model(x), target)


def gradient(model: nn.Module, x: torch.Tensor, target: Target) -> torch.Tensor:
    """``d score_b / d x_b`` for every example (examples do not interact in eval mode), shape of ``x``."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(score(model, x, target).sum(), x)
    return grad


def baseline_like(inputs: torch.Tensor, baselines: float | torch.Tensor | None) -> torch.Tensor:
    """The reference input: zeros by default, a number everywhere, or a tensor broadcast to ``inputs``."""
    if baselines is None:
        return torch.zeros_like(inputs)
    if isinstance(baselines, int | float):
        return torch.full_like(inputs, float(baselines))
    b = torch.as_tensor(baselines, dtype=inputs.dtype, device=inputs.device)
    try:
        return torch.broadcast_to(b, inputs.shape).clone()
    except RuntimeError:
        raise ArchlabError(f"baselines of shape {tuple(b.shape)} do not broadcast to inputs "
                           f"of shape {tuple(inputs.shape)}") from None


def check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ArchlabError(f"{name} must be a positive integer, got {value!r}")


def leaf_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Modules without children, with their dotted names."""
    for name, m in model.named_modules():
        if not any(True for _ in m.children()):
            yield name, m


def find_layer(model: nn.Module, layer: str | nn.Module | None, inputs: torch.Tensor | None = None) -> nn.Module:
    """``layer`` as a module: the module itself, its dotted name in ``model``, or (``None``) the default.

    The default is the last convolution whose output still has more than one spatial position for
    ``inputs`` (Selvaraju et al. 2017, Sec. 3: the last feature map with a spatial layout; LeNet-5's C5
    is 1x1, so its C3 is chosen) -- or, when that convolution opens a ``Sequential`` block (conv, norm,
    activation), the block's rectified output. A registered model may name its own with a
    ``default_explain_layer`` attribute.
    """
    if isinstance(layer, nn.Module):
        return layer
    if layer is None:
        layer = getattr(model, "default_explain_layer", None)
    modules = dict(model.named_modules())
    if layer is None:
        convs = {m: n for n, m in modules.items() if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d)}
        if not convs:
            raise ArchlabError("this model has no convolution: pass layer= (a module or its dotted name)")
        layer = list(convs.values())[-1]
        if inputs is not None:
            sizes: dict[str, int] = {}

            def size(m: nn.Module, _args: object, out: torch.Tensor) -> None:
                sizes[convs[m]] = out.shape[2:].numel()

            with forward_hooks(list(convs), size), torch.no_grad():
                model(inputs[:1])
            spatial = [n for n in convs.values() if sizes.get(n, 0) > 1]
            layer = spatial[-1] if spatial else layer
        # A conv block (Sequential(conv, norm, activation)): its rectified output, as the paper uses.
        parent = layer.rpartition(".")[0]
        if parent and isinstance(modules[parent], nn.Sequential) and modules[parent][0] is modules[layer]:
            layer = parent
    if layer not in modules:
        raise ArchlabError(f"model has no layer {layer!r}; layers: {', '.join(n for n in modules if n)}")
    return modules[layer]


@contextmanager
def forward_hooks(modules: Sequence[nn.Module], hook: Callable[..., Any]) -> Iterator[None]:
    """Attach ``hook`` as a forward hook to each module for the duration of the block."""
    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Explain the model as it predicts: eval mode (no dropout, BatchNorm running statistics), restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
