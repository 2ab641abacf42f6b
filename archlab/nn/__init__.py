"""Building blocks shared by more than one model family."""

from .activation import Activation, activation_layer
from .init import INIT_SCHEMES, InitScheme, init_weights
from .resblock import BasicBlock, Shortcut, SubsamplePad

__all__ = [
    "INIT_SCHEMES",
    "Activation",
    "BasicBlock",
    "InitScheme",
    "Shortcut",
    "SubsamplePad",
    "activation_layer",
    "init_weights",
]
