"""``archlab compress RUN_DIR --method M``: compress a trained classifier into a new run directory.

    archlab compress runs/mnist_lenet5-s0 --method prune --sparsity 0.9 --finetune-epochs 1
    archlab compress runs/mnist_lenet5-s0 --method prune --structured --sparsity 0.5 --out runs/lenet5_half

The command loads the run's model (``archlab.load``) and its data (the run's ``[data]`` table), hands the
model to the method, and writes ``OUT`` (default ``RUN_DIR-METHOD``):

- ``config.json`` + ``model.safetensors``: the compressed model, readable with ``archlab.load(OUT)``;
- ``recipe.toml``: the run's recipe, so ``archlab eval OUT`` re-scores the compressed model;
- ``compress.json`` / ``compress.md``: before/after table -- test accuracy, parameters (and nonzero
  parameters), size of ``model.safetensors`` on disk, batch-1 CPU latency (median of timed forwards);
- ``summary.json``: the after metrics, the method's settings and the source run.

**Methods are plug-ins.** :data:`METHODS` maps a name to the module implementing it; that module
provides

- ``HELP: str`` -- one line for ``--help``;
- ``add_arguments(group)`` -- its own options on an ``argparse`` argument group (names prefixed or
  specific enough not to clash: every method's options are on the one ``compress`` parser);
- ``apply(model, args, ctx) -> Compressed`` -- the compressed model; ``ctx`` (:class:`CompressContext`)
  offers the data, ``evaluate``, ``finetune`` and the device.

Adding a method is one entry in :data:`METHODS` (docs/compress.md).
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import statistics
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ArchlabError

#: Compression methods: name -> module with ``HELP``, ``add_arguments(group)`` and ``apply(model, args, ctx)``.
METHODS: dict[str, str] = {
    "prune": "archlab.compress.prune",
    "lowrank": "archlab.compress.lowrank",
    "quantize": "archlab.compress.quantize_method",
}

RECIPE = "recipe.toml"


@dataclass
class Compressed:
    """What a method returns."""

    model: nn.Module
    """The compressed network; saved with its ``save_pretrained`` unless ``save`` is given."""
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None
    """What computes its logits when that is not ``model`` itself (e.g. an int8 runtime session)."""
    runtime: str = "torch eager"
    """What runs ``forward``; the before/after latencies are both measured in it."""
    reference_forward: Callable[[torch.Tensor], torch.Tensor] | None = None
    """The uncompressed model in that same runtime (required when ``runtime`` is not torch eager), so the
    latency ratio compares like with like."""
    save: Callable[[Path], None] | None = None
    """Writes ``config.json`` + ``model.safetensors`` into a folder (default ``model.save_pretrained``)."""
    nonzero: int | None = None
    """Nonzero parameters, for methods that zero entries without removing them (unstructured pruning)."""
    settings: dict[str, Any] = field(default_factory=dict)
    """The method's settings and its own numbers (sparsity per layer, ranks ...), kept in compress.json."""


@dataclass
class CompressContext:
    """What a method may use: the run's data and device, evaluation, and a fine-tuning service."""

    run_dir: Path
    recipe: dict[str, Any]
    """The run's resolved recipe (raw TOML tables)."""
    device: torch.device
    seed: int = 0
    _data: Any = None

    @property
    def data(self) -> Any:
        """The run's dataset (:class:`archlab.data.Dataset`), loaded on first use."""
        if self._data is None:
            from ..data import load_dataset

            d = self.recipe.get("data", {})
            if "name" not in d:
                raise ArchlabError(f"{self.run_dir / RECIPE} has no [data] name: compress needs the run's dataset")
            self._data = load_dataset(d["name"], d.get("options", {}), d.get("val_fraction", 0.1),
                                      d.get("split_seed", 0))
        return self._data

    @torch.no_grad()
    def evaluate(self, forward: Callable[[torch.Tensor], torch.Tensor], split: str = "test",
                 batch_size: int = 1000) -> float:
        """Accuracy of ``forward`` on a split (``model.eval()`` is the caller's job)."""
        part = getattr(self.data, split)
        if len(part) == 0:
            return float("nan")
        correct = 0
        for i in range(0, len(part), batch_size):
            logits = forward(part.x[i:i + batch_size].to(self.device))
            correct += int((logits.argmax(-1).cpu() == part.y[i:i + batch_size]).sum())
        return correct / len(part)

    def finetune(self, model: nn.Module, epochs: float, lr: float = 1e-4, batch_size: int | None = None,
                 setup: Callable[[torch.optim.Optimizer], None] | None = None) -> list[float]:
        """Train ``model`` on the training split for ``epochs`` with Adam (cross-entropy, shuffled seeded
        minibatches of the run's batch size); ``setup(optimizer)`` runs first (pruning attaches its masks
        there). Returns the mean loss of every epoch."""
        if epochs <= 0:
            return []
        train = self.data.train
        bs = batch_size or int(self.recipe.get("data", {}).get("batch_size", 128))
        gen = torch.Generator().manual_seed(self.seed)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        if setup is not None:
            setup(opt)
        model.train()
        steps = max(1, round(epochs * (len(train) // bs)))
        losses, total, done, perm, pos = [], 0.0, 0, torch.randperm(len(train), generator=gen), 0
        for _ in range(steps):
            if pos + bs > len(train):
                perm, pos = torch.randperm(len(train), generator=gen), 0
                losses.append(total / max(done, 1))
                total, done = 0.0, 0
            idx = perm[pos:pos + bs]
            pos += bs
            loss = F.cross_entropy(model(train.x[idx].to(self.device)), train.y[idx].to(self.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, done = total + loss.item(), done + 1
        losses.append(total / max(done, 1))
        model.eval()
        return losses


def method_module(name: str) -> Any:
    if name not in METHODS:
        raise ArchlabError(f"unknown compression method {name!r}; methods: {', '.join(sorted(METHODS))}")
    return importlib.import_module(METHODS[name])


def add_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("compress", help="compress a trained classifier (prune, quantize, lowrank) into a new run "
                       "directory with a before/after table")
    s.set_defaults(run=run)
    s.add_argument("run_dir", help="a finished run directory (or a folder with config.json, model.safetensors "
                   "and the run's recipe.toml)")
    s.add_argument("--method", required=True, help=f"one of {', '.join(sorted(METHODS))}")
    s.add_argument("--out", help="new run directory (default: RUN_DIR-METHOD); must not exist yet")
    s.add_argument("--latency-repeats", type=int, default=200, help="timed batch-1 forwards (default 200)")
    s.add_argument("--seed", type=int, default=0, help="seed of fine-tuning batches and random choices")
    for name in sorted(METHODS):
        module = method_module(name)
        module.add_arguments(s.add_argument_group(f"--method {name}", module.HELP))


def _file_size(folder: Path) -> int:
    return (folder / "model.safetensors").stat().st_size


@torch.inference_mode()
def batch1_latency_ms(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, repeats: int = 200) -> float:
    """Median wall time in milliseconds of ``forward`` on one example (after 10 warm-up calls)."""
    for _ in range(10):
        forward(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        forward(x)
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def _measure(ctx: CompressContext, model: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor],
             folder: Path, nonzero: int | None, repeats: int) -> dict[str, Any]:
    model.eval()
    params = sum(p.numel() for p in model.parameters())
    x = ctx.data.test.x[:1].to(ctx.device)
    with torch.inference_mode():
        acc = ctx.evaluate(forward)
    return {"test_acc": acc, "params": params,
            "params_nonzero": nonzero if nonzero is not None else params,
            "size_bytes": _file_size(folder), "latency_ms": batch1_latency_ms(forward, x, repeats)}


def _markdown(method: str, before: dict[str, Any], after: dict[str, Any], threads: int,
              runtime: str = "torch eager") -> str:
    rows = [("test accuracy", "test_acc", "{:.4f}"), ("parameters", "params", "{:,}"),
            ("nonzero parameters", "params_nonzero", "{:,}"), ("size on disk (bytes)", "size_bytes", "{:,}"),
            ("batch-1 CPU latency (ms)", "latency_ms", "{:.3f}")]
    lines = [f"# archlab compress --method {method}", "",
             "| | before | after | after / before |", "|---|---:|---:|---:|"]
    for label, key, fmt in rows:
        b, a = before[key], after[key]
        ratio = f"{a / b:.3f}" if b else "-"
        lines.append(f"| {label} | {fmt.format(b)} | {fmt.format(a)} | {ratio} |")
    lines += ["", f"Latency: median of timed single-example forwards, both in {runtime}, {threads} CPU thread(s)."]
    return "\n".join(lines) + "\n"


def compress_run(run_dir: str | Path, method: str, args: argparse.Namespace, out: str | Path | None = None,
                 seed: int = 0, latency_repeats: int = 200, log: Any = print) -> dict[str, Any]:
    """Compress the model of ``run_dir`` with ``method`` into ``out``; returns what compress.json holds."""
    from ..io import atomic_write_bytes
    from ..registry import CONFIG_FILE, load

    run = Path(run_dir)
    module = method_module(method)
    if not run.is_dir():
        raise ArchlabError(f"{run} is not a directory: pass the folder `archlab train` wrote")
    if not (run / CONFIG_FILE).is_file():
        raise ArchlabError(f"{run} has no final model ({CONFIG_FILE}): the run did not finish")
    if not (run / RECIPE).is_file():
        raise ArchlabError(f"{run} has no {RECIPE}: compress needs the run's recipe to load its data")
    if latency_repeats < 1:
        raise ArchlabError(f"--latency-repeats must be >= 1, got {latency_repeats}")
    dest = Path(out) if out else run.with_name(f"{run.name}-{method}")
    if dest.exists() and any(dest.iterdir()):
        raise ArchlabError(f"{dest} exists and is not empty: pass another --out")
    try:
        recipe = tomllib.loads((run / RECIPE).read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ArchlabError(f"{run / RECIPE} is not valid TOML: {exc}") from None
    device = torch.device("cpu")
    ctx = CompressContext(run, recipe, device, seed)
    model = load(run, map_location="cpu")
    if not isinstance(model, nn.Module):
        raise ArchlabError(f"{run} holds a {type(model).__name__}, not a network: compress works on classifiers")
    model.eval()
    before = _measure(ctx, model, model, run, sum(int(torch.count_nonzero(p)) for p in model.parameters()),
                      latency_repeats)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    result: Compressed = module.apply(model, args, ctx)
    seconds = time.perf_counter() - t0
    dest.mkdir(parents=True, exist_ok=True)
    (result.save or result.model.save_pretrained)(dest)
    shutil.copyfile(run / RECIPE, dest / RECIPE)
    after = _measure(ctx, result.model, result.forward or result.model, dest, result.nonzero, latency_repeats)
    if result.reference_forward is not None:  # time the uncompressed model in the compressed one's runtime too
        x = ctx.data.test.x[:1].to(ctx.device)
        before = {**before, "latency_ms": batch1_latency_ms(result.reference_forward, x, latency_repeats),
                  "latency_ms_torch_eager": before["latency_ms"]}
    elif result.runtime != "torch eager":
        raise ArchlabError(f"compress method {method!r} runs in {result.runtime} but gave no reference_forward")
    report = {"method": method, "source": str(run), "settings": result.settings, "seconds": seconds,
              "threads": torch.get_num_threads(), "runtime": result.runtime, "before": before, "after": after}
    atomic_write_bytes(dest / "compress.json", (json.dumps(report, indent=2) + "\n").encode())
    table = _markdown(method, before, after, torch.get_num_threads(), result.runtime)
    atomic_write_bytes(dest / "compress.md", table.encode())
    summary = {"recipe": recipe.get("name", run.name), "compressed_from": str(run), "method": method,
               "metrics": {k: v for k, v in after.items()}, "before": before, "settings": result.settings}
    atomic_write_bytes(dest / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    log(f"wrote {dest}: test_acc {before['test_acc']:.4f} -> {after['test_acc']:.4f}, parameters "
        f"{before['params_nonzero']:,} -> {after['params_nonzero']:,} nonzero, latency {before['latency_ms']:.3f} -> "
        f"{after['latency_ms']:.3f} ms")
    return report


def run(args: argparse.Namespace) -> int:
    compress_run(args.run_dir, args.method, args, args.out, args.seed, args.latency_repeats)
    return 0
