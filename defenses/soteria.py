"""Soteria: perturb the representation layer's gradient (Sun et al., CVPR 2021).

Sun, Li, Wang, Yang, Li and Chen, "Soteria: Provable Defense against Privacy Leakage in
Federated Learning from Representation Perspective" (CVPR 2021; arXiv 2012.06043; official
code github.com/jeremy313/Soteria). Targets: gradient inversion from the update by an
honest-but-curious server, above all DLG (Zhu et al., NeurIPS 2019) and Inverting Gradients
(Geiping et al., NeurIPS 2020), whose reconstructions rest mostly on the gradient of the layer
that maps the data representation ``r`` to the outputs (for a linear layer ``W r + b``,
``dL/dW = (dL/dz) r^T`` reveals ``r`` up to scale, and ``r`` reveals the input).

The representation here is the input of the model's classifier ``head`` (a ``Linear`` on every
built-in model: after ``fc`` in the CNN, the final LayerNorm'd class token in the ViT, the pooled
encoder output in ``hf-text``). For each feature ``i`` the paper approximates how far the
reconstruction ``X`` moves when ``r_i`` is removed by ``|r_i| / ||dr_i/dX||`` and prunes the
features where this is largest; the official code computes ``||dr_i/dX|| / r_i`` per example,
sums it over the examples and zeroes the gradient columns of the lowest percentile, i.e. the
same features for one example. Here, on up to ``max_examples`` of the client's own examples
(drawn with the client's seeded generator) with the model after local training:

* score_i = sum over examples j of ``|r_ji| / ||dr_ji/dX_j||``, with ``0/0 = 0`` (a feature that
  is inactive on that example, e.g. a dead ReLU, changes nothing when pruned) and ``x/0 = inf``;
  summing the forward ratio rather than its inverse keeps one inactive example from making a
  feature unprunable, and ranks as the official code does for a single example with positive
  features (its ``r_i`` is signed; ``|r_i|`` here, since ViT and text representations take both signs);
* the ``floor(fraction F)`` features of largest score (ties to the lower index) are chosen, and
  columns ``i`` of the head weight's update (``head.weight`` delta ``[:, i]``) are set to zero.
  The head bias and every other array are sent unchanged.

``X`` is the model input: the pixels for image models; for ``hf-text`` the output of the
encoder's input (word) embeddings, differentiated through the encoder even when it is frozen.
The cost is one backward pass per feature over the chosen examples: for 8 examples, about 0.3 s
for the CNN (128 features) and the ViT (64) on one CPU core; for MiniLM (384 features) it is
compute-bound at roughly 2 to 5 s per example, hence the small default of ``soteria_examples``.

Caveats: the defense uses the client's raw data to pick the columns, so the choice itself is
not covered by a DP-SGD guarantee (it is not post-processing of the private update); and with
several local steps the update is a sum of gradients at different weights, while the columns
are scored at the final local weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from defenses.core import top_fraction
from secure_ffm.config import DefenseConfig
from secure_ffm.engine.transforms import TRANSFORMS, TransformContext, UpdateTransform
from secure_ffm.engine.wire import ClientUpdate
from secure_ffm.errors import ConfigError
from secure_ffm.models.base import Batch, FederatedModel

HEAD = "head"
"""The attribute of ``model.module`` that must be the classifier: an ``nn.Linear`` fed the representation."""


def head_weight_name(model: FederatedModel) -> str:
    """The parameter name of ``model.module.head.weight`` (the array Soteria edits), or a ConfigError."""
    head = getattr(model.module, HEAD, None)
    if not isinstance(head, nn.Linear):
        found = type(head).__name__ if head is not None else "no such attribute"
        raise ConfigError(
            "defense.names",
            f"soteria needs a model whose classifier is an nn.Linear called {HEAD!r} (model.module.{HEAD}: {found})",
            "use model.arch cnn, vit or hf-text, or remove soteria from defense.names",
        )
    for name, parameter in model.module.named_parameters():
        if parameter is head.weight:
            return name
    raise ConfigError("defense.names", f"soteria cannot find {HEAD}.weight among the model's parameters")


def sample_examples(indices: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """All of ``indices`` when there are at most ``count``, else ``count`` of them drawn without replacement (sorted)."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        raise ValueError("soteria needs at least one example of the client")
    if idx.size <= count:
        return idx.copy()
    return np.sort(rng.choice(idx, size=count, replace=False))


def _input_embeddings(module: nn.Module) -> nn.Module | None:
    """The word-embedding layer of a text model (``module.encoder.get_input_embeddings()``), else None."""
    for owner in (getattr(module, "encoder", None), module):
        getter = getattr(owner, "get_input_embeddings", None)
        if callable(getter):
            embeddings = getter()
            if isinstance(embeddings, nn.Module):
                return embeddings
    return None


@contextmanager
def _differentiable_eval(module: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout draws), autograd through a frozen encoder; both restored afterwards."""
    modes = [(m, m.training) for m in module.modules()]  # each submodule's own mode, in case they differ
    tracked = getattr(module, "track_encoder_grad", None)
    module.eval()
    if tracked is not None:
        module.track_encoder_grad = True  # type: ignore[assignment]
    try:
        with torch.enable_grad():
            yield
    finally:
        for submodule, training in modes:
            submodule.training = training
        if tracked is not None:
            module.track_encoder_grad = tracked  # type: ignore[assignment]


def representation_sensitivity(model: FederatedModel, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    """The representation ``r`` (examples x features) and ``||dr_ji / dX_j||`` of the same shape.

    ``X_j`` is example j's input (pixels, or the word embeddings of a text model). One backward
    pass per feature i, of ``sum_j r_ji``, gives every example's gradient at once, because the
    built-in models treat the examples of a batch independently in eval mode. (Repeating the
    batch to seed many features in one pass was measured slower on a CPU, and ``vmap`` over the
    seeds slower still.) No parameter's ``.grad`` is touched; the module's mode and hooks are restored.
    """
    module = model.module
    head_weight_name(model)
    head: nn.Linear = getattr(module, HEAD)
    captured: dict[str, Any] = {"x": []}
    inputs = dict(batch.inputs)
    handles = [head.register_forward_pre_hook(lambda _m, args: captured.__setitem__("r", args[0]))]
    embeddings = _input_embeddings(module)
    if embeddings is not None:

        def as_leaf(_m: nn.Module, _args: Any, output: torch.Tensor) -> torch.Tensor:
            leaf = output.detach().requires_grad_(True)
            captured["x"].append(leaf)
            return leaf

        handles.append(embeddings.register_forward_hook(as_leaf))
    else:
        for key, value in inputs.items():
            if torch.is_tensor(value) and value.is_floating_point():
                inputs[key] = value.detach().clone().requires_grad_(True)
                captured["x"].append(inputs[key])
        if not captured["x"]:
            raise ConfigError("defense.names", "soteria found no floating-point input and no input embeddings to differentiate")
    try:
        with _differentiable_eval(module):
            module(**inputs)
            r: torch.Tensor = captured["r"]
            xs: list[torch.Tensor] = captured["x"]
            if r.dim() != 2:
                raise ConfigError("defense.names", f"soteria expects the {HEAD} input to be (examples, features), got {tuple(r.shape)}")
            features = r.shape[1]
            norms = torch.zeros(r.shape, dtype=torch.float64)
            for i in range(features):
                grads = torch.autograd.grad(r[:, i].sum(), xs, retain_graph=i + 1 < features, allow_unused=True)
                squares = [g.detach().flatten(1).double().pow(2).sum(1) for g in grads if g is not None]
                if squares:
                    norms[:, i] = torch.stack(squares).sum(0).sqrt()
    finally:
        for handle in handles:
            handle.remove()
    return r.detach().double().numpy(), norms.numpy()


def feature_scores(representation: np.ndarray, input_gradient_norms: np.ndarray) -> np.ndarray:
    """Per feature, the sum over examples of ``|r_ji| / ||dr_ji/dX_j||`` (0/0 = 0, x/0 = inf): larger leaks more."""
    r = np.abs(np.asarray(representation, dtype=np.float64))
    g = np.asarray(input_gradient_norms, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(r == 0, 0.0, r / g)
    return ratio.sum(axis=0)


def soteria_columns(model: FederatedModel, batch: Batch, fraction: float) -> np.ndarray:
    """The representation features (columns of ``head.weight``) Soteria removes for ``batch``, ascending."""
    return top_fraction(feature_scores(*representation_sensitivity(model, batch)), fraction)


@TRANSFORMS.register("soteria")
class Soteria(UpdateTransform):
    """Zero the columns of the head weight's update that belong to the most revealing features.

    Needs ``context.model`` (the client's model after local training), ``context.encoded`` and
    ``context.indices`` (its examples), and an update that contains ``head.weight`` (every
    ``finetune`` mode trains the head). See the module docstring for the criterion.
    """

    name = "soteria"
    reads_examples = True  # it scores features on the client's own examples: outside a DP-SGD guarantee

    def __init__(self, *, fraction: float, max_examples: int = 8) -> None:
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"fraction must be in (0, 1), got {fraction}")
        if max_examples < 1:
            raise ValueError(f"max_examples must be positive, got {max_examples}")
        self.fraction = fraction
        self.max_examples = max_examples

    @classmethod
    def label(cls, config: DefenseConfig) -> str:
        return f"Soteria {config.soteria_fraction * 100:g}%"

    @classmethod
    def from_config(cls, config: DefenseConfig) -> Soteria:
        return cls(fraction=config.soteria_fraction, max_examples=config.soteria_examples)

    def __call__(self, update: ClientUpdate, context: TransformContext) -> ClientUpdate:
        model, encoded, indices = context.model, context.encoded, context.indices
        if model is None or encoded is None or indices is None:
            raise ValueError("soteria needs context.model, context.encoded and context.indices (the client's trained model and examples)")
        weight_name = head_weight_name(model)
        if weight_name not in update.delta:
            raise ConfigError(
                "defense.names",
                f"soteria needs {weight_name!r} in the update, which holds {sorted(update.delta)[:4]}",
                "train the head (every model.finetune mode does) or remove soteria",
            )
        weight = update.delta[weight_name]
        batch = model.make_batch(encoded, sample_examples(indices, self.max_examples, context.rng))
        representation, gradient_norms = representation_sensitivity(model, batch)
        if weight.ndim != 2 or weight.shape[1] != representation.shape[1]:
            features = representation.shape[1]
            raise ConfigError(
                "defense.names", f"soteria: {weight_name} of shape {weight.shape} does not take the {features} representation features"
            )
        columns = top_fraction(feature_scores(representation, gradient_norms), self.fraction)
        pruned = weight.copy()
        pruned[:, columns] = 0
        return update.replace_delta({**update.delta, weight_name: pruned})
