"""The macro search space: a chain of layers, each choosing its operation, width, kernel and skip
connection (Zoph & Le 2017, Sec. 3.3: per layer filter width/height, number of filters and the
"anchor points" of skip connections), as a categorical space for random search and regularized
evolution (:mod:`archlab.search.categorical`). Decoded genotypes are ``macro_chain`` networks
(:mod:`archlab.models.search.macro_chain`).

**Encoding.** ``num_layers`` layers, four positions each::

    (op_i, width_i, kernel_i, skip_i)   op in OPS, width in widths, kernel in kernels, skip in 0 .. i + 1

so ``choices = (4, |widths|, |kernels|, 2, 4, |widths|, |kernels|, 3, ...)``. ``skip_i = s >= 1`` adds the state
``s`` back (1: the layer's own input, a residual; ``i + 1``: the stem). An ``identity`` layer is absent: its
other three positions carry no meaning and must be 0 (one encoding per chain), and at least one layer is
not ``identity``. :meth:`MacroSpace.contains` checks exactly this, so :func:`~archlab.search.categorical.sample`
is uniform over the valid encodings and a mutation of a chain is a chain.

``num_params(g)`` is the parameter count of the decoded network in closed form (stem ``3 C_in c0 + 2 c0``;
per layer: the convolution -- ``k c_in c`` (conv, dil_conv) or ``k c_in + c_in c`` (sep_conv) -- plus BN
``2 c`` plus ``c_src c`` for a 1x1 projection where a skip's source width differs; the head ``c_L K + K``), for
parameter-aware search without building the model.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ArchlabError
from ..models.search.macro_chain import OPS
from .categorical import Genotype

#: positions per layer: op, width, kernel, skip
FIELDS = 4


@dataclass(frozen=True)
class MacroSpace:
    """Chains of ``num_layers`` layers over ``widths`` x ``kernels``, for a ``macro_chain`` network with
    ``in_channels`` inputs, ``num_classes`` outputs and a ``stem_channels``-wide stem."""

    num_layers: int = 4
    widths: tuple[int, ...] = (8, 16, 32, 64)
    kernels: tuple[int, ...] = (3, 5, 7)
    stem_channels: int = 16
    in_channels: int = 1
    num_classes: int = 10

    def __post_init__(self) -> None:
        if self.num_layers < 1 or not self.widths or not self.kernels:
            raise ArchlabError("macro space: need num_layers >= 1 and at least one width and one kernel")
        if any(w < 1 for w in self.widths) or any(k < 1 or k % 2 == 0 for k in self.kernels):
            raise ArchlabError(f"macro space: widths must be >= 1 and kernels odd, got {self.widths}, {self.kernels}")

    @property
    def choices(self) -> tuple[int, ...]:
        out: list[int] = []
        for i in range(self.num_layers):
            out += [len(OPS), len(self.widths), len(self.kernels), i + 2]
        return tuple(out)

    def contains(self, genotype: Genotype) -> bool:
        if len(genotype) != FIELDS * self.num_layers:
            return False
        if any(not 0 <= v < n for v, n in zip(genotype, self.choices, strict=True)):
            return False
        present = False
        for i in range(self.num_layers):
            op, width, kernel, skip = genotype[FIELDS * i:FIELDS * (i + 1)]
            if OPS[op] == "identity":
                if width or kernel or skip:
                    return False
            else:
                present = True
        return present

    def decode(self, genotype: Genotype) -> list[str]:
        """The ``model.layers`` of the ``macro_chain`` network, e.g. ``["conv:32:5:1", "identity"]``."""
        if not self.contains(genotype):
            raise ArchlabError(f"macro space: {tuple(genotype)} is not a chain of this space")
        layers = []
        for i in range(self.num_layers):
            op, width, kernel, skip = genotype[FIELDS * i:FIELDS * (i + 1)]
            layers.append("identity" if OPS[op] == "identity"
                          else f"{OPS[op]}:{self.widths[width]}:{self.kernels[kernel]}:{skip}")
        return layers

    def encode(self, layers: list[str]) -> Genotype:
        """The inverse of :meth:`decode`."""
        g: list[int] = []
        for i, text in enumerate(layers):
            parts = str(text).split(":")
            try:
                if parts == ["identity"]:
                    g += [0, 0, 0, 0]
                else:
                    g += [OPS.index(parts[0]), self.widths.index(int(parts[1])), self.kernels.index(int(parts[2])),
                          int(parts[3])]
            except (ValueError, IndexError):
                raise ArchlabError(f"macro space: layers[{i}] = {text!r} is not in this space") from None
        if not self.contains(tuple(g)):
            raise ArchlabError(f"macro space: {layers} is not a chain of this space")
        return tuple(g)

    def model_config(self, genotype: Genotype) -> dict:
        """``model`` keys of a recipe (or ``archlab.create("macro_chain", **keys)``) for ``genotype``."""
        return {"in_channels": self.in_channels, "num_classes": self.num_classes,
                "stem_channels": self.stem_channels, "layers": self.decode(genotype)}

    def num_params(self, genotype: Genotype) -> int:
        """Parameters of the decoded network (closed form, see the module docstring)."""
        c0 = self.stem_channels
        total = 3 * self.in_channels * c0 + 2 * c0
        widths = [c0]
        for text in self.decode(genotype):
            parts = text.split(":")
            if parts[0] == "identity":
                widths.append(widths[-1])
                continue
            c_in, (c, k, s) = widths[-1], map(int, parts[1:])
            total += (k * c_in + c_in * c) if parts[0] == "sep_conv" else k * c_in * c
            total += 2 * c
            if s and widths[len(widths) - s] != c:
                total += widths[len(widths) - s] * c
            widths.append(c)
        return total + widths[-1] * self.num_classes + self.num_classes


__all__ = ["MacroSpace"]
