"""Model families. Importing this package registers every model."""

from . import classic, graph, transformers  # noqa: F401
