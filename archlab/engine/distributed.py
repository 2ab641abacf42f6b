"""Data-parallel helpers over ``torch.distributed`` (gloo on CPU, NCCL on GPU).

``archlab train --nproc N`` relaunches itself through ``torch.distributed.run`` (exactly what
``torchrun`` does), which sets RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT for every worker.
Each worker sees the same global batch order, takes its 1/N slice, and gradients are averaged with
one all-reduce per step, so N workers compute the same update as one process with the whole batch.

The launcher (:func:`launch`) and its workers live and die together: ``--nproc`` is at most the
number of cores (:func:`check_nproc`), workers end when the launcher ends, even on SIGKILL
(:func:`die_with_launcher`), and a user error in the workers is printed once, by the launcher, which
exits 2 like any other user error (:func:`report_to_launcher`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ArchlabError

if TYPE_CHECKING:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

OVERSUBSCRIBE_ENV = "ARCHLAB_ALLOW_OVERSUBSCRIBE"
"""Set to 1 to allow ``--nproc`` beyond the cores (e.g. to try multi-worker code on a laptop)."""
LAUNCHER_PID_ENV = "ARCHLAB_LAUNCHER_PID"
"""Set by :func:`launch` for its workers: the pid of the launcher they must not outlive."""
ERRORS_ENV = "ARCHLAB_WORKER_ERRORS"
"""Set by :func:`launch` for its workers: the folder where a worker leaves its user error (one file per rank)."""
EXIT_USER_ERROR = 2
"""What the command line exits with after an :class:`ArchlabError` (``archlab.cli.EXIT_USER_ERROR``)."""
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def usable_cores() -> int:
    """The CPU cores this process may run on: its affinity mask, which containers and taskset narrow."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def check_nproc(nproc: int) -> None:
    """A one-line :class:`ArchlabError` unless ``nproc`` workers fit the machine.

    Every worker is a whole process with its own model, data and threads: more workers than cores
    only share the cores (slower, not faster) while multiplying the memory, which is how 64 workers on
    2 cores end with the OOM killer. ``ARCHLAB_ALLOW_OVERSUBSCRIBE=1`` allows it anyway."""
    if nproc < 1:
        raise ArchlabError(f"--nproc must be >= 1, got {nproc}")
    cores = usable_cores()
    if nproc > cores and os.environ.get(OVERSUBSCRIBE_ENV) != "1":
        raise ArchlabError(f"--nproc {nproc} is more workers than the {cores} CPU core(s) this machine gives the "
                           f"run; use --nproc {cores} or fewer (or set {OVERSUBSCRIBE_ENV}=1 to start them anyway)")


def die_with_launcher() -> None:
    """End this worker when the :func:`launch` process that started it ends, however that ends.

    torch's agent runs inside the launcher and stops the workers when the launcher exits or catches
    a signal, but nothing runs on SIGKILL (what an OOM killer sends), and torch starts each worker in
    a session of its own, so the workers would keep running as orphans. A no-op outside ``launch``."""
    launcher = os.environ.get(LAUNCHER_PID_ENV)
    if launcher is None or not launched_by_torchrun():
        return
    if sys.platform == "linux":
        # The kernel sends SIGKILL when the parent dies, even to a worker stuck in C code. Strictly,
        # when the parent *thread* that started us ends: torch's agent starts workers from the
        # launcher's main thread (tests/test_distributed.py would see workers die early otherwise).
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL)) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    else:
        threading.Thread(target=_exit_when_orphaned, args=(int(launcher),), daemon=True,
                         name="archlab-launcher-watch").start()
    if os.getppid() != int(launcher):  # the launcher died before we asked: no signal will come
        os._exit(1)


def _exit_when_orphaned(launcher: int) -> None:
    while os.getppid() == launcher:  # an orphan is adopted by another process: its parent pid changes
        time.sleep(0.5)
    os._exit(1)


def report_to_launcher(exc: ArchlabError) -> bool:
    """In a worker of :func:`launch`, leave the user error ``exc`` to the launcher and return True:
    the launcher prints each distinct worker error once (not once per worker) and exits 2.
    False anywhere else: the caller prints ``exc`` itself.

    Rank 0 printing for everyone would lose the message when another rank fails first: torch's
    agent then stops rank 0 before it gets there."""
    errors = os.environ.get(ERRORS_ENV)
    if errors is None or not launched_by_torchrun():
        return False
    (Path(errors) / os.environ["RANK"]).write_text(str(exc))
    return True


def init(device_type: str) -> DistInfo:
    """Join the process group when launched by torchrun / ``--nproc``; a no-op otherwise."""
    if not launched_by_torchrun():
        return DistInfo()
    die_with_launcher()
    if int(os.environ["WORLD_SIZE"]) == 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    else:  # a later run in the same workers (tests, benchmarks): meet as a fresh join would
        dist.barrier()
    info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    return info


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def average_gradients(model: nn.Module, info: DistInfo) -> None:
    """All-reduce (mean) every gradient, coalesced into one flat buffer to keep it to one collective."""
    if not info.enabled:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= info.world_size
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n


def mean_across_workers(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Average ``t`` over all workers in place (e.g. a loss, so every rank logs the global-batch value)."""
    if info.enabled:
        dist.all_reduce(t)
        t /= info.world_size
    return t


def broadcast_flag(flag: bool, info: DistInfo, device: torch.device | str = "cpu") -> bool:
    """Rank 0's decision, on every rank (used for Ctrl-C so all workers stop at the same step)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


@contextlib.contextmanager
def _exported(env: dict[str, str]) -> Iterator[None]:
    """``env`` in ``os.environ`` (which the workers inherit) for the duration of the block."""
    os.environ.update(env)
    try:
        yield
    finally:
        for key in env:
            os.environ.pop(key, None)


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``python -m archlab <argv>`` in ``nproc`` workers via torch.distributed.run; return the exit code.

    torch's agent runs in this process and starts the workers as its children; they end with it."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    check_nproc(nproc)
    args = ["--standalone", f"--nproc-per-node={nproc}", "--module", "archlab", *argv]
    with tempfile.TemporaryDirectory(prefix="archlab-errors-") as errors, \
            _exported({LAUNCHER_PID_ENV: str(os.getpid()), ERRORS_ENV: errors}):
        try:
            torchrun.main(args)
        except SystemExit as exc:  # torchrun exits via SystemExit on success paths too
            return int(exc.code or 0)
        except ChildFailedError as exc:
            return _report_failure(exc, Path(errors))
        except Exception as exc:  # e.g. the rendezvous failed, or the launcher got SIGTERM
            print(f"archlab: distributed run failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    return 0


def _report_failure(exc: ChildFailedError, errors: Path) -> int:
    """Print why the workers failed; return the exit code."""
    codes = {rank: failure.exitcode for rank, failure in sorted(exc.failures.items())}
    # Once one worker fails, torch's agent stops the others with a signal: those are listed here too.
    crashed = {rank: code for rank, code in codes.items() if code > 0 and code != EXIT_USER_ERROR}
    if EXIT_USER_ERROR in codes.values() and not crashed:
        # The workers hit user errors, usually one and the same: print each distinct message once.
        files = [errors / str(rank) for rank, code in codes.items() if code == EXIT_USER_ERROR]
        messages = [file.read_text() for file in files if file.is_file()]  # no file: the worker printed it
        for message in dict.fromkeys(messages):
            print(f"archlab: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    rank, code = next(iter((crashed or codes).items()))
    how = (f"was killed by signal {-code} ({signal.strsignal(-code)})" if code < 0
           else f"exited with code {code}; its own output above says why")
    print(f"archlab: distributed run failed: worker rank {rank} {how}", file=sys.stderr)
    return 1
