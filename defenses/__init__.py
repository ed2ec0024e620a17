"""Update-level defenses: transforms a client applies to its update before sending it.

Importing this package registers, in :data:`secure_ffm.engine.transforms.TRANSFORMS`:

========================  ==============================================================
``l2-clip``               whole-update L2 clipping (:class:`defenses.transforms.L2Clip`)
``gaussian-noise``        per-coordinate Gaussian noise (:class:`~defenses.transforms.GaussianNoise`)
``prune``                 per-array magnitude pruning, Zhu et al. 2019 (:class:`~defenses.transforms.Prune`)
``quantize``              stochastic uniform / sign quantization (:class:`~defenses.transforms.Quantize`)
``soteria``               representation-gradient pruning, Sun et al. 2021 (:class:`defenses.soteria.Soteria`)
========================  ==============================================================

A run lists them in ``defense.names`` (``[defense]`` in the TOML); secure-ffm loads this
package as a ``secure_ffm.plugins`` entry point, builds each with ``from_config`` and runs them
in order after local training, before DP-FedAvg's clipping and noise and before the
aggregation protocol encodes the update. The numeric core is in :mod:`defenses.core`.
"""

from defenses import core
from defenses.soteria import Soteria
from defenses.transforms import GaussianNoise, L2Clip, Prune, Quantize

DEFENSES = ("l2-clip", "gaussian-noise", "prune", "quantize", "soteria")
"""The names this package registers."""

__all__ = ["DEFENSES", "GaussianNoise", "L2Clip", "Prune", "Quantize", "Soteria", "core"]
