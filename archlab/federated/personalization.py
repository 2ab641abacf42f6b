"""Personalization: models that fit each client's own data, measured on each client's own held-out data.

Two methods (the loop's ``personalization``):

- ``fedper`` (Arivazhagan et al. 2019, "Federated Learning with Personalization Layers"): the network
  is a shared *body* and a per-client *head* (its last ``head_params`` parameter tensors, e.g. the last
  layer's weight and bias). Clients train both; only the body is averaged by the server, and every
  client keeps its head for the next time it is sampled (:class:`LocalHeads`). A client that has never
  been sampled uses the global model's (initial) head.
- ``finetune`` (local adaptation after FedAvg; e.g. Wang et al. 2019, "Federated Evaluation of On-device
  Personalization"): train FedAvg as usual; to evaluate, every client trains the final global model for
  a few epochs on its own training examples.

Either way the run reports per-client accuracy on each client's held-out examples (a seeded
``local_test_fraction`` of its partition, :func:`split_local`): the mean and the worst client.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def split_local(parts: list[np.ndarray], fraction: float, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Hold out ``round(fraction * n_k)`` of every client's examples (at least one when it has two) for
    its local test; returns (train parts, test parts), sorted index arrays."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for p in parts:
        n_test = min(len(p) - 1, max(1 if len(p) > 1 else 0, round(fraction * len(p))))
        order = rng.permutation(len(p))
        test.append(np.sort(p[order[:n_test]]))
        train.append(np.sort(p[order[n_test:]]))
    return train, test


class LocalHeads:
    """FedPer's per-client heads: the named parameters ``names`` of every client that has trained."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.heads: dict[int, dict[str, torch.Tensor]] = {}

    @torch.no_grad()
    def load(self, client: int, model: nn.Module) -> None:
        """Put client ``client``'s head into ``model`` (no-op for a client without one yet)."""
        if client in self.heads:
            params = dict(model.named_parameters())
            for n, v in self.heads[client].items():
                params[n].copy_(v)

    @torch.no_grad()
    def store(self, client: int, model: nn.Module) -> None:
        if not self.names:  # no personalization layers: nothing to keep
            return
        params = dict(model.named_parameters())
        self.heads[client] = {n: params[n].detach().clone() for n in self.names}

    def state_dict(self) -> dict[int, dict[str, torch.Tensor]]:
        return self.heads

    def load_state_dict(self, state: dict[int, dict[str, torch.Tensor]]) -> None:
        self.heads = {int(k): {n: v.clone() for n, v in d.items()} for k, d in state.items()}
