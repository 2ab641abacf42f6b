"""Flower as the transport of the federated rounds loop (``loop.backend = "flower-sim"`` / ``"flower"``).

archlab keeps the federated *math* in :mod:`archlab.train.rounds`: the client sampler, the weights
``p_k``, DP-FedAvg's clipping and noise and the server optimizer all run in the loop, exactly as with
``backend = "inprocess"``. Flower only carries the messages of a round:

    server (ServerApp)                                   node (ClientApp)
    for k in S_t:  Message("train", dst = node(k)) --->  {global state x_t, k, t, lr, seed, recipe}
                                                         Federated(recipe).train_client(t, k, lr, x_t)
                   <--- reply                            {local state w_k, steps, summed loss}
    delta <- sum_k p_k (w_k - x_t);  x_{t+1} <- server_optimizer(x_t, delta)          (archlab, unchanged)

A node rebuilds the run from the recipe it receives (its dataset, the seeded partition, the model) once
per process and then trains whichever logical client ``k`` the server names, with the batches seeded by
``(seed, t, k)``; so with the same seed the global model after R rounds is the in-process one, up to
float rounding (tests/test_federated_flower.py checks <= 1e-6 after 2 rounds).

Two transports:

* :class:`SimulationTransport` (``flower-sim``): Flower's Simulation Engine (``flwr.simulation``, Ray)
  runs in a background thread of the training process with ``loop.sim_nodes`` simulated SuperNodes;
  its ServerApp executes the rounds the loop hands it through a queue.
* :class:`GridTransport` (``flower``): a real deployment. ``flwr run`` starts
  ``archlab.flower_apps:server_app`` on the SuperLink; it trains the recipe named in the run config with the
  grid of the SuperLink's SuperNodes (:func:`using_grid`). The nodes run ``archlab.flower_apps:client_app``.
  See docs/federated.md and :mod:`archlab.federated.command` (``archlab federate``).

The apps rebuild runs from recipes, so they live at the top of the package (:mod:`archlab.flower_apps`, beside
the CLI); this module finds them by name, as Flower itself does (``module:attribute``).
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ArchlabError

if TYPE_CHECKING:
    from ..recipe import Recipe

try:  # the optional extra ``federated``
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
except ImportError:  # pragma: no cover - exercised only without the extra
    ClientApp = ServerApp = None  # type: ignore[assignment,misc]

FLWR_MISSING = "loop.backend {!r} needs Flower: pip install 'archlab[federated]' (flwr[simulation])"
ROUND_TIMEOUT = 3600.0
"""Seconds the server waits for a round's replies before failing the run."""

Result = tuple[dict[str, torch.Tensor], int, float]
"""What a node sends back for one client: its local state, the steps it took, the summed loss."""


def require_flwr(backend: str) -> None:
    if ClientApp is None:
        raise ArchlabError(FLWR_MISSING.format(backend))


def client_app() -> ClientApp:
    """The node side (:data:`archlab.flower_apps.client_app`), looked up by name like Flower's ``clientapp``
    key: it rebuilds runs from recipes, which sit above this module."""
    import importlib

    return importlib.import_module("archlab.flower_apps").client_app


# ---------------------------------------------------------------------------------------------- server side

def run_round(grid: Grid, recipe_toml: str, seed: int, step: int, clients: list[int], lr: float,
              global_state: dict[str, torch.Tensor], timeout: float | None = None) -> dict[int, Result]:
    """Send one ``train`` message per client (client k to node k mod N, nodes sorted) and collect the replies."""
    timeout = ROUND_TIMEOUT if timeout is None else timeout
    nodes = sorted(grid.get_node_ids())
    if not nodes:
        raise ArchlabError("loop.backend: no Flower SuperNode is connected to the SuperLink")
    arrays = ArrayRecord({k: v.detach().cpu() for k, v in global_state.items()})
    messages, by_id = [], {}
    for k in clients:
        cfg = ConfigRecord({"recipe": recipe_toml, "seed": seed, "round": step, "client": k, "lr": lr})
        msg = Message(RecordDict({"global": arrays, "config": cfg}), dst_node_id=nodes[k % len(nodes)],
                      message_type="train", group_id=str(step))
        messages.append(msg)
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            raise ArchlabError(f"a Flower node failed in round {step}: {reply.error.reason[:500]}")
        by_id[reply.metadata.reply_to_message_id] = reply
    out: dict[int, Result] = {}
    for k, msg in zip(clients, messages, strict=True):
        reply = by_id.get(msg.metadata.message_id)
        if reply is None:
            raise ArchlabError(f"round {step}: client {k}'s node did not answer within {timeout:g} s")
        m = reply.content["metrics"]
        out[k] = (reply.content["local"].to_torch_state_dict(), int(m["steps"]), float(m["loss"]))
    return out


class GridTransport:
    """Rounds over a Flower grid the caller holds (a deployment's ServerApp)."""

    def __init__(self, grid: Grid, recipe: Recipe, seed: int) -> None:
        self.grid, self.recipe_toml, self.seed = grid, recipe.to_toml(), seed

    def train(self, step: int, clients: list[int], lr: float, global_state: dict[str, torch.Tensor]
              ) -> dict[int, Result]:
        return run_round(self.grid, self.recipe_toml, self.seed, step, clients, lr, global_state)

    def close(self) -> None:
        pass


class SimulationTransport:
    """Flower's Simulation Engine in a background thread; its ServerApp runs the loop's rounds from a queue."""

    def __init__(self, recipe: Recipe, seed: int, nodes: int) -> None:
        from flwr.simulation import run_simulation

        self.recipe_toml, self.seed = recipe.to_toml(), seed
        self.jobs: queue.Queue[Callable[[Grid], Any] | None] = queue.Queue()
        self.results: queue.Queue[tuple[bool, Any]] = queue.Queue()
        app = ServerApp()

        @app.main()
        def _main(grid: Grid, context: Context) -> None:  # noqa: ARG001 -- Flower's signature
            while (job := self.jobs.get()) is not None:
                try:
                    self.results.put((True, job(grid)))
                except BaseException as exc:  # noqa: BLE001 -- handed to the training thread
                    self.results.put((False, exc))

        backend_config = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                          "init_args": {"num_cpus": nodes, "include_dashboard": False}}

        def _run() -> None:
            try:
                run_simulation(server_app=app, client_app=client_app(), num_supernodes=nodes,
                               backend_config=backend_config)
            except BaseException as exc:  # noqa: BLE001 -- a failed start reaches the waiting round
                self.results.put((False, exc))

        self.thread = threading.Thread(target=_run, name="flower-simulation", daemon=True)
        self.thread.start()

    def _call(self, job: Callable[[Grid], Any]) -> Any:
        self.jobs.put(job)
        deadline = time.monotonic() + ROUND_TIMEOUT + 120  # the first round waits for Ray to start
        while True:
            if time.monotonic() > deadline:
                raise ArchlabError(f"loop.backend 'flower-sim': no answer within {ROUND_TIMEOUT + 120:g} s")
            try:
                ok, value = self.results.get(timeout=1.0)
                break
            except queue.Empty:
                if not self.thread.is_alive():
                    raise ArchlabError("Flower's simulation stopped before the round finished") from None
        if not ok:
            if isinstance(value, ArchlabError):
                raise value
            raise ArchlabError(f"loop.backend 'flower-sim': {type(value).__name__}: {value}") from value
        return value

    def train(self, step: int, clients: list[int], lr: float, global_state: dict[str, torch.Tensor]
              ) -> dict[int, Result]:
        return self._call(lambda grid: run_round(grid, self.recipe_toml, self.seed, step, clients, lr,
                                                 global_state))

    def close(self) -> None:
        if self.thread.is_alive():
            self.jobs.put(None)  # the ServerApp returns; Flower stops its nodes and Ray
            self.thread.join(timeout=120)


_GRID: list[Grid] = []


@contextlib.contextmanager
def using_grid(grid: Grid) -> Iterator[None]:
    """Runs started inside this block with ``loop.backend = "flower"`` send their rounds over ``grid``."""
    _GRID.append(grid)
    try:
        yield
    finally:
        _GRID.pop()


def open_transport(backend: str, recipe: Recipe, seed: int) -> GridTransport | SimulationTransport:
    """The transport of the rounds loop for ``loop.backend``."""
    require_flwr(backend)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    if backend == "flower-sim":
        return SimulationTransport(recipe, seed, recipe.loop.sim_nodes)
    if not _GRID:
        raise ArchlabError("loop.backend = 'flower' trains inside Flower's ServerApp: start a SuperLink and "
                           "SuperNodes and submit the run with `archlab federate run` (docs/federated.md), or use "
                           "loop.backend = 'flower-sim' on one machine")
    return GridTransport(_GRID[-1], recipe, seed)
