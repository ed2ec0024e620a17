"""The cnn, tanh-cnn and vit image models on real Fashion-MNIST images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from image_pixels import all_pixels  # tests/image_pixels.py (on sys.path under pytest)
from opacus import GradSampleModule

from secure_ffm.config import DataConfig, ModelConfig
from secure_ffm.data import load_dataset_splits
from secure_ffm.data.base import LabeledData
from secure_ffm.data.builtin import DIGITS_NORMALIZATION, FASHION_MNIST_NORMALIZATION
from secure_ffm.data.normalization import ImageNormalization
from secure_ffm.errors import ConfigError, MissingResourceError
from secure_ffm.models import FederatedModel, build_model
from secure_ffm.models.vision import ImageModel, SmallCNN

ARCHS = ["cnn", "tanh-cnn", "vit"]


def image_model(arch: str, finetune: str = "full", seed: int = 0) -> FederatedModel:
    return build_model(ModelConfig(arch=arch, finetune=finetune), num_classes=10, data_kind="image", seed=seed)


def mean_loss(model: FederatedModel, encoded: object) -> float:
    with torch.no_grad():
        losses = [F.cross_entropy(model.module(**b.inputs), b.labels, reduction="sum") for b in model.batches(encoded, 256)]  # type: ignore[arg-type]
    return float(sum(losses)) / len(encoded)  # type: ignore[arg-type]


def test_encode_normalizes_to_one_channel_float(fashion_512: LabeledData) -> None:
    model = image_model("cnn")
    encoded = model.encode(fashion_512)
    assert encoded.tensors["pixels"].dtype == torch.uint8  # stored as codes, standardised per batch
    pixels = all_pixels(model, encoded)
    assert pixels.shape == (512, 1, 28, 28) and pixels.dtype == torch.float32
    (mean,), (std,) = FASHION_MNIST_NORMALIZATION.mean, FASHION_MNIST_NORMALIZATION.std
    assert pixels.min().item() == pytest.approx(-mean / std, abs=1e-5)
    assert pixels.mean().item() == pytest.approx(0.0, abs=0.1)  # standardised with the dataset statistics


def test_encode_keeps_an_owned_subset_without_a_copy_and_copies_a_file_map(tmp_path, fashion_512: LabeledData) -> None:
    model = image_model("cnn")
    owned = fashion_512.subset(np.arange(64))
    assert owned.inputs.flags.owndata  # what a subset of the mapped training file is
    assert np.shares_memory(model.encode(owned).tensors["pixels"].numpy(), owned.inputs)
    path = tmp_path / "images.npy"
    np.save(path, np.asarray(owned.inputs))
    mapped = LabeledData(kind="image", inputs=np.load(path, mmap_mode="r"), labels=owned.labels, normalization=owned.normalization)
    codes = model.encode(mapped).tensors["pixels"]
    assert not np.shares_memory(codes.numpy(), mapped.inputs) and torch.equal(codes, model.encode(owned).tensors["pixels"])


def test_encode_rejects_text() -> None:
    text = LabeledData(kind="text", inputs=("a", "b"), labels=np.array([0, 1]))
    with pytest.raises(ValueError, match="image model"):
        image_model("cnn").encode(text)


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_gives_one_logit_row_per_image(arch: str, fashion_512: LabeledData) -> None:
    model = image_model(arch)
    batch = model.make_batch(model.encode(fashion_512), np.arange(5))
    assert batch.inputs["pixels"].shape == (5, 1, 28, 28)
    assert model.module(**batch.inputs).shape == (5, 10)
    assert torch.equal(batch.labels, torch.from_numpy(fashion_512.labels[:5]))


@pytest.mark.parametrize("arch", ARCHS)
def test_sgd_steps_lower_training_loss(arch: str, fashion_512: LabeledData) -> None:
    model = image_model(arch)
    encoded = model.encode(fashion_512)
    before = mean_loss(model, encoded)
    optimizer = torch.optim.SGD([p for _, p in model.trainable_named_parameters()], lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        for batch in model.batches(encoded, 64, generator=generator):
            optimizer.zero_grad()
            F.cross_entropy(model.module(**batch.inputs), batch.labels).backward()
            optimizer.step()
    assert mean_loss(model, encoded) < 0.8 * before


@pytest.mark.parametrize("arch", ARCHS)
def test_head_mode_changes_only_the_last_layer(arch: str, fashion_512: LabeledData) -> None:
    model = image_model(arch, "head")
    assert model.trainable_names() == ("head.weight", "head.bias")
    before = {name: p.detach().clone() for name, p in model.module.named_parameters()}
    optimizer = torch.optim.SGD([p for _, p in model.trainable_named_parameters()], lr=0.1)
    batch = model.make_batch(model.encode(fashion_512), np.arange(64))
    F.cross_entropy(model.module(**batch.inputs), batch.labels).backward()
    optimizer.step()
    changed = {name for name, p in model.module.named_parameters() if not torch.equal(p, before[name])}
    assert changed == {"head.weight", "head.bias"}


@pytest.mark.parametrize("arch", ARCHS)
def test_get_set_trainable_round_trip(arch: str, fashion_512: LabeledData) -> None:
    source, target = image_model(arch, seed=1), image_model(arch, seed=2)
    target.set_trainable(source.get_trainable())
    batch = source.make_batch(source.encode(fashion_512), np.arange(8))
    torch.testing.assert_close(target.module(**batch.inputs), source.module(**batch.inputs), rtol=0, atol=0)


def test_the_tanh_cnn_is_small_and_its_activations_are_bounded(fashion_512: LabeledData) -> None:
    model = image_model("tanh-cnn")
    assert model.total_parameter_count() == 26_010  # Papernot et al.'s 16/32-channel model with a 10-class head
    batch = model.make_batch(model.encode(fashion_512), np.arange(16))
    seen: list[torch.Tensor] = []
    hook = model.module.head.register_forward_pre_hook(lambda _module, inputs: seen.append(inputs[0]))
    model.module(pixels=100 * batch.inputs["pixels"])  # far outside the data's range: ReLU features would grow with it
    hook.remove()
    assert seen[0].shape == (16, 32) and float(seen[0].abs().max()) <= 1.0


def test_the_tanh_cnn_needs_images_of_at_least_12x12() -> None:
    with pytest.raises(ConfigError, match="data.image_size: the tanh-cnn reads images of at least 12x12"):
        build_model(ModelConfig(arch="tanh-cnn", finetune="full"), num_classes=3, data_kind="image", seed=0, image_shape=(1, 8, 8))


def test_vit_lora_trains_attention_adapters_and_head() -> None:
    model = image_model("vit", "lora")
    names = model.trainable_names()
    assert names and all("lora_" in name or name.startswith("head.") for name in names)
    assert any(".attention.query.lora_A" in name for name in names)
    assert model.trainable_parameter_count() < 0.1 * model.total_parameter_count()


@pytest.mark.filterwarnings("ignore:Full backward hook")
@pytest.mark.parametrize(("arch", "finetune"), [("cnn", "full"), ("tanh-cnn", "full"), ("vit", "full"), ("vit", "lora")])
def test_opacus_computes_per_sample_gradients(arch: str, finetune: str, fashion_512: LabeledData) -> None:
    model = image_model(arch, finetune)
    batch = model.make_batch(model.encode(fashion_512), np.arange(4))
    wrapped = GradSampleModule(model.module)
    F.cross_entropy(wrapped(**batch.inputs), batch.labels).backward()
    for name, param in model.trainable_named_parameters():
        assert param.grad_sample is not None, name
        assert param.grad_sample.shape == (4, *param.shape), name


# --------------------------------------------------------------------------- normalization


def digits_train() -> LabeledData:
    try:
        return load_dataset_splits(DataConfig(dataset="digits"), seed=0).train
    except MissingResourceError as error:
        pytest.skip(str(error))


def test_the_model_keeps_the_normalization_of_the_data_it_encodes(fashion_512: LabeledData) -> None:
    model = image_model("cnn")
    model.encode(fashion_512)
    assert model.normalization == FASHION_MNIST_NORMALIZATION

    digits = digits_train()
    model = image_model("cnn")
    pixels = all_pixels(model, model.encode(digits))
    assert model.normalization == DIGITS_NORMALIZATION  # the digits' own statistics, not Fashion-MNIST's
    (mean,), (std,) = DIGITS_NORMALIZATION.mean, DIGITS_NORMALIZATION.std
    assert pixels.min().item() == pytest.approx(-mean / std, abs=1e-5)
    assert pixels.max().item() == pytest.approx((1 - mean) / std, abs=1e-5)
    assert pixels.mean().item() == pytest.approx(0.0, abs=0.05) and pixels.std().item() == pytest.approx(1.0, abs=0.05)


def test_a_model_refuses_data_normalized_differently_from_what_it_encoded(fashion_512: LabeledData) -> None:
    digits = digits_train()
    model = image_model("cnn")
    model.encode(fashion_512)
    with pytest.raises(ValueError, match="normalized with"):
        model.encode(digits)
    with pytest.raises(ValueError, match="already encoded"):
        model.normalization = DIGITS_NORMALIZATION  # type: ignore[attr-defined]


def test_images_without_a_declared_normalization_use_the_models(fashion_512: LabeledData) -> None:
    bare = LabeledData(kind="image", inputs=fashion_512.inputs[:4], labels=fashion_512.labels[:4])
    assert bare.normalization is None
    model = image_model("cnn")
    other = image_model("cnn")
    assert torch.equal(all_pixels(model, model.encode(bare)), all_pixels(other, other.encode(fashion_512.subset(np.arange(4)))))
    assert model.normalization == FASHION_MNIST_NORMALIZATION  # UNDECLARED_NORMALIZATION

    given = ImageModel(SmallCNN(10), num_classes=10, normalization=DIGITS_NORMALIZATION)
    pixels = all_pixels(given, given.encode(bare))
    assert torch.equal(pixels, DIGITS_NORMALIZATION.normalize(torch.from_numpy(bare.inputs).float().div(255).unsqueeze(1)))
    with pytest.raises(ValueError, match="normalized with"):
        given.encode(fashion_512)


def test_a_colour_normalization_is_refused_by_the_greyscale_models(fashion_512: LabeledData) -> None:
    colour = ImageNormalization(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    data = LabeledData(kind="image", inputs=fashion_512.inputs[:2], labels=fashion_512.labels[:2], normalization=colour)
    with pytest.raises(ValueError, match="1-channel"):
        image_model("cnn").encode(data)


def test_the_cnns_pool_then_relu_gives_the_textbook_forward_and_gradients() -> None:
    from secure_ffm.models.vision import SmallCNN

    torch.manual_seed(0)
    model = SmallCNN(10)
    pixels = torch.rand(16, 1, 28, 28)
    pixels[pixels < 0.5] = 0  # a black background: ties of relu(bias) in every pooling window, as Fashion-MNIST gives
    labels = torch.randint(0, 10, (16,))

    def textbook(x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(model.conv1(x)), 2)
        x = F.max_pool2d(F.relu(model.conv2(x)), 2)
        return model.head(F.relu(model.fc(x.flatten(1))))

    results = []
    for forward in (model, textbook):
        logits = forward(pixels)
        results.append([logits, *torch.autograd.grad(F.cross_entropy(logits, labels), list(model.parameters()))])
    # channels-last convolutions sum in another order: float rounding only (a tie resolved differently, or a ReLU
    # before the pool that passed another window's gradient, would move a gradient entry by its own size, about 1e-2)
    for ours, reference in zip(*results, strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-7)


def test_a_batch_is_bitwise_the_whole_set_standardised_at_once(fashion_512: LabeledData) -> None:
    # before 2026-12-06 encode stored float32 pixels standardised in one go; batches of uint8 codes must give the same
    model = image_model("cnn")
    encoded = model.encode(fashion_512)
    whole = FASHION_MNIST_NORMALIZATION.normalize(torch.from_numpy(fashion_512.inputs.astype(np.float32)).div_(255.0), inplace=True)
    indices = np.array([7, 3, 500, 3, 0])
    assert torch.equal(model.make_batch(encoded, indices).inputs["pixels"], whole.unsqueeze(1)[torch.from_numpy(indices)])


def test_one_channel_pixels_go_channels_last_as_a_view_and_colour_ones_as_a_copy() -> None:
    from secure_ffm.models.vision import channels_last

    grey = torch.rand(4, 1, 28, 28)
    view = channels_last(grey)
    assert view.data_ptr() == grey.data_ptr() and view.stride() == (784, 1, 28, 1) and torch.equal(view, grey)
    colour = torch.rand(4, 3, 32, 32)
    copy = channels_last(colour)
    assert copy.is_contiguous(memory_format=torch.channels_last) and not copy.is_contiguous() and torch.equal(copy, colour)


@pytest.mark.parametrize("in_channels", [1, 3])
def test_the_cnns_first_convolution_writes_channels_last(in_channels: int) -> None:
    # so that nothing converts its 16-channel output (the largest feature map) before the pools
    from secure_ffm.models.vision import channels_last

    cnn = SmallCNN(10, in_channels=in_channels)
    out = cnn.conv1(channels_last(torch.rand(8, in_channels, 28, 28)))
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
