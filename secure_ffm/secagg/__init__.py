"""Pure primitives of pairwise-masking secure aggregation (SecAgg and SecAgg+).

Bonawitz et al., CCS 2017, "Practical Secure Aggregation for Privacy-Preserving
Machine Learning"; Bell et al., CCS 2020, "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead". One round, from the primitives here:

1. Clients quantize their (weighted, clipped) update into Z_{2^32}
   (:mod:`~secure_ffm.secagg.quantization`), with ``levels_for(n)`` levels so the sum of
   ``n`` encodings cannot wrap.
2. The server picks who masks with whom (:mod:`~secure_ffm.secagg.graph`) and the Shamir
   threshold (``recommended_threshold``).
3. Clients publish X25519 public keys and derive one seed per neighbour
   (:mod:`~secure_ffm.secagg.keys`), Shamir-share their private key and a fresh self-mask
   seed among their neighbours (:mod:`~secure_ffm.secagg.shamir`), and send
   ``mask_vector(...)`` (:mod:`~secure_ffm.secagg.masking`).
4. The server sums the masked vectors (``ring_sum``), rebuilds the survivors' self seeds
   and the dropped clients' private keys from shares, and calls ``unmask_sum`` then
   ``decode_sum``.

Everything here is a pure function of its inputs plus, where secrecy needs it, the
operating system's CSPRNG (keys, self seeds, Shamir coefficients); the protocol driver
that exchanges the messages is :mod:`~secure_ffm.secagg.masking_protocol`.

CKKS homomorphic aggregation (Cheon et al., ASIACRYPT 2017, with TenSEAL) lives in
:mod:`~secure_ffm.secagg.ckks`; its key holder, client, server and driver are exported here
lazily, so importing the masking primitives does not load TenSEAL.
"""

from typing import Any

from secure_ffm.secagg.graph import Graph, full_graph, harary_graph, recommended_threshold
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
from secure_ffm.secagg.quantization import RING_BITS, decode_sum, encode, error_bound, levels_for, quantization_step
from secure_ffm.secagg.shamir import combine, share_from_bytes, share_to_bytes, split

_CKKS_EXPORTS = (
    "CKKSClient",
    "CKKSDecryptor",
    "CKKSEncodeError",
    "CKKSKeyHolder",
    "CKKSParameters",
    "CKKSProtocol",
    "CKKSServer",
    "EncryptedAggregate",
)


def __getattr__(name: str) -> Any:
    """The CKKS names, imported on first use (PEP 562)."""
    if name in _CKKS_EXPORTS:
        from secure_ffm.secagg import ckks

        return getattr(ckks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [  # the CKKS names resolve lazily through __getattr__
    *_CKKS_EXPORTS,
    "RING_BITS",
    "Graph",
    "combine",
    "decode_sum",
    "encode",
    "error_bound",
    "expand",
    "full_graph",
    "generate_private_key",
    "harary_graph",
    "levels_for",
    "mask_vector",
    "pair_context",
    "pairwise_mask",
    "private_bytes",
    "private_key_from_bytes",
    "public_bytes",
    "quantization_step",
    "random_seed",
    "recommended_threshold",
    "ring_sum",
    "share_from_bytes",
    "share_to_bytes",
    "shared_seed",
    "split",
    "unmask_sum",
]
