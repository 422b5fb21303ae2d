"""The benchmark at CI size (`python -m bench --small`), so it does not rot.

It asserts no timing, only that every figure of the issue's table is produced,
positive, and written in the shape results.json promises. It runs in its own
process on its own embedded PostgreSQL and Redis: it replaces their data, and
starts the local runtime (moto) itself.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from pushflow_local.sns import Latency, SnsProcess

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
EXPECTED = {
    "resolve": "rows/s",
    "filter_vs_lua": "checks/s",
    "filter_vs_per_command": "checks/s",
    "publish_vs_ideal": "publishes/s",
    "publish_vs_boto3": "publishes/s",
    "record_vs_copy": "rows/s",
    "record_vs_executemany": "rows/s",
    "end_to_end": "recipients/s",
    "end_to_end_vs_boto3_pool": "recipients/s",
    "handlers_cpu_per_recipient": "µs CPU per recipient",
    "memory_resolve": "MB per 1,000 recipients",
    "memory_filter": "MB per 1,000 recipients",
    "memory_publish": "MB per 1,000 recipients",
    "memory_record": "MB per 1,000 recipients",
}


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], str]:
    out = tmp_path_factory.mktemp("bench") / "results.json"
    # Never the suite's servers: the benchmark truncates what it finds.
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    # This interpreter, the repo's own module.
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--small", "--out", str(out)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout


def test_every_figure_of_the_table_is_produced(
    small_run: tuple[list[dict[str, Any]], str],
) -> None:
    rows, _ = small_run
    assert {row["name"]: row["unit"] for row in rows} == EXPECTED


def test_each_row_has_the_promised_shape(small_run: tuple[list[dict[str, Any]], str]) -> None:
    rows, _ = small_run
    for row in rows:
        assert list(row)[:6] == ["name", "value", "unit", "reference", "ratio", "target"], row
        assert isinstance(row["value"], int | float) and math.isfinite(row["value"]), row
        assert row["value"] > 0, row
        assert len(row["details"]["load_average"]) == 3, row
        if row["name"].startswith("memory_") or row["name"] == "handlers_cpu_per_recipient":
            assert row["reference"] is None and row["ratio"] is None and row["target"] is None
            continue
        assert row["reference"] > 0 and row["target"] > 0, row
        assert row["ratio"] == pytest.approx(row["value"] / row["reference"], rel=1e-3), row
        assert isinstance(row["met"], bool), row


def test_the_send_reached_every_recipient_and_reports_its_time_split(
    small_run: tuple[list[dict[str, Any]], str],
) -> None:
    rows, _ = small_run
    send = next(row for row in rows if row["name"] == "end_to_end")["details"]
    assert sum(send["outcomes"].values()) == send["recipients"]
    assert send["outcomes"].get("sent", 0) > 0
    assert send["handlers_cpu_s"] > 0 and send["orchestration_cpu_s"] > 0
    assert send["handlers_only_recipients_per_s"] > 0
    for function in (
        "ResolveRecipientsFunction",
        "FilterRecipientsFunction",
        "PublishBatchFunction",
        "RecordResultsFunction",
    ):
        assert send["functions"][function]["calls"] == send["pages"]


def test_straw_men_are_labelled_and_the_users_own_sender_is_measured(
    small_run: tuple[list[dict[str, Any]], str],
) -> None:
    rows, _ = small_run
    by_name = {row["name"]: row for row in rows}
    for name in ("filter_vs_per_command", "record_vs_executemany", "end_to_end"):
        assert by_name[name]["reference_name"].startswith("straw man:"), name
    pool = by_name["end_to_end_vs_boto3_pool"]
    assert not pool["reference_name"].startswith("straw man")
    assert len(pool["details"]["pool_rates"]) == len(pool["details"]["rates"])
    split = by_name["handlers_cpu_per_recipient"]["details"]
    assert set(split["by_function_us_per_recipient"]) == {
        "ResolveRecipientsFunction",
        "FilterRecipientsFunction",
        "PublishBatchFunction",
        "RecordResultsFunction",
    }
    assert split["orchestration_cpu_us_per_recipient"] > 0


def test_the_bench_clock_starts_at_the_same_moment_every_run() -> None:
    from bench.harness import BENCH_START, PinnedClock

    first, second = PinnedClock().now(), PinnedClock().now()
    assert BENCH_START <= first < BENCH_START + timedelta(seconds=5)
    assert BENCH_START <= second < BENCH_START + timedelta(seconds=5)


def test_the_table_is_printed(small_run: tuple[list[dict[str, Any]], str]) -> None:
    _, stdout = small_run
    header = next(line for line in stdout.splitlines() if line.startswith("stage"))
    assert header.split() == ["stage", "value", "unit", "reference", "ratio", "target", "met"]
    for name in EXPECTED:
        assert any(line.startswith(f"{name} ") for line in stdout.splitlines()), name


def test_the_benchmarks_sns_stand_in_answers_signed_publishes_and_nothing_else() -> None:
    """boto3 against the stand-in in its own process: a Publish answered with a message
    id; any other action refused the way SNS refuses it; /stats counts."""
    with SnsProcess(Latency(median=0.005, p99=0.020)) as sns:
        client = boto3.client(
            "sns",
            region_name="us-east-1",
            endpoint_url=sns.url,
            aws_access_key_id="local",
            aws_secret_access_key="local",
        )
        arn = "arn:aws:sns:us-east-1:123456789012:endpoint/GCM/app/0000"
        answer = client.publish(TargetArn=arn, Message="hello")
        assert answer["MessageId"]
        with pytest.raises(ClientError) as refused:
            client.list_topics()
        assert refused.value.response["Error"]["Code"] == "InvalidAction"
        elsewhere = "arn:aws:sns:eu-west-1:123456789012:endpoint/GCM/app/0000"
        with pytest.raises(ClientError) as unknown:
            client.publish(TargetArn=elsewhere, Message="hello")
        assert unknown.value.response["Error"]["Code"] == "NotFound"
        assert sns.published() == 1
