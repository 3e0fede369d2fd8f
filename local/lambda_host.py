"""A Lambda stand-in: one execution environment running one handler string behind the Invoke API.

    python -m local.lambda_host --handler functions.ws.connect --function-name NAME \\
        [--port 0] [--port-file PATH] [--timeout 10] [--memory 512]

What Lambda does, and so does this process:
- The handler string is `module.attribute`, imported as Lambda's Python runtime imports it:
  the task root (`--task-root`, default the current directory, like LAMBDA_TASK_ROOT=/var/task)
  first on `sys.path`, once, right after the port is announced (the init phase; invocations
  arriving meanwhile wait for it, as a cold start's first one does). An import that fails is
  reported on every invocation as `Runtime.ImportModuleError` / `Runtime.HandlerNotFound` and
  retried, as Lambda retries a failed init.
- The function's environment is this process's environment; the variables Lambda itself adds
  (AWS_LAMBDA_FUNCTION_NAME, AWS_LAMBDA_FUNCTION_MEMORY_SIZE, AWS_LAMBDA_FUNCTION_VERSION,
  AWS_LAMBDA_LOG_GROUP_NAME, AWS_LAMBDA_LOG_STREAM_NAME, LAMBDA_TASK_ROOT, _HANDLER) are set
  when absent.
- One invocation at a time (one execution environment), on the main thread, in arrival order.
- `POST /2015-03-31/functions/{FunctionName}/invocations` (what boto3's `lambda` client sends
  with `endpoint_url=` or AWS_ENDPOINT_URL_LAMBDA), `X-Amz-Invocation-Type`:
    RequestResponse (default): 200 and the handler's JSON result; a handler exception is 200
      with `X-Amz-Function-Error: Unhandled` and `{"errorMessage", "errorType", "requestId",
      "stackTrace"}`, as Lambda answers.
    Event: 202 at once; the invocation is queued and runs later, in order. No retries (the
      project's only async-invoked function, the fan-out, sets retry attempts to 0).
    DryRun: 204.
  FunctionName may be the name, the ARN or a partial ARN, optionally qualified with $LATEST.
  Another name answers 404 with `x-amzn-ErrorType: ResourceNotFoundException`. Payloads above
  6 MB (RequestResponse) or 1 MB (Event) answer 413 RequestTooLargeException; a payload that is
  not JSON 400 InvalidRequestContentException.
- The context object has function_name, function_version, invoked_function_arn,
  memory_limit_in_mb (a string, as the runtime gives it), aws_request_id, log_group_name,
  log_stream_name and get_remaining_time_in_millis() (from `--timeout`).
- START / END / REPORT lines per invocation on stderr, like the function's log stream.

Not emulated: a timed-out invocation is answered as Lambda answers it (`Task timed out after
N seconds`), but its handler is not interrupted; SigV4 is not checked.

The bound port is printed as the first line of stdout (and written to `--port-file` when given,
atomically). The handler's own output goes to stdout/stderr: redirect them or keep reading.
SIGTERM or SIGINT stops the process (exit 0). Production code never imports this module.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import queue
import signal
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

INVOKE_PREFIX = "/2015-03-31/functions/"
INVOKE_SUFFIX = "/invocations"
MAX_SYNC_PAYLOAD = 6 * 1024 * 1024
MAX_ASYNC_PAYLOAD = 1024 * 1024
VERSION = "$LATEST"

Handler = Callable[[Any, Any], Any]


@dataclass(frozen=True, slots=True)
class FunctionConfig:
    handler: str
    function_name: str
    region: str = "us-east-1"
    account: str = "123456789012"
    memory_mb: int = 128
    timeout_s: float = 3.0
    task_root: str = "."

    @property
    def arn(self) -> str:
        return f"arn:aws:lambda:{self.region}:{self.account}:function:{self.function_name}"


class LambdaContext:
    """What the Python runtime passes as `context`."""

    def __init__(self, config: FunctionConfig, request_id: str, started: float) -> None:
        self.function_name = config.function_name
        self.function_version = VERSION
        self.invoked_function_arn = config.arn
        self.memory_limit_in_mb = str(config.memory_mb)
        self.aws_request_id = request_id
        self.log_group_name = f"/aws/lambda/{config.function_name}"
        self.log_stream_name = "local-lambda-host"
        self.identity: Any = None
        self.client_context: Any = None
        self._deadline = started + config.timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


@dataclass(frozen=True, slots=True)
class Outcome:
    payload: bytes
    function_error: bool = False


@dataclass(slots=True)
class Job:
    event: Any
    request_id: str
    started: threading.Event = field(default_factory=threading.Event)
    done: Future[Outcome] = field(default_factory=Future)


def _error_payload(error_type: str, message: str, request_id: str,
                   stack: Sequence[str] = ()) -> bytes:  # fmt: skip
    return json.dumps({"errorMessage": message, "errorType": error_type,
                       "requestId": request_id, "stackTrace": list(stack)}).encode()


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Environment:
    """One execution environment: the imported handler and the invocations waiting for it."""

    def __init__(self, config: FunctionConfig) -> None:
        self.config = config
        self.jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._handler: Handler | None = None
        self._init_error: tuple[str, str, list[str]] | None = None

    def init(self) -> None:
        """Import the handler (Lambda's init phase); a failure is kept for the invocations."""
        module_name, _, attribute = self.config.handler.rpartition(".")
        if not module_name or not attribute:
            self._init_error = ("Runtime.MalformedHandlerName",
                                f"Bad handler '{self.config.handler}': not enough values to "
                                "unpack (expected 2, got 1)", [])  # fmt: skip
            return
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # noqa: BLE001 - reported as Lambda reports a failed init
            self._init_error = ("Runtime.ImportModuleError",
                                f"Unable to import module '{module_name}': {exc}",
                                traceback.format_exception(exc))  # fmt: skip
            return
        handler = getattr(module, attribute, None)
        if not callable(handler):
            self._init_error = ("Runtime.HandlerNotFound",
                                f"Handler '{attribute}' missing on module '{module_name}'", [])
            return
        self._handler = handler
        self._init_error = None

    def run_forever(self) -> None:
        while (job := self.jobs.get()) is not None:
            job.started.set()
            outcome = self.invoke(job)
            if not job.done.done():
                job.done.set_result(outcome)

    def invoke(self, job: Job) -> Outcome:
        started = time.monotonic()
        _log(f"START RequestId: {job.request_id} Version: {VERSION}")
        if self._handler is None:
            self.init()  # Lambda retries a failed init on the next invocation
        try:
            if self._handler is None:
                assert self._init_error is not None
                kind, message, stack = self._init_error
                _log(f"[ERROR] {kind}: {message}")
                return Outcome(_error_payload(kind, message, job.request_id, stack), True)
            context = LambdaContext(self.config, job.request_id, started)
            try:
                result = self._handler(job.event, context)
            except Exception as exc:  # noqa: BLE001 - the handler's failure is the answer
                stack = traceback.format_exception(exc)
                _log(f"[ERROR] {type(exc).__name__}: {exc}\n{''.join(stack)}")
                return Outcome(_error_payload(type(exc).__name__, str(exc), job.request_id,
                                              stack), True)  # fmt: skip
            try:
                return Outcome(json.dumps(result).encode())
            except (TypeError, ValueError) as exc:
                message = f"Unable to marshal response: {exc}"
                _log(f"[ERROR] Runtime.MarshalError: {message}")
                return Outcome(_error_payload("Runtime.MarshalError", message, job.request_id),
                               True)  # fmt: skip
        finally:
            elapsed = (time.monotonic() - started) * 1000
            _log(f"END RequestId: {job.request_id}")
            _log(f"REPORT RequestId: {job.request_id}\tDuration: {elapsed:.2f} ms\t"
                 f"Memory Size: {self.config.memory_mb} MB")  # fmt: skip


def matches_function(requested: str, config: FunctionConfig) -> bool:
    """Name, ARN or partial ARN (`ACCOUNT:function:NAME`), optionally `:$LATEST`-qualified."""
    parts = requested.split(":")
    if len(parts) >= 7 and parts[0] == "arn":  # arn:aws:lambda:REGION:ACCOUNT:function:NAME[:Q]
        if parts[2] != "lambda" or parts[5] != "function":
            return False
        name, qualifier = parts[6], parts[7] if len(parts) > 7 else ""
        if parts[3] != config.region or parts[4] != config.account:
            return False
    elif len(parts) >= 3 and parts[1] == "function":  # ACCOUNT:function:NAME[:Q]
        name, qualifier = parts[2], parts[3] if len(parts) > 3 else ""
        if parts[0] != config.account:
            return False
    else:  # NAME[:Q]
        name, qualifier = parts[0], parts[1] if len(parts) > 1 else ""
    return name == config.function_name and qualifier in ("", VERSION)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    environment: Environment


class _InvokeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        environment = self.server.environment
        config = environment.config
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if not (url.path.startswith(INVOKE_PREFIX) and url.path.endswith(INVOKE_SUFFIX)):
            self._error(404, "UnknownOperationException", "Unknown operation")
            return
        requested = unquote(url.path[len(INVOKE_PREFIX):-len(INVOKE_SUFFIX)])
        qualifier = (parse_qs(url.query).get("Qualifier") or [""])[0]
        if qualifier:
            requested = f"{requested}:{qualifier}"
        if not matches_function(requested, config):
            self._error(404, "ResourceNotFoundException",
                        f"Function not found: {requested}", error_type="User")
            return
        kind = self.headers.get("X-Amz-Invocation-Type") or "RequestResponse"
        if kind not in ("RequestResponse", "Event", "DryRun"):
            self._error(400, "InvalidParameterValueException",
                        f"Invalid invocation type: {kind}", error_type="User")
            return
        limit = MAX_ASYNC_PAYLOAD if kind == "Event" else MAX_SYNC_PAYLOAD
        if len(body) > limit:
            self._error(413, "RequestTooLargeException",
                        f"Request must be smaller than {limit} bytes for the {kind} "
                        "invocation type", error_type="User")  # fmt: skip
            return
        try:
            event = json.loads(body) if body.strip() else {}
        except ValueError:
            self._error(400, "InvalidRequestContentException",
                        "Could not parse request body into json", error_type="User")
            return
        request_id = str(uuid.uuid4())
        if kind == "DryRun":
            self._reply(204, b"", request_id)
            return
        job = Job(event, request_id)
        environment.jobs.put(job)
        if kind == "Event":
            self._reply(202, b"", request_id)
            return
        # The timeout runs from the start of the invocation, not from its wait in the queue
        # (Lambda would have used another execution environment meanwhile).
        job.started.wait()
        try:
            outcome = job.done.result(timeout=config.timeout_s)
        except TimeoutError:
            outcome = Outcome(_error_payload(
                "Sandbox.Timedout",
                f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {request_id} "
                f"Task timed out after {config.timeout_s:.2f} seconds", request_id), True)
        self._reply(200, outcome.payload, request_id,
                    function_error="Unhandled" if outcome.function_error else None)

    def _reply(self, status: int, payload: bytes, request_id: str, *,
               function_error: str | None = None) -> None:  # fmt: skip
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("x-amzn-RequestId", request_id)
        self.send_header("X-Amz-Executed-Version", VERSION)
        if function_error:
            self.send_header("X-Amz-Function-Error", function_error)
        self.end_headers()
        self.wfile.write(payload)

    def _error(self, status: int, code: str, message: str, *, error_type: str = "") -> None:
        body: dict[str, str] = {"message": message}
        if error_type:
            body["Type"] = error_type
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        self.send_header("x-amzn-ErrorType", code)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return


def lambda_environment(config: FunctionConfig) -> dict[str, str]:
    """The variables Lambda adds to every function's environment."""
    return {
        "AWS_LAMBDA_FUNCTION_NAME": config.function_name,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(config.memory_mb),
        "AWS_LAMBDA_FUNCTION_VERSION": VERSION,
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{config.function_name}",
        "AWS_LAMBDA_LOG_STREAM_NAME": "local-lambda-host",
        "LAMBDA_TASK_ROOT": config.task_root,
        "_HANDLER": config.handler,
    }


def _announce(port: int, port_file: str | None) -> None:
    print(port, flush=True)
    if port_file:
        target = Path(port_file)
        partial = target.with_name(target.name + ".partial")
        partial.write_text(f"{port}\n")
        partial.replace(target)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m local.lambda_host",
                                     description=__doc__.split("\n\n")[0])  # fmt: skip
    parser.add_argument("--handler", required=True, help="module.attribute, as in the template")
    parser.add_argument("--function-name", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--port-file", help="also write the bound port here")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (Lambda: Timeout)")
    parser.add_argument("--memory", type=int, default=128, help="MB (Lambda: MemorySize)")
    parser.add_argument("--region", default="")
    parser.add_argument("--account", default="123456789012")
    parser.add_argument("--task-root", default=".")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    region = args.region or os.environ.get("AWS_REGION") or os.environ.get(
        "AWS_DEFAULT_REGION") or "us-east-1"
    task_root = str(Path(args.task_root).resolve())
    config = FunctionConfig(handler=args.handler, function_name=args.function_name,
                            region=region, account=args.account, memory_mb=args.memory,
                            timeout_s=args.timeout, task_root=task_root)  # fmt: skip
    for name, value in lambda_environment(config).items():
        os.environ.setdefault(name, value)
    if task_root not in sys.path:
        sys.path.insert(0, task_root)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)

    environment = Environment(config)
    server = _Server((args.host, args.port), _InvokeHandler)
    server.environment = environment

    def stop(signum: int, frame: Any) -> None:
        environment.jobs.put(None)  # SimpleQueue.put is safe in a signal handler

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threading.Thread(target=server.serve_forever, name="invoke-api", daemon=True).start()
    # The port first (so the first stdout line is ours), then the init phase: invocations that
    # arrive meanwhile wait for it, as the first invocation of a cold start does.
    _announce(server.server_address[1], args.port_file)
    environment.init()
    try:
        environment.run_forever()
    finally:
        server.shutdown()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
