"""The worker-pool transport: round time with N worker processes over one, and the process tree's peak memory.

Each run is ``secure-ffm train`` in a fresh subprocess (the project's CNN on Fashion-MNIST, ``--clients`` clients of 32
examples, every client every round by default, ``--rounds`` rounds, one local epoch of batch 32), with
``run.workers = 1`` (one client after another, one torch thread) and ``run.workers = N`` (N processes, one thread
each), alternating, ``--repetitions`` times. Reported: the median over rounds after the first (the first also starts
the workers) of each metrics row's ``fit_seconds``, the median over repetitions, their ratio; the whole run's wall
time; the peak of the summed RSS of the process and its workers and of their summed PSS (proportional set size:
a page shared by k processes counts 1/k in each, so forked workers' shared pages are counted once; sampled every
0.2 s); the CPU seconds of the run's process and of its workers; the load average.

    python benchmarks/workers.py [--clients 100] [--per-round 100] [--rounds 4] [--workers 2] [--repetitions 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401
import psutil
from _common import median, print_table, write_result

from secure_ffm.config import config_from_dict


def config_toml(clients: int, per_round: int, rounds: int, workers: int) -> str:
    raw = {
        "run": {"seed": 0, "threads": 1, "workers": workers},
        "data": {
            "dataset": "fashion_mnist",
            "partition": "iid",
            "num_clients": clients,
            "max_train_examples": 32 * clients,
            "max_test_examples": 500,
        },
        "model": {"arch": "cnn", "finetune": "full"},
        "client": {"batch_size": 32, "local_epochs": 1, "lr": 0.05},
        "server": {"rounds": rounds, "clients_per_round": per_round, "eval_every": rounds},
    }
    return config_from_dict(raw).to_toml()


def run_once(text: str, work: Path, name: str) -> dict[str, float]:
    config = work / f"{name}.toml"
    config.write_text(text)
    out = work / name
    command = [sys.executable, "-m", "secure_ffm.run.cli", "train", str(config), "--out", str(out), "--quiet"]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    root = psutil.Process(process.pid)
    peak = peak_pss = 0
    cpu: dict[int, float] = {}
    while True:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree))
            peak_pss = max(peak_pss, sum(p.memory_full_info().pss for p in tree))
            for p in tree:
                times = p.cpu_times()
                cpu[p.pid] = times.user + times.system
        except psutil.Error:
            pass
        try:  # the next sample in 0.2 s, but the wall time to the exit itself
            process.wait(timeout=0.2)
            break
        except subprocess.TimeoutExpired:
            pass
    wall = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"{name} exited with {process.returncode}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        "round_s": median([r["fit_seconds"] for r in rows[1:]] or [rows[0]["fit_seconds"]]),
        "wall_s": wall,
        "peak_rss_mib": peak / 2**20,
        "peak_pss_mib": peak_pss / 2**20,
        "main_cpu_s": cpu.get(process.pid, 0.0),
        "workers_cpu_s": sum(v for k, v in cpu.items() if k != process.pid),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--per-round", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--result", default="workers", help="name of the JSON in benchmarks/results")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    results: dict[int, list[dict[str, float]]] = {1: [], args.workers: []}
    loads = []
    for repetition in range(args.repetitions):
        for workers in (1, args.workers):
            text = config_toml(args.clients, args.per_round, args.rounds, workers)
            results[workers].append(run_once(text, work, f"w{workers}-r{repetition}"))
            loads.append(os.getloadavg()[0])
            print(f"repetition {repetition} workers {workers}: {results[workers][-1]}", flush=True)
    rows = []
    for workers, runs in results.items():
        rows.append(
            {
                "workers": workers,
                "round_s": median([r["round_s"] for r in runs]),
                "wall_s": median([r["wall_s"] for r in runs]),
                "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
                "peak_pss_mib": max(r["peak_pss_mib"] for r in runs),
                "main_cpu_s": median([r["main_cpu_s"] for r in runs]),
                "workers_cpu_s": median([r["workers_cpu_s"] for r in runs]),
            }
        )
    ratio = rows[1]["round_s"] / rows[0]["round_s"]
    print_table(f"CNN, {args.clients} clients x 32, {args.per_round} per round: {args.workers} workers over 1 = {ratio:.2f}x", rows)
    write_result(
        args.result,
        {
            "rows": rows,
            "round_ratio": ratio,
            "runs": {str(k): v for k, v in results.items()},
            "load_avg_median": median(loads),
            "settings": vars(args),
        },
    )


if __name__ == "__main__":
    main()
