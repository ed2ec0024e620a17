"""Prompt learning modes of ``model.finetune``: ``prompt``, ``prefix`` and ``p-tuning``.

Each mode is a :class:`PromptMethod` registered in :data:`PROMPT_METHODS`; it turns the ``[model]`` section's
``prompt_*`` keys into a peft config. The Hugging Face encoder is wrapped in peft's ``PeftModelForFeatureExtraction``
(``task_type = "FEATURE_EXTRACTION"``; as a :class:`PerExamplePromptModel`, whose prompt Opacus can give per-sample
gradients); the project's own pooling and ``head`` (:class:`secure_ffm.models.text.TextClassifier`) sit on top, so
every finetune mode shares the same classifier. The encoder's weights stay frozen: only the prompt parameters (peft's
``prompt_encoder.default.*``) and the head are trained, hence sent.

- ``prompt`` -- soft prompt tuning (Lester et al., 2021, arXiv 2104.08691; peft ``PromptTuningConfig``):
  ``prompt_tokens`` trainable input embeddings prepended to the word embeddings, initialised at random or from the
  word embeddings of ``prompt_init_text``'s word pieces (no special tokens; repeated or cut to ``prompt_tokens``).
- ``prefix`` -- prefix tuning (Li & Liang, 2021, arXiv 2101.00190; P-Tuning v2, Liu et al., 2022, arXiv 2110.07602;
  peft ``PrefixTuningConfig``): ``prompt_tokens`` trainable keys and values in every attention layer, passed to the
  encoder as ``past_key_values``; with ``prompt_encoder_hidden_size > 0`` they are produced by a two-layer MLP
  (the reparameterization of Li & Liang) of that width, else trained directly.
- ``p-tuning`` -- P-tuning (Liu et al., 2021, arXiv 2103.10385; peft ``PromptEncoderConfig``): a small prompt
  encoder (an MLP, the "auto prompt model") generates the ``prompt_tokens`` virtual token embeddings that are
  prepended to the input; ``prompt_encoder_hidden_size`` is its width (0: the encoder's hidden size).

The module imports neither torch nor peft at import time, so :class:`secure_ffm.config.ModelConfig` can validate
against the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from secure_ffm.errors import ConfigError
from secure_ffm.registry import Registry

if TYPE_CHECKING:
    from secure_ffm.config import ModelConfig

PROMPT_INITS = ("random", "text")
"""``model.prompt_init`` values: ``text`` applies to ``prompt`` only (peft initialises the other modes at random)."""
MAX_PROMPT_TOKENS = 256
MAX_PROMPT_ENCODER_HIDDEN_SIZE = 8192
PROMPT_KEYS = ("prompt_tokens", "prompt_init", "prompt_init_text", "prompt_encoder_hidden_size")
"""The ``[model]`` keys of prompt learning; setting one while ``model.finetune`` is not a prompt mode is an error."""
PROMPT_PARAMETER_MARKER = "prompt_encoder."
"""Every trained prompt parameter's name contains this (peft's ``prompt_encoder.default.*``)."""


@dataclass(frozen=True)
class PromptMethod:
    """A prompt learning mode: its peft config class and what it prepends."""

    peft_class: str
    """Name of the peft config class (imported lazily)."""
    prepends_tokens: bool
    """True when the virtual tokens are prepended to the input (``prompt``, ``p-tuning``): the encoder's hidden states
    then start with ``prompt_tokens`` rows that pooling skips. False for ``prefix`` (keys and values only)."""
    text_init: bool = False
    """Whether ``prompt_init = "text"`` applies."""
    encoder_size: bool = False
    """Whether ``prompt_encoder_hidden_size`` applies."""
    settings: Callable[[ModelConfig], dict[str, Any]] = lambda config: {}
    """The peft config's mode-specific fields of the ``[model]`` section."""

    def check(self, name: str, config: ModelConfig) -> None:
        """Raise ConfigError for settings this mode cannot take."""
        if config.prompt_init == "text" and not self.text_init:
            raise ConfigError(
                "model.prompt_init",
                f'"text" initialises the soft prompt of finetune = "prompt", not {name!r}',
                'use prompt_init = "random", or finetune = "prompt"',
            )
        if config.prompt_encoder_hidden_size and not self.encoder_size:
            raise ConfigError(
                "model.prompt_encoder_hidden_size",
                f"{name!r} has no prompt encoder",
                'drop it, or use finetune = "prefix" or "p-tuning"',
            )

    def peft_config(self, config: ModelConfig) -> Any:
        """The peft config of ``config``'s ``prompt_*`` keys."""
        import peft

        kwargs: dict[str, Any] = {"task_type": "FEATURE_EXTRACTION", "num_virtual_tokens": config.prompt_tokens}
        kwargs.update(self.settings(config))
        return getattr(peft, self.peft_class)(**kwargs)


def _soft_prompt(config: ModelConfig) -> dict[str, Any]:
    return {"prompt_tuning_init": "RANDOM"}  # a text initialisation is applied after wrapping (text_initialise)


def _prefix(config: ModelConfig) -> dict[str, Any]:
    size = config.prompt_encoder_hidden_size
    return {"prefix_projection": True, "encoder_hidden_size": size} if size else {"prefix_projection": False}


def _prompt_encoder(config: ModelConfig) -> dict[str, Any]:
    size = config.prompt_encoder_hidden_size
    return {"encoder_reparameterization_type": "MLP", **({"encoder_hidden_size": size} if size else {})}


PROMPT_METHODS: Registry[PromptMethod] = Registry("prompt learning mode")
PROMPT_METHODS.register("prompt")(PromptMethod("PromptTuningConfig", prepends_tokens=True, text_init=True, settings=_soft_prompt))
PROMPT_METHODS.register("prefix")(PromptMethod("PrefixTuningConfig", prepends_tokens=False, encoder_size=True, settings=_prefix))
PROMPT_METHODS.register("p-tuning")(PromptMethod("PromptEncoderConfig", prepends_tokens=True, encoder_size=True, settings=_prompt_encoder))


def check_prompt_settings(config: ModelConfig) -> None:
    """Validate the ``prompt_*`` keys of ``config`` against ``model.finetune`` (called by ``ModelConfig``).

    A prompt key that differs from its default while ``finetune`` is not a prompt mode is refused: it would be
    silently ignored otherwise.
    """
    if config.finetune not in PROMPT_METHODS:
        from dataclasses import fields

        for f in fields(config):
            if f.name in PROMPT_KEYS and getattr(config, f.name) != f.default:
                raise ConfigError(
                    f"model.{f.name}",
                    f'applies to the prompt modes ({", ".join(PROMPT_METHODS.names())}), not finetune = "{config.finetune}"',
                    f"drop model.{f.name}, or set model.finetune to a prompt mode",
                )
        return
    if not 1 <= config.prompt_tokens <= MAX_PROMPT_TOKENS:
        raise ConfigError("model.prompt_tokens", f"must be in [1, {MAX_PROMPT_TOKENS}], got {config.prompt_tokens!r}", "use e.g. 20")
    if config.prompt_init not in PROMPT_INITS:
        from secure_ffm.registry import did_you_mean

        raise ConfigError("model.prompt_init", f"unknown value {config.prompt_init!r}", did_you_mean(config.prompt_init, PROMPT_INITS))
    if config.prompt_init == "text" and not config.prompt_init_text.strip():
        raise ConfigError(
            "model.prompt_init_text",
            'is empty, but prompt_init = "text" initialises the prompt from it',
            'give a phrase, e.g. "Classify the sentiment of this review:", or use prompt_init = "random"',
        )
    if config.prompt_init != "text" and config.prompt_init_text:
        raise ConfigError("model.prompt_init_text", 'applies only to prompt_init = "text"', 'set model.prompt_init = "text", or drop it')
    if not 0 <= config.prompt_encoder_hidden_size <= MAX_PROMPT_ENCODER_HIDDEN_SIZE:
        raise ConfigError(
            "model.prompt_encoder_hidden_size",
            f"must be in [0, {MAX_PROMPT_ENCODER_HIDDEN_SIZE}], got {config.prompt_encoder_hidden_size!r}",
            "use e.g. 128, or 0 for the default",
        )
    PROMPT_METHODS.get(config.finetune, key="model.finetune").check(config.finetune, config)


def wrap_encoder(encoder: Any, config: ModelConfig, *, tokenizer: Any) -> Any:
    """``encoder`` inside peft's ``PeftModelForFeatureExtraction`` for the prompt mode ``config.finetune``.

    peft freezes the encoder and leaves the prompt parameters (``prompt_encoder.default.*``) trainable. Its forward
    drops ``position_ids`` and ``token_type_ids`` for the modes that prepend tokens (so the classifier does not pass
    them: BERT then numbers the virtual and real tokens 0, 1, ...); for ``prefix`` the encoder numbers the real
    tokens after the prefix (``past_key_values`` length). A failure of peft is a ConfigError on ``model.finetune``.
    ``prompt_init = "text"`` is applied here (:func:`text_initialise`), with ``tokenizer``.
    """
    import warnings

    method = PROMPT_METHODS.get(config.finetune, key="model.finetune")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # transformers' is_gradient_checkpointing deprecation, via peft
            wrapped = _per_example_prompt_class()(encoder, method.peft_config(config))
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError("model.finetune", f"peft cannot wrap the encoder for {config.finetune!r}: {first[:160]}", "use lora") from error
    for prompt_encoder in wrapped.prompt_encoder.values():
        prompt_encoder.embedding.register_forward_pre_hook(_contiguous_inputs)
    if config.prompt_init == "text":
        text_initialise(wrapped, config.prompt_init_text, tokenizer)
    return wrapped


def text_initialise(wrapped: Any, text: str, tokenizer: Any) -> None:
    """Set the soft prompt to the word embeddings of ``text``'s word pieces, repeated or cut to the prompt's length.

    Unlike peft's ``prompt_tuning_init = "TEXT"``, which tokenizes with the special tokens (a BERT prompt would start
    with ``[CLS]`` and end with ``[SEP]``, ahead of the input's own), only the phrase's own word pieces are used.
    """
    import torch

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        from secure_ffm.errors import ConfigError

        raise ConfigError("model.prompt_init_text", f"{text!r} has no word pieces in the tokenizer", "give a phrase of words")
    weight = wrapped.prompt_encoder[wrapped.active_adapter].embedding.weight
    count = weight.shape[0]
    repeated = (ids * (count // len(ids) + 1))[:count]
    with torch.no_grad():
        weight.copy_(wrapped.word_embeddings.weight[torch.tensor(repeated)].to(weight.dtype))


def _contiguous_inputs(module: Any, inputs: tuple[Any, ...]) -> tuple[Any, ...]:
    """Forward pre-hook of the prompt embedding: its virtual token ids as a contiguous tensor.

    peft expands one row of ids over the batch (a stride-0 view); Opacus' ghost-clipping norm of an embedding layer
    ``view``s the ids, which a stride-0 tensor refuses. Opacus' hooks record the inputs after this pre-hook.
    """
    return tuple(value.contiguous() if hasattr(value, "contiguous") else value for value in inputs)


_PER_EXAMPLE_PROMPT: type | None = None


def _per_example_prompt_class() -> type:
    """:class:`PerExamplePromptModel`, defined on first use (peft is imported lazily)."""
    global _PER_EXAMPLE_PROMPT
    if _PER_EXAMPLE_PROMPT is None:
        from peft import PeftModelForFeatureExtraction, PeftType

        class PerExamplePromptModel(PeftModelForFeatureExtraction):
            """peft's feature-extraction model whose prepended prompt is computed once per example.

            In training mode peft 0.21 computes the soft prompt (``prompt``) or the prompt encoder's output
            (``p-tuning``) from ONE row of virtual token ids and repeats it over the batch (peft issue 2043, a speed-up).
            Opacus' hooks then see a batch of 1 at the prompt embedding and cannot give per-sample gradients (DP-SGD
            fails to stack them). Here the virtual token ids are expanded to the batch, so every example has its own
            path to the prompt parameters; the forward values are the same. ``prefix`` already expands them.
            """

            def get_prompt(self, batch_size: int, task_ids: Any = None, max_cache_len: int | None = None) -> Any:
                config = self.active_peft_config
                if config.peft_type in (PeftType.PROMPT_TUNING, PeftType.P_TUNING) and not config.inference_mode:
                    encoder = self.prompt_encoder[self.active_adapter]
                    tokens = self.prompt_tokens[self.active_adapter].to(encoder.embedding.weight.device)
                    return encoder(tokens.unsqueeze(0).expand(batch_size, -1))
                return super().get_prompt(batch_size, task_ids=task_ids, max_cache_len=max_cache_len)

        PerExamplePromptModel.__module__ = __name__
        PerExamplePromptModel.__qualname__ = "PerExamplePromptModel"
        _PER_EXAMPLE_PROMPT = PerExamplePromptModel
    return _PER_EXAMPLE_PROMPT


def __getattr__(name: str) -> Any:
    """``PerExamplePromptModel`` resolves lazily (pickling and deep copies find the class by its module and name)."""
    if name == "PerExamplePromptModel":
        return _per_example_prompt_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
