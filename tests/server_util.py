"""Starting, talking to and stopping evalserver processes in tests
(imported by name from tests/api/api_util.py and
tests/hardening/hardening_util.py, which add their suites' default flags;
the root conftest puts tests/ on sys.path). Each server's output goes to a
log file, shown by the suites' conftests when a test fails."""
import os
import pathlib
import signal
import socket
import subprocess
import time

import pytest
import requests

LOGS = []  # (name, path) of every server started in this session


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
        self.url = self.base + "/v1"

    # ---- HTTP through requests
    def headers(self):
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def post(self, path, body, timeout=60, **kw):
        return requests.post(self.base + path, json=body, headers=self.headers(),
                             timeout=timeout, **kw)

    def post_raw(self, path, data, content_type="application/json", timeout=30):
        h = self.headers()
        if content_type is not None:
            h["Content-Type"] = content_type
        return requests.post(self.base + path, data=data, headers=h, timeout=timeout)

    def get(self, path, timeout=30, **kw):
        return requests.get(self.base + path, headers=self.headers(), timeout=timeout, **kw)

    def healthy(self) -> bool:
        try:
            return requests.get(self.base + "/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def metrics(self) -> dict:
        """Prometheus samples as {name{labels}: value}."""
        out = {}
        for line in self.get("/metrics").text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def settled_metrics(self, done, timeout=10.0) -> dict:
        """/metrics once done(metrics) holds, or at the timeout: the engines
        publish their stats at the end of an iteration, a moment after the
        response of its last token."""
        deadline = time.time() + timeout
        while True:
            m = self.metrics()
            if done(m) or time.time() > deadline:
                return m
            time.sleep(0.02)

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


def start_server(build, model_dir, log_dir, name, *flags, api_key=None, wait=True, env=None):
    """evalserver on a free port with the tiny model's served name and
    `flags`; waits for /health unless wait is False."""
    exe = pathlib.Path(build) / "server" / "evalserver"
    if not exe.exists():
        pytest.skip(f"{exe} not built")
    port = free_port()
    log_path = pathlib.Path(log_dir) / f"{name}-{port}.log"
    args = [str(exe), "--model", str(model_dir), "--served-model-name", "tiny",
            "--port", str(port), "--log-level", "info", *flags]
    if api_key:
        args += ["--api-key", api_key]
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})
    srv = Server(proc, port, log_path, api_key)
    LOGS.append((name, log_path))
    if not wait:
        return srv
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"evalserver {' '.join(flags)} exited with "
                               f"{proc.returncode}:\n{srv.log()[-3000:]}")
        if srv.healthy():
            return srv
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"evalserver did not become healthy:\n{srv.log()[-3000:]}")


def stop_server(srv, timeout=30):
    """SIGTERM and wait; returns the exit status (-9 when it had to be
    killed, -999 when a sanitizer reported something)."""
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
