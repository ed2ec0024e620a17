"""A loopback federation of real Flower processes: one SuperLink, N SuperNodes, one run, and everything torn down.

:class:`LoopbackFederation` starts ``flower-superlink`` and ``flower-supernode`` processes on free loopback ports with a
temporary ``FLWR_HOME`` (telemetry off, runtime dependency installation off, so it works offline), submits the run with
``flwr run`` and waits for it. By default the federation is what a real one should be: TLS with a fresh test CA
(:mod:`secure_ffm.flower.certs`) and SuperNode authentication (each node's EC P-384 key registered with
``flwr supernode register`` before it starts; an unregistered node is refused by the SuperLink). ``secure=False``
(``secure-ffm deploy --insecure``) drops both, for debugging on loopback only.

Every process starts in its own session; :meth:`LoopbackFederation.stop` (also on an exception or Ctrl-C, as a context
manager) terminates each one's whole process tree - Flower's SuperExec, ``flwr-serverapp`` and ``flwr-clientapp``
children included - and kills what is left after a grace period, so no process and no port outlives it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from secure_ffm.errors import SecureFFMError
from secure_ffm.flower.certs import FederationCertificates, make_certificates
from secure_ffm.run.checkpoint import write_private_bytes

log = logging.getLogger(__name__)

CONNECTION = "secure-ffm-loopback"
"""The SuperLink connection's name in the temporary ``FLWR_HOME/config.toml``."""

APP_PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "secure-ffm-app"
version = "1.0.0"
description = "secure-ffm on Flower: the ServerApp and ClientApp of the installed secure_ffm package"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "secure-ffm"
fab-include = ["pyproject.toml"]

[tool.flwr.app.components]
serverapp = "secure_ffm.flower.app:server_app"
clientapp = "secure_ffm.flower.app:client_app"

[tool.flwr.app.config]
config = ""
set = ""
out = ""
timeout = 600.0
stage-timeout = 0.0
ckks-keys = ""
"""
"""The app Flower ships to the nodes: only this file. Each node imports the ``secure_ffm`` installed on it, never code the
server sends (a FAB that carried the package would let the server run any code on the nodes)."""


class FederationError(SecureFFMError):
    """The loopback federation could not start, or its run failed."""


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 now."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_for_port(port: int, *, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise FederationError(f"the process listening on port {port} exited with code {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise FederationError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def write_node_key(directory: Path, name: str) -> tuple[Path, Path]:
    """A SuperNode's authentication key pair (EC P-384, OpenSSH format, as Flower 1.41 expects): ``(private, public)``."""
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = directory / name, directory / f"{name}.pub"
    write_private_bytes(
        private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    )
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n")
    return private, public


@dataclass
class Node:
    index: int
    node_config: dict[str, Any]
    port: int
    process: subprocess.Popen[bytes] | None = None
    key: tuple[Path, Path] | None = None


def _node_config_arg(values: Mapping[str, Any]) -> str:
    parts = []
    for key, value in values.items():
        parts.append(
            f"{key}={json.dumps(value)}" if isinstance(value, str) else f"{key}={str(value).lower() if isinstance(value, bool) else value}"
        )
    return " ".join(parts)


class LoopbackFederation:
    """SuperLink + SuperNodes on this machine. Use as a context manager; :meth:`run` submits a run and waits for it.

    Parameters
    ----------
    work_dir
        An empty folder for ``FLWR_HOME``, certificates, keys, the app and the processes' logs.
    node_configs
        One ``--node-config`` table per SuperNode (e.g. ``{"partition-id": 0, "num-partitions": 3, "config": path}``).
    secure
        TLS with a test CA and SuperNode authentication (default); False: plaintext and no authentication.
    bin_dir
        Where the Flower executables are (default: beside this Python).
    """

    def __init__(
        self, work_dir: Path, node_configs: Sequence[Mapping[str, Any]], *, secure: bool = True, bin_dir: Path | None = None
    ) -> None:
        self.work_dir = Path(work_dir)
        self.secure = secure
        self.bin_dir = Path(bin_dir) if bin_dir is not None else Path(sys.executable).parent
        self.home = self.work_dir / "flwr_home"
        self.logs = self.work_dir / "logs"
        self.app_dir = self.work_dir / "app"
        self.superlink: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.certificates: FederationCertificates | None = None
        self.nodes = [Node(i, dict(c), 0) for i, c in enumerate(node_configs)]
        self._processes: list[subprocess.Popen[bytes]] = []

    # ------------------------------------------------------------------ environment

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            FLWR_HOME=str(self.home),
            FLWR_TELEMETRY_ENABLED="0",
            PATH=f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}",  # Flower spawns flower-superexec, flwr-*app by name
            HF_HUB_OFFLINE="1",
            HF_DATASETS_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false",
            FLWR_SUPEREXEC_TASK_POLL_INTERVAL="0.1",  # a node's SuperExec looks for new messages every 0.1 s, not every 1 s
        )
        return env

    def _spawn(self, name: str, args: Sequence[str]) -> subprocess.Popen[bytes]:
        out = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - kept open for the process's life
        process = subprocess.Popen(
            [str(self.bin_dir / args[0]), *args[1:]],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=self.env(),
            cwd=self.work_dir,
            start_new_session=True,
        )
        out.close()
        self._processes.append(process)
        return process

    def flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run the ``flwr`` CLI against this federation's SuperLink."""
        return subprocess.run(
            [str(self.bin_dir / "flwr"), *args], env=self.env(), cwd=self.work_dir, capture_output=True, text=True, timeout=timeout
        )

    # ------------------------------------------------------------------ start

    def __enter__(self) -> LoopbackFederation:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        for folder in (self.home, self.logs, self.app_dir):
            folder.mkdir(parents=True, exist_ok=True)
        (self.app_dir / "pyproject.toml").write_text(APP_PYPROJECT)
        ports = free_ports(1 + len(self.nodes))
        self.port = ports[0]
        for node, port in zip(self.nodes, ports[1:], strict=True):
            node.port = port
        connection = [f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]', f'address = "127.0.0.1:{self.port}"']
        superlink_args = ["flower-superlink", "--host", "127.0.0.1", "--port", str(self.port), "--disable-runtime-dependency-installation"]
        if self.secure:
            self.certificates = make_certificates(self.work_dir / "certs")
            c = self.certificates
            superlink_args += ["--ssl-ca-certfile", str(c.ca_certificate), "--ssl-certfile", str(c.server_certificate)]
            superlink_args += ["--ssl-keyfile", str(c.server_key), "--enable-supernode-auth"]
            connection.append(f'root-certificates = "{c.ca_certificate}"')
        else:
            log.warning("the loopback federation runs without TLS and without node authentication (--insecure): for debugging only")
            superlink_args.append("--insecure")
            connection.append("insecure = true")
        (self.home / "config.toml").write_text("\n".join(connection) + "\n")
        self.superlink = self._spawn("superlink", superlink_args)
        wait_for_port(self.port, timeout=60, process=self.superlink)
        if self.secure:
            for node in self.nodes:
                node.key = write_node_key(self.work_dir / "certs", f"node{node.index}")
            # each registration is a `flwr` process (about 3 s of imports here, one after another before): all at once
            with ThreadPoolExecutor(max_workers=max(1, len(self.nodes))) as pool:
                list(pool.map(self.register, [node.key[1] for node in self.nodes if node.key is not None]))
        for node in self.nodes:
            self.start_node(node)

    def register(self, public_key: Path) -> None:
        """Register a SuperNode's public key with the SuperLink (``flwr supernode register``)."""
        done = self.flwr("supernode", "register", str(public_key), CONNECTION)
        if done.returncode != 0:
            raise FederationError(f"flwr supernode register {public_key.name} failed: {(done.stdout + done.stderr).strip()[-400:]}")

    def node_args(self, node: Node, *, private_key: Path | None = None) -> list[str]:
        args = ["flower-supernode", "--superlink", f"127.0.0.1:{self.port}", "--host", "127.0.0.1", "--port", str(node.port)]
        args += ["--node-config", _node_config_arg(node.node_config), "--max-retries", "3"]
        if self.secure:
            assert self.certificates is not None
            args += ["--root-certificates", str(self.certificates.ca_certificate)]
            key = private_key or (node.key[0] if node.key else None)
            if key is not None:
                args += ["--auth-supernode-private-key", str(key)]
        else:
            args.append("--insecure")
        return args

    def start_node(self, node: Node, *, private_key: Path | None = None, name: str | None = None) -> subprocess.Popen[bytes]:
        node.process = self._spawn(name or f"supernode{node.index}", self.node_args(node, private_key=private_key))
        return node.process

    # ------------------------------------------------------------------ run

    def submit(self, run_config: Mapping[str, Any]) -> int:
        """Start a run of the app with ``run_config``; returns its run id."""
        overrides = " ".join(f"{k}={json.dumps(v)}" for k, v in run_config.items())
        done = self.flwr("run", str(self.app_dir), CONNECTION, "--run-config", overrides, "--format", "json")
        try:
            return int(json.loads(done.stdout)["run-id"])
        except (ValueError, KeyError, TypeError):
            raise FederationError(f"flwr run failed: {(done.stdout + done.stderr).strip()[-600:]}") from None

    def _run_row(self, run_id: int) -> dict[str, Any]:
        done = self.flwr("ls", CONNECTION, "--run-id", str(run_id), "--format", "json")
        try:
            return dict(json.loads(done.stdout)["runs"][0])
        except (ValueError, KeyError, TypeError, IndexError):
            raise FederationError(f"flwr ls failed: {(done.stdout + done.stderr).strip()[-600:]}") from None

    def run_info(self, run_id: int) -> dict[str, Any]:
        """What ``flwr ls`` knows about the run: status, its details, network traffic and compute time."""
        return self._run_row(run_id)

    def status(self, run_id: int) -> str:
        """The run's status as ``flwr ls`` reports it (e.g. ``running``, ``finished:completed``, ``finished:failed``)."""
        return str(self._run_row(run_id)["status"])

    def details(self, run_id: int) -> str:
        """What Flower says about the run's end (the ServerApp's exception for ``finished:failed``)."""
        return " ".join(str(self._run_row(run_id).get("status-details", "")).split())

    def check_alive(self) -> None:
        """Raise FederationError when the SuperLink has exited."""
        if self.superlink is not None and self.superlink.poll() is not None:
            raise FederationError(f"the SuperLink exited with code {self.superlink.returncode} (see {self.logs / 'superlink.log'})")

    def wait(self, run_id: int, *, timeout: float, poll: float = 1.0, on_poll: Callable[[], None] | None = None) -> str:
        """Wait until the run finishes; returns its final status (raises FederationError on timeout or a dead SuperLink).

        ``on_poll`` is called at every poll (a progress bar)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if on_poll is not None:
                on_poll()
            self.check_alive()
            status = self.status(run_id)
            if status.startswith("finished"):
                return status
            time.sleep(poll)
        raise FederationError(f"run {run_id} did not finish within {timeout:.0f} s")

    def logs_of(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # ------------------------------------------------------------------ stop

    def kill_node(self, index: int) -> None:
        """SIGKILL a SuperNode and everything it started (a node that really goes away)."""
        process = self.nodes[index].process
        if process is not None:
            _kill_tree(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def stop(self, *, grace: float = 10.0) -> None:
        """Terminate every process this federation started, with its children; SIGKILL what outlives ``grace`` seconds."""
        trees: list[psutil.Process] = []
        for process in reversed(self._processes):  # nodes first, then the SuperLink
            trees.extend(_tree(process.pid))
        for proc in trees:
            try:
                proc.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(trees, timeout=grace)
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
        for process in self._processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                log.error("process %d did not exit", process.pid)
        self._processes.clear()

    def pids(self) -> set[int]:
        """Every live process this federation started, with its descendants (empty after :meth:`stop`)."""
        return {proc.pid for process in self._processes for proc in _tree(process.pid)}


def _tree(pid: int) -> list[psutil.Process]:
    """``pid``, its descendants, and every process of its session (a child whose parent died is reparented out of the
    tree but keeps the session each federation process starts in)."""
    try:
        root = psutil.Process(pid)
        found = {p.pid: p for p in [root, *root.children(recursive=True)]}
    except psutil.NoSuchProcess:
        return []
    for proc in psutil.process_iter():
        try:
            if proc.pid not in found and os.getsid(proc.pid) == pid:
                found[proc.pid] = proc
        except (OSError, psutil.Error):
            continue
    return list(found.values())


def _kill_tree(pid: int, sig: int) -> None:
    for proc in _tree(pid):
        try:
            proc.send_signal(sig)
        except psutil.NoSuchProcess:
            pass
