"""A fake OpenAI-compatible server for evalclient's tests.

Deterministic and tiny: a "token" is one UTF-8 byte (id = byte + 3, BOS = 1),
the "model" gives each token a log-probability that depends only on it and
the token before it (fake_logprob), and generations are fixed strings.
Endpoints: POST /v1/completions, POST /v1/chat/completions, POST /tokenize,
GET /metrics (prefix-cache counters over 16-token blocks), GET /stats (what
was received). Failures are injected from the command line so tests can
check retries and error records.

Run: python fake_server.py [--fail-every N] [--drop-every N] [--429-every N]
     [--429-first N] [--retry-after S]
     [--fail-contains S] [--bad-contains S] [--ok-error-contains S] [--delay S] [--vary-delay S]
     [--cut-stream-every N] [--stream-error-every N]
(the last two act on streamed replies: the first piece of text, then the
connection closed without "data: [DONE]", or an error event with code 500
before the [DONE])
(--ok-error-contains answers HTTP 200 with an error object and no choices, as
some gateways do.) It prints "PORT <n>" on stdout once listening.
"""
import argparse
import hashlib
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BOS = 1
FINGERPRINT = "fp_fake_1"
BLOCK = 16


def tokenize(text, add_special=True):
    ids = [b + 3 for b in text.encode("utf-8")]
    return ([BOS] + ids) if add_special else ids


def detokenize(ids):
    return bytes(i - 3 for i in ids if 3 <= i < 259).decode("utf-8", "replace")


def fake_logprob(prev, tok):
    """Log-probability of tok after prev: deterministic, in [-5, -0.05]."""
    h = hashlib.sha256(f"{prev},{tok}".encode()).digest()
    return -0.05 - (h[0] * 256 + h[1]) / 65535.0 * 4.95


def judge_score(user_content):
    return 1 + len(user_content) % 10


def judge_text(score):
    """A judgment in one of the shapes FastChat's parser meets: [[x]], the [x]
    fallback (scores divisible by 3), or no rating at all (score 10)."""
    if score == 10:
        return "I cannot grade this answer. [[unsure]]"
    if score % 3 == 0:
        return f"Decent, with a [1] footnote-like aside.\nRating: [{score}.0]"
    return f"The answer is adequate. [5] Rating: [[{score}]] and not [[2]]"


def expected_rating(score):
    if score == 10:
        return -1
    return 1 if score % 3 == 0 else score  # "[1]" comes first when only [x] matches


def gen_ids(prompt_ids, n):
    """Generated token ids when ignoring EOS: exactly n, from the prompt."""
    seed = sum(prompt_ids[-4:]) if prompt_ids else 0
    return [1000 + (seed * 31 + i * 7919) % 119000 for i in range(n)]


class State:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.count = 0
        self.by_path = {}
        self.bodies = {}
        self.statuses = {}
        self.blocks = set()
        self.queries = 0
        self.hits = 0

    def prefix_cache(self, ids):
        with self.lock:
            self.queries += len(ids)
            hit = 0
            for end in range(BLOCK, len(ids) + 1, BLOCK):
                if tuple(ids[:end]) in self.blocks:
                    hit = end
                else:
                    break
            self.hits += hit

    def remember(self, ids):
        with self.lock:
            for end in range(BLOCK, len(ids) + 1, BLOCK):
                self.blocks.add(tuple(ids[:end]))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def send_json(self, code, obj, close=False, headers=None):
        data = json.dumps(obj).encode()
        self.send_response(code)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        st = self.server.state
        if self.path == "/metrics":
            text = (
                "# TYPE fake_prefix_cache_queries_total counter\n"
                f"fake_prefix_cache_queries_total {st.queries}\n"
                "# TYPE fake_prefix_cache_hits_total counter\n"
                f'fake_prefix_cache_hits_total{{replica="0"}} {st.hits}\n'
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)
        elif self.path == "/v1/models":
            self.send_json(200, {"object": "list", "data": [
                {"id": m, "object": "model"} for m in st.args.models.split(",") if m]})
        elif self.path == "/stats":
            with st.lock:
                self.send_json(200, {"count": st.count, "by_path": st.by_path,
                                     "bodies": st.bodies, "statuses": st.statuses})
        else:
            self.send_json(404, {"error": {"message": "not found"}})

    def do_POST(self):
        st = self.server.state
        a = st.args
        n = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(n).decode()
        with st.lock:
            st.count += 1
            k = st.count
            st.by_path[self.path] = st.by_path.get(self.path, 0) + 1
            st.bodies[raw] = st.bodies.get(raw, 0) + 1
        if a.api_key and self.headers.get("Authorization") != f"Bearer {a.api_key}":
            return self.reply(k, 401, {"error": {"message": "bad key"}})
        if a.delay:
            time.sleep(a.delay)
        if a.vary_delay:
            time.sleep(a.vary_delay * (hashlib.sha256(raw.encode()).digest()[0] % 4))
        if a.bad_contains and a.bad_contains in raw:
            return self.reply(k, 400, {"error": {"message": "bad request (injected)"}})
        if a.ok_error_contains and a.ok_error_contains in raw:
            return self.reply(k, 200, {"error": {"message": "upstream failed (injected)"}})
        if a.fail_contains and a.fail_contains in raw:
            return self.reply(k, 500, {"error": {"message": "server error (injected)"}})
        if a.drop_every and k % a.drop_every == 0:
            with st.lock:
                st.statuses["dropped"] = st.statuses.get("dropped", 0) + 1
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if a.fail_every and k % a.fail_every == 0:
            return self.reply(k, 500, {"error": {"message": "server error (injected)"}})
        if (a.r429_every and k % a.r429_every == 0) or k <= a.r429_first:
            return self.reply(k, 429, {"error": {"message": "slow down"}},
                              {"Retry-After": str(a.retry_after)} if a.retry_after else None)
        try:
            body = json.loads(raw)
        except ValueError:
            return self.reply(k, 400, {"error": {"message": "bad json"}})
        if self.path == "/tokenize":
            toks = tokenize(body["prompt"], body.get("add_special_tokens", True))
            return self.reply(k, 200, {"tokens": toks, "count": len(toks)})
        if self.path == "/v1/completions":
            return self.completions(k, body)
        if self.path == "/v1/chat/completions":
            return self.chat(k, body)
        return self.reply(k, 404, {"error": {"message": "no route"}})

    def reply(self, k, code, obj, headers=None):
        with self.server.state.lock:
            self.server.state.statuses[str(code)] = self.server.state.statuses.get(str(code), 0) + 1
        self.send_json(code, obj, headers=headers)

    def generate(self, prompt_ids, body, default_text):
        max_tokens = body.get("max_tokens", 16)
        if body.get("ignore_eos"):
            ids = gen_ids(prompt_ids, max_tokens)
            return ids, "".join(f"<{i}>" for i in ids), "length"
        text = default_text
        finish = "stop"
        for s in body.get("stop") or []:
            j = text.find(s)
            if j >= 0:
                text = text[:j]
        ids = tokenize(text, False)
        if len(ids) > max_tokens:
            ids = ids[:max_tokens]
            text = detokenize(ids)
            finish = "length"
        return ids, text, finish

    def completions(self, k, body):
        p = body.get("prompt")
        ids = list(p) if isinstance(p, list) else tokenize(p)
        self.server.state.prefix_cache(ids)
        gen, text, finish = self.generate(
            ids, body, self.server.state.args.completion_text.encode().decode("unicode_escape"))
        self.server.state.remember(ids + gen)
        if body.get("stream"):
            return self.stream(k, body, text, finish, len(ids), len(gen), chat=False)
        choice = {"index": 0, "text": text, "finish_reason": finish}
        if body.get("logprobs") is not None:
            as_ids = body.get("return_tokens_as_token_ids")
            lp_tokens, lp_vals = [], []
            seq = (ids if body.get("echo") else []) + gen
            start = 0 if body.get("echo") else len(ids)
            full = ids + gen
            for j, t in enumerate(seq):
                pos = start + j
                lp_tokens.append(f"token_id:{t}" if as_ids else detokenize([t]))
                lp_vals.append(None if pos == 0 else fake_logprob(full[pos - 1], t))
            choice["logprobs"] = {"tokens": lp_tokens, "token_logprobs": lp_vals,
                                  "top_logprobs": None, "text_offset": None}
            if body.get("echo"):
                choice["text"] = detokenize(ids) + text
        usage = {"prompt_tokens": len(ids), "completion_tokens": len(gen),
                 "total_tokens": len(ids) + len(gen)}
        self.reply(k, 200, {"id": f"cmpl-{k}", "object": "text_completion",
                            "model": body.get("model"), "choices": [choice],
                            "usage": usage, "system_fingerprint": FINGERPRINT})

    def chat(self, k, body):
        msgs = body["messages"]
        user = [m["content"] for m in msgs if m["role"] == "user"]
        system = [m["content"] for m in msgs if m["role"] == "system"]
        if system and body.get("model") == "judge":
            text = judge_text(judge_score(user[-1]))
        else:
            text = f"Reply to turn {len(user)}: {user[-1][:24]}"
        prompt_ids = tokenize("".join(m["content"] for m in msgs))
        gen, text, finish = self.generate(prompt_ids, body, text)
        if body.get("stream"):
            return self.stream(k, body, text, finish, len(prompt_ids), len(gen), chat=True)
        self.reply(k, 200, {
            "id": f"chatcmpl-{k}", "object": "chat.completion", "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish}],
            "usage": {"prompt_tokens": len(prompt_ids), "completion_tokens": len(gen),
                      "total_tokens": len(prompt_ids) + len(gen)},
            "system_fingerprint": FINGERPRINT})

    def stream(self, k, body, text, finish, n_prompt, n_gen, chat):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        pieces = [text[i:i + 4] for i in range(0, len(text), 4)] or [""]
        for j, piece in enumerate(pieces):
            fr = finish if j == len(pieces) - 1 else None
            if chat:
                ch = {"index": 0, "delta": {"content": piece}, "finish_reason": fr}
            else:
                ch = {"index": 0, "text": piece, "finish_reason": fr}
            ev = {"choices": [ch], "system_fingerprint": FINGERPRINT}
            self.wfile.write(f"data: {json.dumps(ev)}\n\n".encode())
            self.wfile.flush()
            if j == 0 and self.cut_stream(k):
                return
        if (body.get("stream_options") or {}).get("include_usage"):
            ev = {"choices": [], "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_gen,
                                           "total_tokens": n_prompt + n_gen}}
            self.wfile.write(f"data: {json.dumps(ev)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        with self.server.state.lock:
            self.server.state.statuses["200"] = self.server.state.statuses.get("200", 0) + 1

    def cut_stream(self, k):
        """Injected stream faults after the first piece; True when the reply ends here."""
        a, st = self.server.state.args, self.server.state
        if a.stream_error_every and k % a.stream_error_every == 0:
            err = {"error": {"message": "engine failed (injected)", "type": "server_error",
                             "param": None, "code": 500}}
            self.wfile.write(f"data: {json.dumps(err)}\n\ndata: [DONE]\n\n".encode())
            name = "stream_error"
        elif a.cut_stream_every and k % a.cut_stream_every == 0:
            name = "stream_cut"  # the body ends with the connection, as on a crash
        else:
            return False
        self.wfile.flush()
        with st.lock:
            st.statuses[name] = st.statuses.get(name, 0) + 1
        return True


class Server(ThreadingHTTPServer):
    request_queue_size = 1024  # listen() backlog: many clients connect at once
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # clients that hang up (killed, timed out) are part of the tests


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--fail-every", type=int, default=0)
    ap.add_argument("--drop-every", type=int, default=0)
    ap.add_argument("--429-every", dest="r429_every", type=int, default=0)
    ap.add_argument("--429-first", dest="r429_first", type=int, default=0)
    ap.add_argument("--retry-after", type=int, default=0)
    ap.add_argument("--fail-contains", default="")
    ap.add_argument("--bad-contains", default="")
    ap.add_argument("--ok-error-contains", default="")
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--vary-delay", type=float, default=0.0)
    ap.add_argument("--cut-stream-every", type=int, default=0)
    ap.add_argument("--stream-error-every", type=int, default=0)
    ap.add_argument("--api-key", default="")
    ap.add_argument("--models", default="fake", help="ids GET /v1/models lists, comma-separated")
    ap.add_argument("--completion-text", default=" 42\nand then some more text",
                    help="what /v1/completions generates (backslash escapes decoded)")
    args = ap.parse_args()
    srv = Server(("127.0.0.1", args.port), Handler)
    srv.state = State(args)
    print(f"PORT {srv.server_address[1]}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
