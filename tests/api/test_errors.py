"""Every error class: status code, the OpenAI error shape, and a server that
still serves the next request afterwards."""
import socket

import openai
import pytest
import requests


def assert_error(r, status, param=None):
    assert r.status_code == status, r.text
    body = r.json()
    err = body["error"]
    assert set(err) >= {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert err["code"] == status
    if param is not None:
        assert err["param"] == param, err
    return err


def still_healthy(server):
    assert server.healthy()
    r = server.post("/v1/completions", {"prompt": "ok", "max_tokens": 1})
    assert r.status_code == 200, r.text


BAD_COMPLETIONS = [
    ({"max_tokens": 4}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [1, "a"]}, "prompt"),
    ({"prompt": [[1, 2], [3, -1]]}, "prompt"),
    ({"prompt": [999999999]}, "prompt"),
    ({"prompt": [128256]}, "prompt"),
    ({"prompt": "x", "max_tokens": "ten"}, "max_tokens"),
    ({"prompt": "x", "max_tokens": -1}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 1.5}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 600}, "max_tokens"),
    ({"prompt": "x", "temperature": -0.5}, "temperature"),
    ({"prompt": "x", "temperature": "hot"}, "temperature"),
    ({"prompt": "x", "top_p": 0}, "top_p"),
    ({"prompt": "x", "top_p": 1.5}, "top_p"),
    ({"prompt": "x", "top_k": -2}, "top_k"),
    ({"prompt": "x", "min_p": 2}, "min_p"),
    ({"prompt": "x", "presence_penalty": 3}, "presence_penalty"),
    ({"prompt": "x", "frequency_penalty": -3}, "frequency_penalty"),
    ({"prompt": "x", "repetition_penalty": 0}, "repetition_penalty"),
    ({"prompt": "x", "n": 0}, "n"),
    ({"prompt": "x", "n": 100000}, "n"),
    ({"prompt": "x", "logprobs": 21}, "logprobs"),
    ({"prompt": ["x"] * 200, "n": 100}, "n"),
    ({"prompt": "x", "logprobs": -1}, "logprobs"),
    ({"prompt": "x", "echo": "yes"}, "echo"),
    ({"prompt": "x", "stream": 1}, "stream"),
    ({"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
    ({"prompt": "x", "stop": 5}, "stop"),
    ({"prompt": "x", "stop": [""]}, "stop"),
    ({"prompt": "x", "stop": ["s"] * 65}, "stop"),
    ({"prompt": "x", "stop": ["y" * 5000]}, "stop"),
    ({"prompt": "x", "stop_token_ids": [-1]}, "stop_token_ids"),
    ({"prompt": "x", "stop_token_ids": [10 ** 7]}, "stop_token_ids"),
    ({"prompt": "x", "logit_bias": {"abc": 1}}, "logit_bias"),
    ({"prompt": "x", "logit_bias": {"5": 1000}}, "logit_bias"),
    ({"prompt": "x", "logit_bias": {"99999999": 1}}, "logit_bias"),
    ({"prompt": "x", "logit_bias": [1]}, "logit_bias"),
    ({"prompt": "x", "seed": "s"}, "seed"),
    ({"prompt": "x", "min_tokens": 5, "max_tokens": 2}, "min_tokens"),
    ({"prompt": "x", "ignore_eos": "no"}, "ignore_eos"),
    ({"prompt": "x" * 1, "max_tokens": 512}, "max_tokens"),
    ({"prompt": "x", "n": 3, "best_of": 2}, "best_of"),
    ({"prompt": "x", "best_of": 0}, "best_of"),
    ({"prompt": "x", "best_of": 129}, "best_of"),
    ({"prompt": "x", "best_of": 1.5}, "best_of"),
    ({"prompt": "x", "best_of": "2"}, "best_of"),
    ({"prompt": "x", "best_of": 2, "stream": True}, "best_of"),
    ({"prompt": "x", "n": 2, "best_of": 3, "stream": True}, "best_of"),
    ({"prompt": ["x"] * 200, "best_of": 100}, "best_of"),
    ({"prompt": "x", "response_format": {"type": "json_object"}}, "response_format"),
]


@pytest.mark.parametrize("body,param", BAD_COMPLETIONS)
def test_completions_400(server, body, param):
    assert_error(server.post("/v1/completions", body), 400, param)
    assert server.healthy()


def test_prompt_over_context(server):
    r = server.post("/v1/completions", {"prompt": "word " * 600, "max_tokens": 1})
    err = assert_error(r, 400)
    assert "maximum context length" in err["message"]
    still_healthy(server)


BAD_CHAT = [
    ({}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages"),
    ({"messages": [{"role": "user"}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "messages"),
    ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 3}, "top_logprobs"),
    ({"messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 21},
     "top_logprobs"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": "a"},
     "max_completion_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "continue_final_message": True}, None),
    ({"messages": [{"role": "user", "content": "x"}], "chat_template_kwargs": 3},
     "chat_template_kwargs"),
    ({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}},
     "response_format"),
    ({"messages": [{"role": "user", "content": "x"}],
      "response_format": {"type": "json_schema",
                          "json_schema": {"name": "a", "schema": {"type": "object"}}}},
     "response_format"),
    ({"messages": [{"role": "user", "content": "x"}], "response_format": {}}, "response_format"),
    ({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": 1}},
     "response_format"),
    ({"messages": [{"role": "user", "content": "x"}], "response_format": "json"},
     "response_format"),
    ({"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"}, "tool_choice"),
    ({"messages": [{"role": "user", "content": "x"}],
      "tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
    ({"messages": [{"role": "user", "content": "x"}], "tool_choice": 1}, "tool_choice"),
    ({"messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]}, "messages"),
]


def test_response_format_refusal_says_why(server):
    r = server.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                             "response_format": {"type": "json_object"}})
    assert "structured output is not supported" in assert_error(r, 400, "response_format")["message"]


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}),
    ("/v1/completions", {"prompt": "x"}),
])
def test_response_format_text_accepted(server, path, body):
    for rf in ({"type": "text"}, None):
        r = server.post(path, {**body, "max_tokens": 2, "response_format": rf})
        assert r.status_code == 200, r.text


def test_chat_ignores_best_of(server):
    """Chat has no best_of: like any unknown field it is ignored."""
    r = server.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                             "max_tokens": 2, "best_of": 3, "n": 2})
    assert r.status_code == 200, r.text
    assert [c["index"] for c in r.json()["choices"]] == [0, 1]


@pytest.mark.parametrize("body,param", BAD_CHAT)
def test_chat_400(server, body, param):
    assert_error(server.post("/v1/chat/completions", body), 400, param)
    assert server.healthy()


def test_chat_refusals_say_why(server):
    """Parts other than text and tool_choice forcing a call are refused, never
    dropped or answered with free text, and the answer names what."""
    parts = [{"type": "text", "text": "What is this?"},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    r = server.post("/v1/chat/completions", {"messages": [{"role": "user", "content": parts}]})
    assert '"image_url" part' in assert_error(r, 400, "messages")["message"]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    body = {"messages": [{"role": "user", "content": "x"}], "tools": tools, "max_tokens": 2}
    r = server.post("/v1/chat/completions", {**body, "tool_choice": "required"})
    assert "constrained decoding" in assert_error(r, 400, "tool_choice")["message"]
    for tc in ("none", "auto", None):
        r = server.post("/v1/chat/completions", {**body, "tool_choice": tc})
        assert r.status_code == 200, r.text


def test_sdk_raises_bad_request(client, server):
    with pytest.raises(openai.BadRequestError) as ei:
        client.completions.create(model="tiny", prompt="x", logprobs=50)
    assert ei.value.status_code == 400
    assert ei.value.body["param"] == "logprobs"
    still_healthy(server)


def test_invalid_json_and_non_object(server):
    r = requests.post(server.base + "/v1/completions", data=b"{not json", timeout=10)
    assert_error(r, 400)
    r = requests.post(server.base + "/v1/completions", data=b"[1, 2]", timeout=10)
    assert_error(r, 400)
    r = requests.post(server.base + "/v1/completions", data=b'{"prompt": "\xff"}', timeout=10)
    assert_error(r, 400)
    r = requests.post(server.base + "/v1/completions", data=b"[" * 10000, timeout=10)
    assert_error(r, 400)
    still_healthy(server)


def test_unknown_model_404(server):
    assert_error(server.post("/v1/completions", {"model": "nope", "prompt": "x"}), 404, "model")


def test_unknown_fields_ignored(server):
    r = server.post("/v1/completions", {"prompt": "x", "max_tokens": 1, "frobnicate": [1, {}],
                                        "user": "me"})
    assert r.status_code == 200


def test_404_and_405(server):
    assert_error(requests.get(server.base + "/v2/nothing", timeout=10), 404)
    r = requests.get(server.base + "/v1/completions", timeout=10)
    assert_error(r, 405)
    assert r.headers["allow"] == "POST"
    assert_error(requests.post(server.base + "/v1/models", timeout=10), 405)
    assert_error(requests.delete(server.base + "/health", timeout=10), 405)
    still_healthy(server)


def test_413_body_too_large(spawn):
    srv = spawn("small-body", "--max-body-bytes", "4096")
    big = {"prompt": "x" * 10000, "max_tokens": 1}
    assert_error(srv.post("/v1/completions", big), 413)
    still_healthy(srv)


def test_header_too_large_is_rejected(server):
    r = requests.get(server.base + "/v1/models", headers={"X-Big": "a" * 200000}, timeout=10)
    assert r.status_code in (413, 431)
    still_healthy(server)


def test_401_api_key(spawn):
    srv = spawn("auth", api_key="sekret-key")
    ok = srv.post("/v1/completions", {"prompt": "x", "max_tokens": 1})
    assert ok.status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sekret-key"},
                    {"Authorization": "Bearer sekret-ke"}, {"Authorization": "Bearer sekret-keyy"}):
        r = requests.post(srv.url + "/completions", json={"prompt": "x"}, headers=headers, timeout=10)
        assert_error(r, 401)
        assert_error(requests.get(srv.url + "/models", headers=headers, timeout=10), 401)
        assert_error(requests.get(srv.base + "/metrics", headers=headers, timeout=10), 401)
    assert requests.get(srv.base + "/health", timeout=10).status_code == 200
    c = openai.OpenAI(base_url=srv.url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        c.models.list()
    c = openai.OpenAI(base_url=srv.url, api_key="sekret-key", max_retries=0)
    assert [m.id for m in c.models.list()] == ["tiny"]


def test_api_key_from_env(spawn):
    srv = spawn("auth-env", env={"EVALSERVER_API_KEY": "envkey"})
    assert requests.get(srv.url + "/models", timeout=10).status_code == 401
    assert requests.get(srv.url + "/models", headers={"Authorization": "Bearer envkey"},
                        timeout=10).status_code == 200


def test_queue_full_429(spawn):
    """With one running sequence and one waiting slot, a burst overflows."""
    srv = spawn("queue", "--max-num-seqs", "1", "--max-queue", "1")
    import concurrent.futures as cf
    body = {"prompt": "fill the queue", "max_tokens": 60, "ignore_eos": True}
    with cf.ThreadPoolExecutor(12) as ex:
        rs = list(ex.map(lambda _: srv.post("/v1/completions", body), range(12)))
    codes = sorted(r.status_code for r in rs)
    assert 200 in codes
    full = [r for r in rs if r.status_code != 200]
    assert full, codes
    for r in full:
        assert_error(r, 429)
    still_healthy(srv)


def test_client_garbage_connection(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        s.recv(4096)
    still_healthy(server)
