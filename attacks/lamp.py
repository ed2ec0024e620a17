"""LAMP-style reconstruction: TAG's continuous gradient matching alternated with discrete reordering
steps (Balunović, Dimitrov, Jovanović and Vechev, "LAMP: Extracting Text from Gradients with
Language Model Priors", NeurIPS 2022).

Every ``discrete_every`` Adam steps, LAMP proposes ``candidates`` reorderings of one sentence's
current embedding vectors — swap two tokens, move one token, move a span, move a prefix to the
end — and keeps the one that scores best, then continues the continuous optimization from it.
LAMP scores a candidate by the gradient distance *plus a GPT-2 perplexity prior*; no GPT-2 is
available offline here, so candidates are scored by the gradient distance alone. This is the
paper's "LAMP without prior" ablation, not full LAMP: expect less gain from the discrete steps
than the paper reports, most of which it attributes to the language model.

After the budget, the projected token sentence is polished (our addition, same scoring): greedy
rounds over sampled swaps and moves of its tokens and, when the word-embedding gradient leaked the
bag of tokens, replacements of a position's token by a leaked one (one the sentence lacks, if any).
Like LAMP, the projection is restricted to the leaked tokens when available (``restrict_to_leaked``).

Budget: the continuous phase (Adam and discrete steps) gets ``1 - polish_share`` of the iterations
and seconds, the polish the rest. Each Adam step, discrete step and polish round counts one
iteration; a discrete step or polish round evaluates up to ``candidates`` gradients (without second
derivatives, about a third of an Adam step each). Compare LAMP with TAG at equal wall time
(``Budget.max_seconds``), as ``benchmarks/attack_text.py`` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attacks.base import BudgetClock
from attacks.tag import GradientMatchingTextAttack, TagSettings, TextProblem, token_distance
from attacks.text import compose
from secure_ffm.errors import ConfigError

MOVES = ("swap", "move", "span", "rotate")


@dataclass(frozen=True)
class LampSettings(TagSettings):
    discrete_every: int = 25
    """Adam steps between two discrete steps (LAMP: 75 over 2000 iterations; fewer here for small budgets)."""
    candidates: int = 16
    """Reorderings scored per discrete step or polish round (LAMP: 200 with a GPT-2 prior)."""
    polish_share: float = 0.25
    """Fraction of the iteration and time budget left to the token-space polish (0: no polish)."""
    polish_patience: int = 5
    """Stop the polish after this many rounds in a row without improvement."""
    replace_from_leaked: bool = True
    """In the polish, also try putting a leaked token the sentence lacks at a position."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("discrete_every", "candidates", "polish_patience"):
            if getattr(self, key) < 1:
                raise ConfigError(f"attack.{key}", f"must be at least 1, got {getattr(self, key)}")
        if not 0.0 <= self.polish_share < 1.0:
            raise ConfigError("attack.polish_share", f"must lie in [0, 1), got {self.polish_share}")


def _randint(high: int, generator: torch.Generator) -> int:
    return int(torch.randint(high, (1,), generator=generator))


def reorder(order: list[int], move: str, generator: torch.Generator) -> list[int]:
    """One of LAMP's transformations of a sequence of positions ``order`` (returns a new list)."""
    n = len(order)
    out = list(order)
    if n < 2:
        return out
    if move == "swap":
        i, j = _randint(n, generator), _randint(n - 1, generator)
        j += j >= i
        out[i], out[j] = out[j], out[i]
    elif move == "move":
        token = out.pop(_randint(n, generator))
        out.insert(_randint(n, generator), token)
    elif move == "span":
        start = _randint(n, generator)
        end = start + 1 + _randint(n - start, generator)
        span, rest = out[start:end], out[:start] + out[end:]
        at = _randint(len(rest) + 1, generator)
        out = rest[:at] + span + rest[at:]
    elif move == "rotate":
        cut = 1 + _randint(n - 1, generator)
        out = out[cut:] + out[:cut]
    else:
        raise ValueError(f"unknown move {move!r}")
    return out


def _spent(clock: BudgetClock) -> bool:
    budget = clock.budget
    return clock.iterations >= budget.max_iterations or bool(budget.max_seconds and clock.elapsed() >= budget.max_seconds)


def _vector_distance(problem: TextProblem, vectors: torch.Tensor) -> float:
    return float(problem.match(compose(vectors, problem.layout, problem.table), problem.layout, problem.labels, create_graph=False))


def free_positions(problem: TextProblem, row: int) -> list[int]:
    return torch.nonzero(problem.layout.free[row]).flatten().tolist()


class Lamp(GradientMatchingTextAttack):
    """TAG plus LAMP's discrete reordering steps, scored by gradient distance only (no GPT-2 prior offline)."""

    name = "lamp"
    settings_class = LampSettings
    paper = "Balunović et al., LAMP: Extracting Text from Gradients with Language Model Priors, NeurIPS 2022"

    def _candidate_orders(self, problem: TextProblem, generator: torch.Generator, count: int) -> list[tuple[int, list[int], list[int]]]:
        """``count`` random (row, positions, reordered positions) triples over rows with at least two free positions."""
        rows = [r for r in range(problem.layout.shape[0]) if len(free_positions(problem, r)) >= 2]
        found = []
        for _ in range(count if rows else 0):
            row = rows[_randint(len(rows), generator)]
            positions = free_positions(problem, row)
            new = reorder(positions, MOVES[_randint(len(MOVES), generator)], generator)
            if new != positions:
                found.append((row, positions, new))
        return found

    def continuous_share(self, settings: TagSettings) -> float:
        assert isinstance(settings, LampSettings)
        return 1.0 - settings.polish_share

    def discrete_step(
        self, problem: TextProblem, vectors: torch.Tensor, steps: int, settings: TagSettings, clock: BudgetClock, generator: torch.Generator
    ) -> torch.Tensor | None:
        assert isinstance(settings, LampSettings)
        if steps % settings.discrete_every:
            return None
        best_value, best = _vector_distance(problem, vectors), None
        for row, positions, new in self._candidate_orders(problem, generator, settings.candidates):
            candidate = vectors.clone()
            candidate[row, positions] = vectors[row, new]
            score = _vector_distance(problem, candidate)
            if score < best_value:
                best_value, best = score, candidate
        clock.tick(clock.budget.max_iterations)
        return best

    def finish(
        self, problem: TextProblem, vectors: torch.Tensor, settings: TagSettings, clock: BudgetClock, generator: torch.Generator
    ) -> tuple[torch.Tensor, float]:
        assert isinstance(settings, LampSettings)
        vocabulary = problem.vocabulary(settings.restrict_to_leaked)
        ids = problem.project(vectors, settings)
        best = token_distance(problem, ids)
        spare = problem.restricted(settings.restrict_to_leaked) and settings.replace_from_leaked
        stale = 0
        while settings.polish_share and stale < settings.polish_patience and not _spent(clock):
            improved = False
            for candidate in self._token_candidates(problem, ids, vocabulary if spare else None, settings.candidates, generator):
                if _spent(clock):
                    break
                score = token_distance(problem, candidate)
                if score < best:
                    best, ids, improved = score, candidate, True
            stale = 0 if improved else stale + 1
            clock.tick(clock.budget.max_iterations)
        return ids, best

    def _token_candidates(
        self, problem: TextProblem, ids: torch.Tensor, vocabulary: torch.Tensor | None, count: int, generator: torch.Generator
    ) -> list[torch.Tensor]:
        """Reorderings of the token sentence and, given a leaked vocabulary, substitutions of tokens it lacks."""
        candidates = []
        for row, positions, new in self._candidate_orders(problem, generator, count):
            candidate = ids.clone()
            candidate[row, positions] = ids[row, new]
            candidates.append(candidate)
        if vocabulary is not None and vocabulary.numel():
            used = set(ids[problem.layout.free].tolist())
            pool = [t for t in vocabulary.tolist() if t not in used] or vocabulary.tolist()
            for _ in range(count):
                row = _randint(ids.shape[0], generator)
                positions = free_positions(problem, row)
                if not positions:
                    continue
                candidate = ids.clone()
                candidate[row, positions[_randint(len(positions), generator)]] = pool[_randint(len(pool), generator)]
                if not torch.equal(candidate, ids):
                    candidates.append(candidate)
        return candidates
