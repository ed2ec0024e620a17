"""Gradient-matching objectives, and the differentiable replay of what the client computed.

A gradient-inversion attack searches for inputs whose *simulated* observation (the gradient,
or the local update, that the client would have sent for them) matches the *observed* one.
Two distances are registered in :data:`OBJECTIVES`:

* ``l2``: the squared Euclidean distance summed over layers, as in Deep Leakage from
  Gradients (Zhu et al., NeurIPS 2019);
* ``cosine``: one minus the cosine similarity of the concatenated (layer-weighted) arrays,
  as in Inverting Gradients (Geiping et al., NeurIPS 2020), which is blind to the scale of
  the observation and so to the learning rate of an update.

Layers can be selected by name pattern and weighted (``equal``, or Geiping et al.'s ``linear``
weights that fall from the first layer to the last) with :func:`layer_weights`.

:func:`simulate` replays the client's computation with ``torch.func.functional_call`` so that
it stays differentiable in the candidate inputs (and soft labels): one gradient of the mean
cross-entropy, or ``local_steps`` plain-SGD steps on the minibatches of
:func:`attacks.case.local_minibatches` (the FedAvg attack of Geiping et al., Section 6).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch.func import functional_call

from attacks.base import Observation
from attacks.case import local_minibatches
from secure_ffm.registry import Registry

Arrays = Mapping[str, torch.Tensor]
Objective = Callable[[Arrays, Arrays, Mapping[str, float]], torch.Tensor]
"""``objective(simulated, observed, weights)``: a scalar distance over the names in ``weights``."""

OBJECTIVES: Registry[Objective] = Registry("objective")
LAYER_WEIGHTS = ("equal", "linear")


@OBJECTIVES.register("l2")
def l2_distance(simulated: Arrays, observed: Arrays, weights: Mapping[str, float]) -> torch.Tensor:
    """``sum_l w_l ||sim_l - obs_l||^2`` (Zhu et al., 2019)."""
    return sum((w * (simulated[name] - observed[name]).pow(2).sum() for name, w in weights.items()), torch.zeros(()))


@OBJECTIVES.register("cosine")
def cosine_distance(simulated: Arrays, observed: Arrays, weights: Mapping[str, float]) -> torch.Tensor:
    """``1 - <sim, obs>_w / (|sim|_w |obs|_w)`` over all selected layers at once (Geiping et al., 2020, eq. 4)."""
    dot = torch.zeros(())
    sim_norm = torch.zeros(())
    obs_norm = torch.zeros(())
    for name, w in weights.items():
        s, o = simulated[name], observed[name]
        dot = dot + w * (s * o).sum()
        sim_norm = sim_norm + w * s.pow(2).sum()
        obs_norm = obs_norm + w * o.pow(2).sum()
    return 1.0 - dot / (sim_norm.sqrt() * obs_norm.sqrt()).clamp_min(1e-12)


def layer_weights(names: Sequence[str], *, patterns: Sequence[str] = (), scheme: str = "equal") -> dict[str, float]:
    """Weight of each matched array: those whose name matches one of ``patterns`` (all when empty).

    ``equal`` gives every selected array weight 1; ``linear`` gives the i-th of n selected arrays
    ``(n - i) / n``, emphasising the first layers (Geiping et al.'s ``weights="linear"``).
    """
    selected = [n for n in names if not patterns or any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    if not selected:
        raise ValueError(f"no observed array matches the layer patterns {list(patterns)}; observed: {list(names)[:6]}")
    if scheme == "equal":
        return dict.fromkeys(selected, 1.0)
    if scheme == "linear":
        n = len(selected)
        return {name: (n - i) / n for i, name in enumerate(selected)}
    raise ValueError(f"unknown layer weighting {scheme!r}; choose one of {LAYER_WEIGHTS}")


def classification_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy with integer labels, or with the soft labels ``softmax(targets)`` (DLG)."""
    if targets.dtype == torch.long:
        return F.cross_entropy(logits, targets)
    return -(targets.softmax(dim=-1) * logits.log_softmax(dim=-1)).sum(dim=-1).mean()


def simulate(
    observation: Observation,
    parameters: Mapping[str, torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    local_steps: bool,
    names: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """What the client would have sent for ``inputs`` (differentiable in ``inputs`` and soft ``targets``).

    Parameters
    ----------
    observation:
        Supplies the model and, for ``local_steps``, the training setup.
    parameters:
        The global trainable parameters as leaf tensors that require grad.
    inputs, targets:
        Candidate pixels ``(B, C, H, W)``, and integer labels ``(B,)`` or soft-label logits ``(B, classes)``.
    local_steps:
        False: the gradient of the mean loss over the whole batch (FedSGD). True: the parameter
        delta of ``setup.local_steps`` SGD steps on the minibatches of :func:`local_minibatches`.
    names:
        Arrays to return (all of ``parameters`` when None); a gradient is only taken for these.
    """
    module = observation.model.module
    wanted = list(names) if names is not None else list(parameters)
    if not local_steps:
        loss = classification_loss(functional_call(module, dict(parameters), (inputs,)), targets)
        grads = torch.autograd.grad(loss, [parameters[n] for n in wanted], create_graph=True)
        return dict(zip(wanted, grads, strict=True))
    setup = observation.setup
    current = dict(parameters)
    order = list(current)
    for indices in local_minibatches(inputs.shape[0], setup.local_batch_size, setup.local_steps):
        index = torch.from_numpy(indices)
        loss = classification_loss(functional_call(module, current, (inputs[index],)), targets[index])
        grads = torch.autograd.grad(loss, [current[n] for n in order], create_graph=True)
        current = {n: current[n] - setup.learning_rate * g for n, g in zip(order, grads, strict=True)}
    return {n: current[n] - parameters[n] for n in wanted}


def matching_target(observation: Observation, *, local_steps: bool) -> dict[str, torch.Tensor]:
    """The observed arrays, in the form :func:`simulate` produces for the same ``local_steps``.

    An update or aggregate matched with a single gradient (``local_steps=False``) is turned into
    the gradient it approximates, ``-delta / (learning_rate * local_steps)`` (exact for one
    full-batch step). Without ``knows_training`` the scale is unknown and ``-delta`` is used:
    the ``cosine`` objective does not depend on it, ``l2`` does.
    """
    observed = observation.observed_tensors()
    if observation.threat_model.observes == "gradient" or local_steps:
        return observed
    setup = observation.setup
    scale = setup.learning_rate * setup.local_steps if observation.threat_model.knows_training else 1.0
    return {name: -value / scale for name, value in observed.items()}
