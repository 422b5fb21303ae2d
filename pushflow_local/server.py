"""The local API Gateway: the OpenAPI document served over HTTP on localhost.

Deployed, API Gateway imports `schemas/openapi.yaml` and does five things
before ApiFunction sees a request: it matches the route, authenticates
(Cognito token or API key), throttles per API key (the usage plan), validates
the request, and turns it into a REST proxy event. Its refusals are the
document's gateway responses. This server does the same from the same
document, then calls ApiFunction in-process through the local runtime and
writes back the proxy response, so a client talks to it as to the stage URL.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, TextIO
from urllib.parse import parse_qsl, unquote

from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

from pushflow.domain.errors import InvalidRequest
from pushflow.validation import openapi, validate
from pushflow_local import console as console_app
from pushflow_local.auth import InvalidToken, LocalCredentials, load_credentials
from pushflow_local.runtime import ACCOUNT, LocalRuntime

STAGE = "api"
API_ID = "local"
# API Gateway's own limit on a request; ApiFunction enforces the document's smaller one.
MAX_REQUEST_BYTES = 10 * 1024 * 1024
# Usage-plan throttling when the template does not say (requests per second, burst).
DEFAULT_RATE_LIMIT = 100.0
DEFAULT_BURST_LIMIT = 200
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")

# What API Gateway answers when the document has no gateway response of a type:
# status, `$context.error.message`, and the `x-amzn-ErrorType` header.
GATEWAY_DEFAULTS: dict[str, tuple[int, str, str]] = {
    "MISSING_AUTHENTICATION_TOKEN": (
        403,
        "Missing Authentication Token",
        "MissingAuthenticationTokenException",
    ),
    "UNAUTHORIZED": (401, "Unauthorized", "UnauthorizedException"),
    "INVALID_API_KEY": (403, "Forbidden", "ForbiddenException"),
    "ACCESS_DENIED": (
        403,
        "User is not authorized to access this resource",
        "AccessDeniedException",
    ),
    "BAD_REQUEST_BODY": (400, "Invalid request body", "BadRequestException"),
    "BAD_REQUEST_PARAMETERS": (400, "Invalid request parameters", "BadRequestException"),
    "REQUEST_TOO_LARGE": (413, "Request Too Long", "RequestTooLongException"),
    "THROTTLED": (429, "Too Many Requests", "TooManyRequestsException"),
    "QUOTA_EXCEEDED": (429, "Limit Exceeded", "LimitExceededException"),
    "DEFAULT_4XX": (400, "Bad Request", "BadRequestException"),
    "DEFAULT_5XX": (500, "Internal server error", "InternalServerErrorException"),
}


class GatewayRefusal(Exception):
    """A request API Gateway answers itself, with one of the document's gateway responses."""

    def __init__(
        self, response_type: str, message: str | None = None, validation: str = ""
    ) -> None:
        super().__init__(response_type)
        self.response_type = response_type
        self.message = message or GATEWAY_DEFAULTS[response_type][1]
        self.validation = validation


# -- the document ---------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    template: str
    method: str
    pattern: re.Pattern[str]
    security: list[dict[str, list[str]]]
    parameters: list[dict[str, Any]]
    body_schema: str | None
    body_required: bool
    validate_body: bool
    validate_parameters: bool

    @property
    def literal_segments(self) -> int:
        return sum(1 for part in self.template.split("/") if part and "{" not in part)


def _template_regex(template: str) -> re.Pattern[str]:
    """`/v1/me/devices/{device_id}` → one segment per `{name}`; `{name+}` takes the rest."""
    parts = []
    for segment in template.strip("/").split("/"):
        greedy = re.fullmatch(r"\{(\w+)\+\}", segment)
        single = re.fullmatch(r"\{(\w+)\}", segment)
        if greedy:
            parts.append(f"(?P<{greedy.group(1)}>.+)")
        elif single:
            parts.append(f"(?P<{single.group(1)}>[^/]+)")
        else:
            parts.append(re.escape(segment))
    return re.compile("^/" + "/".join(parts) + "$")


def _component(schema: Mapping[str, Any] | None) -> str | None:
    ref = (schema or {}).get("$ref", "")
    prefix = "#/components/schemas/"
    return ref[len(prefix) :] if ref.startswith(prefix) else None


def load_operations(document: Mapping[str, Any]) -> list[Operation]:
    validators = document.get("x-amazon-apigateway-request-validators", {})
    default_validator = document.get("x-amazon-apigateway-request-validator")
    operations = []
    for template, path_item in document.get("paths", {}).items():
        shared = path_item.get("parameters", [])
        for method in METHODS:
            spec = path_item.get(method)
            if spec is None:
                continue
            by_key = {(p["name"], p["in"]): p for p in [*shared, *spec.get("parameters", [])]}
            body = spec.get("requestBody") or {}
            schema = body.get("content", {}).get("application/json", {}).get("schema")
            validator = validators.get(
                spec.get("x-amazon-apigateway-request-validator", default_validator), {}
            )
            operations.append(
                Operation(
                    template=template,
                    method=method.upper(),
                    pattern=_template_regex(template),
                    security=spec.get("security", document.get("security", [])),
                    parameters=list(by_key.values()),
                    body_schema=_component(schema),
                    body_required=bool(body.get("required")),
                    validate_body=bool(validator.get("validateRequestBody")),
                    validate_parameters=bool(validator.get("validateRequestParameters")),
                )
            )
    # API Gateway prefers literal path segments over variables (`/a/b` over `/a/{x}`).
    operations.sort(key=lambda op: -op.literal_segments)
    return operations


# template.yaml's parameters for the backend API key's usage plan.
RATE_PARAMETER, BURST_PARAMETER, QUOTA_PARAMETER = "ApiRateLimit", "ApiBurstLimit", "ApiDailyQuota"


def usage_plan_limits(parameters: Mapping[str, str]) -> tuple[float, int, int | None]:
    """(rate, burst, daily quota or None) from the template's parameter defaults."""

    def number(name: str) -> float | None:
        try:
            return float(parameters.get(name, ""))
        except ValueError:
            return None

    rate = number(RATE_PARAMETER) or DEFAULT_RATE_LIMIT
    burst = number(BURST_PARAMETER) or DEFAULT_BURST_LIMIT
    quota = number(QUOTA_PARAMETER)
    return rate, int(burst), int(quota) if quota else None


# -- throttling -------------------------------------------------------------------------


class TokenBucket:
    """A usage plan's throttle: `rate` requests a second on average, `burst` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = max(burst, 1)
        self._tokens = float(self.burst)
        self._updated = time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
            if self._tokens < 1:
                return False
            self._tokens -= 1
            return True


class DailyQuota:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._day = ""
        self._used = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            today = datetime.now(UTC).date().isoformat()
            if today != self._day:
                self._day, self._used = today, 0
            if self._used >= self.limit:
                return False
            self._used += 1
            return True


# -- requests and answers -------------------------------------------------------------


@dataclass
class GatewayRequest:
    method: str
    raw_path: str
    headers: list[tuple[str, str]]
    body: bytes
    source_ip: str = "127.0.0.1"
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        found = [value for key, value in self.headers if key.lower() == wanted]
        return found[-1] if found else None


@dataclass
class GatewayAnswer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class _Caller:
    api_key: str | None = None
    api_key_id: str | None = None
    claims: dict[str, str] | None = None


def _refuse_constant(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _claim_text(name: str, value: Any) -> str:
    """Claims as API Gateway hands them on: strings, times in its date format."""
    if name in ("exp", "iat", "auth_time") and isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC).strftime("%a %b %d %H:%M:%S UTC %Y")
    if isinstance(value, str):
        return value
    return json.dumps(value)


class LocalGateway:
    """API Gateway's part of a request, without the HTTP: testable on its own."""

    def __init__(
        self,
        runtime: LocalRuntime,
        credentials: LocalCredentials,
        document: Mapping[str, Any] | None = None,
        rate_limit: float | None = None,
        burst_limit: int | None = None,
        quota_limit: int | None = None,
        function: str = "ApiFunction",
    ) -> None:
        self.runtime = runtime
        self.credentials = credentials
        self.document = document if document is not None else openapi()
        self.operations = load_operations(self.document)
        self.schemes: dict[str, Any] = self.document.get("components", {}).get(
            "securitySchemes", {}
        )
        self.responses: dict[str, Any] = self.document.get(
            "x-amazon-apigateway-gateway-responses", {}
        )
        rate, burst, quota = usage_plan_limits(runtime.template.parameter_defaults())
        self.rate_limit = rate if rate_limit is None else rate_limit
        self.burst_limit = burst if burst_limit is None else burst_limit
        self.quota_limit = quota if quota_limit is None else quota_limit
        self._buckets: dict[str, TokenBucket] = {}
        self._quotas: dict[str, DailyQuota] = {}
        self._limits_lock = threading.Lock()
        self.function = function
        # Keys minted at start for the console (key -> key id), besides the backends' key.
        self.operator_keys: dict[str, str] = {}
        # Query parameters the document declares: the only ones whose values are logged.
        self.query_names = frozenset(
            parameter["name"]
            for operation in self.operations
            for parameter in operation.parameters
            if parameter.get("in") == "query"
        )
        # Where the request and execution lines go; None: standard error.
        self.log: TextIO | None = None
        self.quiet = False

    # -- the pipeline --------------------------------------------------------------

    def handle(self, request: GatewayRequest) -> GatewayAnswer:
        try:
            if len(request.body) > MAX_REQUEST_BYTES:
                raise GatewayRefusal("REQUEST_TOO_LARGE")
            path, query = self._split(request.raw_path)
            operation, path_parameters = self._route(request.method, path)
            caller = self._authenticate(operation, request)
            self._throttle(caller)
            self._validate(operation, request, query)
            event = self._event(operation, request, path, query, path_parameters, caller)
        except GatewayRefusal as refusal:
            return self.gateway_response(refusal, request.request_id)
        return self._integrate(event, request.request_id)

    @staticmethod
    def _split(raw_path: str) -> tuple[str, str]:
        path, _, query = raw_path.partition("?")
        # The stage is part of the deployed URL (`.../api/v1/...`); locally it is optional.
        if path == f"/{STAGE}" or path.startswith(f"/{STAGE}/"):
            path = path[len(STAGE) + 1 :] or "/"
        return path, query

    def _route(self, method: str, path: str) -> tuple[Operation, dict[str, str]]:
        for operation in self.operations:
            matched = operation.pattern.match(path)
            if matched and operation.method == method:
                return operation, {k: unquote(v) for k, v in matched.groupdict().items()}
        # An unknown route, or a method the route lacks: API Gateway cannot tell
        # "no such route" from "not allowed", and answers both alike.
        raise GatewayRefusal("MISSING_AUTHENTICATION_TOKEN")

    def _authenticate(self, operation: Operation, request: GatewayRequest) -> _Caller:
        if not operation.security:
            return _Caller()
        refusal: GatewayRefusal | None = None
        for requirement in operation.security:  # alternatives; each one's schemes all apply
            caller = _Caller()
            try:
                for name in requirement:
                    self._apply_scheme(name, request, caller)
            except GatewayRefusal as error:
                refusal = refusal or error
                continue
            return caller
        assert refusal is not None
        raise refusal

    def _apply_scheme(self, name: str, request: GatewayRequest, caller: _Caller) -> None:
        scheme = self.schemes.get(name, {})
        authorizer = scheme.get("x-amazon-apigateway-authorizer", {})
        if (
            scheme.get("x-amazon-apigateway-authtype") == "cognito_user_pools"
            or authorizer.get("type") == "cognito_user_pools"
        ):
            raw = (request.header(scheme.get("name", "Authorization")) or "").strip()
            # Cognito's authorizer takes the raw token; a `Bearer ` prefix is accepted too.
            token = raw[7:].strip() if raw.lower().startswith("bearer ") else raw
            if not token:
                raise GatewayRefusal("UNAUTHORIZED")
            try:
                claims = self.credentials.verify_token(token)
            except InvalidToken:
                raise GatewayRefusal("UNAUTHORIZED") from None
            caller.claims = {key: _claim_text(key, value) for key, value in claims.items()}
        elif scheme.get("type") == "apiKey" and scheme.get("name", "").lower() == "x-api-key":
            sent = request.header("x-api-key") or ""
            keys = {self.credentials.api_key: self.credentials.api_key_id, **self.operator_keys}
            key = next((k for k in keys if secrets.compare_digest(sent.encode(), k.encode())), None)
            if key is None:
                raise GatewayRefusal("INVALID_API_KEY")
            caller.api_key = key
            caller.api_key_id = keys[key]
        else:
            raise RuntimeError(f"the local gateway does not know security scheme {name!r}")

    def _throttle(self, caller: _Caller) -> None:
        """The usage plan throttles and counts per API key."""
        if caller.api_key_id is None:
            return
        with self._limits_lock:
            bucket = self._buckets.setdefault(
                caller.api_key_id, TokenBucket(self.rate_limit, self.burst_limit)
            )
            quota = (
                self._quotas.setdefault(caller.api_key_id, DailyQuota(self.quota_limit))
                if self.quota_limit
                else None
            )
        if not bucket.take():
            raise GatewayRefusal("THROTTLED")
        if quota is not None and not quota.take():
            raise GatewayRefusal("QUOTA_EXCEEDED")

    def _validate(self, operation: Operation, request: GatewayRequest, query: str) -> None:
        if operation.validate_parameters:
            # API Gateway's parameter validation checks that required parameters are
            # there and not blank; it does not apply their schemas (ApiFunction does).
            present = {name for name, value in parse_qsl(query, keep_blank_values=True) if value}
            missing = [
                parameter["name"]
                for parameter in operation.parameters
                if parameter.get("required")
                and (
                    (parameter["in"] == "query" and parameter["name"] not in present)
                    or (parameter["in"] == "header" and not request.header(parameter["name"]))
                )
            ]
            if missing:
                raise GatewayRefusal(
                    "BAD_REQUEST_PARAMETERS",
                    f"Missing required request parameters: [{', '.join(missing)}]",
                )
        if not (operation.validate_body and operation.body_schema):
            return
        if not request.body and not operation.body_required:
            return
        try:
            # API Gateway's parser refuses NaN/Infinity, as JSON does.
            document = json.loads(request.body, parse_constant=_refuse_constant)
        except ValueError:
            raise GatewayRefusal(
                "BAD_REQUEST_BODY", validation="the body is not valid JSON"
            ) from None
        except RecursionError:
            # Thousands of nested arrays: a refusal, not a 5xx from the recursion limit.
            raise GatewayRefusal(
                "BAD_REQUEST_BODY", validation="the body is nested too deeply"
            ) from None
        try:
            validate(operation.body_schema, document)
        except InvalidRequest as error:
            raise GatewayRefusal("BAD_REQUEST_BODY", validation=error.message) from None
        except RecursionError:
            # Parseable yet deep enough that the (recursive) validator runs out of stack.
            raise GatewayRefusal(
                "BAD_REQUEST_BODY", validation="the body is nested too deeply"
            ) from None

    # -- the proxy event and the function's answer -------------------------------------

    def _event(
        self,
        operation: Operation,
        request: GatewayRequest,
        path: str,
        query: str,
        path_parameters: dict[str, str],
        caller: _Caller,
    ) -> dict[str, Any]:
        headers: dict[str, str] = {}
        multi_headers: dict[str, list[str]] = {}
        for name, value in request.headers:
            headers[name] = value
            multi_headers.setdefault(name, []).append(value)
        port = request.header("host") or ""
        for name, value in (
            ("X-Forwarded-For", request.source_ip),
            ("X-Forwarded-Port", port.rpartition(":")[2] if ":" in port else "80"),
            ("X-Forwarded-Proto", "http"),
        ):
            if request.header(name) is None:
                headers[name] = value
                multi_headers[name] = [value]
        pairs = parse_qsl(query, keep_blank_values=True)
        multi_query: dict[str, list[str]] = {}
        for name, value in pairs:
            multi_query.setdefault(name, []).append(value)
        now = time.time()
        request_context: dict[str, Any] = {
            "resourceId": "local",
            "resourcePath": operation.template,
            "httpMethod": request.method,
            "extendedRequestId": request.request_id,
            "requestTime": datetime.fromtimestamp(now, UTC).strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "path": f"/{STAGE}{path}",
            "accountId": ACCOUNT,
            "protocol": "HTTP/1.1",
            "stage": STAGE,
            "domainPrefix": API_ID,
            "requestTimeEpoch": int(now * 1000),
            "requestId": request.request_id,
            "identity": {
                "cognitoIdentityPoolId": None,
                "accountId": None,
                "cognitoIdentityId": None,
                "caller": None,
                "sourceIp": request.source_ip,
                "principalOrgId": None,
                "accessKey": None,
                "cognitoAuthenticationType": None,
                "cognitoAuthenticationProvider": None,
                "userArn": None,
                "userAgent": request.header("user-agent"),
                "user": None,
                "apiKey": caller.api_key,
                "apiKeyId": caller.api_key_id,
            },
            "domainName": request.header("host") or "localhost",
            "apiId": API_ID,
        }
        if caller.claims is not None:
            request_context["authorizer"] = {"claims": caller.claims}
        return {
            "resource": operation.template,
            "path": path,
            "httpMethod": request.method,
            "headers": headers or None,
            "multiValueHeaders": multi_headers or None,
            "queryStringParameters": {name: values[-1] for name, values in multi_query.items()}
            or None,
            "multiValueQueryStringParameters": multi_query or None,
            "pathParameters": path_parameters or None,
            "stageVariables": None,
            "requestContext": request_context,
            "body": request.body.decode("utf-8", errors="replace") if request.body else None,
            "isBase64Encoded": False,
        }

    def _integrate(self, event: dict[str, Any], request_id: str) -> GatewayAnswer:
        try:
            # Concurrent requests run ApiFunction at once, as concurrent Lambda
            # instances would: its resolver keeps each request's state per thread.
            result = self.runtime.invoke(self.function, event)
            answer = self._proxy_answer(result)
        except Exception:
            self._say(f"{self.function} failed on request {request_id}:\n{traceback.format_exc()}")
            return self.gateway_response(GatewayRefusal("DEFAULT_5XX"), request_id)
        answer.headers.append(("x-amzn-RequestId", request_id))
        return answer

    @staticmethod
    def _proxy_answer(result: Any) -> GatewayAnswer:
        if not isinstance(result, Mapping) or not isinstance(result.get("statusCode"), int):
            raise ValueError(f"malformed Lambda proxy response: {result!r:.200}")
        headers: list[tuple[str, str]] = []
        multi = result.get("multiValueHeaders") or {}
        for name, values in multi.items():
            headers += [(name, str(value)) for value in values]
        taken = {name.lower() for name in multi}
        headers += [
            (name, str(value))
            for name, value in (result.get("headers") or {}).items()
            if name.lower() not in taken
        ]
        body = result.get("body") or ""
        raw = base64.b64decode(body) if result.get("isBase64Encoded") else str(body).encode()
        return GatewayAnswer(result["statusCode"], headers, raw)

    # -- gateway responses ------------------------------------------------------------

    def gateway_response(self, refusal: GatewayRefusal, request_id: str) -> GatewayAnswer:
        kind = refusal.response_type
        default_status, _, error_type = GATEWAY_DEFAULTS[kind]
        family = "DEFAULT_5XX" if default_status >= 500 else "DEFAULT_4XX"
        spec = self.responses.get(kind) or self.responses.get(family) or {}
        status = int(spec.get("statusCode", default_status))
        templates: dict[str, str] = spec.get("responseTemplates") or {}
        template = templates.get("application/json") or next(
            iter(templates.values()), '{"message":$context.error.messageString}'
        )
        values = {
            "context.error.messageString": json.dumps(refusal.message),
            # Inside a JSON template the plain values must not break the JSON.
            "context.error.message": json.dumps(refusal.message)[1:-1],
            "context.error.validationErrorString": json.dumps(refusal.validation)[1:-1],
            "context.error.responseType": kind,
            "context.requestId": request_id,
            "context.extendedRequestId": request_id,
        }
        body = template
        for name in sorted(values, key=len, reverse=True):
            body = body.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
        headers = [
            ("Content-Type", "application/json"),
            ("x-amzn-RequestId", request_id),
            ("x-amzn-ErrorType", error_type),
        ]
        for name, value in (spec.get("responseParameters") or {}).items():
            # Only static values ('...') mean something without a deployed stage.
            header = name.removeprefix("gatewayresponse.header.")
            if header != name and value.startswith("'") and value.endswith("'"):
                headers.append((header, value[1:-1]))
        return GatewayAnswer(status, headers, body.encode())

    def _say(self, line: str) -> None:
        if not self.quiet:
            print(line, file=self.log or sys.stderr, flush=True)


# -- HTTP -------------------------------------------------------------------------------
#
# werkzeug's threaded WSGI server does the HTTP framing (it is what `sam local
# start-api` runs on, through Flask, and moto already depends on it). Framing
# faults it leaves to the application (a bad chunk size, a Content-Length of
# `-1` or `abc`, a body shorter than announced) and the ones it answers itself
# (a malformed request line) are all answered here in API Gateway's JSON shape.

# Connections waiting to be accepted: a burst of clients must queue, not be reset.
LISTEN_BACKLOG = 1024
# A client that stops sending mid-request is answered (or dropped) after this.
READ_TIMEOUT_SECONDS = 30.0

_StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class _BadFraming(Exception):
    """The request's framing is broken: answered 400, and the connection closed."""


def _request_body(environ: Mapping[str, Any]) -> tuple[bytes, bool]:
    """The body, and False when it is over API Gateway's limit (not kept in memory)."""
    stream = environ["wsgi.input"]
    try:
        if environ.get("wsgi.input_terminated"):  # chunked: werkzeug decodes the chunks
            body = stream.read(MAX_REQUEST_BYTES + 1)
            return (b"", False) if len(body) > MAX_REQUEST_BYTES else (body, True)
        declared = environ.get("CONTENT_LENGTH") or ""
        if not declared:
            return b"", True
        if not declared.isdigit():
            raise _BadFraming(f"Content-Length {declared[:20]!r} is not a length")
        length = int(declared)
        if length > MAX_REQUEST_BYTES:
            return b"", False  # werkzeug drains what was sent after the answer
        body = stream.read(length)
    except OSError as error:  # a bad chunk header, a timeout, a connection reset
        raise _BadFraming(f"the body could not be read: {error}") from None
    if len(body) < length:
        raise _BadFraming("the body is shorter than its Content-Length")
    return body, True


def _request_headers(environ: Mapping[str, Any]) -> list[tuple[str, str]]:
    headers = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            headers.append((key[5:].replace("_", "-").title(), value))
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            headers.append((key.replace("_", "-").title(), value))
    return headers


class _GatewayApp:
    """The WSGI application: each request through the gateway, every answer its JSON."""

    def __init__(self, gateway: LocalGateway, console: console_app.Console | None = None) -> None:
        self.gateway = gateway
        self.console = console

    def __call__(self, environ: dict[str, Any], start_response: _StartResponse) -> Iterable[bytes]:
        if self.console is not None and console_app.claims(environ.get("PATH_INFO", "")):
            return self.console(environ, start_response)  # the console, mounted at /console
        started = time.monotonic()
        gateway = self.gateway
        raw_path = environ.get("RAW_URI") or environ.get("PATH_INFO", "/")
        method = environ.get("REQUEST_METHOD", "GET")
        close = False
        try:
            body, complete = _request_body(environ)
        except _BadFraming as error:
            answer = gateway.gateway_response(
                GatewayRefusal("DEFAULT_4XX", str(error)), str(uuid.uuid4())
            )
            close = True
        else:
            request = GatewayRequest(
                method=method,
                raw_path=raw_path,
                headers=_request_headers(environ),
                body=body,
                source_ip=environ.get("REMOTE_ADDR", "127.0.0.1"),
            )
            if not complete:
                answer = gateway.gateway_response(
                    GatewayRefusal("REQUEST_TOO_LARGE"), request.request_id
                )
                close = True
            else:
                try:
                    answer = gateway.handle(request)
                except Exception:  # a fault of the local gateway itself: answer, and say why
                    gateway._say(f"the local gateway failed:\n{traceback.format_exc()}")
                    answer = gateway.gateway_response(
                        GatewayRefusal("DEFAULT_5XX"), request.request_id
                    )
        skipped = {"content-length", "transfer-encoding", "connection", "date", "server"}
        headers = [(name, value) for name, value in answer.headers if name.lower() not in skipped]
        headers.append(("Content-Length", str(len(answer.body))))
        if close:
            headers.append(("Connection", "close"))
        start_response(f"{answer.status} {_reason(answer.status)}", headers)
        gateway._say(
            f"[api] {method} {_loggable(raw_path, gateway.query_names)} {answer.status} "
            f"{(time.monotonic() - started) * 1000:.0f}ms"
        )
        return [] if method == "HEAD" else [answer.body]


class _RequestHandler(WSGIRequestHandler):
    """werkzeug's handler, with what API Gateway would not show changed."""

    timeout = READ_TIMEOUT_SECONDS

    def version_string(self) -> str:
        return "Pushflow local API Gateway"

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """A request werkzeug could not parse (request line, headers): still JSON."""
        gateway: LocalGateway = self.server.app.gateway  # type: ignore[attr-defined]
        answer = gateway.gateway_response(
            GatewayRefusal("DEFAULT_4XX", _reason(code) or "Bad Request"), str(uuid.uuid4())
        )
        self.close_connection = True
        # A line too broken to name its version is answered with a status line anyway.
        self.request_version = "HTTP/1.1"
        self.send_response_only(code, _reason(code))
        for name, value in answer.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(answer.body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # the application writes one line per request, without secrets

    def log_error(self, format: str, *args: Any) -> None:
        pass  # what a client got wrong is in its answer, not the server's log


class _HttpServer(ThreadedWSGIServer):
    daemon_threads = True


def _loggable(raw_path: str, query_names: frozenset[str] = frozenset()) -> str:
    """The request line's path for the log: control characters escaped (a client must
    not write terminal escapes or fake lines into the log), and the value of every query
    parameter the document does not declare hidden (an API key sent as `?api_key=`)."""
    path, mark, query = raw_path.partition("?")
    if mark:
        shown = []
        for pair in query.split("&"):
            name, equals, _ = pair.partition("=")
            shown.append(pair if unquote(name) in query_names else f"{name}{equals and '=***'}")
        path = f"{path}?{'&'.join(shown)}"
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in path)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


# -- executions ----------------------------------------------------------------------------


class ExecutionLog:
    """Logs each state-machine execution once, when it finishes."""

    def __init__(self, runtime: LocalRuntime, say: Any, interval: float = 0.5) -> None:
        self.runtime = runtime
        self.say = say
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="execution-log", daemon=True)
        self._seen: set[str] = set()

    def start(self) -> None:
        # What had finished before the server started is not news.
        self._seen = {e["executionArn"] for e in self._finished()}
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _finished(self) -> Iterable[dict[str, Any]]:
        sfn = self.runtime.client("stepfunctions")
        kwargs: dict[str, Any] = {"stateMachineArn": self.runtime.state_machine_arn}
        while True:
            page = sfn.list_executions(**kwargs)
            yield from (e for e in page["executions"] if e["status"] != "RUNNING")
            if not page.get("nextToken"):
                return
            kwargs["nextToken"] = page["nextToken"]

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                for execution in self._finished():
                    if execution["executionArn"] in self._seen:
                        continue
                    self._seen.add(execution["executionArn"])
                    seconds = (execution["stopDate"] - execution["startDate"]).total_seconds()
                    self.say(f"[sfn] {execution['name']} {execution['status']} {seconds:.1f}s")
            except Exception as error:  # the log must not take the server down
                self.say(f"[sfn] could not list executions: {error}")


# -- the server ----------------------------------------------------------------------------


class LocalApiServer:
    """The local stage: `with LocalApiServer(runtime, port=0) as api: api.url ...`."""

    def __init__(
        self,
        runtime: LocalRuntime,
        host: str = "127.0.0.1",
        port: int = 3000,
        *,
        credentials: LocalCredentials | None = None,
        rate_limit: float | None = None,
        burst_limit: int | None = None,
        quota_limit: int | None = None,
        log: TextIO | None = None,
        quiet: bool = False,
        log_executions: bool = True,
        console: bool = False,
    ) -> None:
        self.runtime = runtime
        self.credentials = credentials or load_credentials()
        self.gateway = LocalGateway(
            runtime,
            self.credentials,
            rate_limit=rate_limit,
            burst_limit=burst_limit,
            quota_limit=quota_limit,
        )
        self.gateway.log = log
        self.gateway.quiet = quiet
        self._address = (host, port)
        self._http: _HttpServer | None = None
        self._thread: threading.Thread | None = None
        self._executions = ExecutionLog(runtime, self.gateway._say) if log_executions else None
        self.console: console_app.Console | None = None
        if console:
            operator_key = console_app.mint_operator_key()
            self.gateway.operator_keys[operator_key] = f"console{secrets.token_hex(4)}"
            definitions = {
                m.logical_id: m.definition_path for m in runtime.template.state_machines()
            }
            self.console = console_app.Console(lambda: self.url, operator_key, definitions)

    @property
    def api_key(self) -> str:
        return self.credentials.api_key

    @property
    def url(self) -> str:
        """The stage URL, as the stack's `ApiUrl` output names it (append `/v1/...`)."""
        if self._http is None:
            raise RuntimeError("the server is not running")
        host, port = self._http.server_address[:2]
        return f"http://{host!s}:{port}/{STAGE}"

    def mint_token(self, sub: str, **claims: Any) -> str:
        return self.credentials.mint_token(sub, **claims)

    def start(self) -> None:
        # Bound here, not by werkzeug: a busy port is an OSError for the caller to report
        # (werkzeug would print and exit), and the backlog is ours to choose.
        with socket.create_server(self._address, backlog=LISTEN_BACKLOG) as listening:
            host, port = listening.getsockname()[:2]
            self._http = _HttpServer(
                host,
                port,
                _GatewayApp(self.gateway, self.console),
                handler=_RequestHandler,
                fd=listening.fileno(),
            )
        self._thread = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
        )
        self._thread.start()
        if self._executions is not None:
            self._executions.start()

    def stop(self) -> None:
        if self._executions is not None:
            self._executions.stop()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> LocalApiServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
