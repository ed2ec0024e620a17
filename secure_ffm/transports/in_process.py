"""The in-process transport: the simulation's clients, called directly, one at a time.

Clients are lazy: ``make_client(client_id)`` materializes a :class:`~secure_ffm.engine.client.FederatedClient`
for the call (an index array and its state dict), so memory stays about one model plus the
data whatever the number of clients. Each client's protocol half for the round
(:class:`~secure_ffm.engine.aggregation.ClientRound`) lives here between stages, as it would on the
client's own machine, and is forgotten when the round ends: its round secrets are never
checkpointed and never reach the server. Dropouts are simulated: the chosen clients train
and encode, but their message never arrives and they answer no later stage.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence

from secure_ffm.engine.aggregation import AggregationError, AggregationProtocol, ClientRound, EncodingDeclined, Stage, StageReplies
from secure_ffm.engine.client import FederatedClient
from secure_ffm.engine.training import ClientDeclined
from secure_ffm.engine.wire import FitInstructions, NamedArrays
from secure_ffm.transports.base import FitReply, FitRequest, Transport

log = logging.getLogger(__name__)


def no_dropouts(round: int, participants: Sequence[int]) -> set[int]:
    return set()


class InProcessTransport(Transport):
    """Reaches the clients of this process by direct calls.

    Parameters
    ----------
    make_client
        Materializes client ``k`` for one call.
    protocol
        The aggregation protocol; its :meth:`~secure_ffm.engine.aggregation.AggregationProtocol.client_round` makes each
        client's half of a round (on the client side: the server half never sees it).
    example_counts
        Each client's number of examples.
    dropouts
        ``(round, participants) -> clients`` that drop after training and encoding (simulated network failures).
    on_client_done
        Called with ``(round, client_id)`` after each client's fit (progress bars).
    """

    def __init__(
        self,
        make_client: Callable[[int], FederatedClient],
        protocol: AggregationProtocol,
        *,
        example_counts: Sequence[int],
        dropouts: Callable[[int, Sequence[int]], set[int]] = no_dropouts,
        on_client_done: Callable[[int, int], None] | None = None,
    ) -> None:
        self.make_client = make_client
        self.protocol = protocol
        self._example_counts = list(example_counts)
        self.dropouts = dropouts
        self.on_client_done = on_client_done
        self._halves: dict[int, ClientRound] = {}
        self._round: int | None = None
        self._gone: set[int] = set()

    def example_counts(self, clients: Sequence[int]) -> dict[int, int]:
        return {int(c): self._example_counts[c] for c in clients}

    def set_example_counts(self, example_counts: Sequence[int]) -> None:
        """The clients' numbers of examples from now on (a continual run's new stage)."""
        self._example_counts = list(example_counts)

    def _half(self, round: int, client_id: int) -> ClientRound:
        """Client ``client_id``'s protocol half for ``round`` (made on its first request of the round)."""
        if self._round != round:  # a new round: the last one's halves are gone
            self.end_round(round)
            self._round = round
        half = self._halves.get(client_id)
        if half is None:
            half = self._halves[client_id] = self.protocol.client_round(client_id, round)
        return half

    def exchange(self, round: int, stage: Stage) -> StageReplies:
        replies, dropped = {}, set()
        for client_id, request in stage.requests.items():
            if client_id in self._gone:
                dropped.add(client_id)
                continue
            try:
                replies[client_id] = self._half(round, client_id).handle(stage.name, request)
            except AggregationError as refusal:  # an honest client that refuses a request just stops answering
                log.warning("round %d: client %d refused the %s stage: %s", round, client_id, stage.name, refusal)
                self._gone.add(client_id)
                dropped.add(client_id)
        return StageReplies(replies, frozenset(dropped))

    def fit(self, round: int, requests: Mapping[int, FitRequest]) -> Iterator[FitReply]:
        dropping = self.dropouts(round, sorted(requests))
        for client_id, request in requests.items():
            if client_id in self._gone:
                yield FitReply(client_id)
                continue
            try:
                message = self.make_client(client_id).fit(
                    request.instructions, encoder=self._half(round, client_id), payload=request.payload
                )
            except (ClientDeclined, EncodingDeclined) as reason:
                reply = FitReply(client_id, declined=str(reason))
            else:
                if client_id in dropping:  # trained and encoded, but its message never arrives
                    self._gone.add(client_id)
                    reply = FitReply(client_id)
                else:
                    reply = FitReply(client_id, message)
                del message
            yield reply
            if self.on_client_done is not None:
                self.on_client_done(round, client_id)

    def evaluate(self, parameters: NamedArrays, *, round: int, batch_size: int) -> dict[int, dict[str, float]]:
        ins = FitInstructions(round=round, parameters=dict(parameters))
        results = {}
        for client_id in range(len(self._example_counts)):
            result = self.make_client(client_id).evaluate(ins, batch_size=batch_size)
            results[client_id] = {**result.as_dict(), "num_examples": result.num_examples}
        return results

    def end_round(self, round: int) -> None:
        self._halves.clear()
        self._gone.clear()
        self._round = None
