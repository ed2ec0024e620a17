"""A registry is the only place a variant is named (issue 12).

A defense, a privacy mechanism and an aggregation protocol defined and registered in this
file alone go through config validation, ``secure-ffm train``, a tiny sweep (their labels in
``sweep.csv``) and the leakage audit, with no edit anywhere else.
"""

import csv
import dataclasses
import json
from collections.abc import Mapping
from contextlib import ExitStack
from typing import Any

import pytest

from attacks.audit import AuditCase, audit_config
from attacks.base import Budget
from eval.sweep import run_sweep
from secure_ffm.config import config_from_dict
from secure_ffm.engine.aggregation import PlaintextAggregation
from secure_ffm.engine.transforms import TransformContext, UpdateTransform
from secure_ffm.engine.wire import ClientUpdate
from secure_ffm.errors import ConfigError
from secure_ffm.privacy.mechanisms import PrivacyMechanism
from secure_ffm.run.cli import main
from secure_ffm.variants import MECHANISMS, PROTOCOLS, TRANSFORMS


class HalveUpdate(UpdateTransform):
    """Sends half of the update."""

    name = "test-halve"

    @classmethod
    def label(cls, config: Any) -> str:
        return "halved"

    def __call__(self, update: ClientUpdate, context: TransformContext) -> ClientUpdate:
        return dataclasses.replace(update, delta={k: v * 0.5 for k, v in update.delta.items()})


class StampedPrivacy(PrivacyMechanism):
    """Claims a budget and writes a ledger; protects nothing (a test double)."""

    name = "test-dp"
    label = "Test DP"

    def ledger(self, client_states: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
        return {"mechanism": self.name, "epsilon": 0.5, "delta": 1e-5, "accountant": "test", "noise_multiplier": 2.0}

    def plan(self) -> dict[str, Any]:
        return {"mechanism": self.name, "epsilon": 0.5}


class CurtainAggregation(PlaintextAggregation):
    """Plaintext aggregation that declares it hides single updates (the server is trusted not to look)."""

    name = "test-agg"
    label = "Test aggregation"
    hides_updates = True


OVERRIDES = ['privacy.mode="test-dp"', 'secure_aggregation.protocol="test-agg"', 'defense.names=["test-halve"]']


@pytest.fixture(scope="module", autouse=True)
def registered():
    with ExitStack() as stack:
        stack.enter_context(TRANSFORMS.registered("test-halve", HalveUpdate))
        stack.enter_context(MECHANISMS.registered("test-dp", StampedPrivacy))
        stack.enter_context(PROTOCOLS.registered("test-agg", CurtainAggregation))
        yield


def tiny(**sections: dict[str, Any]):
    raw = {
        "data": {"dataset": "fashion_mnist", "max_train_examples": 200, "max_test_examples": 100, "num_clients": 2, "partition": "iid"},
        "model": {"arch": "cnn", "finetune": "full"},
        "client": {"local_steps": 1, "batch_size": 2},
        "server": {"rounds": 1},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return config_from_dict(raw)


def test_config_validation_accepts_the_registered_names_and_suggests_them():
    config = tiny(privacy={"mode": "test-dp"}, secure_aggregation={"protocol": "test-agg"}, defense={"names": ["test-halve"]})
    assert (config.privacy.mode, config.secure_aggregation.protocol, config.defense.names) == ("test-dp", "test-agg", ("test-halve",))
    with pytest.raises(ConfigError, match=r"privacy\.mode: unknown value 'test-dq' \(did you mean 'test-dp'\?\)"):
        tiny(privacy={"mode": "test-dq"})
    with pytest.raises(ConfigError, match=r"secure_aggregation\.protocol: unknown value 'test-ag' \(did you mean 'test-agg'\?\)"):
        tiny(secure_aggregation={"protocol": "test-ag"})


def test_secure_ffm_train_runs_them(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(tiny().to_toml())
    out = tmp_path / "run"
    assert main(["train", str(config), "--out", str(out), "--quiet", *(f"--set={o}" for o in OVERRIDES)]) == 0
    assert json.loads((out / "privacy.json").read_text())["mechanism"] == "test-dp"
    written = (out / "config.toml").read_text()
    assert 'mode = "test-dp"' in written and 'protocol = "test-agg"' in written and 'names = ["test-halve"]' in written


def test_a_sweep_labels_them_in_sweep_csv(tmp_path):
    spec = tmp_path / "sweep.toml"
    grid = ", ".join(f"'{o}'" for o in OVERRIDES)
    spec.write_text(
        f"""
[sweep]
name = "variants"
seeds = [0]
[base.data]
dataset = "fashion_mnist"
max_train_examples = 200
max_test_examples = 100
num_clients = 2
partition = "iid"
[base.model]
arch = "cnn"
finetune = "full"
[base.client]
local_steps = 1
batch_size = 2
[base.server]
rounds = 1
[grid.protection]
"test" = [{grid}]
[attack]
name = "inverting-gradients"
budget_iterations = 2
[audit_case]
client = 0
batch_size = 1
"""
    )
    summary = run_sweep(spec, tmp_path / "out")
    assert summary.failed == []
    with summary.csv_path.open(newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["status"] == "ok"
    assert row["protection"] == "Test DP ε=8 + halved + Test aggregation"
    assert (row["mechanism"], row["defense"], row["secure_aggregation"]) == ("test-dp", "halved", "test-agg")
    assert float(row["epsilon"]) == 0.5


def test_the_audit_observes_them(tmp_path):
    config = tiny(privacy={"mode": "test-dp"}, secure_aggregation={"protocol": "test-agg"}, defense={"names": ["test-halve"]})
    result = audit_config(
        config, case=AuditCase(batch_size=1), attack="inverting-gradients", budget=Budget(max_iterations=2), out_dir=tmp_path
    )
    document = json.loads((tmp_path / "attack.json").read_text())
    assert document["protections"] == {
        "privacy": "test-dp",
        "defenses": ["test-halve"],
        "secure_aggregation": "test-agg",
        "target_epsilon": 8.0,
    }
    assert result.threat_model["observes"] == "aggregate"  # the protocol hides single updates
