"""Tensor parallelism on the CPU backend end to end: evalserver --tp N.

Each server answers the same requests through /v1/completions, and a TP
group must give what one rank gives: prompt logprobs (echo + logprobs,
what lm-evaluation-harness scores with) and the logprobs of greedy
generation within 1e-4, greedy tokens identical, and seeded sampling with
a temperature the same text. Models:

  tiny  (mkmodel's tiny llama: 4 heads, 2 KV heads, llama3 vocabulary)
        --tp 1, --tp 2, and --tp 2 --dp 2 (two TP groups behind one port);
  qwen3 (4 heads, 4 KV heads, q/k norm, untied lm_head, MLP 130 and the
        odd qwen3 vocabulary 151669, so the last rank's slices are larger)
        --tp 1, --tp 2, --tp 4.

Heads that --tp does not divide (--tp 3 on tiny: 4 heads; --tp 4 on tiny:
2 KV heads) fail at startup with a clear message and a non-zero exit.
"""
import concurrent.futures as cf
import pathlib
import subprocess
import time

import pytest

from api_util import start_server, stop_server

TOL = 1e-4

PROMPTS = [
    "The quick brown fox",
    "Once upon a time, in a land far away, there lived a",
    "1, 2, 3, 4, 5,",
    # Long enough for several KV blocks (16 tokens) and several lm_head
    # passes of 32 rows when every prompt token is scored.
    " ".join(["apple river stone cloud window garden violin copper meadow lantern"] * 8),
]


@pytest.fixture(scope="module")
def qwen_model(build, shared, tmp_path_factory):
    mk = pathlib.Path(build) / "tools" / "mkmodel"
    if not mk.exists():
        pytest.skip(f"{mk} not built")
    out = tmp_path_factory.mktemp("model") / "qwen3-tp"
    subprocess.run([str(mk), "--shape", "custom", "--arch", "qwen3", "--hidden", "64",
                    "--layers", "2", "--heads", "4", "--kv-heads", "4", "--head-dim", "16",
                    "--intermediate", "130", "--tokenizer", str(shared / "tokenizers" / "qwen3"),
                    "--out", str(out)], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def servers(build, tiny_model, qwen_model, server_logs):
    """name -> running server; stopped (exit status checked) at the end."""
    specs = {
        "tiny-tp1": (tiny_model, ["--tp", "1"]),
        "tiny-tp2": (tiny_model, ["--tp", "2"]),
        "tiny-tp2-dp2": (tiny_model, ["--tp", "2", "--dp", "2"]),
        "qwen-tp1": (qwen_model, ["--tp", "1"]),
        "qwen-tp2": (qwen_model, ["--tp", "2"]),
        "qwen-tp4": (qwen_model, ["--tp", "4"]),
    }
    started = {}
    try:
        for name, (model, extra) in specs.items():
            started[name] = start_server(build, model, server_logs, name, *extra)
        yield started
    finally:
        for name, srv in started.items():
            rc = stop_server(srv)
            assert rc == 0, f"{name} exited with {rc}:\n{srv.log()[-4000:]}"


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


def answers(srv, parallel=1):
    """Every check's answers for PROMPTS, sent `parallel` at a time."""
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


def compare(got, want, label):
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


@pytest.fixture(scope="module")
def reference(servers):
    return {"tiny": answers(servers["tiny-tp1"]), "qwen": answers(servers["qwen-tp1"])}


def test_tp_groups_announced(servers):
    for name, ranks in [("tiny-tp2", 2), ("qwen-tp4", 4)]:
        assert f"tensor-parallel group of {ranks} ranks" in servers[name].log()
    assert servers["tiny-tp2-dp2"].log().count("tensor-parallel group of 2 ranks") == 2
    assert "tensor-parallel group" not in servers["tiny-tp1"].log()


@pytest.mark.parametrize("name", ["tiny-tp2", "qwen-tp2", "qwen-tp4"])
def test_tp_matches_single_rank(servers, reference, name):
    compare(answers(servers[name]), reference[name.split("-")[0]], name)


def test_tp_with_dp(servers, reference):
    srv = servers["tiny-tp2-dp2"]
    assert srv.metrics()["evalserver_num_replicas"] == 2
    # Concurrent, so both replicas (two TP groups) take requests.
    compare(answers(srv, parallel=6), reference["tiny"], "tiny-tp2-dp2")


def test_tp_repeated_requests_stable(servers):
    """The same request twice on a TP group (the second finds its prompt
    in the prefix cache) answers the same."""
    srv = servers["qwen-tp2"]
    first = prompt_scores(srv, PROMPTS[3])
    again = prompt_scores(srv, PROMPTS[3])
    assert first[0] == again[0]
    assert_close(again[1], first[1], "repeat")
    assert greedy(srv, PROMPTS[1])[0] == greedy(srv, PROMPTS[1])[0]


def wait_exit(srv, timeout=60):
    deadline = time.time() + timeout
    while srv.proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    if srv.proc.poll() is None:
        srv.proc.kill()
        srv.proc.wait()
        pytest.fail(f"evalserver did not exit:\n{srv.log()}")
    return srv.proc.returncode


@pytest.mark.parametrize("tp,message", [
    ("3", "--tp 3 must divide the model's 4 attention heads and 2 KV heads"),
    ("4", "--tp 4 must divide the model's 4 attention heads and 2 KV heads"),
])
def test_tp_indivisible_heads_fail_at_startup(build, tiny_model, server_logs, tp, message):
    srv = start_server(build, tiny_model, server_logs, f"tiny-tp{tp}", "--tp", tp, wait=False)
    rc = wait_exit(srv)
    assert rc != 0 and rc > 0, srv.log()
    assert message in srv.log()
    assert "AddressSanitizer" not in srv.log() and "runtime error:" not in srv.log()


def built_with_nccl(build):
    """Whether the build compiled the CUDA backend with NCCL (--tp > 1 on cuda)."""
    commands = pathlib.Path(build) / "compile_commands.json"
    return commands.exists() and "-DHAVE_NCCL=1" in commands.read_text()


def test_tp_bad_values_rejected(build, tiny_model):
    exe = pathlib.Path(build) / "server" / "evalserver"
    cases = [(["--tp", "0"], "--tp must be an integer")]
    if not built_with_nccl(build):  # no CUDA, or CUDA without NCCL: refused at the command line
        cases.append((["--tp", "2", "--device", "cuda"], "--device cuda"))
    for args, message in cases:
        out = subprocess.run([str(exe), "--model", str(tiny_model), *args], capture_output=True,
                             text=True, timeout=30)
        assert out.returncode == 2, out.stderr
        assert message in out.stderr
