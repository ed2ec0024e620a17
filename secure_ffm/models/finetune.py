"""Which parameters a model trains (and therefore sends): ``full``, ``head``, ``lora``, or a prompt mode.

The trainable parameters are the wire format of a client update, so this module
fixes them once at build time through ``requires_grad``; everything else reads
them from :meth:`FederatedModel.trainable_named_parameters`.

LoRA (Hu et al., arXiv 2106.09685) is injected with peft's
``inject_adapter_in_model``, which rewrites the target layers in place and keeps
the host module's own parameter names, so the adapters are named e.g.
``encoder.encoder.layer.0.attention.self.query.lora_A.default.weight`` on every
build. The adapters are plain ``nn.Linear`` layers, which Opacus can compute
per-sample gradients for.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from secure_ffm.config import ModelConfig
from secure_ffm.errors import ConfigError
from secure_ffm.models.prompt import PROMPT_METHODS, PROMPT_PARAMETER_MARKER
from secure_ffm.registry import nearest

LORA_MARKER = "lora_"
"""Every LoRA adapter parameter's name contains this."""


def short_reason(error: BaseException, limit: int = 160) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_lora_targets(adapted: nn.Module, targets: tuple[str, ...], *, what: str) -> None:
    """Raise ConfigError unless every target names a module of ``adapted``.

    A target matches like peft's list form: the module's full dotted name, or its
    last component(s) (``"query"`` matches ``encoder.layer.0.attention.self.query``).
    """
    modules = [(name, module) for name, module in adapted.named_modules() if name]
    linear_leaves = sorted({name.rsplit(".", 1)[-1] for name, module in modules if isinstance(module, nn.Linear)})
    examples = f"Linear layers of {what}: {', '.join(linear_leaves[:12]) or 'none'}"
    for target in targets:
        matched = [module for name, module in modules if name == target or name.endswith("." + target)]
        if not matched:
            hint = nearest(target, linear_leaves)
            fix = f"did you mean {hint!r}?" if hint else examples
            raise ConfigError("model.lora_target_modules", f"no module of {what} is called {target!r}", fix)
        if not any(_adaptable(module) for module in matched):
            kind = type(matched[0]).__name__
            raise ConfigError("model.lora_target_modules", f"{target!r} is a {kind}, not a layer LoRA can adapt", examples)


def _adaptable(module: nn.Module) -> bool:
    """Layer types that peft's LoRA wraps (``Conv1D`` is transformers' GPT-2 style linear layer)."""
    return isinstance(module, nn.Linear | nn.Embedding | nn.Conv1d | nn.Conv2d | nn.Conv3d) or type(module).__name__ == "Conv1D"


def lora_config(config: ModelConfig, **extra: Any) -> Any:
    """peft's ``LoraConfig`` of the ``[model]`` section's ``lora_*`` keys (``extra``: more ``LoraConfig`` fields)."""
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_target_modules),
        bias="none",
        **extra,
    )


def inject_lora(adapted: nn.Module, config: ModelConfig, *, what: str) -> None:
    """Add LoRA adapters (``config.lora_*``) in place to the target layers of ``adapted``."""
    check_lora_targets(adapted, config.lora_target_modules, what=what)
    from peft import inject_adapter_in_model

    lora = lora_config(config)
    try:
        inject_adapter_in_model(lora, adapted)
    except ValueError as error:  # e.g. a target that is not a Linear/Embedding/Conv layer
        raise ConfigError(
            "model.lora_target_modules",
            f"cannot adapt {list(config.lora_target_modules)} of {what}: {short_reason(error)}",
            "name Linear layers, e.g. query and value",
        ) from error


def configure_finetune(module: nn.Module, config: ModelConfig, *, head: nn.Module, adapted: nn.Module, what: str) -> None:
    """Set ``requires_grad`` on ``module`` for ``config.finetune``.

    ``full`` trains every parameter; ``head`` only ``head``; ``lora`` injects
    adapters into ``adapted`` (a submodule of ``module``) and trains them and ``head``; a prompt mode
    (:mod:`secure_ffm.models.prompt`, ``adapted`` already wrapped by peft) trains the prompt parameters and ``head``.
    """
    if config.finetune in PROMPT_METHODS:
        module.requires_grad_(False)
        for name, param in adapted.named_parameters():
            if PROMPT_PARAMETER_MARKER in name:
                param.requires_grad_(True)
        head.requires_grad_(True)
        return
    if config.finetune == "full":
        module.requires_grad_(True)
        return
    if config.finetune == "lora":
        inject_lora(adapted, config, what=what)
    module.requires_grad_(False)
    if config.finetune == "lora":
        for name, param in adapted.named_parameters():
            if LORA_MARKER in name:
                param.requires_grad_(True)
    head.requires_grad_(True)
