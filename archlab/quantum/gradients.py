"""Gradients of ``<psi(theta)| O |psi(theta)>`` without backpropagating through the simulation.

Both methods below are wrapped in one ``torch.autograd.Function``: the forward pass simulates without
building a graph, the backward pass returns ``d<O>/d theta_j`` for every recorded angle, and autograd
chains it into whatever computed the angles (a classical network, a shared parameter ...). Backprop
through the simulation (``diff_method="backprop"``) gives the same numbers; tests check all three agree.

**Parameter-shift** (Mitarai et al. 2018; Schuld et al. 2019, "Evaluating analytic gradients on quantum
hardware"). For ``U(theta) = exp(-i theta G)`` whose generator has the eigenvalues +-1/2 (or 0, -1),
the expectation is a sinusoid of frequency 1 in theta and its derivative is exact from two circuits::

    d<O>/d theta = ( <O>(theta + pi/2) - <O>(theta - pi/2) ) / 2

Controlled rotations and the double excitation have generator eigenvalues {-1/2, 0, +1/2}: two
frequencies (1/2 and 1), four circuits (Anderson et al. 2022; Wierichs et al. 2022, Eq. 33)::

    d<O>/d theta = c+ (f(theta + pi/2) - f(theta - pi/2)) - c- (f(theta + 3pi/2) - f(theta - 3pi/2)),
    c+- = (sqrt2 +- 1) / (4 sqrt2)

Cost: 2 or 4 simulations per angle; it is what a quantum computer can do (only expectation values).

**Adjoint** (Jones & Gacon 2020, "Efficient calculation of gradients in classical simulations of
variational quantum algorithms", Algorithm 1). With ``|psi> = U_N ... U_1 |0>`` and ``|lam> = O |psi>``,
walk the circuit backwards, un-applying one gate at a time from both states::

    for i = N .. 1:
        |psi> <- U_i^dagger |psi>                    (now the state before gate i)
        d<O>/d theta_i = 2 Re <lam| dU_i |psi>,     dU_i = -i G_i U_i
        |lam> <- U_i^dagger |lam>

Cost: about three simulations in total and two states of memory, whatever the number of angles.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ArchlabError
from . import gates
from .observables import PauliSum, apply_observable, expectation
from .statevector import apply_matrix

if TYPE_CHECKING:
    from .circuit import Circuit

_C_PLUS = (math.sqrt(2) + 1) / (4 * math.sqrt(2))
_C_MINUS = (math.sqrt(2) - 1) / (4 * math.sqrt(2))


def _batched_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``<a|b>`` per batch element of two (B, 2, ..., 2) states (either may have B = 1)."""
    prod = a.conj() * b
    return prod.reshape(prod.shape[0], -1).sum(-1)


def parameter_shift(circuit: Circuit, obs: PauliSum, wanted: list[int]) -> dict[int, torch.Tensor]:
    """``d<O>/d theta_i`` (shape (B,)) for each op index ``i`` in ``wanted``, from shifted circuits."""
    base = [op.theta for op in circuit.ops]

    def shifted(i: int, shift: float) -> torch.Tensor:
        thetas = list(base)
        thetas[i] = base[i] + shift
        return expectation(circuit.simulate(thetas), obs)

    out = {}
    for i in wanted:
        h = math.pi / 2
        if gates.PARAMETERIZED[circuit.ops[i].name] == 2:
            out[i] = (shifted(i, h) - shifted(i, -h)) / 2
        else:
            out[i] = (_C_PLUS * (shifted(i, h) - shifted(i, -h))
                      - _C_MINUS * (shifted(i, 3 * h) - shifted(i, -3 * h)))
    return out


def adjoint(circuit: Circuit, obs: PauliSum, wanted: list[int]) -> dict[int, torch.Tensor]:
    """``d<O>/d theta_i`` (shape (B,)) for each op index ``i`` in ``wanted``, by one backward sweep."""
    psi = circuit.simulate()
    lam = apply_observable(psi, obs)
    want = set(wanted)
    out = {}
    for i in range(len(circuit.ops) - 1, -1, -1):
        op = circuit.ops[i]
        u = circuit.op_matrix(op)
        u_dag = u.conj().transpose(-1, -2)
        psi = apply_matrix(psi, u_dag, op.wires)
        if i in want:
            du = -1j * gates.generator(op.name, circuit.dtype, circuit.device) @ u
            out[i] = 2 * _batched_dot(lam, apply_matrix(psi, du, op.wires)).real
        lam = apply_matrix(lam, u_dag, op.wires)
    return out


class _Expval(torch.autograd.Function):
    """Forward: ``<O>`` (B,) with no graph; backward: the chosen method's gradient for every angle."""

    @staticmethod
    def forward(ctx: Any, circuit: Circuit, obs: PauliSum, method: str, *thetas: torch.Tensor) -> torch.Tensor:
        ctx.circuit, ctx.obs, ctx.method = circuit, obs, method
        ctx.shapes = [t.shape for t in thetas]
        return expectation(circuit.simulate(), obs)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        circuit = ctx.circuit
        param_ops = [i for i, op in enumerate(circuit.ops) if op.theta is not None]
        wanted = [i for i, need in zip(param_ops, ctx.needs_input_grad[3:], strict=True) if need]
        with torch.no_grad():
            derivs = (parameter_shift if ctx.method == "parameter-shift" else adjoint)(circuit, ctx.obs, wanted)
        grads: list[torch.Tensor | None] = []
        for i, shape in zip(param_ops, ctx.shapes, strict=True):
            if i not in derivs:
                grads.append(None)
                continue
            g = grad_out * derivs[i]  # (B,)
            grads.append(g.sum() if len(shape) == 0 else g.expand(shape))
        return (None, None, None, *grads)


def expval_with_gradient(circuit: Circuit, obs: PauliSum, method: str) -> torch.Tensor:
    """``<O>`` as a (B,) tensor whose gradient comes from ``method`` ("parameter-shift" or "adjoint")."""
    for op in circuit.ops:
        if op.fixed is not None and op.fixed.requires_grad:
            raise ArchlabError(f"diff_method={method!r} differentiates gate angles only; a unitary(matrix) "
                               "that requires grad needs diff_method='backprop'")
    thetas = [op.theta for op in circuit.ops if op.theta is not None]
    return _Expval.apply(circuit, obs, method, *thetas)
