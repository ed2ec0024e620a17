"""Leakage audits: what an honest-but-curious server can reconstruct from what it observes.

``attacks.base`` holds the contract (threat model, observation, attack, reconstruction),
``attacks.case`` builds observations, and one module per published attack registers
itself in :data:`attacks.base.ATTACKS`.
"""

from attacks.base import ATTACKS, Attack, Budget, GroundTruth, Observation, Reconstruction, ThreatModel, TrainingSetup, build_attack

__all__ = ["ATTACKS", "Attack", "Budget", "GroundTruth", "Observation", "Reconstruction", "ThreatModel", "TrainingSetup", "build_attack"]
from attacks import dlg, inverting, lamp, tag, text_embedding  # noqa: E402, F401 - register the image attacks  # noqa: E402, F401 - register the text attacks
