"""The local runtime: template.yaml's resources in moto, the real ASL executed.

It starts (or connects to) PostgreSQL and Redis, applies the migrations,
creates in moto what the template declares (functions, the page-plan bucket,
the state machine with its DefinitionSubstitutions, SNS platform
applications), and runs each Lambda invoke as an in-process call of the real
handler. Exceptions travel back to the interpreter as Lambda function errors
named by their class, so the ASL's Retry and Catch behave as deployed.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import gc
import importlib
import importlib.util
import io
import json
import logging
import marshal
import math
import os
import pickle
import threading
import time
import traceback
import uuid
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any
from zoneinfo import ZoneInfo

import boto3

from pushflow.clock import MovableClock
from pushflow_local import sns_endpoint_index, step_functions_limits
from pushflow_local.map_children import MapRunChildren
from pushflow_local.sandbox import SandboxTimedOut, run_until
from pushflow_local.servers import LocalServers
from pushflow_local.sns import Latency, MotoEndpoints, PublishQuota, SnsServer, region_publish_quota
from pushflow_local.template import REPO_ROOT, FunctionSpec, Resolver, Template

REGION = "us-east-1"
ACCOUNT = "123456789012"
STACK = "pushflow-local"
MIGRATIONS_DIR = REPO_ROOT / "migrations"
PLATFORMS = {
    "ApnsPlatformApplicationArn": ("pushflow-ios", "APNS"),
    "ApnsSandboxPlatformApplicationArn": ("pushflow-ios-sandbox", "APNS_SANDBOX"),
    "FcmPlatformApplicationArn": ("pushflow-android", "GCM"),
}
# The SNS stand-in's answer time here: small, so the suite stays fast, with a tail.
LOCAL_SNS_LATENCY = Latency(median=0.002, p99=0.010)


@dataclass
class LambdaContext:
    """What Lambda passes as `context`, enough for Powertools; its remaining time
    counts down from the function's Timeout."""

    function_name: str
    invoked_function_arn: str
    memory_limit_in_mb: int = 512
    function_version: str = "$LATEST"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    log_group_name: str = ""
    log_stream_name: str = ""
    deadline: float = field(default_factory=lambda: time.monotonic() + 60)

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


@dataclass
class LocalFunction:
    spec: FunctionSpec
    name: str
    arn: str
    # The template's Timeout unless a test shortens it (LocalRuntime.function_timeouts).
    timeout: float = 0.0
    _module: ModuleType | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.timeout = self.timeout or self.spec.timeout

    def handler(self) -> Callable[[Any, Any], Any]:
        module_name, attribute = self.spec.handler.rsplit(".", 1)
        with self._lock:
            if self._module is None:
                path = self.spec.code_dir / f"{module_name.replace('.', '/')}.py"
                spec = importlib.util.spec_from_file_location(
                    f"pushflow_functions.{self.spec.code_dir.name}", path
                )
                assert spec is not None and spec.loader is not None
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                self._module = module
        handler: Callable[[Any, Any], Any] = getattr(self._module, attribute)
        return handler

    def invoke(self, event: Any) -> Any:
        """The handler's result, or its exception; SandboxTimedOut when it overruns its
        Timeout, at which point it is stopped as Lambda stops a sandbox."""
        handler = self.handler()
        timeout = self.timeout
        context = LambdaContext(self.name, self.arn, deadline=time.monotonic() + timeout)
        return run_until(
            lambda: handler(event, context), timeout, context.aws_request_id, name=self.name
        )


def _as_utc(value: Any) -> datetime:
    """A Scheduler date as boto3 returns it (datetime) or moto stores it (epoch)."""
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    return datetime.fromtimestamp(float(value), UTC)


# moto modules whose copy.deepcopy calls copy state data (JSON values), not objects.
_MOTO_MODULES_COPYING_STATE_DATA = (
    "moto.stepfunctions.parser.asl.eval.states",
    "moto.stepfunctions.parser.asl.eval.event.event_manager",
    "moto.stepfunctions.parser.asl.component.common.string.string_expression",
    "moto.stepfunctions.parser.asl.component.common.path.result_path",
    "moto.stepfunctions.parser.asl.component.state.exec.execute_state",
    "moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service",
    "moto.stepfunctions.parser.asl.component.state.exec.state_map.state_map",
)

# The collector's thresholds while a local runtime runs (Python's are 700, 10, 10).
_GC_THRESHOLDS = (50_000, 20, 100)

# moto modules that parse JSONPath with jsonpath-ng's `parse` on every use.
_MOTO_MODULES_PARSING_JSON_PATHS = (
    "moto.stepfunctions.parser.asl.utils.json_path",
    "moto.stepfunctions.parser.asl.component.common.path.result_path",
)


class _StateDataCopy:
    """Stands in for the `copy` module where moto copies state data.

    State data is JSON values (dicts, lists, str, int, float, bool, None): a
    marshal round trip copies them as deepcopy does (shared references kept),
    ~7x faster than deepcopy and ~1.4x faster than pickle's round trip, which
    takes what marshal refuses (any other type, str and dict subclasses
    included), and deepcopy what pickle refuses.
    """

    @staticmethod
    def deepcopy(value: Any, memo: Any = None) -> Any:
        if memo is None:
            try:
                return marshal.loads(marshal.dumps(value))  # noqa: S302 - our own bytes
            except ValueError:
                pass
            try:
                return pickle.loads(pickle.dumps(value, pickle.HIGHEST_PROTOCOL))  # noqa: S301 - our own bytes
            except (pickle.PicklingError, TypeError, AttributeError):
                pass
        return copy.deepcopy(value, memo)


class _ScaledSleep:
    """Stands in for `time` in moto's retrier so Retry intervals can be shortened."""

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def sleep(self, seconds: float) -> None:
        if self.scale > 0:
            time.sleep(seconds * self.scale)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


class LocalRuntime:
    """Use as a context manager; everything it started is stopped on exit."""

    def __init__(
        self,
        template_path: Path | None = None,
        database_url: str | None = None,
        redis_url: str | None = None,
        parameters: Mapping[str, str] | None = None,
        retry_sleep_scale: float = 1.0,
        virtual_time: bool = False,
        log_path: Path | None = None,
        progress: Callable[[str], None] | None = None,
        sns_latency: Latency = LOCAL_SNS_LATENCY,
        sns_publish_quota: float | None = None,
    ) -> None:
        self.template = Template(template_path) if template_path else Template()
        self._database_url = database_url
        self._redis_url = redis_url
        self._parameter_overrides = dict(parameters or {})
        self.retry_sleep_scale = retry_sleep_scale
        # Events per execution before Step Functions fails it; read as each starts.
        self.history_event_limit = step_functions_limits.HISTORY_EVENT_LIMIT
        # Virtual time: a Wait state moves the clock forward instead of sleeping.
        self.virtual_time = virtual_time
        self.clock = MovableClock()
        self.log_path = log_path
        self._progress = progress or (lambda message: None)
        self._stack = contextlib.ExitStack()
        self.functions: dict[str, LocalFunction] = {}
        self.by_name: dict[str, LocalFunction] = {}
        self.parameters: dict[str, str] = {}
        self.environment: dict[str, str] = {}
        self.state_machine_arn = ""
        self.platform_applications: dict[str, str] = {}
        self.schedule_groups: list[str] = []
        self._fired: dict[str, datetime] = {}
        self._firing_lock = threading.Lock()
        self.servers: LocalServers | None = None
        self.failures: dict[str, list[BaseException]] = {}
        self._sns_latency = sns_latency
        # The account's publish quota: the region's documented default unless given.
        self._sns_publish_quota = sns_publish_quota or region_publish_quota(REGION)
        self.sns: SnsServer | None = None

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> LocalRuntime:
        try:
            self.start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def start(self) -> None:
        self._progress("starting PostgreSQL and Redis")
        self.servers = LocalServers.start(self._database_url, self._redis_url)
        self._stack.callback(self.servers.stop)
        self._start_moto()
        self._start_sns()
        self._progress("creating the stack's resources in moto")
        self._create_resources()
        self._install_environment()
        self._progress("applying migrations")
        self.services.repository.migrate(MIGRATIONS_DIR)
        self._collect_garbage_less_often()

    def _collect_garbage_less_often(self) -> None:
        """Fewer collections of young objects while the runtime runs.

        moto keeps every execution's states and history in this process, and each
        state allocates thousands of short-lived dicts: with Python's default
        thresholds (700, 10, 10) the collector ran every few hundred
        microseconds and took a quarter of a local send's CPU (measured by
        bench/: a 60k-recipient send went from ~1,500 to ~1,860 recipients/s).
        Reference counting still frees everything without cycles at once.
        """
        previous = gc.get_threshold()
        gc.set_threshold(*_GC_THRESHOLDS)
        self._stack.callback(gc.set_threshold, *previous)

    def _start_moto(self) -> None:
        from moto import mock_aws
        from moto.awslambda_simple.models import LambdaSimpleBackend
        from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl

        for name, value in {
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
        }.items():
            self._set_env(name, value)
        mock = mock_aws(
            config={
                "stepfunctions": {"execute_state_machine": True},
                "lambda": {"use_docker": False},
            }
        )
        mock.start()
        self._stack.callback(mock.stop)

        runtime = self

        def invoke(
            backend: Any,
            function_name: str,
            qualifier: Any,
            body: Any,
            headers: Any,
            response_headers: dict[str, str],
        ) -> bytes:
            return runtime._invoke(function_name, body, response_headers)

        original_invoke = LambdaSimpleBackend.invoke
        LambdaSimpleBackend.invoke = invoke  # type: ignore[method-assign,assignment]
        self._stack.callback(setattr, LambdaSimpleBackend, "invoke", original_invoke)
        # moto sleeps the Retry intervals for real; scale them (tests use 0).
        original_time = vars(retrier_decl)["time"]
        setattr(retrier_decl, "time", _ScaledSleep(self.retry_sleep_scale))  # noqa: B010
        self._stack.callback(setattr, retrier_decl, "time", original_time)
        self._patch_wait_states()
        # CreatePlatformEndpoint in O(1), not a scan of every endpoint (seeding the demo).
        from moto.sns.models import sns_backends

        sns_endpoint_index.install(self._stack, [sns_backends[ACCOUNT][REGION]])
        step_functions_limits.enforce(self._stack, lambda: self.history_event_limit)
        self._install_redrive()
        # Outermost: a Map child's own history is the one the limits gave it.
        self.map_children = MapRunChildren()
        self.map_children.install(self._stack)
        self._invoke_task_functions_directly()
        self._copy_state_data_faster()
        self._parse_each_json_path_once()

    def _start_sns(self) -> None:
        """The SNS stand-in PublishBatch publishes to, as deployed it publishes to SNS:
        signed, checked, throttled at the account's quota, delivering to moto's endpoints."""
        self.sns = SnsServer(
            MotoEndpoints(ACCOUNT, REGION),
            REGION,
            credentials={os.environ["AWS_ACCESS_KEY_ID"]: os.environ["AWS_SECRET_ACCESS_KEY"]},
            latency=self._sns_latency,
            quota=PublishQuota(self._sns_publish_quota),
        ).start()
        self._stack.callback(self.sns.stop)

    def _install_redrive(self) -> None:
        """RedriveExecution, which moto lacks (pushflow_local/redrive.py)."""
        from pushflow_local.redrive import LocalRedrive

        # Machine time, not the movable clock: moto dates executions by the machine's.
        self.redrive = LocalRedrive(lambda: datetime.now(UTC))
        self.redrive.install(self._stack)

    def _invoke_task_functions_directly(self) -> None:
        """A Task state's `lambda:invoke` calls the function here, not through boto3.

        moto's interpreter invokes Lambda with a new boto3 client each time,
        through botocore's serialisation and moto's own HTTP dispatch: most of
        a local send's orchestration CPU. The function still gets its event as
        JSON and answers as JSON, and an error comes back as Lambda reports it
        (`FunctionError`), so the ASL's Retry and Catch see what they would.
        """
        from moto.stepfunctions.parser.asl.component.state.exec.state_task import (
            lambda_eval_utils,
        )

        runtime = self
        original = vars(lambda_eval_utils)["_invoke_lambda_function"]

        def invoke(parameters: dict[str, Any], region: str, state_credentials: Any) -> Any:
            answer, function_error = runtime._run(
                parameters["FunctionName"], parameters.get("Payload")
            )
            try:
                payload: Any = json.loads(answer)
            except ValueError:
                payload = answer
            response: dict[str, Any] = {
                "StatusCode": 200,
                "ExecutedVersion": "$LATEST",
                "Payload": payload,
            }
            if function_error:
                response["FunctionError"] = function_error
            return response

        setattr(lambda_eval_utils, "_invoke_lambda_function", invoke)  # noqa: B010
        self._stack.callback(setattr, lambda_eval_utils, "_invoke_lambda_function", original)

    def _copy_state_data_faster(self) -> None:
        """moto's interpreter deep-copies a state's whole input several times per
        state (reading it, Parameters, ResultPath, history events); with pages of
        a few hundred recipients that was a third of a local send's CPU. Those
        values are JSON data: a marshal round trip copies them the same way
        (shared references kept, like deepcopy) about seven times faster.
        """
        self._replace_in_modules(_MOTO_MODULES_COPYING_STATE_DATA, "copy", lambda _: _StateDataCopy)

    def _parse_each_json_path_once(self) -> None:
        """moto parses a state's JSONPath (`$.Payload`) with jsonpath-ng every time it
        applies it, building a parser each time (~0.5 ms); the ASL has a few dozen
        paths, so each is parsed once. Parsed paths are immutable."""
        self._replace_in_modules(
            _MOTO_MODULES_PARSING_JSON_PATHS, "parse", functools.lru_cache(maxsize=1024)
        )

    def _replace_in_modules(
        self, modules: Sequence[str], name: str, replacement: Callable[[Any], Any]
    ) -> None:
        """Each module's global `name` replaced by `replacement(original)` while the
        runtime runs, and put back when it stops."""
        for module_name in modules:
            module = importlib.import_module(module_name)
            original = vars(module)[name]
            setattr(module, name, replacement(original))
            self._stack.callback(setattr, module, name, original)

    def _patch_wait_states(self) -> None:
        """Wait states measured on the runtime's clock, in UTC.

        moto compares a Wait's timestamp with the machine's local time and
        rounds down to whole seconds; here a timestamp is read as UTC (as
        Step Functions does) against `self.clock`, rounded up. Under virtual
        time a Wait moves the clock instead of sleeping.
        """
        from moto.stepfunctions.parser.asl.component.state.wait.wait_function import (
            timestamp,
            wait_function,
        )

        runtime = self
        original_seconds = timestamp.Timestamp._get_wait_seconds
        original_wait = wait_function.WaitFunction._wait_interval

        def seconds_until(function: Any, env: Any) -> int:
            function.string.eval(env=env)
            raw = env.stack.pop()
            moment = timestamp.Timestamp._from_timestamp_string(raw)
            if moment is None:  # let moto report the malformed timestamp
                env.stack.append(raw)
                seconds: int = original_seconds(function, env)
                return seconds
            target: datetime = moment.replace(tzinfo=UTC)
            if runtime.virtual_time:
                runtime.clock.advance_to(target)
                return 0
            remaining: float = (target - runtime.clock.now()).total_seconds()
            return max(0, math.ceil(remaining))

        def wait(function: Any, env: Any, wait_seconds: int) -> None:
            if not runtime.virtual_time:
                original_wait(function, env, wait_seconds)
            elif wait_seconds > 0:
                runtime.clock.advance(timedelta(seconds=wait_seconds))

        timestamp.Timestamp._get_wait_seconds = seconds_until  # type: ignore[method-assign,assignment]
        wait_function.WaitFunction._wait_interval = wait  # type: ignore[method-assign,assignment]
        self._stack.callback(setattr, timestamp.Timestamp, "_get_wait_seconds", original_seconds)
        self._stack.callback(setattr, wait_function.WaitFunction, "_wait_interval", original_wait)

    @contextlib.contextmanager
    def virtual_time_enabled(self) -> Iterator[None]:
        """Run Wait states on the movable clock for a while (tests of deferrals)."""
        previous, self.virtual_time = self.virtual_time, True
        try:
            yield
        finally:
            self.virtual_time = previous

    def _set_env(self, name: str, value: str) -> None:
        previous = os.environ.get(name)
        os.environ[name] = value
        if previous is None:
            self._stack.callback(os.environ.pop, name, None)
        else:
            self._stack.callback(os.environ.__setitem__, name, previous)

    # -- resources ---------------------------------------------------------

    def client(self, service: Any) -> Any:
        return boto3.client(service, region_name=REGION)

    def _create_resources(self) -> None:
        assert self.servers is not None
        iam = self.client("iam")
        role = iam.create_role(
            RoleName=f"{STACK}-role",
            AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}),
        )["Role"]["Arn"]

        sns = self.client("sns")
        for parameter, (name, platform) in PLATFORMS.items():
            self.platform_applications[platform] = sns.create_platform_application(
                Name=name,
                Platform=platform,
                Attributes={"PlatformCredential": "local", "PlatformPrincipal": "local"},
            )["PlatformApplicationArn"]
            self.parameters[parameter] = self.platform_applications[platform]

        refs: dict[str, str] = {}
        attributes: dict[tuple[str, str], str] = {}
        s3 = self.client("s3")
        for logical_id in self.template.resource_ids("AWS::S3::Bucket"):
            bucket = f"{STACK}-{logical_id.lower()}"
            s3.create_bucket(Bucket=bucket)
            refs[logical_id] = bucket
            attributes[(logical_id, "Arn")] = f"arn:aws:s3:::{bucket}"
        self._create_supporting_resources(refs, attributes)

        code = io.BytesIO()
        with zipfile.ZipFile(code, "w") as archive:
            archive.writestr("README", "local mode runs the handler in-process")
        lambda_client = self.client("lambda")
        for spec in self.template.functions():
            name = f"{STACK}-{spec.logical_id}"
            arn = lambda_client.create_function(
                FunctionName=name,
                Runtime="python3.11",
                Role=role,
                Handler=spec.handler,
                Code={"ZipFile": code.getvalue()},
                Timeout=spec.timeout,
            )["FunctionArn"]
            function = LocalFunction(spec, name, arn)
            self.functions[spec.logical_id] = self.by_name[name] = function
            refs[spec.logical_id] = name
            attributes[(spec.logical_id, "Arn")] = arn
            if spec.alias:
                # As SAM's AutoPublishAlias: a version, and the alias the template refers to.
                version = lambda_client.publish_version(FunctionName=name)
                refs[f"{spec.logical_id}.Version"] = version["FunctionArn"]
                refs[f"{spec.logical_id}.Alias"] = lambda_client.create_alias(
                    FunctionName=name, Name=spec.alias, FunctionVersion=version["Version"]
                )["AliasArn"]

        self.parameters.update(
            {**self.template.parameter_defaults(), **self.parameters, **self._parameter_overrides}
        )
        self.parameters["RedisUrl"] = self.servers.redis_url
        pseudo = {
            "AWS::StackName": STACK,
            "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::NoValue": "",
        }
        sfn = self.client("stepfunctions")
        for machine in self.template.state_machines():
            resolver = Resolver(self.template, self.parameters, refs, attributes, pseudo)
            definition = machine.definition_path.read_text()
            for name, value in resolver.resolve(dict(machine.substitutions)).items():
                definition = definition.replace("${" + name + "}", str(value))
            definition = step_functions_limits.readable_by_moto(definition)
            arn = sfn.create_state_machine(
                name=f"{STACK}-{machine.logical_id}", definition=definition, roleArn=role
            )["stateMachineArn"]
            refs[machine.logical_id] = arn
            self.state_machine_arn = arn
        self.resolver = Resolver(self.template, self.parameters, refs, attributes, pseudo)

    def _create_supporting_resources(
        self, refs: dict[str, str], attributes: dict[tuple[str, str], str]
    ) -> None:
        """What the functions name in their environment besides functions and buckets:
        the schedule group, queues, topics, roles. Anything else the template declares
        (the VPC, the database, the cache) stands for the local servers: it gets a
        placeholder name so references to it resolve."""
        for logical_id, resource in self.template.resources.items():
            kind = resource["Type"]
            name = f"{STACK}-{logical_id}"
            if kind == "AWS::Scheduler::ScheduleGroup":
                self.client("scheduler").create_schedule_group(Name=name)
                self.schedule_groups.append(name)
                attributes[(logical_id, "Arn")] = (
                    f"arn:aws:scheduler:{REGION}:{ACCOUNT}:schedule-group/{name}"
                )
            elif kind == "AWS::SQS::Queue":
                url = self.client("sqs").create_queue(QueueName=name)["QueueUrl"]
                attributes[(logical_id, "Arn")] = f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"
                attributes[(logical_id, "QueueName")] = name
                name = url
            elif kind == "AWS::SNS::Topic":
                name = self.client("sns").create_topic(Name=name)["TopicArn"]
                attributes[(logical_id, "TopicName")] = f"{STACK}-{logical_id}"
            elif kind == "AWS::IAM::Role":
                attributes[(logical_id, "Arn")] = f"arn:aws:iam::{ACCOUNT}:role/{name}"
            refs.setdefault(logical_id, name)

    def _install_environment(self) -> None:
        """Set the functions' environment, as the template resolves it, in this process.

        All functions run in one process here, so their variables must agree;
        the template sets them in Globals, which keeps them so.
        """
        assert self.servers is not None
        environment: dict[str, str] = {}
        for function in self.functions.values():
            for name, value in self.resolver.resolve(dict(function.spec.environment)).items():
                value = "" if value is None else str(value)
                if environment.get(name, value) != value:
                    raise RuntimeError(f"functions disagree on {name}; local mode needs one value")
                environment[name] = value
        # Local stand-ins for what the deployed stack reads from RDS and Secrets Manager.
        environment["DATABASE_URL"] = self.servers.database_url
        environment["REDIS_URL"] = self.servers.redis_url
        # PublishBatch publishes to the SNS stand-in (deployed: SNS's regional endpoint).
        assert self.sns is not None
        environment["SNS_PUBLISH_ENDPOINT_URL"] = self.sns.url
        environment["POWERTOOLS_TRACE_DISABLED"] = "true"
        environment["POWERTOOLS_METRICS_DISABLED"] = "true"
        environment.setdefault("POWERTOOLS_LOG_LEVEL", "INFO")
        for name, value in environment.items():
            self._set_env(name, value)
        self.environment = environment

        from pushflow.config import Settings
        from pushflow.handler import replace_services
        from pushflow.services import Services

        if self.log_path is not None:
            self._redirect_function_logs(self.log_path)
        self.services = Services(Settings.from_env(), clock=self.clock)
        previous = replace_services(self.services)
        self._stack.callback(replace_services, previous)
        self._stack.callback(self.services.close)

    def _redirect_function_logs(self, path: Path) -> None:
        import pushflow.observability  # noqa: F401 - creates the Powertools logger

        path.parent.mkdir(parents=True, exist_ok=True)
        stream = path.open("a", encoding="utf-8")
        self._stack.callback(stream.close)
        service_logger = logging.getLogger(os.environ.get("POWERTOOLS_SERVICE_NAME", "pushflow"))
        for handler in service_logger.handlers:
            if isinstance(handler, logging.StreamHandler):
                previous = handler.setStream(stream)
                self._stack.callback(handler.setStream, previous)

    # -- Lambda --------------------------------------------------------------

    def _invoke(self, function_name: str, body: Any, response_headers: dict[str, str]) -> bytes:
        answer, function_error = self._run(function_name, body)
        if function_error:
            response_headers["x-amz-function-error"] = function_error
        return answer.encode()

    def _run(self, function_name: str, body: Any) -> tuple[str, str | None]:
        """A function's answer as Lambda gives it: its result as JSON, or its error
        (with "Unhandled", as Lambda's X-Amz-Function-Error says)."""
        function = self._function(function_name)
        event = json.loads(body) if body else {}
        try:
            result = function.invoke(event)
        except Exception as error:
            self.failures.setdefault(function.spec.logical_id, []).append(error)
            failure: dict[str, Any]
            if isinstance(error, SandboxTimedOut):
                # What Lambda answers for a timeout: no stack, the sandbox is gone.
                failure = {"errorType": error.error_type, "errorMessage": str(error)}
            else:
                failure = {
                    "errorType": type(error).__name__,
                    "errorMessage": str(error),
                    "stackTrace": traceback.format_exception(error)[-3:],
                }
            return json.dumps(failure), "Unhandled"
        return json.dumps(result), None

    def _function(self, function_name: str) -> LocalFunction:
        """The function a name or ARN names, as Lambda's Invoke takes them: an
        alias qualifier must be the function's own (the ASL invokes aliases)."""
        name, _, qualifier = function_name.split(":function:")[-1].partition(":")
        function = self.by_name[name]
        if qualifier not in ("", "$LATEST", function.spec.alias):
            raise LookupError(f"{function_name}: {name} has no alias or version {qualifier!r}")
        return function

    def invoke(self, logical_id: str, event: Any) -> Any:
        """Run a function's handler with the template's environment (`pushflow invoke`)."""
        return self.functions[logical_id].invoke(event)

    @contextlib.contextmanager
    def function_timeouts(self, seconds: Mapping[str, float]) -> Iterator[None]:
        """Functions (by logical id) given another Timeout for a while: the same
        context countdown and the same stop at the deadline, sooner (tests)."""
        previous = {logical_id: self.functions[logical_id].timeout for logical_id in seconds}
        for logical_id, timeout in seconds.items():
            self.functions[logical_id].timeout = timeout
        try:
            yield
        finally:
            for logical_id, timeout in previous.items():
                self.functions[logical_id].timeout = timeout

    # -- executions ----------------------------------------------------------

    def start_execution(self, name: str, payload: Mapping[str, Any]) -> str:
        response = self.client("stepfunctions").start_execution(
            stateMachineArn=self.state_machine_arn, name=name, input=json.dumps(payload)
        )
        return str(response["executionArn"])

    def wait(
        self, execution_arn: str, timeout: float = 600.0, poll: float = 0.05
    ) -> dict[str, Any]:
        sfn = self.client("stepfunctions")
        deadline = time.monotonic() + timeout
        while True:
            execution: dict[str, Any] = sfn.describe_execution(executionArn=execution_arn)
            if execution["status"] != "RUNNING":
                return execution
            if time.monotonic() > deadline:
                raise TimeoutError(f"{execution_arn} still running after {timeout:.0f}s")
            time.sleep(poll)

    def history(self, execution_arn: str) -> list[dict[str, Any]]:
        sfn = self.client("stepfunctions")
        events: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"executionArn": execution_arn, "maxResults": 1000}
            if token:
                kwargs["nextToken"] = token
            page = sfn.get_execution_history(**kwargs)
            events.extend(page["events"])
            token = page.get("nextToken")
            if not token:
                return events

    def state_path(self, execution_arn: str) -> list[str]:
        """The states the parent execution entered, in order."""
        return [
            event["stateEnteredEventDetails"]["name"]
            for event in self.history(execution_arn)
            if "stateEnteredEventDetails" in event
        ]

    def map_run_children(self, execution_arn: str) -> list[list[dict[str, Any]]]:
        """The history of each child execution the execution's Map Runs started.

        Step Functions lists them (`ListExecutions` with a `mapRunArn`); moto runs a
        child in a frame of its parent, so the runtime keeps each child's history as
        it ends (step_functions_limits)."""
        from moto.stepfunctions.parser.models import stepfunctions_parser_backends

        backend = stepfunctions_parser_backends[ACCOUNT][REGION]
        execution: Any = backend.describe_execution(execution_arn=execution_arn)
        records = execution.exec_worker.env.map_run_record_pool_manager.get_all()
        return [
            [dict(event) for event in history]
            for record in records
            for history in step_functions_limits.child_histories(record)
        ]

    # -- EventBridge Scheduler (moto stores schedules but never fires them) --------

    def fire_due_schedules(self) -> list[str]:
        """Fire every schedule due by the runtime's clock, as EventBridge Scheduler would.

        One-time `at()` schedules fire once and are deleted (ActionAfterCompletion
        DELETE); cron schedules fire each time due since their start or their last
        firing. Returns the started executions' ARNs.
        """
        from pushflow.domain.recurrence import Cron

        scheduler = self.client("scheduler")
        now = self.clock.now()
        started: list[str] = []
        with self._firing_lock:
            for group in self.schedule_groups:
                listed = scheduler.list_schedules(GroupName=group).get("Schedules", [])
                for summary in listed:
                    schedule = scheduler.get_schedule(GroupName=group, Name=summary["Name"])
                    expression = schedule["ScheduleExpression"]
                    if expression.startswith("at("):
                        zone = ZoneInfo(schedule.get("ScheduleExpressionTimezone") or "UTC")
                        due = datetime.fromisoformat(expression[3:-1]).replace(tzinfo=zone)
                        if due <= now and schedule["Arn"] not in self._fired:
                            started += self._fire(schedule, due)
                            self._fired[schedule["Arn"]] = due
                            if schedule.get("ActionAfterCompletion") == "DELETE":
                                scheduler.delete_schedule(GroupName=group, Name=summary["Name"])
                    elif expression.startswith("cron("):
                        last = self._fired.get(schedule["Arn"]) or _as_utc(schedule["StartDate"])
                        end = _as_utc(schedule["EndDate"]) if schedule.get("EndDate") else None
                        firings = Cron.parse(expression).firings(
                            last, schedule.get("ScheduleExpressionTimezone") or "UTC"
                        )
                        for due in firings:
                            if due > now or (end is not None and due > end):
                                break
                            started += self._fire(schedule, due)
                            self._fired[schedule["Arn"]] = due
        return started

    def _fire(self, schedule: Mapping[str, Any], due: datetime) -> list[str]:
        """Invoke a schedule's universal sfn:startExecution target for one firing."""
        target = schedule["Target"]
        if target["Arn"] != "arn:aws:scheduler:::aws-sdk:sfn:startExecution":
            raise RuntimeError(f"local mode fires only StartExecution targets, not {target['Arn']}")
        text = (
            target["Input"]
            .replace("<aws.scheduler.scheduled-time>", due.strftime("%Y-%m-%dT%H:%M:%SZ"))
            .replace("<aws.scheduler.schedule-arn>", schedule["Arn"])
            .replace("<aws.scheduler.execution-id>", uuid.uuid4().hex[:16])
            .replace("<aws.scheduler.attempt-number>", "1")
        )
        start = json.loads(text)
        parameters = {
            "stateMachineArn": start["StateMachineArn"],
            "input": start["Input"],
            # Without a name AWS makes a unique one; moto would name it "None".
            "name": start.get("Name") or str(uuid.uuid4()),
        }
        sfn = self.client("stepfunctions")
        try:
            return [str(sfn.start_execution(**parameters)["executionArn"])]
        except sfn.exceptions.ExecutionAlreadyExists:
            return []

    def fire_schedules_continuously(self, every: float = 1.0) -> None:
        """`pushflow local serve`: fire due schedules in the background until stopped."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(every):
                try:
                    self.fire_due_schedules()
                except Exception:
                    logging.getLogger(__name__).exception("firing schedules failed")

        thread = threading.Thread(target=loop, name="schedules", daemon=True)
        thread.start()
        self._stack.callback(thread.join, 5)
        self._stack.callback(stop.set)

    # -- every send ends (the template's ReconcileSendsFunction, run here) ----------

    def reconcile_sends(self) -> dict[str, Any]:
        """Run ReconcileSendsFunction once, as its schedule does deployed."""
        summary: dict[str, Any] = self.invoke(
            "ReconcileSendsFunction",
            {"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}},
        )
        return summary

    def reconcile_sends_continuously(self, every: float = 60.0) -> None:
        """`pushflow local serve`: run the reconciler in the background until stopped."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(every):
                try:
                    self.reconcile_sends()
                except Exception:
                    logging.getLogger(__name__).exception("reconciling sends failed")

        thread = threading.Thread(target=loop, name="reconcile-sends", daemon=True)
        thread.start()
        self._stack.callback(thread.join, 5)
        self._stack.callback(stop.set)

    def sns_messages(self) -> dict[str, list[str]]:
        """What was delivered per platform endpoint: endpoint ARN -> messages (the SNS
        stand-in records each delivered push where moto keeps an endpoint's messages)."""
        from moto.sns.models import sns_backends

        backend = sns_backends[ACCOUNT][REGION]
        return {
            arn: list(endpoint.messages.values())
            for arn, endpoint in backend.platform_endpoints.items()
        }
