"""Reading template.yaml the way CloudFormation would, for what local mode needs.

moto does not apply the SAM transform, so the local runtime reads the
functions (code folder, handler, environment) and the state machine
(definition file and substitutions) itself, and resolves the few intrinsic
functions those use: Ref, Fn::Sub, Fn::GetAtt, Fn::If over the conditions,
Fn::Join, Fn::Select, Fn::Split and Fn::GetAZs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cfn_tools import load_yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_PATH = REPO_ROOT / "template.yaml"


@dataclass(frozen=True)
class FunctionSpec:
    logical_id: str
    code_dir: Path
    handler: str
    environment: Mapping[str, Any]
    timeout: int
    # AutoPublishAlias: the alias SAM publishes, which `!Ref <Function>.Alias` names.
    alias: str | None = None


@dataclass(frozen=True)
class StateMachineSpec:
    logical_id: str
    definition_path: Path
    substitutions: Mapping[str, Any]


class Template:
    def __init__(self, path: Path = TEMPLATE_PATH) -> None:
        self.path = path
        self.root = path.parent
        self.document: dict[str, Any] = load_yaml(path.read_text())
        self.resources: dict[str, Any] = self.document["Resources"]

    def parameter_defaults(self) -> dict[str, str]:
        return {
            name: str(spec.get("Default", ""))
            for name, spec in self.document.get("Parameters", {}).items()
        }

    def _of_type(self, kind: str) -> dict[str, dict[str, Any]]:
        return {
            logical_id: resource
            for logical_id, resource in self.resources.items()
            if resource["Type"] == kind
        }

    def functions(self) -> list[FunctionSpec]:
        globals_ = self.document.get("Globals", {}).get("Function", {})
        global_env = globals_.get("Environment", {}).get("Variables", {})
        specs = []
        for logical_id, resource in self._of_type("AWS::Serverless::Function").items():
            props = resource["Properties"]
            env = {**global_env, **props.get("Environment", {}).get("Variables", {})}
            specs.append(
                FunctionSpec(
                    logical_id=logical_id,
                    code_dir=(self.root / props["CodeUri"]).resolve(),
                    handler=props.get("Handler", globals_.get("Handler")),
                    environment=env,
                    timeout=int(props.get("Timeout", globals_.get("Timeout", 3))),
                    alias=props.get("AutoPublishAlias", globals_.get("AutoPublishAlias")),
                )
            )
        return specs

    def state_machines(self) -> list[StateMachineSpec]:
        return [
            StateMachineSpec(
                logical_id=logical_id,
                definition_path=(self.root / resource["Properties"]["DefinitionUri"]).resolve(),
                substitutions=resource["Properties"].get("DefinitionSubstitutions", {}),
            )
            for logical_id, resource in self._of_type("AWS::Serverless::StateMachine").items()
        ]

    def resource_ids(self, kind: str) -> list[str]:
        return list(self._of_type(kind))


class Resolver:
    """Resolves intrinsic functions against local parameter values and resources.

    Resources the local runtime does not create (the VPC, RDS, ElastiCache,
    queues, alarms...) stand for the embedded servers: a Ref or GetAtt of one
    resolves to a stable placeholder, `local-<LogicalId>` or
    `local-<LogicalId>-<Attribute>`, never to a real address.
    """

    def __init__(
        self,
        template: Template,
        parameters: Mapping[str, str],
        refs: Mapping[str, str],
        attributes: Mapping[tuple[str, str], str],
        pseudo: Mapping[str, str],
    ) -> None:
        self.template = template
        self.values = {**pseudo, **parameters, **refs}
        self.attributes = attributes
        self.region = pseudo.get("AWS::Region", "us-east-1")
        self.conditions: dict[str, Any] = {}
        for name, condition in template.document.get("Conditions", {}).items():
            self.conditions[name] = self.resolve(condition)

    def _ref(self, name: str) -> Any:
        if name in self.values:
            return self.values[name]
        if name in self.template.resources:
            return f"local-{name}"
        raise KeyError(f"Ref to {name!r}: neither a parameter nor a resource")

    def _attribute(self, logical_id: str, attribute: str) -> str:
        if (logical_id, attribute) in self.attributes:
            return self.attributes[(logical_id, attribute)]
        if logical_id in self.template.resources:
            return f"local-{logical_id}-{attribute}"
        raise KeyError(f"GetAtt of {logical_id!r}: not a resource")

    @staticmethod
    def _as_list(value: Any) -> list[Any]:
        # A CommaDelimitedList parameter reaches here as its raw text.
        if isinstance(value, str):
            return value.split(",") if value else []
        return list(value)

    def _condition(self, name: str) -> Any:
        # Conditions may name conditions declared after them.
        if name not in self.conditions:
            self.conditions[name] = self.resolve(self.template.document["Conditions"][name])
        return self.conditions[name]

    def resolve(self, node: Any) -> Any:
        if isinstance(node, list):
            return [self.resolve(item) for item in node]
        if not isinstance(node, dict):
            return node
        if len(node) != 1:
            return {key: self.resolve(value) for key, value in node.items()}
        ((key, value),) = node.items()
        if key == "Ref":
            return self._ref(value)
        if key == "Fn::GetAtt":
            logical_id, attribute = value.split(".", 1) if isinstance(value, str) else value
            return self._attribute(logical_id, attribute)
        if key == "Fn::Join":
            delimiter, items = value
            return str(delimiter).join(str(item) for item in self._as_list(self.resolve(items)))
        if key == "Fn::Split":
            delimiter, text = value
            return str(self.resolve(text)).split(str(delimiter))
        if key == "Fn::Select":
            index, items = value
            return self._as_list(self.resolve(items))[int(self.resolve(index))]
        if key == "Fn::GetAZs":
            return [f"{self.region}{zone}" for zone in "abc"]
        if key == "Fn::Sub":
            text, extra = (value, {}) if isinstance(value, str) else value
            names = {**self.values, **{k: self.resolve(v) for k, v in extra.items()}}
            return re.sub(r"\$\{([^}!]+)\}", lambda m: self._sub(m.group(1), names), text)
        if key == "Fn::If":
            name, when_true, when_false = value
            return self.resolve(when_true if self._condition(name) else when_false)
        if key == "Fn::Equals":
            left, right = (self.resolve(v) for v in value)
            return str(left) == str(right)
        if key == "Fn::Not":
            return not self.resolve(value[0])
        if key == "Fn::And":
            return all(self.resolve(v) for v in value)
        if key == "Fn::Or":
            return any(self.resolve(v) for v in value)
        if key == "Condition":
            return self._condition(value)
        return {key: self.resolve(value)}

    def _sub(self, name: str, names: Mapping[str, Any]) -> str:
        if name in names:
            return str(names[name])
        if "." in name:
            logical_id, attribute = name.split(".", 1)
            return self._attribute(logical_id, attribute)
        return str(self._ref(name))
