"""The contract every registered defense keeps, run over the registry (like peft's shared test suite).

Each defense is built from the default ``[defense]`` section and applied to a dense update of a
real SmallCNN with a context holding the model and real Fashion-MNIST examples.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import defenses
from secure_ffm.config import DefenseConfig
from secure_ffm.engine.transforms import TRANSFORMS, UpdateTransform, build_defenses

NAMES = [name for name in TRANSFORMS.names() if TRANSFORMS.get(name).__module__.split(".")[0] == "defenses"]
"""Every transform the ``defenses`` package registered (read from the registry, not from a hand-kept list)."""


def test_the_package_registers_exactly_the_defenses_it_documents():
    assert sorted(NAMES) == sorted(defenses.DEFENSES)


def build(name: str) -> UpdateTransform:
    return TRANSFORMS.get(name).from_config(DefenseConfig(names=(name,)))


@pytest.mark.parametrize("name", NAMES)
def test_built_from_the_defense_section_under_its_name(name):
    transform = build(name)
    assert isinstance(transform, UpdateTransform)
    assert transform.name == name
    assert build_defenses(DefenseConfig(names=(name,))).names() == [name]


@pytest.mark.parametrize("name", NAMES)
def test_keeps_names_shapes_dtypes_and_the_rest_of_the_update(name, cnn, cnn_encoded, random_update, make_context):
    update = random_update(cnn)
    out = build(name)(update, make_context(cnn, cnn_encoded))
    assert list(out.delta) == list(update.delta)
    for key, array in update.delta.items():
        assert isinstance(out.delta[key], np.ndarray)
        assert out.delta[key].shape == array.shape, key
        assert out.delta[key].dtype == array.dtype, key
        assert np.all(np.isfinite(out.delta[key])), key
    assert (out.client_id, out.round, out.num_examples) == (update.client_id, update.round, update.num_examples)
    assert dict(out.metrics) == dict(update.metrics)
    assert set(out.statistics) == set(update.statistics)
    assert all(np.array_equal(out.statistics[k], update.statistics[k]) for k in update.statistics)
    assert any(not np.array_equal(out.delta[k], update.delta[k]) for k in update.delta), "the default settings change nothing"


@pytest.mark.parametrize("name", NAMES)
def test_never_modifies_the_input_update_or_the_model(name, cnn, cnn_encoded, random_update, make_context):
    update = random_update(cnn)
    before = copy.deepcopy(update.delta), copy.deepcopy(dict(update.statistics)), dict(update.metrics)
    weights = {k: p.detach().clone() for k, p in cnn.module.named_parameters()}
    build(name)(update, make_context(cnn, cnn_encoded))
    assert all(np.array_equal(update.delta[k], before[0][k]) for k in before[0])
    assert all(np.array_equal(update.statistics[k], before[1][k]) for k in before[1])
    assert dict(update.metrics) == before[2]
    assert all(torch.equal(p, weights[k]) for k, p in cnn.module.named_parameters())
    assert all(p.grad is None for p in cnn.module.parameters())
    assert cnn.module.training


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_for_a_seeded_generator(name, cnn, cnn_encoded, random_update, make_context):
    update = random_update(cnn)
    a = build(name)(update, make_context(cnn, cnn_encoded, seed=11))
    b = build(name)(update, make_context(cnn, cnn_encoded, seed=11))
    assert all(np.array_equal(a.delta[k], b.delta[k]) for k in update.delta)
