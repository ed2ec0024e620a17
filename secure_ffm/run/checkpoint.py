"""Per-round checkpoints, and the atomic file writes every file that ``--resume`` reads goes through.

A checkpoint is a folder ``checkpoints/round_NNNN/`` written to a temporary name, flushed
to disk and renamed into place, so a crash leaves either the previous checkpoint or the
new one, never half of one. The two newest are kept: should the newest still be
unreadable (a disk that lost unflushed data, a copy cut short), ``--resume`` falls back
to the one before. Arrays are safetensors; client states are JSON (a privacy
accountant keeps its ledger there, so ``--resume`` keeps it exact).

A checkpoint holds secrets: each client's 256-bit noise secret (``secure_ffm.privacy.noise``) and the
server's, from which its DP noise, Poisson sampling and noise shares are derived. ``checkpoints/`` and its
folders are therefore owner-only (0o700) and ``state.json`` is created 0o600; a run directory is shared or
published without ``checkpoints/``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from secure_ffm.engine.wire import NamedArrays
from secure_ffm.errors import CheckpointError

FORMAT_VERSION = 1
KEEP = 2
"""Checkpoints kept: the newest and one to fall back to."""
PRIVATE_FOLDER = 0o700
"""Mode of ``checkpoints/`` and of every ``round_NNNN/`` in it: ``state.json`` holds every client's noise secret
(and the server's), with which anyone holding the run's models could recompute the DP noise and subtract it."""


# --------------------------------------------------------------------------- atomic files


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, write: Callable[[Path], None], *, private: bool = False) -> None:
    """Have ``write`` fill a temporary file beside ``path``, flush it, and rename it over ``path``.

    Readers (and a ``--resume`` after a crash) see the old file or the new one, never a torn one. The file gets the
    mode ``open()`` would give it (0o666 less the umask) or, with ``private``, 0o600 (owner only: a file that holds a
    secret), created so from the start, so no other user can open it before its mode is set. A ``write`` that replaces
    the temporary file with a new one (safetensors' ``save_file`` writes a 0o600 file and renames it) still ends with
    that mode.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o666)
    mode = stat.S_IMODE(os.fstat(descriptor).st_mode)
    os.close(descriptor)
    try:
        write(tmp)
        if stat.S_IMODE(tmp.stat().st_mode) != mode:
            os.chmod(tmp, mode)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomically(path: Path, text: str) -> None:
    """``path.write_text(text)`` through a temporary file and a rename."""
    write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_private_bytes(path: Path, data: bytes) -> None:
    """``path.write_bytes(data)`` for a file that holds a secret (a key, a client's noise secret): atomically, and
    readable by its owner only (0o600) from the moment it exists."""
    write_atomically(path, lambda tmp: tmp.write_bytes(data), private=True)


def make_private_folder(path: Path) -> Path:
    """``path`` as a folder readable by its owner only (0o700): created so, and an existing one (an earlier version left
    it with the umask's mode) closed to others."""
    path.mkdir(mode=PRIVATE_FOLDER, parents=True, exist_ok=True)
    os.chmod(path, PRIVATE_FOLDER)
    return path


def write_private_text(path: Path, text: str) -> None:
    """``path.write_text(text)`` atomically, readable by its owner only (0o600) from the moment it exists: for files that
    hold clients' examples (an audit's originals and recovered texts), as :func:`write_private_bytes` for secrets."""
    write_private_bytes(path, text.encode("utf-8"))


def save_private_array(path: Path, array: np.ndarray) -> None:
    """``numpy.save(path, array)`` (no pickle) atomically and owner-only (0o600): an audit's original or reconstructed
    pixels."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, array, allow_pickle=False)

    write_atomically(path, write, private=True)


def append_private_text(path: Path, text: str) -> None:
    """Append ``text`` to ``path``, a file readable by its owner only: created 0o600, and an existing file that an earlier
    version left with the umask's mode is closed to others before anything more is written to it."""
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        if stat.S_IMODE(os.fstat(descriptor).st_mode) != 0o600:
            os.fchmod(descriptor, 0o600)
        with os.fdopen(descriptor, "a", encoding="utf-8") as handle:
            descriptor = -1  # the handle owns it now
            handle.write(text)
            handle.flush()
    finally:
        if descriptor >= 0:
            os.close(descriptor)


def save_arrays_atomically(path: Path, arrays: NamedArrays, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.numpy.save_file`` through a temporary file and a rename."""
    write_atomically(path, lambda tmp: save_file(arrays, str(tmp), metadata=metadata))


# --------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class Checkpoint:
    round: int
    parameters: NamedArrays
    strategy_state: NamedArrays
    client_states: dict[int, dict[str, Any]]
    server_state: dict[str, Any]
    server_arrays: NamedArrays = field(default_factory=dict)
    """Server-side arrays beyond the parameters (a continual method's experts or importances); ``server.safetensors``."""


def _round_dir(root: Path, round: int) -> Path:
    return root / f"round_{round:04d}"


def save_checkpoint(root: Path, checkpoint: Checkpoint, *, keep: int = KEEP) -> Path:
    """Write ``checkpoint`` atomically under ``root`` and keep the newest ``keep`` checkpoints."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    make_private_folder(root)
    final = _round_dir(root, checkpoint.round)
    tmp = root / f".tmp_round_{checkpoint.round:04d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(mode=PRIVATE_FOLDER)
    save_file(checkpoint.parameters, str(tmp / "global.safetensors"))
    save_file(checkpoint.strategy_state, str(tmp / "strategy.safetensors"))
    names = ["global.safetensors", "strategy.safetensors", "state.json"]
    if checkpoint.server_arrays:
        save_file(checkpoint.server_arrays, str(tmp / "server.safetensors"))
        names.append("server.safetensors")
    state = {
        "format": FORMAT_VERSION,
        "round": checkpoint.round,
        "client_states": {str(k): v for k, v in sorted(checkpoint.client_states.items())},
        "server_state": checkpoint.server_state,
        "server_arrays": bool(checkpoint.server_arrays),
    }
    # the clients' and the server's noise secrets: created owner-only, never readable by others for a moment
    descriptor = os.open(tmp / "state.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(state, indent=1, sort_keys=True))
    for name in names:
        _fsync(tmp / name)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    kept = checkpoint_dirs(root)
    for old in kept[keep:]:
        shutil.rmtree(old)
    for folder in kept[1:keep]:  # one an earlier version wrote open to others (a resumed run)
        os.chmod(folder, PRIVATE_FOLDER)
        if (folder / "state.json").is_file():
            os.chmod(folder / "state.json", 0o600)
    return final


def checkpoint_dirs(root: Path) -> list[Path]:
    """The ``round_NNNN`` folders under ``root``, newest first (whether or not they are readable)."""
    if not root.is_dir():
        return []
    found = [p for p in root.glob("round_*") if p.is_dir() and p.name[len("round_") :].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len("round_") :]), reverse=True)


def latest_checkpoint(root: Path) -> Path | None:
    """The newest checkpoint folder under ``root`` (not checked for readability; see :func:`load_checkpoint`)."""
    found = checkpoint_dirs(root)
    return found[0] if found else None


def load_checkpoint(path: Path) -> Checkpoint:
    """Read the checkpoint in ``path``; anything missing, truncated or malformed raises :class:`CheckpointError`."""
    state_path = path / "state.json"
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{state_path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise CheckpointError(f"{state_path} cannot be read: {error}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{state_path} holds a JSON {type(state).__name__}, not a checkpoint's table")
    if state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{state_path}: checkpoint format {state.get('format')!r} is not {FORMAT_VERSION}")
    round = state.get("round")
    expected = path.name[len("round_") :]
    if isinstance(round, bool) or not isinstance(round, int) or round < 1 or (expected.isdigit() and int(expected) != round):
        raise CheckpointError(f"{state_path}: round {round!r} does not match the folder {path.name}")
    client_states = state.get("client_states")
    server_state = state.get("server_state", {})
    if not isinstance(client_states, dict) or not all(k.isdigit() and isinstance(v, dict) for k, v in client_states.items()):
        raise CheckpointError(f"{state_path}: client_states is not a table of client id -> state")
    if not isinstance(server_state, dict):
        raise CheckpointError(f"{state_path}: server_state is not a table")
    arrays = {}
    for name in ("global", "strategy", "server"):
        file = path / f"{name}.safetensors"
        try:
            arrays[name] = load_file(str(file))
        except FileNotFoundError:
            if name == "server" and not state.get("server_arrays"):
                arrays[name] = {}  # only a run with server-side arrays writes it
                continue
            raise CheckpointError(f"{file} is missing") from None
        except (OSError, SafetensorError) as error:
            raise CheckpointError(f"{file} cannot be read: {error}") from None
    return Checkpoint(
        round=round,
        parameters=arrays["global"],
        strategy_state=arrays["strategy"],
        client_states={int(k): v for k, v in client_states.items()},
        server_state=server_state,
        server_arrays=arrays["server"],
    )
