import numpy as np
import pytest

from secure_ffm.config import ServerConfig
from secure_ffm.engine.aggregation import AggregationError, PlaintextAggregation, weighted_mean
from secure_ffm.engine.strategies import STRATEGIES, FedAdam, FedAvg, FedAvgM, FedYogi, build_strategy
from secure_ffm.engine.wire import ClientUpdate


def _updates():
    rng = np.random.default_rng(0)
    return [
        ClientUpdate(
            client_id=k,
            round=1,
            delta={"w": rng.normal(size=(3, 2)).astype(np.float32), "b": rng.normal(size=2).astype(np.float32)},
            num_examples=n,
        )
        for k, n in enumerate([10, 30, 60])
    ]


def test_plaintext_aggregation_is_example_weighted_mean():
    updates = _updates()
    protocol = PlaintextAggregation()
    messages = [protocol.encode(u, weight=float(u.num_examples)) for u in updates]
    aggregate = protocol.aggregate(1, messages)
    expected_w = (10 * updates[0].delta["w"] + 30 * updates[1].delta["w"] + 60 * updates[2].delta["w"]) / 100
    np.testing.assert_allclose(aggregate.mean_delta["w"], expected_w, rtol=1e-6, atol=1e-7)
    assert aggregate.total_weight == 100
    assert aggregate.num_clients == 3


def test_fedavg_equals_weighted_mean_of_client_models():
    updates = _updates()
    global_params = {"w": np.ones((3, 2), np.float32), "b": np.zeros(2, np.float32)}
    mean = weighted_mean([u.delta for u in updates], [u.num_examples for u in updates])
    new = FedAvg(ServerConfig()).apply(1, global_params, mean)
    client_models = [{k: global_params[k] + u.delta[k] for k in global_params} for u in updates]
    expected = sum(u.num_examples * m["w"] for u, m in zip(updates, client_models, strict=True)) / 100
    np.testing.assert_allclose(new["w"], expected, rtol=1e-6, atol=1e-6)


def test_fedadam_matches_hand_computed_step():
    config = ServerConfig(strategy="fedadam", server_lr=0.1, beta_1=0.9, beta_2=0.99, tau=0.01)
    strategy = FedAdam(config)
    x = {"w": np.array([1.0, -2.0], np.float32)}
    delta = {"w": np.array([0.5, -0.1], np.float32)}
    new = strategy.apply(1, x, delta)
    # m = 0.1 * d; v = 0.99 * tau^2 + 0.01 * d^2; x + lr * m / (sqrt(v) + tau)
    d = np.array([0.5, -0.1])
    m = 0.1 * d
    v = 0.99 * 0.01**2 + 0.01 * d**2
    expected = np.array([1.0, -2.0]) + 0.1 * m / (np.sqrt(v) + 0.01)
    np.testing.assert_allclose(new["w"], expected, rtol=1e-6)
    # second step uses the stored moments
    new2 = strategy.apply(2, new, delta)
    m2 = 0.9 * m + 0.1 * d
    v2 = 0.99 * v + 0.01 * d**2
    np.testing.assert_allclose(new2["w"], expected + 0.1 * m2 / (np.sqrt(v2) + 0.01), rtol=1e-6)


def test_fedyogi_second_moment_grows_additively():
    config = ServerConfig(strategy="fedyogi", server_lr=0.1, tau=0.01)
    strategy = FedYogi(config)
    x = {"w": np.zeros(1, np.float32)}
    strategy.apply(1, x, {"w": np.array([1.0], np.float32)})
    # v starts at tau^2 < delta^2, so sign(v - d^2) = -1 and v = tau^2 + (1 - beta_2) d^2
    assert strategy.v["w"][0] == pytest.approx(0.01**2 + 0.01 * 1.0)


def test_adaptive_state_round_trips():
    config = ServerConfig(strategy="fedadam")
    a = FedAdam(config)
    x = {"w": np.ones(4, np.float32)}
    d = {"w": np.full(4, 0.3, np.float32)}
    x1 = a.apply(1, x, d)
    b = FedAdam(config)
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(a.apply(2, x1, d)["w"], b.apply(2, x1, d)["w"])


def test_fedavgm_accumulates_the_deltas_with_momentum():
    strategy = FedAvgM(ServerConfig(strategy="fedavgm", server_momentum=0.5))
    x0 = {"w": np.array([1.0, -2.0], np.float32)}
    d1, d2 = np.array([0.5, -0.1]), np.array([0.2, 0.4])
    x1 = strategy.apply(1, x0, {"w": d1.astype(np.float32)})
    np.testing.assert_allclose(x1["w"], np.array([1.0, -2.0]) + d1, rtol=1e-6)  # v = d1: the first round is FedAvg's
    x2 = strategy.apply(2, x1, {"w": d2.astype(np.float32)})
    np.testing.assert_allclose(x2["w"], x1["w"] + 0.5 * d1 + d2, rtol=1e-6)  # v = 0.5 d1 + d2
    resumed = FedAvgM(ServerConfig(strategy="fedavgm", server_momentum=0.5))
    resumed.load_state_dict(strategy.state_dict())
    np.testing.assert_array_equal(
        resumed.apply(3, x2, {"w": d2.astype(np.float32)})["w"], strategy.apply(3, x2, {"w": d2.astype(np.float32)})["w"]
    )


def test_a_server_momentum_of_one_or_more_names_the_key():
    from secure_ffm.errors import ConfigError

    with pytest.raises(ConfigError, match="server.server_momentum"):
        ServerConfig(strategy="fedavgm", server_momentum=1.0)


def test_fedprox_sends_mu_to_clients():
    strategy = build_strategy(ServerConfig(strategy="fedprox", proximal_mu=0.3))
    assert strategy.configure_fit(1)["proximal_mu"] == 0.3


def test_every_registered_strategy_keeps_names_shapes_and_dtype():
    x = {"a": np.ones((2, 3), np.float32), "b": np.zeros(5, np.float32)}
    d = {"a": np.full((2, 3), 0.1, np.float32), "b": np.full(5, -0.2, np.float32)}
    for name in STRATEGIES:
        new = build_strategy(ServerConfig(strategy=name)).apply(1, x, d)
        assert set(new) == set(x)
        for k in x:
            assert new[k].shape == x[k].shape and new[k].dtype == np.float32
            assert not np.array_equal(new[k], x[k]), name


def test_duplicate_client_is_rejected():
    protocol = PlaintextAggregation()
    u = _updates()[0]
    m = protocol.encode(u, weight=1.0)
    with pytest.raises(AggregationError, match="client 0 sent twice"):
        protocol.aggregate(1, [m, m])


def test_message_from_another_round_is_rejected():
    protocol = PlaintextAggregation()
    m = protocol.encode(_updates()[0], weight=1.0)
    with pytest.raises(AggregationError, match="round 1"):
        protocol.aggregate(2, [m])


def test_bad_message_is_rejected_without_losing_the_others():
    protocol = PlaintextAggregation()
    good = [protocol.encode(u, weight=float(u.num_examples)) for u in _updates()]
    bad_shape = ClientUpdate(client_id=7, round=1, delta={"w": np.zeros((2, 2), np.float32), "b": np.zeros(2, np.float32)}, num_examples=5)
    bad_value = ClientUpdate(
        client_id=8, round=1, delta={"w": np.full((3, 2), np.nan, np.float32), "b": np.zeros(2, np.float32)}, num_examples=5
    )
    accumulator = protocol.accumulator(1)
    accumulator.add(good[0])
    with pytest.raises(AggregationError, match="client 7 sent w of shape"):
        accumulator.add(protocol.encode(bad_shape, weight=5.0))
    with pytest.raises(AggregationError, match="client 8 sent non-finite"):
        accumulator.add(protocol.encode(bad_value, weight=5.0))
    accumulator.add(good[1])
    accumulator.add(good[2])
    np.testing.assert_allclose(accumulator.result().mean_delta["w"], protocol.aggregate(1, good).mean_delta["w"], rtol=1e-6)


def test_a_rounds_own_learning_rate_replaces_the_server_lr_in_that_round_only():
    params = {"w": np.ones(4, np.float32)}
    delta = {"w": np.array([1.0, -2.0, 0.5, 3.0], np.float32)}
    scheduled = FedAdam(ServerConfig(server_lr=0.01))
    scheduled.lr_schedule = lambda round: 0.3 if round == 1 else None
    reference = FedAdam(ServerConfig(server_lr=0.3))
    assert np.array_equal(scheduled.apply(1, params, delta)["w"], reference.apply(1, params, delta)["w"])
    assert scheduled.server_lr(2) == 0.01
