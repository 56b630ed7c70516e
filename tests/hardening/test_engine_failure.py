"""An engine failure, injected through the test-only switch of
server/engine/fault.h (EVALSERVER_TEST_FAIL_STEP=N: the N-th forward of a
replica fails; EVALSERVER_TEST_FAIL_REPLICA=R: only replica R;
EVALSERVER_TEST_HANG_STEP=N: the N-th forward never returns, which
--step-timeout turns into the same failure).

What must happen (server/main.c): the failed replica answers every request
it holds with an error (a 500 in the OpenAI shape; a stream gets an error
event and finish_reason "error", never a clean end with truncated text),
/health turns 503 at once and stays so, new work gets 503, the healthy
replicas finish what they run, and the process exits with status 1 so that
a supervisor restarts it. A malformed switch value stops the start-up: a
typo must never run a "failure" test on a healthy server.

Which request runs at the failure is made certain by counting forwards,
not by timing: a request with max_tokens M is in every forward of its
replica from its first token to its M-th, so with N far below M it is
running when forward N fails.
"""
import concurrent.futures as cf
import json
import pathlib
import subprocess
import time

import openai
import pytest
import requests

from hardening_util import assert_openai_error, start_server

C = "/v1/completions"
CHAT = "/v1/chat/completions"
FAIL_STEP = "EVALSERVER_TEST_FAIL_STEP"
FAIL_REPLICA = "EVALSERVER_TEST_FAIL_REPLICA"
HANG_STEP = "EVALSERVER_TEST_HANG_STEP"
LONG = 240  # tokens; with --max-model-len 256, leaves room for the short prompts


class Stream:
    """A streaming POST read event by event on its own connection."""

    def __init__(self, srv, path, body):
        self.resp = requests.post(srv.base + path, json={**body, "stream": True},
                                  stream=True, timeout=60)
        self.status = self.resp.status_code
        self.events = []  # parsed JSON events, and the string "[DONE]"
        self._lines = self.resp.iter_lines() if self.status == 200 else iter(())

    def next_event(self):
        for line in self._lines:
            if line.startswith(b"data: "):
                data = line[6:].decode()
                ev = data if data == "[DONE]" else json.loads(data)
                self.events.append(ev)
                return ev
        return None

    def read_all(self):
        if self.status != 200:
            return
        while self.next_event() is not None:
            pass

    def text(self):
        out = ""
        for ev in self.events:
            if isinstance(ev, dict):
                for ch in ev.get("choices") or []:
                    out += ch.get("text") or (ch.get("delta") or {}).get("content") or ""
        return out

    def finish_reasons(self):
        return [ch["finish_reason"] for ev in self.events if isinstance(ev, dict)
                for ch in ev.get("choices") or [] if ch.get("finish_reason")]

    def errors(self):
        return [ev["error"] for ev in self.events if isinstance(ev, dict) and "error" in ev]


def assert_stream_failed(s):
    """A stream cut by the engine: text so far, then an error event with a
    5xx code, finish_reason "error" and nothing that reads as a success."""
    assert s.status == 200
    errs = s.errors()
    assert len(errs) == 1, s.events[-4:]
    assert errs[0]["code"] == 500 and errs[0]["type"] == "server_error", errs
    assert "injected failure" in errs[0]["message"], errs
    assert s.finish_reasons() == ["error"], s.events[-4:]


def wait_for(pred, timeout=10.0, step=0.02):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(step)
    return False


def assert_exit_1(srv, timeout=60):
    """The process ends with status 1, and (in a sanitizer build) with no
    report in its log: the failure path frees what it built."""
    assert srv.proc.wait(timeout) == 1
    log = srv.log()
    assert "runtime error:" not in log and "Sanitizer" not in log, log[-4000:]
    return log


def health_status(srv):
    """/health's status, or None once the port is closed (the process ended)."""
    try:
        return requests.get(srv.base + "/health", timeout=5).status_code
    except requests.ConnectionError:
        return None


# ------------------------------------------------------------------ one replica

def test_failure_answers_every_request_then_exits_1(spawn_server):
    srv = spawn_server("fail1", "--max-num-seqs", "2", env={FAIL_STEP: "100"})
    assert srv.metrics()["evalserver_engine_healthy"] == 1
    # A long stream, read up to its first token: it is in every forward from
    # now to the failure.
    first = Stream(srv, C, {"prompt": "stream one", "max_tokens": LONG, "ignore_eos": True})
    assert first.status == 200
    assert isinstance(first.next_event(), dict)
    # More work of every kind beside it, running or waiting at the failure
    # (or, if slower than 100 forwards, refused after it): non-streamed,
    # streamed chat, n = 2, a prompt list.
    long = {"max_tokens": LONG, "ignore_eos": True}

    def send(path, body, stream=False):
        try:
            return Stream(srv, path, body) if stream else srv.post(path, body, 60)
        except requests.ConnectionError:
            return None  # came so late that the process had already exited

    chat = {"messages": [{"role": "user", "content": "chat"}], **long}
    with cf.ThreadPoolExecutor(6) as ex:
        futs = [ex.submit(send, C, {"prompt": "parked one", **long}),
                ex.submit(send, CHAT, chat, True),
                ex.submit(send, C, {"prompt": "two choices", "n": 2, **long}),
                ex.submit(send, C, {"prompt": ["a", "b"], **long}),
                ex.submit(send, CHAT, chat)]
        first.read_all()
        others = [f.result() for f in futs]
    for res in others:
        if isinstance(res, Stream):
            res.read_all()

    # The stream failed mid-way and says so.
    assert_stream_failed(first)
    assert first.text(), "the stream had tokens before the failure"
    # Every other request got an error: a 500 if the engine held it, a 503
    # if it came after; never a 200 with a partial answer.
    print("others:", [res.status if isinstance(res, Stream) else getattr(res, "status_code", None)
                      for res in others])
    for res in others:
        if res is None:
            continue
        if isinstance(res, Stream):
            if res.status == 200:
                assert_stream_failed(res)
            else:
                assert_openai_error(res.status, res.resp.content, 503, 503)
        else:
            err = assert_openai_error(res.status_code, res.content, 500, 503)
            if res.status_code == 500:
                assert "injected failure" in err["message"] and err["type"] == "server_error"
    # Once a client has seen the error, /health is never 200 again (503
    # while the process drains, then the port closes).
    assert health_status(srv) in (503, None)
    log = assert_exit_1(srv)
    assert "replica 0 failed" in log and "injected failure" in log, log[-2000:]
    assert "exiting with status 1" in log


def test_non_streamed_request_gets_500(spawn_server):
    srv = spawn_server("failparked", env={FAIL_STEP: "10"})
    r = srv.post(C, {"prompt": "parked", "max_tokens": LONG, "ignore_eos": True}, timeout=60)
    err = assert_openai_error(r.status_code, r.content, 500, 500)
    assert err["type"] == "server_error"
    assert "injected failure (EVALSERVER_TEST_FAIL_STEP=10)" in err["message"], err
    assert health_status(srv) in (503, None)
    r = None
    try:
        r = srv.post(C, {"prompt": "after", "max_tokens": 2}, timeout=10)
    except requests.ConnectionError:
        pass  # already gone
    if r is not None:
        assert_openai_error(r.status_code, r.content, 503, 503)
    assert_exit_1(srv)


def test_sdk_stream_raises_on_engine_failure(spawn_server):
    """A client on the openai SDK sees an exception, not a short answer."""
    srv = spawn_server("failsdk", env={FAIL_STEP: "10"})
    client = openai.OpenAI(base_url=srv.base + "/v1", api_key="x", max_retries=0)
    got = []
    with pytest.raises(openai.APIError, match="injected failure"):
        for chunk in client.completions.create(model="tiny", prompt="sdk", max_tokens=LONG,
                                               stream=True, extra_body={"ignore_eos": True}):
            got.append(chunk.choices[0].text)
    assert got  # it failed mid-stream, after some text
    # 503 while the process drains, or no connection once it has exited
    with pytest.raises((openai.InternalServerError, openai.APIConnectionError)):
        client.chat.completions.create(model="tiny", max_tokens=4,
                                       messages=[{"role": "user", "content": "after"}])
    assert_exit_1(srv)


# ------------------------------------------------------------------ --dp 2

def test_one_replica_of_two_fails(spawn_server):
    """Replica 1 fails; replica 0 is healthy. What happens, by design
    (server/main.c): replica 1's requests get errors; /health turns 503 at
    once (the process is degraded); new work gets 503 once the main loop has
    seen the failure (it checks every 100 ms; until then the router sends
    new work to replica 0 only); replica 0 finishes its requests in full;
    then the process exits 1 so the whole server is restarted."""
    srv = spawn_server("faildp", "--dp", "2", "--threads", "2",
                       env={FAIL_STEP: "5", FAIL_REPLICA: "1"})
    assert srv.metrics()["evalserver_num_replicas"] == 2
    # The router puts the first request on replica 0 (a tie goes to the
    # lowest index) and the second on the idle replica 1.
    good = Stream(srv, C, {"prompt": "on replica zero", "max_tokens": LONG, "ignore_eos": True})
    assert isinstance(good.next_event(), dict)
    bad = Stream(srv, C, {"prompt": "on replica one", "max_tokens": LONG, "ignore_eos": True})
    bad.read_all()
    assert_stream_failed(bad)
    # replica 0 is still running its 240 tokens (replica 1 failed at its
    # 5th forward): the process is draining, not gone.
    m = srv.metrics()
    assert m['evalserver_replica_healthy{replica="1"}'] == 0
    assert m['evalserver_replica_healthy{replica="0"}'] == 1
    assert m["evalserver_engine_healthy"] == 0
    assert m['evalserver_replica_requests_routed_total{replica="0"}'] == 1
    assert m['evalserver_replica_requests_routed_total{replica="1"}'] == 1
    assert requests.get(srv.base + "/health", timeout=5).status_code == 503
    # The failed request's KV blocks went back to the failed replica's pool
    # (its stats are written just after the error is sent).
    assert wait_for(lambda: srv.metrics()[
        'evalserver_replica_kv_cache_usage_perc{replica="1"}'] == 0, timeout=5)
    # New work: served by replica 0 until the main loop notices, then 503.
    refused = None
    for _ in range(100):
        r = srv.post(C, {"prompt": "late", "max_tokens": 1}, timeout=10)
        if r.status_code != 200:
            refused = r
            break
    assert refused is not None, "new work was still accepted while draining"
    assert_openai_error(refused.status_code, refused.content, 503, 503)
    assert requests.get(srv.base + "/health", timeout=5).status_code == 503
    # The healthy replica's request runs to the end, cleanly.
    good.read_all()
    assert good.errors() == []
    assert good.finish_reasons() == ["length"]
    assert good.events[-1] == "[DONE]"
    log = assert_exit_1(srv)
    assert "replica 1 failed" in log and "1 of 2 engine replicas failed" in log, log[-2000:]


# ------------------------------------------------------------------ a hung forward

def test_hung_forward_fails_the_replica(spawn_server):
    """EVALSERVER_TEST_HANG_STEP=N: the N-th forward never returns, as with
    a hung GPU or a lost NCCL peer. With --step-timeout 1 the replica fails
    about a second later, exactly as for a failed forward (the stream's
    error event, /health 503, exit 1) instead of holding its requests
    forever; the hung thread and its backend are left to the exit."""
    srv = spawn_server("hang", "--step-timeout", "1", env={HANG_STEP: "10"})
    s = Stream(srv, C, {"prompt": "stream one", "max_tokens": LONG, "ignore_eos": True})
    assert isinstance(s.next_event(), dict)
    t0 = time.time()
    s.read_all()
    assert time.time() - t0 < 20
    errs = s.errors()
    assert len(errs) == 1 and errs[0]["code"] == 500, s.events[-4:]
    assert "--step-timeout 1" in errs[0]["message"] and "hung" in errs[0]["message"], errs
    assert s.finish_reasons() == ["error"]
    assert health_status(srv) in (503, None)
    log = assert_exit_1(srv)
    assert "leaving its hung forward's thread and backend behind" in log, log[-2000:]
    assert "will never return" in log


@pytest.mark.parametrize("value", ["-1", "abc", "90000"])
def test_bad_step_timeout_refused(build, hard_model, value):
    exe = pathlib.Path(build) / "server" / "evalserver"
    out = subprocess.run([str(exe), "--model", str(hard_model), "--step-timeout", value],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "--step-timeout" in out.stderr, out.stderr


# ------------------------------------------------------------------ the switch itself

@pytest.mark.parametrize("env", [
    {FAIL_STEP: "abc"}, {FAIL_STEP: "0"}, {FAIL_STEP: "5x"},
    {FAIL_STEP: "99999999999999999999"}, {FAIL_STEP: "5", FAIL_REPLICA: "one"},
    {FAIL_STEP: "5", FAIL_REPLICA: "-1"},
], ids=lambda e: ",".join(f"{k.rsplit('_', 1)[1].lower()}={v}" for k, v in e.items()))
def test_malformed_switch_stops_startup(build, hard_model, hard_logs, env):
    with pytest.raises(RuntimeError, match="exited with 1") as exc:
        start_server(build, hard_model, hard_logs, "badswitch", env=env)
    bad = FAIL_REPLICA if FAIL_REPLICA in env and not env[FAIL_REPLICA].isdigit() else FAIL_STEP
    assert f"{bad}=" in str(exc.value) and "is not a number" in str(exc.value)
    assert "Sanitizer" not in str(exc.value), str(exc.value)  # the error path frees all


def test_unset_or_empty_switch_is_off(spawn_server):
    srv = spawn_server("noswitch", env={FAIL_STEP: "", FAIL_REPLICA: "0"})
    for i in range(3):
        r = srv.post(C, {"prompt": f"fine {i}", "max_tokens": 8})
        assert r.status_code == 200
    assert "will fail on purpose" not in srv.log()
