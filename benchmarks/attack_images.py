"""Gradient inversion of Fashion-MNIST images: PSNR, SSIM and time of DLG and Inverting Gradients.

On 16 fixed Fashion-MNIST test images (the first 16 of the test split), split into batches
of 1 and 4, for the ``cnn`` and the ``vit`` (``finetune = "full"``, at initialization). The model
is built exactly as ``secure-ffm attack`` builds it (:func:`attacks.audit.prepare_case`):
:func:`secure_ffm.models.build_model` with the dataset's number of classes and kind and the
initialization seed ``derive_seed(run.seed, INIT)`` (``--seed`` is the run seed), and it
standardises pixels with the normalization the dataset declares; so the figures are those of
the model a user's audit attacks. (Earlier results of this script seeded the initialization
with the run seed itself, a model the CLI never builds, which scored 2-3 dB higher.)

* observation ``gradient``: one gradient of the mean loss (FedSGD);
* observation ``update``: a FedAvg update of 5 local SGD steps (learning rate 0.1), attacked by
  DLG and by Inverting Gradients with the steps replayed (``simulate_local_steps``; for
  Inverting Gradients that is the registered ``inverting-gradients-fedavg``).

The labels are not given: DLG optimizes soft labels jointly (as the paper does), Inverting
Gradients infers them from the last layer. Reconstructions are paired with the originals of
their batch before scoring (:func:`attacks.metrics_image.score_images`).

Published anchor: breaching (Geiping et al.) reports DLG on a CIFAR-10 ConvNet at PSNR 23.4 dB
for batch size 1 (a different dataset and model: an order of magnitude, not a target).

    python benchmarks/attack_images.py                       # the full grid (long on a CPU)
    python benchmarks/attack_images.py --quick               # 4 images, 40 iterations, cnn only
    python benchmarks/attack_images.py --images 4 --iterations 200 --out attack_images_reduced
"""

from __future__ import annotations

import argparse
import time

import _common  # noqa: F401
import numpy as np
import torch
from _common import median, print_table, write_result

from attacks import Budget, ThreatModel, TrainingSetup, build_attack
from attacks.case import observe
from attacks.metrics_image import score_images
from secure_ffm.config import DataConfig, ModelConfig
from secure_ffm.data.base import DatasetSplits, LabeledData
from secure_ffm.data.builtin import fashion_mnist
from secure_ffm.models import FederatedModel, build_model
from secure_ffm.seeding import INIT, derive_seed

ANCHOR = "breaching (Geiping et al.): DLG on a CIFAR-10 ConvNet, batch size 1, PSNR 23.4 dB"
ATTACK_FOR = {
    ("dlg", "gradient"): ("dlg", {}),
    ("dlg", "update"): ("dlg", {"simulate_local_steps": True}),
    ("inverting-gradients", "gradient"): ("inverting-gradients", {}),
    ("inverting-gradients", "update"): ("inverting-gradients-fedavg", {}),
}


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def build_as_cli(arch: str, splits: DatasetSplits, seed: int) -> FederatedModel:
    """The model ``secure-ffm attack`` attacks for run seed ``seed`` (as :func:`attacks.audit.prepare_case` builds it)."""
    return build_model(
        ModelConfig(arch=arch, finetune="full"),
        num_classes=splits.num_classes,
        data_kind=splits.kind,
        seed=derive_seed(seed, INIT),
        max_length=DataConfig().max_length,
    )


def run_case(
    arch: str, attack: str, observes: str, batch_size: int, splits: DatasetSplits, data: LabeledData, args: argparse.Namespace
) -> dict:
    model = build_as_cli(arch, splits, args.seed)
    encoded = model.encode(data)
    name, settings = ATTACK_FOR[(attack, observes)]
    psnrs, ssims, label_hits, seconds = [], [], [], 0.0
    for start in range(0, len(data.labels) - batch_size + 1, batch_size):
        batch = model.make_batch(encoded, np.arange(start, start + batch_size))
        steps = args.local_steps if observes == "update" else 1
        setup = TrainingSetup(num_examples=batch_size, local_steps=steps, local_batch_size=args.local_batch_size, learning_rate=0.1)
        observation, truth = observe(model, batch, threat_model=ThreatModel(observes=observes), setup=setup)
        generator = torch.Generator().manual_seed(args.seed * 1000 + start)
        began = time.perf_counter()
        budget = Budget(max_iterations=args.iterations)
        reconstruction = build_attack(name, settings).reconstruct(observation, budget=budget, generator=generator)
        seconds += time.perf_counter() - began
        scores = score_images(reconstruction, truth)
        psnrs += [s["psnr"] for s in scores["per_sample"]]
        ssims += [s["ssim"] for s in scores["per_sample"]]
        label_hits.append(scores["mean"]["label_count_accuracy"])
    return {
        "arch": arch,
        "observes": observes,
        "attack": name,
        "batch": batch_size,
        "images": len(psnrs),
        "iterations": args.iterations,
        "psnr_mean": float(np.mean(psnrs)),
        "psnr_median": median(psnrs),
        "ssim_mean": float(np.mean(ssims)),
        "ssim_median": median(ssims),
        "label_acc": float(np.mean(label_hits)),
        "s_per_image": seconds / len(psnrs),
        "per_image_psnr": psnrs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16, help="how many of the first test images (a multiple of the largest batch size)")
    parser.add_argument("--iterations", type=int, default=500, help="optimizer steps per attack (per batch)")
    parser.add_argument("--archs", default="cnn,vit")
    parser.add_argument("--attacks", default="dlg,inverting-gradients")
    parser.add_argument("--batch-sizes", default="1,4")
    parser.add_argument("--observes", default="gradient,update")
    parser.add_argument("--local-steps", type=int, default=5)
    parser.add_argument("--local-batch-size", type=int, default=0, help="examples per local step; 0: the whole batch")
    parser.add_argument("--seed", type=int, default=0, help="run seed: the model's init seed is derive_seed(seed, INIT), as the CLI's")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (tiny ops: 1 is fastest on a shared CPU)")
    parser.add_argument("--quick", action="store_true", help="4 images, 40 iterations, cnn only; writes attack_images_quick.json")
    parser.add_argument("--out", default="", help="result name under benchmarks/results (default attack_images, or attack_images_quick)")
    args = parser.parse_args()
    if args.quick:
        args.images, args.iterations, args.archs = 4, 40, "cnn"
    torch.set_num_threads(args.threads)
    splits = fashion_mnist(DataConfig(dataset="fashion_mnist"))
    data = splits.test.subset(np.arange(args.images))
    rows = []
    for arch in _csv(args.archs):
        for observes in _csv(args.observes):
            for attack in _csv(args.attacks):
                for batch_size in (int(b) for b in _csv(args.batch_sizes)):
                    if batch_size > args.images:
                        continue
                    rows.append(run_case(arch, attack, observes, batch_size, splits, data, args))
                    r = rows[-1]
                    print(
                        f"{arch} {observes} {r['attack']} batch {batch_size}: PSNR {r['psnr_mean']:.1f} dB, {r['s_per_image']:.1f} s/image",
                        flush=True,
                    )
    table = [{k: v for k, v in r.items() if k != "per_image_psnr"} for r in rows]
    print_table(f"Gradient inversion of Fashion-MNIST test images ({args.iterations} iterations, labels not given)", table)
    print(f"anchor: {ANCHOR}")
    write_result(
        args.out or ("attack_images_quick" if args.quick else "attack_images"),
        {
            "rows": rows,
            "anchor": ANCHOR,
            "settings": {k: v for k, v in vars(args).items()},
            "note": (
                f"models at initialization, built as the CLI builds them (run seed {args.seed}, init seed "
                f"derive_seed({args.seed}, INIT) = {derive_seed(args.seed, INIT)}); update = FedAvg local steps at "
                "learning rate 0.1; PSNR capped at 100 dB"
            ),
        },
    )


if __name__ == "__main__":
    main()
