"""Homomorphic secure aggregation under CKKS, with TenSEAL: key holder, clients, server, and an in-process driver.

CKKS (Cheon, Kim, Kim and Song, "Homomorphic Encryption for Arithmetic of Approximate
Numbers", ASIACRYPT 2017) encrypts a vector of ``N/2`` real numbers (``N`` the ring
dimension, ``poly_modulus_degree``) in one ciphertext; adding two ciphertexts adds the
vectors slot by slot. TenSEAL (Benaissa et al., "TenSEAL: A Library for Encrypted Tensor
Operations Using Homomorphic Encryption", ICLR 2021 workshop on distributed and private
ML, arXiv:2104.03152) wraps Microsoft SEAL's implementation. One round, between objects
that share no more than the roles below allow:

* :class:`CKKSKeyHolder` draws the CKKS secret key once per run and hands out
  serialized TenSEAL contexts. Under ``key_holder = "clients"`` every client gets the
  secret key (one key shared by all clients, as NVIDIA FLARE's homomorphic-encryption
  aggregation does), and a client decrypts the aggregate; under ``"authority"`` clients get
  only the public context (public-key encryption needs nothing more) and only the key
  holder, a separate authority, decrypts, and only aggregates.
* :class:`CKKSClient` flattens ``weight * delta`` over all arrays in sorted name order, then
  ``weight * statistics`` (:class:`~secure_ffm.engine.aggregation.VectorLayout`, shared with
  pairwise masking), then three check slots ``[weight, 1, round]``, and encrypts the vector
  in as many ciphertexts as it needs (``N/2`` slots each). The message carries the
  ciphertexts as TenSEAL ``serialize()`` bytes (never pickled), the round in the clear, the
  public layout and the key set's fingerprint.
* :class:`CKKSServer` holds only the public context (``serialize(save_secret_key=False)``,
  re-loaded; it cannot decrypt) and adds the ciphertexts homomorphically as they arrive.
  It hands the encrypted sum (:class:`EncryptedAggregate`, bytes again) to the decryptor.
* :class:`CKKSDecryptor` (a client's under ``"clients"``, the key holder's under
  ``"authority"``) decrypts the sum, checks that the count slot equals the number of clients
  the server claims and that the round slot equals ``count * round``, and returns the
  weighted sums and the total weight; the mean is their ratio.

Under ``"clients"`` the context uses SEAL's symmetric (secret-key) encryption, whose fresh
noise is about 8 times smaller than public-key encryption's; under ``"authority"`` clients
must use public-key encryption.

Validation. The server rejects, with :class:`~secure_ffm.engine.aggregation.AggregationError`
naming the client and leaving its running sum as it was: a message of another round (the
clear round field and the round tag), a non-participant, a duplicate, a key fingerprint
other than the round's (ciphertexts made under another key set), a layout that differs from
the others', the wrong number of ciphertexts, a ciphertext that does not deserialize
against the server's context (SEAL checks it belongs to the context's parameters), one of
the wrong length or scale, or one that cannot be added. A client refuses to encrypt
non-finite values or values beyond the ciphertext's headroom (:class:`CKKSEncodeError`).
CKKS itself authenticates nothing: a ciphertext made under another key with the right
parameters and a copied fingerprint, or garbage encrypted under the right key, is added and
corrupts the sum (the decryptor's count and round checks catch some of it: stale or
duplicated ciphertexts from honest clients). See ``docs/threat_model.md``.

Precision. CKKS is approximate: fresh encryption adds Gaussian noise to every slot, which
decryption returns scaled by ``2^-scale_bits``. Measured with TenSEAL 0.3.18: under public-key
encryption the noise's standard deviation depends on the slot through the secret key (for one
key, from about 0.005 to 0.5 ``N 2^-scale`` across slots, 0.17 on average); under symmetric
encryption it is about 0.036 ``N 2^-scale`` in every slot (N = 4096; it grows like ``sqrt(N)``).
Noise of independent ciphertexts adds like ``sqrt(n)``. :meth:`CKKSParameters.error_bound`
states ``5 sqrt(n) N 2^-scale`` per coordinate of the weighted sum of ``n`` clients (about ten
standard deviations of the noisiest slot under public-key encryption; very loose under
symmetric encryption); the mean's error is that divided by the total weight (the decrypted
total weight carries the same error). The measured error of the decrypted mean against the
float64 plaintext mean per setting (N, primes, scale, key holder; FedAvg and uniform weights on
real CNN deltas) is not quoted here, since figures go stale: run
``benchmarks/secagg_overhead.py --bytes`` (results in
``benchmarks/results/secagg_overhead_bytes.json``) and see the README's secure aggregation
benchmark section; ``tests/secagg/test_secagg_ckks.py`` checks the bound. Aggregation only adds
ciphertexts, so the middle primes buy no precision; N = 4096 with a 2^20 or 2^21 scale is too
coarse for uniform weights.

Headroom. A decrypted slot is correct only while ``|sum| * 2^scale_bits`` stays below half
the data modulus (the product of all primes but the last, SEAL's special prime). A client
checks ``|w * value| <= 2^headroom_bits / n`` for ``n`` participants, so no sum can wrap.
At the default 8192 / [60, 60] / 2^40 the headroom is ``2^(60 - 40 - 2) = 2^18`` per slot of a
sum (it was 2^98 with [60, 40, 40, 60], the default before 2026-12-05, whose middle primes
aggregation never consumes). :meth:`CKKSProtocol.check_run` refuses, before a run starts, a
federation whose weight slot alone can exceed it (FedAvg weights: ``n`` times the largest
client's examples, so any round of more than 2^18 examples) with a ConfigError naming
``secure_aggregation.ckks_scale_bits``; a client whose ``|w * delta|`` exceeds its share at run
time declines and is left out of the round (recorded in the round's ``skipped_clients``).
"""

from __future__ import annotations

import hashlib
import logging
import math
import operator
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import tenseal as ts

from secure_ffm.engine.aggregation import (
    AUTHORITY,
    Aggregate,
    AggregationError,
    AggregationProtocol,
    ClientRound,
    EncodingDeclined,
    ServerRound,
    Stage,
    Stages,
    VectorLayout,
    check_envelope,
)
from secure_ffm.engine.codec import wire_record
from secure_ffm.engine.wire import ClientMessage, ClientUpdate, NamedArrays
from secure_ffm.errors import ConfigError
from secure_ffm.secagg.seal_bytes import CiphertextShape, fresh_vector_bytes

if TYPE_CHECKING:
    from secure_ffm.config import Config, SecureAggregationConfig
    from secure_ffm.data.base import FederatedData

log = logging.getLogger(__name__)

_FINGERPRINT_LABEL = b"secure-ffm/ckks/v1/key-set"
KEY_HOLDERS = ("clients", "authority")
ROUND_KEY = "round"
LAYOUT_KEY = "layout"
CONTEXT_KEY = "context"
CIPHERTEXT_PREFIX = "ciphertext/"
CHECK_SLOTS = 3
"""Slots after the values: the weight, a count (1 per client) and the round number."""
_ERROR_CONSTANT = 5.0
"""``error_bound``'s constant: about ten standard deviations of the noisiest slot under public-key encryption (0.5)."""


class CKKSEncodeError(EncodingDeclined):
    """A client refuses to encrypt its update (non-finite values, beyond the headroom): it sends nothing.

    An :class:`~secure_ffm.engine.aggregation.EncodingDeclined` naming the client, so the runner leaves
    the client out of the round (the server never sees the update) instead of stopping the run.
    """


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class CKKSParameters:
    """The CKKS encryption parameters: ring dimension, coefficient modulus primes and encoding scale."""

    poly_modulus_degree: int = 8192
    """``N``: a ciphertext holds ``N/2`` values."""
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 60)
    """Bit sizes of the modulus primes; the last is SEAL's special (key-switching) prime. The default, one 60-bit
    data prime, leaves ``2^(60 - scale_bits - 2)`` of headroom (2^18 at scale 2^40); see the module's Headroom."""
    scale_bits: int = 40
    """``log2`` of the encoding scale; the noise of a slot is about ``N 2^-scale_bits``."""

    def __post_init__(self) -> None:
        n = operator.index(self.poly_modulus_degree)
        if n < 1024 or n & (n - 1):
            raise ValueError(f"poly_modulus_degree must be a power of two of at least 1024, got {n}")
        object.__setattr__(self, "coeff_mod_bit_sizes", tuple(operator.index(b) for b in self.coeff_mod_bit_sizes))
        if len(self.coeff_mod_bit_sizes) < 2:
            raise ValueError(f"coeff_mod_bit_sizes needs a data prime and the special prime, got {list(self.coeff_mod_bit_sizes)}")
        if self.headroom_bits < 1:
            raise ValueError(
                f"scale 2^{self.scale_bits} leaves no headroom below the {self.data_bits}-bit data modulus "
                f"(primes {list(self.coeff_mod_bit_sizes[:-1])}); use a smaller scale or larger primes"
            )

    @classmethod
    def from_config(cls, config: SecureAggregationConfig) -> CKKSParameters:
        return cls(config.ckks_poly_modulus_degree, tuple(config.ckks_coeff_mod_bit_sizes), config.ckks_scale_bits)

    @property
    def slots(self) -> int:
        """Values per ciphertext."""
        return self.poly_modulus_degree // 2

    @property
    def scale(self) -> float:
        return float(2**self.scale_bits)

    @property
    def data_bits(self) -> int:
        """Bits of the data modulus: every prime but the special one, the modulus fresh ciphertexts live at."""
        return int(sum(self.coeff_mod_bit_sizes[:-1]))

    @property
    def headroom_bits(self) -> int:
        """``log2`` of the bound on a decrypted slot's magnitude (one bit below half the modulus, one of margin)."""
        return self.data_bits - self.scale_bits - 2

    @property
    def max_magnitude(self) -> float:
        """The largest ``|sum|`` a slot holds without wrapping around the modulus."""
        return float(2.0**self.headroom_bits)

    def num_ciphertexts(self, length: int) -> int:
        """Ciphertexts for a vector of ``length`` values."""
        return max(1, math.ceil(length / self.slots))

    def error_bound(self, num_clients: int) -> float:
        """Stated bound on the absolute error per coordinate of a decrypted sum of ``num_clients`` fresh ciphertexts.

        ``5 sqrt(n) N 2^-scale_bits``: about ten standard deviations of the noisiest slot under
        public-key encryption (measured: at most about 0.5 ``N 2^-scale`` for one ciphertext,
        growing like ``sqrt(n)``); far looser under symmetric encryption. Divide by the total
        weight for the error of the mean.
        """
        return _ERROR_CONSTANT * math.sqrt(max(1, num_clients)) * self.poly_modulus_degree / self.scale

    def new_context(self, *, symmetric: bool) -> ts.Context:
        """A fresh TenSEAL CKKS context (a new secret key, drawn by SEAL from the OS CSPRNG)."""
        encryption = ts.ENCRYPTION_TYPE.SYMMETRIC if symmetric else ts.ENCRYPTION_TYPE.ASYMMETRIC
        context = ts.context(
            ts.SCHEME_TYPE.CKKS,
            poly_modulus_degree=self.poly_modulus_degree,
            coeff_mod_bit_sizes=list(self.coeff_mod_bit_sizes),
            encryption_type=encryption,
            n_threads=1,
        )
        context.global_scale = self.scale
        return context


def load_context(data: bytes) -> ts.Context:
    """A TenSEAL context from its serialized bytes (a protocol buffer; no pickle)."""
    return ts.context_from(bytes(data), n_threads=1)


def fingerprint(public_context: bytes, key_id: bytes) -> bytes:
    """SHA-256 over the public context (parameters and, for public-key encryption, the public key) and the key id."""
    return hashlib.sha256(_FINGERPRINT_LABEL + len(key_id).to_bytes(2, "big") + bytes(key_id) + bytes(public_context)).digest()


# --------------------------------------------------------------------------- key holder


class CKKSKeyHolder:
    """Draws the CKKS secret key once and hands out contexts: the secret one to clients only under ``"clients"``.

    Parameters
    ----------
    parameters
        The encryption parameters.
    key_holder
        ``"clients"``: every client gets the secret key (and encrypts with it, symmetric
        encryption), a client decrypts the aggregate. ``"authority"``: clients get the public
        context only; this object is the authority and alone decrypts aggregates.

    The server only ever gets :attr:`public_context` (no secret key, no relinearization or
    Galois keys: aggregation only adds) and :attr:`key_id`.
    """

    def __init__(self, parameters: CKKSParameters, *, key_holder: str = "clients") -> None:
        if key_holder not in KEY_HOLDERS:
            raise ValueError(f"key_holder must be one of {KEY_HOLDERS}, got {key_holder!r}")
        self.parameters = parameters
        self.key_holder = key_holder
        self.symmetric = key_holder == "clients"
        self._context = parameters.new_context(symmetric=self.symmetric)
        self.key_id = secrets.token_bytes(16)
        self.public_context = self._context.serialize(
            save_public_key=not self.symmetric, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
        )
        self.fingerprint = fingerprint(self.public_context, self.key_id)
        self._decryptor: CKKSDecryptor | None = None

    def client_context(self) -> bytes:
        """What a client gets: the secret context under ``"clients"``, the public one under ``"authority"``."""
        if self.key_holder == "authority":
            return self.public_context
        return self._context.serialize(save_public_key=False, save_secret_key=True, save_galois_keys=False, save_relin_keys=False)

    can_decrypt = True
    """The key holder keeps the secret key in both modes."""

    def secret_context(self) -> bytes:
        """The context with the secret key (the authority's key file)."""
        return self._context.serialize(save_public_key=True, save_secret_key=True, save_galois_keys=False, save_relin_keys=False)

    def decryptor(self) -> CKKSDecryptor:
        """The authority's decryptor (the key holder keeps the secret key in both modes)."""
        if self._decryptor is None:
            self._decryptor = CKKSDecryptor(self._context, self.fingerprint, self.parameters)
        return self._decryptor


@wire_record
@dataclass(frozen=True)
class KeyFile:
    """A key set dealt out of band, for a deployment (``secure-ffm ckks-keys``): what one party loads.

    The server's file holds the public context and the key id only. Under ``key_holder = "clients"`` the clients' file
    adds the secret context (every client decrypts). Under ``"authority"`` the clients' file adds only the public context
    (clients encrypt with the public key) and the authority's file holds the secret context, which no other party gets.
    Written with :func:`secure_ffm.engine.codec.to_bytes` (no pickle)."""

    role: str
    """``"server"``, ``"clients"`` or ``"authority"``."""
    parameters: tuple[int, tuple[int, ...], int]
    """``(poly_modulus_degree, coeff_mod_bit_sizes, scale_bits)`` the key set was drawn for."""
    public_context: bytes
    key_id: bytes
    client_context: bytes = b""
    key_holder: str = "clients"
    """The ``ckks_key_holder`` the key set was dealt for."""
    authority_context: bytes = b""
    """The authority's file only: the secret context it decrypts aggregates with."""


def deal_key_files(parameters: CKKSParameters, *, key_holder: str = "clients") -> dict[str, bytes]:
    """A fresh key set as ``{role: file}``: ``"server"`` for the server, ``"clients"`` for every client (never the server),
    and under ``key_holder = "authority"`` also ``"authority"``, the only file with the secret key."""
    from secure_ffm.engine.codec import to_bytes

    holder = CKKSKeyHolder(parameters, key_holder=key_holder)
    described = (parameters.poly_modulus_degree, tuple(parameters.coeff_mod_bit_sizes), parameters.scale_bits)
    public, key_id = holder.public_context, holder.key_id
    files = {
        "server": KeyFile("server", described, public, key_id, key_holder=key_holder),
        "clients": KeyFile("clients", described, public, key_id, holder.client_context(), key_holder=key_holder),
    }
    if key_holder == "authority":
        secret = holder.secret_context()
        files["authority"] = KeyFile("authority", described, public, key_id, key_holder=key_holder, authority_context=secret)
    return {role: to_bytes(key_file) for role, key_file in files.items()}


class ProvisionedKeySet:
    """A key set loaded from a :class:`KeyFile`, in place of one :class:`CKKSKeyHolder` draws in this process."""

    def __init__(self, key_file: KeyFile, parameters: CKKSParameters) -> None:
        self.public_context = key_file.public_context
        self.key_id = key_file.key_id
        self.fingerprint = fingerprint(self.public_context, self.key_id)
        self.role = key_file.role
        self._client_context = key_file.client_context or None
        self._decryptor = (
            CKKSDecryptor(ts.context_from(key_file.authority_context), self.fingerprint, parameters) if key_file.authority_context else None
        )

    @property
    def can_decrypt(self) -> bool:
        """True for the authority's file: this process is the key authority."""
        return self._decryptor is not None

    def client_context(self) -> bytes:
        if self._client_context is None:
            raise AggregationError(f"this process holds the {self.role}'s CKKS key file, not the clients'")
        return self._client_context

    def decryptor(self) -> CKKSDecryptor:
        if self._decryptor is None:
            raise AggregationError(
                f"this process holds the {self.role}'s CKKS key file: a client (key_holder = 'clients') or the key authority "
                "decrypts, not this process"
            )
        return self._decryptor


# --------------------------------------------------------------------------- wire records


@wire_record
@dataclass(frozen=True)
class EncryptedAggregate:
    """Server -> decryptor: the homomorphic sum of a round's ciphertexts, as TenSEAL bytes."""

    round: int
    num_clients: int
    layout: bytes
    fingerprint: bytes
    ciphertexts: tuple[bytes, ...]

    @property
    def nbytes(self) -> int:
        return int(sum(len(c) for c in self.ciphertexts))


@wire_record
@dataclass(frozen=True)
class DecryptedSums:
    """What the decryptor returns: the weighted sums and the total weight."""

    delta: NamedArrays
    statistics: NamedArrays
    total_weight: float
    num_clients: int


def check_decrypted(sums: DecryptedSums, layout: VectorLayout, *, round: int, num_clients: int) -> None:
    """Refuse (AggregationError) decrypted sums that do not fit the aggregate's layout: the decryptor is a party (the
    lowest-id client under ``"clients"``, or the key authority), and its answer must not end the server's run.

    Arrays of the layout's names and shapes, finite, a finite positive total weight and the aggregate's client count;
    a decryptor that answers with other names (an empty table made the strategy raise KeyError until 2026-12-07) or
    shapes aborts the round.
    What a dishonest decryptor can still do is answer wrong values of the right shape (docs/threat_model.md)."""
    who = f"round {round}: the decrypted aggregate"
    for what, arrays, expected in (("delta", sums.delta, layout.delta), ("statistics", sums.statistics, layout.statistics)):
        if (
            not isinstance(arrays, Mapping)
            or not all(isinstance(k, str) for k in arrays)
            or sorted(arrays) != sorted(n for n, _ in expected)
        ):
            names = sorted(map(str, arrays)) if isinstance(arrays, Mapping) else type(arrays).__name__
            raise AggregationError(f"{who} has {what} {names}, not the layout's {sorted(name for name, _ in expected)}")
        for name, shape in expected:
            value = arrays[name]
            if not isinstance(value, np.ndarray) or value.shape != tuple(shape) or value.dtype.kind != "f" or not np.isfinite(value).all():
                raise AggregationError(f"{who}'s {what} {name!r} is not a finite float array of shape {tuple(shape)}")
    weight = sums.total_weight
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) or not weight > 0:
        raise AggregationError(f"round {round}: total client weight is {weight!r}")
    if sums.num_clients != num_clients:
        raise AggregationError(f"{who} counts {sums.num_clients!r} clients; {num_clients} were summed")


# --------------------------------------------------------------------------- client


class CKKSClient:
    """One participant: encrypts its weighted update; holds the secret key only under ``"clients"``.

    Parameters
    ----------
    client_id
        The client's id, named in every error.
    parameters
        The encryption parameters (public).
    context
        The serialized context the key holder handed out (:meth:`CKKSKeyHolder.client_context`).
    fingerprint
        The key set's fingerprint (:attr:`CKKSKeyHolder.fingerprint`), sent with every message.
    """

    def __init__(self, client_id: int, parameters: CKKSParameters, context: bytes, fingerprint: bytes) -> None:
        self.client_id = operator.index(client_id)
        self.parameters = parameters
        self._context = load_context(context)
        self.fingerprint = bytes(fingerprint)

    @property
    def holds_secret_key(self) -> bool:
        return bool(self._context.is_private())

    def encrypt(self, update: ClientUpdate, *, weight: float, round: int, num_participants: int) -> ClientMessage:
        """The message for ``round``: ``[w * delta, w * statistics, w, 1, round]`` encrypted in ``N/2``-slot ciphertexts."""
        who = f"round {round}: client {self.client_id}"
        if update.client_id != self.client_id or update.round != round:
            raise AggregationError(f"{who} was handed the update of client {update.client_id} for round {update.round}")
        w = float(weight)
        if not (math.isfinite(w) and w >= 0):
            raise CKKSEncodeError(f"{who} has weight {w}; refusing to encrypt")
        for kind, arrays in (("delta", update.delta), ("statistic", update.statistics)):
            for name, array in arrays.items():
                if not np.all(np.isfinite(np.asarray(array, dtype=np.float64))):
                    raise CKKSEncodeError(f"{who} has non-finite values in {kind} {name}; refusing to encrypt")
        layout = VectorLayout.of(update)
        vector = np.concatenate([layout.flatten(update, w), [w, 1.0, float(round)]])
        limit = self.parameters.max_magnitude / max(1, num_participants)
        largest = float(np.max(np.abs(vector)))
        if largest > limit:
            raise CKKSEncodeError(
                f"{who} has a weighted value of magnitude {largest:.4g} beyond the CKKS headroom "
                f"2^{self.parameters.headroom_bits} / {num_participants} participants = {limit:.4g}; "
                "use larger data primes or a smaller scale"
            )
        slots = self.parameters.slots
        payload: dict[str, np.ndarray | bytes] = {
            ROUND_KEY: np.asarray([round], dtype=np.int64),
            LAYOUT_KEY: layout.to_bytes(),
            CONTEXT_KEY: self.fingerprint,
        }
        for i in range(self.parameters.num_ciphertexts(vector.size)):
            chunk = vector[i * slots : (i + 1) * slots]
            payload[_ciphertext_key(i)] = ts.ckks_vector(self._context, chunk).serialize()
        return ClientMessage(self.client_id, round, payload, update.num_examples, dict(update.metrics))

    def decryptor(self) -> CKKSDecryptor:
        """Under ``"clients"``: this client's decryptor for the aggregate the server sends back."""
        if not self.holds_secret_key:
            raise AggregationError(f"client {self.client_id} holds no CKKS secret key (key_holder = 'authority')")
        return CKKSDecryptor(self._context, self.fingerprint, self.parameters)


def _ciphertext_key(i: int) -> str:
    return f"{CIPHERTEXT_PREFIX}{i:05d}"


# --------------------------------------------------------------------------- server


class CKKSServer:
    """The server's side: the public context only, so it adds ciphertexts it cannot decrypt.

    Parameters
    ----------
    parameters
        The encryption parameters (public).
    public_context
        :attr:`CKKSKeyHolder.public_context`; a context that carries a secret key is refused.
    key_id
        :attr:`CKKSKeyHolder.key_id`; with the public context it gives the fingerprint that
        every message must carry.
    """

    def __init__(self, parameters: CKKSParameters, public_context: bytes, key_id: bytes) -> None:
        self.parameters = parameters
        self.context = load_context(public_context)
        if self.context.is_private():
            raise ValueError("the server's CKKS context must not hold the secret key")
        self.fingerprint = fingerprint(public_context, key_id)

    def accumulator(self, round: int, participants: Sequence[int], *, layout: VectorLayout | None = None) -> CKKSServerAccumulator:
        return CKKSServerAccumulator(self, round, participants, layout=layout)


class CKKSServerAccumulator:
    """One round's running homomorphic sum; ``add`` validates a message fully before folding it in.

    ``layout``, when given, is the layout the server expects from its own model; otherwise the
    first accepted message fixes it (and a forged first message blocks every honest one).
    """

    def __init__(self, server: CKKSServer, round: int, participants: Sequence[int], *, layout: VectorLayout | None = None) -> None:
        self.server = server
        self.round = operator.index(round)
        self.participants = frozenset(operator.index(c) for c in participants)
        self.layout: VectorLayout | None = layout
        self.fixed_layout = layout is not None
        self.layout_bytes = layout.to_bytes() if layout is not None else b""
        self.sums: list[ts.CKKSVector] = []
        self.received: list[int] = []
        self.seconds = 0.0

    def add(self, message: ClientMessage) -> None:
        """Validate ``message`` and add its ciphertexts to the running sums; on error nothing changes."""
        start = time.perf_counter()
        try:
            self._add(message)
        finally:
            self.seconds += time.perf_counter() - start

    def _add(self, message: ClientMessage) -> None:
        who = check_envelope(message, round=self.round, participants=self.participants, received=self.received)
        payload = message.payload
        if not isinstance(payload, Mapping):
            raise AggregationError(f"{who} sent a payload that is a {type(payload).__name__}, not a table")
        for key in (ROUND_KEY, LAYOUT_KEY, CONTEXT_KEY):
            if key not in payload:
                raise AggregationError(f"{who} sent no {key!r} field")
        tag = np.asarray(payload[ROUND_KEY])
        if tag.shape != (1,) or tag.dtype.kind not in "iu" or int(tag[0]) != self.round:
            raise AggregationError(f"{who} sent ciphertexts tagged for round {tag.reshape(-1)[:1].tolist()} (replayed or stale)")
        if not isinstance(payload[CONTEXT_KEY], bytes) or payload[CONTEXT_KEY] != self.server.fingerprint:
            raise AggregationError(f"{who} sent ciphertexts made under another CKKS key set (key fingerprint mismatch)")
        raw_layout = payload[LAYOUT_KEY]
        try:
            layout = VectorLayout.from_bytes(raw_layout)  # type: ignore[arg-type]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise AggregationError(f"{who} sent a malformed layout") from None
        if self.layout is not None and layout != self.layout:
            fixed_by = "the server fixed for the round" if self.fixed_layout else "the first accepted client sent"
            raise AggregationError(f"{who} sent a layout that differs from the one {fixed_by}")
        length = layout.values_size + CHECK_SLOTS
        params = self.server.parameters
        expected = params.num_ciphertexts(length)
        if not all(isinstance(k, str) for k in payload):
            raise AggregationError(f"{who} sent a payload with keys that are not names")
        keys = [k for k in payload if k.startswith(CIPHERTEXT_PREFIX)]
        if sorted(keys) != [_ciphertext_key(i) for i in range(expected)] or len(payload) != len(keys) + 3:
            raise AggregationError(f"{who} sent {len(keys)} ciphertexts (payload keys {sorted(payload)[:4]}...), expected {expected}")
        data_primes = len(params.coeff_mod_bit_sizes) - 1  # a fresh ciphertext sits at the data level
        shape = CiphertextShape(params.poly_modulus_degree, data_primes)
        vectors = []
        for i in range(expected):
            data = payload[_ciphertext_key(i)]
            if not isinstance(data, bytes):
                raise AggregationError(f"{who} sent ciphertext {i} as {type(data).__name__}, not bytes")
            try:
                # checked and inflated within the honest size before TenSEAL allocates anything (secagg/seal_bytes.py)
                plain = fresh_vector_bytes(data, shape)
            except ValueError as error:
                raise AggregationError(f"{who} sent ciphertext {i} that is not a fresh encryption: {error}") from None
            try:
                vector = ts.ckks_vector_from(self.server.context, plain)
                (ciphertext,) = vector.ciphertext()
                scale, level, polys = ciphertext.scale, ciphertext.coeff_modulus_size(), ciphertext.size()
            except (ValueError, RuntimeError, TypeError, IndexError) as error:
                raise AggregationError(
                    f"{who} sent ciphertext {i} that does not deserialize under the round's CKKS context ({error})"
                ) from None
            size = min(params.slots, length - i * params.slots)
            if vector.size() != size:
                raise AggregationError(f"{who} sent ciphertext {i} of {vector.size()} values, expected {size}")
            if scale != params.scale:
                raise AggregationError(f"{who} sent ciphertext {i} at scale 2^{math.log2(scale):.4g}, expected 2^{params.scale_bits}")
            if level != data_primes or polys != 2:
                raise AggregationError(
                    f"{who} sent ciphertext {i} with {polys} polynomials over {level} primes, "
                    f"expected a fresh encryption (2 polynomials over {data_primes} primes)"
                )
            vectors.append(vector)
        # validated: fold in, in place (exact modular arithmetic, so a failed add is rolled back exactly)
        if not self.sums:
            self.sums = vectors
        else:
            added = 0
            try:
                for total, vector in zip(self.sums, vectors, strict=True):
                    total.add_(vector)
                    added += 1
            except (ValueError, RuntimeError, TypeError) as error:
                for total, vector in zip(self.sums[:added], vectors[:added], strict=True):
                    total.sub_(vector)
                raise AggregationError(f"{who} sent ciphertexts that cannot be added to the others' ({error})") from None
        if not self.fixed_layout:
            self.layout, self.layout_bytes = layout, bytes(raw_layout)  # type: ignore[arg-type]
        self.received.append(message.client_id)

    def result(self) -> EncryptedAggregate:
        """The encrypted sum, serialized for the decryptor."""
        if not self.received:
            raise AggregationError(f"round {self.round}: no client messages to aggregate")
        start = time.perf_counter()
        ciphertexts = tuple(total.serialize() for total in self.sums)
        self.seconds += time.perf_counter() - start
        return EncryptedAggregate(self.round, len(self.received), self.layout_bytes, self.server.fingerprint, ciphertexts)


# --------------------------------------------------------------------------- decryptor


def too_few(count: int, minimum: int) -> str:
    """Why a sum of ``count`` contributions is not decrypted: the key holder's minimum."""
    return (
        f"the aggregate holds {count} client contributions; the key holder decrypts sums of at least {minimum} "
        "(secure_aggregation.threshold, or the planned round its clients' noise shares are sized for)"
    )


class CKKSDecryptor:
    """Decrypts aggregates (a client under ``"clients"``, the authority under ``"authority"``) and checks them.

    The count slot must equal the number of clients the server claims (rounded: the slots
    carry CKKS noise) and the round slot ``count * round``: a server that adds a client twice,
    or a stale ciphertext replayed under a fresh round tag, is caught here (not which client).
    A server that deviates on purpose can defeat both checks (it may add plaintexts), so
    they guard an honest-but-curious server's mistakes, not a malicious one.
    """

    def __init__(self, context: ts.Context, fingerprint: bytes, parameters: CKKSParameters) -> None:
        if not context.is_private():
            raise ValueError("a CKKS decryptor needs the secret key")
        self._context = context
        self.fingerprint = bytes(fingerprint)
        self.parameters = parameters

    def decrypt(self, aggregate: EncryptedAggregate, *, min_contributions: int = 1) -> DecryptedSums:
        """The weighted sums, the total weight and the count from an encrypted aggregate; an aggregate of fewer than
        ``min_contributions`` clients is refused (:meth:`CKKSProtocol.protect_sums_of`: the noise shares are sized for
        that many, so a smaller sum would be released under less noise than the ledger counts)."""
        where = f"round {aggregate.round}"
        if aggregate.fingerprint != self.fingerprint:
            raise AggregationError(f"{where}: the aggregate was made under another CKKS key set")
        try:
            layout = VectorLayout.from_bytes(aggregate.layout)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise AggregationError(f"{where}: the aggregate's layout is malformed") from None
        length = layout.values_size + CHECK_SLOTS
        if len(aggregate.ciphertexts) != self.parameters.num_ciphertexts(length):
            raise AggregationError(f"{where}: the aggregate has {len(aggregate.ciphertexts)} ciphertexts for {length} values")
        parts = []
        # the server's bytes, checked as a client's are: one ciphertext of a fresh one's shape each (secagg/seal_bytes.py)
        shape = CiphertextShape(self.parameters.poly_modulus_degree, len(self.parameters.coeff_mod_bit_sizes) - 1)
        try:
            for data in aggregate.ciphertexts:
                if not isinstance(data, bytes):
                    raise TypeError(f"a ciphertext arrived as {type(data).__name__}, not bytes")
                parts.append(np.asarray(ts.ckks_vector_from(self._context, fresh_vector_bytes(data, shape)).decrypt(), dtype=np.float64))
        except (ValueError, RuntimeError, TypeError) as error:
            raise AggregationError(f"{where}: the aggregate does not decrypt ({error})") from None
        values = np.concatenate(parts)
        if values.shape != (length,):
            raise AggregationError(f"{where}: the aggregate decrypts to {values.size} values, expected {length}")
        total_weight, count, round_sum = (float(v) for v in values[-CHECK_SLOTS:])
        n = aggregate.num_clients
        if abs(count - n) >= 0.5:
            raise AggregationError(f"{where}: the aggregate holds {count:.1f} client contributions, the server claims {n}")
        if n < min_contributions:
            raise AggregationError(f"{where}: {too_few(n, min_contributions)}")
        if abs(round_sum - n * aggregate.round) >= 0.5:
            raise AggregationError(
                f"{where}: the aggregate's round slots sum to {round_sum:.1f}, not {n} x {aggregate.round}: "
                "it holds a ciphertext of another round (replayed or stale)"
            )
        # secure-ffm's weights are example counts or 1: a total within the error bound of an integer is that
        # integer (so that e.g. DP-FedAvg's count of uniformly weighted clients is exact); this moves it by at
        # most the bound, so a fractional total stays within twice the bound
        nearest = float(round(total_weight))
        if abs(total_weight - nearest) <= self.parameters.error_bound(n):
            total_weight = nearest
        delta, stats = layout.split(values[: layout.values_size])
        return DecryptedSums(delta, stats, total_weight, n)


# --------------------------------------------------------------------------- the registered protocol


class CKKSProtocol(AggregationProtocol):
    """CKKS homomorphic aggregation between a key holder, the clients and the server.

    Parameters
    ----------
    parameters
        The encryption parameters; ``None`` for the defaults (8192, [60, 60], 2^40).
    key_holder
        ``"clients"`` (a secret key shared by all clients; a client decrypts) or
        ``"authority"`` (clients hold the public key only; the authority decrypts).

    The key set is drawn by the key holder at the first round and kept for the run (clients and
    the server load their contexts once), as a provisioned deployment would. Each round the
    server half (:class:`CKKSServerRound`) sums ciphertexts; under ``"clients"`` it sends the
    encrypted sum to one surviving participant's :class:`CKKSClientRound` to decrypt (stage
    ``decrypt``), so the server never holds the secret key.
    """

    name = "ckks"
    label = "CKKS aggregation"
    hides_updates = True
    needs_key_file = True

    def __init__(self, *, parameters: CKKSParameters | None = None, key_holder: str = "clients", threshold: int = 0) -> None:
        if key_holder not in KEY_HOLDERS:
            raise ValueError(f"key_holder must be one of {KEY_HOLDERS}, got {key_holder!r}")
        self.min_sum = max(1, operator.index(threshold))
        """The fewest contributions the key holder decrypts a sum of: ``secure_aggregation.threshold``, raised to what
        distributed noise shares are sized for (:meth:`protect_sums_of`)."""
        self.parameters = parameters if parameters is not None else CKKSParameters()
        self.key_holder_mode = key_holder
        self.key_holder: CKKSKeyHolder | ProvisionedKeySet | None = None
        self.server: CKKSServer | None = None
        self.clients: dict[int, CKKSClient] = {}
        """Client side: each client's context, loaded once from the key holder and reused every round."""

    @classmethod
    def check_run(cls, config: Config, data: FederatedData) -> None:
        """Refuse CKKS parameters whose headroom every client would exceed, before anything is written.

        Each CKKS client checks ``|w * value| <= 2^headroom_bits / n`` for its slots ``[w * delta, w, 1, round]``
        (:meth:`secure_ffm.secagg.ckks.CKKSClient.encrypt`) and declines otherwise. The weight ``w`` is at most the
        largest client's example count (FedAvg weighting; 1 under uniform weighting), a delta coordinate is taken
        to be within ``secure_aggregation.clip_range``, and the round slot reaches ``server.rounds``. A scale that
        leaves less headroom than that bound would have every client decline every round: a run that exits 0 untrained.
        """
        from secure_ffm.engine.client import client_weight

        secure = config.secure_aggregation
        parameters = CKKSParameters.from_config(secure)
        participants = config.server.clients_per_round or data.num_clients
        largest_weight = max(client_weight("examples", len(indices)) for indices in data.client_indices)
        slot = max(largest_weight * secure.clip_range, largest_weight, float(config.server.rounds))
        needed = participants * slot
        if needed <= parameters.max_magnitude:
            return
        needed_bits = math.ceil(math.log2(needed))
        best_scale = parameters.data_bits - 2 - needed_bits
        more_primes = "add a data prime to secure_aggregation.ckks_coeff_mod_bit_sizes, e.g. [60, 40, 60] with scale 40"
        fix = f"lower secure_aggregation.ckks_scale_bits to at most {best_scale}, or {more_primes}" if best_scale >= 20 else more_primes
        raise ConfigError(
            "secure_aggregation.ckks_scale_bits",
            f"scale 2^{secure.ckks_scale_bits} leaves 2^{parameters.headroom_bits} of headroom below the data primes "
            f"{list(secure.ckks_coeff_mod_bit_sizes[:-1])}, but a sum of {participants} clients can reach {needed:.4g} "
            f"({participants} x max(weight {largest_weight:g} x clip_range {secure.clip_range:g}, round {config.server.rounds})): "
            "every client would decline",
            fix,
        )

    @classmethod
    def from_config(cls, config: SecureAggregationConfig, *, seed: int) -> CKKSProtocol:
        """The protocol of a ``[secure_aggregation]`` section; parameters SEAL refuses raise ConfigError.

        ``seed`` is unused: CKKS encryption draws its randomness from the OS CSPRNG, never from the run seed.
        """
        key = "secure_aggregation.ckks_coeff_mod_bit_sizes"
        try:
            parameters = CKKSParameters.from_config(config)
            parameters.new_context(symmetric=True)  # SEAL checks the primes exist and fit the security bound
        except (ValueError, RuntimeError) as error:
            raise ConfigError(
                key, f"TenSEAL refuses N={config.ckks_poly_modulus_degree} with primes {list(config.ckks_coeff_mod_bit_sizes)}: {error}"
            ) from None
        return cls(parameters=parameters, key_holder=config.ckks_key_holder, threshold=config.threshold)

    @classmethod
    def fewest_to_aggregate(cls, config: Config) -> int:
        """The key holder's minimum: ``secure_aggregation.threshold`` (distributed noise shares, which raise it, are
        never Poisson-sampled), else 1."""
        return max(1, int(config.secure_aggregation.threshold))

    @classmethod
    def smallest_sum(cls, config: Config) -> int:
        """``secure_aggregation.threshold``, else every planned participant: any client may drop under CKKS, and the key
        holder refuses a sum of fewer than this (distributed noise shares sized for every participant before 2026-12-07
        left a round with dropouts under-noised: its variance scaled with the survivors)."""
        participants = config.round_size
        return min(int(config.secure_aggregation.threshold), participants) if config.secure_aggregation.threshold else participants

    @classmethod
    def check_config(cls, config: Config) -> None:
        """A CKKS threshold is the fewest contributions the key holder decrypts: at most a round's participants."""
        threshold = config.secure_aggregation.threshold
        participants = config.round_size
        if threshold > participants:
            raise ConfigError(
                "secure_aggregation.threshold",
                f"t={threshold} is more than the {participants} participants of a round, so no sum could ever be decrypted",
                f"use 1 to {participants}, or 0 (every participant under distributed noise shares, otherwise any)",
            )

    def protect_sums_of(self, min_sum: int) -> None:
        """Distributed noise shares are sized for sums of ``min_sum``: the key holder decrypts no sum of fewer (CKKS has
        no dropout threshold of its own; any client may drop, and the server sums whoever arrived)."""
        self.min_sum = max(self.min_sum, operator.index(min_sum))

    def deal_key_files(self) -> dict[str, bytes]:
        return deal_key_files(self.parameters, key_holder=self.key_holder_mode)

    def use_key_file(self, data: bytes, *, role: str) -> None:
        """Load a key set dealt out of band (:func:`deal_key_files`) instead of drawing one: the server loads the server's
        file, each deployed client the clients' file, the key authority (``ckks_key_holder = "authority"``) its own. A file
        for other parameters, another key holder, another role, or - for the server - one that holds a secret key is
        refused."""
        from secure_ffm.engine.codec import CodecError, from_bytes

        try:
            key_file = from_bytes(data)
        except CodecError as error:
            raise ConfigError("ckks-keys", f"the key file does not load: {error}", "write it with `secure-ffm ckks-keys`") from None
        if not isinstance(key_file, KeyFile):
            raise ConfigError(
                "ckks-keys", f"the file holds a {type(key_file).__name__}, not a CKKS key file", "write it with `secure-ffm ckks-keys`"
            )
        if key_file.key_holder != self.key_holder_mode:
            raise ConfigError(
                "secure_aggregation.ckks_key_holder",
                f"is {self.key_holder_mode!r}, but the key file was dealt for ckks_key_holder = {key_file.key_holder!r}",
                "deal the key files again with `secure-ffm ckks-keys` for this config",
            )
        expected = (self.parameters.poly_modulus_degree, tuple(self.parameters.coeff_mod_bit_sizes), self.parameters.scale_bits)
        if tuple(key_file.parameters) != expected or key_file.role != role:
            raise ConfigError(
                "ckks-keys",
                f"the key file is the {key_file.role} file for (N, primes, scale) = {tuple(key_file.parameters)}; "
                f"this party needs the {role} file for {expected}",
                "give each party its own file from `secure-ffm ckks-keys` for this config",
            )
        holds_secret = key_file.authority_context or (key_file.client_context and self.key_holder_mode == "clients")
        if role == "server" and holds_secret:
            raise ConfigError("ckks-keys", "the server's key file holds the secret key", "give the server the server's file only")
        keys = ProvisionedKeySet(key_file, self.parameters)
        self.key_holder = keys
        self.server = CKKSServer(self.parameters, keys.public_context, keys.key_id)
        self.clients.clear()

    @property
    def waits_for_authority(self) -> bool:
        return self.key_holder_mode == "authority" and self.key_holder is not None and not self.key_holder.can_decrypt

    def authority_answer(self, stage: str, request: Any) -> Any:
        """The key authority decrypts an aggregate (its :class:`CKKSDecryptor` checks the count and round slots); it
        answers nothing else."""
        if self.key_holder is None or not self.key_holder.can_decrypt or self.key_holder_mode != "authority":
            raise AggregationError("this process is not the CKKS key authority (it holds no authority key file)")
        if stage != DECRYPT or not isinstance(request, EncryptedAggregate):
            raise AggregationError(f"the key authority refuses a {type(request).__name__} as CKKS stage {stage!r}")
        return self.key_holder.decryptor().decrypt(request, min_contributions=self.min_sum)

    def _provision(self) -> CKKSKeyHolder:
        """Draw the key set on first use (the key holder deals it; neither the server nor a client draws it)."""
        if self.key_holder is None:
            self.key_holder = CKKSKeyHolder(self.parameters, key_holder=self.key_holder_mode)
            self.server = CKKSServer(self.parameters, self.key_holder.public_context, self.key_holder.key_id)
            log.debug(
                "ckks: key set %s drawn (N=%d, key holder %s)",
                self.key_holder.fingerprint.hex()[:12],
                self.parameters.poly_modulus_degree,
                self.key_holder_mode,
            )
        return self.key_holder

    def server_round(
        self,
        round: int,
        participants: Sequence[int],
        *,
        weight_bound: float | None = None,
        layout: VectorLayout | None = None,
        instructions_digest: bytes | None = None,
    ) -> CKKSServerRound:
        """The server's homomorphic sum for the round; ``layout``, the layout the server expects, fixes it."""
        start = time.perf_counter()
        ids = tuple(sorted(operator.index(c) for c in participants))
        if not ids or len(set(ids)) != len(ids):
            raise ValueError(f"round {round}: participants must be distinct and non-empty, got {list(participants)}")
        holder = self._provision()
        assert self.server is not None
        # under "authority" the decryptor is this process's when it holds the secret key (in-process, a pool's main
        # process); on a deployment the server holds the public file only and the authority answers a stage
        authority = holder.decryptor() if self.key_holder_mode == "authority" and holder.can_decrypt else None
        accumulator = self.server.accumulator(operator.index(round), ids, layout=layout)
        return CKKSServerRound(
            accumulator,
            authority=authority,
            remote_authority=self.waits_for_authority,
            setup_seconds=time.perf_counter() - start,
            min_sum=self.min_sum,
        )

    def client_round(self, client_id: int, round: int) -> CKKSClientRound:
        """The client's half: its context, loaded once from the key holder and reused every round."""
        holder = self._provision()
        client = self.clients.get(client_id)
        if client is None:
            client = self.clients[client_id] = CKKSClient(client_id, self.parameters, holder.client_context(), holder.fingerprint)
        return CKKSClientRound(client, round, min_sum=self.min_sum)

    def decryptor(self) -> CKKSDecryptor:
        """Who decrypts: a client of the last round begun in this process under ``"clients"``, the authority under ``"authority"``."""
        if self.key_holder is None:
            raise AggregationError("the CKKS key set has not been drawn (call begin_round)")
        if self.key_holder_mode == "clients":
            if self.in_process is None:
                raise AggregationError("no CKKS round has begun in this process (call begin_round)")
            return self.clients[min(self.in_process.clients)].decryptor()
        return self.key_holder.decryptor()


DECRYPT = "decrypt"
"""The stage in which, under ``key_holder = "clients"``, the server sends the encrypted aggregate to one participant to decrypt."""


class CKKSClientRound(ClientRound):
    """A client's half of one round: encrypts its update; under ``"clients"`` it also answers the ``decrypt`` stage."""

    def __init__(self, client: CKKSClient, round: int, *, min_sum: int = 1) -> None:
        self.client = client
        self.round = round
        self.min_sum = min_sum
        """The fewest contributions this client decrypts a sum of (its own config's :attr:`CKKSProtocol.min_sum`)."""

    def encode(
        self,
        update: ClientUpdate,
        *,
        weight: float,
        rng: np.random.Generator | None = None,
        payload: Any = None,
        instructions_digest: bytes | None = None,
    ) -> ClientMessage:
        """``payload`` is the round's number of participants (for the headroom check), from the server's set-up. A
        ciphertext is not bound to the fit request (CKKS trusts the server to follow the protocol: docs/threat_model.md)."""
        num_participants = operator.index(payload) if payload is not None else 1
        return self.client.encrypt(update, weight=weight, round=self.round, num_participants=num_participants)

    def handle(self, stage: str, request: Any) -> Any:
        if stage == DECRYPT and isinstance(request, EncryptedAggregate) and request.round == self.round:
            return self.client.decryptor().decrypt(request, min_contributions=self.min_sum)
        raise AggregationError(
            f"round {self.round}: client {self.client.client_id} refuses a {type(request).__name__} as CKKS stage {stage!r}"
        )


class CKKSServerRound(ServerRound):
    """The server's homomorphic running sum; :meth:`finish` has the aggregate decrypted and divides by the total weight.

    Under ``"clients"`` the decryption is a message stage to one surviving participant (the server holds no secret
    key); under ``"authority"`` the authority's decryptor is called directly where this process holds it, and on a
    deployment it is a message stage to the key authority (party :data:`~secure_ffm.engine.aggregation.AUTHORITY`).
    """

    def __init__(
        self,
        accumulator: CKKSServerAccumulator,
        *,
        authority: CKKSDecryptor | None,
        setup_seconds: float,
        remote_authority: bool = False,
        min_sum: int = 1,
    ) -> None:
        self.accumulator = accumulator
        self.min_sum = min_sum
        """The fewest contributions the key holder decrypts: a round with fewer aborts before it asks (the key holder
        would refuse: :meth:`CKKSDecryptor.decrypt`)."""
        self._authority = authority
        self._remote_authority = remote_authority
        self.setup_seconds = setup_seconds

    def setup(self) -> Stages[dict[int, int]]:
        """No stage: each participant's fit request carries the round size, which bounds every client's headroom."""
        return {c: len(self.accumulator.participants) for c in self.accumulator.participants}
        yield  # a generator without stages

    def add(self, message: ClientMessage) -> None:
        self.accumulator.add(message)

    def finish(self) -> Stages[Aggregate]:
        encrypted = self.accumulator.result()
        if encrypted.num_clients < self.min_sum:
            raise AggregationError(f"round {encrypted.round}: {too_few(encrypted.num_clients, self.min_sum)}")
        start = time.perf_counter()
        if self._authority is not None:
            sums = self._authority.decrypt(encrypted, min_contributions=self.min_sum)
        else:
            decrypting = AUTHORITY if self._remote_authority else min(self.accumulator.received)
            answer = yield Stage(DECRYPT, {decrypting: encrypted})
            sums = answer.replies.get(decrypting)
            if not isinstance(sums, DecryptedSums):
                who = "the key authority" if decrypting == AUTHORITY else f"client {decrypting}"
                raise AggregationError(f"round {encrypted.round}: {who} did not decrypt the aggregate")
        check_decrypted(sums, VectorLayout.from_bytes(encrypted.layout), round=encrypted.round, num_clients=encrypted.num_clients)
        mean = {k: (v / sums.total_weight).astype(np.float32) for k, v in sums.delta.items()}
        mean_stats = {k: v / sums.total_weight for k, v in sums.statistics.items()}
        timings = {"setup": self.setup_seconds, "aggregate": self.accumulator.seconds, "decrypt": time.perf_counter() - start}
        return Aggregate(mean, sums.total_weight, sums.num_clients, timings, mean_stats)


__all__ = [
    "DECRYPT",
    "CKKSClient",
    "CKKSClientRound",
    "CKKSDecryptor",
    "CKKSEncodeError",
    "CKKSKeyHolder",
    "CKKSParameters",
    "CKKSProtocol",
    "CKKSServer",
    "CKKSServerAccumulator",
    "CKKSServerRound",
    "DecryptedSums",
    "EncryptedAggregate",
]
