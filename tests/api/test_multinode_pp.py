"""Pipeline parallelism over nodes end to end: evalserver --pp P --nnodes 2,
two processes on 127.0.0.1. Node 1 runs the first P/2 stages (each a
--tp group of its own), node 0 the last P/2, the HTTP API and the
sampling; node 0 sends each micro-batch with its residual stream to node 1
and gets node 1's stream back.

- The group answers exactly what one process with the same --tp and --pp
  answers (echo + logprobs, greedy and seeded sampling, one at a time);
  greedy requests sent together (micro-batches in flight on both nodes at
  once) agree within float rounding. tiny --pp 2 (one stage per node) and
  a 4-layer qwen3 --tp 2 --pp 4 (two stages of two ranks per node). n = 3
  choices forked off one prompt (a block copy on node 1's stages too)
  match as well.
- SIGTERM of node 0 (fixture teardown): node 1 gets STOP and exits 0.
- A node 1 whose stages fail to load is reported by node 0 with node 1's
  own reason, and both exit 1; a node 1 with another --pp is refused.
- kill -9 of node 1 mid-generation: the running request ends with an
  error naming node 1, /health turns 503, node 0 exits 1. kill -9 while
  idle is noticed by the heartbeats. SIGSTOP of node 1 mid-generation: the
  micro-batch's answer is overdue after --node-timeout, and the request
  ends with an error instead of hanging.
- A forward of node 1 that never returns: node 0 gives up after
  --node-timeout and exits 1, and node 1 notices node 0's connection close
  and exits 1 too, its step left behind.
- --pp not a multiple of --nnodes is refused at once (exit 2).
"""
import pathlib
import re
import shutil
import signal
import subprocess

import pytest
import requests

from api_util import greedy, make_qwen3_model, start_server
from multinode_util import (assert_hung_node1_left, assert_matches_one_process, clean,
                            health_until_not_200, kill_all, rest_of_stream, start_pair, stop_groups,
                            stream_first_event, wait_exit)


@pytest.fixture(scope="module")
def qwen4(build, shared, tmp_path_factory):
    return make_qwen3_model(build, shared, tmp_path_factory.mktemp("model") / "qwen3-pp", 4)


@pytest.fixture(scope="module")
def groups(build, tiny_model, qwen4, server_logs):  # noqa: F811
    """name -> (node 0, node 1 or None). At the end node 0 gets SIGTERM:
    both nodes exit 0, and node 0's pipeline cut steps into micro-batches."""
    started = {}
    try:
        started["tiny-pp2"] = (start_server(build, tiny_model, server_logs, "pp-tiny-pp2",
                                            "--pp", "2"), None)
        started["tiny-nn2"] = start_pair(build, tiny_model, server_logs, "pp-tiny-nn2", 1,
                                         extra=("--pp", "2", "--threads", "1"))
        started["qwen-tp2pp4"] = (start_server(build, qwen4, server_logs, "pp-qwen-tp2pp4",
                                               "--tp", "2", "--pp", "4"), None)
        started["qwen-nn2"] = start_pair(build, qwen4, server_logs, "pp-qwen-nn2", 2,
                                         extra=("--pp", "4", "--threads", "2"))
        yield started
    finally:
        stop_groups(started)
        for name, (node0, node1) in started.items():
            if node1 is not None:
                split = re.search(r"(\d+) split into micro-batches", node0.log())
                assert split and int(split.group(1)) > 0, node0.log()[-2000:]


def test_stages_are_split_over_the_nodes(groups):
    node0, node1 = groups["tiny-nn2"]
    assert "stages 0-0 on node 1: layers [0, 1)" in node0.log()
    assert "stage 1: layers [1, 2)" in node0.log()
    assert "worker for pipeline stages 0-0 of 2" in node1.log()
    assert "stage 0: layers [0, 1)" in node1.log()
    assert "stage 1:" not in node1.log()
    node0, node1 = groups["qwen-nn2"]
    assert "stages 0-1 on node 1: layers [0, 2)" in node0.log()
    assert "stage 2: layers [2, 3)" in node0.log() and "stage 3: layers [3, 4)" in node0.log()
    assert "worker for pipeline stages 0-1 of 4" in node1.log()
    assert "tensor-parallel group of 2 ranks" in node1.log()
    # Node 1 serves no HTTP.
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{node1.port}/health", timeout=2)


@pytest.mark.parametrize("name,single", [("tiny-nn2", "tiny-pp2"), ("qwen-nn2", "qwen-tp2pp4")])
def test_pipeline_over_nodes_matches_one_process(groups, name, single):
    assert_matches_one_process(groups[name][0], groups[single][0], name)


def several_choices(srv):
    """n = 3 seeded choices of a prompt that ends inside a KV block: the
    choices fork off the prompt's blocks, the partial last one copied
    (copy_blocks) on every stage before they write to it."""
    r = srv.post("/v1/completions", {"model": "tiny", "prompt": "one two three four five six",
                                     "n": 3, "max_tokens": 10, "temperature": 1.0, "seed": 7,
                                     "logprobs": 1, "ignore_eos": True})
    assert r.status_code == 200, r.text
    return [(c["text"], c["logprobs"]["token_logprobs"]) for c in r.json()["choices"]]


@pytest.mark.parametrize("name,single", [("tiny-nn2", "tiny-pp2"), ("qwen-nn2", "qwen-tp2pp4")])
def test_forked_choices_match_one_process(groups, name, single):
    want = several_choices(groups[single][0])
    assert len({text for text, _ in want}) > 1  # the choices really differ
    assert several_choices(groups[name][0]) == want


def test_node_load_failure_is_reported(build, tiny_model, server_logs, tmp_path):
    """Node 1's copy of the model has the same files and sizes (so the
    handshake passes) but a corrupt safetensors header: its stage cannot
    load, and node 0 says so with node 1's reason."""
    broken = tmp_path / "tiny-broken"
    shutil.copytree(tiny_model, broken)
    weights = sorted(broken.glob("*.safetensors"))[0]
    with open(weights, "r+b") as f:
        f.write(b"\xff" * 8)
    node0, node1 = start_pair(build, tiny_model, server_logs, "pp-badload", 1, node1_model=broken,
                              wait=False, extra=("--pp", "2", "--threads", "1"))
    try:
        assert wait_exit(node1) == 1, node1.log()
        assert wait_exit(node0) == 1, node0.log()
        log = node0.log()
        assert "pp stages 0-0 of 2: node 1 (stages 0-0):" in log, log[-3000:]
        assert weights.name in log or "safetensors" in log, log[-3000:]
        assert clean(node0) and clean(node1)
    finally:
        kill_all(node0, node1)


def test_mismatched_pp_refused(build, tiny_model, server_logs):
    node0, node1 = start_pair(build, tiny_model, server_logs, "pp-bad-pp", 1, wait=False,
                              extra=("--threads", "1", "--pp", "2"), node1_extra=("--pp", "4"))
    try:
        assert wait_exit(node1) == 1, node1.log()
        assert wait_exit(node0) == 1, node0.log()
        message = "1 tensor-parallel ranks and 4 pipeline stages, node 0 has 2, 1 and 2"
        assert message in node0.log() and message in node1.log()
    finally:
        kill_all(node0, node1)


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_node_lost_mid_run(build, tiny_model, server_logs, how):
    """kill -9: node 1's connection ends under the call. SIGSTOP: node 1
    stays connected but never answers; the call gives up after
    --node-timeout (2 s) instead of hanging."""
    timeout = "2" if how == "stop" else "20"
    node0, node1 = start_pair(build, tiny_model, server_logs, f"pp-lost-{how}", 1,
                              extra=("--pp", "2", "--threads", "1", "--shutdown-timeout", "5",
                                     "--node-timeout", timeout))
    try:
        lines, events = stream_first_event(node0)
        node1.proc.send_signal(signal.SIGKILL if how == "kill" else signal.SIGSTOP)
        errors, reasons = rest_of_stream(lines, events)
        assert len(errors) == 1, events[-3:]
        assert errors[0]["code"] == 500 and "node 1" in errors[0]["message"], errors
        if how == "stop":
            assert "did not answer in time" in errors[0]["message"], errors
        assert reasons == ["error"], events[-3:]
        assert health_until_not_200(node0) in (503, None)
        assert wait_exit(node0, 30) == 1
        assert "exiting with status 1" in node0.log()
        assert clean(node0)
    finally:
        kill_all(node0, node1)


def test_hung_node_exits_after_node0(build, tiny_model, server_logs):
    """Node 1's forward hangs (EVALSERVER_TEST_HANG_STEP, as a hung GPU or
    a lost NCCL peer would leave it): node 0's call gives up after
    --node-timeout and node 0 exits 1; node 1, still inside the forward,
    sees node 0's connection close and exits 1 too, instead of holding its
    devices until someone kills it."""
    node0, node1 = start_pair(build, tiny_model, server_logs, "pp-hung", 1,
                              extra=("--pp", "2", "--threads", "1", "--shutdown-timeout", "5",
                                     "--node-timeout", "2"),
                              node1_env={"EVALSERVER_TEST_HANG_STEP": "6"})
    assert_hung_node1_left(node0, node1, "node 1")


def test_node_killed_while_idle(build, tiny_model, server_logs):
    node0, node1 = start_pair(build, tiny_model, server_logs, "pp-idle-kill", 1,
                              extra=("--pp", "2", "--threads", "1"))
    try:
        assert greedy(node0, "before the failure")[0]
        node1.proc.send_signal(signal.SIGKILL)
        node1.proc.wait()
        assert health_until_not_200(node0) in (503, None)
        assert wait_exit(node0, 30) == 1
        log = node0.log()
        assert "replica 0 failed: node 1 closed its control connection" in log, log[-3000:]
        assert clean(node0)
    finally:
        kill_all(node0, node1)


@pytest.mark.parametrize("args,message", [
    (["--nnodes", "2", "--pp", "3"], "--pp 3 must be a multiple of --nnodes 2"),
    (["--nnodes", "2", "--pp", "2", "--dp", "2"], "--dp 2 with --nnodes 2 is not supported"),
])
def test_bad_pipeline_node_flags_rejected(build, tiny_model, args, message):
    exe = pathlib.Path(build) / "server" / "evalserver"
    out = subprocess.run([str(exe), "--model", str(tiny_model), *args], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
