"""A server that lies about survivors can unmask the sum of a small set of honest clients, not just one.

Each holder is shown its own survivor list (at least ``t``, itself included), so it reveals one kind of share per
peer and every check passes; together the lists give ``t`` pair-key shares of every client outside a set ``S`` and
self-seed shares of ``S``, and the server unmasks the sum over ``S`` alone. Under the complete graph ``|S|`` can be as
small as ``ceil(n (2t - n) / t)``: about 4 with a strict majority ``t``, whatever ``n`` (an audit of 2026-12-07 summed
4 of 100 honest clients exactly). Distributed noise shares sized for ``t`` then left such a sum with a fraction
``sqrt(|S| / t)`` of the claimed noise; the masking protocol now raises ``t`` until no sum the server can isolate holds
fewer inputs than the shares are sized for.
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secure_ffm.engine.aggregation import AggregationError
from secure_ffm.secagg import graph
from secure_ffm.secagg.masking_protocol import KeyRequest, MaskingProtocol, RoundSetup
from secure_ffm.secagg.quantization import levels_for


def survivor_lists(n: int, t: int, s: int) -> dict[int, set[int]] | None:
    """Lists that let a lying server sum S = {0..s-1} alone: every holder is shown at least t survivors (itself among
    them when it is outside S), and every client outside S is declared dropped to at least t holders. None if the
    greedy construction (fill each list with the clients declared dropped least so far) cannot."""
    inside, outside = set(range(s)), list(range(s, n))
    listed = dict.fromkeys(outside, 1)  # a holder outside S lists itself
    lists = {}
    for holder in range(n):
        extra = t - s - (1 if holder in listed else 0)
        pool = sorted((v for v in outside if v != holder), key=lambda v: (listed[v], v))
        if extra > len(pool):
            return None
        for v in pool[: max(0, extra)]:
            listed[v] += 1
        lists[holder] = inside | set(pool[: max(0, extra)]) | ({holder} if holder in listed else set())
    return None if any(listed[v] > n - t for v in outside) else lists


def smallest_isolated_sum(n: int, t: int) -> int:
    return next(s for s in range(1, n + 1) if survivor_lists(n, t, s) is not None)


@pytest.mark.parametrize(("n", "t"), [(5, 3), (8, 5), (10, 6), (10, 8), (12, 7), (12, 9), (16, 9), (20, 11), (20, 14)])
def test_the_counting_bound_is_what_a_lying_server_reaches(n, t):
    assert smallest_isolated_sum(n, t) == graph.isolatable_sum(n, t)


@given(st.integers(1, 300).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n))))
def test_the_threshold_for_a_sum_is_the_smallest_that_protects_it(case):
    n, s = case
    t = graph.threshold_for_isolated_sum(n, s)
    assert t <= n and graph.isolatable_sum(n, t) >= max(s, 1)
    assert t == 1 or graph.isolatable_sum(n, t - 1) < s


def setup_for(protocol: MaskingProtocol, n: int, threshold: int) -> tuple[list, RoundSetup]:
    clients = [protocol.client_round(c, 1) for c in range(n)]
    adverts = [c.handle("advertise_keys", KeyRequest(1, tuple(range(n)))) for c in clients]
    public = {a.client_id: (a.pair_public, a.share_public) for a in adverts}
    setup = RoundSetup(
        1, public, graph.full_graph(n), threshold, weight_bound=1.0, clip_range=1.0, levels=levels_for(n), integer_values=True
    )
    return clients, setup


@pytest.mark.parametrize("n", [8, 10, 20])
def test_clients_whose_shares_carry_the_noise_of_a_majority_refuse_a_threshold_that_lets_a_server_sum_fewer(n):
    protocol = MaskingProtocol(clip_range=1.0, neighbours=0, seed=0)
    protocol.plan_rounds(n)
    protocol.use_integer_values()
    majority = graph.threshold_range(n)[0]
    protocol.protect_sums_of(majority)  # what distributed DP sizes its shares for by default
    needed = graph.threshold_for_isolated_sum(n, majority)
    assert smallest_isolated_sum(n, needed) >= majority > smallest_isolated_sum(n, majority)
    clients, setup = setup_for(protocol, n, majority)
    with pytest.raises(AggregationError, match=f"could unmask the sum of {graph.isolatable_sum(n, majority)} of the {n} inputs"):
        clients[0].handle("share_keys", setup)
    clients, setup = setup_for(protocol, n, needed)
    assert all(c.handle("share_keys", setup) is not None for c in clients)
    assert protocol.server_round(1, range(n), weight_bound=1.0).threshold == needed  # the server's default meets them


def test_a_configured_threshold_sizes_the_shares_for_the_sum_it_lets_a_server_isolate():
    from secure_ffm.config import config_from_dict
    from secure_ffm.privacy.distributed import minimum_shares

    def shares(threshold: int, neighbours: int = 0) -> int:
        cfg = config_from_dict(
            {
                "data": {"dataset": "digits", "num_clients": 10},
                "model": {"arch": "cnn", "finetune": "full"},
                "secure_aggregation": {"protocol": "masking", "threshold": threshold, "neighbours": neighbours},
            }
        )
        return minimum_shares(cfg)

    assert shares(6) == 4 and shares(8) == 8 and shares(10) == 10  # a strict majority protects 4, not 6
    assert shares(0) == 6  # the default: shares for a majority, the threshold raised to 7 (test above)
