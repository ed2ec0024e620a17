"""Pipelines: training runs chained in order, a later stage starting from an earlier stage's exported model.

FFM pre-training then fine-tuning (Federated Foundation Models, arXiv 2305.11414, Sec. 3.1) is two runs: the first
exports its model (``[ffm] export = true``), the second names that export as ``model.name_or_path``. A pipeline file
lists the stages::

    [pipeline]
    name = "pretrain-finetune"               # optional (default: the file's name)

    [[stage]]
    name = "pretrain"                        # the stage's run directory: DIR/pretrain/
    config = "movie_reviews.toml"            # optional: a training config, relative to this file
    set = ["server.rounds=4"]                # optional: section.key=value overrides, applied last
    [stage.ffm]                              # optional: config sections, merged key by key over the file's
    schedule = "alternating"
    export = true

    [[stage]]
    name = "finetune"
    [stage.model]
    name_or_path = "{stages.pretrain.model}" # -> DIR/pretrain/model (absolute), written by the stage before

``secure-ffm pipeline FILE --out DIR`` validates the whole pipeline before anything runs (:func:`load_pipeline`):
every stage's config, every placeholder (a known output of an earlier stage; ``model`` needs that stage's
``ffm.export = true``), local paths, and each stage's data. It then runs the stages in order
(:func:`run_pipeline`) into ``DIR/<stage>/`` (a normal run directory) and keeps ``DIR/pipeline.json`` up to date.
Re-running the same command resumes: a stage whose ``summary.json`` exists is complete and skipped; a stage
with a ``config.toml`` but no summary was interrupted and continues from its last checkpoint, as
``secure-ffm train --resume`` does. A stage's run directory written with a different config is refused, naming the
stage, rather than silently reused.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from secure_ffm.config import Config, check_keys, check_local_paths, config_from_dict, parse_override, read_toml, unknown_section
from secure_ffm.engine.orchestrator import RunObserver
from secure_ffm.engine.wire import to_jsonable
from secure_ffm.errors import ConfigError
from secure_ffm.registry import did_you_mean
from secure_ffm.run.checkpoint import write_text_atomically

log = logging.getLogger(__name__)

SUMMARY = "pipeline.json"
TOP_LEVEL = ("pipeline", "stage")
PIPELINE_KEYS = ("name",)
STAGE_KEYS = ("name", "config", "set")
STAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
PLACEHOLDER = re.compile(r"\{stages\.([^{}]*)\}")
"""``{stages.NAME.OUTPUT}`` in any string value of a stage: an output of the earlier stage ``NAME``."""


@dataclass(frozen=True)
class StageOutput:
    """What a stage exposes to later stages as ``{stages.NAME.<output>}``: a path in its run directory, and the
    setting the stage needs for it to be written."""

    path: Callable[[Path], Path]
    requires: Callable[[Config], bool]
    requirement: str
    """The key and value ``requires`` checks, as the error's fix writes it."""


STAGE_OUTPUTS: dict[str, StageOutput] = {
    "model": StageOutput(path=lambda run_dir: run_dir / "model", requires=lambda c: c.ffm.export, requirement="ffm.export = true"),
}


@dataclass(frozen=True)
class Stage:
    """One validated stage: its config (placeholders resolved) and what it depends on."""

    name: str
    config: Config
    run_dir: Path
    references: tuple[str, ...] = ()
    """The earlier stages whose outputs it reads."""
    deferred: frozenset[str] = frozenset()
    """Config keys naming an output not written yet (their paths are checked when the stage starts)."""

    @property
    def complete(self) -> bool:
        """A stage is complete when its run wrote ``summary.json`` (its last file, after the export)."""
        return (self.run_dir / "summary.json").is_file()

    @property
    def started(self) -> bool:
        """Interrupted: the run wrote ``config.toml`` (its first file) but no summary; it resumes from its checkpoint."""
        return (self.run_dir / "config.toml").is_file() and not self.complete


@dataclass(frozen=True)
class Pipeline:
    """A validated pipeline file, bound to its output directory."""

    name: str
    stages: tuple[Stage, ...]
    out_dir: Path
    source: Path | None = None


class PipelineObserver(Protocol):
    """Told as the stages run (the CLI prints a line for each); ``rounds`` gives each stage's per-round observer."""

    def rounds(self, stage: Stage) -> RunObserver | None: ...

    def stage_skipped(self, index: int, total: int, stage: Stage, summary: Mapping[str, Any]) -> None: ...

    def stage_started(self, index: int, total: int, stage: Stage, *, resumed: bool) -> None: ...

    def stage_finished(self, index: int, total: int, stage: Stage, summary: Mapping[str, Any], seconds: float) -> None: ...


class LoggingObserver:
    """The default :class:`PipelineObserver`: one log line per stage, no progress bars."""

    def rounds(self, stage: Stage) -> RunObserver | None:
        return None

    def stage_skipped(self, index: int, total: int, stage: Stage, summary: Mapping[str, Any]) -> None:
        log.info("stage %d/%d %s: already complete in %s, skipped", index, total, stage.name, stage.run_dir)

    def stage_started(self, index: int, total: int, stage: Stage, *, resumed: bool) -> None:
        log.info("stage %d/%d %s: %s in %s", index, total, stage.name, "resuming" if resumed else "running", stage.run_dir)

    def stage_finished(self, index: int, total: int, stage: Stage, summary: Mapping[str, Any], seconds: float) -> None:
        log.info("stage %d/%d %s: done in %.0fs, final %s", index, total, stage.name, seconds, summary.get("final"))


# --------------------------------------------------------------------------- loading and validation


def _in_stage(name: str, error: ConfigError) -> ConfigError:
    """``error`` with the stage named: ``model.name_or_path (stage finetune): ...``."""
    return ConfigError(f"{error.key} (stage {name})", error.problem, error.fix)


def load_pipeline(path: str | Path, out_dir: str | Path, *, check_data: bool = True) -> Pipeline:
    """Read and validate a pipeline file for ``out_dir``; every problem is a ConfigError naming the stage and key,
    raised before anything is written."""
    path = Path(path)
    raw = read_toml(path, key="PIPELINE", fix="pass the path of a pipeline .toml, e.g. configs/pipeline_pretrain_finetune.toml")
    return pipeline_from_dict(raw, out_dir, root=path.parent, default_name=path.stem, source=path, check_data=check_data)


def pipeline_from_dict(
    raw: Mapping[str, Any],
    out_dir: str | Path,
    *,
    root: Path | None = None,
    default_name: str = "pipeline",
    source: Path | None = None,
    check_data: bool = True,
) -> Pipeline:
    """Validate a parsed pipeline document (``root``: the folder ``stage.config`` paths are relative to)."""
    out_dir = Path(out_dir)
    for key in raw:
        if key not in TOP_LEVEL:
            raise unknown_section(key, TOP_LEVEL, listing="valid")
    header = raw.get("pipeline", {})
    if not isinstance(header, Mapping):
        raise ConfigError("pipeline", "must be a table", "write it as [pipeline]")
    check_keys("pipeline", header, PIPELINE_KEYS)
    name = header.get("name", default_name)
    if not isinstance(name, str) or not STAGE_NAME.fullmatch(name):
        raise ConfigError("pipeline.name", f"must be a folder name (letters, digits, _ . -), got {name!r}", 'write e.g. name = "ffm"')
    entries = raw.get("stage")
    if not isinstance(entries, list) or not entries or not all(isinstance(e, Mapping) for e in entries):
        raise ConfigError("stage", "needs at least one [[stage]] table", 'add [[stage]] with name = "..." and its config')
    _check_out_dir(out_dir)
    stages: list[Stage] = []
    for position, entry in enumerate(entries, 1):
        stages.append(_stage(entry, position, stages, out_dir, root))
    _check_state(stages)
    if check_data:
        _check_data(stages)
    return Pipeline(name=name, stages=tuple(stages), out_dir=out_dir, source=source)


def _stage(entry: Mapping[str, Any], position: int, earlier: Sequence[Stage], out_dir: Path, root: Path | None) -> Stage:
    name = entry.get("name")
    if not isinstance(name, str) or not STAGE_NAME.fullmatch(name) or name == SUMMARY:
        raise ConfigError(
            f"stage {position}: name", f"must be a folder name (letters, digits, _ . -), got {name!r}", 'write e.g. name = "pretrain"'
        )
    if any(stage.name == name for stage in earlier):
        raise ConfigError(f"stage {position}: name", f"{name!r} is used by an earlier stage", "give each stage its own name")
    sections = [f.name for f in fields(Config)]
    try:
        for key, value in entry.items():
            if key in STAGE_KEYS:
                continue
            if key not in sections:
                valid = [*STAGE_KEYS, *sections]
                raise ConfigError(f"stage.{key}", "unknown key", did_you_mean(key, valid, show=lambda h: f"stage.{h}", listing="valid"))
            if not isinstance(value, Mapping):
                raise ConfigError(f"stage.{key}", "must be a table of config settings", f"write it as [stage.{key}]")
        document, beside = _base_document(entry, root)
        for key, value in entry.items():
            if key not in STAGE_KEYS:
                document.setdefault(key, {}).update(copy.deepcopy(dict(value)))
        overrides = entry.get("set", [])
        if not isinstance(overrides, list) or any(not isinstance(o, str) for o in overrides):
            raise ConfigError(
                "stage.set", f'must be a list of "section.key=value" strings, got {overrides!r}', 'write e.g. ["server.rounds=3"]'
            )
        for assignment in overrides:
            section, key, value = parse_override(assignment)
            body = document.setdefault(section, {})
            if not isinstance(body, dict):
                raise ConfigError(f"{section}.{key}", f"[{section}] of the stage's config is not a table")
            body[key] = value
        references: list[str] = []
        deferred: set[str] = set()
        for section, body in document.items():
            if not isinstance(body, dict):
                continue  # config_from_dict names it
            for key, value in body.items():
                resolved, used = _resolve(f"{section}.{key}", value, earlier, out_dir)
                if used:
                    body[key] = resolved
                    references += [r for r in used if r not in references]
                    if not all(s.complete for s in earlier if s.name in used):
                        deferred.add(f"{section}.{key}")
        config = config_from_dict(document)
        check_local_paths(config, beside=beside, what="the stage config's folder", skip=deferred)
    except ConfigError as error:
        raise _in_stage(name, error) from None
    return Stage(name=name, config=config, run_dir=out_dir / name, references=tuple(references), deferred=frozenset(deferred))


def _base_document(entry: Mapping[str, Any], root: Path | None) -> tuple[dict[str, Any], Path | None]:
    """The stage's ``config`` file as a mutable document (empty without one), and the folder its paths are checked beside."""
    if "config" not in entry:
        return {}, root
    value = entry["config"]
    if not isinstance(value, str) or not value:
        raise ConfigError("stage.config", f"must be the path of a training config, got {value!r}")
    path = Path(value).expanduser()
    if not path.is_absolute() and root is not None:
        path = root / path
    document = read_toml(path, key="stage.config", fix="give the config's path relative to the pipeline file")
    return copy.deepcopy(document), path.parent


def _resolve(key: str, value: Any, earlier: Sequence[Stage], out_dir: Path) -> tuple[Any, list[str]]:
    """``value`` with every ``{stages.NAME.OUTPUT}`` replaced by that output's absolute path; the stages it names."""
    if isinstance(value, list):
        resolved, used = [], []
        for item in value:
            r, u = _resolve(key, item, earlier, out_dir)
            resolved.append(r)
            used += u
        return resolved, used
    if not isinstance(value, str) or "{stages." not in value:
        return value, []
    used: list[str] = []

    def replace(match: re.Match[str]) -> str:
        stage_name, _, output = match.group(1).rpartition(".")
        outputs = list(STAGE_OUTPUTS)
        if output not in STAGE_OUTPUTS or not stage_name:
            raise ConfigError(key, f"{match.group(0)!r} is not {{stages.NAME.OUTPUT}}", f"outputs: {', '.join(outputs)}")
        stage = next((s for s in earlier if s.name == stage_name), None)
        if stage is None:
            names = [s.name for s in earlier]
            fix = did_you_mean(stage_name, names, listing="stages before this one") if names else "no stage runs before this one"
            raise ConfigError(key, f"{match.group(0)!r} names no earlier stage {stage_name!r}", fix)
        spec = STAGE_OUTPUTS[output]
        if not spec.requires(stage.config):
            raise ConfigError(
                key,
                f"{match.group(0)!r} is written only when stage {stage_name!r} sets {spec.requirement}",
                f"set {spec.requirement} in stage {stage_name!r}",
            )
        used.append(stage_name)
        return str(spec.path(stage.run_dir.resolve()))

    resolved = PLACEHOLDER.sub(replace, value)
    if "{stages." in resolved:
        raise ConfigError(key, f"{value!r} holds an unfinished placeholder", "write {stages.NAME.model}")
    return resolved, used


def _check_out_dir(out_dir: Path) -> None:
    """A new directory, or one an earlier run of a pipeline wrote (it holds ``pipeline.json``)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError("--out", f"{out_dir} is a file, not a directory", "choose a new --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / SUMMARY).is_file():
        raise ConfigError(
            "--out",
            f"{out_dir} is not empty and holds no {SUMMARY}",
            "choose a new --out, or the directory of an earlier run of this pipeline",
        )


def _check_state(stages: Sequence[Stage]) -> None:
    """Refuse a stage directory written with a different config, and a complete stage whose inputs are not."""
    from secure_ffm.run.writer import config_differences

    for stage in stages:
        if stage.complete or stage.started:
            saved_path = stage.run_dir / "config.toml"
            try:
                saved = config_from_dict(read_toml(saved_path, key=str(saved_path), fix=f"delete {stage.run_dir} to run the stage again"))
            except ConfigError as error:
                raise _in_stage(stage.name, ConfigError("--out", f"{saved_path} cannot be used: {error.problem}", error.fix)) from None
            # an interrupted stage may be extended (more rounds), as `train --resume` allows; a complete one is what it is
            differences = config_differences(saved, stage.config, ignore=set() if stage.complete else {"server.rounds"})
            if differences:
                raise _in_stage(
                    stage.name,
                    ConfigError(
                        "--out",
                        f"{stage.run_dir} was run with a different config (it differs in {', '.join(differences)})",
                        f"restore the stage's settings, or delete {stage.run_dir} to run it again",
                    ),
                )
        if stage.complete:
            stale = [name for name in stage.references if not next(s for s in stages if s.name == name).complete]
            if stale:
                raise _in_stage(
                    stage.name,
                    ConfigError(
                        "--out",
                        f"{stage.run_dir} is complete but stage {stale[0]!r}, whose output it started from, is not",
                        f"delete {stage.run_dir} too, so that it runs again from the new output",
                    ),
                )


def _check_data(stages: Sequence[Stage]) -> None:
    """Every stage's data loads and partitions (each distinct ``[data]`` and seed once), before anything runs."""
    from secure_ffm.data import load_federated_data

    seen: set[tuple[str, int]] = set()
    for stage in stages:
        if stage.complete:
            continue
        key = (repr(stage.config.data), stage.config.run.seed)
        if key in seen:
            continue
        seen.add(key)
        try:
            load_federated_data(stage.config.data, stage.config.run.seed)
        except ConfigError as error:
            raise _in_stage(stage.name, error) from None


# --------------------------------------------------------------------------- running


@dataclass
class PipelineResult:
    """What one :func:`run_pipeline` call did, and the document written to ``pipeline.json``."""

    document: dict[str, Any]
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _stage_entry(stage: Stage, status: str, summary: Mapping[str, Any] | None) -> dict[str, Any]:
    exported = stage.config.ffm.export and summary is not None
    entry: dict[str, Any] = {
        "name": stage.name,
        "run_dir": str(stage.run_dir),
        "status": status,
        "starts_from": list(stage.references),
        "model": str(stage.run_dir / "model") if exported else None,
    }
    if summary is not None:
        entry.update(
            final=summary.get("final"),
            best_test_accuracy=summary.get("best_test_accuracy"),
            rounds=summary.get("rounds"),
            ffm=summary.get("ffm"),
            seconds=summary.get("seconds_total"),
            privacy=_stage_privacy(stage, summary),
        )
    return entry


def _stage_privacy(stage: Stage, summary: Mapping[str, Any]) -> dict[str, Any]:
    """What a complete stage spent on its clients' data: the dataset, its mechanism and (worst client's) ε and δ, and how
    many federated rounds touched the data (an FFM schedule's public units touch none)."""
    privacy = summary.get("privacy") if isinstance(summary.get("privacy"), Mapping) else {}
    epsilon = privacy.get("epsilon")
    if isinstance(epsilon, Mapping):  # DP-SGD: per client; the worst-off client's
        epsilon = epsilon.get("max")
    ffm = summary.get("ffm") if isinstance(summary.get("ffm"), Mapping) else {}
    data = stage.config.data
    continual = stage.config.continual.stages if stage.config.continual is not None else ()
    return {
        "dataset": data.dataset,
        # a continual run's stages federate other datasets over the same clients (until 2026-12-07 only data.dataset
        # was charged: a stage that trained on a second dataset without DP left it reported at the later stage's ε)
        "datasets": sorted({data.dataset, *(s.dataset for s in continual if s.dataset)}),
        "mechanism": privacy.get("mechanism", "none"),
        "level": privacy.get("level"),
        "epsilon": epsilon,
        "delta": privacy.get("delta"),
        "federated_rounds": ffm.get("federated_rounds", summary.get("rounds")),
        # which examples of data.dataset are the server's public share (trained without DP in public units) and which
        # the clients': fixed by these (secure_ffm/data/federate.py)
        "split": {"seed": stage.config.run.seed, "public_fraction": data.public_fraction, "max_train_examples": data.max_train_examples},
        "public_share_trained": bool(data.public_fraction > 0 and ffm.get("public_units")),
    }


def pipeline_privacy(entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The guarantee of the pipeline's last model for each clients' dataset its stages trained on.

    A stage starts from an earlier stage's model, so the last model carries what every stage learnt from the data: their
    guarantees compose. Per dataset: ε and δ summed over the stages that trained on it (basic composition, valid whatever
    the mechanisms: a user-level guarantee is also one for each example, so the sum bounds the change of one example; a
    tighter figure would compose the ledgers of one mechanism), or unbounded when one of them trained on it without DP.
    Until 2026-12-07 ``pipeline.json`` gave no figure, and each stage's ``privacy.json`` only its own."""
    datasets: dict[str, dict[str, Any]] = {}

    def unbounded(record: dict[str, Any], why: str) -> None:
        if record["bounded"]:  # the first reason found
            record.update(bounded=False, epsilon=None, delta=None, why=why)

    splits: dict[str, list[tuple[str, Any, bool]]] = {}  # dataset -> (stage, split, whether its public share was trained)
    for entry in entries:
        spent = entry.get("privacy")
        if not isinstance(spent, Mapping):
            continue  # not run yet
        if spent.get("split") is not None:
            splits.setdefault(str(spent["dataset"]), []).append((entry["name"], spent["split"], bool(spent.get("public_share_trained"))))
        if not spent.get("federated_rounds"):
            continue  # it never touched the clients' data
        for dataset in spent.get("datasets") or [spent["dataset"]]:
            record = datasets.setdefault(str(dataset), {"stages": [], "epsilon": 0.0, "delta": 0.0, "deltas": [], "bounded": True})
            record["stages"].append(entry["name"])
            record["deltas"].append(spent.get("delta"))
            if spent.get("mechanism", "none") == "none" or spent.get("epsilon") is None:
                unbounded(record, f"stage {entry['name']!r} trained on it without differential privacy")
            elif record["bounded"]:
                record["epsilon"] += float(spent["epsilon"])
                delta = spent.get("delta")
                if isinstance(record["delta"], float) and isinstance(delta, int | float) and not isinstance(delta, bool):
                    record["delta"] += float(delta)
                else:  # DP-SGD's default δ is 1/(10 n) per client, a rule rather than one number: the stages' δ are listed
                    record["delta"] = None
    # a public share is trained without DP; under another split its examples are some other stage's clients' (found
    # 2026-12-07: 431 of a later stage's 1,438 client examples had been stage 1's public share, reported at ε 3.99)
    for dataset, seen in splits.items():
        record = datasets.get(dataset)
        public = [(name, split) for name, split, trained in seen if trained and split.get("public_fraction")]
        if record is None or not public:
            continue
        for name, split in public:
            other = next((n for n, s, _ in seen if s != split and n in record["stages"]), None)
            if other is not None:
                unbounded(
                    record, f"stage {name!r} trained without DP on a public share of it that stage {other!r}'s split gives to clients"
                )
    for record in datasets.values():
        record["composition"] = (
            "basic: ε summed over the stages; δ summed ('delta'), or listed ('deltas') when one is a per-client rule"
            if record["bounded"]
            else "none: unbounded"
        )
    return datasets


def _read_summary(stage: Stage) -> dict[str, Any]:
    path = stage.run_dir / "summary.json"
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(summary, dict):
            raise ValueError(f"it holds a JSON {type(summary).__name__}, not a run's summary")
        return summary
    except (OSError, ValueError, RecursionError) as error:
        raise _in_stage(
            stage.name, ConfigError("--out", f"{path} cannot be read: {error}", f"delete {stage.run_dir} to run it again")
        ) from None


def run_pipeline(pipeline: Pipeline, observer: PipelineObserver | None = None) -> PipelineResult:
    """Run the stages not complete yet, in order, writing ``pipeline.json`` after each (and when one stops)."""
    from secure_ffm.run.simulation import Simulation, prepare_run

    observer = observer or LoggingObserver()
    entries = [_stage_entry(s, "complete" if s.complete else "interrupted" if s.started else "pending", None) for s in pipeline.stages]
    result = PipelineResult(document={})

    def write() -> None:
        finals = [e for e in entries if e.get("final")]
        result.document = {
            "name": pipeline.name,
            "source": str(pipeline.source) if pipeline.source is not None else None,
            "stages": entries,
            "final": finals[-1]["final"] if finals and entries[-1]["status"] == "complete" else None,
            "privacy": pipeline_privacy(entries),
        }
        write_text_atomically(pipeline.out_dir / SUMMARY, json.dumps(to_jsonable(result.document), indent=1, sort_keys=True))

    total = len(pipeline.stages)
    for index, stage in enumerate(pipeline.stages):
        if stage.complete:
            summary = _read_summary(stage)
            entries[index] = _stage_entry(stage, "complete", summary)
            result.skipped.append(stage.name)
            observer.stage_skipped(index + 1, total, stage, summary)
            continue
        resumed = stage.started
        try:
            # what only the data and model can tell (the export an earlier stage wrote loads; this model can be
            # exported) is checked when the stage starts, before it writes anything
            check_local_paths(stage.config, what="the stage config's folder")
            prepared = prepare_run(stage.config)
        except ConfigError as error:
            if pipeline.out_dir.is_dir():
                write()
            raise _in_stage(stage.name, error) from None
        observer.stage_started(index + 1, total, stage, resumed=resumed)
        pipeline.out_dir.mkdir(parents=True, exist_ok=True)
        entries[index]["status"] = "running"
        write()
        start = time.perf_counter()
        try:
            summary = Simulation(prepared, out_dir=stage.run_dir, observer=observer.rounds(stage)).run(resume=resumed)
        except BaseException:
            entries[index]["status"] = "interrupted" if stage.started else "pending"
            write()
            raise
        entries[index] = _stage_entry(stage, "complete", summary)
        result.ran.append(stage.name)
        observer.stage_finished(index + 1, total, stage, summary, time.perf_counter() - start)
    write()
    for dataset, record in result.document["privacy"].items():
        if len(record["stages"]) > 1:
            if not record["bounded"]:
                guarantee = f"unbounded ({record['why']})"
            else:
                delta = f"{record['delta']:.3g}" if record["delta"] is not None else " + ".join(map(str, record["deltas"]))
                guarantee = f"ε ≤ {record['epsilon']:.3g}, δ ≤ {delta} (the stages' sums)"
            log.warning(
                "stages %s all trained on the clients' %r: the last model's guarantee on it is %s",
                ", ".join(record["stages"]),
                dataset,
                guarantee,
            )
    return result
