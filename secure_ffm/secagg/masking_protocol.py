"""The pairwise-masking secure aggregation protocol: messages, client, server, and an in-process driver.

Bonawitz et al., CCS 2017, "Practical Secure Aggregation for Privacy-Preserving Machine
Learning" (Sec. 4, the semi-honest protocol), with the sparse neighbourhoods of SecAgg+
(Bell et al., CCS 2020). One round, as messages between :class:`MaskingClient` objects
(one per participant) and one :class:`MaskingServer`, which share no secrets:

0. **advertise keys** - each client draws two fresh X25519 key pairs and sends their public
   halves (:class:`AdvertiseKeys`): ``c`` for the pairwise masks, ``s`` for encrypting shares.
   The server answers with a :class:`RoundSetup`: every public key, the mask graph (complete,
   or a SecAgg+ Harary graph), the Shamir threshold ``t``, the public weight bound, the
   quantization parameters and the vector layout it fixed from its own model.
1. **share keys** - each client checks ``t`` (see below), draws a self-mask seed ``b_u``,
   Shamir-splits it and its pair private key among its neighbourhood (its graph neighbours and
   itself, ``t`` of them rebuild either secret) and sends each neighbour's two shares encrypted
   with ChaCha20-Poly1305 under ``HKDF(X25519(s_u, s_v))``, plus a hash commitment to ``b_u``
   (:class:`ShareKeys`). The server routes the ciphertexts; it cannot read them.
2. **masked input** - each client quantizes its weighted update (see :class:`MaskingClient`)
   and sends ``x_u + PRG(b_u) + sum_v +-PRG(s_uv)`` (a :class:`~secure_ffm.engine.wire.ClientMessage`).
   The server ring-sums the vectors as they arrive.
3. **unmasking** - the server announces who survived and who dropped (:class:`UnmaskRequest`).
   Each surviving client returns, for every neighbour, its share of the neighbour's self seed
   if the neighbour survived or of its pair private key if it dropped - never both for one
   client, whatever later requests claim (:class:`UnmaskResponse`). The server rebuilds the
   survivors' self seeds and the dropped clients' keys, removes the masks and decodes the sum.

A round needs at least ``t`` survivors (and, under SecAgg+, ``t`` surviving share holders in
every neighbourhood); otherwise it aborts with :class:`~secure_ffm.engine.aggregation.AggregationError`.

Against an active server (one that sends different clients different messages) the clients
keep Bonawitz et al.'s rules for the unmasking stage: a client refuses a set-up whose ``t`` is
not a strict majority of its neighbourhood (or is below its own configured minimum), refuses
to unmask when fewer than ``t`` of its neighbourhood are listed as survivors, and reveals one
kind of share per neighbour, once. A server that tells some holders of client ``u``'s secrets
that ``u`` dropped and the others that it survived then needs ``t`` honest holders of each
kind, ``2t`` in all, more than the neighbourhood has (:func:`~secure_ffm.secagg.graph.threshold_range`).
The server, for its part, rebuilds each secret from every share it gets: extra shares beyond
``t`` find and drop a holder whose share is wrong (:func:`~secure_ffm.secagg.shamir.reconstruct`),
and a rebuilt self seed must match its owner's commitment, as a rebuilt pair key must match the
public key. What stays out of reach without node authentication (a server that substitutes
public keys or invents clients) is described in ``docs/threat_model.md``.

Integer encoding (``integer_values``): a privacy mechanism that adds discrete noise (the distributed discrete
Gaussian, secure_ffm.privacy.distributed) hands the protocol integer-valued updates, which are reduced mod 2^32
and summed exactly (:func:`~secure_ffm.secagg.quantization.encode_integers`); the weight travels as an integer too.

Fixed-point encoding (``quantization``): a client with weight ``w`` sends ``w * delta`` and
``w * statistic`` clipped to ``[-clip_range * W, clip_range * W]`` where ``W`` is the public
weight bound (e.g. the largest client's example count), and ``w`` itself in ``[0, W]``. The
server divides the decoded weighted sum by the decoded total weight, so the mean is exact up to
clipping and ``error_bound(num_clients=s, clip_range=clip_range * W, levels=L) / total_weight``
per coordinate for ``s`` survivors. Values beyond the clip range are clipped (biasing the mean);
choose ``clip_range`` above the largest per-coordinate delta magnitude.

Keys, self seeds, Shamir coefficients and the graph relabelling come from the operating
system's CSPRNG; only the stochastic rounding draws from a seeded numpy generator, which needs
no secrecy (the masks hide its result).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import operator
import secrets
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from secure_ffm.engine.aggregation import (
    Aggregate,
    AggregationError,
    AggregationProtocol,
    ClientRound,
    EncodingDeclined,
    ServerRound,
    Stage,
    Stages,
    VectorLayout,
    check_envelope,
)
from secure_ffm.engine.codec import wire_record
from secure_ffm.engine.wire import ClientMessage, ClientUpdate, NamedArrays
from secure_ffm.errors import ConfigError
from secure_ffm.secagg import graph as graphs
from secure_ffm.secagg import keys, masking, quantization, shamir, signing
from secure_ffm.seeding import SECAGG_ROUNDING, generator

if TYPE_CHECKING:
    from secure_ffm.config import Config, SecureAggregationConfig

log = logging.getLogger(__name__)


def _hash_keys(digest: Any, public_keys: Mapping[int, tuple[bytes, bytes]]) -> None:
    for client in sorted(public_keys):
        pair_public, share_public = public_keys[client]
        digest.update(struct.pack(">q", client) + bytes(pair_public) + bytes(share_public))


def setup_digest(setup: RoundSetup) -> bytes:
    """:attr:`RoundSetup.digest`: computed once per set-up object."""
    return setup.digest


def _setup_digest(setup: RoundSetup) -> bytes:
    """SHA-256 of everything a round's set-up fixes: the round, ``t``, the weight bound, clip range, quantization levels,
    layout and encoding, the mask graph and every participant's advertised keys (fresh each round).

    A survivor-list signature covers it, so a signature from another run, another round or another set-up of the same
    round number verifies nowhere else (an audit of 2026-12-07 replayed earlier runs' signatures of other lists to
    complete a quorum); and every pairwise mask is bound to it (:func:`mask_binding`), so clients shown different
    set-ups make masks that do not cancel (a review of 2026-12-07 gave every client but the target a weight bound of
    1e300 and 3 levels, which encoded their updates as constants, and read the target's update out of the sum)."""
    digest = hashlib.sha256(b"secure-ffm/secagg/setup/v2\x00")
    digest.update(
        struct.pack(">qqddq?", setup.round, setup.threshold, setup.weight_bound, setup.clip_range, setup.levels, setup.integer_values)
    )
    layout = setup.layout.to_bytes() if setup.layout is not None else b""
    digest.update(struct.pack(">?Q", setup.layout is not None, len(layout)) + layout)
    _hash_keys(digest, setup.public_keys)
    digest.update(struct.pack(">Q", len(setup.neighbours)))
    for client in sorted(setup.neighbours):
        peers = sorted(setup.neighbours[client])
        digest.update(struct.pack(f">qQ{len(peers)}q", client, len(peers), *peers))
    return digest.digest()


def mask_binding(setup: RoundSetup, instructions_digest: bytes | None) -> bytes:
    """What a client's pairwise masks are bound to (:func:`~secure_ffm.secagg.keys.pair_context`): the set-up it accepted
    (:func:`setup_digest`) and the fit request it trained on (:func:`~secure_ffm.engine.wire.instructions_digest`; None
    outside a run). A pair's masks cancel only when both clients were shown the same set-up and sent the same request:
    a server that lies to some clients, to make their updates known (a model whose update is zero: Pasquini et al.,
    CCS 2022; a set-up that encodes any update as a constant), unmasks noise instead of the others' sum."""
    digest = hashlib.sha256(b"secure-ffm/secagg/mask-binding/v1\x00" + setup_digest(setup))
    digest.update(b"\x01" + bytes(instructions_digest) if instructions_digest else b"\x00")
    return digest.digest()


def graph_seed(round: int, public_keys: Mapping[int, tuple[bytes, bytes]]) -> bytes:
    """The seed of a SecAgg+ round's Harary graph: SHA-256 of the round and every participant's fresh advertised keys.

    Every client rebuilds the graph from it and refuses any other (:meth:`MaskingClient._check_setup`): a graph the
    server chose could be several disjoint cliques, every degree right, whose sums a review of 2026-12-07 unmasked one by
    one with signatures on. The keys are the clients' own fresh draws, so a server without colluders cannot choose the
    graph; it can only choose which clients take part, and every graph it gets that way is a k-connected Harary graph. A
    client colluding with the server can: it draws its keys after seeing the others' and re-rolls the graph until the
    colluders sit next to a target (a second review of 2026-12-07 did it in 0.05 s), so SecAgg+ holds only against a
    server with no colluding client (docs/threat_model.md); committing to the keys before any is revealed is not
    implemented."""
    digest = hashlib.sha256(b"secure-ffm/secagg/graph-seed/v1\x00" + struct.pack(">q", round))
    _hash_keys(digest, public_keys)
    return digest.digest()


def _has_derived_graph(setup: RoundSetup) -> bool:
    """Whether ``setup``'s mask graph is the one its round and keys give (:func:`graph_seed`, :func:`mask_graph`, of the
    degree its first participant has)."""
    if not setup.public_keys or set(setup.neighbours) != set(setup.public_keys):
        return False
    degree = len(setup.neighbours[min(setup.public_keys)])
    try:
        expected = mask_graph(setup.participants, degree, seed=graph_seed(setup.round, setup.public_keys))
    except ValueError:  # an odd or impossible degree: no Harary graph has it
        return False
    return dict(setup.neighbours) == expected


def mask_graph(participants: Sequence[int], degree: int, *, seed: bytes) -> dict[int, frozenset[int]]:
    """The mask graph over ``participants``' ids: complete when ``degree`` is 0 or reaches every other participant,
    else the Harary graph of that degree relabelled by ``seed`` (:func:`~secure_ffm.secagg.graph.harary_graph`)."""
    ids = tuple(sorted(participants))
    n = len(ids)
    positions = graphs.full_graph(n) if graphs.uses_full_graph(n, degree) else graphs.harary_graph(n, degree, seed=seed)
    return {ids[p]: frozenset(ids[q] for q in nbrs) for p, nbrs in positions.items()}


def consistency_quorum(setup: RoundSetup, *, floor: int = 0) -> int:
    """How many survivors must sign a survivor list before a client unmasks for it: a strict majority of the round's
    participants, and at least ``t``. Each honest client signs one list a round, so no two lists both reach it (a server
    colluding with ``c`` clients, which sign anything, needs ``2 * quorum - c <= n``: ``c >= 2`` breaks a bare majority,
    as ``c`` colluding share holders break ``t``; docs/threat_model.md). ``floor``: the party's own minimum (a majority
    of its planned round, :meth:`MaskingProtocol.planned_min_quorum`), whatever size the set-up claims."""
    return max(setup.threshold, len(setup.public_keys) // 2 + 1, floor)


def threshold_protecting(num_participants: int, neighbours: int, min_sum: int) -> int:
    """The lowest ``t`` at which a server that lies about survivors cannot unmask a sum of fewer than ``min_sum`` of
    ``num_participants`` inputs under the complete graph (:func:`~secure_ffm.secagg.graph.threshold_for_isolated_sum`);
    0 when nothing is asked (``min_sum`` 0) or the graph is SecAgg+'s, where the bound does not apply."""
    if not min_sum or not graphs.uses_full_graph(num_participants, neighbours):
        return 0
    return graphs.threshold_for_isolated_sum(num_participants, min_sum)


_SHARE_LABEL = b"secure-ffm/secagg/v1/share-encryption"
_COMMITMENT_LABEL = b"secure-ffm/secagg/v1/self-seed-commitment"
_NONCE_BYTES = 12
ADVERTISE_KEYS = "advertise_keys"
SHARE_KEYS = "share_keys"
UNMASK = "unmask"
CONSISTENCY_CHECK = "consistency_check"
"""The names of masking's stages (the masked input travels in the fit stage, with the routed shares as its payload)."""
MASKED_KEY = "masked"
ROUND_KEY = "round"
LAYOUT_KEY = "layout"


# --------------------------------------------------------------------------- messages


class MaskingEncodeError(EncodingDeclined):
    """A client refuses to mask an update with NaN or infinite values: it sends no masked input.

    An :class:`~secure_ffm.engine.aggregation.EncodingDeclined` naming the client, so the runner leaves the
    client out of the round, and the server removes its pairwise masks from the survivors' sum exactly as for a
    client that dropped after the key set-up. (Fixed-point encoding clips finite values, but a
    NaN has no place in the ring.)
    """


@wire_record
@dataclass(frozen=True)
class KeyRequest:
    """Stage 0, server -> each participant: the round and who takes part (the request to advertise keys)."""

    round: int
    participants: tuple[int, ...]


@wire_record
@dataclass(frozen=True)
class AdvertiseKeys:
    """Stage 0, client -> server: the client's two fresh X25519 public keys (32 raw bytes each)."""

    client_id: int
    round: int
    pair_public: bytes
    """For the pairwise mask seeds ``s_uv``."""
    share_public: bytes
    """For the keys that encrypt Shamir shares sent to neighbours."""
    signature: bytes = b""
    """With ``signatures``: the client's Ed25519 signature of both keys for the round (:func:`.signing.advert_message`)."""


@wire_record
@dataclass(frozen=True)
class RoundSetup:
    """Stage 0, server -> clients: everything public about the round."""

    round: int
    public_keys: Mapping[int, tuple[bytes, bytes]]
    """``{client_id: (pair_public, share_public)}`` for every participant."""
    neighbours: Mapping[int, frozenset[int]]
    """The mask graph over client ids (symmetric, no self-loops)."""
    threshold: int
    weight_bound: float
    clip_range: float
    levels: int
    layout: VectorLayout | None = None
    """The vector layout the server fixed from its own model; ``None`` when the caller gave none."""
    integer_values: bool = False
    """The round sums integer-valued updates exactly (:func:`~secure_ffm.secagg.quantization.encode_integers`) instead of
    fixed-point encodings."""
    signatures: Mapping[int, bytes] = field(default_factory=dict)
    """With ``signatures``: every participant's signature of its advertised keys, which each client checks against the
    key directory before it shares anything."""

    def __post_init__(self) -> None:
        # read-only, so that what is computed once per set-up object (:attr:`digest`, :attr:`has_derived_graph`) never
        # goes stale: the mappings become views nobody can change, the graph's rows frozensets
        object.__setattr__(self, "public_keys", MappingProxyType(dict(self.public_keys)))
        object.__setattr__(self, "neighbours", MappingProxyType({c: frozenset(peers) for c, peers in self.neighbours.items()}))
        object.__setattr__(self, "signatures", MappingProxyType(dict(self.signatures)))

    # Computed once per object (cached_property writes the instance's __dict__, past the frozen __setattr__; the codec
    # packs the init fields only): the in-process transport hands every client the same object, and under the complete
    # graph each is O(n^2) (28 ms a client in a round of 300 before). A deployed node or a pool's worker unpacks its own
    # copy and computes them once, in about the time the unpacking itself takes.
    @functools.cached_property
    def digest(self) -> bytes:
        """:func:`_setup_digest`."""
        return _setup_digest(self)

    @functools.cached_property
    def has_derived_graph(self) -> bool:
        """:func:`_has_derived_graph`: whether the mask graph is the one the round and keys give."""
        return _has_derived_graph(self)

    @property
    def participants(self) -> tuple[int, ...]:
        return tuple(sorted(self.public_keys))


@wire_record
@dataclass(frozen=True)
class EncryptedShare:
    """One sender's two Shamir shares for one recipient, AEAD-encrypted for that recipient only."""

    sender: int
    recipient: int
    round: int
    nonce: bytes
    ciphertext: bytes


@wire_record
@dataclass(frozen=True)
class ShareKeys:
    """Stage 1, client -> server: the client's encrypted shares, one per neighbour."""

    client_id: int
    round: int
    shares: tuple[EncryptedShare, ...]
    seed_commitment: bytes = b""
    """SHA-256 of the client's self seed (bound to the round and client): lets the server check the
    seed it rebuilds from shares. The seed is 32 random bytes, so the hash reveals nothing about it."""


@wire_record
@dataclass(frozen=True)
class ConsistencyCheck:
    """Stage 3a (with ``signatures``), server -> survivors: the survivor list the server will ask to unmask for."""

    round: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]


@wire_record
@dataclass(frozen=True)
class SurvivorSignature:
    """Stage 3a, survivor -> server: its signature of the one survivor list it accepts this round."""

    client_id: int
    round: int
    signature: bytes


@wire_record
@dataclass(frozen=True)
class UnmaskRequest:
    """Stage 3, server -> survivors: who the server claims survived and who dropped."""

    round: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    signatures: Mapping[int, bytes] = field(default_factory=dict)
    """With ``signatures``: the survivors' signatures of this list from the consistency check, a quorum of them."""


@wire_record
@dataclass(frozen=True)
class UnmaskResponse:
    """Stage 3, survivor -> server: serialized Shamir shares (``shamir.share_to_bytes``).

    ``self_seed_shares[v]`` is this client's share of survivor ``v``'s self seed,
    ``pair_key_shares[d]`` its share of dropped ``d``'s pair private key.
    """

    client_id: int
    round: int
    self_seed_shares: Mapping[int, bytes] = field(default_factory=dict)
    pair_key_shares: Mapping[int, bytes] = field(default_factory=dict)


# --------------------------------------------------------------------------- client


class MaskingClient(ClientRound):
    """One participant's side of one round; holds its private keys and the shares others sent it.

    Create a fresh object per round (new keys every round). As a :class:`~secure_ffm.engine.aggregation.ClientRound`
    it answers the stages ``advertise_keys`` (a :class:`KeyRequest`), ``share_keys`` (the :class:`RoundSetup`)
    and ``unmask`` (an :class:`UnmaskRequest`), and masks its update with the shares routed to it as payload.

    Parameters
    ----------
    client_id
        This client's id.
    min_threshold
        The lowest Shamir threshold this client accepts from a server: the configured
        ``secure_aggregation.threshold``, or the strict majority of the neighbourhood that the
        configured round size and ``neighbours`` give. Whatever it is, the client also refuses a
        ``t`` that is not a strict majority of the neighbourhood the set-up gives it, or larger.
    min_neighbours
        The fewest neighbours this client accepts (the configured graph's degree). Both minimums
        come from the client's own configuration, not from the server: with 0 for both, a server
        could isolate the client (a set-up with no neighbours and ``t = 1``) and unmask its update.
    rounding_seed
        Seeds the stochastic rounding when :meth:`encode` gets no (secret) generator.
    integer_values
        Send integer-valued updates exactly (see :func:`~secure_ffm.secagg.quantization.encode_integers`), as the
        client's own privacy mechanism requires (the distributed discrete Gaussian); a set-up that says otherwise is refused.
    configured
        ``(threshold, neighbours)`` of the client's own ``[secure_aggregation]`` configuration: the minimums are
        then derived from them and the round size of the :class:`KeyRequest` (see :meth:`expect`).
    signer, directory
        With ``secure_aggregation.signatures``: this client's Ed25519 signing key and the federation's key directory
        (out of band, never from the server). The client then signs its advertised keys, refuses a set-up with a key
        that no listed client signed for the round, signs one survivor list a round (:meth:`consistency`) and unmasks
        only for that list, once a quorum of the survivors signed it (:func:`consistency_quorum`).
    """

    def __init__(
        self,
        client_id: int,
        *,
        min_threshold: int = 0,
        min_neighbours: int = 0,
        configured: tuple[int, int] | None = None,
        rounding_seed: int = 0,
        integer_values: bool = False,
        min_sum: int = 0,
        signer: Ed25519PrivateKey | None = None,
        directory: signing.KeyDirectory | None = None,
        min_quorum: int = 0,
        clip_range: float | None = None,
    ) -> None:
        self.client_id = operator.index(client_id)
        self.clip_range = clip_range
        """The client's own ``secure_aggregation.clip_range``: a set-up announcing another is refused (None: not checked)."""
        self.min_quorum = operator.index(min_quorum)
        """With a key directory: the fewest survivor signatures this client unmasks for, whatever the set-up's size (a
        majority of its configured round, and the sum its distributed-noise share is sized for)."""
        if directory is not None and signer is None:
            raise ValueError(f"client {self.client_id}: a key directory needs the client's own signing key")
        self.signer = signer
        self.directory = directory
        self.min_sum = operator.index(min_sum)
        """The fewest inputs a sum the server can unmask may hold (a distributed-noise share is sized for them): under
        the complete graph :meth:`expect` raises the minimum ``t`` so that a server lying about survivors cannot sum
        fewer (:func:`~secure_ffm.secagg.graph.isolatable_sum`); 0: no such need."""
        self.rounding_seed = rounding_seed
        self.integer_values = integer_values
        self.min_threshold = operator.index(min_threshold)
        self.min_neighbours = operator.index(min_neighbours)
        self.configured = configured
        self._pair_key: X25519PrivateKey | None = None
        self._share_key: X25519PrivateKey | None = None
        self._self_seed: bytes | None = None
        self._setup: RoundSetup | None = None
        self._held: dict[int, tuple[bytes, bytes]] = {}  # sender -> (pair key share, self seed share)
        self._revealed: dict[int, str] = {}  # peer -> "self_seed" | "pair_key": what this client gave away
        self._cipher_keys: dict[int, bytes] = {}  # peer -> this round's share-cipher key (:meth:`_share_cipher_key`)
        self._round = -1
        self._input_sent = False  # whether this round's masked input went out (:meth:`masked_input` sends one a round)
        self._signed: tuple[tuple[int, ...], tuple[int, ...]] | None = None  # the survivor list signed this round

    def export_state(self) -> dict[str, Any]:
        """The round's secrets and what the client has seen and revealed, for a client that runs each stage in a fresh
        process (kept in its own node state, never sent)."""
        return {
            "round": self._round,
            "min_threshold": self.min_threshold,
            "min_neighbours": self.min_neighbours,
            "pair_key": keys.private_bytes(self._pair_key) if self._pair_key is not None else None,
            "share_key": keys.private_bytes(self._share_key) if self._share_key is not None else None,
            "self_seed": self._self_seed,
            "setup": self._setup,
            "held": dict(self._held),
            "revealed": dict(self._revealed),
            "cipher_keys": dict(self._cipher_keys),
            "input_sent": self._input_sent,
            "signed": [list(self._signed[0]), list(self._signed[1])] if self._signed is not None else None,
        }

    def restore_state(self, state: Any) -> None:
        try:
            self._round = operator.index(state["round"])
            self.min_threshold = operator.index(state["min_threshold"])
            self.min_neighbours = operator.index(state["min_neighbours"])
            self._pair_key = keys.private_key_from_bytes(state["pair_key"]) if state["pair_key"] is not None else None
            self._share_key = keys.private_key_from_bytes(state["share_key"]) if state["share_key"] is not None else None
            self._self_seed = state["self_seed"]
            setup = state["setup"]
            if setup is not None and not isinstance(setup, RoundSetup):
                raise TypeError(f"setup is a {type(setup).__name__}")
            self._setup = setup
            self._held = {operator.index(k): (bytes(v[0]), bytes(v[1])) for k, v in state["held"].items()}
            self._revealed = {operator.index(k): str(v) for k, v in state["revealed"].items()}
            self._cipher_keys = {operator.index(k): _cipher_key_bytes(v) for k, v in state.get("cipher_keys", {}).items()}
            self._input_sent = bool(state.get("input_sent", False))
            signed = state.get("signed")
            self._signed = None if signed is None else (tuple(map(operator.index, signed[0])), tuple(map(operator.index, signed[1])))
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise AggregationError(f"client {self.client_id}: its saved masking state does not load: {error}") from None

    def expect(self, num_participants: int, *, threshold: int, neighbours: int) -> None:
        """Raise the minimums to what the client's configuration (``threshold``, ``neighbours``) gives a round of this
        size: the neighbourhood the configured graph gives, and the configured ``t`` or else its strict majority.

        Called with the :class:`KeyRequest`'s participants and again with the :class:`RoundSetup`'s public keys: both
        counts come from the server, and the minimums only ever rise, so a key request that lists fewer clients than
        the set-up then hands keys to cannot lower them (a complete graph claimed for 5 clients and a 4-regular graph
        over 12 would have let the server collect one client's seed and its neighbours' pair keys)."""
        holders = graphs.neighbourhood_size(num_participants, neighbours)
        self.min_threshold = max(self.min_threshold, threshold or graphs.threshold_range(holders)[0])
        self.min_neighbours = max(self.min_neighbours, holders - 1)
        # a lying server sums as few as isolatable_sum(n, t) inputs: t must keep that at min_sum or more
        self.min_threshold = max(self.min_threshold, threshold_protecting(num_participants, neighbours, self.min_sum))

    def handle(self, stage: str, request: Any) -> Any:
        """Answer the server's stage requests (anything else is refused)."""
        if stage == ADVERTISE_KEYS and isinstance(request, KeyRequest):
            if self.configured is not None:
                self.expect(len(request.participants), threshold=self.configured[0], neighbours=self.configured[1])
            return self.advertise(request.round)
        if stage == SHARE_KEYS and isinstance(request, RoundSetup):
            return self.share_keys(request)
        if stage == CONSISTENCY_CHECK and isinstance(request, ConsistencyCheck):
            return self.consistency(request)
        if stage == UNMASK and isinstance(request, UnmaskRequest):
            return self.unmask(request)
        raise AggregationError(f"client {self.client_id} refuses a {type(request).__name__} as the {stage!r} stage of masking")

    binds_instructions = True

    def encode(
        self,
        update: ClientUpdate,
        *,
        weight: float,
        rng: np.random.Generator | None = None,
        payload: Any = None,
        instructions_digest: bytes | None = None,
    ) -> ClientMessage:
        """Keep the shares routed here (``payload``), then send the masked input, its pairwise masks bound to
        ``instructions_digest`` (see :meth:`mask`)."""
        if payload is not None:
            self.receive_shares(payload)
        if rng is None:  # the client's secret generator is preferred: a seeded one is public
            rng = generator(self.rounding_seed, SECAGG_ROUNDING, update.round, update.client_id)
        return self.masked_input(update, weight=weight, rng=rng, instructions_digest=instructions_digest)

    def check_ready(self) -> None:
        if self._input_sent:
            # the round's masks are fixed by its keys and self seed: a second input y' = x' + masks would give the server
            # y - y' = x - x', one client's update with no mask at all (a request that trains only the head makes x'
            # known). One masked input a round, whatever the server asks.
            raise AggregationError(
                f"round {self._round}: client {self.client_id} already sent its masked input and refuses a second one "
                "(the same masks twice would unmask the difference of the two updates)"
            )

    # stage 0
    def advertise(self, round: int) -> AdvertiseKeys:
        if self._pair_key is not None:
            # one set of keys a round: fresh keys in the same round would reset what the client signed and revealed for
            # it (an audit of 2026-12-07 had every client sign every survivor list by asking for keys again in between)
            raise AggregationError(f"round {self._round}: client {self.client_id} already advertised its keys and refuses to make others")
        self._pair_key, self._share_key = keys.generate_private_key(), keys.generate_private_key()
        self._round = operator.index(round)
        pair_public, share_public = keys.public_bytes(self._pair_key), keys.public_bytes(self._share_key)
        signature = b""
        if self.signer is not None:
            message = signing.advert_message(
                round=self._round, client_id=self.client_id, pair_public=pair_public, share_public=share_public
            )
            signature = signing.sign(self.signer, message)
        return AdvertiseKeys(self.client_id, self._round, pair_public, share_public, signature)

    # stage 1
    def share_keys(self, setup: RoundSetup) -> ShareKeys:
        """Check the set-up, then split the pair private key and a fresh self seed among the neighbourhood; encrypt each share."""
        if self._pair_key is None or setup.round != self._round:
            raise ValueError(f"client {self.client_id}: share_keys before advertise, or for another round")
        if self._setup is not None:
            # the shares it holds and the quorum it unmasks for belong to the set-up they came with: a second set-up
            # listing fewer participants would lower the quorum (an audit of 2026-12-07 brought 12 down to 5)
            raise AggregationError(f"round {setup.round}: client {self.client_id} already took the round's set-up and refuses a second one")
        own = setup.public_keys.get(self.client_id)
        if own != (keys.public_bytes(self._pair_key), keys.public_bytes(self._share_key)):
            raise AggregationError(f"round {setup.round}: client {self.client_id} refuses a set-up that does not carry its public keys")
        if self.configured is not None:  # the round's size is the set-up's, whatever the key request said
            self.expect(len(setup.public_keys), threshold=self.configured[0], neighbours=self.configured[1])
        self._check_signed_keys(setup)
        self._check_setup(setup)
        self._setup = setup
        self._self_seed = keys.random_seed()
        holders = sorted(setup.neighbours[self.client_id] | {self.client_id})
        ids = [h + 1 for h in holders]
        key_shares = shamir.split(keys.private_bytes(self._pair_key), threshold=setup.threshold, share_ids=ids)
        seed_shares = shamir.split(self._self_seed, threshold=setup.threshold, share_ids=ids)
        out = []
        for holder in holders:
            plaintext = shamir.share_to_bytes(holder + 1, key_shares[holder + 1]) + shamir.share_to_bytes(
                holder + 1, seed_shares[holder + 1]
            )
            if holder == self.client_id:
                self._held[holder] = (plaintext[: shamir.SHARE_BYTES], plaintext[shamir.SHARE_BYTES :])
                continue
            nonce = secrets.token_bytes(_NONCE_BYTES)
            aad = _share_aad(setup.round, self.client_id, holder)
            ciphertext = ChaCha20Poly1305(self._share_cipher_key(holder)).encrypt(nonce, plaintext, aad)
            out.append(EncryptedShare(self.client_id, holder, setup.round, nonce, ciphertext))
        return ShareKeys(self.client_id, setup.round, tuple(out), seed_commitment(setup.round, self.client_id, self._self_seed))

    def _check_signed_keys(self, setup: RoundSetup) -> None:
        """With a key directory: every participant must be a listed client that signed its keys for this round, so the
        server can neither put its own keys in a client's place (and read the shares sent to it) nor invent clients."""
        if self.directory is None:
            return
        for client, (pair_public, share_public) in setup.public_keys.items():
            message = signing.advert_message(round=setup.round, client_id=client, pair_public=pair_public, share_public=share_public)
            if not self.directory.verifies(client, message, setup.signatures.get(client)):
                why = "is not in the key directory" if client not in self.directory.keys else "carries keys it did not sign for the round"
                raise AggregationError(f"round {setup.round}: client {self.client_id} refuses a set-up in which client {client} {why}")

    def _check_setup(self, setup: RoundSetup) -> None:
        """Refuse a mask graph that leaves this client out, and a threshold a lying server could exploit.

        The client's secrets go to its neighbourhood (its neighbours and itself); ``t`` must be a
        strict majority of it (:func:`~secure_ffm.secagg.graph.threshold_range`), at least this
        client's own minimum, and at most the neighbourhood's size.
        """
        who = f"round {setup.round}: client {self.client_id}"
        if setup.integer_values != self.integer_values:
            # the client's own configuration decides how its noise is encoded: a server must not switch it
            mine, theirs = ("integer", "fixed-point") if self.integer_values else ("fixed-point", "integer")
            raise AggregationError(f"{who} encodes {mine} values and refuses a set-up announcing {theirs} encoding")
        neighbours = setup.neighbours.get(self.client_id)
        if neighbours is None or self.client_id in neighbours or not neighbours <= set(setup.public_keys):
            raise AggregationError(f"{who} refuses a set-up whose mask graph does not give it neighbours among the participants")
        # the quantization every client can check: the levels follow from the round's size, the clip range from its config
        if setup.levels != quantization.levels_for(len(setup.public_keys)):
            raise AggregationError(
                f"{who} refuses {setup.levels} quantization levels: a round of {len(setup.public_keys)} sums with "
                f"{quantization.levels_for(len(setup.public_keys))}"
            )
        if self.clip_range is not None and setup.clip_range != self.clip_range:
            raise AggregationError(
                f"{who} clips to secure_aggregation.clip_range = {self.clip_range} and refuses a set-up of {setup.clip_range}"
            )
        if not (math.isfinite(setup.weight_bound) and setup.weight_bound > 0):
            raise AggregationError(f"{who} refuses a weight bound of {setup.weight_bound}")
        if len(neighbours) < self.min_neighbours:
            raise AggregationError(
                f"{who} refuses a set-up that gives it {len(neighbours)} neighbours, fewer than the {self.min_neighbours} "
                f"its configuration expects (a server that isolates a client can unmask its update)"
            )
        holders = len(neighbours) + 1
        majority, highest = graphs.threshold_range(holders)
        lowest = max(majority, self.min_threshold)
        # under the complete graph a server that lies about survivors can unmask a sum of isolatable_sum(n, t) inputs:
        # a distributed-noise share sized for sums of min_sum needs t high enough that it cannot sum fewer
        needed = threshold_protecting(holders, holders - 1, self.min_sum) if holders == len(setup.public_keys) else 0
        if needed > setup.threshold:
            raise AggregationError(
                f"{who} refuses threshold t={setup.threshold}: a server that lies about who survived could unmask the sum of "
                f"{graphs.isolatable_sum(holders, min(max(setup.threshold, 1), holders))} of the {holders} inputs, and its noise "
                f"share is sized for sums of at least {self.min_sum} (it needs t >= {needed})"
            )
        if not lowest <= setup.threshold <= highest:
            minimum = f", its configured minimum being {self.min_threshold}" if self.min_threshold > majority else ""
            raise AggregationError(
                f"{who} refuses threshold t={setup.threshold}: its secrets are shared among {holders} clients (itself and its "
                f"{holders - 1} neighbours) and it accepts t in {lowest}..{highest}{minimum}; a t at or below half lets a server "
                f"that lies about who survived unmask its update"
            )
        # the graph is the one every client derives from the advertised keys (graph_seed), never the server's choice
        if not setup.has_derived_graph:
            raise AggregationError(
                f"{who} refuses a set-up whose mask graph is not the one the advertised keys give (a graph the server chose "
                f"could split the round into sums it unmasks one by one)"
            )

    def receive_shares(self, shares: Sequence[EncryptedShare]) -> None:
        """Decrypt the shares the server routed here; a misrouted or repeated one raises AggregationError.

        A share that fails authentication, or whose plaintext is malformed or carries another share id, is its sender's
        fault (the server forwards ciphertexts it cannot read, and the sender alone holds the key it encrypted with): it
        is left out and logged, so one bad client cannot stop its honest neighbours from sending their inputs (it made
        every one of them fail the round until 2026-12-07). This client then holds none of that sender's secrets and
        reveals none of them; the others' shares rebuild them as after any missing share. All are checked before any
        is kept, so on error this client holds what it held before.
        """
        setup = self._require_setup()
        who = f"round {setup.round}: client {self.client_id}"
        received: dict[int, tuple[bytes, bytes]] = {}
        for share in shares:
            sender = share.sender
            if share.recipient != self.client_id or share.round != setup.round or sender not in setup.neighbours[self.client_id]:
                raise AggregationError(f"{who} got a share from {sender} for {share.recipient} in round {share.round}")
            if sender in self._held or sender in received:
                raise AggregationError(f"{who} got a second share from client {sender}")
            try:
                aad = _share_aad(setup.round, sender, self.client_id)
                plaintext = ChaCha20Poly1305(self._share_cipher_key(sender)).decrypt(share.nonce, share.ciphertext, aad)
            except (InvalidTag, ValueError, TypeError):
                log.warning("%s: the share from client %d fails authentication; it is left out", who, sender)
                continue
            pair_key_share, seed_share = plaintext[: shamir.SHARE_BYTES], plaintext[shamir.SHARE_BYTES :]
            try:
                ids = {shamir.share_from_bytes(pair_key_share)[0], shamir.share_from_bytes(seed_share)[0]}
            except ValueError:
                log.warning("%s: the share from client %d is malformed (%d bytes); it is left out", who, sender, len(plaintext))
                continue
            if ids != {self.client_id + 1}:
                log.warning("%s: the share from client %d carries share ids %s, not its own; it is left out", who, sender, sorted(ids))
                continue
            received[sender] = (pair_key_share, seed_share)
        self._held.update(received)

    # stage 2
    def quantize(self, update: ClientUpdate, *, weight: float, rng: np.random.Generator) -> np.ndarray:
        """The ring encoding of ``weight * delta``, ``weight * statistics`` and ``weight`` (layout: :class:`VectorLayout`)."""
        setup = self._require_setup()
        w = float(weight)
        if not (math.isfinite(w) and 0 <= w <= setup.weight_bound):  # it cannot be encoded: the client sends nothing
            raise MaskingEncodeError(f"client {self.client_id}: weight {w} lies outside [0, weight_bound={setup.weight_bound}]")
        values = VectorLayout.of(update).flatten(update, w)
        if self.integer_values:
            if w != 1.0:  # discrete noise is sized for a plain sum: a weight would scale this client's contribution past it
                raise MaskingEncodeError(f"client {self.client_id}: integer encoding sums unweighted vectors; it refuses weight {w}")
            try:
                return quantization.encode_integers(np.concatenate([values, [w]]))
            except ValueError as error:
                raise MaskingEncodeError(f"client {self.client_id}: its update is left out of round {setup.round}: {error}") from None
        bound = setup.clip_range * setup.weight_bound
        try:
            encoded_values = quantization.encode(values, clip_range=bound, levels=setup.levels, rng=rng)
        except quantization.NonFiniteValuesError as error:
            raise MaskingEncodeError(f"client {self.client_id}: its update is left out of round {setup.round}: {error}") from None
        half = setup.weight_bound / 2  # the weight lies in [0, W]: encode w - W/2 in [-W/2, W/2]
        encoded_weight = quantization.encode(np.asarray([w - half]), clip_range=half, levels=setup.levels, rng=rng)
        return np.concatenate([encoded_values, encoded_weight])

    def mask(self, x: np.ndarray, *, instructions_digest: bytes | None = None) -> np.ndarray:
        """``x`` plus the self mask and the pairwise masks with every neighbour.

        The pair seeds are bound to the set-up this client accepted and to ``instructions_digest``, the digest of the
        fit request it trained on (:func:`mask_binding`): a pair's masks cancel only when both clients were shown the
        same set-up and sent the same request. A server that sends the target one model and every other client a model
        whose update is zero (Pasquini et al., CCS 2022), or shows the others a set-up that encodes any update as a
        constant, would otherwise unmask the target's update alone from the sum; here the target's masks with the
        others stay in it, uniform in Z_2^32, and it unmasks noise. The server's own set-up and digest
        (:class:`MaskingServer`'s ``instructions_digest``) remove a dropped client's masks from the survivors' sum."""
        setup = self._require_setup()
        assert self._pair_key is not None and self._self_seed is not None
        binding = mask_binding(setup, instructions_digest)
        pair_seeds = {
            v: keys.shared_seed(
                self._pair_key,
                setup.public_keys[v][0],
                context=keys.pair_context(round=setup.round, client_a=self.client_id, client_b=v, binding=binding),
            )
            for v in setup.neighbours[self.client_id]
        }
        return masking.mask_vector(x, client_id=self.client_id, pair_seeds=pair_seeds, self_seed=self._self_seed)

    def masked_input(
        self, update: ClientUpdate, *, weight: float, rng: np.random.Generator, instructions_digest: bytes | None = None
    ) -> ClientMessage:
        """Stage 2: the message this client sends (the masked vector, the round tag and the public layout)."""
        setup = self._require_setup()
        if update.client_id != self.client_id or update.round != setup.round:
            raise ValueError(f"client {self.client_id}: update of client {update.client_id}, round {update.round} in round {setup.round}")
        self.check_ready()
        layout = VectorLayout.of(update)
        if setup.layout is not None and layout != setup.layout:
            # declining (like a dropout) rather than failing: its pair masks are then removed from the others' sum
            raise MaskingEncodeError(
                f"round {setup.round}: client {self.client_id}'s update does not have the layout the server fixed for the round"
            )
        masked = self.mask(self.quantize(update, weight=weight, rng=rng), instructions_digest=instructions_digest)
        self._input_sent = True
        payload = {
            MASKED_KEY: masked,
            ROUND_KEY: np.asarray([setup.round], dtype=np.int64),
            LAYOUT_KEY: layout.to_bytes(),
        }
        return ClientMessage(self.client_id, setup.round, payload, update.num_examples, dict(update.metrics))

    # stage 3a
    def consistency(self, request: ConsistencyCheck) -> SurvivorSignature:
        """Sign the survivor list the server shows, once a round: a second, different list is refused, so the server
        cannot collect a quorum of signatures on two lists (Bonawitz et al., CCS 2017, round 3 of the malicious variant)."""
        setup = self._require_setup()
        who = f"round {setup.round}: client {self.client_id}"
        if self.signer is None:
            raise AggregationError(f"{who} signs nothing (secure_aggregation.signatures is off in its configuration)")
        listed = self._listed(request.round, request.survivors, request.dropped)
        if not self._input_sent:
            raise AggregationError(f"{who} is listed as a survivor but sent no masked input this round")
        if self._signed is not None and self._signed != listed:
            raise AggregationError(f"{who} already signed another survivor list this round and refuses a second one")
        if not graphs.connected(set(listed[0]), setup.neighbours):  # each part's sum could be unmasked on its own
            raise AggregationError(f"{who} refuses to sign survivors that fall into separate parts of the mask graph")
        self._signed = listed
        message = signing.survivors_message(round=setup.round, survivors=listed[0], dropped=listed[1], transcript=setup_digest(setup))
        return SurvivorSignature(self.client_id, setup.round, signing.sign(self.signer, message))

    def _listed(self, round: int, survivors: Sequence[int], dropped: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """A survivor list as a client checks it: this round, the client among the survivors, survivors and dropped
        disjoint and among the set-up's participants."""
        setup = self._require_setup()
        alive, gone = set(survivors), set(dropped)
        if round != setup.round:
            raise AggregationError(f"round {setup.round}: client {self.client_id} got a survivor list for round {round}")
        if self.client_id not in alive:
            raise AggregationError(f"round {setup.round}: client {self.client_id} is not listed as a survivor")
        if alive & gone or not (alive | gone) <= set(setup.participants) or len(alive) != len(survivors) or len(gone) != len(dropped):
            raise AggregationError(f"round {setup.round}: client {self.client_id} got an inconsistent survivor list")
        return tuple(sorted(alive)), tuple(sorted(gone))

    def _check_consistency(self, request: UnmaskRequest) -> None:
        """With a key directory: the request's list is the one this client signed, and a quorum of the survivors signed it."""
        if self.directory is None:
            return
        setup = self._require_setup()
        who = f"round {setup.round}: client {self.client_id}"
        listed = self._listed(request.round, request.survivors, request.dropped)
        if self._signed != listed:
            raise AggregationError(f"{who} refuses to unmask for a survivor list it did not sign")
        message = signing.survivors_message(round=setup.round, survivors=listed[0], dropped=listed[1], transcript=setup_digest(setup))
        signers = sum(
            1
            for client, signature in request.signatures.items()
            if client in listed[0] and self.directory.verifies(client, message, signature)
        )
        quorum = consistency_quorum(setup, floor=self.min_quorum)
        if signers < quorum:
            raise AggregationError(
                f"{who} refuses to unmask: {signers} survivors signed the list, fewer than the {quorum} it needs (a majority of the "
                f"round's {len(setup.participants)} participants, at least t={setup.threshold} and its own minimum {self.min_quorum})"
            )

    # stage 3
    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Reveal, per neighbour, the self-seed share (survivor) or the pair-key share (dropped); never both.

        Refuses when fewer than ``t`` of this client's neighbourhood (itself included) are listed
        as survivors: the server could not rebuild this client's own self seed from so few, so an
        honest request never asks, and a lying one gets nothing.
        """
        setup = self._require_setup()
        self._check_consistency(request)
        survivors, dropped = set(request.survivors), set(request.dropped)
        if request.round != setup.round:
            raise AggregationError(f"round {setup.round}: client {self.client_id} got an unmask request for round {request.round}")
        if self.client_id not in survivors:
            raise AggregationError(f"round {setup.round}: client {self.client_id} is not listed as a survivor")
        if survivors & dropped or not (survivors | dropped) <= set(setup.participants):
            raise AggregationError(f"round {setup.round}: client {self.client_id} got an inconsistent unmask request")
        if not graphs.connected(survivors, setup.neighbours):
            # the masks cancel inside each component of the survivors' subgraph: the server would learn each one's sum
            raise AggregationError(
                f"round {setup.round}: client {self.client_id} refuses to unmask: the survivors listed fall into separate "
                f"parts of the mask graph, whose sums the server could unmask one by one"
            )
        neighbourhood = setup.neighbours[self.client_id] | {self.client_id}
        listed = len(survivors & neighbourhood)
        if listed < setup.threshold:
            raise AggregationError(
                f"round {setup.round}: client {self.client_id} refuses to unmask: {listed} of its {len(neighbourhood)}-client "
                f"neighbourhood are listed as survivors, fewer than t={setup.threshold}"
            )
        answers: dict[int, str] = {}
        for peer in self._held:
            if peer in survivors:
                answers[peer] = "self_seed"
            elif peer in dropped:
                answers[peer] = "pair_key"
        conflicts = sorted(p for p, kind in answers.items() if self._revealed.get(p, kind) != kind)
        if conflicts:
            raise AggregationError(f"round {setup.round}: client {self.client_id} already revealed the other secret of clients {conflicts}")
        self._revealed.update(answers)
        return UnmaskResponse(
            self.client_id,
            setup.round,
            {p: self._held[p][1] for p, kind in answers.items() if kind == "self_seed"},
            {p: self._held[p][0] for p, kind in answers.items() if kind == "pair_key"},
        )

    def _require_setup(self) -> RoundSetup:
        if self._setup is None:
            raise ValueError(f"client {self.client_id}: the round's key set-up has not run")
        return self._setup

    def _share_cipher_key(self, peer: int) -> bytes:
        """The ChaCha20-Poly1305 key of this round's shares between this client and ``peer`` (either direction): HKDF of
        their share keys' X25519 exchange. Kept for the round: :meth:`share_keys` encrypts to each neighbour with the
        key :meth:`receive_shares` then decrypts that neighbour's share with, and each exchange costs about 40 µs
        (19 neighbours: 1.6 ms a client and round). The cache is emptied with the keys (:meth:`advertise`) and is
        part of the exported state, as secret as the share key it comes from."""
        assert self._setup is not None and self._share_key is not None
        key = self._cipher_keys.get(peer)
        if key is None:
            context = _SHARE_LABEL + keys.pair_context(round=self._setup.round, client_a=self.client_id, client_b=peer)
            key = self._cipher_keys[peer] = keys.shared_seed(self._share_key, self._setup.public_keys[peer][1], context=context)
        return key


def _cipher_key_bytes(value: Any) -> bytes:
    key = bytes(value)
    if len(key) != 32:
        raise ValueError(f"a share-cipher key has 32 bytes, got {len(key)}")
    return key


def _share_aad(round: int, sender: int, recipient: int) -> bytes:
    return _SHARE_LABEL + struct.pack(">QQQ", round, sender, recipient)


def seed_commitment(round: int, client_id: int, seed: bytes) -> bytes:
    """SHA-256 of a self seed, bound to the round and its owner: what :class:`ShareKeys` commits to."""
    return hashlib.sha256(_COMMITMENT_LABEL + struct.pack(">QQ", round, client_id) + bytes(seed)).digest()


# --------------------------------------------------------------------------- server


class MaskingServer(ServerRound):
    """The server's side of one round: routes messages, sums masked vectors, unmasks and decodes.

    As a :class:`~secure_ffm.engine.aggregation.ServerRound`, :meth:`setup` runs stages 0 and 1 as messages and returns
    each client's inbox of encrypted shares (delivered with its fit request), :meth:`add` takes masked inputs, and
    :meth:`finish` runs stage 3 and decodes.

    It sees public keys, ciphertexts it cannot read, masked vectors, and in the end the
    survivors' self seeds and the dropped clients' pair keys - never both for one client.

    ``layout``, when given, is the vector layout the server expects (from its own model, e.g.
    :meth:`VectorLayout.of_arrays` of the global trainable parameters and the statistics its
    strategy asks for): it is announced in the set-up and every masked input must have it.
    Without it the first accepted masked input fixes the layout, so a forged first message with
    another layout gets every honest client's input rejected; runners should pass it.
    """

    def __init__(
        self,
        round: int,
        participants: Sequence[int],
        *,
        weight_bound: float,
        clip_range: float = 1.0,
        threshold: int = 0,
        min_threshold: int = 0,
        neighbours: int = 0,
        layout: VectorLayout | None = None,
        integer_values: bool = False,
        directory: signing.KeyDirectory | None = None,
        min_quorum: int = 0,
        instructions_digest: bytes | None = None,
    ) -> None:
        self.round = operator.index(round)
        self.instructions_digest = instructions_digest or b""
        """The digest of the fit request the server sent every participant (``instructions_digest``), to which the
        clients bound their pairwise masks (:meth:`MaskingClient.mask`): the server rebuilds a dropped client's masks
        with it. Empty outside a run (a direct encoding binds to nothing either)."""
        self.integer_values = integer_values
        self.directory = directory
        self.min_quorum = operator.index(min_quorum)
        """The fewest survivor signatures the clients insist on (their planned round's majority, or more)."""
        """With ``signatures``: the key directory; the server checks the signatures it forwards and runs the consistency check."""
        self.participants = tuple(sorted(operator.index(c) for c in participants))
        if not self.participants or len(set(self.participants)) != len(self.participants):
            raise ValueError(f"round {self.round}: participants must be distinct and non-empty, got {list(participants)}")
        if not (math.isfinite(weight_bound) and weight_bound > 0):
            raise ValueError(f"weight_bound must be positive and finite, got {weight_bound}")
        if not (math.isfinite(clip_range) and clip_range > 0):
            raise ValueError(f"clip_range must be positive and finite, got {clip_range}")
        self.weight_bound = float(weight_bound)
        self.clip_range = float(clip_range)
        self._degree = self._checked_degree(operator.index(neighbours))
        self.neighbours: dict[int, frozenset[int]] = {}
        """The mask graph, made in :meth:`collect_keys` from the advertised keys (:func:`graph_seed`), as every client does."""
        n = len(self.participants)
        holders = n if graphs.uses_full_graph(n, self._degree) else self._degree + 1
        lowest, highest = graphs.threshold_range(holders)
        # the default t: the strict majority of this round's neighbourhood, raised to the clients' own minimum (that of
        # the run's planned round size); a round too small for it gets all of its neighbourhood, which is still below
        # that minimum: every client refuses the set-up and the round aborts
        self.threshold = operator.index(threshold) or min(highest, max(lowest, operator.index(min_threshold))) or lowest
        if operator.index(threshold) and not lowest <= self.threshold <= highest:
            raise ValueError(
                f"threshold t={self.threshold} must lie in {lowest}..{highest}: above half of a neighbourhood ({holders} clients, "
                f"its client included), so that a server that lies about who survived cannot unmask one client, and at most all of it"
            )
        self.levels = quantization.levels_for(len(self.participants))
        self.round_setup: RoundSetup | None = None
        self.layout: VectorLayout | None = layout
        self.fixed_layout = layout is not None
        self.masked_total: np.ndarray | None = None
        self.received: list[int] = []
        self.seed_commitments: dict[int, bytes] = {}
        self.self_seeds: dict[int, bytes] = {}
        self.dropped_keys: dict[int, bytes] = {}
        self.left_out: dict[int, str] = {}
        """Share holders whose unmask responses were not used, and why (malformed, or a share off the polynomial)."""
        self.setup_seconds = 0.0
        self._trial = False
        """Set while :meth:`responses_suffice` tries a rebuild: left-out holders are not logged."""
        self._failed_trials = 0
        self._next_trial = 0
        """The number of unmasking responses at which :meth:`responses_suffice` next tries a rebuild."""

    # ------------------------------------------------------------ as message stages

    def setup(self) -> Stages[dict[int, tuple[EncryptedShare, ...]]]:
        """Stages 0 and 1: every participant advertises keys, then shares them; returns each one's inbox of shares."""
        start = time.perf_counter()
        request = KeyRequest(self.round, self.participants)
        adverts = yield Stage(ADVERTISE_KEYS, {c: request for c in self.participants})
        setup = self.collect_keys([self._typed(reply, AdvertiseKeys, c) for c, reply in adverts.replies.items()])
        shared = yield Stage(SHARE_KEYS, {c: setup for c in setup.participants})
        inbox = self.route_shares([self._typed(reply, ShareKeys, c) for c, reply in shared.replies.items()])
        self.setup_seconds = time.perf_counter() - start
        return inbox

    def add(self, message: ClientMessage) -> None:
        self.receive_masked(message)

    def finish(self) -> Stages[Aggregate]:
        """Stage 3: ask the survivors for their shares, rebuild the secrets, unmask and decode the weighted mean."""
        if not self.received:
            raise AggregationError(f"round {self.round}: no client messages to aggregate")
        start = time.perf_counter()
        request = self.unmask_request()
        asked = request.survivors
        if self.directory is not None:  # the consistency check: the survivors sign the list before anyone unmasks
            check = ConsistencyCheck(self.round, request.survivors, request.dropped)
            signed = yield Stage(
                CONSISTENCY_CHECK, {u: check for u in request.survivors}, enough=functools.partial(self.signatures_suffice, request)
            )
            request = UnmaskRequest(self.round, request.survivors, request.dropped, self.collect_signatures(request, signed.replies))
            asked = tuple(sorted(request.signatures))
        answers = yield Stage(UNMASK, {u: request for u in asked}, enough=functools.partial(self.responses_suffice, request))
        responses = [reply for reply in answers.replies.values() if isinstance(reply, UnmaskResponse)]
        total = self.unmask(request, responses)
        unmasked = time.perf_counter()
        delta, stats, total_weight = self.decode(total)
        if not total_weight > 0:
            raise AggregationError(f"round {self.round}: total client weight is {total_weight}")
        mean = {k: (v / total_weight).astype(np.float32) for k, v in delta.items()}
        mean_stats = {k: v / total_weight for k, v in stats.items()}
        timings = {"setup": self.setup_seconds, "unmask": unmasked - start, "decode": time.perf_counter() - unmasked}
        return Aggregate(mean, total_weight, len(self.received), timings, mean_stats)

    def _typed(self, reply: Any, kind: type, client: int) -> Any:
        if not isinstance(reply, kind):
            raise AggregationError(f"round {self.round}: client {client} answered with a {type(reply).__name__}, not {kind.__name__}")
        return reply

    @staticmethod
    def _checked_degree(k: int) -> int:
        if k < 0 or k % 2:
            raise ValueError(f"neighbours must be 0 (complete graph) or an even degree, got {k}")
        return k

    # stage 0
    def collect_keys(self, adverts: Sequence[AdvertiseKeys]) -> RoundSetup:
        public: dict[int, tuple[bytes, bytes]] = {}
        signatures: dict[int, bytes] = {}
        for advert in adverts:
            if advert.round != self.round or advert.client_id not in self.participants or advert.client_id in public:
                raise AggregationError(f"round {self.round}: bad key advertisement from client {advert.client_id}")
            if (
                len(advert.pair_public) != keys.KEY_BYTES
                or len(advert.share_public) != keys.KEY_BYTES
                or advert.pair_public == advert.share_public
            ):
                raise AggregationError(f"round {self.round}: client {advert.client_id} advertised malformed keys")
            if self.directory is not None:
                message = signing.advert_message(
                    round=self.round, client_id=advert.client_id, pair_public=advert.pair_public, share_public=advert.share_public
                )
                if not self.directory.verifies(advert.client_id, message, advert.signature):
                    raise AggregationError(f"round {self.round}: client {advert.client_id}'s keys carry no valid signature")
                signatures[advert.client_id] = bytes(advert.signature)
            public[advert.client_id] = (bytes(advert.pair_public), bytes(advert.share_public))
        missing = sorted(set(self.participants) - set(public))
        if missing:
            raise AggregationError(f"round {self.round}: clients {missing} advertised no keys")
        # the graph every client rebuilds from the keys and checks (a graph the server chose could split the round into
        # cliques whose sums it unmasks one by one)
        self.neighbours = mask_graph(self.participants, self._degree, seed=graph_seed(self.round, public))
        self.round_setup = RoundSetup(
            self.round,
            public,
            self.neighbours,
            self.threshold,
            self.weight_bound,
            self.clip_range,
            self.levels,
            self.layout,
            self.integer_values,
            signatures,
        )
        return self.round_setup

    # stage 1
    def route_shares(self, messages: Sequence[ShareKeys]) -> dict[int, tuple[EncryptedShare, ...]]:
        """Each recipient's inbox of ciphertexts (the server forwards what it cannot read)."""
        inbox: dict[int, list[EncryptedShare]] = {c: [] for c in self.participants}
        commitments: dict[int, bytes] = {}
        for message in messages:
            if message.client_id not in self.participants or message.client_id in commitments:
                raise AggregationError(f"round {self.round}: share keys from client {message.client_id}, not a participant or twice")
            expected = self.neighbours[message.client_id]
            if not isinstance(message.shares, tuple | list) or not all(isinstance(s, EncryptedShare) for s in message.shares):
                # the codec checks a message's own fields, not the items of a container: a peer's bytes must not end the run
                raise AggregationError(f"round {self.round}: client {message.client_id} sent share keys that are not encrypted shares")
            got = [s.recipient for s in message.shares]
            if (
                message.round != self.round
                or len(got) != len(expected)
                or set(got) != expected
                or any(s.sender != message.client_id for s in message.shares)
                or len(message.seed_commitment) != hashlib.sha256().digest_size
            ):
                raise AggregationError(f"round {self.round}: client {message.client_id} sent malformed share keys")
            commitments[message.client_id] = bytes(message.seed_commitment)
            for share in message.shares:
                inbox[share.recipient].append(share)
        self.seed_commitments = commitments
        return {c: tuple(v) for c, v in inbox.items()}

    # stage 2
    def receive_masked(self, message: ClientMessage) -> None:
        """Validate one masked input and fold it into the ring sum; on error the state is unchanged."""
        who = check_envelope(message, round=self.round, participants=self.participants, received=self.received)
        payload = message.payload
        if not isinstance(payload, Mapping):
            raise AggregationError(f"{who} sent a payload that is a {type(payload).__name__}, not a table")
        if set(payload) != {MASKED_KEY, ROUND_KEY, LAYOUT_KEY}:
            raise AggregationError(f"{who} sent payload keys {sorted(payload)}, expected {sorted({MASKED_KEY, ROUND_KEY, LAYOUT_KEY})}")
        tag = np.asarray(payload[ROUND_KEY])
        if tag.shape != (1,) or tag.dtype.kind not in "iu" or int(tag[0]) != self.round:
            raise AggregationError(f"{who} sent a masked vector tagged for round {tag.reshape(-1)[:1].tolist()} (replayed or stale)")
        try:
            layout = VectorLayout.from_bytes(payload[LAYOUT_KEY])  # type: ignore[arg-type]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise AggregationError(f"{who} sent a malformed layout") from None
        if self.layout is not None and layout != self.layout:
            fixed_by = "the server fixed for the round" if self.fixed_layout else "the first accepted client sent"
            raise AggregationError(f"{who} sent a layout that differs from the one {fixed_by}")
        masked = payload[MASKED_KEY]
        if not isinstance(masked, np.ndarray) or masked.dtype != np.uint32:
            dtype = getattr(masked, "dtype", type(masked).__name__)
            raise AggregationError(f"{who} sent a masked vector of dtype {dtype}; it must be uint32 (values in Z_2^32)")
        if masked.shape != (layout.size,):
            raise AggregationError(f"{who} sent a masked vector of shape {masked.shape}, expected ({layout.size},)")
        # validated: fold in
        self.masked_total = masked.copy() if self.masked_total is None else masking.ring_sum([self.masked_total, masked])
        self.layout = layout
        self.received.append(message.client_id)

    # stage 3
    def unmask_request(self) -> UnmaskRequest:
        """Who survived and who dropped; aborts when some secret the server needs has fewer than ``t`` surviving holders."""
        survivors = tuple(sorted(self.received))
        dropped = tuple(c for c in self.participants if c not in self.received)
        if len(survivors) < self.threshold:
            raise AggregationError(
                f"round {self.round}: only {len(survivors)} of {len(self.participants)} clients survived, "
                f"fewer than the threshold t={self.threshold}; aborting the round"
            )
        alive = set(survivors)
        if not graphs.connected(alive, self.neighbours):  # every survivor refuses such a list: say why, before asking
            raise AggregationError(
                f"round {self.round}: the dropouts split the {len(survivors)} survivors into separate parts of the SecAgg+ "
                f"mask graph, whose sums the clients do not reveal one by one; aborting the round (raise "
                f"secure_aggregation.neighbours, or use the complete graph, neighbours = 0)"
            )
        for u in survivors:  # its self seed; each survivor also refuses to unmask below this
            holders = len((self.neighbours[u] | {u}) & alive)
            if holders < self.threshold:
                raise AggregationError(
                    f"round {self.round}: only {holders} surviving neighbours hold shares of client {u}'s self seed, "
                    f"fewer than the threshold t={self.threshold}; aborting the round"
                )
        for d in dropped:  # its pair key, when a survivor masked with it
            holders = len(self.neighbours[d] & alive)
            if holders and holders < self.threshold:
                raise AggregationError(
                    f"round {self.round}: only {holders} surviving neighbours hold shares of client {d}'s pair key, "
                    f"fewer than the threshold t={self.threshold}; aborting the round"
                )
        return UnmaskRequest(self.round, survivors, dropped)

    def _valid_signatures(self, request: UnmaskRequest, replies: Mapping[int, Any], *, warn: bool) -> dict[int, bytes]:
        assert self.directory is not None and self.round_setup is not None
        message = signing.survivors_message(
            round=self.round, survivors=request.survivors, dropped=request.dropped, transcript=setup_digest(self.round_setup)
        )
        signatures = {}
        for client, reply in replies.items():
            if (
                isinstance(reply, SurvivorSignature)
                and reply.client_id == client
                and client in request.survivors
                and self.directory.verifies(client, message, reply.signature)
            ):
                signatures[client] = bytes(reply.signature)
            elif warn:
                log.warning(
                    "round %d: client %d sent no valid signature of the survivor list; it is not asked to unmask", self.round, client
                )
        return signatures

    def signatures_suffice(self, request: UnmaskRequest, replies: Mapping[int, Any]) -> bool:
        """Whether the valid signatures so far reach the quorum and leave ``t`` signers among the holders of every
        secret the unmasking needs (the consistency stage's :attr:`~secure_ffm.engine.aggregation.Stage.enough`): a
        deployment then stops waiting for a survivor that died after its masked input, as the unmasking stage does.
        Verifications are remembered, so asking again as replies arrive costs one verification a reply."""
        assert self.round_setup is not None
        signers = set(self._valid_signatures(request, replies, warn=False))
        if len(signers) < consistency_quorum(self.round_setup, floor=self.min_quorum):
            return False
        alive = set(request.survivors)
        if any(len((self.neighbours[u] | {u}) & signers) < self.threshold for u in request.survivors):
            return False
        return not any(self.neighbours[d] & alive and len(self.neighbours[d] & signers) < self.threshold for d in request.dropped)

    def collect_signatures(self, request: UnmaskRequest, replies: Mapping[int, Any]) -> dict[int, bytes]:
        """The survivors' valid signatures of the list (a bad or missing one leaves its sender out of the unmasking, as
        a survivor that does not answer); fewer than the quorum abort the round: no client would unmask."""
        signatures = self._valid_signatures(request, replies, warn=True)
        assert self.round_setup is not None
        quorum = consistency_quorum(self.round_setup, floor=self.min_quorum)
        if len(signatures) < quorum:
            raise AggregationError(
                f"round {self.round}: {len(signatures)} survivors signed the survivor list, fewer than the {quorum} a client needs "
                "before it unmasks; aborting the round"
            )
        return signatures

    def unmask(self, request: UnmaskRequest, responses: Sequence[UnmaskResponse]) -> np.ndarray:
        """Rebuild the secrets from the responses and return the survivors' quantized sum (``uint32``).

        A response that fails validation (another round, a responder that is not a survivor, a
        second answer, a malformed share or one its sender should not hold) is left out whole, and
        so are all shares of a holder whose share of some secret lies off the polynomial the other
        holders agree on (:func:`~secure_ffm.secagg.shamir.reconstruct`); each is logged and kept in
        :attr:`left_out`. The round aborts with :class:`~secure_ffm.engine.aggregation.AggregationError`
        when a secret is left with fewer than ``t`` shares, when the wrong shares cannot be told
        from the right ones, or when a rebuilt secret does not match its commitment (the pair key
        its public key, the self seed the hash its owner sent) - never with a silently wrong sum.
        """
        if self.masked_total is None:
            raise AggregationError(f"round {self.round}: no masked input to unmask")
        self.self_seeds, dropped_keys = self._rebuild(request, responses)
        assert self.round_setup is not None
        dropped_pair_seeds: dict[int, dict[int, bytes]] = {}
        binding = mask_binding(self.round_setup, self.instructions_digest)  # the set-up and request it sent every client
        for d, (raw, private) in dropped_keys.items():
            self.dropped_keys[d] = raw
            dropped_pair_seeds[d] = {
                u: keys.shared_seed(
                    private,
                    self.round_setup.public_keys[u][0],
                    context=keys.pair_context(round=self.round, client_a=d, client_b=u, binding=binding),
                )
                for u in self.neighbours[d]
                if u in self.received
            }
        return masking.unmask_sum(self.masked_total, self_seeds=self.self_seeds, dropped_pair_seeds=dropped_pair_seeds)

    def responses_suffice(self, request: UnmaskRequest, replies: Mapping[int, Any]) -> bool:
        """Whether the unmasking replies so far rebuild every secret the server needs, each checked against its
        commitment (the stage's :attr:`~secure_ffm.engine.aggregation.Stage.enough`).

        Bonawitz et al. (CCS 2017, round 4) let the server go on once it has ``t`` responses; here it goes on once the
        responses rebuild every survivor's self seed (its hash matches the commitment its owner sent) and every needed
        dropped client's pair key (it matches the public key it advertised), so a deployment does not wait out its
        stage timeout for a survivor that died after sending its masked input. A wrong share makes a check fail, and
        the server then waits for more responses (whose extra shares find the wrong one) as before. Nothing is kept:
        :meth:`unmask` rebuilds from the replies the stage ends with.

        A rebuild costs as much as the unmasking's own (0.66 s for 100 survivors and t = 51 here), so after a failed one
        the next waits for 1, then 2, 4, 8, ... more responses: a holder sending wrong shares costs the server at most
        a logarithmic number of rebuilds, not one per reply."""
        responses = [reply for reply in replies.values() if isinstance(reply, UnmaskResponse)]
        responders = {r.client_id for r in responses}
        if any(len((self.neighbours[u] | {u}) & responders) < self.threshold for u in request.survivors):
            return False  # a count first: most replies leave some secret short of t shares
        alive = set(request.survivors)
        if any(self.neighbours[d] & alive and len(self.neighbours[d] & responders) < self.threshold for d in request.dropped):
            return False
        if len(responses) < self._next_trial:
            return False
        left_out, self._trial = self.left_out, True
        try:
            self._rebuild(request, responses)
        except AggregationError:
            self._next_trial = len(responses) + 2**self._failed_trials
            self._failed_trials += 1
            return False
        finally:
            self.left_out, self._trial = left_out, False
        return True

    def _rebuild(
        self, request: UnmaskRequest, responses: Sequence[UnmaskResponse]
    ) -> tuple[dict[int, bytes], dict[int, tuple[bytes, X25519PrivateKey]]]:
        """Every survivor's self seed and every needed dropped client's pair key (``{d: (raw bytes, key)}``) from the
        responses, each checked against its commitment; records the holders left out (:attr:`left_out`)."""
        assert self.round_setup is not None
        seed_shares: dict[int, dict[int, int]] = {u: {} for u in request.survivors}
        key_shares: dict[int, dict[int, int]] = {d: {} for d in request.dropped}
        self.left_out = {}
        answered: set[int] = set()
        for response in responses:
            try:
                seeds, pair_keys = self._read_response(request, response, answered)
            except AggregationError as error:
                self._leave_out(response.client_id, str(error))
                continue
            answered.add(response.client_id)
            for found, target in ((seeds, seed_shares), (pair_keys, key_shares)):
                for owner, value in found.items():
                    target[owner][response.client_id + 1] = value
        self_seeds = {}
        for u, shares in seed_shares.items():
            seed = self._combine(u, shares, "self seed")
            if seed_commitment(self.round, u, seed) != self.seed_commitments.get(u):
                raise AggregationError(
                    f"round {self.round}: the shares of client {u}'s self seed rebuild a seed that does not match its commitment "
                    f"(a holder sent a wrong share and too few shares were left to find it); aborting the round"
                )
            self_seeds[u] = seed
        dropped_keys = {}
        for d, shares in key_shares.items():
            if not self.neighbours[d] & set(request.survivors):
                continue  # no survivor masked with d: nothing to remove
            raw = self._combine(d, shares, "pair key")
            try:
                private = keys.private_key_from_bytes(raw)
            except ValueError:
                private = None
            if private is None or keys.public_bytes(private) != self.round_setup.public_keys[d][0]:
                raise AggregationError(f"round {self.round}: the shares of dropped client {d}'s key rebuild a different key")
            dropped_keys[d] = (raw, private)
        return self_seeds, dropped_keys

    def _read_response(self, request: UnmaskRequest, response: UnmaskResponse, answered: set[int]) -> tuple[dict[int, int], dict[int, int]]:
        """``({survivor: self-seed share value}, {dropped: pair-key share value})`` of one response, or AggregationError."""
        who = f"round {self.round}: client {response.client_id}"
        if response.round != self.round:
            raise AggregationError(f"{who} answered the unmask request of round {response.round}")
        if response.client_id not in request.survivors:
            raise AggregationError(f"{who} answered the unmask request but is not a survivor")
        if response.client_id in answered:
            raise AggregationError(f"{who} answered the unmask request twice")
        holds = self.neighbours[response.client_id] | {response.client_id}
        out: tuple[dict[int, int], dict[int, int]] = ({}, {})
        for found, kind, owners, what in (
            (out[0], response.self_seed_shares, request.survivors, "self seed"),
            (out[1], response.pair_key_shares, request.dropped, "pair key"),
        ):
            if not isinstance(kind, Mapping):  # the codec checks the response's fields, not what a container holds
                raise AggregationError(f"{who} sent its {what} shares as a {type(kind).__name__}, not a table")
            for owner, data in kind.items():
                if owner not in owners or owner not in holds:
                    raise AggregationError(f"{who} sent a share it should not hold (of client {owner}'s {what})")
                try:
                    share_id, value = shamir.share_from_bytes(data)
                except (ValueError, TypeError):
                    raise AggregationError(f"{who} sent a malformed share of client {owner}'s {what}") from None
                if share_id != response.client_id + 1:
                    raise AggregationError(
                        f"{who} sent a share of client {owner}'s {what} with id {share_id}, not {response.client_id + 1}"
                    )
                found[owner] = value
        return out

    def _leave_out(self, holder: int, reason: str) -> None:
        if holder not in self.left_out:
            self.left_out[holder] = reason
            if not self._trial:  # a trial (responses_suffice) says nothing: unmask says it once
                log.warning("%s; its unmask shares are left out", reason)

    def _combine(self, owner: int, shares: Mapping[int, int], what: str) -> bytes:
        """Rebuild one secret from the shares of holders not left out; leave out any whose share is wrong."""
        usable = {i: v for i, v in shares.items() if i - 1 not in self.left_out}
        if len(usable) < self.threshold:
            raise AggregationError(
                f"round {self.round}: only {len(usable)} surviving neighbours hold shares of client {owner}'s {what}, "
                f"fewer than the threshold t={self.threshold}; aborting the round"
            )
        try:
            rebuilt = shamir.reconstruct(usable, threshold=self.threshold)
        except ValueError as error:
            raise AggregationError(f"round {self.round}: cannot rebuild client {owner}'s {what}: {error}; aborting the round") from None
        for share_id in sorted(rebuilt.wrong):
            holder = share_id - 1
            reason = f"round {self.round}: client {holder} sent a share of client {owner}'s {what} that disagrees with the other holders'"
            self._leave_out(holder, reason)
        return rebuilt.secret

    def decode(self, total: np.ndarray) -> tuple[NamedArrays, NamedArrays, float]:
        """``(weighted delta sum, weighted statistic sums, total weight)`` from the unmasked ring sum."""
        assert self.layout is not None
        n = len(self.received)
        if self.integer_values:
            lifted = quantization.decode_integers(total)
            delta, stats = self.layout.split(lifted[:-1])
            return delta, stats, float(lifted[-1])
        bound = self.clip_range * self.weight_bound
        values = quantization.decode_sum(total[:-1], num_clients=n, clip_range=bound, levels=self.levels)
        half = self.weight_bound / 2
        total_weight = float(quantization.decode_sum(total[-1:], num_clients=n, clip_range=half, levels=self.levels)[0] + n * half)
        delta, stats = self.layout.split(values)
        return delta, stats, total_weight


# --------------------------------------------------------------------------- the registered protocol


class MaskingProtocol(AggregationProtocol):
    """Pairwise-masking secure aggregation: a fresh :class:`MaskingServer` and a fresh :class:`MaskingClient` per participant every round,
    which talk only through the stages of :meth:`MaskingServer.setup` and :meth:`MaskingServer.finish`.

    Parameters
    ----------
    clip_range
        Per-coordinate bound on a client's delta (and statistics): ``w * value`` is clipped to
        ``[-clip_range * weight_bound, clip_range * weight_bound]`` before quantization.
    threshold
        Shamir threshold ``t``; 0 picks :func:`~secure_ffm.secagg.graph.recommended_threshold`
        of the neighbourhood size. A round with fewer than ``t`` survivors aborts. An explicit
        ``t`` must be a strict majority of the neighbourhood, and it is also each client's
        minimum: a client refuses a set-up with a lower one.
    neighbours
        0 for the complete graph (SecAgg), an even ``k > 0`` for a SecAgg+ Harary graph of degree ``k``.
    seed
        Seeds the stochastic rounding (per round and client); keys and masks always use the OS CSPRNG.
    weight_bound
        Default public bound on a client's weight, used when ``begin_round`` gets none.
    integer_values
        Sum integer-valued updates exactly (:func:`~secure_ffm.secagg.quantization.encode_integers`) instead of the
        fixed-point encoding: set by a privacy mechanism that adds discrete noise (:meth:`use_integer_values`), never
        by the server alone.
    """

    name = "masking"
    label = "SecAgg (masking)"
    hides_updates = True
    binds_instructions = True
    signs_messages = True

    supports_integer_values = True

    def __init__(
        self,
        *,
        clip_range: float = 1.0,
        threshold: int = 0,
        neighbours: int = 0,
        seed: int = 0,
        weight_bound: float | None = None,
        integer_values: bool = False,
        signatures: bool = False,
        peer_keys: str = "",
    ) -> None:
        self.integer_values = integer_values
        self.signing: signing.Signatures | None = None
        """With ``signatures``: the key directory and the signing keys this party holds (:meth:`plan_clients` makes
        every client's in a simulation; a deployed node adds its own, :meth:`use_signing_key`)."""
        self.signs = bool(signatures)
        if peer_keys:
            self.signing = signing.Signatures(signing.KeyDirectory.load(peer_keys), {})
        self.needs_key_file = self.signs and not peer_keys
        """A simulation's own keys travel to its spawned workers as a key file (:meth:`deal_key_files`)."""
        self.clip_range = float(clip_range)
        self.threshold = int(threshold)
        self.neighbours = int(neighbours)
        self.seed = int(seed)
        self.weight_bound = weight_bound
        self.server: MaskingServer | None = None
        self.clients: dict[int, MaskingClient] = {}
        self._setup_seconds = 0.0
        self._warned_sparse = False
        self.round_size = 0
        """The run's planned participants per round (:meth:`plan_rounds`; 0 before a run sets it): each client's minimum
        threshold is the configured one or the strict majority of the neighbourhood this size gives, whatever size a
        server claims, and the server's default ``t`` is raised to it."""
        self.min_sum = 0
        """The fewest inputs an unmasked sum may hold (:meth:`protect_sums_of`; 0: no such need)."""
        self.quorum_floor = 0
        """With ``signatures``: the sum the noise shares are sized for, which the clients' quorum must reach."""

    def plan_rounds(self, round_size: int) -> None:
        self.round_size = operator.index(round_size)

    def plan_clients(self, num_clients: int) -> None:
        """With ``signatures`` and no key directory: this run plays every party, so it makes a fresh signing key per
        client from the OS CSPRNG (the out-of-band key infrastructure a deployment has, ``peer_keys``)."""
        if self.signs and self.signing is None:
            self.signing = signing.Signatures.generate(range(operator.index(num_clients)))

    def use_signing_key(self, client_id: int, key: Ed25519PrivateKey) -> None:
        """A deployed node's own signing key (node config ``signing-key``), checked against the key directory."""
        if self.signing is None:
            raise ConfigError("secure_aggregation.peer_keys", "a node's signing key needs the key directory", "name the directory file")
        self.signing.add_own(operator.index(client_id), key)

    def deal_key_files(self) -> dict[str, bytes]:
        """A simulation's signing keys for its worker processes: ``clients`` holds every client's key and the
        directory, ``server`` the directory alone."""
        if self.signing is None:
            raise ConfigError("secure_aggregation.signatures", "the run has made no signing keys yet", "call plan_clients first")
        directory = self.signing.directory
        own = {str(c): signing.signing_key_bytes(k).hex() for c, k in self.signing.own.items()}
        return {"server": directory.to_json().encode(), "clients": json.dumps({"directory": directory.to_mapping(), "keys": own}).encode()}

    def use_key_file(self, data: bytes, *, role: str) -> None:
        try:
            raw = json.loads(data)
            if role == "clients":
                directory = signing.KeyDirectory.from_mapping(raw["directory"])
                own = {int(c): signing.signing_key_from_bytes(bytes.fromhex(v)) for c, v in raw["keys"].items()}
            else:
                directory, own = signing.KeyDirectory.from_mapping(raw), {}
        except (ValueError, KeyError, TypeError) as error:
            raise ConfigError("secure_aggregation.signatures", f"the run's signing key file does not load ({error})") from None
        self.signing = signing.Signatures(directory, own)

    def protect_sums_of(self, min_sum: int) -> None:
        """Distributed noise shares are sized so that ``min_sum`` of them carry the full noise: under the complete graph
        the server's default ``t`` and every client's minimum rise until a server that lies about who survived cannot
        unmask a sum of fewer (:func:`~secure_ffm.secagg.graph.threshold_for_isolated_sum`; until 2026-12-07 a strict
        majority let it sum 4 inputs of 100, each share sized for 51). With ``signatures`` the consistency check keeps
        every sum at the signed list, at least the clients' quorum: the quorum rises to ``min_sum`` instead of ``t``."""
        if self.signs:
            self.quorum_floor = operator.index(min_sum)
        else:
            self.min_sum = operator.index(min_sum)

    def planned_min_threshold(self) -> int:
        """The lowest ``t`` this run's own configuration accepts (0 before :meth:`plan_rounds`)."""
        if self.round_size < 1:
            return self.threshold
        lowest = self.threshold or graphs.threshold_range(graphs.neighbourhood_size(self.round_size, self.neighbours))[0]
        return max(lowest, threshold_protecting(self.round_size, self.neighbours, self.min_sum))

    @classmethod
    def fewest_to_aggregate(cls, config: Config) -> int:
        """The lowest threshold a client accepts (the configured ``t``, else a strict majority of the planned
        neighbourhood): a round of fewer survivors cannot be unmasked."""
        secure = config.secure_aggregation
        return int(secure.threshold) or graphs.threshold_range(graphs.neighbourhood_size(config.round_size, secure.neighbours))[0]

    def planned_min_quorum(self) -> int:
        """With ``signatures``: the fewest survivor signatures a client of this run unmasks for, a strict majority of the
        planned round (0 before :meth:`plan_rounds`) and at least the sum the noise shares are sized for."""
        if not self.signs:
            return 0
        return max(self.round_size // 2 + 1 if self.round_size else 0, self.quorum_floor)

    @classmethod
    def smallest_sum(cls, config: Config) -> int:
        """Without a threshold in the config, the strict majority of the planned round (as before 2026-12-07); the
        protocol then raises ``t`` until a server that lies about who survived cannot unmask a sum of fewer
        (:meth:`protect_sums_of`: about 2/3 of the round). With a configured threshold ``t``, the sum such a server can
        isolate under the complete graph, :func:`~secure_ffm.secagg.graph.isolatable_sum` (``t`` itself until
        2026-12-07, when an audit summed 4 honest clients' inputs of 10 with ``t = 6``: the noise was then 0.82 of the
        claimed). Under SecAgg+ (``neighbours > 0``) the configured ``t`` or a neighbourhood's majority, a guarantee that
        needs an honest-but-curious server (docs/threat_model.md). With ``signatures``, a strict majority of the planned
        round (and at least ``t``), whatever the graph: the consistency check's quorum, against a server that lies."""
        secure, participants = config.secure_aggregation, config.round_size
        if secure.signatures:
            # the consistency check: a server learns the sum over one list that a majority of the planned round signed,
            # and each client unmasks for no fewer signatures (MaskingClient.min_quorum)
            return max(cls.fewest_to_aggregate(config), participants // 2 + 1)
        if secure.threshold and graphs.uses_full_graph(participants, secure.neighbours):
            return graphs.isolatable_sum(participants, min(int(secure.threshold), participants))
        return cls.fewest_to_aggregate(config)  # the configured t (SecAgg+), or the strict majority

    @classmethod
    def from_config(cls, config: SecureAggregationConfig, *, seed: int) -> MaskingProtocol:
        return cls(
            clip_range=config.clip_range,
            threshold=config.threshold,
            neighbours=config.neighbours,
            seed=seed,
            signatures=config.signatures,
            peer_keys=config.peer_keys,
        )

    @classmethod
    def check_config(cls, config: Config) -> None:
        """An explicit masking threshold must be a strict majority of a neighbourhood and at most all of it.

        Each round has ``server.clients_per_round`` participants (0: ``data.num_clients``); a
        client's secrets are shared among its neighbourhood: every participant under
        ``neighbours = 0``, itself and its ``k`` graph neighbours under SecAgg+ (the same rule the
        protocol uses, :func:`secure_ffm.secagg.graph.neighbourhood_size`).
        """
        secure = config.secure_aggregation
        if not secure.threshold:
            return
        participants = config.server.clients_per_round or config.data.num_clients
        holders = graphs.neighbourhood_size(participants, secure.neighbours)
        lowest, highest = graphs.threshold_range(holders)
        if lowest <= secure.threshold <= highest:
            return
        k = secure.neighbours
        graph = "every pair masks" if holders == participants else f"secure_aggregation.neighbours={k}: a client and its {k} neighbours"
        where = f"{holders} clients that hold each client's shares ({participants} participants per round, {graph})"
        if secure.threshold > highest:
            problem = f"t={secure.threshold} is more than the {where}, so no round could ever unmask"
        else:
            problem = (
                f"t={secure.threshold} is at or below half of the {where}; "
                "a threshold at or below half lets a server that lies about survivors unmask a single client's update"
            )
        raise ConfigError("secure_aggregation.threshold", problem, f"use {lowest} to {highest}, or 0 for a strict majority")

    def server_round(
        self,
        round: int,
        participants: Sequence[int],
        *,
        weight_bound: float | None = None,
        layout: VectorLayout | None = None,
        instructions_digest: bytes | None = None,
    ) -> MaskingServer:
        """A fresh server for the round (new keys every round); ``layout`` fixes the vector layout before any masked
        input arrives, ``instructions_digest`` is that of the fit request sent to every participant (see
        :class:`MaskingServer`)."""
        bound = weight_bound if weight_bound is not None else self.weight_bound
        if bound is None:
            raise ValueError("masking aggregation needs a public weight_bound (the largest client weight) in begin_round")
        if self.neighbours and not self._warned_sparse:
            self._warned_sparse = True
            if not self.signs:
                log.warning(
                    "secure_aggregation.neighbours = %d (SecAgg+): a server that lies about who survived can unmask one client's "
                    "update without colluders (no consistency check without signed keys; docs/threat_model.md); use the complete "
                    "graph (neighbours = 0), or secure_aggregation.signatures = true, against a server that may lie",
                    self.neighbours,
                )
            else:
                log.warning(
                    "secure_aggregation.neighbours = %d (SecAgg+): with signatures it holds against a server that lies, but not "
                    "one that colludes with a client (a colluder re-rolls the mask graph and exposes sums of a few inputs; "
                    "docs/threat_model.md); use the complete graph (neighbours = 0) against collusion",
                    self.neighbours,
                )
        # what the clients will insist on for this round's size, as for the planned one
        lowest = max(self.planned_min_threshold(), threshold_protecting(len(participants), self.neighbours, self.min_sum))
        return MaskingServer(
            round,
            participants,
            weight_bound=bound,
            clip_range=self.clip_range,
            threshold=self.threshold,
            min_threshold=lowest,
            neighbours=self.neighbours,
            layout=layout,
            integer_values=self.integer_values,
            directory=self._directory(),
            min_quorum=self.planned_min_quorum(),
            instructions_digest=instructions_digest,
        )

    def _directory(self) -> signing.KeyDirectory | None:
        if not self.signs:
            return None
        if self.signing is None:
            raise AggregationError("secure_aggregation.signatures: the run has no key directory (peer_keys) and made no keys")
        return self.signing.directory

    def client_round(self, client_id: int, round: int) -> MaskingClient:
        """A fresh client half that checks every set-up against this configuration's threshold and graph degree."""
        planned = self.planned_min_threshold()
        directory = self._directory()
        signer = None
        if directory is not None:
            assert self.signing is not None
            signer = self.signing.own.get(operator.index(client_id))
            if signer is None:
                raise AggregationError(f"client {client_id} holds no signing key (a deployed node's node config names it: signing-key)")
        return MaskingClient(
            client_id,
            min_threshold=planned,
            min_neighbours=max(0, planned - 1),
            configured=(self.threshold, self.neighbours),
            rounding_seed=self.seed,
            integer_values=self.integer_values,
            min_sum=self.min_sum,
            signer=signer,
            directory=directory,
            min_quorum=self.planned_min_quorum(),
            clip_range=self.clip_range,
        )

    def use_integer_values(self) -> None:
        """Sum integer-valued updates exactly from now on (the distributed discrete Gaussian's encoding)."""
        self.integer_values = True


__all__ = [
    "ADVERTISE_KEYS",
    "CONSISTENCY_CHECK",
    "ConsistencyCheck",
    "SurvivorSignature",
    "consistency_quorum",
    "setup_digest",
    "SHARE_KEYS",
    "UNMASK",
    "AdvertiseKeys",
    "EncryptedShare",
    "KeyRequest",
    "MaskingClient",
    "MaskingProtocol",
    "MaskingServer",
    "RoundSetup",
    "ShareKeys",
    "UnmaskRequest",
    "UnmaskResponse",
    "seed_commitment",
]
