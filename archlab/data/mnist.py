"""MNIST (LeCun, Cortes & Burges): 70,000 28x28 grey-scale handwritten digits, 10 classes.

The four original IDX files live under ``data_root() / "mnist"``, gzip'd as distributed
(``train-images-idx3-ubyte.gz``) or uncompressed (``train-images-idx3-ubyte``, as many copies are
kept); missing ones are downloaded, gzip'd, from the mirrors and then the official site. Every file is
verified by the sha256 of its *decompressed* content (mirrors and local copies re-compress the files,
so the ``.gz`` bytes differ while the data is identical), which is also the digest of the uncompressed
file. The well-known md5 sums of the decompressed files are kept
next to the sha256 for reference.

Tensors: ``x`` float32 of shape (N, 1, 28, 28), pixel / 255 then normalised with the usual
mean 0.1307 and std 0.3081; ``y`` int64 of shape (N,), in 0..9. 60,000 train and the official 10,000
test examples. License: CC BY-SA 3.0.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ArchlabError
from .download import RemoteFile, data_root, ensure_files
from .registry import Split, register_dataset

MEAN, STD = 0.1307, 0.3081

# Mirrors first: yann.lecun.com (the official source, plain http) has at times answered 403 or
# been unreachable, so it is the last resort.
_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)


def _file(name: str, sha256: str) -> RemoteFile:
    return RemoteFile(name, tuple(base + name for base in _MIRRORS), sha256, gunzip=True)


# sha256 of the decompressed files (md5 of the same bytes in the comment, as published).
TRAIN_IMAGES = _file(
    "train-images-idx3-ubyte.gz", "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"
)  # md5 6bbc9ace898e44ae57da46a324031adb
TRAIN_LABELS = _file(
    "train-labels-idx1-ubyte.gz", "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"
)  # md5 a25bea736e30d166cdddb491f175f624
TEST_IMAGES = _file(
    "t10k-images-idx3-ubyte.gz", "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"
)  # md5 2646ac647ad5339dbf082846283269ea
TEST_LABELS = _file(
    "t10k-labels-idx1-ubyte.gz", "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"
)  # md5 27ae3e4e09519cfbb04c329615203637
FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

# IDX type codes -> big-endian numpy dtypes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode the bytes of an (uncompressed) IDX file into an array of its declared shape.

    Layout: two zero bytes, a type code byte, the number of dimensions ``d``, then ``d`` big-endian
    uint32 sizes, then the values, big-endian, row-major. The total length must match exactly.
    Anything else raises ArchlabError naming ``name``. The result is native-endian and writable.
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ArchlabError(f"{name}: not an IDX file (bad magic number)")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise ArchlabError(f"{name}: unknown IDX type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ArchlabError(f"{name}: IDX header truncated ({len(data)} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise ArchlabError(f"{name}: IDX size mismatch: header {shape} needs {expected} bytes, file has {len(data)}")
    values = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return values.astype(dtype.newbyteorder("="))  # copy: native order, and not tied to ``data``


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file, gzip'd (detected by its magic bytes) or not; see :func:`parse_idx`."""
    path = Path(path)
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise ArchlabError(f"{path}: corrupt gzip data ({exc})") from None
    return parse_idx(data, str(path))


def _read_pair(images_path: Path, labels_path: Path) -> Split:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ArchlabError(
            f"{images_path}: expected uint8 images of shape (N, 28, 28), got {images.dtype} {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1 or len(labels) != len(images):
        raise ArchlabError(f"{labels_path}: expected {len(images)} uint8 labels, got {labels.dtype} {labels.shape}")
    if labels.max(initial=0) > 9:
        raise ArchlabError(f"{labels_path}: labels must be in 0..9, found {labels.max()}")
    x = torch.from_numpy(images).unsqueeze(1).float().div_(255.0).sub_(MEAN).div_(STD)
    return Split(x, torch.from_numpy(labels.astype(np.int64)))


@dataclass(frozen=True)
class MnistConfig:
    """Options of the ``mnist`` dataset."""

    download: bool = True
    """Download missing files; False never touches the network (missing files -> DataUnavailable)."""


def _present_form(file: RemoteFile, folder: Path) -> RemoteFile:
    """``file``, or its uncompressed form when only that is in ``folder``: same data, so the same sha256
    (of the content, not gzip'd); it is never downloaded, so it needs no URLs."""
    plain = file.name.removesuffix(".gz")
    if not (folder / file.name).exists() and (folder / plain).exists():
        return RemoteFile(plain, (), file.sha256)
    return file


@register_dataset("mnist", MnistConfig, num_classes=10)
def load_mnist(cfg: MnistConfig) -> tuple[Split, Split]:
    """The official 60,000 train and 10,000 test examples, verified (x: (N, 1, 28, 28), y: (N,))."""
    folder = data_root() / "mnist"
    files = [_present_form(f, folder) for f in FILES]
    train_x, train_y, test_x, test_y = ensure_files("mnist", files, folder, download=cfg.download)
    return _read_pair(train_x, train_y), _read_pair(test_x, test_y)
