"""The DhanHQ token renewal Lambda (`functions.token.handler`).

EventBridge Scheduler invokes it every 30 minutes (infra/token_renewal.py). Each run reads the
token's expiry from the token in DHAN_SECRET_ARN and renews it through Dhan's RenewToken when
`functions.token.policy` says so: in the quiet hours once less than 16 h is left, at any hour
once less than 4 h is. See `functions.token.renewer` for the steps and their guarantees.
Returns `{result, seconds_left, expires_at, version_id}`, never the token.
"""

from __future__ import annotations

from typing import Any


def handler(event: Any, context: Any = None) -> dict[str, Any]:
    from functions.token.wiring import handle

    return dict(handle(event, context))
