"""Ingest throughput: our streamer vs the seed's path vs a bare WebSocket reader.

    .venv/bin/python bench/bench_ingest.py            # 3 runs, 1 and 100 packets per frame
    .venv/bin/python bench/bench_ingest.py --runs 5 --scale 2 --redis-url redis://127.0.0.1:6379/14

Three client paths read the same simulated DhanHQ v2 feed (`ltp-sim --rate 0 --mode quote`
in a subprocess, replaying pre-built frames as fast as it can; `--max-ticks N` price packets,
the subscribe-time ones included, then silence), one path at a time, each in a fresh process:

- ours: the real `streamer.service.Streamer` (feed -> decode every packet -> coalesce per key ->
  one pipeline of `SET ltp:SEG:ID p EX 30` + one batch PUBLISH every few ms) into Redis;
  timed from its first price packet until a Redis flush that includes the N-th tick has
  completed; afterwards every subscribed key must hold a price with a TTL <= 30 s.
- seed: the path the Rails seed describes, in Python: the official SDK's `MarketFeed`
  (`get_data()` in a loop; it parses only the first packet of each frame), then per delivered
  tick a synchronous redis-py `SETEX ltp:SEG:ID 30 price` and `PUBLISH live_ltp_updates json`.
  Its figure is what it actually delivered to Redis; with many packets per frame it loses the
  rest, and that is reported as such (`ticks sent` vs `delivered`).
- bare: a `websockets` client that only walks the packet headers and counts price packets: the
  ceiling for any Python client of this feed on this machine.

Ratios are taken within a run (same machine load) and the median over runs is printed. The
machine may be shared: `sim CPU` near 100 % means the simulator, not the client, set the pace.
`CPU us/tick` is the client process's own CPU time (user + system) per delivered tick; for
`ours` the Redis server's CPU is shown separately.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402  (the benchmark folder is not a package)

PATHS = ("ours", "seed", "bare")
PACKETS_PER_FRAME = (1, 100)
# Price packets the simulator sends per (path, packets per frame), sized for >= ~2 s each on a
# small machine; --scale multiplies them all.
DEFAULT_TICKS: dict[tuple[str, int], int] = {
    ("ours", 1): 300_000,
    ("seed", 1): 20_000,
    ("bare", 1): 300_000,
    ("ours", 100): 2_000_000,
    ("seed", 100): 2_000_000,
    ("bare", 100): 4_000_000,
}
PRICE_CODES = frozenset({2, 4, 8})  # ticker, quote, full
FIRST_SECURITY_ID = 10_001
SEED_PRICE_TYPES = frozenset({"Ticker Data", "Quote Data", "Full Data"})

GOAL_VS_SEED = 10.0
GOAL_VS_BARE = 0.80
GOAL_MANY_PER_FRAME = 150_000.0


def security_ids(count: int) -> list[int]:
    return list(range(FIRST_SECURITY_ID, FIRST_SECURITY_ID + count))


def ltp_keys(count: int) -> list[str]:
    return [f"ltp:NSE_EQ:{sid}" for sid in security_ids(count)]


def check_redis(redis_url: str, count: int) -> dict[str, Any]:
    """How many subscribed keys hold a price, and their TTL range (the sanity check)."""
    import redis

    keys = ltp_keys(count)
    with redis.Redis.from_url(redis_url) as client:
        values = client.mget(keys)
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.ttl(key)
        ttls = [t for t in pipe.execute() if t >= 0]
    prices = [float(v) for v in values if v is not None]
    return {
        "keys_with_price": len(prices),
        "ttl_min": min(ttls, default=None),
        "ttl_max": max(ttls, default=None),
        "positive_prices": all(p > 0 for p in prices),
    }


# -- workers (each runs in its own process) ------------------------------------------------


def worker_ours(feed: str, ticks: int, instruments: int, redis_url: str) -> dict[str, Any]:
    from redis.asyncio import Redis

    from core.instruments import parse_keys
    from streamer.market_hours import MarketHours
    from streamer.service import Streamer
    from streamer.settings import CredentialSource, Settings

    keys = tuple(parse_keys([f"NSE_EQ:{sid}" for sid in security_ids(instruments)]))
    settings = Settings(
        redis_url=redis_url, feed_url=feed, mode="quote", keys=keys,
        instance_id="bench-ingest", hours=MarketHours(always_open=True), auto_stop=False,
        log_level="WARNING",
    )  # fmt: skip
    credentials = CredentialSource(
        environ={"DHAN_CLIENT_ID": common.SIM_CLIENT_ID, "DHAN_ACCESS_TOKEN": common.SIM_TOKEN}
    )

    async def main() -> dict[str, Any]:
        redis = Redis.from_url(redis_url)
        streamer = Streamer(settings, redis=redis, credentials=credentials)
        coalescer, sink = streamer.coalescer, streamer.sink
        done = asyncio.Event()
        mark: dict[str, float] = {}
        flush = sink.flush

        # Measurement only: the flush that drains the N-th tick marks the end (the drain is
        # synchronous at the start of `flush`, so the tick count read here is what it writes).
        async def timed_flush() -> bool:
            seen = coalescer.ticks
            ok = await flush()
            if ok and seen >= ticks and not done.is_set():
                mark["end"], mark["end_cpu"] = time.perf_counter(), time.process_time()
                mark["ticks"] = seen
                done.set()
            return ok

        sink.flush = timed_flush  # type: ignore[method-assign]
        runner = asyncio.create_task(streamer.run())
        while coalescer.ticks == 0:  # the first price packet starts the clock
            if runner.done():
                runner.result()
                raise RuntimeError("streamer stopped before the first tick")
            await asyncio.sleep(0.0005)
        start, start_cpu = time.perf_counter(), time.process_time()
        lags: list[float] = []

        async def probe_loop_lag() -> None:  # how late a 10 ms timer fires while ingesting
            while True:
                before = time.perf_counter()
                await asyncio.sleep(0.01)
                lags.append(time.perf_counter() - before - 0.01)

        probe = asyncio.create_task(probe_loop_lag())
        try:
            async with asyncio.timeout(600):
                await done.wait()
        finally:
            probe.cancel()
            streamer.request_stop("benchmark done")
            async with asyncio.timeout(15):
                await runner
            await redis.aclose()
        return {
            "delivered": int(mark["ticks"]),
            "seconds": mark["end"] - start,
            "cpu": mark["end_cpu"] - start_cpu,
            "flushes": sink.flushes,
            "published": sink.published,
            "keys_written": sink.written,
            "stale": coalescer.stale,
            "frames": sum(c.frames for c in streamer.connections.values()),
            "loop_lag_max_ms": 1000 * max(lags, default=0.0),
            "loop_lag_p99_ms": 1000 * sorted(lags)[int(0.99 * (len(lags) - 1))] if lags else 0.0,
            "subscribe_messages": sum(
                c.subscribe_messages for c in streamer.connections.values()
            ),
            "largest_subscribe": max(
                (c.largest_message for c in streamer.connections.values()), default=0
            ),
        }

    result = asyncio.run(main())
    result.update(check_redis(redis_url, instruments))
    return result


def worker_seed(
    feed: str, ticks: int, instruments: int, redis_url: str, idle: float
) -> dict[str, Any]:
    import redis
    from dhanhq import DhanContext, MarketFeed

    MarketFeed.market_feed_wss = feed
    context = DhanContext(common.SIM_CLIENT_ID, common.SIM_TOKEN)
    instrument_list = [(MarketFeed.NSE, str(sid), MarketFeed.Quote) for sid in
                       security_ids(instruments)]  # fmt: skip
    market_feed = MarketFeed(context, instrument_list, version="v2")
    client = redis.Redis.from_url(redis_url)
    market_feed.run_forever()  # connects and subscribes (in messages of 100)

    # The SDK has no receive timeout: once the simulator has sent its N ticks, a watchdog
    # thread aborts the socket after `idle` seconds without a frame, ending the loop below.
    last_frame = [time.monotonic()]
    stop_watchdog = threading.Event()

    def watchdog() -> None:
        while not stop_watchdog.wait(0.1):
            if time.monotonic() - last_frame[0] > idle:
                ws = market_feed.ws
                if ws is not None:
                    market_feed.loop.call_soon_threadsafe(ws.transport.abort)
                return

    threading.Thread(target=watchdog, daemon=True).start()
    delivered = frames = 0
    start = start_cpu = end = end_cpu = 0.0
    get_exchange_segment = market_feed.get_exchange_segment
    while delivered < ticks:
        try:
            data = market_feed.get_data()
        except Exception:  # the watchdog's abort (or the feed going away) ends the stream
            break
        last_frame[0] = time.monotonic()
        frames += 1
        if not isinstance(data, dict) or data.get("type") not in SEED_PRICE_TYPES:
            continue
        if delivered == 0:
            start, start_cpu = time.perf_counter(), time.process_time()
        # What the seed does per tick (websocket_tick_streamer.rb#handle_tick).
        segment = get_exchange_segment(data["exchange_segment"])
        security_id = str(data["security_id"])
        ltp = float(data["LTP"])
        client.setex(f"ltp:{segment}:{security_id}", 30, str(ltp))
        client.publish("live_ltp_updates", json.dumps({
            "type": "screener_ltp_update",
            "symbol": None,
            "instrument_id": None,
            "ltp": ltp,
            "timestamp": datetime.now(UTC).isoformat(),
            "source": "websocket",
            "segment": segment,
            "security_id": security_id,
        }))  # fmt: skip
        delivered += 1
        end, end_cpu = time.perf_counter(), time.process_time()
    stop_watchdog.set()
    client.close()
    result: dict[str, Any] = {
        "delivered": delivered,
        "seconds": end - start,
        "cpu": end_cpu - start_cpu,
        "frames": frames,
    }
    result.update(check_redis(redis_url, instruments))
    return result


def worker_bare(feed: str, ticks: int, instruments: int) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    from local.dhan_sim.client import feed_url, subscribe

    keys = [("NSE_EQ", sid) for sid in security_ids(instruments)]
    price_codes = PRICE_CODES

    async def main() -> dict[str, Any]:
        url = feed_url(feed, token=common.SIM_TOKEN, client_id=common.SIM_CLIENT_ID)
        count = frames = 0
        start = start_cpu = 0.0
        async with connect(url, compression=None, max_size=2**20) as ws:
            for first in range(0, len(keys), 100):
                await ws.send(subscribe("quote", keys[first : first + 100]))
            async for message in ws:
                if isinstance(message, str):
                    continue
                frames += 1
                before = count
                offset, end = 0, len(message)
                while offset < end:  # walk the headers: code, then the little-endian length
                    if message[offset] in price_codes:
                        count += 1
                    offset += message[offset + 1] | (message[offset + 2] << 8)
                if before == 0 and count:
                    start, start_cpu = time.perf_counter(), time.process_time()
                if count >= ticks:
                    break
        return {
            "delivered": count,
            "seconds": time.perf_counter() - start,
            "cpu": time.process_time() - start_cpu,
            "frames": frames,
        }

    return asyncio.run(main())


def worker_main(args: argparse.Namespace) -> None:
    if args.worker == "ours":
        result = worker_ours(args.feed, args.ticks, args.instruments, args.redis_url)
    elif args.worker == "seed":
        result = worker_seed(args.feed, args.ticks, args.instruments, args.redis_url, args.idle)
    else:
        result = worker_bare(args.feed, args.ticks, args.instruments)
    print(json.dumps(result), flush=True)


# -- orchestration -------------------------------------------------------------------------


def measure(
    path: str, ppf: int, ticks: int, args: argparse.Namespace, redis_url: str
) -> dict[str, Any]:
    common.flush_db(redis_url)
    with common.simulator(packets_per_frame=ppf, max_ticks=ticks) as sim:
        sim_cpu, redis_cpu = sim.cpu(), common.redis_cpu(redis_url)
        argv = [__file__, "--worker", path, "--feed", sim.url, "--ticks", str(ticks),
                "--instruments", str(args.instruments), "--redis-url", redis_url,
                "--idle", str(args.idle)]  # fmt: skip
        result = common.run_worker(argv, timeout=900)
        result["sim_cpu"] = sim.cpu() - sim_cpu
    result["redis_cpu"] = common.redis_cpu(redis_url) - redis_cpu
    result["sent"] = ticks
    result["rate"] = result["delivered"] / result["seconds"] if result["seconds"] > 0 else 0.0
    common.flush_db(redis_url)
    return result


def describe(path: str, ppf: int, r: dict[str, Any], instruments: int) -> str:
    extra = ""
    if path == "ours":
        extra = (f" flushes={r['flushes']} published={r['published']}"
                 f" keys_written={r['keys_written']} subscribe_msgs={r['subscribe_messages']}"
                 f" (<= {r['largest_subscribe']} instruments) loop lag p99/max"
                 f" {r['loop_lag_p99_ms']:.1f}/{r['loop_lag_max_ms']:.1f} ms")
    return (f"  {path:<4} ppf={ppf:<3} sent={r['sent']:>9,} delivered={r['delivered']:>9,} "
            f"in {r['seconds']:.2f}s = {r['rate']:>11,.0f} ticks/s  "
            f"cpu={1e6 * r['cpu'] / max(1, r['delivered']):.2f}us/tick  "
            f"redis={r['redis_cpu']:.2f}s sim={r['sim_cpu']:.2f}s"
            + (f"  keys={r['keys_with_price']}/{instruments} ttl={r['ttl_min']}..{r['ttl_max']}s"
               if "keys_with_price" in r else "")
            + extra)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--instruments", type=int, default=1000)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every tick count")
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--ppf", default=",".join(map(str, PACKETS_PER_FRAME)),
                        help="packets per frame to test, comma-separated")  # fmt: skip
    parser.add_argument("--redis-url", default=None,
                        help="Redis to write into (default: a private redis-server)")
    parser.add_argument("--idle", type=float, default=1.0,
                        help="seed path: seconds without a frame that end its stream")
    parser.add_argument("--worker", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--feed", help=argparse.SUPPRESS)
    parser.add_argument("--ticks", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(args)
        return 0

    paths = [p for p in args.paths.split(",") if p]
    ppfs = [int(p) for p in args.ppf.split(",") if p]
    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    ratios: dict[tuple[str, int], list[float]] = {}
    with common.bench_redis(args.redis_url) as redis_url:
        print(f"redis {redis_url}; {args.instruments} NSE_EQ instruments, quote mode, "
              f"{args.runs} runs", flush=True)  # fmt: skip
        for run in range(args.runs):
            print(f"run {run + 1}/{args.runs}", flush=True)
            for ppf in ppfs:
                # Rotate the order so that no path always runs first (or last) on a busy box.
                order = paths[run % len(paths):] + paths[: run % len(paths)]
                got: dict[str, dict[str, Any]] = {}
                for path in order:
                    ticks = int(DEFAULT_TICKS[(path, ppf)] * args.scale)
                    got[path] = r = measure(path, ppf, ticks, args, redis_url)
                    results.setdefault((path, ppf), []).append(r)
                    print(describe(path, ppf, r, args.instruments), flush=True)
                _same_run_ratios(got, ppf, ratios)
    print()
    print(report(results, ratios, ppfs, paths, args.instruments))
    return 0


def _same_run_ratios(
    got: dict[str, dict[str, Any]], ppf: int, ratios: dict[tuple[str, int], list[float]]
) -> None:
    bare, seed, ours = got.get("bare"), got.get("seed"), got.get("ours")
    for path, r in got.items():
        if bare and bare["rate"]:
            ratios.setdefault((f"{path}/bare", ppf), []).append(r["rate"] / bare["rate"])
    if ours and seed and seed["rate"]:
        ratios.setdefault(("ours/seed", ppf), []).append(ours["rate"] / seed["rate"])
    if ours and bare and ours["cpu"] and bare["cpu"]:
        per_tick = ours["cpu"] / ours["delivered"], bare["cpu"] / bare["delivered"]
        ratios.setdefault(("cpu bare/ours", ppf), []).append(per_tick[1] / per_tick[0])


def report(
    results: dict[tuple[str, int], list[dict[str, Any]]],
    ratios: dict[tuple[str, int], list[float]],
    ppfs: Sequence[int],
    paths: Sequence[str],
    instruments: int,
) -> str:
    med = common.median

    def ratio(name: str, ppf: int) -> float | None:
        values = ratios.get((name, ppf))
        return med(values) if values else None

    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    rows = []
    for ppf in ppfs:
        for path in paths:
            runs = results.get((path, ppf))
            if not runs:
                continue
            rate = med([r["rate"] for r in runs])
            cpu = med([1e6 * r["cpu"] / max(1, r["delivered"]) for r in runs])
            sim_busy = med([r["sim_cpu"] / r["seconds"] if r["seconds"] else 0 for r in runs])
            keys = med([r.get("keys_with_price", 0) for r in runs])
            rows.append([
                path, str(ppf), f"{med([r['sent'] for r in runs]):,.0f}",
                f"{med([r['delivered'] for r in runs]):,.0f}", f"{rate:,.0f}",
                fmt(ratio(f"{path}/bare", ppf), ".2f"),
                fmt(ratio("ours/seed", ppf), ".1f") if path == "ours" else "",
                f"{cpu:.2f}", f"{100 * sim_busy:.0f}%",
                f"{keys:.0f}/{instruments}" if path != "bare" else "",
            ])  # fmt: skip
    header = ["path", "pkts/frame", "ticks sent", "delivered", "ticks/s", "vs bare",
              "ours/seed", "CPU us/tick", "sim CPU", "keys in Redis"]  # fmt: skip
    lines = [f"medians of {max((len(v) for v in results.values()), default=0)} runs "
             "(ratios: median of same-run ratios)", common.table(header, rows), ""]  # fmt: skip

    def verdict(ok: bool | None) -> str:
        return "n/a " if ok is None else ("PASS" if ok else "FAIL")

    vs_seed, vs_bare = ratio("ours/seed", 1), ratio("ours/bare", 1)
    many = results.get(("ours", 100))
    many_rate = med([r["rate"] for r in many]) if many else None
    cpu_vs_bare = ratio("cpu bare/ours", 1)
    lines += [
        f"{verdict(None if vs_seed is None else vs_seed >= GOAL_VS_SEED)}  ingest >= "
        f"{GOAL_VS_SEED:.0f}x the seed's path (1 packet/frame): {fmt(vs_seed, '.1f')}x",
        f"{verdict(None if vs_bare is None else vs_bare >= GOAL_VS_BARE)}  ingest >= "
        f"{GOAL_VS_BARE:.0%} of the bare reader (1 packet/frame): {fmt(vs_bare, '.0%')}"
        f"  (by CPU per tick: {fmt(cpu_vs_bare, '.0%')})",
        f"{verdict(None if many_rate is None else many_rate >= GOAL_MANY_PER_FRAME)}  >= "
        f"{GOAL_MANY_PER_FRAME:,.0f} ticks/s with 100 packets/frame: {fmt(many_rate, ',.0f')}",
    ]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
