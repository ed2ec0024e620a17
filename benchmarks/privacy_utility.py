"""Privacy-utility table: test accuracy at ε ∈ {1, 3, 8, ∞}, DP-SGD and DP-FedAvg.

* Fashion-MNIST CNN, 20 clients, Dirichlet(0.5) (``configs/fashion_mnist_cnn.toml``)
* MiniLM LoRA on movie_reviews, 8 clients (``configs/quickstart.toml``)

DP-SGD is sample-level ε per client (PRV accountant); DP-FedAvg is user-level ε
(each client's whole data), with so few clients its noise swamps the signal:
that is the honest cost of user-level DP at this scale.

    python benchmarks/privacy_utility.py [--only fmnist|movie] [--fmnist-rounds 10]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import _common  # noqa: F401
from _common import print_table, write_result

from secure_ffm.config import load_config
from secure_ffm.run.simulation import Simulation, prepare_run

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
EPSILONS = (1.0, 3.0, 8.0)

CASES = {
    "fmnist-cnn-20": {
        "config": "fashion_mnist_cnn.toml",
        "base": ["data.max_train_examples=20000", "data.max_test_examples=2000"],
        # DP-SGD likes larger batches and a larger step without momentum (Opacus' MNIST example)
        "dp-sgd": ["client.batch_size=64", "client.lr=0.5", "client.momentum=0.0", "privacy.max_grad_norm=1.0"],
        "dp-fedavg": ["privacy.clip_norm=1.0"],
    },
    "movie-minilm-lora-8": {
        "config": "quickstart.toml",
        "base": ["data.max_train_examples=1200", "data.max_test_examples=600"],
        "dp-sgd": ["privacy.max_grad_norm=1.0"],
        "dp-fedavg": ["privacy.clip_norm=0.5"],
    },
}


def run(case: dict, rounds: int, mechanism: str | None, epsilon: float) -> dict:
    overrides = [*case["base"], f"server.rounds={rounds}"]
    if mechanism is not None:
        overrides += [f"privacy.mode={mechanism}", f"privacy.target_epsilon={epsilon}", *case[mechanism]]
    simulation = Simulation(prepare_run(load_config(CONFIGS / case["config"], overrides=overrides)))
    summary = simulation.run()
    privacy = summary["privacy"]
    spent = privacy.get("epsilon")
    if isinstance(spent, dict):
        spent = spent["max"]
    return {
        "mechanism": mechanism or "none",
        "target_epsilon": epsilon,
        "epsilon_spent": spent if spent is not None else math.inf,
        "noise_multiplier": privacy.get("noise_multiplier"),
        "test_accuracy": summary["final"]["test_accuracy"],
        "test_macro_f1": summary["final"]["test_macro_f1"],
        "seconds": summary["seconds_total"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=["fmnist", "movie"])
    parser.add_argument("--fmnist-rounds", type=int, default=10)
    parser.add_argument("--movie-rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {}
    for name, case in CASES.items():
        if args.only and not name.startswith(args.only):
            continue
        rounds = args.fmnist_rounds if name.startswith("fmnist") else args.movie_rounds
        rows = [run(case, rounds, None, math.inf)]
        for mechanism in ("dp-sgd", "dp-fedavg"):
            rows += [run(case, rounds, mechanism, eps) for eps in EPSILONS]
        results[name] = rows
        print_table(f"Privacy-utility: {name}, {rounds} rounds", rows)
    write_result("privacy_utility" if args.only is None else f"privacy_utility_{args.only}", {"results": results})


if __name__ == "__main__":
    main()
