"""X25519 + HKDF pair seeds: both ends agree, the context separates rounds and pairs."""

import pytest

from secure_ffm.secagg.keys import (
    SEED_BYTES,
    generate_private_key,
    pair_context,
    private_bytes,
    private_key_from_bytes,
    public_bytes,
    random_seed,
    shared_seed,
)
from secure_ffm.secagg.shamir import combine, split


@pytest.fixture(scope="module")
def three_keys():
    return [generate_private_key() for _ in range(3)]


def test_both_sides_derive_the_same_seed(three_keys):
    # prepare
    a, b, _ = three_keys
    context = pair_context(round=5, client_a=2, client_b=9)
    # execute
    seed_ab = shared_seed(a, public_bytes(b), context=context)
    seed_ba = shared_seed(b, public_bytes(a), context=pair_context(round=5, client_a=9, client_b=2))
    # assert
    assert len(seed_ab) == SEED_BYTES and len(public_bytes(a)) == 32
    assert seed_ab == seed_ba


def test_different_context_round_or_pair_gives_a_different_seed(three_keys):
    a, b, c = three_keys
    seeds = {
        shared_seed(a, public_bytes(b), context=pair_context(round=5, client_a=2, client_b=9)),
        shared_seed(a, public_bytes(b), context=pair_context(round=6, client_a=2, client_b=9)),
        shared_seed(a, public_bytes(b), context=pair_context(round=5, client_a=2, client_b=8)),
        shared_seed(a, public_bytes(b), context=pair_context(round=5, client_a=2, client_b=9, session=b"run-2")),
        shared_seed(a, public_bytes(b), context=b"other purpose"),
        shared_seed(a, public_bytes(c), context=pair_context(round=5, client_a=2, client_b=9)),
    }
    assert len(seeds) == 6


def test_a_private_key_rebuilt_from_shamir_shares_derives_the_same_seed(three_keys):
    # the server's path for a dropped client: rebuild its key from shares, recompute its seeds
    a, b, _ = three_keys
    context = pair_context(round=1, client_a=0, client_b=1)
    shares = split(private_bytes(a), threshold=3, share_ids=[1, 2, 3, 4])
    rebuilt = private_key_from_bytes(combine({i: shares[i] for i in (2, 3, 4)}, threshold=3))
    assert public_bytes(rebuilt) == public_bytes(a)
    assert shared_seed(rebuilt, public_bytes(b), context=context) == shared_seed(b, public_bytes(a), context=context)


def test_invalid_inputs_are_rejected(three_keys):
    a, _, _ = three_keys
    with pytest.raises(ValueError, match="own"):
        shared_seed(a, public_bytes(a), context=b"x")
    with pytest.raises(ValueError, match="32 bytes"):
        shared_seed(a, b"\x01" * 31, context=b"x")
    with pytest.raises(ValueError):  # a low-order point gives an all-zero shared secret
        shared_seed(a, bytes(32), context=b"x")
    with pytest.raises(ValueError, match="two different clients"):
        pair_context(round=0, client_a=3, client_b=3)
    assert random_seed() != random_seed() and len(random_seed()) == SEED_BYTES
