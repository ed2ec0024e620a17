"""Who masks with whom: the complete graph of SecAgg and the sparse Harary graphs of SecAgg+.

In the original protocol (Bonawitz et al., CCS 2017) every client shares a pairwise
mask and Shamir shares with every other client, which costs O(n) keys, shares and PRG
expansions per client. SecAgg+ (Bell et al., CCS 2020, "Secure Single-Server
Aggregation with (Poly)Logarithmic Overhead", Sec. 3-4) restricts both to a client's
neighbours in a random ``k``-regular graph with ``k = O(log n)``: the Harary graph
``H(n, k)`` (each position ``i`` joined to ``i +- 1, ..., i +- k/2`` mod ``n``) with
its nodes randomly relabelled. Its randomness is what keeps the honest clients
connected and the neighbourhoods mostly honest with high probability, so the
relabelling here is drawn from a cryptographic PRG keyed by a seed, not from numpy.

Graphs are ``dict[int, frozenset[int]]`` over nodes ``0 .. n - 1``: symmetric, no
self-loops. Nodes are positions in the round's participant list; the protocol driver
maps them to client ids.
"""

from __future__ import annotations

import hashlib
import math
import operator

from secure_ffm.secagg.masking import expand

Graph = dict[int, frozenset[int]]
"""Adjacency: each node's neighbours."""

MIN_GRAPH_SEED_BYTES = 16
_GRAPH_LABEL = b"secure-ffm/secagg/v1/harary-relabelling"


def full_graph(n: int) -> Graph:
    """The complete graph on ``0 .. n - 1`` (original SecAgg): every node has degree ``n - 1``."""
    size = operator.index(n)
    if size < 1:
        raise ValueError(f"a graph needs at least 1 node, got n={size}")
    nodes = frozenset(range(size))
    return {i: nodes - {i} for i in range(size)}


def harary_graph(n: int, k: int, *, seed: bytes) -> Graph:
    """A randomly relabelled Harary graph ``H(n, k)``: ``k``-regular, ``k``-connected, symmetric.

    Position ``p`` of a ring of ``n`` is joined to positions ``p +- 1, ..., p +- k/2``
    (mod ``n``); position ``p`` then becomes node ``pi(p)`` for a uniformly random
    permutation ``pi`` drawn (Fisher-Yates with rejection sampling, so without modulo bias)
    from an AES-CTR stream keyed by ``SHA-256(label || seed)``. The same seed gives the same
    graph, so all parties can rebuild it from a seed the server announces.

    Parameters
    ----------
    n
        Number of nodes, at least 3.
    k
        Degree: even, ``2 <= k <= n - 1`` (``k = n - 1`` with odd ``n`` is the complete graph).
    seed
        At least :data:`MIN_GRAPH_SEED_BYTES` bytes of unpredictable randomness, e.g.
        ``secrets.token_bytes(32)``.

    Raises
    ------
    ValueError
        For ``n < 3``, an odd ``k``, ``k`` out of range, or a short seed.
    """
    size, degree = operator.index(n), operator.index(k)
    if size < 3:
        raise ValueError(f"a Harary graph needs at least 3 nodes, got n={size}; use full_graph")
    if degree % 2 or not 2 <= degree <= size - 1:
        raise ValueError(f"k must be even and between 2 and n - 1 = {size - 1}, got k={degree}")
    if len(seed) < MIN_GRAPH_SEED_BYTES:
        raise ValueError(f"the graph seed must have at least {MIN_GRAPH_SEED_BYTES} bytes, got {len(seed)}")
    label = _permutation(size, hashlib.sha256(_GRAPH_LABEL + bytes(seed)).digest())
    half = degree // 2
    graph = {label[p]: frozenset(label[(p + d) % size] for d in range(-half, half + 1) if d != 0) for p in range(size)}
    return dict(sorted(graph.items()))


def connected(nodes: frozenset[int] | set[int], graph: Graph) -> bool:
    """Whether the subgraph of ``graph`` induced on ``nodes`` is connected (an empty set is not).

    A server that sums the survivors of a masking round learns the sum of every connected component of the survivors'
    subgraph on its own (the masks on the edges inside a component cancel, and there are none between components), so
    a client unmasks only for survivors that form one component (secure_ffm.secagg.masking_protocol)."""
    remaining = set(nodes)
    if not remaining:
        return False
    frontier = [remaining.pop()]
    while frontier:
        node = frontier.pop()
        reached = graph.get(node, frozenset()) & remaining
        remaining -= reached
        frontier.extend(reached)
    return not remaining


def recommended_threshold(num_shares: int, *, corrupt_fraction: float = 0.0) -> int:
    """The smallest Shamir threshold at which the server cannot obtain both secrets of one client.

    An honest client, asked about a peer, reveals shares of its self-mask seed *or* of its
    private key, never both (Bonawitz et al., CCS 2017, Sec. 4 and 6). A server that claims
    to some holders that the peer dropped and to others that it survived collects each kind
    from a disjoint set of honest holders, plus up to ``c`` corrupt holders who answer both.
    Getting ``t`` shares of each needs ``2t - c <= num_shares``, so ``t = floor((num_shares + c) / 2) + 1``
    rules it out: a strict majority with no corrupt clients, ``t > 2n/3`` for ``c < n/3``
    (Bonawitz et al.'s active-adversary setting). SecAgg+ applies the same count to each
    neighbourhood (Bell et al., CCS 2020), with ``num_shares`` the neighbourhood size.

    Since ``num_shares >= c`` this also gives ``t > c``: the corrupt holders alone never reach the
    threshold. The protocol then tolerates ``num_shares - t`` holders dropping out.

    Parameters
    ----------
    num_shares
        How many holders each client's secrets are split among.
    corrupt_fraction
        Upper bound on the fraction of holders that collude with the server, in ``[0, 1)``.

    Raises
    ------
    ValueError
        For ``num_shares < 1`` or ``corrupt_fraction`` outside ``[0, 1)``.
    """
    m = operator.index(num_shares)
    if m < 1:
        raise ValueError(f"num_shares must be at least 1, got {m}")
    if not (math.isfinite(corrupt_fraction) and 0.0 <= corrupt_fraction < 1.0):
        raise ValueError(f"corrupt_fraction must lie in [0, 1), got {corrupt_fraction}")
    corrupt = math.floor(corrupt_fraction * m)
    return (m + corrupt) // 2 + 1  # at most m, since corrupt <= m - 1


def isolatable_sum(n: int, t: int) -> int:
    """The fewest clients whose inputs a server that lies about survivors can sum alone in a complete-graph round of ``n``
    with threshold ``t``: ``ceil(n (2t - n) / t)`` (at least 1).

    Each holder, told a survivor list of at least ``t`` (else it refuses), reveals pair-key shares of at most ``n - t``
    clients; the server needs ``t`` of them for every client left out of the sum ``S`` (its pair masks with ``S``
    stay otherwise), and can get self-seed shares of ``S`` from every holder. So ``t (n - |S|) <= n (n - t)``. A strict
    majority leaves about 4 clients whatever ``n`` (an audit of 2026-12-07 summed 4 of 100 honest clients exactly);
    ``t = 2n/3`` leaves ``n/2``. Distributed noise shares must be sized for this many, not for ``t``
    (:func:`threshold_for_isolated_sum`). Bonawitz et al.'s consistency check would restore ``t``; it is not
    implemented (docs/threat_model.md)."""
    size, threshold = operator.index(n), operator.index(t)
    if size < 1 or not 1 <= threshold <= size:
        raise ValueError(f"need 1 <= t <= n, got n={size}, t={threshold}")
    return max(1, -(-size * (2 * threshold - size) // threshold))


def threshold_for_isolated_sum(n: int, s: int) -> int:
    """The smallest ``t`` whose :func:`isolatable_sum` over ``n`` clients is at least ``s``: the sum has a whole number of
    clients, so ``n (2t - n) / t > s - 1``, i.e. ``t = floor(n^2 / (2n - s + 1)) + 1``; ``n + 1`` (no threshold can)
    when ``s > n``, 1 when ``s <= 1``."""
    size, wanted = operator.index(n), operator.index(s)
    if size < 1:
        raise ValueError(f"a round needs at least 1 participant, got n={size}")
    if wanted <= 1:
        return 1
    if wanted > size:
        return size + 1
    return size * size // (2 * size - wanted + 1) + 1


def uses_full_graph(n: int, k: int) -> bool:
    """Whether ``n`` participants with configured degree ``k`` mask every pair (SecAgg) rather than a Harary graph.

    ``k = 0`` asks for the complete graph; ``k >= n - 1`` or ``n < 3`` leaves no sparser graph to draw.
    """
    return operator.index(k) == 0 or operator.index(k) >= operator.index(n) - 1 or operator.index(n) < 3


def neighbourhood_size(n: int, k: int) -> int:
    """How many clients hold shares of each client's secrets: the client itself and its graph neighbours.

    ``n`` under the complete graph, ``k + 1`` under a SecAgg+ Harary graph of degree ``k``
    (see :func:`uses_full_graph`).
    """
    size = operator.index(n)
    if size < 1:
        raise ValueError(f"a round needs at least 1 participant, got n={size}")
    return size if uses_full_graph(size, k) else operator.index(k) + 1


def threshold_range(num_shares: int) -> tuple[int, int]:
    """The Shamir thresholds ``(lowest, highest)`` that a client whose secrets go to ``num_shares`` holders accepts.

    The lowest is a strict majority, :func:`recommended_threshold` with no corrupt holders:
    a server that tells some holders a client dropped (so they reveal shares of its pair key) and
    the others that it survived (so they reveal shares of its self seed) needs ``t`` honest
    holders of each kind, and each honest holder answers one kind only, so ``2t <= num_shares``;
    a threshold at or below half makes that possible and unmasks the client's single update
    (``tests/secagg/test_secagg_active_server.py`` plays that server). The highest is the
    number of holders: a larger ``t`` could never rebuild a secret.
    """
    return recommended_threshold(num_shares), operator.index(num_shares)


def _permutation(n: int, key: bytes) -> list[int]:
    """A uniformly random permutation of ``0 .. n - 1`` from the AES-CTR stream of ``key``."""
    order = list(range(n))
    words = expand(key, n + 64)
    used = 0
    for i in range(n - 1, 0, -1):
        bound = i + 1
        limit = (1 << 32) - (1 << 32) % bound  # accept only words below a multiple of `bound`
        while True:
            if used == len(words):  # rejections are rare (probability < n / 2^32 each): extend the stream
                words = expand(key, 2 * len(words))
            word = int(words[used])
            used += 1
            if word < limit:
                break
        j = word % bound
        order[i], order[j] = order[j], order[i]
    return order
