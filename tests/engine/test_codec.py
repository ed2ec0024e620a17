"""The wire codec: every value a protocol stage carries round-trips exactly; nothing else is built."""

import base64
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from secure_ffm.engine.aggregation import VectorLayout
from secure_ffm.engine.codec import CodecError, from_bytes, pack, to_bytes, unpack
from secure_ffm.engine.wire import ClientMessage, FitInstructions
from secure_ffm.secagg.masking_protocol import EncryptedShare, RoundSetup, ShareKeys
from secure_ffm.transports.base import FitRequest


def roundtrip(value):
    text, arrays = pack(value)
    return unpack(text, arrays)


def test_a_round_setup_with_int_keyed_maps_and_frozensets_round_trips():
    setup = RoundSetup(
        round=3,
        public_keys={0: (b"a" * 32, b"b" * 32), 5: (b"c" * 32, b"d" * 32)},
        neighbours={0: frozenset({5}), 5: frozenset({0})},
        threshold=2,
        weight_bound=12.5,
        clip_range=1.0,
        levels=2**20,
        layout=VectorLayout((("w", (2, 3)),), (("s", ()),)),
        integer_values=True,
    )
    assert roundtrip(setup) == setup


def test_a_fit_request_carries_parameters_bitwise_and_the_payload_shares():
    parameters = {"w": np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32), "b": np.full((), 2.5, dtype=np.float32)}
    shares = (EncryptedShare(1, 2, 3, b"n" * 12, b"\x00\xff" * 20),)
    request = FitRequest(FitInstructions(3, parameters, {"lr": 0.1, "mode": "x", "on": True}, {}), shares)
    back = roundtrip(request)
    assert back.payload == shares and back.instructions.config == request.instructions.config
    for key, array in parameters.items():
        got = back.instructions.parameters[key]
        assert got.dtype == array.dtype and got.shape == array.shape and got.tobytes() == array.tobytes()


def test_a_client_message_with_bytes_and_arrays_round_trips():
    message = ClientMessage(4, 2, {"masked": np.arange(5, dtype=np.uint32), "ctx": b"\x01\x02"}, 17, {"train_loss": float("nan")})
    back = roundtrip(message)
    assert back.payload["ctx"] == b"\x01\x02" and back.payload["masked"].tolist() == list(range(5))
    assert np.isnan(back.metrics["train_loss"]) and back.num_examples == 17


def test_bytes_travel_as_arrays_not_inside_the_json():
    text, arrays = pack(ShareKeys(1, 1, (), b"\xaa" * 1000))
    assert len(text) < 200 and sum(a.nbytes for a in arrays.values()) == 1000


def test_an_unregistered_class_is_refused_on_both_sides():
    class Evil:
        pass

    with pytest.raises(CodecError, match="cannot cross the wire"):
        pack(Evil())
    with pytest.raises(CodecError, match="not a registered wire record"):
        unpack(json.dumps({"$c": "os.system", "f": {}}), {})


def test_an_object_array_is_refused():
    with pytest.raises(CodecError, match="dtype"):
        unpack(json.dumps({"$a": "a0"}), {"a0": np.array([object()], dtype=object)})


def test_a_record_with_a_wrong_field_type_or_missing_field_is_refused():
    text, arrays = pack(EncryptedShare(1, 2, 3, b"n", b"c"))
    tree = json.loads(text)
    tree["f"]["nonce"] = "not bytes"
    with pytest.raises(CodecError, match="nonce is a str, not a bytes"):
        unpack(json.dumps(tree), arrays)
    del tree["f"]["nonce"]
    with pytest.raises(CodecError, match="required"):
        unpack(json.dumps(tree), arrays)


@pytest.mark.parametrize(
    ("metrics", "problem"),
    [
        ({"train_seconds": "0.5"}, "metrics['train_seconds'] is a str, not a int or float"),
        ({"train_loss": [1.0]}, "metrics['train_loss'] is a list"),
        ({"steps": None}, "metrics['steps'] is a NoneType"),
        ([["steps", 1.0]], "metrics is a list, not a table"),
        ({"train_seconds": 10**400}, "metrics['train_seconds'] is a int, not a int or float"),  # beyond float64
    ],
    ids=["text", "list", "null", "not-a-table", "integer-beyond-float64"],
)
def test_a_client_messages_metrics_must_be_numbers(metrics, problem):
    """The server adds the metrics up (train_seconds, the loss mean): a text among them ended its run there."""
    text, arrays = pack(ClientMessage(1, 2, {"w": np.zeros(3, dtype=np.float32)}, 10, {"steps": 1.0}))
    tree = json.loads(text)
    tree["f"]["metrics"] = json.loads(pack(metrics)[0])
    with pytest.raises(CodecError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        unpack(json.dumps(tree), arrays)


def test_an_integer_a_float_holds_is_still_a_float_fields_value():
    text, arrays = pack(ClientMessage(1, 2, {"w": np.zeros(3, dtype=np.float32)}, 10, {"steps": 2**1000}))
    assert unpack(text, arrays).metrics["steps"] == 2**1000


def test_numeric_metrics_nan_included_still_round_trip():
    message = roundtrip(ClientMessage(1, 2, {"w": np.zeros(3, dtype=np.float32)}, 10, {"steps": 2, "train_loss": float("nan")}))
    assert message.metrics["steps"] == 2 and np.isnan(message.metrics["train_loss"])


def test_a_missing_array_reference_is_refused():
    with pytest.raises(CodecError, match="missing array"):
        unpack(json.dumps({"$b": "a7"}), {})


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**62), 2**62), st.floats(allow_nan=False), st.text(max_size=8), st.binary(max_size=16)
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(st.one_of(st.integers(0, 99), st.text(max_size=4)), inner, max_size=4),
        st.frozensets(st.integers(0, 99), max_size=4),
    ),
    max_leaves=20,
)


@given(values)
def test_plain_values_round_trip_exactly(value):
    assert roundtrip(value) == value
    assert from_bytes(to_bytes(value)) == value


def test_to_bytes_writes_bytes_inline_and_from_bytes_still_reads_them_as_arrays():
    state = {"keys": {i: (bytes([i]) * 32, b"") for i in range(20)}, "ids": frozenset(range(20)), "w": np.arange(3.0)}
    document = json.loads(to_bytes(state))
    assert list(document["a"]) == ["a0"]  # only the real array goes to the table; the 40 byte strings are base64 text
    assert from_bytes(to_bytes(state))["keys"] == state["keys"]
    # the form written before 2026-12-06 (client states in checkpoints, CKKS key files): bytes as uint8 arrays
    text, arrays = pack(state)
    table = {k: [a.dtype.str, list(a.shape), base64.b64encode(a.tobytes()).decode()] for k, a in arrays.items()}
    old = json.dumps({"v": text, "a": table}).encode()
    back = from_bytes(old)
    assert back["keys"] == state["keys"] and back["ids"] == state["ids"] and back["w"].tolist() == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("body", ["not base64!", 7, ["AA=="]])
def test_malformed_inline_bytes_are_refused(body):
    with pytest.raises(CodecError, match="base64 bytes"):
        unpack(json.dumps({"$B": body}), {})


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"$t": ' * 5_000 + "[]" + "}" * 5_000], ids=["json-lists", "tuples"])
def test_a_deeply_nested_message_is_refused_as_a_codec_error(text):
    """A peer's message is input: json.loads and the unpacker raised RecursionError, which no caller caught (a node's
    reply ended the server's run)."""
    with pytest.raises(CodecError, match="nested too deeply"):
        unpack(text, {})
    with pytest.raises(CodecError):
        from_bytes(json.dumps({"a": {}, "v": text}).encode())
