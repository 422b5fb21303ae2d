"""Checks on template.yaml and the ASL it deploys, as a reviewer of the stack would make them."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cfn_tools import load_yaml

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = REPO_ROOT / "template.yaml"

TASK_FUNCTIONS = [
    "PrepareFunction",
    "PlanDeferredFunction",
    "ResolveRecipientsFunction",
    "FilterRecipientsFunction",
    "PublishBatchFunction",
    "RecordResultsFunction",
    "RecordPageFailureFunction",
    "FinalizeFunction",
]
ALL_FUNCTIONS = [*TASK_FUNCTIONS, "ApiFunction"]
TOKEN_LIFECYCLE_FUNCTIONS = ["TokenLifecycleFunction", "DeviceSweepFunction"]
# Every function that reads or writes PostgreSQL.
DATABASE_FUNCTIONS = [*ALL_FUNCTIONS, *TOKEN_LIFECYCLE_FUNCTIONS, "MigrateFunction"]
STACK_FUNCTIONS = [*DATABASE_FUNCTIONS, "PlatformApplicationFunction"]
# Every function that talks to Redis (the store, the recipient filter).
REDIS_FUNCTIONS = ["FilterRecipientsFunction", "PublishBatchFunction", "ApiFunction"]

GLOBAL_ENVIRONMENT_KEYS = {
    "POWERTOOLS_SERVICE_NAME",
    "POWERTOOLS_METRICS_NAMESPACE",
    "POWERTOOLS_LOG_LEVEL",
    "DATABASE_HOST",
    "DATABASE_PORT",
    "DATABASE_NAME",
    "DATABASE_SECRET_ARN",
    "PAGE_SIZE",
    "PAGE_PLAN_BUCKET",
    "MAP_CONCURRENCY",
    "PUBLISH_CONCURRENCY",
}

# Actions that accept no resource-level permissions; the only ones allowed on Resource "*".
UNSCOPABLE_ACTIONS = {
    "logs:CreateLogDelivery",
    "logs:GetLogDelivery",
    "logs:UpdateLogDelivery",
    "logs:DeleteLogDelivery",
    "logs:ListLogDeliveries",
    "logs:PutResourcePolicy",
    "logs:DescribeResourcePolicies",
    "logs:DescribeLogGroups",
}

SECRET_PARAMETER_NAME = re.compile(
    r"password|secret|token|apikey|api_key|privatekey|credential", re.I
)
SECRET_VALUE_PATTERNS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access key id
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"://[^/\s:@]*:[^/\s@]+@"),  # user:password@ in a URL
    re.compile(r"^[A-Za-z0-9+/=_\-]{32,}$"),  # long opaque token
]
SUBSTITUTION = re.compile(r"\$\{([A-Za-z0-9_]+)\}")


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    loaded: dict[str, Any] = load_yaml(TEMPLATE_PATH.read_text(encoding="utf-8"))
    return loaded


@pytest.fixture(scope="module")
def resources(template: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = template["Resources"]
    return found


@pytest.fixture(scope="module")
def state_machine(resources: dict[str, Any]) -> dict[str, Any]:
    props: dict[str, Any] = resources["SendNotificationStateMachine"]["Properties"]
    return props


def _handler_names(app_py: Path) -> set[str]:
    """Names bound at module level in app.py: defs, assignments and imports."""
    tree = ast.parse(app_py.read_text(encoding="utf-8"), filename=str(app_py))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.ImportFrom):
            names.update(alias.asname or alias.name for alias in node.names)
    return names


def _inline_statements(policies: list[Any]) -> Iterator[dict[str, Any]]:
    """Inline IAM statements of a SAM Policies list, including both branches of Fn::If."""
    for policy in policies:
        if isinstance(policy, dict) and "Fn::If" in policy:
            yield from _inline_statements(
                [branch for branch in policy["Fn::If"][1:] if isinstance(branch, dict)]
            )
        elif isinstance(policy, dict) and "Statement" in policy:
            statements = policy["Statement"]
            yield from statements if isinstance(statements, list) else [statements]


def _all_statements(resources: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, resource in resources.items():
        props = resource.get("Properties", {})
        if resource["Type"] in ("AWS::Serverless::Function", "AWS::Serverless::StateMachine"):
            for statement in _inline_statements(props.get("Policies", [])):
                yield name, statement
        elif "PolicyDocument" in props:
            for statement in _inline_statements([props["PolicyDocument"]]):
                yield name, statement
        elif resource["Type"] == "AWS::IAM::Role":
            for policy in props.get("Policies", []):
                for statement in _inline_statements([policy["PolicyDocument"]]):
                    yield name, statement


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _policy_templates(policies: list[Any], template_name: str) -> list[dict[str, Any]]:
    return [p[template_name] for p in policies if isinstance(p, dict) and template_name in p]


@pytest.mark.parametrize("function_name", STACK_FUNCTIONS)
def test_function_code_folder_has_app_py_defining_the_handler(
    template: dict[str, Any], resources: dict[str, Any], function_name: str
) -> None:
    # GIVEN the function's CodeUri and Handler (its own or the global one)
    props = resources[function_name]["Properties"]
    handler = props.get("Handler", template["Globals"]["Function"]["Handler"])
    module_name, handler_name = handler.rsplit(".", 1)
    code_dir = REPO_ROOT / props["CodeUri"]

    # THEN the folder exists and its module defines the handler
    assert code_dir.is_dir(), f"{function_name}: CodeUri {props['CodeUri']} is not a folder"
    module_path = code_dir / f"{module_name.replace('.', '/')}.py"
    assert module_path.is_file(), f"{function_name}: {module_path.relative_to(REPO_ROOT)} missing"
    assert handler_name in _handler_names(module_path), (
        f"{function_name}: {module_path.relative_to(REPO_ROOT)} does not define {handler_name}"
    )


def test_every_function_uses_the_shared_layer_whose_folder_exists(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    function_globals = template["Globals"]["Function"]
    assert function_globals["Layers"] == [{"Ref": "SharedLayer"}]
    layer = resources["SharedLayer"]
    # The layer is built for the runtime and the architecture the functions run on:
    # without BuildArchitecture SAM builds it for the host's, compiled wheels included.
    assert layer["Metadata"]["BuildMethod"] == function_globals["Runtime"]
    assert [layer["Metadata"]["BuildArchitecture"]] == function_globals["Architectures"]
    assert layer["Properties"]["CompatibleRuntimes"] == [function_globals["Runtime"]]
    assert layer["Properties"]["CompatibleArchitectures"] == function_globals["Architectures"]
    layer_dir = REPO_ROOT / layer["Properties"]["ContentUri"]
    assert (layer_dir / "requirements.txt").is_file()
    assert (layer_dir / "pushflow" / "__init__.py").is_file()


def test_asl_placeholders_and_definition_substitutions_match(
    state_machine: dict[str, Any], resources: dict[str, Any]
) -> None:
    # GIVEN the deployed ASL file and the substitutions the template provides
    asl_path = REPO_ROOT / state_machine["DefinitionUri"]
    asl_text = asl_path.read_text(encoding="utf-8")
    json.loads(asl_text)  # the file must be valid JSON before substitution
    used = set(SUBSTITUTION.findall(asl_text))
    provided = set(state_machine["DefinitionSubstitutions"])

    # THEN nothing is left unsubstituted and nothing is provided in vain
    assert used - provided == set(), "placeholders in the ASL without a substitution"
    assert provided - used == set(), "substitutions the ASL never uses"

    # AND every task function is substituted by its published alias, never $LATEST, and a
    # new version is published when anything changes (the layer's ARN included)
    for function_name in TASK_FUNCTIONS:
        value = state_machine["DefinitionSubstitutions"][f"{function_name}Arn"]
        assert value == {"Ref": f"{function_name}.Alias"}
        function = resources[function_name]
        assert function["Type"] == "AWS::Serverless::Function"
        assert function["Properties"]["AutoPublishAlias"] == "live"
        assert function["Properties"]["AutoPublishAliasAllProperties"] is True


def test_state_machine_may_invoke_exactly_the_aliases_it_names(
    state_machine: dict[str, Any],
) -> None:
    statements = list(_inline_statements(state_machine["Policies"]))
    invoke = [s for s in statements if "lambda:InvokeFunction" in _as_list(s["Action"])]
    assert len(invoke) == 1
    assert _as_list(invoke[0]["Action"]) == ["lambda:InvokeFunction"]
    named = [state_machine["DefinitionSubstitutions"][f"{f}Arn"] for f in TASK_FUNCTIONS]
    assert _as_list(invoke[0]["Resource"]) == named
    # SAM's policy templates would grant more (LambdaInvokePolicy: every version, $LATEST).
    assert all(isinstance(p, dict) and set(p) == {"Statement"} for p in state_machine["Policies"])


def test_state_machine_role_allows_only_what_the_workflow_does(
    state_machine: dict[str, Any], resources: dict[str, Any]
) -> None:
    granted = {
        action
        for statement in _inline_statements(state_machine["Policies"])
        for action in _as_list(statement["Action"])
    }
    assert granted - UNSCOPABLE_ACTIONS == {
        "lambda:InvokeFunction",  # the tasks
        "s3:ListBucket",  # FanOut's ItemReader
        "states:StartExecution",  # the Distributed Map's children
        "states:DescribeExecution",
        "states:StopExecution",
        "states:RedriveExecution",  # a redrive re-runs the failed children
    }
    statements = list(_inline_statements(state_machine["Policies"]))
    (listing,) = [s for s in statements if "s3:ListBucket" in _as_list(s["Action"])]
    assert listing["Resource"] == {"Fn::GetAtt": ["PagePlanBucket", "Arn"]}
    assert listing["Condition"] == {"StringLike": {"s3:prefix": "plans/*"}}
    children = (
        "arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}"
        ":execution:${AWS::StackName}-send-notification/*"
    )
    (managing,) = [s for s in statements if "states:RedriveExecution" in _as_list(s["Action"])]
    assert managing["Resource"] == {"Fn::Sub": children}


def test_state_machine_child_execution_arns_name_the_state_machine_itself(
    state_machine: dict[str, Any],
) -> None:
    # The Distributed Map starts child executions of its own state machine; the policy
    # builds that ARN from the Name, so both must agree or children fail with AccessDenied.
    assert state_machine["Name"] == {"Fn::Sub": "${AWS::StackName}-send-notification"}
    statements = list(_inline_statements(state_machine["Policies"]))
    start = [s for s in statements if "states:StartExecution" in _as_list(s["Action"])]
    assert len(start) == 1
    assert _as_list(start[0]["Resource"]) == [
        {
            "Fn::Sub": "arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}"
            ":stateMachine:${AWS::StackName}-send-notification"
        }
    ]


def test_no_iam_statement_allows_everything(resources: dict[str, Any]) -> None:
    for owner, statement in _all_statements(resources):
        if statement.get("Effect") != "Allow":
            continue
        actions = _as_list(statement["Action"])
        resources_ = _as_list(statement.get("Resource", []))
        assert not any(a == "*" or a.endswith(":*") for a in actions), (
            f"{owner}: wildcard action in {statement}"
        )
        if "*" in resources_:
            assert set(actions) <= UNSCOPABLE_ACTIONS, (
                f"{owner}: Resource '*' for scopable actions {set(actions) - UNSCOPABLE_ACTIONS}"
            )


def test_secret_access_is_granted_for_exactly_the_database_secret_in_use(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    # GIVEN the secret the functions are configured with: the generated one when the
    # stack creates the database, the DatabaseSecretArn parameter otherwise
    secret_arn = template["Globals"]["Function"]["Environment"]["Variables"]["DATABASE_SECRET_ARN"]
    assert secret_arn == {
        "Fn::If": ["CreateDatabase", {"Ref": "DatabaseSecret"}, {"Ref": "DatabaseSecretArn"}]
    }
    # THEN every function that talks to PostgreSQL may read that secret, those that talk
    # to Redis the Redis URL's secret too, and none any other
    redis_secret = {"SecretArn": {"Ref": "RedisUrlSecret"}}
    for function_name in DATABASE_FUNCTIONS:
        policies = resources[function_name]["Properties"]["Policies"]
        granted = _policy_templates(policies, "AWSSecretsManagerGetSecretValuePolicy")
        expected = [{"SecretArn": secret_arn}]
        if function_name in REDIS_FUNCTIONS:
            expected.append(redis_secret)
        assert granted == expected, function_name
    # AND the platform-application function reads only the APNs/FCM secrets, if given
    platform_policies = resources["PlatformApplicationFunction"]["Properties"]["Policies"]
    conditional = [p["Fn::If"] for p in platform_policies if isinstance(p, dict) and "Fn::If" in p]
    assert {
        (condition, when_set["AWSSecretsManagerGetSecretValuePolicy"]["SecretArn"]["Ref"])
        for condition, when_set, _ in conditional
    } == {("HasApnsKey", "ApnsSigningKeySecretArn"), ("HasFcmKey", "FcmServiceAccountSecretArn")}
    # AND no inline statement grants Secrets Manager beyond the proxy's own secret
    for owner, statement in _all_statements(resources):
        if any(str(a).startswith("secretsmanager:") for a in _as_list(statement["Action"])):
            assert owner == "DatabaseProxyRole"
            assert statement["Resource"] == {"Ref": "DatabaseSecret"}


def test_no_parameter_default_looks_like_a_secret(template: dict[str, Any]) -> None:
    for name, parameter in template["Parameters"].items():
        default = str(parameter.get("Default", ""))
        if SECRET_PARAMETER_NAME.search(name) and not name.endswith("Arn"):
            assert default == "", f"{name} has a default; secrets are never defaulted"
        for pattern in SECRET_VALUE_PATTERNS:
            assert not pattern.search(default), f"{name} default looks like a secret"


def test_page_plan_bucket_is_encrypted_private_tls_only_and_expiring(
    resources: dict[str, Any],
) -> None:
    bucket = resources["PagePlanBucket"]["Properties"]

    encryption = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    algorithms = {rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] for rule in encryption}
    assert algorithms and algorithms <= {"AES256", "aws:kms"}

    assert bucket["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }

    expirations = [
        rule["ExpirationInDays"]
        for rule in bucket["LifecycleConfiguration"]["Rules"]
        if rule["Status"] == "Enabled" and "Prefix" not in rule and "Filter" not in rule
    ]
    assert expirations == [7]

    policies = [
        r["Properties"]
        for r in resources.values()
        if r["Type"] == "AWS::S3::BucketPolicy"
        and r["Properties"]["Bucket"] == {"Ref": "PagePlanBucket"}
    ]
    assert len(policies) == 1
    deny_insecure = [
        s
        for s in policies[0]["PolicyDocument"]["Statement"]
        if s["Effect"] == "Deny"
        and s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") in ("false", False)
    ]
    assert deny_insecure, "no statement denies requests without TLS"


def test_globals_give_every_function_its_configuration(template: dict[str, Any]) -> None:
    function_globals = template["Globals"]["Function"]
    assert function_globals["Runtime"] == "python3.13"
    assert function_globals["Architectures"] == ["arm64"]
    assert function_globals["Handler"] == "app.lambda_handler"
    assert function_globals["Tracing"] == "Active"
    variables = function_globals["Environment"]["Variables"]
    assert set(variables) == GLOBAL_ENVIRONMENT_KEYS
    assert variables["POWERTOOLS_SERVICE_NAME"] == "pushflow"
    assert variables["PAGE_PLAN_BUCKET"] == {"Ref": "PagePlanBucket"}


def test_page_size_keeps_pages_within_step_functions_limits(template: dict[str, Any]) -> None:
    page_size = template["Parameters"]["PageSize"]
    assert page_size["Type"] == "Number"
    assert (page_size["Default"], page_size["MinValue"], page_size["MaxValue"]) == (500, 50, 1000)


def test_api_is_defined_by_the_openapi_document_the_code_validates_with(
    resources: dict[str, Any],
) -> None:
    api = resources["PushflowApi"]["Properties"]
    include = api["DefinitionBody"]["Fn::Transform"]
    assert include["Name"] == "AWS::Include"
    location = include["Parameters"]["Location"]
    assert location == "layers/shared/pushflow/schemas/openapi.yaml"
    # The same file ships in the layer, where the functions validate with it.
    layer_dir = REPO_ROOT / resources["SharedLayer"]["Properties"]["ContentUri"]
    assert (REPO_ROOT / location).resolve().is_relative_to(layer_dir.resolve())
    assert (REPO_ROOT / location).is_file()
    # SAM cannot edit an included definition: auth and routes live in the document alone.
    assert "Auth" not in api
    assert "Events" not in resources["ApiFunction"]["Properties"]
    assert api["StageName"] == "api"
    assert api["TracingEnabled"] is True


def test_api_gateway_may_invoke_the_api_function_from_this_api_only(
    resources: dict[str, Any],
) -> None:
    permissions = [
        r["Properties"] for r in resources.values() if r["Type"] == "AWS::Lambda::Permission"
    ]
    assert permissions == [
        {
            "Action": "lambda:InvokeFunction",
            "FunctionName": {"Fn::GetAtt": ["ApiFunction", "Arn"]},
            "Principal": "apigateway.amazonaws.com",
            "SourceArn": {
                "Fn::Sub": "arn:${AWS::Partition}:execute-api:${AWS::Region}"
                ":${AWS::AccountId}:${PushflowApi}/*"
            },
        }
    ]


def test_api_stage_and_backend_key_are_throttled_from_parameters(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    (method_settings,) = resources["PushflowApi"]["Properties"]["MethodSettings"]
    assert method_settings["ThrottlingRateLimit"] == {"Ref": "ApiRateLimit"}
    assert method_settings["ThrottlingBurstLimit"] == {"Ref": "ApiBurstLimit"}

    plan = resources["BackendUsagePlan"]["Properties"]
    assert plan["ApiStages"] == [
        {"ApiId": {"Ref": "PushflowApi"}, "Stage": {"Ref": "PushflowApi.Stage"}}
    ]
    assert plan["Throttle"] == {
        "RateLimit": {"Ref": "ApiRateLimit"},
        "BurstLimit": {"Ref": "ApiBurstLimit"},
    }
    assert plan["Quota"] == {"Limit": {"Ref": "ApiDailyQuota"}, "Period": "DAY"}
    parameters = template["Parameters"]
    assert (
        parameters["ApiRateLimit"]["Default"],
        parameters["ApiBurstLimit"]["Default"],
        parameters["ApiDailyQuota"]["Default"],
    ) == (100, 200, 1000000)

    # The key's value is generated by API Gateway: never in the template.
    key = resources["BackendApiKey"]
    assert key["Properties"]["Enabled"] is True
    assert "Value" not in key["Properties"]
    # SAM names the stage <Api><StageName>Stage; the key waits for it.
    assert key["DependsOn"] == "PushflowApiapiStage"
    assert resources["BackendUsagePlanKey"]["Properties"] == {
        "KeyId": {"Ref": "BackendApiKey"},
        "KeyType": "API_KEY",
        "UsagePlanId": {"Ref": "BackendUsagePlan"},
    }


def test_user_pool_is_created_unless_an_existing_one_is_given(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    assert template["Parameters"]["ExistingUserPoolArn"]["Default"] == ""
    assert template["Conditions"]["CreateUserPool"] == {
        "Fn::Equals": [{"Ref": "ExistingUserPoolArn"}, ""]
    }
    pool = resources["UserPool"]
    assert pool["Condition"] == "CreateUserPool"
    assert pool["Properties"]["UsernameAttributes"] == ["email"]
    password = pool["Properties"]["Policies"]["PasswordPolicy"]
    assert password["MinimumLength"] >= 12
    assert all(
        password[rule]
        for rule in ("RequireLowercase", "RequireUppercase", "RequireNumbers", "RequireSymbols")
    )

    client = resources["UserPoolClient"]
    assert client["Condition"] == "CreateUserPool"
    # A mobile app cannot keep a client secret; it signs in with SRP.
    assert client["Properties"]["GenerateSecret"] is False
    assert set(client["Properties"]["ExplicitAuthFlows"]) == {
        "ALLOW_USER_SRP_AUTH",
        "ALLOW_REFRESH_TOKEN_AUTH",
    }


def test_api_function_knows_the_state_machine_platform_applications_and_scheduler(
    resources: dict[str, Any],
) -> None:
    variables = resources["ApiFunction"]["Properties"]["Environment"]["Variables"]

    def created_or_given(condition: str, resource: str, parameter: str) -> dict[str, Any]:
        return {"Fn::If": [condition, {"Ref": resource}, {"Ref": parameter}]}

    assert variables == {
        "STATE_MACHINE_ARN": {"Ref": "SendNotificationStateMachine"},
        "APNS_PLATFORM_APPLICATION_ARN": created_or_given(
            "CreateApnsApplication", "ApnsPlatformApplication", "ApnsPlatformApplicationArn"
        ),
        "APNS_SANDBOX_PLATFORM_APPLICATION_ARN": created_or_given(
            "CreateApnsSandboxApplication",
            "ApnsSandboxPlatformApplication",
            "ApnsSandboxPlatformApplicationArn",
        ),
        "FCM_PLATFORM_APPLICATION_ARN": created_or_given(
            "CreateFcmApplication", "FcmPlatformApplication", "FcmPlatformApplicationArn"
        ),
        "SCHEDULE_GROUP": {"Ref": "SendScheduleGroup"},
        "SCHEDULER_ROLE_ARN": {"Fn::GetAtt": ["SchedulerRole", "Arn"]},
        "SCHEDULE_DLQ_ARN": {"Fn::GetAtt": ["ScheduleDeadLetterQueue", "Arn"]},
        "MIN_RECURRENCE_MINUTES": {"Ref": "MinRecurrenceMinutes"},
        "REDIS_SECRET_ARN": {"Ref": "RedisUrlSecret"},
    }


def test_outputs_name_what_a_deployer_needs(template: dict[str, Any]) -> None:
    outputs = template["Outputs"]
    assert {
        "ApiUrl",
        "BackendApiKeyId",
        "UserPoolId",
        "UserPoolClientId",
        "SendNotificationStateMachineArn",
        "PagePlanBucketName",
    } <= set(outputs)
    assert outputs["ApiUrl"]["Value"] == {
        "Fn::Sub": "https://${PushflowApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}/api"
    }
    # The key's id, never its value (an output is readable by anyone who can describe the stack).
    assert outputs["BackendApiKeyId"]["Value"] == {"Ref": "BackendApiKey"}


# -- the production stack: network, data, secrets, token lifecycle, operations ------------


def _of_type(resources: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in resources.items() if r["Type"] == kind}


def _refs(node: Any) -> set[str]:
    """Every logical id or parameter a node references (Ref, GetAtt, ${...} in Sub)."""
    found: set[str] = set()
    if isinstance(node, list):
        for item in node:
            found |= _refs(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref":
                found.add(str(value).split(".")[0])
            elif key == "Fn::GetAtt":
                found.add(value[0] if isinstance(value, list) else str(value).split(".")[0])
            elif key == "Fn::Sub":
                text = value if isinstance(value, str) else value[0]
                found |= {name.split(".")[0] for name in SUBSTITUTION.findall(text)}
                if not isinstance(value, str):
                    found |= _refs(value[1])
            else:
                found |= _refs(value)
    return found


def test_functions_run_in_private_subnets_with_no_route_to_the_internet(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    # GIVEN every function's network (from Globals; none overrides it)
    vpc_config = template["Globals"]["Function"]["VpcConfig"]
    assert vpc_config["SubnetIds"] == {
        "Fn::If": [
            "CreateNetwork",
            [{"Ref": "PrivateSubnetA"}, {"Ref": "PrivateSubnetB"}],
            {"Ref": "SubnetIds"},
        ]
    }
    for function_name in STACK_FUNCTIONS:
        assert "VpcConfig" not in resources[function_name]["Properties"], function_name
    # THEN FunctionSecurityGroup is attached whether or not extra groups are given
    extra, alone = vpc_config["SecurityGroupIds"]["Fn::If"][1:]
    assert "FunctionSecurityGroup" in _refs(extra)
    assert alone == [{"Ref": "FunctionSecurityGroup"}]
    # AND the created subnets are private, in two zones, with no way out but the endpoints
    zones = set()
    for name in ("PrivateSubnetA", "PrivateSubnetB"):
        subnet = resources[name]
        assert subnet["Condition"] == "CreateNetwork"
        assert subnet["Properties"]["MapPublicIpOnLaunch"] is False
        zones.add(json.dumps(subnet["Properties"]["AvailabilityZone"]))
    assert len(zones) == 2
    for kind in ("AWS::EC2::InternetGateway", "AWS::EC2::NatGateway", "AWS::EC2::Route"):
        assert not _of_type(resources, kind), f"{kind} gives the private subnets a way out"


def test_vpc_endpoints_reach_every_aws_api_the_functions_call(resources: dict[str, Any]) -> None:
    endpoints = _of_type(resources, "AWS::EC2::VPCEndpoint")
    services = {}
    for name, endpoint in endpoints.items():
        assert endpoint["Condition"] == "CreateNetwork", name
        props = endpoint["Properties"]
        service = props["ServiceName"]["Fn::Sub"].rsplit(".", 1)[-1]
        services[service] = props
    # SNS (publish, endpoints), Step Functions (start/stop sends), Scheduler (timed sends),
    # Secrets Manager (database credentials), S3 (page plans; custom resource answers).
    assert set(services) == {"sns", "states", "scheduler", "secretsmanager", "s3"}
    assert services["s3"]["VpcEndpointType"] == "Gateway"
    assert services["s3"]["RouteTableIds"] == [{"Ref": "PrivateRouteTable"}]
    for service in ("sns", "states", "scheduler", "secretsmanager"):
        props = services[service]
        assert props["VpcEndpointType"] == "Interface"
        assert props["PrivateDnsEnabled"] is True
        assert props["SecurityGroupIds"] == [{"Ref": "EndpointSecurityGroup"}]


def test_security_groups_admit_only_what_they_must(resources: dict[str, Any]) -> None:
    groups = _of_type(resources, "AWS::EC2::SecurityGroup")
    ingress = {
        name: group["Properties"].get("SecurityGroupIngress", []) for name, group in groups.items()
    }
    ingress_rules = _of_type(resources, "AWS::EC2::SecurityGroupIngress")
    assert not ingress_rules, "ingress belongs in the groups, where it can be read in one place"
    # The functions accept nothing; the data stores accept only their one client.
    assert ingress["FunctionSecurityGroup"] == []

    def sources(name: str) -> list[tuple[Any, int, int]]:
        return [
            (rule.get("SourceSecurityGroupId"), rule["FromPort"], rule["ToPort"])
            for rule in ingress[name]
        ]

    assert sources("DatabaseProxySecurityGroup") == [({"Ref": "FunctionSecurityGroup"}, 5432, 5432)]
    assert sources("DatabaseSecurityGroup") == [({"Ref": "DatabaseProxySecurityGroup"}, 5432, 5432)]
    assert sources("CacheSecurityGroup") == [({"Ref": "FunctionSecurityGroup"}, 6379, 6380)]
    (endpoint_rule,) = ingress["EndpointSecurityGroup"]
    assert (endpoint_rule["FromPort"], endpoint_rule["ToPort"]) == (443, 443)
    assert endpoint_rule["CidrIp"] == {"Fn::GetAtt": ["Vpc", "CidrBlock"]}
    for name, rules in ingress.items():
        for rule in rules:
            assert rule.get("CidrIp") != "0.0.0.0/0", f"{name} is open to the internet"
    # The functions' egress to the stores goes to the stores' own groups when the stack made them.
    to_database = resources["FunctionToDatabaseEgress"]["Properties"]
    assert to_database["DestinationSecurityGroupId"]["Fn::If"][:2] == [
        "CreateDatabase",
        {"Ref": "DatabaseProxySecurityGroup"},
    ]
    to_cache = resources["FunctionToCacheEgress"]["Properties"]
    assert to_cache["DestinationSecurityGroupId"]["Fn::If"][:2] == [
        "CreateCache",
        {"Ref": "CacheSecurityGroup"},
    ]


def test_database_is_encrypted_private_tls_only_and_reached_through_the_proxy(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    database = resources["Database"]
    props = database["Properties"]
    assert database["Condition"] == "CreateDatabase"
    assert (database["DeletionPolicy"], database["UpdateReplacePolicy"]) == ("Snapshot", "Snapshot")
    assert props["Engine"] == "postgres"
    assert props["StorageEncrypted"] is True
    assert props["PubliclyAccessible"] is False
    # Credentials: generated into Secrets Manager, never a value in the template.
    assert props["MasterUsername"] == {
        "Fn::Sub": "{{resolve:secretsmanager:${DatabaseSecret}:SecretString:username}}"
    }
    assert props["MasterUserPassword"] == {
        "Fn::Sub": "{{resolve:secretsmanager:${DatabaseSecret}:SecretString:password}}"
    }
    secret = resources["DatabaseSecret"]["Properties"]
    assert "SecretString" not in secret
    assert secret["GenerateSecretString"]["GenerateStringKey"] == "password"
    assert secret["GenerateSecretString"]["PasswordLength"] >= 32
    # TLS: the server refuses plain connections, the proxy too.
    parameter_group = resources[props["DBParameterGroupName"]["Ref"]]["Properties"]
    assert parameter_group["Parameters"]["rds.force_ssl"] == "1"
    proxy = resources["DatabaseProxy"]["Properties"]
    assert proxy["RequireTLS"] is True
    assert proxy["EngineFamily"] == "POSTGRESQL"
    assert proxy["Auth"] == [
        {
            "AuthScheme": "SECRETS",
            "SecretArn": {"Ref": "DatabaseSecret"},
            "IAMAuth": "DISABLED",
            "ClientPasswordAuthType": "POSTGRES_SCRAM_SHA_256",
        }
    ]
    targets = resources["DatabaseProxyTargetGroup"]["Properties"]
    assert targets["DBInstanceIdentifiers"] == [{"Ref": "Database"}]
    # AND the functions connect to the proxy when the stack created the database
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["DATABASE_HOST"] == {
        "Fn::If": [
            "CreateDatabase",
            {"Fn::GetAtt": ["DatabaseProxy", "Endpoint"]},
            {"Ref": "DatabaseHost"},
        ]
    }
    assert template["Rules"]["ExistingDatabaseNeedsItsSecret"]["RuleCondition"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "DatabaseHost"}, ""]}]
    }


def test_cache_is_serverless_valkey_over_tls_in_the_private_subnets(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    cache = resources["Cache"]
    assert cache["Condition"] == "CreateCache"
    props = cache["Properties"]
    assert props["Engine"] == "valkey"
    assert props["SecurityGroupIds"] == [{"Ref": "CacheSecurityGroup"}]
    assert props["SubnetIds"]["Fn::If"][0] == "CreateNetwork"
    assert "DataStorage" in props["CacheUsageLimits"]
    # ElastiCache Serverless speaks TLS only: the URL says rediss://. It lives in a secret
    # (RedisUrl may carry a password), never in a function's environment.
    secret = resources["RedisUrlSecret"]["Properties"]["SecretString"]
    created, given = secret["Fn::If"][1:]
    assert secret["Fn::If"][0] == "CreateCache"
    assert created == {"Fn::Sub": "rediss://${Cache.Endpoint.Address}:${Cache.Endpoint.Port}"}
    assert given == {"Ref": "RedisUrl"}
    assert template["Parameters"]["RedisUrl"]["NoEcho"] is True
    for name, function in _of_type(resources, "AWS::Serverless::Function").items():
        own = function["Properties"].get("Environment", {}).get("Variables", {})
        assert "REDIS_URL" not in {
            **template["Globals"]["Function"]["Environment"]["Variables"],
            **own,
        }
        assert ("REDIS_SECRET_ARN" in own) == (name in REDIS_FUNCTIONS), name
        if name in REDIS_FUNCTIONS:
            assert own["REDIS_SECRET_ARN"] == {"Ref": "RedisUrlSecret"}


@pytest.mark.parametrize("function_name", STACK_FUNCTIONS)
def test_every_function_logs_to_its_own_log_group_kept_30_days(
    resources: dict[str, Any], function_name: str
) -> None:
    log_group = resources[function_name]["Properties"]["LoggingConfig"]["LogGroup"]["Ref"]
    group = resources[log_group]
    assert group["Type"] == "AWS::Logs::LogGroup"
    assert group["Properties"]["RetentionInDays"] == 30
    assert "${AWS::StackName}" in group["Properties"]["LogGroupName"]["Fn::Sub"]
    users = [
        name
        for name in STACK_FUNCTIONS
        if resources[name]["Properties"]["LoggingConfig"]["LogGroup"]["Ref"] == log_group
    ]
    assert users == [function_name]


def test_every_log_group_has_a_retention(resources: dict[str, Any]) -> None:
    for name, group in _of_type(resources, "AWS::Logs::LogGroup").items():
        assert group["Properties"]["RetentionInDays"] == 30, name


def test_tracing_is_on_for_functions_state_machine_and_api(
    template: dict[str, Any], resources: dict[str, Any], state_machine: dict[str, Any]
) -> None:
    assert template["Globals"]["Function"]["Tracing"] == "Active"
    for function_name in STACK_FUNCTIONS:
        assert resources[function_name]["Properties"].get("Tracing", "Active") == "Active"
    assert state_machine["Tracing"] == {"Enabled": True}
    assert resources["PushflowApi"]["Properties"]["TracingEnabled"] is True


def _alarm_metrics(alarm: dict[str, Any]) -> list[dict[str, Any]]:
    """The metrics an alarm watches (its own, or those of its metric math)."""
    props = alarm["Properties"]
    if "Metrics" in props:
        return [
            query["MetricStat"]["Metric"] for query in props["Metrics"] if "MetricStat" in query
        ]
    return [
        {
            "Namespace": props["Namespace"],
            "MetricName": props["MetricName"],
            "Dimensions": props.get("Dimensions", []),
        }
    ]


def _dimension_values(metric: dict[str, Any], name: str) -> list[Any]:
    return [d["Value"] for d in metric.get("Dimensions", []) if d["Name"] == name]


def test_alarms_watch_sends_publishes_throttles_dead_letters_and_errors(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    alarms = _of_type(resources, "AWS::CloudWatch::Alarm")
    # Every alarm notifies the one alarm topic, when it fires and when it clears.
    for name, alarm in alarms.items():
        assert alarm["Properties"]["AlarmActions"] == [{"Ref": "AlarmTopic"}], name
        assert alarm["Properties"]["OKActions"] == [{"Ref": "AlarmTopic"}], name
        assert alarm["Properties"]["AlarmDescription"].strip(), name

    def watched(metric_name: str, dimension: str) -> set[str]:
        return {
            ref
            for alarm in alarms.values()
            for metric in _alarm_metrics(alarm)
            if metric["MetricName"] == metric_name
            for value in _dimension_values(metric, dimension)
            for ref in _refs(value)
        }

    # Failed sends
    assert "SendNotificationStateMachine" in watched("ExecutionsFailed", "StateMachineArn")
    assert "SendNotificationStateMachine" in watched("ExecutionsTimedOut", "StateMachineArn")
    # Lambda errors and throttles, for every function that serves traffic
    serving = [*ALL_FUNCTIONS, *TOKEN_LIFECYCLE_FUNCTIONS]
    assert set(serving) <= watched("Errors", "FunctionName")
    assert set(serving) <= watched("Throttles", "FunctionName")
    assert "SendNotificationStateMachine" in watched("ExecutionThrottled", "StateMachineArn")
    # Dead letters, for every queue
    queues = set(_of_type(resources, "AWS::SQS::Queue"))
    assert queues and queues <= watched("ApproximateNumberOfMessagesVisible", "QueueName")


def test_publish_failure_rate_alarm_reads_the_metrics_finalize_emits(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    from pushflow.domain.models import Outcome

    # GIVEN what Finalize publishes: Deliveries_<outcome>, in the Powertools namespace,
    # with the Powertools service as dimension
    finalize = (REPO_ROOT / "functions" / "finalize" / "app.py").read_text(encoding="utf-8")
    assert 'name=f"Deliveries_{outcome}"' in finalize
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    namespace = variables["POWERTOOLS_METRICS_NAMESPACE"]
    assert namespace == {"Fn::Sub": "Pushflow/${AWS::StackName}"}

    # THEN the alarm divides failed by sent + failed over those very metrics
    alarm = resources["PublishFailureRateAlarm"]["Properties"]
    metrics = {m["MetricName"]: m for m in _alarm_metrics({"Properties": alarm})}
    assert set(metrics) == {f"Deliveries_{Outcome.SENT}", f"Deliveries_{Outcome.FAILED}"}
    for metric in metrics.values():
        assert metric["Namespace"] == namespace
        assert metric["Dimensions"] == [
            {"Name": "service", "Value": variables["POWERTOOLS_SERVICE_NAME"]}
        ]
    (expression,) = [q["Expression"] for q in alarm["Metrics"] if "Expression" in q]
    assert "100 * FILL(failed, 0) / (FILL(sent, 0) + FILL(failed, 0))" in expression
    assert alarm["Threshold"] == {"Ref": "PublishFailureRatePercent"}


def test_queues_and_topics_are_encrypted_and_tls_only(resources: dict[str, Any]) -> None:
    queue_policies = _of_type(resources, "AWS::SQS::QueuePolicy").values()
    for name, queue in _of_type(resources, "AWS::SQS::Queue").items():
        props = queue["Properties"]
        assert props.get("SqsManagedSseEnabled") is True or "KmsMasterKeyId" in props, name
        denies = [
            statement
            for policy in queue_policies
            if {"Ref": name} in policy["Properties"]["Queues"]
            for statement in policy["Properties"]["PolicyDocument"]["Statement"]
            if statement["Effect"] == "Deny"
            and statement["Condition"]["Bool"]["aws:SecureTransport"] == "false"
        ]
        assert denies, f"{name} accepts messages without TLS"
    topic_policies = _of_type(resources, "AWS::SNS::TopicPolicy").values()
    for name, topic in _of_type(resources, "AWS::SNS::Topic").items():
        assert topic["Properties"]["KmsMasterKeyId"] == {"Ref": "TopicKey"}, name
        denies = [
            statement
            for policy in topic_policies
            if {"Ref": name} in policy["Properties"]["Topics"]
            for statement in policy["Properties"]["PolicyDocument"]["Statement"]
            if statement["Effect"] == "Deny"
        ]
        assert denies, f"{name} accepts publishes without TLS"
    # CloudWatch must be able to use the key, or alarms never reach the encrypted topic.
    key = resources["TopicKey"]["Properties"]
    assert key["EnableKeyRotation"] is True
    services = {
        service
        for statement in key["KeyPolicy"]["Statement"]
        for service in _as_list(statement["Principal"].get("Service", []))
    }
    assert "cloudwatch.amazonaws.com" in services
    for statement in key["KeyPolicy"]["Statement"]:
        actions = _as_list(statement["Action"])
        assert not any(a == "*" or a.endswith(":*") for a in actions), statement.get("Sid")
        if "Service" in statement["Principal"]:
            assert statement["Condition"] == {
                "StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
            }


def test_scheduler_may_start_only_the_send_state_machine(resources: dict[str, Any]) -> None:
    group = resources["SendScheduleGroup"]
    assert group["Properties"]["Name"] == {"Fn::Sub": "${AWS::StackName}-sends"}
    role = resources["SchedulerRole"]["Properties"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "scheduler.amazonaws.com"}
    assert trust["Condition"]["StringEquals"]["aws:SourceAccount"] == {"Ref": "AWS::AccountId"}
    statements = [s for policy in role["Policies"] for s in policy["PolicyDocument"]["Statement"]]
    assert {(tuple(_as_list(s["Action"])), json.dumps(s["Resource"])) for s in statements} == {
        (("states:StartExecution",), json.dumps({"Ref": "SendNotificationStateMachine"})),
        (("sqs:SendMessage",), json.dumps({"Fn::GetAtt": ["ScheduleDeadLetterQueue", "Arn"]})),
    }
    # The API function manages schedules in this group only, and passes only this role.
    api_statements = list(_inline_statements(resources["ApiFunction"]["Properties"]["Policies"]))
    (schedules,) = [s for s in api_statements if s.get("Sid") == "ManageSendSchedules"]
    assert set(schedules["Action"]) == {
        "scheduler:CreateSchedule",
        "scheduler:GetSchedule",
        "scheduler:UpdateSchedule",
        "scheduler:DeleteSchedule",
    }
    assert schedules["Resource"] == {
        "Fn::Sub": "arn:${AWS::Partition}:scheduler:${AWS::Region}:${AWS::AccountId}"
        ":schedule/${SendScheduleGroup}/*"
    }


def test_pass_role_is_scoped_to_one_role_and_one_service(resources: dict[str, Any]) -> None:
    passes = [
        (owner, statement)
        for owner, statement in _all_statements(resources)
        if "iam:PassRole" in _as_list(statement["Action"])
    ]
    assert passes, "the API function passes the scheduler role"
    for owner, statement in passes:
        assert _as_list(statement["Action"]) == ["iam:PassRole"], owner
        assert statement["Resource"] == {"Fn::GetAtt": ["SchedulerRole", "Arn"]}, owner
        assert statement["Condition"] == {
            "StringEquals": {"iam:PassedToService": "scheduler.amazonaws.com"}
        }


def test_platform_applications_are_created_from_secrets_or_passed_in(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    created = {
        "ApnsPlatformApplication": ("APNS", "ApnsSigningKeySecretArn", "CreateApnsApplication"),
        "ApnsSandboxPlatformApplication": (
            "APNS_SANDBOX",
            "ApnsSigningKeySecretArn",
            "CreateApnsSandboxApplication",
        ),
        "FcmPlatformApplication": ("GCM", "FcmServiceAccountSecretArn", "CreateFcmApplication"),
    }
    for name, (platform, secret_parameter, condition) in created.items():
        resource = resources[name]
        assert resource["Type"] == "Custom::PlatformApplication"
        assert resource["Condition"] == condition
        props = resource["Properties"]
        assert props["ServiceToken"] == {"Fn::GetAtt": ["PlatformApplicationFunction", "Arn"]}
        assert props["Platform"] == platform
        # The secret's ARN, never its value; names derive from the stack.
        assert props["CredentialsSecretArn"] == {"Ref": secret_parameter}
        assert "${AWS::StackName}" in props["Name"]["Fn::Sub"]
        # Endpoint events feed the token lifecycle.
        assert props["EventTopicArn"] == {"Ref": "TokenEventsTopic"}
        # It runs once SNS, Secrets Manager and S3 (for the answer) are reachable.
        assert {"S3Endpoint", "SnsEndpoint", "SecretsManagerEndpoint"} <= _refs(
            props["NetworkPath"]
        )
        # Created only when no ARN is passed in for it.
        parameter = name + "Arn"
        assert {"Fn::Equals": [{"Ref": parameter}, ""]} in template["Conditions"][condition][
            "Fn::And"
        ]


def test_token_lifecycle_follows_the_endpoint_events_and_loses_none(
    resources: dict[str, Any],
) -> None:
    function = resources["TokenLifecycleFunction"]["Properties"]
    (event,) = function["Events"].values()
    assert event["Type"] == "SNS"
    assert event["Properties"]["Topic"] == {"Ref": "TokenEventsTopic"}
    dead_letters = {"Fn::GetAtt": ["TokenLifecycleDeadLetterQueue", "Arn"]}
    # SNS parks what it cannot deliver; Lambda parks what failed after its retries.
    assert event["Properties"]["RedrivePolicy"] == {"deadLetterTargetArn": dead_letters}
    for name in TOKEN_LIFECYCLE_FUNCTIONS:
        on_failure = resources[name]["Properties"]["EventInvokeConfig"]["DestinationConfig"]
        assert on_failure == {"OnFailure": {"Type": "SQS", "Destination": dead_letters}}, name
    # Only this topic may drop its undeliverable events into the queue.
    (policy,) = [
        p["Properties"]
        for p in _of_type(resources, "AWS::SQS::QueuePolicy").values()
        if {"Ref": "TokenLifecycleDeadLetterQueue"} in p["Properties"]["Queues"]
    ]
    (allow,) = [s for s in policy["PolicyDocument"]["Statement"] if s["Effect"] == "Allow"]
    assert allow["Principal"] == {"Service": "sns.amazonaws.com"}
    assert allow["Condition"] == {"ArnEquals": {"aws:SourceArn": {"Ref": "TokenEventsTopic"}}}
    # The sweep runs daily with the retention the deployer chose.
    sweep = resources["DeviceSweepFunction"]["Properties"]
    (schedule,) = sweep["Events"].values()
    assert schedule["Type"] == "Schedule"
    assert schedule["Properties"]["Schedule"] == "rate(1 day)"
    assert sweep["Environment"]["Variables"] == {
        "DISABLED_DEVICE_RETENTION_DAYS": {"Ref": "DisabledDeviceRetentionDays"}
    }


def test_schema_custom_resource_runs_the_migrations_its_function_ships(
    resources: dict[str, Any],
) -> None:
    schema = resources["DatabaseSchema"]
    props = schema["Properties"]
    assert schema["Type"] == "Custom::DatabaseSchema"
    assert props["ServiceToken"] == {"Ref": "MigrateFunction.Alias"}
    # A new version (new SQL, new code) is a property change: CloudFormation sends an Update.
    assert props["FunctionVersion"] == {"Ref": "MigrateFunction.Version"}
    assert 0 < props["ServiceTimeout"] < 3600
    migrate = resources["MigrateFunction"]["Properties"]
    assert migrate["AutoPublishAlias"]
    assert migrate["AutoPublishAliasAllProperties"] is True
    assert migrate["EventInvokeConfig"]["MaximumRetryAttempts"] == 0
    assert props["ServiceTimeout"] > migrate["Timeout"]
    # The SQL in the function's folder is the repository's migrations/ (a symlink that
    # `sam build` follows), so the package carries exactly the files tests run.
    shipped = REPO_ROOT / migrate["CodeUri"] / "migrations"
    assert shipped.resolve() == (REPO_ROOT / "migrations").resolve()
    assert sorted(p.name for p in shipped.glob("*.sql")) == sorted(
        p.name for p in (REPO_ROOT / "migrations").glob("*.sql")
    )
    # It runs once the network paths it needs exist (and is deleted before they go):
    # the secret, the database's security group rule, and S3 for the answer.
    created_network, given_network = props["NetworkPath"]["Fn::If"][1:]
    assert props["NetworkPath"]["Fn::If"][0] == "CreateNetwork"
    assert {"S3Endpoint", "SecretsManagerEndpoint", "FunctionToDatabaseEgress"} <= _refs(
        created_network
    )
    assert {"PrivateSubnetARouteTable", "PrivateSubnetBRouteTable"} <= _refs(created_network)
    assert "FunctionToDatabaseEgress" in _refs(given_network)
    # Every function that uses the database starts only once the schema is there.
    for function_name in [*ALL_FUNCTIONS, *TOKEN_LIFECYCLE_FUNCTIONS]:
        assert resources[function_name].get("DependsOn") == "DatabaseSchema", function_name


def test_custom_resource_functions_are_not_retried(resources: dict[str, Any]) -> None:
    # CloudFormation invokes them asynchronously; a retry would answer twice.
    for name, resource in _of_type(resources, "AWS::Serverless::Function").items():
        if any(
            r["Type"].startswith("Custom::") and f"{name}" in _refs(r["Properties"]["ServiceToken"])
            for r in resources.values()
        ):
            assert resource["Properties"]["EventInvokeConfig"]["MaximumRetryAttempts"] == 0, name


def test_no_secret_reaches_an_output(template: dict[str, Any]) -> None:
    no_echo = {name for name, p in template["Parameters"].items() if p.get("NoEcho")}
    for name, output in template["Outputs"].items():
        text = json.dumps(output["Value"])
        assert "{{resolve:" not in text, name
        assert not (_refs(output["Value"]) & no_echo), f"{name} shows a NoEcho parameter"
    # The database secret's output is its ARN.
    assert template["Outputs"]["DatabaseSecretArn"]["Value"] == {"Ref": "DatabaseSecret"}
    # Dynamic references to secrets appear only where RDS takes its master credentials.
    holders = {
        (name, key)
        for name, resource in template["Resources"].items()
        for key, value in resource.get("Properties", {}).items()
        if "{{resolve:secretsmanager" in json.dumps(value)
    }
    assert holders == {("Database", "MasterUsername"), ("Database", "MasterUserPassword")}


NAME_PROPERTIES = {
    "LogGroupName",
    "DBProxyName",
    "ServerlessCacheName",
    "DashboardName",
    "AliasName",
    "LayerName",
    "UsagePlanName",
    "UserPoolName",
    "ClientName",
}


def test_resource_names_derive_from_the_stack_so_two_stacks_coexist(
    resources: dict[str, Any],
) -> None:
    for name, resource in resources.items():
        props = resource.get("Properties", {})
        keys = NAME_PROPERTIES | (
            {"Name"} if not resource["Type"].startswith("Custom::") else set()
        )
        for key in keys & set(props):
            value = props[key]
            # Another resource's name (a Ref) is as unique as that resource's.
            derived = isinstance(value, dict) and (
                "${AWS::StackName}" in json.dumps(value) or value.get("Ref") in resources
            )
            assert derived, f"{name}.{key} is fixed: a second stack in this account would collide"


def test_samconfig_deploys_dev_and_prod_side_by_side() -> None:
    import tomllib

    config = tomllib.loads((REPO_ROOT / "samconfig.toml").read_text(encoding="utf-8"))
    dev, prod = config["dev"], config["prod"]
    assert dev["global"]["parameters"]["stack_name"] != prod["global"]["parameters"]["stack_name"]
    assert dev["deploy"]["parameters"]["s3_prefix"] != prod["deploy"]["parameters"]["s3_prefix"]
    assert config["default"]["global"]["parameters"]["stack_name"] == "pushflow-dev"
    prod_overrides = prod["deploy"]["parameters"]["parameter_overrides"]
    assert 'DatabaseMultiAz="true"' in prod_overrides
    assert 'DatabaseDeletionProtection="true"' in prod_overrides
    assert prod["deploy"]["parameters"]["confirm_changeset"] is True
    # No secret value in the configuration: only ARNs may name secrets, and none is here.
    for environment in ("default", "dev", "prod"):
        overrides = config[environment]["deploy"]["parameters"]["parameter_overrides"]
        for assignment in re.findall(r'(\w+)="([^"]*)"', overrides):
            parameter, value = assignment
            if SECRET_PARAMETER_NAME.search(parameter) and not parameter.endswith("Arn"):
                raise AssertionError(f"{environment}: {parameter} set in samconfig.toml")
            for pattern in SECRET_VALUE_PATTERNS:
                assert not pattern.search(value), f"{environment}: {parameter} looks secret"


def test_dashboard_body_is_json_and_shows_every_alarm(resources: dict[str, Any]) -> None:
    text, variables = resources["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    body = json.loads(SUBSTITUTION.sub("x", re.sub(r"\$\{[A-Za-z0-9]+\.[A-Za-z]+\}", "x", text)))
    (alarm_widget,) = [w for w in body["widgets"] if w["type"] == "alarm"]
    shown = {name.split(".")[0] for name in re.findall(r"\$\{(\w+)\.Arn\}", text)}
    unconditional = {
        name
        for name, alarm in _of_type(resources, "AWS::CloudWatch::Alarm").items()
        if "Condition" not in alarm
    }
    assert shown == unconditional
    assert len(alarm_widget["properties"]["alarms"]) == len(unconditional)
    assert set(variables) == {"Namespace", "DatabaseInstance"}


# -- what a real deploy needs (issue 14, part 4) ------------------------------------

LAYER_REQUIREMENTS = REPO_ROOT / "layers" / "shared" / "requirements.txt"


def _pins(requirements: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in requirements.read_text(encoding="utf-8").splitlines():
        requirement = line.split("#", 1)[0].strip()
        if requirement:
            name, _, version = requirement.partition("==")
            pins[re.sub(r"\[.*\]", "", name).lower()] = version
    return pins


def test_layer_ships_boto3_with_the_botocore_it_was_released_with() -> None:
    from importlib import metadata

    from packaging.requirements import Requirement

    pins = _pins(LAYER_REQUIREMENTS)
    # aws-xray-sdk brings botocore into the layer, ahead of the runtime's boto3 on the
    # path: the layer ships boto3 too, both pinned, the pair this suite runs on.
    assert pins["boto3"] and pins["botocore"], "boto3 and botocore are pinned (==)"
    assert pins["boto3"] == metadata.version("boto3")
    assert pins["botocore"] == metadata.version("botocore")
    wanted = [
        Requirement(r)
        for r in metadata.requires("boto3") or []
        if Requirement(r).name == "botocore"
    ]
    assert wanted and all(pins["botocore"] in r.specifier for r in wanted)
    assert "botocore" in {Requirement(r).name for r in metadata.requires("aws-xray-sdk") or []}, (
        "if aws-xray-sdk stops bringing botocore, the layer may ship neither"
    )


LAMBDA_SERVICE_ERRORS = {
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
    # Step Functions' own name for a Lambda call that timed out on the client side.
    "Lambda.ClientExecutionTimeoutException",
}
# A VPC function's network interfaces not there yet, or EC2 throttling their creation.
LAMBDA_VPC_ERRORS = {
    "Lambda.ResourceNotReadyException",
    "Lambda.EC2ThrottledException",
    "Lambda.EC2UnexpectedException",
    "Lambda.ENILimitReachedException",
    "Lambda.ENINotReadyException",
    "Lambda.SubnetIPAddressLimitReachedException",
}


def _task_states(states: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, state in states.items():
        if state["Type"] == "Task":
            yield name, state
        for key in ("Iterator", "ItemProcessor"):
            if key in state:
                yield from _task_states(state[key]["States"])
        for branch in state.get("Branches", []):
            yield from _task_states(branch["States"])


def test_every_task_retries_lambda_service_and_vpc_errors_with_backoff_and_jitter(
    state_machine: dict[str, Any],
) -> None:
    import botocore.session

    asl = json.loads((REPO_ROOT / state_machine["DefinitionUri"]).read_text(encoding="utf-8"))
    tasks = dict(_task_states(asl["States"]))
    assert len(tasks) == len(TASK_FUNCTIONS) + 1  # RecordSendFailure runs Finalize too
    for name, task in tasks.items():
        retried = {e for retrier in task["Retry"] for e in retrier["ErrorEquals"]}
        assert retried >= LAMBDA_SERVICE_ERRORS | LAMBDA_VPC_ERRORS, name
        for retrier in task["Retry"]:
            if set(retrier["ErrorEquals"]) & (LAMBDA_SERVICE_ERRORS | LAMBDA_VPC_ERRORS):
                assert retrier["BackoffRate"] > 1, name
                assert retrier["JitterStrategy"] == "FULL", name
                assert retrier["MaxAttempts"] >= 3, name
    # The names are Lambda's: Invoke's errors in botocore's model, as Step Functions
    # prefixes them (the first three of the service list are Step Functions' own).
    invoke = botocore.session.get_session().get_service_model("lambda").operation_model("Invoke")
    modelled = {f"Lambda.{shape.name}" for shape in invoke.error_shapes}
    assert modelled >= LAMBDA_VPC_ERRORS
    assert {"Lambda.ServiceException", "Lambda.TooManyRequestsException"} <= modelled


def test_proxy_gives_up_on_a_connection_before_the_database_functions_time_out(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    from pushflow.adapters.postgres import ConnectionParams

    borrow = resources["DatabaseProxyTargetGroup"]["Properties"]["ConnectionPoolConfigurationInfo"][
        "ConnectionBorrowTimeout"
    ]
    default_timeout = template["Globals"]["Function"]["Timeout"]
    shortest = min(
        resources[f]["Properties"].get("Timeout", default_timeout) for f in DATABASE_FUNCTIONS
    )
    # The task hears the proxy's error (and the ASL retries it) instead of being killed.
    assert borrow < shortest
    socket_timeout = ConnectionParams("u", None, "d", host="h").driver_kwargs()["timeout"]
    assert borrow < socket_timeout


def _resolver(stack_name: str, parameters: dict[str, str] | None = None) -> Any:
    from pushflow_local.template import Resolver, Template

    template = Template(TEMPLATE_PATH)
    return Resolver(
        template,
        {**template.parameter_defaults(), **(parameters or {})},
        refs={},
        attributes={},
        pseudo={
            "AWS::StackName": stack_name,
            "AWS::Region": "eu-west-1",
            "AWS::AccountId": "123456789012",
            "AWS::Partition": "aws",
            "AWS::NoValue": "",
        },
    )


def _sns_resources(resources: dict[str, Any], function: str, resolver: Any) -> list[str]:
    policies = resources[function]["Properties"]["Policies"]
    arns: list[str] = []
    for statement in _inline_statements(policies):
        if any(str(a).startswith("sns:") for a in _as_list(statement["Action"])):
            arns += [a for a in _as_list(resolver.resolve(statement["Resource"])) if a]
    return arns


def _allows(patterns: list[str], arn: str) -> bool:
    import fnmatch

    return any(fnmatch.fnmatchcase(arn, pattern) for pattern in patterns)


@pytest.mark.parametrize(
    "function_name", ["PublishBatchFunction", "ApiFunction", "DeviceSweepFunction"]
)
def test_sns_endpoint_actions_reach_only_this_stacks_platform_applications(
    resources: dict[str, Any], function_name: str
) -> None:
    def endpoint(application: str) -> str:
        return f"arn:aws:sns:eu-west-1:123456789012:endpoint/{application}/0f1e2d3c-4b5a"

    # GIVEN the stack pushflow-dev with its own applications and an existing FCM one
    given = "arn:aws:sns:eu-west-1:123456789012:app/GCM/legacy-android"
    resolver = _resolver("pushflow-dev", {"FcmPlatformApplicationArn": given})
    allowed = _sns_resources(resources, function_name, resolver)

    # THEN its endpoints, and the given application's, are reachable
    for own in ("APNS/pushflow-dev-ios", "APNS_SANDBOX/pushflow-dev-ios-sandbox"):
        assert _allows(allowed, endpoint(own)), own
    assert _allows(allowed, endpoint("GCM/legacy-android"))
    # AND no other stack's, even one whose name starts with this one's, nor any other app's
    for foreign in ("APNS/pushflow-dev2-ios", "APNS/pushflow-ios", "GCM/pushflow-dev-android2"):
        assert not _allows(allowed, endpoint(foreign)), foreign
    assert not _allows(allowed, "arn:aws:sns:eu-west-1:123456789012:endpoint/GCM/other/x")


def test_platform_application_function_manages_exactly_the_stacks_three_applications(
    resources: dict[str, Any],
) -> None:
    allowed = _sns_resources(resources, "PlatformApplicationFunction", _resolver("pushflow"))
    app = "arn:aws:sns:eu-west-1:123456789012:app"
    assert sorted(allowed) == sorted(
        [
            f"{app}/APNS/pushflow-ios",
            f"{app}/APNS_SANDBOX/pushflow-ios-sandbox",
            f"{app}/GCM/pushflow-android",
        ]
    )
    assert not _allows(allowed, f"{app}/APNS/pushflow-dev-ios")


# AWS's limits on the names derived from the stack's (CloudFormation resource schemas,
# and the ElastiCache console for serverless caches, whose API reference gives none).
NAME_LIMITS = {
    ("AWS::ElastiCache::ServerlessCache", "ServerlessCacheName"): 40,
    ("AWS::RDS::DBProxy", "DBProxyName"): 63,
    ("AWS::Serverless::StateMachine", "Name"): 80,
    ("AWS::Scheduler::ScheduleGroup", "Name"): 64,
    ("AWS::Serverless::LayerVersion", "LayerName"): 140,
    ("AWS::Cognito::UserPool", "UserPoolName"): 128,
    ("AWS::Cognito::UserPoolClient", "ClientName"): 128,
    ("AWS::Logs::LogGroup", "LogGroupName"): 512,
    ("AWS::CloudWatch::Dashboard", "DashboardName"): 255,
    ("AWS::KMS::Alias", "AliasName"): 256,
    ("Custom::PlatformApplication", "Name"): 256,
}


def test_stack_names_that_would_overflow_a_resource_name_are_refused_first(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    check = resources["StackNameCheck"]
    pattern = re.compile(check["Properties"]["AllowedPattern"])
    assert check["Properties"]["Value"] == {"Ref": "AWS::StackName"}
    longest = "p" + "x" * 32 + "d"
    assert pattern.fullmatch(longest)
    # GIVEN the longest name the check admits, every derived name fits AWS's limit
    resolver = _resolver(longest)
    checked = set()
    for name, resource in resources.items():
        for (kind, prop), limit in NAME_LIMITS.items():
            value = resource.get("Properties", {}).get(prop)
            if resource["Type"] == kind and value is not None:
                derived = str(resolver.resolve(value))
                assert len(derived) <= limit, f"{name}.{prop}: {derived!r} is over {limit}"
                checked.add(kind)
    assert checked == {kind for kind, _ in NAME_LIMITS}
    # AND one character more, or a double or trailing hyphen (RDS and ElastiCache refuse
    # them), is refused by the check, which the tightly named resources wait for
    for refused in (longest + "x", "pushflow--dev", "pushflow-", "9pushflow", ""):
        assert not pattern.fullmatch(refused), refused
    for name in (
        "Cache",
        "DatabaseProxy",
        "Database",
        "SendNotificationStateMachine",
        "SendScheduleGroup",
    ):
        assert resources[name]["DependsOn"] == "StackNameCheck", name
    # AND the stacks samconfig.toml deploys pass it
    import tomllib

    config = tomllib.loads((REPO_ROOT / "samconfig.toml").read_text(encoding="utf-8"))
    for environment in config.values():
        if isinstance(environment, dict) and "global" in environment:
            assert pattern.fullmatch(environment["global"]["parameters"]["stack_name"])


def test_local_runtime_invokes_the_aliases_the_deployed_state_machine_names(runtime: Any) -> None:
    definition = runtime.client("stepfunctions").describe_state_machine(
        stateMachineArn=runtime.state_machine_arn
    )["definition"]
    lambda_client = runtime.client("lambda")
    for function_name in TASK_FUNCTIONS:
        name = runtime.functions[function_name].name
        alias = lambda_client.get_alias(FunctionName=name, Name="live")
        assert f'"{alias["AliasArn"]}"' in definition, function_name
    assert (
        '"arn:aws:lambda:us-east-1:123456789012:function:pushflow-local-PrepareFunction"'
        not in (definition)
    )
    # An alias the function does not have is refused, as Lambda would.
    with pytest.raises(LookupError, match="no alias or version"):
        runtime._run(f"{runtime.functions['PrepareFunction'].arn}:staging", "{}")
