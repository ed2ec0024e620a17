"""Ways to split a labelled pool over federated clients.

Every partitioner in :data:`PARTITIONERS` has the signature
``(labels, spec, *, rng) -> list[np.ndarray]`` and is a pure function of its
arguments: all randomness comes from ``rng``. It returns one sorted ``int64``
index array per client; the arrays are pairwise disjoint and together cover
every index of ``labels`` exactly once.

Every partitioner first checks that the pool is big enough for the clients:
at least ``num_clients`` examples, and at least
``num_clients * min_partition_size``; otherwise it raises a
:class:`~secure_ffm.errors.ConfigError` naming ``data.num_clients``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from secure_ffm.config import DataConfig
from secure_ffm.data.split import apportion
from secure_ffm.errors import ConfigError
from secure_ffm.registry import Registry

logger = logging.getLogger(__name__)

MAX_DIRICHLET_DRAWS = 1000
"""How many times ``dirichlet`` redraws before giving up on ``min_partition_size``."""


@dataclass(frozen=True)
class PartitionSpec:
    """What a partitioner needs besides the labels and the generator.

    Parameters
    ----------
    num_clients:
        Number of clients (index arrays returned).
    alpha:
        Dirichlet concentration for ``dirichlet`` and ``quantity``; smaller is more skewed.
    min_partition_size:
        Fewest examples any client may get.
    shards_per_client:
        Shards each client receives under ``shards``.
    num_classes:
        Number of classes; labels must lie in ``[0, num_classes)``. ``None``
        takes ``labels.max() + 1``.
    """

    num_clients: int
    alpha: float = 0.5
    min_partition_size: int = 0
    shards_per_client: int = 2
    num_classes: int | None = None

    def __post_init__(self) -> None:
        if self.num_clients < 1:
            raise ConfigError("data.num_clients", f"must be positive, got {self.num_clients}")
        if not self.alpha > 0:
            raise ConfigError("data.alpha", f"must be positive, got {self.alpha}")
        if self.min_partition_size < 0:
            raise ConfigError("data.min_partition_size", f"must be non-negative, got {self.min_partition_size}")
        if self.shards_per_client < 1:
            raise ConfigError("data.shards_per_client", f"must be positive, got {self.shards_per_client}")

    @classmethod
    def from_config(cls, config: DataConfig, *, num_classes: int | None = None) -> PartitionSpec:
        """The spec described by a ``[data]`` section."""
        return cls(
            num_clients=config.num_clients,
            alpha=config.alpha,
            min_partition_size=config.min_partition_size,
            shards_per_client=config.shards_per_client,
            num_classes=num_classes,
        )


Partitioner = Callable[..., list[np.ndarray]]
"""``(labels: np.ndarray, spec: PartitionSpec, *, rng: np.random.Generator) -> list[np.ndarray]``."""
PARTITIONERS: Registry[Partitioner] = Registry("partitioner")


def _check_pool(labels: np.ndarray, spec: PartitionSpec) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} of shape {labels.shape}")
    labels = labels.astype(np.int64, copy=False)
    n, clients, least = len(labels), spec.num_clients, spec.min_partition_size
    if clients > n:
        raise ConfigError(
            "data.num_clients",
            f"{clients} clients but only {n} training examples",
            "lower data.num_clients or raise data.max_train_examples",
        )
    if clients * least > n:
        raise ConfigError(
            "data.num_clients",
            f"{clients} clients with at least data.min_partition_size={least} examples each need {clients * least} "
            f"training examples but there are only {n}",
            "lower data.num_clients or data.min_partition_size, or raise data.max_train_examples",
        )
    if n and (labels.min() < 0 or (spec.num_classes is not None and labels.max() >= spec.num_classes)):
        raise ValueError(f"labels must lie in [0, {spec.num_classes}), got [{labels.min()}, {labels.max()}]")
    return labels


def _finish(parts: list[np.ndarray], n: int) -> list[np.ndarray]:
    parts = [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    covered = np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
    if len(covered) != n or not np.array_equal(covered, np.arange(n)):
        raise RuntimeError("partitioner bug: the parts are not a disjoint cover of the pool")
    return parts


def _partitioner(name: str) -> Callable[[Partitioner], Partitioner]:
    """Register a partitioner, wrapped with the shared input checks and output normalisation."""

    def decorator(split: Partitioner) -> Partitioner:
        @functools.wraps(split)
        def partitioner(labels: np.ndarray, spec: PartitionSpec, *, rng: np.random.Generator) -> list[np.ndarray]:
            labels = _check_pool(labels, spec)
            return _finish(split(labels, spec, rng=rng), len(labels))

        PARTITIONERS.register(name)(partitioner)
        return partitioner

    return decorator


@_partitioner("iid")
def iid(labels: np.ndarray, spec: PartitionSpec, *, rng: np.random.Generator) -> list[np.ndarray]:
    """Uniformly random parts of near-equal size (sizes differ by at most one).

    The IID baseline of McMahan et al., "Communication-Efficient Learning of Deep
    Networks from Decentralized Data", AISTATS 2017.
    """
    return np.array_split(rng.permutation(len(labels)), spec.num_clients)


@_partitioner("dirichlet")
def dirichlet(labels: np.ndarray, spec: PartitionSpec, *, rng: np.random.Generator) -> list[np.ndarray]:
    """Label skew: each class is spread over the clients with proportions drawn from Dir(alpha).

    Yurochkin et al., "Bayesian Nonparametric Federated Learning of Neural
    Networks", ICML 2019; Hsu, Qi and Brown, "Measuring the Effects of
    Non-Identical Data Distribution for Federated Visual Classification", arXiv
    1909.06335. As in the reference code of both and of NIID-Bench (Li, Diao,
    Chen and He, "Federated Learning on Non-IID Data Silos: An Experimental
    Study", ICDE 2022), a client that already holds ``n / num_clients`` examples
    gets no share of later classes, which keeps client sizes comparable, and the
    whole draw is repeated until every client has at least
    ``min_partition_size`` examples.

    Raises
    ------
    ConfigError
        ``data.min_partition_size`` when :data:`MAX_DIRICHLET_DRAWS` draws all
        leave some client too small (alpha too small for that many clients).
    """
    n, clients = len(labels), spec.num_clients
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    concentration = np.full(clients, spec.alpha)
    smallest = 0
    for _draw in range(MAX_DIRICHLET_DRAWS):
        chunks: list[list[np.ndarray]] = [[] for _ in range(clients)]
        sizes = np.zeros(clients, dtype=np.int64)
        for in_class in by_class:
            members = rng.permutation(in_class)
            shares = rng.dirichlet(concentration)
            balanced = np.where(sizes < n / clients, shares, 0.0)
            # With a tiny alpha the shares of all open clients can underflow to 0.
            shares = balanced / balanced.sum() if balanced.sum() > 0 else shares / shares.sum()
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
            for client, chunk in enumerate(np.split(members, cuts)):
                chunks[client].append(chunk)
                sizes[client] += len(chunk)
        smallest = int(sizes.min())
        if smallest >= spec.min_partition_size:
            return [np.concatenate(c) for c in chunks]
    raise ConfigError(
        "data.min_partition_size",
        f"{MAX_DIRICHLET_DRAWS} draws from Dir(alpha={spec.alpha}) over {clients} clients all left a client with fewer than "
        f"{spec.min_partition_size} examples (the last: {smallest})",
        "raise data.alpha, or lower data.min_partition_size or data.num_clients",
    )


@_partitioner("shards")
def shards(labels: np.ndarray, spec: PartitionSpec, *, rng: np.random.Generator) -> list[np.ndarray]:
    """Pathological label skew: sort by label, cut into shards, give each client a few.

    McMahan et al., "Communication-Efficient Learning of Deep Networks from
    Decentralized Data", AISTATS 2017 (MNIST: 200 shards of 300, two per
    client). The pool is sorted by label (random order within a class) and cut
    into ``num_clients * shards_per_client`` contiguous shards whose sizes differ
    by at most one; the shards are dealt at random so client sizes also differ by
    at most one. A client then sees about ``shards_per_client`` classes (exactly
    at most that many when every class fills whole shards).

    Raises
    ------
    ConfigError
        ``data.shards_per_client`` when there are more shards than examples.
    """
    n, clients = len(labels), spec.num_clients
    count = clients * spec.shards_per_client
    if count > n:
        raise ConfigError(
            "data.shards_per_client",
            f"{clients} clients x {spec.shards_per_client} shards = {count} shards but only {n} training examples",
            "lower data.shards_per_client or data.num_clients",
        )
    shuffled = rng.permutation(n)
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    pieces = np.array_split(by_label, count)  # the first n % count pieces are one longer
    longer = n % count
    # Deal the longer shards first, round-robin, so no client gets two more than another.
    deal = np.concatenate([rng.permutation(longer), longer + rng.permutation(count - longer)])
    return [np.concatenate([pieces[s] for s in deal[client::clients]]) for client in range(clients)]


@_partitioner("quantity")
def quantity(labels: np.ndarray, spec: PartitionSpec, *, rng: np.random.Generator) -> list[np.ndarray]:
    """Quantity skew: client sizes follow Dir(alpha) proportions, labels are IID within a client.

    The "quantity skew" setting of NIID-Bench (Li, Diao, Chen and He,
    "Federated Learning on Non-IID Data Silos: An Experimental Study", ICDE
    2022, section III-C). Each client first gets ``min_partition_size`` examples;
    the rest are apportioned by the drawn proportions (largest remainder), so
    no redraw is needed.
    """
    n, clients = len(labels), spec.num_clients
    proportions = rng.dirichlet(np.full(clients, spec.alpha))
    sizes = spec.min_partition_size + apportion(proportions, n - clients * spec.min_partition_size)
    return np.split(rng.permutation(n), np.cumsum(sizes)[:-1])
