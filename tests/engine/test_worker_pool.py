"""The worker-pool transport (run.workers): parallel clients give the sequential result, survive a dying worker,
and leave no process behind."""

import dataclasses
import json
import multiprocessing.connection
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import psutil
import pytest
from digits_cnn import digits_cnn_toml, two_stage_continual
from safetensors.numpy import load_file

from secure_ffm import machine_load
from secure_ffm.config import config_from_dict, load_config
from secure_ffm.engine.orchestrator import RunObserver
from secure_ffm.errors import ConfigError
from secure_ffm.run.simulation import Simulation, prepare_run, resolve_workers, without_timings

MODES = {
    "plaintext": "",
    # DP-SGD under masking in a continual run of two one-round stages: each worker trains a client on the round's
    # stage plus its replay buffer (the workers follow the server's stage from each request's round), the ledgers span
    # both stages, and each client's half of the masking round (its keys) travels with its requests
    "dp-sgd-masking-continual": '[privacy]\nmode = "dp-sgd"\ntarget_epsilon = 8.0\nreproducible_noise = true\n'
    + '[secure_aggregation]\nprotocol = "masking"\n'
    + two_stage_continual(),
    # distributed DP-SGD under masking (configs/fashion_mnist_dp.toml's mechanism): each client's rounding coins and
    # discrete noise share come from its secret stream, and its masking half travels with every stage request
    "distributed-dp-sgd-masking": '[privacy]\nmode = "distributed-dp-sgd"\ntarget_epsilon = 8.0\nreproducible_noise = true\n'
    + '[secure_aggregation]\nprotocol = "masking"\n',
}


def pool_config(mode, workers):
    text = digits_cnn_toml(clients=4, workers=workers) + MODES[mode]
    return text.replace("[server]\nrounds = 2\n", "") if "[continual]" in text else text  # the stages give the rounds


def alive(pids):
    """The processes among ``pids`` still running (a reaped worker is gone; a zombie would be a worker never waited for)."""
    return [pid for pid in pids if psutil.pid_exists(pid)]


def pipes(pid):
    """The pipes a process holds open (``pipe:[inode]``)."""
    targets = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            targets.add(os.readlink(fd))
        except FileNotFoundError:  # closed since the listing (the listing's own descriptor, in this process)
            pass
    return {target for target in targets if target.startswith("pipe:")}


def run(tmp_path, name, text, hooks=()):
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    simulation = Simulation(prepare_run(load_config(path)), out_dir=tmp_path / name, hooks=hooks)
    simulation.run()
    return simulation


def rows(run_dir):
    return [without_timings(json.loads(line)) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# each way of starting a worker on one mode
START = {"plaintext": "spawn", "dp-sgd-masking-continual": "fork", "distributed-dp-sgd-masking": "fork"}


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MODES))
def test_two_workers_give_the_sequential_result_bitwise(tmp_path, monkeypatch, mode):
    monkeypatch.setenv("SECURE_FFM_WORKER_START", START[mode])
    sequential = run(tmp_path, "one", pool_config(mode, 1))
    parallel = run(tmp_path, "two", pool_config(mode, 2))
    assert parallel.workers == 2 and sequential.workers == 1
    assert parallel.transport.fork == (START[mode] == "fork")
    # forked: one worker process, serving from its copy of the run's own built run, and the run's process trains the
    # other share of the clients itself; fresh interpreters: two workers, each building the run from the config
    forked = START[mode] == "fork"
    assert parallel.transport.trains_here == forked
    assert parallel.transport.worker_runs == (["inherited"] if forked else ["built"] * 2)
    assert (parallel.transport.local_jobs > 0) == forked
    assert (parallel.transport.shared_replies > 0) == forked  # a forked worker's updates come through shared memory
    processes = len(parallel.transport.worker_runs)
    assert parallel.transport.parameter_frames == processes * 2  # the global model went to each worker once a round
    assert rows(tmp_path / "two") == rows(tmp_path / "one")
    if "continual" in mode:
        assert [r["stage"] for r in rows(tmp_path / "two")] == ["zeros and ones", "twos and threes"]
    a, b = load_file(str(tmp_path / "one" / "model.safetensors")), load_file(str(tmp_path / "two" / "model.safetensors"))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    if "dp-sgd" in mode:  # the ledgers live with the clients' state in this process, checkpointed as before
        assert json.loads((tmp_path / "two" / "privacy.json").read_text()) == json.loads((tmp_path / "one" / "privacy.json").read_text())
    assert len(parallel.transport.started) == processes and not alive(parallel.transport.started)


class KillThenInterrupt(RunObserver):
    """Before round 2: SIGKILL every worker, so the first clients sent to them drop out. Round 3: Ctrl-C."""

    def __init__(self):
        self.simulation = None
        self.killed = []

    def round_started(self, round, clients):
        if round == 2:
            for pid in self.simulation.transport.pids():
                os.kill(pid, signal.SIGKILL)
                self.killed.append(pid)
        if round == 3:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_a_dying_worker_is_its_clients_dropout_and_is_replaced_and_none_outlives_ctrl_c(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(digits_cnn_toml(clients=6, rounds=3, workers=2))
    observer = KillThenInterrupt()
    simulation = Simulation(prepare_run(load_config(path)), out_dir=tmp_path / "run", observer=observer)
    observer.simulation = simulation
    with pytest.raises(KeyboardInterrupt):
        simulation.run()
    first, second = rows(tmp_path / "run")
    # workers = 2, forked: one worker process beside the run's process, which trains the rest of the clients itself
    assert simulation.transport.trains_here and len(observer.killed) == 1 and simulation.transport.replaced == 1
    assert first["clients"] == [0, 1, 2, 3, 4, 5]
    assert second["dropped_clients"] == [0, 1] and second["clients"] == [2, 3, 4, 5]  # the two requests the dead worker held
    assert second["aborted"] is None and second["test_accuracy"] is not None  # the others' updates were aggregated
    assert simulation.transport.fork and len(simulation.transport.started) == 2
    assert not alive(simulation.transport.started)  # Ctrl-C in round 3: the run's end stopped every worker


def test_a_forked_worker_holds_only_its_own_pipes(tmp_path):
    # a worker holding a sibling's request pipe would keep it from seeing the end of its stream when the run ends
    path = tmp_path / "c.toml"
    path.write_text(digits_cnn_toml(clients=4, workers=3))
    simulation = Simulation(prepare_run(load_config(path)))
    transport = simulation.transport
    before = pipes(os.getpid())  # the test runner's own (a worker inherits them, as any child does)
    try:
        transport._ensure_workers()
        assert transport.fork
        own = {pid: pipes(pid) - before for pid in transport.pids()}
        assert transport.trains_here and len(own) == 2  # workers = 3: two worker processes beside the run's process
        assert all(len(p) == 2 for p in own.values())  # its request pipe and its reply pipe
        assert all(not own[a] & own[b] for a in own for b in own if a != b)
        assert set().union(*own.values()) <= pipes(os.getpid())  # and this process holds the other end of each
    finally:
        transport.close()
    assert not alive(transport.started)


def test_auto_workers_stay_in_process_for_short_runs_and_large_models(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(digits_cnn_toml(clients=4, workers=0))
    assert Simulation(prepare_run(load_config(path))).workers == 1  # 4 clients x 2 rounds: not worth a worker's start


def test_auto_workers_need_more_client_rounds_when_workers_cannot_be_forked(tmp_path, monkeypatch):
    monkeypatch.setattr(machine_load, "others_busy_cores", lambda: 0.0)  # a quiet machine, whatever runs beside the test
    path = tmp_path / "c.toml"
    path.write_text(digits_cnn_toml(clients=10, rounds=5, workers=0))  # 50 client-rounds: worth forked workers only
    cores = len(os.sched_getaffinity(0))
    assert Simulation(prepare_run(load_config(path))).workers == min(cores, 10)
    monkeypatch.setenv("SECURE_FFM_WORKER_START", "spawn")
    assert Simulation(prepare_run(load_config(path))).workers == 1


@pytest.fixture(scope="module")
def fifty_client_rounds():
    """A run of 10 clients x 5 rounds (worth forked workers), prepared once: the choice reads its config and model."""
    return prepare_run(config_from_dict(tomllib.loads(digits_cnn_toml(clients=10, rounds=5, workers=0))))


@pytest.mark.parametrize(("others", "expected"), [(None, 2), (0.0, 2), (0.4, 2), (0.6, 1), (1.0, 1), (3.5, 1)])
def test_auto_workers_count_only_the_cores_other_processes_left_free(fifty_client_rounds, monkeypatch, others, expected):
    monkeypatch.setattr(machine_load, "others_busy_cores", lambda: others)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})  # two cores, as this project's machine
    assert resolve_workers(fifty_client_rounds.config, fifty_client_rounds) == expected


def test_a_config_without_run_workers_chooses_as_zero_does(monkeypatch):
    # the default is the automatic choice (issue 17): a small model's long run uses the free cores unasked
    monkeypatch.setattr(machine_load, "others_busy_cores", lambda: 0.0)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    config = config_from_dict(tomllib.loads(digits_cnn_toml(clients=10, rounds=5)))
    assert config.run.workers == 0
    assert resolve_workers(config, prepare_run(config)) == 2


def test_an_explicit_worker_count_ignores_the_machines_load(fifty_client_rounds, monkeypatch):
    monkeypatch.setattr(machine_load, "others_busy_cores", lambda: 5.0)
    config = dataclasses.replace(fifty_client_rounds.config, run=dataclasses.replace(fifty_client_rounds.config.run, workers=2))
    assert resolve_workers(config, fifty_client_rounds) == 2


TWO_REPLIES = """
import os, sys
import numpy as np
from secure_ffm.transports.worker_pool import _frame, _write
with os.fdopen(int(sys.argv[1]), "wb") as stream:
    _write(stream, _frame({"reply": 1}, {"x": np.arange(3, dtype=np.float32)}))
    _write(stream, _frame({"reply": 2}, {}))
"""
"""A worker's two replies, written to the file descriptor named by the first argument."""


def test_a_forked_workers_reply_read_leaves_the_next_one_where_wait_sees_it():
    # the pool waits on the pipe itself (select) before reading a reply; were the first read to pull the second reply
    # into a buffer, wait would never report it and the run and the worker would wait for each other forever
    from secure_ffm.transports.worker_pool import _open_replies, _read, _unframe

    read_end, write_end = os.pipe()
    writer = subprocess.Popen([sys.executable, "-c", TWO_REPLIES, str(write_end)], pass_fds=(write_end,))
    os.close(write_end)
    assert writer.wait(timeout=60) == 0  # both replies are in the pipe before the first is read
    with _open_replies(read_end) as replies:
        assert _unframe(_read(replies))[0] == {"reply": 1}
        assert multiprocessing.connection.wait([replies], timeout=0) == [replies]
        assert _unframe(_read(replies))[0] == {"reply": 2}
        assert _read(replies) is None  # the end of the stream


def test_a_spawned_workers_reply_read_leaves_the_next_one_where_wait_sees_it():
    from secure_ffm.transports.worker_pool import _read, _spawn_worker, _unframe

    process = _spawn_worker([sys.executable, "-c", TWO_REPLIES, "1"])
    try:
        assert process.wait(timeout=60) == 0  # both replies are in the pipe before the first is read
        assert _unframe(_read(process.stdout))[0] == {"reply": 1}
        assert multiprocessing.connection.wait([process.stdout], timeout=0) == [process.stdout]
        assert _unframe(_read(process.stdout))[0] == {"reply": 2}
    finally:
        process.stdin.close()
        process.stdout.close()


@pytest.mark.timeout(60)  # it takes about 3 s; before the fix it waited forever
def test_a_worker_that_answers_both_its_requests_before_the_run_reads_one_is_heard(tmp_path, monkeypatch):
    # three clients: the worker holds two requests and the run's process answers the third itself, slowly here (patched
    # after the fork, so the worker answers at full speed): both of the worker's replies are in its pipe when the run
    # next looks, and no later reply would wake it; the second must be seen and read all the same
    from secure_ffm.transports import worker_pool

    (tmp_path / "one.toml").write_text(digits_cnn_toml(clients=3, workers=1))
    (tmp_path / "two.toml").write_text(digits_cnn_toml(clients=3, workers=2))
    sequential = Simulation(prepare_run(load_config(tmp_path / "one.toml"))).evaluate_clients()
    simulation = Simulation(prepare_run(load_config(tmp_path / "two.toml")))
    transport = simulation.transport
    try:
        transport._ensure_workers()
        assert transport.trains_here and len(transport.pids()) == 1
        answer = worker_pool._answer

        def slow_answer(*args, **kwargs):
            time.sleep(0.5)
            return answer(*args, **kwargs)

        monkeypatch.setattr(worker_pool, "_answer", slow_answer)
        assert simulation.evaluate_clients() == sequential  # every client's answer, as in-process
        assert transport.local_jobs == 1
    finally:
        transport.close()
    assert not alive(transport.started)


def assert_the_worker_is_killed_and_its_clients_drop(tmp_path):
    """A 4-client round with two workers and run.worker_timeout = 1.5 s, whose forked worker misbehaves (patched
    before the fork): it is killed and replaced, and the two requests it held are those clients' dropouts."""
    path = tmp_path / "c.toml"
    path.write_text(digits_cnn_toml(clients=4, rounds=1, workers=2).replace("threads = 1\n", "threads = 1\nworker_timeout = 1.5\n"))
    simulation = Simulation(prepare_run(load_config(path)), out_dir=tmp_path / "run")
    start = time.monotonic()
    simulation.run()
    (row,) = rows(tmp_path / "run")
    assert row["dropped_clients"] == [0, 1] and row["clients"] == [2, 3]  # the worker took the first two requests
    assert row["test_accuracy"] is not None  # the others' updates were aggregated
    transport = simulation.transport
    assert transport.timed_out >= 1 and transport.replaced == transport.timed_out
    assert time.monotonic() - start < 60  # not the hour the worker would have slept
    assert not alive(transport.started)


@pytest.mark.timeout(120)
def test_a_hung_worker_is_killed_after_the_timeout_and_its_clients_drop(tmp_path, monkeypatch):
    # the forked worker hangs on every request (patched before the fork; the run's process answers as usual): past
    # run.worker_timeout it is killed and replaced, and the two requests it held are those clients' dropouts
    from secure_ffm.transports import worker_pool

    run_pid, answer = os.getpid(), worker_pool._answer

    def hang_in_a_worker(*args, **kwargs):
        if os.getpid() != run_pid:
            time.sleep(3600)
        return answer(*args, **kwargs)

    monkeypatch.setattr(worker_pool, "_answer", hang_in_a_worker)
    assert_the_worker_is_killed_and_its_clients_drop(tmp_path)


@pytest.mark.timeout(120)
def test_a_worker_that_stalls_half_way_through_a_reply_is_killed_after_the_timeout(tmp_path, monkeypatch):
    # the forked worker sends its ready frame, then writes the first bytes of each reply and stops: the run blocked in
    # read() for as long as the worker stalled; now the reply's rest must come within run.worker_timeout
    from secure_ffm.transports import worker_pool

    run_pid, write = os.getpid(), worker_pool._write

    stalled = tmp_path / "stalled"

    def stall_in_a_worker(stream, frame):
        header, payload = frame
        # the run's requests, the worker's ready frame and any reply after the first stall (its replacement's) go whole
        if os.getpid() == run_pid or b'"status":"ok"' not in header or stalled.exists():
            return write(stream, frame)
        stalled.touch()
        stream.write(len(header).to_bytes(8, "little") + len(payload).to_bytes(8, "little") + header[:3])
        stream.flush()
        time.sleep(3600)

    monkeypatch.setattr(worker_pool, "_write", stall_in_a_worker)
    assert_the_worker_is_killed_and_its_clients_drop(tmp_path)


def test_a_negative_worker_timeout_names_the_key(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(digits_cnn_toml(workers=2).replace("threads = 1\n", "threads = 1\nworker_timeout = -1\n"))
    with pytest.raises(ConfigError, match="run.worker_timeout"):
        load_config(path)


@pytest.mark.timeout(120)
def test_a_worker_that_never_builds_the_run_fails_it_after_the_timeout(tmp_path, monkeypatch):
    from secure_ffm.transports import worker_pool

    def never_ready(*args, **kwargs):
        time.sleep(3600)

    monkeypatch.setattr(worker_pool, "_serve", never_ready)  # before the fork: the worker inherits it
    path = tmp_path / "c.toml"
    path.write_text(digits_cnn_toml(clients=4, rounds=1, workers=2).replace("threads = 1\n", "threads = 1\nworker_timeout = 1\n"))
    simulation = Simulation(prepare_run(load_config(path)), out_dir=tmp_path / "run")
    with pytest.raises(RuntimeError, match=r"could not build the run: it took more than 1 s \(run.worker_timeout\)"):
        simulation.run()
    assert not alive(simulation.transport.started)


class InterruptedAtRoundTwo(RunObserver):
    def round_started(self, round, clients):
        if round == 2:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_a_pooled_run_interrupted_and_resumed_equals_the_sequential_run(tmp_path):
    # run.workers = 0 is the default, so --resume now meets the pool: the clients' states (secrets, DP ledgers) come
    # back from the checkpoint into the run's process and travel with the resumed rounds' requests
    from secure_ffm.run.cli import main

    privacy = '[privacy]\nmode = "dp-sgd"\ntarget_epsilon = 8.0\nreproducible_noise = true\n'  # two runs to compare
    sequential = run(tmp_path, "one", digits_cnn_toml(clients=4, rounds=3, workers=1) + privacy)
    path = tmp_path / "two.toml"
    path.write_text(digits_cnn_toml(clients=4, rounds=3, workers=2) + privacy)
    interrupted = Simulation(prepare_run(load_config(path)), out_dir=tmp_path / "two", observer=InterruptedAtRoundTwo())
    with pytest.raises(KeyboardInterrupt):
        interrupted.run()
    assert interrupted.workers == 2 and not alive(interrupted.transport.started)
    assert main(["train", str(path), "--out", str(tmp_path / "two"), "--quiet", "--resume"]) == 0
    assert sequential.workers == 1
    assert rows(tmp_path / "two") == rows(tmp_path / "one")
    a, b = load_file(str(tmp_path / "one" / "model.safetensors")), load_file(str(tmp_path / "two" / "model.safetensors"))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "two" / "privacy.json").read_text()) == json.loads((tmp_path / "one" / "privacy.json").read_text())


def test_the_audit_captures_the_same_update_from_a_pooled_run(tmp_path):
    capture = "[audit]\ncapture_clients = [1]\ncapture_rounds = [2]\n"
    from secure_ffm.run.audit import load_observation

    run(tmp_path, "one", digits_cnn_toml(clients=4, workers=1) + capture)
    parallel = run(tmp_path, "two", digits_cnn_toml(clients=4, workers=2) + capture)
    assert parallel.workers == 2 and parallel.transport.local_jobs > 0
    one, two = load_observation(tmp_path / "one"), load_observation(tmp_path / "two")
    assert one.observes == two.observes == "update" and one.observed.keys() == two.observed.keys()
    assert all(np.array_equal(one.observed[k], two.observed[k]) for k in one.observed)
    np.testing.assert_array_equal(one.indices, two.indices)


def test_a_spawned_worker_plans_dp_sgd_in_one_process():
    # it rebuilds the run, DP-SGD's plans included: the run's process has calibrated them over every core already,
    # and k workers each forking one calibration process per core would start k times the cores at once
    from secure_ffm.transports.worker_pool import _spawn_worker

    process = _spawn_worker([sys.executable, "-c", "import os, sys; sys.stdout.write(os.environ['SECURE_FFM_PLAN_PROCESSES'])"])
    output, _ = process.communicate(timeout=60)
    assert output == b"1"


def test_the_runs_process_takes_the_next_job_in_the_rounds_order(tmp_path, monkeypatch):
    # eight clients a round, the run's process beside one forked worker, slowed to 0.5 s a request (patched before the
    # fork, asleep only outside the run's process): the worker is sent the first two requests, and the run's process
    # trains the other six in the round's order (it took them from the end before 2026-12-07, so its updates waited for
    # the workers' earlier ones and were summed at the round's end while the worker had nothing to do)
    from secure_ffm.transports import worker_pool

    run_process, answer, local = os.getpid(), worker_pool._answer, []

    def answer_slowly_in_the_worker(simulation, client_id, *args):
        if os.getpid() == run_process:
            local.append(client_id)
        else:
            time.sleep(0.5)
        return answer(simulation, client_id, *args)

    monkeypatch.setattr(worker_pool, "_answer", answer_slowly_in_the_worker)
    simulation = run(tmp_path, "two", digits_cnn_toml(clients=8, rounds=1, workers=2))
    order = simulation.server.sample_clients(1)
    assert simulation.transport.trains_here and local == order[2:]
