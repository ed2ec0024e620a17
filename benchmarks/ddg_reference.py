"""The distributed discrete Gaussian's accounting: secure-ffm against Kairouz, Liu & Steinke's reference code.

Regenerates the values that ``tests/privacy/test_discrete_gaussian.py`` pins
(``test_ddg_accounting_matches_the_authors_reference_implementation``) and compares them with
:mod:`secure_ffm.privacy.discrete_gaussian`. It needs a checkout of ``google-research/federated``
(the reference, Apache-2.0; not a dependency)::

    git clone https://github.com/google-research/federated /tmp/federated
    python benchmarks/ddg_reference.py --reference /tmp/federated

The reference's ``distributed_dp/accounting_utils.py`` is imported unmodified. It imports
``tensorflow_privacy`` only for ``get_privacy_spent``; this script provides that one function,
transcribed from ``tensorflow_privacy``'s ``rdp_accountant._compute_eps`` (the RDP -> (ε, δ)
conversion of Balle et al. 2020 that Opacus also uses), so TensorFlow is not needed.

Prints a table and writes ``benchmarks/results/ddg_reference.json``.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import types
from pathlib import Path

import _common
import numpy as np

from secure_ffm.privacy.discrete_gaussian import ddg_epsilon, ddg_rdp, rounded_norm_bound, subsampled_rdp

BETA = math.exp(-0.5)
ORDERS = (2, 3, 8, 32, 128, 256)
CASES = {
    "EMNIST setting of the paper (100 of 3,400 clients, c = 0.03, 1,500 rounds, d = 2^16)": dict(
        gamma=1e-3, local_stddev=0.03, num_clients=100, l2_sens=0.03, dim=2**16, q=100 / 3400, steps=1500, delta=1 / 3400
    ),
    "sample-level DP-SGD over 8 shares, 73,728 coordinates, q = 128/1,057, 20 steps": dict(
        gamma=1e-5, local_stddev=0.31, num_clients=8, l2_sens=1.0, dim=73728, q=128 / 1057, steps=20, delta=1e-5
    ),
    "coarse grid: shares of σ = 0.8 units": dict(
        gamma=0.25, local_stddev=0.2, num_clients=400, l2_sens=1.0, dim=64, q=1.0, steps=10, delta=1e-5
    ),
    "coarser: shares of σ = 0.7 units, q = 1/2": dict(
        gamma=0.5, local_stddev=0.35, num_clients=100, l2_sens=0.5, dim=16, q=0.5, steps=5, delta=1e-6
    ),
    "user-level at scale: 1,000 shares, 207,000 coordinates": dict(
        gamma=1e-4, local_stddev=0.03, num_clients=1000, l2_sens=1.0, dim=207000, q=0.1, steps=100, delta=1e-6
    ),
}


def _get_privacy_spent(orders, rdp, target_eps=None, target_delta=None):
    """tensorflow_privacy 0.8 ``rdp_accountant.get_privacy_spent`` for a target δ (transcribed)."""
    eps_vec = []
    for order, value in zip(np.atleast_1d(orders), np.atleast_1d(rdp), strict=True):
        if target_delta**2 + math.expm1(-value) >= 0:
            eps = 0.0
        elif order > 1.01:
            eps = value + math.log1p(-1 / order) - math.log(target_delta * order) / (order - 1)
        else:
            eps = math.inf
        eps_vec.append(eps)
    best = int(np.nanargmin(eps_vec))
    return max(0.0, eps_vec[best]), target_delta, np.atleast_1d(orders)[best]


def _load_reference(root: Path) -> types.ModuleType:
    sys.modules["tensorflow_privacy"] = types.SimpleNamespace(get_privacy_spent=_get_privacy_spent)
    sys.path.insert(0, str(root / "distributed_dp"))
    import accounting_utils

    return accounting_utils


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="a checkout of google-research/federated")
    args = parser.parse_args()
    ref = _load_reference(args.reference)
    commit = subprocess.run(["git", "-C", str(args.reference), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    rows = []
    for name, c in CASES.items():
        eps_ref, order = ref.ddgauss_epsilon(
            c["gamma"], c["local_stddev"], c["num_clients"], c["l2_sens"], BETA, c["dim"], c["q"], c["steps"], c["delta"]
        )
        scale = 1 / (c["gamma"] + ref.DIV_EPSILON)
        l2_ref = ref.rounded_l2_norm_bound(c["l2_sens"] * scale, BETA, c["dim"])
        sigma_ref = math.sqrt(c["num_clients"]) * c["local_stddev"] * scale
        tau = 10 * sum(math.exp(-2 * (math.pi * c["local_stddev"] * scale) ** 2 * (k / (k + 1))) for k in range(1, c["num_clients"]))
        rdp_ref = ref.compute_rdp_dgaussian(
            c["q"], ref.rounded_l1_norm_bound(l2_ref, c["dim"]) / sigma_ref, l2_ref / sigma_ref, tau, c["dim"], 1, ORDERS
        )
        sigma = c["local_stddev"] / c["gamma"]
        bound = rounded_norm_bound(norm=c["l2_sens"], granularity=c["gamma"], dim=c["dim"], beta=BETA)
        rdp = subsampled_rdp(
            np.array(ORDERS),
            lambda o, s=sigma, n=c["num_clients"], b=bound, d=c["dim"]: ddg_rdp(o, sigma=s, num_clients=n, l2_sensitivity=b, dim=d),
            sample_rate=c["q"],
        )
        eps = ddg_epsilon(
            sigma=sigma,
            num_clients=c["num_clients"],
            l2_sensitivity=bound,
            dim=c["dim"],
            steps=c["steps"],
            sample_rate=c["q"],
            delta=c["delta"],
        )
        rows.append(
            {
                "case": name,
                **c,
                "tau": tau,
                "rounded_l2_reference": float(l2_ref),
                "rounded_l2": bound,
                "epsilon_reference": float(eps_ref),
                "best_order_reference": int(order),
                "epsilon": eps,
                "epsilon_relative_difference": eps / float(eps_ref) - 1,
                "rdp_orders": list(ORDERS),
                "rdp_one_step_reference": [float(x) for x in rdp_ref],
                "rdp_max_relative_difference": float(np.max(np.abs(rdp / rdp_ref - 1))),
            }
        )
    _common.print_table(
        "DDG accounting: secure-ffm vs the reference (Kairouz et al. 2021)",
        [
            {k: r[k] for k in ("case", "epsilon_reference", "epsilon", "epsilon_relative_difference", "rdp_max_relative_difference")}
            for r in rows
        ],
    )
    _common.write_result("ddg_reference", {"reference_commit": commit, "beta": BETA, "cases": rows})


if __name__ == "__main__":
    main()
