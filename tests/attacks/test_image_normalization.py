"""The dataset's pixel normalization travels to the model, the attacks, the metrics and the pictures."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from image_pixels import all_pixels  # tests/image_pixels.py (on sys.path under pytest)

from attacks import Budget, ThreatModel, build_attack
from attacks.audit import AuditCase, audit_config, prepare_case
from attacks.case import observe
from attacks.metrics_image import score_images, to_pixels
from attacks.pictures import to_pixels as picture_pixels
from attacks.priors import normalization_of, pixel_box
from secure_ffm.config import config_from_dict
from secure_ffm.data.builtin import DIGITS_NORMALIZATION, FASHION_MNIST_NORMALIZATION
from secure_ffm.data.normalization import ImageNormalization
from secure_ffm.errors import MissingResourceError
from secure_ffm.models.vision import UNDECLARED_NORMALIZATION

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def digits_config():  # noqa: ANN201
    return config_from_dict(
        {
            "run": {"seed": 0},
            "data": {"dataset": "digits", "num_clients": 4, "partition": "iid"},
            "model": {"arch": "cnn", "finetune": "full"},
            "client": {"batch_size": 1, "local_steps": 1, "lr": 0.1},
            "server": {"rounds": 1},
        }
    )


@pytest.fixture(scope="module")
def digits_case():  # noqa: ANN201
    try:
        return prepare_case(digits_config())
    except MissingResourceError as error:
        pytest.skip(str(error))


def test_fashion_mnist_figures_are_unchanged() -> None:
    # the box, the un-normalization and the pictures compute exactly what the module constants did
    assert pixel_box() == pixel_box(FASHION_MNIST_NORMALIZATION) == ((0.0 - 0.2860) / 0.3530, (1.0 - 0.2860) / 0.3530)
    x = torch.randn((3, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    assert torch.equal(to_pixels(x), (x.double() * 0.3530 + 0.2860).clamp(0.0, 1.0))
    assert np.array_equal(picture_pixels(x), (x * 0.3530 + 0.2860).clamp(0.0, 1.0)[:, 0].numpy())
    assert UNDECLARED_NORMALIZATION == FASHION_MNIST_NORMALIZATION


def test_the_audit_model_carries_the_datasets_normalization(digits_case) -> None:  # noqa: ANN001
    assert digits_case.model.normalization == DIGITS_NORMALIZATION
    pixels = all_pixels(digits_case.model, digits_case.encoded)
    low, high = pixel_box(normalization_of(digits_case.model))
    assert pixels.min().item() == pytest.approx(low, abs=1e-5) and pixels.max().item() == pytest.approx(high, abs=1e-5)
    assert low != pixel_box(FASHION_MNIST_NORMALIZATION)[0]


def test_an_attack_on_digits_boxes_and_scores_with_the_digits_normalization(digits_case, tmp_path) -> None:  # noqa: ANN001
    result = audit_config(
        digits_case.config,
        case=AuditCase(batch_size=1),
        attack="inverting-gradients",
        budget=Budget(max_iterations=5),
        out_dir=tmp_path,
        prepared=digits_case,
    )
    reconstruction, truth = result.reconstruction, result.truth
    assert reconstruction is not None and truth is not None
    assert reconstruction.normalization == DIGITS_NORMALIZATION  # taken from observation.model
    low, high = pixel_box(DIGITS_NORMALIZATION)
    assert reconstruction.inputs.min().item() >= low - 1e-6 and reconstruction.inputs.max().item() <= high + 1e-6
    scored = score_images(reconstruction, truth)
    assert scored["mean"] == score_images(reconstruction, truth, normalization=DIGITS_NORMALIZATION)["mean"]
    assert scored["mean"]["psnr"] == pytest.approx(result.metrics["psnr"])
    wrong = score_images(dataclasses.replace(reconstruction, normalization=None), truth)  # the Fashion-MNIST statistics
    assert wrong["mean"]["mse"] != pytest.approx(scored["mean"]["mse"])
    assert (tmp_path / "reconstructions.png").is_file()


def test_observation_from_a_hand_built_model_gives_the_attack_its_normalization(fashion_mnist_splits) -> None:  # noqa: ANN001
    from secure_ffm.config import ModelConfig
    from secure_ffm.models import build_model

    other = ImageNormalization(mean=(0.5,), std=(0.25,))
    model = build_model(ModelConfig(arch="cnn", finetune="full"), num_classes=10, data_kind="image", seed=0)
    model.normalization = other  # type: ignore[attr-defined]
    data = fashion_mnist_splits.test.subset(np.arange(2))
    data = dataclasses.replace(data, normalization=None)  # undeclared: the model's normalization is used
    batch = model.make_batch(model.encode(data), np.arange(2))
    assert batch.inputs["pixels"].min().item() == pytest.approx(-2.0)
    observation, truth = observe(model, batch, threat_model=ThreatModel(observes="gradient"))
    reconstruction = build_attack("inverting-gradients", {"init": "rand"}).reconstruct(
        observation, budget=Budget(max_iterations=3), generator=torch.Generator().manual_seed(0)
    )
    assert reconstruction.normalization == other
    assert reconstruction.inputs.min().item() >= -2.0 - 1e-6 and reconstruction.inputs.max().item() <= 2.0 + 1e-6
    assert torch.allclose(to_pixels(truth.inputs["pixels"], normalization=other), torch.from_numpy(data.inputs[:, None] / 255.0), atol=1e-6)


def test_colour_pixel_box_is_per_channel() -> None:
    low, high = pixel_box(ImageNormalization(mean=(0.0, 0.5, 1.0), std=(1.0, 0.5, 0.5)))
    assert isinstance(low, torch.Tensor) and low.shape == (3, 1, 1) and high.shape == (3, 1, 1)
    assert low.flatten().tolist() == [0.0, -1.0, -2.0] and high.flatten().tolist() == [1.0, 1.0, 0.0]
    x = torch.full((2, 3, 4, 4), 5.0).clamp(low, high)
    assert x[:, 0].eq(1.0).all() and x[:, 2].eq(0.0).all()
    colour = ImageNormalization(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert picture_pixels(torch.zeros((2, 3, 4, 4)), colour).shape == (2, 4, 4, 3)
