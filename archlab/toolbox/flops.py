"""Count the floating-point operations of one forward pass (built on ``torch.utils.flop_counter``).

PyTorch's public :class:`torch.utils.flop_counter.FlopCounterMode` intercepts every aten operator
during a forward pass and counts the matrix products, convolutions and attention kernels:

    linear / matmul   [M, K] @ [K, N]                    -> 2 M K N            FLOPs
    convolution       out [B, C_out, *S], weight [C_out, C_in / g, *k] -> 2 B C_out (C_in / g) prod(S) prod(k)

(the ``C_in / g`` of a grouped or depthwise convolution is the weight's second dimension, so a
depthwise 3x3 costs ``2 B C H W 9``). One multiply-add is two FLOPs, so ``macs = flops / 2``: the unit
the mobile-network papers report ("MAdds", "FLOPS" in EfficientNet's Table 2). Biases, normalisation,
activations, pooling, elementwise gates and residual additions are **not** counted, as in those
papers; they are a few percent of a convolutional network's arithmetic but can dominate its latency
on a CPU (memory traffic), which is why latency is measured separately.

Usage::

    from archlab.toolbox.flops import count_flops
    count = count_flops(model, (1, 1, 28, 28))   # a shape (zeros are fed) or real tensors
    count.macs, count.flops, count.by_operator, count.by_module
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one forward pass: total, by aten operator, and by module (dotted path below the root)."""

    flops: int
    """total floating-point operations (a multiply-add counts 2)"""
    by_operator: dict[str, int] = field(default_factory=dict)
    """FLOPs per aten operator, e.g. ``{"convolution": ..., "addmm": ...}``"""
    by_module: dict[str, int] = field(default_factory=dict)
    """FLOPs per submodule path (``""`` is the whole model) down to the requested depth, each inclusive of its
    children; a container the model iterates instead of calling (no forward of its own) has no entry"""

    @property
    def macs(self) -> int:
        """Multiply-accumulate operations, ``flops / 2`` (the papers' "MAdds")."""
        return self.flops // 2


def _as_input(spec: torch.Tensor | Sequence[int], like: torch.Tensor | None) -> torch.Tensor:
    if isinstance(spec, torch.Tensor):
        return spec
    if not (isinstance(spec, Sequence) and all(isinstance(d, int) and d > 0 for d in spec)):
        raise ValueError(f"an input must be a tensor or a shape of positive ints, got {spec!r}")
    dtype = like.dtype if like is not None and like.is_floating_point() else torch.float32
    return torch.zeros(tuple(spec), dtype=dtype, device=like.device if like is not None else "cpu")


def count_flops(model: nn.Module, *inputs: torch.Tensor | Sequence[int], depth: int = 2) -> FlopCount:
    """FLOPs of ``model(*inputs)`` in eval mode without gradients (the model's mode is restored after).

    Args:
        model: any module.
        inputs: tensors, or shapes (tuples of ints) for which zeros of the model's dtype and device are fed.
        depth: how deep ``by_module`` goes below the root (1: the model's direct children).

    Returns:
        a :class:`FlopCount`; ``.macs`` is half of ``.flops``.
    """
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    like = next(iter(model.parameters()), None)
    args = [_as_input(s, like) for s in inputs]
    counter = FlopCounterMode(display=False)
    # FLOPs per module = the counter's running total after its forward minus before it (inclusive of its
    # children). Our own hooks rather than the counter's module table, which skips some nested containers.
    by_module: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if name.count(".") + 1 > depth and name:
            continue
        start: list[int] = []

        def pre(_m: nn.Module, _a: object, start: list[int] = start) -> None:
            start.append(counter.get_total_flops())

        def post(_m: nn.Module, _a: object, _o: object, name: str = name, start: list[int] = start) -> None:
            by_module[name] = by_module.get(name, 0) + counter.get_total_flops() - start.pop()

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), counter:
            model(*args)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    counts = counter.get_flop_counts().get("Global", {})
    by_operator = {getattr(op, "__name__", str(op)).split(".")[0]: int(n) for op, n in counts.items()}
    return FlopCount(int(counter.get_total_flops()), by_operator, dict(sorted(by_module.items())))
