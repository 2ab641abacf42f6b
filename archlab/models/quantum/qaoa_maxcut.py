"""QAOA for MaxCut on one graph (Farhi et al. 2014): the 2p angles are the model's parameters.

The graph is a ring (``graph = "ring"``, Farhi et al.'s worked example: on 4 nodes the best p = 1 expected
cut is 3, p = 2 reaches the maximum 4) or a random d-regular graph (``graph = "regular"``, seeded by
``graph_seed``; Farhi et al.'s p = 1 guarantee on 3-regular graphs is a ratio >= 0.6924).

Angles start on a linear ramp, a discretized annealing path (Zhou et al. 2020, "Quantum approximate
optimization algorithm: performance, mechanism, and implementation on near-term devices", Sec. V),
``gamma_k = (k + 1/2)/p * ramp``, ``beta_k = (1 - (k + 1/2)/p) * ramp``, plus Gaussian noise of
``init_std``.

Shapes: ``forward()`` -> () expected cut at the trained angles; ``forward(offsets)`` with (B, 2p) offsets
(gammas first) -> (B,) expected cuts at the trained angles + offsets (the landscape around them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...quantum.qaoa import max_cut, maxcut_hamiltonian, qaoa_circuit, random_regular_graph, ring_graph
from ...registry import register
from ..base import ArchModel


@dataclass
class QAOAMaxCutConfig:
    nodes: int = 4
    """Nodes of the graph (= qubits)."""
    graph: str = "ring"
    """``ring`` or ``regular`` (random ``degree``-regular graph)."""
    degree: int = 3
    """Degree of a ``regular`` graph."""
    graph_seed: int = 0
    """Seed of the random regular graph."""
    p: int = 1
    """QAOA depth: alternations of the cost and mixer unitaries."""
    ramp: float = 0.75
    """Scale of the linear-ramp initial angles."""
    init_std: float = 0.05
    """Standard deviation of the noise added to the initial angles."""

    def __post_init__(self) -> None:
        if not 2 <= self.nodes <= 20 or not 1 <= self.p <= 50:
            raise ValueError("need 2 <= nodes <= 20 and 1 <= p <= 50")
        if self.graph not in ("ring", "regular"):
            raise ValueError(f"graph must be 'ring' or 'regular', got {self.graph!r}")
        if not 1 <= self.degree < self.nodes or not 0 <= self.graph_seed < 2**32:
            raise ValueError("need 1 <= degree < nodes and 0 <= graph_seed < 2**32")
        if not 0 <= self.ramp <= 10 or not 0 <= self.init_std <= 10:
            raise ValueError("need 0 <= ramp <= 10 and 0 <= init_std <= 10")


@register("qaoa_maxcut", family="quantum")
class QAOAMaxCut(ArchModel):
    """QAOA (Farhi et al. 2014) maximizing the expected cut of a ring or random regular graph."""

    config_class = QAOAMaxCutConfig
    export_blocker = ("statevector simulation in complex128 arithmetic: the ONNX exporter does not translate complex "
                      "tensors")

    def __init__(self, config: QAOAMaxCutConfig) -> None:
        super().__init__(config)
        c = config
        self.edges = (ring_graph(c.nodes) if c.graph == "ring"
                      else random_regular_graph(c.nodes, c.degree, c.graph_seed))
        self.cost = maxcut_hamiltonian(self.edges, c.nodes)
        self.max_cut = max_cut(self.edges, c.nodes)
        frac = (torch.arange(c.p, dtype=torch.float64) + 0.5) / c.p
        ramp = torch.stack([frac * c.ramp, (1 - frac) * c.ramp])  # (2, p): gammas, betas
        self.angles = nn.Parameter(ramp + c.init_std * torch.randn(2, c.p, dtype=torch.float64))

    def forward(self, offsets: torch.Tensor | None = None) -> torch.Tensor:
        if offsets is None:
            gammas, betas = self.angles
        else:  # (B, 2p) -> (2, p, B)
            gammas, betas = self.angles[..., None] + offsets.reshape(-1, 2, self.config.p).permute(1, 2, 0)
        return qaoa_circuit(self.config.nodes, self.edges, gammas, betas).expval(self.cost)

    @classmethod
    def example_input(cls, config: QAOAMaxCutConfig, batch_size: int = 2) -> torch.Tensor:
        return 0.1 * torch.randn(batch_size, 2 * config.p, dtype=torch.float64)
