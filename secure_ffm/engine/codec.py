"""A safe codec for what crosses a process boundary: protocol stages, fit requests and replies, client-side state.

The in-process transport hands Python objects from the orchestrator to a client; a network transport (Flower's
deployment engine, :mod:`secure_ffm.flower`) must turn the same objects into bytes and back on a machine that trusts
nobody. Pickle would run whatever code the sender chose, so nothing here is pickled. :func:`pack` turns a value into
JSON text plus named arrays (the arrays travel as Flower ``ArrayRecord`` entries, saved with ``numpy.save`` and
``allow_pickle=False``); :func:`unpack` rebuilds it, and it rebuilds only:

- JSON scalars, lists, tuples, sets, frozensets and dicts with any of these as keys;
- ``bytes`` and NumPy arrays and scalars of a numeric or boolean dtype (never ``object``);
- instances of the frozen dataclasses registered with :func:`wire_record` (the protocols' stage messages), built
  through their constructors with exactly their declared fields, each field of a plain annotated type checked.

Anything else raises :class:`CodecError` naming what it found, so a hostile peer gets a refusal, not code execution.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import math
import sys
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np

__all__ = ["CodecError", "pack", "unpack", "wire_record", "WIRE_RECORDS", "to_bytes", "from_bytes"]

_T = TypeVar("_T", bound=type)

WIRE_RECORDS: dict[str, type] = {}
"""The dataclasses :func:`unpack` may build, by name (registered with :func:`wire_record`)."""

_PLAIN = (bool, int, float, str, bytes)
_ARRAY_KINDS = frozenset("biuf")  # bool, signed, unsigned, float: never object, string or void dtypes


class CodecError(ValueError):
    """A value that cannot be packed, or packed data that does not decode to an allowed value."""


def wire_record(cls: _T) -> _T:
    """Register a frozen dataclass as a value :func:`unpack` may build (use as a class decorator)."""
    if not (dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen):  # type: ignore[attr-defined]
        raise TypeError(f"{cls.__name__} must be a frozen dataclass to cross the wire")
    existing = WIRE_RECORDS.get(cls.__name__)
    if existing is not None and existing is not cls:
        raise TypeError(f"two wire records are named {cls.__name__}: {existing.__module__} and {cls.__module__}")
    WIRE_RECORDS[cls.__name__] = cls
    return cls


class _Packer:
    def __init__(self, *, inline_bytes: bool = False) -> None:
        self.arrays: dict[str, np.ndarray] = {}
        self.inline_bytes = inline_bytes
        """Whether ``bytes`` go into the text as base64 (``$B``) rather than into the arrays as uint8 (``$b``)."""

    def _array(self, array: np.ndarray) -> str:
        if array.dtype.kind not in _ARRAY_KINDS:
            raise CodecError(f"an array of dtype {array.dtype} cannot cross the wire (numeric and boolean dtypes only)")
        key = f"a{len(self.arrays)}"
        self.arrays[key] = np.ascontiguousarray(array).reshape(array.shape)
        return key

    def pack(self, value: Any) -> Any:
        kind = type(value)  # the exact built-in types first: client state is mostly these (the branches below agree)
        if kind is int or kind is str or kind is bool or value is None:
            return value
        if kind is dict:
            return {"$d": [[self.pack(k), self.pack(v)] for k, v in value.items()]}
        if kind is frozenset and all(type(v) is int for v in value):  # a set of client ids
            return {"$fs": sorted(value, key=repr)}
        if kind is tuple:
            return {"$t": [self.pack(v) for v in value]}
        if kind is bytes and self.inline_bytes:
            return {"$B": base64.b64encode(value).decode("ascii")}
        if value is None or isinstance(value, bool | str):
            return value
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            return value if math.isfinite(value) else {"$f": repr(value)}
        if isinstance(value, bytes | bytearray | memoryview):
            if self.inline_bytes:
                return {"$B": base64.b64encode(value).decode("ascii")}
            return {"$b": self._array(np.frombuffer(bytes(value), dtype=np.uint8))}
        if isinstance(value, np.ndarray):
            return {"$a": self._array(value)}
        if isinstance(value, np.generic):
            return {"$s": self._array(np.asarray(value))}
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            name = type(value).__name__
            if WIRE_RECORDS.get(name) is not type(value):
                raise CodecError(f"{type(value).__module__}.{name} is not a registered wire record")
            return {"$c": name, "f": {f.name: self.pack(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}}
        if isinstance(value, tuple):
            return {"$t": [self.pack(v) for v in value]}
        if isinstance(value, list):
            return [self.pack(v) for v in value]
        if isinstance(value, frozenset | set):
            items = sorted(value, key=repr)  # a fixed order: the same value packs to the same bytes
            return {"$fs" if isinstance(value, frozenset) else "$set": [self.pack(v) for v in items]}
        if isinstance(value, Mapping):
            return {"$d": [[self.pack(k), self.pack(v)] for k, v in value.items()]}
        raise CodecError(f"a {type(value).__module__}.{type(value).__name__} cannot cross the wire")


def pack(value: Any, *, inline_bytes: bool = False) -> tuple[str, dict[str, np.ndarray]]:
    """``value`` as JSON text and the named arrays it refers to (bytes become uint8 arrays, or with ``inline_bytes``
    base64 text in the JSON)."""
    packer = _Packer(inline_bytes=inline_bytes)
    tree = packer.pack(value)
    return json.dumps(tree, separators=(",", ":"), allow_nan=False), packer.arrays


def _hashable(value: Any) -> Any:
    try:
        hash(value)
    except TypeError:
        raise CodecError(f"a {type(value).__name__} cannot be a set member or a dict key") from None
    return value


#: Largest integer a packed set member or dict key may be. Python hashes an int by its value modulo 2^61 - 1, so the
#: multiples of that number all hash alike: 475 kB of them took 3.4 s to rebuild as a set (quadratic: hours at 25 MB),
#: stalling the server's loop. Client ids, rounds and counts are far below.
MAX_KEY_INTEGER = 2**53


def _key_integer(value: int) -> int:
    if not -MAX_KEY_INTEGER <= value <= MAX_KEY_INTEGER:
        raise CodecError(f"packed data holds a set member or key {value!r:.40} beyond 2^53")
    return value


class _Unpacker:
    def __init__(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.arrays = arrays
        self._bytes: dict[str, bytes] = {}
        """Each ``$b`` array's bytes, made once: a message that refers to one array many times (4 MiB of references made
        1.6 GiB of copies) gets the same immutable bytes object back each time."""

    def _array(self, key: Any) -> np.ndarray:
        array = self.arrays.get(key) if isinstance(key, str) else None
        if array is None:
            raise CodecError(f"packed data refers to a missing array {key!r}")
        array = np.asarray(array)
        if array.dtype.kind not in _ARRAY_KINDS:
            raise CodecError(f"packed array {key!r} has dtype {array.dtype} (numeric and boolean dtypes only)")
        return array

    def unpack(self, tree: Any) -> Any:
        kind = type(tree)  # JSON gives exactly these types
        if kind is int or kind is str or kind is float or kind is bool or tree is None:
            return tree
        if kind is list:
            return [self.unpack(v) for v in tree]
        if kind is dict and len(tree) == 1:
            body = tree.get("$d")
            if type(body) is list:
                return self._dict(body)
            body = tree.get("$fs")
            if type(body) is list and all(type(v) is int for v in body):  # a set of client ids
                return frozenset(_key_integer(v) for v in body)
            body = tree.get("$t")
            if type(body) is list:
                return tuple([self.unpack(v) for v in body])
            if "$B" in tree:
                return self._inline_bytes(tree["$B"])
        if tree is None or isinstance(tree, bool | int | float | str):
            return tree
        if isinstance(tree, list):
            return [self.unpack(v) for v in tree]
        if not isinstance(tree, dict) or len(tree) not in (1, 2):
            raise CodecError(f"packed data holds an unexpected {type(tree).__name__}")
        if "$c" in tree:
            return self._record(tree)
        if len(tree) != 1:
            raise CodecError(f"packed data holds an unexpected object with keys {sorted(tree)}")
        ((tag, body),) = tree.items()
        if tag == "$f":
            if body not in ("nan", "inf", "-inf"):
                raise CodecError(f"packed data holds a float {body!r}")
            return float(body)
        if tag == "$B":
            return self._inline_bytes(body)
        if tag == "$b":
            if isinstance(body, str) and body in self._bytes:
                return self._bytes[body]
            array = self._array(body)
            if array.dtype != np.uint8 or array.ndim != 1:
                raise CodecError(f"packed bytes {body!r} are not a flat uint8 array")
            data = self._bytes[body] = array.tobytes()
            return data
        if tag == "$a":
            return self._array(body)
        if tag == "$s":
            array = self._array(body)
            if array.ndim != 0:
                raise CodecError(f"packed scalar {body!r} has shape {array.shape}")
            return array[()]
        if not isinstance(body, list):
            raise CodecError(f"packed {tag} holds a {type(body).__name__}, not a list")
        if tag == "$t":
            return tuple(self.unpack(v) for v in body)
        if tag in ("$fs", "$set"):
            members = (_key_integer(m) if type(m) is int else m for m in (_hashable(self.unpack(v)) for v in body))
            return frozenset(members) if tag == "$fs" else set(members)
        if tag == "$d":
            return self._dict(body)
        raise CodecError(f"packed data holds an unknown tag {tag!r}")

    @staticmethod
    def _inline_bytes(body: Any) -> bytes:
        if not isinstance(body, str):
            raise CodecError(f"packed base64 bytes hold a {type(body).__name__}")
        try:
            return base64.b64decode(body, validate=True)
        except ValueError:
            raise CodecError("packed base64 bytes do not decode") from None

    def _dict(self, body: list[Any]) -> dict[Any, Any]:
        out = {}
        for pair in body:
            if type(pair) is not list or len(pair) != 2:
                raise CodecError("a packed dict entry is not a [key, value] pair")
            key = pair[0]
            if type(key) is int:
                key = _key_integer(key)
            elif type(key) is not str:
                key = _hashable(self.unpack(key))
                if type(key) is int:
                    key = _key_integer(key)
            out[key] = self.unpack(pair[1])
        return out

    def _record(self, tree: dict[str, Any]) -> Any:
        name, fields = tree.get("$c"), tree.get("f")
        cls = WIRE_RECORDS.get(name) if isinstance(name, str) else None
        if cls is None:
            raise CodecError(f"packed data names {name!r}, which is not a registered wire record")
        if not isinstance(fields, dict):
            raise CodecError(f"packed {name} has no field table")
        declared, required, hints = _schema(cls)
        if not required <= set(fields) <= declared:
            raise CodecError(f"packed {name} has fields {sorted(fields)}; it takes {sorted(declared)} (required {sorted(required)})")
        values = {k: self.unpack(v) for k, v in fields.items()}
        for key, value in values.items():
            expected = hints.get(key)
            if expected is None:
                continue
            if isinstance(expected, _MappingOf):
                expected.check(f"packed {name}.{key}", value)
            elif not isinstance(value, expected) or not _in_range(value, expected):
                raise CodecError(f"packed {name}.{key} is a {type(value).__name__}, not a {_type_name(expected)}")
        try:
            return cls(**values)
        except (TypeError, ValueError) as error:
            raise CodecError(f"packed {name} does not build: {error}") from None


@functools.lru_cache(maxsize=None)
def _schema(cls: type) -> tuple[frozenset[str], frozenset[str], dict[str, Any]]:
    """A wire record's declared fields, its required fields and :func:`_plain_hints`, computed once per class
    (``typing.get_type_hints`` evaluates the annotations' strings: about half of a worker pool's decoding time)."""
    fields = [f for f in dataclasses.fields(cls) if f.init]
    declared = frozenset(f.name for f in fields)
    required = frozenset(f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
    return declared, required, _plain_hints(cls)


@dataclasses.dataclass(frozen=True)
class _MappingOf:
    """A ``Mapping[str, X]`` field with a plain scalar ``X``: every key a ``str``, every value an ``X`` (e.g. a client
    message's ``metrics``, which the server adds up: a text among them used to end the run there)."""

    value: type | tuple[type, ...]

    def check(self, where: str, mapping: Any) -> None:
        if not isinstance(mapping, Mapping):
            raise CodecError(f"{where} is a {type(mapping).__name__}, not a table")
        for key, item in mapping.items():
            if not isinstance(key, str) or not isinstance(item, self.value) or not _in_range(item, self.value):
                raise CodecError(f"{where}[{key!r}] is a {type(item).__name__}, not a {_type_name(self.value)}")


#: A ``float`` field takes an ``int`` too (JSON writes 2.0 as 2), but only one a float can hold: JSON carries integers of
#: any size, and the server adds such fields up in floats (10**400 raised OverflowError there and ended its run).
FLOAT_FIELD = (int, float)


def _in_range(value: Any, expected: Any) -> bool:
    return expected != FLOAT_FIELD or isinstance(value, float) or -sys.float_info.max <= value <= sys.float_info.max


def _type_name(expected: Any) -> str:
    return " or ".join(t.__name__ for t in expected) if isinstance(expected, tuple) else expected.__name__


def _plain(hint: Any) -> type | tuple[type, ...]:
    return FLOAT_FIELD if hint is float else hint


def _plain_hints(cls: type) -> dict[str, Any]:
    """The fields of ``cls`` annotated with a plain scalar type (int, float, str, bytes, bool), or a ``Mapping`` from
    ``str`` to one (:class:`_MappingOf`), to check on decode."""
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):
        return {}
    plain: dict[str, Any] = {}
    for key, hint in hints.items():
        if hint in _PLAIN:
            plain[key] = _plain(hint)
        elif typing.get_origin(hint) in (Mapping, dict) and len(args := typing.get_args(hint)) == 2:
            if args[0] is str and args[1] in _PLAIN:
                plain[key] = _MappingOf(_plain(args[1]))
    return plain


def unpack(text: str | bytes, arrays: Mapping[str, np.ndarray]) -> Any:
    """The value :func:`pack` turned into ``text`` and ``arrays``; refuses anything but the allowed types."""
    try:
        tree = json.loads(text)
        return _Unpacker(arrays).unpack(tree)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CodecError(f"packed data is not JSON: {error}") from None
    except CodecError:
        raise
    except ValueError as error:  # an integer of more than 4,300 digits: json refuses to convert it
        raise CodecError(f"packed data holds a value JSON cannot read: {error}") from None
    except RecursionError:  # a peer's message is input: a deeply nested one raised this past every caller's checks
        raise CodecError("packed data is nested too deeply") from None


def to_bytes(value: Any) -> bytes:
    """``value`` as one self-contained byte string (JSON with base64 arrays): for small values such as client-side state.

    ``bytes`` values are written inline as base64 text (``$B``), not as uint8 arrays of the table: a masking client's
    state of a round holds about 80 of them (keys, seeds, Shamir shares), which took 0.70 ms to write and 0.60 ms to
    read as arrays (2026-12-06); inline, and with the exact built-in types' fast paths of :func:`pack` and
    :func:`unpack`, 0.30 and 0.24 ms. :func:`from_bytes` reads both forms."""
    text, arrays = pack(value, inline_bytes=True)
    table = {k: [a.dtype.str, list(a.shape), base64.b64encode(a.tobytes()).decode("ascii")] for k, a in arrays.items()}
    return json.dumps({"v": text, "a": table}, separators=(",", ":")).encode()


def from_bytes(data: bytes) -> Any:
    """The value :func:`to_bytes` wrote."""
    try:
        document = json.loads(data)
        arrays = {}
        for key, (dtype, shape, encoded) in document["a"].items():
            dt = np.dtype(dtype)
            if dt.kind not in _ARRAY_KINDS:
                raise CodecError(f"packed array {key!r} has dtype {dt}")
            arrays[key] = np.frombuffer(base64.b64decode(encoded), dtype=dt).reshape(shape)
        text = document["v"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, RecursionError) as error:
        if isinstance(error, CodecError):
            raise
        raise CodecError(f"packed bytes do not decode: {error}") from None
    return unpack(text, arrays)
