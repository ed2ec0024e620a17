"""Keep glibc's ``malloc`` from handing the heap back to the kernel after every training step.

A training step of a small model allocates and frees the same few-megabyte tensors every time (a CNN's activations,
their gradients, a pool's indices). With glibc's default, *dynamic* thresholds, a freed block of a few MiB is either
returned with ``munmap`` (it was ``mmap``-ed) or trimmed off the top of the heap, so the next step's allocation of
the same size takes fresh pages from the kernel and pays a page fault for every 4 KiB it touches. Measured on this
project's machine (2026-12-06, one torch thread, the ``cnn``, interleaved runs): 600-1,500 minor page faults per
training step and 9.2-10.6 ms a step at batch 32, against 0-4 faults and 7.2-9.0 ms with the fixed thresholds
below; 14.8-16.8 ms against 13.3-13.9 ms at batch 64; the peak RSS was the same (about 330 MiB).

:func:`keep_freed_memory` fixes the two thresholds with ``mallopt`` (the same effect as the environment variables
``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_``, which a process can only set before it starts):

- ``M_MMAP_THRESHOLD`` = :data:`MMAP_THRESHOLD` (32 MiB, the largest value glibc's dynamic threshold reaches on
  64-bit machines): smaller blocks come from the heap, larger ones (MiniLM's embedding matrix) are still ``mmap``-ed
  and returned when freed;
- ``M_TRIM_THRESHOLD`` = :data:`TRIM_THRESHOLD` (128 MiB): free memory at the top of the heap goes back to the kernel
  only beyond it, so a process holds at most that much freed memory it could have returned.

Setting either one alone is worse than the default (with only the trim threshold fixed glibc stops adapting its mmap
threshold and every tensor over 128 KiB is ``mmap``-ed: 4,800 faults and 15.5 ms a step). Nothing changes when glibc
is not the C library (macOS, musl), when the user set glibc's own malloc variables (``MALLOC_*_``, or
``GLIBC_TUNABLES`` with a ``glibc.malloc`` tunable: the user's choice stands), or with ``SECURE_FFM_MALLOC=default``.
Every run applies it where it sets torch's threads (:func:`secure_ffm.run.simulation.load_data_and_model`, a Flower
node's first message); worker processes forked from the run inherit it, fresh ones apply it when they build their run.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

MMAP_THRESHOLD = 32 * 2**20
"""Bytes: blocks at least this large are ``mmap``-ed (and unmapped when freed)."""
TRIM_THRESHOLD = 128 * 2**20
"""Bytes of free memory at the top of the heap that the process keeps rather than returning to the kernel."""

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
"""``mallopt`` parameter numbers (glibc's malloc.h)."""
_USER_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
OPT_OUT = "SECURE_FFM_MALLOC"
"""``SECURE_FFM_MALLOC=default`` keeps glibc's dynamic thresholds."""

_applied: bool | None = None


def user_chose_malloc_settings(environ: dict[str, str] | os._Environ[str] | None = None) -> bool:
    """Whether the environment sets glibc's malloc itself or opts out with ``SECURE_FFM_MALLOC=default``."""
    env = os.environ if environ is None else environ
    if env.get(OPT_OUT, "").strip().lower() == "default":
        return True
    return any(name in env for name in _USER_VARIABLES) or "glibc.malloc" in env.get("GLIBC_TUNABLES", "")


def keep_freed_memory() -> bool:
    """Fix glibc's mmap and trim thresholds for this process (module docstring); ``True`` when they are set.

    Idempotent and cheap after the first call; a process forked afterwards inherits the setting."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if user_chose_malloc_settings() or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    log.debug("glibc malloc thresholds fixed (mmap %d B, trim %d B): %s", MMAP_THRESHOLD, TRIM_THRESHOLD, _applied)
    return _applied
