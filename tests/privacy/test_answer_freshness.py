"""A server that asks a client the same round twice gets fresh noise, and a DP-FedAvg client answers only its plan.

Every draw of a client's answer used to be keyed by the round number of the server's request. A server that sent
round r twice, with two different models, got the same noise share on both answers: under masking it unmasked two
sums with the same noise and subtracted them, leaving the clients' updates at the two models without any noise
(docs/threat_model.md). Each answer now draws from a sub-secret keyed by the client's own count of its answers
(:meth:`secure_ffm.privacy.noise.PrivateRandomness.for_answer`).
"""

import dataclasses
import json

import numpy as np
import pytest

from secure_ffm.config import config_from_dict
from secure_ffm.engine.aggregation import ClientRound, PlaintextClientRound
from secure_ffm.engine.orchestrator import RoundHooks
from secure_ffm.engine.training import ClientDeclined
from secure_ffm.engine.transforms import TransformContext
from secure_ffm.privacy.dp_fedavg import ClipUpdate
from secure_ffm.privacy.noise import ANSWERS_KEY, PrivateRandomness
from secure_ffm.run.simulation import Simulation, prepare_run

CLIENT_NOISE = {"mode": "dp-fedavg", "target_epsilon": 4.0, "noise_placement": "clients", "clip_norm": 0.5}


def tiny(privacy=None, secure_aggregation=None, defense=None, rounds=2):
    raw = {
        "run": {"seed": 3, "name": "answer-freshness", "workers": 1},
        "data": {"dataset": "digits", "max_train_examples": 240, "max_test_examples": 100, "num_clients": 4},
        "model": {"arch": "cnn", "finetune": "full"},
        "client": {"local_steps": 1, "batch_size": 16, "lr": 0.05},
        "server": {"rounds": rounds, "clients_per_round": 4},
    }
    for section, values in (("privacy", privacy), ("secure_aggregation", secure_aggregation), ("defense", defense)):
        if values:
            raw[section] = values
    return config_from_dict(raw)


class UpdateRecorder(ClientRound):
    """The client's half of a round that keeps the update it is asked to encode (after every transform, before any
    masking) and sends it in the clear."""

    uses_rng = False

    def __init__(self):
        self.updates = []

    def encode(self, update, *, weight, rng=None, payload=None, instructions_digest=None):
        self.updates.append(np.concatenate([np.asarray(a, dtype=np.float64).ravel() for _, a in sorted(update.delta.items())]))
        return PlaintextClientRound().encode(update, weight=1.0)


def answer_twice(config, instructions_of=lambda simulation: simulation.server.fit_instructions(1, [0, 1, 2, 3])):
    """Client 0's two answers to the same request, as its protocol half is handed them."""
    simulation = Simulation(prepare_run(config))
    recorder = UpdateRecorder()
    for _ in range(2):
        simulation.client(0).fit(instructions_of(simulation), encoder=recorder)
    return recorder.updates


@pytest.mark.parametrize(
    ("privacy", "secure_aggregation", "defense"),
    [
        pytest.param(CLIENT_NOISE, None, None, id="dp-fedavg-gaussian-share"),
        pytest.param(CLIENT_NOISE, {"protocol": "masking"}, None, id="dp-fedavg-discrete-share-under-masking"),
        pytest.param({"mode": "dp-sgd", "target_epsilon": 8.0}, None, None, id="dp-sgd"),
        pytest.param(None, None, {"names": ["gaussian-noise"], "noise_std": 0.01}, id="gaussian-noise-defense"),
    ],
)
def test_the_same_request_answered_twice_carries_fresh_noise(privacy, secure_aggregation, defense):
    first, second = answer_twice(tiny(privacy, secure_aggregation, defense))
    # before the fix the two answers were bitwise equal (same training, same noise): subtracting removed all noise
    assert first.shape == second.shape
    assert np.linalg.norm(first - second) > 0.5 * np.linalg.norm(first)


def test_two_models_in_one_round_no_longer_give_the_noise_free_difference():
    """The attack itself: round 1 sent with the global model, then again with another; the server subtracts the two
    answers and compares with the clipped updates it can compute for the two models from its own copy of nothing but
    the public training (here the test trains the client without noise to get them)."""
    config = tiny(CLIENT_NOISE)
    simulation = Simulation(prepare_run(config))
    honest = simulation.server.fit_instructions(1, [0, 1, 2, 3])
    crafted = dataclasses.replace(honest, parameters={k: np.zeros_like(v) for k, v in honest.parameters.items()})
    recorder = UpdateRecorder()
    client = simulation.client(0)
    for ins in (honest, crafted):
        client.fit(ins, encoder=recorder)
    clip = ClipUpdate(clip_norm=CLIENT_NOISE["clip_norm"])
    context = TransformContext(round=1, client_id=0, rng=np.random.default_rng(0), global_parameters={}, config={})
    clean = []
    for ins in (honest, crafted):  # the same deterministic training (its batches come from the public seed), no noise
        update = clip(simulation.client(0).train(ins, randomness=PrivateRandomness(b"x" * 32)), context)
        clean.append(np.concatenate([np.asarray(a, dtype=np.float64).ravel() for _, a in sorted(update.delta.items())]))
    residual = (recorder.updates[0] - recorder.updates[1]) - (clean[0] - clean[1])
    share_std = simulation.prepared.privacy.update_noise_multiplier * CLIENT_NOISE["clip_norm"] / 2  # z C / sqrt(m), m = 4
    # two independent shares: the residual is their difference, std sqrt(2) times a share's (it was 0 before the fix)
    assert np.std(residual) == pytest.approx(np.sqrt(2) * share_std, rel=0.05)


class Aggregates(RoundHooks):
    def __init__(self):
        self.means = []

    def aggregate_computed(self, round, aggregate, clients, instructions):
        self.means.append(np.concatenate([np.asarray(a, dtype=np.float64).ravel() for _, a in sorted(aggregate.mean_delta.items())]))


def test_a_masked_round_asked_twice_unmasks_to_two_differently_noised_sums():
    """End to end under masking with discrete shares: the server runs the protocol for round 1 twice from the same
    model; the two unmasked sums were equal before the fix, so with two models their difference had no noise."""
    aggregates = Aggregates()
    simulation = Simulation(prepare_run(tiny(CLIENT_NOISE, {"protocol": "masking"})), hooks=[aggregates])
    start = {k: v.copy() for k, v in simulation.server.parameters.items()}
    for _ in range(2):
        simulation.server.parameters = {k: v.copy() for k, v in start.items()}
        row = simulation.orchestrator.run_round(1)
        assert row["clients"] == [0, 1, 2, 3]
    first, second = aggregates.means
    assert np.linalg.norm(first - second) > 0.5 * np.linalg.norm(first)


def test_a_dp_fedavg_client_with_its_own_noise_answers_no_more_than_its_planned_rounds():
    simulation = Simulation(prepare_run(tiny(CLIENT_NOISE, rounds=2)))
    client = simulation.client(0)
    assert client.rules.answer_limit == 2
    instructions = simulation.server.fit_instructions(1, [0, 1, 2, 3])
    for _ in range(2):
        client.fit(instructions, encoder=UpdateRecorder())
    assert client.state[ANSWERS_KEY] == 2
    with pytest.raises(ClientDeclined, match="answered 2 fit requests"):
        client.fit(dataclasses.replace(instructions, round=2), encoder=UpdateRecorder())
    assert client.state[ANSWERS_KEY] == 2  # a refusal spends nothing


def test_an_honest_run_never_reaches_the_limit_and_a_replayed_round_is_declined_over_the_transport():
    simulation = Simulation(prepare_run(tiny(CLIENT_NOISE, rounds=2)))
    rows = [simulation.orchestrator.run_round(r) for r in (1, 2)]
    assert all(row["clients"] == [0, 1, 2, 3] and not row["skipped_clients"] for row in rows)
    replayed = simulation.orchestrator.run_round(2)  # a third request: every client has answered its plan
    assert replayed["clients"] == [] and replayed["skipped_clients"] == [0, 1, 2, 3]
    assert "answers no more" in replayed["skipped_reasons"]["0"]


@pytest.mark.parametrize(
    "privacy",
    [
        pytest.param({"mode": "dp-fedavg", "target_epsilon": 4.0, "noise_placement": "server"}, id="dp-fedavg-server-noise"),
        pytest.param({"mode": "dp-sgd", "target_epsilon": 8.0}, id="dp-sgd-own-ledger"),
        pytest.param(None, id="no-dp"),
    ],
)
def test_only_client_placed_dp_fedavg_noise_bounds_the_answers_here(privacy):
    assert Simulation(prepare_run(tiny(privacy))).client(0).rules.answer_limit is None


def test_an_answer_index_is_a_count():
    with pytest.raises(ValueError, match="count"):
        PrivateRandomness(b"k" * 32).for_answer(-1)
    randomness = PrivateRandomness(b"k" * 32)
    draws = [randomness.for_answer(i).stream(3, 1).normal((8,), 1.0) for i in (0, 1, 0)]
    assert np.array_equal(draws[0], draws[2]) and not np.array_equal(draws[0], draws[1])


def test_the_privacy_command_says_how_many_requests_a_client_answers(tmp_path, capsys):
    from secure_ffm.run.cli import main

    config = tmp_path / "c.toml"
    config.write_text(tiny(CLIENT_NOISE, rounds=3).to_toml())
    assert main(["privacy", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["client_answer_limit"] == 3
    assert main(["privacy", str(config)]) == 0
    assert "answers at most 3 fit requests" in capsys.readouterr().out
    assert main(["privacy", str(config), "--set", 'privacy.noise_placement="server"', "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["client_answer_limit"] is None


def test_a_node_counts_its_answers_across_requests_as_flower_delivers_them():
    """A deployed node rebuilds its client for every message from the state it saved (``context.state``): the count
    survives the round trip through the codec, so the same request answered twice still draws twice."""
    from secure_ffm.engine.codec import from_bytes, to_bytes
    from secure_ffm.run.deployment import client_session
    from secure_ffm.transports.base import FitRequest
    from secure_ffm.transports.remote import FIT

    simulation = Simulation(prepare_run(tiny(CLIENT_NOISE, rounds=2)))
    request = {"round": 1, "request": FitRequest(simulation.server.fit_instructions(1, [0, 1, 2, 3]))}
    saved, answers = to_bytes({}), []
    for _ in range(3):  # a fresh session over the saved state for each message, as app.handle builds one
        state = from_bytes(saved)
        answers.append(client_session(simulation, 0, state).answer(FIT, request))
        saved = to_bytes(state)
    first, second = (np.concatenate([np.ravel(v) for _, v in sorted(a["message"].payload.items())]) for a in answers[:2])
    assert np.linalg.norm(first - second) > 0.5 * np.linalg.norm(first)
    assert "answers no more" in answers[2]["declined"]
