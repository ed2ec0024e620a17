"""Privacy-utility table: test accuracy at ε ∈ {1, 3, 8, ∞}, DP-SGD and DP-FedAvg.

* Fashion-MNIST CNN, 20 clients, Dirichlet(0.5) (``configs/fashion_mnist_cnn.toml``)
* MiniLM LoRA on movie_reviews, 8 clients (``configs/quickstart.toml``)

DP-SGD is sample-level ε per client (PRV accountant); DP-FedAvg is user-level ε
(each client's whole data), with so few clients its noise swamps the signal:
that is the honest cost of user-level DP at this scale.

    python benchmarks/privacy_utility.py [--only fmnist|movie] [--fmnist-rounds 10]

``--targets`` measures the rows of the "useful models under a privacy budget" targets, each arm with
``--seeds`` (default 0 1 2), side by side in one script; every finished run is appended to
``results/privacy_targets.partial.jsonl`` (two processes may share it: ``--arms`` picks arms), and
``--collect`` turns that file and the runs already in ``results/privacy_targets.json`` (a fresh run of an arm and
seed replaces the old one) into the mean ± std table and that JSON:

    python benchmarks/privacy_utility.py --targets --arms fmnist20-dp-sgd fmnist20-none
    python benchmarks/privacy_utility.py --collect
"""

from __future__ import annotations

import argparse
import math
import time
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
    start = time.perf_counter()
    simulation = Simulation(prepare_run(load_config(CONFIGS / case["config"], overrides=overrides)))
    summary = simulation.run()
    seconds = time.perf_counter() - start  # summary.json's seconds_total is null when DP-FedAvg's sample is secret
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
        "seconds": seconds,
    }


FMNIST20 = ["data.max_train_examples=20000", "data.max_test_examples=2000", "server.eval_every=25"]
FMNIST60_TANH = ['model.arch="tanh-cnn"', "data.max_test_examples=2000", "server.eval_every=10"]


def public_start(*, steps: int) -> list[str]:
    """One public unit of ``steps`` server-side steps on the product-review snippets, then federated rounds only."""
    return [
        'public_data.dataset="product_reviews"',
        'ffm.schedule="alternating"',
        "ffm.public_units=1",
        "ffm.federated_units=1000",
        f"ffm.public_steps={steps}",
    ]


MOVIE_ALL = ["data.max_train_examples=0", "data.max_test_examples=0", 'data.partition="iid"', "server.eval_every=100"]
TREC_ALL = [*MOVIE_ALL, 'data.dataset="trec"']
# one DP-SGD step per round over the federation (expected batch 1,024), masking, FedAdam on the server (the movie arms'
# recipe from a random head; the step's scale before FedAdam is client.lr, which a tiny tau makes irrelevant)
MOVIE_DISTRIBUTED = [
    "privacy.mode=distributed-dp-sgd",
    "privacy.target_epsilon=8",
    "privacy.max_grad_norm=1.0",
    'secure_aggregation.protocol="masking"',
    "client.batch_size=128",
    "client.lr=1.0",
    'server.strategy="fedadam"',
    "server.server_lr=0.005",
    "server.tau=0.000001",
]
# the no-public-data recipe from a random head: 5 head-only rounds, then 20, per-layer clipping (docs/dp_utility.md)
LPFT5_PERLAYER = [
    "server.rounds=25",
    "model.linear_probe_rounds=5",
    "privacy.clipping=per-layer",
    "server.eval_every=5",
    *MOVIE_DISTRIBUTED,
]
# the moving average kept, and noise shares sized for 7 survivors of the 8 clients
EMA_T7 = ["server.ema_decay=0.9", "secure_aggregation.threshold=7"]
FMNIST10K = [
    "data.num_clients=10000",
    'data.partition="iid"',
    "data.min_partition_size=6",
    "data.max_test_examples=2000",
    "server.clients_per_round=1000",
    "server.eval_every=10",
    "client.batch_size=6",
    "client.local_epochs=5",
    "client.lr=0.05",
    "client.momentum=0.0",
]
DP_FEDAVG_10K = ["server.rounds=60", "privacy.mode=dp-fedavg", "privacy.target_epsilon=8", "privacy.adaptive_clipping=true"]
FEDAVGM = ['server.strategy="fedavgm"', "server.server_momentum=0.9"]
TARGET_ARMS: dict[str, dict] = {
    # Fashion-MNIST CNN, 20 clients (Dirichlet 0.5), 20,000 images, ε = 3 per example
    "fmnist20-none": {"row": "fmnist20-eps3", "config": "fashion_mnist_cnn.toml", "overrides": [*FMNIST20, "server.rounds=10"]},
    "fmnist20-dp-sgd": {  # local DP-SGD, every client adds the full noise (the recipe of the table above)
        "row": "fmnist20-eps3",
        "config": "fashion_mnist_cnn.toml",
        "overrides": [*FMNIST20, "server.rounds=10", "privacy.mode=dp-sgd", "privacy.target_epsilon=3", *CASES["fmnist-cnn-20"]["dp-sgd"]],
    },
    "fmnist20-distributed-dp-sgd": {  # one DP-SGD step per round over the federation, noise shared, masking
        "row": "fmnist20-eps3",
        "config": "fashion_mnist_cnn.toml",
        "overrides": [
            *FMNIST20,
            "server.rounds=150",
            "privacy.mode=distributed-dp-sgd",
            "privacy.target_epsilon=3",
            'secure_aggregation.protocol="masking"',
            "secure_aggregation.threshold=18",  # shares sized for 18 of 20: 2 dropouts tolerated, 5% more noise than for 20
            "client.batch_size=50",
            "client.lr=1.0",
            "client.momentum=0.0",
            # Adam on the server over the noisy steps (post-processing): 71.5% against plain SGD's 67.1% (lr 2) at round 50
            'server.strategy="fedadam"',
            "server.server_lr=0.002",
            "server.tau=0.00001",
        ],
    },
    # Fashion-MNIST, 20 clients (Dirichlet 0.5), all 60,000 training images, ε = 3 per example, the tanh CNN
    # (Papernot et al. 2021's model, 26k parameters): the recipe that reaches the target
    "fmnist60-tanh-none": {"row": "fmnist60-eps3", "config": "fashion_mnist_cnn.toml", "overrides": [*FMNIST60_TANH, "server.rounds=10"]},
    "fmnist60-cnn-none": {  # the default CNN (207k parameters, ReLU) without DP, for the gap
        "row": "fmnist60-eps3",
        "config": "fashion_mnist_cnn.toml",
        "overrides": ["data.max_test_examples=2000", "server.eval_every=10", "server.rounds=10"],
    },
    "fmnist60-tanh-dp-sgd": {  # local DP-SGD, every client adds the full noise, on the same model and data
        "row": "fmnist60-eps3",
        "config": "fashion_mnist_cnn.toml",
        "overrides": [
            *FMNIST60_TANH,
            "server.rounds=10",
            "privacy.mode=dp-sgd",
            "privacy.target_epsilon=3",
            *CASES["fmnist-cnn-20"]["dp-sgd"],
        ],
    },
    "fmnist60-tanh-distributed-dp-sgd": {  # one DP-SGD step per round over the federation (expected batch 1,020), masking
        "row": "fmnist60-eps3",
        "config": "fashion_mnist_cnn.toml",
        "overrides": [
            *FMNIST60_TANH,
            "server.rounds=585",  # 10 epochs of the 60,000 images at q = 51 / 3,000
            "server.eval_every=65",
            "privacy.mode=distributed-dp-sgd",
            "privacy.target_epsilon=3",
            "privacy.max_grad_norm=1.0",
            'secure_aggregation.protocol="masking"',
            "secure_aggregation.threshold=18",
            "client.batch_size=51",
            "client.lr=2.0",
            "client.momentum=0.0",
        ],
    },
    # MiniLM LoRA, all 8,454 training snippets of movie_reviews, 8 clients (IID), ε = 8 per example
    "movie-all-none": {"row": "movie-all-eps8", "config": "quickstart.toml", "overrides": [*MOVIE_ALL, "server.rounds=3"]},
    "movie-all-distributed-dp-sgd": {  # one DP-SGD step per round over the federation (expected batch 1,024), masking
        "row": "movie-all-eps8",
        "config": "quickstart.toml",
        "overrides": [
            *MOVIE_ALL,
            "server.rounds=20",  # about 2.4 epochs at q = 128 / 1,057
            # FedAdam: DP-Adam as post-processing of the noisy mean gradient (Li et al. 2022 fine-tune with Adam under DP)
            *MOVIE_DISTRIBUTED,
        ],
    },
    # linear probing, then fine-tuning under the same budget, for a user without public data (Kumar et al. 2022;
    # docs/dp_utility.md): the first K one-step DP rounds train only the head (LoRA held fixed, sent as zeros, no noise
    # on it), the rest LoRA and the head; z is planned for all the rounds. Head-only rounds cost no encoder backward.
    **{
        f"movie-all-lpft{probe}-distributed-dp-sgd": {
            "row": "movie-all-eps8",
            "config": "quickstart.toml",
            "overrides": [
                *MOVIE_ALL,
                f"server.rounds={probe + 20}",
                f"model.linear_probe_rounds={probe}",
                "server.eval_every=5",
                *MOVIE_DISTRIBUTED,
            ],
        }
        for probe in (5, 10)
    },
    # the same with the clipping budget split per trained tensor (C/√K each): LoRA keeps its share once it trains;
    # and then with the moving average of the global model evaluated and kept (server.ema_decay, post-processing)
    **{
        f"movie-all-lpft5-perlayer{suffix}-distributed-dp-sgd": {
            "row": "movie-all-eps8",
            "config": "quickstart.toml",
            "overrides": [*MOVIE_ALL, *LPFT5_PERLAYER, *extra],
        }
        for suffix, extra in (
            ("", []),
            ("-ema", ["server.ema_decay=0.9"]),
            # noise shares sized for 7 survivors of 8 (one dropout tolerated) instead of the default strict majority, 5:
            # with all 8 in, the sum carries sqrt(8/7) = 1.07 times the planned noise instead of sqrt(8/5) = 1.26
            ("-ema-t7", EMA_T7),
            # and a server step 10x larger in the head-only rounds (server.linear_probe_lr): FedAdam moves a coordinate
            # by about its learning rate a round, so 0.005 leaves a random head far from the probe's optimum
            ("-ema-t7-lplr05", [*EMA_T7, "server.linear_probe_lr=0.05"]),
            ("-ema-t7-lplr10", [*EMA_T7, "server.linear_probe_lr=0.1"]),
        )
    },
    # a held-out check of the no-public-data recipe on another task: TREC's six question classes (4,305 training
    # questions over 8 clients, 1,076 test), with and without the larger server step in the head-only rounds
    "trec-all-none": {"row": "trec-all-eps8", "config": "quickstart.toml", "overrides": [*TREC_ALL, "server.rounds=3"]},
    **{
        f"trec-all-lpft5-perlayer-ema-t7{suffix}-distributed-dp-sgd": {
            "row": "trec-all-eps8",
            "config": "quickstart.toml",
            "overrides": [*TREC_ALL, *LPFT5_PERLAYER, *EMA_T7, *extra],
        }
        for suffix, extra in (("", []), ("-lplr05", ["server.linear_probe_lr=0.05"]))
    },
    # the same, starting from a model the server trained on public data (FFM: one public unit on the product-review
    # snippets of the same VADER corpus, 2,310 after the public validation split, then federated rounds on the movies)
    "movie-all-public-none": {
        "row": "movie-all-public-eps8",
        "config": "quickstart.toml",
        "overrides": [*MOVIE_ALL, *public_start(steps=240), "server.rounds=4"],  # 240 x 32 = 7,680 public examples
    },
    "movie-all-public-distributed-dp-sgd": {
        "row": "movie-all-public-eps8",
        "config": "quickstart.toml",
        "overrides": [
            *MOVIE_ALL,
            *public_start(steps=60),  # 60 x 128 = 7,680 public examples, as the arm without DP
            "server.rounds=21",  # the public unit, then 20 one-step DP rounds (z is planned for the 20: ε 8.00)
            "privacy.mode=distributed-dp-sgd",
            "privacy.target_epsilon=8",
            "privacy.max_grad_norm=1.0",
            'secure_aggregation.protocol="masking"',
            "client.batch_size=128",
            "client.lr=0.003",  # the public unit's AdamW; the DP step's scale is FedAdam's (tau tiny: scale-free)
            'server.strategy="fedadam"',
            "server.server_lr=0.005",
            "server.tau=0.000000001",
        ],
    },
    # Fashion-MNIST CNN, 10,000 clients of 6 images, 1,000 a round, user-level ε = 8
    "fmnist10k-none": {"row": "fmnist10k-eps8", "config": "fashion_mnist_cnn.toml", "overrides": [*FMNIST10K, "server.rounds=60"]},
    "fmnist10k-dp-fedavg": {
        "row": "fmnist10k-eps8",
        "config": "fashion_mnist_cnn.toml",
        "overrides": [*FMNIST10K, *DP_FEDAVG_10K],
    },
    # the same with server momentum (DP-FedAvgM, McMahan et al. 2018: β = 0.9, post-processing of the noisy mean)
    "fmnist10k-none-fedavgm": {
        "row": "fmnist10k-eps8",
        "config": "fashion_mnist_cnn.toml",
        "overrides": [*FMNIST10K, "server.rounds=60", *FEDAVGM],
    },
    "fmnist10k-dp-fedavgm": {
        "row": "fmnist10k-eps8",
        "config": "fashion_mnist_cnn.toml",
        "overrides": [*FMNIST10K, *DP_FEDAVG_10K, *FEDAVGM],
    },
}
PARTIAL = Path(__file__).resolve().parent / "results" / "privacy_targets.partial.jsonl"
RESULT = PARTIAL.with_name("privacy_targets.json")


def run_target(arm: str, seed: int) -> dict:
    spec = TARGET_ARMS[arm]
    overrides = [*spec["overrides"], f"run.seed={seed}", "run.threads=1"]
    start = time.perf_counter()
    summary = Simulation(prepare_run(load_config(CONFIGS / spec["config"], overrides=overrides))).run()
    seconds = time.perf_counter() - start  # summary.json's seconds_total is null when DP-FedAvg's sample is secret
    privacy = summary["privacy"]
    spent = privacy.get("epsilon")
    if isinstance(spent, dict):
        spent = spent["max"]
    return {
        "row": spec["row"],
        "arm": arm,
        "seed": seed,
        "overrides": spec["overrides"],
        "epsilon_spent": spent,
        "noise_multiplier": privacy.get("noise_multiplier"),
        "test_accuracy": summary["final"]["test_accuracy"],
        "seconds": seconds,
    }


def collect() -> None:
    import json
    import statistics

    fresh = [json.loads(line) for line in PARTIAL.read_text().splitlines() if line.strip()] if PARTIAL.exists() else []
    previous = json.loads(RESULT.read_text())["runs"] if RESULT.exists() else []
    runs = list({(r["arm"], r["seed"]): r for r in [*previous, *fresh]}.values())  # a fresh run replaces its old one
    rows = []
    for arm in TARGET_ARMS:
        mine = [r for r in runs if r["arm"] == arm]
        if not mine:
            continue
        accuracy = [100 * r["test_accuracy"] for r in mine]
        spent = [r["epsilon_spent"] for r in mine if r["epsilon_spent"] is not None]
        rows.append(
            {
                "row": mine[0]["row"],
                "arm": arm,
                "seeds": len(mine),
                "accuracy_mean": statistics.fmean(accuracy),
                "accuracy_std": statistics.stdev(accuracy) if len(accuracy) > 1 else 0.0,
                "epsilon_spent_max": max(spent) if spent else None,
                "seconds_median": statistics.median(seconds) if (seconds := [r["seconds"] for r in mine if r["seconds"]]) else None,
            }
        )
    print_table("Privacy targets (test accuracy %, mean ± std over seeds)", rows)
    write_result("privacy_targets", {"arms": TARGET_ARMS, "table": rows, "runs": runs})


def targets(arms: list[str], seeds: list[int]) -> None:
    import json

    import torch

    torch.set_num_threads(1)
    PARTIAL.parent.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        for arm in arms:
            result = run_target(arm, seed)
            with PARTIAL.open("a", encoding="utf-8") as out:  # every finished run, in case of a stop
                out.write(json.dumps(result) + "\n")
            accuracy, spent = 100 * result["test_accuracy"], result["epsilon_spent"]
            print(f"{arm} seed {seed}: {accuracy:.1f}% at ε {spent} ({result['seconds']:.0f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["fmnist", "movie"])
    parser.add_argument("--fmnist-rounds", type=int, default=10)
    parser.add_argument("--movie-rounds", type=int, default=3)
    parser.add_argument("--targets", action="store_true", help="run the target rows' arms (see the module docstring)")
    parser.add_argument("--arms", nargs="+", choices=list(TARGET_ARMS), default=list(TARGET_ARMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--collect", action="store_true", help="table and JSON from the runs finished so far")
    args = parser.parse_args()
    if args.collect:
        collect()
        return
    if args.targets:
        targets(args.arms, args.seeds)
        return
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
