"""Each function checks the shape of its event at its edge, before anything else.

An event of another shape (a sample for another function, an HTTP API v2
event, an authorizer's) is refused with `UnsupportedEvent` naming what is
missing, instead of a bare `KeyError` from deep inside the domain code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pushflow.domain.errors import UnsupportedEvent

_JSON_TYPE_NAMES = {
    str: "a string",
    int: "a number",
    dict: "an object",
    list: "an array",
    bool: "a boolean",
}


def require(event: Any, function: str, **fields: type | tuple[type, ...]) -> Mapping[str, Any]:
    """`event` as a mapping holding each of `fields` with its type, or UnsupportedEvent."""
    if not isinstance(event, Mapping):
        raise UnsupportedEvent(
            f"{function} takes a JSON object as its event, not {_kind(event)}", "event"
        )
    for name, expected in fields.items():
        if name not in event:
            raise UnsupportedEvent(f"{function}'s event has no {name!r}", name)
        if not isinstance(event[name], expected):
            wanted = expected if isinstance(expected, tuple) else (expected,)
            names = " or ".join(_JSON_TYPE_NAMES.get(t, t.__name__) for t in wanted)
            raise UnsupportedEvent(f"{function}'s event has {name!r} that is not {names}", name)
    return event


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def require_page(event: Mapping[str, Any], function: str) -> None:
    """A page is named as resolved (`page`, an object) or by its plan's S3 key (`page_key`)."""
    if isinstance(event.get("page"), dict) or isinstance(event.get("page_key"), str):
        return
    raise UnsupportedEvent(f"{function}'s event has neither 'page' nor 'page_key'", "page")
