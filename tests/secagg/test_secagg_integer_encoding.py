"""Masking with exact integer encoding (the distributed discrete Gaussian's ring): exact sums, dropouts, refusals."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_secagg_protocol import secure_run  # tests/secagg on sys.path under pytest

from secure_ffm.engine.aggregation import AggregationError
from secure_ffm.engine.wire import ClientUpdate
from secure_ffm.secagg.masking_protocol import MaskingClient, MaskingProtocol
from secure_ffm.secagg.quantization import decode_integers, encode_integers


def integer_updates(n, *, scale=10**6, seed=0):
    rng = np.random.default_rng(seed)
    return [
        ClientUpdate(
            c, 1, {"w": rng.integers(-scale, scale, (4, 3)).astype(np.float64), "b": rng.integers(-scale, scale, 5).astype(np.float64)}, 10
        )
        for c in range(n)
    ]


@given(st.lists(st.integers(-(2**31) + 1, 2**31 - 1), min_size=1, max_size=20))
def test_integers_round_trip_through_the_ring(values):
    assert decode_integers(encode_integers(np.asarray(values, dtype=np.float64))).tolist() == values


@settings(max_examples=30)
@given(st.lists(st.lists(st.integers(-(2**20), 2**20), min_size=3, max_size=3), min_size=1, max_size=8))
def test_the_ring_sum_of_encodings_decodes_to_the_integer_sum(rows):
    total = np.zeros(3, dtype=np.uint32)
    for row in rows:
        total += encode_integers(np.asarray(row, dtype=np.float64))
    assert decode_integers(total).tolist() == np.sum(rows, axis=0).tolist()


def test_non_integers_are_refused():
    with pytest.raises(ValueError, match="integer values"):
        encode_integers(np.asarray([1.0, 2.5]))
    with pytest.raises(ValueError, match="magnitude"):
        encode_integers(np.asarray([2.0**31]))


def test_masked_integer_sum_is_exact():
    updates = integer_updates(6)
    result = secure_run(MaskingProtocol(integer_values=True), updates, [1.0] * 6)
    assert result.total_weight == 6.0
    for name in ("w", "b"):
        expected = sum(u.delta[name] for u in updates) / 6
        np.testing.assert_array_equal(result.mean_delta[name].astype(np.float64), expected.astype(np.float32))


def test_masked_integer_sum_survives_dropouts():
    updates = integer_updates(8, scale=1000)
    result = secure_run(MaskingProtocol(integer_values=True), updates, [1.0] * 8, drop={2, 5})
    kept = [u for u in updates if u.client_id not in {2, 5}]
    assert result.total_weight == 6.0
    np.testing.assert_allclose(result.mean_delta["w"], sum(u.delta["w"] for u in kept) / 6, rtol=0, atol=1e-4)


def test_a_client_with_integer_encoding_refuses_a_fixed_point_set_up():
    protocol = MaskingProtocol(integer_values=False)
    server = protocol.server_round(1, [0, 1, 2], weight_bound=1.0)
    client = MaskingClient(0, integer_values=True)
    adverts = [client.advertise(1), *(MaskingClient(c).advertise(1) for c in (1, 2))]
    setup = server.collect_keys(adverts)
    with pytest.raises(AggregationError, match="refuses a set-up announcing fixed-point"):
        client.share_keys(setup)


def test_a_non_integer_update_is_left_out_of_an_integer_round():
    updates = integer_updates(4, scale=100)
    updates[1] = ClientUpdate(1, 1, {k: v + 0.5 for k, v in updates[1].delta.items()}, 10)
    protocol = MaskingProtocol(integer_values=True)
    protocol.begin_round(1, [0, 1, 2, 3], weight_bound=1.0)
    with pytest.raises(AggregationError, match="left out"):
        protocol.encode(updates[1], weight=1.0)


def test_an_integer_round_refuses_weights_other_than_one():
    # discrete shares are sized for a plain sum: a server asking for example weighting would scale one client past them
    updates = integer_updates(3, scale=100)
    protocol = MaskingProtocol(integer_values=True)
    protocol.begin_round(1, [0, 1, 2], weight_bound=50.0)
    with pytest.raises(AggregationError, match="unweighted"):
        protocol.encode(updates[0], weight=10.0)
