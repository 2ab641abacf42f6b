"""Model families. Importing this package registers every model."""

from . import classic  # noqa: F401
