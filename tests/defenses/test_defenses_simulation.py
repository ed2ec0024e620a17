"""Defenses in a real federated run (tiny CNN on Fashion-MNIST) and the validation of ``defense.names``."""

from __future__ import annotations

import math

import numpy as np
import pytest

from secure_ffm.config import config_from_dict
from secure_ffm.engine.orchestrator import RoundHooks
from secure_ffm.errors import ConfigError
from secure_ffm.run.cli import main
from secure_ffm.run.simulation import Simulation, prepare_run


def cnn_config(**defense):
    return config_from_dict(
        {
            "run": {"seed": 3, "name": "defended-cnn"},
            "data": {"dataset": "fashion_mnist", "max_train_examples": 600, "max_test_examples": 200, "num_clients": 4, "partition": "iid"},
            "model": {"arch": "cnn", "finetune": "full"},
            "client": {"local_steps": 4, "batch_size": 32, "lr": 0.05, "momentum": 0.9},
            "server": {"rounds": 1, "clients_per_round": 3},
            "defense": defense,
        }
    )


def run_and_capture(config, tmp_path):
    """Run; return the summary and the messages the server received (the plaintext payloads)."""
    received = []

    class Received(RoundHooks):
        def message_received(self, round, message, instructions):
            received.append(message)

    simulation = Simulation(prepare_run(config), out_dir=tmp_path / "run", hooks=[Received()])
    return simulation.run(), received


def test_server_receives_pruned_updates(tmp_path):
    summary, received = run_and_capture(cnn_config(names=["prune"], prune_fraction=0.9), tmp_path)
    assert len(received) == 3
    for message in received:
        for name, array in message.payload.items():
            if name.startswith("__"):  # the weight, not a parameter
                continue
            assert np.count_nonzero(array) <= array.size - math.floor(0.9 * array.size), name
        assert np.count_nonzero(message.payload["conv1.weight"]) > 0
    assert math.isfinite(summary["final"]["test_loss"])


def test_server_receives_soteria_updates_and_the_model_still_learns(tmp_path):
    summary, received = run_and_capture(cnn_config(names=["soteria"], soteria_fraction=0.5), tmp_path / "soteria")
    _, plain = run_and_capture(cnn_config(), tmp_path / "plain")
    assert len(received) == len(plain) == 3
    for message, baseline in zip(received, plain, strict=True):
        head, plain_head = message.payload["head.weight"], baseline.payload["head.weight"]
        zeroed = np.flatnonzero(~head.any(axis=0) & plain_head.any(axis=0))
        assert len(zeroed) >= 60  # of the 64 chosen columns, a few may be zero anyway (dead ReLU units)
        kept = head.any(axis=0)
        np.testing.assert_array_equal(head[:, kept], plain_head[:, kept])
        for name in ("conv1.weight", "conv2.weight", "fc.weight", "fc.bias", "head.bias"):
            np.testing.assert_array_equal(message.payload[name], baseline.payload[name], err_msg=name)
    assert summary["final"]["test_accuracy"] > 0.2  # chance is 0.1; one round of 3 clients x 4 steps


def test_several_defenses_compose_in_one_run(tmp_path):
    summary, received = run_and_capture(
        cnn_config(names=["soteria", "prune", "l2-clip", "quantize"], prune_fraction=0.5, clip_norm=0.5, quantize_bits=1), tmp_path
    )
    for message in received:
        arrays = {k: v for k, v in message.payload.items() if not k.startswith("__")}
        weight = float(message.payload["__weight__"][0])
        assert all(len(np.unique(np.abs(a))) <= 2 for a in arrays.values())  # sign x scale, zeros kept
        assert all(np.count_nonzero(a) <= a.size - a.size // 2 for a in arrays.values())
        assert np.count_nonzero(~arrays["head.weight"].any(axis=0)) >= 64
        assert math.isfinite(weight)
    assert math.isfinite(summary["final"]["test_loss"])


def test_unknown_defense_name_is_a_config_error_with_the_nearest_name(tmp_path):
    with pytest.raises(ConfigError, match=r"defense.names: unknown update transform 'prun' \(did you mean 'prune'\?\)"):
        Simulation(prepare_run(cnn_config(names=["prun"])), out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_cli_rejects_an_unknown_defense_with_exit_2_and_writes_nothing(tmp_path, capsys):
    config = tmp_path / "tiny.toml"
    config.write_text(
        '[data]\ndataset = "fashion_mnist"\nmax_train_examples = 200\nmax_test_examples = 100\nnum_clients = 2\n'
        '[model]\narch = "cnn"\nfinetune = "full"\n[client]\nlocal_steps = 1\n[server]\nrounds = 1\n'
    )
    out = tmp_path / "run"
    code = main(["train", str(config), "--set", 'defense.names=["sotera"]', "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == "secure-ffm train: error: defense.names: unknown update transform 'sotera' (did you mean 'soteria'?)"
    assert not out.exists()


@pytest.mark.parametrize(
    ("key", "value"), [("soteria_examples", 0), ("soteria_fraction", 1.0), ("prune_fraction", 1.0), ("quantize_bits", 0)]
)
def test_bad_defense_settings_are_config_errors_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=rf"^defense\.{key}: "):
        cnn_config(**{key: value})
