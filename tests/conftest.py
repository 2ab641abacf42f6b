"""Shared test setup.

Datasets come from the local copies in ``../shared/datasets`` (next to the project folder) when that
folder exists, so no test downloads anything; otherwise ``ARCHLAB_DATA`` points at an empty
temporary folder and tests that need dataset files skip themselves.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

SHARED_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@pytest.fixture(scope="session", autouse=True)
def archlab_data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Set ``ARCHLAB_DATA`` for the whole session; yields the folder."""
    root = SHARED_DATASETS if SHARED_DATASETS.is_dir() else tmp_path_factory.mktemp("archlab_data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ARCHLAB_DATA", str(root))
        yield root
