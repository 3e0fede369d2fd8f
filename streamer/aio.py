"""A guard for long-running loops against lost cancellations.

redis-py can turn a cancellation that lands mid-command into its own error (the task stays
marked as cancelling, but no CancelledError reaches our code), and a loop that retries Redis
errors would then run on forever. Loops call `raise_if_cancelled()` once per turn.
"""

from __future__ import annotations

import asyncio


def raise_if_cancelled() -> None:
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
