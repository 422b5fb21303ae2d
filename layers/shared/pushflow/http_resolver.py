"""Powertools' REST resolver, safe to call from several threads at once.

Deployed, a Lambda instance serves one event at a time, and Powertools keeps
the current event where that is enough: `resolve` stores it on the class
`BaseRouter` (shared by every resolver in the process) and the resolver's
`context` is one dict. The local API Gateway serves concurrent requests from
threads in one process, so this subclass keeps the three per thread.

It leans on how `resolve` works inside (it reads the event back through
`self.current_event`, `self.lambda_context` and `self.context`), which is why
it is the only module that does: tests/unit/test_http_resolver.py resolves two
events at once and fails if a new Powertools mixes them up.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver


class _PerThread:
    """A data descriptor: each thread sees the value it set (or the default's)."""

    def __init__(self, default: Callable[[], Any] | None = None) -> None:
        self._default = default
        self._values = threading.local()

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        try:
            return getattr(self._values, self._name)
        except AttributeError:
            if self._default is None:
                raise AttributeError(self._name) from None
            value = self._default()
            setattr(self._values, self._name, value)
            return value

    def __set__(self, instance: Any, value: Any) -> None:
        setattr(self._values, self._name, value)


class ThreadSafeRestResolver(APIGatewayRestResolver):
    """`APIGatewayRestResolver` whose event, Lambda context and `context` are per thread.

    One resolver per module (as Powertools intends): a second instance would
    share these values with the first within a thread.
    """

    current_event = _PerThread()
    lambda_context = _PerThread()
    context = _PerThread(dict)

    def resolve(self, event: Mapping[str, Any], context: Any) -> dict[str, Any]:
        self.current_event = self._to_proxy_event(dict(event))
        self.lambda_context = context
        result: dict[str, Any] = super().resolve(event, context)
        return result
