"""``model.finetune`` prompt modes: bad settings are one ConfigError naming the key, before anything is built."""

import pytest

from secure_ffm.config import ModelConfig, config_from_dict
from secure_ffm.errors import ConfigError


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"finetune": "prompt", "prompt_init": "text"}, "model.prompt_init_text"),
        ({"finetune": "prompt", "prompt_init": "text", "prompt_init_text": "   "}, "model.prompt_init_text"),
        ({"finetune": "prompt", "prompt_init_text": "review:"}, "model.prompt_init_text"),
        ({"finetune": "prompt", "prompt_init": "words"}, "model.prompt_init"),
        ({"finetune": "prompt", "prompt_tokens": 0}, "model.prompt_tokens"),
        ({"finetune": "prompt", "prompt_tokens": 100000}, "model.prompt_tokens"),
        ({"finetune": "prefix", "prompt_init": "text", "prompt_init_text": "review:"}, "model.prompt_init"),
        ({"finetune": "prompt", "prompt_encoder_hidden_size": 64}, "model.prompt_encoder_hidden_size"),
        ({"finetune": "p-tuning", "prompt_encoder_hidden_size": -1}, "model.prompt_encoder_hidden_size"),
        ({"finetune": "lora", "prompt_tokens": 10}, "model.prompt_tokens"),
        ({"finetune": "full", "prompt_init": "text"}, "model.prompt_init"),
        ({"finetune": "prompt", "arch": "cnn"}, "model.finetune"),
        ({"finetune": "p-tuning", "arch": "vit"}, "model.finetune"),
        ({"finetune": "prefix", "objective": "mlm"}, "model.finetune"),
        ({"finetune": "promt"}, "model.finetune"),
    ],
)
def test_bad_prompt_settings_are_a_config_error_naming_the_key(settings, key):
    with pytest.raises(ConfigError) as info:
        ModelConfig(**settings)
    assert info.value.key == key


def test_an_unknown_mode_suggests_the_nearest():
    with pytest.raises(ConfigError, match="prompt"):
        ModelConfig(finetune="promt")


def test_a_prompt_mode_on_a_cnn_names_the_models_that_take_it():
    with pytest.raises(ConfigError, match="hf-text"):
        ModelConfig(arch="cnn", finetune="prompt")


def test_exporting_a_prompt_tuned_encoder_is_refused():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"model": {"finetune": "prompt"}, "ffm": {"export": True}})
    assert info.value.key == "ffm.export"


@pytest.mark.parametrize("finetune", ["prompt", "prefix", "p-tuning"])
def test_valid_prompt_settings_load(finetune):
    extra = (
        {"prompt_init": "text", "prompt_init_text": "Is this review positive?"}
        if finetune == "prompt"
        else {"prompt_encoder_hidden_size": 64}
    )
    config = config_from_dict({"model": {"finetune": finetune, "prompt_tokens": 8, **extra}})
    assert config.model.finetune == finetune and config.model.prompt_tokens == 8
