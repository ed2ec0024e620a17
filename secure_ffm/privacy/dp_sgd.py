"""Sample-level DP-SGD inside every client's local training, with Opacus.

DP-SGD (Abadi et al., CCS 2016): every step samples a Poisson batch (each example
independently with probability q), clips each example's gradient to L2 norm
``max_grad_norm``, sums, adds N(0, (z * max_grad_norm)^2) noise and divides by the
expected batch size. Per-sample gradients come from Opacus hooks, or with ghost
clipping (Li et al., ICLR 2022; Bu et al., 2022) only their norms.

The budget covers the whole federated run (arXiv 2305.11414 section 4 discusses why
per-round budgets are misleading): each client's noise multiplier is calibrated up
front from the local steps it is planned to take over all rounds, it keeps its own
:class:`~secure_ffm.privacy.accounting.PrivacyLedger` in its checkpointed state, and
it declines a round whose steps would take it over its target ε.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from secure_ffm.config import ClientConfig, Config, PrivacyConfig
from secure_ffm.data.base import FederatedData
from secure_ffm.engine.optimizers import torch_optimizer
from secure_ffm.engine.schedule import federated_rounds
from secure_ffm.engine.training import ClientDeclined, LocalExtras, LocalTrainer, TrainResult
from secure_ffm.engine.wire import NamedArrays, Scalar
from secure_ffm.errors import ConfigError
from secure_ffm.models.base import Batch, EncodedData, FederatedModel
from secure_ffm.models.objectives import Objective
from secure_ffm.privacy import accounting
from secure_ffm.privacy.accounting import GaussianSteps, PrivacyLedger, rounds_that_fit
from secure_ffm.privacy.bookkeeping import unsupported_layer
from secure_ffm.privacy.mechanisms import (
    PrivacyMechanism,
    extension_refused,
    node_restart_fields,
    plan_header,
    planned_federated_rounds,
    spread,
)
from secure_ffm.privacy.noise import DP_SGD_NOISE, DP_SGD_SAMPLING, NoisePolicy, NoiseStream, PrivateRandomness

log = logging.getLogger(__name__)

#: The planner's output suggests privacy.max_physical_batch_size above this expected batch size.
LARGE_BATCH_HINT = 256

#: Relative slack when comparing a ledger's ε with the target (float noise in the accountant).
EPSILON_SLACK = 1e-9


@dataclass(frozen=True)
class ClientDPPlan:
    """One client's DP-SGD parameters, fixed before training."""

    num_examples: int
    sample_rate: float
    steps_per_round: int
    planned_steps: int
    delta: float
    noise_multiplier: float
    planned_epsilon: float


def sample_rate(num_examples: int, batch_size: int) -> float:
    """Poisson sampling rate q = B / n (capped at 1)."""
    return min(1.0, batch_size / num_examples)


def steps_per_round(num_examples: int, client: ClientConfig) -> int:
    """Local DP-SGD steps per round: ``local_steps``, else ``local_epochs`` times n / B (Opacus' epoch length)."""
    if client.local_steps > 0:
        return client.local_steps
    return client.local_epochs * max(1, round(num_examples / client.batch_size))


Calibration = tuple[float, float, float, int, str]
"""What a calibration depends on: ``(target ε, δ, q, steps, accountant)``."""

_CALIBRATED: dict[Calibration, tuple[float, float]] = {}
"""Memoised calibrations: ``(z, ε)`` by :data:`Calibration` (a pure function of it)."""


def _calibrate(key: Calibration) -> tuple[float, float]:
    target, delta, q, steps, accountant = key
    z = accounting.calibrate_noise_multiplier(target_epsilon=target, delta=delta, sample_rate=q, steps=steps, accountant=accountant)
    epsilon = accounting.compute_epsilon([GaussianSteps(z, q, steps)], accountant=accountant, delta=delta)
    return z, epsilon


def _calibrated(key: Calibration) -> tuple[float, float]:
    if key not in _CALIBRATED:
        _CALIBRATED[key] = _calibrate(key)
    return _CALIBRATED[key]


def _calibrate_or_none(key: Calibration) -> tuple[float, float] | None:
    """A forked child's calibration; None when it fails (the run's process then calibrates it itself and raises the
    error, a :class:`ConfigError` naming the key, as a serial run would)."""
    try:
        return _calibrate(key)
    except Exception:  # noqa: BLE001 - reported by the run's process, which repeats the calibration
        return None


def calibration_key(num_examples: int, client: ClientConfig, privacy: PrivacyConfig, planned_rounds: int) -> Calibration:
    """The calibration :func:`plan_client` asks for (its memo's key)."""
    q = sample_rate(num_examples, client.batch_size)
    steps = steps_per_round(num_examples, client) * planned_rounds
    return (privacy.target_epsilon, privacy.delta or accounting.default_delta(num_examples), q, steps, privacy.accountant)


def calibration_processes() -> int:
    """How many processes :func:`plan_clients` calibrates in: the cores this process may run on (Linux, where a child
    is forked; 1 elsewhere, and in a process that has loaded gRPC, as Flower's do). ``SECURE_FFM_PLAN_PROCESSES``
    overrides it."""
    override = os.environ.get("SECURE_FFM_PLAN_PROCESSES", "").strip()
    if override:
        try:
            return max(1, int(override))
        except ValueError:
            raise ConfigError(
                "SECURE_FFM_PLAN_PROCESSES", f"must be a whole number of processes, got {override!r}", "unset it or use e.g. 2"
            ) from None
    if sys.platform != "linux" or "grpc" in sys.modules:  # gRPC (a Flower process) is not safe to fork while its threads run
        return 1
    return len(os.sched_getaffinity(0))


def plan_clients(
    sizes: Sequence[int], *, client: ClientConfig, privacy: PrivacyConfig, planned_rounds: int, processes: int | None = None
) -> dict[int, ClientDPPlan]:
    """:func:`plan_client` for each client size, the distinct calibrations spread over ``processes`` forked processes
    (default :func:`calibration_processes`).

    A calibration is a pure function of ``(target ε, δ, q, steps, accountant)`` in NumPy and SciPy, so a child's z is
    the z the run's process would compute, bitwise (tested), and the children use neither torch nor its OpenMP threads
    (which a forked child must not). A run with many client sizes (non-IID partitions) plans in about 1/k of the time on
    k cores: per-client DP-SGD calibrates every distinct size before its first round, a few PRV evaluations each."""
    calibrate_all([calibration_key(n, client, privacy, planned_rounds) for n in sizes], processes=processes)
    return {n: plan_client(n, client=client, privacy=privacy, planned_rounds=planned_rounds) for n in sizes}


def calibrate_all(keys: Sequence[Calibration], *, processes: int | None = None) -> None:
    """Calibrate each of ``keys`` not calibrated yet, spread over ``processes`` forked processes (default
    :func:`calibration_processes`; one process or one key: nothing is done here, the callers calibrate as they ask).
    A key whose calibration fails in a child is left for the caller, who then meets the error itself."""
    missing = sorted({key for key in keys if key not in _CALIBRATED})
    workers = min(len(missing), calibration_processes() if processes is None else processes)
    if workers > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = pool.map(_calibrate_or_none, missing, chunksize=1)
        for key, result in zip(missing, results, strict=True):
            if result is not None:
                _CALIBRATED[key] = result


def plan_client(num_examples: int, *, client: ClientConfig, privacy: PrivacyConfig, planned_rounds: int) -> ClientDPPlan:
    """Calibrate a client's noise multiplier so that its planned steps spend exactly (not more than) the target."""
    key = calibration_key(num_examples, client, privacy, planned_rounds)
    _, delta, q, steps, _ = key
    z, epsilon = _calibrated(key)
    return ClientDPPlan(num_examples, q, steps_per_round(num_examples, client), steps, delta, z, epsilon)


def ghost_supported(module: nn.Module) -> bool:
    """True when every layer that owns a trainable parameter has an Opacus ghost-clipping norm sampler
    (the others fall back to per-sample gradients inside ghost clipping)."""
    from opacus.grad_sample import GradSampleModuleFastGradientClipping

    samplers = GradSampleModuleFastGradientClipping.NORM_SAMPLERS
    for sub in module.modules():
        if any(p.requires_grad for p in sub.parameters(recurse=False)) and type(sub) not in samplers:
            return False
    return True


#: Below this share of trainable parameters, ``auto`` picks per-sample gradients (hooks).
PARAMETER_EFFICIENT_SHARE = 0.1


def shared_trainable_parameters(module: nn.Module) -> list[str]:
    """Names of trainable parameters that more than one layer uses (e.g. an MLM decoder tied to the word embeddings).

    Ghost clipping computes an example's gradient norm layer by layer and adds the squares, which for a shared
    parameter misses the cross term of ``||g1 + g2||``: the clipped norm could exceed ``max_grad_norm`` by up to
    sqrt(2) and the privacy guarantee would not hold. Per-sample gradients (hooks) sum the layers' contributions
    before clipping, which is exact."""
    owners: dict[int, list[str]] = {}
    for layer_name, layer in module.named_modules():
        for name, param in layer.named_parameters(recurse=False):
            if param.requires_grad:
                owners.setdefault(id(param), []).append(f"{layer_name}.{name}" if layer_name else name)
    return [names[0] for names in owners.values() if len(names) > 1]


def auto_grad_sample_mode(model: FederatedModel) -> str:
    """``hooks`` for parameter-efficient fine-tuning (under 10% of parameters trained) and for models that share a
    trained parameter between layers (:func:`shared_trainable_parameters`); else ``bookkeeping`` when every trained
    layer is a ``Linear`` or ``Conv2d`` (:func:`~secure_ffm.privacy.bookkeeping.bookkeeping_supported`), else ``ghost``.

    Ghost clipping avoids materializing per-sample gradients but pays a second backward
    pass through the whole network; book-keeping (Bu et al., ICML 2023) needs one backward pass
    and no parameter gradients from it; per-sample gradients of small adapters are cheap.
    benchmarks/dp_overhead.py measures the modes on MiniLM LoRA (hooks the cheapest) and on the
    Fashion-MNIST CNN with all parameters trained (book-keeping the cheapest, then ghost). Full fine-tuning of a
    transformer with hooks would also hold batch x parameters floats of per-sample gradients (2.9 GB for MiniLM at batch 32).
    """
    from secure_ffm.privacy.bookkeeping import bookkeeping_supported

    share = model.trainable_parameter_count() / max(model.total_parameter_count(), 1)
    if share < PARAMETER_EFFICIENT_SHARE or shared_trainable_parameters(model.module):
        return "hooks"
    return "bookkeeping" if bookkeeping_supported(model.module) else "ghost"


def nchw_convolution_inputs(module: nn.Module) -> list[Any]:
    """Forward pre-hooks (their handles) that give every ``Conv2d`` of ``module`` its input in the contiguous NCHW layout.

    Opacus' per-sample convolution gradients and ghost norms (``opacus.utils.tensor_utils.unfold2d``, Opacus 1.5.x)
    build the patch view with NCHW strides whatever the input's layout, so a channels-last input (the project's CNNs run
    in that layout from conv1's output on, secure_ffm.models.vision) gets silently wrong per-example gradients: conv2's
    were off by 0.12 where they are about 0.05 (the test replaying distributed DP-SGD without noise caught it). Wherever
    Opacus' hooks wrap a model, its convolutions therefore read NCHW inputs, and Opacus records those. Book-keeping
    (secure_ffm.privacy.bookkeeping) reads the tensors' own strides and needs no such hook.
    """

    def to_nchw(layer: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and x.dim() == 4 and not x.is_contiguous():
            return (x.contiguous(), *args[1:])
        return None

    return [layer.register_forward_pre_hook(to_nchw) for layer in module.modules() if isinstance(layer, nn.Conv2d)]


def noise_like(stream: NoiseStream, tensors: list[torch.Tensor], std: float) -> list[torch.Tensor]:
    """N(0, std^2) noise of each tensor's shape and dtype from ``stream``, the noise of one DP-SGD step.

    float32 noise for all float32 tensors comes from one :meth:`NoiseStream.normal_float32` draw, split in order;
    a tensor of another dtype gets the stream's float64 Gaussians (:meth:`NoiseStream.normal`) cast to its dtype.
    """
    float32 = [t for t in tensors if t.dtype == torch.float32]
    shared = stream.normal_float32(sum(t.numel() for t in float32), std) if float32 else None
    out, offset = [], 0
    for t in tensors:
        if t.dtype == torch.float32:
            out.append(shared[offset : offset + t.numel()].view(t.shape))  # type: ignore[index]
            offset += t.numel()
        else:
            out.append(torch.from_numpy(stream.normal(tuple(t.shape), std)).to(t.dtype))
    return out


def _secret_noise_optimizer(base: type, *, per_sample_clipping: bool) -> type:
    """``base`` (an Opacus DP optimizer) drawing its noise from a :class:`NoiseStream` instead of torch's generator.

    Opacus draws noise from a ``torch.Generator`` (a Mersenne Twister with a 64-bit seed) or, in its secure mode,
    from torchcsprng, which has no build for this torch. The stream here is keyed by the client's secret
    (secure_ffm.privacy.noise): an AES-CTR CSPRNG with the sum-of-four-Gaussians mitigation by default.
    """
    from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

    def add_noise(self: Any) -> None:
        multiplier = getattr(self, "_adjusted_noise_multiplier", self.noise_multiplier)
        std = multiplier * self.max_grad_norm
        for p in self.params:
            _check_processed_flag(p.summed_grad)
        for p, noise in zip(self.params, noise_like(self.noise_stream, [p.summed_grad for p in self.params], std), strict=True):
            p.grad = (p.summed_grad + noise).view_as(p)
            _mark_as_processed(p.summed_grad)

    members: dict[str, Any] = {"add_noise": add_noise, "noise_stream": None}
    if per_sample_clipping:  # the hooks' optimizer clips materialized per-sample gradients (ghost clipping's has none)
        from secure_ffm.privacy.bookkeeping import CLIP_EPSILON, select_rows

        def clip_and_accumulate(self: Any) -> None:
            # Opacus' clip_and_accumulate (per-sample hooks), with one change: an example whose gradient norm is not
            # finite contributes nothing, as in book-keeping (secure_ffm.privacy.bookkeeping: a crafted model must not
            # turn one example's NaN into the whole update's). The per-sample gradients are read once (Opacus reads
            # them three times); checking them beforehand instead cost 63 ms a CNN step (80 against 143 ms, batch 64)
            samples = self.grad_samples
            if not len(samples[0]):
                base.clip_and_accumulate(self)
                return
            norms = torch.stack([g.reshape(len(g), -1).norm(2, dim=-1) for g in samples], dim=1).norm(2, dim=1)
            factors = (self.max_grad_norm / (norms + CLIP_EPSILON)).clamp(max=1.0)
            finite = torch.isfinite(norms)
            if not bool(finite.all()):
                factors = select_rows(finite, factors)
                samples = [select_rows(finite, g) for g in samples]
            for p, grad_sample in zip(self.params, samples, strict=True):
                _check_processed_flag(p.grad_sample)
                grad = torch.einsum("i,i...", factors.to(p.dtype), grad_sample.to(p.dtype))
                if p.summed_grad is not None:
                    p.summed_grad += grad
                else:
                    p.summed_grad = grad
                _mark_as_processed(p.grad_sample)

        members["clip_and_accumulate"] = clip_and_accumulate
    return type(f"SecretNoise{base.__name__}", (base,), members)


class _ObjectiveCriterion(nn.Module):
    """The model objective as the criterion of Opacus' ghost clipping, which sets ``reduction = "none"`` to get one
    loss per example (for MLM each sequence's mean masked-token loss: the unit of privacy is the example)."""

    def __init__(self, objective: Objective) -> None:
        super().__init__()
        self.objective = objective
        self.reduction = "mean"

    def forward(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        per_example = self.objective.per_example_loss(outputs, labels)
        return per_example if self.reduction == "none" else per_example.mean()


def physical_chunks(batch: Batch, max_size: int) -> list[Batch]:
    """``batch`` split into consecutive chunks of at most ``max_size`` examples (sizes as even as possible, as
    Opacus' ``BatchSplittingSampler``); ``[batch]`` when ``max_size`` is 0 or the batch fits."""
    n = len(batch)
    if max_size <= 0 or n <= max_size:
        return [batch]
    parts = np.array_split(np.arange(n), -(-n // max_size))
    return [Batch(inputs={k: v[p[0] : p[-1] + 1] for k, v in batch.inputs.items()}, labels=batch.labels[p[0] : p[-1] + 1]) for p in parts]


class DPStep:
    """DP-SGD optimizer steps on a model, with Opacus hooks (per-sample gradients), ghost clipping or book-keeping.

    ``step(batch)`` clips each example's gradient to ``max_grad_norm``, sums, adds
    N(0, (z * max_grad_norm)^2) and divides by ``expected_batch_size`` (Abadi et al.,
    CCS 2016), then applies the wrapped optimizer. ``noise_only_step()`` is the step
    of an empty Poisson batch. ``close()`` removes every hook and attribute,
    leaving the model as it was.

    Modes (:data:`GRAD_SAMPLE_MODES`): ``hooks`` (Opacus' ``GradSampleModule``), ``ghost`` (Opacus'
    ``GradSampleModuleFastGradientClipping``) and ``bookkeeping``
    (:class:`~secure_ffm.privacy.bookkeeping.BookkeepingClipper`: one backward pass, for models of ``Linear`` and
    ``Conv2d`` layers). All three clip with Opacus' factor ``min(1, C / (norm + 1e-6))`` and draw the noise from
    ``noise`` parameter by parameter in the same order, so with one stream they give the same update up to float
    summation order.

    Virtual steps: with ``max_physical_batch_size`` > 0 a larger batch goes through the
    model in physical chunks of at most that many examples (as
    :class:`opacus.utils.batch_memory_manager.BatchMemoryManager` does). Every chunk but
    the last is signalled to the Opacus optimizer as a skipped step
    (``signal_skip_step(do_skip=True)``): its examples are clipped and added to
    ``summed_grad`` (per-sample gradients with hooks, the ghost-clipped sum with ghost
    clipping) and the per-sample state is freed; the last chunk adds the one noise draw
    of the logical step and steps. Book-keeping sums every chunk's clipped gradients and draws the
    noise once after the last. The sum of clipped gradients, the noise and hence the
    privacy analysis are those of the unchunked step; only the peak memory (activations
    and per-sample gradients of one chunk) and float summation order change.
    """

    def __init__(
        self,
        model: FederatedModel,
        optimizer: torch.optim.Optimizer,
        *,
        mode: str,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: int,
        noise: NoiseStream,
        max_physical_batch_size: int = 0,
    ) -> None:
        self.model = model
        self.params = [p for _, p in model.trainable_named_parameters()]
        self.base = optimizer
        self.noise_multiplier = noise_multiplier
        self.max_grad_norm = max_grad_norm
        self.expected_batch_size = expected_batch_size
        self.noise_std = noise_multiplier * max_grad_norm / expected_batch_size
        if max_physical_batch_size < 0:
            raise ValueError(f"max_physical_batch_size must be non-negative, got {max_physical_batch_size}")
        self.max_physical_batch_size = max_physical_batch_size
        if mode not in GRAD_SAMPLE_MODES:
            raise ValueError(f"grad_sample_mode must be one of {', '.join(GRAD_SAMPLE_MODES)}, got {mode!r}")
        if mode in SHARED_PARAMETERS_UNSAFE and (shared := shared_trainable_parameters(model.module)):
            raise ValueError(f"{mode} clipping would under-clip the shared parameter {shared[0]}: use hooks")
        self.mode = mode
        self.criterion: Any = None
        self.wrapped: Any = None
        self.optimizer: Any = None
        self.clipper: Any = None
        self._layout_hooks: list[Any] = []
        GRAD_SAMPLE_MODES[mode].setup(self)
        self.noise = noise

    @property
    def noise(self) -> NoiseStream:
        """The stream every noise value of this stepper comes from (the Opacus optimizer's too)."""
        return self._noise

    @noise.setter
    def noise(self, stream: NoiseStream) -> None:
        self._noise = stream
        if self.optimizer is not None:
            self.optimizer.noise_stream = stream

    def _setup_opacus(self, ghost: bool) -> None:
        from opacus.grad_sample import GradSampleModule, GradSampleModuleFastGradientClipping
        from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
        from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

        kwargs = dict(
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.max_grad_norm,
            expected_batch_size=self.expected_batch_size,
            loss_reduction="mean",
        )
        if ghost:
            self.wrapped = GradSampleModuleFastGradientClipping(
                self.model.module, batch_first=True, loss_reduction="mean", max_grad_norm=self.max_grad_norm, use_ghost_clipping=True
            )
            self.optimizer = _secret_noise_optimizer(DPOptimizerFastGradientClipping, per_sample_clipping=False)(self.base, **kwargs)
            self.criterion = DPLossFastGradientClipping(self.wrapped, self.optimizer, _ObjectiveCriterion(self.model.objective), "mean")
        else:
            self.wrapped = GradSampleModule(self.model.module, batch_first=True, loss_reduction="mean")
            self.optimizer = _secret_noise_optimizer(DPOptimizer, per_sample_clipping=True)(self.base, **kwargs)
        self._layout_hooks = nchw_convolution_inputs(self.model.module)

    def _setup_bookkeeping(self) -> None:
        from secure_ffm.privacy.bookkeeping import BookkeepingClipper

        self.clipper = BookkeepingClipper(self.model.module, self.params, max_grad_norm=self.max_grad_norm)
        self.wrapped = self.model.module

    def step(self, batch: Batch, *, extra_gradient: Callable[[], None] | None = None) -> float:
        """One private step on ``batch``; ``extra_gradient`` may add data-independent terms after privatization.

        Returns the mean loss over the batch's examples (the size-weighted mean of its chunks' losses)."""
        if self.clipper is not None:
            return self._bookkeeping_step(batch, extra_gradient)
        chunks = physical_chunks(batch, self.max_physical_batch_size)
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            if i > 0:  # after a skipped step Opacus frees the per-sample state and keeps summed_grad
                self.optimizer.zero_grad(set_to_none=True)
            # every chunk's step is queued: Opacus pops one signal per pre_step (a stale True would skip a later step)
            self.optimizer.signal_skip_step(do_skip=not last)
            total += self._backward(chunk) * len(chunk)
            stepped = self.optimizer.pre_step()
            if stepped != last:
                raise RuntimeError(f"Opacus {'stepped' if stepped else 'skipped'} chunk {i + 1} of {len(chunks)} of a virtual step")
        if extra_gradient is not None:
            extra_gradient()
        self.optimizer.original_optimizer.step()
        return total / len(batch)

    def _bookkeeping_step(self, batch: Batch, extra_gradient: Callable[[], None] | None) -> float:
        """:meth:`step` with book-keeping: every chunk's clipped sum accumulates, then one noise draw, as Opacus'
        ``add_noise`` and ``scale_grad`` do it: ``grad = (Σ clipped + N(0, (zC)²)) / expected_batch_size``."""
        self.clipper.reset()
        self.base.zero_grad(set_to_none=True)
        total = 0.0
        objective = self.model.objective
        for chunk in physical_chunks(batch, self.max_physical_batch_size):
            outputs = self.model.module(**chunk.inputs)
            self.clipper.clip_and_accumulate(objective.per_example_loss(outputs, chunk.labels))
            total += float(objective.loss(outputs.detach(), chunk.labels)) * len(chunk)
        std = self.noise_multiplier * self.max_grad_norm
        sums = [self.clipper.clipped_sum(p) for p in self.params]
        for p, summed, noise in zip(self.params, sums, noise_like(self._noise, sums, std), strict=True):
            p.grad = (summed + noise).view_as(p) / self.expected_batch_size
        self.clipper.reset()
        if extra_gradient is not None:
            extra_gradient()
        self.base.step()
        return total / len(batch)

    def _backward(self, batch: Batch) -> float:
        """Forward and backward of one physical batch (per-sample gradients, or ghost clipping's two passes); its mean loss."""
        rng = torch.get_rng_state() if self.criterion is not None else None  # ghost clipping: dropout masks, for a recompute
        outputs = self.wrapped(**batch.inputs)
        with warnings.catch_warnings():
            # the hooks of a trained embedding whose input is token ids (a prompt mode's virtual tokens) fire with no
            # input gradient; Opacus reads the output gradient only, so torch's warning about it is noise
            warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
            if self.criterion is not None:
                self.criterion(outputs, batch.labels).backward()
                self._drop_non_finite_examples(batch, rng)
                return float(self.model.objective.loss(outputs.detach(), batch.labels))
            objective = self.model.objective.loss(outputs, batch.labels)
            objective.backward()
            return float(objective.detach())

    def _drop_non_finite_examples(self, batch: Batch, rng: torch.Tensor) -> None:
        """Ghost clipping: redo the clipped sum without the examples whose gradient norm is not finite.

        Ghost clipping's second backward pass weighs each example's loss by its clip factor; an example whose forward or
        backward overflowed leaves NaN in every parameter's gradient however small its factor (0 x inf), which a crafted
        model can make depend on that example. When the chunk's summed gradient is not finite it is recomputed: the same
        batch shape and the random state of the first forward pass (``rng``: the same dropout masks, so each kept
        example's gradient is the one its clip factor was computed from; a smaller batch would draw other masks and let
        a kept example exceed C), with each non-finite example's inputs and labels replaced by a kept example's and
        weighted 0. The examples with a non-finite norm contribute nothing, as in book-keeping and with per-sample hooks.
        An honest run never gets here (the check reads the first pass's per-example norms, one number an example)."""
        from secure_ffm.privacy.bookkeeping import CLIP_EPSILON, select_rows

        norms = self.wrapped.per_sample_gradient_norms.detach()
        keep = torch.isfinite(norms)
        if bool(keep.all()):
            return
        weights = select_rows(keep, (self.max_grad_norm / (norms + CLIP_EPSILON)).clamp(max=1.0))
        for p in self.params:
            p.grad = torch.zeros_like(p)
        if not bool(keep.any()):
            return
        stand_in = int(torch.nonzero(keep)[0])

        def kept(t: torch.Tensor) -> torch.Tensor:
            return select_rows(keep, t, t[stand_in : stand_in + 1].expand_as(t))

        after = torch.get_rng_state()
        torch.set_rng_state(rng)
        self.wrapped.disable_hooks()
        try:
            outputs = self.wrapped(**{k: kept(v) for k, v in batch.inputs.items()})
            (weights * self.model.objective.per_example_loss(outputs, kept(batch.labels))).sum().backward()
        finally:
            self.wrapped.enable_hooks()
            torch.set_rng_state(after)

    def noise_only_step(self, *, extra_gradient: Callable[[], None] | None = None) -> None:
        """The step of an empty Poisson batch: noise only (the privacy analysis counts it); ``extra_gradient`` as in
        :meth:`step`, so that what follows privatization does not depend on whether the batch was empty."""
        for p, noise in zip(self.params, noise_like(self.noise, self.params, self.noise_std), strict=True):
            p.grad = noise.view_as(p)
        if extra_gradient is not None:
            extra_gradient()
        self.base.step()

    def close(self) -> None:
        if self.clipper is not None:
            self.clipper.close()
            return
        for handle in self._layout_hooks:
            handle.remove()
        self._layout_hooks = []
        self.wrapped.cleanup()
        for p in self.params:
            for attr in ("grad_sample", "summed_grad", "_forward_counter"):
                if hasattr(p, attr):
                    delattr(p, attr)


@dataclass(frozen=True)
class GradSampleMode:
    """How a :class:`DPStep` gets its clipped gradient sums (``setup`` fills in the stepper's machinery)."""

    setup: Callable[[DPStep], None]
    description: str


#: ``privacy.grad_sample_mode`` values other than ``auto``.
GRAD_SAMPLE_MODES: dict[str, GradSampleMode] = {
    "hooks": GradSampleMode(lambda step: step._setup_opacus(ghost=False), "Opacus per-sample gradients"),
    "ghost": GradSampleMode(lambda step: step._setup_opacus(ghost=True), "ghost clipping (Li et al., ICLR 2022)"),
    "bookkeeping": GradSampleMode(DPStep._setup_bookkeeping, "book-keeping, one backward pass (Bu et al., ICML 2023)"),
}

#: Modes that add per-layer squared norms, hence under-clip a parameter that two layers use.
SHARED_PARAMETERS_UNSAFE = ("ghost", "bookkeeping")


class DPSGDTrainer(LocalTrainer):
    """Local DP-SGD with Poisson sampling, a per-client ledger, and a budget it never exceeds."""

    def __init__(self, config: ClientConfig, privacy: PrivacyConfig, *, plan_for: Callable[[int | None, int], ClientDPPlan]) -> None:
        super().__init__(config)
        self.privacy = privacy
        self.plan_for = plan_for
        """``(client id, number of examples) -> plan``: the mechanism's (a resume may restore older plans)."""

    def grad_sample_mode(self, model: FederatedModel) -> str:
        if self.privacy.grad_sample_mode == "auto":
            return auto_grad_sample_mode(model)
        return self.privacy.grad_sample_mode

    def train(
        self,
        model: FederatedModel,
        encoded: EncodedData,
        indices: np.ndarray,
        *,
        fit_config: Mapping[str, Scalar],
        global_parameters: NamedArrays,
        generator: torch.Generator,
        state: MutableMapping[str, Any],
        randomness: PrivateRandomness | None = None,
        extras: LocalExtras | None = None,
    ) -> TrainResult:
        if randomness is None:
            raise ValueError("DP-SGD needs the client's private randomness: its noise and sampling must be secret")
        start = time.perf_counter()
        extras = extras or LocalExtras()
        n = len(indices)
        plan = self.plan_for(extras.client_id, n)
        z, q, c = plan.noise_multiplier, plan.sample_rate, self.privacy.max_grad_norm
        dp_state = dict(state.get("dp_sgd", {}))  # written back once the steps are recorded: a declined or failed round leaves no entry
        ledger = (
            PrivacyLedger.from_json(dp_state["ledger"])
            if "ledger" in dp_state
            else PrivacyLedger(accountant=self.privacy.accountant, delta=plan.delta)
        )
        # on a deployed node, what every run spent on these examples (accounting.NODE_SPEND_KEY): one budget for them all
        would_spend = accounting.budget_ledger(dp_state, ledger).epsilon_if(noise_multiplier=z, sample_rate=q, steps=plan.steps_per_round)
        if would_spend > self.privacy.target_epsilon * (1 + EPSILON_SLACK):
            raise ClientDeclined(
                f"privacy budget: {plan.steps_per_round} more steps would spend ε={would_spend:.3f} > target {self.privacy.target_epsilon}"
                + (" (every run on this node's data together)" if dp_state.get(accounting.NODE_SPEND_KEY) else "")
            )

        named = model.trainable_named_parameters()
        params = [p for _, p in named]
        mu = float(fit_config.get("proximal_mu", 0.0))
        anchors = [torch.from_numpy(global_parameters[name]) for name, _ in named] if mu > 0 else []

        recorded = [0]

        def after_privatization() -> None:
            # the step's gradient is private from here on: recording it, and FedProx's term (which depends on no
            # example), are post-processing
            extras.record(named, recorded[0], noise_variance=stepper.noise_std**2)
            recorded[0] += 1
            if mu > 0:
                for p, a in zip(params, anchors, strict=True):
                    p.grad.add_(mu * (p.detach() - a))

        extra_gradient = after_privatization if (mu > 0 or extras.importance is not None) else None

        stepper = DPStep(
            model,
            torch_optimizer(params, self.config),  # Opacus' DP optimizer wraps a torch.optim.Optimizer
            mode=self.grad_sample_mode(model),
            noise_multiplier=z,
            max_grad_norm=c,
            expected_batch_size=max(1, round(q * n)),
            noise=randomness.stream(DP_SGD_NOISE, ledger.steps),
            max_physical_batch_size=self.privacy.max_physical_batch_size,
        )
        # Poisson sampling from the client's secret: amplification by subsampling assumes the adversary
        # does not know which examples a step used
        sampling = randomness.stream(DP_SGD_SAMPLING, ledger.steps)
        model.module.train()
        total_loss, seen, empty = 0.0, 0, 0
        try:
            for _ in range(plan.steps_per_round):
                chosen = indices[sampling.random(n) < q]
                # an empty Poisson batch is a step like any other, FedProx's term, the importance record and EWC's
                # proximal step included: skipping them (until 2026-12-07) let the trajectory tell that a batch was empty,
                # a function of the secret sample (and of how many examples the client has) that the accounting covers not
                if len(chosen) == 0:
                    stepper.noise_only_step(extra_gradient=extra_gradient)
                    empty += 1
                else:
                    batch = model.make_training_batch(encoded, chosen, generator=generator)
                    loss = stepper.step(batch, extra_gradient=extra_gradient)
                    total_loss += loss * len(chosen)
                    seen += len(chosen)
                if extras.penalty is not None:  # post-processing too: it reads no example
                    extras.penalty.proximal_step(named, self.config.lr)
        finally:
            stepper.close()
        ledger.record(noise_multiplier=z, sample_rate=q, steps=plan.steps_per_round)
        epsilon = ledger.epsilon()
        dp_state.update(
            ledger=ledger.to_json(),
            epsilon=epsilon,
            noise_multiplier=z,
            sample_rate=q,
            delta=plan.delta,
            steps=ledger.steps,
            rounds=int(dp_state.get("rounds", 0)) + 1,
            num_examples=n,
            planned_steps=plan.planned_steps,
            planned_epsilon=plan.planned_epsilon,
        )
        state["dp_sgd"] = dp_state
        return TrainResult(
            num_examples=n,
            steps=plan.steps_per_round,
            train_loss=total_loss / max(seen, 1),
            seconds=time.perf_counter() - start,
            extra={"epsilon": epsilon, "empty_batches": float(empty)},
        )


class DPSGD(PrivacyMechanism):
    """Sample-level (ε, δ)-DP for every client's examples over the whole run."""

    name = "dp-sgd"
    label = "DP-SGD"
    replaces_trainer = True
    client_ledger_key = "dp_sgd"

    @classmethod
    def protections(cls, privacy: PrivacyConfig) -> dict[str, Any]:
        return {**super().protections(privacy), "max_grad_norm": privacy.max_grad_norm}

    def client_noise_multiplier(self, client: int) -> float:
        return float(self.client_plan(client).noise_multiplier)

    def format_plan(self, plan: Mapping[str, Any]) -> str:
        lines = [plan_header(plan)]
        lines.append(
            f"per-client sample-level DP over {plan['planned_rounds']} planned rounds, "
            f"max_grad_norm={self.config.privacy.max_grad_norm}, Poisson sampling at q = batch_size / n"
        )
        if self.data.stages:
            lines.append(
                f"continual run: one z per client for its whole lifetime over {len(self.data.stages)} stages, each stage "
                "sampling at batch_size / (its examples in that stage); n is its lifetime data, steps all of its stages'"
            )
        lines.append(f"{'client':>6} {'n':>7} {'q':>8} {'steps':>7} {'delta':>10} {'z':>8} {'epsilon':>8}")
        for c in plan["clients"]:
            lines.append(
                f"{c['client']:>6} {c['num_examples']:>7} {c['sample_rate']:>8.4f} {c['planned_steps']:>7} "
                f"{c['delta']:>10.3g} {c['noise_multiplier']:>8.4f} {c['planned_epsilon']:>8.4f}"
            )
        z, e = plan["noise_multiplier"], plan["epsilon"]
        lines.append(f"noise multiplier z: min {z['min']:.4f}, median {z['median']:.4f}, max {z['max']:.4f}")
        lines.append(f"ε reached: min {e['min']:.4f}, median {e['median']:.4f}, max {e['max']:.4f} (never above the target)")
        return "\n".join(lines)

    def __init__(self, config: Config, data: FederatedData) -> None:
        super().__init__(config, data)
        privacy = config.privacy
        if privacy.clipping != "flat":
            raise ConfigError(
                "privacy.clipping",
                f'{privacy.clipping!r} is implemented for privacy.mode = "distributed-dp-sgd" only',
                'use "flat" with dp-sgd, or distributed-dp-sgd under secure aggregation',
            )
        self.planned_rounds = planned_federated_rounds(config)
        sizes = sorted({len(ix) for ix in data.client_indices if len(ix)})  # a client without data (another node's) never trains
        for n in sizes:
            reason = accounting.check_delta(privacy.delta, n) if privacy.delta else None
            if reason:
                log.warning("privacy.delta: %s", reason)
        self.sizes = sizes
        self.plans: dict[int, ClientDPPlan] = {}
        self._lifetime: dict[int, tuple[float, float, int, float]] = {}
        self._method: Any = None
        """A continual run's method (its training sizes plan the clients' lifetimes), built on first use."""
        self._make_plans()

    def _make_plans(self) -> None:
        self.plans.clear()
        self._lifetime.clear()
        if self.data.stages:  # a continual run's plans are per client, computed when first asked for
            return
        c = self.config
        self.plans.update(plan_clients(sorted(set(self.sizes)), client=c.client, privacy=c.privacy, planned_rounds=self.planned_rounds))

    def _plan_size(self, num_examples: int) -> ClientDPPlan:
        c = self.config
        return plan_client(num_examples, client=c.client, privacy=c.privacy, planned_rounds=self.planned_rounds)

    def check_model(self, model: FederatedModel) -> None:
        from opacus.validators import ModuleValidator

        errors = ModuleValidator.validate(model.module, strict=False)
        if errors:
            raise ConfigError(
                "model.arch",
                f"{self.config.model.arch} cannot be trained with DP-SGD: {errors[0]}",
                'replace BatchNorm by GroupNorm (opacus.validators.ModuleValidator.fix) or use privacy.mode = "dp-fedavg"',
            )
        shared = shared_trainable_parameters(model.module)
        mode = self.config.privacy.grad_sample_mode
        if shared and mode in SHARED_PARAMETERS_UNSAFE:
            raise ConfigError(
                "privacy.grad_sample_mode",
                f"{mode} clipping cannot clip {shared[0]} exactly: more than one layer uses it (tied weights)",
                'use "hooks" or "auto" (per-sample gradients sum the layers before clipping)',
            )
        if mode == "bookkeeping" and (layer := unsupported_layer(model.module)) is not None:
            raise ConfigError(
                "privacy.grad_sample_mode",
                f"book-keeping clipping covers Linear and Conv2d layers (ungrouped, zero-padded) only, not {layer}",
                'use "auto", "ghost" or "hooks"',
            )

    def trainer(self, base: LocalTrainer) -> LocalTrainer:
        return DPSGDTrainer(self.config.client, self.config.privacy, plan_for=self.plan_for)

    def plan_for(self, client_id: int | None, num_examples: int) -> ClientDPPlan:
        """The plan of a client training on ``num_examples`` examples this round: by size in an ordinary run; in a
        continual run the client's lifetime noise multiplier (:meth:`_lifetime_noise`) at this stage's sampling rate."""
        if not self.data.stages:
            if num_examples not in self.plans:  # a size planned on first use (a client without data on a deployed node)
                self.plans[num_examples] = self._plan_size(num_examples)
            return self.plans[num_examples]
        if client_id is None:
            raise ValueError("a continual run's DP-SGD plan is per client: the trainer must be told which client trains")
        z, delta, planned_steps, planned_epsilon = self._lifetime_noise(client_id)
        c = self.config.client
        return ClientDPPlan(
            num_examples,
            sample_rate(num_examples, c.batch_size),
            steps_per_round(num_examples, c),
            planned_steps,
            delta,
            z,
            planned_epsilon,
        )

    def lifetime_phases(self, client_id: int) -> list[tuple[float, int]]:
        """A continual run's client over its planned rounds: ``(sample rate, steps)`` per stage it has data in."""
        from secure_ffm.continual.methods import build_method

        if self._method is None:  # one instance answers for every client
            self._method = build_method(self.config, self.data)
        method = self._method
        c = self.config.client
        phases, rounds_left = [], self.planned_rounds
        for stage in self.data.stages:
            rounds = min(stage.rounds, rounds_left)
            rounds_left -= rounds
            n = method.training_size(stage, client_id)
            if rounds > 0 and n > 0:
                phases.append((sample_rate(n, c.batch_size), steps_per_round(n, c) * rounds))
        return phases

    def _lifetime_noise(self, client_id: int) -> tuple[float, float, int, float]:
        """``(z, delta, planned steps, planned ε)`` of a continual run's client: one noise multiplier calibrated so that
        its steps over every stage of its planned rounds, composed, spend the target (δ from its lifetime data)."""
        cached = self._lifetime.get(client_id)
        if cached is not None:
            return cached
        p = self.config.privacy
        delta = p.delta or accounting.default_delta(max(1, len(self.data.client_indices[client_id])))
        phases = self.lifetime_phases(client_id)
        if not phases:  # a client with no data in any stage never trains
            result = (float("inf"), delta, 0, 0.0)
        else:
            z = accounting.calibrate_noise_multiplier_phases(
                target_epsilon=p.target_epsilon, delta=delta, phases=phases, accountant=p.accountant
            )
            epsilon = accounting.compute_epsilon([GaussianSteps(z, q, t) for q, t in phases], accountant=p.accountant, delta=delta)
            result = (z, delta, sum(t for _, t in phases), epsilon)
        self._lifetime[client_id] = result
        return result

    def client_plan(self, client_id: int) -> ClientDPPlan:
        """The client's plan as the ledger and ``privacy-plan`` report it (in a continual run: over its lifetime data)."""
        return self.plan_for(client_id, len(self.data.client_indices[client_id]))

    def round_metrics(self, round: int, client_states: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
        spent = [s["dp_sgd"]["epsilon"] for s in client_states.values() if "dp_sgd" in s]
        zs = [s["dp_sgd"]["noise_multiplier"] for s in client_states.values() if "dp_sgd" in s]
        eps = spread(spent)
        return {
            "epsilon_min": eps["min"],
            "epsilon_median": eps["median"],
            "epsilon_max": eps["max"],
            "noise_multiplier": spread(zs)["median"],
        }

    def ledger(self, client_states: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
        p = self.config.privacy
        clients = []
        for k in range(self.data.num_clients):
            plan = self.client_plan(k)
            dp = client_states.get(k, {}).get("dp_sgd", {})
            # what the client recorded when it trained (a deployed node's report: its own data's plan), else the plan here
            clients.append(
                {
                    "client": k,
                    "num_examples": int(dp.get("num_examples", plan.num_examples)),
                    "epsilon": float(dp.get("epsilon", 0.0)),
                    "delta": float(dp.get("delta", plan.delta)),
                    "steps": int(dp.get("steps", 0)),
                    "rounds": int(dp.get("rounds", 0)),
                    "sample_rate": float(dp.get("sample_rate", plan.sample_rate)),
                    "noise_multiplier": float(dp.get("noise_multiplier", plan.noise_multiplier)),
                    "planned_steps": int(dp.get("planned_steps", plan.planned_steps)),
                    "planned_epsilon": float(dp.get("planned_epsilon", plan.planned_epsilon)),
                    "history": dp.get("ledger", {}).get("history", []),
                    **node_restart_fields(dp),
                }
            )
        eps = spread([c["epsilon"] for c in clients if c["rounds"] > 0])
        return {
            "mechanism": "dp-sgd",
            "level": "sample",
            "accountant": p.accountant,
            "target_epsilon": p.target_epsilon,
            "delta": p.delta or "1/(10 n) per client",
            "max_grad_norm": p.max_grad_norm,
            "sampling": "poisson",
            "planned_rounds": self.planned_rounds,
            "epsilon": eps,
            "clients": clients,
            "noise": NoisePolicy.from_config(self.config).describe(),
        }

    def check_budget(self, *, completed_rounds: int, total_rounds: int, client_states: Mapping[int, Mapping[str, Any]]) -> None:
        if self.config.privacy.planned_rounds:  # clients budgeted for fewer rounds than the run decline when spent
            return
        if self.data.stages:  # a continual run's rounds are its stages' (server.rounds cannot grow): its plan holds
            return
        remaining = federated_rounds(self.config.ffm, start=completed_rounds, stop=total_rounds)  # public units spend nothing
        if remaining <= 0:
            return
        # planned_rounds = 0 promises that no client is ever skipped: every client must afford every remaining round
        target = self.config.privacy.target_epsilon
        worst: tuple[float, int, int] | None = None
        for k in range(self.data.num_clients):
            plan = self.client_plan(k)
            dp = client_states.get(k, {}).get("dp_sgd", {})
            ledger = (
                PrivacyLedger.from_json(dp["ledger"])
                if "ledger" in dp
                else PrivacyLedger(accountant=self.config.privacy.accountant, delta=plan.delta)
            )
            would = ledger.epsilon_if(
                noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate, steps=remaining * plan.steps_per_round
            )
            if would > target * (1 + EPSILON_SLACK):
                fit = rounds_that_fit(
                    ledger,
                    noise_multiplier=plan.noise_multiplier,
                    sample_rate=plan.sample_rate,
                    steps_per_round=plan.steps_per_round,
                    target_epsilon=target,
                    limit=remaining,
                )
                if worst is None or fit < worst[1]:
                    worst = (would, fit, k)
        if worst is not None:
            would, fit, k = worst
            raise extension_refused(
                ffm=self.config.ffm,
                total_rounds=total_rounds,
                completed_rounds=completed_rounds,
                epsilon=would,
                target=target,
                planned=f"client {k}; its noise was calibrated for {self.planned_rounds} rounds",
                rounds_fit=fit,
            )

    def state_dict(self) -> dict[str, Any]:
        return {"planned_rounds": self.planned_rounds}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        planned = int(state.get("planned_rounds", 0)) if state else 0
        if planned and planned != self.planned_rounds:  # keep the noise the clients were calibrated with
            self.planned_rounds = planned
            self._make_plans()

    def implied_epochs(self, num_examples: int) -> float:
        """Passes over a client's data the config implies over its planned rounds: steps · min(B, n) / n."""
        c = self.config.client
        return steps_per_round(num_examples, c) * self.planned_rounds * min(c.batch_size, num_examples) / num_examples

    def recommend(self, *, epochs: float | None) -> dict[str, Any]:
        """:func:`secure_ffm.privacy.planner.recommend` for the smallest, median and largest client of the config.

        ``epochs`` is the compute budget in passes over each client's data (None: each client's
        :meth:`implied_epochs`). Every row carries the ``--set`` overrides that apply it; a client whose best
        noise-to-progress ratio exceeds :data:`~secure_ffm.privacy.planner.NOISE_TO_PROGRESS_LIMIT` gets a warning.
        """
        from secure_ffm.privacy.planner import NOISE_TO_PROGRESS_LIMIT, candidate_calibrations, recommend

        if self.data.stages:
            raise ConfigError(
                "--recommend",
                "a continual run's clients change size from stage to stage; the planner takes one size per client",
                "plan one stage's data as an ordinary run",
            )
        p = self.config.privacy
        sizes = sorted(len(ix) for ix in self.data.client_indices)
        roles: dict[int, list[str]] = {}
        for role, n in (("smallest", sizes[0]), ("median", sizes[(len(sizes) - 1) // 2]), ("largest", sizes[-1])):
            roles.setdefault(n, []).append(role)
        clients, warnings_ = [], []
        settings = {"target_epsilon": p.target_epsilon, "delta": p.delta, "rounds": self.planned_rounds, "accountant": p.accountant}
        budgets = {n: epochs if epochs is not None else self.implied_epochs(n) for n in roles}
        calibrate_all(  # every candidate of every role at once, over the cores
            [key for n in roles for key in candidate_calibrations(n, epochs=budgets[n], max_grad_norm=p.max_grad_norm, **settings)]
        )
        for n, names in roles.items():
            budget = budgets[n]
            advice = recommend(
                n,
                target_epsilon=p.target_epsilon,
                delta=p.delta,
                rounds=self.planned_rounds,
                epochs=budget,
                accountant=p.accountant,
                max_grad_norm=p.max_grad_norm,
            )
            best = advice.best
            overrides = [f"client.batch_size={best.batch_size}", f"client.local_steps={best.steps_per_round}"]
            clients.append({"role": "/".join(names), **asdict(advice), "overrides": overrides, "too_little_data": advice.too_little_data})
            if advice.too_little_data:
                warnings_.append(
                    f"client with {n} examples: too little data for ε={p.target_epsilon:g} to train usefully "
                    f"(noise-to-progress r={best.noise_to_progress:.3g} > {NOISE_TO_PROGRESS_LIMIT:g} even at the best setting); "
                    "pool data, raise ε, or share one noise draw across the federation "
                    '(privacy.mode="distributed-dp-sgd" with secure_aggregation.protocol="masking")'
                )
        median = next(c for c in clients if "median" in c["role"])
        return {
            "mechanism": "dp-sgd",
            "accountant": p.accountant,
            "target_epsilon": p.target_epsilon,
            "planned_rounds": self.planned_rounds,
            "epochs": epochs,
            "noise_to_progress_limit": NOISE_TO_PROGRESS_LIMIT,
            "clients": clients,
            "apply": median["overrides"],
            "warnings": warnings_,
        }

    def format_recommendation(self, advice: Mapping[str, Any]) -> str:
        from secure_ffm.privacy.planner import TIE_TOLERANCE

        budget = f"{advice['epochs']:g} passes" if advice["epochs"] is not None else "the passes the config implies"
        lines = [
            f"DP-SGD planner: ε={advice['target_epsilon']:g} per client over {advice['planned_rounds']} rounds "
            f"({advice['accountant']} accountant), compute budget {budget} over each client's data",
            "candidates: s local steps per round, T = rounds·s steps, expected batch B = round(epochs·n / T) (at most n), "
            "q = B/n, z calibrated to the target ε;",
            "proxy minimised: noise-to-progress r = z / (B·sqrt(T)), the std of the noise summed over T steps of mean clipped "
            "gradients relative to the progress T·C of T steps whose clipped mean gradient has norm C "
            f"(ties within {TIE_TOLERANCE:.0%} go to more steps; * marks the recommendation)",
        ]
        for c in advice["clients"]:
            lines.append("")
            lines.append(f"{c['role']} client: n={c['num_examples']}, δ={c['delta']:.3g}, budget {c['epochs']:.3g} passes")
            lines.append(f"  {'s':>6} {'T':>7} {'B':>7} {'q':>8} {'z':>8} {'epsilon':>8} {'r':>10}")
            best = c["best"]
            for k in c["candidates"]:
                mark = "*" if k == best else " "
                lines.append(
                    f"{mark} {k['steps_per_round']:>6} {k['total_steps']:>7} {k['batch_size']:>7} {k['sample_rate']:>8.4f} "
                    f"{k['noise_multiplier']:>8.4f} {k['epsilon']:>8.4f} {k['noise_to_progress']:>10.3g}"
                )
            lines.append(
                f"  recommended: B={best['batch_size']}, s={best['steps_per_round']}, z={best['noise_multiplier']:.4f}, "
                f"r={best['noise_to_progress']:.3g}: " + " ".join(f"--set {o}" for o in c["overrides"])
            )
        lines.append("")
        lines.append(
            "apply (the median client's; batch size and local steps are one setting for every client): "
            + " ".join(f"--set {o}" for o in advice["apply"])
        )
        physical = self.config.privacy.max_physical_batch_size
        largest_batch = max(c["best"]["batch_size"] for c in advice["clients"])
        if physical == 0 and largest_batch > LARGE_BATCH_HINT:
            lines.append(f"batches of {largest_batch} examples: --set privacy.max_physical_batch_size=N bounds the memory of one pass")
        lines.append(
            'federation-wide noise: privacy.mode="distributed-dp-sgd" (with masking or CKKS) adds one noise draw per step '
            "for all participants instead of one per client (measured gains: docs/dp_utility.md)"
        )
        lines.extend(f"WARNING: {w}" for w in advice["warnings"])
        return "\n".join(lines)

    def plan(self) -> dict[str, Any]:
        plans = [self.client_plan(k) for k in range(self.data.num_clients)]
        return {
            "mechanism": "dp-sgd",
            "accountant": self.config.privacy.accountant,
            "target_epsilon": self.config.privacy.target_epsilon,
            "planned_rounds": self.planned_rounds,
            "clients": [{"client": k, **asdict(p)} for k, p in enumerate(plans)],
            "noise_multiplier": spread([p.noise_multiplier for p in plans]),
            "epsilon": spread([p.planned_epsilon for p in plans]),
            "noise": NoisePolicy.from_config(self.config).describe(),
        }
