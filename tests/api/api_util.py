"""Helpers of the API tests (imported by name: no other test module may be
called api_util): free ports, starting and stopping evalserver processes
with each server's stderr captured to a file, and the Server handle."""
import os
import pathlib
import signal
import socket
import subprocess
import time

import pytest
import requests

_SERVER_LOGS = []  # (name, path) of every server started in this session


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, proc, port, log_path, api_key=None):
        self.proc = proc
        self.port = port
        self.log_path = log_path
        self.api_key = api_key
        self.base = f"http://127.0.0.1:{port}"
        self.url = self.base + "/v1"

    def headers(self):
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def post(self, path, body, **kw):
        return requests.post(self.base + path, json=body, headers=self.headers(),
                             timeout=kw.pop("timeout", 60), **kw)

    def get(self, path, **kw):
        return requests.get(self.base + path, headers=self.headers(),
                            timeout=kw.pop("timeout", 30), **kw)

    def log(self) -> str:
        try:
            return pathlib.Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""

    def metrics(self) -> dict:
        """Prometheus samples as {name{labels}: value}."""
        text = self.get("/metrics").text
        out = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
        return out

    def healthy(self) -> bool:
        try:
            return requests.get(self.base + "/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False


def start_server(build, model_dir, log_dir, name, *extra, api_key=None, wait=True, env=None):
    exe = pathlib.Path(build) / "server" / "evalserver"
    if not exe.exists():
        pytest.skip(f"{exe} not built")
    port = free_port()
    log_path = pathlib.Path(log_dir) / f"{name}-{port}.log"
    args = [str(exe), "--model", str(model_dir), "--served-model-name", "tiny",
            "--port", str(port), "--max-model-len", "512", "--kv-cache-gb", "0.0625",
            "--threads", "2", "--log-level", "info", *extra]
    if api_key:
        args += ["--api-key", api_key]
    logf = open(log_path, "wb")
    proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})})
    logf.close()
    srv = Server(proc, port, log_path, api_key)
    _SERVER_LOGS.append((name, log_path))
    if wait:
        deadline = time.time() + 60
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"evalserver exited with {proc.returncode}:\n{srv.log()}")
            if srv.healthy():
                return srv
            time.sleep(0.05)
        proc.kill()
        raise RuntimeError(f"evalserver did not become healthy:\n{srv.log()}")
    return srv


def stop_server(srv, timeout=30):
    """SIGTERM, wait; returns the exit status. Sanitizer reports in the log
    (leaks, undefined behaviour) count as a failure too."""
    if srv.proc.poll() is None:
        srv.proc.send_signal(signal.SIGTERM)
        try:
            srv.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            srv.proc.kill()
            srv.proc.wait()
    log = srv.log()
    if "runtime error:" in log or "ERROR: AddressSanitizer" in log or \
            "ERROR: LeakSanitizer" in log:
        return -999
    return srv.proc.returncode
