"""Sweep files: a base training config, a grid of named settings, seeds, and the leakage audit to run.

A sweep file is TOML::

    [sweep]
    name = "fmnist-privacy"
    base = "../configs/fashion_mnist_cnn.toml"   # or an inline [base] table of config sections
    seeds = [0, 1]
    overrides = ["server.rounds=3"]              # applied to every point
    exclude = [{ privacy = "none", defense = "secure aggregation" }]

    [grid.privacy]                               # axis "privacy": setting name -> overrides
    "none" = []
    "dp-sgd eps=1" = ['privacy.mode="dp-sgd"', "privacy.target_epsilon=1.0"]

    [attack]                                     # optional: no [attack], no audit
    name = "inverting-gradients"
    budget_iterations = 200
    parameters = "initial"                       # attack the initial model (round 1) or the "final" one
    settings = {}

    [audit_case]                                 # what the audit attacks (attacks.audit.AuditCase)
    batch_size = 1

The grid is the cartesian product of the axes (in file order) times the seeds, less the
points an ``exclude`` entry matches (an entry matches a point when every axis it names is
set to one of the listed settings). Each point's overrides are the sweep's ``overrides``,
then each axis setting's, then ``run.seed``; later ones win.

Expanding the grid is pure (:func:`expand_grid`); :func:`load_sweep` also builds every
point's :class:`~secure_ffm.config.Config`, loads and partitions its data, and checks the
defenses, the aggregation protocol and the attack, so that a bad setting stops the sweep before
anything runs. (A privacy budget no noise can meet is found only when the point's run is
prepared: that point is recorded as failed and the others go on.)
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from secure_ffm.config import check_keys, check_local_paths, check_plain_name, read_toml, unknown_section
from secure_ffm.errors import ConfigError
from secure_ffm.registry import did_you_mean
from secure_ffm.variants import PROTOCOLS

if TYPE_CHECKING:
    from secure_ffm.config import Config

TOP_LEVEL = ("sweep", "base", "grid", "attack", "audit_case")
SWEEP_KEYS = ("name", "base", "seeds", "overrides", "exclude")
ATTACK_KEYS = ("name", "budget_iterations", "budget_seconds", "parameters", "settings")
ATTACK_PARAMETERS = ("initial", "final")


@dataclass(frozen=True)
class AttackSpec:
    """``[attack]``: which attack audits every point, and its budget."""

    name: str
    budget_iterations: int = 200
    budget_seconds: float = 0.0
    parameters: str = "initial"
    """Which global model the audit attacks: ``initial`` (the round-1 model every point of a seed shares, so
    differences in leakage come from the protections alone; the most leaky round for an untrained model) or
    ``final`` (the trained model of the point, as the server would hold it for the next round)."""
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "budget_iterations": self.budget_iterations,
            "budget_seconds": self.budget_seconds,
            "parameters": self.parameters,
            "settings": dict(self.settings),
        }


@dataclass(frozen=True)
class SweepPoint:
    """One grid point: a setting per axis and a seed, with the overrides they imply."""

    settings: tuple[tuple[str, str], ...]
    """``(axis, setting name)`` in axis order."""
    seed: int
    overrides: tuple[str, ...]
    """``section.key=value`` in the order applied: sweep overrides, each axis setting's, then ``run.seed``."""

    @property
    def id(self) -> str:
        """A stable, file-name-safe id: the slugged axis settings and the seed (e.g. ``privacy-none__defense-prune-90__seed-0``)."""
        parts = [f"{slug(axis)}-{slug(name)}" for axis, name in self.settings]
        return "__".join([*parts, f"seed-{self.seed}"])

    @property
    def label(self) -> str:
        """``axis=setting, ...`` for messages."""
        return ", ".join(f"{axis}={name}" for axis, name in self.settings) + f", seed={self.seed}" if self.settings else f"seed={self.seed}"

    def setting(self, axis: str) -> str:
        return dict(self.settings)[axis]


@dataclass
class SweepSpec:
    """A parsed sweep file (its grid expanded; configs not yet built)."""

    name: str
    base: dict[str, Any]
    """The base config as raw TOML sections (inlined from ``sweep.base`` when that names a file)."""
    axes: dict[str, dict[str, tuple[str, ...]]]
    seeds: tuple[int, ...]
    overrides: tuple[str, ...]
    exclude: tuple[dict[str, tuple[str, ...]], ...]
    attack: AttackSpec | None
    audit_case: dict[str, Any]
    source: Path | None = None
    base_dir: Path | None = None
    """The folder of the base config file (of the sweep file for an inline ``[base]``): relative data and model
    paths that exist only there are refused naming it, as ``train`` and ``attack`` do (they resolve from the current directory)."""
    points: list[SweepPoint] = field(default_factory=list)
    configs: dict[str, Config] = field(default_factory=dict)
    """Point id -> built config (filled by :meth:`validate`)."""
    audit_skipped: dict[str, str] = field(default_factory=dict)
    """Point id -> why the attack cannot be applied there (e.g. it does not handle the aggregate that secure
    aggregation leaves); those points are trained and measured but not audited (filled by :meth:`validate`)."""

    def privacy_axes(self) -> tuple[str, ...]:
        """Axes whose settings change a ``privacy.*`` key (the ε axes of the plots)."""
        return tuple(
            axis
            for axis, settings in self.axes.items()
            if any(o.split("=", 1)[0].strip().startswith("privacy.") for s in settings.values() for o in s)
        )

    def override_keys(self) -> tuple[str, ...]:
        """Every ``section.key`` any point overrides (a CSV column each), in first-use order."""
        keys: dict[str, None] = {}
        for assignment in (*self.overrides, *(o for settings in self.axes.values() for s in settings.values() for o in s)):
            keys[assignment.split("=", 1)[0].strip()] = None
        return tuple(keys)

    def fingerprint(self, point: SweepPoint) -> str:
        """A hash of everything that decides the point's result: its resolved config and the audit."""
        config = self.configs[point.id]
        document = {"config": config.to_dict(), "attack": self.attack.to_dict() if self.attack else None, "audit_case": self.audit_case}
        return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def to_document(self) -> dict[str, Any]:
        """The resolved sweep file (base inlined), as written to ``sweep.toml`` in the sweep directory."""
        sweep: dict[str, Any] = {"name": self.name, "seeds": list(self.seeds), "overrides": list(self.overrides)}
        if self.exclude:
            sweep["exclude"] = [{axis: list(names) for axis, names in entry.items()} for entry in self.exclude]
        document: dict[str, Any] = {"sweep": sweep, "base": self.base}
        if self.axes:
            document["grid"] = {axis: {name: list(o) for name, o in settings.items()} for axis, settings in self.axes.items()}
        if self.attack is not None:
            document["attack"] = self.attack.to_dict()
        if self.audit_case:
            document["audit_case"] = dict(self.audit_case)
        return document

    def to_toml(self) -> str:
        header = "# Resolved sweep file written by `secure-ffm sweep`"
        if self.source is not None:
            header += f" from {self.source}"
        return header + " (the base config is inlined).\n" + dumps_toml(self.to_document())

    def validate(self) -> None:
        """Build every point's config, partition its data, check the defenses, protocol and attack;
        raise ConfigError on the first problem."""
        from secure_ffm.config import config_from_dict

        self.configs.clear()
        partitioned: set[tuple[str, int]] = set()
        for point in self.points:
            try:
                config = config_from_dict(self.base, overrides=point.overrides)
                check_local_paths(config, beside=self.base_dir, what="the base config's folder")
                _check_buildable(config)
                key = (repr(config.data), config.run.seed)
                if key not in partitioned:  # the dataset loads and partitions (each distinct data section and seed once)
                    _check_data(config)
                    partitioned.add(key)
            except ConfigError as error:
                raise ConfigError(f"{error.key} (sweep point {point.label})", error.problem, error.fix) from None
            self.configs[point.id] = config
        if self.attack is not None:
            _check_attack(self)


# --------------------------------------------------------------------------- parsing


def load_sweep(path: str | Path, *, validate: bool = True) -> SweepSpec:
    """Read a sweep file, expand its grid and (by default) validate every point."""
    path = Path(path)
    raw = read_toml(path, key="SWEEP", fix="pass the path of a sweep .toml, e.g. configs/sweep_tiny.toml")
    spec = sweep_from_dict(raw, root=path.parent, default_name=path.stem)
    spec.source = path
    if validate:
        spec.validate()
    return spec


def sweep_from_dict(raw: Mapping[str, Any], *, root: Path | None = None, default_name: str = "sweep") -> SweepSpec:
    """Parse a sweep document and expand its grid (pure, apart from reading a ``sweep.base`` file)."""
    _known_keys("", raw, TOP_LEVEL, table=True)
    sweep = _table(raw, "sweep")
    _known_keys("sweep", sweep, SWEEP_KEYS)
    name = sweep.get("name", default_name)
    if not isinstance(name, str) or not name:
        raise ConfigError("sweep.name", f"must be a non-empty string, got {name!r}")
    check_plain_name("sweep.name", name)  # the default folder is runs/sweep-<name>
    base = _base(raw, sweep, root)
    seeds = sweep.get("seeds")
    if seeds is None:
        seeds = [int(base.get("run", {}).get("seed", 0))]
    if not isinstance(seeds, list) or not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ConfigError(
            "sweep.seeds", f"must be a non-empty list of non-negative integers, got {seeds!r}", "write e.g. seeds = [0, 1, 2]"
        )
    if len(set(seeds)) != len(seeds):
        raise ConfigError("sweep.seeds", f"lists a seed twice: {seeds!r}")
    overrides = _overrides("sweep.overrides", sweep.get("overrides", []))
    axes = _axes(_table(raw, "grid"))
    exclude = _exclude(sweep.get("exclude", []), axes)
    attack = _attack(raw["attack"]) if "attack" in raw else None
    audit_case = dict(_table(raw, "audit_case"))
    spec = SweepSpec(
        name=name, base=base, axes=axes, seeds=tuple(seeds), overrides=overrides, exclude=exclude, attack=attack, audit_case=audit_case
    )
    spec.base_dir = _base_dir(sweep, root)
    spec.points = expand_grid(axes, spec.seeds, overrides=overrides, exclude=exclude)
    if not spec.points:
        raise ConfigError("sweep.exclude", "excludes every point of the grid", "exclude fewer combinations")
    return spec


def expand_grid(
    axes: Mapping[str, Mapping[str, Sequence[str]]],
    seeds: Sequence[int],
    *,
    overrides: Sequence[str] = (),
    exclude: Sequence[Mapping[str, Sequence[str]]] = (),
) -> list[SweepPoint]:
    """The cartesian product of the axes' settings (file order, last axis fastest) times the seeds, less excluded points."""
    names = list(axes)
    points: list[SweepPoint] = []
    for combination in itertools.product(*(list(axes[axis]) for axis in names)):
        settings = tuple(zip(names, combination, strict=True))
        if any(all(dict(settings)[axis] in chosen for axis, chosen in entry.items()) for entry in exclude):
            continue
        setting_overrides = [o for axis, setting in settings for o in axes[axis][setting]]
        for seed in seeds:
            points.append(
                SweepPoint(settings=settings, seed=int(seed), overrides=(*overrides, *setting_overrides, f"run.seed={int(seed)}"))
            )
    ids: dict[str, SweepPoint] = {}
    for point in points:
        if point.id in ids:
            raise ConfigError(
                "grid",
                f"points {ids[point.id].label!r} and {point.label!r} get the same id {point.id!r}",
                "rename a setting so that they differ in letters or digits",
            )
        ids[point.id] = point
    return points


def slug(text: str) -> str:
    """Lower-case letters, digits and single dashes (``"DP-SGD eps=1"`` -> ``"dp-sgd-eps-1"``)."""
    replaced = text.lower().replace("%", "pct").replace("∞", "inf").replace("ε", "eps")
    return re.sub(r"[^a-z0-9.]+", "-", replaced).replace(".", "p").strip("-") or "x"


def _known_keys(section: str, body: Mapping[str, Any], valid: Sequence[str], *, table: bool = False) -> None:
    """Refuse an unknown table (``table``) or key of ``section`` as config files do (:mod:`secure_ffm.config`)."""
    if not table:
        check_keys(section, body, valid, listing="valid")
        return
    for key in body:
        if key not in valid:
            raise unknown_section(key, valid, listing="valid")


def _table(raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"must be a table, got {type(value).__name__}", f"write it as [{key}]")
    return value


def _base(raw: Mapping[str, Any], sweep: Mapping[str, Any], root: Path | None) -> dict[str, Any]:
    if "base" in sweep and "base" in raw:
        raise ConfigError("sweep.base", "is given twice: as a path and as a [base] table", "keep one of them")
    if "base" in raw:
        base = _table(raw, "base")
        return {section: dict(body) if isinstance(body, Mapping) else body for section, body in base.items()}
    if "base" not in sweep:
        raise ConfigError(
            "sweep.base", "is missing", 'name the training config, e.g. base = "../configs/fashion_mnist_cnn.toml", or add a [base] table'
        )
    if not isinstance(sweep["base"], str):
        raise ConfigError("sweep.base", f"must be a path string, got {sweep['base']!r}")
    path = Path(sweep["base"])
    if not path.is_absolute() and root is not None:
        path = root / path
    return read_toml(path, key="sweep.base", fix="give the config's path relative to the sweep file")


def _base_dir(sweep: Mapping[str, Any], root: Path | None) -> Path | None:
    """The folder of the base config: that of ``sweep.base`` when it names a file, else the sweep file's (``root``)."""
    if not isinstance(sweep.get("base"), str):
        return root
    path = Path(sweep["base"])
    return (path if path.is_absolute() or root is None else root / path).parent


def _overrides(key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or any(not isinstance(v, str) for v in value):
        raise ConfigError(key, f'must be a list of "section.key=value" strings, got {value!r}', 'write e.g. ["server.rounds=3"]')
    for assignment in value:
        target = assignment.split("=", 1)[0].strip()
        if "=" not in assignment or target.count(".") != 1:
            raise ConfigError(
                key, f"{assignment!r} is not section.key=value", 'write e.g. "client.lr=0.01" (quote strings: \'privacy.mode="dp-sgd"\')'
            )
        if target == "run.seed":
            raise ConfigError(key, "sets run.seed", "list the seeds in sweep.seeds instead")
    return tuple(value)


def _axes(grid: Mapping[str, Any]) -> dict[str, dict[str, tuple[str, ...]]]:
    axes: dict[str, dict[str, tuple[str, ...]]] = {}
    for axis, settings in grid.items():
        if not isinstance(settings, Mapping) or not settings:
            raise ConfigError(
                f"grid.{axis}", "must be a non-empty table of setting name = [overrides]", f'write e.g. [grid.{axis}] then "none" = []'
            )
        axes[axis] = {name: _overrides(f"grid.{axis}.{name}", value) for name, value in settings.items()}
    return axes


def _exclude(value: Any, axes: Mapping[str, Mapping[str, Any]]) -> tuple[dict[str, tuple[str, ...]], ...]:
    if not isinstance(value, list):
        raise ConfigError(
            "sweep.exclude",
            f"must be a list of tables, got {value!r}",
            'write e.g. exclude = [{ privacy = "none", defense = "prune 90%" }]',
        )
    entries = []
    for entry in value:
        if not isinstance(entry, Mapping) or not entry:
            raise ConfigError("sweep.exclude", f"entries must be non-empty tables of axis = setting, got {entry!r}")
        parsed: dict[str, tuple[str, ...]] = {}
        for axis, names in entry.items():
            if axis not in axes:
                fix = did_you_mean(axis, list(axes), listing="axes") if axes else "axes: none"
                raise ConfigError("sweep.exclude", f"unknown axis {axis!r}", fix)
            chosen = (names,) if isinstance(names, str) else names
            if not isinstance(chosen, list | tuple) or any(not isinstance(n, str) for n in chosen):
                raise ConfigError("sweep.exclude", f"{axis} must be a setting name or a list of names, got {names!r}")
            for name in chosen:
                if name not in axes[axis]:
                    fix = did_you_mean(name, list(axes[axis]), listing="settings")
                    raise ConfigError("sweep.exclude", f"axis {axis!r} has no setting {name!r}", fix)
            parsed[axis] = tuple(chosen)
        entries.append(parsed)
    return tuple(entries)


def _attack(raw: Any) -> AttackSpec:
    if not isinstance(raw, Mapping):
        raise ConfigError("attack", "must be a table", "write it as [attack]")
    _known_keys("attack", raw, ATTACK_KEYS)
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError("attack.name", "is missing", 'name a registered attack, e.g. name = "inverting-gradients"')
    iterations = raw.get("budget_iterations", 200)
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ConfigError("attack.budget_iterations", f"must be a positive integer, got {iterations!r}")
    seconds = raw.get("budget_seconds", 0.0)
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not (math.isfinite(seconds) and seconds >= 0):
        raise ConfigError("attack.budget_seconds", f"must be a non-negative number, got {seconds!r}", "use 0 for no time limit")
    parameters = raw.get("parameters", "initial")
    if parameters not in ATTACK_PARAMETERS:
        raise ConfigError("attack.parameters", f"unknown value {parameters!r}", f"choose one of: {', '.join(ATTACK_PARAMETERS)}")
    settings = raw.get("settings", {})
    if not isinstance(settings, Mapping):
        raise ConfigError("attack.settings", "must be a table", "write e.g. settings = { tv_weight = 1e-4 }")
    return AttackSpec(
        name=name, budget_iterations=iterations, budget_seconds=float(seconds), parameters=parameters, settings=dict(settings)
    )


# --------------------------------------------------------------------------- validation


def data_kind(config: Config) -> str:
    """The kind of data (``image``, ``text``) the point's model reads: its registered architecture's ``data_kind``."""
    from secure_ffm.models import MODELS

    return MODELS.get(config.model.arch, key="model.arch").data_kind


def observation_kind(config: Config, *, observes: str = "auto", local_steps: int = 1) -> str:
    """What the audit's server observes under ``config`` (as :func:`attacks.audit.observe_config` decides):
    only the ``aggregate`` under secure aggregation, else one client's ``gradient`` or multi-step ``update``."""
    if PROTOCOLS.get(config.secure_aggregation.protocol, key="secure_aggregation.protocol").hides_updates:
        return "aggregate"
    return "update" if observes == "update" or (observes == "auto" and local_steps > 1) else "gradient"


def _check_buildable(config: Config) -> None:
    """What ``config_from_dict`` leaves to run time but fails in seconds: defense names and the aggregation protocol."""
    from secure_ffm.engine.transforms import build_defenses

    build_defenses(config.defense)
    PROTOCOLS.get(config.secure_aggregation.protocol, key="secure_aggregation.protocol")


def ensure_attacks_registered(name: str) -> None:
    """Import the attack modules: ``attacks`` registers them; else every module of the package is imported."""
    import importlib
    import pkgutil

    import attacks
    from attacks.base import ATTACKS

    if name in ATTACKS:
        return
    for module in pkgutil.iter_modules(attacks.__path__):
        if module.name != "cli":
            try:
                importlib.import_module(f"attacks.{module.name}")
            except ImportError:  # pragma: no cover - a broken optional module; build_attack then names the problem
                continue


def _check_data(config: Config) -> None:
    """Load and partition the point's data (fast: datasets are cached), as the run would; raises ConfigError."""
    from secure_ffm.data import load_run_data

    load_run_data(config)


def _check_attack(spec: SweepSpec) -> None:
    assert spec.attack is not None
    ensure_attacks_registered(spec.attack.name)
    from attacks.audit import AuditCase
    from attacks.base import Budget, build_attack

    attack = build_attack(spec.attack.name, spec.attack.settings)
    Budget(max_iterations=spec.attack.budget_iterations, max_seconds=spec.attack.budget_seconds)
    case = AuditCase.from_dict(spec.audit_case)
    spec.audit_skipped.clear()
    for point in spec.points:
        config = spec.configs[point.id]
        if case.client >= config.data.num_clients:  # else every point trains and then fails its audit
            raise ConfigError(
                f"audit_case.client (sweep point {point.label})",
                f"client {case.client} does not exist (data.num_clients={config.data.num_clients})",
                f"use 0 .. {config.data.num_clients - 1}",
            )
        observed = observation_kind(config, observes=case.observes, local_steps=case.local_steps)
        if observed not in attack.observes:
            spec.audit_skipped[point.id] = (
                f"{spec.attack.name} does not attack {observed!r} observations (it handles: {', '.join(attack.observes)})"
            )
        kind = data_kind(config)
        if kind not in attack.data_kinds:
            raise ConfigError(
                f"attack.name (sweep point {point.label})",
                f"{spec.attack.name} attacks {'/'.join(attack.data_kinds)} models, "
                f"but model.arch={spec.configs[point.id].model.arch!r} is a {kind} model",
                "choose an attack for this data kind",
            )


# --------------------------------------------------------------------------- writing TOML


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key, ensure_ascii=False)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_key(str(k))} = {toml_value(v)}" for k, v in value.items()) + " }" if value else "{}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def dumps_toml(document: Mapping[str, Any], *, _prefix: str = "") -> str:
    """Write nested tables as TOML: scalars and lists inline, sub-tables as ``[a.b]`` headers (inline inside lists)."""
    lines: list[str] = []
    scalars = {k: v for k, v in document.items() if not isinstance(v, Mapping)}
    tables = {k: v for k, v in document.items() if isinstance(v, Mapping)}
    if _prefix and (scalars or not tables):
        lines.append(f"[{_prefix}]")
    for key, value in scalars.items():
        lines.append(f"{_key(str(key))} = {toml_value(value)}")
    text = "\n".join(lines) + ("\n" if lines else "")
    for key, value in tables.items():
        name = f"{_prefix}.{_key(str(key))}" if _prefix else _key(str(key))
        text += ("\n" if text else "") + dumps_toml(value, _prefix=name)
    return text
