"""lm-evaluation-harness against a live evalserver: our own small
multiple-choice task (loglikelihoods through echo + logprobs) and a
generate_until task, run with `lm_eval --model local-completions` and the
server's own tokenizer endpoints (tokenizer_backend=remote). Every
loglikelihood lm-eval reports must equal the NumPy reference model's.

Needs lm-eval (tests/requirements.txt: lm-eval[api], no torch); skipped
when it is not installed. EVAL_SKIP_PEER=1 skips it on purpose.
"""
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
from tokenizers import Tokenizer

HERE = pathlib.Path(__file__).resolve().parent
API = HERE.parent / "api"


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


servers = _load("evalserver_api_servers", API / "conftest.py")
reference = _load("evalserver_api_reference", API / "api_reference.py")


def lm_eval_cmd():
    if os.environ.get("EVAL_SKIP_PEER") == "1":
        pytest.skip("EVAL_SKIP_PEER=1")
    if importlib.util.find_spec("lm_eval") is not None:
        return [sys.executable, "-m", "lm_eval"]
    exe = os.environ.get("LM_EVAL") or shutil.which("lm_eval")
    if exe:
        return [exe]
    pytest.skip("lm-eval is not installed (pip install 'lm-eval[api]')")


@pytest.fixture(scope="module")
def peer_server(build, shared, tmp_path_factory):
    mk = pathlib.Path(build) / "tools" / "mkmodel"
    if not mk.exists():
        pytest.skip(f"{mk} not built")
    model = tmp_path_factory.mktemp("peer-model") / "tiny"
    subprocess.run([str(mk), "--shape", "tiny", "--tokenizer",
                    str(shared / "tokenizers" / "llama3_1"), "--out", str(model)],
                   check=True, capture_output=True)
    logs = tmp_path_factory.mktemp("peer-logs")
    srv = servers.start_server(build, model, logs, "peer")
    yield srv, model
    assert servers.stop_server(srv) == 0, srv.log()[-4000:]


def encode_pair(tok, context, continuation):
    """lm-eval's TemplateLM._encode_pair with a tokenizer that adds nothing."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok.encode(context + continuation, add_special_tokens=False).ids
    ctx = tok.encode(context, add_special_tokens=False).ids
    return ctx, whole[len(ctx):]


def test_lm_eval_tasks_match_reference(peer_server, shared, tmp_path):
    srv, model = peer_server
    cmd = lm_eval_cmd()
    out = tmp_path / "out"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf"), "OPENAI_API_KEY": "unused",
           "TOKENIZERS_PARALLELISM": "false"}
    args = cmd + ["--model", "local-completions", "--model_args",
                  f"model=tiny,base_url={srv.url}/completions,tokenizer_backend=remote,"
                  "num_concurrent=4,max_retries=1,tokenized_requests=True",
                  "--tasks", "evalserver_mc,evalserver_gen", "--include_path", str(HERE),
                  "--output_path", str(out), "--log_samples"]
    p = subprocess.run(args, cwd=HERE, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-6000:]

    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]
    assert "acc,none" in results["evalserver_mc"]
    assert "exact_match,none" in results["evalserver_gen"]

    tok = Tokenizer.from_file(str(shared / "tokenizers" / "llama3_1" / "tokenizer.json"))
    mc = [json.loads(l) for l in next(out.rglob("samples_evalserver_mc_*.jsonl")).read_text().splitlines()]
    assert len(mc) == 6
    checked = 0
    for sample in mc:
        args_ = sample["arguments"]
        for i, key in enumerate(sorted(args_, key=lambda k: int(k.rsplit("_", 1)[1]))):
            ctx, cont = encode_pair(tok, args_[key]["arg_0"], args_[key]["arg_1"])
            got = float(sample["resps"][i][0][0])
            ids = ctx + cont
            ref = reference.prompt_logprobs_ref(model, ids)[len(ctx) - 1:]
            want = sum(ref)
            assert abs(got - want) <= 1e-3 + 1e-4 * abs(want), (args_[key], got, want)
            checked += 1
    assert checked == sum(len(json.loads(l)["choices"]) for l in (HERE / "mc.jsonl").read_text().splitlines())

    gen = [json.loads(l) for l in next(out.rglob("samples_evalserver_gen_*.jsonl")).read_text().splitlines()]
    assert len(gen) == 4
    for sample in gen:
        prompt = sample["arguments"]["gen_args_0"]["arg_0"]
        # lm-eval's answer equals a greedy request to the server itself, cut at "\n"
        r = srv.post("/v1/completions", {"model": "tiny", "prompt": prompt, "max_tokens": 8,
                                         "add_special_tokens": False,
                                         "temperature": 0, "stop": ["\n"]}).json()
        assert sample["resps"][0][0] == r["choices"][0]["text"]
