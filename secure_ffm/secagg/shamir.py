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
secret or, most of the time, fail to decode. :func:`reconstruct` uses every share it is
given: Shamir shares are a Reed-Solomon codeword (McEliece and Sarwate, "On Sharing Secrets
and Reed-Solomon Codes", CACM 1981), so ``m > t`` shares reveal a wrong one (it lies off the
polynomial the others agree on) and ``m >= t + 2e`` shares find and drop up to ``e`` wrong ones
(Berlekamp-Welch decoding). With exactly ``t`` shares nothing can be checked: a protocol that
must detect a wrong share then needs a commitment to the secret (a public key, a hash).
"""

from __future__ import annotations

import operator
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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


class InconsistentSharesError(ValueError):
    """The shares lie on no single polynomial of degree below the threshold, and too many are off to tell which."""


@dataclass(frozen=True)
class Reconstruction:
    """What :func:`reconstruct` rebuilt, and which shares it left out as wrong."""

    secret: bytes
    wrong: frozenset[int]
    """Ids of the shares that lie off the polynomial all the others agree on."""


def reconstruct(shares: Mapping[int, int], *, threshold: int) -> Reconstruction:
    """Rebuild the secret from all of ``shares``, using those beyond ``threshold`` to find wrong ones.

    The polynomial through the ``threshold`` shares with the smallest ids is checked against
    every other share (any ``threshold``-subset of consistent shares gives the same polynomial).
    When one disagrees, Berlekamp-Welch decoding finds the polynomial that all but at most
    ``e = (m - threshold) // 2`` of the ``m`` shares lie on, and those ``e`` are reported as
    :attr:`Reconstruction.wrong`. With exactly ``threshold`` shares nothing is checked.

    Parameters
    ----------
    shares
        ``{share_id: value}`` as produced by :func:`split`, at least ``threshold`` of them.
    threshold
        The ``threshold`` the secret was split with.

    Beyond ``e`` wrong shares the result is not reliable: most often the shares fit no
    polynomial with so few exceptions (InconsistentSharesError), but wrong shares chosen to line up
    with some right ones can decode to a wrong secret. Callers that face such holders check the
    rebuilt secret against a commitment (a public key, a hash), as the masking server does.

    Raises
    ------
    InconsistentSharesError
        When the shares disagree and more than ``(m - threshold) // 2`` of them would have to be
        wrong (the wrong ones cannot be told from the right ones).
    ValueError
        For too few or malformed shares, or a polynomial whose value at 0 is not an encoded secret.
    """
    t = operator.index(threshold)
    if t < 1:
        raise ValueError(f"threshold must be at least 1, got {t}")
    if len(shares) < t:
        raise ValueError(f"{len(shares)} shares cannot rebuild a secret split with threshold {t}; at least {t} are needed")
    points = [(_share_id(i), _field_value(v)) for i, v in sorted(shares.items())]
    polynomial = _polynomial_through(points[:t])
    if all(_evaluate(polynomial, x) == y for x, y in points[t:]):
        return Reconstruction(_decode_secret(polynomial[0]), frozenset())
    most_wrong = (len(points) - t) // 2
    decoded = _berlekamp_welch(points, t, most_wrong) if most_wrong else None
    if decoded is not None:
        wrong = frozenset(x for x, y in points if _evaluate(decoded, x) != y)
        if len(wrong) <= most_wrong:
            return Reconstruction(_decode_secret(decoded[0]), wrong)
    raise InconsistentSharesError(
        f"the {len(points)} shares lie on no single polynomial of degree below {t}, and telling the wrong ones "
        f"from the right ones needs at least {t} + 2 x (number wrong) shares"
    )


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


def _polynomial_through(points: Sequence[tuple[int, int]]) -> list[int]:
    """Coefficients (constant first) of the polynomial of degree below ``len(points)`` through ``points``.

    Lagrange's form expanded: ``sum_i y_i * L(x) / ((x - x_i) * L'(x_i))`` with ``L = prod_j (x - x_j)``;
    one inversion per point, then any other point is checked in ``O(len(points))`` by Horner's rule.
    """
    vanishing = [1]
    for x, _ in points:
        vanishing = _times_linear(vanishing, x)
    coefficients = [0] * len(points)
    for x, y in points:
        basis = _divide_by_linear(vanishing, x)  # prod_{j != i} (X - x_j)
        scale = y * pow(_evaluate(basis, x), -1, PRIME) % PRIME
        for j, c in enumerate(basis):
            coefficients[j] = (coefficients[j] + scale * c) % PRIME
    return coefficients


def _times_linear(polynomial: Sequence[int], root: int) -> list[int]:
    """``polynomial * (X - root)``, coefficients constant first."""
    out = [0] * (len(polynomial) + 1)
    for j, c in enumerate(polynomial):
        out[j + 1] = (out[j + 1] + c) % PRIME
        out[j] = (out[j] - root * c) % PRIME
    return out


def _divide_by_linear(polynomial: Sequence[int], root: int) -> list[int]:
    """``polynomial / (X - root)`` for a polynomial that ``root`` is a zero of (synthetic division)."""
    out = [0] * (len(polynomial) - 1)
    carry = 0
    for k in range(len(polynomial) - 1, 0, -1):
        carry = (polynomial[k] + root * carry) % PRIME
        out[k - 1] = carry
    return out


def _berlekamp_welch(points: Sequence[tuple[int, int]], t: int, e: int) -> list[int] | None:
    """The polynomial of degree below ``t`` that all but at most ``e`` of ``points`` lie on, or None.

    Finds a monic error locator ``E`` of degree ``e`` and ``Q`` of degree below ``t + e`` with
    ``Q(x_i) = y_i E(x_i)`` at every point (linear in their coefficients); when at most ``e``
    points are wrong, ``Q / E`` is the polynomial (Berlekamp and Welch, US patent 4,633,470, 1986).
    Needs ``len(points) >= t + 2e``.
    """
    rows = []
    for x, y in points:
        powers = [pow(x, j, PRIME) for j in range(t + e + 1)]
        rows.append([*powers[: t + e], *((-y * powers[j]) % PRIME for j in range(e)), y * powers[e] % PRIME])
    solution = _solve(rows, t + 2 * e)
    if solution is None:
        return None
    quotient, remainder = _divide_monic(solution[: t + e], [*solution[t + e :], 1])
    return None if any(remainder) else quotient


def _solve(rows: list[list[int]], unknowns: int) -> list[int] | None:
    """One solution of the augmented linear system ``rows`` over GF(PRIME) (free unknowns 0), or None."""
    rows = [list(r) for r in rows]
    pivots: list[int] = []
    r = 0
    for col in range(unknowns):
        pivot = next((i for i in range(r, len(rows)) if rows[i][col]), None)
        if pivot is None:
            continue
        rows[r], rows[pivot] = rows[pivot], rows[r]
        inverse = pow(rows[r][col], -1, PRIME)
        rows[r] = [v * inverse % PRIME for v in rows[r]]
        for i in range(len(rows)):
            if i != r and rows[i][col]:
                factor = rows[i][col]
                rows[i] = [(a - factor * b) % PRIME for a, b in zip(rows[i], rows[r], strict=True)]
        pivots.append(col)
        r += 1
    if any(row[unknowns] for row in rows[r:]):
        return None  # 0 = nonzero: no solution
    solution = [0] * unknowns
    for i, col in enumerate(pivots):
        solution[col] = rows[i][unknowns]
    return solution


def _divide_monic(numerator: Sequence[int], denominator: Sequence[int]) -> tuple[list[int], list[int]]:
    """Quotient and remainder of polynomial division by a monic ``denominator`` (constant first)."""
    rest = list(numerator)
    degree = len(denominator) - 1
    quotient = [0] * max(1, len(rest) - degree)
    for k in range(len(rest) - 1, degree - 1, -1):
        c = rest[k]
        if c:
            quotient[k - degree] = c
            for j, d in enumerate(denominator):
                rest[k - degree + j] = (rest[k - degree + j] - c * d) % PRIME
    return quotient, rest[:degree]


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
