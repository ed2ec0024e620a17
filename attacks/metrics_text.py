"""Scoring reconstructed text against the client's true sentences (pure functions).

Definitions (all scores lie in ``[0, 1]``; an empty reference and an empty candidate score 1, an
empty side against a non-empty one scores 0):

* **token precision / recall / F1** compare *multisets* of tokens by default: a token that occurs
  twice in the reference counts once per occurrence it is matched (clipped counts, as in ROUGE-1
  and BLEU). ``multiset=False`` compares *sets* — the right measure for a bag-of-tokens leak
  (Melis et al., S&P 2019), which reveals which tokens occur but not how often.
* **ROUGE-N** (Lin, "ROUGE", ACL Workshop 2004): n-gram overlap with clipped counts; precision
  over the candidate's n-grams, recall over the reference's, F the harmonic mean (F1).
* **ROUGE-L**: the longest common subsequence (not necessarily contiguous), F1 of
  ``LCS/len(candidate)`` and ``LCS/len(reference)``.
* **exact recovery**: the token sequences are identical.

:func:`score_texts` scores a batch: reconstructed sentences are paired one-to-one with the true ones
by an optimal assignment maximizing the summed ROUGE-L F (the order of examples in a batch is not
observable from a gradient), then averaged over the reconstructed sentences. Token metrics use the tokenizer's subword tokens with
special and padding tokens removed; ROUGE uses lower-cased words and punctuation of the decoded text
(how breaching and the TAG/LAMP papers report it), so a subword split error costs a whole word.
No ROUGE package is used: these few lines are the reference implementation the tests pin down.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)


@dataclass(frozen=True)
class PRF:
    """Precision, recall and their harmonic mean."""

    precision: float
    recall: float
    f1: float


def _prf(overlap: float, candidate_total: float, reference_total: float) -> PRF:
    if candidate_total == 0 and reference_total == 0:
        return PRF(1.0, 1.0, 1.0)
    precision = overlap / candidate_total if candidate_total else 0.0
    recall = overlap / reference_total if reference_total else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return PRF(precision, recall, f1)


def words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks of ``text`` (the unit of ROUGE here)."""
    return _WORD.findall(text.lower())


def token_prf(candidate: Sequence[Hashable], reference: Sequence[Hashable], *, multiset: bool = True) -> PRF:
    """Token precision, recall and F1 of ``candidate`` against ``reference`` (order ignored)."""
    if not multiset:
        found, true = set(candidate), set(reference)
        return _prf(len(found & true), len(found), len(true))
    overlap = sum((Counter(candidate) & Counter(reference)).values())
    return _prf(overlap, len(candidate), len(reference))


def ngrams(tokens: Sequence[Hashable], n: int) -> Counter[tuple[Hashable, ...]]:
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def rouge_n(candidate: Sequence[Hashable], reference: Sequence[Hashable], n: int) -> PRF:
    """ROUGE-N with clipped n-gram counts."""
    found, true = ngrams(candidate, n), ngrams(reference, n)
    return _prf(sum((found & true).values()), sum(found.values()), sum(true.values()))


def lcs_length(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Length of the longest common subsequence (dynamic programming, O(len(a) * len(b)))."""
    if not a or not b:
        return 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(candidate: Sequence[Hashable], reference: Sequence[Hashable]) -> PRF:
    """ROUGE-L: F1 of the longest common subsequence."""
    return _prf(lcs_length(candidate, reference), len(candidate), len(reference))


def exact_match(candidate: Sequence[Hashable], reference: Sequence[Hashable]) -> bool:
    return list(candidate) == list(reference)


def pair_sequences(
    candidates: Sequence[Sequence[Hashable]],
    references: Sequence[Sequence[Hashable]],
    score: Callable[[Sequence[Hashable], Sequence[Hashable]], float] | None = None,
) -> list[tuple[int, int]]:
    """One-to-one pairs ``(candidate index, reference index)`` maximizing the summed ``score``.

    ``score`` defaults to the ROUGE-L F. With unequal counts, the surplus stays unpaired.
    Solved exactly with the Hungarian method (scipy's ``linear_sum_assignment``).
    """
    if not candidates or not references:
        return []
    scorer = score or (lambda c, r: rouge_l(c, r).f1)
    gain = np.array([[scorer(c, r) for r in references] for c in candidates], dtype=np.float64)
    rows, cols = linear_sum_assignment(gain, maximize=True)
    return sorted(zip(rows.tolist(), cols.tolist(), strict=True))


def content_tokens(ids: Iterable[int], special_ids: Iterable[int]) -> list[int]:
    """``ids`` without special tokens (``[CLS]``, ``[SEP]``, ``[PAD]``...)."""
    special = set(int(i) for i in special_ids)
    return [int(i) for i in ids if int(i) not in special]


def score_pair(candidate_ids: Sequence[int], reference_ids: Sequence[int], candidate_text: str, reference_text: str) -> dict[str, float]:
    """Every metric for one reconstructed sentence (token ids without special tokens, and decoded text)."""
    token = token_prf(candidate_ids, reference_ids)
    cand_words, ref_words = words(candidate_text), words(reference_text)
    return {
        "token_precision": token.precision,
        "token_recall": token.recall,
        "token_f1": token.f1,
        "rouge1": rouge_n(cand_words, ref_words, 1).f1,
        "rouge2": rouge_n(cand_words, ref_words, 2).f1,
        "rougeL": rouge_l(cand_words, ref_words).f1,
        "exact": float(exact_match(candidate_ids, reference_ids)),
    }


METRICS = ("token_precision", "token_recall", "token_f1", "rouge1", "rouge2", "rougeL", "exact")


def _rows(ids: torch.Tensor | Sequence[Sequence[int]]) -> list[list[int]]:
    if isinstance(ids, torch.Tensor):
        return [[int(v) for v in row] for row in ids.reshape(ids.shape[0], -1).tolist()]
    return [[int(v) for v in row] for row in ids]


def score_token_ids(
    candidates: torch.Tensor | Sequence[Sequence[int]],
    references: torch.Tensor | Sequence[Sequence[int]],
    tokenizer: Any,
) -> dict[str, Any]:
    """Pair reconstructed token-id rows with distinct true rows, then score each pair.

    Returns ``{"mean": {...}, "median": {...}, "per_sample": [...], "pairing": [...]}``, like
    :func:`attacks.metrics_image.score_images`: one per-sample entry per reconstructed row, in
    order, naming its original (``truth_index``); means are over the reconstructed rows (with
    more reconstructions than originals, the surplus scores 0).
    """
    special = list(getattr(tokenizer, "all_special_ids", []))
    cand = [content_tokens(row, special) for row in _rows(candidates)]
    ref = [content_tokens(row, special) for row in _rows(references)]
    cand_text = [tokenizer.decode(row) for row in cand]
    ref_text = [tokenizer.decode(row) for row in ref]
    pairs = dict(pair_sequences([words(t) for t in cand_text], [words(t) for t in ref_text]))
    per_sample: list[dict[str, Any]] = []
    for c in range(len(cand)):
        r = pairs.get(c)
        if r is None:
            scores = {m: 0.0 for m in METRICS}
            per_sample.append({"index": c, "truth_index": None, "text": cand_text[c], "truth_text": None, **scores})
        else:
            scores = score_pair(cand[c], ref[r], cand_text[c], ref_text[r])
            per_sample.append({"index": c, "truth_index": r, "text": cand_text[c], "truth_text": ref_text[r], **scores})
    mean = {m: float(np.mean([s[m] for s in per_sample])) if per_sample else 0.0 for m in METRICS}
    median = {m: float(np.median([s[m] for s in per_sample])) if per_sample else 0.0 for m in METRICS}
    return {"mean": mean, "median": median, "per_sample": per_sample, "pairing": [pairs.get(c) for c in range(len(cand))]}


def score_texts(reconstruction: Any, truth: Any, tokenizer: Any) -> dict[str, Any]:
    """Score an :class:`~attacks.base.Reconstruction` against the :class:`~attacks.base.GroundTruth`.

    Sentences (``reconstruction.inputs``: token ids ``(B, L)``) are scored with
    :func:`score_token_ids` against ``truth.inputs["input_ids"]``, plus ``label_accuracy`` of the
    paired examples when the reconstruction has labels. A bag of tokens
    (``reconstruction.details["bag_of_tokens"]``, from ``embedding-leakage``) is scored with
    :func:`bag_of_tokens_scores` instead: sets, no order, so no ROUGE.
    """
    references = truth.inputs["input_ids"]
    details = getattr(reconstruction, "details", None) or {}
    if details.get("bag_of_tokens"):
        scores = bag_of_tokens_scores(reconstruction.inputs.flatten().tolist(), references, tokenizer)
        sample = {"index": 0, "truth_index": None, "text": (reconstruction.texts or [""])[0], **scores}
        return {"mean": dict(scores), "median": dict(scores), "per_sample": [sample], "pairing": [None]}
    scored = score_token_ids(reconstruction.inputs, references, tokenizer)
    labels = getattr(reconstruction, "labels", None)
    if labels is not None and len(scored["per_sample"]):
        true = np.asarray(truth.labels).reshape(-1)
        predicted = np.asarray(labels).reshape(-1)
        samples = scored["per_sample"]
        paired = [(s["index"], s["truth_index"]) for s in samples if s["truth_index"] is not None and s["index"] < len(predicted)]
        hits = [float(predicted[i] == true[j]) for i, j in paired]
        scored["mean"]["label_accuracy"] = float(np.mean(hits)) if hits else 0.0
    return scored


def bag_of_tokens_scores(recovered: Iterable[int], references: torch.Tensor | Sequence[Sequence[int]], tokenizer: Any) -> dict[str, float]:
    """Set precision, recall and F1 of a recovered bag of tokens against every non-special token of the batch."""
    special = list(getattr(tokenizer, "all_special_ids", []))
    true = {t for row in _rows(references) for t in content_tokens(row, special)}
    found = set(content_tokens(recovered, special))
    prf = token_prf(sorted(found), sorted(true), multiset=False)
    return {
        "token_precision": prf.precision,
        "token_recall": prf.recall,
        "token_f1": prf.f1,
        "recovered": float(len(found)),
        "true": float(len(true)),
    }
