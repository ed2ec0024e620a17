"""FFM pre-training runs: public and federated units through the one engine path (docs/ffm.md)."""

import hashlib
import json

import numpy as np
import pytest
from interrupt import InterruptAtRound  # tests/interrupt.py (on sys.path under pytest)
from safetensors.numpy import load_file

from secure_ffm.config import config_from_dict
from secure_ffm.engine.client import FederatedClient
from secure_ffm.run.simulation import PublicPhase, Simulation, prepare_run, without_timings


def ffm(schedule="alternating", rounds=4, **sections):
    raw = {
        "data": {"dataset": "fashion_mnist", "max_train_examples": 300, "max_test_examples": 100, "num_clients": 2, "public_fraction": 0.3},
        "model": {"arch": "cnn", "finetune": "full"},
        "client": {"local_steps": 2},
        "server": {"rounds": rounds},
        "ffm": {"schedule": schedule, "public_steps": 3},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return config_from_dict(raw)


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_rows_carry_the_phase_and_the_reason_and_the_summary_counts_them(tmp_path):
    config = ffm(ffm={"schedule": "alternating", "public_steps": 3, "public_units": 2, "federated_units": 1})
    summary = Simulation(prepare_run(config), out_dir=tmp_path / "run").run()
    history = rows(tmp_path / "run")
    assert [r["phase"] for r in history] == ["public", "public", "federated", "public"]
    assert history[1]["switch_reason"] == "alternating: public unit 2 of 2"
    public = [r for r in history if r["phase"] == "public"]
    assert all(r["clients"] == [] and r["bytes_up"] == 0 and r["public_steps"] == 3 for r in public)
    assert all(np.isfinite(r["public_loss"]) for r in history)
    assert history[2]["update_alignment"] is not None and -1 <= history[2]["update_alignment"] <= 1
    assert summary["ffm"] == {"schedule": "alternating", "public_units": 3, "federated_rounds": 1, "public_steps": 9, "switches": 2}


def test_a_public_phase_trains_the_global_model_on_public_data():
    simulation = Simulation(prepare_run(ffm("centralized", rounds=3)))
    summary = simulation.run()
    losses = [r["public_loss"] for r in simulation.history]
    assert losses[-1] < losses[0]  # the held-out public loss falls
    assert summary["bytes_up_total"] == 0 and summary["ffm"]["federated_rounds"] == 0


def clients_that_train(monkeypatch) -> list[FederatedClient]:
    """Every client a run trains, recorded as it trains (the list fills during the run)."""
    built: list[FederatedClient] = []
    original = FederatedClient.fit

    def spy(self, ins, **kwargs):
        built.append(self)
        return original(self, ins, **kwargs)

    monkeypatch.setattr(FederatedClient, "fit", spy)
    return built


def test_public_data_never_reaches_a_client(monkeypatch):
    prepared = prepare_run(ffm("alternating", rounds=4))
    built = clients_that_train(monkeypatch)
    Simulation(prepared).run()
    assert built and all(client.encoded is prepared.encoded_private for client in built)
    digest = lambda image: hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()  # noqa: E731
    public = {digest(image) for image in prepared.data.public.inputs}
    for client in built:
        assert not public & {digest(prepared.data.private.inputs[i]) for i in client.indices}


def test_public_phases_spend_no_privacy_budget():
    privacy = {"mode": "dp-sgd", "target_epsilon": 8.0, "max_grad_norm": 1.0}
    simulation = Simulation(prepare_run(ffm("alternating", rounds=4, privacy=privacy)))
    simulation.run()
    history = simulation.history
    assert [r["phase"] for r in history] == ["public", "federated", "public", "federated"]
    spent = [r["epsilon_max"] for r in history]
    assert spent[0] in (0.0, None) and spent[2] == spent[1] and spent[3] > spent[2]  # only federated rounds move ε


def test_resume_in_the_middle_of_a_public_phase_gives_the_uninterrupted_result(tmp_path):
    config = ffm(ffm={"schedule": "adaptive", "public_steps": 3, "patience": 2})
    whole = tmp_path / "whole"
    Simulation(prepare_run(config), out_dir=whole).run()
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        Simulation(prepare_run(config), out_dir=cut, observer=InterruptAtRound(2)).run()
    assert rows(cut)[0]["phase"] == "public"
    Simulation(prepare_run(config), out_dir=cut).run(resume=True)
    assert [without_timings(r) for r in rows(cut)] == [without_timings(r) for r in rows(whole)]
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(cut / "model.safetensors"))
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_an_ffm_run_under_masking_matches_the_plaintext_run():
    plain = Simulation(prepare_run(ffm("alternating", rounds=4)))
    plain.run()
    masked = Simulation(prepare_run(ffm("alternating", rounds=4, secure_aggregation={"protocol": "masking", "clip_range": 2.0})))
    masked.run()
    assert [r["phase"] for r in masked.history] == [r["phase"] for r in plain.history]
    for name, value in plain.server.parameters.items():
        np.testing.assert_allclose(masked.server.parameters[name], value, atol=1e-4)


# --------------------------------------------------------------------------- a separate public dataset ([public_data])


def with_public_dataset(tmp_path, rounds=2, **ffm_settings):
    """Clients: 40 movie-review snippets; server: its own sentiment table (same class names), through [public_data]."""
    public = tmp_path / "public.csv"
    rows = [f"server-only sentence {i}, {'a delight' if i % 2 else 'a bore'}" for i in range(30)]
    public.write_text("text,label\n" + "".join(f'"{t}",{"positive" if i % 2 else "negative"}\n' for i, t in enumerate(rows)))
    return config_from_dict(
        {
            "data": {"dataset": "movie_reviews", "max_train_examples": 40, "max_test_examples": 20, "num_clients": 2, "max_length": 16},
            "public_data": {"dataset": str(public)},
            "model": {"arch": "hf-text", "finetune": "head"},
            "client": {"local_steps": 1, "batch_size": 8},
            "server": {"rounds": rounds},
            "ffm": {"schedule": "alternating", "public_steps": 2, **ffm_settings},
        }
    )


def test_a_separate_public_dataset_trains_the_server_and_never_reaches_a_client(tmp_path, monkeypatch):
    prepared = prepare_run(with_public_dataset(tmp_path))
    built = clients_that_train(monkeypatch)
    simulation = Simulation(prepared)
    simulation.run()
    public = set(prepared.data.public.inputs)
    assert len(public) == 24 and all(text.startswith("server-only") for text in public)  # the table's train split
    assert len(prepared.data.private) == 40 and public.isdisjoint(prepared.data.private.inputs)
    assert [r["phase"] for r in simulation.history] == ["public", "federated"]
    assert simulation.history[0]["public_examples"] == len(PublicPhase(prepared).training) > 0
    assert np.isfinite(simulation.history[0]["train_loss"])
    assert built and all(client.encoded is prepared.encoded_private for client in built)
    assert all(public.isdisjoint(prepared.data.private.inputs[i] for i in client.indices) for client in built)


def test_a_resume_reloads_the_separate_public_dataset_from_the_config(tmp_path):
    config = with_public_dataset(tmp_path, rounds=2)
    whole = tmp_path / "whole"
    Simulation(prepare_run(config), out_dir=whole).run()
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        Simulation(prepare_run(config), out_dir=cut, observer=InterruptAtRound(2)).run()
    assert [r["phase"] for r in rows(cut)] == ["public"]
    assert "[public_data]" in (cut / "config.toml").read_text()
    Simulation(prepare_run(config), out_dir=cut).run(resume=True)
    assert [without_timings(r) for r in rows(cut)] == [without_timings(r) for r in rows(whole)]
