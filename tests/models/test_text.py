"""The hf-text model on the bundled all-MiniLM-L6-v2 (offline)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from opacus import GradSampleModule

from secure_ffm.data.base import LabeledData
from secure_ffm.models.text import TextClassifier, TextModel, resolve_name_or_path

Minilm = Callable[..., TextModel]

FULL_MINILM_PARAMETERS = 22_565_376  # BertModel without its (unused, removed) pooler


def eval_logits(model: TextModel, batch_inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    model.module.eval()
    try:
        with torch.no_grad():
            return model.module(**batch_inputs)
    finally:
        model.module.train()


def test_bundled_names_resolve_to_the_same_local_folder() -> None:
    path = resolve_name_or_path("all-MiniLM-L6-v2")
    assert resolve_name_or_path("sentence-transformers/all-MiniLM-L6-v2") == path
    assert Path(path, "config.json").is_file()


def test_minilm_builds_offline_as_a_text_classifier(minilm_lora: TextModel, text_max_length: int) -> None:
    assert isinstance(minilm_lora.module, TextClassifier)
    assert minilm_lora.module.head.in_features == 384 and minilm_lora.module.head.out_features == 2
    assert minilm_lora.module.passes_token_type_ids and minilm_lora.module.passes_position_ids
    assert minilm_lora.max_length == text_max_length
    assert minilm_lora.module.training


def test_full_mode_trains_every_parameter(minilm_full: TextModel) -> None:
    assert minilm_full.trainable_parameter_count() == minilm_full.total_parameter_count() == FULL_MINILM_PARAMETERS + 384 * 2 + 2


def test_head_mode_trains_only_the_head(minilm_head: TextModel) -> None:
    assert minilm_head.trainable_names() == ("head.weight", "head.bias")
    assert not minilm_head.module.track_encoder_grad


def test_lora_mode_trains_adapters_and_head_only(minilm_lora: TextModel) -> None:
    names = minilm_lora.trainable_names()
    adapters = [name for name in names if "lora_" in name]
    assert set(names) - set(adapters) == {"head.weight", "head.bias"}
    assert len(adapters) == 6 * 2 * 2  # 6 layers x (query, value) x (A, B)
    assert all(name.endswith((".lora_A.default.weight", ".lora_B.default.weight")) for name in adapters)
    # r=8 on 384x384 query and value: 6 * 2 * (8*384 + 384*8), plus the head
    assert minilm_lora.trainable_parameter_count() == 73_728 + 770
    assert minilm_lora.trainable_parameter_count() < 0.01 * FULL_MINILM_PARAMETERS


def test_lora_builds_are_identical_for_a_seed_and_differ_across_seeds(minilm_lora: TextModel, minilm: Minilm) -> None:
    again, other = minilm("lora", seed=0).get_trainable(), minilm("lora", seed=1).get_trainable()
    first = minilm_lora.get_trainable()
    assert list(again) == list(first) == list(other)
    assert all(np.array_equal(first[name], again[name]) for name in first)
    assert not np.array_equal(first["head.weight"], other["head.weight"])


def test_make_batch_pads_to_the_longest_example(minilm_lora: TextModel) -> None:
    data = LabeledData(
        kind="text", inputs=("Short.", "A somewhat longer sentence than that.", "Mid length one."), labels=np.array([0, 1, 0])
    )
    encoded = minilm_lora.encode(data)
    lengths = [len(ids) for ids in encoded.tensors["input_ids"]]
    batch = minilm_lora.make_batch(encoded, np.array([0, 2]))
    width = max(lengths[0], lengths[2])
    assert width < lengths[1]
    for key in ("input_ids", "attention_mask", "token_type_ids", "position_ids"):
        assert batch.inputs[key].shape == (2, width), key
    assert batch.inputs["attention_mask"].sum(dim=1).tolist() == [lengths[0], lengths[2]]
    assert torch.equal(batch.inputs["position_ids"], torch.arange(width).repeat(2, 1))
    assert not batch.inputs["token_type_ids"].any()
    assert (batch.inputs["input_ids"][0, lengths[0] :] == minilm_lora.pad_token_id).all()
    assert batch.labels.tolist() == [0, 0]


def test_encode_truncates_to_max_length(minilm_lora: TextModel, text_max_length: int) -> None:
    data = LabeledData(kind="text", inputs=("word " * 200,), labels=np.array([1]))
    (ids,) = minilm_lora.encode(data).tensors["input_ids"]
    assert len(ids) == text_max_length


def test_lora_adamw_steps_lower_the_loss(sentiment: LabeledData, minilm: Minilm) -> None:
    model = minilm("lora")
    model.module.eval()  # no dropout: the loss comparison is deterministic
    batch = model.make_batch(model.encode(sentiment), np.arange(len(sentiment)))
    optimizer = torch.optim.AdamW([p for _, p in model.trainable_named_parameters()], lr=5e-3)

    def loss() -> torch.Tensor:
        return F.cross_entropy(model.module(**batch.inputs), batch.labels)

    with torch.no_grad():
        before = loss().item()
    for _ in range(5):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    with torch.no_grad():
        assert loss().item() < 0.5 * before


def test_head_mode_keeps_the_encoder_out_of_autograd(minilm_head: TextModel, sentiment: LabeledData) -> None:
    batch = minilm_head.make_batch(minilm_head.encode(sentiment), np.arange(4))
    F.cross_entropy(minilm_head.module(**batch.inputs), batch.labels).backward()
    assert all(p.grad is None for p in minilm_head.module.encoder.parameters())
    assert minilm_head.module.head.weight.grad is not None
    minilm_head.module.zero_grad(set_to_none=True)


def test_set_trainable_on_a_fresh_build_reproduces_logits(sentiment: LabeledData, minilm: Minilm) -> None:
    source = minilm("lora", seed=3)
    batch = source.make_batch(source.encode(sentiment), np.arange(8))
    with torch.no_grad():  # move the adapters away from their zero-initialised B
        for _name, param in source.trainable_named_parameters():
            param.add_(0.01 * torch.randn_like(param))
    target = minilm("lora", seed=4)
    assert not torch.equal(eval_logits(target, batch.inputs), eval_logits(source, batch.inputs))
    target.set_trainable(source.get_trainable())
    torch.testing.assert_close(eval_logits(target, batch.inputs), eval_logits(source, batch.inputs), rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:Full backward hook")
@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_opacus_per_sample_gradients(finetune: str, sentiment: LabeledData, minilm: Minilm) -> None:
    model = minilm(finetune)
    batch = model.make_batch(model.encode(sentiment), np.array([0, 1, 2, 5]))
    assert len(set(batch.inputs["attention_mask"].sum(dim=1).tolist())) > 1  # padded batch
    wrapped = GradSampleModule(model.module)
    F.cross_entropy(wrapped(**batch.inputs), batch.labels).backward()
    for name, param in model.trainable_named_parameters():
        assert param.grad_sample is not None, name
        assert param.grad_sample.shape == (4, *param.shape), name
