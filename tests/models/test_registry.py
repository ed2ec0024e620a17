"""build_model: architecture lookup, data-kind checks and seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from secure_ffm.config import ModelConfig
from secure_ffm.errors import ConfigError
from secure_ffm.models import MODELS, build_model


def test_builtin_architectures_are_registered() -> None:
    assert {"cnn", "vit", "hf-text"} <= set(MODELS.names())
    assert MODELS.get("cnn").data_kind == "image"
    assert MODELS.get("vit").data_kind == "image"
    assert MODELS.get("hf-text").data_kind == "text"


def test_unknown_arch_suggests_nearest() -> None:
    with pytest.raises(ConfigError, match="did you mean 'cnn'") as raised:
        build_model(ModelConfig(arch="cnnn"), num_classes=10, data_kind="image", seed=0)
    assert raised.value.key == "model.arch"


def test_image_arch_on_text_data_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="hf-text") as raised:
        build_model(ModelConfig(arch="cnn", finetune="full"), num_classes=2, data_kind="text", seed=0)
    assert raised.value.key == "model.arch"


def test_text_arch_on_image_data_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="use 'cnn', 'tanh-cnn' or 'vit'") as raised:
        build_model(ModelConfig(arch="hf-text"), num_classes=10, data_kind="image", seed=0)
    assert raised.value.key == "model.arch"


def test_lora_on_cnn_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="use full or head") as raised:
        build_model(ModelConfig(arch="cnn", finetune="lora"), num_classes=10, data_kind="image", seed=0)
    assert raised.value.key == "model.finetune"


def test_build_leaves_global_rng_untouched() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model(ModelConfig(arch="cnn", finetune="full"), num_classes=10, data_kind="image", seed=7)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("arch", ["cnn", "vit"])
def test_same_seed_same_weights_other_seed_other_weights(arch: str) -> None:
    def weights(seed: int) -> dict[str, np.ndarray]:
        config = ModelConfig(arch=arch, finetune="full")
        return build_model(config, num_classes=10, data_kind="image", seed=seed).get_trainable()

    first, again, other = weights(0), weights(0), weights(1)
    assert all(np.array_equal(first[name], again[name]) for name in first)
    assert not np.array_equal(first["head.weight"], other["head.weight"])
