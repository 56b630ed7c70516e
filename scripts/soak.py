#!/usr/bin/env python3
"""Soak test: keeps a running evalserver under steady, moderate, mixed load
for a long time and reports whether its memory, threads and latency stay
flat (issue 7). Not a CI test: run it by hand or on the device.

    scripts/soak.py --server build/server/evalserver --model DIR \
        [--server-args "--device cuda"] --minutes 60 --concurrency 16 \
        --out soak.jsonl

It starts the server itself (so that it can read /proc/PID/status), then
runs `concurrency` client threads in a loop, each sending a random request
(plain completions of random length, streamed completions, echo+logprobs
scoring, chat, and now and then a stream cut after a few events). Every
`--interval` seconds it writes one JSON line: requests done and failed in
the interval, latency p50/p95 of the non-streamed completions normalised
per generated token, the server's RSS and thread count, and the KV blocks
in use. At the end it fits a least-squares line to RSS and to the per-token
latency over the intervals after the first 10% (warm-up) and prints the
slopes per hour as the last line; exit status 1 if any request failed
unexpectedly, or the server died.
"""
import argparse
import json
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

import requests


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def metrics(base):
    out = {}
    for line in requests.get(base + "/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


def slope_per_hour(xs, ys):
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx * 3600.0


class Load:
    def __init__(self, base, model, seed):
        self.base, self.model = base, model
        self.lock = threading.Lock()
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.reset()

    def reset(self):
        self.done, self.failed, self.per_token_ms, self.errors = 0, 0, [], []

    def take(self):
        with self.lock:
            snap = (self.done, self.failed, self.per_token_ms, self.errors)
            self.reset()
        return snap

    def words(self, rng, n):
        vocab = ["the", "model", "answer", "question", "river", "seven", "blue", "why",
                 "count", "paper", "light", "over", "under", "score", "value", "table"]
        return " ".join(rng.choice(vocab) for _ in range(n))

    def one(self, rng):
        kind = rng.choices(["plain", "stream", "score", "chat", "cut"], [5, 3, 2, 2, 1])[0]
        prompt = self.words(rng, rng.randint(8, 400))
        max_tokens = rng.randint(8, 96)
        body = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens,
                "temperature": rng.choice([0, 0.7]), "seed": rng.randint(0, 1 << 30)}
        t0 = time.monotonic()
        if kind == "plain":
            r = requests.post(self.base + "/v1/completions", json=body, timeout=300)
            r.raise_for_status()
            n = r.json()["usage"]["completion_tokens"]
            return (time.monotonic() - t0) * 1000.0 / max(n, 1)
        if kind == "score":
            body.update(max_tokens=1, echo=True, logprobs=1)
            requests.post(self.base + "/v1/completions", json=body,
                          timeout=300).raise_for_status()
            return None
        if kind == "chat":
            chat = {"model": self.model, "max_tokens": max_tokens,
                    "messages": [{"role": "user", "content": prompt}]}
            requests.post(self.base + "/v1/chat/completions", json=chat,
                          timeout=300).raise_for_status()
            return None
        body["stream"] = True
        with requests.post(self.base + "/v1/completions", json=body, stream=True,
                           timeout=300) as r:
            r.raise_for_status()
            events = 0
            for line in r.iter_lines():
                if line.startswith(b"data: "):
                    events += 1
                    if kind == "cut" and events >= 3:
                        break  # closing the response drops the connection
                    if line == b"data: [DONE]":
                        break
        return None

    def worker(self, seed):
        rng = random.Random(seed)
        while not self.stop.is_set():
            try:
                per_tok = self.one(rng)
                with self.lock:
                    self.done += 1
                    if per_tok is not None:
                        self.per_token_ms.append(per_tok)
            except Exception as e:  # recorded, reported, and fails the run
                with self.lock:
                    self.failed += 1
                    self.errors.append(repr(e)[:200])
                time.sleep(0.5)


def pct(xs, q):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--server-args", default="")
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--interval", type=float, default=30)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--out", default="soak.jsonl")
    ap.add_argument("--log", default="soak-server.log")
    args = ap.parse_args()

    port = free_port()
    cmd = [args.server, "--model", args.model, "--port", str(port),
           "--served-model-name", "soak"] + shlex.split(args.server_args)
    log = open(args.log, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode}; see {args.log}")
        try:
            if requests.get(base + "/health", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(0.5)

    load = Load(base, "soak", 0)
    threads = [threading.Thread(target=load.worker, args=(i,), daemon=True)
               for i in range(args.concurrency)]
    for t in threads:
        t.start()
    rows, t_start, total_failed, died = [], time.monotonic(), 0, False
    with open(args.out, "w") as out:
        while time.monotonic() - t_start < args.minutes * 60:
            time.sleep(args.interval)
            if proc.poll() is not None:
                died = True
                break
            done, failed, per_tok, errors = load.take()
            total_failed += failed
            st, m = proc_status(proc.pid), metrics(base)
            row = {"t_s": round(time.monotonic() - t_start, 1), "done": done, "failed": failed,
                   "p50_ms_per_token": pct(per_tok, 0.5), "p95_ms_per_token": pct(per_tok, 0.95),
                   "rss_mb": int(st["VmRSS"].split()[0]) / 1024.0,
                   "threads": int(st["Threads"]),
                   "kv_usage_perc": m.get("evalserver_kv_cache_usage_perc"),
                   "connections_open": m.get("evalserver_http_connections_open"),
                   "errors": errors[:3]}
            rows.append(row)
            out.write(json.dumps(row) + "\n")
            out.flush()
    load.stop.set()
    for t in threads:
        t.join(timeout=330)
    steady = rows[max(1, len(rows) // 10):]
    lat = [r for r in steady if r["p50_ms_per_token"] is not None]
    summary = {
        "minutes": round((time.monotonic() - t_start) / 60, 1),
        "requests": sum(r["done"] for r in rows), "failed": total_failed,
        "server_died": died,
        "rss_mb_first_last": [rows[0]["rss_mb"], rows[-1]["rss_mb"]] if rows else None,
        "rss_mb_per_hour": round(slope_per_hour([r["t_s"] for r in steady],
                                                [r["rss_mb"] for r in steady]), 2),
        "threads_min_max": [min(r["threads"] for r in rows), max(r["threads"] for r in rows)]
        if rows else None,
        "p50_ms_per_token_first_last": [lat[0]["p50_ms_per_token"], lat[-1]["p50_ms_per_token"]]
        if lat else None,
        "p50_ms_per_token_per_hour": round(slope_per_hour(
            [r["t_s"] for r in lat], [r["p50_ms_per_token"] for r in lat]), 3),
    }
    print(json.dumps(summary), flush=True)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    sys.exit(1 if total_failed or died else 0)


if __name__ == "__main__":
    main()
