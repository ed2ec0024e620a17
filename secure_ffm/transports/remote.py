"""Clients in other processes: the remote transport (server side) and the node session (client side).

A deployment (Flower's SuperLink and SuperNodes, :mod:`secure_ffm.flower`) runs each client on its own node, often as a
fresh process per message. The orchestrator does not change: :class:`RemoteTransport` is a
:class:`~secure_ffm.transports.base.Transport` that packs each stage's requests with the safe codec
(:mod:`secure_ffm.engine.codec`: JSON plus named arrays, no pickle) and hands them to a :class:`Link`, which carries
bytes between the server and the nodes (Flower messages; in tests a direct call). On each node a
:class:`NodeSession` unpacks the request, runs the same :class:`~secure_ffm.engine.client.FederatedClient` and protocol
half as the in-process transport, and packs the reply.

What a node keeps between messages lives in a plain dict the caller persists (Flower's ``context.state``, on the node):
the client's private state (its noise secret, DP ledger, ...) and its protocol half of the current round (round secrets
such as masking keys, :meth:`~secure_ffm.engine.aggregation.ClientRound.export_state`), dropped when a later round
begins. None of it is sent to the server.

The first message of a run (``hello``) binds each node to one client id: the node names the partition it holds and its
number of examples, and proves it runs the server's configuration with a fingerprint of it (SHA-256 of the resolved
config). A node whose fingerprint differs, whose partition is out of range or already taken, is refused by name.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from secure_ffm.engine.aggregation import (
    AUTHORITY,
    AggregationError,
    AggregationProtocol,
    ClientRound,
    EncodingDeclined,
    Stage,
    StageReplies,
)
from secure_ffm.engine.client import EvaluationWithheld, FederatedClient
from secure_ffm.engine.codec import CodecError, pack, unpack
from secure_ffm.engine.training import ClientDeclined
from secure_ffm.engine.wire import ClientMessage, FitInstructions, NamedArrays
from secure_ffm.errors import SecureFFMError
from secure_ffm.transports.base import FitReply, FitRequest, Transport

log = logging.getLogger(__name__)

HELLO, STAGE, FIT, EVALUATE = "hello", "stage", "fit", "evaluate"
"""The kinds of request a node answers."""

Packed = tuple[str, NamedArrays]
"""A packed value: JSON text and the named arrays it refers to (:func:`secure_ffm.engine.codec.pack`)."""
AUTHORITY_ROLE = "authority"
"""Node config ``role`` of the SuperNode that plays CKKS's key authority (``ckks_key_holder = "authority"``)."""
INCARNATION_KEY = "incarnation"
"""Key of a node's client state holding a random token drawn when that state begins, reported beside its ledger: a
token the server has not seen before for a client tells it the node started its client afresh (a SuperNode restarted
without ``state-dir``), so it composes the ledgers of both (:func:`secure_ffm.run.deployment.node_ledger_record`)."""
STATE_DIR_KEY = "state-dir"
"""Node config: the folder where a node keeps its client's private state of each run across SuperNode restarts
(:func:`secure_ffm.flower.app.save_state`)."""
ROUNDS_BEGUN_KEY = "rounds_begun"
"""Key of a node's client state holding the latest round whose protocol half it began (:meth:`NodeSession._half`)."""
SIGNING_KEY = "signing-key"
"""Node config: the node's own Ed25519 signing key file (masking's ``signatures``; ``secure-ffm signing-keys``)."""
NODE_SPEND_KEY = "node_spend"
"""secure_ffm.privacy.accounting.NODE_SPEND_KEY (not imported: the accountant pulls in opacus and scipy; a test keeps
them equal): what a node recorded of its other runs, never reported to the server."""


class DeploymentError(SecureFFMError):
    """The federation cannot run: a node is missing, refused, or runs another configuration."""


def config_fingerprint(config_toml: str) -> str:
    """SHA-256 of the resolved configuration (``Config.to_toml()``): server and nodes must agree on it."""
    return hashlib.sha256(config_toml.encode()).hexdigest()


@dataclass(frozen=True)
class LinkReply:
    """What came back from one node: a packed reply, or the error it raised instead."""

    node: int
    packed: Packed | None = None
    error: str | None = None


MAX_REASON_CHARS = 500
"""The most of a node's reason for declining that the server keeps (``skipped_reasons`` in ``metrics.jsonl``)."""


def _reason(text: str) -> str:
    """A node's reason for declining, as the server records it: at most :data:`MAX_REASON_CHARS` characters (a node's
    text is input; the project's own reasons are under 300)."""
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 1] + "…"


def _evaluation(answer: Any) -> dict[str, float | None]:
    """A node's evaluation answer as the server records it (``clients.json``): a table with ``loss`` and ``accuracy``
    whose values are numbers or None (an objective without a macro F1, e.g. MLM); ValueError otherwise."""
    if not isinstance(answer, Mapping) or not {"loss", "accuracy"} <= set(answer):
        raise ValueError("it is not a table with loss and accuracy")
    out: dict[str, float | None] = {}
    for key, value in answer.items():
        if not isinstance(key, str) or (value is not None and (isinstance(value, bool) or not isinstance(value, int | float))):
            raise ValueError(f"{key!r} is {value!r}, not a number")
        try:
            out[key] = None if value is None else float(value)
        except OverflowError:  # JSON integers have any size
            raise ValueError(f"{key!r} is an integer beyond float64") from None
    if out["accuracy"] is None:
        raise ValueError("it gives no accuracy")
    return out


MAX_EXAMPLE_COUNT = 2**53
"""Largest example count a node may claim (the largest integer float64 holds exactly): JSON carries integers of any size,
and the server turns counts into float64 weights, where 10**400 raised OverflowError and ended its run."""


def _is_count(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and 0 <= value <= MAX_EXAMPLE_COUNT


def _hello_integer(hello: Any, key: str, *, count: bool) -> int:
    """``hello[key]`` when it is an integer (and, with ``count``, a count: 0 to :data:`MAX_EXAMPLE_COUNT`);
    ValueError otherwise. A count the server weighs clients by must be a whole number: ``int()`` of a float ``inf``
    raised OverflowError, which nothing caught, and a negative count made a round's weight bound negative. (A client
    id's range is checked by the caller: -1 is the key authority's.)"""
    value = hello[key] if isinstance(hello, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, int) or (count and not _is_count(value)):
        raise ValueError(f"its hello gives {key} = {value!r}, not a {'non-negative ' if count else ''}integer")
    return value


def hello_schema(packed: Packed) -> Any:
    """The data schema a packed hello request carries (None if none), read before a node builds its session."""
    request = unpack(*packed)
    return request.get("schema") if isinstance(request, dict) else None


class Link(ABC):
    """Carries packed requests to nodes and brings back their replies (Flower's Grid; in tests, direct calls)."""

    @abstractmethod
    def nodes(self) -> list[int]:
        """The nodes connected now."""

    @abstractmethod
    def request(self, kind: str, bodies: Mapping[int, Packed]) -> Iterator[LinkReply]:
        """Send ``bodies[node]`` to each node; yield the replies as they arrive. A node that does not answer in time is
        left out (the caller treats it as gone)."""


@dataclass
class NodeInfo:
    node: int
    client_id: int
    num_examples: int
    own_data: bool = False
    """The node trains on data of its own (node config ``data``), not on the server's partition ``client_id``."""


class RemoteTransport(Transport):
    """Reaches clients on other nodes through a :class:`Link`; call :meth:`connect` before the first round.

    Parameters
    ----------
    link
        Carries the packed requests.
    fingerprint
        The server's :func:`config_fingerprint`; every node must send the same in its ``hello``.
    num_clients
        The run's number of clients (``data.num_clients``): one node per client id ``0..num_clients-1``.
    """

    def __init__(
        self,
        link: Link,
        *,
        fingerprint: str,
        num_clients: int,
        on_ledger: Callable[[int, Mapping[str, Any], str | None], None] | None = None,
        schema: Any = None,
    ) -> None:
        """``on_ledger(client, ledger, incarnation)`` receives the privacy ledger a node reports with its fit reply
        and the token of the client state it comes from (:data:`INCARNATION_KEY`). ``schema`` (a wire
        record: :class:`~secure_ffm.data.node.DataSchema`) goes with the hello, for nodes that hold their own data."""
        self.on_ledger = on_ledger
        self.schema = schema
        self.link = link
        self.fingerprint = fingerprint
        self.num_clients = num_clients
        self.clients: dict[int, NodeInfo] = {}
        """Client id -> its node, from the ``hello`` replies."""
        self.parties: dict[int, NodeInfo] = {}
        """Parties that are not clients (the key authority, :data:`~secure_ffm.engine.aggregation.AUTHORITY`) -> their node:
        they answer protocol stages addressed to them, never a fit or an evaluation."""
        self.refused: dict[int, str] = {}
        """Node -> why it was refused at ``hello``."""
        self.stage_counts: list[int] | None = None
        """A continual run's example counts of the current stage (the server's own account, from its copy of the
        partition), which replace the counts the nodes sent with the hello."""

    # ------------------------------------------------------------------ connection

    def connect(self, *, required: int | None = None) -> dict[int, NodeInfo]:
        """Ask every connected node which client it is; refuse those that do not fit. Raises DeploymentError when fewer
        than ``required`` (default: every client) clients are bound."""
        nodes = self.link.nodes()
        body = pack({"fingerprint": self.fingerprint, "num_clients": self.num_clients, "schema": self.schema})
        for reply in self.link.request(HELLO, {node: body for node in nodes}):
            try:
                hello = self._decode(reply)
                client_id = _hello_integer(hello, "client_id", count=False)
                count = _hello_integer(hello, "num_examples", count=True)
                fingerprint = str(hello["fingerprint"])
            except (AggregationError, KeyError, TypeError, ValueError) as error:
                self.refused[reply.node] = str(error)
                log.error("node %d is refused: %s", reply.node, error)
                continue
            problem = None
            if fingerprint != self.fingerprint:
                problem = f"it runs another configuration (fingerprint {fingerprint[:12]}, the server's {self.fingerprint[:12]})"
            elif client_id == AUTHORITY and hello.get("role") == "authority":
                if AUTHORITY in self.parties:
                    problem = f"the key authority is already node {self.parties[AUTHORITY].node}"
                else:
                    self.parties[AUTHORITY] = NodeInfo(reply.node, AUTHORITY, 0)
                    log.info("node %d is the key authority", reply.node)
                    continue
            elif not 0 <= client_id < self.num_clients:
                problem = f"its partition {client_id} is outside 0..{self.num_clients - 1}"
            elif client_id in self.clients:
                problem = f"partition {client_id} is already held by node {self.clients[client_id].node}"
            if problem is not None:
                self.refused[reply.node] = problem
                log.error("node %d is refused: %s", reply.node, problem)
                continue
            self.clients[client_id] = NodeInfo(reply.node, client_id, count, own_data=hello.get("own_data") is True)
        bound = {info.node for info in (*self.clients.values(), *self.parties.values())}
        for node in set(nodes) - bound - set(self.refused):
            self.refused[node] = "it did not answer the hello"
        needed = self.num_clients if required is None else required
        if len(self.clients) < needed:
            missing = sorted(set(range(self.num_clients)) - set(self.clients))
            refused = "; ".join(f"node {n}: {why}" for n, why in sorted(self.refused.items())) or "none refused"
            raise DeploymentError(f"{len(self.clients)} of {self.num_clients} clients connected (missing partitions {missing}; {refused})")
        return dict(self.clients)

    def _decode(self, reply: LinkReply) -> Any:
        if reply.error is not None:
            raise AggregationError(f"node {reply.node} answered with an error: {reply.error}")
        assert reply.packed is not None
        try:
            return unpack(*reply.packed)
        except CodecError as error:
            raise AggregationError(f"node {reply.node} sent a reply that does not decode: {error}") from None

    # ------------------------------------------------------------------ Transport

    def own_data_counts(self) -> dict[int, int]:
        return {k: info.num_examples for k, info in self.clients.items() if info.own_data}

    def example_counts(self, clients: Sequence[int]) -> dict[int, int]:
        if self.stage_counts is not None:
            return {int(c): self.stage_counts[int(c)] for c in clients}
        return {int(c): self.clients[int(c)].num_examples for c in clients}

    def set_example_counts(self, example_counts: Sequence[int]) -> None:
        self.stage_counts = list(example_counts)

    def _send(self, kind: str, bodies: Mapping[int, Any]) -> Iterator[tuple[int, Any]]:
        """Pack ``bodies[client]``, send, and yield ``(client, decoded reply or AggregationError)`` for each answer."""
        reachable = {**self.clients, **self.parties}  # a party (the key authority) is reached by stages only
        packed = {reachable[c].node: pack(body) for c, body in bodies.items() if c in reachable}
        client_of = {info.node: client_id for client_id, info in reachable.items()}
        for reply in self.link.request(kind, packed):
            client_id = client_of.get(reply.node)
            if client_id is None or client_id not in bodies:
                log.warning("a reply from node %d, which was not asked, is ignored", reply.node)
                continue
            try:
                yield client_id, self._decode(reply)
            except AggregationError as error:
                yield client_id, error

    def exchange(self, round: int, stage: Stage) -> StageReplies:
        bodies = {c: {"round": round, "stage": stage.name, "request": request} for c, request in stage.requests.items()}
        replies: dict[int, Any] = {}
        answers = self._send(STAGE, bodies)
        try:
            for client_id, answer in answers:
                if isinstance(answer, AggregationError):
                    who = "the key authority" if client_id == AUTHORITY else f"client {client_id}"
                    log.warning("round %d: %s is left out of the %s stage: %s", round, who, stage.name, answer)
                    continue
                replies[client_id] = answer
                if stage.enough is not None and len(replies) < len(stage.requests) and stage.enough(replies):
                    log.info(
                        "round %d: the %s stage has what the server needs from %d of %d clients; it stops waiting for %s",
                        round,
                        stage.name,
                        len(replies),
                        len(stage.requests),
                        sorted(set(stage.requests) - set(replies)),
                    )
                    break
        finally:
            answers.close()  # the link stops waiting for the nodes not heard from
        return StageReplies(replies, frozenset(set(stage.requests) - set(replies)))

    def fit(self, round: int, requests: Mapping[int, FitRequest]) -> Iterator[FitReply]:
        answered = set()
        for client_id, answer in self._send(FIT, {c: {"round": round, "request": r} for c, r in requests.items()}):
            answered.add(client_id)
            if isinstance(answer, dict) and isinstance(answer.get("ledger"), dict) and self.on_ledger is not None:
                incarnation = answer.get("incarnation")
                self.on_ledger(client_id, answer["ledger"], incarnation if isinstance(incarnation, str) else None)
            if isinstance(answer, AggregationError):
                log.warning("round %d: client %d sent no update: %s", round, client_id, answer)
                yield FitReply(client_id)
            elif isinstance(answer, dict) and isinstance(answer.get("declined"), str):
                yield FitReply(client_id, declined=_reason(answer["declined"]))
            elif isinstance(answer, dict) and isinstance(answer.get("message"), ClientMessage):
                message = answer["message"]
                if message.client_id != client_id or message.round != round:
                    log.warning(
                        "round %d: node %d (client %d) sent a message for client %d, round %d; it is ignored",
                        round,
                        self.clients[client_id].node,
                        client_id,
                        message.client_id,
                        message.round,
                    )
                    yield FitReply(client_id)
                elif not _is_count(message.num_examples):  # the round's row weighs the clients' losses by it
                    log.warning(
                        "round %d: client %d's message gives num_examples = %.40r, not a count; it is ignored",
                        round,
                        client_id,
                        message.num_examples,
                    )
                    yield FitReply(client_id)
                else:
                    yield FitReply(client_id, message)
            else:
                log.warning("round %d: client %d sent a fit reply of the wrong shape; it is ignored", round, client_id)
                yield FitReply(client_id)
        for client_id in sorted(set(requests) - answered):  # no answer in time: gone
            yield FitReply(client_id)

    def evaluate(self, parameters: NamedArrays, *, round: int, batch_size: int) -> dict[int, dict[str, float]]:
        """Every connected client's evaluation of ``parameters`` on its own examples (Flower's federated evaluation)."""
        body = {"round": round, "parameters": parameters, "batch_size": batch_size}
        results = {}
        for client_id, answer in self._send(EVALUATE, {c: body for c in self.clients}):
            if isinstance(answer, AggregationError):
                log.warning("client %d did not evaluate: %s", client_id, answer)
                continue
            try:
                results[client_id] = _evaluation(answer)
            except ValueError as error:  # a node's answer is input: one the server cannot read is left out, not fatal
                log.warning("client %d's evaluation is left out: %s", client_id, error)
        return results


# --------------------------------------------------------------------------- the node's side


@dataclass
class NodeSession:
    """One node's client: answers the server's packed requests with the same client and protocol half as in-process.

    Parameters
    ----------
    client_id
        The partition this node holds.
    make_client
        Builds this node's :class:`FederatedClient` for a round around a state dict (the client's private state); the
        round says which examples it trains on (a continual run's stage).
    protocol
        The aggregation protocol (its client half runs here).
    fingerprint
        This node's :func:`config_fingerprint`, sent in ``hello``.
    state
        What the node keeps between messages; the caller persists it (it is changed in place).
    """

    client_id: int
    make_client: Callable[[dict[str, Any], int], FederatedClient]
    protocol: AggregationProtocol
    fingerprint: str
    num_examples: int
    state: dict[str, Any] = field(default_factory=dict)
    ledger_key: str | None = None
    """The client state's entry that holds its privacy ledger (:attr:`~secure_ffm.privacy.mechanisms.PrivacyMechanism.client_ledger_key`):
    reported with each fit reply, so the server can gather the ledgers. Nothing else of the state leaves the node."""
    reports_incarnation: bool = False
    """A deployed node reports, beside its ledger, the random token of the client state it comes from
    (:data:`INCARNATION_KEY`); a pool worker's session does not (its run's process holds the state)."""
    own_data: bool = False
    """The node trains on data of its own (node config ``data``): its hello says so, so that the server does not describe
    it by its own partition ``client_id`` (``clients.json``)."""

    def handle(self, kind: str, packed: Packed) -> Packed:
        """The packed reply to one packed request; a refusal raises (the server sees this node drop out of the stage)."""
        return pack(self.answer(kind, unpack(*packed)))

    def answer(self, kind: str, request: Any) -> Any:
        """The reply to one unpacked request (:meth:`handle` without the packing)."""
        if not isinstance(request, dict):
            raise AggregationError(f"client {self.client_id} got a {kind} request that is not a table")
        handler = {HELLO: self._hello, STAGE: self._stage, FIT: self._fit, EVALUATE: self._evaluate}.get(kind)
        if handler is None:
            raise AggregationError(f"client {self.client_id} got a request of unknown kind {kind!r}")
        return handler(request)

    def _hello(self, request: Mapping[str, Any]) -> dict[str, Any]:
        hello = {"client_id": self.client_id, "num_examples": self.num_examples, "fingerprint": self.fingerprint}
        return {**hello, "own_data": True} if self.own_data else hello

    def _client_state(self) -> dict[str, Any]:
        return self.state.setdefault("client", {})

    def _half(self, round: int) -> ClientRound:
        """This client's protocol half for ``round``, restored from the node's state (a new round drops the last one's).

        Rounds only move forward: a round older than one the node began is refused. The node keeps one round's half,
        so a server that went back to round r after r + 1 got a fresh half for r, and with it fresh masks, signatures
        and a second masked input of r (an audit of 2026-12-07 had a node sign a second survivor list that way)."""
        client = self._client_state()
        begun = int(client.get(ROUNDS_BEGUN_KEY, 0))
        if round < begun:
            raise AggregationError(f"client {self.client_id} already began round {begun} and refuses a request for round {round}")
        client[ROUNDS_BEGUN_KEY] = max(begun, round)
        half = self.protocol.client_round(self.client_id, round)
        saved = self.state.get("half")
        if saved is not None and saved.get("round") == round:
            half.restore_state(saved["state"])
        return half

    def _keep(self, round: int, half: ClientRound) -> None:
        self.state["half"] = {"round": round, "state": half.export_state()}

    def _stage(self, request: Mapping[str, Any]) -> Any:
        round, stage = int(request["round"]), str(request["stage"])
        half = self._half(round)
        reply = half.handle(stage, request["request"])
        self._keep(round, half)
        return reply

    def _fit(self, request: Mapping[str, Any]) -> dict[str, Any]:
        round, fit = int(request["round"]), request["request"]
        if not isinstance(fit, FitRequest) or fit.instructions.round != round:
            raise AggregationError(f"client {self.client_id} got a fit request that is not one for round {round}")
        half = self._half(round)
        try:
            message = self.make_client(self._client_state(), round).fit(fit.instructions, encoder=half, payload=fit.payload)
        except (ClientDeclined, EncodingDeclined) as reason:
            self._keep(round, half)
            return {"declined": str(reason), **self._ledger()}
        self._keep(round, half)
        return {"message": message, **self._ledger()}

    def _ledger(self) -> dict[str, Any]:
        if self.ledger_key is None or self.ledger_key not in self._client_state():
            return {}
        state = self._client_state()
        # the client's own run's entry: what a deployed node recorded of its other runs (node_spend) stays on the node
        entry = {k: v for k, v in state[self.ledger_key].items() if k != NODE_SPEND_KEY}
        if not self.reports_incarnation:
            return {"ledger": entry}
        incarnation = state.setdefault(INCARNATION_KEY, secrets.token_hex(8))  # random: it says nothing of the secret
        return {"ledger": entry, "incarnation": incarnation}

    def _evaluate(self, request: Mapping[str, Any]) -> dict[str, float]:
        parameters = {str(k): np.asarray(v) for k, v in request["parameters"].items()}
        ins = FitInstructions(round=int(request["round"]), parameters=parameters)
        try:
            result = self.make_client(self._client_state(), ins.round).evaluate(ins, batch_size=int(request["batch_size"]))
        except EvaluationWithheld as error:  # the node's own policy; the server sees a refusal, not a number
            raise AggregationError(str(error)) from None
        return {**result.as_dict(), "num_examples": float(result.num_examples)}


@dataclass
class AuthoritySession:
    """The key authority's node (CKKS with ``ckks_key_holder = "authority"``): a party of its own, not a client.

    It answers the hello (as party :data:`~secure_ffm.engine.aggregation.AUTHORITY`, with its config's fingerprint) and
    the stages addressed to it (:meth:`AggregationProtocol.authority_answer`: decrypt an aggregate, whose count and
    round slots it checks); it refuses fit and evaluation requests. It holds no data, no model and no client state."""

    protocol: AggregationProtocol
    fingerprint: str

    def handle(self, kind: str, packed: Packed) -> Packed:
        return pack(self.answer(kind, unpack(*packed)))

    def answer(self, kind: str, request: Any) -> Any:
        if not isinstance(request, dict):
            raise AggregationError(f"the key authority got a {kind} request that is not a table")
        if kind == HELLO:
            return {"client_id": AUTHORITY, "role": "authority", "num_examples": 0, "fingerprint": self.fingerprint}
        if kind == STAGE:
            return self.protocol.authority_answer(str(request["stage"]), request["request"])
        raise AggregationError(f"the key authority answers no {kind} request: it trains and evaluates nothing")
