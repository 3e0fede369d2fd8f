"""Small lookups over a synthesized template, by construct or by property (never a hashed ID)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aws_cdk import CfnElement, Stack
from aws_cdk.assertions import Template
from constructs import IConstruct

from infra.stack import LtpStack

REPO_ROOT = Path(__file__).resolve().parents[2]


def cdk_json_context() -> dict[str, Any]:
    context: dict[str, Any] = json.loads((REPO_ROOT / "cdk.json").read_text())["context"]
    return context


@dataclass(frozen=True)
class Synthesized:
    stack: LtpStack
    template: Template
    resources: dict[str, dict[str, Any]]
    outdir: Path

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.resources.values() if r["Type"] == kind]

    def resource(self, construct: IConstruct) -> dict[str, Any]:
        return self.resources[logical_id(self.stack, construct)]


def logical_id(stack: Stack, construct: IConstruct) -> str:
    element = construct if isinstance(construct, CfnElement) else construct.node.default_child
    assert isinstance(element, CfnElement), f"{construct.node.path} has no CloudFormation resource"
    return stack.resolve(element.logical_id)


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def statements(resources: dict[str, dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every identity-policy statement: (policy logical id, statement)."""
    for name, resource in resources.items():
        kind, props = resource["Type"], resource.get("Properties", {})
        documents: list[Any] = []
        if kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            documents.append(props.get("PolicyDocument", {}))
        elif kind == "AWS::IAM::Role":
            documents.extend(p.get("PolicyDocument", {}) for p in props.get("Policies", []))
        for document in documents:
            for statement in document.get("Statement", []):
                yield name, statement


def policies_of_role(resources: dict[str, dict[str, Any]], role_id: str) -> list[dict[str, Any]]:
    """Statements of every AWS::IAM::Policy attached to a role (by the role's logical id)."""
    found = []
    for resource in resources.values():
        if resource["Type"] != "AWS::IAM::Policy":
            continue
        roles = resource["Properties"].get("Roles", [])
        if {"Ref": role_id} in roles:
            found.extend(resource["Properties"]["PolicyDocument"]["Statement"])
    return found


def references(value: Any, target: str) -> bool:
    """True when a CloudFormation value mentions the logical id (Ref / GetAtt / Sub)."""
    if isinstance(value, dict):
        if value.get("Ref") == target:
            return True
        get_att = value.get("Fn::GetAtt")
        if isinstance(get_att, list) and get_att and get_att[0] == target:
            return True
        return any(references(v, target) for v in value.values())
    if isinstance(value, list):
        return any(references(v, target) for v in value)
    if isinstance(value, str):
        return "${" + target in value
    return False
