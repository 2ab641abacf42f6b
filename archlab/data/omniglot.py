"""Omniglot (Lake, Salakhutdinov & Tenenbaum 2015): handwritten characters of 50 alphabets, 20
drawings each, for few-shot learning; and Lake's 20 one-shot classification runs.

``omniglot`` reads ``images_background_small1.zip`` of the official repository
(github.com/brendenlake/omniglot, ``python/``; 5 alphabets, 136 characters, 2,720 images of 105x105,
sha256 f38eb80f...a4, kept under ``$ARCHLAB_DATA/omniglot``). As in Vinyals et al. 2016 (Sec. 4.1),
images are resized to 28x28 (Lanczos) and every character in four rotations (0, 90, 180, 270
degrees) is a class of its own. Pixels: ink 1, paper 0.

Splits (``data.options.split``), fixed and documented because classes must not cross them:

- ``alphabets`` (default): train = Balinese, Early_Aramaic, Korean (86 characters, 344 classes with
  rotations); val = Greek (24 -> 96); test = Latin (26 -> 104).
- ``characters``: every alphabet contributes, characters in file order: the first 60% of each
  alphabet train, the next 20% val, the rest test (held-out characters of seen alphabets).

This subset is far smaller than the Vinyals split (1,200 training characters of 30 alphabets plus
rotations): numbers trained on it are *not* comparable to the published Omniglot table.

``split = "vinyals"`` reads the full data instead: ``images_background.zip`` (30 alphabets, 964
characters, 19,280 drawings) and ``images_evaluation.zip`` (20 alphabets, 659 characters, 13,180
drawings) of the same repository. No checksum is published for them, so a file is accepted when it
is an intact zip (every member's CRC checked) with exactly those alphabet, character and drawing
counts. As in Vinyals et al. 2016 (Sec. 4.1.1) the 1,623 characters of both zips are pooled and split
by *character*: 1,200 for training (1,028 train + 172 validation, Snell et al. 2017's counts) and 423
for testing, each in 4 rotations (4,112 / 688 / 1,692 classes). The published split files are not
read; the characters, sorted by (alphabet, character) name, are shuffled by Python's
``random.Random(1)`` (Finn et al.'s data generator shuffles with ``random.seed(1)``, over a directory
listing whose order is not fixed) and cut 1,028 / 172 / 423 in that order.

``omniglot_runs`` reads Lake's ``one-shot-classification/all_runs.zip`` (same repository, 352,787
bytes, sha256 437c1eea...5): 20 runs of 20-way within-alphabet one-shot classification, each with
``runNN/training/classKK.png`` (one drawing per class), ``runNN/test/itemKK.png`` (20 queries) and
``runNN/class_labels.txt`` (lines ``runNN/test/itemKK.png runNN/training/classJJ.png``). Its 20 runs
are fixed evaluation episodes (no training split); images get the same 28x28 treatment, no rotation.
"""

from __future__ import annotations

import io
import random
import re
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..errors import ArchlabError, DataUnavailable
from .download import RemoteFile, data_root, ensure_files, fetch
from .episodes import Episode, FewShotData
from .registry import Split, register_dataset

_REPO = "https://github.com/brendenlake/omniglot/raw/master/python/"
SMALL1 = RemoteFile("images_background_small1.zip", (_REPO + "images_background_small1.zip",),
                    "f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4")
RUNS = RemoteFile("all_runs.zip", (_REPO + "one-shot-classification/all_runs.zip",),
                  "437c1eeab0af8484112e1b4cc0f3d541ec727f7c47b9b202da738af9dfd6c325")

#: The alphabet split of images_background_small1 (``split = "alphabets"``).
ALPHABET_SPLIT = {"val": ("Greek",), "test": ("Latin",)}
SMALL1_COUNTS = {"alphabets": 5, "characters": 136, "images": 2720}
#: The full zips (``split = "vinyals"``): (alphabets, characters, drawings) each must hold.
FULL_COUNTS = {"images_background.zip": (30, 964, 19280), "images_evaluation.zip": (20, 659, 13180)}
#: Characters of the Vinyals split: train, validation (together Vinyals et al.'s 1,200) and test.
VINYALS_SIZES = {"train": 1028, "val": 172, "test": 423}
_DRAWING = re.compile(r"^[^/]+/([^/]+)/([^/]+)/[^/]+\.png$")


@dataclass(frozen=True)
class OmniglotConfig:
    split: Literal["alphabets", "characters", "vinyals"] = "alphabets"
    """background_small1: hold out whole alphabets (val Greek, test Latin) or the last characters of every
    alphabet; ``vinyals``: the full Omniglot (both zips), 1,028 / 172 / 423 characters (module docstring)."""
    rotations: bool = True
    """Each character in 4 rotations (multiples of 90 degrees) counts as 4 classes (Vinyals et al. 2016)."""
    image_size: int = 28
    """Side of the resized images."""
    download: bool = True

    def __post_init__(self) -> None:
        if not 8 <= self.image_size <= 105:
            raise ValueError(f"image_size must be in [8, 105], got {self.image_size}")


@dataclass(frozen=True)
class OmniglotRunsConfig:
    image_size: int = 28
    """Side of the resized images (the size the few-shot model was trained on)."""
    download: bool = True

    def __post_init__(self) -> None:
        if not 8 <= self.image_size <= 105:
            raise ValueError(f"image_size must be in [8, 105], got {self.image_size}")


def read_image(data: bytes, size: int) -> torch.Tensor:
    """PNG bytes -> float32 (1, size, size), ink 1 and paper 0."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        grey = img.convert("L").resize((size, size), Image.Resampling.LANCZOS)
        pixels = np.asarray(grey, dtype=np.float32) / 255.0
    return torch.from_numpy(1.0 - pixels).clamp_(0.0, 1.0).unsqueeze(0)


def read_characters(zip_path: Path, size: int) -> dict[tuple[str, str], torch.Tensor]:
    """(alphabet, character) -> its drawings (20, 1, size, size), from an Omniglot images zip."""
    pattern = _DRAWING
    found: dict[tuple[str, str], list[tuple[str, torch.Tensor]]] = {}
    try:
        with zipfile.ZipFile(zip_path) as zf:
            for name in sorted(zf.namelist()):
                m = pattern.match(name)
                if m:
                    found.setdefault((m.group(1), m.group(2)), []).append((name, read_image(zf.read(name), size)))
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchlabError(f"{zip_path}: not a readable zip ({exc})") from None
    return {key: torch.stack([img for _, img in sorted(items)]) for key, items in sorted(found.items())}


def _classes(chars: list[torch.Tensor], rotations: bool) -> Split:
    """Drawings of characters -> one class per character (and rotation)."""
    xs, ys = [], []
    for c, drawings in enumerate(chars):
        for r in range(4 if rotations else 1):
            xs.append(torch.rot90(drawings, r, dims=(2, 3)))
            ys.append(torch.full((len(drawings),), c * (4 if rotations else 1) + r, dtype=torch.long))
    if not xs:
        raise ArchlabError("omniglot: a split has no characters")
    return Split(torch.cat(xs), torch.cat(ys))


def zip_counts(names: list[str]) -> tuple[int, int, int]:
    """(alphabets, characters, drawings) named by a zip's member list."""
    keys = [(m.group(1), m.group(2)) for n in names if (m := _DRAWING.match(n))]
    return len({a for a, _ in keys}), len(set(keys)), len(keys)


def check_full_zip(path: Path, name: str) -> str | None:
    """Why ``path`` is not a good copy of the full Omniglot zip ``name`` (None: it is): not a zip,
    a damaged member (CRC), or other alphabet / character / drawing counts than :data:`FULL_COUNTS`."""
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
            counts = zip_counts(zf.namelist())
    except (zipfile.BadZipFile, OSError) as exc:
        return f"not a readable zip ({exc})"
    if bad is not None:
        return f"damaged member {bad}"
    want = FULL_COUNTS[name]
    if counts != want:
        return (f"expected {want[0]}/{want[1]}/{want[2]} alphabets/characters/drawings, "
                f"found {counts[0]}/{counts[1]}/{counts[2]}")
    return None


def full_zips(folder: Path, download: bool) -> list[Path]:
    """``images_background.zip`` and ``images_evaluation.zip`` in ``folder``, checked (downloaded first if missing)."""
    paths = []
    for name in FULL_COUNTS:
        path = folder / name
        if not path.exists():
            if not download:
                raise DataUnavailable(f"dataset 'omniglot': cannot get {name} (downloads are switched off); put it "
                                      f"in {folder} (or set ARCHLAB_DATA to a folder with an omniglot/ sub-folder "
                                      "that has it)")
            fetch((_REPO + name,), path, verify=lambda p, n=name: check_full_zip(p, n) is None, dataset="omniglot")
        why = check_full_zip(path, name)
        if why:
            raise ArchlabError(f"dataset 'omniglot': {path}: {why}; delete or replace the file")
        paths.append(path)
    return paths


def vinyals_split(characters: list[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    """The 1,623 (alphabet, character) keys -> train / val / test keys (module docstring)."""
    if len(characters) != sum(VINYALS_SIZES.values()):
        raise ArchlabError(f"omniglot: the Vinyals split needs {sum(VINYALS_SIZES.values())} characters, "
                           f"found {len(characters)}")
    order = sorted(characters)
    random.Random(1).shuffle(order)
    a = VINYALS_SIZES["train"]
    b = a + VINYALS_SIZES["val"]
    return {"train": order[:a], "val": order[a:b], "test": order[b:]}


@lru_cache(maxsize=4)
def _load(root: str, cfg: OmniglotConfig) -> FewShotData:
    if cfg.split == "vinyals":
        chars: dict[tuple[str, str], torch.Tensor] = {}
        for path in full_zips(Path(root) / "omniglot", cfg.download):
            chars.update(read_characters(path, cfg.image_size))
        keys = vinyals_split(list(chars))
        splits = {k: _classes([chars[c] for c in v], cfg.rotations) for k, v in keys.items()}
        return FewShotData("omniglot", splits["train"], splits["val"], splits["test"],
                           (1, cfg.image_size, cfg.image_size))
    (path,) = ensure_files("omniglot", [SMALL1], Path(root) / "omniglot", download=cfg.download)
    chars = read_characters(path, cfg.image_size)
    images = sum(len(v) for v in chars.values())
    alphabets = sorted({a for a, _ in chars})
    if (len(alphabets), len(chars), images) != tuple(SMALL1_COUNTS.values()):
        raise ArchlabError(f"{path}: expected {SMALL1_COUNTS} alphabets/characters/images, found "
                           f"{len(alphabets)}/{len(chars)}/{images}")
    parts: dict[str, list[torch.Tensor]] = {"train": [], "val": [], "test": []}
    for alphabet in alphabets:
        members = [chars[k] for k in sorted(chars) if k[0] == alphabet]
        if cfg.split == "alphabets":
            part = next((s for s, names in ALPHABET_SPLIT.items() if alphabet in names), "train")
            parts[part] += members
        else:
            a, b = round(0.6 * len(members)), round(0.8 * len(members))
            parts["train"] += members[:a]
            parts["val"] += members[a:b]
            parts["test"] += members[b:]
    splits = {k: _classes(v, cfg.rotations) for k, v in parts.items()}
    return FewShotData("omniglot", splits["train"], splits["val"], splits["test"], (1, cfg.image_size, cfg.image_size))


def read_runs(zip_path: Path, size: int = 28) -> list[Episode]:
    """Lake's one-shot runs from ``all_runs.zip`` (or any zip in its layout), in run order.

    Each run is an :class:`Episode`: support = the 20 ``training/classKK.png`` (label KK - 1),
    queries = the 20 ``test/itemKK.png`` in item order, labelled by ``class_labels.txt``.
    """
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchlabError(f"{zip_path}: not a readable zip ({exc})") from None
    with zf:
        names = set(zf.namelist())
        labels = sorted(n for n in names if re.search(r"(^|/)run\d+/class_labels\.txt$", n))
        if not labels:
            raise ArchlabError(f"{zip_path}: no runNN/class_labels.txt inside; is it Lake's all_runs.zip?")
        runs = []
        for label_file in labels:
            base = label_file[: -len("class_labels.txt")]  # ".../runNN/"
            prefix = base[: base.rstrip("/").rfind("/") + 1]  # the folder above runNN/ ("" at top level)
            pairs = [line.split() for line in zf.read(label_file).decode().splitlines() if line.strip()]
            if not pairs or any(len(p) != 2 for p in pairs):
                raise ArchlabError(f"{zip_path}: {label_file}: each line must be 'test_image training_image'")
            pairs.sort(key=lambda p: p[0])
            # Every training image of the run is a class, referenced by the labels or not.
            classes = sorted(n[len(prefix):] for n in names
                             if n.startswith(base + "training/") and n.lower().endswith(".png"))
            missing = [p for pair in pairs for p in pair if prefix + p not in names or p.endswith("/")]
            missing += [c for _, c in pairs if c not in classes]
            if missing:
                raise ArchlabError(f"{zip_path}: {label_file} names {missing[0]}, which is not in the zip")
            support = torch.stack([read_image(zf.read(prefix + c), size) for c in classes])
            query = torch.stack([read_image(zf.read(prefix + t), size) for t, _ in pairs])
            query_y = torch.tensor([classes.index(c) for _, c in pairs])
            runs.append(Episode(support, torch.arange(len(classes)), query, query_y))
    return runs


@register_dataset("omniglot", OmniglotConfig, num_classes=0, kind="episodes")
def load_omniglot(cfg: OmniglotConfig) -> FewShotData:
    """Omniglot at 28x28 with rotated classes: background_small1 (5 alphabets; alphabet- or character-disjoint
    splits), or both full zips in the Vinyals character split (``split = "vinyals"``)."""
    return _load(str(data_root()), cfg)


@register_dataset("omniglot_runs", OmniglotRunsConfig, num_classes=20, kind="episodes")
def load_omniglot_runs(cfg: OmniglotRunsConfig) -> FewShotData:
    """Lake's 20 one-shot runs (20-way 1-shot within an alphabet): evaluation episodes only."""
    (path,) = ensure_files("omniglot", [RUNS], data_root() / "omniglot", download=cfg.download)
    runs = read_runs(path, cfg.image_size)
    shape = (1, cfg.image_size, cfg.image_size)
    empty = Split(torch.zeros(0, *shape), torch.zeros(0, dtype=torch.long))
    return FewShotData("omniglot_runs", empty, empty, empty, shape, fixed_episodes=runs)
