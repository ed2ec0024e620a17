"""The clients' local optimizers: torch's SGD, Adam and AdamW updates without ``torch.optim.Optimizer``.

``torch.optim.Optimizer``'s methods (``add_param_group`` in the constructor, ``zero_grad``, ``step``) import
``torch._dynamo`` on first use: about a second of start-up before the first client trains, as long as importing torch
itself (measured on this project's machine). A client builds its optimizer afresh every round and only ever steps it,
so :class:`LocalOptimizer` keeps the per-parameter state itself and calls the same functional cores the torch classes
call (``torch.optim.sgd.sgd``, ``torch.optim.adam.adam``) with the same arguments and defaults: its steps are bitwise
those of ``torch.optim.SGD`` / ``Adam`` / ``AdamW`` (tested). Code that needs a real ``torch.optim.Optimizer`` (Opacus'
DP-SGD wrapper) still builds one with :func:`torch_optimizer`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim import adam as _adam
from torch.optim import sgd as _sgd

from secure_ffm.config import ClientConfig

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
"""torch.optim.Adam's and AdamW's defaults, which the project does not change."""


def _scalar_dtype() -> torch.dtype:
    """torch.optim's dtype of Adam's step count (``torch.optim.optimizer._get_scalar_dtype``)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class LocalOptimizer:
    """``client.optimizer`` over ``params``: ``zero_grad()`` and ``step()``, numerically torch.optim's (see module doc)."""

    def __init__(self, params: list[torch.nn.Parameter], config: ClientConfig) -> None:
        if config.optimizer not in ("sgd", "adam", "adamw"):
            raise ValueError(f"unknown optimizer {config.optimizer!r}")
        self.params = list(params)
        self.kind = config.optimizer
        self.lr = float(config.lr)
        self.momentum = float(config.momentum) if config.optimizer == "sgd" else 0.0
        self.weight_decay = float(config.weight_decay)
        self.state: dict[torch.nn.Parameter, dict[str, Any]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        params = [p for p in self.params if p.grad is not None]
        grads = [p.grad for p in params]
        if self.kind == "sgd":
            self._sgd(params, grads)  # type: ignore[arg-type]
        else:
            self._adam(params, grads)  # type: ignore[arg-type]

    def _sgd(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        buffers = [self.state.get(p, {}).get("momentum_buffer") for p in params]
        _sgd.sgd(
            params,
            grads,
            buffers,
            weight_decay=self.weight_decay,
            momentum=self.momentum,
            lr=self.lr,
            dampening=0.0,
            nesterov=False,
            maximize=False,
            has_sparse_grad=False,
            foreach=None,
            fused=None,
            grad_scale=None,
            found_inf=None,
        )
        if self.momentum != 0:
            for p, buffer in zip(params, buffers, strict=True):
                self.state.setdefault(p, {})["momentum_buffer"] = buffer

    def _adam(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        for p in params:
            if p not in self.state:
                self.state[p] = {
                    "step": torch.tensor(0.0, dtype=_scalar_dtype()),
                    "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                    "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                }
        states = [self.state[p] for p in params]
        _adam.adam(
            params,
            grads,
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [],
            [s["step"] for s in states],
            amsgrad=False,
            has_complex=any(torch.is_complex(p) for p in params),
            beta1=ADAM_BETAS[0],
            beta2=ADAM_BETAS[1],
            lr=self.lr,
            weight_decay=self.weight_decay,
            eps=ADAM_EPS,
            maximize=False,
            foreach=None,
            capturable=False,
            differentiable=False,
            fused=None,
            grad_scale=None,
            found_inf=None,
            decoupled_weight_decay=self.kind == "adamw",
        )


def torch_optimizer(params: list[torch.nn.Parameter], config: ClientConfig) -> torch.optim.Optimizer:
    """The same optimizer as a ``torch.optim.Optimizer`` (for wrappers that need one, e.g. Opacus' DP optimizer)."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
