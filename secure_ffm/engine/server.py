"""The server half of a federated round, independent of any runner.

The server samples clients, sends them the global trainable parameters with the
strategy's settings, hands the clients' messages to the aggregation protocol's
server half (which may be secure: the server then sees only masked or encrypted
data) and lets the strategy turn the aggregate into new global parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from secure_ffm.engine.aggregation import Accumulator, Aggregate, AggregateStep, AggregationProtocol
from secure_ffm.engine.sampling import ClientSampling, FixedSizeSampling
from secure_ffm.engine.strategies import Strategy
from secure_ffm.engine.wire import FitInstructions, NamedArrays
from secure_ffm.seeding import SAMPLING, generator


class Server:
    """Holds the global parameters; samples, configures and aggregates each round."""

    def __init__(
        self,
        *,
        strategy: Strategy,
        protocol: AggregationProtocol,
        parameters: NamedArrays,
        num_clients: int,
        clients_per_round: int,
        seed: int,
        aggregate_steps: Sequence[AggregateStep] = (),
        sampling: Callable[[int], np.random.Generator | None] | None = None,
        client_sampling: ClientSampling | None = None,
        ema_decay: float = 0.0,
    ) -> None:
        self.strategy = strategy
        self.protocol = protocol
        self.parameters = {k: np.asarray(v, dtype=np.float32) for k, v in parameters.items()}
        self.num_clients = num_clients
        self.clients_per_round = clients_per_round or num_clients
        self.seed = seed
        self.aggregate_steps = tuple(aggregate_steps)
        self.extra_fit_config: list = []
        self.extra_fit_arrays: list[Callable[[int], NamedArrays]] = []
        """Round -> arrays broadcast with the parameters (a continual method's penalty)."""
        self.sampling = sampling
        """Round -> generator for client sampling when it must be secret (DP-FedAvg's amplification); None: seeded."""
        self.client_sampling = client_sampling or FixedSizeSampling()
        """Fixed-size or Poisson (``server.client_sampling``, secure_ffm/engine/sampling.py)."""
        self.ema_decay = float(ema_decay)
        self.average: dict[str, np.ndarray] | None = None
        """The exponential moving average of the parameters (float64), when ``ema_decay`` > 0; None before the first
        update (:meth:`update_average`)."""

    def update_average(self) -> None:
        """Fold the current parameters into the moving average (``server.ema_decay``); call after every change."""
        if not self.ema_decay:
            return
        if self.average is None:
            self.average = {k: np.asarray(v, dtype=np.float64).copy() for k, v in self.parameters.items()}
            return
        b = self.ema_decay
        self.average = {k: b * self.average[k] + (1.0 - b) * np.asarray(v, dtype=np.float64) for k, v in self.parameters.items()}

    @property
    def model_parameters(self) -> NamedArrays:
        """The model that is evaluated, written and kept: the moving average when ``server.ema_decay`` > 0 (and one
        exists), else the parameters themselves. Training always continues from :attr:`parameters`."""
        if self.average is None:
            return self.parameters
        return {k: v.astype(np.float32) for k, v in self.average.items()}

    def sample_clients(self, round: int) -> list[int]:
        """The round's clients by :attr:`client_sampling` (fixed-size or Poisson), from a generator of (seed, round), or
        of the server's secret when a privacy mechanism's amplification by subsampling needs the choice hidden from
        outsiders. Under Poisson sampling the list may be empty."""
        if self.clients_per_round >= self.num_clients:
            return list(range(self.num_clients))
        rng = self.sampling(round) if self.sampling is not None else None
        if rng is None:
            rng = generator(self.seed, SAMPLING, round)
        return self.client_sampling.sample(rng, num_clients=self.num_clients, clients_per_round=self.clients_per_round)

    def apply_empty(self, round: int, statistics: NamedArrays) -> bool:
        """A round in which no update arrived: when an aggregate step must act on it anyway (DP-FedAvg's central
        noise under Poisson sampling, whose mechanism releases noise alone for an empty sample), apply the steps and
        the strategy to the zero sum and return True; otherwise leave the model unchanged and return False."""
        if not any(step.acts_on_empty_rounds for step in self.aggregate_steps):
            return False
        # in the layout's (sorted) order, as a round's aggregate is: the noise draws land on the same arrays whatever
        # order the parameters were restored in (a resumed run's empty rounds drew other noise than the uninterrupted run's)
        zeros = Aggregate(
            mean_delta={k: np.zeros_like(self.parameters[k]) for k in sorted(self.parameters)},
            total_weight=0.0,
            num_clients=0,
            mean_statistics={k: np.zeros_like(np.asarray(statistics[k], dtype=np.float64)) for k in sorted(statistics)},
        )
        self.apply(round, zeros)
        return True

    def fit_instructions(self, round: int, participants: Sequence[int]) -> FitInstructions:
        """The strategy's settings, then those of any extra configurer (e.g. a privacy mechanism's clip norm)."""
        config = {"weighting": self.strategy.weighting, "participants": len(participants), **self.strategy.configure_fit(round)}
        for configure in self.extra_fit_config:
            config.update(configure(round, participants))
        arrays: dict[str, np.ndarray] = {}
        for broadcast in self.extra_fit_arrays:
            arrays.update(broadcast(round))
        return FitInstructions(round=round, parameters=self.parameters, config=config, arrays=arrays)

    def accumulator(self, round: int) -> Accumulator:
        """The protocol's running aggregate for ``round``: add each client's message as it arrives."""
        return self.protocol.accumulator(round)

    def apply(self, round: int, aggregate: Aggregate) -> Aggregate:
        """Run the server-side steps on the aggregate, then step the global model with the strategy."""
        for step in self.aggregate_steps:
            aggregate = step(round, aggregate)
        self.parameters = self.strategy.apply(round, self.parameters, aggregate.mean_delta)
        self.update_average()
        return aggregate
