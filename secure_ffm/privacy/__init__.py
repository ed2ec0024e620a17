"""Differential-privacy accounting shared by DP-SGD (per client) and DP-FedAvg (per federation).

The names below are loaded on first use (PEP 562): the accountants import Opacus and SciPy (about 1.3 s), which a run
without a privacy mechanism - or a deployed node answering one message - never needs."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "ACCOUNTANTS",
    "MAX_NOISE_MULTIPLIER",
    "GaussianSteps",
    "PrivacyLedger",
    "calibrate_noise_multiplier",
    "check_delta",
    "compute_epsilon",
    "default_delta",
    "dp_fedavg_epsilon",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("secure_ffm.privacy.accounting"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
