"""A server that shows different clients different set-ups, or a set-up of its own making, against the real clients.

Found by a review of 2026-12-07 after the masks were bound to the fit request: the set-up (``RoundSetup``) is a second
message each client gets on its own. Giving every client but the target a weight bound of 1e300 made their encodings a
known constant, and the target's update came out of the sum; a SecAgg+ graph of disjoint cliques (every degree right)
let the server unmask each clique's sum, with signatures on. Masks are now bound to the whole set-up
(``mask_binding``), clients check what they can (levels, clip range, the graph derived from the keys), and a client
unmasks only survivors that form one connected part of the graph.
"""

import dataclasses
import hashlib
import itertools

import numpy as np
import pytest

from secure_ffm.engine.aggregation import AggregationError, VectorLayout
from secure_ffm.engine.transforms import UpdatePipeline
from secure_ffm.engine.wire import ClientUpdate
from secure_ffm.run.simulation import Simulation, prepare_run
from secure_ffm.secagg import graph as graphs
from secure_ffm.secagg import masking_protocol as mp
from secure_ffm.secagg import quantization
from secure_ffm.secagg.masking_protocol import MaskingProtocol, UnmaskRequest
from tests.secagg.cases import cnn_config
from tests.secagg.test_model_inconsistency import Aggregates, Updates, relative_error

TARGET = 0
ROUND = 1


def constant_encoding_attack(monkeypatch):
    """A masked run of 4 clients in which the server shows every client but the target a weight bound of 1e300 (each of
    their values then encodes as the middle level, whatever its update), and reads ``sum - known constants`` as the
    target's encoding. Returns (the recovered weighted update, the target's true weighted update)."""
    config = cnn_config(client={"local_steps": 2}, server={"rounds": 1}, secure_aggregation={"protocol": "masking"})
    updates, aggregates = Updates(), Aggregates()
    simulation = Simulation(prepare_run(config), transforms=UpdatePipeline([updates]), hooks=[aggregates])
    honest_exchange = simulation.transport.exchange

    def exchange(round, stage):
        if stage.name == mp.SHARE_KEYS:
            lied = {c: r if c == TARGET else dataclasses.replace(r, weight_bound=1e300) for c, r in stage.requests.items()}
            stage = dataclasses.replace(stage, requests=lied)
        return honest_exchange(round, stage)

    simulation.transport.exchange = exchange
    captured = {}
    decode = mp.MaskingServer.decode

    def capture(self, total):
        captured["total"], captured["server"] = np.array(total), self
        return decode(self, total)

    monkeypatch.setattr(mp.MaskingServer, "decode", capture)
    row = simulation.run_round(1)
    assert row["aborted"] is None and row["clients"] == [0, 1, 2, 3]
    server, total = captured["server"], captured["total"].astype(np.uint64)
    middle = np.full(total.shape, server.levels // 2, dtype=np.uint64)  # every value of a non-target: (x + B) / step
    middle[-1] = server.levels // 2  # and its weight, encoded as w - W/2 in [-W/2, W/2]
    own = ((total - 3 * middle) % (1 << 32)).astype(np.uint32)
    values = quantization.decode_sum(own[:-1], num_clients=1, clip_range=server.clip_range * server.weight_bound, levels=server.levels)
    delta, _ = server.layout.split(values)
    others = [c for c in range(4) if c != TARGET]
    assert all(sum(float(np.sum(v**2)) for v in updates.deltas[c].values()) > 0 for c in others)  # honest, non-zero updates
    weight = updates.examples[TARGET]
    return delta, {k: weight * updates.deltas[TARGET][k] for k in delta}


def test_masks_bound_to_the_request_alone_let_a_set_up_encoding_the_others_as_constants_unmask_the_target(monkeypatch):
    # the masks bound to the fit request alone (every client got the same one), as in the first binding
    monkeypatch.setattr(mp, "mask_binding", lambda setup, digest: hashlib.sha256(digest or b"").digest())
    recovered, truth = constant_encoding_attack(monkeypatch)
    assert relative_error(recovered, truth) < 0.01


def test_masks_bound_to_the_set_up_make_that_attack_unmask_noise(monkeypatch):
    recovered, truth = constant_encoding_attack(monkeypatch)
    assert relative_error(recovered, truth) > 10
    flat = np.concatenate([recovered[k].ravel() for k in recovered])
    assert abs(np.corrcoef(flat, np.concatenate([truth[k].ravel() for k in recovered]))[0, 1]) < 0.05


# --------------------------------------------------------------------------- what a client checks in a set-up


def honest_setup(n, *, neighbours=0, clip_range=1.0):
    """Real clients' adverts and the set-up an honest server makes of them: (clients, setup)."""
    protocol = MaskingProtocol(seed=1, neighbours=neighbours, clip_range=clip_range)
    protocol.plan_clients(n)
    server = protocol.server_round(ROUND, range(n), weight_bound=10.0)
    clients = {c: protocol.client_round(c, ROUND) for c in range(n)}
    setup = server.collect_keys([client.advertise(ROUND) for client in clients.values()])
    return clients, setup


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"levels": 3}, "refuses 3 quantization levels"),
        ({"clip_range": 2.0}, "clip_range = 1.0 and refuses a set-up of 2.0"),
        ({"weight_bound": float("inf")}, "refuses a weight bound of inf"),
    ],
)
def test_a_client_refuses_quantization_it_can_check(change, reason):
    clients, setup = honest_setup(5)
    with pytest.raises(AggregationError, match=reason):
        clients[0].share_keys(dataclasses.replace(setup, **change))


def two_cliques(participants):
    ids = sorted(participants)
    half = len(ids) // 2
    return {c: frozenset(d for d in ids if d != c and (ids.index(d) < half) == (ids.index(c) < half)) for c in ids}


def test_a_client_refuses_a_mask_graph_the_advertised_keys_do_not_give():
    clients, setup = honest_setup(10, neighbours=4)
    assert all(len(peers) == 4 for peers in setup.neighbours.values())
    cliques = two_cliques(setup.participants)  # every degree 4, as configured: the check of degrees alone passed it
    assert all(len(peers) == 4 for peers in cliques.values())
    for client in clients.values():
        with pytest.raises(AggregationError, match="not the one the advertised keys give"):
            client.share_keys(dataclasses.replace(setup, neighbours=cliques))
    assert all(client.share_keys(setup).client_id == c for c, client in clients.items())  # the derived graph is taken


def test_the_graph_is_a_function_of_the_round_and_the_keys():
    _, setup = honest_setup(12, neighbours=4)
    seed = mp.graph_seed(ROUND, setup.public_keys)
    assert mp.mask_graph(setup.participants, 4, seed=seed) == setup.neighbours
    other = dict(setup.public_keys)
    other[3] = (bytes(32), other[3][1])
    assert mp.graph_seed(ROUND, other) != seed and mp.graph_seed(ROUND + 1, setup.public_keys) != seed


def a_cut(setup, size):
    """``size`` clients whose removal splits the others into separate parts of the mask graph."""
    for cut in itertools.combinations(setup.participants, size):
        rest = set(setup.participants) - set(cut)
        if not graphs.connected(rest, setup.neighbours):
            return set(cut)
    raise AssertionError("no cut of that size")


def test_a_client_unmasks_only_survivors_that_form_one_part_of_the_mask_graph():
    # an honest SecAgg+ round of 10 with degree 4 (a ring of 10, relabelled): dropping two opposite pairs splits it in two
    protocol = MaskingProtocol(seed=1, neighbours=4)
    protocol.begin_round(ROUND, range(10), weight_bound=10.0)
    server = protocol.in_process.server
    for c in range(10):
        protocol.encode(ClientUpdate(c, ROUND, {"w": np.full(3, 0.01 * c, np.float32)}, 10), weight=10.0, rng=np.random.default_rng(c))
    setup = server.round_setup
    cut = a_cut(setup, 4)
    survivors = tuple(c for c in range(10) if c not in cut)
    parts = [set(p) for p in _components(set(survivors), setup.neighbours)]
    assert len(parts) == 2
    request = UnmaskRequest(ROUND, survivors, tuple(sorted(cut)))
    for c in survivors:
        with pytest.raises(AggregationError, match="separate parts of the mask graph"):
            protocol.in_process.clients[c].unmask(request)
    # the honest request, everyone listed, is answered
    assert protocol.in_process.clients[survivors[0]].unmask(UnmaskRequest(ROUND, tuple(range(10)), ())).client_id == survivors[0]


def test_a_signing_client_refuses_to_sign_survivors_in_separate_parts():
    protocol = MaskingProtocol(seed=1, neighbours=4, signatures=True)
    protocol.plan_clients(10)
    protocol.begin_round(ROUND, range(10), weight_bound=10.0)
    for c in range(10):
        protocol.encode(ClientUpdate(c, ROUND, {"w": np.full(3, 0.01 * c, np.float32)}, 10), weight=10.0, rng=np.random.default_rng(c))
    setup = protocol.in_process.server.round_setup
    cut = a_cut(setup, 4)
    survivors = tuple(c for c in range(10) if c not in cut)
    with pytest.raises(AggregationError, match="separate parts of the mask graph"):
        protocol.in_process.clients[survivors[0]].consistency(mp.ConsistencyCheck(ROUND, survivors, tuple(sorted(cut))))


def _components(nodes, graph):
    remaining, parts = set(nodes), []
    while remaining:
        part, frontier = set(), [remaining.pop()]
        while frontier:
            node = frontier.pop()
            part.add(node)
            reached = graph[node] & remaining
            remaining -= reached
            frontier.extend(reached)
        parts.append(part)
    return parts


def test_connected_is_false_for_separate_parts_and_the_empty_set():
    graph = {0: frozenset({1}), 1: frozenset({0}), 2: frozenset({3}), 3: frozenset({2})}
    assert graphs.connected({0, 1}, graph) and not graphs.connected({0, 1, 2, 3}, graph)
    assert not graphs.connected(set(), graph) and graphs.connected({2}, graph)


# --------------------------------------------------------------------------- the set-up digest


def test_the_set_up_digest_names_every_field_a_client_encodes_or_masks_with():
    _, setup = honest_setup(6, neighbours=0)
    reference = mp.setup_digest(setup)
    layout = VectorLayout.of_arrays({"w": np.zeros(3, np.float32)}, {})
    changed = [
        dataclasses.replace(setup, threshold=setup.threshold + 1),
        dataclasses.replace(setup, weight_bound=11.0),
        dataclasses.replace(setup, clip_range=2.0),
        dataclasses.replace(setup, levels=setup.levels + 1),
        dataclasses.replace(setup, layout=layout),
        dataclasses.replace(setup, integer_values=True),
        dataclasses.replace(setup, neighbours={**setup.neighbours, 0: setup.neighbours[0] - {1}}),
        dataclasses.replace(setup, public_keys={**setup.public_keys, 2: (bytes(32), setup.public_keys[2][1])}),
    ]
    digests = [mp.setup_digest(s) for s in changed]
    assert reference not in digests and len(set(digests)) == len(digests)
    assert mp.mask_binding(setup, None) != mp.mask_binding(setup, bytes(32))


@pytest.mark.parametrize(
    ("neighbours", "signatures", "warning"),
    [(4, False, "can unmask one client's update without colluders"), (4, True, "not one that colludes with a client"), (0, True, None)],
)
def test_a_secagg_plus_run_says_what_its_graph_does_not_protect_against(caplog, neighbours, signatures, warning):
    protocol = MaskingProtocol(seed=1, neighbours=neighbours, signatures=signatures)
    protocol.plan_clients(10)
    with caplog.at_level("WARNING", logger="secure_ffm.secagg.masking_protocol"):
        protocol.server_round(ROUND, range(10), weight_bound=10.0)
    messages = [r.getMessage() for r in caplog.records]
    assert any(warning in m for m in messages) if warning else not messages


def test_the_server_aborts_a_round_whose_dropouts_split_the_survivors_saying_so():
    # an honest round: the clients would refuse such a list anyway; the server says why before it asks
    protocol = MaskingProtocol(seed=1, neighbours=4)
    protocol.begin_round(ROUND, range(10), weight_bound=10.0)
    cut = a_cut(protocol.in_process.server.round_setup, 4)
    messages = [
        protocol.encode(ClientUpdate(c, ROUND, {"w": np.full(3, 0.01 * c, np.float32)}, 10), weight=10.0, rng=np.random.default_rng(c))
        for c in range(10)
    ]
    with pytest.raises(AggregationError, match="dropouts split the 6 survivors into separate parts of the SecAgg\\+ mask graph"):
        protocol.aggregate(ROUND, [m for m in messages if m.client_id not in cut])
