"""Tool calls in chat completions, as vLLM's --enable-auto-tool-choice
--tool-call-parser NAME has them (server/api/tool_calls.c; the parsers'
corner cases are in tests/unit/test_tool_calls.c): with the flags and a
request with tools, the calls the model writes become message.tool_calls
(streamed as one tool_calls delta) and finish_reason "tool_calls";
without the flags, or with tool_choice "none", the text stays content.

The tiny random model writes a chosen text: its tokens (distinct ids, so
that each can be penalized once written) get a falling logit_bias ladder,
and repetition_penalty 10 drops each token below the next once it is
written. The prompt is only "hi" (a request chat_template, under
--trust-request-chat-template), so that no wanted token is penalized by
the prompt. The ladder is calibrated against the server with tool_choice
"none" (same tokens, nothing parsed) before the parsed answers are
checked."""
import json
import subprocess

import pytest
import requests

from api_util import start_server, stop_server
from byte_alphabet import byte_to_char

HERMES_ADDED = ("<tool_call>", "</tool_call>")
TOOLS = [{"type": "function",
          "function": {"name": "get_weather", "description": "weather of a city",
                       "parameters": {"type": "object",
                                      "properties": {"city": {"type": "string"}}}}}]
FLAGS = ("--enable-auto-tool-choice", "--tool-call-parser")
PLAIN_TEMPLATE = "{{ messages[0]['content'] }}"


def forced_ids(hf, text, added=()):
    """Distinct token ids whose pieces spell text (the tokens named in
    `added` as themselves): depth-first, longest pieces first."""
    b2c = byte_to_char()
    vocab = hf.get_vocab(with_added_tokens=False)
    data = text.encode()
    budget = [20000]

    def options(i):
        out = [(hf.token_to_id(t), len(t.encode())) for t in added
               if data.startswith(t.encode(), i)]
        for n in range(min(24, len(data) - i), 0, -1):
            tid = vocab.get("".join(b2c[b] for b in data[i:i + n]))
            if tid is not None:
                out.append((tid, n))
        return out

    def spell(i, taken):
        if i == len(data):
            return []
        budget[0] -= 1
        if budget[0] < 0:
            return None
        for tid, n in options(i):
            if tid not in taken:
                tail = spell(i + n, taken | {tid})
                if tail is not None:
                    return [tid] + tail
        return None

    ids = spell(0, frozenset())
    assert ids is not None, f"no distinct-token spelling of {text!r}"
    return ids


def forced_body(ids, biases, **extra):
    """Greedy, ids one after another (biases falling)."""
    return {"messages": [{"role": "user", "content": "hi"}], "chat_template": PLAIN_TEMPLATE,
            "max_tokens": len(ids), "temperature": 0, "tools": TOOLS,
            "logit_bias": {str(t): round(b, 3) for t, b in zip(ids, biases)},
            "repetition_penalty": 10, **extra}


def written_ids(srv, body):
    """The token ids the body makes the server write (nothing parsed)."""
    r = srv.post("/v1/chat/completions", {**body, "tool_choice": "none", "logprobs": True,
                                          "return_tokens_as_token_ids": True})
    assert r.status_code == 200, r.text
    return [int(t["token"][len("token_id:"):]) for t in r.json()["choices"][0]["logprobs"]["content"]]


def calibrated_body(srv, hf, text, added=(), **extra):
    """A body that makes the server's model write exactly text. The bias
    ladder falls from 100 by gaps that start small; where a later token
    jumps ahead, the gap before it widens; where an unbiased (or spent)
    token wins, the widest earlier gaps narrow to lift the tail."""
    ids = forced_ids(hf, text, added)
    gaps = [3.0] * (len(ids) - 1)
    for _ in range(200):
        biases = [100 - sum(gaps[:k]) for k in range(len(ids))]
        body = forced_body(ids, biases, **extra)
        got = written_ids(srv, body)
        if got == ids:
            return body
        j = next(k for k, (a, b) in enumerate(zip(got, ids)) if a != b)
        if got[j] in ids[j + 1:]:
            m = ids.index(got[j])
            for k in range(j, m):
                gaps[k] += 1.0
        elif j > 0:
            widest = max(range(j), key=lambda k: gaps[k])
            gaps[widest] = max(0.5, gaps[widest] - 1.0)
        if 100 - sum(gaps) < 5:
            break
    pytest.skip(f"the tiny model cannot be made to write {text!r}")


def streamed(srv, body):
    """The openai SDK's streamed chunks, accumulated per choice as a
    client does: content joined, tool calls by index (arguments joined)."""
    import openai
    client = openai.OpenAI(base_url=srv.url, api_key="unused", max_retries=0, timeout=60)
    extra = {k: v for k, v in body.items()
             if k not in ("messages", "max_tokens", "temperature", "tools", "logit_bias", "n")}
    stream = client.chat.completions.create(
        model="tiny", messages=body["messages"], max_tokens=body["max_tokens"],
        temperature=body["temperature"], tools=body["tools"], logit_bias=body["logit_bias"],
        n=body.get("n", 1), stream=True, extra_body=extra)
    out = {}
    for chunk in stream:
        for ch in chunk.choices:
            acc = out.setdefault(ch.index, {"content": None, "tool_calls": {},
                                            "finish_reason": None})
            if ch.delta.content:
                acc["content"] = (acc["content"] or "") + ch.delta.content
            for tc in ch.delta.tool_calls or []:
                call = acc["tool_calls"].setdefault(tc.index, {"id": None, "type": None,
                                                               "name": "", "arguments": ""})
                call["id"] = tc.id or call["id"]
                call["type"] = tc.type or call["type"]
                if tc.function:
                    call["name"] += tc.function.name or ""
                    call["arguments"] += tc.function.arguments or ""
            if ch.finish_reason:
                acc["finish_reason"] = ch.finish_reason
    return [out[k] for k in sorted(out)]


def calls_of(message):
    return [(c["function"]["name"], c["function"]["arguments"])
            for c in message.get("tool_calls") or []]


def check_ids(calls):
    ids = [c["id"] for c in calls]
    assert len(set(ids)) == len(ids)
    for i in ids:
        assert i.startswith("chatcmpl-tool-") and len(i) == len("chatcmpl-tool-") + 32
        int(i[len("chatcmpl-tool-"):], 16)


# ---------------------------------------------------------------- servers

@pytest.fixture(scope="module")
def hf(shared):
    from tokenizers import Tokenizer
    return {name: Tokenizer.from_file(str(shared / "tokenizers" / name / "tokenizer.json"))
            for name in ("qwen3", "llama3_1")}


@pytest.fixture(scope="module")
def qwen3_model(build, shared, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "tiny-qwen3"
    subprocess.run([str(build / "tools" / "mkmodel"), "--shape", "tiny", "--tokenizer",
                    str(shared / "tokenizers" / "qwen3"), "--out", str(out)],
                   check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def servers(build, qwen3_model, tiny_model, server_logs):
    """hermes (qwen3), llama3_json (llama3_1) and, without the flags, a
    plain qwen3 server; every one trusts a request's chat_template."""
    trust = "--trust-request-chat-template"
    started = {}
    try:
        started["hermes"] = start_server(build, qwen3_model, server_logs, "tools-hermes", trust,
                                         *FLAGS, "hermes")
        started["llama3_json"] = start_server(build, tiny_model, server_logs, "tools-llama3",
                                              trust, *FLAGS, "llama3_json")
        started["plain"] = start_server(build, qwen3_model, server_logs, "tools-plain", trust)
        yield started
    finally:
        for name, srv in started.items():
            rc = stop_server(srv)
            assert rc == 0, f"{name} exited with {rc}:\n{srv.log()[-4000:]}"


# ---------------------------------------------------------------- cases

# (server, tokenizer, text, expected content, expected [(name, arguments)])
CASES = [
    ("hermes", "qwen3", '<tool_call>{"name":"f","arguments":{}}</tool_call>', None,
     [("f", "{}")]),
    ("hermes", "qwen3", '<tool_call>\n{"name":"get_weather","arguments":{"city":"Paris"}}\n'
     '</tool_call>', None, [("get_weather", '{"city":"Paris"}')]),
    ("hermes", "qwen3", 'Hi\n<tool_call>{"name":"f","arguments":{"x":1}}', "Hi",
     [("f", '{"x":1}')]),  # content before, the final call unclosed
    ("hermes", "qwen3", '<tool_call>{"name":"say","arguments":{"t":"\u00e9\u2713"}}',
     None, [("say", '{"t":"\u00e9\u2713"}')]),
    ("hermes", "qwen3", '<tool_call>{"name":"f","arguments":"{\\"a\\":2}"}', None,
     [("f", '{"a":2}')]),  # arguments as a JSON string
    ("hermes", "qwen3", 'Hi <tool_call>{"name":', 'Hi <tool_call>{"name":', []),  # invalid
    ("hermes", "qwen3", "The weather is fine.", "The weather is fine.", []),
    ("llama3_json", "llama3_1", '{"name":"f","parameters":{"x":1}}', None, [("f", '{"x":1}')]),
    ("llama3_json", "llama3_1", ' {"name":"get_weather","arguments":{"city":"Paris"}}', None,
     [("get_weather", '{"city":"Paris"}')]),
    ("llama3_json", "llama3_1", 'Sure: {"name":"f","parameters":{}}',
     'Sure: {"name":"f","parameters":{}}', []),
    ("llama3_json", "llama3_1", '{"name":"f","parameters":{', '{"name":"f","parameters":{', []),
]
CASE_IDS = [f"{c[0]}-{i}" for i, c in enumerate(CASES)]


@pytest.mark.parametrize("parser,tok,text,content,calls", CASES, ids=CASE_IDS)
def test_non_streaming(servers, hf, parser, tok, text, content, calls):
    srv = servers[parser]
    added = HERMES_ADDED if parser == "hermes" else ()
    body = calibrated_body(srv, hf[tok], text, added)
    r = srv.post("/v1/chat/completions", body)
    assert r.status_code == 200, r.text
    ch = r.json()["choices"][0]
    assert ch["message"]["content"] == content
    assert calls_of(ch["message"]) == calls
    if calls:
        assert ch["finish_reason"] == "tool_calls"
        assert all(c["type"] == "function" for c in ch["message"]["tool_calls"])
        check_ids(ch["message"]["tool_calls"])
    else:
        assert ch["finish_reason"] == "length"
        assert "tool_calls" not in ch["message"]
    # tool_choice "auto" is the same as leaving it out
    r = srv.post("/v1/chat/completions", {**body, "tool_choice": "auto"})
    assert calls_of(r.json()["choices"][0]["message"]) == calls


@pytest.mark.parametrize("parser,tok,text,content,calls", CASES, ids=CASE_IDS)
def test_streaming_matches(servers, hf, parser, tok, text, content, calls):
    srv = servers[parser]
    added = HERMES_ADDED if parser == "hermes" else ()
    body = calibrated_body(srv, hf[tok], text, added)
    (got,) = streamed(srv, body)
    assert (got["content"] or None) == content
    assert [(c["name"], c["arguments"]) for c in got["tool_calls"].values()] == calls
    assert got["finish_reason"] == ("tool_calls" if calls else "length")
    if calls:
        check_ids([{"id": c["id"]} for c in got["tool_calls"].values()])
        assert all(c["type"] == "function" for c in got["tool_calls"].values())


def test_streaming_holds_back_and_logprobs_flow(servers, hf):
    """The raw SSE: content before the call goes out, nothing of the call
    is ever content, and every generated token still has its logprob."""
    srv = servers["hermes"]
    text = 'Hi\n<tool_call>{"name":"f","arguments":{"x":1}}'
    body = calibrated_body(srv, hf["qwen3"], text, HERMES_ADDED)
    with requests.post(srv.base + "/v1/chat/completions",
                       json={**body, "stream": True, "logprobs": True}, stream=True,
                       timeout=60) as r:
        assert r.status_code == 200, r.text
        lines = [l for l in r.iter_lines() if l]
    assert lines[-1] == b"data: [DONE]"
    events = [json.loads(l[len(b"data: "):]) for l in lines[:-1]]
    choices = [e["choices"][0] for e in events]
    content = "".join(c["delta"].get("content") or "" for c in choices)
    assert content == "Hi"
    tokens = [t for c in choices if c.get("logprobs") for t in c["logprobs"]["content"]]
    assert len(tokens) == body["max_tokens"]
    deltas = [c["delta"]["tool_calls"] for c in choices if c["delta"].get("tool_calls")]
    assert len(deltas) == 1 and deltas[0][0]["index"] == 0
    assert deltas[0][0]["function"] == {"name": "f", "arguments": '{"x":1}'}
    assert choices[-1]["finish_reason"] == "tool_calls"


def test_each_choice_parsed(servers, hf):
    srv = servers["hermes"]
    text = '<tool_call>{"name":"f","arguments":{}}</tool_call>'
    body = calibrated_body(srv, hf["qwen3"], text, HERMES_ADDED, n=2)
    r = srv.post("/v1/chat/completions", body)
    assert r.status_code == 200, r.text
    chs = r.json()["choices"]
    assert [calls_of(c["message"]) for c in chs] == [[("f", "{}")]] * 2
    ids = [c["message"]["tool_calls"][0]["id"] for c in chs]
    assert ids[0] != ids[1]
    got = streamed(srv, body)
    assert [[(c["name"], c["arguments"]) for c in g["tool_calls"].values()] for g in got] == \
        [[("f", "{}")]] * 2


def test_no_parsing_without_flags_tools_or_auto(servers, hf):
    """The same text stays content without the flags, with tool_choice
    "none" and without tools."""
    text = '<tool_call>{"name":"f","arguments":{}}</tool_call>'
    body = calibrated_body(servers["hermes"], hf["qwen3"], text, HERMES_ADDED)
    plain = servers["plain"].post("/v1/chat/completions", body).json()["choices"][0]
    assert plain["message"]["content"] == text and "tool_calls" not in plain["message"]
    assert plain["finish_reason"] == "length"
    (got,) = streamed(servers["plain"], body)
    assert got["content"] == text and not got["tool_calls"]
    no_tools = {k: v for k, v in body.items() if k != "tools"}
    for b in ({**body, "tool_choice": "none"}, no_tools, {**body, "tools": []}):
        ch = servers["hermes"].post("/v1/chat/completions", b).json()["choices"][0]
        assert ch["message"]["content"] == text and "tool_calls" not in ch["message"]


@pytest.mark.parametrize("name", ["hermes", "plain"])
def test_forced_tool_choice_still_refused(servers, name):
    body = {"messages": [{"role": "user", "content": "x"}], "tools": TOOLS, "max_tokens": 1}
    for tc in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        r = servers[name].post("/v1/chat/completions", {**body, "tool_choice": tc})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == "tool_choice"
        assert "constrained decoding" in err["message"]
        assert "--enable-auto-tool-choice" in err["message"]


def test_tool_conversation_renders(servers):
    """An assistant message with tool_calls and the tool's result come
    back through the model's own template (qwen3's renders both)."""
    msgs = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "chatcmpl-tool-0123456789abcdef0123456789abcdef", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "chatcmpl-tool-0123456789abcdef0123456789abcdef",
         "content": "18 C, sunny"},
    ]
    for name in ("hermes", "llama3_json"):
        r = servers[name].post("/v1/chat/completions",
                               {"messages": msgs, "tools": TOOLS, "max_tokens": 2})
        assert r.status_code == 200, r.text
    r = servers["hermes"].post("/tokenize", {"messages": msgs, "tools": TOOLS})
    assert r.status_code == 200, r.text


# ---------------------------------------------------------------- startup

@pytest.mark.parametrize("flags,message", [
    (["--enable-auto-tool-choice"], "--enable-auto-tool-choice needs --tool-call-parser"),
    (["--tool-call-parser", "hermes"], "--tool-call-parser needs --enable-auto-tool-choice"),
    (["--enable-auto-tool-choice", "--tool-call-parser", "mistral"],
     "--tool-call-parser must be one of hermes, llama3_json, got 'mistral'"),
])
def test_flag_errors(build, tiny_model, flags, message):
    r = subprocess.run([str(build / "server" / "evalserver"), "--model", str(tiny_model), *flags],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert message in r.stderr


def test_help_lists_flags(build):
    r = subprocess.run([str(build / "server" / "evalserver"), "--help"], capture_output=True,
                       text=True, timeout=60)
    assert "--enable-auto-tool-choice" in r.stdout and "--tool-call-parser NAME" in r.stdout
