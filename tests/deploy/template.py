"""What one deployable of a synthesized template sees, resolved against local stand-ins (pure).

`Resolver(template, stand_ins)` evaluates the intrinsics CloudFormation evaluates at deploy time
(`Ref`, `Fn::GetAtt`, `Fn::Join`, `Fn::Sub`, `Fn::Select`, `Fn::Split`) with the values the
caller says each referenced resource has locally (`StandIns`), then substitutes endpoints:
every occurrence of an AWS endpoint (`StandIns.endpoints`, e.g. the cache's `host:port`, the
WebSocket API's `https://{api}.execute-api...` origin) in a resolved value becomes the local
one. Nothing else is changed. Anything it cannot evaluate raises `Unresolvable` naming where, so
that a variable added to the template is never silently dropped.

The queries below read the template's structure: the Python functions and their handler
strings, the task definition's containers, which function serves which WebSocket route, and
the schedules' targets and inputs. They never use a hashed logical id; callers find ids by
type or through `tests.infra.helpers.logical_id(stack, construct)`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

Template = Mapping[str, Any]
Value = str | list[str]

INTRINSICS = ("Ref", "Fn::GetAtt", "Fn::Join", "Fn::Sub", "Fn::Select", "Fn::Split")
_SUB_VARIABLE = re.compile(r"\$\{([^}]*)\}")


class Unresolvable(ValueError):
    """A value the stand-ins cannot give (an unknown resource, attribute or intrinsic)."""


@dataclass(frozen=True)
class StandIns:
    """What each referenced resource is locally."""

    refs: Mapping[str, str] = field(default_factory=dict)  # logical id -> what Ref gives
    attributes: Mapping[tuple[str, str], str] = field(default_factory=dict)  # (id, attr)
    pseudo: Mapping[str, str] = field(default_factory=dict)  # AWS::Region, AWS::URLSuffix, ...
    endpoints: Mapping[str, str] = field(default_factory=dict)  # AWS endpoint -> local one
    secret_values: Mapping[str, str] = field(default_factory=dict)  # secret ARN -> SecretString


class Resolver:
    def __init__(self, template: Template, stand_ins: StandIns) -> None:
        self.resources: Mapping[str, Any] = template.get("Resources", {})
        self.stand_ins = stand_ins
        self.endpoints_used: set[str] = set()

    # --- intrinsics -------------------------------------------------------------------------

    def value(self, node: Any, where: str) -> Value:
        if isinstance(node, str):
            return node
        if isinstance(node, bool):
            return "true" if node else "false"
        if isinstance(node, int | float):
            return str(node)
        if isinstance(node, list):
            return [self.text(item, f"{where}[{i}]", endpoints=False)
                    for i, item in enumerate(node)]  # fmt: skip
        if isinstance(node, Mapping) and len(node) == 1:
            ((name, argument),) = node.items()
            if name == "Ref":
                return self._ref(argument, where)
            if name == "Fn::GetAtt":
                return self._get_att(argument, where)
            if name == "Fn::Join":
                return self._join(argument, where)
            if name == "Fn::Sub":
                return self._sub(argument, where)
            if name == "Fn::Select":
                return self._select(argument, where)
            if name == "Fn::Split":
                return self._split(argument, where)
            raise Unresolvable(f"{where}: {name} is not evaluated here (only {INTRINSICS})")
        raise Unresolvable(f"{where}: cannot evaluate {json.dumps(node)[:200]}")

    def text(self, node: Any, where: str, *, endpoints: bool = True) -> str:
        """A value that must be one string, endpoints substituted (unless told not to)."""
        value = self.value(node, where)
        if not isinstance(value, str):
            raise Unresolvable(f"{where}: expected a string, got the list {value}")
        return self.substitute_endpoints(value) if endpoints else value

    def substitute_endpoints(self, text: str) -> str:
        for aws, local in self.stand_ins.endpoints.items():
            if aws in text:
                self.endpoints_used.add(aws)
                text = text.replace(aws, local)
        return text

    def _ref(self, target: Any, where: str) -> str:
        if not isinstance(target, str):
            raise Unresolvable(f"{where}: Ref of {target!r}")
        if target.startswith("AWS::"):
            if target not in self.stand_ins.pseudo:
                raise Unresolvable(f"{where}: pseudo parameter {target} has no local value")
            return self.stand_ins.pseudo[target]
        if target not in self.stand_ins.refs:
            raise Unresolvable(f"{where}: Ref {target} ({self._type(target)}) has no local "
                               "stand-in")  # fmt: skip
        return self.stand_ins.refs[target]

    def _get_att(self, argument: Any, where: str) -> str:
        if isinstance(argument, str):
            argument = argument.split(".", 1)
        if not (isinstance(argument, list) and len(argument) == 2
                and all(isinstance(a, str) for a in argument)):  # fmt: skip
            raise Unresolvable(f"{where}: Fn::GetAtt of {argument!r}")
        key = (argument[0], argument[1])
        if key not in self.stand_ins.attributes:
            raise Unresolvable(f"{where}: Fn::GetAtt {key[0]}.{key[1]} ({self._type(key[0])}) "
                               "has no local stand-in")  # fmt: skip
        return self.stand_ins.attributes[key]

    def _join(self, argument: Any, where: str) -> str:
        if not (isinstance(argument, list) and len(argument) == 2
                and isinstance(argument[0], str)):  # fmt: skip
            raise Unresolvable(f"{where}: Fn::Join of {argument!r}")
        delimiter: str = argument[0]
        values = self.value(argument[1], f"{where}.Fn::Join")
        parts = values if isinstance(values, list) else [values]
        return delimiter.join(parts)

    def _sub(self, argument: Any, where: str) -> str:
        if isinstance(argument, str):
            text, variables = argument, {}
        elif (isinstance(argument, list) and len(argument) == 2 and isinstance(argument[0], str)
              and isinstance(argument[1], Mapping)):  # fmt: skip
            text, variables = argument
        else:
            raise Unresolvable(f"{where}: Fn::Sub of {argument!r}")

        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in variables:
                return self.text(variables[name], f"{where}.Fn::Sub.{name}", endpoints=False)
            if name.startswith("AWS::"):
                return self._ref(name, where)
            if "." in name:
                return self._get_att(name.split(".", 1), where)
            return self._ref(name, where)

        return _SUB_VARIABLE.sub(one, text)

    def _select(self, argument: Any, where: str) -> str:
        if not (isinstance(argument, list) and len(argument) == 2):
            raise Unresolvable(f"{where}: Fn::Select of {argument!r}")
        index = int(self.text(argument[0], where, endpoints=False))
        values = self.value(argument[1], f"{where}.Fn::Select")
        if not isinstance(values, list) or not 0 <= index < len(values):
            raise Unresolvable(f"{where}: Fn::Select {index} of {values!r}")
        return values[index]

    def _split(self, argument: Any, where: str) -> list[str]:
        if not (isinstance(argument, list) and len(argument) == 2
                and isinstance(argument[0], str)):  # fmt: skip
            raise Unresolvable(f"{where}: Fn::Split of {argument!r}")
        return self.text(argument[1], where, endpoints=False).split(argument[0])

    def _type(self, logical_id: str) -> str:
        resource = self.resources.get(logical_id)
        return str(resource["Type"]) if resource else "not in the template"

    # --- what deployables see ---------------------------------------------------------------

    def function_environment(self, logical_id: str) -> dict[str, str]:
        """A Lambda function's `Environment.Variables`, resolved."""
        properties = self.resources[logical_id]["Properties"]
        variables = (properties.get("Environment") or {}).get("Variables") or {}
        return {name: self.text(value, f"{logical_id}.Environment.{name}")
                for name, value in variables.items()}  # fmt: skip

    def container_environment(self, container: Mapping[str, Any]) -> dict[str, str]:
        """A container definition's `Environment` plus its `Secrets` as ECS injects them."""
        name = container.get("Name", "?")
        resolved: dict[str, str] = {}
        for entry in container.get("Environment") or []:
            resolved[entry["Name"]] = self.text(entry["Value"],
                                                f"container {name}.Environment.{entry['Name']}")
        for entry in container.get("Secrets") or []:
            where = f"container {name}.Secrets.{entry['Name']}"
            value_from = self.text(entry["ValueFrom"], where, endpoints=False)
            resolved[entry["Name"]] = ecs_secret_value(value_from,
                                                       self.stand_ins.secret_values, where)
        return resolved

    def container_command(self, container: Mapping[str, Any]) -> list[str]:
        name = container.get("Name", "?")
        if container.get("EntryPoint"):
            raise Unresolvable(f"container {name} has an EntryPoint; only Command is run here")
        command = container.get("Command")
        if not command:
            raise Unresolvable(f"container {name} has no Command (the image's CMD is not read)")
        return [self.text(part, f"container {name}.Command[{i}]", endpoints=False)
                for i, part in enumerate(command)]  # fmt: skip


def ecs_secret_value(value_from: str, secret_values: Mapping[str, str], where: str) -> str:
    """What ECS injects for a `ValueFrom`: the whole SecretString for a secret ARN, or one JSON
    field for `ARN:json-key:version-stage:version-id` (only the current version here)."""
    for arn, secret in secret_values.items():
        if value_from == arn:
            return secret
        if not value_from.startswith(arn + ":"):
            continue
        key, stage, version = (value_from[len(arn) + 1:].split(":") + ["", ""])[:3]
        if stage not in ("", "AWSCURRENT") or version:
            raise Unresolvable(f"{where}: version {stage or version} of {arn} is not kept")
        if not key:
            return secret
        try:
            document = json.loads(secret)
        except ValueError:
            raise Unresolvable(f"{where}: {arn} is not JSON but a key {key!r} is asked for"
                               ) from None
        if not isinstance(document, dict) or key not in document:
            # ECS fails the task start: "retrieved secret ... did not contain json key".
            raise Unresolvable(f"{where}: secret {arn} has no JSON key {key!r}")
        field_value = document[key]
        return field_value if isinstance(field_value, str) else json.dumps(field_value)
    raise Unresolvable(f"{where}: {value_from} names no secret the stand-ins hold")


# --- structure ---------------------------------------------------------------------------------


def referenced_ids(node: Any) -> set[str]:
    """Logical ids a value mentions through Ref, Fn::GetAtt or Fn::Sub."""
    found: set[str] = set()
    if isinstance(node, Mapping):
        for name, argument in node.items():
            if name == "Ref" and isinstance(argument, str) and not argument.startswith("AWS::"):
                found.add(argument)
            elif name == "Fn::GetAtt":
                first = argument.split(".", 1)[0] if isinstance(argument, str) else argument[0]
                found.add(str(first))
            elif name == "Fn::Sub":
                text = argument if isinstance(argument, str) else argument[0]
                local = set() if isinstance(argument, str) else set(argument[1])
                for variable in _SUB_VARIABLE.findall(text):
                    if not variable.startswith(("!", "AWS::")) and variable not in local:
                        found.add(variable.split(".", 1)[0])
                if not isinstance(argument, str):
                    found |= referenced_ids(argument[1])
            else:
                found |= referenced_ids(argument)
    elif isinstance(node, list):
        for item in node:
            found |= referenced_ids(item)
    return found


def of_type(template: Template, kind: str) -> dict[str, Mapping[str, Any]]:
    return {lid: r for lid, r in template["Resources"].items() if r["Type"] == kind}


@dataclass(frozen=True)
class FunctionSpec:
    logical_id: str
    handler: str
    runtime: str
    timeout: int
    memory: int


def lambda_functions(template: Template) -> dict[str, FunctionSpec]:
    """Every AWS::Lambda::Function with a Handler (Lambda's defaults: 3 s, 128 MB)."""
    found = {}
    for lid, resource in of_type(template, "AWS::Lambda::Function").items():
        properties = resource["Properties"]
        found[lid] = FunctionSpec(
            logical_id=lid,
            handler=str(properties.get("Handler", "")),
            runtime=str(properties.get("Runtime", "")),
            timeout=int(properties.get("Timeout", 3)),
            memory=int(properties.get("MemorySize", 128)),
        )
    return found


def only(found: Mapping[str, Any], what: str) -> str:
    if len(found) != 1:
        raise Unresolvable(f"expected exactly one {what}, found {sorted(found)}")
    return next(iter(found))


def function_behind(template: Template, node: Any, where: str) -> str:
    """The one Lambda function an integration URI / authorizer URI / target ARN points at."""
    functions = of_type(template, "AWS::Lambda::Function")
    return only({lid: True for lid in referenced_ids(node) if lid in functions},
                f"Lambda function behind {where}")


@dataclass(frozen=True)
class ApiRoutes:
    api: str  # logical id of the AWS::ApiGatewayV2::Api
    protocol: str  # HTTP or WEBSOCKET
    stage: str  # stage name
    selection_expression: str  # WebSocket APIs: e.g. $request.body.action
    routes: Mapping[str, str]  # route key -> function logical id
    authorizer: str | None  # function logical id of the $connect authorizer
    identity_source: tuple[str, ...] = ()


def api_routes(template: Template, api: str) -> ApiRoutes:
    """Route keys -> functions, through each Route's Target integration (and the authorizer)."""
    resources = template["Resources"]
    api_properties = resources[api]["Properties"]
    integrations = {lid: r for lid, r in of_type(template, "AWS::ApiGatewayV2::Integration").items()
                    if r["Properties"].get("ApiId") == {"Ref": api}}  # fmt: skip
    routes: dict[str, str] = {}
    authorizer: str | None = None
    identity: tuple[str, ...] = ()
    for route in of_type(template, "AWS::ApiGatewayV2::Route").values():
        properties = route["Properties"]
        if properties.get("ApiId") != {"Ref": api}:
            continue
        key = properties["RouteKey"]
        target = only({i: True for i in referenced_ids(properties.get("Target"))
                       if i in integrations}, f"integration of route {key}")  # fmt: skip
        integration = integrations[target]["Properties"]
        if integration.get("IntegrationType") != "AWS_PROXY":
            kind = integration.get("IntegrationType")
            raise Unresolvable(f"route {key}: integration type {kind} is not a Lambda proxy")
        routes[key] = function_behind(template, integration["IntegrationUri"], f"route {key}")
        if properties.get("AuthorizationType", "NONE") != "NONE":
            if api_properties.get("ProtocolType") == "WEBSOCKET" and key != "$connect":
                raise Unresolvable(f"route {key} has an authorizer (only $connect can)")
            auth_id = only({i: True for i in referenced_ids(properties.get("AuthorizerId"))},
                           "authorizer of $connect")
            auth = resources[auth_id]["Properties"]
            if auth.get("AuthorizerType") != "REQUEST":
                raise Unresolvable(f"authorizer {auth_id} is {auth.get('AuthorizerType')}")
            authorizer = function_behind(template, auth["AuthorizerUri"], "the authorizer")
            identity = tuple(auth.get("IdentitySource") or ())
    stages = [r["Properties"]["StageName"]
              for r in of_type(template, "AWS::ApiGatewayV2::Stage").values()
              if r["Properties"].get("ApiId") == {"Ref": api}]  # fmt: skip
    if len(stages) != 1:
        raise Unresolvable(f"expected one stage of {api}, found {stages}")
    return ApiRoutes(api=api, protocol=str(api_properties.get("ProtocolType")), stage=stages[0],
                     selection_expression=str(api_properties.get("RouteSelectionExpression", "")),
                     routes=routes, authorizer=authorizer, identity_source=identity)


@dataclass(frozen=True)
class ScheduleSpec:
    logical_id: str
    expression: str
    timezone: str
    target: str  # function logical id
    input: str  # the JSON text EventBridge Scheduler sends (context attributes unreplaced)


def schedules(template: Template) -> list[ScheduleSpec]:
    found = []
    for lid, resource in of_type(template, "AWS::Scheduler::Schedule").items():
        properties = resource["Properties"]
        target = properties["Target"]
        found.append(ScheduleSpec(
            logical_id=lid,
            expression=properties["ScheduleExpression"],
            timezone=properties.get("ScheduleExpressionTimezone", "UTC"),
            target=function_behind(template, target["Arn"], f"schedule {lid}"),
            input=target.get("Input", "{}"),
        ))
    return found
