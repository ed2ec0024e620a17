"""The server's aggregation step, as a protocol with a client half and a server half.

``encode`` runs on the client after its update transforms and produces the
:class:`~secure_ffm.wire.ClientMessage` it sends; ``aggregate`` runs on the server
and sees only those messages. Plaintext aggregation sends weighted deltas in the
clear; secure aggregation protocols (pairwise masking, CKKS) register here and
replace both halves, so the server learns only the weighted sum.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from secure_ffm.registry import Registry
from secure_ffm.wire import ClientMessage, ClientUpdate, NamedArrays

PROTOCOLS: Registry[type[AggregationProtocol]] = Registry("aggregation protocol")


class AggregationError(RuntimeError):
    """A round's aggregation cannot complete (e.g. too few clients survive)."""


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


class AggregationProtocol(ABC):
    """Client-side encoding plus server-side aggregation of client updates."""

    name: str = ""

    def begin_round(self, round: int, participants: Sequence[int]) -> None:  # noqa: B027 - optional hook
        """Called before any client trains; interactive protocols run their key set-up here."""

    @abstractmethod
    def encode(self, update: ClientUpdate, *, weight: float) -> ClientMessage:
        """Client side: turn a (transformed) update into the message the server receives."""

    @abstractmethod
    def aggregate(self, round: int, messages: Sequence[ClientMessage]) -> Aggregate:
        """Server side: the weighted mean of the clients' deltas, from their messages alone."""


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


@PROTOCOLS.register("none")
class PlaintextAggregation(AggregationProtocol):
    """No protection: each client sends ``weight * delta`` and its weight; the server sums and divides."""

    name = "none"
    WEIGHT_KEY = "__weight__"
    STAT_PREFIX = "__stat__/"

    def encode(self, update: ClientUpdate, *, weight: float) -> ClientMessage:
        payload: dict[str, np.ndarray | bytes] = {k: (weight * v).astype(np.float32) for k, v in update.delta.items()}
        for k, v in update.statistics.items():
            payload[self.STAT_PREFIX + k] = (weight * np.asarray(v, dtype=np.float64))
        payload[self.WEIGHT_KEY] = np.asarray([weight], dtype=np.float64)
        return ClientMessage(update.client_id, update.round, payload, update.num_examples, dict(update.metrics))

    def aggregate(self, round: int, messages: Sequence[ClientMessage]) -> Aggregate:
        if not messages:
            raise AggregationError(f"round {round}: no client messages to aggregate")
        seen: set[int] = set()
        total_weight = 0.0
        sums: dict[str, np.ndarray] = {}
        for message in messages:
            if message.client_id in seen:
                raise AggregationError(f"round {round}: client {message.client_id} sent twice")
            seen.add(message.client_id)
            if message.round != round:
                raise AggregationError(f"round {round}: client {message.client_id} sent a message of round {message.round}")
            weight = float(np.asarray(message.payload[self.WEIGHT_KEY])[0])
            total_weight += weight
            for name, value in message.payload.items():
                if name == self.WEIGHT_KEY:
                    continue
                array = np.asarray(value, dtype=np.float64)
                sums[name] = sums[name] + array if name in sums else array.copy()
        if total_weight <= 0:
            raise AggregationError(f"round {round}: total client weight is {total_weight}")
        mean = {k: (v / total_weight).astype(np.float32) for k, v in sums.items() if not k.startswith(self.STAT_PREFIX)}
        stats = {k[len(self.STAT_PREFIX) :]: v / total_weight for k, v in sums.items() if k.startswith(self.STAT_PREFIX)}
        return Aggregate(mean_delta=mean, total_weight=total_weight, num_clients=len(messages), mean_statistics=stats)
