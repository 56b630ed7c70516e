"""Many requests becoming readable at the same moment are all read.

libmicrohttpd 0.9.75's epoll loop, after one epoll_wait returned a full
batch of exactly 128 ready sockets, asked for more and then slept until its
next timeout (about --connection-timeout) with those 128 unread: their
edge-triggered events never come again. On the GPU, W1's 1,000 requests at
once hit it (two threads of eight got 128 each) and lost 246 requests when
the request deadline then shut those sockets. The server now runs MHD on
poll(); EVAL_HTTP_EVENT_LOOP=epoll brings the old loop back, and this test
then fails.

The batch is made exact: N idle connections are opened and accepted, the
server is stopped (SIGSTOP), all N requests are written, and the server is
continued, so one call of its event loop finds all N ready.
"""
import json
import select
import signal
import time

import pytest


def request_bytes():
    body = json.dumps({"prompt": "hi", "max_tokens": 1}).encode()
    return (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)) + body


def wait_open_connections(srv, n, timeout=20.0):
    end = time.time() + timeout
    while time.time() < end:
        if srv.metrics().get("evalserver_http_connections_open", 0) >= n:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("n", [128, 256])
def test_a_full_batch_of_ready_connections_is_read(spawn_server, n):
    srv = spawn_server(f"ready{n}", "--http-threads", "1", "--max-connections-per-ip", "1024")
    socks = [srv.connect() for _ in range(n)]
    # each socket accepted, and the metrics probe's own connection too
    assert wait_open_connections(srv, n + 1), srv.metrics().get("evalserver_http_connections_open")
    req = request_bytes()
    srv.proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(0.2)
        for s in socks:
            s.sendall(req)
        time.sleep(0.3)  # every request in the server's socket buffers
    finally:
        srv.proc.send_signal(signal.SIGCONT)
    t0 = time.monotonic()
    poller = select.poll()
    by_fd = {}
    for s in socks:
        s.setblocking(False)
        poller.register(s.fileno(), select.POLLIN)
        by_fd[s.fileno()] = s
    answered = {}
    while len(answered) < n and time.monotonic() - t0 < 15:
        for fd, _ in poller.poll(100):
            data = by_fd[fd].recv(65536)
            answered[fd] = data
            poller.unregister(fd)
    took = time.monotonic() - t0
    for s in socks:
        s.close()
    statuses = {d.split(b" ", 2)[1] for d in answered.values() if d.startswith(b"HTTP/1.1 ")}
    print(f"{n} requests ready at once: {len(answered)} answered in {took:.2f} s, "
          f"statuses {sorted(statuses)}")
    assert len(answered) == n, f"{n - len(answered)} of {n} requests were never read"
    # an answer, not a closed socket: 200, or 429 where the queue is full
    assert statuses <= {b"200", b"429"} and all(d for d in answered.values()), statuses
