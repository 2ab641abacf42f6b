"""Barren plateaus (McClean, Boixo, Smelyanskiy, Babbush & Neven 2018, Nat. Commun. 9, 4812).

For random parameterized circuits deep enough to look like random unitaries, the gradient of any
cost concentrates around 0: ``Var[dE/dtheta]`` shrinks exponentially with the number of qubits, so a
random start of a big enough circuit sits on a plateau where no gradient signal is left.

This reproduces their Fig. 3 setup in miniature: on n qubits, an initial layer RY(pi/4) on every wire, then
``layers`` of (a random choice of RX, RY or RZ with a random angle on every wire, then CZ between neighbours),
the cost ``E = <Z_0 Z_1>``, and the variance over ``samples`` random circuits of ``dE/dtheta`` for the first
angle. Every sample is one element of a batched simulation (its own angles; the random gate choices are
shared within a batch and redrawn per qubit count), and one adjoint sweep gives all the samples' gradients.

    python -m archlab.quantum.barren --qubits 2 4 6 8 10 12 --out docs/results/quantum_barren.png
"""

from __future__ import annotations

import argparse
import math

import torch

from .circuit import Circuit


def gradient_variance(n: int, layers: int, samples: int, seed: int = 0) -> float:
    """Var over random circuits of dE/dtheta_1 for ``E = <Z_0 Z_1>`` (n >= 2)."""
    gen = torch.Generator().manual_seed(seed + 1000 * n)
    axes = torch.randint(3, (layers, n), generator=gen)
    theta = 2 * math.pi * torch.rand(layers, n, samples, generator=gen, dtype=torch.float64)
    first = theta[0, 0].clone().requires_grad_()  # the one angle differentiated
    c = Circuit(n)
    for w in range(n):
        c.ry(math.pi / 4, w)
    for layer in range(layers):
        for w in range(n):
            angle = first if layer == 0 and w == 0 else theta[layer, w]
            getattr(c, ("rx", "ry", "rz")[int(axes[layer, w])])(angle, w)
        for w in range(n - 1):
            c.cz(w, w + 1)
    # adjoint differentiation: a few states of memory however deep the circuit (backprop would keep every one)
    energy = c.expval("ZZ" + "I" * (n - 2), diff_method="adjoint")
    (grad,) = torch.autograd.grad(energy.sum(), first)
    return float(grad.var())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--qubits", type=int, nargs="+", default=[2, 4, 6, 8, 10, 12])
    parser.add_argument("--layers", type=int, default=100)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--out", default="quantum_barren.png")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [(n, gradient_variance(n, args.layers, args.samples)) for n in args.qubits]
    for n, v in rows:
        print(f"qubits={n:3d}  var(dE/dtheta_1)={v:.3e}")
    # slope of log(variance) vs n: the decay rate
    xs, ys = torch.tensor([r[0] for r in rows], dtype=torch.float64), torch.tensor([math.log(r[1]) for r in rows])
    slope = float(((xs - xs.mean()) * (ys - ys.mean())).sum() / ((xs - xs.mean()) ** 2).sum())
    print(f"fit: Var ~ exp({slope:.3f} n) = {math.exp(slope):.3f}^n")
    from ..io import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.semilogy(xs.tolist(), [r[1] for r in rows], "o-", label=f"{args.layers} layers, {args.samples} circuits each")
    fit = [math.exp(float(ys.mean()) + slope * (x - float(xs.mean()))) for x in xs.tolist()]
    ax.semilogy(xs.tolist(), fit, ":", color="grey", label=f"fit: {math.exp(slope):.2f}^n")
    ax.set_xlabel("qubits")
    ax.set_ylabel("Var[dE/dtheta_1]")
    ax.set_title("Barren plateau: gradient variance of random circuits")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
