"""Async scheduling end to end: the engine schedules and builds step N+1
while step N runs (--async-scheduling on), or only after it (off).

Checked on the tiny model, with the same concurrent mix of requests sent
to one server of each kind: every answer is the same (text, tokens,
finish reasons, logprobs, echoed prompt logprobs, n > 1 choices), although
the batches differ (a sequence that stops on a stop string or EOS costs
the async engine one extra computed token, and forks join a step later);
the async server did schedule steps ahead and the other did not; streams
cut short and finished requests leave no KV block behind on either; auto
(the default) is off where the CPU backend's threads take every core and
on where they leave one; a bad value is refused.
"""
import concurrent.futures as cf
import os
import subprocess

import pytest

WORDS = ("amber river stone cloud window garden violin copper meadow lantern harbor "
         "falcon pepper marble canyon orchid glacier thunder velvet saddle").split()


def prompt(i, n_words):
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(n_words))


def mixed_requests():
    """A workload whose requests end in every way the engine knows."""
    reqs = []
    for i in range(28):
        body = {"model": "tiny", "prompt": prompt(i, 5 + i % 23), "max_tokens": 4 + (i * 5) % 40,
                "seed": 100 + i, "logprobs": i % 4, "temperature": 0.0 if i % 3 == 0 else 0.9}
        if i % 5 == 1:
            body["n"] = 2 + i % 3
        if i % 4 == 2:
            body["stop"] = [" the", "e"]  # early stops: the next token was already planned
        if i % 7 == 3:
            body.update(echo=True, max_tokens=0, logprobs=2)  # prompt scoring
        if i % 6 == 5:
            body.update(presence_penalty=0.7, frequency_penalty=0.3, top_k=12, top_p=0.9)
        if i % 9 == 4:
            body["min_tokens"] = 3
        reqs.append(body)
    return reqs


def run_all(srv, bodies):
    def call(body):
        r = srv.post("/v1/completions", body, timeout=120)
        assert r.status_code == 200, r.text
        return r.json()
    with cf.ThreadPoolExecutor(12) as ex:
        return list(ex.map(call, bodies))


def idle(srv, timeout=10.0):
    """/metrics once no sequence runs."""
    return srv.settled_metrics(lambda m: m.get("evalserver_num_requests_running") == 0, timeout)


def assert_same_answers(a, b):
    for ra, rb in zip(a, b, strict=True):
        assert len(ra["choices"]) == len(rb["choices"])
        for ca, cb in zip(ra["choices"], rb["choices"], strict=True):
            assert ca["text"] == cb["text"]
            assert ca["finish_reason"] == cb["finish_reason"]
            la, lb = ca["logprobs"], cb["logprobs"]
            assert (la is None) == (lb is None)
            if la is None:
                continue
            assert la["tokens"] == lb["tokens"]
            assert la["top_logprobs"] is None or len(la["top_logprobs"]) == len(lb["top_logprobs"])
            for x, y in zip(la["token_logprobs"], lb["token_logprobs"], strict=True):
                assert (x is None and y is None) or x == pytest.approx(y, abs=1e-5)
        assert ra["usage"] == rb["usage"]


def test_same_answers_with_and_without(spawn):
    ahead = spawn("async", "--async-scheduling", "on", "--max-num-seqs", "8",
                  "--max-num-batched-tokens", "96")
    serial = spawn("sync", "--async-scheduling", "off", "--max-num-seqs", "8",
                   "--max-num-batched-tokens", "96")
    bodies = mixed_requests()
    a = run_all(ahead, bodies)
    b = run_all(serial, bodies)
    assert_same_answers(a, b)
    finishes = {c["finish_reason"] for r in a for c in r["choices"]}
    assert finishes == {"stop", "length"}
    ma = idle(ahead)
    mb = idle(serial)
    steps = ma["evalserver_engine_steps_total"]
    assert ma["evalserver_engine_steps_scheduled_ahead_total"] > steps / 2
    assert mb["evalserver_engine_steps_scheduled_ahead_total"] == 0
    for m in (ma, mb):
        assert m["evalserver_engine_step_gap_seconds_total"] >= 0
        assert m["evalserver_kv_cache_free_blocks"] == m["evalserver_kv_cache_blocks"]


def test_streams_cut_short_free_everything(spawn):
    """Clients that leave mid-stream abort their requests while steps that
    hold them are in flight; nothing is lost or leaked."""
    srv = spawn("async-cut", "--async-scheduling", "on", "--max-num-seqs", "6")

    def cut(i):
        with srv.post("/v1/completions", {"model": "tiny", "prompt": prompt(i, 9),
                                          "max_tokens": 200, "ignore_eos": True,
                                          "stream": True, "n": 1 + i % 2},
                      timeout=60, stream=True) as r:
            assert r.status_code == 200
            for k, _ in enumerate(r.iter_lines()):
                if k >= 4:
                    break
    with cf.ThreadPoolExecutor(8) as ex:
        list(ex.map(cut, range(16)))
    m = idle(srv, timeout=30)
    assert m["evalserver_num_requests_running"] == 0
    # The server still answers, and completely.
    r = srv.post("/v1/completions", {"model": "tiny", "prompt": "amber river", "max_tokens": 8,
                                     "ignore_eos": True})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 8
    m = idle(srv)
    assert m["evalserver_kv_cache_free_blocks"] == m["evalserver_kv_cache_blocks"]


def test_auto_and_bad_values(spawn, build, tiny_model):
    """auto: off on the CPU backend when its threads take every core, on
    when they leave one; a value other than on, off or auto is refused."""
    cores = os.cpu_count()
    busy = spawn("auto-busy", "--async-scheduling", "auto", "--threads", str(cores))
    assert "async scheduling off (--async-scheduling auto)" in busy.log()
    if cores > 1:
        spare = spawn("auto-spare", "--async-scheduling", "auto", "--threads", str(cores - 1))
        assert "async scheduling on (--async-scheduling auto)" in spare.log()
    exe = f"{build}/server/evalserver"
    out = subprocess.run([exe, "--model", str(tiny_model), "--async-scheduling", "maybe"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert "--async-scheduling must be on, off or auto, got 'maybe'" in out.stderr
