"""Reference FIDs for latent_diffusion_mnist, with the LeNet-5 features and protocol of the diffusion loop:
the stage-1 autoencoder's reconstructions of the first N training images (the bound the first stage puts on
any latent model), and a Gaussian fitted to 10,000 training codes, decoded.

    ARCHLAB_DATA=../shared/datasets python docs/results/generative/latent_diffusion_references.py 500 2000
"""

from __future__ import annotations

import argparse

import torch

import archlab
from archlab.data import load_dataset
from archlab.models.generative.fid import load_feature_network, sample_quality
from archlab.models.generative.images import pixel_range


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("n", type=int, nargs="+", help="sample sizes N")
    p.add_argument("--autoencoder", default="runs/conv_autoencoder_mnist")
    p.add_argument("--classifier", default="runs/fid/mnist_lenet5")
    args = p.parse_args()
    torch.manual_seed(0)
    ae = archlab.load(args.autoencoder).eval()
    data = load_dataset("mnist", {}, 0.05, 0)  # the recipes' split
    lo, hi = pixel_range(data.train.x, "mnist")
    features = load_feature_network(args.classifier)
    train01 = ((data.train.x - lo) / (hi - lo)).clamp(0, 1)
    with torch.no_grad():
        codes = ae.latent(train01[:10000])
        gauss = torch.distributions.MultivariateNormal(codes.mean(0), torch.cov(codes.T))
        for n in args.n:
            rec = sample_quality(features, lo + ae.decode_images(ae.latent(train01[:n])) * (hi - lo),
                                 data.test.x[:n], data.train.x[:n])
            fit = sample_quality(features, lo + ae.decode_images(gauss.sample((n,))) * (hi - lo),
                                 data.test.x[:n], data.train.x[:n])
            print(f"N={n}: reconstructions FID {rec['test_fid']:.1f} IS {rec['test_is']:.2f}; "
                  f"Gaussian fit FID {fit['test_fid']:.1f} IS {fit['test_is']:.2f}; floor {rec['fid_floor']:.1f}")


if __name__ == "__main__":
    main()
