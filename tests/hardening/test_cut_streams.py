"""1,000 streams cut by the client mid-way, 48 at a time: nothing may stay
behind. Each request asks for 64 tokens and is dropped (FIN, or RST for
one in four) after its first three SSE events. Afterwards, with the server
idle, /metrics must show every KV block free (evictable prefix blocks count
as free), nothing running or waiting, the client connections back to their
idle count, and every request finished (aborted, or ended if it beat the
cut); and the process's thread count and RSS (/proc/PID/status) must not
grow between the first 200 cuts and the last 800.

test_faults.py cuts ~100 streams at every point of a request's life; this
file is about volume: a leak of a few hundred bytes per request, a thread
per connection, or a KV block lost to one race in a thousand shows here.
"""
import concurrent.futures as cf
import json
import socket
import struct
import time

N_WARMUP, N_TOTAL, WORKERS = 200, 1000, 48
MAX_TOKENS, EVENTS_BEFORE_CUT = 64, 3
# The KV cache's pages are touched lazily, block by block, so a big cache
# makes RSS climb for thousands of requests without any leak. 0.004 GiB is
# 512 blocks of 16 tokens: the warm-up touches them all, the 48 requests in
# flight (5 blocks each at most) fit.
KV_CACHE_GB = "0.004"
RSS_BOUND_KIB = 2048  # 2.6 KiB per request over the last 800; measured: < 0.5 MiB


def wait_for(pred, timeout=60.0, step=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(step)
    return False


def cut_after_events(srv, i):
    """Sends stream request i and drops the connection after its first
    few events. Returns the number of events read (0: refused)."""
    body = json.dumps({"prompt": f"cut {i % 37} " * (1 + i % 5), "max_tokens": MAX_TOKENS,
                       "ignore_eos": True, "stream": True}).encode()
    s = srv.connect(timeout=30)
    try:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        got = b""
        while got.count(b"data: ") < EVENTS_BEFORE_CUT:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
        assert got.startswith(b"HTTP/1.1 200"), got[:200]
        if i % 4 == 0:  # RST instead of FIN
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return got.count(b"data: ")
    finally:
        s.close()


def run_cuts(srv, start, stop):
    with cf.ThreadPoolExecutor(WORKERS) as ex:
        events = list(ex.map(lambda i: cut_after_events(srv, i), range(start, stop)))
    assert all(e >= EVENTS_BEFORE_CUT for e in events), events


def settled(srv, total_blocks, conns_idle):
    m = srv.metrics()
    return (m["evalserver_num_requests_running"] == 0
            and m["evalserver_num_requests_waiting"] == 0
            and m["evalserver_kv_cache_free_blocks"] == total_blocks
            and m["evalserver_http_connections_open"] <= conns_idle)


def finished(m):
    return {r: m[f'evalserver_request_success_total{{finished_reason="{r}"}}']
            for r in ("stop", "length", "abort", "error")}


def test_1000_cut_streams_leave_nothing_behind(spawn_server):
    srv = spawn_server("cut1000", "--http-threads", "2", "--kv-cache-gb", KV_CACHE_GB)
    m0 = srv.metrics()
    total_blocks = m0["evalserver_kv_cache_blocks"]
    assert m0["evalserver_kv_cache_free_blocks"] == total_blocks
    conns_idle = m0["evalserver_http_connections_open"]  # this /metrics request's own
    t0 = time.monotonic()

    run_cuts(srv, 0, N_WARMUP)  # warm-up: KV pages, allocator arenas, prefix cache
    assert wait_for(lambda: settled(srv, total_blocks, conns_idle)), srv.metrics()
    threads0, rss0 = srv.threads(), srv.rss_kib()
    before = srv.metrics()

    run_cuts(srv, N_WARMUP, N_TOTAL)
    assert wait_for(lambda: settled(srv, total_blocks, conns_idle)), srv.metrics()
    after = srv.metrics()
    threads1, rss1 = srv.threads(), srv.rss_kib()
    print(f"{N_TOTAL} cuts in {time.monotonic() - t0:.1f} s; threads {threads0} -> {threads1}; "
          f"RSS {rss0} -> {rss1} KiB; finished {finished(after)}")

    # Every block back, nothing running or waiting, no connection left open.
    assert after["evalserver_kv_cache_usage_perc"] == 0
    assert after["evalserver_num_requests_running"] == 0
    assert after["evalserver_num_requests_waiting"] == 0
    # Every request reached the engine and finished exactly once, almost
    # all of them aborted by the cut.
    fin = finished(after)
    assert fin["error"] == 0 and fin["stop"] == 0, fin
    assert fin["abort"] + fin["length"] == N_TOTAL, fin
    assert fin["abort"] >= N_TOTAL * 0.9, fin
    gen = after["evalserver_generation_tokens_total"] - before["evalserver_generation_tokens_total"]
    assert gen < (N_TOTAL - N_WARMUP) * MAX_TOKENS / 2, gen  # really cut, not run out
    # No thread and no memory per request.
    assert threads1 == threads0, (threads0, threads1)
    if not srv.sanitized():  # ASan's quarantine grows; LeakSanitizer checks at exit
        assert rss1 - rss0 <= RSS_BOUND_KIB, (rss0, rss1)
    # And the server still works.
    r = srv.post("/v1/completions", {"prompt": "after the cuts", "max_tokens": 4})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
