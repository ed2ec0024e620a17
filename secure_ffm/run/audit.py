"""Capturing what the server observed, so that a leakage audit can replay it after training.

The ``[audit]`` section names clients and rounds. For each, the run writes
``observations/round-RRRR-client-KKKK.safetensors`` and a ``.json`` beside it:

- under plaintext aggregation, the client's update as the server received it
  (``observes = "update"``: the weighted delta divided by the weight it sent);
- under secure aggregation (masking, CKKS) the server never sees one client's update,
  so the capture holds only what it learns, the round's aggregate mean
  (``observes = "aggregate"``);
- nothing for a public unit of an FFM schedule (docs/ffm.md): the server trains on its own data and no
  client sends anything; a round of ``capture_rounds`` that turns out public is named in the run log and
  in ``summary.json``'s ``audit.public_rounds``, and auditing it is refused (:func:`refuse_public_round`);
- always the global trainable parameters the client started from (the server knows them),
  the client's training settings, and, under ``ground_truth``, the client's example
  indices: the auditor's key to score reconstructions, never part of the server's view.

Files are safetensors plus JSON (no pickle), as everything else in a run directory.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from secure_ffm.config import Config
from secure_ffm.engine.aggregation import PlaintextAggregation
from secure_ffm.engine.schedule import FEDERATED, PUBLIC
from secure_ffm.engine.wire import ClientMessage, NamedArrays
from secure_ffm.errors import ConfigError
from secure_ffm.run.checkpoint import make_private_folder, write_atomically, write_private_text

log = logging.getLogger(__name__)

OBSERVED_PREFIX = "observed/"
GLOBAL_PREFIX = "global/"


def observation_stem(round: int, client: int) -> str:
    return f"round-{round:04d}-client-{client:04d}"


@dataclass
class CapturedObservation:
    """One capture read back from a run directory."""

    round: int
    client: int
    observes: str
    observed: NamedArrays
    global_parameters: NamedArrays
    metadata: dict[str, Any]

    @property
    def indices(self) -> np.ndarray:
        return np.asarray(self.metadata["ground_truth"]["indices"], dtype=np.int64)


class ObservationRecorder:
    """Writes the captures the ``[audit]`` section asks for (a no-op when it asks for none)."""

    def __init__(self, config: Config, out_dir: Path | None) -> None:
        self.config = config
        self.clients = frozenset(config.audit.capture_clients)
        self.rounds = frozenset(config.audit.capture_rounds)
        self.directory = out_dir / "observations" if out_dir is not None else None

    def wants(self, round: int, client: int) -> bool:
        return self.directory is not None and client in self.clients and (not self.rounds or round in self.rounds)

    def _settings(self, round: int, client: int, indices: np.ndarray, fit_config: Mapping[str, Any], steps: float | None) -> dict[str, Any]:
        c = self.config.client
        return {
            "round": round,
            "client": client,
            "protocol": self.config.secure_aggregation.protocol,
            "privacy": self.config.privacy.mode,
            "defenses": list(self.config.defense.names),
            "num_examples": int(len(indices)),
            "local_epochs": c.local_epochs,
            "local_steps": None if steps is None else int(steps),
            "local_batch_size": c.batch_size,
            "optimizer": c.optimizer,
            "learning_rate": c.lr,
            "fit_config": {k: v for k, v in fit_config.items() if isinstance(v, bool | int | float | str)},
            "ground_truth": {
                "note": "the auditor's key to score reconstructions; not part of the server's view",
                "indices": [int(i) for i in indices],
            },
        }

    def record_message(
        self, message: ClientMessage, *, global_parameters: NamedArrays, indices: np.ndarray, fit_config: Mapping[str, Any]
    ) -> None:
        """Plaintext aggregation: the client's update exactly as the server can read it."""
        if not self.wants(message.round, message.client_id):
            return
        payload = dict(message.payload)
        weight = float(np.asarray(payload.pop(PlaintextAggregation.WEIGHT_KEY)).reshape(-1)[0])
        observed = {
            name: (np.asarray(value, dtype=np.float64) / max(weight, 1e-300)).astype(np.float32)
            for name, value in payload.items()
            if not name.startswith(PlaintextAggregation.STAT_PREFIX) and isinstance(value, np.ndarray)
        }
        settings = self._settings(message.round, message.client_id, indices, fit_config, message.metrics.get("steps"))
        self._write(
            message.round, message.client_id, "update", observed, global_parameters, {**settings, "weight": weight, "num_clients": 1}
        )

    def record_aggregate(
        self,
        round: int,
        mean_delta: NamedArrays,
        *,
        clients: Sequence[int],
        global_parameters: NamedArrays,
        indices: Mapping[int, np.ndarray],
        fit_config: Mapping[str, Any],
        steps: int | None = None,
    ) -> None:
        """Secure aggregation: the aggregate is all the server learns, recorded for every captured participant.
        ``steps``: the local steps behind it, when the mechanism fixes them; else ``client.local_steps`` when the config
        sets a number of steps (local epochs take as many steps as a client's data asks: none is recorded)."""
        steps = steps if steps is not None else (self.config.client.local_steps or None)
        for client in clients:
            if not self.wants(round, client):
                continue
            settings = self._settings(round, client, indices[client], fit_config, steps)
            self._write(
                round,
                client,
                "aggregate",
                mean_delta,
                global_parameters,
                {**settings, "num_clients": len(clients), "aggregated_clients": list(clients)},
            )

    def _write(
        self, round: int, client: int, observes: str, observed: NamedArrays, global_parameters: NamedArrays, metadata: dict[str, Any]
    ) -> None:
        assert self.directory is not None
        # owner-only, like checkpoints/: a capture is a client's update as the server saw it (without DP-FedAvg's server
        # noise, which comes later) and, under ground_truth, the indices of its examples; until 2026-12-07 the folder
        # and the .json files took the umask's mode (0755 / 0644)
        make_private_folder(self.directory)
        stem = observation_stem(round, client)
        arrays = {OBSERVED_PREFIX + k: np.ascontiguousarray(v, dtype=np.float32) for k, v in observed.items()}
        arrays.update({GLOBAL_PREFIX + k: np.ascontiguousarray(v, dtype=np.float32) for k, v in global_parameters.items()})
        write_atomically(self.directory / f"{stem}.safetensors", lambda tmp: save_file(arrays, str(tmp)), private=True)
        write_private_text(self.directory / f"{stem}.json", json.dumps({"observes": observes, **metadata}, indent=1, sort_keys=True))
        log.info("captured the server's view of round %d, client %d (%s)", round, client, observes)


def list_observations(run_dir: Path) -> list[tuple[int, int]]:
    """(round, client) of every capture in a run directory, sorted."""
    found = []
    for path in sorted((Path(run_dir) / "observations").glob("round-*-client-*.json")):
        parts = path.stem.split("-")
        found.append((int(parts[1]), int(parts[3])))
    return found


def round_phases(run_dir: Path) -> dict[int, str]:
    """Each round's phase in ``metrics.jsonl`` (``federated``, or ``public`` for a public unit of an FFM schedule;
    rows without one are federated rounds); unreadable lines are passed over."""
    path = Path(run_dir) / "metrics.jsonl"
    phases: dict[int, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return phases
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("round"), int):
            phases[row["round"]] = str(row.get("phase", FEDERATED))
    return phases


def refuse_public_round(run_dir: Path, round: int | None) -> None:
    """Refuse to audit ``round`` when it was a public unit of an FFM schedule (docs/ffm.md): the server trained on its
    own public data and no client sent anything, so nothing was observed; the error lists the rounds captured."""
    if round is None or round_phases(run_dir).get(round) != PUBLIC:
        return
    captured = sorted({r for r, _ in list_observations(Path(run_dir))})
    raise ConfigError(
        "--round",
        f"round {round} of {run_dir} was a public unit of the FFM schedule: the server trained on its public data and no "
        "client sent anything, so there is no observation to audit",
        f"audit a federated round; captured federated rounds: {', '.join(map(str, captured)) or 'none'}",
    )


def captured_observations(run_dir: Path) -> list[tuple[int, int]]:
    """The ``(round, client)`` captures of ``run_dir``; a run with none is refused (ConfigError naming --run)."""
    available = list_observations(Path(run_dir))
    if not available:
        raise ConfigError(
            "--run",
            f"{run_dir} holds no captured observations",
            "train with e.g. --set audit.capture_clients=[0] --set audit.capture_rounds=[1]",
        )
    return available


def load_observation(run_dir: Path, *, round: int | None = None, client: int | None = None) -> CapturedObservation:
    """Read one capture; with ``round``/``client`` omitted, the first capture matching the others."""
    run_dir = Path(run_dir)
    refuse_public_round(run_dir, round)
    available = captured_observations(run_dir)
    matches = [(r, k) for r, k in available if (round is None or r == round) and (client is None or k == client)]
    if not matches:
        listing = ", ".join(f"round {r} client {k}" for r, k in available[:8])
        raise ConfigError("--round/--client", f"no capture for round {round} client {client} in {run_dir}", f"captured: {listing}")
    r, k = matches[0]
    stem = run_dir / "observations" / observation_stem(r, k)
    try:
        arrays = load_file(str(stem.with_suffix(".safetensors")))
        metadata = json.loads(stem.with_suffix(".json").read_text(encoding="utf-8"))
        observes = str(metadata["observes"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError, SafetensorError) as error:  # a damaged capture
        raise ConfigError(
            "--run",
            f"the capture of round {r} client {k} in {run_dir / 'observations'} cannot be read ({type(error).__name__}: {error!s:.200})",
            "capture it again: train with audit.capture_clients and audit.capture_rounds",
        ) from None
    observed = {name[len(OBSERVED_PREFIX) :]: v for name, v in arrays.items() if name.startswith(OBSERVED_PREFIX)}
    global_parameters = {name[len(GLOBAL_PREFIX) :]: v for name, v in arrays.items() if name.startswith(GLOBAL_PREFIX)}
    return CapturedObservation(r, k, observes, observed, global_parameters, metadata)
