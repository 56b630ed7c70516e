"""Helpers shared by the hardening tests (imported by name: no other test
module may be called hardening_util): tests/server_util.py's servers with
this suite's small default flags, raw-socket exchanges and HTTP/1.x
response splitting, and the OpenAI error-shape check."""
import json
import socket
import time

import server_util
from server_util import LOGS, Server, free_port, proc_status, stop_server  # noqa: F401

HARDENING_FLAGS = ("--max-model-len", "256", "--kv-cache-gb", "0.03125", "--threads", "1")


def start_server(build, model_dir, log_dir, name, *extra, api_key=None, env=None):
    return server_util.start_server(build, model_dir, log_dir, name, *HARDENING_FLAGS, *extra,
                                    api_key=api_key, env=env)


def recv_until_closed(s: socket.socket, limit=1 << 22, deadline_s=10.0) -> bytes:
    """Reads until the peer closes, the limit, or the deadline."""
    buf = b""
    end = time.time() + deadline_s
    while len(buf) < limit and time.time() < end:
        s.settimeout(max(0.05, end - time.time()))
        try:
            chunk = s.recv(65536)
        except (socket.timeout, TimeoutError):
            break
        except (ConnectionResetError, BrokenPipeError):
            break
        if not chunk:
            break
        buf += chunk
    return buf


def parse_responses(data: bytes):
    """Splits raw HTTP/1.x bytes into [(status, headers, body)], following
    Content-Length and chunked encoding."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        status = int(parts[1])
        headers = {}
        for ln in lines[1:]:
            k, _, v = ln.partition(b":")
            headers[k.strip().lower().decode()] = v.strip().decode(errors="replace")
        if "content-length" in headers:
            n = int(headers["content-length"])
            body, data = rest[:n], rest[n:]
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                body += rest[:size]
                rest = rest[size + 2:]
                if size == 0:
                    break
            data = rest
        else:
            body, data = rest, b""
        out.append((status, headers, body))
    return out


def assert_openai_error(status, body: bytes | str | dict, lo=400, hi=499):
    """The OpenAI error shape {"error": {"message", "type", "param", "code"}}
    with a status in [lo, hi]; returns the inner object."""
    assert lo <= status <= hi, f"status {status}: {body!r:.300}"
    if isinstance(body, (bytes, str)):
        body = json.loads(body)
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    assert set(err) >= {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"], err
    assert isinstance(err["type"], str) and err["type"], err
    assert err["param"] is None or isinstance(err["param"], str), err
    assert err["code"] == status, err
    return err
