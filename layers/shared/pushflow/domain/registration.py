"""Who can be reached, as the API manages it: users, devices, preferences, topics.

PostgreSQL is the source of truth; SNS holds one platform endpoint per device
token; Redis caches preferences for the send path and is written through
whenever they change here.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from datetime import time
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pushflow.domain.categories import CATEGORIES
from pushflow.domain.errors import Conflict, Forbidden, InvalidRequest, NotFound
from pushflow.domain.models import Device, Notification, NotificationStatus, User
from pushflow.domain.rules import DEFAULT_PREFERENCES, Preferences

# APNs tokens are hex (32 bytes today; Apple says not to rely on the length);
# FCM registration tokens are URL-safe text of a few hundred characters.
_TOKEN_FORMS = {
    "ios": (re.compile(r"[0-9a-fA-F]{64,200}"), "hexadecimal, 64 to 200 characters"),
    "android": (re.compile(r"[A-Za-z0-9:_\-]{32,4096}"), "32 to 4096 of A-Z a-z 0-9 : _ -"),
}


class Endpoints(Protocol):
    def ensure(
        self, application_arn: str, token: str, user_data: str, existing_arn: str | None
    ) -> str: ...

    def delete(self, arn: str) -> None: ...


class PreferenceCache(Protocol):
    def cache_preferences(self, user_id: int, preferences: Preferences) -> None: ...


class Directory(Protocol):
    def upsert_user(
        self,
        external_id: str,
        locale: str | None = None,
        time_zone: str | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> tuple[User, bool]: ...

    def find_user(self, external_id: str) -> User | None: ...
    def find_device_by_token(self, platform: str, token: str) -> Device | None: ...
    def count_unknown_users(self, external_ids: list[str]) -> int: ...
    def get_device(self, device_id: int) -> Device | None: ...

    def save_device(
        self, user_id: int, platform: str, token: str, sandbox: bool, endpoint_arn: str
    ) -> tuple[Device, bool]: ...

    def list_devices(self, user_id: int) -> list[Device]: ...
    def delete_device(self, device_id: int) -> None: ...
    def load_preferences(self, user_ids: Sequence[int]) -> dict[int, Preferences]: ...
    def replace_preferences(self, user_id: int, preferences: Preferences) -> None: ...
    def subscribe(self, user_id: int, topic: str) -> None: ...
    def unsubscribe(self, user_id: int, topic: str) -> None: ...
    def topics(self, user_id: int) -> list[str]: ...
    def get_notification(self, notification_id: str) -> Notification: ...
    def cancel_notification(self, notification_id: str) -> Notification | None: ...
    def cancel_deferred(self, notification_id: str) -> int: ...
    def outcome_counts(self, notification_id: str) -> dict[str, int]: ...

    def list_deliveries(
        self,
        notification_id: str,
        after_device_id: int,
        limit: int,
        outcome: str | None = None,
        platform: str | None = None,
    ) -> list[dict[str, Any]]: ...


def check_time_zone(name: str, field: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidRequest(f"unknown time zone {name!r} (use an IANA name)", field) from None
    return name


# -- users ----------------------------------------------------------------------


def upsert_user(
    external_id: str, profile: Mapping[str, Any], directory: Directory
) -> tuple[User, bool]:
    if "time_zone" in profile:
        check_time_zone(profile["time_zone"], "time_zone")
    return directory.upsert_user(
        external_id, profile.get("locale"), profile.get("time_zone"), profile.get("attributes")
    )


# -- devices --------------------------------------------------------------------


def register_device(
    external_id: str,
    registration: Mapping[str, Any],
    directory: Directory,
    endpoints: Endpoints,
    applications: Mapping[tuple[str, bool], str | None],
) -> tuple[Device, bool]:
    """Register or refresh a token: the same token keeps its endpoint (re-enabled);
    a token that moves to another user leaves the previous user's devices."""
    platform = registration["platform"]
    token = registration["token"]
    sandbox = bool(registration.get("sandbox", False)) and platform == "ios"
    form, described = _TOKEN_FORMS[platform]
    if not form.fullmatch(token):
        raise InvalidRequest(f"not a valid {platform} device token ({described})", "token")
    if "time_zone" in registration:
        check_time_zone(registration["time_zone"], "time_zone")
    application = applications.get((platform, sandbox))
    if not application:
        raise InvalidRequest(
            f"this stack has no SNS platform application for {platform}"
            + (" (sandbox)" if sandbox else ""),
            "platform",
        )
    user, _ = directory.upsert_user(
        external_id, registration.get("locale"), registration.get("time_zone")
    )
    existing = directory.find_device_by_token(platform, token)
    reusable = existing.endpoint_arn if existing and existing.sandbox == sandbox else None
    endpoint_arn = endpoints.ensure(application, token, user.external_id, reusable)
    return directory.save_device(user.id, platform, token, sandbox, endpoint_arn)


def list_devices(external_id: str, directory: Directory) -> list[Device]:
    user = directory.find_user(external_id)
    return directory.list_devices(user.id) if user else []


def delete_device(
    external_id: str, device_id: int, directory: Directory, endpoints: Endpoints
) -> None:
    device = directory.get_device(device_id)
    if device is None:
        raise NotFound(f"device {device_id} not found")
    user = directory.find_user(external_id)
    if user is None or device.user_id != user.id:
        raise Forbidden("this device belongs to another user")
    endpoints.delete(device.endpoint_arn)
    directory.delete_device(device_id)


# -- preferences ------------------------------------------------------------------


def _clock(value: time) -> str:
    return f"{value.hour:02d}:{value.minute:02d}"


def preferences_view(preferences: Preferences) -> dict[str, Any]:
    view: dict[str, Any] = {
        "opted_out_categories": sorted(preferences.opted_out),
        "caps": dict(preferences.cap_overrides),
    }
    if preferences.quiet_start is not None and preferences.quiet_end is not None:
        view["quiet_hours"] = {
            "start": _clock(preferences.quiet_start),
            "end": _clock(preferences.quiet_end),
        }
    return view


def preferences_from(body: Mapping[str, Any]) -> Preferences:
    """A validated request body as Preferences; unknown categories are refused."""
    opted_out = list(body.get("opted_out_categories", ()))
    for index, name in enumerate(opted_out):
        if name not in CATEGORIES:
            raise InvalidRequest(f"unknown category {name!r}", f"opted_out_categories.{index}")
        if not CATEGORIES[name].can_opt_out:
            raise InvalidRequest(
                f"{name!r} pushes cannot be opted out of", f"opted_out_categories.{index}"
            )
    caps = dict(body.get("caps", {}))
    for name in caps:
        if name not in CATEGORIES:
            raise InvalidRequest(f"unknown category {name!r}", f"caps.{name}")
        if CATEGORIES[name].daily_cap is None:
            # Accepting it would change nothing: these pushes are never capped.
            raise InvalidRequest(f"{name!r} pushes have no daily cap to set", f"caps.{name}")
    quiet = body.get("quiet_hours")
    return Preferences(
        opted_out=frozenset(opted_out),
        quiet_start=time.fromisoformat(quiet["start"]) if quiet else None,
        quiet_end=time.fromisoformat(quiet["end"]) if quiet else None,
        cap_overrides=caps,
    )


def get_preferences(external_id: str, directory: Directory) -> Preferences:
    user = directory.find_user(external_id)
    if user is None:
        return DEFAULT_PREFERENCES
    return directory.load_preferences([user.id]).get(user.id, DEFAULT_PREFERENCES)


def replace_preferences(
    external_id: str, body: Mapping[str, Any], directory: Directory, cache: PreferenceCache
) -> Preferences:
    preferences = preferences_from(body)
    user, _ = directory.upsert_user(external_id)
    directory.replace_preferences(user.id, preferences)
    # The send path reads preferences from Redis: write the change through now.
    cache.cache_preferences(user.id, preferences)
    return preferences


# -- topics -------------------------------------------------------------------------


def subscribe(external_id: str, topic: str, directory: Directory) -> None:
    user, _ = directory.upsert_user(external_id)
    directory.subscribe(user.id, topic)


def unsubscribe(external_id: str, topic: str, directory: Directory) -> None:
    user = directory.find_user(external_id)
    if user is not None:
        directory.unsubscribe(user.id, topic)


def topics(external_id: str, directory: Directory) -> list[str]:
    user = directory.find_user(external_id)
    return directory.topics(user.id) if user else []


# -- a send, seen from the API ----------------------------------------------------


def cancel(notification_id: str, directory: Directory) -> Notification:
    """Stop a send: pages not published yet are recorded as cancelled."""
    directory.get_notification(notification_id)  # NotFound for an unknown id
    cancelled = directory.cancel_notification(notification_id)
    if cancelled is None:
        raise Conflict("this notification has already finished")
    # Devices waiting out their quiet hours are cancelled now, not when the wait ends
    # (hours later): the deferred pass finds the send cancelled and pushes nothing.
    directory.cancel_deferred(notification_id)
    return cancelled


def notification_view(notification_id: str, directory: Directory) -> Notification:
    """A notification as a client sees it: a running send's counts are those so far,
    from its delivery rows (Finalize stores the final ones)."""
    notification = directory.get_notification(notification_id)
    if notification.status in (NotificationStatus.RUNNING, NotificationStatus.CANCELLED) and (
        not notification.counts
    ):
        return dataclasses.replace(notification, counts=directory.outcome_counts(notification_id))
    return notification


def unknown_external_ids(request: Mapping[str, Any], directory: Directory) -> int | None:
    """For a send to explicit users: how many of them are unknown (they get nothing).
    None for other audiences."""
    audience = request.get("audience", {})
    if audience.get("type") != "users":
        return None
    return directory.count_unknown_users(list(audience.get("external_ids", [])))


def deliveries_page(
    notification_id: str,
    directory: Directory,
    after: str | None,
    limit: int,
    outcome: str | None = None,
    platform: str | None = None,
) -> dict[str, Any]:
    directory.get_notification(notification_id)
    rows = directory.list_deliveries(notification_id, int(after or 0), limit, outcome, platform)
    following = rows[-1]["device_id"] if len(rows) == limit else None
    return {"deliveries": rows, "next": following}
