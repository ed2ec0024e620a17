"""Round time of the README's ε = 3 recipe (``configs/fashion_mnist_dp.toml``: distributed DP-SGD under masking on the
``tanh-cnn``, 20 clients), sequential and with the default worker pool, and where a round goes.

Each run is ``secure-ffm train configs/fashion_mnist_dp.toml --set server.rounds=R`` in a fresh process, with
``run.workers = 1`` (one client after another) and with the config's own setting (``run.workers = 0``, automatic: the
run's process and a forked worker on 2 cores), alternating, ``--repetitions`` times. Reported per setting: the median
over repetitions of the median over rounds 3..R of the metrics rows' ``fit_seconds`` (the round without evaluation),
and of its parts: ``setup_seconds`` (masking's key and share stages), ``aggregate_seconds`` (receiving the masked
updates, the unmasking stage and the server step), ``client_train_seconds`` (the clients' own training, summed over
clients: their clipped per-example gradients, rounding and noise shares) and ``encode_seconds`` (masking each update);
the whole process's wall time; the final test accuracy (chance-level after a few rounds: the recipe's 585 rounds
reach about 84.7%).

    python benchmarks/dp_recipe_round.py [--rounds 30] [--repetitions 3] [--result dp_recipe_round]
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
from _common import median, print_table, write_result

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "fashion_mnist_dp.toml"
PARTS = ("fit_seconds", "setup_seconds", "aggregate_seconds", "client_train_seconds", "encode_seconds")
SETTINGS = {"sequential": ["--set", "run.workers=1"], "defaults": []}


def run_once(rounds: int, overrides: list[str], out: Path) -> dict[str, float]:
    command = [sys.executable, "-m", "secure_ffm.run.cli", "train", str(CONFIG), "--out", str(out), "--quiet"]
    command += ["--set", f"server.rounds={rounds}", "--set", f"server.eval_every={rounds}", *overrides]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steady = rows[2:] or rows
    result = {part: median([r[part] for r in steady]) for part in PARTS}
    return {**result, "wall_s": wall, "test_accuracy": rows[-1]["test_accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--result", default="dp_recipe_round", help="name of the JSON in benchmarks/results")
    args = parser.parse_args()
    if args.rounds < 3 or args.repetitions < 1:
        parser.error("--rounds must be at least 3 and --repetitions at least 1")
    work = Path(tempfile.mkdtemp(prefix="bench-dp-recipe-"))
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in SETTINGS}
    loads = []
    for repetition in range(args.repetitions):
        for name, overrides in SETTINGS.items():
            runs[name].append(run_once(args.rounds, overrides, work / f"{name}-{repetition}"))
            loads.append(os.getloadavg()[0])
            print(f"repetition {repetition} {name}: {runs[name][-1]}", flush=True)
    rows = [
        {"setting": name, **{key: median([r[key] for r in results]) for key in (*PARTS, "wall_s", "test_accuracy")}}
        for name, results in runs.items()
    ]
    ratio = rows[1]["fit_seconds"] / rows[0]["fit_seconds"]
    print_table(f"configs/fashion_mnist_dp.toml, {args.rounds} rounds: defaults over sequential = {ratio:.2f}x (median seconds)", rows)
    payload = {"rows": rows, "defaults_over_sequential": ratio, "runs": runs, "load_avg_median": median(loads), "settings": vars(args)}
    write_result(args.result, payload)


if __name__ == "__main__":
    main()
