"""A continual run's bookkeeping inside the one engine path (:class:`~secure_ffm.run.simulation.Simulation`).

The rounds, clients, protocols, privacy mechanisms, defenses, checkpoints and run directory are those of any
run; :class:`ContinualRun` only says, round by round, which stage is on: which examples each client trains on
(through the method, on the client's side), what the server broadcasts and expects beyond the update, how the
global model is evaluated (on every stage seen so far), and, at each stage's end, the row of the accuracy
matrix. Its state goes into every checkpoint, so ``--resume`` inside a stage continues to the uninterrupted result.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from secure_ffm.continual import metrics
from secure_ffm.continual.methods import ContinualMethod, build_method
from secure_ffm.data.stages import StageData, stage_at
from secure_ffm.engine.aggregation import Aggregate
from secure_ffm.engine.orchestrator import RoundHooks
from secure_ffm.engine.wire import FitInstructions, NamedArrays
from secure_ffm.models.objectives import EvalResult

if TYPE_CHECKING:
    from secure_ffm.config import Config
    from secure_ffm.data.base import FederatedData
    from secure_ffm.privacy.mechanisms import PrivacyMechanism
    from secure_ffm.run.simulation import Simulation

log = logging.getLogger(__name__)

BUDGET_REASON = "privacy budget"
"""How a client's refusal to train because its budget is spent begins (DP-SGD's ClientDeclined)."""


def check_continual(config: Config, data: FederatedData, privacy: PrivacyMechanism) -> None:
    """Refuse (ConfigError, before anything is written) a continual method that cannot run with this data and privacy."""
    build_method(config, data).check(spends_budget=privacy.spends_budget, privatizes_statistics=privacy.replaces_trainer)


class _AggregateToMethod(RoundHooks):
    def __init__(self, run: ContinualRun) -> None:
        self.run = run

    def aggregate_computed(self, round: int, aggregate: Aggregate, clients: Sequence[int], instructions: FitInstructions) -> None:
        self.run.method.aggregate_computed(round, self.run.stage(round), aggregate)


class ContinualRun:
    """The stages of a run with ``[continual]``, wired into a :class:`Simulation`'s server, orchestrator and clients."""

    def __init__(self, simulation: Simulation) -> None:
        self.simulation = simulation
        prepared = simulation.prepared
        self.config = prepared.config
        self.stages: tuple[StageData, ...] = prepared.data.stages
        self.method: ContinualMethod = build_method(self.config, prepared.data)
        self.matrix: list[list[float]] = []
        self.budget_exhausted: dict[int, dict[str, Any]] = {}
        self.current = self.stages[0]
        self.last_evaluation: dict[str, EvalResult] = {}
        server = simulation.server
        server.extra_fit_config.append(self._fit_config)
        server.extra_fit_arrays.append(lambda round: self.method.fit_arrays(round, self.stage(round)))

    @property
    def hooks(self) -> list[RoundHooks]:
        return [_AggregateToMethod(self)]

    def stage(self, round: int) -> StageData:
        return stage_at(self.stages, round)

    def _fit_config(self, round: int, participants: Sequence[int]) -> dict[str, Any]:
        stage = self.stage(round)
        return {"stage": stage.index, **self.method.fit_config(round, stage)}

    def expected_statistics(self, round: int, parameters: NamedArrays) -> NamedArrays:
        return self.method.expected_statistics(round, self.stage(round), parameters)

    def example_counts(self, stage: StageData) -> list[int]:
        """Each client's (largest) number of training examples in ``stage``: the weight bound of secure aggregation."""
        return [self.method.training_size(stage, k) for k in range(len(stage.client_indices))]

    # ---------------------------------------------------------------- rounds

    def begin_round(self, round: int) -> None:
        stage = self.stage(round)
        if stage is not self.current or round == stage.first_round:
            log.info("stage %d/%d (%s) from round %d", stage.index + 1, len(self.stages), stage.name, round)
        self.current = stage
        self.simulation.transport.set_example_counts(self.example_counts(stage))

    def follow(self, round: int) -> None:
        """A client's side of :meth:`begin_round` (a SuperNode, a pool worker): ``round``'s stage is on. The stages are the
        config's, so every process that built the run agrees on them; nothing else of the server's state is needed."""
        self.current = self.stage(round)

    def training_indices(self, client_id: int, state: dict[str, Any]) -> np.ndarray:
        """Runs for the client: its examples of the current stage, as the method extends them (e.g. its replay buffer)."""
        randomness = self.simulation.noise_policy.client(client_id, state)
        return self.method.training_indices(self.current, client_id, state, randomness)

    def evaluate(self, parameters: NamedArrays) -> EvalResult:
        """The global model on every stage seen so far; the result is their union (weighted by test sizes), and
        :attr:`last_evaluation` keeps each stage's."""
        sim = self.simulation
        results = {}
        for stage in self.stages[: self.current.index + 1]:
            results[stage.name] = self.method.evaluate(
                sim.prepared.model,
                sim.prepared.encoded_test,
                stage,
                self.current,
                parameters,
                batch_size=self.config.server.eval_batch_size,
            )
        self.last_evaluation = results
        sizes = np.asarray([r.num_examples for r in results.values()], dtype=np.float64)
        weights = sizes / sizes.sum()
        f1 = [r.macro_f1 for r in results.values() if r.macro_f1 is not None]
        return EvalResult(
            loss=float(np.dot(weights, [r.loss for r in results.values()])),
            accuracy=float(np.dot(weights, [r.accuracy for r in results.values()])),
            macro_f1=float(np.mean(f1)) if f1 else None,
            num_examples=int(sizes.sum()),
        )

    def finish_round(self, round: int, row: dict[str, Any]) -> None:
        """Add the stage columns to ``row``; at a stage's end, its accuracy-matrix row and the method's stage hook."""
        stage = self.stage(round)
        row["stage"], row["stage_index"] = stage.name, stage.index
        for client, reason in (row.get("skipped_reasons") or {}).items():
            if str(reason).startswith(BUDGET_REASON) and int(client) not in self.budget_exhausted:
                self.budget_exhausted[int(client)] = {"client": int(client), "round": round, "stage": stage.name}
                log.info("client %s spent its privacy budget: it stops contributing from round %d (stage %s)", client, round, stage.name)
        evaluated = row.get("test_accuracy") is not None
        if round == stage.last_round and not evaluated:  # every stage ends with an evaluation (the matrix needs it)
            row.update(self.evaluate(self.simulation.server.model_parameters).as_dict("test_"))
            evaluated = True
        if evaluated:
            row["stage_accuracy"] = {name: result.accuracy for name, result in self.last_evaluation.items()}
        if round == stage.last_round:
            self.matrix.append([self.last_evaluation[s.name].accuracy for s in self.stages[: stage.index + 1]])
            self.method.stage_finished(stage, self.simulation.server.parameters)

    # ---------------------------------------------------------------- state and summary

    def state_dict(self) -> dict[str, Any]:
        return {
            "matrix": self.matrix,
            "budget_exhausted": [self.budget_exhausted[k] for k in sorted(self.budget_exhausted)],
            "method": self.method.state_dict(),
        }

    def arrays(self) -> NamedArrays:
        return self.method.arrays()

    def load_state_dict(self, state: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        self.matrix = [list(map(float, row)) for row in state.get("matrix", [])]
        self.budget_exhausted = {int(e["client"]): dict(e) for e in state.get("budget_exhausted", [])}
        self.method.load_state_dict(state.get("method", {}), arrays)

    def summary(self) -> dict[str, Any]:
        class_names = self.simulation.prepared.data.dataset.class_names
        return {
            "method": self.method.name,
            "stages": [stage.describe(class_names) for stage in self.stages],
            "accuracy_matrix": metrics.square(self.matrix, len(self.stages)),
            "average_accuracy": metrics.average_accuracy(self.matrix),
            "forgetting": metrics.forgetting(self.matrix),
            "backward_transfer": metrics.backward_transfer(self.matrix),
            "budget_exhausted": [self.budget_exhausted[k] for k in sorted(self.budget_exhausted)],
        }
