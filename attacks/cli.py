"""``secure-ffm attack``: replay an audit on a captured observation, or build a case from a config and attack it.

    secure-ffm attack --run RUN_DIR [--client K] [--round R] [--attack NAME] [--set attack.KEY=VALUE ...]
    secure-ffm attack CONFIG.toml [--attack NAME] [--set SECTION.KEY=VALUE ...]

An attack config is a training config (``[data]``, ``[model]``, ``[privacy]``, ``[defense]``,
``[secure_aggregation]`` ...) plus ``[attack]`` (``name``, ``iterations``, ``max_seconds``,
``seed`` and a ``settings`` table) and ``[audit_case]`` (:class:`attacks.audit.AuditCase`).
Writes ``attack.json`` and ``reconstructions.png`` or ``reconstructions.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import logging
import time
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attacks  # noqa: F401 - registers the attacks
from secure_ffm.cli import command
from secure_ffm.config import config_from_dict, parse_override, read_toml
from secure_ffm.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_ATTACK = {"image": "inverting-gradients", "text": "tag"}
ATTACK_KEYS = ("name", "iterations", "max_seconds", "seed", "settings")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="an attack config (training sections + [attack] + [audit_case]); omit with --run")
    parser.add_argument("--run", help="a run directory with captured observations ([audit] section of the training config)")
    parser.add_argument("--client", type=int, help="--run: the captured client (default: the first captured)")
    parser.add_argument("--round", type=int, help="--run: the captured round (default: the first captured)")
    parser.add_argument("--attack", help="attack name (default: inverting-gradients for images, tag for text)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a value; attack.KEY sets an attack setting (repeatable)")
    parser.add_argument("--iterations", type=int, help="iteration budget (overrides attack.iterations)")
    parser.add_argument("--seconds", type=float, help="time budget in seconds (overrides attack.max_seconds)")
    parser.add_argument("--knows-labels", action="store_true", help="--run: give the attack the true labels")
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


def _budget(attack_table: Mapping[str, Any], args: argparse.Namespace, progress: Any) -> Any:
    from attacks.base import Budget

    iterations = args.iterations if args.iterations is not None else int(attack_table.get("iterations", 300))
    seconds = args.seconds if args.seconds is not None else float(attack_table.get("max_seconds", 0.0))
    return Budget(max_iterations=iterations, max_seconds=seconds, progress=progress)


class _Progress:
    def __init__(self, enabled: bool) -> None:
        self.bar: Any = None
        self.enabled = enabled

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="attack", unit="it")
        self.bar.total = total
        self.bar.n = min(done, total)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _check_known(table: Mapping[str, Any]) -> None:
    for key in table:
        if key not in ATTACK_KEYS:
            raise ConfigError(f"attack.{key}", "unknown key", f"valid keys: {', '.join(ATTACK_KEYS)}; attack settings go in [attack.settings]")


@command("attack", help="audit leakage: attack a captured observation (--run) or a case built from a config", configure=configure)
def attack_command(args: argparse.Namespace) -> int:
    from attacks.audit import AuditCase, audit_capture, audit_config

    set_attack, set_case, overrides = _split_overrides(args.set)
    progress = _Progress(not args.quiet)
    try:
        if args.run:
            if args.config:
                raise ConfigError("CONFIG", "give either a config or --run, not both", "drop one of them")
            if overrides or set_case:
                raise ConfigError("--set", "only attack.KEY values can be set when replaying a capture", "the run's own config.toml describes the training")
            run_dir = Path(args.run)
            table = dict(set_attack)
            _check_known(table)
            name = args.attack or table.get("name") or _default_for_run(run_dir)
            result_dir = Path(args.out) if args.out else run_dir / "audit" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
            _fresh_out(result_dir)
            result = audit_capture(
                run_dir,
                round=args.round,
                client=args.client,
                attack=name,
                settings=table.get("settings"),
                budget=_budget(table, args, progress),
                knows_labels=args.knows_labels,
                out_dir=result_dir,
                seed=int(table.get("seed", 0)),
            )
        else:
            if not args.config:
                raise ConfigError("CONFIG", "missing", "pass an attack config (e.g. configs/attack_fashion_mnist.toml) or --run RUN_DIR")
            raw = read_toml(args.config, key="CONFIG", fix="pass the path of an attack config .toml")
            table = {**raw.pop("attack", {}), **{k: v for k, v in set_attack.items() if k != "settings"}}
            table["settings"] = {**table.get("settings", {}), **set_attack.get("settings", {})}
            _check_known(table)
            case = AuditCase.from_dict({**raw.pop("audit_case", {}), **set_case})
            config = config_from_dict(raw, overrides=overrides)
            name = args.attack or table.get("name") or DEFAULT_ATTACK["image" if config.model.arch in ("cnn", "vit") else "text"]
            result_dir = Path(args.out) if args.out else Path("runs") / f"attack-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
            _fresh_out(result_dir)
            result = audit_config(
                config,
                case=case,
                attack=name,
                settings=table.get("settings"),
                budget=_budget(table, args, progress),
                out_dir=result_dir,
                seed=int(table.get("seed", 0)),
            )
    finally:
        progress.close()
    means = ", ".join(f"{k}={v:.4g}" for k, v in result.metrics.items() if isinstance(v, int | float))
    print(f"{result.attack} on {result.threat_model['observes']}: {means} ({result.seconds:.1f}s)\nresults: {result_dir / 'attack.json'}")
    return 0


def _default_for_run(run_dir: Path) -> str:
    config_path = run_dir / "config.toml"
    if not config_path.is_file():
        raise ConfigError("--run", f"{run_dir} is not a run directory (no config.toml)", "pass a directory written by `secure-ffm train`")
    arch = tomllib.loads(config_path.read_text(encoding="utf-8")).get("model", {}).get("arch", "hf-text")
    return DEFAULT_ATTACK["image" if arch in ("cnn", "vit") else "text"]
