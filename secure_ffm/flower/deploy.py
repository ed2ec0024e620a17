"""``secure-ffm deploy``: a config run on a loopback Flower federation of real processes, into the usual run directory.

One SuperLink and one SuperNode per client (``data.num_clients``) start on free loopback ports
(:class:`~secure_ffm.flower.launch.LoopbackFederation`), with TLS and SuperNode authentication unless ``insecure``. The
resolved config is written once and handed to the server (run config ``config``) and to every node (node config
``config``), so the fingerprints agree; each node holds partition ``k`` of ``num_clients``. The ServerApp writes the run
directory as ``secure-ffm train`` does; the Flower processes' logs are copied into ``OUT/flower-logs/``. Every process
is stopped at the end, on failure and on Ctrl-C.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from secure_ffm.config import Config
from secure_ffm.flower.launch import FederationError, LoopbackFederation
from secure_ffm.run.checkpoint import write_private_bytes
from secure_ffm.run.deployment import check_deployable
from secure_ffm.transports.remote import AUTHORITY_ROLE, SIGNING_KEY, STATE_DIR_KEY

log = logging.getLogger(__name__)

MAX_LOOPBACK_NODES = 64
"""More SuperNodes than this on one machine is not what a loopback federation is for."""


def node_configs(
    config_path: Path,
    num_clients: int,
    key_files: Mapping[str, Path] | None = None,
    node_data: Sequence[Path] | None = None,
    state_root: Path | None = None,
    signing_keys: Path | None = None,
) -> list[dict[str, Any]]:
    """One ``--node-config`` table per SuperNode; ``node_data[k]``: node ``k``'s own data (node config ``data``);
    ``state_root``: where node ``k`` keeps its client's state across restarts (``state_root/node-k``, node config
    ``state-dir``); ``signing_keys``: the folder of ``secure-ffm signing-keys`` (node ``k`` gets ``client-k.key``, node
    config ``signing-key``). With an authority key file (CKKS, ``ckks_key_holder = "authority"``), one more SuperNode
    plays the key authority."""
    key_files = key_files or {}
    keys = {"ckks-keys": str(key_files["clients"])} if "clients" in key_files else {}
    tables = [{"partition-id": k, "num-partitions": num_clients, "config": str(config_path), **keys} for k in range(num_clients)]
    if signing_keys is not None:  # each node its own signing key (masking's signatures)
        for k, table in enumerate(tables):
            table[SIGNING_KEY] = str(Path(signing_keys) / f"client-{k}.key")
    for table, path in zip(tables, node_data or (), strict=False):
        table["data"] = str(Path(path).resolve())
    if state_root is not None:
        for k, table in enumerate(tables):
            table[STATE_DIR_KEY] = str(Path(state_root) / f"node-{k}")
    if "authority" in key_files:
        tables.append({"role": AUTHORITY_ROLE, "config": str(config_path), "ckks-keys": str(key_files["authority"])})
    return tables


def check_node_data_paths(config: Config, node_data: Sequence[Path]) -> None:
    """Refuse (ConfigError on ``--node-data``) a list that does not give every client one existing path."""
    from secure_ffm.errors import ConfigError
    from secure_ffm.run.deployment import check_node_data

    n = config.data.num_clients
    if len(node_data) != n:
        raise ConfigError(
            "--node-data",
            f"gives {len(node_data)} paths for {n} clients (data.num_clients)",
            f"pass --node-data once per client, {n} times",
        )
    missing = [str(p) for p in node_data if not Path(p).expanduser().exists()]
    if missing:
        raise ConfigError("--node-data", f"{', '.join(map(repr, missing))} does not exist", "check the paths")
    check_node_data(config)


def write_key_files(config: Config, directory: Path) -> dict[str, Path] | None:
    """For a protocol that needs one (CKKS), deal a fresh key set: ``{role: file}`` in ``directory`` (``server.ckks``,
    ``clients.ckks`` and, for a key authority, ``authority.ckks``); else None."""
    from secure_ffm.variants import PROTOCOLS

    protocol = PROTOCOLS.get(config.secure_aggregation.protocol).from_config(config.secure_aggregation, seed=config.run.seed)
    if not protocol.needs_key_file:
        return None
    paths = {}
    for role, data in protocol.deal_key_files().items():
        path = paths[role] = directory / f"{role}.ckks"
        write_private_bytes(path, data)
    return paths


def check_loopback(config: Config, node_data: Sequence[Path] | None = None) -> bool:
    """Refuse (ConfigError, naming the key) what a loopback federation cannot run, before anything is written; returns
    whether it makes the signing keys itself (masking's ``signatures`` without a key directory: the loopback federation
    then plays the out-of-band key infrastructure, a key per node and the directory in its work folder)."""
    n = config.data.num_clients
    makes_keys = config.secure_aggregation.signatures and not config.secure_aggregation.peer_keys
    planned = config
    if makes_keys:
        planned = dataclasses.replace(config, secure_aggregation=dataclasses.replace(config.secure_aggregation, peer_keys="(loopback)"))
    check_deployable(planned)
    if node_data:
        check_node_data_paths(config, node_data)
    if n > MAX_LOOPBACK_NODES:
        from secure_ffm.errors import ConfigError

        raise ConfigError(
            "data.num_clients",
            f"{n} clients would start {n} SuperNodes on this machine (at most {MAX_LOOPBACK_NODES} on loopback)",
            "use fewer clients, or run SuperNodes on their own machines (docs/deployment.md)",
        )
    return makes_keys


def deploy(
    config: Config,
    *,
    out_dir: Path,
    secure: bool = True,
    timeout: float = 600.0,
    run_timeout: float = 24 * 3600.0,
    progress: bool = True,
    work_dir: Path | None = None,
    node_data: Sequence[Path] | None = None,
) -> dict[str, Any]:
    """Run ``config`` on a loopback federation; returns the run's summary (``OUT/summary.json``).

    ``node_data``: one path per client, the data each SuperNode holds itself (node config ``data``) instead of a
    partition of ``data.dataset``, which then serves the server alone (its test split, the data schema).

    ``timeout``: seconds the server waits for the replies of one request before it counts a node as gone;
    ``run_timeout``: seconds the whole run may take. Raises FederationError when the run fails."""
    makes_keys = check_loopback(config, node_data)
    n = config.data.num_clients
    out_dir = Path(out_dir).resolve()
    work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="secure-ffm-deploy-"))
    config_path = work / "config.toml"
    work.mkdir(parents=True, exist_ok=True)
    signing_keys = None
    if makes_keys:
        from secure_ffm.secagg.signing import write_signing_keys

        signing_keys = (work / "signing").resolve()
        write_signing_keys(signing_keys, n)
        aggregation = dataclasses.replace(config.secure_aggregation, peer_keys=str(signing_keys / "peer_keys.json"))
        config = dataclasses.replace(config, secure_aggregation=aggregation)
    config_path.write_text(config.to_toml())
    key_files = write_key_files(config, work)
    tables = node_configs(config_path, n, key_files, node_data, state_root=work / "node-state", signing_keys=signing_keys)
    federation = LoopbackFederation(work, tables, secure=secure)
    try:
        with federation:
            log.info(
                "SuperLink on 127.0.0.1:%d with %d SuperNodes (%s)",
                federation.port,
                n,
                "TLS, node authentication" if secure else "insecure",
            )
            run_config: dict[str, Any] = {"config": str(config_path), "out": str(out_dir), "timeout": float(timeout)}
            if key_files is not None:
                run_config["ckks-keys"] = str(key_files["server"])
            run_id = federation.submit(run_config)
            status = _wait_with_progress(federation, run_id, out_dir, rounds=config.server.rounds, timeout=run_timeout, progress=progress)
            if out_dir.exists():  # Flower's own account of the run: status, network traffic, compute time
                (federation.logs / "run.json").write_text(json.dumps(federation.run_info(run_id), indent=1) + "\n")
            if status != "finished:completed":
                raise FederationError(f"the run ended {status}: {federation.details(run_id) or 'see ' + str(out_dir / 'flower-logs')}")
    finally:
        if out_dir.exists():
            shutil.copytree(federation.logs, out_dir / "flower-logs", dirs_exist_ok=True)
        if work_dir is None:
            shutil.rmtree(work, ignore_errors=True)  # the keys and certificates go with it
    return json.loads((out_dir / "summary.json").read_text())


def _wait_with_progress(federation: LoopbackFederation, run_id: int, out_dir: Path, *, rounds: int, timeout: float, progress: bool) -> str:
    """Wait for the run, drawing a rounds bar from the run directory's ``metrics.jsonl`` as the server appends to it."""
    if not progress:
        return federation.wait(run_id, timeout=timeout)
    from tqdm.auto import tqdm

    metrics = out_dir / "metrics.jsonl"
    with tqdm(total=rounds, desc="rounds (deployment)", unit="round") as bar:

        def update() -> None:
            done = sum(1 for line in metrics.read_text().splitlines() if line.strip()) if metrics.exists() else 0
            bar.update(max(0, done - bar.n))

        return federation.wait(run_id, timeout=timeout, on_poll=update)
