"""evalclient end to end against the fake OpenAI-compatible server: every task
kind, streaming, several servers, the real MT-Bench files, the env protocol."""
import json
import math
import re
import sys

import pytest

import fake_server as fs
from evalclient_helpers import EXAMPLES, read_jsonl, run_client

HERE = fs.__file__.rsplit("/", 1)[0]


def load(path):
    return [json.loads(l) for l in open(path) if l.strip()]


def expected_mc(item):
    """The loglikelihoods the client must report, computed independently from
    the fake model: tokens of context, continuation = whole[len(ctx):]."""
    ctx = item["context"]
    keep = ctx.rstrip()
    lls = []
    for ch in item["choices"]:
        c_ids = fs.tokenize(keep)
        whole = fs.tokenize(keep + ctx[len(keep):] + ch)
        lls.append(sum(fs.fake_logprob(whole[i - 1], whole[i]) for i in range(len(c_ids), len(whole))))
    return lls


def test_help_documents_every_option(evalclient):
    p = run_client(evalclient, "--help", check=0)
    for opt in ["--tasks", "--url", "--model", "--data", "--out", "--judge-url", "--judge-model",
                "--max-inflight", "--limit", "--api-key", "--timeout", "--retries",
                "--sync-turns", "--stream", "--env", "--judge-prompts"]:
        assert opt in p.stdout
    p = run_client(evalclient, "bench", "--help", check=0)
    for opt in ["--workload", "--num-prompts", "--rate", "--sync-turns", "--json"]:
        assert opt in p.stdout
    assert run_client(evalclient, "--tasks", "nope", "--url", "http://x", "--model", "m",
                      "--out", "/tmp/x").returncode == 2


def test_all_example_tasks(evalclient, fake_server, tmp_path):
    srv = fake_server()
    out = tmp_path / "out"
    p = run_client(evalclient, "--tasks", "mtbench,multiple_choice,generate_until,batch",
                   "--url", srv.url, "--model", "tiny", "--judge-model", "judge",
                   "--out", str(out), check=0)
    assert "multiple_choice" in p.stdout and "acc_norm" in p.stdout
    res = json.load(open(out / "results.json"))
    recs = read_jsonl(out / "samples.jsonl")
    by_task = {}
    for r in recs:
        by_task.setdefault(r["task"], []).append(r)
        assert r["status"] == "ok" and r["fingerprint"] == fs.FINGERPRINT

    # multiple_choice: token-exact loglikelihoods, acc and acc_norm like lm-eval
    items = load(EXAMPLES / "multiple_choice.jsonl")
    acc = acc_norm = 0
    for r in by_task["multiple_choice"]:
        item = items[r["index"]]
        want = expected_mc(item)
        assert r["data"]["loglikelihoods"] == pytest.approx(want, abs=1e-9)
        pred = max(range(len(want)), key=lambda i: want[i])
        lens = [len(c) for c in item["choices"]]
        pred_n = max(range(len(want)), key=lambda i: want[i] / lens[i])
        acc += pred == item["gold"]
        acc_norm += pred_n == item["gold"]
    mc = res["tasks"]["multiple_choice"]
    assert mc["counts"] == {"total": 20, "ok": 20, "error": 0, "resumed": 0}
    assert mc["metrics"]["acc"]["value"] == pytest.approx(acc / 20)
    assert mc["metrics"]["acc_norm"]["value"] == pytest.approx(acc_norm / 20)
    p_hat = acc / 20
    assert mc["metrics"]["acc"]["stderr"] == pytest.approx(math.sqrt(p_hat * (1 - p_hat) / 19))

    # generate_until: the fake model always answers " 42" (stop at newline)
    items = load(EXAMPLES / "generate_until.jsonl")
    em = 0
    for it in items:
        m = re.search(it["regex"], " 42")
        em += bool(m) and m.group(1).strip() == it["target"]
    assert res["tasks"]["generate_until"]["metrics"]["exact_match"]["value"] == pytest.approx(em / len(items))
    assert all(r["data"]["output"] == " 42" for r in by_task["generate_until"])

    # batch: one line per request, in input order, with timing
    reqs = load(EXAMPLES / "batch.jsonl")
    lines = load(out / "batch.jsonl")
    assert len(lines) == len(reqs)
    for req, line in zip(reqs, lines):
        assert line["request"]["max_tokens"] == req["max_tokens"]
        assert line["request"].get("prompt") == req.get("prompt")
        assert line["result"]["choices"][0]
        assert line["timing"]["latency_s"] > 0 and line["error"] is None
    assert "message" in lines[3]["result"]["choices"][0]

    # mtbench: FastChat answer and judgment files, scores from [[rating]]
    qs = load(EXAMPLES / "mtbench.jsonl")
    answers = load(out / "mt_bench" / "model_answer" / "tiny.jsonl")
    assert [a["question_id"] for a in answers] == sorted(q["question_id"] for q in qs)
    for a in answers:
        assert set(a) == {"question_id", "answer_id", "model_id", "choices", "tstamp"}
        assert a["model_id"] == "tiny" and len(a["choices"][0]["turns"]) == 2
        assert a["choices"][0]["turns"][1].startswith("Reply to turn 2:")
    judg = load(out / "mt_bench" / "model_judgment" / "judge_single.jsonl")
    assert len(judg) == 2 * len(qs)
    cat = {q["question_id"]: q["category"] for q in qs}
    for j in judg:
        assert set(j) == {"question_id", "model", "judge", "user_prompt", "judgment", "score",
                          "turn", "tstamp"}
        assert j["score"] == fs.expected_rating(fs.judge_score(j["user_prompt"]))
        math_cat = cat[j["question_id"]] in ("math", "reasoning", "coding")
        name = ("single-math-v1" if math_cat else "single-v1") + ("-multi-turn" if j["turn"] == 2 else "")
        assert j["judge"] == ["judge", name]
    # unrated judgments (-1) are left out of every average, as FastChat does
    per_q = {}
    for j in judg:
        if j["score"] >= 0:
            per_q.setdefault(j["question_id"], []).append(j["score"])
    q_means = [sum(v) / len(v) for v in per_q.values()]
    mt = res["tasks"]["mtbench"]["metrics"]
    assert mt["score"]["value"] == pytest.approx(sum(q_means) / len(q_means))
    assert mt["score"]["n"] == len(per_q)
    t1 = [j["score"] for j in judg if j["turn"] == 1 and j["score"] >= 0]
    assert mt["score_turn1"]["value"] == pytest.approx(sum(t1) / len(t1))
    w = [j["score"] for j in judg if cat[j["question_id"]] == "writing" and j["score"] >= 0]
    if w:
        assert mt["score/writing"]["value"] == pytest.approx(sum(w) / len(w))
    assert res["tasks"]["mtbench"]["server_fingerprint"] == [fs.FINGERPRINT]
    assert res["tasks"]["mtbench"]["latency_s"]["p50"] > 0
    assert res["failed_samples"] == 0


def test_mtbench_temperatures_and_real_question_file(evalclient, fake_server, tmp_path, shared):
    srv = fake_server()
    qfile = shared / "data" / "mt_bench" / "question.jsonl"
    prompts = shared / "data" / "mt_bench" / "judge_prompts.jsonl"
    run_client(evalclient, "--tasks", "mtbench", "--data", f"mtbench={qfile}", "--limit", "30",
               "--judge-prompts", str(prompts), "--url", srv.url, "--model", "tiny",
               "--judge-model", "judge", "--out", str(tmp_path), check=0)
    temps = {"writing": 0.7, "roleplay": 0.7, "reasoning": 0.0, "math": 0.0}
    qs = {q["turns"][0]: q for q in load(qfile)[:30]}
    seen = 0
    for body, n in srv.stats()["bodies"].items():
        b = json.loads(body)
        if b.get("model") != "tiny":
            continue
        q = qs[b["messages"][0]["content"]]
        assert b["temperature"] == temps[q["category"]]
        seen += 1
    assert seen == 60
    judg = load(tmp_path / "mt_bench" / "model_judgment" / "judge_single.jsonl")
    real = {json.loads(l)["name"]: json.loads(l) for l in open(prompts)}
    for j in judg:
        assert j["judge"][1] in real
        assert j["user_prompt"].startswith(real[j["judge"][1]]["prompt_template"][:20])


def test_stream_gives_the_same_answers(evalclient, fake_server, tmp_path):
    srv = fake_server()
    outs = []
    for mode in ([], ["--stream"]):
        out = tmp_path / ("s" if mode else "n")
        run_client(evalclient, "--tasks", "mtbench,generate_until", "--url", srv.url, "--model",
                   "tiny", "--out", str(out), *mode, check=0)
        outs.append(out)
    a = [x["choices"] for x in load(outs[0] / "mt_bench" / "model_answer" / "tiny.jsonl")]
    b = [x["choices"] for x in load(outs[1] / "mt_bench" / "model_answer" / "tiny.jsonl")]
    assert a == b
    r = json.load(open(outs[1] / "results.json"))
    assert r["tasks"]["generate_until"]["tokens"]["completion"] == 30
    assert any(json.loads(k).get("stream") is True for k in srv.stats()["bodies"])


def test_conversation_stays_on_its_server(evalclient, fake_server, tmp_path):
    a, b = fake_server(), fake_server()
    run_client(evalclient, "--tasks", "mtbench", "--url", a.url, "--url", b.url, "--model",
               "tiny", "--out", str(tmp_path), check=0)
    firsts = []
    for srv in (a, b):
        turns = {}
        for body in srv.stats()["bodies"]:
            msgs = json.loads(body)["messages"]
            turns.setdefault(msgs[0]["content"], set()).add(len(msgs))
        assert all(v == {1, 3} for v in turns.values()), turns
        firsts.append(len(turns))
    assert firsts == [4, 4]


def test_env_task(evalclient, fake_server, tmp_path):
    srv = fake_server()
    data = tmp_path / "env.jsonl"
    episodes = [{"id": f"ep{i}", "turns": 1 + i % 4} for i in range(12)] + [{"turns": 2}]
    data.write_text("".join(json.dumps(e) + "\n" for e in episodes))
    out = tmp_path / "out"
    run_client(evalclient, "--tasks", "env", "--data", f"env={data}", "--env",
               f"{sys.executable} {HERE}/fake_env.py", "--url", srv.url, "--model", "tiny",
               "--out", str(out), check=0)
    recs = {json.dumps(r["id"]): r for r in read_jsonl(out / "samples.jsonl")}
    assert len(recs) == len(episodes)
    for i, e in enumerate(episodes):
        r = recs[json.dumps(e.get("id", i))]
        assert r["status"] == "ok" and r["metrics"] == {"reward": 1, "turns": e["turns"]}
        conv = r["data"]["conversation"]
        assert [m["role"] for m in conv] == ["user", "assistant"] * e["turns"]
        assert conv[0]["content"] == f"question 1 of episode {e.get('id', i)}"
    # an environment program that dies: every episode is an honest error
    p = run_client(evalclient, "--tasks", "env", "--data", f"env={data}", "--env", "exit 0",
                   "--url", srv.url, "--model", "tiny", "--out", str(tmp_path / "dead"))
    assert p.returncode == 1
    recs = read_jsonl(tmp_path / "dead" / "samples.jsonl")
    assert len(recs) == len(episodes) and all(r["status"] == "error" for r in recs)


def test_api_key_is_sent(evalclient, fake_server, tmp_path):
    srv = fake_server("--api-key", "sekrit")
    p = run_client(evalclient, "--tasks", "generate_until", "--limit", "2", "--url", srv.url,
                   "--model", "tiny", "--out", str(tmp_path / "a"), "--retries", "0")
    assert p.returncode == 1  # 401 is a 4xx: recorded, never retried
    assert srv.stats()["statuses"] == {"401": 2}
    run_client(evalclient, "--tasks", "generate_until", "--limit", "2", "--url", srv.url,
               "--model", "tiny", "--api-key", "sekrit", "--out", str(tmp_path / "b"), check=0)


def test_judge_on_its_own_server(evalclient, fake_server, tmp_path):
    a, b, judge = fake_server(), fake_server(), fake_server()
    run_client(evalclient, "--tasks", "mtbench", "--limit", "4", "--url", a.url, "--url", b.url,
               "--model", "tiny", "--judge-url", judge.url, "--judge-model", "judge",
               "--out", str(tmp_path), check=0)
    for srv in (a, b):
        assert all(json.loads(x)["model"] == "tiny" for x in srv.stats()["bodies"])
    jb = [json.loads(x) for x in judge.stats()["bodies"]]
    assert len(jb) == 8 and all(x["model"] == "judge" and x["temperature"] == 0 for x in jb)
    assert len(load(tmp_path / "mt_bench" / "model_judgment" / "judge_single.jsonl")) == 8


def test_multiple_choice_boundary_whitespace_and_utf8(evalclient, fake_server, tmp_path):
    srv = fake_server()
    items = [
        {"id": 1, "context": "The capital of France is ", "choices": ["Paris", "Rome"], "gold": 0},
        {"id": 2, "context": "Q: café?\nA:\n", "choices": ["naïve", "ok", "日本語"], "gold": 2},
        {"id": 3, "context": "", "choices": [" x", " yy"], "gold": 1},
    ]
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items))
    run_client(evalclient, "--tasks", "multiple_choice", "--data", f"multiple_choice={data}",
               "--url", srv.url, "--model", "tiny", "--out", str(tmp_path / "o"), check=0)
    recs = {r["id"]: r for r in read_jsonl(tmp_path / "o" / "samples.jsonl")}
    for it in items:
        want = expected_mc(it)
        got = recs[it["id"]]["data"]
        assert got["loglikelihoods"] == pytest.approx(want, abs=1e-9)
        assert got["pred_norm"] == max(range(len(want)), key=lambda i: want[i] / len(it["choices"][i]))
    # the moved whitespace is scored as part of the continuation
    tok = [json.loads(b) for b in srv.stats()["bodies"] if '"echo"' in b]
    assert any(len(b["prompt"]) == len(fs.tokenize("The capital of France is Paris")) for b in tok)


def test_repeated_data_lines_are_distinct_samples(evalclient, fake_server, tmp_path):
    srv = fake_server()
    line = json.dumps({"id": "same", "prompt": "Q: 6*7?\nA:", "target": "42", "stop": ["\n"],
                       "regex": "(\\d+)"})
    data = tmp_path / "gu.jsonl"
    data.write_text((line + "\n") * 3)
    for _ in range(2):  # the rerun resumes all three
        run_client(evalclient, "--tasks", "generate_until", "--data", f"generate_until={data}",
                   "--url", srv.url, "--model", "tiny", "--out", str(tmp_path / "o"), check=0)
    recs = read_jsonl(tmp_path / "o" / "samples.jsonl")
    assert len(recs) == 3 and len({r["key"] for r in recs}) == 3
    res = json.load(open(tmp_path / "o" / "results.json"))
    assert res["tasks"]["generate_until"]["counts"] == {"total": 3, "ok": 3, "error": 0, "resumed": 3}


def test_turn_order_async_and_sync(evalclient, fake_server, tmp_path):
    """Without a barrier a conversation's turn 2 goes out as soon as its turn 1
    is answered (ahead of conversations not yet started); --sync-turns holds
    every turn 2 until all turn 1 replies are in. Answers are the same."""
    answers = {}
    for mode in ("async", "sync"):
        srv = fake_server()
        extra = ["--sync-turns"] if mode == "sync" else []
        run_client(evalclient, "--tasks", "mtbench", "--url", srv.url, "--model", "tiny",
                   "--max-inflight", "2", "--out", str(tmp_path / mode), *extra, check=0)
        order = [len(json.loads(b)["messages"]) for b in srv.stats()["bodies"]]  # arrival order
        assert sorted(order) == [1] * 8 + [3] * 8
        first_turn2 = order.index(3)
        if mode == "sync":
            assert order == [1] * 8 + [3] * 8
        else:
            assert first_turn2 < 8
        answers[mode] = load(tmp_path / mode / "mt_bench" / "model_answer" / "tiny.jsonl")
    assert [a["choices"] for a in answers["async"]] == [a["choices"] for a in answers["sync"]]


def test_task_file(evalclient, fake_server, tmp_path):
    srv = fake_server()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "gu.jsonl").write_text((EXAMPLES / "generate_until.jsonl").read_text())
    tf = tmp_path / "d" / "tasks.txt"
    tf.write_text(f"# our tasks\ngenerate_until=gu.jsonl\nbatch={EXAMPLES / 'batch.jsonl'}\n")
    run_client(evalclient, "--task-file", str(tf), "--url", srv.url, "--model", "tiny",
               "--limit", "2", "--out", str(tmp_path / "o"), check=0)
    res = json.load(open(tmp_path / "o" / "results.json"))
    assert sorted(res["tasks"]) == ["batch", "generate_until"]
    assert all(t["counts"]["ok"] == 2 for t in res["tasks"].values())


def test_env_program_answering_while_the_client_writes(evalclient, fake_server, tmp_path):
    """More episode lines than the program's stdin pipe holds, answered at once
    with more than its stdout pipe holds: neither side may block the other."""
    srv = fake_server()
    prog = tmp_path / "env.py"
    prog.write_text(
        "import json, sys\n"
        "for line in sys.stdin:\n"
        "    m = json.loads(line)\n"
        "    print(json.dumps({'id': m['id'], 'done': True, 'reward': 1, 'pad': 'y' * 4000}),"
        " flush=True)\n")
    data = tmp_path / "env.jsonl"
    data.write_text("".join(json.dumps({"id": i, "pad": "x" * 4000}) + "\n" for i in range(100)))
    run_client(evalclient, "--tasks", "env", "--data", f"env={data}", "--env",
               f"{sys.executable} {prog}", "--url", srv.url, "--model", "tiny",
               "--out", str(tmp_path / "o"), timeout=30, check=0)
    recs = read_jsonl(tmp_path / "o" / "samples.jsonl")
    assert len(recs) == 100 and all(r["metrics"] == {"reward": 1, "turns": 0} for r in recs)


def test_report_covers_only_this_runs_samples(evalclient, fake_server, tmp_path):
    """A rerun into the same folder with other settings or fewer samples
    reports (and writes answer files for) its own samples only."""
    srv = fake_server()
    out = str(tmp_path / "o")
    common = ["--url", srv.url, "--model", "tiny", "--out", out]
    run_client(evalclient, "--tasks", "generate_until,mtbench", "--limit", "5", *common, check=0)
    run_client(evalclient, "--tasks", "generate_until,mtbench", "--limit", "3",
               "--max-tokens", "4", *common, check=0)
    res = json.load(open(tmp_path / "o" / "results.json"))
    for t in ("generate_until", "mtbench"):
        assert res["tasks"][t]["counts"] == {"total": 3, "ok": 3, "error": 0, "resumed": 0}
    answers = load(tmp_path / "o" / "mt_bench" / "model_answer" / "tiny.jsonl")
    assert len(answers) == 3 and all(len(a["choices"][0]["turns"][0]) <= 4 for a in answers)
    # the judge's cap is part of a judged sample's key
    judged = ["--tasks", "mtbench", "--limit", "1", "--judge-model", "judge"]
    run_client(evalclient, *judged, *common, check=0)
    run_client(evalclient, *judged, "--judge-max-tokens", "8", *common, check=0)
    res = json.load(open(tmp_path / "o" / "results.json"))
    assert res["tasks"]["mtbench"]["counts"]["resumed"] == 0


def test_task_named_twice_runs_once(evalclient, fake_server, tmp_path):
    srv = fake_server()
    run_client(evalclient, "--tasks", "generate_until,generate_until", "--url", srv.url,
               "--model", "tiny", "--limit", "3", "--out", str(tmp_path / "o"), check=0)
    keys = [r["key"] for r in read_jsonl(tmp_path / "o" / "samples.jsonl")]
    assert len(keys) == len(set(keys)) == 3
    assert srv.stats()["count"] == 3


def test_success_status_without_choices_is_an_error(evalclient, fake_server, tmp_path):
    # gu-06 (the hexagon) gets HTTP 200 {"error": ...}, as some gateways answer
    srv = fake_server("--ok-error-contains", "hexagon")
    p = run_client(evalclient, "--tasks", "generate_until", "--url", srv.url, "--model", "tiny",
                   "--out", str(tmp_path / "o"))
    assert p.returncode == 1
    recs = {r["id"]: r for r in read_jsonl(tmp_path / "o" / "samples.jsonl")}
    assert recs["gu-06"]["status"] == "error" and "without choices" in recs["gu-06"]["error"]
    assert sum(r["status"] == "ok" for r in recs.values()) == 9
