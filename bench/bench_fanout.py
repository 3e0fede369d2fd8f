"""Fan-out post rate: `functions.fanout.Fanout` vs a sequential boto3 loop, same messages.

    .venv/bin/python bench/bench_fanout.py                      # 1,000 clients, 10 ms RTT
    .venv/bin/python bench/bench_fanout.py --connections 500 --latency 0.01 --workers 64 128

A local API Gateway runs in its own process (its own core) with `post_latency` = the round
trip API Gateway adds (10 ms by default) and N real WebSocket clients connected to it. This
process registers those N connections in Redis, each subscribed to `--keys-per-connection` of
1,000 keys, and then, for the same window of 1,000 updates:

- sequential: one boto3 `apigatewaymanagementapi` client posting every connection's message
  one after the other (what a naive Lambda loop does);
- fanout: the real fan-out (`Fanout.run`: Redis reads, version claims, one message per
  connection, a bounded thread pool sharing one boto3 client) for each `--workers` value.

Reported per mode: posts, wall time, posts/s, this process's CPU seconds (all threads: boto3,
Redis client, JSON) and posts per CPU-second. Every post is checked as delivered by the
gateway process. On a 2-core machine the gateway process (uvicorn + websockets + N clients)
shares the cores with this one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import LightClient, cpu_seconds  # noqa: E402

KEYS = [f"NSE_EQ:{1000 + i}" for i in range(1000)]


# --- the gateway process -------------------------------------------------------------------------

async def serve(connections: int, latency: float) -> None:
    from websockets.uri import parse_uri

    from local.apigw import GatewayConfig, Handlers, LocalApiGateway

    received = 0
    gateway = LocalApiGateway(Handlers(message=lambda e, c: {"statusCode": 200}),
                              GatewayConfig(post_latency=latency, idle_timeout=3600))
    await gateway.start()

    def count(raw: bytes) -> None:
        nonlocal received
        received += 1

    # Light clients: they share this process with the gateway, whose CPU per post is reported.
    uri = parse_uri(gateway.ws_url)
    loop = asyncio.get_running_loop()
    clients = []
    for _ in range(connections):
        _, client = await loop.create_connection(
            lambda: LightClient(gateway.ws_url, count), uri.host, uri.port)
        await client.opened
        clients.append(client)
    print(json.dumps({"callback_url": gateway.callback_url, "ids": list(gateway.connections)}),
          flush=True)
    while True:  # the parent writes one line per question, then closes stdin
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        await asyncio.sleep(0.3)  # let the last frames land
        print(json.dumps({"received": received, "posts": gateway.posts}), flush=True)
    for client in clients:
        client.close()
    await gateway.stop()


# --- a fan-out "sandbox" process (Lambda-shaped mode) ---------------------------------------------

def serve_fanout(callback_url: str, redis_url: str, shards: int, workers: int) -> None:
    """One warm fan-out process, as one Lambda sandbox: its own boto3 client, Redis client and
    `Fanout`. Per line of JSON payloads it runs them side by side (one thread per payload, as
    concurrent invocations would) and answers one line of results."""
    import redis

    from core.runtime import tune_gc
    from functions.fanout.runner import Fanout
    from realtime.registry import ConnectionRegistry

    client = redis.Redis.from_url(redis_url)
    fanout = Fanout(registry=ConnectionRegistry(redis=client, shards=shards),
                    management=management(callback_url, workers), max_workers=workers,
                    retry_seconds=1.0)
    tune_gc()  # as the Lambda entry point does once wired
    print(json.dumps({"ready": os.getpid()}), flush=True)
    for line in sys.stdin:
        payloads = json.loads(line)
        sys.stdin.readline()  # "go": the parent starts every process at once
        cpu0 = cpu_seconds(os.getpid())
        with ThreadPoolExecutor(max_workers=max(1, len(payloads))) as pool:
            results = list(pool.map(fanout.run, payloads))
        print(json.dumps({"posts": sum(r.posts for r in results),
                          "recipients": sum(r.recipients for r in results),
                          "cpu": cpu_seconds(os.getpid()) - cpu0}), flush=True)
    fanout.close()


# --- the measuring process -----------------------------------------------------------------------

def management(callback_url: str, pool: int) -> Any:
    """`functions.ws.management.management_client`, the fan-out's exact client config, for both
    modes (only the pool size differs), so the comparison measures concurrency alone."""
    import boto3

    from functions.ws.management import management_client

    session = boto3.session.Session(aws_access_key_id="bench", aws_secret_access_key="bench",
                                    region_name="us-east-1")
    return management_client(callback_url, max_pool_connections=pool, session=session)


def window(version: int) -> list[dict[str, Any]]:
    return [{"key": k, "segment": "NSE_EQ", "security_id": k.split(":")[1],
             "ltp": round(1000 + random.random() * 100, 2), "ltt": 1_764_129_688,
             "version": version} for k in KEYS]


def measure(fn: Any, gateway_pid: int) -> tuple[Any, float, float, float]:
    pid = os.getpid()
    cpu0, gw0, t0 = cpu_seconds(pid), cpu_seconds(gateway_pid), time.perf_counter()
    result = fn()
    wall = time.perf_counter() - t0
    return result, wall, cpu_seconds(pid) - cpu0, cpu_seconds(gateway_pid) - gw0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--keys-per-connection", type=int, default=50)
    parser.add_argument("--latency", type=float, default=0.010)
    parser.add_argument("--workers", type=int, nargs="+", default=[32])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shards", type=int, default=16,
                        help="connection shards (WS_SHARDS); the Lambda-shaped mode invokes one "
                             "fan-out per shard")
    parser.add_argument("--processes", type=int, nargs="*", default=[2],
                        help="Lambda-shaped mode: the shards' fan-outs run in this many warm "
                             "processes at once (0 or none: skip)")
    parser.add_argument("--redis-url", default=None,
                        help="default: a private redis-server (its DB is flushed)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-fanout", nargs=2, metavar=("CALLBACK", "REDIS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.connections, args.latency))
        return
    if args.serve_fanout:
        serve_fanout(*args.serve_fanout, args.shards, args.workers[0])
        return

    import redis

    from core.runtime import tune_gc
    from functions.fanout.runner import Fanout
    from local.redis_server import (
        RedisHandle,
        embedded_redis_server,
        private_redis_server,
    )
    from realtime.delivery import build_messages
    from realtime.registry import ConnectionRegistry

    tune_gc()  # both modes run in this process, with the fan-out Lambda's GC settings
    random.seed(7)
    argv = [sys.executable, __file__, "--serve", "--connections", str(args.connections),
            "--latency", str(args.latency)]
    server = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              cwd=ROOT)
    assert server.stdin is not None and server.stdout is not None
    info = json.loads(server.stdout.readline())

    def delivered() -> int:
        assert server.stdin is not None and server.stdout is not None
        server.stdin.write("?\n")
        server.stdin.flush()
        return int(json.loads(server.stdout.readline())["received"])

    binary = shutil.which("redis-server")
    with (contextlib.nullcontext(RedisHandle(args.redis_url, "given")) if args.redis_url else
          private_redis_server(binary) if binary else embedded_redis_server()) as handle:
        client = redis.Redis.from_url(handle.url)
        client.flushdb()
        registry = ConnectionRegistry(redis=client, shards=1)
        subscriptions: dict[str, frozenset[str]] = {}
        for cid in info["ids"]:
            registry.connect(cid, meta={})
            keys = random.sample(KEYS, args.keys_per_connection)
            registry.subscribe(cid, keys)
            subscriptions[cid] = frozenset(keys)
        print(f"{len(info['ids'])} WebSocket clients, {args.keys_per_connection} of "
              f"{len(KEYS)} keys each, @connections round trip +{args.latency * 1000:.0f} ms "
              f"(gateway in pid {server.pid}), Redis {handle.kind}")
        rows: list[tuple[str, int, float, float, float]] = []

        # Sequential: the same messages, one post after the other.
        api = management(info["callback_url"], 1)
        updates = {u["key"]: u for u in window(1)}
        messages = [(cid, build_messages([updates[k] for k in sorted(keys) if k in updates],
                                         timestamp="2026-11-26T04:00:00.000Z",
                                         max_bytes=32 * 1024))
                    for cid, keys in subscriptions.items()]
        api.post_to_connection(ConnectionId=info["ids"][0], Data=b"warm-up")
        before = delivered()

        def sequential() -> int:
            posts = 0
            for cid, parts in messages:
                for data in parts:
                    api.post_to_connection(ConnectionId=cid, Data=data)
                    posts += 1
            return posts

        posts, wall, cpu, gw_cpu = measure(sequential, server.pid)
        assert delivered() - before == posts, "sequential posts were not all delivered"
        rows.append(("sequential boto3 loop", posts, wall, cpu, gw_cpu))

        version = 1
        for workers in args.workers:
            fanout = Fanout(registry=registry, management=management(info["callback_url"],
                                                                     workers),
                            max_workers=workers, retry_seconds=1.0)
            version += 1
            fanout.run({"shard": 0, "updates": window(version)})  # warm the pool
            for _ in range(args.rounds):
                version += 1
                payload = {"shard": 0, "updates": window(version)}
                before = delivered()
                result, wall, cpu, gw_cpu = measure(partial(fanout.run, payload), server.pid)
                assert result.posts == result.recipients == len(info["ids"]), result
                assert delivered() - before == result.posts, "fan-out posts not all delivered"
                rows.append((f"fanout, {workers} workers", result.posts, wall, cpu, gw_cpu))
            fanout.close()

        # Lambda-shaped: the same connections over `--shards` shards, one fan-out per shard,
        # run at once by warm processes (Lambda runs each invocation in its own sandbox).
        if any(args.processes):
            sharded = ConnectionRegistry(redis=client, shards=args.shards)
            for cid, keys in subscriptions.items():
                registry.remove(cid, shard=0)
                sharded.connect(cid, meta={})
                sharded.subscribe(cid, sorted(keys))
        for count, workers in ((n, w) for n in args.processes if n > 0 for w in args.workers):
            name = f"{args.shards} shards, {count}x{workers}"
            procs = [subprocess.Popen(
                [sys.executable, __file__, "--serve-fanout", info["callback_url"], handle.url,
                 "--shards", str(args.shards), "--workers", str(workers)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
                for _ in range(count)]
            try:
                for proc in procs:
                    assert proc.stdout is not None
                    json.loads(proc.stdout.readline())  # ready
                for round_ in range(args.rounds + 1):  # the first round warms the processes
                    version += 1
                    shares: list[list[dict[str, Any]]] = [[] for _ in procs]
                    for shard in range(args.shards):
                        shares[shard % count].append({"shard": shard,
                                                      "updates": window(version)})
                    for proc, share in zip(procs, shares, strict=True):
                        assert proc.stdin is not None
                        proc.stdin.write(json.dumps(share) + "\n")
                        proc.stdin.flush()
                    time.sleep(0.5)  # every process has parsed its payloads
                    before = delivered()
                    gw0, t0 = cpu_seconds(server.pid), time.perf_counter()
                    for proc in procs:
                        assert proc.stdin is not None
                        proc.stdin.write("go\n")
                        proc.stdin.flush()
                    answers = [json.loads(proc.stdout.readline()) for proc in procs
                               if proc.stdout is not None]
                    wall = time.perf_counter() - t0
                    gw_cpu = cpu_seconds(server.pid) - gw0
                    posts = sum(a["posts"] for a in answers)
                    assert posts == sum(a["recipients"] for a in answers) == len(info["ids"])
                    assert delivered() - before == posts, "fan-out posts not all delivered"
                    if round_:
                        rows.append((name, posts, wall, sum(a["cpu"] for a in answers), gw_cpu))
            finally:
                for proc in procs:
                    if proc.stdin is not None:
                        proc.stdin.close()
                    proc.wait(30)
        client.flushdb()
        client.close()
    server.stdin.close()
    server.wait(30)

    base_rate = rows[0][1] / rows[0][2]
    print(f"\n{'mode':<24}{'posts':>7}{'wall s':>9}{'posts/s':>10}{'CPU s':>8}"
          f"{'posts/CPU-s':>13}{'x sequential':>14}{'gateway CPU s':>15}")
    for name, posts, wall, cpu, gw_cpu in rows:
        rate = posts / wall
        print(f"{name:<24}{posts:>7}{wall:>9.2f}{rate:>10.0f}{cpu:>8.2f}"
              f"{posts / cpu if cpu else float('inf'):>13.0f}{rate / base_rate:>14.1f}"
              f"{gw_cpu:>15.2f}")
    for label, fan in (("one process", [r for r in rows[1:] if "shards" not in r[0]]),
                       ("Lambda-shaped", [r for r in rows[1:] if "shards" in r[0]])):
        if not fan:
            continue
        rates = sorted(r[1] / r[2] for r in fan)
        median, best = rates[len(rates) // 2], rates[-1]
        print(f"fan-out post rate, {label}: median {median:.0f}/s, best {best:.0f}/s = "
              f"{median / base_rate:.1f}x / {best / base_rate:.1f}x the sequential loop "
              f"({base_rate:.0f}/s)")

if __name__ == "__main__":
    main()
