"""Each deployable reads every variable the template passes it, and gets every one it needs.

For every Python Lambda (by its handler string) and every container (by its command), the
deployable's wiring module is found the way the runtime finds the code (`functions.ws.connect`
-> `functions.ws.wiring`; `python -m streamer` -> `streamer.wiring`; a module that is its own
wiring, like `relay.wiring`, is used as is). Its `read_settings(environ)` is run on a
mapping that records each name read: a variable the template passes and nothing reads is a
setting silently dropped (the bug behind `issues show 10`: the bridge never read
REDIS_AUTH_TOKEN). Its `REQUIRED_ENV[entry]` names what it cannot work without in AWS; the
template must pass each one.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from tests.infra.helpers import Synthesized

pytestmark = pytest.mark.cdk

# Placeholder values of the right shape: what a Ref resolves to does not matter here, only
# that each value parses (a URL where a URL is read, a number where a number is).
SAMPLE_VALUES = {
    "REDIS_URL": "rediss://cache.example:6379/0",
    "DHAN_FEED_URL": "wss://feed.example",
    "REDIS_SOCKET_TIMEOUT": "10",
    "TOKEN_RENEW_BELOW_SECONDS": "57600",
    "WS_MAX_CONNECTIONS": "5000",
    "TOKEN_RENEW_URGENT_SECONDS": "14400",
}


class RecordingEnviron(dict[str, str]):
    """An environment that remembers every name looked up in it."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(values)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.read.add(key)
        return super().__contains__(key)


def wiring_of(module_name: str) -> ModuleType:
    try:
        return importlib.import_module(f"{module_name}.wiring")
    except ModuleNotFoundError as exc:
        if exc.name != f"{module_name}.wiring":
            raise
    module = importlib.import_module(module_name)
    assert hasattr(module, "read_settings"), f"{module_name} has no wiring module"
    return module


def deployables(synthesized: Synthesized) -> Iterator[tuple[str, ModuleType, str, list[str]]]:
    """(what, wiring module, entry name, variable names) for each of our deployables."""
    for function in synthesized.of_type("AWS::Lambda::Function"):
        props = function["Properties"]
        handler = str(props.get("Handler", ""))
        if not str(props.get("Runtime", "")).startswith("python") or \
                not handler.startswith("functions."):
            continue  # CDK's own custom-resource handlers
        module, _, entry = handler.rpartition(".")
        names = list((props.get("Environment") or {}).get("Variables", {}))
        yield handler, wiring_of(module), entry, names
    for task in synthesized.of_type("AWS::ECS::TaskDefinition"):
        for container in task["Properties"]["ContainerDefinitions"]:
            command = container["Command"]
            assert command[:2] == ["python", "-m"], command
            names = [e["Name"] for e in container.get("Environment", [])]
            names += [s["Name"] for s in container.get("Secrets", [])]
            yield " ".join(command), wiring_of(command[2]), "__main__", names


def sample_environment(names: list[str]) -> dict[str, str]:
    values = {name: SAMPLE_VALUES.get(name, "x") for name in names}
    for name in names:
        if name.endswith(("_ARN",)):
            values[name] = f"arn:aws:secretsmanager:ap-south-1:123456789012:secret:{name}"
        elif name in ("WS_SHARDS", "FANOUT_MAX_WORKERS", "WS_POST_BUDGET_PER_SECOND"):
            values[name] = "4"
        elif name == "STREAMER_AUTO_STOP":
            values[name] = "false"
        elif name == "DHANHQ_WS_MODE":
            values[name] = "quote"
        elif name == "STREAM_KEYS":
            values[name] = "NSE_EQ:1333"
    return values


def test_every_deployable_is_found(synthesized: Synthesized) -> None:
    found = {what for what, *_ in deployables(synthesized)}
    assert found == {
        "functions.api.handler", "functions.quotes.handler", "functions.ws.authorize",
        "functions.ws.connect",
        "functions.ws.disconnect", "functions.ws.message", "functions.fanout.handler",
        "functions.schedule.handler", "functions.instruments.handler", "functions.token.handler",
        "python -m streamer", "python -m relay",
    }  # fmt: skip


def test_each_deployable_reads_every_variable_the_template_passes_it(
    synthesized: Synthesized,
) -> None:
    ignored = {}
    for what, wiring, _, names in deployables(synthesized):
        environ = RecordingEnviron(sample_environment(names))
        wiring.read_settings(environ)
        if unread := sorted(set(names) - environ.read):
            ignored[what] = unread
    assert ignored == {}, f"the template passes variables these deployables never read: {ignored}"


def test_the_template_passes_every_variable_a_deployable_requires(
    synthesized: Synthesized,
) -> None:
    missing = {}
    for what, wiring, entry, names in deployables(synthesized):
        required = wiring.REQUIRED_ENV[entry]
        if absent := sorted(set(required) - set(names)):
            missing[what] = absent
    assert missing == {}, f"the template omits variables these deployables need: {missing}"


def test_the_recording_sees_a_dropped_variable() -> None:
    """The check above can fail: a bridge whose settings skipped REDIS_AUTH_TOKEN (the bug
    this test exists for) leaves the name unread."""
    from relay.wiring import BridgeSettings

    environ = RecordingEnviron({"REDIS_URL": "rediss://h:6379/0", "REDIS_AUTH_TOKEN": "t",
                                "FANOUT_FUNCTION_NAME": "f"})
    BridgeSettings(fanout_function_name=environ.get("FANOUT_FUNCTION_NAME", ""))
    assert "REDIS_AUTH_TOKEN" not in environ.read
    BridgeSettings.from_env(environ)
    assert "REDIS_AUTH_TOKEN" in environ.read
