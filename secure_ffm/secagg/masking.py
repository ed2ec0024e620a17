"""Pairwise and self masks over Z_{2^32}: a client's masked vector, and the server's unmasking.

Bonawitz et al., CCS 2017 ("Practical Secure Aggregation for Privacy-Preserving
Machine Learning", Sec. 3-4). Client ``u`` with quantized input ``x_u`` sends::

    y_u = x_u + PRG(b_u) + sum_{v in N(u), u < v} PRG(s_uv) - sum_{v in N(u), u > v} PRG(s_uv)   (mod 2^32)

where ``s_uv`` is the seed it shares with neighbour ``v`` (:func:`secure_ffm.secagg.keys.shared_seed`)
and ``b_u`` its own random self-mask seed. Every pairwise term appears once with each
sign among the two ends of an edge, so in the sum over clients who all sent, only
``sum x_u + sum PRG(b_u)`` remains. When ``v`` drops out after ``u`` masked, ``u``'s
term for ``v`` does not cancel; the server rebuilds ``v``'s private key from Shamir
shares, recomputes ``s_uv`` for each survivor ``u`` and subtracts those terms. The
self mask ``b_u`` protects a survivor whose message arrives after the server already
asked for its key (a late client looks dropped); the server removes it from Shamir
shares of ``b_u``. An honest client reveals, for each peer, shares of one or the
other secret, never both. With SecAgg+ (Bell et al., CCS 2020) ``N(u)`` is the
client's neighbourhood in a sparse graph (:mod:`secure_ffm.secagg.graph`) rather
than all other clients.

The PRG is AES-256 in counter mode (``cryptography``) keyed by the 32-byte seed, with
a zero initial counter, read as little-endian ``uint32`` words. Each seed keys exactly
one stream (pair seeds are bound to the round and pair by their HKDF context, self
seeds are fresh per round), so the fixed counter never repeats a key stream. The
output is indistinguishable from uniform over Z_{2^32}, which makes ``y_u`` a one-time
pad of ``x_u``. numpy's generators are not used: they are not cryptographic.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SEED_BYTES = 32
_BLOCK_BYTES = 16
_WORD = np.dtype("<u4")


def expand(seed: bytes, length: int) -> np.ndarray:
    """``length`` pseudo-random ``uint32`` words from ``seed``: AES-256-CTR key stream, little-endian.

    Deterministic for a seed (a longer ``length`` extends a shorter one), unrelated across seeds.

    Parameters
    ----------
    seed
        Exactly 32 bytes of secret key material.
    length
        Number of words (non-negative).

    Returns
    -------
    numpy.ndarray
        Writable ``uint32`` array of shape ``(length,)``.
    """
    if len(seed) != SEED_BYTES:
        raise ValueError(f"a mask seed is {SEED_BYTES} bytes, got {len(seed)}")
    n = operator.index(length)
    if n < 0:
        raise ValueError(f"length must be non-negative, got {n}")
    encryptor = Cipher(algorithms.AES(bytes(seed)), modes.CTR(bytes(_BLOCK_BYTES))).encryptor()
    nbytes = n * _WORD.itemsize
    buffer = bytearray(nbytes + _BLOCK_BYTES - 1)  # update_into's required slack
    encryptor.update_into(bytes(nbytes), buffer)
    return np.frombuffer(buffer, dtype=_WORD, count=n).astype(np.uint32, copy=False)


def pairwise_mask(my_id: int, peer_id: int, seed: bytes, length: int) -> np.ndarray:
    """``+PRG(seed)`` when ``my_id < peer_id``, else ``-PRG(seed)`` (mod 2^32): the two ends cancel."""
    mask = expand(seed, length)
    if _sign(my_id, peer_id) < 0:
        np.negative(mask, out=mask)
    return mask


def mask_vector(x: np.ndarray, *, client_id: int, pair_seeds: Mapping[int, bytes], self_seed: bytes) -> np.ndarray:
    """``x + PRG(self_seed) + sum_peers pairwise_mask(client_id, peer, seed)`` mod 2^32.

    Parameters
    ----------
    x
        The client's quantized input, a ``uint32`` array of any shape (see
        :func:`secure_ffm.secagg.quantization.encode`).
    client_id
        This client's id; the sign of each pairwise term depends on it.
    pair_seeds
        ``{peer_id: seed}`` for every neighbour (all other participants without SecAgg+).
    self_seed
        This round's self-mask seed ``b_u``.

    Returns
    -------
    numpy.ndarray
        A new ``uint32`` array of ``x``'s shape; ``x`` is not modified.
    """
    x = _ring_array(x, "x")
    if client_id in pair_seeds:
        raise ValueError(f"client {client_id} cannot share a pairwise mask with itself")
    out = x.reshape(-1).copy()
    out += expand(self_seed, out.size)
    for peer_id, seed in pair_seeds.items():
        _fold_pairwise(out, client_id, peer_id, seed, +1)
    return out.reshape(x.shape)


def ring_sum(vectors: Iterable[np.ndarray]) -> np.ndarray:
    """The element-wise sum of ``uint32`` vectors mod 2^32 (what the server accumulates)."""
    total: np.ndarray | None = None
    for i, vector in enumerate(vectors):
        v = _ring_array(vector, f"vector {i}")
        if total is None:
            total = v.copy()
        elif v.shape != total.shape:
            raise ValueError(f"vector {i} has shape {v.shape}, expected {total.shape}")
        else:
            total += v
    if total is None:
        raise ValueError("ring_sum needs at least one vector")
    return total


def unmask_sum(
    masked_total: np.ndarray,
    *,
    self_seeds: Mapping[int, bytes],
    dropped_pair_seeds: Mapping[int, Mapping[int, bytes]],
) -> np.ndarray:
    """The sum of the survivors' inputs, from the sum of their masked vectors.

    Subtracts ``PRG(b_u)`` for every survivor ``u`` and, for every dropped client ``d``
    and survivor ``u`` that were neighbours, the term ``pairwise_mask(u, d, s_ud)`` that
    ``u`` added and ``d`` never cancelled.

    Parameters
    ----------
    masked_total
        ``ring_sum`` of the masked vectors of exactly the survivors (``uint32``, any shape).
    self_seeds
        ``{survivor_id: b_u}``: the survivors' self-mask seeds, rebuilt from shares.
    dropped_pair_seeds
        ``{dropped_id: {survivor_id: s_ud}}``: for each dropped client, its seed with each
        surviving neighbour, recomputed from its rebuilt private key.

    Returns
    -------
    numpy.ndarray
        ``uint32`` array ``sum_u x_u mod 2^32`` of ``masked_total``'s shape.

    Raises
    ------
    ValueError
        When a client appears both as a survivor and as dropped (the server must never hold
        both its self seed and its private key: that unmasks its individual input), or a
        dropped client's seed is given for a peer that is not a survivor.
    """
    total = _ring_array(masked_total, "masked_total")
    both = sorted(set(self_seeds) & set(dropped_pair_seeds))
    if both:
        raise ValueError(f"clients {both} are listed both as survivors and as dropped; that would unmask their inputs")
    out = total.reshape(-1).copy()
    for seed in self_seeds.values():
        out -= expand(seed, out.size)
    for dropped_id, seeds in dropped_pair_seeds.items():
        strangers = sorted(set(seeds) - set(self_seeds))
        if strangers:
            raise ValueError(f"dropped client {dropped_id} has seeds for {strangers}, which are not survivors")
        for survivor_id, seed in seeds.items():
            _fold_pairwise(out, survivor_id, dropped_id, seed, -1)
    return out.reshape(total.shape)


def _fold_pairwise(out: np.ndarray, my_id: int, peer_id: int, seed: bytes, direction: int) -> None:
    """``out += direction * pairwise_mask(my_id, peer_id, seed)`` in place, without a negated copy."""
    mask = expand(seed, out.size)
    if _sign(my_id, peer_id) * direction > 0:
        out += mask
    else:
        out -= mask


def _sign(my_id: int, peer_id: int) -> int:
    if my_id == peer_id:
        raise ValueError(f"client {my_id} cannot share a pairwise mask with itself")
    return 1 if my_id < peer_id else -1


def _ring_array(x: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(x)
    if array.dtype != np.uint32:
        raise TypeError(f"{name} must be a uint32 array (an element of Z_2^32), got dtype {array.dtype}")
    return array
