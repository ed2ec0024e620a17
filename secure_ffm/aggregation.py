"""The server's aggregation step, as a protocol with a client half and a server half.

``encode`` runs on the client after its update transforms and produces the
:class:`~secure_ffm.wire.ClientMessage` it sends; ``aggregate`` runs on the server
and sees only those messages. Plaintext aggregation sends weighted deltas in the
clear; secure aggregation protocols (pairwise masking, CKKS) register here and
replace both halves, so the server learns only the weighted sum.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from secure_ffm.variants import PROTOCOLS  # noqa: F401 (re-exported: the registry of aggregation protocols)
from secure_ffm.wire import ClientMessage, ClientUpdate, NamedArrays

if TYPE_CHECKING:
    from secure_ffm.config import Config, SecureAggregationConfig
    from secure_ffm.data.base import FederatedData
    from secure_ffm.secagg.protocol import VectorLayout


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

    @classmethod
    def from_config(cls, config: SecureAggregationConfig, *, seed: int) -> AggregationProtocol:
        """The protocol a run's ``[secure_aggregation]`` section describes (plaintext takes no options)."""
        return cls()

    @classmethod  # noqa: B027 (optional hook)
    def check_run(cls, config: Config, data: FederatedData) -> None:
        """Refuse (ConfigError) settings this protocol cannot run with on ``data``, before anything is written
        (e.g. CKKS parameters whose headroom every client's sum would exceed)."""

    def begin_round(  # noqa: B027 (optional hook)
        self, round: int, participants: Sequence[int], *, weight_bound: float | None = None, layout: VectorLayout | None = None
    ) -> None:
        """Called before any client trains; interactive protocols run their key set-up here.

        ``weight_bound`` is the public bound on any participant's weight this round (the
        largest example count under FedAvg weighting), for protocols that encode fixed-point.
        ``layout`` is the update layout the server expects, from its own model
        (``VectorLayout.of_arrays(global trainable parameters, expected statistics)``): secure
        protocols then refuse any other, instead of letting the first message they accept fix it.
        """

    @abstractmethod
    def encode(self, update: ClientUpdate, *, weight: float, rng: np.random.Generator | None = None) -> ClientMessage:
        """Client side: turn a (transformed) update into the message the server receives.

        ``rng`` is the client's secret generator for any randomness of the encoding (e.g. stochastic rounding);
        without one a protocol may fall back to a generator seeded from the run's seed (reproducible, public)."""

    @abstractmethod
    def accumulator(self, round: int) -> Accumulator:
        """Server side: a fresh running aggregate for ``round``."""

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

    def __init__(self) -> None:
        self.expected: dict[str, tuple[int, ...]] | None = None

    def begin_round(
        self, round: int, participants: Sequence[int], *, weight_bound: float | None = None, layout: VectorLayout | None = None
    ) -> None:
        """With a ``layout`` the server expects exactly these arrays, so a first message of another shape is refused
        (instead of fixing the shapes and getting every honest client refused after it)."""
        if layout is None:
            self.expected = None
            return
        self.expected = {name: tuple(shape) for name, shape in layout.delta}
        self.expected.update({self.STAT_PREFIX + name: tuple(shape) for name, shape in layout.statistics})

    def encode(self, update: ClientUpdate, *, weight: float, rng: np.random.Generator | None = None) -> ClientMessage:
        payload: dict[str, np.ndarray | bytes] = {k: (weight * v).astype(np.float32) for k, v in update.delta.items()}
        for k, v in update.statistics.items():
            payload[self.STAT_PREFIX + k] = weight * np.asarray(v, dtype=np.float64)
        payload[self.WEIGHT_KEY] = np.asarray([weight], dtype=np.float64)
        return ClientMessage(update.client_id, update.round, payload, update.num_examples, dict(update.metrics))

    def accumulator(self, round: int) -> Accumulator:
        return PlaintextAccumulator(round, expected=self.expected)


class PlaintextAccumulator(Accumulator):
    """Running float64 sums of the weighted deltas, the weighted statistics and the weights."""

    def __init__(self, round: int, *, expected: Mapping[str, tuple[int, ...]] | None = None) -> None:
        self.round = round
        self.expected = dict(expected) if expected is not None else None
        self.seen: set[int] = set()
        self.total_weight = 0.0
        self.sums: dict[str, np.ndarray] = {}

    def add(self, message: ClientMessage) -> None:
        who = f"round {self.round}: client {message.client_id}"
        if message.client_id in self.seen:
            raise AggregationError(f"{who} sent twice")
        if message.round != self.round:
            raise AggregationError(f"{who} sent a message of round {message.round} (replayed or stale)")
        payload = dict(message.payload)
        if PlaintextAggregation.WEIGHT_KEY not in payload:
            raise AggregationError(f"{who} sent no weight")
        weight = float(np.asarray(payload.pop(PlaintextAggregation.WEIGHT_KEY)).reshape(-1)[0])
        arrays = {name: np.asarray(value, dtype=np.float64) for name, value in payload.items()}
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
                self.sums[name] = array.copy()
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
