"""What a client's message tells the server beside its update (``privacy.client_metrics``).

A client's training loss is computed on its examples, and DP-FedAvg's ``update_norm`` is its update's norm before
clipping: neither DP's noise nor secure aggregation covers them. A private or masked run keeps them on the client.
"""

import dataclasses
import json
import logging

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from secure_ffm.config import config_from_dict
from secure_ffm.engine.aggregation import PlaintextClientRound
from secure_ffm.engine.client import PUBLIC_CLIENT_METRICS, AggregatedLoss, client_metrics_policy, withhold_metrics
from secure_ffm.engine.orchestrator import RoundHooks
from secure_ffm.errors import ConfigError
from secure_ffm.run.simulation import Simulation, prepare_run


class Inbox(RoundHooks):
    """Every message the server receives, as it receives it."""

    def __init__(self):
        self.messages = []

    def message_received(self, round, message, instructions):
        self.messages.append(message)


def tiny(privacy=None, secure_aggregation=None, server=None):
    raw = {
        "run": {"seed": 1, "name": "client-metrics", "workers": 1},
        "data": {"dataset": "digits", "max_train_examples": 240, "max_test_examples": 100, "num_clients": 4},
        "model": {"arch": "cnn", "finetune": "full"},
        "client": {"local_steps": 2, "batch_size": 16, "lr": 0.05},
        "server": {"rounds": 2, "clients_per_round": 4, **(server or {})},
    }
    if privacy:
        raw["privacy"] = privacy
    if secure_aggregation:
        raw["secure_aggregation"] = secure_aggregation
    return config_from_dict(raw)


def run(config, tmp_path):
    inbox = Inbox()
    out = tmp_path / "run"
    summary = Simulation(prepare_run(config), out_dir=out, hooks=[inbox]).run()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return inbox.messages, rows, summary, out


@pytest.mark.parametrize(
    ("setting", "private", "hides_updates", "expected"),
    [
        ("auto", False, False, "all"),
        ("auto", True, False, "public"),
        ("auto", False, True, "public"),
        ("auto", True, True, "public"),
        ("public", False, False, "public"),
        ("all", True, True, "all"),
    ],
)
def test_auto_keeps_metrics_private_whenever_the_run_protects_updates(setting, private, hides_updates, expected):
    assert client_metrics_policy(setting, private=private, hides_updates=hides_updates) == expected


def test_public_policy_is_an_allow_list():
    metrics = {"train_loss": 0.7, "update_norm": 3.2, "plugin_score": 1.0, "steps": 4.0, "epsilon": 1.5, "train_seconds": 0.1}
    assert withhold_metrics(metrics, "public") == ["plugin_score", "train_loss", "update_norm"]
    assert metrics == {"steps": 4.0, "epsilon": 1.5, "train_seconds": 0.1}


def test_all_policy_keeps_every_metric():
    metrics = {"train_loss": 0.7, "update_norm": 3.2}
    assert withhold_metrics(metrics, "all") == []
    assert metrics == {"train_loss": 0.7, "update_norm": 3.2}


def test_unknown_setting_names_the_key():
    with pytest.raises(ConfigError, match=r"privacy\.client_metrics"):
        tiny(privacy={"client_metrics": "some"})


def test_plaintext_run_without_dp_reports_the_training_loss(tmp_path):
    messages, rows, summary, _ = run(tiny(), tmp_path)
    assert all("train_loss" in m.metrics for m in messages)
    assert all(row["train_loss"] is not None for row in rows)
    assert summary["client_metrics"] == {"policy": "all", "sent": "all"}


def test_dp_sgd_clients_keep_their_loss_and_sampling_to_themselves(tmp_path):
    config = tiny(privacy={"mode": "dp-sgd", "target_epsilon": 8.0})
    messages, rows, summary, out = run(config, tmp_path)
    assert messages
    for message in messages:
        assert set(message.metrics) <= PUBLIC_CLIENT_METRICS, message.metrics
        assert "epsilon" in message.metrics and "steps" in message.metrics  # the ledger's ε still reaches the server
    assert [row["train_loss"] for row in rows] == [None, None]
    assert summary["client_metrics"]["policy"] == "public"
    assert json.loads((out / "privacy.json").read_text())["client_metrics"]["policy"] == "public"


def test_dp_fedavg_never_sends_the_norm_before_clipping(tmp_path):
    config = tiny(privacy={"mode": "dp-fedavg", "target_epsilon": 8.0, "noise_placement": "clients"})
    messages, _, _, _ = run(config, tmp_path)
    assert messages and not any("update_norm" in m.metrics or "train_loss" in m.metrics for m in messages)
    assert all(set(m.metrics) <= PUBLIC_CLIENT_METRICS for m in messages), [m.metrics for m in messages]


@pytest.mark.parametrize("protocol", ["masking", "ckks"])
def test_secure_aggregation_without_dp_sends_the_loss_only_inside_the_sum(protocol, tmp_path):
    """The clients' metrics carry no loss; the loss travels in the masked (encrypted) vector, and the round's mean
    decoded from the aggregate equals the mean of the losses the same clients report in the clear with "all"."""
    hidden_messages, hidden, summary, _ = run(tiny(secure_aggregation={"protocol": protocol}), tmp_path / "hidden")
    assert hidden_messages and not any("train_loss" in m.metrics for m in hidden_messages)
    assert all(set(m.metrics) <= PUBLIC_CLIENT_METRICS for m in hidden_messages), [m.metrics for m in hidden_messages]
    assert "mean" in summary["client_metrics"]["train_loss"]
    _, clear, _, _ = run(tiny(privacy={"client_metrics": "all"}, secure_aggregation={"protocol": protocol}), tmp_path / "clear")
    # round 1 trains the same initial model on the same batches in both runs
    assert hidden[0]["train_loss"] == pytest.approx(clear[0]["train_loss"], rel=1e-4)
    assert all(row["train_loss"] is not None for row in hidden)


def test_a_masked_run_with_dp_sends_no_loss_at_all(tmp_path):
    messages, rows, summary, _ = run(
        tiny(privacy={"mode": "dp-fedavg", "noise_placement": "clients"}, secure_aggregation={"protocol": "masking"}), tmp_path
    )
    assert messages and not any("train_loss" in m.metrics for m in messages)
    assert all(set(m.metrics) <= PUBLIC_CLIENT_METRICS for m in messages), [m.metrics for m in messages]
    assert all(row["train_loss"] is None for row in rows) and "train_loss" not in summary["client_metrics"]


def test_opting_in_sends_everything_and_says_so(tmp_path, caplog):
    config = tiny(privacy={"mode": "dp-fedavg", "target_epsilon": 8.0, "noise_placement": "clients", "client_metrics": "all"})
    with caplog.at_level(logging.WARNING, logger="secure_ffm.run.simulation"):
        messages, rows, summary, out = run(config, tmp_path)
    assert all({"train_loss", "update_norm"} <= set(m.metrics) for m in messages)
    assert all(row["train_loss"] is not None for row in rows)
    assert "outside DP" in summary["client_metrics"]["warning"]
    assert "warning" in json.loads((out / "privacy.json").read_text())["client_metrics"]
    assert any("client_metrics" in record.getMessage() for record in caplog.records)


def test_a_private_run_refuses_per_client_evaluation_before_it_starts(tmp_path):
    config = tiny(privacy={"mode": "dp-sgd"}, server={"evaluate_clients": True})
    with pytest.raises(ConfigError, match=r"server\.evaluate_clients"):
        Simulation(prepare_run(config), out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_private_client_answers_no_evaluation_request():
    """A server may ask a node to evaluate any parameters it likes: an oracle on the private data. The node's own
    policy refuses, over the wire as a refusal (the server logs it and gets no number)."""
    from secure_ffm.engine.client import EvaluationWithheld
    from secure_ffm.engine.wire import FitInstructions

    simulation = Simulation(prepare_run(tiny(privacy={"mode": "dp-sgd"})))
    client = simulation.client(0)
    with pytest.raises(EvaluationWithheld, match="evaluates no model"):
        client.evaluate(FitInstructions(round=1, parameters=simulation.server.model_parameters))


def test_a_private_node_refuses_the_evaluate_request():
    from secure_ffm.engine.aggregation import AggregationError
    from secure_ffm.run.deployment import client_session
    from secure_ffm.transports.remote import EVALUATE

    simulation = Simulation(prepare_run(tiny(secure_aggregation={"protocol": "masking"})))
    session = client_session(simulation, 0, {})
    request = {"round": 1, "parameters": simulation.server.model_parameters, "batch_size": 32}
    with pytest.raises(AggregationError, match="evaluates no model"):
        session.answer(EVALUATE, request)
    plaintext = Simulation(prepare_run(tiny()))
    answer = client_session(plaintext, 0, {}).answer(EVALUATE, request)
    assert 0.0 <= answer["accuracy"] <= 1.0


# ---------------------------------------------------------------- the client's own weighting


class WeightRecorder(PlaintextClientRound):
    """The client's half of a round that notes the weight the client gives its update (the masked payload hides it)."""

    def __init__(self):
        self.weights = []

    def encode(self, update, *, weight, rng=None, payload=None, instructions_digest=None):
        self.weights.append(weight)
        return super().encode(update, weight=weight, rng=rng, payload=payload)


def _instructions(simulation, **tampered):
    honest = simulation.server.fit_instructions(1, [0, 1, 2, 3])
    return dataclasses.replace(honest, config={**honest.config, **tampered})


@pytest.mark.parametrize(
    "privacy",
    [
        {"mode": "dp-fedavg", "target_epsilon": 8.0, "noise_placement": "clients"},
        {"mode": "distributed-dp-sgd", "target_epsilon": 8.0},
    ],
    ids=["dp-fedavg-client-noise", "distributed-dp-sgd"],
)
def test_a_client_with_distributed_noise_weighs_itself_uniformly_whatever_the_server_asks(privacy, caplog):
    """A server that asked for example weighting would scale one client's update above the others' noise shares."""
    simulation = Simulation(prepare_run(tiny(privacy=privacy, secure_aggregation={"protocol": "masking"})))
    client = simulation.client(0)
    assert client.num_examples > 1
    encoder = WeightRecorder()
    with caplog.at_level(logging.WARNING, logger="secure_ffm.engine.client"):
        client.fit(_instructions(simulation, weighting="examples"), encoder=encoder)
    assert encoder.weights == [1.0]
    assert any("as the server asked" in record.getMessage() for record in caplog.records)


def test_without_dp_the_server_chooses_the_weighting():
    simulation = Simulation(prepare_run(tiny()))
    client = simulation.client(0)
    encoder = WeightRecorder()
    client.fit(_instructions(simulation, weighting="examples"), encoder=encoder)
    client.fit(_instructions(simulation, weighting="uniform"), encoder=encoder)
    assert encoder.weights == [float(client.num_examples), 1.0]


def test_the_privacy_command_says_what_the_clients_send(tmp_path, capsys):
    from secure_ffm.run.cli import main

    config = tmp_path / "c.toml"
    config.write_text(tiny(privacy={"mode": "dp-sgd"}).to_toml())
    assert main(["privacy", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["client_metrics"] == {"policy": "public", "sent": sorted(PUBLIC_CLIENT_METRICS)}
    assert main(["privacy", str(config), "--set", 'privacy.client_metrics="all"']) == 0
    assert "training loss included, in the clear" in capsys.readouterr().out


# ---------------------------------------------------------------- gradient importances only where they are private


@pytest.mark.parametrize(
    ("privacy", "sent"),
    [
        (None, True),  # no DP: the importances are as protected as the update (the protocol's)
        ({"mode": "dp-sgd"}, True),  # read from privatized steps: post-processing
        ({"mode": "dp-fedavg", "noise_placement": "clients"}, False),  # local steps in the clear: refused
    ],
    ids=["no-dp", "dp-sgd", "dp-fedavg"],
)
def test_a_client_sends_importances_only_where_they_are_private(privacy, sent, caplog):
    """EWC with DP-FedAvg is refused at configuration; a server asking for importances anyway gets none."""
    from secure_ffm.engine.client import IMPORTANCE_STATISTIC

    simulation = Simulation(prepare_run(tiny(privacy=privacy)))
    with caplog.at_level(logging.WARNING, logger="secure_ffm.engine.client"):
        update = simulation.client(0).train(_instructions(simulation, collect_importance=1))
    names = [name for name in update.statistics if name.startswith(IMPORTANCE_STATISTIC)]
    assert bool(names) == sent
    assert any("sends no gradient importances" in record.getMessage() for record in caplog.records) == (not sent)


@given(
    losses=st.lists(st.floats(0.0, 100.0), min_size=1, max_size=20),
    weights=st.lists(st.floats(0.5, 1e4), min_size=20, max_size=20),
    clip_range=st.floats(0.01, 10.0),
)
def test_the_aggregated_loss_decodes_the_weighted_mean_of_the_losses(losses, weights, clip_range):
    codec = AggregatedLoss(scale=min(1.0, clip_range))
    w = np.asarray(weights[: len(losses)])
    encoded = np.stack([codec.encode(loss) for loss in losses])[:, 0]
    assert np.all(np.abs(encoded) <= clip_range)  # within the protocol's per-coordinate bound (times the weight)
    assert codec.decode(np.sum(w * encoded) / np.sum(w)) == pytest.approx(np.sum(w * np.asarray(losses)) / np.sum(w), rel=1e-9, abs=1e-9)


def test_a_loss_out_of_range_is_clipped_and_a_diverged_one_counts_as_the_cap():
    codec = AggregatedLoss()
    assert [codec.decode(codec.encode(x)) for x in (-1.0, 250.0, float("nan"), None)] == [0.0, 100.0, 100.0, 100.0]


# ---------------------------------------------------------------- DP-FedAvg's clip norm: the client's own


def test_a_dp_fedavg_run_follows_the_server_clip_norm_only_with_adaptive_clipping():
    from secure_ffm.privacy.dp_fedavg import ClipUpdate, GaussianNoiseShare

    for adaptive in (False, True):
        privacy = {"mode": "dp-fedavg", "noise_placement": "clients", "adaptive_clipping": adaptive, "clipped_count_stddev": 1.0}
        transforms = Simulation(prepare_run(tiny(privacy=privacy, secure_aggregation={"protocol": "ckks"}))).transforms.transforms
        chosen = [t.follows_server for t in transforms if isinstance(t, ClipUpdate | GaussianNoiseShare)]
        assert chosen == [adaptive, adaptive]
