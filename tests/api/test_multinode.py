"""Multi-node tensor parallelism end to end: evalserver --tp T --nnodes 2,
two processes on 127.0.0.1 (node 0 serves HTTP and schedules, node 1
only computes its ranks and replays node 0's steps).

- The group answers exactly what one process with the same --tp answers
  (echo + logprobs, greedy and seeded sampling): comm_tcp sums in rank
  order like comm_local, so the results are bit-identical (and, for greedy
  requests sent together, the same tokens and logprobs within 1e-4).
  tiny --tp 2
  (one rank per node) and qwen3 --tp 4 (two ranks per node; tiny's 2 KV
  heads do not allow 4).
- SIGTERM of node 0 (the groups fixture's teardown): it drains and exits
  0, node 1 gets STOP and exits 0.
- A node 1 with another --tp or another model is refused, on both nodes,
  with a message that says which; a node 1 that never starts fails node 0
  within --node-timeout, naming node 1.
- kill -9 of node 1 mid-generation: node 0 answers the running requests
  with errors (no hang), /health turns 503, and node 0 exits 1.
- Inconsistent multi-node flags are refused at once (exit 2).
"""
import concurrent.futures as cf
import json
import pathlib
import signal
import socket
import subprocess

import pytest
import requests

from api_util import start_server, stop_server
from test_tp import answers, compare, greedy, qwen_model  # noqa: F401  (qwen_model: a fixture)


def master_port() -> int:
    """A free port P whose neighbour P + 1 (the ranks' comm) is free too."""
    for _ in range(100):
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            if port >= 65535:
                continue
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no free pair of ports")


def start_pair(build, model, logs, name, tp, node1_model=None, node1_tp=None, wait=True,
               extra=()):
    """Node 1 first (it retries until node 0 listens), then node 0; with
    wait, returns once node 0's /health is 200 (every node joined)."""
    port = str(master_port())
    common = ["--nnodes", "2", "--master-addr", "127.0.0.1", "--master-port", port,
              "--node-timeout", "20", *extra]
    node1 = start_server(build, node1_model or model, logs, name + "-node1", "--tp",
                         str(node1_tp or tp), "--node-rank", "1", *common, wait=False)
    try:
        node0 = start_server(build, model, logs, name + "-node0", "--tp", str(tp), *common,
                             wait=wait)
    except Exception:
        node1.proc.kill()
        node1.proc.wait()
        raise
    return node0, node1


def wait_exit(srv, timeout=60):
    try:
        return srv.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        srv.proc.kill()
        srv.proc.wait()
        pytest.fail(f"evalserver did not exit:\n{srv.log()[-4000:]}")


def clean(srv):
    log = srv.log()
    return all(bad not in log for bad in ("AddressSanitizer", "LeakSanitizer", "runtime error:"))


@pytest.fixture(scope="module")
def groups(build, tiny_model, qwen_model, server_logs):  # noqa: F811
    """name -> (node 0, node 1 or None). At the end node 0 gets SIGTERM and
    both nodes must exit 0, node 1 after node 0's STOP."""
    started = {}
    try:
        # Threads per rank as in the single process (2 threads / 2 ranks).
        started["tiny-tp2"] = (start_server(build, tiny_model, server_logs, "mn-tiny-tp2",
                                            "--tp", "2"), None)
        started["tiny-nn2"] = start_pair(build, tiny_model, server_logs, "mn-tiny-nn2", 2,
                                         extra=("--threads", "1"))
        started["qwen-tp4"] = (start_server(build, qwen_model, server_logs, "mn-qwen-tp4",
                                            "--tp", "4"), None)
        started["qwen-nn2"] = start_pair(build, qwen_model, server_logs, "mn-qwen-nn2", 4)
        yield started
    finally:
        for name, (node0, node1) in started.items():
            rc = stop_server(node0)
            assert rc == 0, f"{name} node 0 exited with {rc}:\n{node0.log()[-4000:]}"
            if node1 is not None:
                rc = wait_exit(node1, 30)
                assert rc == 0 and clean(node1), f"{name} node 1: {rc}\n{node1.log()[-4000:]}"
                assert "node 0 said stop" in node1.log()


def test_groups_span_the_nodes(groups):
    for name, here0, here1 in [("tiny-nn2", "ranks 0..0", "ranks 1..1"),
                               ("qwen-nn2", "ranks 0..1", "ranks 2..3")]:
        node0, node1 = groups[name]
        assert f"{here0} here" in node0.log()
        assert f"{here1} here" in node1.log()
        assert "node 1 joined" in node0.log()
        # Node 1 serves no HTTP.
        assert "listening on" not in node1.log()
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{node1.port}/health", timeout=2)


@pytest.mark.parametrize("name,single", [("tiny-nn2", "tiny-tp2"), ("qwen-nn2", "qwen-tp4")])
def test_multinode_matches_one_process(groups, name, single):
    want = answers(groups[single][0])
    # One request at a time, as the reference: bit-identical.
    got = answers(groups[name][0])
    for key, w in want.items():
        assert got[key] == w, f"{name} {key[0]} {key[1][:20]!r}: {got[key]} != {w}"
    # Greedy requests all at once (several sequences per step): the same
    # tokens, logprobs within float rounding.
    prompts = [p for kind, p in want if kind == "greedy"]
    with cf.ThreadPoolExecutor(len(prompts)) as ex:
        together = dict(zip(prompts, ex.map(lambda p: greedy(groups[name][0], p), prompts)))
    compare({("greedy", p): g for p, g in together.items()},
            {("greedy", p): want[("greedy", p)] for p in prompts}, name + " concurrent")


@pytest.mark.parametrize("what", ["tp", "model"])
def test_mismatched_node_refused(build, tiny_model, qwen_model, server_logs, what):  # noqa: F811
    if what == "tp":
        node0, node1 = start_pair(build, qwen_model, server_logs, "mn-bad-tp", 2, node1_tp=4,
                                  wait=False)
        message = "has 2 nodes and 4 tensor-parallel ranks, node 0 has 2 and 2"
    else:
        node0, node1 = start_pair(build, tiny_model, server_logs, "mn-bad-model", 2,
                                  node1_model=qwen_model, wait=False)
        message = "runs a different configuration"
    assert wait_exit(node1) == 1, node1.log()
    assert wait_exit(node0) == 1, node0.log()
    assert "node 0 refused the group" in node1.log() and message in node1.log()
    assert message in node0.log()
    assert clean(node0) and clean(node1)


def test_missing_node_fails_within_timeout(build, tiny_model, server_logs):
    port = str(master_port())
    srv = start_server(build, tiny_model, server_logs, "mn-alone", "--tp", "2", "--nnodes", "2",
                       "--master-port", port, "--node-timeout", "2", wait=False)
    assert wait_exit(srv, 30) == 1
    log = srv.log()
    assert "timed out after 2 s waiting for node(s) 1 of 2" in log, log[-2000:]
    assert clean(srv)


def test_node_killed_mid_run(build, tiny_model, server_logs):
    node0, node1 = start_pair(build, tiny_model, server_logs, "mn-kill", 2,
                              extra=("--shutdown-timeout", "5"))
    try:
        body = {"model": "tiny", "prompt": "a long story", "max_tokens": 480, "ignore_eos": True,
                "stream": True}
        resp = requests.post(node0.base + "/v1/completions", json=body, stream=True, timeout=60)
        assert resp.status_code == 200
        lines = resp.iter_lines()
        events = []
        for line in lines:  # up to the first token: the request is running
            if line.startswith(b"data: "):
                events.append(json.loads(line[6:]))
                break
        node1.proc.send_signal(signal.SIGKILL)
        node1.proc.wait()
        for line in lines:
            if line.startswith(b"data: ") and line[6:] != b"[DONE]":
                events.append(json.loads(line[6:]))
        errors = [ev["error"] for ev in events if "error" in ev]
        assert len(errors) == 1, events[-3:]
        assert errors[0]["code"] == 500, errors
        # The collective with rank 1 or the command sent to node 1 failed.
        assert "rank 1" in errors[0]["message"] or "node 1" in errors[0]["message"], errors
        reasons = [ch["finish_reason"] for ev in events for ch in ev.get("choices") or []
                   if ch.get("finish_reason")]
        assert reasons == ["error"], events[-3:]
        try:
            assert requests.get(node0.base + "/health", timeout=5).status_code == 503
        except requests.ConnectionError:
            pass  # already gone
        assert wait_exit(node0, 30) == 1
        assert "exiting with status 1" in node0.log()
        assert clean(node0)
    finally:
        for srv in (node0, node1):
            if srv.proc.poll() is None:
                srv.proc.kill()
                srv.proc.wait()


@pytest.mark.parametrize("args,message", [
    (["--nnodes", "2", "--node-rank", "2", "--tp", "2"], "--node-rank 2 must be below --nnodes 2"),
    (["--nnodes", "2", "--tp", "3"], "--tp 3 must be a multiple of --nnodes 2"),
    (["--nnodes", "2", "--tp", "2", "--dp", "2"], "--dp 2 with --nnodes 2 is not supported"),
    (["--nnodes", "2", "--tp", "2", "--master-port", "65535"], "--master-port must be"),
    (["--nnodes", "0"], "--nnodes must be"),
])
def test_bad_node_flags_rejected(build, tiny_model, args, message):
    exe = pathlib.Path(build) / "server" / "evalserver"
    out = subprocess.run([str(exe), "--model", str(tiny_model), *args], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
