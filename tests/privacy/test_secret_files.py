"""Files that hold a secret are readable by their owner only, from the moment they exist.

A checkpoint's ``state.json`` holds every client's noise secret and the server's: with it and the run's models anyone
can recompute the DP noise of a round and subtract it. It was written with the umask's mode (0o644 here, readable by
every user of a shared machine) while the published ``model.safetensors`` came out 0o600 (safetensors replaces the file
it is given with a 0o600 one): the other way round.
"""

import json
import os

import numpy as np
import pytest
from file_modes import mode  # tests/privacy/file_modes.py (on sys.path under pytest)
from interrupt import InterruptAtRound  # tests/interrupt.py (on sys.path under pytest)

from secure_ffm.config import config_from_dict
from secure_ffm.privacy.noise import CLIENT_SECRET_KEY
from secure_ffm.run.checkpoint import save_arrays_atomically, write_atomically, write_private_bytes
from secure_ffm.run.simulation import Simulation, prepare_run


def config(rounds, privacy):
    return config_from_dict(
        {
            "run": {"seed": 0},
            "data": {"dataset": "digits", "max_train_examples": 200, "max_test_examples": 50, "num_clients": 4, "partition": "iid"},
            "model": {"arch": "cnn", "finetune": "full"},
            "client": {"local_steps": 1, "batch_size": 16, "lr": 0.05},
            "server": {"rounds": rounds},
            "privacy": privacy,
        }
    )


#: DP-FedAvg with the server's noise: the checkpoint holds the server's secret beside the clients'.
SERVER_NOISE = {"mode": "dp-fedavg", "target_epsilon": 8.0, "noise_placement": "server"}


def test_a_checkpoint_keeps_the_clients_and_the_servers_secrets_owner_only(tmp_path, umask_022):
    run = tmp_path / "run"
    Simulation(prepare_run(config(2, SERVER_NOISE)), out_dir=run).run()
    root = run / "checkpoints"
    folders = sorted(root.glob("round_*"))
    assert len(folders) == 2
    state = json.loads((folders[-1] / "state.json").read_text())
    assert all(len(client[CLIENT_SECRET_KEY]) == 64 for client in state["client_states"].values())
    assert len(state["server_state"]["privacy"]["noise_secret"]) == 64
    assert mode(root) == 0o700
    for folder in folders:
        assert mode(folder) == 0o700 and mode(folder / "state.json") == 0o600


def test_the_published_files_get_the_umasks_mode(tmp_path, umask_022):
    run = tmp_path / "run"
    Simulation(prepare_run(config(1, SERVER_NOISE)), out_dir=run).run()
    published = ["config.toml", "metrics.jsonl", "clients.json", "model.safetensors", "privacy.json", "summary.json"]
    assert {name: mode(run / name) for name in published} == dict.fromkeys(published, 0o644)


def test_a_resumed_run_closes_the_checkpoints_an_earlier_version_left_open(tmp_path, umask_022):
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        Simulation(prepare_run(config(2, SERVER_NOISE)), out_dir=run, observer=InterruptAtRound(2)).run()
    root, first = run / "checkpoints", run / "checkpoints" / "round_0001"
    for path, opened in ((root, 0o755), (first, 0o755), (first / "state.json", 0o644)):
        os.chmod(path, opened)  # as written before 2026-12-07
    Simulation(prepare_run(config(2, SERVER_NOISE)), out_dir=run).run(resume=True)
    assert mode(root) == 0o700 and mode(first) == 0o700 and mode(first / "state.json") == 0o600


def test_a_private_file_is_owner_only_while_it_is_written(tmp_path, umask_022):
    seen = []

    def write(tmp):
        seen.append(mode(tmp))  # before a byte of the secret is in it
        tmp.write_bytes(b"secret")

    write_atomically(tmp_path / "key", write, private=True)
    assert seen == [0o600] and mode(tmp_path / "key") == 0o600 and (tmp_path / "key").read_bytes() == b"secret"
    write_private_bytes(tmp_path / "other", b"k")
    assert mode(tmp_path / "other") == 0o600


def test_a_file_replaced_by_its_writer_keeps_the_mode_asked_for(tmp_path, umask_022):
    arrays = {"w": np.zeros(3, dtype=np.float32)}
    save_arrays_atomically(tmp_path / "model.safetensors", arrays)  # safetensors writes a new 0o600 file in its place
    assert mode(tmp_path / "model.safetensors") == 0o644
    write_atomically(tmp_path / "private.safetensors", lambda tmp: save_arrays_atomically(tmp, arrays), private=True)
    assert mode(tmp_path / "private.safetensors") == 0o600


def test_a_failed_private_write_leaves_nothing_behind(tmp_path):
    def fail(tmp):
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(tmp_path / "key", fail, private=True)
    assert list(tmp_path.iterdir()) == []
