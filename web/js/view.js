// The table and the status bar. Prices arrive far more often than a screen refreshes, so
// entries are only marked dirty here and written to the DOM once per animation frame: a key
// that ticks five times between frames costs one write, and 500 rows cost one layout.

import { BASELINE_FIRST_SEEN, BASELINE_PREV_CLOSE } from "./prices.js";

const priceFormat = new Intl.NumberFormat("en-IN", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
const changeFormat = new Intl.NumberFormat("en-IN", {
  minimumFractionDigits: 2,
  maximumFractionDigits: 2,
  signDisplay: "exceptZero",
});
const timeFormat = new Intl.DateTimeFormat("en-GB", {
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
  hour12: false,
});

const STATE_TEXT = { live: "live", polling: "polling", offline: "offline", connecting: "connecting" };
const STATE_TITLE = {
  live: "Prices are pushed over the WebSocket as they change.",
  polling: "The WebSocket is down: prices are fetched from the HTTP API every 1.5 s until it is back.",
  offline: "Neither the WebSocket nor the HTTP API answers; the prices shown may be old.",
  connecting: "Connecting…",
};

export class ScreenerView {
  constructor(root, instruments) {
    this.root = root;
    this.body = root.querySelector("#watchlist tbody");
    this.badge = root.getElementById("connection");
    this.age = root.getElementById("price-age");
    this.note = root.getElementById("baseline-note");
    this.notice = root.getElementById("notice");
    this.rows = new Map();
    this.dirty = new Map();
    this.frame = 0;
    this.flushes = 0;
    this.build(instruments);
  }

  build(instruments) {
    const fragment = this.root.createDocumentFragment();
    for (const item of instruments) {
      const tr = this.root.createElement("tr");
      tr.dataset.instrumentKey = item.key;
      const symbol = cell(tr, "symbol");
      const symbolText = this.root.createElement("span");
      symbolText.className = "js-symbol";
      symbolText.textContent = item.symbol || item.key;
      symbol.append(symbolText);
      if (item.name && item.name !== item.symbol) {
        const name = this.root.createElement("span");
        name.className = "name";
        name.textContent = item.name;
        symbol.append(name);
      }
      symbol.title = item.key;
      const ltp = cell(tr, "num js-ltp-cell");
      ltp.dataset.instrumentKey = item.key;
      ltp.textContent = "—";
      const change = cell(tr, "num js-change-cell");
      const pct = cell(tr, "num js-change-pct-cell");
      const time = cell(tr, "num js-time-cell");
      time.textContent = "—";
      this.rows.set(item.key, { tr, symbolText, ltp, change, pct, time, flashAlt: false, symbol: item.symbol });
      fragment.append(tr);
    }
    this.body.replaceChildren(fragment);
  }

  /** Mark an entry for the next frame; the newest state of the entry wins. */
  schedule(entry) {
    const previous = this.dirty.get(entry.key);
    // Keep the direction of the first change in the frame if the last one was flat.
    const direction = entry.direction || (previous ? previous.direction : 0);
    this.dirty.set(entry.key, { entry, direction });
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  flush() {
    this.frame = 0;
    this.flushes += 1;
    for (const { entry, direction } of this.dirty.values()) this.paint(entry, direction);
    this.dirty.clear();
  }

  paint(entry, direction) {
    const row = this.rows.get(entry.key);
    if (!row) return;
    if (entry.symbol !== row.symbol) {
      row.symbol = entry.symbol;
      row.symbolText.textContent = entry.symbol;
    }
    row.ltp.textContent = priceFormat.format(entry.ltp);
    row.ltp.dataset.price = String(entry.ltp);
    if (direction !== 0) {
      const up = direction > 0;
      row.flashAlt = !row.flashAlt;
      row.ltp.className = `num js-ltp-cell ${up ? "flash-up up" : "flash-down down"}${row.flashAlt ? " alt" : ""}`;
      row.tr.dataset.flash = up ? "up" : "down";
    }
    const sign = entry.change > 0 ? "up" : entry.change < 0 ? "down" : "";
    row.change.textContent = entry.change === null ? "—" : changeFormat.format(entry.change);
    row.change.className = `num js-change-cell ${sign}`;
    row.pct.textContent = entry.changePct === null ? "—" : `${changeFormat.format(entry.changePct)}%`;
    row.pct.className = `num js-change-pct-cell ${sign}`;
    const basis = entry.baselineKind === BASELINE_PREV_CLOSE ? "previous close" : "first price seen";
    row.change.title = row.pct.title = `vs ${basis} ${priceFormat.format(entry.baseline)}`;
    row.time.textContent = timeFormat.format(entry.updatedAt);
    row.time.title = entry.ltt ? `exchange time ${exchangeTime(entry.ltt)}` : "";
  }

  setConnection(state, detail) {
    this.badge.dataset.state = state;
    this.badge.textContent = STATE_TEXT[state] || state;
    this.badge.title = detail ? `${STATE_TITLE[state] || ""} (${detail})` : STATE_TITLE[state] || "";
  }

  setAge(newestAt, now = Date.now()) {
    if (newestAt === null) {
      this.age.textContent = "no prices yet";
      this.age.dataset.ageMs = "";
      return;
    }
    const ageMs = Math.max(0, now - newestAt);
    this.age.dataset.ageMs = String(Math.round(ageMs));
    this.age.dataset.stale = String(ageMs > 30_000);
    this.age.textContent = `newest price ${formatAge(ageMs)} ago`;
  }

  setBaselineNote(kinds) {
    const parts = [];
    if (kinds.has(BASELINE_PREV_CLOSE)) parts.push("previous close where the feed provides it");
    if (kinds.has(BASELINE_FIRST_SEEN)) {
      parts.push(
        kinds.has(BASELINE_PREV_CLOSE)
          ? "otherwise the first price this page received"
          : "the first price this page received (the feed does not provide the previous close)",
      );
    }
    this.note.textContent = parts.length ? `Change is measured from ${parts.join(", ")}.` : "";
  }

  /** Keys the server refused because the feed cannot carry them: say so on their rows. */
  markNotStreamed(keys) {
    for (const key of keys) {
      const row = this.rows.get(key);
      if (!row) continue;
      if (row.tr.dataset.notStreamed) continue;
      row.tr.dataset.notStreamed = "true";
      row.tr.title = "Not streamed: the feed is at its capacity; this price does not update.";
      const badge = this.root.createElement("span");
      badge.className = "name js-not-streamed";
      badge.textContent = "not streamed";
      row.symbolText.after(badge);
    }
  }

  showNotice(text) {
    this.notice.hidden = !text;
    this.notice.textContent = text || "";
  }
}

function cell(tr, className) {
  const td = tr.ownerDocument.createElement("td");
  td.className = className;
  tr.append(td);
  return td;
}

// Dhan's LTT is IST wall-clock time encoded as epoch seconds, so read it back as UTC.
const exchangeFormat = new Intl.DateTimeFormat("en-GB", {
  timeZone: "UTC",
  day: "2-digit",
  month: "short",
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
  hour12: false,
});

function exchangeTime(ltt) {
  return `${exchangeFormat.format(new Date(ltt * 1000))} IST`;
}

export function formatAge(ms) {
  if (ms < 1000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms < 60_000) return `${Math.round(ms / 1000)} s`;
  if (ms < 3_600_000) return `${Math.round(ms / 60_000)} min`;
  return `${Math.round(ms / 3_600_000)} h`;
}
