"""How much a moving average of the global model steadies a noisy DP run (``server.ema_decay``), measured on the
side of one run: a target arm of ``privacy_utility.py`` runs round by round (``Simulation.run_unit``, as ``run``
does), and every 5 rounds the test accuracy of the model itself and of its moving averages with β = 0.8 and 0.9 is
taken (the recursion ``server.ema_decay`` computes, in float64, started at the first round's model). Evaluation
draws no randomness, so the run trains as the arm does.

    python benchmarks/iterate_average.py movie-all-lpft5-perlayer-distributed-dp-sgd 1 [--save-iterates DIR]

Writes ``results/iterate_average_<arm>_<seed>.json`` and appends the run (the final accuracy of the model the run
keeps: with ``server.ema_decay`` its moving average, else the model itself) to
``results/privacy_targets.partial.jsonl`` like ``privacy_utility.py --targets``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import _common  # noqa: F401
import numpy as np
import privacy_utility as pu
from _common import write_result

from secure_ffm.config import load_config
from secure_ffm.engine.training import evaluate
from secure_ffm.run.simulation import Simulation, prepare_run

DECAYS = (0.8, 0.9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("arm", choices=list(pu.TARGET_ARMS))
    parser.add_argument("seed", type=int)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument(
        "--save-iterates", type=Path, help="also write each round's global model (the trained parameters) to DIR/round_NNN.safetensors"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import torch

    torch.set_num_threads(1)
    spec = pu.TARGET_ARMS[args.arm]
    overrides = [*spec["overrides"], f"run.seed={args.seed}", "run.threads=1", "server.eval_every=100000"]
    config = load_config(pu.CONFIGS / spec["config"], overrides=overrides)
    prepared = prepare_run(config)
    simulation = Simulation(prepared)
    averages: dict[float, dict[str, np.ndarray] | None] = dict.fromkeys(DECAYS)
    curve = []

    def accuracy(parameters: dict[str, np.ndarray]) -> float:
        prepared.model.set_trainable({k: v.astype(np.float32) for k, v in parameters.items()})
        return float(evaluate(prepared.model, prepared.encoded_test).accuracy)

    if args.save_iterates:
        from safetensors.numpy import save_file

        args.save_iterates.mkdir(parents=True, exist_ok=True)
    start = time.time()
    for round in range(1, config.server.rounds + 1):
        simulation.history.append(simulation.run_unit(round))
        x = {k: v.astype(np.float64) for k, v in simulation.server.parameters.items()}
        if args.save_iterates:
            save_file(dict(simulation.server.parameters), str(args.save_iterates / f"round_{round:03d}.safetensors"))
        for b, average in averages.items():
            averages[b] = x if average is None else {k: b * average[k] + (1 - b) * x[k] for k in x}
        if round % args.every == 0 or round == config.server.rounds:
            row = {"round": round, "model": accuracy(simulation.server.parameters)}
            if config.server.ema_decay:  # what the run evaluates and keeps: its own moving average
                row["kept"] = accuracy(simulation.server.model_parameters)
            row.update({f"ema_{b}": accuracy(averages[b]) for b in DECAYS})
            curve.append(row)
            print(json.dumps(row), flush=True)
    seconds = time.time() - start
    ledger = simulation.privacy.ledger(simulation.client_states)
    spent = ledger.get("epsilon")
    run = {
        "row": spec["row"],
        "arm": args.arm,
        "seed": args.seed,
        "overrides": spec["overrides"],
        "epsilon_spent": spent["max"] if isinstance(spent, dict) else spent,
        "noise_multiplier": ledger.get("noise_multiplier"),
        "test_accuracy": curve[-1].get("kept", curve[-1]["model"]),
        "seconds": seconds,
        "note": "benchmarks/iterate_average.py (seconds include its extra evaluations)",
        "curve": curve,
    }
    with pu.PARTIAL.open("a", encoding="utf-8") as out:
        out.write(json.dumps(run) + "\n")
    write_result(f"iterate_average_{args.arm}_{args.seed}", run)


if __name__ == "__main__":
    main()
