"""Architecture search models: the DARTS supernet and the networks derived from it."""

from . import darts  # noqa: F401
