"""Differential-privacy accounting shared by DP-SGD (per client) and DP-FedAvg (per federation)."""

from secure_ffm.privacy.accounting import (
    ACCOUNTANTS,
    MAX_NOISE_MULTIPLIER,
    GaussianSteps,
    PrivacyLedger,
    calibrate_noise_multiplier,
    check_delta,
    compute_epsilon,
    default_delta,
    dp_fedavg_epsilon,
)

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
