"""Running a sweep: train every grid point, measure utility and privacy spent, audit leakage, record a row.

For each point (see :mod:`eval.spec`), in ``SWEEP_DIR/points/<point id>/``:

1. ``run/``: a normal run directory (``secure-ffm train``'s files), and ``initial.safetensors``,
   the global model before round 1;
2. utility from ``run/summary.json`` (final test accuracy and macro F1), privacy spent from
   ``run/privacy.json`` (ε; for DP-SGD the largest over the clients that trained; ∞ without DP);
3. ``attack/``: the leakage audit (:func:`attacks.audit.audit_config`) of the observation the
   server would get under the point's protections; it attacks the initial model by default
   (``[attack] parameters = "initial"``: every point of a seed then shares the weights, so
   differences in leakage come from the protections alone) or the trained one (``"final"``).
   The row records how the attack's budget ended, as ``attack.json``'s ``budget`` does:
   ``attack_iterations`` (the iterations reached) and ``attack_stopped_by`` (``iterations``,
   ``time``: the time budget cut it short and the result understates the attack, or ``attack``:
   it finished on its own);
4. one row appended to ``sweep.jsonl`` and ``sweep.csv`` rewritten.

Points where the attack does not apply (e.g. an attack that does not handle the aggregate secure
aggregation leaves) are trained and measured but not audited; their row says why in ``attack_note``.

Resuming is implicit: a point whose latest row has status ``ok`` and the same fingerprint (a
hash of its resolved config and of the audit) is skipped; a finished training whose
``config.toml`` matches is reused when only the audit is left to do. A point that raises is
recorded with status ``failed`` and its error, the sweep goes on, and the next run retries it.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eval.results import CSV, JSONL, SWEEP_TOML, append_row, csv_text, latest_rows, read_all_rows, write_text_atomic
from eval.spec import SweepPoint, SweepSpec, data_kind, ensure_attacks_registered, load_sweep
from secure_ffm.errors import ConfigError
from secure_ffm.run.checkpoint import save_private_array
from secure_ffm.variants import MECHANISMS, PROTOCOLS

if TYPE_CHECKING:
    from secure_ffm.config import Config, DefenseConfig

log = logging.getLogger(__name__)


@dataclass
class SweepSummary:
    """What one ``run_sweep`` call did."""

    out_dir: Path
    total: int
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """Points already finished (status ok, same fingerprint) in an earlier run."""
    failed: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    """The latest row of every point of the sweep, in grid order."""

    @property
    def csv_path(self) -> Path:
        return self.out_dir / CSV

    @property
    def jsonl_path(self) -> Path:
        return self.out_dir / JSONL


# --------------------------------------------------------------------------- labels


def _number(value: float) -> str:
    return f"{value:g}"


def defense_labels(defense: DefenseConfig) -> list[str]:
    """One short label per update defense, with its main setting (each transform's own ``label``)."""
    from secure_ffm.engine.transforms import defense_labels as labels

    return labels(defense)


def protection_label(config: Config) -> str:
    """E.g. ``"DP-SGD ε=1 + prune 90% + SecAgg (masking)"``, or ``"no protection"``."""
    mechanism = MECHANISMS.get(config.privacy.mode, key="privacy.mode")
    protocol = PROTOCOLS.get(config.secure_aggregation.protocol, key="secure_aggregation.protocol")
    parts = []
    if mechanism.spends_budget:
        parts.append(f"{mechanism.label or mechanism.name} ε={_number(config.privacy.target_epsilon)}")
    parts.extend(defense_labels(config.defense))
    if protocol.hides_updates:
        parts.append(protocol.label or protocol.name)
    return " + ".join(parts) or "no protection"


def privacy_columns(mode: str, ledger: Mapping[str, Any] | None) -> dict[str, Any]:
    """ε, δ, accountant and noise multiplier from a run's ``privacy.json`` (None without DP: ε = ∞).

    DP-SGD keeps one ledger per client: ε and δ are the largest over the clients that trained
    (the guarantee that holds for every client) and the noise multiplier the smallest.
    """
    if not MECHANISMS.get(mode, key="privacy.mode").spends_budget or not ledger:
        return {"epsilon": None, "delta": None, "accountant": None, "noise_multiplier": None, "privacy": {"mechanism": mode}}
    keep = ("mechanism", "level", "accountant", "target_epsilon", "sampling", "sample_rate", "rounds", "planned_rounds", "max_grad_norm",
            "clip_norm", "final_clip_norm", "adaptive_clipping", "noise_placement", "update_noise_multiplier", "noise")  # fmt: skip
    summary = {k: ledger[k] for k in keep if k in ledger}
    epsilon, delta, noise = ledger.get("epsilon"), ledger.get("delta"), ledger.get("noise_multiplier")
    clients = [c for c in ledger.get("clients", []) if c.get("rounds", 0) > 0]
    if isinstance(epsilon, Mapping):  # dp-sgd: a spread over clients
        summary["epsilon_spread"] = dict(epsilon)
        epsilon = epsilon.get("max")
    if clients:
        delta = max(float(c["delta"]) for c in clients)
        noises = [float(c["noise_multiplier"]) for c in clients]
        noise = min(noises)
        summary["noise_multiplier_spread"] = {"min": min(noises), "max": max(noises)}
        summary["clients_trained"] = len(clients)
    summary.update(epsilon=epsilon, delta=delta, noise_multiplier=noise)
    return {
        "epsilon": None if epsilon is None else float(epsilon),
        "delta": delta if isinstance(delta, int | float) else None,
        "accountant": ledger.get("accountant"),
        "noise_multiplier": None if not isinstance(noise, int | float) else float(noise),
        "privacy": summary,
    }


# --------------------------------------------------------------------------- progress


class _Progress:
    """tqdm bars: one over the points, one for the current point (training rounds, then attack iterations)."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        self.enabled = enabled
        self.points: Any = None
        self.point: Any = None
        if enabled:
            from tqdm.auto import tqdm

            self._tqdm = tqdm
            self.points = tqdm(total=total, initial=done, desc="sweep", unit="point", position=0)

    def stage(self, description: str, total: int, unit: str) -> None:
        if not self.enabled:
            return
        if self.point is not None:
            self.point.close()
        self.point = self._tqdm(total=total, desc=description, unit=unit, position=1, leave=False)

    def advance(self, done: int | None = None) -> None:
        if self.point is not None:
            self.point.update(1 if done is None else max(0, done - self.point.n))

    def point_done(self, failed: int) -> None:
        if self.point is not None:
            self.point.close()
            self.point = None
        if self.points is not None:
            if failed:
                self.points.set_postfix(failed=failed)
            self.points.update(1)

    def close(self) -> None:
        for bar in (self.point, self.points):
            if bar is not None:
                bar.close()


def _observer(progress: _Progress) -> Any:
    from secure_ffm.run.simulation import RunObserver

    class RoundsObserver(RunObserver):
        def run_started(self, total_rounds: int, start_round: int) -> None: ...

        def round_finished(self, round: int, metrics: Mapping[str, Any]) -> None:
            progress.advance()

    return RoundsObserver()


# --------------------------------------------------------------------------- running


def prepare_out_dir(spec: SweepSpec, out_dir: Path) -> None:
    """Refuse a non-empty directory that is not a sweep directory; write the resolved ``sweep.toml``."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError("--out", f"{out_dir} is a file", "choose a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / SWEEP_TOML).is_file():
        raise ConfigError(
            "--out",
            f"{out_dir} is not empty and holds no sweep.toml",
            "choose a new --out, or the directory of an earlier sweep to resume it",
        )
    (out_dir / "points").mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / SWEEP_TOML, spec.to_toml())


def run_sweep(
    sweep: SweepSpec | str | Path,
    out_dir: str | Path,
    *,
    quiet: bool = True,
    on_point: Callable[[SweepPoint, dict[str, Any]], None] | None = None,
) -> SweepSummary:
    """Run (or resume) every point of ``sweep`` into ``out_dir``; see the module docstring.

    The whole sweep is validated first (every point's config, defenses, protocol, the attack),
    so that a bad setting raises :class:`ConfigError` before anything is written.
    """
    spec = sweep if isinstance(sweep, SweepSpec) else load_sweep(sweep)
    if len(spec.configs) != len(spec.points):
        spec.validate()
    if spec.audit_skipped:
        log.warning(
            "sweep %s: %d of %d points will be trained but not audited: %s",
            spec.name,
            len(spec.audit_skipped),
            len(spec.points),
            next(iter(spec.audit_skipped.values())),
        )
    out_dir = Path(out_dir)
    prepare_out_dir(spec, out_dir)
    ids = [p.id for p in spec.points]
    previous = {row["point_id"]: row for row in latest_rows(read_all_rows(out_dir), ids)}
    fingerprints = {p.id: spec.fingerprint(p) for p in spec.points}
    done = {pid for pid, row in previous.items() if row.get("status") == "ok" and row.get("fingerprint") == fingerprints[pid]}
    summary = SweepSummary(out_dir=out_dir, total=len(spec.points))
    progress = _Progress(not quiet, len(spec.points), len(done))
    try:
        for point in spec.points:
            if point.id in done:
                summary.skipped.append(point.id)
                log.info("sweep %s: %s already done, skipped", spec.name, point.id)
                continue
            row = run_point(spec, point, out_dir, fingerprint=fingerprints[point.id], progress=progress)
            append_row(out_dir, row)
            previous[point.id] = row
            write_text_atomic(out_dir / CSV, csv_text([previous[p] for p in ids if p in previous]))
            (summary.ran if row["status"] == "ok" else summary.failed).append(point.id)
            progress.point_done(len(summary.failed))
            if on_point is not None:
                on_point(point, row)
    finally:
        progress.close()
    if not summary.ran and not summary.failed:  # nothing new: still write the CSV for this sweep's points
        write_text_atomic(out_dir / CSV, csv_text([previous[p] for p in ids if p in previous]))
    summary.rows = [previous[p] for p in ids if p in previous]
    return summary


def run_point(spec: SweepSpec, point: SweepPoint, out_dir: Path, *, fingerprint: str, progress: _Progress | None = None) -> dict[str, Any]:
    """Train, measure and audit one point; never raises (a failure becomes a ``failed`` row)."""
    progress = progress or _Progress(False, 0, 0)
    config = spec.configs[point.id]
    point_dir = out_dir / "points" / point.id
    row: dict[str, Any] = {
        "point_id": point.id,
        "fingerprint": fingerprint,
        "sweep": spec.name,
        "settings": dict(point.settings),
        "seed": point.seed,
        "privacy_axes": list(spec.privacy_axes()),
        "overrides": list(point.overrides),
        "config": _config_values(config, spec.override_keys()),
        "protection": protection_label(config),
        "mechanism": config.privacy.mode,
        "target_epsilon": config.privacy.target_epsilon if MECHANISMS.get(config.privacy.mode, key="privacy.mode").spends_budget else None,
        "defense": " + ".join(defense_labels(config.defense)) or "none",
        "secure_aggregation": config.secure_aggregation.protocol,
        "data_kind": data_kind(config),
        "run_dir": f"points/{point.id}/run",
        "status": "failed",
        "error": None,
    }
    start = time.perf_counter()
    stage = "training"
    try:
        reused = _train(config, point, point_dir, progress)
        run_dir = point_dir / "run"
        run_summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        row["train_reused"] = reused
        total = run_summary.get("seconds_total")  # None where the rounds' timings tell who took part (DP-FedAvg)
        row["train_seconds"] = float(total) if total is not None else None
        final = run_summary.get("final", {})
        row["accuracy"] = final.get("test_accuracy")
        row["macro_f1"] = final.get("test_macro_f1")
        row["rounds"] = run_summary.get("rounds")
        ledger_path = run_dir / "privacy.json"
        ledger = json.loads(ledger_path.read_text(encoding="utf-8")) if ledger_path.is_file() else None
        row.update(privacy_columns(config.privacy.mode, ledger))
        if spec.attack is not None and point.id in spec.audit_skipped:
            row.update(attack=spec.attack.name, attack_note=f"not audited: {spec.audit_skipped[point.id]}")
        elif spec.attack is not None:
            stage = "audit"
            row.update(_audit(spec, config, point, point_dir, progress))
        row["status"] = "ok"
    except KeyboardInterrupt:
        raise
    except Exception as error:  # one failing point must not stop the others
        message = str(error) or type(error).__name__
        row["error"] = f"{stage}: {message}" if isinstance(error, ConfigError) else f"{stage}: {type(error).__name__}: {message}"
        log.info("sweep %s: point %s failed during %s: %s", spec.name, point.id, stage, message, exc_info=log.isEnabledFor(logging.DEBUG))
    row["seconds"] = time.perf_counter() - start + ((row.get("train_seconds") or 0.0) if row.get("train_reused") else 0.0)
    row["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return row


def _config_values(config: Config, keys: tuple[str, ...]) -> dict[str, Any]:
    document = config.to_dict()
    values = {}
    for key in keys:
        section, name = key.split(".", 1)
        values[key] = document.get(section, {}).get(name)
    return values


def _train(config: Config, point: SweepPoint, point_dir: Path, progress: _Progress) -> bool:
    """Train the point into ``point_dir/run`` unless a finished run of the same config is there (then True)."""
    from safetensors.numpy import save_file

    from secure_ffm.run.simulation import Simulation, prepare_run

    run_dir = point_dir / "run"
    initial = point_dir / "initial.safetensors"
    saved_config = run_dir / "config.toml"
    if (
        (run_dir / "summary.json").is_file()
        and initial.is_file()
        and saved_config.is_file()
        and saved_config.read_text(encoding="utf-8") == config.to_toml()
    ):
        log.info("point %s: reusing the finished training in %s", point.id, run_dir)
        return True
    progress.stage(f"{point.id}: train", config.server.rounds, "round")
    prepared = prepare_run(config)  # an unreachable budget or a bad dataset raises here, before anything is written
    if run_dir.exists():
        shutil.rmtree(run_dir)
    point_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.copy() for k, v in prepared.initial_parameters.items()}, str(initial))
    Simulation(prepared, out_dir=run_dir, observer=_observer(progress)).run()
    return False


def _audit(spec: SweepSpec, config: Config, point: SweepPoint, point_dir: Path, progress: _Progress) -> dict[str, Any]:
    from safetensors.numpy import load_file

    from attacks.audit import AuditCase, audit_config
    from attacks.base import Budget

    assert spec.attack is not None
    ensure_attacks_registered(spec.attack.name)
    attack_dir = point_dir / "attack"
    if attack_dir.exists():
        shutil.rmtree(attack_dir)
    source = point_dir / ("initial.safetensors" if spec.attack.parameters == "initial" else "run/model.safetensors")
    parameters = load_file(str(source))
    progress.stage(f"{point.id}: attack", spec.attack.budget_iterations, "it")
    budget = Budget(
        max_iterations=spec.attack.budget_iterations,
        max_seconds=spec.attack.budget_seconds,
        progress=lambda done, total: progress.advance(done),
    )
    result = audit_config(
        config,
        case=AuditCase.from_dict(spec.audit_case),
        attack=spec.attack.name,
        settings=spec.attack.settings,
        budget=budget,
        out_dir=attack_dir,
        seed=point.seed,
        parameters=parameters,
    )
    metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    row: dict[str, Any] = {
        "attack": spec.attack.name,
        "attack_parameters": spec.attack.parameters,
        "attack_observes": result.threat_model.get("observes"),
        "attack_metric": result.primary_metric,
        "attack_value": _finite(result.primary_value),
        "attack_metrics": {k: _finite(v) for k, v in metrics.items()},
        "attack_iterations": int(result.budget.get("iterations_reached", result.iterations)),
        "attack_stopped_by": result.budget.get("stopped_by"),
        "attack_seconds": result.seconds,
        "attack_dir": f"points/{point.id}/attack",
    }
    row.update(_save_pixels(result, attack_dir, f"points/{point.id}/attack"))
    outputs = dict(result.outputs)
    if "picture" in outputs and (attack_dir / outputs["picture"]).is_file():
        row["reconstruction"] = f"points/{point.id}/attack/{outputs['picture']}"
    if "table" in outputs:
        row["reconstruction_table"] = f"points/{point.id}/attack/{outputs['table']}"
    texts = [
        {
            "original": s.get("reference_text", s.get("truth_text")),
            "recovered": s.get("candidate_text", s.get("text")),
            "token_f1": s.get("token_f1"),
        }
        for s in result.per_sample
        if "candidate_text" in s or "text" in s
    ]
    if texts:
        row["texts"] = texts
    return row


def _save_pixels(result: Any, attack_dir: Path, relative: str) -> dict[str, Any]:
    """For image audits: originals and reconstructions as [0, 1] pixel arrays, and which original each reconstruction matched."""
    import numpy as np

    truth, reconstruction = result.truth, result.reconstruction
    if truth is None or reconstruction is None or "pixels" not in truth.inputs:
        return {}
    from attacks.metrics_image import to_pixels

    attack_dir.mkdir(parents=True, exist_ok=True)
    normalization = reconstruction.normalization  # the attacked model's, from its dataset
    originals = to_pixels(truth.inputs["pixels"], normalization=normalization)
    # owner-only: the originals are clients' training examples, and a reconstruction that succeeds is one too
    save_private_array(attack_dir / "original_pixels.npy", originals.numpy().astype(np.float32))
    reconstructed = to_pixels(reconstruction.inputs, normalization=normalization)
    save_private_array(attack_dir / "reconstructed_pixels.npy", reconstructed.numpy().astype(np.float32))
    pairs = [
        {
            "index": int(s.get("index", i)),
            "truth_index": int(s.get("truth_index", i)),
            "psnr": _finite(s["psnr"]) if s.get("psnr") is not None else None,
        }
        for i, s in enumerate(result.per_sample[:16])
    ]
    return {
        "reconstruction_pixels": {"original": f"{relative}/original_pixels.npy", "reconstructed": f"{relative}/reconstructed_pixels.npy"},
        "reconstruction_pairs": pairs,
    }


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None
