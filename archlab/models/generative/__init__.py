"""Generative models. Importing this package registers them."""

from . import (  # noqa: F401
    aae,
    autoencoder,
    cgan,
    conv_autoencoder,
    cyclegan,
    dcgan,
    ddpm,
    gated_pixelcnn,
    pixelcnn,
    progan,
    stylegan,
    toy_gan,
    vae,
    vqvae,
    wae,
)
