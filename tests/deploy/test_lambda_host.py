"""`python -m local.lambda_host`: the Invoke API as boto3 calls it, one invocation at a time."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.deploy.harness import LambdaHost, Processes, inherited_environment, spawn_lambda_host

HANDLERS = '''
import json, os, time
SEEN = []

def handler(event, context):
    if event.get("fail"):
        raise ValueError("asked to fail")
    if event.get("sleep"):
        time.sleep(event["sleep"])
    SEEN.append(event.get("n"))
    return {"event": event, "seen": list(SEEN), "function": context.function_name,
            "arn": context.invoked_function_arn, "memory": context.memory_limit_in_mb,
            "left_ms": context.get_remaining_time_in_millis(),
            "env": os.environ.get("AWS_LAMBDA_FUNCTION_NAME"), "own": os.environ.get("OWN")}
'''


def host(tmp_path: Path, processes: Processes, handler: str) -> LambdaHost:
    (tmp_path / "sample_fn.py").write_text(HANDLERS)
    env = {**inherited_environment(), "PYTHONPATH": str(tmp_path), "OWN": "from-env"}
    pending = spawn_lambda_host(processes, name=f"host-{handler}", handler=handler,
                                function_name="sample", env=env, region="ap-south-1",
                                account="123456789012", timeout=2, memory=256)  # fmt: skip
    return pending.ready()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    group = Processes(tmp_path)
    try:
        yield group
    finally:
        group.close()


def test_invocations_as_lambda_answers_them(tmp_path: Path, processes: Processes) -> None:
    fn = host(tmp_path, processes, "sample_fn.handler")
    first = fn.invoke({"n": 1})
    assert (first.status, first.function_error) == (200, None)
    assert first.payload["function"] == "sample" and first.payload["env"] == "sample"
    assert first.payload["arn"] == "arn:aws:lambda:ap-south-1:123456789012:function:sample"
    assert first.payload["memory"] == "256" and first.payload["own"] == "from-env"
    assert 0 < first.payload["left_ms"] <= 2000

    failed = fn.invoke({"fail": True})
    assert (failed.status, failed.function_error) == (200, "Unhandled")
    assert failed.payload["errorType"] == "ValueError"
    assert failed.payload["errorMessage"] == "asked to fail"

    for n in (2, 3, 4):  # queued, run in order, one at a time
        assert fn.invoke({"n": n, "sleep": 0.1}, kind="Event").status == 202
    assert fn.client.invoke(FunctionName="sample", InvocationType="DryRun")["StatusCode"] == 204
    last = fn.invoke({"n": 5})  # waits behind the queued events
    assert last.payload["seen"] == [1, 2, 3, 4, 5]

    arn = fn.client.invoke(FunctionName="123456789012:function:sample:$LATEST", Payload=b"{}")
    assert arn["StatusCode"] == 200
    with pytest.raises(ClientError) as missing:
        fn.client.invoke(FunctionName="another", Payload=b"{}")
    assert missing.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert missing.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404

    timed_out = fn.invoke({"sleep": 3})
    assert timed_out.function_error == "Unhandled"
    assert "Task timed out after 2.00 seconds" in timed_out.payload["errorMessage"]

    fn.process.popen.terminate()
    assert fn.process.popen.wait(10) == 0


def test_a_handler_that_does_not_import(tmp_path: Path, processes: Processes) -> None:
    fn = host(tmp_path, processes, "no_such_module.handler")
    answer = fn.invoke({})
    assert answer.function_error == "Unhandled"
    assert answer.payload["errorType"] == "Runtime.ImportModuleError"
    missing = host(tmp_path, processes, "sample_fn.nothing").invoke({})
    assert missing.payload["errorType"] == "Runtime.HandlerNotFound"


def test_the_port_is_the_first_line_of_stdout(tmp_path: Path) -> None:
    (tmp_path / "sample_fn.py").write_text(HANDLERS)
    env = {**inherited_environment(), "PYTHONPATH": str(tmp_path)}
    repo = Path(__file__).resolve().parents[2]
    process = subprocess.Popen(
        [sys.executable, "-m", "local.lambda_host", "--handler", "sample_fn.handler",
         "--function-name", "sample", "--port", "0"],
        cwd=repo, env={**env, "PYTHONPATH": f"{tmp_path}:{repo}"}, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        import urllib.request

        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/2015-03-31/functions/sample/invocations",
            data=json.dumps({"n": 1}).encode(), method="POST")
        started = time.monotonic()
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert json.loads(answer.read())["event"] == {"n": 1}
        assert time.monotonic() - started < 10
    finally:
        process.terminate()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()
