"""The SNS message for one push: APNs or FCM (HTTP v1) payload, attributes, size limit.

`build_sns_message` runs once per recipient, so it builds plain dicts and
serialises them once, compactly; the size check costs a `len` for ASCII text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pushflow.domain.content import (
    MAX_ATTRIBUTE_CHARS,
    ContentError,
    RenderedContent,
    compile_content,
)

Platform = Literal["ios", "android"]

# APNs refuses a notification payload over 4 KiB; FCM refuses a message over
# 4 KiB. Both count the UTF-8 bytes of the JSON they receive.
PAYLOAD_LIMIT_BYTES = 4096

# FCM refuses data keys it uses itself.
_FCM_RESERVED_KEYS = frozenset({"from", "notification", "message_type"})
_FCM_RESERVED_PREFIXES = ("google", "gcm")

_APNS_PUSH_TYPE = "AWS.SNS.MOBILE.APNS.PUSH_TYPE"
_APNS_PRIORITY = "AWS.SNS.MOBILE.APNS.PRIORITY"
_APNS_COLLAPSE_ID = "AWS.SNS.MOBILE.APNS.COLLAPSE_ID"
# SNS names the TTL attribute after the platform application's platform.
_APNS_TTL = "AWS.SNS.MOBILE.APNS.TTL"
_APNS_SANDBOX_TTL = "AWS.SNS.MOBILE.APNS_SANDBOX.TTL"
_FCM_TTL = "AWS.SNS.MOBILE.FCM.TTL"

_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class PayloadTooLarge(ContentError):
    """The push would exceed what APNs or FCM accept."""

    def __init__(self, platform: str, size: int, limit: int = PAYLOAD_LIMIT_BYTES) -> None:
        super().__init__(
            f"the {platform} payload would be {size} bytes, over its {limit}-byte limit; "
            "shorten the title, body or data",
            "content",
        )
        self.platform = platform
        self.size = size
        self.limit = limit


@dataclass(frozen=True, slots=True)
class SnsMessage:
    """The arguments of one SNS Publish(MessageStructure="json") to a platform endpoint."""

    message: str
    message_attributes: dict[str, dict[str, str]]


def _string_attribute(value: str) -> dict[str, str]:
    return {"DataType": "String", "StringValue": value}


def _checked_size(payload: str, platform: str) -> str:
    # ASCII is one byte per character: skip encoding the common case.
    size = len(payload) if payload.isascii() else len(payload.encode("utf-8"))
    if size > PAYLOAD_LIMIT_BYTES:
        raise PayloadTooLarge(platform, size)
    return payload


def _apns_payload(rendered: RenderedContent) -> dict[str, Any]:
    options = rendered.options
    aps: dict[str, Any] = {"alert": {"title": rendered.title, "body": rendered.body}}
    if options.sound is not None:
        aps["sound"] = options.sound
    if options.badge is not None:
        aps["badge"] = options.badge
    if options.thread_id is not None:
        aps["thread-id"] = options.thread_id
    if options.mutable_content:
        # Lets a Notification Service Extension download image_url before display.
        aps["mutable-content"] = 1
    if "aps" in options.data:
        raise ContentError("content.data may not use the key 'aps' (APNs owns it)", "content.data")
    # Apple puts custom keys beside "aps", not inside it.
    return {"aps": aps, **options.data}


def _fcm_data(data: Mapping[str, Any]) -> dict[str, str]:
    fcm_data: dict[str, str] = {}
    for key, value in data.items():
        if key in _FCM_RESERVED_KEYS or key.startswith(_FCM_RESERVED_PREFIXES):
            raise ContentError(
                f"content.data may not use the key {key!r} (FCM reserves it)", "content.data"
            )
        # FCM data values must be strings; keep other JSON values readable by the app.
        fcm_data[key] = value if isinstance(value, str) else _compact(value)
    return fcm_data


def _fcm_payload(rendered: RenderedContent, collapse_id: str | None) -> dict[str, Any]:
    options = rendered.options
    notification: dict[str, str] = {"title": rendered.title, "body": rendered.body}
    if options.image_url is not None:
        notification["image"] = options.image_url
    android: dict[str, Any] = {"priority": "HIGH" if options.priority == "high" else "NORMAL"}
    if options.ttl_seconds is not None:
        android["ttl"] = f"{options.ttl_seconds}s"  # a protobuf Duration in JSON
    if collapse_id is not None:
        android["collapse_key"] = collapse_id
    android_notification: dict[str, Any] = {}
    if options.sound is not None:
        android_notification["sound"] = options.sound
    if collapse_id is not None:
        # The tag replaces a shown notification with the same tag, like apns-collapse-id.
        android_notification["tag"] = collapse_id
    if options.badge is not None:
        android_notification["notification_count"] = options.badge
    if android_notification:
        android["notification"] = android_notification
    message: dict[str, Any] = {"notification": notification}
    if options.data:
        message["data"] = _fcm_data(options.data)
    message["android"] = android
    return {"fcmV1Message": {"message": message}}


def build_sns_message(
    rendered: RenderedContent,
    platform: Platform,
    sandbox: bool,
    default_collapse_id: str | None = None,
) -> SnsMessage:
    """The SNS message for one recipient; PayloadTooLarge if APNs/FCM would refuse it.

    `default_collapse_id` collapses a push the content names no collapse id for:
    a device that gets it twice (an at-least-once category) shows it once.
    """
    options = rendered.options
    collapse_id = options.collapse_id or default_collapse_id
    attributes: dict[str, dict[str, str]]
    if platform == "ios":
        key = "APNS_SANDBOX" if sandbox else "APNS"
        payload = _checked_size(_compact(_apns_payload(rendered)), "APNs")
        attributes = {
            _APNS_PUSH_TYPE: _string_attribute("alert"),
            _APNS_PRIORITY: _string_attribute("10" if options.priority == "high" else "5"),
        }
        if options.ttl_seconds is not None:
            ttl_name = _APNS_SANDBOX_TTL if sandbox else _APNS_TTL
            attributes[ttl_name] = _string_attribute(str(options.ttl_seconds))
        if collapse_id is not None:
            attributes[_APNS_COLLAPSE_ID] = _string_attribute(collapse_id)
    elif platform == "android":
        key = "GCM"
        payload = _checked_size(_compact(_fcm_payload(rendered, collapse_id)), "FCM")
        attributes = {}
        if options.ttl_seconds is not None:
            attributes[_FCM_TTL] = _string_attribute(str(options.ttl_seconds))
    else:
        raise ValueError(f"unknown platform {platform!r}")
    # SNS wants each platform's payload as a JSON string inside the JSON message.
    return SnsMessage(_compact({"default": rendered.body, key: payload}), attributes)


# A worst-case attribute value for the pre-flight check: the longest value the
# API accepts, in a character that takes two bytes in UTF-8 (accented Latin,
# Greek, Cyrillic, Hebrew, Arabic names). Three- and four-byte text (CJK,
# emoji) at full length is not assumed: it would refuse ordinary content that
# fits for every real audience, and the per-recipient build still enforces the
# exact limit, so such an outlier fails alone instead of the whole send.
_WORST_CASE_VALUE = "é" * MAX_ATTRIBUTE_CHARS
# As long as `sending.collapse_id_for` makes them: "pf-" and a notification's uuid.
_LONGEST_COLLAPSE_ID = "pf-" + "0" * 36


def check_content_fits(content: Mapping[str, Any]) -> None:
    """Before a send starts: refuse content that could exceed 4 KiB for some recipient."""
    compiled = compile_content(content)
    worst_case = dict.fromkeys(compiled.placeholders, _WORST_CASE_VALUE)
    # Every locale resolves to the default or to one of the localizations, so
    # rendering each of those covers every recipient.
    for locale in (None, *compiled.locale_keys):
        rendered = compiled.render(locale, worst_case)
        # With the collapse id every at-least-once push carries (the longest there is).
        build_sns_message(rendered, "ios", sandbox=False, default_collapse_id=_LONGEST_COLLAPSE_ID)
        build_sns_message(
            rendered, "android", sandbox=False, default_collapse_id=_LONGEST_COLLAPSE_ID
        )
