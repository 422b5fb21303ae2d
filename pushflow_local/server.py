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
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TextIO
from urllib.parse import parse_qsl, unquote

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
        # Powertools' resolver keeps the current event on the module's `app`, and a
        # Lambda instance serves one event at a time: so does the local one.
        self._invoke_lock = threading.Lock()
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
            with self._invoke_lock:
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


class _Handler(BaseHTTPRequestHandler):
    server: _HttpServer
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        started = time.monotonic()
        gateway = self.server.gateway
        body, complete = self._read_body()
        request = GatewayRequest(
            method=self.command,
            raw_path=self.path,
            headers=list(self.headers.items()),
            body=body,
            source_ip=self.client_address[0],
        )
        console = self.server.console
        if complete and console is not None and console_app.claims(self.path):
            answer = GatewayAnswer(
                *console_app.answer(console, self.command, self.path, request.headers, body)
            )
        elif not complete:
            answer = gateway.gateway_response(
                GatewayRefusal("REQUEST_TOO_LARGE"), request.request_id
            )
            self.close_connection = True
        else:
            try:
                answer = gateway.handle(request)
            except Exception:  # a fault of the local gateway itself: answer, and say why
                gateway._say(f"the local gateway failed:\n{traceback.format_exc()}")
                answer = gateway.gateway_response(GatewayRefusal("DEFAULT_5XX"), request.request_id)
        self._write(answer)
        gateway._say(
            f"[api] {self.command} {_loggable(self.path)} {answer.status} "
            f"{(time.monotonic() - started) * 1000:.0f}ms"
        )

    def _read_body(self) -> tuple[bytes, bool]:
        """The body, and False when it is over API Gateway's limit (not kept in memory)."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            size = 0
            while True:
                length = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if length == 0:
                    self.rfile.readline()  # the blank line after the last chunk
                    break
                size += length
                chunk = self.rfile.read(length)
                self.rfile.readline()
                if size <= MAX_REQUEST_BYTES:
                    chunks.append(chunk)
            return b"".join(chunks), size <= MAX_REQUEST_BYTES
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        if length > MAX_REQUEST_BYTES:
            # Drain it so the client can read the answer, a block at a time.
            left = length
            while left > 0:
                read = self.rfile.read(min(left, 1 << 20))
                if not read:
                    break
                left -= len(read)
            return b"", False
        return self.rfile.read(length) if length else b"", True

    def _write(self, answer: GatewayAnswer) -> None:
        self.send_response_only(answer.status, _reason(answer.status))
        self.send_header("Date", self.date_time_string())
        skipped = {"content-length", "transfer-encoding", "connection", "date"}
        for name, value in answer.headers:
            if name.lower() not in skipped:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer.body)

    do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request is written by _serve instead


def _loggable(text: str) -> str:
    """The request line's path with control characters escaped: a client must not be
    able to write terminal escape sequences (or fake lines) into the server's log."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    gateway: LocalGateway
    console: console_app.Console | None = None


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
        self._http = _HttpServer(self._address, _Handler)
        self._http.gateway = self.gateway
        self._http.console = self.console
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
