"""A tiny random BERT encoder saved with save_pretrained (MiniLM's tokenizer), for fast hf-text runs offline."""

from pathlib import Path

import torch


def save_tiny_bert(folder: Path) -> Path:
    """Write a 1-layer, 32-wide BERT and the bundled MiniLM tokenizer to ``folder``; returns it."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from secure_ffm.models.text import resolve_name_or_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_name_or_path("all-MiniLM-L6-v2"))
    sizes = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64}
    config = BertConfig(vocab_size=len(tokenizer), **sizes)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_text_sections(encoder: Path, **sections: dict) -> dict[str, dict]:
    """Config sections of a short hf-text run on the tiny encoder (movie reviews, 2 clients)."""
    raw: dict[str, dict] = {
        "data": {"dataset": "movie_reviews", "max_train_examples": 60, "max_test_examples": 20, "num_clients": 2, "max_length": 16},
        "model": {"arch": "hf-text", "name_or_path": str(encoder), "finetune": "lora", "lora_rank": 2},
        "client": {"local_steps": 1, "batch_size": 8, "lr": 0.05},
        "server": {"rounds": 1},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return raw
