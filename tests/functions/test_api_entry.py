"""The real Lambda entry point `functions.api.handler` in a fresh interpreter: Powertools JSON
logs with the request id, EMF metrics, heavy clients imported only on the paths that need
them, and no secret in anything written to stdout or stderr (with DEBUG logging on)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import redis

from local.dhan_sim.rest import RestStandIn
from tests.functions.test_api_support import load_event, with_body, with_headers, with_query

ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY = "adm-7f3c9e1b5d2a4f6e8c0b"
WRONG_KEY = "adm-7f3c9e1b5d2a4f6e8c0X"
DHAN_TOKEN = "dhan-token-9a8b7c6d5e4f3a2b1c"

SCRIPT = r"""
import json, logging, sys
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)

class Context:
    function_name = "ltp-api"
    function_version = "$LATEST"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:ap-south-1:123456789012:function:ltp-api"
    aws_request_id = "d1c2b3a4-0000-4000-8000-000000000001"

def loaded():
    return {name: name in sys.modules for name in ("boto3", "dhanhq", "pandas")}

import functions.api
report = {"after_package_import": loaded()}
from functions.api import handler
report["after_entry"] = loaded()
events = json.load(sys.stdin)
answers = []
for index, event in enumerate(events):
    answers.append(handler(event, Context()))
    report[f"after_event_{index}"] = loaded()
report["answers"] = answers
print("REPORT " + json.dumps(report))
"""


def run_entry(events: list[dict[str, Any]], env: dict[str, str]) -> tuple[dict[str, Any], str]:
    completed = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        input=json.dumps(events),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **env},
        timeout=60,
        check=True,
    )
    report_lines = [line for line in completed.stdout.splitlines() if line.startswith("REPORT ")]
    assert len(report_lines) == 1, completed.stderr[-3000:]
    report = json.loads(report_lines[0][len("REPORT "):])
    other_output = "\n".join(
        line for line in completed.stdout.splitlines() if not line.startswith("REPORT ")
    )
    return report, other_output + "\n" + completed.stderr


def test_entry_point_logs_metrics_lazy_imports_and_never_a_secret(
    redis_url: str, redis_client: redis.Redis
) -> None:
    redis_client.set("ltp:NSE_EQ:1333", "1234.5")
    start = {"name": "swing", "keys": ["NSE_EQ:1333"], "mode": "ticker"}
    with RestStandIn(client_id="1000000001", access_token=DHAN_TOKEN,
                     enforce_rate_limit=False) as rest:  # fmt: skip
        rest.set_price("NSE_EQ", "11536", 3901.05)
        rest.fail_next(n=1, http_status=401, error_code="DH-901",
                       error_type="Invalid_Authentication", message="token expired")  # fmt: skip
        events = [
            with_query(load_event("http_get_current_prices"), "keys=NSE_EQ:1333"),
            with_body(load_event("http_post_start"), start),
            with_headers(with_body(load_event("http_post_start"), start),
                         authorization=f"Bearer {WRONG_KEY}"),  # fmt: skip
            load_event("http_get_current_prices"),  # the miss meets Dhan's 401
            load_event("http_post_current_prices"),  # the miss is fetched
            load_event("http_get_health"),
            load_event("http_get_openapi"),
            load_event("http_get_docs"),
        ]
        events[1] = with_headers(events[1], authorization=f"Bearer {ADMIN_KEY}")
        report, output = run_entry(events, {
            "REDIS_URL": redis_url,
            "ADMIN_API_KEY": ADMIN_KEY,
            "DHAN_CLIENT_ID": "1000000001",
            "DHAN_ACCESS_TOKEN": DHAN_TOKEN,
            "DHAN_API_BASE_URL": rest.base_url,
            "DHAN_REST_MIN_INTERVAL_SECONDS": "0.01",
            "POWERTOOLS_LOG_LEVEL": "DEBUG",
            "POWERTOOLS_METRICS_NAMESPACE": "LtpTest",
        })  # fmt: skip
        assert len(rest.calls) == 2

    statuses = [answer["statusCode"] for answer in report["answers"]]
    assert statuses == [200, 200, 401, 200, 200, 200, 200, 200]
    bodies = [answer["body"] for answer in report["answers"]]
    assert json.loads(bodies[3])["errors"][0]["code"] == "DH-901"
    assert json.loads(bodies[4])["prices"]["NSE_EQ:11536"] == 3901.05
    assert "openapi" in json.loads(bodies[6])
    assert "swagger-ui" in bodies[7].lower()

    # Heavy clients: neither at import nor for cached prices; dhanhq only once a miss needs it;
    # boto3 never (no ARN, no ECS service configured); pandas never.
    assert report["after_package_import"] == {"boto3": False, "dhanhq": False, "pandas": False}
    assert report["after_entry"] == {"boto3": False, "dhanhq": False, "pandas": False}
    assert report["after_event_2"] == {"boto3": False, "dhanhq": False, "pandas": False}
    assert report["after_event_3"] == {"boto3": False, "dhanhq": True, "pandas": False}

    # No secret, nor a presented wrong key, in anything written.
    for secret in (ADMIN_KEY, WRONG_KEY, DHAN_TOKEN):
        assert secret not in output

    # Powertools JSON logs carry API Gateway's request id as the correlation id.
    records = [json.loads(line) for line in output.splitlines() if line.startswith('{"level"')]
    request_lines = [r for r in records if r.get("message") == "request"]
    assert {r["correlation_id"] for r in request_lines} >= {
        load_event("http_get_current_prices")["requestContext"]["requestId"],
        load_event("http_post_start")["requestContext"]["requestId"],
    }
    assert all(r["service"] == "ltp-api" and "function_request_id" in r for r in request_lines)

    # One EMF document per invocation with the cache and REST counters.
    emf = [json.loads(line) for line in output.splitlines() if line.startswith('{"_aws"')]
    assert len(emf) == len(events)
    assert emf[0]["CacheHits"] == [1.0] and emf[0]["CacheMisses"] == [0.0]
    assert emf[4]["RestFetched"] == [1.0] and emf[4]["RestCalls"] == [1.0]
    assert emf[3]["RestErrors"] == [1.0]
    assert all("RequestLatency" in doc for doc in emf)
    assert emf[0]["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "LtpTest"
