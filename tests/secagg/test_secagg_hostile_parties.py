"""Masking and CKKS against a server that asks too much and clients that send garbage (an audit of 2026-12-07).

A server that asked a client for a second masked input in one round got the same masks twice (the difference of the two
inputs is the difference of the updates, unmasked); a key request that listed fewer clients than the set-up then handed
keys to, or a round of one, lowered the client's minimum threshold and neighbours (its update unmasked); one client's
bad encrypted share made every honest recipient fail; and malformed layouts, stage replies or decrypted sums from one
party ended the server's run with RecursionError, AttributeError or KeyError.
"""

import dataclasses

import numpy as np
import pytest

from secure_ffm.engine.aggregation import AggregationError, StageReplies, VectorLayout, run_stages
from secure_ffm.engine.codec import pack, unpack
from secure_ffm.engine.wire import ClientMessage, ClientUpdate
from secure_ffm.secagg.ckks import CKKSProtocol, DecryptedSums
from secure_ffm.secagg.masking_protocol import (
    ADVERTISE_KEYS,
    SHARE_KEYS,
    UNMASK,
    KeyRequest,
    MaskingProtocol,
    MaskingServer,
    UnmaskResponse,
)

ROUND = 1


def update_of(client, scale=0.1):
    rng = np.random.default_rng(100 + client)
    return ClientUpdate(
        client, ROUND, {"w": rng.normal(0, scale, 40).astype(np.float32), "b": rng.normal(0, scale, 3).astype(np.float32)}, 10
    )


def through_the_wire(value):
    return unpack(*pack({"value": value}))["value"]


def masked_round(n, *, protocol=None, neighbours=0, key_request=None):
    """A round's server, its clients and the set-up, up to the routed shares."""
    protocol = protocol or MaskingProtocol()
    server = MaskingServer(ROUND, range(n), weight_bound=10.0, neighbours=neighbours)
    clients = {c: protocol.client_round(c, ROUND) for c in range(n)}
    request = key_request or KeyRequest(ROUND, tuple(range(n)))
    setup = server.collect_keys([clients[c].handle(ADVERTISE_KEYS, request) for c in range(n)])
    return server, clients, setup


def test_a_client_sends_one_masked_input_a_round():
    server, clients, setup = masked_round(5)
    inbox = server.route_shares([clients[c].handle(SHARE_KEYS, setup) for c in range(5)])
    victim = clients[0]
    victim.encode(update_of(0), weight=10.0, rng=np.random.default_rng(1), payload=inbox[0])
    known = ClientUpdate(0, ROUND, {k: np.zeros_like(v) for k, v in update_of(0).delta.items()}, 10)  # x' the server can predict
    with pytest.raises(AggregationError, match="already sent its masked input"):
        victim.encode(known, weight=10.0, rng=np.random.default_rng(2))


def test_a_second_input_is_refused_after_the_state_travels_as_on_a_node():
    protocol = MaskingProtocol()
    server, clients, setup = masked_round(3, protocol=protocol)
    inbox = server.route_shares([clients[c].handle(SHARE_KEYS, setup) for c in range(3)])
    clients[0].encode(update_of(0), weight=10.0, rng=np.random.default_rng(1), payload=inbox[0])
    restored = protocol.client_round(0, ROUND)  # a node runs each message in a fresh process, from its saved state
    restored.restore_state(through_the_wire(clients[0].export_state()))
    with pytest.raises(AggregationError, match="already sent its masked input"):
        restored.encode(update_of(0), weight=10.0, rng=np.random.default_rng(2))


def test_a_key_request_claiming_a_smaller_round_cannot_lower_the_clients_minimums():
    # the clients' configuration: the complete graph; the server claims a round of 5, then sends 12 keys with a 4-regular
    # graph, under which it could collect one client's self seed and its neighbours' pair keys from different holders
    server, clients, setup = masked_round(12, neighbours=4, key_request=KeyRequest(ROUND, tuple(range(5))))
    with pytest.raises(AggregationError, match="gives it 4 neighbours, fewer than the 11"):
        clients[0].handle(SHARE_KEYS, setup)


@pytest.mark.parametrize("planned", [3, 10])
def test_a_client_refuses_a_round_smaller_than_its_planned_threshold(planned):
    protocol = MaskingProtocol()
    protocol.plan_rounds(planned)  # the run's own clients_per_round: t at least a majority of it
    server, clients, setup = masked_round(1, protocol=protocol)  # a round of one: t = 1, no neighbours
    assert setup.threshold == 1 and not setup.neighbours[0]
    with pytest.raises(AggregationError, match="refuses"):
        clients[0].handle(SHARE_KEYS, setup)


def test_an_honest_round_smaller_than_planned_still_runs_with_the_planned_threshold():
    protocol = MaskingProtocol()
    protocol.plan_rounds(10)  # t >= 6 of the complete graph of 10
    protocol.begin_round(ROUND, list(range(8)), weight_bound=10.0)  # two sampled clients missing: 8 participants
    assert protocol.in_process.server.threshold == 6
    accumulator = protocol.accumulator(ROUND)
    for c in range(8):
        accumulator.add(protocol.encode(update_of(c), weight=10.0))
    aggregate = accumulator.result()
    expected = np.mean([update_of(c).delta["w"] for c in range(8)], axis=0)
    np.testing.assert_allclose(aggregate.mean_delta["w"], expected, atol=1e-4)


def test_one_clients_bad_shares_do_not_stop_its_honest_neighbours(caplog):
    n = 7  # t = 4: the bad client's shares reach 2 of the 6 others, who leave them out; the other 4 rebuild its seed
    server, clients, setup = masked_round(n)
    messages = [clients[c].handle(SHARE_KEYS, setup) for c in range(n)]
    bad = messages[6]
    shares = tuple(dataclasses.replace(s, ciphertext=bytes(len(s.ciphertext))) if s.recipient in (0, 1) else s for s in bad.shares)
    messages[6] = dataclasses.replace(bad, shares=shares)
    inbox = server.route_shares(messages)
    for c in range(n):
        server.receive_masked(clients[c].encode(update_of(c), weight=10.0, rng=np.random.default_rng(c), payload=inbox[c]))
    assert "the share from client 6 fails authentication; it is left out" in caplog.text
    request = server.unmask_request()
    total = server.unmask(request, [clients[c].handle(UNMASK, request) for c in range(n)])
    delta, _, weight = server.decode(total)
    expected = np.sum([10.0 * update_of(c).delta["w"] for c in range(n)], axis=0)
    assert weight == pytest.approx(10.0 * n, rel=1e-6)
    np.testing.assert_allclose(delta["w"], expected, atol=1e-3)


@pytest.mark.parametrize(
    "layout", [b"[" * 200_000, b'{"delta": [["w", [1e400]]], "statistics": []}', b'{"delta": [["w", [-3]]], "statistics": []}']
)
@pytest.mark.parametrize("protocol", ["masking", "ckks"])
def test_a_malformed_layout_is_that_clients_bad_message(protocol, layout):
    fixed = VectorLayout.of(update_of(0))
    if protocol == "masking":
        server, clients, setup = masked_round(3)
        server.route_shares([clients[c].handle(SHARE_KEYS, setup) for c in range(3)])
        payload = {"masked": np.zeros(fixed.size, np.uint32), "round": np.asarray([ROUND]), "layout": layout}
        add = server.receive_masked
    else:
        ckks = CKKSProtocol()
        server = ckks.server_round(ROUND, [0, 1, 2], layout=fixed)
        payload = {"round": np.asarray([ROUND]), "layout": layout, "context": ckks.key_holder.fingerprint}
        add = server.add
    message = through_the_wire(ClientMessage(2, ROUND, payload, 10, {}))
    with pytest.raises(AggregationError, match="malformed layout"):
        add(message)


def test_share_keys_of_the_wrong_type_abort_the_round_not_the_run():
    server, clients, setup = masked_round(4)
    messages = [clients[c].handle(SHARE_KEYS, setup) for c in range(4)]
    messages[3] = through_the_wire(dataclasses.replace(messages[3], shares=(1, 2, 3)))
    with pytest.raises(AggregationError, match="not encrypted shares"):
        server.route_shares(messages)


def test_an_unmask_response_of_the_wrong_type_is_left_out(caplog):
    n = 5
    server, clients, setup = masked_round(n)
    inbox = server.route_shares([clients[c].handle(SHARE_KEYS, setup) for c in range(n)])
    for c in range(n):
        server.receive_masked(clients[c].encode(update_of(c), weight=10.0, rng=np.random.default_rng(c), payload=inbox[c]))
    request = server.unmask_request()
    responses = [clients[c].handle(UNMASK, request) for c in range(4)] + [
        through_the_wire(UnmaskResponse(4, ROUND, self_seed_shares=[1, 2]))
    ]
    total = server.unmask(request, responses)  # four honest holders of t = 3 suffice
    assert "client 4 sent its self seed shares as a list, not a table" in caplog.text
    _, _, weight = server.decode(total)
    assert weight == pytest.approx(10.0 * n, rel=1e-6)


@pytest.mark.parametrize(
    "forged",
    [
        DecryptedSums({}, {}, 30.0, 3),
        DecryptedSums({"b": np.zeros(3), "w": np.zeros(7)}, {}, 30.0, 3),
        DecryptedSums({"b": np.zeros(3), "w": np.full(40, np.nan)}, {}, 30.0, 3),
        DecryptedSums({"b": np.zeros(3), "w": np.zeros(40)}, {}, float("inf"), 3),
        DecryptedSums({"b": np.zeros(3), "w": np.zeros(40)}, {}, 30.0, 99),
    ],
)
def test_decrypted_sums_that_do_not_fit_the_aggregate_abort_the_round(forged):
    ckks = CKKSProtocol()  # key holder "clients": the lowest-id sender decrypts, and may lie
    layout = VectorLayout.of(update_of(0))
    server = ckks.server_round(ROUND, [0, 1, 2], layout=layout)
    payloads = run_stages(server.setup(), lambda stage: StageReplies({}))
    for c in range(3):
        server.add(ckks.client_round(c, ROUND).encode(update_of(c), weight=10.0, payload=payloads[c]))
    forged = through_the_wire(forged)
    with pytest.raises(AggregationError):
        run_stages(server.finish(), lambda stage: StageReplies({next(iter(stage.requests)): forged}))


def test_a_node_refuses_a_second_fit_request_of_the_round_before_training(tmp_path):
    """Through a node's session, state carried between messages as on a SuperNode: the second fit request of a masked
    round is refused before anything trains, so it costs the node neither DP budget nor an answer."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "flower"))
    from digits_cnn import digits_cnn_toml

    from secure_ffm.config import load_config
    from secure_ffm.engine.codec import from_bytes, to_bytes
    from secure_ffm.run.deployment import node_session
    from secure_ffm.run.simulation import Simulation, prepare_run
    from secure_ffm.transports.base import FitRequest
    from secure_ffm.transports.remote import FIT, STAGE

    path = tmp_path / "masked.toml"
    path.write_text(
        digits_cnn_toml(clients=3, rounds=1)
        + '[secure_aggregation]\nprotocol = "masking"\n[privacy]\nmode = "dp-sgd"\ntarget_epsilon = 8.0\n'
    )
    config = load_config(path)
    states = {c: to_bytes({}) for c in range(3)}

    def ask(client, kind, request):
        state = from_bytes(states[client])
        try:
            return unpack(*node_session(config, partition_id=client, num_partitions=3, state=state).handle(kind, pack(request)))
        finally:
            states[client] = to_bytes(state)

    server = Simulation(prepare_run(config))
    ins = server.server.fit_instructions(1, [0, 1, 2])
    half = server.protocol.server_round(1, [0, 1, 2], weight_bound=1e6)

    def deliver(stage):
        return StageReplies({c: ask(c, STAGE, {"round": 1, "stage": stage.name, "request": r}) for c, r in stage.requests.items()})

    inbox = run_stages(half.setup(), deliver)
    assert "message" in ask(0, FIT, {"round": 1, "request": FitRequest(ins, payload=inbox[0])})
    spent = from_bytes(states[0])["client"]
    crafted = dataclasses.replace(ins, config={**ins.config, "train_only": "head"})
    with pytest.raises(AggregationError, match="already sent its masked input"):
        ask(0, FIT, {"round": 1, "request": FitRequest(crafted, payload=None)})
    after = from_bytes(states[0])["client"]
    assert after["dp_sgd"]["ledger"] == spent["dp_sgd"]["ledger"] and after["fit_answers"] == spent["fit_answers"] == 1
