"""Token leakage from the word-embedding gradient (Melis et al. 2019) on the MiniLM classifier, real movie reviews."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attacks.base import Budget, ThreatModel, TrainingSetup, build_attack
from attacks.case import observe
from attacks.metrics_text import bag_of_tokens_scores
from attacks.text import estimated_gradient, logits_from_embeddings, word_embeddings
from secure_ffm.config import ModelConfig
from secure_ffm.data.base import LabeledData
from secure_ffm.errors import ConfigError
from secure_ffm.models import build_model
from secure_ffm.models.base import Batch
from secure_ffm.models.text import TextModel

BUDGET = Budget(max_iterations=1)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def minilm(finetune: str) -> TextModel:
    model = build_model(ModelConfig(arch="hf-text", finetune=finetune), num_classes=2, data_kind="text", seed=0, max_length=32)
    assert isinstance(model, TextModel)
    return model


@pytest.fixture(scope="module")
def full() -> TextModel:
    return minilm("full")


def batch_of(model: TextModel, reviews: tuple[tuple[str, ...], np.ndarray], indices: list[int]) -> tuple[Batch, list[str]]:
    texts, labels = reviews
    chosen = tuple(texts[i] for i in indices)
    encoded = model.encode(LabeledData(kind="text", inputs=chosen, labels=labels[indices].astype(np.int64)))
    return model.make_batch(encoded, np.arange(len(indices))), list(chosen)


def leak(model: TextModel, batch: Batch, threat_model: ThreatModel, **kwargs: object) -> dict[str, float]:
    """Bag-of-tokens scores against every client's tokens (the target's and ``other_clients``')."""
    observation, _ = observe(model, batch, threat_model=threat_model, **kwargs)  # type: ignore[arg-type]
    reconstruction = build_attack("embedding-leakage").reconstruct(observation, budget=BUDGET, generator=torch.Generator().manual_seed(0))
    assert reconstruction.details["bag_of_tokens"]
    rows = [row for b in (batch, *kwargs.get("other_clients", ())) for row in b.inputs["input_ids"].tolist()]  # type: ignore[union-attr]
    return bag_of_tokens_scores(reconstruction.inputs.flatten().tolist(), rows, model.tokenizer)


def test_full_finetuning_gradient_leaks_the_whole_bag_of_tokens(full: TextModel, reviews) -> None:
    for index in (0, 1, 2):  # long and short snippets, batch size 1
        batch, _ = batch_of(full, reviews, [index])
        scores = leak(full, batch, ThreatModel(observes="gradient"))
        assert scores["token_recall"] >= 0.95  # measured 1.0: untouched rows are exactly zero
        assert scores["token_precision"] == 1.0


def test_a_batch_leaks_the_union_of_its_tokens(full: TextModel, reviews) -> None:
    batch, _ = batch_of(full, reviews, [3, 4, 5, 6])  # padded to the longest: padding gets no gradient
    scores = leak(full, batch, ThreatModel(observes="gradient"))
    assert scores["token_recall"] >= 0.95 and scores["token_precision"] == 1.0  # measured 1.0 and 1.0


def test_local_updates_and_aggregates_leak_the_bag_too(full: TextModel, reviews) -> None:
    batch, _ = batch_of(full, reviews, [2, 7])
    setup = TrainingSetup(num_examples=2, local_steps=3, local_batch_size=1, learning_rate=1e-4)
    assert leak(full, batch, ThreatModel(observes="update"), setup=setup)["token_recall"] >= 0.95  # measured 1.0
    other, _ = batch_of(full, reviews, [8])
    setup = TrainingSetup(num_examples=2, learning_rate=1e-4)
    union = leak(full, batch, ThreatModel(observes="aggregate"), setup=setup, other_clients=[other])
    assert union["token_recall"] >= 0.95 and union["token_precision"] == 1.0  # secure aggregation hides who, not which words


@pytest.mark.parametrize("finetune", ["lora", "head"])
def test_nothing_leaks_when_the_embedding_table_is_frozen(finetune: str, reviews) -> None:
    model = minilm(finetune)
    batch, _ = batch_of(model, reviews, [2])
    observation, _ = observe(model, batch, threat_model=ThreatModel())
    reconstruction = build_attack("embedding-leakage").reconstruct(observation, budget=BUDGET, generator=torch.Generator())
    assert reconstruction.inputs.numel() == 0 and "not trained" in reconstruction.details["reason"]
    assert leak(model, batch, ThreatModel())["token_recall"] == 0.0


def test_unknown_setting_names_the_nearest_key() -> None:
    with pytest.raises(ConfigError, match="relative_tolerance"):
        build_attack("embedding-leakage", {"relative_tolerence": 0.1})
    with pytest.raises(ConfigError, match="relative_tolerance"):
        build_attack("embedding-leakage", {"relative_tolerance": 1.5})


def test_update_of_one_step_gives_back_the_gradient(full: TextModel, reviews) -> None:
    batch, _ = batch_of(full, reviews, [2, 7])
    gradient, _ = observe(full, batch, threat_model=ThreatModel(observes="gradient"))
    update, _ = observe(full, batch, threat_model=ThreatModel(observes="update"), setup=TrainingSetup(num_examples=2, learning_rate=1e-3))
    from_update, exact = estimated_gradient(update), estimated_gradient(gradient)
    for name in ("encoder.embeddings.position_embeddings.weight", "encoder.encoder.layer.0.attention.self.query.weight", "head.weight"):
        # exact up to float32 rounding of (w - lr * g) - w
        assert float((from_update[name] - exact[name]).norm() / exact[name].norm()) < 1e-2


def test_logits_from_embeddings_match_the_classifier(full: TextModel, reviews) -> None:
    batch, _ = batch_of(full, reviews, [3, 4])
    module = full.module
    module.eval()
    try:
        with torch.no_grad():
            expected = module(**batch.inputs)
            vectors = word_embeddings(module)(batch.inputs["input_ids"])
            inputs = batch.inputs
            got = logits_from_embeddings(module, vectors, inputs["attention_mask"], inputs["token_type_ids"], inputs["position_ids"])
    finally:
        module.train()
    assert torch.allclose(got, expected, atol=1e-5)
