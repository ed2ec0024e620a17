"""The contract every registered attack keeps, run over :data:`attacks.base.ATTACKS` (not a hand-kept list).

Each attack gets its settings from an empty ``[attack]`` table, refuses an unknown key naming it,
and reconstructs from a real observation of its data kind (the audit's own case builder) within a
tiny budget, returning one input per example and leaving the model's parameters as it found them.
"""

import numpy as np
import pytest
import torch

import attacks  # noqa: F401 - registers the attacks
from attacks.audit import AuditCase, observe_config, prepare_case
from attacks.base import ATTACKS, Attack, AttackSettings, Budget, Reconstruction, build_attack
from secure_ffm.config import config_from_dict
from secure_ffm.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAMES = ATTACKS.names()

CONFIGS = {
    "image": {
        "data": {"dataset": "fashion_mnist", "max_train_examples": 200, "max_test_examples": 50, "num_clients": 2, "partition": "iid"},
        "model": {"arch": "cnn", "finetune": "full"},
    },
    "text": {
        "data": {
            "dataset": "movie_reviews",
            "max_train_examples": 100,
            "max_test_examples": 50,
            "num_clients": 2,
            "partition": "iid",
            "max_length": 12,
        },
        "model": {"arch": "hf-text", "finetune": "full"},
    },
}


@pytest.fixture(scope="module")
def prepared():
    cases = {}

    def get(kind: str):
        if kind not in cases:
            cases[kind] = prepare_case(
                config_from_dict({**CONFIGS[kind], "client": {"batch_size": 1, "local_steps": 1}, "server": {"rounds": 1}})
            )
        return cases[kind]

    return get


@pytest.mark.parametrize("name", NAMES)
def test_registered_under_its_name_with_settings_from_an_empty_table(name):
    cls = ATTACKS.get(name)
    assert issubclass(cls, Attack) and cls.name == name and cls.paper
    assert set(cls.data_kinds) <= {"image", "text"} and cls.data_kinds and cls.observes
    attack = build_attack(name, {})
    assert isinstance(attack.settings, cls.settings_class) and issubclass(cls.settings_class, AttackSettings)
    assert cls.settings_class.from_dict(attack.settings.to_dict()) == attack.settings
    with pytest.raises(ConfigError, match=r"^attack\.no_such_key: unknown key"):
        build_attack(name, {"no_such_key": 1})


@pytest.mark.parametrize("name", NAMES)
def test_reconstructs_one_input_per_example_and_restores_the_model(name, prepared):
    cls = ATTACKS.get(name)
    case = prepared(cls.data_kinds[0])
    observes = "gradient" if "gradient" in cls.observes else cls.observes[0]
    observation, _truth = observe_config(case, AuditCase(batch_size=1, observes=observes))
    before = {k: v.copy() for k, v in observation.model.get_trainable().items()}
    reconstruction = build_attack(name, {}).reconstruct(
        observation, budget=Budget(max_iterations=2), generator=torch.Generator().manual_seed(0)
    )
    assert isinstance(reconstruction, Reconstruction)
    assert reconstruction.inputs.shape[0] == observation.batch_size
    after = observation.model.get_trainable()
    assert all(np.array_equal(after[k], before[k]) for k in before)
