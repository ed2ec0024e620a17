"""How the round orchestrator reaches clients: the transport interface.

The orchestrator (:class:`secure_ffm.engine.orchestrator.RoundOrchestrator`) never holds a
client object. It hands a transport the requests of one stage - a protocol's stage
(:class:`~secure_ffm.engine.aggregation.Stage`: keys, shares, unmasking, decryption) or the fit
stage (:class:`FitRequest`: the global model and settings, with the protocol's payload) -
and gets back each client's reply, or learns that the client dropped. The in-process
transport (:mod:`secure_ffm.transports.in_process`) calls the clients directly; a network
transport (Flower) serializes the same requests and replies (:mod:`secure_ffm.engine.wire`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from secure_ffm.engine.aggregation import Stage, StageReplies
from secure_ffm.engine.codec import wire_record
from secure_ffm.engine.wire import ClientMessage, FitInstructions, NamedArrays

FIT = "fit"
"""The stage that trains: the request is a :class:`FitRequest`, the reply a :class:`FitReply`."""


@wire_record
@dataclass(frozen=True)
class FitRequest:
    """Server -> client: train from these instructions and send the encoded update."""

    instructions: FitInstructions
    payload: Any = None
    """This client's part of the protocol's set-up (e.g. the encrypted shares routed to it); None without one."""


@dataclass(frozen=True)
class FitReply:
    """What came back from one client in the fit stage: its message, its refusal, or nothing (it dropped)."""

    client_id: int
    message: ClientMessage | None = None
    declined: str | None = None
    """Why the client sent nothing although it is still there (e.g. its privacy budget is spent)."""

    @property
    def dropped(self) -> bool:
        """No message and no refusal: the client went away (a dropped client may have trained and masked)."""
        return self.message is None and self.declined is None


class Transport(ABC):
    """Delivers the orchestrator's requests to clients and brings back their replies."""

    @abstractmethod
    def example_counts(self, clients: Sequence[int]) -> dict[int, int]:
        """Each client's number of examples: public metadata, needed before training for the protocol's weight bound
        (every client reveals it anyway as its message's ``num_examples``)."""

    def own_data_counts(self) -> dict[int, int]:
        """Client -> its number of examples, for the clients that train on data of their own (a deployment's nodes with
        node config ``data``) rather than on the server's partition; none in a simulation."""
        return {}

    def set_example_counts(self, example_counts: Sequence[int]) -> None:
        """The clients' numbers of examples from now on (``example_counts[client]``): a continual run's new stage."""
        raise NotImplementedError(f"{type(self).__name__} cannot change the clients' example counts (continual runs)")

    @abstractmethod
    def exchange(self, round: int, stage: Stage) -> StageReplies:
        """Deliver a protocol stage; a client that does not answer (or refuses) is listed as dropped."""

    @abstractmethod
    def fit(self, round: int, requests: Mapping[int, FitRequest]) -> Iterator[FitReply]:
        """Deliver the fit stage; yield each client's :class:`FitReply` as it arrives, so the server holds one at a time."""

    @abstractmethod
    def evaluate(self, parameters: NamedArrays, *, round: int, batch_size: int) -> dict[int, dict[str, float]]:
        """Every client's evaluation of ``parameters`` on its own examples (Flower's federated evaluation):
        ``{client: {"loss", "accuracy", "macro_f1", "num_examples"}}``; a client that cannot answer is left out."""

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release what the transport holds (worker processes); called when the run ends, also on failure."""

    def end_round(self, round: int) -> None:  # noqa: B027 (optional hook)
        """Forget the round's client halves (their round secrets); called when the round is over, aborted or not."""
