"""How the layer reaches Redis: the right client for the server, one error translation.

ElastiCache Serverless is Redis/Valkey in cluster mode, always; a self-managed
Redis may be standalone. `connect` asks the server which it is (`INFO
cluster`), so one REDIS_URL (redis://, rediss:// or unix://) works for both:
a cluster gets redis-py's `RedisCluster` (it follows MOVED/ASK, retries
TRYAGAIN, refreshes the topology after a failover), a standalone server a
plain `redis.Redis`.

`store_errors` is the one place that says which Redis failures are
transient: every Redis adapter uses it, so a failover looks the same to every
task of the state machine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    ClusterCrossSlotError,
    ClusterError,
    ConnectionError,
    CrossSlotTransactionError,
    InvalidPipelineStack,
    NoScriptError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
    TimeoutError,
    TryAgainError,
)

from pushflow.config import ConfigurationError
from pushflow.domain.errors import TransientStoreError

RedisClient = redis.Redis | RedisCluster

# A command that takes longer than this is a server in trouble: give the task's
# retry a chance rather than holding the Lambda until its timeout.
SOCKET_TIMEOUT_SECONDS = 5.0
CLIENT_OPTIONS: dict[str, Any] = {
    "decode_responses": True,
    "socket_timeout": SOCKET_TIMEOUT_SECONDS,
    "socket_connect_timeout": SOCKET_TIMEOUT_SECONDS,
    "health_check_interval": 30,
}

# "Redis is not there right now", never "the request is wrong". ConnectionError
# covers resets, refusals and redis-py's MaxConnectionsError; ClusterError covers
# CLUSTERDOWN (and MASTERDOWN) and redis-py giving up on redirects ("TTL exhausted").
_TRANSIENT = (
    ConnectionError,
    TimeoutError,
    BusyLoadingError,  # LOADING: a node restarting reads its data set
    ReadOnlyError,  # READONLY: a primary demoted in a failover
    TryAgainError,  # TRYAGAIN: keys of a slot being migrated
    ClusterError,
)
# Wrong credentials will not heal by retrying; keys across slots are a bug.
_NEVER_TRANSIENT = (
    AuthenticationError,
    AuthorizationError,
    ClusterCrossSlotError,
    CrossSlotTransactionError,
    InvalidPipelineStack,
)


@contextlib.contextmanager
def store_errors() -> Iterator[None]:
    """Turn Redis failures that a retry may cure into TransientStoreError."""
    try:
        yield
    except _NEVER_TRANSIENT:
        raise
    except _TRANSIENT as error:
        raise TransientStoreError(f"Redis: {type(error).__name__}: {error}") from error
    except RedisClusterException as error:
        # The cluster client's own topology errors, after its retries: no node
        # reachable, a slot not (yet) covered mid-failover.
        raise TransientStoreError(f"Redis: {type(error).__name__}: {error}") from error


def connect(url: str, **options: Any) -> RedisClient:
    """A client for the server `url` names: RedisCluster when it runs in cluster mode.

    Connects once to ask; unreachable is TransientStoreError (the caller builds
    the client lazily, so the next invocation asks again). `options` override
    CLIENT_OPTIONS (tests pass a connection class).
    """
    options = {**CLIENT_OPTIONS, **options}
    with store_errors():
        client = redis.Redis.from_url(url, **options)
        if not cluster_enabled(client):
            return client
        client.close()
        if url.startswith("unix:"):
            raise ConfigurationError(
                "REDIS_URL names a cluster-mode Redis through a unix socket; "
                "redis-py's cluster client needs redis://host:port or rediss://host:port"
            )
        return RedisCluster.from_url(url, **options)


def cluster_enabled(client: redis.Redis) -> bool:
    """Whether the server runs in cluster mode, from the server itself."""
    try:
        info: dict[str, Any] = client.info("cluster")
    except ResponseError:
        info = {}  # INFO renamed or denied by an ACL
    if "cluster_enabled" in info:
        return bool(int(info["cluster_enabled"]))
    # No answer from INFO: CLUSTER INFO answers only in cluster mode.
    try:
        client.cluster("INFO")
    except ResponseError:
        return False
    return True


def run_script_per_slot(
    cluster: RedisCluster,
    script: str,
    sha: str,
    calls: Sequence[tuple[Sequence[str], Sequence[Any]]],
) -> list[list[Any]]:
    """One script call per (keys, args), each call's keys in one hash slot: all in one
    cluster pipeline, one write per node. Answers in the order of `calls`.

    Each call names its node: left to route a script by itself, redis-py's
    cluster pipeline asks the server for the command's keys (COMMAND GETKEYS),
    a round trip per call. A node that no longer serves the slot answers MOVED,
    which redis-py follows.
    """
    untyped: Any = cluster  # redis-py's cluster client has no type annotations

    def pipelined(command: str, body: str, indexes: Sequence[int]) -> list[Any]:
        pipe = untyped.pipeline()
        for i in indexes:
            keys, args = calls[i]
            node = untyped.get_node_from_key(keys[0])
            pipe.execute_command(command, body, len(keys), *keys, *args, target_nodes=node)
        return list(pipe.execute(raise_on_error=False))

    answers = pipelined("EVALSHA", sha, range(len(calls)))
    unknown = [i for i, answer in enumerate(answers) if isinstance(answer, NoScriptError)]
    if unknown:
        # Nodes that never saw the script (new or failed over): send its text once.
        for i, answer in zip(unknown, pipelined("EVAL", script, unknown), strict=True):
            answers[i] = answer
    for answer in answers:
        if isinstance(answer, Exception):
            raise answer
    return [list(answer) for answer in answers]
