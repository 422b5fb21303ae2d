"""`python -m bench.gateway`: status reads through the local API Gateway, 20 clients at once.

Issue 17's target: at least 200 `GET /v1/notifications/{id}` a second to 20
concurrent clients. Prints the rate and latency over HTTP, and, as the
reference measured in the same run, the same reads with ApiFunction's handler
called directly from 20 threads (no HTTP, no gateway): the ratio says what
the gateway's HTTP, routing and authentication cost. No figure is asserted.

    python -m bench.gateway [--seconds 5] [--clients 20]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from pushflow_local.runtime import LocalRuntime
from pushflow_local.server import LocalApiServer

TARGET_READS_PER_SECOND = 200.0


def _measure(clients: int, seconds: float, read: Callable[[], int]) -> tuple[float, list[float]]:
    """(reads a second, latencies in ms) of `clients` threads reading for `seconds`."""
    latencies: list[float] = []
    failures: list[int] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client() -> None:
        mine: list[float] = []
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            status = read()
            mine.append((time.perf_counter() - started) * 1000)
            if status != 200:
                failures.append(status)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    if failures:
        raise RuntimeError(f"{len(failures)} reads failed, e.g. status {failures[0]}")
    return len(latencies) / elapsed, latencies


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def run(seconds: float, clients: int, say: Callable[[str], None] = print) -> dict[str, Any]:
    with (
        LocalRuntime(progress=say) as runtime,
        # The usage plan's throttle (100/s by default) is not what is measured here.
        LocalApiServer(
            runtime,
            port=0,
            quiet=True,
            log_executions=False,
            rate_limit=1e9,
            burst_limit=10**9,
        ) as api,
    ):
        parts = urlsplit(api.url)
        host, port, base = parts.hostname or "127.0.0.1", parts.port or 80, parts.path
        headers = {"x-api-key": api.api_key, "Content-Type": "application/json"}
        send = {
            "category": "news",
            "audience": {"type": "users", "external_ids": ["bench-nobody"]},
            "content": {"title": "Status", "body": "read me"},
        }
        connection = http.client.HTTPConnection(host, port, timeout=30)
        connection.request("POST", f"{base}/v1/notifications", json.dumps(send), headers)
        answer = connection.getresponse()
        notification_id = json.loads(answer.read())["notification_id"]
        connection.close()
        path = f"{base}/v1/notifications/{notification_id}"

        def over_http() -> int:
            connection = http.client.HTTPConnection(host, port, timeout=30)
            try:
                connection.request("GET", path, headers=headers)
                response = connection.getresponse()
                response.read()
                return response.status
            finally:
                connection.close()

        # The event the gateway builds for this read, handed to the handler directly.
        event = api.gateway._event(
            next(
                op
                for op in api.gateway.operations
                if op.template.endswith("{notification_id}") and op.method == "GET"
            ),
            _request(path, headers),
            path.removeprefix(base),
            "",
            {"notification_id": notification_id},
            _backend_caller(api),
        )

        def direct() -> int:
            status: int = runtime.invoke("ApiFunction", event)["statusCode"]
            return status

        say(f"{clients} clients, {seconds:.0f}s each: the handler directly, then over HTTP")
        direct_rate, direct_latencies = _measure(clients, seconds, direct)
        http_rate, http_latencies = _measure(clients, seconds, over_http)
    result = {
        "clients": clients,
        "gateway_reads_per_second": round(http_rate, 1),
        "gateway_p50_ms": round(statistics.median(http_latencies), 1),
        "gateway_p95_ms": round(_percentile(http_latencies, 0.95), 1),
        "direct_reads_per_second": round(direct_rate, 1),
        "direct_p50_ms": round(statistics.median(direct_latencies), 1),
        "gateway_to_direct_ratio": round(http_rate / direct_rate, 3) if direct_rate else None,
        "target_reads_per_second": TARGET_READS_PER_SECOND,
        "target_met": http_rate >= TARGET_READS_PER_SECOND,
    }
    return result


def _request(path: str, headers: dict[str, str]) -> Any:
    from pushflow_local.server import GatewayRequest

    return GatewayRequest("GET", path, list(headers.items()), b"")


def _backend_caller(api: LocalApiServer) -> Any:
    from pushflow_local.server import _Caller

    return _Caller(api_key=api.api_key, api_key_id=api.credentials.api_key_id)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=20)
    args = parser.parse_args(argv)
    result = run(args.seconds, args.clients)
    print()
    print(
        f"over HTTP through the local gateway: {result['gateway_reads_per_second']:.0f} reads/s, "
        f"p50 {result['gateway_p50_ms']} ms, p95 {result['gateway_p95_ms']} ms"
    )
    print(
        f"reference, the handler called directly: {result['direct_reads_per_second']:.0f} "
        f"reads/s, p50 {result['direct_p50_ms']} ms"
    )
    print(
        f"gateway / direct: {result['gateway_to_direct_ratio']}; target "
        f"{TARGET_READS_PER_SECOND:.0f} reads/s {'met' if result['target_met'] else 'NOT met'}"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
