"""Sanity checks for a new model: are its gradients right, and can it fit anything at all?

- :func:`gradient_check` compares the analytical gradients (backward) with central finite
  differences, ``(f(x + eps e_i) - f(x - eps e_i)) / (2 eps)``, in float64, for every input and
  every parameter, one tensor at a time so that a failure names the tensor at fault.
- :func:`overfit_one_batch` trains a copy of a classifier on a single batch. Any model with enough
  capacity and correct plumbing drives the loss towards zero and the accuracy to 1; failing to is
  the cheapest sign of a bug (a detached tensor, a wrong reshape, a dead activation).

Neither touches the model it is given: both work on a deep copy.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


def gradient_check(
    module_or_fn: nn.Module | Callable[..., Any], *inputs: Any, eps: float = 1e-6, atol: float = 1e-5
) -> bool:
    """Check the gradients of ``module_or_fn(*inputs)`` against finite differences in float64.

    Every floating-point input tensor, and every parameter of a module that requires grad, is
    checked with :func:`torch.autograd.gradcheck`. The check runs on a float64 deep copy of the
    module, in the mode (train/eval) it is in: put a module with dropout in ``eval()`` first, since a
    random function has no stable finite differences.

    Args:
        module_or_fn: an ``nn.Module`` or a function of tensors returning a tensor (or a tuple of them).
        *inputs: the arguments to call it with; non-floating tensors and other values pass unchanged.
        eps: finite-difference step.
        atol: absolute tolerance (the relative tolerance is gradcheck's default, 1e-3).

    Returns:
        ``True`` when every gradient matches.

    Raises:
        AssertionError: naming the first input or parameter whose gradient does not match.
    """
    module = copy.deepcopy(module_or_fn).double() if isinstance(module_or_fn, nn.Module) else None
    args = [
        x.detach().clone().double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x
        for x in inputs
    ]
    params = {}
    if module is not None:
        params = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}

    def call(call_args: list[Any], overrides: dict[str, torch.Tensor]) -> Any:
        if module is None:
            return module_or_fn(*call_args)
        return functional_call(module, overrides, tuple(call_args), strict=False)

    targets: list[tuple[str, Callable[[torch.Tensor], Any], torch.Tensor]] = []
    for i, x in enumerate(args):
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            targets.append((f"input {i}", lambda t, i=i: call([*args[:i], t, *args[i + 1 :]], {}), x))
    for name, p in params.items():
        targets.append((f"parameter {name!r}", lambda t, name=name: call(args, {name: t}), p))
    if not targets:
        raise ValueError("nothing to check: no floating-point inputs and no parameters that require grad")

    for label, fn, value in targets:
        value.requires_grad_()
        if not torch.autograd.gradcheck(fn, (value,), eps=eps, atol=atol, raise_exception=False):
            raise AssertionError(f"gradient check failed for {label}: backward != finite differences")
    return True


def overfit_one_batch(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 200, lr: float = 1e-2
) -> dict[str, float]:
    """Train a deep copy of classifier ``model`` on one batch ``(x, y)`` with Adam and cross-entropy.

    Args:
        model: maps ``x`` to logits ``[B, K]``.
        x: the input batch.
        y: integer class labels ``[B]``.
        steps: Adam steps on the same batch.
        lr: Adam learning rate.

    Returns:
        ``initial_loss`` (before training) and, after training, in eval mode, ``loss`` and ``acc``
        (the fraction of the batch classified correctly).
    """
    model = copy.deepcopy(model)

    @torch.no_grad()
    def evaluate() -> tuple[float, float]:
        model.eval()  # dropout off and BatchNorm on its running statistics: how the model is used
        logits = model(x)
        model.train()
        return F.cross_entropy(logits, y).item(), (logits.argmax(-1) == y).float().mean().item()

    initial_loss, _ = evaluate()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    loss, acc = evaluate()
    return {"initial_loss": initial_loss, "loss": loss, "acc": acc}
