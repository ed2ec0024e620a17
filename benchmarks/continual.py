"""Federated continual learning, measured: scenarios x methods, with and without DP-SGD at ε = 8, over seeds.

Scenarios (issue 14; docs/continual.md):

* ``class-fmnist``: class-incremental Fashion-MNIST, 5 stages of 2 classes, the project CNN trained in full, one head
  over all 10 classes and no task id at test time (the hardest setting: the usual anchors report large forgetting
  for naive FL here);
* ``domain-text``: domain-incremental sentiment with the bundled all-MiniLM-L6-v2 and LoRA: movie reviews, then
  product reviews, then tweets (the VADER snippets: same two classes, three domains);
* ``data-fmnist``: new private data arrives: the same Fashion-MNIST task, each client's data released in 4 shares.

Methods: ``naive``, ``replay`` (a buffer of each client's own earlier examples), ``ewc`` (importances through
secure aggregation) and ``isolation`` (one set of trained parameters per stage; LoRA adapters and head for MiniLM).
Every run uses the engine's path (``prepare_run`` + ``Simulation``) exactly as ``secure-ffm train`` does.

    python benchmarks/continual.py --quick                  # class-fmnist, seed 0, no DP: 4 runs, about a minute
    python benchmarks/continual.py                          # all scenarios x methods x {no DP, ε = 8} x seeds 0 1 2
    python benchmarks/continual.py --scenarios domain-text --seeds 0

Writes ``benchmarks/results/continual[_quick].json`` (every run's accuracy matrix and metrics, the machine and date)
and one accuracy-matrix figure per scenario and privacy setting (seed 0) under ``benchmarks/results/continual/``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import _common  # noqa: F401
import numpy as np
import torch
from _common import RESULTS, print_table, write_result

from secure_ffm.config import config_from_dict
from secure_ffm.run.simulation import Simulation, prepare_run

METHODS = ("naive", "replay", "ewc", "isolation")
FMNIST_CNN = {
    "data": {"dataset": "fashion_mnist", "max_train_examples": 10000, "max_test_examples": 2000, "num_clients": 10, "partition": "iid"},
    "model": {"arch": "cnn", "finetune": "full"},
    "client": {"batch_size": 32, "lr": 0.05, "local_steps": 10},
}
SCENARIOS: dict[str, dict[str, Any]] = {
    "class-fmnist": {
        **FMNIST_CNN,
        "continual": {
            "replay_buffer": 100,
            "stages": [{"name": f"classes {2 * i}-{2 * i + 1}", "rounds": 3, "classes": [str(2 * i), str(2 * i + 1)]} for i in range(5)],
        },
    },
    "domain-text": {
        "data": {
            "dataset": "movie_reviews",
            "max_train_examples": 800,
            "max_test_examples": 300,
            "num_clients": 4,
            "partition": "iid",
            "max_length": 48,
        },
        "model": {"arch": "hf-text", "name_or_path": "all-MiniLM-L6-v2", "finetune": "lora", "lora_rank": 8, "lora_alpha": 16.0},
        "client": {"batch_size": 16, "optimizer": "adamw", "lr": 0.003, "local_steps": 10},
        "continual": {
            "replay_buffer": 40,
            "stages": [
                {"name": "movie reviews", "rounds": 2},
                {"name": "product reviews", "rounds": 2, "dataset": "product_reviews"},
                {"name": "tweets", "rounds": 2, "dataset": "tweets"},
            ],
        },
    },
    "data-fmnist": {
        **FMNIST_CNN,
        "continual": {"replay_buffer": 100, "stages": [{"name": f"share {i + 1}", "rounds": 2, "release": 0.25} for i in range(4)]},
    },
}
DP_SGD = {"mode": "dp-sgd", "target_epsilon": 8.0, "accountant": "rdp", "max_grad_norm": 1.0}


def config_for(scenario: str, method: str, seed: int, dp: bool) -> Any:
    spec = SCENARIOS[scenario]
    document: dict[str, Any] = {
        "run": {"name": f"{scenario}-{method}", "seed": seed, "threads": 1},
        "data": dict(spec["data"]),
        "model": dict(spec["model"]),
        "client": dict(spec["client"]),
        "server": {"eval_batch_size": 256},
        "continual": {**spec["continual"], "method": method},
    }
    if dp:
        document["privacy"] = dict(DP_SGD)
    return config_from_dict(document)


def run_one(scenario: str, method: str, seed: int, dp: bool) -> dict[str, Any]:
    config = config_for(scenario, method, seed, dp)
    torch.manual_seed(seed)
    start = time.perf_counter()
    simulation = Simulation(prepare_run(config))
    summary = simulation.run()
    continual = summary["continual"]
    return {
        "scenario": scenario,
        "method": method,
        "dp": "ε=8" if dp else "none",
        "seed": seed,
        "average_accuracy": continual["average_accuracy"],
        "forgetting": continual["forgetting"],
        "backward_transfer": continual["backward_transfer"],
        "final_accuracy": summary["final"]["test_accuracy"],
        "accuracy_matrix": continual["accuracy_matrix"],
        "stages": [s["name"] for s in continual["stages"]],
        "epsilon_max": (summary["privacy"].get("epsilon") or {}).get("max") if dp else None,
        "budget_exhausted": len(continual["budget_exhausted"]),
        "bytes_up_total": summary["bytes_up_total"],
        "seconds": time.perf_counter() - start,
    }


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def table(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    keys = sorted({(r["scenario"], r["dp"], r["method"]) for r in runs}, key=lambda k: (k[0], k[1] != "none", METHODS.index(k[2])))
    for scenario, dp, method in keys:
        group = [r for r in runs if (r["scenario"], r["dp"], r["method"]) == (scenario, dp, method)]
        rows.append(
            {
                "scenario": scenario,
                "privacy": dp,
                "method": method,
                "seeds": len(group),
                "avg acc %": mean_std([r["average_accuracy"] for r in group]),
                "forgetting pp": mean_std([r["forgetting"] for r in group if r["forgetting"] is not None]),
                "BWT pp": mean_std([r["backward_transfer"] for r in group if r["backward_transfer"] is not None]),
                "s/run": f"{statistics.median([r['seconds'] for r in group]):.0f}",
            }
        )
    return rows


def figures(runs: list[dict[str, Any]], folder: Path) -> list[Path]:
    """Per scenario and privacy setting: the accuracy matrices of the methods side by side (seed 0, or the first)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for scenario, dp in sorted({(r["scenario"], r["dp"]) for r in runs}):
        chosen = []
        for method in METHODS:
            group = sorted((r for r in runs if (r["scenario"], r["dp"], r["method"]) == (scenario, dp, method)), key=lambda r: r["seed"])
            if group:
                chosen.append(group[0])
        fig, axes = plt.subplots(1, len(chosen), figsize=(3.4 * len(chosen), 3.6), squeeze=False)
        for ax, run in zip(axes[0], chosen, strict=True):
            matrix = np.array([[np.nan if v is None else 100 * v for v in row] for row in run["accuracy_matrix"]])
            ax.imshow(matrix, vmin=0, vmax=100, cmap="viridis")
            size = len(matrix)
            for i in range(size):
                for j in range(size):
                    if not np.isnan(matrix[i, j]):
                        colour = "white" if matrix[i, j] < 60 else "black"
                        ax.text(j, i, f"{matrix[i, j]:.0f}", ha="center", va="center", color=colour, fontsize=8)
            ax.set_title(f"{run['method']}: avg {100 * run['average_accuracy']:.1f}%", fontsize=9)
            ax.set_xticks(range(size))
            ax.set_yticks(range(size))
            ax.set_xlabel("test set of stage j", fontsize=8)
            ax.set_ylabel("after stage i", fontsize=8)
        fig.suptitle(f"{scenario}, privacy {dp}, seed {chosen[0]['seed']}: accuracy matrix A[i][j] (%)", fontsize=10)
        fig.tight_layout()
        path = folder / f"{scenario}_{'dp' if dp != 'none' else 'nodp'}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="class-fmnist, seed 0, no DP")
    parser.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--privacy", nargs="+", choices=["none", "dp"], default=["none", "dp"])
    parser.add_argument("--name", help="results name (default continual, or continual_quick with --quick)")
    parser.add_argument(
        "--replot", metavar="NAME", help="redraw the figures of benchmarks/results/NAME.json and print its table; run nothing"
    )
    args = parser.parse_args()
    if args.replot:
        saved = json.loads((RESULTS / f"{args.replot}.json").read_text())
        print_table(
            "Federated continual learning (mean ± std over seeds; accuracy in %, forgetting and BWT in points)", table(saved["runs"])
        )
        for path in figures(saved["runs"], RESULTS / args.replot):
            print(f"wrote {path}")
        return
    if args.quick:
        args.scenarios, args.seeds, args.privacy = ["class-fmnist"], [0], ["none"]
    torch.set_num_threads(1)
    runs = []
    for scenario in args.scenarios:
        for dp in args.privacy:
            for seed in args.seeds:
                for method in args.methods:
                    run = run_one(scenario, method, seed, dp == "dp")
                    runs.append(run)
                    partial = RESULTS / f"{args.name or 'continual'}.partial.jsonl"  # every finished run, in case of a stop
                    with partial.open("a", encoding="utf-8") as out:
                        out.write(json.dumps(run) + "\n")
                    print(
                        f"[{len(runs)}] {scenario} {method} privacy={run['dp']} seed={seed}: avg {100 * run['average_accuracy']:.1f}% "
                        f"forgetting {run['forgetting']} ({run['seconds']:.0f} s)",
                        flush=True,
                    )
    rows = table(runs)
    print_table("Federated continual learning (mean ± std over seeds; accuracy in %, forgetting and BWT in points)", rows)
    name = args.name or ("continual_quick" if args.quick else "continual")
    paths = figures(runs, RESULTS / name)
    write_result(name, {"settings": {k: v for k, v in SCENARIOS.items() if k in args.scenarios}, "dp": DP_SGD, "table": rows, "runs": runs})
    for path in paths:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
