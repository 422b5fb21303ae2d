"""`pushflow`: the local runtime's command line.

pushflow demo [--recipients N]       seed an audience, send to it, show what happened
pushflow invoke FUNCTION -e EVENT    run one function's handler (like `sam local invoke`)
pushflow local serve [--port 3000]   the HTTP API on localhost (like `sam local start-api`)
pushflow local token --user SUB      an end-user token for the local API
pushflow cost --recipients N --region R [--page-size P] [--json]
                                     what a send costs on AWS, from the template and the ASL
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from pushflow_local.runtime import LocalRuntime
from pushflow_local.template import REPO_ROOT

if TYPE_CHECKING:
    from pushflow_local.server import LocalApiServer

LOG_PATH = REPO_ROOT / ".pushflow" / "functions.log"
# The command as the README runs it: the virtual environment's, which need not be on PATH.
PUSHFLOW = ".venv/bin/pushflow"


def _say(message: str) -> None:
    print(f"» {message}", flush=True)


_last_quarter: dict[str, int] = {}


def _bar(done: int, total: int, label: str) -> None:
    width = 30
    filled = int(width * done / total) if total else width
    line = f"  {label} [{'#' * filled}{'.' * (width - filled)}] {done:,}/{total:,}"
    if sys.stdout.isatty():
        print(f"\r{line}", end="\n" if done >= total else "", flush=True)
        return
    # Not a terminal (CI, a pipe): a line per quarter instead of redrawing one.
    quarter = 4 * done // total if total else 4
    if _last_quarter.get(label) != quarter:
        _last_quarter[label] = quarter
        print(line, flush=True)


def _table(rows: Sequence[tuple[str, ...]], headers: tuple[str, ...]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True)), line]
    out += [
        "  ".join(
            str(c).rjust(w) if c.replace(",", "").isdigit() else str(c).ljust(w)
            for c, w in zip(r, widths, strict=True)
        )
        for r in rows
    ]
    return "\n".join(out)


def demo(args: argparse.Namespace) -> int:
    from pushflow.domain import sending
    from pushflow_local.demo import DEMO_REQUEST, seed_demo

    started = time.monotonic()
    with LocalRuntime(progress=_say, log_path=LOG_PATH) as runtime:
        _say(f"seeding an audience of {args.recipients:,} devices")
        expected = seed_demo(
            runtime, args.recipients, lambda done, total: _bar(done, total, "endpoints")
        )

        _say("sending one notification to all of them through the state machine")
        notification, _ = sending.submit(
            DEMO_REQUEST, runtime.services.repository, runtime.services.workflow
        )
        assert notification.execution_arn is not None
        _follow(runtime, notification.id, notification.execution_arn)
        execution = runtime.wait(notification.execution_arn)
        final = runtime.services.repository.get_notification(notification.id)

        print()
        print(f"Execution  {notification.execution_arn.rsplit(':', 1)[-1]}: {execution['status']}")
        print(f"State path {' → '.join(runtime.state_path(notification.execution_arn))}")
        print(
            f"Status     {final.status.value}: {final.recipient_count:,} devices in "
            f"{final.page_count} pages"
        )
        print()
        total = sum(final.counts.values())
        outcomes = sorted({*final.counts, *expected}, key=lambda o: -final.counts.get(o, 0))
        rows = [
            (
                outcome,
                f"{final.counts.get(outcome, 0):,}",
                f"{expected.get(outcome, 0):,}",
                f"{100 * final.counts.get(outcome, 0) / max(total, 1):.1f}%",
            )
            for outcome in outcomes
        ]
        rows.append(("total", f"{total:,}", f"{sum(expected.values()):,}", "100.0%"))
        print(_table(rows, ("outcome", "devices", "expected", "share")))
        matches = dict(final.counts) == expected
        print()
        _print_sample(runtime)
        print()
        print(
            f"Done in {time.monotonic() - started:.1f}s; function logs in "
            f"{LOG_PATH.relative_to(REPO_ROOT)}"
        )
        if not matches:
            print("The counts differ from what the seeded data should give.")
        return 0 if execution["status"] == "SUCCEEDED" and matches else 1


def _follow(runtime: LocalRuntime, notification_id: str, execution_arn: str) -> None:
    """Show the send's progress from the rows it records, until the execution ends."""
    done = threading.Event()

    def watch() -> None:
        runtime.wait(execution_arn)
        done.set()

    threading.Thread(target=watch, daemon=True).start()
    repository = runtime.services.repository
    while not done.wait(0.5):
        notification = repository.get_notification(notification_id)
        if notification.recipient_count:
            recorded = sum(repository.outcome_counts(notification_id).values())
            _bar(
                min(recorded, notification.recipient_count - 1),
                notification.recipient_count,
                "recorded ",
            )
    notification = repository.get_notification(notification_id)
    if notification.recipient_count:
        _bar(notification.recipient_count, notification.recipient_count, "recorded ")


def _print_sample(runtime: LocalRuntime) -> None:
    by_platform: dict[str, tuple[str, str]] = {}
    for arn, messages in runtime.sns_messages().items():
        for message in messages:
            platform_key = next(k for k in json.loads(message) if k != "default")
            by_platform.setdefault(platform_key, (arn, message))
    print("What SNS received (one message per platform):")
    for platform_key, (arn, message) in sorted(by_platform.items()):
        outer = json.loads(message)
        print(f"  {platform_key} → {arn.split(':', 5)[-1]}")
        print(f"    {json.dumps(json.loads(outer[platform_key]), ensure_ascii=False)}")


class CliError(Exception):
    """A mistake in what was asked: one line on standard error, a non-zero exit."""


def invoke(args: argparse.Namespace) -> int:
    # Everything that can be checked without the stack is checked before it starts.
    logical_id = _function_id(args.function)
    event = _read_event(args.event) if args.event else {}
    from pushflow_local.cfn_response import ResponseUrlStandIn, is_custom_resource_request

    with (
        LocalRuntime(progress=_say, log_path=LOG_PATH) as runtime,
        ResponseUrlStandIn() as cloudformation,
    ):
        if args.sample_data:
            from pushflow_local.demo import (
                seed_sample_data,
                seed_sample_secrets,
                with_sample_secret_arns,
            )

            seed_sample_data(runtime)
            event = with_sample_secret_arns(event, seed_sample_secrets(runtime))
        if is_custom_resource_request(event):
            # The sample's ResponseURL stands for CloudFormation's: answer here instead.
            _say("the custom resource's answer goes to a local stand-in of CloudFormation")
            event = cloudformation.redirect(event)
        try:
            result: Any = runtime.invoke(logical_id, event)
        except Exception as error:  # reported as Lambda reports it
            print(
                json.dumps(
                    {"errorType": type(error).__name__, "errorMessage": str(error)}, indent=2
                )
            )
            return 1
        finally:
            _wait_for_executions(runtime)
        print(json.dumps(result, indent=2, default=str))
        for answer in cloudformation.answers:
            print("CloudFormation would have received:")
            print(json.dumps(answer, indent=2))
            if answer.get("Status") != "SUCCESS":
                return 1
        return 0


# How long `invoke` lets a send it started run before the stack stops.
EXECUTION_WAIT_SECONDS = 120.0


def _wait_for_executions(runtime: LocalRuntime) -> None:
    """Let executions the function started (ApiFunction sends) finish: stopping the
    stack under a running one cuts it off mid-state, with moto's endpoint errors."""
    sfn = runtime.client("stepfunctions")
    running = sfn.list_executions(
        stateMachineArn=runtime.state_machine_arn, statusFilter="RUNNING"
    )["executions"]
    for execution in running:
        _say(f"waiting for execution {execution['name']} to finish")
        finished = runtime.wait(execution["executionArn"], timeout=EXECUTION_WAIT_SECONDS)
        _say(f"execution {execution['name']}: {finished['status']}")


def _read_event(path: str) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CliError(f"no event file {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise CliError(f"cannot read event file {path}: {error}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise CliError(f"event file {path} is not JSON: {error}") from None


def _function_names() -> list[str]:
    from pushflow_local.template import Template

    return sorted(spec.logical_id for spec in Template().functions())


def _function_id(name: str) -> str:
    known = _function_names()
    for candidate in (name, f"{name}Function"):
        if candidate in known:
            return candidate
    raise CliError(f"unknown function {name!r}; the template has: {', '.join(known)}")


def serve(args: argparse.Namespace) -> int:
    """The local stage on localhost until Ctrl-C; everything is stopped on the way out."""
    from pushflow_local.server import LocalApiServer

    _check_port_free(args.host, args.port)
    stop = threading.Event()
    # `kill` (SIGTERM) stops as cleanly as Ctrl-C: PostgreSQL and Redis are children to stop.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with LocalRuntime(progress=_say, log_path=LOG_PATH) as runtime:
        try:
            api = LocalApiServer(runtime, args.host, args.port, console=True)
            api.start()
        except OSError as error:  # taken since the check above
            raise CliError(f"cannot serve on {args.host}:{args.port}: {error.strerror}") from None
        try:
            return _serve(runtime, api, stop)
        finally:
            api.stop()


def _check_port_free(host: str, port: int) -> None:
    """Before the stack's seconds of start-up: is the port ours to take?"""
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as error:
        reason = error.strerror or str(error)
        raise CliError(f"cannot serve on {host}:{port}: {reason}") from None


def _serve(runtime: LocalRuntime, api: LocalApiServer, stop: threading.Event) -> int:
    # Sends with `send_at` and schedules: moto stores them, local mode fires them.
    runtime.fire_schedules_continuously()
    # Sends whose execution ended without Finalize: the template's reconciler.
    runtime.reconcile_sends_continuously()
    url = api.url
    send = json.dumps(
        {
            "category": "news",
            "audience": {"type": "users", "external_ids": ["alice"]},
            "content": {"title": "Hello", "body": "From the local API"},
        }
    )
    print(
        f"""
Pushflow API on {url}  (requests and executions are logged below)
Console:                  {url.rsplit("/", 1)[0]}/console
API key (backend routes): {api.api_key}
User token (/v1/me/...):   {PUSHFLOW} local token --user alice
Function logs:            {LOG_PATH.relative_to(REPO_ROOT)}

  curl {url}/health
  curl -X PUT {url}/v1/me/devices -H "Authorization: $({PUSHFLOW} local token --user alice)" \\
       -H 'Content-Type: application/json' -d '{{"platform": "android", "token": "{"f" * 40}"}}'
  curl -X POST {url}/v1/notifications -H 'x-api-key: {api.api_key}' \\
       -H 'Content-Type: application/json' -d '{send}'

Ctrl-C stops the API, the runtime and the local servers.
""",
        flush=True,
    )
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    _say("stopping")
    return 0


def token(args: argparse.Namespace) -> int:
    from pushflow_local.auth import load_credentials

    print(load_credentials().mint_token(args.user, ttl=args.ttl))
    return 0


def redrive(args: argparse.Namespace) -> int:
    """`pushflow local redrive ID`: resume a send through the running local API."""
    import urllib.error
    import urllib.request

    from pushflow_local.auth import load_credentials

    request = urllib.request.Request(  # noqa: S310 - the local API's URL
        f"{args.url.rstrip('/')}/v1/notifications/{args.notification_id}/redrive",
        method="POST",
        headers={"x-api-key": load_credentials().api_key},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
            print(answer.read().decode())
            return 0
    except urllib.error.HTTPError as refused:
        print(refused.read().decode(), file=sys.stderr)
        return 1
    except urllib.error.URLError as error:
        print(
            f"no local API at {args.url} ({error.reason}); start `pushflow local serve`",
            file=sys.stderr,
        )
        return 1


def key(args: argparse.Namespace) -> int:
    from pushflow_local.auth import load_credentials

    print(load_credentials().api_key)
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (its usage is in `--help`)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}\n")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def cost(args: argparse.Namespace) -> int:
    """The bill of one send, worked out from template.yaml and the ASL (no AWS call)."""
    from pushflow_local import cost as cost_model

    try:
        result = cost_model.bill(args.recipients, args.region, args.page_size)
    except ValueError as error:  # bad arguments, or an ASL shape the model cannot bill
        print(f"pushflow cost: {error}", file=sys.stderr)
        return 2
    print(cost_model.as_json(result) if args.json else "\n".join(cost_model.as_table(result)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(
        prog="pushflow", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo_parser = commands.add_parser("demo", help="seed an audience and send to it")
    demo_parser.add_argument(
        "--recipients", type=_positive, default=10_000, help="devices to send to (default 10,000)"
    )
    demo_parser.set_defaults(run=demo)

    invoke_parser = commands.add_parser(
        "invoke",
        help="run one function's handler locally",
        description="Run one function's handler against a fresh local stack.",
        epilog="functions in template.yaml: " + ", ".join(_function_names()),
    )
    invoke_parser.add_argument(
        "function", help="logical id in template.yaml (the Function suffix may be left out)"
    )
    invoke_parser.add_argument("-e", "--event", help="event file, e.g. events/prepare.json")
    invoke_parser.add_argument(
        "--sample-data",
        action="store_true",
        help="first create the users, devices and notification the "
        "sample events in events/ refer to",
    )
    invoke_parser.set_defaults(run=invoke)

    local_parser = commands.add_parser("local", help="the HTTP API on localhost")
    local_commands = local_parser.add_subparsers(dest="local_command", required=True)
    serve_parser = local_commands.add_parser(
        "serve", help="serve the API (API Gateway and ApiFunction) until Ctrl-C"
    )
    serve_parser.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1")
    serve_parser.add_argument("--port", type=_port, default=3000, help="default 3000; 0: any free")
    serve_parser.set_defaults(run=serve)
    token_parser = local_commands.add_parser(
        "token", help="print an end-user token (the Authorization header of /v1/me/...)"
    )
    token_parser.add_argument("--user", required=True, help="the user's id (the token's sub)")
    token_parser.add_argument(
        "--ttl", type=_positive, default=3600, help="seconds the token is valid (default 3600)"
    )
    token_parser.set_defaults(run=token)
    redrive_parser = local_commands.add_parser(
        "redrive", help="resume a failed or aborted send (through `pushflow local serve`)"
    )
    redrive_parser.add_argument("notification_id", help="the send's notification id")
    redrive_parser.add_argument(
        "--url", default="http://127.0.0.1:3000", help="the local API (default port 3000)"
    )
    redrive_parser.set_defaults(run=redrive)
    key_parser = local_commands.add_parser(
        "key", help="print the backend API key (the x-api-key header of backend routes)"
    )
    key_parser.set_defaults(run=key)

    cost_parser = commands.add_parser(
        "cost", help="what one send costs on AWS, from template.yaml and the ASL"
    )
    cost_parser.add_argument("--recipients", type=int, required=True, help="devices sent to")
    cost_parser.add_argument("--region", required=True, help="AWS region, e.g. us-east-1")
    cost_parser.add_argument(
        "--page-size", type=int, help="recipients per page (default: the template's PageSize)"
    )
    cost_parser.add_argument("--json", action="store_true", help="print the bill as JSON")
    cost_parser.set_defaults(run=cost)

    args = parser.parse_args(argv)
    try:
        result: int = args.run(args)
    except CliError as error:
        print(f"pushflow: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; local servers stopped", file=sys.stderr)
        return 130
    return result


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (0 to 65535)")
    return value


if __name__ == "__main__":
    sys.exit(main())
