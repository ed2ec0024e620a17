"""Token leakage from the word-embedding gradient (Melis et al., "Exploiting Unintended Feature
Leakage in Collaborative Learning", IEEE S&P 2019).

A token-embedding lookup ``E[input_ids]`` passes gradient only to the rows of ``E`` of the tokens
in the batch: every other row of the word-embedding gradient is exactly zero. So when the
embedding table is trained (``finetune = "full"``), the non-zero rows of the observed gradient —
or of a plain-SGD update, whose delta is ``-lr`` times a sum of such gradients — are the batch's
bag of tokens, with no optimization. LAMP and TAG follow-ups (Balunović et al., NeurIPS 2022) use
this set to restrict their search; :mod:`attacks.tag` and :mod:`attacks.lamp` do too.

What it does not give: how often a token occurs (row norms mix occurrences with how much each one
mattered), nor their order, nor which example of a batch holds which token. Under an ``aggregate``
observation it gives the union of every client's tokens: secure aggregation hides who wrote a
word, not that someone did. When the table is not trained — ``lora`` (adapters on query/value and
the head), ``head`` fine-tuning and the prompt modes (``prompt``, ``prefix``, ``p-tuning``: the prompt's own
embedding rows are virtual tokens, all used by every example) — there is no embedding gradient and this attack recovers
nothing: it returns an empty set and says why in ``details["reason"]``. Noise (DP-SGD) makes every
row non-zero; ``relative_tolerance`` then trades recall for precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attacks.base import OBSERVATIONS, Attack, AttackSettings, Budget, Observation, Reconstruction
from attacks.text import check_text_model, nonzero_rows, word_embedding_name
from secure_ffm.errors import ConfigError


@dataclass(frozen=True)
class EmbeddingLeakageSettings(AttackSettings):
    relative_tolerance: float = 0.0
    """A row counts as used when its norm exceeds this fraction of the largest row norm (0: any non-zero row)."""
    include_special: bool = False
    """Also report the tokenizer's special tokens (``[CLS]``, ``[SEP]``), which every sequence holds."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.relative_tolerance < 1.0:
            raise ConfigError("attack.relative_tolerance", f"must lie in [0, 1), got {self.relative_tolerance}")


class EmbeddingLeakage(Attack):
    """The bag of tokens of the batch: the non-zero rows of the word-embedding gradient or update."""

    name = "embedding-leakage"
    data_kinds = ("text",)
    observes = OBSERVATIONS
    settings_class = EmbeddingLeakageSettings
    paper = "Melis et al., Exploiting Unintended Feature Leakage in Collaborative Learning, IEEE S&P 2019"

    def reconstruct(self, observation: Observation, *, budget: Budget, generator: torch.Generator) -> Reconstruction:
        """``inputs`` is ``(1, K)``: the ``K`` recovered token ids in increasing order (a set, not a sentence)."""
        self.check(observation)
        check_text_model(observation, self.name)
        settings = self.settings
        assert isinstance(settings, EmbeddingLeakageSettings)
        clock = budget.clock()
        tokenizer = observation.model.tokenizer  # type: ignore[attr-defined]
        name = word_embedding_name(observation.model.module)
        details: dict[str, object] = {"bag_of_tokens": True, "embedding_parameter": name, "embedding_trained": name in observation.observed}
        if name in observation.observed:
            ids = nonzero_rows(observation.observed[name], relative_tolerance=settings.relative_tolerance)
            if not settings.include_special:
                special = set(tokenizer.all_special_ids)
                ids = [i for i in ids if i not in special]
        else:
            ids = []
            details["reason"] = "the word-embedding table is not trained (lora, head or prompt fine-tuning): its gradient is not observed"
        clock.tick(1)
        tokens = tokenizer.convert_ids_to_tokens(ids)
        details.update(token_ids=ids, tokens=tokens)
        return Reconstruction(
            inputs=torch.tensor(ids, dtype=torch.long).reshape(1, -1),
            labels=None,
            texts=[" ".join(tokens)],
            seconds=clock.elapsed(),
            iterations=clock.iterations,
            details=details,
        )
