"""How the server picks a round's clients (``server.client_sampling``).

``fixed`` draws exactly ``clients_per_round`` clients uniformly without replacement. ``poisson`` includes every client
independently with probability ``q = clients_per_round / num_clients``, so a round's size varies around
``clients_per_round`` and may be 0. The two differ for user-level DP: the subsampled Gaussian mechanism that DP-FedAvg's
ledger composes (q = m / n, add/remove neighbours; McMahan et al., ICLR 2018, Alg. 1) is Poisson sampling with a fixed
denominator, while fixed-size sampling pairs with replace-one neighbours and another analysis (Wang, Balle &
Kasiviswanathan, AISTATS 2019). ``auto`` lets the privacy mechanism choose (:meth:`PrivacyMechanism.client_sampling`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class ClientSampling(ABC):
    """Picks the clients of one round from the round's generator (secret when a mechanism's accounting needs it)."""

    name: str = ""

    @abstractmethod
    def sample(self, rng: np.random.Generator, *, num_clients: int, clients_per_round: int) -> list[int]:
        """The round's client ids, sorted (``clients_per_round < num_clients``)."""


class FixedSizeSampling(ClientSampling):
    """Exactly ``clients_per_round`` clients, uniformly without replacement."""

    name = "fixed"

    def sample(self, rng: np.random.Generator, *, num_clients: int, clients_per_round: int) -> list[int]:
        return sorted(int(c) for c in rng.choice(num_clients, size=clients_per_round, replace=False))


class PoissonSampling(ClientSampling):
    """Every client independently with probability ``q = clients_per_round / num_clients`` (the round may be empty)."""

    name = "poisson"

    def sample(self, rng: np.random.Generator, *, num_clients: int, clients_per_round: int) -> list[int]:
        q = clients_per_round / num_clients
        return [int(c) for c in np.flatnonzero(rng.random(num_clients) < q)]
