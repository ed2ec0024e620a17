"""t-of-n Shamir secret sharing of short byte strings over the prime field GF(2^521 - 1).

Shamir, "How to Share a Secret", CACM 1979. Secure aggregation shares each client's
mask secrets this way (Bonawitz et al., CCS 2017, Sec. 4): its X25519 private key,
so that survivors can help the server cancel the pairwise masks of a client that
dropped out, and its self-mask seed, so that the server can remove the self mask of
a client that survived. Any ``threshold`` shares rebuild the secret; fewer reveal
nothing about it (information-theoretically).

The field is the Mersenne prime ``p = 2^521 - 1``, large enough to hold a whole
secret of up to 64 bytes (a 32-byte key or seed) as a single field element, so one
share is one ``(id, value)`` pair. The secret is embedded as the integer
``0x01 || secret`` (big-endian) so that leading zero bytes survive the round trip.
The coefficients of the sharing polynomial come from :mod:`secrets`.

Shares carry no authentication: a wrong share makes :func:`combine` return a wrong
secret or, most of the time, fail to decode. Protocols that face malicious share
holders must authenticate shares (e.g. send them encrypted and signed).
"""

from __future__ import annotations

import operator
import secrets
from collections.abc import Mapping, Sequence

PRIME = (1 << 521) - 1
"""The Mersenne prime 2^521 - 1: the field the shares live in."""

MAX_SECRET_BYTES = 64
"""The longest secret one field element holds (with its 0x01 length marker)."""

FIELD_BYTES = 66
"""Bytes of a field element on the wire (big-endian, ceil(521 / 8))."""

ID_BYTES = 4
"""Bytes of a share id on the wire (big-endian, unsigned)."""

SHARE_BYTES = ID_BYTES + FIELD_BYTES
"""Length of :func:`share_to_bytes`' output."""

_MAX_ID = (1 << (8 * ID_BYTES)) - 1


def split(secret: bytes, *, threshold: int, share_ids: Sequence[int]) -> dict[int, int]:
    """Split ``secret`` into one share per id, any ``threshold`` of which rebuild it.

    A polynomial ``f`` of degree ``threshold - 1`` with ``f(0) = encode(secret)`` and
    uniformly random other coefficients (from :func:`secrets.randbelow`) is evaluated at
    each id.

    Parameters
    ----------
    secret
        Up to :data:`MAX_SECRET_BYTES` bytes, e.g. a 32-byte private key or seed.
    threshold
        ``t``: how many shares rebuild the secret; ``1 <= t <= len(share_ids)``. With
        ``t = 1`` every share *is* the secret.
    share_ids
        Distinct x-coordinates in ``1 .. 2^32 - 1`` (0 would be the secret itself), e.g.
        ``client_id + 1`` for each holder.

    Returns
    -------
    dict[int, int]
        ``{share_id: f(share_id)}``, values in ``[0, PRIME)``.

    Raises
    ------
    ValueError
        For a secret that is too long, repeated or out-of-range ids, or a threshold out of range.
    """
    ids = [_share_id(i) for i in share_ids]
    if len(set(ids)) != len(ids):
        raise ValueError(f"share_ids must be distinct, got {sorted(ids)}")
    t = operator.index(threshold)
    if not 1 <= t <= len(ids):
        raise ValueError(f"threshold must be between 1 and the number of shares ({len(ids)}), got {t}")
    coefficients = [_encode_secret(secret)] + [secrets.randbelow(PRIME) for _ in range(t - 1)]
    return {i: _evaluate(coefficients, i) for i in ids}


def combine(shares: Mapping[int, int], *, threshold: int) -> bytes:
    """Rebuild the secret from at least ``threshold`` shares by Lagrange interpolation at 0.

    Exactly ``threshold`` shares (those with the smallest ids) are used; consistent extra
    shares would give the same result.

    Parameters
    ----------
    shares
        ``{share_id: value}`` as produced by :func:`split` (any subset of them).
    threshold
        The ``threshold`` the secret was split with.

    Returns
    -------
    bytes
        The secret.

    Raises
    ------
    ValueError
        When fewer than ``threshold`` shares are given, a share is malformed, or the
        interpolated value is not an encoded secret (a wrong share, shares of different
        secrets, or a threshold lower than the one used to split).
    """
    t = operator.index(threshold)
    if t < 1:
        raise ValueError(f"threshold must be at least 1, got {t}")
    if len(shares) < t:
        raise ValueError(f"{len(shares)} shares cannot rebuild a secret split with threshold {t}; at least {t} are needed")
    points = [(_share_id(i), _field_value(v)) for i, v in sorted(shares.items())[:t]]
    return _decode_secret(_interpolate_at_zero(points))


def share_to_bytes(share_id: int, value: int) -> bytes:
    """A share as :data:`SHARE_BYTES` bytes: 4-byte id then 66-byte value, both big-endian."""
    return _share_id(share_id).to_bytes(ID_BYTES, "big") + _field_value(value).to_bytes(FIELD_BYTES, "big")


def share_from_bytes(data: bytes) -> tuple[int, int]:
    """The ``(share_id, value)`` pair that :func:`share_to_bytes` wrote; ValueError for malformed data."""
    if len(data) != SHARE_BYTES:
        raise ValueError(f"a serialized share is {SHARE_BYTES} bytes, got {len(data)}")
    share_id = int.from_bytes(data[:ID_BYTES], "big")
    value = int.from_bytes(data[ID_BYTES:], "big")
    return _share_id(share_id), _field_value(value)


def _evaluate(coefficients: Sequence[int], x: int) -> int:
    """``sum_j c_j x^j mod PRIME`` by Horner's rule."""
    acc = 0
    for c in reversed(coefficients):
        acc = (acc * x + c) % PRIME
    return acc


def _interpolate_at_zero(points: Sequence[tuple[int, int]]) -> int:
    """``f(0)`` for the polynomial of degree ``len(points) - 1`` through ``points``.

    ``f(0) = sum_i y_i * prod_{j != i} x_j / (x_j - x_i)``; the products are accumulated
    as one numerator and one denominator per term, so there is one inversion per share.
    """
    total = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        total = (total + yi * num * pow(den, -1, PRIME)) % PRIME
    return total


def _encode_secret(secret: bytes) -> int:
    if not isinstance(secret, bytes | bytearray):
        raise TypeError(f"secret must be bytes, got {type(secret).__name__}")
    if len(secret) > MAX_SECRET_BYTES:
        raise ValueError(f"secret is {len(secret)} bytes; at most {MAX_SECRET_BYTES} fit one field element")
    return int.from_bytes(b"\x01" + bytes(secret), "big")


def _decode_secret(value: int) -> bytes:
    length = (value.bit_length() + 7) // 8
    raw = value.to_bytes(length, "big")
    if length < 1 or length > MAX_SECRET_BYTES + 1 or raw[0] != 1:
        raise ValueError(
            "the shares do not rebuild an encoded secret: a share is wrong, the shares belong to "
            "different secrets, or the threshold is lower than the one used to split"
        )
    return raw[1:]


def _share_id(share_id: int) -> int:
    i = operator.index(share_id)
    if not 1 <= i <= _MAX_ID:
        raise ValueError(f"share ids must be between 1 and {_MAX_ID} (0 is the secret), got {i}")
    return i


def _field_value(value: int) -> int:
    v = operator.index(value)
    if not 0 <= v < PRIME:
        raise ValueError(f"share values must lie in [0, 2^521 - 1), got a {v.bit_length()}-bit value")
    return v
