"""Pairwise + self masks: the AES-CTR PRG, exact cancellation, uniform masked vectors, dropout recovery."""

import hashlib

import numpy as np
import pytest
from scipy import stats

from secure_ffm.secagg.graph import harary_graph, recommended_threshold
from secure_ffm.secagg.keys import (
    generate_private_key,
    pair_context,
    private_bytes,
    private_key_from_bytes,
    public_bytes,
    random_seed,
    shared_seed,
)
from secure_ffm.secagg.masking import expand, mask_vector, pairwise_mask, ring_sum, unmask_sum
from secure_ffm.secagg.quantization import decode_sum, encode, error_bound, levels_for
from secure_ffm.secagg.shamir import combine, split

ROUND = 3


def fixed_seed(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def test_prg_is_deterministic_and_seed_dependent():
    a, b = fixed_seed("a"), fixed_seed("b")
    first = expand(a, 1000)
    assert first.dtype == np.uint32 and first.shape == (1000,)
    np.testing.assert_array_equal(first, expand(a, 1000))
    np.testing.assert_array_equal(expand(a, 10), first[:10])  # a longer stream extends a shorter one
    assert np.mean(first == expand(b, 1000)) < 0.01
    # known answer: AES-256 of the zero block under the zero key (FIPS-197 style vector), little-endian words
    np.testing.assert_array_equal(expand(bytes(32), 4), np.frombuffer(bytes.fromhex("dc95c078a2408989ad48a21492842087"), "<u4"))
    with pytest.raises(ValueError, match="32 bytes"):
        expand(b"short", 4)


def test_the_two_ends_of_a_pair_cancel():
    seed = fixed_seed("pair")
    total = pairwise_mask(4, 9, seed, 5000) + pairwise_mask(9, 4, seed, 5000)
    np.testing.assert_array_equal(total, np.zeros(5000, np.uint32))
    np.testing.assert_array_equal(pairwise_mask(4, 9, seed, 5000), expand(seed, 5000))


def make_clients(n, neighbours=None):
    """Keys, self seeds and pair seeds of n clients, each derived on its own side of every pair."""
    neighbours = neighbours or {i: frozenset(range(n)) - {i} for i in range(n)}
    keys = [generate_private_key() for _ in range(n)]
    publics = [public_bytes(k) for k in keys]
    self_seeds = [random_seed() for _ in range(n)]
    pair_seeds = [
        {j: shared_seed(keys[i], publics[j], context=pair_context(round=ROUND, client_a=i, client_b=j)) for j in neighbours[i]}
        for i in range(n)
    ]
    return keys, publics, self_seeds, pair_seeds


def test_full_masks_cancel_and_self_masks_are_all_that_remains():
    # prepare: 5 clients, everyone survives
    n, dim = 5, 3000
    rng = np.random.default_rng(0)
    inputs = [rng.integers(0, 2**32, size=(dim // 3, 3), dtype=np.uint32) for _ in range(n)]
    _, _, self_seeds, pair_seeds = make_clients(n)
    # execute
    masked = [mask_vector(inputs[i], client_id=i, pair_seeds=pair_seeds[i], self_seed=self_seeds[i]) for i in range(n)]
    total = ring_sum(masked)
    # assert: masked total = plain + self masks; removing them gives the exact sum mod 2^32
    plain = ring_sum(inputs)
    self_total = ring_sum(expand(s, dim) for s in self_seeds).reshape(plain.shape)
    np.testing.assert_array_equal(total - self_total, plain)
    result = unmask_sum(total, self_seeds=dict(enumerate(self_seeds)), dropped_pair_seeds={})
    assert result.shape == plain.shape and result.dtype == np.uint32
    np.testing.assert_array_equal(result, plain)
    assert not np.array_equal(masked[0], inputs[0])


def chi_square_uniform_bytes(values: np.ndarray) -> float:
    counts = np.bincount(values.astype(np.int64), minlength=256)
    expected = values.size / 256
    return float(((counts - expected) ** 2 / expected).sum())


def test_a_masked_vector_is_uniform_over_the_ring_and_uncorrelated_with_its_input():
    # prepare: a highly structured input (a quantized ramp with few distinct values)
    size = 1 << 16
    x = encode(np.linspace(-1, 1, size), clip_range=1.0, levels=levels_for(10), rng=np.random.default_rng(1))
    pair_seeds = {peer: fixed_seed(f"pair-{peer}") for peer in (1, 2, 3)}
    # execute
    y = mask_vector(x, client_id=0, pair_seeds=pair_seeds, self_seed=fixed_seed("self"))
    # assert: top and bottom byte pass a chi-square test of uniformity at the 0.1% level ...
    critical = stats.chi2.ppf(0.999, df=255)  # ~330.5
    for byte in (y >> 24, y & 0xFF, (y >> 12) & 0xFF):
        assert chi_square_uniform_bytes(byte) < critical
    assert chi_square_uniform_bytes(x >> 24) > critical  # ... which the unmasked input fails
    # ... the mean is that of the uniform distribution on the ring, and y does not track x
    assert abs(y.astype(np.float64).mean() / 2**32 - 0.5) < 5 * np.sqrt(1 / 12 / size)
    correlation = np.corrcoef(x.astype(np.float64), y.astype(np.float64))[0, 1]
    assert abs(correlation) < 4 / np.sqrt(size)


def test_dropped_clients_masks_are_removed_from_their_rebuilt_keys():
    # prepare: 10 clients; each Shamir-shares its private key and self seed with all 10 (ids i+1)
    n, dim, clip = 10, 1000, 0.5
    threshold = recommended_threshold(n)  # 6
    levels = levels_for(n)
    rng = np.random.default_rng(11)
    values = rng.normal(0, 0.3, size=(n, dim))
    inputs = [encode(v, clip_range=clip, levels=levels, rng=rng) for v in values]
    keys, publics, self_seeds, pair_seeds = make_clients(n)
    holders = [i + 1 for i in range(n)]
    key_shares = [split(private_bytes(k), threshold=threshold, share_ids=holders) for k in keys]
    seed_shares = [split(s, threshold=threshold, share_ids=holders) for s in self_seeds]
    masked = [mask_vector(inputs[i], client_id=i, pair_seeds=pair_seeds[i], self_seed=self_seeds[i]) for i in range(n)]

    # execute: clients 0..3 drop after masking; the server only receives the survivors' vectors
    dropped, survivors = range(4), range(4, n)
    total = ring_sum(masked[i] for i in survivors)
    # each survivor reveals, per peer, a share of the self seed (survivor) or of the key (dropped)
    self_seed_of = {u: combine({s + 1: seed_shares[u][s + 1] for s in survivors}, threshold=threshold) for u in survivors}
    dropped_pair_seeds = {}
    for d in dropped:
        key = private_key_from_bytes(combine({s + 1: key_shares[d][s + 1] for s in survivors}, threshold=threshold))
        dropped_pair_seeds[d] = {
            s: shared_seed(key, publics[s], context=pair_context(round=ROUND, client_a=d, client_b=s)) for s in survivors
        }
    result = unmask_sum(total, self_seeds=self_seed_of, dropped_pair_seeds=dropped_pair_seeds)

    # assert: the exact survivors' sum mod 2^32, which decodes to their real sum
    np.testing.assert_array_equal(result, ring_sum(inputs[i] for i in survivors))
    decoded = decode_sum(result, num_clients=len(survivors), clip_range=clip, levels=levels)
    exact = np.clip(values[list(survivors)], -clip, clip).sum(axis=0)
    assert np.all(np.abs(decoded - exact) <= error_bound(num_clients=len(survivors), clip_range=clip, levels=levels))
    # without the dropped clients' pair masks the result is garbage
    partial = unmask_sum(total, self_seeds=self_seed_of, dropped_pair_seeds={})
    assert np.mean(partial == result) < 0.01
    # the server may never hold both secrets of one client
    with pytest.raises(ValueError, match="both as survivors and as dropped"):
        unmask_sum(total, self_seeds=self_seed_of, dropped_pair_seeds={4: {}})


def test_secagg_plus_neighbourhood_masks_cancel_with_dropouts():
    # prepare: 12 clients masking only with their 4 neighbours in a random Harary graph
    n, k, dim = 12, 4, 500
    graph = harary_graph(n, k, seed=fixed_seed("graph"))
    rng = np.random.default_rng(5)
    inputs = [rng.integers(0, 2**32, size=dim, dtype=np.uint32) for _ in range(n)]
    _, _, self_seeds, pair_seeds = make_clients(n, graph)
    assert all(set(pair_seeds[i]) == graph[i] for i in range(n))
    masked = [mask_vector(inputs[i], client_id=i, pair_seeds=pair_seeds[i], self_seed=self_seeds[i]) for i in range(n)]
    # execute: clients 2 and 7 drop; (here the pair seeds stand in for those rebuilt from key shares)
    dropped = {2, 7}
    survivors = [i for i in range(n) if i not in dropped]
    result = unmask_sum(
        ring_sum(masked[i] for i in survivors),
        self_seeds={u: self_seeds[u] for u in survivors},
        dropped_pair_seeds={d: {s: seed for s, seed in pair_seeds[d].items() if s not in dropped} for d in dropped},
    )
    # assert
    np.testing.assert_array_equal(result, ring_sum(inputs[i] for i in survivors))


def test_invalid_inputs_are_rejected():
    with pytest.raises(TypeError, match="uint32"):
        mask_vector(np.zeros(4, np.float32), client_id=0, pair_seeds={}, self_seed=fixed_seed("s"))
    with pytest.raises(ValueError, match="itself"):
        mask_vector(np.zeros(4, np.uint32), client_id=0, pair_seeds={0: fixed_seed("p")}, self_seed=fixed_seed("s"))
    with pytest.raises(ValueError, match="shape"):
        ring_sum([np.zeros(4, np.uint32), np.zeros(5, np.uint32)])
    with pytest.raises(ValueError, match="not survivors"):
        unmask_sum(np.zeros(4, np.uint32), self_seeds={1: fixed_seed("s")}, dropped_pair_seeds={0: {2: fixed_seed("p")}})
