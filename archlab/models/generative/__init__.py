"""Generative models. Importing this package registers them."""

from . import autoencoder, dcgan, ddpm, toy_gan, vae  # noqa: F401
