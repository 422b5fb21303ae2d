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

GLOBAL_ENVIRONMENT_KEYS = {
    "POWERTOOLS_SERVICE_NAME",
    "POWERTOOLS_METRICS_NAMESPACE",
    "POWERTOOLS_LOG_LEVEL",
    "DATABASE_HOST",
    "DATABASE_PORT",
    "DATABASE_NAME",
    "DATABASE_SECRET_ARN",
    "REDIS_URL",
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


@pytest.mark.parametrize("function_name", ALL_FUNCTIONS)
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
    assert template["Globals"]["Function"]["Layers"] == [{"Ref": "SharedLayer"}]
    layer = resources["SharedLayer"]
    assert layer["Metadata"]["BuildMethod"] == "python3.11"
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

    # AND every task function is substituted by its own ARN
    for function_name in TASK_FUNCTIONS:
        value = state_machine["DefinitionSubstitutions"][f"{function_name}Arn"]
        assert value == {"Fn::GetAtt": [function_name, "Arn"]}
        assert resources[function_name]["Type"] == "AWS::Serverless::Function"


def test_state_machine_may_invoke_exactly_its_task_functions(
    state_machine: dict[str, Any],
) -> None:
    invoked = {
        p["FunctionName"]["Ref"]
        for p in _policy_templates(state_machine["Policies"], "LambdaInvokePolicy")
    }
    assert invoked == set(TASK_FUNCTIONS)


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


def test_secret_access_is_granted_only_when_a_secret_is_configured(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    assert "HasDatabaseSecret" in template["Conditions"]
    for function_name in ALL_FUNCTIONS:
        policies = resources[function_name]["Properties"]["Policies"]
        conditional = [p["Fn::If"] for p in policies if isinstance(p, dict) and "Fn::If" in p]
        assert conditional, f"{function_name}: no conditional secret policy"
        condition, when_set, when_unset = conditional[0]
        assert condition == "HasDatabaseSecret"
        assert when_set == {
            "AWSSecretsManagerGetSecretValuePolicy": {"SecretArn": {"Ref": "DatabaseSecretArn"}}
        }
        assert when_unset == {"Ref": "AWS::NoValue"}


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
    assert function_globals["Runtime"] == "python3.11"
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


def test_api_function_knows_the_state_machine_and_platform_applications(
    resources: dict[str, Any],
) -> None:
    variables = resources["ApiFunction"]["Properties"]["Environment"]["Variables"]
    assert variables == {
        "STATE_MACHINE_ARN": {"Ref": "SendNotificationStateMachine"},
        "APNS_PLATFORM_APPLICATION_ARN": {"Ref": "ApnsPlatformApplicationArn"},
        "APNS_SANDBOX_PLATFORM_APPLICATION_ARN": {"Ref": "ApnsSandboxPlatformApplicationArn"},
        "FCM_PLATFORM_APPLICATION_ARN": {"Ref": "FcmPlatformApplicationArn"},
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
