"""Building what the server observes from a model and the clients' true examples (breaching's "case").

The client computes, on its batch, either one gradient (FedSGD) or a local update of
``local_steps`` plain-SGD steps (FedAvg). Minibatches of the local steps are taken in
order, cycling through the batch (:func:`local_minibatches`); the FedAvg attack of
Geiping et al. (NeurIPS 2020) simulates exactly the same steps. The model runs in eval
mode (no dropout): the most favourable case for the attacker, so leakage is an upper bound.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from attacks.base import GroundTruth, NamedArrays, Observation, ThreatModel, TrainingSetup
from secure_ffm.models.base import Batch, FederatedModel


def local_minibatches(num_examples: int, local_batch_size: int, local_steps: int) -> list[np.ndarray]:
    """Example indices of each local step: consecutive slices of the batch, wrapping around."""
    size = local_batch_size or num_examples
    order = np.arange(num_examples)
    return [np.take(order, np.arange(step * size, (step + 1) * size), mode="wrap") for step in range(local_steps)]


def _trainable(model: FederatedModel) -> list[tuple[str, torch.nn.Parameter]]:
    return model.trainable_named_parameters()


def batch_gradient(model: FederatedModel, batch: Batch) -> NamedArrays:
    """Gradient of the model objective's mean loss over ``batch`` w.r.t. every trainable parameter."""
    named = _trainable(model)
    was_training = model.module.training
    model.module.eval()
    try:
        loss = model.loss(batch)
        grads = torch.autograd.grad(loss, [p for _, p in named])
    finally:
        model.module.train(was_training)
    return {name: g.detach().cpu().numpy().astype(np.float32) for (name, _), g in zip(named, grads, strict=True)}


def _select(batch: Batch, indices: np.ndarray) -> Batch:
    index = torch.from_numpy(np.asarray(indices, dtype=np.int64))
    return Batch(inputs={k: v[index] for k, v in batch.inputs.items()}, labels=batch.labels[index])


def local_update(model: FederatedModel, batch: Batch, setup: TrainingSetup) -> NamedArrays:
    """The delta of ``setup.local_steps`` plain-SGD steps on ``batch`` (the model is restored afterwards)."""
    start = model.get_trainable()
    named = _trainable(model)
    was_training = model.module.training
    model.module.eval()
    try:
        for indices in local_minibatches(len(batch), setup.local_batch_size, setup.local_steps):
            step = _select(batch, indices)
            loss = model.loss(step)
            grads = torch.autograd.grad(loss, [p for _, p in named])
            with torch.no_grad():
                for (_, p), g in zip(named, grads, strict=True):
                    p.sub_(setup.learning_rate * g)
        end = model.get_trainable()
    finally:
        model.set_trainable(start)
        model.module.train(was_training)
    return {name: end[name] - start[name] for name in start}


def _observe_one(model: FederatedModel, batch: Batch, threat_model: ThreatModel, setup: TrainingSetup) -> NamedArrays:
    if threat_model.observes == "gradient":
        return batch_gradient(model, batch)
    return local_update(model, batch, setup)  # "update", and each client's part of an "aggregate"


def data_kind(model: FederatedModel) -> str:
    return str(model.data_kind)  # type: ignore[attr-defined]


def observe(
    model: FederatedModel,
    batch: Batch,
    *,
    threat_model: ThreatModel,
    setup: TrainingSetup | None = None,
    other_clients: Sequence[Batch] = (),
    texts: Sequence[str] | None = None,
) -> tuple[Observation, GroundTruth]:
    """What the server observes when the target client trains on ``batch`` (and the truth, for scoring).

    With ``threat_model.observes == "aggregate"`` the observation is the example-weighted mean of
    the target's and ``other_clients``' local updates (each trained with ``setup``'s steps and
    learning rate), as secure aggregation reveals it, and the
    ground truth holds every client's examples (target first): a reconstruction of anyone's
    example counts as leakage. For one full-batch step (:func:`one_full_step`) the observation's ``setup.num_examples``
    is every example in the sum (the server knows each client's count), so an attack reconstructs all of them; several
    local steps are matched as if the target alone had taken them.
    """
    setup = setup or TrainingSetup(num_examples=len(batch))
    if setup.num_examples != len(batch):
        raise ValueError(f"setup.num_examples={setup.num_examples} but the batch has {len(batch)} examples")
    if threat_model.observes == "aggregate" and not other_clients:
        raise ValueError("an aggregate observation needs other_clients")
    if threat_model.observes != "aggregate" and other_clients:
        raise ValueError(f"other_clients are only used when observing the aggregate, not {threat_model.observes!r}")
    observed = _observe_one(model, batch, threat_model, setup)
    truth_batches = [batch]
    every = threat_model.observes == "aggregate" and one_full_step(setup)  # the attack reconstructs every example in the sum
    if threat_model.observes == "aggregate":
        total = float(len(batch))
        sums = {k: v.astype(np.float64) * len(batch) for k, v in observed.items()}
        for other in other_clients:
            other_setup = TrainingSetup(
                num_examples=len(other),
                local_steps=setup.local_steps,
                local_batch_size=setup.local_batch_size,
                learning_rate=setup.learning_rate,
            )
            one = local_update(model, other, other_setup)
            for k, v in one.items():
                sums[k] += v.astype(np.float64) * len(other)
            total += len(other)
            truth_batches.append(other)
        observed = {k: (v / total).astype(np.float32) for k, v in sums.items()}
        # the server knows every client's example count: for one full-batch step the attack reconstructs every example
        # in the sum (the example-weighted mean of the clients' updates is exactly one update over their union);
        # several local steps, each client's own, are matched as if the target alone had taken them
        setup = TrainingSetup(
            num_examples=int(total) if every else setup.num_examples,
            local_steps=setup.local_steps,
            local_batch_size=setup.local_batch_size,
            learning_rate=setup.learning_rate,
            num_clients=1 + len(other_clients),
        )
    kind = data_kind(model)
    first = next(iter(batch.inputs.values()))
    input_shape = tuple(first.shape[1:])
    truth = GroundTruth(
        inputs=stack_inputs(truth_batches),
        labels=torch.cat([b.labels for b in truth_batches]),
        texts=list(texts) if texts is not None else None,
    )
    attacked = Batch(truth.inputs, truth.labels) if every else batch
    extras = {k: v.clone() for k, v in attacked.inputs.items() if k != "pixels" and k != "input_ids"}
    observation = Observation(
        threat_model=threat_model,
        setup=setup,
        model=model,
        parameters=model.get_trainable(),
        observed=observed,
        data_kind=kind,
        input_shape=input_shape,
        labels=attacked.labels.clone() if threat_model.knows_labels else None,
        extras=extras,
    )
    return observation, truth


def one_full_step(setup: TrainingSetup) -> bool:
    """Whether each client took one step over its whole batch: the aggregate of such updates is one step over the
    union of the batches, so an attack on it reconstructs every example in the sum."""
    return setup.local_steps == 1 and (setup.local_batch_size == 0 or setup.local_batch_size >= setup.num_examples)


def stack_inputs(batches: Sequence[Batch]) -> dict[str, torch.Tensor]:
    """Every batch's inputs one after another; text batches of different lengths are right-padded with 0 to the longest."""
    inputs: dict[str, torch.Tensor] = {}
    for key in batches[0].inputs:
        tensors = [b.inputs[key] for b in batches]
        if len({tuple(t.shape[1:]) for t in tensors}) > 1:
            longest = max(t.shape[1] for t in tensors)
            tensors = [torch.nn.functional.pad(t, (0, longest - t.shape[1])) for t in tensors]
        inputs[key] = torch.cat(tensors)
    return inputs
