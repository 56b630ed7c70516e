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
  within --node-timeout, naming node 1, and a SIGTERM while node 0 waits
  for it ends node 0 at once (exit 0), not after --node-timeout.
- kill -9 of node 1 mid-generation: node 0 answers the running requests
  with errors (no hang), /health turns 503, and node 0 exits 1. A forward
  of node 1 that never returns: node 0's --step-timeout fails the replica
  and node 0 exits 1; node 1 notices node 0's connection close during its
  step and exits 1.
- Heartbeats (node_worker.h): kill -9 of node 1 while node 0 is idle is
  noticed at once (its control connection ends), not at the next request:
  /health turns 503, new work gets 503, node 0 exits 1 naming node 1. kill
  -9 of node 0 ends node 1 (exit 1). A stopped (SIGSTOP) node is noticed
  within --node-timeout by the other side: node 0 misses its heartbeat
  answers, node 1 misses node 0's heartbeats. A group left idle for longer
  than --node-timeout stays up and answers as before.
- A second process with --node-rank 1 started once the group is complete
  is refused by node 0 within seconds (not after --node-timeout, as if
  node 0 were unreachable), saying the group is already complete and
  where node 1 joined from; a stranger on the control port gets nothing;
  the group answers as before and stops cleanly.
- Inconsistent multi-node flags are refused at once (exit 2).
"""
import pathlib
import signal
import socket
import subprocess
import time

import pytest
import requests

from api_util import greedy, make_qwen3_model, start_server, stop_server
from multinode_util import (assert_hung_node1_left, assert_matches_one_process, clean,
                            health_until_not_200, kill_all, master_port, rest_of_stream, start_pair,
                            start_pair_node0_first, stop_groups, stream_first_event, wait_exit)


@pytest.fixture(scope="module")
def qwen_model(build, shared, tmp_path_factory):
    return make_qwen3_model(build, shared, tmp_path_factory.mktemp("model") / "qwen3-mn", 2)


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
        stop_groups(started)


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
    assert_matches_one_process(groups[name][0], groups[single][0], name)


@pytest.mark.parametrize("what", ["tp", "model"])
def test_mismatched_node_refused(build, tiny_model, qwen_model, server_logs, what):  # noqa: F811
    if what == "tp":
        node0, node1 = start_pair(build, qwen_model, server_logs, "mn-bad-tp", 2, node1_tp=4,
                                  wait=False)
        message = ("has 2 nodes, 4 tensor-parallel ranks and 1 pipeline stages, "
                   "node 0 has 2, 2 and 1")
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


def test_sigterm_while_waiting_for_nodes(build, tiny_model, server_logs):
    """Node 0 takes signals while it waits for the other nodes (loading
    runs beside the main thread): SIGTERM ends it at once."""
    port = str(master_port())
    srv = start_server(build, tiny_model, server_logs, "mn-term-waiting", "--tp", "2",
                       "--nnodes", "2", "--master-port", port, "--node-timeout", "60",
                       wait=False)
    deadline = time.time() + 30
    while "waiting for 1 node(s)" not in srv.log() and time.time() < deadline:
        assert srv.proc.poll() is None, srv.log()[-2000:]
        time.sleep(0.05)
    srv.proc.send_signal(signal.SIGTERM)
    assert wait_exit(srv, 5) == 0
    assert "signal 15 while loading: exiting without serving" in srv.log()
    assert clean(srv)


def test_node_killed_mid_run(build, tiny_model, server_logs):
    node0, node1 = start_pair(build, tiny_model, server_logs, "mn-kill", 2,
                              extra=("--shutdown-timeout", "5"))
    try:
        lines, events = stream_first_event(node0)  # the request is running
        node1.proc.send_signal(signal.SIGKILL)
        node1.proc.wait()
        errors, reasons = rest_of_stream(lines, events)
        assert len(errors) == 1, events[-3:]
        assert errors[0]["code"] == 500, errors
        # The collective with rank 1 or the command sent to node 1 failed.
        assert "rank 1" in errors[0]["message"] or "node 1" in errors[0]["message"], errors
        assert reasons == ["error"], events[-3:]
        try:
            assert requests.get(node0.base + "/health", timeout=5).status_code == 503
        except requests.ConnectionError:
            pass  # already gone
        assert wait_exit(node0, 30) == 1
        assert "exiting with status 1" in node0.log()
        assert clean(node0)
    finally:
        kill_all(node0, node1)


def test_hung_worker_step(build, tiny_model, server_logs):
    """Node 1's forward hangs (EVALSERVER_TEST_HANG_STEP, as a hung GPU
    would): node 0's rank waits in the step's collective until node 0's
    --step-timeout (3 s here) fails the replica and node 0 exits 1; node 1,
    whose own step timeout is off, sees node 0's connection close while its
    step runs and exits 1 instead of holding its devices forever."""
    node0, node1 = start_pair(build, tiny_model, server_logs, "hung-step", 2,
                              extra=("--threads", "1", "--shutdown-timeout", "5",
                                     "--step-timeout", "3"),
                              node1_extra=("--step-timeout", "0"),
                              node1_env={"EVALSERVER_TEST_HANG_STEP": "6"})
    assert_hung_node1_left(node0, node1, "--step-timeout 3")


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


def test_node_killed_while_idle(build, tiny_model, server_logs):
    node0, node1 = start_pair(build, tiny_model, server_logs, "mn-idle-kill", 2,
                              extra=("--threads", "1"))
    try:
        assert greedy(node0, "before the failure")[0]
        node1.proc.send_signal(signal.SIGKILL)
        node1.proc.wait()
        # No request is running: only the watchdog can notice.
        status = health_until_not_200(node0)
        assert status in (503, None), status
        if status == 503:  # the process still drains: new work is refused
            try:
                r = requests.post(node0.base + "/v1/completions",
                                  json={"model": "tiny", "prompt": "after", "max_tokens": 2},
                                  timeout=10)
            except requests.ConnectionError:
                r = None  # exited meanwhile
            if r is not None:
                assert r.status_code == 503, r.text
                err = r.json()["error"]
                assert err["code"] == 503 and err["message"] and err["type"], err
        assert wait_exit(node0, 30) == 1
        log = node0.log()
        assert "node 1 closed its control connection" in log, log[-3000:]
        assert "replica 0 failed: node 1 closed its control connection" in log, log[-3000:]
        assert "exiting with status 1" in log
        assert clean(node0)
    finally:
        kill_all(node0, node1)


def test_node0_killed(build, tiny_model, server_logs):
    node0, node1 = start_pair(build, tiny_model, server_logs, "mn-kill0", 2,
                              extra=("--threads", "1"))
    try:
        node0.proc.send_signal(signal.SIGKILL)
        node0.proc.wait()
        assert wait_exit(node1, 10) == 1
        log = node1.log()
        assert "node 0 closed the connection" in log, log[-3000:]
        assert clean(node1)
    finally:
        kill_all(node0, node1)


@pytest.mark.parametrize("stopped", [0, 1])
def test_stopped_node_noticed_within_timeout(build, tiny_model, server_logs, stopped):
    """SIGSTOP: the process lives and its connections stay open, so only
    the heartbeats (every second, answered within --node-timeout 2) can
    tell. The other node gives up with status 1."""
    node0, node1 = start_pair_node0_first(build, tiny_model, server_logs,
                                          f"mn-stop{stopped}", node_timeout=2)
    frozen, other = (node0, node1) if stopped == 0 else (node1, node0)
    try:
        frozen.proc.send_signal(signal.SIGSTOP)
        assert wait_exit(other, 15) == 1
        log = other.log()
        if stopped == 1:
            assert "node 1 did not answer a heartbeat within 2.0 s" in log, log[-3000:]
            assert "exiting with status 1" in log
        else:
            assert "node 0 sent nothing for 3.0 s, not even a heartbeat" in log, log[-3000:]
        assert clean(other)
    finally:
        kill_all(node0, node1)  # SIGKILL ends a stopped process too


def test_idle_group_stays_up(build, tiny_model, server_logs):
    """Idle for longer than either side's silence limit (--node-timeout 2:
    node 0 wants each heartbeat answered within 2 s, node 1 gives up after
    3 s without a message): the heartbeats keep the group up, and it
    answers exactly as before."""
    node0, node1 = start_pair_node0_first(build, tiny_model, server_logs, "mn-quiet",
                                          node_timeout=2)
    try:
        before = greedy(node0, "the same answer")
        time.sleep(6)
        assert node0.proc.poll() is None and node1.proc.poll() is None
        assert node0.healthy()
        assert greedy(node0, "the same answer") == before
        assert stop_server(node0) == 0
        assert wait_exit(node1, 30) == 0 and clean(node1)
        assert "node 0 said stop" in node1.log()
        assert "failed" not in node0.log()
    finally:
        kill_all(node0, node1)


def test_late_node_turned_away(build, tiny_model, server_logs):
    """Node 0 keeps answering its control port once the group is complete:
    a twin of node 1 exits 1 at once with the reason, a stranger is
    dropped, and the group runs on undisturbed."""
    node_timeout = 30
    node0, node1 = start_pair_node0_first(build, tiny_model, server_logs, "mn-late",
                                          node_timeout=node_timeout)
    late = None
    try:
        before = greedy(node0, "the same answer")
        args = node0.proc.args
        port = args[args.index("--master-port") + 1]
        with socket.create_connection(("127.0.0.1", int(port)), timeout=10) as stranger:
            stranger.sendall(b"PING\r\n\r\n")  # 8 bytes, not a hello: dropped unanswered
            assert stranger.recv(256) == b""
        started = time.time()
        late = start_server(build, tiny_model, server_logs, "mn-late-twin", "--node-rank", "1",
                            "--tp", "2", "--threads", "1", "--nnodes", "2", "--master-addr",
                            "127.0.0.1", "--master-port", port, "--node-timeout",
                            str(node_timeout), wait=False)
        assert wait_exit(late, 15) == 1
        assert time.time() - started < node_timeout / 2
        log = late.log()
        assert ("node 0 refused the group: the group is already complete: node 1 joined from "
                "127.0.0.1:") in log, log[-2000:]
        assert "(is --node-rank unique per node?)" in log and "not reachable" not in log
        log0 = node0.log()
        assert "turning away a node from 127.0.0.1:" in log0, log0[-2000:]
        assert "not an evalserver node" in log0
        assert node1.proc.poll() is None and node0.healthy()
        assert greedy(node0, "the same answer") == before
        assert stop_server(node0) == 0
        assert wait_exit(node1, 30) == 0 and "node 0 said stop" in node1.log()
        assert "failed" not in node0.log()
        assert clean(node0) and clean(node1) and clean(late)
    finally:
        kill_all(node0, node1, *([late] if late else []))
