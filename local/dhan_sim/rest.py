"""A stand-in for DhanHQ's market-quote REST API (`POST /v2/marketfeed/ltp|ohlc|quote`) and
its token renewal (`GET /v2/RenewToken`).

A real HTTP server on loopback (stdlib `ThreadingHTTPServer` in a background thread) that the
`dhanhq` SDK's REST `MarketFeed` can call once `DhanHTTP.base_url` points at `base_url`. It
behaves like Dhan where Dhan documents it:

- headers `access-token` and `client-id` must match, else 401 `DH-901`; the token is judged by
  a `tokens.TokenAuthority` (`tokens=`, shared with a `FeedSimulator` so both see renewals;
  by default a private one holding `access_token`), so a renewed-away or expired JWT is 401;
- `GET /v2/RenewToken` with headers `access-token` and `dhanClientId` renews the active token:
  `{"dhanClientId": ..., "accessToken": <new JWT>, "expiryTime": <ISO, IST>}`; the old token is
  dead at once (feed connections on it get 807). An expired, dead or unknown token, or another
  client id: 401 `DH-901`. POST to it: 400 `DH-905` (as Dhan answers, DhanHQ-py #108);
- body `{"NSE_EQ": [11536], ...}` with integer ids (the SDK adds `"dhanClientId"`, ignored);
  an unknown segment, a non-integer id or more than 1,000 instruments in total: 400 `DH-905`;
- more than one call per second per client id: 429 `DH-904` (the window slides from the last
  accepted call; `enforce_rate_limit=False` turns it off);
- success: `{"data": {"NSE_EQ": {"11536": {"last_price": 4520.0}}}, "status": "success"}`;
- errors: `{"errorType": ..., "errorCode": "DH-9xx", "errorMessage": ...}`.

Order of checks for one call: record it, sleep `delay`, an injected failure (`fail_next`),
auth, rate limit, body (RenewToken has no rate limit here). The decisions are
`RestStandIn.answer` (POST) and `answer_get`, plain methods (no sockets); the HTTP handler
only moves bytes.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from core.instruments import SEGMENT_CODES
from local.dhan_sim.prices import Key, PriceBook
from local.dhan_sim.tokens import Refused, TokenAuthority

log = logging.getLogger(__name__)

MAX_INSTRUMENTS = 1000
ENDPOINTS = ("/v2/marketfeed/ltp", "/v2/marketfeed/ohlc", "/v2/marketfeed/quote")
RENEW_PATH = "/v2/RenewToken"
DEFAULT_CLIENT_ID, DEFAULT_TOKEN = "1000000001", "sim-token"

AUTH_ERROR = ("Invalid_Authentication", "DH-901",
              "Client ID or user generated access token is invalid or expired.")  # fmt: skip
RATE_ERROR = ("Rate_Limit", "DH-904",
              "Too many requests on server from single user breaching rate limits. "
              "Try throttling API calls.")  # fmt: skip
INPUT_ERROR_TYPE, INPUT_ERROR_CODE = "Input_Exception", "DH-905"

Answer = tuple[int, dict[str, Any]]


def error_body(error_type: str, code: str, message: str) -> dict[str, Any]:
    return {"errorType": error_type, "errorCode": code, "errorMessage": message}


def _input_error(message: str) -> Answer:
    return 400, error_body(INPUT_ERROR_TYPE, INPUT_ERROR_CODE, message)


def _route(path: str) -> str:
    return urlsplit(path).path.rstrip("/")


def _authority(
    tokens: TokenAuthority | None, client_id: str | None, access_token: str | None
) -> TokenAuthority:
    """The given authority (checked against explicit credentials) or a private one."""
    if tokens is None:
        return TokenAuthority(DEFAULT_CLIENT_ID if client_id is None else client_id,
                              DEFAULT_TOKEN if access_token is None else access_token)  # fmt: skip
    if client_id is not None and client_id != tokens.client_id:
        raise ValueError(f"client_id {client_id!r} is not the authority's {tokens.client_id!r}")
    if access_token is not None and access_token != tokens.current:
        raise ValueError("access_token is not the authority's current token; pass one or the "
                         "other")  # fmt: skip
    return tokens


def parse_instruments(body: object) -> dict[str, list[int]] | str:
    """The requested ids per segment, or a message saying what is wrong with the body."""
    if not isinstance(body, dict):
        return "request body must be a JSON object like {\"NSE_EQ\": [11536]}"
    wanted: dict[str, list[int]] = {}
    total = 0
    for segment, ids in body.items():
        if segment == "dhanClientId":
            continue
        if segment not in SEGMENT_CODES:
            return f"invalid exchange segment {segment!r}"
        if not isinstance(ids, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids
        ):
            return f"security ids of {segment} must be a list of integers"
        wanted[segment] = ids
        total += len(ids)
    if total == 0:
        return "no instruments requested"
    if total > MAX_INSTRUMENTS:
        return f"at most {MAX_INSTRUMENTS} instruments per request ({total} given)"
    return wanted


class RestStandIn:
    """Dhan's market-quote REST endpoints on 127.0.0.1; a context manager."""

    def __init__(
        self,
        prices: PriceBook | None = None,
        *,
        client_id: str | None = None,  # default: the authority's, else "1000000001"
        access_token: str | None = None,  # default: the authority's, else "sim-token"
        tokens: TokenAuthority | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        enforce_rate_limit: bool = True,
        rate_limit_interval: float = 1.0,
        unknown_ids_missing: bool = False,
        delay: float = 0.0,
    ) -> None:
        self.prices = prices if prices is not None else PriceBook()
        self.tokens = _authority(tokens, client_id, access_token)
        # Its own attribute, not the authority's: tests switch the account REST answers for.
        self.client_id = self.tokens.client_id
        self.host = host
        self.port = port
        self.enforce_rate_limit = enforce_rate_limit
        self.rate_limit_interval = rate_limit_interval
        self.unknown_ids_missing = unknown_ids_missing
        self.delay = delay
        self.calls: list[dict[str, Any]] = []
        self._failures: list[Answer] = []
        self._last_accepted: dict[str, float] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- test controls ---------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """What `DhanHTTP.base_url` should be set to (`http://127.0.0.1:PORT/v2`)."""
        return f"http://{self.host}:{self.port}/v2"

    @property
    def access_token(self) -> str:
        return self.tokens.current

    def set_price(self, segment: str, security_id: str | int, price: float) -> None:
        self.prices.set_price((segment, str(security_id)), price)

    def fail_next(
        self,
        n: int = 1,
        http_status: int = 429,
        error_code: str = "DH-904",
        error_type: str = "Rate_Limit",
        message: str = "Too many requests",
    ) -> None:
        """Answer the next `n` calls with this Dhan error body, whatever they ask."""
        with self._lock:
            self._failures.extend(
                [(http_status, error_body(error_type, error_code, message))] * n
            )

    # -- the decision ----------------------------------------------------------------------
    def answer(self, path: str, headers: dict[str, str], raw_body: bytes) -> Answer:
        """Status and JSON body for one POST (headers with lower-case names)."""
        injected = self._injected_failure()
        if injected is not None:
            return injected
        route = _route(path)
        if route == RENEW_PATH:
            return _input_error("RenewToken takes GET, not POST")
        if route not in ENDPOINTS:
            return 404, error_body("Not_Found", "DH-905", f"no such endpoint {path}")
        client_id = headers.get("client-id")
        if client_id != self.client_id or not self.tokens.is_active(
            headers.get("access-token") or ""
        ):
            return 401, error_body(*AUTH_ERROR)
        if not self._admit(client_id):
            return 429, error_body(*RATE_ERROR)
        try:
            body = json.loads(raw_body or b"null")
        except ValueError:
            return _input_error("request body is not valid JSON")
        wanted = parse_instruments(body)
        if isinstance(wanted, str):
            return _input_error(wanted)
        kind = route.rsplit("/", 1)[1]
        return 200, {"data": self._data(kind, wanted), "status": "success"}

    def answer_get(self, path: str, headers: dict[str, str]) -> Answer:
        """Status and JSON body for one GET (headers with lower-case names)."""
        injected = self._injected_failure()
        if injected is not None:
            return injected
        route = _route(path)
        if route == RENEW_PATH:
            return self._renew(headers)
        if route in ENDPOINTS:
            return 405, error_body(INPUT_ERROR_TYPE, INPUT_ERROR_CODE, "use POST")
        return 404, error_body("Not_Found", "DH-905", f"no such endpoint {path}")

    def _renew(self, headers: dict[str, str]) -> Answer:
        # Dhan's RenewToken names the client `dhanClientId`; the quote APIs say `client-id`.
        client_id = headers.get("dhanclientid") or headers.get("client-id") or ""
        result = self.tokens.renew(headers.get("access-token") or "", client_id)
        if isinstance(result, Refused):
            return 401, error_body(AUTH_ERROR[0], AUTH_ERROR[1], result.message)
        return 200, {"dhanClientId": result.client_id, "accessToken": result.token,
                     "expiryTime": result.expiry_time}  # fmt: skip

    def _injected_failure(self) -> Answer | None:
        with self._lock:
            return self._failures.pop(0) if self._failures else None

    def _admit(self, client_id: str) -> bool:
        now = time.monotonic()
        with self._lock:
            last = self._last_accepted.get(client_id)
            if self.enforce_rate_limit and last is not None:
                if now - last < self.rate_limit_interval:
                    return False
            self._last_accepted[client_id] = now
            return True

    def _data(self, kind: str, wanted: dict[str, list[int]]) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for segment, ids in wanted.items():
            answers: dict[str, Any] = {}
            for security_id in ids:
                key: Key = (segment, str(security_id))
                if self.unknown_ids_missing and key not in self.prices:
                    continue
                answers[str(security_id)] = self._instrument(kind, key)
            if answers:
                data[segment] = answers
        return data

    def _instrument(self, kind: str, key: Key) -> dict[str, Any]:
        state = self.prices.ensure(key)
        ltp = round(state.price, 2)
        if kind == "ltp":
            return {"last_price": ltp}
        ohlc = {"open": state.open, "close": state.prev_close, "high": state.high,
                "low": state.low}  # fmt: skip
        if kind == "ohlc":
            return {"last_price": ltp, "ohlc": ohlc}
        tick = self.prices.tick_size

        def side(sign: int) -> list[dict[str, Any]]:
            return [{"quantity": 100 * (i + 1), "orders": i + 1,
                     "price": round(ltp + sign * (i + 1) * tick, 2)} for i in range(5)]  # fmt: skip

        return {
            "average_price": state.avg_price, "buy_quantity": state.total_buy_quantity,
            "depth": {"buy": side(-1), "sell": side(1)}, "last_price": ltp,
            "last_quantity": state.ltq, "last_trade_time": time.strftime("%d/%m/%Y %H:%M:%S"),
            "lower_circuit_limit": round(state.prev_close * 0.8, 2),
            "upper_circuit_limit": round(state.prev_close * 1.2, 2),
            "net_change": round(ltp - state.prev_close, 2), "ohlc": ohlc, "oi": state.oi,
            "oi_day_high": state.oi_day_high, "oi_day_low": state.oi_day_low,
            "sell_quantity": state.total_sell_quantity, "volume": state.volume,
        }  # fmt: skip

    # -- the HTTP shell ----------------------------------------------------------------------
    def handle_post(self, path: str, headers: dict[str, str], raw_body: bytes) -> Answer:
        try:
            body: Any = json.loads(raw_body)
        except ValueError:
            body = None
        return self._recorded("POST", path, headers, body,
                              lambda: self.answer(path, headers, raw_body))  # fmt: skip

    def handle_get(self, path: str, headers: dict[str, str]) -> Answer:
        return self._recorded("GET", path, headers, None, lambda: self.answer_get(path, headers))

    def _recorded(
        self, method: str, path: str, headers: dict[str, str], body: Any,
        decide: Callable[[], Answer],
    ) -> Answer:  # fmt: skip
        call = {"t": time.monotonic(), "method": method, "path": path, "body": body,
                "headers": dict(headers)}  # fmt: skip
        self.calls.append(call)
        if self.delay > 0:
            self._closing.wait(self.delay)
        answer = decide()
        call["status"] = answer[0]
        return answer

    def start(self) -> RestStandIn:
        if self._server is not None:
            return self
        self._closing.clear()
        server = _Server((self.host, self.port), _Handler)
        server.stand_in = self
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"dhan-rest-{self.port}", daemon=True,
        )  # fmt: skip
        self._thread.start()
        return self

    def close(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._closing.set()  # wake handlers sleeping in `delay`
        server.shutdown()
        server.server_close()  # joins the handler threads
        if thread is not None:
            thread.join()
        self._server = self._thread = None

    def __enter__(self) -> RestStandIn:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    stand_in: RestStandIn


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: one call per connection, so no keep-alive socket outlives `close()`.
    protocol_version = "HTTP/1.0"
    server: _Server

    def do_POST(self) -> None:  # noqa: N802 (stdlib naming)
        length = int(self.headers.get("Content-Length") or 0)
        raw_body = self.rfile.read(length) if length > 0 else b""
        headers = {name.lower(): value for name, value in self.headers.items()}
        status, body = self.server.stand_in.handle_post(self.path, headers, raw_body)
        self._reply(status, body)

    def do_GET(self) -> None:  # noqa: N802
        headers = {name.lower(): value for name, value in self.headers.items()}
        status, body = self.server.stand_in.handle_get(self.path, headers)
        self._reply(status, body)

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            log.debug("client went away before the answer (it timed out)")

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("rest stand-in: " + format, *args)
