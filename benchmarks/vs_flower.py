"""secure-ffm's in-process engine against Flower 1.41's simulation engine (``run_simulation``, Ray) on the same workload.

Workload (``--cases``): the project's CNN (``model.arch = "cnn"``, ``finetune = "full"``) on Fashion-MNIST, IID
partitions of 32 training images per client, FedAvg, one local epoch of SGD (batch 32, lr 0.05, no momentum: one
step per client per round), the global model evaluated once, after the last round, on ``--test-examples`` test
images (1,000) in both systems.

- ``large``: 1,000 clients, 50 sampled per round, 10 rounds;
- ``small``: 100 clients, 5 sampled per round, 5 rounds.

Systems, each run in a fresh subprocess (``python benchmarks/vs_flower.py --_child ...``) so that start-up and
memory are measured the same way, interleaved per repetition (secure-ffm, Flower, secure-ffm with one thread, then
again):

- ``secure-ffm``: ``Simulation(prepare_run(config)).run()`` (no run directory) with the defaults: ``run.threads = 0``
  (the thread policy: one torch thread for the CNN) and ``run.workers = 0`` (automatic: the run's process and a
  forked worker per further free core when the run trains at least 40 client-rounds, as the large case does; the
  small case stays in-process); the child then ends as the ``secure-ffm`` executable does (flush, ``os._exit``: no
  interpreter teardown);
- ``flower``: ``flwr.simulation.run_simulation`` with a Message-API ServerApp and ClientApp, ``num_supernodes`` = the
  number of clients and ``backend_config = {"client_resources": {"num_cpus": 1}}`` (Flower's default: one Ray actor
  per CPU; Ray gives each actor one torch thread);
- ``secure-ffm-sequential``: as ``secure-ffm`` with ``run.workers = 1`` (clients one after another in the run's
  process; the default until 2026-12-06, when the JSON called the automatic choice ``secure-ffm-workers``).

The same work in Flower: the ServerApp builds secure-ffm's run for the same config (``prepare_run``: initial
weights, test data) and asks secure-ffm's own server which clients to train each round
(``Simulation(prepared).server.sample_clients(round)``, the seeded draw the in-process run makes). With
``run_simulation`` node ids are random and not partition ids: the script wraps Flower's
``flwr.server.superlink.fleet.vce.vce_api._register_nodes`` (which returns the node id -> partition id mapping the
simulation engine builds and then gives each node as ``context.node_config["partition-id"]``) to read that mapping,
at no cost to the run, and sends each round's train messages to exactly the nodes of the sampled partitions. Every
reply carries the partition id the node read from its own ``context.node_config``; the ServerApp checks they are
the sampled ones, and the parent checks Flower's clients per round equal the secure-ffm run's ``clients`` column.
The ClientApp loads the data with secure-ffm's loaders (``prepare_run``: the same partitions,
``data.client_indices``, and encoded images), cached once per Ray actor process, loads the global weights from the
message's ArrayRecord into the same CNN, trains with plain torch (cross-entropy, ``torch.optim.SGD``; batch order
drawn by torch, not the same order as secure-ffm's) and replies with the weights as an ArrayRecord and its example
count; the ServerApp averages them weighted by examples (FedAvg). Because each Ray actor builds through
``prepare_run``, Flower's clients run the same model code (the CNN's channels-last pools) and get the same fixed
glibc malloc thresholds (``secure_ffm.allocator``) as secure-ffm's.

Measured for each run:

- **wall**: seconds of the whole subprocess, from launching it to its exit (Ray's shut-down included; until
  2026-12-06 this was taken at the first 0.2 s memory sample after the exit, up to 0.2 s late);
- **start-up** (with the project's byte-code compiled first, as ``make`` leaves an install): seconds from
  launching it to the first client's first training step (secure-ffm: the first call of its trainer, timestamped
  by the child; with worker processes, the first update a worker returns, a little later;
  Flower: the first ClientApp call that starts training, after that actor has loaded its data, timestamped in a file;
  the first ClientApp call of any kind is ``first_call_s``, the ServerApp holding the node mapping ``nodes_ready_s``);
  ``after_startup_s`` = wall - start-up;
- **peak memory**: the largest sum of RSS over the child and all its descendants (Ray's GCS, raylet, workers ...),
  sampled every 0.2 s with psutil (pages shared between processes count once per process), and beside it the
  largest sum of PSS (``/proc/PID/smaps_rollup``: shared pages divided among the processes that map them, so
  torch's libraries count once), sampled every 2 s;
- **load**: the 1-minute load average (``os.getloadavg()``) when the run started and its mean during the run (the
  run's own processes included); ``own_cores``: the user + system CPU seconds of every process of the run's tree,
  as last sampled, over wall; ``others_cores``: the cores other processes kept busy meanwhile (the machine's busy
  CPU seconds from ``/proc/stat`` less the run's and this script's, over wall; a process's last 0.2 s count as
  others).

The machine may be shared: before each run the script waits (up to ``--quiet-wait`` seconds, 180) until other
processes keep fewer than ``--quiet-cores`` (0.3) cores busy over a second, and records what it found
(``others_cores_before``, ``waited_for_quiet_s``). It matters: with another process holding about one of the two
cores, secure-ffm with torch's default two threads ran the large case in 16-96 s instead of 6-7 (its intra-op
threads wait for each other), with ``run.threads = 1`` in 8-9 s (once 27 s, at a load of 6) instead of 7-9, and
Flower in 29-61 s instead of about 24.

Reported: the medians over repetitions (and ``wall_min_s``, the best repetition), and the ratios of medians
Flower / secure-ffm for wall, start-up, wall after start-up and memory. Both systems run the same computation: with
32 examples and batch 32 each client takes one full-batch step, so the batch order does not matter and the final
test accuracy is the same in every run of a case.

    python benchmarks/vs_flower.py [--cases small large] [--repetitions 3] [--test-examples 1000]
    python benchmarks/vs_flower.py --quick   # the small case, one repetition (a smoke test, about a minute)
    python benchmarks/vs_flower.py --cases large --load 1   # under load: a busy loop holds one core throughout

About 7-10 minutes for both cases and 3 repetitions on 2 CPU cores. Results: benchmarks/results/vs_flower.json
(``vs_flower_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import _common  # noqa: F401
from _common import median, print_table, write_result

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve()
CASES: dict[str, dict[str, int]] = {
    "large": {"clients": 1000, "per_round": 50, "rounds": 10},
    "small": {"clients": 100, "per_round": 5, "rounds": 5},
}
EXAMPLES_PER_CLIENT = 32
SYSTEMS = ("secure-ffm", "flower", "secure-ffm-sequential")
SAMPLE_SECONDS = 0.2
PSS_EVERY = 10  # samples: the proportional set size every 2 s (reading smaps_rollup costs a few ms per process)


def raw_config(case: str, workers: int | None, test_examples: int) -> dict[str, Any]:
    """The secure-ffm config of ``case`` (both systems train and evaluate what it describes); ``workers``: ``run.workers``
    (None: the default)."""
    c = CASES[case]
    run: dict[str, Any] = {"seed": 0, "name": f"vs-flower-{case}"}
    if workers is not None:
        run["workers"] = workers
    return {
        "run": run,
        "data": {
            "dataset": "fashion_mnist",
            "partition": "iid",
            "num_clients": c["clients"],
            "max_train_examples": EXAMPLES_PER_CLIENT * c["clients"],
            "max_test_examples": test_examples,
        },
        "model": {"arch": "cnn", "finetune": "full"},
        "client": {"local_epochs": 1, "batch_size": 32, "optimizer": "sgd", "lr": 0.05, "momentum": 0.0},
        "server": {"strategy": "fedavg", "rounds": c["rounds"], "clients_per_round": c["per_round"], "eval_every": c["rounds"]},
    }


# --------------------------------------------------------------------------- children (the measured processes)


def _prepare_secure_ffm(raw: dict[str, Any], stamps: dict[str, float]) -> Any:
    """The child's imports (with the trainer and the pool's replies timestamped into ``stamps``) and ``prepare_run``."""
    from secure_ffm.engine import training

    original = training.StandardTrainer.train

    def train(self: Any, *args: Any, **kwargs: Any) -> Any:
        stamps.setdefault("first_train", time.time())
        return original(self, *args, **kwargs)

    training.StandardTrainer.train = train  # type: ignore[method-assign]
    from secure_ffm.transports import worker_pool

    pool_fit = worker_pool.WorkerPoolTransport.fit

    def fit(self: Any, *args: Any, **kwargs: Any) -> Any:  # with workers the trainer runs in them: the first reply
        for reply in pool_fit(self, *args, **kwargs):
            stamps.setdefault("first_train", time.time())
            yield reply

    worker_pool.WorkerPoolTransport.fit = fit  # type: ignore[method-assign]
    from secure_ffm.config import config_from_dict
    from secure_ffm.run.simulation import prepare_run

    return prepare_run(config_from_dict(raw))


def child_secure_ffm(raw: dict[str, Any], out: Path) -> None:
    """secure-ffm's in-process run; writes the first training step's timestamp and the clients of each round. The
    imports and the set-up run with the garbage collector paused, as ``secure-ffm train`` runs them
    (secure_ffm.startup)."""
    from secure_ffm.startup import collector_paused

    stamps: dict[str, float] = {}
    with collector_paused():
        prepared = _prepare_secure_ffm(raw, stamps)
    stamps["prepared"] = time.time()
    import torch

    from secure_ffm.run.simulation import Simulation

    simulation = Simulation(prepared)
    summary = simulation.run()
    result = {
        "stamps": stamps,
        "clients": [row["clients"] for row in simulation.history],
        "test_accuracy": summary["final"]["test_accuracy"],
        "torch_threads": torch.get_num_threads(),
    }
    out.write_text(json.dumps(result), encoding="utf-8")


_NODES: dict[int, int] = {}  # node id -> partition id, as Flower's simulation engine registered them
_NODES_READY = threading.Event()
_SERVER_RESULT: dict[str, Any] = {}
_CLIENT: dict[str, Any] = {}  # per Ray actor process: secure-ffm's prepared run (partitions, encoded data, the CNN)


def _stamp(name: str) -> None:
    """Write ``name``'s timestamp once per run (the first process to get there wins)."""
    if _CLIENT.get(f"stamped-{name}"):
        return
    _CLIENT[f"stamped-{name}"] = True
    try:
        with open(Path(os.environ["VS_FLOWER_STAMPS"]) / name, "x", encoding="utf-8") as file:
            file.write(repr(time.time()))
    except FileExistsError:
        pass


def _client_run() -> Any:
    if "prepared" not in _CLIENT:
        from secure_ffm.config import config_from_dict
        from secure_ffm.run.simulation import prepare_run

        _CLIENT["prepared"] = prepare_run(config_from_dict(json.loads(os.environ["VS_FLOWER_CONFIG"])))
    return _CLIENT["prepared"]


def flower_train(message: Any, context: Any) -> Any:
    """The ClientApp's train function: load the global weights, one local epoch of SGD, reply with the weights."""
    _stamp("first_call")
    import numpy as np
    import torch
    import torch.nn.functional as F
    from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

    partition = int(context.node_config["partition-id"])
    prepared = _client_run()
    model = prepared.model
    model.set_trainable({name: array.numpy() for name, array in message.content["arrays"].items()})
    config = message.content["config"]
    lr, batch_size, epochs = float(config["lr"]), int(config["batch-size"]), int(config["local-epochs"])
    indices = prepared.data.client_indices[partition]
    encoded = prepared.encoded_private  # uint8 image codes: make_batch standardises each batch, as in secure-ffm
    module = model.module
    optimizer = torch.optim.SGD(module.parameters(), lr=lr)
    _stamp("first_train")
    module.train()
    total, seen = 0.0, 0
    for _ in range(epochs):
        order = indices[torch.randperm(len(indices)).numpy()]
        for start in range(0, len(order), batch_size):
            batch = model.make_batch(encoded, np.asarray(order[start : start + batch_size], dtype=np.int64))
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(module(batch.inputs["pixels"]), batch.labels)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
            seen += len(batch)
    weights = {name: Array(value) for name, value in model.get_trainable().items()}
    metrics = MetricRecord(
        {
            "num-examples": len(indices),
            "partition-id": partition,
            "train-loss": total / max(seen, 1),
            "torch-threads": torch.get_num_threads(),
        }
    )
    return Message(RecordDict({"arrays": ArrayRecord(array_dict=weights), "metrics": metrics}), reply_to=message)


def flower_server(grid: Any, context: Any) -> None:
    """The ServerApp: FedAvg over the partitions secure-ffm's server samples, evaluation after the last round."""
    import numpy as np
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

    from secure_ffm.config import config_from_dict
    from secure_ffm.run.simulation import Simulation, prepare_run

    config = config_from_dict(json.loads(os.environ["VS_FLOWER_CONFIG"]))
    prepared = prepare_run(config)  # the initial weights and the test data of the in-process run
    simulation = Simulation(prepared)  # only for its server's seeded client sampling and its evaluation
    if not _NODES_READY.wait(timeout=900):
        raise RuntimeError("Flower's simulation engine registered no nodes (vce_api._register_nodes was not called)")
    node_of = {partition: node for node, partition in _NODES.items()}
    if len(node_of) != config.data.num_clients or sorted(_NODES) != sorted(grid.get_node_ids()):
        raise RuntimeError(f"node mapping of {len(node_of)} partitions does not match the grid's {len(list(grid.get_node_ids()))} nodes")
    _SERVER_RESULT["stamps"] = {"nodes_ready": time.time()}
    parameters = {k: np.asarray(v, dtype=np.float32) for k, v in prepared.initial_parameters.items()}
    fit = ConfigRecord({"lr": config.client.lr, "batch-size": config.client.batch_size, "local-epochs": config.client.local_epochs})
    clients, losses = [], []
    for round in range(1, config.server.rounds + 1):
        sampled = simulation.server.sample_clients(round)
        arrays = ArrayRecord(array_dict={k: Array(v) for k, v in parameters.items()})
        messages = [
            Message(
                RecordDict({"arrays": arrays, "config": fit}), dst_node_id=node_of[p], message_type=MessageType.TRAIN, group_id=str(round)
            )
            for p in sampled
        ]
        replies = list(grid.send_and_receive(messages))
        failed = [reply.error for reply in replies if reply.has_error()]
        if failed or len(replies) != len(messages):
            raise RuntimeError(f"round {round}: {len(replies)} replies to {len(messages)} messages, errors {failed[:3]}")
        trained = sorted(int(reply.content["metrics"]["partition-id"]) for reply in replies)
        if trained != sampled:
            raise RuntimeError(f"round {round}: the nodes trained partitions {trained[:5]}..., not the sampled {sampled[:5]}...")
        total = sum(int(reply.content["metrics"]["num-examples"]) for reply in replies)
        summed = {k: np.zeros(v.shape, dtype=np.float64) for k, v in parameters.items()}
        for reply in replies:
            weight = int(reply.content["metrics"]["num-examples"]) / total
            for name, array in reply.content["arrays"].items():
                summed[name] += weight * array.numpy()
        parameters = {k: v.astype(np.float32) for k, v in summed.items()}
        clients.append(sampled)
        losses.append(float(np.mean([reply.content["metrics"]["train-loss"] for reply in replies])))
        _SERVER_RESULT.setdefault("client_torch_threads", int(replies[0].content["metrics"]["torch-threads"]))
    evaluation = simulation.evaluate_parameters(parameters)
    _SERVER_RESULT.update(clients=clients, train_loss=losses, test_accuracy=evaluation.accuracy)


def child_flower(raw: dict[str, Any], out: Path, stamps: Path) -> None:
    """Flower's simulation engine on the same config (run from the module ``vs_flower``, which the Ray actors import)."""
    os.environ["VS_FLOWER_CONFIG"] = json.dumps(raw)
    os.environ["VS_FLOWER_STAMPS"] = str(stamps)
    from flwr.clientapp import ClientApp
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    register = vce_api._register_nodes

    def register_and_keep(*args: Any, **kwargs: Any) -> dict[int, int]:
        mapping = register(*args, **kwargs)
        _NODES.update(mapping)
        _NODES_READY.set()
        return mapping

    vce_api._register_nodes = register_and_keep
    client_app = ClientApp()
    client_app.train()(flower_train)
    server_app = ServerApp()
    server_app.main()(flower_server)
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=raw["data"]["num_clients"],
        backend_config={"client_resources": {"num_cpus": 1}},
    )
    if "clients" not in _SERVER_RESULT:
        raise RuntimeError("the ServerApp did not finish (see the log above)")
    for name in ("first_call", "first_train"):
        path = stamps / name
        if path.exists():
            _SERVER_RESULT["stamps"][name] = float(path.read_text(encoding="utf-8"))
    out.write_text(json.dumps(_SERVER_RESULT), encoding="utf-8")


# --------------------------------------------------------------------------- the parent: launch, sample, compare


def pss_bytes(pid: int) -> int:
    """The process's proportional set size (shared pages divided among the processes that map them); 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as file:
            for line in file:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (``/proc/stat``: all but idle and iowait)."""
    with open("/proc/stat", encoding="ascii") as file:
        values = [int(v) for v in file.readline().split()[1:9]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def self_cpu_seconds() -> float:
    """CPU seconds of this process (the sampler)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def wait_for_quiet(max_busy: float, max_wait: float) -> tuple[float, float]:
    """Wait (up to ``max_wait`` seconds) until other processes keep fewer than ``max_busy`` cores busy over one second.

    Returns the cores others kept busy in the last second measured and the seconds waited."""
    start = time.time()
    while True:
        busy, own = busy_cpu_seconds(), self_cpu_seconds()
        time.sleep(1.0)
        others = max(0.0, (busy_cpu_seconds() - busy) - (self_cpu_seconds() - own))
        if others < max_busy or time.time() - start >= max_wait:
            return others, time.time() - start
        time.sleep(4.0)


def measure(system: str, case: str, test_examples: int, work: Path, quiet: tuple[float, float]) -> dict[str, Any]:
    """Run ``system`` on ``case`` in a fresh subprocess; wall, start-up, peak RSS of its process tree, load, others' CPU."""
    import psutil

    others_before, waited = wait_for_quiet(*quiet)
    work.mkdir(parents=True)
    out, log = work / "result.json", work / "child.log"
    cmd = [sys.executable, str(SCRIPT), "--_child", system, "--case", case, "--test-examples", str(test_examples), "--_out", str(out)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    load_start = os.getloadavg()[0]
    seen: dict[int, psutil.Process] = {}
    cpu: dict[int, float] = {}  # each process's user + system CPU seconds at its last sample
    peak, peak_pss, peak_processes, loads = 0, 0, 0, []
    with open(log, "w", encoding="utf-8") as log_file:
        busy_start, self_start = busy_cpu_seconds(), self_cpu_seconds()
        start = time.time()
        child = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        root = psutil.Process(child.pid)
        while True:
            total, members = 0, [root]
            try:
                members += root.children(recursive=True)
            except psutil.NoSuchProcess:
                pass
            for process in members:
                try:
                    total += process.memory_info().rss
                    times = process.cpu_times()
                    cpu[process.pid] = times.user + times.system
                    seen.setdefault(process.pid, process)
                except psutil.NoSuchProcess:
                    pass
            if total > peak:
                peak, peak_processes = total, len(members)
            if len(loads) % PSS_EVERY == 0:
                peak_pss = max(peak_pss, sum(pss_bytes(process.pid) for process in members))
            loads.append(os.getloadavg()[0])
            try:  # the next sample in 0.2 s, but the wall time to the exit itself (not to the next sample)
                child.wait(timeout=SAMPLE_SECONDS)
                break
            except subprocess.TimeoutExpired:
                pass
        wall = time.time() - start
        busy, sampler = busy_cpu_seconds() - busy_start, self_cpu_seconds() - self_start
    own = sum(cpu.values())  # the process tree's CPU seconds, each process's as last sampled (up to 0.2 s short)
    leftovers = [p for pid, p in seen.items() if pid != child.pid and p.is_running()]
    leftover_names = []
    for process in leftovers:  # a process the child started outlived it (e.g. one of Ray's): end it
        try:
            leftover_names.append(process.name())
            process.kill()
        except psutil.NoSuchProcess:
            pass
    if child.returncode != 0 or not out.exists():
        tail = log.read_text(encoding="utf-8", errors="replace")[-4000:]
        raise RuntimeError(f"{system} on {case} failed (exit {child.returncode}):\n{tail}")
    result = json.loads(out.read_text(encoding="utf-8"))
    stamps = result.pop("stamps")
    row = {
        "system": system,
        "case": case,
        "wall_s": wall,
        "startup_s": stamps["first_train"] - start,
        "after_startup_s": wall - (stamps["first_train"] - start),
        "peak_rss_mib": peak / 2**20,
        "peak_pss_mib": peak_pss / 2**20,
        "peak_processes": peak_processes,
        "load_1m_start": load_start,
        "load_1m_mean": sum(loads) / max(len(loads), 1),
        "own_cores": own / wall,
        "others_cores": max(0.0, busy - own - sampler) / wall,
        "others_cores_before": others_before,
        "waited_for_quiet_s": waited,
        "leftover_processes": leftover_names,
        **{f"{name}_s": value - start for name, value in stamps.items() if name != "first_train"},
        **result,
    }
    return row


def run_case(case: str, repetitions: int, test_examples: int, work: Path, quiet: tuple[float, float]) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    for repetition in range(1, repetitions + 1):
        for system in SYSTEMS:
            row = measure(system, case, test_examples, work / f"{case}-{repetition}-{system}", quiet)
            row["repetition"] = repetition
            runs.append(row)
            print(
                f"{case} #{repetition} {system:20s} wall {row['wall_s']:7.2f} s  start-up {row['startup_s']:6.2f} s  "
                f"peak RSS {row['peak_rss_mib']:7.1f} MiB ({row['peak_processes']} processes)  "
                f"load {row['load_1m_start']:.2f} -> {row['load_1m_mean']:.2f}  cores: own {row['own_cores']:.2f} "
                f"others {row['others_cores']:.2f} (before {row['others_cores_before']:.2f})  acc {row['test_accuracy']:.4f}",
                flush=True,
            )
    reference = [r["clients"] for r in runs if r["system"] == "secure-ffm"][0]
    same_clients = all(r.pop("clients") == reference for r in runs)
    if not same_clients:
        raise RuntimeError(f"{case}: the systems trained different clients per round")
    summary = []
    for system in SYSTEMS:
        mine = [r for r in runs if r["system"] == system]
        summary.append(
            {
                "case": case,
                "system": system,
                "runs": len(mine),
                "wall_s": median([r["wall_s"] for r in mine]),
                "wall_min_s": min(r["wall_s"] for r in mine),
                "startup_s": median([r["startup_s"] for r in mine]),
                "after_startup_s": median([r["after_startup_s"] for r in mine]),
                "peak_rss_mib": median([r["peak_rss_mib"] for r in mine]),
                "peak_pss_mib": median([r["peak_pss_mib"] for r in mine]),
                "processes": max(r["peak_processes"] for r in mine),
                "test_acc": median([r["test_accuracy"] for r in mine]),
                "load_1m_start": median([r["load_1m_start"] for r in mine]),
                "load_1m_mean": median([r["load_1m_mean"] for r in mine]),
                "own_cores": median([r["own_cores"] for r in mine]),
                "others_cores": median([r["others_cores"] for r in mine]),
            }
        )
    by = {row["system"]: row for row in summary}
    ratios = []
    for base in ("secure-ffm", "secure-ffm-sequential"):
        ratios.append(
            {
                "case": case,
                "flower_over": base,
                "wall": by["flower"]["wall_s"] / by[base]["wall_s"],
                "startup": by["flower"]["startup_s"] / by[base]["startup_s"],
                "after_startup": by["flower"]["after_startup_s"] / by[base]["after_startup_s"],
                "peak_rss": by["flower"]["peak_rss_mib"] / by[base]["peak_rss_mib"],
                "peak_pss": by["flower"]["peak_pss_mib"] / by[base]["peak_pss_mib"],
            }
        )
    return {
        "config": raw_config(case, None, test_examples),
        "workload": CASES[case],
        "same_clients_every_round": same_clients,
        "clients_per_round": reference,
        "runs": runs,
        "summary": summary,
        "ratios": ratios,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=["small", "large"])
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--test-examples", type=int, default=1000, help="test images of the final evaluation (both systems)")
    parser.add_argument("--quick", action="store_true", help="the small case, one repetition (a smoke test)")
    parser.add_argument(
        "--quiet-cores", type=float, default=0.3, help="before each run, wait while other processes keep this many cores busy or more"
    )
    parser.add_argument("--quiet-wait", type=float, default=180.0, help="the longest wait for quiet before a run, in seconds (0: none)")
    parser.add_argument(
        "--load",
        type=int,
        default=0,
        help="run under load: N busy-loop processes hold N cores for the whole benchmark (no wait for quiet); "
        "results in vs_flower_loadN.json",
    )
    parser.add_argument("--_child", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--case", choices=list(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--_out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        raw = raw_config(args.case, 1 if args._child == "secure-ffm-sequential" else None, args.test_examples)
        if args._child == "flower":
            import vs_flower  # the ClientApp's functions must live in a module the Ray actors can import, not __main__

            vs_flower.child_flower(raw, args._out, args._out.parent)
        else:
            child_secure_ffm(raw, args._out)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)  # as the secure-ffm executable ends (secure_ffm.run.cli.console)
        return
    if args.quick:
        args.cases, args.repetitions = ["small"], 1
    if args.load:
        args.quiet_wait = 0.0
    # the project's byte-code as `make` leaves it (Makefile: compileall after install): a module edited since, under
    # PYTHONDONTWRITEBYTECODE, would otherwise be compiled anew in every measured start (about 0.05 s here)
    import compileall

    compiled = all(compileall.compile_dir(str(ROOT / package), quiet=1) for package in ("secure_ffm", "benchmarks"))
    results: dict[str, Any] = {
        "bytecode_compiled": compiled,
        "quick": args.quick,
        "repetitions": args.repetitions,
        "test_examples": args.test_examples,
        "quiet": {"cores": args.quiet_cores, "max_wait_s": args.quiet_wait},
        "load_processes": args.load,
        "cases": {},
    }
    # the load: other jobs on the machine's cores, as on CI and on most users' machines (busy loops, each one core)
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.load)]
    try:
        with tempfile.TemporaryDirectory(prefix="vs-flower-") as tmp:
            for case in args.cases:
                quiet = (args.quiet_cores, args.quiet_wait)
                results["cases"][case] = run_case(case, args.repetitions, args.test_examples, Path(tmp), quiet)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    summary = [row for case in results["cases"].values() for row in case["summary"]]
    ratios = [row for case in results["cases"].values() for row in case["ratios"]]
    print_table(f"Medians over {args.repetitions} repetition(s) per system (seconds, MiB; load = 1-minute load average)", summary)
    print_table("Ratios of medians, Flower / secure-ffm", ratios)
    write_result("vs_flower_quick" if args.quick else f"vs_flower_load{args.load}" if args.load else "vs_flower", results)


if __name__ == "__main__":
    main()
