"""Choose DP-SGD's expected batch size and local steps for a client's data size, budget and compute.

For a fixed privacy budget and a fixed compute budget (``epochs`` passes over the
client's n examples), DP-SGD trades the expected batch size B against the number of
steps T = rounds · s: B · T = epochs · n. Ponomareva et al. ("How to DP-fy ML", JAIR
2023, section 5.4) advise the largest batch the compute allows, and Li et al. (ICLR 2022)
find large batches with few steps best for private fine-tuning; both follow from one
number, the noise-to-progress ratio

    r = z / (B · sqrt(T)),

where z is the noise multiplier calibrated so that T steps at sampling rate q = B / n
spend exactly the target ε. Each step adds N(0, (zC / B)^2) per coordinate to the mean
clipped gradient, so T steps add noise of std zC·sqrt(T) / B per coordinate, while T
steps whose clipped mean gradient has norm C move the model by up to T·C: r is the
ratio of the two. :func:`recommend` evaluates s in {1, 2, 4, ...} and returns the
candidate of smallest r (up to :data:`TIE_TOLERANCE`, towards more steps).

r compares a per-coordinate noise with the whole signal, so it is a lower bound on the
noise actually felt (a model whose gradients spread over d_eff directions sees about
r·sqrt(d_eff)). :data:`NOISE_TO_PROGRESS_LIMIT` is therefore a floor below which nothing
is promised, not a guarantee of utility above it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from secure_ffm.config import ClientConfig, PrivacyConfig
from secure_ffm.errors import ConfigError

NOISE_TO_PROGRESS_LIMIT = 0.05
"""Above this r, even the recommended setting is too noisy to train usefully.

A model whose useful update spreads over d directions sees noise of about r·sqrt(d)
times its progress. In benchmarks/peft_methods.py (MiniLM, about 100 examples per
client, ε = 8, 18 steps of batch 16: r ≈ 0.009) the trained part learned at
r·sqrt(d) ≈ 0.3 (classification head, d = 770) and 0.6 (soft prompt, d = 4,610) and
collapsed to near chance at r·sqrt(d) ≈ 2.6 (LoRA, d = 74,498). At r = 0.05 the
smallest part this project trains, the 770-parameter head, would already sit at
r·sqrt(d) ≈ 1.4, between the two: above it, no model this project trains can be
expected to learn, whatever its size, so the planner warns."""

TIE_TOLERANCE = 0.1
"""Candidates whose r is within this fraction of the smallest count as equally good; of those the one with the most
steps is recommended. r assumes each step makes progress C whatever the step count, which holds for few
steps only while the loss is far from its minimum; in the central-limit regime (small ε) r is nearly flat in s
(z grows as the batch grows), and more, smaller steps then optimise better at the same noise."""

MAX_CANDIDATES = 20
"""At most this many powers of two of local steps per round are tried (s up to 2^19)."""


@dataclass(frozen=True)
class Candidate:
    """One setting of local steps per round and expected batch size, with its calibrated noise."""

    steps_per_round: int
    """s: local DP-SGD steps each round (``client.local_steps``)."""
    total_steps: int
    """T = rounds · s."""
    batch_size: int
    """B = round(epochs · n / T), at least 1 and at most n (``client.batch_size``)."""
    sample_rate: float
    """q = B / n: Poisson sampling rate."""
    noise_multiplier: float
    """z calibrated so that the T steps spend the target ε (never more)."""
    epsilon: float
    """ε the T steps spend, by the accountant."""
    noise_to_progress: float
    """r = z / (B · sqrt(T)); lower is better."""


@dataclass(frozen=True)
class Recommendation:
    """The candidates tried for one client size and the one of smallest noise-to-progress ratio."""

    num_examples: int
    target_epsilon: float
    delta: float
    rounds: int
    epochs: float
    candidates: tuple[Candidate, ...]
    best: Candidate

    @property
    def too_little_data(self) -> bool:
        """True when even the best candidate's r exceeds :data:`NOISE_TO_PROGRESS_LIMIT`."""
        return self.best.noise_to_progress > NOISE_TO_PROGRESS_LIMIT


def candidate_steps(num_examples: int, *, rounds: int, epochs: float) -> list[int]:
    """s = 1, 2, 4, ... while rounds · s steps of at least one expected example fit in ``epochs`` passes (s = 1 always)."""
    steps, s = [1], 2
    while rounds * s <= epochs * num_examples and len(steps) < MAX_CANDIDATES:
        steps.append(s)
        s *= 2
    return steps


def candidate_settings(num_examples: int, *, rounds: int, epochs: float) -> list[tuple[int, int]]:
    """``(s, B)`` of every candidate :func:`recommend` tries: local steps per round and the expected batch that spends
    ``epochs`` passes over the client's data in ``rounds · s`` steps."""
    return [
        (s, min(num_examples, max(1, round(epochs * num_examples / (rounds * s)))))
        for s in candidate_steps(num_examples, rounds=rounds, epochs=epochs)
    ]


def candidate_calibrations(
    num_examples: int, *, target_epsilon: float, delta: float, rounds: int, epochs: float, accountant: str, max_grad_norm: float
) -> list[tuple[float, float, float, int, str]]:
    """The calibrations :func:`recommend` will ask for (:data:`secure_ffm.privacy.dp_sgd.Calibration`), so that a caller
    can run them in parallel first (:func:`secure_ffm.privacy.dp_sgd.calibrate_all`)."""
    from secure_ffm.privacy.dp_sgd import calibration_key

    privacy = PrivacyConfig(mode="dp-sgd", target_epsilon=target_epsilon, delta=delta, accountant=accountant, max_grad_norm=max_grad_norm)
    return [
        calibration_key(num_examples, ClientConfig(batch_size=batch, local_steps=s), privacy, rounds)
        for s, batch in candidate_settings(num_examples, rounds=rounds, epochs=epochs)
    ]


def recommend(
    num_examples: int,
    *,
    target_epsilon: float,
    delta: float,
    rounds: int,
    epochs: float,
    accountant: str,
    max_grad_norm: float,
) -> Recommendation:
    """The expected batch size and local steps per round of smallest noise-to-progress ratio r = z / (B · sqrt(T))
    (ties within :data:`TIE_TOLERANCE` go to more steps).

    Parameters
    ----------
    num_examples
        n, the client's examples.
    target_epsilon, delta, accountant, max_grad_norm
        As ``[privacy]``; ``delta = 0`` picks 1/(10 n) as a run does.
    rounds
        Rounds the client is budgeted to train in (``privacy.planned_rounds`` or ``server.rounds``).
    epochs
        Compute budget: expected passes over the client's data over the whole run (B · T = epochs · n).

    Every candidate's z comes from :func:`secure_ffm.privacy.dp_sgd.plan_client`, the calibration a run with
    ``client.batch_size = B`` and ``client.local_steps = s`` would use, so the recommendation's z and ε are the
    run's. Candidates whose ε cannot be met are left out; :class:`ConfigError` on ``privacy.target_epsilon`` when
    none can.
    """
    from secure_ffm.privacy.dp_sgd import plan_client

    if num_examples < 1:
        raise ValueError(f"num_examples must be positive, got {num_examples}")
    if rounds < 1:
        raise ConfigError("server.rounds", f"must be positive, got {rounds}")
    if not (math.isfinite(epochs) and epochs > 0):
        raise ConfigError("--epochs", f"must be a positive number of passes over each client's data, got {epochs!r}", "use e.g. 1")
    privacy = PrivacyConfig(mode="dp-sgd", target_epsilon=target_epsilon, delta=delta, accountant=accountant, max_grad_norm=max_grad_norm)
    candidates, last_error = [], None
    for s, batch in candidate_settings(num_examples, rounds=rounds, epochs=epochs):
        total = rounds * s
        try:
            plan = plan_client(num_examples, client=ClientConfig(batch_size=batch, local_steps=s), privacy=privacy, planned_rounds=rounds)
        except ConfigError as error:  # ε unreachable at this sampling rate and number of steps
            last_error = error
            continue
        r = plan.noise_multiplier / (batch * math.sqrt(total))
        candidates.append(Candidate(s, total, batch, plan.sample_rate, plan.noise_multiplier, plan.planned_epsilon, r))
        resolved_delta = plan.delta
    if not candidates:
        assert last_error is not None
        raise last_error
    smallest = min(c.noise_to_progress for c in candidates)
    best = max((c for c in candidates if c.noise_to_progress <= smallest * (1 + TIE_TOLERANCE)), key=lambda c: c.total_steps)
    return Recommendation(num_examples, target_epsilon, resolved_delta, rounds, epochs, tuple(candidates), best)
