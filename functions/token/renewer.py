"""One renewal run: read the secret, decide, renew with Dhan, write a new secret version, tell.

`TokenRenewer.run()`:
1. reads the Dhan secret (AWSCURRENT, never cached: a concurrent run may just have replaced
   it) and the token's expiry from the token itself (`core.dhan_token`);
2. asks `RenewalPolicy` whether to renew now; skipped and expired runs only report;
3. to renew, takes `dhan:token:renew_lock` (SET NX PX, released only by its owner) and
   re-reads the secret: when its version moved, another run renewed, and this one stops;
4. calls `GET {DHAN_API_BASE_URL}/RenewToken` with headers `access-token` and `dhanClientId`
   (GET: Dhan answers POST with 400 DH-905); network errors, 429 and 5xx are retried with
   backoff, other answers are final;
5. writes the new token as a new secret version (`PutSecretValue`, the document's other fields
   kept; Secrets Manager moves the old version to AWSPREVIOUS). One ClientRequestToken per
   renewal makes a retried put idempotent; the put is retried harder than anything else,
   because Dhan has already killed the old token;
6. publishes `token_renewed` on the control channel (the streamer switches at once) and
   writes `dhan:token:status` (read by health).

Every run prints one EMF line, `TokenSecondsLeft` (dimension service=token), which the alarm
watches (none while the secret still holds CDK's placeholder: that alarm then says no token is
in place). Outcomes: unconfigured, renewed, skipped, expired (returned, not raised: retrying
cannot help, the alarm and health say it), locked (another run holds the lock). A renewal
that fails is recorded as "failed" (with the reason) and raises `RenewalError`, so that the
invocation counts as an error and Lambda retries it.

No token is ever logged or returned: messages name versions and expiries only, and Dhan's
error text is cut short and scrubbed of the token.
"""

from __future__ import annotations

import json
import logging
import secrets
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, TypedDict

from redis.exceptions import AuthenticationError, RedisError

from core import names
from core.backoff import Backoff
from core.config import Secret
from core.dhan_token import token_expiry
from core.emf import emf_line
from core.errors import SecretError
from core.messages import IST
from core.redis_client import RELEASE_IF_OWNER
from core.secrets import (
    DHAN_TOKEN_FIELDS,
    PLACEHOLDER_CLIENT_ID,
    DhanCredentials,
    parse_dhan_secret,
)
from functions.errors import FunctionsError
from functions.token.policy import RenewalPolicy

log = logging.getLogger(__name__)

METRIC = "TokenSecondsLeft"
SERVICE = "token"
LOCK_MS = 60_000
TOKEN_LIFETIME_SECONDS = 86400.0  # Dhan's access tokens live 24 h
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

Result = Literal["renewed", "skipped", "expired", "locked", "failed", "unconfigured"]


class RenewalError(FunctionsError):
    """A renewal that did not complete (Dhan refused, the secret could not be written...)."""


class SecretStore(Protocol):
    """The two Secrets Manager calls used (a boto3 `secretsmanager` client)."""

    def get_secret_value(self, *, SecretId: str) -> Mapping[str, Any]: ...  # noqa: N803

    def put_secret_value(self, *, SecretId: str, SecretString: str,  # noqa: N803
                         ClientRequestToken: str) -> Mapping[str, Any]: ...  # noqa: N803


class HttpResponse(Protocol):
    status_code: int

    def json(self) -> Any: ...


class HttpClient(Protocol):
    """`httpx.Client.get`'s shape."""

    def get(self, url: str, *, headers: Mapping[str, str], timeout: float) -> HttpResponse: ...


class Outcome(TypedDict):
    result: Result
    seconds_left: float | None
    expires_at: float | None
    version_id: str


@dataclass(frozen=True, slots=True)
class _Current:
    credentials: DhanCredentials
    document: dict[str, Any]
    version_id: str
    expires_at: float | None  # the token's `exp`, else what its renewal was told


def emf_to_stdout(line: bytes) -> None:
    sys.stdout.write(line.decode())
    sys.stdout.flush()


class TokenRenewer:
    def __init__(
        self,
        *,
        secrets_client: SecretStore,
        secret_arn: str,
        http: HttpClient,
        api_base_url: str,
        redis: Any,
        policy: RenewalPolicy | None = None,
        fallback_client_id: str = "",
        timeout: float = 10.0,
        attempts: int = 3,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        emit: Callable[[bytes], None] = emf_to_stdout,
    ) -> None:
        self._secrets = secrets_client
        self._arn = secret_arn
        self._http = http
        self._url = api_base_url.rstrip("/") + "/RenewToken"
        self._redis = redis
        self._policy = policy or RenewalPolicy()
        self._fallback_client_id = fallback_client_id
        self._timeout = timeout
        self._attempts = attempts
        self._backoff = backoff or Backoff(base=1.0, cap=8.0, min_fraction=0.5)
        self._clock = clock
        self._sleep = sleep
        self._emit = emit

    # -- the run -------------------------------------------------------------------------------
    def run(self) -> Outcome:
        current = self._read()
        now = self._clock()
        if current.credentials.client_id == PLACEHOLDER_CLIENT_ID:
            log.warning("the Dhan secret still holds the deploy-time placeholder: put a real "
                        "client id and token in it (README: renewing the DhanHQ token by hand)")
            self._write_status({"result": "unconfigured", "seconds_left": None,
                                "expires_at": None, "version_id": current.version_id},
                               now, None, "no DhanHQ token configured")
            return {"result": "unconfigured", "seconds_left": None, "expires_at": None,
                    "version_id": current.version_id}
        left = None if current.expires_at is None else current.expires_at - now
        decision = self._policy.decide(left, datetime.fromtimestamp(now, UTC))
        if decision == "expired":
            log.error("the DhanHQ token (secret version %s) expired %.0f s ago and cannot be "
                      "renewed: put a new one in the secret (README: renewing by hand)",
                      current.version_id, -(left or 0.0))
            return self._report("expired", current, now)
        if decision == "skip":
            return self._report("skipped", current, now)
        owner = secrets.token_hex(8)
        if not self._redis.set(names.TOKEN_RENEW_LOCK_KEY, owner, nx=True, px=LOCK_MS):
            log.info("another renewal holds the lock; leaving it to that one")
            return self._report("locked", current, now)
        try:
            return self._renew_locked(current)
        except RenewalError as exc:
            log.error("DhanHQ token renewal failed: %s", exc)
            self._report("failed", current, self._clock(), error=str(exc))
            raise
        finally:
            self._release(owner)

    def _renew_locked(self, seen: _Current) -> Outcome:
        current = self._read()
        if current.version_id != seen.version_id:
            log.info("the secret moved to version %s meanwhile: renewed by another run",
                     current.version_id)
            return self._report("skipped", current, self._clock())
        old = current.credentials
        token, told = self._call_dhan(old)
        if token == old.access_token.value:
            raise RenewalError("Dhan answered RenewToken with the same token")
        version_id = self._put(current.document, token)
        now = self._clock()
        # A token that is no JWT has no `exp`: then Dhan's `expiryTime`, else its 24 h.
        expires_at = token_expiry(token) or told or now + TOKEN_LIFETIME_SECONDS
        renewed = _Current(DhanCredentials(old.client_id, Secret(token)),
                           current.document, version_id, expires_at)
        self._publish(version_id)
        left = expires_at - now
        log.info("DhanHQ token renewed: secret version %s, expires in %.1f h", version_id,
                 left / 3600)
        return self._report("renewed", renewed, now, renewed_at=now)

    # -- Secrets Manager ---------------------------------------------------------------------
    def _read(self) -> _Current:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            answer = self._secrets.get_secret_value(SecretId=self._arn)
        except (ClientError, BotoCoreError) as exc:
            raise RenewalError(f"cannot read secret {self._arn}: {type(exc).__name__}") from exc
        text = answer.get("SecretString")
        if not isinstance(text, str):
            raise RenewalError(f"secret {self._arn} has no SecretString")
        try:
            credentials = parse_dhan_secret(text, fallback_client_id=self._fallback_client_id)
        except SecretError as exc:  # names fields, never the token
            raise RenewalError(f"secret {self._arn}: {exc}") from None
        version_id = str(answer.get("VersionId", ""))
        expires_at = token_expiry(credentials.access_token.value)
        if expires_at is None:
            expires_at = self._remembered_expiry(version_id)
        return _Current(credentials, json.loads(text), version_id, expires_at)

    def _remembered_expiry(self, version_id: str) -> float | None:
        """What the renewal that wrote this version was told (a token that is not a JWT)."""
        try:
            status = _loads(self._redis.get(names.TOKEN_STATUS_KEY))
        except RedisError:
            return None
        expires_at = status.get("expires_at")
        if status.get("version_id") != version_id or not isinstance(expires_at, int | float):
            return None
        return float(expires_at)

    def _put(self, document: dict[str, Any], token: str) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        field = next((f for f in DHAN_TOKEN_FIELDS
                      if isinstance(document.get(f), str) and document[f].strip()),
                     DHAN_TOKEN_FIELDS[0])
        text = json.dumps({**document, field: token})
        request_token = secrets.token_hex(16)  # the same for every retry: one new version
        backoff = Backoff(base=0.5, cap=8.0, min_fraction=0.5)
        for attempt in range(1, 6):
            try:
                answer = self._secrets.put_secret_value(
                    SecretId=self._arn, SecretString=text, ClientRequestToken=request_token)
                return str(answer.get("VersionId", request_token))
            except (ClientError, BotoCoreError) as exc:
                error = f"{type(exc).__name__}: {_client_error_code(exc)}"
                log.error("writing the renewed token to %s failed (attempt %d): %s",
                          self._arn, attempt, error)
                if attempt < 5:
                    self._sleep(backoff.next_delay())
        raise RenewalError(f"Dhan renewed the token but secret {self._arn} could not be "
                           "written; the old token is dead: put a new one in by hand")

    # -- Dhan ------------------------------------------------------------------------------
    def _call_dhan(self, credentials: DhanCredentials) -> tuple[str, float | None]:
        """The new token and the expiry Dhan states for it (`expiryTime`), if any."""
        secret = credentials.access_token.value
        # Dhan's RenewToken documents `dhanClientId`; its other REST calls say `client-id`.
        headers = {"access-token": secret, "dhanClientId": credentials.client_id,
                   "client-id": credentials.client_id, "Accept": "application/json"}
        problem = ""
        for attempt in range(1, self._attempts + 1):
            try:
                response = self._http.get(self._url, headers=headers, timeout=self._timeout)
            except Exception as exc:  # noqa: BLE001 - any transport error: retried
                problem = f"{type(exc).__name__}"
            else:
                body = _json(response)
                if response.status_code == 200:
                    token = _token_of(body)
                    if token:
                        return token, _expiry_time(body)
                    raise RenewalError("Dhan's RenewToken answer holds no token")
                problem = f"HTTP {response.status_code} {_describe(body, secret)}"
                if response.status_code not in _RETRY_STATUSES:
                    raise RenewalError(f"Dhan refused RenewToken: {problem}")
            log.warning("RenewToken attempt %d failed: %s", attempt, problem)
            if attempt < self._attempts:
                self._sleep(self._backoff.next_delay())
        raise RenewalError(f"RenewToken failed {self._attempts} times; last: {problem}")

    # -- Redis and metrics -----------------------------------------------------------------
    def _release(self, owner: str) -> None:
        try:
            self._redis.eval(RELEASE_IF_OWNER, 1, names.TOKEN_RENEW_LOCK_KEY, owner)
        except Exception as exc:  # noqa: BLE001 - the lock expires by itself
            log.warning("renewal lock not released (%s); it expires in %d s",
                        type(exc).__name__, LOCK_MS // 1000)

    def _publish(self, version_id: str) -> None:
        message = json.dumps({"type": names.TOKEN_RENEWED, "version_id": version_id})
        try:
            self._redis.publish(names.CONTROL_CHANNEL, message)
        except Exception as exc:  # noqa: BLE001 - the streamer's poll finds the version
            log.warning("token_renewed not published (%s); the streamer's poll will see the "
                        "new version", type(exc).__name__)

    def _report(self, result: Result, current: _Current, now: float, *,
                renewed_at: float | None = None, error: str = "") -> Outcome:
        expires_at = current.expires_at
        left = None if expires_at is None else expires_at - now
        outcome: Outcome = {"result": result, "seconds_left": left, "expires_at": expires_at,
                            "version_id": current.version_id}
        self._write_status(outcome, now, renewed_at, error)
        if left is not None:
            self._emit(emf_line({METRIC: (max(0.0, left), "Seconds")}, service=SERVICE,
                                timestamp_ms=int(now * 1000),
                                properties={"result": result,
                                            "version_id": current.version_id}))
        log.info("token renewal run: %s (secret version %s)", result, current.version_id)
        return outcome

    def _write_status(self, outcome: Outcome, now: float, renewed_at: float | None,
                      error: str) -> None:
        try:
            previous = _loads(self._redis.get(names.TOKEN_STATUS_KEY))
            status = {**outcome, "checked_at": now, "error": error or None,
                      "renewed_at": renewed_at or previous.get("renewed_at")}
            self._redis.set(names.TOKEN_STATUS_KEY, json.dumps(status),
                            ex=names.TOKEN_STATUS_TTL_SECONDS)
        except AuthenticationError:
            raise  # a misconfigured deployment: it will not heal, and no renewal could run
        except RedisError as exc:  # health then says the status is unknown
            log.warning("token status not written (%s)", type(exc).__name__)


def _json(response: HttpResponse) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _loads(raw: Any) -> dict[str, Any]:
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _token_of(body: Any) -> str:
    """Dhan documents `accessToken`; community code reads `token`; some wrap it in `data`."""
    for holder in (body, body.get("data") if isinstance(body, dict) else None):
        if isinstance(holder, dict):
            for field in ("accessToken", "token", "access_token"):
                value = holder.get(field)
                if isinstance(value, str) and value.strip():
                    return value.strip()
    return ""


def _expiry_time(body: Any) -> float | None:
    """`expiryTime` of a RenewToken answer (ISO; IST when it names no zone)."""
    holders = (body, body.get("data") if isinstance(body, dict) else None)
    for holder in holders:
        value = holder.get("expiryTime") if isinstance(holder, dict) else None
        if isinstance(value, str):
            try:
                stamp = datetime.fromisoformat(value.strip())
            except ValueError:
                return None
            return (stamp if stamp.tzinfo else stamp.replace(tzinfo=IST)).timestamp()
    return None


def _describe(body: Any, secret: str) -> str:
    if isinstance(body, dict):
        text = " ".join(str(body.get(k, "")) for k in ("errorCode", "errorMessage") if k in body)
    else:
        text = ""
    return text.replace(secret, "***")[:200] if secret else text[:200]


def _client_error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", "error"))
    return "unreachable"
