"""QAOA on the engine: one step = one optimizer step on the 2p angles, maximizing the expected cut.

The loss is ``-<C>`` (the optimizer minimizes). Metrics: ``expected_cut`` (``<gamma, beta| C |gamma, beta>``),
``approx_ratio`` (over the maximum cut, found by enumeration) and ``max_cut``. Files: ``angles.csv``
(the trained gammas and betas) and ``plots/cut_distribution.png`` (the probability of each cut size
when the final state is measured).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..engine.loop import register_loop
from ..io import atomic_write_bytes, pyplot
from .variational import VariationalLoop


@register_loop("qaoa")
class QAOA(VariationalLoop):
    """QAOA for MaxCut: maximize the expected cut over the circuit's angles."""

    model_attr = "max_cut"
    model_kind = "QAOA models"
    metrics = ("expected_cut", "approx_ratio", "max_cut")
    monitor = ("expected_cut", "max")

    def objective(self) -> tuple[torch.Tensor, torch.Tensor]:
        cut = self.model()
        return -cut, -cut

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        cut = float(self.model())
        return {"expected_cut": cut, "approx_ratio": cut / self.model.max_cut, "max_cut": float(self.model.max_cut)}

    def write_artifacts(self, run_dir: str | os.PathLike) -> None:
        from ..quantum.qaoa import qaoa_circuit

        m = self.model
        gammas, betas = m.angles.detach()
        rows = ["layer,gamma,beta"]
        for k, (g, b) in enumerate(zip(gammas.tolist(), betas.tolist(), strict=True)):
            rows.append(f"{k + 1},{g:.10f},{b:.10f}")
        atomic_write_bytes(Path(run_dir) / "angles.csv", ("\n".join(rows) + "\n").encode())
        n = m.config.nodes
        probs = qaoa_circuit(n, m.edges, gammas, betas).probs()
        z = torch.arange(2**n)
        cuts = sum(((z >> (n - 1 - i)) ^ (z >> (n - 1 - j))) & 1 for i, j in m.edges)
        per_cut = torch.zeros(len(m.edges) + 1, dtype=torch.float64).index_add_(0, cuts, probs)
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.bar(range(len(per_cut)), per_cut.tolist(), color="tab:blue")
        ax.axvline(m.max_cut, color="tab:red", linestyle=":", label=f"max cut = {m.max_cut}")
        ax.set_xlabel("cut size")
        ax.set_ylabel("probability")
        ax.set_title(f"QAOA p={m.config.p} on {m.config.graph} graph, {n} nodes: <C> = {float(m().detach()):.3f}")
        ax.legend()
        fig.tight_layout()
        (Path(run_dir) / "plots").mkdir(exist_ok=True)
        fig.savefig(Path(run_dir) / "plots" / "cut_distribution.png", dpi=100)
        plt.close(fig)
