"""Model families. Importing this package registers every model."""

from . import classic, generative, graph, quantum, search, ssl, transformers  # noqa: F401
