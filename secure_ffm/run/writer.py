"""The run directory: what a run writes, and what ``--resume`` reads back.

``config.toml`` (first: once it exists, ``--resume`` can finish the run), ``metrics.jsonl``
(one row per round, appended and fsynced), ``clients.json``, ``checkpoints/`` (the newest
two, written atomically), and at the end ``model.safetensors``, ``privacy.json`` and
``summary.json``. The writer knows nothing of rounds or transports: the runner hands it rows,
checkpoints and documents.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from secure_ffm.config import Config, config_from_dict, read_toml
from secure_ffm.engine.wire import NamedArrays, to_jsonable
from secure_ffm.errors import CheckpointError, ConfigError
from secure_ffm.run.checkpoint import (
    Checkpoint,
    append_private_text,
    checkpoint_dirs,
    load_checkpoint,
    make_private_folder,
    save_arrays_atomically,
    save_checkpoint,
    write_private_text,
    write_text_atomically,
)

log = logging.getLogger(__name__)

_FIX = "restore it from a copy, or start a new run in a new --out"


PARTICIPATION_FIELDS = (
    "clients",
    "skipped_clients",
    "skipped_reasons",
    "rejected_clients",
    "dropped_clients",
    "num_examples",
    "bytes_up",
    "bytes_down",
    "client_train_seconds",
    "encode_seconds",
)
"""A round's metrics that say who took part (ids, and counts and sums that grow with the number of participants)."""
PARTICIPATION_SIGNALS = ("aborted",)
"""Row fields withheld with :data:`PARTICIPATION_FIELDS`, beside every timing (``seconds``, ``*_seconds``): an audit of
2026-12-07 read a Poisson round's number of participants off ``fit_seconds`` (exactly in 64% of rounds, within one in
97%; empty rounds apart from every other), and rounds too small to unmask off ``aborted`` and the timings a protocol
reports only when it finishes."""


def is_participation_signal(field: str) -> bool:
    """Whether a row field tells how many clients took part in the round: a timing or :data:`PARTICIPATION_SIGNALS`."""
    return field in PARTICIPATION_SIGNALS or field == "seconds" or field.endswith("_seconds")


PARTICIPATION_FILE = "participation.jsonl"
"""In ``checkpoints/`` (owner-only): the rows' :data:`PARTICIPATION_FIELDS` when the privacy mechanism's accounting
needs the sample kept secret (:attr:`RunWriter.withheld`)."""


class RunWriter:
    """Writes one run directory ``out_dir``; every file but ``metrics.jsonl``'s appended rows is written atomically."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.withheld: tuple[str, ...] = ()
        """Row fields kept out of ``metrics.jsonl`` and written to ``checkpoints/participation.jsonl`` instead (0o600
        in the owner-only folder): :data:`PARTICIPATION_FIELDS` when DP-FedAvg's amplification by subsampling assumes
        that whoever reads the published files does not know who took part in a round (an audit of 2026-12-07: with
        the ids in ``metrics.jsonl``, a run reported at ε 7.98 was at ε 14.3 against its readers)."""

    def _split(self, row: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        withheld = [k for k in row if k in self.withheld or (self.withheld and is_participation_signal(k))]
        public = {k: v for k, v in row.items() if k not in withheld}
        private = {"round": row["round"], **{k: row[k] for k in withheld}}
        return public, private

    @property
    def participation_path(self) -> Path:
        return self.out_dir / "checkpoints" / PARTICIPATION_FILE

    def start(self, config: Config, clients: Mapping[str, Any]) -> None:
        """Create the run directory. ``config.toml`` comes first: once it exists, ``--resume`` can finish the run."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomically(self.out_dir / "config.toml", config.to_toml())
        self.rewrite_metrics([])
        self.write_clients(clients)

    def append_metrics(self, row: Mapping[str, Any]) -> None:
        """Add one round's row to ``metrics.jsonl`` (flushed to disk; a line torn by a crash is dropped on resume), its
        :attr:`withheld` fields to ``checkpoints/participation.jsonl``."""
        public, private = self._split(row)
        if self.withheld:
            make_private_folder(self.participation_path.parent)
            append_private_text(self.participation_path, json.dumps(to_jsonable(private), sort_keys=True) + "\n")
        with (self.out_dir / "metrics.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(to_jsonable(public), sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def rewrite_metrics(self, history: list[dict[str, Any]]) -> None:
        """``metrics.jsonl``: one row per round of ``history``, rewritten whole and atomically (at the start and on resume);
        the :attr:`withheld` fields likewise to ``checkpoints/participation.jsonl``."""
        rows = [self._split(row) for row in history]
        if self.withheld:
            make_private_folder(self.participation_path.parent)
            write_private_text(self.participation_path, "".join(json.dumps(to_jsonable(p), sort_keys=True) + "\n" for _, p in rows))
        text = "".join(json.dumps(to_jsonable(public), sort_keys=True) + "\n" for public, _ in rows)
        write_text_atomically(self.out_dir / "metrics.jsonl", text)

    def read_history(self, *, rounds: int) -> list[dict[str, Any]]:
        """The rows of rounds ``1..rounds`` as the run held them: ``metrics.jsonl``'s, with the :attr:`withheld` fields
        read back from ``checkpoints/participation.jsonl``."""
        history = read_metrics(self.out_dir / "metrics.jsonl", rounds=rounds)
        if self.withheld and rounds:
            private = {row["round"]: row for row in read_metrics(self.participation_path, rounds=rounds)}
            for row in history:
                row.update(private[row["round"]])
        return history

    def write_clients(self, document: Mapping[str, Any]) -> None:
        write_text_atomically(self.out_dir / "clients.json", json.dumps(to_jsonable(document), indent=1))

    def write_config(self, config: Config) -> None:
        write_text_atomically(self.out_dir / "config.toml", config.to_toml())

    def checkpoint(self, checkpoint: Checkpoint) -> None:
        save_checkpoint(self.out_dir / "checkpoints", checkpoint)

    def export_model(self, model: Any, *, lora: str = "merged") -> Path:
        """``model/``: the model in its pretrained format (``model.export_pretrained``; ``lora``: ``ffm.export_lora``),
        written beside and then moved in place, so a crash leaves no half-written folder under that name."""
        import shutil

        target = self.out_dir / "model"
        partial = self.out_dir / "model.partial"
        shutil.rmtree(partial, ignore_errors=True)
        model.export_pretrained(partial, lora=lora)
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
        return target

    def write_arrays(self, name: str, arrays: Mapping[str, Any]) -> Path:
        """``name`` (a ``.safetensors`` file in the run directory) holding ``arrays``, written atomically."""
        path = self.out_dir / name
        save_arrays_atomically(path, dict(arrays))
        return path

    def finish(
        self, *, parameters: NamedArrays, metadata: Mapping[str, str], summary: Mapping[str, Any], ledger: Mapping[str, Any] | None
    ) -> None:
        """The end files: the final model, the privacy ledger (when a mechanism keeps one), then the summary."""
        save_arrays_atomically(self.out_dir / "model.safetensors", parameters, dict(metadata))
        if ledger is not None:
            write_text_atomically(self.out_dir / "privacy.json", json.dumps(to_jsonable(ledger), indent=1, sort_keys=True))
        write_text_atomically(self.out_dir / "summary.json", json.dumps(to_jsonable(summary), indent=1, sort_keys=True))

    # ---------------------------------------------------------------- resume

    def newest_readable_checkpoint(self, fits: Callable[[Checkpoint, Path], None]) -> Checkpoint | None:
        """The newest checkpoint that loads and that ``fits`` accepts (it raises CheckpointError otherwise); None when
        there is none at all. A newest checkpoint that cannot be used falls back to the one before it, with a warning."""
        root = self.out_dir / "checkpoints"
        if root.exists() and not root.is_dir():
            raise ConfigError("--resume", f"{root} is not a directory", f"move it away; {self.out_dir} then restarts from its checkpoints")
        candidates = checkpoint_dirs(root)
        problems: list[str] = []
        for path in candidates:
            try:
                checkpoint = load_checkpoint(path)
                fits(checkpoint, path)
            except CheckpointError as error:
                problems.append(str(error))
                continue
            for problem in problems:
                log.warning("%s; resuming from the earlier checkpoint %s", problem, path.name)
            return checkpoint
        if candidates:
            raise ConfigError(
                "--resume",
                f"no readable checkpoint in {root}: {problems[0]}",
                f"delete {root} to start the run again from round 1",
            )
        return None


def read_run_config(out_dir: Path, config: Config) -> Config:
    """The config a run directory was started with; refuse a resume whose config differs (but for ``server.rounds``)."""
    path = Path(out_dir) / "config.toml"
    if not path.is_file():
        raise ConfigError("--resume", f"{out_dir} holds no config.toml", "pass --out RUN_DIR of a run started by `secure-ffm train`")
    try:
        raw = read_toml(path, key="--resume", fix=_FIX)
        if not raw:
            raise ConfigError(str(path), "is empty")
        saved = config_from_dict(raw)
    except ConfigError as error:
        where = "" if error.key == str(path) else f" at {error.key}"
        raise ConfigError("--resume", f"the run's {path} cannot be used{where}: {error.problem}", _FIX) from None
    differences = config_differences(saved, config, ignore={"server.rounds"})
    if differences:
        raise ConfigError(
            "--resume",
            f"the config differs from the run's config.toml in {', '.join(differences)}",
            "resume with the same config and --set values",
        )
    return saved


def read_metrics(path: Path, *, rounds: int) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl`` for rounds ``1..rounds``; later rows are dropped (their checkpoint was never written).

    An unfinished last line (an append cut short by a crash) is dropped with a warning; any other line that is not a JSON row is refused.
    """
    if not path.exists() and rounds == 0:
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError("--resume", f"{path} cannot be read: {getattr(error, 'strerror', None) or error}", _FIX) from None
    lines = text.split("\n")
    unfinished = lines.pop()  # "" when the file ends with a newline
    if unfinished.strip():
        log.warning("%s: dropping its unfinished last line (a write cut short)", path)
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError):  # RecursionError: a line nested thousands deep
            row = None
        if not isinstance(row, dict) or isinstance(row.get("round"), bool) or not isinstance(row.get("round"), int):
            raise ConfigError("--resume", f"{path} line {number} is not a metrics row: {line[:40]!r}", _FIX)
        rows.append(row)
    history = [row for row in rows if row["round"] <= rounds]
    if [row["round"] for row in history] != list(range(1, rounds + 1)):
        found = [row["round"] for row in history]
        raise ConfigError("--resume", f"{path} holds rounds {found} but the checkpoint is at round {rounds}", _FIX)
    return history


def config_differences(a: Config, b: Config, *, ignore: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
    """``section.key`` names whose values differ between two configs (a section only one has, ``[public_data]``, differs in
    each of its keys)."""
    da, db = a.to_dict(), b.to_dict()
    missing = object()
    sections = [*da, *(section for section in db if section not in da)]
    differences = []
    for section in sections:
        ta, tb = da.get(section, {}), db.get(section, {})
        for key in [*ta, *(key for key in tb if key not in ta)]:
            if f"{section}.{key}" not in ignore and ta.get(key, missing) != tb.get(key, missing):
                differences.append(f"{section}.{key}")
    return differences
