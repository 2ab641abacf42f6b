"""Generative models. Importing this package registers them."""

from . import autoencoder, cgan, cyclegan, dcgan, ddpm, gated_pixelcnn, pixelcnn, progan, stylegan, toy_gan, vae  # noqa: F401
