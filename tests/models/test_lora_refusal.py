"""A CNN refuses LoRA when its config is read, not when the model is built: a sweep validates every point up front and
then let such a point through, wrote sweep.csv and failed at training (an audit of 2026-12-07)."""

import pytest

from secure_ffm.config import config_from_dict
from secure_ffm.errors import ConfigError


@pytest.mark.parametrize("arch", ["cnn", "tanh-cnn"])
def test_lora_on_a_model_without_it_is_refused_with_the_config(arch):
    with pytest.raises(ConfigError, match=f"model.finetune: lora applies to hf-text and vit models, not {arch}"):
        config_from_dict({"data": {"dataset": "digits"}, "model": {"arch": arch, "finetune": "lora"}})


def test_lora_on_a_vit_is_a_valid_config():
    assert config_from_dict({"data": {"dataset": "digits"}, "model": {"arch": "vit", "finetune": "lora"}}).model.finetune == "lora"
