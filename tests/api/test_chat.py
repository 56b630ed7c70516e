"""POST /v1/chat/completions through the openai SDK: the chat template, the
response and chunk shapes, logprobs, n > 1, continue_final_message."""
import jinja2
import json

import pytest

MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say hello."}]


def render_reference(shared, messages, add_generation_prompt=True):
    """The chat template rendered by jinja2 as transformers does."""
    cfg = json.loads((shared / "tokenizers" / "llama3_1" / "tokenizer_config.json").read_text())
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(cfg["chat_template"]).render(
        messages=messages, add_generation_prompt=add_generation_prompt,
        bos_token=cfg["bos_token"] if isinstance(cfg["bos_token"], str) else cfg["bos_token"]["content"],
        eos_token="<|eot_id|>")


def test_chat_basic(client):
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=6,
                                       temperature=0)
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    m = r.choices[0].message
    assert m.role == "assistant" and isinstance(m.content, str)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 6
    assert r.system_fingerprint.startswith("fp_")


def test_chat_prompt_is_template_without_double_bos(server, shared):
    text = render_reference(shared, MESSAGES)
    ids = server.post("/tokenize", {"messages": MESSAGES}).json()["tokens"]
    from tokenizers import Tokenizer
    tk = Tokenizer.from_file(str(shared / "tokenizers" / "llama3_1" / "tokenizer.json"))
    assert ids == tk.encode(text, add_special_tokens=False).ids
    assert ids.count(128000) == 1  # BOS from the template only
    r = server.post("/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 1}).json()
    assert r["usage"]["prompt_tokens"] == len(ids)


def test_chat_content_parts(client, server):
    parts = [{"role": "user", "content": [{"type": "text", "text": "Say"},
                                          {"type": "text", "text": "hello."}]}]
    # An assistant refusal part (the openai SDK's shape) is text too, as in vLLM.
    refusal = [{"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]}]
    as_text = [{"role": "assistant", "content": "No."}]
    assert (server.post("/tokenize", {"messages": refusal}).json() ==
            server.post("/tokenize", {"messages": as_text}).json())
    a = client.chat.completions.create(model="tiny", messages=parts, max_tokens=5, temperature=0)
    b = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Say\nhello."}],
                                       max_tokens=5, temperature=0)
    assert a.choices[0].message.content == b.choices[0].message.content


def test_chat_streaming(client):
    kw = dict(model="tiny", messages=MESSAGES, max_tokens=8, temperature=0,
              extra_body={"ignore_eos": True})
    full = client.chat.completions.create(**kw).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True,
                                                 stream_options={"include_usage": True}, **kw))
    assert chunks[0].object == "chat.completion.chunk"
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == full
    fins = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert fins == ["length"]
    assert chunks[-1].usage.completion_tokens == 8


def test_chat_logprobs(client):
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4,
                                       temperature=0, logprobs=True, top_logprobs=3,
                                       extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == 4
    for ent in content:
        assert ent.logprob <= 0
        assert bytes(ent.bytes).decode("utf-8", "replace") == ent.token
        assert len(ent.top_logprobs) == 3
        assert ent.top_logprobs[0].logprob == pytest.approx(ent.logprob, abs=1e-6)  # greedy
        tops = [t.logprob for t in ent.top_logprobs]
        assert tops == sorted(tops, reverse=True)


def test_chat_n_and_max_completion_tokens(client):
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, n=3,
                                       max_completion_tokens=5, temperature=1.0, seed=1,
                                       extra_body={"ignore_eos": True})
    assert sorted(c.index for c in r.choices) == [0, 1, 2]
    assert r.usage.completion_tokens == 15


def test_chat_default_max_tokens_fills_context(spawn):
    srv = spawn("short-context", "--max-model-len", "64")
    r = srv.post("/v1/chat/completions", {"messages": MESSAGES, "temperature": 0,
                                          "ignore_eos": True}, timeout=120).json()
    assert r["choices"][0]["finish_reason"] == "length"
    assert r["usage"]["total_tokens"] == 64  # --max-model-len


def test_continue_final_message(server, shared):
    msgs = MESSAGES + [{"role": "assistant", "content": "Hello there"}]
    ids = server.post("/tokenize", {"messages": msgs, "continue_final_message": True,
                                    "add_generation_prompt": False}).json()["tokens"]
    full = render_reference(shared, msgs, add_generation_prompt=False)
    cut = full[:full.rindex("Hello there") + len("Hello there")]
    from tokenizers import Tokenizer
    tk = Tokenizer.from_file(str(shared / "tokenizers" / "llama3_1" / "tokenizer.json"))
    assert ids == tk.encode(cut, add_special_tokens=False).ids
    r = server.post("/v1/chat/completions", {"messages": msgs, "continue_final_message": True,
                                             "add_generation_prompt": False, "max_tokens": 2})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == len(ids)


def transformers_cut(rendered, final):
    """transformers' apply_chat_template(continue_final_message=True) cut."""
    loc = rendered.rindex(final.strip())
    if rendered[loc:loc + len(final.lstrip())] == final:
        return rendered[:loc + len(final.lstrip())]
    return rendered[:loc + len(final.strip())]


def test_continue_final_message_cuts_at_the_final_message(server, shared):
    """The cut is after the last occurrence of the stripped content: the
    llama3 template trims "Hi ", and the user's "Hi there" must not be taken
    for it. Found in linear time, however often the content repeats."""
    from tokenizers import Tokenizer
    tk = Tokenizer.from_file(str(shared / "tokenizers" / "llama3_1" / "tokenizer.json"))
    long = "a" * 150000  # the old search took ~26 s here
    for user, final in [("Hi there", "Hi "), ("x", " Hi"), ("Hi", "Hi\n"), (long + long, long)]:
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": final}]
        r = server.post("/tokenize", {"messages": msgs, "continue_final_message": True,
                                      "add_generation_prompt": False}, timeout=10)
        assert r.status_code == 200, r.text
        want = transformers_cut(render_reference(shared, msgs, False), final)
        assert r.json()["tokens"] == tk.encode(want, add_special_tokens=False).ids, (user, final)
