"""Server throughput and latency under N concurrent clients (N = 1, 8, 32), 127.0.0.1 only.

    python bench/bench_server.py --model runs/demo/base [--requests 32] [--max-tokens 32]

Starts `llmrecipe serve` on a free port, sends chat completions from N client threads (each request
asks for exactly --max-tokens new tokens: temperature 1, no stop), stops the server, prints a table.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor


def call(url: str, max_tokens: int, i: int) -> tuple[float, int]:
    messages = [{"role": "user", "content": f"Tell me a story number {i}."}]
    body = json.dumps({"model": "base", "messages": messages,
                       "max_tokens": max_tokens, "temperature": 1.0, "seed": i}).encode()
    t0 = time.perf_counter()
    req = urllib.request.Request(f"{url}/chat/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        usage = json.loads(r.read())["usage"]
    return time.perf_counter() - t0, usage["completion_tokens"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--requests", type=int, default=32, help="requests per client count")
    ap.add_argument("--max-tokens", type=int, default=32)
    a = ap.parse_args()
    proc = subprocess.Popen([sys.executable, "-m", "llmrecipe", "serve", "--model", a.model, "--port", "0",
                             "--device", "cpu", "--name", "base"], stdout=subprocess.PIPE, text=True)
    try:
        url = re.search(r"(http://127\.0\.0\.1:\d+/v1)", proc.stdout.readline()).group(1)
        call(url, a.max_tokens, -1)  # warm-up
        print("| clients | requests | req/s | new tokens/s | p50 latency s | p95 latency s |")
        print("|---:|---:|---:|---:|---:|---:|")
        for n in map(int, a.clients.split(",")):
            t0 = time.perf_counter()
            with ThreadPoolExecutor(max_workers=n) as pool:
                res = list(pool.map(lambda i: call(url, a.max_tokens, i), range(a.requests)))
            wall = time.perf_counter() - t0
            lat = sorted(r[0] for r in res)
            p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))]
            print(f"| {n} | {len(res)} | {len(res) / wall:.2f} | {sum(r[1] for r in res) / wall:,.0f} | "
                  f"{statistics.median(lat):.2f} | {p95:.2f} |", flush=True)
    finally:
        proc.kill()


if __name__ == "__main__":
    main()
