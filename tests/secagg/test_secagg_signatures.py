"""Signed keys and the consistency check (``secure_aggregation.signatures``; Bonawitz et al., CCS 2017, the malicious
variant) against a server that lies: it substitutes keys, invents clients, and tells different clients different
survivor lists, played here against the real :class:`MaskingClient` code."""

import dataclasses
import json
import os
import stat

import numpy as np
import pytest

from secure_ffm.config import config_from_dict
from secure_ffm.engine.aggregation import AggregationError
from secure_ffm.engine.wire import ClientUpdate
from secure_ffm.errors import ConfigError
from secure_ffm.secagg import graph, keys, masking, shamir, signing
from secure_ffm.secagg.masking_protocol import (
    ConsistencyCheck,
    MaskingClient,
    MaskingProtocol,
    RoundSetup,
    UnmaskRequest,
    consistency_quorum,
    graph_seed,
    mask_binding,
    mask_graph,
    setup_digest,
)
from secure_ffm.secagg.quantization import levels_for
from tests.secagg.test_secagg_active_server import share_and_mask

ROUND = 1
DIM = 12


def update_of(client_id):
    rng = np.random.default_rng(100 + client_id)
    return ClientUpdate(client_id, ROUND, {"w": rng.normal(0, 0.1, DIM).astype(np.float32)}, 10)


def signed_protocol(n, **options):
    protocol = MaskingProtocol(seed=1, signatures=True, **options)
    protocol.plan_clients(n)
    return protocol


# --------------------------------------------------------------------------- honest rounds


def test_an_honest_signed_round_sums_exactly_what_an_unsigned_one_does():
    n = 6
    sums = []
    for protocol in (MaskingProtocol(seed=1), signed_protocol(n)):
        protocol.begin_round(ROUND, range(n), weight_bound=10.0)
        messages = [protocol.encode(update_of(c), weight=10.0, rng=np.random.default_rng(c)) for c in range(n)]
        sums.append(protocol.aggregate(ROUND, messages).mean_delta["w"])
    np.testing.assert_array_equal(sums[0], sums[1])


def test_a_signed_round_with_a_dropout_still_unmasks_through_the_consistency_check():
    n = 6
    protocol = signed_protocol(n)
    protocol.begin_round(ROUND, range(n), weight_bound=10.0)
    messages = [protocol.encode(update_of(c), weight=10.0, rng=np.random.default_rng(c)) for c in range(n)]
    aggregate = protocol.aggregate(ROUND, messages[1:])  # client 0 dropped after its masked input was made
    assert aggregate.num_clients == n - 1
    assert protocol.in_process.server.dropped_keys.keys() == {0}
    expected = np.mean([update_of(c).delta["w"] for c in range(1, n)], axis=0)
    np.testing.assert_allclose(aggregate.mean_delta["w"], expected, atol=1e-4)


# --------------------------------------------------------------------------- a server that substitutes or invents keys


def setup_of(clients, *, round=ROUND, threshold=None):
    adverts = [client.advertise(round) for client in clients.values()]
    n = len(clients)
    return RoundSetup(
        round,
        {a.client_id: (a.pair_public, a.share_public) for a in adverts},
        graph.full_graph(n),
        threshold or n // 2 + 1,
        weight_bound=10.0,
        clip_range=1.0,
        levels=levels_for(n),
        signatures={a.client_id: a.signature for a in adverts},
    )


def signed_clients(n):
    signatures = signing.Signatures.generate(range(n))
    return {c: MaskingClient(c, signer=signatures.own[c], directory=signatures.directory) for c in range(n)}, signatures


def test_every_client_refuses_a_set_up_in_which_the_server_put_its_own_keys_in_a_clients_place():
    clients, _ = signed_clients(5)
    setup = setup_of(clients)
    own = keys.generate_private_key()
    # the server's keys for client 2: it could then decrypt every share sent to 2 and learn 2's secrets' shares
    forged = dataclasses.replace(setup, public_keys={**setup.public_keys, 2: (setup.public_keys[2][0], keys.public_bytes(own))})
    for c in (0, 1, 3, 4):
        with pytest.raises(AggregationError, match="client 2 carries keys it did not sign"):
            clients[c].share_keys(forged)


def test_every_client_refuses_a_set_up_with_a_client_the_directory_does_not_list():
    clients, _ = signed_clients(4)
    intruder = MaskingClient(9, signer=signing.generate_signing_key(), directory=signing.Signatures.generate([9]).directory)
    setup = setup_of({**clients, 9: intruder})
    with pytest.raises(AggregationError, match="client 9 is not in the key directory"):
        clients[0].share_keys(setup)


def test_a_signature_from_another_round_does_not_sign_this_rounds_keys():
    clients, signatures = signed_clients(4)
    setup = setup_of(clients)
    earlier = MaskingClient(1, signer=signatures.own[1], directory=signatures.directory)
    old = earlier.advertise(ROUND - 1)  # client 1's signature of other keys for round 0
    replayed = dataclasses.replace(setup, signatures={**setup.signatures, 1: old.signature})
    with pytest.raises(AggregationError, match="client 1 carries keys it did not sign"):
        clients[0].share_keys(replayed)


def test_the_server_refuses_an_advertisement_whose_signature_does_not_verify():
    protocol = signed_protocol(4)
    server = protocol.server_round(ROUND, range(4), weight_bound=10.0)
    adverts = [protocol.client_round(c, ROUND).advertise(ROUND) for c in range(4)]
    adverts[3] = dataclasses.replace(adverts[3], signature=bytes(64))
    with pytest.raises(AggregationError, match="client 3's keys carry no valid signature"):
        server.collect_keys(adverts)


# --------------------------------------------------------------------------- a server that lies about survivors


class LyingServer:
    """Runs an honest set-up (a SecAgg+ graph of degree ``k``) with real clients, then tries the lie of
    docs/threat_model.md: ``target``'s self seed from holders told it survived, and each of its neighbours' pair keys
    from holders told that neighbour dropped, which removes every mask from the target's input."""

    def __init__(self, n, k, *, signed):
        self.signatures = signing.Signatures.generate(range(n)) if signed else None
        self.clients = {
            c: MaskingClient(
                c,
                signer=self.signatures.own[c] if signed else None,
                directory=self.signatures.directory if signed else None,
            )
            for c in range(n)
        }
        adverts = [client.advertise(ROUND) for client in self.clients.values()]
        public = {a.client_id: (a.pair_public, a.share_public) for a in adverts}
        neighbours = mask_graph(range(n), k, seed=graph_seed(ROUND, public))  # the graph the clients derive and check
        holders = k + 1
        self.setup = RoundSetup(
            ROUND,
            {a.client_id: (a.pair_public, a.share_public) for a in adverts},
            neighbours,
            holders // 2 + 1,
            weight_bound=10.0,
            clip_range=1.0,
            levels=levels_for(n),
            signatures={a.client_id: a.signature for a in adverts},
        )
        self.inputs, self.masked = share_and_mask(self.clients, self.setup, update_of)
        for client in self.clients.values():
            client._input_sent = True  # noqa: SLF001 - each client sent its masked input

    def ask(self, client, survivors, dropped, signatures):
        """One unmask request to ``client``; its response, or None when it refuses."""
        try:
            return self.clients[client].unmask(UnmaskRequest(ROUND, tuple(survivors), tuple(dropped), signatures))
        except AggregationError:
            return None

    def attack(self, target):
        everyone = sorted(self.clients)
        neighbours = sorted(self.setup.neighbours[target])
        # each other client h is told that the target's neighbours it is adjacent to dropped (and the target survived):
        # it reveals its share of the target's self seed and of those neighbours' pair keys
        told = {c: tuple(sorted(self.setup.neighbours[c] & set(neighbours))) if c != target else () for c in everyone}
        stories = {c: (tuple(x for x in everyone if x not in told[c]), told[c]) for c in everyone}
        signatures = {c: {} for c in everyone}
        if self.signatures is not None:  # the consistency check: each client signs the list it is shown
            signed = {}
            for c in everyone:
                try:
                    signed[c] = (stories[c], self.clients[c].consistency(ConsistencyCheck(ROUND, *stories[c])).signature)
                except AggregationError:
                    continue
            for c in everyone:  # every signature the server has on the list it shows c
                signatures[c] = {s: sig for s, (story, sig) in signed.items() if story == stories[c]}
            for c in signed:  # and no client signs a second list: here, everyone survived
                if stories[c][1]:
                    with pytest.raises(AggregationError, match="already signed another survivor list"):
                        self.clients[c].consistency(ConsistencyCheck(ROUND, tuple(everyone), ()))
        seed_shares, key_shares = {}, {v: {} for v in neighbours}
        for c in everyone:
            survivors, dropped = stories[c]
            response = self.ask(c, survivors, dropped, signatures[c])
            if response is None:
                continue
            if target in response.self_seed_shares:
                share_id, value = shamir.share_from_bytes(response.self_seed_shares[target])
                seed_shares[share_id] = value
            for v in neighbours:
                if v in response.pair_key_shares:
                    share_id, value = shamir.share_from_bytes(response.pair_key_shares[v])
                    key_shares[v][share_id] = value
        t = self.setup.threshold
        if len(seed_shares) < t or any(len(key_shares[v]) < t for v in neighbours):
            return None
        self_seed = shamir.combine(seed_shares, threshold=t)
        pair_seeds = {}
        for v in neighbours:  # each neighbour's pair key gives its pair seed with the target
            private = keys.private_key_from_bytes(shamir.combine(key_shares[v], threshold=t))
            pair_seeds[v] = keys.shared_seed(
                private,
                self.setup.public_keys[target][0],
                context=keys.pair_context(round=ROUND, client_a=v, client_b=target, binding=mask_binding(self.setup, None)),
            )
        masks = masking.mask_vector(
            np.zeros(self.masked[target].shape, np.uint32), client_id=target, pair_seeds=pair_seeds, self_seed=self_seed
        )
        return self.masked[target] - masks


@pytest.mark.parametrize(("n", "k"), [(12, 4)])
def test_the_secagg_plus_lie_unmasks_one_update_without_signatures_and_nothing_with_them(n, k):
    unsigned = LyingServer(n, k, signed=False)
    recovered = unsigned.attack(target=0)
    assert recovered is not None  # the documented attack (docs/threat_model.md): client 0's input, exactly
    np.testing.assert_array_equal(recovered, unsigned.inputs[0])
    for target in range(n):
        assert LyingServer(n, k, signed=True).attack(target) is None


# --------------------------------------------------------------------------- the client's rules of the consistency check


def signed_round(n=5):
    clients, signatures = signed_clients(n)
    setup = setup_of(clients)
    messages = [client.share_keys(setup) for client in clients.values()]
    for c, client in clients.items():
        client.receive_shares([share for m in messages for share in m.shares if share.recipient == c])
        client.masked_input(update_of(c), weight=10.0, rng=np.random.default_rng(c))
    return clients, setup, signatures


def test_a_client_unmasks_for_the_list_it_signed_once_a_quorum_signed_it():
    clients, setup, _ = signed_round(5)
    everyone = tuple(range(5))
    signed = {c: clients[c].consistency(ConsistencyCheck(ROUND, everyone, ())).signature for c in range(5)}
    quorum = consistency_quorum(setup)
    assert quorum == 3
    enough = dict(list(signed.items())[:quorum])
    assert clients[0].unmask(UnmaskRequest(ROUND, everyone, (), enough)).self_seed_shares.keys() == set(everyone)


@pytest.mark.parametrize("problem", ["too-few", "forged", "unsigned-list", "non-survivor-signer"])
def test_a_client_refuses_to_unmask_without_a_quorum_for_the_list_it_signed(problem):
    clients, setup, signatures = signed_round(5)
    everyone = tuple(range(5))
    signed = {c: clients[c].consistency(ConsistencyCheck(ROUND, everyone, ())).signature for c in range(5)}
    survivors, dropped = everyone, ()
    if problem == "too-few":
        signed = {c: signed[c] for c in (0, 1)}
    elif problem == "forged":
        signed = {**{c: signed[c] for c in (0, 1)}, 2: bytes(64), 3: signed[0]}
    elif problem == "unsigned-list":  # the clients signed "everyone survived"; the request says client 4 dropped
        survivors, dropped = (0, 1, 2, 3), (4,)
    else:  # a dropped client's signature does not count towards the survivors' quorum
        other = signing.survivors_message(round=ROUND, survivors=(0, 1), dropped=(2, 3, 4), transcript=setup_digest(setup))
        signed = {0: signed[0], 1: signed[1], 4: signing.sign(signatures.own[4], other)}
        survivors, dropped = (0, 1), (2, 3, 4)
    with pytest.raises(AggregationError, match="refuses to unmask"):
        clients[0].unmask(UnmaskRequest(ROUND, survivors, dropped, signed))


def test_a_client_that_sent_no_masked_input_signs_no_survivor_list():
    clients, _ = signed_clients(4)
    setup = setup_of(clients)
    clients[0].share_keys(setup)
    with pytest.raises(AggregationError, match="sent no masked input"):
        clients[0].consistency(ConsistencyCheck(ROUND, (0, 1, 2, 3), ()))


def test_the_list_a_client_signed_travels_with_its_state_as_on_a_node():
    clients, _, signatures = signed_round(4)
    clients[0].consistency(ConsistencyCheck(ROUND, (0, 1, 2, 3), ()))
    fresh = MaskingClient(0, signer=signatures.own[0], directory=signatures.directory)
    fresh.restore_state(clients[0].export_state())
    with pytest.raises(AggregationError, match="already signed another survivor list"):
        fresh.consistency(ConsistencyCheck(ROUND, (0, 1, 2), (3,)))


def test_the_server_aborts_when_fewer_than_a_quorum_sign_and_asks_only_the_signers():
    n = 5
    protocol = signed_protocol(n)
    protocol.begin_round(ROUND, range(n), weight_bound=10.0)
    server = protocol.in_process.server
    for c in range(n):
        server.add(protocol.encode(update_of(c), weight=10.0, rng=np.random.default_rng(c)))
    stages = server.finish()
    check = next(stages)
    assert check.name == "consistency_check" and set(check.requests) == set(range(n))
    replies = {c: protocol.in_process.clients[c].consistency(check.requests[c]) for c in range(3)}
    replies[3] = dataclasses.replace(protocol.in_process.clients[3].consistency(check.requests[3]), signature=bytes(64))
    from secure_ffm.engine.aggregation import StageReplies

    unmask = stages.send(StageReplies(replies))
    assert unmask.name == "unmask" and set(unmask.requests) == {0, 1, 2}  # 3's signature is bad, 4 did not answer
    request = unmask.requests[0]
    assert set(request.signatures) == {0, 1, 2}
    fewer = signed_protocol(n)
    fewer.begin_round(ROUND, range(n), weight_bound=10.0)
    for c in range(n):
        fewer.in_process.server.add(fewer.encode(update_of(c), weight=10.0, rng=np.random.default_rng(c)))
    stages = fewer.in_process.server.finish()
    check = next(stages)
    with pytest.raises(AggregationError, match="fewer than the 3 a client needs"):
        stages.send(StageReplies({c: fewer.in_process.clients[c].consistency(check.requests[c]) for c in range(2)}))


# --------------------------------------------------------------------------- configuration and key files


def tiny(**secure):
    return config_from_dict(
        {
            "data": {"dataset": "digits", "max_train_examples": 120, "num_clients": 4},
            "model": {"arch": "cnn", "finetune": "full"},
            "secure_aggregation": {"protocol": "masking", **secure},
        }
    )


def test_signatures_with_a_protocol_that_signs_nothing_name_the_key():
    with pytest.raises(ConfigError, match="secure_aggregation.signatures"):
        tiny(protocol="ckks", signatures=True)


def test_a_key_directory_without_signatures_names_the_key():
    with pytest.raises(ConfigError, match="secure_aggregation.peer_keys"):
        tiny(peer_keys="peers.json")


def test_a_deployment_with_signatures_needs_the_key_directory():
    from secure_ffm.run.deployment import check_deployable

    with pytest.raises(ConfigError, match="secure_aggregation.peer_keys"):
        check_deployable(tiny(signatures=True))


def test_written_keys_load_and_a_nodes_key_must_be_the_one_listed(tmp_path):
    directory = signing.write_signing_keys(tmp_path, 3)
    assert stat.S_IMODE(os.stat(tmp_path / "client-1.key").st_mode) == 0o600
    loaded = signing.KeyDirectory.load(tmp_path / "peer_keys.json")
    assert loaded == directory
    protocol = MaskingProtocol(signatures=True, peer_keys=str(tmp_path / "peer_keys.json"))
    protocol.use_signing_key(1, signing.read_signing_key(tmp_path / "client-1.key"))
    with pytest.raises(ConfigError, match="not the one the key directory lists for client 2"):
        protocol.use_signing_key(2, signing.read_signing_key(tmp_path / "client-1.key"))
    with pytest.raises(AggregationError, match="client 0 holds no signing key"):
        protocol.client_round(0, ROUND)
    assert protocol.client_round(1, ROUND).signer is not None


@pytest.mark.parametrize("content", ["[1, 2]", '{"a": "00"}', '{"0": "abcd"}', "not json"])
def test_a_bad_key_directory_names_the_key(tmp_path, content):
    path = tmp_path / "peers.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match="secure_aggregation.peer_keys"):
        signing.KeyDirectory.load(path)


# --------------------------------------------------------------------------- runs


def signed_run_config(workers, signatures):
    from digits_cnn import digits_cnn_toml  # tests/digits_cnn.py (tests/ is on sys.path under pytest)

    return (
        digits_cnn_toml(clients=4, rounds=1, workers=workers)
        + '[privacy]\nmode = "distributed-dp-sgd"\ntarget_epsilon = 8.0\nreproducible_noise = true\n'
        + f'[secure_aggregation]\nprotocol = "masking"\nsignatures = {"true" if signatures else "false"}\n'
    )


def run_rows(tmp_path, name, text):
    from secure_ffm.config import load_config
    from secure_ffm.run.simulation import Simulation, prepare_run, without_timings

    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    Simulation(prepare_run(load_config(path)), out_dir=tmp_path / name).run()
    return [without_timings(json.loads(line)) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_signed_run_gives_the_unsigned_result_bitwise_in_process_and_through_spawned_workers(tmp_path, monkeypatch):
    signed_lists = []
    original = MaskingClient.consistency

    def counting(self, request):
        signed_lists.append((self.client_id, request.round))
        return original(self, request)

    monkeypatch.setattr(MaskingClient, "consistency", counting)
    unsigned = run_rows(tmp_path, "unsigned", signed_run_config(1, False))
    assert not signed_lists
    signed = run_rows(tmp_path, "signed", signed_run_config(1, True))
    assert sorted(signed_lists) == [(c, 1) for c in range(4)]  # every survivor signed the round's list
    monkeypatch.setenv("SECURE_FFM_WORKER_START", "spawn")  # fresh interpreters get the run's keys as a key file
    spawned = run_rows(tmp_path, "spawned", signed_run_config(2, True))
    assert signed == unsigned and spawned == unsigned


def test_the_signing_keys_command_writes_the_directory_and_refuses_to_overwrite_keys(tmp_path, capsys):
    from secure_ffm.run.cli import main

    out = tmp_path / "keys"
    assert main(["signing-keys", str(out), "--clients", "3"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["client-0.key", "client-1.key", "client-2.key", "peer_keys.json"]
    directory = signing.KeyDirectory.load(out / "peer_keys.json")
    assert directory.keys[2] == signing.verify_key_bytes(signing.read_signing_key(out / "client-2.key"))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["signing-keys", str(out), "--clients", "3"]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert main(["signing-keys", str(tmp_path / "none"), "--clients", "0"]) == 2
    assert not (tmp_path / "none").exists()


def test_a_loopback_deployment_makes_the_keys_and_gives_each_node_its_own(tmp_path):
    from secure_ffm.flower.deploy import check_loopback, node_configs

    assert check_loopback(tiny(signatures=True)) is True  # the run's own deployment may not refuse what deploy provides
    assert check_loopback(tiny()) is False
    tables = node_configs(tmp_path / "c.toml", 3, signing_keys=tmp_path / "signing")
    assert [t["signing-key"] for t in tables] == [str(tmp_path / "signing" / f"client-{k}.key") for k in range(3)]


# --------------------------------------------------------------------------- a lying server's replays (review of 2026-12-07)


def test_a_client_makes_one_set_of_keys_a_round_and_takes_one_set_up():
    # asking for keys again reset what the client had signed, so every client signed every list; a second set-up
    # listing fewer participants lowered the quorum from 7 to 3
    clients, _ = signed_clients(5)
    setup = setup_of(clients)
    with pytest.raises(AggregationError, match="already advertised its keys"):
        clients[0].advertise(ROUND)
    clients[0].share_keys(setup)
    smaller = dataclasses.replace(
        setup,
        public_keys={c: setup.public_keys[c] for c in (0, 1, 2)},
        neighbours=graph.full_graph(3),
        threshold=2,
        signatures={c: setup.signatures[c] for c in (0, 1, 2)},
    )
    with pytest.raises(AggregationError, match="already took the round's set-up"):
        clients[0].share_keys(smaller)


def test_survivor_signatures_from_another_run_with_the_same_keys_do_not_count():
    n = 5
    everyone, other = tuple(range(n)), ((0, 1, 2, 3), (4,))
    keys_of_federation = signing.Signatures.generate(range(n))

    def signed_round_with(signatures):
        clients = {c: MaskingClient(c, signer=signatures.own[c], directory=signatures.directory) for c in range(n)}
        setup = setup_of(clients)
        messages = [client.share_keys(setup) for client in clients.values()]
        for c, client in clients.items():
            client.receive_shares([share for m in messages for share in m.shares if share.recipient == c])
            client.masked_input(update_of(c), weight=10.0, rng=np.random.default_rng(c))
        return clients

    earlier = signed_round_with(keys_of_federation)  # an earlier run's round 1: everyone signs "4 dropped"
    harvested = {c: earlier[c].consistency(ConsistencyCheck(ROUND, *other)).signature for c in range(n) if c != 4}
    later = signed_round_with(keys_of_federation)  # this run's round 1: client 0 signs "everyone survived"
    later[0].consistency(ConsistencyCheck(ROUND, everyone, ()))
    later[1].consistency(ConsistencyCheck(ROUND, everyone, ()))
    own = later[2].consistency(ConsistencyCheck(ROUND, *other)).signature
    # client 2 signed "4 dropped" in this round; the harvested signatures of that list cover another set-up's keys
    with pytest.raises(AggregationError, match="1 survivors signed the list"):
        later[2].unmask(UnmaskRequest(ROUND, *other, {**harvested, 2: own}))


# --------------------------------------------------------------------------- distributed noise sized for the quorum


def test_with_signatures_noise_shares_are_sized_for_a_majority_of_the_round_whatever_the_graph():
    from secure_ffm.privacy.distributed import minimum_shares

    def dp_fedavg(**secure):
        return config_from_dict(
            {
                "data": {"dataset": "digits", "max_train_examples": 400, "num_clients": 20},
                "model": {"arch": "cnn", "finetune": "full"},
                "server": {"clients_per_round": 20},
                "privacy": {"mode": "dp-fedavg", "target_epsilon": 8.0, "noise_placement": "clients"},
                "secure_aggregation": {"protocol": "masking", **secure},
            }
        )

    # SecAgg+ without signatures: a neighbourhood's majority (4 of 7), sound only against an honest-but-curious server
    assert minimum_shares(dp_fedavg(neighbours=6)) == 4
    assert minimum_shares(dp_fedavg(neighbours=6, signatures=True)) == 11
    assert minimum_shares(dp_fedavg(signatures=True)) == 11


def test_a_client_unmasks_for_no_fewer_signatures_than_its_own_planned_quorum():
    # a set-up of 5 where the client's own configuration plans rounds of 20: a majority of the 5 is not enough
    clients, setup, signatures = signed_round(5)
    everyone = tuple(range(5))
    signed = {c: clients[c].consistency(ConsistencyCheck(ROUND, everyone, ())).signature for c in range(5)}
    clients[0].min_quorum = 11
    with pytest.raises(AggregationError, match="fewer than the 11 it needs"):
        clients[0].unmask(UnmaskRequest(ROUND, everyone, (), signed))
    protocol = MaskingProtocol(signatures=True)
    protocol.plan_rounds(20)
    protocol.plan_clients(20)
    protocol.protect_sums_of(11)
    assert protocol.client_round(3, ROUND).min_quorum == 11 and protocol.min_sum == 0  # t is not raised for it
