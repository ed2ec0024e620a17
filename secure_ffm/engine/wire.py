"""What crosses the wire between server and clients: named arrays plus plain metadata.

Nothing here is pickled. Arrays serialize with safetensors (:func:`arrays_to_bytes`),
metadata is JSON-able scalars, so a Flower ``ClientApp``/``ServerApp`` can carry the
same records as ``ArrayRecord``/``ConfigRecord``.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from safetensors.numpy import load as _st_load
from safetensors.numpy import save as _st_save

from secure_ffm.engine.codec import wire_record

NamedArrays = dict[str, np.ndarray]
Scalar = bool | int | float | str


def nbytes(arrays: Mapping[str, np.ndarray]) -> int:
    """Bytes of the raw array data (what an fp32 update costs on the wire, before framing)."""
    return int(sum(np.asarray(a).nbytes for a in arrays.values()))


def num_parameters(arrays: Mapping[str, np.ndarray]) -> int:
    return int(sum(np.asarray(a).size for a in arrays.values()))


def arrays_to_bytes(arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialize named arrays with safetensors (no pickle); 0-d arrays keep their shape, an empty mapping is valid."""
    # np.ascontiguousarray makes 0-d arrays 1-d; and safetensors 0.x writes a malformed header for no tensors
    # with an empty metadata table, so metadata is passed only when there is some
    contiguous = {k: np.ascontiguousarray(v).reshape(np.shape(v)) for k, v in arrays.items()}
    return _st_save(contiguous, metadata=dict(metadata) if metadata else None)


def arrays_from_bytes(data: bytes) -> NamedArrays:
    return dict(_st_load(data))


def subtract(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> NamedArrays:
    return {k: a[k] - b[k] for k in a}


def add(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> NamedArrays:
    return {k: a[k] + b[k] for k in a}


@wire_record
@dataclass(frozen=True)
class FitInstructions:
    """Server -> client: the global trainable parameters and this round's settings."""

    round: int
    parameters: NamedArrays
    config: Mapping[str, Scalar] = field(default_factory=dict)
    arrays: NamedArrays = field(default_factory=dict)
    """Further arrays the server broadcasts with the parameters (e.g. EWC's penalty weights and anchors)."""


INSTRUCTIONS_DIGEST_BYTES = 32


def _scalar_bytes(value: Any) -> bytes:
    """One config value, tagged by kind: ``True`` and ``1`` differ, ``1`` and ``numpy.int64(1)`` do not (a wire
    format may turn one into the other), nor ``0.5`` and ``numpy.float64(0.5)``."""
    if isinstance(value, bool | np.bool_):
        return b"b" + (b"\x01" if value else b"\x00")
    if isinstance(value, numbers.Integral):
        text = str(int(value)).encode()
        return b"i" + struct.pack(">I", len(text)) + text
    if isinstance(value, numbers.Real):
        return b"f" + struct.pack(">d", float(value))
    if isinstance(value, str):
        text = value.encode("utf-8")
        return b"s" + struct.pack(">I", len(text)) + text
    if isinstance(value, bytes):
        return b"y" + struct.pack(">I", len(value)) + value
    raise TypeError(f"a fit instruction's setting is a bool, int, float, str or bytes, got {type(value).__name__}")


def _name_bytes(name: Any) -> bytes:
    if not isinstance(name, str):  # a key 1 and a key "1" must not hash alike
        raise TypeError(f"a fit instruction's names are text, got {type(name).__name__} {name!r}")
    key = name.encode("utf-8")
    return struct.pack(">I", len(key)) + key


def _arrays_into(digest: Any, label: bytes, arrays: Mapping[str, np.ndarray]) -> None:
    digest.update(label + struct.pack(">Q", len(arrays)))
    for name in sorted(arrays):
        array = np.asarray(arrays[name])
        if array.dtype.kind not in "biufc" or array.dtype.fields is not None:
            raise TypeError(f"fit instruction array {name!r} is not numeric ({array.dtype})")
        dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
        kind = dtype.str.encode()
        digest.update(_name_bytes(name) + struct.pack(">I", len(kind)) + kind)
        digest.update(struct.pack(f">I{array.ndim}Q", array.ndim, *array.shape))
        digest.update(np.ascontiguousarray(array, dtype=dtype).reshape(-1).view(np.uint8))


def instructions_digest(ins: FitInstructions) -> bytes:
    """32 bytes that name everything a fit request asks a client to train with: the round, every global parameter
    (name, dtype, shape and bytes), every setting and every broadcast array (BLAKE2b-256, in sorted name order).

    An honest server sends all of a round's participants the same :class:`FitInstructions`, so they all compute the
    same digest; a server that sends different clients different models (Pasquini, Francati & Ateniese, "Eluding
    Secure Aggregation in Federated Learning via Model Inconsistency", ACM CCS 2022: every other client gets a model
    whose update is zero, and the secure sum is then the target's update) cannot make two different requests hash
    alike. Masking binds its pairwise masks to this digest (secure_ffm.secagg.masking_protocol), so the masks of two
    clients that trained on different requests do not cancel. The protocol's per-client payload is not covered: it
    differs between clients by design (the shares routed to each)."""
    digest = hashlib.blake2b(digest_size=INSTRUCTIONS_DIGEST_BYTES, person=b"sffm-fit-ins")
    digest.update(struct.pack(">q", int(ins.round)))
    _arrays_into(digest, b"parameters", ins.parameters)
    digest.update(b"config" + struct.pack(">Q", len(ins.config)))
    for name in sorted(ins.config, key=str):
        digest.update(_name_bytes(name) + _scalar_bytes(ins.config[name]))
    _arrays_into(digest, b"arrays", ins.arrays)
    return digest.digest()


@dataclass(frozen=True)
class ClientUpdate:
    """A client's result of local training, before it is encoded for aggregation.

    ``delta`` is the local model minus the global model it started from (a
    pseudo-gradient in the sense of Reddi et al., ICLR 2021), one array per
    trainable parameter.
    """

    client_id: int
    round: int
    delta: NamedArrays
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    statistics: NamedArrays = field(default_factory=dict)
    """Side statistics aggregated with the same weights as ``delta`` (and as privately, under secure
    aggregation), e.g. the unclipped indicator of adaptive clipping (Andrew et al., NeurIPS 2021)."""

    def replace_delta(self, delta: NamedArrays) -> ClientUpdate:
        return ClientUpdate(self.client_id, self.round, delta, self.num_examples, dict(self.metrics), dict(self.statistics))

    def with_statistics(self, **statistics: np.ndarray) -> ClientUpdate:
        return ClientUpdate(
            self.client_id, self.round, self.delta, self.num_examples, dict(self.metrics), {**self.statistics, **statistics}
        )


@wire_record
@dataclass(frozen=True)
class ClientMessage:
    """Client -> server: what the aggregation protocol lets the server see.

    For plaintext aggregation ``payload`` holds the weighted delta; secure
    aggregation protocols put masked or encrypted data there instead.
    """

    client_id: int
    round: int
    payload: Mapping[str, np.ndarray | bytes]
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        total = 0
        for value in self.payload.values():
            total += len(value) if isinstance(value, bytes | bytearray) else int(np.asarray(value).nbytes)
        return total


def to_jsonable(value: Any) -> Any:
    """``value`` as JSON holds it: string keys, lists for tuples and arrays or tensors (``tolist``), Python
    scalars for NumPy scalars, and None for a non-finite float (JSON has no NaN or infinity)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    elif hasattr(value, "tolist") and not isinstance(value, str | bytes):
        return to_jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
