"""Secure aggregation overhead: round time, bytes on the wire and precision, masking's scaling.

Three sections, each selectable alone:

``--round-time``
    Median round time (training, encoding and aggregation; evaluation only after the last
    round, excluded) with ``masking`` and with ``ckks`` divided by the plaintext round time, for
    MiniLM LoRA on movie reviews with 8 clients (configs/quickstart.toml, fewer examples) and
    the Fashion-MNIST CNN with 20 clients (configs/fashion_mnist_cnn.toml as shipped: the full
    60,000 training images, fewer rounds), and the same CNN with a tenth of the data
    (``--cnn-light-examples``, 300 images per client): CKKS costs a fixed time per client and
    parameter, so its ratio grows as local work shrinks. CKKS runs at the default parameters
    (8192, [60, 60], 2^40) and at the default before, 8192 / [60, 40, 40, 60] / 2^40, whose middle
    primes (multiplicative depth aggregation never uses) cost time and bytes for the same precision.
    ``--protocols`` runs a subset (``none`` is always run: it is the baseline). The first round of
    ``ckks`` also draws the key set; the median over rounds leaves it out. Training time varies
    by several percent from run to run, so ``accounted_ratio`` is given beside the measured ratio
    (clients train one after another, ``run.workers = 1``, so that local training can be taken out of the round):
    1 + (the round's seconds outside local training - the plaintext run's) / the plaintext round,
    i.e. the measured cost of set-up, encoding or encryption and aggregation on top of plaintext.
``--bytes``
    Bytes a client sends divided by its fp32 update's bytes, and the largest absolute error of
    the secure mean against the float64 plaintext mean, for CKKS settings from the default before
    (8192, [60, 40, 40, 60], 2^40) and the default (8192, [60, 60], 2^40) down to small ones, in both key-holder modes (``clients``
    encrypts with the secret key, ``authority`` with the public key), and for masking, on real
    CNN deltas (5 local SGD steps of 10 clients) with FedAvg and uniform (DP-FedAvg) weights.
    The smallest expansion whose error stays within ``--error-target`` (1e-4) under both
    weightings is marked.
``--masking-scale``
    Pairwise masking as n grows (10, 50, 200 clients), complete graph (SecAgg) vs SecAgg+
    graph of degree 2 ceil(log2 n): client set-up (key agreement and Shamir sharing, all
    clients' set-up divided by n) and encoding seconds per client, server add and unmask
    seconds, with random updates of ``--params`` values (protocol objects directly, no training),
    with no dropouts and with 10% dropping after masking.

Without a section flag all three run (about 15-25 minutes on 2 CPU cores).

    python benchmarks/secagg_overhead.py [--round-time] [--bytes] [--masking-scale] [--quick]
        [--cases CASE ...] [--protocols PROTOCOL ...] [--rounds N]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import _common  # noqa: F401
import numpy as np
from _common import median, print_table, write_result

from secure_ffm.config import config_from_dict, load_config
from secure_ffm.engine.aggregation import PlaintextAggregation
from secure_ffm.engine.wire import ClientUpdate
from secure_ffm.run.simulation import Simulation, prepare_run
from secure_ffm.secagg.ckks import CKKSEncodeError, CKKSParameters, CKKSProtocol
from secure_ffm.secagg.masking_protocol import MaskingProtocol

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

CKKS_SETTINGS: list[tuple[int, tuple[int, ...], int]] = [
    (8192, (60, 40, 40, 60), 40),  # the default before 2026-12-05
    (8192, (60, 60), 40),  # the default
    (4096, (40, 20, 40), 20),
    (4096, (40, 20, 40), 21),
    (4096, (60, 49), 40),
    (4096, (50, 50), 30),
    (4096, (40, 40), 25),
    (4096, (35, 35), 22),
    (4096, (30, 30), 20),
]


# --------------------------------------------------------------------------- (1) round time

PROTOCOL_SETTINGS: dict[str, dict[str, Any]] = {
    "none": {"protocol": "none"},
    "masking": {"protocol": "masking"},
    "ckks": {"protocol": "ckks"},  # the default parameters, 8192 / [60, 60] / 2^40
    "ckks 8192/[60,40,40,60]": {"protocol": "ckks", "ckks_coeff_mod_bit_sizes": (60, 40, 40, 60)},  # the default before
}


def round_times(prepared: Any, protocols: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Run one simulation per protocol, their rounds interleaved (the order rotating each round).

    Interleaving spreads slow drifts of the machine (frequency, neighbours) over every protocol
    instead of charging them to whichever ran last.
    """
    simulations = {}
    for name, settings in protocols.items():
        secure = dataclasses.replace(prepared.config.secure_aggregation, **settings)
        config = dataclasses.replace(prepared.config, secure_aggregation=secure)
        simulations[name] = Simulation(dataclasses.replace(prepared, config=config))
    names = list(simulations)
    for round in range(1, prepared.config.server.rounds + 1):
        shift = (round - 1) % len(names)
        for name in names[shift:] + names[:shift]:
            simulation = simulations[name]
            simulation.history.append(simulation.run_round(round))
    results = {}
    for name, simulation in simulations.items():
        summary = simulation.summary()
        rows = simulation.history
        clients = [max(1, len(r["clients"])) for r in rows]
        results[name] = {
            "fit_seconds": [r["fit_seconds"] for r in rows],
            "train_seconds": [r["client_train_seconds"] for r in rows],
            "encode_seconds_per_client": [r["encode_seconds"] / c for r, c in zip(rows, clients, strict=True)],
            "aggregate_seconds": [r["aggregate_seconds"] for r in rows],
            "setup_seconds": [r["setup_seconds"] for r in rows],
            "other_seconds": [r["fit_seconds"] - r["client_train_seconds"] for r in rows],
            "bytes_up_per_client": rows[-1]["bytes_up"] / clients[-1],
            "test_accuracy": summary["final"]["test_accuracy"],
            "update_bytes": summary["update_bytes"],
            "clients": clients[-1],
            "declined_clients": sum(len(r["skipped_clients"]) for r in rows),  # e.g. a CKKS client beyond the headroom
            "train_examples": int(sum(len(i) for i in prepared.data.client_indices)),
        }
    return results


def section_round_time(args: argparse.Namespace) -> dict[str, Any]:
    # clients one after another in this process (run.workers = 1): the accounting below takes local training out of
    # the round, which with parallel workers would overlap the protocol's own work
    rounds = [f"server.rounds={args.rounds}", f"server.eval_every={args.rounds}", "run.workers=1"]
    cnn_full = [f"data.max_train_examples={args.cnn_examples}"] if args.cnn_examples else []
    cases = {
        "minilm-lora-8-clients": (
            CONFIGS / "quickstart.toml",
            [f"data.max_train_examples={args.lora_examples}", "data.max_test_examples=200", *rounds],
        ),
        "cnn-20-clients": (CONFIGS / "fashion_mnist_cnn.toml", [*cnn_full, "data.max_test_examples=1000", *rounds]),
        "cnn-20-clients-light": (
            CONFIGS / "fashion_mnist_cnn.toml",
            [f"data.max_train_examples={args.cnn_light_examples}", "data.max_test_examples=1000", *rounds],
        ),
    }
    protocols = {name: settings for name, settings in PROTOCOL_SETTINGS.items() if name == "none" or name in args.protocols}
    rows, raw = [], {}
    for case, (path, overrides) in cases.items():
        if case not in args.cases:
            continue
        prepared = prepare_run(load_config(path, overrides=overrides))
        results = round_times(prepared, protocols)
        base = median(results["none"]["fit_seconds"])
        base_other = median(results["none"]["other_seconds"])
        for name, result in results.items():
            rows.append(
                {
                    "case": case,
                    "clients": result["clients"],
                    "train_examples": result["train_examples"],
                    "protocol": name,
                    "round_s": median(result["fit_seconds"]),
                    "ratio": median(result["fit_seconds"]) / base,
                    "overhead_s": median(result["other_seconds"]) - base_other,
                    "accounted_ratio": 1.0 + (median(result["other_seconds"]) - base_other) / base,
                    "setup_s": median(result["setup_seconds"]),
                    "encode_s_per_client": median(result["encode_seconds_per_client"]),
                    "aggregate_s": median(result["aggregate_seconds"]),
                    "bytes_per_client_vs_fp32": result["bytes_up_per_client"] / result["update_bytes"],
                    "test_accuracy": result["test_accuracy"],
                }
            )
        raw[case] = results
    print_table(
        "Round time with secure aggregation / plaintext round time (median over rounds; overhead_s = the round's "
        "seconds outside local training minus the plaintext run's; accounted_ratio = 1 + overhead_s / plaintext round)",
        rows,
    )
    return {"rows": rows, "raw": raw, "rounds": args.rounds}


# --------------------------------------------------------------------------- (2) bytes and precision


def cnn_deltas(num_clients: int, steps: int) -> list[ClientUpdate]:
    """Real SmallCNN deltas: ``steps`` SGD steps (momentum 0.9) of each client on Fashion-MNIST."""
    config = config_from_dict(
        {
            "run": {"seed": 0},
            "data": {
                "dataset": "fashion_mnist",
                "max_train_examples": 200 * num_clients,
                "max_test_examples": 100,
                "num_clients": num_clients,
                "alpha": 0.5,
            },
            "model": {"arch": "cnn", "finetune": "full"},
            "client": {"local_steps": steps, "batch_size": 32, "lr": 0.05, "momentum": 0.9},
        }
    )
    simulation = Simulation(prepare_run(config))
    instructions = simulation.server.fit_instructions(1, list(range(num_clients)))
    return [simulation.client(c).train(instructions) for c in range(num_clients)]


def float64_mean(updates: list[ClientUpdate], weights: list[float]) -> dict[str, np.ndarray]:
    total = sum(weights)
    return {k: sum(w * u.delta[k].astype(np.float64) for u, w in zip(updates, weights, strict=True)) / total for k in updates[0].delta}


def measure_ckks(parameters: CKKSParameters, key_holder: str, updates: list[ClientUpdate], weights: list[float]) -> dict[str, Any]:
    protocol = CKKSProtocol(parameters=parameters, key_holder=key_holder)
    protocol.begin_round(1, [u.client_id for u in updates])
    accumulator = protocol.accumulator(1)
    sizes, encode = [], []
    for update, weight in zip(updates, weights, strict=True):
        start = time.perf_counter()
        message = protocol.encode(update, weight=weight)
        encode.append(time.perf_counter() - start)
        sizes.append(message.nbytes)
        accumulator.add(message)
    sums = protocol.decryptor().decrypt(protocol.in_process.server.accumulator.result())
    reference = float64_mean(updates, weights)
    error = max(float(np.max(np.abs(sums.delta[k] / sums.total_weight - reference[k]))) for k in reference)
    return {"bytes": float(np.mean(sizes)), "max_error": error, "encode_s": float(np.median(encode))}


def measure_masking(updates: list[ClientUpdate], weights: list[float]) -> dict[str, Any]:
    protocol = MaskingProtocol(clip_range=1.0, seed=0)
    protocol.begin_round(1, [u.client_id for u in updates], weight_bound=max(weights))
    accumulator = protocol.accumulator(1)
    sizes = []
    for update, weight in zip(updates, weights, strict=True):
        message = protocol.encode(update, weight=weight)
        sizes.append(message.nbytes)
        accumulator.add(message)
    result = accumulator.result()
    reference = float64_mean(updates, weights)
    error = max(float(np.max(np.abs(result.mean_delta[k].astype(np.float64) - reference[k]))) for k in reference)
    return {"bytes": float(np.mean(sizes)), "max_error": error}


def section_bytes(args: argparse.Namespace) -> dict[str, Any]:
    updates = cnn_deltas(args.bytes_clients, steps=5)
    fp32 = 4 * sum(v.size for v in updates[0].delta.values())
    weightings = {"examples": [float(u.num_examples) for u in updates], "uniform": [1.0] * len(updates)}
    plain = PlaintextAggregation().encode(updates[0], weight=1.0).nbytes
    rows: list[dict[str, Any]] = [
        {"protocol": "none", "setting": "fp32", "key_holder": "-", "bytes_ratio": plain / fp32, "err_examples": 0.0, "err_uniform": 0.0}
    ]
    masking = {w: measure_masking(updates, weights) for w, weights in weightings.items()}
    rows.append(
        {
            "protocol": "masking",
            "setting": "Z_2^32",
            "key_holder": "-",
            "bytes_ratio": masking["examples"]["bytes"] / fp32,
            "err_examples": masking["examples"]["max_error"],
            "err_uniform": masking["uniform"]["max_error"],
        }
    )
    settings = CKKS_SETTINGS[:4] if args.quick else CKKS_SETTINGS
    for n, primes, scale in settings:
        parameters = CKKSParameters(n, primes, scale)
        for key_holder in ("clients", "authority"):
            row: dict[str, Any] = {"protocol": "ckks", "setting": f"{n}/{list(primes)}/2^{scale}", "key_holder": key_holder}
            for weighting, weights in weightings.items():
                try:
                    measured = measure_ckks(parameters, key_holder, updates, weights)
                except CKKSEncodeError as error:  # beyond the headroom: the setting cannot carry these sums
                    row[f"err_{weighting}"] = float("nan")
                    row.setdefault(
                        "note",
                        f"{weighting}: {str(error).split(' beyond ')[0].split('has ')[-1]} beyond headroom 2^{parameters.headroom_bits}",
                    )
                    continue
                row["bytes_ratio"] = measured["bytes"] / fp32
                row[f"err_{weighting}"] = measured["max_error"]
                row[f"encode_s_{weighting}"] = measured["encode_s"]
            rows.append(row)
    ok = [r for r in rows if r["protocol"] == "ckks" and all(r.get(f"err_{w}", math.nan) <= args.error_target for w in weightings)]
    best = min(ok, key=lambda r: r["bytes_ratio"]) if ok else None
    for row in rows:
        row["within_target"] = any(row is r for r in ok)
        row["smallest"] = row is best
        row.setdefault("note", "")
    columns = ("protocol", "setting", "key_holder", "bytes_ratio", "err_examples", "err_uniform", "within_target", "smallest", "note")
    print_table(
        f"Bytes per client / fp32 bytes, and max |secure mean - float64 mean| on {len(updates)} real CNN deltas "
        f"({fp32 // 4} parameters; target {args.error_target:g})",
        [{c: r.get(c) for c in columns} for r in rows],
    )
    return {"rows": rows, "fp32_bytes": fp32, "clients": len(updates), "error_target": args.error_target, "smallest": best}


# --------------------------------------------------------------------------- (3) masking scale


def masking_case(n: int, neighbours: int, size: int, dropout: float, rng: np.random.Generator) -> dict[str, Any]:
    updates = [ClientUpdate(c, 1, {"w": rng.normal(0, 0.05, size).astype(np.float32)}, 10) for c in range(n)]
    dropped = set(rng.choice(n, size=int(round(dropout * n)), replace=False).tolist()) if dropout else set()
    protocol = MaskingProtocol(neighbours=neighbours, seed=0)
    start = time.perf_counter()
    protocol.begin_round(1, range(n), weight_bound=10.0)
    setup = time.perf_counter() - start
    accumulator = protocol.accumulator(1)
    encode, add = [], 0.0
    for update in updates:
        start = time.perf_counter()
        message = protocol.encode(update, weight=10.0)
        encode.append(time.perf_counter() - start)
        if update.client_id in dropped:
            continue
        start = time.perf_counter()
        accumulator.add(message)
        add += time.perf_counter() - start
    result = accumulator.result()
    return {
        "clients": n,
        "graph": "complete" if neighbours == 0 else f"SecAgg+ k={neighbours}",
        "threshold": protocol.in_process.server.threshold,
        "dropped": len(dropped),
        "client_setup_s": setup / n,
        "client_encode_s": float(np.median(encode)),
        "server_add_s": add,
        "server_unmask_s": result.timings["unmask"] + result.timings["decode"],
    }


def section_masking_scale(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    rows = []
    for n in args.clients:
        k = 2 * math.ceil(math.log2(n))
        graphs = [0] if k >= n - 1 else [0, k]
        for neighbours in graphs:
            for dropout in args.dropout:
                rows.append(masking_case(n, neighbours, args.params, dropout, rng))
    print_table(f"Pairwise masking cost as n grows ({args.params} values per update)", rows)
    return {"rows": rows, "params": args.params}


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--round-time", action="store_true", help="section 1: round time / plaintext round time")
    parser.add_argument("--bytes", action="store_true", help="section 2: bytes per client / fp32 bytes and precision")
    parser.add_argument("--masking-scale", action="store_true", help="section 3: masking cost as n grows")
    parser.add_argument("--quick", action="store_true", help="a reduced run that checks the script works (minutes, not tens)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lora-examples", type=int, default=800)
    parser.add_argument(
        "--cnn-examples", type=int, default=0, help="training images for the CNN case (0: all 60,000, as configs/fashion_mnist_cnn.toml)"
    )
    parser.add_argument("--cnn-light-examples", type=int, default=6000, help="training images for the light CNN case")
    parser.add_argument(
        "--cases", nargs="+", default=["minilm-lora-8-clients", "cnn-20-clients", "cnn-20-clients-light"], help="round-time cases to run"
    )
    parser.add_argument(
        "--protocols", nargs="+", choices=list(PROTOCOL_SETTINGS), default=list(PROTOCOL_SETTINGS), help="round-time protocols to run"
    )
    parser.add_argument("--bytes-clients", type=int, default=10)
    parser.add_argument("--error-target", type=float, default=1e-4)
    parser.add_argument("--clients", type=lambda s: [int(v) for v in s.split(",")], default=[10, 50, 200])
    parser.add_argument("--params", type=int, default=100_000)
    parser.add_argument("--dropout", type=lambda s: [float(v) for v in s.split(",")], default=[0.0, 0.1])
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.lora_examples, args.cnn_examples, args.cnn_light_examples = 2, 400, 2000, 1000
        args.bytes_clients, args.clients, args.params, args.dropout = 4, [10, 30], 20_000, [0.1]
    everything = not (args.round_time or args.bytes or args.masking_scale)
    results: dict[str, Any] = {"quick": args.quick}
    if everything or args.round_time:
        results["round_time"] = section_round_time(args)
    if everything or args.bytes:
        results["bytes"] = section_bytes(args)
    if everything or args.masking_scale:
        results["masking_scale"] = section_masking_scale(args)
    sections = [s for s in ("round_time", "bytes", "masking_scale") if s in results]
    name = (
        "secagg_overhead" if everything and not args.quick else "secagg_overhead_" + "_".join(sections) + ("_quick" if args.quick else "")
    )
    write_result(name, results)


if __name__ == "__main__":
    main()
