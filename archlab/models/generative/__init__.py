"""Generative models. Importing this package registers them."""

from . import toy_gan  # noqa: F401
