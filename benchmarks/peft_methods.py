"""Parameter-efficient fine-tuning methods side by side, federated and non-IID: full / lora / head / prompt / prefix /
p-tuning on all-MiniLM-L6-v2 (bundled), on two bundled text tasks, with and without DP-SGD at epsilon = 8.

Per (task, method, privacy): test accuracy after the last round, trainable (= sent) parameters, bytes up per round
(all clients), seconds per round, and the token F1 of the text attack (TAG, Deng et al. 2021; ``--attacks tag lamp``
adds LAMP) against one client's single-example gradient at the initial model, through the same audit path as
``secure-ffm attack`` (under DP-SGD the observation is clipped and noised with the client's noise multiplier).
Every method runs through the same engine: FedAvg, Dirichlet(``--alpha``) label skew, AdamW, one local epoch a round;
each method has its own learning rate (:data:`METHODS`, typical values for the method).

    python benchmarks/peft_methods.py --quick          # 4 clients, 400 examples, 2 rounds (a few minutes)
    python benchmarks/peft_methods.py [--clients 8] [--train-examples 800] [--rounds 3] [--tasks movie_reviews trec]
        [--methods full lora head prompt prefix p-tuning] [--no-dp] [--attack-samples 2] [--attack-iterations 40]
    python benchmarks/peft_methods.py --attack-only --attacks tag lamp --no-dp --attack-samples 4   # attacks only

Published small-model anchor (TinyBERT on SST-2, centralized, full data; accuracy non-private / at epsilon 8):
soft prompt 79.9 / 74.2, prefix 81.4 / 75.0, LoRA 82.0 / 78.6, full 80.3 / 79.8. Prompt tuning is known to lag on
small models and short training; this benchmark reports what it measures. Results: ``results/peft_methods.json``
(``--name``).
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

import _common  # noqa: F401
import torch
from _common import print_table, write_result

from secure_ffm.config import config_from_dict

ANCHOR = {
    "source": "TinyBERT, SST-2, centralized (accuracy %, non-private / DP at epsilon 8), as cited in issue 14",
    "prompt": [79.9, 74.2],
    "prefix": [81.4, 75.0],
    "lora": [82.0, 78.6],
    "full": [80.3, 79.8],
}

METHODS: dict[str, dict[str, Any]] = {
    "full": {"model": {"finetune": "full"}, "lr": 1e-4},
    "lora": {"model": {"finetune": "lora", "lora_rank": 8}, "lr": 3e-3},
    "head": {"model": {"finetune": "head"}, "lr": 3e-2},
    "prompt": {"model": {"finetune": "prompt", "prompt_tokens": 10, "prompt_init": "text"}, "lr": 1e-1},
    "prefix": {"model": {"finetune": "prefix", "prompt_tokens": 10}, "lr": 3e-2},
    "p-tuning": {"model": {"finetune": "p-tuning", "prompt_tokens": 10, "prompt_encoder_hidden_size": 128}, "lr": 3e-2},
}
"""Each method's ``[model]`` settings and AdamW learning rate (one typical value each, not tuned per task)."""

TASKS: dict[str, str] = {
    "movie_reviews": "Is the sentiment of this movie review positive or negative?",
    "trec": "What kind of answer does this question ask for?",
    "sms_spam": "Is this text message spam?",
}
"""Bundled text tasks and the phrase a text-initialised soft prompt starts from."""


def config_for(task: str, method: str, *, dp: bool, args: argparse.Namespace) -> Any:
    spec = METHODS[method]
    model = {"arch": "hf-text", "name_or_path": "all-MiniLM-L6-v2", **spec["model"]}
    if model.get("prompt_init") == "text":
        model["prompt_init_text"] = TASKS[task]
    raw: dict[str, Any] = {
        "run": {"seed": args.seed},
        "data": {
            "dataset": task,
            "max_train_examples": args.train_examples,
            "max_test_examples": args.test_examples,
            "num_clients": args.clients,
            "partition": "dirichlet",
            "alpha": args.alpha,
            "min_partition_size": 8,
            "max_length": args.max_length,
        },
        "model": model,
        "client": {"local_epochs": 1, "batch_size": args.batch_size, "optimizer": "adamw", "lr": spec["lr"]},
        "server": {"strategy": "fedavg", "rounds": args.rounds},
    }
    if dp:
        raw["privacy"] = {"mode": "dp-sgd", "target_epsilon": args.epsilon, "max_grad_norm": 1.0}
    return config_from_dict(raw)


def train(config: Any) -> dict[str, Any]:
    from secure_ffm.run.simulation import Simulation, prepare_run

    prepared = prepare_run(config)
    simulation = Simulation(prepared)
    summary = simulation.run()
    history = simulation.history
    privacy = summary.get("privacy") or {}
    epsilon = (privacy.get("epsilon") or {}).get("max") if isinstance(privacy.get("epsilon"), dict) else None
    return {
        "test_accuracy": summary["final"]["test_accuracy"],
        "test_macro_f1": summary["final"].get("test_macro_f1"),
        "curve": [r.get("test_accuracy") for r in history],
        "trainable_parameters": prepared.model.trainable_parameter_count(),
        "total_parameters": prepared.model.total_parameter_count(),
        "bytes_up_per_round": sum(r["bytes_up"] for r in history) / len(history),
        "seconds_per_round": sum(r["seconds"] for r in history) / len(history),
        "epsilon": epsilon,
        "clients": summary["num_clients"],
        "train_examples": summary["num_train_examples"],
    }


def attack(config: Any, name: str, args: argparse.Namespace) -> dict[str, Any]:
    from attacks.audit import AuditCase, audit_config_many
    from attacks.base import Budget

    settings = {"discrete_every": 10, "candidates": 8} if name == "lamp" else {}
    start = time.perf_counter()
    summary = audit_config_many(
        config,
        case=AuditCase(batch_size=1, observes="gradient"),
        clients=list(range(min(args.attack_samples, args.clients))),
        samples=1,
        attack=name,
        settings=settings,
        budget=Budget(max_iterations=args.attack_iterations),
        seed=args.seed,
    )
    mean = summary.mean
    seconds = time.perf_counter() - start
    return {"token_f1": mean.get("token_f1"), "rouge1": mean.get("rouge1"), "cases": len(summary.results), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 clients, 400 train / 200 test examples, 2 rounds, 1 attack sample")
    parser.add_argument("--tasks", nargs="+", default=["movie_reviews", "trec"], choices=sorted(TASKS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--train-examples", type=int, default=800)
    parser.add_argument("--test-examples", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet label-skew concentration")
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--no-dp", action="store_true", help="skip the DP-SGD runs")
    parser.add_argument("--attacks", nargs="*", default=["tag"], choices=["tag", "lamp"], help="text attacks to measure (none: skip)")
    parser.add_argument("--attack-samples", type=int, default=2, help="clients attacked (one example each)")
    parser.add_argument("--attack-iterations", type=int, default=40)
    parser.add_argument("--attack-only", action="store_true", help="no training: only the attacks (at the initial model)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.train_examples, args.test_examples, args.rounds, args.attack_samples = 4, 400, 200, 2, 1
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    privacies = [False] if args.no_dp else [False, True]
    records: list[dict[str, Any]] = []
    for task in args.tasks:
        for method in args.methods:
            for dp in privacies:
                config = config_for(task, method, dp=dp, args=args)
                record: dict[str, Any] = {"task": task, "method": method, "dp": dp}
                if not args.attack_only:
                    record.update(train(config))
                for name in args.attacks:
                    record[name] = attack(config, name, args)
                records.append(record)
                attacks = " ".join(f"{n} F1 {record[n]['token_f1']:.2f}" for n in args.attacks)
                trained = "" if args.attack_only else f"acc {record['test_accuracy']:.3f} {record['seconds_per_round']:.1f} s/round "
                print(f"{task:13s} {method:8s} dp={dp!s:5s} {trained}{attacks}", flush=True)
    if args.attack_only:
        rows = [
            {"task": r["task"], "method": r["method"], "dp": r["dp"], **{f"{n} token F1": round(r[n]["token_f1"], 3) for n in args.attacks}}
            for r in records
        ]
        print_table(f"Text attacks against one example's gradient at the initial model ({args.attack_samples} clients)", rows)
        write_result(args.name or "peft_methods_attacks", {"settings": vars(args), "results": records})
        return
    rows = []
    for r in records:
        row = {
            "task": r["task"],
            "method": r["method"],
            "privacy": f"DP-SGD eps {r['epsilon']:.2g}" if r["dp"] else "none",
            "accuracy": round(r["test_accuracy"], 3),
            "trainable params": r["trainable_parameters"],
            "bytes up/round": int(r["bytes_up_per_round"]),
            "s/round": round(r["seconds_per_round"], 1),
        }
        row.update({f"{n} token F1": round(r[n]["token_f1"], 3) for n in args.attacks})
        rows.append(row)
    print_table(
        f"PEFT methods, federated ({args.clients} clients, Dirichlet {args.alpha}, {args.rounds} rounds, "
        f"{args.train_examples} train examples), MiniLM-L6",
        rows,
    )
    settings = {k: v for k, v in vars(args).items() if k != "name"}
    name = args.name or ("peft_methods_quick" if args.quick else "peft_methods")
    write_result(name, {"settings": settings, "methods": METHODS, "anchor": ANCHOR, "results": records})


if __name__ == "__main__":
    main()
