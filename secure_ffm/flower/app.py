"""The Flower app: secure-ffm's orchestrator as a ``ServerApp``, its client as a ``ClientApp`` (Flower 1.41 Message API).

``flwr run . <federation>`` (components in ``[tool.flwr.app]`` of pyproject.toml) starts :data:`server_app` on the
SuperLink's side; each SuperNode runs :data:`client_app`. Every request of a round - the hello that binds a node to its
partition, each stage of the aggregation protocol (masking's advertise/share/unmask), the fit request with its
payload, the federated evaluation - is one Flower message whose content is the safe codec's packing
(:mod:`secure_ffm.engine.codec`): the arrays as an ``ArrayRecord`` (``numpy.save`` without pickle), the rest as JSON
text in a ``ConfigRecord``. Nothing is pickled.

Run config (``flwr run . fed --run-config 'config="..." out="..."'``, read by the ServerApp):

``config``
    Path of the run's TOML config (on the server's machine).
``set``
    ``;``-separated ``SECTION.KEY=VALUE`` overrides, as ``secure-ffm train --set``.
``out``
    The run directory the ServerApp writes (on the server's machine).
``timeout``
    Seconds the server waits for the replies of one request (default 600; the hello waits at least 300 s, for cold
    starts); a node silent that long is a dropout.
``stage-timeout``
    The same for the protocol's stages, which train nothing (masking's keys, shares, unmasking); 0: ``timeout``.
``ckks-keys``
    Under CKKS: the server's key file from ``secure-ffm ckks-keys`` (the public context only).

Node config (``flower-supernode --node-config "partition-id=0 num-partitions=3 config='/path/on/the/node.toml'"``):

``partition-id``, ``num-partitions``
    The partition of the configured dataset this node holds (its data never leaves the node); with ``data``, the
    client id the node answers for.
``data``
    The node's own data (a path read like ``data.dataset``: a table of texts, a ``.npz`` file or folder of images, a
    ``.txt`` corpus): the node trains on every example there instead of a partition, and needs none of the server's
    data. Its model is built for the run's data schema (class names, image shape, normalization), which the server
    sends with the hello; labels are matched to the run's classes by name (:mod:`secure_ffm.data.node`).
``ckks-keys``
    Under CKKS: the clients' key file from ``secure-ffm ckks-keys`` (under ``ckks_key_holder = "clients"`` the shared
    secret key; never give it to the server), or the authority's file on the key authority's node.
``signing-key``
    Under masking with ``signatures``: this node's own Ed25519 signing key from ``secure-ffm signing-keys``
    (``client-<partition-id>.key``; never give it to the server); the config's ``peer_keys`` must list its public half.
``role``
    ``authority``: this SuperNode is CKKS's key authority (``ckks_key_holder = "authority"``), a party of its own that
    holds the secret key and decrypts aggregates only; it needs ``config`` and ``ckks-keys``, no partition.
``config``
    The node's own copy of the config. The node's privacy settings (DP, the masking threshold it accepts) must be
    the node's, not the server's: the node loads this file and the server refuses it at the hello unless both
    configs resolve to the same fingerprint. Without it the node runs the server's ``config``/``set`` (loopback
    demos only; a warning says so).

``state-dir``
    A folder on the node where it also keeps its client's private state for each run (``run-<RUN_ID>.state``, mode
    0600): its secret, its count of answers and its DP ledger, so that a SuperNode restarted in the middle of a run
    resumes them instead of starting that run's client afresh (Flower 1.41 keeps ``context.state`` in memory only).
    The file holds the client's secret: it belongs to the node's own disk, as a checkpoint does.

A node keeps its client state and its protocol half of the current round in ``context.state`` (on the node, never
sent): Flower starts a fresh ClientApp process for each message. The protocol half (a round's secrets) is never
written to ``state-dir``: a node restarted in the middle of a round drops out of that round.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from secure_ffm.allocator import keep_freed_memory
from secure_ffm.config import Config, load_config
from secure_ffm.engine.codec import from_bytes, to_bytes
from secure_ffm.run.checkpoint import write_private_bytes
from secure_ffm.transports.remote import AUTHORITY_ROLE, EVALUATE, FIT, HELLO, SIGNING_KEY, STAGE, STATE_DIR_KEY, Link, LinkReply, Packed

log = logging.getLogger(__name__)

MESSAGE_TYPES = {HELLO: "query.hello", STAGE: "query.stage", FIT: "train.fit", EVALUATE: "evaluate.evaluate"}
"""Flower message type of each request kind (``<category>.<action>``)."""
KINDS = {v: k for k, v in MESSAGE_TYPES.items()}
STATE_KEY = "secure_ffm"
"""The ``context.state`` record that holds the node's state between messages."""
SCHEMA_KEY = "secure_ffm_schema"
"""The ``context.state`` record that holds the run's data schema (nodes with data of their own)."""
POLL_SECONDS = 0.2
DEFAULT_TIMEOUT = 600.0
HELLO_TIMEOUT = 300.0
"""The least the server waits for the hello: a node's first message installs the app and imports torch (cold start)."""


# --------------------------------------------------------------------------- records


def to_record(packed: Packed, kind: str) -> RecordDict:
    text, arrays = packed
    record = ArrayRecord(array_dict={k: Array.from_numpy_ndarray(np.ascontiguousarray(v)) for k, v in arrays.items()})
    return RecordDict({"arrays": record, "meta": ConfigRecord({"kind": kind, "json": text})})


def from_record(content: RecordDict) -> tuple[str, Packed]:
    meta = content.config_records.get("meta")
    arrays = content.array_records.get("arrays")
    if meta is None or arrays is None or not isinstance(meta.get("json"), str) or not isinstance(meta.get("kind"), str):
        raise ValueError("the message is not a secure-ffm request (no meta/arrays records)")
    return str(meta["kind"]), (str(meta["json"]), {k: checked_numpy(v) for k, v in arrays.items()})


def checked_numpy(array: Array) -> np.ndarray:
    """A record's array as NumPy, after checking that its ``.npy`` header describes no more bytes than the record holds:
    ``np.load`` allocates what the header declares before it reads, so a 128-byte header declaring 2^40 float64 ended the
    server's run with MemoryError (an audit of 2026-12-07). ValueError otherwise (the node's reply is malformed)."""
    import io

    from numpy.lib import format as npy

    data = array.data
    if not isinstance(data, bytes):
        raise ValueError("an array record holds no bytes")
    stream = io.BytesIO(data)
    try:
        version = npy.read_magic(stream)
        shape, _, dtype = npy.read_array_header_1_0(stream) if version == (1, 0) else npy.read_array_header_2_0(stream)
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(f"an array's .npy header does not read: {error}") from None
    if dtype.hasobject:
        raise ValueError("an array of Python objects cannot cross the wire")
    declared = math.prod(shape) * dtype.itemsize
    if declared != len(data) - stream.tell():
        raise ValueError(f"an array's .npy header declares {declared} bytes, its record holds {len(data) - stream.tell()}")
    return array.numpy()


def overrides(text: str) -> list[str]:
    """``secure-ffm train --set`` overrides from the run config's ``set`` (``;``-separated)."""
    return [part.strip() for part in text.split(";") if part.strip()]


def run_config_value(run_config: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = run_config.get(key, default)
    return default if value == "" else value


# --------------------------------------------------------------------------- server


class FlowerLink(Link):
    """Carries packed requests as Flower messages through the ServerApp's Grid, streaming replies as they arrive."""

    def __init__(
        self, grid: Grid, *, timeout: float = DEFAULT_TIMEOUT, stage_timeout: float | None = None, poll_seconds: float = POLL_SECONDS
    ) -> None:
        """``timeout``: seconds to wait for a request's replies (training, evaluation); ``stage_timeout``: for the protocol's
        stages, which do no training (default: ``timeout``); the hello waits at least :data:`HELLO_TIMEOUT`."""
        self.grid = grid
        self.timeout = float(timeout)
        self.stage_timeout = float(stage_timeout) if stage_timeout else self.timeout
        self.poll_seconds = float(poll_seconds)

    def nodes(self) -> list[int]:
        return sorted(int(n) for n in self.grid.get_node_ids())

    def request(self, kind: str, bodies: Mapping[int, Packed]) -> Iterator[LinkReply]:
        messages = [Message(to_record(body, kind), dst_node_id=node, message_type=MESSAGE_TYPES[kind]) for node, body in bodies.items()]
        pending = set(self.grid.push_messages(messages))
        del messages
        wait = {HELLO: max(self.timeout, HELLO_TIMEOUT), STAGE: self.stage_timeout}.get(kind, self.timeout)
        deadline = time.monotonic() + wait
        while pending and time.monotonic() < deadline:
            replies = list(self.grid.pull_messages(pending))
            for reply in replies:
                pending.discard(reply.metadata.reply_to_message_id)
                node = int(reply.metadata.src_node_id)
                if reply.has_error():
                    yield LinkReply(node, error=str(reply.error.reason))
                    continue
                try:
                    _, packed = from_record(reply.content)
                except (ValueError, KeyError, TypeError) as error:
                    yield LinkReply(node, error=f"malformed reply: {error}")
                    continue
                yield LinkReply(node, packed)
            if pending and not replies:
                time.sleep(self.poll_seconds)
        if pending:
            log.warning("%d node(s) did not answer the %s request within %.0f s", len(pending), kind, wait)


server_app = ServerApp()


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    """Load the run's config, bind the nodes, run every round through them and write the run directory."""
    from secure_ffm.run.deployment import server_run

    run_config = context.run_config
    config_path = run_config_value(run_config, "config")
    out = run_config_value(run_config, "out")
    if not config_path or not out:
        raise ValueError('the run config needs config="PATH.toml" and out="RUN_DIR" (flwr run . FEDERATION --run-config ...)')
    config = load_config(str(config_path), overrides=overrides(str(run_config_value(run_config, "set", ""))))
    link = FlowerLink(
        grid,
        timeout=float(run_config_value(run_config, "timeout", DEFAULT_TIMEOUT)),
        stage_timeout=float(run_config_value(run_config, "stage-timeout", 0.0)),
    )
    key_path = run_config_value(run_config, "ckks-keys")
    key_file = Path(str(key_path)).read_bytes() if key_path else None
    summary = server_run(config, link, out_dir=Path(str(out)), key_file=key_file)
    log.info("run directory %s: %s", out, summary["final"])


# --------------------------------------------------------------------------- client


def node_config(context: Context) -> Config:
    """The node's own config (node config ``config``), or else the server's run config (loopback demos)."""
    own = context.node_config.get("config")
    if own:
        return load_config(str(own))
    log.warning("node %s has no config of its own (--node-config config=...): it runs the server's", context.node_id)
    run_config = context.run_config
    return load_config(str(run_config_value(run_config, "config")), overrides=overrides(str(run_config_value(run_config, "set", ""))))


def node_schema(context: Context, kind: str, packed: Packed) -> Any:
    """The run's data schema for a node with data of its own: from the hello (kept in ``context.state``), or as kept."""
    from secure_ffm.data.node import DataSchema
    from secure_ffm.transports.remote import hello_schema

    if kind == HELLO:
        schema = hello_schema(packed)
        if isinstance(schema, DataSchema):
            context.state.config_records[SCHEMA_KEY] = ConfigRecord({"schema": to_bytes(schema)})
            return schema
    record = context.state.config_records.get(SCHEMA_KEY)
    schema = from_bytes(record["schema"]) if record is not None else None  # type: ignore[arg-type]
    return schema if isinstance(schema, DataSchema) else None


def authority(context: Context) -> Any:
    """The key authority's session (node config ``role = "authority"``): its config and its key file, nothing else."""
    from secure_ffm.run.deployment import authority_session

    key_path = context.node_config.get("ckks-keys")
    return authority_session(node_config(context), key_file=Path(str(key_path)).read_bytes() if key_path else None)


def state_file(context: Context) -> Path | None:
    """Where this node keeps its client's private state for the current run (node config ``state-dir``), or None."""
    folder = context.node_config.get(STATE_DIR_KEY)
    return Path(str(folder)) / f"run-{int(context.run_id)}.state" if folder else None


def restore_state(context: Context, path: Path | None) -> None:
    """After a SuperNode restart ``context.state`` is empty: take the client's private state (and a node's data schema)
    back from ``path``. Nothing to do when ``context.state`` holds them (no restart) or nothing was saved."""
    if path is None or STATE_KEY in context.state.config_records or not path.exists():
        return
    saved = from_bytes(path.read_bytes())
    if not isinstance(saved, dict) or not isinstance(saved.get("client"), dict):
        raise ValueError(
            f"{path} is not a secure-ffm node state (node config {STATE_DIR_KEY}); move it away to start this run's client afresh"
        )
    context.state.config_records[STATE_KEY] = ConfigRecord({"state": to_bytes({"client": saved["client"]})})
    if saved.get("schema") is not None:
        context.state.config_records[SCHEMA_KEY] = ConfigRecord({"schema": to_bytes(saved["schema"])})
    log.warning("node %s: the SuperNode restarted; its client's state for run %s comes back from %s", context.node_id, context.run_id, path)


SPENT_FILE = "spent.json"
"""In ``state-dir``: what every run spent on this node's examples under a mechanism with a client ledger (DP-SGD,
distributed DP-SGD), ``{"runs": {run id: [{noise_multiplier, sample_rate, steps}, ...]}}``, owner-only."""
SPENT_FORMAT = "secure-ffm node spend"
SPENT_LOCK_FILE = "spent.lock"
"""Beside ``spent.json``: held (``flock``) from reading the record to writing it back (:class:`NodeSpend`)."""


class NodeSpend:
    """The privacy spend of every run on this node's data (``state-dir/spent.json``), so that one target ε bounds them
    together. Before each answer the client's DP entry gets what every run recorded (:data:`~secure_ffm.privacy.
    accounting.NODE_SPEND_KEY`), which its budget check composes; after it, the steps the answer spent are added to this
    run's record. The client's own ledger, the one it reports, stays its run's: the server learns nothing of other runs.
    Without it a server that submitted run after run got a fresh budget each time (an audit of 2026-12-07: three runs,
    ε = 2 each on the same data); checked at every answer, runs that overlap in time cannot pass the target together
    either, and a run whose state file was lost counts what it recorded.

    From reading the record to writing it back, the answer holds an exclusive lock on ``state-dir/spent.lock``
    (``flock``): answers that spend this node's budget run one at a time, whichever process gives them (two SuperNodes
    sharing a ``state-dir``, or one answering two runs at once). Without it two answers read the same record, both
    passed the budget check and the second write dropped the first's steps (found 2026-12-07). Close it with
    :meth:`close` (or use it as a context manager)."""

    def __init__(self, path: Path, run_id: int) -> None:
        self.path, self.run = path, str(run_id)
        self.runs: dict[str, list[dict[str, Any]]] = {}
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock: int | None = os.open(path.with_name(SPENT_LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX)  # blocks while another answer on this node's data holds it
            self.runs = self._read()
        except BaseException:
            self.close()
            raise

    def _read(self) -> dict[str, list[dict[str, Any]]]:
        if not self.path.exists():
            return {}
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
            if document.get("format") != SPENT_FORMAT or not isinstance(document.get("runs"), dict):
                raise ValueError("not a spend record")
            return {str(k): list(v) for k, v in document["runs"].items()}
        except (OSError, ValueError, AttributeError, TypeError, RecursionError) as error:
            raise ValueError(
                f"{self.path} is not a secure-ffm node spend record ({error}); it bounds this node's privacy budget across runs: "
                "restore it, or move it away knowing that the runs it recorded are then forgotten"
            ) from None

    def close(self) -> None:
        """Release the lock (after :meth:`record`): the next answer on this node's data may read the record."""
        if self._lock is not None:
            os.close(self._lock)  # closing the descriptor releases its flock
            self._lock = None

    def __enter__(self) -> NodeSpend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def steps_before(self, entry: dict[str, Any]) -> int:
        """Before an answer: give the client's DP ``entry`` every run's recorded spend; the steps its own ledger counts."""
        from secure_ffm.privacy.accounting import NODE_SPEND_KEY  # here: the accountant pulls in opacus and scipy

        entry[NODE_SPEND_KEY] = {
            "other_runs": [spent for run, entries in self.runs.items() if run != self.run for spent in entries],
            "this_run": list(self.runs.get(self.run, [])),
        }
        return sum(int(e["steps"]) for e in _history(entry))

    def record(self, entry: Mapping[str, Any], before: int) -> None:
        """After an answer: add the steps it recorded to this run's spend, and write the file (atomically, owner-only)."""
        history = _history(entry)
        spent = sum(int(e["steps"]) for e in history) - before
        if spent <= 0:
            return
        if self._lock is None:
            raise RuntimeError("NodeSpend.record after close(): the record may have changed since it was read")
        last = history[-1]
        self.runs.setdefault(self.run, []).append(
            {"noise_multiplier": last["noise_multiplier"], "sample_rate": last["sample_rate"], "steps": spent}
        )
        write_private_bytes(self.path, json.dumps({"format": SPENT_FORMAT, "runs": self.runs}, indent=1).encode())


def _history(entry: Any) -> list[Any]:
    """The steps of a client's DP entry's ledger (none before its first answer)."""
    ledger = entry.get("ledger") if isinstance(entry, Mapping) else None
    return list(ledger.get("history", [])) if isinstance(ledger, Mapping) else []


def save_state(path: Path | None, state: Mapping[str, Any], schema: Any) -> None:
    """Write the client's private state (not the round's protocol half) to ``path`` atomically, readable by the owner only."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private_bytes(path, to_bytes({"client": dict(state.get("client", {})), "schema": schema}))


def handle(message: Message, context: Context) -> Message:
    """One request on this node (a Flower message in, its reply out): :func:`node_answer`."""
    kind, packed = from_record(message.content)
    return Message(to_record(node_answer(kind, packed, context), kind), reply_to=message)


def node_answer(kind: str, packed: Packed, context: Context) -> Packed:
    """One request on this node: rebuild the node's client from ``context.state`` (or, after a restart, from its
    ``state-dir``), answer, save the state back."""
    from secure_ffm.data.node import NODE_DATA_KEY
    from secure_ffm.run.deployment import node_session, partition_from_node_config

    if context.node_config.get("role") == AUTHORITY_ROLE:
        return authority(context).handle(kind, packed)
    partition_id, num_partitions = partition_from_node_config(context.node_config)
    config = node_config(context)
    keep_freed_memory()
    if config.run.threads == 0:
        import torch

        torch.set_num_threads(1)  # one client per process: spinning threads only wait on each other
    saved_at = state_file(context)
    restore_state(context, saved_at)
    # built first: it imports the configured protocol, whose stage messages the saved state holds
    key_path = context.node_config.get("ckks-keys")
    key_file = Path(str(key_path)).read_bytes() if key_path else None
    data_path = context.node_config.get(NODE_DATA_KEY)
    schema = node_schema(context, kind, packed) if data_path else None
    signing_key = context.node_config.get(SIGNING_KEY)
    session = node_session(
        config,
        partition_id=partition_id,
        num_partitions=num_partitions,
        key_file=key_file,
        signing_key=str(signing_key) if signing_key else None,
        data_path=str(data_path) if data_path else None,
        schema=schema,
    )
    record = context.state.config_records.get(STATE_KEY)
    if record is not None:
        session.state.update(from_bytes(record["state"]))  # type: ignore[arg-type]
    spend, before = None, 0
    if kind == FIT and saved_at is not None and session.ledger_key is not None:
        spend = NodeSpend(saved_at.parent / SPENT_FILE, int(context.run_id))
        before = spend.steps_before(session.state.setdefault("client", {}).setdefault(session.ledger_key, {}))
    try:
        return session.handle(kind, packed)
    finally:
        if spend is not None:
            try:
                spend.record(session.state["client"].get(session.ledger_key, {}), before)
            finally:
                spend.close()
        context.state.config_records[STATE_KEY] = ConfigRecord({"state": to_bytes(session.state)})
        if kind in (HELLO, FIT):  # what state-dir keeps changes only there: no file written per protocol stage
            save_state(saved_at, session.state, schema)


client_app = ClientApp()
client_app.query("hello")(handle)
client_app.query("stage")(handle)
client_app.train("fit")(handle)
client_app.evaluate("evaluate")(handle)
