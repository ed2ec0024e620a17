"""A node's client state across SuperNode restarts (node config ``state-dir``).

Flower 1.41 keeps ``context.state`` in the SuperNode's memory only, so a restarted SuperNode started the run's client
afresh: a new secret, an empty DP ledger and answer count, and the ε it reported covered only what it answered since.
"""

import json
import os
import stat
import threading
import time

import pytest
from flwr.app import Context, RecordDict

from secure_ffm.config import config_from_dict
from secure_ffm.engine.codec import from_bytes, pack, to_bytes, unpack
from secure_ffm.flower.app import SPENT_FILE, NodeSpend, node_answer, state_file
from secure_ffm.privacy.accounting import PrivacyLedger
from secure_ffm.privacy.noise import ANSWERS_KEY, CLIENT_SECRET_KEY
from secure_ffm.run.simulation import Simulation, prepare_run
from secure_ffm.transports.base import FitRequest
from secure_ffm.transports.remote import FIT, NODE_SPEND_KEY

RAW = {
    "run": {"seed": 2, "name": "node-state"},
    "data": {"dataset": "digits", "max_train_examples": 200, "max_test_examples": 50, "num_clients": 2},
    "model": {"arch": "cnn", "finetune": "full"},
    "client": {"local_steps": 1, "batch_size": 16, "lr": 0.05},
    "server": {"rounds": 4},
    "privacy": {"mode": "dp-sgd", "target_epsilon": 4.0},
}


@pytest.fixture()
def node(tmp_path):
    """A node's config file and a way to make its Flower context (a fresh one stands for a restarted SuperNode)."""
    config = config_from_dict(RAW)
    path = tmp_path / "node.toml"
    path.write_text(config.to_toml())
    server = Simulation(prepare_run(config))

    def context(*, run_id=7, state_dir=tmp_path / "state"):
        node_config = {"partition-id": 0, "num-partitions": 2, "config": str(path)}
        if state_dir is not None:
            node_config["state-dir"] = str(state_dir)
        return Context(run_id=run_id, node_id=11, node_config=node_config, state=RecordDict(), run_config={})

    def fit(context, round):
        request = {"round": round, "request": FitRequest(server.server.fit_instructions(round, [0, 1]))}
        return unpack(*node_answer(FIT, pack(request), context))

    return context, fit


def test_a_restarted_supernode_resumes_its_clients_ledger_and_secret(node):
    context, fit = node
    before = context()
    first = fit(before, 1)["ledger"]
    path = state_file(before)
    saved = from_bytes(path.read_bytes())
    assert set(saved) == {"client", "schema"}  # the client's private state; never a round's protocol half
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # it holds the client's secret
    restarted = context()  # the same run, an empty context.state
    second = fit(restarted, 2)["ledger"]
    assert second["steps"] == 2 * first["steps"] and second["epsilon"] > first["epsilon"]
    client = from_bytes(path.read_bytes())["client"]
    assert client[CLIENT_SECRET_KEY] == saved["client"][CLIENT_SECRET_KEY] and client[ANSWERS_KEY] == 2


def test_without_a_state_dir_a_restart_starts_the_client_afresh(node):
    context, fit = node
    first = fit(context(state_dir=None), 1)["ledger"]
    assert fit(context(state_dir=None), 2)["ledger"]["steps"] == first["steps"]  # what state-dir is for


def test_another_run_on_the_same_node_starts_its_own_client_and_reports_only_its_own_spend(node):
    context, fit = node
    first = fit(context(run_id=7), 1)
    second = fit(context(run_id=8), 1)
    assert state_file(context(run_id=8)).name == "run-8.state"
    secrets = [from_bytes(state_file(context(run_id=r)).read_bytes())["client"][CLIENT_SECRET_KEY] for r in (7, 8)]
    assert secrets[0] != secrets[1]  # a client of its own
    # its ledger is its own run's, and nothing of the other run's spend reaches the server
    assert second["ledger"]["steps"] == first["ledger"]["steps"] and NODE_SPEND_KEY not in second["ledger"]


def composed_spend(path):
    """ε of every step the node recorded (all runs), as the node's budget check composes it."""
    runs = json.loads(path.read_text())["runs"]
    ledger = PrivacyLedger(accountant="prv", delta=1 / (10 * 100))
    for entries in runs.values():
        for e in entries:
            ledger.record(noise_multiplier=e["noise_multiplier"], sample_rate=e["sample_rate"], steps=e["steps"])
    return ledger.epsilon(), sum(e["steps"] for entries in runs.values() for e in entries)


def test_the_target_epsilon_bounds_every_run_on_the_nodes_data_together(node):
    """A server that submitted run after run got a fresh budget each time: three runs spent ε = 4 each on the same data."""
    context, fit = node
    answered = 0
    for run_id in (7, 8, 9):
        for round in range(1, 5):
            answered += "declined" not in fit(context(run_id=run_id), round)
    path = state_file(context()).parent / SPENT_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    epsilon, steps = composed_spend(path)
    assert steps == answered >= 2 and epsilon <= RAW["privacy"]["target_epsilon"] * 1.001  # one local step an answer


def test_runs_that_overlap_in_time_cannot_pass_the_target_together(node):
    """Checked only at a run's first answer, two interleaved runs composed to ε 4.88 against a target of 4."""
    context, fit = node
    for round in range(1, 5):
        for run_id in (7, 8):
            fit(context(run_id=run_id), round)
    epsilon, steps = composed_spend(state_file(context()).parent / SPENT_FILE)
    assert steps >= 2 and epsilon <= RAW["privacy"]["target_epsilon"] * 1.001


def test_a_run_whose_state_file_was_lost_still_counts_what_it_spent(node):
    context, fit = node
    fit(context(run_id=9), 1)
    fit(context(run_id=9), 2)
    state_file(context(run_id=9)).unlink()  # its ledger restarts from zero: its recorded spend must not
    for round in range(3, 7):
        fit(context(run_id=9), round)
    epsilon, steps = composed_spend(state_file(context()).parent / SPENT_FILE)
    assert steps >= 2 and epsilon <= RAW["privacy"]["target_epsilon"] * 1.001


def test_answers_on_one_nodes_data_read_and_write_the_spend_record_one_at_a_time(tmp_path):
    """Two SuperNodes sharing a state-dir (or one answering two runs at once) read the same record, both passed the
    budget check, and the second write dropped the first's steps. An answer now holds a lock from read to write."""
    path = tmp_path / "state" / SPENT_FILE
    entry = {"ledger": {"history": [{"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 3}]}}
    seen: dict[str, object] = {}
    first = NodeSpend(path, 1)  # holds the lock, as during an answer's training

    def second_answer() -> None:
        with NodeSpend(path, 2) as spend:
            seen["runs"] = dict(spend.runs)

    other = threading.Thread(target=second_answer)
    other.start()
    time.sleep(0.3)  # the second answer starts while the first still trains
    assert "runs" not in seen
    first.record(entry, 0)
    first.close()
    other.join(timeout=30)
    assert seen["runs"] == {"1": [{"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 3}]}
    assert stat.S_IMODE(os.stat(path.with_name("spent.lock")).st_mode) == 0o600


def test_the_node_spend_key_is_the_accountants():
    from secure_ffm.privacy.accounting import NODE_SPEND_KEY as accountants
    from secure_ffm.transports.remote import NODE_SPEND_KEY as transports

    assert accountants == transports


def test_a_damaged_spend_record_is_refused_naming_it(node):
    context, fit = node
    path = state_file(context()).parent / SPENT_FILE
    path.parent.mkdir(parents=True)
    path.write_text("[[[")
    with pytest.raises(ValueError, match="spent.json is not a secure-ffm node spend record"):
        fit(context(), 1)


def test_a_damaged_state_file_is_refused_naming_the_node_config_key(node):
    context, fit = node
    path = state_file(context())
    path.parent.mkdir(parents=True)
    path.write_bytes(to_bytes([1, 2, 3]))
    with pytest.raises(ValueError, match="state-dir"):
        fit(context(), 1)


def test_each_loopback_supernode_gets_its_own_state_dir(tmp_path):
    from secure_ffm.flower.deploy import node_configs

    tables = node_configs(tmp_path / "c.toml", 3, state_root=tmp_path / "node-state")
    assert [t["state-dir"] for t in tables] == [str(tmp_path / "node-state" / f"node-{k}") for k in range(3)]
    assert all("state-dir" not in t for t in node_configs(tmp_path / "c.toml", 3))


# ---------------------------------------------------------------- the server composes the ledgers of a restarted node


def test_the_server_composes_the_ledgers_of_a_node_that_started_its_client_afresh(node, caplog):
    from secure_ffm.privacy.accounting import PrivacyLedger
    from secure_ffm.run.deployment import node_ledger_record

    context, fit = node
    first = fit(context(state_dir=None), 1)
    again = fit(context(state_dir=None), 2)  # restarted without state-dir: a new client state, a new token
    assert first["incarnation"] != again["incarnation"]
    kept = node_ledger_record(None, first["ledger"], first["incarnation"], client_id=0)
    assert kept == {**first["ledger"], "incarnation": first["incarnation"]}  # one incarnation: the report as it is
    with caplog.at_level("WARNING", logger="secure_ffm.run.deployment"):
        record = node_ledger_record(kept, again["ledger"], again["incarnation"], client_id=0)
    assert "started its client afresh" in caplog.text
    both = PrivacyLedger.from_json(first["ledger"]["ledger"])
    for entry in PrivacyLedger.from_json(again["ledger"]["ledger"]).history:
        both.record(noise_multiplier=entry.noise_multiplier, sample_rate=entry.sample_rate, steps=entry.steps)
    assert record["epsilon"] == pytest.approx(both.epsilon(), rel=1e-12)
    assert record["epsilon"] > again["ledger"]["epsilon"] == record["node_report"]["epsilon"]
    assert record["steps"] == 2 * again["ledger"]["steps"] and record["rounds"] == 2
    later = node_ledger_record(record, again["ledger"], again["incarnation"], client_id=0)  # the same incarnation again
    assert later["epsilon"] == record["epsilon"] and len(later["earlier_incarnations"]) == 1


def test_with_a_state_dir_the_token_survives_the_restart_and_nothing_is_composed(node):
    from secure_ffm.run.deployment import node_ledger_record

    context, fit = node
    first, again = fit(context(), 1), fit(context(), 2)
    assert first["incarnation"] == again["incarnation"]
    record = node_ledger_record(node_ledger_record(None, first["ledger"], first["incarnation"]), again["ledger"], again["incarnation"])
    assert "earlier_incarnations" not in record and record["steps"] == again["ledger"]["steps"]


def test_a_pool_workers_session_reports_no_token():
    from secure_ffm.run.deployment import client_session

    simulation = Simulation(prepare_run(config_from_dict(RAW)))
    request = {"round": 1, "request": FitRequest(simulation.server.fit_instructions(1, [0, 1]))}
    session = client_session(simulation, 0, {})
    answer = session.answer(FIT, request)
    assert "ledger" in answer and "incarnation" not in answer and "incarnation" not in session.state["client"]
