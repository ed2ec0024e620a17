"""The server's aggregation step, as a protocol with a client half and a server half that talk only in messages.

Each round a protocol makes a :class:`ServerRound` (the server half) and, on every
participant, a :class:`ClientRound` (the client half). They never share objects: the
server half yields :class:`Stage` requests (e.g. masking's "advertise keys", "share
keys", "unmask"), a transport delivers each request to its client's
:meth:`ClientRound.handle` and brings back the replies (or the client's dropout), and
the fit stage carries each client's update encoded by :meth:`ClientRound.encode`, which the server
half folds in as it arrives. Plaintext aggregation sends weighted deltas in the clear;
secure aggregation protocols (pairwise masking, CKKS) register in
:data:`secure_ffm.variants.PROTOCOLS` and replace both halves, so the server learns only
the weighted sum (Federated Foundation Models, arXiv 2305.11414, Sec. 4: privacy of the
updates exchanged during FFM fine-tuning).

The round orchestrator (:mod:`secure_ffm.orchestrator`) drives the stages through a
transport; :meth:`AggregationProtocol.begin_round` / :meth:`~AggregationProtocol.encode` /
:meth:`~AggregationProtocol.accumulator` drive them in this process, for tests, benchmarks
and direct use.
"""

from __future__ import annotations

import dataclasses
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np

from secure_ffm.engine.codec import wire_record
from secure_ffm.engine.wire import ClientMessage, ClientUpdate, NamedArrays
from secure_ffm.variants import PROTOCOLS  # noqa: F401 (re-exported: the registry of aggregation protocols)

if TYPE_CHECKING:
    from secure_ffm.config import Config, SecureAggregationConfig
    from secure_ffm.data.base import FederatedData

AUTHORITY = -1
"""The party id of a protocol's key authority in a stage's requests and replies: a party of its own, never a client
(CKKS with ``ckks_key_holder = "authority"``: it decrypts aggregates and nothing else)."""


@wire_record
@dataclass(frozen=True)
class VectorLayout:
    """How named arrays become one flat vector: sorted delta names, sorted statistics, then the weight.

    The server fixes it from its own model (:meth:`of_arrays` of the global trainable parameters and the
    statistics it expects) and the secure protocols encode and check every update against it."""

    delta: tuple[tuple[str, tuple[int, ...]], ...]
    statistics: tuple[tuple[str, tuple[int, ...]], ...]

    @classmethod
    def of(cls, update: ClientUpdate) -> VectorLayout:
        return cls.of_arrays(update.delta, update.statistics)

    @classmethod
    def of_arrays(cls, delta: NamedArrays, statistics: NamedArrays | None = None) -> VectorLayout:
        """The layout of updates with these delta arrays (e.g. the global trainable parameters) and statistics."""
        stats = statistics or {}
        return cls(
            tuple((k, tuple(np.shape(delta[k]))) for k in sorted(delta)),
            tuple((k, tuple(np.shape(stats[k]))) for k in sorted(stats)),
        )

    @property
    def values_size(self) -> int:
        return int(sum(math.prod(shape) for _, shape in (*self.delta, *self.statistics)))

    @property
    def size(self) -> int:
        return self.values_size + 1

    def to_bytes(self) -> bytes:
        return json.dumps({"delta": self.delta, "statistics": self.statistics}, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> VectorLayout:
        """The layout a message announces; anything else (not JSON, deeply nested, another shape, a dimension that is
        not a non-negative integer) raises ValueError, which the protocols' servers treat as that client's bad message:
        a peer's bytes must never end the server's run (RecursionError and OverflowError did, until 2026-12-07)."""
        if not isinstance(data, bytes | bytearray):  # bytes(2**44) would allocate 16 TiB of zeros
            raise ValueError(f"not a vector layout: {type(data).__name__}")
        if len(data) > MAX_LAYOUT_BYTES:
            raise ValueError(f"not a vector layout: {len(data)} bytes")
        try:
            raw = json.loads(bytes(data).decode())
            layout = cls(
                tuple((str(k), tuple(_dimension(d) for d in s)) for k, s in raw["delta"]),
                tuple((str(k), tuple(_dimension(d) for d in s)) for k, s in raw["statistics"]),
            )
        except (RecursionError, OverflowError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as error:
            raise ValueError(f"not a vector layout: {type(error).__name__}") from None
        return layout

    def flatten(self, update: ClientUpdate, weight: float) -> np.ndarray:
        parts = [np.asarray(update.delta[k], dtype=np.float64).reshape(-1) for k, _ in self.delta]
        parts += [np.asarray(update.statistics[k], dtype=np.float64).reshape(-1) for k, _ in self.statistics]
        return weight * np.concatenate(parts) if parts else np.zeros(0)

    def split(self, values: np.ndarray) -> tuple[NamedArrays, NamedArrays]:
        out: list[NamedArrays] = [{}, {}]
        offset = 0
        for i, entries in enumerate((self.delta, self.statistics)):
            for name, shape in entries:
                size = math.prod(shape)
                out[i][name] = values[offset : offset + size].reshape(shape)
                offset += size
        return out[0], out[1]


MAX_LAYOUT_BYTES = 1 << 24
"""A layout names every trained parameter and its shape: 16 MiB of JSON is far beyond any model's (MiniLM's full one is
a few kB)."""


def _dimension(value: Any) -> int:
    """One dimension of a layout's shape: a non-negative integer (JSON gives it as a number)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"dimension {value!r}")
    return value


class AggregationError(RuntimeError):
    """A round's aggregation cannot complete (e.g. too few clients survive)."""


class EncodingDeclined(AggregationError):
    """A client refuses to encode its update (e.g. non-finite values): it sends nothing this round.

    The runner leaves the client out of the round, as it does a client whose trainer declines;
    the protocol's server then treats it like a client that dropped after the set-up.
    """


def check_envelope(message: ClientMessage, *, round: int, participants: Collection[int], received: Collection[int]) -> str:
    """Refuse a secure-aggregation message of another round (replayed or stale), of a non-participant,
    or a second one from a client; returns ``"round R: client K"`` for the caller's own errors."""
    who = f"round {round}: client {message.client_id}"
    if message.round != round:
        raise AggregationError(f"{who} sent a message of round {message.round} (replayed or stale)")
    if message.client_id not in participants:
        raise AggregationError(f"{who} is not a participant of this round")
    if message.client_id in received:
        raise AggregationError(f"{who} sent twice")
    return who


@dataclass(frozen=True)
class Aggregate:
    """What the server learns in a round: the weighted mean delta and bookkeeping."""

    mean_delta: NamedArrays
    total_weight: float
    num_clients: int
    timings: dict[str, float] = field(default_factory=dict)
    mean_statistics: NamedArrays = field(default_factory=dict)

    def replace(self, **changes: object) -> Aggregate:
        return dataclasses.replace(self, **changes)


class AggregateStep(ABC):
    """A server-side step between aggregation and the strategy (e.g. DP-FedAvg's central noise)."""

    acts_on_empty_rounds: bool = False
    """Whether a round in which no update arrived still goes through the steps and the strategy, with a zero sum
    (:meth:`Server.apply_empty`): a mechanism whose release is the noise alone for an empty sample."""

    @abstractmethod
    def __call__(self, round: int, aggregate: Aggregate) -> Aggregate: ...


class Accumulator(ABC):
    """The server's running state for one round: messages are folded in one at a time, as they arrive.

    A message that fails validation raises :class:`AggregationError` naming its client and
    leaves the state as it was, so the other clients' contributions are not lost. The
    server never holds more than one client message at a time.
    """

    @abstractmethod
    def add(self, message: ClientMessage) -> None:
        """Validate ``message`` and fold it into the running aggregate."""

    @abstractmethod
    def result(self) -> Aggregate:
        """The aggregate of everything added (raises AggregationError when nothing was)."""


@dataclass(frozen=True)
class Stage:
    """One message exchange of a protocol's round: ``requests[c]`` goes to client ``c``, whose
    :meth:`ClientRound.handle` answers it (``name`` says which handler)."""

    name: str
    requests: Mapping[int, Any]
    enough: Callable[[Mapping[int, Any]], bool] | None = field(default=None, compare=False, repr=False)
    """Optional: ``enough(replies so far) -> bool``, True once the server needs no more replies to this stage, so a
    transport whose replies arrive over time (a deployment: :class:`~secure_ffm.transports.remote.RemoteTransport`)
    stops waiting for the rest, who are then listed as dropped from the stage. Transports that have every reply at
    once (in-process, the worker pool) may ignore it. The masking protocol's unmasking stage sets it: the server
    needs ``t`` right shares of each secret, not every survivor's answer (Bonawitz et al., CCS 2017, round 4)."""


@dataclass(frozen=True)
class StageReplies:
    """What came back from a :class:`Stage`: each answering client's reply, and who did not answer."""

    replies: Mapping[int, Any]
    dropped: frozenset[int] = frozenset()
    """Clients that sent no reply (they left, timed out, or refused the request)."""


_T = TypeVar("_T")
Stages = Generator[Stage, StageReplies, _T]
"""A protocol's message stages: yields each :class:`Stage`, receives its :class:`StageReplies`, returns a result."""


class ServerRound(ABC):
    """The server half of one round: its stages before training, the clients' messages folded in one at a time
    as they arrive, and its stages after them, which end in the :class:`Aggregate`.

    It holds no client object: everything it learns arrives as replies to its stages and as messages. A message
    that fails validation raises :class:`AggregationError` naming its client and leaves the state as it was.
    """

    def setup(self) -> Stages[Mapping[int, Any]]:
        """Stages before any client trains (e.g. masking's key agreement); returns each participant's protocol
        payload for its fit request (e.g. the encrypted shares routed to it). Default: no stage, no payload."""
        return {}
        yield  # a generator without stages

    @abstractmethod
    def add(self, message: ClientMessage) -> None:
        """Validate one client's message and fold it into the running aggregate."""

    @abstractmethod
    def finish(self) -> Stages[Aggregate]:
        """Stages after the messages (e.g. masking's unmasking, CKKS decryption by a key-holding client), then the
        aggregate (raises AggregationError when it cannot be computed)."""


class ClientRound(ABC):
    """The client half of one round, for one client: it answers the server half's stages and encodes the update.

    Created on the client (by the transport's client side) and discarded after the round: it may hold
    round secrets (masking keys), which are never checkpointed and never sent.
    """

    uses_rng: bool = True
    """Whether :meth:`encode` draws from its ``rng`` (the client then keys one from its secret; a half that draws
    nothing, such as plaintext's, is handed None and the client skips deriving a generator it would not use)."""

    def handle(self, stage: str, request: Any) -> Any:
        """The reply to one stage request; raise :class:`AggregationError` to refuse it (the server sees a dropout)."""
        raise AggregationError(f"{type(self).__name__} has no stage {stage!r}")

    def export_state(self) -> Any:
        """What this half holds between stages, as a value :mod:`secure_ffm.engine.codec` packs (round secrets included).

        A transport whose client runs each stage in a fresh process (Flower's deployment engine) keeps it in the
        client's own node state between the stages of a round and forgets it when the round ends; it never reaches
        the server. A half without state between stages (this default) exports None."""
        return None

    def restore_state(self, state: Any) -> None:
        """Take back what :meth:`export_state` returned, in a fresh half made by the same protocol for the same round."""
        if state is not None:
            raise AggregationError(f"{type(self).__name__} keeps no state between stages, but was handed some")

    def check_ready(self) -> None:  # noqa: B027 (optional hook)
        """Raise :class:`AggregationError` when this half would refuse to encode any update now (masking's second masked
        input of a round): the client checks it before it trains, so a refused request costs no privacy budget."""

    binds_instructions: bool = False
    """Whether :meth:`encode` binds the message to the fit request the client trained on (``instructions_digest``):
    masking's pairwise masks then cancel only between clients that were all sent the same request. The client computes
    the digest (:func:`~secure_ffm.engine.wire.instructions_digest`) only for a half that binds."""

    @abstractmethod
    def encode(
        self,
        update: ClientUpdate,
        *,
        weight: float,
        rng: np.random.Generator | None = None,
        payload: Any = None,
        instructions_digest: bytes | None = None,
    ) -> ClientMessage:
        """Turn a (transformed) update into the message the server receives.

        ``rng`` is the client's secret generator for any randomness of the encoding (e.g. stochastic rounding);
        ``payload`` is this client's part of the fit request from :meth:`ServerRound.setup` (None without one);
        ``instructions_digest`` is the digest of the fit request the update was trained on (None outside a round of
        a run: a test's or an audit's direct encoding), which a half that :attr:`binds_instructions` binds to."""


def run_stages(stages: Stages[_T], answer: Callable[[Stage], StageReplies]) -> _T:
    """Drive ``stages`` to their result; ``answer(stage) -> StageReplies`` delivers each stage (a transport's job)."""
    try:
        stage = next(stages)
        while True:
            stage = stages.send(answer(stage))
    except StopIteration as done:
        return done.value


class InProcessRound:
    """A protocol round run in this process: every participant's :class:`ClientRound` and the :class:`ServerRound`,
    with each stage delivered by a direct call. Used by :meth:`AggregationProtocol.begin_round` (tests, benchmarks,
    direct use); a run goes through the orchestrator and a transport instead. A client that refuses a request
    raises here, so the caller sees why."""

    def __init__(
        self,
        protocol: AggregationProtocol,
        round: int,
        participants: Sequence[int],
        *,
        weight_bound: float | None = None,
        layout: VectorLayout | None = None,
    ) -> None:
        self.round = round
        self.server = protocol.server_round(round, participants, weight_bound=weight_bound, layout=layout)
        self.clients = {int(c): protocol.client_round(int(c), round) for c in participants}
        self.payloads = run_stages(self.server.setup(), self.deliver)

    def deliver(self, stage: Stage) -> StageReplies:
        return StageReplies({c: self.clients[c].handle(stage.name, request) for c, request in stage.requests.items()})

    def encode(self, update: ClientUpdate, *, weight: float, rng: np.random.Generator | None = None) -> ClientMessage:
        client = self.clients.get(update.client_id)
        if client is None or update.round != self.round:
            raise ValueError(f"client {update.client_id} is not set up for round {update.round}; call begin_round first")
        return client.encode(update, weight=weight, rng=rng, payload=self.payloads.get(update.client_id))


class _InProcessAccumulator(Accumulator):
    """The server half's running aggregate; ``result`` runs its closing stages in this process."""

    def __init__(self, local: InProcessRound) -> None:
        self.local = local

    def add(self, message: ClientMessage) -> None:
        self.local.server.add(message)

    def result(self) -> Aggregate:
        return run_stages(self.local.server.finish(), self.local.deliver)


class AggregationProtocol(ABC):
    """Client-side encoding plus server-side (streaming) aggregation of client updates.

    Registered by name in :data:`secure_ffm.variants.PROTOCOLS`; callers branch on the class
    properties below, never on the name.
    """

    name: str = ""
    label: ClassVar[str] = ""
    """How reports name the protocol (e.g. ``"SecAgg (masking)"``); empty: the name."""
    hides_updates: ClassVar[bool] = False
    """True when the server learns only the aggregate, never a single client's update: the simulation then
    records the aggregate for the leakage audit (instead of each message) and the audit attacks the aggregate.
    False (the safe default) treats every message as a client's update in the clear."""
    supports_integer_values: ClassVar[bool] = False
    """True when :meth:`use_integer_values` makes the protocol sum integer-valued updates exactly (discrete noise)."""

    signs_messages: ClassVar[bool] = False
    """True when the protocol's clients sign their keys and what the server tells them (``secure_aggregation.signatures``)."""
    binds_instructions: ClassVar[bool] = False
    """True when the protocol's client halves bind their messages to the fit request (:attr:`ClientRound.binds_instructions`):
    the server then hands :meth:`server_round` the digest of the request it sends, and hashes no model otherwise."""
    needs_key_file: ClassVar[bool] = False
    """True when a deployment must deal the protocol's keys out of band (:meth:`use_key_file`): CKKS's shared key set."""

    def plan_rounds(self, round_size: int) -> None:  # noqa: B027 (optional hook)
        """The run's planned participants per round (``server.clients_per_round``, else ``data.num_clients``), from the
        party's own configuration: a protocol whose clients must not trust the round size a server claims (masking's
        threshold) keeps it. Every run calls it once, before its first round."""

    def plan_clients(self, num_clients: int) -> None:  # noqa: B027 (optional hook)
        """The run's clients, ids ``0 .. num_clients - 1``: a protocol whose clients have long-term identities (masking's
        signing keys) makes them here when the run plays every party itself (a simulation). Every simulated run calls it
        once, before its first round; a deployment does not."""

    def protect_sums_of(self, min_sum: int) -> None:  # noqa: B027 (optional hook)
        """Distributed noise shares are sized so that ``min_sum`` of them carry the full noise: a protocol in which a
        lying server could sum fewer inputs (masking's survivors) raises what its clients accept until it cannot, and
        one whose sums hold whoever arrived (CKKS) has its key holder refuse to decrypt a sum of fewer."""

    @classmethod
    def fewest_to_aggregate(cls, config: Config) -> int:
        """The fewest participants a round of this protocol can aggregate under ``config`` (1 here: any non-empty round).
        A Poisson round that samples fewer aborts, an event outside DP-FedAvg's accounting that it must keep negligible
        (:func:`secure_ffm.privacy.dp_fedavg.small_sample_delta`)."""
        return 1

    @classmethod
    def smallest_sum(cls, config: Config) -> int:
        """The fewest client inputs a sum released under ``config`` holds: what distributed noise shares are sized for
        (:func:`secure_ffm.privacy.distributed.minimum_shares`). Here every planned participant of a round: a protocol
        that shows the server each input protects only the released model with shares (the server sees each update
        under its own share: ``epsilon_against_server``)."""
        return config.round_size

    def use_integer_values(self) -> None:
        """Sum integer-valued updates exactly from now on; only protocols with :attr:`supports_integer_values`."""
        raise NotImplementedError(f"protocol {self.name!r} cannot sum integer values exactly")

    def deal_key_files(self) -> dict[str, bytes]:
        """A fresh key set as ``{role: file}`` (``"server"``, ``"clients"``, and for a key authority ``"authority"``); only
        protocols with :attr:`needs_key_file`."""
        raise NotImplementedError(f"protocol {self.name!r} deals no keys")

    def use_key_file(self, data: bytes, *, role: str) -> None:
        """Load the keys dealt out of band for ``role`` (``"server"``, ``"clients"`` or ``"authority"``); only protocols with
        :attr:`needs_key_file`."""
        raise NotImplementedError(f"protocol {self.name!r} takes no key file")

    @property
    def waits_for_authority(self) -> bool:
        """True when this process's server half has a stage answered by the key authority (:data:`AUTHORITY`), a party of
        its own: CKKS with ``ckks_key_holder = "authority"`` on a deployment, where the server holds no secret key."""
        return False

    def authority_answer(self, stage: str, request: Any) -> Any:
        """The key authority's reply to a stage request addressed to :data:`AUTHORITY` (only in the authority's process)."""
        raise NotImplementedError(f"protocol {self.name!r} has no key authority")

    @classmethod
    def from_config(cls, config: SecureAggregationConfig, *, seed: int) -> AggregationProtocol:
        """The protocol a run's ``[secure_aggregation]`` section describes (plaintext takes no options)."""
        return cls()

    @classmethod  # noqa: B027 (optional hook)
    def check_config(cls, config: Config) -> None:
        """Refuse (ConfigError) settings of this protocol that contradict the rest of ``config`` (called by config
        validation, before any data is loaded; e.g. a masking threshold that no round size could meet)."""

    @classmethod  # noqa: B027 (optional hook)
    def check_run(cls, config: Config, data: FederatedData) -> None:
        """Refuse (ConfigError) settings this protocol cannot run with on ``data``, before anything is written
        (e.g. CKKS parameters whose headroom every client's sum would exceed)."""

    @abstractmethod
    def server_round(
        self,
        round: int,
        participants: Sequence[int],
        *,
        weight_bound: float | None = None,
        layout: VectorLayout | None = None,
        instructions_digest: bytes | None = None,
    ) -> ServerRound:
        """The server half of round ``round`` with these participants.

        ``weight_bound`` is the public bound on any participant's weight this round (the
        largest example count under FedAvg weighting), for protocols that encode fixed-point.
        ``layout`` is the update layout the server expects, from its own model
        (``VectorLayout.of_arrays(global trainable parameters, expected statistics)``): secure
        protocols then refuse any other, instead of letting the first message they accept fix it.
        ``instructions_digest`` is the digest of the fit request the server sends every participant
        (:func:`~secure_ffm.engine.wire.instructions_digest`), for a protocol whose client halves
        bind their messages to it (:attr:`ClientRound.binds_instructions`).
        """

    @abstractmethod
    def client_round(self, client_id: int, round: int) -> ClientRound:
        """The client half of round ``round`` for client ``client_id`` (runs on the client)."""

    # ---------------------------------------------------------------- in this process

    in_process: InProcessRound | None = None
    """The round :meth:`begin_round` set up (its client halves and server half), for tests and direct use."""

    def begin_round(
        self, round: int, participants: Sequence[int], *, weight_bound: float | None = None, layout: VectorLayout | None = None
    ) -> None:
        """Set up round ``round`` in this process: create the halves and run the set-up stages (see :class:`InProcessRound`)."""
        self.in_process = InProcessRound(self, round, participants, weight_bound=weight_bound, layout=layout)

    def encode(self, update: ClientUpdate, *, weight: float, rng: np.random.Generator | None = None) -> ClientMessage:
        """Client side of the round :meth:`begin_round` set up: ``update``'s client encodes it (a protocol without set-up
        stages needs no :meth:`begin_round`)."""
        if self.in_process is None or self.in_process.round != update.round:
            return self.client_round(update.client_id, update.round).encode(update, weight=weight, rng=rng)
        return self.in_process.encode(update, weight=weight, rng=rng)

    def accumulator(self, round: int) -> Accumulator:
        """Server side of the round :meth:`begin_round` set up: a running aggregate whose ``result`` runs the closing stages."""
        if self.in_process is None or self.in_process.round != round:
            raise AggregationError(f"round {round}: the {self.name} round has not begun (call begin_round)")
        return _InProcessAccumulator(self.in_process)

    def aggregate(self, round: int, messages: Sequence[ClientMessage]) -> Aggregate:
        """Server side, all at once: the weighted mean of the clients' deltas, from their messages alone."""
        accumulator = self.accumulator(round)
        for message in messages:
            accumulator.add(message)
        return accumulator.result()


def weighted_mean(deltas: Sequence[NamedArrays], weights: Sequence[float]) -> NamedArrays:
    """``sum_i w_i d_i / sum_i w_i`` per array, accumulated in float64."""
    if not deltas:
        raise AggregationError("no client updates to aggregate")
    total = float(sum(weights))
    if total <= 0:
        raise AggregationError(f"total client weight is {total}; at least one client must have examples")
    out: NamedArrays = {}
    for name in deltas[0]:
        acc = np.zeros_like(deltas[0][name], dtype=np.float64)
        for delta, w in zip(deltas, weights, strict=True):
            acc += w * delta[name].astype(np.float64)
        out[name] = (acc / total).astype(np.float32)
    return out


class PlaintextAggregation(AggregationProtocol):
    """No protection: each client sends ``weight * delta`` and its weight; the server sums and divides."""

    name = "none"
    label = "none"
    WEIGHT_KEY = "__weight__"
    STAT_PREFIX = "__stat__/"

    def server_round(
        self,
        round: int,
        participants: Sequence[int],
        *,
        weight_bound: float | None = None,
        layout: VectorLayout | None = None,
        instructions_digest: bytes | None = None,
    ) -> ServerRound:
        """With a ``layout`` the server expects exactly these arrays, so a first message of another shape is refused
        (instead of fixing the shapes and getting every honest client refused after it)."""
        expected = None
        if layout is not None:
            expected = {name: tuple(shape) for name, shape in layout.delta}
            expected.update({self.STAT_PREFIX + name: tuple(shape) for name, shape in layout.statistics})
        return PlaintextAccumulator(round, expected=expected, participants=participants)

    def client_round(self, client_id: int, round: int) -> ClientRound:
        return PlaintextClientRound()

    def accumulator(self, round: int) -> Accumulator:
        """The round :meth:`begin_round` set up, or (without one) a running sum that takes the first message's arrays."""
        if self.in_process is None or self.in_process.round != round:
            return PlaintextAccumulator(round)
        return super().accumulator(round)


class PlaintextClientRound(ClientRound):
    """Sends ``weight * delta``, ``weight * statistics`` and the weight in the clear."""

    uses_rng = False

    def encode(
        self,
        update: ClientUpdate,
        *,
        weight: float,
        rng: np.random.Generator | None = None,
        payload: Any = None,
        instructions_digest: bytes | None = None,
    ) -> ClientMessage:
        message: dict[str, np.ndarray | bytes] = {k: (weight * v).astype(np.float32, copy=False) for k, v in update.delta.items()}
        for k, v in update.statistics.items():
            message[PlaintextAggregation.STAT_PREFIX + k] = weight * np.asarray(v, dtype=np.float64)
        message[PlaintextAggregation.WEIGHT_KEY] = np.asarray([weight], dtype=np.float64)
        return ClientMessage(update.client_id, update.round, message, update.num_examples, dict(update.metrics))


def _float_array(value: Any) -> np.ndarray:
    """``value`` as a float32 or float64 array (float32 kept as it is; anything else converted to float64)."""
    array = np.asarray(value)
    return array if array.dtype in (np.float32, np.float64) else np.asarray(array, dtype=np.float64)


class PlaintextAccumulator(Accumulator, ServerRound):
    """Running float64 sums of the weighted deltas, the weighted statistics and the weights."""

    def __init__(
        self, round: int, *, expected: Mapping[str, tuple[int, ...]] | None = None, participants: Collection[int] | None = None
    ) -> None:
        """``expected``: the arrays the server expects (else the first message fixes them); ``participants``: who may send."""
        self.round = round
        self.expected = dict(expected) if expected is not None else None
        self.participants = frozenset(int(c) for c in participants) if participants is not None else None
        self.seen: set[int] = set()
        self.total_weight = 0.0
        self.sums: dict[str, np.ndarray] = {}

    def add(self, message: ClientMessage) -> None:
        who = f"round {self.round}: client {message.client_id}"
        if message.client_id in self.seen:
            raise AggregationError(f"{who} sent twice")
        if message.round != self.round:
            raise AggregationError(f"{who} sent a message of round {message.round} (replayed or stale)")
        if self.participants is not None and message.client_id not in self.participants:
            raise AggregationError(f"{who} is not a participant of this round")
        if not isinstance(message.payload, Mapping) or not all(
            isinstance(k, str) and isinstance(v, np.ndarray | np.generic) and v.dtype.kind in "fiub" for k, v in message.payload.items()
        ):
            raise AggregationError(f"{who} sent a payload that is not a table of numeric arrays")
        payload = dict(message.payload)
        if PlaintextAggregation.WEIGHT_KEY not in payload:
            raise AggregationError(f"{who} sent no weight")
        weights = np.asarray(payload.pop(PlaintextAggregation.WEIGHT_KEY))
        if weights.size != 1:
            raise AggregationError(f"{who} sent a weight of {weights.size} values")
        weight = float(weights.reshape(-1)[0])
        # float32 deltas stay float32 until they are added (float64 += float32 widens each value exactly, as a float64
        # copy would, without writing one: 1.6 MB less per client of the CNN); any other type becomes float64 first
        arrays = {name: _float_array(value) for name, value in payload.items()}
        if not math.isfinite(weight) or weight < 0:
            raise AggregationError(f"{who} sent weight {weight}")
        reference = self.expected if self.expected is not None else {name: s.shape for name, s in self.sums.items()} if self.sums else None
        if reference is not None:
            if set(arrays) != set(reference):
                raise AggregationError(f"{who} sent arrays {sorted(set(arrays) ^ set(reference))[:3]} that differ from the expected ones")
            for name, array in arrays.items():
                if array.shape != tuple(reference[name]):
                    raise AggregationError(f"{who} sent {name} of shape {array.shape}, expected {tuple(reference[name])}")
        for name, array in arrays.items():
            if not np.all(np.isfinite(array)):
                raise AggregationError(f"{who} sent non-finite values in {name}")
        # validated: fold in
        for name, array in arrays.items():
            if name in self.sums:
                self.sums[name] += array
            else:
                self.sums[name] = array.astype(np.float64)  # always a copy
        self.total_weight += weight
        self.seen.add(message.client_id)

    def result(self) -> Aggregate:
        if not self.seen:
            raise AggregationError(f"round {self.round}: no client messages to aggregate")
        if self.total_weight <= 0:
            raise AggregationError(f"round {self.round}: total client weight is {self.total_weight}")
        prefix = PlaintextAggregation.STAT_PREFIX
        mean = {k: (v / self.total_weight).astype(np.float32) for k, v in self.sums.items() if not k.startswith(prefix)}
        stats = {k[len(prefix) :]: v / self.total_weight for k, v in self.sums.items() if k.startswith(prefix)}
        return Aggregate(mean_delta=mean, total_weight=self.total_weight, num_clients=len(self.seen), mean_statistics=stats)

    def finish(self) -> Stages[Aggregate]:
        """No closing stage: the sums are in the clear."""
        return self.result()
        yield  # a generator without stages
