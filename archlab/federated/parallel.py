"""Fast path: the sampled clients' local SGD run side by side, as one batched computation.

The reference loop (:mod:`archlab.train.rounds` with :class:`~archlab.federated.fedavg.FedAvg`) trains
the m clients of a round one after another: m * E * n_k / B small optimizer steps. When every client
takes the same number of equally sized steps (equal client sizes, e.g. McMahan et al.'s IID split of
MNIST into 100 x 600), the m local trainings are the *same* program on different data, so they run
together with ``torch.func``: the model's parameters get a leading client axis,

    W[k] <- W[k] - eta * grad_W l(W[k]; x[k, s], y[k, s])          for all k at once:  vmap(grad(l))

which turns m * steps Python-level steps into ``steps`` batched ones. Supported: plain SGD on the
clients (no momentum, no weight decay), FedAvg and FedProx (``+ mu/2 ||W - x_t||^2``), models without
BatchNorm or dropout. ``tests/test_federated.py`` checks it equals the reference round by round.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap


def local_sgd_together(model: nn.Module, global_params: dict[str, torch.Tensor],
                       batches: Sequence[Sequence[tuple[torch.Tensor, torch.Tensor]]], lr: float,
                       mu: float = 0.0) -> tuple[dict[str, torch.Tensor], int, float]:
    """Local SGD of ``len(batches)`` clients from ``global_params``, client k stepping through ``batches[k]``
    (all clients the same number of steps, step s the same batch size for all).

    Returns the final parameters stacked over clients ``{name: (m, *shape)}``, the total number of
    steps taken and the summed loss of all steps (as the reference loop counts them).
    """
    buffers = dict(model.named_buffers())

    def loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ce = F.cross_entropy(functional_call(model, (p, buffers), (x,)), y)
        if not mu:
            return ce, ce.detach()
        prox = torch.stack([(p[n] - global_params[n]).pow(2).sum() for n in p]).sum()
        return ce + 0.5 * mu * prox, ce.detach()  # the log shows the data loss, as the reference does

    step = vmap(grad(loss, has_aux=True))
    m = len(batches)
    w = {n: v.detach().unsqueeze(0).expand(m, *v.shape).clone() for n, v in global_params.items()}
    loss_sum = 0.0
    for s in range(len(batches[0])):
        x = torch.stack([b[s][0] for b in batches])
        y = torch.stack([b[s][1] for b in batches])
        grads, losses = step(w, x, y)
        w = {n: w[n] - lr * grads[n] for n in w}
        loss_sum += float(losses.sum())
    return w, m * len(batches[0]), loss_sum
