"""Continual runs through the one engine path: the accuracy matrix, the methods, the ledgers and --resume."""

import json

import numpy as np
import pytest
from continual_cases import continual_toml, train
from interrupt import InterruptAtRound  # tests/interrupt.py (on sys.path under pytest)
from safetensors.numpy import load_file

from secure_ffm.config import load_config
from secure_ffm.continual import metrics
from secure_ffm.engine.orchestrator import RoundHooks
from secure_ffm.privacy.accounting import GaussianSteps, compute_epsilon
from secure_ffm.run.simulation import Simulation, prepare_run, without_timings

DP = '[privacy]\nmode = "dp-sgd"\ntarget_epsilon = 8.0\naccountant = "rdp"\n'


def rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


class MessageSpy(RoundHooks):
    def __init__(self):
        self.messages, self.aggregates, self.instructions = [], [], []

    def message_received(self, round, message, instructions):
        self.messages.append((round, message))
        self.instructions.append(instructions)

    def aggregate_computed(self, round, aggregate, clients, instructions):
        self.aggregates.append((round, aggregate))


def run_with_spy(config_path, out):
    spy = MessageSpy()
    simulation = Simulation(prepare_run(load_config(config_path)), out_dir=out, hooks=[spy])
    summary = simulation.run()
    return simulation, summary, spy


def test_the_summary_holds_the_accuracy_matrix_and_its_metrics(write_config, tmp_path):
    out = tmp_path / "run"
    assert train(write_config(continual_toml()), out) == 0
    summary = json.loads((out / "summary.json").read_text())["continual"]
    matrix = summary["accuracy_matrix"]
    assert len(matrix) == 2 and all(len(row) == 2 for row in matrix) and matrix[0][1] is None
    reached = [row[: i + 1] for i, row in enumerate(matrix)]
    assert summary["average_accuracy"] == pytest.approx(metrics.average_accuracy(reached))
    assert summary["forgetting"] == pytest.approx(metrics.forgetting(reached))
    assert summary["backward_transfer"] == pytest.approx(metrics.backward_transfer(reached))
    assert [s["name"] for s in summary["stages"]] == ["zeros and ones", "twos and threes"]
    assert summary["budget_exhausted"] == []


def test_each_matrix_row_is_the_evaluation_at_its_stages_last_round(write_config, tmp_path):
    out = tmp_path / "run"
    assert train(write_config(continual_toml()), out, "--set", "server.eval_every=3") == 0
    history = rows(out)
    assert [r["stage"] for r in history] == ["zeros and ones"] * 2 + ["twos and threes"] * 2
    matrix = json.loads((out / "summary.json").read_text())["continual"]["accuracy_matrix"]
    assert history[1]["stage_accuracy"] == {"zeros and ones": matrix[0][0]}  # evaluated though eval_every skips round 2
    assert history[3]["stage_accuracy"] == {"zeros and ones": matrix[1][0], "twos and threes": matrix[1][1]}
    assert history[2]["stage_accuracy"].keys() == {"zeros and ones", "twos and threes"}  # round 3: eval_every


def test_naive_training_forgets_the_first_stage_and_replay_keeps_it(write_config, tmp_path):
    results = {}
    for method in ("naive", "replay"):
        config = write_config(continual_toml(method).replace("local_steps = 3", "local_steps = 15"), f"{method}.toml")
        out = tmp_path / method
        assert train(config, out) == 0
        results[method] = json.loads((out / "summary.json").read_text())["continual"]["accuracy_matrix"][1][0]
    # The replay buffer is drawn from each client's secret randomness, so the replay run varies between runs:
    # over 20 runs its first-stage accuracy ranged 0.54-0.92 (median 0.76); naive training is deterministic here.
    assert results["naive"] < 0.2 < 0.4 < results["replay"]


def test_replay_examples_stay_on_the_client(write_config, tmp_path):
    simulation, _, spy = run_with_spy(write_config(continual_toml("replay", replay_buffer=20)), tmp_path / "run")
    parameters = set(simulation.server.parameters)
    stages = simulation.prepared.data.stages
    metric_keys = {frozenset(message.metrics) for _, message in spy.messages}
    assert len(metric_keys) == 1  # every message reports the same metrics, in every stage
    for round, message in spy.messages:
        stage = stages[0] if round <= 2 else stages[1]
        own = len(stage.client_indices[message.client_id])
        assert message.num_examples == own + (20 if stage.index else 0)  # the buffer trains, but only a count says so
        assert set(message.payload) - {"__weight__"} == parameters  # plaintext: the update's arrays and nothing else
    for k, state in simulation.client_states.items():
        buffer = state["continual_replay"]["buffer"]
        assert len(buffer) == 20 and set(buffer) <= set(stages[0].client_indices[k].tolist())


def test_the_replay_buffer_is_drawn_from_the_clients_secret(write_config, tmp_path):
    buffers = []
    for name in ("a", "b"):
        simulation, _, _ = run_with_spy(write_config(continual_toml("replay", replay_buffer=20)), tmp_path / name)
        buffers.append(simulation.client_states[0]["continual_replay"]["buffer"])
    assert buffers[0] != buffers[1]  # same seed, another secret: the server cannot recompute which examples are kept


def test_ewc_importances_travel_as_masked_statistics_of_each_stages_last_round(write_config, tmp_path):
    extra = '[secure_aggregation]\nprotocol = "masking"\n'
    simulation, summary, spy = run_with_spy(write_config(continual_toml("ewc", extra=extra)), tmp_path / "run")
    with_importance = sorted({r for r, aggregate in spy.aggregates if any(k.startswith("importance/") for k in aggregate.mean_statistics)})
    assert with_importance == [2, 4]
    broadcast = {ins.round: bool(ins.arrays) for ins in spy.instructions}
    assert broadcast == {1: False, 2: False, 3: True, 4: True}  # the penalty from stage 2 on
    history = rows(tmp_path / "run")
    assert history[2]["bytes_down"] > history[1]["bytes_down"]  # weights and anchors are counted
    assert summary["continual"]["method"] == "ewc"


def test_isolation_keeps_one_set_of_parameters_per_stage(write_config, tmp_path):
    out = tmp_path / "run"
    simulation, summary, _ = run_with_spy(write_config(continual_toml("isolation")), out)
    experts = load_file(str(out / "continual.safetensors"))
    names = set(simulation.server.parameters)
    assert {k.split("/", 1)[1] for k in experts} == names
    assert {k.split("/", 1)[0] for k in experts} == {"expert0", "expert1"}
    for name in names:  # the last expert is the final global model; the first its state at stage 1's end
        assert np.array_equal(experts[f"expert1/{name}"], simulation.server.parameters[name])


def test_a_dp_sgd_ledger_spans_every_stage(write_config, tmp_path):
    out = tmp_path / "run"
    assert train(write_config(continual_toml("replay", extra=DP, replay_buffer=20)), out) == 0
    ledger = json.loads((out / "privacy.json").read_text())
    for client in ledger["clients"]:
        history = [GaussianSteps(*entry) if isinstance(entry, list) else GaussianSteps(**entry) for entry in client["history"]]
        assert len({entry.sample_rate for entry in history}) == 2  # stage 2 trains on more examples (the buffer)
        assert len({entry.noise_multiplier for entry in history}) == 1  # one multiplier for the client's lifetime
        epsilon = compute_epsilon(history, accountant="rdp", delta=client["delta"])
        assert client["epsilon"] == pytest.approx(epsilon)
        assert 7.0 < epsilon <= 8.0  # calibrated to spend the budget over both stages, never more


def test_a_client_whose_budget_is_spent_stops_in_later_stages(write_config, tmp_path):
    out = tmp_path / "run"
    extra = DP + "planned_rounds = 2\n"  # noise for stage 1 only: the budget is spent when it ends
    assert train(write_config(continual_toml(extra=extra)), out) == 0
    history = rows(out)
    assert history[1]["clients"] == [0, 1, 2, 3]
    assert history[2]["clients"] == [] and history[2]["skipped_clients"] == [0, 1, 2, 3]
    spent = json.loads((out / "summary.json").read_text())["continual"]["budget_exhausted"]
    assert spent == [{"client": k, "round": 3, "stage": "twos and threes"} for k in range(4)]
    ledger = json.loads((out / "privacy.json").read_text())
    assert all(c["epsilon"] <= 8.0 for c in ledger["clients"])


@pytest.mark.parametrize("method", ["replay", "ewc", "isolation"])
def test_resume_inside_stage_two_continues_to_the_uninterrupted_result(write_config, tmp_path, method):
    stages = "".join(f"[[continual.stages]]\nrounds = 2\nclasses = [{2 * i}, {2 * i + 1}]\n" for i in range(2))
    reproducible = DP + "reproducible_noise = true\n"  # two runs to compare: noise from the seed, not from fresh secrets
    config = write_config(continual_toml(method, extra=reproducible, stages=stages, replay_buffer=20))
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert train(config, whole) == 0
    with pytest.raises(KeyboardInterrupt):
        Simulation(prepare_run(load_config(config)), out_dir=cut, observer=InterruptAtRound(4)).run()
    assert train(config, cut, "--resume") == 0
    assert [without_timings(r) for r in rows(cut)] == [without_timings(r) for r in rows(whole)]
    for name in ("model.safetensors", *(["continual.safetensors"] if method != "replay" else [])):
        a, b = load_file(str(whole / name)), load_file(str(cut / name))
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert json.loads((cut / "privacy.json").read_text())["clients"] == json.loads((whole / "privacy.json").read_text())["clients"]


def test_the_audit_captures_what_the_client_trained_on_in_that_stage(write_config, tmp_path):
    from secure_ffm.run.audit import load_observation

    out = tmp_path / "run"
    extra = "[audit]\ncapture_clients = [0]\ncapture_rounds = [1, 3]\n"
    simulation, _, _ = run_with_spy(write_config(continual_toml("replay", extra=extra, replay_buffer=20)), out)
    first, second = simulation.prepared.data.stages
    assert np.array_equal(load_observation(out, round=1, client=0).indices, first.client_indices[0])
    buffer = simulation.client_states[0]["continual_replay"]["buffer"]
    expected = np.union1d(second.client_indices[0], np.asarray(buffer))
    assert np.array_equal(load_observation(out, round=3, client=0).indices, expected)


SWEEP = """\
[sweep]
name = "continual"
seeds = [0]
[base.run]
threads = 1
[base.data]
dataset = "digits"
num_clients = 4
partition = "iid"
[base.model]
arch = "cnn"
finetune = "full"
[base.client]
local_steps = 3
batch_size = 16
[[base.continual.stages]]
rounds = 1
classes = [0, 1]
[[base.continual.stages]]
rounds = 1
classes = [2, 3]
[grid.method]
"naive" = []
"replay" = ["continual.method=replay", "continual.replay_buffer=20"]
"""


def test_a_sweep_over_continual_methods_reports_each_points_matrix(tmp_path):
    from secure_ffm.run.cli import main

    sweep = tmp_path / "sweep.toml"
    sweep.write_text(SWEEP)
    out = tmp_path / "sweep"
    assert main(["sweep", str(sweep), "--out", str(out), "--quiet", "--report"]) == 0
    points = [json.loads(line) for line in (out / "sweep.jsonl").read_text().splitlines()]
    assert {p["point_id"] for p in points} == {"method-naive__seed-0", "method-replay__seed-0"}
    assert all(p["status"] == "ok" for p in points)
    report = (out / "report.html").read_text()
    assert report.count("accuracy_matrix__") >= 2


def test_the_dp_fedavg_ledger_counts_every_round_of_every_stage(write_config, tmp_path):
    out = tmp_path / "run"
    extra = '[privacy]\nmode = "dp-fedavg"\ntarget_epsilon = 8.0\naccountant = "rdp"\n'
    assert train(write_config(continual_toml("replay", extra=extra, replay_buffer=20)), out) == 0
    ledger = json.loads((out / "privacy.json").read_text())
    assert ledger["rounds"] == 4 and sum(entry["steps"] for entry in ledger["history"]) == 4
    history = [GaussianSteps(**entry) for entry in ledger["history"]]
    assert ledger["epsilon"] == pytest.approx(compute_epsilon(history, accountant="rdp", delta=ledger["delta"]))
    assert ledger["epsilon"] <= 8.0


def test_a_prompt_per_stage_on_a_text_encoder(tmp_path):
    """Parameter isolation with prompt tuning (Fed-CPrompt's idea): each domain's soft prompt and head are kept."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
    from tiny_encoder import save_tiny_bert, tiny_text_sections

    from secure_ffm.config import config_from_dict

    encoder = save_tiny_bert(tmp_path / "encoder")
    raw = tiny_text_sections(encoder, model={"finetune": "prompt", "prompt_tokens": 4}, client={"local_steps": 2})
    del raw["server"]
    raw["continual"] = {
        "method": "isolation",
        "stages": [{"name": "movies", "rounds": 1}, {"name": "products", "rounds": 1, "dataset": "product_reviews"}],
    }
    out = tmp_path / "run"
    simulation = Simulation(prepare_run(config_from_dict(raw)), out_dir=out)
    summary = simulation.run()
    assert summary["continual"]["accuracy_matrix"][1][1] is not None
    experts = load_file(str(out / "continual.safetensors"))
    trained = set(simulation.server.parameters)
    assert any("prompt" in name for name in trained) and all("prompt" in n or n.startswith("head.") for n in trained)
    assert {k.split("/", 1)[1] for k in experts} == trained
