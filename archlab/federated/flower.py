"""Flower as the transport of the federated rounds loop (``loop.backend = "flower-sim"`` / ``"flower"``).

archlab keeps the federated *math* in :mod:`archlab.train.rounds`: the client sampler, the weights
``p_k``, DP-FedAvg's clipping and noise and the server optimizer all run in the loop, exactly as with
``backend = "inprocess"``. Flower only carries the messages of a round:

    server (ServerApp)                                   node (ClientApp)
    for k in S_t:  Message("train", dst = node(k)) --->  {global state x_t, k's own tensors, k, t, lr, seed,
                                                          recipe}
                                                         Federated(recipe).train_remote_client(t, k, lr, x_t, ...)
                   <--- reply                            {local state w_k (or packed update), steps, summed loss}
    delta <- sum_k p_k (w_k - x_t);  x_{t+1} <- server_optimizer(x_t, delta)          (archlab, unchanged)

Per-client state: SCAFFOLD's ``c``, ``c_i`` and FedPer's head stay with the server and travel in client ``k``'s
message; with compression the node packs the update (top-k keeps its residual in the node's ``Context.state``,
which a ``query`` message collects for checkpoints); per-client accuracies come from ``evaluate`` messages.

A node rebuilds the run from the recipe it receives (its dataset, the seeded partition, the model) once
per process and then trains whichever logical client ``k`` the server names, with the batches seeded by
``(seed, t, k)``; so with the same seed the global model after R rounds is the in-process one, up to
float rounding (tests/test_federated_flower.py and tests/test_federated_flower_state.py check <= 1e-6).

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

import numpy as np
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
NODE_WAIT = 120.0
"""Seconds the first message waits for the expected SuperNodes to connect."""

Tensors = dict[str, torch.Tensor]
Result = tuple[Tensors, int, float, Tensors | None]
"""What a node sends back for one client: its local state (with compression: the tensors that are not
averaged), the steps it took, the summed loss, and with compression its packed update."""


def require_flwr(backend: str) -> None:
    if ClientApp is None:
        raise ArchlabError(FLWR_MISSING.format(backend))


def client_app() -> ClientApp:
    """The node side (:data:`archlab.flower_apps.client_app`), looked up by name like Flower's ``clientapp``
    key: it rebuilds runs from recipes, which sit above this module."""
    import importlib

    return importlib.import_module("archlab.flower_apps").client_app


# ---------------------------------------------------------------------------------------------- server side

def _wait_for_nodes(grid: Grid, expected: int, wait: float) -> list[int]:
    """The SuperNodes connected to ``grid``, sorted, once at least ``expected`` are (within ``wait`` seconds: a
    simulation registers its nodes while its ServerApp already runs)."""
    deadline = time.monotonic() + wait
    while len(nodes := sorted(grid.get_node_ids())) < expected and time.monotonic() < deadline:
        time.sleep(0.2)
    if not nodes:
        raise ArchlabError("loop.backend: no Flower SuperNode is connected to the SuperLink")
    return nodes


def _exchange(grid: Grid, messages: list[Message], what: str, allow_missing: bool = False,
              one_per_node: bool = False) -> list[Message]:
    """Send ``messages`` and return the replies (one clear error for a failed or silent node; with
    ``allow_missing`` the replies that arrived without error: the others count as dropped out).

    ``one_per_node``: the messages write the node's ``Context.state``, so no node gets a second message before it
    answered the first. (Flower's Simulation Engine runs a node's messages on several workers at once, each on a
    copy of the node's context, and keeps the last copy written: two clients' concurrent writes would lose one.)"""
    if one_per_node:
        waves: list[list[Message]] = []
        seen: dict[int, int] = {}
        for msg in messages:
            i = seen[msg.metadata.dst_node_id] = seen.get(msg.metadata.dst_node_id, -1) + 1
            if i == len(waves):
                waves.append([])
            waves[i].append(msg)
        return [r for wave in waves for r in _exchange(grid, wave, what, allow_missing)]
    replies = list(grid.send_and_receive(messages, timeout=ROUND_TIMEOUT))
    if allow_missing:
        return [r for r in replies if not r.has_error()]
    for reply in replies:
        if reply.has_error():
            raise ArchlabError(f"a Flower node failed in {what}: {reply.error.reason[:500]}")
    if len(replies) < len(messages):
        raise ArchlabError(f"{what}: {len(messages) - len(replies)} of {len(messages)} messages got no answer "
                           f"within {ROUND_TIMEOUT:g} s")
    return replies


def _by_client(replies: list[Message], clients: list[int], what: str) -> dict[int, Message]:
    """The replies of client messages, by the client they name (``metrics.client``)."""
    out = {int(r.content["metrics"]["client"]): r for r in replies}
    if sorted(out) != sorted(clients):
        raise ArchlabError(f"{what}: the nodes answered for clients {sorted(out)[:10]}, not {sorted(clients)[:10]}")
    return out


class Transport:
    """The messages of a run over a Flower grid. Client ``k`` goes to node ``k mod N`` of the sorted node ids;
    when nodes keep client state (top-k's residuals in the node's Flower context) the list is fixed at the first
    message, so a node keeps the state of the same clients all run long, and a run whose node has left fails."""

    expected_nodes = 1
    """How many nodes the first message waits for (up to ``NODE_WAIT`` seconds)."""

    def __init__(self, recipe: Recipe, seed: int) -> None:
        self.recipe_toml, self.seed = recipe.to_toml(), seed
        self.nodes: list[int] = []
        self.sticky = recipe.loop.compression == "topk" and recipe.loop.error_feedback

    def _call(self, job: Callable[[Grid], Any]) -> Any:
        """Run ``job(grid)`` where the grid lives."""
        raise NotImplementedError

    def _node_list(self, grid: Grid) -> list[int]:
        if not self.nodes or not self.sticky:
            self.nodes = _wait_for_nodes(grid, self.expected_nodes, NODE_WAIT)
        elif gone := sorted(set(self.nodes) - set(grid.get_node_ids())):
            raise ArchlabError(f"Flower node(s) {gone[:5]} left the run; they held top-k residuals of their clients "
                               "(resume from the last checkpoint to hand them out again)")
        return self.nodes

    def _client_messages(self, grid: Grid, message_type: str, step: int, clients: list[int], lr: float,
                         global_state: Tensors, payloads: dict[int, Tensors], nodes: list[int] | None = None,
                         extra: dict[int, dict[str, Any]] | None = None) -> list[Message]:
        """One message per client: the global state, the client's own tensors (SCAFFOLD's variates, FedPer's head,
        a residual restored from a checkpoint) and {recipe, seed, round, client, lr} (plus ``extra[k]``)."""
        nodes = nodes or self._node_list(grid)
        arrays = ArrayRecord({k: v.detach().cpu() for k, v in global_state.items()})
        messages = []
        for k in clients:
            cfg = ConfigRecord({"recipe": self.recipe_toml, "seed": self.seed, "round": step, "client": k, "lr": lr,
                                **(extra or {}).get(k, {})})
            own = ArrayRecord({n: v.detach().cpu() for n, v in payloads.get(k, {}).items()})
            messages.append(Message(RecordDict({"global": arrays, "client": own, "config": cfg}),
                                    dst_node_id=nodes[k % len(nodes)], message_type=message_type,
                                    group_id=str(step)))
        return messages

    def train(self, step: int, clients: list[int], lr: float, global_state: Tensors,
              payloads: dict[int, Tensors]) -> dict[int, Result]:
        """One ``train`` message per client of round ``step``; the replies by client."""
        def job(grid: Grid) -> dict[int, Result]:
            messages = self._client_messages(grid, "train", step, clients, lr, global_state, payloads)
            out: dict[int, Result] = {}
            replies = _exchange(grid, messages, f"round {step}", one_per_node=self.sticky)
            for k, reply in _by_client(replies, clients, f"round {step}").items():
                m, content = reply.content["metrics"], reply.content
                packed = content["packed"].to_torch_state_dict() if "packed" in content else None
                out[k] = (content["local"].to_torch_state_dict(), int(m["steps"]), float(m["loss"]), packed)
            return out

        return self._call(job)

    def secure_train(self, step: int, clients: list[int], lr: float, global_state: Tensors,
                     payloads: dict[int, Tensors], scales: dict[int, float], clip: float, levels: int,
                     threshold: int) -> tuple[dict[int, Result], np.ndarray, list[int]]:
        """Round ``step`` with secure aggregation (archlab/federated/secagg.py) as four exchanges of messages:

            train                 node: ClientUpdate, encode scales[k] * (w_k - x_t), start the protocol's client k
                                  (its keys and state stay in the node's Context) -> k's public keys
            query.secagg_share    every public key -> k's encrypted shares of its secrets, by recipient
            query.secagg_mask     the shares addressed to k -> y_k, k's masked input
            query.secagg_unmask   the clients whose y arrived -> k's shares of their self masks / of the dropped
                                  clients' mask keys

        The server sees public keys, ciphertexts, masked vectors and shares, never an update. Clients whose node
        does not answer the masking or unmasking step drop out; below ``threshold`` helpers the round fails in one
        line. Returns, by client, (the tensors that are not averaged, steps, summed loss, None), the sum z
        (mod 2^32) of the surviving clients' encoded inputs, and those clients."""
        from .secagg import pack_keys, unmask_sum, unpack_revealed

        def ask(grid: Grid, nodes: list[int], action: str, records: dict[int, dict[str, ConfigRecord]],
                allow_missing: bool) -> dict[int, RecordDict]:
            messages = [Message(RecordDict({"config": ConfigRecord({"client": k, "round": step}), **rec}),
                                dst_node_id=nodes[k % len(nodes)], message_type=f"query.{action}",
                                group_id=str(step)) for k, rec in records.items()]
            what = f"round {step}, secure aggregation ({action})"
            replies = {int(r.content["config"]["client"]): r.content
                       for r in _exchange(grid, messages, what, allow_missing, one_per_node=True)}
            if not allow_missing and sorted(replies) != sorted(records):
                raise ArchlabError(f"{what}: the nodes answered for clients {sorted(replies)[:10]}")
            return replies

        def enough(answered: int, what: str) -> None:
            if answered < threshold:
                raise ArchlabError(f"round {step}: {answered} clients answered the {what} step of secure "
                                   f"aggregation but the threshold is {threshold}; the sum cannot be recovered "
                                   "(too many dropouts)")

        def job(grid: Grid) -> tuple[dict[int, Result], np.ndarray, list[int]]:
            nodes = self._node_list(grid)
            extra = {k: {"secagg_scale": scales[k], "secagg_clip": clip, "secagg_levels": levels} for k in clients}
            messages = self._client_messages(grid, "train", step, clients, lr, global_state, payloads, nodes, extra)
            out: dict[int, Result] = {}
            keys: dict[int, tuple[bytes, bytes]] = {}
            replies = _exchange(grid, messages, f"round {step}", one_per_node=True)
            for k, reply in _by_client(replies, clients, f"round {step}").items():
                m, content = reply.content["metrics"], reply.content
                out[k] = (content["local"].to_torch_state_dict(), int(m["steps"]), float(m["loss"]), None)
                keys[k] = (bytes(content["secagg"]["c"]), bytes(content["secagg"]["s"]))
            key_record = ConfigRecord(pack_keys(keys))
            shares = ask(grid, nodes, "secagg_share",
                         {k: {"keys": key_record, "t": ConfigRecord({"t": threshold})} for k in clients}, False)
            inbox: dict[int, dict[str, bytes]] = {k: {} for k in clients}
            for u, content in shares.items():
                for v, blob in content["shares"].items():
                    inbox[int(v)][str(u)] = blob
            masked = ask(grid, nodes, "secagg_mask",
                         {k: {"keys": key_record, "inbox": ConfigRecord(inbox[k])} for k in clients}, True)
            ys = {k: np.frombuffer(bytes(c["masked"]["y"]), dtype="<u4").astype(np.uint32)
                  for k, c in masked.items()}
            survivors = sorted(ys)
            enough(len(survivors), "masking")
            unmask_ask = {"keys": key_record, "survivors": ConfigRecord({"ids": survivors})}
            helpers = ask(grid, nodes, "secagg_unmask", {k: dict(unmask_ask) for k in survivors}, True)
            enough(len(helpers), "unmasking")
            revealed: dict[int, list[tuple[str, tuple[int, int]]]] = {}
            for content in helpers.values():
                for u, item in unpack_revealed(dict(content["revealed"])).items():
                    revealed.setdefault(u, []).append(item)
            return out, unmask_sum(ys, revealed, keys, threshold), survivors

        return self._call(job)

    def evaluate(self, step: int, clients: list[int], lr: float, global_state: Tensors,
                 payloads: dict[int, Tensors]) -> dict[int, float]:
        """One ``evaluate`` message per client: its accuracy on its held-out examples (personalization)."""
        def job(grid: Grid) -> dict[int, float]:
            messages = self._client_messages(grid, "evaluate", step, clients, lr, global_state, payloads)
            what = "the per-client evaluation"
            replies = _by_client(_exchange(grid, messages, what), clients, what)
            return {k: float(r.content["metrics"]["acc"]) for k, r in replies.items()}

        return self._call(job)

    def collect_residuals(self) -> dict[int, Tensors]:
        """A ``query`` message to every node: the top-k residuals it keeps, by client (for a checkpoint)."""
        def job(grid: Grid) -> dict[int, Tensors]:
            messages = [Message(RecordDict(), dst_node_id=n, message_type="query") for n in self._node_list(grid)]
            out: dict[int, Tensors] = {}
            for reply in _exchange(grid, messages, "collecting the top-k residuals"):
                for key, record in reply.content.array_records.items():
                    out[int(key.removeprefix("residual."))] = record.to_torch_state_dict()
            return dict(sorted(out.items()))

        return self._call(job)

    def close(self) -> None:
        pass


class GridTransport(Transport):
    """Rounds over a Flower grid the caller holds (a deployment's ServerApp)."""

    def __init__(self, grid: Grid, recipe: Recipe, seed: int) -> None:
        super().__init__(recipe, seed)
        self.grid = grid

    def _call(self, job: Callable[[Grid], Any]) -> Any:
        return job(self.grid)


class SimulationTransport(Transport):
    """Flower's Simulation Engine in a background thread; its ServerApp runs the loop's rounds from a queue."""

    def __init__(self, recipe: Recipe, seed: int, nodes: int) -> None:
        from flwr.simulation import run_simulation

        super().__init__(recipe, seed)
        self.expected_nodes = nodes
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
        deadline = time.monotonic() + ROUND_TIMEOUT + NODE_WAIT + 120  # the first waits for Ray
        while True:
            if time.monotonic() > deadline:
                raise ArchlabError(f"loop.backend 'flower-sim': no answer within {ROUND_TIMEOUT + NODE_WAIT + 120:g} s")
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
