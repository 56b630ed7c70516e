"""Helpers shared by the hardening tests (imported by name: no other test
module may be called hardening_util): starting and stopping evalserver with
chosen flags, raw-socket exchanges and HTTP/1.x response splitting, the
server's RSS and thread count from /proc/PID/status, and the OpenAI
error-shape check."""
import json
import os
import pathlib
import signal
import socket
import subprocess
import time

import pytest
import requests

LOGS = []  # (name, path) of every server started here


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status(pid: int) -> dict:
    """/proc/PID/status as {key: value string}."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


class Server:
    def __init__(self, proc, port, log_path, api_key=None):
        self.proc = proc
        self.pid = proc.pid
        self.port = port
        self.log_path = log_path
        self.api_key = api_key
        self.base = f"http://127.0.0.1:{port}"

    # ---- HTTP through requests
    def headers(self):
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def post(self, path, body, timeout=30, **kw):
        return requests.post(self.base + path, json=body, headers=self.headers(),
                             timeout=timeout, **kw)

    def post_raw(self, path, data, content_type="application/json", timeout=30):
        h = self.headers()
        if content_type is not None:
            h["Content-Type"] = content_type
        return requests.post(self.base + path, data=data, headers=h, timeout=timeout)

    def get(self, path, timeout=30):
        return requests.get(self.base + path, headers=self.headers(), timeout=timeout)

    def healthy(self) -> bool:
        try:
            return requests.get(self.base + "/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def metrics(self) -> dict:
        out = {}
        for line in self.get("/metrics").text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    # ---- the process
    def rss_kib(self) -> int:
        return int(proc_status(self.pid)["VmRSS"].split()[0])

    def sanitized(self) -> bool:
        """An ASan build: its quarantine makes RSS meaningless for leaks
        (LeakSanitizer checks those at exit instead)."""
        with open(f"/proc/{self.pid}/maps") as f:
            return "libasan" in f.read()

    def threads(self) -> int:
        return int(proc_status(self.pid)["Threads"])

    def log(self) -> str:
        try:
            return pathlib.Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""

    # ---- raw sockets
    def connect(self, timeout=10.0) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s


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


def start_server(build, model_dir, log_dir, name, *extra, api_key=None, env=None):
    exe = pathlib.Path(build) / "server" / "evalserver"
    if not exe.exists():
        pytest.skip(f"{exe} not built")
    port = free_port()
    log_path = pathlib.Path(log_dir) / f"{name}-{port}.log"
    args = [str(exe), "--model", str(model_dir), "--served-model-name", "tiny",
            "--port", str(port), "--max-model-len", "256", "--kv-cache-gb", "0.03125",
            "--threads", "1", "--log-level", "info", *extra]
    if api_key:
        args += ["--api-key", api_key]
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})
    srv = Server(proc, port, log_path, api_key)
    LOGS.append((name, log_path))
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"evalserver {' '.join(extra)} exited with "
                               f"{proc.returncode}:\n{srv.log()[-3000:]}")
        if srv.healthy():
            return srv
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"evalserver did not become healthy:\n{srv.log()[-3000:]}")


def stop_server(srv, timeout=30):
    """SIGTERM and wait; returns the exit status (-999 when a sanitizer
    reported something)."""
    if srv.proc.poll() is None:
        srv.proc.send_signal(signal.SIGTERM)
        try:
            srv.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            srv.proc.kill()
            srv.proc.wait()
            return -9
    log = srv.log()
    if "runtime error:" in log or "ERROR: AddressSanitizer" in log or \
            "ERROR: LeakSanitizer" in log:
        return -999
    return srv.proc.returncode


