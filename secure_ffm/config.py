"""Frozen, validated run configuration loaded from TOML.

Every section is a frozen dataclass whose ``__post_init__`` checks its values and
raises :class:`~secure_ffm.errors.ConfigError` naming the offending key
(``section.key``) and the fix. Unknown sections and keys are rejected with the
nearest valid name suggested.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from secure_ffm.errors import ConfigError, section_renamed
from secure_ffm.registry import did_you_mean
from secure_ffm.variants import CLIENT_SAMPLING, MECHANISMS, PROTOCOLS

Scalar = bool | int | float | str


def _positive(section: str, name: str, value: float, *, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not ok or (isinstance(value, float) and not math.isfinite(value)):
        bound = "non-negative" if allow_zero else "positive"
        raise ConfigError(f"{section}.{name}", f"must be {bound}, got {value!r}", f"set {section}.{name} to a {bound} number")


MAX_ALPHA = 1e6
"""``data.alpha`` above this draws equal shares (and far above it the Dirichlet draw overflows)."""
MAX_THREADS = 1024
"""``run.threads`` above this is a typo (torch takes a C int and would try to start them all)."""
MAX_IMAGE_SIZE = 1024
"""``data.image_size`` above this is a typo (every image is held in memory at that size)."""
FLOAT32_MAX = 3.4028234663852886e38
"""Torch trains in float32: a hyperparameter above this overflows inside the optimizer step."""
MAX_TIMEOUT_SECONDS = 1e6
"""``run.worker_timeout`` above this (11.6 days) is a typo (and past about 24 days the OS's wait overflows)."""
MAX_NOISE_MULTIPLIER = 1000.0
"""Upper end of the noise-multiplier search (``secure_ffm.privacy.accounting``) and of an explicit ``privacy.noise_multiplier``:
far beyond it ε is 0 to any precision, and RDP's ``α / (2 z²)`` underflows."""


def check_plain_name(key: str, name: str) -> None:
    """Refuse a name that becomes a folder name (``runs/<run.name>``, ``runs/sweep-<sweep.name>``) unless it is one plain
    component: a ``/``, ``\\`` or ``..`` would put the run elsewhere."""
    if not name or name in (".", "..") or any(c in name for c in "/\\") or len(name) > 100:
        raise ConfigError(key, f"{name!r} is not a plain name", 'use up to 100 characters without / or \\, e.g. name = "my-run"')


def _float32(section: str, name: str, value: float) -> None:
    """Refuse a value torch cannot convert to float32 (``client.lr = 1e308`` fails in the first optimizer step)."""
    if value > FLOAT32_MAX:
        raise ConfigError(
            f"{section}.{name}", f"{value!r} overflows float32 (max {FLOAT32_MAX:.4g})", f"set {section}.{name} to a realistic value"
        )


def _choice(section: str, name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{section}.{name}", f"unknown value {value!r}", did_you_mean(value, choices))


def unknown_section(section: str, valid: Sequence[str], *, listing: str = "valid sections") -> ConfigError:
    """The error of a TOML table ``[section]`` that is not one of ``valid`` (the nearest suggested)."""
    return ConfigError(f"[{section}]", "unknown section", did_you_mean(section, valid, show=lambda hint: f"[{hint}]", listing=listing))


def unknown_key(section: str, key: str, valid: Sequence[str], *, listing: str = "valid keys") -> ConfigError:
    """The error of a key ``section.key`` that is not one of ``valid`` (the nearest suggested)."""
    return ConfigError(f"{section}.{key}", "unknown key", did_you_mean(key, valid, show=lambda hint: f"{section}.{hint}", listing=listing))


def check_keys(section: str, body: Mapping[str, Any], valid: Sequence[str], *, listing: str = "valid keys") -> None:
    """Refuse the first key of ``body`` that is not one of ``valid`` (:func:`unknown_key`)."""
    for key in body:
        if key not in valid:
            raise unknown_key(section, key, valid, listing=listing)


@dataclass(frozen=True)
class RunConfig:
    """``[run]``: identity and reproducibility of a run."""

    seed: int = 0
    name: str = "run"
    """Names the default run directory ``runs/<name>-<timestamp>``: one path component, no separators."""
    threads: int = 0
    """Torch CPU threads (at most ``MAX_THREADS``); 0 chooses: one for a small model (the CNN), every core for a large one."""
    workers: int = 0
    """Processes that train a round's clients in parallel (the worker-pool transport, each worker one torch thread);
    0 (the default) chooses from the free cores, the model's size and the run's client-rounds
    (:func:`secure_ffm.run.simulation.resolve_workers`); 1 trains them one after another in this process."""
    worker_timeout: float = 0.0
    """Seconds a pool worker may spend on one request; past it the worker is taken as hung: it is killed, the clients
    whose requests it held count as dropped (as when a worker dies) and it is replaced. A worker that takes longer to
    build the run at its start fails the run. 0 waits without limit; at most 1e6 (:data:`MAX_TIMEOUT_SECONDS`)."""

    def __post_init__(self) -> None:
        _positive("run", "seed", self.seed, allow_zero=True)
        _positive("run", "threads", self.threads, allow_zero=True)
        _positive("run", "workers", self.workers, allow_zero=True)
        _positive("run", "worker_timeout", self.worker_timeout, allow_zero=True)
        if self.worker_timeout > MAX_TIMEOUT_SECONDS:
            raise ConfigError(
                "run.worker_timeout",
                f"{self.worker_timeout!r} seconds is more than {MAX_TIMEOUT_SECONDS:g} ({MAX_TIMEOUT_SECONDS / 86400:.1f} days)",
                "use the seconds one request may take at most, or 0 to wait without limit",
            )
        if self.workers > MAX_THREADS:
            raise ConfigError(
                "run.workers", f"{self.workers} is more than {MAX_THREADS}", "use at most the number of CPU cores, or 0 to choose"
            )
        if self.threads > MAX_THREADS:
            raise ConfigError(
                "run.threads", f"{self.threads} is more than {MAX_THREADS}", "use the number of CPU cores, or 0 for torch's default"
            )
        check_plain_name("run.name", self.name)


@dataclass(frozen=True)
class DataConfig:
    """``[data]``: which dataset, how much of it, and how it is split over clients."""

    dataset: str = "movie_reviews"
    """A built-in name (``fashion_mnist``, ``digits``, ``movie_reviews``, ``product_reviews``, ``nyt_editorials``,
    ``tweets``, ``sms_spam``, ``trec``, and the unlabeled ``fortunes``), ``hf:<name>[:<config>]`` for a Hugging Face
    dataset (text, or images with an Image column), a path to a local ``.csv``, ``.jsonl`` or ``.parquet`` file of
    texts, a ``.txt`` file or folder of them (unlabeled text, one document per line), a ``.npz`` file of image arrays,
    or a folder of images in the ImageFolder layout (``<folder>/<class>/<image>.png``, optionally under ``train/``
    and ``test/``)."""
    text_column: str = "text"
    label_column: str = "label"
    """The column of labels; ``""`` reads the texts alone, as unlabeled text (for masked-language-model pre-training)."""
    train_split: str = "train"
    test_split: str = "test"
    test_fraction: float = 0.2
    """Share held out for testing when a source has no test split."""
    max_train_examples: int = 0
    """Stratified-random subset of the training split; 0 keeps all."""
    max_test_examples: int = 0
    num_clients: int = 8
    partition: str = "dirichlet"
    """``iid``, ``dirichlet`` (label skew), ``shards`` (k classes per client) or ``quantity`` (size skew)."""
    alpha: float = 0.5
    """Dirichlet concentration for ``dirichlet`` (label skew) and ``quantity`` (size skew); smaller is more skewed."""
    min_partition_size: int = 2
    shards_per_client: int = 2
    public_fraction: float = 0.0
    """Share of the training split held by the server as public data, never given to any client."""
    max_length: int = 64
    """Token limit for text inputs."""
    image_size: int = 0
    """Image folders, ``.npz`` files and ``hf:`` image datasets: resize every image to ``image_size`` x ``image_size``
    pixels; 0 keeps the source's size, which must then be the same for every image."""
    image_column: str = "image"
    """``hf:`` datasets: the column of images (a ``datasets.Image`` feature); a dataset without it is read as text."""
    image_normalization: str = "fixed"
    """Image files, folders and ``hf:`` images: how pixels are standardised. ``fixed`` (default since 2026-12-07): mean
    0.5 and std 0.5 per channel, independent of the data. ``training``: the training images' per-channel mean and std,
    a statistic of the clients' data that the model and its export carry (an audit told two datasets differing in one
    image apart from an export's config.json, at a reported ε of 3.99); refused under a privacy budget. Built-in image
    datasets keep their published constants either way."""

    def __post_init__(self) -> None:
        # label_column = "" means "no labels" (unlabeled text for masked-language-model pre-training)
        if not self.dataset:
            raise ConfigError("data.dataset", "is empty", "name a built-in dataset, hf:<name> or a file path")
        _positive("data", "num_clients", self.num_clients)
        _positive("data", "alpha", self.alpha)
        if self.alpha > MAX_ALPHA:
            raise ConfigError(
                "data.alpha",
                f"{self.alpha!r} is more than {MAX_ALPHA:g} (no skew left to draw)",
                'use data.partition = "iid" for equal label mixes',
            )
        _positive("data", "max_train_examples", self.max_train_examples, allow_zero=True)
        _positive("data", "max_test_examples", self.max_test_examples, allow_zero=True)
        _positive("data", "min_partition_size", self.min_partition_size, allow_zero=True)
        _positive("data", "shards_per_client", self.shards_per_client)
        _positive("data", "max_length", self.max_length)
        _positive("data", "image_size", self.image_size, allow_zero=True)
        if self.image_size > MAX_IMAGE_SIZE:
            raise ConfigError(
                "data.image_size", f"{self.image_size} is more than {MAX_IMAGE_SIZE}", "these are small models: use e.g. 28 or 32"
            )
        if not 0.0 <= self.public_fraction < 1.0:
            raise ConfigError("data.public_fraction", f"must be in [0, 1), got {self.public_fraction!r}", "use e.g. 0.1 for 10%")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError("data.test_fraction", f"must be in (0, 1), got {self.test_fraction!r}", "use e.g. 0.2")
        _choice("data", "image_normalization", self.image_normalization, IMAGE_NORMALIZATIONS)


IMAGE_NORMALIZATIONS = ("fixed", "training")
"""``data.image_normalization``: data-independent constants, or the training images' statistics."""

PUBLIC_DATA_KEYS = ("dataset", "text_column", "label_column", "train_split", "test_split", "test_fraction", "max_train_examples")
"""The ``[data]`` keys that ``[public_data]`` takes: those that name a source and how much of its train split the server
holds. The others split data among clients or set the model's token limit, which ``[data]`` alone decides."""


def public_data_config(body: Mapping[str, Any]) -> DataConfig:
    """``[public_data]``: a separate dataset whose train split the server holds as public data (no client receives it).

    It takes the source keys of ``[data]`` (:data:`PUBLIC_DATA_KEYS`); every error names ``public_data.<key>``.
    """
    for key in body:
        if key in PUBLIC_DATA_KEYS:
            continue
        if key in {f.name for f in fields(DataConfig)}:
            raise ConfigError(
                f"public_data.{key}",
                "does not apply to the server's public data",
                f"set data.{key} in [data]; [public_data] takes only {', '.join(PUBLIC_DATA_KEYS)}",
            )
        raise unknown_key("public_data", key, PUBLIC_DATA_KEYS)
    hints = typing.get_type_hints(DataConfig)
    kwargs = {key: _coerce(f"public_data.{key}", value, hints[key]) for key, value in body.items()}
    with section_renamed("data", "public_data"):
        return DataConfig(**kwargs)


@dataclass(frozen=True)
class ModelConfig:
    """``[model]``: the architecture and which of its parameters are trained (and sent)."""

    arch: str = "hf-text"
    """``hf-text`` (any Hugging Face encoder with a classification head), ``cnn``, ``tanh-cnn`` (small, for DP-SGD) or
    ``vit``."""
    name_or_path: str = "all-MiniLM-L6-v2"
    """Hugging Face model name or local path; ``all-MiniLM-L6-v2`` is the bundled offline copy. For ``cnn`` and
    ``vit``: a folder written by ``[ffm] export`` (``RUN_DIR/model``) to start from, or the default to start fresh."""
    objective: str = "classification"
    """``classification`` (a class head, cross-entropy) or ``mlm``: masked-language-model (continued) pre-training
    of a Hugging Face encoder (FFM pre-training, docs/ffm.md), with transformers' 80-10-10 masking collator;
    metrics are the held-out masked-token loss, accuracy and perplexity."""
    mlm_probability: float = 0.15
    """mlm: share of the tokens (special tokens excepted) masked in each training sequence."""
    finetune: str = "lora"
    """``full``, ``lora`` (adapters plus head), ``head`` (classifier only; the MLM head for ``mlm``), or a prompt
    learning mode of ``hf-text`` classification (:mod:`secure_ffm.models.prompt`): ``prompt`` (soft prompt),
    ``prefix`` (prefix tuning) or ``p-tuning`` (a prompt encoder generates the prompt); these train the prompt
    parameters plus the head, the encoder stays frozen (docs/prompt_tuning.md)."""
    linear_probe_rounds: int = 0
    """Linear probing, then fine-tuning (LP-FT; Kumar et al., ICLR 2022): the first this-many federated rounds train
    only the classification head, the later ones everything ``finetune`` trains. The other parameters still travel,
    with an update of exactly zero in those rounds (no DP noise, no clipping budget spent on them), so the wire format,
    secure aggregation, checkpoints and the server's optimizer state stay the same throughout. Under DP-SGD a new
    head's large gradients otherwise take most of the clipping budget from the adapters (docs/dp_utility.md). 0: off."""
    pooling: str = "mean"
    """``mean`` over tokens or ``cls`` token, for ``hf-text``."""
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_target_modules: tuple[str, ...] = ("query", "value")
    prompt_tokens: int = 20
    """Prompt modes: number of virtual tokens (the soft prompt's length; the prefix's length per layer)."""
    prompt_init: str = "random"
    """``prompt``: ``random`` or ``text`` (the word embeddings of ``prompt_init_text``, repeated or cut to
    ``prompt_tokens`` tokens). The other prompt modes start at random."""
    prompt_init_text: str = ""
    """The phrase a ``text`` initialisation reads, e.g. ``"Classify the sentiment of this review:"``."""
    prompt_encoder_hidden_size: int = 0
    """``p-tuning``: width of the prompt encoder's MLP (0: the encoder's hidden size). ``prefix``: width of the MLP
    that reparameterizes the prefix (0: none, the prefix's keys and values are trained directly)."""
    vit_patch_size: int = 7
    """Must divide the image's height and width (checked when the model is built for the data)."""
    vit_dim: int = 64
    vit_depth: int = 2
    vit_heads: int = 4

    def __post_init__(self) -> None:
        from secure_ffm.models.objectives import OBJECTIVES

        _choice("model", "objective", self.objective, OBJECTIVES.names())
        if not 0.0 < self.mlm_probability < 1.0:
            raise ConfigError("model.mlm_probability", f"must be in (0, 1), got {self.mlm_probability!r}", "use e.g. 0.15 (BERT's)")
        from secure_ffm.models.prompt import PROMPT_METHODS, check_prompt_settings

        _choice("model", "finetune", self.finetune, ("full", "lora", "head", *PROMPT_METHODS.names()))
        check_prompt_settings(self)
        from secure_ffm.models import MODELS  # registers the built-in architectures (torch is loaded already: OBJECTIVES)

        builder = MODELS.get(self.arch, key="model.arch")
        if self.finetune == "lora" and not builder.lora:  # with the config, so a sweep's up-front check sees it
            takers = " and ".join(name for name in MODELS.names() if MODELS.get(name).lora)
            raise ConfigError("model.finetune", f"lora applies to {takers} models, not {self.arch}", "use full or head")
        if self.finetune in PROMPT_METHODS:
            if self.objective not in builder.prompt_objectives:
                takers = [
                    f"{name} ({', '.join(sorted(MODELS.get(name).prompt_objectives))})"
                    for name in MODELS.names()
                    if MODELS.get(name).prompt_objectives
                ]
                raise ConfigError(
                    "model.finetune",
                    f"{self.finetune!r} is not a fine-tuning mode of model.arch = {self.arch!r} with objective = {self.objective!r}",
                    f"prompt modes apply to {', '.join(takers) or 'no model'}; use full, lora or head here",
                )
        _choice("model", "pooling", self.pooling, ("mean", "cls"))
        _positive("model", "linear_probe_rounds", self.linear_probe_rounds, allow_zero=True)
        if self.linear_probe_rounds and self.finetune == "head":
            raise ConfigError(
                "model.linear_probe_rounds",
                'finetune = "head" trains only the head in every round already',
                'use finetune = "lora" or "full" after the head-only rounds, or set linear_probe_rounds = 0',
            )
        if self.linear_probe_rounds and self.objective != "classification":
            raise ConfigError(
                "model.linear_probe_rounds",
                f"linear probing trains a classification head; objective = {self.objective!r} has none",
                "set linear_probe_rounds = 0",
            )
        _positive("model", "lora_rank", self.lora_rank)
        _positive("model", "lora_alpha", self.lora_alpha)
        _float32("model", "lora_alpha", self.lora_alpha)
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError("model.lora_dropout", f"must be in [0, 1), got {self.lora_dropout!r}")
        if not self.lora_target_modules:
            raise ConfigError("model.lora_target_modules", "is empty", 'name the modules to adapt, e.g. ["query", "value"]')
        for key in ("vit_patch_size", "vit_dim", "vit_depth", "vit_heads"):
            _positive("model", key, getattr(self, key))
        # sizes that cannot be allocated end in a torch traceback at build time: bound them here
        for key, limit in (("lora_rank", 1024), ("vit_dim", 1024), ("vit_depth", 48)):
            if getattr(self, key) > limit:
                raise ConfigError(f"model.{key}", f"{getattr(self, key)} is more than {limit}", f"use at most {limit}")
        if self.vit_dim % self.vit_heads:
            raise ConfigError("model.vit_dim", f"{self.vit_dim} is not a multiple of model.vit_heads={self.vit_heads}")


@dataclass(frozen=True)
class ClientConfig:
    """``[client]``: local training on each client."""

    local_epochs: int = 1
    local_steps: int = 0
    """When positive, train exactly this many batches per round instead of ``local_epochs`` epochs."""
    batch_size: int = 32
    optimizer: str = "sgd"
    """``sgd``, ``adam`` or ``adamw``."""
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 0.0
    """Clip the batch gradient's L2 norm before each step; 0 turns it off (not differential privacy)."""
    trainer: str = "standard"
    """The registered local trainer (``standard``; DP-SGD registers its own)."""

    def __post_init__(self) -> None:
        _positive("client", "local_epochs", self.local_epochs)
        _positive("client", "local_steps", self.local_steps, allow_zero=True)
        _positive("client", "batch_size", self.batch_size)
        _choice("client", "optimizer", self.optimizer, ("sgd", "adam", "adamw"))
        _positive("client", "lr", self.lr)
        _positive("client", "momentum", self.momentum, allow_zero=True)
        _positive("client", "weight_decay", self.weight_decay, allow_zero=True)
        _positive("client", "max_grad_norm", self.max_grad_norm, allow_zero=True)
        for key in ("lr", "momentum", "weight_decay", "max_grad_norm"):
            _float32("client", key, getattr(self, key))


@dataclass(frozen=True)
class ServerConfig:
    """``[server]``: rounds, client sampling, the aggregation strategy and evaluation."""

    strategy: str = "fedavg"
    """``fedavg``, ``fedavgm``, ``fedprox``, ``fedadam`` or ``fedyogi``."""
    rounds: int = 3
    clients_per_round: int = 0
    """Clients sampled each round (their expected number under Poisson sampling); 0 takes all."""
    client_sampling: str = "auto"
    """``fixed``: exactly ``clients_per_round`` clients, uniformly without replacement; ``poisson``: each client with
    probability ``clients_per_round / num_clients`` (a round's size varies and may be 0); ``auto``: what the privacy
    mechanism's accounting assumes (Poisson for DP-FedAvg with the server's noise, fixed otherwise;
    secure_ffm/engine/sampling.py)."""
    proximal_mu: float = 0.01
    """FedProx proximal weight (Li et al., MLSys 2020)."""
    server_lr: float = 0.01
    """Server learning rate of FedAdam/FedYogi (Reddi et al., ICLR 2021)."""
    linear_probe_lr: float = 0.0
    """FedAdam/FedYogi's server learning rate in linear probing's head-only rounds (``model.linear_probe_rounds``);
    ``server_lr`` in the rounds after. An adaptive server step moves each coordinate by about its learning rate a
    round, so a learning rate tuned for fine-tuning leaves a random head far from the probe's optimum after a few
    rounds (docs/dp_utility.md). 0: ``server_lr`` throughout."""
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-3
    server_momentum: float = 0.9
    """FedAvgM's server momentum β (Hsu et al. 2019; McMahan et al., ICLR 2018 use 0.9 with DP-FedAvg):
    ``v = β v + Δ``, ``x = x + v``."""
    ema_decay: float = 0.0
    """β of an exponential moving average of the global model, updated after every round (and public unit):
    ``average = β average + (1 - β) model``. Evaluation, ``model.safetensors``, exports and the clients' final
    evaluation then use the average, while training goes on from the model itself. Averaging the iterates is
    post-processing of what the server already holds: no privacy cost, and it evens out the round-to-round swings
    of noisy DP training (De et al., arXiv 2204.13650; docs/dp_utility.md). 0: off."""
    eval_every: int = 1
    """Evaluate the global model on the test split every this many rounds (and always after the last)."""
    evaluate_clients: bool = False
    """Also evaluate the global model on each client's own data after the last round."""
    eval_batch_size: int = 128

    def __post_init__(self) -> None:
        _positive("server", "rounds", self.rounds)
        _positive("server", "clients_per_round", self.clients_per_round, allow_zero=True)
        _choice("server", "client_sampling", self.client_sampling, ("auto", *CLIENT_SAMPLING.names()))
        _positive("server", "proximal_mu", self.proximal_mu, allow_zero=True)
        _positive("server", "server_lr", self.server_lr)
        _positive("server", "linear_probe_lr", self.linear_probe_lr, allow_zero=True)
        for key in ("beta_1", "beta_2", "server_momentum", "ema_decay"):
            value = getattr(self, key)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"server.{key}", f"must be in [0, 1), got {value!r}")
        _positive("server", "tau", self.tau)
        _positive("server", "eval_every", self.eval_every)
        _positive("server", "eval_batch_size", self.eval_batch_size)
        for key in ("proximal_mu", "server_lr", "tau"):
            _float32("server", key, getattr(self, key))


@dataclass(frozen=True)
class PrivacyConfig:
    """``[privacy]``: differential privacy of the whole federated training.

    ``dp-sgd`` is sample-level DP inside every client's local training (Abadi et
    al., CCS 2016) with Opacus; ``dp-fedavg`` is user-level DP of whole client
    updates (McMahan et al., ICLR 2018), optionally with adaptive clipping
    (Andrew et al., NeurIPS 2021); ``distributed-dp-sgd`` is sample-level DP with one DP-SGD
    step per round over the federation's data and the noise split among the clients, under
    secure aggregation (secure_ffm/privacy/distributed_dp_sgd.py).
    """

    mode: str = "none"
    """A registered privacy mechanism (:data:`secure_ffm.variants.MECHANISMS`): built-ins ``none``, ``dp-sgd``, ``dp-fedavg``
    and ``distributed-dp-sgd``."""
    target_epsilon: float = 8.0
    """The ε the whole run may spend (per client for dp-sgd, per user for dp-fedavg)."""
    delta: float = 0.0
    """δ of the guarantee; 0 picks 1/(10 n) with n the client's examples (dp-sgd), the number of clients (dp-fedavg) or
    the federation's examples (distributed-dp-sgd)."""
    accountant: str = "prv"
    """``prv`` (Gopi et al., NeurIPS 2021) or ``rdp`` (Mironov, CSF 2017): both upper bounds, with which the noise is
    calibrated and the budget enforced. ``gdp`` (Dong et al., 2019), a central-limit approximation that can understate ε,
    is refused since 2026-12-07 (an audit: noise calibrated with it for ε = 8 gave 10.1). Distributed discrete Gaussian
    noise (under masking) is always accounted with ``zcdp`` (secure_ffm.privacy.accounting)."""
    max_grad_norm: float = 1.0
    """dp-sgd and distributed-dp-sgd: per-sample gradient clipping norm."""
    clipping: str = "flat"
    """distributed-dp-sgd: ``flat`` clips each example's whole gradient to ``max_grad_norm``; ``per-layer`` clips each
    trained tensor's part to ``max_grad_norm / sqrt(K)`` (K trained tensors; McMahan et al., 2018, "A General Approach
    to Adding Differential Privacy to Iterative Training Procedures"), so the whole gradient's norm stays within
    ``max_grad_norm``: same sensitivity, same noise, same ε. It keeps one large-gradient layer (a new classification
    head) from using up the clipping budget of the others (LoRA adapters); docs/dp_utility.md has the measurement."""
    grad_sample_mode: str = "auto"
    """dp-sgd: ``ghost`` (ghost clipping, Li et al., ICLR 2022), ``hooks`` (per-sample gradients), ``bookkeeping``
    (one backward pass, Bu et al., ICML 2023; models whose trained layers are all Linear or Conv2d) or ``auto``
    (hooks when under 10% of the parameters are trained, as with LoRA or head-only, else bookkeeping where it
    applies, else ghost: the fastest in benchmarks/dp_overhead.py)."""
    max_physical_batch_size: int = 0
    """dp-sgd: most examples one forward/backward pass holds; 0 passes each step's whole Poisson batch at once. A
    larger batch is processed as a virtual step: physical chunks whose clipped per-sample gradients are summed,
    then ONE noise draw and one optimizer step (as Opacus' BatchMemoryManager). The update, the reported loss (the
    batch mean) and the privacy ledger are those of the unchunked step; it bounds memory, so expected batch sizes
    of hundreds (``client.batch_size``) fit, e.g. 32 for a transformer with per-sample gradients (hooks)."""
    planned_rounds: int = 0
    """dp-sgd: rounds a client is budgeted to take part in; 0 means every federated round (no client is ever skipped;
    an FFM schedule's public units spend no budget and are not counted: :func:`secure_ffm.engine.schedule.federated_rounds`).
    dp-fedavg spends the server's budget every round, so it refuses a value below the federated rounds."""
    secure_mode: bool = True
    """Draw every noise value and DP-SGD's Poisson sampling from AES-128 in counter mode (a CSPRNG) with the
    floating-point mitigation of Opacus' secure mode (a sum of four Gaussians); false uses NumPy's Philox
    generator, still keyed by each party's secret (secure_ffm.privacy.noise; cost in benchmarks/dp_overhead.py)."""
    reproducible_noise: bool = False
    """Research only: derive all noise, sampling and defense randomness from run.seed instead of secrets drawn from
    the OS CSPRNG. Gives NO protection against anyone who knows the seed (it is written to config.toml); marked as
    such in privacy.json, summary.json and the report."""
    noise_multiplier: float = 0.0
    """dp-fedavg: z, the server noise std divided by the clip norm; 0 calibrates it from target_epsilon."""
    clip_norm: float = 1.0
    """dp-fedavg: L2 bound C on each client's whole update (the initial bound with adaptive clipping)."""
    noise_placement: str = "server"
    """dp-fedavg: ``server`` adds N(0, (zC)^2) to the sum; ``clients`` has each of the m clients add its share
    N(0, (zC)^2/m) before sending (distributed DP, for use with secure aggregation; under masking the shares are
    discrete Gaussians sized for the masking threshold, secure_ffm.privacy.distributed)."""
    adaptive_clipping: bool = False
    target_unclipped_quantile: float = 0.5
    """Adaptive clipping: the fraction γ of updates that should fall under the clip norm."""
    clip_learning_rate: float = 0.2
    """Adaptive clipping: η in C <- C exp(-η (b - γ))."""
    clipped_count_stddev: float = 0.0
    """Adaptive clipping: σ_b of the noise on the count of unclipped updates; 0 picks m/20 (Andrew et al.)."""
    client_metrics: str = "auto"
    """What each client's message tells the server beside its update (secure_ffm.engine.client.CLIENT_METRICS):
    ``public`` sends only metrics that do not depend on the client's examples (steps, ε spent, seconds); ``all`` also
    sends its training loss and, under dp-fedavg, its update's norm before clipping and, under dp-sgd, its count of
    empty Poisson batches, in the clear: neither DP's noise nor secure aggregation covers them. ``auto`` (default):
    ``public`` whenever the run is private (any ``mode`` but ``none``) or hides updates (``masking``, ``ckks``),
    else ``all``."""

    def __post_init__(self) -> None:
        _choice("privacy", "mode", self.mode, MECHANISMS.names())
        # every mechanism's settings are checked, whichever is chosen: one a sweep switches on later is then valid too
        if not (self.target_epsilon > 0):
            raise ConfigError("privacy.target_epsilon", f"must be positive, got {self.target_epsilon!r}", "state the budget, e.g. 8.0")
        if not 0.0 <= self.delta < 1.0:
            raise ConfigError("privacy.delta", f"must be in [0, 1), got {self.delta!r}", "use 0 for the default 1/(10 n)")
        if self.accountant == "gdp":
            raise ConfigError(
                "privacy.accountant",
                "'gdp' is a central-limit approximation, not a bound: noise calibrated with it for ε = 8 (q = 0.01, 1,000 steps, "
                "δ = 1e-5) gives ε = 10.1 by prv, and for ε = 0.43 (q = 0.0054, 5 steps) ε = 3.85",
                "use 'prv' (the default) or 'rdp'; gdp's estimate stays available for comparisons as "
                "secure_ffm.privacy.accounting.compute_epsilon(history, accountant='gdp', delta=...)",
            )
        _choice("privacy", "accountant", self.accountant, ("prv", "rdp"))
        _positive("privacy", "max_grad_norm", self.max_grad_norm)
        _choice("privacy", "grad_sample_mode", self.grad_sample_mode, ("auto", "ghost", "hooks", "bookkeeping"))
        _choice("privacy", "clipping", self.clipping, CLIPPING_MODES)
        _positive("privacy", "max_physical_batch_size", self.max_physical_batch_size, allow_zero=True)
        _positive("privacy", "planned_rounds", self.planned_rounds, allow_zero=True)
        _positive("privacy", "noise_multiplier", self.noise_multiplier, allow_zero=True)
        if self.noise_multiplier > MAX_NOISE_MULTIPLIER:
            raise ConfigError(
                "privacy.noise_multiplier",
                f"{self.noise_multiplier!r} is above {MAX_NOISE_MULTIPLIER:g}, where ε is 0 to any precision and the update only noise",
                "use a value the target needs (0 calibrates it from privacy.target_epsilon)",
            )
        for key in ("max_grad_norm", "clip_norm", "clip_learning_rate", "clipped_count_stddev"):
            _float32("privacy", key, getattr(self, key))
        _positive("privacy", "clip_norm", self.clip_norm)
        _choice("privacy", "noise_placement", self.noise_placement, ("server", "clients"))
        if not 0.0 < self.target_unclipped_quantile < 1.0:
            raise ConfigError("privacy.target_unclipped_quantile", f"must be in (0, 1), got {self.target_unclipped_quantile!r}")
        _positive("privacy", "clip_learning_rate", self.clip_learning_rate)
        _positive("privacy", "clipped_count_stddev", self.clipped_count_stddev, allow_zero=True)
        _choice("privacy", "client_metrics", self.client_metrics, CLIENT_METRICS_SETTINGS)


CLIENT_METRICS_SETTINGS = ("auto", "public", "all")
"""``privacy.client_metrics``: which metrics a client's message carries (secure_ffm.engine.client)."""

CLIPPING_MODES = ("flat", "per-layer")
"""``privacy.clipping``: how an example's gradient is bounded (distributed-dp-sgd)."""

CKKS_POLY_MODULUS_DEGREES = (4096, 8192, 16384)


@dataclass(frozen=True)
class SecureAggregationConfig:
    """``[secure_aggregation]``: how the server learns the sum of the clients' updates.

    ``masking`` is pairwise-masking secure aggregation (Bonawitz et al., CCS 2017; SecAgg+,
    Bell et al., CCS 2020): the server sees only masked vectors and learns the weighted sum.
    ``ckks`` is additively homomorphic aggregation under CKKS (Cheon et al., ASIACRYPT 2017)
    with TenSEAL: the server adds ciphertexts it cannot decrypt; the key holder decrypts the sum.
    """

    protocol: str = "none"
    """A registered aggregation protocol (:data:`secure_ffm.variants.PROTOCOLS`):
    built-ins ``none`` (plaintext), ``masking`` and ``ckks``."""
    clip_range: float = 1.0
    """masking: per-coordinate bound on a client's delta; larger values are clipped before fixed-point encoding."""
    threshold: int = 0
    """masking: Shamir threshold t (survivors needed to unmask); 0 picks a strict majority of each neighbourhood.
    An explicit t must be above half a neighbourhood and at most all of it (checked against the participants and
    ``neighbours``); it is also the lowest t each client accepts from the server.
    ckks: the fewest client contributions the key holder decrypts a sum of (at most a round's participants); 0 means
    every planned participant when clients add distributed noise shares (which are sized for it), otherwise any."""
    neighbours: int = 0
    """masking: 0 masks every pair of clients (SecAgg); an even k > 0 uses a SecAgg+ graph of degree k."""
    dropout_rate: float = 0.0
    """Simulation: fraction of each round's participants that drop after sending nothing (their message is lost)."""
    on_abort: str = "skip"
    """When a round aborts (fewer survivors than the threshold): ``skip`` it and go on, or ``stop`` the run."""
    ckks_poly_modulus_degree: int = 8192
    """ckks: ring dimension N (4096, 8192 or 16384); a ciphertext packs N/2 values."""
    ckks_coeff_mod_bit_sizes: tuple[int, ...] = (60, 60)
    """ckks: bit sizes of the coefficient modulus primes: the data primes, then SEAL's special (key-switching) prime.

    The default ``(60, 60)`` (one 60-bit data prime) replaced ``(60, 40, 40, 60)`` on 2026-12-05; it is safe because:
    security: the HomomorphicEncryption.org standard (Albrecht et al., 2018) gives 128-bit security for
    N = 8192 with at most 218 bits of coefficient modulus; 120 bits is inside it (fewer bits is more secure),
    checked here and by SEAL. Depth: aggregation only adds ciphertexts, so no multiplicative level (a middle
    prime) is ever consumed. Precision: the error is set by ``ckks_scale_bits`` (2^40) and N, not the primes:
    both settings measured the same on real CNN updates (README, secure aggregation benchmark), at 8x instead of
    20x the fp32 bytes and about 40% of the encryption time. Headroom is what shrinks: a slot of a sum must stay
    below 2^(data bits - scale_bits - 2) = 2^(60 - 40 - 2) = 2^18 (2^98 before). A run whose sums can exceed it
    (e.g. FedAvg weights with more than 2^18 examples among a round's participants) is refused before it starts
    (:meth:`secure_ffm.secagg.ckks.CKKSProtocol.check_run`, a ConfigError naming ``ckks_scale_bits``), and a client
    whose weighted values exceed its share 2^18 / n refuses to encrypt and is left out of the round, so a sum
    never wraps silently. For such federations add a data prime, e.g. ``[60, 40, 60]`` (2^58 of headroom)."""
    ckks_scale_bits: int = 40
    """ckks: log2 of the encoding scale; each slot's absolute error is about N * 2^-scale_bits, and a sum's magnitude
    must stay below 2^(data bits - scale_bits - 2), the data bits being the sum of all primes but the last."""
    ckks_key_holder: str = "clients"
    """ckks: who holds the secret key: ``clients`` (a key shared by all clients, as NVIDIA FLARE does) or
    ``authority`` (a separate key authority that decrypts only aggregates); see docs/threat_model.md."""
    signatures: bool = False
    """masking: Bonawitz et al.'s defences against an active server (CCS 2017, the malicious variant): every client
    signs its advertised keys and the survivor list of the unmasking stage with a long-term Ed25519 key, refuses a
    set-up whose keys are not signed by clients of the key directory, signs one survivor list a round and reveals its
    shares only for that list once a majority of the round's participants signed it (secure_ffm.secagg.signing)."""
    peer_keys: str = ""
    """masking with ``signatures``: the key directory, a JSON file ``{"<client id>": "<hex Ed25519 verification key>"}``
    that every party got out of band (``secure-ffm signing-keys``); each deployed node holds its own signing key (node
    config ``signing-key``). Empty in a simulation, which makes a fresh key per client itself; a deployment needs it."""

    def __post_init__(self) -> None:
        _choice("secure_aggregation", "protocol", self.protocol, PROTOCOLS.names())
        if not (math.isfinite(self.clip_range) and self.clip_range > 0):
            raise ConfigError("secure_aggregation.clip_range", f"must be positive, got {self.clip_range!r}", "use e.g. 1.0")
        _float32("secure_aggregation", "clip_range", self.clip_range)
        _positive("secure_aggregation", "threshold", self.threshold, allow_zero=True)
        _positive("secure_aggregation", "neighbours", self.neighbours, allow_zero=True)
        if self.neighbours % 2:
            raise ConfigError(
                "secure_aggregation.neighbours", f"must be even, got {self.neighbours}", "use 0 (all pairs) or an even degree such as 4"
            )
        if not (math.isfinite(self.dropout_rate) and 0.0 <= self.dropout_rate < 1.0):
            raise ConfigError("secure_aggregation.dropout_rate", f"must be in [0, 1), got {self.dropout_rate!r}", "use e.g. 0.1 for 10%")
        _choice("secure_aggregation", "on_abort", self.on_abort, ("skip", "stop"))
        if self.ckks_poly_modulus_degree not in CKKS_POLY_MODULUS_DEGREES:
            raise ConfigError(
                "secure_aggregation.ckks_poly_modulus_degree",
                f"must be one of {', '.join(map(str, CKKS_POLY_MODULUS_DEGREES))}, got {self.ckks_poly_modulus_degree}",
                "use 8192 (default) or 4096 for small updates",
            )
        bits = self.ckks_coeff_mod_bit_sizes
        if len(bits) < 2 or any(not 20 <= b <= 60 for b in bits):
            raise ConfigError(
                "secure_aggregation.ckks_coeff_mod_bit_sizes",
                f"needs at least 2 primes of 20 to 60 bits, got {list(bits)}",
                "use e.g. [60, 60] (the default) or [60, 40, 60] for more headroom",
            )
        # 128-bit security bounds on log2(q) from the HomomorphicEncryption.org standard (as SEAL enforces)
        max_bits = {4096: 109, 8192: 218, 16384: 438}[self.ckks_poly_modulus_degree]
        if sum(bits) > max_bits:
            raise ConfigError(
                "secure_aggregation.ckks_coeff_mod_bit_sizes",
                f"sum {sum(bits)} exceeds {max_bits} bits, the 128-bit security bound for N={self.ckks_poly_modulus_degree}",
                "use fewer or smaller primes, e.g. [40, 20, 40] for N=4096",
            )
        # fresh ciphertexts live modulo the data primes (all but the last, SEAL's special prime): the scale
        # must leave headroom below them for the sums' magnitude (secure_ffm.secagg.ckks checks it per round)
        data_bits = sum(bits[:-1])
        if not 20 <= self.ckks_scale_bits <= data_bits - 3:
            raise ConfigError(
                "secure_aggregation.ckks_scale_bits",
                f"must be at least 20 and at most {data_bits - 3} (the data primes {list(bits[:-1])} hold {data_bits} bits, "
                f"the sums need headroom), got {self.ckks_scale_bits}",
                "use 40 with [60, 60] (the default), or [60, 49] with 40 for N=4096",
            )
        _choice("secure_aggregation", "ckks_key_holder", self.ckks_key_holder, ("clients", "authority"))


@dataclass(frozen=True)
class DefenseConfig:
    """``[defense]``: update-level defenses a client applies before sending (package ``defenses``).

    ``names`` lists registered update transforms, applied in order after local training and
    before DP-FedAvg's clipping/noise and the aggregation protocol. Built-ins: ``clip``-style
    L2 clipping (``l2-clip``), ``gaussian-noise``, ``prune`` (magnitude pruning, Zhu et al.,
    NeurIPS 2019), ``quantize`` (``quantize_bits`` = 8, 4, ... or 1 for sign) and ``soteria``
    (Sun et al., CVPR 2021).
    """

    names: tuple[str, ...] = ()
    clip_norm: float = 1.0
    """l2-clip: bound on the update's L2 norm."""
    noise_std: float = 0.01
    """gaussian-noise: per-coordinate standard deviation added to the update."""
    prune_fraction: float = 0.9
    """prune: fraction of each array's coordinates (the smallest in magnitude) set to zero."""
    quantize_bits: int = 8
    """quantize: bits per coordinate (1 = sign with a per-array scale)."""
    soteria_fraction: float = 0.5
    """soteria: fraction of the representation's features whose gradient columns are removed."""
    soteria_examples: int = 8
    """soteria: how many of the client's examples (drawn with the client's seeded generator) score the features;
    the cost is one backward pass per feature over these examples (cheap for cnn/vit; a few seconds per example for MiniLM)."""

    def __post_init__(self) -> None:
        for name in self.names:
            if not isinstance(name, str) or not name:
                raise ConfigError("defense.names", f"entries must be non-empty strings, got {name!r}", 'write e.g. names = ["prune"]')
        _positive("defense", "clip_norm", self.clip_norm)
        _positive("defense", "noise_std", self.noise_std, allow_zero=True)
        _float32("defense", "clip_norm", self.clip_norm)
        _float32("defense", "noise_std", self.noise_std)
        if not (math.isfinite(self.prune_fraction) and 0.0 <= self.prune_fraction < 1.0):
            raise ConfigError("defense.prune_fraction", f"must be in [0, 1), got {self.prune_fraction!r}", "use e.g. 0.9 to zero 90%")
        if not 1 <= self.quantize_bits <= 16:
            raise ConfigError("defense.quantize_bits", f"must be 1 to 16, got {self.quantize_bits}", "use 8, or 1 for sign")
        if not (math.isfinite(self.soteria_fraction) and 0.0 < self.soteria_fraction < 1.0):
            raise ConfigError("defense.soteria_fraction", f"must be in (0, 1), got {self.soteria_fraction!r}", "use e.g. 0.5")
        _positive("defense", "soteria_examples", self.soteria_examples)


@dataclass(frozen=True)
class AuditConfig:
    """``[audit]``: record what the server observed, so that a leakage audit can replay it after training.

    For each (client, round) in ``capture_clients`` x ``capture_rounds`` the run writes
    ``observations/round-R-client-K.safetensors`` (+ ``.json``): the message the server received
    (the client's update under plaintext aggregation; only the aggregate under secure aggregation),
    the global parameters the client started from, and, marked as ground truth the server never
    sees, the client's example indices.
    """

    capture_clients: tuple[int, ...] = ()
    capture_rounds: tuple[int, ...] = ()
    """Rounds to capture; empty captures every round (only for the clients listed)."""

    def __post_init__(self) -> None:
        for key, values in (("capture_clients", self.capture_clients), ("capture_rounds", self.capture_rounds)):
            for value in values:
                if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "capture_clients" else 1):
                    raise ConfigError(f"audit.{key}", f"has invalid entry {value!r}", "use client ids >= 0 and rounds >= 1")


LORA_EXPORTS = ("merged", "adapter")
"""``ffm.export_lora``: LoRA merged into the exported encoder, or written as a peft adapter beside a base-model reference."""


@dataclass(frozen=True)
class FFMConfig:
    """``[ffm]``: FFM pre-training's phases (Federated Foundation Models, arXiv 2305.11414, Sec. 3.1; docs/ffm.md).

    Each of the ``server.rounds`` steps of a run is one unit: a federated round on the clients' private data, or
    a public phase of ``public_steps`` server-side optimizer steps on the server's public data
    (``data.public_fraction`` of the training split, or the separate dataset of ``[public_data]``), which no client
    ever receives and which spends no privacy budget.
    """

    schedule: str = "federated"
    """A registered schedule (:data:`secure_ffm.engine.schedule.SCHEDULES`): ``federated`` (FL only, the default),
    ``centralized`` (public data only), ``alternating`` (fixed cycles), ``adaptive`` (the switch of docs/ffm.md)."""
    public_steps: int = 20
    """Optimizer steps of one public unit (batches of ``client.batch_size``, optimizer and learning rate of ``[client]``)."""
    public_validation_fraction: float = 0.2
    """Share of the public data held out to measure the public loss the switch watches (never trained on)."""
    public_units: int = 1
    """alternating: public units per cycle."""
    federated_units: int = 1
    """alternating: federated rounds per cycle."""
    patience: int = 2
    """adaptive: units without a gain larger than ``min_delta`` before a plateau is declared."""
    max_public_units: int = 4
    """adaptive: the longest run of public units in a row (the private data is the target; public data helps it)."""
    min_delta: float = 0.01
    """adaptive: the smallest loss decrease that counts as a gain."""
    forgetting: float = 0.0
    """adaptive: when positive, a federated round that leaves the public loss this much (relative) above its best
    sends the next unit back to public data; 0 (the default) turns that test off. Measured on two models, a 5%
    tolerance cost accuracy under non-IID data (docs/ffm.md, "The forgetting test: off by default")."""
    export: bool = False
    """Write ``RUN_DIR/model/`` at the end, so that ``model.name_or_path = "RUN_DIR/model"`` fine-tunes from it:
    for Hugging Face text models ``save_pretrained`` (the encoder, LoRA merged, and its tokenizer); for ``cnn`` and
    ``vit`` ``model.safetensors`` (LoRA merged, head included) and a ``config.json`` of the architecture, image shape,
    classes and normalization."""
    export_lora: str = "merged"
    """How ``export`` writes LoRA adapters: ``merged`` into the encoder's weights (a plain encoder), or ``adapter``:
    peft's adapter files (``adapter_config.json``, ``adapter_model.safetensors``) naming the base model, for
    ``PeftModel.from_pretrained``; ``adapter`` needs ``model.finetune = "lora"`` (docs/ffm.md, "Export")."""

    def __post_init__(self) -> None:
        from secure_ffm.engine.schedule import SCHEDULES

        _choice("ffm", "schedule", self.schedule, SCHEDULES.names())
        for key in ("public_steps", "public_units", "federated_units", "patience", "max_public_units"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"ffm.{key}", f"must be a whole number >= 1, got {value!r}")
        if not 0.0 < self.public_validation_fraction < 1.0:
            raise ConfigError("ffm.public_validation_fraction", f"must be in (0, 1), got {self.public_validation_fraction!r}")
        if not (math.isfinite(self.min_delta) and self.min_delta >= 0):
            raise ConfigError("ffm.min_delta", f"must be >= 0, got {self.min_delta!r}")
        if not (math.isfinite(self.forgetting) and self.forgetting >= 0):
            raise ConfigError("ffm.forgetting", f"must be >= 0, got {self.forgetting!r}", "e.g. 0.05 for 5%, or 0 for no forgetting test")
        _choice("ffm", "export_lora", self.export_lora, LORA_EXPORTS)
        if self.export_lora != "merged" and not self.export:
            raise ConfigError(
                "ffm.export_lora", f"{self.export_lora!r} applies only to an export", "set ffm.export = true, or drop ffm.export_lora"
            )


CONTINUAL_STAGE_KEYS = ("name", "rounds", "dataset", "classes", "release")


@dataclass(frozen=True)
class StageConfig:
    """One ``[[continual.stages]]`` table: the data that arrives at the clients in this stage, and its rounds.

    The clients keep their identity across stages (client ``k`` of stage 2 is client ``k`` of stage 1)."""

    rounds: int = 1
    """Federated rounds of this stage."""
    name: str = ""
    """How reports name the stage (default ``stage<i>``, from 1)."""
    dataset: str = ""
    """Another dataset for this stage (domain-incremental, e.g. ``product_reviews`` after ``movie_reviews``), federated
    over the same clients with the ``[data]`` settings; it must have the classes of ``data.dataset``. Empty:
    ``data.dataset``."""
    classes: tuple[str, ...] = ()
    """Only these classes (names, or ids as strings) of the stage's dataset: class-incremental. Empty: every class."""
    release: float = 0.0
    """New examples arriving (data-incremental): this share of each client's examples of the stage's dataset is
    released now, in order after the shares of earlier stages of the same dataset; 0: all of them."""

    def check(self, index: int) -> None:
        key = f"continual.stages[{index}]"
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            raise ConfigError(f"{key}.rounds", f"must be a whole number >= 1, got {self.rounds!r}")
        if not 0.0 <= self.release <= 1.0:
            raise ConfigError(f"{key}.release", f"must be in [0, 1], got {self.release!r}", "e.g. 0.25 for a quarter of each client's data")
        if len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"{key}.classes", f"lists a class twice: {list(self.classes)}")

    def label(self, index: int) -> str:
        return self.name or f"stage{index + 1}"


@dataclass(frozen=True)
class ContinualConfig:
    """``[continual]`` (optional): federated continual learning, a run as a sequence of stages (docs/continual.md).

    Present, it makes ``server.rounds`` the sum of the stages' rounds; the privacy ledgers span every stage."""

    method: str = "naive"
    """``naive`` (sequential fine-tuning), ``replay`` (a buffer of each client's own past examples, never sent),
    ``ewc`` (elastic weight consolidation with importances aggregated through the secure-aggregation protocol) or
    ``isolation`` (one set of trained parameters per stage, e.g. a LoRA adapter and head; the most confident one
    answers at test time)."""
    replay_buffer: int = 200
    """replay: examples each client keeps from its earlier stages."""
    ewc_lambda: float = 10.0
    """ewc: strength of the penalty ``lambda/2 * sum_i w_i (theta_i - theta*_i)^2`` (importances ``w`` normalized to mean 1)."""
    stages: tuple[StageConfig, ...] = ()

    def __post_init__(self) -> None:
        from secure_ffm.variants import CONTINUAL_METHODS

        _choice("continual", "method", self.method, CONTINUAL_METHODS.names())
        _positive("continual", "replay_buffer", self.replay_buffer)
        _positive("continual", "ewc_lambda", self.ewc_lambda, allow_zero=True)
        if len(self.stages) < 1:
            raise ConfigError("continual.stages", "is empty", "add [[continual.stages]] tables, each with rounds and its data")
        names = []
        for index, stage in enumerate(self.stages):
            stage.check(index)
            names.append(stage.label(index))
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ConfigError("continual.stages", f"two stages are named {duplicated[0]!r}", "give every stage its own name")

    @property
    def rounds(self) -> int:
        return sum(stage.rounds for stage in self.stages)


def continual_config(body: Mapping[str, Any]) -> ContinualConfig:
    """``[continual]`` with its ``[[continual.stages]]`` tables."""
    keys = [f.name for f in fields(ContinualConfig)]
    check_keys("continual", body, keys)
    hints = typing.get_type_hints(ContinualConfig)
    kwargs: dict[str, Any] = {key: _coerce(f"continual.{key}", value, hints[key]) for key, value in body.items() if key != "stages"}
    raw_stages = body.get("stages", [])
    if not isinstance(raw_stages, list) or not all(isinstance(s, Mapping) for s in raw_stages):
        raise ConfigError("continual.stages", "must be an array of tables", "write each stage as [[continual.stages]] with rounds = ...")
    stage_hints = typing.get_type_hints(StageConfig)
    stages = []
    for index, table in enumerate(raw_stages):
        key = f"continual.stages[{index}]"
        check_keys(key, table, list(CONTINUAL_STAGE_KEYS))
        values = dict(table)
        if "classes" in values and isinstance(values["classes"], list):  # ids may be written as numbers
            values["classes"] = [str(c) if isinstance(c, int) and not isinstance(c, bool) else c for c in values["classes"]]
        stages.append(StageConfig(**{k: _coerce(f"{key}.{k}", v, stage_hints[k]) for k, v in values.items()}))
    return ContinualConfig(**kwargs, stages=tuple(stages))


@dataclass(frozen=True)
class Config:
    """A whole run: one attribute per TOML section."""

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    secure_aggregation: SecureAggregationConfig = field(default_factory=SecureAggregationConfig)
    defense: DefenseConfig = field(default_factory=DefenseConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    ffm: FFMConfig = field(default_factory=FFMConfig)
    public_data: DataConfig | None = None
    """``[public_data]`` (optional, :func:`public_data_config`): the server's public data as a separate dataset."""
    continual: ContinualConfig | None = None
    """``[continual]`` (optional, :func:`continual_config`): federated continual learning over stages."""

    def __post_init__(self) -> None:
        if self.continual is not None:
            self._check_continual(self.continual)
        if self.privacy.planned_rounds > self.server.rounds:
            raise ConfigError(
                "privacy.planned_rounds",
                f"{self.privacy.planned_rounds} is more than server.rounds={self.server.rounds}",
                "lower it, or 0 to budget for every round",
            )
        if self.server.clients_per_round > self.data.num_clients:
            raise ConfigError(
                "server.clients_per_round",
                f"{self.server.clients_per_round} is more than data.num_clients={self.data.num_clients}",
                "lower it, or 0 for all clients",
            )
        for client in self.audit.capture_clients:
            if client >= self.data.num_clients:
                raise ConfigError(
                    "audit.capture_clients",
                    f"client {client} does not exist (data.num_clients={self.data.num_clients})",
                    "use ids 0 .. num_clients-1",
                )
        for round in self.audit.capture_rounds:
            if round > self.server.rounds:
                raise ConfigError(
                    "audit.capture_rounds",
                    f"round {round} is after the last (server.rounds={self.server.rounds})",
                    "use rounds 1 .. server.rounds",
                )
        if self.model.linear_probe_rounds >= self.server.rounds:
            raise ConfigError(
                "model.linear_probe_rounds",
                f"{self.model.linear_probe_rounds} head-only rounds leave none of server.rounds={self.server.rounds} to fine-tune",
                'lower it (e.g. a quarter of the rounds), or use model.finetune = "head"',
            )
        if self.server.linear_probe_lr and not self.model.linear_probe_rounds:
            raise ConfigError(
                "server.linear_probe_lr",
                "sets the server learning rate of linear probing's head-only rounds, but model.linear_probe_rounds = 0",
                "set model.linear_probe_rounds, or remove server.linear_probe_lr",
            )
        from secure_ffm.models.prompt import PROMPT_METHODS

        if self.ffm.export and self.model.finetune in PROMPT_METHODS:
            raise ConfigError(
                "ffm.export",
                f"model.finetune = {self.model.finetune!r} leaves the encoder unchanged: an export would be the base model",
                'drop ffm.export (the trained prompt and head are in the run\'s checkpoint), or use finetune = "lora"',
            )
        if self.ffm.export_lora == "adapter" and self.model.finetune != "lora":
            raise ConfigError(
                "ffm.export_lora",
                f'"adapter" writes the LoRA adapters, but model.finetune = {self.model.finetune!r} trains none',
                'use model.finetune = "lora", or ffm.export_lora = "merged" (the default)',
            )
        from secure_ffm.engine.schedule import SCHEDULES

        if self.public_data is not None:
            if self.data.public_fraction > 0:
                raise ConfigError(
                    "data.public_fraction",
                    f"{self.data.public_fraction!r} and [public_data] both give the server public data",
                    "set data.public_fraction = 0 to use [public_data], or remove [public_data]",
                )
            if self.public_data.dataset == self.data.dataset:
                raise ConfigError(
                    "public_data.dataset",
                    f"{self.public_data.dataset!r} is data.dataset too: the clients would hold the server's public data",
                    "name another dataset, or hold out a share of data.dataset with data.public_fraction",
                )
        if (
            SCHEDULES.get(self.ffm.schedule, key="ffm.schedule").needs_public
            and self.data.public_fraction <= 0
            and self.public_data is None
        ):
            raise ConfigError(
                "ffm.schedule",
                f'"{self.ffm.schedule}" trains on the server\'s public data, but data.public_fraction is 0 and there is no [public_data]',
                'set data.public_fraction, e.g. 0.1, or name a dataset in [public_data], or use ffm.schedule = "federated"',
            )
        from secure_ffm.variants import MECHANISMS, PROTOCOLS

        if self.data.image_normalization == "training" and MECHANISMS.get(self.privacy.mode, key="privacy.mode").spends_budget:
            raise ConfigError(
                "data.image_normalization",
                f"\"training\" standardises with the clients' images' mean and std, outside privacy.mode = {self.privacy.mode!r}'s "
                "guarantee (the model and its export carry them)",
                'use "fixed" (the default: 0.5 and 0.5 per channel)',
            )
        # each protocol checks its own settings against the rest of the config (e.g. masking's threshold against the round size)
        protocol = PROTOCOLS.get(self.secure_aggregation.protocol, key="secure_aggregation.protocol")
        protocol.check_config(self)
        if self.secure_aggregation.signatures and not protocol.signs_messages:
            raise ConfigError(
                "secure_aggregation.signatures",
                f"the {self.secure_aggregation.protocol!r} protocol has no signed keys or consistency check",
                'use protocol = "masking", or set signatures = false',
            )
        if self.secure_aggregation.peer_keys and not self.secure_aggregation.signatures:
            raise ConfigError(
                "secure_aggregation.peer_keys", "names a key directory, but secure_aggregation.signatures is false", "set signatures = true"
            )

    def _check_continual(self, continual: ContinualConfig) -> None:
        if self.server.rounds != continual.rounds:
            raise ConfigError(
                "server.rounds",
                f"{self.server.rounds} is not the {continual.rounds} rounds of the continual.stages",
                "leave server.rounds out: a continual run takes the sum of its stages' rounds",
            )
        if self.ffm.schedule != "federated" or self.public_data is not None or self.data.public_fraction > 0:
            raise ConfigError(
                "continual",
                "continual learning trains on the clients' private data only",
                'remove [public_data] and data.public_fraction, and keep ffm.schedule = "federated"',
            )
        if self.model.objective != "classification" and any(stage.classes for stage in continual.stages):
            raise ConfigError(
                "continual.stages",
                f"classes select labels, but model.objective = {self.model.objective!r} reads none",
                "drop classes from the stages, or train a classifier",
            )

    @property
    def round_size(self) -> int:
        """The participants a round plans: ``server.clients_per_round``, at most (and by default) ``data.num_clients``."""
        return min(self.server.clients_per_round or self.data.num_clients, self.data.num_clients)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Every section as a table; ``[public_data]`` with its own keys only, and optional sections left out when absent."""
        document = {f.name: _section_to_dict(getattr(self, f.name)) for f in fields(self) if f.name not in OPTIONAL_SECTIONS}
        if self.public_data is not None:
            whole = _section_to_dict(self.public_data)
            document["public_data"] = {key: whole[key] for key in PUBLIC_DATA_KEYS}
        if self.continual is not None:
            body = _section_to_dict(self.continual)
            body["stages"] = [_section_to_dict(stage) for stage in self.continual.stages]
            document["continual"] = body
        return document

    def to_toml(self) -> str:
        return dumps_toml(self.to_dict())

    def replace(self, **overrides: str) -> Config:
        """A copy with ``section.key`` overrides (values given as TOML literals or bare strings)."""
        return config_from_dict(self.to_dict(), overrides=[f"{k}={v}" for k, v in overrides.items()])


def _section_to_dict(section: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(section):
        value = getattr(section, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


# --------------------------------------------------------------------------- loading


OPTIONAL_SECTIONS = {"public_data": public_data_config, "continual": continual_config}
"""Sections that are absent unless the TOML has them, with the function that builds each from its table."""


def _section_types() -> dict[str, type]:
    """The type of every section that is always present (every one but :data:`OPTIONAL_SECTIONS`)."""
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in fields(Config) if f.name not in OPTIONAL_SECTIONS}


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a field annotation; ints are accepted where floats are expected."""
    origin = typing.get_origin(annotation)
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(annotation)
        if not isinstance(value, list | tuple):
            raise ConfigError(key, f"must be a list of {item_type.__name__}, got {type(value).__name__} {value!r}")
        return tuple(_coerce(key, item, item_type) for item in value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false, got {type(value).__name__} {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"must be an integer, got {type(value).__name__} {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"must be a number, got {type(value).__name__} {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"must be a string, got {type(value).__name__} {value!r}", f'quote it: {key.split(".")[-1]} = "{value}"')
        if any(ord(c) < 32 or ord(c) == 127 for c in value):  # a NUL in a path fails deep inside os calls
            raise ConfigError(key, f"holds a control character: {value!r}", "remove it")
        return value
    raise TypeError(f"unsupported config annotation {annotation!r} for {key}")


def parse_override(assignment: str) -> tuple[str, str, Any]:
    """Split ``section.key=value``; the value is read as a TOML literal, else kept as a string."""
    if "=" not in assignment:
        raise ConfigError("--set", f"{assignment!r} is not section.key=value", "write e.g. --set client.lr=0.01")
    dotted, raw = assignment.split("=", 1)
    dotted = dotted.strip()
    if dotted.count(".") != 1:
        raise ConfigError("--set", f"{dotted!r} is not section.key", "write e.g. --set client.lr=0.01")
    section, key = dotted.split(".")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except (tomllib.TOMLDecodeError, RecursionError):
        value = raw  # taken as text, which the key's type check then refuses or keeps
    return section, key, value


def config_from_dict(raw: Mapping[str, Any], *, overrides: Sequence[str] = ()) -> Config:
    """Validate a parsed TOML document (plus ``section.key=value`` overrides) into a :class:`Config`."""
    merged: dict[str, dict[str, Any]] = {}
    section_types = _section_types()
    valid = [*section_types, *OPTIONAL_SECTIONS]
    for section, body in raw.items():
        if section not in valid:
            raise unknown_section(section, valid)
        if not isinstance(body, Mapping):
            raise ConfigError(section, "must be a table", f"write it as [{section}]")
        merged[section] = dict(body)
    for assignment in overrides:
        section, key, value = parse_override(assignment)
        if section not in valid:
            fix = did_you_mean(section, valid, show=lambda hint, key=key: f"{hint}.{key}", listing="valid sections")
            raise ConfigError(f"{section}.{key}", "unknown section", fix)
        merged.setdefault(section, {})[key] = value

    built: dict[str, Any] = {}
    for section, section_type in section_types.items():
        body = merged.get(section, {})
        hints = typing.get_type_hints(section_type)
        check_keys(section, body, [f.name for f in fields(section_type)])
        kwargs = {key: _coerce(f"{section}.{key}", value, hints[key]) for key, value in body.items()}
        built[section] = section_type(**kwargs)
    for section, build in OPTIONAL_SECTIONS.items():
        if section in merged:
            built[section] = build(merged[section])
    continual = built.get("continual")
    if continual is not None and "rounds" not in merged.get("server", {}):  # a continual run's rounds are its stages'
        built["server"] = dataclasses.replace(built["server"], rounds=continual.rounds)
    return Config(**built)


def read_toml(path: str | Path, *, key: str, fix: str) -> dict[str, Any]:
    """The TOML document at ``path``; a missing, unreadable or non-UTF-8 file (named by ``key``, with ``fix``) or bad
    syntax is a one-line ConfigError. A UTF-8 byte-order mark (as some Windows editors write) is accepted."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(key, f"{str(path)!r} is a directory, not a file", fix)
    if not path.is_file():
        raise ConfigError(key, f"file {str(path)!r} does not exist", fix)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(key, f"file {str(path)!r} cannot be read: {error.strerror or error}", "check its permissions") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ConfigError(
            str(path), f"is not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start})", "save it as UTF-8 TOML"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(str(path), f"is not valid TOML: {error}", "fix the syntax at the position given") from None
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        raise ConfigError(str(path), "nests arrays or tables too deeply for a config", "flatten it") from None


def load_config(path: str | Path, *, overrides: Sequence[str] = ()) -> Config:
    """Read a TOML file and validate it; every problem is a :class:`ConfigError`.

    An empty file (or one of comments only) is refused rather than run with every default:
    the defaults alone are a long MiniLM run, never what an empty file meant.
    """
    raw = read_toml(path, key="CONFIG", fix="pass the path of a .toml config, e.g. configs/quickstart.toml")
    if not raw:
        raise ConfigError("CONFIG", f"{str(path)!r} holds no settings", "start from a shipped config, e.g. configs/quickstart.toml")
    return config_from_dict(raw, overrides=overrides)


# --------------------------------------------------------------------------- local paths

HF_PREFIX = "hf:"
"""``data.dataset = "hf:<name>[:<config>]"``: a Hugging Face dataset, by Hub name or local folder."""


def _surely_local(path: str) -> bool:
    """Whether a path can only mean a local file or folder (a Hub name is ``name`` or ``owner/name``)."""
    return path.startswith(("/", "./", "../", "~", "\\", ".\\")) or path.count("/") > 1


def local_paths(config: Config) -> list[tuple[str, str, str, bool]]:
    """The local files and folders ``config`` names, as ``(key, value, path, surely_local)``: a data file or corpus (of
    ``[data]`` and ``[public_data]``), the folder of an ``hf:`` dataset and a model folder (``surely_local`` False: the
    value may as well be a Hugging Face Hub name)."""
    from secure_ffm.data.external import looks_like_path

    found = []
    sources = [("data.dataset", config.data.dataset)]
    if config.public_data is not None:
        sources.append(("public_data.dataset", config.public_data.dataset))
    for key, dataset in sources:
        if dataset.startswith(HF_PREFIX):
            folder = dataset[len(HF_PREFIX) :].partition(":")[0]
            if folder:
                found.append((key, dataset, folder, _surely_local(folder)))
        elif looks_like_path(dataset):
            found.append((key, dataset, dataset, True))
    name = config.model.name_or_path
    if name:
        found.append(("model.name_or_path", name, name, _surely_local(name)))
    return found


def check_local_paths(config: Config, *, beside: Path | None = None, what: str = "the config's folder", skip: Collection[str] = ()) -> None:
    """Refuse a relative data file, ``hf:`` dataset folder or model folder that does not exist, before anything loads.

    Every command (``train``, ``privacy``, ``sweep``, ``attack``) resolves relative paths the same way: from the current
    directory, never from the config file's folder. When the path exists in ``beside`` (the config's folder, named by
    ``what``) instead, the error says so; a value that may be a Hub name is refused only then. Keys in ``skip`` are
    not checked (a pipeline stage's model that an earlier stage has yet to export).
    """
    for key, value, text, surely_local in local_paths(config):
        if key in skip:
            continue
        path = Path(text).expanduser()
        if path.is_absolute() or path.exists():
            continue
        there = beside / path if beside is not None else None
        if not surely_local and not (there is not None and there.exists()):
            continue  # a Hugging Face Hub name
        where = f", not from {what} {beside}" if beside is not None else ""
        if there is not None and there.exists():
            fix = f"it exists at {there}: write {value.replace(text, str(there), 1)!r}, or run from {beside}"
        else:
            fix = f"write an absolute path, or one relative to {Path.cwd()}"
        raise ConfigError(key, f"{value!r} does not exist: relative paths resolve from the current directory {Path.cwd()}{where}", fix)


# --------------------------------------------------------------------------- writing


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if math.isnan(value):
            return "nan"
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list | tuple) and bool(value) and all(isinstance(item, Mapping) for item in value)


def dumps_toml(document: Mapping[str, Mapping[str, Any]]) -> str:
    """Write a two-level document (tables of scalars and lists, and arrays of such tables) as TOML."""
    lines: list[str] = []
    for section, body in document.items():
        if lines:
            lines.append("")
        lines.append(f"[{section}]")
        arrays = {key: value for key, value in body.items() if _is_table_array(value)}
        for key, value in body.items():
            if key not in arrays:
                lines.append(f"{key} = {_toml_value(value)}")
        for key, tables in arrays.items():
            for table in tables:
                lines.extend(["", f"[[{section}.{key}]]"])
                lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"


__all__ = [
    "ClientConfig",
    "Config",
    "ContinualConfig",
    "DataConfig",
    "ModelConfig",
    "PUBLIC_DATA_KEYS",
    "PrivacyConfig",
    "RunConfig",
    "SecureAggregationConfig",
    "ServerConfig",
    "StageConfig",
    "check_local_paths",
    "config_from_dict",
    "dumps_toml",
    "load_config",
    "parse_override",
]
