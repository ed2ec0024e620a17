"""TAG: gradient matching on a transformer text classifier (Deng et al., "TAG: Gradient Attack on
Transformer-based Language Models", Findings of EMNLP 2021).

The attacker optimizes dummy word-embedding vectors ``(B, L, d)`` with Adam so that the gradient
they induce matches the observed one under TAG's distance (L2 plus ``alpha`` times L1, see
:class:`~attacks.text.GradientMatch`), then maps every vector to the token whose embedding is most
cosine-similar. As in breaching, the word-embedding lookup is cut off (:mod:`attacks.text`), so the
word-embedding gradient is not matched; when it is observed (full fine-tuning) it is used instead
to restrict the final projection to the leaked bag of tokens (``restrict_to_leaked``, as LAMP
does; Melis et al. 2019), and — our addition — to project onto a *cover* of that bag, every leaked
token at least once (``cover_leaked``). Token F1 then says little (the bag gives it); what the
optimization adds is the order (ROUGE-2, ROUGE-L). Labels come from the head gradient unless the
threat model gives them.

Deviations from the paper: both distance terms are normalized by the observed gradient; all
parameters weigh the same by default (``layer_weights = "linear"`` favours the input side, as TAG
does; equal weights converged faster on MiniLM); the step size decays linearly; attention runs on
PyTorch's math kernel, which has second derivatives.

Known structure used (as TAG and LAMP assume): the batch size and every sequence's length; the
tokenizer's special tokens are then pinned (``pin_special_tokens``). ``update`` observations are
turned into a gradient by :func:`~attacks.text.estimated_gradient` (exact for one local step).

Published anchor: breaching reports TAG at ROUGE-1 0.80 on a 3-layer transformer; our target is the
6-layer MiniLM, so expect less at small budgets (``benchmarks/attack_text.py`` measures it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from attacks.base import Attack, AttackSettings, Budget, BudgetClock, Observation, Reconstruction
from attacks.text import (
    LAYER_WEIGHTS,
    GradientMatch,
    SequenceLayout,
    check_text_model,
    compose,
    compose_ids,
    content_vocabulary,
    cover_tokens,
    decode,
    estimated_gradient,
    eval_mode,
    infer_labels,
    logits_from_embeddings,
    nonzero_rows,
    project_to_tokens,
    sequence_layout,
    word_embedding_name,
    word_embeddings,
)
from secure_ffm.errors import ConfigError


@dataclass(frozen=True)
class TagSettings(AttackSettings):
    step_size: float = 0.02
    """Adam step size on the word-embedding vectors (whose entries have a standard deviation near 0.05 in MiniLM)."""
    final_step_fraction: float = 0.1
    """The step size decays linearly to this fraction of ``step_size`` over the iteration budget."""
    alpha: float = 0.01
    """Weight of the L1 term of TAG's distance (both terms normalized by the observed gradient)."""
    layer_weights: str = "none"
    """``none``: every parameter counts equally (converged fastest on MiniLM); ``linear``: from 1 (input side) down to 1/P (head)."""
    init_scale: float = 0.3
    """Dummy vectors start as Gaussian noise with this many times the embedding table's standard deviation."""
    grad_clip: float = 1.0
    """Clip the norm of the step direction's gradient (0: no clipping)."""
    restrict_to_leaked: bool = True
    """Project only onto tokens whose word-embedding gradient row is non-zero, when that gradient is observed."""
    cover_leaked: bool = True
    """With the leaked bag, project so that every leaked token fills at least one position (an exact assignment;
    our addition: the bag and the number of positions are both known, see :func:`~attacks.text.cover_tokens`)."""
    pin_special_tokens: bool = True
    """Fix the tokenizer's special tokens at the known sequence ends instead of optimizing them."""

    def __post_init__(self) -> None:
        for key in ("step_size", "init_scale"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"attack.{key}", f"must be positive, got {getattr(self, key)}")
        if not 0.0 < self.final_step_fraction <= 1.0:
            raise ConfigError("attack.final_step_fraction", f"must lie in (0, 1], got {self.final_step_fraction}")
        if self.alpha < 0 or self.grad_clip < 0:
            raise ConfigError("attack.alpha" if self.alpha < 0 else "attack.grad_clip", "must be >= 0")
        if self.layer_weights not in LAYER_WEIGHTS:
            raise ConfigError("attack.layer_weights", f"unknown value {self.layer_weights!r}", f"choose one of: {', '.join(LAYER_WEIGHTS)}")


@dataclass
class TextProblem:
    """Everything one text reconstruction works on."""

    observation: Observation
    layout: SequenceLayout
    match: GradientMatch
    table: torch.Tensor
    """The word-embedding table (detached)."""
    labels: torch.Tensor
    leaked: list[int] | None
    """Token ids with a non-zero word-embedding gradient (None when that gradient is not observed)."""

    def restricted(self, restrict: bool) -> bool:
        return bool(restrict and self.leaked)

    def project(self, vectors: torch.Tensor, settings: TagSettings) -> torch.Tensor:
        """Token ids ``(B, L)`` for word-embedding vectors: nearest (allowed) tokens, or a cover of the leaked bag."""
        vocabulary = self.vocabulary(settings.restrict_to_leaked)
        if settings.cover_leaked and self.restricted(settings.restrict_to_leaked):
            free = cover_tokens(vectors, self.table, self.layout.free, vocabulary)
        else:
            free = project_to_tokens(vectors, self.table, vocabulary)
        return compose_ids(free, self.layout)

    def vocabulary(self, restrict: bool) -> torch.Tensor:
        """Token ids the free positions may take: the leaked ones (when ``restrict``) or all, never special tokens."""
        tokenizer = self.observation.model.tokenizer  # type: ignore[attr-defined]
        vocabulary = content_vocabulary(self.table.shape[0], tokenizer, self.leaked if self.restricted(restrict) else None)
        return vocabulary if vocabulary.numel() else content_vocabulary(self.table.shape[0], tokenizer)


class GradientMatchingTextAttack(Attack):
    """Continuous gradient matching in word-embedding space, then projection onto tokens (TAG's loop).

    Subclasses add discrete steps by overriding :meth:`discrete_step`.
    """

    data_kinds: ClassVar[tuple[str, ...]] = ("text",)
    observes: ClassVar[tuple[str, ...]] = ("gradient", "update", "aggregate")
    settings_class: ClassVar[type[AttackSettings]] = TagSettings

    def reconstruct(self, observation: Observation, *, budget: Budget, generator: torch.Generator) -> Reconstruction:
        self.check(observation)
        check_text_model(observation, self.name)
        settings = self.settings
        assert isinstance(settings, TagSettings)
        clock = budget.clock()
        module = observation.model.module
        with eval_mode(module):
            problem, vectors = self._prepare(observation, settings, generator)
            vectors, best = self._optimize(problem, vectors, settings, clock, generator)
            ids, distance = self.finish(problem, vectors, settings, clock, generator)
        tokenizer = observation.model.tokenizer  # type: ignore[attr-defined]
        ids = ids.cpu()
        return Reconstruction(
            inputs=ids,
            labels=problem.labels.cpu(),
            texts=decode(tokenizer, ids),
            seconds=clock.elapsed(),
            iterations=clock.iterations,
            details={
                "continuous_distance": best,
                "token_distance": distance,
                "leaked_tokens": len(problem.vocabulary(True)) if problem.leaked is not None else None,
                "restricted_to_leaked": problem.restricted(settings.restrict_to_leaked),
                "labels_inferred": observation.labels is None,
            },
        )

    # ------------------------------------------------------------------ steps

    def _prepare(self, observation: Observation, settings: TagSettings, generator: torch.Generator) -> tuple[TextProblem, torch.Tensor]:
        module = observation.model.module
        gradient = estimated_gradient(observation)
        embedding_name = word_embedding_name(module)
        leaked = nonzero_rows(gradient[embedding_name]) if embedding_name in gradient else None
        layout = sequence_layout(observation, pin_special_tokens=settings.pin_special_tokens)
        match = GradientMatch(module, gradient, exclude=[embedding_name], alpha=settings.alpha, layer_weights=settings.layer_weights)
        table = word_embeddings(module).weight.detach()
        batch, length = layout.shape
        if observation.batch_size != batch:
            problem = f"the observation's attention mask has {batch} rows but setup.num_examples is {observation.batch_size}"
            raise ConfigError("setup.num_examples", problem)
        std = float(table.std())
        noise = torch.randn((batch, length, table.shape[1]), generator=generator, dtype=table.dtype)
        vectors = (noise * std * settings.init_scale).to(table.device)
        with torch.no_grad():
            embeds = compose(vectors, layout, table)
            logits = logits_from_embeddings(module, embeds, layout.attention_mask, layout.token_type_ids, layout.position_ids)
            predicted = logits.softmax(dim=-1).mean(dim=0)
        labels = infer_labels(observation, gradient, predicted.cpu()).to(table.device)
        return TextProblem(observation, layout, match, table, labels, leaked), vectors

    def _optimize(
        self, problem: TextProblem, vectors: torch.Tensor, settings: TagSettings, clock: BudgetClock, generator: torch.Generator
    ) -> tuple[torch.Tensor, float]:
        """Adam on the free vectors until the budget is spent; returns the best vectors seen and their distance."""
        vectors = vectors.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([vectors], lr=settings.step_size)
        share = self.continuous_share(settings)
        total = clock.budget.max_iterations
        stop_at = max(1, int(total * share))
        seconds = clock.budget.max_seconds * share
        decay = 1.0 - settings.final_step_fraction
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - decay * min(step / stop_at, 1.0))
        best_value, best = float("inf"), vectors.detach().clone()
        steps = 0
        while True:
            optimizer.zero_grad(set_to_none=True)
            distance = problem.match(compose(vectors, problem.layout, problem.table), problem.layout, problem.labels, create_graph=True)
            distance.backward(inputs=[vectors])
            value = float(distance.detach())
            if value < best_value:
                best_value, best = value, vectors.detach().clone()
            if settings.grad_clip and vectors.grad is not None:
                torch.nn.utils.clip_grad_norm_([vectors], settings.grad_clip)
            optimizer.step()
            schedule.step()
            steps += 1
            if not torch.isfinite(distance) or not clock.tick(total) or _spent(clock, stop_at, seconds):
                break
            replaced = self.discrete_step(problem, vectors.detach(), steps, settings, clock, generator)
            if replaced is not None:
                with torch.no_grad():
                    vectors.copy_(replaced)
            if _spent(clock, stop_at, seconds):
                break
        return best, best_value

    def continuous_share(self, settings: TagSettings) -> float:
        """Fraction of the budget (iterations and seconds) for the continuous phase; the rest is left to :meth:`finish`."""
        return 1.0

    def discrete_step(
        self, problem: TextProblem, vectors: torch.Tensor, steps: int, settings: TagSettings, clock: BudgetClock, generator: torch.Generator
    ) -> torch.Tensor | None:
        """Optionally replace the current vectors after ``steps`` Adam steps (TAG: never)."""
        return None

    def finish(
        self, problem: TextProblem, vectors: torch.Tensor, settings: TagSettings, clock: BudgetClock, generator: torch.Generator
    ) -> tuple[torch.Tensor, float]:
        """Project onto tokens; returns the token ids ``(B, L)`` and their gradient distance."""
        ids = problem.project(vectors, settings)
        return ids, token_distance(problem, ids)


def _spent(clock: BudgetClock, iterations: int, seconds: float) -> bool:
    return clock.iterations >= iterations or bool(seconds and clock.elapsed() >= seconds)


def token_distance(problem: TextProblem, ids: torch.Tensor) -> float:
    """The gradient distance of a token sequence (its true embeddings)."""
    return float(problem.match(problem.table[ids], problem.layout, problem.labels, create_graph=False).detach())


class Tag(GradientMatchingTextAttack):
    """TAG: Adam on word-embedding vectors under an L2 + L1 gradient distance, then nearest-token projection."""

    name = "tag"
    paper = "Deng et al., TAG: Gradient Attack on Transformer-based Language Models, Findings of EMNLP 2021"
