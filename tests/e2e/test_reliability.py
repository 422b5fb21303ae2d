"""The fault suite, small: each fault injected into a real send, then counted.

The same scenarios `make reliability` runs at full size (`reliability/`), here
at the tests' size on the session's runtime (Retry sleeps scaled to zero, so
a Redis outage is measured in calls rather than seconds). Each test runs one
scenario and asserts the invariants (nothing duplicated, nothing lost, counts
that match the rows) and what that fault must lead to.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pushflow.domain.publishing import EarlyOutcomes, PublishOutcome, PushMessage
from pushflow_local.runtime import LocalRuntime
from reliability.faults import CrashWhilePublishing, Fault, Trigger, patched, settings_changed
from reliability.scenarios import (
    SMALL,
    ScenarioResult,
    Size,
    one_send,
    run_scenario,
    scenario,
)
from reliability.suite import COLUMNS, results_document, table, write_results

pytestmark = pytest.mark.e2e


def run(runtime: LocalRuntime, name: str, size: Size = SMALL) -> ScenarioResult:
    result = run_scenario(runtime, scenario(name), size)
    assert result.error is None, result.error
    assert result.sends >= 1 and result.expected > 0
    assert result.duplicated == 0, [a.problems for a in result.audits]
    assert result.lost == 0, [a.problems for a in result.audits]
    assert result.recorded == result.expected
    failed = [(c.what, c.detail) for c in result.checks if not c.ok]
    assert not failed, failed
    assert result.passed
    return result


# -- no fault, then one fault at a time --------------------------------------------------------


def test_without_faults_every_device_is_sent_once(clean_runtime: LocalRuntime) -> None:
    result = run(clean_runtime, "baseline")

    assert result.injected == 0
    assert result.outcomes == {"sent": result.expected}
    assert result.misrecorded == result.unknown == 0


def test_redis_unavailable_mid_send_is_retried_and_the_send_completes(
    clean_runtime: LocalRuntime,
) -> None:
    result = run(clean_runtime, "redis_outage")

    assert result.injected == SMALL.faults_per_send
    assert result.outcomes == {"sent": result.expected}
    assert result.misrecorded == result.unknown == 0


def test_redis_flushed_mid_send_pushes_nobody_twice(clean_runtime: LocalRuntime) -> None:
    result = run(clean_runtime, "redis_flushed_mid_send")

    assert result.injected == SMALL.faults_per_send
    assert result.outcomes == {"sent": result.expected}
    assert result.unknown == 0


def test_caps_hold_when_redis_lost_its_data_between_sends(clean_runtime: LocalRuntime) -> None:
    result = run(clean_runtime, "redis_flushed_between_sends")

    assert result.injected == 1
    assert result.audits[-1].outcomes == {"capped": result.audits[-1].expected}


def test_readonly_from_a_demoted_redis_loses_and_doubles_nothing(
    clean_runtime: LocalRuntime,
) -> None:
    result = run(clean_runtime, "redis_readonly")

    assert result.injected >= SMALL.faults_per_send
    assert set(result.outcomes) <= {"sent", "unknown"}


def test_sns_accepting_then_failing_follows_each_categorys_policy(
    clean_runtime: LocalRuntime,
) -> None:
    result = run(clean_runtime, "sns_accepts_then_fails")

    assert result.injected == 4 * SMALL.faults_per_send
    # Two news sends: each ambiguous push recorded unknown, never pushed again.
    assert result.unknown == 2 * SMALL.faults_per_send
    # Two transactional sends: each ambiguous push went again, under its collapse id.
    assert result.collapsed == 2 * SMALL.faults_per_send


def test_a_publish_running_out_of_time_stops_and_its_retry_pushes_the_rest(
    clean_runtime: LocalRuntime,
) -> None:
    result = run(clean_runtime, "timeout_mid_page")

    assert result.outcomes == {"sent": result.expected}
    assert result.unknown == 0


def test_postgres_away_three_minutes_at_prepare_and_finalize_still_ends_the_send(
    clean_runtime: LocalRuntime,
) -> None:
    result = run(clean_runtime, "postgres_away_long")

    assert result.outcomes == {"sent": result.expected}
    assert result.unfinished == 0


def test_a_failure_recorder_that_fails_still_records_the_page(
    clean_runtime: LocalRuntime,
) -> None:
    result = run(clean_runtime, "failure_recorder_fails")

    assert result.outcomes == {
        "sent": result.expected - SMALL.page_size,
        "failed": SMALL.page_size,
    }


def test_redis_down_for_good_fails_every_category_closed(clean_runtime: LocalRuntime) -> None:
    result = run(clean_runtime, "redis_down_for_good")

    # Marketing and transactional alike: every device failed, nothing pushed.
    assert result.sends == 2
    assert result.outcomes == {"failed": result.expected}
    assert all(audit.status == "failed" for audit in result.audits)
    assert not any(copies for audit in result.audits for copies in audit.messages.values())


def test_postgres_connections_dropped_during_resolve_are_retried(
    clean_runtime: LocalRuntime,
) -> None:
    result = run(clean_runtime, "postgres_drop_resolve")

    assert result.injected == SMALL.faults_per_send
    assert result.outcomes == {"sent": result.expected}
    assert len(clean_runtime.failures["ResolveRecipientsFunction"]) == result.injected


def test_postgres_connections_dropped_before_commit_while_recording_lose_no_row(
    clean_runtime: LocalRuntime,
) -> None:
    result = run(clean_runtime, "postgres_drop_record")

    assert result.injected == SMALL.faults_per_send
    assert result.outcomes == {"sent": result.expected}


def test_sns_throttling_and_5xx_bursts_push_each_device_once(
    clean_runtime: LocalRuntime,
) -> None:
    result = run(clean_runtime, "sns_bursts")

    assert result.injected >= 9
    # News is at most once: a 5xx (which may hide a delivery) is recorded unknown.
    assert set(result.outcomes) <= {"sent", "unknown"}
    assert result.outcomes.get("unknown", 0) == result.unknown
    assert clean_runtime.failures["PublishBatchFunction"]


def test_a_publish_retried_after_it_died_records_what_was_sent_and_resends_nothing(
    clean_runtime: LocalRuntime,
) -> None:
    result = run(clean_runtime, "crash_after_publish_retried")

    assert result.injected == SMALL.faults_per_send
    assert result.outcomes == {"sent": result.expected}
    assert result.misrecorded == result.unknown == 0


def test_a_publish_that_timed_out_after_publishing_keeps_its_sent_rows(
    clean_runtime: LocalRuntime,
) -> None:
    # Lambda.Unknown is not retried: the Catch records the page, and must not
    # turn pushes that went out into `failed`.
    result = run(clean_runtime, "crash_after_publish_timeout")

    assert result.injected == SMALL.faults_per_send
    assert result.outcomes == {"sent": result.expected}
    assert result.misrecorded == 0


def test_a_publish_that_died_between_sns_and_settling_is_at_most_once(
    clean_runtime: LocalRuntime,
) -> None:
    result = run(clean_runtime, "crash_mid_publish")

    # The crashed pages' devices got their push once and are recorded as doubtful.
    crashed_pages = result.injected
    assert crashed_pages == SMALL.faults_per_send
    assert result.unknown == crashed_pages * SMALL.page_size
    assert result.outcomes == {
        "sent": result.expected - result.unknown,
        "unknown": result.unknown,
    }


def test_a_map_iteration_that_exhausts_its_retries_is_recorded_failed(
    clean_runtime: LocalRuntime,
) -> None:
    result = run(clean_runtime, "map_iteration_exhausts")

    assert result.outcomes == {
        "sent": result.expected - SMALL.page_size,
        "failed": SMALL.page_size,
    }


def test_a_publish_that_timed_out_mid_publish_records_no_false_failure(
    clean_runtime: LocalRuntime,
) -> None:
    result = ScenarioResult("timeout_mid_publish", "PublishBatch times out mid-publish")
    crash = CrashWhilePublishing(Trigger(once_per_page=True, limit=1), "Lambda.Unknown")

    with settings_changed(clean_runtime, page_size=SMALL.page_size):
        _, audit = one_send(clean_runtime, SMALL, result, [crash])

    assert crash.injected == 1
    assert audit.duplicated == audit.lost == 0  # at most once holds either way
    assert audit.misrecorded == 0, audit.problems


def test_a_device_another_send_disables_after_planning_keeps_its_row(
    clean_runtime: LocalRuntime,
) -> None:
    result = run(clean_runtime, "disabled_after_planning")

    # Send B planned all devices; the dead ones, disabled by A meanwhile, end as
    # endpoint_disabled (before the fix they had no row at all).
    first, second = result.audits
    assert second.expected == first.expected
    assert second.outcomes["endpoint_disabled"] == first.outcomes["endpoint_disabled"] > 0


# -- concurrency ------------------------------------------------------------------------------


def test_twenty_sends_at_once_keep_caps_and_lose_or_double_nothing(
    clean_runtime: LocalRuntime,
) -> None:
    result = run(clean_runtime, "concurrency")

    assert result.sends == SMALL.concurrent_sends
    assert set(result.outcomes) <= {"sent", "capped"}
    assert result.outcomes["capped"] > 0  # the caps did bind


def test_concurrent_sends_with_every_fault_at_once_lose_or_double_nothing(
    clean_runtime: LocalRuntime,
) -> None:
    result = run(clean_runtime, "chaos")

    assert result.injected > 0
    assert result.sends == SMALL.concurrent_sends


# -- the suite's own counting -------------------------------------------------------------------


class DoublePush(Fault):
    """A broken publisher that pushes every message twice: the audit must see it."""

    name = "publisher pushes twice"

    def install(self, runtime: LocalRuntime, stack: contextlib.ExitStack) -> None:
        publisher: Any = runtime.services.publisher
        original = publisher.publish

        def publish(
            pushes: Iterable[PushMessage], early: EarlyOutcomes | None = None
        ) -> list[PublishOutcome]:
            pushes = list(pushes)
            if pushes:
                self.trigger.fired += 1
                original(pushes)
            outcomes: list[PublishOutcome] = original(pushes, early)
            return outcomes

        stack.enter_context(patched(publisher, "publish", publish))


def test_the_audit_counts_a_double_push_and_a_lost_row(clean_runtime: LocalRuntime) -> None:
    result = ScenarioResult("broken", "a publisher that pushes twice, a row deleted")

    audience, audit = one_send(clean_runtime, SMALL, result, [DoublePush(Trigger())])

    assert audit.duplicated == audit.expected
    assert not result.passed
    victim = min(audience.targeted)
    clean_runtime.services.repository.run("DELETE FROM deliveries WHERE device_id = :id", id=victim)
    from reliability.audit import audit_send

    again = audit_send(
        clean_runtime,
        clean_runtime.services.repository.get_notification(audit.notification_id),
        "SUCCEEDED",
        audience.targeted,
        audit.tag,
    )
    assert again.lost == 1
    assert not again.counts_match


def test_the_table_and_results_document(clean_runtime: LocalRuntime, tmp_path: Path) -> None:
    results = [run(clean_runtime, "baseline")]

    text = table(results)
    document = results_document(results, SMALL, 0.0, 1.0)
    path = tmp_path / "results.json"
    write_results(document, path)

    header, _, first, _, total = text.splitlines()
    for column in ("faults injected", "sends run", "deliveries expected", "recorded"):
        assert column in header
    assert first.split()[0] == "baseline" and total.split()[0] == "total"
    stored = json.loads(path.read_text())
    assert stored["passed"] is True
    assert stored["totals"]["duplicated"] == stored["totals"]["lost"] == 0
    assert stored["totals"]["deliveries_expected"] == results[0].expected
    assert [row["scenario"] for row in stored["table"]] == ["baseline"]
    assert set(stored["table"][0]) == set(COLUMNS)


@pytest.fixture(autouse=True)
def _no_fault_left_behind(runtime: LocalRuntime) -> Iterator[None]:
    """Every fault patches instances only, and undoes it: nothing may stay wrapped."""
    services = runtime.services
    settings = services.settings
    yield
    patched_attributes = [
        (services.repository, "_session"),
        (services.repository, "transaction"),
        (services.store, "claim"),
        (services.store, "settle"),
        (services.store.client, "execute_command"),
        (services.store.client, "pipeline"),
        (services.publisher, "publish"),
        *((function, "invoke") for function in runtime.functions.values()),
    ]
    leftovers = [
        f"{type(target).__name__}.{name}"
        for target, name in patched_attributes
        if target is not None and name in vars(target)
    ]
    assert not leftovers, leftovers
    assert services.settings is settings
    assert runtime.sns is not None and runtime.sns.faults == []  # SNS faults removed too
