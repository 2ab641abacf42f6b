"""``archlab bench SPEC``: time ours against a peer, side by side, in one process.

A spec is a TOML file (``benchmarks/<name>.toml``)::

    name = "engine-overhead"
    description = "..."
    warmup = 2            # untimed calls of each side first
    repeats = 9           # timed calls of each side, interleaved A B A B ...
    [params]              # passed to both factories
    steps = 300
    [ours]
    target = "engine_overhead.py:ours"   # file (relative to the spec) : factory
    label = "archlab"
    [peer]
    target = "engine_overhead.py:peer"
    label = "plain PyTorch"
    requires = []          # modules the peer needs; missing -> the bench is skipped with a reason

A factory takes ``**params`` and returns a zero-argument callable: one timed unit of work (setup
happens in the factory, outside the timing). Interleaving A and B spreads the noise of a shared
machine over both sides; the result is the median of each and ``ratio = peer / ours`` (> 1: ours
faster). JSON + markdown land in ``benchmarks/results/``.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ArchlabError
from .reproduce import machine_description


def benchmarks_root() -> Path:
    return Path(__file__).resolve().parents[1] / "benchmarks"


def find_spec(spec: str) -> Path:
    p = Path(spec)
    if p.is_file():
        return p
    candidate = benchmarks_root() / f"{spec}.toml"
    if candidate.is_file():
        return candidate
    names = sorted(q.stem for q in benchmarks_root().glob("*.toml"))
    raise ArchlabError(f"unknown bench spec {spec!r}; specs: {', '.join(names) or '(none)'}")


def _load_factory(spec_path: Path, target: str) -> Callable[..., Callable[[], Any]]:
    if ":" not in target:
        raise ArchlabError(f"{spec_path}: target {target!r} must look like file.py:factory")
    file, name = target.split(":", 1)
    path = (spec_path.parent / file).resolve()
    if not path.is_file():
        raise ArchlabError(f"{spec_path}: target file {path} not found")
    mod_spec = importlib.util.spec_from_file_location(f"archlab_bench_{path.stem}", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    if not hasattr(module, name):
        raise ArchlabError(f"{spec_path}: {path.name} has no factory {name!r}")
    return getattr(module, name)


def _missing(modules: list[str]) -> list[str]:
    def absent(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is None
        except ModuleNotFoundError:  # "pkg.sub" whose parent package is missing
            return True

    return [m for m in modules if absent(m)]


def run_bench(spec: str, out_dir: Path | None = None, repeats: int | None = None,
              log: Any = print) -> dict[str, Any]:
    path = find_spec(spec)
    try:
        cfg = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ArchlabError(f"{path}: not valid TOML ({exc})") from None
    for key in ("name", "ours", "peer"):
        if key not in cfg:
            raise ArchlabError(f"{path}: missing key {key!r}; a spec needs name, ours, peer")
    for key in ("ours", "peer"):
        side = cfg[key]
        if not isinstance(side, dict) or not isinstance(side.get("target"), str):
            raise ArchlabError(f"{path}: [{key}] must be a table with target = \"file.py:factory\"")
        requires = side.get("requires", [])
        if not isinstance(requires, list) or not all(isinstance(m, str) for m in requires):
            raise ArchlabError(f"{path}: {key}.requires must be a list of module names, got {requires!r}")
    missing = _missing(cfg["peer"].get("requires", []) + cfg["ours"].get("requires", []))
    if missing:
        raise ArchlabError(f"bench {cfg['name']}: skipped, missing peer package(s): {', '.join(missing)}")
    params = cfg.get("params", {})
    warmup = int(cfg.get("warmup", 2))
    repeats = int(cfg.get("repeats", 9) if repeats is None else repeats)
    if repeats < 1 or warmup < 0:
        raise ArchlabError(f"{path}: repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    sides = {k: _load_factory(path, cfg[k]["target"])(**params) for k in ("ours", "peer")}
    log(f"bench {cfg['name']}: warm-up {warmup}, then {repeats} interleaved repeats")
    for _ in range(warmup):
        for fn in sides.values():
            fn()
    times: dict[str, list[float]] = {"ours": [], "peer": []}
    for i in range(repeats):
        for key in ("ours", "peer") if i % 2 == 0 else ("peer", "ours"):
            t0 = time.perf_counter()
            sides[key]()
            times[key].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "name": cfg["name"], "description": cfg.get("description", ""), "params": params,
        "ours": {"label": cfg["ours"].get("label", "ours"), "median_s": med["ours"], "times_s": times["ours"]},
        "peer": {"label": cfg["peer"].get("label", "peer"), "median_s": med["peer"], "times_s": times["peer"]},
        "ratio_peer_over_ours": med["peer"] / med["ours"], "warmup": warmup, "repeats": repeats,
        "machine": machine_description(), "date": time.strftime("%Y-%m-%d"),
    }
    out_dir = out_dir or benchmarks_root() / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{cfg['name']}.json").write_text(json.dumps(result, indent=2) + "\n")
    md = (f"# {cfg['name']}\n\n{result['description']}\n\n| side | median (s) |\n|---|---|\n"
          f"| {result['ours']['label']} | {med['ours']:.4f} |\n| {result['peer']['label']} | {med['peer']:.4f} |\n\n"
          f"peer / ours = **{result['ratio_peer_over_ours']:.2f}x** (median of {repeats} interleaved repeats after "
          f"{warmup} warm-up; > 1 means archlab is faster). Machine: {result['machine']}, {result['date']}.\n")
    (out_dir / f"{cfg['name']}.md").write_text(md)
    log(md)
    return result
