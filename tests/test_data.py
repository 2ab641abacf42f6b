"""Tests of archlab.data: registry and splits, the three datasets, IDX parsing, downloads, transforms."""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import closed_port_url

from archlab.data import Dataset, Split, data_root, dataset_names, load_dataset, make_transform
from archlab.data import mnist as mnist_module
from archlab.data.download import RemoteFile, ensure_files, fetch, verify_file
from archlab.data.mnist import parse_idx, read_idx
from archlab.data.mnist1d import Mnist1dConfig, gaussian_filter1d, generate, resample
from archlab.data.registry import stratified_indices
from archlab.errors import ArchlabError, DataUnavailable

# ----------------------------------------------------------------------------- helpers


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode ``array`` as an IDX file (written independently of the parser under test)."""
    codes = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}
    code = codes[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_gz(path: Path, data: bytes) -> Path:
    path.write_bytes(gzip.compress(data))
    return path


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def mnist_folder(archlab_data: Path) -> Path:
    """``ARCHLAB_DATA/mnist`` when it holds the four files, else skip (a fixture, so that the check runs
    after conftest has set ARCHLAB_DATA)."""
    folder = data_root() / "mnist"
    if not all((folder / f.name).exists() for f in mnist_module.FILES):
        pytest.skip(f"MNIST files not in {folder}")
    return folder


# ----------------------------------------------------------------------------- registry and splits


def test_dataset_names() -> None:
    assert {"digits", "mnist", "mnist1d"} <= set(dataset_names())
    assert dataset_names() == sorted(dataset_names())


def test_unknown_dataset_names_the_allowed_ones() -> None:
    with pytest.raises(ArchlabError, match="unknown dataset 'cifar'.*digits.*mnist.*mnist1d"):
        load_dataset("cifar")


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("mnist1d", {"sead": 1}, r"unknown key data\.options\.sead.*allowed keys: .*seed"),
        ("mnist1d", {"num_samples": "many"}, r"data\.options\.num_samples"),
        ("mnist1d", {"padding": [60, 36]}, "padding"),
        ("digits", {"anything": 1}, r"data\.options\.anything"),
    ],
)
def test_bad_options_are_rejected(name: str, options: dict, match: str) -> None:
    with pytest.raises(ArchlabError, match=match):
        load_dataset(name, options)


@pytest.mark.parametrize("kwargs", [{"val_fraction": 1.0}, {"val_fraction": -0.1}, {"split_seed": -1}])
def test_bad_split_arguments(kwargs: dict) -> None:
    with pytest.raises(ArchlabError):
        load_dataset("digits", **kwargs)


def test_stratified_indices_partition_exactly_and_proportionally() -> None:
    y = np.repeat(np.arange(3), [50, 30, 21])
    kept, held = stratified_indices(y, 0.25, seed=7)
    assert len(held) == round(0.25 * len(y))
    assert np.array_equal(np.sort(np.concatenate([kept, held])), np.arange(len(y)))
    assert np.all(np.diff(kept) > 0) and np.all(np.diff(held) > 0)  # original order kept
    assert np.abs(np.bincount(y[held]) - 0.25 * np.bincount(y)).max() < 1  # per class: floor or ceil
    again, _ = stratified_indices(y, 0.25, seed=7)
    other, _ = stratified_indices(y, 0.25, seed=8)
    assert np.array_equal(kept, again) and not np.array_equal(kept, other)
    kept, held = stratified_indices(y, 0.0, seed=0)
    assert len(held) == 0 and len(kept) == len(y)


def test_split_checks_lengths() -> None:
    with pytest.raises(ValueError):
        Split(torch.zeros(3, 2), torch.zeros(2, dtype=torch.int64))


# ----------------------------------------------------------------------------- digits


def test_digits_shapes_and_splits() -> None:
    ds = load_dataset("digits")
    assert isinstance(ds, Dataset) and ds.num_classes == 10 and ds.input_shape == (1, 8, 8)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (1294, 144, 359)
    for split in (ds.train, ds.val, ds.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert split.x.shape[1:] == (1, 8, 8)
        assert 0.0 <= split.x.min() and split.x.max() <= 1.0
    assert ds.train.x.max() == 1.0  # 16 / 16
    assert set(ds.test.y.bincount().tolist()) <= {35, 36, 37}  # stratified 20%


def test_digits_test_split_is_fixed_and_val_depends_on_split_seed() -> None:
    a = load_dataset("digits", split_seed=0)
    b = load_dataset("digits", split_seed=1)
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.val.x, b.val.x)
    assert torch.equal(a.val.x, load_dataset("digits", split_seed=0).val.x)


def test_val_fraction_zero_gives_an_empty_val_split() -> None:
    ds = load_dataset("digits", val_fraction=0)
    assert ds.val.x.shape == (0, 1, 8, 8) and ds.val.y.shape == (0,) and len(ds.val) == 0
    assert len(ds.train) == 1438


def test_loads_are_cached_but_callers_cannot_change_the_cache() -> None:
    first = load_dataset("digits")
    reference = first.train.x.clone(), first.test.x.clone()
    first.train.x.zero_()
    first.test.x.zero_()
    second = load_dataset("digits")
    assert torch.equal(second.train.x, reference[0]) and torch.equal(second.test.x, reference[1])


# ----------------------------------------------------------------------------- mnist1d


def test_mnist1d_shapes_and_dtypes() -> None:
    ds = load_dataset("mnist1d")
    assert ds.input_shape == (40,) and ds.num_classes == 10
    assert (ds.train.x.shape, ds.val.x.shape, ds.test.x.shape) == ((3600, 40), (400, 40), (1000, 40))
    assert ds.train.x.dtype == torch.float32 and ds.train.y.dtype == torch.int64
    assert load_dataset("mnist1d", {"final_seq_length": 64, "num_samples": 200}).input_shape == (64,)


def test_mnist1d_is_class_balanced_and_standardised() -> None:
    x_train, y_train, x_test, y_test = generate(Mnist1dConfig())
    assert np.bincount(np.concatenate([y_train, y_test])).tolist() == [500] * 10
    x = np.concatenate([x_train, x_test])
    assert abs(x.mean()) < 1e-12 and abs(x.std() - 1) < 1e-12


def test_mnist1d_is_deterministic_by_seed() -> None:
    cfg = Mnist1dConfig(num_samples=300)
    a, b = generate(cfg), generate(cfg)
    assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))
    c = generate(Mnist1dConfig(num_samples=300, seed=43))
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize(
    "options",
    [{}, {"seed": 3, "shuffle_seq": True, "num_samples": 1000, "padding": (10, 20), "final_seq_length": 64}],
    ids=["defaults", "non-default"],
)
def test_mnist1d_equals_the_reference_bit_for_bit(options: dict) -> None:
    data = pytest.importorskip("mnist1d.data", reason="peer `mnist1d` not installed (pip install archlab[test])")
    args = data.get_dataset_args(as_dict=True)
    args.update(options)
    reference = data.make_dataset(type("Args", (), args))
    ours = generate(Mnist1dConfig(**options))
    for array, key in zip(ours, ("x", "y", "x_test", "y_test"), strict=True):
        assert array.dtype == reference[key].dtype
        assert np.array_equal(array, reference[key]), key


def test_gaussian_filter_matches_scipy_bit_for_bit() -> None:
    ndimage = pytest.importorskip("scipy.ndimage", reason="peer `scipy` not installed")
    values = np.random.RandomState(0).randn(5, 72)
    assert np.array_equal(gaussian_filter1d(values, sigma=2), ndimage.gaussian_filter1d(values, 2, axis=-1))
    assert np.array_equal(gaussian_filter1d(values, sigma=1.5), ndimage.gaussian_filter1d(values, 1.5, axis=-1))


def test_resample_matches_np_interp_bit_for_bit() -> None:
    values = np.random.RandomState(0).randn(4, 17)
    for n in (5, 17, 40, 72):
        expected = np.stack([np.interp(np.linspace(0, 1, n), np.linspace(0, 1, 17), row) for row in values])
        assert np.array_equal(resample(values, n), expected)


# ----------------------------------------------------------------------------- IDX files and MNIST


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(dtype: type) -> None:
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    parsed = parse_idx(idx_bytes(array))
    assert parsed.dtype == np.dtype(dtype) and parsed.dtype.isnative
    assert np.array_equal(parsed, array)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00", "magic"),
        (b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00", "type code"),
        (b"\x00\x00\x08\x02" + struct.pack(">I", 2), "truncated"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 3) + b"\x00\x00", "size mismatch"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 1) + b"\x00\x00", "size mismatch"),
    ],
)
def test_malformed_idx_is_rejected_naming_the_file(tmp_path: Path, data: bytes, match: str) -> None:
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(data)
    with pytest.raises(ArchlabError, match=match) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_corrupt_gzip_is_rejected_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(100, np.uint8)))[:-20])
    with pytest.raises(ArchlabError, match="gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_mnist_idx_files(mnist_folder: Path) -> None:
    folder = mnist_folder
    for images_file, labels_file, count in [
        (mnist_module.TRAIN_IMAGES, mnist_module.TRAIN_LABELS, 60000),
        (mnist_module.TEST_IMAGES, mnist_module.TEST_LABELS, 10000),
    ]:
        images, labels = read_idx(folder / images_file.name), read_idx(folder / labels_file.name)
        assert images.shape == (count, 28, 28) and images.dtype == np.uint8
        assert (images.min(), images.max()) == (0, 255)
        assert labels.shape == (count,) and set(np.unique(labels)) == set(range(10))


@pytest.mark.usefixtures("mnist_folder")
def test_load_mnist() -> None:
    ds = load_dataset("mnist")
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    assert (len(ds.train), len(ds.val), len(ds.test)) == (54000, 6000, 10000)
    assert ds.train.x.dtype == torch.float32 and ds.test.y.dtype == torch.int64
    full = torch.cat([ds.train.x, ds.val.x])
    assert abs(full.mean().item()) < 1e-3 and abs(full.std().item() - 1) < 1e-3  # mean 0.1307, std 0.3081


def test_mnist_without_files_or_downloads_names_files_and_folder(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ARCHLAB_DATA", str(tmp_path))
    with pytest.raises(DataUnavailable) as info:
        load_dataset("mnist", {"download": False})
    message = str(info.value)
    assert "\n" not in message and "'mnist'" in message and "ARCHLAB_DATA" in message
    assert str(tmp_path / "mnist") in message
    assert all(f.name in message for f in mnist_module.FILES)


# ----------------------------------------------------------------------------- downloads


def test_data_root_follows_the_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ARCHLAB_DATA", str(tmp_path / "data"))
    assert data_root() == tmp_path / "data"
    monkeypatch.delenv("ARCHLAB_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data_root() == tmp_path / "cache" / "archlab"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data_root() == Path.home() / ".cache" / "archlab"


def test_download_from_a_local_server(http_dir: tuple[str, Path], tmp_path: Path) -> None:
    url, served = http_dir
    labels = np.arange(200, dtype=np.uint8) % 10
    raw = idx_bytes(labels)
    write_gz(served / "toy-labels-idx1-ubyte.gz", raw)
    name = "toy-labels-idx1-ubyte.gz"
    file = RemoteFile(name, (url + "missing.gz", url + name), sha256(raw), gunzip=True)
    folder = tmp_path / "data" / "toy"
    (path,) = ensure_files("toy", [file], folder)  # the first URL answers 404; the second works
    assert path == folder / file.name and os.listdir(folder) == [file.name]
    assert np.array_equal(read_idx(path), labels)
    assert ensure_files("toy", [file], folder) == [path]  # present and verified: nothing to do


def test_fetch_with_a_sha256_of_the_raw_bytes(http_dir: tuple[str, Path], tmp_path: Path) -> None:
    url, served = http_dir
    (served / "a.txt").write_bytes(b"hello")
    dest = fetch([url + "a.txt"], tmp_path / "a.txt", sha256=sha256(b"hello"))
    assert dest.read_bytes() == b"hello"
    with pytest.raises(TypeError):
        fetch([url + "a.txt"], tmp_path / "b.txt")


def test_a_download_with_wrong_bytes_is_refused_and_removed(http_dir: tuple[str, Path], tmp_path: Path) -> None:
    url, served = http_dir
    write_gz(served / "toy.gz", idx_bytes(np.zeros(10, np.uint8)))
    expected = sha256(idx_bytes(np.ones(10, np.uint8)))
    folder = tmp_path / "toy"
    with pytest.raises(DataUnavailable, match="checksum mismatch"):
        ensure_files("toy", [RemoteFile("toy.gz", (url + "toy.gz",), expected, gunzip=True)], folder)
    assert os.listdir(folder) == []  # neither the file nor a temporary part
    with pytest.raises(DataUnavailable, match="checksum mismatch"):
        fetch([url + "toy.gz"], folder / "toy.gz", lambda p: False)
    assert os.listdir(folder) == []


def test_offline_gives_one_line_naming_files_and_folder(tmp_path: Path) -> None:
    url = closed_port_url()
    files = [RemoteFile(name, (url + name,), "0" * 64) for name in ("a-idx1-ubyte.gz", "b-idx3-ubyte.gz")]
    folder = tmp_path / "toy"
    with pytest.raises(DataUnavailable) as info:
        ensure_files("toy", files, folder)
    message = str(info.value)
    assert "\n" not in message
    assert all(s in message for s in ("'toy'", "a-idx1-ubyte.gz", "b-idx3-ubyte.gz", str(folder), "ARCHLAB_DATA"))
    assert os.listdir(folder) == []


def test_a_present_file_with_a_wrong_checksum_is_refused(tmp_path: Path) -> None:
    raw = idx_bytes(np.arange(10, dtype=np.uint8))
    path = write_gz(tmp_path / "toy.gz", raw)
    good = RemoteFile("toy.gz", (closed_port_url(),), sha256(raw), gunzip=True)
    assert ensure_files("toy", [good], tmp_path) == [path]
    bad = RemoteFile("toy.gz", (closed_port_url(),), sha256(b"other"), gunzip=True)
    with pytest.raises(ArchlabError, match="checksum mismatch") as info:
        ensure_files("toy", [bad], tmp_path)
    assert not isinstance(info.value, DataUnavailable)
    assert path.exists()  # the user's file is reported, not deleted


def test_verification_is_redone_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"abcd")
    file = RemoteFile("f.bin", (), sha256(b"abcd"))
    assert verify_file(file, path)
    path.write_bytes(b"abce")  # same size, new content and mtime
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert not verify_file(file, path)


# ----------------------------------------------------------------------------- transforms


@pytest.mark.parametrize(
    "spec", ["blur", "shift", "shift:-1", "shift:1.5", "crop:x", "hflip:1", "normalize:0", "normalize:0:0", ""]
)
def test_bad_transform_specs_name_the_allowed_ones(spec: str) -> None:
    with pytest.raises(ArchlabError, match="allowed: shift:N, crop:N"):
        make_transform([spec])


def zero_filled_shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Reference for one example (..., H, W): out[i, j] = x[i - dy, j - dx], zeros outside."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = x[
        ..., max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


@pytest.mark.parametrize("spec", ["shift:2", "crop:2"])
def test_image_shift_and_crop_are_zero_filled_shifts_per_example(spec: str) -> None:
    x = torch.rand(64, 1, 6, 7) + 1  # no zeros, so a zero in the output can only come from the fill
    out = make_transform([spec])(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    seen = set()
    for example, result in zip(x, out, strict=True):
        matches = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if torch.equal(zero_filled_shift(example, dy, dx), result)
        ]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) > 10  # offsets differ between examples


def test_signal_shift_is_zero_filled_per_example() -> None:
    x = torch.arange(1, 11, dtype=torch.float32).repeat(32, 1)  # (32, 10)
    out = make_transform(["shift:3"])(x, torch.Generator().manual_seed(1))
    shifts = set()
    for result in out:
        s = [d for d in range(-3, 4) if torch.equal(zero_filled_shift(x[0][None], 0, d)[0], result)]
        assert len(s) == 1
        shifts.add(s[0])
    assert len(shifts) > 3
    channels = torch.rand(8, 2, 10) + 1  # (B, C, L): one shift per example, shared by its channels
    out = make_transform(["shift:3"])(channels, torch.Generator().manual_seed(1))
    assert torch.equal((out == 0).any(1), (out == 0).all(1))


def test_crop_needs_images() -> None:
    with pytest.raises(ArchlabError, match="crop:2"):
        make_transform(["crop:2"])(torch.rand(4, 40), torch.Generator())


def test_hflip_flips_about_half_of_the_examples() -> None:
    x = torch.rand(400, 1, 5, 5)
    out = make_transform(["hflip"])(x, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, e.flip(-1)) for o, e in zip(out, x, strict=True)])
    kept = torch.tensor([torch.equal(o, e) for o, e in zip(out, x, strict=True)])
    assert torch.all(flipped ^ kept)
    assert 150 < flipped.sum() < 250


def test_normalize_and_identity() -> None:
    x = torch.rand(3, 1, 4, 4)
    assert torch.allclose(make_transform(["normalize:0.5:0.25"])(x, torch.Generator()), (x - 0.5) / 0.25)
    assert torch.equal(make_transform(["normalize:-1:2"])(x, torch.Generator()), (x + 1) / 2)
    assert torch.equal(make_transform([])(x, torch.Generator()), x)


def test_transforms_are_reproducible_and_resumable() -> None:
    t = make_transform(["crop:2", "hflip", "shift:1", "normalize:0.1:0.3"])
    x = torch.rand(16, 1, 8, 8)
    g = torch.Generator().manual_seed(5)
    first = t(x, g)
    state = g.get_state()
    second = t(x, g)
    assert torch.equal(first, t(x, torch.Generator().manual_seed(5)))
    assert not torch.equal(first, second)  # the stream moves on
    g.set_state(state)
    assert torch.equal(second, t(x, g))  # a resumed generator continues the same stream


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_transforms_on_cuda_match_cpu() -> None:
    t = make_transform(["crop:2", "hflip", "shift:1"])
    x = torch.rand(16, 1, 8, 8)
    cpu = t(x, torch.Generator().manual_seed(3))
    gpu = t(x.cuda(), torch.Generator().manual_seed(3))
    assert gpu.device.type == "cuda" and torch.equal(gpu.cpu(), cpu)


# ----------------------------------------------------------------------------- MNIST as uncompressed IDX files


def small_mnist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, gzipped: set[str]) -> dict[str, np.ndarray]:
    """A tiny MNIST (6 train, 4 test examples) in ``tmp_path/mnist``, with ``mnist.FILES`` pointing at its
    checksums: the files named in ``gzipped`` as ``.gz``, the others uncompressed. Returns the arrays."""
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
              "train-labels-idx1-ubyte": np.arange(6, dtype=np.uint8),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
              "t10k-labels-idx1-ubyte": np.array([9, 0, 3, 3], dtype=np.uint8)}
    folder = tmp_path / "mnist"
    folder.mkdir()
    files = []
    for name, array in arrays.items():
        data = idx_bytes(array)
        if name in gzipped:
            write_gz(folder / f"{name}.gz", data)
        else:
            (folder / name).write_bytes(data)
        files.append(RemoteFile(f"{name}.gz", (), sha256(data), gunzip=True))
    monkeypatch.setattr(mnist_module, "FILES", tuple(files))
    monkeypatch.setenv("ARCHLAB_DATA", str(tmp_path))
    return arrays


@pytest.mark.parametrize("gzipped", [set(), {"train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"}])
def test_mnist_reads_uncompressed_idx_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, gzipped: set[str]) -> None:
    arrays = small_mnist(monkeypatch, tmp_path, gzipped)
    train, test = mnist_module.load_mnist(mnist_module.MnistConfig(download=False))
    for split, prefix in ((train, "train"), (test, "t10k")):
        images = torch.from_numpy(arrays[f"{prefix}-images-idx3-ubyte"]).float().unsqueeze(1)
        assert torch.allclose(split.x, (images / 255 - mnist_module.MEAN) / mnist_module.STD)
        assert split.y.tolist() == arrays[f"{prefix}-labels-idx1-ubyte"].tolist()


def test_an_uncompressed_mnist_file_is_verified_by_the_sha256_of_its_content(monkeypatch: pytest.MonkeyPatch,
                                                                              tmp_path: Path) -> None:
    small_mnist(monkeypatch, tmp_path, gzipped=set())
    labels = tmp_path / "mnist" / "t10k-labels-idx1-ubyte"
    labels.write_bytes(idx_bytes(np.array([9, 0, 3, 4], dtype=np.uint8)))  # one label changed
    with pytest.raises(ArchlabError, match="checksum mismatch") as info:
        mnist_module.load_mnist(mnist_module.MnistConfig(download=False))
    assert str(labels) in str(info.value) and mnist_module.FILES[3].sha256 in str(info.value)
