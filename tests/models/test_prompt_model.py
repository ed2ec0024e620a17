"""Prompt learning models on MiniLM: the text initialisation, pooling over the real tokens, the token limit."""

import numpy as np
import torch

from secure_ffm.config import ModelConfig
from secure_ffm.data.base import LabeledData
from secure_ffm.models import build_model


def build(finetune, **settings):
    config = ModelConfig(arch="hf-text", name_or_path="all-MiniLM-L6-v2", finetune=finetune, **settings)
    return build_model(config, num_classes=2, data_kind="text", seed=0, max_length=32)


def test_a_text_initialised_prompt_starts_as_the_phrases_word_embeddings():
    model = build("prompt", prompt_tokens=4, prompt_init="text", prompt_init_text="is it good")
    ids = model.tokenizer("is it good", add_special_tokens=False)["input_ids"]  # three word pieces, repeated to 4
    assert len(ids) == 3
    words = model.module.encoder.get_input_embeddings().weight[(ids * 2)[:4]]
    prompt = dict(model.trainable_named_parameters())["encoder.prompt_encoder.default.embedding.weight"]
    torch.testing.assert_close(prompt.detach(), words.detach())


def test_pooling_reads_the_real_tokens_and_the_prompt_still_steers_them():
    model = build("prompt", prompt_tokens=4)
    module = model.module.eval()
    batch = model.make_batch(model.encode(LabeledData(kind="text", inputs=("a fine film",), labels=np.array([1]))), np.array([0]))
    pooled = []
    handle = module.head.register_forward_hook(lambda m, args, out: pooled.append(args[0]))
    with torch.no_grad():
        module(**batch.inputs)
        hidden = module.encoder(input_ids=batch.inputs["input_ids"], attention_mask=batch.inputs["attention_mask"])[0]
        real = hidden[:, 4:].mean(dim=1)
        prompt = dict(model.trainable_named_parameters())["encoder.prompt_encoder.default.embedding.weight"]
        prompt.add_(torch.randn(prompt.shape, generator=torch.Generator().manual_seed(0)))  # (a constant: LayerNorm removes it)
        module(**batch.inputs)
    handle.remove()
    assert hidden.shape[1] == 4 + batch.inputs["input_ids"].shape[1]
    torch.testing.assert_close(pooled[0], real)
    assert not torch.allclose(pooled[1], pooled[0], atol=1e-3)  # the real tokens attend to the prompt


def test_virtual_tokens_take_positions_from_the_token_limit():
    assert build("p-tuning", prompt_tokens=10).max_length == 32  # 512 positions: the data's limit holds
    long = build_model(ModelConfig(finetune="prefix", prompt_tokens=100), num_classes=2, data_kind="text", seed=0, max_length=1000)
    assert long.max_length == 512 - 100


def test_two_builds_with_the_same_seed_start_from_the_same_prompt():
    first, second = build("p-tuning", prompt_tokens=4), build("p-tuning", prompt_tokens=4)
    for (name, a), (_, b) in zip(first.trainable_named_parameters(), second.trainable_named_parameters(), strict=True):
        assert torch.equal(a, b), name
