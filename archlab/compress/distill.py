"""Knowledge distillation (Hinton, Vinyals & Dean 2015) and hint training (FitNets, Romero et al. 2015).

**Soft targets.** A teacher with logits ``v`` and a student with logits ``z`` are both softened by a
temperature ``T``:

    q_i = exp(v_i / T) / sum_j exp(v_j / T)        (teacher, the soft targets)
    p_i = exp(z_i / T) / sum_j exp(z_j / T)        (student at the same temperature)

and the student minimises a weighted average of the soft and the hard objective:

    L = alpha * T^2 * KL(q || p) + (1 - alpha) * CE(y, softmax(z))

``KL(q || p) = sum_i q_i (log q_i - log p_i)`` differs from the soft cross-entropy ``-sum_i q_i log p_i``
by the teacher's entropy only, a constant for the student, so both have the gradient of Hinton et al.
eq. (2): ``dKL/dz_i = (p_i - q_i) / T``. The soft gradient therefore shrinks as ``1/T^2`` when ``T``
grows (at high temperature ``p_i - q_i ~ (z_i - v_i) / (N T)`` for zero-mean logits over ``N``
classes); multiplying by ``T^2`` keeps the soft term's share of the gradient unchanged when ``T`` is
tuned (Hinton et al. §2, last paragraph). Both terms are means over the batch.

**Hints (FitNets).** A hidden layer of the teacher, the *hint* ``u_h(x)``, guides a hidden layer of the
student, the *guided* layer ``v_g(x)``, through a regressor ``r`` that maps the guided layer to the
hint's shape (Romero et al. 2015, eq. (3)):

    L_HT = 1/2 || u_h(x) - r(v_g(x); W_r) ||^2          (summed over features, mean over the batch)

``r`` is a fully connected layer for vector features and a convolution for feature maps, with kernel
``(H_g - H_h + 1) x (W_g - W_h + 1)`` so that the spatial sizes match without padding (§2.2); an
optional ReLU gives it the hint's nonlinearity. FitNets trains in two stages (Algorithm 1): first the
student up to the guided layer and ``W_r`` on ``L_HT``, then the whole student with the KD loss.

Shapes:
    student_logits, teacher_logits: ``[B, N]``; labels: ``[B]`` (int64);
    hint ``[B, D_h]`` or ``[B, C_h, H_h, W_h]``; guided ``[B, D_g]`` or ``[B, C_g, H_g, W_g]``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


def soft_targets(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``softmax(logits / T)`` over the last dimension."""
    return F.softmax(logits / temperature, dim=-1)


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(q || p)`` per the module docstring: mean over the batch of the KL divergence between
    the teacher's and the student's distributions at temperature ``T``, scaled by ``T^2``."""
    t = temperature
    log_p = F.log_softmax(student_logits / t, dim=-1)
    log_q = F.log_softmax(teacher_logits / t, dim=-1)
    kl = (log_q.exp() * (log_q - log_p)).sum(-1)
    return kl.mean() * t * t


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      temperature: float, alpha: float) -> torch.Tensor:
    """Hinton et al.'s objective ``alpha * T^2 * KL(q || p) + (1 - alpha) * CE(y, softmax(z))``.

    ``alpha = 1``: soft targets only; ``alpha = 0``: ordinary cross-entropy (the teacher is ignored).
    The teacher's logits are detached: no gradient flows into the teacher."""
    soft = soft_kl(student_logits, teacher_logits.detach(), temperature)
    if alpha == 1.0:
        return soft
    hard = F.cross_entropy(student_logits, labels)
    return alpha * soft + (1.0 - alpha) * hard


def hint_loss(hint: torch.Tensor, regressed: torch.Tensor) -> torch.Tensor:
    """FitNets' ``1/2 ||u_h - r(v_g)||^2``: squared error summed over features, mean over the batch."""
    if hint.shape != regressed.shape:
        raise ValueError(f"hint {tuple(hint.shape)} and regressed guided layer {tuple(regressed.shape)} differ")
    return 0.5 * (hint.detach() - regressed).pow(2).flatten(1).sum(1).mean()


class HintRegressor(nn.Module):
    """``r(v_g; W_r)``: maps the student's guided layer to the teacher's hint shape.

    Vector features ``[B, D_g] -> [B, D_h]``: one linear layer. Feature maps ``[B, C_g, H_g, W_g] ->
    [B, C_h, H_h, W_h]``: one convolution with kernel ``(H_g - H_h + 1, W_g - W_h + 1)``, no padding
    (FitNets §2.2; the guided map must not be smaller than the hint). ``activation="relu"`` follows it
    with a ReLU, for hints taken after a ReLU."""

    def __init__(self, guided_shape: tuple[int, ...], hint_shape: tuple[int, ...], activation: str = "none") -> None:
        super().__init__()
        if len(guided_shape) != len(hint_shape) or len(guided_shape) not in (1, 3):
            raise ValueError(f"hint {hint_shape} and guided layer {guided_shape} must both be vectors [D] or "
                             f"feature maps [C, H, W] (shapes without the batch)")
        if len(guided_shape) == 1:
            self.map: nn.Module = nn.Linear(guided_shape[0], hint_shape[0])
        else:
            kh, kw = guided_shape[1] - hint_shape[1] + 1, guided_shape[2] - hint_shape[2] + 1
            if kh < 1 or kw < 1:
                raise ValueError(f"the guided feature map {guided_shape[1:]} is smaller than the hint {hint_shape[1:]}")
            self.map = nn.Conv2d(guided_shape[0], hint_shape[0], (kh, kw))
        self.act = nn.ReLU() if activation == "relu" else nn.Identity()

    def forward(self, guided: torch.Tensor) -> torch.Tensor:
        return self.act(self.map(guided))


@contextmanager
def capture(model: nn.Module, name: str) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, ``out["features"]`` holds the output of ``model``'s submodule ``name`` (dotted
    path, as in ``named_modules()``) from the latest forward pass."""
    try:
        module = model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        raise ValueError(f"no layer {name!r}; layers: {', '.join(names[:30])}") from None
    out: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        out["features"] = output

    handle = module.register_forward_hook(hook)
    try:
        yield out
    finally:
        handle.remove()
