"""DP-SGD step time divided by non-private step time, same model, same batch.

Cases: the Fashion-MNIST CNN at batch 64 and 256 (not in the defaults), the tanh CNN at batch 64 and MiniLM LoRA at batch 32 with sequence
length 64, each with Opacus hooks (per-sample gradients), ghost clipping and, where every
trained layer has a rule, book-keeping (secure_ffm.privacy.bookkeeping: one backward pass).
Target: at most 1.3 for the CNN (published Opacus figures: 2.6x to 8x a non-private step,
about half that with ghost clipping). Each DP case runs with both noise samplers
(secure_mode true: AES-CTR CSPRNG and the sum of four Gaussians; false: Philox), whose per-step noise is
float32 Box-Muller (secure_ffm.privacy.noise.box_muller_float32; the float64 ziggurat before 2026-12-06).
glibc's malloc thresholds are fixed as in a run (secure_ffm.allocator; ``SECURE_FFM_MALLOC=default`` keeps glibc's
dynamic ones). Each case runs on the torch threads a run of that model uses (``run.threads = 0``: one for the CNNs, every core for
MiniLM; ``--threads N`` overrides). Blocks of steps of the non-private step and of every (mode, sampler) alternate, in reversed
order every other repetition, so that the machine's load hits all alike; the ratio is the
median DP step over the median non-private step, and ``ratio_blocks`` gives the range of the
per-repetition ratios (how much the load moved it).

    python benchmarks/dp_overhead.py [--steps 5] [--repetitions 4] [--cases cnn-b64 ...] [--result dp_overhead]
"""

from __future__ import annotations

import argparse
import functools
import time

import _common  # noqa: F401
import numpy as np
import torch
import torch.nn.functional as F
from _common import median, print_table, write_result

from secure_ffm.allocator import keep_freed_memory
from secure_ffm.config import ModelConfig, config_from_dict
from secure_ffm.data import load_dataset_splits
from secure_ffm.models import build_model
from secure_ffm.models.base import Batch
from secure_ffm.privacy.bookkeeping import bookkeeping_supported
from secure_ffm.privacy.dp_sgd import DPStep, auto_grad_sample_mode, ghost_supported
from secure_ffm.privacy.noise import PrivateRandomness, new_secret
from secure_ffm.run.simulation import auto_threads


def image_case(arch: str, batch_size: int = 64):
    config = config_from_dict({"data": {"dataset": "fashion_mnist", "max_train_examples": max(640, batch_size)}})
    splits = load_dataset_splits(config.data, 0)
    model = build_model(ModelConfig(arch=arch, finetune="full"), num_classes=10, data_kind="image", seed=0)
    batch = model.make_batch(model.encode(splits.train), np.arange(batch_size))
    return model, batch


def minilm_case():
    config = config_from_dict({"data": {"dataset": "movie_reviews", "max_train_examples": 512}})
    splits = load_dataset_splits(config.data, 0)
    model = build_model(ModelConfig(arch="hf-text", finetune="lora"), num_classes=2, data_kind="text", seed=0, max_length=64)
    texts = splits.train.inputs
    # join four snippets per example so that every sequence fills the 64-token limit
    long = splits.train.__class__("text", tuple(" ".join(texts[4 * i : 4 * i + 4]) for i in range(32)), splits.train.labels[:32])
    batch = model.make_batch(model.encode(long), np.arange(32))
    assert batch.inputs["input_ids"].shape == (32, 64), batch.inputs["input_ids"].shape
    return model, batch


def time_steps(step, steps: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def measure(model, batch: Batch, modes: list[str], steps: int, repetitions: int) -> dict[str, list[list[float]]]:
    """Step times per block, keyed ``non-private`` and ``mode/sampler``: blocks of every key alternate (interleaved)."""
    params = [p for _, p in model.trainable_named_parameters()]
    optimizer = torch.optim.SGD(params, lr=1e-4)
    model.module.train()

    def non_private():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model.module(**batch.inputs), batch.labels).backward()
        optimizer.step()

    streams = {sampler: PrivateRandomness(new_secret(), secure=secure).stream(1) for sampler, secure in SAMPLERS.items()}
    keys = ["non-private"] + [f"{mode}/{sampler}" for mode in modes for sampler in SAMPLERS]
    blocks: dict[str, list[list[float]]] = {key: [] for key in keys}
    for repetition in range(repetitions):
        for key in keys if repetition % 2 == 0 else reversed(keys):
            warmup = 1 if repetition else 3
            if key == "non-private":
                blocks[key].append(time_steps(non_private, steps, warmup=warmup))
                continue
            mode, sampler = key.split("/")
            # one stepper per block (two at once would stack their hooks); its stream continues across blocks
            stepper = DPStep(
                model, optimizer, mode=mode, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=len(batch), noise=streams[sampler]
            )
            try:
                blocks[key].append(time_steps(functools.partial(stepper.step, batch), steps, warmup=warmup))
            finally:
                stepper.close()
    return blocks


#: secure_mode = true (the default): AES-CTR and the sum of four Gaussians; false: Philox, one Gaussian.
SAMPLERS = {"secure": True, "philox": False}


def sampler_ns_per_value(values: int = 1_000_000, repetitions: int = 5) -> dict[str, float]:
    """Nanoseconds to draw one noise value, per sampler and path (interleaved, median of repetitions): ``float32`` is
    the Box-Muller path DP-SGD's steps use (``normal_float32``), ``float64`` the ziggurat one of DP-FedAvg's noise."""
    out: dict[str, list[float]] = {f"{sampler}/{path}": [] for sampler in SAMPLERS for path in ("float32", "float64")}
    for _ in range(repetitions):
        for sampler, secure in SAMPLERS.items():
            stream = PrivateRandomness(new_secret(), secure=secure).stream(1)
            for path in ("float32", "float64"):
                start = time.perf_counter()
                stream.normal_float32(values, 1.0) if path == "float32" else stream.normal((values,), 1.0)
                out[f"{sampler}/{path}"].append(1e9 * (time.perf_counter() - start) / values)
    return {key: median(times) for key, times in out.items()}


CASES = {
    "cnn-b64": lambda: image_case("cnn"),
    "cnn-b256": lambda: image_case("cnn", 256),
    "tanh-cnn-b64": lambda: image_case("tanh-cnn"),
    "minilm-lora-b32-len64": minilm_case,
}
"""``cnn-b256``: the batch sizes DP-SGD is run with (hundreds: Li et al., ICLR 2022; this project's DP recipes use expected
batches of 1,020 and 1,024), where one noise draw per step weighs a quarter of what it does at 64."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=5, help="steps per block")
    parser.add_argument("--repetitions", type=int, default=4, help="blocks per key, interleaved")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=[case for case in CASES if case != "cnn-b256"])
    parser.add_argument("--result", default="dp_overhead", help="name of the JSON in benchmarks/results")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads; 0 (default): the thread policy's choice for the model, as a run makes it"
    )
    args = parser.parse_args()
    malloc_fixed = keep_freed_memory()  # as every run does (SECURE_FFM_MALLOC=default: glibc's dynamic thresholds)
    rows, raw = [], {}
    for name in args.cases:
        model, batch = CASES[name]()
        threads = args.threads or auto_threads(model.total_parameter_count())
        torch.set_num_threads(threads)
        modes = ["hooks", "ghost"] + (["bookkeeping"] if bookkeeping_supported(model.module) else [])
        blocks = measure(model, batch, modes, args.steps, args.repetitions)
        flat = {key: [t for block in value for t in block] for key, value in blocks.items()}
        base = median(flat["non-private"])
        for mode in modes:
            for sampler in SAMPLERS:
                key = f"{mode}/{sampler}"
                per_block = [median(b) / median(n) for b, n in zip(blocks[key], blocks["non-private"], strict=True)]
                rows.append(
                    {
                        "case": name,
                        "mode": mode,
                        "noise_sampler": sampler,
                        "trainable_parameters": model.trainable_parameter_count(),
                        "torch_threads": threads,
                        "ghost_norm_samplers_cover_model": ghost_supported(model.module),
                        "auto_picks": auto_grad_sample_mode(model),
                        "non_private_ms": 1000 * base,
                        "dp_ms": 1000 * median(flat[key]),
                        "ratio": median(flat[key]) / base,
                        "ratio_blocks": f"{min(per_block):.2f}-{max(per_block):.2f}",
                        "secure_over_philox": median(flat[f"{mode}/secure"]) / median(flat[f"{mode}/philox"]),
                        "target": 1.3,
                        "malloc_thresholds_fixed": malloc_fixed,
                    }
                )
        raw.update({f"{name}/{key}": value for key, value in flat.items()})
    print_table("DP-SGD step time / non-private step time (median of steps)", rows)
    samplers = sampler_ns_per_value()
    print_table("Noise sampler cost (ns per noise value, median of 5)", [{"sampler": k, "ns_per_value": v} for k, v in samplers.items()])
    write_result(
        args.result,
        {
            "rows": rows,
            "steps_per_block": args.steps,
            "repetitions": args.repetitions,
            "sampler_ns_per_value": samplers,
            "raw_seconds": raw,
        },
    )


if __name__ == "__main__":
    main()
