"""The round orchestrator: the server's side of a federated round, whatever the transport.

One round (Federated Foundation Models, arXiv 2305.11414, Sec. 3: the server coordinates
local training on private data and aggregates the updates):

1. sample the participants (:meth:`Server.sample_clients`) and fix the fit instructions;
2. run the protocol's set-up stages (:meth:`ServerRound.setup`, e.g. masking's key
   agreement) through the transport;
3. send the fit requests and fold each client's message into the protocol's running
   aggregate as it arrives (the server holds one message at a time); a message that fails
   validation is rejected alone, a declined or dropped client is left out;
4. run the protocol's closing stages (:meth:`ServerRound.finish`: unmasking, decryption) and
   apply the server steps and the strategy to the aggregate;
5. evaluate the global model when due.

It knows clients only by id, through a :class:`~secure_ffm.transports.base.Transport`; it
writes no file (the run writer does) and holds no client state. What the server receives
is also handed to :class:`RoundHooks` (the leakage audit records it there).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from secure_ffm.engine.aggregation import Aggregate, AggregationError, AggregationProtocol, Stage, StageReplies, VectorLayout, run_stages
from secure_ffm.engine.client import TRAIN_LOSS_STATISTIC, AggregatedLoss, client_weight
from secure_ffm.engine.server import Server
from secure_ffm.engine.training import EvalResult
from secure_ffm.engine.wire import ClientMessage, FitInstructions, NamedArrays, instructions_digest, nbytes
from secure_ffm.errors import RoundAbortedError
from secure_ffm.transports.base import FitRequest, Transport

log = logging.getLogger(__name__)


class RunObserver:
    """Receives progress events; the CLI draws progress bars from them. Methods are no-ops here."""

    def run_started(self, total_rounds: int, start_round: int) -> None: ...

    def round_started(self, round: int, clients: Sequence[int]) -> None: ...

    def client_finished(self, round: int, client_id: int) -> None: ...

    def round_finished(self, round: int, metrics: Mapping[str, Any]) -> None: ...


class RoundHooks:
    """What the server receives, as it receives it (no-ops here; the leakage audit's recorder overrides them)."""

    def message_received(self, round: int, message: ClientMessage, instructions: FitInstructions) -> None:
        """A client's message, before the protocol's server half folds it in."""

    def aggregate_computed(self, round: int, aggregate: Aggregate, clients: Sequence[int], instructions: FitInstructions) -> None:
        """The round's aggregate, before the server steps (e.g. central noise) and the strategy."""


class RoundOrchestrator:
    """Runs rounds: the server and the protocol's server half on one side, clients behind a transport.

    Parameters
    ----------
    server
        Holds the global parameters; samples, configures and applies the strategy.
    protocol
        The aggregation protocol (only its server half runs here).
    transport
        Reaches the clients.
    statistics
        The statistics the server expects beside each delta (e.g. DP-FedAvg's clipped-update counts), for the layout.
    evaluate
        Evaluates global parameters on the server's test data; None: no server-side evaluation.
    eval_every, rounds
        Evaluate every ``eval_every`` rounds and after round ``rounds``.
    on_abort
        ``"skip"``: a round whose aggregation fails leaves the model unchanged; ``"stop"``: raise RoundAbortedError.
    round_metrics
        Extra columns for a round's row (e.g. the privacy ledger's epsilon).
    hooks
        Told what the server receives (the leakage audit's recorder; a test's spy).
    round_statistics
        ``(round, parameters) -> statistics`` a round expects beyond ``statistics`` (a continual method's importances).
    aggregated_loss
        When the clients send their training loss inside the protocol's vector rather than in their metrics (a masked
        or encrypted run without DP, :class:`~secure_ffm.engine.client.AggregatedLoss`): the round's ``train_loss``
        is decoded from the aggregate.
    """

    def __init__(
        self,
        *,
        server: Server,
        protocol: AggregationProtocol,
        transport: Transport,
        statistics: NamedArrays | None = None,
        evaluate: Callable[[NamedArrays], EvalResult] | None = None,
        eval_every: int = 1,
        rounds: int = 1,
        on_abort: str = "skip",
        round_metrics: Callable[[int], Mapping[str, Any]] | None = None,
        hooks: Sequence[RoundHooks] = (),
        observer: RunObserver | None = None,
        round_statistics: Callable[[int, NamedArrays], NamedArrays] | None = None,
        aggregated_loss: AggregatedLoss | None = None,
    ) -> None:
        self.server = server
        self.protocol = protocol
        self.transport = transport
        self.statistics = dict(statistics or {})
        self.evaluate = evaluate
        self.eval_every = eval_every
        self.rounds = rounds
        self.on_abort = on_abort
        self.round_metrics = round_metrics
        self.hooks = tuple(hooks)
        self.observer = observer or RunObserver()
        self.round_statistics = round_statistics
        self.aggregated_loss = aggregated_loss
        if aggregated_loss is not None:
            self.statistics[TRAIN_LOSS_STATISTIC] = np.zeros(1)

    def _deliver(self, round: int) -> Callable[[Stage], StageReplies]:
        return lambda stage: self.transport.exchange(round, stage)

    def run_round(self, round: int, *, participants: Sequence[int] | None = None) -> dict[str, Any]:
        """One round; returns its metrics row (the keys of ``metrics.jsonl``).

        ``participants`` replaces the server's sampling (the leakage audit picks its target and the others)."""
        try:
            return self._run_round(round, participants)
        finally:
            self.transport.end_round(round)

    def _run_round(self, round: int, chosen: Sequence[int] | None) -> dict[str, Any]:
        round_start = time.perf_counter()
        participants = sorted(int(c) for c in chosen) if chosen is not None else self.server.sample_clients(round)
        self.observer.round_started(round, participants)
        instructions = self.server.fit_instructions(round, participants)
        weighting = str(instructions.config.get("weighting", "examples"))
        counts = self.transport.example_counts(participants)
        weight_bound = max((client_weight(weighting, counts[c]) for c in participants), default=0.0)
        setup_start = time.perf_counter()
        # the server fixes the layout it expects from its own model, never from the first message it receives
        expected = dict(self.statistics)
        if self.round_statistics is not None:
            expected.update(self.round_statistics(round, instructions.parameters))
        layout = VectorLayout.of_arrays(instructions.parameters, expected)
        # an empty round (Poisson client sampling) has no protocol round: nobody to set up with or to hear from
        # the digest of the request every participant gets, to which masking's clients bind their masks (a lying server
        # that sends clients different models unmasks noise); hashed only for a protocol that binds
        bound = instructions_digest(instructions) if self.protocol.binds_instructions and participants else None
        server_round = (
            self.protocol.server_round(round, participants, weight_bound=weight_bound, layout=layout, instructions_digest=bound)
            if participants
            else None
        )
        aborted = None
        try:
            payloads = run_stages(server_round.setup(), self._deliver(round)) if server_round is not None else {}
        except AggregationError as error:
            aborted = self._abort(error)
            payloads = None
        except Exception as error:  # the parties' stage replies are input: whatever they make a protocol raise
            aborted = self._abort(
                AggregationError(f"round {round}: a set-up reply could not be read ({type(error).__name__}: {error!s:.200})")
            )
            payloads = None
        setup_seconds = time.perf_counter() - setup_start
        sent, declined, rejected, dropped = [], [], [], []
        reasons: dict[str, str] = {}
        examples, losses, bytes_up, train_seconds, encode_seconds, receive_seconds = [], [], 0, 0.0, 0.0, 0.0
        requests = {c: FitRequest(instructions, payloads.get(c)) for c in participants} if payloads is not None else {}
        for reply in self.transport.fit(round, requests) if requests else ():
            client_id, message = reply.client_id, reply.message
            if reply.declined is not None:
                declined.append(client_id)
                reasons[str(client_id)] = reply.declined
                log.info("round %d: client %d skipped: %s", round, client_id, reply.declined)
            elif message is None:
                dropped.append(client_id)
            else:
                for hook in self.hooks:
                    hook.message_received(round, message, instructions)
                receive_start = time.perf_counter()
                try:
                    server_round.add(message)  # streamed: the server holds one message at a time
                except AggregationError as error:  # the others' contributions are kept
                    rejected.append(client_id)
                    log.warning("%s; its update is left out of the round", error)
                except Exception as error:  # a party's bytes must never end the run: whatever they make add() raise
                    rejected.append(client_id)
                    log.warning(
                        "round %d: client %d's message could not be read (%s: %.200s); its update is left out of the round",
                        round,
                        client_id,
                        type(error).__name__,
                        error,
                    )
                else:
                    sent.append(client_id)
                    examples.append(message.num_examples)
                    # a client that keeps its loss to itself (privacy.client_metrics = "public") sends none
                    losses.append(message.metrics.get("train_loss", math.nan))
                    bytes_up += message.nbytes
                    train_seconds += message.metrics.get("train_seconds", 0.0)
                    encode_seconds += message.metrics.get("encode_seconds", 0.0)
                finally:  # server time, rejected messages included
                    receive_seconds += time.perf_counter() - receive_start
            self.observer.client_finished(round, client_id)
            del message, reply
        aggregate_start = time.perf_counter()
        timings: dict[str, float] = {}
        aggregated_loss = None
        aggregated = False
        if aborted is None and server_round is not None and (sent or dropped):
            try:
                aggregate = run_stages(server_round.finish(), self._deliver(round))
            except AggregationError as error:
                aborted = self._abort(error)
            except Exception as error:  # as in the set-up: a reply must not end the run
                aborted = self._abort(
                    AggregationError(f"round {round}: a closing reply could not be read ({type(error).__name__}: {error!s:.200})")
                )
            else:
                aggregated = True
                for hook in self.hooks:
                    hook.aggregate_computed(round, aggregate, sent, instructions)
                if self.aggregated_loss is not None and TRAIN_LOSS_STATISTIC in aggregate.mean_statistics:
                    aggregated_loss = self.aggregated_loss.decode(aggregate.mean_statistics[TRAIN_LOSS_STATISTIC])
                timings = self.server.apply(round, aggregate).timings
        if not aggregated:
            self._without_aggregate(round, expected, aborted=aborted is not None, participants=bool(participants))
        aggregate_seconds = receive_seconds + time.perf_counter() - aggregate_start
        fit_seconds = time.perf_counter() - round_start

        weights = np.asarray(examples, dtype=np.float64)
        row: dict[str, Any] = {
            "round": round,
            # None when any client kept its loss to itself (privacy.client_metrics = "public", or distributed DP-SGD's NaN)
            "train_loss": (
                float(np.sum(weights * np.asarray(losses)) / np.sum(weights)) if sent and np.isfinite(losses).all() else aggregated_loss
            ),
            "test_loss": None,
            "test_accuracy": None,
            "test_macro_f1": None,
            "clients": sorted(sent),  # arrival order differs between transports; the row does not
            "skipped_clients": sorted(declined),
            "skipped_reasons": reasons,
            "rejected_clients": sorted(rejected),
            "dropped_clients": sorted(dropped),
            "aborted": aborted,
            "num_examples": int(weights.sum()),
            "bytes_up": int(bytes_up),
            "bytes_down": int((nbytes(instructions.parameters) + nbytes(instructions.arrays)) * len(participants)),
            "client_train_seconds": float(train_seconds),
            "encode_seconds": float(encode_seconds),
            "setup_seconds": setup_seconds,
            "aggregate_seconds": aggregate_seconds,
            **{f"aggregate_{phase}_seconds": value for phase, value in timings.items()},
            "fit_seconds": fit_seconds,
            **(self.round_metrics(round) if self.round_metrics is not None else {}),
        }
        eval_seconds = 0.0
        if self.evaluate is not None and (round == self.rounds or round % self.eval_every == 0):
            eval_start = time.perf_counter()
            result = self.evaluate(self.server.model_parameters)
            eval_seconds = time.perf_counter() - eval_start
            row.update(result.as_dict("test_"))
        row["eval_seconds"] = eval_seconds
        row["seconds"] = time.perf_counter() - round_start
        return row

    def _abort(self, error: AggregationError) -> str:
        if self.on_abort == "stop":
            raise RoundAbortedError(f'{error} (secure_aggregation.on_abort = "stop")') from None
        log.warning("%s; the round has no aggregate", error)
        return str(error)

    def _without_aggregate(self, round: int, statistics: NamedArrays, *, aborted: bool, participants: bool) -> None:
        """A round that aborted or in which no update arrived. A mechanism that acts on empty rounds (DP-FedAvg's noise
        under Poisson sampling) acts on an aborted one too: a model left unchanged would show a reader of the released
        models that the round failed (for instance that its secret sample was too small to unmask), and the ledger
        charged the round anyway. Logged at DEBUG: which rounds had nobody is the secret sample's size."""
        if self.server.apply_empty(round, statistics):
            log.debug("round %d: %s; the round's noise alone was applied", round, "aborted" if aborted else "no client sent an update")
        elif aborted:
            log.info("round %d: the global model is unchanged", round)
        elif participants:
            log.warning("round %d: no client sent an update; the global model is unchanged", round)
        else:
            log.info("round %d: no client was sampled; the global model is unchanged", round)
