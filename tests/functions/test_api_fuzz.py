"""Schemathesis fuzz of the OpenAPI document: generated valid and invalid requests for every
operation never get a 5xx. Bounded to 50 examples per operation and generation mode.

(Schemathesis' own `pytest.from_fixture` trips over pytest 9, so the strategies are driven
with Hypothesis directly; the cases and checks are schemathesis' own.)
"""

from __future__ import annotations

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given, settings

from core.config import Secret
from tests.functions import test_api_support as support
from tests.functions.test_api_support import ADMIN_KEY, MakeApi

make_api = support.make_api

OPERATIONS = [
    ("GET", "/api/v1/current_prices"),
    ("POST", "/api/v1/current_prices"),
    ("POST", "/screeners/ltp/start"),
    ("POST", "/screeners/ltp/stop"),
    ("GET", "/api/v1/health/market_stream"),
    ("GET", "/api/v1/ws_token"),
]
NO_INPUT = {"/api/v1/health/market_stream", "/api/v1/ws_token"}


def test_every_route_is_in_the_openapi_document(make_api: MakeApi) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", make_api().app)
    found = {(result.ok().method.upper(), result.ok().path)
             for result in schema.get_all_operations()}  # fmt: skip
    assert found == set(OPERATIONS)


@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE,
                                  schemathesis.GenerationMode.NEGATIVE])  # fmt: skip
@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_no_generated_request_gets_a_5xx(
    make_api: MakeApi,
    redis_client: redis.Redis,
    method: str,
    path: str,
    mode: schemathesis.GenerationMode,
) -> None:
    if mode is schemathesis.GenerationMode.NEGATIVE and path in NO_INPUT:
        pytest.skip("this route takes no input, so nothing can be made invalid")
    redis_client.set("ltp:NSE_EQ:1333", "1234.5")
    # The REST fallback points at a port where nothing listens: misses must still not 5xx.
    harness = make_api(admin_api_key=Secret(ADMIN_KEY), dhan_client_id="1000000001",
                       dhan_access_token=Secret("x"), dhan_api_base_url="http://127.0.0.1:9/v2",
                       dhan_rest_timeout=0.2, dhan_rest_budget=0.3,
                       dhan_rest_min_interval=0.001)  # fmt: skip
    schema = schemathesis.openapi.from_asgi("/openapi.json", harness.app)
    operation = schema[path][method]
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"} if method == "POST" else None
    statuses: set[int] = set()

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=50, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def run(case: schemathesis.Case) -> None:
        response = case.call(headers=headers)
        assert response.status_code < 500, (case.as_curl_command(), response.text[:500])
        statuses.add(response.status_code)

    run()
    assert statuses, "no request was generated"
