"""Neighbour graphs: complete (SecAgg) and randomly relabelled Harary (SecAgg+); the share threshold."""

import itertools

import pytest

from secure_ffm.secagg.graph import full_graph, harary_graph, recommended_threshold

SEED = bytes(range(32))


def assert_symmetric_without_self_loops(graph, n):
    assert sorted(graph) == list(range(n))
    for node, neighbours in graph.items():
        assert node not in neighbours
        assert all(node in graph[peer] for peer in neighbours)


def is_connected(graph, removed=frozenset()):
    nodes = set(graph) - set(removed)
    start = next(iter(nodes))
    seen, frontier = {start}, [start]
    while frontier:
        for peer in graph[frontier.pop()] - removed:
            if peer not in seen:
                seen.add(peer)
                frontier.append(peer)
    return seen == nodes


@pytest.mark.parametrize("n", [1, 2, 5, 17])
def test_full_graph_connects_everyone(n):
    graph = full_graph(n)
    assert_symmetric_without_self_loops(graph, n)
    assert all(len(neighbours) == n - 1 for neighbours in graph.values())


@pytest.mark.parametrize(("n", "k"), [(3, 2), (10, 4), (11, 10), (50, 6), (101, 8), (1000, 14)])
def test_harary_graph_is_symmetric_k_regular_and_connected(n, k):
    graph = harary_graph(n, k, seed=SEED)
    assert_symmetric_without_self_loops(graph, n)
    assert all(len(neighbours) == k for neighbours in graph.values())
    assert is_connected(graph)
    assert graph == harary_graph(n, k, seed=SEED)  # rebuildable from the announced seed


def test_harary_graph_is_k_connected():
    # removing any k - 1 nodes leaves it connected (Harary 1962), here for every 3-subset of 10 nodes
    graph = harary_graph(10, 4, seed=SEED)
    for removed in itertools.combinations(range(10), 3):
        assert is_connected(graph, frozenset(removed))


def test_relabelling_depends_on_the_seed():
    graphs = [harary_graph(10, 2, seed=bytes([i]) * 16) for i in range(40)]
    assert len({graph[0] for graph in graphs}) > 10
    assert harary_graph(50, 6, seed=SEED) != harary_graph(50, 6, seed=SEED[::-1])


def test_invalid_harary_parameters_are_rejected():
    with pytest.raises(ValueError, match="even"):
        harary_graph(10, 3, seed=SEED)
    with pytest.raises(ValueError, match="n - 1"):
        harary_graph(10, 10, seed=SEED)
    with pytest.raises(ValueError, match="at least 3 nodes"):
        harary_graph(2, 2, seed=SEED)
    with pytest.raises(ValueError, match="seed"):
        harary_graph(10, 4, seed=b"short")


def test_recommended_threshold():
    # fixed values: a strict majority; more than 2/3 when up to a third may be corrupt (Bonawitz et al.)
    assert [recommended_threshold(m) for m in (1, 2, 3, 6, 10)] == [1, 2, 2, 4, 6]
    assert recommended_threshold(9, corrupt_fraction=1 / 3) == 7
    assert recommended_threshold(100, corrupt_fraction=0.33) == 67
    # property: the server cannot collect t shares of each secret (2t - c > m), and t is the smallest such
    for m in range(1, 40):
        for fraction in (0.0, 0.1, 0.25, 0.5, 0.9):
            t, c = recommended_threshold(m, corrupt_fraction=fraction), int(fraction * m)
            assert c < t <= m
            assert 2 * t - c > m >= 2 * (t - 1) - c
    with pytest.raises(ValueError, match="corrupt_fraction"):
        recommended_threshold(10, corrupt_fraction=1.0)
