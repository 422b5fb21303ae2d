"""`python -m reliability`: the full fault suite against a local runtime of its own.

    python -m reliability                  every scenario, full size
    python -m reliability --size small     the tests' size (a minute)
    python -m reliability --only redis_outage --only concurrency

Ends with the table and writes `reliability/results.json`; exits 1 when a
scenario failed (anything duplicated or lost, or a check that did not hold).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pushflow_local.runtime import LocalRuntime
from pushflow_local.template import REPO_ROOT
from reliability.scenarios import FULL, SCENARIOS, SMALL, scenario
from reliability.suite import RESULTS_PATH, results_document, run_suite, table, timed, write_results

# The functions log every injected fault; keep that out of the terminal.
LOG_PATH = REPO_ROOT / ".pushflow" / "reliability-functions.log"


def _say(message: str) -> None:
    print(f"» {message}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m reliability", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--size", choices=["small", "full"], default="full")
    parser.add_argument(
        "--only", action="append", default=[], metavar="SCENARIO", help="run only these"
    )
    parser.add_argument(
        "--retry-sleep-scale",
        type=float,
        default=0.05,
        help="scale of the ASL's Retry intervals (1.0: as deployed; the Redis outage"
        " scenario of the full size always runs at 1.0)",
    )
    args = parser.parse_args(argv)
    size = FULL if args.size == "full" else SMALL
    chosen = [scenario(name) for name in args.only] if args.only else SCENARIOS

    with LocalRuntime(
        retry_sleep_scale=args.retry_sleep_scale, log_path=LOG_PATH, progress=_say
    ) as runtime:
        _say(f"running {len(chosen)} scenario(s), {size.name} size")
        results, seconds = timed(lambda: run_suite(runtime, size, chosen, progress=_say))

    print()
    print(table(results))
    document = results_document(results, size, args.retry_sleep_scale, seconds)
    write_results(document)
    print(f"\n{RESULTS_PATH.relative_to(REPO_ROOT)} written; {seconds:.0f}s in all")
    return 0 if document["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
