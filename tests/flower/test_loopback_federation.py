"""Real Flower processes on loopback: a SuperLink and SuperNodes with TLS and node authentication, run by secure-ffm.

Each test starts its own federation and asserts that nothing it started outlives it (processes and the SuperLink's port).
"""

import json
import socket
import time

import numpy as np
import psutil
import pytest
from digits_cnn import digits_cnn_toml, write_partitions
from safetensors.numpy import load_file

from secure_ffm.config import load_config
from secure_ffm.flower.certs import make_certificates
from secure_ffm.flower.launch import LoopbackFederation, Node, free_ports, write_node_key
from secure_ffm.run.cli import main
from secure_ffm.run.simulation import prepare_run

pytestmark = pytest.mark.slow

DIGITS = digits_cnn_toml()


def port_is_free(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def flower_processes():
    """Flower processes on this machine (their command lines name the executables)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if any(
            name in cmdline for name in ("flower-superlink", "flower-supernode", "flower-superexec", "flwr-clientapp", "flwr-serverapp")
        ):
            found.append(proc.pid)
    return set(found)


def test_deploy_runs_plaintext_on_three_supernodes_holding_their_own_data_equal_to_train(tmp_path):
    """Each SuperNode reads its own file (node config ``data``), holding what partition k holds in-process. One round
    (each costs a poll and a process per node here); the rounds after it are compared with the in-process run, bitwise,
    through the node sessions in tests/flower/test_remote_transport.py."""
    config = tmp_path / "digits.toml"
    config.write_text(digits_cnn_toml(rounds=1))
    before = flower_processes()
    assert main(["train", str(config), "--out", str(tmp_path / "local"), "--quiet"]) == 0
    paths = write_partitions(prepare_run(load_config(config)), tmp_path / "nodes")
    node_data = [arg for k in range(3) for arg in ("--node-data", paths[k])]
    assert main(["deploy", str(config), "--out", str(tmp_path / "deployed"), "--quiet", *node_data]) == 0
    assert flower_processes() <= before  # every process the deployment started is gone
    deployed = tmp_path / "deployed"
    for name in ("config.toml", "metrics.jsonl", "summary.json", "model.safetensors", "clients.json", "checkpoints", "flower-logs"):
        assert (deployed / name).exists(), name
    local, remote = load_file(str(tmp_path / "local" / "model.safetensors")), load_file(str(deployed / "model.safetensors"))
    # the server sums float64 updates in arrival order, which differs between transports: equal to float32 rounding
    # (bitwise in every run so far; masking's ring sums are exact in any order)
    assert local.keys() == remote.keys()
    for key in local:
        np.testing.assert_allclose(remote[key], local[key], rtol=1e-6, atol=1e-7)
    rows = [json.loads(line) for line in (deployed / "metrics.jsonl").read_text().splitlines()]
    assert [r["clients"] for r in rows] == [[0, 1, 2]]


def wait_for_line(path, text, *, after=0, timeout=300):
    """Wait until ``text`` appears in the file at ``path`` past offset ``after``; returns the offset after it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text(errors="replace") if path.exists() else ""
        at = content.find(text, after)
        if at >= 0:
            return at + len(text)
        time.sleep(0.2)
    raise AssertionError(f"{text!r} did not appear in {path}")


def test_masking_survives_a_supernode_killed_after_its_masked_input(tmp_path):
    """Node 2 is killed (SIGKILL, with its processes) after sending its masked input; the two survivors (t = 2) unmask
    the sum of all three. One round: what the next round does without node 2 (the survivors refuse a smaller mask
    graph and the round aborts) is tested through the node sessions in tests/flower/test_remote_transport.py, where it
    costs no stage timeout of real processes."""
    config = tmp_path / "masking.toml"
    config.write_text(digits_cnn_toml(rounds=1) + '[secure_aggregation]\nprotocol = "masking"\nthreshold = 2\n')
    out = tmp_path / "run"
    nodes = [{"partition-id": k, "num-partitions": 3, "config": str(config)} for k in range(3)]
    with LoopbackFederation(tmp_path / "federation", nodes) as federation:
        run_id = federation.submit({"config": str(config), "out": str(out), "timeout": 300.0, "stage-timeout": 30.0})
        log = federation.logs / "supernode2.log"
        wait_for_line(log, "Sent successfully", after=wait_for_line(log, "Sending: train.fit message"))
        federation.kill_node(2)
        status = federation.wait(run_id, timeout=400)
        port = federation.port
    assert status == "finished:completed"
    assert port_is_free(port) and not federation.pids()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["aborted"] is None and rows[0]["clients"] == [0, 1, 2]  # node 2's input counted
    assert rows[0]["test_accuracy"] is not None


def test_an_unregistered_supernode_and_a_node_with_another_ca_are_refused(tmp_path):
    config = tmp_path / "digits.toml"
    config.write_text(DIGITS)
    nodes = [{"partition-id": 0, "num-partitions": 3, "config": str(config)}]
    with LoopbackFederation(tmp_path / "federation", nodes) as federation:
        stranger_key, _ = write_node_key(tmp_path, "stranger")  # never registered
        newcomer = Node(1, {"partition-id": 1, "num-partitions": 3, "config": str(config)}, free_ports(1)[0])
        stranger = federation.start_node(newcomer, private_key=stranger_key, name="stranger")
        assert stranger.wait(timeout=120) != 0
        assert "Failed to activate SuperNode" in federation.logs_of("stranger")
        other_ca = make_certificates(tmp_path / "other-ca")
        args = federation.node_args(Node(2, {"partition-id": 2, "num-partitions": 3, "config": str(config)}, free_ports(1)[0]))
        args[args.index("--root-certificates") + 1] = str(other_ca.ca_certificate)
        impostor = federation._spawn("impostor", args)
        assert impostor.wait(timeout=120) != 0
        assert "CERTIFICATE_VERIFY_FAILED" in federation.logs_of("impostor")
        assert federation.nodes[0].process.poll() is None  # the registered node is unaffected
    assert not federation.pids()
