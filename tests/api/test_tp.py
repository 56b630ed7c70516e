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
import pathlib
import subprocess

import pytest

# answers, compare and greedy are also imported from here by test_multinode.py.
from api_util import (PROMPTS, answers, assert_close, compare, greedy, make_qwen3_model,
                      prompt_scores, running_servers, start_server, wait_exit)


@pytest.fixture(scope="module")
def qwen_model(build, shared, tmp_path_factory):
    return make_qwen3_model(build, shared, tmp_path_factory.mktemp("model") / "qwen3-tp", 2)


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
    with running_servers(build, server_logs, specs) as started:
        yield started


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
