"""Fixtures shared by the e2e modules that talk to the local API Gateway.

Each module gets its own server (module scope) with its own credentials file
and request log, on the session's local runtime.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest

from pushflow_local.auth import LocalCredentials, load_credentials
from pushflow_local.runtime import LocalRuntime
from pushflow_local.server import LocalApiServer


@pytest.fixture(scope="module")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> LocalCredentials:
    return load_credentials(tmp_path_factory.mktemp("auth") / "local-auth.json")


@pytest.fixture(scope="module")
def server_log() -> io.StringIO:
    return io.StringIO()


@pytest.fixture(scope="module")
def api(
    runtime: LocalRuntime, credentials: LocalCredentials, server_log: io.StringIO
) -> Iterator[LocalApiServer]:
    with LocalApiServer(runtime, port=0, credentials=credentials, log=server_log) as server:
        yield server
