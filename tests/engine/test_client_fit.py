"""What a client's ``fit`` hands its protocol half and what it computes as its update."""

import copy
import tomllib

import numpy as np
import pytest
from digits_cnn import digits_cnn_toml

from secure_ffm.config import config_from_dict
from secure_ffm.engine.aggregation import ClientRound, PlaintextClientRound
from secure_ffm.engine.wire import ClientMessage, ClientUpdate, FitInstructions, subtract
from secure_ffm.run.simulation import Simulation, prepare_run
from secure_ffm.secagg.masking_protocol import MaskingClient


def digits_config():
    return config_from_dict(tomllib.loads(digits_cnn_toml()))


class RecordingRound(ClientRound):
    """A protocol half that records the ``rng`` it is handed and sends the update in the clear."""

    def __init__(self, uses_rng: bool) -> None:
        self.uses_rng = uses_rng
        self.rngs: list[object] = []

    def encode(self, update: ClientUpdate, *, weight: float, rng=None, payload=None, instructions_digest=None) -> ClientMessage:
        self.rngs.append(rng)
        return PlaintextClientRound().encode(update, weight=weight)


@pytest.fixture(scope="module")
def simulation():
    return Simulation(prepare_run(digits_config()))


def instructions(simulation):
    return FitInstructions(round=1, parameters=simulation.server.parameters, config={})


@pytest.mark.parametrize("uses_rng", [True, False])
def test_an_encoder_that_draws_gets_the_clients_secret_generator_and_one_that_does_not_gets_none(uses_rng):
    simulation = Simulation(prepare_run(digits_config()))
    client = simulation.client(0)
    before = copy.deepcopy(dict(client.state))
    encoder = RecordingRound(uses_rng)
    client.fit(instructions(simulation), encoder=encoder)
    (rng,) = encoder.rngs
    if not uses_rng:
        assert rng is None
        return
    assert isinstance(rng, np.random.Generator)
    first = rng.random(4)
    # keyed from the client's secret (secure_ffm.privacy.noise), not from the public seed, and by the client's own count
    # of its answers, not by the round the request names: asked the same round again, the client draws others; a
    # client restored to its state before the answer (an exact resume) draws the same; a second run's client others
    again = RecordingRound(True)
    simulation.client(0).fit(instructions(simulation), encoder=again)
    assert not np.array_equal(again.rngs[0].random(4), first)
    restored = simulation.client(0)
    restored.state.clear()
    restored.state.update(copy.deepcopy(before))
    replayed = RecordingRound(True)
    restored.fit(instructions(simulation), encoder=replayed)
    assert np.array_equal(replayed.rngs[0].random(4), first)
    rerun = Simulation(prepare_run(digits_config()))
    other = RecordingRound(True)
    rerun.client(0).fit(instructions(rerun), encoder=other)
    assert not np.array_equal(other.rngs[0].random(4), first)


def test_the_masking_half_asks_for_the_clients_generator_and_plaintext_does_not():
    # masking's stochastic rounding falls back to a generator seeded from the public run seed when handed None
    assert MaskingClient.uses_rng is True
    assert PlaintextClientRound.uses_rng is False


def test_the_update_is_the_trained_parameters_minus_the_global_ones_bitwise(simulation):
    client = simulation.client(2)
    update = client.train(instructions(simulation))
    expected = subtract(simulation.prepared.model.get_trainable(), simulation.server.parameters)
    assert set(update.delta) == set(expected)
    for name, value in expected.items():
        assert update.delta[name].dtype == np.float32
        assert np.array_equal(update.delta[name], value), name


def test_a_float64_reference_gives_the_difference_of_the_float32_parameters(simulation):
    model = simulation.prepared.model
    reference = {name: np.full(p.shape, 0.25, dtype=np.float64) for name, p in model.trainable_named_parameters()}
    delta = model.trainable_delta(reference)
    for name, p in model.trainable_named_parameters():
        expected = p.detach().numpy().astype(np.float32) - reference[name]
        assert delta[name].dtype == expected.dtype and np.array_equal(delta[name], expected), name
