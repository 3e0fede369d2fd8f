"""Tick-to-browser latency: simulator -> streamer -> Redis -> bridge -> fan-out -> WS clients.

    .venv/bin/python bench/bench_e2e_ws.py                      # 200 then 1,000 clients
    .venv/bin/python bench/bench_e2e_ws.py --clients 200 --seconds 30 --budget 5000

Four processes on the 2 shared cores:
- the DhanHQ v2 simulator (`ltp-sim --rate 5000`: 5,000 price packets/s over 1,000 keys);
- the streamer (`python -m streamer`: feed -> `SET ltp:*` + `PUBLISH live_ltp_updates`);
- the real-time stack as `ltp-local` hosts it (same shard count, post threads and GC settings):
  the relay bridge (adaptive window, post budget), the fan-out in-process (`LocalInvoker`,
  posting straight into the gateway), the local API Gateway running the `functions.ws`
  handlers;
- this one: N WebSocket clients (websockets' sans-I/O protocol on asyncio, parsing what they
  received after the measured period), each subscribed to 50 random keys of the 1,000.

Latency of an update = the client's receive time - the update's `version`, which the streamer
stamps with its wall clock (microseconds) when it publishes the batch (`streamer.coalescer`):
streamer publish -> browser, on one machine clock. The simulator -> streamer leg adds the
streamer's coalescing delay (a few ms). Reported per run: the window the bridge chose, p50 /
p99 / max latency, messages per client per second, updates delivered per second, the most
messages one client got in one window (must be 1), and the expected post rate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import SIM_CLIENT_ID, SIM_TOKEN, LightClient, cpu_seconds  # noqa: E402
from local.run.config import LOCAL_FANOUT_WORKERS, LOCAL_SHARDS  # noqa: E402

KEYS = [f"NSE_EQ:{10_000 + i}" for i in range(1000)]


# --- the real-time stack process -----------------------------------------------------------------

async def serve_stack(redis_url: str, budget: float, min_window: float, max_window: float,
                      shards: int, workers: int) -> None:
    import redis
    import redis.asyncio as aioredis

    from core.runtime import tune_gc
    from functions.fanout.runner import Fanout
    from functions.ws.app import WsApp
    from local.apigw import GatewayConfig, Handlers, LocalApiGateway
    from local.apigw.client import InProcessManagement
    from local.invoker import LocalInvoker
    from realtime.registry import ConnectionRegistry, shard_of
    from relay.bridge import RelayBridge

    client = redis.Redis.from_url(redis_url, max_connections=64)
    registry = ConnectionRegistry(redis=client, shards=shards)
    holder: dict[str, Any] = {}
    app = WsApp(registry=registry, redis=client, management=lambda e: holder["api"],
                token_secret=lambda: "")
    gateway = LocalApiGateway(Handlers(message=lambda e, c: app.message(e),
                                       connect=lambda e, c: app.connect(e),
                                       disconnect=lambda e, c: app.disconnect(e)),
                              GatewayConfig(idle_timeout=3600))
    await gateway.start()
    holder["api"] = InProcessManagement(gateway)
    # Posts per (window, connection), counted where they are made: a shard runs one window at
    # a time, so the shard's current window is the one a post belongs to.
    window_of_shard: dict[int, int] = {}
    posts_per_window: Counter[tuple[int, str]] = Counter()

    class CountingManagement:
        def post_to_connection(self, *, Data: bytes, ConnectionId: str) -> Any:  # noqa: N803
            answer = holder["api"].post_to_connection(Data=Data, ConnectionId=ConnectionId)
            window = window_of_shard[shard_of(ConnectionId, shards)]
            posts_per_window[(window, ConnectionId)] += 1
            return answer

    fanout = Fanout(registry=registry, management=CountingManagement(), max_workers=workers)
    done_after_close: list[float] = []
    starts: list[Any] = []

    def run(payload: dict[str, Any]) -> Any:
        window_of_shard[int(payload["shard"])] = int(payload["window"])
        started = time.time()
        result = fanout.run(payload)
        done_after_close.append(time.time() - payload["published_at"])
        starts.append((started - payload["published_at"], result.duration))
        return result

    invoker = LocalInvoker(run=run)
    # Collector pauses stop every thread of the stack: reported, as they show in the tail.
    gc_pauses: list[float] = []
    gc_started = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_started[0] = time.perf_counter()
        else:
            gc_pauses.append(time.perf_counter() - gc_started[0])

    gc.callbacks.append(on_gc)
    tune_gc()  # as `ltp-local` does
    windows: list[float] = []
    async with aioredis.Redis.from_url(redis_url) as aclient:
        bridge = RelayBridge(redis=aclient, invoker=invoker, budget_per_second=budget,
                             min_window=min_window, max_window=max_window,
                             on_window=lambda r: windows.append(time.time()))
        task = asyncio.create_task(bridge.run())
        print(json.dumps({"ws_url": gateway.ws_url}), flush=True)
        loop = asyncio.get_running_loop()
        while True:  # one line in -> one JSON status line out; EOF stops
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            stats = bridge.stats
            print(json.dumps({
                "window": bridge.window, "windows": stats.windows, "updates": stats.updates,
                "messages": stats.messages, "invocations": stats.invocations,
                "expected_posts_per_second": stats.expected_posts_per_second,
                "posts": gateway.posts, "window_times": windows[-2000:],
                "fanout_errors": invoker.errors, "reader_errors": stats.reader_errors,
                "folded": invoker.folded, "done_after_close": done_after_close[-5000:],
                "fanout_runs": len(done_after_close),
                "most_posts_per_window": max(posts_per_window.values(), default=0),
                "starts": starts[-2000:],
                "cpu": cpu_seconds(os.getpid()),
                "gc_pauses": len(gc_pauses), "gc_seconds": sum(gc_pauses),
                "gc_max": max(gc_pauses, default=0.0),
            }), flush=True)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await invoker.drain()
    fanout.close()
    await gateway.stop()


# --- helpers of the measuring process ------------------------------------------------------------

@contextlib.contextmanager
def process(argv: list[str], env: dict[str, str] | None = None, *, stdin: bool = False
            ) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **(env or {})}, text=True,
                            stdout=subprocess.PIPE,
                            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def read_until(proc: subprocess.Popen[str], prefix: str, timeout: float = 30.0) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{proc.args[:3]} exited ({proc.poll()}) before {prefix!r}")
        if line.startswith(prefix):
            return line
    raise RuntimeError(f"{prefix!r} not seen in time")


def ask(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("?\n")
    proc.stdin.flush()
    answer: dict[str, Any] = json.loads(proc.stdout.readline())
    return answer


def say(text: str) -> None:
    print(f"  .. {text}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_clients(ws_url: str, clients: int, seconds: float, warmup: float,
                      stack: subprocess.Popen[str], others: dict[str, int]) -> dict[str, Any]:
    import orjson
    from websockets.uri import parse_uri

    rng = random.Random(11)
    measuring = False
    latencies: list[float] = []
    arrivals: list[list[float]] = [[] for _ in range(clients)]
    counts = {"messages": 0, "updates": 0, "snapshots": 0}

    # While measuring, a message is only stamped and kept; it is parsed after the run, so the
    # clients' own CPU does not crowd the system they measure.
    received: list[tuple[int, int, bytes]] = []

    def reader(index: int) -> Any:
        def on_text(raw: bytes) -> None:
            if measuring:
                received.append((time.time_ns() // 1000, index, raw))
            elif orjson.loads(raw).get("type") == "snapshot":
                counts["snapshots"] += 1
        return on_text

    uri = parse_uri(ws_url)
    loop = asyncio.get_running_loop()
    sockets: list[LightClient] = []
    started_at = time.monotonic()
    for index in range(clients):
        _, client = await loop.create_connection(
            lambda i=index: LightClient(ws_url, reader(i)), uri.host, uri.port)  # type: ignore[misc]
        await client.opened
        sockets.append(client)
    say(f"{clients} clients connected in {time.monotonic() - started_at:.1f} s")
    for client in sockets:
        client.send_text(orjson.dumps({"action": "subscribe", "keys": rng.sample(KEYS, 50)}))
    deadline = time.monotonic() + 60
    while counts["snapshots"] < clients and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    say(f"{counts['snapshots']} snapshots in {time.monotonic() - started_at:.1f} s; measuring")
    await asyncio.sleep(warmup)
    before = await loop.run_in_executor(None, ask, stack)
    cpu0 = cpu_seconds(os.getpid())
    others0 = {name: cpu_seconds(pid) for name, pid in others.items()}
    measuring = True
    started = time.time()
    await asyncio.sleep(seconds)
    measuring = False
    ended = time.time()
    after = await loop.run_in_executor(None, ask, stack)
    cpu = cpu_seconds(os.getpid()) - cpu0
    others_cpu = {name: cpu_seconds(pid) - others0[name] for name, pid in others.items()}
    for client in sockets:
        client.close()
    for now_us, index, raw in received:
        message = orjson.loads(raw)
        if message.get("type") == "snapshot":
            counts["snapshots"] += 1
            continue
        if message.get("type") != "screener_ltp_batch_update":
            continue
        counts["messages"] += 1
        arrivals[index].append(now_us / 1e6)
        for update in message["updates"]:
            counts["updates"] += 1
            latencies.append((now_us - update["version"]) / 1000)
    # At most one message per client per window: count each client's messages between
    # consecutive window closes (a message belongs to the window closed just before it).
    closes = [t for t in after["window_times"] if started - 1 <= t <= ended]
    worst = 0
    for times in arrivals:
        per_window: dict[int, int] = {}
        for t in times:
            slot = sum(1 for c in closes if c <= t)
            per_window[slot] = per_window.get(slot, 0) + 1
        worst = max([worst, *per_window.values()])
    return {"latencies": latencies, "counts": counts, "before": before, "after": after,
            "elapsed": ended - started, "client_cpu": cpu, "worst_per_window": worst,
            "others_cpu": others_cpu,
            "snapshots": counts["snapshots"]}


def run_once(args: argparse.Namespace, redis_url: str, clients: int) -> dict[str, Any]:
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    sim_argv = [sys.executable, "-m", "local.dhan_sim.cli", "--port", "0", "--rest-port", "-1",
                "--rate", str(args.rate), "--packets-per-frame", str(args.packets_per_frame),
                "--mode", "quote", "--seed", "3", "--client-id", SIM_CLIENT_ID,
                "--token", SIM_TOKEN]
    with process(sim_argv) as sim:
        feed = read_until(sim, "feed: ").split()[1]
        env = {"DHAN_CLIENT_ID": SIM_CLIENT_ID, "DHAN_ACCESS_TOKEN": SIM_TOKEN,
               "REDIS_URL": redis_url, "DHAN_FEED_URL": feed}
        streamer_argv = [sys.executable, "-m", "streamer", "--keys", ",".join(KEYS),
                         "--no-auto-stop", "--feed-url", feed, "--redis-url", redis_url]
        with process(streamer_argv, env) as streamer:
            stack_argv = [sys.executable, __file__, "--serve-stack", "--redis-url", redis_url,
                          "--budget", str(args.budget), "--min-window", str(args.min_window),
                          "--max-window", str(args.max_window), "--shards", str(args.shards),
                          "--workers", str(args.workers)]
            with process(stack_argv, stdin=True) as stack:
                ws_url = json.loads(read_until(stack, "{"))["ws_url"]
                redis_pid = int(redis.Redis.from_url(redis_url).info("server")["process_id"])
                others = {"simulator": sim.pid, "streamer": streamer.pid, "redis": redis_pid}
                result = asyncio.run(run_clients(ws_url, clients, args.seconds, args.warmup,
                                                 stack, others))
                result["pids"] = {"sim": sim.pid, "streamer": streamer.pid, "stack": stack.pid}
                return result


def report(clients: int, result: dict[str, Any], min_window: float) -> None:
    before, after, elapsed = result["before"], result["after"], result["elapsed"]
    lat = result["latencies"]
    window = after["window"]
    windows = after["windows"] - before["windows"]
    mean_window = elapsed / windows if windows else float("nan")
    ticks = (after["updates"] - before["updates"]) / elapsed
    p50, p99 = percentile(lat, 0.50), percentile(lat, 0.99)
    print(f"\n{clients} clients x 50 of {len(KEYS)} keys, {elapsed:.1f} s measured")
    print(f"  window chosen             {window * 1000:.0f} ms (mean measured "
          f"{mean_window * 1000:.0f} ms over {windows} windows)")
    print(f"  expected posts/s          {after['expected_posts_per_second']:.0f}")
    print(f"  updates into the bridge   {ticks:.0f}/s (conflated per key per window)")
    print(f"  latency publish->client   p50 {p50:.0f} ms, p99 {p99:.0f} ms, "
          f"max {max(lat) if lat else float('nan'):.0f} ms "
          f"(goal p99 <= window + 100 = {window * 1000 + 100:.0f} ms: "
          f"{'met' if p99 <= window * 1000 + 100 else 'NOT met'})")
    runs = after["fanout_runs"] - before["fanout_runs"]
    done = [t * 1000 for t in after["done_after_close"][-runs:]] if runs > 0 else []
    print(f"  fan-out runs done after   p50 {percentile(done, 0.5):.0f} ms, p99 "
          f"{percentile(done, 0.99):.0f} ms from their window's close ({runs} runs)")
    timed = after["starts"][-runs:] if runs > 0 else []
    waited = [r[0] * 1000 for r in timed]
    ran = [r[1] * 1000 for r in timed]
    print(f"    of which waiting to run p50 {percentile(waited, 0.5):.0f} ms, p99 "
          f"{percentile(waited, 0.99):.0f} ms; running p50 {percentile(ran, 0.5):.0f} ms, "
          f"p99 {percentile(ran, 0.99):.0f} ms")
    print(f"  messages/client/s         {result['counts']['messages'] / clients / elapsed:.2f}; "
          f"most posts to one client for one window {after['most_posts_per_window']} "
          f"(counted at the fan-out); most arrivals between two window closes "
          f"{result['worst_per_window']} (a late run can land after the next close)")
    print(f"  updates delivered         {result['counts']['updates'] / elapsed:.0f}/s "
          f"({result['counts']['updates']} in all)")
    print(f"  posts                     {(after['posts'] - before['posts']) / elapsed:.0f}/s; "
          f"stack CPU {(after['cpu'] - before['cpu']) / elapsed * 100:.0f} %, clients CPU "
          f"{result['client_cpu'] / elapsed * 100:.0f} %; fan-out errors "
          f"{after['fanout_errors']}, reader errors {after['reader_errors']}; windows folded "
          f"into a busy shard's next run {after['folded'] - before['folded']}")
    print(f"  stack GC pauses           {after['gc_pauses'] - before['gc_pauses']}, "
          f"{(after['gc_seconds'] - before['gc_seconds']) * 1000:.0f} ms in all, longest "
          f"{after['gc_max'] * 1000:.0f} ms")
    print("  other CPU                 " + ", ".join(
        f"{name} {cpu / elapsed * 100:.0f} %" for name, cpu in result["others_cpu"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--rate", type=float, default=5000.0)
    parser.add_argument("--packets-per-frame", type=int, default=10)
    parser.add_argument("--budget", type=float, default=5000.0)
    parser.add_argument("--min-window", type=float, default=0.25)
    parser.add_argument("--max-window", type=float, default=2.0)
    parser.add_argument("--shards", type=int, default=LOCAL_SHARDS,
                        help="default: what ltp-local uses (one process runs every shard)")
    parser.add_argument("--workers", type=int, default=LOCAL_FANOUT_WORKERS,
                        help="fan-out post threads; default: what ltp-local uses")
    parser.add_argument("--redis-url", default=None,
                        help="default: a private redis-server (Pub/Sub is server-wide)")
    parser.add_argument("--serve-stack", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_stack:
        asyncio.run(serve_stack(args.redis_url, args.budget, args.min_window, args.max_window,
                                args.shards, args.workers))
        return

    from local.redis_server import embedded_redis_server, private_redis_server

    binary = shutil.which("redis-server")
    with (contextlib.nullcontext(None) if args.redis_url else
          private_redis_server(binary) if binary else embedded_redis_server()) as handle:
        redis_url = args.redis_url or handle.url  # type: ignore[union-attr]
        print(f"simulator {args.rate:.0f} ticks/s ({args.packets_per_frame} per frame) over "
              f"{len(KEYS)} keys; budget {args.budget:.0f} posts/s; window "
              f"{args.min_window * 1000:.0f}-{args.max_window * 1000:.0f} ms; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        for clients in args.clients:
            result = run_once(args, redis_url, clients)
            report(clients, result, args.min_window)


if __name__ == "__main__":
    main()
