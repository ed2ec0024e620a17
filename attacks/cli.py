"""``secure-ffm attack``: replay an audit on captured observations, or build cases from a config and attack them.

    secure-ffm attack --run RUN_DIR [--client K | --clients K,L,...] [--round R] [--attack NAME] [--set attack.KEY=VALUE ...]
    secure-ffm attack CONFIG.toml [--client K | --clients K,L,...] [--samples N] [--knows-labels]
                                  [--attack NAME] [--set SECTION.KEY=VALUE ...]

An attack config is a training config (``[data]``, ``[model]``, ``[privacy]``, ``[defense]``,
``[secure_aggregation]`` ...) plus ``[attack]`` (``name``, ``iterations``, ``max_seconds``,
``seed``, ``clients``, ``samples`` and a ``settings`` table) and ``[audit_case]``
(:class:`attacks.audit.AuditCase`). A flag overrides the config key it names (``--client``/``--clients``:
``attack.clients`` and ``audit_case.client``; ``--samples``: ``attack.samples``; ``--iterations``:
``attack.iterations``; ``--seconds``: ``attack.max_seconds``; ``--knows-labels``: ``audit_case.knows_labels``);
a flag that does not apply to the mode is refused, never ignored. The model and data are loaded once for
every client and batch. Writes ``attack.json`` (per-batch values, their mean and a 95% Student t
interval) and ``reconstructions.png`` or ``reconstructions.md`` to ``--out`` (one folder per batch when
there are several), and prints one row per batch and the mean.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attacks  # noqa: F401 - registers the attacks
from secure_ffm.config import ModelConfig, check_local_paths, config_from_dict, parse_override, read_toml
from secure_ffm.errors import ConfigError
from secure_ffm.run.cli import command
from secure_ffm.startup import collector_paused

log = logging.getLogger(__name__)

DEFAULT_ATTACK = {"image": "inverting-gradients", "text": "tag"}
ATTACK_KEYS = ("name", "iterations", "max_seconds", "seed", "clients", "samples", "settings")


def _client_list(text: str) -> list[int]:
    """``--clients 0,3,5``: distinct client ids >= 0."""
    try:
        clients = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of client numbers, e.g. 0,3,5") from None
    if not clients:
        raise argparse.ArgumentTypeError("is empty; name at least one client, e.g. 0,3,5")
    return clients


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="an attack config (training sections + [attack] + [audit_case]); omit with --run")
    parser.add_argument("--run", help="a run directory with captured observations ([audit] section of the training config)")
    parser.add_argument(
        "--client", type=int, help="the target client (overrides audit_case.client; with --run: default the first captured)"
    )
    parser.add_argument(
        "--clients", type=_client_list, metavar="K,L,...", help="several target clients, audited in one call (overrides attack.clients)"
    )
    parser.add_argument(
        "--samples",
        type=int,
        metavar="N",
        help="disjoint batches attacked per client (overrides attack.samples; default 1; not with --run)",
    )
    parser.add_argument(
        "--round", type=int, help="--run only: the captured round (default: each client's first; a public unit of an FFM run is refused)"
    )
    parser.add_argument("--attack", help="attack name (default: inverting-gradients for images, tag for text)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a value; attack.KEY sets an attack setting (repeatable)",
    )
    parser.add_argument("--iterations", type=int, help="iteration budget per batch (overrides attack.iterations)")
    parser.add_argument("--seconds", type=float, help="time budget in seconds per batch, 0 for none (overrides attack.max_seconds)")
    parser.add_argument("--knows-labels", action="store_true", help="give the attack the true labels (sets audit_case.knows_labels)")
    parser.add_argument("--out", help="output directory (default: RUN_DIR/audit/... or runs/attack-...)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _split_overrides(assignments: list[str]) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """(attack table, audit_case table, training-config overrides) from --set values."""
    attack: dict[str, Any] = {}
    case: dict[str, Any] = {}
    rest: list[str] = []
    for assignment in assignments:
        if assignment.startswith("attack.") or assignment.startswith("audit_case."):
            section, key, value = parse_override(assignment)
            if section == "audit_case":
                case[key] = value
            elif key in ATTACK_KEYS:
                attack[key] = value
            else:
                attack.setdefault("settings", {})[key] = value
        else:
            rest.append(assignment)
    return attack, case, rest


def _fresh_out(path: Path) -> Path:
    if path.exists() and any(path.iterdir()):
        raise ConfigError("--out", f"{path} already exists and is not empty", "choose a new --out")
    return path


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_table(table: Mapping[str, Any]) -> None:
    """Unknown keys and values of the wrong kind in ``[attack]`` (plus ``--set attack.KEY``), each named."""
    for key in table:
        if key not in ATTACK_KEYS:
            raise ConfigError(
                f"attack.{key}", "unknown key", f"valid keys: {', '.join(ATTACK_KEYS)}; attack settings go in [attack.settings]"
            )
    if "name" in table and not (isinstance(table["name"], str) and table["name"]):
        raise ConfigError("attack.name", f"must be an attack name, got {table['name']!r}", 'write e.g. name = "dlg"')
    if "iterations" in table and not (_is_int(table["iterations"]) and table["iterations"] >= 1):
        raise ConfigError("attack.iterations", f"must be a whole number >= 1, got {table['iterations']!r}", "write e.g. iterations = 200")
    if "max_seconds" in table:
        seconds = table["max_seconds"]
        if not (isinstance(seconds, int | float) and not isinstance(seconds, bool) and math.isfinite(seconds) and seconds >= 0):
            raise ConfigError("attack.max_seconds", f"must be a number >= 0, got {seconds!r}", "use 0 for no time limit")
    if "seed" in table and not (_is_int(table["seed"]) and 0 <= table["seed"] < 2**63):
        raise ConfigError("attack.seed", f"must be a whole number in [0, 2^63), got {table['seed']!r}", "write e.g. seed = 0")
    if "samples" in table and not (_is_int(table["samples"]) and table["samples"] >= 1):
        raise ConfigError("attack.samples", f"must be a whole number >= 1, got {table['samples']!r}", "write e.g. samples = 5")
    if "clients" in table:
        clients = table["clients"]
        if not (isinstance(clients, list) and clients and all(_is_int(k) for k in clients)):
            raise ConfigError("attack.clients", f"must be a list of client numbers, got {clients!r}", "write e.g. clients = [0, 3, 5]")
    if "settings" in table and not isinstance(table["settings"], Mapping):
        raise ConfigError("attack.settings", f"must be a table, got {table['settings']!r}", "write it as [attack.settings]")


def _targets(args: argparse.Namespace, table: Mapping[str, Any], case_table: Mapping[str, Any]) -> list[int] | None:
    """The target clients: --clients or --client, else attack.clients, else audit_case.client (None: the mode's default)."""
    if args.client is not None and args.clients is not None:
        raise ConfigError("--client", "given together with --clients", "name every target in --clients")
    if args.clients is None and args.client is None and "clients" in table and "client" in case_table:
        raise ConfigError(
            "attack.clients", "given together with audit_case.client", "name the targets once: drop audit_case.client, or pass --clients"
        )
    clients = args.clients if args.clients is not None else [args.client] if args.client is not None else table.get("clients")
    if clients is None:
        return None
    for client in clients:
        if client < 0:
            raise ConfigError("--clients", f"client {client} is negative", "clients are numbered from 0")
    repeated = sorted({k for k in clients if clients.count(k) > 1})
    if repeated:
        raise ConfigError(
            "--clients", f"client {repeated[0]} is listed twice", "list each client once; use --samples for more batches of one client"
        )
    return list(clients)


def _budget(table: Mapping[str, Any], args: argparse.Namespace, progress: Any) -> Any:
    from attacks.base import Budget

    if args.iterations is not None and args.iterations < 1:
        raise ConfigError("--iterations", f"must be at least 1, got {args.iterations}")
    if args.seconds is not None and not (math.isfinite(args.seconds) and args.seconds >= 0):
        raise ConfigError("--seconds", f"must be >= 0, got {args.seconds}", "use 0 for no time limit")
    iterations = args.iterations if args.iterations is not None else int(table.get("iterations", 300))
    seconds = args.seconds if args.seconds is not None else float(table.get("max_seconds", 0.0))
    return Budget(max_iterations=iterations, max_seconds=seconds, progress=progress)


class _Progress:
    """One tqdm bar of attack iterations, relabelled (and restarted) for each audited batch."""

    def __init__(self, enabled: bool) -> None:
        self.bar: Any = None
        self.enabled = enabled
        self.label = "attack"

    def start_case(self, client: int, sample: int, position: int, total: int) -> None:
        if total > 1:
            who = f"client {client}" if client >= 0 else "capture"
            self.label = f"{who} batch {sample} ({position + 1}/{total})"
        if self.bar is not None:
            self.bar.reset()
            self.bar.set_description(self.label)

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=self.label, unit="it")
        self.bar.total = total
        self.bar.n = min(done, total)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@command("attack", help="audit leakage: attack captured observations (--run) or cases built from a config", configure=configure)
def attack_command(args: argparse.Namespace) -> int:
    with collector_paused():  # secure_ffm.startup
        from attacks.audit import AuditCase, audit_capture_many, audit_config_many, read_run_config

    set_attack, set_case, overrides = _split_overrides(args.set)
    if args.samples is not None and args.samples < 1:
        raise ConfigError("--samples", f"must be at least 1, got {args.samples}")
    progress = _Progress(not args.quiet)
    try:
        if args.run:
            if args.config:
                raise ConfigError("CONFIG", "give either a config or --run, not both", "drop one of them")
            if overrides or set_case:
                raise ConfigError(
                    "--set",
                    "only attack.KEY values can be set when replaying a capture",
                    "the run's own config.toml describes the training",
                )
            run_dir = Path(args.run)
            table = dict(set_attack)
            _check_table(table)
            if (args.samples or table.get("samples", 1)) > 1:
                raise ConfigError(
                    "--samples",
                    "does not apply with --run: a capture is one batch per client and round",
                    "capture more clients and pass them with --clients",
                )
            clients = _targets(args, table, {})
            name = args.attack or table.get("name") or _default_for_run(run_dir)
            check_local_paths(read_run_config(run_dir), beside=run_dir, what="the run directory")
            result_dir = Path(args.out) if args.out else run_dir / "audit" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
            _fresh_out(result_dir)
            summary = audit_capture_many(
                run_dir,
                clients=clients,
                round=args.round,
                attack=name,
                settings=table.get("settings"),
                budget=_budget(table, args, progress),
                knows_labels=args.knows_labels,
                out_dir=result_dir,
                seed=int(table.get("seed", 0)),
                on_case=progress.start_case,
            )
        else:
            if not args.config:
                raise ConfigError("CONFIG", "missing", "pass an attack config (e.g. configs/attack_fashion_mnist.toml) or --run RUN_DIR")
            if args.round is not None:
                raise ConfigError(
                    "--round",
                    "only applies with --run: a config builds a fresh case",
                    "drop --round, or replay a captured run with --run RUN_DIR",
                )
            raw = read_toml(args.config, key="CONFIG", fix="pass the path of an attack config .toml")
            file_attack = raw.pop("attack", {})
            file_case = raw.pop("audit_case", {})
            for section, body in (("attack", file_attack), ("audit_case", file_case)):
                if not isinstance(body, Mapping):
                    raise ConfigError(section, "must be a table", f"write it as [{section}]")
            table = {**file_attack, **{k: v for k, v in set_attack.items() if k != "settings"}}
            if "settings" in table or "settings" in set_attack:
                settings = table.get("settings", {})
                table["settings"] = {**settings, **set_attack.get("settings", {})} if isinstance(settings, Mapping) else settings
            _check_table(table)
            case_table = {**file_case, **set_case}
            clients = _targets(args, table, case_table)
            if args.knows_labels:
                case_table["knows_labels"] = True
            case = AuditCase.from_dict(case_table)
            config = config_from_dict(raw, overrides=overrides)
            check_local_paths(config, beside=Path(args.config).parent, what="the config's folder")
            name = args.attack or table.get("name") or _default_attack(config.model.arch)
            result_dir = Path(args.out) if args.out else Path("runs") / f"attack-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
            _fresh_out(result_dir)
            summary = audit_config_many(
                config,
                case=case,
                clients=clients if clients is not None else [case.client],
                samples=args.samples if args.samples is not None else int(table.get("samples", 1)),
                attack=name,
                settings=table.get("settings"),
                budget=_budget(table, args, progress),
                out_dir=result_dir,
                seed=int(table.get("seed", 0)),
                on_case=progress.start_case,
            )
    finally:
        progress.close()
    print(format_table(summary.to_dict()))
    print(f"results: {result_dir / 'attack.json'}")
    return 0


def format_table(document: Mapping[str, Any]) -> str:
    """The printed report of attack.json: one row per attacked batch, then the mean and its interval."""
    metrics = list(document["mean"])
    primary = document["primary_metric"]
    metrics.sort(key=lambda m: m != primary)
    budget = document["budget"]
    limit = f", {budget['max_seconds']:g}s" if budget.get("max_seconds") else ""
    lines = [
        f"{document['attack']} on {document['threat_model']['observes']} (budget {budget['max_iterations']} iterations{limit} per batch)"
    ]
    width = {m: max(len(m), 12) for m in metrics}
    header = (
        f"{'client':>6} {'batch':>5} {'examples':>8} "
        + " ".join(f"{m:>{width[m]}}" for m in metrics)
        + f" {'iterations':>13} {'seconds':>8}"
    )
    lines.append(header)
    for audit in document["audits"]:
        spent = audit["budget"]
        cut = " time" if spent.get("stopped_by") == "time" else ""
        reached = f"{audit['iterations']}/{spent.get('max_iterations', '?')}{cut}"
        lines.append(
            f"{audit['client']:>6} {audit['sample']:>5} {len(audit['indices']):>8} "
            + " ".join(f"{_number(audit['mean'].get(m)):>{width[m]}}" for m in metrics)
            + f" {reached:>13} {audit['seconds']:>8.1f}"
        )
    interval = document["interval"]
    n = interval["n"]
    lines.append(f"{'mean':>6} {'':>5} {'':>8} " + " ".join(f"{_number(document['mean'][m]):>{width[m]}}" for m in metrics))
    if n > 1:
        bounds = interval["bounds"]
        cells = " ".join(f"{_bounds(bounds.get(m)):>{width[m]}}" for m in metrics)
        lines.append(f"{'95% CI':>6} {'':>5} {'':>8} {cells}")
        lines.append(f"(mean over {n} batches; 95% Student t interval of the batch means)")
    else:
        lines.append("(one batch: no interval; attack more with --clients or --samples)")
    stopped = sum(1 for a in document["audits"] if a["budget"].get("stopped_by") == "time")
    if stopped:
        lines.append(
            f"{stopped} of {len(document['audits'])} attacks were stopped by the time budget "
            "before their iteration budget (see `time` above)"
        )
    return "\n".join(lines)


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"


def _bounds(bounds: Sequence[float] | None) -> str:
    return "-" if bounds is None else f"[{bounds[0]:.3g}, {bounds[1]:.3g}]"


def _default_for_run(run_dir: Path) -> str:
    config_path = run_dir / "config.toml"
    if not config_path.is_file():
        raise ConfigError("--run", f"{run_dir} is not a run directory (no config.toml)", "pass a directory written by `secure-ffm train`")
    model = read_toml(config_path, key="--run", fix="pass a directory written by `secure-ffm train`").get("model", {})
    return _default_attack(model.get("arch", ModelConfig().arch) if isinstance(model, Mapping) else ModelConfig().arch)


def _default_attack(arch: str) -> str:
    """The default attack for the data kind (``image``, ``text``) the registered architecture ``arch`` reads."""
    from secure_ffm.models import MODELS

    return DEFAULT_ATTACK[MODELS.get(str(arch), key="model.arch").data_kind]
