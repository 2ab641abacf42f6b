"""Generative models. Importing this package registers them."""

from . import autoencoder, toy_gan, vae  # noqa: F401
