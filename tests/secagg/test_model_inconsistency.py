"""A server that sends different clients different models (Pasquini, Francati & Ateniese, "Eluding Secure Aggregation
in Federated Learning via Model Inconsistency", ACM CCS 2022), played against the real clients of a masked run.

The server sends the target the honest model and every other participant a model whose update it knows: here the
``fc`` layer's bias at -10^4, so every ReLU after it is dead and nothing before the head gets a gradient. Without a
binding, the secure sum of the round is then the target's update on every array but the head's bias. Masking binds the
pairwise masks to the digest of the fit request each client trained on (``secure_ffm.engine.wire.instructions_digest``):
the target's masks with the others no longer cancel and the server unmasks noise.
"""

import dataclasses

import numpy as np
import pytest

import secure_ffm.engine.client as client_module
from secure_ffm.engine.codec import pack, unpack
from secure_ffm.engine.orchestrator import RoundHooks
from secure_ffm.engine.transforms import UpdatePipeline
from secure_ffm.engine.wire import FitInstructions, instructions_digest
from secure_ffm.run.simulation import Simulation, prepare_run
from secure_ffm.transports.base import FitRequest
from tests.secagg.cases import cnn_config

TARGET = 0
DEAD = "fc.bias"


@pytest.fixture(scope="module")
def prepared():
    return prepare_run(cnn_config(client={"local_steps": 2}, server={"rounds": 1}))


class Aggregates(RoundHooks):
    """The round's aggregate, as the server computes it."""

    def __init__(self):
        self.seen = {}

    def aggregate_computed(self, round, aggregate, clients, instructions):
        self.seen[round] = (aggregate, list(clients))


class Updates:
    """An update transform that records each client's update as it goes into the protocol (and changes nothing)."""

    name = "record"

    def __init__(self):
        self.deltas, self.examples = {}, {}

    def __call__(self, update, context):
        self.deltas[update.client_id] = {k: np.array(v, dtype=np.float64) for k, v in update.delta.items()}
        self.examples[update.client_id] = update.num_examples
        return update


def masked_run(prepared, updates, aggregates, **secure):
    config = cnn_config(client={"local_steps": 2}, server={"rounds": 1}, secure_aggregation={"protocol": "masking", **secure})
    return Simulation(dataclasses.replace(prepared, config=config), transforms=UpdatePipeline([updates]), hooks=[aggregates])


def send_inconsistent_models(simulation):
    """The lying server: the target gets the round's request, every other participant a model with dead ReLUs."""
    honest_fit = simulation.transport.fit

    def fit(round, requests):
        lied = {}
        for client_id, request in requests.items():
            if client_id != TARGET:
                ins = request.instructions
                parameters = {**ins.parameters, DEAD: np.full_like(ins.parameters[DEAD], -1e4)}
                request = FitRequest(FitInstructions(ins.round, parameters, dict(ins.config), dict(ins.arrays)), request.payload)
            lied[client_id] = request
        return honest_fit(round, lied)

    simulation.transport.fit = fit


def target_share(aggregate, updates, clients):
    """What the sum says of the target's update, every array but the head's bias: the mean times the total weight over
    the target's weight (the server knows every client's example count)."""
    total = sum(updates.examples[c] for c in clients)
    scale = total / updates.examples[TARGET]
    return {k: np.asarray(v, dtype=np.float64) * scale for k, v in aggregate.mean_delta.items() if k != "head.bias"}


def relative_error(recovered, truth):
    num = sum(float(np.sum((recovered[k] - truth[k]) ** 2)) for k in recovered)
    den = sum(float(np.sum(truth[k] ** 2)) for k in recovered)
    return (num / den) ** 0.5


def test_without_the_binding_the_inconsistent_models_attack_unmasks_the_target_update(prepared, monkeypatch):
    # a client that binds its masks to nothing (every request hashes alike), as before the binding
    monkeypatch.setattr(client_module, "instructions_digest", lambda ins: bytes(32))
    updates, aggregates = Updates(), Aggregates()
    simulation = masked_run(prepared, updates, aggregates)
    send_inconsistent_models(simulation)
    row = simulation.run_round(1)
    assert row["aborted"] is None and row["clients"] == [0, 1, 2, 3]
    aggregate, clients = aggregates.seen[1]
    others = [c for c in clients if c != TARGET]
    assert all(np.all(updates.deltas[c][k] == 0) for c in others for k in updates.deltas[c] if k != "head.bias")
    recovered = target_share(aggregate, updates, clients)
    assert relative_error(recovered, updates.deltas[TARGET]) < 0.01  # the target's update, to the quantization


def test_the_binding_makes_the_inconsistent_models_attack_unmask_noise(prepared):
    updates, aggregates = Updates(), Aggregates()
    simulation = masked_run(prepared, updates, aggregates)
    send_inconsistent_models(simulation)
    row = simulation.run_round(1)
    others = [c for c in range(4) if c != TARGET]
    assert all(np.all(updates.deltas[c][k] == 0) for c in others for k in updates.deltas[c] if k != "head.bias")
    if row["aborted"] is not None:  # the unmasked weight slot is noise too: nothing was released
        assert 1 not in aggregates.seen
        return
    aggregate, clients = aggregates.seen[1]
    recovered = target_share(aggregate, updates, clients)
    truth = updates.deltas[TARGET]
    assert relative_error(recovered, truth) > 10  # noise spread over the clip range, not the target's update
    flat = np.concatenate([recovered[k].ravel() for k in recovered])
    assert abs(np.corrcoef(flat, np.concatenate([truth[k].ravel() for k in recovered]))[0, 1]) < 0.05


@pytest.mark.parametrize("dropout_rate", [0.0, 0.25])
def test_an_honest_masked_run_sums_exactly_the_survivors_updates(prepared, dropout_rate):
    # the server removes a dropped client's masks with the digest of the request it sent: it must be the clients' own
    config = cnn_config(
        data={"num_clients": 8},
        client={"local_steps": 2},
        server={"rounds": 1},
        secure_aggregation={"protocol": "masking", "dropout_rate": dropout_rate},
    )
    updates, aggregates = Updates(), Aggregates()
    simulation = Simulation(prepare_run(config), transforms=UpdatePipeline([updates]), hooks=[aggregates])
    row = simulation.run_round(1)
    assert row["aborted"] is None and len(row["dropped_clients"]) == round(8 * dropout_rate)
    aggregate, clients = aggregates.seen[1]
    total = sum(updates.examples[c] for c in clients)
    for name, value in aggregate.mean_delta.items():
        expected = sum(updates.examples[c] * updates.deltas[c][name] for c in clients) / total
        np.testing.assert_allclose(value, expected, atol=1e-4, err_msg=name)


# --------------------------------------------------------------------------- the digest


def instructions(**changes):
    rng = np.random.default_rng(0)
    base = {
        "round": 3,
        "parameters": {"w": rng.normal(size=(4, 3)).astype(np.float32), "b": np.zeros(3, np.float32)},
        "config": {"weighting": "examples", "participants": 4, "proximal_mu": 0.0, "collect_importance": False},
        "arrays": {},
    }
    base.update(changes)
    return FitInstructions(**base)


def test_the_digest_names_every_parameter_setting_array_and_the_round():
    reference = instructions_digest(instructions())
    assert len(reference) == 32 and instructions_digest(instructions()) == reference
    w = instructions().parameters["w"].copy()
    w[2, 1] = np.nextafter(w[2, 1], np.float32(np.inf))  # one ulp of one weight
    variants = [
        instructions(round=4),
        instructions(parameters={"w": w, "b": np.zeros(3, np.float32)}),
        instructions(parameters={"w": instructions().parameters["w"], "b": np.zeros(3, np.float64)}),  # dtype
        instructions(parameters={"w": instructions().parameters["w"].reshape(3, 4), "b": np.zeros(3, np.float32)}),  # shape
        instructions(parameters={"w": instructions().parameters["w"], "c": np.zeros(3, np.float32)}),  # name
        instructions(config={**instructions().config, "proximal_mu": 1e-12}),
        instructions(config={**instructions().config, "participants": 5}),
        instructions(config={**instructions().config, "collect_importance": 0}),  # a bool is not an int
        instructions(config={**instructions().config, "extra": ""}),
        instructions(arrays={"anchor.w": np.zeros(1, np.float32)}),
    ]
    digests = [instructions_digest(v) for v in variants]
    assert reference not in digests and len(set(digests)) == len(digests)


def test_the_digest_survives_the_wire_and_numpy_scalars():
    ins = instructions(config={"participants": np.int64(4), "proximal_mu": np.float64(0.0), "weighting": "examples"})
    plain = instructions(config={"participants": 4, "proximal_mu": 0.0, "weighting": "examples"})
    assert instructions_digest(ins) == instructions_digest(plain)
    received = unpack(*pack(FitRequest(plain, None)))
    assert instructions_digest(received.instructions) == instructions_digest(plain)
