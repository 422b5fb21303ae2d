"""Reading template.yaml the way CloudFormation would, for what local mode needs.

moto does not apply the SAM transform, so the local runtime reads the
functions (code folder, handler, environment) and the state machine
(definition file and substitutions) itself, and resolves the few intrinsic
functions those use: Ref, Fn::Sub, Fn::GetAtt, Fn::If over the conditions.
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
    """Resolves intrinsic functions against local parameter values and resources."""

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
        self.conditions = {
            name: self.resolve(condition)
            for name, condition in template.document.get("Conditions", {}).items()
        }

    def resolve(self, node: Any) -> Any:
        if isinstance(node, list):
            return [self.resolve(item) for item in node]
        if not isinstance(node, dict):
            return node
        if len(node) != 1:
            return {key: self.resolve(value) for key, value in node.items()}
        ((key, value),) = node.items()
        if key == "Ref":
            return self.values[value]
        if key == "Fn::GetAtt":
            logical_id, attribute = value.split(".", 1) if isinstance(value, str) else value
            return self.attributes[(logical_id, attribute)]
        if key == "Fn::Sub":
            text, extra = (value, {}) if isinstance(value, str) else value
            names = {**self.values, **{k: self.resolve(v) for k, v in extra.items()}}
            return re.sub(r"\$\{([^}!]+)\}", lambda m: self._sub(m.group(1), names), text)
        if key == "Fn::If":
            name, when_true, when_false = value
            return self.resolve(when_true if self.conditions[name] else when_false)
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
            return self.conditions[value]
        return {key: self.resolve(value)}

    def _sub(self, name: str, names: Mapping[str, Any]) -> str:
        if "." in name:
            logical_id, attribute = name.split(".", 1)
            return self.attributes[(logical_id, attribute)]
        return str(names[name])
