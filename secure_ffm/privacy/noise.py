"""Where privacy noise comes from: a secret each party draws from the operating system's CSPRNG.

Differential privacy holds only against an adversary who cannot reproduce the noise.
A generator seeded from the run's seed (written to ``config.toml``, default 0) gives
no protection at all against a server that knows the config: it regenerates the
noise bit for bit and subtracts it. So every party that adds noise owns a secret:

- each client draws a 256-bit secret from ``secrets.token_bytes`` (the OS CSPRNG) the
  first time it trains, keeps it in its private state (checkpointed with the client,
  so an exact ``--resume`` still works; in a deployment that state never leaves the
  client's machine) and derives from it the DP-SGD noise, DP-SGD's Poisson sampling
  (amplification by subsampling assumes the adversary does not know which examples a
  step used), DP-FedAvg noise shares and the randomness of its defenses;
- the server draws its own secret for DP-FedAvg's central noise and keeps it only in
  its checkpoint.

Nothing derived from a secret is written to ``config.toml``, ``metrics.jsonl``,
``summary.json``, ``privacy.json`` or any message.

A client's answer to a fit request draws everything from :meth:`PrivateRandomness.for_answer`, a sub-secret
keyed by the client's own count of its answers (``ANSWERS_KEY`` in its state), never by the request's round
alone: a server that asks the same round twice gets two independent draws, not the same noise to subtract.

Two samplers (``secure``):

- ``secure = True`` (the default): the bits are AES-128 in counter mode keyed by the
  secret (``randomgen.AESCounter``, AES-NI where the CPU has it), a cryptographically
  secure generator whose outputs reveal nothing about its key or future outputs; the
  Gaussians are NumPy's ziggurat on those bits, and every noise value is the sum of
  2n = 4 Gaussians divided by 2 (Holohan & Braghin, "Secure Random Sampling in
  Differential Privacy", ESORICS 2021, section 5.1, the mitigation Opacus' ``secure_mode``
  uses; torchcsprng, which Opacus needs for it, has no build for this torch).
  Textbook floating-point samplers leave gaps in the set of values they can produce,
  and those gaps reveal the unnoised value (Mironov, CCS 2012, for Laplace; Jin et al.,
  IEEE S&P 2022, for Gaussians); a sum of four draws fills them.
- ``secure = False``: NumPy's Philox counter generator keyed with 128 bits of the
  secret and its ziggurat Gaussian. Still secret (not reproducible without the key) and
  faster, but neither a CSPRNG nor hardened against floating-point attacks.

DP-SGD's per-step noise, added to float32 gradients, is drawn by :meth:`NoiseStream.normal_float32`: the same
generators' bits turned into Gaussians by a vectorized Box-Muller in float32 (:func:`box_muller_float32`), with
the same four-summand mitigation in the secure sampler, each summand of a value from a different Box-Muller pair
(Opacus' secure mode also sums four float32 Box-Muller draws, from four ``torch.normal`` calls). The radius uses
64 bits, so a summand reaches 9.4 standard deviations (float32 uniforms of 24 bits, as ``torch.normal``'s, stop at
5.8, beyond which a Gaussian lands about once in 10^8 draws). The secure sampler's bits come from OpenSSL's
AES-128-CTR (:class:`AesCtrWords`). Per noise value 12.3 ns against 42.7 ns for the float64 path (secure) and
4.7 against 13.2 ns (Philox), a fresh stream's first million values (``benchmarks/dp_overhead.py``); the ``cnn``'s
207k values took 1.9 ms a step with the secure sampler, one thread, 2026-12-06.

Randomized rounding's coins (distributed DP-SGD's rounding of each example's gradient to the ring,
secure_ffm.privacy.discrete_gaussian) are 32-bit words, :meth:`NoiseStream.uniform_words32`: the secure sampler's
from a third AES-128-CTR keystream of the stream's key (:func:`words32_key`), Philox's from its raw outputs.

Reproducible noise (``privacy.reproducible_noise = true``) derives the secrets from the
run's seed instead: for research only, it is marked in ``privacy.json``,
``summary.json`` and the report as giving no protection against anyone who knows the seed.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import struct
from abc import ABC, abstractmethod
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

SECRET_BYTES = 32
CLIENT_SECRET_KEY = "noise_secret"
"""Key of a client's secret (hex) in its private state; never copied into metrics or ledgers."""

# Purposes keep the streams derived from one secret apart.
DP_SGD_NOISE = 1
DP_SGD_SAMPLING = 2
NOISE_SHARE = 3
CENTRAL_NOISE = 4
TRANSFORM = 5
CLIENT_SAMPLING = 6
SECAGG_ROUNDING = 7
REPLAY = 8
DISCRETE_SHARE = 9
"""A client's distributed discrete Gaussian share and the randomized rounding before it (secure_ffm.privacy.distributed)."""
ANSWER = 10
"""The sub-secret of one fit answer (:meth:`PrivateRandomness.for_answer`): every draw of an answer is keyed by the
client's own count of its answers, never only by the round number the server's request names."""
LOCAL_TRAINING = 11
"""The seed of a sample-level DP client's torch draws in local training (dropout, MLM masks, shuffles): secret, because
a dropout mask handed out by position in the batch moves when an example joins it, and with masks known from the public
seed one example changed the others' clipped gradients (an audit: 1.42 C on a LoRA step, 0.90 C on the next step where
it was not sampled)."""

ANSWERS_KEY = "fit_answers"
"""Key of a client's count of the fit requests it has answered (its private state): the index of its next answer."""

SOURCE_SECRET = "os-csprng"
SOURCE_SEED = "seed"
SEED_WARNING = "reproducible from run.seed: no protection against anyone who knows the seed"


def new_secret() -> bytes:
    """256 bits from the operating system's CSPRNG."""
    return secrets.token_bytes(SECRET_BYTES)


def seeded_secret(seed: int, *path: int) -> bytes:
    """A secret anyone who knows ``seed`` can recompute (reproducible research runs only)."""
    return hashlib.blake2b(struct.pack(f">{1 + len(path)}q", seed, *path), digest_size=SECRET_BYTES, person=b"sffm-seeded").digest()


def derive_key(secret: bytes, *path: int) -> bytes:
    """A 256-bit key for one stream: keyed BLAKE2b of the purpose path (a PRF of the secret)."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"a noise secret has {SECRET_BYTES} bytes, got {len(secret)}")
    return hashlib.blake2b(struct.pack(f">{len(path)}q", *path), key=secret, digest_size=32, person=b"sffm-stream").digest()


#: Largest |value| a :func:`box_muller_float32` Gaussian can take: sqrt(-2 ln 2^-64), the radius of the smallest
#: radius uniform. A standard Gaussian exceeds it with probability 4.5e-21.
BOX_MULLER_MAX = math.sqrt(128 * math.log(2))


def box_muller_words(count: int) -> int:
    """64-bit words :func:`box_muller_float32` needs for ``count`` Gaussians: one per pair for the radius, half a
    word per pair for the angle."""
    pairs = (count + 1) // 2
    return pairs + (pairs + 1) // 2


def box_muller_float32(words: np.ndarray, count: int) -> torch.Tensor:
    """``count`` standard Gaussians (float32) from uniformly random 64-bit ``words`` (:func:`box_muller_words` of
    them), by the Box-Muller transform (Box & Muller 1958): a pair ``(r cos θ, r sin θ)`` with ``r = sqrt(-2 ln u)``
    and ``θ = 2π v``.

    ``u = ((w >> 1) + 1/2) 2^-63`` from a whole word lies in [2^-64, 1] (never 0, so ``ln u`` is finite, and the
    radius reaches :data:`BOX_MULLER_MAX`); ``v = a 2^-32`` from a 32-bit half word. Both are rounded to float32
    (relative error 2^-24) and the transform runs in float32, vectorized by NumPy, in place: NumPy's SIMD float32
    ``log``, ``cos`` and ``sin`` took 0.4-0.5 ns a value here against torch's 1.0-1.3 ns (AVX-512, one thread,
    2026-12-06), and the values agree with a float64 evaluation as closely as torch's did (largest error 9.2e-5, from
    rounding the angle to float32). The pairs' cosines come first, then their sines (for an odd ``count`` the last
    sine is dropped); the two values of a pair are independent Gaussians.
    """
    import torch

    pairs = (count + 1) // 2
    if words.dtype != np.uint64 or words.size < box_muller_words(count):
        raise ValueError(f"{count} Gaussians need {box_muller_words(count)} uint64 words, got {words.size} {words.dtype}")
    radius = (words[:pairs] >> np.uint64(1)).view(np.int64).astype(np.float32)  # < 2^63: exact as a signed word
    np.add(radius, np.float32(0.5), out=radius)
    np.multiply(radius, np.float32(2.0**-63), out=radius)
    np.log(radius, out=radius)
    np.multiply(radius, np.float32(-2.0), out=radius)
    np.sqrt(radius, out=radius)
    angle = words[pairs : box_muller_words(count)].view(np.uint32)[:pairs].astype(np.float32)
    np.multiply(angle, np.float32(2.0 * math.pi * 2.0**-32), out=angle)
    out = np.empty(2 * pairs, dtype=np.float32)
    np.cos(angle, out=out[:pairs])
    np.sin(angle, out=out[pairs:])
    np.multiply(out[:pairs], radius, out=out[:pairs])
    np.multiply(out[pairs:], radius, out=out[pairs:])
    return torch.from_numpy(out[:count])


class NoiseStream(ABC):
    """Uniform and Gaussian draws from one derived key; successive calls continue the stream."""

    @abstractmethod
    def random(self, size: int) -> np.ndarray:
        """``size`` float64 uniforms in [0, 1)."""

    @abstractmethod
    def normal(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        """float64 N(0, std^2) of ``shape``."""

    @abstractmethod
    def normal_float32(self, count: int, std: float) -> torch.Tensor:
        """``count`` float32 N(0, std^2) as a torch tensor, by :func:`box_muller_float32`: the noise DP-SGD adds to
        float32 gradients at every step."""

    def uniform_words32(self, count: int) -> np.ndarray:
        """``count`` uniformly random 32-bit words (``uint32``): the coin flips of randomized rounding
        (secure_ffm.privacy.discrete_gaussian), compared with a probability scaled to ``2^32``.

        This default takes the top 32 bits of :meth:`random`'s float64 uniforms (multiples of ``2^-53``, so the
        words are exact and uniform); the streams below draw their generator's raw bits instead, 3-4x faster."""
        return np.ldexp(self.random(count), 32).astype(np.uint32)


class FastStream(NoiseStream):
    """NumPy's Philox-4x64 keyed with 128 bits of the key, one ziggurat Gaussian per value (secret, not a CSPRNG)."""

    def __init__(self, key: bytes) -> None:
        self.generator = np.random.Generator(np.random.Philox(key=int.from_bytes(key[:16], "little")))

    def random(self, size: int) -> np.ndarray:
        return self.generator.random(size)

    def normal(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        return self.generator.normal(0.0, std, size=shape)

    def normal_float32(self, count: int, std: float) -> torch.Tensor:
        return box_muller_float32(self.generator.bit_generator.random_raw(box_muller_words(count)), count).mul_(std)

    def uniform_words32(self, count: int) -> np.ndarray:
        """Philox's raw 64-bit outputs, each split into two 32-bit words."""
        return self.generator.bit_generator.random_raw((count + 1) // 2).view(np.uint32)[:count]


_ZERO_CHUNK = bytes(1 << 20)
"""1 MiB of zeros, encrypted in counter mode into keystream (shared, read-only)."""


class AesCtrWords:
    """uint64 words of the AES-128-CTR keystream of ``key`` (OpenSSL through ``cryptography``, AES-NI where the CPU has
    it; counter block 0 first), continuing across calls. About 2.5x faster than ``randomgen.AESCounter``'s raw words
    here (0.55 against 1.35 ms for 5 MB, one thread, 2026-12-06): OpenSSL encrypts many blocks at a time."""

    def __init__(self, key: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        if len(key) != 16:
            raise ValueError(f"an AES-128 key has 16 bytes, got {len(key)}")
        self._encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()

    def words(self, count: int) -> np.ndarray:
        total = 8 * count
        out = np.empty(total + 16, dtype=np.uint8)  # update_into wants a block's room beyond what it writes
        buffer, zeros = memoryview(out), memoryview(_ZERO_CHUNK)
        done = 0
        while done < total:
            size = min(len(_ZERO_CHUNK), total - done)
            done += self._encryptor.update_into(zeros[:size], buffer[done : done + size + 15])
        return out[:total].view(np.uint64)


class SecureStream(NoiseStream):
    """AES-128 in counter mode (a CSPRNG) and Gaussians hardened against floating-point attacks.

    Two independent keystreams of the one key: ``randomgen.AESCounter`` keyed with the key's first 16 bytes for
    :meth:`random` and :meth:`normal`, and :class:`AesCtrWords` keyed with a BLAKE2b PRF of the key for
    :meth:`normal_float32`.
    """

    #: 2n Gaussians summed per noise value (Holohan & Braghin 2021 with n = 2, as Opacus' secure mode).
    SUMMANDS = 4

    def __init__(self, key: bytes) -> None:
        from randomgen import AESCounter

        self.generator = np.random.Generator(AESCounter(key=int.from_bytes(key[:16], "little")))
        self._scratch = np.empty(0)
        self._key = key
        self._float32_bits: AesCtrWords | None = None  # made on first use: most streams (sampling) never draw float32
        self._rounding_bits: AesCtrWords | None = None  # likewise: only randomized rounding draws 32-bit words

    def random(self, size: int) -> np.ndarray:
        return self.generator.random(size)

    def normal(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        """The sum of :attr:`SUMMANDS` standard Gaussians times ``std / sqrt(SUMMANDS)``; the summands after the first
        are drawn into a reused buffer (the same values as fresh arrays, without allocating one per summand)."""
        total = self.generator.standard_normal(shape)
        if self._scratch.size < total.size:
            self._scratch = np.empty(total.size)
        summand = self._scratch[: total.size].reshape(total.shape)
        for _ in range(self.SUMMANDS - 1):
            self.generator.standard_normal(out=summand)
            total += summand
        total *= std / math.sqrt(self.SUMMANDS)
        return total

    def normal_float32(self, count: int, std: float) -> torch.Tensor:
        """The sum of :attr:`SUMMANDS` float32 Box-Muller Gaussians on the AES-CTR keystream, times ``std / sqrt(SUMMANDS)``,
        each summand from a different Box-Muller pair, as the four ``torch.normal`` calls of Opacus' secure mode give.

        One draw of ``4 n`` Gaussians (``2 n`` pairs; ``n = max(count, 2)``): value ``i`` adds the cosines of pairs
        ``i`` and ``n + i`` and the sines of pairs ``i + 1`` and ``n + i + 1`` (indices mod ``n`` within each half).
        The two halves of one pair are independent Gaussians, so a value that added both (as this method did before
        2026-12-06) still had the right distribution, but drew on only two pairs' randomness, ``r (cos θ + sin θ)``
        twice: the floating-point hardening of Holohan & Braghin needs independent draws (tested: a pair reaches two
        different values).
        """
        import torch

        if self._float32_bits is None:
            self._float32_bits = AesCtrWords(float32_key(self._key))
        n = max(count, 2)  # one value alone has no other value to take its pairs' sines
        values = self.SUMMANDS * n
        gaussians = box_muller_float32(self._float32_bits.words(box_muller_words(values)), values).numpy()
        cos_a, cos_b, sin_a, sin_b = gaussians.reshape(self.SUMMANDS, n)
        total = np.add(cos_a, cos_b)
        total[:-1] += sin_a[1:]
        total[-1] += sin_a[0]
        total[:-1] += sin_b[1:]
        total[-1] += sin_b[0]
        total *= np.float32(std / math.sqrt(self.SUMMANDS))
        return torch.from_numpy(total[:count])

    def uniform_words32(self, count: int) -> np.ndarray:
        """The AES-128-CTR keystream (:class:`AesCtrWords`) of a third key, a BLAKE2b PRF of the stream's key
        (:func:`words32_key`), read as 32-bit words: independent of :meth:`random`'s and :meth:`normal_float32`'s
        keystreams, and 4x cheaper per word than ``randomgen``'s float64 uniforms (15 against 62 µs for 26k words)."""
        if self._rounding_bits is None:
            self._rounding_bits = AesCtrWords(words32_key(self._key))
        return self._rounding_bits.words((count + 1) // 2).view(np.uint32)[:count]


def words32_key(key: bytes) -> bytes:
    """The 128-bit AES key of a :class:`SecureStream`'s 32-bit words (:meth:`SecureStream.uniform_words32`): keyed
    BLAKE2b of ``key`` with its own message, so the keystream is independent of the other two of the same key."""
    return hashlib.blake2b(b"uniform-words32", key=key, digest_size=16, person=b"sffm-words32").digest()


def float32_key(key: bytes) -> bytes:
    """The 128-bit AES key of a :class:`SecureStream`'s float32 keystream: keyed BLAKE2b of ``key`` (a PRF, so the
    keystream is independent of the one ``randomgen`` makes from the key's first bytes)."""
    return hashlib.blake2b(b"box-muller", key=key, digest_size=16, person=b"sffm-float32").digest()


@dataclass(frozen=True)
class PrivateRandomness:
    """One party's secret and the sampler its noise uses; ``stream(purpose, round, ...)`` derives a stream."""

    secret: bytes
    secure: bool = True
    source: str = SOURCE_SECRET

    def __repr__(self) -> str:  # never print the secret
        return f"PrivateRandomness(source={self.source!r}, secure={self.secure})"

    def for_answer(self, answer: int) -> PrivateRandomness:
        """The randomness of the client's ``answer``-th fit answer: a sub-secret keyed by that index.

        Every draw a client makes while answering a fit request (DP-FedAvg's noise share, the discrete share and
        its rounding, a defense's noise, masking's stochastic rounding, DP-SGD's noise and sampling) comes from it.
        Keyed by the round alone, a server that sent the same round twice, with two different models, got the same
        noise on both answers and subtracted it: the difference of the two (masked, unmasked) sums is noise-free.
        The index is the client's own, kept in its private state (:data:`ANSWERS_KEY`), so no request can repeat it."""
        if answer < 0:
            raise ValueError(f"an answer index is a count, got {answer}")
        return PrivateRandomness(derive_key(self.secret, ANSWER, answer), self.secure, self.source)

    def stream(self, *path: int) -> NoiseStream:
        key = derive_key(self.secret, *path)
        return SecureStream(key) if self.secure else FastStream(key)

    def generator(self, *path: int) -> np.random.Generator:
        """A NumPy generator keyed from the secret (for defenses and other non-DP randomness)."""
        return np.random.Generator(np.random.Philox(key=int.from_bytes(derive_key(self.secret, *path)[:16], "little")))


def _from_hex(stored: Any) -> bytes | None:
    if not isinstance(stored, str) or len(stored) != 2 * SECRET_BYTES:
        return None
    try:
        return bytes.fromhex(stored)
    except ValueError:
        return None


@dataclass(frozen=True)
class NoisePolicy:
    """How parties get their secrets: from the OS CSPRNG (default) or, opted in, from the run's seed.

    ``secure`` picks the CSPRNG sampler with the floating-point mitigation (see the module docstring).
    """

    secure: bool = True
    reproducible_seed: int | None = None

    @classmethod
    def from_config(cls, config: Any) -> NoisePolicy:
        p = config.privacy
        return cls(secure=p.secure_mode, reproducible_seed=config.run.seed if p.reproducible_noise else None)

    def client(self, client_id: int, state: MutableMapping[str, Any]) -> PrivateRandomness:
        """Client ``client_id``'s randomness; a new secret is drawn into ``state`` on first use and kept there."""
        if self.reproducible_seed is not None:
            return PrivateRandomness(seeded_secret(self.reproducible_seed, 0, client_id), self.secure, SOURCE_SEED)
        secret = _from_hex(state.get(CLIENT_SECRET_KEY))
        if secret is None:  # first use (or a damaged entry, which is never trusted)
            secret = new_secret()
            state[CLIENT_SECRET_KEY] = secret.hex()
        return PrivateRandomness(secret, self.secure, SOURCE_SECRET)

    def server(self, stored: str | None = None) -> PrivateRandomness:
        """The server's randomness: ``stored`` (hex, from the server's checkpoint) or a new secret."""
        if self.reproducible_seed is not None:
            return PrivateRandomness(seeded_secret(self.reproducible_seed, 1), self.secure, SOURCE_SEED)
        return PrivateRandomness(_from_hex(stored) or new_secret(), self.secure, SOURCE_SECRET)

    def describe(self) -> dict[str, Any]:
        """What ``privacy.json`` and ``summary.json`` say about the noise's origin."""
        if self.reproducible_seed is not None:
            return {"source": SOURCE_SEED, "secure_sampler": self.secure, "warning": SEED_WARNING}
        return {
            "source": SOURCE_SECRET,
            "secure_sampler": self.secure,
            "note": "each client's noise and sampling come from its own secret drawn from the OS CSPRNG; the server's from its own",
        }
