"""One DP-SGD step on a copy of a prepared run's model, for the tests of the step's clipping and noise."""

import copy

import numpy as np
import torch

from secure_ffm.privacy.dp_sgd import DPStep
from secure_ffm.privacy.noise import NoiseStream


def one_dp_step(
    prepared,
    *,
    mode: str,
    noise_multiplier: float,
    max_grad_norm: float,
    size: int,
    stream: NoiseStream,
    max_physical_batch_size: int = 0,
    noise_only: bool = False,
    generator: torch.Generator | None = None,
    extra_gradient=None,
    batch=None,
):
    """The trained parameters after one DP step (SGD, lr 1) on the first ``size`` private examples (an empty batch's
    noise-only step with ``noise_only``), and the loss the step reports (None for a noise-only step). ``generator``:
    build the batch with the model's training batch (augmentations drawn from it) instead of the plain one;
    ``extra_gradient(params)`` is the step's post-privatization hook (FedProx's term), given the copy's parameters;
    ``batch``: step on this batch instead (``size`` stays the expected batch size the sum is divided by)."""
    model = copy.deepcopy(prepared.model)
    model.module.train()
    params = [p for _, p in model.trainable_named_parameters()]
    stepper = DPStep(
        model,
        torch.optim.SGD(params, lr=1.0),
        mode=mode,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=size,
        noise=stream,
        max_physical_batch_size=max_physical_batch_size,
    )
    loss = None
    extra = (lambda: extra_gradient(params)) if extra_gradient is not None else None
    try:
        if noise_only:
            stepper.noise_only_step(extra_gradient=extra)
        elif batch is not None:
            loss = stepper.step(batch, extra_gradient=extra)
        elif generator is not None:
            loss = stepper.step(
                model.make_training_batch(prepared.encoded_private, np.arange(size), generator=generator), extra_gradient=extra
            )
        else:
            loss = stepper.step(model.make_batch(prepared.encoded_private, np.arange(size)), extra_gradient=extra)
    finally:
        stepper.close()
    return {name: p.detach().clone() for name, p in model.trainable_named_parameters()}, loss
