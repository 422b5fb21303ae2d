"""The steps of a send, one function per state of the state machine.

Each takes the event its state receives and the ports it needs, and returns
what the next state receives. The handlers in `functions/` only wire these
to Lambda; the rules live here.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pushflow.domain.categories import category as lookup_category
from pushflow.domain.content import (
    CompiledContent,
    ContentError,
    RenderedContent,
    compile_content,
    placeholders,
    validate_content,
)
from pushflow.domain.errors import (
    PublishRejectedError,
    ThrottledError,
    TransientStoreError,
    UnfillablePlaceholder,
)
from pushflow.domain.models import (
    DeliveryResult,
    Notification,
    NotificationStatus,
    Outcome,
    PageRef,
    Recipient,
    page_event,
)
from pushflow.domain.paging import page_size_for
from pushflow.domain.payloads import build_sns_message, check_content_fits
from pushflow.domain.ports import (
    NotificationRepository,
    PagePlans,
    PublishMarkers,
    RecipientRules,
    WorkflowStarter,
)
from pushflow.domain.publishing import Publisher, PublishOutcome, PublishStatus, PushMessage

# Standard logging: under the Powertools logger ("pushflow") in the functions.
_log = logging.getLogger(__name__)

# What a publish marker says an earlier attempt of the same page left behind.
PENDING = "pending"
_FAILED_PREFIX = "failed:"
_DISABLED_PREFIX = "disabled:"


def execution_name(notification_id: str) -> str:
    """One execution per notification: starting it twice is a no-op (names are unique)."""
    return f"send-{notification_id}"


def send_audience(notification: Notification) -> dict[str, Any]:
    """The audience as this send reaches it: with the devices disabled since the send
    was created, so that one another send disables between this send's plan and its
    page still ends with a row (endpoint_disabled), not without one."""
    audience = dict(notification.audience)
    if notification.created_at is not None:
        audience["reachable_since"] = notification.created_at
    return audience


# -- API: accepting a send ----------------------------------------------------


def check_request(request: Mapping[str, Any]) -> None:
    """Rules beyond the JSON Schema; raise InvalidRequest naming the field."""
    lookup_category(request["category"])
    validate_content(request["content"])
    check_content_fits(request["content"])


def submit(
    request: Mapping[str, Any],
    repository: NotificationRepository,
    workflow: WorkflowStarter,
    idempotency_key: str | None = None,
) -> tuple[Notification, bool]:
    """Store a validated send and start its execution; idempotent by key.

    Returns (notification, created). Nothing is written unless the request is
    valid; a repeated key with the same request starts nothing new.
    """
    check_request(request)
    notification, created = repository.create_notification(
        request, request["category"], NotificationStatus.ACCEPTED, idempotency_key
    )
    if notification.execution_arn is None:
        # Also on a retry after a start that failed: the name makes it start once.
        arn = workflow.start(execution_name(notification.id), notification.id)
        repository.set_execution(notification.id, arn)
        notification = repository.get_notification(notification.id)
    return notification, created


# -- Prepare ------------------------------------------------------------------


def prepare(
    event: Mapping[str, Any],
    repository: NotificationRepository,
    page_plans: PagePlans,
    configured_page_size: int,
    max_concurrency: int,
    resolve_firing: Callable[[Mapping[str, Any]], tuple[Notification | None, str | None]],
) -> dict[str, Any]:
    """Start a send: find its notification (a firing of a schedule creates its run),
    mark it running and write its page plan. `skip` says there is nothing to send
    (a duplicate firing, a cancelled schedule)."""
    execution_arn = str(event.get("execution_arn") or "")
    notification, skip_reason = resolve_firing(event["firing"])
    summary: dict[str, Any] = {
        "notification_id": notification.id if notification else None,
        "execution_arn": execution_arn,
        "page_count": 0,
        "recipient_count": 0,
        "max_concurrency": max_concurrency,
        "skip": skip_reason is not None,
    }
    if skip_reason is not None:
        summary["skip_reason"] = skip_reason
        return summary
    assert notification is not None
    if notification.status is NotificationStatus.CANCELLED:
        return summary
    page_size = page_size_for(configured_page_size, *_attribute_load(repository, notification))
    repository.start_plan(notification.id)
    pages = repository.plan_pages(send_audience(notification), page_size)
    recipient_count = sum(count for _, count in pages)
    if pages:
        run = execution_arn.rsplit(":", 1)[-1] or "manual"
        summary["page_plan"] = page_plans.write(notification.id, run, [p for p, _ in pages])
    summary.update(page_count=len(pages), recipient_count=recipient_count, page_size=page_size)
    repository.mark_running(notification.id, execution_arn, recipient_count, len(pages))
    return summary


def _attribute_load(
    repository: NotificationRepository, notification: Notification
) -> tuple[int, int]:
    """(bytes, count) of the attributes a page carries; refuses unfillable placeholders.

    A placeholder some recipient has no attribute for is refused here, before
    anything is sent: the send fails with the placeholder and how many lack it.
    """
    keys = sorted(placeholders(notification.content))
    stats = repository.attribute_stats(send_audience(notification), keys)
    if stats.missing:
        missing = ", ".join(f"{{{key}}} for {count}" for key, count in stats.missing.items())
        raise UnfillablePlaceholder(
            f"placeholders no attribute can fill: {missing} recipient(s)", "content"
        )
    return stats.max_bytes, len(keys)


# -- PlanDeferred ---------------------------------------------------------------

# Recipients whose quiet hours end within this window of the earliest are sent
# together, at the latest end among them: at most 96 passes a day, each a few
# events in the parent's history, and never a push inside someone's quiet hours.
DEFERRAL_WINDOW = timedelta(minutes=15)
MAX_DEFERRED_PASSES = 200


def plan_deferred(
    event: Mapping[str, Any],
    repository: NotificationRepository,
    page_plans: PagePlans,
    configured_page_size: int,
) -> dict[str, Any]:
    """Plan the next pass over recipients deferred by quiet hours, and when to send it."""
    notification_id = event["notification_id"]
    deferred_pass = int(event.get("deferred_pass", 0)) + 1
    summary: dict[str, Any] = {
        "notification_id": notification_id,
        "execution_arn": event.get("execution_arn", ""),
        "max_concurrency": event["max_concurrency"],
        "deferred_pass": deferred_pass,
        "page_count": 0,
    }
    repository.close_orphaned_deferrals(notification_id)
    earliest = repository.earliest_deferral(notification_id)
    if earliest is None:
        return summary
    if deferred_pass > MAX_DEFERRED_PASSES:
        repository.fail_deferred(notification_id, "too many deferred passes")
        return summary
    notification = repository.get_notification(notification_id)
    if notification.status is NotificationStatus.CANCELLED:
        repository.cancel_deferred(notification_id)
        return summary
    page_size = page_size_for(configured_page_size, *_attribute_load(repository, notification))
    pages, send_at = repository.plan_deferred_pages(
        notification_id, earliest + DEFERRAL_WINDOW, page_size
    )
    if not pages or send_at is None:
        return summary
    run = f"{str(summary['execution_arn']).rsplit(':', 1)[-1] or 'manual'}/deferred-{deferred_pass}"
    summary.update(
        page_count=len(pages),
        page_plan=page_plans.write(notification_id, run, [page for page, _ in pages]),
        wait_until=_iso(send_at),
    )
    return summary


# -- ResolveRecipients ----------------------------------------------------------


def resolve(event: Mapping[str, Any], repository: NotificationRepository) -> dict[str, Any]:
    # Audience, content and created_at never change: read once per process, not per page.
    notification = repository.get_send(event["notification_id"])
    page = PageRef.from_event(event)
    keys = sorted(placeholders(notification.content))
    audience = send_audience(notification)
    recipients = repository.resolve_page(audience, page, keys, notification.id)
    if page.due is None:
        # Devices planned and deleted since: a `removed` row each, so counts add up.
        removed = repository.removed_since_plan(notification.id, audience, page)
        if removed:
            return page_event(
                notification.id,
                page,
                recipients=recipients,
                filtered=[result.to_dict() for result in removed],
            )
    return page_event(notification.id, page, recipients=recipients)


# -- FilterRecipients -----------------------------------------------------------


def filter_recipients(
    event: Mapping[str, Any],
    repository: NotificationRepository,
    recipient_filter: RecipientRules,
    now: datetime,
) -> dict[str, Any]:
    """Keep the recipients a push may reach now; the others keep their reason."""
    notification = repository.get_notification(event["notification_id"])
    page = PageRef.from_event(event)
    raw_recipients = event["recipients"]
    recipients = [Recipient.from_dict(raw) for raw in raw_recipients]
    if notification.status is NotificationStatus.CANCELLED:
        # Spend no cap and mark nothing seen for a send that will not go out.
        cancelled = [DeliveryResult(r.device_id, r.user_id, Outcome.CANCELLED) for r in recipients]
        return page_event(
            notification.id,
            page,
            recipients=[],
            filtered=[*event.get("filtered", ()), *(r.to_dict() for r in cancelled)],
        )
    mode = notification.request.get("quiet_hours")
    if page.due is not None:
        # A deferred pass sends what quiet hours held back, once they are over
        # (a Wait may wake a moment early): it never defers again.
        mode = "suppress"
        now = max(now, datetime.fromtimestamp(page.due, UTC))
    decision = recipient_filter.apply(
        notification.id,
        page.key(),
        lookup_category(notification.category),
        "defer" if mode == "defer" else "suppress",
        recipients,
        now,
    )
    # What ResolveRecipients settled already (removed devices) goes on with the page.
    filtered = list(event.get("filtered", ()))
    filtered += [r.to_dict() for r in decision.filtered]
    filtered += [
        DeliveryResult(
            r.device_id, r.user_id, Outcome.DEFERRED, deferred_until=_iso(until)
        ).to_dict()
        for r, until in decision.deferred
    ]
    # The eligible go on as they came (what ResolveRecipients built), not rebuilt.
    return page_event(
        notification.id,
        page,
        recipients=[raw_recipients[position] for position in decision.eligible_positions],
        filtered=filtered,
    )


def _iso(moment: datetime) -> str:
    """RFC 3339 in UTC, as Step Functions' Wait state takes it."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- PublishBatch ---------------------------------------------------------------


def _from_marker(recipient: Recipient, marker: str) -> DeliveryResult:
    """The result an earlier attempt of this page already reached for a device."""
    if marker == PENDING:
        # The earlier attempt stopped between claiming and settling: SNS may
        # have delivered. At most once: never push again, record the doubt.
        return DeliveryResult(
            recipient.device_id,
            recipient.user_id,
            Outcome.FAILED,
            error="outcome unknown: an earlier attempt stopped while publishing",
        )
    if marker.startswith(_DISABLED_PREFIX):
        return DeliveryResult(
            recipient.device_id,
            recipient.user_id,
            Outcome.ENDPOINT_DISABLED,
            error=marker.removeprefix(_DISABLED_PREFIX),
        )
    if marker.startswith(_FAILED_PREFIX):
        return DeliveryResult(
            recipient.device_id,
            recipient.user_id,
            Outcome.FAILED,
            error=marker.removeprefix(_FAILED_PREFIX),
        )
    return DeliveryResult(recipient.device_id, recipient.user_id, Outcome.SENT, marker)


def _marker_for(result: DeliveryResult) -> str:
    """What a settled device's marker says, for `_from_marker` to read back."""
    if result.outcome is Outcome.SENT:
        assert result.sns_message_id, "SNS answers a sent push with its message id"
        return result.sns_message_id
    prefix = _DISABLED_PREFIX if result.outcome is Outcome.ENDPOINT_DISABLED else _FAILED_PREFIX
    return f"{prefix}{result.error}"


# What each final answer from SNS becomes. The others release the device for the
# page's retry: THROTTLED and RETRYABLE (not sent), UNKNOWN (may have gone; issue
# 15 decides per category whether to send again), REJECTED (the send cannot work).
_OUTCOME_OF = {
    PublishStatus.SENT: Outcome.SENT,
    PublishStatus.ENDPOINT_DISABLED: Outcome.ENDPOINT_DISABLED,
    PublishStatus.FAILED: Outcome.FAILED,
}


def push_for(content: CompiledContent, recipient: Recipient) -> PushMessage:
    """The push one recipient gets: the content in their language with their
    attributes, as their platform's SNS message. Raises ContentError."""
    return _rendered_push(content, recipient)[0]


def _rendered_push(
    content: CompiledContent, recipient: Recipient
) -> tuple[PushMessage, RenderedContent]:
    rendered = content.render(recipient.locale, recipient.attributes)
    message = build_sns_message(rendered, recipient.platform, recipient.sandbox)  # type: ignore[arg-type]
    push = PushMessage(
        recipient.device_id, recipient.endpoint_arn, message.message, message.message_attributes
    )
    return push, rendered


class _PageWrites:
    """What PublishBatch learns of a page and writes: each device's result, the
    markers to settle in Redis and the rows to record in PostgreSQL.

    Writes go in up to two parts: what is known once the last push is out,
    while its answer is awaited (`write_early`), and the rest (`write_rest`).
    Devices are distinct on a page, so no row or marker is written twice.
    """

    def __init__(
        self,
        notification_id: str,
        page: PageRef,
        repository: NotificationRepository,
        markers: PublishMarkers,
        results: list[DeliveryResult],
    ) -> None:
        self.notification_id = notification_id
        self.page = page
        self.repository = repository
        self.markers = markers
        self.results = results
        self.settled: dict[int, str] = {}
        self.released: list[int] = []
        # Released devices by why: kept apart so a push that may have gone is never
        # counted as one that did not.
        self.released_as: dict[PublishStatus, int] = {}
        self.rejected_codes: set[str] = set()
        # Device id -> why SNS's answer cannot say whether its push went out.
        self.maybe_gone: dict[int, str] = {}
        # Pushed and not answered yet: the recipient behind each push.
        self.awaited: dict[int, Recipient] = {}
        # What each pushed device was shown: (localization key or `default`, title).
        self.shown: dict[int, tuple[str, str]] = {}
        # How much of `results`, `settled` and `released` is written already.
        self._recorded = 0
        self._settled = 0
        self._released = 0

    def pushes(
        self,
        recipients: Sequence[Mapping[str, Any]],
        claims: Mapping[int, str | None],
        content: CompiledContent,
    ) -> Iterator[PushMessage]:
        """The page's pushes, built as the publisher takes them: past the first
        few, while the pushes before them are in flight."""
        for raw in recipients:
            recipient = Recipient.from_dict(raw)
            earlier = claims[recipient.device_id]
            if earlier is not None:
                self.results.append(_from_marker(recipient, earlier))
                continue
            try:
                push, rendered = _rendered_push(content, recipient)
            except ContentError as error:
                self._settle_as(recipient, Outcome.FAILED, error=error.message)
                continue
            self.awaited[recipient.device_id] = recipient
            self.shown[recipient.device_id] = (rendered.locale_used or "default", rendered.title)
            yield push

    def take(self, outcomes: Iterable[PublishOutcome]) -> None:
        """Answers from SNS; ones taken already (handed over early) are skipped."""
        for outcome in outcomes:
            recipient = self.awaited.pop(outcome.device_id, None)
            if recipient is None:
                continue
            final = _OUTCOME_OF.get(outcome.status)
            if final is None:
                self.released.append(recipient.device_id)
                self.released_as[outcome.status] = self.released_as.get(outcome.status, 0) + 1
                if outcome.status is PublishStatus.REJECTED:
                    self.rejected_codes.add(outcome.error or "rejected")
                if outcome.status is PublishStatus.UNKNOWN:
                    self.maybe_gone[recipient.device_id] = outcome.error or "unknown"
            else:
                self._settle_as(recipient, final, outcome.message_id, outcome.error)

    def _settle_as(
        self,
        recipient: Recipient,
        outcome: Outcome,
        message_id: str | None = None,
        error: str | None = None,
    ) -> None:
        content_locale, title = self.shown.get(recipient.device_id, (None, None))
        result = DeliveryResult(
            recipient.device_id,
            recipient.user_id,
            outcome,
            message_id,
            error,
            content_locale=content_locale,
            title=title,
        )
        self.settled[recipient.device_id] = _marker_for(result)
        self.results.append(result)

    def _settle(self) -> None:
        settled = dict(itertools.islice(self.settled.items(), self._settled, None))
        released = self.released[self._released :]
        if settled or released:
            self.markers.settle(self.notification_id, self.page.key(), settled, released)
        self._settled += len(settled)
        self._released += len(released)

    def _record(self) -> None:
        results = self.results[self._recorded :]
        self.repository.record_deliveries(self.notification_id, self.page.number, results)
        self._recorded += len(results)

    def write_early(self, outcomes: list[PublishOutcome]) -> None:
        """Settle and record what came so far while the last pushes are in flight.
        Nothing is raised: whatever fails here is written again by `write_rest`,
        where its error is raised as it would have been without this part."""
        self.take(outcomes)
        try:
            self._settle()
            self._record()
        except Exception:
            _log.warning("early write of a page failed; it goes again with the rest", exc_info=True)

    def write_rest(self) -> None:
        """Settle and record what is not written yet; durable before the function answers."""
        try:
            self._settle()
        except TransientStoreError:
            # Redis went away after SNS took the pushes: without these rows the retry
            # would find the markers still pending and record "outcome unknown" for
            # pushes that did go out. Record what is known, then retry the page.
            self._record()
            raise
        self._record()


def publish(
    event: Mapping[str, Any],
    repository: NotificationRepository,
    markers: PublishMarkers,
    publisher: Publisher,
) -> dict[str, Any]:
    """Publish a page once per device, whatever retries happen.

    Each device is claimed in Redis before its push and settled after, and the
    page's rows are written to PostgreSQL before the function answers (what
    came before the last wave of pushes while that wave is in flight). On
    throttling or an SNS 5xx, ThrottledError is raised after that: the ASL
    retries the page, and the retry pushes only the devices that were released.
    When SNS refuses the send itself (credentials, authorization, a disabled
    platform application), PublishRejectedError is raised instead, after the
    same writes: no device gets a row for a refusal that is not its own.
    """
    notification = repository.get_notification(event["notification_id"])
    page = PageRef.from_event(event)
    recipients: Sequence[Mapping[str, Any]] = event["recipients"]
    results = [DeliveryResult.from_dict(raw) for raw in event.get("filtered", ())]

    if notification.status is NotificationStatus.CANCELLED:
        results += [
            DeliveryResult(int(raw["device_id"]), int(raw["user_id"]), Outcome.CANCELLED)
            for raw in recipients
        ]
    if notification.status is NotificationStatus.CANCELLED or not recipients:
        return _unrecorded(notification.id, page, results)

    device_ids = [int(raw["device_id"]) for raw in recipients]
    claims = markers.claim(notification.id, page.key(), device_ids)
    content = compile_content(notification.content)
    writes = _PageWrites(notification.id, page, repository, markers, results)
    writes.take(publisher.publish(writes.pushes(recipients, claims, content), writes.write_early))
    # Durable before answering, and before asking for a retry: a function that
    # times out (`Sandbox.Timedout`) or dies (`Lambda.Unknown`) from here on is
    # retried; once its retries are spent, RecordPageFailure writes `failed`
    # only for devices without a row. RecordResults then has nothing left to write.
    writes.write_rest()
    if writes.maybe_gone:
        _log.warning(
            "%d pushes may have gone (%s): released for the page's retry; devices %s",
            len(writes.maybe_gone),
            ", ".join(sorted(set(writes.maybe_gone.values()))),
            sorted(writes.maybe_gone)[:20],
        )
    released = ", ".join(f"{count} {kind.value}" for kind, count in writes.released_as.items())
    if PublishStatus.REJECTED in writes.released_as:
        # Not a device's failure: no row for the refused devices; the ASL retries a
        # little, then fails the page as an error.
        raise PublishRejectedError(
            f"SNS refused the send ({_rejection(writes)}); of {len(recipients)} pushes:"
            f" {released}; {len(writes.settled)} settled and recorded"
        )
    if writes.released:
        raise ThrottledError(
            f"{len(writes.released)} of {len(recipients)} pushes not settled ({released});"
            f" {len(writes.settled)} settled and recorded, the rest is retried"
        )
    # The rows are in PostgreSQL: the answer says how the page went, not how each
    # device did (Step Functions carries and copies every state's data).
    return page_event(notification.id, page, recorded=True, outcomes=outcome_totals(results))


def _rejection(writes: _PageWrites) -> str:
    return ", ".join(sorted(writes.rejected_codes)) or "rejected"


def _unrecorded(
    notification_id: str, page: PageRef, results: list[DeliveryResult]
) -> dict[str, Any]:
    """A page PublishBatch pushed nothing for: its rows go to RecordResults."""
    return page_event(
        notification_id,
        page,
        recorded=False,
        outcomes=outcome_totals(results),
        results=[r.to_dict() for r in results],
    )


# -- RecordResults / RecordPageFailure / Finalize -------------------------------


def record(event: Mapping[str, Any], repository: NotificationRepository) -> dict[str, Any]:
    """Write the page's rows, unless PublishBatch made them durable already (`recorded`):
    it does whenever it pushed, so that no row is written twice. Pages it pushed
    nothing for (all filtered, or cancelled) are written here."""
    page = PageRef.from_event(event)
    if event.get("recorded") is True:
        return page_event(event["notification_id"], page, recorded=0)
    results = [DeliveryResult.from_dict(raw) for raw in event["results"]]
    inserted = repository.record_deliveries(event["notification_id"], page.number, results)
    return page_event(event["notification_id"], page, recorded=inserted)


def describe_error(error: Mapping[str, Any] | None) -> str:
    if not error:
        return "unknown error"
    cause = str(error.get("Cause") or "")
    try:
        import json

        parsed = json.loads(cause)
        if isinstance(parsed, dict):
            cause = str(parsed.get("errorMessage") or cause)
    except ValueError:
        pass
    return f"{error.get('Error', 'Error')}: {cause}"[:1000]


def record_page_failure(
    event: Mapping[str, Any], repository: NotificationRepository
) -> dict[str, Any]:
    notification = repository.get_notification(event["notification_id"])
    page = PageRef.from_event(event)
    audience = send_audience(notification)
    if page.due is None:
        # Removed devices first: their row says removed, not failed.
        repository.record_removed_in_page(notification.id, audience, page)
    failed = repository.record_page_failure(
        notification.id, audience, page, describe_error(event.get("error"))
    )
    return page_event(notification.id, page, failed=failed)


def final_status(notification: Notification, counts: Mapping[str, int]) -> NotificationStatus:
    if notification.status is NotificationStatus.CANCELLED:
        return NotificationStatus.CANCELLED
    failed = counts.get(Outcome.FAILED.value, 0)
    total = sum(counts.values())
    if failed and failed == total:
        return NotificationStatus.FAILED
    if failed:
        return NotificationStatus.COMPLETED_WITH_FAILURES
    return NotificationStatus.COMPLETED


def finalize(event: Mapping[str, Any], repository: NotificationRepository) -> Notification | None:
    """Count the outcomes and set the final status; None when the execution failed
    before it had a notification (a schedule's firing that could not create its run)."""
    if not event.get("notification_id"):
        return None
    notification = repository.get_notification(event["notification_id"])
    if event.get("error"):
        finished = repository.finish(
            notification.id, NotificationStatus.FAILED, describe_error(event["error"])
        )
    else:
        counts = repository.outcome_counts(notification.id)
        finished = repository.finish(notification.id, final_status(notification, counts))
    if finished.schedule_id:
        repository.complete_schedule(finished.schedule_id)
    return finished


def outcome_totals(results: Sequence[DeliveryResult]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for result in results:
        totals[result.outcome.value] = totals.get(result.outcome.value, 0) + 1
    return totals
