"""CKKS homomorphic aggregation: key separation, precision against plaintext, hostile input, runs."""

import dataclasses

import numpy as np
import pytest
import tenseal as ts
from cases import cnn_config  # tests/secagg/cases.py (on sys.path under pytest)

from secure_ffm.config import config_from_dict
from secure_ffm.engine.aggregation import PROTOCOLS, AggregationError
from secure_ffm.engine.wire import ClientMessage, ClientUpdate
from secure_ffm.errors import ConfigError
from secure_ffm.privacy.mechanisms import build_mechanism
from secure_ffm.run.simulation import Simulation, prepare_run
from secure_ffm.secagg.ckks import (
    CKKSClient,
    CKKSEncodeError,
    CKKSKeyHolder,
    CKKSParameters,
    CKKSProtocol,
    CKKSServer,
    load_context,
)

DEFAULT = CKKSParameters()  # 8192, [60, 60], 2^40
DEEP = CKKSParameters(8192, (60, 40, 40, 60), 40)  # the default before 2026-12-05: two middle primes aggregation never uses
SMALL = CKKSParameters(4096, (40, 20, 40), 20)


def make_updates(n, round=1, seed=0, scale=0.05):
    rng = np.random.default_rng(seed)
    updates = [
        ClientUpdate(
            c,
            round,
            {"conv.weight": rng.normal(0, scale, (40, 3, 3, 3)).astype(np.float32), "fc.bias": rng.normal(0, scale, 5).astype(np.float32)},
            10,
            metrics={"train_loss": 1.0},
            statistics={"unclipped": np.asarray([float(c % 2)])},
        )
        for c in range(n)
    ]
    weights = [float(w) for w in rng.integers(50, 300, n)]
    return updates, weights


def secure_run(protocol, updates, weights):
    protocol.begin_round(updates[0].round, [u.client_id for u in updates], weight_bound=max(weights))
    accumulator = protocol.accumulator(updates[0].round)
    for update, weight in zip(updates, weights, strict=True):
        accumulator.add(protocol.encode(update, weight=weight))
    return accumulator.result()


def float64_mean(updates, weights):
    total = sum(weights)
    return {k: sum(w * u.delta[k].astype(np.float64) for u, w in zip(updates, weights, strict=True)) / total for k in updates[0].delta}


def max_error(secure, updates, weights):
    reference = float64_mean(updates, weights)
    return max(float(np.max(np.abs(secure.mean_delta[k].astype(np.float64) - reference[k]))) for k in reference)


def assert_close(secure, updates, weights, parameters):
    """Within the stated CKKS bound (on the weighted sum, divided by the total weight) of the float64 mean, plus float32 rounding."""
    n, total = len(updates), sum(weights)
    bound = parameters.error_bound(n) / total
    reference = float64_mean(updates, weights)
    assert secure.num_clients == n
    assert secure.total_weight == pytest.approx(total, abs=parameters.error_bound(n))
    assert set(secure.mean_delta) == set(reference)
    for name, mean in reference.items():
        assert secure.mean_delta[name].dtype == np.float32 and secure.mean_delta[name].shape == mean.shape
        tolerance = 1.01 * bound * (1 + np.abs(mean)) + np.spacing(np.abs(mean).astype(np.float32))
        assert np.all(np.abs(secure.mean_delta[name] - mean) <= tolerance), (name, np.max(np.abs(secure.mean_delta[name] - mean)))
    statistics = {k: sum(w * u.statistics[k] for u, w in zip(updates, weights, strict=True)) / total for k in updates[0].statistics}
    assert set(secure.mean_statistics) == set(statistics)
    for name, mean in statistics.items():
        assert np.max(np.abs(secure.mean_statistics[name] - mean)) <= 1.01 * bound * (1 + np.max(np.abs(mean))), name


def begun_round(n: int, *, key_holder: str = "clients"):
    """A CKKS protocol with round 1 begun for clients 0..n-1, their updates and weights, and the server's accumulator."""
    protocol = CKKSProtocol(parameters=SMALL, key_holder=key_holder)
    updates, weights = make_updates(n)
    protocol.begin_round(1, range(n))
    return protocol, updates, weights, protocol.accumulator(1)


def test_registered_under_ckks_and_built_from_config():
    assert PROTOCOLS.get("ckks") is CKKSProtocol
    config = config_from_dict(
        {
            "secure_aggregation": {
                "protocol": "ckks",
                "ckks_poly_modulus_degree": 4096,
                "ckks_coeff_mod_bit_sizes": [60, 49],
                "ckks_key_holder": "authority",
            }
        }
    )
    protocol = CKKSProtocol.from_config(config.secure_aggregation, seed=0)
    assert protocol.parameters == CKKSParameters(4096, (60, 49), 40) and protocol.key_holder_mode == "authority"
    assert protocol.parameters.headroom_bits == 18 and protocol.parameters.slots == 2048


# --------------------------------------------------------------------------- who holds which key


@pytest.mark.parametrize("key_holder", ["clients", "authority"])
def test_server_holds_no_secret_key_and_cannot_decrypt(key_holder):
    holder = CKKSKeyHolder(SMALL, key_holder=key_holder)
    server = CKKSServer(SMALL, holder.public_context, holder.key_id)
    assert not server.context.is_private() and server.context.is_public()
    assert b"" != holder.public_context and len(holder.public_context) < len(
        holder._context.serialize(save_secret_key=True, save_relin_keys=False, save_galois_keys=False)
    )
    client = CKKSClient(0, SMALL, holder.client_context(), holder.fingerprint)
    assert client.holds_secret_key == (key_holder == "clients")
    ciphertext = client.encrypt(ClientUpdate(0, 1, {"w": np.ones(3, np.float32)}, 1), weight=1.0, round=1, num_participants=1).payload[
        "ciphertext/00000"
    ]
    on_server = ts.ckks_vector_from(server.context, ciphertext)
    with pytest.raises(ValueError, match="secret"):
        on_server.decrypt()
    # the decryptor (the client under "clients", the authority under "authority") reads it
    decryptor = client.decryptor() if key_holder == "clients" else holder.decryptor()
    assert np.allclose(ts.ckks_vector_from(decryptor._context, ciphertext).decrypt(), [1, 1, 1, 1, 1, 1], atol=1e-2)
    if key_holder == "authority":
        with pytest.raises(AggregationError, match="holds no CKKS secret key"):
            client.decryptor()
    with pytest.raises(ValueError, match="must not hold the secret key"):
        CKKSServer(SMALL, holder._context.serialize(save_secret_key=True), holder.key_id)


def test_protocol_gives_the_server_only_the_public_context():
    protocol = CKKSProtocol(parameters=SMALL, key_holder="authority")
    updates, weights = make_updates(3)
    secure_run(protocol, updates, weights)
    assert not protocol.server.context.is_private()
    assert not any(client.holds_secret_key for client in protocol.clients.values())
    assert protocol.decryptor() is protocol.key_holder.decryptor()


# --------------------------------------------------------------------------- precision


@pytest.mark.parametrize("key_holder", ["clients", "authority"])
@pytest.mark.parametrize("parameters", [DEFAULT, DEEP, SMALL], ids=["8192-2^40", "8192-4-primes-2^40", "4096-2^20"])
def test_secure_aggregate_equals_plaintext_within_the_stated_bound(parameters, key_holder):
    updates, weights = make_updates(6, seed=1)
    secure = secure_run(CKKSProtocol(parameters=parameters, key_holder=key_holder), updates, weights)
    assert_close(secure, updates, weights, parameters)
    assert set(secure.timings) == {"setup", "aggregate", "decrypt"}
    assert secure.total_weight == sum(weights)  # integer weights decrypt exactly (snapped within the bound)


def test_uniform_weights_need_the_larger_scale():
    updates, _ = make_updates(8, seed=2)
    uniform = [1.0] * 8
    errors = {}
    for name, parameters in (("default", DEFAULT), ("small", SMALL)):
        secure = secure_run(CKKSProtocol(parameters=parameters, key_holder="authority"), updates, uniform)
        assert_close(secure, updates, uniform, parameters)
        errors[name] = max_error(secure, updates, uniform)
    # measured: about 1e-8 (float32 rounding of the mean) and about 1e-3
    assert errors["default"] < 1e-7
    assert 1e-5 < errors["small"] < SMALL.error_bound(8) / 8


def test_client_checks_the_headroom_so_sums_cannot_wrap():
    tight = CKKSParameters(4096, (30, 30), 20)  # 30-bit data modulus: |sum| < 2^8
    protocol = CKKSProtocol(parameters=tight)
    update = ClientUpdate(0, 1, {"w": np.full(4, 0.5, np.float32)}, 100)
    protocol.begin_round(1, [0, 1, 2, 3])
    with pytest.raises(
        CKKSEncodeError,
        match=r"round 1: client 0 has a weighted value of magnitude 100 beyond the CKKS headroom 2\^8 / 4 participants = 64",
    ):
        protocol.encode(update, weight=100.0)
    protocol.encode(update, weight=10.0)  # 5 * 4 < 256
    with pytest.raises(ValueError, match="no headroom"):
        CKKSParameters(4096, (30, 30), 28)


# --------------------------------------------------------------------------- hostile input


def stranger_client(client_id, parameters, fingerprint=None):
    """A client provisioned by another key holder; ``fingerprint`` overrides the one it sends (a copied one)."""
    other = CKKSKeyHolder(parameters, key_holder="authority")
    return CKKSClient(client_id, parameters, other.client_context(), fingerprint if fingerprint is not None else other.fingerprint)


def test_forged_ciphertexts_are_rejected_naming_the_client_and_the_others_still_sum_correctly():
    # replayed, stale, repeated, non-participant, wrong-layout and non-finite messages: tests/engine/test_protocol_hostile_messages.py
    n = 5
    protocol = CKKSProtocol(parameters=SMALL, key_holder="authority")
    updates, weights = make_updates(n, round=2, seed=5)
    protocol.begin_round(2, range(n))
    accumulator = protocol.accumulator(2)
    messages = [protocol.encode(u, weight=w) for u, w in zip(updates, weights, strict=True)]
    good = messages[1]
    first = "ciphertext/00000"
    # ciphertexts under another key set with the same parameters, under their own fingerprint
    stranger = stranger_client(1, SMALL).encrypt(updates[1], weight=weights[1], round=2, num_participants=n)
    # ciphertexts under other parameters (N=8192), with the round's fingerprint copied
    foreign = stranger_client(1, DEFAULT, good.payload["context"]).encrypt(updates[1], weight=weights[1], round=2, num_participants=n)
    garbage = bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8))
    hostile = [
        (ClientMessage(1, 2, {**good.payload, first: garbage}, 10), "client 1 sent ciphertext 0 that is not a fresh encryption"),
        (
            ClientMessage(1, 2, {**good.payload, first: good.payload[first][:-64]}, 10),
            "client 1 sent ciphertext 0 that is not a fresh encryption",
        ),
        (
            ClientMessage(1, 2, {**good.payload, first: np.frombuffer(good.payload[first], np.uint8)}, 10),
            "client 1 sent ciphertext 0 as ndarray",
        ),
        (stranger, "client 1 sent ciphertexts made under another CKKS key set"),
        (foreign, "client 1 sent ciphertext 0 that is not a fresh encryption: it has 2 polynomials of degree 8192"),
        (ClientMessage(1, 2, {k: v for k, v in good.payload.items() if k != first}, 10), "client 1 sent 0 ciphertexts"),
        (ClientMessage(1, 2, {**good.payload, "ciphertext/00001": good.payload[first]}, 10), "client 1 sent 2 ciphertexts"),
        (ClientMessage(1, 2, {k: v for k, v in good.payload.items() if k != "context"}, 10), "client 1 sent no 'context' field"),
    ]
    for message, expected in hostile:
        with pytest.raises(AggregationError, match=expected):
            accumulator.add(message)
    for message in messages:
        accumulator.add(message)
    assert_close(accumulator.result(), updates, weights, SMALL)


def test_ciphertexts_of_other_parameters_do_not_deserialize():
    holder = CKKSKeyHolder(SMALL, key_holder="authority")
    server = CKKSServer(SMALL, holder.public_context, holder.key_id)
    other = CKKSKeyHolder(CKKSParameters(4096, (30, 30, 40), 20), key_holder="authority")  # same N and slots, another modulus chain
    client = CKKSClient(0, other.parameters, other.client_context(), holder.fingerprint)  # a copied fingerprint
    message = client.encrypt(ClientUpdate(0, 1, {"w": np.ones(3, np.float32)}, 1), weight=1.0, round=1, num_participants=1)
    accumulator = server.accumulator(1, [0])
    with pytest.raises(AggregationError, match="client 0 sent ciphertext 0 that does not deserialize under the round's CKKS context"):
        accumulator.add(message)
    assert accumulator.received == [] and accumulator.sums == []


def test_wrong_scale_or_length_is_rejected_before_anything_is_added():
    protocol, updates, weights, accumulator = begun_round(2)
    good = protocol.encode(updates[1], weight=weights[1])
    length = 40 * 27 + 5 + 1 + 3  # conv.weight, fc.bias, the statistic, the check slots
    context = protocol.clients[1]._context
    rescaled = ts.ckks_vector(context, np.ones(length), scale=2.0**25).serialize()
    short = ts.ckks_vector(context, np.ones(length - 1)).serialize()
    with pytest.raises(AggregationError, match=r"client 1 sent ciphertext 0 at scale 2\^25, expected 2\^20"):
        accumulator.add(ClientMessage(1, 1, {**good.payload, "ciphertext/00000": rescaled}, 10))
    with pytest.raises(AggregationError, match=f"client 1 sent ciphertext 0 of {length - 1} values, expected {length}"):
        accumulator.add(ClientMessage(1, 1, {**good.payload, "ciphertext/00000": short}, 10))
    assert protocol.in_process.server.accumulator.received == []
    accumulator.add(good)
    accumulator.add(protocol.encode(updates[0], weight=weights[0]))
    assert_close(accumulator.result(), updates, weights, SMALL)


def test_a_ciphertext_that_is_not_a_fresh_encryption_is_rejected_before_anything_is_added():
    protocol, updates, weights, accumulator = begun_round(2)
    good = protocol.encode(updates[1], weight=weights[1])
    accumulator.add(protocol.encode(updates[0], weight=weights[0]))
    length = 40 * 27 + 5 + 1 + 3
    context = ts.context_from(protocol.clients[1]._context.serialize(save_secret_key=True))
    context.auto_relin, context.auto_rescale = False, False
    half = ts.ckks_vector(context, np.ones(length), scale=2.0 ** (SMALL.scale_bits / 2))
    product = (half * half).serialize()  # scale 2^20 as expected, but 3 polynomials (never relinearized)
    with pytest.raises(
        AggregationError,
        match=r"client 1 sent ciphertext 0 that is not a fresh encryption: it has 3 polynomials of degree 4096 over 2 primes",
    ):
        accumulator.add(ClientMessage(1, 1, {**good.payload, "ciphertext/00000": product}, 10))
    assert protocol.in_process.server.accumulator.received == [0]
    accumulator.add(good)
    assert_close(accumulator.result(), updates, weights, SMALL)


def test_other_key_ciphertexts_under_a_copied_fingerprint_are_caught_when_decrypting():
    # the server cannot tell (ciphertexts look random under any key); decrypted under the wrong key the
    # check slots come out as noise, so the decryptor refuses the aggregate (without naming the client)
    protocol, updates, weights, accumulator = begun_round(3, key_holder="authority")
    forged = stranger_client(0, SMALL, protocol.key_holder.fingerprint).encrypt(updates[0], weight=weights[0], round=1, num_participants=3)
    accumulator.add(forged)
    for update, weight in zip(updates[1:], weights[1:], strict=True):
        accumulator.add(protocol.encode(update, weight=weight))
    with pytest.raises(AggregationError, match="round 1: the aggregate holds .* client contributions, the server claims 3"):
        accumulator.result()


def test_replay_under_a_forged_round_tag_is_caught_when_decrypting():
    protocol = CKKSProtocol(parameters=SMALL, key_holder="authority")
    old, weights = make_updates(3, round=1)
    protocol.begin_round(1, range(3))
    stale = protocol.encode(old[0], weight=weights[0])
    updates, weights = make_updates(3, round=2, seed=1)
    protocol.begin_round(2, range(3))
    accumulator = protocol.accumulator(2)
    accumulator.add(ClientMessage(0, 2, {**stale.payload, "round": np.asarray([2], np.int64)}, 10))  # the server cannot tell
    for update, weight in zip(updates[1:], weights[1:], strict=True):
        accumulator.add(protocol.encode(update, weight=weight))
    with pytest.raises(
        AggregationError,
        match=r"round 2: the aggregate's round slots sum to (4\.9|5\.0|5\.1), not 3 x 2: it holds a ciphertext of another round",
    ):
        accumulator.result()


def test_a_server_that_miscounts_is_caught_when_decrypting():
    protocol = CKKSProtocol(parameters=SMALL)
    updates, weights = make_updates(3)
    protocol.begin_round(1, range(3))
    accumulator = protocol.accumulator(1)
    for update, weight in zip(updates, weights, strict=True):
        accumulator.add(protocol.encode(update, weight=weight))
    protocol.in_process.server.accumulator.received.append(9)  # claims a fourth client
    with pytest.raises(AggregationError, match=r"the aggregate holds (2\.9|3\.0|3\.1) client contributions, the server claims 4"):
        accumulator.result()


# --------------------------------------------------------------------------- real updates and runs


@pytest.fixture(scope="module")
def prepared_cnn():
    """The data and model are loaded once: runs that differ in ``[secure_aggregation]`` or ``[privacy]`` share them."""
    return prepare_run(cnn_config())


def simulation(prepared_cnn, **sections):
    config = cnn_config(**sections)
    prepared = dataclasses.replace(prepared_cnn, config=config, privacy=build_mechanism(config, prepared_cnn.data))
    return Simulation(prepared)


@pytest.fixture(scope="module")
def cnn_updates(prepared_cnn):
    """Real SmallCNN deltas: 5 SGD steps (momentum 0.9) of each of 4 clients on Fashion-MNIST from the initial model."""
    sim = simulation(prepared_cnn)
    instructions = sim.server.fit_instructions(1, [0, 1, 2, 3])
    updates = [sim.client(c).train(instructions) for c in range(4)]
    return updates, [float(u.num_examples) for u in updates]


@pytest.mark.parametrize(
    ("parameters", "key_holder", "weighting", "limit"),
    [
        (DEFAULT, "authority", "examples", 1e-9),
        (DEFAULT, "clients", "uniform", 1e-8),
        (DEFAULT, "authority", "uniform", 1e-7),
        (SMALL, "authority", "examples", 1e-4),
        (SMALL, "clients", "uniform", 1e-3),
    ],
)
def test_real_cnn_update_matches_the_float64_mean(cnn_updates, parameters, key_holder, weighting, limit):
    updates, example_weights = cnn_updates
    weights = example_weights if weighting == "examples" else [1.0] * len(updates)
    assert max(float(np.max(np.abs(v))) for u in updates for v in u.delta.values()) > 1e-3  # the model did move
    protocol = CKKSProtocol(parameters=parameters, key_holder=key_holder)
    protocol.begin_round(1, range(4))
    accumulator = protocol.accumulator(1)
    for update, weight in zip(updates, weights, strict=True):
        accumulator.add(protocol.encode(update, weight=weight))
    sums = protocol.decryptor().decrypt(protocol.in_process.server.accumulator.result())
    reference = float64_mean(updates, weights)
    error = max(float(np.max(np.abs(sums.delta[k] / sums.total_weight - reference[k]))) for k in reference)
    assert error <= parameters.error_bound(4) / sum(weights) * (1 + max(np.max(np.abs(v)) for v in reference.values()))
    assert error < limit  # the figures stated in secure_ffm/secagg/ckks.py


def test_ckks_run_matches_plaintext_accuracy(prepared_cnn):
    plain = simulation(prepared_cnn)
    plain_summary = plain.run()
    secure = simulation(prepared_cnn, secure_aggregation={"protocol": "ckks"})
    secure_summary = secure.run()
    assert isinstance(secure.protocol, CKKSProtocol)
    assert abs(secure_summary["final"]["test_accuracy"] - plain_summary["final"]["test_accuracy"]) <= 0.01
    for name, value in plain.server.parameters.items():
        assert np.max(np.abs(secure.server.parameters[name] - value)) < 1e-4, name
    row = secure.history[-1]
    assert row["rejected_clients"] == [] and len(row["clients"]) == 4
    assert {"aggregate_setup_seconds", "aggregate_aggregate_seconds", "aggregate_decrypt_seconds"} <= set(row)
    # the round's seconds are accounted for: the server's streamed adds count as aggregation, the set-up apart
    assert row["aggregate_seconds"] >= row["aggregate_aggregate_seconds"] + row["aggregate_decrypt_seconds"]
    assert row["setup_seconds"] >= row["aggregate_setup_seconds"] > 0
    parts = row["setup_seconds"] + row["client_train_seconds"] + row["encode_seconds"] + row["aggregate_seconds"]
    assert 0.8 * row["fit_seconds"] <= parts <= row["fit_seconds"]
    assert row["bytes_up"] > 5 * plain.history[-1]["bytes_up"]  # ciphertexts cost about 20x fp32 at the defaults


def test_dp_fedavg_adaptive_clipping_works_under_ckks(prepared_cnn):
    privacy = {
        "mode": "dp-fedavg",
        "target_epsilon": 100.0,
        "accountant": "rdp",
        "clip_norm": 0.001,
        "noise_placement": "clients",
        "adaptive_clipping": True,
        "clipped_count_stddev": 0.5,
        "clip_learning_rate": 0.5,
        "reproducible_noise": True,
    }
    plain = simulation(prepared_cnn, privacy=privacy)
    plain.run()
    secure = simulation(prepared_cnn, privacy=privacy, secure_aggregation={"protocol": "ckks", "ckks_key_holder": "authority"})
    secure.run()
    # reproducible noise (research opt-in): the two runs share their clients' noise and differ only by CKKS noise (about 1e-9 here)
    for a, b in zip(plain.history, secure.history, strict=True):
        assert b["unclipped_fraction"] == pytest.approx(a["unclipped_fraction"], abs=1e-6)
        assert b["clip_norm"] == pytest.approx(a["clip_norm"], rel=1e-6)
    assert secure.history[1]["clip_norm"] > secure.history[0]["clip_norm"]


def test_a_client_with_a_non_finite_update_is_left_out_of_a_ckks_run(prepared_cnn):
    from secure_ffm.engine.transforms import TransformContext, UpdatePipeline, UpdateTransform

    class PoisonClientOne(UpdateTransform):
        name = "poison"

        def __call__(self, update, context: TransformContext):
            if update.client_id != 1:
                return update
            return update.replace_delta({k: np.full_like(v, np.nan) for k, v in update.delta.items()})

    config = cnn_config(
        server={"rounds": 1},
        client={"local_steps": 1},
        secure_aggregation={"protocol": "ckks", "ckks_poly_modulus_degree": 4096, "ckks_coeff_mod_bit_sizes": [60, 49]},
    )
    run = Simulation(dataclasses.replace(prepared_cnn, config=config), transforms=UpdatePipeline([PoisonClientOne()]))
    summary = run.run()
    row = run.history[0]
    assert row["skipped_clients"] == [1] and row["clients"] == [0, 2, 3]
    assert np.isfinite(summary["final"]["test_loss"])


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("ckks_poly_modulus_degree", 2048),
        ("ckks_coeff_mod_bit_sizes", [60]),
        ("ckks_coeff_mod_bit_sizes", [60, 60, 60]),  # 180 bits > 109 for N=4096
        ("ckks_scale_bits", 58),  # leaves no headroom below the 60-bit data prime of [60, 49]
        ("ckks_scale_bits", 19),
        ("ckks_key_holder", "server"),
    ],
)
def test_bad_ckks_config_values_name_their_key(key, value):
    base = {"protocol": "ckks", "ckks_poly_modulus_degree": 4096, "ckks_coeff_mod_bit_sizes": [60, 49]}
    with pytest.raises(ConfigError, match=f"secure_aggregation.{key}"):
        config_from_dict({"secure_aggregation": {**base, key: value}})


def test_primes_seal_cannot_find_are_a_config_error():
    config = config_from_dict(
        {
            "secure_aggregation": {
                "protocol": "ckks",
                "ckks_poly_modulus_degree": 16384,
                "ckks_coeff_mod_bit_sizes": [20, 20, 20, 20, 20, 20],
                "ckks_scale_bits": 20,
            }
        }
    )
    with pytest.raises(ConfigError, match="secure_aggregation.ckks_coeff_mod_bit_sizes: TenSEAL refuses"):
        CKKSProtocol.from_config(config.secure_aggregation, seed=0)


def test_context_round_trips_through_bytes_without_pickle():
    holder = CKKSKeyHolder(SMALL, key_holder="clients")
    context = load_context(holder.client_context())
    assert context.is_private() and load_context(holder.public_context).is_public()
    config = config_from_dict(
        {"secure_aggregation": {"protocol": "ckks", "ckks_coeff_mod_bit_sizes": [60, 40, 60], "ckks_key_holder": "authority"}}
    )
    import tomllib

    assert config_from_dict(tomllib.loads(config.to_toml())) == config
