"""Helpers of the API tests (imported by name: no other test module may be
called api_util): tests/server_util.py's servers with the API suites'
default flags, and the answer comparison of the parallelism suites
(test_tp.py, test_pp.py, test_multinode.py): the same PROMPTS scored,
greedily generated and sampled on every server configuration, the
answers collected per configuration and compared with a reference one
within TOL."""
import concurrent.futures as cf
import contextlib
import pathlib
import subprocess
import time

import pytest

import server_util
from server_util import LOGS as _SERVER_LOGS  # noqa: F401 (the conftest shows them)
from server_util import Server, free_port, stop_server  # noqa: F401

# Async scheduling on whatever the cores (auto would turn it off where the
# CPU backend's threads take every core): the suite checks the path GPUs take.
API_FLAGS = ("--max-model-len", "512", "--kv-cache-gb", "0.0625", "--threads", "2",
             "--async-scheduling", "on")


def start_server(build, model_dir, log_dir, name, *extra, api_key=None, wait=True, env=None):
    return server_util.start_server(build, model_dir, log_dir, name, *API_FLAGS, *extra,
                                    api_key=api_key, wait=wait, env=env)


# ---------------------------------------------------------------- servers

@contextlib.contextmanager
def running_servers(build, log_dir, specs):
    """Starts every `name: (model_dir, extra flags)` of specs, in order,
    and yields {name: server}; stops them all at the end, each one's exit
    status checked."""
    started = {}
    try:
        for name, (model, extra) in specs.items():
            started[name] = start_server(build, model, log_dir, name, *extra)
        yield started
    finally:
        for name, srv in started.items():
            rc = stop_server(srv)
            assert rc == 0, f"{name} exited with {rc}:\n{srv.log()[-4000:]}"


def wait_exit(srv, timeout=60):
    """The exit status of a server expected to stop on its own; fails the
    test (after killing it) when it is still up after `timeout` s."""
    deadline = time.time() + timeout
    while srv.proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    if srv.proc.poll() is None:
        srv.proc.kill()
        srv.proc.wait()
        pytest.fail(f"evalserver did not exit:\n{srv.log()}")
    return srv.proc.returncode


def make_qwen3_model(build, shared, out, layers):
    """mkmodel's small qwen3 at `out`: 4 heads, 4 KV heads, q/k norm,
    untied lm_head, MLP 130 and the odd qwen3 vocabulary 151669 (so a TP
    group's last rank gets the larger slices)."""
    mk = pathlib.Path(build) / "tools" / "mkmodel"
    if not mk.exists():
        pytest.skip(f"{mk} not built")
    subprocess.run([str(mk), "--shape", "custom", "--arch", "qwen3", "--hidden", "64",
                    "--layers", str(layers), "--heads", "4", "--kv-heads", "4", "--head-dim",
                    "16", "--intermediate", "130", "--tokenizer",
                    str(shared / "tokenizers" / "qwen3"), "--out", str(out)],
                   check=True, capture_output=True)
    return out


# --------------------------------------------------------------- answers

TOL = 1e-4

PROMPTS = [
    "The quick brown fox",
    "Once upon a time, in a land far away, there lived a",
    "1, 2, 3, 4, 5,",
    # Long enough for several KV blocks (16 tokens) and several lm_head
    # passes of 32 rows when every prompt token is scored.
    " ".join(["apple river stone cloud window garden violin copper meadow lantern"] * 8),
]


def completion(srv, body):
    r = srv.post("/v1/completions", {"model": "tiny", **body})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]


def prompt_scores(srv, prompt):
    """echo + logprobs, max_tokens 0: per prompt token its logprob and top 5."""
    lp = completion(srv, {"prompt": prompt, "max_tokens": 0, "echo": True, "logprobs": 5,
                          "return_tokens_as_token_ids": True})["logprobs"]
    return lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]


def greedy(srv, prompt):
    c = completion(srv, {"prompt": prompt, "max_tokens": 12, "temperature": 0, "logprobs": 2,
                         "ignore_eos": True, "return_tokens_as_token_ids": True})
    return c["logprobs"]["tokens"], c["logprobs"]["token_logprobs"], c["logprobs"]["top_logprobs"]


def sampled(srv, prompt, seed):
    return completion(srv, {"prompt": prompt, "max_tokens": 16, "temperature": 0.9,
                            "top_p": 0.95, "seed": seed, "ignore_eos": True})["text"]


def answers(srv, parallel=1):
    """Every check's answers for PROMPTS, sent `parallel` at a time:
    {(kind, prompt): answer}, kind "score", "greedy" or "sample"."""
    jobs = [(kind, p) for p in PROMPTS for kind in ("score", "greedy", "sample")]

    def one(job):
        kind, p = job
        if kind == "score":
            return prompt_scores(srv, p)
        if kind == "greedy":
            return greedy(srv, p)
        return sampled(srv, p, seed=1000 + PROMPTS.index(p))

    with cf.ThreadPoolExecutor(parallel) as ex:
        return dict(zip(jobs, ex.map(one, jobs)))


def assert_close(got, want, what):
    assert len(got) == len(want), what
    for i, (g, w) in enumerate(zip(got, want)):
        if w is None:
            assert g is None, f"{what}[{i}]"
        else:
            assert abs(g - w) <= TOL, f"{what}[{i}]: {g} vs {w}"


def assert_top_close(got, want, what):
    """Top-logprob dicts agree within TOL; an id may only be swapped for
    another at the cut-off when the two are tied within TOL."""
    assert len(got) == len(want), what
    for i, (g, w) in enumerate(zip(got, want)):
        if w is None:
            assert g is None, f"{what}[{i}]"
            continue
        assert len(g) == len(w), f"{what}[{i}]"
        assert_close(sorted(g.values()), sorted(w.values()), f"{what}[{i}] values")
        for tok in set(g) ^ set(w):
            side = g if tok in g else w
            assert side[tok] <= min(side.values()) + TOL, f"{what}[{i}]: {tok} not at the cut-off"
        for tok in set(g) & set(w):
            assert abs(g[tok] - w[tok]) <= TOL, f"{what}[{i}][{tok}]"


def compare(got, want, label):
    """answers() of one configuration against the reference's: the same
    tokens, logprobs within TOL, the same seeded samples."""
    for (kind, p), w in want.items():
        g = got[(kind, p)]
        what = f"{label} {kind} {p[:20]!r}"
        if kind == "score":
            assert g[0] == w[0], f"{what}: prompt tokens differ"
            assert_close(g[1], w[1], what + " token_logprobs")
            assert_top_close(g[2], w[2], what + " top_logprobs")
        elif kind == "greedy":
            assert g[0] == w[0], f"{what}: greedy tokens differ"
            assert_close(g[1], w[1], what + " token_logprobs")
            assert_top_close(g[2], w[2], what + " top_logprobs")
        else:
            assert g == w, f"{what}: seeded sample differs"
