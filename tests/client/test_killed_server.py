"""evalclient against an evalserver killed mid-run (SIGKILL), then restarted
on the same port.

The first run must retry (--retries 2, a short --backoff), then record
every sample it could not finish as an error (status "error", no metrics,
left out of every score) and exit 1. The rerun with the same --out must
send requests for exactly the missing samples (counted by the new server's
/metrics, whose counters start at zero) and end with every sample logged
ok once, with the same answers as an uninterrupted run. Both with plain
and with streamed (--stream) requests: a stream cut by the kill must never
be taken for a complete answer.
"""
import json
import os
import pathlib
import socket
import subprocess
import time
import urllib.request

import pytest

from evalclient_helpers import read_jsonl, run_client

N_SAMPLES = 40
MAX_TOKENS = 24
KILL_AFTER = 8  # samples logged before the kill


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Evalserver:
    """One evalserver process on a fixed port."""

    def __init__(self, build, model, port, log_path):
        exe = pathlib.Path(build) / "server" / "evalserver"
        self.url = f"http://127.0.0.1:{port}"
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(exe), "--model", str(model), "--served-model-name", "tiny", "--port",
                 str(port), "--max-model-len", "256", "--kv-cache-gb", "0.03125", "--threads",
                 "1", "--max-num-seqs", "2"], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            assert self.proc.poll() is None, f"evalserver exited: {log_path}"
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("evalserver did not become healthy")

    def metric(self, prefix):
        """Sum of the /metrics lines starting with prefix."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            text = r.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(prefix))

    def requests_served(self):
        """Generation requests the router has placed, all replicas."""
        return self.metric("evalserver_replica_requests_routed_total{")

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            assert self.proc.wait(30) == 0


@pytest.fixture(scope="module")
def tiny_model(build, shared, tmp_path_factory):
    mk = pathlib.Path(build) / "tools" / "mkmodel"
    if not mk.exists() or not (pathlib.Path(build) / "server" / "evalserver").exists():
        pytest.skip("evalserver or mkmodel not built")
    out = tmp_path_factory.mktemp("killed-model") / "tiny"
    subprocess.run([str(mk), "--shape", "tiny", "--tokenizer",
                    str(shared / "tokenizers" / "llama3_1"), "--out", str(out)],
                   check=True, capture_output=True)
    return out


@pytest.fixture
def procs():
    """Processes (servers and clients) to kill if a test ends early."""
    started = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait()


def write_data(path):
    with open(path, "w") as f:
        for i in range(N_SAMPLES):
            f.write(json.dumps({"id": f"k-{i:02d}", "prompt": f"Q: What is {i} plus {i}?\nA:",
                                "target": str(2 * i), "regex": "(-?\\d+)"}) + "\n")


def client_args(evalclient, url, data, out, stream):
    args = [evalclient, "--tasks", "generate_until", "--data", f"generate_until={data}",
            "--url", url, "--model", "tiny", "--max-tokens", str(MAX_TOKENS),
            "--max-inflight", "2", "--retries", "2", "--backoff", "0.05", "--timeout", "60",
            "--out", str(out)]
    return args + (["--stream"] if stream else [])


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_killed_server_then_resume(evalclient, build, tiny_model, procs, tmp_path, stream):
    data = tmp_path / "gu.jsonl"
    write_data(data)
    port = free_port()
    srv = Evalserver(build, tiny_model, port, tmp_path / "server.log")
    procs.append(srv.proc)
    out = tmp_path / "out"
    log = out / "samples.jsonl"

    # Run 1: kill -9 the server once a few samples are in, while it
    # generates (so that a reply, or a stream, is cut).
    args = client_args(evalclient, srv.url, data, out, stream)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "EVAL_LOG_LEVEL": "warn"})
    procs.append(proc)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and log.read_text().count("\n") >= KILL_AFTER and \
                srv.metric("evalserver_num_requests_running ") > 0:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the client finished before the server could be killed"
    srv.kill()
    stdout, stderr = proc.communicate(timeout=120)
    assert "Sanitizer" not in stderr and "runtime error:" not in stderr, stderr
    assert proc.returncode == 1, (proc.returncode, stdout, stderr)

    recs = read_jsonl(log)
    assert len(recs) == N_SAMPLES and len({r["key"] for r in recs}) == N_SAMPLES
    ok = [r for r in recs if r["status"] == "ok"]
    failed = [r for r in recs if r["status"] == "error"]
    assert KILL_AFTER <= len(ok) < N_SAMPLES, len(ok)
    assert len(ok) + len(failed) == N_SAMPLES
    for r in failed:
        # Honest: retried, then the transport error; no answer, no score.
        assert "after 3 attempts" in r["error"], r["error"]
        assert r["metrics"] == {} and "output" not in r["data"], r
    for r in ok:
        assert "exact_match" in r["metrics"] and isinstance(r["data"]["output"], str)
        assert r["completion_tokens"] > 0
    res = json.load(open(out / "results.json"))
    gu = res["tasks"]["generate_until"]
    assert gu["counts"] == {"total": N_SAMPLES, "ok": len(ok), "error": len(failed),
                            "resumed": 0}
    assert gu["metrics"]["exact_match"]["n"] == len(ok)  # failures are not scored
    assert res["failed_samples"] == len(failed)
    assert f"ok {len(ok)}, errors {len(failed)}," in stdout, stdout

    # Run 2: the server back on the same port; only the missing samples go out.
    srv2 = Evalserver(build, tiny_model, port, tmp_path / "server.log")
    procs.append(srv2.proc)
    assert srv2.requests_served() == 0
    run_client(*args, timeout=300, check=0)
    assert srv2.requests_served() == len(failed)

    recs = read_jsonl(log)
    final = {}
    for r in recs:
        if r["status"] == "ok":
            assert r["key"] not in final, f"{r['id']} logged ok twice"
            final[r["key"]] = r
    assert len(final) == N_SAMPLES
    assert sorted(r["id"] for r in final.values()) == [f"k-{i:02d}" for i in range(N_SAMPLES)]
    res = json.load(open(out / "results.json"))
    gu = res["tasks"]["generate_until"]
    assert gu["counts"] == {"total": N_SAMPLES, "ok": N_SAMPLES, "error": 0,
                            "resumed": len(ok)}
    assert res["failed_samples"] == 0

    # The same answers as one uninterrupted run (temperature 0).
    clean = tmp_path / "clean"
    run_client(*client_args(evalclient, srv2.url, data, clean, stream), timeout=300, check=0)
    want = {r["id"]: r["data"]["output"] for r in read_jsonl(clean / "samples.jsonl")}
    assert {r["id"]: r["data"]["output"] for r in final.values()} == want
    srv2.stop()


def write_plain_data(path, n):
    """generate_until samples without stop strings: the fake server's reply
    then comes in several stream pieces."""
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"p-{i}", "prompt": f"Question {i}?", "target": "42",
                                "regex": "(-?\\d+)"}) + "\n")


def test_stream_cut_short_is_never_an_answer(evalclient, fake_server, tmp_path):
    """A stream that ends without "data: [DONE]" (a server killed mid-reply,
    its body framed by the connection's close) or that carries an error
    event is a failure, retried like a 5xx; never a short answer."""
    srv = fake_server("--cut-stream-every", "3", "--stream-error-every", "4")
    data = tmp_path / "plain.jsonl"
    write_plain_data(data, 10)
    out = tmp_path / "out"
    args = [evalclient, "--tasks", "generate_until", "--data", f"generate_until={data}",
            "--url", srv.url, "--model", "tiny", "--stream", "--max-inflight", "4",
            "--backoff", "0.01", "--out", str(out)]
    # Without retries: requests 3, 6, 9 are cut and 4, 8 carry an error event.
    run_client(*args, "--retries", "0", check=1)
    st = srv.stats()["statuses"]
    assert st["stream_cut"] == 3 and st["stream_error"] == 2, st
    recs = read_jsonl(out / "samples.jsonl")
    errors = sorted(r["error"] for r in recs if r["status"] == "error")
    assert errors == ["stream ended before [DONE] (after 1 attempts)"] * 3 + \
        ["stream error: engine failed (injected) (after 1 attempts)"] * 2, errors
    assert all(r["metrics"] == {} for r in recs if r["status"] == "error")
    full = " 42\nand then some more text"
    assert all(r["data"]["output"] == full for r in recs if r["status"] == "ok")
    # With retries, the five are sent again until whole; nothing else is.
    before = srv.stats()["count"]
    run_client(*args, "--retries", "5", check=0)
    st = srv.stats()
    assert st["count"] - before >= 5
    assert st["statuses"]["stream_cut"] + st["statuses"]["stream_error"] > 5  # some retried
    final = [r for r in read_jsonl(out / "samples.jsonl") if r["status"] == "ok"]
    assert len(final) == len({r["key"] for r in final}) == 10
    assert all(r["data"]["output"] == full for r in final)
    assert st["count"] - before == 5 + (st["statuses"]["stream_cut"] - 3) + \
        (st["statuses"]["stream_error"] - 2)
