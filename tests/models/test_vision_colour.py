"""cnn and vit on colour images of any size, their export, and starting a run from an export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from image_pixels import all_pixels  # tests/image_pixels.py (on sys.path under pytest)

from secure_ffm.config import DataConfig, ModelConfig
from secure_ffm.data import load_dataset_splits
from secure_ffm.data.base import DatasetSplits
from secure_ffm.data.normalization import ImageNormalization
from secure_ffm.errors import ConfigError
from secure_ffm.models import build_model
from secure_ffm.models.vision import ImageModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def rgb(rgb_folder: Path) -> DatasetSplits:
    """Standardised with the training images' own statistics (``data.image_normalization = "training"``): a test of the
    per-channel arithmetic, where the default constants would leave every channel's mean away from 0."""
    return load_dataset_splits(DataConfig(dataset=str(rgb_folder), image_normalization="training"), seed=0)


def build(arch: str, *, num_classes: int = 3, shape=(3, 8, 8), seed: int = 0, **model) -> ImageModel:
    config = ModelConfig(arch=arch, **{"finetune": "full", "vit_patch_size": 4, **model})
    return build_model(config, num_classes=num_classes, data_kind="image", seed=seed, image_shape=shape)  # type: ignore[return-value]


@pytest.mark.parametrize("arch", ["cnn", "vit"])
def test_colour_images_are_standardised_per_channel_and_classified(arch: str, rgb: DatasetSplits) -> None:
    model = build(arch)
    encoded = model.encode(rgb.train)
    pixels = all_pixels(model, encoded)
    assert pixels.shape == (len(rgb.train), 3, 8, 8)
    assert torch.allclose(pixels.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-3)  # the training images' own statistics
    expected = (rgb.train.inputs[0, 2, 5, 1] / 255 - rgb.normalization.mean[1]) / rgb.normalization.std[1]
    assert pixels[0, 1, 2, 5].item() == pytest.approx(expected, abs=1e-5)  # (H, W, C) -> (C, H, W)
    logits = model.module(**model.make_batch(encoded, np.arange(4)).inputs)
    assert logits.shape == (4, 3)


def test_an_image_model_refuses_images_of_another_shape(rgb: DatasetSplits) -> None:
    with pytest.raises(ValueError, match=r"\(N, 8, 8\)"):
        build("cnn", shape=(1, 8, 8)).encode(rgb.train)


def test_a_vit_patch_that_does_not_divide_the_image_names_the_key() -> None:
    with pytest.raises(ConfigError, match="model.vit_patch_size: 7 does not divide the image size 8x8") as caught:
        build("vit", vit_patch_size=7)
    assert "2, 4, 8" in str(caught.value)


def test_a_cnn_needs_images_of_at_least_4x4() -> None:
    with pytest.raises(ConfigError, match="data.image_size"):
        build("cnn", shape=(3, 2, 2))


# --------------------------------------------------------------------------- export and continuation


def trained(model: ImageModel, data: DatasetSplits) -> ImageModel:
    """A few SGD steps, so that the weights are not the seeded initialisation."""
    encoded = model.encode(data.train)
    optimizer = torch.optim.SGD([p for p in model.module.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):
        batch = model.make_batch(encoded, np.arange(len(encoded)))
        loss = torch.nn.functional.cross_entropy(model.module(**batch.inputs), batch.labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


@pytest.mark.parametrize("arch", ["cnn", "vit"])
def test_an_export_restarts_the_same_weights_and_normalization(arch: str, rgb: DatasetSplits, tmp_path: Path) -> None:
    model = trained(build(arch), rgb)
    model.export_pretrained(tmp_path / "model")
    document = json.loads((tmp_path / "model" / "config.json").read_text())
    assert document["arch"] == arch and document["image_shape"] == [3, 8, 8] and document["num_classes"] == 3
    restarted = build(arch, seed=9, name_or_path=str(tmp_path / "model"))
    for (name, a), (_, b) in zip(model.module.state_dict().items(), restarted.module.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert restarted.normalization == rgb.normalization


def test_a_lora_vit_exports_its_adapters_merged(rgb: DatasetSplits, tmp_path: Path) -> None:
    model = trained(build("vit", finetune="lora", lora_target_modules=("query", "value"), lora_rank=2), rgb)
    model.export_pretrained(tmp_path / "model")
    restarted = build("vit", name_or_path=str(tmp_path / "model"))
    pixels = all_pixels(model, model.encode(rgb.test))
    assert not any("lora_" in name for name in restarted.module.state_dict())
    with torch.no_grad():
        assert torch.allclose(model.module(pixels), restarted.module(all_pixels(restarted, restarted.encode(rgb.test))), atol=1e-5)


def test_a_head_for_another_number_of_classes_is_reinitialised_seeded(rgb: DatasetSplits, tmp_path: Path, caplog) -> None:
    trained(build("vit"), rgb).export_pretrained(tmp_path / "model")
    with caplog.at_level("INFO", logger="secure_ffm.models.vision"):
        five = build("vit", num_classes=5, seed=4, name_or_path=str(tmp_path / "model"))
    assert "head is re-initialised" in caplog.text
    fresh = build("vit", num_classes=5, seed=4)
    exported = build("vit", name_or_path=str(tmp_path / "model"))
    for name, value in five.module.state_dict().items():
        source = fresh if name.startswith("head.") else exported
        assert torch.equal(value, source.module.state_dict()[name]), name


def test_a_pretrained_model_standardises_other_data_with_its_own_normalization(rgb: DatasetSplits, tmp_path: Path) -> None:
    model = build("cnn")
    model.normalization = ImageNormalization(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    model.export_pretrained(tmp_path / "model")
    restarted = build("cnn", name_or_path=str(tmp_path / "model"))
    pixels = all_pixels(restarted, restarted.encode(rgb.train))  # declared otherwise, not refused
    assert pixels[0, 0, 0, 0].item() == pytest.approx((rgb.train.inputs[0, 0, 0, 0] / 255 - 0.5) / 0.25, abs=1e-5)


def test_a_colour_model_that_never_saw_its_data_cannot_be_exported(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="encode its data before exporting"):
        build("cnn").export_pretrained(tmp_path / "model")


@pytest.fixture
def export(rgb: DatasetSplits, tmp_path: Path) -> Path:
    model = build("vit")
    model.encode(rgb.train)
    model.export_pretrained(tmp_path / "model")
    return tmp_path / "model"


@pytest.mark.parametrize(
    ("change", "key", "fragment"),
    [
        ({"arch": "cnn"}, "model.arch", "is a 'vit'"),
        ({"vit_dim": 32}, "model.vit_dim", "set model.vit_dim = 64"),
        ({"shape": (1, 8, 8)}, "data.dataset", "pre-trained on 3-channel images"),
        ({"shape": (3, 16, 16)}, "data.image_size", "set data.image_size = 8"),
    ],
)
def test_an_export_that_does_not_fit_names_the_key_to_change(export: Path, change: dict, key: str, fragment: str) -> None:
    arch = change.pop("arch", "vit")
    with pytest.raises(ConfigError) as caught:
        build(arch, name_or_path=str(export), **change)
    assert caught.value.key == key and fragment in str(caught.value), str(caught.value)


@pytest.mark.parametrize("damage", ["missing", "empty", "foreign", "weights"])
def test_a_folder_that_does_not_load_is_a_config_error_on_name_or_path(export: Path, tmp_path: Path, damage: str) -> None:
    target = export
    if damage == "missing":
        target = tmp_path / "nowhere"
    elif damage == "empty":
        target = tmp_path / "empty"
        target.mkdir()
    elif damage == "foreign":
        (export / "config.json").write_text(json.dumps({"model_type": "bert"}))
    else:
        (export / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(ConfigError) as caught:
        build("vit", name_or_path=str(target))
    assert caught.value.key == "model.name_or_path", str(caught.value)


def test_a_colour_batch_is_bitwise_the_whole_set_standardised_at_once(rgb: DatasetSplits) -> None:
    model = build("cnn")
    encoded = model.encode(rgb.train)
    channels_first = torch.from_numpy(np.ascontiguousarray(rgb.train.inputs.transpose(0, 3, 1, 2), dtype=np.float32)).div_(255.0)
    whole = model.normalization.normalize(channels_first, inplace=True)
    indices = np.array([1, 0, 4])
    assert torch.equal(model.make_batch(encoded, indices).inputs["pixels"], whole[torch.from_numpy(indices)])
