"""The ``archlab`` command: list, info, train, eval, generate, reproduce, bench.

The CLI only wires recipe -> registry -> loop; user mistakes print one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

from .errors import ArchlabError, NonFiniteLoss

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        print(f"archlab: error: {message} (see `archlab {self.prog.split()[-1]} --help`)"
              if " " in self.prog else f"archlab: error: {message} (see `archlab --help`)", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="archlab", description="Verified, reproduced and benchmarked ML architectures.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("list", help="registered models and algorithms (or loops, datasets) with descriptions")
    s.add_argument("family", nargs="?", help="only this family (e.g. classic, rl), or `loops` or `datasets`")

    sub.add_parser("info", help="versions, device, threads, data folder, optional extras")

    s = sub.add_parser("train", help="train a recipe into a run directory")
    s.add_argument("recipe", help="recipe TOML file")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, e.g. --set optim.lr=0.01 (repeatable)")
    s.add_argument("--out", help="run directory (default: runs/<recipe>-s<seed>-<time>)")
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], help="overrides train.device")
    s.add_argument("--seed", type=int, help="overrides the recipe seed")
    s.add_argument("--resume", action="store_true", help="continue --out (or the newest run of this recipe)")
    s.add_argument("--nproc", type=int, default=1, help="data-parallel worker processes (torch.distributed)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar / progress lines")

    s = sub.add_parser("eval", help="re-evaluate the saved model of a run directory")
    s.add_argument("run_dir")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="change the run's recipe for this evaluation, e.g. --set data.name=omniglot_runs")

    _add_command_modules(sub, COMMAND_MODULES[:2])  # probe, sample, interpolate after eval in --help

    s = sub.add_parser("generate", help="continue a prompt with the language model of a run directory")
    s.add_argument("run_dir")
    s.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    s.add_argument("--tokens", type=int, default=200, help="tokens to generate (default 200)")
    s.add_argument("--temperature", type=float, default=1.0, help="softmax temperature; 0: greedy")
    s.add_argument("--top-k", type=int, help="sample among the K most likely tokens only")
    s.add_argument("--top-p", type=float, help="sample within the nucleus of probability P only")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    s.add_argument("--compile", action="store_true",
                   help="decode through a torch.compile'd one-token step (GPT; compiles for a few seconds first)")

    s = sub.add_parser("rollout", help="play the trained policy of an RL run directory (or saved agent)")
    s.add_argument("run_dir")
    s.add_argument("--episodes", type=int, default=5, help="episodes to play (default 5)")
    s.add_argument("--gif", help="write the rendered frames to this animated GIF")
    s.add_argument("--fps", type=int, default=30, help="GIF frames per second (default 30)")
    s.add_argument("--seed", type=int, default=0, help="environment seed")
    s.add_argument("--stochastic", action="store_true", help="sample actions instead of the deterministic policy")

    s = sub.add_parser("reproduce", help="run recipes over seeds and compare with published targets")
    s.add_argument("suite", nargs="*", default=["quick"], help="quick | full | FAMILY | RECIPE ... (default quick)")
    s.add_argument("--suite", dest="suite_opt", action="append", help="same as the positional form")
    s.add_argument("--seeds", type=int, help="use seeds 0..N-1 instead of each recipe's own seeds")
    s.add_argument("--jobs", type=int, help="runs at a time (default: one per CPU core)")
    s.add_argument("--out", help="report folder (default: reports/<suite>)")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key in every recipe (e.g. train.device=cuda)")

    s = sub.add_parser("bench", help="time archlab against a peer library, side by side")
    s.add_argument("spec", help="bench spec name (benchmarks/<name>.toml) or path")
    s.add_argument("--repeats", type=int)
    s.add_argument("--out", help="results folder (default reports/bench/<spec>)")
    s.add_argument("--update-results", action="store_true", help="also overwrite the committed benchmarks/results/")

    _add_command_modules(sub, COMMAND_MODULES[2:])
    return p


# Commands that live beside their family: each module has ``add_parser(sub)``, which gives every
# subcommand it adds ``set_defaults(run=handler)``; a new command is one line here.
COMMAND_MODULES = [
    "archlab.train.probe",
    "archlab.train.pictures",  # sample, interpolate
    "archlab.search.tune",
    "archlab.search.cv",
    "archlab.search.nasbench",
    "archlab.toolbox.command",  # ensemble, ensemble-train
    "archlab.explain.command",
    "archlab.compress.command",
    "archlab.export",
    "archlab.federated.command",
]


def _add_command_modules(sub: Any, modules: list[str]) -> None:
    import importlib

    for name in modules:
        importlib.import_module(name).add_parser(sub)


def cmd_list(args: argparse.Namespace) -> int:
    if args.family == "loops":
        return _list_loops()
    if args.family == "datasets":
        from .data.registry import DATASETS

        rows = [(e.name, e.family, e.description) for e in DATASETS.entries()]
    else:
        from .registry import entries

        rows = [(e.name, e.family, e.description) for e in entries(args.family)]
    width = max(len(r[0]) for r in rows)
    fam_w = max(len(r[1]) for r in rows)
    for name, family, desc in rows:
        print(f"{name:<{width}}  {family:<{fam_w}}  {desc}")
    return 0


def _list_loops() -> int:
    """Every loop: its description, the tables it reads, its [loop] keys and its named optimizers."""
    import dataclasses

    from .engine.loop import LOOPS
    from .registry import first_line

    for e in LOOPS.entries():
        cls = e.obj
        tables = [cls.model_table, *(["data"] if cls.uses_data else []), *cls.tables]
        print(f"{e.name}: {e.description}")
        print(f"    tables: {', '.join(f'[{t}]' for t in tables)}; optimizers: "
              f"{', '.join(cls.trainables) or 'none ([optim] not used)'}; monitor default: {cls.monitor[0]}")
        for f in dataclasses.fields(cls.Config):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            doc = first_line(_field_doc(cls.Config, f.name))
            print(f"    loop.{f.name} = {default!r}  {doc}")
    return 0


def _field_doc(cls: type, name: str) -> str:
    """The docstring under a dataclass field (the string literal that follows it in the source of the class
    or of the base class that declares the field)."""
    import ast
    import inspect
    import textwrap

    for klass in cls.__mro__[:-1]:
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body
        for node, nxt in zip(body, body[1:], strict=False):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)):
                return str(nxt.value.value)
    return ""


def cmd_info(args: argparse.Namespace) -> int:
    import platform

    import torch

    from . import __version__
    from .data import data_root

    print(f"archlab   {__version__}")
    print(f"python    {platform.python_version()} ({sys.executable})")
    print(f"torch     {torch.__version__}")
    if torch.cuda.is_available():
        print(f"device    cuda: {torch.cuda.get_device_name(0)} (+ cpu)")
    else:
        print("device    cpu (no CUDA GPU)")
    print(f"threads   {torch.get_num_threads()} torch threads, {os.cpu_count()} CPU cores")
    bf16 = torch.backends.mkldnn.is_available()
    print(f"cpu bf16  {'oneDNN available' if bf16 else 'no oneDNN'}")
    print(f"data      {data_root()}  (set ARCHLAB_DATA to change)")
    extras = ["gymnasium", "tensorboard", "mnist1d", "scipy", "sklearn", "transformers", "torch_geometric",
              "stable_baselines3"]
    have = [m for m in extras if importlib.util.find_spec(m) is not None]
    missing = [m for m in extras if m not in have]
    print(f"extras    installed: {', '.join(have) or '-'}; not installed: {', '.join(missing) or '-'}")
    return 0


def _newest_run(recipe_name: str) -> Path:
    runs = sorted(Path("runs").glob(f"{recipe_name}-s*"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise ArchlabError(f"--resume: no earlier run of {recipe_name} under runs/; pass --out RUN_DIR")
    return runs[-1]


def _check_out(out: Path) -> None:
    """An --out path the file system can hold: no NUL byte, no over-long name."""
    text = str(out)
    if "\0" in text or not text.isprintable():
        raise ArchlabError(f"--out {text[:80]!r}: a folder name must be printable (no NUL or control characters)")
    if len(text) > 4000 or any(len(part) > 255 for part in out.parts):
        raise ArchlabError(f"--out {text[:80]!r}...: path too long (at most 255 characters per folder name)")
    if out.exists() and not out.is_dir():
        raise ArchlabError(f"--out {out} is a file, not a directory")


def cmd_train(args: argparse.Namespace) -> int:
    from . import recipe as recipe_mod
    from .engine.distributed import check_nproc, launch, launched_by_torchrun, shutdown
    from .engine.driver import Interrupted
    from .engine.seed import check_seed
    from .runner import RECIPE, default_run_dir, train

    out = Path(args.out) if args.out else None
    if out is not None:
        _check_out(out)
    if args.resume:
        # A resumed run continues with its own resolved recipe (same overrides, same seed): settings that
        # would change what the run computes cannot be changed half-way.
        if args.overrides or args.seed is not None:
            raise ArchlabError("--resume continues a run with its own recipe and seed; --set and --seed cannot "
                               "change them (start a new run with another --out instead)")
        recipe = recipe_mod.load(args.recipe)
        out = out or _newest_run(recipe.name)
        if not (out / RECIPE).is_file():
            raise ArchlabError(f"--resume: {out} is not a run directory (no {RECIPE})")
        recipe = recipe_mod.load(out / RECIPE)
    else:
        recipe = recipe_mod.load(args.recipe, args.overrides)
    seed = check_seed(args.seed if args.seed is not None else recipe.seed)
    check_nproc(args.nproc)
    if args.nproc > 1 and not launched_by_torchrun():
        out = out or default_run_dir(recipe, seed)
        argv = [a for a in sys.argv[1:]]
        argv = _strip_option(argv, "--nproc")
        argv = _strip_option(argv, "--out") + ["--out", str(out)]
        return launch(args.nproc, argv)
    try:
        summary = train(recipe, out=out, seed=seed, device=args.device, resume=args.resume,
                        progress=not args.no_progress)
    except Interrupted as exc:
        print(f"archlab: interrupted after step {exc.step}; checkpoint {exc.path}. Continue with: "
              f"archlab train {args.recipe} --out {Path(exc.path).parents[1] if exc.path else out} --resume",
              file=sys.stderr)
        return 130
    except NonFiniteLoss as exc:
        print(f"archlab: training stopped: {exc}", file=sys.stderr)
        return 1
    finally:
        shutdown()
    if os.environ.get("RANK", "0") != "0":
        return 0
    metrics = " ".join(f"{k}={v:.4f}" if isinstance(v, float) and not v.is_integer() else f"{k}={v:g}"
                       for k, v in summary["metrics"].items())
    print(f"{summary['recipe']} (seed {summary['seed']}): {metrics}  [{summary['steps']} steps, "
          f"{summary['wall_s']:.1f} s, {summary['status']}]")
    if summary["expect"]:
        e = summary["expect"]
        if summary["achieved"] is None:  # summary.json says passed: false; the recipe names a metric nobody reports
            raise ArchlabError(f"expect.metric: {e['metric']!r} is not a metric of this run; "
                               f"metrics: {', '.join(summary['metrics'])}")
        verdict = "met" if summary["passed"] else "NOT met"
        print(f"expect {e['metric']} {recipe.expect.describe()} ({e['source']}): {verdict} "
              f"(achieved {summary['achieved']:.4f}; one seed — `archlab reproduce` averages {len(e['seeds'])})")
    run_dir = out if out is not None else Path(summary.get("run_dir", ""))
    print(f"run directory: {run_dir}")
    return 0


def _strip_option(argv: list[str], name: str) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == name:
            skip = True
            continue
        if a.startswith(name + "="):
            continue
        out.append(a)
    return out


def cmd_eval(args: argparse.Namespace) -> int:
    from .runner import evaluate

    metrics = evaluate(args.run_dir, args.device, args.overrides)
    print(json.dumps(metrics, indent=2))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from .train.lm import generate_from_run

    text = generate_from_run(args.run_dir, args.prompt, args.tokens, temperature=args.temperature,
                             top_k=args.top_k, top_p=args.top_p, seed=args.seed, device=args.device,
                             compile=args.compile)
    print(text)
    return 0


def cmd_rollout(args: argparse.Namespace) -> int:
    from .rl.rollout import rollout

    rollout(args.run_dir, args.episodes, args.gif, seed=args.seed, deterministic=not args.stochastic, fps=args.fps)
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    import time

    from .reproduce import reproduce

    suite = args.suite_opt or args.suite
    label = "-".join(Path(s).stem for s in suite)
    out = Path(args.out) if args.out else Path("reports") / f"{label}-{time.strftime('%Y%m%d-%H%M%S')}"
    _, code = reproduce(suite, out, seeds=args.seeds, jobs=args.jobs,
                        extra=[x for o in args.overrides for x in ("--set", o)])
    return code


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    run_bench(args.spec, Path(args.out) if args.out else None, args.repeats, update_results=args.update_results)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = getattr(args, "run", None) or {
        "list": cmd_list, "info": cmd_info, "train": cmd_train, "eval": cmd_eval, "reproduce": cmd_reproduce,
        "bench": cmd_bench, "generate": cmd_generate, "rollout": cmd_rollout}[args.command]
    try:
        return handler(args)
    except ArchlabError as exc:
        from .engine.distributed import report_to_launcher

        if not report_to_launcher(exc):  # a --nproc worker leaves it to the launcher to print once
            print(f"archlab: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("archlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
