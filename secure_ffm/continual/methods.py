"""Continual-learning methods (``continual.method``): how a federation keeps what earlier stages taught.

Federated continual learning (Federated Foundation Models, arXiv 2305.11414, Sec. 4.4: the model keeps
learning from new private data at the edge) is a line of work of its own; the usual anchors are FedWeIT (Yoon et
al., ICML 2021: per-client task-adaptive parameters), GLFC (Dong et al., CVPR 2022: class-incremental FL with
local compensation losses), TARGET (Zhang et al., ICCV 2023: data-free replay through a server-side generator)
and Fed-CPrompt (Bagwe et al., 2023: one prompt per task, rehearsal-free). The four methods here are the
classic baselines of that literature, each made to fit this engine's privacy model:

- ``naive``: sequential FedAvg from stage to stage (what every method is measured against);
- ``replay``: each client keeps a reservoir of its own earlier examples and trains on them beside the new
  stage's data. The buffer is client state: its examples never leave the client, and which ones it holds is
  drawn from the client's secret randomness. Under DP-SGD the buffer is part of the client's training set, so
  its examples are covered by the client's ledger like any other;
- ``ewc``: elastic weight consolidation (Kirkpatrick et al., PNAS 2017) made federated: in each stage's last
  round every client reports the mean squared step gradient of each trained parameter as an update statistic,
  aggregated by the configured secure-aggregation protocol like the update itself; the server folds the
  aggregate into the importances ``w`` and broadcasts ``(w, theta*)`` with the parameters of later rounds, whose
  local training adds ``lambda/2 * sum w (theta - theta*)^2``. Under DP-SGD the squared gradients are those
  of the privatized steps (post-processing, no extra ε). DP-FedAvg does not privatize per-client statistics, so
  ``ewc`` is refused with it;
- ``isolation``: parameter isolation for foundation models: each stage's trained parameters (with
  ``model.finetune = "lora"`` a LoRA adapter and the head, a few thousand numbers) are frozen at the stage's end;
  the next stage trains a copy of them. At test time every stage's parameters answer (restricted to their
  stage's classes when stages name classes) and the most confident answer wins: no task id is needed, as in the
  rehearsal-free prompt methods (Fed-CPrompt).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from secure_ffm.config import Config
from secure_ffm.data.base import FederatedData
from secure_ffm.data.stages import StageData
from secure_ffm.engine.aggregation import Aggregate
from secure_ffm.engine.client import IMPORTANCE_STATISTIC as IMPORTANCE
from secure_ffm.engine.training import QuadraticPenalty, evaluate
from secure_ffm.engine.wire import NamedArrays
from secure_ffm.errors import ConfigError
from secure_ffm.models.base import EncodedData, FederatedModel
from secure_ffm.models.objectives import EvalResult
from secure_ffm.privacy.noise import REPLAY, PrivateRandomness

log = logging.getLogger(__name__)


class ContinualMethod:
    """The hooks a continual run calls; the defaults are naive sequential training."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""

    def __init__(self, config: Config, data: FederatedData) -> None:
        assert config.continual is not None
        self.config = config
        self.settings = config.continual
        self.data = data
        self.stages: tuple[StageData, ...] = data.stages

    def check(self, *, spends_budget: bool, privatizes_statistics: bool) -> None:  # noqa: B027 (optional hook)
        """Refuse (ConfigError) a combination the method cannot run soundly."""

    # ---------------------------------------------------------------- client side

    def training_indices(
        self, stage: StageData, client_id: int, state: MutableMapping[str, Any], randomness: PrivateRandomness
    ) -> np.ndarray:
        """The examples client ``client_id`` trains on in ``stage`` (runs on the client: ``state`` is its own)."""
        return stage.client_indices[client_id]

    def training_size(self, stage: StageData, client_id: int) -> int:
        """How many examples :meth:`training_indices` gives (for privacy planning, before any round)."""
        return len(stage.client_indices[client_id])

    # ---------------------------------------------------------------- server side

    def fit_config(self, round: int, stage: StageData) -> dict[str, Any]:
        return {}

    def fit_arrays(self, round: int, stage: StageData) -> NamedArrays:
        """Arrays broadcast with the parameters of ``round`` (counted in ``bytes_down``)."""
        return {}

    def expected_statistics(self, round: int, stage: StageData, parameters: NamedArrays) -> NamedArrays:
        """Update statistics the server expects from every client of ``round`` (their shapes)."""
        return {}

    def aggregate_computed(self, round: int, stage: StageData, aggregate: Aggregate) -> None:  # noqa: B027 (optional hook)
        """The round's aggregate (its ``mean_statistics``), before the strategy applies it."""

    def stage_finished(self, stage: StageData, parameters: NamedArrays) -> None:  # noqa: B027 (optional hook)
        """``stage``'s last round is done; ``parameters`` are the global parameters it ends with."""

    def evaluate(
        self, model: FederatedModel, encoded: EncodedData, stage: StageData, current: StageData, parameters: NamedArrays, *, batch_size: int
    ) -> EvalResult:
        """The global model on ``stage``'s test set while training ``current``."""
        model.set_trainable(parameters)
        return evaluate(model, encoded, stage.test_indices, batch_size=batch_size)

    def state_dict(self) -> dict[str, Any]:
        """Server-side state (JSON) for the checkpoint; arrays go to :meth:`arrays`."""
        return {}

    def arrays(self) -> NamedArrays:
        return {}

    def load_state_dict(self, state: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:  # noqa: B027 (optional hook)
        """Restore :meth:`state_dict` and :meth:`arrays`."""


class NaiveSequential(ContinualMethod):
    """Sequential federated fine-tuning from stage to stage: the baseline that forgets."""

    name = "naive"
    label = "naive sequential FL"


class LocalReplay(ContinualMethod):
    """A per-client reservoir of ``continual.replay_buffer`` past examples, trained on beside each new stage's data.

    The reservoir (Vitter's algorithm R) keeps a uniform sample of every example the client has seen in earlier
    stages; it is folded in on the client, from its secret randomness, when the client first trains in a stage."""

    name = "replay"
    label = "local replay"
    STATE = "continual_replay"

    def _fold(self, client_id: int, state: MutableMapping[str, Any], randomness: PrivateRandomness, upto: int) -> list[int]:
        record = state.setdefault(self.STATE, {"folded": 0, "seen": 0, "buffer": []})
        capacity = self.settings.replay_buffer
        buffer, seen = list(record["buffer"]), int(record["seen"])
        for index in range(int(record["folded"]), upto):
            rng = randomness.generator(REPLAY, index)
            for example in self.stages[index].client_indices[client_id].tolist():
                seen += 1
                if len(buffer) < capacity:
                    buffer.append(int(example))
                else:
                    slot = int(rng.integers(seen))
                    if slot < capacity:
                        buffer[slot] = int(example)
            record.update(folded=upto, seen=seen, buffer=buffer)
        return buffer

    def check(self, *, spends_budget: bool, privatizes_statistics: bool) -> None:
        earlier = [sum(len(stage.client_indices[k]) for stage in self.stages[:-1]) for k in range(self.data.num_clients)]
        most = max(earlier, default=0)
        if self.settings.replay_buffer > most:
            raise ConfigError(
                "continual.replay_buffer",
                f"{self.settings.replay_buffer} is more than any client's data before the last stage (at most {most} examples)",
                f"lower it to at most {most}: a buffer that never fills keeps every example and costs memory for nothing",
            )

    def training_indices(
        self, stage: StageData, client_id: int, state: MutableMapping[str, Any], randomness: PrivateRandomness
    ) -> np.ndarray:
        buffer = self._fold(client_id, state, randomness, stage.index)
        # a union: an example in both would otherwise be sampled twice as often as DP-SGD's accounting assumes
        return np.union1d(stage.client_indices[client_id], np.asarray(buffer, dtype=np.int64))

    def training_size(self, stage: StageData, client_id: int) -> int:
        """The fewest examples the union of the stage and the buffer can hold (DP-SGD plans its sampling rate from it,
        so the rate used is never above the planned one). The buffer holds ``min(capacity, seen)`` stream items; a stream
        item that repeats an earlier one or is in this stage adds nothing to the union and may take a slot (until
        2026-12-07 the plan counted the whole buffer as new: with overlapping stages it planned 266 examples where the
        union held 246, and clients declined a round the plan promised)."""
        current = stage.client_indices[client_id]
        stream = np.concatenate([self.stages[i].client_indices[client_id] for i in range(stage.index)] or [np.zeros(0, np.int64)])
        new = np.setdiff1d(np.unique(stream), current).size  # distinct earlier examples outside this stage
        wasted = stream.size - new  # repeats and this stage's examples: each may fill a slot and add nothing
        return len(current) + max(0, min(self.settings.replay_buffer, stream.size) - wasted)


class FederatedEWC(ContinualMethod):
    """Elastic weight consolidation with importances aggregated through secure aggregation (module docstring)."""

    name = "ewc"
    label = "federated EWC"

    def __init__(self, config: Config, data: FederatedData) -> None:
        super().__init__(config, data)
        self.importance: dict[str, np.ndarray] = {}
        self.anchors: dict[str, np.ndarray] = {}
        self.pending: dict[str, np.ndarray] = {}

    def check(self, *, spends_budget: bool, privatizes_statistics: bool) -> None:
        if spends_budget and not privatizes_statistics:
            raise ConfigError(
                "continual.method",
                f"ewc sends per-client gradient importances, which privacy.mode = {self.config.privacy.mode!r} does not privatize",
                'use "replay" or "isolation" with it, or privacy.mode = "dp-sgd" (its importances come from privatized steps)',
            )

    def fit_config(self, round: int, stage: StageData) -> dict[str, Any]:
        return {"collect_importance": 1} if round == stage.last_round else {}

    def expected_statistics(self, round: int, stage: StageData, parameters: NamedArrays) -> NamedArrays:
        if round != stage.last_round:
            return {}
        return {IMPORTANCE + name: np.zeros_like(value) for name, value in parameters.items()}

    def aggregate_computed(self, round: int, stage: StageData, aggregate: Aggregate) -> None:
        found = {k[len(IMPORTANCE) :]: v for k, v in aggregate.mean_statistics.items() if k.startswith(IMPORTANCE)}
        if found:
            self.pending = {k: np.asarray(v, dtype=np.float64) for k, v in found.items()}

    def stage_finished(self, stage: StageData, parameters: NamedArrays) -> None:
        if self.pending:
            # normalized to mean 1 over every coordinate, so that continual.ewc_lambda does not depend on the
            # gradients' scale (which DP noise and the learning rate change by orders of magnitude)
            # math.fsum: exact, so the sum cannot depend on the arrays' memory alignment (numpy's SIMD sums can, by
            # an ulp), and a resumed run keeps the uninterrupted run's importances bit for bit
            total = math.fsum(math.fsum(np.maximum(v, 0.0).ravel().tolist()) for v in self.pending.values())
            count = sum(v.size for v in self.pending.values())
            scale = count / total if total > 0 else 0.0
            for name, value in self.pending.items():
                weight = np.maximum(value, 0.0) * scale
                self.importance[name] = self.importance.get(name, 0.0) + weight
        else:
            log.warning("stage %s: no importances reached the server (its last round was aborted); EWC keeps the earlier ones", stage.name)
        self.pending = {}
        self.anchors = {k: np.array(v, dtype=np.float32) for k, v in parameters.items()}

    def fit_arrays(self, round: int, stage: StageData) -> NamedArrays:
        if not self.importance:
            return {}
        weights = {k: (self.settings.ewc_lambda * v).astype(np.float32) for k, v in self.importance.items()}
        return QuadraticPenalty.to_arrays(weights, self.anchors)

    def state_dict(self) -> dict[str, Any]:
        return {"has_importance": bool(self.importance)}

    def arrays(self) -> NamedArrays:
        out = {f"ewc.importance/{k}": np.asarray(v, dtype=np.float64) for k, v in self.importance.items()}
        out.update({f"ewc.anchor/{k}": v for k, v in self.anchors.items()})
        return out

    def load_state_dict(self, state: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        self.importance = {k[len("ewc.importance/") :]: np.asarray(v) for k, v in arrays.items() if k.startswith("ewc.importance/")}
        self.anchors = {k[len("ewc.anchor/") :]: np.asarray(v) for k, v in arrays.items() if k.startswith("ewc.anchor/")}


class StageIsolation(ContinualMethod):
    """One frozen copy of the trained parameters per finished stage; the most confident one answers (module docstring)."""

    name = "isolation"
    label = "parameter isolation"

    def __init__(self, config: Config, data: FederatedData) -> None:
        super().__init__(config, data)
        self.experts: list[dict[str, np.ndarray]] = []

    def stage_finished(self, stage: StageData, parameters: NamedArrays) -> None:
        if len(self.experts) == stage.index:
            self.experts.append({k: np.array(v, dtype=np.float32) for k, v in parameters.items()})

    def _logits(
        self, model: FederatedModel, encoded: EncodedData, indices: np.ndarray, parameters: NamedArrays, batch_size: int
    ) -> torch.Tensor:
        model.set_trainable(parameters)
        model.module.eval()
        outputs = []
        with torch.no_grad():
            for start in range(0, len(indices), batch_size):
                batch = model.make_batch(encoded, indices[start : start + batch_size])
                outputs.append(model.module(**batch.inputs))
        return torch.cat(outputs)

    def evaluate(
        self, model: FederatedModel, encoded: EncodedData, stage: StageData, current: StageData, parameters: NamedArrays, *, batch_size: int
    ) -> EvalResult:
        candidates = [*self.experts[: current.index], parameters]
        owners = [self.stages[i] for i in range(len(candidates))]
        indices = stage.test_indices
        best_logits: torch.Tensor | None = None
        best_confidence: torch.Tensor | None = None
        for expert, owner in zip(candidates, owners, strict=True):
            logits = self._logits(model, encoded, indices, expert, batch_size)
            if owner.classes is not None:  # an expert answers only among the classes it was trained on
                allowed = torch.zeros(logits.shape[-1], dtype=torch.bool)
                allowed[list(owner.classes)] = True
                logits = torch.where(allowed, logits, logits.min().detach() - 20.0)
            confidence = torch.softmax(logits, dim=-1).max(dim=-1).values
            if best_logits is None or best_confidence is None:
                best_logits, best_confidence = logits, confidence
            else:
                better = confidence > best_confidence
                best_logits = torch.where(better.unsqueeze(-1), logits, best_logits)
                best_confidence = torch.where(better, confidence, best_confidence)
        assert best_logits is not None
        tally = model.objective.tally()
        tally.add(best_logits, encoded.labels[torch.from_numpy(np.asarray(indices, dtype=np.int64))])
        model.set_trainable(parameters)
        return tally.result()

    def state_dict(self) -> dict[str, Any]:
        return {"experts": len(self.experts)}

    def arrays(self) -> NamedArrays:
        return {f"expert{i}/{k}": v for i, expert in enumerate(self.experts) for k, v in expert.items()}

    def load_state_dict(self, state: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        count = int(state.get("experts", 0))
        self.experts = []
        for i in range(count):
            prefix = f"expert{i}/"
            self.experts.append({k[len(prefix) :]: np.asarray(v) for k, v in arrays.items() if k.startswith(prefix)})


def build_method(config: Config, data: FederatedData) -> ContinualMethod:
    from secure_ffm.variants import CONTINUAL_METHODS

    assert config.continual is not None
    return CONTINUAL_METHODS.get(config.continual.method, key="continual.method")(config, data)


__all__: Sequence[str] = [
    "IMPORTANCE",
    "ContinualMethod",
    "FederatedEWC",
    "LocalReplay",
    "NaiveSequential",
    "StageIsolation",
    "build_method",
]
