"""Leakage audits: what an honest-but-curious server can reconstruct from what it observes.

``attacks.base`` holds the contract (threat model, observation, attack, reconstruction),
``attacks.case`` builds observations, and one module per published attack registers
itself in :data:`attacks.base.ATTACKS`.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["ATTACKS", "Attack", "Budget", "GroundTruth", "Observation", "Reconstruction", "ThreatModel", "TrainingSetup", "build_attack"]


def __getattr__(name: str) -> Any:
    """The names above, loaded on first use (PEP 562): ``attacks.base`` imports torch, which ``secure-ffm --help``
    (importing ``attacks.cli`` through this package) must not pay for."""
    if name in __all__:
        return getattr(importlib.import_module("attacks.base"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
