"""The cost model: message counts drive the WebSocket bill; the budget caps the rate."""

from __future__ import annotations

import pytest

from scripts.cost_model import Prices, Traffic, estimate, main, render

SESSION_SECONDS = 21 * 6.5 * 3600


def line(viewers: int, component: str, traffic: Traffic | None = None) -> float:
    found = estimate(viewers, traffic or Traffic(), Prices())
    (usd,) = [item.usd for item in found.lines if item.component.startswith(component)]
    return usd


def test_one_message_per_window_until_the_budget_widens_the_window() -> None:
    traffic = Traffic()
    assert traffic.rate(100) == pytest.approx(4.0)  # 250 ms window
    assert traffic.rate(5000) == pytest.approx(1.0)  # 5,000 clients share 5,000 posts/s
    assert traffic.rate(20000) == pytest.approx(0.25)


def test_websocket_messages_are_priced_from_the_message_count() -> None:
    measured = Traffic(messages_per_client_per_second=0.5, pings_per_client_hour=0)
    out_messages = 5000 * 0.5 * SESSION_SECONDS
    connects = 5000 * 21 * 4  # 6.5 h with a reconnect before every 110 minutes
    expected = (out_messages + connects) / 1e6 * Prices().ws_million_messages
    assert line(5000, "API Gateway WebSocket messages", measured) == pytest.approx(expected)


def test_fixed_costs_do_not_grow_with_viewers() -> None:
    for component in ("ECS Fargate", "ElastiCache", "Secrets"):
        assert line(100, component) == line(5000, component)
    assert line(5000, "NAT") > line(100, "NAT")


def test_the_table_has_a_column_per_viewer_count(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--viewers", "100", "5000", "--messages-per-client-per-second", "1"]) == 0
    table = capsys.readouterr().out
    assert table.startswith("| component | 100 viewers | 5,000 viewers |")
    assert "**total per month**" in table
    text = render([estimate(100, Traffic(), Prices())], Traffic())
    assert sum(row.startswith("|") for row in text.splitlines()) == 12  # header, rule, 9, total
