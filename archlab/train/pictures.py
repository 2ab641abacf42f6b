"""``archlab sample`` and ``archlab interpolate``: pictures from the generative model of a run directory.

    archlab sample RUN_DIR [--n 64] [--class K] [--truncation PSI] [--guidance W] [--steps S] [--eta E] [--seed K]
                   --out grid.png
    archlab interpolate RUN_DIR [--pairs 4] [--frames 10] [--seed K] --out interp.png   (and interp.gif)

``sample`` draws from the model's prior (VAE: Bernoulli means; DDPM: DDIM with ``--steps`` steps, or
ancestral DDPM over all T steps with ``--ddpm``; DCGAN: G(z); ``--class K`` for class-conditional models,
``--truncation PSI`` for models with the truncation trick, ``--guidance W`` for classifier-free guided
ones). ``interpolate`` walks between the codes of test images (models with an encoder: VAE, autoencoder;
the images come from the run's own dataset, scaled to [0, 1] as its loop did) or between prior draws
(DCGAN), each pair twice: linearly and spherically (rows alternate), and writes the spherical walk of
the first pair as a GIF next to the PNG.
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any

import torch

from ..errors import ArchlabError
from ..models.generative.images import lerp, save_gif, save_grid, slerp


def add_parser(sub: Any) -> None:
    s = sub.add_parser("sample", help="a grid of samples from the generative model of a run directory")
    s.set_defaults(run=run_sample)
    s.add_argument("run_dir")
    s.add_argument("--n", type=int, default=64, help="images (default 64)")
    s.add_argument("--steps", type=int, default=50, help="diffusion models: DDIM steps (default 50)")
    s.add_argument("--eta", type=float, default=0.0, help="diffusion models: DDIM eta (default 0)")
    s.add_argument("--ddpm", action="store_true", help="diffusion models: ancestral DDPM sampling over every step")
    s.add_argument("--class", dest="label", type=int, default=None, help="class-conditional models: the class K")
    s.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guided models (cond_ddpm): the guidance weight w (default 0: none)")
    s.add_argument("--truncation", type=float, default=None,
                   help="models with the truncation trick (stylegan): psi in [0, 1] (1: none, 0: the mean style)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help="PNG file to write")
    s = sub.add_parser("interpolate", help="latent walks (linear and spherical) of a run's generative model")
    s.set_defaults(run=run_interpolate)
    s.add_argument("run_dir")
    s.add_argument("--pairs", type=int, default=4, help="pairs of end points (default 4)")
    s.add_argument("--frames", type=int, default=10, help="images per walk (default 10)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help="PNG file to write (a .gif of the first walk is written beside it)")


def _load(run_dir: str) -> Any:
    from ..registry import load

    model = load(run_dir).eval()
    if not getattr(model, "can_sample", None) and getattr(model, "latent", None) is None:
        raise ArchlabError(f"{run_dir} holds a {type(model).__name__}, not a generative image model")
    return model


def _check_out(out: str) -> Path:
    path = Path(out)
    if path.suffix.lower() != ".png":
        raise ArchlabError(f"--out must name a .png file, got {out}")
    if not path.parent.is_dir():
        raise ArchlabError(f"--out: folder {path.parent} does not exist")
    return path


def run_sample(args: argparse.Namespace) -> int:
    if not 1 <= args.n <= 4096 or not 1 <= args.steps <= 100_000 or not 0 <= args.eta <= 1:
        raise ArchlabError("need 1 <= --n <= 4096, 1 <= --steps <= 100000 and 0 <= --eta <= 1")
    out = _check_out(args.out)
    model = _load(args.run_dir)
    if not getattr(model, "can_sample", False):
        raise ArchlabError(f"a {type(model).__name__} has no prior to sample from; try `archlab interpolate`")
    gen = torch.Generator().manual_seed(args.seed)
    if getattr(model, "schedule", None) is not None:
        if not args.ddpm and args.steps > model.config.num_steps:
            raise ArchlabError(f"--steps {args.steps} is more than the model's num_steps={model.config.num_steps}")
        images = model.sample(args.n, gen, steps=None if args.ddpm else args.steps,
                              sampler="ddpm" if args.ddpm else "ddim", eta=args.eta, **_sample_options(model, args))
        how = "DDPM, every step" if args.ddpm else f"DDIM {args.steps} steps, eta {args.eta:g}"
    else:
        images, how = model.sample(args.n, gen, **_sample_options(model, args)), "prior samples"
    how += f", class {args.label}" if args.label is not None else ""
    how += f", truncation {args.truncation:g}" if args.truncation is not None else ""
    how += f", guidance {args.guidance:g}" if args.guidance is not None else ""
    save_grid(images, out, nrow=min(8, args.n), title=f"{Path(args.run_dir).name}: {how}")
    print(f"wrote {out}")
    return 0


def _sample_options(model: Any, args: argparse.Namespace) -> dict[str, Any]:
    """``labels`` for ``--class``, ``truncation`` for ``--truncation``; one line when the model has no such option."""
    options: dict[str, Any] = {}
    if args.label is not None:
        classes = getattr(model.config, "n_classes", 0)
        if not classes:
            raise ArchlabError(f"--class: a {type(model).__name__} is not class-conditional")
        if not 0 <= args.label < classes:
            raise ArchlabError(f"--class must be in 0..{classes - 1}, got {args.label}")
        options["labels"] = torch.full((args.n,), args.label, dtype=torch.long)
    if args.guidance is not None:
        if getattr(model, "guided_eps", None) is None:
            raise ArchlabError(f"--guidance: a {type(model).__name__} has no classifier-free guidance")
        if not 0 <= args.guidance <= 100:
            raise ArchlabError(f"--guidance must be in [0, 100], got {args.guidance}")
        options["guidance"] = args.guidance
    if args.truncation is not None:
        if not getattr(model, "truncatable", False):
            raise ArchlabError(f"--truncation: a {type(model).__name__} has no truncation trick")
        if not 0 <= args.truncation <= 1:
            raise ArchlabError(f"--truncation must be in [0, 1], got {args.truncation}")
        options["truncation"] = args.truncation
    return options


def _test_images(run_dir: str, n: int, seed: int) -> torch.Tensor:
    """``n`` test images of the run's dataset, scaled to [0, 1] by the training split's range (as the loops do)."""
    from ..data import load_dataset

    path = Path(run_dir) / "recipe.toml"  # the resolved recipe `archlab train` wrote
    try:
        d = tomllib.loads(path.read_text())["data"]
        data = load_dataset(d["name"], d.get("options", {}), d.get("val_fraction", 0.1), d.get("split_seed", 0))
    except (OSError, KeyError, TypeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ArchlabError(f"{path}: cannot read the run's [data] table ({type(exc).__name__}: {exc})") from None
    lo, hi = float(data.train.x.min()), float(data.train.x.max())
    idx = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(seed))[:n]
    return ((data.test.x[idx] - lo) / (hi - lo)).clamp(0, 1)


def run_interpolate(args: argparse.Namespace) -> int:
    if not 1 <= args.pairs <= 64 or not 2 <= args.frames <= 256:
        raise ArchlabError("need 1 <= --pairs <= 64 and 2 <= --frames <= 256")
    out = _check_out(args.out)
    model = _load(args.run_dir)
    if getattr(model, "latent", None) is not None:
        codes, what = model.latent(_test_images(args.run_dir, 2 * args.pairs, args.seed)), "test image codes"
    else:
        codes = torch.randn(2 * args.pairs, model.config.latent_dim, generator=torch.Generator().manual_seed(args.seed))
        what = "prior draws"
    s = torch.linspace(0, 1, args.frames)
    with torch.no_grad():
        rows = [model.decode_images(f(codes[i], codes[i + 1], s))
                for i in range(0, len(codes), 2) for f in (lerp, slerp)]
    save_grid(torch.cat(rows), out, nrow=args.frames,
              title=f"{Path(args.run_dir).name}: {what}, rows alternate linear / spherical")
    gif = save_gif(rows[1], out.with_suffix(".gif"))
    print(f"wrote {out} and {gif}")
    return 0
