"""Fixtures for the hardening tests: a tiny mkmodel model and evalserver
processes started with the limits a test needs. The helpers live in
hardening_util.py (a conftest cannot be imported reliably by name: pytest
loads several files called conftest).

Written apart from tests/api/conftest.py on purpose: these tests start
servers with their own flags and read /proc/PID, and must not change when
the API suite's fixtures do."""
import pathlib
import subprocess

import pytest

from hardening_util import LOGS, start_server, stop_server


@pytest.fixture(scope="session")
def hard_model(build, shared, tmp_path_factory):
    mk = pathlib.Path(build) / "tools" / "mkmodel"
    if not mk.exists():
        pytest.skip(f"{mk} not built")
    out = tmp_path_factory.mktemp("hard-model") / "tiny"
    subprocess.run([str(mk), "--shape", "tiny", "--tokenizer",
                    str(shared / "tokenizers" / "llama3_1"), "--out", str(out)],
                   check=True, capture_output=True)
    return out


@pytest.fixture(scope="session")
def hard_logs(tmp_path_factory):
    return tmp_path_factory.mktemp("hard-logs")


@pytest.fixture
def spawn_server(build, hard_model, hard_logs):
    """Starts servers for one test (with extra flags); stops them after it
    and checks they exit 0 unless the test already reaped them."""
    started = []

    def _spawn(name, *extra, **kw):
        srv = start_server(build, hard_model, hard_logs, name, *extra, **kw)
        started.append(srv)
        return srv

    yield _spawn
    for srv in started:
        if srv.proc.returncode is not None:
            continue
        rc = stop_server(srv)
        assert rc == 0, f"evalserver {srv.log_path} exited with {rc}:\n{srv.log()[-3000:]}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed and "hardening" in str(item.fspath):
        for name, path in LOGS[-2:]:
            try:
                text = pathlib.Path(path).read_text(errors="replace")
            except OSError:
                continue
            rep.sections.append((f"evalserver {name} log (tail)", text[-4000:]))
