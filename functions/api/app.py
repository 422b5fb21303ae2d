"""ApiFunction: Pushflow's HTTP API behind API Gateway (Powertools event handler).

End-user routes (`/v1/me/...`) act for the user in the Cognito token's `sub`,
never for one named in the body; backend routes need the API key that API
Gateway checked. Bodies are validated against the component schemas of the
same OpenAPI document API Gateway validates with.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from datetime import timedelta
from typing import Any

from aws_lambda_powertools.event_handler import Response

from pushflow.domain import monitoring, registration, scheduling, send_ends, sending
from pushflow.domain.categories import CATEGORIES
from pushflow.domain.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    TransientError,
    Unauthorized,
    UnsupportedEvent,
)
from pushflow.domain.models import NotificationStatus, Outcome
from pushflow.event_shapes import require
from pushflow.handler import task
from pushflow.http_resolver import ThreadSafeRestResolver
from pushflow.observability import logger
from pushflow.services import Services
from pushflow.validation import check_parameter, max_body_bytes, validate

# Thread-safe so that the local API Gateway can serve concurrent requests in one process.
app = ThreadSafeRestResolver()

Body = dict[str, Any]


class PayloadTooLarge(InvalidRequest):
    pass


class UnsupportedMediaType(InvalidRequest):
    pass


# No request needs more nesting than this; deeper JSON would only reach code that
# recurses (jsonschema, json.dumps, the payload builder) and end in a RecursionError.
MAX_BODY_DEPTH = 32


# -- answers ----------------------------------------------------------------------


def _json(status: int, body: Any) -> Response[Any]:
    return Response(status_code=status, content_type="application/json", body=json.dumps(body))


# An answer never carries the request back: messages and field paths may quote
# what the client sent (a key, a value), so each is cut to a size worth reading.
MAX_MESSAGE_CHARS = 300
MAX_FIELD_CHARS = 200


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _error(status: int, code: str, message: str, field: str | None = None) -> Response[Any]:
    body = {"error": code, "message": _bounded(message, MAX_MESSAGE_CHARS)}
    if field:
        body["field"] = _bounded(field, MAX_FIELD_CHARS)
    return _json(status, body)


@app.exception_handler(PayloadTooLarge)  # type: ignore[untyped-decorator]
def too_large(error: PayloadTooLarge) -> Response[Any]:
    return _error(413, "payload_too_large", error.message)


@app.exception_handler(UnsupportedMediaType)  # type: ignore[untyped-decorator]
def unsupported_media_type(error: UnsupportedMediaType) -> Response[Any]:
    return _error(415, "invalid_request", error.message)


@app.exception_handler(InvalidRequest)  # type: ignore[untyped-decorator]
def invalid_request(error: InvalidRequest) -> Response[Any]:
    # Every 400 names a field; a fault of the body as a whole is the `request`.
    return _error(400, "invalid_request", error.message, error.field or "request")


@app.exception_handler(Unauthorized)  # type: ignore[untyped-decorator]
def unauthorized(error: Unauthorized) -> Response[Any]:
    return _error(401, "unauthorized", str(error))


@app.exception_handler(Forbidden)  # type: ignore[untyped-decorator]
def forbidden(error: Forbidden) -> Response[Any]:
    return _error(403, "forbidden", str(error))


@app.exception_handler(NotFound)  # type: ignore[untyped-decorator]
def not_found(error: NotFound) -> Response[Any]:
    return _error(404, "not_found", str(error))


@app.exception_handler(Conflict)  # type: ignore[untyped-decorator]
def conflict(error: Conflict) -> Response[Any]:
    return _error(409, "conflict", str(error))


@app.exception_handler(TransientError)  # type: ignore[untyped-decorator]
def unavailable(error: TransientError) -> Response[Any]:
    logger.warning("dependency unavailable", extra={"error": str(error)})
    return _error(503, "unavailable", "a dependency is unavailable; retry with backoff")


@app.not_found
def unknown_route(_: Exception) -> Response[Any]:
    return _error(404, "not_found", "no such route")


@app.exception_handler(Exception)  # type: ignore[untyped-decorator]
def internal(error: Exception) -> Response[Any]:
    logger.exception("unhandled error")
    return _error(500, "internal", "internal error")


# -- request parts --------------------------------------------------------------------


def _services() -> Services:
    services: Services = app.context["services"]
    return services


def _end_user() -> str:
    """The signed-in user (Cognito `sub`); end-user routes act only for them."""
    claims = app.current_event.request_context.authorizer.claims or {}
    subject = claims.get("sub")
    if not subject:
        raise Unauthorized("this route needs a signed-in user's token")
    return str(subject)


def _backend() -> None:
    identity = app.current_event.request_context.identity
    if not (identity.api_key_id or identity.api_key):
        raise Unauthorized("this route needs a backend API key")


def _body(schema: str) -> Body:
    _require_json_content_type()
    raw = _raw_body()
    if len(raw.encode("utf-8", errors="surrogatepass")) > max_body_bytes():
        raise PayloadTooLarge(f"the body is larger than {max_body_bytes()} bytes")
    try:
        # NaN, Infinity and numbers too large for a double are not JSON, and
        # PostgreSQL's jsonb refuses them: a 400 here, not a 500 at the INSERT.
        document = json.loads(raw, parse_constant=_not_json, parse_float=_finite)
    except RecursionError:
        raise InvalidRequest(
            f"the body is nested deeper than {MAX_BODY_DEPTH} levels", "request"
        ) from None
    except ValueError:
        raise InvalidRequest("the body is not valid JSON", "request") from None
    _check_shape(document)
    validated: Body = dict(validate(schema, document))
    return validated


def _raw_body() -> str:
    """The body as text; API Gateway sends a binary one base64-encoded and says so."""
    event = app.current_event
    raw = event.body or ""
    if not event.is_base64_encoded:
        return raw
    # Base64 is 4/3 of the bytes: refuse what cannot fit before decoding it.
    if len(raw) > max_body_bytes() * 4 // 3 + 4:
        raise PayloadTooLarge(f"the body is larger than {max_body_bytes()} bytes")
    try:
        return base64.b64decode(raw, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise InvalidRequest("the body is not valid base64-encoded UTF-8", "request") from None


def _require_json_content_type() -> None:
    """Bodies are JSON; API Gateway takes a request without Content-Type as JSON too."""
    declared = (_header("Content-Type") or "").split(";", 1)[0].strip().lower()
    if declared and declared != "application/json" and not declared.endswith("+json"):
        raise UnsupportedMediaType(f"Content-Type must be application/json, not {declared!r}")


def _not_json(constant: str) -> Any:
    raise InvalidRequest(f"the body is not valid JSON: {constant} is not a JSON number", "request")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidRequest(f"the body is not valid JSON: {text[:40]} is out of range", "request")
    return value


def _check_shape(document: Any) -> None:
    """Refuse nesting deeper than MAX_BODY_DEPTH and text PostgreSQL cannot store
    (unpaired UTF-16 surrogates, e.g. a lone `\\ud800`), naming the field.

    Iterative on purpose: this runs before anything recursive sees the document.
    """
    pending: list[tuple[Any, tuple[str, ...]]] = [(document, ())]
    while pending:
        node, path = pending.pop()
        if len(path) > MAX_BODY_DEPTH:
            raise InvalidRequest(
                f"the body is nested deeper than {MAX_BODY_DEPTH} levels", ".".join(path[:8])
            )
        if isinstance(node, dict):
            for key, value in node.items():
                _check_text(key, ".".join(path) or "request")
                pending.append((value, (*path, key)))
        elif isinstance(node, list):
            pending.extend((item, (*path, str(index))) for index, item in enumerate(node))
        elif isinstance(node, str):
            _check_text(node, ".".join(path) or "request")


def _check_text(text: str, field: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(
            f"{field} is not valid Unicode (an unpaired surrogate)", field
        ) from None


def _header(name: str) -> str | None:
    headers = app.current_event.headers or {}
    wanted = name.lower()
    return next((value for key, value in headers.items() if key.lower() == wanted), None)


# The document's Idempotency-Key schema; API Gateway checks only that a header is there.
MAX_IDEMPOTENCY_KEY_CHARS = 128


def _idempotency_key() -> str | None:
    """The Idempotency-Key header, refused when PostgreSQL could not index or store it."""
    key = _header("Idempotency-Key")
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY_CHARS or not key.isprintable():
        raise InvalidRequest(
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable characters",
            "Idempotency-Key",
        )
    return key


def _path(name: str, matched: str) -> str:
    """A path parameter, decoded: API Gateway passes `path` percent-encoded (which the
    router matches on) and `pathParameters` decoded (which clients mean)."""
    value = (app.current_event.path_parameters or {}).get(name, matched)
    return check_parameter(name, value)


def _device_id(raw: str) -> int:
    if not raw.isdigit() or len(raw) > 18:
        raise NotFound(f"device {raw} not found")
    return int(raw)


def _applications() -> dict[tuple[str, bool], str | None]:
    settings = _services().settings
    return {
        ("ios", False): settings.apns_platform_application_arn,
        ("ios", True): settings.apns_sandbox_platform_application_arn,
        ("android", False): settings.fcm_platform_application_arn,
    }


# -- routes: health -----------------------------------------------------------------


@app.get("/health")
def health() -> Response[Any]:
    return _json(200, {"status": "ok"})


# -- routes: the signed-in user ---------------------------------------------------------


@app.put("/v1/me/devices")
def register_device() -> Response[Any]:
    user = _end_user()
    body = _body("DeviceRegistration")
    services = _services()
    device, created = registration.register_device(
        user, body, services.repository, services.endpoints, _applications()
    )
    return _json(201 if created else 200, device.to_dict())


@app.get("/v1/me/devices")
def list_devices() -> Response[Any]:
    devices = registration.list_devices(_end_user(), _services().repository)
    return _json(200, {"devices": [device.to_dict() for device in devices]})


@app.delete("/v1/me/devices/<device_id>")
def delete_device(device_id: str) -> Response[Any]:
    services = _services()
    registration.delete_device(
        _end_user(), _device_id(device_id), services.repository, services.endpoints
    )
    return Response(status_code=204)


@app.get("/v1/me/preferences")
def get_preferences() -> Response[Any]:
    preferences = registration.get_preferences(_end_user(), _services().repository)
    return _json(200, registration.preferences_view(preferences))


@app.put("/v1/me/preferences")
def replace_preferences() -> Response[Any]:
    user = _end_user()
    body = _body("Preferences")
    services = _services()
    preferences = registration.replace_preferences(
        user, body, services.repository, services.recipient_filter
    )
    return _json(200, registration.preferences_view(preferences))


@app.get("/v1/me/topics")
def list_topics() -> Response[Any]:
    return _json(200, {"topics": registration.topics(_end_user(), _services().repository)})


@app.put("/v1/me/topics/<topic>")
def subscribe(topic: str) -> Response[Any]:
    registration.subscribe(_end_user(), _path("topic", topic), _services().repository)
    return Response(status_code=204)


@app.delete("/v1/me/topics/<topic>")
def unsubscribe(topic: str) -> Response[Any]:
    registration.unsubscribe(_end_user(), _path("topic", topic), _services().repository)
    return Response(status_code=204)


# -- routes: backends ---------------------------------------------------------------------


@app.put("/v1/users/<external_id>")
def upsert_user(external_id: str) -> Response[Any]:
    _backend()
    external_id = _path("external_id", external_id)
    body = _body("UserProfile")
    user, created = registration.upsert_user(external_id, body, _services().repository)
    return _json(201 if created else 200, user.to_dict())


@app.post("/v1/notifications")
def send_notification() -> Response[Any]:
    _backend()
    request = _body("SendRequest")
    services = _services()
    key = _idempotency_key()
    if "send_at" in request:
        notification, created = scheduling.schedule_once(
            request, services.repository, services.scheduler, services.clock.now(), key
        )
    else:
        notification, created = sending.submit(
            request, services.repository, services.workflow, idempotency_key=key
        )
    answer = notification.to_dict()
    unknown = registration.unknown_external_ids(request, services.repository)
    if unknown is not None:
        # Unknown users are not an error (they may be created later) but not silent either.
        answer["unknown_external_ids"] = unknown
    return _json(202 if created else 200, answer)


@app.get("/v1/notifications/<notification_id>")
def get_notification(notification_id: str) -> Response[Any]:
    _backend()
    notification_id = _path("notification_id", notification_id)
    notification = registration.notification_view(notification_id, _services().repository)
    return _json(200, notification.to_dict())


@app.get("/v1/notifications/<notification_id>/deliveries")
def list_deliveries(notification_id: str) -> Response[Any]:
    _backend()
    notification_id = _path("notification_id", notification_id)
    query = app.current_event.query_string_parameters or {}
    try:
        limit = int(query.get("limit", 100))
    except ValueError:
        raise InvalidRequest("limit must be a whole number", "limit") from None
    if not 1 <= limit <= 1000:
        raise InvalidRequest("limit must be between 1 and 1000", "limit")
    after = query.get("after")
    if after is not None and not (after.isdigit() and len(after) <= 18):
        raise InvalidRequest("after must be a cursor from a previous page", "after")
    outcome = _choice(query, "outcome", OUTCOMES)
    platform = _choice(query, "platform", PLATFORMS)
    page = registration.deliveries_page(
        notification_id, _services().repository, after, limit, outcome, platform
    )
    return _json(200, page)


@app.post("/v1/notifications/<notification_id>/cancel")
def cancel_notification(notification_id: str) -> Response[Any]:
    _backend()
    notification_id = _path("notification_id", notification_id)
    notification = registration.cancel(notification_id, _services().repository)
    return _json(202, notification.to_dict())


@app.post("/v1/notifications/<notification_id>/redrive")
def redrive_notification(notification_id: str) -> Response[Any]:
    _backend()
    services = _services()
    notification = send_ends.redrive(
        notification_id, services.repository, services.executions, services.clock.now()
    )
    return _json(202, notification.to_dict())


@app.post("/v1/schedules")
def create_schedule() -> Response[Any]:
    _backend()
    body = _body("ScheduleRequest")
    services = _services()
    schedule, created = scheduling.create_schedule(
        body,
        services.repository,
        services.scheduler,
        services.workflow,
        services.clock.now(),
        timedelta(minutes=services.settings.min_recurrence_minutes),
        _idempotency_key(),
    )
    view = scheduling.schedule_view(schedule.id, services.repository, services.clock.now())
    return _json(201 if created else 200, view)


@app.get("/v1/schedules")
def list_schedules() -> Response[Any]:
    _backend()
    query = app.current_event.query_string_parameters or {}
    raw = query.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= 100:
        raise InvalidRequest("limit must be a whole number from 1 to 100", "limit")
    services = _services()
    now = services.clock.now()
    schedules = services.repository.list_schedules(int(raw))
    return _json(
        200,
        {
            "schedules": [
                scheduling.schedule_view(schedule.id, services.repository, now)
                for schedule in schedules
            ]
        },
    )


@app.get("/v1/schedules/<schedule_id>")
def get_schedule(schedule_id: str) -> Response[Any]:
    _backend()
    schedule_id = _path("schedule_id", schedule_id)
    services = _services()
    return _json(
        200, scheduling.schedule_view(schedule_id, services.repository, services.clock.now())
    )


@app.delete("/v1/schedules/<schedule_id>")
def cancel_schedule(schedule_id: str) -> Response[Any]:
    _backend()
    schedule_id = _path("schedule_id", schedule_id)
    services = _services()
    scheduling.cancel_schedule(schedule_id, services.repository, services.scheduler)
    return _json(
        200, scheduling.schedule_view(schedule_id, services.repository, services.clock.now())
    )


# -- routes: watching sends (the console reads these, as any backend may) ------------------

OUTCOMES = tuple(outcome.value for outcome in Outcome)
PLATFORMS = ("ios", "android")
STATUSES = tuple(status.value for status in NotificationStatus)


def _choice(query: dict[str, str], name: str, allowed: tuple[str, ...]) -> str | None:
    value = query.get(name)
    if value is None or value == "":
        return None
    if value not in allowed:
        raise InvalidRequest(f"{name} must be one of {', '.join(allowed)}", name)
    return value


def _whole(query: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name, str(default))
    # isdigit() alone takes "²" and other digits int() refuses.
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise InvalidRequest(f"{name} must be a whole number from {low} to {high}", name)
    return int(raw)


@app.get("/v1/notifications")
def list_notifications() -> Response[Any]:
    _backend()
    query = app.current_event.query_string_parameters or {}
    page = monitoring.sends_page(
        _services().repository,
        _whole(query, "limit", 50, 1, 200),
        query.get("cursor") or None,
        _choice(query, "status", STATUSES),
        _choice(query, "category", tuple(CATEGORIES)),
    )
    return _json(200, page)


@app.get("/v1/notifications/<notification_id>/execution")
def get_execution(notification_id: str) -> Response[Any]:
    _backend()
    query = app.current_event.query_string_parameters or {}
    services = _services()
    view = monitoring.execution_view(
        notification_id,
        services.repository,
        services.execution_reader,
        _whole(query, "first_page", 0, 0, 10_000_000),
        _whole(query, "pages", 50, 1, 200),
        query.get("children_token") or None,
    )
    return _json(200, view)


@app.get("/v1/users/<external_id>")
def get_user(external_id: str) -> Response[Any]:
    _backend()
    services = _services()
    view = monitoring.user_view(
        _path("external_id", external_id),
        services.repository,
        services.recipient_filter,
        services.clock.now(),
    )
    return _json(200, view)


def _rest_proxy_event(event: Any) -> dict[str, Any]:
    """The event as API Gateway's REST proxy sends it, or a named error saying what it is."""
    if isinstance(event, dict) and (event.get("version") == "2.0" or "routeKey" in event):
        raise UnsupportedEvent(
            "ApiFunction takes API Gateway REST proxy events (payload format 1.0), "
            "not HTTP API (payload format 2.0) events",
            "version",
        )
    if isinstance(event, dict) and "methodArn" in event:
        raise UnsupportedEvent(
            "ApiFunction takes API Gateway REST proxy events, not authorizer events", "methodArn"
        )
    checked = require(
        event, "ApiFunction", httpMethod=str, path=str, resource=str, requestContext=dict
    )
    return dict(checked)


@task
def lambda_handler(event: dict[str, Any], services: Services) -> dict[str, Any]:
    rest_event = _rest_proxy_event(event)
    app.append_context(services=services)  # type: ignore[no-untyped-call]
    return app.resolve(rest_event, _NO_CONTEXT)


class _NoContext:
    """The resolver wants a context; the handler decorator has already used the real one."""


_NO_CONTEXT: Any = _NoContext()
