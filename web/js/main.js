// The screener page: a watchlist whose prices arrive over the WebSocket API, with the HTTP API
// polled while the WebSocket is down. Status: live (WebSocket), polling (HTTP every 1.5 s),
// offline (neither answers). While the poller backs off (the API answered 429/503 or did not
// answer) the notice says "polling paused: server busy, retrying in N s", counting down.

import { loadConfig, resolveWatchlist, tokenSource } from "./config.js";
import { fetchPrices, LiveFeed, Poller } from "./feed.js";
import { PriceBook, valuesOf } from "./prices.js";
import { ScreenerView } from "./view.js";

async function main() {
  let config;
  let watchlist;
  try {
    config = await loadConfig();
    watchlist = await resolveWatchlist(config);
  } catch (error) {
    const notice = document.getElementById("notice");
    notice.hidden = false;
    notice.textContent = `Cannot start: ${error.message}`;
    const badge = document.getElementById("connection");
    badge.dataset.state = "offline";
    badge.textContent = "offline";
    return;
  }
  const { instruments } = watchlist;
  const keys = instruments.map((item) => item.key);
  const book = new PriceBook(instruments);
  const view = new ScreenerView(document, instruments);
  document.getElementById("watchlist-name").textContent = watchlist.name
    ? `· ${watchlist.name} (${keys.length})`
    : `(${keys.length})`;
  if (!keys.length) view.showNotice("The watchlist is empty.");

  const app = {
    config,
    book,
    view,
    feed: null,
    poller: null,
    pollOk: null,
    pollPause: null, // the poller's back-off while it lasts: {busy, status, retryInMs, until}
    pauseText: null, // the notice text the pause wrote, to clear only our own
    status: "connecting",
    counters: { messages: 0, polls: 0, applied: 0, refused: 0 },
  };

  const apply = (message) => {
    const now = Date.now();
    for (const [key, value] of valuesOf(message)) {
      const entry = book.apply(key, value, now);
      if (entry) {
        app.counters.applied += 1;
        view.schedule(entry);
      } else {
        app.counters.refused += 1;
      }
    }
  };

  const refreshStatus = (detail) => {
    let status;
    if (app.feed && app.feed.state === "live") status = "live";
    else if (!navigator.onLine) status = "offline";
    else if (app.pollOk === true) status = "polling";
    else if (app.pollOk === false) status = "offline";
    else status = "connecting";
    app.status = status;
    view.setConnection(status, detail);
  };

  const pauseText = (pause) => {
    const seconds = Math.max(0, Math.ceil((pause.until - Date.now()) / 1000));
    const why = pause.busy ? "server busy" : "the HTTP API does not answer";
    return `polling paused: ${why}, retrying in ${seconds} s`;
  };

  const showPause = () => {
    if (app.pollPause) {
      const text = pauseText(app.pollPause);
      if (text !== app.pauseText || view.notice.textContent !== text) view.showNotice(text);
      app.pauseText = text;
    } else if (app.pauseText !== null) {
      if (view.notice.textContent === app.pauseText) view.showNotice("");
      app.pauseText = null;
    }
  };

  app.poller = new Poller({
    apiUrl: config.apiUrl,
    keys,
    options: config.options,
    onPrices: (body) => {
      app.counters.polls += 1;
      // The HTTP API has no versions: only trust it while the WebSocket is not live.
      if (!app.feed || app.feed.state !== "live") apply(body);
    },
    onResult: (ok, pause) => {
      app.pollOk = ok;
      app.pollPause = pause;
      refreshStatus(ok ? "" : pause ? pauseText(pause) : "the HTTP API does not answer");
      showPause();
    },
  });

  // Keys the snapshot had no price for (not streamed yet): one request to the HTTP API, which
  // falls back to DhanHQ's REST quote. Applied only where the row has no price at all.
  const fillMissing = async (missing) => {
    const wanted = missing.filter((key) => book.has(key) && book.get(key).ltp === null);
    if (!wanted.length) return;
    try {
      const body = await fetchPrices(config.apiUrl.replace(/\/+$/, ""), wanted);
      const now = Date.now();
      for (const [key, value] of valuesOf(body)) {
        if (book.has(key) && book.get(key).ltp === null) {
          const entry = book.apply(key, { ltp: value.ltp }, now);
          if (entry) view.schedule(entry);
        }
      }
    } catch (error) {
      console.debug("screener: filling missing prices failed", error);
    }
  };

  if (config.wsUrl && keys.length) {
    app.feed = new LiveFeed({
      url: config.wsUrl,
      keys,
      token: tokenSource(config),
      options: config.options,
      onMessage: (message) => {
        app.counters.messages += 1;
        if (message.type === "error") {
          if (message.code === "not_carried" && Array.isArray(message.keys)) {
            view.markNotStreamed(message.keys);
          }
          view.showNotice(`Server: ${message.reason || "error"}`);
          return;
        }
        apply(message);
        if (message.type === "snapshot" && Array.isArray(message.missing) && message.missing.length) {
          fillMissing(message.missing);
        }
      },
      onState: (state, detail) => {
        if (state === "live") {
          app.poller.stop();
          app.pollPause = null; // nothing is waiting to poll any more
          showPause();
        } else {
          app.poller.start();
        }
        refreshStatus(detail);
      },
    });
  }

  if (keys.length) {
    app.poller.start(); // first prices come fastest from the HTTP API; stops once live
    app.feed?.start();
  }
  window.addEventListener("online", () => refreshStatus());
  window.addEventListener("offline", () => refreshStatus("the browser is offline"));

  let kinds = "";
  setInterval(() => {
    view.setAge(book.newestAt);
    if (app.pollPause) showPause(); // the countdown
    const now = [...book.baselineKinds()].sort().join();
    if (now !== kinds) {
      kinds = now;
      view.setBaselineNote(book.baselineKinds());
    }
  }, 250);

  // A handle for the browser console and the end-to-end tests; nothing on the page uses it.
  window.screener = app;
}

main();
