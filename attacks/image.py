"""Optimization-based gradient inversion of image models: the loop that DLG and Inverting Gradients share.

The attacker starts from random images (and, when it neither knows nor infers the labels,
random soft labels), replays the client's computation on them (:func:`attacks.objectives.simulate`)
and moves them to make the replayed observation match the observed one under a registered
objective, plus a registered prior. An attack is these parts chosen by name in its settings
(:class:`InversionSettings`); :mod:`attacks.dlg` and :mod:`attacks.inverting` set the defaults of
the published attacks.

The model's parameters are never changed: the replay calls the module functionally on copies of
the global parameters (``torch.func.functional_call``); the parameters and train/eval mode are
still saved and restored around the attack. The model runs in eval mode, as in
:mod:`attacks.case`. All randomness comes from the ``generator`` passed to ``reconstruct``.

One iteration of the budget is one optimizer step: a forward pass and a double backward pass
over the candidate batch (``local_steps`` of them when the local steps are replayed). Of each
restart the iterate with the lowest objective (matching plus prior) is kept, and of the restarts
the one with the lowest objective.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from attacks.base import Attack, AttackSettings, Budget, BudgetClock, Observation, Reconstruction
from attacks.labels import infer_labels
from attacks.objectives import LAYER_WEIGHTS, OBJECTIVES, layer_weights, matching_target, simulate
from attacks.optimizers import OPTIMIZERS, OptimizerSpec
from attacks.priors import PRIORS, Box, normalization_of, pixel_box
from secure_ffm.errors import ConfigError

INITS = ("randn", "rand", "zeros")
LABEL_STRATEGIES = ("infer", "joint")


@dataclass(frozen=True)
class InversionSettings(AttackSettings):
    """``[attack]`` settings of an optimization-based image attack (the defaults are Inverting Gradients')."""

    objective: str = "cosine"
    """Gradient distance from :data:`attacks.objectives.OBJECTIVES`: ``cosine`` or ``l2``."""
    prior: str = "tv"
    """Image prior from :data:`attacks.priors.PRIORS`: ``tv`` or ``none``."""
    prior_weight: float = 0.1
    """Weight of the prior next to the objective: 0.1 did best of 0.1 to 0.0001 on the project CNN in a one-image
    tuning run, 0.001 on DLG's sigmoid LeNet; measured figures are in benchmarks/attack_images.py's results."""
    optimizer: str = "adam"
    """From :data:`attacks.optimizers.OPTIMIZERS`: ``adam`` or ``lbfgs``."""
    learning_rate: float = 0.1
    signed: bool = True
    """Step on the sign of the objective's gradient (Geiping et al.; ``adam`` only)."""
    lr_decay: bool = True
    """Divide the step size by 10 at 3/8, 5/8 and 7/8 of each restart's iterations."""
    line_search: bool = False
    """Strong-Wolfe line search for ``lbfgs``."""
    restarts: int = 1
    """Independent random starts sharing the iteration budget; the one with the lowest objective is kept."""
    boxed: bool = True
    """Clip the candidate to the valid pixel range after every step."""
    init: str = "randn"
    """Start: ``randn`` (standard normal in normalized space), ``rand`` (uniform in the pixel box) or ``zeros``."""
    labels: str = "infer"
    """When the threat model does not give the labels: ``infer`` them from the last layer
    (:func:`attacks.labels.infer_labels`), or optimize soft labels ``joint``\\ly with the images (DLG)."""
    simulate_local_steps: bool = False
    """For updates and aggregates: replay the client's ``local_steps`` SGD steps (the FedAvg attack)
    instead of matching one gradient to ``-delta / (lr * local_steps)``. Needs ``knows_training``."""
    layers: tuple[str, ...] = ()
    """Match only the arrays whose names match one of these glob patterns (all when empty)."""
    layer_weights: str = "equal"
    """``equal`` or ``linear`` (falling from the first matched layer to the last)."""
    batch_size: int = 0
    """The attacker's guess of the batch size when the threat model hides it (0: use the known one)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        OBJECTIVES.get(self.objective, key="attack.objective")
        PRIORS.get(self.prior, key="attack.prior")
        OPTIMIZERS.get(self.optimizer, key="attack.optimizer")
        for key, allowed in (("init", INITS), ("labels", LABEL_STRATEGIES), ("layer_weights", LAYER_WEIGHTS)):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"attack.{key}", f"unknown value {getattr(self, key)!r}", f"choose one of: {', '.join(allowed)}")
        if not self.prior_weight >= 0:
            raise ConfigError("attack.prior_weight", f"must be >= 0, got {self.prior_weight}")
        if not self.learning_rate > 0:
            raise ConfigError("attack.learning_rate", f"must be positive, got {self.learning_rate}")
        if self.restarts < 1:
            raise ConfigError("attack.restarts", f"must be at least 1, got {self.restarts}")
        if self.batch_size < 0:
            raise ConfigError("attack.batch_size", f"must be >= 0, got {self.batch_size}", "use 0 for the known batch size")
        if self.signed and self.optimizer == "lbfgs":
            fix = "set signed = false, or use optimizer = adam"
            raise ConfigError("attack.signed", "signed gradients break L-BFGS's curvature estimate", fix)


@dataclass
class _Problem:
    """What every restart of one attack shares."""

    observation: Observation
    box: Box
    """The valid range of a normalized pixel (:func:`attacks.priors.pixel_box` of the model's normalization)."""
    parameters: dict[str, torch.Tensor]
    """The global trainable parameters, as leaves that require grad."""
    target: dict[str, torch.Tensor]
    weights: dict[str, float]
    labels: torch.Tensor | None
    """Known or inferred labels; None: optimize soft labels jointly."""
    batch_size: int
    local_steps: bool


@dataclass
class _Trial:
    inputs: torch.Tensor
    labels: torch.Tensor
    objective: float
    history: list[float] = field(default_factory=list)


class GradientInversion(Attack):
    """Reconstruct a client's images by matching a replayed gradient (or update) to the observed one."""

    data_kinds = ("image",)
    settings_class = InversionSettings
    settings: InversionSettings

    def reconstruct(self, observation: Observation, *, budget: Budget, generator: torch.Generator) -> Reconstruction:
        self.check(observation)
        clock = budget.clock()
        model = observation.model
        saved = model.get_trainable()
        was_training = model.module.training
        model.module.eval()
        try:
            problem, source = self._problem(observation, generator)
            per_restart = max(1, budget.max_iterations // self.settings.restarts)
            trials: list[_Trial] = []
            for _ in range(self.settings.restarts):
                trials.append(self._trial(problem, per_restart, clock, generator))
                if clock.iterations >= budget.max_iterations or (budget.max_seconds and clock.elapsed() >= budget.max_seconds):
                    break
        finally:
            model.set_trainable(saved)
            model.module.train(was_training)
        best = min(range(len(trials)), key=lambda i: trials[i].objective if math.isfinite(trials[i].objective) else math.inf)
        chosen = trials[best]
        details: dict[str, Any] = {
            "objective": chosen.objective,
            "restart": best,
            "restart_objectives": [t.objective for t in trials],
            "label_source": source,
            "simulated_local_steps": problem.local_steps,
            "layers": list(problem.weights),
            "history": chosen.history,
        }
        return Reconstruction(
            inputs=chosen.inputs,
            labels=chosen.labels,
            seconds=clock.elapsed(),
            iterations=clock.iterations,
            details=details,
            normalization=normalization_of(model),
        )

    def _problem(self, observation: Observation, generator: torch.Generator) -> tuple[_Problem, str]:
        s = self.settings
        threat = observation.threat_model
        local_steps = s.simulate_local_steps and threat.observes != "gradient"
        if local_steps and not threat.knows_training:
            raise ConfigError(
                "attack.simulate_local_steps",
                "replaying the local steps needs their number and learning rate",
                "set threat_model.knows_training = true, or simulate_local_steps = false",
            )
        batch_size = self._batch_size(observation)
        if observation.labels is not None:
            labels, source = observation.labels.clone().long(), "known"
        elif s.labels == "infer":
            labels, source = infer_labels(observation, generator=generator, batch_size=batch_size), "inferred"
        else:
            labels, source = None, "joint"
        parameters = {n: torch.from_numpy(np.array(v, dtype=np.float32)).requires_grad_(True) for n, v in observation.parameters.items()}
        target = matching_target(observation, local_steps=local_steps)
        weights = layer_weights(list(target), patterns=s.layers, scheme=s.layer_weights)
        box = pixel_box(normalization_of(observation.model))
        return _Problem(observation, box, parameters, target, weights, labels, batch_size, local_steps), source

    def _batch_size(self, observation: Observation) -> int:
        if observation.labels is not None:
            return int(observation.labels.shape[0])
        if observation.threat_model.knows_batch_size:
            return observation.batch_size
        if self.settings.batch_size:
            return self.settings.batch_size
        fix = "set attack.batch_size to the attacker's guess"
        raise ConfigError("attack.batch_size", "the threat model hides the batch size and no guess is set", fix)

    def _initial(self, shape: tuple[int, ...], box: Box, generator: torch.Generator) -> torch.Tensor:
        low, high = box
        if self.settings.init == "randn":
            x = torch.randn(shape, generator=generator)
        elif self.settings.init == "rand":
            x = low + (high - low) * torch.rand(shape, generator=generator)
        else:
            x = torch.zeros(shape)
        return x.clamp(low, high) if self.settings.boxed else x

    def _trial(self, problem: _Problem, steps: int, clock: BudgetClock, generator: torch.Generator) -> _Trial:
        """One random start: up to ``steps`` optimizer steps; the iterate with the lowest objective is kept."""
        s = self.settings
        low, high = problem.box
        x = self._initial((problem.batch_size, *problem.observation.input_shape), problem.box, generator).requires_grad_(True)
        soft = None
        if problem.labels is None:
            soft = torch.randn((problem.batch_size, problem.observation.model.num_classes), generator=generator).requires_grad_(True)
        variables = [x] if soft is None else [x, soft]
        targets = problem.labels if soft is None else soft
        assert targets is not None
        optimizer, schedule = OPTIMIZERS.get(s.optimizer)(variables, OptimizerSpec(s.learning_rate, steps, s.lr_decay, s.line_search))
        objective = OBJECTIVES.get(s.objective)
        prior = PRIORS.get(s.prior)
        names = None if problem.local_steps else list(problem.weights)
        values: list[float] = []

        def loss_at() -> torch.Tensor:
            simulated = simulate(problem.observation, problem.parameters, x, targets, local_steps=problem.local_steps, names=names)
            total = objective(simulated, problem.target, problem.weights)
            return total + s.prior_weight * prior(x) if s.prior_weight else total

        def closure() -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            total = loss_at()
            grads = torch.autograd.grad(total, variables)
            for v, g in zip(variables, grads, strict=True):
                v.grad = g.sign() if s.signed else g
            values.append(float(total.detach()))
            return total

        def snapshot() -> tuple[torch.Tensor, torch.Tensor | None]:
            return x.detach().clone(), None if soft is None else soft.detach().clone()

        best_value, best = math.inf, snapshot()
        history: list[float] = []
        for _ in range(steps):
            before = snapshot()
            values.clear()
            optimizer.step(closure)
            value = values[0] if values else math.nan  # the objective at ``before``
            history.append(value)
            if value < best_value:
                best_value, best = value, before
            if schedule is not None:
                schedule.step()
            if s.boxed:
                with torch.no_grad():
                    x.clamp_(low, high)
            if not math.isfinite(value) or not torch.isfinite(x).all():
                break  # diverged (L-BFGS without line search can)
            if not clock.tick(clock.budget.max_iterations):
                break
        if torch.isfinite(x).all():  # the last iterate has not been scored yet
            with torch.enable_grad():
                final = float(loss_at().detach())
            if final < best_value:
                best_value, best = final, snapshot()
        inputs, best_soft = best
        labels = problem.labels if best_soft is None else best_soft.argmax(dim=-1)
        assert labels is not None
        return _Trial(inputs=inputs, labels=labels.clone(), objective=best_value, history=history)
