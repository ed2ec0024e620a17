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
):
    """The trained parameters after one DP step (SGD, lr 1) on the first ``size`` private examples (an empty batch's
    noise-only step with ``noise_only``), and the loss the step reports (None for a noise-only step). ``generator``:
    build the batch with the model's training batch (augmentations drawn from it) instead of the plain one."""
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
    try:
        if noise_only:
            stepper.noise_only_step()
        elif generator is not None:
            loss = stepper.step(model.make_training_batch(prepared.encoded_private, np.arange(size), generator=generator))
        else:
            loss = stepper.step(model.make_batch(prepared.encoded_private, np.arange(size)))
    finally:
        stepper.close()
    return {name: p.detach().clone() for name, p in model.trainable_named_parameters()}, loss
