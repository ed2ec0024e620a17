"""Inverting Gradients (Geiping, Bauermeister, Droege and Moeller, NeurIPS 2020).

* ``inverting-gradients``: the cosine distance between the candidate's gradient and the
  observed one (blind to its scale), plus a total-variation prior; Adam on the *signed*
  gradient of that objective, step size 0.1 decayed by 10 at 3/8, 5/8 and 7/8 of the
  iterations; the candidate is boxed to the valid pixel range after each step; random
  restarts, keeping the one with the lowest objective. The batch size is known; the labels
  are given by the threat model or inferred from the last layer.
* ``inverting-gradients-fedavg``: the paper's attack on federated averaging (its Section 6):
  the client's ``local_steps`` plain-SGD steps are replayed differentiably on the candidate,
  with the same minibatch order as :func:`attacks.case.local_minibatches`, and the resulting
  parameter change is matched to the observed update.

Against an aggregate both attack the mean update of all clients as if it came from one client
with the target's batch size; secure aggregation should make that fail.
"""

from __future__ import annotations

from dataclasses import dataclass

from attacks.image import GradientInversion, InversionSettings

PAPER = "Geiping, Bauermeister, Droege, Moeller. Inverting Gradients - How easy is it to break privacy in federated learning? NeurIPS 2020."


@dataclass(frozen=True)
class FedAvgInversionSettings(InversionSettings):
    """Inverting Gradients with the client's local steps replayed."""

    simulate_local_steps: bool = True


class InvertingGradients(GradientInversion):
    """Cosine gradient matching with a TV prior (Geiping et al., NeurIPS 2020)."""

    name = "inverting-gradients"
    settings_class = InversionSettings
    paper = PAPER


class InvertingGradientsFedAvg(GradientInversion):
    """Inverting Gradients against a multi-step local update (Geiping et al., NeurIPS 2020, Section 6)."""

    name = "inverting-gradients-fedavg"
    settings_class = FedAvgInversionSettings
    paper = PAPER
