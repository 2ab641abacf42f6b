"""Generative models. Importing this package registers them."""

from . import (  # noqa: F401
    aae,
    autoencoder,
    cgan,
    cond_ddpm,
    conv_autoencoder,
    cyclegan,
    dcgan,
    ddpm,
    gated_pixelcnn,
    latent_diffusion,
    pixelcnn,
    progan,
    score,
    stylegan,
    toy_gan,
    vae,
    vqvae,
    wae,
)
