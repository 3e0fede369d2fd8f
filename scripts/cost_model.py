"""Monthly AWS cost of the deployment for a trading month, from message counts.

    .venv/bin/python scripts/cost_model.py                      # 100 and 5,000 viewers
    .venv/bin/python scripts/cost_model.py --viewers 100 1000 5000 \
        --messages-per-client-per-second 0.8                    # what bench/ measured

The fan-out sends at most one message per connection per window, and the bridge widens the
window so that all connections together stay under the PostToConnection budget (5,000/s by
default). Unless `--messages-per-client-per-second` is given (the fan-out benchmark measures
it), every window is assumed to carry a message for every viewer, the upper bound:
    messages/client/s = 1 / max(window, viewers / budget)

Prices are on-demand list prices in USD for us-east-1 (constants below, no free tier);
ap-south-1, the default region, is typically 5-25 % higher: scale with --price-multiplier and
check the AWS pricing pages before relying on a figure.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

HOURS_PER_MONTH = 730.0
METERING_UNIT_KB = 32.0


@dataclass(frozen=True, slots=True)
class Prices:
    fargate_vcpu_hour: float = 0.04048
    fargate_gb_hour: float = 0.004445
    cache_node_hour: float = 0.0128  # cache.t4g.micro, Valkey (20 % below Redis OSS)
    nat_hour: float = 0.045
    nat_gb: float = 0.045
    data_out_gb: float = 0.09
    ws_million_messages: float = 1.00  # 32 KB units
    ws_million_connection_minutes: float = 0.25
    http_million_requests: float = 1.00
    lambda_million_requests: float = 0.20
    lambda_gb_second: float = 0.0000166667
    secret_month: float = 0.40
    alarm_metric_month: float = 0.10
    dashboard_month: float = 3.00
    custom_metric_month: float = 0.30

    def scaled(self, factor: float) -> Prices:
        return Prices(**{name: getattr(self, name) * factor for name in self.__slots__})


@dataclass(frozen=True, slots=True)
class Traffic:
    trading_days: int = 21
    viewer_hours_per_day: float = 6.5
    streamer_hours_per_day: float = 6.75  # the schedule: 09:00-15:45 IST
    window_ms: float = 250.0
    post_budget_per_second: float = 5000.0
    messages_per_client_per_second: float | None = None  # None: one per window (upper bound)
    message_kb: float = 2.0
    pings_per_client_hour: float = 12.0  # under API Gateway's 10-minute idle limit
    reconnect_minutes: float = 110.0  # before API Gateway's 2-hour limit
    http_requests_per_viewer_hour: float = 2.0  # page load, token, health
    shards: int = 16
    fanout_memory_gb: float = 1.0
    fanout_workers: int = 32
    fanout_round_trip_ms: float = 10.0
    fanout_overhead_ms: float = 30.0
    handler_memory_gb: float = 0.5
    handler_ms: float = 20.0
    streamer_vcpu: float = 0.5
    streamer_memory_gb: float = 1.0
    feed_gb_per_hour: float = 0.2
    cache_nodes: int = 1
    nat_gateways: int = 1
    secrets: int = 4
    alarm_metrics: int = 12  # 7 alarms; the two metric-math alarms count each metric
    custom_metrics: int = 10  # EMF: streamer, bridge, API, fan-out

    def window_seconds(self, viewers: int) -> float:
        """The window the bridge chooses: the default, or wider to stay under the budget."""
        return max(self.window_ms / 1000.0, viewers / self.post_budget_per_second)

    def rate(self, viewers: int) -> float:
        """Messages per client per second."""
        if self.messages_per_client_per_second is not None:
            return self.messages_per_client_per_second
        return 1.0 / self.window_seconds(viewers)


@dataclass(frozen=True, slots=True)
class Line:
    component: str
    usd: float
    basis: str


@dataclass(frozen=True, slots=True)
class Estimate:
    viewers: int
    lines: list[Line] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(line.usd for line in self.lines)


def estimate(viewers: int, traffic: Traffic, prices: Prices) -> Estimate:
    t, p = traffic, prices
    viewer_seconds = viewers * t.viewer_hours_per_day * 3600 * t.trading_days
    viewer_hours = viewer_seconds / 3600
    session_seconds = t.viewer_hours_per_day * 3600 * t.trading_days
    rate = t.rate(viewers)
    window = t.window_seconds(viewers)

    out_messages = viewers * rate * session_seconds
    units_per_message = max(1, math.ceil(t.message_kb / METERING_UNIT_KB))
    connects_per_day = math.ceil(t.viewer_hours_per_day * 60 / t.reconnect_minutes)
    connects = viewers * t.trading_days * connects_per_day
    in_messages = viewer_hours * t.pings_per_client_hour + connects  # pings + one subscribe each
    ws_messages = out_messages * units_per_message + in_messages
    connection_minutes = viewer_seconds / 60
    out_gb = out_messages * t.message_kb / 1024 / 1024

    # Fan-out: one invocation per shard that has connections, per window.
    active_shards = min(t.shards, viewers)
    windows = session_seconds / window
    fanout_invocations = active_shards * windows
    posts_per_invocation = out_messages / fanout_invocations if fanout_invocations else 0.0
    fanout_seconds = (
        t.fanout_overhead_ms
        + math.ceil(posts_per_invocation / t.fanout_workers) * t.fanout_round_trip_ms
    ) / 1000
    handler_invocations = 2 * connects + in_messages  # connect + authorize, then messages
    http_requests = viewer_hours * t.http_requests_per_viewer_hour
    lambda_requests = fanout_invocations + handler_invocations + http_requests
    lambda_gb_seconds = (
        fanout_invocations * fanout_seconds * t.fanout_memory_gb
        + (handler_invocations + http_requests) * t.handler_ms / 1000 * t.handler_memory_gb
    )

    streamer_hours = t.streamer_hours_per_day * t.trading_days
    lines = [
        Line(
            "API Gateway WebSocket messages",
            ws_messages / 1e6 * p.ws_million_messages,
            f"{ws_messages / 1e6:,.1f} M ({rate:.2f}/client/s, window {window * 1000:.0f} ms)",
        ),
        Line(
            "API Gateway connection-minutes",
            connection_minutes / 1e6 * p.ws_million_connection_minutes,
            f"{connection_minutes / 1e6:,.2f} M min",
        ),
        Line(
            "Lambda (fan-out, WebSocket, API)",
            lambda_requests / 1e6 * p.lambda_million_requests
            + lambda_gb_seconds * p.lambda_gb_second,
            f"{lambda_requests / 1e6:,.1f} M req, {lambda_gb_seconds / 1e3:,.0f} k GB-s",
        ),
        Line(
            "HTTP API requests",
            http_requests / 1e6 * p.http_million_requests,
            f"{http_requests / 1e6:,.2f} M req",
        ),
        Line(
            "ECS Fargate (streamer + bridge)",
            streamer_hours
            * (t.streamer_vcpu * p.fargate_vcpu_hour + t.streamer_memory_gb * p.fargate_gb_hour),
            f"{streamer_hours:,.0f} h x {t.streamer_vcpu} vCPU / {t.streamer_memory_gb} GB",
        ),
        Line(
            "ElastiCache (always on)",
            t.cache_nodes * HOURS_PER_MONTH * p.cache_node_hour,
            f"{t.cache_nodes} node x {HOURS_PER_MONTH:.0f} h",
        ),
        Line(
            "NAT gateway (hours + data)",
            t.nat_gateways * HOURS_PER_MONTH * p.nat_hour
            + (out_gb + streamer_hours * t.feed_gb_per_hour) * p.nat_gb,
            f"{t.nat_gateways} x {HOURS_PER_MONTH:.0f} h, "
            f"{out_gb + streamer_hours * t.feed_gb_per_hour:,.0f} GB",
        ),
        Line(
            "Data transfer out (messages)",
            out_gb * p.data_out_gb,
            f"{out_gb:,.0f} GB at {t.message_kb:g} KB/message",
        ),
        Line(
            "Secrets, alarms, dashboard, metrics",
            t.secrets * p.secret_month
            + t.alarm_metrics * p.alarm_metric_month
            + p.dashboard_month
            + t.custom_metrics * p.custom_metric_month,
            f"{t.secrets} secrets, {t.alarm_metrics} alarm metrics",
        ),
    ]
    return Estimate(viewers, lines)


def render(estimates: Sequence[Estimate], traffic: Traffic) -> str:
    header = "| component | " + " | ".join(f"{e.viewers:,} viewers" for e in estimates) + " |"
    rule = "|---|" + "---:|" * len(estimates)
    rows = [header, rule]
    for index, line in enumerate(estimates[0].lines):
        cells = [
            f"${e.lines[index].usd:,.2f} <br>{e.lines[index].basis}" for e in estimates
        ]
        rows.append(f"| {line.component} | " + " | ".join(cells) + " |")
    rows.append("| **total per month** | " + " | ".join(f"**${e.total:,.2f}**" for e in estimates)
                + " |")  # fmt: skip
    assumptions = (
        f"{traffic.trading_days} trading days x {traffic.viewer_hours_per_day:g} h of viewing; "
        f"streamer {traffic.streamer_hours_per_day:g} h/day; default window "
        f"{traffic.window_ms:g} ms, PostToConnection budget "
        f"{traffic.post_budget_per_second:,.0f}/s; {traffic.message_kb:g} KB per message "
        f"(metered in 32 KB units); us-east-1 list prices, no free tier."
    )
    return "\n".join(rows) + "\n\n" + assumptions + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    defaults = Traffic()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--viewers", type=int, nargs="+", default=[100, 5000])
    parser.add_argument("--messages-per-client-per-second", type=float, default=None,
                        help="measured by the fan-out benchmark; default: one per window")
    parser.add_argument("--window-ms", type=float, default=defaults.window_ms)
    parser.add_argument("--post-budget", type=float, default=defaults.post_budget_per_second)
    parser.add_argument("--message-kb", type=float, default=defaults.message_kb)
    parser.add_argument("--trading-days", type=int, default=defaults.trading_days)
    parser.add_argument("--hours", type=float, default=defaults.viewer_hours_per_day,
                        help="viewing hours per trading day")
    parser.add_argument("--shards", type=int, default=defaults.shards)
    parser.add_argument("--price-multiplier", type=float, default=1.0,
                        help="scale every us-east-1 price (e.g. 1.15 for ap-south-1)")
    args = parser.parse_args(argv)
    traffic = replace(
        defaults,
        messages_per_client_per_second=args.messages_per_client_per_second,
        window_ms=args.window_ms,
        post_budget_per_second=args.post_budget,
        message_kb=args.message_kb,
        trading_days=args.trading_days,
        viewer_hours_per_day=args.hours,
        shards=args.shards,
    )
    prices = Prices().scaled(args.price_multiplier)
    print(render([estimate(v, traffic, prices) for v in args.viewers], traffic), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
