"""evalclient's failure handling and resume: retries on 5xx/429/dropped
connections, never on 4xx, honest error records, and a rerun after SIGKILL
that neither loses nor duplicates a sample."""
import json
import os
import signal
import subprocess
import time

from evalclient_helpers import EXAMPLES, read_jsonl, run_client


def test_transient_failures_are_retried(evalclient, fake_server, tmp_path):
    srv = fake_server("--fail-every", "5", "--429-every", "7", "--drop-every", "11")
    p = run_client(evalclient, "--tasks", "multiple_choice,generate_until", "--url", srv.url,
                   "--model", "tiny", "--retries", "8", "--backoff", "0.02", "--out", str(tmp_path), check=0)
    st = srv.stats()["statuses"]
    assert st["500"] > 0 and st["429"] > 0 and st["dropped"] > 0
    res = json.load(open(tmp_path / "results.json"))
    assert res["failed_samples"] == 0
    assert res["tasks"]["multiple_choice"]["counts"]["ok"] == 20
    assert "errors 0" in p.stdout


def test_retry_after_is_honoured(evalclient, fake_server, tmp_path):
    srv = fake_server("--429-first", "1", "--retry-after", "1")
    t0 = time.time()
    run_client(evalclient, "--tasks", "generate_until", "--limit", "1", "--url", srv.url,
               "--model", "tiny", "--backoff", "0.01", "--out", str(tmp_path), check=0)
    assert time.time() - t0 >= 1.0
    assert srv.stats()["statuses"] == {"429": 1, "200": 1}


def test_permanent_failures_are_recorded(evalclient, fake_server, tmp_path):
    # gu-06 asks about a hexagon: always 500; gu-02 ("9 times 9"): always 400
    srv = fake_server("--fail-contains", "hexagon", "--bad-contains", "9 times 9")
    p = run_client(evalclient, "--tasks", "generate_until", "--url", srv.url, "--model", "tiny",
                   "--retries", "2", "--backoff", "0.02", "--out", str(tmp_path))
    assert p.returncode == 1
    bodies = srv.stats()["bodies"]
    hex_n = [n for b, n in bodies.items() if "hexagon" in b]
    bad_n = [n for b, n in bodies.items() if "9 times 9" in b]
    assert hex_n == [3]  # first attempt + 2 retries
    assert bad_n == [1]  # a 4xx is never retried
    recs = {r["id"]: r for r in read_jsonl(tmp_path / "samples.jsonl")}
    assert recs["gu-06"]["status"] == "error" and "HTTP 500" in recs["gu-06"]["error"]
    assert recs["gu-02"]["status"] == "error" and "HTTP 400" in recs["gu-02"]["error"]
    res = json.load(open(tmp_path / "results.json"))
    gu = res["tasks"]["generate_until"]
    assert gu["counts"] == {"total": 10, "ok": 8, "error": 2, "resumed": 0}
    assert gu["metrics"]["exact_match"]["n"] == 8  # errors are excluded from the score
    assert res["failed_samples"] == 2


def test_resume_after_sigkill(evalclient, fake_server, tmp_path):
    srv = fake_server("--delay", "0.03")
    out = tmp_path / "out"
    args = [evalclient, "--tasks", "multiple_choice,generate_until,batch", "--url", srv.url,
            "--model", "tiny", "--out", str(out)]
    # slow enough to be killed mid-run; the reruns go at full width
    proc = subprocess.Popen(args + ["--max-inflight", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / "samples.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline:
        if log.exists() and len(log.read_text().splitlines()) >= 8:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {r["key"] for r in read_jsonl(log)}
    assert 8 <= len(done_before) < 35
    # a line cut short by a kill is ignored and sealed
    with open(log, "a") as f:
        f.write('{"key":"0123456789abcdef","task":"multiple_choice","sta')
    requests_before = srv.stats()["count"]
    run_client(evalclient, *args[1:], check=0)
    bad = []
    recs = read_jsonl(log, bad)
    assert len(bad) == 1 and bad[0].startswith('{"key":"0123456789abcdef"')
    keys = [r["key"] for r in recs]
    assert len(keys) == len(set(keys)) == 35  # 20 + 10 + 5, none lost, none twice
    assert all(r["status"] == "ok" for r in recs)
    res = json.load(open(out / "results.json"))
    resumed = sum(t["counts"]["resumed"] for t in res["tasks"].values())
    assert resumed == len(done_before)
    assert all(t["counts"]["ok"] == t["counts"]["total"] for t in res["tasks"].values())
    # the resumed run sent requests only for what was missing
    assert srv.stats()["count"] - requests_before < requests_before + 200
    # and scores as an uninterrupted run does
    clean = tmp_path / "clean"
    run_client(evalclient, *args[1:-1], str(clean), check=0)
    res2 = json.load(open(clean / "results.json"))
    for t in ("multiple_choice", "generate_until"):
        assert res["tasks"][t]["metrics"] == res2["tasks"][t]["metrics"]
    assert (out / "batch.jsonl").read_text().count("\n") == 5
    a = [json.loads(l)["request"] for l in open(out / "batch.jsonl")]
    b = [json.loads(l)["request"] for l in open(clean / "batch.jsonl")]
    assert a == b
    # a third run has nothing left to do
    before = srv.stats()["count"]
    run_client(evalclient, *args[1:], check=0)
    assert srv.stats()["count"] == before


def test_line_cut_just_before_its_newline_is_kept_once(evalclient, fake_server, tmp_path):
    """A kill between a record and its newline leaves a whole record: the
    rerun keeps it (sealed), neither redoing the sample nor logging it twice."""
    srv = fake_server()
    args = ["--tasks", "generate_until", "--limit", "2", "--url", srv.url, "--model", "tiny",
            "--out", str(tmp_path)]
    run_client(evalclient, *args, check=0)
    log = tmp_path / "samples.jsonl"
    log.write_text(log.read_text()[:-1])
    before = srv.stats()["count"]
    run_client(evalclient, *args, check=0)
    assert srv.stats()["count"] == before
    keys = [r["key"] for r in read_jsonl(log)]
    assert len(keys) == len(set(keys)) == 2
    res = json.load(open(tmp_path / "results.json"))
    assert res["tasks"]["generate_until"]["counts"]["resumed"] == 2


def test_failed_judging_keeps_the_answers(evalclient, fake_server, tmp_path):
    """Answers already generated are not lost when only the judge fails: the
    rerun judges them, and reports what one uninterrupted run does."""
    answerer, bad_judge, judge = fake_server(), fake_server("--fail-every", "1"), fake_server()
    common = ["--tasks", "mtbench", "--limit", "3", "--model", "tiny", "--judge-model", "judge",
              "--retries", "0"]
    out = tmp_path / "o"
    p = run_client(evalclient, *common, "--url", answerer.url, "--judge-url", bad_judge.url,
                   "--out", str(out))
    assert p.returncode == 1
    sent = answerer.stats()["count"]
    assert sent == 6
    run_client(evalclient, *common, "--url", answerer.url, "--judge-url", judge.url,
               "--out", str(out), check=0)
    assert answerer.stats()["count"] == sent  # nothing asked twice
    clean = tmp_path / "clean"
    run_client(evalclient, *common, "--url", fake_server().url, "--judge-url", judge.url,
               "--out", str(clean), check=0)
    a, b = (json.load(open(d / "results.json"))["tasks"]["mtbench"] for d in (out, clean))
    assert a["metrics"] == b["metrics"] and a["tokens"] == b["tokens"]
    assert a["latency_s"]["requests"] == b["latency_s"]["requests"]
    strip = lambda d: [{k: v for k, v in r.items() if k != "tstamp"} for r in read_jsonl(d)]
    for f in ("model_answer/tiny.jsonl", "model_judgment/judge_single.jsonl"):
        assert strip(out / "mt_bench" / f) == strip(clean / "mt_bench" / f)
