"""Each stage of a send against what this machine can do with the same data.

A stage is measured as Lambda runs it: the function's handler (its Powertools
entry, with a context) called in-process on the events the state machine
passes, JSON decoding of the event left out as the Lambda runtime's work.
"""

from __future__ import annotations

import json
import time
import tracemalloc
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pg8000.dbapi
from botocore.credentials import Credentials
from redis.cluster import RedisCluster

from bench import data
from bench.data import Audience
from bench.harness import PUBLISH_IN_FLIGHT, SNS_LATENCY, Bench, Row, Timer, alternate
from pushflow.adapters import postgres
from pushflow.adapters import redis_client as redis_clients
from pushflow.adapters.postgres import ConnectionParams
from pushflow.adapters.redis_client import RedisClient
from pushflow.adapters.sns_http import SnsHttpPublisher
from pushflow.domain import sending
from pushflow.domain.content import compile_content
from pushflow.domain.models import Notification, Outcome, PageRef, Recipient
from pushflow.domain.publishing import PushMessage
from pushflow_local.runtime import REGION

NULL = "\\N"  # in COPY's text format
RECIPIENT_SQL = (
    "SELECT d.id, d.user_id, d.platform, d.sandbox, d.endpoint_arn, u.locale, u.time_zone,"
    " u.attributes FROM devices d JOIN users u ON u.id = d.user_id"
)
# The reads and increments FilterRecipients needs, and nothing else: per recipient
# its cached preferences, a dedupe marker and a cap count. KEYS: per recipient
# (prefs, seen, cap); ARGV: page, now, notification id, then the device ids.
CHECKS_SCRIPT = """
local out = {}
for i = 1, #KEYS / 3 do
  out[i] = redis.call('GET', KEYS[3 * i - 2]) or false
  redis.call('HSETNX', KEYS[3 * i - 1], ARGV[i + 3], ARGV[1])
  redis.call('ZADD', KEYS[3 * i], 'NX', ARGV[2], ARGV[3])
end
return out
"""


def connect(bench: Bench) -> Any:
    return ConnectionParams.from_url(bench.servers.database_url).connect()


def dbapi_connect(bench: Bench) -> pg8000.dbapi.Connection:
    params = ConnectionParams.from_url(bench.servers.database_url)
    return pg8000.dbapi.Connection(**params.driver_kwargs())


def redis_client(bench: Bench) -> RedisClient:
    """The client the functions build: a cluster client on a cluster-mode server."""
    return redis_clients.connect(bench.servers.redis_url)


# -- resolve --------------------------------------------------------------------


def _resolve_queries(handler: Callable[[], tuple[int, float]]) -> list[tuple[str, dict[str, Any]]]:
    """The page queries ResolveRecipients sends (SQL text and parameters), recorded
    over one pass of the handler, so the reference runs exactly those."""
    calls: list[tuple[str, dict[str, Any]]] = []
    original = postgres.Connection.run

    def run(self: postgres.Connection, sql: str, stream: Any = None, **params: Any) -> Any:
        if stream is None and "d.id BETWEEN :first AND :last" in sql:
            calls.append((sql, params))
        return original(self, sql, stream=stream, **params)

    postgres.Connection.run = run  # type: ignore[method-assign]
    try:
        handler()
    finally:
        postgres.Connection.run = original  # type: ignore[method-assign]
    if not calls:
        raise RuntimeError("ResolveRecipients sent no page query the bench recognises")
    return calls


def resolve(bench: Bench) -> Audience:
    devices = bench.sizes.devices
    bench.say(f"resolve: seeding {devices:,} devices with COPY")
    audience = data.seed(bench, devices)
    bench.say(f"  seeded in {audience.seed_seconds:.1f}s")
    notification = data.new_send(bench)
    pages = data.plan(bench, notification)
    size = data.page_size(bench, notification)
    events = [data.resolve_event(notification.id, page) for page, _ in pages]

    def handler() -> tuple[int, float]:
        rows = 0
        started = time.perf_counter()
        for event in events:
            rows += len(bench.invoke("ResolveRecipientsFunction", event)["recipients"])
        return rows, time.perf_counter() - started

    queries = _resolve_queries(handler)

    def prepared_query() -> tuple[int, float]:
        """The handler's own statements, as it sends them: the same SQL text and
        parameters per page, prepared once on the connection, rows left as pg8000
        gives them (no event, no recipients' dicts, no Lambda entry)."""
        conn = postgres.Connection(connect(bench))
        try:
            sql, params = queries[0]
            conn.run(sql, **params)  # prepared before timing, as the handler's pool has it
            rows = 0
            started = time.perf_counter()
            for sql, params in queries:
                rows += len(conn.run(sql, **params))
            return rows, time.perf_counter() - started
        finally:
            conn.native.close()

    value, reference, details = alternate(bench.sizes.trials, handler, prepared_query)
    bench.add(
        Row(
            "resolve",
            value,
            "rows/s",
            reference,
            0.8,
            "the handler's own query per page, prepared, run alone (pg8000)",
            details={
                **details,
                "stage": "resolve",
                "devices": devices,
                "pages": len(pages),
                "page_size": size,
                "seed_seconds": round(audience.seed_seconds, 1),
                "seed_rows_per_s": round(devices * 1.5 / audience.seed_seconds),
            },
        )
    )
    return audience


# -- filter ---------------------------------------------------------------------


def _resolved_pages(bench: Bench, recipients: int, skip: int = 0) -> list[str]:
    """The first pages of the audience (after `skip` pages) as ResolveRecipients returns
    them, as JSON (what the next state receives)."""
    notification = data.new_send(bench)
    pages: list[str] = []
    count = 0
    for page, _ in data.plan(bench, notification)[skip:]:
        answer = bench.invoke(
            "ResolveRecipientsFunction", data.resolve_event(notification.id, page)
        )
        pages.append(json.dumps(answer))
        count += len(answer["recipients"])
        if count >= recipients:
            break
    return pages


def _check_keys(tag: str, recipients: Sequence[dict[str, Any]]) -> list[str]:
    keys: list[str] = []
    for recipient in recipients:
        user = recipient["user_id"]
        keys += (
            f"pf:{{u:{user}}}:prefs",
            f"bench:{{u:{user}}}:seen:{tag}",
            f"bench:{{u:{user}}}:cap:{tag}",
        )
    return keys


def _run_checks(
    client: RedisClient,
    sha: str,
    page: int,
    now: int,
    tag: str,
    recipients: Sequence[dict[str, Any]],
) -> None:
    """The checks of a page: one script call; on a cluster, as the server allows it,
    one per hash slot in one pipeline (a script must keep to one slot)."""
    if not isinstance(client, RedisCluster):
        args = [page, now, tag, *(recipient["device_id"] for recipient in recipients)]
        keys = _check_keys(tag, recipients)
        client.evalsha(sha, len(keys), *keys, *args)
        return
    by_slot: dict[int, list[dict[str, Any]]] = {}
    for recipient in recipients:
        slot = client.keyslot(f"pf:{{u:{recipient['user_id']}}}:prefs")  # type: ignore[no-untyped-call]
        by_slot.setdefault(slot, []).append(recipient)
    calls = [
        (_check_keys(tag, group), [page, now, tag, *(r["device_id"] for r in group)])
        for group in by_slot.values()
    ]
    redis_clients.run_script_per_slot(client, CHECKS_SCRIPT, sha, calls)


def filter_stage(bench: Bench) -> None:
    sizes = bench.sizes
    bench.say(f"filter: {sizes.filter_recipients:,} recipients")
    pages = _resolved_pages(bench, sizes.filter_recipients)
    checks = sum(len(json.loads(page)["recipients"]) for page in pages)

    def handler_pass(timer: Timer | None = None) -> int:
        notification = data.new_send(bench)
        count = 0
        for page in pages:
            event = data.with_send(page, notification.id)
            if timer is None:
                bench.invoke("FilterRecipientsFunction", event)
            else:
                with timer():
                    bench.invoke("FilterRecipientsFunction", event)
            count += len(event["recipients"])
        return count

    # Steady state: preferences cached in Redis (a first pass reads them from PostgreSQL).
    handler_pass()

    def handler() -> tuple[int, float]:
        timer = Timer()
        return handler_pass(timer), timer.seconds

    client = redis_client(bench)
    script = client.register_script(CHECKS_SCRIPT)

    def lua_script() -> tuple[int, float]:
        tag = uuid.uuid4().hex[:12]
        now = int(bench.clock.now().timestamp() * 1000)
        decoded = [json.loads(page) for page in pages]
        count = 0
        started = time.perf_counter()
        for event in decoded:
            recipients = event["recipients"]
            _run_checks(client, script.sha, event["page"]["number"], now, tag, recipients)
            count += len(recipients)
        return count, time.perf_counter() - started

    client.script_load(CHECKS_SCRIPT)

    value, lua, details = alternate(sizes.trials, handler, lua_script)

    sample = [r for page in pages for r in json.loads(page)["recipients"]]
    sample = sample[: sizes.filter_per_command_sample]
    tag = uuid.uuid4().hex[:12]
    now = int(bench.clock.now().timestamp() * 1000)
    started = time.perf_counter()
    for recipient in sample:
        script(keys=_check_keys(tag, [recipient]), args=[0, now, tag, recipient["device_id"]])
    per_command = len(sample) / (time.perf_counter() - started)
    client.close()

    common = {"stage": "filter", "recipients": checks, "pages": len(pages)}
    bench.add(
        Row(
            "filter_vs_lua",
            value,
            "checks/s",
            lua,
            0.7,
            "one Lua script per page doing only the reads and increments",
            details={**details, **common},
        )
    )
    bench.add(
        Row(
            "filter_vs_per_command",
            value,
            "checks/s",
            per_command,
            30,
            "straw man: one command (round trip) per recipient",
            target_kind="times",
            details={**common, "sample": len(sample), "redis_url_kind": _kind(bench)},
        )
    )


def _kind(bench: Bench) -> str:
    return "unix socket" if bench.servers.redis_url.startswith("unix:") else "tcp"


# -- publish --------------------------------------------------------------------


def _publish_events(bench: Bench, publishes: int, skip: int) -> list[str]:
    """Filtered pages (FilterRecipients' output) holding at least `publishes` pushes."""
    notification = data.new_send(bench)
    events: list[str] = []
    eligible = 0
    for page in _resolved_pages(bench, publishes * 2, skip=skip):
        answer = bench.invoke("FilterRecipientsFunction", data.with_send(page, notification.id))
        events.append(json.dumps(answer))
        eligible += len(answer["recipients"])
        if eligible >= publishes:
            break
    return events


def _pushes(notification: Notification, events: Sequence[str]) -> list[PushMessage]:
    """The pushes PublishBatch makes for these pages (rendered as it renders them)."""
    content = compile_content(notification.content)
    return [
        sending.push_for(content, Recipient.from_dict(raw))
        for event in events
        for raw in json.loads(event)["recipients"]
    ]


def boto3_rate(url: str, pushes: Sequence[PushMessage], threads: int) -> tuple[float, float]:
    """boto3 `publish` from a pool of `threads`: the usual way to publish to endpoints.
    (publishes/s, this process's CPU microseconds per publish)."""
    import boto3
    from botocore.config import Config

    client = boto3.session.Session().client(
        "sns",
        region_name=REGION,
        endpoint_url=url,
        aws_access_key_id="local",
        aws_secret_access_key="local",  # noqa: S106 - the local stand-in's
        config=Config(max_pool_connections=threads),
    )

    def publish(push: PushMessage) -> str:
        answer = client.publish(
            TargetArn=push.endpoint_arn,
            Message=push.message,
            MessageStructure="json",
            MessageAttributes=dict(push.attributes),  # type: ignore[arg-type]
        )
        return str(answer["MessageId"])

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(publish, pushes[:threads]))  # connections open, models loaded
        started, cpu = time.perf_counter(), time.process_time()
        list(pool.map(publish, pushes))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        return len(pushes) / elapsed, cpu / len(pushes) * 1e6


def publish_stage(bench: Bench) -> None:
    sizes = bench.sizes
    bench.say(f"publish: {sizes.publishes:,} publishes, {PUBLISH_IN_FLIGHT} in flight")
    skip = len(_resolved_pages(bench, sizes.filter_recipients)) + 1
    events = _publish_events(bench, sizes.publishes, skip)
    publisher, sns = bench.publisher, bench.sns

    def handler() -> tuple[int, float]:
        notification = data.new_send(bench)
        decoded = [data.with_send(event, notification.id) for event in events]
        sent = 0
        started = time.perf_counter()
        for event in decoded:
            answer = bench.invoke("PublishBatchFunction", event)
            sent += answer["outcomes"].get(Outcome.SENT.value, 0)
        return sent, time.perf_counter() - started

    notification = data.new_send(bench)
    pushes = _pushes(notification, events)
    boto3_pushes = (pushes * (1 + sizes.boto3_publishes // max(1, len(pushes))))[
        : sizes.boto3_publishes
    ]
    publisher.publish(pushes[:PUBLISH_IN_FLIGHT])  # connections open
    rates: list[float] = []
    boto3_rates: list[float] = []
    boto3_cpu: list[float] = []
    for _ in range(sizes.trials):
        sent, seconds = handler()
        rates.append(sent / seconds)
        rate, cpu_per_push = boto3_rate(sns.url, boto3_pushes, PUBLISH_IN_FLIGHT)
        boto3_rates.append(rate)
        boto3_cpu.append(cpu_per_push)
    # The publisher alone, same pushes and in-flight count as boto3's pool: the
    # question on AWS is Lambda CPU per push (wall time is the account's quota's).
    started, cpu = time.perf_counter(), time.process_time()
    publisher.publish(pushes)
    client_only = len(pushes) / (time.perf_counter() - started)
    client_cpu = (time.process_time() - cpu) / len(pushes) * 1e6
    # What one push takes here, alone: the stand-in's answer time plus this
    # machine's HTTP round trip (the ideal counts only the answer time).
    one_at_a_time = SnsHttpPublisher(
        sns.url, region=REGION, credentials=Credentials("local", "local"), concurrency=1
    )
    one_at_a_time.publish(pushes[:2])
    started = time.perf_counter()
    one_at_a_time.publish(pushes[:20])
    round_trip = (time.perf_counter() - started) / 20
    one_at_a_time.close()
    value, boto3_value = max(rates), max(boto3_rates)
    # At the stand-in's mean answer time (its tail included).
    ideal = PUBLISH_IN_FLIGHT / SNS_LATENCY.mean
    common = {
        "stage": "publish",
        "publishes": sum(len(json.loads(event)["recipients"]) for event in events),
        "pages": len(events),
        "in_flight": PUBLISH_IN_FLIGHT,
        "sns_latency_ms": {
            "median": SNS_LATENCY.median * 1000,
            "p99": SNS_LATENCY.p99 * 1000,
            "mean": round(SNS_LATENCY.mean * 1000, 2),
        },
        "rates": [round(rate, 1) for rate in rates],
        "client_only_publishes_per_s": round(client_only, 1),
        "client_only_cpu_us_per_publish": round(client_cpu, 1),
        "boto3_cpu_us_per_publish": round(min(boto3_cpu), 1),
        "round_trip_ms": round(round_trip * 1000, 2),
        "ideal_at_round_trip": round(PUBLISH_IN_FLIGHT / round_trip, 1),
        "ratio_to_ideal_at_round_trip": round(value * round_trip / PUBLISH_IN_FLIGHT, 3),
    }
    bench.add(
        Row(
            "publish_vs_ideal",
            value,
            "publishes/s",
            ideal,
            0.8,
            f"{PUBLISH_IN_FLIGHT} in flight / {SNS_LATENCY.mean * 1000:.0f} ms mean",
            details=common,
        )
    )
    bench.add(
        Row(
            "publish_vs_boto3",
            value,
            "publishes/s",
            boto3_value,
            3,
            f"boto3 publish from a thread pool of {PUBLISH_IN_FLIGHT}",
            target_kind="times",
            details={
                **common,
                "boto3_sample": len(boto3_pushes),
                "boto3_rates": [round(r, 1) for r in boto3_rates],
            },
        )
    )


# -- record ---------------------------------------------------------------------


def _copy_line(notification_id: str, page: int, result: dict[str, Any]) -> str:
    message_id = result.get("sns_message_id") or NULL
    error = result.get("error") or NULL
    return (
        f"{notification_id}\t{result['device_id']}\t{result['user_id']}\t{page}\t"
        f"{result['outcome']}\t{message_id}\t{error}\n"
    )


def record_stage(bench: Bench, audience: Audience) -> None:
    sizes = bench.sizes
    bench.say(f"record: {sizes.record_rows:,} delivery rows")
    repository = bench.services.repository
    pages: list[PageRef] = []
    rows = 0
    for page, count in data.plan(bench, data.new_send(bench)):
        pages.append(page)
        rows += count
        if rows >= sizes.record_rows:
            break

    def fresh_send() -> Notification:
        # Same table size for every trial: the rows of the previous one go first.
        repository.run("TRUNCATE deliveries")
        repository.run("UPDATE devices SET enabled = true WHERE NOT enabled")
        return data.new_send(bench)

    def handler() -> tuple[int, float]:
        notification = fresh_send()
        timer = Timer()
        written = 0
        for page in pages:
            event = {
                "notification_id": notification.id,
                "page": page.to_dict(),
                "results": data.delivery_results(audience, page),
            }
            with timer():
                written += bench.invoke("RecordResultsFunction", event)["recorded"]
        return written, timer.seconds

    def raw_copy() -> tuple[int, float]:
        notification = fresh_send()
        conn = connect(bench)
        timer = Timer()
        written = 0
        try:
            for page in pages:
                results = data.delivery_results(audience, page)
                with timer():
                    body = "".join(_copy_line(notification.id, page.number, r) for r in results)
                    conn.run(
                        "COPY deliveries (notification_id, device_id, user_id, page, outcome,"
                        " sns_message_id, error) FROM STDIN",
                        stream=[body],
                    )
                written += len(results)
        finally:
            conn.close()
        return written, timer.seconds

    value, copy_rate, details = alternate(sizes.trials, handler, raw_copy)

    # One COPY for every row: what the server takes when nothing is paged.
    notification = fresh_send()
    lines = [
        _copy_line(notification.id, page.number, result)
        for page in pages
        for result in data.delivery_results(audience, page)
    ]
    conn = connect(bench)
    started = time.perf_counter()
    conn.run(
        "COPY deliveries (notification_id, device_id, user_id, page, outcome, sns_message_id,"
        " error) FROM STDIN",
        stream=data.chunks(iter(lines)),
    )
    one_copy = len(lines) / (time.perf_counter() - started)
    conn.close()
    del lines

    # executemany on a sample: the row-at-a-time insert most code starts with.
    notification = fresh_send()
    sample = [
        (
            notification.id,
            r["device_id"],
            r["user_id"],
            page.number,
            r["outcome"],
            r.get("sns_message_id"),
            r.get("error"),
        )
        for page in pages
        for r in data.delivery_results(audience, page)
    ][: sizes.executemany_sample]
    dbapi = dbapi_connect(bench)
    started = time.perf_counter()
    cursor = dbapi.cursor()
    cursor.executemany(
        "INSERT INTO deliveries (notification_id, device_id, user_id, page, outcome,"
        " sns_message_id, error) VALUES (CAST(%s AS uuid), %s, %s, %s, %s, %s, %s)",
        sample,
    )
    dbapi.commit()
    executemany = len(sample) / (time.perf_counter() - started)
    dbapi.close()
    repository.run("TRUNCATE deliveries")
    repository.run("UPDATE devices SET enabled = true WHERE NOT enabled")

    common = {"stage": "record", "rows": rows, "pages": len(pages)}
    bench.add(
        Row(
            "record_vs_copy",
            value,
            "rows/s",
            copy_rate,
            0.7,
            "raw COPY of the same rows into deliveries, one COPY per page",
            details={
                **details,
                **common,
                "one_copy_rows_per_s": round(one_copy),
                "ratio_to_one_copy": round(value / one_copy, 3),
            },
        )
    )
    bench.add(
        Row(
            "record_vs_executemany",
            value,
            "rows/s",
            executemany,
            50,
            "straw man: pg8000 executemany (INSERT per row, one transaction)",
            target_kind="times",
            details={**common, "sample": len(sample)},
        )
    )


# -- memory ---------------------------------------------------------------------


MEMORY_ROWS = {
    "ResolveRecipientsFunction": "memory_resolve",
    "FilterRecipientsFunction": "memory_filter",
    "PublishBatchFunction": "memory_publish",
    "RecordResultsFunction": "memory_record",
}


def memory_stage(bench: Bench) -> None:
    """Peak Python heap of each handler over one full page (tracemalloc), per 1,000 recipients."""
    bench.say("memory: one full page through each handler")
    notification = data.new_send(bench)
    # A full page no other stage sent to (their sends spent these users' caps).
    pages = data.plan(bench, notification)
    page, _ = pages[-2] if len(pages) > 1 else pages[-1]
    event: dict[str, Any] = data.resolve_event(notification.id, page)
    recipients = 0
    tracemalloc.start()
    try:
        for function in MEMORY_ROWS:
            if function == "RecordResultsFunction":
                # PublishBatch wrote this page's rows itself: RecordResults is measured
                # writing the same rows for a send that has none yet.
                rows = bench.services.repository.page_deliveries(notification.id, page.number)
                event = {
                    "notification_id": data.new_send(bench).id,
                    "page": page.to_dict(),
                    "results": [row.to_dict() for row in rows.values()],
                }
            tracemalloc.reset_peak()
            baseline = tracemalloc.get_traced_memory()[0]
            answer = bench.invoke(function, event)
            peak = tracemalloc.get_traced_memory()[1] - baseline
            recipients = recipients or len(answer["recipients"])
            bench.add(
                Row(
                    MEMORY_ROWS[function],
                    peak / 1e6 / recipients * 1000,
                    "MB per 1,000 recipients",
                    None,
                    None,
                    "tracemalloc peak during one call (Python heap)",
                    details={
                        "stage": "memory",
                        "function": function,
                        "recipients": recipients,
                        "peak_mb": round(peak / 1e6, 2),
                    },
                )
            )
            event = answer
    finally:
        tracemalloc.stop()
