"""The continual-learning part of a run's results, read from its ``summary.json`` and ``metrics.jsonl``.

A continual run (a config with ``[continual]``) trains a sequence of stages and evaluates, after each
stage, on the test set of every stage seen so far. Its ``summary.json`` holds a ``"continual"``
document: ``method``, ``stages`` (name, index, rounds, ``first_round``/``last_round``, dataset,
classes, example counts), the accuracy matrix ``A[i][j]`` (after stage ``i``, on stage ``j``'s test
set; null for ``j > i``), ``average_accuracy`` (mean of the last row), ``forgetting`` (mean over the
earlier stages of the drop from their best accuracy to the final one) and ``backward_transfer``
(mean over the earlier stages of final minus just-learned accuracy; both null with one stage), and
``budget_exhausted`` (the first round in which each client declined to train because its DP budget,
composed over all stages, was spent). Evaluated rows of ``metrics.jsonl`` add ``stage_accuracy``:
``{stage name: accuracy}`` for the stages seen so far.

The metrics are the usual ones of continual learning (Lopez-Paz and Ranzato, "Gradient Episodic
Memory", NeurIPS 2017; Chaudhry et al., "Riemannian Walk", ECCV 2018); the engine computes them, this
module only reads, checks and presents them. A malformed document raises :class:`ConfigError` naming
the file and the field, so that a report stops before it writes anything.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secure_ffm.errors import ConfigError

CONTINUAL = "continual"
"""The key of the continual-learning document in ``summary.json``."""


@dataclass(frozen=True)
class Stage:
    """One stage of a continual run as the summary records it."""

    name: str
    index: int
    first_round: int | None = None
    last_round: int | None = None
    rounds: int | None = None
    dataset: str | None = None
    classes: tuple[str, ...] | None = None
    release: float | None = None
    train_examples: int | None = None
    test_examples: int | None = None


@dataclass(frozen=True)
class BudgetExhausted:
    """The first round in which ``client`` declined to train because its privacy budget was spent."""

    client: int
    round: int
    stage: str

    @property
    def line(self) -> str:
        """E.g. ``client 3 stopped contributing at round 7 (stage classes 4-5): privacy budget spent``."""
        return f"client {self.client} stopped contributing at round {self.round} (stage {self.stage}): privacy budget spent"


@dataclass(frozen=True)
class ContinualSummary:
    """``summary.json["continual"]``, checked: one stage per row and column of a square accuracy matrix."""

    method: str
    stages: tuple[Stage, ...]
    accuracy_matrix: tuple[tuple[float | None, ...], ...]
    average_accuracy: float | None = None
    forgetting: float | None = None
    backward_transfer: float | None = None
    budget_exhausted: tuple[BudgetExhausted, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(stage.name for stage in self.stages)

    def accuracy(self, i: int, j: int) -> float | None:
        """``A[i][j]``: after stage ``i`` on stage ``j``'s test set; None above the diagonal (not seen yet) or not evaluated."""
        return None if j > i else self.accuracy_matrix[i][j]

    @classmethod
    def of(cls, document: ContinualSummary | Mapping[str, Any], *, where: str = "summary.json") -> ContinualSummary:
        """``document`` as a checked summary (returned as is when it already is one); ``where`` names it in errors."""
        return document if isinstance(document, ContinualSummary) else parse_continual(document, where=where)


def _error(where: str, field: str, problem: str) -> ConfigError:
    return ConfigError(f"{where}: {CONTINUAL}.{field}", problem, "the run's summary.json is not as `secure-ffm train` writes it")


def _number(value: Any, where: str, field: str, *, fraction: bool = False) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _error(where, field, f"expected a number or null, got {value!r}")
    if fraction and not 0.0 <= value <= 1.0:
        raise _error(where, field, f"expected an accuracy in [0, 1], got {value!r}")
    return float(value)


def _integer(value: Any, where: str, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _error(where, field, f"expected an integer, got {value!r}")
    return value


def _stage(raw: Any, position: int, where: str) -> Stage:
    field = f"stages[{position}]"
    if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str) or not raw["name"]:
        raise _error(where, field, "expected a table with a non-empty name")
    classes = raw.get("classes")
    if classes is not None and (not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)):
        raise _error(where, f"{field}.classes", f"expected a list of class names or null, got {classes!r}")
    return Stage(
        name=raw["name"],
        index=_integer(raw.get("index", position), where, f"{field}.index") or 0,
        first_round=_integer(raw.get("first_round"), where, f"{field}.first_round"),
        last_round=_integer(raw.get("last_round"), where, f"{field}.last_round"),
        rounds=_integer(raw.get("rounds"), where, f"{field}.rounds"),
        dataset=None if raw.get("dataset") is None else str(raw["dataset"]),
        classes=None if classes is None else tuple(classes),
        release=_number(raw.get("release"), where, f"{field}.release"),
        train_examples=_integer(raw.get("train_examples"), where, f"{field}.train_examples"),
        test_examples=_integer(raw.get("test_examples"), where, f"{field}.test_examples"),
    )


def parse_continual(document: Mapping[str, Any], *, where: str = "summary.json") -> ContinualSummary:
    """Check ``summary.json["continual"]`` and return it typed; :class:`ConfigError` names the first bad field."""
    if not isinstance(document, Mapping):
        raise ConfigError(f"{where}: {CONTINUAL}", f"expected a table, got {type(document).__name__}")
    raw_stages = document.get("stages")
    if not isinstance(raw_stages, list) or not raw_stages:
        raise _error(where, "stages", "expected a non-empty list of stages")
    stages = tuple(_stage(raw, i, where) for i, raw in enumerate(raw_stages))
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise _error(where, "stages", f"stage names must be unique, got {names}")
    matrix = document.get("accuracy_matrix")
    size = len(stages)
    if not isinstance(matrix, list) or len(matrix) != size or not all(isinstance(r, list) and len(r) == size for r in matrix):
        raise _error(where, "accuracy_matrix", f"expected {size} rows of {size} values (one per stage), got {matrix!r}")
    rows = tuple(
        tuple(_number(value, where, f"accuracy_matrix[{i}][{j}]", fraction=True) for j, value in enumerate(row))
        for i, row in enumerate(matrix)
    )
    raw_budget = document.get("budget_exhausted") or []
    if not isinstance(raw_budget, list):
        raise _error(where, "budget_exhausted", f"expected a list, got {raw_budget!r}")
    budget = []
    for k, entry in enumerate(raw_budget):
        field = f"budget_exhausted[{k}]"
        if not isinstance(entry, Mapping) or entry.get("client") is None or entry.get("round") is None:
            raise _error(where, field, f"expected a table with client, round and stage, got {entry!r}")
        client = int(_integer(entry["client"], where, f"{field}.client") or 0)
        round_ = int(_integer(entry["round"], where, f"{field}.round") or 0)
        stage = entry.get("stage") or stage_of_round(stages, round_) or "?"
        budget.append(BudgetExhausted(client=client, round=round_, stage=str(stage)))
    return ContinualSummary(
        method=str(document.get("method") or "?"),
        stages=stages,
        accuracy_matrix=rows,
        average_accuracy=_number(document.get("average_accuracy"), where, "average_accuracy"),
        forgetting=_number(document.get("forgetting"), where, "forgetting"),
        backward_transfer=_number(document.get("backward_transfer"), where, "backward_transfer"),
        budget_exhausted=tuple(sorted(budget, key=lambda b: (b.round, b.client))),
    )


def stage_of_round(stages: Sequence[Stage], round_: int) -> str | None:
    """The name of the stage whose rounds include ``round_`` (None when the summary gives no round ranges)."""
    for stage in stages:
        if stage.first_round is not None and stage.last_round is not None and stage.first_round <= round_ <= stage.last_round:
            return stage.name
    return None


# --------------------------------------------------------------------------- run directories


def read_json(path: Path, *, key: str) -> Any:
    """A JSON document; :class:`ConfigError` under ``key`` when it cannot be read."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ConfigError(key, f"{path} cannot be read: {error}", "pass a directory written by `secure-ffm train`") from None


def read_metrics_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` (a torn last line, from an interrupted write, is ignored); [] when absent."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except (json.JSONDecodeError, RecursionError):
                continue
    return rows


def continual_of(summary: Mapping[str, Any], *, where: str) -> ContinualSummary | None:
    """The checked continual document of a run's summary; None for a run that is not continual."""
    document = summary.get(CONTINUAL)
    return None if document is None else parse_continual(document, where=where)


# --------------------------------------------------------------------------- series


def stage_accuracy_series(rows: Sequence[Mapping[str, Any]], names: Sequence[str]) -> dict[str, list[tuple[int, float]]]:
    """Each stage's test accuracy per evaluated round, from the rows' ``stage_accuracy``: ``{name: [(round, accuracy)]}``,
    starting at the round the stage is first seen (rows list the stages seen so far). Stages no row names are left out."""
    series: dict[str, list[tuple[int, float]]] = {name: [] for name in names}
    for row in rows:
        accuracies = row.get("stage_accuracy")
        if not isinstance(accuracies, Mapping) or row.get("round") is None:
            continue
        for name, value in accuracies.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                series.setdefault(str(name), []).append((int(row["round"]), float(value)))
    return {name: sorted(points) for name, points in series.items() if points}


def stage_starts(summary: ContinualSummary, rows: Sequence[Mapping[str, Any]] = ()) -> list[tuple[str, float]]:
    """``(stage name, first round)`` of every stage after the first: where a new stage begins. From the stages'
    ``first_round``, else from the first row of ``metrics.jsonl`` that names the stage."""
    first_seen: dict[str, int] = {}
    for row in rows:
        if row.get("stage") is not None and row.get("round") is not None:
            first_seen.setdefault(str(row["stage"]), int(row["round"]))
    starts = []
    for stage in summary.stages[1:]:
        start = stage.first_round if stage.first_round is not None else first_seen.get(stage.name)
        if start is not None:
            starts.append((stage.name, float(start)))
    return starts


def percent(value: float | None, digits: int = 1) -> str:
    """An accuracy as a percentage (``0.483`` -> ``48.3%``); ``n/a`` for None."""
    return "n/a" if value is None else f"{100.0 * value:.{digits}f}%"


def points(value: float | None, digits: int = 1) -> str:
    """A difference of accuracies in percentage points, signed (``-0.615`` -> ``-61.5 pp``); ``n/a`` for None."""
    return "n/a" if value is None else f"{100.0 * value:+.{digits}f} pp"


def headline(summary: ContinualSummary) -> str:
    """``replay: average accuracy 48.3%, forgetting +61.5 pp, backward transfer -61.5 pp``."""
    return (
        f"{summary.method}: average accuracy {percent(summary.average_accuracy)}, forgetting {points(summary.forgetting)}, "
        f"backward transfer {points(summary.backward_transfer)}"
    )
