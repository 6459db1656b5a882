"""Load on the OpenAI-compatible server (lmforge/infer/serve.py), run as a user runs it: in its
own process, with its default limits, talked to over loopback HTTP only.

Phase 1 fires `--concurrency` chat completions at once (`--max-tokens` each, sampled with a
per-request seed) for `--rounds` rounds and reports requests/s, completion tokens/s and
latency percentiles; requests beyond the server's concurrency bound queue (up to its
queue timeout) or get 503, and are counted. Phase 2 sends 100 malformed requests of various
kinds (bad JSON, wrong types, unknown roles, oversized bodies, broken HTTP, ...) and checks
that each gets a 4xx and that the server still answers a good request afterwards.

    python benchmarks/serve_load.py runs/demo/pretrain --rounds 5

Prints a markdown table and writes results-serve_load.json next to this script.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

SERVER = """
import sys
from lmforge.infer.serve import serve
serve(sys.argv[1], port=0, max_concurrent=int(sys.argv[2]), queue_timeout_s=float(sys.argv[3]))
"""
PROMPTS = [
    "What is the meaning of light?",
    "Tell me about rivers and mountains.",
    "Which book is the oldest?",
    "Describe a small house by the water.",
    "What is a dictionary for?",
    "Say something about the earth.",
    "Who wrote the answer to this question?",
    "Name a large tree.",
]


def start_server(
    run: str, max_concurrent: int, queue_timeout_s: float, log
) -> tuple[subprocess.Popen, str]:
    """The server in its own process, on a free port; its URL is read from the line it prints."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, run, str(max_concurrent), str(queue_timeout_s)],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    for line in proc.stdout:
        if m := re.search(r"at (http://[\d.]+:\d+)/ ", line):
            return proc, m.group(1)
    raise SystemExit(f"the server exited before serving (exit code {proc.wait()}); see {log.name}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)  # serve() stops cleanly on Ctrl-C
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def load_phase(url: str, concurrency: int, rounds: int, max_tokens: int) -> dict:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with httpx.Client(base_url=url, timeout=120, limits=limits) as client:

        def one(i: int) -> tuple[float, int, int]:
            body = {
                "model": "bench",
                "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                "max_tokens": max_tokens,
                "temperature": 0.8,
                "seed": i,
            }
            start = time.perf_counter()
            r = client.post("/v1/chat/completions", json=body)
            latency_ms = (time.perf_counter() - start) * 1000
            tokens = r.json()["usage"]["completion_tokens"] if r.status_code == 200 else 0
            return latency_ms, r.status_code, tokens

        one(0)  # warm-up: first-call allocations are not the server's steady state
        results = []
        with ThreadPoolExecutor(concurrency) as pool:
            start = time.perf_counter()
            for r in range(rounds):
                results += pool.map(one, range(r * concurrency, (r + 1) * concurrency))
            wall_s = time.perf_counter() - start
    ok = [(lat, tokens) for lat, status, tokens in results if status == 200]
    latencies = sorted(lat for lat, _ in ok)
    return {
        "requests": len(results),
        "ok": len(ok),
        "statuses": dict(Counter(str(status) for _, status, _ in results)),
        "wall_s": round(wall_s, 2),
        "requests_per_s": round(len(ok) / wall_s, 2),
        "completion_tokens_per_s": round(sum(t for _, t in ok) / wall_s, 1),
        "latency_ms_p50": round(statistics.median(latencies), 1),
        "latency_ms_p95": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 1),
        "latency_ms_max": round(latencies[-1], 1),
    }


def raw_exchange(url: str, data: bytes) -> int:
    """Send bytes that are not a well-formed request; the status code of the answer (0: none)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    return int(reply.split()[1]) if reply.startswith(b"HTTP/") else 0


def malformed_phase(url: str, n: int = 100) -> dict:
    rng = random.Random(0)
    chat = "/v1/chat/completions"
    hello = [{"role": "user", "content": "hi"}]
    bad_bodies = [
        b"{not json",
        b"[1, 2]",
        b"\xff\xfe\x00",
        b"[" * 50_000,
        b'{"messages": []}',
        json.dumps({"messages": [{"role": "wizard", "content": "hi"}]}).encode(),
        json.dumps({"messages": [{"role": "user", "content": 5}]}).encode(),
        json.dumps({"messages": hello, "max_tokens": -1}).encode(),
        json.dumps({"messages": hello, "max_tokens": "32"}).encode(),
        json.dumps({"messages": hello, "max_tokens": 10**6}).encode(),
        json.dumps({"messages": hello, "temperature": "hot"}).encode(),
        json.dumps({"messages": hello, "stop": 5}).encode(),
        json.dumps({"prompt": 5}).encode(),
        b'{"messages": [{"role": "user", "content": "' + b"x" * 1_100_000 + b'"}]}',  # > 1 MB
    ]
    raw = [
        b"HELLO\r\n\r\n",
        b"GET / HTTP/1.1 extra\r\n\r\n",
        b"POST /v1/completions HTTP/1.1\r\nContent-Length: x\r\n"
        b"Content-Type: application/json\r\n\r\n",
    ]
    statuses = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(n):
            kind = i % 5
            if kind == 0:
                path = "/v1/completions" if b"prompt" in bad_bodies[i % len(bad_bodies)] else chat
                r = client.post(
                    path,
                    content=bad_bodies[i % len(bad_bodies)],
                    headers={"Content-Type": "application/json"},
                )
            elif kind == 1:  # random bytes as a JSON body
                noise = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 2000)))
                r = client.post(chat, content=noise, headers={"Content-Type": "application/json"})
            elif kind == 2:  # wrong path, method or content type
                r = rng.choice(
                    [
                        lambda: client.get("/v1/nope"),
                        lambda: client.delete("/v1/models"),
                        lambda: client.get(chat),
                        lambda: client.post(chat, content=b"{}"),
                    ]
                )()
            elif kind == 3:  # a valid body with one field of the wrong type
                body = {"messages": hello, rng.choice(["n", "top_p", "seed", "stream"]): "x"}
                r = client.post(chat, json=body)
            else:
                statuses.append(raw_exchange(url, raw[i % len(raw)]))
                continue
            statuses.append(r.status_code)
        good = client.post(chat, json={"messages": hello, "max_tokens": 8, "temperature": 0})
    return {
        "sent": n,
        "statuses": dict(Counter(str(s) for s in statuses)),
        "all_4xx": all(400 <= s < 500 for s in statuses),
        "good_request_after": good.status_code,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("run", nargs="?", default="runs/demo/pretrain")
    ap.add_argument("--concurrency", type=int, default=8, help="requests in flight at once")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-concurrent", type=int, default=2, help="the server's generation slots")
    ap.add_argument("--queue-timeout", type=float, default=5.0, help="the server's wait for a slot")
    ap.add_argument("--out", default=str(Path(__file__).with_name("results-serve_load.json")))
    args = ap.parse_args()

    with tempfile.NamedTemporaryFile("w", prefix="serve_load-", suffix=".log", delete=False) as log:
        proc, url = start_server(args.run, args.max_concurrent, args.queue_timeout, log)
        try:
            load = load_phase(url, args.concurrency, args.rounds, args.max_tokens)
            malformed = malformed_phase(url)
            alive = proc.poll() is None
        finally:
            stop_server(proc)
    results = {
        "run": args.run,
        "cores": os.cpu_count(),
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "max_tokens": args.max_tokens,
        "server_max_concurrent": args.max_concurrent,
        "server_queue_timeout_s": args.queue_timeout,
        "load": load,
        "malformed": malformed | {"server_alive": alive},
    }
    print(
        f"{args.run}: {args.concurrency} concurrent chat completions x {args.rounds} rounds, "
        f"max_tokens {args.max_tokens}, server slots {args.max_concurrent}, {os.cpu_count()} cores"
    )
    print("| requests | ok | statuses | requests/s | tokens/s | p50 ms | p95 ms | max ms |")
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {load['requests']} | {load['ok']} | {load['statuses']} | {load['requests_per_s']} | "
        f"{load['completion_tokens_per_s']} | {load['latency_ms_p50']:,.0f} | "
        f"{load['latency_ms_p95']:,.0f} | {load['latency_ms_max']:,.0f} |"
    )
    print()
    print("| malformed sent | statuses | all 4xx | good request after | server alive |")
    print("|---|---|---|---|---|")
    print(
        f"| {malformed['sent']} | {malformed['statuses']} | {malformed['all_4xx']} | "
        f"{malformed['good_request_after']} | {alive} |"
    )
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
