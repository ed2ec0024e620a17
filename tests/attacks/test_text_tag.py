"""TAG and LAMP-style reconstruction on the MiniLM classifier (full fine-tuning), a real movie review."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attacks.base import Budget, ThreatModel, TrainingSetup, build_attack
from attacks.case import observe
from attacks.lamp import reorder
from attacks.metrics_text import score_texts
from attacks.text import cover_tokens, estimated_gradient, head_names, infer_labels, project_to_tokens, sequence_layout
from secure_ffm.config import ModelConfig
from secure_ffm.data.base import LabeledData
from secure_ffm.errors import ConfigError
from secure_ffm.models import build_model
from secure_ffm.models.base import Batch
from secure_ffm.models.text import TextModel

SHORT_REVIEW = 31
"""'Light, cute and forgettable.' (7 word pieces, positive), in file order of the snippets."""

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def full() -> TextModel:
    model = build_model(ModelConfig(arch="hf-text", finetune="full"), num_classes=2, data_kind="text", seed=0, max_length=32)
    assert isinstance(model, TextModel)
    return model


def batch_of(model: TextModel, reviews: tuple[tuple[str, ...], np.ndarray], indices: list[int]) -> Batch:
    texts, labels = reviews
    encoded = model.encode(LabeledData(kind="text", inputs=tuple(texts[i] for i in indices), labels=labels[indices].astype(np.int64)))
    return model.make_batch(encoded, np.arange(len(indices)))


def test_the_short_review_is_what_the_tests_expect(reviews) -> None:
    assert reviews[0][SHORT_REVIEW] == "Light, cute and forgettable." and reviews[1][SHORT_REVIEW] == 1


def test_tag_recovers_tokens_of_a_short_review_far_above_chance(full: TextModel, reviews) -> None:
    """Without the leaked bag (projection onto all 30k tokens), chance token F1 is about 7/30522."""
    observation, truth = observe(full, batch_of(full, reviews, [SHORT_REVIEW]), threat_model=ThreatModel())
    attack = build_attack("tag", {"restrict_to_leaked": False})
    reconstruction = attack.reconstruct(observation, budget=Budget(max_iterations=60), generator=torch.Generator().manual_seed(0))
    scores = score_texts(reconstruction, truth, full.tokenizer)["mean"]
    assert reconstruction.iterations == 60 and not reconstruction.details["restricted_to_leaked"]
    assert reconstruction.labels.tolist() == [1]  # read from the head's bias gradient
    assert scores["token_f1"] >= 0.25  # measured 0.43 (3 of the 7 word pieces; 0.57 with seed 1)


def test_with_the_leaked_bag_lamp_finds_the_order_tag_misses(full: TextModel, reviews) -> None:
    """Full fine-tuning leaks the bag, so both cover it (token F1 1); the order is what LAMP's discrete search adds."""
    observation, truth = observe(full, batch_of(full, reviews, [2]), threat_model=ThreatModel())  # 'Effective but too tepid biopic'
    budget = Budget(max_iterations=40)
    tag = build_attack("tag").reconstruct(observation, budget=budget, generator=torch.Generator().manual_seed(0))
    lamp_attack = build_attack("lamp", {"discrete_every": 10, "candidates": 8})
    lamp = lamp_attack.reconstruct(observation, budget=budget, generator=torch.Generator().manual_seed(0))
    tag_scores, lamp_scores = (score_texts(r, truth, full.tokenizer)["mean"] for r in (tag, lamp))
    assert tag.details["restricted_to_leaked"] and lamp.details["restricted_to_leaked"] and lamp.iterations <= 40
    assert tag_scores["token_f1"] == lamp_scores["token_f1"] == 1.0  # 5 distinct words, 7 pieces: every leaked piece once
    assert lamp.details["token_distance"] < tag.details["token_distance"]  # measured 0.000 vs 0.375
    assert lamp_scores["rouge2"] >= 0.5 > tag_scores["rouge2"]  # measured 1.0 (the exact sentence) vs 0.0


def test_reconstruction_is_seeded_and_leaves_the_model_as_it_was(full: TextModel, reviews) -> None:
    batch = batch_of(full, reviews, [SHORT_REVIEW, 2])
    observation, _ = observe(full, batch, threat_model=ThreatModel(knows_labels=True))
    before = full.get_trainable()
    runs = [
        build_attack(name).reconstruct(observation, budget=Budget(max_iterations=3), generator=torch.Generator().manual_seed(seed))
        for name, seed in (("tag", 0), ("tag", 0), ("tag", 1), ("lamp", 0))
    ]
    assert torch.equal(runs[0].inputs, runs[1].inputs) and not torch.equal(runs[0].inputs, runs[2].inputs)
    assert runs[0].inputs.shape == batch.inputs["input_ids"].shape
    assert torch.equal(runs[0].labels, batch.labels)  # known labels are used as given
    layout = sequence_layout(observation)  # [CLS] ... [SEP] [PAD]...: pinned where the tokenizer puts them
    assert torch.equal(runs[3].inputs[layout.known], batch.inputs["input_ids"][layout.known])
    assert full.module.training
    after = full.get_trainable()
    assert all(np.array_equal(before[name], after[name]) for name in before)
    assert all(p.grad is None for p in full.module.parameters())


def test_update_and_aggregate_observations_are_attacked(full: TextModel, reviews) -> None:
    batch = batch_of(full, reviews, [SHORT_REVIEW])
    setup = TrainingSetup(num_examples=1, learning_rate=1e-3)
    observation, _ = observe(full, batch, threat_model=ThreatModel(observes="update"), setup=setup)
    reconstruction = build_attack("tag").reconstruct(observation, budget=Budget(max_iterations=2), generator=torch.Generator())
    assert reconstruction.inputs.shape == batch.inputs["input_ids"].shape
    other = batch_of(full, reviews, [2])
    aggregate, _ = observe(full, batch, threat_model=ThreatModel(observes="aggregate"), other_clients=[other])
    reconstruction = build_attack("tag").reconstruct(aggregate, budget=Budget(max_iterations=2), generator=torch.Generator())
    assert reconstruction.inputs.shape[0] == 2  # every example in the sum is reconstructed


def test_labels_come_from_the_head_gradient(full: TextModel, reviews) -> None:
    texts, labels = reviews
    negative = int(np.flatnonzero(labels == 0)[0])
    for index in (SHORT_REVIEW, negative):
        observation, _ = observe(full, batch_of(full, reviews, [index]), threat_model=ThreatModel())
        assert infer_labels(observation, estimated_gradient(observation)).tolist() == [int(labels[index])]
    observation, _ = observe(full, batch_of(full, reviews, [SHORT_REVIEW, negative, 2, 6]), threat_model=ThreatModel())
    counts = torch.bincount(infer_labels(observation, estimated_gradient(observation)), minlength=2)
    assert counts.tolist() == torch.bincount(torch.as_tensor(labels[[SHORT_REVIEW, negative, 2, 6]]), minlength=2).tolist()


@pytest.mark.parametrize("bias", [[0.9, 0.3125], [5.0, -5.0], [-3.0, -3.0], [0.5, 0.5]])
def test_inferred_labels_are_one_per_example_whatever_the_bias_gradient(full: TextModel, reviews, bias) -> None:
    # a noisy bias gradient (DP, or a sum of many clients) can put most classes' estimates below zero; the counts were
    # then filled up by one per class at most, and an audit of 8 reviews under DP-SGD got 3 labels (2026-12-07)
    observation, _ = observe(full, batch_of(full, reviews, range(8)), threat_model=ThreatModel())
    gradient = dict(estimated_gradient(observation))
    _, bias_name = head_names(full.module)
    gradient[bias_name] = torch.tensor(bias)
    assert len(infer_labels(observation, gradient)) == 8


def test_lamp_moves_permute_positions() -> None:
    generator = torch.Generator().manual_seed(0)
    order = list(range(6))
    for move in ("swap", "move", "span", "rotate"):
        for _ in range(20):
            moved = reorder(order, move, generator)
            assert sorted(moved) == order
    with pytest.raises(ConfigError, match="discrete_every"):
        build_attack("lamp", {"discrete_every": 0})
    with pytest.raises(ConfigError, match="layer_weights"):
        build_attack("tag", {"layer_weights": "quadratic"})


def test_cover_uses_every_bag_token_once_before_repeating_one() -> None:
    table = torch.eye(4) + 0.1  # token t has embedding e_t (+ a constant, removed by the centring)
    vectors = torch.stack([table[1], table[1], table[2], table[1]]).unsqueeze(0) + 0.01 * torch.arange(4.0).reshape(1, 4, 1)
    free = torch.tensor([[False, True, True, True]])
    bag = torch.tensor([1, 2, 3])
    assert project_to_tokens(vectors, table, bag)[0, 1:].tolist() == [1, 2, 1]  # nearest: token 3 is lost
    covered = cover_tokens(vectors, table, free, bag)[0, 1:].tolist()
    assert sorted(covered) == [1, 2, 3]  # the assignment puts 3 where it costs the least similarity
    assert cover_tokens(vectors, table, free, torch.tensor([1]))[0, 1:].tolist() == [1, 1, 1]
