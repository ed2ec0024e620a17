"""Federated prompt tuning runs (``model.finetune`` = prompt, prefix, p-tuning) on a tiny BERT: what trains, what
travels, and the privacy protections (DP-SGD, DP-FedAvg, masking, CKKS) around it."""

import json

import numpy as np
import pytest
import torch
from tiny_encoder import save_tiny_bert, tiny_text_sections  # tests/engine/tiny_encoder.py (on sys.path under pytest)

from secure_ffm.config import config_from_dict
from secure_ffm.models import update_nbytes
from secure_ffm.run.simulation import RunObserver, Simulation, prepare_run, without_timings

PROMPT_MODES = {
    "prompt": {"prompt_tokens": 4},
    "prefix": {"prompt_tokens": 4, "prompt_encoder_hidden_size": 8},
    "p-tuning": {"prompt_tokens": 4, "prompt_encoder_hidden_size": 8},
}


@pytest.fixture(scope="module")
def encoder(tmp_path_factory, one_torch_thread):
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def prompt_config(encoder, finetune, **sections):
    model = {"finetune": finetune, **PROMPT_MODES[finetune], **sections.pop("model", {})}
    client = {"lr": 0.5, **sections.pop("client", {})}
    return config_from_dict(tiny_text_sections(encoder, model=model, client=client, **sections))


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("finetune", sorted(PROMPT_MODES))
def test_a_round_changes_the_prompt_and_head_and_nothing_else(encoder, finetune):
    prepared = prepare_run(prompt_config(encoder, finetune))
    module = prepared.model.module
    frozen_before = {name: p.detach().clone() for name, p in module.named_parameters() if not p.requires_grad}
    before = prepared.model.get_trainable()
    simulation = Simulation(prepared)
    simulation.run()
    after = simulation.server.parameters
    assert all("prompt_encoder." in name or name.startswith("head.") for name in before)
    assert any(name.startswith("head.") for name in before) and any("prompt_encoder." in name for name in before)
    assert all(not np.array_equal(before[name], after[name]) for name in before if "prompt_encoder." in name and name.endswith("weight"))
    assert frozen_before, "the encoder is frozen"
    for name, value in module.named_parameters():
        if name in frozen_before:
            assert torch.equal(value, frozen_before[name]), name


@pytest.mark.parametrize("finetune", sorted(PROMPT_MODES))
def test_bytes_up_is_the_prompt_and_head_payload(encoder, finetune, tmp_path):
    prepared = prepare_run(prompt_config(encoder, finetune))
    payload = update_nbytes(prepared.model.get_trainable())
    Simulation(prepared, out_dir=tmp_path / "run").run()
    (row,) = rows(tmp_path / "run")
    total = sum(p.numel() for p in prepared.model.module.parameters()) * 4
    assert row["bytes_up"] >= 2 * payload  # two clients, each sends the prompt and the head ...
    assert row["bytes_up"] < 2 * payload + 4096  # ... plus a small envelope
    assert payload < total / 20  # a fraction of the encoder


def test_dp_sgd_trains_every_prompt_mode_within_its_budget(encoder):
    for finetune in sorted(PROMPT_MODES):
        privacy = {"mode": "dp-sgd", "target_epsilon": 8.0, "grad_sample_mode": "hooks"}
        prepared = prepare_run(prompt_config(encoder, finetune, privacy=privacy))
        before = prepared.model.get_trainable()
        simulation = Simulation(prepared)
        summary = simulation.run()
        assert any(not np.array_equal(before[k], simulation.server.parameters[k]) for k in before), finetune
        assert 0 < summary["privacy"]["epsilon"]["max"] <= 8.0
        assert not any(hasattr(p, "grad_sample") for p in prepared.model.module.parameters())


def test_ghost_clipping_and_hooks_give_the_same_prompt_update(encoder):
    results = {}
    for mode in ("ghost", "hooks"):
        privacy = {"mode": "dp-sgd", "grad_sample_mode": mode, "reproducible_noise": True, "target_epsilon": 8.0}
        simulation = Simulation(prepare_run(prompt_config(encoder, "p-tuning", privacy=privacy)))
        simulation.run()
        results[mode] = simulation.server.parameters
    for name in results["ghost"]:
        np.testing.assert_allclose(results["ghost"][name], results["hooks"][name], rtol=1e-4, atol=1e-5)


def test_dp_fedavg_runs_on_prompt_updates(encoder, tmp_path):
    privacy = {"mode": "dp-fedavg", "target_epsilon": 50.0, "noise_multiplier": 1.0, "accountant": "rdp", "delta": 1e-3}
    config = prompt_config(encoder, "prompt", privacy=privacy, data={"num_clients": 4}, server={"rounds": 2, "clients_per_round": 2})
    Simulation(prepare_run(config), out_dir=tmp_path / "run").run()
    ledger = json.loads((tmp_path / "run" / "privacy.json").read_text())
    assert ledger["level"] == "user" and ledger["rounds"] == 2 and 0 < ledger["epsilon"] <= 50.0


@pytest.mark.parametrize(
    "secure",
    [
        {"protocol": "masking", "clip_range": 4.0},
        {"protocol": "ckks", "ckks_poly_modulus_degree": 4096, "ckks_coeff_mod_bit_sizes": [60, 49]},
    ],
    ids=["masking", "ckks"],
)
def test_secure_aggregation_of_prompt_updates_matches_plain_fedavg(encoder, secure):
    plain = Simulation(prepare_run(prompt_config(encoder, "prefix")))
    plain.run()
    secured = Simulation(prepare_run(prompt_config(encoder, "prefix", secure_aggregation=secure)))
    secured.run()
    for name, value in plain.server.parameters.items():
        np.testing.assert_allclose(secured.server.parameters[name], value, atol=1e-3)


@pytest.mark.parametrize("attack", ["embedding-leakage", "tag"])
def test_the_attack_command_replays_a_captured_prompt_update(encoder, tmp_path, attack):
    from secure_ffm.run.cli import main

    config = prompt_config(
        encoder, "prompt", client={"batch_size": 2, "local_steps": 1}, audit={"capture_clients": [1], "capture_rounds": [1]}
    )
    Simulation(prepare_run(config), out_dir=tmp_path / "run").run()
    argv = ["attack", "--run", str(tmp_path / "run"), "--attack", attack, "--iterations", "3", "--out", str(tmp_path / "a"), "--quiet"]
    assert main(argv) == 0
    document = json.loads((tmp_path / "a" / "attack.json").read_text())
    assert document["attack"] == attack and document["threat_model"]["observes"] == "update"
    if attack == "embedding-leakage":
        assert document["mean"]["token_recall"] == 0.0


class StopAfterRound1(RunObserver):
    def round_finished(self, round, metrics):
        if round == 1:
            raise KeyboardInterrupt


def test_resume_of_a_dp_prompt_run_equals_the_uninterrupted_run(encoder, tmp_path):
    privacy = {"mode": "dp-sgd", "target_epsilon": 8.0, "reproducible_noise": True}
    config = prompt_config(encoder, "p-tuning", privacy=privacy, server={"rounds": 2})
    Simulation(prepare_run(config), out_dir=tmp_path / "full").run()
    with pytest.raises(KeyboardInterrupt):
        Simulation(prepare_run(config), out_dir=tmp_path / "cut", observer=StopAfterRound1()).run()
    Simulation(prepare_run(config), out_dir=tmp_path / "cut").run(resume=True)
    assert [without_timings(r) for r in rows(tmp_path / "full")] == [without_timings(r) for r in rows(tmp_path / "cut")]
    ledgers = [json.loads((tmp_path / run / "privacy.json").read_text()) for run in ("full", "cut")]
    assert ledgers[0] == ledgers[1]
