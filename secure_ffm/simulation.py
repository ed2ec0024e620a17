"""The in-process simulation runner: the embedded default.

One model object and one encoded copy of the data serve every client: a client
is materialized for its round only (an index array plus its state dict), so
memory stays about one model plus the data whatever the number of clients.
Runs are deterministic for a seed, checkpoint after every round, and a resumed run
continues to exactly the result of an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from secure_ffm import __version__
from secure_ffm.aggregation import PROTOCOLS, AggregationError, AggregationProtocol, EncodingDeclined
from secure_ffm.audit import ObservationRecorder
from secure_ffm.checkpoint import (
    Checkpoint,
    checkpoint_dirs,
    load_checkpoint,
    save_arrays_atomically,
    save_checkpoint,
    write_text_atomically,
)
from secure_ffm.client import FederatedClient, client_weight
from secure_ffm.config import Config, config_from_dict, read_toml
from secure_ffm.data import load_federated_data
from secure_ffm.data.base import FederatedData
from secure_ffm.errors import CheckpointError, ConfigError, RoundAbortedError
from secure_ffm.models import build_model
from secure_ffm.models.base import EncodedData, FederatedModel
from secure_ffm.privacy.mechanisms import PrivacyMechanism, build_mechanism
from secure_ffm.privacy.noise import NoisePolicy
from secure_ffm.secagg.protocol import VectorLayout
from secure_ffm.seeding import DROPOUT, INIT, derive_seed, generator
from secure_ffm.server import Server
from secure_ffm.strategies import build_strategy
from secure_ffm.training import ClientDeclined, build_trainer, evaluate
from secure_ffm.transforms import UpdatePipeline, build_defenses
from secure_ffm.wire import nbytes, num_parameters, to_jsonable

log = logging.getLogger(__name__)


def without_timings(row: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` less its wall-clock columns (``seconds`` and every ``*_seconds``), which differ between identical runs."""
    return {k: v for k, v in row.items() if not k.endswith("seconds")}


class RunObserver:
    """Receives progress events; the CLI draws progress bars from them. Methods are no-ops here."""

    def run_started(self, total_rounds: int, start_round: int) -> None: ...

    def round_started(self, round: int, clients: Sequence[int]) -> None: ...

    def client_finished(self, round: int, client_id: int) -> None: ...

    def round_finished(self, round: int, metrics: Mapping[str, Any]) -> None: ...


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


def prepare_run(config: Config) -> PreparedRun:
    """Load and partition the data, build the model and encode the data (raises ConfigError on bad input)."""
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    data = load_federated_data(config.data, config.run.seed)
    PROTOCOLS.get(config.secure_aggregation.protocol, key="secure_aggregation.protocol").check_run(config, data)
    model = build_model(
        config.model,
        num_classes=data.dataset.num_classes,
        data_kind=data.dataset.kind,
        seed=derive_seed(config.run.seed, INIT),
        max_length=config.data.max_length,
    )
    privacy = build_mechanism(config, data)  # calibrates noise; an unmeetable budget raises here
    privacy.check_model(model)
    encoded_private = model.encode(data.private)
    encoded_test = model.encode(data.test)
    return PreparedRun(config, data, model, encoded_private, encoded_test, privacy, model.get_trainable())


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
    ) -> None:
        self.prepared = prepared
        self.config = prepared.config
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.observer = observer or RunObserver()
        secure = self.config.secure_aggregation
        self.protocol = protocol or PROTOCOLS.get(secure.protocol, key="secure_aggregation.protocol").from_config(
            secure, seed=self.config.run.seed
        )
        self.privacy = prepared.privacy
        self.noise_policy = NoisePolicy.from_config(self.config)
        extra = transforms.transforms if transforms is not None else build_defenses(self.config.defense).transforms
        # privacy transforms (clipping, noise shares) come last, right before encoding
        self.transforms = UpdatePipeline([*extra, *self.privacy.client_transforms()])
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
        )
        self.server.extra_fit_config.append(self.privacy.fit_config)
        self.client_states: dict[int, dict[str, Any]] = {}
        # every client draws its secret before round 1, so the first checkpoint already holds it (exact --resume)
        for client_id in range(prepared.data.num_clients):
            self.noise_policy.client(client_id, self.client_states.setdefault(client_id, {}))
        self.history: list[dict[str, Any]] = []
        self.recorder = ObservationRecorder(self.config, self.out_dir)

    # ------------------------------------------------------------------ clients

    def client(self, client_id: int) -> FederatedClient:
        """Materialize client ``client_id`` for one round (cheap: indices and a state dict)."""
        return FederatedClient(
            client_id=client_id,
            model=self.prepared.model,
            encoded=self.prepared.encoded_private,
            indices=self.prepared.data.client_indices[client_id],
            trainer=self.trainer,
            protocol=self.protocol,
            transforms=self.transforms,
            state=self.client_states.setdefault(client_id, {}),
            seed=self.config.run.seed,
            noise=self.noise_policy,
        )

    # ------------------------------------------------------------------ rounds

    def run_round(self, round: int) -> dict[str, Any]:
        """One round: sample, train every sampled client, aggregate, and (maybe) evaluate."""
        round_start = time.perf_counter()
        participants = self.server.sample_clients(round)
        self.observer.round_started(round, participants)
        instructions = self.server.fit_instructions(round, participants)
        weighting = str(instructions.config.get("weighting", "examples"))
        weight_bound = max(client_weight(weighting, len(self.prepared.data.client_indices[c])) for c in participants)
        setup_start = time.perf_counter()
        # the server fixes the layout it expects from its own model, never from the first message it receives
        layout = VectorLayout.of_arrays(instructions.parameters, self.privacy.update_statistics())
        self.protocol.begin_round(round, participants, weight_bound=weight_bound, layout=layout)
        setup_seconds = time.perf_counter() - setup_start
        accumulator = self.server.accumulator(round)
        dropping = self._dropouts(round, participants)
        sent, declined, rejected, dropped = [], [], [], []
        examples, losses, bytes_up, train_seconds, encode_seconds, receive_seconds = [], [], 0, 0.0, 0.0, 0.0
        for client_id in participants:
            try:
                message = self.client(client_id).fit(instructions)
            except (ClientDeclined, EncodingDeclined) as reason:
                declined.append(client_id)
                log.info("round %d: client %d skipped: %s", round, client_id, reason)
            else:
                if client_id in dropping:  # trained and masked, but its message never arrives
                    dropped.append(client_id)
                    self.observer.client_finished(round, client_id)
                    continue
                if not self.protocol.hides_updates and self.recorder.wants(round, client_id):
                    self.recorder.record_message(
                        message,
                        global_parameters=instructions.parameters,
                        indices=self.prepared.data.client_indices[client_id],
                        fit_config=instructions.config,
                    )
                receive_start = time.perf_counter()
                try:
                    accumulator.add(message)  # streamed: the server holds one message at a time
                except AggregationError as error:  # the others' contributions are kept
                    rejected.append(client_id)
                    log.warning("%s; its update is left out of the round", error)
                    self.observer.client_finished(round, client_id)
                    continue
                finally:  # server time, rejected messages included
                    receive_seconds += time.perf_counter() - receive_start
                sent.append(client_id)
                examples.append(message.num_examples)
                losses.append(message.metrics["train_loss"])
                bytes_up += message.nbytes
                train_seconds += message.metrics["train_seconds"]
                encode_seconds += message.metrics.get("encode_seconds", 0.0)
                del message
            self.observer.client_finished(round, client_id)
        aggregate_start = time.perf_counter()
        timings: dict[str, float] = {}
        aborted = None
        if sent or dropped:
            try:
                aggregate = accumulator.result()
            except AggregationError as error:
                if self.config.secure_aggregation.on_abort == "stop":
                    raise RoundAbortedError(f'{error} (secure_aggregation.on_abort = "stop")') from None
                aborted = str(error)
                log.warning("%s; the global model is unchanged", error)
            else:
                if self.protocol.hides_updates:
                    self.recorder.record_aggregate(
                        round,
                        aggregate.mean_delta,
                        clients=sent,
                        global_parameters=instructions.parameters,
                        indices=self.prepared.data.client_indices,
                        fit_config=instructions.config,
                    )
                timings = self.server.apply(round, aggregate).timings
        else:
            log.warning("round %d: no client sent an update; the global model is unchanged", round)
        aggregate_seconds = receive_seconds + time.perf_counter() - aggregate_start
        fit_seconds = time.perf_counter() - round_start

        weights = np.asarray(examples, dtype=np.float64)
        row: dict[str, Any] = {
            "round": round,
            "train_loss": float(np.sum(weights * np.asarray(losses)) / np.sum(weights)) if sent else None,
            "test_loss": None,
            "test_accuracy": None,
            "test_macro_f1": None,
            "clients": sent,
            "skipped_clients": declined,
            "rejected_clients": rejected,
            "dropped_clients": dropped,
            "aborted": aborted,
            "num_examples": int(weights.sum()),
            "bytes_up": int(bytes_up),
            "bytes_down": int(nbytes(instructions.parameters) * len(participants)),
            "client_train_seconds": float(train_seconds),
            "encode_seconds": float(encode_seconds),
            "setup_seconds": setup_seconds,
            "aggregate_seconds": aggregate_seconds,
            **{f"aggregate_{phase}_seconds": value for phase, value in timings.items()},
            "fit_seconds": fit_seconds,
            **self.privacy.round_metrics(round, self.client_states),
        }
        last = round == self.config.server.rounds
        eval_seconds = 0.0
        if last or round % self.config.server.eval_every == 0:
            eval_start = time.perf_counter()
            result = self.evaluate_global()
            eval_seconds = time.perf_counter() - eval_start
            row.update(result.as_dict("test_"))
        row["eval_seconds"] = eval_seconds
        row["seconds"] = time.perf_counter() - round_start
        return row

    def _dropouts(self, round: int, participants: Sequence[int]) -> set[int]:
        """The participants simulated to drop after masking: ``round(dropout_rate * n)`` of them, seeded per round."""
        rate = self.config.secure_aggregation.dropout_rate
        count = int(math.floor(rate * len(participants) + 0.5))
        if count == 0:
            return set()
        rng = generator(self.config.run.seed, DROPOUT, round)
        return {int(c) for c in rng.choice(np.asarray(participants), size=count, replace=False)}

    def evaluate_global(self):  # noqa: ANN201 - EvalResult
        self.prepared.model.set_trainable(self.server.parameters)
        return evaluate(
            self.prepared.model,
            self.prepared.encoded_test,
            batch_size=self.config.server.eval_batch_size,
        )

    # ------------------------------------------------------------------ run

    def run(self, *, resume: bool = False) -> dict[str, Any]:
        """Run (or resume) all rounds; returns the summary (also written as ``summary.json``)."""
        start_round = 1
        if resume:
            start_round = self._restore() + 1
        elif self.out_dir is not None:
            self._write_start_files()
        total = self.config.server.rounds
        self.observer.run_started(total, start_round)
        for round in range(start_round, total + 1):
            row = self.run_round(round)
            self.history.append(row)
            if self.out_dir is not None:
                # metrics first, then the checkpoint: a crash between them leaves a row that --resume drops
                self._append_metrics(row)
                save_checkpoint(
                    self.out_dir / "checkpoints",
                    Checkpoint(
                        round,
                        self.server.parameters,
                        self.strategy.state_dict(),
                        self.client_states,
                        {"privacy": self.privacy.state_dict()},
                    ),
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
        if self.out_dir is not None:
            self._write_end_files(summary, client_eval)
        return summary

    def evaluate_clients(self) -> dict[int, dict[str, float]]:
        """The final global model on each client's own examples (Flower's federated evaluation)."""
        from secure_ffm.wire import FitInstructions

        ins = FitInstructions(round=self.config.server.rounds, parameters=self.server.parameters)
        results = {}
        for client_id in range(self.prepared.data.num_clients):
            result = self.client(client_id).evaluate(ins, batch_size=self.config.server.eval_batch_size)
            results[client_id] = {**result.as_dict(), "num_examples": result.num_examples}
        return results

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
            "model": {"arch": c.model.arch, "name_or_path": c.model.name_or_path, "finetune": c.model.finetune},
            "strategy": c.server.strategy,
            "rounds": c.server.rounds,
            "final": {k: final.get(k) for k in ("round", "test_loss", "test_accuracy", "test_macro_f1", "train_loss")},
            "best_test_accuracy": max((r["test_accuracy"] for r in evaluated), default=None),
            "update_parameters": num_parameters(params),
            "update_bytes": nbytes(params),
            "total_parameters": self.prepared.model.total_parameter_count(),
            "bytes_up_total": int(sum(r["bytes_up"] for r in self.history)),
            "bytes_down_total": int(sum(r["bytes_down"] for r in self.history)),
            "seconds_total": float(sum(r["seconds"] for r in self.history)),
            "privacy": self._privacy_summary(),
            "noise": self.noise_policy.describe(),
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

    def _write_start_files(self) -> None:
        """Create the run directory. ``config.toml`` comes first: once it exists, ``--resume`` can finish the run."""
        assert self.out_dir is not None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomically(self.out_dir / "config.toml", self.config.to_toml())
        self._write_metrics()
        self._write_clients(None)

    def _append_metrics(self, row: Mapping[str, Any]) -> None:
        """Add one round's row to ``metrics.jsonl`` (flushed to disk; a line torn by a crash is dropped on resume)."""
        assert self.out_dir is not None
        with (self.out_dir / "metrics.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(to_jsonable(row), sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def _write_metrics(self) -> None:
        """``metrics.jsonl``: one row per round of ``history``, rewritten whole and atomically (at the start and on resume)."""
        assert self.out_dir is not None
        text = "".join(json.dumps(to_jsonable(row), sort_keys=True) + "\n" for row in self.history)
        write_text_atomically(self.out_dir / "metrics.jsonl", text)

    def _write_clients(self, client_eval: Mapping[int, Mapping[str, float]] | None) -> None:
        assert self.out_dir is not None
        data = self.prepared.data
        clients = []
        for k in range(data.num_clients):
            entry: dict[str, Any] = {
                "client": k,
                "num_examples": len(data.client_indices[k]),
                "label_histogram": list(data.label_histograms[k]),
            }
            if client_eval is not None:
                entry["final_eval"] = dict(client_eval[k])
            clients.append(entry)
        document = {
            "class_names": list(data.dataset.class_names),
            "partition": self.config.data.partition,
            "public_examples": len(data.public) if data.public is not None else 0,
            "clients": clients,
        }
        write_text_atomically(self.out_dir / "clients.json", json.dumps(to_jsonable(document), indent=1))

    def _write_end_files(self, summary: Mapping[str, Any], client_eval: Mapping[int, Mapping[str, float]] | None) -> None:
        assert self.out_dir is not None
        metadata = {"arch": self.config.model.arch, "finetune": self.config.model.finetune, "round": str(self.config.server.rounds)}
        save_arrays_atomically(self.out_dir / "model.safetensors", self.server.parameters, metadata)
        if client_eval is not None:
            self._write_clients(client_eval)
        ledger = self.privacy.ledger(self.client_states)
        if ledger is not None:
            write_text_atomically(self.out_dir / "privacy.json", json.dumps(to_jsonable(ledger), indent=1, sort_keys=True))
        write_text_atomically(self.out_dir / "summary.json", json.dumps(to_jsonable(summary), indent=1, sort_keys=True))

    def _restore(self) -> int:
        """Load the newest readable checkpoint and the metrics up to it; returns the round it holds (0: none yet).

        Everything is read and checked before anything is written, so a refused resume leaves the run
        directory as it was. A run killed before its first checkpoint restarts from round 1; a newest
        checkpoint that cannot be read falls back to the one before it, with a warning.
        """
        assert self.out_dir is not None
        saved = read_run_config(self.out_dir, self.config)
        checkpoint = self._newest_readable_checkpoint()
        done = checkpoint.round if checkpoint is not None else 0
        if self.config.server.rounds < done:
            raise ConfigError(
                "server.rounds",
                f"{self.config.server.rounds} is fewer than the {done} rounds {self.out_dir} has already run",
                f"resume with server.rounds >= {done}, or start a new run",
            )
        history = read_metrics(self.out_dir / "metrics.jsonl", rounds=done)
        if checkpoint is not None:
            self.server.parameters = checkpoint.parameters
            self.strategy.load_state_dict(checkpoint.strategy_state)
            self.client_states.clear()
            self.client_states.update(checkpoint.client_states)
            self.privacy.load_state_dict(checkpoint.server_state.get("privacy", {}))
            # no round may push ε past the target: refuse an extension the budget cannot pay for, before any round runs
            self.privacy.check_budget(
                completed_rounds=checkpoint.round, total_rounds=self.config.server.rounds, client_states=self.client_states
            )
        self.history = history
        # every check passed: now bring the files in line with the round resumed from
        self._write_metrics()
        if checkpoint is None:
            self._write_clients(None)
        if self.config.server.rounds != saved.server.rounds:
            write_text_atomically(self.out_dir / "config.toml", self.config.to_toml())
        if checkpoint is None:
            log.warning("%s has no checkpoint yet: starting it again from round 1", self.out_dir)
        else:
            log.info("resumed %s from round %d", self.out_dir, checkpoint.round)
        return done

    def _newest_readable_checkpoint(self) -> Checkpoint | None:
        """The newest checkpoint that loads and fits this run's model; None when there is none at all."""
        assert self.out_dir is not None
        root = self.out_dir / "checkpoints"
        if root.exists() and not root.is_dir():
            raise ConfigError("--resume", f"{root} is not a directory", f"move it away; {self.out_dir} then restarts from its checkpoints")
        candidates = checkpoint_dirs(root)
        problems: list[str] = []
        for path in candidates:
            try:
                checkpoint = load_checkpoint(path)
                self._check_checkpoint(checkpoint, path)
            except CheckpointError as error:
                problems.append(str(error))
                continue
            for problem in problems:
                log.warning("%s; resuming from the earlier checkpoint %s", problem, path.name)
            return checkpoint
        if candidates:
            raise ConfigError(
                "--resume",
                f"no readable checkpoint in {root}: {problems[0]}",
                f"delete {root} to start the run again from round 1",
            )
        return None

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


def read_run_config(out_dir: Path, config: Config) -> Config:
    """The config a run directory was started with; refuse a resume whose config differs (but for ``server.rounds``)."""
    path = Path(out_dir) / "config.toml"
    if not path.is_file():
        raise ConfigError("--resume", f"{out_dir} holds no config.toml", "pass --out RUN_DIR of a run started by `secure-ffm train`")
    fix = "restore it from a copy, or start a new run in a new --out"
    try:
        raw = read_toml(path, key="--resume", fix=fix)
        if not raw:
            raise ConfigError(str(path), "is empty")
        saved = config_from_dict(raw)
    except ConfigError as error:
        where = "" if error.key == str(path) else f" at {error.key}"
        raise ConfigError("--resume", f"the run's {path} cannot be used{where}: {error.problem}", fix) from None
    differences = config_differences(saved, config, ignore={"server.rounds"})
    if differences:
        raise ConfigError(
            "--resume",
            f"the config differs from the run's config.toml in {', '.join(differences)}",
            "resume with the same config and --set values",
        )
    return saved


def read_metrics(path: Path, *, rounds: int) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl`` for rounds ``1..rounds``; later rows are dropped (their checkpoint was never written).

    An unfinished last line (an append cut short by a crash) is dropped with a warning; any other line that is not a JSON row is refused.
    """
    fix = "restore it from a copy, or start a new run in a new --out"
    if not path.exists() and rounds == 0:
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError("--resume", f"{path} cannot be read: {getattr(error, 'strerror', None) or error}", fix) from None
    lines = text.split("\n")
    unfinished = lines.pop()  # "" when the file ends with a newline
    if unfinished.strip():
        log.warning("%s: dropping its unfinished last line (a write cut short)", path)
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict) or isinstance(row.get("round"), bool) or not isinstance(row.get("round"), int):
            raise ConfigError("--resume", f"{path} line {number} is not a metrics row: {line[:40]!r}", fix)
        rows.append(row)
    history = [row for row in rows if row["round"] <= rounds]
    if [row["round"] for row in history] != list(range(1, rounds + 1)):
        found = [row["round"] for row in history]
        raise ConfigError("--resume", f"{path} holds rounds {found} but the checkpoint is at round {rounds}", fix)
    return history


def config_differences(a: Config, b: Config, *, ignore: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
    """``section.key`` names whose values differ between two configs."""
    da, db = a.to_dict(), b.to_dict()
    return [
        f"{section}.{key}"
        for section in da
        for key in da[section]
        if f"{section}.{key}" not in ignore and da[section][key] != db[section][key]
    ]
