"""The result files of a sweep directory, and reading them back.

``sweep.jsonl`` gets one JSON object appended per finished (or failed) point; a point run
again appends a new row, and readers keep the latest row per ``point_id``. ``sweep.csv`` is
rewritten after every point from the latest rows of the current sweep's points: one row per
point and seed, one column per axis (``grid.<axis>``: the setting's name) and per overridden
config key (``section.key``: its value in the point's config; lists as TOML literals), then the results.
Plots and reports read only these files (plus ``sweep.toml`` and the per-point images the
rows point to).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from secure_ffm.config import PrivacyConfig, read_toml
from secure_ffm.run.checkpoint import append_private_text, write_atomically
from secure_ffm.variants import MECHANISMS

if TYPE_CHECKING:
    from secure_ffm.privacy.mechanisms import PrivacyMechanism

JSONL = "sweep.jsonl"
CSV = "sweep.csv"
SWEEP_TOML = "sweep.toml"

RESULT_COLUMNS = (
    "protection", "mechanism", "epsilon", "delta", "noise_multiplier", "accountant", "defense", "secure_aggregation",
    "accuracy", "macro_f1", "attack", "attack_metric", "attack_value", "attack_iterations", "attack_stopped_by", "attack_note",
)  # fmt: skip
TAIL_COLUMNS = ("train_seconds", "attack_seconds", "seconds", "status", "error")


# --------------------------------------------------------------------------- the privacy mechanism of a row


def row_mechanism(row: Mapping[str, Any]) -> str:
    """The ``privacy.mode`` a row was run with (the config's default when the row does not say)."""
    return str(row.get("mechanism") or PrivacyConfig().mode)


def mechanism_class(name: str) -> type[PrivacyMechanism] | None:
    """The privacy mechanism registered as ``name`` (plugins loaded first); None when none is (a plugin's
    mechanism whose plugin is not installed here)."""
    if name not in MECHANISMS:
        from secure_ffm.plugins import load_plugins

        load_plugins()
    return MECHANISMS.get(name) if name in MECHANISMS else None


def spends_budget(row: Mapping[str, Any]) -> bool:
    """Whether the row's mechanism gives an (ε, δ) guarantee (its registered class's ``spends_budget``); without it
    ε = ∞. A mechanism this installation does not know is taken to spend one: the ε the row recorded is shown."""
    cls = mechanism_class(row_mechanism(row))
    return cls is None or cls.spends_budget


def mechanism_label(name: str) -> str:
    """How plots name a mechanism: its registered class's ``label`` (e.g. ``DP-SGD``), else the name."""
    cls = mechanism_class(name)
    return (cls.label or cls.name or name) if cls is not None else name


def budget_mechanisms() -> tuple[str, ...]:
    """The registered mechanisms that spend a budget, in registry order (plots give each its own style)."""
    return tuple(name for name in MECHANISMS.names() if (cls := mechanism_class(name)) is not None and cls.spends_budget)


# --------------------------------------------------------------------------- files


def write_text_atomic(path: Path, text: str, *, private: bool = False) -> None:
    """Write ``text`` to ``path`` through a temporary file, so that a reader never sees half a file; ``private``:
    owner-only (0o600) from the first byte (a report that shows clients' examples)."""
    write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), private=private)


def append_row(sweep_dir: Path, row: Mapping[str, Any]) -> None:
    """Append ``row`` to ``sweep.jsonl``, owner-only (0o600): an audited point's row holds the original texts the
    attack recovered, which are clients' training examples (docs/threat_model.md)."""
    append_private_text(sweep_dir / JSONL, json.dumps(jsonable(row), sort_keys=False, ensure_ascii=False) + "\n")


def read_all_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every row of ``sweep.jsonl`` in file order (a truncated last line, from an interrupted write, is ignored)."""
    path = Path(sweep_dir) / JSONL
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except (json.JSONDecodeError, RecursionError):
            continue
    return rows


def latest_rows(rows: Iterable[Mapping[str, Any]], point_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The last row of each point; in ``point_ids`` order (and only those) when given, else in first-seen order."""
    latest: dict[str, dict[str, Any]] = {}
    for row in rows:
        latest[row["point_id"]] = dict(row)
    if point_ids is None:
        return list(latest.values())
    return [latest[p] for p in point_ids if p in latest]


def current_point_ids(sweep_dir: Path) -> list[str] | None:
    """The point ids of the sweep last run in ``sweep_dir`` (from its resolved ``sweep.toml``); None when absent."""
    path = Path(sweep_dir) / SWEEP_TOML
    if not path.is_file():
        return None
    from eval.spec import expand_grid, sweep_from_dict

    raw = read_toml(path, key="SWEEP_DIR", fix="run the sweep again, or pass the folder `secure-ffm sweep` wrote")
    spec = sweep_from_dict(raw, root=path.parent)
    return [p.id for p in expand_grid(spec.axes, spec.seeds, overrides=spec.overrides, exclude=spec.exclude)]


def read_results(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """The latest row of every point of the sweep in ``sweep_dir`` (ok and failed alike)."""
    sweep_dir = Path(sweep_dir)
    return latest_rows(read_all_rows(sweep_dir), current_point_ids(sweep_dir))


def csv_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    axes: dict[str, None] = {}
    keys: dict[str, None] = {}
    metrics: dict[str, None] = {}
    for row in rows:
        axes.update(dict.fromkeys(row.get("settings", {})))
        keys.update(dict.fromkeys(row.get("config", {})))
        metrics.update(dict.fromkeys(f"attack_{m}" for m in row.get("attack_metrics", {}) or {}))
    metrics = {m: None for m in metrics if m not in RESULT_COLUMNS and m not in TAIL_COLUMNS}
    return ["point_id", *(f"grid.{a}" for a in axes), "seed", *keys, *RESULT_COLUMNS, *metrics, *TAIL_COLUMNS]


def csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """``rows`` as CSV: settings, config values, results; ε of a run without DP is ``inf``, a missing value empty."""
    from eval.spec import toml_value

    columns = csv_columns(rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writerow({c: _cell(c) for c in columns})  # the header, escaped like any text cell
    for row in rows:
        flat: dict[str, Any] = {c: row.get(c) for c in columns if c in row}
        flat.update({f"grid.{a}": n for a, n in row.get("settings", {}).items()})
        # a key that one point sets and another leaves unset (None: TOML has no null) is an empty cell there
        flat.update({k: v if v is None or isinstance(v, str) else toml_value(v) for k, v in (row.get("config") or {}).items()})
        for metric, value in (row.get("attack_metrics") or {}).items():
            flat.setdefault(f"attack_{metric}", value)  # a result column of the same name wins (csv_columns lists it once)
        if row.get("status") == "ok" and not spends_budget(row):
            flat["epsilon"] = "inf"
        writer.writerow({c: _cell(flat.get(c)) for c in columns})
    return buffer.getvalue()


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""A text cell starting with one of these is a formula to Excel and LibreOffice (CSV injection, OWASP): a sweep label
such as ``=HYPERLINK(...)`` ran when a data-protection officer opened ``sweep.csv`` (found 2026-12-07)."""


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list | dict):
        value = json.dumps(value, ensure_ascii=False)
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value  # shown as text; numbers are written from their own type and never escaped
    return value


def read_csv(path: str | Path) -> list[dict[str, str]]:
    with Path(path).open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def jsonable(value: Any) -> Any:
    """Plain JSON: numpy scalars as numbers, non-finite floats as null."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "shape", None) == ():
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value
