"""Run scenarios, print the table, write `reliability/results.json`."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pushflow_local.runtime import LocalRuntime
from reliability.scenarios import SCENARIOS, Scenario, ScenarioResult, Size, run_scenario

RESULTS_PATH = Path(__file__).resolve().parent / "results.json"
COLUMNS = (
    "scenario",
    "faults injected",
    "sends run",
    "deliveries expected",
    "recorded",
    "duplicated",
    "collapsed",
    "lost",
    "misrecorded",
    "outcome unknown",
    "unfinished",
    "seconds",
    "result",
)


def run_suite(
    runtime: LocalRuntime,
    size: Size,
    scenarios: Sequence[Scenario] = SCENARIOS,
    progress: Callable[[str], None] | None = None,
) -> list[ScenarioResult]:
    results = []
    for scenario in scenarios:
        if progress:
            progress(f"{scenario.name}: {scenario.title}")
        result = run_scenario(runtime, scenario, size)
        if progress:
            progress(f"  {'passed' if result.passed else 'FAILED'} in {result.seconds:.1f}s")
            for check in result.checks:
                if not check.ok:
                    progress(f"  failed check: {check.what} ({check.detail})")
            if result.error:
                progress(f"  error: {result.error}")
        results.append(result)
    return results


def totals(results: Sequence[ScenarioResult]) -> dict[str, int]:
    return {
        "faults_injected": sum(r.injected for r in results),
        "sends": sum(r.sends for r in results),
        "deliveries_expected": sum(r.expected for r in results),
        "recorded": sum(r.recorded for r in results),
        "duplicated": sum(r.duplicated for r in results),
        "collapsed": sum(r.collapsed for r in results),
        "lost": sum(r.lost for r in results),
        "misrecorded": sum(r.misrecorded for r in results),
        "outcome_unknown": sum(r.unknown for r in results),
        "unfinished": sum(r.unfinished for r in results),
    }


def _row(result: ScenarioResult) -> tuple[str, ...]:
    return (
        result.name,
        f"{result.injected:,}",
        f"{result.sends:,}",
        f"{result.expected:,}",
        f"{result.recorded:,}",
        f"{result.duplicated:,}",
        f"{result.collapsed:,}",
        f"{result.lost:,}",
        f"{result.misrecorded:,}",
        f"{result.unknown:,}",
        f"{result.unfinished:,}",
        f"{result.seconds:.1f}",
        "ok" if result.passed else "FAILED",
    )


def table(results: Sequence[ScenarioResult]) -> str:
    total = totals(results)
    rows = [_row(result) for result in results]
    rows.append(
        (
            "total",
            f"{total['faults_injected']:,}",
            f"{total['sends']:,}",
            f"{total['deliveries_expected']:,}",
            f"{total['recorded']:,}",
            f"{total['duplicated']:,}",
            f"{total['collapsed']:,}",
            f"{total['lost']:,}",
            f"{total['misrecorded']:,}",
            f"{total['outcome_unknown']:,}",
            f"{total['unfinished']:,}",
            f"{sum(r.seconds for r in results):.1f}",
            "ok" if all(r.passed for r in results) else "FAILED",
        )
    )
    widths = [max(len(row[i]) for row in [COLUMNS, *rows]) for i in range(len(COLUMNS))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(width) if i == 0 or i == len(cells) - 1 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(COLUMNS), rule, *(line(row) for row in rows[:-1]), rule, line(rows[-1])])


def results_document(
    results: Sequence[ScenarioResult], size: Size, retry_sleep_scale: float, seconds: float
) -> dict[str, Any]:
    return {
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "size": size.name,
        "python": platform.python_version(),
        "retry_sleep_scale": retry_sleep_scale,
        "seconds": round(seconds, 1),
        "passed": all(result.passed for result in results),
        "totals": totals(results),
        "columns": list(COLUMNS),
        "table": [dict(zip(COLUMNS, _row(result), strict=True)) for result in results],
        "scenarios": [result.to_dict() for result in results],
    }


def write_results(document: dict[str, Any], path: Path = RESULTS_PATH) -> None:
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")


def timed(run: Callable[[], list[ScenarioResult]]) -> tuple[list[ScenarioResult], float]:
    started = time.monotonic()
    results = run()
    return results, time.monotonic() - started
