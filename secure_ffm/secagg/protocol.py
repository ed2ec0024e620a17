"""The pairwise-masking secure aggregation protocol: messages, client, server, and an in-process driver.

Bonawitz et al., CCS 2017, "Practical Secure Aggregation for Privacy-Preserving Machine
Learning" (Sec. 4, the semi-honest protocol), with the sparse neighbourhoods of SecAgg+
(Bell et al., CCS 2020). One round, as messages between :class:`MaskingClient` objects
(one per participant) and one :class:`MaskingServer`, which share no secrets:

0. **advertise keys** - each client draws two fresh X25519 key pairs and sends their public
   halves (:class:`AdvertiseKeys`): ``c`` for the pairwise masks, ``s`` for encrypting shares.
   The server answers with a :class:`RoundSetup`: every public key, the mask graph (complete,
   or a SecAgg+ Harary graph), the Shamir threshold ``t``, the public weight bound and the
   quantization parameters.
1. **share keys** - each client draws a self-mask seed ``b_u``, Shamir-splits it and its pair
   private key among its neighbourhood (its graph neighbours and itself, ``t`` of them rebuild
   either secret) and sends each neighbour's two shares encrypted with ChaCha20-Poly1305 under
   ``HKDF(X25519(s_u, s_v))`` (:class:`ShareKeys`). The server routes the ciphertexts; it cannot
   read them.
2. **masked input** - each client quantizes its weighted update (see :class:`MaskingClient`)
   and sends ``x_u + PRG(b_u) + sum_v +-PRG(s_uv)`` (a :class:`~secure_ffm.wire.ClientMessage`).
   The server ring-sums the vectors as they arrive.
3. **unmasking** - the server announces who survived and who dropped (:class:`UnmaskRequest`).
   Each surviving client returns, for every neighbour, its share of the neighbour's self seed
   if the neighbour survived or of its pair private key if it dropped - never both for one
   client, whatever later requests claim (:class:`UnmaskResponse`). The server rebuilds the
   survivors' self seeds and the dropped clients' keys, removes the masks and decodes the sum.

A round needs at least ``t`` survivors (and, under SecAgg+, ``t`` surviving share holders in
every neighbourhood); otherwise it aborts with :class:`~secure_ffm.aggregation.AggregationError`.

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

import json
import math
import operator
import secrets
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from secure_ffm.aggregation import PROTOCOLS, Accumulator, Aggregate, AggregationError, AggregationProtocol, check_envelope
from secure_ffm.secagg import graph as graphs
from secure_ffm.secagg import keys, masking, quantization, shamir
from secure_ffm.seeding import SECAGG_ROUNDING, generator
from secure_ffm.training import ClientDeclined
from secure_ffm.wire import ClientMessage, ClientUpdate, NamedArrays

if TYPE_CHECKING:
    from secure_ffm.config import SecureAggregationConfig

_SHARE_LABEL = b"secure-ffm/secagg/v1/share-encryption"
_NONCE_BYTES = 12
MASKED_KEY = "masked"
ROUND_KEY = "round"
LAYOUT_KEY = "layout"


# --------------------------------------------------------------------------- messages


class MaskingEncodeError(AggregationError, ClientDeclined):
    """A client refuses to mask an update with NaN or infinite values: it sends no masked input.

    An :class:`~secure_ffm.aggregation.AggregationError` naming the client; also a
    :class:`~secure_ffm.training.ClientDeclined`, so the simulation leaves the client out of the
    round, and the server removes its pairwise masks from the survivors' sum exactly as for a
    client that dropped after the key set-up. (Fixed-point encoding clips finite values, but a
    NaN has no place in the ring.)
    """


@dataclass(frozen=True)
class AdvertiseKeys:
    """Stage 0, client -> server: the client's two fresh X25519 public keys (32 raw bytes each)."""

    client_id: int
    round: int
    pair_public: bytes
    """For the pairwise mask seeds ``s_uv``."""
    share_public: bytes
    """For the keys that encrypt Shamir shares sent to neighbours."""


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

    @property
    def participants(self) -> tuple[int, ...]:
        return tuple(sorted(self.public_keys))


@dataclass(frozen=True)
class EncryptedShare:
    """One sender's two Shamir shares for one recipient, AEAD-encrypted for that recipient only."""

    sender: int
    recipient: int
    round: int
    nonce: bytes
    ciphertext: bytes


@dataclass(frozen=True)
class ShareKeys:
    """Stage 1, client -> server: the client's encrypted shares, one per neighbour."""

    client_id: int
    round: int
    shares: tuple[EncryptedShare, ...]


@dataclass(frozen=True)
class UnmaskRequest:
    """Stage 3, server -> survivors: who the server claims survived and who dropped."""

    round: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]


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


# --------------------------------------------------------------------------- encoding layout


@dataclass(frozen=True)
class VectorLayout:
    """How named arrays become one flat vector: sorted delta names, sorted statistics, then the weight."""

    delta: tuple[tuple[str, tuple[int, ...]], ...]
    statistics: tuple[tuple[str, tuple[int, ...]], ...]

    @classmethod
    def of(cls, update: ClientUpdate) -> VectorLayout:
        return cls(
            tuple((k, tuple(np.shape(update.delta[k]))) for k in sorted(update.delta)),
            tuple((k, tuple(np.shape(update.statistics[k]))) for k in sorted(update.statistics)),
        )

    @property
    def values_size(self) -> int:
        return int(sum(math.prod(shape) for _, shape in (*self.delta, *self.statistics)))

    @property
    def size(self) -> int:
        return self.values_size + 1

    def to_bytes(self) -> bytes:
        return json.dumps({"delta": self.delta, "statistics": self.statistics}, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> VectorLayout:
        raw = json.loads(bytes(data).decode())
        return cls(
            tuple((str(k), tuple(int(d) for d in s)) for k, s in raw["delta"]),
            tuple((str(k), tuple(int(d) for d in s)) for k, s in raw["statistics"]),
        )

    def flatten(self, update: ClientUpdate, weight: float) -> np.ndarray:
        parts = [np.asarray(update.delta[k], dtype=np.float64).reshape(-1) for k, _ in self.delta]
        parts += [np.asarray(update.statistics[k], dtype=np.float64).reshape(-1) for k, _ in self.statistics]
        return weight * np.concatenate(parts) if parts else np.zeros(0)

    def split(self, values: np.ndarray) -> tuple[NamedArrays, NamedArrays]:
        out: list[NamedArrays] = [{}, {}]
        offset = 0
        for i, entries in enumerate((self.delta, self.statistics)):
            for name, shape in entries:
                size = math.prod(shape)
                out[i][name] = values[offset : offset + size].reshape(shape)
                offset += size
        return out[0], out[1]


# --------------------------------------------------------------------------- client


class MaskingClient:
    """One participant's side of one round; holds its private keys and the shares others sent it.

    Create a fresh object per round (new keys every round).
    """

    def __init__(self, client_id: int) -> None:
        self.client_id = operator.index(client_id)
        self._pair_key: X25519PrivateKey | None = None
        self._share_key: X25519PrivateKey | None = None
        self._self_seed: bytes | None = None
        self._setup: RoundSetup | None = None
        self._held: dict[int, tuple[bytes, bytes]] = {}  # sender -> (pair key share, self seed share)
        self._revealed: dict[int, str] = {}  # peer -> "self_seed" | "pair_key": what this client gave away
        self._round = -1

    # stage 0
    def advertise(self, round: int) -> AdvertiseKeys:
        self._pair_key, self._share_key = keys.generate_private_key(), keys.generate_private_key()
        self._round = operator.index(round)
        return AdvertiseKeys(self.client_id, self._round, keys.public_bytes(self._pair_key), keys.public_bytes(self._share_key))

    # stage 1
    def share_keys(self, setup: RoundSetup) -> ShareKeys:
        """Split the pair private key and a fresh self seed among the neighbourhood; encrypt each share."""
        if self._pair_key is None or setup.round != self._round:
            raise ValueError(f"client {self.client_id}: share_keys before advertise, or for another round")
        own = setup.public_keys.get(self.client_id)
        if own != (keys.public_bytes(self._pair_key), keys.public_bytes(self._share_key)):
            raise ValueError(f"client {self.client_id}: the setup does not carry this client's public keys")
        self._setup = setup
        self._self_seed = keys.random_seed()
        holders = sorted(setup.neighbours[self.client_id] | {self.client_id})
        ids = [h + 1 for h in holders]
        key_shares = shamir.split(keys.private_bytes(self._pair_key), threshold=setup.threshold, share_ids=ids)
        seed_shares = shamir.split(self._self_seed, threshold=setup.threshold, share_ids=ids)
        out = []
        for holder in holders:
            plaintext = shamir.share_to_bytes(holder + 1, key_shares[holder + 1]) + shamir.share_to_bytes(holder + 1, seed_shares[holder + 1])
            if holder == self.client_id:
                self._held[holder] = (plaintext[: shamir.SHARE_BYTES], plaintext[shamir.SHARE_BYTES :])
                continue
            nonce = secrets.token_bytes(_NONCE_BYTES)
            aad = _share_aad(setup.round, self.client_id, holder)
            ciphertext = ChaCha20Poly1305(self._share_cipher_key(holder)).encrypt(nonce, plaintext, aad)
            out.append(EncryptedShare(self.client_id, holder, setup.round, nonce, ciphertext))
        return ShareKeys(self.client_id, setup.round, tuple(out))

    def receive_shares(self, shares: Sequence[EncryptedShare]) -> None:
        """Decrypt the shares the server routed here; a tampered or misrouted one raises ValueError."""
        setup = self._require_setup()
        for share in shares:
            if share.recipient != self.client_id or share.round != setup.round or share.sender not in setup.neighbours[self.client_id]:
                raise ValueError(f"client {self.client_id}: got a share from {share.sender} for {share.recipient} in round {share.round}")
            try:
                plaintext = ChaCha20Poly1305(self._share_cipher_key(share.sender)).decrypt(
                    share.nonce, share.ciphertext, _share_aad(setup.round, share.sender, self.client_id)
                )
            except InvalidTag:
                raise ValueError(f"client {self.client_id}: the share from client {share.sender} fails authentication") from None
            self._held[share.sender] = (plaintext[: shamir.SHARE_BYTES], plaintext[shamir.SHARE_BYTES :])

    # stage 2
    def quantize(self, update: ClientUpdate, *, weight: float, rng: np.random.Generator) -> np.ndarray:
        """The ring encoding of ``weight * delta``, ``weight * statistics`` and ``weight`` (layout: :class:`VectorLayout`)."""
        setup = self._require_setup()
        w = float(weight)
        if not (math.isfinite(w) and 0 <= w <= setup.weight_bound):
            raise ValueError(f"client {self.client_id}: weight {w} lies outside [0, weight_bound={setup.weight_bound}]")
        values = VectorLayout.of(update).flatten(update, w)
        bound = setup.clip_range * setup.weight_bound
        try:
            encoded_values = quantization.encode(values, clip_range=bound, levels=setup.levels, rng=rng)
        except quantization.NonFiniteValuesError as error:
            raise MaskingEncodeError(f"client {self.client_id}: its update is left out of round {setup.round}: {error}") from None
        half = setup.weight_bound / 2  # the weight lies in [0, W]: encode w - W/2 in [-W/2, W/2]
        encoded_weight = quantization.encode(np.asarray([w - half]), clip_range=half, levels=setup.levels, rng=rng)
        return np.concatenate([encoded_values, encoded_weight])

    def mask(self, x: np.ndarray) -> np.ndarray:
        """``x`` plus the self mask and the pairwise masks with every neighbour."""
        setup = self._require_setup()
        assert self._pair_key is not None and self._self_seed is not None
        pair_seeds = {
            v: keys.shared_seed(self._pair_key, setup.public_keys[v][0], context=keys.pair_context(round=setup.round, client_a=self.client_id, client_b=v))
            for v in setup.neighbours[self.client_id]
        }
        return masking.mask_vector(x, client_id=self.client_id, pair_seeds=pair_seeds, self_seed=self._self_seed)

    def masked_input(self, update: ClientUpdate, *, weight: float, rng: np.random.Generator) -> ClientMessage:
        """Stage 2: the message this client sends (the masked vector, the round tag and the public layout)."""
        setup = self._require_setup()
        if update.client_id != self.client_id or update.round != setup.round:
            raise ValueError(f"client {self.client_id}: update of client {update.client_id}, round {update.round} in round {setup.round}")
        masked = self.mask(self.quantize(update, weight=weight, rng=rng))
        payload = {
            MASKED_KEY: masked,
            ROUND_KEY: np.asarray([setup.round], dtype=np.int64),
            LAYOUT_KEY: VectorLayout.of(update).to_bytes(),
        }
        return ClientMessage(self.client_id, setup.round, payload, update.num_examples, dict(update.metrics))

    # stage 3
    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Reveal, per neighbour, the self-seed share (survivor) or the pair-key share (dropped); never both."""
        setup = self._require_setup()
        survivors, dropped = set(request.survivors), set(request.dropped)
        if request.round != setup.round:
            raise AggregationError(f"round {setup.round}: client {self.client_id} got an unmask request for round {request.round}")
        if self.client_id not in survivors:
            raise AggregationError(f"round {setup.round}: client {self.client_id} is not listed as a survivor")
        if survivors & dropped or not (survivors | dropped) <= set(setup.participants):
            raise AggregationError(f"round {setup.round}: client {self.client_id} got an inconsistent unmask request")
        if len(survivors) < setup.threshold:
            raise AggregationError(f"round {setup.round}: client {self.client_id} refuses to unmask with {len(survivors)} survivors < t={setup.threshold}")
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
        assert self._setup is not None and self._share_key is not None
        context = _SHARE_LABEL + keys.pair_context(round=self._setup.round, client_a=self.client_id, client_b=peer)
        return keys.shared_seed(self._share_key, self._setup.public_keys[peer][1], context=context)


def _share_aad(round: int, sender: int, recipient: int) -> bytes:
    return _SHARE_LABEL + struct.pack(">QQQ", round, sender, recipient)


# --------------------------------------------------------------------------- server


class MaskingServer:
    """The server's side of one round: routes messages, sums masked vectors, unmasks and decodes.

    It sees public keys, ciphertexts it cannot read, masked vectors, and in the end the
    survivors' self seeds and the dropped clients' pair keys - never both for one client.
    """

    def __init__(
        self,
        round: int,
        participants: Sequence[int],
        *,
        weight_bound: float,
        clip_range: float = 1.0,
        threshold: int = 0,
        neighbours: int = 0,
    ) -> None:
        self.round = operator.index(round)
        self.participants = tuple(sorted(operator.index(c) for c in participants))
        if not self.participants or len(set(self.participants)) != len(self.participants):
            raise ValueError(f"round {self.round}: participants must be distinct and non-empty, got {list(participants)}")
        if not (math.isfinite(weight_bound) and weight_bound > 0):
            raise ValueError(f"weight_bound must be positive and finite, got {weight_bound}")
        if not (math.isfinite(clip_range) and clip_range > 0):
            raise ValueError(f"clip_range must be positive and finite, got {clip_range}")
        self.weight_bound = float(weight_bound)
        self.clip_range = float(clip_range)
        self.neighbours = self._graph(operator.index(neighbours))
        holders = 1 + min(len(v) for v in self.neighbours.values())
        self.threshold = operator.index(threshold) or graphs.recommended_threshold(holders)
        if not 1 <= self.threshold <= holders:
            raise ValueError(f"threshold t={self.threshold} must lie in 1..{holders} (a neighbourhood's size, its client included)")
        self.levels = quantization.levels_for(len(self.participants))
        self.setup: RoundSetup | None = None
        self.layout: VectorLayout | None = None
        self.masked_total: np.ndarray | None = None
        self.received: list[int] = []
        self.self_seeds: dict[int, bytes] = {}
        self.dropped_keys: dict[int, bytes] = {}

    def _graph(self, k: int) -> dict[int, frozenset[int]]:
        n = len(self.participants)
        if k < 0 or k % 2:
            raise ValueError(f"neighbours must be 0 (complete graph) or an even degree, got {k}")
        positions = graphs.full_graph(n) if k == 0 or k >= n - 1 or n < 3 else graphs.harary_graph(n, k, seed=secrets.token_bytes(32))
        ids = self.participants
        return {ids[p]: frozenset(ids[q] for q in nbrs) for p, nbrs in positions.items()}

    # stage 0
    def collect_keys(self, adverts: Sequence[AdvertiseKeys]) -> RoundSetup:
        public: dict[int, tuple[bytes, bytes]] = {}
        for advert in adverts:
            if advert.round != self.round or advert.client_id not in self.participants or advert.client_id in public:
                raise AggregationError(f"round {self.round}: bad key advertisement from client {advert.client_id}")
            if len(advert.pair_public) != keys.KEY_BYTES or len(advert.share_public) != keys.KEY_BYTES or advert.pair_public == advert.share_public:
                raise AggregationError(f"round {self.round}: client {advert.client_id} advertised malformed keys")
            public[advert.client_id] = (bytes(advert.pair_public), bytes(advert.share_public))
        missing = sorted(set(self.participants) - set(public))
        if missing:
            raise AggregationError(f"round {self.round}: clients {missing} advertised no keys")
        self.setup = RoundSetup(self.round, public, self.neighbours, self.threshold, self.weight_bound, self.clip_range, self.levels)
        return self.setup

    # stage 1
    def route_shares(self, messages: Sequence[ShareKeys]) -> dict[int, tuple[EncryptedShare, ...]]:
        """Each recipient's inbox of ciphertexts (the server forwards what it cannot read)."""
        inbox: dict[int, list[EncryptedShare]] = {c: [] for c in self.participants}
        for message in messages:
            expected = self.neighbours.get(message.client_id, frozenset())
            got = {s.recipient for s in message.shares}
            if message.round != self.round or got != expected or any(s.sender != message.client_id for s in message.shares):
                raise AggregationError(f"round {self.round}: client {message.client_id} sent malformed share keys")
            for share in message.shares:
                inbox[share.recipient].append(share)
        return {c: tuple(v) for c, v in inbox.items()}

    # stage 2
    def receive_masked(self, message: ClientMessage) -> None:
        """Validate one masked input and fold it into the ring sum; on error the state is unchanged."""
        who = check_envelope(message, round=self.round, participants=self.participants, received=self.received)
        payload = message.payload
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
            raise AggregationError(f"{who} sent a layout that differs from the other clients'")
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
        survivors = tuple(sorted(self.received))
        dropped = tuple(c for c in self.participants if c not in self.received)
        if len(survivors) < self.threshold:
            raise AggregationError(
                f"round {self.round}: only {len(survivors)} of {len(self.participants)} clients survived, "
                f"fewer than the threshold t={self.threshold}; aborting the round"
            )
        return UnmaskRequest(self.round, survivors, dropped)

    def unmask(self, request: UnmaskRequest, responses: Sequence[UnmaskResponse]) -> np.ndarray:
        """Rebuild the secrets from the responses and return the survivors' quantized sum (``uint32``)."""
        assert self.setup is not None
        if self.masked_total is None:
            raise AggregationError(f"round {self.round}: no masked input to unmask")
        seed_shares: dict[int, dict[int, int]] = {u: {} for u in request.survivors}
        key_shares: dict[int, dict[int, int]] = {d: {} for d in request.dropped}
        for response in responses:
            if response.round != self.round or response.client_id not in request.survivors:
                raise AggregationError(f"round {self.round}: unexpected unmask response from client {response.client_id}")
            for kind, target in ((response.self_seed_shares, seed_shares), (response.pair_key_shares, key_shares)):
                for owner, data in kind.items():
                    if owner not in target or owner not in self.neighbours[response.client_id] | {response.client_id}:
                        raise AggregationError(f"round {self.round}: client {response.client_id} sent a share it should not hold ({owner})")
                    share_id, value = shamir.share_from_bytes(data)
                    if share_id != response.client_id + 1:
                        raise AggregationError(f"round {self.round}: client {response.client_id} sent a share with id {share_id}")
                    target[owner][share_id] = value
        self.self_seeds = {u: self._combine(u, shares, "self seed") for u, shares in seed_shares.items()}
        dropped_pair_seeds: dict[int, dict[int, bytes]] = {}
        for d, shares in key_shares.items():
            if not self.neighbours[d] & set(request.survivors):
                continue  # no survivor masked with d: nothing to remove
            raw = self._combine(d, shares, "pair key")
            private = keys.private_key_from_bytes(raw)
            if keys.public_bytes(private) != self.setup.public_keys[d][0]:
                raise AggregationError(f"round {self.round}: the shares of dropped client {d}'s key rebuild a different key")
            self.dropped_keys[d] = raw
            dropped_pair_seeds[d] = {
                u: keys.shared_seed(private, self.setup.public_keys[u][0], context=keys.pair_context(round=self.round, client_a=d, client_b=u))
                for u in self.neighbours[d]
                if u in self.received
            }
        return masking.unmask_sum(self.masked_total, self_seeds=self.self_seeds, dropped_pair_seeds=dropped_pair_seeds)

    def decode(self, total: np.ndarray) -> tuple[NamedArrays, NamedArrays, float]:
        """``(weighted delta sum, weighted statistic sums, total weight)`` from the unmasked ring sum."""
        assert self.layout is not None
        n = len(self.received)
        bound = self.clip_range * self.weight_bound
        values = quantization.decode_sum(total[:-1], num_clients=n, clip_range=bound, levels=self.levels)
        half = self.weight_bound / 2
        total_weight = float(quantization.decode_sum(total[-1:], num_clients=n, clip_range=half, levels=self.levels)[0] + n * half)
        delta, stats = self.layout.split(values)
        return delta, stats, total_weight

    def _combine(self, owner: int, shares: Mapping[int, int], what: str) -> bytes:
        if len(shares) < self.threshold:
            raise AggregationError(
                f"round {self.round}: only {len(shares)} surviving neighbours hold shares of client {owner}'s {what}, "
                f"fewer than the threshold t={self.threshold}; aborting the round"
            )
        try:
            return shamir.combine(shares, threshold=self.threshold)
        except ValueError as error:
            raise AggregationError(f"round {self.round}: cannot rebuild client {owner}'s {what}: {error}") from None


# --------------------------------------------------------------------------- in-process facade


@PROTOCOLS.register("masking")
class MaskingProtocol(AggregationProtocol):
    """Pairwise-masking secure aggregation, run in one process between fresh client objects and a server.

    Parameters
    ----------
    clip_range
        Per-coordinate bound on a client's delta (and statistics): ``w * value`` is clipped to
        ``[-clip_range * weight_bound, clip_range * weight_bound]`` before quantization.
    threshold
        Shamir threshold ``t``; 0 picks :func:`~secure_ffm.secagg.graph.recommended_threshold`
        of the neighbourhood size. A round with fewer than ``t`` survivors aborts.
    neighbours
        0 for the complete graph (SecAgg), an even ``k > 0`` for a SecAgg+ Harary graph of degree ``k``.
    seed
        Seeds the stochastic rounding (per round and client); keys and masks always use the OS CSPRNG.
    weight_bound
        Default public bound on a client's weight, used when ``begin_round`` gets none.
    """

    name = "masking"

    def __init__(self, *, clip_range: float = 1.0, threshold: int = 0, neighbours: int = 0, seed: int = 0, weight_bound: float | None = None) -> None:
        self.clip_range = float(clip_range)
        self.threshold = int(threshold)
        self.neighbours = int(neighbours)
        self.seed = int(seed)
        self.weight_bound = weight_bound
        self.server: MaskingServer | None = None
        self.clients: dict[int, MaskingClient] = {}
        self._setup_seconds = 0.0

    @classmethod
    def from_config(cls, config: SecureAggregationConfig, *, seed: int) -> MaskingProtocol:
        return cls(clip_range=config.clip_range, threshold=config.threshold, neighbours=config.neighbours, seed=seed)

    def begin_round(self, round: int, participants: Sequence[int], *, weight_bound: float | None = None) -> None:
        """Advertise keys and share keys between fresh clients and a fresh server (new keys every round)."""
        start = time.perf_counter()
        bound = weight_bound if weight_bound is not None else self.weight_bound
        if bound is None:
            raise ValueError("masking aggregation needs a public weight_bound (the largest client weight) in begin_round")
        self.server = MaskingServer(round, participants, weight_bound=bound, clip_range=self.clip_range, threshold=self.threshold, neighbours=self.neighbours)
        self.clients = {c: MaskingClient(c) for c in self.server.participants}
        setup = self.server.collect_keys([client.advertise(round) for client in self.clients.values()])
        inbox = self.server.route_shares([client.share_keys(setup) for client in self.clients.values()])
        for c, client in self.clients.items():
            client.receive_shares(inbox[c])
        self._setup_seconds = time.perf_counter() - start

    def encode(self, update: ClientUpdate, *, weight: float) -> ClientMessage:
        client = self.clients.get(update.client_id)
        if self.server is None or client is None or update.round != self.server.round:
            raise ValueError(f"client {update.client_id} is not set up for round {update.round}; call begin_round first")
        rng = generator(self.seed, SECAGG_ROUNDING, update.round, update.client_id)
        return client.masked_input(update, weight=weight, rng=rng)

    def accumulator(self, round: int) -> Accumulator:
        if self.server is None or self.server.round != round:
            raise AggregationError(f"round {round}: the masking key set-up has not run (call begin_round)")
        return MaskingAccumulator(self.server, self.clients, self._setup_seconds)


class MaskingAccumulator(Accumulator):
    """Folds masked vectors into the server's ring sum; ``result`` runs unmasking and decoding."""

    def __init__(self, server: MaskingServer, clients: Mapping[int, MaskingClient], setup_seconds: float) -> None:
        self.server = server
        self.clients = clients
        self.setup_seconds = setup_seconds

    def add(self, message: ClientMessage) -> None:
        self.server.receive_masked(message)

    def result(self) -> Aggregate:
        server = self.server
        if not server.received:
            raise AggregationError(f"round {server.round}: no client messages to aggregate")
        start = time.perf_counter()
        request = server.unmask_request()
        responses = [self.clients[u].unmask(request) for u in request.survivors]
        total = server.unmask(request, responses)
        unmasked = time.perf_counter()
        delta, stats, total_weight = server.decode(total)
        if not total_weight > 0:
            raise AggregationError(f"round {server.round}: total client weight is {total_weight}")
        mean = {k: (v / total_weight).astype(np.float32) for k, v in delta.items()}
        mean_stats = {k: v / total_weight for k, v in stats.items()}
        timings = {"setup": self.setup_seconds, "unmask": unmasked - start, "decode": time.perf_counter() - unmasked}
        return Aggregate(mean, total_weight, len(server.received), timings, mean_stats)


__all__ = [
    "AdvertiseKeys",
    "EncryptedShare",
    "MaskingAccumulator",
    "MaskingClient",
    "MaskingProtocol",
    "MaskingServer",
    "RoundSetup",
    "ShareKeys",
    "UnmaskRequest",
    "UnmaskResponse",
    "VectorLayout",
]
