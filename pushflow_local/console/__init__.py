"""The console: a send's execution, pages and deliveries in a browser, offline.

A WSGI application mounted under `/console` by `pushflow local serve`. It serves
one page and its assets from this package (nothing from a CDN) and reads
everything through the Pushflow API over HTTP, as a backend does: the browser
calls `/console/api/v1/...`, and the console forwards the call to the stage URL
with an operator API key minted at start, which the browser never sees. The
state machine it draws is the ASL file the local runtime loaded (the template's
`DefinitionUri`), served as it is on disk.
"""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from werkzeug.test import EnvironBuilder, run_wsgi_app
from werkzeug.wrappers import Request, Response

MOUNT = "/console"
# The page's assets, by name: nothing else is served from the package.
ASSETS = {
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "graph.js": "text/javascript; charset=utf-8",
}
# What the page may ask the API: reads, a send's cancel, a schedule's cancel.
FORWARDED_METHODS = ("GET", "POST", "DELETE")
API_TIMEOUT_SECONDS = 30
# The page polls: no API answer may come from the browser's cache.
NO_STORE = {"Cache-Control": "no-store"}


def mint_operator_key() -> str:
    """The console's API key, made at each start as the gateway's own key is."""
    return secrets.token_urlsafe(30)


class Console:
    """`Console(api_url, operator_key, definitions)` is a WSGI application;
    `api_url()` is the stage URL (known once the server is bound)."""

    def __init__(
        self, api_url: Callable[[], str], operator_key: str, definitions: dict[str, Path]
    ) -> None:
        self.api_url = api_url
        self.operator_key = operator_key
        self.definitions = definitions

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        response = self.dispatch(Request(environ))
        body: Iterable[bytes] = response(environ, start_response)
        return body

    def dispatch(self, request: Request) -> Response:
        # Mounted by a dispatcher, SCRIPT_NAME carries the mount; mounted by the
        # gateway's hook, the path still starts with it.
        path = request.path.removeprefix(MOUNT) if request.path.startswith(MOUNT) else request.path
        if path in ("", "/"):
            return self._asset("index.html", "text/html; charset=utf-8")
        if path.startswith("/static/"):
            name = path.removeprefix("/static/")
            if name not in ASSETS:
                return _text(404, "no such asset")
            return self._asset(name, ASSETS[name])
        if path == "/state-machines.json":
            return self._state_machines()
        if path.startswith("/api/"):
            return self._forward(request, path.removeprefix("/api"))
        return _text(404, "no such page")

    @staticmethod
    def _asset(name: str, content_type: str) -> Response:
        body = resources.files(__package__).joinpath("static", name).read_bytes()
        return Response(body, 200, content_type=content_type)

    def _state_machines(self) -> Response:
        """The deployed ASL files as the runtime loaded them, by logical id."""
        parts = [
            f"{json.dumps(logical_id)}: {path.read_text(encoding='utf-8')}"
            for logical_id, path in sorted(self.definitions.items())
        ]
        body = "{" + ",".join(parts) + "}"
        return Response(body, 200, content_type="application/json", headers=NO_STORE)

    def _forward(self, request: Request, api_path: str) -> Response:
        if not api_path.startswith("/v1/") or request.method not in FORWARDED_METHODS:
            return _text(404, "the console forwards only the API's /v1/ routes")
        url = self.api_url() + api_path
        query = request.query_string.decode("ascii", errors="replace")
        if query:
            url += "?" + query
        body = request.get_data() if request.method == "POST" else None
        headers = {"x-api-key": self.operator_key, "Content-Type": "application/json"}
        # The stage URL is http on the loopback interface, built by the server itself.
        outbound = urllib.request.Request(url, data=body, headers=headers, method=request.method)  # noqa: S310
        try:
            with urllib.request.urlopen(outbound, timeout=API_TIMEOUT_SECONDS) as answer:  # noqa: S310
                status, payload = answer.status, answer.read()
                content_type = answer.headers.get("Content-Type", "application/json")
        except urllib.error.HTTPError as error:
            status, payload = error.code, error.read()
            content_type = error.headers.get("Content-Type", "application/json")
        return Response(payload, status, content_type=content_type, headers=NO_STORE)


def _text(status: int, message: str) -> Response:
    return Response(message, status, content_type="text/plain; charset=utf-8")


def claims(path: str) -> bool:
    """Whether a request's path (with its query) is the console's."""
    return path == MOUNT or path.startswith((MOUNT + "/", MOUNT + "?"))


def answer(
    application: Console, method: str, raw_path: str, headers: list[tuple[str, str]], body: bytes
) -> tuple[int, list[tuple[str, str]], bytes]:
    """One request of the gateway's own HTTP server through the WSGI application:
    (status, headers, body). A WSGI server (werkzeug's) mounts the application as is."""
    path, _, query = raw_path.partition("?")
    environ = EnvironBuilder(
        path=path, query_string=query, method=method, headers=headers, data=body
    ).get_environ()
    chunks, status, response_headers = run_wsgi_app(application, environ, buffered=True)
    status_code = int(str(status).split(" ", 1)[0])
    return status_code, list(response_headers.items()), b"".join(chunks)
