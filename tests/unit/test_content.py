"""Locale fallback, placeholders and their errors, as a sender and a recipient see them."""

from __future__ import annotations

from typing import Any

import pytest

from pushflow.domain.content import (
    ContentError,
    MissingPlaceholder,
    compile_content,
    placeholders,
    render,
    validate_content,
)
from pushflow.domain.errors import InvalidRequest

pytestmark = pytest.mark.unit

ORDER_SHIPPED: dict[str, Any] = {
    "title": "Hi {first_name}",
    "body": "Your order {order_id} shipped",
    "localizations": {
        "de": {"title": "Hallo {first_name}", "body": "Bestellung {order_id} ist unterwegs"},
        "de-AT": {"title": "Servus {first_name}"},
        "zh-Hant": {"title": "你好 {first_name}", "body": "訂單 {order_id} 已出貨"},
    },
    "data": {"deep_link": "app://orders/1"},
    "badge": 3,
    "sound": "default",
    "ttl_seconds": 3600,
}
JOERG = {"first_name": "Jörg", "order_id": 1042}


@pytest.mark.parametrize(
    ("locale", "title", "body", "locale_used"),
    [
        ("de", "Hallo Jörg", "Bestellung 1042 ist unterwegs", "de"),
        # de-AT gives only a title: the body falls back to "de", not to the default.
        ("de-AT", "Servus Jörg", "Bestellung 1042 ist unterwegs", "de-AT"),
        ("de-CH", "Hallo Jörg", "Bestellung 1042 ist unterwegs", "de"),
        ("zh-Hant-TW", "你好 Jörg", "訂單 1042 已出貨", "zh-Hant"),
        ("fr-FR", "Hi Jörg", "Your order 1042 shipped", None),
        (None, "Hi Jörg", "Your order 1042 shipped", None),
        ("", "Hi Jörg", "Your order 1042 shipped", None),
    ],
)
def test_a_recipient_gets_the_most_specific_variant_of_their_locale(
    locale: str | None, title: str, body: str, locale_used: str | None
) -> None:
    rendered = render(ORDER_SHIPPED, locale, JOERG)

    assert (rendered.title, rendered.body, rendered.locale_used) == (title, body, locale_used)


@pytest.mark.parametrize("locale", ["de_at", "DE-at", "de_AT.UTF-8", "De-At"])
def test_locale_tags_match_regardless_of_case_and_underscores(locale: str) -> None:
    assert render(ORDER_SHIPPED, locale, JOERG).title == "Servus Jörg"


def test_a_localization_written_with_an_underscore_matches_a_hyphenated_device_locale() -> None:
    content = {"title": "Hi", "body": "Hello", "localizations": {"pt_br": {"body": "Olá"}}}

    rendered = render(content, "pt-BR", {})

    assert (rendered.title, rendered.body) == ("Hi", "Olá")


def test_a_variant_with_only_a_body_keeps_the_default_title() -> None:
    content = {
        "title": "Sale",
        "body": "Everything must go",
        "localizations": {"fr": {"body": "Tout"}},
    }

    rendered = render(content, "fr", {})

    assert (rendered.title, rendered.body, rendered.locale_used) == ("Sale", "Tout", "fr")


def test_placeholders_are_filled_from_the_recipients_attributes() -> None:
    content = {"title": "{first_name}, {count} items", "body": "VIP: {vip}, total {total}"}

    rendered = render(content, None, {"first_name": "Ana", "count": 3, "vip": True, "total": 9.5})

    assert rendered.title == "Ana, 3 items"
    assert rendered.body == "VIP: True, total 9.5"


def test_doubled_braces_are_literal_braces() -> None:
    content = {"title": "{{not_a_placeholder}}", "body": "{{{first_name}}} }} {{"}

    rendered = render(content, None, {"first_name": "Ana"})

    assert rendered.title == "{not_a_placeholder}"
    assert rendered.body == "{Ana} } {"
    assert placeholders(content) == frozenset({"first_name"})


def test_placeholders_lists_every_name_any_variant_uses() -> None:
    content = {
        "title": "Hi {first_name}",
        "body": "Order {order_id}",
        "localizations": {"ja": {"body": "{last_name}様、注文 {order_id}"}},
    }

    assert placeholders(content) == frozenset({"first_name", "order_id", "last_name"})


def test_a_missing_attribute_is_refused_naming_the_placeholder() -> None:
    with pytest.raises(MissingPlaceholder) as refused:
        render(ORDER_SHIPPED, "de", {"first_name": "Jörg"})

    assert refused.value.placeholder == "order_id"
    assert refused.value.field == "content.localizations.de.body"
    assert "{order_id}" in refused.value.message


def test_a_null_attribute_counts_as_missing() -> None:
    with pytest.raises(MissingPlaceholder) as refused:
        render(ORDER_SHIPPED, None, {"first_name": None, "order_id": 1})

    assert refused.value.placeholder == "first_name"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("Hi {first name}", "invalid placeholder"),
        ("Hi {1st}", "invalid placeholder"),
        ("Hi {}", "invalid placeholder"),
        ("Hi {user.name}", "invalid placeholder"),
        ("Hi {name!r}", "invalid placeholder"),
        ("Hi {name", "unmatched"),
        ("Hi name}", "unmatched"),
    ],
)
def test_malformed_placeholders_are_refused_naming_the_field(text: str, why: str) -> None:
    content = {"title": "Hi", "body": "Hello", "localizations": {"de": {"title": text}}}

    with pytest.raises(ContentError) as refused:
        validate_content(content)

    assert refused.value.field == "content.localizations.de.title"
    assert why in refused.value.message


def test_content_errors_are_invalid_requests_so_the_api_answers_4xx() -> None:
    with pytest.raises(InvalidRequest) as refused:
        validate_content({"title": "Hi {", "body": "x"})

    assert refused.value.to_dict()["field"] == "content.title"


def test_a_placeholder_no_recipient_can_fill_is_refused_before_the_send() -> None:
    known = {"first_name": "Ana", "order_id": 1}
    content = {**ORDER_SHIPPED, "localizations": {"fr": {"body": "Commande {order_no}"}}}

    with pytest.raises(ContentError) as refused:
        validate_content(content, known_attributes=known)

    assert refused.value.field == "content.localizations.fr.body"
    assert "{order_no}" in refused.value.message


def test_content_whose_placeholders_the_audience_has_is_accepted() -> None:
    validate_content(ORDER_SHIPPED, known_attributes={"first_name": "", "order_id": ""})


def test_two_localizations_for_the_same_locale_are_refused() -> None:
    content = {
        "title": "a",
        "body": "b",
        "localizations": {"de-AT": {"title": "x"}, "de_at": {"title": "y"}},
    }

    with pytest.raises(ContentError) as refused:
        validate_content(content)

    assert refused.value.field == "content.localizations.de_at"


def test_a_compiled_content_renders_every_recipient_with_its_own_locale() -> None:
    compiled = compile_content(ORDER_SHIPPED)

    titles = [
        compiled.render(locale, {"first_name": name, "order_id": 1}).title
        for locale, name in [("de-AT", "Jörg"), ("en-US", "Ann"), ("de-AT", "Eva")]
    ]

    assert titles == ["Servus Jörg", "Hi Ann", "Servus Eva"]


def test_rendering_carries_the_sends_options() -> None:
    options = render(ORDER_SHIPPED, "de", JOERG).options

    assert (options.badge, options.sound, options.ttl_seconds, options.priority) == (
        3,
        "default",
        3600,
        "high",
    )
    assert dict(options.data) == {"deep_link": "app://orders/1"}
