"""The API's metrics: one Powertools EMF document per flush, with every recorded value."""

from __future__ import annotations

import json
from typing import Any

import pytest

from functions.api.observability import MAX_VALUES, flushes_metrics, new_metrics


def emf_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith('{"_aws"')]


def test_one_document_per_invocation(capsys: pytest.CaptureFixture[str]) -> None:
    metrics = new_metrics("LtpTest")

    @flushes_metrics(metrics)
    def handler(event: dict[str, object], context: object) -> dict[str, object]:
        metrics.count("CacheHits", 3)
        metrics.count("CacheMisses", 0)
        metrics.milliseconds("RequestLatency", 1.25)
        return {"statusCode": 200}

    handler({}, None)
    handler({}, None)
    documents = emf_lines(capsys.readouterr().out)
    assert len(documents) == 2
    document = documents[0]
    assert document["CacheHits"] == [3.0] and document["CacheMisses"] == [0.0]
    assert document["RequestLatency"] == [1.25]
    assert document["service"] == "ltp-api"
    directive = document["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == "LtpTest"
    assert ["service"] in directive["Dimensions"]
    assert {"Name": "RequestLatency", "Unit": "Milliseconds"} in directive["Metrics"]
    assert {"Name": "CacheHits", "Unit": "Count"} in directive["Metrics"]


def test_a_failing_invocation_still_flushes_and_nothing_recorded_writes_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    metrics = new_metrics("LtpTest")

    @flushes_metrics(metrics)
    def failing(event: dict[str, object], context: object) -> dict[str, object]:
        metrics.count("ServerErrors", 1)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        failing({}, None)
    metrics.flush()  # nothing left
    documents = emf_lines(capsys.readouterr().out)
    assert [document["ServerErrors"] for document in documents] == [[1.0]]


def test_a_metric_at_the_powertools_limit_is_flushed_by_itself(
    capsys: pytest.CaptureFixture[str],
) -> None:
    metrics = new_metrics("LtpTest")
    for _ in range(MAX_VALUES + 1):
        metrics.milliseconds("RequestLatency", 1.0)
    documents = emf_lines(capsys.readouterr().out)
    assert [len(document["RequestLatency"]) for document in documents] == [MAX_VALUES]
    metrics.clear_metrics()
