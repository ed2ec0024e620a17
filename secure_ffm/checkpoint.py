"""Per-round checkpoints: global parameters, server-optimizer state and client states.

A checkpoint is a folder ``checkpoints/round_NNNN/`` written to a temporary name and
renamed into place, so a crash leaves either the previous checkpoint or the new one,
never half of one. Arrays are safetensors; client states are JSON (a later privacy
accountant keeps its ledger there, so ``--resume`` keeps it exact).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.numpy import load_file, save_file

from secure_ffm.wire import NamedArrays

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Checkpoint:
    round: int
    parameters: NamedArrays
    strategy_state: NamedArrays
    client_states: dict[int, dict[str, Any]]
    server_state: dict[str, Any]


def _round_dir(root: Path, round: int) -> Path:
    return root / f"round_{round:04d}"


def save_checkpoint(root: Path, checkpoint: Checkpoint, *, keep: int = 1) -> Path:
    """Write ``checkpoint`` atomically under ``root`` and keep the newest ``keep`` checkpoints."""
    root.mkdir(parents=True, exist_ok=True)
    final = _round_dir(root, checkpoint.round)
    tmp = root / f".tmp_round_{checkpoint.round:04d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(checkpoint.parameters, str(tmp / "global.safetensors"))
    save_file(checkpoint.strategy_state, str(tmp / "strategy.safetensors"))
    state = {
        "format": FORMAT_VERSION,
        "round": checkpoint.round,
        "client_states": {str(k): v for k, v in sorted(checkpoint.client_states.items())},
        "server_state": checkpoint.server_state,
    }
    (tmp / "state.json").write_text(json.dumps(state, indent=1, sort_keys=True), encoding="utf-8")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(root.glob("round_*"))[:-keep]:
        shutil.rmtree(old)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    found = sorted(p for p in root.glob("round_*") if (p / "state.json").is_file())
    return found[-1] if found else None


def load_checkpoint(path: Path) -> Checkpoint:
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    if state.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {state.get('format')} is not {FORMAT_VERSION}")
    return Checkpoint(
        round=int(state["round"]),
        parameters=load_file(str(path / "global.safetensors")),
        strategy_state=load_file(str(path / "strategy.safetensors")),
        client_states={int(k): v for k, v in state["client_states"].items()},
        server_state=state.get("server_state", {}),
    )
