"""The relay bridge, a Fargate deployable of its own (beside the streamer, in the same task):
`live_ltp_updates` -> conflated windows -> one fan-out Lambda invoke per active shard.

  bridge     `RelayBridge`: the asyncio shell (channel reader, windower, heartbeat)
  heartbeat  what a beat emits besides its status: the EMF line, the liveness file
  invoke     `Invoker` and `LambdaInvoker` (Lambda's async invoke)
  settings   `BridgeSettings` from the environment
  wiring     builds the bridge from its settings; `serve`, `main`
`python -m relay` runs it. The windowing itself is pure and lives in `realtime.window`.
"""
