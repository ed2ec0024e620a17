"""A :class:`Link` without Flower: each request rebuilds the node's client from its saved state, as a fresh process would."""

from collections.abc import Callable, Iterator, Mapping

from secure_ffm.config import Config
from secure_ffm.engine.codec import from_bytes, to_bytes, unpack
from secure_ffm.run.deployment import authority_session, node_session
from secure_ffm.transports.remote import HELLO, Link, LinkReply, Packed, hello_schema


class FreshProcessLink(Link):
    """Node ``n`` holds partition ``partitions[n]``; its state crosses every message as bytes (Flower's context.state)."""

    def __init__(
        self,
        config: Config,
        partitions: Mapping[int, int],
        *,
        gone: Callable[[str, int], bool] = lambda kind, node: False,
        configs: Mapping[int, Config] | None = None,
        key_file: bytes | None = None,
        data_paths: Mapping[int, str] | None = None,
        authority: tuple[int, bytes] | None = None,
        signing_keys: Mapping[int, str] | None = None,
    ):
        """``configs[node]``: a node that runs another configuration than ``config``; ``key_file``: every node's (CKKS);
        ``data_paths[node]``: the node's own data (node config ``data``), built for the schema the hello brings;
        ``authority``: ``(node, key file)`` of a node that plays CKKS's key authority (node config ``role = "authority"``),
        whose requests are kept in :attr:`authority_requests`; ``signing_keys[node]``: the node's signing key file
        (node config ``signing-key``)."""
        self.signing_keys = dict(signing_keys or {})
        self.authority = authority
        self.authority_requests: list[tuple[str, object]] = []
        self.data_paths = dict(data_paths or {})
        self.schemas: dict[int, object] = {}
        self.key_file = key_file
        self.config = config
        self.configs = dict(configs or {})
        self.partitions = dict(partitions)
        self.saved: dict[int, bytes] = {node: to_bytes({}) for node in partitions}
        self.gone = gone
        self.kinds: list[str] = []

    def nodes(self) -> list[int]:
        return sorted([*self.partitions, *([self.authority[0]] if self.authority else [])])

    def request(self, kind: str, bodies: Mapping[int, Packed]) -> Iterator[LinkReply]:
        self.kinds.append(kind)
        for node, body in bodies.items():
            if self.gone(kind, node):
                continue
            if self.authority is not None and node == self.authority[0]:
                try:
                    self.authority_requests.append((kind, unpack(*body)))
                    yield LinkReply(node, authority_session(self.config, key_file=self.authority[1]).handle(kind, body))
                except Exception as error:  # noqa: BLE001 - as a node's error
                    yield LinkReply(node, error=f"{type(error).__name__}: {error}")
                continue
            state = from_bytes(self.saved[node])
            config = self.configs.get(node, self.config)
            try:
                if kind == HELLO and node in self.data_paths:
                    self.schemas[node] = hello_schema(body)
                session = node_session(
                    config,
                    partition_id=self.partitions[node],
                    num_partitions=config.data.num_clients,
                    state=state,
                    key_file=self.key_file,
                    data_path=self.data_paths.get(node),
                    schema=self.schemas.get(node),  # type: ignore[arg-type]
                    signing_key=self.signing_keys.get(node),
                )
                reply = session.handle(kind, body)
            except Exception as error:  # noqa: BLE001 - a node's error travels back as text, as Flower's Error does
                yield LinkReply(node, error=f"{type(error).__name__}: {error}")
                continue
            finally:
                self.saved[node] = to_bytes(state)
            yield LinkReply(node, reply)
