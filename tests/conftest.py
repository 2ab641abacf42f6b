"""Shared test setup.

Datasets come from the local copies in ``../shared/datasets`` (next to the project folder) when that
folder exists, so no test downloads anything; otherwise ``ARCHLAB_DATA`` points at an empty
temporary folder and tests that need dataset files skip themselves.
"""

from __future__ import annotations

import copy
import functools
import http.server
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

pytest.register_assert_rewrite("helpers")  # its asserts report values, as a test module's do
from helpers import updated  # noqa: E402

SHARED_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@pytest.fixture(scope="session", autouse=True)
def archlab_data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Set ``ARCHLAB_DATA`` for the whole session; yields the folder."""
    root = SHARED_DATASETS if SHARED_DATASETS.is_dir() else tmp_path_factory.mktemp("archlab_data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ARCHLAB_DATA", str(root))
        yield root


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """One intra-op thread for a module of tiny tensors (more only add synchronisation that stalls
    whenever another process holds a core). Use with ``pytestmark = pytest.mark.usefixtures("single_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def assert_resume_exact(tmp_path: Path) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """``check(raw_recipe)``: train the recipe to the end (in ``tmp_path / "full"``); train it again, cut that
    run back to its first checkpoint (a run that died there) and resume it. Final weights and every metrics line
    must equal the uninterrupted run's. Returns the uninterrupted run's summary."""
    from archlab.engine.metrics import read_metrics
    from archlab.recipe import from_dict
    from archlab.runner import train

    def run(raw: dict[str, Any], out: Path, resume: bool = False) -> dict[str, Any]:
        return train(from_dict(copy.deepcopy(raw)), out=out, resume=resume, progress=False, log=lambda _m: None)

    def check(raw: dict[str, Any]) -> dict[str, Any]:
        full, cut = tmp_path / "full", tmp_path / "cut"
        summary = run(raw, full)
        run(raw, cut)
        for extra in sorted((cut / "checkpoints").glob("step-*"))[1:]:
            extra.unlink()
        (cut / "summary.json").unlink()
        run(raw, cut, resume=True)
        a, b = load_file(str(full / "model.safetensors")), load_file(str(cut / "model.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert read_metrics(full / "metrics.jsonl") == read_metrics(cut / "metrics.jsonl")
        return summary

    return check


@pytest.fixture
def tiny_digits() -> Callable[..., dict[str, Any]]:
    """``make(name="tiny", **tables)``: a raw recipe that trains in about a second -- an MLP (16 hidden units)
    on the 8x8 ``digits`` set, 20 Adam steps of 32 examples, one CPU thread, target test_acc >= 0.5 over
    seeds 0 and 1. ``tables`` update its tables key by key (an unknown table is added)."""

    def make(name: str = "tiny", **tables: dict[str, Any]) -> dict[str, Any]:
        raw: dict[str, Any] = {
            "name": name,
            "model": {"name": "mlp", "in_features": 64, "num_classes": 10, "hidden": [16]},
            "data": {"name": "digits", "batch_size": 32},
            "optim": {"name": "adam", "lr": 1e-2},
            "train": {"steps": 20, "eval_every": 20, "log_every": 10, "threads": 1, "device": "cpu"},
            "expect": {"metric": "test_acc", "value": 0.5, "compare": "min", "seeds": [0, 1], "source": "a test"},
        }
        return updated(raw, **tables)

    return make


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server on 127.0.0.1 serving a temporary folder: yields (base URL, folder)."""
    served = tmp_path / "served"
    served.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", served
    finally:
        server.shutdown()
        server.server_close()
