"""hf-text on other encoder families from local folders (tiny random models, offline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from opacus import GradSampleModule

from secure_ffm.config import ModelConfig
from secure_ffm.data.base import LabeledData
from secure_ffm.models import build_model
from secure_ffm.models.text import TextModel, resolve_name_or_path


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny DistilBERT (no token_type_ids) and RoBERTa (positions start at padding_idx + 1) folders."""
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertModel, RobertaConfig, RobertaModel

    tokenizer = AutoTokenizer.from_pretrained(resolve_name_or_path("all-MiniLM-L6-v2"))
    vocab = len(tokenizer)
    configs = {
        "distilbert": (
            DistilBertModel,
            DistilBertConfig(vocab_size=vocab, dim=32, n_layers=1, n_heads=2, hidden_dim=64, max_position_embeddings=64),
        ),
        "roberta": (
            RobertaModel,
            RobertaConfig(
                vocab_size=vocab,
                hidden_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=64,
                max_position_embeddings=34,
                pad_token_id=1,
                type_vocab_size=1,
            ),
        ),
    }
    folders = {}
    for family, (model_class, config) in configs.items():
        folder = tmp_path_factory.mktemp(family)
        torch.manual_seed(0)
        model_class(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders[family] = folder
    return folders


def build_local(folder: Path, **fields: object) -> TextModel:
    config = ModelConfig(arch="hf-text", name_or_path=str(folder), **fields)  # type: ignore[arg-type]
    model = build_model(config, num_classes=3, data_kind="text", seed=0, max_length=64)
    assert isinstance(model, TextModel)
    return model


def test_distilbert_without_token_type_ids_classifies(tiny_models: dict[str, Path], sentiment: LabeledData) -> None:
    model = build_local(tiny_models["distilbert"], finetune="lora", lora_target_modules=("q_lin", "v_lin"))
    assert not model.module.passes_token_type_ids
    assert all("lora_" in name or name.startswith("head.") for name in model.trainable_names())
    batch = model.make_batch(model.encode(sentiment), np.arange(4))
    assert model.module(**batch.inputs).shape == (4, 3)


def test_roberta_positions_start_after_the_padding_index(tiny_models: dict[str, Path], sentiment: LabeledData) -> None:
    model = build_local(tiny_models["roberta"], finetune="full")
    assert model.position_offset == 2
    assert model.max_length == 32  # 34 position embeddings minus the offset
    batch = model.make_batch(model.encode(sentiment), np.arange(4))
    assert batch.inputs["position_ids"][:, 0].tolist() == [2, 2, 2, 2]
    assert model.module(**batch.inputs).shape == (4, 3)


@pytest.mark.filterwarnings("ignore:Full backward hook")
@pytest.mark.parametrize("family", ["distilbert", "roberta"])
def test_opacus_per_sample_gradients_on_other_families(family: str, tiny_models: dict[str, Path], sentiment: LabeledData) -> None:
    model = build_local(tiny_models[family], finetune="full")
    batch = model.make_batch(model.encode(sentiment), np.arange(4))
    wrapped = GradSampleModule(model.module)
    F.cross_entropy(wrapped(**batch.inputs), batch.labels).backward()
    for name, param in model.trainable_named_parameters():
        assert param.grad_sample is not None and param.grad_sample.shape[0] == 4, name
