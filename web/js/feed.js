// Getting prices to the page: a WebSocket to the API Gateway WebSocket API (push), and a poller
// of the HTTP API for while the WebSocket is down.
//
// API Gateway shapes the WebSocket client:
// - a connection lives at most 2 h: the feed opens a fresh one well before that, and switches
//   over only once the new one is live (make before break, so no tick is missed);
// - a connection idle for 10 min is closed: the feed pings every few minutes, and a ping that
//   gets no answer in time means the socket is dead even if the browser still thinks it is open;
// - reconnects back off exponentially with jitter, so a fleet of pages does not stampede the
//   500-new-connections-per-second account limit after an outage.
// A socket can also look healthy and carry nothing: during market hours, a live socket with no
// price for `silenceMs` is probed with a ping. A server that lost its registration (its cache
// was wiped) answers `reconnect`: a fresh socket subscribes again. One that answers `pong`
// knows the socket, so the prices are stuck further up (or the keys are quiet): the feed says
// "stalled" and the page polls until prices arrive on the socket again.
//
// The poller backs off when the HTTP API is busy or away: after a failed poll (429, 503, any
// other error status, a network error or a timeout) the next one waits an exponential backoff
// with jitter (base `pollBackoffBaseMs`, doubling per failure, capped at `pollBackoffMaxMs`), and
// never less than the server's `Retry-After` (seconds or an HTTP date; up to a jittered fifth
// more, so pages told the same thing do not come back in lockstep). A success resets it. A
// restart of the poller (the WebSocket dropped again) keeps to the same "not before" time.
// (Cross-origin, the browser lets the page read `Retry-After` only when the API lists it in
// `Access-Control-Expose-Headers`; without it the backoff alone applies.)

export const DEFAULTS = Object.freeze({
  pollIntervalMs: 1500,
  pollTimeoutMs: 5000,
  pollBackoffBaseMs: 1500,
  pollBackoffMaxMs: 30 * 1000,
  pollRetryAfterMaxMs: 5 * 60 * 1000,
  pingIntervalMs: 4 * 60 * 1000,
  pongTimeoutMs: 10 * 1000,
  maxConnectionMs: 2 * 60 * 60 * 1000 - 10 * 60 * 1000,
  rotationJitterMs: 5 * 60 * 1000,
  reconnectBaseMs: 500,
  reconnectMaxMs: 15 * 1000,
  healthyAfterMs: 10 * 1000,
  subscribeChunk: 500,
  silenceMs: 15 * 1000,
  marketHours: "nse", // "nse": Mon-Fri 09:15-15:30 IST (holidays not known here); "always"; "never"
});

/** Whether a silent socket is suspicious at `date`: the market is open, so prices move. */
export function marketOpenAt(date, hours = "nse") {
  if (hours === "always") return true;
  if (hours !== "nse") return false;
  const ist = new Date(date.getTime() + (5 * 60 + 30) * 60 * 1000);
  const day = ist.getUTCDay();
  const minute = ist.getUTCHours() * 60 + ist.getUTCMinutes();
  return day >= 1 && day <= 5 && minute >= 9 * 60 + 15 && minute < 15 * 60 + 30;
}

/** Exponential backoff with "equal jitter": never zero (no hot loop), never in lockstep. */
export function backoffDelay(attempt, baseMs, maxMs, random = Math.random) {
  const ceiling = Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 20));
  return ceiling / 2 + random() * (ceiling / 2);
}

class Session {
  constructor(feed, url) {
    this.feed = feed;
    this.live = false;
    this.closed = false;
    this.lastMessageAt = Date.now();
    this.lastDataAt = Date.now(); // prices (snapshot, updates): a pong proves nothing of them
    this.pingTimer = null;
    this.pongTimer = null;
    this.watchdog = null;
    this.stalled = false;
    this.probedAt = 0;
    this.ws = new WebSocket(url);
    this.ws.onopen = () => this.onOpen();
    this.ws.onmessage = (event) => this.onMessage(event);
    this.ws.onclose = (event) => this.finish(`closed (${event.code}${event.reason ? " " + event.reason : ""})`);
    this.ws.onerror = () => {}; // a close event always follows; it carries what we need
  }

  onOpen() {
    const keys = this.feed.keys;
    const chunk = this.feed.options.subscribeChunk;
    for (let i = 0; i < keys.length; i += chunk) {
      this.send({ action: "subscribe", keys: keys.slice(i, i + chunk) });
    }
    // A pong proves the route works even when none of the keys has a price yet.
    this.ping();
  }

  onMessage(event) {
    if (this.closed) return;
    this.lastMessageAt = Date.now();
    if (this.pongTimer !== null) {
      clearTimeout(this.pongTimer);
      this.pongTimer = null;
    }
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    if (!message || typeof message !== "object") return;
    if (message.type !== "pong" && message.type !== "error") {
      this.lastDataAt = Date.now();
      if (this.stalled) {
        this.stalled = false;
        this.feed.sessionFlowing(this);
      }
    }
    if (message.type === "error" && message.code === "reconnect") {
      // The server lost this connection's registration (its cache was reset): nothing will
      // arrive on this socket again, so open a new one and subscribe afresh.
      this.feed.onMessage(message);
      this.close(4001, "server asked to reconnect");
      return;
    }
    if (!this.live && message.type !== "error") {
      this.live = true;
      this.schedulePing();
      this.feed.sessionLive(this);
    }
    this.feed.onMessage(message);
  }

  send(message) {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  ping() {
    this.send({ action: "ping" });
    if (this.pongTimer === null) {
      this.pongTimer = setTimeout(() => {
        this.pongTimer = null;
        this.close(4000, "no answer to ping");
      }, this.feed.options.pongTimeoutMs);
    }
  }

  schedulePing() {
    clearInterval(this.pingTimer);
    this.pingTimer = setInterval(() => this.ping(), this.feed.options.pingIntervalMs);
    const { silenceMs, marketHours } = this.feed.options;
    clearInterval(this.watchdog);
    this.watchdog = setInterval(() => {
      const now = Date.now();
      if (now - this.lastDataAt <= silenceMs || !marketOpenAt(new Date(now), marketHours)) return;
      if (now - this.probedAt > silenceMs) {
        this.probedAt = now;
        this.ping(); // `reconnect` or no answer closes this socket; `pong` leaves it stalled
      }
      if (!this.stalled) {
        this.stalled = true;
        this.feed.sessionStalled(this, Math.round((now - this.lastDataAt) / 1000));
      }
    }, Math.max(250, Math.min(5000, silenceMs / 4)));
  }

  close(code = 1000, reason = "") {
    if (this.closed) return;
    try {
      this.ws.close(code, reason);
    } catch {
      // readyState CONNECTING with a custom code can throw in some browsers; finish anyway
    }
    // Do not wait for the close handshake: a dead TCP connection may take minutes to report.
    this.finish(reason || "closed");
  }

  finish(reason) {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.pingTimer);
    clearInterval(this.watchdog);
    clearTimeout(this.pongTimer);
    this.ws.onopen = this.ws.onmessage = this.ws.onclose = null;
    this.feed.sessionEnded(this, reason);
  }
}

export class LiveFeed {
  /**
   * @param {{url: string, keys: string[], token: () => Promise<string|null>,
   *          onMessage: (m: object) => void, onState: (s: string, detail?: string) => void,
   *          options?: object}} params
   */
  constructor({ url, keys, token, onMessage, onState, options = {} }) {
    this.url = url;
    this.keys = keys;
    this.token = token;
    this.onMessage = onMessage;
    this.onState = onState;
    this.options = { ...DEFAULTS, ...options };
    this.current = null;
    this.next = null;
    this.attempt = 0;
    this.state = "idle";
    this.timers = new Set();
    this.stopped = true;
    this.connecting = false;
    this.onOnline = () => {
      if (!this.current && !this.stopped) this.reconnectNow();
    };
    // After a laptop sleeps, a socket can look open while it is dead: check at once on return
    // instead of at the next scheduled ping.
    this.onVisible = () => {
      if (document.visibilityState === "visible" && this.current?.live) this.current.ping();
    };
  }

  start() {
    if (!this.stopped) return;
    this.stopped = false;
    window.addEventListener("online", this.onOnline);
    document.addEventListener("visibilitychange", this.onVisible);
    this.connect();
  }

  stop() {
    this.stopped = true;
    window.removeEventListener("online", this.onOnline);
    document.removeEventListener("visibilitychange", this.onVisible);
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    for (const session of [this.current, this.next]) session?.close(1000, "page stopped");
    this.current = this.next = null;
    this.setState("idle");
  }

  /** Force-close the live socket (tests, or a user's "reconnect" action). */
  drop() {
    this.current?.close(4001, "dropped by the page");
  }

  setState(state, detail) {
    if (state === this.state) return;
    this.state = state;
    this.onState(state, detail);
  }

  later(fn, delay) {
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      fn();
    }, delay);
    this.timers.add(timer);
    return timer;
  }

  async open() {
    let token = null;
    try {
      token = await this.token();
    } catch (error) {
      console.warn("screener: cannot get a WebSocket token", error);
      return null;
    }
    if (this.stopped) return null;
    const url = new URL(this.url, window.location.href);
    if (token) url.searchParams.set("token", token);
    try {
      return new Session(this, url.toString());
    } catch (error) {
      console.warn("screener: cannot open the WebSocket", error);
      return null;
    }
  }

  async connect() {
    if (this.connecting) return;
    this.connecting = true;
    this.setState("connecting");
    let session;
    try {
      session = await this.open();
    } finally {
      this.connecting = false;
    }
    if (this.stopped) {
      session?.close(1000, "page stopped");
      return;
    }
    if (session === null) {
      this.retry("no connection");
      return;
    }
    this.current = session;
  }

  reconnectNow() {
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    this.connect();
  }

  retry(reason) {
    const delay = backoffDelay(this.attempt, this.options.reconnectBaseMs, this.options.reconnectMaxMs);
    this.attempt += 1;
    this.setState("down", reason);
    this.later(() => this.connect(), delay);
  }

  sessionLive(session) {
    if (session === this.next) {
      // Rotation: the new socket has its snapshot; only now let the old one go.
      const old = this.current;
      this.current = session;
      this.next = null;
      old?.close(1000, "rotated");
    }
    if (session !== this.current) return;
    const { healthyAfterMs, maxConnectionMs, rotationJitterMs } = this.options;
    this.later(() => {
      if (this.current === session && !session.closed) this.attempt = 0;
    }, healthyAfterMs);
    this.later(() => this.rotate(session), maxConnectionMs - Math.random() * rotationJitterMs);
    this.setState("live");
  }

  sessionStalled(session, seconds) {
    if (session === this.current) this.setState("stalled", `no price for ${seconds} s`);
  }

  sessionFlowing(session) {
    if (session === this.current) this.setState("live");
  }

  async rotate(session) {
    if (this.stopped || this.current !== session || this.next) return;
    const next = await this.open();
    if (next === null) return; // the old socket keeps serving; its close will trigger a retry
    if (this.stopped || this.current !== session) {
      next.close(1000, "not needed");
      return;
    }
    this.next = next;
  }

  sessionEnded(session, reason) {
    if (session === this.next) {
      this.next = null;
      return;
    }
    if (session !== this.current) return;
    this.current = null;
    if (this.stopped) return;
    if (this.next) {
      // The replacement is already on its way; make it the current connection.
      this.current = this.next;
      this.next = null;
      this.setState("connecting", reason);
      return;
    }
    this.retry(reason);
  }
}

/**
 * `Retry-After` as milliseconds from `now`: delta-seconds or an HTTP date; null when absent or
 * unreadable (a date in the past is 0).
 */
export function retryAfterMs(value, now = Date.now()) {
  if (value === null || value === undefined) return null;
  const text = String(value).trim();
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  if (!/[a-z]/i.test(text)) return null; // "-1", "1.5": not a delay, not a date
  const at = Date.parse(text);
  return Number.isNaN(at) ? null : Math.max(0, at - now);
}

/** A poll that failed: `status` (null for a network error or timeout) and `retryAfterMs`. */
export class PollError extends Error {
  constructor(message, { status = null, retryAfterMs: wait = null } = {}) {
    super(message);
    this.name = "PollError";
    this.status = status;
    this.retryAfterMs = wait;
  }

  /** The server said it is overloaded or down for now. */
  get busy() {
    return this.status === 429 || this.status === 503;
  }
}

/**
 * How long to wait before the next poll after `failures` failed ones in a row (>= 1), the last
 * asking for `retryAfter` ms (or null): exponential backoff with equal jitter, never less than
 * what the server asked (that up to a fifth more, jittered), each capped.
 */
export function pollDelay(failures, retryAfter, options = DEFAULTS, random = Math.random) {
  const backoff = backoffDelay(failures - 1, options.pollBackoffBaseMs, options.pollBackoffMaxMs, random);
  if (retryAfter === null || retryAfter === undefined) return backoff;
  const asked = Math.min(retryAfter, options.pollRetryAfterMaxMs);
  return Math.max(backoff, asked * (1 + 0.2 * random()));
}

/**
 * Polls `GET /api/v1/current_prices` (POST for long watchlists) every `pollIntervalMs`, backing
 * off after failures (see the top of this module). `onResult(ok, pause)`: `pause` is null on
 * success, else `{busy, status, retryInMs, until}` (`until` an epoch ms).
 */
export class Poller {
  constructor({ apiUrl, keys, onPrices, onResult, options = {}, random = Math.random }) {
    this.base = apiUrl.replace(/\/+$/, "");
    this.keys = keys;
    this.onPrices = onPrices;
    this.onResult = onResult;
    this.options = { ...DEFAULTS, ...options };
    this.random = random;
    this.generation = 0;
    this.running = false;
    this.timer = null;
    this.failures = 0;
    this.notBefore = 0; // performance.now() before which no poll is sent
  }

  start() {
    if (this.running) return;
    this.running = true;
    this.generation += 1;
    const generation = this.generation;
    const wait = this.notBefore - performance.now();
    if (wait > 0) this.timer = setTimeout(() => this.tick(generation), wait);
    else this.tick(generation);
  }

  stop() {
    this.running = false;
    this.generation += 1; // anything in flight now belongs to a stale generation
    clearTimeout(this.timer);
    this.timer = null;
  }

  async tick(generation) {
    const started = performance.now();
    let failure = null;
    try {
      const body = await fetchPrices(this.base, this.keys, this.options.pollTimeoutMs);
      if (generation !== this.generation) return;
      this.failures = 0;
      this.onPrices(body);
    } catch (error) {
      if (generation !== this.generation) return;
      console.debug("screener: poll failed", error);
      this.failures += 1;
      failure = error instanceof PollError ? error : new PollError(String(error && error.message));
    }
    let wait;
    let pause = null;
    if (failure === null) {
      wait = Math.max(0, this.options.pollIntervalMs - (performance.now() - started));
    } else {
      wait = pollDelay(this.failures, failure.retryAfterMs, this.options, this.random);
      pause = { busy: failure.busy, status: failure.status, retryInMs: wait, until: Date.now() + wait };
    }
    this.notBefore = performance.now() + wait;
    this.onResult(failure === null, pause);
    if (this.running && generation === this.generation) {
      this.timer = setTimeout(() => this.tick(generation), wait);
    }
  }
}

const MAX_GET_URL = 4000;

/** One request to the HTTP API for the keys' current prices. */
export async function fetchPrices(base, keys, timeoutMs = DEFAULTS.pollTimeoutMs) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  try {
    const query = `${base}/api/v1/current_prices?keys=${keys.map(encodeURIComponent).join(",")}`;
    const init = { signal: controller.signal, cache: "no-store" };
    const response = query.length <= MAX_GET_URL
      ? await fetch(query, init)
      : await fetch(`${base}/api/v1/current_prices`, {
          ...init,
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ keys }),
        });
    if (!response.ok) {
      throw new PollError(`HTTP ${response.status}`, {
        status: response.status,
        retryAfterMs: retryAfterMs(response.headers.get("Retry-After")),
      });
    }
    return await response.json();
  } finally {
    clearTimeout(timer);
  }
}
