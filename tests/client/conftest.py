"""Fixtures for evalclient's tests: the binary, and fake servers to point it at."""
import os
import pathlib
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent


@pytest.fixture(scope="session")
def evalclient(build):
    exe = pathlib.Path(build) / "client" / "evalclient"
    if not exe.exists():
        pytest.skip(f"{exe} not built")
    return str(exe)


class FakeServer:
    def __init__(self, *args):
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "fake_server.py"), *args],
            stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("PORT "), line
        self.url = f"http://127.0.0.1:{int(line.split()[1])}"

    def stats(self):
        import json
        import urllib.request
        with urllib.request.urlopen(self.url + "/stats") as r:
            return json.load(r)

    def stop(self):
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def fake_server():
    servers = []

    def start(*args):
        s = FakeServer(*args)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()
