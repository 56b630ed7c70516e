"""evalclient against the real evalserver (CPU backend, mkmodel's tiny model):
the shipped MT-Bench-format and multiple_choice examples end to end, a resume,
and a small W3. Kept small: the CI machine has two cores."""
import json
import math
import pathlib
import socket
import subprocess
import time
import urllib.request

import pytest

from evalclient_helpers import EXAMPLES, read_jsonl, run_client


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)


@pytest.fixture(scope="module")
def evalserver(build, shared, tmp_path_factory):
    exe = pathlib.Path(build) / "server" / "evalserver"
    mk = pathlib.Path(build) / "tools" / "mkmodel"
    if not exe.exists() or not mk.exists():
        pytest.skip("evalserver or mkmodel not built")
    model = tmp_path_factory.mktemp("client-model") / "tiny"
    subprocess.run([str(mk), "--shape", "tiny", "--tokenizer",
                    str(shared / "tokenizers" / "llama3_1"), "--out", str(model)],
                   check=True, capture_output=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path_factory.mktemp("client-server-log") / "evalserver.log", "wb")
    proc = subprocess.Popen([str(exe), "--model", str(model), "--served-model-name", "tiny",
                             "--port", str(port), "--max-model-len", "1024",
                             "--kv-cache-gb", "0.0625", "--threads", "2"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        assert proc.poll() is None, "evalserver exited"
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_examples_against_evalserver(evalclient, evalserver, tmp_path):
    out = tmp_path / "out"
    args = ["--tasks", "mtbench,multiple_choice", "--limit", "3", "--url", evalserver,
            "--model", "tiny", "--judge-model", "tiny", "--max-tokens", "8",
            "--judge-max-tokens", "8", "--out", str(out)]
    p = run_client(evalclient, *args, timeout=300, check=0)
    assert "multiple_choice" in p.stdout and "mtbench" in p.stdout
    res = json.load(open(out / "results.json"))
    fp = res["tasks"]["multiple_choice"]["server_fingerprint"]
    assert len(fp) == 1 and fp[0]
    assert res["tasks"]["mtbench"]["counts"]["ok"] == 3
    answers = read_jsonl(out / "mt_bench" / "model_answer" / "tiny.jsonl")
    assert len(answers) == 3 and all(len(a["choices"][0]["turns"]) == 2 for a in answers)
    judg = read_jsonl(out / "mt_bench" / "model_judgment" / "tiny_single.jsonl")
    assert len(judg) == 6  # random weights rarely rate: score -1 is what FastChat records then
    # a choice's loglikelihood equals the server's own echo of the same tokens
    recs = {r["id"]: r for r in read_jsonl(out / "samples.jsonl") if r["task"] == "multiple_choice"}
    item = json.loads((EXAMPLES / "multiple_choice.jsonl").read_text().splitlines()[0])
    ctx = post(evalserver + "/tokenize", {"model": "tiny", "prompt": item["context"]})["tokens"]
    whole = post(evalserver + "/tokenize",
                 {"model": "tiny", "prompt": item["context"] + item["choices"][1]})["tokens"]
    r = post(evalserver + "/v1/completions", {"model": "tiny", "prompt": whole, "echo": True,
                                               "logprobs": 1, "max_tokens": 1, "temperature": 0})
    want = sum(r["choices"][0]["logprobs"]["token_logprobs"][len(ctx):len(whole)])
    got = recs[item["id"]]["data"]["loglikelihoods"]
    assert got[1] == pytest.approx(want, abs=1e-4)
    assert all(math.isfinite(x) and x < 0 for x in got)
    # resume: nothing left to do, same scores
    p = run_client(evalclient, *args, timeout=120, check=0)
    res2 = json.load(open(out / "results.json"))
    assert res2["tasks"]["multiple_choice"]["counts"]["resumed"] == 3
    assert res2["tasks"]["multiple_choice"]["metrics"] == res["tasks"]["multiple_choice"]["metrics"]


def test_streaming_and_batch_against_evalserver(evalclient, evalserver, tmp_path):
    out = tmp_path / "out"
    run_client(evalclient, "--tasks", "generate_until,batch", "--limit", "3", "--url",
               evalserver + "/v1", "--model", "tiny", "--max-tokens", "8", "--stream",
               "--out", str(out), timeout=300, check=0)
    res = json.load(open(out / "results.json"))
    gu = res["tasks"]["generate_until"]
    assert gu["counts"]["ok"] == 3 and 0 < gu["tokens"]["completion"] <= 3 * 8
    lines = read_jsonl(out / "batch.jsonl")
    assert len(lines) == 3 and all(l["result"]["usage"]["completion_tokens"] > 0 for l in lines)


def test_w3_against_evalserver(evalclient, evalserver, tmp_path):
    out = tmp_path / "w3.json"
    run_client(evalclient, "bench", "--url", evalserver, "--model", "tiny", "--workload", "W3",
               "--num-prompts", "2", "--turns", "2", "--json", str(out), timeout=300, check=0)
    r = json.load(open(out))
    assert r["completed"] == 4 and r["total_output_tokens"] == 4 * 128
    assert r["replies_exact_token_ids"] == 4
    assert r["prefix_cache_hit_rate"] is not None and r["prefix_cache_hit_rate"] > 0.3
