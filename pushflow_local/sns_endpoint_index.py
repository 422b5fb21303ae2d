"""moto's CreatePlatformEndpoint without its scan of every endpoint.

moto's `SNSBackend.create_platform_endpoint` looks for an endpoint with the same
token by walking `platform_endpoints.values()`: seeding n devices is O(n²)
(the 100,000-device demo spent most of its ten minutes there). Here the
backend's `platform_endpoints` becomes a dict that also keeps its endpoints by
token, updated by every insertion and removal whoever makes it (moto, or the
demo re-filing an endpoint), and moto's own method runs unchanged while its
`values()` yields only the endpoints with the token being created. So the
answers (the existing endpoint, `DuplicateSnsEndpointError`, a new endpoint)
and the store are moto's, found in O(1). As in moto, a token matches across
platform applications (SNS itself scopes it to one application).

This is the one place that relies on how moto's method looks for duplicates;
tests/unit/test_sns_endpoint_index.py fails loudly when that changes.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from moto.sns.models import SNSBackend

_scanning = threading.local()
# moto's method as moto defines it (captured before any install replaces it).
MOTO_CREATE_PLATFORM_ENDPOINT = vars(SNSBackend)["create_platform_endpoint"]


class TokenIndexedEndpoints(dict[str, Any]):
    """moto's endpoints by ARN, also grouped by token in the store's order."""

    def __init__(self, endpoints: Mapping[str, Any] = ()) -> None:  # type: ignore[assignment]
        super().__init__()
        self._by_token: dict[str, dict[str, Any]] = {}
        for arn, endpoint in dict(endpoints).items():
            self[arn] = endpoint

    # -- kept in step with the store -------------------------------------------------

    def __setitem__(self, arn: str, endpoint: Any) -> None:
        previous = super().get(arn)
        if previous is not None and previous.token != endpoint.token:
            self._forget(arn, previous)
        super().__setitem__(arn, endpoint)
        self._by_token.setdefault(endpoint.token, {})[arn] = endpoint

    def __delitem__(self, arn: str) -> None:
        endpoint = super().__getitem__(arn)
        super().__delitem__(arn)
        self._forget(arn, endpoint)

    def pop(self, arn: str, *default: Any) -> Any:
        if arn not in self:
            if default:
                return default[0]
            raise KeyError(arn)
        endpoint = super().__getitem__(arn)
        del self[arn]
        return endpoint

    def popitem(self) -> tuple[str, Any]:
        arn, endpoint = super().popitem()
        self._forget(arn, endpoint)
        return arn, endpoint

    def clear(self) -> None:
        super().clear()
        self._by_token.clear()

    def setdefault(self, arn: str, endpoint: Any = None) -> Any:
        if arn not in self:
            self[arn] = endpoint
        return super().__getitem__(arn)

    def update(self, *others: Any, **more: Any) -> None:
        for arn, endpoint in dict(*others, **more).items():
            self[arn] = endpoint

    def _forget(self, arn: str, endpoint: Any) -> None:
        group = self._by_token.get(endpoint.token)
        if group is not None:
            group.pop(arn, None)
            if not group:
                del self._by_token[endpoint.token]

    # -- what moto's scan sees ---------------------------------------------------------

    def values(self) -> Any:
        token = getattr(_scanning, "token", None)
        if token is None:
            return super().values()
        return self._by_token.get(token, {}).values()

    @contextlib.contextmanager
    def scanning_only(self, token: str) -> Iterator[None]:
        _scanning.token = token
        try:
            yield
        finally:
            _scanning.token = None

    def with_token(self, token: str) -> list[Any]:
        return list(self._by_token.get(token, {}).values())


def install(stack: contextlib.ExitStack, backends: Iterable[Any]) -> None:
    """Index the endpoints of `backends` (moto SNS backends) until `stack` closes."""
    original = MOTO_CREATE_PLATFORM_ENDPOINT

    def create_platform_endpoint(
        backend: Any, application: Any, custom_user_data: str, token: str, attributes: Any
    ) -> Any:
        endpoints = backend.platform_endpoints
        if not isinstance(endpoints, TokenIndexedEndpoints):
            return original(backend, application, custom_user_data, token, attributes)
        with endpoints.scanning_only(token):
            return original(backend, application, custom_user_data, token, attributes)

    previous = vars(SNSBackend)["create_platform_endpoint"]
    SNSBackend.create_platform_endpoint = create_platform_endpoint  # type: ignore[method-assign,assignment]
    stack.callback(setattr, SNSBackend, "create_platform_endpoint", previous)
    for backend in backends:
        plain = dict(backend.platform_endpoints)
        backend.platform_endpoints = TokenIndexedEndpoints(plain)
        stack.callback(_restore, backend)


def _restore(backend: Any) -> None:
    backend.platform_endpoints = dict(backend.platform_endpoints)


def create_endpoints(backend: Any, requests: Iterable[tuple[str, str]]) -> list[str]:
    """Endpoints for (platform application ARN, token) pairs, created in the backend as
    moto's CreatePlatformEndpoint handler creates them (no CustomUserData, no
    Attributes), without a boto3 request each: ~1.4 ms of signing, serialising and
    dispatching apiece, most of a seeded device's cost. Returns their ARNs."""
    applications: dict[str, Any] = {}
    arns = []
    for application_arn, token in requests:
        application = applications.get(application_arn)
        if application is None:
            application = applications[application_arn] = backend.get_application(application_arn)
        arns.append(backend.create_platform_endpoint(application, None, token, {}).arn)
    return arns
