"""Activation checkpointing: keep only each block's input in the forward pass, recompute the block in
the backward pass (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost").

A model opts in by inheriting :class:`ActivationCheckpointing` and calling its blocks through
:meth:`~ActivationCheckpointing.checkpointed`; ``train.activation_checkpointing = true`` makes the engine
call :func:`enable_activation_checkpointing` on the model of any loop. Memory: a plain forward keeps every
intermediate tensor the backward needs, ``sum_l A_l`` for blocks ``l = 1..L``; checkpointed, it keeps the
``L`` block inputs plus, during the backward of one block, that block's intermediates:
``sum_l |x_l| + max_l A_l``. The price is one extra forward of every block.

The recomputation uses ``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``: the random state
is restored, so dropout draws the same masks and the gradients equal the plain run's. A block's buffers
(BatchNorm's running statistics) are put back after the recomputation, so the second forward does not
update them twice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import ArchlabError


@contextlib.contextmanager
def _buffers_kept(block: Any) -> Iterator[None]:
    """Restore the buffers of ``block`` (running statistics) after the recomputation changed them."""
    buffers = list(block.buffers()) if isinstance(block, nn.Module) else []
    saved = [b.detach().clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, s in zip(buffers, saved, strict=True):
                b.copy_(s)


class ActivationCheckpointing:
    """Mixin of a model whose forward runs its blocks (transformer layers, residual blocks) through
    :meth:`checkpointed`; off until :meth:`set_activation_checkpointing` turns it on."""

    _activation_checkpointing: bool = False

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Recompute the blocks in the backward pass (``True``) or keep their activations (``False``)."""
        self._activation_checkpointing = bool(enabled)

    @property
    def activation_checkpointing(self) -> bool:
        return self._activation_checkpointing

    def checkpointed(self, block: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``block(*args, **kwargs)``, recomputed in the backward pass when checkpointing is on, the model
        is training and gradients are recorded (evaluation and generation run the block plainly)."""
        if self._activation_checkpointing and self.training and torch.is_grad_enabled():  # type: ignore[attr-defined]
            return checkpoint(block, *args, use_reentrant=False,
                              context_fn=lambda: (contextlib.nullcontext(), _buffers_kept(block)), **kwargs)
        return block(*args, **kwargs)


def supporting_models() -> list[str]:
    """Registered models that offer activation checkpointing."""
    from ..registry import entries

    return [e.name for e in entries() if isinstance(e.cls, type) and issubclass(e.cls, ActivationCheckpointing)]


def enable_activation_checkpointing(model: Any) -> None:
    """``train.activation_checkpointing = true``: turn it on, or one line naming the models that can."""
    if not isinstance(model, ActivationCheckpointing):
        name = getattr(model, "registry_name", type(model).__name__)
        raise ArchlabError(f"train.activation_checkpointing: model {name!r} cannot recompute its blocks; models "
                           f"that can: {', '.join(supporting_models())}")
    model.set_activation_checkpointing(True)
