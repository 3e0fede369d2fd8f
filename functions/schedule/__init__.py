"""The market-hours scheduler Lambda (`functions.schedule.handler`).

EventBridge Scheduler invokes it Monday-Friday in Asia/Kolkata with {"action": "start"} before
the open and {"action": "stop"} after the close; it skips NSE holidays (calendar shipped in
`nse_holidays.json`) and starts/stops through `functions.streams`, like the HTTP API.
"""

from __future__ import annotations

from typing import Any


def handler(event: Any, context: Any) -> dict[str, Any]:
    from functions.schedule.wiring import handle

    return handle(event)
