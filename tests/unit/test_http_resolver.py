"""ThreadSafeRestResolver: two requests resolved at once each see their own event.

Plain Powertools keeps the current event on a class shared by the process:
the second request's event replaces the first's while the first is still
being answered. This test fails loudly if a Powertools release changes how
`resolve` keeps the event (pushflow/http_resolver.py leans on it).
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response

from pushflow.http_resolver import ThreadSafeRestResolver

pytestmark = pytest.mark.unit


def _event(user: str) -> dict[str, Any]:
    return {
        "resource": "/users/{user}",
        "path": f"/users/{user}",
        "httpMethod": "GET",
        "headers": {"x-user": user},
        "multiValueHeaders": {"x-user": [user]},
        "queryStringParameters": None,
        "pathParameters": {"user": user},
        "requestContext": {"resourcePath": "/users/{user}", "httpMethod": "GET", "stage": "api"},
        "body": None,
        "isBase64Encoded": False,
    }


def _answers_of_two_concurrent_requests(app: APIGatewayRestResolver) -> list[dict[str, Any]]:
    both_inside = threading.Barrier(2, timeout=10)

    @app.get("/users/<user>")
    def who(user: str) -> Response[Any]:
        app.append_context(user=user)  # type: ignore[no-untyped-call]
        # Both requests are inside their route before either reads the event again.
        both_inside.wait()
        body = {
            "path": user,
            "header": app.current_event.headers["x-user"],
            "context": app.context["user"],
        }
        return Response(200, "application/json", json.dumps(body))

    answers: dict[str, dict[str, Any]] = {}

    def call(user: str) -> None:
        try:
            answers[user] = json.loads(app.resolve(_event(user), {})["body"])
        except Exception as error:  # the other request's state broke this one
            answers[user] = {"error": type(error).__name__}

    threads = [threading.Thread(target=call, args=(user,)) for user in ("alice", "bob")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    return [answers.get("alice", {}), answers.get("bob", {})]


EACH_OWN = [
    {"path": "alice", "header": "alice", "context": "alice"},
    {"path": "bob", "header": "bob", "context": "bob"},
]


def test_each_thread_answers_with_its_own_event_and_context() -> None:
    assert _answers_of_two_concurrent_requests(ThreadSafeRestResolver()) == EACH_OWN


def test_plain_powertools_mixes_them_up_which_is_why_the_subclass_exists() -> None:
    # If this fails, Powertools became thread-safe and the subclass can go.
    assert _answers_of_two_concurrent_requests(APIGatewayRestResolver()) != EACH_OWN
