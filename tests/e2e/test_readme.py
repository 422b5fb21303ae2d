"""The README's curl examples, run as written against a running local gateway.

The block is read from README.md, so the examples stay true: only the port
changes (the test's server takes a free one). The commands run in bash from
the repository's root, as a reader would paste them, using the credentials
file `pushflow local key` and `pushflow local token` read.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from pushflow_local.auth import load_credentials
from pushflow_local.runtime import LocalRuntime
from pushflow_local.server import LocalApiServer
from pushflow_local.template import REPO_ROOT
from tests.e2e.test_api import Client

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("curl") is None, reason="the README's examples use curl"),
]

README_PORT = "localhost:3000"


def readme_curl_block() -> str:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL)
    found = [block for block in blocks if "curl" in block and README_PORT in block]
    assert len(found) == 1, "the README has one block of curl examples against the local API"
    return found[0]


def json_documents(text: str) -> list[Any]:
    """The answers curl printed one after another."""
    decoder = json.JSONDecoder()
    documents, index = [], 0
    while index < len(text):
        if text[index].isspace():
            index += 1
            continue
        document, index = decoder.raw_decode(text, index)
        documents.append(document)
    return documents


@pytest.fixture
def readme_api(clean_runtime: LocalRuntime) -> Iterator[LocalApiServer]:
    # The credentials file the README's `pushflow local key/token` read.
    with LocalApiServer(
        clean_runtime, port=0, credentials=load_credentials(), quiet=True
    ) as server:
        yield server


def test_the_readme_examples_work_as_written(
    readme_api: LocalApiServer, clean_runtime: LocalRuntime
) -> None:
    address = urlsplit(readme_api.url).netloc
    script = "set -e\n" + readme_curl_block().replace(README_PORT, address)
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    user, device, notification = json_documents(done.stdout)
    # Each answer is what the example meant, not an error.
    assert user["external_id"] == "alice" and user["locale"] == "de-AT", user
    assert device["platform"] == "android" and device["enabled"] is True, device
    assert notification["status"] in ("accepted", "running", "completed"), notification

    # And the send reached alice's phone.
    client = Client(readme_api)
    deadline = time.monotonic() + 60
    while client.notification(notification["notification_id"])["status"] in (
        "accepted",
        "running",
    ):
        assert time.monotonic() < deadline, "the README's send did not finish"
        time.sleep(0.2)
    rows = client.deliveries(notification["notification_id"])
    assert [row["outcome"] for row in rows] == ["sent"], rows
