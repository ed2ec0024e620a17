"""Privacy mechanisms: how a run's privacy mode plugs into the engine's seams.

A :class:`PrivacyMechanism` may replace the local trainer (DP-SGD), add client
update transforms (DP-FedAvg clipping and noise shares), add server-side aggregate
steps (DP-FedAvg central noise), add settings to every round's instructions, and
keep a ledger. It is built and validated before anything is written to disk, so
an unmeetable budget stops the run with exit code 2 and nothing trained.
"""

from __future__ import annotations

import statistics
from abc import ABC
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from secure_ffm.config import Config, FFMConfig, PrivacyConfig
from secure_ffm.data.base import FederatedData
from secure_ffm.engine.aggregation import AggregateStep, AggregationProtocol
from secure_ffm.engine.schedule import federated_rounds, last_round_within
from secure_ffm.engine.training import LocalTrainer
from secure_ffm.engine.transforms import UpdateTransform
from secure_ffm.engine.wire import Scalar
from secure_ffm.errors import ConfigError
from secure_ffm.models.base import FederatedModel
from secure_ffm.variants import MECHANISMS


@dataclass(frozen=True)
class AuditReplay:
    """A mechanism's own replay of one round for the leakage audit, on the audited clients' batches."""

    trainer: LocalTrainer
    """What each audited client runs on its whole audit batch (no sampling: the attacker's most favourable case)."""
    decoding_steps: list[AggregateStep]
    """Turn the protocol's aggregate into the mean gradient per example that the server observes (as ``-mean_delta``,
    a one-step update at learning rate 1)."""


class PrivacyMechanism(ABC):  # noqa: B024 (every seam has a no-op default)
    """No-op defaults; each mechanism overrides the seams it uses.

    Registered by name in :data:`secure_ffm.variants.MECHANISMS`; callers branch on the class
    properties below, never on the name.
    """

    name: str = ""
    label: ClassVar[str] = ""
    """How reports name the mechanism (e.g. ``"DP-SGD"``); empty: the name."""
    spends_budget: ClassVar[bool] = True
    """True when the mechanism gives a formal (ε, δ) guarantee: its ``privacy.*`` settings apply and reports show ε."""
    client_ledger_key: ClassVar[str | None] = None
    """The key of a client's state that holds its own privacy ledger (DP-SGD's per-client accountant), or None when the
    ledger is the server's. A deployed node reports that entry - public facts: steps, sample rate, noise multiplier, ε -
    with each fit reply, so the server's ``privacy.json`` gathers the nodes' ledgers (:mod:`secure_ffm.run.deployment`)."""
    needs_every_client_size: ClassVar[bool] = False
    """True when the mechanism is calibrated from every client's number of examples (one noise scale for the federation):
    it cannot run on deployed nodes that hold their own data, whose sizes no other party knows."""
    client_weighting: ClassVar[str | None] = None
    """The weighting (:func:`secure_ffm.engine.client.client_weight`) every client of this mechanism applies to its own
    update whatever the server's instructions say, or None to follow them. Distributed noise needs it: a client whose
    weight the server raised against the others' (``examples`` instead of ``uniform``) contributes a larger multiple of
    its update than of the others' noise shares, so the server could divide the sum by that weight and find the client's
    update under as little as one share's noise, ``1/sqrt(t)`` of the planned noise."""
    replaces_trainer: ClassVar[bool] = False
    """True when :meth:`trainer` swaps the local trainer for a private one (DP-SGD): the leakage audit then
    emulates that trainer's noisy steps with the per-client noise multiplier of :meth:`client_noise_multiplier`."""

    @classmethod
    def protections(cls, privacy: PrivacyConfig) -> dict[str, Any]:
        """The settings of ``[privacy]`` this mechanism uses, as recorded in the leakage audit's ``attack.json``."""
        return {"target_epsilon": privacy.target_epsilon} if cls.spends_budget else {}

    @classmethod
    def noise_shares_in_updates(cls, config: Config) -> bool:
        """Whether each client's update carries only a share of the noise under ``config`` (distributed DP): the
        protocol must then release no sum of fewer inputs than the shares are sized for
        (:meth:`~secure_ffm.engine.aggregation.AggregationProtocol.protect_sums_of`, called by
        :meth:`configure_protocol` and by a key authority that builds no mechanism)."""
        return False

    @classmethod
    def client_answer_limit(cls, config: Config) -> int | None:
        """The most fit requests one client answers over a run, from its own ``config`` (None: no limit here).

        Each answer of a client carries fresh noise (:meth:`~secure_ffm.privacy.noise.PrivateRandomness.for_answer`),
        so a server that asks again gets another noisy view of the client's data, which the budget must cover. A
        mechanism whose clients keep their own ledger (DP-SGD) charges every answer there and declines once the budget
        is spent; one whose ledger is the server's (DP-FedAvg) bounds the answers here instead."""
        return None

    def client_noise_multiplier(self, client: int) -> float:
        """For mechanisms that replace the trainer: the noise multiplier of ``client``'s private steps."""
        raise NotImplementedError(f"privacy mode {self.name!r} does not train with per-client noise")

    def format_plan(self, plan: Mapping[str, Any]) -> str:
        """:meth:`plan` for people (``secure-ffm privacy-plan``)."""
        lines = [f"mechanism: {plan['mechanism']}"]
        lines.extend(f"{key}: {value}" for key, value in plan.items() if key != "mechanism")
        return "\n".join(lines)

    def __init__(self, config: Config, data: FederatedData) -> None:
        self.config = config
        self.data = data

    def check_model(self, model: FederatedModel) -> None:  # noqa: B027 (optional hook)
        """Refuse a model the mechanism cannot train privately (raise ConfigError)."""

    def configure_protocol(self, protocol: AggregationProtocol) -> None:  # noqa: B027 (optional hook)
        """Adapt the run's aggregation protocol before the first round (e.g. exact integer sums for discrete noise)."""

    def trainer(self, base: LocalTrainer) -> LocalTrainer:
        return base

    def client_transforms(self) -> list[UpdateTransform]:
        return []

    def audit_replay(self, *, examples_per_client: int) -> AuditReplay | None:
        """How the leakage audit (attacks/audit.py) replays one round when the audit's own trainer would not send what
        this mechanism's clients send; None (the default): the audit's trainer, with the DP-SGD steps of
        :meth:`client_noise_multiplier` under :attr:`replaces_trainer`. ``examples_per_client``: the audit batch."""
        return None

    def aggregate_steps(self) -> list[AggregateStep]:
        return self.decoding_steps()

    def decoding_steps(self) -> list[AggregateStep]:
        """The steps that turn the protocol's sum into real units (e.g. discrete shares' granularity): the server's
        own view of the aggregate, which the leakage audit observes too; :meth:`aggregate_steps` starts with them."""
        return []

    def fit_config(self, round: int, participants: Sequence[int]) -> dict[str, Scalar]:
        return {}

    def update_statistics(self) -> dict[str, np.ndarray]:
        """The side statistics every client's update carries (names and shapes), for the server's expected layout."""
        return {}

    @property
    def secret_participation(self) -> bool:
        """Whether the accounting assumes that whoever reads the run's published files does not know who took part in
        a round (user-level amplification by subsampling): the rows' participation fields then stay out of
        ``metrics.jsonl`` (:attr:`secure_ffm.run.writer.RunWriter.withheld`)."""
        return False

    def client_sampling(self) -> str:
        """How the server picks a round's clients (``server.client_sampling``, secure_ffm/engine/sampling.py): the
        config's choice, or for ``auto`` what this mechanism's accounting assumes (fixed-size unless it says
        otherwise: sample-level mechanisms account each client's own steps, whoever else took part)."""
        chosen = self.config.server.client_sampling
        return "fixed" if chosen == "auto" else chosen

    def sampling_generator(self, round: int) -> np.random.Generator | None:
        """The server's generator for sampling round ``round``'s clients when it must be secret; None: seeded."""
        return None

    def round_metrics(self, round: int, client_states: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
        """Privacy columns of the round's ``metrics.jsonl`` row."""
        return {}

    def public_unit_metrics(self, round: int, client_states: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
        """Privacy columns of an FFM public unit's row: no client trained, nothing is spent. The default reports
        :meth:`round_metrics`; a mechanism whose :meth:`round_metrics` records a round in its ledger overrides this."""
        return self.round_metrics(round, client_states)

    def ledger(self, client_states: Mapping[int, Mapping[str, Any]]) -> dict[str, Any] | None:
        """The final privacy ledger written to ``privacy.json`` (None: nothing to write)."""
        return None

    def plan(self) -> dict[str, Any]:
        """What the config implies before training: noise multipliers and the ε they reach."""
        return {"mechanism": self.name}

    def recommend(self, *, epochs: float | None) -> dict[str, Any] | None:
        """Recommended local-training settings for this config's client sizes (``secure-ffm privacy --recommend``);
        None when the mechanism has no planner. ``epochs``: compute budget in passes over each client's data."""
        return None

    def format_recommendation(self, advice: Mapping[str, Any]) -> str:
        """:meth:`recommend` for people."""
        return "\n".join(f"{key}: {value}" for key, value in advice.items())

    def check_budget(  # noqa: B027 (optional hook)
        self, *, completed_rounds: int, total_rounds: int, client_states: Mapping[int, Mapping[str, Any]]
    ) -> None:
        """Refuse (ConfigError, before any round runs) a resumed run whose remaining rounds could push ε past the target.

        Called after :meth:`load_state_dict` when a run is resumed, possibly with more rounds than it was planned for.
        """

    def state_dict(self) -> dict[str, Any]:
        """Server-side state to checkpoint (JSON)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:  # noqa: B027 (optional)
        """Restore :meth:`state_dict`."""


class NoPrivacy(PrivacyMechanism):
    """No formal privacy: updates are sent as trained."""

    name = "none"
    label = "no DP"
    spends_budget = False

    def plan(self) -> dict[str, Any]:
        return {"mechanism": "none", "epsilon": float("inf")}

    def format_plan(self, plan: Mapping[str, Any]) -> str:
        return 'privacy.mode = none: no differential privacy (ε = ∞). Set privacy.mode = "dp-sgd" or "dp-fedavg".'


def extension_refused(
    *, ffm: FFMConfig, total_rounds: int, completed_rounds: int, epsilon: float, target: float, planned: str, rounds_fit: int
) -> ConfigError:
    """The error of a resume whose extra rounds would push ε past the target (``planned`` says what the noise was
    calibrated for); ``rounds_fit`` federated rounds still fit, and the public units of ``ffm``'s schedule are free."""
    most = last_round_within(ffm, start=completed_rounds, federated=rounds_fit, limit=total_rounds)
    return ConfigError(
        "server.rounds",
        f"{total_rounds} rounds would spend ε={epsilon:.3f} > privacy.target_epsilon={target} ({planned})",
        f"resume with --set server.rounds={most} at most, or start a new run planned for more rounds",
    )


def check_extension(
    ledger: Any,
    *,
    noise_multiplier: float,
    sample_rate: float,
    ffm: FFMConfig,
    total_rounds: int,
    completed_rounds: int,
    target: float,
    planned: str,
) -> None:
    """Refuse (:func:`extension_refused`) a resume whose remaining federated rounds (``ffm``'s schedule: public units
    spend nothing), one step each, would take ``ledger`` past ``target``."""
    from secure_ffm.privacy.accounting import rounds_that_fit

    remaining = federated_rounds(ffm, start=completed_rounds, stop=total_rounds)
    if remaining <= 0:
        return
    would = ledger.epsilon_if(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=remaining)
    if would <= target * (1 + 1e-9):
        return
    fit = rounds_that_fit(
        ledger, noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps_per_round=1, target_epsilon=target, limit=remaining
    )
    raise extension_refused(
        ffm=ffm, total_rounds=total_rounds, completed_rounds=completed_rounds, epsilon=would, target=target, planned=planned, rounds_fit=fit
    )


def run_federated_rounds(config: Config) -> int:
    """The federated rounds ``server.rounds`` can hold under the FFM schedule (public units spend no budget; at least 1)."""
    return max(1, federated_rounds(config.ffm, stop=config.server.rounds))


def planned_federated_rounds(config: Config) -> int:
    """The rounds a DP mechanism calibrates its noise for: ``privacy.planned_rounds`` when set, else
    :func:`run_federated_rounds`."""
    return config.privacy.planned_rounds or run_federated_rounds(config)


def node_restart_fields(entry: Mapping[str, Any]) -> dict[str, int]:
    """``node_restarts`` for a client's row of ``privacy.json`` when its deployed node started its client afresh and the
    server composed its ledgers (:func:`secure_ffm.run.deployment.node_ledger_record`); nothing otherwise."""
    return {"node_restarts": len(entry["earlier_incarnations"])} if "earlier_incarnations" in entry else {}


def plan_header(plan: Mapping[str, Any]) -> str:
    """The first line of a DP mechanism's :meth:`PrivacyMechanism.format_plan`."""
    return f"mechanism: {plan['mechanism']}   accountant: {plan['accountant']}   target ε: {plan['target_epsilon']}"


def spread(values: Sequence[float]) -> dict[str, float | None]:
    """min, median and max (None for no values)."""
    if not values:
        return {"min": None, "median": None, "max": None}
    return {"min": float(min(values)), "median": float(statistics.median(values)), "max": float(max(values))}


def build_mechanism(config: Config, data: FederatedData) -> PrivacyMechanism:
    return MECHANISMS.get(config.privacy.mode, key="privacy.mode")(config, data)
