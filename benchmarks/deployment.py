"""Flower deployment (real SuperLink and SuperNodes on loopback) against the in-process runner, same config and seed.

For each case the same config runs twice, one after the other: ``secure-ffm train`` in this process (the in-process
transport) and ``secure-ffm deploy`` (one SuperNode per client, TLS and SuperNode authentication, all real processes).
Reported:

- **round seconds**: the median over rounds of each metrics row's ``seconds`` (the server's view: from sampling to the
  aggregate applied, evaluation excluded: ``eval_every`` is past the last round), and their ratio;
- **start-up seconds** of the deployment: from launching the SuperLink to the first round's start (processes, the
  hello, the run's set-up), i.e. the whole wall time minus the rounds and the final evaluation;
- **wire bytes per client per round**: the SuperLink's own count of the run's network traffic (``flwr ls``: inbound plus
  outbound, Flower's framing and the codec's included) divided by clients x rounds, beside the payload bytes the
  metrics count (``bytes_up + bytes_down``);
- whether the final weights are equal (bitwise, or the largest absolute difference).

Cases (``--cases``): ``cnn-4``, ``cnn-16`` (Fashion-MNIST CNN, 4 or 16 clients of 200 images each), ``minilm-4`` and
``minilm-16`` (MiniLM LoRA on 800 movie-review snippets, 4 or 16 clients), each with ``--protocols`` (default ``none
masking``). ``--result NAME`` writes ``benchmarks/results/NAME.json`` (default ``deployment``), e.g. for a subset of
cases. Masking runs with ``privacy.reproducible_noise = true`` so both transports draw the same rounding noise.

    python benchmarks/deployment.py [--cases cnn-4 cnn-16 minilm-4 minilm-16] [--protocols none masking] [--rounds 3]

About 20-30 minutes on 2 CPU cores for everything. Results: benchmarks/results/deployment.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import _common  # noqa: F401
import numpy as np
from _common import median, print_table, write_result
from safetensors.numpy import load_file

from secure_ffm.config import config_from_dict
from secure_ffm.flower.deploy import deploy
from secure_ffm.run.simulation import Simulation, prepare_run

CNN = {
    "run": {"seed": 0, "threads": 1},
    "data": {"dataset": "fashion_mnist", "partition": "iid", "max_test_examples": 1000},
    "model": {"arch": "cnn", "finetune": "full"},
    "client": {"batch_size": 32, "local_epochs": 1, "lr": 0.05, "momentum": 0.9},
    "server": {"strategy": "fedavg"},
}
MINILM = {
    "run": {"seed": 0, "threads": 1},
    "data": {"dataset": "movie_reviews", "partition": "iid", "max_train_examples": 800, "max_test_examples": 200, "max_length": 64},
    "model": {"arch": "hf-text", "name_or_path": "all-MiniLM-L6-v2", "finetune": "lora", "lora_rank": 8, "lora_alpha": 16.0},
    "client": {"batch_size": 32, "local_epochs": 1, "optimizer": "adamw", "lr": 0.003},
    "server": {"strategy": "fedavg"},
}
CASES = {
    "cnn-4": (CNN, 4, 200),
    "cnn-16": (CNN, 16, 200),
    "minilm-4": (MINILM, 4, None),
    "minilm-16": (MINILM, 16, 50),  # the same 800 snippets over 16 nodes
}


def case_config(name: str, protocol: str, rounds: int):  # noqa: ANN201 - Config
    base, clients, per_client = CASES[name]
    raw = json.loads(json.dumps(base))
    raw["data"]["num_clients"] = clients
    if per_client is not None:
        raw["data"]["max_train_examples"] = clients * per_client
    raw["server"].update(rounds=rounds, eval_every=rounds + 1)
    raw["run"]["name"] = f"{name}-{protocol}"
    if protocol != "none":
        raw["secure_aggregation"] = {"protocol": protocol}
        raw["privacy"] = {"reproducible_noise": True}
    return config_from_dict(raw)


def rows_of(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def measure(name: str, protocol: str, rounds: int, work: Path) -> dict[str, Any]:
    config = case_config(name, protocol, rounds)
    local = work / f"{name}-{protocol}-local"
    start = time.perf_counter()
    Simulation(prepare_run(config), out_dir=local).run()
    local_wall = time.perf_counter() - start
    deployed = work / f"{name}-{protocol}-deployed"
    start = time.perf_counter()
    deploy(config, out_dir=deployed, secure=True, timeout=600.0, progress=False)
    deploy_wall = time.perf_counter() - start
    local_rows, deployed_rows = rows_of(local), rows_of(deployed)
    local_round = median([r["seconds"] - r["eval_seconds"] for r in local_rows])
    deployed_round = median([r["seconds"] - r["eval_seconds"] for r in deployed_rows])
    in_rounds = sum(r["seconds"] for r in deployed_rows)
    info = json.loads((deployed / "flower-logs" / "run.json").read_text())
    wire = info.get("network-traffic", {}).get("total-bytes")
    clients = config.data.num_clients
    payload = median([(r["bytes_up"] + r["bytes_down"]) / max(1, len(r["clients"])) for r in deployed_rows])
    a, b = load_file(str(local / "model.safetensors")), load_file(str(deployed / "model.safetensors"))
    difference = max(float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)))) for k in a)
    return {
        "case": name,
        "protocol": protocol,
        "clients": clients,
        "rounds": rounds,
        "in_process_round_s": local_round,
        "deployed_round_s": deployed_round,
        "ratio": deployed_round / local_round,
        "deployed_startup_s": deploy_wall - in_rounds,
        "in_process_wall_s": local_wall,
        "deployed_wall_s": deploy_wall,
        "wire_bytes_per_client_round": (wire / (clients * rounds)) if wire else None,
        "payload_bytes_per_client_round": payload,
        "max_abs_weight_difference": difference,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--protocols", nargs="+", default=["none", "masking"], choices=["none", "masking"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="keep the run directories here")
    parser.add_argument("--result", default="deployment", help="results file name under benchmarks/results (no .json)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-deployment-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for name in args.cases:
            for protocol in args.protocols:
                row = measure(name, protocol, args.rounds, work)
                rows.append(row)
                print_table(f"{name} {protocol}", [row])
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print_table("Flower deployment (loopback, TLS + node auth) vs in-process", rows)
    write_result(args.result, {"rows": rows, "rounds": args.rounds})


if __name__ == "__main__":
    main()
