"""What every stage shares: sizes, result rows, the servers, the handlers as Lambda runs them."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from botocore.credentials import Credentials

from pushflow.adapters.sns_http import SnsHttpPublisher
from pushflow.config import Settings
from pushflow.handler import replace_services
from pushflow.services import Services
from pushflow_local.runtime import ACCOUNT, REGION, STACK, LocalFunction
from pushflow_local.servers import LocalServers
from pushflow_local.sns import Latency, SnsProcess
from pushflow_local.template import REPO_ROOT, Template

MIGRATIONS_DIR = REPO_ROOT / "migrations"
# Every run's "now": quiet hours, caps and time zones depend on it, so a run at
# another hour would measure another workload. A Wednesday at noon UTC.
BENCH_START = datetime(2026, 1, 14, 12, 0, tzinfo=UTC)


class PinnedClock:
    """Starts at BENCH_START whenever the run starts, then runs at the machine's pace."""

    def __init__(self, start: datetime = BENCH_START) -> None:
        self._start = start
        self._started = time.monotonic()

    def now(self) -> datetime:
        return self._start + timedelta(seconds=time.monotonic() - self._started)


def load_average() -> list[float]:
    """The machine's 1, 5 and 15-minute load averages (2 cores shared: other tenants)."""
    return [round(value, 2) for value in os.getloadavg()]


# The SNS stand-in's answer times (log-normal: median, 99th percentile);
# PublishBatch keeps PUBLISH_IN_FLIGHT pushes in flight.
SNS_LATENCY = Latency(median=0.020, p99=0.100)
PUBLISH_IN_FLIGHT = 64
RESULTS_PATH = REPO_ROOT / "bench" / "results.json"
# Every row of results.json has these (plus details).
ROW_FIELDS = ("name", "value", "unit", "reference", "ratio", "target")


@dataclass(frozen=True)
class Sizes:
    """How much data each stage runs over. `default()` is the issue's table."""

    devices: int  # resolve: the audience scanned
    filter_recipients: int
    filter_per_command_sample: int  # one round trip each: a sample, as a rate
    record_rows: int
    executemany_sample: int  # ~7k rows/s: a sample, as a rate
    publishes: int  # PublishBatch through the handler
    boto3_publishes: int  # ~750/s: a sample, as a rate
    end_to_end_recipients: int
    naive_sample: int  # ~45 recipients/s: a sample, as a rate
    pool_sample: int  # the boto3 thread-pool sender (~750/s): a sample, as a rate
    trials: int  # each measurement and its reference, alternated; the best of each counts

    @classmethod
    def default(cls) -> Sizes:
        return cls(
            devices=1_000_000,
            filter_recipients=200_000,
            filter_per_command_sample=20_000,
            record_rows=1_000_000,
            executemany_sample=5_000,
            publishes=20_000,
            boto3_publishes=5_000,
            end_to_end_recipients=100_000,
            naive_sample=1_000,
            pool_sample=20_000,
            trials=2,
        )

    @classmethod
    def small(cls) -> Sizes:
        """CI: every figure produced, none meaningful."""
        return cls(
            devices=6_000,
            filter_recipients=2_000,
            filter_per_command_sample=200,
            record_rows=4_000,
            executemany_sample=200,
            publishes=600,
            boto3_publishes=200,
            end_to_end_recipients=1_000,
            naive_sample=20,
            pool_sample=200,
            trials=1,
        )


@dataclass
class Row:
    """One line of the table and of results.json."""

    name: str
    value: float
    unit: str
    reference: float | None
    target: float | None
    reference_name: str = ""
    # "ratio" for value ÷ reference; "times" when the target is a multiple (30x).
    target_kind: str = "ratio"
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.reference is None or self.reference <= 0:
            return None
        return self.value / self.reference

    @property
    def met(self) -> bool | None:
        ratio = self.ratio
        if ratio is None or self.target is None:
            return None
        return ratio >= self.target

    def to_json(self) -> dict[str, Any]:
        raw = asdict(self)
        raw["ratio"] = None if self.ratio is None else round(self.ratio, 4)
        raw["met"] = self.met
        raw["value"] = round(self.value, 3)
        if self.reference is not None:
            raw["reference"] = round(self.reference, 3)
        ordered = {name: raw.pop(name) for name in ROW_FIELDS}
        return {**ordered, **raw}


class Timer:
    """Wall time summed over the `with` blocks (what a stage spends in the code measured)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start


def best_rate(trials: int, measure: Callable[[], tuple[int, float]]) -> tuple[float, list[float]]:
    """Run `measure` (-> items, seconds) `trials` times; the best rate and all of them."""
    rates = []
    for _ in range(trials):
        items, seconds = measure()
        rates.append(items / seconds if seconds > 0 else 0.0)
    return max(rates), [round(rate, 1) for rate in rates]


def alternate(
    trials: int,
    measured: Callable[[], tuple[int, float]],
    reference: Callable[[], tuple[int, float]],
) -> tuple[float, float, dict[str, Any]]:
    """Measure and reference in turns (these machines drift); the best rate of each."""
    measured_rates: list[float] = []
    reference_rates: list[float] = []
    for _ in range(trials):
        for rates, measure in ((reference_rates, reference), (measured_rates, measured)):
            items, seconds = measure()
            rates.append(items / seconds if seconds > 0 else 0.0)
    details = {
        "trials": trials,
        "rates": [round(rate, 1) for rate in measured_rates],
        "reference_rates": [round(rate, 1) for rate in reference_rates],
    }
    return max(measured_rates), max(reference_rates), details


class Bench:
    """The servers, the handlers as Lambda runs them (in-process), and the shared data."""

    def __init__(self, sizes: Sizes, say: Callable[[str], None]) -> None:
        self.sizes = sizes
        self.say = say
        self.rows: list[Row] = []
        self._stack = contextlib.ExitStack()
        self.functions: dict[str, LocalFunction] = {}

    def __enter__(self) -> Bench:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _start(self) -> None:
        given = [name for name in ("DATABASE_URL", "REDIS_URL") if os.environ.get(name)]
        self.say(f"servers: {', '.join(given) or 'embedded PostgreSQL and Redis'}")
        self.servers = LocalServers.start()
        self._stack.callback(self.servers.stop)
        self._stack.enter_context(self.environment(self.function_environment()))
        self.clock = PinnedClock()
        self.services = Services(Settings.from_env(), clock=self.clock)
        self._stack.callback(self.services.close)
        previous = replace_services(self.services)
        self._stack.callback(replace_services, previous)
        self.services.repository.migrate(MIGRATIONS_DIR)
        self.sns = self._stack.enter_context(SnsProcess(SNS_LATENCY, REGION, ACCOUNT))
        # PublishBatch publishes to the stand-in through the lighter client, as
        # services.py would build it (never to moto, never to AWS).
        self.publisher = SnsHttpPublisher(
            self.sns.url,
            region=REGION,
            credentials=Credentials("local", "local"),
            concurrency=PUBLISH_IN_FLIGHT,
        )
        self._stack.callback(self.publisher.close)
        self.services.publisher = self.publisher
        for spec in Template().functions():
            name = f"{STACK}-{spec.logical_id}"
            arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"
            self.functions[spec.logical_id] = LocalFunction(spec, name, arn)

    def function_environment(self) -> dict[str, str]:
        """What the handlers read, as the local runtime sets it (no AWS needed by these)."""
        return {
            "DATABASE_URL": self.servers.database_url,
            "REDIS_URL": self.servers.redis_url,
            "POWERTOOLS_SERVICE_NAME": "pushflow",
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_METRICS_DISABLED": "true",
            "POWERTOOLS_LOG_LEVEL": "WARNING",
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
        }

    @staticmethod
    @contextlib.contextmanager
    def environment(variables: Mapping[str, str]) -> Iterator[None]:
        previous = {name: os.environ.get(name) for name in variables}
        os.environ.update(variables)
        try:
            yield
        finally:
            for name, value in previous.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def invoke(self, logical_id: str, event: Any) -> Any:
        """A handler call as Lambda makes it (the Powertools entry, a context), in-process."""
        return self.functions[logical_id].invoke(event)

    def add(self, row: Row) -> Row:
        row.details.setdefault("load_average", load_average())
        self.rows.append(row)
        ratio = f"{row.ratio:.2f}" if row.ratio is not None else "-"
        self.say(
            f"  {row.name}: {row.value:,.0f} {row.unit} (ratio {ratio};"
            f" load average {' '.join(map(str, row.details['load_average']))})"
        )
        return row


def write_results(rows: list[Row], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([row.to_json() for row in rows], indent=2) + "\n")


def table(rows: list[Row]) -> str:
    headers = ("stage", "value", "unit", "reference", "ratio", "target", "met")
    lines = []
    for row in rows:
        target = "-"
        if row.target is not None:
            target = f"≥ {row.target:g}x" if row.target_kind == "times" else f"≥ {row.target:g}"
        ratio = "-"
        if row.ratio is not None:
            ratio = f"{row.ratio:.1f}x" if row.target_kind == "times" else f"{row.ratio:.2f}"
        met = {True: "yes", False: "NO", None: "-"}[row.met]
        reference = f"{row.reference:,.0f}" if row.reference is not None else "-"
        value = f"{row.value:,.0f}" if row.value >= 100 else f"{row.value:.3g}"
        lines.append((row.name, value, row.unit, reference, ratio, target, met))
    widths = [
        max(len(str(cell)) for cell in column) for column in zip(headers, *lines, strict=False)
    ]
    out = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(headers, widths, strict=True)),
        "  ".join("-" * width for width in widths),
    ]
    for line in lines:
        out.append("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)))
    return "\n".join(out)
