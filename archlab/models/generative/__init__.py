"""Generative models. Importing this package registers them."""

from . import autoencoder, dcgan, ddpm, gated_pixelcnn, pixelcnn, toy_gan, vae  # noqa: F401
