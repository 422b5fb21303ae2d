"""The console's WSGI application on its own: what it serves, and that a WSGI
dispatcher can mount it under /console as the gateway's hook does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.test import Client
from werkzeug.wrappers import Response

from pushflow_local.console import Console, answer, claims
from pushflow_local.template import Template

pytestmark = pytest.mark.unit


# Whatever is not the console's: the gateway, in a dispatcher.
NOT_THE_GATEWAY = Response("gateway", 418)


@pytest.fixture
def console() -> Console:
    definitions = {m.logical_id: m.definition_path for m in Template().state_machines()}
    # No API behind it: these tests never reach /console/api.
    return Console(lambda: "http://127.0.0.1:9/api", "operator-key", definitions)


def test_mounted_by_a_dispatcher_it_serves_the_page_assets_and_the_deployed_asl(
    console: Console,
) -> None:
    client = Client(DispatcherMiddleware(NOT_THE_GATEWAY, {"/console": console}))

    page = client.get("/console/")
    assert page.status_code == 200
    assert b'<script src="/console/static/graph.js">' in page.data
    assert client.get("/console/static/console.js").status_code == 200
    assert client.get("/console/static/../__init__.py").status_code == 404
    served = json.loads(client.get("/console/state-machines.json").data)
    assert served == {
        m.logical_id: json.loads(Path(m.definition_path).read_text())
        for m in Template().state_machines()
    }
    assert client.get("/v1/anything").status_code == 418  # the rest is the gateway's


def test_the_gateway_hook_claims_only_console_paths_and_answers_through_wsgi(
    console: Console,
) -> None:
    assert claims("/console") and claims("/console/") and claims("/console/static/console.css")
    assert not claims("/consoleX") and not claims("/api/v1/notifications")

    status, headers, body = answer(console, "GET", "/console/static/console.css?v=1", [], b"")
    assert status == 200
    assert dict(headers)["Content-Type"].startswith("text/css")
    assert b"--succeeded" in body


def test_only_the_apis_v1_routes_are_forwarded(console: Console) -> None:
    status, _, _ = answer(console, "GET", "/console/api/health", [], b"")
    assert status == 404
    status, _, _ = answer(console, "PUT", "/console/api/v1/users/x", [], b"{}")
    assert status == 404
