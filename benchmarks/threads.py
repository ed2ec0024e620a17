"""Torch threads per client: one training step with one thread against every core, for each built-in model size.

The thread policy (``run.threads = 0``: :func:`secure_ffm.run.simulation.auto_threads`) gives small models one thread
and large ones every core. This measures where the crossover lies on this machine: the median seconds of one local
training step (forward, backward, optimizer step; batch 32) of the CNN (Fashion-MNIST), the small ViT and MiniLM (full
fine-tuning and LoRA; 64 tokens), with 1 thread and with every core, interleaved block by block, ``--repetitions``
blocks of ``--steps`` steps. The load average is recorded: on a shared machine the ratio moves with the load.

    python benchmarks/threads.py [--models cnn vit minilm-lora minilm-full] [--repetitions 7] [--steps 5]
"""

from __future__ import annotations

import argparse
import os
import time

import _common  # noqa: F401
import numpy as np
import torch
from _common import median, print_table, write_result

from secure_ffm.config import config_from_dict
from secure_ffm.engine.training import make_optimizer
from secure_ffm.run.simulation import load_data_and_model

MODELS = {
    "cnn": {"data": {"dataset": "fashion_mnist", "max_train_examples": 256}, "model": {"arch": "cnn", "finetune": "full"}},
    "vit": {"data": {"dataset": "fashion_mnist", "max_train_examples": 256}, "model": {"arch": "vit", "finetune": "full"}},
    "minilm-lora": {
        "data": {"dataset": "movie_reviews", "max_train_examples": 256, "max_length": 64},
        "model": {"arch": "hf-text", "name_or_path": "all-MiniLM-L6-v2", "finetune": "lora"},
    },
    "minilm-full": {
        "data": {"dataset": "movie_reviews", "max_train_examples": 256, "max_length": 64},
        "model": {"arch": "hf-text", "name_or_path": "all-MiniLM-L6-v2", "finetune": "full"},
    },
}


def step_seconds(model, encoded, optimizer, steps: int, rng: np.random.Generator) -> float:
    model.module.train()
    start = time.perf_counter()
    for _ in range(steps):
        indices = rng.choice(len(encoded), size=32, replace=False)
        batch = model.make_batch(encoded, indices)
        optimizer.zero_grad()
        model.loss(batch).backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--repetitions", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    rows = []
    for name in args.models:
        raw = {
            "run": {"seed": 0, "threads": 1},
            "data": {**MODELS[name]["data"], "num_clients": 1, "partition": "iid"},
            **{"model": MODELS[name]["model"]},
        }
        config = config_from_dict(raw)
        data, model = load_data_and_model(config)
        encoded = model.encode(data.private)
        optimizer = make_optimizer([p for _, p in model.trainable_named_parameters()], config.client)
        rng = np.random.default_rng(0)
        step_seconds(model, encoded, optimizer, 2, rng)  # warm-up
        times: dict[int, list[float]] = {1: [], cores: []}
        loads = []
        for _ in range(args.repetitions):
            for threads in (1, cores):
                torch.set_num_threads(threads)
                times[threads].append(step_seconds(model, encoded, optimizer, args.steps, rng))
            loads.append(os.getloadavg()[0])
        one, many = median(times[1]), median(times[cores])
        rows.append(
            {
                "model": name,
                "parameters": model.total_parameter_count(),
                "step_s_1_thread": one,
                f"step_s_{cores}_threads": many,
                "ratio_many_over_one": many / one,
                "load_avg_median": median(loads),
            }
        )
        print_table(name, rows[-1:])
    print_table(f"one training step (batch 32): 1 thread vs {cores}", rows)
    write_result("threads", {"rows": rows, "repetitions": args.repetitions, "steps": args.steps, "cores": cores})


if __name__ == "__main__":
    main()
