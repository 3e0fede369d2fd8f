// The page's price state: which value each row shows, and whether an incoming value may replace
// it. Pure (no DOM, no network), so the rules are the same for the WebSocket and the poller.
//
// Ordering: an update with a `version` (the streamer's per-key counter, which only grows) is
// applied only when it is newer than the version shown, so a late or duplicated message never
// moves a price backwards. A value without a version (the HTTP API, which has none) is applied
// as "latest known"; the app only applies those while the WebSocket is not live.
//
// Change baseline: the previous close when a message carries one (`prev_close`), otherwise the
// first price this page saw for the key. The page says which (see `baselineKind`).

export const BASELINE_PREV_CLOSE = "prev_close";
export const BASELINE_FIRST_SEEN = "first_seen";

const KEY_PATTERN = /^(IDX_I|NSE_EQ|NSE_FNO|NSE_CURRENCY|BSE_EQ|MCX_COMM|BSE_CURRENCY|BSE_FNO):\d{1,10}$/;

export function isInstrumentKey(text) {
  return typeof text === "string" && KEY_PATTERN.test(text);
}

function finitePrice(value) {
  const number = typeof value === "string" ? Number(value) : value;
  return typeof number === "number" && Number.isFinite(number) && number >= 0 ? number : null;
}

function finiteVersion(value) {
  return typeof value === "number" && Number.isFinite(value) ? value : null;
}

export class PriceBook {
  /** @param {{key: string, symbol?: string, name?: string}[]} instruments */
  constructor(instruments) {
    this.entries = new Map();
    for (const item of instruments) {
      this.entries.set(item.key, {
        key: item.key,
        symbol: item.symbol || item.key,
        name: item.name || "",
        ltp: null,
        previous: null,
        direction: 0,
        version: null,
        baseline: null,
        baselineKind: null,
        change: null,
        changePct: null,
        ltt: null,
        updatedAt: null,
      });
    }
    this.newestAt = null;
    this.applied = 0;
    this.stale = 0;
  }

  has(key) {
    return this.entries.has(key);
  }

  get(key) {
    return this.entries.get(key);
  }

  keys() {
    return [...this.entries.keys()];
  }

  /**
   * Offer a value for a key. Returns the entry when the value was applied (even an unchanged
   * price refreshes the row's "last update"), `null` when it was refused.
   * @param {string} key
   * @param {{ltp: unknown, version?: unknown, prev_close?: unknown, symbol?: unknown, ltt?: unknown}} value
   * @param {number} receivedAt epoch ms
   */
  apply(key, value, receivedAt) {
    const entry = this.entries.get(key);
    if (!entry || value == null) return null;
    const ltp = finitePrice(value.ltp);
    if (ltp === null) return null;
    const version = finiteVersion(value.version);
    if (version !== null && entry.version !== null && version <= entry.version) {
      this.stale += 1;
      return null;
    }
    if (version !== null) entry.version = version;
    if (typeof value.symbol === "string" && value.symbol) entry.symbol = value.symbol;
    const prevClose = finitePrice(value.prev_close);
    if (prevClose !== null && prevClose > 0 && entry.baseline !== prevClose) {
      entry.baseline = prevClose;
      entry.baselineKind = BASELINE_PREV_CLOSE;
    } else if (entry.baseline === null) {
      entry.baseline = ltp;
      entry.baselineKind = BASELINE_FIRST_SEEN;
    }
    if (typeof value.ltt === "number") entry.ltt = value.ltt;
    entry.updatedAt = receivedAt;
    if (this.newestAt === null || receivedAt > this.newestAt) this.newestAt = receivedAt;
    this.applied += 1;
    if (entry.ltp !== ltp) {
      entry.previous = entry.ltp;
      entry.direction = entry.previous === null ? 0 : Math.sign(ltp - entry.previous);
      entry.ltp = ltp;
    } else {
      entry.direction = 0;
    }
    entry.change = entry.ltp - entry.baseline;
    entry.changePct = entry.baseline > 0 ? (entry.change / entry.baseline) * 100 : null;
    return entry;
  }

  /** Keys whose price has not been seen yet (for a one-off fill from the HTTP API). */
  unpriced() {
    const out = [];
    for (const entry of this.entries.values()) if (entry.ltp === null) out.push(entry.key);
    return out;
  }

  /** Which baselines are in use: drives the note under the table. */
  baselineKinds() {
    const kinds = new Set();
    for (const entry of this.entries.values()) if (entry.baselineKind) kinds.add(entry.baselineKind);
    return kinds;
  }
}

/**
 * The `{key: value}` pairs a server message carries, whatever its shape:
 * batch/single updates, a snapshot (`prices` map of numbers or objects, or `updates` list),
 * or the HTTP API's `{prices: {key: number|null}}`.
 * @returns {Array<[string, object]>}
 */
export function valuesOf(message) {
  const out = [];
  if (!message || typeof message !== "object") return out;
  if (Array.isArray(message.updates)) {
    for (const update of message.updates) {
      if (update && typeof update === "object") {
        const key = update.key || keyOf(update);
        if (key) out.push([key, update]);
      }
    }
  }
  if (message.type === "screener_ltp_update") {
    const key = message.key || keyOf(message);
    if (key) out.push([key, message]);
  }
  const prices = message.prices;
  if (prices && typeof prices === "object") {
    const prevCloses = message.prev_close && typeof message.prev_close === "object" ? message.prev_close : {};
    for (const [key, raw] of Object.entries(prices)) {
      if (raw === null || raw === undefined) continue;
      const value = typeof raw === "object" ? raw : { ltp: raw };
      if (prevCloses[key] !== undefined && value.prev_close === undefined) {
        out.push([key, { ...value, prev_close: prevCloses[key] }]);
      } else {
        out.push([key, value]);
      }
    }
  }
  return out;
}

function keyOf(update) {
  if (typeof update.segment === "string" && update.security_id !== undefined) {
    return `${update.segment}:${update.security_id}`;
  }
  return null;
}
