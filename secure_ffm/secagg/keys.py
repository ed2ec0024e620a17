"""X25519 key agreement and the 32-byte seeds that pairwise masks are expanded from.

Each pair of clients ``(u, v)`` agrees on a shared secret without talking to each
other directly: both publish an X25519 public key through the server and combine
their own private key with the other's public key (Diffie-Hellman, as in Bonawitz
et al., CCS 2017, Sec. 4, with the curve of RFC 7748). The raw shared secret is not
used as a mask seed directly; :func:`shared_seed` runs it through HKDF-SHA256
(RFC 5869) with an ``info`` string that binds

* a fixed protocol label (domain separation from any other use of the keys),
* a caller-chosen context, normally :func:`pair_context` (the round and the pair,
  and for pairwise masks a digest of the round's set-up and of the fit request the
  client trained on), so that keys reused across rounds still give fresh masks every
  round, and two clients sent different set-ups or models get masks that do not cancel,
* both public keys, in sorted order (so both sides compute the same string).

Private keys are 32 raw bytes (:func:`private_bytes`) so that they can be
Shamir-shared (:mod:`secure_ffm.secagg.shamir`) and rebuilt by the server when their
owner drops out. All key material comes from the operating system's CSPRNG.
"""

from __future__ import annotations

import operator
import secrets
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
"""Bytes of a raw X25519 private or public key."""

SEED_BYTES = 32
"""Bytes of a mask seed (an AES-256 key for :func:`secure_ffm.secagg.masking.expand`)."""

_SEED_LABEL = b"secure-ffm/secagg/v1/pair-seed"
_CONTEXT_LABEL = b"secure-ffm/secagg/v1/pair-context"
_BINDING_LABEL = b"/bound-to:"
_BINDING_BYTES = 32


def generate_private_key() -> X25519PrivateKey:
    """A fresh X25519 private key from the operating system's CSPRNG."""
    return X25519PrivateKey.generate()


def public_bytes(private_key: X25519PrivateKey) -> bytes:
    """The 32 raw bytes of ``private_key``'s public key (what a client publishes)."""
    return private_key.public_key().public_bytes_raw()


def private_bytes(private_key: X25519PrivateKey) -> bytes:
    """The 32 raw bytes of ``private_key`` (what a client Shamir-shares; never sent in the clear)."""
    return private_key.private_bytes_raw()


def private_key_from_bytes(data: bytes) -> X25519PrivateKey:
    """The private key that :func:`private_bytes` wrote (e.g. rebuilt from Shamir shares)."""
    if len(data) != KEY_BYTES:
        raise ValueError(f"an X25519 private key is {KEY_BYTES} bytes, got {len(data)}")
    return X25519PrivateKey.from_private_bytes(bytes(data))


def random_seed() -> bytes:
    """A fresh :data:`SEED_BYTES`-byte seed from :func:`secrets.token_bytes` (a client's self-mask seed)."""
    return secrets.token_bytes(SEED_BYTES)


def pair_context(*, round: int, client_a: int, client_b: int, session: bytes = b"", binding: bytes = b"") -> bytes:
    """The HKDF context for the pair ``{client_a, client_b}`` in ``round``; symmetric in the pair.

    Parameters
    ----------
    round
        The federated round (non-negative), so masks never repeat across rounds.
    client_a, client_b
        The two distinct, non-negative client ids (order does not matter).
    session
        Optional bytes naming the federation or run, for keys shared across runs.
    binding
        For pairwise masks, 32 bytes that name what the client's masked input was made from: the round's set-up as the
        client accepted it and the fit request it trained on (:func:`secure_ffm.secagg.masking_protocol.mask_binding`);
        or empty. Two clients that were sent different set-ups or different models derive different seeds for their
        pair, so their masks do not cancel in the sum (a server that lies to some clients then unmasks noise, not the
        target's update).
    """
    r, a, b = operator.index(round), operator.index(client_a), operator.index(client_b)
    if r < 0 or a < 0 or b < 0:
        raise ValueError(f"round and client ids must be non-negative, got round={r}, clients={a},{b}")
    if a == b:
        raise ValueError(f"a pair needs two different clients, got {a} twice")
    if binding and len(binding) != _BINDING_BYTES:
        raise ValueError(f"a mask binding has {_BINDING_BYTES} bytes, got {len(binding)}")
    bound = _BINDING_LABEL + bytes(binding) if binding else b""
    return _CONTEXT_LABEL + struct.pack(">QQQ", r, min(a, b), max(a, b)) + bound + bytes(session)


def shared_seed(private_key: X25519PrivateKey, peer_public_bytes: bytes, *, context: bytes) -> bytes:
    """The 32-byte seed that this client and the owner of ``peer_public_bytes`` both derive.

    ``HKDF-SHA256(ikm=X25519(private_key, peer), salt=None, info=label || len(context) ||
    context || min(pk_self, pk_peer) || max(pk_self, pk_peer))``.

    Parameters
    ----------
    private_key
        This side's private key (or a dropped client's, rebuilt by the server).
    peer_public_bytes
        The other side's 32-byte raw public key.
    context
        Binds the seed to its use, normally :func:`pair_context`; a different context gives
        an unrelated seed.

    Raises
    ------
    ValueError
        For a malformed or low-order peer key (``cryptography`` rejects an all-zero shared
        secret), or a peer key equal to this side's own.
    """
    if len(peer_public_bytes) != KEY_BYTES:
        raise ValueError(f"an X25519 public key is {KEY_BYTES} bytes, got {len(peer_public_bytes)}")
    own = public_bytes(private_key)
    peer = bytes(peer_public_bytes)
    if own == peer:
        raise ValueError("the peer's public key is this client's own: a client shares no mask with itself")
    secret = private_key.exchange(X25519PublicKey.from_public_bytes(peer))
    info = _SEED_LABEL + struct.pack(">I", len(context)) + bytes(context) + min(own, peer) + max(own, peer)
    return HKDF(algorithm=hashes.SHA256(), length=SEED_BYTES, salt=None, info=info).derive(secret)
