"""Label inference from the last layer (iDLG for one example, LLG-style counts for a batch) on real images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attacks import ThreatModel, TrainingSetup
from attacks.case import observe
from attacks.labels import infer_labels
from attacks.metrics_image import label_count_accuracy
from secure_ffm.config import ModelConfig
from secure_ffm.data.base import LabeledData
from secure_ffm.models import build_model
from secure_ffm.models.base import FederatedModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def image_model(arch: str) -> FederatedModel:
    return build_model(ModelConfig(arch=arch, finetune="full"), num_classes=10, data_kind="image", seed=0)


@pytest.mark.parametrize("arch", ["cnn", "vit"])
@pytest.mark.parametrize("observes", ["gradient", "update"])
def test_idlg_reads_a_single_label_exactly(arch: str, observes: str, test_images: LabeledData) -> None:
    model = image_model(arch)
    encoded = model.encode(test_images)
    setup = TrainingSetup(num_examples=1, local_steps=3, learning_rate=0.1)  # an update is -lr * sum of gradients: the sign flips
    for i in range(8):
        batch = model.make_batch(encoded, np.array([i]))
        observation, _ = observe(model, batch, threat_model=ThreatModel(observes=observes), setup=setup)
        assert infer_labels(observation).tolist() == batch.labels.tolist()


def test_idlg_without_a_bias_uses_the_weight_rows(test_images: LabeledData) -> None:
    model = image_model("cnn")  # the head's input follows a ReLU, so row sums carry the sign of p - y
    encoded = model.encode(test_images)
    for i in range(8):
        batch = model.make_batch(encoded, np.array([i]))
        observation, _ = observe(model, batch, threat_model=ThreatModel())
        del observation.observed["head.bias"]
        assert infer_labels(observation).tolist() == batch.labels.tolist()


@pytest.mark.parametrize(
    ("arch", "observes", "minimum"),
    [
        ("cnn", "gradient", 0.95),  # measured 1.00 on these 4 batches (and on 8 batches of 4, 8 and 16)
        ("cnn", "update", 0.95),  # measured 1.00 (4 steps of 4 examples: each used twice)
        ("vit", "gradient", 0.85),  # measured 1.00 here, 0.98 over 8 batches
    ],
)
def test_label_counts_of_a_batch_of_eight(arch: str, observes: str, minimum: float, test_images: LabeledData) -> None:
    model = image_model(arch)
    encoded = model.encode(test_images)
    setup = TrainingSetup(num_examples=8, local_steps=4, local_batch_size=4, learning_rate=0.1)
    accuracies, repeats = [], 0
    for k in range(4):
        batch = model.make_batch(encoded, np.arange(8 * k, 8 * k + 8))
        repeats += 8 - len(set(batch.labels.tolist()))
        observation, _ = observe(model, batch, threat_model=ThreatModel(observes=observes), setup=setup)
        inferred = infer_labels(observation, generator=torch.Generator().manual_seed(k))
        assert inferred.shape == (8,) and inferred.dtype == torch.long
        accuracies.append(label_count_accuracy(inferred, batch.labels))
    assert repeats > 0  # real batches, with repeated classes: counting, not just presence
    assert np.mean(accuracies) >= minimum, accuracies


def test_label_counts_of_a_batch_of_four_with_unknown_training(test_images: LabeledData) -> None:
    """Without the learning rate the offset cannot be used: shares follow the negative entries only."""
    model = image_model("cnn")
    encoded = model.encode(test_images)
    setup = TrainingSetup(num_examples=4, local_steps=2, learning_rate=0.1)
    accuracies = []
    for k in range(4):
        batch = model.make_batch(encoded, np.arange(4 * k, 4 * k + 4))
        observation, _ = observe(model, batch, threat_model=ThreatModel(observes="update", knows_training=False), setup=setup)
        accuracies.append(label_count_accuracy(infer_labels(observation), batch.labels))
    assert np.mean(accuracies) >= 0.75, accuracies  # measured 1.00
