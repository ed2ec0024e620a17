"""Update size accounting."""

from __future__ import annotations

import numpy as np

from secure_ffm.config import ModelConfig
from secure_ffm.models import build_model, update_nbytes, update_parameter_count


def test_update_size_of_named_arrays() -> None:
    arrays = {"a": np.zeros((3, 4), dtype=np.float32), "b": np.zeros(5, dtype=np.float64)}
    assert update_parameter_count(arrays) == 17
    assert update_nbytes(arrays) == 12 * 4 + 5 * 8


def test_update_size_matches_trainable_parameters() -> None:
    model = build_model(ModelConfig(arch="cnn", finetune="head"), num_classes=10, data_kind="image", seed=0)
    update = model.get_trainable()
    assert update_parameter_count(update) == model.trainable_parameter_count() == 128 * 10 + 10
    assert update_nbytes(update) == 4 * model.trainable_parameter_count()
