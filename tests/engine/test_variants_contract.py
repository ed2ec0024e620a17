"""The contract every registered aggregation protocol and privacy mechanism keeps, run over the registries.

The cases come from :data:`secure_ffm.variants.PROTOCOLS` and :data:`~secure_ffm.variants.MECHANISMS`,
not from hand-kept lists: a variant registered later is checked by the same tests (update transforms
have theirs in ``tests/defenses/test_defenses_contract.py``, attacks in ``tests/attacks``).
"""

import numpy as np
import pytest

from secure_ffm.config import config_from_dict
from secure_ffm.data import load_federated_data
from secure_ffm.engine.aggregation import AggregationProtocol, VectorLayout
from secure_ffm.engine.training import StandardTrainer
from secure_ffm.engine.wire import ClientUpdate
from secure_ffm.privacy.mechanisms import PrivacyMechanism
from secure_ffm.variants import MECHANISMS, PROTOCOLS

# a tiny federation with a small budget: Opacus' RDP search ends at its largest order
pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")


def updates(count: int) -> list[ClientUpdate]:
    rng = np.random.default_rng(0)
    return [
        ClientUpdate(
            k, 1, {"w": rng.uniform(-0.5, 0.5, (3, 4)).astype(np.float32), "b": rng.uniform(-0.5, 0.5, 4).astype(np.float32)}, 10 + k
        )
        for k in range(count)
    ]


@pytest.mark.parametrize("name", PROTOCOLS.names())
def test_protocol_names_labels_and_aggregates_the_weighted_mean(name):
    cls = PROTOCOLS.get(name)
    assert issubclass(cls, AggregationProtocol) and cls.name == name
    assert isinstance(cls.label, str) and isinstance(cls.hides_updates, bool)
    secure = config_from_dict({"secure_aggregation": {"protocol": name}}).secure_aggregation
    protocol = cls.from_config(secure, seed=0)
    sent = updates(3)
    weights = [float(u.num_examples) for u in sent]
    protocol.begin_round(1, [0, 1, 2], weight_bound=max(weights), layout=VectorLayout.of_arrays(sent[0].delta))
    accumulator = protocol.accumulator(1)
    for update, weight in zip(sent, weights, strict=True):
        message = protocol.encode(update, weight=weight, rng=np.random.default_rng(update.client_id))
        if cls.hides_updates:  # no array of the message is the client's (weighted) update in the clear
            clear = [value.ravel() for value in (*update.delta.values(), *(weight * v for v in update.delta.values()))]
            for array in message.payload.values():
                values = np.asarray(array).ravel() if not isinstance(array, bytes) else np.frombuffer(array, dtype=np.uint8)
                assert not any(values.shape == c.shape and np.allclose(values, c, atol=1e-6) for c in clear)
        accumulator.add(message)
    result = accumulator.result()
    assert result.num_clients == 3 and result.total_weight == pytest.approx(sum(weights), rel=1e-4)
    for key in sent[0].delta:
        expected = sum(w * u.delta[key] for u, w in zip(sent, weights, strict=True)) / sum(weights)
        assert np.max(np.abs(result.mean_delta[key] - expected)) < 1e-2, key


@pytest.fixture(scope="module")
def data():
    raw = {"data": {"dataset": "fashion_mnist", "max_train_examples": 200, "max_test_examples": 50, "num_clients": 2, "partition": "iid"}}
    config = config_from_dict(raw)
    return load_federated_data(config.data, config.run.seed)


@pytest.mark.parametrize("name", MECHANISMS.names())
def test_mechanism_names_labels_plans_and_declares_what_it_replaces(name, data):
    cls = MECHANISMS.get(name)
    assert issubclass(cls, PrivacyMechanism) and cls.name == name
    assert isinstance(cls.label, str) and isinstance(cls.spends_budget, bool) and isinstance(cls.replaces_trainer, bool)
    config = config_from_dict(
        {
            "data": {"dataset": "fashion_mnist", "max_train_examples": 200, "max_test_examples": 50, "num_clients": 2, "partition": "iid"},
            "model": {"arch": "cnn", "finetune": "full"},
            "client": {"batch_size": 8},
            "server": {"rounds": 2},
            "privacy": {"mode": name, "target_epsilon": 4.0},
            # every mechanism must work under secure aggregation; distributed noise needs it
            "secure_aggregation": {"protocol": "masking"},
        }
    )
    mechanism = cls(config, data)
    plan = mechanism.plan()
    assert plan["mechanism"] == name
    assert isinstance(mechanism.format_plan(plan), str) and mechanism.format_plan(plan)
    protections = cls.protections(config.privacy)
    assert ("target_epsilon" in protections) == cls.spends_budget
    base = StandardTrainer(config.client)
    if cls.replaces_trainer:
        assert mechanism.trainer(base) is not base
        assert all(mechanism.client_noise_multiplier(k) > 0 for k in range(data.num_clients))
    else:
        assert mechanism.trainer(base) is base
