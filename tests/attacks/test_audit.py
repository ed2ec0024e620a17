"""The audit driver and `secure-ffm attack`: cases built from configs, captured runs, outputs, bad input."""

import json

import numpy as np
import pytest

from attacks.audit import AuditCase, audit_config, observe_config, prepare_case
from attacks.base import Budget
from secure_ffm.cli import main
from secure_ffm.config import config_from_dict
from secure_ffm.errors import ConfigError
from secure_ffm.simulation import Simulation, prepare_run


def cnn(**sections):
    raw = {
        "run": {"seed": 0},
        "data": {"dataset": "fashion_mnist", "max_train_examples": 400, "max_test_examples": 100, "num_clients": 8, "partition": "iid"},
        "model": {"arch": "cnn", "finetune": "full"},
        "client": {"batch_size": 1, "local_steps": 1, "lr": 0.1},
        "server": {"rounds": 1},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return config_from_dict(raw)


@pytest.fixture(scope="module")
def prepared():
    return prepare_case(cnn())


def test_plaintext_gradient_observation_is_the_clients_gradient(prepared):
    observation, truth = observe_config(prepared, AuditCase(batch_size=2))
    assert observation.threat_model.observes == "gradient"
    assert truth.inputs["pixels"].shape == (2, 1, 28, 28)
    from attacks.case import batch_gradient
    from secure_ffm.models.base import Batch

    expected = batch_gradient(prepared.model, Batch(truth.inputs, truth.labels))
    for name, value in expected.items():
        np.testing.assert_allclose(observation.observed[name], value, rtol=1e-5, atol=1e-8)


def test_secure_aggregation_observation_is_the_aggregate_of_several_clients(prepared):
    config = cnn(secure_aggregation={"protocol": "masking", "clip_range": 2.0})
    masked = prepare_case(config)
    observation, truth = observe_config(masked, AuditCase(batch_size=1, num_clients=4))
    assert observation.threat_model.observes == "aggregate" and observation.setup.num_clients == 4
    assert len(truth.labels) == 4  # every aggregated client's example counts as leakage if recovered
    plain, _ = observe_config(prepared, AuditCase(batch_size=1))
    differences = [np.max(np.abs(observation.observed[k] - plain.observed[k])) for k in plain.observed]
    assert max(differences) > 1e-3  # the target's own gradient is not what the server sees


def test_dp_sgd_observation_is_clipped_and_noised(prepared):
    noisy = prepare_case(cnn(privacy={"mode": "dp-sgd", "target_epsilon": 1.0, "max_grad_norm": 0.5}))
    observation, _ = observe_config(noisy, AuditCase(batch_size=1))
    plain, _ = observe_config(prepared, AuditCase(batch_size=1))
    norm = lambda arrays: float(np.sqrt(sum(np.sum(v.astype(np.float64) ** 2) for v in arrays.values())))  # noqa: E731
    z = noisy.dp_noise[0]
    params = sum(v.size for v in plain.observed.values())
    # noise N(0, (zC)^2) per coordinate dominates: its norm is about z C sqrt(P)
    assert norm(observation.observed) == pytest.approx(z * 0.5 * np.sqrt(params), rel=0.05)


def test_audit_writes_attack_json_and_picture(prepared, tmp_path):
    result = audit_config(prepared.config, case=AuditCase(batch_size=1), attack="inverting-gradients", budget=Budget(max_iterations=5), out_dir=tmp_path, prepared=prepared)
    document = json.loads((tmp_path / "attack.json").read_text())
    assert document["attack"] == "inverting-gradients" and document["primary_metric"] == "psnr"
    assert document["threat_model"]["observes"] == "gradient" and document["protections"]["privacy"] == "none"
    assert len(document["per_sample"]) == 1 and "psnr" in document["mean"]
    assert (tmp_path / "reconstructions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.iterations <= 5 * 10  # restarts may multiply, but the budget bounds it


def test_cli_attack_from_config_and_from_captured_run(tmp_path, capsys):
    config_path = tmp_path / "attack.toml"
    config_path.write_text(
        cnn().to_toml() + '\n[attack]\nname = "dlg"\niterations = 3\n\n[audit_case]\nbatch_size = 1\n', encoding="utf-8"
    )
    assert main(["attack", str(config_path), "--out", str(tmp_path / "a"), "--quiet"]) == 0
    assert json.loads((tmp_path / "a" / "attack.json").read_text())["attack"] == "dlg"

    run_dir = tmp_path / "run"
    config = cnn(client={"batch_size": 4, "local_steps": 1}, data={"max_train_examples": 64, "num_clients": 16}, audit={"capture_clients": [2], "capture_rounds": [1]})
    Simulation(prepare_run(config), out_dir=run_dir).run()
    code = main(["attack", "--run", str(run_dir), "--attack", "inverting-gradients", "--iterations", "3", "--out", str(tmp_path / "b"), "--quiet"])
    assert code == 0
    document = json.loads((tmp_path / "b" / "attack.json").read_text())
    assert document["threat_model"]["observes"] == "update" and document["protections"]["captured_client"] == 2
    assert len(document["per_sample"]) == 4


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["attack"], "CONFIG"),
        (["attack", "missing.toml"], "does not exist"),
        (["attack", "--run", "nowhere"], "not a run directory"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_unknown_attack_and_case_keys_are_named(tmp_path, capsys):
    config_path = tmp_path / "attack.toml"
    config_path.write_text(cnn().to_toml() + '\n[attack]\nname = "dgl"\n', encoding="utf-8")
    assert main(["attack", str(config_path), "--out", str(tmp_path / "x")]) == 2
    assert "did you mean 'dlg'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="audit_case.batch"):
        AuditCase.from_dict({"batch": 2})


def test_shipped_attack_configs_are_valid():
    import tomllib
    from pathlib import Path

    from attacks.base import build_attack

    paths = sorted(Path(__file__).resolve().parents[2].joinpath("configs").glob("attack_*.toml"))
    assert len(paths) >= 2
    for path in paths:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        attack = raw.pop("attack")
        build_attack(attack["name"], attack.get("settings"))
        AuditCase.from_dict(raw.pop("audit_case", {}))
        config_from_dict(raw)
