"""Graph neural networks. Importing this package registers every model of the ``graph`` family."""

from . import gcn  # noqa: F401
