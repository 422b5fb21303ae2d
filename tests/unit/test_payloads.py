"""What SNS receives for one push: APNs and FCM v1 payloads, attributes, the 4 KiB limit."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pushflow.domain.content import ContentError, RenderedContent, render
from pushflow.domain.payloads import (
    PAYLOAD_LIMIT_BYTES,
    PayloadTooLarge,
    Platform,
    SnsMessage,
    build_sns_message,
    check_content_fits,
)

pytestmark = pytest.mark.unit

FULL: dict[str, Any] = {
    "title": "Hi {first_name}",
    "body": "Your order {order_id} shipped",
    "data": {"deep_link": "app://orders/1", "order_id": 1042, "gift": True},
    "badge": 3,
    "sound": "default",
    "thread_id": "orders",
    "collapse_id": "order-1042",
    "ttl_seconds": 3600,
    "priority": "normal",
    "mutable_content": True,
    "image_url": "https://cdn.example.com/parcel.png",
}
MINIMAL: dict[str, Any] = {"title": "Hi", "body": "Hello"}
ANA = {"first_name": "Ana", "order_id": 1042}


def sns_json(message: SnsMessage) -> dict[str, Any]:
    outer: dict[str, Any] = json.loads(message.message)
    return outer


def platform_payload(message: SnsMessage) -> tuple[str, dict[str, Any]]:
    """The one platform key and its payload, which SNS requires as a JSON *string*."""
    outer = sns_json(message)
    (key,) = (k for k in outer if k != "default")
    assert isinstance(outer[key], str)
    payload: dict[str, Any] = json.loads(outer[key])
    return key, payload


def platform_bytes(message: SnsMessage) -> int:
    outer = sns_json(message)
    (key,) = (k for k in outer if k != "default")
    return len(outer[key].encode("utf-8"))


def ios(content: dict[str, Any], sandbox: bool = False) -> SnsMessage:
    return build_sns_message(render(content, None, ANA), "ios", sandbox)


def android(content: dict[str, Any]) -> SnsMessage:
    return build_sns_message(render(content, None, ANA), "android", sandbox=False)


# --- APNs -------------------------------------------------------------------


def test_apns_payload_uses_apples_field_names() -> None:
    key, payload = platform_payload(ios(FULL))

    assert key == "APNS"
    assert payload["aps"] == {
        "alert": {"title": "Hi Ana", "body": "Your order 1042 shipped"},
        "sound": "default",
        "badge": 3,
        "thread-id": "orders",
        "mutable-content": 1,
    }


def test_custom_data_goes_beside_aps_with_its_json_types() -> None:
    _, payload = platform_payload(ios(FULL))

    assert {k: v for k, v in payload.items() if k != "aps"} == {
        "deep_link": "app://orders/1",
        "order_id": 1042,
        "gift": True,
    }


def test_apns_payload_omits_options_the_send_does_not_set() -> None:
    _, payload = platform_payload(ios(MINIMAL))

    assert payload == {"aps": {"alert": {"title": "Hi", "body": "Hello"}}}


@pytest.mark.parametrize(("sandbox", "key"), [(False, "APNS"), (True, "APNS_SANDBOX")])
def test_sandbox_devices_get_the_apns_sandbox_key(sandbox: bool, key: str) -> None:
    outer = sns_json(ios(MINIMAL, sandbox=sandbox))

    assert set(outer) == {"default", key}
    assert outer["default"] == "Hello"


def test_data_may_not_claim_the_aps_key() -> None:
    content = {**MINIMAL, "data": {"aps": {"badge": 99}}}

    with pytest.raises(ContentError) as refused:
        ios(content)

    assert refused.value.field == "content.data"
    assert "aps" in refused.value.message


def test_ios_message_attributes_carry_push_type_priority_ttl_and_collapse_id() -> None:
    assert ios(FULL).message_attributes == {
        "AWS.SNS.MOBILE.APNS.PUSH_TYPE": {"DataType": "String", "StringValue": "alert"},
        "AWS.SNS.MOBILE.APNS.PRIORITY": {"DataType": "String", "StringValue": "5"},
        "AWS.SNS.MOBILE.APNS.TTL": {"DataType": "String", "StringValue": "3600"},
        "AWS.SNS.MOBILE.APNS.COLLAPSE_ID": {"DataType": "String", "StringValue": "order-1042"},
    }


def test_high_priority_is_apns_priority_10_and_is_the_default() -> None:
    attributes = ios(MINIMAL).message_attributes

    assert attributes["AWS.SNS.MOBILE.APNS.PRIORITY"]["StringValue"] == "10"
    assert "AWS.SNS.MOBILE.APNS.TTL" not in attributes
    assert "AWS.SNS.MOBILE.APNS.COLLAPSE_ID" not in attributes


def test_sandbox_ttl_uses_the_sandbox_attribute_name() -> None:
    attributes = ios(FULL, sandbox=True).message_attributes

    assert attributes["AWS.SNS.MOBILE.APNS_SANDBOX.TTL"]["StringValue"] == "3600"
    assert "AWS.SNS.MOBILE.APNS.TTL" not in attributes


# --- FCM HTTP v1 ------------------------------------------------------------


def test_fcm_v1_payload_uses_googles_field_names() -> None:
    key, payload = platform_payload(android(FULL))

    assert key == "GCM"
    assert payload == {
        "fcmV1Message": {
            "message": {
                "notification": {
                    "title": "Hi Ana",
                    "body": "Your order 1042 shipped",
                    "image": "https://cdn.example.com/parcel.png",
                },
                # FCM data values must be strings.
                "data": {"deep_link": "app://orders/1", "order_id": "1042", "gift": "true"},
                "android": {
                    "priority": "NORMAL",
                    "ttl": "3600s",
                    "collapse_key": "order-1042",
                    "notification": {
                        "sound": "default",
                        "tag": "order-1042",
                        "notification_count": 3,
                    },
                },
            }
        }
    }


def test_fcm_payload_omits_options_the_send_does_not_set() -> None:
    _, payload = platform_payload(android(MINIMAL))

    assert payload == {
        "fcmV1Message": {
            "message": {
                "notification": {"title": "Hi", "body": "Hello"},
                "android": {"priority": "HIGH"},
            }
        }
    }


def test_android_message_attributes_carry_the_ttl_only() -> None:
    assert android(FULL).message_attributes == {
        "AWS.SNS.MOBILE.FCM.TTL": {"DataType": "String", "StringValue": "3600"}
    }
    assert android(MINIMAL).message_attributes == {}


@pytest.mark.parametrize("key", ["from", "message_type", "google.sent_time", "gcm_key"])
def test_data_keys_fcm_reserves_are_refused(key: str) -> None:
    with pytest.raises(ContentError) as refused:
        android({**MINIMAL, "data": {key: "x"}})

    assert key in refused.value.message


def test_the_sns_message_is_compact_and_keeps_non_ascii_text_readable() -> None:
    content = {"title": "Grüße 👋", "body": "Ça va?"}

    message = build_sns_message(render(content, None, {}), "ios", sandbox=False)

    assert "Grüße 👋" in message.message
    assert ", " not in message.message
    assert ": " not in message.message


# --- the 4 KiB limit ----------------------------------------------------------


def payload_overhead(platform: Platform) -> int:
    """Bytes of a push whose body is empty: the rest of the limit is the body's."""
    rendered = RenderedContent("Hi", "", None, render(MINIMAL, None, {}).options)
    return platform_bytes(build_sns_message(rendered, platform, sandbox=False))


@pytest.mark.parametrize(("platform", "name"), [("ios", "APNs"), ("android", "FCM")])
def test_a_body_filling_exactly_4096_bytes_passes_and_one_more_byte_fails(
    platform: Platform, name: str
) -> None:
    room = PAYLOAD_LIMIT_BYTES - payload_overhead(platform)
    at_limit = {"title": "Hi", "body": "a" * room}
    over_limit = {"title": "Hi", "body": "a" * (room + 1)}

    fits = build_sns_message(render(at_limit, None, {}), platform, sandbox=False)
    assert platform_bytes(fits) == PAYLOAD_LIMIT_BYTES

    with pytest.raises(PayloadTooLarge) as refused:
        build_sns_message(render(over_limit, None, {}), platform, sandbox=False)
    assert (refused.value.platform, refused.value.size, refused.value.limit) == (name, 4097, 4096)
    assert refused.value.field == "content"
    assert name in refused.value.message


def test_the_limit_counts_utf8_bytes_not_characters() -> None:
    # GIVEN a body of emoji (4 bytes each) topped up with ASCII to fill the APNs limit exactly
    room = PAYLOAD_LIMIT_BYTES - payload_overhead("ios")
    emoji = (room - 1) // 4
    at_limit = "👋" * emoji + "a" * (room - 4 * emoji)
    # AND a body of as many characters, one of them "é" (2 bytes) instead of "a"
    one_byte_over = at_limit[:-1] + "é"

    fits = build_sns_message(render({"title": "Hi", "body": at_limit}, None, {}), "ios", False)

    assert platform_bytes(fits) == PAYLOAD_LIMIT_BYTES
    assert len(one_byte_over) == len(at_limit) < PAYLOAD_LIMIT_BYTES // 3
    with pytest.raises(PayloadTooLarge) as refused:
        build_sns_message(render({"title": "Hi", "body": one_byte_over}, None, {}), "ios", False)
    assert refused.value.size == PAYLOAD_LIMIT_BYTES + 1


def test_check_content_fits_accepts_ordinary_content() -> None:
    check_content_fits(FULL)


def test_check_content_fits_refuses_content_that_only_long_attributes_push_over() -> None:
    # GIVEN a body that fits for a recipient with a short first name
    content = {"title": "Hi", "body": "{first_name}, " + "a" * 3600}
    short_name = build_sns_message(render(content, None, {"first_name": "Ana"}), "ios", False)
    assert platform_bytes(short_name) <= PAYLOAD_LIMIT_BYTES

    # WHEN the send is checked before it starts
    # THEN it is refused: a first name of 256 characters would push it over
    with pytest.raises(PayloadTooLarge) as refused:
        check_content_fits(content)
    assert refused.value.field == "content"


def test_check_content_fits_checks_every_localization() -> None:
    content = {
        "title": "Hi",
        "body": "Hello",
        "localizations": {"de-AT": {"title": "Servus"}, "de": {"body": "ä" * 2100}},
    }

    # "de" and "de-AT" (whose body falls back to "de") are each 4200+ bytes
    with pytest.raises(PayloadTooLarge):
        check_content_fits(content)


def test_check_content_fits_refuses_reserved_data_keys_before_the_send() -> None:
    with pytest.raises(ContentError):
        check_content_fits({**MINIMAL, "data": {"aps": 1}})


def test_content_that_fits_only_without_the_collapse_id_is_refused_before_sending() -> None:
    # GIVEN content filling FCM's 4 KiB exactly when the push carries no collapse id
    room = PAYLOAD_LIMIT_BYTES - payload_overhead("android")
    content = {"title": "Hi", "body": "a" * room}
    fits = build_sns_message(render(content, None, {}), "android", sandbox=False)
    assert platform_bytes(fits) == PAYLOAD_LIMIT_BYTES

    # WHEN it is checked before a send (a transactional push carries the send's
    # collapse id as FCM's collapse key and notification tag)
    # THEN it is refused: it would not fit for an at-least-once category
    with pytest.raises(PayloadTooLarge):
        check_content_fits(content)
