"""Lottery tickets: iterative magnitude pruning with rewinding (Frankle & Carbin 2019; Frankle et al. 2020).

Frankle & Carbin's procedure ("The Lottery Ticket Hypothesis", Algorithm / Sec. 2), with ``p`` the
per-round pruning rate of each layer:

    1. initialise f(x; theta_0), train it for j iterations -> theta_j                (round 0, dense)
    2. prune p% of the remaining weights of each layer by |theta_j|  -> mask m
    3. reset the surviving weights to theta_0:  theta <- theta_0 * m                  (the "ticket")
    4. train f(x; theta * m) and repeat 2-4                                          (rounds 1, 2, ...)

After ``r`` rounds a layer pruned at rate ``p_l`` keeps ``(1 - p_l)^r`` of its weights; Frankle & Carbin
prune LeNet-300-100's hidden layers at 20% and its output layer at 10% per round. *Rewinding*
(Frankle et al. 2020, "Linear Mode Connectivity and the Lottery Ticket Hypothesis") resets to
``theta_k``, the weights after ``k`` steps of dense training, instead of ``theta_0`` (needed for deeper
networks). The control is the *random re-initialisation*: the same mask ``m`` on freshly drawn weights
``theta'_0 ~ D_theta``, trained the same way -- Frankle & Carbin's evidence that the initialisation,
not the structure alone, makes the ticket.

The training loop is ``archlab/train/prune.py`` (``loop.mode = "lottery"``); this module holds the
pieces it composes.
"""

from __future__ import annotations

import torch
from torch import nn

from .prune import Masks


def round_sparsity(rates: dict[str, float], rounds: int) -> dict[str, float]:
    """Per-layer sparsity after ``rounds`` rounds of pruning ``rates[name]`` of the remaining weights:
    ``1 - (1 - p_l)^r``."""
    return {name: 1.0 - (1.0 - p) ** rounds for name, p in rates.items()}


def layer_rates(names: list[str], rate: float, output_scale: float = 1.0) -> dict[str, float]:
    """``rate`` for every prunable weight, ``rate * output_scale`` for the last one (the output layer;
    Frankle & Carbin: half the rate)."""
    out = {n: rate for n in names}
    if names:
        out[names[-1]] = rate * output_scale
    return out


@torch.no_grad()
def rewind(model: nn.Module, snapshot: dict[str, torch.Tensor], masks: Masks) -> None:
    """``theta <- theta_k * m``: load every parameter and buffer of ``snapshot`` (theta_0 or theta_k),
    then apply the masks."""
    model.load_state_dict(snapshot)
    masks.apply(model)


@torch.no_grad()
def random_reinit(model: nn.Module, fresh: nn.Module, masks: Masks) -> None:
    """The control: ``theta <- theta'_0 * m`` with ``theta'_0`` the weights of ``fresh``, a newly
    initialised network of the same architecture (drawn from the same distribution as theta_0)."""
    model.load_state_dict(fresh.state_dict())
    masks.apply(model)
