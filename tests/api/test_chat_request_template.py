"""A request's own "chat_template" (vLLM's extension) on /v1/chat/completions
and /tokenize: refused with 400 unless the server runs with
--trust-request-chat-template, never silently replaced by the server's
template; with the flag it renders that request's prompt (only that
one's), with the server template's variables, and its compile and render
errors are 400s naming the field."""
import jinja2
import openai
import pytest

from api_util import start_server, stop_server

MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say hello."}]
SIMPLE = "{% for m in messages %}<<{{ m['content'] }}>>{% endfor %}"
SIMPLE_TEXT = "<<You are terse.>><<Say hello.>>"
FLAG = "--trust-request-chat-template"
MAX_TEMPLATE_BYTES = 256 << 10  # API_MAX_REQUEST_TEMPLATE_BYTES


@pytest.fixture(scope="module")
def trusted(build, tiny_model, server_logs):
    """A server that accepts a request's chat template."""
    srv = start_server(build, tiny_model, server_logs, "trusted-template", FLAG)
    yield srv
    rc = stop_server(srv)
    assert rc == 0, f"evalserver exited with {rc}:\n{srv.log()[-4000:]}"


@pytest.fixture(scope="module")
def hf_tokenizer(shared):
    from tokenizers import Tokenizer
    return Tokenizer.from_file(str(shared / "tokenizers" / "llama3_1" / "tokenizer.json"))


def assert_error(r, status, param):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error", err
    assert err["param"] == param, err
    assert err["code"] == status
    return err["message"]


def text_ids(srv, hf_tokenizer, text):
    """text's token ids without special tokens, as the server's /tokenize
    and the Hugging Face tokenizer both give them."""
    r = srv.post("/tokenize", {"prompt": text, "add_special_tokens": False})
    assert r.status_code == 200, r.text
    ids = r.json()["tokens"]
    assert ids == hf_tokenizer.encode(text, add_special_tokens=False).ids
    return ids


def tokenize_chat(srv, template, **extra):
    return srv.post("/tokenize", {"messages": MESSAGES, "chat_template": template, **extra},
                    timeout=30)


def chat(srv, template, **extra):
    body = {"messages": MESSAGES, "max_tokens": 1, "chat_template": template, **extra}
    return srv.post("/v1/chat/completions", body, timeout=120)


# ---------------------------------------------------------------- without the flag

@pytest.mark.parametrize("template", [SIMPLE, "", 5, {"x": 1}])
def test_refused_without_the_flag(server, template):
    for r in (chat(server, template), tokenize_chat(server, template)):
        msg = assert_error(r, 400, "chat_template")
        assert FLAG in msg and "must be started with" in msg, msg
    assert server.healthy()


def test_null_is_the_same_as_absent(server):
    plain = server.post("/tokenize", {"messages": MESSAGES}).json()["tokens"]
    r = tokenize_chat(server, None)
    assert r.status_code == 200, r.text
    assert r.json()["tokens"] == plain
    r = chat(server, None)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == len(plain)


def test_refused_through_the_openai_sdk(client):
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=1,
                                       extra_body={"chat_template": SIMPLE})
    assert ei.value.status_code == 400
    assert ei.value.body["param"] == "chat_template"
    assert FLAG in ei.value.body["message"]


def test_prompt_tokenize_is_not_a_chat(server):
    """chat_template belongs to the chat form of /tokenize; a "prompt" is
    tokenized as it is, as vLLM's completion-form /tokenize does."""
    r = server.post("/tokenize", {"prompt": "hi", "chat_template": SIMPLE})
    assert r.status_code == 200, r.text


# ---------------------------------------------------------------- with the flag

def test_request_template_builds_the_prompt(trusted, hf_tokenizer):
    want = text_ids(trusted, hf_tokenizer, SIMPLE_TEXT)
    r = tokenize_chat(trusted, SIMPLE)
    assert r.status_code == 200, r.text
    assert r.json()["tokens"] == want
    r = chat(trusted, SIMPLE)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == len(want)


def test_request_template_is_for_that_request_only(trusted, server):
    """The server's own template still renders every other request, on a
    trusted server as on an untrusted one; null means the server's."""
    plain = server.post("/tokenize", {"messages": MESSAGES}).json()["tokens"]
    assert tokenize_chat(trusted, SIMPLE).json()["tokens"] != plain
    assert trusted.post("/tokenize", {"messages": MESSAGES}).json()["tokens"] == plain
    assert tokenize_chat(trusted, None).json()["tokens"] == plain
    r = trusted.post("/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 1})
    assert r.json()["usage"]["prompt_tokens"] == len(plain)


def test_request_template_gets_the_server_templates_variables(trusted, shared, hf_tokenizer):
    """messages, add_generation_prompt, bos_token, eos_token, tools and
    chat_template_kwargs, as the server's template has them, rendered as
    jinja2 does (trim_blocks, lstrip_blocks)."""
    template = ("{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}"
                "{{ eos_token }}\n{% endfor %}"
                "{% if tools %}tools: {{ tools | map(attribute='function') | "
                "map(attribute='name') | join(',') }}\n{% endif %}"
                "{% if greeting is defined %}{{ greeting }}\n{% endif %}"
                "{% if add_generation_prompt %}[assistant]{% endif %}")
    tools = [{"type": "function", "function": {"name": "get_time", "parameters": {}}}]
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    for extra, variables in [
            ({}, {"add_generation_prompt": True}),
            ({"add_generation_prompt": False}, {"add_generation_prompt": False}),
            ({"tools": tools, "chat_template_kwargs": {"greeting": "hey"}},
             {"add_generation_prompt": True, "tools": tools, "greeting": "hey"})]:
        text = env.from_string(template).render(messages=MESSAGES, bos_token="<|begin_of_text|>",
                                                eos_token="<|eot_id|>", **variables)
        want = hf_tokenizer.encode(text, add_special_tokens=False).ids
        r = tokenize_chat(trusted, template, **extra)
        assert r.status_code == 200, r.text
        assert r.json()["tokens"] == want, (extra, text)
        assert want.count(128000) == 1  # the template's BOS, no second one
        r = chat(trusted, template, **extra)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["prompt_tokens"] == len(want)


def test_request_template_with_continue_final_message(trusted, hf_tokenizer):
    msgs = MESSAGES + [{"role": "assistant", "content": "Hello there"}]
    r = trusted.post("/tokenize", {"messages": msgs, "chat_template": SIMPLE,
                                   "continue_final_message": True,
                                   "add_generation_prompt": False})
    assert r.status_code == 200, r.text
    cut = "<<You are terse.>><<Say hello.>><<Hello there"  # the closing >> is cut
    assert r.json()["tokens"] == hf_tokenizer.encode(cut, add_special_tokens=False).ids


def test_request_template_through_the_openai_sdk(trusted, hf_tokenizer):
    client = openai.OpenAI(base_url=trusted.url, api_key="unused", max_retries=0, timeout=120)
    want = text_ids(trusted, hf_tokenizer, SIMPLE_TEXT)
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=1,
                                       extra_body={"chat_template": SIMPLE})
    assert r.usage.prompt_tokens == len(want)
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=1,
                                       extra_body={"chat_template": "{% if %}"})
    assert ei.value.body["param"] == "chat_template"


def test_compile_error_names_the_line(trusted):
    template = "{% for m in messages %}\n<<{{ m['content'] }}>>\n{% endfor %}\n{{ oops( }}\n"
    for r in (chat(trusted, template), tokenize_chat(trusted, template)):
        msg = assert_error(r, 400, "chat_template")
        assert "line 4" in msg, msg


def test_no_file_access(trusted, tmp_path):
    """The engine has no include, import or extends: such a template does
    not compile, and a path is only text."""
    secret = tmp_path / "secret.jinja"
    secret.write_text("LEAKED")
    for tag in ("include", "import", "extends"):
        r = tokenize_chat(trusted, "{% " + tag + " '" + str(secret) + "' %}")
        assert_error(r, 400, "chat_template")
    r = tokenize_chat(trusted, str(secret))
    assert r.status_code == 200, r.text
    text = trusted.post("/detokenize", {"tokens": r.json()["tokens"]}).json()["prompt"]
    assert text == str(secret)


def test_template_size_is_bounded(trusted, hf_tokenizer):
    def padded(n):  # a comment pads SIMPLE to n bytes, rendering the same text
        pad = n - len(SIMPLE) - len("{##}")
        return "{#" + "x" * pad + "#}" + SIMPLE
    r = tokenize_chat(trusted, padded(MAX_TEMPLATE_BYTES))
    assert r.status_code == 200, r.text
    assert r.json()["tokens"] == text_ids(trusted, hf_tokenizer, SIMPLE_TEXT)
    for r in (chat(trusted, padded(MAX_TEMPLATE_BYTES + 1)),
              tokenize_chat(trusted, padded(MAX_TEMPLATE_BYTES + 1))):
        msg = assert_error(r, 400, "chat_template")
        assert str(MAX_TEMPLATE_BYTES) in msg, msg


@pytest.mark.parametrize("template", [5, True, ["x"], {"a": "b"}, ""])
def test_template_must_be_a_non_empty_string(trusted, template):
    for r in (chat(trusted, template), tokenize_chat(trusted, template)):
        assert_error(r, 400, "chat_template")


@pytest.mark.parametrize("template,words", [
    ("{{ raise_exception('no system messages, please') }}", "no system messages, please"),
    ("{% for i in range(1000) %}{% for j in range(1000) %}{% for k in range(10) %}"
     "{% endfor %}{% endfor %}{% endfor %}", "loop"),
    ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recursion"),
    ("{% set s = namespace(t='xxxxxxxxxxxxxxxx') %}{% for i in range(40) %}"
     "{% set s.t = s.t ~ s.t %}{% endfor %}{{ s.t }}", "output"),
])
def test_render_errors_are_400s(trusted, template, words):
    for r in (chat(trusted, template), tokenize_chat(trusted, template)):
        msg = assert_error(r, 400, "messages")
        assert "request's chat_template" in msg and words in msg, msg
    assert trusted.healthy()
