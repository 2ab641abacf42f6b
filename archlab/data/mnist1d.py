"""MNIST-1D (Greydanus, 2020): a procedurally generated, MNIST-sized 1D classification benchmark.

Each example is one of ten hand-made 12-point templates of a digit's outline, made harder to classify
by the published sequence of random transformations (github.com/greydanus/mnist1d, ``data.py`` and
``transform.py``)::

    x = template + 1e-8                      # eps: template values are never exactly 0
    x = pad(x, p zeros), p ~ U{36..60}       # random length ...
    x = resample(x, 12 + 60 = 72 points)     # ... so resampling dilates the digit by a random factor
    x = x * (1 + 0.4 (u - 1/2))              # scale
    x = roll(x, k), k ~ U{0..47}             # translate (circular)
    x = x where x != 0, else gaussian_filter(0.25 n1, sigma=2)   # correlated noise fills the padding
    x = x + 0.02 n2                          # iid noise
    x = x - 0.75 (u - 1/2) linspace(-1/2, 1/2, 72)                # shear
    x = resample(x, 40 points)               # subsample

with ``n1, n2 ~ N(0, I)``. Classes are generated in order (``num_samples // 10`` each), the examples
are shuffled, the whole array is standardised to mean 0 and std 1, and the first 80% is the train
set. All randomness comes, in the reference's order, from one ``np.random.RandomState(seed)``, and
the arithmetic follows the reference operation by operation, so the arrays are bit-for-bit equal to
``mnist1d.data.make_dataset(get_dataset_args())``. No scipy: the Gaussian filter and the linear
interpolation are implemented here in numpy.

Tensors: ``x`` float32 (N, 40); ``y`` int64 (N,). Defaults: 4,000 train and 1,000 test examples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .registry import Split, register_dataset

NUM_CLASSES = 10
EPS = 1e-8


@dataclass(frozen=True)
class Mnist1dConfig:
    """Options of the ``mnist1d`` dataset (the reference's ``get_dataset_args``)."""

    num_samples: int = 5000
    """Examples in total (train + test); ``num_samples // 10`` per class."""
    train_split: float = 0.8
    """Fraction of the shuffled examples that form the train set."""
    template_len: int = 12
    """Template length used in the dilation target ``template_len + padding[1]``."""
    padding: tuple[int, int] = (36, 60)
    """Range (inclusive) of the number of zeros appended before dilation."""
    scale_coeff: float = 0.4
    """Amplitude scale factor is ``1 + scale_coeff * (u - 1/2)``."""
    max_translation: int = 48
    """Circular shifts are drawn from 0 .. max_translation - 1 (shifts >= the length do nothing)."""
    corr_noise_scale: float = 0.25
    """Std of the (then smoothed) noise that fills the zero padding."""
    iid_noise_scale: float = 0.02
    """Std of the white noise added everywhere."""
    shear_scale: float = 0.75
    """Linear trend coefficient is ``shear_scale * (u - 1/2)``."""
    final_seq_length: int = 40
    """Length of the returned signals."""
    shuffle_seq: bool = False
    """Apply one fixed random permutation to the time axis (the paper's "shuffled" variant)."""
    seed: int = 42
    """Seed of the np.random.RandomState that draws everything."""

    def __post_init__(self) -> None:
        low, high = self.padding
        if self.num_samples < NUM_CLASSES:
            raise ValueError(f"num_samples must be at least {NUM_CLASSES}")
        if not 0.0 < self.train_split < 1.0:
            raise ValueError("train_split must be in (0, 1)")
        if not 0 <= low <= high:
            raise ValueError("padding must be (low, high) with 0 <= low <= high")
        if self.template_len < 1 or self.max_translation < 1 or self.final_seq_length < 2:
            raise ValueError("template_len and max_translation must be >= 1, final_seq_length >= 2")
        if not 0 <= self.seed < 2**32:
            raise ValueError("seed must be in [0, 2**32)")


def templates() -> np.ndarray:
    """The ten digit templates, (10, 12) float64: whitened, starting at 0, divided by 6."""
    x = np.array(
        [
            [5, 6, 6.5, 6.75, 7, 7, 7, 7, 6.75, 6.5, 6, 5],
            [5, 3, 3, 3.4, 3.8, 4.2, 4.6, 5, 5.4, 5.8, 5, 5],
            [5, 6, 6.5, 6.5, 6, 5.25, 4.75, 4, 3.5, 3.5, 4, 5],
            [5, 6, 6.5, 6.5, 6, 5, 5, 6, 6.5, 6.5, 6, 5],
            [5, 4.4, 3.8, 3.2, 2.6, 2.6, 5, 5, 5, 5, 5, 5],
            [5, 3, 3, 3, 3, 5, 6, 6.5, 6.5, 6, 4.5, 5],
            [5, 4, 3.5, 3.25, 3, 3, 3, 3, 3.25, 3.5, 4, 5],
            [5, 7, 7, 6.6, 6.2, 5.8, 5.4, 5, 4.6, 4.2, 5, 5],
            [5, 4, 3.5, 3.5, 4, 5, 5, 4, 3.5, 3.5, 4, 5],
            [5, 4, 3.5, 3.5, 4, 5, 5, 5, 5, 4.7, 4.3, 5],
        ]
    )
    x -= x.mean(1, keepdims=True)
    x /= x.std(1, keepdims=True)
    x -= x[:, :1]
    return x / 6.0


def resample(values: np.ndarray, n: int) -> np.ndarray:
    """Linear interpolation of each row from an even grid on [0, 1] onto ``n`` even points.

    ``values``: (..., M) -> (..., n). Same arithmetic as ``np.interp`` (which scipy's
    ``interp1d(kind="linear")`` uses for 1-D float data): points on the grid copy the grid value,
    others are ``slope * (q - g_j) + v_j`` with ``slope = (v_{j+1} - v_j) / (g_{j+1} - g_j)``.
    """
    m = values.shape[-1]
    grid, query = np.linspace(0, 1, m), np.linspace(0, 1, n)
    j = np.searchsorted(grid, query, side="right") - 1  # grid[j] <= q < grid[j + 1]
    on_grid = grid[j] == query  # includes q = 1, where j = m - 1 has no right neighbour
    lo = np.minimum(j, m - 2)
    slope = (values[..., lo + 1] - values[..., lo]) / (grid[lo + 1] - grid[lo])
    between = slope * (query - grid[lo]) + values[..., lo]
    return np.where(on_grid, values[..., j], between)


def gaussian_filter1d(values: np.ndarray, sigma: float = 2.0, truncate: float = 4.0) -> np.ndarray:
    """Gaussian smoothing of each row, ``values``: (..., L) -> (..., L), float64.

    Matches ``scipy.ndimage.gaussian_filter1d`` with its default ``mode="reflect"`` (the border is
    mirrored including the edge sample: ``c b a | a b c``): a normalised kernel of radius
    ``int(truncate * sigma + 0.5)``, summed the way scipy sums symmetric kernels -- the centre term,
    then the pairs ``(x[i-k] + x[i+k]) * w_k`` from the outermost ``k`` inwards.
    """
    radius = int(truncate * float(sigma) + 0.5)
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 / (sigma * sigma) * offsets**2)
    weights = weights / weights.sum()
    length = values.shape[-1]
    padded = np.pad(values, [(0, 0)] * (values.ndim - 1) + [(radius, radius)], mode="symmetric")

    def shifted(k: int) -> np.ndarray:  # x[i + k] for every output position i
        return padded[..., radius + k : radius + k + length]

    out = shifted(0) * weights[radius]
    for k in range(radius, 0, -1):
        out = out + (shifted(-k) + shifted(k)) * weights[radius + k]
    return out


def generate(cfg: Mnist1dConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Generate MNIST-1D: ``(x_train, y_train, x_test, y_test)``, x float64 (N, final_seq_length), y int64."""
    rng = np.random.RandomState(cfg.seed)
    per_class = cfg.num_samples // NUM_CLASSES
    n = per_class * NUM_CLASSES
    low, high = cfg.padding
    dilated_len = cfg.template_len + high

    # Draw every random number first, one example at a time in the reference's order (the stream of
    # a RandomState depends on the order of calls); the transformations below are then vectorised.
    pad_u, scale_u, shear_u = np.empty(n), np.empty(n), np.empty(n)
    shifts = np.empty(n, dtype=np.int64)
    corr, iid = np.empty((n, dilated_len)), np.empty((n, dilated_len))
    for i in range(n):
        pad_u[i] = rng.rand()
        scale_u[i] = rng.rand()
        shifts[i] = rng.choice(cfg.max_translation)
        corr[i] = rng.randn(dilated_len)
        iid[i] = rng.randn(dilated_len)
        shear_u[i] = rng.rand()
    order = rng.permutation(n)
    seq_order = rng.permutation(cfg.final_seq_length) if cfg.shuffle_seq else None

    labels = np.repeat(np.arange(NUM_CLASSES), per_class)
    digits = templates()[labels] + EPS

    # Pad with a random number of zeros and dilate back to a common length. Rows that share a pad
    # length share an interpolation grid, so each group is resampled at once.
    pad_len = low + (pad_u * (high - low + 1)).astype(np.int64)
    x = np.empty((n, dilated_len))
    for p in np.unique(pad_len):
        rows = pad_len == p
        x[rows] = resample(np.concatenate([digits[rows], np.zeros((rows.sum(), p))], axis=1), dilated_len)

    x *= (1 + cfg.scale_coeff * (scale_u - 0.5))[:, None]
    # Roll right by k. The reference's concatenate([x[-k:], x[:-k]]) leaves x unchanged when
    # k >= length (possible when max_translation > template_len + padding[1]); so does this.
    shifts = np.where(shifts < dilated_len, shifts, 0)
    positions = np.arange(dilated_len)
    x = np.take_along_axis(x, (positions - shifts[:, None]) % dilated_len, axis=1)
    # The padding (still exactly 0 after interpolation and scaling) gets smooth noise.
    x = np.where(x != 0, x, gaussian_filter1d(cfg.corr_noise_scale * corr, sigma=2))
    x = x + cfg.iid_noise_scale * iid
    x = x - (cfg.shear_scale * (shear_u - 0.5))[:, None] * np.linspace(-0.5, 0.5, dilated_len)
    x = resample(x, cfg.final_seq_length)

    x, y = x[order], labels[order]
    if seq_order is not None:
        x = x[:, seq_order]
    x = (x - x.mean()) / x.std()
    split = int(n * cfg.train_split)
    return x[:split], y[:split], x[split:], y[split:]


@register_dataset("mnist1d", Mnist1dConfig, num_classes=NUM_CLASSES)
def load_mnist1d(cfg: Mnist1dConfig) -> tuple[Split, Split]:
    """Generated train and test splits (x: (N, final_seq_length) float32, y: (N,))."""
    x_train, y_train, x_test, y_test = generate(cfg)

    def split(x: np.ndarray, y: np.ndarray) -> Split:
        return Split(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y))

    return split(x_train, y_train), split(x_test, y_test)
