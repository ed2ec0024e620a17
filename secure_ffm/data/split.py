"""Seeded random streams and stratified splits shared by the loaders and :func:`federate`.

Every random choice in the data layer draws from its own named stream,
``derive_rng(seed, "purpose")``, so adding or reordering draws for one purpose
never changes another (the partition of the clients does not move when the
public split is turned on, for instance).
"""

from __future__ import annotations

import zlib

import numpy as np

SPLIT_SEED = 0
"""Seed of every *held-out* split (test split of sources without one, test subsample).

It is fixed, independent of ``run.seed``, so runs with different seeds are
evaluated on the same test examples and their scores can be averaged.
"""


def derive_rng(seed: int, stream: str) -> np.random.Generator:
    """An independent generator for one named purpose under one seed.

    This is :meth:`numpy.random.SeedSequence.spawn` with a named child: the child
    of ``SeedSequence(seed)`` whose ``spawn_key`` is the CRC-32 of ``stream``.

    Parameters
    ----------
    seed:
        The run seed (a non-negative integer).
    stream:
        What the generator is for, e.g. ``"partition"``.
    """
    key = zlib.crc32(stream.encode("utf-8"))
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(key,)))


def apportion(weights: np.ndarray, total: int, *, capacity: np.ndarray | None = None) -> np.ndarray:
    """Split ``total`` into integers proportional to ``weights`` (largest-remainder method).

    Parameters
    ----------
    weights:
        Non-negative weights, one per bin, not all zero.
    total:
        The integer to distribute.
    capacity:
        Optional upper bound for each bin; ``total`` must not exceed its sum.

    Returns
    -------
    numpy.ndarray
        ``int64`` counts that sum to ``total`` exactly.
    """
    weights = np.asarray(weights, dtype=np.float64)
    if total < 0 or weights.sum() <= 0:
        raise ValueError(f"cannot apportion {total} by weights {weights}")
    exact = weights / weights.sum() * total
    room = np.full(len(weights), total, dtype=np.int64) if capacity is None else np.asarray(capacity, dtype=np.int64)
    if total > int(room.sum()):
        raise ValueError(f"cannot fit {total} into capacity {int(room.sum())}")
    counts = np.minimum(np.floor(exact).astype(np.int64), room)
    while (missing := total - int(counts.sum())) > 0:
        # Largest remainder first; bins at capacity never receive more.
        priority = np.where(counts < room, exact - counts, -np.inf)
        eligible = int((counts < room).sum())
        counts[np.argsort(-priority, kind="stable")[: min(missing, eligible)]] += 1
    return counts


def stratified_subset(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of a random subset of exactly ``size`` examples with the label proportions kept.

    Parameters
    ----------
    labels:
        Integer labels of the whole set.
    size:
        How many to keep, ``0 <= size <= len(labels)``.
    rng:
        The generator that picks the examples.

    Returns
    -------
    numpy.ndarray
        Sorted ``int64`` indices into ``labels``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if not 0 <= size <= len(labels):
        raise ValueError(f"cannot take {size} of {len(labels)} examples")
    if size == 0:
        return np.zeros(0, dtype=np.int64)
    classes, counts = np.unique(labels, return_counts=True)
    quota = apportion(counts, size, capacity=counts)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota, strict=True)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def stratified_split(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into ``(kept, held_out)`` with ``round(fraction * n)`` held out, stratified by label.

    Both parts are non-empty whenever there are at least two examples and
    ``0 < fraction < 1``.

    Returns
    -------
    tuple of numpy.ndarray
        Sorted ``int64`` indices of the kept part and of the held-out part.
    """
    n = len(labels)
    held_size = round(fraction * n)
    if n >= 2 and 0.0 < fraction < 1.0:
        held_size = min(max(held_size, 1), n - 1)
    held = stratified_subset(labels, held_size, rng)
    kept = np.setdiff1d(np.arange(n, dtype=np.int64), held, assume_unique=True)
    return kept, held
