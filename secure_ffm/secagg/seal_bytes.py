"""Check a CKKS vector's bytes before TenSEAL and SEAL read them.

A party's CKKS payload is TenSEAL's ``CKKSVectorProto`` (protobuf: ``repeated uint32 sizes = 1; repeated bytes
ciphertexts = 2; double scale = 3``), each ciphertext SEAL's serialization: a 16-byte header (magic ``0xA15E``, header
size, version, compression mode, total size) and the ciphertext's members, compressed with zstd by default, ending in
the coefficients' own nested serialization (a header and a count). TenSEAL loads every ciphertext a vector lists and
SEAL allocates each one's coefficients before anything can check them: 141 bytes of zstd make a 131 kB all-zero
ciphertext, so a message of a few hundred kB listing thousands of them per vector made the server allocate GiBs
(an audit of 2026-12-07 measured 276 kB costing 4 GiB and 8.6 s before the refusal). A ciphertext whose NTT-form
flag was cleared was accepted too, and made every honest ciphertext after it fail to add.

:func:`fresh_vector_bytes` parses the vector itself and accepts exactly one ciphertext of the shape a fresh
encryption (or a sum of fresh encryptions) has under the round's parameters: NTT form, two polynomials, the
context's degree and data primes, the coefficients uncompressed inside. It inflates the ciphertext with a bound (the
honest size, never more) and hands TenSEAL the same vector with its ciphertext uncompressed, so SEAL does not inflate
it again: what a message can make the server allocate is what an honest message of its length would.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Any

SEAL_MAGIC = 0xA15E
HEADER = struct.Struct("<HBBBBHQ")
"""SEAL's serialization header: magic, header size (16), version major and minor, compression mode, reserved, total
size in bytes (header included)."""
COMPRESSION_NONE, COMPRESSION_ZLIB, COMPRESSION_ZSTD = 0, 1, 2
MEMBERS = struct.Struct("<32sBQQQdQ")
"""A SEAL ciphertext's members before its coefficients: parms_id, NTT form, polynomial count, polynomial modulus
degree, coefficient modulus count, scale, correction factor."""
COUNT = struct.Struct("<Q")


@dataclass(frozen=True)
class CiphertextShape:
    """What a fresh CKKS ciphertext (or a sum of them) holds under one set of parameters."""

    poly_modulus_degree: int
    data_primes: int
    polys: int = 2

    @property
    def words(self) -> int:
        """Its coefficients: one 64-bit word per polynomial, prime and degree."""
        return self.polys * self.data_primes * self.poly_modulus_degree

    @property
    def members_size(self) -> int:
        """The bytes of its members, uncompressed: the members, then the coefficients' header, count and words."""
        return MEMBERS.size + HEADER.size + COUNT.size + 8 * self.words

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if at >= len(data) or shift > 63:
            raise ValueError("a truncated or overlong varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def _write_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def parse_vector(data: bytes | memoryview) -> tuple[list[int], list[Any], Any]:
    """TenSEAL's ``CKKSVectorProto``: its sizes, its ciphertexts (the bytes of each) and its scale field's 8 bytes; views
    into ``data`` when it is a memoryview (nothing copied)."""
    sizes: list[int] = []
    ciphertexts: list[Any] = []
    scale: Any = None
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        field, wire = key >> 3, key & 7
        if field == 1 and wire == 0:
            value, at = _varint(data, at)
            sizes.append(value)
        elif field in (1, 2) and wire == 2:
            length, at = _varint(data, at)
            if at + length > len(data):
                raise ValueError(f"field {field} runs {at + length - len(data)} bytes past the end")
            chunk = data[at : at + length]
            at += length
            if field == 2:
                ciphertexts.append(chunk)
                continue
            inner = 0
            while inner < len(chunk):
                value, inner = _varint(chunk, inner)
                sizes.append(value)
        elif field == 3 and wire == 1:
            if at + 8 > len(data):
                raise ValueError("a truncated scale")
            scale, at = data[at : at + 8], at + 8
        else:
            raise ValueError(f"an unexpected field {field} (wire type {wire})")
    return sizes, ciphertexts, scale


def write_vector(sizes: list[int], ciphertexts: list[bytes], scale: bytes | None) -> bytes:
    """The inverse of :func:`parse_vector` (packed sizes)."""
    return b"".join(_vector_parts(sizes, [[c] for c in ciphertexts], scale))


def _vector_parts(sizes: list[int], ciphertexts: list[list[Any]], scale: Any) -> list[Any]:
    """The pieces of a ``CKKSVectorProto``, each ciphertext given as its parts (joined once by the caller)."""
    packed = b"".join(_write_varint(s) for s in sizes)
    out: list[Any] = [b"\x0a", _write_varint(len(packed)), packed]
    for parts in ciphertexts:
        out += [b"\x12", _write_varint(sum(len(p) for p in parts)), *parts]
    if scale is not None:
        out += [b"\x19", scale]
    return out


def _inflate(mode: int, body: bytes, limit: int) -> bytes:
    """At most ``limit + 1`` bytes of a compressed body (one more than allowed tells that there are more)."""
    if mode == COMPRESSION_NONE:
        return body[: limit + 1]
    if mode == COMPRESSION_ZLIB:
        try:
            return zlib.decompressobj().decompress(body, limit + 1)
        except zlib.error as error:
            raise ValueError(f"its zlib stream is damaged ({error})") from None
    if mode == COMPRESSION_ZSTD:
        import zstandard  # here: only CKKS runs need it

        try:
            with zstandard.ZstdDecompressor().stream_reader(body, read_across_frames=True) as reader:
                return reader.read(limit + 1)
        except zstandard.ZstdError as error:
            raise ValueError(f"its zstd stream is damaged ({error})") from None
    raise ValueError(f"an unknown compression mode {mode}")


def _header(data: bytes, at: int, what: str) -> tuple[int, int]:
    """The compression mode and total size of the SEAL header at ``data[at:]``."""
    if len(data) - at < HEADER.size:
        raise ValueError(f"{what} is shorter than a SEAL header")
    magic, header_size, _major, _minor, mode, reserved, total = HEADER.unpack_from(data, at)
    if magic != SEAL_MAGIC or header_size != HEADER.size or reserved != 0:
        raise ValueError(f"{what} has no SEAL header")
    return mode, total


def fresh_ciphertext_members(ciphertext: bytes, shape: CiphertextShape) -> bytes:
    """The uncompressed members of one SEAL ciphertext, checked to be ``shape``'s; ValueError naming what is not."""
    mode, total = _header(ciphertext, 0, "it")
    if total != len(ciphertext):
        raise ValueError(f"its header says {total} bytes, it has {len(ciphertext)}")
    members = _inflate(mode, ciphertext[HEADER.size :], shape.members_size)
    if len(members) >= MEMBERS.size:  # what it claims to be first, then whether its bytes are that
        _parms, ntt, polys, degree, primes, _scale, _correction = MEMBERS.unpack_from(members, 0)
        if ntt != 1:
            raise ValueError("it is not in NTT form")
        if (polys, degree, primes) != (shape.polys, shape.poly_modulus_degree, shape.data_primes):
            raise ValueError(
                f"it has {polys} polynomials of degree {degree} over {primes} primes, a fresh one "
                f"{shape.polys} of degree {shape.poly_modulus_degree} over {shape.data_primes}"
            )
    if len(members) != shape.members_size:
        held = f"more than {shape.members_size}" if len(members) > shape.members_size else str(len(members))
        raise ValueError(f"it holds {held} bytes uncompressed, a fresh one {shape.members_size}")
    inner_mode, inner_total = _header(members, MEMBERS.size, "its coefficients' array")
    (count,) = COUNT.unpack_from(members, MEMBERS.size + HEADER.size)
    if inner_mode != COMPRESSION_NONE or inner_total != HEADER.size + COUNT.size + 8 * shape.words or count != shape.words:
        raise ValueError("its coefficients are not a plain array of the fresh size")
    return members


def fresh_vector_bytes(data: bytes, shape: CiphertextShape) -> bytes:
    """``data`` (a TenSEAL CKKS vector) with its one ciphertext uncompressed, once it is checked to hold exactly one
    ciphertext of ``shape`` and at most ``shape.slots`` values; ValueError naming what is wrong otherwise."""
    sizes, ciphertexts, scale = parse_vector(memoryview(data))  # views: the ciphertext is not copied out
    if len(ciphertexts) != 1 or len(sizes) != 1:
        raise ValueError(f"its vector lists {len(ciphertexts)} ciphertexts of {len(sizes)} sizes, not one")
    if not 1 <= sizes[0] <= shape.slots:
        raise ValueError(f"its vector claims {sizes[0]} values, a ciphertext holds 1 to {shape.slots}")
    (ciphertext,) = ciphertexts
    members = fresh_ciphertext_members(ciphertext, shape)
    _magic, _size, major, minor, mode, _reserved, _total = HEADER.unpack_from(ciphertext, 0)
    if mode == COMPRESSION_NONE:
        return data  # already what SEAL reads without inflating: nothing to rebuild
    header = HEADER.pack(SEAL_MAGIC, HEADER.size, major, minor, COMPRESSION_NONE, 0, HEADER.size + len(members))
    # write_vector's layout with the ciphertext as header and members, joined once: the members are copied once
    return b"".join(_vector_parts(sizes, [[header, members]], scale))
