"""Scale: peak resident memory with 1,000 simulated CNN clients vs 10 clients.

Each setting runs in a fresh subprocess (so peak RSS is its own) for one round in
which every client trains ``--local-steps`` batches on its Fashion-MNIST shard.
Target: RSS(1000 clients) within 1.5x of RSS(10 clients).

    python benchmarks/scale_rss.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import _common  # noqa: F401
from _common import print_table, write_result

CHILD = r"""
import json, resource, sys, time
from secure_ffm.config import config_from_dict
from secure_ffm.run.simulation import Simulation, prepare_run
num_clients, steps = int(sys.argv[1]), int(sys.argv[2])
config = config_from_dict({
    "run": {"workers": 1},  # this process's own memory; the worker pool's is vs_flower.py's
    "data": {"dataset": "fashion_mnist", "num_clients": num_clients, "partition": "iid"},
    "model": {"arch": "cnn", "finetune": "full"},
    "client": {"local_steps": steps, "batch_size": 32, "lr": 0.05},
    "server": {"rounds": 1},
})
start = time.perf_counter()
simulation = Simulation(prepare_run(config))
summary = simulation.run()
print(json.dumps({
    "clients": num_clients,
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "seconds": time.perf_counter() - start,
    "clients_trained": len(simulation.history[0]["clients"]),
    "test_accuracy": summary["final"]["test_accuracy"],
}))
"""


def run(num_clients: int, steps: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(num_clients), str(steps)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--local-steps", type=int, default=2)
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000])
    args = parser.parse_args()
    rows = [run(n, args.local_steps) for n in args.clients]
    base = rows[0]["peak_rss_mib"]
    for row in rows:
        row["rss_ratio_vs_first"] = row["peak_rss_mib"] / base
    print_table("Peak RSS by number of simulated clients (CNN, Fashion-MNIST, 1 round)", rows)
    write_result("scale_rss", {"local_steps": args.local_steps, "rows": rows, "target_ratio": 1.5, "time": time.time()})


if __name__ == "__main__":
    main()
