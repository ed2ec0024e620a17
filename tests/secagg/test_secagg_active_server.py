"""Masking against an active server and hostile share holders (issue 11's audit findings).

A malicious server is played here against the real :class:`MaskingClient` code: it composes
the round set-up by hand (any threshold, any graph), and tells different clients different
survivor lists. Hostile share holders are played against the real :class:`MaskingServer`.
Node authentication is assumed (the server does not substitute public keys or invent clients):
see docs/threat_model.md.
"""

import itertools
import logging

import numpy as np
import pytest

from secure_ffm.config import config_from_dict
from secure_ffm.engine.aggregation import AggregationError, VectorLayout
from secure_ffm.engine.wire import ClientMessage, ClientUpdate
from secure_ffm.errors import ConfigError
from secure_ffm.run.cli import main
from secure_ffm.secagg import graph, keys, masking, shamir
from secure_ffm.secagg.masking_protocol import (
    MaskingClient,
    MaskingProtocol,
    RoundSetup,
    UnmaskRequest,
    UnmaskResponse,
    graph_seed,
    mask_binding,
    mask_graph,
)
from secure_ffm.secagg.quantization import levels_for
from tests.engine.tiny_run import TINY as TINY_RUN

ROUND = 1
DIM = 40


def update_of(client_id, round=ROUND):
    rng = np.random.default_rng(100 + client_id)
    return ClientUpdate(
        client_id, round, {"w": rng.normal(0, 0.1, DIM).astype(np.float32), "b": rng.normal(0, 0.1, 3).astype(np.float32)}, 10
    )


# --------------------------------------------------------------------------- a lying server against the real clients


def share_and_mask(clients, setup, update=update_of):
    """Every client takes ``setup``, the shares are routed, and each masks its quantized update: ``(inputs, masked)``."""
    messages = [client.share_keys(setup) for client in clients.values()]
    for c, client in clients.items():
        client.receive_shares([share for m in messages for share in m.shares if share.recipient == c])
    inputs, masked = {}, {}
    for c, client in clients.items():
        inputs[c] = client.quantize(update(c), weight=10.0, rng=np.random.default_rng(c))
        masked[c] = client.mask(inputs[c])
    return inputs, masked


class LyingServer:
    """Runs the set-up through real clients with a threshold and graph of its choosing, then lies about survivors.

    ``masked[c]`` is what client ``c`` sent, ``inputs[c]`` its quantized input (the ground
    truth, which the server should never learn for a single client).
    """

    def __init__(self, n, *, threshold, neighbours=None, min_threshold=0, min_neighbours=0):
        """``neighbours``: a graph of the server's making, or a degree (the Harary graph the clients derive from the keys)."""
        self.clients = {c: MaskingClient(c, min_threshold=min_threshold, min_neighbours=min_neighbours) for c in range(n)}
        adverts = [client.advertise(ROUND) for client in self.clients.values()]
        public = {a.client_id: (a.pair_public, a.share_public) for a in adverts}
        if isinstance(neighbours, int):
            neighbours = mask_graph(range(n), neighbours, seed=graph_seed(ROUND, public))
        graph_ = neighbours if neighbours is not None else graph.full_graph(n)
        self.setup = RoundSetup(ROUND, public, graph_, threshold, weight_bound=10.0, clip_range=1.0, levels=levels_for(n))

    def run_setup(self):
        self.inputs, self.masked = share_and_mask(self.clients, self.setup)  # a client may refuse here
        return self

    def attack(self, target, told_dropped):
        """Tell ``told_dropped`` that ``target`` dropped and the others that it survived, then ask everyone the other story too.

        Returns the target's input if both of its secrets could be rebuilt, else None.
        """
        everyone = tuple(sorted(self.clients))
        dropped_story = UnmaskRequest(ROUND, survivors=tuple(c for c in everyone if c != target), dropped=(target,))
        survived_story = UnmaskRequest(ROUND, survivors=everyone, dropped=())
        seed_shares, key_shares = {}, {}
        for c, client in self.clients.items():
            stories = (dropped_story, survived_story) if c in told_dropped else (survived_story, dropped_story)
            for request in stories:
                try:
                    response = client.unmask(request)
                except AggregationError:
                    continue  # refused: nothing revealed
                for found, target_shares in ((response.self_seed_shares, seed_shares), (response.pair_key_shares, key_shares)):
                    if target in found:
                        share_id, value = shamir.share_from_bytes(found[target])
                        target_shares[share_id] = value
        t = self.setup.threshold
        if len(seed_shares) < t or len(key_shares) < t:
            return None
        self_seed = shamir.combine(seed_shares, threshold=t)
        private = keys.private_key_from_bytes(shamir.combine(key_shares, threshold=t))
        pair_seeds = {
            v: keys.shared_seed(
                private,
                self.setup.public_keys[v][0],
                context=keys.pair_context(round=ROUND, client_a=target, client_b=v, binding=mask_binding(self.setup, None)),
            )
            for v in self.setup.neighbours[target]
        }
        masks = masking.mask_vector(
            np.zeros(self.masked[target].shape, np.uint32), client_id=target, pair_seeds=pair_seeds, self_seed=self_seed
        )
        return self.masked[target] - masks


def partitions(others):
    """Every way to split the other holders into those told "dropped" and those told "survived"."""
    for size in range(len(others) + 1):
        yield from (set(d) for d in itertools.combinations(others, size))


def test_a_server_that_lies_about_survivors_recovers_no_single_update_with_a_majority_threshold():
    # prepare: 5 clients, t = 3 (a strict majority): every target, every split of the other 4 holders
    n, t = 5, 3
    recovered = []
    for target in range(n):
        for told_dropped in partitions([c for c in range(n) if c != target]):
            server = LyingServer(n, threshold=t).run_setup()  # fresh clients: each remembers what it revealed
            # execute
            result = server.attack(target, told_dropped)
            recovered.append(result is not None)
    # assert
    assert not any(recovered)


def test_the_same_lie_recovers_an_update_exactly_when_clients_accept_a_minority_threshold(monkeypatch):
    # prepare: the old clients, which took any t from the server (the threshold check switched off)
    monkeypatch.setattr(graph, "threshold_range", lambda num_shares: (1, num_shares))
    server = LyingServer(5, threshold=2).run_setup()
    # execute: clients 1 and 2 are told client 0 dropped, 3 and 4 that it survived
    result = server.attack(0, told_dropped={1, 2})
    # assert: client 0's quantized input, exactly - the attack the threshold check exists for
    assert result is not None
    np.testing.assert_array_equal(result, server.inputs[0])


@pytest.mark.parametrize(
    ("n", "threshold", "neighbours", "expects", "reason"),
    [
        (5, 1, None, {}, "refuses threshold t=1"),  # every share is the secret
        (5, 2, None, {}, "refuses threshold t=2"),  # 2 of 5: at or below half
        (6, 3, None, {}, "refuses threshold t=3"),  # exactly half
        (5, 6, None, {}, "refuses threshold t=6"),  # more than the holders
        (12, 2, "harary", {}, "refuses threshold t=2"),  # SecAgg+: half of a 5-client neighbourhood
        (5, 3, None, {"min_threshold": 4}, "refuses threshold t=3"),  # below the client's own configured minimum
        (5, 1, "isolated", {"min_threshold": 3, "min_neighbours": 4}, "gives it 0 neighbours, fewer than the 4"),
        (1, 1, None, {"min_threshold": 3, "min_neighbours": 4}, "gives it 0 neighbours, fewer than the 4"),  # a round of one
        (5, 3, "self-loop", {}, "does not give it neighbours"),
        (5, 3, "stranger", {}, "does not give it neighbours"),
    ],
)
def test_a_client_refuses_a_set_up_a_lying_server_could_exploit(n, threshold, neighbours, expects, reason):
    graphs = {
        None: lambda: None,
        "harary": lambda: 4,
        "isolated": lambda: {**graph.full_graph(n), 0: frozenset()},
        "self-loop": lambda: {**graph.full_graph(n), 0: frozenset(range(n))},
        "stranger": lambda: {**graph.full_graph(n), 0: frozenset({1, 2, 3, 4, 77})},
    }
    server = LyingServer(n, threshold=threshold, neighbours=graphs[neighbours](), **expects)
    with pytest.raises(AggregationError, match=reason):
        server.clients[0].share_keys(server.setup)


def test_an_isolated_client_without_expectations_of_its_own_would_give_its_update_away():
    # why the in-process protocol hands each client its configured minimums: with none, t = 1 and no neighbours pass
    server = LyingServer(1, threshold=1).run_setup()
    response = server.clients[0].unmask(UnmaskRequest(ROUND, survivors=(0,), dropped=()))
    seed = shamir.combine(dict([shamir.share_from_bytes(response.self_seed_shares[0])]), threshold=1)
    np.testing.assert_array_equal(server.masked[0] - masking.expand(seed, DIM + 4), server.inputs[0])


def test_the_protocol_gives_each_client_the_minimums_of_its_configuration():
    protocol = MaskingProtocol(neighbours=4)
    protocol.begin_round(ROUND, range(12), weight_bound=1.0)
    assert {(c.min_threshold, c.min_neighbours) for c in protocol.in_process.clients.values()} == {(3, 4)}
    protocol = MaskingProtocol(threshold=5)
    protocol.begin_round(ROUND, range(6), weight_bound=1.0)
    assert {(c.min_threshold, c.min_neighbours) for c in protocol.in_process.clients.values()} == {(5, 5)}


def test_a_client_accepts_a_strict_majority_of_its_secagg_plus_neighbourhood():
    server = LyingServer(12, threshold=3, neighbours=4)  # neighbourhoods of 5
    assert server.clients[0].share_keys(server.setup).client_id == 0


@pytest.mark.parametrize("secagg_plus", [False, True])
def test_a_client_refuses_to_unmask_when_fewer_than_t_of_its_neighbourhood_are_listed_as_survivors(secagg_plus):
    # prepare: an honest set-up; then a request that lists t - 1 of client 0's neighbourhood as survivors
    n = 12
    protocol = MaskingProtocol(neighbours=4 if secagg_plus else 0)
    protocol.begin_round(ROUND, range(n), weight_bound=10.0)
    t, near = protocol.in_process.server.threshold, sorted(protocol.in_process.server.neighbours[0])
    gone = set(near[: len(near) + 1 - (t - 1)])  # client 0 and t - 2 neighbours remain listed
    survivors = tuple(c for c in range(n) if c not in gone)
    request = UnmaskRequest(ROUND, survivors=survivors, dropped=tuple(sorted(gone)))
    if secagg_plus:
        assert len(survivors) >= t  # the old check counted every survivor and revealed
    # execute / assert
    with pytest.raises(AggregationError, match=f"refuses to unmask: {t - 1} of its"):
        protocol.in_process.clients[0].unmask(request)


# --------------------------------------------------------------------------- hostile share holders against the real server


def honest_round(n, *, drop=(), threshold=0):
    """A masking round up to the unmask responses: (server, request, responses by client)."""
    protocol = MaskingProtocol(seed=1, threshold=threshold)
    protocol.begin_round(ROUND, range(n), weight_bound=10.0)
    for c in range(n):
        message = protocol.encode(update_of(c), weight=10.0)
        if c not in drop:
            protocol.in_process.server.receive_masked(message)
    request = protocol.in_process.server.unmask_request()
    responses = {u: protocol.in_process.clients[u].unmask(request) for u in request.survivors}
    return protocol.in_process.server, request, responses


def replace_share(response, owner, data, kind="self_seed_shares"):
    fields = {"self_seed_shares": dict(response.self_seed_shares), "pair_key_shares": dict(response.pair_key_shares)}
    fields[kind][owner] = data
    return UnmaskResponse(response.client_id, response.round, **fields)


def _share_bytes(share_id, value):
    return share_id.to_bytes(shamir.ID_BYTES, "big") + value.to_bytes(shamir.FIELD_BYTES, "big")


HOSTILE_RESPONSES = {
    "truncated share": lambda r: replace_share(r, 0, r.self_seed_shares[0][:-1]),
    "share id 0": lambda r: replace_share(r, 0, _share_bytes(0, 5)),
    "value outside the field": lambda r: replace_share(r, 0, _share_bytes(r.client_id + 1, shamir.PRIME)),
    "another holder's id": lambda r: replace_share(r, 0, shamir.share_to_bytes(r.client_id, 5)),
    "not bytes": lambda r: replace_share(r, 0, 12345),
    "a share of a survivor's key": lambda r: replace_share(r, 0, r.self_seed_shares[0], kind="pair_key_shares"),
    "another round": lambda r: UnmaskResponse(r.client_id, ROUND + 1, r.self_seed_shares, r.pair_key_shares),
    "not a survivor": lambda r: UnmaskResponse(4, r.round, r.self_seed_shares, r.pair_key_shares),
}


@pytest.mark.parametrize("hostile", sorted(HOSTILE_RESPONSES))
def test_a_malformed_unmask_response_is_left_out_and_the_sum_is_still_exact(hostile, caplog):
    # prepare: 6 clients, t = 4, client 4 dropped; client 5's response is replaced by a hostile one
    server, request, responses = honest_round(6, drop={4})
    expected = server.unmask(request, list(responses.values()))
    responses[5] = HOSTILE_RESPONSES[hostile](responses[5])
    # execute
    with caplog.at_level(logging.WARNING, logger="secure_ffm.secagg.masking_protocol"):
        total = server.unmask(request, list(responses.values()))
    # assert: the other four suffice, the hostile holder is named, nothing else changes
    np.testing.assert_array_equal(total, expected)
    assert set(server.left_out) == {responses[5].client_id}
    assert "left out" in caplog.text


@pytest.mark.parametrize("hostile", ["truncated share", "value outside the field", "not bytes"])
def test_too_many_malformed_responses_abort_the_round_with_an_aggregation_error(hostile):
    server, request, responses = honest_round(6, drop={4})
    for u in (0, 1):
        responses[u] = HOSTILE_RESPONSES[hostile](responses[u])
    with pytest.raises(AggregationError, match="only 3 surviving neighbours hold shares"):
        server.unmask(request, list(responses.values()))


def shifted_share(response, owner, kind, threshold, holders):
    """``response`` with its share of ``owner``'s secret moved so that interpolating ``holders`` gives f(0) + 1.

    A holder that knows the public share ids can do this: the rebuilt secret still decodes (one
    byte differs), so without a check the server would silently use a wrong seed or key.
    """
    share_id, value = shamir.share_from_bytes(getattr(response, kind)[owner])
    ids = [h + 1 for h in sorted(holders)[:threshold]]
    lagrange = 1
    for j in ids:
        if j != share_id:
            lagrange = lagrange * j * pow(j - share_id, -1, shamir.PRIME) % shamir.PRIME
    moved = (value + pow(lagrange, -1, shamir.PRIME)) % shamir.PRIME
    return replace_share(response, owner, shamir.share_to_bytes(share_id, moved), kind=kind)


@pytest.mark.parametrize(("owner", "kind"), [(0, "self_seed_shares"), (6, "pair_key_shares")])
def test_a_holder_whose_share_disagrees_with_the_others_is_dropped_and_the_sum_is_exact(owner, kind):
    # prepare: 8 clients, t = 5, client 6 dropped: 7 holders answer, 2 spare; client 1's share (among the first t) is shifted
    server, request, responses = honest_round(8, drop={6})
    expected = server.unmask(request, list(responses.values()))
    responses[1] = shifted_share(responses[1], owner, kind, server.threshold, request.survivors)
    # execute
    total = server.unmask(request, list(responses.values()))
    # assert
    np.testing.assert_array_equal(total, expected)
    assert set(server.left_out) == {1}


def test_a_wrong_self_seed_share_with_no_spare_share_aborts_instead_of_corrupting_the_sum():
    # prepare: 5 clients, t = 3, two dropped: exactly t holders answer, so the shares cannot check each other
    server, request, responses = honest_round(5, drop={3, 4})
    responses[1] = shifted_share(responses[1], 0, "self_seed_shares", server.threshold, request.survivors)
    # execute / assert: the rebuilt seed decodes, but not to the one client 0 committed to
    with pytest.raises(AggregationError, match="does not match its commitment"):
        server.unmask(request, list(responses.values()))


# --------------------------------------------------------------------------- the layout comes from the server, not the first message


def forged(message, layout, size):
    payload = {**message.payload, "layout": layout.to_bytes(), "masked": np.zeros(size, np.uint32)}
    return ClientMessage(message.client_id, message.round, payload, message.num_examples, dict(message.metrics))


FORGED_LAYOUTS = {
    "other names": VectorLayout((("v", (DIM,)), ("b", (3,))), ()),
    "other shapes, same size": VectorLayout((("b", (DIM,)), ("w", (3,))), ()),
    "other size": VectorLayout((("b", (3,)), ("w", (1,))), ()),
    "an extra statistic": VectorLayout((("b", (3,)), ("w", (DIM,))), (("unclipped", (1,)),)),
}


@pytest.mark.parametrize("forgery", sorted(FORGED_LAYOUTS))
def test_a_forged_first_layout_is_rejected_and_every_honest_client_is_aggregated(forgery):
    # prepare: the server fixes the layout from its own model (the global parameters' names and shapes)
    n = 5
    protocol = MaskingProtocol(seed=2)
    protocol.begin_round(ROUND, range(n), weight_bound=10.0, layout=VectorLayout.of_arrays(update_of(0).delta))
    accumulator = protocol.accumulator(ROUND)
    messages = [protocol.encode(update_of(c), weight=10.0) for c in range(n)]
    layout = FORGED_LAYOUTS[forgery]
    # execute: the forged message comes first
    with pytest.raises(AggregationError, match="differs from the one the server fixed for the round"):
        accumulator.add(forged(messages[0], layout, layout.size))
    for message in messages:
        accumulator.add(message)
    result = accumulator.result()
    # assert: all five honest clients are in the sum
    assert result.num_clients == n and result.total_weight == pytest.approx(10.0 * n, abs=1e-3)
    mean_w = np.mean([update_of(c).delta["w"] for c in range(n)], axis=0)
    assert np.max(np.abs(result.mean_delta["w"] - mean_w)) < 1e-3


# --------------------------------------------------------------------------- the configured threshold


@pytest.mark.parametrize(
    ("data", "server", "secure", "reason"),
    [
        ({"num_clients": 5}, {}, {"threshold": 2}, "t=2 is at or below half of the 5 clients"),
        ({"num_clients": 6}, {}, {"threshold": 3}, "t=3 is at or below half of the 6 clients"),
        ({"num_clients": 10}, {"clients_per_round": 6}, {"threshold": 3}, "t=3 is at or below half of the 6 clients"),
        ({"num_clients": 12}, {}, {"threshold": 2, "neighbours": 4}, "t=2 is at or below half of the 5 clients"),
        ({"num_clients": 4}, {}, {"threshold": 5}, "t=5 is more than the 4 clients"),
        ({"num_clients": 10}, {"clients_per_round": 4}, {"threshold": 5}, "t=5 is more than the 4 clients"),
        ({"num_clients": 12}, {}, {"threshold": 6, "neighbours": 4}, "t=6 is more than the 5 clients"),
    ],
)
def test_a_threshold_outside_a_strict_majority_of_a_neighbourhood_is_refused_with_the_reason(data, server, secure, reason):
    with pytest.raises(ConfigError, match=reason) as error:
        config_from_dict({"data": data, "server": server, "secure_aggregation": {"protocol": "masking", **secure}})
    assert error.value.key == "secure_aggregation.threshold"
    why = (
        "lets a server that lies about survivors unmask a single client's update"
        if "below half" in reason
        else "no round could ever unmask"
    )
    assert why in error.value.problem
    assert "use " in error.value.fix and "or 0 for a strict majority" in error.value.fix


@pytest.mark.parametrize(
    ("data", "server", "secure"),
    [
        ({"num_clients": 5}, {}, {"threshold": 3}),
        ({"num_clients": 5}, {}, {"threshold": 5}),
        ({"num_clients": 10}, {"clients_per_round": 6}, {"threshold": 4}),
        ({"num_clients": 12}, {}, {"threshold": 3, "neighbours": 4}),
        ({"num_clients": 5}, {}, {"threshold": 0}),
        ({"num_clients": 5}, {}, {"threshold": 2, "protocol": "none"}),  # masking's threshold is unused
    ],
)
def test_a_strict_majority_threshold_is_accepted(data, server, secure):
    config = config_from_dict({"data": data, "server": server, "secure_aggregation": {"protocol": "masking", **secure}})
    assert config.secure_aggregation.threshold == secure["threshold"]


def test_every_threshold_the_config_accepts_the_protocol_accepts_and_no_other():
    for n, k in [(1, 0), (2, 0), (5, 0), (6, 0), (5, 4), (6, 2), (12, 4), (12, 6)]:
        holders = graph.neighbourhood_size(n, k)
        for t in range(1, holders + 2):
            try:
                config_from_dict(
                    {"data": {"num_clients": n}, "secure_aggregation": {"protocol": "masking", "threshold": t, "neighbours": k}}
                )
            except ConfigError:
                accepted = False
            else:
                accepted = True
            try:
                MaskingProtocol(threshold=t, neighbours=k).begin_round(ROUND, range(n), weight_bound=1.0)
            except ValueError:
                ran = False
            else:
                ran = True
            assert accepted == ran, (n, k, t)


TINY = TINY_RUN.replace("rounds = 2", "rounds = 1") + '[secure_aggregation]\nprotocol = "masking"\n'


@pytest.mark.parametrize("threshold", [3, 1])
def test_train_refuses_a_bad_threshold_before_writing_anything(tmp_path, capsys, threshold):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    out = tmp_path / "run"
    code = main(["train", str(config), "--set", f"secure_aggregation.threshold={threshold}", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "secure_aggregation.threshold" in err
    assert not out.exists()


# --------------------------------------------------------------------------- the unmasking stage ends once its replies suffice


def replies_in_order(responses, order):
    """The replies a deployment's server holds after each arrival, in ``order``."""
    held = {}
    for u in order:
        held[u] = responses[u]
        yield dict(held)


def test_the_unmasking_stage_has_enough_once_t_holders_of_every_secret_answered():
    # prepare: 6 clients, t = 4, client 4 dropped after sharing its keys: its pair key is needed too
    server, request, responses = honest_round(6, drop={4})
    expected = server.unmask(request, list(responses.values()))
    # execute: the server asks after each arrival
    verdicts = [server.responses_suffice(request, held) for held in replies_in_order(responses, request.survivors)]
    # assert: not before t = 4 replies, then at once; the first t replies unmask the same sum
    assert server.threshold == 4
    assert verdicts == [False, False, False, True, True]
    first_t = [responses[u] for u in request.survivors[:4]]
    np.testing.assert_array_equal(server.unmask(request, first_t), expected)


def test_a_wrong_share_keeps_the_unmasking_stage_waiting_until_spare_shares_find_it(caplog, monkeypatch):
    # prepare: 10 clients, t = 6, client 9 dropped; client 1 shifts its share of client 0's self seed
    server, request, responses = honest_round(10, drop={9})
    expected = server.unmask(request, list(responses.values()))
    responses[1] = shifted_share(responses[1], 0, "self_seed_shares", server.threshold, request.survivors)
    rebuilds = []
    rebuild = server._rebuild
    monkeypatch.setattr(server, "_rebuild", lambda request, responses: rebuilds.append(len(responses)) or rebuild(request, responses))
    # execute
    with caplog.at_level(logging.WARNING, logger="secure_ffm.secagg.masking_protocol"):
        verdicts = [server.responses_suffice(request, held) for held in replies_in_order(responses, request.survivors)]
    # assert: t = 6 replies rebuild a seed that fails its commitment, 7 can tell something is wrong but not what, and
    # after two failed rebuilds the next waits for two more replies: 9 find the wrong holder. The trials log nothing
    # and keep nothing
    assert server.threshold == 6
    assert verdicts == [False] * 8 + [True]
    assert rebuilds == [6, 7, 9]
    assert caplog.text == "" and server.left_out == {}
    total = server.unmask(request, list(responses.values()))
    np.testing.assert_array_equal(total, expected)
    assert set(server.left_out) == {1}


def test_a_successful_trial_leaves_the_servers_rebuilt_secrets_as_they_were():
    server, request, responses = honest_round(5)
    assert server.responses_suffice(request, responses)
    assert server.self_seeds == {} and server.dropped_keys == {} and server.left_out == {}
