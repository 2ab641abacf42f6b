"""Factories for the DP-SGD bench: each returns a zero-argument callable doing one noisy, clipped step; ``run``
times archlab's reference, its fast path (NCHW and channels-last forward) and Opacus (as its MNIST example uses
it, and on a channels-last model) interleaved in one process (``mode = "custom"``)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from archlab import create
from archlab.privacy import DPSGD

SIGMA, CLIP, LR = 1.3, 1.5, 0.25


def _batch(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, 1, 28, 28, generator=g), torch.randint(0, 10, (batch,), generator=g)


def ours(batch: int, fast: bool = False, channels_last: bool = False) -> Callable[[], None]:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create("dp_cnn")
    x, y = _batch(batch)
    dp = DPSGD(model, torch.optim.SGD(model.parameters(), lr=LR), F.cross_entropy, SIGMA, CLIP, batch, fast=fast,
               channels_last=channels_last)
    return lambda: dp.step(x, y)


def fast(batch: int) -> Callable[[], None]:
    return ours(batch, fast=True)


def fast_channels_last(batch: int) -> Callable[[], None]:
    return ours(batch, fast=True, channels_last=True)


def peer(batch: int, channels_last: bool = False) -> Callable[[], None]:
    """Opacus as its MNIST example uses it; ``channels_last``: the model and the batch converted to that layout."""
    import warnings

    from opacus import PrivacyEngine

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create("dp_cnn")
    x, y = _batch(batch)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = torch.empty_like(x, memory_format=torch.channels_last).copy_(x)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, optimizer, _ = PrivacyEngine().make_private(
            module=model, optimizer=torch.optim.SGD(model.parameters(), lr=LR), data_loader=loader,
            noise_multiplier=SIGMA, max_grad_norm=CLIP)

    def step() -> None:
        optimizer.zero_grad()
        with warnings.catch_warnings():  # Opacus' full backward hooks warn that the input needs no grad
            warnings.simplefilter("ignore")
            F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


def peer_channels_last(batch: int) -> Callable[[], None]:
    return peer(batch, channels_last=True)


SIDES = {"reference": ("archlab DPSGD (vmap reference)", ours),
         "fast": ("archlab DPSGD fast=True", fast),
         "fast_channels_last": ("archlab DPSGD fast=True, channels_last=True", fast_channels_last),
         "opacus": ("Opacus make_private", peer),
         "opacus_channels_last": ("Opacus make_private, channels-last model and batch", peer_channels_last)}


def run(params: dict[str, Any], log: Any) -> tuple[dict[str, Any], str]:
    """Warm-up, then ``repeats`` rounds; each round calls every side once, the order rotating (and reversed every
    other round) so that no side always runs first or after the same one. Wall-clock and process CPU-time medians."""
    batch, warmup, repeats = int(params["batch"]), int(params["warmup"]), int(params["repeats"])
    fns = {k: factory(batch) for k, (_, factory) in SIDES.items()}
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    keys = list(fns)
    wall: dict[str, list[float]] = {k: [] for k in keys}
    cpu: dict[str, list[float]] = {k: [] for k in keys}
    log(f"bench dpsgd: warm-up {warmup}, then {repeats} rounds of {', '.join(keys)} (rotating order)")
    for i in range(repeats):
        order = keys[i % len(keys):] + keys[:i % len(keys)]
        for k in order if i % 2 == 0 else order[::-1]:
            c0, t0 = time.process_time(), time.perf_counter()
            fns[k]()
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    med = {k: statistics.median(v) for k, v in wall.items()}
    cmed = {k: statistics.median(v) for k, v in cpu.items()}
    result = {"params": params, "warmup": warmup, "repeats": repeats,
              "sides": {k: {"label": SIDES[k][0], "median_s": med[k], "cpu_median_s": cmed[k], "times_s": wall[k],
                            "cpu_times_s": cpu[k]} for k in keys},
              "ratio_opacus_over_fast": med["opacus"] / med["fast"],
              "ratio_opacus_over_fast_channels_last": med["opacus"] / med["fast_channels_last"],
              "ratio_opacus_over_reference": med["opacus"] / med["reference"],
              "ratio_same_layout_channels_last": med["opacus_channels_last"] / med["fast_channels_last"]}
    lines = ["| side | median wall (s) | median CPU (s) | Opacus / side (wall) | Opacus / side (CPU) |",
             "|---|---|---|---|---|"]
    for k in keys:
        lines.append(f"| {SIDES[k][0]} | {med[k]:.4f} | {cmed[k]:.4f} | {med['opacus'] / med[k]:.2f}x | "
                     f"{cmed['opacus'] / cmed[k]:.2f}x |")
    r = result
    lines += ["", f"Opacus / fast = **{r['ratio_opacus_over_fast']:.2f}x**, Opacus / fast with channels_last = "
              f"**{r['ratio_opacus_over_fast_channels_last']:.2f}x** (both channels-last: "
              f"{r['ratio_same_layout_channels_last']:.2f}x), Opacus / reference = "
              f"{r['ratio_opacus_over_reference']:.2f}x (wall-clock medians of {repeats} rounds after {warmup} "
              "warm-up, all sides interleaved in one process, the order rotating; > 1 means the archlab side is "
              "faster). The CPU column is the process CPU time of the same calls (less sensitive to other "
              "processes on a shared machine).", ""]
    return result, "\n".join(lines)
