"""A whole send through the local runtime, against a naive sender on the same servers.

The send runs the real template and ASL in moto's Step Functions interpreter,
every Lambda an in-process call of its handler. Its PublishBatch publishes to
the benchmark's SNS stand-in (20 ms per answer): the runtime's
`services.publisher` is swapped for an `SnsHttpPublisher` pointed at it, as
services.py would build it for an SNS endpoint (moto's SNS is not involved).

The time split: handler calls are timed (wall and the calling thread's CPU),
the publisher works in the calling thread; the process's CPU that is
neither is the orchestration: moto's interpreter, the Lambda invoke plumbing,
the JSON of every state's payload. Local mode runs all of it in one process,
so CPU (one core, the GIL) is what bounds a local send, and its figure moves
with whatever else this machine runs: the send and the naive sender run in
turns, `trials` times each (Redis emptied before each send), the best counts.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from botocore.credentials import Credentials

from bench import data
from bench.data import Audience
from bench.harness import Bench, Row
from bench.stages import CHECKS_SCRIPT, RECIPIENT_SQL, _run_checks, connect, redis_client
from pushflow.adapters.sns_http import SnsHttpPublisher
from pushflow.domain import sending
from pushflow.domain.content import compile_content
from pushflow.domain.payloads import build_sns_message
from pushflow.validation import validate
from pushflow_local.runtime import REGION, LocalFunction, LocalRuntime

POLL_SECONDS = 0.2
# The handlers of a page (a Map child); their CPU per recipient is reported apart.
PAGE_HANDLERS = (
    "ResolveRecipientsFunction",
    "FilterRecipientsFunction",
    "PublishBatchFunction",
    "RecordResultsFunction",
)
# Enough pages to keep every Map slot busy for a while.
HANDLERS_ONLY_RECIPIENTS = 30_000


class HandlerClock:
    """Times every handler call of the local runtime (patches LocalFunction.invoke)."""

    def __init__(self) -> None:
        self.functions: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def installed(self) -> Iterator[HandlerClock]:
        """Times the handler where it runs: the local runtime calls it on a thread of
        its own (its sandbox, which stops it at its Timeout), so the CPU is that
        thread's, measured inside it, not the invoking thread's."""
        original_handler = LocalFunction.handler
        clock = self

        def handler(self: LocalFunction) -> Any:
            function = original_handler(self)
            name = self.spec.logical_id

            def timed(event: Any, context: Any) -> Any:
                wall, cpu = time.perf_counter(), time.thread_time()
                try:
                    return function(event, context)
                finally:
                    clock._count(name, time.perf_counter() - wall, time.thread_time() - cpu)

            return timed

        LocalFunction.handler = handler  # type: ignore[method-assign]
        try:
            yield self
        finally:
            LocalFunction.handler = original_handler  # type: ignore[method-assign]

    def _count(self, function: str, wall: float, cpu: float) -> None:
        with self._lock:
            entry = self.functions.setdefault(function, {"calls": 0, "wall_s": 0.0, "cpu_s": 0.0})
            entry["calls"] += 1
            entry["wall_s"] += wall
            entry["cpu_s"] += cpu


def send_through_runtime(bench: Bench, audience: Audience) -> tuple[float, dict[str, Any]]:
    """recipients/s of one send to the whole audience, and where the time went."""
    with (
        tempfile.TemporaryDirectory(prefix="pushflow-bench-") as logs,
        LocalRuntime(
            database_url=bench.servers.database_url,
            redis_url=bench.servers.redis_url,
            log_path=Path(logs) / "functions.log",
        ) as runtime,
    ):
        # The bench's pinned clock, not the hour this run happens to start at.
        runtime.clock = runtime.services.clock = bench.clock  # type: ignore[assignment]
        settings = runtime.services.settings
        publisher = SnsHttpPublisher(
            bench.sns.url,
            region=REGION,
            credentials=Credentials("local", "local"),
            concurrency=settings.publish_concurrency,
        )
        runtime.services.publisher = publisher
        repository = runtime.services.repository
        published_before = bench.sns.published()
        clock = HandlerClock()
        try:
            with clock.installed():
                started, cpu = time.perf_counter(), time.process_time()
                own_cpu = time.thread_time()
                notification, _ = sending.submit(
                    validate("SendRequest", data.REQUEST), repository, runtime.services.workflow
                )
                assert notification.execution_arn
                # Polling less often: each poll is CPU the send would not spend.
                execution = runtime.wait(
                    notification.execution_arn, timeout=3600, poll=POLL_SECONDS
                )
                elapsed = time.perf_counter() - started
                process_cpu = time.process_time() - cpu
                polling_cpu = time.thread_time() - own_cpu
        finally:
            publisher.close()
        if execution["status"] != "SUCCEEDED":
            raise RuntimeError(f"the send ended {execution['status']}: {execution.get('cause')}")
        final = repository.get_notification(notification.id)
        counts = repository.outcome_counts(notification.id)
        published = bench.sns.published() - published_before
        if sum(counts.values()) != audience.devices or counts.get("sent", 0) != published:
            raise RuntimeError(f"the send recorded {counts}, the SNS stand-in took {published}")
        handler_cpu = sum(entry["cpu_s"] for entry in clock.functions.values())
        cpu_total = process_cpu - polling_cpu
        details: dict[str, Any] = {
            "recipients": audience.devices,
            "pages": final.page_count,
            "outcomes": counts,
            "elapsed_s": round(elapsed, 2),
            "cpu_s": round(cpu_total, 2),
            "handlers_cpu_s": round(handler_cpu, 2),
            "orchestration_cpu_s": round(cpu_total - handler_cpu, 2),
            "handlers_share_of_cpu": round(handler_cpu / cpu_total, 3) if cpu_total else None,
            "handlers_wall_s_summed": round(
                sum(entry["wall_s"] for entry in clock.functions.values()), 2
            ),
            "functions": {
                name: {key: round(value, 3) for key, value in entry.items()}
                for name, entry in sorted(clock.functions.items())
            },
            "map_concurrency": settings.map_concurrency,
            "publish_concurrency": settings.publish_concurrency,
        }
        page_cpu = {
            name: entry["cpu_s"] for name, entry in clock.functions.items() if name in PAGE_HANDLERS
        }
        per_recipient = 1e6 / max(audience.devices, 1)
        details["functions_cpu_us_per_recipient"] = {
            name: round(cpu * per_recipient, 1) for name, cpu in sorted(page_cpu.items())
        }
        details["handlers_cpu_us_per_recipient"] = round(sum(page_cpu.values()) * per_recipient, 1)
        details["orchestration_cpu_us_per_recipient"] = round(
            (cpu_total - handler_cpu) * per_recipient, 1
        )
        return audience.devices / elapsed, details


def handlers_only(bench: Bench, recipients: int, pages_at_once: int, in_flight: int) -> float:
    """The same four handlers per page, pages side by side, without the state machine:
    each page's events still go through JSON between the steps, as between Lambdas.
    What a send would do locally if the interpreter's share were gone (for instance
    one task per page carrying only the page's key)."""
    notification = data.new_send(bench)
    pages = []
    count = 0
    for page, size in data.plan(bench, notification):
        pages.append(page)
        count += size
        if count >= recipients:
            break
    publisher = SnsHttpPublisher(
        bench.sns.url,
        region=REGION,
        credentials=Credentials("local", "local"),
        concurrency=in_flight,
    )
    bench.services.publisher = publisher

    def one_page(page: Any) -> int:
        event: Any = data.resolve_event(notification.id, page)
        reached = 0
        for function in (
            "ResolveRecipientsFunction",
            "FilterRecipientsFunction",
            "PublishBatchFunction",
            "RecordResultsFunction",
        ):
            event = json.loads(json.dumps(bench.invoke(function, event)))
            reached = sum(event.get("outcomes", {}).values()) or reached
        return reached

    try:
        started = time.perf_counter()
        with ThreadPoolExecutor(pages_at_once) as pool:
            done = sum(pool.map(one_page, pages))
        return done / (time.perf_counter() - started)
    finally:
        bench.services.publisher = bench.publisher
        publisher.close()


def naive_sender(bench: Bench, audience: Audience, sample: int) -> float:
    """One Lambda looping over recipients: per recipient one query, one Redis call,
    one boto3 publish and one insert. recipients/s over a sample."""
    import boto3

    notification = data.new_send(bench)
    content = compile_content(notification.content)
    conn = connect(bench)
    client = redis_client(bench)
    checks = client.register_script(CHECKS_SCRIPT)
    sns = boto3.session.Session().client(
        "sns",
        region_name=REGION,
        endpoint_url=bench.sns.url,
        aws_access_key_id="local",
        aws_secret_access_key="local",  # noqa: S106 - the local stand-in's
    )
    sns.publish(TargetArn="arn:aws:sns:us-east-1:123456789012:endpoint/GCM/warm/up", Message="{}")
    now = int(bench.clock.now().timestamp() * 1000)
    try:
        started = time.perf_counter()
        for device_id in range(audience.first_device_id, audience.first_device_id + sample):
            row = conn.run(f"{RECIPIENT_SQL} WHERE d.id = :id AND d.enabled", id=device_id)[0]
            user_id = row[1]
            checks(
                keys=[
                    f"pf:{{u:{user_id}}}:prefs",
                    f"naive:{{u:{user_id}}}:seen:{notification.id}",
                    f"naive:{{u:{user_id}}}:cap:{notification.id}",
                ],
                args=[0, now, notification.id, device_id],
            )
            message = build_sns_message(content.render(row[5], row[7]), row[2], row[3])
            answer = sns.publish(
                TargetArn=row[4],
                Message=message.message,
                MessageStructure="json",
                MessageAttributes=message.message_attributes,  # type: ignore[arg-type]
            )
            conn.run(
                "INSERT INTO deliveries (notification_id, device_id, user_id, page, outcome,"
                " sns_message_id) VALUES (CAST(:nid AS uuid), :device, :user, 0, 'sent', :mid)",
                nid=notification.id,
                device=device_id,
                user=user_id,
                mid=answer["MessageId"],
            )
        return sample / (time.perf_counter() - started)
    finally:
        conn.close()
        client.close()


# What a user would build instead of the state machine: threads, boto3, a page at a time.
POOL_THREADS = 64
POOL_PAGE = 500


def boto3_pool_sender(bench: Bench, audience: Audience, recipients: int) -> float:
    """What a team would write instead: one process reads the audience a page at a
    time (one keyset query), runs the same Redis checks for the page in one
    pipeline, publishes with boto3 from a pool of 64 threads (a client per
    thread, as boto3 advises) to the same SNS stand-in, and writes the page's
    rows with one multi-row INSERT. recipients/s over `recipients`."""
    import boto3

    notification = data.new_send(bench)
    content = compile_content(notification.content)
    conn = connect(bench)
    client = redis_client(bench)
    sha = str(client.script_load(CHECKS_SCRIPT))
    local = threading.local()

    def sns() -> Any:
        if not hasattr(local, "client"):
            local.client = boto3.session.Session().client(
                "sns",
                region_name=REGION,
                endpoint_url=bench.sns.url,
                aws_access_key_id="local",
                aws_secret_access_key="local",  # noqa: S106 - the local stand-in's
            )
        return local.client

    def publish(row: Any) -> tuple[int, int, str]:
        message = build_sns_message(content.render(row[5], row[7]), row[2], row[3])
        answer = sns().publish(
            TargetArn=row[4],
            Message=message.message,
            MessageStructure="json",
            MessageAttributes=message.message_attributes,
        )
        return row[0], row[1], str(answer["MessageId"])

    now = int(bench.clock.now().timestamp() * 1000)
    sent = 0
    last = audience.first_device_id - 1
    try:
        with ThreadPoolExecutor(POOL_THREADS) as pool:
            list(pool.map(lambda _: sns(), range(POOL_THREADS)))  # clients built before timing
            started = time.perf_counter()
            while sent < recipients:
                rows = conn.run(
                    f"{RECIPIENT_SQL} WHERE d.id > :after AND d.enabled ORDER BY d.id LIMIT :n",
                    after=last,
                    n=min(POOL_PAGE, recipients - sent),
                )
                if not rows:
                    break
                last = rows[-1][0]
                # the same checks as the filter stage's reference: a script per page
                # (per hash slot on a cluster), in one pipeline
                page_recipients = [{"device_id": row[0], "user_id": row[1]} for row in rows]
                _run_checks(client, sha, 0, now, f"pool:{notification.id}", page_recipients)
                results = list(pool.map(publish, rows))
                values = ", ".join(
                    f"(CAST(:nid AS uuid), {device}, {user}, 0, 'sent', :m{n})"
                    for n, (device, user, _) in enumerate(results)
                )
                conn.run(
                    "INSERT INTO deliveries (notification_id, device_id, user_id, page, outcome,"
                    f" sns_message_id) VALUES {values}",
                    nid=notification.id,
                    **{f"m{n}": message_id for n, (_, _, message_id) in enumerate(results)},
                )
                sent += len(rows)
            return sent / (time.perf_counter() - started)
    finally:
        conn.close()
        client.close()


def _forget_sends(bench: Bench) -> None:
    """The next send meets what the first did: Redis (caps, dedupe, cached
    preferences) emptied. It is the benchmark's own server, or one named to be replaced."""
    bench.services.store.client.flushdb()


def end_to_end(bench: Bench) -> None:
    sizes = bench.sizes
    recipients = sizes.end_to_end_recipients
    bench.say(f"end_to_end: seeding {recipients:,} recipients, then sends through moto")
    audience = data.seed(bench, recipients)
    sends: list[tuple[float, dict[str, Any]]] = []
    naive_rates: list[float] = []
    pool_rates: list[float] = []
    # Send and naive sender in turns, the best of each (as the stages' trials).
    for trial in range(sizes.trials):
        if trial:
            bench.say("  again, Redis emptied: no caps counted, no preferences cached")
            _forget_sends(bench)
        sends.append(send_through_runtime(bench, audience))
        bench.say(f"  naive sender over {sizes.naive_sample:,} recipients")
        naive_rates.append(naive_sender(bench, audience, sizes.naive_sample))
        pool_sample = min(sizes.pool_sample, recipients)
        bench.say(f"  boto3 thread-pool sender over {pool_sample:,} recipients")
        pool_rates.append(boto3_pool_sender(bench, audience, pool_sample))
    value, details = max(sends, key=lambda send: send[0])
    naive = max(naive_rates)
    details["rates"] = [round(rate, 1) for rate, _ in sends]
    details["naive_rates"] = [round(rate, 1) for rate in naive_rates]
    details["pool_rates"] = [round(rate, 1) for rate in pool_rates]
    without = min(recipients, HANDLERS_ONLY_RECIPIENTS)
    bench.say(f"  the same handlers without the state machine, {without:,} recipients")
    _forget_sends(bench)
    details["handlers_only_recipients"] = without
    details["handlers_only_recipients_per_s"] = round(
        handlers_only(bench, without, details["map_concurrency"], details["publish_concurrency"]),
        1,
    )
    bench.add(
        Row(
            "end_to_end",
            value,
            "recipients/s",
            naive,
            50,
            "straw man: a naive sender, per recipient one query, one Redis call,"
            " one boto3 publish, one insert",
            target_kind="times",
            details={**details, "stage": "end_to_end", "naive_sample": sizes.naive_sample},
        )
    )
    bench.add(
        Row(
            "end_to_end_vs_boto3_pool",
            value,
            "recipients/s",
            max(pool_rates),
            5,
            f"what a user would build: a page at a time, the same Redis checks per page,"
            f" boto3 publish from {POOL_THREADS} threads, one INSERT per page",
            target_kind="times",
            details={
                "stage": "end_to_end",
                "pool_sample": min(sizes.pool_sample, recipients),
                "pool_rates": details["pool_rates"],
                "rates": details["rates"],
            },
        )
    )
    bench.add(
        Row(
            "handlers_cpu_per_recipient",
            details["handlers_cpu_us_per_recipient"],
            "µs CPU per recipient",
            None,
            None,
            "the four page handlers' CPU, apart from the local interpreter's"
            f" ({details['orchestration_cpu_us_per_recipient']:.0f} µs per recipient)",
            details={
                "stage": "end_to_end",
                "by_function_us_per_recipient": details["functions_cpu_us_per_recipient"],
                "orchestration_cpu_us_per_recipient": details["orchestration_cpu_us_per_recipient"],
                "goal_us": 50,
            },
        )
    )
