"""The registries of a run's variants, and the one place the built-in variants are registered.

A privacy mechanism (``privacy.mode``), an aggregation protocol (``secure_aggregation.protocol``)
and an update transform (``defense.names``) are each named only here, by the registry they
belong to. Config validation asks these registries for the valid names; the simulation, the
leakage audit and the sweep's labels ask the registered class for its properties
(``PrivacyMechanism.replaces_trainer``, ``AggregationProtocol.hides_updates``, ``label``...),
never compare name strings. Adding a variant is one ``register`` call, here for a built-in or
in a plugin (``defenses`` registers its transforms when :mod:`secure_ffm.plugins` loads it).

Built-ins are registered lazily, as ``"module:Class"``: listing the names (what config
validation needs) imports nothing, so ``import secure_ffm.config`` stays free of numpy, torch,
Opacus and TenSEAL; the implementation is imported on the first ``get``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from secure_ffm.registry import Registry

if TYPE_CHECKING:
    from secure_ffm.continual.methods import ContinualMethod
    from secure_ffm.engine.aggregation import AggregationProtocol
    from secure_ffm.engine.sampling import ClientSampling
    from secure_ffm.engine.transforms import UpdateTransform
    from secure_ffm.privacy.mechanisms import PrivacyMechanism

PROTOCOLS: Registry[type[AggregationProtocol]] = Registry("aggregation protocol")
"""``secure_aggregation.protocol``: how the server learns the sum of the clients' updates."""
MECHANISMS: Registry[type[PrivacyMechanism]] = Registry("privacy mode")
"""``privacy.mode``: the differential-privacy mechanism of the whole run."""
TRANSFORMS: Registry[type[UpdateTransform]] = Registry("update transform")
"""``defense.names``: what a client does to its update before it sends it (plugins add most of them)."""
CLIENT_SAMPLING: Registry[type[ClientSampling]] = Registry("client sampling")
"""``server.client_sampling``: how the server picks a round's clients (``auto`` asks the privacy mechanism)."""
CONTINUAL_METHODS: Registry[type[ContinualMethod]] = Registry("continual-learning method")
"""``continual.method``: how a continual run keeps what earlier stages taught (docs/continual.md)."""


def _register_builtins() -> None:
    PROTOCOLS.register_lazy("none", "secure_ffm.engine.aggregation:PlaintextAggregation")
    PROTOCOLS.register_lazy("masking", "secure_ffm.secagg.masking_protocol:MaskingProtocol")
    PROTOCOLS.register_lazy("ckks", "secure_ffm.secagg.ckks:CKKSProtocol")
    MECHANISMS.register_lazy("none", "secure_ffm.privacy.mechanisms:NoPrivacy")
    MECHANISMS.register_lazy("dp-sgd", "secure_ffm.privacy.dp_sgd:DPSGD")
    MECHANISMS.register_lazy("dp-fedavg", "secure_ffm.privacy.dp_fedavg:DPFedAvg")
    MECHANISMS.register_lazy("distributed-dp-sgd", "secure_ffm.privacy.distributed_dp_sgd:DistributedDPSGD")
    TRANSFORMS.register_lazy("clip", "secure_ffm.privacy.dp_fedavg:ClipUpdate")
    TRANSFORMS.register_lazy("gaussian-share", "secure_ffm.privacy.dp_fedavg:GaussianNoiseShare")
    CLIENT_SAMPLING.register_lazy("fixed", "secure_ffm.engine.sampling:FixedSizeSampling")
    CLIENT_SAMPLING.register_lazy("poisson", "secure_ffm.engine.sampling:PoissonSampling")
    CONTINUAL_METHODS.register_lazy("naive", "secure_ffm.continual.methods:NaiveSequential")
    CONTINUAL_METHODS.register_lazy("replay", "secure_ffm.continual.methods:LocalReplay")
    CONTINUAL_METHODS.register_lazy("ewc", "secure_ffm.continual.methods:FederatedEWC")
    CONTINUAL_METHODS.register_lazy("isolation", "secure_ffm.continual.methods:StageIsolation")


_register_builtins()
