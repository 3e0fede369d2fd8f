"""The real-time domain: who is connected wanting what, and what each window delivers.

Shared by the relay bridge (`relay`), the fan-out (`functions.fanout`) and the WebSocket
handlers (`functions.ws`); nothing else reads its Redis keys.

  keys        the `ws:*` key layout, the only place those names are built
  scripts     the registry's Lua scripts (atomic subscribe, unsubscribe, removal, claim, carry)
  registry    `ConnectionRegistry` (sync): connect, subscribe, snapshot floors, claim, carry
  directory   `ShardDirectory` (asyncio): the bridge's window write and per-shard demand
  snapshot    the `ws:latest` + `ltp:*` read of a subscribe and of the bridge's resync
  views       `EpochCache` and `ShardView`: subscriptions re-read only when their epoch moved
  window      pure: conflation by version, the window's payloads per shard, the next window
  delivery    pure: which updates each connection gets, packed into messages
  contracts   typed messages between the deployables (`FanoutPayload`, `BridgeStatus`, ...)
Pure modules (window, delivery, views, contracts) do no I/O; the others take their client.
"""
