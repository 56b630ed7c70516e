"""POST /v1/completions through the official openai SDK and raw requests:
shapes, streaming, n > 1, stop strings, seeds, greedy determinism, echo
and logprobs (checked against the NumPy reference model)."""
import concurrent.futures as cf
import json
import math

import pytest
import requests

from api_reference import prompt_logprobs_ref


def test_basic_completion(client):
    r = client.completions.create(model="tiny", prompt="Hello, world", max_tokens=8,
                                  temperature=0)
    assert r.object == "text_completion"
    assert r.id.startswith("cmpl-")
    assert len(r.choices) == 1
    c = r.choices[0]
    assert c.index == 0 and isinstance(c.text, str)
    assert c.finish_reason in ("length", "stop")
    assert r.usage.completion_tokens <= 8
    assert r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.system_fingerprint and r.system_fingerprint.startswith("fp_")
    raw = r.model_dump()
    assert "timings" in raw["evalserver"] and raw["evalserver"]["fingerprint"] == r.system_fingerprint
    assert raw["usage"]["prompt_tokens_details"]["cached_tokens"] >= 0


def test_max_tokens_and_ignore_eos(server):
    r = server.post("/v1/completions", {"prompt": "a b c", "max_tokens": 12, "temperature": 0,
                                        "ignore_eos": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 12


def test_greedy_is_deterministic(client):
    outs = {client.completions.create(model="tiny", prompt="The quick brown fox", max_tokens=16,
                                      temperature=0).choices[0].text for _ in range(3)}
    assert len(outs) == 1


def test_prompt_shapes_and_indexing(server, client):
    tok = server.post("/tokenize", {"prompt": "one two", "add_special_tokens": True}).json()["tokens"]
    single_ids = client.completions.create(model="tiny", prompt=tok, max_tokens=5,
                                           temperature=0, extra_body={"ignore_eos": True})
    from_text = client.completions.create(model="tiny", prompt="one two", max_tokens=5,
                                          temperature=0, extra_body={"ignore_eos": True})
    assert single_ids.choices[0].text == from_text.choices[0].text
    assert single_ids.usage.prompt_tokens == len(tok)

    r = client.completions.create(model="tiny", prompt=["one two", "three four five"], n=2,
                                  max_tokens=4, temperature=0.8, seed=7,
                                  extra_body={"ignore_eos": True})
    assert sorted(c.index for c in r.choices) == [0, 1, 2, 3]
    assert r.usage.completion_tokens == 16
    r2 = client.completions.create(model="tiny", prompt=[tok, tok], max_tokens=3, temperature=0)
    assert [c.index for c in r2.choices] == [0, 1]
    assert r2.choices[0].text == r2.choices[1].text


def test_n_choices_differ_with_sampling(client):
    r = client.completions.create(model="tiny", prompt="Sample me", n=4, max_tokens=12,
                                  temperature=1.0, seed=123, extra_body={"ignore_eos": True})
    texts = [c.text for c in sorted(r.choices, key=lambda c: c.index)]
    assert len(texts) == 4
    assert len(set(texts)) > 1  # per-choice seeds seed + i


def test_streaming_matches_non_streaming(client):
    kw = dict(model="tiny", prompt="Streaming test", max_tokens=10, temperature=0,
              extra_body={"ignore_eos": True})
    full = client.completions.create(**kw).choices[0].text
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True},
                                            **kw))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == full
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 10
    assert chunks[-1].choices == []


def test_stream_raw_sse_done(server):
    with requests.post(server.base + "/v1/completions", stream=True, timeout=60,
                       json={"prompt": "x", "max_tokens": 3, "stream": True, "n": 2}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        # Without a charset, requests decodes text/* as ISO-8859-1.
        assert r.encoding.lower() == "utf-8"
        lines = [l for l in r.iter_lines() if l]
    assert lines[-1] == b"data: [DONE]"
    events = [json.loads(l[6:]) for l in lines[:-1]]
    finished = {e["choices"][0]["index"] for e in events if e["choices"][0]["finish_reason"]}
    assert finished == {0, 1}


def test_stop_strings(client):
    base = client.completions.create(model="tiny", prompt="Stop here", max_tokens=24,
                                     temperature=0, extra_body={"ignore_eos": True})
    text = base.choices[0].text
    if len(text) < 4:
        pytest.skip("greedy text too short to cut")
    stop = text[2:4]
    cut = text[:text.index(stop)]
    r = client.completions.create(model="tiny", prompt="Stop here", max_tokens=24,
                                  temperature=0, stop=[stop], extra_body={"ignore_eos": True})
    assert r.choices[0].text == cut
    assert r.choices[0].finish_reason == "stop"
    assert r.model_dump()["choices"][0]["stop_reason"] == stop
    r2 = client.completions.create(model="tiny", prompt="Stop here", max_tokens=24,
                                   temperature=0, stop=stop,
                                   extra_body={"ignore_eos": True,
                                               "include_stop_str_in_output": True})
    assert r2.choices[0].text == cut + stop
    # streaming cuts the same way
    s = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny", prompt="Stop here", max_tokens=24, temperature=0, stop=[stop],
        stream=True, extra_body={"ignore_eos": True}))
    assert s == cut


def test_seed_reproducible_under_load(client):
    kw = dict(model="tiny", prompt="Seeded sampling", max_tokens=16, temperature=1.0,
              seed=4242, extra_body={"ignore_eos": True})
    alone = client.completions.create(**kw).choices[0].text
    with cf.ThreadPoolExecutor(8) as ex:
        noise = [ex.submit(client.completions.create, model="tiny",
                           prompt=f"noise {i} " * (i + 1), max_tokens=20, temperature=1.0,
                           extra_body={"ignore_eos": True}) for i in range(6)]
        busy = [ex.submit(client.completions.create, **kw) for _ in range(2)]
        texts = [f.result().choices[0].text for f in busy]
        for f in noise:
            f.result()
    assert texts == [alone, alone]
    other = client.completions.create(**{**kw, "seed": 4243}).choices[0].text
    assert other != alone


def test_logprobs_shape_and_consistency(client):
    r = client.completions.create(model="tiny", prompt="Logprobs please", max_tokens=5,
                                  temperature=0, logprobs=3, extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    n = r.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    for tok, val, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert val <= 0
        assert tok in top and math.isclose(top[tok], val, abs_tol=1e-6)
        assert len(top) <= 4
        # greedy: the chosen token is the most likely one
        assert val >= max(top.values()) - 1e-5
    assert lp.text_offset == sorted(lp.text_offset)


def test_echo_scoring_matches_reference(server, client, tiny_model):
    """What lm-evaluation-harness sends: echo + logprobs + max_tokens 1."""
    prompt = "The capital of France is Paris"
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=1, temperature=0,
                                  logprobs=1, echo=True)
    ids = server.post("/tokenize", {"prompt": prompt}).json()["tokens"]
    lp = r.choices[0].logprobs
    assert r.choices[0].text.startswith(prompt)
    assert len(lp.tokens) == len(ids) + 1
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.text_offset[0] == 0
    assert all(v is not None for v in lp.token_logprobs[1:])
    ref = prompt_logprobs_ref(tiny_model, ids)
    got = lp.token_logprobs[1:len(ids)]
    assert len(ref) == len(got)
    for a, b in zip(got, ref):
        assert abs(a - b) <= 1e-3 + 1e-3 * abs(b), (got, ref)

    # max_tokens 0: prompt only
    r0 = server.post("/v1/completions", {"prompt": prompt, "max_tokens": 0, "echo": True,
                                         "logprobs": 0}).json()
    lp0 = r0["choices"][0]["logprobs"]
    assert r0["choices"][0]["text"] == prompt
    assert len(lp0["tokens"]) == len(ids)
    assert lp0["token_logprobs"][1:] == pytest.approx(got, abs=1e-5)


def test_echo_equals_generated_logprobs(server, client):
    """Scoring prompt + completion gives the logprobs seen while generating."""
    g = server.post("/v1/completions", {"prompt": "Consistency check", "max_tokens": 6,
                                        "temperature": 0, "logprobs": 1, "ignore_eos": True,
                                        "return_tokens_as_token_ids": True}).json()
    gen_ids = [int(t.split(":")[1]) for t in g["choices"][0]["logprobs"]["tokens"]]
    gen_lp = g["choices"][0]["logprobs"]["token_logprobs"]
    ids = server.post("/tokenize", {"prompt": "Consistency check"}).json()["tokens"]
    s = server.post("/v1/completions", {"prompt": ids + gen_ids, "max_tokens": 0, "echo": True,
                                        "logprobs": 1, "return_tokens_as_token_ids": True}).json()
    lp = s["choices"][0]["logprobs"]
    assert lp["tokens"] == [f"token_id:{i}" for i in ids + gen_ids]
    assert lp["token_logprobs"][len(ids):] == pytest.approx(gen_lp, abs=2e-4)


def test_return_tokens_as_token_ids(server):
    r = server.post("/v1/completions", {"prompt": "ids", "max_tokens": 3, "logprobs": 2,
                                        "temperature": 0, "return_tokens_as_token_ids": True})
    lp = r.json()["choices"][0]["logprobs"]
    assert all(t.startswith("token_id:") for t in lp["tokens"])
    assert all(k.startswith("token_id:") for d in lp["top_logprobs"] for k in d)


def test_logit_bias_forces_token(server):
    target = server.post("/tokenize", {"prompt": " banana", "add_special_tokens": False}).json()["tokens"][0]
    r = server.post("/v1/completions", {"prompt": "fruit:", "max_tokens": 3, "temperature": 0,
                                        "logit_bias": {str(target): 100},
                                        "return_tokens_as_token_ids": True, "logprobs": 0,
                                        "ignore_eos": True}).json()
    assert r["choices"][0]["logprobs"]["tokens"] == [f"token_id:{target}"] * 3


def test_stop_token_ids(server):
    g = server.post("/v1/completions", {"prompt": "stop ids", "max_tokens": 8, "temperature": 0,
                                        "logprobs": 0, "return_tokens_as_token_ids": True,
                                        "ignore_eos": True}).json()
    toks = [int(t.split(":")[1]) for t in g["choices"][0]["logprobs"]["tokens"]]
    stop_id = toks[3]
    first = toks.index(stop_id)
    r = server.post("/v1/completions", {"prompt": "stop ids", "max_tokens": 8, "temperature": 0,
                                        "stop_token_ids": [stop_id], "ignore_eos": True}).json()
    assert r["choices"][0]["finish_reason"] == "stop"
    assert r["choices"][0]["stop_reason"] == stop_id
    assert r["usage"]["completion_tokens"] == first + 1


def test_stream_echo_and_logprobs(server, client):
    prompt = "Echo me"
    full = client.completions.create(model="tiny", prompt=prompt, max_tokens=4, temperature=0,
                                     echo=True, logprobs=2, n=2, extra_body={"ignore_eos": True})
    chunks = list(client.completions.create(model="tiny", prompt=prompt, max_tokens=4,
                                            temperature=0, echo=True, logprobs=2, n=2,
                                            stream=True, extra_body={"ignore_eos": True}))
    for idx in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == idx]
        assert mine[0].text.startswith(prompt)
        text = "".join(c.text for c in mine)
        assert text == full.choices[idx].text
        toks = [t for c in mine if c.logprobs for t in c.logprobs.tokens]
        assert toks == full.choices[idx].logprobs.tokens
        offs = [o for c in mine if c.logprobs for o in c.logprobs.text_offset]
        assert offs == full.choices[idx].logprobs.text_offset
        # The echo chunk waits for prefill: its prompt logprobs are numbers,
        # not the nulls of logprobs not yet computed.
        lps = [x for c in mine if c.logprobs for x in c.logprobs.token_logprobs]
        assert lps[0] is None and None not in lps[1:]
        assert lps == pytest.approx(full.choices[idx].logprobs.token_logprobs, abs=1e-5)


def test_echo_scoring_with_cached_prefix(server, tiny_model):
    """Multiple-choice scoring: choices share a long context; the later ones
    hit the prefix cache, their prompt logprobs must still be exact."""
    context = "The quick brown fox jumps over the lazy dog. " * 4
    ids_ctx = server.post("/tokenize", {"prompt": context}).json()["tokens"]
    for choice in (" yes", " no", " maybe"):
        ids = ids_ctx + server.post("/tokenize", {"prompt": choice,
                                                  "add_special_tokens": False}).json()["tokens"]
        r = server.post("/v1/completions", {"prompt": ids, "max_tokens": 1, "echo": True,
                                            "logprobs": 1, "temperature": 0}).json()
        lp = r["choices"][0]["logprobs"]["token_logprobs"][1:len(ids)]
        ref = prompt_logprobs_ref(tiny_model, ids)
        assert lp == pytest.approx(ref, abs=1e-3, rel=1e-3)
    assert r["usage"]["prompt_tokens_details"]["cached_tokens"] >= 16


def _cum(choice):
    return sum(choice["logprobs"]["token_logprobs"])


def test_best_of_returns_the_n_most_likely(server):
    """best_of candidates are the n = best_of choices of the same seed (seed
    + choice index); the n with the highest summed logprob come back, best
    first, indexed per prompt; usage counts every candidate."""
    prompts = ["Pick the best", "Another prompt"]
    base = {"prompt": prompts, "max_tokens": 6, "temperature": 1.0, "seed": 11,
            "ignore_eos": True, "logprobs": 0}
    cands = server.post("/v1/completions", {**base, "n": 4}).json()
    r = server.post("/v1/completions", {**base, "n": 2, "best_of": 4})
    assert r.status_code == 200, r.text
    best = r.json()
    assert [c["index"] for c in best["choices"]] == [0, 1, 2, 3]
    assert best["usage"]["completion_tokens"] == cands["usage"]["completion_tokens"] == 48
    for p in range(2):
        pool = sorted(cands["choices"][4 * p:4 * p + 4], key=_cum, reverse=True)
        got = best["choices"][2 * p:2 * p + 2]
        assert [c["text"] for c in got] == [c["text"] for c in pool[:2]]
        assert _cum(got[0]) >= _cum(got[1])
    # Without logprobs in the request the choice is the same.
    quiet = server.post("/v1/completions", {**base, "n": 2, "best_of": 4, "logprobs": None})
    assert [c["text"] for c in quiet.json()["choices"]] == [c["text"] for c in best["choices"]]


def test_best_of_equal_to_n_changes_nothing(server):
    base = {"prompt": "Same as n", "max_tokens": 5, "temperature": 1.0, "seed": 5, "n": 3}
    plain = server.post("/v1/completions", base).json()
    same = server.post("/v1/completions", {**base, "best_of": 3}).json()
    assert [c["text"] for c in same["choices"]] == [c["text"] for c in plain["choices"]]
    assert [c["index"] for c in same["choices"]] == [0, 1, 2]
    r = server.post("/v1/completions", {**base, "best_of": 3, "stream": True})
    assert r.status_code == 200, r.text


def _sse(server, path, body):
    with requests.post(server.base + path, json=body, stream=True, timeout=60) as r:
        assert r.status_code == 200, r.text
        lines = [l for l in r.iter_lines() if l]
    assert lines[-1] == b"data: [DONE]"
    return [json.loads(l[6:]) for l in lines[:-1]]


@pytest.mark.parametrize("path,body", [
    ("/v1/completions", {"prompt": "Usage please", "n": 2, "echo": True, "logprobs": 1}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Usage please"}],
                              "n": 2}),
])
def test_stream_include_usage_null_until_last(server, path, body):
    """With include_usage every chunk but the last carries "usage": null (as
    OpenAI sends them); the last has the usage and no choices. Without it
    no chunk has a usage key."""
    body = {**body, "max_tokens": 4, "ignore_eos": True, "stream": True}
    events = _sse(server, path, {**body, "stream_options": {"include_usage": True}})
    assert len(events) > 3
    for e in events[:-1]:
        assert "usage" in e and e["usage"] is None and e["choices"], e
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 8
    for e in _sse(server, path, {**body, "stream_options": {"include_usage": False}}) + \
            _sse(server, path, body):
        assert "usage" not in e, e
