"""Sample-quality metrics from a classifier's features: the Fréchet distance (FID, Heusel et al. 2017)
and the Inception score (Salimans et al. 2016), here with archlab's own MNIST classifier in place of
Inception-v3 (whose ImageNet features say little about digits).

    FID(a, b) = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))       Heusel et al. eq. 6
    IS        = exp( E_x KL(p(y | x) || p(y)) ),  p(y) = E_x p(y | x)       Salimans et al. Sec. 4

mu and S are the mean and the (unbiased, N - 1) covariance of the (N, D) feature rows. The trace of
the matrix square root is computed in float64 through a symmetric form: with R = S_a^(1/2) (S_a is
positive semi-definite, eigh), S_a S_b is similar to R S_b R, which is symmetric PSD, so
tr((S_a S_b)^(1/2)) = sum_i sqrt(lambda_i(R S_b R)) with tiny negative eigenvalues (round-off) clipped
to 0. It equals scipy's ``sqrtm`` route (the tests check) without its complex round-off.

Features are the inputs of a trained classifier's last linear layer (LeNet-5: the 84 units of F6),
taken with a forward hook; see :class:`ClassifierFeatures`.
"""

from __future__ import annotations

import math
import os

import torch
from torch import nn


def gaussian_stats(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features, in float64."""
    if feats.dim() != 2 or len(feats) < 2:
        raise ValueError(f"need (N, D) features with N >= 2, got shape {tuple(feats.shape)}")
    x = feats.double()
    mu = x.mean(0)
    centred = x - mu
    return mu, centred.T @ centred / (len(x) - 1)


def trace_sqrt_product(sigma_a: torch.Tensor, sigma_b: torch.Tensor) -> float:
    """tr((S_a S_b)^(1/2)) for symmetric PSD S_a, S_b (float64)."""
    vals, vecs = torch.linalg.eigh(sigma_a.double())
    root_a = vecs @ torch.diag(vals.clamp_min(0).sqrt()) @ vecs.T
    inner = root_a @ sigma_b.double() @ root_a
    inner = (inner + inner.T) / 2
    return float(torch.linalg.eigvalsh(inner).clamp_min(0).sqrt().sum())


def frechet_from_stats(mu_a: torch.Tensor, sigma_a: torch.Tensor, mu_b: torch.Tensor, sigma_b: torch.Tensor) -> float:
    """The Fréchet distance between N(mu_a, S_a) and N(mu_b, S_b)."""
    diff = (mu_a.double() - mu_b.double()).pow(2).sum()
    return float(diff + sigma_a.double().trace() + sigma_b.double().trace()) - 2 * trace_sqrt_product(sigma_a, sigma_b)


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """FID between two (N, D) feature sets (the Gaussians fitted to each)."""
    if feats_a.shape[1:] != feats_b.shape[1:]:
        raise ValueError(f"feature sizes differ: {tuple(feats_a.shape)} vs {tuple(feats_b.shape)}")
    return frechet_from_stats(*gaussian_stats(feats_a), *gaussian_stats(feats_b))


def inception_score(logits: torch.Tensor) -> float:
    """exp(E_x KL(p(y|x) || p(y))) of (N, classes) classifier logits: 1 (all alike) .. classes (confident, even)."""
    log_p = torch.log_softmax(logits.double(), dim=1)
    log_marginal = torch.logsumexp(log_p, dim=0) - math.log(len(log_p))
    return float(torch.exp((log_p.exp() * (log_p - log_marginal)).sum(1).mean()))


class ClassifierFeatures:
    """A trained classifier as a feature network: ``(features, logits) = net(x)``, where the features are
    the input of its last ``nn.Linear`` (the penultimate layer)."""

    def __init__(self, classifier: nn.Module) -> None:
        linears = [m for m in classifier.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(f"{type(classifier).__name__} has no linear layer to take features from")
        self.classifier = classifier.eval()
        self._captured: list[torch.Tensor] = []
        linears[-1].register_forward_hook(lambda _m, inputs, _out: self._captured.append(inputs[0].detach()))

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, batch: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
        feats, logits = [], []
        for i in range(0, len(x), batch):
            self._captured.clear()
            logits.append(self.classifier(x[i:i + batch]).float())
            feats.append(self._captured[-1].flatten(1).float())
        return torch.cat(feats), torch.cat(logits)


def load_feature_network(directory: str) -> ClassifierFeatures:
    """The classifier saved in ``directory`` (an ``archlab train`` run of an image classifier, e.g.
    ``recipes/classic/mnist_lenet5.toml``) as a feature network; a one-line error when it is missing."""
    from ...errors import ArchlabError
    from ...registry import load

    path = os.path.expanduser(directory)
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ArchlabError(f"loop.fid_classifier: no saved classifier in {directory}; train one with "
                           f"`archlab train recipes/classic/mnist_lenet5.toml --out {directory}`")
    return ClassifierFeatures(load(path))


@torch.no_grad()
def sample_quality(features: ClassifierFeatures, fake: torch.Tensor, test: torch.Tensor,
                   train: torch.Tensor) -> dict[str, float]:
    """``test_fid`` FID(generated, test), ``test_is`` (generated) and ``fid_floor`` FID(train, test): the
    value a perfect generator would get with as many samples. All images in the classifier's input scale."""
    n = min(len(fake), len(test), len(train))
    fake_f, fake_logits = features(fake[:n])
    test_f, _ = features(test[:n])
    train_f, _ = features(train[:n])
    return {"test_fid": frechet_distance(fake_f, test_f), "test_is": inception_score(fake_logits),
            "fid_floor": frechet_distance(train_f, test_f)}


@torch.no_grad()
def class_accuracy(features: ClassifierFeatures, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """How a conditional model's samples look to the classifier: ``test_class_acc`` (mean over classes of the
    accuracy on the samples generated for that class), ``test_class_acc_min`` and ``test_class_acc_K`` per class."""
    hit = (features(images)[1].argmax(1).cpu() == labels.cpu()).double()
    per_class = [float(hit[labels == k].mean()) for k in range(int(labels.max()) + 1) if (labels == k).any()]
    return {"test_class_acc": sum(per_class) / len(per_class), "test_class_acc_min": min(per_class),
            **{f"test_class_acc_{k}": a for k, a in enumerate(per_class)}}
