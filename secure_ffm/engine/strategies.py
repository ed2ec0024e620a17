"""Server strategies: how a round's aggregated update changes the global model.

Every strategy receives the example-weighted mean of the client deltas (computed
by an :class:`~secure_ffm.engine.aggregation.AggregationProtocol`, which may be secure)
and never an individual client's update. That is what lets secure aggregation and
DP-FedAvg's server noise slot in underneath any strategy.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping

import numpy as np

from secure_ffm.config import ServerConfig
from secure_ffm.engine.wire import NamedArrays, Scalar
from secure_ffm.errors import ConfigError
from secure_ffm.registry import Registry

STRATEGIES: Registry[type[Strategy]] = Registry("strategy")


class Strategy(ABC):
    """Configures clients for a round and turns the mean delta into new global parameters."""

    name: str = ""

    has_server_lr: bool = False
    """Whether the strategy steps with ``server.server_lr`` (and so can take a round's own learning rate)."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.lr_schedule: Callable[[int], float | None] | None = None
        """Set by the run: a round's server learning rate where it departs from ``server.server_lr`` (``None``
        elsewhere), e.g. ``server.linear_probe_lr`` in linear probing's head-only rounds."""

    def server_lr(self, round: int) -> float:
        """The server learning rate of ``round``."""
        lr = self.lr_schedule(round) if self.lr_schedule is not None else None
        return self.config.server_lr if lr is None else lr

    def configure_fit(self, round: int) -> dict[str, Scalar]:
        """Settings sent to every client of ``round`` (e.g. FedProx's ``proximal_mu``)."""
        return {}

    weighting: str = "examples"
    """How clients are weighted in the mean: ``examples`` (McMahan et al., AISTATS 2017) or ``uniform``."""

    @abstractmethod
    def apply(self, round: int, parameters: NamedArrays, mean_delta: NamedArrays) -> NamedArrays:
        """New global parameters from the current ones and the weighted mean client delta."""

    def state_dict(self) -> NamedArrays:
        """Server-optimizer state to checkpoint (empty for stateless strategies)."""
        return {}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        if state:
            raise ValueError(f"{self.name} has no state, but the checkpoint holds {sorted(state)[:3]}")


@STRATEGIES.register("fedavg")
class FedAvg(Strategy):
    """Federated Averaging (McMahan et al., AISTATS 2017): the new model is the example-weighted mean of the client models."""

    name = "fedavg"

    def apply(self, round: int, parameters: NamedArrays, mean_delta: NamedArrays) -> NamedArrays:
        return {k: (parameters[k] + mean_delta[k]).astype(np.float32) for k in parameters}


@STRATEGIES.register("fedavgm")
class FedAvgM(Strategy):
    """FedAvg with server momentum (Hsu, Qi & Brown 2019; DP-FedAvgM in McMahan et al., ICLR 2018): with
    ``β = server.server_momentum`` and ``v_0 = 0``, ``v = β v + Δ`` and ``x = x + v``. The momentum is post-processing
    of the (possibly noisy) mean delta, so it costs no privacy; it carries the signal across rounds while the
    independent noise of successive rounds averages out."""

    name = "fedavgm"

    def __init__(self, config: ServerConfig) -> None:
        super().__init__(config)
        self.velocity: NamedArrays = {}

    def apply(self, round: int, parameters: NamedArrays, mean_delta: NamedArrays) -> NamedArrays:
        beta = self.config.server_momentum
        if not self.velocity:
            self.velocity = {k: np.zeros_like(v, dtype=np.float64) for k, v in parameters.items()}
        new: NamedArrays = {}
        for k, x in parameters.items():
            self.velocity[k] = beta * self.velocity[k] + mean_delta[k].astype(np.float64)
            new[k] = (x + self.velocity[k]).astype(np.float32)
        return new

    def state_dict(self) -> NamedArrays:
        return {f"velocity/{k}": v for k, v in self.velocity.items()}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self.velocity = {k.removeprefix("velocity/"): np.asarray(v, dtype=np.float64) for k, v in state.items()}


@STRATEGIES.register("fedprox")
class FedProx(FedAvg):
    """FedProx (Li et al., MLSys 2020): FedAvg aggregation, clients add ``mu/2 ||w - w_global||^2`` to their loss."""

    name = "fedprox"

    def configure_fit(self, round: int) -> dict[str, Scalar]:
        return {"proximal_mu": self.config.proximal_mu}


class _AdaptiveServerOptimizer(Strategy):
    """Adaptive federated optimization (Reddi et al., ICLR 2021, Algorithm 2).

    The mean client delta is a pseudo-gradient ``Δ``; with ``m_{-1} = 0`` and
    ``v_{-1} = τ²`` the server does, per coordinate,
    ``m = β1 m + (1-β1) Δ``, the second-moment update of the subclass, and
    ``x = x + η m / (√v + τ)`` (no bias correction, as in the paper).
    """

    has_server_lr = True

    def __init__(self, config: ServerConfig) -> None:
        super().__init__(config)
        self.m: NamedArrays = {}
        self.v: NamedArrays = {}

    @abstractmethod
    def second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray: ...

    def apply(self, round: int, parameters: NamedArrays, mean_delta: NamedArrays) -> NamedArrays:
        c = self.config
        lr = self.server_lr(round)
        if not self.m:
            self.m = {k: np.zeros_like(v, dtype=np.float64) for k, v in parameters.items()}
            self.v = {k: np.full_like(v, c.tau**2, dtype=np.float64) for k, v in parameters.items()}
        new: NamedArrays = {}
        for k, x in parameters.items():
            delta = mean_delta[k].astype(np.float64)
            self.m[k] = c.beta_1 * self.m[k] + (1.0 - c.beta_1) * delta
            self.v[k] = self.second_moment(self.v[k], delta * delta)
            new[k] = (x + lr * self.m[k] / (np.sqrt(self.v[k]) + c.tau)).astype(np.float32)
        return new

    def state_dict(self) -> NamedArrays:
        state = {f"m/{k}": v for k, v in self.m.items()}
        state.update({f"v/{k}": v for k, v in self.v.items()})
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self.m = {k[2:]: np.asarray(v, dtype=np.float64) for k, v in state.items() if k.startswith("m/")}
        self.v = {k[2:]: np.asarray(v, dtype=np.float64) for k, v in state.items() if k.startswith("v/")}


@STRATEGIES.register("fedadam")
class FedAdam(_AdaptiveServerOptimizer):
    """FedAdam: ``v = β2 v + (1-β2) Δ²`` (Reddi et al., ICLR 2021)."""

    name = "fedadam"

    def second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        b2 = self.config.beta_2
        return b2 * v + (1.0 - b2) * delta_sq


@STRATEGIES.register("fedyogi")
class FedYogi(_AdaptiveServerOptimizer):
    """FedYogi: ``v = v - (1-β2) Δ² sign(v - Δ²)`` (Reddi et al., ICLR 2021; Zaheer et al., NeurIPS 2018)."""

    name = "fedyogi"

    def second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        return v - (1.0 - self.config.beta_2) * delta_sq * np.sign(v - delta_sq)


def build_strategy(config: ServerConfig) -> Strategy:
    cls = STRATEGIES.get(config.strategy, key="server.strategy")
    if config.linear_probe_lr and not cls.has_server_lr:
        with_lr = ", ".join(repr(name) for name in STRATEGIES.names() if STRATEGIES.get(name).has_server_lr)
        raise ConfigError(
            "server.linear_probe_lr",
            f"server.strategy = {config.strategy!r} has no server learning rate",
            f"use a strategy with one ({with_lr}), or remove server.linear_probe_lr",
        )
    return cls(config)
