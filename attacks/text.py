"""Shared machinery of the text attacks: what a gradient of a transformer classifier gives away.

An honest-but-curious server knows the architecture, the global weights, the tokenizer and —
as TAG (Deng et al., EMNLP Findings 2021) and LAMP (Balunović et al., NeurIPS 2022) assume — the
length of every sequence (``observation.extras["attention_mask"]``). From that it knows where the
tokenizer's special tokens sit (``[CLS]`` first, ``[SEP]`` last, ``[PAD]`` after), so only the
content positions are unknown.

The optimization attacks follow breaching's (Geiping et al.) "run-embedding" strategy: the word
embedding lookup is cut off and the attack optimizes the *word-embedding vectors* ``(B, L, d)``
directly; position and token-type embeddings, the embedding LayerNorm, the encoder, the pooling and
the head run as in the client's model (:func:`logits_from_embeddings`). The word-embedding gradient
is left out of the matching (a continuous input has no row to put it in); it is what
:mod:`attacks.text_embedding` reads instead.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from attacks.base import Observation
from secure_ffm.errors import ConfigError

LAYER_WEIGHTS = ("none", "linear")


# --------------------------------------------------------------------------- the model


def check_text_model(observation: Observation, attack: str) -> None:
    """Raise ConfigError unless ``observation.model`` is an ``hf-text`` style model (encoder + pooling + head)."""
    module = observation.model.module
    if not all(hasattr(module, name) for name in ("encoder", "head", "pooling")) or not hasattr(observation.model, "tokenizer"):
        raise ConfigError("attack.name", f"{attack} needs an hf-text model (encoder, pooling and head)", "use model.arch = 'hf-text'")
    if "attention_mask" not in observation.extras:
        raise ConfigError(
            "attack.name",
            f"{attack} needs the attention mask of the batch (the sequence lengths)",
            "build the observation with attacks.case.observe",
        )


def word_embeddings(module: nn.Module) -> nn.Embedding:
    """The encoder's token-embedding table."""
    embedding = module.encoder.get_input_embeddings()  # type: ignore[operator,union-attr]
    if not isinstance(embedding, nn.Embedding):
        raise ConfigError("attack.name", f"the encoder's input embedding is a {type(embedding).__name__}, not an nn.Embedding")
    return embedding


def word_embedding_name(module: nn.Module) -> str:
    """The parameter name of the token-embedding table (e.g. ``encoder.embeddings.word_embeddings.weight``)."""
    weight = word_embeddings(module).weight
    for name, parameter in module.named_parameters():
        if parameter is weight:
            return name
    raise ValueError("the word-embedding table is not a parameter of the module")


def head_names(module: nn.Module) -> tuple[str, str]:
    """Names of the classification head's weight and bias."""
    names = {id(p): n for n, p in module.named_parameters()}
    head = module.head
    return names[id(head.weight)], names[id(head.bias)]  # type: ignore[union-attr]


def logits_from_embeddings(
    module: nn.Module,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """The classifier's logits with word-embedding vectors ``(B, L, d)`` in place of token ids.

    Identical to :class:`~secure_ffm.models.text.TextClassifier`'s forward for
    ``inputs_embeds = word_embeddings(input_ids)``; always differentiable w.r.t. ``inputs_embeds``
    (also for head-only models, whose forward runs the encoder without autograd). Under a prompt mode the encoder is
    peft's wrapper, which prepends the (trained) virtual tokens to ``inputs_embeds`` itself.
    """
    kwargs: dict[str, torch.Tensor] = {"inputs_embeds": inputs_embeds, "attention_mask": attention_mask}
    if token_type_ids is not None and getattr(module, "passes_token_type_ids", True):
        kwargs["token_type_ids"] = token_type_ids
    if position_ids is not None and getattr(module, "passes_position_ids", True):
        kwargs["position_ids"] = position_ids
    hidden = module.encoder(**kwargs)[0]  # type: ignore[operator]
    if hasattr(module, "classify"):  # TextClassifier: skips the virtual tokens of a prompt mode, pools, applies the head
        return module.classify(hidden, attention_mask)  # type: ignore[operator]
    if module.pooling == "cls":
        pooled = hidden[:, 0]
    else:
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
    return module.head(pooled)  # type: ignore[operator]


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Run ``module`` without dropout (as :mod:`attacks.case` observes it), restoring its mode after.

    Attention runs on PyTorch's plain "math" kernel: the fused (flash) CPU kernel that
    ``sdpa`` attention picks has no second derivative, which gradient matching needs.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    was_training = module.training
    module.eval()
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        module.train(was_training)


# --------------------------------------------------------------------------- what was observed


def estimated_gradient(observation: Observation) -> dict[str, torch.Tensor]:
    """The mean-loss gradient behind the observation, per trainable parameter.

    For ``gradient`` it is the observation itself. For ``update`` (plain-SGD local steps with the
    known learning rate ``lr``), ``-delta / (lr * local_steps)``: exact for one full-batch local
    step; for several steps it is the average of the steps' gradients — each at the weights the
    client had reached, on that step's minibatch — so only an approximation of the batch gradient
    at the global weights, which degrades as the weights move (FedAvg with many steps or a
    large learning rate). The attacks then match it as if it were one gradient. For
    ``aggregate`` the same scaling gives the clients' mean gradient, matched as if it were the
    target's.
    """
    observed = observation.observed_tensors()
    kind = observation.threat_model.observes
    if kind == "gradient":
        return observed
    if kind in ("update", "aggregate"):
        # An aggregate is the weighted mean of several clients' updates made with the same
        # learning rate and local steps: it is matched as if one client with the target's
        # batch had sent it (secure aggregation should make that fail).
        scale = -1.0 / (observation.setup.learning_rate * observation.setup.local_steps)
        return {name: value * scale for name, value in observed.items()}
    raise ConfigError(
        "threat_model.observes", f"cannot turn an observation of kind {kind!r} into one client's gradient", "observe 'gradient' or 'update'"
    )


def nonzero_rows(array: np.ndarray | torch.Tensor, *, relative_tolerance: float = 0.0) -> list[int]:
    """Indices of the rows of ``array`` whose norm exceeds ``relative_tolerance`` times the largest row norm."""
    values = torch.as_tensor(np.asarray(array) if not isinstance(array, torch.Tensor) else array).float()
    norms = values.reshape(values.shape[0], -1).norm(dim=1)
    top = float(norms.max()) if norms.numel() else 0.0
    if top == 0.0:
        return []
    return torch.nonzero(norms > relative_tolerance * top).flatten().tolist()


@dataclass(frozen=True)
class SequenceLayout:
    """The known structure of the batch: which positions hold tokenizer-added tokens, and which are unknown."""

    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor | None
    position_ids: torch.Tensor | None
    known: torch.Tensor
    """``(B, L)`` bool: True where the token is fixed by the tokenizer (special tokens, padding)."""
    known_ids: torch.Tensor
    """``(B, L)`` long: the token at known positions (0 elsewhere)."""

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.attention_mask.shape[0]), int(self.attention_mask.shape[1])

    @property
    def free(self) -> torch.Tensor:
        return ~self.known


def special_frame(tokenizer: object) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a single sentence (``[CLS]`` / ``[SEP]`` for BERT)."""
    probe = "a"
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    full = tokenizer(probe)["input_ids"]  # type: ignore[operator]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return list(full[:start]), list(full[start + len(bare) :])
    return [], []


def sequence_layout(observation: Observation, *, pin_special_tokens: bool = True) -> SequenceLayout:
    """Where the batch's special and padding tokens are, from the known lengths and the tokenizer."""
    mask = observation.extras["attention_mask"].long().cpu()
    batch, length = mask.shape
    pad = getattr(observation.model, "pad_token_id", 0)
    known = mask == 0
    known_ids = torch.where(known, torch.full_like(mask, pad), torch.zeros_like(mask))
    if pin_special_tokens:
        prefix, suffix = special_frame(observation.model.tokenizer)  # type: ignore[attr-defined]
        for row in range(batch):
            n = int(mask[row].sum())
            if n < len(prefix) + len(suffix):
                continue
            for offset, token in enumerate(prefix):
                known[row, offset], known_ids[row, offset] = True, token
            for offset, token in enumerate(suffix):
                known[row, n - len(suffix) + offset], known_ids[row, n - len(suffix) + offset] = True, token
    device = word_embeddings(observation.model.module).weight.device
    extras = {k: observation.extras[k].to(device) if k in observation.extras else None for k in ("token_type_ids", "position_ids")}
    return SequenceLayout(
        attention_mask=mask.to(device),
        token_type_ids=extras["token_type_ids"],
        position_ids=extras["position_ids"],
        known=known.to(device),
        known_ids=known_ids.to(device),
    )


def infer_labels(observation: Observation, gradient: dict[str, torch.Tensor], predicted: torch.Tensor | None = None) -> torch.Tensor:
    """The batch's labels: given when ``knows_labels``, else read from the head's bias gradient.

    The bias gradient of the mean cross-entropy is ``mean_i(p_i - y_i)``. For one example its only
    negative entry is the label (iDLG, Zhao et al. 2020). For ``B`` examples the class counts are
    ``B * (mean p - bias gradient)`` (LLG, Wainakh et al., PETS 2022), with ``mean p`` estimated by
    ``predicted`` (the model's mean softmax on the attack's initial dummy inputs; uniform if None),
    rounded to counts summing to ``B``. Which example has which label is not identified; the labels
    are assigned in class order.
    """
    if observation.labels is not None:
        return observation.labels.clone().long()
    _, bias_name = head_names(observation.model.module)
    bias_grad = gradient[bias_name].double()
    batch = observation.batch_size
    if batch == 1:
        return bias_grad.argmin().reshape(1).long()
    classes = bias_grad.numel()
    mean_p = predicted.double() if predicted is not None else torch.full((classes,), 1.0 / classes, dtype=torch.float64)
    raw = (batch * (mean_p - bias_grad)).clamp(min=0.0)
    counts = raw.floor().long()
    while int(counts.sum()) < batch:  # the largest remainders first; a noisy bias gradient may leave many short
        counts[int(torch.argmax(raw - counts))] += 1
    while int(counts.sum()) > batch:
        counts[int(torch.argmax(counts))] -= 1
    return torch.repeat_interleave(torch.arange(classes), counts)


# --------------------------------------------------------------------------- gradient matching


class GradientMatch:
    """The distance between the gradient a candidate input induces and the observed one.

    TAG's distance (Deng et al. 2021): ``sum_p w_p * (||g'_p - g_p||_2^2 / S_2 + alpha * ||g'_p - g_p||_1 / S_1)``
    over the matched parameters ``p``, with ``S_2 = sum_p ||g_p||_2^2`` and ``S_1 = sum_p ||g_p||_1``
    normalizing each term by the observed gradient (our choice, so that ``alpha`` trades comparable
    quantities whatever the gradient's scale). ``layer_weights = "linear"`` weighs parameters
    linearly from 1 (first, nearest the input) down to ``1 / P`` (last), as TAG weighs early
    layers more; ``"none"`` weighs them equally.
    """

    def __init__(
        self,
        module: nn.Module,
        gradient: dict[str, torch.Tensor],
        *,
        exclude: Sequence[str] = (),
        alpha: float = 0.01,
        layer_weights: str = "none",
    ) -> None:
        if layer_weights not in LAYER_WEIGHTS:
            raise ConfigError("attack.layer_weights", f"unknown value {layer_weights!r}", f"choose one of: {', '.join(LAYER_WEIGHTS)}")
        self.module = module
        named = [(n, p) for n, p in module.named_parameters() if n in gradient and n not in set(exclude)]
        if not named:
            raise ConfigError("attack.name", "no observed parameter is left to match")
        self.names = [n for n, _ in named]
        self.parameters = [p for _, p in named]
        self.targets = [gradient[n].to(device=p.device, dtype=p.dtype) for n, p in named]
        count = len(named)
        self.weights = [1.0] * count if layer_weights == "none" else [(count - i) / count for i in range(count)]
        self.alpha = alpha
        self.l2_scale = float(sum(t.pow(2).sum() for t in self.targets)) or 1.0
        self.l1_scale = float(sum(t.abs().sum() for t in self.targets)) or 1.0

    def candidate_gradient(self, logits: torch.Tensor, labels: torch.Tensor, *, create_graph: bool) -> tuple[torch.Tensor, ...]:
        loss = F.cross_entropy(logits, labels)
        return torch.autograd.grad(loss, self.parameters, create_graph=create_graph, allow_unused=True)

    def distance(self, grads: Sequence[torch.Tensor | None]) -> torch.Tensor:
        total = torch.zeros((), dtype=self.targets[0].dtype)
        for weight, grad, target in zip(self.weights, grads, self.targets, strict=True):
            diff = (grad if grad is not None else torch.zeros_like(target)) - target
            total = total + weight * (diff.pow(2).sum() / self.l2_scale + self.alpha * diff.abs().sum() / self.l1_scale)
        return total

    def __call__(self, inputs_embeds: torch.Tensor, layout: SequenceLayout, labels: torch.Tensor, *, create_graph: bool) -> torch.Tensor:
        """The distance for word-embedding vectors ``inputs_embeds`` (differentiable w.r.t. them when ``create_graph``)."""
        logits = logits_from_embeddings(self.module, inputs_embeds, layout.attention_mask, layout.token_type_ids, layout.position_ids)
        return self.distance(self.candidate_gradient(logits, labels, create_graph=create_graph))


# --------------------------------------------------------------------------- embeddings <-> tokens


def content_vocabulary(table_size: int, tokenizer: object, allowed: Sequence[int] | None = None) -> torch.Tensor:
    """Token ids a content position may hold: ``allowed`` (or the whole table) without the tokenizer's special tokens."""
    special = set(getattr(tokenizer, "all_special_ids", []))
    ids = range(table_size) if allowed is None else allowed
    return torch.tensor([i for i in ids if i not in special], dtype=torch.long)


def project_to_tokens(vectors: torch.Tensor, table: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
    """The token whose embedding is most cosine-similar to each vector (both mean-centred, as breaching does).

    ``candidates`` restricts the choice (e.g. to the tokens leaked by the embedding gradient, as LAMP does).
    """
    candidates = candidates.to(table.device) if candidates is not None else None
    rows = table if candidates is None else table[candidates]
    flat = vectors.reshape(-1, vectors.shape[-1])
    flat = flat - flat.mean(dim=-1, keepdim=True)
    rows = rows - rows.mean(dim=-1, keepdim=True)
    similarity = F.normalize(flat, dim=-1) @ F.normalize(rows, dim=-1).T
    best = similarity.argmax(dim=-1)
    ids = best if candidates is None else candidates[best]
    return ids.reshape(vectors.shape[:-1])


def cover_tokens(vectors: torch.Tensor, table: torch.Tensor, free: torch.Tensor, bag: torch.Tensor) -> torch.Tensor:
    """Project the free positions so that every token of ``bag`` appears at least once, else as similar as possible.

    When the word-embedding gradient leaked the batch's set of tokens and the free positions are
    known, every leaked token must fill at least one of them. This solves that exactly as an
    assignment (Hungarian method): one column per bag token, plus one "any bag token" column per
    surplus position worth that position's best similarity; the total cosine similarity is
    maximized. With more bag tokens than free positions (impossible without noise) it falls back
    to the nearest bag token. Returns ``(B, L)`` ids (free positions filled; others 0).
    """
    from scipy.optimize import linear_sum_assignment

    ids = torch.zeros(free.shape, dtype=torch.long, device=table.device)
    count, size = int(free.sum()), bag.numel()
    if count == 0 or size == 0:
        return ids
    bag = bag.to(table.device)
    rows = table[bag]
    flat = vectors[free]
    flat = flat - flat.mean(dim=-1, keepdim=True)
    rows = rows - rows.mean(dim=-1, keepdim=True)
    similarity = (F.normalize(flat, dim=-1) @ F.normalize(rows, dim=-1).T).detach().cpu().double()
    best_value, best_index = similarity.max(dim=1)
    if size > count:
        ids[free] = bag[best_index.to(table.device)]
        return ids
    gain = torch.cat([similarity, best_value.unsqueeze(1).expand(count, count - size)], dim=1).numpy()
    assigned_rows, assigned_cols = linear_sum_assignment(gain, maximize=True)
    choice = torch.empty(count, dtype=torch.long)
    for position, column in zip(assigned_rows.tolist(), assigned_cols.tolist(), strict=True):
        choice[position] = column if column < size else int(best_index[position])
    ids[free] = bag[choice.to(table.device)]
    return ids


def compose(free_vectors: torch.Tensor, layout: SequenceLayout, table: torch.Tensor) -> torch.Tensor:
    """Word-embedding vectors of the whole batch: ``free_vectors`` at unknown positions, the known tokens' rows elsewhere."""
    known_vectors = table[layout.known_ids]
    return torch.where(layout.known.unsqueeze(-1), known_vectors, free_vectors)


def compose_ids(free_ids: torch.Tensor, layout: SequenceLayout) -> torch.Tensor:
    return torch.where(layout.known, layout.known_ids, free_ids)


def decode(tokenizer: object, ids: torch.Tensor) -> list[str]:
    """One string per row, without special tokens."""
    return [tokenizer.decode(row.tolist(), skip_special_tokens=True) for row in ids]  # type: ignore[attr-defined]
