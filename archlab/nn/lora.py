"""LoRA: low-rank adaptation of frozen linear layers (Hu et al. 2021, LoRA: Low-Rank Adaptation of Large
Language Models).

A pretrained weight ``W_0`` ``[out, in]`` stays frozen; the update is a trainable product of rank ``r``:

    h = W_0 x + b + (alpha / r) * B A Dropout(x),      A: [r, in],  B: [out, r]        (Hu et al. eq. 3)

``A`` starts random and ``B`` at zero, so ``BA = 0`` and training starts from the pretrained function
(§4.1). ``init="kaiming"`` draws ``A`` as ``nn.Linear`` does (Kaiming-uniform with ``a = sqrt(5)``:
``U(-1/sqrt(in), 1/sqrt(in))``, peft's default); ``init="gaussian"`` draws ``A ~ N(0, 1/r^2)`` (peft's
``init_lora_weights="gaussian"``; the paper says "random Gaussian"). The scale ``alpha / r`` lets one
learning rate serve several ranks (§4.1). Only ``A`` and ``B`` train: ``r (in + out)`` parameters per
adapted layer instead of ``in * out``.

For inference the update folds into the weight, ``W = W_0 + (alpha / r) B A`` (:meth:`LoRALinear.merge`;
no extra latency), and can be taken out again (:meth:`LoRALinear.unmerge`). :func:`merge_lora` replaces
every adapted layer by a plain ``nn.Linear`` holding the merged weight (peft's ``merge_and_unload``), so
the model is again the architecture it was before :func:`inject_lora`, with the same state-dict keys.

:class:`LoRALinear` *is* an ``nn.Linear`` (it keeps ``weight`` and ``bias`` under their names and adds
``lora_A`` / ``lora_B``), so a pretrained state dict loads into an adapted model unchanged, and
:func:`inject_lora` works on any model by module name -- GPT's ``attn.qkv`` / ``attn.out`` / ``ffn.fc1``,
BERT's the same -- without the model knowing about adapters. Code that reads ``layer.weight`` directly
instead of calling the layer (GPT's fast decoding step) sees ``W_0`` only: merge before generating.

Shapes:
    x: ``[..., in]`` -> ``[..., out]``
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

LoRAInit = Literal["kaiming", "gaussian"]


@dataclass
class LoRAConfig:
    """Which layers get adapters, and their rank, scale, dropout and initialization."""

    rank: int = 8
    """rank r of the update B A"""
    alpha: float = 8.0
    """scale numerator: the update is multiplied by alpha / r"""
    dropout: float = 0.0
    """dropout on the adapter's input (the frozen path sees x unchanged)"""
    targets: list[str] = field(default_factory=lambda: ["attn.qkv", "attn.out"])
    """module names to adapt: a Linear whose name equals a target or ends with "." + target"""
    init: LoRAInit = "kaiming"
    """A's initialization (B is always zero): kaiming (peft's default) or gaussian N(0, 1/r^2)"""

    def __post_init__(self) -> None:
        if not 1 <= self.rank <= 65536:
            raise ValueError(f"rank must be in [1, 65536], got {self.rank}")
        if not 0 < self.alpha <= 1e6 or not 0 <= self.dropout < 1:
            raise ValueError(f"need 0 < alpha <= 1e6 and 0 <= dropout < 1, got {self.alpha}, {self.dropout}")
        if not self.targets or any(not t for t in self.targets):
            raise ValueError("targets must name at least one module")


class LoRALinear(nn.Linear):
    """A frozen ``nn.Linear`` plus the trainable low-rank update ``(alpha / r) B A`` (module docstring)."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, dropout: float = 0.0,
                 init: LoRAInit = "kaiming", bias: bool = True, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.rank, self.alpha = rank, alpha
        self.scaling = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, in_features, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, device=device, dtype=dtype))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.reset_lora(init)

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int, alpha: float, dropout: float = 0.0,
                    init: LoRAInit = "kaiming") -> LoRALinear:
        """Adapter around ``linear``'s own weight and bias tensors (shared, not copied; frozen)."""
        w = linear.weight
        new = cls(linear.in_features, linear.out_features, rank, alpha, dropout, init="kaiming",
                  bias=linear.bias is not None, device="meta", dtype=w.dtype)
        new.weight = w
        new.bias = linear.bias
        new.lora_A = nn.Parameter(torch.empty(rank, linear.in_features, device=w.device, dtype=w.dtype))
        new.lora_B = nn.Parameter(torch.zeros(linear.out_features, rank, device=w.device, dtype=w.dtype))
        new.weight.requires_grad_(False)
        if new.bias is not None:
            new.bias.requires_grad_(False)
        new.reset_lora(init)
        return new

    @torch.no_grad()
    def reset_lora(self, init: LoRAInit = "kaiming") -> None:
        """A random (``init``), B = 0: the adapted layer starts as the frozen one."""
        if init == "kaiming":
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        elif init == "gaussian":
            nn.init.normal_(self.lora_A, std=1.0 / self.rank)
        else:
            raise ValueError(f"init must be 'kaiming' or 'gaussian', got {init!r}")
        nn.init.zeros_(self.lora_B)

    def delta_weight(self) -> torch.Tensor:
        """``(alpha / r) B A``, ``[out, in]``."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        if self.merged:
            return out
        return out + F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the weight (``W_0 + (alpha/r) B A``); the forward pass then skips the adapter."""
        if not self.merged:
            self.weight.add_(self.delta_weight().to(self.weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update out of the weight again (``W_0`` up to float rounding)."""
        if self.merged:
            self.weight.sub_(self.delta_weight().to(self.weight.dtype))
            self.merged = False

    @torch.no_grad()
    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` with the merged weight (and the bias), trainable again."""
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        w = self.weight.detach().clone()
        if not self.merged:
            w += self.delta_weight().to(w.dtype)
        out.weight = nn.Parameter(w)
        if self.bias is not None:
            out.bias = nn.Parameter(self.bias.detach().clone())
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha}, merged={self.merged}"


def _matches(name: str, targets: list[str]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def inject_lora(model: nn.Module, cfg: LoRAConfig) -> list[str]:
    """Replace every ``nn.Linear`` of ``model`` named by ``cfg.targets`` with a :class:`LoRALinear` around
    its weights, in place, and freeze everything but the adapters. Returns the adapted module names.

    Raises ``ValueError`` naming the Linear layers when no target matches."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and not isinstance(m, LoRALinear)]
    chosen = [(n, m) for n, m in linears if _matches(n, cfg.targets)]
    if not chosen:
        names = ", ".join(n for n, _ in linears[:12])
        raise ValueError(f"no Linear layer matches targets {cfg.targets}; Linear layers: {names}")
    for name, linear in chosen:
        _set_submodule(model, name, LoRALinear.from_linear(linear, cfg.rank, cfg.alpha, cfg.dropout, cfg.init))
    mark_only_lora_trainable(model)
    return [n for n, _ in chosen]


def mark_only_lora_trainable(model: nn.Module) -> None:
    """``requires_grad`` on the adapters' ``lora_A`` / ``lora_B`` only."""
    for name, p in model.named_parameters():
        p.requires_grad_(name.rpartition(".")[2] in ("lora_A", "lora_B"))


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def set_merged(model: nn.Module, merged: bool) -> None:
    """Merge (True) or unmerge (False) every adapter of ``model`` in place, keeping the adapters."""
    for layer in lora_layers(model).values():
        layer.merge() if merged else layer.unmerge()


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every :class:`LoRALinear` by a plain ``nn.Linear`` with the merged weight, in place; every
    parameter is trainable again. The model has its pre-injection architecture and state-dict keys."""
    for name, layer in lora_layers(model).items():
        _set_submodule(model, name, layer.to_linear())
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters alone (``*.lora_A``, ``*.lora_B``): what a LoRA fine-tune adds to its base model."""
    return {k: v for k, v in model.state_dict().items() if k.rpartition(".")[2] in ("lora_A", "lora_B")}


def count_trainable(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters, all parameters)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
