"""`python -m bench`: every stage of a send against this machine's limits.

    python -m bench            # the issue's sizes (1M devices, 100k-recipient send), ~5-10 min
    python -m bench --small    # CI size: every figure produced, none meaningful, < 60 s

PostgreSQL and Redis are the embedded ones unless DATABASE_URL / REDIS_URL
name others (their data is replaced). Prints a table and writes
bench/results.json (or --out).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench import data, stages
from bench.end_to_end import end_to_end
from bench.harness import RESULTS_PATH, Bench, Sizes, table, write_results

STAGES = ("resolve", "filter", "publish", "record", "memory", "end_to_end")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="CI size: seconds, not minutes")
    parser.add_argument("--out", type=Path, default=RESULTS_PATH, help="where results go")
    parser.add_argument(
        "--only", default=",".join(STAGES), help=f"comma-separated, of: {', '.join(STAGES)}"
    )
    args = parser.parse_args(argv)
    only = {name.strip() for name in args.only.split(",") if name.strip()}
    unknown = only - set(STAGES)
    if unknown:
        parser.error(f"unknown stage(s): {', '.join(sorted(unknown))}")
    sizes = Sizes.small() if args.small else Sizes.default()

    started = time.perf_counter()

    def say(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {message}", flush=True)

    with Bench(sizes, say) as bench:
        if "resolve" in only:
            audience = stages.resolve(bench)
        elif only & {"filter", "publish", "record", "memory"}:
            say(f"seeding {sizes.devices:,} devices")
            audience = data.seed(bench, sizes.devices)
        if "filter" in only:
            stages.filter_stage(bench)
        if "publish" in only:
            stages.publish_stage(bench)
        if "record" in only:
            stages.record_stage(bench, audience)
        if "memory" in only:
            stages.memory_stage(bench)
        if "end_to_end" in only:
            end_to_end(bench)
        rows = bench.rows

    write_results(rows, args.out)
    print()
    print(table(rows))
    print(f"\n{len(rows)} results in {args.out} ({time.perf_counter() - started:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
