"""--batch-invariant and the CPU backend, whose answers never depend on
the batch: one request X (a prompt scored with echo + logprobs, then
greedy tokens with theirs) gets bit-identical answers alone, chunked by a
13-token step budget, among three longer requests sent with it, from the
prefix cache, and with or without the flag. (The CUDA backend's mode is
checked on its emulation: tests/emu/cuda_invariance_emu.py.) The flag
shows in the server's fingerprint, so that clients see results of a
different configuration.
"""
import concurrent.futures as cf

import pytest

from api_util import running_servers


def scored(srv, prompt, n=8):
    r = srv.post("/v1/completions", {"model": "tiny", "prompt": prompt, "max_tokens": n,
                                     "temperature": 0, "echo": True, "logprobs": 3,
                                     "ignore_eos": True})
    assert r.status_code == 200, r.text
    body = r.json()
    lp = body["choices"][0]["logprobs"]
    return (lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]), body["system_fingerprint"]


X = "The committee met on Tuesday to discuss the budget for the new library, " * 3
OTHERS = ["A much longer request that shares the steps: " + "words and more words " * 40,
          "Another neighbour, with a different length: " + "tokens " * 90,
          "A third one to crowd the batch. " * 12]


@pytest.fixture(scope="module")
def servers(build, tiny_model, server_logs):  # noqa: F811
    specs = {"plain": ["--threads", "2"],
             "invariant": ["--threads", "2", "--batch-invariant"],
             "chunked": ["--threads", "2", "--batch-invariant", "--max-num-batched-tokens", "13"]}
    with running_servers(build, server_logs, {k: (tiny_model, v) for k, v in specs.items()}) as s:
        yield s


def test_one_request_answers_alike_however_it_is_batched(servers):
    want, plain_fp = scored(servers["plain"], X)
    alone, fp = scored(servers["invariant"], X)
    assert alone == want
    assert fp != plain_fp  # another configuration, another fingerprint
    assert scored(servers["chunked"], X)[0] == want
    with cf.ThreadPoolExecutor(4) as ex:
        busy = [ex.submit(scored, servers["invariant"], p, 24) for p in OTHERS]
        crowded = ex.submit(scored, servers["invariant"], X)
        for f in busy:
            f.result()
    assert crowded.result()[0] == want
    assert scored(servers["invariant"], X)[0] == want  # its prefix now from the cache
