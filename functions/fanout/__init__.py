"""Lambda entry point of the fan-out (CDK handler string `functions.fanout.handler`).

Invoked asynchronously by the relay bridge once per active shard and window with
`{"shard": N, "window": seq, "published_at": epoch, "updates": [...]}` (under 1 MB).
Emits EMF metrics (Powertools) for posts, bytes, gone, throttled, deferred, unsent and
duration. Lambda's context bounds the posting: what the remaining time cannot post is deferred
to each connection's next message (`functions.fanout.runner`).
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

from functions.fanout.runner import Fanout, FanoutResult

if TYPE_CHECKING:
    from functions.fanout.wiring import Emit


@cache
def _wired() -> tuple[Fanout, Emit]:
    from core.runtime import tune_gc
    from functions.fanout.wiring import build

    wired = build()
    tune_gc()  # a warm container lives for many windows; see core.runtime
    return wired


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    fanout, emit = _wired()
    return emit(fanout.run(event, context), event, context)


__all__ = ["Fanout", "FanoutResult", "handler"]
