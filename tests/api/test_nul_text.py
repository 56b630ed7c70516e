"""Decoded text that holds U+0000 and other control characters reaches the
client whole: /detokenize, completions text (echo and generated, streamed
and not), logprobs tokens and their top_logprobs keys, chat content and
chat logprobs tokens. cJSON strings are C strings, so without the
length-aware output of common/json.c everything after a NUL was lost.
Expected texts come from the Hugging Face `tokenizers` library; every
response body and SSE event must parse as JSON."""
import json

import pytest
import requests

from byte_alphabet import byte_to_char

NUL_ID = 188  # llama3_1's byte-level token for byte 0x00


@pytest.fixture(scope="module")
def hf(shared):
    from tokenizers import Tokenizer
    return Tokenizer.from_file(str(shared / "tokenizers" / "llama3_1" / "tokenizer.json"))


@pytest.fixture(scope="module")
def ctrl_ids(hf):
    """Token ids of the control bytes 0x00, 0x01, 0x07, 0x1b, 0x1f, 0x7f."""
    alphabet = byte_to_char()
    ids = [hf.token_to_id(alphabet[b]) for b in (0x00, 0x01, 0x07, 0x1B, 0x1F, 0x7F)]
    assert ids[0] == NUL_ID and all(i is not None for i in ids)
    return ids


def sequences(hf, ctrl_ids):
    a, b = hf.token_to_id("A"), hf.token_to_id("B")
    return [[a, NUL_ID, b], [NUL_ID], [a, NUL_ID], [NUL_ID, NUL_ID, b],
            [a] + ctrl_ids + [b], ctrl_ids[::-1] + hf.encode(" tail text").ids]


def post_json(server, path, body):
    r = server.post(path, body)
    assert r.status_code == 200, r.text
    return json.loads(r.text)


def sse_events(server, path, body):
    with requests.post(server.base + path, json={**body, "stream": True}, stream=True,
                       timeout=60) as r:
        assert r.status_code == 200, r.text
        lines = [l for l in r.iter_lines() if l]
    assert lines[-1] == b"data: [DONE]"
    return [json.loads(l[len(b"data: "):]) for l in lines[:-1]]


def test_detokenize_keeps_control_characters(server, hf, ctrl_ids):
    for ids in sequences(hf, ctrl_ids):
        r = server.post("/detokenize", {"tokens": ids})
        assert r.status_code == 200, r.text
        want = hf.decode(ids, skip_special_tokens=False)
        assert json.loads(r.text)["prompt"] == want, ids
    r = server.post("/detokenize", {"tokens": [32, NUL_ID, 33]})
    assert r.text == '{"prompt":"A\\u0000B"}'


def test_echo_and_logprobs_keep_nul(server, hf, ctrl_ids):
    for ids in sequences(hf, ctrl_ids):
        want = hf.decode(ids, skip_special_tokens=False)
        body = {"prompt": ids, "echo": True, "logprobs": 1, "max_tokens": 0}
        # Figures as printed: a key's value must be the very bytes of token_logprobs.
        r = server.post("/v1/completions", body)
        assert r.status_code == 200, r.text
        ch = json.loads(r.text, parse_float=str)["choices"][0]
        assert ch["text"] == want
        lp = ch["logprobs"]
        assert lp["tokens"] == [hf.decode([i], skip_special_tokens=False) for i in ids]
        assert lp["top_logprobs"][0] is None
        for tok, value, top in zip(lp["tokens"][1:], lp["token_logprobs"][1:],
                                   lp["top_logprobs"][1:]):
            assert top[tok] == value
        streamed = sse_events(server, "/v1/completions", body)
        assert "".join(e["choices"][0]["text"] for e in streamed) == want
        tokens = [t for e in streamed if e["choices"][0]["logprobs"]
                  for t in e["choices"][0]["logprobs"]["tokens"]]
        assert tokens == lp["tokens"]


@pytest.mark.parametrize("stream", [False, True])
def test_generated_nul_in_completions(server, hf, stream):
    """logit_bias forces the NUL token; echo puts one before it too."""
    prompt = [hf.token_to_id("A"), NUL_ID, hf.token_to_id("B")]
    body = {"prompt": prompt, "echo": True, "logprobs": 2, "max_tokens": 3, "temperature": 0,
            "logit_bias": {str(NUL_ID): 100}}
    want = "A\x00B" + "\x00" * 3
    if not stream:
        ch = post_json(server, "/v1/completions", body)["choices"][0]
        text, tops = ch["text"], ch["logprobs"]["top_logprobs"]
        tokens = ch["logprobs"]["tokens"]
    else:
        events = sse_events(server, "/v1/completions", body)
        text = "".join(e["choices"][0]["text"] for e in events)
        lps = [e["choices"][0]["logprobs"] for e in events if e["choices"][0]["logprobs"]]
        tokens = [t for lp in lps for t in lp["tokens"]]
        tops = [t for lp in lps for t in lp["top_logprobs"]]
    assert text == want
    assert tokens == ["A", "\x00", "B", "\x00", "\x00", "\x00"]
    for t in tops[3:]:
        assert "\x00" in t and 2 <= len(t) <= 3


@pytest.mark.parametrize("stream", [False, True])
def test_generated_nul_in_chat(server, stream):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0,
            "logprobs": True, "top_logprobs": 1, "logit_bias": {str(NUL_ID): 100}}
    if not stream:
        ch = post_json(server, "/v1/chat/completions", body)["choices"][0]
        content, entries = ch["message"]["content"], ch["logprobs"]["content"]
    else:
        events = sse_events(server, "/v1/chat/completions", body)
        content = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
        entries = [x for e in events if e["choices"][0]["logprobs"]
                   for x in e["choices"][0]["logprobs"]["content"]]
    assert content == "\x00" * 3
    assert [e["token"] for e in entries] == ["\x00"] * 3
    assert all(e["bytes"] == [0] for e in entries)
