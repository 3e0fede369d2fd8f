"""What a DhanHQ access token says about itself: when it expires.

Dhan's access tokens are JWTs whose payload carries `exp` (epoch seconds). The expiry is read
without verifying the signature (only Dhan could): it decides *when* to renew, never whether a
token is trusted. A token that is not a JWT, or whose payload has no numeric `exp`, has an
unknown expiry (None); callers decide what unknown means for them.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any


def token_claims(token: str) -> dict[str, Any] | None:
    """The payload of a JWT-shaped token (unverified), or None when `token` is not one."""
    parts = token.strip().split(".")
    if len(parts) != 3 or not parts[1]:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload.encode("ascii")))
    except (ValueError, UnicodeError, binascii.Error):
        return None
    return claims if isinstance(claims, dict) else None


def token_expiry(token: str) -> float | None:
    """The `exp` claim of a JWT-shaped token, in epoch seconds; None when there is none."""
    claims = token_claims(token)
    exp = claims.get("exp") if claims else None
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    return float(exp)


def seconds_left(token: str, now: float) -> float | None:
    """Seconds until the token expires (negative once it has); None when unknown."""
    expiry = token_expiry(token)
    return None if expiry is None else expiry - now
