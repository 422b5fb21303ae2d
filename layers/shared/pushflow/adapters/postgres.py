"""The PostgreSQL repository (pg8000).

One connection per thread: pg8000 connections are not thread-safe, and in
local mode the Map's iterations run on threads of one process. Connections
are opened on first use and reopened after a failure; connection-level
failures surface as TransientDatabaseError, which the ASL retries.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import pg8000.core
import pg8000.native
from pg8000.exceptions import DatabaseError, InterfaceError

from pushflow.config import Settings
from pushflow.domain.errors import Conflict, NotFound, PushflowError, TransientDatabaseError
from pushflow.domain.models import (
    DeliveryResult,
    Device,
    Notification,
    NotificationStatus,
    Outcome,
    PageRef,
    Schedule,
    ScheduleKind,
    User,
)
from pushflow.domain.ports import AttributeStats, PriorClaim
from pushflow.domain.rules import DEFAULT_PREFERENCES, Preferences

# The newest migration this code was written for (a test keeps it equal to the
# newest file in migrations/). Deployed functions refuse an older schema.
SCHEMA_VERSION = "0006_publish_claims"

# SQLSTATE classes worth a retry: connection exceptions, operator intervention
# (shutdown, admin terminate), insufficient resources, serialization/deadlock.
_TRANSIENT_SQLSTATE_PREFIXES = ("08", "57", "53", "40")
# A prepared statement a migration made stale ("cached plan must not change result
# type", 0A000) or the server forgot (26000): the connection, and with it its
# statements, is dropped and the retry prepares them again.
_STALE_STATEMENT = {"0A000": "cached plan", "26000": "prepared statement"}
# A page's COPY meeting rows already there (a retry): the upsert takes over.
_UNIQUE_VIOLATION = "23505"


# A device of a page that failed for good: `unknown` if an attempt claimed it
# (its push may have gone), else `failed` (never pushed).
def _failed_or_unknown(device_id: str) -> str:
    return (
        "CASE WHEN EXISTS (SELECT 1 FROM publish_claims c WHERE c.notification_id ="
        f" CAST(:nid AS uuid) AND c.device_id = {device_id}) THEN 'unknown' ELSE 'failed' END"
    )


# Prepared statements kept per connection (least recently used go first).
_MAX_STATEMENTS = 64
# Sends whose unchanging part a process keeps (get_send).
_MAX_SENDS_KEPT = 128


class SchemaBehind(PushflowError):
    """The database lacks a migration this code needs: the code was updated without
    DatabaseSchema running (`sam sync` skips it). Not transient: deploy."""


@dataclass(frozen=True, slots=True)
class ConnectionParams:
    user: str
    password: str | None
    database: str
    host: str | None = None
    port: int = 5432
    unix_sock: str | None = None
    tls: bool = False

    @classmethod
    def from_url(cls, url: str) -> ConnectionParams:
        """postgresql://user:pw@host:port/db, or ?host=/socket/dir&port=N for a unix socket."""
        parsed = urlparse(url)
        if parsed.scheme not in ("postgres", "postgresql"):
            raise ValueError("DATABASE_URL must start with postgresql://")
        query = parse_qs(parsed.query)
        port = int(query["port"][0]) if "port" in query else parsed.port or 5432
        socket_dir = query["host"][0] if "host" in query else None
        return cls(
            user=unquote(parsed.username or "postgres"),
            password=unquote(parsed.password) if parsed.password else None,
            database=unquote(parsed.path.lstrip("/")) or "postgres",
            host=None if socket_dir else (parsed.hostname or "localhost"),
            port=port,
            unix_sock=f"{socket_dir}/.s.PGSQL.{port}" if socket_dir else None,
            tls=(query.get("sslmode") or ["disable"])[0] in ("require", "verify-ca", "verify-full"),
        )

    def driver_kwargs(self) -> dict[str, Any]:
        """What pg8000's connections (native and DB-API alike) take."""
        return {
            "user": self.user,
            "password": self.password,
            "database": self.database,
            "host": self.host or "localhost",
            "port": self.port,
            "unix_sock": self.unix_sock,
            "ssl_context": True if self.tls else None,
            "timeout": 30,
            "application_name": "pushflow",
        }

    def connect(self) -> pg8000.native.Connection:
        return pg8000.native.Connection(**self.driver_kwargs())


class Connection:
    """A pg8000 connection that prepares each parameterised statement once.

    pg8000's `run` parses, describes and executes an unnamed statement in three
    round trips; a prepared one runs in one. The statements are the
    repository's own SQL text (values are always parameters), so a small cache
    per connection holds every hot statement of a send.
    """

    def __init__(self, native: pg8000.native.Connection) -> None:
        self.native = native
        self._statements: OrderedDict[str, pg8000.native.PreparedStatement] = OrderedDict()
        self._row_count = -1

    def run(self, sql: str, stream: Any = None, **params: Any) -> list[list[Any]]:
        if stream is not None or not params:
            rows: list[list[Any]] = self.native.run(sql, stream=stream, **params)
            self._row_count = self.native.row_count
            return rows
        statement = self._statements.get(sql)
        if statement is None:
            statement = self.native.prepare(sql)
            self._statements[sql] = statement
            if len(self._statements) > _MAX_STATEMENTS:
                _, oldest = self._statements.popitem(last=False)
                oldest.close()
        else:
            self._statements.move_to_end(sql)
        rows = statement.run(**params)
        # pg8000 keeps a prepared statement's last result on the statement.
        self._row_count = statement._context.row_count
        return rows

    @property
    def row_count(self) -> int:
        return self._row_count

    def copy_in(self, sql: str, data: str) -> None:
        """`COPY ... FROM STDIN` with `data`, in one round trip.

        pg8000's `run(sql, stream=...)` sends a COPY through the extended protocol
        (parse, describe, execute: three round trips); a simple query takes one.
        pg8000 only lets `run` take a stream, so this drives its simple-query steps
        itself (pg8000 is pinned). pg8000 ends every COPY with a Sync, which a simple
        query does not expect: PostgreSQL answers it with one more ReadyForQuery,
        read here so the connection stays in step, also when the COPY fails.
        """
        native = self.native
        started = False

        def stream() -> Iterator[str]:
            nonlocal started
            started = True  # the server is in COPY: pg8000 will send its Sync
            yield data

        context = pg8000.core.Context(sql, stream=stream())
        native.send_QUERY(sql)
        pg8000.core._flush(native._sock)
        try:
            native.handle_messages(context)
        finally:
            if started:
                native.handle_messages(pg8000.core.Context(None))
        self._row_count = context.row_count

    def execute_simple(self, sql: str) -> Any:
        return self.native.execute_simple(sql)

    def close(self) -> None:
        self.native.close()


def _is_transient(error: Exception) -> bool:
    if isinstance(error, InterfaceError | OSError | ConnectionError):
        return True
    if isinstance(error, DatabaseError) and error.args and isinstance(error.args[0], dict):
        code = _sqlstate(error)
        if code in _STALE_STATEMENT:
            return _STALE_STATEMENT[code] in str(error.args[0].get("M", ""))
        return code.startswith(_TRANSIENT_SQLSTATE_PREFIXES)
    return False


def request_hash(request: Mapping[str, Any]) -> str:
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class Audience:
    """An audience as SQL over `devices d JOIN users u`: a WHERE clause and its parameters."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.params: dict[str, Any] = {}
        self.where = self._compile(spec)
        # The devices a send reaches: enabled ones and, given `reachable_since` (set by
        # the send, never by a request), those disabled since then. Another send may
        # disable a device between this send's plan and its page: the plan, the page
        # and a failed page's rows then still agree, and the device keeps its row.
        since = spec.get("reachable_since")
        self.reachable = (
            "d.enabled"
            if since is None
            else f"(d.enabled OR d.disabled_at >= CAST({self._param(since)} AS timestamptz))"
        )

    def _param(self, value: Any) -> str:
        name = f"a{len(self.params)}"
        self.params[name] = value
        return f":{name}"

    def _compile(self, spec: Mapping[str, Any]) -> str:
        where = self._compile_type(spec)
        if "time_zone" in spec:
            # A local-time send's group: the audience in one zone (set by Pushflow,
            # never by a request).
            where = f"({where}) AND u.time_zone = {self._param(spec['time_zone'])}"
        return where

    def _compile_type(self, spec: Mapping[str, Any]) -> str:
        kind = spec["type"]
        if kind == "all":
            return "TRUE"
        if kind == "users":
            return f"u.external_id = ANY(CAST({self._param(list(spec['external_ids']))} AS text[]))"
        if kind == "topic":
            topic = self._param(spec["topic"])
            return (
                "EXISTS (SELECT 1 FROM topic_subscriptions t "
                f"WHERE t.user_id = d.user_id AND t.topic = {topic})"
            )
        if kind == "filter":
            return " AND ".join(self._conditions(spec.get("where") or {})) or "TRUE"
        raise ValueError(f"unknown audience type {kind!r}")

    def _match(self, column: str, condition: Any, cast: str) -> str:
        values = condition["in"] if isinstance(condition, Mapping) else [condition]
        literal = self._param([json.dumps(v) if cast == "jsonb" else v for v in values])
        return f"{column} = ANY(CAST({literal} AS {cast}[]))"

    def _conditions(self, where: Mapping[str, Any]) -> Iterator[str]:
        if "locale" in where:
            yield self._match("u.locale", where["locale"], "text")
        if "platform" in where:
            yield self._match("d.platform", where["platform"], "text")
        for key, condition in (where.get("attributes") or {}).items():
            yield self._match(f"(u.attributes -> {self._param(key)})", condition, "jsonb")


_USER_COLUMNS = "id, external_id, locale, time_zone, attributes, created_at, updated_at"
_DEVICE_COLUMNS = (
    "id, user_id, platform, token, endpoint_arn, sandbox, enabled, created_at, last_seen_at"
)


_NOTIFICATION_COLUMNS = (
    "id, category, request, status, counts, recipient_count, page_count, execution_arn, error,"
    " created_at, started_at, completed_at, schedule_id, send_at"
)
_SCHEDULE_COLUMNS = (
    "id, kind, request, status, send_at, cron, time_zone, start_at, end_at, local_time,"
    " local_date, if_passed, created_at, cancelled_at"
)


def _prefixed(alias: str, columns: str) -> str:
    return ", ".join(f"{alias}.{column.strip()}" for column in columns.split(","))


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _notification(row: Sequence[Any]) -> Notification:
    return Notification(
        id=str(row[0]),
        category=row[1],
        request=row[2],
        status=NotificationStatus(row[3]),
        counts=row[4],
        recipient_count=row[5],
        page_count=row[6],
        execution_arn=row[7],
        error=row[8],
        created_at=_iso(row[9]),
        started_at=_iso(row[10]),
        completed_at=_iso(row[11]),
        schedule_id=str(row[12]) if row[12] else None,
        send_at=_iso(row[13]),
    )


def _schedule(row: Sequence[Any]) -> Schedule:
    return Schedule(
        id=str(row[0]),
        kind=ScheduleKind(row[1]),
        request=row[2],
        status=row[3],
        send_at=_iso(row[4]),
        cron=row[5],
        time_zone=row[6],
        start_at=_iso(row[7]),
        end_at=_iso(row[8]),
        local_time=row[9].strftime("%H:%M") if row[9] else None,
        local_date=_iso(row[10]),
        if_passed=row[11],
        created_at=_iso(row[12]),
        cancelled_at=_iso(row[13]),
    )


def _user(row: Sequence[Any]) -> User:
    return User(
        id=row[0],
        external_id=row[1],
        locale=row[2],
        time_zone=row[3],
        attributes=row[4],
        created_at=row[5].isoformat(),
        updated_at=row[6].isoformat(),
    )


def _device(row: Sequence[Any]) -> Device:
    return Device(
        id=row[0],
        user_id=row[1],
        platform=row[2],
        token=row[3],
        endpoint_arn=row[4],
        sandbox=row[5],
        enabled=row[6],
        created_at=row[7].isoformat(),
        last_seen_at=row[8].isoformat(),
    )


_RECIPIENT_COLUMNS = "d.id, d.user_id, d.platform, d.sandbox, d.endpoint_arn, u.locale, u.time_zone"


class Repository:
    def __init__(
        self,
        connect: Callable[[], pg8000.native.Connection],
        max_idle: int = 8,
        expected_schema: str | None = None,
    ) -> None:
        self._connect = connect
        # Checked on the first connection, then trusted for the process's life.
        self.expected_schema = expected_schema
        self._schema_checked = expected_schema is None
        # A small pool of idle connections, taken for each statement or
        # transaction and given back: a Lambda process keeps its one
        # connection warm, and local mode's many short-lived Map threads share
        # a few instead of each leaving one open.
        self._idle: list[Connection] = []
        self._max_idle = max_idle
        self._lock = threading.Lock()
        self._sends: OrderedDict[str, Notification] = OrderedDict()

    @classmethod
    def from_settings(cls, settings: Settings, expected_schema: str | None = None) -> Repository:
        if settings.database_url:
            params = ConnectionParams.from_url(settings.database_url)
        else:
            params = _params_from_secret(settings)
        return cls(params.connect, expected_schema=expected_schema)

    # -- connections -------------------------------------------------------

    def _checkout(self) -> Connection:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        try:
            conn = Connection(self._connect())
        except Exception as error:
            raise TransientDatabaseError(f"cannot connect to PostgreSQL: {error}") from error
        if not self._schema_checked:
            self._check_schema(conn)
        return conn

    def _check_schema(self, conn: Connection) -> None:
        """Refuse a schema older than the code (one query, on the process's first connection)."""
        try:
            exists = conn.run("SELECT to_regclass('schema_migrations') IS NOT NULL")[0][0]
            rows = conn.run("SELECT max(version) FROM schema_migrations") if exists else [[None]]
        except Exception as error:
            _close_quietly(conn)
            raise TransientDatabaseError(f"PostgreSQL: {error}") from error
        found = rows[0][0]
        if found is None or str(found) < str(self.expected_schema):
            _close_quietly(conn)
            raise SchemaBehind(
                f"the database's schema is at {found or 'no migration'}, this code needs "
                f"{self.expected_schema}: DatabaseSchema has not run its migrations "
                "(sam sync skips it); deploy with sam deploy"
            )
        self._schema_checked = True

    def _checkin(self, conn: Connection) -> None:
        with self._lock:
            if len(self._idle) < self._max_idle:
                self._idle.append(conn)
                return
        _close_quietly(conn)

    @contextlib.contextmanager
    def _session(self) -> Iterator[Connection]:
        """A connection; a failure that is the connection's fault drops it and is transient."""
        conn = self._checkout()
        try:
            yield conn
        except Exception as error:
            if _is_transient(error):
                _close_quietly(conn)
                raise TransientDatabaseError(f"PostgreSQL: {error}") from error
            self._checkin(conn)
            raise
        except BaseException:
            _close_quietly(conn)
            raise
        self._checkin(conn)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        with self._session() as conn:
            conn.run("START TRANSACTION")
            try:
                yield conn
            except BaseException:
                with contextlib.suppress(Exception):
                    conn.run("ROLLBACK")
                raise
            conn.run("COMMIT")

    def run(self, sql: str, **params: Any) -> list[list[Any]]:
        with self._session() as conn:
            rows: list[list[Any]] = conn.run(sql, **params)
            return rows

    def close(self) -> None:
        """Close the idle connections (at shutdown none is in use)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            _close_quietly(conn)

    # -- schema ------------------------------------------------------------

    def migrate(self, migrations_dir: Path) -> list[str]:
        """Apply the migrations not applied yet, in order; a failing one rolls back the run."""
        applied_now: list[str] = []
        with self.transaction() as conn:
            # One migrator at a time, also across processes (deploy + local runs).
            conn.run("SELECT pg_advisory_xact_lock(726354)")
            conn.run(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.run("SELECT version FROM schema_migrations")}
            for path in sorted(migrations_dir.glob("*.sql")):
                if path.stem in done:
                    continue
                conn.execute_simple(path.read_text())
                conn.run("INSERT INTO schema_migrations (version) VALUES (:v)", v=path.stem)
                applied_now.append(path.stem)
        return applied_now

    # -- notifications -----------------------------------------------------

    def create_notification(
        self,
        request: Mapping[str, Any],
        category: str,
        status: NotificationStatus,
        idempotency_key: str | None = None,
        notification_id: str | None = None,
        schedule_id: str | None = None,
        send_at: datetime | None = None,
    ) -> tuple[Notification, bool]:
        """Insert a notification; with an idempotency key, return the existing one instead.

        Returns (notification, created). The same key with a different request is a Conflict.
        """
        digest = request_hash(request)
        new_id = notification_id or str(uuid.uuid4())
        rows = self.run(
            "INSERT INTO notifications (id, idempotency_key, request_hash, request, category,"
            " status, schedule_id, send_at) VALUES (CAST(:id AS uuid), :key, :hash,"
            " CAST(:request AS jsonb), :category, :status, CAST(:schedule AS uuid), :send_at)"
            " ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
            id=new_id,
            key=idempotency_key,
            hash=digest,
            request=json.dumps(request),
            category=category,
            status=status.value,
            schedule=schedule_id,
            send_at=send_at,
        )
        if rows:
            return self.get_notification(new_id), True
        return self.get_notification(self._keyed("notifications", idempotency_key, digest)), False

    def _keyed(self, table: str, idempotency_key: str | None, digest: str) -> str:
        """The id of the row an earlier request with this key made; a Conflict when
        that request was a different one."""
        existing = self.run(
            f"SELECT id, request_hash FROM {table} WHERE idempotency_key = :key",
            key=idempotency_key,
        )
        if not existing:  # deleted between the two statements
            raise TransientDatabaseError("idempotency record vanished; retry")
        if existing[0][1] != digest:
            raise Conflict("this Idempotency-Key was used with a different request")
        return str(existing[0][0])

    def _one(self, table: str, columns: str, row_id: str, what: str) -> list[Any]:
        if not _is_uuid(row_id):
            raise NotFound(f"{what} {row_id} not found")
        rows = self.run(f"SELECT {columns} FROM {table} WHERE id = CAST(:id AS uuid)", id=row_id)
        if not rows:
            raise NotFound(f"{what} {row_id} not found")
        return rows[0]

    def get_notification(self, notification_id: str) -> Notification:
        return _notification(
            self._one("notifications", _NOTIFICATION_COLUMNS, notification_id, "notification")
        )

    def get_send(self, notification_id: str) -> Notification:
        """The notification as far as it never changes once created (request, audience,
        content, category, created_at), kept per process: every page of a send asks
        for it. Never read its status or counts from here: use get_notification."""
        with self._lock:
            found = self._sends.get(notification_id)
            if found is not None:
                self._sends.move_to_end(notification_id)
                return found
        notification = self.get_notification(notification_id)
        with self._lock:
            self._sends[notification_id] = notification
            while len(self._sends) > _MAX_SENDS_KEPT:
                self._sends.popitem(last=False)
        return notification

    def set_execution(self, notification_id: str, execution_arn: str) -> None:
        self.run(
            "UPDATE notifications SET execution_arn = :arn WHERE id = CAST(:id AS uuid)",
            id=notification_id,
            arn=execution_arn,
        )

    def mark_running(
        self, notification_id: str, execution_arn: str, recipient_count: int, page_count: int
    ) -> None:
        self.run(
            "UPDATE notifications SET status = 'running', execution_arn = :arn,"
            " recipient_count = :recipients, page_count = :pages,"
            " started_at = coalesce(started_at, now())"
            " WHERE id = CAST(:id AS uuid) AND status IN ('accepted', 'scheduled', 'running')",
            id=notification_id,
            arn=execution_arn,
            recipients=recipient_count,
            pages=page_count,
        )

    def finish(
        self, notification_id: str, status: NotificationStatus, error: str | None = None
    ) -> Notification:
        """Count the rows per outcome into the notification and set its final status."""
        self.run(
            "UPDATE notifications n SET status = :status, error = :error,"
            " completed_at = now(),"
            " counts = coalesce((SELECT jsonb_object_agg(outcome, c) FROM"
            "   (SELECT outcome, count(*) AS c FROM deliveries"
            "    WHERE notification_id = n.id GROUP BY outcome) per_outcome), '{}'::jsonb)"
            " WHERE id = CAST(:id AS uuid)",
            id=notification_id,
            status=status.value,
            error=error,
        )
        return self.get_notification(notification_id)

    def outcome_counts(self, notification_id: str) -> dict[str, int]:
        rows = self.run(
            "SELECT outcome, count(*) FROM deliveries WHERE notification_id = CAST(:id AS uuid)"
            " GROUP BY outcome",
            id=notification_id,
        )
        return {outcome: int(count) for outcome, count in rows}

    # -- audiences and pages ----------------------------------------------

    def attribute_stats(
        self, audience_spec: Mapping[str, Any], keys: Sequence[str]
    ) -> AttributeStats:
        """For the placeholders' attributes: the most bytes (as JSON) one recipient carries,
        and how many recipients lack each one (one scan of the audience)."""
        if not keys:
            return AttributeStats()
        audience = Audience(audience_spec)
        key_params = {f"k{i}": key for i, key in enumerate(keys)}

        # A bound on each value's size in the JSON Lambda returns (json.dumps, ASCII-only):
        # jsonb's text form already escapes quotes and control characters; every
        # byte a non-ASCII character adds to UTF-8 becomes at most four more; DEL
        # is the one ASCII character it leaves as is and json.dumps escapes.
        def json_weight(k: str) -> str:
            text = f"(u.attributes -> :{k})::text"
            return (
                f"coalesce(octet_length({text}) * 5 - char_length({text}) * 4"
                # DEL stays one byte in jsonb's text but becomes \u007f (six).
                f" + (char_length({text}) - char_length(replace({text}, chr(127), ''))) * 5, 0)"
            )

        sizes = " + ".join(json_weight(k) for k in key_params)
        lacking = ", ".join(
            f"count(*) FILTER (WHERE u.attributes -> :{k} IS NULL"
            f" OR u.attributes -> :{k} = 'null'::jsonb)"
            for k in key_params
        )
        row = self.run(
            f"SELECT coalesce(max({sizes}), 0), {lacking}"
            " FROM devices d JOIN users u ON u.id = d.user_id"
            f" WHERE {audience.reachable} AND {audience.where}",
            **audience.params,
            **key_params,
        )[0]
        missing = {key: int(n) for key, n in zip(keys, row[1:], strict=True) if n}
        return AttributeStats(int(row[0]), missing)

    def audience_time_zones(self, audience_spec: Mapping[str, Any]) -> list[str]:
        audience = Audience(audience_spec)
        rows = self.run(
            "SELECT DISTINCT u.time_zone FROM devices d JOIN users u ON u.id = d.user_id"
            f" WHERE {audience.reachable} AND {audience.where} ORDER BY 1",
            **audience.params,
        )
        return [row[0] for row in rows]

    def plan_pages(
        self, audience_spec: Mapping[str, Any], page_size: int
    ) -> list[tuple[PageRef, int]]:
        """Cut the audience's devices into id ranges of at most `page_size` devices each.

        Returns each page with its device count.
        """
        audience = Audience(audience_spec)
        rows = self.run(
            "SELECT rn / :size AS page, min(id), max(id), count(*) FROM ("
            "  SELECT d.id, row_number() OVER (ORDER BY d.id) - 1 AS rn"
            "  FROM devices d JOIN users u ON u.id = d.user_id"
            f" WHERE {audience.reachable} AND {audience.where}) numbered"
            " GROUP BY 1 ORDER BY 1",
            size=page_size,
            **audience.params,
        )
        return [(PageRef(int(p), int(first), int(last)), int(n)) for p, first, last, n in rows]

    def resolve_page(
        self,
        audience_spec: Mapping[str, Any],
        page: PageRef,
        attribute_keys: Sequence[str],
        notification_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """The page's recipients: its enabled audience devices, or for a deferred pass,
        the devices of the notification deferred until the page's due time.

        In the form the state machine carries them (`Recipient.to_dict`'s), built
        straight from the rows: this is the hot loop of ResolveRecipients.
        """
        keys = list(attribute_keys)
        # Only the attributes the content uses, each as its JSON text (NULL when the
        # user has no such key): PostgreSQL picks them out of the user's attributes,
        # and Python parses a value or two instead of every user's whole object.
        key_params = {f"k{i}": key for i, key in enumerate(keys)}
        attributes = (
            ", ".join(f"CAST(u.attributes -> CAST(:{name} AS text) AS text)" for name in key_params)
            or "NULL"
        )
        if page.due is None:
            audience = Audience(audience_spec)
            rows = self.run(
                f"SELECT {_RECIPIENT_COLUMNS}, {attributes}"
                " FROM devices d JOIN users u ON u.id = d.user_id"
                f" WHERE d.id BETWEEN :first AND :last AND {audience.reachable}"
                f" AND {audience.where} ORDER BY d.id",
                first=page.first_device_id,
                last=page.last_device_id,
                **audience.params,
                **key_params,
            )
        else:
            # Not filtered on `enabled`: a device disabled meanwhile must still
            # reach a final outcome (SNS answers EndpointDisabled).
            rows = self.run(
                f"SELECT {_RECIPIENT_COLUMNS}, {attributes}"
                " FROM deliveries r JOIN devices d ON d.id = r.device_id"
                " JOIN users u ON u.id = d.user_id"
                " WHERE r.notification_id = CAST(:nid AS uuid) AND r.outcome = 'deferred'"
                " AND r.deferred_until <= to_timestamp(:due)"
                " AND r.device_id BETWEEN :first AND :last ORDER BY r.device_id",
                nid=notification_id,
                due=page.due,
                first=page.first_device_id,
                last=page.last_device_id,
                **key_params,
            )
        recipients: list[dict[str, Any]] = [
            {
                "device_id": row[0],
                "user_id": row[1],
                "platform": row[2],
                "sandbox": row[3],
                "endpoint_arn": row[4],
                "locale": row[5],
                "time_zone": row[6],
            }
            for row in rows
        ]
        if keys:
            for recipient, row in zip(recipients, rows, strict=True):
                carried = {
                    key: json.loads(value)
                    for key, value in zip(keys, row[7:], strict=True)
                    if value is not None
                }
                if carried:
                    recipient["attributes"] = carried
        return recipients

    # -- deferred passes ---------------------------------------------------

    def close_orphaned_deferrals(self, notification_id: str) -> int:
        """Deferred rows whose device was removed can never be sent: fail them."""
        with self._session() as conn:
            conn.run(
                "UPDATE deliveries r SET outcome = 'removed', recorded_at = now(),"
                " error = 'device removed before its deferred send'"
                " WHERE r.notification_id = CAST(:nid AS uuid) AND r.outcome = 'deferred'"
                " AND NOT EXISTS (SELECT 1 FROM devices d WHERE d.id = r.device_id)",
                nid=notification_id,
            )
            return int(conn.row_count)

    def fail_deferred(self, notification_id: str, error: str) -> int:
        with self._session() as conn:
            conn.run(
                "UPDATE deliveries SET outcome = 'failed', error = :error, recorded_at = now()"
                " WHERE notification_id = CAST(:nid AS uuid) AND outcome = 'deferred'",
                nid=notification_id,
                error=error,
            )
            return int(conn.row_count)

    def earliest_deferral(self, notification_id: str) -> datetime | None:
        rows = self.run(
            "SELECT min(deferred_until) FROM deliveries"
            " WHERE notification_id = CAST(:nid AS uuid) AND outcome = 'deferred'",
            nid=notification_id,
        )
        earliest: datetime | None = rows[0][0]
        return earliest

    def plan_deferred_pages(
        self, notification_id: str, due_by: datetime, page_size: int
    ) -> tuple[list[tuple[PageRef, int]], datetime | None]:
        """Pages over the devices deferred until `due_by` at the latest.

        Returns the pages and the latest deferral among them: when the pass may go.
        """
        due = int(due_by.timestamp())
        rows = self.run(
            "SELECT rn / :size AS page, min(device_id), max(device_id), count(*),"
            " max(deferred_until) FROM ("
            "  SELECT device_id, deferred_until,"
            "   row_number() OVER (ORDER BY device_id) - 1 AS rn FROM deliveries"
            "  WHERE notification_id = CAST(:nid AS uuid) AND outcome = 'deferred'"
            "  AND deferred_until <= to_timestamp(:due)) numbered"
            " GROUP BY 1 ORDER BY 1",
            size=page_size,
            nid=notification_id,
            due=due,
        )
        latest: datetime | None = max((row[4] for row in rows), default=None)
        if latest is None:
            return [], None
        # The pass goes when the last of them may have a push: its pages carry that time.
        send_at = math.ceil(latest.timestamp())
        pages = [
            (PageRef(int(p), int(first), int(last), send_at), int(n))
            for p, first, last, n, _ in rows
        ]
        return pages, latest

    # -- results -----------------------------------------------------------

    def claim_devices(
        self,
        notification_id: str,
        page: int,
        recipients: Sequence[tuple[int, int]],
        claimed_at: datetime | None = None,
    ) -> dict[int, PriorClaim | None]:
        """Claim (device, user) pairs for publishing, durably, in one round trip.
        `claimed_at`: the sender's clock, the one caps count by (the server's by default).

        None where claimed now; else what an earlier attempt left: its row, or a
        claim without one (it stopped while publishing: the push may have gone).
        """
        if not recipients:
            return {}
        rows = self.run(
            "WITH incoming AS (SELECT * FROM unnest(CAST(:devices AS bigint[]),"
            " CAST(:users AS bigint[])) AS t(device_id, user_id)),"
            " claimed AS (INSERT INTO publish_claims (notification_id, device_id, user_id, page,"
            " claimed_at) SELECT CAST(:nid AS uuid), device_id, user_id, :page,"
            " COALESCE(CAST(:claimed_at AS timestamptz), now()) FROM incoming"
            " ON CONFLICT (notification_id, device_id) DO NOTHING RETURNING device_id)"
            " SELECT i.device_id, c.device_id IS NOT NULL, d.outcome, d.sns_message_id, d.error"
            " FROM incoming i LEFT JOIN claimed c ON c.device_id = i.device_id"
            " LEFT JOIN deliveries d ON d.notification_id = CAST(:nid AS uuid)"
            " AND d.device_id = i.device_id AND d.outcome <> 'deferred'",
            nid=notification_id,
            page=int(page),
            devices=[device for device, _ in recipients],
            users=[user for _, user in recipients],
            claimed_at=claimed_at,
        )
        users = dict(recipients)
        claims: dict[int, PriorClaim | None] = {}
        for device_id, claimed_now, outcome, message_id, error in rows:
            if claimed_now:
                claims[device_id] = None
            elif outcome is None:
                claims[device_id] = PriorClaim(None)
            else:
                claims[device_id] = PriorClaim(
                    DeliveryResult(device_id, users[device_id], Outcome(outcome), message_id, error)
                )
        return claims

    def cap_history(
        self, user_ids: Sequence[int], category: str, since: datetime
    ) -> dict[int, list[tuple[str, datetime]]]:
        """Per user, the sends of a category claimed for them since `since` (each
        with its first claim's time): what a lost cap counter is rebuilt from."""
        if not user_ids:
            return {}
        rows = self.run(
            "SELECT c.user_id, CAST(c.notification_id AS text), min(c.claimed_at)"
            " FROM publish_claims c JOIN notifications n ON n.id = c.notification_id"
            " WHERE c.user_id = ANY(CAST(:users AS bigint[])) AND c.claimed_at > :since"
            " AND n.category = :category GROUP BY c.user_id, c.notification_id",
            users=list(user_ids),
            since=since,
            category=category,
        )
        history: dict[int, list[tuple[str, datetime]]] = {}
        for user_id, notification_id, first_claimed in rows:
            history.setdefault(int(user_id), []).append((notification_id, first_claimed))
        return history

    def record_deliveries(
        self,
        notification_id: str,
        page: int,
        results: Iterable[DeliveryResult],
        released: Sequence[int] = (),
    ) -> int:
        """Write a page's rows in bulk; rows already there are kept (a retry adds nothing).

        Devices whose endpoint SNS reported disabled are disabled in the same transaction,
        and the claims of `released` devices (whose push did not leave) are dropped in it,
        so the page's retry claims and pushes them again. Returns the rows written.
        """
        results = list(results)
        if not results:
            if released:
                with self.transaction() as conn:
                    self._release_claims(conn, notification_id, released)
            return 0
        disabled = [r.device_id for r in results if r.outcome is Outcome.ENDPOINT_DISABLED]
        # First writes of a page (the usual case) go straight into deliveries in
        # one COPY; a page with rows already (a retry, a deferred pass) makes it
        # fail on the key as a whole, and goes through the upsert instead.
        prefix = f"{notification_id}\t{int(page)}\t"
        try:
            with self.transaction() as conn:
                conn.copy_in(
                    "COPY deliveries (notification_id, page, device_id, user_id, outcome,"
                    " sns_message_id, error, deferred_until, content_locale, title) FROM STDIN",
                    _delivery_lines(results, prefix),
                )
                self._disable_endpoints(conn, disabled)
                self._release_claims(conn, notification_id, released)
            return len(results)
        except DatabaseError as error:
            if _sqlstate(error) != _UNIQUE_VIOLATION:
                raise
        with self.transaction() as conn:
            conn.run(
                "CREATE TEMP TABLE incoming_deliveries (device_id bigint, user_id bigint,"
                " outcome text, sns_message_id text, error text, deferred_until timestamptz,"
                " content_locale text, title text)"
                " ON COMMIT DROP"
            )
            conn.copy_in("COPY incoming_deliveries FROM STDIN", _delivery_lines(results))
            conn.run(
                "INSERT INTO deliveries (notification_id, device_id, user_id, page, outcome,"
                " sns_message_id, error, deferred_until, content_locale, title)"
                " SELECT CAST(:id AS uuid), device_id, user_id, :page, outcome, sns_message_id,"
                " error, deferred_until, content_locale, title FROM incoming_deliveries"
                # A row is final once written, except a deferral, which its
                # deferred pass replaces by the outcome it reached.
                " ON CONFLICT (notification_id, device_id) DO UPDATE SET"
                " outcome = excluded.outcome, sns_message_id = excluded.sns_message_id,"
                " error = excluded.error, page = excluded.page, recorded_at = now(),"
                " content_locale = excluded.content_locale, title = excluded.title"
                " WHERE deliveries.outcome = 'deferred' AND excluded.outcome <> 'deferred'",
                id=notification_id,
                page=page,
            )
            inserted = int(conn.row_count)
            self._disable_endpoints(conn, disabled)
            self._release_claims(conn, notification_id, released)
        return inserted

    @staticmethod
    def _release_claims(conn: Connection, notification_id: str, device_ids: Sequence[int]) -> None:
        if device_ids:
            conn.run(
                "DELETE FROM publish_claims WHERE notification_id = CAST(:nid AS uuid)"
                " AND device_id = ANY(CAST(:ids AS bigint[]))",
                nid=notification_id,
                ids=list(device_ids),
            )

    @staticmethod
    def _disable_endpoints(conn: Connection, device_ids: Sequence[int]) -> None:
        if device_ids:
            conn.run(
                "UPDATE devices SET enabled = false, disabled_at = now(),"
                " disabled_reason = 'endpoint_disabled'"
                " WHERE id = ANY(CAST(:ids AS bigint[])) AND enabled",
                ids=list(device_ids),
            )

    def record_page_failure(
        self, notification_id: str, audience_spec: Mapping[str, Any], page: PageRef, error: str
    ) -> int:
        """Every device of a failed page that has no final row yet gets a `failed` row."""
        if page.due is not None:
            with self._session() as conn:
                conn.run(
                    f"UPDATE deliveries SET outcome = {_failed_or_unknown('deliveries.device_id')},"
                    " error = :error,"
                    " recorded_at = now()"
                    " WHERE notification_id = CAST(:nid AS uuid) AND outcome = 'deferred'"
                    " AND deferred_until <= to_timestamp(:due)"
                    " AND device_id BETWEEN :first AND :last",
                    nid=notification_id,
                    error=error[:1000],
                    due=page.due,
                    first=page.first_device_id,
                    last=page.last_device_id,
                )
                return int(conn.row_count)
        audience = Audience(audience_spec)
        with self._session() as conn:
            conn.run(
                "INSERT INTO deliveries (notification_id, device_id, user_id, page, outcome,"
                " error) SELECT CAST(:nid AS uuid), d.id, d.user_id, :page,"
                f" {_failed_or_unknown('d.id')}, :error"
                " FROM devices d JOIN users u ON u.id = d.user_id"
                f" WHERE d.id BETWEEN :first AND :last AND {audience.reachable}"
                f" AND {audience.where}"
                " ON CONFLICT (notification_id, device_id) DO NOTHING",
                nid=notification_id,
                page=page.number,
                error=error[:1000],
                first=page.first_device_id,
                last=page.last_device_id,
                **audience.params,
            )
            return int(conn.row_count)

    def page_deliveries(self, notification_id: str, page: int) -> dict[int, DeliveryResult]:
        rows = self.run(
            "SELECT device_id, user_id, outcome, sns_message_id, error FROM deliveries"
            " WHERE notification_id = CAST(:id AS uuid) AND page = :page",
            id=notification_id,
            page=page,
        )
        return {
            row[0]: DeliveryResult(row[0], row[1], Outcome(row[2]), row[3], row[4]) for row in rows
        }

    # -- preferences -------------------------------------------------------

    def load_preferences(self, user_ids: Sequence[int]) -> dict[int, Preferences]:
        """Each user's delivery preferences in one query; users without a row get the defaults."""
        ids = sorted({int(user_id) for user_id in user_ids})
        if not ids:
            return {}
        rows = self.run(
            "SELECT user_id, opted_out_categories, quiet_hours_start, quiet_hours_end,"
            " cap_overrides FROM preferences WHERE user_id = ANY(CAST(:ids AS bigint[]))",
            ids=ids,
        )
        stored = {
            int(row[0]): Preferences(
                opted_out=frozenset(row[1] or ()),
                quiet_start=row[2],
                quiet_end=row[3],
                cap_overrides=row[4] or {},
            )
            for row in rows
        }
        return {user_id: stored.get(user_id, DEFAULT_PREFERENCES) for user_id in ids}

    def replace_preferences(self, user_id: int, preferences: Preferences) -> None:
        self.run(
            "INSERT INTO preferences (user_id, opted_out_categories, quiet_hours_start,"
            " quiet_hours_end, cap_overrides, updated_at)"
            " VALUES (:id, CAST(:opted AS text[]), :start, :end, CAST(:caps AS jsonb), now())"
            " ON CONFLICT (user_id) DO UPDATE SET"
            " opted_out_categories = excluded.opted_out_categories,"
            " quiet_hours_start = excluded.quiet_hours_start,"
            " quiet_hours_end = excluded.quiet_hours_end,"
            " cap_overrides = excluded.cap_overrides, updated_at = now()",
            id=user_id,
            opted=sorted(preferences.opted_out),
            start=preferences.quiet_start,
            end=preferences.quiet_end,
            caps=json.dumps(dict(preferences.cap_overrides)),
        )

    # -- users, devices, topics (the API) ------------------------------------

    def upsert_user(
        self,
        external_id: str,
        locale: str | None = None,
        time_zone: str | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> tuple[User, bool]:
        """Create the user or update what is given; returns (user, created)."""
        rows = self.run(
            "INSERT INTO users (external_id, locale, time_zone, attributes)"
            " VALUES (:ext, coalesce(:locale, 'en'), coalesce(:tz, 'UTC'),"
            "  coalesce(CAST(:attrs AS jsonb), '{}'::jsonb))"
            " ON CONFLICT (external_id) DO UPDATE SET"
            " locale = coalesce(:locale, users.locale),"
            " time_zone = coalesce(:tz, users.time_zone),"
            " attributes = coalesce(CAST(:attrs AS jsonb), users.attributes),"
            " updated_at = now()"
            f" RETURNING {_USER_COLUMNS}, (xmax = 0)",
            ext=external_id,
            locale=locale,
            tz=time_zone,
            attrs=json.dumps(attributes) if attributes is not None else None,
        )
        return _user(rows[0]), bool(rows[0][-1])

    def find_user(self, external_id: str) -> User | None:
        rows = self.run(
            f"SELECT {_USER_COLUMNS} FROM users WHERE external_id = :ext", ext=external_id
        )
        return _user(rows[0]) if rows else None

    def count_unknown_users(self, external_ids: list[str]) -> int:
        """How many of `external_ids` (distinct) name no user."""
        rows = self.run(
            "SELECT count(*) FROM unnest(CAST(:ids AS text[])) AS wanted(external_id)"
            " WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.external_id = wanted.external_id)",
            ids=sorted(set(external_ids)),
        )
        return int(rows[0][0])

    def find_device_by_token(self, platform: str, token: str) -> Device | None:
        rows = self.run(
            f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE platform = :platform AND token = :token",
            platform=platform,
            token=token,
        )
        return _device(rows[0]) if rows else None

    def get_device(self, device_id: int) -> Device | None:
        rows = self.run(f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE id = :id", id=device_id)
        return _device(rows[0]) if rows else None

    def save_device(
        self, user_id: int, platform: str, token: str, sandbox: bool, endpoint_arn: str
    ) -> tuple[Device, bool]:
        """Register a token for a user (moving it from another user if it was theirs).

        Re-registering enables the device again; returns (device, created).
        """
        rows = self.run(
            "INSERT INTO devices (user_id, platform, token, sandbox, endpoint_arn)"
            " VALUES (:user_id, :platform, :token, :sandbox, :arn)"
            " ON CONFLICT (platform, token) DO UPDATE SET user_id = excluded.user_id,"
            " sandbox = excluded.sandbox, endpoint_arn = excluded.endpoint_arn,"
            " enabled = true, disabled_at = NULL, disabled_reason = NULL, last_seen_at = now()"
            f" RETURNING {_DEVICE_COLUMNS}, (xmax = 0)",
            user_id=user_id,
            platform=platform,
            token=token,
            sandbox=sandbox,
            arn=endpoint_arn,
        )
        return _device(rows[0]), bool(rows[0][-1])

    def list_devices(self, user_id: int) -> list[Device]:
        rows = self.run(
            f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE user_id = :id ORDER BY id", id=user_id
        )
        return [_device(row) for row in rows]

    def delete_device(self, device_id: int) -> None:
        self.run("DELETE FROM devices WHERE id = :id", id=device_id)

    def subscribe(self, user_id: int, topic: str) -> None:
        self.run(
            "INSERT INTO topic_subscriptions (topic, user_id) VALUES (:topic, :id)"
            " ON CONFLICT DO NOTHING",
            topic=topic,
            id=user_id,
        )

    def unsubscribe(self, user_id: int, topic: str) -> None:
        self.run(
            "DELETE FROM topic_subscriptions WHERE topic = :topic AND user_id = :id",
            topic=topic,
            id=user_id,
        )

    def topics(self, user_id: int) -> list[str]:
        rows = self.run(
            "SELECT topic FROM topic_subscriptions WHERE user_id = :id ORDER BY topic", id=user_id
        )
        return [row[0] for row in rows]

    # -- the API's view of a send ---------------------------------------------

    def cancel_notification(self, notification_id: str) -> Notification | None:
        """Cancel a send not finished yet; None when it was already final."""
        rows = self.run(
            "UPDATE notifications SET status = 'cancelled'"
            " WHERE id = CAST(:id AS uuid) AND status IN ('accepted', 'scheduled', 'running')"
            " RETURNING id",
            id=notification_id,
        )
        return self.get_notification(notification_id) if rows else None

    def cancel_deferred(self, notification_id: str) -> int:
        with self._session() as conn:
            conn.run(
                "UPDATE deliveries SET outcome = 'cancelled', recorded_at = now()"
                " WHERE notification_id = CAST(:nid AS uuid) AND outcome = 'deferred'",
                nid=notification_id,
            )
            return int(conn.row_count)

    def list_deliveries(
        self,
        notification_id: str,
        after_device_id: int,
        limit: int,
        outcome: str | None = None,
        platform: str | None = None,
    ) -> list[dict[str, Any]]:
        """A page of a send's delivery rows in device order (keyset: after a device id),
        optionally only one outcome and one platform (a deleted device has none)."""
        rows = self.run(
            "SELECT r.device_id, u.external_id, r.outcome, r.sns_message_id, r.error,"
            " r.recorded_at, r.content_locale, r.title, d.platform, r.page FROM deliveries r"
            " LEFT JOIN users u ON u.id = r.user_id LEFT JOIN devices d ON d.id = r.device_id"
            " WHERE r.notification_id = CAST(:id AS uuid) AND r.device_id > :after"
            " AND (CAST(:outcome AS text) IS NULL OR r.outcome = :outcome)"
            " AND (CAST(:platform AS text) IS NULL OR d.platform = :platform)"
            " ORDER BY r.device_id LIMIT :limit",
            id=notification_id,
            after=after_device_id,
            limit=limit,
            outcome=outcome,
            platform=platform,
        )
        return [
            {
                "device_id": str(row[0]),
                "user_external_id": row[1],
                "outcome": row[2],
                "sns_message_id": row[3],
                "error": row[4],
                "recorded_at": row[5].isoformat(),
                "content_locale": row[6],
                "title": row[7],
                "platform": row[8],
                "page": row[9],
            }
            for row in rows
        ]

    # -- schedules -------------------------------------------------------------

    def create_schedule(
        self,
        kind: ScheduleKind,
        request: Mapping[str, Any],
        idempotency_key: str | None,
        fields: Mapping[str, Any],
        client_request: Mapping[str, Any],
    ) -> tuple[Schedule, bool]:
        """Insert a schedule; with an idempotency key, return the existing one instead.

        The key is matched against what the client sent (`client_request`), not
        against values the server filled in (a start defaulting to "now").
        """
        digest = request_hash({"kind": kind.value, "request": client_request})
        new_id = str(uuid.uuid4())
        columns = (
            "send_at",
            "cron",
            "time_zone",
            "start_at",
            "end_at",
            "local_time",
            "local_date",
            "if_passed",
        )
        rows = self.run(
            "INSERT INTO schedules (id, kind, request, request_hash, idempotency_key, status, "
            + ", ".join(columns)
            + ") VALUES (CAST(:id AS uuid), :kind, CAST(:request AS jsonb), :hash, :key, 'active', "
            + ", ".join(f":{c}" for c in columns)
            + ") ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
            id=new_id,
            kind=kind.value,
            request=json.dumps(request),
            hash=digest,
            key=idempotency_key,
            **{c: fields.get(c) for c in columns},
        )
        if rows:
            return self.get_schedule(new_id), True
        return self.get_schedule(self._keyed("schedules", idempotency_key, digest)), False

    def get_schedule(self, schedule_id: str) -> Schedule:
        return _schedule(self._one("schedules", _SCHEDULE_COLUMNS, schedule_id, "schedule"))

    def list_schedules(self, limit: int, before: str | None = None) -> list[Schedule]:
        rows = self.run(
            f"SELECT {_SCHEDULE_COLUMNS} FROM schedules"
            " WHERE (CAST(:before AS timestamptz) IS NULL"
            " OR created_at < CAST(:before AS timestamptz))"
            " ORDER BY created_at DESC LIMIT :limit",
            before=before,
            limit=limit,
        )
        return [_schedule(row) for row in rows]

    def add_run(
        self,
        schedule_id: str,
        run_key: str,
        scheduled_time: datetime,
        request: Mapping[str, Any],
        category: str,
        status: NotificationStatus,
    ) -> tuple[Notification, bool]:
        """The run's notification, created with the run; a second firing finds the first's."""
        notification_id = str(uuid.uuid4())
        # One statement: the run row claims (schedule, run key) and only then is its
        # notification inserted; the foreign key is checked at the statement's end.
        taken = self.run(
            "WITH run AS ("
            "  INSERT INTO schedule_runs (schedule_id, run_key, notification_id, scheduled_time)"
            "  VALUES (CAST(:schedule AS uuid), :key, CAST(:id AS uuid), :at)"
            "  ON CONFLICT (schedule_id, run_key) DO NOTHING RETURNING notification_id)"
            " INSERT INTO notifications (id, request_hash, request, category, status,"
            " schedule_id, send_at) SELECT notification_id, :hash, CAST(:request AS jsonb),"
            " :category, :status, CAST(:schedule AS uuid), :at FROM run RETURNING id",
            id=notification_id,
            schedule=schedule_id,
            key=run_key,
            at=scheduled_time,
            hash=request_hash(request),
            request=json.dumps(request),
            category=category,
            status=status.value,
        )
        if taken:
            return self.get_notification(notification_id), True
        existing = self.run(
            "SELECT notification_id FROM schedule_runs"
            " WHERE schedule_id = CAST(:schedule AS uuid) AND run_key = :key",
            schedule=schedule_id,
            key=run_key,
        )
        return self.get_notification(str(existing[0][0])), False

    def schedule_runs(self, schedule_id: str) -> list[tuple[str, str, Notification]]:
        """(run key, scheduled time, notification) of each run, oldest first."""
        rows = self.run(
            f"SELECT r.run_key, r.scheduled_time, {_prefixed('n', _NOTIFICATION_COLUMNS)}"
            " FROM schedule_runs r JOIN notifications n ON n.id = r.notification_id"
            " WHERE r.schedule_id = CAST(:id AS uuid) ORDER BY r.scheduled_time, r.run_key",
            id=schedule_id,
        )
        return [(row[0], row[1].isoformat(), _notification(row[2:])) for row in rows]

    def cancel_schedule(self, schedule_id: str) -> list[str]:
        """Cancel a schedule and its runs not started yet; returns those runs' ids."""
        with self.transaction() as conn:
            conn.run(
                "UPDATE schedules SET status = 'cancelled', cancelled_at = now()"
                " WHERE id = CAST(:id AS uuid) AND status = 'active'",
                id=schedule_id,
            )
            rows = conn.run(
                "UPDATE notifications SET status = 'cancelled', completed_at = now()"
                " WHERE schedule_id = CAST(:id AS uuid) AND status = 'scheduled' RETURNING id",
                id=schedule_id,
            )
        return [str(row[0]) for row in rows]

    def complete_schedule(self, schedule_id: str) -> None:
        """A one-time or local-time schedule is complete once none of its runs is pending."""
        self.run(
            "UPDATE schedules s SET status = 'completed'"
            " WHERE id = CAST(:id AS uuid) AND status = 'active' AND kind <> 'recurring'"
            " AND NOT EXISTS (SELECT 1 FROM schedule_runs r JOIN notifications n"
            "  ON n.id = r.notification_id WHERE r.schedule_id = s.id"
            "  AND n.status IN ('scheduled', 'accepted', 'running'))",
            id=schedule_id,
        )

    # -- every send ends: removed devices, the reconciler, redrive -------------

    def start_plan(self, notification_id: str) -> None:
        """Prepare is about to plan: devices removed from now on get `removed` rows."""
        self.run(
            "UPDATE notifications SET planned_at = statement_timestamp()"
            " WHERE id = CAST(:id AS uuid)",
            id=notification_id,
        )

    def removed_since_plan(
        self, notification_id: str, audience_spec: Mapping[str, Any], page: PageRef | None = None
    ) -> list[DeliveryResult]:
        """Devices the send planned (in the page, or anywhere) that were removed since,
        with no row yet: each gets a `removed` row."""
        with self._session() as conn:
            return [
                DeliveryResult(int(device_id), int(user_id), Outcome.REMOVED, error=REMOVED_ERROR)
                for device_id, user_id in self._removed(conn, notification_id, audience_spec, page)
            ]

    @staticmethod
    def _removed(
        conn: Connection,
        notification_id: str,
        audience_spec: Mapping[str, Any],
        page: PageRef | None,
    ) -> list[list[Any]]:
        # The audience's SQL reads `d` (the device) and `u` (its user): here both are
        # the removed device's snapshot, and topic_subscriptions also has its topics.
        audience = Audience(audience_spec)
        bounds = "" if page is None else " AND d.id BETWEEN :first AND :last"
        extra = {} if page is None else {"first": page.first_device_id, "last": page.last_device_id}
        rows: list[list[Any]] = conn.run(
            "WITH topic_subscriptions AS ("
            "  SELECT topic, user_id FROM public.topic_subscriptions"
            "  UNION ALL SELECT unnest(topics), user_id FROM removed_devices)"
            " SELECT d.id, d.user_id FROM"
            " (SELECT device_id AS id, user_id, platform, enabled, disabled_at, created_at,"
            "  removed_at, external_id, locale, time_zone, attributes FROM removed_devices) d"
            " CROSS JOIN LATERAL (SELECT d.external_id, d.locale, d.time_zone,"
            "  coalesce(d.attributes, '{}'::jsonb) AS attributes) u"
            " JOIN notifications n ON n.id = CAST(:nid AS uuid)"
            " WHERE n.planned_at IS NOT NULL AND d.created_at <= n.planned_at"
            f" AND d.removed_at > n.planned_at{bounds}"
            f" AND {audience.reachable} AND {audience.where}"
            " AND NOT EXISTS (SELECT 1 FROM deliveries r"
            "  WHERE r.notification_id = n.id AND r.device_id = d.id)"
            " ORDER BY d.id",
            nid=notification_id,
            **extra,
            **audience.params,
        )
        return rows

    def record_removed_in_page(
        self, notification_id: str, audience_spec: Mapping[str, Any], page: PageRef
    ) -> int:
        """A failed page's removed devices get their `removed` rows (RecordPageFailure)."""
        removed = self.removed_since_plan(notification_id, audience_spec, page)
        return self.record_deliveries(notification_id, page.number, removed) if removed else 0

    def unfinished_sends(
        self, started_before: datetime, limit: int, after: Notification | None = None
    ) -> list[Notification]:
        """Sends not final whose execution should have been running for a while, oldest
        first, a page at a time (keyset: after the last send of the previous page)."""
        rows = self.run(
            f"SELECT {_NOTIFICATION_COLUMNS} FROM notifications"
            f" WHERE {_UNFINISHED} AND coalesce(resumed_at, created_at) < :before"
            " AND (CAST(:after_at AS timestamptz) IS NULL"
            "  OR (created_at, id) > (CAST(:after_at AS timestamptz), CAST(:after_id AS uuid)))"
            " ORDER BY created_at, id LIMIT :limit",
            before=started_before,
            limit=limit,
            after_at=after.created_at if after else None,
            after_id=after.id if after else None,
        )
        return [_notification(row) for row in rows]

    def close_unfinished(
        self, notification_id: str, audience_spec: Mapping[str, Any], error: str
    ) -> dict[str, int] | None:
        """Give every planned device of a send whose execution ended a row, in one
        transaction: `removed` for devices removed since the plan, `failed` (marked
        reconciled) for the ones never reached and for deferrals never sent.
        Returns the outcome counts, or None when the send is no longer unfinished."""
        audience = Audience(audience_spec)
        with self.transaction() as conn:
            locked = conn.run(
                "SELECT planned_at, status FROM notifications WHERE id = CAST(:id AS uuid)"
                f" AND {_UNFINISHED} FOR UPDATE",
                id=notification_id,
            )
            if not locked:
                return None
            # A cancelled send's unreached devices were cancelled, not failed.
            cancelled = locked[0][1] == NotificationStatus.CANCELLED.value
            unreached = "cancelled" if cancelled else "failed"
            reason = None if cancelled else error[:1000]
            removed = self._removed(conn, notification_id, audience_spec, None)
            if removed:
                conn.run(
                    "INSERT INTO deliveries (notification_id, device_id, user_id, page, outcome,"
                    " error) SELECT CAST(:nid AS uuid), r.device_id, r.user_id, -1, 'removed',"
                    " :error FROM unnest(CAST(:ids AS bigint[]), CAST(:users AS bigint[]))"
                    " AS r(device_id, user_id) ON CONFLICT (notification_id, device_id) DO NOTHING",
                    nid=notification_id,
                    ids=[row[0] for row in removed],
                    users=[row[1] for row in removed],
                    error=REMOVED_ERROR,
                )
            conn.run(
                "UPDATE deliveries SET outcome = :outcome, error = :error, reconciled = true,"
                " recorded_at = now() WHERE notification_id = CAST(:nid AS uuid)"
                " AND outcome = 'deferred'",
                nid=notification_id,
                outcome=unreached,
                error=reason,
            )
            if locked[0][0] is not None:
                conn.run(
                    "INSERT INTO deliveries (notification_id, device_id, user_id, page, outcome,"
                    " error, reconciled) SELECT CAST(:nid AS uuid), d.id, d.user_id, -1,"
                    " :outcome, :error, true FROM devices d JOIN users u ON u.id = d.user_id"
                    " WHERE d.created_at <= CAST(:planned AS timestamptz)"
                    f" AND {audience.reachable} AND {audience.where}"
                    " ON CONFLICT (notification_id, device_id) DO NOTHING",
                    nid=notification_id,
                    planned=locked[0][0],
                    outcome=unreached,
                    error=reason,
                    **audience.params,
                )
            rows = conn.run(
                "SELECT outcome, count(*) FROM deliveries"
                " WHERE notification_id = CAST(:id AS uuid) GROUP BY outcome",
                id=notification_id,
            )
        return {outcome: int(count) for outcome, count in rows}

    def finish_unfinished(
        self, notification_id: str, status: NotificationStatus, error: str, execution_arn: str
    ) -> Notification | None:
        """The final status of a send the reconciler closed, unless it moved on meanwhile.
        The execution's ARN is kept, so a retried API request never starts a finished send."""
        rows = self.run(
            "UPDATE notifications n SET status = :status, error = :error, completed_at = now(),"
            " recipient_count = coalesce(recipient_count, 0),"
            " execution_arn = coalesce(execution_arn, :arn),"
            " counts = coalesce((SELECT jsonb_object_agg(outcome, c) FROM"
            "   (SELECT outcome, count(*) AS c FROM deliveries"
            "    WHERE notification_id = n.id GROUP BY outcome) per_outcome), '{}'::jsonb)"
            f" WHERE id = CAST(:id AS uuid) AND {_UNFINISHED} RETURNING id",
            id=notification_id,
            status=status.value,
            error=error[:1000],
            arn=execution_arn,
        )
        return self.get_notification(notification_id) if rows else None

    def resume(self, notification_id: str, resumable: Sequence[NotificationStatus]) -> bool:
        """Make a send running again for a redrive: the reconciler's rows go (the pages
        run again record what really happens), the counts are recounted at the end.
        False when the send's status is not one of `resumable`."""
        with self.transaction() as conn:
            rows = conn.run(
                "UPDATE notifications SET status = 'running', error = NULL, completed_at = NULL,"
                " resumed_at = now() WHERE id = CAST(:id AS uuid)"
                " AND status = ANY(CAST(:resumable AS text[])) RETURNING id",
                id=notification_id,
                resumable=[status.value for status in resumable],
            )
            if not rows:
                return False
            # Deferrals the reconciler closed wait for their pass again; its other rows go.
            conn.run(
                "UPDATE deliveries SET outcome = 'deferred', error = NULL, reconciled = false"
                " WHERE notification_id = CAST(:id AS uuid) AND reconciled"
                " AND deferred_until IS NOT NULL",
                id=notification_id,
            )
            conn.run(
                "DELETE FROM deliveries WHERE notification_id = CAST(:id AS uuid) AND reconciled",
                id=notification_id,
            )
        return True

    def forget_removed_devices(self, removed_before: datetime) -> int:
        """Removed devices older than any send that could still need them."""
        with self._session() as conn:
            conn.run(
                "DELETE FROM removed_devices WHERE removed_at < :before", before=removed_before
            )
            return int(conn.row_count)

    # -- the console's reads (also the API's, for backends) ----------------------

    def list_notifications(
        self,
        limit: int,
        before: tuple[datetime, str] | None = None,
        status: str | None = None,
        category: str | None = None,
    ) -> list[Notification]:
        """Sends newest first (keyset on created_at, id), optionally of one status and
        category."""
        created, last_id = before if before else (None, None)
        rows = self.run(
            f"SELECT {_NOTIFICATION_COLUMNS} FROM notifications"
            " WHERE (CAST(:status AS text) IS NULL OR status = :status)"
            " AND (CAST(:category AS text) IS NULL OR category = :category)"
            " AND (CAST(:created AS timestamptz) IS NULL"
            "      OR (created_at, id) < (CAST(:created AS timestamptz), CAST(:last_id AS uuid)))"
            " ORDER BY created_at DESC, id DESC LIMIT :limit",
            status=status,
            category=category,
            created=created,
            last_id=last_id,
            limit=limit,
        )
        return [_notification(row) for row in rows]

    def recent_deliveries(self, user_id: int, limit: int) -> list[dict[str, Any]]:
        """A user's latest delivery rows, newest first, with their send's category and
        the localization and title each device got."""
        rows = self.run(
            "SELECT r.notification_id, n.category, r.device_id, d.platform, r.outcome,"
            " r.sns_message_id, r.error, r.recorded_at, r.content_locale, r.title"
            " FROM deliveries r JOIN notifications n ON n.id = r.notification_id"
            " LEFT JOIN devices d ON d.id = r.device_id"
            " WHERE r.user_id = :user ORDER BY r.recorded_at DESC, r.device_id LIMIT :limit",
            user=user_id,
            limit=limit,
        )
        return [
            {
                "notification_id": str(row[0]),
                "category": row[1],
                "device_id": str(row[2]),
                "platform": row[3],
                "outcome": row[4],
                "sns_message_id": row[5],
                "error": row[6],
                "recorded_at": row[7].isoformat(),
                "content_locale": row[8],
                "title": row[9],
            }
            for row in rows
        ]

    def page_summaries(
        self, notification_id: str, first_page: int, last_page: int
    ) -> list[dict[str, Any]]:
        """Per page of a send (from its rows): outcome counts and when its rows were
        written, for the pages first_page..last_page."""
        rows = self.run(
            "SELECT page, outcome, count(*), min(recorded_at), max(recorded_at)"
            " FROM deliveries WHERE notification_id = CAST(:id AS uuid)"
            " AND page BETWEEN :first AND :last GROUP BY page, outcome ORDER BY page",
            id=notification_id,
            first=first_page,
            last=last_page,
        )
        pages: dict[int, dict[str, Any]] = {}
        for page, outcome, count, first, last in rows:
            summary = pages.setdefault(
                page, {"page": page, "counts": {}, "first_at": first, "last_at": last}
            )
            summary["counts"][outcome] = count
            summary["first_at"] = min(summary["first_at"], first)
            summary["last_at"] = max(summary["last_at"], last)
        return [
            {**summary, "first_at": _iso(summary["first_at"]), "last_at": _iso(summary["last_at"])}
            for summary in pages.values()
        ]


# Sends not final: running or about to, or cancelled and not finalized yet (the
# execution marks the rest `cancelled` and Finalize sets completed_at).
_UNFINISHED = (
    "(status IN ('accepted', 'running') OR (status = 'cancelled' AND completed_at IS NULL))"
)
# The row a device removed between a send's plan and its page gets.
REMOVED_ERROR = "device removed after the send planned it"


def _delivery_lines(results: Sequence[DeliveryResult], prefix: str = "") -> str:
    """Rows for COPY (text format): each after `prefix`, the columns it leaves out."""
    return "".join(
        f"{prefix}{r.device_id}\t{r.user_id}\t{r.outcome.value}\t"
        f"{_copy_text(r.sns_message_id)}\t{_copy_text(r.error)}\t"
        f"{_copy_text(r.deferred_until)}\t{_copy_text(r.content_locale)}\t"
        f"{_copy_text(r.title)}\n"
        for r in results
    )


def _sqlstate(error: DatabaseError) -> str:
    return str(error.args[0].get("C", "")) if error.args and isinstance(error.args[0], dict) else ""


def _close_quietly(conn: Connection) -> None:
    with contextlib.suppress(Exception):
        conn.close()


def _copy_text(value: str | None) -> str:
    """A value in COPY's text format: \\N for NULL, tabs/newlines/backslashes escaped."""
    if value is None:
        return "\\N"
    return (
        value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    )


def _params_from_secret(settings: Settings) -> ConnectionParams:
    """Deployed: host from the template, credentials from Secrets Manager (cached by Powertools)."""
    from aws_lambda_powertools.utilities import parameters

    arn = settings.require("database_secret_arn")
    secret: Any = parameters.get_secret(arn, transform="json", max_age=300)
    return ConnectionParams(
        user=secret["username"],
        password=secret["password"],
        database=settings.database_name,
        host=settings.require("database_host"),
        port=settings.database_port,
        tls=True,
    )
