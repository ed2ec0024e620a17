"""Optimizers of the candidate inputs, registered in :data:`OPTIMIZERS`.

* ``lbfgs``: L-BFGS, as in Deep Leakage from Gradients (Zhu et al., NeurIPS 2019). One
  optimizer step is one L-BFGS iteration (``max_iter=1``; the curvature history is kept
  between steps), so the iteration budget counts the same work as the original's inner loop.
  Optionally with a strong-Wolfe line search (several objective evaluations per step).
* ``adam``: Adam, as in Inverting Gradients (Geiping et al., NeurIPS 2020), which feeds it the
  *sign* of the gradient (the attack's ``signed`` setting) and decays the step size by 10 at
  3/8, 5/8 and 7/8 of the iterations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from secure_ffm.registry import Registry

LR_DECAY_MILESTONES = (3 / 8, 5 / 8, 7 / 8)
LR_DECAY_FACTOR = 0.1


@dataclass(frozen=True)
class OptimizerSpec:
    learning_rate: float
    steps: int
    """Planned steps of one restart (the decay milestones are fractions of it)."""
    lr_decay: bool = False
    line_search: bool = False


Schedule = torch.optim.lr_scheduler.LRScheduler
OptimizerFactory = Callable[[Sequence[torch.Tensor], OptimizerSpec], tuple[torch.optim.Optimizer, Schedule | None]]

OPTIMIZERS: Registry[OptimizerFactory] = Registry("optimizer")


def _decay(optimizer: torch.optim.Optimizer, spec: OptimizerSpec) -> Schedule | None:
    if not spec.lr_decay:
        return None
    milestones = sorted({max(1, int(f * spec.steps)) for f in LR_DECAY_MILESTONES})
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=LR_DECAY_FACTOR)


@OPTIMIZERS.register("adam")
def adam(variables: Sequence[torch.Tensor], spec: OptimizerSpec) -> tuple[torch.optim.Optimizer, Schedule | None]:
    optimizer = torch.optim.Adam(list(variables), lr=spec.learning_rate)
    return optimizer, _decay(optimizer, spec)


@OPTIMIZERS.register("lbfgs")
def lbfgs(variables: Sequence[torch.Tensor], spec: OptimizerSpec) -> tuple[torch.optim.Optimizer, Schedule | None]:
    optimizer = torch.optim.LBFGS(
        list(variables),
        lr=spec.learning_rate,
        max_iter=1,
        history_size=100,
        tolerance_grad=0.0,
        tolerance_change=0.0,
        line_search_fn="strong_wolfe" if spec.line_search else None,
    )
    return optimizer, _decay(optimizer, spec)
