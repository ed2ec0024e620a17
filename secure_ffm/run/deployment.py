"""Runs across processes: the server's run over a :class:`~secure_ffm.transports.remote.Link`, and a node's client.

The server side is the in-process runner (:class:`~secure_ffm.run.simulation.Simulation`: the same orchestrator,
server, strategy, privacy mechanism, schedule, checkpoints and run directory) with a
:class:`~secure_ffm.transports.remote.RemoteTransport` in place of the in-process one. A node builds the same run from
the same configuration and keeps only its own partition's client (:func:`node_session`). With the same config and
seed, a deployment samples the same clients, trains them on the same examples from the same initial weights, and so
ends with the same model as ``secure-ffm train`` (tests/flower: bitwise for plaintext aggregation).

What is not yet supported on a deployment is refused up front, naming the key (:func:`check_deployable`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from secure_ffm.config import Config
from secure_ffm.data.node import NODE_DATA_ERROR_KEY, DataSchema, load_node_data, node_federated_data
from secure_ffm.engine.aggregation import AUTHORITY, AggregationProtocol
from secure_ffm.errors import ConfigError
from secure_ffm.run.simulation import RunObserver, Simulation, prepare_run
from secure_ffm.transports.remote import (
    AUTHORITY_ROLE,
    AuthoritySession,
    DeploymentError,
    Link,
    NodeSession,
    RemoteTransport,
    config_fingerprint,
)

if TYPE_CHECKING:
    from secure_ffm.privacy.accounting import PrivacyLedger

log = logging.getLogger(__name__)

DEPLOYABLE_PROTOCOLS = ("none", "masking", "ckks")
"""Protocols whose client half can be carried between a node's messages (CKKS with its key set dealt to the parties)."""


def check_deployable(config: Config) -> None:
    """Refuse, naming the key, what a deployment cannot run yet; everything else runs as in-process."""
    if config.secure_aggregation.protocol not in DEPLOYABLE_PROTOCOLS:
        raise ConfigError(
            "secure_aggregation.protocol",
            f"{config.secure_aggregation.protocol!r} does not run on a deployment yet",
            f"use one of {', '.join(DEPLOYABLE_PROTOCOLS)}, or run it in-process with `secure-ffm train`",
        )
    if config.secure_aggregation.signatures and not config.secure_aggregation.peer_keys:
        raise ConfigError(
            "secure_aggregation.peer_keys",
            "signatures on a deployment need the key directory every party got out of band",
            'write the keys with "secure-ffm signing-keys DIR --clients N", name DIR/peer_keys.json here and give each '
            "SuperNode its DIR/client-<k>.key (node config signing-key); `secure-ffm deploy` does it for you",
        )
    if config.secure_aggregation.dropout_rate:
        raise ConfigError(
            "secure_aggregation.dropout_rate",
            "simulates dropouts in-process; on a deployment the nodes that really go away are the dropouts",
            "set secure_aggregation.dropout_rate = 0",
        )


def check_node_data(config: Config) -> None:
    """Refuse, naming the key, what cannot run on nodes that hold their own data (node config ``data``)."""
    from secure_ffm.variants import MECHANISMS

    if config.continual is not None:
        raise ConfigError(
            "continual",
            "a continual run's stages split the partitions of data.dataset, which nodes holding their own data (node config "
            "data) do not train on",
            "give the nodes partitions of data.dataset, or drop [continual]",
        )
    if MECHANISMS.get(config.privacy.mode, key="privacy.mode").needs_every_client_size:
        raise ConfigError(
            "privacy.mode",
            f"{config.privacy.mode!r} calibrates one noise scale from every client's number of examples, which nodes holding "
            "their own data (node config data) do not share",
            "use dp-sgd (each node calibrates its own noise) or dp-fedavg, or give the nodes partitions of data.dataset",
        )


def load_key_file(protocol: AggregationProtocol, data: bytes | None, *, role: str) -> None:
    """Give ``protocol`` the keys dealt to ``role`` (CKKS); a protocol that needs them and got none raises ConfigError."""
    if not protocol.needs_key_file:
        return
    if data is None:
        where = "the run config's ckks-keys" if role == "server" else f"the {role} SuperNode's --node-config ckks-keys"
        raise ConfigError(
            "ckks-keys",
            f"{protocol.name} on a deployment needs its key set dealt out of band, and {where} names no key file",
            "write the files with `secure-ffm ckks-keys CONFIG DIR` (`secure-ffm deploy` does it for you)",
        )
    protocol.use_key_file(data, role=role)


def server_run(
    config: Config, link: Link, *, out_dir: Path | None, observer: RunObserver | None = None, key_file: bytes | None = None
) -> dict[str, Any]:
    """The server's side of a deployed run: bind the nodes, then run every round through them; returns the summary.

    ``key_file``: the server's key file of a protocol that needs one (CKKS: the public context only)."""
    check_deployable(config)
    prepared = prepare_run(config)
    transport = RemoteTransport(
        link,
        fingerprint=config_fingerprint(config.to_toml()),
        num_clients=prepared.data.num_clients,
        schema=DataSchema.of(prepared.data.dataset),  # for nodes that hold their own data
    )
    simulation = Simulation(prepared, out_dir=out_dir, observer=observer, transport=transport)  # writes nothing yet
    load_key_file(simulation.protocol, key_file, role="server")
    key = prepared.privacy.client_ledger_key
    if key is not None:  # the server's view of a client: the ledger its node reports, as the node reports it

        def keep_ledger(client_id: int, ledger: Mapping[str, Any], incarnation: str | None) -> None:
            state = simulation.client_states.setdefault(client_id, {})
            try:
                state[key] = node_ledger_record(state.get(key), ledger, incarnation, client_id=client_id)
            except (ValueError, OverflowError, MemoryError) as error:  # a node's report is input: it must not end the run
                log.warning("client %d's node reported a ledger the server cannot use (%s); its last one is kept", client_id, error)

        transport.on_ledger = keep_ledger
    transport.connect()  # after the protocol is built: its stage messages must be registered before a reply decodes
    if simulation.protocol.waits_for_authority and AUTHORITY not in transport.parties:
        raise DeploymentError(
            'no key authority answered the hello (ckks_key_holder = "authority"): start one more SuperNode with '
            '--node-config "role=authority config=... ckks-keys=authority.ckks"'
        )
    return simulation.run()


def authority_session(config: Config, *, key_file: bytes | None) -> AuthoritySession:
    """The key authority's side of a deployed run (node config ``role = "authority"``): it loads the authority's key file
    and decrypts the aggregates the server sends it. It builds no data, model or client: it never sees an example."""
    from secure_ffm.privacy.distributed import minimum_shares
    from secure_ffm.variants import MECHANISMS, PROTOCOLS

    check_deployable(config)
    if not (config.secure_aggregation.protocol == "ckks" and config.secure_aggregation.ckks_key_holder == AUTHORITY_ROLE):
        raise ConfigError(
            "role",
            "this SuperNode was started as the key authority, but the run has none "
            f"(secure_aggregation.protocol = {config.secure_aggregation.protocol!r}, ckks_key_holder = "
            f"{config.secure_aggregation.ckks_key_holder!r})",
            'start it without role=authority, or set secure_aggregation.ckks_key_holder = "authority"',
        )
    protocol = PROTOCOLS.get(config.secure_aggregation.protocol).from_config(config.secure_aggregation, seed=config.run.seed)
    if MECHANISMS.get(config.privacy.mode, key="privacy.mode").noise_shares_in_updates(config):
        protocol.protect_sums_of(minimum_shares(config))  # the authority decrypts no sum of fewer than the shares are sized for
    load_key_file(protocol, key_file, role=AUTHORITY_ROLE)
    return AuthoritySession(protocol=protocol, fingerprint=config_fingerprint(config.to_toml()))


MAX_NODE_LEDGER_STEPS = 100_000
"""Most DP-SGD steps a node's reported ledger may count (a client with 60,000 examples at batch 64 takes 938 a pass: 100
passes); composing more with the prv accountant takes gigabytes."""
MAX_NODE_LEDGER_ENTRIES = 10_000
"""Most entries (distinct noise and sampling settings in a row) a node's reported ledger may hold."""

NODE_LEDGER_NUMBERS = (
    "epsilon",
    "steps",
    "rounds",
    "num_examples",
    "sample_rate",
    "noise_multiplier",
    "delta",
    "planned_steps",
    "planned_epsilon",
)
"""The numbers of a node's ledger report that the server's ``privacy.json`` and metrics read."""
MAX_INCARNATION_CHARS = 64


def check_node_ledger(reported: Any, incarnation: Any) -> PrivacyLedger:
    """The privacy ledger of a node's report; ValueError unless the report is one the server can use: a table whose ``ledger`` is a privacy
    ledger (:meth:`~secure_ffm.privacy.accounting.PrivacyLedger.from_json`), whose numbers are finite and non-negative,
    and a short text token (or none). A node's report is input like any message: a malformed one used to end the run
    where the server first read it (the round's metrics, or ``privacy.json`` at the end)."""
    # imported here: this module is imported by every pool worker (client_session), and the accountant pulls in opacus
    # and scipy, about 3 s of a pooled run's start-up for runs without DP (2026-12-07: 4.4 against 1.5 s to the first reply)
    from secure_ffm.privacy.accounting import PrivacyLedger, finite_number

    if not isinstance(reported, Mapping):
        raise ValueError(f"the report is a {type(reported).__name__}, not a table")
    ledger = PrivacyLedger.from_json(reported.get("ledger") if isinstance(reported.get("ledger"), Mapping) else {})
    if ledger.steps > MAX_NODE_LEDGER_STEPS or len(ledger.history) > MAX_NODE_LEDGER_ENTRIES:
        # the server composes what a node reports: the prv accountant's memory grows with the steps (1.6 GB at 10^5,
        # 1.15 TiB asked at 10^8, which ended the server's run with MemoryError)
        raise ValueError(
            f"its ledger counts {ledger.steps} steps in {len(ledger.history)} entries, beyond the {MAX_NODE_LEDGER_STEPS} steps "
            f"and {MAX_NODE_LEDGER_ENTRIES} entries a client of a run can take"
        )
    for name in NODE_LEDGER_NUMBERS:
        value = reported.get(name, 0)
        if not finite_number(value) or value < 0:  # also an integer beyond float64: JSON's integers have any size
            raise ValueError(f"{name} is {value!r:.40}, not a finite non-negative number")
    if incarnation is not None and (not isinstance(incarnation, str) or len(incarnation) > MAX_INCARNATION_CHARS):
        raise ValueError(f"its incarnation token is not a text of at most {MAX_INCARNATION_CHARS} characters")
    return ledger


def node_ledger_record(
    kept: Mapping[str, Any] | None, reported: Mapping[str, Any], incarnation: str | None, *, client_id: int = -1
) -> dict[str, Any]:
    """The server's record of a node's privacy ledger, from the record it ``kept`` and the ledger entry the node
    ``reported`` (its client state's ``ledger``, ``epsilon``, ``steps``, ``rounds``, ...).

    A node reports the ledger of its client state and that state's random ``incarnation`` token. A token other than the
    kept one means the node started its client afresh (a SuperNode restarted without node config ``state-dir``): its
    new ledger counts from zero, but its examples were used under the earlier one too. The record then composes the
    ledgers of every incarnation (their histories in order, one accountant and δ): ``ledger``, ``epsilon``, ``steps``
    and ``rounds`` are the composition's, ``node_report`` is what the node itself reports now and
    ``earlier_incarnations`` the last report of each earlier one; the run logs a warning. With one incarnation the
    record is the node's report as it is."""
    from secure_ffm.privacy.accounting import PrivacyLedger

    current = check_node_ledger(reported, incarnation)
    earlier = [dict(e) for e in (kept or {}).get("earlier_incarnations", [])]
    known = (kept or {}).get("incarnation")
    if kept and incarnation is not None and known is not None and known != incarnation:
        earlier.append({k: v for k, v in kept.get("node_report", kept).items() if k not in ("earlier_incarnations", "node_report")})
        log.warning(
            "client %d's node started its client afresh (a SuperNode restarted without state-dir?): its ledger counts from zero "
            "again, so privacy.json composes it with the %d earlier one(s)",
            client_id,
            len(earlier),
        )
    record = dict(reported)
    if incarnation is not None:
        record["incarnation"] = incarnation
    if not earlier:
        return record
    composed = PrivacyLedger(accountant=current.accountant, delta=current.delta)
    for ledger in [*(PrivacyLedger.from_json(e["ledger"]) for e in earlier), current]:
        for entry in ledger.history:
            composed.record(noise_multiplier=entry.noise_multiplier, sample_rate=entry.sample_rate, steps=entry.steps)
    record.update(
        node_report=dict(reported, incarnation=incarnation),
        earlier_incarnations=earlier,
        ledger=composed.to_json(),
        epsilon=composed.epsilon(),
        steps=composed.steps,
        rounds=sum(int(e.get("rounds", 0)) for e in earlier) + int(reported.get("rounds", 0)),
    )
    return record


def node_session(
    config: Config,
    *,
    partition_id: int,
    num_partitions: int,
    state: dict[str, Any] | None = None,
    key_file: bytes | None = None,
    data_path: str | None = None,
    schema: DataSchema | None = None,
    signing_key: str | None = None,
) -> NodeSession:
    """This node's client for ``config``: partition ``partition_id`` of ``num_partitions`` (raises ConfigError on a bad id).

    ``state`` is what the node kept from its earlier messages (changed in place by the session). Build the session before
    decoding a saved state: building it imports the configured protocol, whose stage messages the state may hold.

    ``data_path``: the node's own data (node config ``data``), which it trains on instead of partition ``partition_id``
    of ``data.dataset``; the model is built for the run's ``schema``, which the server sends with the hello
    (:mod:`secure_ffm.data.node`). The partition id then only names the node's client.

    ``signing_key``: the node's own Ed25519 key file (node config ``signing-key``), which masking's ``signatures``
    need; it must be the key the run's key directory lists for this client."""
    check_deployable(config)
    if data_path is not None:
        check_node_data(config)
    if num_partitions != config.data.num_clients:
        raise ConfigError(
            "num-partitions",
            f"the node was started with num-partitions={num_partitions}, but the config has data.num_clients = {config.data.num_clients}",
            f'start the SuperNode with --node-config "partition-id=K num-partitions={config.data.num_clients}"',
        )
    if not 0 <= partition_id < num_partitions:
        raise ConfigError(
            "partition-id",
            f"{partition_id} is outside 0..{num_partitions - 1}",
            f"use a partition-id below num-partitions={num_partitions}",
        )
    data = None
    if data_path is not None:
        if schema is None:
            raise DeploymentError(
                "this node holds its own data, but the server has not sent the run's data schema (it comes with the hello)"
            )
        try:
            examples = load_node_data(config.data, data_path, schema, seed=config.run.seed)
        except Exception as error:  # a loader's own error (pandas, PIL, NumPy) names the node's files and contents too
            # a node's refusal travels to the server (Flower sends the exception's text): this reason names the node's
            # files, labels, shapes and sizes, which the server must not learn (a hello whose schema listed one class made
            # the node list its own, until 2026-12-07). The node's operator reads it in the node's log.
            log.error("%s: %s", type(error).__name__, error)
            raise ConfigError(
                NODE_DATA_ERROR_KEY,
                "this node's data does not fit the run's data schema (the node's own log says why)",
                "the node's operator fixes its data or its node config",
            ) from None
        data = node_federated_data(schema, examples, client_id=int(partition_id), num_clients=num_partitions)
        log.info("node data %s: %d examples for client %d", data_path, len(examples), partition_id)
    simulation = Simulation(prepare_run(config, data=data))
    load_key_file(simulation.protocol, key_file, role="clients")
    if config.secure_aggregation.signatures:
        from secure_ffm.secagg.signing import read_signing_key

        if signing_key is None:
            raise ConfigError(
                "signing-key",
                "secure_aggregation.signatures needs this node's own signing key, and its node config names none",
                'start the SuperNode with --node-config "... signing-key=/path/client-K.key" (secure-ffm signing-keys)',
            )
        simulation.protocol.use_signing_key(int(partition_id), read_signing_key(signing_key))
    session = client_session(
        simulation, int(partition_id), state if state is not None else {}, fingerprint=config_fingerprint(config.to_toml())
    )
    session.reports_incarnation = True
    session.own_data = data_path is not None
    return session


def client_session(simulation: Simulation, client_id: int, state: dict[str, Any], *, fingerprint: str = "") -> NodeSession:
    """Client ``client_id`` of a built run as a :class:`NodeSession` over ``state`` (a node's, or a pool worker's job)."""

    def make_client(client_state: dict[str, Any], round: int):  # noqa: ANN202 - FederatedClient
        simulation.client_states[client_id] = client_state
        simulation.follow_round(round)  # a continual run: the round's stage says which examples the client holds now
        return simulation.client(client_id)

    return NodeSession(
        client_id=client_id,
        make_client=make_client,
        protocol=simulation.protocol,
        fingerprint=fingerprint,
        num_examples=len(simulation.training_indices(client_id)),
        state=state,
        ledger_key=simulation.privacy.client_ledger_key,
    )


def partition_from_node_config(node_config: Mapping[str, Any]) -> tuple[int, int]:
    """``(partition-id, num-partitions)`` from a SuperNode's ``--node-config``; a missing or non-integer one raises ConfigError."""
    values = []
    for key in ("partition-id", "num-partitions"):
        value = node_config.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(
                key,
                f"the SuperNode's --node-config gives {key} = {value!r}, not an integer",
                'start it with --node-config "partition-id=K num-partitions=N"',
            )
        values.append(int(value))
    return values[0], values[1]
