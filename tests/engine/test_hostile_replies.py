"""What one party's bytes can make the server do (an audit of 2026-12-07): each of these ended the server's run, or made it
allocate far more than the message's own size, before it was refused as that party's bad message."""

import io

import numpy as np
import pytest

from secure_ffm.engine.aggregation import AggregationError, PlaintextAggregation, VectorLayout
from secure_ffm.engine.codec import CodecError, pack, unpack
from secure_ffm.engine.wire import ClientMessage


def test_an_integer_json_cannot_read_is_a_codec_error():
    with pytest.raises(CodecError, match="JSON cannot read"):
        unpack('{"$d": [["n", ' + "9" * 5000 + "]]}", {})


def test_bytes_referred_to_many_times_are_made_once():
    text, arrays = pack({"k": b"x" * 1024})
    reference = text[text.index('{"$b"') : text.index("}", text.index('{"$b"')) + 1]
    many = unpack('{"$t": [' + ", ".join([reference] * 1000) + "]}", arrays)  # 1,000 references to one 1 kB array
    assert len({id(b) for b in many}) == 1  # one bytes object, not 1,000 copies (4 MiB of references made 1.6 GiB)


@pytest.mark.parametrize("text", ['{"$fs": [2305843009213693951, 4611686018427387902]}', '{"$d": [[2305843009213693951, 1]]}'])
def test_set_members_and_keys_beyond_2_53_are_refused(text):
    # multiples of 2^61 - 1 all hash alike: a set of them took quadratic time to rebuild
    with pytest.raises(CodecError, match="beyond 2\\^53"):
        unpack(text, {})


@pytest.mark.parametrize(
    "payload",
    [
        {PlaintextAggregation.WEIGHT_KEY: np.zeros(0), "w": np.zeros(3)},
        {PlaintextAggregation.WEIGHT_KEY: np.ones(1), "w": b"abc"},
        [("w", np.zeros(3))],
        {PlaintextAggregation.WEIGHT_KEY: np.ones(1), 7: np.zeros(3)},
    ],
    ids=["empty weight", "bytes value", "a list", "an int key"],
)
def test_a_malformed_plaintext_payload_is_that_clients_bad_message(payload):
    protocol = PlaintextAggregation()
    protocol.begin_round(1, [0, 1], weight_bound=10.0)
    accumulator = protocol.accumulator(1)
    with pytest.raises(AggregationError):
        accumulator.add(ClientMessage(0, 1, payload, 10, {}))


@pytest.mark.parametrize("data", [2**44, "[]", b"x" * ((1 << 24) + 1)])
def test_a_layout_that_is_not_bytes_or_too_long_is_refused_before_any_allocation(data):
    with pytest.raises(ValueError, match="not a vector layout"):
        VectorLayout.from_bytes(data)


def test_a_forged_npy_header_is_refused_before_numpy_allocates_it():
    from flwr.app import Array

    from secure_ffm.flower.app import checked_numpy

    honest = Array.from_numpy_ndarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    np.testing.assert_array_equal(checked_numpy(honest), np.arange(6, dtype=np.float32).reshape(2, 3))
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f8", "fortran_order": False, "shape": (2**40,)})
    forged = Array(dtype="float64", shape=(1,), stype="numpy.ndarray", data=buffer.getvalue())
    with pytest.raises(ValueError, match="declares 8796093022208 bytes"):
        checked_numpy(forged)


def test_a_node_ledger_of_more_steps_than_a_run_takes_is_refused():
    from secure_ffm.privacy.accounting import PrivacyLedger
    from secure_ffm.run.deployment import MAX_NODE_LEDGER_STEPS, check_node_ledger

    ledger = PrivacyLedger(accountant="prv", delta=1e-5)
    ledger.record(noise_multiplier=1.0, sample_rate=0.01, steps=MAX_NODE_LEDGER_STEPS + 1)  # 10^8 asked 1.15 TiB
    with pytest.raises(ValueError, match="beyond the 100000 steps"):
        check_node_ledger({"ledger": ledger.to_json(), "epsilon": 1.0}, None)


def digits_config(**sections):
    """One round of the CNN on three clients of scikit-learn's digits."""
    from secure_ffm.config import config_from_dict

    raw = {
        "data": {"dataset": "digits", "max_train_examples": 90, "max_test_examples": 20, "num_clients": 3},
        "model": {"arch": "cnn", "finetune": "full"},
        "client": {"local_steps": 1, "batch_size": 8},
        "server": {"rounds": 1},
        **sections,
    }
    return config_from_dict(raw)


def test_whatever_a_message_makes_a_protocol_raise_leaves_that_client_out_not_the_run(monkeypatch, caplog):
    from secure_ffm.engine import aggregation
    from secure_ffm.run.simulation import Simulation, prepare_run

    config = digits_config()
    original = aggregation.PlaintextAccumulator.add

    def add(self, message):  # a bug the client's bytes reach: any exception, not only AggregationError
        if message.client_id == 1:
            raise TypeError("unhashable type: 'list'")
        return original(self, message)

    monkeypatch.setattr(aggregation.PlaintextAccumulator, "add", add)
    row = Simulation(prepare_run(config)).orchestrator.run_round(1)
    assert row["clients"] == [0, 2] and row["rejected_clients"] == [1]
    assert "client 1's message could not be read (TypeError" in caplog.text


def test_a_stage_reply_that_makes_the_protocol_raise_aborts_the_round_not_the_run(monkeypatch, caplog):
    from secure_ffm.run.simulation import Simulation, prepare_run
    from secure_ffm.secagg import masking_protocol

    config = digits_config(secure_aggregation={"protocol": "masking"})

    def unmask(self, request, responses):  # what a malformed unmask reply the checks missed would do
        raise KeyError("a field the server expected")

    monkeypatch.setattr(masking_protocol.MaskingServer, "unmask", unmask)
    row = Simulation(prepare_run(config)).orchestrator.run_round(1)
    assert row["aborted"] and "a closing reply could not be read (KeyError" in row["aborted"]
