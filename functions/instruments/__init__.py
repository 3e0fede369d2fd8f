"""The instrument-master load Lambda (`functions.instruments.handler`).

EventBridge Scheduler invokes it Monday-Friday before the session (Asia/Kolkata) and a
CloudFormation trigger once per deploy (infra/instruments.py); any event means "load now".
It streams Dhan's scrip master (INSTRUMENT_MASTER_URL) into the `instruments:*` hashes,
keeping only INSTRUMENT_SEGMENTS (see `functions.instruments.settings` for why not all),
retries a failed download within the invocation's time, and returns the summary
`{rows, skipped, source, seconds, attempts, segments}`; a load that fails raises, the previous
master stays in place, and the invocation counts as an error.
"""

from __future__ import annotations

from typing import Any


def handler(event: Any, context: Any = None) -> dict[str, Any]:
    from functions.instruments.wiring import handle

    return dict(handle(event, context))
