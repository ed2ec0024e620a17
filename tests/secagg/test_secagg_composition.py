"""Secure aggregation composed with differential privacy.

DP-FedAvg with ``noise_placement = "clients"``: each client clips, adds its share
N(0, (zC)^2/m) and then masks, so the only thing the server ever holds is a noised sum
(distributed DP). DP-SGD: local training is unchanged, then secure aggregation.
"""

import dataclasses
import math

import numpy as np
import pytest

from secure_ffm.config import config_from_dict
from secure_ffm.data import load_federated_data
from secure_ffm.engine.aggregation import PROTOCOLS, PlaintextAggregation
from secure_ffm.engine.transforms import TransformContext, UpdatePipeline
from secure_ffm.engine.wire import ClientUpdate
from secure_ffm.privacy.dp_fedavg import CentralGaussianNoise
from secure_ffm.privacy.mechanisms import build_mechanism
from secure_ffm.privacy.noise import PrivateRandomness, new_secret
from secure_ffm.run.simulation import Simulation, prepare_run

PROTOCOL_NAMES = [name for name, protocol in PROTOCOLS.items() if protocol.hides_updates]
"""Every registered protocol that hides single updates (read from the registry, not from a hand-kept list)."""
NUM_CLIENTS = 8
SIZE = 20_000


def config(placement, protocol, **extra):
    raw = {
        "run": {"seed": 5},
        "data": {
            "dataset": "fashion_mnist",
            "max_train_examples": 400,
            "max_test_examples": 100,
            "num_clients": NUM_CLIENTS,
            "partition": "iid",
        },
        "model": {"arch": "cnn", "finetune": "full"},
        "client": {"local_steps": 2, "batch_size": 16, "lr": 0.05},
        "server": {"rounds": 3},
        "privacy": {"mode": "dp-fedavg", "target_epsilon": 4.0, "clip_norm": 1.0, "noise_placement": placement},
        "secure_aggregation": {"protocol": protocol, "clip_range": 1.0},
    }
    for section, values in extra.items():
        raw.setdefault(section, {}).update(values)
    return config_from_dict(raw)


def client_updates(seed=0):
    rng = np.random.default_rng(seed)
    return [ClientUpdate(c, 1, {"w": rng.normal(0, 0.02, SIZE).astype(np.float32)}, 50) for c in range(NUM_CLIENTS)]


def aggregate_after_client_transforms(cfg, updates):
    """What the server's accumulator yields when every client runs the mechanism's transforms, then the protocol."""
    mechanism = build_mechanism(cfg, load_federated_data(cfg.data, cfg.run.seed))
    pipeline = UpdatePipeline(mechanism.client_transforms())
    fit_config = {"participants": NUM_CLIENTS, **mechanism.fit_config(1, list(range(NUM_CLIENTS)))}
    protocol = PROTOCOLS.get(cfg.secure_aggregation.protocol).from_config(cfg.secure_aggregation, seed=0)
    mechanism.configure_protocol(protocol)
    protocol.begin_round(1, list(range(NUM_CLIENTS)), weight_bound=1.0)
    accumulator = protocol.accumulator(1)
    for u in updates:
        randomness = PrivateRandomness(new_secret())  # each client's own secret
        context = TransformContext(
            round=1, client_id=u.client_id, rng=randomness.generator(9), global_parameters={}, config=fit_config, randomness=randomness
        )
        accumulator.add(protocol.encode(pipeline(u, context), weight=1.0))
    aggregate = accumulator.result()
    for step in mechanism.decoding_steps():  # the server's own view in real units (discrete shares' granularity)
        aggregate = step(1, aggregate)
    return mechanism, aggregate


def clipped_mean(updates, clip):
    vectors = []
    for u in updates:
        v = u.delta["w"].astype(np.float64)
        vectors.append(v * min(1.0, clip / np.linalg.norm(v)))
    return np.mean(vectors, axis=0)


@pytest.mark.parametrize("protocol", PROTOCOL_NAMES)
def test_distributed_dp_server_only_sees_a_noised_sum(protocol):
    cfg = config("clients", protocol)
    updates = client_updates()
    mechanism, aggregate = aggregate_after_client_transforms(cfg, updates)
    # no server-side noise step: the noise was added by the clients before masking/encryption
    assert not any(isinstance(step, CentralGaussianNoise) for step in mechanism.aggregate_steps())
    residual = aggregate.mean_delta["w"].astype(np.float64) - clipped_mean(updates, 1.0)
    expected_std = mechanism.update_noise_multiplier * 1.0 / NUM_CLIENTS  # N(0, (zC)^2) on the sum, /m on the mean
    if mechanism.discrete is not None:  # discrete shares: any t of them carry the full noise, so all m carry more
        geometry = mechanism.discrete
        expected_std = geometry.share_sigma * geometry.granularity * math.sqrt(NUM_CLIENTS) / NUM_CLIENTS
        assert expected_std >= mechanism.update_noise_multiplier / NUM_CLIENTS * math.sqrt(NUM_CLIENTS / geometry.min_shares)
    assert abs(residual.mean()) < 4 * expected_std / math.sqrt(SIZE)
    assert residual.std() == pytest.approx(expected_std, rel=0.05)


@pytest.mark.parametrize("protocol", PROTOCOL_NAMES)
def test_server_placement_leaves_the_securely_aggregated_sum_unnoised(protocol):
    cfg = config("server", protocol)
    updates = client_updates()
    mechanism, aggregate = aggregate_after_client_transforms(cfg, updates)
    assert any(isinstance(step, CentralGaussianNoise) for step in mechanism.aggregate_steps())
    residual = aggregate.mean_delta["w"].astype(np.float64) - clipped_mean(updates, 1.0)
    assert np.max(np.abs(residual)) < 1e-3  # only the encoding error: the noise comes later, from the server


@pytest.mark.parametrize("protocol", PROTOCOL_NAMES)
def test_dp_fedavg_clients_noise_run_under_secure_aggregation(protocol, tmp_path):
    simulation = Simulation(prepare_run(config("clients", protocol)), out_dir=tmp_path / "run")
    summary = simulation.run()
    assert summary["privacy"]["epsilon"] <= 4.0 + 1e-9
    rows = simulation.history
    assert all(r["aborted"] is None and len(r["clients"]) == NUM_CLIENTS for r in rows)
    assert all(r["bytes_up"] > 0 and r["encode_seconds"] > 0 for r in rows)


@pytest.fixture(scope="module")
def dp_sgd_prepared():
    # reproducible noise (research opt-in) so that both runs draw the same DP-SGD noise and sampling
    privacy = {"mode": "dp-sgd", "target_epsilon": 8.0, "max_grad_norm": 1.0, "reproducible_noise": True}
    cfg = config("server", "none", privacy=privacy, client={"local_steps": 0, "local_epochs": 1})
    return prepare_run(cfg)


@pytest.mark.parametrize("protocol", PROTOCOL_NAMES)
def test_dp_sgd_then_secure_aggregation_matches_plaintext(dp_sgd_prepared, protocol):
    """DP-SGD local training is unchanged by secure aggregation: same ε, same model up to the encoding error."""
    plain = Simulation(dp_sgd_prepared)
    plain_summary = plain.run()
    secure_config = config_from_dict(
        dp_sgd_prepared.config.to_dict(), overrides=[f'secure_aggregation.protocol="{protocol}"', "secure_aggregation.clip_range=2.0"]
    )
    secure = Simulation(dataclasses.replace(dp_sgd_prepared, config=secure_config))
    secure_summary = secure.run()
    assert secure_summary["privacy"]["epsilon"] == pytest.approx(plain_summary["privacy"]["epsilon"], rel=1e-9)
    assert abs(secure_summary["final"]["test_accuracy"] - plain_summary["final"]["test_accuracy"]) <= 0.03
    for name, value in plain.server.parameters.items():
        assert np.max(np.abs(secure.server.parameters[name] - value)) < 1e-2, name


def test_plaintext_is_not_a_secure_protocol():
    assert PlaintextAggregation.name == "none" and not PlaintextAggregation.hides_updates
    assert {"masking", "ckks"} <= set(PROTOCOL_NAMES)
