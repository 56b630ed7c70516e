"""Request semantics a vLLM user relies on, found wrong by an outside-in
audit of /v1/completions and /v1/chat/completions:

- min_tokens with stop strings: as in vLLM, a stop string is looked for
  only once more than min_tokens tokens exist, in the text after the first
  min_tokens tokens' (a match may start up to its length - 1 characters
  before it). min_tokens 1 with a stop string in the first token used to
  answer "" (finish_reason "stop"), the very answer min_tokens prevents.
- vLLM's extensions that change what is generated and are not implemented
  here (guided decoding, beam search, prompt_logprobs, allowed_token_ids,
  bad_words, logits_processors, truncate_prompt_tokens) are refused with a
  400 that names the field; they used to be silently ignored, so a client
  asking for guided_choice got free text. Their "off" values (null, false,
  [], {}) are accepted.
"""
import json

import pytest
import requests

PROMPT = "The quick brown fox"
GREEDY = {"model": "tiny", "prompt": PROMPT, "temperature": 0, "max_tokens": 16,
          "ignore_eos": True}


def complete(server, **kw):
    r = server.post("/v1/completions", {**GREEDY, **kw})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]


def streamed(server, **kw):
    """The text of a streamed completion and its finish_reason."""
    text, finish = "", None
    with requests.post(server.base + "/v1/completions", json={**GREEDY, **kw, "stream": True},
                       stream=True, timeout=60) as r:
        assert r.status_code == 200, r.text
        for line in r.iter_lines():
            if not line or line == b"data: [DONE]":
                continue
            ch = json.loads(line[len(b"data: "):])["choices"][0]
            text += ch["text"]
            finish = ch["finish_reason"] or finish
    return text, finish


@pytest.fixture(scope="module")
def greedy_tokens(server):
    """The greedy completion's text and its tokens' texts."""
    c = complete(server, logprobs=0)
    toks = c["logprobs"]["tokens"]
    assert "".join(toks) == c["text"] and len(toks) == 16
    return c["text"], toks


def test_min_tokens_keeps_a_stop_string_in_the_first_tokens(server, greedy_tokens):
    full, toks = greedy_tokens
    first = toks[0]
    assert full.count(first) == 1, "the test needs a first token whose text does not recur"
    # Without min_tokens the first token stops the choice at once.
    c = complete(server, stop=[first])
    assert (c["text"], c["finish_reason"], c["stop_reason"]) == ("", "stop", first)
    # min_tokens 1: the first token's text is never searched; nothing later matches.
    c = complete(server, stop=[first], min_tokens=1)
    assert (c["text"], c["finish_reason"]) == (full, "length")
    assert streamed(server, stop=[first], min_tokens=1) == (full, "length")
    # The same for the k-th token with min_tokens k.
    for k in range(2, 5):
        if full.count(toks[k - 1]) != 1:
            continue
        c = complete(server, stop=[toks[k - 1]], min_tokens=k)
        assert (c["text"], c["finish_reason"]) == (full, "length"), k
        c = complete(server, stop=[toks[k - 1]], min_tokens=k - 1)
        assert (c["text"], c["finish_reason"]) == ("".join(toks[:k - 1]), "stop"), k


def test_min_tokens_stop_string_straddling_the_boundary(server, greedy_tokens):
    """A stop string that begins in the min_tokens tokens' text and ends
    after it still matches (vLLM looks back its length - 1 characters);
    one inside that text does not."""
    full, toks = greedy_tokens
    span = toks[1][-2:] + toks[2][:2]
    assert len(toks[1]) >= 2 and len(toks[2]) >= 2 and full.count(span) == 1
    cut = full.index(span)
    for inc in (False, True):
        want = full[:cut] + (span if inc else "")
        c = complete(server, stop=[span], min_tokens=2, include_stop_str_in_output=inc)
        assert (c["text"], c["finish_reason"], c["stop_reason"]) == (want, "stop", span)
        assert streamed(server, stop=[span], min_tokens=2,
                        include_stop_str_in_output=inc) == (want, "stop")
    # min_tokens 3: the whole span is in the first three tokens' text.
    c = complete(server, stop=[span], min_tokens=3)
    assert (c["text"], c["finish_reason"]) == (full, "length")
    assert streamed(server, stop=[span], min_tokens=3) == (full, "length")


def vllm_stop(full, toks, stop, min_tokens):
    """What vLLM answers: the text cut before the first match of stop that
    starts no earlier than len(stop) - 1 characters before the end of the
    first min_tokens tokens' text, or None when there is none."""
    start = max(0, len("".join(toks[:min_tokens])) - len(stop) + 1) if min_tokens else 0
    at = full.find(stop, start)
    return None if at < 0 else full[:at]


def test_min_tokens_stop_in_chat(server):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
            "temperature": 0, "max_tokens": 8, "ignore_eos": True, "logprobs": True}
    r = server.post("/v1/chat/completions", body)
    assert r.status_code == 200, r.text
    ch = r.json()["choices"][0]
    full = ch["message"]["content"]
    toks = [t["token"] for t in ch["logprobs"]["content"]]
    assert "".join(toks) == full
    stop = toks[0]
    for k in range(0, 5):
        r = server.post("/v1/chat/completions", {**body, "stop": [stop], "min_tokens": k})
        assert r.status_code == 200, r.text
        ch = r.json()["choices"][0]
        want = vllm_stop(full, toks, stop, k)
        if want is None:
            assert (ch["message"]["content"], ch["finish_reason"]) == (full, "length"), k
        else:
            assert (ch["message"]["content"], ch["finish_reason"]) == (want, "stop"), k
    assert vllm_stop(full, toks, stop, 0) == ""


def test_chat_min_tokens_beyond_the_context_is_refused(server):
    """Without max_tokens a chat answer may use the rest of the context; a
    min_tokens above that cannot be met and gets a 400 naming it, as vLLM
    answers, instead of being lowered silently."""
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "min_tokens": 100000}
    r = server.post("/v1/chat/completions", body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "min_tokens" and "left in this model's context" in err["message"]
    r = server.post("/v1/chat/completions", {**body, "min_tokens": 2, "max_tokens": 3})
    assert r.status_code == 200, r.text


REFUSED = {
    "guided_json": {"type": "object"},
    "guided_regex": "[a-z]+",
    "guided_choice": ["yes", "no"],
    "guided_grammar": "root ::= \"a\"",
    "structured_outputs": {"choice": ["yes", "no"]},
    "use_beam_search": True,
    "prompt_logprobs": 0,
    "allowed_token_ids": [1, 2, 3],
    "bad_words": ["fox"],
    "logits_processors": ["x"],
    "truncate_prompt_tokens": 4,
}


@pytest.mark.parametrize("field", sorted(REFUSED))
@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_unimplemented_vllm_extensions_are_refused(server, path, field):
    body = {"model": "tiny", "max_tokens": 2, field: REFUSED[field]}
    if path == "/v1/completions":
        body["prompt"] = PROMPT
    else:
        body["messages"] = [{"role": "user", "content": PROMPT}]
    r = server.post(path, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == field and err["type"] == "invalid_request_error"
    assert err["code"] == 400 and field in err["message"]


@pytest.mark.parametrize("off", [None, False, [], {}])
def test_vllm_extensions_switched_off_are_accepted(server, off):
    for path, extra in (("/v1/completions", {"prompt": PROMPT}),
                        ("/v1/chat/completions",
                         {"messages": [{"role": "user", "content": PROMPT}]})):
        body = {"model": "tiny", "max_tokens": 2, **extra, **{f: off for f in REFUSED}}
        r = server.post(path, body)
        assert r.status_code == 200, (path, r.text)


def test_refusal_through_the_openai_sdk(client):
    import openai
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="tiny", max_tokens=2,
                                       messages=[{"role": "user", "content": "yes or no?"}],
                                       extra_body={"guided_choice": ["yes", "no"]})
    assert exc.value.status_code == 400
    assert exc.value.body["param"] == "guided_choice"
