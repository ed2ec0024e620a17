"""Leakage audits: build what the server observes under a run's protections, attack it, score it.

Two entry points:

- :func:`audit_config` builds a case from a training config: client ``case.client``'s first
  ``case.batch_size`` examples, the gradient or local update it would compute, passed through
  exactly the protections the config enables, by the engine's own code path: one round of the
  round orchestrator over the in-process transport, in which each participant is a
  :class:`~secure_ffm.engine.client.FederatedClient` whose data is its audit batch, trained by
  :class:`AuditCaseTrainer` (DP-SGD's steps are the engine's ``DPStep``), transformed by the
  run's ``UpdatePipeline`` (the ``[defense]`` transforms, DP-FedAvg's clipping and noise share)
  and aggregated through the configured protocol's message stages (plaintext, masking or CKKS)
  with ``case.num_clients - 1`` other clients. The observation is the aggregate the server
  computes, recorded by a :class:`~secure_ffm.engine.orchestrator.RoundHooks`.
- :func:`audit_capture` replays an observation captured during training (``[audit]`` section).

:func:`audit_config_many` and :func:`audit_capture_many` run either over several clients (and, for a
config, several disjoint batches of each) with the model loaded once, and summarise the per-batch
values by their mean and a 95% Student t interval (:class:`AuditSummary`).

Both score the reconstruction against the true examples and write ``attack.json`` plus
``reconstructions.png`` (images) or ``reconstructions.md`` (text).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attacks.base import Budget, GroundTruth, NamedArrays, Observation, Reconstruction, ThreatModel, TrainingSetup, build_attack
from attacks.case import data_kind, local_minibatches, one_full_step, stack_inputs
from secure_ffm.config import ClientConfig, Config
from secure_ffm.engine.aggregation import Aggregate
from secure_ffm.engine.client import ClientRules, FederatedClient
from secure_ffm.engine.orchestrator import RoundHooks, RoundOrchestrator
from secure_ffm.engine.server import Server
from secure_ffm.engine.strategies import build_strategy
from secure_ffm.engine.training import LocalExtras, LocalTrainer, TrainResult
from secure_ffm.engine.transforms import UpdatePipeline, build_defenses
from secure_ffm.engine.wire import FitInstructions, to_jsonable
from secure_ffm.errors import ConfigError, RoundAbortedError
from secure_ffm.models.base import Batch, EncodedData, FederatedModel
from secure_ffm.privacy.dp_sgd import DPStep, auto_grad_sample_mode
from secure_ffm.privacy.mechanisms import AuditReplay, PrivacyMechanism, build_mechanism
from secure_ffm.privacy.noise import DP_SGD_NOISE, NoisePolicy, PrivateRandomness
from secure_ffm.registry import nearest
from secure_ffm.run.checkpoint import save_private_array, write_private_text
from secure_ffm.transports.in_process import InProcessTransport
from secure_ffm.variants import MECHANISMS, PROTOCOLS

log = logging.getLogger(__name__)

OBSERVES_CHOICES = ("auto", "gradient", "update")


@dataclass(frozen=True)
class AuditCase:
    """``[audit_case]``: which client's data is attacked, and what kind of message the server sees."""

    client: int = 0
    """The target client (its first ``batch_size`` examples in a seeded order)."""
    batch_size: int = 1
    """Examples behind the target's message."""
    observes: str = "auto"
    """``gradient`` (FedSGD: one step), ``update`` (FedAvg: ``local_steps`` SGD steps), or ``auto``: gradient when
    local_steps is 1, else update. Under secure aggregation the server only ever sees the aggregate."""
    local_steps: int = 1
    local_batch_size: int = 0
    """Examples per local step (0: the whole batch each step)."""
    learning_rate: float = 0.0
    """Step size of the local steps; 0 takes the config's client.lr."""
    knows_labels: bool = False
    num_clients: int = 0
    """Clients in the aggregate under secure aggregation; 0 takes server.clients_per_round (or all clients), at most 8."""

    def __post_init__(self) -> None:
        if self.client < 0:
            raise ConfigError("audit_case.client", f"must be >= 0, got {self.client}")
        if self.batch_size < 1:
            raise ConfigError("audit_case.batch_size", f"must be at least 1, got {self.batch_size}")
        if self.observes not in OBSERVES_CHOICES:
            hint = nearest(self.observes, OBSERVES_CHOICES)
            raise ConfigError(
                "audit_case.observes",
                f"unknown value {self.observes!r}",
                f"did you mean {hint!r}?" if hint else "use auto, gradient or update",
            )
        if self.local_steps < 1:
            raise ConfigError("audit_case.local_steps", f"must be at least 1, got {self.local_steps}")
        if self.local_batch_size < 0:
            raise ConfigError("audit_case.local_batch_size", f"must be >= 0, got {self.local_batch_size}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate >= 0):
            raise ConfigError("audit_case.learning_rate", f"must be >= 0, got {self.learning_rate}", "use 0 for the config's client.lr")
        if self.num_clients < 0:
            raise ConfigError("audit_case.num_clients", f"must be >= 0, got {self.num_clients}")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> AuditCase:
        valid = [f.name for f in fields(cls)]
        for key in raw:
            if key not in valid:
                hint = nearest(key, valid)
                raise ConfigError(
                    f"audit_case.{key}", "unknown key", f"did you mean audit_case.{hint}?" if hint else f"valid keys: {', '.join(valid)}"
                )
        return cls(**dict(raw))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class AuditResult:
    """An audit's outcome: the threat model, the attack's settings, every metric per sample and the means."""

    attack: str
    settings: dict[str, Any]
    threat_model: dict[str, Any]
    setup: dict[str, Any]
    protections: dict[str, Any]
    metrics: dict[str, Any]
    per_sample: list[dict[str, Any]]
    primary_metric: str
    seconds: float
    iterations: int
    reconstruction: Reconstruction | None = None
    truth: GroundTruth | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    budget: dict[str, Any] = field(default_factory=dict)
    """The budget given (``max_iterations``, ``max_seconds``) and how it ended: ``iterations_reached`` and
    ``stopped_by`` (``iterations``: the iteration budget; ``time``: the time budget cut it short; ``attack``: it
    finished on its own, e.g. a one-shot attack or early stopping)."""
    case: dict[str, Any] = field(default_factory=dict)
    """Which data was attacked: ``client``, ``sample`` (the client's batch number) and the examples' ``indices``."""

    @property
    def primary_value(self) -> float:
        return float(self.metrics[self.primary_metric])

    def to_dict(self) -> dict[str, Any]:
        return {
            "attack": self.attack,
            "settings": self.settings,
            "threat_model": self.threat_model,
            "setup": self.setup,
            "protections": self.protections,
            "primary_metric": self.primary_metric,
            "primary_value": self.primary_value,
            "mean": self.metrics,
            "per_sample": self.per_sample,
            "seconds": self.seconds,
            "iterations": self.iterations,
            "budget": self.budget,
            "case": self.case,
            "outputs": self.outputs,
        }


# --------------------------------------------------------------------------- the audited clients


class AuditCaseTrainer(LocalTrainer):
    """How the audited clients train: ``local_steps`` plain-SGD steps over consecutive minibatches of their batch.

    The minibatches are :func:`attacks.case.local_minibatches` (the order the FedAvg attack of Geiping et al.
    simulates) and the model runs in eval mode (no dropout): the attacker's most favourable case, so leakage is an
    upper bound. Under a mechanism that replaces the trainer (DP-SGD) each step is the engine's DP-SGD step
    (:class:`secure_ffm.privacy.dp_sgd.DPStep`: per-example clipping to ``max_grad_norm``, Gaussian noise of the
    client's calibrated multiplier from its randomness, division by the step's batch size), on the whole minibatch
    (no Poisson sampling: the attacker knows which examples the step used).
    """

    def __init__(
        self, setup: TrainingSetup, *, noise_multiplier: float | None = None, max_grad_norm: float = 0.0, grad_sample_mode: str = "hooks"
    ) -> None:
        super().__init__(ClientConfig(local_steps=setup.local_steps, lr=setup.learning_rate))
        self.setup = setup
        self.noise_multiplier = noise_multiplier
        self.max_grad_norm = max_grad_norm
        self.grad_sample_mode = grad_sample_mode

    def train(
        self,
        model: FederatedModel,
        encoded: EncodedData,
        indices: np.ndarray,
        *,
        fit_config: Mapping[str, Any],
        global_parameters: NamedArrays,
        generator: torch.Generator,
        state: MutableMapping[str, Any],
        randomness: PrivateRandomness | None = None,
        extras: LocalExtras | None = None,
    ) -> TrainResult:
        """The attacker's reconstruction of one client's local training (``extras`` play no part in it)."""
        start = time.perf_counter()
        params = [p for _, p in model.trainable_named_parameters()]
        optimizer = torch.optim.SGD(params, lr=self.setup.learning_rate)
        stepper = None
        if self.noise_multiplier is not None:
            if randomness is None:
                raise ValueError("DP-SGD needs the client's randomness for its noise")
            stepper = DPStep(
                model,
                optimizer,
                mode=self.grad_sample_mode,
                noise_multiplier=self.noise_multiplier,
                max_grad_norm=self.max_grad_norm,
                expected_batch_size=min(self.setup.step_batch_size, len(indices)),
                noise=randomness.stream(DP_SGD_NOISE, 0),
            )
        was_training = model.module.training
        model.module.eval()
        if stepper is not None:  # Opacus records activations only in training mode: train mode, dropout off
            model.module.train()
            for module in model.module.modules():
                if isinstance(module, torch.nn.modules.dropout._DropoutNd):
                    module.eval()
        steps = local_minibatches(len(indices), self.setup.local_batch_size, self.setup.local_steps)
        total_loss = 0.0
        try:
            for step in steps:
                batch = model.make_batch(encoded, indices[step])
                if stepper is not None:
                    total_loss += stepper.step(batch)
                    continue
                optimizer.zero_grad(set_to_none=True)
                loss = model.loss(batch)
                loss.backward()
                optimizer.step()
                total_loss += float(loss.detach())
        finally:
            if stepper is not None:
                stepper.close()
            model.module.train(was_training)
        return TrainResult(len(indices), len(steps), total_loss / len(steps), time.perf_counter() - start)


class _ServerView(RoundHooks):
    """Records the aggregate the server computes: what it learns from the round (before its own steps)."""

    def __init__(self) -> None:
        self.aggregate: Aggregate | None = None
        self.clients: list[int] = []

    def aggregate_computed(self, round: int, aggregate: Aggregate, clients: Sequence[int], instructions: FitInstructions) -> None:
        self.aggregate, self.clients = aggregate, list(clients)


# --------------------------------------------------------------------------- the case


@dataclass
class PreparedCase:
    """Model, encoded client data and the privacy plan shared by every audit on one config."""

    config: Config
    model: FederatedModel
    encoded: EncodedData
    client_indices: list[np.ndarray]
    dp_noise: dict[int, float]
    """Each client's DP-SGD noise multiplier when the mechanism replaces the trainer; empty otherwise."""
    initial_parameters: NamedArrays
    mechanism: PrivacyMechanism
    tokenizer: Any = None


def prepare_case(config: Config, *, clients: Sequence[int] | None = None) -> PreparedCase:
    """Load data and model as the run does (raises ConfigError on bad input); ``run.threads`` sets torch's threads as in training."""
    from secure_ffm.models.objectives import OBJECTIVES
    from secure_ffm.run.simulation import load_data_and_model

    if not OBJECTIVES.get(config.model.objective, key="model.objective").reads_labels:
        raise ConfigError(
            "model.objective",
            f"the leakage audit attacks classifiers; a {config.model.objective!r} run has no example labels to reconstruct",
            "audit a classification run (e.g. the fine-tuning stage of a pipeline)",
        )
    data, model = load_data_and_model(config)
    mechanism = build_mechanism(config, data)
    dp_noise: dict[int, float] = {}
    if mechanism.replaces_trainer:
        for k in range(data.num_clients):
            dp_noise[k] = mechanism.client_noise_multiplier(k)
    return PreparedCase(
        config=config,
        model=model,
        encoded=model.encode(data.private),
        client_indices=[np.asarray(ix) for ix in data.client_indices],
        dp_noise=dp_noise,
        initial_parameters=model.get_trainable(),
        mechanism=mechanism,
        tokenizer=getattr(model, "tokenizer", None),
    )


def check_samples(prepared: PreparedCase, clients: Sequence[int], batch_size: int, samples: int) -> None:
    """Refuse, before any attack runs, a client that does not exist or holds too few examples for ``samples`` disjoint batches."""
    total = len(prepared.client_indices)
    for client in clients:
        if not 0 <= client < total:
            raise ConfigError(
                "--clients/audit_case.client", f"client {client} does not exist (data.num_clients={total})", f"use 0 .. {total - 1}"
            )
        have = len(prepared.client_indices[client])
        if have < batch_size:
            raise ConfigError(
                "audit_case.batch_size",
                f"client {client} has only {have} examples, fewer than {batch_size}",
                "lower audit_case.batch_size or pick another client",
            )
        if have < batch_size * samples:
            raise ConfigError(
                "--samples/attack.samples",
                f"client {client} has {have} examples, too few for {samples} disjoint batches of {batch_size}",
                f"use at most {have // batch_size} samples, or lower audit_case.batch_size",
            )


def _batch_indices(prepared: PreparedCase, client: int, batch_size: int, seed: int, sample: int = 0) -> np.ndarray:
    """The client's batch number ``sample``: batch 0 is a seeded draw; later batches are disjoint slices of a seeded order of the rest."""
    check_samples(prepared, [client], batch_size, sample + 1)
    indices = prepared.client_indices[client]
    rng = np.random.default_rng([seed, client, 0xA0D17])
    chosen = np.sort(rng.choice(indices, size=batch_size, replace=False))
    if sample:
        rest = np.random.default_rng([seed, client, 0xA0D17, 1]).permutation(np.setdiff1d(indices, chosen))
        chosen = np.sort(rest[(sample - 1) * batch_size : sample * batch_size])
    return chosen


def _observation(
    model: FederatedModel,
    batch: Batch,
    *,
    observes: str,
    knows_labels: bool,
    setup: TrainingSetup,
    parameters: NamedArrays,
    observed: NamedArrays,
) -> Observation:
    """What the attacker gets: the observed arrays and the model, plus (with ``knows_labels``) the target batch's labels and
    the inputs every attack may assume known (attention masks and the like, not pixels or token ids)."""
    return Observation(
        threat_model=ThreatModel(observes=observes, knows_labels=knows_labels),
        setup=setup,
        model=model,
        parameters=parameters,
        observed=observed,
        data_kind=data_kind(model),
        input_shape=tuple(next(iter(batch.inputs.values())).shape[1:]),
        labels=batch.labels.clone() if knows_labels else None,
        extras={k: v.clone() for k, v in batch.inputs.items() if k not in ("pixels", "input_ids")},
    )


def observe_config(
    prepared: PreparedCase, case: AuditCase, *, seed: int = 0, parameters: NamedArrays | None = None, sample: int = 0
) -> tuple[Observation, GroundTruth]:
    """What the server observes from ``case.client``'s batch number ``sample`` under ``prepared.config``'s protections, and the truth."""
    config = prepared.config
    model = prepared.model
    num_clients_total = len(prepared.client_indices)
    if case.client >= num_clients_total:
        raise ConfigError(
            "audit_case.client",
            f"client {case.client} does not exist (data.num_clients={num_clients_total})",
            f"use 0 .. {num_clients_total - 1}",
        )
    model.set_trainable(parameters if parameters is not None else prepared.initial_parameters)
    secure = PROTOCOLS.get(config.secure_aggregation.protocol, key="secure_aggregation.protocol").hides_updates
    replay = prepared.mechanism.audit_replay(examples_per_client=case.batch_size)
    kind = "update" if case.observes == "update" or (case.observes == "auto" and case.local_steps > 1) else "gradient"
    if replay is not None:  # the mechanism's clients send one noisy gradient sum a round, never a multi-step update
        kind = "gradient"
    if secure:
        per_round = config.server.clients_per_round or num_clients_total
        n = case.num_clients or min(per_round, 8)
        n = max(2, min(n, num_clients_total))
        others = [k for k in range(num_clients_total) if k != case.client][: n - 1]
    else:
        others = []
    participants = [case.client, *others]
    setup = TrainingSetup(
        num_examples=case.batch_size,
        local_steps=case.local_steps if kind == "update" else 1,
        local_batch_size=case.local_batch_size if kind == "update" else 0,  # a gradient is of the whole batch
        learning_rate=case.learning_rate or config.client.lr,
        num_clients=len(participants),
    )
    batches, indices = [], {}
    for client in participants:
        indices[client] = _batch_indices(prepared, client, case.batch_size, seed, sample)
        batches.append(model.make_batch(prepared.encoded, indices[client]))
    global_parameters = model.get_trainable()
    # A gradient is observed as a one-step update at learning rate max(1, lr), read back as -delta / rate: at a rate
    # of 1 or more the float32 delta keeps the gradient's precision, and a transform that acts on the update's scale
    # (DP-FedAvg's clipping and noise, l2-clip, gaussian-noise) sees an update at least as large as the client's own
    # (lr * gradient), so its signal-to-noise ratio is never below the real one: the audit never understates it. A
    # mechanism's replay (distributed DP-SGD) decodes its noisy gradient sum as a step at rate 1.
    rate = (1.0 if replay is not None else max(1.0, setup.learning_rate)) if kind == "gradient" else setup.learning_rate
    trained = replace(setup, learning_rate=rate)
    delta = _server_view(
        prepared,
        participants,
        indices,
        trained,
        global_parameters=global_parameters,
        seed=seed,
        sample=sample,
        replay=replay,
    )
    model.set_trainable(global_parameters)
    every_example = secure and one_full_step(setup)
    if secure:
        # the server sees the mean of the participants' deltas; every attack reads an aggregate as -delta / (rate *
        # steps), so the observation is the delta itself with the rate it was made at. The attacker knows each
        # client's example count and, for one full-batch step, reconstructs every example in the sum: the
        # example-weighted mean of the clients' mean gradients is the mean gradient of their union, exactly one batch
        # of all of them. Several local steps (each client's own) are matched as if the target alone had taken them.
        observed = delta
        setup = replace(trained, num_examples=sum(len(indices[c]) for c in participants)) if every_example else trained
    elif kind == "gradient":
        observed = {k: -v / rate for k, v in delta.items()}
    else:
        observed = delta
    observation = _observation(
        model,
        Batch(stack_inputs(batches), torch.cat([b.labels for b in batches])) if every_example else batches[0],
        observes="aggregate" if secure else ("update" if kind == "update" else "gradient"),
        knows_labels=case.knows_labels,
        setup=setup,
        parameters=global_parameters,
        observed=observed,
    )
    truth = _truth(prepared, batches)
    return observation, truth


def _truth(prepared: PreparedCase, batches: Sequence[Batch]) -> GroundTruth:
    texts = None
    if prepared.tokenizer is not None:
        texts = [
            prepared.tokenizer.decode(ids[mask.bool()].tolist(), skip_special_tokens=True)
            for b in batches
            for ids, mask in zip(b.inputs["input_ids"], b.inputs["attention_mask"], strict=True)
        ]
    return GroundTruth(inputs=stack_inputs(batches), labels=torch.cat([b.labels for b in batches]), texts=texts)


def _server_view(
    prepared: PreparedCase,
    participants: Sequence[int],
    indices: Mapping[int, np.ndarray],
    setup: TrainingSetup,
    *,
    global_parameters: NamedArrays,
    seed: int,
    sample: int,
    replay: AuditReplay | None = None,
) -> NamedArrays:
    """One round of the engine (orchestrator, in-process transport, FederatedClient, UpdatePipeline, the protocol's
    stages) in which each participant's data is its audit batch, trained as ``setup`` says; returns what the server
    learns: the mean of the participants' deltas (one participant: its own delta). A mechanism's own ``replay``
    (distributed DP-SGD) supplies the clients' trainer and the server's decoding steps (a step at learning rate 1).

    The clients' randomness (DP noise, defenses, stochastic rounding) is seeded from ``(seed, sample)``: the audit is
    reproducible, and each batch of a many-batch audit gets fresh draws.
    """
    config = prepared.config
    mechanism = prepared.mechanism
    protocol = PROTOCOLS.get(config.secure_aggregation.protocol, key="secure_aggregation.protocol").from_config(
        config.secure_aggregation, seed=config.run.seed
    )
    mechanism.configure_protocol(protocol)
    transforms = UpdatePipeline([*build_defenses(config.defense).transforms, *mechanism.client_transforms()])
    noise = NoisePolicy(secure=False, reproducible_seed=int(np.random.SeedSequence([seed, sample, 0xA0D17]).generate_state(1)[0]))
    grad_sample_mode = config.privacy.grad_sample_mode
    if grad_sample_mode == "auto":
        grad_sample_mode = auto_grad_sample_mode(prepared.model)
    states: dict[int, dict[str, Any]] = {}
    # the run's clients' own rules; the audit's server decodes no loss from the aggregate, so none travels in it
    rules = replace(ClientRules.of(config, mechanism=type(mechanism), protocol=type(protocol)), aggregated_loss=None)

    def make_client(client_id: int) -> FederatedClient:
        trainer = (
            replay.trainer
            if replay is not None
            else AuditCaseTrainer(
                setup,
                noise_multiplier=prepared.dp_noise.get(client_id) if prepared.dp_noise else None,
                max_grad_norm=config.privacy.max_grad_norm,
                grad_sample_mode=grad_sample_mode,
            )
        )
        return FederatedClient(
            client_id=client_id,
            model=prepared.model,
            encoded=prepared.encoded,
            indices=indices[client_id],
            trainer=trainer,
            protocol=protocol,
            transforms=transforms,
            state=states.setdefault(client_id, {}),
            seed=seed,
            noise=noise,
            rules=rules,
        )

    total = len(prepared.client_indices)
    counts = [len(indices.get(k, ())) for k in range(total)]
    decoding = replay.decoding_steps if replay is not None else mechanism.decoding_steps()
    server = Server(
        strategy=build_strategy(config.server),
        protocol=protocol,
        parameters=global_parameters,
        num_clients=total,
        clients_per_round=len(participants),
        seed=seed,
        aggregate_steps=decoding,
    )
    server.extra_fit_config.append(mechanism.fit_config)
    view = _ServerView()
    orchestrator = RoundOrchestrator(
        server=server,
        protocol=protocol,
        transport=InProcessTransport(make_client, protocol, example_counts=counts),
        statistics=mechanism.update_statistics(),
        on_abort="stop",
        hooks=[view],
    )
    try:
        row = orchestrator.run_round(1, participants=participants)
    except RoundAbortedError as error:  # e.g. fewer clients than distributed noise shares are sized for: they refuse
        raise ConfigError(
            "audit_case.num_clients",
            f"the audited round of {len(participants)} clients aborted ({error}); the clients' refusals are in the log",
            "audit at least as many clients as a round of the run has (distributed DP sizes its noise shares for them)",
        ) from None
    target = participants[0]
    if view.aggregate is None or target not in view.clients:
        why = "declined" if target in row["skipped_clients"] else "was rejected" if target in row["rejected_clients"] else "sent nothing"
        raise ConfigError("audit_case.client", f"client {target} {why} in the audited round, so the server observes nothing of it")
    aggregate = view.aggregate
    for step in decoding:  # the view is the protocol's sum; the server reads it in real units (discrete shares' γ)
        aggregate = step(1, aggregate)
    return {k: np.asarray(v, dtype=np.float32) for k, v in aggregate.mean_delta.items()}


# --------------------------------------------------------------------------- scoring and outputs


def score(
    observation: Observation, reconstruction: Reconstruction, truth: GroundTruth, *, tokenizer: Any = None
) -> tuple[dict[str, Any], list[dict[str, Any]], str]:
    """(mean metrics, per-sample metrics, primary metric name) for a reconstruction."""
    if observation.data_kind == "image":
        from attacks.metrics_image import score_images

        scored = score_images(reconstruction, truth)
        primary = "psnr"
    else:
        from attacks.metrics_text import score_texts

        scored = score_texts(reconstruction, truth, tokenizer)
        primary = "token_f1"
    return dict(scored["mean"]), list(scored["per_sample"]), primary


def run_attack(
    observation: Observation,
    truth: GroundTruth,
    *,
    attack: str,
    settings: Mapping[str, Any] | None = None,
    budget: Budget,
    seed: int = 0,
    tokenizer: Any = None,
    protections: Mapping[str, Any] | None = None,
    out_dir: Path | None = None,
    case: Mapping[str, Any] | None = None,
) -> AuditResult:
    """Attack ``observation``, score it against ``truth`` and (with ``out_dir``) write attack.json and the pictures.

    A time budget that stops the attack before its iteration budget is logged as a warning and recorded
    (``budget.stopped_by = "time"``, beside ``iterations_reached``): such a result understates the attack.
    """
    instance = build_attack(attack, settings)
    instance.check(observation)
    start = time.perf_counter()
    reconstruction = instance.reconstruct(observation, budget=budget, generator=torch.Generator().manual_seed(seed))
    seconds = time.perf_counter() - start
    reconstruction.seconds = reconstruction.seconds or seconds
    spent = budget_outcome(budget, reconstruction.iterations, max(seconds, reconstruction.seconds))
    if spent["stopped_by"] == "time":
        where = f" (client {case['client']}, batch {case.get('sample', 0)})" if case and "client" in case else ""
        log.warning(
            "%s%s stopped by its time budget of %gs after %d of %d iterations; raise --seconds or attack.max_seconds (0: no limit)",
            attack,
            where,
            budget.max_seconds,
            reconstruction.iterations,
            budget.max_iterations,
        )
    mean, per_sample, primary = score(observation, reconstruction, truth, tokenizer=tokenizer)
    result = AuditResult(
        attack=attack,
        settings=instance.settings.to_dict(),
        threat_model=observation.threat_model.to_dict(),
        setup=observation.setup.to_dict(),
        protections=dict(protections or {}),
        metrics=mean,
        per_sample=per_sample,
        primary_metric=primary,
        seconds=seconds,
        iterations=reconstruction.iterations,
        reconstruction=reconstruction,
        truth=truth,
        budget=spent,
        case=dict(case or {}),
    )
    if out_dir is not None:
        write_outputs(result, observation, Path(out_dir), tokenizer=tokenizer)
    return result


def budget_outcome(budget: Budget, iterations: int, seconds: float) -> dict[str, Any]:
    """The budget given, the iterations reached, and what stopped the attack (``iterations``, ``time`` or ``attack``)."""
    if iterations >= budget.max_iterations:
        stopped_by = "iterations"
    elif budget.max_seconds and seconds >= budget.max_seconds:
        stopped_by = "time"
    else:
        stopped_by = "attack"  # it finished on its own: a one-shot attack, early stopping, restarts that divide the budget
    return {
        "max_iterations": budget.max_iterations,
        "max_seconds": budget.max_seconds,
        "iterations_reached": iterations,
        "stopped_by": stopped_by,
    }


def protections_of(config: Config) -> dict[str, Any]:
    """The protections a config enables, as recorded in attack.json."""
    p = config.privacy
    out: dict[str, Any] = {
        "privacy": p.mode,
        "defenses": list(config.defense.names),
        "secure_aggregation": config.secure_aggregation.protocol,
    }
    out.update(MECHANISMS.get(p.mode, key="privacy.mode").protections(p))
    return out


def audit_config(
    config: Config,
    *,
    case: AuditCase,
    attack: str,
    settings: Mapping[str, Any] | None = None,
    budget: Budget,
    out_dir: Path | None = None,
    seed: int = 0,
    parameters: NamedArrays | None = None,
    prepared: PreparedCase | None = None,
    sample: int = 0,
) -> AuditResult:
    """Build the case ``config`` implies for ``case.client``'s batch number ``sample`` (see the module docstring),
    attack it and score it."""
    build_attack(attack, settings)  # validate the attack name and settings before any heavy work
    prepared = prepared or prepare_case(config)
    observation, truth = observe_config(prepared, case, seed=seed, parameters=parameters, sample=sample)
    chosen = _batch_indices(prepared, case.client, case.batch_size, seed, sample)
    protections = protections_of(config)
    if prepared.dp_noise:  # the mechanism replaces the trainer (DP-SGD)
        protections["noise_multiplier"] = prepared.dp_noise[case.client]
    try:
        return run_attack(
            observation,
            truth,
            attack=attack,
            settings=settings,
            budget=budget,
            seed=seed,
            tokenizer=prepared.tokenizer,
            protections=protections,
            out_dir=out_dir,
            case={"client": case.client, "sample": sample, "indices": [int(i) for i in chosen]},
        )
    finally:
        prepared.model.set_trainable(prepared.initial_parameters)


def audit_capture(
    run_dir: Path,
    *,
    round: int | None = None,
    client: int | None = None,
    attack: str,
    settings: Mapping[str, Any] | None = None,
    budget: Budget,
    knows_labels: bool = False,
    out_dir: Path | None = None,
    seed: int = 0,
    prepared: PreparedCase | None = None,
) -> AuditResult:
    """Replay an observation captured during training in ``run_dir`` (see :mod:`secure_ffm.run.audit`);
    ``prepared``: its config's case, loaded once."""
    from secure_ffm.run.audit import load_observation

    run_dir = Path(run_dir)
    config = read_run_config(run_dir) if prepared is None else prepared.config
    build_attack(attack, settings)
    captured = load_observation(run_dir, round=round, client=client)
    prepared = prepared or prepare_case(config)
    model = prepared.model
    model.set_trainable(captured.global_parameters)
    indices = captured.indices
    batch = model.make_batch(prepared.encoded, indices)
    meta = captured.metadata
    steps = int(meta.get("local_steps") or 1)
    setup = TrainingSetup(
        num_examples=len(indices),
        local_steps=max(steps, 1),
        local_batch_size=int(meta.get("local_batch_size") or 0),
        learning_rate=float(meta.get("learning_rate") or 0.1),
        num_clients=int(meta.get("num_clients") or 1),
    )
    observation = _observation(
        model,
        batch,
        observes=captured.observes,
        knows_labels=knows_labels,
        setup=setup,
        parameters=captured.global_parameters,
        observed=captured.observed,
    )
    batches = [batch]
    if captured.observes == "aggregate":
        batches += [
            model.make_batch(prepared.encoded, prepared.client_indices[k])
            for k in meta.get("aggregated_clients", [])
            if k != captured.client
        ]
    truth = _truth(prepared, batches)
    protections = protections_of(config)
    protections.update(captured_round=captured.round, captured_client=captured.client, optimizer=meta.get("optimizer"))
    if meta.get("optimizer") not in (None, "sgd"):
        log.warning("the client trained with %s; attacks that simulate local steps assume plain SGD", meta.get("optimizer"))
    return run_attack(
        observation,
        truth,
        attack=attack,
        settings=settings,
        budget=budget,
        seed=seed,
        tokenizer=prepared.tokenizer,
        protections=protections,
        out_dir=out_dir,
        case={"client": captured.client, "round": captured.round, "sample": 0, "indices": [int(i) for i in indices]},
    )


def read_run_config(run_dir: Path) -> Config:
    """The training config a run directory was written with (read through the project's reader: one line when damaged)."""
    from secure_ffm.config import config_from_dict, read_toml

    config_path = Path(run_dir) / "config.toml"
    if not config_path.is_file():
        raise ConfigError("--run", f"{run_dir} is not a run directory (no config.toml)", "pass a directory written by `secure-ffm train`")
    return config_from_dict(read_toml(config_path, key="--run", fix="pass a directory written by `secure-ffm train`"))


# --------------------------------------------------------------------------- many batches in one call

INTERVAL_LEVEL = 0.95
INTERVAL_METHOD = "Student t"


def t_interval(values: Sequence[float], level: float = INTERVAL_LEVEL) -> tuple[float, float] | None:
    """The Student t confidence interval of the mean of ``values`` (None for fewer than two, or a non-finite value).

    mean ± t_{(1+level)/2, n-1} · s / √n with s the sample standard deviation: it treats the values as
    independent draws, which holds for disjoint batches attacked separately, not for examples of one batch.
    """
    array = np.asarray(list(values), dtype=np.float64)
    if len(array) < 2 or not np.all(np.isfinite(array)):
        return None
    from scipy import stats

    mean = float(array.mean())
    half = float(stats.t.ppf((1 + level) / 2, len(array) - 1) * array.std(ddof=1) / math.sqrt(len(array)))
    return mean - half, mean + half


@dataclass
class AuditSummary:
    """Several audits of one attack (clients x batches): per-batch values, their mean and its confidence interval.

    The unit is the attacked batch: each audit's value is the mean over its examples, the summary's mean
    is the mean of those values (every batch counts the same), and the interval is a 95% Student t
    interval over them (:func:`t_interval`).
    """

    results: list[AuditResult]

    @property
    def primary_metric(self) -> str:
        return self.results[0].primary_metric

    def metric_names(self) -> list[str]:
        first = self.results[0].metrics
        return [
            k
            for k, v in first.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and all(k in r.metrics for r in self.results)
        ]

    @property
    def mean(self) -> dict[str, float]:
        return {k: float(np.mean([float(r.metrics[k]) for r in self.results])) for k in self.metric_names()}

    @property
    def intervals(self) -> dict[str, tuple[float, float] | None]:
        return {k: t_interval([float(r.metrics[k]) for r in self.results]) for k in self.metric_names()}

    @property
    def primary_value(self) -> float:
        return self.mean[self.primary_metric]

    def to_dict(self) -> dict[str, Any]:
        """attack.json of the call: a single audit's keys, with ``mean``, ``per_sample`` and ``iterations`` over every batch, plus
        ``interval`` and one entry per batch in ``audits``."""
        first = self.results[0]
        per_sample = [{"client": r.case.get("client"), "sample": r.case.get("sample", 0), **s} for r in self.results for s in r.per_sample]
        intervals = self.intervals
        return {
            "attack": first.attack,
            "settings": first.settings,
            "threat_model": first.threat_model,
            "setup": first.setup,
            "protections": first.protections,
            "primary_metric": self.primary_metric,
            "primary_value": self.primary_value,
            "mean": self.mean,
            "interval": {
                "method": INTERVAL_METHOD,
                "level": INTERVAL_LEVEL,
                "unit": "attacked batch (its mean over examples)",
                "n": len(self.results),
                "bounds": {k: (list(v) if v is not None else None) for k, v in intervals.items()},
            },
            "per_sample": per_sample,
            "audits": [
                {
                    "client": r.case.get("client"),
                    "sample": r.case.get("sample", 0),
                    **({"round": r.case["round"]} if "round" in r.case else {}),
                    "indices": r.case.get("indices", []),
                    "primary_value": r.primary_value,
                    "mean": r.metrics,
                    "iterations": r.iterations,
                    "budget": r.budget,
                    "seconds": r.seconds,
                    **({"noise_multiplier": r.protections["noise_multiplier"]} if "noise_multiplier" in r.protections else {}),
                    "outputs": {k: f"{r.case['dir']}/{v}" if r.case.get("dir") else v for k, v in r.outputs.items()},
                }
                for r in self.results
            ],
            "budget": {"max_iterations": first.budget.get("max_iterations"), "max_seconds": first.budget.get("max_seconds")},
            "iterations": sum(r.iterations for r in self.results),
            "seconds": sum(r.seconds for r in self.results),
            "outputs": dict(first.outputs) if len(self.results) == 1 else {},
        }

    def write(self, out_dir: Path) -> Path:
        path = Path(out_dir) / "attack.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        # owner-only: its per-sample rows hold the original texts (clients' training examples) beside the recovered ones
        write_private_text(path, json.dumps(to_jsonable(self.to_dict()), indent=1, sort_keys=True))
        return path


CaseHook = Callable[[int, int, int, int], None]
"""Called before each audit as ``hook(client, sample, position, total)`` (the CLI labels its progress bar with it)."""


def _case_dir(out_dir: Path | None, many: bool, name: str) -> Path | None:
    if out_dir is None:
        return None
    return Path(out_dir) / name if many else Path(out_dir)


def audit_config_many(
    config: Config,
    *,
    case: AuditCase,
    clients: Sequence[int],
    samples: int = 1,
    attack: str,
    settings: Mapping[str, Any] | None = None,
    budget: Budget,
    out_dir: Path | None = None,
    seed: int = 0,
    on_case: CaseHook | None = None,
) -> AuditSummary:
    """``samples`` disjoint batches of each of ``clients``, each audited as :func:`audit_config` does, the model loaded once.

    With one batch in all, the outputs go to ``out_dir`` itself; with more, each batch's to
    ``out_dir/client-K-sample-S/`` and the summary (:class:`AuditSummary`) to ``out_dir/attack.json``.
    """
    if not clients:
        raise ConfigError("--clients", "is empty", "name at least one client, e.g. --clients 0,3")
    if samples < 1:
        raise ConfigError("--samples", f"must be at least 1, got {samples}")
    build_attack(attack, settings)
    prepared = prepare_case(config)
    check_samples(prepared, clients, case.batch_size, samples)
    jobs = [(client, sample, f"client-{client}-sample-{sample}") for client in clients for sample in range(samples)]

    def run_one(client: int | None, sample: int, directory: Path | None) -> AuditResult:
        case_of_client = replace(case, client=client)
        return audit_config(
            config,
            case=case_of_client,
            attack=attack,
            settings=settings,
            budget=budget,
            out_dir=directory,
            seed=seed,
            prepared=prepared,
            sample=sample,
        )

    return _audit_each(jobs, run_one, out_dir=out_dir, on_case=on_case)


def _audit_each(
    jobs: Sequence[tuple[int | None, int, str]],
    run_one: Callable[[int | None, int, Path | None], AuditResult],
    *,
    out_dir: Path | None,
    on_case: CaseHook | None,
) -> AuditSummary:
    """Run ``run_one(client, sample, its folder)`` for each ``(client, sample, folder name)`` job and summarize.

    With one job its outputs go to ``out_dir`` itself; with more, each job's to ``out_dir/<folder name>/``.
    """
    many = len(jobs) > 1
    results = []
    for position, (client, sample, name) in enumerate(jobs):
        if on_case is not None:
            on_case(-1 if client is None else client, sample, position, len(jobs))
        result = run_one(client, sample, _case_dir(out_dir, many, name))
        if many:
            result.case["dir"] = name
        results.append(result)
    summary = AuditSummary(results)
    if out_dir is not None:
        summary.write(out_dir)
    return summary


def audit_capture_many(
    run_dir: Path,
    *,
    clients: Sequence[int] | None,
    round: int | None = None,
    attack: str,
    settings: Mapping[str, Any] | None = None,
    budget: Budget,
    knows_labels: bool = False,
    out_dir: Path | None = None,
    seed: int = 0,
    on_case: CaseHook | None = None,
) -> AuditSummary:
    """The captures of ``clients`` (None: the first capture) in ``round`` (None: each client's first), the model loaded once."""
    from secure_ffm.run.audit import captured_observations, refuse_public_round

    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    build_attack(attack, settings)
    refuse_public_round(run_dir, round)
    available = captured_observations(run_dir)
    targets: list[int | None] = list(clients) if clients else [None]
    missing = [k for k in targets if not any((round is None or r == round) and (k is None or c == k) for r, c in available)]
    if missing:
        listing = ", ".join(f"round {r} client {c}" for r, c in available[:8])
        where = f" in round {round}" if round is not None else ""
        raise ConfigError(
            "--clients/--round", f"no capture of client(s) {', '.join(str(k) for k in missing)}{where} in {run_dir}", f"captured: {listing}"
        )
    prepared = prepare_case(config)

    def run_one(client: int | None, sample: int, directory: Path | None) -> AuditResult:
        return audit_capture(
            run_dir,
            round=round,
            client=client,
            attack=attack,
            settings=settings,
            budget=budget,
            knows_labels=knows_labels,
            out_dir=directory,
            seed=seed,
            prepared=prepared,
        )

    return _audit_each([(client, 0, f"client-{client}") for client in targets], run_one, out_dir=out_dir, on_case=on_case)


def write_outputs(result: AuditResult, observation: Observation, out_dir: Path, *, tokenizer: Any = None) -> None:
    """``attack.json`` and ``reconstructions.png`` (images) or ``reconstructions.md`` (text) in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    assert result.reconstruction is not None and result.truth is not None
    if observation.data_kind == "image":
        from attacks.pictures import write_image_grid

        path = out_dir / "reconstructions.png"
        write_image_grid(result.truth, result.reconstruction, result.per_sample, path)
        save_private_array(out_dir / "reconstructions.npy", result.reconstruction.inputs.detach().cpu().numpy().astype(np.float32))
        result.outputs["picture"] = path.name
        result.outputs["arrays"] = "reconstructions.npy"
    else:
        from attacks.pictures import write_text_table

        path = out_dir / "reconstructions.md"
        write_text_table(result.truth, result.reconstruction, result.per_sample, path, tokenizer=tokenizer)
        result.outputs["table"] = path.name
    # owner-only, as the pictures: the originals are clients' training examples (text audits list them per sample)
    write_private_text(out_dir / "attack.json", json.dumps(to_jsonable(result.to_dict()), indent=1, sort_keys=True))
