"""The leakage audit on prompt updates (MiniLM, a real movie review): the frozen word embeddings leak no bag of
tokens; TAG and LAMP run against the prompt and head gradient (their token F1 is measured in
benchmarks/peft_methods.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attacks.base import Budget, ThreatModel, build_attack
from attacks.case import observe
from attacks.metrics_text import score_texts
from attacks.text import logits_from_embeddings, word_embeddings
from secure_ffm.config import ModelConfig
from secure_ffm.data.base import LabeledData
from secure_ffm.models import build_model
from secure_ffm.models.text import TextModel

SHORT_REVIEW = 31
"""'Light, cute and forgettable.' (7 word pieces, positive)."""
PROMPT_MODES = {"prompt": {}, "prefix": {}, "p-tuning": {"prompt_encoder_hidden_size": 32}}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def observed(finetune: str, reviews):
    config = ModelConfig(arch="hf-text", finetune=finetune, prompt_tokens=4, **PROMPT_MODES[finetune])
    model = build_model(config, num_classes=2, data_kind="text", seed=0, max_length=32)
    assert isinstance(model, TextModel)
    texts, labels = reviews
    encoded = model.encode(LabeledData(kind="text", inputs=(texts[SHORT_REVIEW],), labels=labels[[SHORT_REVIEW]].astype(np.int64)))
    batch = model.make_batch(encoded, np.arange(1))
    observation, truth = observe(model, batch, threat_model=ThreatModel())
    return model, observation, truth, batch


@pytest.mark.parametrize("finetune", sorted(PROMPT_MODES))
def test_embedding_leakage_finds_nothing_in_a_prompt_update(finetune, reviews):
    model, observation, _, _ = observed(finetune, reviews)
    assert set(observation.observed) == set(model.trainable_names())
    reconstruction = build_attack("embedding-leakage").reconstruct(
        observation, budget=Budget(max_iterations=1), generator=torch.Generator()
    )
    assert reconstruction.details["token_ids"] == [] and not reconstruction.details["embedding_trained"]


@pytest.mark.parametrize("finetune", sorted(PROMPT_MODES))
def test_the_attack_forward_is_the_classifiers(finetune, reviews):
    model, _, _, batch = observed(finetune, reviews)
    inputs = batch.inputs
    module = model.module.eval()
    with torch.no_grad():
        direct = module(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        embeds = word_embeddings(module)(inputs["input_ids"])
        attacked = logits_from_embeddings(module, embeds, inputs["attention_mask"])
    torch.testing.assert_close(attacked, direct, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("attack", ["tag", "lamp"])
def test_text_attacks_run_against_the_prompt_gradient(attack, reviews):
    model, observation, truth, _ = observed("prompt", reviews)
    settings = {"restrict_to_leaked": False, **({"discrete_every": 5, "candidates": 4} if attack == "lamp" else {})}
    reconstruction = build_attack(attack, settings).reconstruct(
        observation, budget=Budget(max_iterations=10), generator=torch.Generator().manual_seed(0)
    )
    scores = score_texts(reconstruction, truth, model.tokenizer)["mean"]
    assert reconstruction.iterations == 10 and reconstruction.labels.tolist() == [1]  # the label from the head's bias gradient
    assert 0.0 <= scores["token_f1"] <= 1.0
