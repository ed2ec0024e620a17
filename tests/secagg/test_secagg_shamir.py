"""Shamir sharing over GF(2^521 - 1): every t-subset rebuilds, fewer do not, shares survive the wire."""

import itertools

import pytest

from secure_ffm.secagg.shamir import (
    PRIME,
    SHARE_BYTES,
    InconsistentSharesError,
    combine,
    reconstruct,
    share_from_bytes,
    share_to_bytes,
    split,
)

SECRET = bytes.fromhex("00007f") + bytes(range(29))  # 32 bytes with leading zeros, which must survive
N, T = 6, 4


@pytest.fixture(scope="module")
def shares():
    return split(SECRET, threshold=T, share_ids=range(1, N + 1))


def test_every_subset_of_threshold_shares_rebuilds_the_secret(shares):
    # prepare / execute / assert: all C(6, 4) = 15 subsets, and every larger one
    for size in range(T, N + 1):
        for subset in itertools.combinations(sorted(shares), size):
            assert combine({i: shares[i] for i in subset}, threshold=T) == SECRET


def test_fewer_than_threshold_shares_do_not_rebuild_the_secret(shares):
    for subset in itertools.combinations(sorted(shares), T - 1):
        partial = {i: shares[i] for i in subset}
        # asked for the real threshold, combine refuses
        with pytest.raises(ValueError, match=f"at least {T}"):
            combine(partial, threshold=T)
        # interpolating a lower-degree polynomial through them gives garbage (or fails to decode)
        try:
            assert combine(partial, threshold=T - 1) != SECRET
        except ValueError as error:
            assert "do not rebuild" in str(error)


def test_sharing_is_randomized_and_values_lie_in_the_field():
    first = split(SECRET, threshold=T, share_ids=[1, 2, 3, 4, 5, 6])
    second = split(SECRET, threshold=T, share_ids=[1, 2, 3, 4, 5, 6])
    assert all(0 <= v < PRIME for v in first.values())
    assert first != second
    assert combine(second, threshold=T) == combine(first, threshold=T) == SECRET


def test_shares_round_trip_through_bytes(shares):
    for share_id, value in shares.items():
        data = share_to_bytes(share_id, value)
        assert isinstance(data, bytes) and len(data) == SHARE_BYTES
        assert share_from_bytes(data) == (share_id, value)
    wire = {i: v for i, v in (share_from_bytes(share_to_bytes(i, v)) for i, v in shares.items())}
    assert combine(wire, threshold=T) == SECRET
    with pytest.raises(ValueError, match="70 bytes"):
        share_from_bytes(share_to_bytes(1, 5)[:-1])
    with pytest.raises(ValueError, match="share values"):
        share_from_bytes((1).to_bytes(4, "big") + PRIME.to_bytes(66, "big"))


@pytest.mark.parametrize("secret", [b"", b"\x00", bytes(32), b"\xff" * 64])
def test_edge_secrets_round_trip(secret):
    assert combine(split(secret, threshold=2, share_ids=[7, 9, 11]), threshold=2) == secret


def test_invalid_arguments_are_rejected():
    with pytest.raises(ValueError, match="at most 64"):
        split(bytes(65), threshold=2, share_ids=[1, 2])
    with pytest.raises(ValueError, match="distinct"):
        split(SECRET, threshold=2, share_ids=[1, 2, 2])
    with pytest.raises(ValueError, match="0 is the secret"):
        split(SECRET, threshold=2, share_ids=[0, 1, 2])
    with pytest.raises(ValueError, match="threshold"):
        split(SECRET, threshold=4, share_ids=[1, 2, 3])


# --------------------------------------------------------------------------- reconstruct: shares beyond t check the others


def corrupt(shares, ids, offset=None):
    """``shares`` with the values of ``ids`` moved (still valid field elements): by ``offset``, or by unrelated amounts.

    Unrelated amounts, because equal moves can line up into another low-degree polynomial with the
    right shares (beyond the decoding radius that is a wrong decoding, not a detected error).
    """
    return {i: (v + (offset if offset is not None else 7919 * i * i + 1)) % PRIME if i in ids else v for i, v in shares.items()}


def test_reconstruct_of_consistent_shares_finds_none_wrong(shares):
    for size in range(T, N + 1):
        for subset in itertools.combinations(sorted(shares), size):
            result = reconstruct({i: shares[i] for i in subset}, threshold=T)
            assert result.secret == SECRET and result.wrong == frozenset()


@pytest.mark.parametrize(
    ("num_shares", "threshold", "wrong"),
    [(5, 3, {1}), (5, 3, {5}), (7, 3, {2, 6}), (10, 6, {1, 2}), (10, 6, {4, 9}), (12, 4, {1, 3, 5, 7})],
)
def test_reconstruct_finds_up_to_half_the_spare_shares_wrong_and_rebuilds_without_them(num_shares, threshold, wrong):
    # prepare: (num_shares - threshold) // 2 wrong shares at most, including among the smallest ids that combine uses
    dealt = split(SECRET, threshold=threshold, share_ids=range(1, num_shares + 1))
    bad = corrupt(dealt, wrong, offset=12345)
    # execute
    result = reconstruct(bad, threshold=threshold)
    # assert: the wrong shares are named and the secret is the dealt one
    assert result.wrong == frozenset(wrong)
    assert result.secret == SECRET


@pytest.mark.parametrize(("num_shares", "threshold", "wrong"), [(4, 3, {1}), (5, 3, {2, 4}), (10, 6, {1, 2, 3})])
def test_reconstruct_refuses_shares_with_too_many_wrong_to_tell_which(num_shares, threshold, wrong):
    dealt = split(SECRET, threshold=threshold, share_ids=range(1, num_shares + 1))
    with pytest.raises(InconsistentSharesError, match="lie on no single polynomial"):
        reconstruct(corrupt(dealt, wrong), threshold=threshold)


def test_a_wrong_share_among_the_first_t_silently_shifts_combine_but_not_reconstruct(shares):
    # a holder that knows the public ids can move f(0) by exactly 1: combine decodes a wrong secret without complaint
    ids = sorted(shares)[:T]
    lagrange = 1
    for j in ids:
        if j != ids[0]:
            lagrange = lagrange * j * pow(j - ids[0], -1, PRIME) % PRIME
    bad = corrupt(shares, {ids[0]}, offset=pow(lagrange, -1, PRIME))
    shifted = combine(bad, threshold=T)
    assert shifted != SECRET and len(shifted) == len(SECRET)  # decodes, wrongly and silently
    result = reconstruct(bad, threshold=T)
    assert result.secret == SECRET and result.wrong == frozenset({ids[0]})
