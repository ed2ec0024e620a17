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
from typing import Any

import numpy as np

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


class NoiseStream(ABC):
    """Uniform and Gaussian draws from one derived key; successive calls continue the stream."""

    @abstractmethod
    def random(self, size: int) -> np.ndarray:
        """``size`` float64 uniforms in [0, 1)."""

    @abstractmethod
    def normal(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        """float64 N(0, std^2) of ``shape``."""


class FastStream(NoiseStream):
    """NumPy's Philox-4x64 keyed with 128 bits of the key, one ziggurat Gaussian per value (secret, not a CSPRNG)."""

    def __init__(self, key: bytes) -> None:
        self.generator = np.random.Generator(np.random.Philox(key=int.from_bytes(key[:16], "little")))

    def random(self, size: int) -> np.ndarray:
        return self.generator.random(size)

    def normal(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        return self.generator.normal(0.0, std, size=shape)


class SecureStream(NoiseStream):
    """AES-128 in counter mode (a CSPRNG) and Gaussians hardened against floating-point attacks."""

    #: 2n Gaussians summed per noise value (Holohan & Braghin 2021 with n = 2, as Opacus' secure mode).
    SUMMANDS = 4

    def __init__(self, key: bytes) -> None:
        from randomgen import AESCounter

        self.generator = np.random.Generator(AESCounter(key=int.from_bytes(key[:16], "little")))
        self._scratch = np.empty(0)

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


@dataclass(frozen=True)
class PrivateRandomness:
    """One party's secret and the sampler its noise uses; ``stream(purpose, round, ...)`` derives a stream."""

    secret: bytes
    secure: bool = True
    source: str = SOURCE_SECRET

    def __repr__(self) -> str:  # never print the secret
        return f"PrivateRandomness(source={self.source!r}, secure={self.secure})"

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
