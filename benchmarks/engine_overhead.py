"""Engine overhead: a round's wall time divided by the sum of its clients' training times.

Target: at most 1.05. The fit phase (sampling, loading global weights into the
shared model, local training, computing deltas, encoding, aggregation, strategy
step) is what the engine adds around training; server-side test evaluation is
reported separately because it is useful work, not overhead.

    python benchmarks/engine_overhead.py [--rounds 4]
"""

from __future__ import annotations

import argparse

import _common  # noqa: F401  (sets the offline environment)
from _common import median, print_table, write_result

from secure_ffm.config import config_from_dict
from secure_ffm.run.simulation import Simulation, prepare_run

CASES = {
    "cnn-fmnist-20clients": {
        "data": {"dataset": "fashion_mnist", "num_clients": 20, "alpha": 0.5, "max_train_examples": 20000, "max_test_examples": 2000},
        "model": {"arch": "cnn", "finetune": "full"},
        "client": {"local_epochs": 1, "batch_size": 32, "lr": 0.05, "momentum": 0.9},
    },
    "minilm-lora-movie-8clients": {
        "data": {
            "dataset": "movie_reviews",
            "num_clients": 8,
            "alpha": 0.5,
            "max_train_examples": 800,
            "max_test_examples": 200,
            "max_length": 64,
        },
        "model": {"arch": "hf-text", "finetune": "lora"},
        "client": {"local_epochs": 1, "batch_size": 32, "optimizer": "adamw", "lr": 0.0005},
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    rows, results = [], {}
    for name, raw in CASES.items():
        # eval only after the last round, which is left out of the fit-phase ratio
        # clients one after another (run.workers = 1): the ratio divides by the sum of their training times
        config = config_from_dict({**raw, "run": {"workers": 1}, "server": {"rounds": args.rounds + 1, "eval_every": 10_000}})
        simulation = Simulation(prepare_run(config))
        simulation.run()
        history = simulation.history[:-1]
        fit_ratio = [r["fit_seconds"] / r["client_train_seconds"] for r in history]
        row = {
            "case": name,
            "rounds": len(history),
            "median_fit_seconds": median([r["fit_seconds"] for r in history]),
            "median_client_train_seconds": median([r["client_train_seconds"] for r in history]),
            "median_ratio": median(fit_ratio),
            "max_ratio": max(fit_ratio),
            "target": 1.05,
            "last_round_eval_seconds": simulation.history[-1]["eval_seconds"],
        }
        rows.append(row)
        results[name] = {
            **row,
            "per_round": [
                {k: r[k] for k in ("round", "fit_seconds", "client_train_seconds", "aggregate_seconds", "encode_seconds")} for r in history
            ],
        }
    print_table("Engine overhead (round fit wall time / sum of client training times)", rows)
    write_result("engine_overhead", results)


if __name__ == "__main__":
    main()
