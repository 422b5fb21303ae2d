"""The console (`/console` on `pushflow local serve`), in headless Chromium.

The browser is the system's Chromium package (CI installs it), driven by
Playwright; without it these tests fail, they do not skip. One browser for the
module. Each screen's screenshot is saved under `.pushflow/console-screenshots/`.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from pushflow.domain.errors import TransientDatabaseError
from pushflow_local.auth import LocalCredentials, load_credentials
from pushflow_local.runtime import REPO_ROOT, LocalRuntime
from pushflow_local.seed import SeedUser, seed_users
from pushflow_local.server import LocalApiServer

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

WAIT_SECONDS = 60
PAGE_WAIT_SECONDS = 15
SCREENSHOTS = REPO_ROOT / ".pushflow" / "console-screenshots"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# The console's palette (console.css): what a status or an outcome looks like.
SUCCEEDED_FILL = "rgb(46, 157, 87)"
NOT_RUN_FILL = "rgb(152, 162, 179)"
CAUGHT_FILL = "rgb(224, 138, 0)"


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> LocalCredentials:
    return load_credentials(tmp_path_factory.mktemp("auth") / "local-auth.json")


@pytest.fixture(scope="module")
def api(runtime: LocalRuntime, credentials: LocalCredentials) -> Iterator[LocalApiServer]:
    with LocalApiServer(
        runtime, port=0, credentials=credentials, quiet=True, console=True
    ) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("no `chromium` on PATH: install the system package (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    opened = context.new_page()
    opened.set_default_timeout(PAGE_WAIT_SECONDS * 1000)
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    yield opened
    context.close()
    # A script error on any screen fails the test that showed it.
    assert errors == []


def console_url(api: LocalApiServer) -> str:
    return api.url.rsplit("/", 1)[0] + "/console/"


def call(api: LocalApiServer, method: str, path: str, body: Any = None, **headers: str) -> Any:
    request = urllib.request.Request(
        api.url + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "x-api-key": api.api_key, **headers},
        method=method,
    )
    with urllib.request.urlopen(request, timeout=WAIT_SECONDS) as answer:
        return json.loads(answer.read())


def status_of(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=WAIT_SECONDS) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def finished_send(api: LocalApiServer, notification_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        send: dict[str, Any] = call(api, "GET", f"/v1/notifications/{notification_id}")
        if send["status"] not in ("accepted", "running"):
            return send
        time.sleep(0.2)
    raise AssertionError(f"send {notification_id} did not finish in {WAIT_SECONDS} s")


def screenshot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000, f"the {name} screenshot is blank"
    return path


@pytest.fixture(scope="module")
def finished(api: LocalApiServer, runtime: LocalRuntime) -> dict[str, Any]:
    """A real send through the gateway to 40 users (ios and android), finished."""
    from pushflow_local.seed import reset_data

    reset_data(runtime)
    users = [
        SeedUser(
            f"console-{i:03d}",
            locale="de-AT" if i % 4 == 0 else "en",
            devices=[("ios", False)] if i % 2 else [("android", False)],
        )
        for i in range(40)
    ]
    seed_users(runtime, users)
    accepted = call(
        api,
        "POST",
        "/v1/notifications",
        {
            "category": "news",
            "audience": {"type": "all"},
            "content": {
                "title": "Console check",
                "body": "Seen in a browser",
                "localizations": {"de": {"title": "Konsolenprobe", "body": "Im Browser"}},
            },
        },
        **{"Idempotency-Key": "console-send-1"},
    )
    return finished_send(api, accepted["notification_id"])


# -- the API the console reads (no browser) --------------------------------------------------


def test_the_console_reads_the_api_with_its_own_key_the_api_still_wants_one(
    api: LocalApiServer, finished: dict[str, Any]
) -> None:
    base = console_url(api)
    status, listed = status_of(base + "api/v1/notifications?limit=5")
    assert status == 200
    assert [n["notification_id"] for n in listed["notifications"]] == [finished["notification_id"]]

    status, _ = status_of(api.url + "/v1/notifications")
    assert status == 401  # no key: the gateway refuses; the console's key stays server-side


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("status=done", "status"),
        ("category=spam", "category"),
        ("limit=0", "limit"),
        ("limit=many", "limit"),
        ("cursor=not-a-cursor", "cursor"),
    ],
)
def test_the_sends_list_names_a_bad_parameter(
    api: LocalApiServer, finished: dict[str, Any], query: str, parameter: str
) -> None:
    status, answer = status_of(console_url(api) + f"api/v1/notifications?{query}")
    assert status == 400
    assert answer["field"] == parameter


def test_deliveries_filter_by_outcome_and_platform(
    api: LocalApiServer, finished: dict[str, Any]
) -> None:
    notification = finished["notification_id"]
    base = console_url(api) + f"api/v1/notifications/{notification}/deliveries"
    _, android = status_of(base + "?platform=android&limit=1000")
    _, ios_sent = status_of(base + "?platform=ios&outcome=sent&limit=1000")
    assert {d["platform"] for d in android["deliveries"]} == {"android"}
    assert len(android["deliveries"]) == 20
    assert {(d["platform"], d["outcome"]) for d in ios_sent["deliveries"]} == {("ios", "sent")}
    assert len(ios_sent["deliveries"]) == 20
    status, refused = status_of(base + "?outcome=delivered")
    assert (status, refused["field"]) == (400, "outcome")


def test_the_execution_view_tells_each_state_and_the_pages(
    api: LocalApiServer, finished: dict[str, Any]
) -> None:
    notification = finished["notification_id"]
    status, view = status_of(console_url(api) + f"api/v1/notifications/{notification}/execution")
    assert status == 200
    assert view["execution"]["status"] == "SUCCEEDED"
    assert {name: state["status"] for name, state in view["states"].items()} == {
        "Prepare": "succeeded",
        "ShouldSend": "succeeded",
        "HasRecipients": "succeeded",
        "FanOut": "succeeded",
        "PlanDeferred": "succeeded",
        "HasDeferred": "succeeded",
        "Finalize": "succeeded",
    }
    assert sum(sum(page["counts"].values()) for page in view["pages"]) == 40
    (map_run,) = view["map_runs"]
    assert map_run["status"] == "SUCCEEDED"
    # One page, so one child execution, listed by its Map Run with its own states.
    (child,) = map_run["children"]
    assert child["status"] == "SUCCEEDED"
    assert child["executionArn"].startswith(
        map_run["map_run_arn"].replace(":mapRun:", ":execution:").rsplit(":", 1)[0]
    )
    assert {name: state["status"] for name, state in child["states"].items()} == {
        "ResolveRecipients": "succeeded",
        "FilterRecipients": "succeeded",
        "PublishBatch": "succeeded",
        "RecordResults": "succeeded",
    }


# -- in the browser ------------------------------------------------------------------------------


def test_sends_list_shows_the_send_with_its_status(
    api: LocalApiServer, finished: dict[str, Any], page: Any
) -> None:
    page.goto(console_url(api) + "#/sends")
    row = page.locator(f"#sends tr[data-id='{finished['notification_id']}']")
    row.wait_for()
    assert "Console check" in row.inner_text()
    assert row.locator(".badge").inner_text() == finished["status"] == "completed"
    screenshot(page, "sends")


def test_a_send_shows_the_graph_coloured_by_status_and_the_counts(
    api: LocalApiServer, finished: dict[str, Any], page: Any
) -> None:
    page.goto(console_url(api) + f"#/sends/{finished['notification_id']}")
    graph = page.locator("#graph")
    graph.locator("[data-state='Finalize'][data-status='succeeded']").wait_for()

    def state(name: str, scope: str = "") -> Any:
        return graph.locator(f"g.state[data-state='{name}'][data-scope='{scope}']")

    # The states this execution went through, and those it did not, from the real ASL.
    for name in ("Prepare", "ShouldSend", "HasRecipients", "FanOut", "Finalize"):
        assert state(name).get_attribute("data-status") == "succeeded", name
        fill = state(name).locator("rect.box").evaluate("r => getComputedStyle(r).fill")
        assert fill == SUCCEEDED_FILL, name
    for name in ("NothingToSend", "RecordSendFailure", "SendFailed"):
        assert state(name).get_attribute("data-status") == "notrun", name
        fill = state(name).locator("rect.box").evaluate("r => getComputedStyle(r).fill")
        assert fill == NOT_RUN_FILL, name
    # The Map's processor is drawn inside FanOut, coloured from its child executions.
    for name in ("ResolveRecipients", "FilterRecipients", "PublishBatch", "RecordResults"):
        assert state(name, "FanOut").get_attribute("data-status") == "succeeded", name
    for name in ("RecordPageFailure", "PageRejected"):
        assert state(name, "FanOut").get_attribute("data-status") == "notrun", name

    counts = finished["counts"]
    assert counts["sent"] == 40
    sent = page.locator("#counts-chart [data-outcome='sent'] .count").inner_text()
    assert sent.replace(",", "") == str(counts["sent"])
    assert "40 of 40 devices" in page.locator("#counts-chart").inner_text()

    # A state is usable from the keyboard: focus it, Enter, its status shows.
    state("Prepare").focus()
    page.keyboard.press("Enter")
    assert "Prepare" in page.locator("#selected-state").inner_text()
    screenshot(page, "send")


def test_deliveries_show_a_devices_result_and_link_to_its_user(
    api: LocalApiServer, finished: dict[str, Any], page: Any
) -> None:
    notification = finished["notification_id"]
    expected = call(api, "GET", f"/v1/notifications/{notification}/deliveries?platform=ios")
    device = expected["deliveries"][0]

    page.goto(console_url(api) + f"#/sends/{notification}/deliveries?platform=ios")
    row = page.locator(f"#deliveries tr[data-device='{device['device_id']}']")
    row.wait_for()
    text = row.inner_text()
    assert device["user_external_id"] in text
    assert device["sns_message_id"] in text
    assert "sent" in text
    platforms = page.locator("#deliveries tbody td:nth-child(3)").all_inner_texts()
    assert set(platforms) == {"ios"}
    link = row.locator("a")
    assert link.get_attribute("href") == f"#/users/{device['user_external_id']}"
    screenshot(page, "deliveries")


def test_deliveries_tell_the_variant_and_title_each_user_got(
    api: LocalApiServer, finished: dict[str, Any]
) -> None:
    notification = finished["notification_id"]
    page = call(api, "GET", f"/v1/notifications/{notification}/deliveries?limit=1000")
    got = {d["user_external_id"]: (d["content_locale"], d["title"]) for d in page["deliveries"]}

    assert got["console-000"] == ("de", "Konsolenprobe")  # de-AT falls back to de
    assert got["console-001"] == ("default", "Console check")


def test_a_user_shows_devices_preferences_caps_and_recent_deliveries(
    api: LocalApiServer, finished: dict[str, Any], page: Any
) -> None:
    # GIVEN console-004 (de-AT, android) got the news send, then chose quiet hours
    user = "console-004"
    answer = urllib.request.urlopen(  # the app's own route, with the user's token
        urllib.request.Request(
            api.url + "/v1/me/preferences",
            data=json.dumps(
                {
                    "opted_out_categories": ["marketing"],
                    "quiet_hours": {"start": "22:00", "end": "07:00"},
                }
            ).encode(),
            headers={"Content-Type": "application/json", "Authorization": api.mint_token(user)},
            method="PUT",
        ),
        timeout=WAIT_SECONDS,
    )
    assert answer.status == 200
    view = call(api, "GET", f"/v1/users/{user}")
    assert view["cap_usage"]["news"] == {"used": 1, "cap": 3}
    assert view["cap_usage"]["marketing"] == {"used": 0, "cap": 2}
    (delivery,) = view["recent_deliveries"]
    assert (delivery["notification_id"], delivery["outcome"]) == (
        finished["notification_id"],
        "sent",
    )
    assert (delivery["content_locale"], delivery["title"]) == ("de", "Konsolenprobe")

    # WHEN an operator opens the user from a delivery's link
    page.goto(console_url(api) + f"#/sends/{finished['notification_id']}/deliveries")
    page.locator(f"#deliveries a[href='#/users/{user}']").click()

    # THEN the page shows what the API says
    page.locator("#profile").wait_for()
    assert page.locator("#quiet-hours").inner_text().startswith("22:00\u201307:00")
    assert page.locator("#opted-out").inner_text() == "marketing"
    assert page.locator("#caps tr[data-category='news'] td.num").inner_text() == "1 / 3"
    assert page.locator("#devices tbody tr").count() == len(view["devices"]) == 1
    recent = page.locator(
        f"#recent-deliveries tr[data-notification='{delivery['notification_id']}']"
    )
    assert "Konsolenprobe" in recent.inner_text()
    assert delivery["sns_message_id"] in recent.inner_text()
    screenshot(page, "user")


def test_an_unknown_user_is_a_404(api: LocalApiServer, finished: dict[str, Any]) -> None:
    status, answer = status_of(console_url(api) + "api/v1/users/nobody-here")
    assert (status, answer["error"]) == (404, "not_found")


# Last: these sends come after the ones the tests above count.


def test_a_page_that_keeps_failing_shows_its_retries_and_the_catch(
    api: LocalApiServer,
    runtime: LocalRuntime,
    finished: dict[str, Any],
    page: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a send whose one page cannot be read: every attempt loses its connection
    seed_users(runtime, [SeedUser(f"failing-{i}") for i in range(3)])

    def lost_connection(*args: Any, **kwargs: Any) -> Any:
        raise TransientDatabaseError("the page read lost its connection")

    monkeypatch.setattr(runtime.services.repository, "resolve_page", lost_connection)
    accepted = call(
        api,
        "POST",
        "/v1/notifications",
        {
            "category": "news",
            "audience": {"type": "users", "external_ids": [f"failing-{i}" for i in range(3)]},
            "content": {"title": "Doomed page", "body": "Never read"},
        },
    )
    send = finished_send(api, accepted["notification_id"])
    monkeypatch.undo()
    assert send["counts"] == {"failed": 6}  # two devices each

    # THEN the API tells the page's child: the read retried, then caught
    view = call(api, "GET", f"/v1/notifications/{send['notification_id']}/execution")
    (child,) = view["map_runs"][0]["children"]
    resolve = child["states"]["ResolveRecipients"]
    assert resolve["status"] == "caught"
    assert resolve["retries"] >= 1
    assert resolve["error"]["error"] == "TransientDatabaseError"
    assert child["states"]["RecordPageFailure"]["status"] == "succeeded"

    # AND the page shows it: the state orange with its retries, the catch's target run
    page.goto(console_url(api) + f"#/sends/{send['notification_id']}")
    caught = page.locator("#graph g.state[data-state='ResolveRecipients'][data-scope='FanOut']")
    page.locator("#graph g.state[data-state='Finalize'][data-status='succeeded']").wait_for()
    assert caught.get_attribute("data-status") == "caught"
    fill = caught.locator("rect.box").evaluate("r => getComputedStyle(r).fill")
    assert fill == CAUGHT_FILL
    assert f"↻ {resolve['retries']}" in page.locator("#graph").inner_text()
    recorded = page.locator("#graph g.state[data-state='RecordPageFailure'][data-scope='FanOut']")
    assert recorded.get_attribute("data-status") == "succeeded"
    caught.focus()
    page.keyboard.press("Enter")
    assert "TransientDatabaseError" in page.locator("#selected-state").inner_text()
    screenshot(page, "send-with-a-caught-page")


def test_the_sends_list_updates_while_it_is_open(
    api: LocalApiServer, runtime: LocalRuntime, finished: dict[str, Any], page: Any
) -> None:
    # GIVEN the list is open
    page.goto(console_url(api) + "#/sends")
    page.locator(f"#sends tr[data-id='{finished['notification_id']}']").wait_for()

    # WHEN a send is made meanwhile
    seed_users(runtime, [SeedUser("live-0")])
    accepted = call(
        api,
        "POST",
        "/v1/notifications",
        {
            "category": "social",
            "audience": {"type": "users", "external_ids": ["live-0"]},
            "content": {"title": "Appears by itself", "body": "No reload"},
        },
    )
    finished_send(api, accepted["notification_id"])

    # THEN it appears without a reload, with its final status
    row = page.locator(f"#sends tr[data-id='{accepted['notification_id']}']")
    row.locator(".badge", has_text="completed").wait_for()
    assert "Appears by itself" in row.inner_text()


def test_cancel_from_the_console_cancels_a_scheduled_send(
    api: LocalApiServer, finished: dict[str, Any], page: Any
) -> None:
    accepted = call(
        api,
        "POST",
        "/v1/notifications",
        {
            "category": "news",
            "audience": {"type": "users", "external_ids": ["console-001"]},
            "content": {"title": "Later", "body": "Tomorrow"},
            # The runtime's clock, which tests before this one may have moved on.
            "send_at": (api.runtime.clock.now() + timedelta(hours=6)).isoformat(timespec="seconds"),
        },
    )
    assert accepted["status"] == "scheduled"

    page.goto(console_url(api) + f"#/sends/{accepted['notification_id']}")
    page.locator("#cancel").click()
    page.locator("h1 .badge", has_text="cancelled").wait_for()

    assert call(api, "GET", f"/v1/notifications/{accepted['notification_id']}")["status"] == (
        "cancelled"
    )


def test_schedules_show_the_next_firing_and_cancel(
    api: LocalApiServer, finished: dict[str, Any], page: Any
) -> None:
    created = call(
        api,
        "POST",
        "/v1/schedules",
        {
            "send": {
                "category": "reminders",
                "audience": {"type": "users", "external_ids": ["console-002"]},
                "content": {"title": "Daily", "body": "At nine in Berlin"},
            },
            "recurrence": {"cron": "0 9 * * ? *", "time_zone": "Europe/Berlin"},
        },
    )
    assert created["next_firing"]

    page.goto(console_url(api) + "#/schedules")
    row = page.locator(f"#schedules tr[data-id='{created['schedule_id']}']")
    row.wait_for()
    assert "0 9 * * ? *" in row.inner_text()
    assert "Europe/Berlin" in row.inner_text()
    assert row.locator(".badge").inner_text() == "active"
    screenshot(page, "schedules")

    row.locator("button", has_text="Cancel").click()
    row.locator(".badge", has_text="cancelled").wait_for()
    assert call(api, "GET", f"/v1/schedules/{created['schedule_id']}")["status"] == "cancelled"
