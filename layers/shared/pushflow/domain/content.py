"""The content of a send: locale variants, placeholders, per-recipient rendering.

A send's content is compiled once (`compile_content`) and rendered for every
recipient of every page (`CompiledContent.render`), so everything that does
not depend on the recipient is done at compile time: templates are parsed and
checked, and the variant a locale resolves to is cached per locale tag.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from pushflow.domain.errors import InvalidRequest

# The API caps each attribute value at this many characters; the pre-flight
# size check (`payloads.check_content_fits`) assumes every placeholder may be
# filled with a value this long.
MAX_ATTRIBUTE_CHARS = 256
MAX_TTL_SECONDS = 2_419_200  # 28 days: the longest both APNs and FCM keep a push

Priority = Literal["high", "normal"]

_PLACEHOLDER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# `{{` and `}}` are literal braces; `{...}` is a placeholder; a lone brace is an error.
_TEMPLATE_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
# Enough for every locale tag an audience realistically carries; past it,
# unusual tags are resolved each time instead of growing the cache forever.
_LOCALE_CACHE_SIZE = 512


class ContentError(InvalidRequest):
    """The content of a send cannot be delivered as written."""


class MissingPlaceholder(ContentError):
    """A recipient has no value for a placeholder the content uses."""

    def __init__(self, placeholder: str, field: str) -> None:
        super().__init__(
            f"placeholder {{{placeholder}}} in {field} has no value for this recipient",
            field,
        )
        self.placeholder = placeholder


@dataclass(frozen=True, slots=True)
class ContentOptions:
    """What a push carries besides its text; the same for every recipient of a send."""

    data: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    badge: int | None = None
    sound: str | None = None
    thread_id: str | None = None
    collapse_id: str | None = None
    ttl_seconds: int | None = None
    priority: Priority = "high"
    mutable_content: bool = False
    image_url: str | None = None


@dataclass(frozen=True, slots=True)
class RenderedContent:
    """The text one recipient sees, and the options shared by the whole send."""

    title: str
    body: str
    # The localization key that supplied the text ("de" for a "de-AT" recipient
    # when only "de" exists); None when the default title and body were used.
    locale_used: str | None
    options: ContentOptions


@dataclass(frozen=True, slots=True)
class _Template:
    field: str
    # A str.format template: after parsing, it holds only `{name}` fields and
    # doubled braces, so format_map cannot reach attributes or indexes.
    format_string: str
    placeholders: tuple[str, ...]
    # The text itself when there is nothing to fill in (skips format_map).
    constant: str | None

    def fill(self, attributes: Mapping[str, Any]) -> str:
        if self.constant is not None:
            return self.constant
        for name in self.placeholders:
            # A null attribute is as missing as an absent one: "Hi None" is worse than no push.
            if attributes.get(name) is None:
                raise MissingPlaceholder(name, self.field)
        return self.format_string.format_map(attributes)


@dataclass(frozen=True, slots=True)
class _Variant:
    title: _Template
    body: _Template
    locale_used: str | None


def _parse_template(text: object, field: str) -> _Template:
    if not isinstance(text, str):
        raise ContentError(f"{field} must be a string", field)
    format_parts: list[str] = []
    literal_parts: list[str] = []
    names: list[str] = []
    position = 0
    for token in _TEMPLATE_TOKEN.finditer(text):
        between = text[position : token.start()]
        format_parts.append(between)
        literal_parts.append(between)
        position = token.end()
        matched = token.group(0)
        if matched in ("{{", "}}"):
            format_parts.append(matched)
            literal_parts.append(matched[0])
            continue
        name = token.group(1)
        if name is None:
            raise ContentError(
                f"{field} has an unmatched {matched!r} at position {token.start()}; "
                f"write {matched * 2!r} for a literal brace",
                field,
            )
        if not _PLACEHOLDER_NAME.fullmatch(name):
            raise ContentError(
                f"{field} has an invalid placeholder {{{name}}}: a name is letters, digits "
                f"and underscores, not starting with a digit (write {{{{ for a literal brace)",
                field,
            )
        format_parts.append("{" + name + "}")
        if name not in names:
            names.append(name)
    format_parts.append(text[position:])
    literal_parts.append(text[position:])
    return _Template(
        field=field,
        format_string="".join(format_parts),
        placeholders=tuple(names),
        constant=None if names else "".join(literal_parts),
    )


def _normalise_tag(tag: str) -> str:
    # Devices report "de_AT" or even POSIX "de_AT.UTF-8@euro"; requests write "de-AT".
    return tag.split(".", 1)[0].split("@", 1)[0].replace("_", "-").lower()


def _fallback_chain(tag: str) -> Iterator[str]:
    """'zh-hant-tw' -> 'zh-hant-tw', 'zh-hant', 'zh' (already normalised)."""
    while tag:
        yield tag
        cut = tag.rfind("-")
        tag = tag[:cut] if cut > 0 else ""


def _int_option(content: Mapping[str, Any], name: str, low: int, high: int) -> int | None:
    value = content.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ContentError(
            f"content.{name} must be an integer from {low} to {high}", f"content.{name}"
        )
    return value


def _str_option(content: Mapping[str, Any], name: str) -> str | None:
    value = content.get(name)
    if value is not None and not isinstance(value, str):
        raise ContentError(f"content.{name} must be a string", f"content.{name}")
    return value


def _options(content: Mapping[str, Any]) -> ContentOptions:
    data = content.get("data") or {}
    if not isinstance(data, Mapping):
        raise ContentError("content.data must be an object", "content.data")
    priority = content.get("priority", "high")
    if priority not in ("high", "normal"):
        raise ContentError("content.priority must be 'high' or 'normal'", "content.priority")
    return ContentOptions(
        data=MappingProxyType(dict(data)),
        badge=_int_option(content, "badge", 0, 2**31 - 1),
        sound=_str_option(content, "sound"),
        thread_id=_str_option(content, "thread_id"),
        collapse_id=_str_option(content, "collapse_id"),
        ttl_seconds=_int_option(content, "ttl_seconds", 0, MAX_TTL_SECONDS),
        priority=priority,
        mutable_content=bool(content.get("mutable_content", False)),
        image_url=_str_option(content, "image_url"),
    )


class CompiledContent:
    """A send's content, parsed once and rendered per recipient."""

    def __init__(self, content: Mapping[str, Any]) -> None:
        self._default = _Variant(
            title=_parse_template(content.get("title"), "content.title"),
            body=_parse_template(content.get("body"), "content.body"),
            locale_used=None,
        )
        # normalised tag -> (key as the request wrote it, title or None, body or None)
        self._localizations: dict[str, tuple[str, _Template | None, _Template | None]] = {}
        localizations = content.get("localizations") or {}
        if not isinstance(localizations, Mapping):
            raise ContentError("content.localizations must be an object", "content.localizations")
        for key, variant in localizations.items():
            path = f"content.localizations.{key}"
            tag = _normalise_tag(key)
            if not tag:
                raise ContentError(f"{path}: empty locale tag", path)
            if tag in self._localizations:
                other = self._localizations[tag][0]
                raise ContentError(f"{path} is the same locale as {other!r}", path)
            if not isinstance(variant, Mapping):
                raise ContentError(f"{path} must be an object", path)
            title = variant.get("title")
            body = variant.get("body")
            if title is None and body is None:
                raise ContentError(f"{path} needs a title or a body", path)
            self._localizations[tag] = (
                key,
                None if title is None else _parse_template(title, f"{path}.title"),
                None if body is None else _parse_template(body, f"{path}.body"),
            )
        self.options = _options(content)
        self._by_locale: dict[str | None, _Variant] = {}
        self.placeholders = frozenset(name for t in self._templates() for name in t.placeholders)

    @property
    def locale_keys(self) -> tuple[str, ...]:
        """The localization keys as the request wrote them."""
        return tuple(key for key, _, _ in self._localizations.values())

    def _templates(self) -> Iterator[_Template]:
        yield self._default.title
        yield self._default.body
        for _, title, body in self._localizations.values():
            if title is not None:
                yield title
            if body is not None:
                yield body

    def _variant_for(self, locale: str | None) -> _Variant:
        variant = self._by_locale.get(locale)
        if variant is None:
            variant = self._resolve(locale)
            if len(self._by_locale) < _LOCALE_CACHE_SIZE:
                self._by_locale[locale] = variant
        return variant

    def _resolve(self, locale: str | None) -> _Variant:
        title: _Template | None = None
        body: _Template | None = None
        locale_used: str | None = None
        for tag in _fallback_chain(_normalise_tag(locale or "")):
            found = self._localizations.get(tag)
            if found is None:
                continue
            key, variant_title, variant_body = found
            if locale_used is None:
                locale_used = key
            if title is None:
                title = variant_title
            if body is None:
                body = variant_body
            if title is not None and body is not None:
                break
        if locale_used is None:
            return self._default
        return _Variant(title or self._default.title, body or self._default.body, locale_used)

    def render(self, locale: str | None, attributes: Mapping[str, Any]) -> RenderedContent:
        """The push one recipient gets; MissingPlaceholder if an attribute it needs is absent."""
        variant = self._variant_for(locale)
        return RenderedContent(
            variant.title.fill(attributes),
            variant.body.fill(attributes),
            variant.locale_used,
            self.options,
        )


def compile_content(content: Mapping[str, Any]) -> CompiledContent:
    """Parse a send's content once; ContentError names the field that cannot be used."""
    return CompiledContent(content)


def placeholders(content: Mapping[str, Any]) -> frozenset[str]:
    """Every placeholder name any variant uses: the attributes Resolve must fetch."""
    return compile_content(content).placeholders


def validate_content(
    content: Mapping[str, Any], known_attributes: Mapping[str, object] | None = None
) -> None:
    """Refuse content with malformed placeholders or, given the attribute names the
    audience has, placeholders no recipient could fill."""
    compiled = compile_content(content)
    if known_attributes is None:
        return
    for template in compiled._templates():
        for name in template.placeholders:
            if name not in known_attributes:
                raise ContentError(
                    f"placeholder {{{name}}} in {template.field} is not an attribute "
                    "any recipient has",
                    template.field,
                )


def render(
    content: Mapping[str, Any], locale: str | None, attributes: Mapping[str, Any]
) -> RenderedContent:
    """One-off rendering; hot paths compile once and call CompiledContent.render."""
    return compile_content(content).render(locale, attributes)
