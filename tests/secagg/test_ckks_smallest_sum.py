"""CKKS releases no sum of fewer contributions than distributed noise shares are sized for (any client may drop under
CKKS: before 2026-12-07 the shares were sized for every planned participant and a round with a dropout was
decrypted under-noised)."""

import dataclasses
import math

import numpy as np
import pytest
from cases import cnn_config  # tests/secagg/cases.py (on sys.path under pytest)

from secure_ffm.config import config_from_dict
from secure_ffm.engine.aggregation import AggregationError
from secure_ffm.engine.wire import ClientUpdate
from secure_ffm.errors import ConfigError
from secure_ffm.privacy.dp_fedavg import GaussianNoiseShare
from secure_ffm.privacy.mechanisms import build_mechanism
from secure_ffm.privacy.noise import NOISE_SHARE, PrivateRandomness
from secure_ffm.run.deployment import authority_session
from secure_ffm.run.simulation import Simulation, prepare_run
from secure_ffm.secagg.ckks import DECRYPT, CKKSClientRound, CKKSParameters, CKKSProtocol

SMALL = CKKSParameters(4096, (40, 20, 40), 20)
TOO_FEW = r"holds 2 client contributions; the key holder decrypts sums of at least 3"


def updates(n: int) -> list[ClientUpdate]:
    rng = np.random.default_rng(0)
    return [ClientUpdate(c, 1, {"w": rng.normal(0, 0.05, 50).astype(np.float32)}, 10) for c in range(n)]


def encrypted_sum(protocol: CKKSProtocol, arrived: int, planned: int = 3):
    """The server's encrypted aggregate of the first ``arrived`` of ``planned`` participants of round 1, and its round."""
    server_round = protocol.server_round(1, range(planned))
    for update in updates(arrived):
        server_round.add(protocol.client_round(update.client_id, 1).encode(update, weight=1.0, payload=planned))
    return server_round


@pytest.mark.parametrize("key_holder", ["clients", "authority"])
def test_the_server_does_not_ask_for_a_sum_of_fewer_contributions_than_the_shares_are_sized_for(key_holder):
    protocol = CKKSProtocol(parameters=SMALL, key_holder=key_holder)
    protocol.protect_sums_of(3)
    server_round = encrypted_sum(protocol, arrived=2)
    with pytest.raises(AggregationError, match=TOO_FEW):
        next(server_round.finish())


def test_a_decrypting_client_refuses_a_small_sum_a_server_asks_it_for():
    """A server that skips its own check (its config planned no minimum) still gets no decryption of two contributions
    from a client whose config sizes shares for three."""
    protocol = CKKSProtocol(parameters=SMALL)
    encrypted = encrypted_sum(protocol, arrived=2).accumulator.result()
    client = protocol.clients[0]
    with pytest.raises(AggregationError, match=TOO_FEW):
        CKKSClientRound(client, 1, min_sum=3).handle(DECRYPT, encrypted)
    sums = CKKSClientRound(client, 1, min_sum=2).handle(DECRYPT, encrypted)
    assert sums.num_clients == 2


def test_the_key_authority_refuses_a_small_sum():
    protocol = CKKSProtocol(parameters=SMALL, key_holder="authority")
    encrypted = encrypted_sum(protocol, arrived=2).accumulator.result()
    protocol.protect_sums_of(3)
    with pytest.raises(AggregationError, match=TOO_FEW):
        protocol.authority_answer(DECRYPT, encrypted)


def deployable(privacy: dict, **secure):
    return config_from_dict(
        {
            "data": {"dataset": "digits", "num_clients": 6},
            "model": {"arch": "cnn", "finetune": "full"},
            "server": {"rounds": 2, "clients_per_round": 5},
            "privacy": privacy,
            "secure_aggregation": {
                "protocol": "ckks",
                "ckks_key_holder": "authority",
                "ckks_poly_modulus_degree": 4096,
                "ckks_coeff_mod_bit_sizes": [60, 49],
                **secure,
            },
        }
    )


@pytest.mark.parametrize(
    ("privacy", "threshold", "expected"),
    [
        ({"mode": "dp-fedavg", "noise_placement": "clients", "target_epsilon": 5.0}, 0, 5),
        ({"mode": "dp-fedavg", "noise_placement": "clients", "target_epsilon": 5.0}, 4, 4),
        ({"mode": "dp-fedavg", "noise_placement": "server", "target_epsilon": 5.0}, 0, 1),
        ({"mode": "none"}, 2, 2),
    ],
)
def test_a_key_authority_that_builds_no_mechanism_decrypts_no_sum_smaller_than_its_config_plans(privacy, threshold, expected):
    config = deployable(privacy, threshold=threshold)
    key_file = CKKSProtocol.from_config(config.secure_aggregation, seed=0).deal_key_files()["authority"]
    session = authority_session(config, key_file=key_file)
    assert session.protocol.min_sum == expected


def test_a_threshold_above_a_rounds_participants_is_refused_naming_the_key():
    with pytest.raises(ConfigError) as info:
        deployable({"mode": "none"}, threshold=6)
    assert info.value.key == "secure_aggregation.threshold"


DP_FEDAVG_CLIENTS = {
    "mode": "dp-fedavg",
    "target_epsilon": 50.0,
    "noise_placement": "clients",
    "clip_norm": 0.5,
    "accountant": "rdp",
}


@pytest.fixture(scope="module")
def prepared_cnn():
    return prepare_run(cnn_config())


def run(prepared_cnn, **secure):
    config = cnn_config(
        server={"rounds": 2},
        client={"local_steps": 1},
        privacy=DP_FEDAVG_CLIENTS,
        secure_aggregation={"protocol": "ckks", "ckks_poly_modulus_degree": 4096, "ckks_coeff_mod_bit_sizes": [60, 49], **secure},
    )
    simulation = Simulation(dataclasses.replace(prepared_cnn, config=config, privacy=build_mechanism(config, prepared_cnn.data)))
    simulation.run()
    return simulation


def test_dp_fedavg_under_ckks_skips_a_round_with_a_dropout_rather_than_release_it_under_noised(prepared_cnn):
    simulation = run(prepared_cnn, dropout_rate=0.25)  # one of the 4 participants drops every round
    share = next(t for t in simulation.privacy.client_transforms() if isinstance(t, GaussianNoiseShare))
    assert share.min_shares == 4
    assert all(row["aborted"] is not None and "decrypts sums of at least 4" in row["aborted"] for row in simulation.history)


def test_with_a_threshold_dp_fedavg_shares_are_sized_for_it_and_a_round_with_a_dropout_is_released(prepared_cnn):
    simulation = run(prepared_cnn, dropout_rate=0.25, threshold=3)
    share = next(t for t in simulation.privacy.client_transforms() if isinstance(t, GaussianNoiseShare))
    assert share.min_shares == 3
    assert [row["aborted"] for row in simulation.history] == [None, None]
    assert all(len(row["clients"]) == 3 for row in simulation.history)


def test_distributed_dp_sgd_under_ckks_sizes_its_shares_for_the_threshold():
    config = cnn_config(
        privacy={"mode": "distributed-dp-sgd", "target_epsilon": 8.0},
        client={"local_steps": 1},
        secure_aggregation={"protocol": "ckks", "threshold": 3},
    )
    mechanism = build_mechanism(config, prepare_run(config).data)
    assert mechanism.min_shares == 3
    protocol = CKKSProtocol(parameters=SMALL)
    mechanism.configure_protocol(protocol)
    assert protocol.min_sum == 3
    stream_std = mechanism.noise_multiplier * config.privacy.max_grad_norm / math.sqrt(3)
    share = mechanism.noise_share(200_000, stream=PrivateRandomness(b"s" * 32).stream(NOISE_SHARE, 1), dim=200_000)
    assert np.std(share) == pytest.approx(stream_std, rel=0.01)
