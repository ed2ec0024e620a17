"""Update-level defenses that need only the update: ``l2-clip``, ``gaussian-noise``, ``prune``, ``quantize``.

Each is an :class:`~secure_ffm.engine.transforms.UpdateTransform` registered in
:data:`secure_ffm.engine.transforms.TRANSFORMS`, built from the ``[defense]`` section by
``from_config`` and listed in ``defense.names``. They change only ``update.delta`` (never the
side ``statistics`` of DP-FedAvg), return new arrays of the same names, shapes and dtypes, and
draw randomness only from ``context.rng``.

What they target: optimization-based gradient inversion by an honest-but-curious server
(DLG, Zhu et al., NeurIPS 2019; iDLG, Zhao et al., 2020; Inverting Gradients, Geiping et al.,
NeurIPS 2020), which matches the observed update and so degrades when the update is
perturbed or coarsened. None of them gives a formal privacy guarantee: ``gaussian-noise``
without clipping and accounting is not differential privacy (use ``privacy.mode = "dp-fedavg"``
or ``"dp-sgd"`` for that). Being functions of the update alone, they are post-processing and
leave any DP guarantee of the update intact.
"""

from __future__ import annotations

from defenses.core import add_gaussian_noise, clip_l2, prune_by_magnitude, quantize_sign, quantize_uniform
from secure_ffm.config import DefenseConfig
from secure_ffm.engine.transforms import TRANSFORMS, TransformContext, UpdateTransform
from secure_ffm.engine.wire import ClientUpdate


@TRANSFORMS.register("l2-clip")
class L2Clip(UpdateTransform):
    """Scale the whole update (all arrays as one vector) to L2 norm at most ``clip_norm``.

    Bounds what one client can move the model by, and the magnitude an inversion attack
    matches. Unlike DP-FedAvg's ``clip`` it ignores the round's adaptive ``clip_norm`` setting:
    it is a fixed bound (``defense.clip_norm``). Source: the clipping step of McMahan et al.,
    "Learning Differentially Private Recurrent Language Models" (ICLR 2018).
    """

    name = "l2-clip"

    def __init__(self, *, clip_norm: float) -> None:
        if not clip_norm > 0:
            raise ValueError(f"clip_norm must be positive, got {clip_norm}")
        self.clip_norm = clip_norm

    @classmethod
    def label(cls, config: DefenseConfig) -> str:
        return f"L2 clip {config.clip_norm:g}"

    @classmethod
    def from_config(cls, config: DefenseConfig) -> L2Clip:
        return cls(clip_norm=config.clip_norm)

    def __call__(self, update: ClientUpdate, context: TransformContext) -> ClientUpdate:
        clipped, _ = clip_l2(update.delta, self.clip_norm)
        return update.replace_delta(clipped)


@TRANSFORMS.register("gaussian-noise")
class GaussianNoise(UpdateTransform):
    """Add N(0, ``noise_std``²) to every coordinate, drawn from the client's seeded generator.

    The "noisy gradients" defense of Zhu et al., "Deep Leakage from Gradients" (NeurIPS 2019,
    Sec. 5): Gaussian noise of variance 1e-2 or more stopped DLG (at a cost in accuracy).
    Not differential privacy by itself: the update is not clipped and nothing is accounted.
    """

    name = "gaussian-noise"

    def __init__(self, *, std: float) -> None:
        if not std >= 0:
            raise ValueError(f"std must be non-negative, got {std}")
        self.std = std

    @classmethod
    def label(cls, config: DefenseConfig) -> str:
        return f"noise σ={config.noise_std:g}"

    @classmethod
    def from_config(cls, config: DefenseConfig) -> GaussianNoise:
        return cls(std=config.noise_std)

    def __call__(self, update: ClientUpdate, context: TransformContext) -> ClientUpdate:
        return update.replace_delta(add_gaussian_noise(update.delta, self.std, context.rng))


@TRANSFORMS.register("prune")
class Prune(UpdateTransform):
    """Zero the ``fraction`` smallest-magnitude coordinates of each array separately.

    Gradient pruning as a defense, Zhu et al., "Deep Leakage from Gradients" (NeurIPS 2019,
    Sec. 5): pruning more than about 20% of the gradient stopped DLG on their models. Pruning
    is per array (per parameter tensor, as layer-wise top-k sparsification is in Deep Gradient
    Compression, Lin et al., ICLR 2018) rather than global: every layer is sparsified by the same
    fraction, so no layer (e.g. the head, whose gradient reveals labels and representations)
    passes through untouched because its coordinates happen to be larger than the others'.
    Each array of size d keeps its ``d - floor(fraction d)`` largest-magnitude entries exactly.
    """

    name = "prune"

    def __init__(self, *, fraction: float) -> None:
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"fraction must be in [0, 1), got {fraction}")
        self.fraction = fraction

    @classmethod
    def label(cls, config: DefenseConfig) -> str:
        return f"prune {config.prune_fraction * 100:g}%"

    @classmethod
    def from_config(cls, config: DefenseConfig) -> Prune:
        return cls(fraction=config.prune_fraction)

    def __call__(self, update: ClientUpdate, context: TransformContext) -> ClientUpdate:
        return update.replace_delta({name: prune_by_magnitude(array, self.fraction) for name, array in update.delta.items()})


@TRANSFORMS.register("quantize")
class Quantize(UpdateTransform):
    """Quantize each array to ``bits`` bits per coordinate (and one float scale per array).

    ``bits >= 2``: unbiased stochastic rounding onto ``2^bits`` levels over ``[-max|x|, max|x|]``
    (QSGD, Alistarh et al., NeurIPS 2017), drawn from the client's seeded generator; every
    coordinate moves by at most one step ``2 max|x| / (2^bits - 1)``. ``bits = 1``: the sign times
    the array's mean magnitude (signSGD, Bernstein et al., ICML 2018). Coarsening the update
    removes low-order information that gradient inversion fits to; the protection is empirical
    and weak at high bit widths (8 bits changes each coordinate by under 1% of the array's
    range). The values stay float32 on the wire: this simulates what the server would decode,
    it does not shrink the message.
    """

    name = "quantize"

    def __init__(self, *, bits: int) -> None:
        if not 1 <= bits <= 32:
            raise ValueError(f"bits must be 1 to 32, got {bits}")
        self.bits = bits

    @classmethod
    def label(cls, config: DefenseConfig) -> str:
        return "sign" if config.quantize_bits == 1 else f"{config.quantize_bits}-bit quantize"

    @classmethod
    def from_config(cls, config: DefenseConfig) -> Quantize:
        return cls(bits=config.quantize_bits)

    def __call__(self, update: ClientUpdate, context: TransformContext) -> ClientUpdate:
        if self.bits == 1:
            return update.replace_delta({name: quantize_sign(array) for name, array in update.delta.items()})
        return update.replace_delta({name: quantize_uniform(array, self.bits, context.rng) for name, array in update.delta.items()})
