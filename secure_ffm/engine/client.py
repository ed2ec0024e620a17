"""The client half of a federated round, independent of any runner.

A :class:`FederatedClient` trains the shared model object on its own examples,
computes its delta, passes it through the update-transform pipeline and encodes it
with its half of the aggregation protocol's round. The in-process transport creates one
per sampled client per call (clients are lazy: just an index array and a state
dict); a Flower ``ClientApp`` can wrap the same class.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from secure_ffm.engine.aggregation import AggregationProtocol, ClientRound
from secure_ffm.engine.training import ClientDeclined, EvalResult, LocalExtras, LocalTrainer, QuadraticPenalty, evaluate
from secure_ffm.engine.transforms import TransformContext, UpdatePipeline
from secure_ffm.engine.wire import ClientMessage, ClientUpdate, FitInstructions, instructions_digest
from secure_ffm.models.base import EncodedData, FederatedModel
from secure_ffm.privacy.noise import ANSWERS_KEY, LOCAL_TRAINING, SECAGG_ROUNDING, TRANSFORM, NoisePolicy, PrivateRandomness
from secure_ffm.seeding import TRAINING, derive_seed, seed_torch

log = logging.getLogger(__name__)

IMPORTANCE_STATISTIC = "importance/"
"""Prefix of the update statistics carrying the client's gradient importances, when a round asks for them
(``collect_importance``: a continual run's EWC)."""

TRAIN_ONLY = "train_only"
"""Fit-config key: ``"head"`` in linear probing's rounds (``model.linear_probe_rounds``): the client trains only the
classification head and sends a zero update for its other parameters."""
TRAIN_ONLY_CHOICES = ("head",)

PUBLIC_CLIENT_METRICS = frozenset({"steps", "epsilon", "train_seconds", "encode_seconds"})
"""The metrics a client sends under ``privacy.client_metrics = "public"``: none depends on the values of its examples.
``steps`` follows from the plan and the client's example count (which its message carries anyway), ``epsilon`` from its
ledger's noise multiplier, sampling rate and steps; the two durations are timing, which the server observes anyway
from when replies arrive (timing side channels are outside the threat model, docs/threat_model.md). Any other metric
(the training loss, DP-FedAvg's ``update_norm`` before clipping, DP-SGD's ``empty_batches``, a plug-in's own) stays on
the client: an allow-list, so a metric added later is withheld until it is shown to be safe here."""

CLIENT_METRICS = {"public": PUBLIC_CLIENT_METRICS, "all": None}
"""``privacy.client_metrics`` resolved (:func:`client_metrics_policy`): the metrics a message may carry (None: all)."""


def client_metrics_policy(setting: str, *, private: bool, hides_updates: bool) -> str:
    """``public`` or ``all``: ``privacy.client_metrics`` with ``auto`` resolved.

    A client's training loss is a function of its examples that no mechanism protects: DP's noise is added to the
    update only, and secure aggregation hides the update but not the metrics beside it. So ``auto`` sends only
    :data:`PUBLIC_CLIENT_METRICS` whenever the run is ``private`` (a DP mechanism) or its protocol ``hides_updates``
    (masking, CKKS), and everything in a plaintext run without DP, where the server sees each update anyway."""
    if setting == "auto":
        return "public" if private or hides_updates else "all"
    if setting not in CLIENT_METRICS:
        raise ValueError(f"privacy.client_metrics {setting!r}: expected auto, public or all")
    return setting


TRAIN_LOSS_STATISTIC = "train_loss"
"""The update statistic that carries a client's training loss through secure aggregation (:class:`AggregatedLoss`)."""


@dataclass(frozen=True)
class AggregatedLoss:
    """The training loss as an update statistic, where secure aggregation hides the update but DP is off.

    A masked or encrypted run without DP keeps each client's loss out of its metrics (:data:`CLIENT_METRICS`), so
    the loss travels instead inside the protocol's vector, weighted like the update: the server learns only the
    survivors' weighted mean loss, the figure ``metrics.jsonl`` reported before. The protocol bounds each coordinate
    (masking clips ``w * value`` to ``clip_range * W``), so a loss is sent as ``min(loss, cap) / cap * scale`` with
    ``scale = min(1, clip_range)``; a non-finite loss counts as ``cap``. The decoded mean is exact up to the protocol's
    encoding error for losses in ``[0, cap]``."""

    scale: float = 1.0
    cap: float = 100.0

    def encode(self, loss: Any) -> np.ndarray:
        value = float(loss) if loss is not None and np.isfinite(loss) else self.cap
        return np.asarray([min(max(value, 0.0), self.cap) / self.cap * self.scale], dtype=np.float64)

    def decode(self, mean: Any) -> float:
        return float(np.asarray(mean).reshape(-1)[0]) * self.cap / self.scale


@dataclass(frozen=True)
class ClientRules:
    """What a client's own config decides, whatever the round's instructions say (docs/threat_model.md). The defaults
    are the strictest (a client built without a run's rules keeps its example-dependent metrics);
    :meth:`of` derives a run's."""

    weighting: str | None = None
    """The weighting this client applies to its update whatever the server's instructions say (its privacy mechanism's
    :attr:`~secure_ffm.privacy.mechanisms.PrivacyMechanism.client_weighting`), or None to follow the instructions."""
    sends_importance: bool = False
    """Whether a round's ``collect_importance`` (a continual run's EWC) is honoured: only where the importances are as
    private as the update, i.e. the run spends no privacy budget (the protocol protects both alike) or its trainer
    privatizes every step the importances are read from (DP-SGD). Otherwise (DP-FedAvg: local steps in the clear,
    noise calibrated to a clipped update and a 0/1 count) squared gradients would reach the aggregate without noise
    sized for them, so a server's request for them is refused and logged: from the client's own config, never the
    server's."""
    aggregated_loss: AggregatedLoss | None = None
    """When set, the training loss also travels as the update statistic :data:`TRAIN_LOSS_STATISTIC` (a masked or
    encrypted run without DP: the server expects it in every message)."""
    metrics_policy: str = "public"
    """``public`` or ``all`` (:func:`client_metrics_policy`): which metrics leave the client with its update. It comes
    from the client's own config, never from the server's instructions (a run resolves ``privacy.client_metrics``;
    a client built without one keeps its example-dependent metrics)."""
    protected: bool = True
    """Whether the run is private or hides updates: where sending every metric (``all``) is a side channel."""
    secret_training_seed: bool = False
    """Whether local training's torch draws (dropout masks, MLM masks, shuffles) are seeded from the answer's secret
    randomness rather than from ``run.seed``: under sample-level DP (its trainer's per-example clipping bounds one
    example's effect only when the masks the others get are not known to whoever sees the step; a mask is handed out by
    position, so an example joining a batch moves the others'), unless ``privacy.reproducible_noise`` asks for runs that
    repeat."""
    answer_limit: int | None = None
    """The most fit requests this client answers over the run (its mechanism's
    :meth:`~secure_ffm.privacy.mechanisms.PrivacyMechanism.client_answer_limit`: DP-FedAvg with client-placed noise
    answers at most the rounds its own config plans); past it the client declines. None: no limit here (a DP-SGD
    client's own ledger charges every answer and declines once its budget is spent)."""

    @classmethod
    def of(cls, config: Any, *, mechanism: Any, protocol: Any) -> ClientRules:
        """The rules of ``config``'s clients, from its privacy mechanism's class (``spends_budget``,
        ``replaces_trainer``, ``client_weighting``) and its aggregation protocol's (``hides_updates``)."""
        private, hides = bool(mechanism.spends_budget), bool(protocol.hides_updates)
        policy = client_metrics_policy(config.privacy.client_metrics, private=private, hides_updates=hides)
        aggregated = policy == "public" and hides and not private
        return cls(
            weighting=mechanism.client_weighting,
            sends_importance=not private or bool(mechanism.replaces_trainer),
            aggregated_loss=AggregatedLoss(scale=min(1.0, config.secure_aggregation.clip_range)) if aggregated else None,
            metrics_policy=policy,
            protected=private or hides,
            secret_training_seed=private and bool(mechanism.replaces_trainer) and not config.privacy.reproducible_noise,
            answer_limit=mechanism.client_answer_limit(config),
        )


class EvaluationWithheld(PermissionError):
    """A client of a private or masked run (``privacy.client_metrics = "public"``) refuses to evaluate a model on its
    own examples: the loss and accuracy it would send are functions of those examples that no mechanism covers, and a
    server free to send any parameters could use such answers as an oracle on the private data."""


def withhold_metrics(metrics: MutableMapping[str, Any], policy: str) -> list[str]:
    """Remove from ``metrics`` (in place) what ``policy`` keeps on the client; the names removed, sorted."""
    allowed = CLIENT_METRICS[policy]
    if allowed is None:
        return []
    withheld = sorted(name for name in metrics if name not in allowed)
    for name in withheld:
        del metrics[name]
    return withheld


def held_fixed(model: FederatedModel, config: Mapping[str, Any]) -> tuple[str, ...]:
    """The trainable parameters a round's fit config holds fixed (all but the head under ``train_only = "head"``)."""
    only = config.get(TRAIN_ONLY)
    if only is None:
        return ()
    if only not in TRAIN_ONLY_CHOICES:
        raise ValueError(f"fit config {TRAIN_ONLY}={only!r}: expected one of {TRAIN_ONLY_CHOICES}")
    head = set(model.head_names())
    if not head:
        raise ValueError(f"fit config {TRAIN_ONLY}={only!r}, but the model trains no parameter of a 'head' module")
    return tuple(name for name in model.trainable_names() if name not in head)


def client_weight(weighting: str, num_examples: int) -> float:
    """A client's weight in the mean: ``examples`` (FedAvg) or ``uniform`` (DP-FedAvg)."""
    if weighting == "examples":
        return float(num_examples)
    if weighting == "uniform":
        return 1.0
    raise ValueError(f"unknown weighting {weighting!r}; use 'examples' or 'uniform'")


@dataclass
class FederatedClient:
    """One participant: an index set into a shared encoded pool, plus its persistent state."""

    client_id: int
    model: FederatedModel
    encoded: EncodedData
    indices: np.ndarray
    trainer: LocalTrainer
    protocol: AggregationProtocol
    transforms: UpdatePipeline = field(default_factory=UpdatePipeline)
    state: MutableMapping[str, Any] = field(default_factory=dict)
    """This client's private state (its noise secret, DP ledger, ...); checkpointed with the client, never sent."""
    seed: int = 0
    noise: NoisePolicy = field(default_factory=NoisePolicy)
    """Where the client's noise, DP sampling and defense randomness come from (its own secret by default)."""
    rules: ClientRules = field(default_factory=ClientRules)
    """What this client's own config decides whatever the round's instructions say (:class:`ClientRules`)."""

    @property
    def num_examples(self) -> int:
        return len(self.indices)

    def randomness(self) -> PrivateRandomness:
        """This client's secret randomness (drawn from the OS CSPRNG into its state on first use)."""
        return self.noise.client(self.client_id, self.state)

    def train(self, ins: FitInstructions, *, randomness: PrivateRandomness | None = None) -> ClientUpdate:
        """Local training from the global parameters; returns the untransformed update. ``randomness``: the secret
        randomness of this answer (:meth:`fit` passes :meth:`answer_randomness`'s), else the client's own."""
        self._require_examples()
        self.model.set_trainable(ins.parameters)
        training_seed = derive_seed(self.seed, TRAINING, ins.round, self.client_id)
        if self.rules.secret_training_seed:  # sample-level DP: nobody may know which dropout mask an example gets
            training_seed = int((randomness or self.randomness()).generator(LOCAL_TRAINING, ins.round).integers(2**62))
        seed_torch(training_seed)  # dropout and any other torch-global draws
        extras = LocalExtras(
            client_id=self.client_id,
            penalty=QuadraticPenalty.from_arrays(ins.arrays),
            importance={} if ins.config.get("collect_importance") and self._may_send_importance(ins.round) else None,
        )
        fixed = held_fixed(self.model, ins.config)
        with self.model.holding_fixed(fixed):
            result = self.trainer.train(
                self.model,
                self.encoded,
                self.indices,
                fit_config=ins.config,
                global_parameters=ins.parameters,
                generator=torch.Generator().manual_seed(training_seed),
                state=self.state,
                randomness=randomness or self.randomness(),
                extras=extras,
            )
        delta = result.update if result.update is not None else self.model.trainable_delta(ins.parameters)
        if set(delta) != set(ins.parameters):
            raise RuntimeError(f"the trainer's update covers {len(delta)} of the {len(ins.parameters)} parameters sent")
        metrics = {"train_loss": result.train_loss, "train_seconds": result.seconds, "steps": float(result.steps)}
        metrics.update(result.extra or {})
        statistics = {}
        if extras.importance is not None:  # every trained parameter, zeros where no step recorded one
            statistics = {
                IMPORTANCE_STATISTIC + name: np.asarray(extras.importance.get(name, np.zeros_like(value)), dtype=np.float32)
                for name, value in ins.parameters.items()
            }
        return ClientUpdate(self.client_id, ins.round, delta, result.num_examples, metrics, statistics=statistics)

    def _require_examples(self) -> None:
        if len(self.indices) == 0:
            raise ClientDeclined("no training examples in this round's data")

    def _may_send_importance(self, round: int) -> bool:
        if not self.rules.sends_importance:
            log.warning(
                "round %d: client %d sends no gradient importances: its privacy mechanism does not privatize them", round, self.client_id
            )
        return self.rules.sends_importance

    def answer_randomness(self, round: int) -> PrivateRandomness:
        """The secret randomness of this client's next fit answer, counted in its private state (:data:`ANSWERS_KEY`).

        Every draw of an answer (the trainer's DP noise and sampling, DP-FedAvg's shares, defenses, masking's rounding)
        is keyed by this count, never by the request's round alone: a server that asked for round ``r`` twice, with
        two different models, would otherwise get the same noise on both answers and subtract it (the difference of
        the two sums is noise-free; docs/threat_model.md). The count is taken before anything is drawn, so an answer
        that fails half-way never hands its draws to the next one. Past :attr:`ClientRules.answer_limit` answers the
        client declines (:class:`ClientDeclined`): each answer is another noisy view of its data."""
        answered = int(self.state.get(ANSWERS_KEY, 0))
        limit = self.rules.answer_limit
        if limit is not None and answered >= limit:
            raise ClientDeclined(
                f"client {self.client_id} has answered {answered} fit requests, the {limit} rounds its privacy budget plans for; "
                f"it answers no more (round {round} asked)"
            )
        self.state[ANSWERS_KEY] = answered + 1
        return self.randomness().for_answer(answered)

    def fit(self, ins: FitInstructions, *, encoder: ClientRound | None = None, payload: Any = None) -> ClientMessage:
        """Train, transform and encode: the message this client sends in round ``ins.round``.

        ``encoder`` is this client's half of the protocol's round, which answered the set-up stages (made here
        when there is none, for protocols without set-up); ``payload`` is its part of the fit request."""
        if encoder is None:
            encoder = self.protocol.client_round(self.client_id, ins.round)
        encoder.check_ready()  # before training: a request the encoder refuses anyway costs no budget and no answer
        self._require_examples()  # before counting: a client with nothing to train spends no answer
        # masking binds its pairwise masks to the request this client trains on (hashed before training touches anything):
        # a server that sends clients different models, to zero every update but one, then unmasks noise, not that update
        bound = instructions_digest(ins) if encoder.binds_instructions else None
        randomness = self.answer_randomness(ins.round)
        update = self.train(ins, randomness=randomness)
        start = time.perf_counter()
        if len(self.transforms):  # (no pipeline, no context: keying its generator costs about 50 µs)
            context = TransformContext(
                round=ins.round,
                client_id=self.client_id,
                rng=randomness.generator(TRANSFORM, ins.round),
                randomness=randomness,
                global_parameters=ins.parameters,
                state=self.state,
                config=ins.config,
                model=self.model,
                encoded=self.encoded,
                indices=self.indices,
            )
            update = self.transforms(update, context)
        if self.rules.aggregated_loss is not None:
            update = update.with_statistics(**{TRAIN_LOSS_STATISTIC: self.rules.aggregated_loss.encode(update.metrics.get("train_loss"))})
        requested = str(ins.config.get("weighting", "examples"))
        if self.rules.weighting is not None and requested != self.rules.weighting:
            log.warning(
                "round %d: client %d weighs its update %s as its privacy mechanism needs, not %s as the server asked",
                ins.round,
                self.client_id,
                self.rules.weighting,
                requested,
            )
        weight = client_weight(self.rules.weighting or requested, update.num_examples)
        # stochastic rounding (masking) from the client's secret, so the server cannot replay it either
        rng = randomness.generator(SECAGG_ROUNDING, ins.round) if encoder.uses_rng else None
        message = encoder.encode(update, weight=weight, rng=rng, payload=payload, instructions_digest=bound)
        message.metrics["encode_seconds"] = time.perf_counter() - start  # type: ignore[index]
        withhold_metrics(message.metrics, self.rules.metrics_policy)  # type: ignore[arg-type]
        return message

    def evaluate(self, ins: FitInstructions, *, batch_size: int = 128) -> EvalResult:
        """The global model's loss, accuracy and macro F1 on this client's own examples (refused under the ``public``
        metrics policy: :class:`EvaluationWithheld`)."""
        if self.rules.metrics_policy == "public":
            raise EvaluationWithheld(
                f"client {self.client_id} evaluates no model on its own examples: its config keeps per-client metrics private "
                '(privacy.client_metrics resolves to "public" in a private or masked run; "all" allows it, in the clear)'
            )
        self.model.set_trainable(ins.parameters)
        return evaluate(self.model, self.encoded, self.indices, batch_size=batch_size)
