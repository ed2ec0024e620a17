"""Hostile messages against every registered aggregation protocol, through the public protocol API only.

For each name in :data:`secure_ffm.variants.PROTOCOLS`, round 2 is begun with the layout the server expects
(``begin_round(round, participants, weight_bound=..., layout=...)``). A hostile message (one replayed from round 1,
a round-1 payload relabelled as round 2, a second message from a client, one from a client that is not a
participant, an update of another shape, non-finite values) raises :class:`~secure_ffm.engine.aggregation.AggregationError`
naming the client, either from ``encode`` (the client refuses to encode it: an ``EncodingDeclined``, which a run
treats as a client that sends nothing) or from ``accumulator(round).add``, and changes nothing: the honest
messages added afterwards still give the weighted mean of the honest updates. A client whose update is refused
sends nothing else that round (it encodes once, as in a run): the mean is then that of the others, as for a client
that dropped out.

Protocol-specific forgeries (a truncated masked vector, a ciphertext that does not deserialize...) stay in
``tests/secagg``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest

from secure_ffm.config import config_from_dict
from secure_ffm.engine.aggregation import AggregationError, AggregationProtocol, EncodingDeclined, VectorLayout
from secure_ffm.engine.wire import ClientMessage, ClientUpdate
from secure_ffm.variants import PROTOCOLS

NUM_CLIENTS = 5
ROUND = 2
WEIGHT_BOUND = 60.0
# small CKKS parameters (N=4096) keep the suite fast; protocols without CKKS ignore these keys
SETTINGS = {"ckks_poly_modulus_degree": 4096, "ckks_coeff_mod_bit_sizes": [40, 20, 40], "ckks_scale_bits": 20}
TOLERANCE = 1e-4
"""Allowed gap to the float64 weighted mean: far above CKKS's and fixed-point masking's error here (~1e-5 at most)."""

PROTOCOL_NAMES = PROTOCOLS.names()
SECURE_ONLY = (
    "a protocol whose server sees updates in the clear (hides_updates False) tags no payload with its round: a stale payload "
    "relabelled as this round's is indistinguishable from a fresh one"
)


def make_updates(round: int, seed: int) -> tuple[list[ClientUpdate], list[float]]:
    rng = np.random.default_rng(seed)
    updates = [
        ClientUpdate(
            c,
            round,
            {"conv.weight": rng.normal(0, 0.05, (4, 3, 3)).astype(np.float32), "fc.bias": rng.normal(0, 0.05, 5).astype(np.float32)},
            10,
            statistics={"unclipped": np.asarray([float(c % 2)])},
        )
        for c in range(NUM_CLIENTS)
    ]
    return updates, [float(w) for w in rng.integers(5, int(WEIGHT_BOUND), NUM_CLIENTS)]


@dataclass
class Round:
    """Round 2 of ``protocol`` begun for clients 0..4, their honest updates, and a message client 0 sent in round 1."""

    protocol: AggregationProtocol
    updates: list[ClientUpdate]
    weights: list[float]
    replay: ClientMessage
    accumulator: object
    encoded: dict[int, ClientMessage] = field(default_factory=dict)
    added: set[int] = field(default_factory=set)
    left_out: set[int] = field(default_factory=set)
    """Clients whose hostile update was refused: they send nothing else this round."""

    def message(self, client: int) -> ClientMessage:
        """``client``'s honest message, encoded once (on first use)."""
        if client not in self.encoded:
            self.encoded[client] = self.protocol.encode(self.updates[client], weight=self.weights[client])
        return self.encoded[client]

    def add_honest(self, client: int) -> None:
        self.accumulator.add(self.message(client))
        self.added.add(client)

    def refused(self, attempt: Callable[[], object], client: int) -> AggregationError:
        """``attempt`` (an encode and add) raises AggregationError naming ``client``."""
        with pytest.raises(AggregationError, match=rf"\bclient {client}\b") as raised:
            attempt()
        return raised.value

    def add_hostile_update(self, update: ClientUpdate, *, weight: float | None = None) -> AggregationError:
        """The client encodes ``update`` (instead of its honest one) and sends it: refused by the client (``encode`` raises
        EncodingDeclined, so that a run leaves the client out of the round) or by the server (``add`` raises AggregationError)."""
        assert update.client_id not in self.encoded
        self.left_out.add(update.client_id)
        weight = self.weights[update.client_id] if weight is None else weight
        try:
            message = self.protocol.encode(update, weight=weight)
        except EncodingDeclined as declined:
            assert re.search(rf"\bclient {update.client_id}\b", str(declined)), declined
            return declined
        return self.refused(lambda: self.accumulator.add(message), update.client_id)

    def finish_and_check(self) -> None:
        """Every honest message not added yet is added; the result is the weighted mean of the honest updates sent."""
        kept = [c for c in range(NUM_CLIENTS) if c not in self.left_out]
        for client in kept:
            if client not in self.added:
                self.add_honest(client)
        result = self.accumulator.result()
        updates, weights = [self.updates[c] for c in kept], [self.weights[c] for c in kept]
        total = sum(weights)
        assert result.num_clients == len(kept)
        assert result.total_weight == pytest.approx(total, abs=1e-3)
        for name in updates[0].delta:
            expected = sum(w * u.delta[name].astype(np.float64) for u, w in zip(updates, weights, strict=True)) / total
            assert result.mean_delta[name].shape == expected.shape
            np.testing.assert_allclose(result.mean_delta[name], expected, rtol=0, atol=TOLERANCE, err_msg=name)
        for name in updates[0].statistics:
            expected = sum(w * u.statistics[name] for u, w in zip(updates, weights, strict=True)) / total
            np.testing.assert_allclose(result.mean_statistics[name], expected, rtol=0, atol=TOLERANCE, err_msg=name)


def build(name: str) -> AggregationProtocol:
    config = config_from_dict({"secure_aggregation": {"protocol": name, **SETTINGS}})
    return PROTOCOLS.get(name).from_config(config.secure_aggregation, seed=0)


def begin(name: str) -> Round:
    protocol = build(name)
    old, old_weights = make_updates(ROUND - 1, seed=4)
    layout = VectorLayout.of(old[0])  # the server's expectation, from its own model
    protocol.begin_round(ROUND - 1, range(NUM_CLIENTS), weight_bound=WEIGHT_BOUND, layout=layout)
    replay = protocol.encode(old[0], weight=old_weights[0])
    updates, weights = make_updates(ROUND, seed=5)
    protocol.begin_round(ROUND, range(NUM_CLIENTS), weight_bound=WEIGHT_BOUND, layout=layout)
    return Round(protocol, updates, weights, replay, protocol.accumulator(ROUND))


@pytest.fixture(params=PROTOCOL_NAMES)
def round(request: pytest.FixtureRequest) -> Round:
    return begin(request.param)


def test_every_registered_protocol_is_covered():
    assert {"none", "masking", "ckks"} <= set(PROTOCOL_NAMES)


def test_honest_messages_alone_give_the_weighted_mean(round):
    round.finish_and_check()


def test_a_message_replayed_from_an_earlier_round_is_refused(round):
    error = round.refused(lambda: round.accumulator.add(round.replay), 0)
    assert "round 1" in str(error)
    round.finish_and_check()


def test_a_stale_payload_relabelled_as_this_round_is_refused(round):
    if not round.protocol.hides_updates:
        pytest.skip(SECURE_ONLY)
    relabelled = ClientMessage(0, ROUND, dict(round.replay.payload), round.replay.num_examples)
    round.refused(lambda: round.accumulator.add(relabelled), 0)
    round.finish_and_check()


def test_a_second_message_from_a_client_is_refused(round):
    round.add_honest(0)
    error = round.refused(lambda: round.accumulator.add(round.message(0)), 0)
    assert "twice" in str(error)
    round.finish_and_check()


def test_a_message_from_a_client_that_is_not_a_participant_is_refused(round):
    stranger = NUM_CLIENTS + 2
    forged = ClientMessage(stranger, ROUND, dict(round.message(1).payload), round.message(1).num_examples)
    error = round.refused(lambda: round.accumulator.add(forged), stranger)
    assert "not a participant" in str(error)
    round.finish_and_check()


WRONG_SHAPES: dict[str, Callable[[ClientUpdate], ClientUpdate]] = {
    "an array one entry longer": lambda u: u.replace_delta({**u.delta, "fc.bias": np.zeros(6, np.float32)}),
    "an array reshaped": lambda u: u.replace_delta({**u.delta, "conv.weight": u.delta["conv.weight"].reshape(4, 9)}),
    "an array missing": lambda u: u.replace_delta({"conv.weight": u.delta["conv.weight"]}),
    "an extra array": lambda u: u.replace_delta({**u.delta, "extra": np.zeros(3, np.float32)}),
    "a statistic missing": lambda u: ClientUpdate(u.client_id, u.round, dict(u.delta), u.num_examples),
}


@pytest.mark.parametrize("change", sorted(WRONG_SHAPES))
def test_an_update_of_another_layout_than_the_announced_one_is_refused(round, change):
    round.add_hostile_update(WRONG_SHAPES[change](round.updates[0]))  # the first of the round: the announced layout decides
    round.add_honest(1)
    round.add_hostile_update(WRONG_SHAPES[change](round.updates[2]))
    round.finish_and_check()


NON_FINITE: dict[str, Callable[[ClientUpdate], ClientUpdate]] = {
    "NaN in a delta": lambda u: u.replace_delta({**u.delta, "fc.bias": np.full(5, np.nan, np.float32)}),
    "+inf in a delta": lambda u: u.replace_delta({**u.delta, "conv.weight": np.full((4, 3, 3), np.inf, np.float32)}),
    "one -inf entry": lambda u: u.replace_delta({**u.delta, "fc.bias": np.asarray([0, 0, -np.inf, 0, 0], np.float32)}),
    "NaN in a statistic": lambda u: u.with_statistics(unclipped=np.asarray([np.nan])),
}


@pytest.mark.parametrize("poison", sorted(NON_FINITE))
def test_non_finite_values_are_refused(round, poison):
    round.add_honest(0)
    round.add_hostile_update(NON_FINITE[poison](round.updates[2]))
    round.finish_and_check()


@pytest.mark.parametrize("name", PROTOCOL_NAMES)
@pytest.mark.parametrize("weight", [np.nan, np.inf])
def test_a_non_finite_weight_is_refused(name, weight):
    round = begin(name)
    round.add_hostile_update(round.updates[3], weight=float(weight))
    round.finish_and_check()
