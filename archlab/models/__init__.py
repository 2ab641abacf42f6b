"""Model families. Importing this package registers every model."""

from . import classic, generative, graph, transformers  # noqa: F401
