"""``archlab federate serve|client|run``: a Flower deployment of a federated recipe (``loop.backend = "flower"``).

    # machine A (the server): a SuperLink; its HTTP port (8000) must be reachable from the nodes
    archlab federate serve --host 0.0.0.0
    # machines B, C, ...: one SuperNode each
    archlab federate client --superlink A:8000
    # anywhere that reaches A:8000: submit the run
    archlab federate run recipes/federated/fedavg_mnist_2nn_iid.toml --superlink A:8000 --out runs/fed_flower

``serve`` and ``client`` replace themselves by Flower's ``flower-superlink`` / ``flower-supernode`` (Flower
1.42 serves its Fleet, Control and runtime APIs on one HTTP port; ``--insecure``: for a trusted network;
Flower's own TLS and node authentication flags apply when they are run directly).
``run`` writes a minimal Flower App (a ``pyproject.toml`` naming :data:`archlab.flower_apps.server_app`
and ``client_app``) and a Flower configuration pointing at the SuperLink into a temporary folder, then calls
``flwr run`` and streams the logs until the run ends. The ServerApp runs on the SuperLink's machine and
trains the recipe there (``RECIPE`` and ``--out`` are paths on that machine); every SuperNode needs archlab
with the ``federated`` extra and the recipe's dataset (``ARCHLAB_DATA``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import ArchlabError

APP_TOML = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "archlab-federate"
version = "1.0.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "archlab"

[tool.flwr.app.components]
serverapp = "archlab.flower_apps:server_app"
clientapp = "archlab.flower_apps:client_app"

[tool.flwr.app.config]
recipe = ""
out = ""
seed = -1
"""

CONFIG_TOML = """[superlink]
default = "archlab"

[superlink.archlab]
address = "{address}"
insecure = true
"""


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        raise ArchlabError(f"archlab federate: {name} not found; pip install 'archlab[federated]' (flwr[simulation])")
    return path


def serve(args: argparse.Namespace) -> int:
    cmd = [_tool("flower-superlink"), "--insecure", "--isolation", "subprocess", "--host", args.host,
           "--port", str(args.port), "--database", args.database]
    os.execv(cmd[0], cmd)  # noqa: S606 -- replace this process (a supervisor's kill reaches Flower itself)
    return 0  # pragma: no cover


def client(args: argparse.Namespace) -> int:
    cmd = [_tool("flower-supernode"), "--insecure", "--superlink", args.superlink, "--isolation", "subprocess",
           "--host", "127.0.0.1", "--port", str(args.port)]
    os.execv(cmd[0], cmd)  # noqa: S606
    return 0  # pragma: no cover


def write_app(folder: Path, superlink: str) -> tuple[Path, Path]:
    """A Flower App naming archlab's ServerApp/ClientApp and a Flower home whose default SuperLink is ``superlink``."""
    app, home = folder / "app", folder / "flwr_home"
    app.mkdir(parents=True, exist_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    (app / "pyproject.toml").write_text(APP_TOML)
    (home / "config.toml").write_text(CONFIG_TOML.format(address=superlink))
    return app, home


def run(args: argparse.Namespace) -> int:
    recipe, out = Path(args.recipe).resolve(), Path(args.out).resolve()
    if not args.remote_paths and not recipe.is_file():
        raise ArchlabError(f"archlab federate run: no recipe at {recipe}")
    flwr = _tool("flwr")
    with tempfile.TemporaryDirectory(prefix="archlab-federate-") as tmp:
        app, home = write_app(Path(tmp), args.superlink)
        config = f'recipe="{recipe}" out="{out}" seed={-1 if args.seed is None else args.seed}'
        cmd = [flwr, "run", str(app), "archlab", "--run-config", config, "--stream"]
        done = subprocess.run(cmd, env={**os.environ, "FLWR_HOME": str(home)}, check=False)  # noqa: S603
    if done.returncode:
        raise ArchlabError(f"archlab federate run: flwr run exited with {done.returncode}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("federate", help="run a federated recipe on a Flower deployment (SuperLink + SuperNodes)")
    fsub = s.add_subparsers(dest="federate_cmd", required=True)
    p = fsub.add_parser("serve", help="start a Flower SuperLink (the server side of a deployment)")
    p.set_defaults(run=serve)
    p.add_argument("--host", default="127.0.0.1", help="address the SuperLink listens on (0.0.0.0: all)")
    p.add_argument("--port", type=int, default=8000, help="port SuperNodes and `federate run` connect to (default "
                   "8000)")
    p.add_argument("--database", default=":flwr-in-memory:", help="SuperLink state database (default: in memory)")
    p = fsub.add_parser("client", help="start a Flower SuperNode that trains archlab clients")
    p.set_defaults(run=client)
    p.add_argument("--superlink", default="127.0.0.1:8000", help="the SuperLink, HOST:PORT")
    p.add_argument("--port", type=int, default=9094, help="local port of the ClientApp runtime; one per node on a "
                   "machine (default 9094)")
    p = fsub.add_parser("run", help="submit a recipe (loop.backend is set to 'flower') and stream its logs")
    p.set_defaults(run=run)
    p.add_argument("recipe", help="recipe TOML (a path on the SuperLink's machine)")
    p.add_argument("--superlink", default="127.0.0.1:8000", help="the SuperLink, HOST:PORT")
    p.add_argument("--out", required=True, help="run directory (on the SuperLink's machine)")
    p.add_argument("--seed", type=int, help="seed (default: the recipe's)")
    p.add_argument("--remote-paths", action="store_true", help="RECIPE is on the SuperLink's machine: do not check it")
