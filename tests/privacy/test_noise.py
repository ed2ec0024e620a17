"""The noise core: secret-keyed streams, their distributions, and the secrets behind them."""

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_ffm.privacy.noise import (
    BOX_MULLER_MAX,
    SECRET_BYTES,
    AesCtrWords,
    FastStream,
    NoisePolicy,
    NoiseStream,
    PrivateRandomness,
    SecureStream,
    box_muller_float32,
    box_muller_words,
    derive_key,
    float32_key,
    new_secret,
    seeded_secret,
    words32_key,
)

KEY = bytes(range(32))


@pytest.mark.parametrize("stream", [SecureStream, FastStream])
def test_gaussian_has_the_requested_standard_deviation(stream):
    draws = stream(KEY).normal((200_000,), 3.0)
    # the standard error of a sample std of 200k draws is std / sqrt(2 n) = 0.0047
    assert abs(draws.std() - 3.0) < 0.03 and abs(draws.mean()) < 0.03
    assert abs(np.mean(np.abs(draws) > 6.0) - 0.0455) < 0.003  # the 2-sigma tail of a Gaussian


@pytest.mark.parametrize("stream", [SecureStream, FastStream])
def test_uniforms_lie_in_the_unit_interval(stream):
    draws = stream(KEY).random(100_000)
    assert draws.min() >= 0.0 and draws.max() < 1.0 and abs(draws.mean() - 0.5) < 0.01


@pytest.mark.parametrize("stream", [SecureStream, FastStream])
def test_a_key_gives_one_stream_and_another_key_another(stream):
    assert np.array_equal(stream(KEY).normal((64,), 1.0), stream(KEY).normal((64,), 1.0))
    assert not np.array_equal(stream(KEY).normal((64,), 1.0), stream(bytes(32)).normal((64,), 1.0))


def test_the_secure_gaussian_is_the_scaled_sum_of_four_fresh_draws():
    # the summands go through a reused buffer: the values must be those of four fresh standard_normal arrays
    stream, reference = SecureStream(KEY), SecureStream(KEY).generator
    for shape in ((7, 5), (100,), (3,), (2, 50)):  # a smaller shape after a larger reuses part of the buffer
        expected = sum(reference.standard_normal(shape) for _ in range(4)) * (2.5 / 2)
        np.testing.assert_array_equal(stream.normal(shape, 2.5), expected)


def test_successive_draws_continue_the_stream():
    s = SecureStream(KEY)
    assert not np.array_equal(s.normal((16,), 1.0), s.normal((16,), 1.0))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 2**40), min_size=1, max_size=4), st.lists(st.integers(0, 2**40), min_size=1, max_size=4))
def test_derived_keys_separate_purposes(path_a, path_b):
    same = derive_key(KEY, *path_a) == derive_key(KEY, *path_b)
    assert same == (path_a == path_b)


def test_secrets_come_from_the_os_and_differ():
    assert len({new_secret() for _ in range(8)}) == 8 and len(new_secret()) == SECRET_BYTES


def test_seeded_secrets_are_reproducible_by_anyone_with_the_seed():
    assert seeded_secret(0, 1) == seeded_secret(0, 1) != seeded_secret(1, 1)
    policy = NoisePolicy(reproducible_seed=7)
    assert policy.client(3, {}).secret == policy.client(3, {}).secret == seeded_secret(7, 0, 3)
    assert policy.describe()["source"] == "seed" and "no protection" in policy.describe()["warning"]


def test_a_corrupt_stored_secret_is_replaced_not_trusted():
    state = {"noise_secret": "not hex"}
    randomness = NoisePolicy().client(0, state)
    assert len(randomness.secret) == SECRET_BYTES and state["noise_secret"] == randomness.secret.hex()


def test_a_short_secret_is_refused():
    with pytest.raises(ValueError, match="32 bytes"):
        PrivateRandomness(b"short").stream(1)


def test_box_muller_follows_its_formula():
    words = np.array([0, 2**64 - 1, 12345678901234567890, 2**63, 7 | (3 << 32), 2**32 - 1 | (2**31 << 32)], dtype=np.uint64)
    pairs = 4
    z = box_muller_float32(words, 2 * pairs).double().numpy()
    u = ((words[:pairs] >> np.uint64(1)).astype(np.float64) + 0.5) * 2.0**-63
    v = words[pairs:].view(np.uint32)[:pairs].astype(np.float64) * 2.0**-32
    r = np.sqrt(-2 * np.log(np.minimum(u, 1.0)))
    expected = np.concatenate([r * np.cos(2 * np.pi * v), r * np.sin(2 * np.pi * v)])
    np.testing.assert_allclose(z, expected, rtol=1e-5, atol=1e-5)  # float32 arithmetic against float64


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1), min_size=3, max_size=30))
def test_box_muller_values_are_finite_and_within_the_radius_bound(raw):
    words = np.array(raw, dtype=np.uint64)
    count = 2 * (len(raw) * 2 // 3)
    z = box_muller_float32(words, count)
    assert torch.isfinite(z).all() and z.abs().max() <= BOX_MULLER_MAX * (1 + 1e-6)


def test_box_muller_refuses_too_few_words():
    with pytest.raises(ValueError, match="need 3 uint64 words"):
        box_muller_float32(np.zeros(2, dtype=np.uint64), 4)


@pytest.mark.parametrize("stream", [SecureStream, FastStream])
def test_float32_gaussians_have_the_gaussian_distribution(stream):
    draws = stream(KEY).normal_float32(200_001, 3.0)  # odd: the last pair's sine is dropped
    assert draws.dtype == torch.float32 and draws.shape == (200_001,)
    # the standard error of a sample std of 200k draws is std / sqrt(2 n) = 0.0047
    assert abs(float(draws.std()) - 3.0) < 0.03 and abs(float(draws.mean())) < 0.03
    assert scipy.stats.kstest(draws.double().numpy() / 3.0, "norm").pvalue > 1e-3


def test_the_secure_float32_gaussian_is_the_scaled_sum_of_four_box_muller_draws_on_the_aes_ctr_keystream():
    # the reference keystream straight from the AES-128-CTR definition: AES_k(counter block i) for i = 0, 1, ...
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    counts = (64, 5, 3)  # the later draws continue the keystream, from the middle of a block after an odd draw
    sizes = [box_muller_words(4 * count) for count in counts]
    blocks = (sum(sizes) + 1) // 2
    counters = b"".join(i.to_bytes(16, "big") for i in range(blocks))
    keystream = np.frombuffer(Cipher(algorithms.AES(float32_key(KEY)), modes.ECB()).encryptor().update(counters), dtype=np.uint64)
    stream, start = SecureStream(KEY), 0
    for count, size in zip(counts, sizes, strict=True):
        cos_a, cos_b, sin_a, sin_b = box_muller_float32(keystream[start : start + size].copy(), 4 * count).view(4, count)
        # value i: the cosines of pairs i and count + i, the sines of the next pairs (i + 1 and count + i + 1, mod count)
        expected = (cos_a + cos_b + sin_a.roll(-1) + sin_b.roll(-1)) * 1.25
        torch.testing.assert_close(stream.normal_float32(count, 2.5), expected, rtol=0, atol=0)
        start += size


class _OnePairWords:
    """Words in which only Box-Muller pair ``live`` has a radius (every other radius word gives u = 1, r = 0)."""

    def __init__(self, live: int) -> None:
        self.live = live

    def words(self, count: int) -> np.ndarray:
        pairs = count * 2 // 3
        words = np.full(count, np.uint64(2**64 - 1))
        words[self.live] = np.uint64(2**62)  # u = 1/2
        words[pairs:] = np.uint64(0x2000_0000_2000_0000)  # angle π/4: cosine and sine both nonzero
        return words


@pytest.mark.parametrize("count", [2, 3, 64])
def test_each_secure_float32_value_sums_four_different_box_muller_pairs(count):
    # a pair reaches exactly two values (its cosine one, its sine another), never both halves the same value
    for live in range(2 * count):
        stream = SecureStream(KEY)
        stream._float32_bits = _OnePairWords(live)
        reached = torch.nonzero(stream.normal_float32(count, 1.0)).flatten().tolist()
        assert len(reached) == 2, (live, reached)


def test_a_single_secure_float32_value_is_the_first_of_a_two_value_draw():
    torch.testing.assert_close(SecureStream(KEY).normal_float32(1, 2.0), SecureStream(KEY).normal_float32(2, 2.0)[:1], rtol=0, atol=0)


def test_aes_ctr_words_continue_across_calls_and_chunks():
    key = bytes(range(16))
    whole = AesCtrWords(key).words(300_000)  # 2.4 MB: more than one 1 MiB chunk
    parts = AesCtrWords(key)
    np.testing.assert_array_equal(np.concatenate([parts.words(1), parts.words(200_000), parts.words(99_999)]), whole)


@pytest.mark.parametrize("stream", [SecureStream, FastStream])
def test_float32_draws_continue_the_stream_and_depend_on_the_key(stream):
    s = stream(KEY)
    first = s.normal_float32(16, 1.0)
    assert torch.equal(first, stream(KEY).normal_float32(16, 1.0))
    assert not torch.equal(first, s.normal_float32(16, 1.0))
    assert not torch.equal(first, stream(bytes(32)).normal_float32(16, 1.0))


def test_secure_words32_are_the_aes_ctr_keystream_of_their_own_key():
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    counts = (10, 7, 5)  # an odd count leaves the second half of its last 64-bit word unused
    sizes = [(count + 1) // 2 for count in counts]
    counters = b"".join(i.to_bytes(16, "big") for i in range((sum(sizes) + 1) // 2))
    keystream = np.frombuffer(Cipher(algorithms.AES(words32_key(KEY)), modes.ECB()).encryptor().update(counters), dtype=np.uint64)
    stream, start = SecureStream(KEY), 0
    for count, size in zip(counts, sizes, strict=True):
        np.testing.assert_array_equal(stream.uniform_words32(count), keystream[start : start + size].view(np.uint32)[:count])
        start += size


def test_secure_words32_keystream_is_independent_of_the_uniforms_and_the_float32_noise():
    assert len({words32_key(KEY), float32_key(KEY), KEY[:16]}) == 3
    words = SecureStream(KEY).uniform_words32(64)
    assert not np.array_equal(words, np.ldexp(SecureStream(KEY).random(64), 32).astype(np.uint32))


class _UniformsStream(FastStream):
    """A stream that keeps :class:`NoiseStream`'s default words (the top bits of its float64 uniforms)."""

    uniform_words32 = NoiseStream.uniform_words32


def test_default_words32_are_the_top_32_bits_of_the_uniforms():
    uniforms = FastStream(KEY).random(1000)
    words = _UniformsStream(KEY).uniform_words32(1000)
    assert words.dtype == np.uint32
    np.testing.assert_array_equal(words, np.floor(uniforms * 2.0**32).astype(np.uint32))


@pytest.mark.parametrize("stream", [SecureStream, FastStream, _UniformsStream])
def test_words32_are_uniform_continue_the_stream_and_depend_on_the_key(stream):
    s = stream(KEY)
    words = s.uniform_words32(160_001)
    assert words.dtype == np.uint32 and words.shape == (160_001,)
    # the top 4 bits and the lowest bit: all 16 values (and both) equally likely
    assert scipy.stats.chisquare(np.bincount(words >> 28, minlength=16)).pvalue > 1e-3
    assert abs(float(np.mean(words & 1)) - 0.5) < 0.01
    assert not np.array_equal(s.uniform_words32(32), words[:32])
    assert np.array_equal(stream(KEY).uniform_words32(32), words[:32])
    assert not np.array_equal(stream(bytes(32)).uniform_words32(32), words[:32])
