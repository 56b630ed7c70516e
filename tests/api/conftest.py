"""Fixtures for the API tests: a tiny mkmodel model and live evalserver
processes on free ports, with each server's stderr captured to a file that
is shown when a test fails (the helpers live in api_util.py)."""
import pathlib
import subprocess

import pytest

from api_util import _SERVER_LOGS, start_server, stop_server


@pytest.fixture(scope="session")
def tiny_model(build, shared, tmp_path_factory):
    mk = pathlib.Path(build) / "tools" / "mkmodel"
    if not mk.exists():
        pytest.skip(f"{mk} not built")
    out = tmp_path_factory.mktemp("model") / "tiny"
    subprocess.run([str(mk), "--shape", "tiny", "--tokenizer",
                    str(shared / "tokenizers" / "llama3_1"), "--out", str(out)],
                   check=True, capture_output=True)
    return out


@pytest.fixture(scope="session")
def server_logs(tmp_path_factory):
    return tmp_path_factory.mktemp("server-logs")


@pytest.fixture(scope="session")
def server(build, tiny_model, server_logs):
    """The shared server most tests talk to."""
    srv = start_server(build, tiny_model, server_logs, "main")
    yield srv
    rc = stop_server(srv)
    assert rc == 0, f"evalserver exited with {rc}:\n{srv.log()[-4000:]}"


@pytest.fixture(scope="session")
def client(server):
    import openai
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture
def spawn(build, tiny_model, server_logs):
    """Starts extra servers for one test; stops them afterwards."""
    started = []

    def _spawn(name, *extra, **kw):
        srv = start_server(build, tiny_model, server_logs, name, *extra, **kw)
        started.append(srv)
        return srv

    yield _spawn
    for srv in started:
        rc = stop_server(srv)
        assert rc == 0, f"evalserver {srv.log_path} exited with {rc}:\n{srv.log()[-4000:]}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        for name, path in _SERVER_LOGS[-3:]:
            try:
                text = pathlib.Path(path).read_text(errors="replace")
            except OSError:
                continue
            rep.sections.append((f"evalserver {name} log (tail)", text[-6000:]))
