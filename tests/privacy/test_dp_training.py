"""Federated training under DP-SGD and DP-FedAvg on real data subsets."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from secure_ffm.config import config_from_dict
from secure_ffm.errors import ConfigError
from secure_ffm.privacy.accounting import dp_fedavg_epsilon
from secure_ffm.run.cli import main
from secure_ffm.run.simulation import RunObserver, Simulation, prepare_run, without_timings


def cnn(privacy, **sections):
    raw = {
        "run": {"seed": 1},
        "data": {"dataset": "fashion_mnist", "max_train_examples": 1200, "max_test_examples": 300, "num_clients": 4, "alpha": 1.0},
        "model": {"arch": "cnn", "finetune": "full"},
        "client": {"local_steps": 4, "batch_size": 32, "lr": 0.5},
        "server": {"rounds": 3},
        "privacy": privacy,
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return config_from_dict(raw)


def read(run_dir, name):
    return json.loads((run_dir / name).read_text())


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_every_client_reaches_but_never_exceeds_its_budget(tmp_path):
    Simulation(prepare_run(cnn({"mode": "dp-sgd", "target_epsilon": 4.0})), out_dir=tmp_path / "run").run()
    ledger = read(tmp_path / "run", "privacy.json")
    assert ledger["mechanism"] == "dp-sgd" and ledger["accountant"] == "prv"
    for client in ledger["clients"]:
        assert client["rounds"] == 3  # full participation
        assert 0.95 * 4.0 <= client["epsilon"] <= 4.0, client
        assert client["delta"] < 1 / client["num_examples"]
    rows = metrics(tmp_path / "run")
    assert [r["epsilon_max"] <= 4.0 for r in rows] == [True, True, True]
    assert rows[0]["epsilon_max"] < rows[1]["epsilon_max"] < rows[2]["epsilon_max"]


def test_client_whose_budget_is_spent_is_skipped(tmp_path):
    # budgeted for 2 rounds, sampled in up to 4: a client stops once its budget is spent
    config = cnn({"mode": "dp-sgd", "target_epsilon": 2.0, "planned_rounds": 2}, server={"rounds": 4})
    Simulation(prepare_run(config), out_dir=tmp_path / "run").run()
    rows = metrics(tmp_path / "run")
    assert rows[2]["skipped_clients"] == [0, 1, 2, 3] and rows[3]["clients"] == []
    ledger = read(tmp_path / "run", "privacy.json")
    assert all(c["rounds"] == 2 and c["epsilon"] <= 2.0 for c in ledger["clients"])


class StopAfter(RunObserver):
    def round_finished(self, round, metrics):
        if round == 2:
            raise KeyboardInterrupt


RESUMED_PRIVACY = [
    {"mode": "dp-sgd", "target_epsilon": 3.0},
    {"mode": "dp-fedavg", "target_epsilon": 3.0, "adaptive_clipping": True, "clipped_count_stddev": 2.0},
    {"mode": "dp-fedavg", "target_epsilon": 3.0, "noise_placement": "clients"},
]


@pytest.mark.parametrize("privacy", RESUMED_PRIVACY)
def test_resume_keeps_the_privacy_ledger_exact(tmp_path, privacy):
    # reproducible noise (research opt-in): a resumed run equals an uninterrupted one
    config = cnn(
        {**privacy, "reproducible_noise": True, "accountant": "rdp"},
        data={"num_clients": 6, "max_test_examples": 100},
        client={"lr": 0.05, "local_steps": 2},
        server={"rounds": 4, "clients_per_round": 3},
    )
    Simulation(prepare_run(config), out_dir=tmp_path / "full").run()
    with pytest.raises(KeyboardInterrupt):
        Simulation(prepare_run(config), out_dir=tmp_path / "cut", observer=StopAfter()).run()
    Simulation(prepare_run(config), out_dir=tmp_path / "cut").run(resume=True)
    assert read(tmp_path / "full", "privacy.json") == read(tmp_path / "cut", "privacy.json")
    assert [without_timings(r) for r in metrics(tmp_path / "full")] == [without_timings(r) for r in metrics(tmp_path / "cut")]


@pytest.mark.parametrize("privacy", RESUMED_PRIVACY)
def test_resume_draws_the_secret_noise_the_checkpoint_holds(tmp_path, privacy):
    # secret noise: two resumes of one checkpoint agree exactly (the secrets come back from the checkpoint),
    # while an independent run of the same config differs (its secrets are new)
    import shutil

    config = cnn(
        {**privacy, "accountant": "rdp"},
        data={"num_clients": 6, "max_test_examples": 100},
        client={"lr": 0.05, "local_steps": 2},
        server={"rounds": 3, "clients_per_round": 3},
    )
    with pytest.raises(KeyboardInterrupt):
        Simulation(prepare_run(config), out_dir=tmp_path / "cut", observer=StopAfter()).run()
    shutil.copytree(tmp_path / "cut", tmp_path / "copy")
    Simulation(prepare_run(config), out_dir=tmp_path / "cut").run(resume=True)
    Simulation(prepare_run(config), out_dir=tmp_path / "copy").run(resume=True)
    Simulation(prepare_run(config), out_dir=tmp_path / "other").run()
    cut, copy, other = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("cut", "copy", "other"))
    assert all(np.array_equal(cut[k], copy[k]) for k in cut)
    assert not all(np.array_equal(cut[k], other[k]) for k in cut)
    assert read(tmp_path / "cut", "privacy.json") == read(tmp_path / "copy", "privacy.json")


@pytest.mark.parametrize("mode", ["ghost", "bookkeeping"])
def test_ghost_clipping_or_bookkeeping_and_hooks_give_the_same_update(tmp_path, mode):
    results = {}
    for each in (mode, "hooks"):
        run_dir = tmp_path / each
        # one local step (lr 0.5): after several, a float-rounding difference that flips a ReLU or a pooling window's
        # maximum grows (4 steps: one weight of 4,608 differed by 1.5e-5); after one the modes agree to about 1e-8
        config = cnn(
            {"mode": "dp-sgd", "grad_sample_mode": each, "reproducible_noise": True}, server={"rounds": 1}, client={"local_steps": 1}
        )
        Simulation(prepare_run(config), out_dir=run_dir).run()
        results[each] = load_file(str(run_dir / "model.safetensors"))
    for name in results[mode]:
        np.testing.assert_allclose(results[mode][name], results["hooks"][name], rtol=1e-5, atol=1e-7)


def test_dp_fedavg_user_level_epsilon_matches_the_accountant(tmp_path):
    config = cnn(
        {"mode": "dp-fedavg", "target_epsilon": 50.0, "noise_multiplier": 1.1, "accountant": "rdp", "delta": 1e-3},
        data={"num_clients": 8},
        client={"lr": 0.05},
        server={"rounds": 3, "clients_per_round": 4},
    )
    Simulation(prepare_run(config), out_dir=tmp_path / "run").run()
    ledger = read(tmp_path / "run", "privacy.json")
    expected = dp_fedavg_epsilon(noise_multiplier=1.1, sample_rate=0.5, rounds=3, delta=1e-3, accountant="rdp")
    assert ledger["epsilon"] == pytest.approx(expected, rel=1e-9)
    assert ledger["level"] == "user" and ledger["rounds"] == 3


def test_dp_fedavg_noise_multiplier_over_budget_is_refused():
    with pytest.raises(ConfigError) as info:
        prepare_run(cnn({"mode": "dp-fedavg", "target_epsilon": 1.0, "noise_multiplier": 0.3}))
    assert info.value.key == "privacy.noise_multiplier"


def test_adaptive_clipping_moves_the_clip_norm_toward_the_quantile(tmp_path):
    privacy = {
        "mode": "dp-fedavg",
        "target_epsilon": 100.0,
        "accountant": "rdp",
        "clip_norm": 0.001,
        "adaptive_clipping": True,
        "clipped_count_stddev": 0.5,
        "clip_learning_rate": 0.5,
    }
    config = cnn(privacy, client={"lr": 0.05}, server={"rounds": 3})
    Simulation(prepare_run(config), out_dir=tmp_path / "run").run()
    rows = metrics(tmp_path / "run")
    # every update is far above C=0.001, so the unclipped fraction is about 0 < 0.5 and C grows by about e^(0.5*0.5) a round
    assert rows[0]["clip_norm"] == 0.001
    assert all(r["unclipped_fraction"] < 0.5 for r in rows)
    assert rows[2]["clip_norm"] > rows[1]["clip_norm"] > rows[0]["clip_norm"]


def test_an_adaptive_clipping_step_far_beyond_andrew_et_al_is_limited_not_a_crash(tmp_path, caplog):
    privacy = {
        "mode": "dp-fedavg",
        "target_epsilon": 8.0,
        "adaptive_clipping": True,
        "clipped_count_stddev": 1e30,
        "clip_learning_rate": 1e30,
    }
    Simulation(prepare_run(cnn(privacy, server={"rounds": 2})), out_dir=tmp_path / "run").run()  # OverflowError before
    rows = metrics(tmp_path / "run")
    ratio = rows[1]["clip_norm"] / rows[0]["clip_norm"]
    assert ratio == pytest.approx(math.exp(10.0)) or ratio == pytest.approx(math.exp(-10.0))  # MAX_CLIP_LOG_STEP
    assert "adaptive clipping would scale the clip norm" in caplog.text


def test_dp_sgd_cnn_learns_well_above_chance_at_epsilon_8(tmp_path):
    config = config_from_dict(
        {
            "data": {"dataset": "fashion_mnist", "max_train_examples": 4000, "max_test_examples": 1000, "num_clients": 4, "alpha": 0.5},
            "model": {"arch": "cnn", "finetune": "full"},
            "client": {"local_epochs": 1, "batch_size": 64, "lr": 0.5},
            "server": {"rounds": 3},
            "privacy": {"mode": "dp-sgd", "target_epsilon": 8.0},
        }
    )
    summary = Simulation(prepare_run(config)).run()
    # chance is 0.10; measured 0.50 for this seed
    assert summary["final"]["test_accuracy"] > 0.35
    assert summary["privacy"]["epsilon"]["max"] <= 8.0


@pytest.mark.parametrize("finetune", ["full", "lora", "head"])
def test_minilm_trains_under_dp_sgd(finetune):
    config = config_from_dict(
        {
            "data": {
                "dataset": "movie_reviews",
                "max_train_examples": 64,
                "max_test_examples": 16,
                "num_clients": 2,
                "partition": "iid",
                "max_length": 24,
            },
            "model": {"arch": "hf-text", "finetune": finetune, "lora_rank": 4},
            # one step a client: full fine-tuning's per-sample gradients and noise (22.7M values) cost about 10 s a step here
            "client": {"local_steps": 1, "batch_size": 8, "optimizer": "adamw", "lr": 0.001},
            "server": {"rounds": 1},
            "privacy": {"mode": "dp-sgd", "target_epsilon": 8.0, "grad_sample_mode": "hooks"},
        }
    )
    prepared = prepare_run(config)
    before = prepared.model.get_trainable()
    simulation = Simulation(prepared)
    summary = simulation.run()
    after = simulation.server.parameters
    assert any(not np.array_equal(before[k], after[k]) for k in before)
    assert 0 < summary["privacy"]["epsilon"]["max"] <= 8.0
    # Opacus left nothing behind on the shared model
    assert not any(hasattr(p, "grad_sample") for p in prepared.model.module.parameters())


def test_batchnorm_model_is_refused():
    from secure_ffm.models.vision import ImageModel

    prepared = prepare_run(cnn({"mode": "dp-sgd"}))
    module = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4 * 26 * 26, 10))
    with pytest.raises(ConfigError, match="BatchNorm") as info:
        prepared.privacy.check_model(ImageModel(module, num_classes=10))
    assert info.value.key == "model.arch"


@pytest.mark.parametrize("secure_mode", [True, False])
def test_dp_sgd_trains_with_either_noise_sampler(tmp_path, secure_mode):
    # secure_mode needs no torchcsprng: its CSPRNG is ChaCha20 (cryptography), its sampler the sum of four Gaussians
    config = cnn({"mode": "dp-sgd", "target_epsilon": 8.0, "secure_mode": secure_mode}, server={"rounds": 2})
    Simulation(prepare_run(config), out_dir=tmp_path / "run").run()
    ledger = read(tmp_path / "run", "privacy.json")
    assert ledger["noise"]["secure_sampler"] is secure_mode and ledger["noise"]["source"] == "os-csprng"
    assert 0 < ledger["epsilon"]["max"] <= 8.0


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("privacy.target_epsilon=0", "privacy.target_epsilon"),
        ("privacy.target_epsilon=0.0001", "privacy.target_epsilon"),
        ("privacy.delta=1.0", "privacy.delta"),
        ("privacy.max_grad_norm=0", "privacy.max_grad_norm"),
    ],
)
def test_bad_privacy_input_exits_2_and_trains_nothing(tmp_path, capsys, override, key):
    config = tmp_path / "c.toml"
    config.write_text(cnn({"mode": "dp-sgd"}).to_toml())
    out = tmp_path / "run"
    assert main(["train", str(config), "--set", override, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key in err
    assert not out.exists()


def test_delta_at_or_above_one_over_n_warns(caplog):
    with caplog.at_level("WARNING"):
        prepare_run(cnn({"mode": "dp-sgd", "delta": 0.01}))
    assert any("privacy.delta" in r.message for r in caplog.records)


def test_privacy_command_prints_the_plan(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text(cnn({"mode": "dp-sgd", "target_epsilon": 3.0}).to_toml())
    assert main(["privacy", str(config), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["mechanism"] == "dp-sgd" and len(plan["clients"]) == 4
    assert all(0.95 * 3.0 <= c["planned_epsilon"] <= 3.0 for c in plan["clients"])
    assert plan["noise_multiplier"]["min"] > 0


def test_bookkeeping_on_a_model_with_a_trained_layer_it_has_no_rule_for_is_refused():
    config = cnn({"mode": "dp-sgd", "grad_sample_mode": "bookkeeping"}, model={"arch": "vit"})
    with pytest.raises(ConfigError, match="covers Linear and Conv2d") as info:
        prepare_run(config)
    assert info.value.key == "privacy.grad_sample_mode"
