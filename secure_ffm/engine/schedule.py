"""FFM pre-training's switch between public and federated phases (Federated Foundation Models, arXiv 2305.11414,
Sec. 3.1: "an adaptive switching mechanism" between centralized optimization on the server's public data and
federated rounds on the clients' private data; the paper gives no rule, so this module is ours, see docs/ffm.md).

A run is a sequence of steps (``server.rounds`` of them); each step is one *phase unit*: either one federated
round (the round orchestrator) or one public phase (``ffm.public_steps`` optimizer steps of the server on its
public data). After each unit the server hands a :class:`RoundSignals` to the :class:`Schedule`, which decides
the next unit's phase and says why (:class:`Decision`: the reason goes into ``metrics.jsonl``).

The schedules are pure: they see only the signals below, all of which the server may see (its own public data,
the clients' reported training loss, the aggregate it already learns, and whether clients still have budget).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from secure_ffm.registry import Registry

if TYPE_CHECKING:
    from secure_ffm.config import FFMConfig

PUBLIC = "public"
"""The server trains the global model on its public data (spends no privacy budget)."""
FEDERATED = "federated"
"""One federated round on the clients' private data (DP, secure aggregation and defenses apply)."""


@dataclass(frozen=True)
class RoundSignals:
    """What the server sees after a phase unit, for the switch."""

    round: int
    phase: str
    """The phase that just ran."""
    public_loss: float | None = None
    """Loss of the global model on the server's held-out public validation split, after the unit."""
    federated_loss: float | None = None
    """Mean training loss the round's clients reported (federated units only)."""
    alignment: float | None = None
    """Cosine between the aggregated federated update and the public descent direction (minus the public gradient at
    the round's starting model): negative when the private update works against the public loss (federated units)."""
    budget_left: bool = True
    """False when every sampled client declined for lack of privacy budget: federated rounds can no longer train."""


@dataclass(frozen=True)
class Decision:
    phase: str
    reason: str


class Schedule(ABC):
    """Decides each unit's phase. Registered by name in :data:`SCHEDULES`; ``state_dict`` is checkpointed."""

    name: ClassVar[str] = ""
    needs_public: ClassVar[bool] = True
    """Whether it ever runs a public phase (the run then needs public data)."""

    @abstractmethod
    def first(self) -> Decision:
        """The phase of the first unit."""

    @abstractmethod
    def next(self, signals: RoundSignals) -> Decision:
        """The phase of the unit after the one ``signals`` describes."""

    def most_federated_units(self, start: int, stop: int) -> int:
        """The most federated rounds the units at positions ``start .. stop - 1`` can hold (0-based; round r is
        position r - 1), for planning DP: a public unit spends no privacy budget, so noise is calibrated for the
        federated rounds only. Exact for fixed schedules; for a schedule that decides from the run's signals, every
        unit that is not known to be public counts. The default knows only that the first unit is :meth:`first`'s."""
        count = max(0, stop - start)
        if start == 0 and count and self.first().phase == PUBLIC:
            count -= 1
        return count

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 (stateless schedules keep nothing)
        """Restore what :meth:`state_dict` returned (exact ``--resume``)."""


SCHEDULES: Registry[type[Schedule]] = Registry("FFM schedule")


class _SinglePhase(Schedule):
    """Every unit runs :attr:`phase`."""

    phase: ClassVar[str]

    def __init__(self, config: FFMConfig) -> None:
        pass

    def first(self) -> Decision:
        return Decision(self.phase, f"schedule: {self.name} only")

    def next(self, signals: RoundSignals) -> Decision:
        return self.first()

    def most_federated_units(self, start: int, stop: int) -> int:
        return max(0, stop - start) if self.phase == FEDERATED else 0


@SCHEDULES.register("federated")
class FederatedOnly(_SinglePhase):
    """Federated rounds only: FL on private data (the paper's "FL-only" baseline; the default)."""

    name = "federated"
    needs_public = False
    phase = FEDERATED


@SCHEDULES.register("centralized")
class CentralizedOnly(_SinglePhase):
    """Public phases only: the server trains on its public data (the "centralized FM optimization" baseline)."""

    name = "centralized"
    phase = PUBLIC


@SCHEDULES.register("alternating")
class Alternating(Schedule):
    """Fixed cycles: ``ffm.public_units`` public units, then ``ffm.federated_units`` federated rounds, repeated."""

    name = "alternating"

    def __init__(self, config: FFMConfig) -> None:
        self.public_units = config.public_units
        self.federated_units = config.federated_units

    def _at(self, position: int) -> Decision:
        cycle = self.public_units + self.federated_units
        step = position % cycle
        if step < self.public_units:
            return Decision(PUBLIC, f"alternating: public unit {step + 1} of {self.public_units}")
        return Decision(FEDERATED, f"alternating: federated round {step - self.public_units + 1} of {self.federated_units}")

    def first(self) -> Decision:
        return self._at(0)

    def next(self, signals: RoundSignals) -> Decision:
        return self._at(signals.round)  # units are numbered from 1: the next unit's position is ``round``

    def most_federated_units(self, start: int, stop: int) -> int:
        cycle = self.public_units + self.federated_units

        def before(position: int) -> int:  # federated rounds among positions 0 .. position - 1
            full, rest = divmod(max(0, position), cycle)
            return full * self.federated_units + max(0, rest - self.public_units)

        return max(0, before(stop) - before(start))


@SCHEDULES.register("adaptive")
class Adaptive(Schedule):
    """The adaptive switch (docs/ffm.md): warm up on public data, move to federated rounds when the public loss
    plateaus, come back to public data when federated rounds make the model forget it, stall, or cannot train.

    After a **public** unit:

    1. ``max_public_units`` public units in a row have run: go federated ("public phase long enough"), so that a
       slowly improving public loss cannot take every unit from the private data, which is the target;
    2. the public validation loss improved by more than ``min_delta`` on its best: stay public ("public improving");
    3. it has not for ``patience`` public units: go federated ("public plateau").

    After a **federated** unit, in this order:

    1. every sampled client declined for lack of budget: go public, which spends none ("budget spent");
    2. ``forgetting`` > 0 and the public loss rose more than ``forgetting`` (relative) above its best: go public
       ("forgetting"); off by default (``forgetting = 0``), since under non-IID data one federated round routinely
       raises the public loss by more than a few percent and the test then hands most units to public data;
    3. the aggregated update has worked against the public loss (alignment below 0) for ``patience`` rounds in a
       row: go public ("conflict"), an early sign of rule 2 (the gradient-conflict test of PCGrad, Yu et al. 2020);
    4. the clients' training loss has not improved by more than ``min_delta`` for ``patience`` rounds: go public
       ("federated plateau"), unless the last public phase gained nothing (at most ``min_delta``): public data is
       then exhausted and private data is the better use of the round ("both plateaued: stay federated");
    5. otherwise stay federated ("federated improving").

    The plateau tests are early stopping's patience and minimum delta (Prechelt, 1998); the forgetting test is the
    continual-learning practice of watching the loss on the earlier (here: general, public) data.
    """

    name = "adaptive"

    def __init__(self, config: FFMConfig) -> None:
        self.patience = config.patience
        self.max_public_units = config.max_public_units
        self.min_delta = config.min_delta
        self.forgetting = config.forgetting
        self.best_public = math.inf
        self.best_federated = math.inf
        self.public_stale = 0
        self.federated_stale = 0
        self.conflicts = 0
        self.public_run = 0
        """Public units in a row so far."""
        self.public_phase_start = math.inf
        """The best public loss when the current public phase began."""
        self.last_public_gain = math.inf
        """How much the last finished public phase lowered the best public loss (the warm-up counts as a gain)."""

    def first(self) -> Decision:
        return Decision(PUBLIC, "adaptive: warm up on public data")

    def _public_improved(self, loss: float | None) -> bool:
        if loss is None:
            return False
        improved = loss < self.best_public - self.min_delta
        self.best_public = min(self.best_public, loss)
        return improved

    def next(self, signals: RoundSignals) -> Decision:
        if signals.phase == PUBLIC:
            self.public_run += 1
            improved = self._public_improved(signals.public_loss)
            if self.public_run >= self.max_public_units:
                units = self.public_run
                self._enter_federated()
                return Decision(FEDERATED, f"adaptive: public phase long enough ({units} units)")
            if improved:
                self.public_stale = 0
                return Decision(PUBLIC, "adaptive: public loss improving")
            self.public_stale += 1
            if self.public_stale < self.patience:
                return Decision(PUBLIC, f"adaptive: public loss flat {self.public_stale} of {self.patience}")
            self._enter_federated()
            return Decision(FEDERATED, f"adaptive: public plateau ({self.patience} units without a gain > {self.min_delta:g})")
        # after a federated round
        best_public = self.best_public
        if signals.public_loss is not None:
            self.best_public = min(self.best_public, signals.public_loss)
        if not signals.budget_left:
            return self._enter_public("adaptive: privacy budget spent; public phases spend none")
        if self.forgetting > 0 and signals.public_loss is not None and math.isfinite(best_public):
            rise = (signals.public_loss - best_public) / max(abs(best_public), 1e-12)
            if rise > self.forgetting:
                return self._enter_public(f"adaptive: forgetting (public loss {100 * rise:.1f}% above its best)")
        self.conflicts = self.conflicts + 1 if signals.alignment is not None and signals.alignment < 0 else 0
        if self.conflicts >= self.patience:
            return self._enter_public(f"adaptive: conflict (update against the public loss {self.conflicts} rounds in a row)")
        loss = signals.federated_loss
        if loss is not None and loss < self.best_federated - self.min_delta:
            self.federated_stale = 0
        else:
            self.federated_stale += 1
        if loss is not None:
            self.best_federated = min(self.best_federated, loss)
        if self.federated_stale >= self.patience:
            if self.last_public_gain <= self.min_delta:
                self.federated_stale = 0
                return Decision(FEDERATED, "adaptive: both plateaued: stay federated")
            return self._enter_public(f"adaptive: federated plateau ({self.patience} rounds without a gain > {self.min_delta:g})")
        return Decision(FEDERATED, "adaptive: federated improving")

    def _enter_federated(self) -> None:
        self.public_run = 0
        self.last_public_gain = self.public_phase_start - self.best_public
        self.federated_stale = 0
        self.conflicts = 0
        self.best_federated = math.inf  # the clients' loss is measured from the new starting point

    def _enter_public(self, reason: str) -> Decision:
        self.public_stale = 0
        self.public_phase_start = self.best_public
        return Decision(PUBLIC, reason)

    def state_dict(self) -> dict[str, Any]:
        keys = (
            "best_public",
            "best_federated",
            "public_stale",
            "federated_stale",
            "conflicts",
            "public_run",
            "public_phase_start",
            "last_public_gain",
        )
        values = {k: getattr(self, k) for k in keys}
        return {k: None if isinstance(v, float) and math.isinf(v) else v for k, v in values.items()}  # JSON has no inf

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, math.inf if value is None else type(getattr(self, key))(value))


def build_schedule(config: FFMConfig) -> Schedule:
    return SCHEDULES.get(config.schedule, key="ffm.schedule")(config)


def federated_rounds(config: FFMConfig, *, start: int = 0, stop: int) -> int:
    """The most federated rounds among units ``start + 1 .. stop`` (1-based rounds; ``start`` of them already run)
    under ``config``'s schedule (:meth:`Schedule.most_federated_units`): what DP mechanisms plan their noise and
    check extensions for, since public units spend no privacy budget (Federated Foundation Models, Sec. 3.1)."""
    return build_schedule(config).most_federated_units(start, stop)


def last_round_within(config: FFMConfig, *, start: int, federated: int, limit: int) -> int:
    """The last round ``stop`` in ``start .. limit`` whose units ``start + 1 .. stop`` hold at most ``federated``
    federated rounds: how far a resumed run can go on a budget that pays for ``federated`` more rounds."""
    schedule = build_schedule(config)
    stop = start
    while stop < limit and schedule.most_federated_units(start, stop + 1) <= federated:
        stop += 1
    return stop
