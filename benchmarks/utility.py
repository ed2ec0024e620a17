"""Utility, centralized vs federated, on the same data and the same number of epochs.

* Fashion-MNIST CNN: 20 clients, Dirichlet(0.5), FedAvg, 20 rounds of 1 local epoch
  (target: at least 85% test accuracy) vs 1 client holding all data (centralized).
* MiniLM LoRA on movie_reviews: 8 clients, Dirichlet(0.5) vs centralized.

    python benchmarks/utility.py [--only fmnist|movie] [--movie-rounds 3]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import _common  # noqa: F401
from _common import print_table, write_result

from secure_ffm.config import load_config
from secure_ffm.run.simulation import Simulation, prepare_run

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CENTRALIZED = ["data.num_clients=1", "data.partition=iid"]


def run(config_path: Path, overrides: list[str]) -> dict:
    config = load_config(config_path, overrides=overrides)
    simulation = Simulation(prepare_run(config))
    summary = simulation.run()
    return {
        "test_accuracy": summary["final"]["test_accuracy"],
        "test_macro_f1": summary["final"]["test_macro_f1"],
        "best_test_accuracy": summary["best_test_accuracy"],
        "rounds": summary["rounds"],
        "clients": summary["num_clients"],
        "train_examples": summary["num_train_examples"],
        "seconds": summary["seconds_total"],
        "curve": [r["test_accuracy"] for r in simulation.history],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=["fmnist", "movie"])
    parser.add_argument("--fmnist-rounds", type=int, default=20)
    parser.add_argument("--movie-rounds", type=int, default=3)
    parser.add_argument("--movie-train-examples", type=int, default=4000)
    args = parser.parse_args()
    results: dict[str, dict] = {}
    if args.only in (None, "fmnist"):
        base = [f"server.rounds={args.fmnist_rounds}"]
        results["fmnist-cnn-federated-20"] = run(CONFIGS / "fashion_mnist_cnn.toml", base)
        results["fmnist-cnn-centralized"] = run(CONFIGS / "fashion_mnist_cnn.toml", base + CENTRALIZED)
    if args.only in (None, "movie"):
        base = [
            f"server.rounds={args.movie_rounds}",
            f"data.max_train_examples={args.movie_train_examples}",
            "data.max_test_examples=0",
        ]
        results["movie-minilm-lora-federated-8"] = run(CONFIGS / "quickstart.toml", base)
        results["movie-minilm-lora-centralized"] = run(CONFIGS / "quickstart.toml", base + CENTRALIZED)
    rows = [
        {"case": k, **{c: v[c] for c in ("clients", "rounds", "train_examples", "test_accuracy", "test_macro_f1", "seconds")}}
        for k, v in results.items()
    ]
    print_table("Utility: federated vs centralized (same data, same epochs)", rows)
    name = "utility" if args.only is None else f"utility_{args.only}"
    write_result(name, {"results": results, "fmnist_target_accuracy": 0.85})


if __name__ == "__main__":
    main()
