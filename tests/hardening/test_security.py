"""Security defaults: the listening address, the API key on every route but
/health (in the OpenAI error shape), and no way for a request to name a
file on the server."""
import pathlib
import socket

import requests

from hardening_util import assert_openai_error

ROUTES = [("POST", "/v1/completions"), ("POST", "/v1/chat/completions"), ("GET", "/v1/models"),
          ("GET", "/version"), ("GET", "/metrics"), ("POST", "/tokenize"),
          ("POST", "/detokenize"), ("GET", "/tokenizer_info"), ("GET", "/v1/models/tiny")]
KEY = "s3cret-key-0123456789"


def listening_addresses(pid: int, port: int):
    """Local addresses of the process's listening TCP sockets on port."""
    out = []
    for name in ("tcp", "tcp6"):
        path = pathlib.Path(f"/proc/{pid}/net/{name}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            f = line.split()
            addr, p = f[1].split(":")
            if int(p, 16) == port and f[3] == "0A":  # TCP_LISTEN
                out.append(addr)
    return out


def test_binds_loopback_by_default(spawn_server):
    srv = spawn_server("bind")
    addrs = listening_addresses(srv.pid, srv.port)
    assert addrs == ["0100007F"], addrs  # 127.0.0.1, nothing else
    # Not reachable on another local address of this host, if it has one.
    try:
        other = socket.gethostbyname(socket.gethostname())
    except OSError:
        other = None
    if other and not other.startswith("127."):
        try:
            socket.create_connection((other, srv.port), timeout=2).close()
            raise AssertionError(f"reachable on {other}")
        except OSError:
            pass


def test_api_key_on_every_route_but_health(spawn_server):
    srv = spawn_server("apikey", api_key=KEY)
    bad_headers = [{}, {"Authorization": "Bearer"}, {"Authorization": "Bearer "},
                   {"Authorization": f"Bearer {KEY[:-1]}"}, {"Authorization": f"Bearer {KEY}x"},
                   {"Authorization": f"Bearer {KEY.upper()}"}, {"Authorization": f"Basic {KEY}"},
                   {"Authorization": KEY}, {"X-Api-Key": KEY},
                   {"Authorization": "Bearer " + "A" * 60000}]
    for method, path in ROUTES:
        for h in bad_headers:
            body = b'{"prompt":"hi","max_tokens":1}'
            r = requests.request(method, srv.base + path, headers=h, timeout=10,
                                 data=body if method == "POST" else None)
            assert r.status_code in (401, 431), (path, h.keys(), r.status_code)
            if r.status_code == 401:
                assert_openai_error(r.status_code, r.content, 401, 401)
    # /health needs no key; the right key opens every route.
    assert requests.get(srv.base + "/health", timeout=5).status_code == 200
    good = {"Authorization": f"Bearer {KEY}"}
    r = requests.post(srv.base + "/v1/completions", headers=good, timeout=10,
                      json={"prompt": "hi", "max_tokens": 1})
    assert r.status_code == 200, r.text
    assert requests.get(srv.base + "/v1/models", headers=good, timeout=5).status_code == 200
    # Unknown routes do not reveal more without a key than with one.
    r = requests.get(srv.base + "/nope", timeout=5)
    assert r.status_code in (401, 404)


def test_no_file_access_from_requests(spawn_server, tmp_path):
    """Fields that look like paths are names, text or refused: nothing is
    read. A request's chat_template is refused without
    --trust-request-chat-template; with it, a path is only template text
    and include/import do not compile."""
    secret = tmp_path / "secret.jinja"
    secret.write_text("LEAKED-{{ messages }}")
    msgs = [{"role": "user", "content": "hi"}]
    srv = spawn_server("files")
    plain = requests.post(srv.base + "/tokenize", timeout=10,
                          json={"messages": msgs}).json()["tokens"]
    for template in [str(secret), "{% include '" + str(secret) + "' %}"]:
        for path, extra in [("/v1/chat/completions", {"max_tokens": 1}), ("/tokenize", {})]:
            r = requests.post(srv.base + path, timeout=10,
                              json={"messages": msgs, "chat_template": template, **extra})
            err = assert_openai_error(r.status_code, r.content, 400, 400)
            assert err["param"] == "chat_template", err
    r = requests.post(srv.base + "/tokenize", timeout=10,
                      json={"messages": msgs, "chat_template_kwargs": {"template": str(secret)}})
    assert r.status_code == 200, r.text
    assert r.json()["tokens"] == plain  # the template was not swapped
    r = requests.post(srv.base + "/v1/completions",
                      json={"model": str(secret), "prompt": "x", "max_tokens": 1}, timeout=10)
    assert_openai_error(r.status_code, r.content, 404, 404)

    trusted = spawn_server("files-trusted", "--trust-request-chat-template")
    r = requests.post(trusted.base + "/tokenize", timeout=10,
                      json={"messages": msgs, "chat_template": str(secret)})
    assert r.status_code == 200, r.text
    text = requests.post(trusted.base + "/detokenize", timeout=10,
                         json={"tokens": r.json()["tokens"]}).json()["prompt"]
    assert text == str(secret)  # the path as text, not the file
    for tag in ("include", "import", "extends"):
        r = requests.post(trusted.base + "/tokenize", timeout=10,
                          json={"messages": msgs,
                                "chat_template": "{% " + tag + " '" + str(secret) + "' %}"})
        err = assert_openai_error(r.status_code, r.content, 400, 400)
        assert err["param"] == "chat_template" and "LEAKED" not in err["message"], err
