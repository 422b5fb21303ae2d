"""What a send costs on AWS, worked out from template.yaml and the ASL as they are.

`pushflow cost --recipients N --region R` reads the state machine's definition
and counts what a healthy one-pass send bills: the parent's states on its way
through the Distributed Map once, one transition per child execution the Map
starts, each state a Standard child enters (or, for Express children,
requests and duration), the Lambda invocations behind each Task (memory from
the template), the page plan's S3 requests (by the Map's ItemReader), SNS's
publishes and mobile deliveries, and the functions' logs. The wall-time floor
is the audience over the region's SNS publish quota.

What a model cannot read from the files is an assumption, written down here
with its reason: each function's duration (`DURATIONS`), the bytes each
invocation logs, that every recipient is published to (filtered recipients
cost less), no retries and no free tier. A test (tests/e2e/test_cost_model.py)
holds the transition counts to what the local runtime records in a real send.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pushflow_local.sns import REGION_PUBLISH_QUOTAS, region_publish_quota
from pushflow_local.template import Template

# -- prices ---------------------------------------------------------------------------

PRICES_AS_OF = "2025-06"
PRICES_REGION = "us-east-1"


@dataclass(frozen=True)
class Price:
    usd: float
    per: str
    source: str


# List prices in us-east-1, on demand, Lambda on arm64; most other regions charge
# the same or a little more. Check the pages before relying on them.
PRICES: dict[str, Price] = {
    "sfn_standard_transition": Price(
        0.025 / 1_000, "state transition", "aws.amazon.com/step-functions/pricing"
    ),
    "sfn_express_request": Price(
        1.00 / 1_000_000, "Express execution", "aws.amazon.com/step-functions/pricing"
    ),
    "sfn_express_gb_second": Price(
        0.00001667, "Express GB-second (64 MB steps, 100 ms steps)", "same page"
    ),
    "lambda_request": Price(0.20 / 1_000_000, "invocation", "aws.amazon.com/lambda/pricing"),
    "lambda_gb_second_arm64": Price(0.0000133334, "GB-second on arm64", "same page"),
    "lambda_gb_second_x86_64": Price(0.0000166667, "GB-second on x86_64", "same page"),
    "sns_publish": Price(0.50 / 1_000_000, "publish request", "aws.amazon.com/sns/pricing"),
    "sns_mobile_delivery": Price(0.50 / 1_000_000, "mobile push delivery", "same page"),
    "s3_put_list": Price(0.005 / 1_000, "PUT, COPY, POST or LIST", "aws.amazon.com/s3/pricing"),
    "s3_get": Price(0.0004 / 1_000, "GET", "same page"),
    "logs_ingestion": Price(
        0.50 / 1024**3, "byte of logs ingested", "aws.amazon.com/cloudwatch/pricing"
    ),
}

# -- assumptions ----------------------------------------------------------------------

# Bytes of logs per invocation: Powertools' structured lines (a cold start, the
# handler's summary, Lambda's START/END/REPORT), measured by eye in the local log.
LOG_BYTES_PER_INVOCATION = 2_048
# Inside the region, one SNS Publish round trip (the stand-in's default median is
# 20 ms, mean ~25 ms with its tail: docs/benchmarks.md).
SNS_ROUND_TRIP_SECONDS = 0.025
# Keys an S3 ListObjectsV2 call returns at most.
S3_LIST_PAGE = 1_000


@dataclass(frozen=True)
class Duration:
    """A function's billed seconds per invocation: fixed x pages it handles
    + per_recipient x the audience (Prepare's plan and Finalize's count scan it)."""

    fixed: float
    per_recipient: float = 0.0
    why: str = ""


# Deployed durations (512 MB arm64, inside the VPC), not local ones: locally 40 pages
# share one interpreter, so a page's wall time there says little (bench/results.json
# end_to_end.functions has the local CPU per call: resolve ~6 ms, filter ~9 ms,
# publish ~77 ms of it the local publisher and stand-in, record <1 ms).
DURATIONS: dict[str, Duration] = {
    "PrepareFunction": Duration(
        0.5, 5e-6, "a keyset scan of the audience (~190k rows/s) and the plan's S3 PUTs"
    ),
    "ResolveRecipientsFunction": Duration(
        0.05, why="one prepared keyset query (~3 ms) and a few round trips via RDS Proxy"
    ),
    "FilterRecipientsFunction": Duration(0.05, why="one MGET and one Lua call per hash slot"),
    # PublishBatch's own figure is worked out from PublishConcurrency (publish_seconds).
    "RecordResultsFunction": Duration(
        0.01, why="nothing to write after a page PublishBatch pushed"
    ),
    "RecordPageFailureFunction": Duration(0.05, why="one COPY of the page's failed rows"),
    "PlanDeferredFunction": Duration(0.05, why="nothing deferred in a one-pass send"),
    "FinalizeFunction": Duration(0.2, 2e-6, "counts the rows per outcome"),
}
DEFAULT_DURATION = Duration(0.1, why="not listed: an assumed 100 ms")


def publish_seconds(page_size: int, concurrency: int) -> float:
    """PublishBatch: the page in waves of `concurrency` round trips, plus ~50 ms of
    reading the send, claiming the devices and one COPY of the page's rows."""
    return math.ceil(page_size / max(1, concurrency)) * SNS_ROUND_TRIP_SECONDS + 0.05


# -- the state machine, read ----------------------------------------------------------


class CostModelError(ValueError):
    """The definition has a shape the model does not know how to bill."""


@dataclass(frozen=True)
class TaskCall:
    state: str
    function: str  # the template's logical id


@dataclass(frozen=True)
class Workflow:
    """A healthy one-pass send's path, read from the ASL."""

    parent_states: tuple[str, ...]  # entered by the parent, in order, the Map included
    parent_tasks: tuple[TaskCall, ...]
    child_states: tuple[str, ...]  # entered by each child execution
    child_tasks: tuple[TaskCall, ...]
    child_type: str  # STANDARD or EXPRESS
    pages_per_child: int  # ItemBatcher's MaxItemsPerBatch, else 1
    item_reader: str  # the ItemReader's resource
    # A send with no recipients: the path that never enters the Map.
    empty_parent_states: tuple[str, ...] = ()
    empty_parent_tasks: tuple[TaskCall, ...] = ()


def _successors(state: Mapping[str, Any]) -> list[str]:
    """Where a state goes when nothing fails: Next, a Choice's rules and Default."""
    if state["Type"] == "Choice":
        targets = [rule["Next"] for rule in state.get("Choices", [])]
        return [*targets, *([state["Default"]] if "Default" in state else [])]
    return [state["Next"]] if "Next" in state else []


def _ends_well(state: Mapping[str, Any]) -> bool:
    """A send ends at a state with `End` (Finalize); a Succeed state is an early way
    out (a cancelled or duplicate run: NothingToSend), not a send's path."""
    return state["Type"] != "Fail" and state.get("End") is True


def _is_distributed_map(state: Mapping[str, Any]) -> bool:
    if state["Type"] != "Map":
        return False
    processor = state.get("ItemProcessor") or state.get("Iterator") or {}
    return bool(processor.get("ProcessorConfig", {}).get("Mode") == "DISTRIBUTED")


def _happy_path(states: Mapping[str, Any], start: str, through_map: bool) -> list[str]:
    """The shortest path from `start` to a state that ends the execution well which
    enters the Distributed Map exactly once (or never, when `through_map` is False):
    a send with recipients, all of them sent in one pass, nothing failing."""
    wanted = 1 if through_map else 0
    queue: deque[tuple[str, int, tuple[str, ...]]] = deque([(start, 0, ())])
    seen: set[tuple[str, int]] = set()
    while queue:
        name, maps, path = queue.popleft()
        state = states[name]
        maps += _is_distributed_map(state)
        if maps > wanted or (name, maps) in seen:
            continue
        seen.add((name, maps))
        path = (*path, name)
        if _ends_well(state) and maps == wanted:
            return list(path)
        for target in _successors(state):
            queue.append((target, maps, path))
    raise CostModelError(f"no path from {start} ends well through the Map {wanted} time(s)")


def _task_function(
    name: str, state: Mapping[str, Any], substitutions: Mapping[str, str]
) -> TaskCall | None:
    resource = str(state.get("Resource", ""))
    if not resource.startswith("arn:aws:states:::lambda:invoke"):
        if resource:
            raise CostModelError(f"{name}: the model bills Lambda tasks only, not {resource}")
        return None
    reference = str(state.get("Parameters", {}).get("FunctionName", ""))
    variable = reference.removeprefix("${").removesuffix("}")
    if variable not in substitutions:
        raise CostModelError(f"{name}: FunctionName {reference!r} is no DefinitionSubstitution")
    return TaskCall(name, substitutions[variable])


def read_workflow(definition: Mapping[str, Any], substitutions: Mapping[str, str]) -> Workflow:
    """The path a healthy one-pass send takes; `substitutions` maps each
    DefinitionSubstitutions variable naming a function to its logical id."""
    states = definition["States"]
    parent = _happy_path(states, definition["StartAt"], through_map=True)
    [map_name] = [name for name in parent if _is_distributed_map(states[name])]
    fan_out = states[map_name]
    processor = fan_out.get("ItemProcessor") or fan_out["Iterator"]
    child = _happy_path(processor["States"], processor["StartAt"], through_map=False)

    def tasks(names: list[str], table: Mapping[str, Any]) -> tuple[TaskCall, ...]:
        calls = (_task_function(name, table[name], substitutions) for name in names)
        return tuple(call for call in calls if call is not None)

    batcher = fan_out.get("ItemBatcher", {})
    empty = _happy_path(states, definition["StartAt"], through_map=False)
    return Workflow(
        parent_states=tuple(parent),
        parent_tasks=tasks(parent, states),
        child_states=tuple(child),
        child_tasks=tasks(child, processor["States"]),
        child_type=str(processor["ProcessorConfig"].get("ExecutionType", "STANDARD")),
        pages_per_child=int(batcher.get("MaxItemsPerBatch", 1)),
        item_reader=str(fan_out.get("ItemReader", {}).get("Resource", "")),
        empty_parent_states=tuple(empty),
        empty_parent_tasks=tasks(empty, states),
    )


@dataclass(frozen=True)
class Stack:
    """What the model needs from template.yaml."""

    workflow: Workflow
    memory_mb: dict[str, int]
    architecture: dict[str, str]
    page_size: int
    publish_concurrency: int


def _function_of(value: Any) -> str | None:
    """The function a substitution names: `!Ref X.Alias`, `!Ref X`, `!GetAtt X.Arn`."""
    if isinstance(value, Mapping):
        if "Ref" in value:
            return str(value["Ref"]).split(".")[0]
        if "Fn::GetAtt" in value:
            target = value["Fn::GetAtt"]
            return str(target[0] if isinstance(target, list) else target.split(".")[0])
    return None


def read_stack(template_path: Path | None = None) -> Stack:
    template = Template(template_path) if template_path else Template()
    [machine] = template.state_machines()
    functions = set(template.resource_ids("AWS::Serverless::Function"))
    substitutions = {
        variable: name
        for variable, value in machine.substitutions.items()
        if (name := _function_of(value)) in functions
    }
    definition = json.loads(machine.definition_path.read_text())
    globals_ = template.document.get("Globals", {}).get("Function", {})
    memory: dict[str, int] = {}
    architecture: dict[str, str] = {}
    for logical_id in functions:
        properties = template.resources[logical_id].get("Properties", {})
        memory[logical_id] = int(properties.get("MemorySize", globals_.get("MemorySize", 128)))
        architectures = properties.get("Architectures", globals_.get("Architectures", ["x86_64"]))
        architecture[logical_id] = str(architectures[0])
    defaults = template.parameter_defaults()
    return Stack(
        workflow=read_workflow(definition, substitutions),
        memory_mb=memory,
        architecture=architecture,
        page_size=int(defaults["PageSize"]),
        publish_concurrency=int(defaults["PublishConcurrency"]),
    )


# -- the bill ------------------------------------------------------------------------


@dataclass
class Bill:
    recipients: int
    region: str
    page_size: int
    pages: int
    child_executions: int
    transitions_parent: int
    transitions_per_child: int  # one to start it (the Map's) + its states, if Standard
    state_transitions: int
    express_requests: int
    express_gb_seconds: float
    lambda_invocations: int
    lambda_gb_seconds: float
    s3_put_list_requests: int
    s3_get_requests: int
    sns_publishes: int
    log_bytes: float
    step_functions_usd: float
    lambda_usd: float
    sns_usd: float
    s3_usd: float
    logs_usd: float
    total_usd: float
    ratio_to_sns: float  # all in, over what SNS alone charges
    sns_publish_quota_per_s: int
    min_wall_seconds: float
    prices_as_of: str = PRICES_AS_OF
    assumptions: dict[str, str] = field(default_factory=dict)


def _gb_seconds_per_call(stack: Stack, call: TaskCall, pages: int, recipients: int) -> float:
    if call.function == "PublishBatchFunction":
        seconds = pages * publish_seconds(stack.page_size, stack.publish_concurrency)
    else:
        duration = DURATIONS.get(call.function, DEFAULT_DURATION)
        seconds = duration.fixed * pages + duration.per_recipient * recipients
    return seconds * stack.memory_mb.get(call.function, 128) / 1024


def _lambda_gb_usd(stack: Stack, function: str, gb_seconds: float) -> float:
    architecture = stack.architecture.get(function, "x86_64")
    key = "lambda_gb_second_arm64" if architecture == "arm64" else "lambda_gb_second_x86_64"
    return gb_seconds * PRICES[key].usd


def _express_billed_gb_seconds(seconds: float, memory_mb: int = 64) -> float:
    """Express: duration in 100 ms steps, memory in 64 MB steps."""
    return math.ceil(seconds * 10) / 10 * (math.ceil(memory_mb / 64) * 64) / 1024


def bill(
    recipients: int, region: str, page_size: int | None = None, stack: Stack | None = None
) -> Bill:
    if recipients < 0:
        raise ValueError(f"--recipients must be 0 or more, not {recipients}")
    if region not in KNOWN_REGIONS:
        raise ValueError(f"unknown region {region!r}; known: {', '.join(sorted(KNOWN_REGIONS))}")
    stack = stack or read_stack()
    if page_size is not None:
        if page_size < 1:
            raise ValueError(f"--page-size must be 1 or more, not {page_size}")
        stack = Stack(
            stack.workflow,
            stack.memory_mb,
            stack.architecture,
            page_size,
            stack.publish_concurrency,
        )
    flow = stack.workflow
    pages = math.ceil(recipients / stack.page_size)
    children = math.ceil(pages / flow.pages_per_child)
    through_map = pages > 0

    # A send with no recipients never enters the Map.
    parent_states = flow.parent_states if through_map else flow.empty_parent_states
    parent_tasks = flow.parent_tasks if through_map else flow.empty_parent_tasks

    standard_children = flow.child_type == "STANDARD"
    per_child = 1 + (len(flow.child_states) if standard_children else 0)
    transitions = len(parent_states) + children * per_child

    # Lambda: the parent's tasks once (their work grows with the audience), each child's
    # tasks once per child (their work with the pages the child handles).
    invocations = len(parent_tasks) + children * len(flow.child_tasks)
    gb_seconds = 0.0
    lambda_usd = invocations * PRICES["lambda_request"].usd
    child_seconds = 0.0
    for call in parent_tasks:
        gbs = _gb_seconds_per_call(stack, call, 1, recipients)
        gb_seconds += gbs
        lambda_usd += _lambda_gb_usd(stack, call.function, gbs)
    for call in flow.child_tasks:
        gbs = children and _gb_seconds_per_call(stack, call, pages, 0)
        gb_seconds += gbs
        lambda_usd += _lambda_gb_usd(stack, call.function, gbs)
        child_seconds += gbs / (stack.memory_mb.get(call.function, 128) / 1024)

    express_requests = 0 if standard_children else children
    express_gb_seconds = (
        0.0
        if standard_children or not children
        else children * _express_billed_gb_seconds(child_seconds / children)
    )
    step_functions_usd = (
        transitions * PRICES["sfn_standard_transition"].usd
        + express_requests * PRICES["sfn_express_request"].usd
        + express_gb_seconds * PRICES["sfn_express_gb_second"].usd
    )

    # The page plan: one object per page listed by the ItemReader, or one manifest read.
    if not through_map:
        puts, gets = 0, 0
    elif flow.item_reader.endswith("s3:listObjectsV2"):
        puts, gets = pages + math.ceil(pages / S3_LIST_PAGE), 0
    elif flow.item_reader.endswith("s3:getObject"):
        puts, gets = 1, 1
    else:
        raise CostModelError(f"the model does not know the ItemReader {flow.item_reader!r}")
    s3_usd = puts * PRICES["s3_put_list"].usd + gets * PRICES["s3_get"].usd

    sns_usd = recipients * (PRICES["sns_publish"].usd + PRICES["sns_mobile_delivery"].usd)
    log_bytes = invocations * LOG_BYTES_PER_INVOCATION
    logs_usd = log_bytes * PRICES["logs_ingestion"].usd
    total = step_functions_usd + lambda_usd + sns_usd + s3_usd + logs_usd
    quota = region_publish_quota(region)
    return Bill(
        recipients=recipients,
        region=region,
        page_size=stack.page_size,
        pages=pages,
        child_executions=children,
        transitions_parent=len(parent_states),
        transitions_per_child=per_child,
        state_transitions=transitions,
        express_requests=express_requests,
        express_gb_seconds=round(express_gb_seconds, 3),
        lambda_invocations=invocations,
        lambda_gb_seconds=round(gb_seconds, 3),
        s3_put_list_requests=puts,
        s3_get_requests=gets,
        sns_publishes=recipients,
        log_bytes=log_bytes,
        step_functions_usd=step_functions_usd,
        lambda_usd=lambda_usd,
        sns_usd=sns_usd,
        s3_usd=s3_usd,
        logs_usd=logs_usd,
        total_usd=total,
        ratio_to_sns=total / sns_usd if sns_usd else 0.0,
        sns_publish_quota_per_s=quota,
        min_wall_seconds=recipients / quota,
        assumptions={
            "path": "a healthy one-pass send: no retries, no deferred pass, no failed page",
            "sns": "every recipient is published to (filtered recipients cost less); no free tier",
            "durations": "PublishBatch: ceil(page / PublishConcurrency) x 25 ms + 50 ms;"
            " the others: pushflow_local/cost.py DURATIONS",
            "logs": f"{LOG_BYTES_PER_INVOCATION} bytes per invocation",
            "prices": f"{PRICES_REGION} list prices as of {PRICES_AS_OF}",
        },
    )


# Regions SNS mobile push runs in that the model knows (the quota table's, and the
# others at the default quota). An unknown name is refused, not guessed.
KNOWN_REGIONS = frozenset(
    {
        *REGION_PUBLISH_QUOTAS,
        "us-west-1",
        "ca-central-1",
        "eu-west-2",
        "eu-west-3",
        "eu-north-1",
        "eu-south-1",
        "ap-northeast-2",
        "ap-northeast-3",
        "ap-east-1",
        "me-south-1",
        "sa-east-1",
        "af-south-1",
    }
)


def as_json(result: Bill) -> str:
    return json.dumps(asdict(result), indent=2)


def as_table(result: Bill) -> Iterator[str]:
    def usd(value: float) -> str:
        return f"${value:,.4f}"

    yield (
        f"{result.recipients:,} recipients in {result.region}: {result.pages:,} pages of "
        f"{result.page_size}, {result.child_executions:,} child executions"
    )
    rows = [
        (
            "Step Functions",
            f"{result.state_transitions:,} transitions "
            f"({result.transitions_parent} + {result.child_executions:,} x "
            f"{result.transitions_per_child})",
            usd(result.step_functions_usd),
        ),
        (
            "Lambda",
            f"{result.lambda_invocations:,} invocations, {result.lambda_gb_seconds:,.1f} GB-s",
            usd(result.lambda_usd),
        ),
        ("SNS", f"{result.sns_publishes:,} publishes + mobile deliveries", usd(result.sns_usd)),
        (
            "S3",
            f"{result.s3_put_list_requests:,} PUT/LIST, {result.s3_get_requests} GET",
            usd(result.s3_usd),
        ),
        ("CloudWatch Logs", f"{result.log_bytes / 1024**2:,.1f} MB", usd(result.logs_usd)),
        (
            "total",
            f"{result.ratio_to_sns:.2f} x SNS alone" if result.sns_usd else "",
            usd(result.total_usd),
        ),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for name, detail, cost in rows:
        yield f"  {name.ljust(widths[0])}  {detail.ljust(widths[1])}  {cost.rjust(widths[2])}"
    yield (
        f"Wall-time floor: {result.min_wall_seconds:,.1f} s at the account's SNS publish quota "
        f"({result.sns_publish_quota_per_s:,}/s in {result.region})"
    )
    yield (
        f"Prices: {PRICES_REGION} list prices as of {PRICES_AS_OF}; "
        "the assumptions are in pushflow_local/cost.py"
    )
