"""The two privacy-utility sweeps of the benchmark: Fashion-MNIST (CNN, 20 clients) and movie
reviews (MiniLM LoRA, 8 clients), each over ε ∈ {1, 3, 8, ∞} for DP-SGD and DP-FedAvg, with
90% magnitude pruning and pairwise-masking secure aggregation, audited by Inverting Gradients
(images) or TAG (text).

Each sweep runs in ``runs/sweep-<name>/`` (resumable: an interrupted benchmark continues where it
stopped), then its report is written and the result files (``sweep.csv``, ``sweep.jsonl``,
``sweep.toml``, ``report.html``, ``plots/``) are copied to ``benchmarks/results/sweep_<name>/``.
Prints one table per sweep and writes ``benchmarks/results/privacy_sweeps.json``.

    python benchmarks/privacy_sweeps.py [--only fashion_mnist|movie_reviews]

About 15 minutes (Fashion-MNIST) plus 25 minutes (movie reviews) on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

import _common  # noqa: F401 - offline environment
from _common import RESULTS, print_table, write_result

from eval.report import write_report
from eval.sweep import run_sweep

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = {
    "fashion_mnist": (ROOT / "configs" / "sweep_fashion_mnist.toml", ROOT / "runs" / "sweep-fmnist"),
    "movie_reviews": (ROOT / "configs" / "sweep_movie_reviews.toml", ROOT / "runs" / "sweep-movies"),
}
RESULT_FILES = ("sweep.csv", "sweep.jsonl", "sweep.toml", "report.html")


def summarize(row: dict[str, Any]) -> dict[str, Any]:
    epsilon = row.get("epsilon")
    return {
        "protection": row.get("protection"),
        "epsilon": "inf" if epsilon in (None, "inf") or epsilon == float("inf") else round(float(epsilon), 3),
        "accuracy": row.get("accuracy"),
        "macro_f1": row.get("macro_f1"),
        "attack": row.get("attack"),
        "attack_metric": row.get("attack_metric"),
        "attack_value": row.get("attack_value"),
        "train_s": round(float(row.get("train_seconds") or 0.0), 1),
        "attack_s": round(float(row.get("attack_seconds") or 0.0), 1),
        "status": row.get("status"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(SWEEPS), help="run one of the two sweeps")
    args = parser.parse_args()
    payload: dict[str, Any] = {}
    for name, (sweep_file, out_dir) in SWEEPS.items():
        if args.only and name != args.only:
            continue
        summary = run_sweep(sweep_file, out_dir, quiet=False)
        write_report(out_dir)
        target = RESULTS / f"sweep_{name}"
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for file in RESULT_FILES:
            shutil.copy2(out_dir / file, target / file)
        shutil.copytree(out_dir / "plots", target / "plots")
        rows = [summarize(row) for row in summary.rows]
        print_table(f"{name}: {sweep_file.name} ({summary.total} points)", rows)
        payload[name] = {"sweep": str(sweep_file.relative_to(ROOT)), "points": rows, "failed": summary.failed}
    write_result("privacy_sweeps" if not args.only else f"privacy_sweeps_{args.only}", payload)


if __name__ == "__main__":
    main()
