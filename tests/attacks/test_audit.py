"""The audit driver and `secure-ffm attack`: cases built from configs, captured runs, outputs, bad input."""

import json
import shutil

import numpy as np
import pytest

from attacks.audit import AuditCase, audit_config, observe_config, prepare_case
from attacks.base import Budget
from attacks.text import estimated_gradient
from secure_ffm.config import config_from_dict
from secure_ffm.errors import ConfigError
from secure_ffm.run.cli import main
from secure_ffm.run.simulation import Simulation, prepare_run


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
    # read back from the client's one-step update at learning rate 1 (-delta): exact up to the float32 rounding of
    # the parameters the delta is the difference of (|p| < 1, so under 1e-7)
    for name, value in expected.items():
        np.testing.assert_allclose(observation.observed[name], value, rtol=1e-5, atol=1e-7)


def test_secure_aggregation_observation_is_the_aggregate_of_several_clients(prepared):
    config = cnn(secure_aggregation={"protocol": "masking", "clip_range": 2.0})
    masked = prepare_case(config)
    observation, truth = observe_config(masked, AuditCase(batch_size=1, num_clients=4))
    assert observation.threat_model.observes == "aggregate" and observation.setup.num_clients == 4
    assert len(truth.labels) == 4  # every aggregated client's example counts as leakage if recovered
    plain, _ = observe_config(prepared, AuditCase(batch_size=1))
    differences = [np.max(np.abs(observation.observed[k] - plain.observed[k])) for k in plain.observed]
    assert max(differences) > 1e-3  # the target's own gradient is not what the server sees


def test_a_secure_aggregate_is_read_by_every_attack_as_the_mean_gradient_of_all_examples_in_the_sum():
    # until 2026-12-07 the aggregate of one-step audits was stored as the gradient but read as a delta: every attack
    # matched -gradient / lr (sign flipped, 1/lr too large) and iDLG's labels came out wrong
    from attacks.case import batch_gradient
    from attacks.labels import infer_labels
    from attacks.objectives import matching_target
    from secure_ffm.models.base import Batch

    masked = prepare_case(cnn(secure_aggregation={"protocol": "masking", "clip_range": 2.0}))
    observation, truth = observe_config(masked, AuditCase(batch_size=1, num_clients=3))
    assert observation.threat_model.observes == "aggregate" and observation.setup.num_examples == 3  # every example in the sum
    assert observation.labels is None and len(truth.labels) == 3
    masked.model.set_trainable(observation.parameters)
    union = batch_gradient(masked.model, Batch(truth.inputs, truth.labels))
    # within the masking's fixed-point quantization (about 1e-5 a coordinate here)
    for read in (estimated_gradient(observation), matching_target(observation, local_steps=False)):
        for name, value in union.items():
            np.testing.assert_allclose(read[name].numpy(), value, atol=1e-4)
    assert sorted(infer_labels(observation).tolist()) == sorted(truth.labels.tolist())


@pytest.mark.parametrize(("lr", "rate"), [(0.1, 1.0), (4.0, 4.0)])
def test_a_defense_that_acts_on_the_updates_scale_sees_an_update_at_least_as_large_as_the_clients(prepared, lr, rate):
    # the gradient is observed as a one-step update at learning rate max(1, lr): clipping it never makes the audited
    # signal smaller than the client's own update would be (at lr = 4 the update is 4 g; until 2026-12-07 the audit
    # clipped g and so understated what a server sees through the clip)
    plain, _ = observe_config(prepared, AuditCase(batch_size=2))
    norm = lambda arrays: float(np.sqrt(sum(np.sum(np.asarray(v, dtype=np.float64) ** 2) for v in arrays.values())))  # noqa: E731
    clip = 0.5 * norm(plain.observed)  # at rate 1 the update (the gradient) is clipped to half its norm
    clipped = prepare_case(cnn(client={"batch_size": 2, "lr": lr}, defense={"names": ["l2-clip"], "clip_norm": clip}))
    observation, _ = observe_config(clipped, AuditCase(batch_size=2))
    assert norm(observation.observed) == pytest.approx(clip / rate, rel=1e-4)  # the update clipped to clip, read back / rate


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
    result = audit_config(
        prepared.config,
        case=AuditCase(batch_size=1),
        attack="inverting-gradients",
        budget=Budget(max_iterations=5),
        out_dir=tmp_path,
        prepared=prepared,
    )
    document = json.loads((tmp_path / "attack.json").read_text())
    assert document["attack"] == "inverting-gradients" and document["primary_metric"] == "psnr"
    assert document["threat_model"]["observes"] == "gradient" and document["protections"]["privacy"] == "none"
    assert len(document["per_sample"]) == 1 and "psnr" in document["mean"]
    assert (tmp_path / "reconstructions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.iterations <= 5 * 10  # restarts may multiply, but the budget bounds it


def test_cli_attack_from_config_and_from_captured_run(tmp_path, capsys):
    config_path = tmp_path / "attack.toml"
    config_path.write_text(cnn().to_toml() + '\n[attack]\nname = "dlg"\niterations = 3\n\n[audit_case]\nbatch_size = 1\n', encoding="utf-8")
    assert main(["attack", str(config_path), "--out", str(tmp_path / "a"), "--quiet"]) == 0
    assert json.loads((tmp_path / "a" / "attack.json").read_text())["attack"] == "dlg"

    run_dir = tmp_path / "run"
    config = cnn(
        client={"batch_size": 4, "local_steps": 1},
        data={"max_train_examples": 64, "num_clients": 16},
        audit={"capture_clients": [2], "capture_rounds": [1]},
    )
    Simulation(prepare_run(config), out_dir=run_dir).run()
    code = main(
        ["attack", "--run", str(run_dir), "--attack", "inverting-gradients", "--iterations", "3", "--out", str(tmp_path / "b"), "--quiet"]
    )
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


# --------------------------------------------------------------------------- `secure-ffm attack` as users run it (issue 12)


def attack_config(tmp_path, extra=""):
    path = tmp_path / "attack.toml"
    path.write_text(cnn().to_toml() + '\n[attack]\nname = "inverting-gradients"\niterations = 2\n' + extra, encoding="utf-8")
    return str(path)


def run_cli(tmp_path, *flags):
    out = tmp_path / "out"
    assert main(["attack", attack_config(tmp_path), "--out", str(out), "--quiet", *flags]) == 0
    return json.loads((out / "attack.json").read_text())


def test_client_flag_attacks_that_client(tmp_path, prepared):
    document = run_cli(tmp_path, "--client", "3")
    (audit,) = document["audits"]
    assert audit["client"] == 3
    assert set(audit["indices"]) <= set(prepared.client_indices[3].tolist())


def test_knows_labels_flag_gives_the_attack_the_labels(tmp_path):
    document = run_cli(tmp_path, "--knows-labels")
    assert document["threat_model"]["knows_labels"] is True


def test_clients_and_samples_attack_every_batch_with_the_model_loaded_once(tmp_path, monkeypatch, capsys):
    import attacks.audit

    loads = []
    real = attacks.audit.prepare_case
    monkeypatch.setattr(attacks.audit, "prepare_case", lambda config, **kw: loads.append(1) or real(config, **kw))
    document = run_cli(tmp_path, "--clients", "0,3", "--samples", "2")
    assert len(loads) == 1
    assert [(a["client"], a["sample"]) for a in document["audits"]] == [(0, 0), (0, 1), (3, 0), (3, 1)]
    assert not set(document["audits"][0]["indices"]) & set(document["audits"][1]["indices"])  # disjoint batches
    psnrs = [a["mean"]["psnr"] for a in document["audits"]]
    assert document["mean"]["psnr"] == pytest.approx(np.mean(psnrs))
    assert len(document["per_sample"]) == 4 and {s["client"] for s in document["per_sample"]} == {0, 3}
    interval = document["interval"]
    assert interval["method"] == "Student t" and interval["level"] == 0.95 and interval["n"] == 4
    low, high = interval["bounds"]["psnr"]
    assert low < document["mean"]["psnr"] < high
    assert (tmp_path / "out" / "client-3-sample-1" / "reconstructions.png").is_file()
    printed = capsys.readouterr().out
    assert (
        "95% CI" in printed
        and "Student t" in printed
        and len([line for line in printed.splitlines() if line.lstrip().startswith(("0 ", "3 "))]) == 4
    )


def test_attack_config_clients_and_samples_keys_take_effect(tmp_path):
    path = tmp_path / "attack.toml"
    path.write_text(cnn().to_toml() + '\n[attack]\nname = "dlg"\niterations = 2\nclients = [5]\nsamples = 2\n', encoding="utf-8")
    assert main(["attack", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    document = json.loads((tmp_path / "out" / "attack.json").read_text())
    assert [(a["client"], a["sample"]) for a in document["audits"]] == [(5, 0), (5, 1)]


def test_t_interval_has_the_textbook_value():
    from attacks.audit import t_interval

    low, high = t_interval([1.0, 2.0, 3.0, 4.0])  # 2.5 -+ t(0.975, 3) * s / 2 = 2.5 -+ 3.1824 * 1.2910 / 2
    assert low == pytest.approx(0.4457, abs=1e-4) and high == pytest.approx(4.5543, abs=1e-4)
    assert t_interval([3.0]) is None


def test_a_time_budget_that_cuts_the_attack_short_is_warned_and_recorded(prepared, caplog):
    with caplog.at_level("WARNING", logger="attacks.audit"):
        result = audit_config(
            prepared.config,
            case=AuditCase(),
            attack="inverting-gradients",
            budget=Budget(max_iterations=50, max_seconds=1e-9),
            prepared=prepared,
        )
    assert result.budget["stopped_by"] == "time" and result.budget["iterations_reached"] < 50 and result.budget["max_iterations"] == 50
    assert "stopped by its time budget" in caplog.text


def test_an_attack_that_spends_its_iterations_is_not_warned(prepared, caplog):
    with caplog.at_level("WARNING", logger="attacks.audit"):
        result = audit_config(prepared.config, case=AuditCase(), attack="dlg", budget=Budget(max_iterations=2), prepared=prepared)
    assert result.budget == {"max_iterations": 2, "max_seconds": 0.0, "iterations_reached": 2, "stopped_by": "iterations"}
    assert "time budget" not in caplog.text


def test_run_threads_sets_torch_threads(monkeypatch):
    import torch

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    prepare_case(cnn(run={"threads": 3}))
    assert calls == [3]


def test_relative_data_path_error_says_where_it_resolved_from(tmp_path, capsys):
    import os

    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "reviews.csv").write_text("text,label\n", encoding="utf-8")
    path = folder / "attack.toml"
    path.write_text(cnn(data={"dataset": "reviews.csv"}).to_toml(), encoding="utf-8")
    assert main(["attack", str(path), "--out", str(tmp_path / "out")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "'reviews.csv'" in line and f"current directory {os.getcwd()}" in line and str(folder / "reviews.csv") in line


@pytest.mark.parametrize(
    ("flags", "extra", "message"),
    [
        (["--round", "1"], "", "--round: only applies with --run"),
        (["--client", "1", "--clients", "2,3"], "", "--client: given together with --clients"),
        (["--clients", "1,1"], "", "--clients: client 1 is listed twice"),
        (["--clients", "0,a"], "", "not a comma-separated list"),
        (["--samples", "0"], "", "--samples: must be at least 1"),
        (["--iterations", "0"], "", "--iterations: must be at least 1"),
        (["--seconds", "-1"], "", "--seconds: must be >= 0"),
        ([], 'seed = "x"\n', "attack.seed: must be a whole number"),
        ([], "seed = -1\n", "attack.seed: must be a whole number in [0, 2^63), got -1"),  # a traceback before
        ([], "samples = 0\n", "attack.samples: must be a whole number >= 1"),
        (["--clients", "0,99"], "", "client 99 does not exist"),
    ],
)
def test_attack_flags_and_keys_that_cannot_apply_are_refused_in_one_line(tmp_path, capsys, flags, extra, message):
    assert main(["attack", attack_config(tmp_path, extra), "--out", str(tmp_path / "out"), "--quiet", *flags]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert message in line
    assert not (tmp_path / "out").exists()


def test_samples_is_refused_when_replaying_a_capture(capsys):
    assert main(["attack", "--run", "nowhere", "--samples", "2"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "--samples: does not apply with --run" in line


def test_clients_flag_replays_every_named_capture_of_a_run(tmp_path):
    run_dir = tmp_path / "run"
    config = cnn(
        client={"batch_size": 2, "local_steps": 1},
        data={"max_train_examples": 64, "num_clients": 16},
        audit={"capture_clients": [2, 5], "capture_rounds": [1]},
    )
    Simulation(prepare_run(config), out_dir=run_dir).run()
    assert (
        main(
            [
                "attack",
                "--run",
                str(run_dir),
                "--clients",
                "5,2",
                "--attack",
                "dlg",
                "--iterations",
                "2",
                "--out",
                str(tmp_path / "b"),
                "--quiet",
            ]
        )
        == 0
    )
    document = json.loads((tmp_path / "b" / "attack.json").read_text())
    assert [a["client"] for a in document["audits"]] == [5, 2] and document["interval"]["n"] == 2
    assert (tmp_path / "b" / "client-5" / "attack.json").is_file()


def test_the_audit_observes_one_round_of_the_engine_with_the_protocols_stages(monkeypatch):
    from secure_ffm.engine.orchestrator import RoundOrchestrator

    rows = []
    run_round = RoundOrchestrator.run_round

    def spy(self, round, *, participants=None):
        rows.append(run_round(self, round, participants=participants))
        return rows[-1]

    monkeypatch.setattr(RoundOrchestrator, "run_round", spy)
    masked = prepare_case(cnn(secure_aggregation={"protocol": "masking", "clip_range": 2.0}))
    observe_config(masked, AuditCase(client=2, batch_size=1, num_clients=3))
    (row,) = rows
    assert row["clients"] == [0, 1, 2] and row["num_examples"] == 3  # each participant's data is its audit batch
    assert row["aggregate_unmask_seconds"] > 0  # masking's unmask stage ran between the server and client halves


def test_the_audit_takes_dp_sgd_steps_with_the_engines_dp_step(monkeypatch):
    from secure_ffm.privacy.dp_sgd import DPStep

    calls = []
    step = DPStep.step

    def spy(self, batch, **kwargs):
        calls.append(len(batch))
        return step(self, batch, **kwargs)

    monkeypatch.setattr(DPStep, "step", spy)
    noisy = prepare_case(cnn(privacy={"mode": "dp-sgd", "target_epsilon": 8.0, "max_grad_norm": 1.0}))
    observe_config(noisy, AuditCase(batch_size=4, observes="update", local_steps=3, local_batch_size=2))
    assert calls == [2, 2, 2]  # local_steps steps of local_batch_size examples, each a DPStep


# --------------------------------------------------------------------------- distributed DP-SGD's replay


def _distributed(epsilon: float):
    return prepare_case(
        cnn(
            privacy={"mode": "distributed-dp-sgd", "target_epsilon": epsilon, "max_grad_norm": 1.0},
            secure_aggregation={"protocol": "masking"},
        )
    )


def _clipped_mean_and_residual(prepared, observation, truth, clip: float):
    """The participants' mean clipped per-example gradient, computed directly, and the observation minus it."""
    from attacks.case import batch_gradient
    from secure_ffm.models.base import Batch

    prepared.model.set_trainable(observation.parameters)
    total = None
    for i in range(len(truth.labels)):
        one = Batch({k: v[i : i + 1] for k, v in truth.inputs.items()}, truth.labels[i : i + 1])
        grads = {k: v.astype(np.float64) for k, v in batch_gradient(prepared.model, one).items()}
        scale = min(1.0, clip / float(np.sqrt(sum(np.sum(g**2) for g in grads.values()))))
        total = {k: scale * g + (0 if total is None else total[k]) for k, g in grads.items()}
    mean = {k: v / len(truth.labels) for k, v in total.items()}
    seen = estimated_gradient(observation)  # the gradient every attack reads the observation as
    residual = {k: seen[k].numpy().astype(np.float64) - mean[k] for k in mean}
    return mean, residual


def test_distributed_dp_sgd_is_audited_as_the_noisy_mean_of_the_clipped_gradients():
    prepared = _distributed(epsilon=3.0)
    # 5 clients: the config's rounds of 8 size each share for a majority, 5 (a smaller round is refused: next test)
    observation, truth = observe_config(prepared, AuditCase(batch_size=2, num_clients=5))
    assert observation.threat_model.observes == "aggregate" and len(truth.labels) == 10  # 5 clients x 2 examples
    mean, residual = _clipped_mean_and_residual(prepared, observation, truth, clip=1.0)
    size = sum(v.size for v in mean.values())
    geometry = prepared.mechanism.discrete_geometry(size)
    # 5 discrete shares of sigma_share integer units, each unit gamma, on the sum of 10 examples: the noise on the mean
    expected = np.sqrt(5) * geometry.share_sigma * geometry.granularity * np.sqrt(size) / 10
    assert float(np.sqrt(sum(np.sum(r**2) for r in residual.values()))) == pytest.approx(expected, rel=0.05)


def test_an_audited_round_smaller_than_the_noise_shares_are_sized_for_names_the_key():
    with pytest.raises(ConfigError, match="audit_case.num_clients: the audited round of 4 clients aborted"):
        observe_config(_distributed(epsilon=3.0), AuditCase(batch_size=2, num_clients=4))


def test_distributed_dp_sgd_replay_without_noise_to_speak_of_is_the_clipped_mean():
    prepared = _distributed(epsilon=1e9)
    observation, truth = observe_config(prepared, AuditCase(batch_size=2, num_clients=5))
    mean, residual = _clipped_mean_and_residual(prepared, observation, truth, clip=1.0)
    norm = lambda arrays: float(np.sqrt(sum(np.sum(v**2) for v in arrays.values())))  # noqa: E731
    assert norm(residual) < 0.05 * norm(mean)


def test_discrete_shares_are_observed_in_real_units_not_the_rings_integers():
    # DP-FedAvg's discrete noise shares under masking: the protocol sums integers, the server reads them times γ
    config = cnn(privacy={"mode": "dp-fedavg", "target_epsilon": 8.0, "clip_norm": 0.5}, secure_aggregation={"protocol": "masking"})
    prepared = prepare_case(config)
    observation, _ = observe_config(prepared, AuditCase(batch_size=1, num_clients=4))
    size = sum(v.size for v in observation.observed.values())
    noise_std = prepared.mechanism.noise_multiplier * 0.5 / 4  # the mean of 4 clipped updates carries the full noise z C
    norm = float(np.sqrt(sum(np.sum(v.astype(np.float64) ** 2) for v in observation.observed.values())))
    assert norm < 2 * (noise_std * np.sqrt(size) + 0.5)  # the noise and at most one clip norm, not ~1e6 integer units


@pytest.fixture(scope="module")
def captured_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("captured") / "run"
    config = cnn(
        client={"batch_size": 2}, data={"max_train_examples": 64, "num_clients": 4}, audit={"capture_clients": [0], "capture_rounds": [1]}
    )
    Simulation(prepare_run(config), out_dir=run_dir).run()
    return run_dir


@pytest.mark.parametrize(
    ("suffix", "damage", "problem"),
    [
        (".json", b"{not json", "JSONDecodeError"),
        (".json", b"[" * 100_000 + b"]" * 100_000, "RecursionError"),
        (".json", b'{"x": 1}', "KeyError: 'observes'"),
        (".safetensors", b"\x00" * 10, "SafetensorError"),
    ],
    ids=["not-json", "nested-too-deeply", "no-observes", "cut-arrays"],
)
def test_a_damaged_capture_is_refused_in_one_line(tmp_path, capsys, captured_run, suffix, damage, problem):
    """Each of these ended ``secure-ffm attack --run`` with a traceback."""
    run_dir = tmp_path / "run"
    shutil.copytree(captured_run, run_dir)
    (path,) = (run_dir / "observations").glob(f"*{suffix}")
    path.write_bytes(damage)
    assert main(["attack", "--run", str(run_dir), "--iterations", "2", "--out", str(tmp_path / "out"), "--quiet"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "--run: the capture of round 1 client 0" in line and problem in line
    assert not (tmp_path / "out").exists()


def test_a_gradient_audit_observes_the_whole_batch_whatever_the_local_batch_size(prepared):
    # a gradient audit with audit_case.local_batch_size trained on its first minibatch only, labelled as the batch
    from attacks.case import batch_gradient
    from secure_ffm.models.base import Batch

    observation, truth = observe_config(prepared, AuditCase(batch_size=2, local_batch_size=1))
    assert observation.setup.local_batch_size == 0
    expected = batch_gradient(prepared.model, Batch(truth.inputs, truth.labels))
    for name, value in expected.items():
        np.testing.assert_allclose(observation.observed[name], value, rtol=1e-4, atol=1e-6)


def test_a_secure_multi_step_audit_is_matched_as_the_targets_own_steps():
    # several local steps are each client's own: only one full-batch step makes the sum one batch of every example
    masked = prepare_case(cnn(secure_aggregation={"protocol": "masking", "clip_range": 2.0}))
    observation, truth = observe_config(
        masked, AuditCase(batch_size=2, num_clients=2, observes="update", local_steps=2, local_batch_size=1)
    )
    assert observation.threat_model.observes == "aggregate" and observation.setup.num_examples == 2
    assert len(truth.labels) == 4  # every aggregated example still counts as leakage when recovered
