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
    # optional: [[cases]] (a table row each, params merged over [params]), per = "steps" (time per unit),
    # goal = "...", plot = {x = "param"}, report = "file.py:fn" (fn(result) -> markdown appended);
    # mode = "sweep" with [[variants]] times several archlab variants without a peer (see run_sweep)

A factory takes ``**params`` and returns a zero-argument callable: one timed unit of work (setup
happens in the factory, outside the timing). Interleaving A and B spreads the noise of a shared
machine over both sides; the result is the median of each and ``ratio = peer / ours`` (> 1: ours
faster). JSON + markdown (+ plot) land in the output folder, ``reports/bench/<spec>/`` unless given;
the committed tables in ``benchmarks/results/`` change only when asked (``update_results``,
``archlab bench --update-results``), so a trial run on another machine does not overwrite them.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import shutil
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


def _write_outputs(out_dir: Path, name: str, result: dict[str, Any], md: str, update_results: bool,
                   plot: Callable[[Path], None] | None = None, log: Any = print) -> None:
    """``<name>.json``, ``<name>.md`` and, with ``plot``, ``<name>.png`` into ``out_dir``; with
    ``update_results`` also copied over the committed ones in ``benchmarks/results/``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / f"{name}.json", out_dir / f"{name}.md"]
    written[0].write_text(json.dumps(result, indent=2) + "\n")
    written[1].write_text(md)
    if plot is not None:
        written.append(out_dir / f"{name}.png")
        plot(written[-1])
    log(md)
    log(f"bench {name}: results in {out_dir}")
    results = benchmarks_root() / "results"
    if update_results and out_dir.resolve() != results.resolve():
        results.mkdir(exist_ok=True)
        for file in written:
            shutil.copyfile(file, results / file.name)
        log(f"bench {name}: updated {', '.join(str(results / f.name) for f in written)}")


def run_bench(spec: str, out_dir: Path | None = None, repeats: int | None = None,
              log: Any = print, update_results: bool = False) -> dict[str, Any]:
    """Run the bench ``spec`` (a name under ``benchmarks/`` or a path); results go to ``out_dir``
    (default ``reports/bench/<spec>``) and, with ``update_results``, to ``benchmarks/results/``."""
    path = find_spec(spec)
    try:
        cfg = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ArchlabError(f"{path}: not valid TOML ({exc})") from None
    out_dir = out_dir or Path("reports") / "bench" / path.stem
    if cfg.get("mode") == "sweep":
        return run_sweep(path, cfg, out_dir, repeats, log, update_results)
    if cfg.get("mode") == "custom":
        return run_custom(path, cfg, out_dir, log, update_results)
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
    cases = cfg.get("cases")
    if cases is None:
        result = _run_case(path, cfg, params, warmup, repeats, log)
        result.update({"name": cfg["name"], "description": cfg.get("description", ""), "params": params,
                       "warmup": warmup, "repeats": repeats, "machine": machine_description(),
                       "date": time.strftime("%Y-%m-%d")})
        md = (f"# {cfg['name']}\n\n{result['description']}\n\n| side | median (s) |\n|---|---|\n"
              f"| {result['ours']['label']} | {result['ours']['median_s']:.4f} |\n"
              f"| {result['peer']['label']} | {result['peer']['median_s']:.4f} |\n\n"
              f"peer / ours = **{result['ratio_peer_over_ours']:.2f}x** (median of {repeats} interleaved repeats "
              f"after {warmup} warm-up; > 1 means archlab is faster). "
              f"Machine: {result['machine']}, {result['date']}.\n")
    else:
        if not isinstance(cases, list) or not all(isinstance(c, dict) and isinstance(c.get("name"), str)
                                                  for c in cases):
            raise ArchlabError(f"{path}: cases must be an array of tables, each with a name")
        per = cfg.get("per")
        rows = []
        for case in cases:
            case_params = {**params, **case.get("params", {})}
            log(f"case {case['name']}")
            row = _run_case(path, {**cfg, **{k: {**cfg[k], **case.get(k, {})} for k in ("ours", "peer")}},
                            case_params, warmup, repeats, log)
            row = {"case": case["name"], "params": case_params, **row}
            if per:
                row["per"] = per
                row["ours"]["per_unit_ms"] = 1000 * row["ours"]["median_s"] / case_params[per]
                row["peer"]["per_unit_ms"] = 1000 * row["peer"]["median_s"] / case_params[per]
            rows.append(row)
        result = {"name": cfg["name"], "description": cfg.get("description", ""), "params": params, "cases": rows,
                  "warmup": warmup, "repeats": repeats, "goal": cfg.get("goal"), "machine": machine_description(),
                  "date": time.strftime("%Y-%m-%d")}
        md = _cases_markdown(result, per)
    if isinstance(cfg.get("report"), str):  # spec-specific analysis (e.g. MFU) appended to the table
        md += _load_factory(path, cfg["report"])(result)
    plot = None
    if cases is not None and isinstance(cfg.get("plot"), dict):
        plot = functools.partial(_plot_cases, result, cfg["plot"])
    _write_outputs(out_dir, cfg["name"], result, md, update_results, plot, log)
    return result


def _run_case(path: Path, cfg: dict[str, Any], params: dict[str, Any], warmup: int, repeats: int,
              log: Any) -> dict[str, Any]:
    """Time ``ours`` against ``peer`` with ``params``: warm-up, then interleaved repeats; medians and ratio."""
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
    return {"ours": {"label": cfg["ours"].get("label", "ours"), "median_s": med["ours"], "times_s": times["ours"]},
            "peer": {"label": cfg["peer"].get("label", "peer"), "median_s": med["peer"], "times_s": times["peer"]},
            "ratio_peer_over_ours": med["peer"] / med["ours"]}


def _cases_markdown(result: dict[str, Any], per: str | None) -> str:
    unit = f"ms per {per.rstrip('s')}" if per else "median s"
    lines = [f"# {result['name']}", "", result["description"], "",
             f"| case | ours ({unit}) | peer ({unit}) | peer / ours |", "|---|---|---|---|"]
    for row in result["cases"]:
        key = "per_unit_ms" if per else "median_s"
        fmt = ".2f" if per else ".4f"
        lines.append(f"| {row['case']} ({row['ours']['label']} vs {row['peer']['label']}) | "
                     f"{row['ours'][key]:{fmt}} | {row['peer'][key]:{fmt}} | **{row['ratio_peer_over_ours']:.2f}x** |")
    goal = f" Goal: {result['goal']}." if result.get("goal") else ""
    lines += ["", f"Medians of {result['repeats']} interleaved repeats after {result['warmup']} warm-up; "
              f"peer / ours > 1 means archlab is faster.{goal} Machine: {result['machine']}, {result['date']}.", ""]
    return "\n".join(lines)


def _plot_cases(result: dict[str, Any], plot: dict[str, Any], path: Path) -> None:
    """Time of both sides against a case parameter (``plot.x``), log-log, with an O(x) guide line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "per_unit_ms" if result["cases"][0].get("per") else "median_s"
    xs = [row["params"][plot["x"]] for row in result["cases"]]
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for side, marker in (("ours", "o"), ("peer", "s")):
        ys = [row[side][key] for row in result["cases"]]
        ax.plot(xs, ys, marker=marker, label=result["cases"][0][side]["label"])
    ours = [row["ours"][key] for row in result["cases"]]
    ax.plot(xs, [ours[-1] * x / xs[-1] for x in xs], "k:", lw=1, label="linear in x (guide)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(plot.get("xlabel", plot["x"]))
    ax.set_ylabel(plot.get("ylabel", "ms" if key == "per_unit_ms" else "s"))
    ax.set_title(plot.get("title", result["name"]))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ sweeps
_MEMORY_PROBE = """
import importlib.util, json, sys
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])  # kB
path, name, params = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
spec = importlib.util.spec_from_file_location("archlab_bench_probe", path)
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
fn = getattr(mod, name)(**params)
with open("/proc/self/clear_refs", "w") as fh:  # reset the high-water mark (VmHWM) to the current RSS
    fh.write("5")
before = status("VmRSS")
fn()
print(json.dumps({"peak_extra_mib": (status("VmHWM") - before) / 1024}))
"""


def _peak_memory(spec_path: Path, target: str, params: dict[str, Any]) -> float:
    """Extra peak resident memory (MiB) of one call, measured in a fresh process: the high-water mark
    during the call (reset after setup) minus the resident size before it. CPU tensors have no allocator
    statistics, so the process high-water mark is the honest measure (Linux /proc)."""
    import subprocess
    import sys

    file, name = target.split(":", 1)
    res = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str((spec_path.parent / file).resolve()), name,
                          json.dumps(params)], capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        raise ArchlabError(f"memory probe of {target} failed: {res.stderr.strip().splitlines()[-1:]}")
    return float(json.loads(res.stdout.strip().splitlines()[-1])["peak_extra_mib"])


def run_sweep(path: Path, cfg: dict[str, Any], out_dir: Path, repeats: int | None,
              log: Any = print, update_results: bool = False) -> dict[str, Any]:
    """``mode = "sweep"``: several ``[[variants]]`` of archlab (no peer) timed over ``[[cases]]``,
    interleaved within each case; with ``memory = true`` also the peak memory of one call of each
    (fresh process per variant and case). Table + log-log plot of time (and memory) against ``plot.x``."""
    variants, cases = cfg.get("variants"), cfg.get("cases")
    if not isinstance(variants, list) or not variants or not all(
            isinstance(v, dict) and isinstance(v.get("target"), str) and isinstance(v.get("name"), str)
            for v in variants):
        raise ArchlabError(f"{path}: a sweep needs [[variants]] tables with name and target")
    if not isinstance(cases, list) or not cases:
        raise ArchlabError(f"{path}: a sweep needs [[cases]]")
    params = cfg.get("params", {})
    warmup = int(cfg.get("warmup", 1))
    repeats = int(cfg.get("repeats", 3) if repeats is None else repeats)
    rows = []
    for case in cases:
        case_params = {**params, **case.get("params", {})}
        skip = set(case.get("skip", []))
        active = [v for v in variants if v["name"] not in skip]
        log(f"case {case['name']}: {', '.join(v['name'] for v in active)}")
        fns = {v["name"]: _load_factory(path, v["target"])(**case_params) for v in active}
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        times: dict[str, list[float]] = {k: [] for k in fns}
        for i in range(repeats):
            order = list(fns) if i % 2 == 0 else list(reversed(fns))
            for k in order:
                t0 = time.perf_counter()
                fns[k]()
                times[k].append(time.perf_counter() - t0)
        del fns
        row: dict[str, Any] = {"case": case["name"], "params": case_params, "variants": {}}
        for v in active:
            entry = {"median_ms": 1000 * statistics.median(times[v["name"]]),
                     "times_s": times[v["name"]]}
            if cfg.get("memory"):
                entry["peak_extra_mib"] = _peak_memory(path, v["target"], case_params)
            row["variants"][v["name"]] = entry
        rows.append(row)
    result = {"name": cfg["name"], "description": cfg.get("description", ""), "params": params, "cases": rows,
              "variants": [v["name"] for v in variants], "warmup": warmup, "repeats": repeats,
              "machine": machine_description(), "date": time.strftime("%Y-%m-%d")}
    names = result["variants"]
    lines = [f"# {cfg['name']}", "", result["description"], "",
             "| case | " + " | ".join(f"{n} (ms)" for n in names) + " |", "|---|" + "---|" * len(names)]
    for row in rows:
        cells = [f"{row['variants'][n]['median_ms']:.2f}" if n in row["variants"] else "—" for n in names]
        lines.append(f"| {row['case']} | " + " | ".join(cells) + " |")
    if cfg.get("memory"):
        lines += ["", "Extra peak memory of one call (MiB, process high-water mark, fresh process):", "",
                  "| case | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for row in rows:
            cells = [f"{row['variants'][n]['peak_extra_mib']:.1f}" if n in row["variants"] else "—" for n in names]
            lines.append(f"| {row['case']} | " + " | ".join(cells) + " |")
    lines += ["", f"Medians of {repeats} interleaved repeats after {warmup} warm-up. "
              f"Machine: {result['machine']}, {result['date']}.", ""]
    md = "\n".join(lines)
    plot = None
    if isinstance(cfg.get("plot"), dict):
        plot = functools.partial(_plot_sweep, result, cfg["plot"], bool(cfg.get("memory")))
    _write_outputs(out_dir, cfg["name"], result, md, update_results, plot, log)
    return result


def _plot_sweep(result: dict[str, Any], plot: dict[str, Any], memory: bool, path: Path) -> None:
    """Time (and memory) of every variant against ``plot.x``, log-log, with O(x) and O(x^2) guides."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("median_ms", plot.get("ylabel", "ms per call"))]
    if memory:
        panels.append(("peak_extra_mib", "extra peak memory (MiB)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.4), squeeze=False)
    for ax, (key, ylabel) in zip(axes[0], panels, strict=True):
        for name in result["variants"]:
            pts = [(row["params"][plot["x"]], row["variants"][name][key]) for row in result["cases"]
                   if name in row["variants"] and row["variants"][name][key] > 0]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=name)
        xs = [row["params"][plot["x"]] for row in result["cases"]]
        ys = [v[key] for row in result["cases"] for v in row["variants"].values() if v[key] > 0]
        if ys:
            x0, y0 = xs[-1], max(ys)
            ax.plot(xs, [y0 * (x / x0) for x in xs], "k:", lw=1, label="O(n) guide")
            ax.plot(xs, [y0 * (x / x0) ** 2 for x in xs], "k--", lw=1, label="O(n²) guide")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(plot.get("xlabel", plot["x"]))
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_title(plot.get("title", result["name"]))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_custom(path: Path, cfg: dict[str, Any], out_dir: Path, log: Any,
               update_results: bool = False) -> dict[str, Any]:
    """A spec whose comparison is not "time a callable" (e.g. whole RL training runs with returns):
    ``run = "file.py:function"`` gets ``params`` and ``log`` and returns ``(result dict, markdown)``;
    the result gets the machine and date and lands in ``<out_dir>/<name>.{json,md}`` like any other."""
    for key in ("name", "run"):
        if not isinstance(cfg.get(key), str):
            raise ArchlabError(f"{path}: a custom bench needs string keys name and run (\"file.py:function\")")
    missing = _missing(cfg.get("requires", []))
    if missing:
        raise ArchlabError(f"bench {cfg['name']}: skipped, missing peer package(s): {', '.join(missing)}")
    result, md = _load_factory(path, cfg["run"])(cfg.get("params", {}), log)
    result.update({"name": cfg["name"], "description": cfg.get("description", ""), "goal": cfg.get("goal"),
                   "machine": machine_description(), "date": time.strftime("%Y-%m-%d")})
    md = f"# {cfg['name']}\n\n{result['description']}\n\n{md}\nMachine: {result['machine']}, {result['date']}.\n"
    _write_outputs(out_dir, cfg["name"], result, md, update_results, log=log)
    return result
