"""Distributed DP-SGD: sample-level DP with one noise draw for the whole federation, under secure aggregation.

In ordinary (local) DP-SGD every client adds the full noise N(0, (z C)^2) to its own clipped gradient sum, so a
round's average carries the noise of m clients for m clients' batches. Here a round is **one DP-SGD step over the
union of the participants' data** (Abadi et al., CCS 2016, with the federated data as one dataset):

1. every participant Poisson-samples its examples with the same rate q (from its secret), clips each example's
   gradient to ``privacy.max_grad_norm`` C and sums them;
2. it adds only its *share* of the noise, sized so that any t shares together carry the full noise of standard
   deviation z C (t: the fewest clients a completed round sums, the masking threshold);
3. the protocol reveals only the sum of the survivors' vectors, Σ clipped gradients + noise: exactly one step of
   the subsampled Gaussian (or discrete Gaussian) mechanism whose unit is one example;
4. the server turns the noisy sum into the step -lr · sum / (expected batch) and its strategy applies it
   (FedAvg: SGD; FedAdam: DP-Adam as post-processing).

Soundness. The server must never see one client's vector: the mode needs a protocol that hides single updates
(``secure_aggregation.protocol = "masking"`` or ``"ckks"``) and is refused without one. It is sound for one local
step per round: after a private local step a client's further steps would depend on its own lightly noised
gradient, and the sum of such updates is not a mechanism anyone has analysed. Under masking, which sums
integers mod 2^32, the clipped gradients are rounded to integers one example at a time (conditional randomized
rounding, so one example moves the sum by at most Δ2 whatever the rounding drew) and the shares are discrete
Gaussians (secure_ffm.privacy.distributed; Kairouz, Liu & Steinke, ICML 2021), accounted with the ``zcdp``
accountant; under CKKS (real arithmetic) the shares are Gaussians N(0, (z C)^2 / t), whose sum is Gaussian, and
the configured accountant applies (CKKS adds an approximation error of about 2^-scale_bits per slot on top).

Accounting. Against the server, who knows which clients it sampled, each round a client takes part in is one step
at rate q for its examples; client sampling gives no further amplification. δ defaults to 1/(10 N), N the
federation's examples. Each client keeps its own ledger and declines a round that would take it past the target.
What leaks besides the sum: the clients report no training loss (it would be computed on the secret sample).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any

import numpy as np
import torch

from secure_ffm.config import Config, PrivacyConfig
from secure_ffm.data.base import FederatedData
from secure_ffm.engine.aggregation import PROTOCOLS, Aggregate, AggregateStep, AggregationProtocol, VectorLayout
from secure_ffm.engine.training import ClientDeclined, LocalExtras, LocalTrainer, TrainResult
from secure_ffm.engine.wire import NamedArrays, Scalar
from secure_ffm.errors import ConfigError
from secure_ffm.models.base import Batch, EncodedData, FederatedModel
from secure_ffm.privacy import accounting
from secure_ffm.privacy.accounting import PrivacyLedger
from secure_ffm.privacy.distributed import DiscreteGaussianSum, minimum_shares
from secure_ffm.privacy.dp_sgd import EPSILON_SLACK, nchw_convolution_inputs
from secure_ffm.privacy.mechanisms import (
    AuditReplay,
    PrivacyMechanism,
    check_extension,
    node_restart_fields,
    plan_header,
    planned_federated_rounds,
    spread,
)
from secure_ffm.privacy.noise import DISCRETE_SHARE, DP_SGD_SAMPLING, NOISE_SHARE, NoisePolicy, NoiseStream, PrivateRandomness

log = logging.getLogger(__name__)

STATE_KEY = "distributed_dp_sgd"
PHYSICAL_BATCH = 256
"""Examples per forward/backward pass when computing per-example gradients, unless ``privacy.max_physical_batch_size``
says otherwise (memory stays bounded)."""


class DistributedDPSGDTrainer(LocalTrainer):
    """One round = this client's clipped per-example gradient sum plus its noise share (no local parameter step)."""

    def __init__(self, mechanism: DistributedDPSGD, *, poisson_sampling: bool = True) -> None:
        super().__init__(mechanism.config.client)
        self.mechanism = mechanism
        self.poisson_sampling = poisson_sampling
        """False: the step uses every given example (the leakage audit's replay, where the attacker knows the batch)."""

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
            raise ValueError("distributed DP-SGD needs the client's private randomness: its sampling and noise must be secret")
        start = time.perf_counter()
        mech = self.mechanism
        dp_state = dict(state.get(STATE_KEY, {}))  # written back once the step is recorded: a failed step leaves no entry
        ledger = PrivacyLedger.from_json(dp_state["ledger"]) if "ledger" in dp_state else mech.new_ledger()
        # on a deployed node, what every run spent on these examples (accounting.NODE_SPEND_KEY): one budget for them all
        would = accounting.budget_ledger(dp_state, ledger).epsilon_if(
            noise_multiplier=mech.noise_multiplier, sample_rate=mech.sample_rate, steps=1
        )
        if would > mech.config.privacy.target_epsilon * (1 + EPSILON_SLACK):
            raise ClientDeclined(f"privacy budget: one more step would spend ε={would:.3f} > target {mech.config.privacy.target_epsilon}")
        n = len(indices)
        sampling = randomness.stream(DP_SGD_SAMPLING, ledger.steps)
        chosen = indices[sampling.random(n) < mech.sample_rate] if self.poisson_sampling else indices
        noise = randomness.stream(DISCRETE_SHARE if mech.discrete_mode else NOISE_SHARE, ledger.steps)
        named = model.trainable_named_parameters()
        # the discrete geometry is the one of the whole update the server decodes (every parameter sent); in linear
        # probing's rounds (model.linear_probe_rounds) the held-fixed ones get no gradient and no noise: zeros below
        dim = sum(int(np.size(value)) for value in global_parameters.values())
        total = clipped_gradient_sum(
            model,
            encoded,
            chosen,
            clip_norm=mech.config.privacy.max_grad_norm,
            generator=generator,
            sink=mech.sink(dim, noise),
            physical_batch=mech.config.privacy.max_physical_batch_size or PHYSICAL_BATCH,
            per_layer=mech.config.privacy.clipping == "per-layer",
        )
        total += mech.noise_share(total.size, stream=noise, dim=dim)
        ledger.record(noise_multiplier=mech.noise_multiplier, sample_rate=mech.sample_rate, steps=1)
        epsilon = ledger.epsilon()
        dp_state.update(ledger=ledger.to_json(), epsilon=epsilon, steps=ledger.steps, rounds=int(dp_state.get("rounds", 0)) + 1)
        state[STATE_KEY] = dp_state
        # the gradient rows' order (the trained parameters'), not the sorted one of :meth:`VectorLayout.of_arrays`
        layout = VectorLayout(tuple((name, tuple(global_parameters[name].shape)) for name, _ in named), ())
        update = layout.split(total)[0]
        for name, value in global_parameters.items():  # held fixed this round: exactly zero, as data-independent as it gets
            update.setdefault(name, np.zeros(np.shape(value), dtype=total.dtype))
        return TrainResult(
            num_examples=n,
            steps=1,
            train_loss=float("nan"),  # computed on the secret sample, it would leak beside the noised sum
            seconds=time.perf_counter() - start,
            extra={"epsilon": epsilon},
            update=update,
        )


class _HookedExampleGradients:
    """Per-example gradients from Opacus' hooks (``GradSampleModule``): any model Opacus covers."""

    def __init__(self, model: FederatedModel, params: Sequence[torch.nn.Parameter]) -> None:
        from opacus.grad_sample import GradSampleModule

        self.model, self.params = model, list(params)
        self.wrapped = GradSampleModule(model.module, batch_first=True, loss_reduction="sum")
        self.layout_hooks = nchw_convolution_inputs(model.module)  # Opacus' conv gradients assume NCHW inputs

    def rows(self, batch: Batch) -> torch.Tensor:
        for p in self.params:
            p.grad = None
            p.grad_sample = None
        outputs = self.wrapped(**batch.inputs)
        with warnings.catch_warnings():  # the first layer's input needs no gradient; Opacus reads the output's
            warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
            self.model.objective.per_example_loss(outputs, batch.labels).sum().backward()
        return torch.cat([p.grad_sample.reshape(p.grad_sample.shape[0], -1) for p in self.params], dim=1)

    def close(self) -> None:
        for handle in self.layout_hooks:
            handle.remove()
        self.wrapped.cleanup()
        for p in self.params:
            p.grad = None
            for attr in ("grad_sample", "_forward_counter"):
                if hasattr(p, attr):
                    delattr(p, attr)


class _BookkeepingExampleGradients:
    """Per-example gradients from book-keeping's one backward pass to the layers' outputs
    (:meth:`~secure_ffm.privacy.bookkeeping.BookkeepingClipper.per_example_gradients`): models whose trained layers
    are all ``Linear`` or ``Conv2d`` (:func:`~secure_ffm.privacy.bookkeeping.bookkeeping_supported`)."""

    def __init__(self, model: FederatedModel, params: Sequence[torch.nn.Parameter]) -> None:
        from secure_ffm.privacy.bookkeeping import BookkeepingClipper

        self.model, self.params = model, list(params)
        self.clipper = BookkeepingClipper(model.module, self.params, max_grad_norm=1.0)  # only its records are used

    def rows(self, batch: Batch) -> torch.Tensor:
        outputs = self.model.module(**batch.inputs)
        grads = self.clipper.per_example_gradients(self.model.objective.per_example_loss(outputs, batch.labels))
        size = len(batch)
        # a parameter the loss did not reach (an unused layer) has a zero gradient for every example, as with Opacus
        return torch.cat([grads[p].reshape(size, -1) if p in grads else p.new_zeros(size, p.numel()) for p in self.params], dim=1)

    def close(self) -> None:
        self.clipper.close()


def per_example_gradient_source(model: FederatedModel) -> str:
    """``bookkeeping`` when every trained layer has a book-keeping rule and no parameter is shared, else ``hooks``."""
    from secure_ffm.privacy.bookkeeping import bookkeeping_supported

    return "bookkeeping" if bookkeeping_supported(model.module) else "hooks"


PER_EXAMPLE_GRADIENT_SOURCES = {"hooks": _HookedExampleGradients, "bookkeeping": _BookkeepingExampleGradients}
"""Where :func:`clipped_gradient_sum` takes each example's gradient from; both give the same rows up to float
summation order (tested)."""


def clipped_gradient_sum(
    model: FederatedModel,
    encoded: EncodedData,
    chosen: np.ndarray,
    *,
    clip_norm: float,
    generator: torch.Generator,
    sink: Any,
    physical_batch: int = PHYSICAL_BATCH,
    per_layer: bool = False,
    source: str | None = None,
) -> np.ndarray:
    """Σ over ``chosen`` of each example's gradient clipped to L2 norm ``clip_norm`` (flattened, trainable parameters in
    :meth:`FederatedModel.trainable_named_parameters` order), each chunk's rows passed through ``sink``. ``per_layer``:
    each parameter's part is clipped to ``clip_norm / sqrt(K)`` instead (:func:`clip_rows`), K the trained parameters.

    Per-example gradients come from ``source`` (:data:`PER_EXAMPLE_GRADIENT_SOURCES`; by default
    :func:`per_example_gradient_source`: book-keeping where the model allows it, else Opacus' hooks), on the summed
    per-example losses; the rows are clipped in float64."""
    params = [p for _, p in model.trainable_named_parameters()]
    size = sum(p.numel() for p in params)
    total = np.zeros(size, dtype=np.float64)
    if len(chosen) == 0:
        return total
    sizes = [p.numel() for p in params] if per_layer else None
    model.module.train()
    examples = PER_EXAMPLE_GRADIENT_SOURCES[source or per_example_gradient_source(model)](model, params)
    try:
        for begin in range(0, len(chosen), physical_batch):
            batch = model.make_training_batch(encoded, chosen[begin : begin + physical_batch], generator=generator)
            rows = examples.rows(batch).double().numpy()
            total += sink(clip_rows(rows, clip_norm, sizes=sizes))
    finally:
        examples.close()
    return total


def _row_norms(rows: np.ndarray) -> np.ndarray:
    """The L2 norm of each row, in one pass (``np.linalg.norm`` squares into a copy first: 0.62 against 0.55 ms for 51
    rows of 26k)."""
    return np.sqrt(np.einsum("ij,ij->i", rows, rows))


def clip_rows(rows: np.ndarray, clip_norm: float, *, sizes: Sequence[int] | None = None) -> np.ndarray:
    """Clip each row (one example's flattened gradient) in place and return it: to L2 norm ``clip_norm`` (flat), or with
    ``sizes`` (the column counts of K consecutive groups, one per trained parameter) each group to ``clip_norm / sqrt(K)``,
    so that the row's norm is at most ``sqrt(K (clip_norm^2 / K)) = clip_norm`` either way.

    A row with a NaN or infinite value becomes zeros first (the example contributes nothing, as in DP-SGD's book-keeping):
    a crafted model can make one example's gradient NaN, which would otherwise make the client decline, a signal the
    noise does not cover. Read from the norms the clipping computes anyway (a NaN or infinite value makes its group's
    norm so), not from a pass of its own over the rows."""
    if sizes is None:
        sizes = [rows.shape[1]]
    elif sum(sizes) != rows.shape[1]:
        raise ValueError(f"the groups cover {sum(sizes)} columns of {rows.shape[1]}")
    bound = clip_norm / math.sqrt(len(sizes))
    edges = np.cumsum([0, *sizes])
    norms = [_row_norms(rows[:, begin:end]) for begin, end in zip(edges[:-1], edges[1:], strict=True)]
    finite = np.isfinite(np.sum(norms, axis=0))
    if not finite.all():
        rows[~finite] = 0.0
        norms = [np.where(finite, n, 0.0) for n in norms]
    for begin, end, group in zip(edges[:-1], edges[1:], norms, strict=True):
        rows[:, begin:end] *= np.minimum(1.0, bound / np.maximum(group, 1e-12))[:, None]
    return rows


class GradientSumToStep(AggregateStep):
    """Server-side: the survivors' noisy gradient sum (their mean times their number) to the step
    ``-lr · sum / (expected batch)``, with the expected batch ``batch_size`` per surviving client (by default
    ``client.lr`` and ``client.batch_size``; the leakage audit's replay uses learning rate 1 and its batch)."""

    def __init__(self, mechanism: DistributedDPSGD, *, lr: float | None = None, batch_size: int | None = None) -> None:
        self.mechanism = mechanism
        self.lr = mechanism.config.client.lr if lr is None else lr
        self.batch_size = mechanism.config.client.batch_size if batch_size is None else batch_size

    def __call__(self, round: int, aggregate: Aggregate) -> Aggregate:
        mech = self.mechanism
        dim = sum(np.size(v) for v in aggregate.mean_delta.values())
        unit = mech.discrete_geometry(dim).granularity if mech.discrete_mode else 1.0
        scale = -self.lr * unit / self.batch_size  # the mean is the sum over the survivors
        mean = {}
        for name, value in aggregate.mean_delta.items():
            mean[name] = (np.asarray(value, dtype=np.float64) * scale).astype(np.float32)
        return aggregate.replace(mean_delta=mean)


class DistributedDPSGD(PrivacyMechanism):
    """Sample-level (ε, δ)-DP for every example, with the federation's noise split among the clients."""

    name = "distributed-dp-sgd"
    label = "distributed DP-SGD"
    needs_every_client_size = True
    replaces_trainer = True
    client_ledger_key = STATE_KEY
    client_weighting = "uniform"  # each client's noisy gradient sum counts once: the shares add up to the planned noise

    def client_noise_multiplier(self, client: int) -> float:
        """The noise multiplier of one client's own share (any ``min_shares`` of them carry the full z)."""
        return self.noise_multiplier / math.sqrt(self.min_shares)

    @classmethod
    def protections(cls, privacy: PrivacyConfig) -> dict[str, Any]:
        return {**super().protections(privacy), "max_grad_norm": privacy.max_grad_norm, "clipping": privacy.clipping}

    @classmethod
    def noise_shares_in_updates(cls, config: Config) -> bool:
        return True

    def __init__(self, config: Config, data: FederatedData) -> None:
        super().__init__(config, data)
        protocol = PROTOCOLS.get(config.secure_aggregation.protocol, key="secure_aggregation.protocol")
        if not protocol.hides_updates:
            raise ConfigError(
                "secure_aggregation.protocol",
                f"{protocol.name!r} shows the server each client's vector, which carries only a share of the noise",
                'use "masking" or "ckks", or privacy.mode = "dp-sgd" (every client adds the full noise)',
            )
        if config.client.local_steps not in (0, 1) or config.client.local_epochs != 1:
            log.info("distributed DP-SGD takes one step per round: client.local_steps and local_epochs are not used")
        if config.continual is not None and config.continual.method == "ewc":
            raise ConfigError("continual.method", "EWC's importances are not shared by distributed DP-SGD", 'use "naive" or "replay"')
        p = config.privacy
        self.discrete_mode = protocol.supports_integer_values
        self.accountant = "zcdp" if self.discrete_mode else p.accountant
        sizes = [len(ix) for ix in data.client_indices]
        self.total_examples = sum(sizes)
        mean_size = self.total_examples / max(1, len(sizes))
        self.sample_rate = min(1.0, config.client.batch_size / mean_size)
        self.delta = p.delta or accounting.default_delta(self.total_examples)
        self.planned_rounds = planned_federated_rounds(config)
        self.participants = config.server.clients_per_round or data.num_clients
        self.min_shares = minimum_shares(config)
        self.noise_multiplier = accounting.calibrate_noise_multiplier(
            target_epsilon=p.target_epsilon,
            delta=self.delta,
            sample_rate=self.sample_rate,
            steps=self.planned_rounds,
            accountant=self.accountant,
        )
        self.discrete: DiscreteGaussianSum | None = None
        self.noise_policy = NoisePolicy.from_config(config)

    def new_ledger(self) -> PrivacyLedger:
        return PrivacyLedger(accountant=self.accountant, delta=self.delta)

    def check_model(self, model: FederatedModel) -> None:
        from opacus.validators import ModuleValidator

        errors = ModuleValidator.validate(model.module, strict=False)
        if errors:
            raise ConfigError("model.arch", f"{self.config.model.arch} cannot be trained with DP-SGD: {errors[0]}")

    def discrete_geometry(self, dim: int) -> DiscreteGaussianSum:
        """The discrete shares' public geometry for gradients of ``dim`` coordinates (masking)."""
        if self.discrete is None or self.discrete.dim != dim:
            largest = max(len(ix) for ix in self.data.client_indices)
            self.discrete = DiscreteGaussianSum(
                clip_norm=self.config.privacy.max_grad_norm,
                noise_multiplier=self.noise_multiplier,
                min_shares=self.min_shares,
                max_shares=self.participants,
                contributions=min(self.total_examples, largest * self.participants),
                dim=dim,
            )
        return self.discrete

    def configure_protocol(self, protocol: AggregationProtocol) -> None:
        if self.discrete_mode:
            protocol.use_integer_values()
        protocol.protect_sums_of(self.min_shares)  # what each share is sized for: no sum the server learns holds fewer

    def trainer(self, base: LocalTrainer) -> LocalTrainer:
        return DistributedDPSGDTrainer(self)

    def sink(self, dim: int, stream: NoiseStream) -> Callable[[np.ndarray], np.ndarray]:
        """Where clipped per-example gradient rows go: summed as reals, or (masking) rounded one example at a time."""
        if not self.discrete_mode:
            return lambda rows: rows.sum(axis=0)
        geometry = self.discrete_geometry(dim)
        return lambda rows: geometry.integers(rows, stream=stream)

    def noise_share(self, size: int, *, stream: NoiseStream, dim: int) -> np.ndarray:
        """This client's share of ``size`` values: discrete (integer units of the geometry for updates of ``dim``
        coordinates, the whole update the server decodes) under masking, else N(0, (z C)^2 / t)."""
        if self.discrete_mode:
            return self.discrete_geometry(dim).share(size, stream=stream)
        std = self.noise_multiplier * self.config.privacy.max_grad_norm / math.sqrt(self.min_shares)
        return stream.normal((size,), std)

    def decoding_steps(self) -> list[AggregateStep]:
        return [GradientSumToStep(self)]

    def audit_replay(self, *, examples_per_client: int) -> AuditReplay:
        """Each audited client's clipped gradient sum over its whole audit batch plus its noise share (discrete and
        rounded under masking, exactly as in training); the server observes the survivors' sum divided by their
        examples: one DP-SGD step's noisy mean gradient, with the noise of the whole federation on it."""
        return AuditReplay(
            trainer=DistributedDPSGDTrainer(self, poisson_sampling=False),
            decoding_steps=[GradientSumToStep(self, lr=1.0, batch_size=examples_per_client)],
        )

    def fit_config(self, round: int, participants: Sequence[int]) -> dict[str, Scalar]:
        return {"weighting": self.client_weighting}

    def round_metrics(self, round: int, client_states: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
        eps = spread([s[STATE_KEY]["epsilon"] for s in client_states.values() if STATE_KEY in s])
        return {
            "epsilon_min": eps["min"],
            "epsilon_median": eps["median"],
            "epsilon_max": eps["max"],
            "noise_multiplier": self.noise_multiplier,
        }

    def ledger(self, client_states: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
        p = self.config.privacy
        clients = []
        for k in range(self.data.num_clients):
            dp = client_states.get(k, {}).get(STATE_KEY, {})
            clients.append(
                {
                    "client": k,
                    "num_examples": len(self.data.client_indices[k]),
                    "epsilon": float(dp.get("epsilon", 0.0)),
                    "delta": self.delta,
                    "noise_multiplier": self.noise_multiplier,
                    "sample_rate": self.sample_rate,
                    "steps": int(dp.get("steps", 0)),
                    "rounds": int(dp.get("rounds", 0)),
                    "history": dp.get("ledger", {}).get("history", []),
                    **node_restart_fields(dp),
                }
            )
        return {
            "mechanism": self.name,
            "level": "sample",
            "accountant": self.accountant,
            "target_epsilon": p.target_epsilon,
            "delta": self.delta,
            "max_grad_norm": p.max_grad_norm,
            "clipping": p.clipping,
            "sampling": "poisson",
            "sample_rate": self.sample_rate,
            "noise_multiplier": self.noise_multiplier,
            "planned_rounds": self.planned_rounds,
            "min_shares": self.min_shares,
            "noise_shares": "discrete Gaussian" if self.discrete_mode else "Gaussian",
            **({"discrete_noise": self.discrete.describe()} if self.discrete is not None else {}),
            "epsilon": spread([c["epsilon"] for c in clients if c["rounds"] > 0]),
            "clients": clients,
            "noise": self.noise_policy.describe(),
        }

    def check_budget(self, *, completed_rounds: int, total_rounds: int, client_states: Mapping[int, Mapping[str, Any]]) -> None:
        if self.config.privacy.planned_rounds:  # clients decline when spent
            return
        for k in range(self.data.num_clients):  # planned_rounds = 0 promises every client every round
            dp = client_states.get(k, {}).get(STATE_KEY, {})
            check_extension(
                PrivacyLedger.from_json(dp["ledger"]) if "ledger" in dp else self.new_ledger(),
                noise_multiplier=self.noise_multiplier,
                sample_rate=self.sample_rate,
                ffm=self.config.ffm,
                total_rounds=total_rounds,
                completed_rounds=completed_rounds,
                target=self.config.privacy.target_epsilon,
                planned=f"client {k}; the noise was calibrated for {self.planned_rounds} rounds",
            )

    def state_dict(self) -> dict[str, Any]:
        return {"noise_multiplier": self.noise_multiplier, "planned_rounds": self.planned_rounds}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:  # the noise stays the one the run was calibrated with
            self.noise_multiplier = float(state.get("noise_multiplier", self.noise_multiplier))
            self.planned_rounds = int(state.get("planned_rounds", self.planned_rounds))

    def plan(self) -> dict[str, Any]:
        p = self.config.privacy
        epsilon = accounting.compute_epsilon(
            [accounting.GaussianSteps(self.noise_multiplier, self.sample_rate, self.planned_rounds)],
            accountant=self.accountant,
            delta=self.delta,
        )
        return {
            "mechanism": self.name,
            "accountant": self.accountant,
            "target_epsilon": p.target_epsilon,
            "delta": self.delta,
            "planned_rounds": self.planned_rounds,
            "sample_rate": self.sample_rate,
            "expected_batch": self.sample_rate * self.total_examples * self.participants / max(1, self.data.num_clients),
            "noise_multiplier": self.noise_multiplier,
            "min_shares": self.min_shares,
            "noise_shares": "discrete Gaussian" if self.discrete_mode else "Gaussian",
            "epsilon": epsilon,
            # m shares sized for sums of min_shares: sigma sqrt(m / min_shares) when every participant's share arrives
            "noise_std_on_mean_gradient": self.noise_multiplier
            * p.max_grad_norm
            * math.sqrt(self.participants / self.min_shares)
            / (self.config.client.batch_size * self.participants),
            "noise": self.noise_policy.describe(),
        }

    def format_plan(self, plan: Mapping[str, Any]) -> str:
        return "\n".join(
            [
                plan_header(plan),
                f"sample-level DP, one step per round over the participants' data: q = {plan['sample_rate']:.4f}, "
                f"expected batch {plan['expected_batch']:.0f}, {plan['planned_rounds']} rounds, δ = {plan['delta']:.3g}",
                f"noise multiplier z = {plan['noise_multiplier']:.4f}, split into {plan['noise_shares']} shares; any "
                f"{plan['min_shares']} shares carry the full noise",
                f"ε reached: {plan['epsilon']:.4f}; noise std per coordinate of the mean gradient: "
                f"{plan['noise_std_on_mean_gradient']:.3g}",
            ]
        )
