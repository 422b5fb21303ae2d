"""ApiFunction: the HTTP API behind API Gateway (Powertools event handler)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.exceptions import NotFoundError

from pushflow.domain import sending
from pushflow.domain.errors import Conflict, InvalidRequest, NotFound
from pushflow.handler import task
from pushflow.services import Services
from pushflow.validation import validate

app = APIGatewayRestResolver()


def _json(status: int, body: dict[str, Any]) -> Response[dict[str, Any]]:
    return Response(status_code=status, content_type="application/json", body=body)


@app.exception_handler(InvalidRequest)  # type: ignore[untyped-decorator]
def invalid_request(error: InvalidRequest) -> Response[dict[str, Any]]:
    return _json(400, error.to_dict())


@app.exception_handler(NotFound)  # type: ignore[untyped-decorator]
def not_found(error: NotFound) -> Response[dict[str, Any]]:
    return _json(404, {"error": "not_found", "message": str(error)})


@app.exception_handler(Conflict)  # type: ignore[untyped-decorator]
def conflict(error: Conflict) -> Response[dict[str, Any]]:
    return _json(409, {"error": "conflict", "message": str(error)})


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/v1/notifications")
def send_notification() -> Response[dict[str, Any]]:
    try:
        body = app.current_event.json_body
    except ValueError:
        raise InvalidRequest("the body is not valid JSON") from None
    request = validate("send_request", body)
    services: Services = app.context["services"]
    key = app.current_event.headers.get("Idempotency-Key") or app.current_event.headers.get(
        "idempotency-key"
    )
    notification, created = sending.submit(
        request, services.repository, services.workflow, idempotency_key=key
    )
    return _json(202 if created else 200, notification.to_dict())


@app.get("/v1/notifications/<notification_id>")
def get_notification(notification_id: str) -> dict[str, Any]:
    try:
        services: Services = app.context["services"]
        return services.repository.get_notification(notification_id).to_dict()
    except NotFound as error:
        raise NotFoundError(str(error)) from None


@task
def lambda_handler(event: dict[str, Any], services: Services) -> dict[str, Any]:
    app.append_context(services=services)  # type: ignore[no-untyped-call]
    return app.resolve(event, _NO_CONTEXT)


class _NoContext:
    """The resolver wants a context; the handler decorator has already used the real one."""


_NO_CONTEXT: Any = _NoContext()
