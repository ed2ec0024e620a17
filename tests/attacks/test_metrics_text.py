"""Text metrics against values computed by hand."""

from __future__ import annotations

import pytest
import torch

from attacks.base import GroundTruth, Reconstruction
from attacks.metrics_text import (
    bag_of_tokens_scores,
    exact_match,
    lcs_length,
    pair_sequences,
    rouge_l,
    rouge_n,
    score_texts,
    token_prf,
    words,
)

CAT_SAT = "the cat sat on the mat".split()
CAT_LAY = "the cat lay on the mat".split()


def test_rouge_on_the_cat_pair() -> None:
    # unigrams: the x2, cat, on, mat shared -> 5 of 6 on both sides
    assert rouge_n(CAT_LAY, CAT_SAT, 1).f1 == pytest.approx(5 / 6)
    # bigrams: "the cat", "on the", "the mat" shared of 5 each
    two = rouge_n(CAT_LAY, CAT_SAT, 2)
    assert (two.precision, two.recall, two.f1) == pytest.approx((3 / 5, 3 / 5, 3 / 5))
    # LCS "the cat on the mat" has 5 words
    assert lcs_length(CAT_LAY, CAT_SAT) == 5
    assert rouge_l(CAT_LAY, CAT_SAT).f1 == pytest.approx(5 / 6)


def test_rouge_with_unequal_lengths_and_clipped_counts() -> None:
    candidate, reference = "the the the cat".split(), "the cat sat".split()
    one = rouge_n(candidate, reference, 1)  # "the" clipped to 1: overlap 2
    assert (one.precision, one.recall) == pytest.approx((2 / 4, 2 / 3))
    assert one.f1 == pytest.approx(2 * (1 / 2) * (2 / 3) / (1 / 2 + 2 / 3))
    assert rouge_n(candidate, reference, 2).f1 == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))  # "the cat" shared
    assert rouge_l("a b c d".split(), "b d a".split()).f1 == pytest.approx(2 * (2 / 4) * (2 / 3) / (2 / 4 + 2 / 3))  # LCS "b d"


def test_token_prf_multiset_and_set() -> None:
    multiset = token_prf(["a", "a", "b", "c"], ["a", "b", "b", "d", "e"])  # overlap a, b = 2
    assert (multiset.precision, multiset.recall) == pytest.approx((2 / 4, 2 / 5))
    assert multiset.f1 == pytest.approx(2 * 0.5 * 0.4 / 0.9)
    as_sets = token_prf(["a", "a", "b", "c"], ["a", "b", "b", "d", "e"], multiset=False)  # {a,b,c} vs {a,b,d,e}
    assert (as_sets.precision, as_sets.recall) == pytest.approx((2 / 3, 2 / 4))


def test_empty_sides() -> None:
    assert token_prf([], []).f1 == 1.0
    assert token_prf([], ["a"]).f1 == 0.0 and token_prf(["a"], []).f1 == 0.0
    assert rouge_n(["a"], ["a"], 2).f1 == 1.0  # no bigrams on either side
    assert rouge_l([], ["a"]).f1 == 0.0


def test_exact_match_and_words() -> None:
    assert exact_match([1, 2, 3], [1, 2, 3]) and not exact_match([1, 3, 2], [1, 2, 3])
    assert words("Light, cute and FORGETTABLE.") == ["light", ",", "cute", "and", "forgettable", "."]


def test_pairing_is_the_optimal_assignment() -> None:
    references = [CAT_SAT, "a dog barked".split()]
    candidates = ["dog barked loudly".split(), "the cat sat on a mat".split()]
    assert pair_sequences(candidates, references) == [(0, 1), (1, 0)]
    assert pair_sequences([], references) == []


class WordTokenizer:
    """A tokenizer stand-in: ids index a fixed word list; 0 and 1 are special ([PAD], [CLS])."""

    vocabulary = ["[PAD]", "[CLS]", "the", "cat", "sat", "lay", "on", "mat", "dog"]
    all_special_ids = [0, 1]

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.vocabulary[i] for i in ids)


def ids(sentence: str, length: int = 8) -> list[int]:
    row = [1] + [WordTokenizer.vocabulary.index(w) for w in sentence.split()]
    return row + [0] * (length - len(row))


def test_score_texts_pairs_swapped_rows_and_averages() -> None:
    truth = GroundTruth(inputs={"input_ids": torch.tensor([ids("the cat sat on the mat"), ids("dog")])}, labels=torch.tensor([1, 0]))
    reconstruction = Reconstruction(inputs=torch.tensor([ids("dog"), ids("the cat lay on the mat")]), labels=torch.tensor([0, 0]))
    scored = score_texts(reconstruction, truth, WordTokenizer())
    assert scored["pairing"] == [1, 0]
    first, second = scored["per_sample"]
    assert first["truth_index"] == 1 and first["exact"] == 1.0 and first["rouge1"] == 1.0
    assert (second["rouge1"], second["rouge2"], second["token_f1"]) == pytest.approx((5 / 6, 3 / 5, 5 / 6))
    assert scored["mean"]["rouge2"] == pytest.approx((1 + 3 / 5) / 2)
    assert scored["mean"]["exact"] == 0.5
    assert scored["mean"]["label_accuracy"] == 0.5  # "dog" row labelled 0 (right), the cat row 0 (wrong)


def test_bag_of_tokens_scores_are_set_based_and_ignore_special_tokens() -> None:
    references = torch.tensor([ids("the cat sat on the mat")])
    scores = bag_of_tokens_scores([1, 2, 3, 4, 8], references, WordTokenizer())  # [CLS] ignored; dog is wrong
    assert scores["true"] == 5 and scores["recovered"] == 4
    assert (scores["token_precision"], scores["token_recall"]) == pytest.approx((3 / 4, 3 / 5))
    bag = Reconstruction(inputs=torch.tensor([[2, 3, 4, 6, 7]]), details={"bag_of_tokens": True})
    truth = GroundTruth(inputs={"input_ids": references}, labels=torch.tensor([1]))
    assert score_texts(bag, truth, WordTokenizer())["mean"]["token_recall"] == 1.0
