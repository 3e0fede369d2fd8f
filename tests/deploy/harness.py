"""Processes, bounded waits and clients of the deploy-shaped test (no pytest in here).

Every subprocess writes stdout and stderr to one log file, so that a failure can show the tail
of each; `Processes` stops them all (SIGTERM, then SIGKILL) whatever happened.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlencode

REPO_ROOT = Path(__file__).resolve().parents[2]
# The only variables a deployable inherits from the test's own environment.
INHERITED = ("PATH", "HOME", "LANG")
DUMMY_KEY_ID = "testing"
DUMMY_SECRET = "testing"  # noqa: S105 - moto accepts any credentials

T = TypeVar("T")


class StepFailed(AssertionError):
    pass


def wait_for(what: str, check: Callable[[], T | None], *, timeout: float,
             interval: float = 0.1, last_seen: Callable[[], str] | None = None) -> T:  # fmt: skip
    """Poll `check` until it returns something other than None/False, at most `timeout` s.
    Exceptions count as "not yet" (the last one is reported), except StepFailed."""
    deadline = time.monotonic() + timeout
    error: BaseException | None = None
    while True:
        try:
            value = check()
        except StepFailed:
            raise  # the check knows waiting cannot help (a process exited, ...)
        except Exception as exc:  # noqa: BLE001 - remembered for the failure message
            error, value = exc, None
        if value is not None and value is not False:
            return value
        if time.monotonic() >= deadline:
            seen = last_seen() if last_seen is not None else ""
            detail = f"; last error: {type(error).__name__}: {error}" if error else ""
            raise StepFailed(f"{what}: not within {timeout:g} s{detail}"
                             + (f"; last seen: {seen}" if seen else ""))
        time.sleep(interval)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no output)"
    kept = text.splitlines()[-lines:]
    return "\n".join(kept) if kept else "(no output)"


def inherited_environment() -> dict[str, str]:
    return {name: os.environ[name] for name in INHERITED if name in os.environ}


# --- processes ---------------------------------------------------------------------------------


@dataclass
class Process:
    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 25) -> str:
        return tail(self.log, lines)

    def describe(self) -> str:
        state = "running" if self.alive else f"exited {self.returncode}"
        return f"{self.name} ({state}): {shlex.join(self.argv)}"

    def terminate(self, timeout: float) -> int | None:
        """SIGTERM, then wait up to `timeout` s; None when it is still running."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.popen.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(5)


class Processes:
    """The subprocesses of one test: started with exactly the environment given."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[Process] = []

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str], *,
              cwd: Path = REPO_ROOT) -> Process:  # fmt: skip
        log = self.logs / f"{name}.log"
        with log.open("wb") as sink:
            popen = subprocess.Popen(list(argv), env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL,
                                     stdout=sink, stderr=subprocess.STDOUT)  # fmt: skip
        process = Process(name, list(argv), popen, log)
        self.started.append(process)
        return process

    def close(self) -> None:
        for process in self.started:
            if process.alive:
                with contextlib.suppress(ProcessLookupError):
                    process.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for process in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(max(0.0, deadline - time.monotonic()))
            process.kill()

    def tails(self, lines: int = 25) -> str:
        return "\n".join(f"----- {p.describe()}\n{p.tail(lines)}" for p in self.started)


# --- Lambda hosts ------------------------------------------------------------------------------


class FunctionFailed(RuntimeError):
    """A RequestResponse invocation answered with X-Amz-Function-Error."""

    def __init__(self, function: str, payload: Any) -> None:
        self.payload = payload
        kind = payload.get("errorType") if isinstance(payload, dict) else None
        message = payload.get("errorMessage") if isinstance(payload, dict) else payload
        super().__init__(f"{function} failed: {kind}: {message}")


@dataclass
class Invocation:
    status: int
    function_error: str | None
    payload: Any


class LambdaHost:
    """One `python -m local.lambda_host` process and a boto3 `lambda` client for it."""

    def __init__(self, process: Process, function_name: str, url: str, region: str,
                 timeout: float) -> None:  # fmt: skip
        import boto3
        from botocore.config import Config

        self.process = process
        self.function_name = function_name
        self.url = url
        self.client = boto3.client(
            "lambda", endpoint_url=url, region_name=region, aws_access_key_id=DUMMY_KEY_ID,
            aws_secret_access_key=DUMMY_SECRET,
            config=Config(retries={"total_max_attempts": 1}, connect_timeout=2,
                          read_timeout=timeout + 15, max_pool_connections=20),
        )  # fmt: skip

    def invoke(self, event: Any, *,
               kind: Literal["RequestResponse", "Event", "DryRun"] = "RequestResponse",
               ) -> Invocation:  # fmt: skip
        answer = self.client.invoke(FunctionName=self.function_name, InvocationType=kind,
                                    Payload=json.dumps(event).encode())  # fmt: skip
        raw = answer["Payload"].read()
        payload = json.loads(raw) if raw else None
        return Invocation(answer["StatusCode"], answer.get("FunctionError"), payload)

    def close(self) -> None:
        self.client.close()  # its pooled sockets, else a ResourceWarning lands in a later test

    def __call__(self, event: Any, context: Any = None) -> Any:
        """A handler for the local gateway: the decoded result, or FunctionFailed."""
        result = self.invoke(event)
        if result.function_error:
            raise FunctionFailed(self.function_name, result.payload)
        return result.payload


@dataclass
class PendingHost:
    process: Process
    port_file: Path
    function_name: str
    region: str
    timeout: float

    def ready(self, timeout: float = 30) -> LambdaHost:
        process = self.process

        def port() -> int | None:
            if not process.alive:
                raise StepFailed(f"{process.name} exited {process.returncode}:\n{process.tail()}")
            text = self.port_file.read_text() if self.port_file.exists() else ""
            return int(text) if text.strip() else None

        bound = wait_for(f"{process.name} listening", port, timeout=timeout,
                         last_seen=process.tail)  # fmt: skip
        return LambdaHost(process, self.function_name, f"http://127.0.0.1:{bound}", self.region,
                          self.timeout)  # fmt: skip


def spawn_lambda_host(processes: Processes, *, name: str, handler: str, function_name: str,
                      env: Mapping[str, str], region: str, account: str, timeout: int,
                      memory: int) -> PendingHost:  # fmt: skip
    """`python -m local.lambda_host` for one function; `.ready()` waits for its port."""
    port_file = processes.logs / f"{name}.port"
    argv = [sys.executable, "-m", "local.lambda_host", "--handler", handler,
            "--function-name", function_name, "--port-file", str(port_file),
            "--timeout", str(timeout), "--memory", str(memory), "--region", region,
            "--account", account, "--task-root", str(REPO_ROOT)]  # fmt: skip
    process = processes.start(name, argv, env)
    return PendingHost(process, port_file, function_name, region, timeout)


# --- HTTP API through its Lambda ---------------------------------------------------------------


@dataclass
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def __str__(self) -> str:
        return f"HTTP {self.status} {self.body[:400]!r}"


def http_call(api: LambdaHost, method: str, path: str, *,
              query: Mapping[str, str] | None = None, headers: Iterable[tuple[str, str]] = (),
              body: bytes = b"") -> HttpAnswer:  # fmt: skip
    """One request as API Gateway's HTTP API (payload 2.0) hands it to the function."""
    from local.run.lambda_http import http_api_event

    all_headers = [("host", "api.local"), ("user-agent", "deploy-test"), *headers]
    if body:
        all_headers.append(("content-length", str(len(body))))
    event = http_api_event(method=method, path=path, query_string=urlencode(query or {}),
                           headers=all_headers, body=body, source_ip="127.0.0.1")  # fmt: skip
    result = api.invoke(event)
    if result.function_error:
        # API Gateway answers 500 Internal Server Error when the integration fails.
        raise FunctionFailed(api.function_name, result.payload)
    answer = result.payload
    raw = answer.get("body") or ""
    data = base64.b64decode(raw) if answer.get("isBase64Encoded") else raw.encode()
    return HttpAnswer(int(answer.get("statusCode", 200)),
                      {k.lower(): str(v) for k, v in (answer.get("headers") or {}).items()}, data)


# --- an event loop in a thread (the local gateway lives there) ---------------------------------


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="deploy-test-loop",
                                        daemon=True)  # fmt: skip
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()


# --- the image's ENV ---------------------------------------------------------------------------


def dockerfile_env(path: Path) -> dict[str, str]:
    """`ENV K=V [K=V ...]` lines of a Dockerfile (continuations joined): what the image adds to
    every container's environment."""
    joined: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") and not pending:
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    env: dict[str, str] = {}
    for line in joined:
        words = shlex.split(line)
        if not words or words[0].upper() != "ENV":
            continue
        pairs = words[1:]
        if pairs and "=" not in pairs[0]:  # legacy form: ENV KEY value with spaces
            env[pairs[0]] = " ".join(pairs[1:])
            continue
        for pair in pairs:
            key, _, value = pair.partition("=")
            env[key] = value
    return env
