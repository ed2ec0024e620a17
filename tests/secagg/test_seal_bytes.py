"""A party's CKKS bytes are checked before TenSEAL and SEAL read them (secure_ffm/secagg/seal_bytes.py).

TenSEAL allocated every ciphertext a vector listed, each at its full size, before anything could be checked: 141 bytes
of zstd make an all-zero ciphertext of 131 kB, so a few hundred kB of message cost the server GiBs; a ciphertext with
its NTT flag cleared was accepted and made the honest ones fail to add.
"""

import io
import struct

import numpy as np
import pytest
import tenseal as ts
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_ffm.engine.aggregation import AggregationError, VectorLayout
from secure_ffm.engine.wire import ClientMessage, ClientUpdate
from secure_ffm.secagg import seal_bytes
from secure_ffm.secagg.ckks import CKKSKeyHolder, CKKSParameters, CKKSProtocol, EncryptedAggregate
from secure_ffm.secagg.seal_bytes import HEADER, MEMBERS, CiphertextShape, fresh_vector_bytes, parse_vector, write_vector

DEFAULT = CKKSParameters()  # 8192, (60, 60), 2^40
SMALL = CKKSParameters(4096, (40, 20, 40), 20)


def context(parameters):
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, parameters.poly_modulus_degree, coeff_mod_bit_sizes=list(parameters.coeff_mod_bit_sizes))
    ctx.global_scale = parameters.scale
    return ctx


def shape(parameters):
    return CiphertextShape(parameters.poly_modulus_degree, len(parameters.coeff_mod_bit_sizes) - 1)


def honest(parameters, values=None):
    ctx = context(parameters)
    values = np.linspace(-1, 1, parameters.slots) if values is None else values
    return ctx, values, ts.ckks_vector(ctx, values).serialize()


def members_of(vector: bytes) -> bytes:
    """An honest vector's one ciphertext, uncompressed (what SEAL reads after inflating it)."""
    (ciphertext,) = parse_vector(vector)[1]
    return seal_bytes.fresh_ciphertext_members(ciphertext, shape(SMALL if len(ciphertext) < 100_000 else DEFAULT))


def ciphertext(members: bytes, *, mode=seal_bytes.COMPRESSION_ZSTD) -> bytes:
    body = zstandard.ZstdCompressor(level=3).compress(members) if mode == seal_bytes.COMPRESSION_ZSTD else members
    return HEADER.pack(seal_bytes.SEAL_MAGIC, 16, 4, 3, mode, 0, HEADER.size + len(body)) + body


def with_member(members: bytes, **changes) -> bytes:
    fields = dict(zip(("parms", "ntt", "polys", "degree", "primes", "scale", "correction"), MEMBERS.unpack_from(members, 0), strict=True))
    fields.update(changes)
    return MEMBERS.pack(*fields.values()) + members[MEMBERS.size :]


@pytest.mark.parametrize("parameters", [DEFAULT, SMALL], ids=["default", "small"])
def test_an_honest_vector_passes_uncompressed_and_decrypts_to_its_values(parameters):
    ctx, values, data = honest(parameters)
    checked = fresh_vector_bytes(data, shape(parameters))
    (inner,) = parse_vector(checked)[1]
    assert HEADER.unpack_from(inner, 0)[4] == seal_bytes.COMPRESSION_NONE  # SEAL will not inflate it again
    assert ts.ckks_vector_from(ctx, checked).decrypt() == ts.ckks_vector_from(ctx, data).decrypt()  # the same ciphertext
    np.testing.assert_allclose(ts.ckks_vector_from(ctx, checked).decrypt(), values, atol=2.0 ** (14 - parameters.scale_bits))


def test_a_vector_listing_many_ciphertexts_is_refused_before_tenseal_allocates_them():
    _, _, data = honest(SMALL)
    sizes, _, scale = parse_vector(data)
    members = members_of(data)
    kept = MEMBERS.size + HEADER.size + seal_bytes.COUNT.size
    zero = ciphertext(members[:kept] + bytes(len(members) - kept))  # all-zero coefficients: 65 kB in a few hundred bytes
    assert len(zero) < 300
    many = write_vector(sizes * 2000, [zero] * 2000, scale)
    with pytest.raises(ValueError, match="lists 2000 ciphertexts of 2000 sizes, not one"):
        fresh_vector_bytes(many, shape(SMALL))


def test_a_ciphertext_inflating_past_the_fresh_size_is_refused_reading_no_more_than_that():
    _, _, data = honest(SMALL)
    sizes, _, scale = parse_vector(data)
    compressor = zstandard.ZstdCompressor(level=3, write_content_size=False)
    buffer = io.BytesIO()
    with compressor.stream_writer(buffer, closefd=False) as writer:
        writer.write(members_of(data)[: MEMBERS.size])
        for _ in range(64):
            writer.write(bytes(1 << 20))  # 64 MiB of zeros in about 2 kB
    body = buffer.getvalue()
    bomb = HEADER.pack(seal_bytes.SEAL_MAGIC, 16, 4, 3, seal_bytes.COMPRESSION_ZSTD, 0, HEADER.size + len(body)) + body
    assert len(body) < 10_000
    with pytest.raises(ValueError, match=f"it holds more than {shape(SMALL).members_size} bytes uncompressed"):
        fresh_vector_bytes(write_vector(sizes, [bomb], scale), shape(SMALL))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"ntt": 0}, "not in NTT form"),
        ({"polys": 3}, "it has 3 polynomials of degree 4096 over 2 primes"),
        ({"degree": 8192}, "of degree 8192"),
        ({"primes": 1}, "over 1 primes"),
    ],
)
def test_a_ciphertext_that_is_not_a_fresh_encryptions_shape_is_refused(change, expected):
    _, _, data = honest(SMALL)
    sizes, _, scale = parse_vector(data)
    forged = ciphertext(with_member(members_of(data), **change))
    with pytest.raises(ValueError, match=expected):
        fresh_vector_bytes(write_vector(sizes, [forged], scale), shape(SMALL))


def test_compressed_coefficients_inside_are_refused():
    _, _, data = honest(SMALL)
    sizes, _, scale = parse_vector(data)
    members = members_of(data)
    inner = bytearray(members)
    inner[MEMBERS.size + 5] = seal_bytes.COMPRESSION_ZSTD  # the coefficients' own header says zstd
    with pytest.raises(ValueError, match="coefficients are not a plain array"):
        fresh_vector_bytes(write_vector(sizes, [ciphertext(bytes(inner))], scale), shape(SMALL))


def test_a_header_that_misstates_the_size_or_a_vector_claiming_too_many_values_is_refused():
    _, _, data = honest(SMALL)
    sizes, (one,), scale = parse_vector(data)
    lying = one[:8] + struct.pack("<Q", len(one) + 1) + one[16:]
    with pytest.raises(ValueError, match="header says"):
        fresh_vector_bytes(write_vector(sizes, [lying], scale), shape(SMALL))
    with pytest.raises(ValueError, match="claims 2049 values"):
        fresh_vector_bytes(write_vector([2049], [one], scale), shape(SMALL))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_refused_with_a_value_error_only(data):
    with pytest.raises(ValueError):
        fresh_vector_bytes(data, shape(SMALL))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2_000), st.integers(1, 255))
def test_a_flipped_byte_of_an_honest_vector_is_refused_or_stays_a_fresh_ciphertext(position, flip):
    ctx, _, data = honest(SMALL, np.ones(8))
    damaged = bytearray(data)
    damaged[position] ^= flip
    try:
        checked = fresh_vector_bytes(bytes(damaged), shape(SMALL))
    except ValueError:
        return
    assert len(checked) <= HEADER.size * 2 + shape(SMALL).members_size + 64  # never more than a fresh ciphertext


def test_the_server_refuses_a_listing_vector_as_that_clients_message_and_sums_the_others():
    protocol = CKKSProtocol(parameters=SMALL, key_holder="authority")
    rng = np.random.default_rng(0)
    updates = [ClientUpdate(c, 1, {"w": rng.normal(0, 0.05, 50).astype(np.float32)}, 10) for c in range(3)]
    protocol.begin_round(1, range(3))
    accumulator = protocol.accumulator(1)
    messages = [protocol.encode(u, weight=1.0) for u in updates]
    key = "ciphertext/00000"
    sizes, cts, scale = parse_vector(messages[0].payload[key])
    hostile = ClientMessage(0, 1, {**messages[0].payload, key: write_vector(sizes * 500, cts * 500, scale)}, 10)
    with pytest.raises(AggregationError, match="client 0 sent ciphertext 0 that is not a fresh encryption: its vector lists 500"):
        accumulator.add(hostile)
    for message in messages[1:]:
        accumulator.add(message)
    expected = (updates[1].delta["w"] + updates[2].delta["w"]) / 2
    np.testing.assert_allclose(accumulator.result().mean_delta["w"], expected, atol=5e-3)  # SMALL: a scale of 2^20


def test_the_key_holder_refuses_a_servers_aggregate_of_the_wrong_shape():
    holder = CKKSKeyHolder(SMALL, key_holder="authority")
    data = ts.ckks_vector(ts.context_from(holder.secret_context()), np.ones(8)).serialize()
    sizes, cts, scale = parse_vector(data)
    layout = VectorLayout.of_arrays({"w": np.zeros(4, np.float32)}).to_bytes()  # one ciphertext's worth of values
    aggregate = EncryptedAggregate(1, 1, layout, holder.fingerprint, (write_vector(sizes * 300, cts * 300, scale),))
    with pytest.raises(AggregationError, match="does not decrypt .*its vector lists 300 ciphertexts"):
        holder.decryptor().decrypt(aggregate)


def test_a_zstd_frame_declaring_a_huge_size_is_read_within_the_bound():
    """zstandard's one-shot decompress allocates what a frame's header declares (a forged 2^40 asked for 1 TiB): the
    check reads through a stream, at most the fresh size plus one byte, whatever the header says."""
    frame = zstandard.ZstdCompressor(write_content_size=True).compress(b"x" * 1000)
    assert frame[4] == 0x60  # single segment, a 2-byte content size: replaced by an 8-byte one of 2^40
    forged = frame[:4] + bytes([0xE0]) + (1 << 40).to_bytes(8, "little") + frame[7:]
    try:
        members = seal_bytes._inflate(seal_bytes.COMPRESSION_ZSTD, forged, 100)
    except ValueError:  # refused as a damaged stream: nothing allocated for it either
        return
    assert len(members) <= 101  # what the caller then refuses as more than a fresh ciphertext
