"""lm-evaluation-harness against a live evalserver, every answer checked
against the NumPy reference model (tests/api/api_reference.py):

- local-completions with the server's own tokenizer endpoints
  (tokenizer_backend=remote) on our small multiple-choice task
  (loglikelihoods through echo + logprobs) and a generate_until task
  (greedy text cut at "\\n");
- a loglikelihood_rolling (perplexity) task on a server with
  --max-model-len 64, documents longer than that cut into lm-eval's
  rolling windows, each window filling the context exactly;
- local-chat-completions with --apply_chat_template, few-shot turns and a
  system message, the server rendering its chat template and stopping on
  stop strings that fall inside tokens.

Needs lm-eval (tests/requirements.txt: lm-eval[api], no torch); skipped
when it is not installed. EVAL_SKIP_PEER=1 skips it on purpose.
"""
import functools
import importlib.util
import json
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys

import jinja2.sandbox
import numpy as np
import pytest
from tokenizers import Tokenizer

HERE = pathlib.Path(__file__).resolve().parent
API = HERE.parent / "api"
# api_util is imported by name (its docstring says so); tests/api is on the
# path only once pytest has collected that folder, so put it there when
# this suite runs alone.
if str(API) not in sys.path:
    sys.path.insert(0, str(API))
import api_util  # noqa: E402


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


reference = _load("evalserver_api_reference", API / "api_reference.py")

BOS = 128000  # <|begin_of_text|> of the llama3_1 tokenizer
ROLLING_MAX_LEN = 64  # the rolling server's --max-model-len and lm-eval's max_length
SYSTEM = "Answer in one word."


def lm_eval_cmd():
    if os.environ.get("EVAL_SKIP_PEER") == "1":
        pytest.skip("EVAL_SKIP_PEER=1")
    if importlib.util.find_spec("lm_eval") is not None:
        return [sys.executable, "-m", "lm_eval"]
    exe = os.environ.get("LM_EVAL") or shutil.which("lm_eval")
    if exe:
        return [exe]
    pytest.skip("lm-eval is not installed (pip install 'lm-eval[api]')")


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def peer_model(build, shared, tmp_path_factory):
    mk = pathlib.Path(build) / "tools" / "mkmodel"
    if not mk.exists():
        pytest.skip(f"{mk} not built")
    model = tmp_path_factory.mktemp("peer-model") / "tiny"
    subprocess.run([str(mk), "--shape", "tiny", "--tokenizer",
                    str(shared / "tokenizers" / "llama3_1"), "--out", str(model)],
                   check=True, capture_output=True)
    return model


@pytest.fixture(scope="module")
def peer_logs(tmp_path_factory):
    return tmp_path_factory.mktemp("peer-logs")


@pytest.fixture(scope="module")
def peer_server(build, peer_model, peer_logs):
    """The API suite's flags (--max-model-len 512)."""
    srv = api_util.start_server(build, peer_model, peer_logs, "peer")
    yield srv, peer_model
    assert api_util.stop_server(srv) == 0, srv.log()[-4000:]


@pytest.fixture(scope="module")
def rolling_server(build, peer_model, peer_logs):
    """A context of ROLLING_MAX_LEN tokens (the later --max-model-len wins)."""
    srv = api_util.start_server(build, peer_model, peer_logs, "peer-rolling",
                                "--max-model-len", str(ROLLING_MAX_LEN))
    assert srv.get("/v1/models").json()["data"][0]["max_model_len"] == ROLLING_MAX_LEN
    yield srv, peer_model
    assert api_util.stop_server(srv) == 0, srv.log()[-4000:]


@pytest.fixture(scope="module")
def tok(shared):
    return Tokenizer.from_file(str(shared / "tokenizers" / "llama3_1" / "tokenizer.json"))


# ----------------------------------------------------------------- lm-eval

def run_lm_eval(srv, tmp_path, model_type, model_args, tasks, *extra):
    """Runs lm_eval with this folder's tasks and --log_samples; returns
    (results, {task: samples in doc order})."""
    cmd = lm_eval_cmd()
    out = tmp_path / "out"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf"), "OPENAI_API_KEY": "unused",
           "TOKENIZERS_PARALLELISM": "false"}
    # max_retries=1: a request the server refuses fails the run.
    args = cmd + ["--model", model_type, "--model_args",
                  f"model=tiny,num_concurrent=4,max_retries=1,{model_args}",
                  "--tasks", ",".join(tasks), "--include_path", str(HERE),
                  "--output_path", str(out), "--log_samples", *extra]
    p = subprocess.run(args, cwd=HERE, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, (p.stdout[-3000:] + p.stderr[-6000:] +
                               "\n--- evalserver log ---\n" + srv.log()[-3000:])
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]
    samples = {}
    for task in tasks:
        path = next(out.rglob(f"samples_{task}_*.jsonl"))
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        samples[task] = sorted(rows, key=lambda s: s["doc_id"])
    return results, samples


def data(name):
    return [json.loads(line) for line in (HERE / name).read_text().splitlines()]


# --------------------------------------------------------------- reference

def encode_pair(tok, context, continuation):
    """lm-eval's TemplateLM._encode_pair with a tokenizer that adds nothing."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok.encode(context + continuation, add_special_tokens=False).ids
    ctx = tok.encode(context, add_special_tokens=False).ids
    return ctx, whole[len(ctx):]


def continuation_logprob(model, ctx, cont):
    """log p(cont | ctx) by the reference, ctx non-empty."""
    return sum(reference.prompt_logprobs_ref(model, ctx + cont)[len(ctx) - 1:])


@functools.lru_cache(maxsize=2)
def _weights_f64(model_dir):
    """The reference's weights once in float64 (forward() would convert
    the 128256-row embedding on every call of a greedy decode)."""
    cfg, w = reference._model(model_dir)
    return cfg, {k: v.astype(np.float64) for k, v in w.items()}


def eos_ids(model):
    ids = set()
    for name in ("config.json", "generation_config.json"):
        e = json.loads((pathlib.Path(model) / name).read_text()).get("eos_token_id")
        ids.update(e if isinstance(e, list) else [e] if e is not None else [])
    return ids


def greedy_ref(tok, model, ids, max_tokens, stops):
    """The reference's greedy answer to the prompt `ids` as an OpenAI
    server returns it: at most max_tokens tokens, none after an EOS, the
    text cut before the first stop string. Returns (text, why) with why
    "stop", "eos" or "length". Fails where the top two logits are so close
    that float32 (the server) and float64 (the reference) could differ."""
    cfg, w = _weights_f64(str(model))
    eos = eos_ids(model)
    out = []
    for _ in range(max_tokens):
        logits = reference._module().forward(cfg, w, ids + out)[-1]
        best = int(np.argmax(logits))
        margin = logits[best] - np.partition(logits, -2)[-2]
        assert margin > 1e-3, f"greedy step {len(out)} of {ids} is a near tie ({margin})"
        if best in eos:
            return tok.decode(out), "eos"
        out.append(best)
        text = tok.decode(out)
        cuts = [text.find(s) for s in stops if s and s in text]
        if cuts:
            return text[:min(cuts)], "stop"
    return tok.decode(out), "length"


# ------------------------------------------------------------------- tests

def test_lm_eval_tasks_match_reference(peer_server, tok, tmp_path):
    """local-completions, remote tokenizer: every multiple-choice
    loglikelihood equals the reference's, and every generate_until answer
    equals the reference's greedy decode of the same prompt tokens, cut at
    lm-eval's stop strings ("\\n" and the EOS text it adds)."""
    srv, model = peer_server
    results, samples = run_lm_eval(
        srv, tmp_path, "local-completions",
        f"base_url={srv.url}/completions,tokenizer_backend=remote,tokenized_requests=True",
        ["evalserver_mc", "evalserver_gen"])
    assert "acc,none" in results["evalserver_mc"]
    assert "exact_match,none" in results["evalserver_gen"]

    mc = samples["evalserver_mc"]
    assert len(mc) == 6
    checked = 0
    for sample in mc:
        args_ = sample["arguments"]
        for i, key in enumerate(sorted(args_, key=lambda k: int(k.rsplit("_", 1)[1]))):
            ctx, cont = encode_pair(tok, args_[key]["arg_0"], args_[key]["arg_1"])
            got = float(sample["resps"][i][0][0])
            want = continuation_logprob(model, ctx, cont)
            assert abs(got - want) <= 1e-3 + 1e-4 * abs(want), (args_[key], got, want)
            checked += 1
    assert checked == sum(len(d["choices"]) for d in data("mc.jsonl"))

    gen = samples["evalserver_gen"]
    assert len(gen) == 4
    for sample in gen:
        prompt = sample["arguments"]["gen_args_0"]["arg_0"]
        kwargs = sample["arguments"]["gen_args_0"]["arg_1"]
        ids = tok.encode(prompt, add_special_tokens=False).ids
        want, _ = greedy_ref(tok, model, ids, kwargs["max_gen_toks"],
                             kwargs["until"] + ["<|eot_id|>"])
        assert sample["resps"][0][0] == want, prompt


def test_lm_eval_rolling_perplexity_matches_reference(rolling_server, tok, tmp_path):
    """loglikelihood_rolling (wikitext's request type) on a 64-token
    server, lm-eval told max_length=64: each document is scored in
    lm-eval's disjoint rolling windows (BOS first, then at most 62 tokens
    a request plus the 1 token lm-eval asks to generate, so 64 in all).
    rolling.jsonl's documents take 1, 1 (exactly full), 2 (the second
    window predicting one token after 62 of context) and 3 windows. Each
    document's loglikelihood equals the sum of the reference's logprobs
    over the same windows, and the word/byte perplexities and bits per
    byte lm-eval reports equal those the reference's sums give."""
    srv, model = rolling_server
    results, samples = run_lm_eval(
        srv, tmp_path, "local-completions",
        f"base_url={srv.url}/completions,tokenizer_backend=remote,tokenized_requests=True,"
        f"max_length={ROLLING_MAX_LEN}",
        ["evalserver_rolling"])
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    docs = [d["page"] for d in data("rolling.jsonl")]
    rows = samples["evalserver_rolling"]
    assert [s["arguments"]["gen_args_0"]["arg_0"] for s in rows] == docs

    ids = [tok.encode(d, add_special_tokens=False).ids for d in docs]
    assert [len(x) for x in ids] == [19, 62, 63, 163], "rolling.jsonl's windows moved"
    total_ll = total_words = total_bytes = 0
    shapes = []
    for doc, doc_ids, sample in zip(docs, ids, rows):
        # lm-eval's API models keep one token for generation (max_length - 1)
        # and one for context: windows of max_length - 2 predicted tokens.
        windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
            doc_ids, prefix_token=BOS, max_seq_len=ROLLING_MAX_LEN - 2, context_len=1)]
        shapes.append([(len(c), len(p)) for c, p in windows])
        assert max(len(c) + len(p) for c, p in windows) <= ROLLING_MAX_LEN - 1
        want = sum(continuation_logprob(model, c, p) for c, p in windows)
        got = float(sample["resps"][0][0])
        assert abs(got - want) <= 1e-3 + 1e-5 * abs(want), (doc[:40], got, want)
        total_ll += want
        total_words += len(re.split(r"\s+", doc))
        total_bytes += len(doc.encode("utf-8"))
    assert shapes == [[(1, 19)], [(1, 62)], [(1, 62), (62, 1)],
                      [(1, 62), (1, 62), (24, 39)]]

    r = results["evalserver_rolling"]
    assert math.isclose(r["word_perplexity,none"], math.exp(-total_ll / total_words), rel_tol=1e-5)
    assert math.isclose(r["byte_perplexity,none"], math.exp(-total_ll / total_bytes), rel_tol=1e-5)
    assert math.isclose(r["bits_per_byte,none"], -total_ll / total_bytes / math.log(2),
                        rel_tol=1e-5)


def render_chat(model, messages):
    """The model's chat template rendered as transformers does."""
    cfg = json.loads((pathlib.Path(model) / "tokenizer_config.json").read_text())
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(cfg["chat_template"]).render(
        messages=messages, bos_token=cfg["bos_token"], add_generation_prompt=True)


def test_lm_eval_chat_completions_match_reference(peer_server, tok, tmp_path):
    """local-chat-completions with --apply_chat_template,
    --fewshot_as_multiturn and --system_instruction (no client tokenizer:
    lm-eval sends /v1/chat/completions messages, temperature 0, its stop
    strings and max_tokens). Each answer equals the reference's greedy
    decode of the chat template rendered by jinja2 over the same messages
    and tokenized by `tokenizers` (one BOS, the template's), the text cut
    before the first stop string as the server must. evalserver_chat.yaml's
    stop strings stop some answers mid-token; the others run to
    max_gen_toks, and both kinds must occur."""
    srv, model = peer_server
    results, samples = run_lm_eval(
        srv, tmp_path, "local-chat-completions", f"base_url={srv.url}/chat/completions",
        ["evalserver_chat"], "--apply_chat_template", "--fewshot_as_multiturn",
        "--system_instruction", SYSTEM)
    assert "exact_match,none" in results["evalserver_chat"]

    prompts = [d["prompt"] for d in data("gen.jsonl")]
    rows = samples["evalserver_chat"]
    assert len(rows) == len(prompts)
    endings = []
    for prompt, sample in zip(prompts, rows):
        chat = sample["arguments"]["gen_args_0"]["arg_0"]
        messages = json.loads(chat[0] if isinstance(chat, list) else chat)
        assert [m["role"] for m in messages] == ["system", "user", "assistant", "user",
                                                 "assistant", "user"], messages
        assert messages[0]["content"] == SYSTEM and messages[-1]["content"] == prompt
        kwargs = sample["arguments"]["gen_args_0"]["arg_1"]
        ids = tok.encode(render_chat(model, messages), add_special_tokens=False).ids
        assert ids[0] == BOS and ids.count(BOS) == 1
        # lm-eval's chat model sends the first four stop strings only.
        want, why = greedy_ref(tok, model, ids, kwargs["max_gen_toks"], kwargs["until"][:4])
        assert sample["resps"][0][0] == want, (messages, why)
        endings.append(why)
    assert "stop" in endings and "length" in endings, (
        f"{endings}: pick evalserver_chat.yaml's stop strings again for this model")
