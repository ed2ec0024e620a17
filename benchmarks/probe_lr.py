"""How far linear probing's head-only DP rounds take a random head, by server learning rate (``server.linear_probe_lr``).

A simulation on frozen features, not a run: in a head-only round the encoder is frozen and LoRA's update is zero, so
the round is DP-SGD on a linear head over fixed features. The script computes the mean-pooled all-MiniLM-L6-v2
features of every movie-review snippet once (the model and data of the ``movie-all-*`` arms of
``privacy_utility.py``), then replays head-only rounds in NumPy as the arm runs them: Poisson sampling at the arm's
rate q = 128 / 1,057 (over the whole federation rather than per client), per-example gradients of the cross-entropy
clipped per tensor to C / √2 (``privacy.clipping = "per-layer"`` over the head's weight and bias), Gaussian noise
z·C·√(m/t) on the sum (the arm's discrete Gaussian shares for t = 7 of m = 8, approximated by a continuous one;
z planned by the engine's accountant for the arm's 25 rounds at ε = 8), and the server step of the engine's own
strategy, built from the arm's ``[server]`` (FedAdam, β1 0.9, β2 0.99, τ 1e-6), at each learning rate. Reports
the test accuracy after N rounds for each learning rate (mean ± std over seeds), and a converged non-private probe
(scikit-learn's logistic regression) for reference.

    python benchmarks/probe_lr.py [--lrs 0.005 0.01 0.02 0.05 0.1 0.2] [--rounds 5 10] [--seeds 10]

Writes ``results/probe_lr.json``.
"""

from __future__ import annotations

import argparse
import logging

import _common  # noqa: F401
import numpy as np
from _common import machine, print_table, write_result

from secure_ffm.config import load_config
from secure_ffm.engine.strategies import build_strategy
from secure_ffm.privacy.accounting import calibrate_noise_multiplier, default_delta

ARM = "movie-all-lpft5-perlayer-ema-t7-lplr05-distributed-dp-sgd"


def features(config) -> dict[str, np.ndarray]:
    """Mean-pooled encoder features (the head's input) of the train and test snippets, and their labels."""
    import torch

    from secure_ffm.data import load_dataset_splits
    from secure_ffm.models import build_model

    splits = load_dataset_splits(config.data, config.run.seed)
    model = build_model(config.model, num_classes=2, data_kind="text", seed=config.run.seed, max_length=config.data.max_length)
    captured: list[torch.Tensor] = []
    model.module.head.register_forward_pre_hook(lambda module, inputs: captured.append(inputs[0].detach().clone()))
    model.module.eval()
    out = {}
    for name, split in (("train", splits.train), ("test", splits.test)):
        encoded, n = model.encode(split), len(split.labels)
        captured.clear()
        with torch.no_grad():
            for start in range(0, n, 256):
                model.module(**model.make_batch(encoded, np.arange(start, min(n, start + 256))).inputs)
        out[f"{name}_x"] = torch.cat(captured).double().numpy()
        out[f"{name}_y"] = np.asarray(split.labels)
    return out


def probe(data, *, config, lr: float, rounds: list[int], z: float, sample_rate: float, seed: int) -> dict[int, float]:
    """Test accuracy after each of ``rounds`` head-only DP rounds at server learning rate ``lr`` from a random head,
    stepped by the engine's own strategy (the arm's FedAdam, its β1, β2 and τ)."""
    x, y, xt, yt = data["train_x"], data["train_y"], data["test_x"], data["test_y"]
    rng = np.random.default_rng(seed)
    classes, d = int(y.max()) + 1, x.shape[1]
    bound = 1 / np.sqrt(d)  # torch.nn.Linear's initialisation
    params = {"head.weight": rng.uniform(-bound, bound, (classes, d)), "head.bias": rng.uniform(-bound, bound, classes)}
    strategy = build_strategy(config.server)
    strategy.lr_schedule = lambda round: lr
    clip_norm = config.privacy.max_grad_norm
    clip = clip_norm / np.sqrt(len(params))  # per-layer clipping over the head's two tensors
    noise_std = z * clip_norm * np.sqrt(config.data.num_clients / config.secure_aggregation.threshold)
    expected = sample_rate * len(y)
    result = {}
    for round in range(1, max(rounds) + 1):
        batch = np.flatnonzero(rng.random(len(y)) < sample_rate)
        logits = x[batch] @ params["head.weight"].T + params["head.bias"]
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(len(batch)), y[batch]] -= 1  # d loss / d logits
        grads = {"head.weight": p[:, :, None] * x[batch][:, None, :], "head.bias": p}
        delta = {}
        for name, g in grads.items():
            norms = np.linalg.norm(g.reshape(len(batch), -1), axis=1)
            total = (g * np.minimum(1.0, clip / np.maximum(norms, 1e-12)).reshape(-1, *[1] * (g.ndim - 1))).sum(0)
            delta[name] = -(total + rng.normal(0.0, noise_std, total.shape)) / expected
        params = strategy.apply(round, params, delta)
        if round in rounds:
            result[round] = float(((xt @ params["head.weight"].T + params["head.bias"]).argmax(1) == yt).mean())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.005, 0.01, 0.02, 0.05, 0.1, 0.2])
    parser.add_argument("--rounds", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import privacy_utility as pu
    from sklearn.linear_model import LogisticRegression

    spec = pu.TARGET_ARMS[ARM]
    config = load_config(pu.CONFIGS / spec["config"], overrides=spec["overrides"])
    data = features(config)
    n, clients = len(data["train_y"]), config.data.num_clients
    sample_rate = config.client.batch_size / (n / clients)
    z = calibrate_noise_multiplier(
        target_epsilon=config.privacy.target_epsilon,
        delta=default_delta(n),
        sample_rate=sample_rate,
        steps=config.server.rounds,
        accountant="zcdp",
    )
    converged = LogisticRegression(max_iter=5000).fit(data["train_x"], data["train_y"])
    reference = float(converged.score(data["test_x"], data["test_y"]))
    rows = []
    for lr in args.lrs:
        runs = [probe(data, config=config, lr=lr, rounds=args.rounds, z=z, sample_rate=sample_rate, seed=s) for s in range(args.seeds)]
        row: dict = {"linear_probe_lr": lr}
        for r in args.rounds:
            values = [run[r] for run in runs]
            row[f"round_{r}"] = f"{100 * np.mean(values):.1f} ± {100 * np.std(values):.1f}"
        rows.append(row)
    print_table(f"head-only DP rounds on frozen features (z = {z:.4f}; converged non-private probe {100 * reference:.1f}%)", rows)
    write_result(
        "probe_lr",
        {
            "machine": machine(),
            "arm": ARM,
            "noise_multiplier": z,
            "sample_rate": sample_rate,
            "seeds": args.seeds,
            "converged_probe_test_accuracy": reference,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
