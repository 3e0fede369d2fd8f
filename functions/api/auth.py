"""The admin key guarding start/stop: `Authorization: Bearer <key>`, compared in constant time.

No key configured (neither ADMIN_API_KEY nor ADMIN_SECRET_ARN) means the routes are open, as in
the local run. A configured key that cannot be used fails closed (503), never open: an ARN that
cannot be read, a secret whose value is blank, or ADMIN_API_KEY / ADMIN_SECRET_ARN set to
blanks (`functions.secrets`).
"""

from __future__ import annotations

import hmac

from functions.api.deps import ApiDeps
from functions.api.observability import logger
from functions.errors import SecretError, ServiceUnavailable, Unauthorized
from functions.secrets import resolve_admin_key


def require_admin(deps: ApiDeps, presented: str | None) -> None:
    """Pass, or raise Unauthorized (401) / ServiceUnavailable (503); `presented` is the bearer
    token of the request (None when the header is missing or not a bearer token)."""
    try:
        expected = resolve_admin_key(deps.settings, secrets=deps.secrets)
    except SecretError as exc:
        logger.warning("admin key unusable", extra={"reason": str(exc)})
        raise ServiceUnavailable(
            "the admin key cannot be checked right now (secret unavailable); retry shortly",
            code="secret_unavailable",
        ) from exc
    if not expected:
        return
    if not presented or not presented.strip():
        raise Unauthorized("this route needs an 'Authorization: Bearer <admin key>' header")
    if not hmac.compare_digest(presented.strip().encode(), expected.value.encode()):
        raise Unauthorized("the admin key is not valid")
