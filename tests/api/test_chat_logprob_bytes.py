"""Chat logprobs `bytes` are each token's raw bytes, as OpenAI sends them:
a token that is only part of a UTF-8 character (a byte-level piece of an
emoji for llama3_1, a <0xNN> byte-fallback piece for llama2) has U+FFFD for
its `token` text but its own bytes, so the bytes of consecutive tokens join
into the character. logit_bias plus repetition_penalty makes the tiny
model write a chosen character's tokens in order: the first token has the
largest bias, and once written its biased logit is divided by the penalty,
which lets the next one through. Expected bytes come from the Hugging Face
`tokenizers` library's vocabulary."""
import json
import re
import subprocess

import pytest
import requests

from api_util import start_server, stop_server
from byte_alphabet import char_to_byte

# (tokenizer, character): each splits into tokens that are parts of it
FORCED = [("llama3_1", "😀"),  # 'ðŁĺ' (3 bytes) + 'Ģ' (1 byte)
          ("llama3_1", "\ufdfd"),  # three one-byte tokens
          ("llama2", "龘")]  # <0xE9> <0xBE> <0x98>


def raw_bytes(hf, name, token_id):
    """The bytes a token stands for: byte-level pieces mapped back, <0xNN>
    as its byte, U+2581 as a space, added tokens as their content."""
    piece = hf.id_to_token(token_id)
    if token_id in hf.get_added_tokens_decoder():
        return list(piece.encode())
    if name != "llama2":
        alphabet = char_to_byte()
        return [alphabet[c] for c in piece]
    m = re.fullmatch(r"<0x([0-9A-F]{2})>", piece)
    return [int(m.group(1), 16)] if m else list(piece.replace("\u2581", " ").encode())


@pytest.fixture(scope="module")
def hf(shared):
    from tokenizers import Tokenizer
    return {name: Tokenizer.from_file(str(shared / "tokenizers" / name / "tokenizer.json"))
            for name in ("llama3_1", "llama2")}


@pytest.fixture(scope="module")
def servers(server, build, shared, tmp_path_factory, server_logs):
    """The shared llama3_1 server and a tiny model on the llama2 tokenizer."""
    out = tmp_path_factory.mktemp("model") / "tiny-llama2"
    subprocess.run([str(build / "tools" / "mkmodel"), "--shape", "tiny", "--tokenizer",
                    str(shared / "tokenizers" / "llama2"), "--out", str(out)],
                   check=True, capture_output=True)
    llama2 = start_server(build, out, server_logs, "llama2")
    yield {"llama3_1": server, "llama2": llama2}
    rc = stop_server(llama2)
    assert rc == 0, f"evalserver exited with {rc}:\n{llama2.log()[-4000:]}"


# Apart by more than the tiny model's logits differ; a written token's
# (bias + logit) / 10 falls below every later bias.
BIASES = [100, 60, 30]


def forced_body(ids, **extra):
    """Greedy, ids one after another."""
    return {"messages": [{"role": "user", "content": "hi"}], "max_tokens": len(ids),
            "temperature": 0, "logprobs": True, "top_logprobs": 3,
            "logit_bias": {str(t): b for t, b in zip(ids, BIASES)},
            "repetition_penalty": 10, **extra}


def chat(srv, body, stream):
    """(content, logprobs entries) of one chat completion."""
    if not stream:
        r = srv.post("/v1/chat/completions", body)
        assert r.status_code == 200, r.text
        ch = r.json()["choices"][0]
        return ch["message"]["content"], ch["logprobs"]["content"]
    with requests.post(srv.base + "/v1/chat/completions", json={**body, "stream": True},
                       stream=True, timeout=60) as r:
        assert r.status_code == 200, r.text
        lines = [l for l in r.iter_lines() if l]
    assert lines[-1] == b"data: [DONE]"
    events = [json.loads(l[len(b"data: "):]) for l in lines[:-1]]
    content = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
    entries = [x for e in events if e["choices"][0].get("logprobs")
               for x in e["choices"][0]["logprobs"]["content"]]
    return content, entries


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("name,char", FORCED)
def test_partial_utf8_tokens_join_into_the_character(servers, hf, name, char, stream):
    ids = hf[name].encode(char, add_special_tokens=False).ids
    ids = [i for i in ids if hf[name].id_to_token(i) != "\u2581"]  # llama2's word start
    assert 2 <= len(ids) <= len(BIASES)
    content, entries = chat(servers[name], forced_body(ids), stream)
    assert content == char
    assert len(entries) == len(ids)
    assert all(e["token"] == hf[name].decode([i]) for e, i in zip(entries, ids))
    assert all("\ufffd" in e["token"] for e in entries)  # each alone is no character
    assert [e["bytes"] for e in entries] == [raw_bytes(hf[name], name, i) for i in ids]
    assert bytes(b for e in entries for b in e["bytes"]).decode("utf-8") == char


@pytest.mark.parametrize("name,char", FORCED)
def test_top_logprobs_bytes_are_raw(servers, hf, name, char):
    """With return_tokens_as_token_ids every entry names its id, and its
    bytes, chosen and top alike, are that id's raw bytes."""
    ids = [i for i in hf[name].encode(char, add_special_tokens=False).ids
           if hf[name].id_to_token(i) != "\u2581"]
    body = forced_body(ids, top_logprobs=20, return_tokens_as_token_ids=True)
    content, entries = chat(servers[name], body, stream=False)
    assert content == char
    seen = 0
    for e in entries + [t for e in entries for t in e["top_logprobs"]]:
        token_id = int(e["token"][len("token_id:"):])
        assert e["bytes"] == raw_bytes(hf[name], name, token_id), e
        seen += 1
    assert seen == len(ids) * 21
