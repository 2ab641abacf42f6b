"""Flower's ClientApp and ServerApp for archlab's federated rounds loop (``flwr run`` names them as
``archlab.flower_apps:client_app`` and ``archlab.flower_apps:server_app``; see docs/federated.md).

The transport and the round protocol are in :mod:`archlab.federated.flower`; these entry points rebuild a
run from the recipe they receive, so they sit at the top of the package, beside the CLI.
"""

from __future__ import annotations

import tomllib
from typing import Any

import torch

from .federated.flower import ClientApp, ServerApp, using_grid

if ClientApp is not None:
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.serverapp import Grid

# ---------------------------------------------------------------------------------------------- client side

_WORKERS: dict[tuple[str, int], Any] = {}  # (recipe TOML, seed) -> the Federated loop a node process trains with


def _worker(recipe_toml: str, seed: int) -> Any:
    """The node's copy of the run: the recipe's data, partition and model, built once per process."""
    key = (recipe_toml, seed)
    if key not in _WORKERS:
        from .engine.device import Precision
        from .engine.distributed import DistInfo
        from .engine.loop import Context as LoopContext
        from .recipe import from_dict

        recipe = from_dict(tomllib.loads(recipe_toml))
        recipe.loop.backend = "inprocess"
        recipe.seed = seed
        loop_cls = recipe.loop_class
        data = loop_cls.load_data(recipe)
        dev = torch.device("cpu")
        model = loop_cls.build_model(recipe, data, dev)
        ctx = LoopContext(device=dev, precision=Precision(recipe.train.precision, dev), dist=DistInfo(), seed=seed)
        _WORKERS.clear()  # one run at a time per node process
        _WORKERS[key] = loop_cls(recipe, model, data, ctx)
    return _WORKERS[key]


def train_on_node(content: RecordDict, node_state: RecordDict | None = None) -> RecordDict:
    """The ClientApp's work for one ``train`` message: ClientUpdate of the named client from the sent global
    state and the client's own tensors. Top-k's residual of the client is kept in ``node_state`` (the node's
    Flower context, which persists across the run's messages)."""
    cfg = content["config"]
    loop = _worker(str(cfg["recipe"]), int(cfg["seed"]))
    k = int(cfg["client"])
    key = f"residual.{k}"
    kept = node_state[key].to_torch_state_dict() if node_state is not None and key in node_state else None
    state, steps, loss, packed, residual = loop.train_remote_client(
        int(cfg["round"]), k, float(cfg["lr"]), content["global"].to_torch_state_dict(),
        content["client"].to_torch_state_dict(), kept)
    if residual is not None:
        if node_state is None:
            raise RuntimeError("top-k error feedback needs the node's context to keep the residuals")
        node_state[key] = ArrayRecord(residual)
    secagg = None
    if "secagg_scale" in cfg:  # secure aggregation: the update never leaves the node in the clear
        if node_state is None:
            raise RuntimeError("secure aggregation needs the node's context to keep the protocol's state")
        state, secagg = _secagg_start(loop, k, state, content["global"].to_torch_state_dict(), cfg, node_state)
    out = RecordDict({"local": ArrayRecord(state),
                      "metrics": MetricRecord({"client": k, "steps": steps, "loss": loss})})
    if secagg is not None:
        out["secagg"] = secagg
    if packed is not None:
        out["packed"] = ArrayRecord(packed)
    return out


def _secagg_start(loop: Any, k: int, state: dict[str, torch.Tensor], global_state: dict[str, torch.Tensor],
                  cfg: Any, node_state: RecordDict) -> tuple[dict[str, torch.Tensor], ConfigRecord]:
    """Client ``k``'s first step of secure aggregation: its update scaled and encoded as the in-process loop
    encodes it, a fresh protocol client kept in the node's context; returns the tensors that are not averaged
    (sent in the clear: FedPer's head, integer buffers) and the client's public keys."""
    from .federated.secagg import SecAggClient

    update = loop.body_update(state, global_state)
    client = SecAggClient(k, loop.secagg_encode(update, float(cfg["secagg_scale"]), int(cfg["secagg_levels"])))
    node_state[f"secagg.{k}"] = ConfigRecord(client.to_state())
    c_pk, s_pk = client.advertise()
    return {n: v for n, v in state.items() if n not in update}, ConfigRecord({"c": c_pk, "s": s_pk})


def secagg_on_node(action: str, content: RecordDict, node_state: RecordDict) -> RecordDict:
    """The protocol steps after ``train`` (:meth:`archlab.federated.flower.Transport.secure_train`) for the client
    the message names, from the state its ``train`` message left in the node's context."""
    from .federated.secagg import SecAggClient, pack_revealed, unpack_keys

    k = int(content["config"]["client"])
    key = f"secagg.{k}"
    if key not in node_state:
        raise RuntimeError(f"secure aggregation: this node holds no protocol state of client {k}")
    client = SecAggClient.from_state(dict(node_state[key]))
    keys = unpack_keys(dict(content["keys"]))
    ident = ConfigRecord({"client": k})
    if action == "secagg_unmask":  # the protocol's last step for this client; its state goes
        del node_state[key]
        survivors = {int(u) for u in content["survivors"]["ids"]}
        return RecordDict({"config": ident, "revealed": ConfigRecord(pack_revealed(client.unmask(keys, survivors)))})
    if action == "secagg_share":
        reply = {"shares": ConfigRecord({str(v): blob for v, blob in
                                         client.share_keys(keys, int(content["t"]["t"])).items()})}
    else:  # secagg_mask
        client.inbox = {int(u): bytes(blob) for u, blob in content["inbox"].items()}
        reply = {"masked": ConfigRecord({"y": client.masked_input(keys).astype("<u4").tobytes()})}
    node_state[key] = ConfigRecord(client.to_state())  # the own share (share) or the inbox (mask) it now holds
    return RecordDict({"config": ident, **reply})


def evaluate_on_node(content: RecordDict) -> RecordDict:
    """An ``evaluate`` message: the named client's accuracy on its held-out examples, from the sent global state
    (with its FedPer head; after local fine-tuning with ``personalization = "finetune"``)."""
    cfg = content["config"]
    loop = _worker(str(cfg["recipe"]), int(cfg["seed"]))
    k = int(cfg["client"])
    loop.load_client_payload(k, content["client"].to_torch_state_dict())
    acc = loop.client_accuracy(k, content["global"].to_torch_state_dict(), float(cfg["lr"]))
    return RecordDict({"metrics": MetricRecord({"client": k, "acc": acc})})


if ClientApp is not None:
    client_app = ClientApp()

    @client_app.train()
    def _train(msg: Message, context: Context) -> Message:
        return Message(content=train_on_node(msg.content, context.state), reply_to=msg)

    @client_app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:  # noqa: ARG001 -- Flower's handler signature
        return Message(content=evaluate_on_node(msg.content), reply_to=msg)

    def _secagg_handler(action: str) -> None:
        @client_app.query(action)
        def _step(msg: Message, context: Context) -> Message:
            return Message(content=secagg_on_node(action, msg.content, context.state), reply_to=msg)

    for _action in ("secagg_share", "secagg_mask", "secagg_unmask"):
        _secagg_handler(_action)

    @client_app.query()
    def _query(msg: Message, context: Context) -> Message:
        """The top-k residuals this node keeps, by client (the server's checkpoint asks for them)."""
        kept = {key: rec for key, rec in context.state.array_records.items() if key.startswith("residual.")}
        return Message(content=RecordDict(kept), reply_to=msg)


# --------------------------------------------------------------------------------------- deployment ServerApp

if ServerApp is not None:
    server_app = ServerApp()

    @server_app.main()
    def _serve(grid: Grid, context: Context) -> None:
        """``flwr run``: train the recipe of the run config (``recipe`` = a TOML path on the SuperLink's machine,
        ``out`` = the run directory, ``seed`` (< 0: the recipe's)) with its rounds sent to the connected SuperNodes."""
        from .recipe import load
        from .runner import train

        cfg = context.run_config
        recipe = load(str(cfg["recipe"]), ['loop.backend="flower"'])
        seed = int(cfg.get("seed", -1))
        seed = None if seed < 0 else seed
        with using_grid(grid):
            train(recipe, out=str(cfg["out"]), seed=seed, progress=False)
