"""Shared fixtures: one local runtime (real PostgreSQL, real Redis, moto) per session.

Starting the servers takes seconds, so the session shares them; each test
that needs a clean slate asks for `clean_runtime`, which truncates the data.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Powertools reads its settings when pushflow.observability is first imported, which
# may be a test module's import, before the local runtime sets the template's
# environment: give it the same service name now, and no metrics or tracing.
for _name, _value in {
    "POWERTOOLS_SERVICE_NAME": "pushflow",
    "POWERTOOLS_METRICS_NAMESPACE": "Pushflow/pushflow-local",
    "POWERTOOLS_METRICS_DISABLED": "true",
    "POWERTOOLS_TRACE_DISABLED": "true",
}.items():
    os.environ.setdefault(_name, _value)

REPO_ROOT = Path(__file__).resolve().parent.parent
EVENTS_DIR = REPO_ROOT / "events"


def load_event(name: str) -> Any:
    return json.loads((EVENTS_DIR / name).read_text())


@pytest.fixture(scope="session")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from pushflow_local.runtime import LocalRuntime

    log_path = tmp_path_factory.mktemp("logs") / "functions.log"
    # Retry intervals are real sleeps in moto: shrink them, keep the behaviour.
    with LocalRuntime(retry_sleep_scale=0.0, log_path=log_path) as local:
        yield local


@pytest.fixture
def clean_runtime(runtime: Any) -> Any:
    from pushflow_local.seed import reset_data

    reset_data(runtime)
    runtime.failures.clear()
    return runtime
