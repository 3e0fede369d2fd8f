"""A DhanHQ v2 stand-in for tests, benchmarks and the local run.

- `packets`: encoders for every v2 binary packet (the inverse of `streamer.decoder`).
- `prices`: the shared price book (seeded random walk) that feed and REST both answer from.
- `protocol`: pure request parsing/validation and per-connection subscription state.
- `ticks`: price book -> packets (IST LTT), and pre-built frame cycles for rate=0.
- `feed`: `FeedSimulator`, the WebSocket server (v2 query-string auth, JSON requests, binary
  packets, fault injection), configured by `config.SimConfig`; `sender` streams each
  connection's ticks; `threaded` runs the simulator on its own loop in a thread.
- `rest`: `RestStandIn`, `POST /v2/marketfeed/ltp|ohlc|quote` with Dhan's limits and errors.
- `client`: handshake URL, JSON request builders and a packet reader for clients of a feed.
- `cli`: the `ltp-sim` console script (feed + REST over one price book).
"""
