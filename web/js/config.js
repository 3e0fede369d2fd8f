// Where the page gets its settings and its watchlist.
//
// `config.json` sits next to index.html and is written by the deployment (CDK's web construct
// writes `{"apiUrl", "wsUrl"}`; `ltp-local` serves one per request). Fields:
//   apiUrl      base URL of the HTTP API ("" = same origin)
//   wsUrl       WebSocket API URL (wss://.../stage); absent = poll only
//   wsToken     a signed connect token, when the WebSocket API requires one; the page re-reads
//               config.json before each reconnect, so a server that mints per request keeps
//               the token fresh
//   tokenUrl    alternatively, a URL answering {"token": "..."} (fetched before each connect;
//               with OIDC (README "Who may connect") the embedding site defines
//               `window.ltpAuthorization`, returning its user's token, sent as a bearer)
//   watchlist   [{key, symbol?, name?}] or ["NSE_EQ:2885", ...]; default: watchlist.json
//   watchlistName  shown in the header
//   options     timing overrides (see feed.js DEFAULTS), mostly for tests
// The query string `?keys=NSE_EQ:2885,IDX_I:13` overrides the watchlist.

import { isInstrumentKey } from "./prices.js";

export async function fetchJson(url, init = {}) {
  const response = await fetch(url, { cache: "no-store", ...init });
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

export async function loadConfig(url = "config.json") {
  const config = await fetchJson(url);
  if (!config || typeof config !== "object") throw new Error("config.json is not an object");
  return {
    apiUrl: typeof config.apiUrl === "string" ? config.apiUrl : "",
    wsUrl: typeof config.wsUrl === "string" && config.wsUrl ? config.wsUrl : null,
    wsToken: typeof config.wsToken === "string" ? config.wsToken : null,
    tokenUrl: typeof config.tokenUrl === "string" ? config.tokenUrl : null,
    watchlist: config.watchlist ?? null,
    watchlistName: typeof config.watchlistName === "string" ? config.watchlistName : "",
    options: config.options && typeof config.options === "object" ? config.options : {},
    source: url,
  };
}

function normalise(items) {
  const seen = new Set();
  const out = [];
  for (const item of Array.isArray(items) ? items : []) {
    const entry = typeof item === "string" ? { key: item.trim() } : item;
    if (!entry || !isInstrumentKey(entry.key) || seen.has(entry.key)) continue;
    seen.add(entry.key);
    out.push({ key: entry.key, symbol: entry.symbol || "", name: entry.name || "" });
  }
  return out;
}

/** The instruments to show: `?keys=` > config.watchlist > watchlist.json. */
export async function resolveWatchlist(config, search = window.location.search) {
  const fromQuery = new URLSearchParams(search).get("keys");
  if (fromQuery) {
    const instruments = normalise(fromQuery.split(","));
    if (instruments.length) return { name: "custom", instruments };
  }
  if (config.watchlist) {
    const instruments = normalise(config.watchlist);
    if (instruments.length) return { name: config.watchlistName, instruments };
  }
  const file = await fetchJson("watchlist.json");
  return { name: file.name || config.watchlistName, instruments: normalise(file.instruments) };
}

/** Identity mode (a): the bearer header for tokenUrl, from the embedding site's sign-in. */
async function tokenRequest() {
  const signedIn = globalThis.ltpAuthorization;
  const bearer = typeof signedIn === "function" ? await signedIn() : null;
  return bearer ? { headers: { Authorization: `Bearer ${bearer}` } } : {};
}

/** A function giving the token for the next WebSocket connect (null: none needed). */
export function tokenSource(config) {
  if (config.tokenUrl) {
    return async () => {
      const body = await fetchJson(config.tokenUrl, await tokenRequest());
      return typeof body.token === "string" ? body.token : null;
    };
  }
  if (!config.wsToken) return async () => null;
  let first = config.wsToken;
  return async () => {
    if (first) {
      const token = first;
      first = null;
      return token;
    }
    const fresh = await loadConfig(config.source);
    return fresh.wsToken;
  };
}
