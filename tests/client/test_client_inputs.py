"""evalclient on inputs nobody has seen: numeric option values, data files
with wrong fields (a clear error naming the line, exit 2, nothing sent),
and the field forms real data sets use (a numeric target, one stop string)."""
import json
import socket

import pytest

from evalclient_helpers import read_jsonl, run_client

BASE = ["--url", "http://127.0.0.1:9", "--model", "m"]


@pytest.mark.parametrize("args,msg", [
    (["--limit", "abc"], "--limit wants a whole number"),
    (["--max-tokens", "0"], "--max-tokens wants a whole number"),
    (["--max-inflight", "8x"], "--max-inflight wants a whole number"),
    (["--timeout", "nan"], "--timeout wants a number"),
    (["--retries", "-1"], "--retries wants a whole number"),
    (["--judge-max-tokens", ""], "--judge-max-tokens wants a whole number"),
    (["stray"], "unexpected argument 'stray'"),
    (["--data", "generate_untill=x.jsonl"], "data given for unknown task 'generate_untill'"),
])
def test_bad_option_values_are_usage_errors(evalclient, tmp_path, args, msg):
    p = run_client(evalclient, "--tasks", "generate_until", *BASE, "--out", str(tmp_path / "o"),
                   *args)
    assert p.returncode == 2 and msg in p.stderr, p.stderr
    assert not (tmp_path / "o" / "samples.jsonl").exists()


def test_bad_bench_option_values_are_usage_errors(evalclient):
    for args in (["--turns", "x"], ["--num-prompts", "-3"], ["--rate", "fast"], ["extra"]):
        p = run_client(evalclient, "bench", "--workload", "W1", "--dump-prompts", "1", *args)
        assert p.returncode == 2 and "evalclient bench:" in p.stderr, (args, p.stderr)


@pytest.mark.parametrize("task,lines,msg", [
    ("generate_until", ['{"prompt": "a"}', '', '{"prompt": "b", "stop": [1]}'],
     ":3: 'stop' must be a string or a list of strings"),
    ("generate_until", ['{"prompt": "a", "regex": "(["}'], ":1: bad 'regex' at offset"),
    ("generate_until", ['', '{"prompt": "a", "target": [4]}'],
     ":2: 'target' must be a string or a number"),
    ("generate_until", ['{"prompt": 5}'], ":1: needs a string 'prompt'"),
    ("mtbench", ['{"question_id": 1, "turns": ["a"]}', '{"question_id": 2, "turns": ["a", 7]}'],
     ":2: 'turns' must be strings"),
    ("multiple_choice", ['', '', '{"context": "c", "choices": ["a"], "gold": 1}'],
     ":3: 'gold' must be between 0 and 0"),
    ("env", ['{"id": "a"}', '{"id": "a"}'], "two episodes have the id \"a\""),
    ("env", ['{"x": 1}', '{"id": 0}'], "two episodes have the id 0"),
    ("env", ['{"id": [1]}'], ":1: 'id' must be a string or a number"),
])
def test_bad_data_fields_name_the_line(evalclient, fake_server, tmp_path, task, lines, msg):
    srv = fake_server()
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(lines) + "\n")
    p = run_client(evalclient, "--tasks", task, "--data", f"{task}={data}", "--env", "cat",
                   "--url", srv.url, "--model", "m", "--out", str(tmp_path / "o"))
    assert p.returncode == 2 and f"{data}" in p.stderr and msg in p.stderr, p.stderr
    assert srv.stats()["count"] == 0


def test_numeric_target_and_single_stop_string(evalclient, fake_server, tmp_path):
    # the fake server answers " 42\nand then some more text"
    srv = fake_server()
    items = [{"id": "num", "prompt": "Q", "target": 42, "regex": "(\\d+)"},
             {"id": "stop", "prompt": "Q", "target": "42", "stop": "\n"}]
    data = tmp_path / "gu.jsonl"
    data.write_text("".join(json.dumps(i) + "\n" for i in items))
    run_client(evalclient, "--tasks", "generate_until", "--data", f"generate_until={data}",
               "--url", srv.url, "--model", "m", "--out", str(tmp_path / "o"), check=0)
    recs = {r["id"]: r for r in read_jsonl(tmp_path / "o" / "samples.jsonl")}
    assert recs["num"]["metrics"] == {"exact_match": 1}
    assert recs["stop"]["data"]["output"] == " 42" and recs["stop"]["metrics"] == {"exact_match": 1}
    sent = [json.loads(b) for b in srv.stats()["bodies"]]
    assert [b["stop"] for b in sent if "stop" in b] == [["\n"]]


def test_bad_data_of_a_later_task_sends_and_logs_nothing(evalclient, fake_server, tmp_path):
    # (under the sanitizer build this also checks that what the first task loaded is freed)
    srv = fake_server()
    bad = tmp_path / "mt.jsonl"
    bad.write_text('{"question_id": 1, "turns": "not a list"}\n')
    p = run_client(evalclient, "--tasks", "generate_until,batch,mtbench", "--data",
                   f"mtbench={bad}", "--url", srv.url, "--model", "m", "--out", str(tmp_path / "o"))
    assert p.returncode == 2 and f"{bad}:1: needs 'question_id' and 'turns'" in p.stderr
    assert srv.stats()["count"] == 0
    assert (tmp_path / "o" / "samples.jsonl").read_text() == ""
    assert not (tmp_path / "o" / "batch.jsonl").exists()


def test_model_and_out_default_from_the_server(evalclient, fake_server, tmp_path):
    # `evalclient --tasks T --url URL` alone: the model is the one the server
    # lists, the results go to evalclient-results/MODEL, and a rerun resumes
    srv = fake_server("--models", "org/solo-1")
    args = ["--tasks", "generate_until", "--limit", "2", "--url", srv.url + "/v1"]
    p = run_client(evalclient, *args, cwd=tmp_path, check=0)
    out = tmp_path / "evalclient-results" / "org_solo-1"
    assert "org/solo-1" in p.stderr and str(out.relative_to(tmp_path)) in p.stderr, p.stderr
    sent = [json.loads(b) for b in srv.stats()["bodies"]]
    assert len(sent) == 2 and {b["model"] for b in sent} == {"org/solo-1"}
    assert len(read_jsonl(out / "samples.jsonl")) == 2
    p = run_client(evalclient, *args, cwd=tmp_path, check=0)
    assert "resumed 2 of 2" in p.stdout and len(srv.stats()["bodies"]) == 2
    bench = run_client(evalclient, "bench", "--url", srv.url, "--workload", "W2",
                       "--num-prompts", "2", cwd=tmp_path, check=0)
    bodies = srv.stats()["bodies"]
    assert len(bodies) == 4 and {json.loads(b)["model"] for b in bodies} == {"org/solo-1"}, bench


@pytest.mark.parametrize("models, msg", [
    ("a,b", "serves 2 models ('a', 'b'): choose one with --model"),
    ("", "GET /v1/models lists no model"),
])
def test_model_must_be_named_unless_the_server_has_one(evalclient, fake_server, tmp_path,
                                                       models, msg):
    srv = fake_server("--models", models)
    p = run_client(evalclient, "--tasks", "generate_until", "--url", srv.url, cwd=tmp_path,
                   check=2)
    assert msg in p.stderr and srv.stats()["count"] == 0, p.stderr
    assert not (tmp_path / "evalclient-results").exists()


def test_model_lookup_on_a_dead_server_is_a_setup_error(evalclient, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = run_client(evalclient, "--tasks", "generate_until", "--url", f"http://127.0.0.1:{port}",
                   cwd=tmp_path, check=2)
    assert "no --model given, and asking the server failed" in p.stderr, p.stderr


@pytest.mark.parametrize("stream", [False, True])
def test_reply_with_nul_keeps_the_text_after_it(evalclient, fake_server, tmp_path, stream):
    # a model may generate the byte 0 (JSON "\u0000"); the answer keeps what
    # follows it, with U+FFFD in its place, instead of ending there
    srv = fake_server("--completion-text", "a\\u0000b 42")
    args = ["--tasks", "generate_until", "--limit", "1", "--url", srv.url, "--model", "m",
            "--out", str(tmp_path / "o")] + (["--stream"] if stream else [])
    p = run_client(evalclient, *args, check=0)
    assert "U+0000" in p.stderr, p.stderr
    (rec,) = read_jsonl(tmp_path / "o" / "samples.jsonl")
    assert rec["status"] == "ok" and rec["data"]["output"] == "a\ufffdb 42", rec
