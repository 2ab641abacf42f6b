"""Model families. Importing this package registers every model."""

from . import classic, graph  # noqa: F401
