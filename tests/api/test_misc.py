"""The small endpoints: /v1/models, /health, /version, /tokenizer_info,
/tokenize and /detokenize (against the `tokenizers` library), /metrics."""
import time

import pytest
import requests
from tokenizers import Tokenizer

TEXTS = ["Hello, world!", "  leading spaces and\ttabs\n\nnewlines",
         "unicode: héllo wörld 日本語 🙂", "<|begin_of_text|>special inside", "1234567 numbers"]


@pytest.fixture(scope="module")
def hf_tok(shared):
    return Tokenizer.from_file(str(shared / "tokenizers" / "llama3_1" / "tokenizer.json"))


def test_models(client, server):
    models = client.models.list()
    assert [m.id for m in models] == ["tiny"]
    raw = server.get("/v1/models").json()
    assert raw["object"] == "list" and raw["data"][0]["max_model_len"] == 512


def test_model_retrieve(client, server):
    """GET /v1/models/{id}: the openai SDK's models.retrieve."""
    m = client.models.retrieve("tiny")
    assert m.id == "tiny" and m.object == "model"
    for name in ("gpt-4", "org/tiny", "tin"):
        r = server.get("/v1/models/" + name)
        assert r.status_code == 404 and r.json()["error"]["param"] == "model"


def test_head_on_get_routes(server):
    """HEAD answers like GET without a body (uptime probes send it)."""
    for path in ("/health", "/v1/models", "/version"):
        r = requests.head(server.base + path, timeout=10)
        assert r.status_code == 200 and r.content == b"", path
    r = requests.head(server.base + "/v1/completions", timeout=10)
    assert r.status_code == 405 and r.headers["allow"] == "POST"


def test_health_and_version(server):
    r = server.get("/health")
    assert r.status_code == 200
    assert server.get("/version").json()["version"]


def test_tokenizer_info(server):
    info = server.get("/tokenizer_info").json()
    assert info["bos_token"] == "<|begin_of_text|>"
    assert info["eos_token"]
    assert "chat_template" in info


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("add_special", [True, False])
def test_tokenize_matches_tokenizers(server, hf_tok, text, add_special):
    r = server.post("/tokenize", {"prompt": text, "add_special_tokens": add_special}).json()
    want = hf_tok.encode(text, add_special_tokens=add_special).ids
    assert r["tokens"] == want
    assert r["count"] == len(want)
    assert r["max_model_len"] == 512
    d = server.post("/detokenize", {"tokens": r["tokens"]}).json()
    assert d["prompt"] == hf_tok.decode(want, skip_special_tokens=False)


def test_tokenize_token_strs(server, hf_tok):
    r = server.post("/tokenize", {"prompt": "Hello world", "return_token_strs": True}).json()
    assert r["token_strs"] == [hf_tok.id_to_token(i) for i in r["tokens"]]


def test_detokenize_errors(server):
    r = server.post("/detokenize", {"tokens": [1, -5]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tokens"
    r = server.post("/detokenize", {"tokens": "abc"})
    assert r.status_code == 400
    r = server.post("/tokenize", {})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    # A wrong model is a 404 here too, as on the generation endpoints.
    for path, body in (("/tokenize", {"prompt": "a"}), ("/detokenize", {"tokens": [1]})):
        r = server.post(path, {"model": "other", **body})
        assert r.status_code == 404 and r.json()["error"]["param"] == "model"
        assert server.post(path, {"model": "tiny", **body}).status_code == 200


def test_metrics_parse_and_count(server):
    before = server.metrics()
    r = server.post("/v1/completions", {"prompt": "count me please", "max_tokens": 7,
                                        "ignore_eos": True, "temperature": 0}).json()
    after = server.metrics()
    pt, ct = r["usage"]["prompt_tokens"], r["usage"]["completion_tokens"]
    assert ct == 7
    d = lambda k: after[k] - before.get(k, 0)  # noqa: E731
    assert d("evalserver_prompt_tokens_total") == pt
    assert d("evalserver_generation_tokens_total") == 7
    assert d("evalserver_e2e_request_latency_seconds_count") == 1
    assert d("evalserver_time_to_first_token_seconds_count") == 1
    assert d("evalserver_request_queue_time_seconds_count") == 1
    assert d("evalserver_inter_token_latency_seconds_count") == 6
    assert d('evalserver_request_success_total{finished_reason="length"}') == 1
    assert d("evalserver_prefix_cache_queries_total") >= pt - 1
    for k in ("evalserver_num_requests_running", "evalserver_num_requests_waiting",
              "evalserver_kv_cache_usage_perc", "evalserver_prefix_cache_hits_total"):
        assert k in after
    # cumulative buckets end in +Inf == count
    assert after['evalserver_e2e_request_latency_seconds_bucket{le="+Inf"}'] == \
        after["evalserver_e2e_request_latency_seconds_count"]


def test_prefix_cache_hits_counted(server):
    prompt = "shared prefix " * 20
    server.post("/v1/completions", {"prompt": prompt, "max_tokens": 1})
    before = server.metrics()
    r = server.post("/v1/completions", {"prompt": prompt, "max_tokens": 1}).json()
    assert r["usage"]["prompt_tokens_details"]["cached_tokens"] >= 16
    # the engine publishes its counters after its steps: give it a few
    deadline = time.time() + 10
    hits = 0
    while time.time() < deadline:
        after = server.metrics()
        hits = after["evalserver_prefix_cache_hits_total"] - before["evalserver_prefix_cache_hits_total"]
        if hits >= 16:
            break
        server.post("/v1/completions", {"prompt": "nudge", "max_tokens": 1})
    assert hits >= 16


def test_fingerprint_tracks_settings(server, spawn):
    fp = server.post("/v1/completions", {"prompt": "fp", "max_tokens": 1}).json()["system_fingerprint"]
    srv = spawn("no-prefix", "--no-prefix-caching")
    prompt = "no cache here " * 10
    rs = [srv.post("/v1/completions", {"prompt": prompt, "max_tokens": 1}).json() for _ in range(2)]
    assert rs[0]["system_fingerprint"] != fp
    assert rs[0]["system_fingerprint"] == rs[1]["system_fingerprint"]
    assert rs[1]["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


def test_precision_high_changes_nothing_on_the_cpu(server, spawn):
    """The CPU backend computes in fp32 either way: --precision high gives
    the same answers and keeps the served fingerprint (on cuda it changes
    both: tests/emu/cuda_tp_emu.py)."""
    body = {"prompt": "precision " * 6, "max_tokens": 6, "temperature": 0, "echo": True,
            "logprobs": 2, "ignore_eos": True}
    want = server.post("/v1/completions", body).json()
    got = spawn("precision-high", "--precision", "high").post("/v1/completions", body).json()
    assert got["choices"][0]["logprobs"] == want["choices"][0]["logprobs"]
    assert got["system_fingerprint"] == want["system_fingerprint"]
