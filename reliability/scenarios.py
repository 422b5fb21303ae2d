"""The scenarios: one kind of fault each, a real send through it, then the counts.

Each scenario seeds a fresh audience (unique external ids, so unique SNS
endpoints), subscribes it to a topic of its own, sends to that topic while its
faults are active, and judges the outcome with `audit`. Besides the invariants
every send must keep (nothing lost, nothing pushed twice, counts that match the
rows), each scenario checks what its fault must lead to: a retried page
completes, a page that cannot complete is recorded failed, Redis that stays
down fails the send closed.
"""

from __future__ import annotations

import contextlib
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pushflow.domain import sending
from pushflow.domain.categories import CATEGORIES
from pushflow.domain.models import Notification
from pushflow.validation import validate
from pushflow_local import sns
from pushflow_local.runtime import LocalRuntime
from pushflow_local.seed import SeedUser, disable_endpoints, seed_users, varied_users
from pushflow_local.template import REPO_ROOT
from reliability.audit import SendAudit, TargetDevice, audit_send, describe, targeted_devices
from reliability.faults import (
    INTERNAL_ERROR,
    SERVICE_UNAVAILABLE,
    CrashAfterReturn,
    CrashWhilePublishing,
    Fault,
    Hold,
    OutOfTime,
    PostgresConnectionDropped,
    RedisFlushed,
    RedisUnavailable,
    Slow,
    SnsAcceptsThenFails,
    SnsBursts,
    Trigger,
    all_active,
    retry_sleep_scale,
    settings_changed,
)

RESOLVE = "ResolveRecipientsFunction"
FILTER = "FilterRecipientsFunction"
PUBLISH = "PublishBatchFunction"
RECORD = "RecordResultsFunction"
PAGE_FAILURE = "RecordPageFailureFunction"
PREPARE = "PrepareFunction"
FINALIZE = "FinalizeFunction"
ASL_PATH = REPO_ROOT / "statemachines" / "send_notification.asl.json"
# An RDS Multi-AZ failover at its worst (DESIGN.md: 60-120 s; the issue asks for 180).
FAILOVER_SECONDS = 180.0


@dataclass(frozen=True)
class Size:
    """How big the suite runs: `small` in the tests, `full` for `make reliability`."""

    name: str
    users: int  # per scenario (about 4 devices per 3 users)
    page_size: int
    map_concurrency: int
    faults_per_send: int  # how many times a limited fault fires
    concurrent_sends: int
    concurrent_users: int
    send_timeout: float
    # A Redis outage measured in seconds (with real Retry sleeps), or None: in calls.
    outage_seconds: float | None = None


SMALL = Size(
    "small",
    users=30,
    page_size=10,
    map_concurrency=8,
    faults_per_send=3,
    concurrent_sends=20,
    concurrent_users=24,
    send_timeout=60,
)
FULL = Size(
    "full",
    users=1500,
    page_size=100,
    map_concurrency=16,
    faults_per_send=4,
    concurrent_sends=20,
    concurrent_users=300,
    send_timeout=600,
    outage_seconds=1.5,
)


@dataclass
class Check:
    what: str
    ok: bool
    detail: str = ""


@dataclass
class ScenarioResult:
    name: str
    title: str
    faults: list[str] = field(default_factory=list)
    injected: int = 0
    sends: int = 0
    expected: int = 0
    recorded: int = 0
    duplicated: int = 0
    lost: int = 0
    misrecorded: int = 0
    unknown: int = 0
    collapsed: int = 0
    seconds: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    audits: list[SendAudit] = field(default_factory=list)
    error: str | None = None

    @property
    def passed(self) -> bool:
        return (
            self.error is None
            and self.duplicated == 0
            and self.lost == 0
            and self.misrecorded == 0
            and self.unfinished == 0
            and all(check.ok for check in self.checks)
        )

    @property
    def unfinished(self) -> int:
        """Sends left without a final status (accepted, scheduled or running)."""
        return sum(a.status in ("accepted", "scheduled", "running") for a in self.audits)

    def check(self, what: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(what, bool(ok), detail))
        return bool(ok)

    def add(self, audit: SendAudit) -> None:
        self.audits.append(audit)
        self.sends += 1
        self.expected += audit.expected
        self.recorded += audit.recorded
        self.duplicated += audit.duplicated
        self.lost += audit.lost
        self.misrecorded += audit.misrecorded
        self.unknown += audit.unknown
        self.collapsed += audit.collapsed
        self.outcomes = dict(Counter(self.outcomes) + Counter(audit.outcomes))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "passed": self.passed,
            "faults": self.faults,
            "faults_injected": self.injected,
            "sends": self.sends,
            "deliveries_expected": self.expected,
            "recorded": self.recorded,
            "duplicated": self.duplicated,
            "lost": self.lost,
            "misrecorded": self.misrecorded,
            "outcome_unknown": self.unknown,
            "without_final_status": self.unfinished,
            "collapsed_duplicates": self.collapsed,
            "outcomes": self.outcomes,
            "seconds": round(self.seconds, 2),
            "checks": [{"what": c.what, "ok": c.ok, "detail": c.detail} for c in self.checks],
            "sends_detail": [describe(audit) for audit in self.audits],
            "error": self.error,
        }


# -- an audience and a send ---------------------------------------------------------------------


@dataclass
class Audience:
    prefix: str
    topic: str
    users: list[SeedUser]
    targeted: dict[int, TargetDevice]

    def pages(self, page_size: int) -> list[list[int]]:
        """The page plan Prepare makes: the targeted devices by id, in slices."""
        ids = sorted(self.targeted)
        return [ids[i : i + page_size] for i in range(0, len(ids), page_size)]


def subscribe(runtime: LocalRuntime, topic: str, external_ids: Sequence[str]) -> None:
    runtime.services.repository.run(
        "INSERT INTO topic_subscriptions (topic, user_id) SELECT :topic, id FROM users"
        " WHERE external_id = ANY(CAST(:ids AS text[])) ON CONFLICT DO NOTHING",
        topic=topic,
        ids=list(external_ids),
    )


def seed_audience(runtime: LocalRuntime, users: int, label: str) -> Audience:
    prefix = f"rel-{label}-{uuid.uuid4().hex[:8]}"
    seeded = varied_users(users, prefix=prefix)
    seed_users(runtime, seeded)
    subscribe(runtime, prefix, [u.external_id for u in seeded])
    return Audience(prefix, prefix, seeded, targeted_devices(runtime, prefix))


def send_request(topic: str, category: str, tag: str) -> dict[str, Any]:
    return {
        "category": category,
        "audience": {"type": "topic", "topic": topic},
        "content": {"title": "Reliability check", "body": f"Send {tag}"},
    }


def start_send(runtime: LocalRuntime, topic: str, category: str) -> tuple[Notification, str]:
    """Validate and submit as the API does; the tag marks this send's messages."""
    tag = f"tag-{uuid.uuid4().hex}"
    notification, created = sending.submit(
        validate("SendRequest", send_request(topic, category, tag)),
        runtime.services.repository,
        runtime.services.workflow,
    )
    assert created and notification.execution_arn
    return notification, tag


def finish_send(
    runtime: LocalRuntime,
    notification: Notification,
    tag: str,
    targeted: Mapping[int, TargetDevice],
    timeout: float,
    planned_by_prepare: bool = False,
) -> SendAudit:
    execution = runtime.wait(notification.execution_arn or "", timeout=timeout)
    finished = runtime.services.repository.get_notification(notification.id)
    assert runtime.sns is not None
    return audit_send(
        runtime,
        finished,
        execution["status"],
        targeted,
        tag,
        planned_by_prepare,
        apns_collapse_ids=runtime.sns.apns_collapse_ids,
    )


def failures(runtime: LocalRuntime, function: str, error: str | None = None) -> int:
    """How often a function failed (as the ASL saw it), optionally with one error name."""
    raised = runtime.failures.get(function, [])
    return sum(1 for e in raised if error is None or type(e).__name__ == error)


# -- running one scenario -------------------------------------------------------------------------

Body = Callable[[LocalRuntime, Size, ScenarioResult], None]


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    body: Body


@contextlib.contextmanager
def _faults(
    runtime: LocalRuntime, result: ScenarioResult, faults: Sequence[Fault]
) -> Iterator[None]:
    with all_active(runtime, faults):
        try:
            yield
        finally:
            result.faults = [fault.name for fault in faults]
            result.injected = sum(fault.injected for fault in faults)


def run_scenario(runtime: LocalRuntime, scenario: Scenario, size: Size) -> ScenarioResult:
    result = ScenarioResult(scenario.name, scenario.title)
    runtime.failures.clear()
    started = time.monotonic()
    try:
        with settings_changed(
            runtime, page_size=size.page_size, map_concurrency=size.map_concurrency
        ):
            scenario.body(runtime, size, result)
    except Exception as error:  # a scenario that breaks is a failed scenario, with why
        frames = traceback.extract_tb(error.__traceback__)[-3:]
        where = ", ".join(f"{_repo_relative(f.filename)}:{f.lineno}" for f in frames)
        result.error = f"{''.join(traceback.format_exception_only(error)).strip()} (at {where})"
    result.seconds = time.monotonic() - started
    return result


def _repo_relative(filename: str) -> str:
    """A traceback's file as results.json may name it: within the repository, or by name."""
    path = Path(filename)
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return path.name


def one_send(
    runtime: LocalRuntime,
    size: Size,
    result: ScenarioResult,
    faults: Sequence[Fault],
    category: str = "news",
    label: str = "send",
) -> tuple[Audience, SendAudit]:
    """Seed, send under `faults`, audit; records the invariants every send must keep."""
    audience = seed_audience(runtime, size.users, label)
    with _faults(runtime, result, faults):
        notification, tag = start_send(runtime, audience.topic, category)
        audit = finish_send(runtime, notification, tag, audience.targeted, size.send_timeout)
    result.add(audit)
    result.check("the execution succeeded", audit.execution_status == "SUCCEEDED")
    result.check("the notification's counts match its rows", audit.counts_match)
    return audience, audit


def all_sent(result: ScenarioResult, audit: SendAudit) -> None:
    result.check(
        "every device was sent exactly once and recorded sent",
        audit.outcomes == {"sent": audit.expected} and audit.misrecorded == 0,
        f"outcomes {audit.outcomes}",
    )


def no_undelivered_unknown(result: ScenarioResult) -> None:
    """Where no ambiguous answer was injected, no `unknown` row may lack its push."""
    undelivered = sum(a.unknown_undelivered for a in result.audits)
    result.check(
        "no device recorded unknown without SNS having its push", undelivered == 0, f"{undelivered}"
    )


def fired(result: ScenarioResult, fault: Fault, at_least: int = 1) -> None:
    result.check(f"the fault fired ({fault.injected}x)", fault.injected >= at_least)


# -- the scenarios -----------------------------------------------------------------------------


def baseline(runtime: LocalRuntime, size: Size, result: ScenarioResult) -> None:
    _, audit = one_send(runtime, size, result, [])
    all_sent(result, audit)
    result.check("no function failed", not runtime.failures, str(dict(runtime.failures)))


def redis_outage(runtime: LocalRuntime, size: Size, result: ScenarioResult) -> None:
    if size.outage_seconds is None:
        # In calls: each failed attempt of a page spends one; fewer than its retries.
        trigger = Trigger((FILTER, PUBLISH), skip=2, limit=size.faults_per_send)
    else:
        trigger = Trigger((FILTER, PUBLISH), skip=2, seconds=size.outage_seconds)
    outage = RedisUnavailable(trigger)
    scale = contextlib.nullcontext() if size.outage_seconds is None else retry_sleep_scale(1.0)
    with scale:
        _, audit = one_send(runtime, size, result, [outage])
    fired(result, outage)
    all_sent(result, audit)
    retried = failures(runtime, FILTER, "TransientStoreError") + failures(
        runtime, PUBLISH, "TransientStoreError"
    )
    result.check(
        "pages met TransientStoreError and were retried", retried >= 1, f"{retried} failures"
    )


def redis_flushed_mid_send(runtime: LocalRuntime, size: Size, result: ScenarioResult) -> None:
    # Redis loses everything as pages reach FilterRecipients and PublishBatch (a
    # failover to an empty replica): caps, dedupe markers and cached preferences of
    # the send in flight are gone; PostgreSQL's claims must keep every push single.
    flushed = RedisFlushed(Trigger((FILTER, PUBLISH), limit=size.faults_per_send))
    _, audit = one_send(runtime, size, result, [flushed])
    fired(result, flushed, size.faults_per_send)
    all_sent(result, audit)
    no_undelivered_unknown(result)


def redis_flushed_between_sends(runtime: LocalRuntime, size: Size, result: ScenarioResult) -> None:
    # An audience gets its daily `news` cap of sends; Redis then loses every counter.
    # The next send must find them capped all the same (rebuilt from PostgreSQL).
    audience = seed_audience(runtime, size.users, "caps")
    cap = CATEGORIES["news"].daily_cap or 0
    flushed = RedisFlushed(Trigger((FILTER,), limit=1))
    for number in range(cap + 1):
        faults: list[Fault] = [flushed] if number == cap else []
        with _faults(runtime, result, faults):
            notification, tag = start_send(runtime, audience.topic, "news")
            audit = finish_send(runtime, notification, tag, audience.targeted, size.send_timeout)
        result.add(audit)
        if number < cap:
            all_sent(result, audit)
    fired(result, flushed)
    result.injected = flushed.injected
    result.faults = [flushed.name]
    last = result.audits[-1]
    result.check(
        f"after the flush, the send past the cap of {cap} reached nobody: every device capped",
        last.outcomes == {"capped": last.expected} and not any(last.messages.values()),
        f"outcomes {last.outcomes}",
    )


def sns_accepts_then_fails(runtime: LocalRuntime, size: Size, result: ScenarioResult) -> None:
    # SNS takes a push, then answers a 5xx or resets the connection. News (at most
    # once): recorded unknown, never pushed again. Transactional (at least once):
    # pushed again, every copy under the send's collapse id.
    faults: list[SnsAcceptsThenFails] = []
    for category, action in (
        ("news", sns.DELIVER_THEN_ERROR),
        ("news", sns.DELIVER_THEN_RESET),
        ("transactional", sns.DELIVER_THEN_ERROR),
        ("transactional", sns.DELIVER_THEN_RESET),
    ):
        fault = SnsAcceptsThenFails(action, times=size.faults_per_send)
        faults.append(fault)
        _, audit = one_send(runtime, size, result, [fault], category=category, label=category)
        fired(result, fault, size.faults_per_send)
        if category == "news":
            result.check(
                f"news, {action}: each ambiguous push recorded unknown, sent once; the rest sent",
                audit.unknown == fault.injected
                and audit.outcomes.get("sent", 0) == audit.expected - fault.injected
                and audit.collapsed == 0,
                f"outcomes {audit.outcomes}",
            )
        else:
            result.check(
                f"transactional, {action}: each ambiguous push went again under its collapse id",
                audit.collapsed == fault.injected and audit.outcomes == {"sent": audit.expected},
                f"outcomes {audit.outcomes}, {audit.collapsed} collapsed copies",
            )
    result.faults = sorted(set(result.faults) | {"sns accepts, then error/reset"})
    # `one_send` counts the faults of its own send only: all four sends'.
    result.injected = sum(fault.injected for fault in faults)


def timeout_mid_page(runtime: LocalRuntime, size: Size, result: ScenarioResult) -> None:
    # PublishBatch's Timeout leaves each attempt time for about 60 % of a page: it
    # must stop taking pushes before Lambda stops it, record what went, and the
    # retry must push the rest: nobody recorded without having been pushed.
    # A 2 s Timeout: PublishBatch keeps 1 s (half) as its margin, 1 s for pushing.
    slow = OutOfTime(PUBLISH, 2.0, sns_latency=1.0 / (0.6 * size.page_size))
    _, audit = one_send(runtime, size, result, [slow])
    all_sent(result, audit)
    no_undelivered_unknown(result)
    stopped = failures(runtime, PUBLISH, "OutOfTimeError")
    killed = failures(runtime, PUBLISH, "Timedout")
    result.check(
        "pages stopped short of the timeout (OutOfTimeError) and their retries finished them",
        stopped >= 1 and killed == 0,
        f"{stopped} stops, {killed} killed by the sandbox",
    )


def _database_retry_delays(state_name: str) -> list[float]:
    """The longest wait before each TransientDatabaseError retry of a state, read from
    the real ASL (IntervalSeconds x BackoffRate^n, capped at MaxDelaySeconds)."""
    import json

    definition = json.loads(ASL_PATH.read_text())
    states = dict(definition["States"])
    for state in definition["States"].values():
        if "ItemProcessor" in state:
            states.update(state["ItemProcessor"]["States"])
    [retrier] = [
        r for r in states[state_name]["Retry"] if "TransientDatabaseError" in r["ErrorEquals"]
    ]
    interval, rate = float(retrier["IntervalSeconds"]), float(retrier["BackoffRate"])
    cap = float(retrier.get("MaxDelaySeconds", float("inf")))
    return [min(interval * rate**n, cap) for n in range(int(retrier["MaxAttempts"]))]


def postgres_away_long(runtime: LocalRuntime, size: Size, result: ScenarioResult) -> None:
    # PostgreSQL refuses Prepare and Finalize for as many attempts as make three
    # minutes of (virtual) retry time on average with full jitter: the runtime
    # scales Retry sleeps, the attempts are the ASL's own.
    faults: list[Fault] = []
    budgets: dict[str, float] = {}
    for function, state in ((PREPARE, "Prepare"), (FINALIZE, "Finalize")):
        delays = _database_retry_delays(state)
        attempts, expected = 0, 0.0
        while expected < FAILOVER_SECONDS and attempts < len(delays):
            expected += delays[attempts] / 2  # FULL jitter: uniform in [0, delay]
            attempts += 1
        budgets[state] = expected
        faults.append(PostgresConnectionDropped(Trigger((function,), limit=attempts), "checkout"))
    _, audit = one_send(runtime, size, result, faults)
    for fault, (state, expected) in zip(faults, budgets.items(), strict=True):
        result.check(
            f"{state}: refused {fault.injected} attempts ({expected:.0f} s of expected retry"
            f" time, >= {FAILOVER_SECONDS:.0f} s), then went through",
            expected >= FAILOVER_SECONDS and fault.injected == fault.trigger.limit,
        )
    all_sent(result, audit)
    result.check("the send has its final status", audit.status == "completed", audit.status)


def failure_recorder_fails(runtime: LocalRuntime, size: Size, result: ScenarioResult) -> None:
    # Page 1 cannot be resolved; RecordPageFailure, which records it, loses its
    # connection too, a few times: its retries must still record the page.
    drop = PostgresConnectionDropped(Trigger((RESOLVE,), pages=[1]), at="checkout")
    recorder = PostgresConnectionDropped(
        Trigger((PAGE_FAILURE,), limit=size.faults_per_send), at="checkout"
    )
    audience, audit = one_send(runtime, size, result, [drop, recorder])
    fired(result, recorder, size.faults_per_send)
    page = set(audience.pages(size.page_size)[1])
    result.check(
        "page 1's devices are recorded failed (after the recorder's own retries), got nothing",
        all(audit.rows[d][0] == "failed" and not audit.messages[d] for d in page),
        f"{len(page)} devices",
    )
    result.check(
        "the other pages completed",
        all(audit.rows[d][0] == "sent" for d in set(audience.targeted) - page),
    )


def redis_readonly(runtime: LocalRuntime, size: Size, result: ScenarioResult) -> None:
    # A failover demotes the primary: READONLY on FilterRecipients' decide script, and
    # on PublishBatch's settle, the Redis copy it keeps when PostgreSQL refuses its
    # rows (the commit is dropped to force that path). Nothing may be lost or doubled:
    # a device whose result neither kept is `unknown` (news: at most once), pushed once.
    read_only = RedisUnavailable(
        Trigger((FILTER, PUBLISH), limit=2 * size.faults_per_send), read_only=True
    )
    commit = PostgresConnectionDropped(
        Trigger((PUBLISH,), limit=size.faults_per_send, rest_of_invocation=True), at="commit"
    )
    _, audit = one_send(runtime, size, result, [read_only, commit])
    fired(result, read_only, size.faults_per_send)
    result.check(
        "every device sent once, or `unknown` with its one push",
        set(audit.outcomes) <= {"sent", "unknown"}
        and audit.unknown_undelivered == 0
        and all(copies == 1 for copies in audit.messages.values()),
        f"outcomes {audit.outcomes}",
    )
    retried = failures(runtime, FILTER, "TransientStoreError")
    result.check("READONLY was a retried TransientStoreError", retried >= 1, f"{retried}")


def redis_down_for_good(runtime: LocalRuntime, size: Size, result: ScenarioResult) -> None:
    # The documented policy: without Redis neither dedupe nor caps hold, so every
    # category fails closed once the retries are spent (transactional included).
    audience = seed_audience(runtime, size.users, "down")
    outage = RedisUnavailable(Trigger((FILTER, PUBLISH)))
    for category in ("marketing", "transactional"):
        with _faults(runtime, result, [outage]):
            notification, tag = start_send(runtime, audience.topic, category)
            audit = finish_send(runtime, notification, tag, audience.targeted, size.send_timeout)
        result.add(audit)
        errors = {error or "" for outcome, _, error in audit.rows.values() if outcome == "failed"}
        result.check(
            f"{category}: every device failed closed, nothing was pushed",
            audit.outcomes == {"failed": audit.expected}
            and not any(audit.messages.values())
            and all(e.startswith("TransientStoreError") for e in errors),
            f"outcomes {audit.outcomes}",
        )
        result.check(
            f"{category}: the send is marked failed", audit.status == "failed", audit.status
        )
        result.check(f"{category}: counts match rows", audit.counts_match)
    fired(result, outage)


def postgres_drop_resolve(runtime: LocalRuntime, size: Size, result: ScenarioResult) -> None:
    drop = PostgresConnectionDropped(Trigger((RESOLVE,), limit=size.faults_per_send), at="checkout")
    _, audit = one_send(runtime, size, result, [drop])
    fired(result, drop, size.faults_per_send)
    all_sent(result, audit)
    retried = failures(runtime, RESOLVE, "TransientDatabaseError")
    result.check(
        "each dropped connection was one retried TransientDatabaseError",
        retried == drop.injected,
        f"{retried} failures for {drop.injected} drops",
    )


def postgres_drop_record(runtime: LocalRuntime, size: Size, result: ScenarioResult) -> None:
    # Rows are written by PublishBatch (before it answers) and by RecordResults:
    # the connection dies inside either transaction, just before COMMIT. In
    # PublishBatch every later commit of that call dies too: the early write's loss
    # is written again with the rest, and that write's loss fails the function.
    drop = PostgresConnectionDropped(
        Trigger((PUBLISH, RECORD), limit=size.faults_per_send, rest_of_invocation=True),
        at="commit",
    )
    _, audit = one_send(runtime, size, result, [drop])
    fired(result, drop, size.faults_per_send)
    all_sent(result, audit)
    retried = failures(runtime, PUBLISH, "TransientDatabaseError") + failures(
        runtime, RECORD, "TransientDatabaseError"
    )
    result.check(
        "each dropped commit was one retried TransientDatabaseError",
        retried == drop.injected,
        f"{retried} failures for {drop.injected} drops",
    )


def sns_bursts(runtime: LocalRuntime, size: Size, result: ScenarioResult) -> None:
    bursts = SnsBursts(bursts=3, burst_length=max(2, size.page_size // 3), every=size.page_size)
    _, audit = one_send(runtime, size, result, [bursts])
    fired(result, bursts, 3 * bursts.burst_length)
    # A 5xx may hide a delivery: news (at most once) records each `unknown`, never
    # pushes it again; the throttled ones are retried and sent.
    server_errors = bursts.fired_for(INTERNAL_ERROR, SERVICE_UNAVAILABLE)
    result.check(
        "every device sent once, or recorded unknown for each 5xx",
        audit.outcomes.get("sent", 0) == audit.expected - server_errors
        and audit.unknown == server_errors
        and audit.misrecorded == 0,
        f"outcomes {audit.outcomes}, {server_errors} 5xx",
    )
    throttled = failures(runtime, PUBLISH, "ThrottledError")
    result.check("throttled pages were retried", throttled >= 1, f"{throttled} retries")


def crash_after_publish(error: str) -> Body:
    def body(runtime: LocalRuntime, size: Size, result: ScenarioResult) -> None:
        crash = CrashAfterReturn(
            Trigger(once_per_page=True, limit=size.faults_per_send), PUBLISH, error
        )
        _, audit = one_send(runtime, size, result, [crash])
        fired(result, crash, size.faults_per_send)
        all_sent(result, audit)
        if error == "Lambda.Unknown":
            caught = failures(runtime, PUBLISH, error)
            result.check(
                "not retried: the Catch recorded those pages, keeping their sent rows",
                caught == crash.injected,
                f"{caught} caught",
            )

    return body


def crash_mid_publish(runtime: LocalRuntime, size: Size, result: ScenarioResult) -> None:
    crash = CrashWhilePublishing(
        Trigger((PUBLISH,), once_per_page=True, limit=size.faults_per_send),
        "Lambda.ServiceException",
    )
    audience, audit = one_send(runtime, size, result, [crash])
    fired(result, crash, size.faults_per_send)
    pages = audience.pages(size.page_size)
    crashed = {
        device
        for number in crash.trigger.pages_fired
        if number is not None
        for device in pages[number]
    }
    rows = audit.rows
    result.check(
        "devices of crashed pages (news: at most once): recorded unknown, pushed once, never again",
        all(rows[d][0] == "unknown" and audit.messages[d] == 1 for d in crashed),
        f"{len(crashed)} devices on {len(crash.trigger.pages_fired)} pages",
    )
    others = set(audience.targeted) - crashed
    result.check(
        "the other pages were sent",
        all(rows[d][0] == "sent" and audit.messages[d] == 1 for d in others),
    )


def map_iteration_exhausts(runtime: LocalRuntime, size: Size, result: ScenarioResult) -> None:
    # Page 1's connection is dropped on every attempt: its retries run out.
    drop = PostgresConnectionDropped(Trigger((RESOLVE,), pages=[1]), at="checkout")
    audience, audit = one_send(runtime, size, result, [drop])
    page = set(audience.pages(size.page_size)[1])
    rows = audit.rows
    result.check(
        "ResolveRecipients was tried 1 + 5 times on page 1 (its Retry's MaxAttempts)",
        drop.injected == 6,
        f"{drop.injected} attempts",
    )
    result.check(
        "page 1's devices are recorded failed, naming the error, and got nothing",
        all(
            rows[d][0] == "failed"
            and (rows[d][2] or "").startswith("TransientDatabaseError")
            and not audit.messages[d]
            for d in page
        ),
        f"{len(page)} devices",
    )
    result.check(
        "the other pages completed",
        all(rows[d][0] == "sent" for d in set(audience.targeted) - page),
    )
    result.check(
        "the send completed with failures",
        audit.status == "completed_with_failures",
        audit.status,
    )


# Categories the concurrent sends rotate through: mostly capped ones, so caps bind.
CONCURRENT_CATEGORIES = ("marketing", "news", "marketing", "social", "news", "transactional")


def concurrent_sends(
    runtime: LocalRuntime,
    size: Size,
    result: ScenarioResult,
    faults: Sequence[Fault] = (),
    exact_caps: bool = True,
    dead_endpoints: int = 0,
) -> None:
    """`concurrent_sends` sends started at once over overlapping audiences.

    With `dead_endpoints` (one device in that many), APNs/FCM have rejected some
    tokens: the first send to reach one disables the device while the others run.
    """
    prefix = f"rel-conc-{uuid.uuid4().hex[:8]}"
    users = varied_users(size.concurrent_users, prefix=prefix)
    seeded = seed_users(runtime, users)
    if dead_endpoints:
        disable_endpoints(runtime, [d.endpoint_arn for d in seeded[::dead_endpoints]])
    sends = size.concurrent_sends
    audiences: list[tuple[str, str, dict[int, TargetDevice]]] = []
    for k in range(sends):
        # Send k reaches three users in four, a different quarter left out each time.
        members = [u.external_id for i, u in enumerate(users) if (i + k) % 4 != 0]
        topic = f"{prefix}-{k}"
        subscribe(runtime, topic, members)
        category = CONCURRENT_CATEGORIES[k % len(CONCURRENT_CATEGORIES)]
        audiences.append((topic, category, targeted_devices(runtime, topic)))

    audits: list[tuple[SendAudit, dict[int, TargetDevice], str]] = []
    with _faults(runtime, result, faults), ThreadPoolExecutor(sends) as pool:
        started = list(pool.map(lambda a: start_send(runtime, a[0], a[1]), audiences))
        deadline = time.monotonic() + size.send_timeout
        for (notification, tag), (_, category, targeted) in zip(started, audiences, strict=True):
            left = max(1.0, deadline - time.monotonic())
            audit = finish_send(
                runtime, notification, tag, targeted, left, planned_by_prepare=bool(dead_endpoints)
            )
            audits.append((audit, targeted, category))
    for audit, _, _ in audits:
        result.add(audit)
    result.check(
        f"all {sends} executions finished in time and succeeded (no deadlock)",
        all(a.execution_status == "SUCCEEDED" for a, _, _ in audits),
    )
    result.check(
        "every notification's counts match its rows", all(a.counts_match for a, _, _ in audits)
    )

    # Caps: per user and category, the sends that reached any of the user's devices
    # (by what SNS holds, not by what the rows say).
    reached: Counter[tuple[int, str]] = Counter()
    targeted_sends: Counter[tuple[int, str]] = Counter()
    split = 0
    for audit, targeted, category in audits:
        outcomes: dict[int, set[str]] = {}
        pushed: dict[int, bool] = {}
        for device_id, device in targeted.items():
            row = audit.rows.get(device_id)
            outcomes.setdefault(device.user_id, set()).add(row[0] if row else "missing")
            got = audit.messages.get(device_id, 0) > 0
            pushed[device.user_id] = pushed.get(device.user_id, False) or got
        for user_id, user_outcomes in outcomes.items():
            targeted_sends[(user_id, category)] += 1
            reached[(user_id, category)] += pushed[user_id]
            if len(user_outcomes) > 1:
                split += 1
    over = [
        (user, category, count)
        for (user, category), count in reached.items()
        if (cap := CATEGORIES[category].daily_cap) is not None and count > cap
    ]
    result.check(
        "no user got more pushes of a category than its daily cap",
        not over,
        f"{len(over)} over, e.g. {over[:3]}",
    )
    if exact_caps:
        short = [
            (user, category, reached[(user, category)], wanted)
            for (user, category), targeted_count in targeted_sends.items()
            if reached[(user, category)]
            != (wanted := min(targeted_count, CATEGORIES[category].daily_cap or targeted_count))
        ]
        result.check(
            "and each user got exactly min(cap, sends of that category) of them",
            not short,
            f"{len(short)} differ, e.g. {short[:3]}",
        )
        result.check(
            "a cap never splits a user's devices within one send (all sent or all capped)",
            split == 0,
            f"{split} split",
        )
    pg_deadlocks = sum(
        1 for errors in runtime.failures.values() for e in errors if "40P01" in str(e)
    )
    result.check("PostgreSQL reported no deadlock", pg_deadlocks == 0, f"{pg_deadlocks}")


def concurrency(runtime: LocalRuntime, size: Size, result: ScenarioResult) -> None:
    concurrent_sends(runtime, size, result)


def concurrency_dead_endpoints(runtime: LocalRuntime, size: Size, result: ScenarioResult) -> None:
    # Pages after the first resolve a second late: by then another send's first page
    # may have disabled one of their devices, after their own Prepare planned it.
    late = Slow(Trigger((RESOLVE,), pages=range(1, 10_000)), RESOLVE, 1.0)
    concurrent_sends(runtime, size, result, [late], exact_caps=False, dead_endpoints=8)
    disabled = sum(audit.outcomes.get("endpoint_disabled", 0) for audit in result.audits)
    result.check("dead endpoints were met and recorded", disabled > 0, f"{disabled} rows")


def disabled_after_planning(runtime: LocalRuntime, size: Size, result: ScenarioResult) -> None:
    """Send B has planned its pages when send A, to the same users, finds some of their
    endpoints dead and disables those devices; only then does B resolve its pages.
    Every device B planned must still end with a row."""
    audience = seed_audience(runtime, size.users, "dis")
    dead = sorted(audience.targeted)[::8]
    disable_endpoints(runtime, [audience.targeted[d].endpoint_arn for d in dead])
    topic_b = f"{audience.topic}-b"
    subscribe(runtime, topic_b, [u.external_id for u in audience.users])
    topics: dict[str, str] = {}

    def topic_of(event: Mapping[str, Any]) -> str | None:
        notification_id = str(event.get("notification_id") or "")
        if notification_id and notification_id not in topics:
            request = runtime.services.repository.get_notification(notification_id).request
            topics[notification_id] = str(request["audience"].get("topic"))
        return topics.get(notification_id)

    b_planned, a_done = threading.Event(), threading.Event()
    faults: list[Fault] = [
        Hold(PUBLISH, lambda e: topic_of(e) == audience.topic, release=b_planned),
        Hold(RESOLVE, lambda e: topic_of(e) == topic_b, release=a_done),
    ]
    with _faults(runtime, result, faults):
        a, tag_a = start_send(runtime, audience.topic, "news")
        b, tag_b = start_send(runtime, topic_b, "news")
        deadline = time.monotonic() + size.send_timeout
        while runtime.services.repository.get_notification(b.id).status.value != "running":
            assert time.monotonic() < deadline, "send B never started"
            time.sleep(0.05)
        b_planned.set()
        audit_a = finish_send(runtime, a, tag_a, audience.targeted, size.send_timeout)
        a_done.set()
        audit_b = finish_send(
            runtime, b, tag_b, audience.targeted, size.send_timeout, planned_by_prepare=True
        )
    result.add(audit_a)
    result.add(audit_b)
    result.check(
        "A recorded the dead endpoints and pushed the others",
        audit_a.outcomes
        == {"endpoint_disabled": len(dead), "sent": len(audience.targeted) - len(dead)},
        f"{audit_a.outcomes}",
    )
    result.check(
        "B planned every device, the dead ones included",
        audit_b.expected == len(audience.targeted),
        f"{audit_b.expected} planned",
    )
    result.check(
        "B's dead devices end as endpoint_disabled, its others sent",
        all(audit_b.rows.get(d, ("none",))[0] == "endpoint_disabled" for d in dead)
        and audit_b.outcomes.get("sent") == len(audience.targeted) - len(dead),
        f"{audit_b.outcomes}",
    )
    result.check("both counts match their rows", audit_a.counts_match and audit_b.counts_match)


def chaos(runtime: LocalRuntime, size: Size, result: ScenarioResult) -> None:
    """Concurrent sends while every fault above happens at once (each a few times)."""
    n = size.faults_per_send
    faults: list[Fault] = [
        RedisUnavailable(Trigger((FILTER, PUBLISH), skip=5, limit=n)),
        PostgresConnectionDropped(Trigger((RESOLVE,), skip=3, limit=n), at="checkout"),
        PostgresConnectionDropped(Trigger((PUBLISH, RECORD), skip=3, limit=n), at="commit"),
        SnsBursts(bursts=n, burst_length=3, every=4 * size.page_size),
        CrashAfterReturn(Trigger(skip=2, limit=n), PUBLISH, "Lambda.ServiceException"),
    ]
    concurrent_sends(runtime, size, result, faults, exact_caps=False)


SCENARIOS: list[Scenario] = [
    Scenario("baseline", "no fault (control)", baseline),
    Scenario("redis_outage", "Redis unavailable for a while mid-send", redis_outage),
    Scenario(
        "redis_flushed_mid_send",
        "Redis loses all its data while pages are filtered and published",
        redis_flushed_mid_send,
    ),
    Scenario(
        "redis_flushed_between_sends",
        "Redis loses all its data between sends: caps must still hold",
        redis_flushed_between_sends,
    ),
    Scenario(
        "sns_accepts_then_fails",
        "SNS delivers, then answers 5xx or resets (policy per category)",
        sns_accepts_then_fails,
    ),
    Scenario(
        "timeout_mid_page",
        "PublishBatch's time runs out part-way through its pages",
        timeout_mid_page,
    ),
    Scenario(
        "postgres_away_long",
        "PostgreSQL away for three minutes of retries at Prepare and at Finalize",
        postgres_away_long,
    ),
    Scenario(
        "failure_recorder_fails",
        "RecordPageFailure's own connection drops while it records a failed page",
        failure_recorder_fails,
    ),
    Scenario(
        "redis_readonly",
        "READONLY from a demoted Redis primary on the filter and on the settle",
        redis_readonly,
    ),
    Scenario(
        "redis_down_for_good",
        "Redis stays down (policy: fail closed, every category)",
        redis_down_for_good,
    ),
    Scenario(
        "postgres_drop_resolve",
        "PostgreSQL connections dropped during ResolveRecipients",
        postgres_drop_resolve,
    ),
    Scenario(
        "postgres_drop_record",
        "PostgreSQL connections dropped before COMMIT while recording",
        postgres_drop_record,
    ),
    Scenario("sns_bursts", "SNS throttling and 5xx in bursts", sns_bursts),
    Scenario(
        "crash_after_publish_retried",
        "PublishBatch dies after publishing, before answering (retried)",
        crash_after_publish("Lambda.ServiceException"),
    ),
    Scenario(
        "crash_after_publish_timeout",
        "PublishBatch times out after publishing (Lambda.Unknown, not retried)",
        crash_after_publish("Lambda.Unknown"),
    ),
    Scenario(
        "crash_mid_publish",
        "PublishBatch dies between SNS accepting and settling (at most once)",
        crash_mid_publish,
    ),
    Scenario(
        "map_iteration_exhausts",
        "a Map iteration exhausts its retries",
        map_iteration_exhausts,
    ),
    Scenario("concurrency", "20 sends at once, overlapping audiences", concurrency),
    Scenario(
        "concurrency_dead_endpoints",
        "20 sends at once while the first to meet a dead endpoint disables it",
        concurrency_dead_endpoints,
    ),
    Scenario(
        "disabled_after_planning",
        "a device disabled by another send after Prepare planned it",
        disabled_after_planning,
    ),
    Scenario("chaos", "concurrent sends with every fault at once", chaos),
]


def scenario(name: str) -> Scenario:
    for candidate in SCENARIOS:
        if candidate.name == name:
            return candidate
    raise KeyError(f"no scenario {name!r}; known: {', '.join(s.name for s in SCENARIOS)}")
