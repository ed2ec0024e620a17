"""The pairwise-masking protocol: exactness against plaintext, dropout, the server's view, hostile input, runs."""

import dataclasses
import itertools

import numpy as np
import pytest
from cases import cnn_config  # tests/secagg/cases.py (on sys.path under pytest)
from scipy import stats

from secure_ffm.config import config_from_dict
from secure_ffm.engine.aggregation import PROTOCOLS, AggregationError, PlaintextAggregation
from secure_ffm.engine.wire import ClientMessage, ClientUpdate
from secure_ffm.errors import ConfigError, RoundAbortedError
from secure_ffm.run.simulation import Simulation, prepare_run
from secure_ffm.secagg import keys
from secure_ffm.secagg.masking_protocol import MaskingProtocol, UnmaskRequest
from secure_ffm.secagg.quantization import error_bound, levels_for
from secure_ffm.seeding import SECAGG_ROUNDING, generator

CLIP = 1.0


def make_updates(n, round=1, seed=0):
    rng = np.random.default_rng(seed)
    updates = [
        ClientUpdate(
            c,
            round,
            {"conv.weight": rng.normal(0, 0.1, (8, 3, 3)).astype(np.float32), "fc.bias": rng.normal(0, 0.1, 5).astype(np.float32)},
            10,
            metrics={"train_loss": 1.0},
            statistics={"unclipped": np.asarray(float(c % 2))},
        )
        for c in range(n)
    ]
    weights = [float(w) for w in rng.integers(5, 60, n)]
    return updates, weights


def secure_run(protocol, updates, weights, *, participants=None, drop=()):
    participants = participants or [u.client_id for u in updates]
    protocol.begin_round(updates[0].round, participants, weight_bound=max(weights))
    accumulator = protocol.accumulator(updates[0].round)
    for update, weight in zip(updates, weights, strict=True):
        message = protocol.encode(update, weight=weight)  # dropped clients mask too, then vanish
        if update.client_id not in drop:
            accumulator.add(message)
    return accumulator.result()


def plaintext(updates, weights, drop=()):
    p = PlaintextAggregation()
    kept = [(u, w) for u, w in zip(updates, weights, strict=True) if u.client_id not in drop]
    return p.aggregate(updates[0].round, [p.encode(u, weight=w) for u, w in kept])


def assert_close(secure, reference, *, num_participants, weight_bound):
    bound = error_bound(num_clients=secure.num_clients, clip_range=CLIP * weight_bound, levels=levels_for(num_participants))
    tolerance = 1.01 * bound / reference.total_weight + 2e-7  # plus float32 rounding of the mean
    assert secure.num_clients == reference.num_clients
    assert secure.total_weight == pytest.approx(reference.total_weight, abs=1e-4)
    assert set(secure.mean_delta) == set(reference.mean_delta)
    for name, mean in reference.mean_delta.items():
        assert secure.mean_delta[name].dtype == np.float32 and secure.mean_delta[name].shape == mean.shape
        assert np.max(np.abs(secure.mean_delta[name] - mean)) <= tolerance, name
    for name, mean in reference.mean_statistics.items():
        assert np.max(np.abs(secure.mean_statistics[name] - mean)) <= tolerance, name


def test_registered_under_masking():
    assert PROTOCOLS.get("masking") is MaskingProtocol


def test_secure_aggregate_equals_plaintext_with_unequal_weights():
    updates, weights = make_updates(7)
    secure = secure_run(MaskingProtocol(clip_range=CLIP, seed=1), updates, weights)
    assert_close(secure, plaintext(updates, weights), num_participants=7, weight_bound=max(weights))
    assert set(secure.timings) == {"setup", "unmask", "decode"}


def test_stochastic_rounding_is_reproducible_for_a_seed():
    updates, weights = make_updates(4)
    a = secure_run(MaskingProtocol(seed=5), updates, weights)
    b = secure_run(MaskingProtocol(seed=5), updates, weights)  # fresh keys and masks, same rounding
    assert all(np.array_equal(a.mean_delta[k], b.mean_delta[k]) for k in a.mean_delta)


@pytest.mark.parametrize(
    "drop",
    [
        (0, 1, 2, 3),
        (6, 7, 8, 9),
        *[tuple(s) for s in np.random.default_rng(11).permutation(list(itertools.combinations(range(10), 4)))[:3]],
    ],
)
def test_any_four_of_ten_may_drop_after_masking(drop):
    updates, weights = make_updates(10, seed=2)
    protocol = MaskingProtocol(clip_range=CLIP, threshold=6, seed=3)
    secure = secure_run(protocol, updates, weights, drop=set(drop))
    assert secure.num_clients == 6
    assert_close(secure, plaintext(updates, weights, drop=set(drop)), num_participants=10, weight_bound=max(weights))


def test_five_of_ten_dropping_aborts_with_the_threshold_message():
    updates, weights = make_updates(10, seed=2)
    with pytest.raises(AggregationError, match=r"round 1: only 5 of 10 clients survived, fewer than the threshold t=6; aborting the round"):
        secure_run(MaskingProtocol(threshold=6), updates, weights, drop={1, 3, 5, 7, 9})


def test_default_threshold_is_a_strict_majority_of_the_neighbourhood():
    updates, weights = make_updates(10)
    protocol = MaskingProtocol()
    protocol.begin_round(1, range(10), weight_bound=max(weights))
    assert protocol.in_process.server.threshold == 6


def test_server_sees_uniform_masked_vectors_uncorrelated_with_the_input():
    rng = np.random.default_rng(0)
    updates = [ClientUpdate(c, 1, {"w": rng.normal(0, 0.05, 5000).astype(np.float32)}, 10) for c in range(5)]
    weights = [10.0, 20.0, 30.0, 40.0, 50.0]
    protocol = MaskingProtocol(seed=9)
    protocol.begin_round(1, range(5), weight_bound=50.0)
    for update, weight in zip(updates, weights, strict=True):
        masked = protocol.encode(update, weight=weight).payload["masked"]
        client = protocol.in_process.clients[update.client_id]
        quantized = client.quantize(update, weight=weight, rng=generator(9, SECAGG_ROUNDING, 1, update.client_id))
        assert stats.chisquare(np.bincount(masked.view(np.uint8), minlength=256)).pvalue > 1e-4
        assert stats.chisquare(np.bincount(quantized.view(np.uint8), minlength=256)).pvalue < 1e-6  # the test has power
        r = np.corrcoef(masked.astype(np.float64), quantized.astype(np.float64))[0, 1]
        assert abs(r) < 5 / np.sqrt(masked.size)


def _holds(obj, secret, seen=None):
    """Whether ``secret`` appears anywhere inside ``obj``'s attributes and containers."""
    seen = seen if seen is not None else set()
    if id(obj) in seen:
        return False
    seen.add(id(obj))
    if isinstance(obj, bytes | bytearray):
        return bytes(obj) == secret
    if isinstance(obj, dict):
        return any(_holds(k, secret, seen) or _holds(v, secret, seen) for k, v in obj.items())
    if isinstance(obj, list | tuple | set | frozenset):
        return any(_holds(v, secret, seen) for v in obj)
    if dataclasses.is_dataclass(obj) or hasattr(obj, "__dict__"):
        return any(_holds(v, secret, seen) for v in vars(obj).values())
    return False


def test_server_never_holds_both_secrets_of_a_client():
    updates, weights = make_updates(8)
    protocol = MaskingProtocol(threshold=5)
    drop = {2, 5}
    secure_run(protocol, updates, weights, drop=drop)
    server = protocol.in_process.server
    assert set(server.self_seeds) == set(range(8)) - drop
    assert set(server.dropped_keys) == drop
    for c, client in protocol.in_process.clients.items():
        private = keys.private_bytes(client._pair_key)
        assert _holds(server, private) == (c in drop)  # survivors' pair keys never reach the server
        assert _holds(server, client._self_seed) == (c not in drop)  # dropped clients' self seeds never do


def test_unmask_policy_never_reveals_both_shares_for_one_client():
    updates, weights = make_updates(6)
    protocol = MaskingProtocol(threshold=4)
    protocol.begin_round(1, range(6), weight_bound=max(weights))
    for c, inbox in protocol.in_process.payloads.items():  # the shares routed to each client come with its fit request
        protocol.in_process.clients[c].receive_shares(inbox)
    client = protocol.in_process.clients[0]
    first = client.unmask(UnmaskRequest(1, survivors=(0, 1, 2, 3), dropped=(4, 5)))
    assert set(first.self_seed_shares) == {0, 1, 2, 3} and set(first.pair_key_shares) == {4, 5}
    assert not set(first.self_seed_shares) & set(first.pair_key_shares)
    # a server that now claims 1 dropped (and 4 survived) gets nothing more
    with pytest.raises(AggregationError, match="already revealed"):
        client.unmask(UnmaskRequest(1, survivors=(0, 2, 3, 4), dropped=(1, 5)))
    with pytest.raises(AggregationError, match="inconsistent"):
        protocol.in_process.clients[1].unmask(UnmaskRequest(1, survivors=(0, 1, 2, 3), dropped=(3, 4, 5)))


def test_forged_masked_vectors_are_rejected_and_the_others_still_sum_correctly():
    # replayed, stale, repeated, non-participant, wrong-layout and non-finite messages: tests/engine/test_protocol_hostile_messages.py
    n = 5
    updates, weights = make_updates(n, round=2, seed=5)
    protocol = MaskingProtocol(seed=2)
    protocol.begin_round(2, range(n), weight_bound=max(weights))
    accumulator = protocol.accumulator(2)
    messages = [protocol.encode(u, weight=w) for u, w in zip(updates, weights, strict=True)]
    good = messages[1]
    hostile = [
        (ClientMessage(1, 2, {**good.payload, "masked": good.payload["masked"][:-1]}, 10), "client 1 sent a masked vector of shape"),
        (
            ClientMessage(1, 2, {**good.payload, "masked": good.payload["masked"].astype(np.int64)}, 10),
            "client 1 sent a masked vector of dtype int64",
        ),
    ]
    for message, expected in hostile:
        with pytest.raises(AggregationError, match=expected):
            accumulator.add(message)
    for message in messages:
        accumulator.add(message)
    assert_close(accumulator.result(), plaintext(updates, weights), num_participants=n, weight_bound=max(weights))


def test_secagg_plus_graph_gives_the_same_aggregate_as_the_full_graph():
    updates, weights = make_updates(12, seed=6)
    sparse = MaskingProtocol(neighbours=4, seed=1)
    result = secure_run(sparse, updates, weights, drop={3})
    assert all(len(v) == 4 for v in sparse.in_process.server.neighbours.values())
    full = secure_run(MaskingProtocol(seed=1), updates, weights, drop={3})
    reference = plaintext(updates, weights, drop={3})
    assert_close(result, reference, num_participants=12, weight_bound=max(weights))
    assert_close(full, reference, num_participants=12, weight_bound=max(weights))


# --------------------------------------------------------------------------- runs and config


@pytest.fixture(scope="module")
def prepared_cnn():
    """The data and model are loaded once: runs that differ only in ``[secure_aggregation]`` share them."""
    return {n: prepare_run(cnn_config(data={"num_clients": n})) for n in (4, 8)}


def simulation(prepared_cnn, **sections):
    config = cnn_config(**sections)
    return Simulation(dataclasses.replace(prepared_cnn[config.data.num_clients], config=config))


def test_masked_run_matches_plaintext_accuracy(prepared_cnn):
    plain = simulation(prepared_cnn)
    plain_summary = plain.run()
    masked = simulation(prepared_cnn, secure_aggregation={"protocol": "masking"})
    masked_summary = masked.run()
    assert isinstance(masked.protocol, MaskingProtocol)
    assert abs(masked_summary["final"]["test_accuracy"] - plain_summary["final"]["test_accuracy"]) <= 0.02
    row = masked.history[-1]
    assert row["aborted"] is None and row["dropped_clients"] == [] and "aggregate_unmask_seconds" in row


def test_run_with_dropouts_completes(prepared_cnn):
    run = simulation(
        prepared_cnn,
        data={"num_clients": 8},
        client={"local_steps": 1},
        server={"rounds": 1},
        secure_aggregation={"protocol": "masking", "dropout_rate": 0.25},
    )
    summary = run.run()
    row = run.history[0]
    assert len(row["dropped_clients"]) == 2 and len(row["clients"]) == 6 and row["aborted"] is None
    assert summary["final"]["test_accuracy"] is not None


def test_aborted_round_is_skipped_or_stops_the_run(prepared_cnn):
    sections = {
        "client": {"local_steps": 1},
        "server": {"rounds": 1},
        "secure_aggregation": {"protocol": "masking", "threshold": 4, "dropout_rate": 0.25},
    }
    run = simulation(prepared_cnn, **sections)
    before = {k: v.copy() for k, v in run.server.parameters.items()}
    run.run()
    row = run.history[0]
    assert "only 3 of 4 clients survived" in row["aborted"]
    assert all(np.array_equal(before[k], run.server.parameters[k]) for k in before)
    sections["secure_aggregation"]["on_abort"] = "stop"
    with pytest.raises(RoundAbortedError, match="fewer than the threshold t=4"):
        simulation(prepared_cnn, **sections).run()


class PoisonClients:
    """An update transform that turns the listed clients' deltas into NaN."""

    name = "poison"

    def __init__(self, clients):
        self.clients = set(clients)

    def __call__(self, update, context):
        if update.client_id not in self.clients:
            return update
        return update.replace_delta({k: np.full_like(v, np.nan) for k, v in update.delta.items()})


def test_a_client_with_a_non_finite_update_is_left_out_and_the_others_are_aggregated(prepared_cnn):
    from secure_ffm.engine.transforms import UpdatePipeline

    config = cnn_config(
        data={"num_clients": 8}, client={"local_steps": 1}, server={"rounds": 1}, secure_aggregation={"protocol": "masking"}
    )
    run = Simulation(dataclasses.replace(prepared_cnn[8], config=config), transforms=UpdatePipeline([PoisonClients([1])]))
    summary = run.run()
    row = run.history[0]
    assert row["skipped_clients"] == [1] and row["clients"] == [0, 2, 3, 4, 5, 6, 7] and row["aborted"] is None
    assert all(np.isfinite(v).all() for v in run.server.parameters.values())
    assert np.isfinite(summary["final"]["test_loss"])


def test_a_round_where_every_update_is_non_finite_leaves_the_model_unchanged_and_the_run_goes_on(prepared_cnn):
    from secure_ffm.engine.transforms import UpdatePipeline

    config = cnn_config(client={"local_steps": 1}, server={"rounds": 2}, secure_aggregation={"protocol": "masking"})
    run = Simulation(dataclasses.replace(prepared_cnn[4], config=config), transforms=UpdatePipeline([PoisonClients(range(4))]))
    before = {k: v.copy() for k, v in run.server.parameters.items()}
    run.run()
    assert [r["skipped_clients"] for r in run.history] == [[0, 1, 2, 3], [0, 1, 2, 3]]
    assert all(np.array_equal(before[k], run.server.parameters[k]) for k in before)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("protocol", "maskng"),
        ("clip_range", 0.0),
        ("threshold", -1),
        ("neighbours", 3),
        ("neighbours", -2),
        ("dropout_rate", 1.0),
        ("on_abort", "retry"),
    ],
)
def test_bad_config_values_name_their_key(key, value):
    with pytest.raises(ConfigError, match=f"secure_aggregation.{key}"):
        config_from_dict({"secure_aggregation": {key: value}})


def test_config_round_trips_through_toml():
    import tomllib

    config = config_from_dict({"secure_aggregation": {"protocol": "masking", "neighbours": 4, "dropout_rate": 0.1, "on_abort": "stop"}})
    assert config_from_dict(tomllib.loads(config.to_toml())) == config


def test_each_share_cipher_key_is_agreed_once_a_round(monkeypatch):
    # share_keys encrypts to each neighbour and receive_shares decrypts that neighbour's share with the same key:
    # one X25519 exchange per ordered pair and round, not two
    from secure_ffm.secagg import masking_protocol

    contexts = []
    agree = keys.shared_seed

    def counted(private_key, peer_public_bytes, *, context):
        contexts.append(context)
        return agree(private_key, peer_public_bytes, context=context)

    monkeypatch.setattr(masking_protocol.keys, "shared_seed", counted)
    updates, weights = make_updates(5)
    secure = secure_run(MaskingProtocol(clip_range=CLIP, seed=1), updates, weights)
    assert_close(secure, plaintext(updates, weights), num_participants=5, weight_bound=max(weights))
    share_agreements = [c for c in contexts if c.startswith(masking_protocol._SHARE_LABEL)]
    assert len(share_agreements) == 5 * 4


def test_the_share_cipher_keys_travel_with_the_exported_state_and_end_with_the_round(monkeypatch):
    from secure_ffm.secagg.masking_protocol import MaskingClient

    made = {}
    make = MaskingProtocol.client_round

    def recorded(self, client_id, round):
        made[client_id] = make(self, client_id, round)
        return made[client_id]

    monkeypatch.setattr(MaskingProtocol, "client_round", recorded)
    updates, weights = make_updates(4)
    secure_run(MaskingProtocol(clip_range=CLIP, seed=1), updates, weights)
    state = made[0].export_state()
    assert set(state["cipher_keys"]) == {1, 2, 3}
    assert all(len(key) == 32 for key in state["cipher_keys"].values())
    assert state["cipher_keys"][1] == made[1].export_state()["cipher_keys"][0]  # one key per pair, either direction
    restored = MaskingClient(0)
    restored.restore_state(state)
    assert restored.export_state()["cipher_keys"] == state["cipher_keys"]
    restored.restore_state({k: v for k, v in state.items() if k != "cipher_keys"})  # saved before the keys were kept
    assert restored.export_state()["cipher_keys"] == {}
    with pytest.raises(AggregationError, match="does not load"):
        restored.restore_state({**state, "cipher_keys": {1: b"short"}})
    with pytest.raises(AggregationError, match="already advertised its keys"):  # a half makes one set of keys
        made[0].advertise(state["round"] + 1)
    following = MaskingProtocol(clip_range=CLIP, seed=1).client_round(0, state["round"] + 1)  # the next round's half
    following.advertise(state["round"] + 1)
    assert following.export_state()["cipher_keys"] == {}  # the old cipher keys went with the old share key
