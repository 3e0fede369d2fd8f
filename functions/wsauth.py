"""Signed, expiring WebSocket connect tokens (the `$connect` authorizer checks them).

Format: `base64url(claims JSON) "." base64url(HMAC-SHA256(secret, base64url(claims JSON)))`,
no padding. Claims: `sub` (who), `iat`, `exp` (epoch seconds). Browsers cannot set headers on a
WebSocket, so the token travels as `?token=...`; a short expiry keeps a leaked URL from being
useful for long. The page (or `ltp-local`) gets one from `mint_token`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any

import orjson

DEFAULT_TTL_SECONDS = 3600
# Clocks of the minting host and the authorizer may disagree by a little.
CLOCK_SKEW_SECONDS = 30
MAX_TOKEN_LENGTH = 2048


class TokenError(Exception):
    """The token is missing, malformed, forged or expired; `reason` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Claims:
    subject: str
    issued_at: int
    expires_at: int


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenError("malformed token") from exc


def _sign(secret: str, body: str) -> str:
    return _b64encode(hmac.new(secret.encode(), body.encode("ascii"), hashlib.sha256).digest())


def mint_token(
    secret: str,
    *,
    subject: str = "browser",
    ttl_seconds: int = DEFAULT_TTL_SECONDS,
    now: float | None = None,
) -> str:
    if not secret:
        raise ValueError("a token needs a non-empty secret")
    issued = int(time.time() if now is None else now)
    body = _b64encode(orjson.dumps({"sub": subject, "iat": issued, "exp": issued + ttl_seconds}))
    return f"{body}.{_sign(secret, body)}"


def verify_token(token: str | None, secret: str, *, now: float | None = None) -> Claims:
    """Return the token's claims, or raise TokenError. Constant-time signature comparison."""
    if not token:
        raise TokenError("missing token")
    if len(token) > MAX_TOKEN_LENGTH or token.count(".") != 1:
        raise TokenError("malformed token")
    body, signature = token.split(".")
    try:
        body.encode("ascii")
        signature.encode("ascii")
    except UnicodeEncodeError:
        raise TokenError("malformed token") from None
    if not hmac.compare_digest(_sign(secret, body), signature):
        raise TokenError("bad signature")
    try:
        claims: Any = orjson.loads(_b64decode(body))
    except orjson.JSONDecodeError as exc:
        raise TokenError("malformed token") from exc
    if not isinstance(claims, dict):
        raise TokenError("malformed token")
    sub, iat, exp = claims.get("sub"), claims.get("iat"), claims.get("exp")
    if not isinstance(sub, str) or not isinstance(iat, int) or not isinstance(exp, int):
        raise TokenError("malformed token")
    current = time.time() if now is None else now
    if exp + CLOCK_SKEW_SECONDS < current:
        raise TokenError("token expired")
    if iat - CLOCK_SKEW_SECONDS > current:
        raise TokenError("token issued in the future")
    return Claims(subject=sub, issued_at=iat, expires_at=exp)
