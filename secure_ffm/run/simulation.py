"""The in-process runner: one process plays the server and every client.

It composes the engine (Federated Foundation Models, arXiv 2305.11414): the round orchestrator
(:mod:`secure_ffm.engine.orchestrator`, the server's side of each round), the in-process
transport (:mod:`secure_ffm.transports.in_process`, which calls the clients directly) and the
run writer (:mod:`secure_ffm.run.writer`, the run directory). One model object and one encoded
copy of the data serve every client: a client is materialized for one call (an index array
plus its state dict), so memory stays about one model plus the data whatever the number of
clients. Runs are deterministic for a seed, checkpoint after every round, and a resumed run
continues to exactly the result of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from secure_ffm import __version__, machine_load
from secure_ffm.allocator import keep_freed_memory
from secure_ffm.config import Config
from secure_ffm.continual.run import ContinualRun, check_continual
from secure_ffm.data import load_run_data
from secure_ffm.data.base import FederatedData
from secure_ffm.engine.aggregation import PROTOCOLS, Aggregate, AggregateStep, AggregationProtocol
from secure_ffm.engine.client import PUBLIC_CLIENT_METRICS, TRAIN_ONLY, ClientRules, FederatedClient
from secure_ffm.engine.orchestrator import RoundHooks, RoundOrchestrator, RunObserver
from secure_ffm.engine.schedule import FEDERATED, PUBLIC, SCHEDULES, Decision, RoundSignals, build_schedule
from secure_ffm.engine.server import Server
from secure_ffm.engine.strategies import build_strategy
from secure_ffm.engine.training import StandardTrainer, build_trainer, evaluate
from secure_ffm.engine.transforms import UpdatePipeline, build_defenses
from secure_ffm.engine.wire import ClientMessage, FitInstructions, Scalar, nbytes, num_parameters
from secure_ffm.errors import CheckpointError, ConfigError
from secure_ffm.models import build_model
from secure_ffm.models.base import EncodedData, FederatedModel
from secure_ffm.privacy.mechanisms import PrivacyMechanism, build_mechanism
from secure_ffm.privacy.noise import NoisePolicy
from secure_ffm.run.audit import ObservationRecorder, list_observations
from secure_ffm.run.checkpoint import Checkpoint
from secure_ffm.run.writer import PARTICIPATION_FIELDS, RunWriter, config_differences, read_metrics, read_run_config
from secure_ffm.seeding import DROPOUT, INIT, PUBLIC_PHASE, derive_seed, generator, seed_torch
from secure_ffm.transports.base import Transport
from secure_ffm.transports.in_process import InProcessTransport
from secure_ffm.variants import CLIENT_SAMPLING

log = logging.getLogger(__name__)

AVERAGE = "ema/"
"""Prefix of the moving average's arrays among a checkpoint's server arrays (``server.ema_decay``)."""

__all__ = [
    "PreparedRun",
    "RunObserver",
    "Simulation",
    "config_differences",
    "prepare_run",
    "read_metrics",
    "read_run_config",
    "without_timings",
]


def without_timings(row: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` less its wall-clock columns (``seconds`` and every ``*_seconds``), which differ between identical runs."""
    return {k: v for k, v in row.items() if not k.endswith("seconds")}


@dataclass
class PreparedRun:
    """Everything a run needs, built and validated before anything is written to disk."""

    config: Config
    data: FederatedData
    model: FederatedModel
    encoded_private: EncodedData
    encoded_test: EncodedData
    privacy: PrivacyMechanism
    initial_parameters: dict[str, np.ndarray] = field(default_factory=dict)
    encoded_public: EncodedData | None = None
    """The server's public data (``data.public_fraction`` or ``[public_data]``), encoded when the FFM schedule trains on it; no
    client ever receives it."""


def load_data_and_model(config: Config, data: FederatedData | None = None) -> tuple[FederatedData, FederatedModel]:
    """The run's partitioned data and its model, initialized from the run's seed (``run.threads`` sets torch's threads).

    Every command builds them here, so what ``secure-ffm attack`` audits is the model ``secure-ffm train`` trains.
    The server's public data is ``data.public_fraction`` of the training split or the ``[public_data]`` dataset. A
    classifier refuses unlabeled text (a ``.txt`` corpus, ``fortunes``, ``data.label_column = ""``) here, before the
    model is built; ``model.objective = "mlm"`` takes it (:func:`~secure_ffm.data.federate.load_run_data`)."""
    keep_freed_memory()  # before the data and model allocate: no page faults for every step's fresh tensors
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    if data is None:
        data = load_run_data(config)
    model = build_model(
        config.model,
        num_classes=data.dataset.num_classes,
        data_kind=data.dataset.kind,
        seed=derive_seed(config.run.seed, INIT),
        max_length=config.data.max_length,
        image_shape=data.dataset.image_shape,
    )
    if not config.run.threads:
        torch.set_num_threads(auto_threads(model.total_parameter_count()))
    return data, model


SINGLE_THREAD_MAX_PARAMETERS = 5_000_000
"""With ``run.threads = 0``, a model up to this many parameters trains on one torch thread, a larger one on every core.

Measured on this project's 2-core machine with other jobs running (``benchmarks/threads.py``, load average 2.4-3.4,
2026-12-05): one step of batch 32 took 21x longer with two threads than with one for the CNN (0.2 M parameters: the
threads wait on each other at every barrier of many small ops) and 15x for the small ViT (0.1 M), but 0.63x for MiniLM
LoRA and 0.61x for full MiniLM (22.6 M), whose ops are large enough to split."""


def auto_threads(parameters: int) -> int:
    """Torch threads for a model of ``parameters`` parameters when ``run.threads = 0`` (:data:`SINGLE_THREAD_MAX_PARAMETERS`)."""
    if parameters <= SINGLE_THREAD_MAX_PARAMETERS:
        return 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


AUTO_WORKERS_MAX_PARAMETERS = 5_000_000
"""``run.workers = 0`` trains clients in parallel processes only for models up to this many parameters (the CNN); a larger
model (MiniLM) trains one client at a time on every core instead (docs/speed.md)."""
AUTO_WORKERS_MIN_CLIENT_ROUNDS = 40
"""... and only when the run trains at least this many client-rounds, with workers forked from the run's process
(:func:`~secure_ffm.transports.worker_pool.can_fork_workers`): on the CNN, 25 client-rounds took as long with 2 workers
as with one, 100 were 5% faster, 500 18% (docs/speed.md)."""
AUTO_WORKERS_MIN_CLIENT_ROUNDS_SPAWNED = 1000
"""... or this many when each worker must start a fresh interpreter (1.5-3 s each): 500 client-rounds gained nothing."""


def resolve_workers(config: Config, prepared: PreparedRun) -> int:
    """The number of worker processes for a run: ``run.workers``, or with 0 a choice from the cores, the model and the run.

    With 0, only the cores other processes left free count: those they kept busy while this process started
    (:func:`~secure_ffm.machine_load.others_busy_cores`, rounded), since two training processes on one free core are
    slower than one (docs/speed.md).

    A continual run's workers follow the server's stage (:meth:`Simulation.follow_round`, from each request's round)."""
    per_round = config.server.clients_per_round or prepared.data.num_clients
    if config.run.workers:
        return max(1, min(config.run.workers, per_round))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if prepared.model.total_parameter_count() > AUTO_WORKERS_MAX_PARAMETERS:
        return 1
    from secure_ffm.transports.worker_pool import can_fork_workers

    least = AUTO_WORKERS_MIN_CLIENT_ROUNDS if can_fork_workers() else AUTO_WORKERS_MIN_CLIENT_ROUNDS_SPAWNED
    if per_round * config.server.rounds < least:
        return 1
    others = machine_load.others_busy_cores()
    free = cores if others is None else max(1, cores - round(others))
    if free < cores:
        log.info("run.workers = 0: %d of %d cores free (other processes kept %.1f busy during start-up)", free, cores, others)
    return max(1, min(free, per_round))


def prepare_run(config: Config, *, data: FederatedData | None = None) -> PreparedRun:
    """Load and partition the data, build the model and encode the data (raises ConfigError on bad input).

    ``data``: the run's data when it is not ``[data]``'s (a deployed node's own examples,
    :func:`secure_ffm.data.node.node_federated_data`)."""
    data, model = load_data_and_model(config, data)
    PROTOCOLS.get(config.secure_aggregation.protocol, key="secure_aggregation.protocol").check_run(config, data)
    if config.ffm.export and not hasattr(model, "export_pretrained"):
        raise ConfigError(
            "ffm.export",
            f"model.arch = {config.model.arch!r} has no pretrained format to export",
            "use a model that can be exported (hf-text, cnn, vit), or set ffm.export = false",
        )
    if config.ffm.export and config.ffm.export_lora not in model.export_lora_choices:
        raise ConfigError(
            "ffm.export_lora",
            f"model.arch = {config.model.arch!r} exports LoRA {' or '.join(model.export_lora_choices)}, not {config.ffm.export_lora!r}",
            f'use ffm.export_lora = "{model.export_lora_choices[0]}"',
        )
    privacy = build_mechanism(config, data)  # calibrates noise; an unmeetable budget raises here
    privacy.check_model(model)
    if data.stages:
        check_continual(config, data, privacy)
    encoded_private = model.encode(data.private)
    encoded_test = model.encode(data.test)
    # the server's public data is encoded only for a schedule that trains on it
    uses_public = SCHEDULES.get(config.ffm.schedule, key="ffm.schedule").needs_public
    if config.public_data is not None and not uses_public:
        log.warning("[public_data] is loaded but ffm.schedule = %r never trains on it", config.ffm.schedule)
    encoded_public = model.encode(data.public) if uses_public and data.public is not None and len(data.public) else None
    return PreparedRun(config, data, model, encoded_private, encoded_test, privacy, model.get_trainable(), encoded_public)


class PublicPhase:
    """The server's side of FFM pre-training: training the global model on its public data (Federated Foundation
    Models, arXiv 2305.11414, Sec. 3.1, "centralized FM optimization"), and the signals the switch reads from it.

    The public data is split once (seeded) into a training part and a held-out validation part. A public unit runs
    ``ffm.public_steps`` steps of the ``[client]`` optimizer on the training part, from the global parameters, in
    the server's process: no client receives the data, no privacy mechanism runs, no budget is spent.
    """

    def __init__(self, prepared: PreparedRun) -> None:
        assert prepared.encoded_public is not None
        self.prepared = prepared
        self.config = prepared.config
        n = len(prepared.encoded_public)
        order = generator(self.config.run.seed, PUBLIC_PHASE).permutation(n)
        held_out = max(1, int(round(self.config.ffm.public_validation_fraction * n))) if n > 1 else 0
        self.validation = np.sort(order[:held_out])
        self.training = np.sort(order[held_out:]) if n > held_out else np.sort(order)
        client = self.config.client
        self.trainer = StandardTrainer(dataclasses.replace(client, local_steps=self.config.ffm.public_steps, local_epochs=1))

    def run(self, round: int, simulation: Simulation) -> dict[str, Any]:
        """One public unit: train, set the global parameters, and the round's row (no client took part)."""
        start = time.perf_counter()
        model = self.prepared.model
        server = simulation.server
        model.set_trainable(server.parameters)
        seed = derive_seed(self.config.run.seed, PUBLIC_PHASE, round)
        seed_torch(seed)
        result = self.trainer.train(
            model,
            self.prepared.encoded_public,
            self.training,
            fit_config={},
            global_parameters=server.parameters,
            generator=torch.Generator().manual_seed(seed),
            state={},
        )
        server.parameters = {k: np.asarray(v, dtype=np.float32) for k, v in model.get_trainable().items()}
        server.update_average()
        fit_seconds = time.perf_counter() - start
        row: dict[str, Any] = {
            "round": round,
            "train_loss": result.train_loss,
            "test_loss": None,
            "test_accuracy": None,
            "test_macro_f1": None,
            "clients": [],
            "skipped_clients": [],
            "rejected_clients": [],
            "dropped_clients": [],
            "aborted": None,
            "num_examples": 0,
            "public_examples": len(self.training),
            "public_steps": result.steps,
            "bytes_up": 0,
            "bytes_down": 0,
            "fit_seconds": fit_seconds,
            **self.prepared.privacy.public_unit_metrics(round, simulation.client_states),
        }
        eval_seconds = 0.0
        if round == self.config.server.rounds or round % self.config.server.eval_every == 0:
            eval_start = time.perf_counter()
            row.update(simulation.evaluate_parameters(server.model_parameters).as_dict("test_"))
            eval_seconds = time.perf_counter() - eval_start
        row["eval_seconds"] = eval_seconds
        row["seconds"] = time.perf_counter() - start
        return row

    def validation_loss(self, parameters: Mapping[str, np.ndarray]) -> float:
        """The loss on the held-out public part: the public signal of the switch."""
        self.prepared.model.set_trainable(parameters)
        return float(evaluate(self.prepared.model, self.prepared.encoded_public, self.validation).loss)

    def alignment(self, before: Mapping[str, np.ndarray], after: Mapping[str, np.ndarray]) -> float | None:
        """Cosine between the round's aggregated update (``after - before``) and the public descent direction at
        ``before`` (minus the gradient of the mean loss over the public training part's first batch)."""
        update = {k: after[k].astype(np.float64) - before[k].astype(np.float64) for k in before}
        model = self.prepared.model
        model.set_trainable(before)
        batch = model.make_batch(self.prepared.encoded_public, self.training[: self.config.client.batch_size])
        named = model.trainable_named_parameters()
        model.module.eval()
        loss = model.loss(batch)
        gradients = torch.autograd.grad(loss, [p for _, p in named])
        dot = norm_u = norm_g = 0.0
        for (name, _), gradient in zip(named, gradients, strict=True):
            g = -gradient.detach().double().numpy()
            dot += float(np.sum(g * update[name]))
            norm_u += float(np.sum(update[name] ** 2))
            norm_g += float(np.sum(g**2))
        model.set_trainable(after)
        if norm_u == 0 or norm_g == 0:
            return None
        return dot / math.sqrt(norm_u * norm_g)


class _RecordObservations(RoundHooks):
    """The leakage audit's capture: what the server received, with the truth the simulation knows (the clients' indices).

    A protocol that hides single updates gets its aggregate recorded; any other gets each message."""

    def __init__(
        self,
        recorder: ObservationRecorder,
        protocol: AggregationProtocol,
        indices_of: Callable[[int], np.ndarray],
        *,
        decoding: Sequence[AggregateStep] = (),
        one_step: bool = False,
    ) -> None:
        """``indices_of(client)``: the examples the client trains on this round (a continual run's stage and buffer);
        ``decoding``: the mechanism's steps from the protocol's sum to the server's reading of it (distributed DP-SGD's
        noisy gradient sum to a step, discrete shares' units), applied before an aggregate is recorded, as the server
        reads it (until 2026-12-07 the capture held the raw sum); ``one_step``: the mechanism's clients send one step a
        round, whatever ``client.local_steps`` says."""
        self.recorder = recorder
        self.hides_updates = protocol.hides_updates
        self.indices_of = indices_of
        self.decoding = list(decoding)
        self.one_step = one_step

    def message_received(self, round: int, message: ClientMessage, instructions: FitInstructions) -> None:
        if not self.hides_updates and self.recorder.wants(round, message.client_id):
            self.recorder.record_message(
                message,
                global_parameters=instructions.parameters,
                indices=self.indices_of(message.client_id),
                fit_config=instructions.config,
            )

    def aggregate_computed(self, round: int, aggregate: Aggregate, clients: Sequence[int], instructions: FitInstructions) -> None:
        if self.hides_updates and any(self.recorder.wants(round, client) for client in clients):
            for step in self.decoding:
                aggregate = step(round, aggregate)
            self.recorder.record_aggregate(
                round,
                aggregate.mean_delta,
                steps=1 if self.one_step else None,
                clients=list(clients),
                global_parameters=instructions.parameters,
                indices={client: self.indices_of(client) for client in clients},
                fit_config=instructions.config,
            )


class Simulation:
    """Runs the configured rounds in this process, writing a run directory when ``out_dir`` is given."""

    def __init__(
        self,
        prepared: PreparedRun,
        *,
        out_dir: Path | None = None,
        observer: RunObserver | None = None,
        protocol: AggregationProtocol | None = None,
        transforms: UpdatePipeline | None = None,
        hooks: Sequence[RoundHooks] = (),
        transport: Transport | None = None,
    ) -> None:
        """``hooks`` are told what the server receives, beside the leakage audit's recorder; ``transport`` reaches the
        clients (default: this process's, :class:`~secure_ffm.transports.in_process.InProcessTransport`)."""
        self.prepared = prepared
        self.config = prepared.config
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.writer = RunWriter(self.out_dir) if self.out_dir is not None else None
        self.observer = observer or RunObserver()
        secure = self.config.secure_aggregation
        self.protocol = protocol or PROTOCOLS.get(secure.protocol, key="secure_aggregation.protocol").from_config(
            secure, seed=self.config.run.seed
        )
        # the round size the run plans, from its own config: a masking client's minimum threshold (never the server's claim)
        self.protocol.plan_rounds(self.config.server.clients_per_round or prepared.data.num_clients)
        self.protocol.plan_clients(prepared.data.num_clients)
        self.privacy = prepared.privacy
        self.privacy.configure_protocol(self.protocol)
        if self.writer is not None and self.privacy.secret_participation:
            self.writer.withheld = PARTICIPATION_FIELDS  # who took part stays in checkpoints/ (RunWriter.withheld)
        self.noise_policy = NoisePolicy.from_config(self.config)
        self.client_rules = ClientRules.of(self.config, mechanism=type(self.privacy), protocol=type(self.protocol))
        """What every client's own config decides: its metrics (``privacy.client_metrics``), weighting, importances."""
        if self.client_rules.metrics_policy == "public" and self.config.server.evaluate_clients:
            raise ConfigError(
                "server.evaluate_clients",
                "asks every client for its accuracy on its own examples, which the clients of a private or masked run keep "
                '(privacy.client_metrics resolves to "public")',
                'set server.evaluate_clients = false, or privacy.client_metrics = "all" to send those metrics in the clear',
            )
        if self.client_rules.metrics_policy == "all" and self.client_rules.protected:
            log.warning(
                'privacy.client_metrics = "all": every client sends its training loss (and any other metric it computes) '
                "in the clear beside its update; neither DP's noise nor secure aggregation covers them"
            )
        extra = transforms.transforms if transforms is not None else build_defenses(self.config.defense).transforms
        # privacy transforms (clipping, noise shares) come last, right before encoding
        self.transforms = UpdatePipeline([*extra, *self.privacy.client_transforms()])
        self.outside_guarantee = self.transforms.reading_examples() if self.privacy.spends_budget else []
        """Client transforms that read raw examples in a private run (Soteria): their effect is not covered by ε."""
        if self.outside_guarantee:
            log.warning(
                "defense.names %s read each client's raw examples to shape its update, which the %s guarantee does not "
                "cover: privacy.json says so; drop them from defense.names for a guarantee that holds",
                self.outside_guarantee,
                self.privacy.label,
            )
        self.trainer = self.privacy.trainer(build_trainer(self.config.client))
        self.strategy = build_strategy(self.config.server)
        self.server = Server(
            strategy=self.strategy,
            protocol=self.protocol,
            parameters=prepared.initial_parameters,
            num_clients=prepared.data.num_clients,
            clients_per_round=self.config.server.clients_per_round,
            seed=self.config.run.seed,
            aggregate_steps=self.privacy.aggregate_steps(),
            sampling=self.privacy.sampling_generator,
            client_sampling=CLIENT_SAMPLING.get(self.privacy.client_sampling(), key="server.client_sampling")(),
            ema_decay=self.config.server.ema_decay,
        )
        self.server.extra_fit_config.append(self.privacy.fit_config)
        self.head_only_rounds: set[int] = set()
        """The rounds linear probing told to train only the head (``model.linear_probe_rounds``)."""
        if self.config.model.linear_probe_rounds:
            self.server.extra_fit_config.append(self.linear_probing)
            if self.config.server.linear_probe_lr:
                self.strategy.lr_schedule = self.linear_probe_lr
        self.client_states: dict[int, dict[str, Any]] = {}
        """Each client's private state; with a remote ``transport`` it lives on the client's node, and the server holds only
        what nodes report (their privacy ledgers)."""
        if transport is None:
            # every client draws its secret before round 1, so the first checkpoint already holds it (exact --resume)
            for client_id in range(prepared.data.num_clients):
                self.noise_policy.client(client_id, self.client_states.setdefault(client_id, {}))
        self.history: list[dict[str, Any]] = []
        self.recorder = ObservationRecorder(self.config, self.out_dir)
        self.schedule = build_schedule(self.config.ffm)
        self.next_decision: Decision = self.schedule.first()
        self.public = PublicPhase(prepared) if prepared.encoded_public is not None else None
        if self.schedule.needs_public and self.public is None:
            raise ConfigError("ffm.schedule", f'"{self.config.ffm.schedule}" needs public data, but the data left none for the server')
        self.workers = resolve_workers(self.config, prepared) if transport is None else 1
        """Processes that train a round's clients (``run.workers``; 1: this process)."""
        self.transport = transport or self._local_transport()
        self.continual = ContinualRun(self) if prepared.data.stages else None
        """A continual run's stages (``[continual]``); None for an ordinary run."""
        self.orchestrator = RoundOrchestrator(
            server=self.server,
            protocol=self.protocol,
            transport=self.transport,
            statistics=self.privacy.update_statistics(),
            evaluate=self.evaluate_parameters,
            eval_every=self.config.server.eval_every,
            rounds=self.config.server.rounds,
            on_abort=self.config.secure_aggregation.on_abort,
            round_metrics=lambda round: self.privacy.round_metrics(round, self.client_states),
            hooks=[
                _RecordObservations(
                    self.recorder,
                    self.protocol,
                    self.training_indices,
                    decoding=self.privacy.decoding_steps(),
                    one_step=self.privacy.audit_replay(examples_per_client=1) is not None,
                ),
                *hooks,
                *(self.continual.hooks if self.continual else []),
            ],
            observer=self.observer,
            round_statistics=self.continual.expected_statistics if self.continual else None,
            aggregated_loss=self.client_rules.aggregated_loss,
        )

    def _local_transport(self) -> Transport:
        """The clients of this machine: called one after another, or by a pool of worker processes (``run.workers``)."""
        counts = [len(indices) for indices in self.prepared.data.client_indices]
        if self.workers <= 1:
            return InProcessTransport(self.client, self.protocol, example_counts=counts, dropouts=self._dropouts)
        from secure_ffm.transports.worker_pool import WorkerPoolTransport

        key_file = None
        if self.protocol.needs_key_file:  # the workers hold the clients' keys, this process the server's (and the authority's)
            files = self.protocol.deal_key_files()
            role = "authority" if "authority" in files else "server"
            self.protocol.use_key_file(files[role], role=role)
            key_file = files["clients"]
        return WorkerPoolTransport(
            self.config.to_toml(),
            workers=self.workers,
            client_states=self.client_states,
            example_counts=counts,
            dropouts=self._dropouts,
            key_file=key_file,
            local_run=self,
            request_timeout=self.config.run.worker_timeout,
        )

    # ------------------------------------------------------------------ clients

    def client(self, client_id: int) -> FederatedClient:
        """Materialize client ``client_id`` for one call (cheap: indices and a state dict)."""
        return FederatedClient(
            client_id=client_id,
            model=self.prepared.model,
            encoded=self.prepared.encoded_private,
            indices=self.training_indices(client_id),
            trainer=self.trainer,
            protocol=self.protocol,
            transforms=self.transforms,
            state=self.client_states.setdefault(client_id, {}),
            seed=self.config.run.seed,
            noise=self.noise_policy,
            rules=self.client_rules,
        )

    def client_metrics_summary(self) -> dict[str, Any]:
        """What ``summary.json`` and ``privacy.json`` say about the metrics the clients sent beside their updates."""
        if self.client_rules.metrics_policy == "public":
            summary = {
                "policy": "public",
                "sent": sorted(PUBLIC_CLIENT_METRICS),
                "note": "clients kept every metric that depends on their examples (training loss, update norm) to themselves",
            }
            if self.client_rules.aggregated_loss is not None:
                summary["train_loss"] = "inside the protocol's vector: the server learned only each round's weighted mean"
            return summary
        summary: dict[str, Any] = {"policy": "all", "sent": "all"}
        if self.client_rules.protected:
            summary["warning"] = (
                "each client's training loss (and update norm under DP-FedAvg) reached the server in the clear, "
                "outside DP and secure aggregation"
            )
        return summary

    def follow_round(self, round: int) -> None:
        """On a client's side of a run (a SuperNode, a pool worker): the server is at ``round`` (a continual run's stage)."""
        if self.continual is not None:
            self.continual.follow(round)

    def training_indices(self, client_id: int) -> np.ndarray:
        """The examples client ``client_id`` trains on this round: all of its data, or in a continual run its current
        stage's (with what the method adds, e.g. its replay buffer)."""
        if self.continual is None:
            return self.prepared.data.client_indices[client_id]
        return self.continual.training_indices(client_id, self.client_states.setdefault(client_id, {}))

    # ------------------------------------------------------------------ rounds

    def linear_probing(self, round: int, participants: Sequence[int]) -> dict[str, Scalar]:
        """Fit config of linear probing, then fine-tuning (``model.linear_probe_rounds``): the first federated rounds
        (public units of the FFM schedule do not count) train only the head."""
        federated = 1 + sum(1 for row in self.history if row.get("phase", FEDERATED) == FEDERATED)
        if federated > self.config.model.linear_probe_rounds:
            self.head_only_rounds.discard(round)
            return {}
        self.head_only_rounds.add(round)
        if federated == 1 or federated == self.config.model.linear_probe_rounds:
            log.info("round %d: federated round %d of %d that train only the head", round, federated, self.config.model.linear_probe_rounds)
        return {TRAIN_ONLY: "head"}

    def linear_probe_lr(self, round: int) -> float | None:
        """The server learning rate of a head-only round (``server.linear_probe_lr``); ``None`` for the others."""
        return self.config.server.linear_probe_lr if round in self.head_only_rounds else None

    def run_round(self, round: int) -> dict[str, Any]:
        """One round through the orchestrator and the in-process transport; returns its metrics row."""
        return self.orchestrator.run_round(round)

    def run_unit(self, round: int) -> dict[str, Any]:
        """One unit of the FFM schedule (a federated round or a public phase); the schedule then picks the next one."""
        decision = self.next_decision
        before = self.server.parameters
        if self.continual is not None:
            self.continual.begin_round(round)
        if decision.phase == PUBLIC:
            assert self.public is not None
            if self.config.audit.capture_clients and round in self.config.audit.capture_rounds:
                log.warning(
                    "audit.capture_rounds lists round %d, a public unit of the FFM schedule: no client sends anything, "
                    "so there is nothing to capture (summary.json's audit.public_rounds lists it)",
                    round,
                )
            self.observer.round_started(round, [])  # no client takes part
            row = self.public.run(round, self)
        else:
            row = self.run_round(round)
        row["phase"], row["switch_reason"] = decision.phase, decision.reason
        signals = RoundSignals(round=round, phase=decision.phase)
        if self.public is not None:
            row["public_loss"] = self.public.validation_loss(self.server.parameters)
            alignment = self.public.alignment(before, self.server.parameters) if decision.phase == FEDERATED else None
            row["update_alignment"] = alignment
            declined_all = bool(row["skipped_clients"]) and not row["clients"] and self.privacy.spends_budget
            signals = RoundSignals(
                round=round,
                phase=decision.phase,
                public_loss=row["public_loss"],
                federated_loss=row["train_loss"] if decision.phase == FEDERATED else None,
                alignment=alignment,
                budget_left=not declined_all,
            )
        self.next_decision = self.schedule.next(signals)
        if self.continual is not None:
            self.continual.finish_round(round, row)
        return row

    def ffm_state(self) -> dict[str, Any]:
        """The schedule's state and the next unit's decision, checkpointed for an exact ``--resume``."""
        return {"schedule": self.schedule.state_dict(), "next": [self.next_decision.phase, self.next_decision.reason]}

    def _dropouts(self, round: int, participants: Sequence[int]) -> set[int]:
        """The participants simulated to drop after masking: ``round(dropout_rate * n)`` of them, seeded per round."""
        rate = self.config.secure_aggregation.dropout_rate
        count = int(math.floor(rate * len(participants) + 0.5))
        if count == 0:
            return set()
        rng = generator(self.config.run.seed, DROPOUT, round)
        return {int(c) for c in rng.choice(np.asarray(participants), size=count, replace=False)}

    def evaluate_parameters(self, parameters: Mapping[str, np.ndarray]):  # noqa: ANN201 - EvalResult
        """The server-side evaluation: ``parameters`` on the held-out test data."""
        if self.continual is not None:  # every stage seen so far
            return self.continual.evaluate(parameters)
        self.prepared.model.set_trainable(parameters)
        return evaluate(self.prepared.model, self.prepared.encoded_test, batch_size=self.config.server.eval_batch_size)

    # ------------------------------------------------------------------ run

    def run(self, *, resume: bool = False) -> dict[str, Any]:
        """Run (or resume) all rounds; returns the summary (also written as ``summary.json``)."""
        start_round = 1
        if resume:
            start_round = self._restore() + 1
        elif self.writer is not None:
            self.writer.start(self.config, self.clients_document(None))
        try:
            return self._run_rounds(start_round)
        finally:
            self.transport.close()  # worker processes end with the run, also on failure and Ctrl-C

    def _run_rounds(self, start_round: int) -> dict[str, Any]:
        total = self.config.server.rounds
        self.observer.run_started(total, start_round)
        for round in range(start_round, total + 1):
            row = self.run_unit(round)
            self.history.append(row)
            if self.writer is not None:
                # metrics first, then the checkpoint: a crash between them leaves a row that --resume drops
                self.writer.append_metrics(row)
                server_state = {"privacy": self.privacy.state_dict(), "ffm": self.ffm_state()}
                if self.continual is not None:
                    server_state["continual"] = self.continual.state_dict()
                self.writer.checkpoint(
                    Checkpoint(
                        round,
                        self.server.parameters,
                        self.strategy.state_dict(),
                        self.client_states,
                        server_state,
                        self.server_arrays(),
                    )
                )
            log.info(
                "round %d/%d: train_loss=%s test_accuracy=%s (%.1fs)",
                round,
                total,
                row["train_loss"],
                row["test_accuracy"],
                row["seconds"],
            )
            self.observer.round_finished(round, row)
        client_eval = self.evaluate_clients() if self.config.server.evaluate_clients else None
        summary = self.summary(client_eval)
        if self.writer is not None:
            if client_eval is not None:
                self.writer.write_clients(self.clients_document(client_eval))
            metadata = {"arch": self.config.model.arch, "finetune": self.config.model.finetune, "round": str(self.config.server.rounds)}
            if self.config.ffm.export:
                self.prepared.model.set_trainable(self.server.model_parameters)
                self.writer.export_model(self.prepared.model, lora=self.config.ffm.export_lora)
            if self.continual is not None and self.continual.arrays():
                self.writer.write_arrays("continual.safetensors", self.continual.arrays())
            ledger = self.privacy.ledger(self.client_states)
            if ledger is not None:
                ledger = {**ledger, "client_metrics": self.client_metrics_summary()}
                if self.outside_guarantee:
                    ledger["outside_the_guarantee"] = {
                        "transforms": list(self.outside_guarantee),
                        "why": "they read each client's raw examples to shape its update: ε does not cover their effect",
                    }
            self.writer.finish(parameters=self.server.model_parameters, metadata=metadata, summary=summary, ledger=ledger)
        return summary

    def server_arrays(self) -> dict[str, np.ndarray]:
        """The checkpoint's server-side arrays: a continual method's, and the model's moving average (``server.ema_decay``)."""
        arrays = dict(self.continual.arrays()) if self.continual is not None else {}
        if self.server.average is not None:
            arrays.update({AVERAGE + k: v for k, v in self.server.average.items()})
        return arrays

    def evaluate_clients(self) -> dict[int, dict[str, float]]:
        """The final global model on each client's own examples (Flower's federated evaluation)."""
        return self.transport.evaluate(
            self.server.model_parameters, round=self.config.server.rounds, batch_size=self.config.server.eval_batch_size
        )

    def summary(self, client_eval: Mapping[int, Mapping[str, float]] | None = None) -> dict[str, Any]:
        c = self.config
        evaluated = [r for r in self.history if r.get("test_accuracy") is not None]
        final = evaluated[-1] if evaluated else {}
        params = self.server.parameters
        summary: dict[str, Any] = {
            "name": c.run.name,
            "seed": c.run.seed,
            "dataset": c.data.dataset,
            "num_clients": self.prepared.data.num_clients,
            "partition": c.data.partition,
            "model": {
                "arch": c.model.arch,
                "name_or_path": c.model.name_or_path,
                "finetune": c.model.finetune,
                "objective": c.model.objective,
            },
            "strategy": c.server.strategy,
            "rounds": c.server.rounds,
            "final": {
                **{k: final.get(k) for k in ("round", "test_loss", "test_accuracy", "test_macro_f1", "train_loss")},
                **{k: v for k, v in final.items() if k.startswith("test_")},  # an objective's own metrics (MLM: test_perplexity)
            },
            "best_test_accuracy": max((r["test_accuracy"] for r in evaluated), default=None),
            "update_parameters": num_parameters(params),
            "update_bytes": nbytes(params),
            "total_parameters": self.prepared.model.total_parameter_count(),
            # withheld with the rows' participation (RunWriter.withheld): their sums count the participants
            "bytes_up_total": None if self.privacy.secret_participation else int(sum(r["bytes_up"] for r in self.history)),
            "bytes_down_total": None if self.privacy.secret_participation else int(sum(r["bytes_down"] for r in self.history)),
            "seconds_total": None if self.privacy.secret_participation else float(sum(r["seconds"] for r in self.history)),
            "privacy": self._privacy_summary(),
            "noise": self.noise_policy.describe(),
            "client_metrics": self.client_metrics_summary(),
            "ffm": self._ffm_summary(),
            **({"continual": self.continual.summary()} if self.continual is not None else {}),
            **({"audit": self._audit_summary()} if c.audit.capture_clients else {}),
            "num_train_examples": len(self.prepared.data.private),
            "num_public_examples": len(self.prepared.data.public) if self.prepared.data.public is not None else 0,
            "num_test_examples": len(self.prepared.data.test),
            "versions": {"secure_ffm": __version__, "torch": torch.__version__, "python": platform.python_version()},
        }
        if client_eval:
            accs = np.array([v["accuracy"] for v in client_eval.values()])
            summary["client_accuracy"] = {
                "mean": float(accs.mean()),
                "min": float(accs.min()),
                "p10": float(np.percentile(accs, 10)),
                "max": float(accs.max()),
            }
        return summary

    def _ffm_summary(self) -> dict[str, Any]:
        """Units and optimizer steps per phase (public phases spend no privacy budget)."""
        phases = [row.get("phase", FEDERATED) for row in self.history]
        public_units = phases.count(PUBLIC)
        return {
            "schedule": self.config.ffm.schedule,
            "public_units": public_units,
            "federated_rounds": phases.count(FEDERATED),
            "public_steps": int(sum(row.get("public_steps", 0) for row in self.history)),
            "switches": sum(1 for a, b in zip(phases, phases[1:], strict=False) if a != b),
        }

    def _audit_summary(self) -> dict[str, Any]:
        """What the ``[audit]`` section captured: ``captured`` (round, client) pairs, and ``public_rounds``: the rounds of
        ``capture_rounds`` that were public units of the FFM schedule, where no client sends anything to capture."""
        public = {row["round"] for row in self.history if row.get("phase") == PUBLIC}
        return {
            "captured": [list(pair) for pair in list_observations(self.out_dir)] if self.out_dir is not None else [],
            "public_rounds": [r for r in self.config.audit.capture_rounds if r in public],
        }

    def _privacy_summary(self) -> dict[str, Any]:
        ledger = self.privacy.ledger(self.client_states)
        if ledger is None:
            return {"mechanism": "none", "epsilon": None}
        keep = (
            "mechanism",
            "level",
            "accountant",
            "target_epsilon",
            "epsilon",
            "delta",
            "noise_multiplier",
            "clip_norm",
            "max_grad_norm",
            "noise",
        )
        return {k: ledger[k] for k in keep if k in ledger}

    # ------------------------------------------------------------------ files

    def clients_document(self, client_eval: Mapping[int, Mapping[str, float]] | None) -> dict[str, Any]:
        """``clients.json``: each client's size and label histogram (and its final evaluation, at the end); a deployed node
        that holds its own data gets the count its hello gave, ``own_data``, and no histogram (the server sees no label)."""
        data = self.prepared.data
        own = self.transport.own_data_counts()  # a node with data of its own: the server knows its count from the hello alone
        clients = []
        for k in range(data.num_clients):
            entry: dict[str, Any] = {
                "client": k,
                "num_examples": own[k] if k in own else len(data.client_indices[k]),
                "label_histogram": None if k in own else list(data.label_histograms[k]),
            }
            if k in own:
                entry["own_data"] = True
            if client_eval is not None and k in client_eval:  # a node that did not evaluate has none
                entry["final_eval"] = dict(client_eval[k])
            clients.append(entry)
        return {
            "class_names": list(data.dataset.class_names),
            "partition": self.config.data.partition,
            "public_examples": len(data.public) if data.public is not None else 0,
            "clients": clients,
        }

    def _restore(self) -> int:
        """Load the newest readable checkpoint and the metrics up to it; returns the round it holds (0: none yet).

        Everything is read and checked before anything is written, so a refused resume leaves the run
        directory as it was. A run killed before its first checkpoint restarts from round 1; a newest
        checkpoint that cannot be read falls back to the one before it, with a warning.
        """
        assert self.out_dir is not None and self.writer is not None
        saved = read_run_config(self.out_dir, self.config)
        checkpoint = self.writer.newest_readable_checkpoint(self._check_checkpoint)
        done = checkpoint.round if checkpoint is not None else 0
        if self.config.server.rounds < done:
            raise ConfigError(
                "server.rounds",
                f"{self.config.server.rounds} is fewer than the {done} rounds {self.out_dir} has already run",
                f"resume with server.rounds >= {done}, or start a new run",
            )
        history = self.writer.read_history(rounds=done)
        if checkpoint is not None:
            self.server.parameters = checkpoint.parameters
            average = {k[len(AVERAGE) :]: v for k, v in checkpoint.server_arrays.items() if k.startswith(AVERAGE)}
            self.server.average = {k: np.asarray(v, dtype=np.float64) for k, v in average.items()} or None
            self.strategy.load_state_dict(checkpoint.strategy_state)
            self.client_states.clear()
            self.client_states.update(checkpoint.client_states)
            self.privacy.load_state_dict(checkpoint.server_state.get("privacy", {}))
            if self.continual is not None:
                continual_arrays = {k: v for k, v in checkpoint.server_arrays.items() if not k.startswith(AVERAGE)}
                self.continual.load_state_dict(checkpoint.server_state.get("continual", {}), continual_arrays)
            ffm = checkpoint.server_state.get("ffm")
            if ffm is not None:
                self.schedule.load_state_dict(dict(ffm["schedule"]))
                self.next_decision = Decision(str(ffm["next"][0]), str(ffm["next"][1]))
            # no round may push ε past the target: refuse an extension the budget cannot pay for, before any round runs
            self.privacy.check_budget(
                completed_rounds=checkpoint.round, total_rounds=self.config.server.rounds, client_states=self.client_states
            )
        self.history = history
        # every check passed: now bring the files in line with the round resumed from
        self.writer.rewrite_metrics(self.history)
        if checkpoint is None:
            self.writer.write_clients(self.clients_document(None))
        if self.config.server.rounds != saved.server.rounds:
            self.writer.write_config(self.config)
        if checkpoint is None:
            log.warning("%s has no checkpoint yet: starting it again from round 1", self.out_dir)
        else:
            log.info("resumed %s from round %d", self.out_dir, checkpoint.round)
        return done

    def _check_checkpoint(self, checkpoint: Checkpoint, path: Path) -> None:
        """Refuse a checkpoint whose arrays do not fit this run's model and strategy (a damaged or foreign file)."""
        expected = {k: (v.shape, v.dtype) for k, v in self.server.parameters.items()}
        found = {k: (v.shape, v.dtype) for k, v in checkpoint.parameters.items()}
        if found != expected:
            wrong = sorted(set(expected) ^ set(found)) or sorted(k for k in expected if expected[k] != found[k])
            raise CheckpointError(f"{path / 'global.safetensors'} does not fit the model (first mismatch: {wrong[0]})")
        try:
            build_strategy(self.config.server).load_state_dict(checkpoint.strategy_state)
        except (ValueError, KeyError) as error:
            raise CheckpointError(f"{path / 'strategy.safetensors'} does not fit server.strategy: {error}") from None
