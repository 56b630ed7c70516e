"""Starting and watching the processes of a multi-node group on
127.0.0.1 (tests/api/test_multinode.py and test_multinode_pp.py): node 0
serves HTTP, the other node only computes."""
import concurrent.futures as cf
import json
import subprocess
import time

import pytest
import requests

from api_util import answers, compare, greedy, start_server, stop_server
from net_ports import port_pair


def master_port() -> int:
    """A free port P whose neighbour P + 1 (the ranks' comm) is free too."""
    return port_pair()


def start_pair(build, model, logs, name, tp, node1_model=None, node1_tp=None, wait=True,
               extra=(), node1_extra=(), node1_env=None):
    """Node 1 first (it retries until node 0 listens), then node 0; with
    wait, returns once node 0's /health is 200 (every node joined).
    node1_extra: arguments for node 1 alone, after the common ones;
    node1_env: environment variables for node 1 alone."""
    port = str(master_port())
    common = ["--nnodes", "2", "--master-addr", "127.0.0.1", "--master-port", port,
              "--node-timeout", "20", *extra]
    node1 = start_server(build, node1_model or model, logs, name + "-node1", "--tp",
                         str(node1_tp or tp), "--node-rank", "1", *common, *node1_extra,
                         wait=False, env=node1_env)
    try:
        node0 = start_server(build, model, logs, name + "-node0", "--tp", str(tp), *common,
                             wait=wait)
    except Exception:
        node1.proc.kill()
        node1.proc.wait()
        raise
    return node0, node1


def start_pair_node0_first(build, model, logs, name, node_timeout):
    """A tiny --tp 2 pair with a short --node-timeout (both the join and
    the heartbeats): node 0 first, so that node 1 joins at once rather
    than retrying against node 0's start-up; returns once /health is 200."""
    port = str(master_port())
    common = ["--tp", "2", "--threads", "1", "--nnodes", "2", "--master-addr", "127.0.0.1",
              "--master-port", port, "--node-timeout", str(node_timeout)]
    node0 = start_server(build, model, logs, name + "-node0", *common, wait=False)
    node1 = start_server(build, model, logs, name + "-node1", "--node-rank", "1", *common,
                         wait=False)
    deadline = time.time() + 60
    while not node0.healthy():
        if time.time() > deadline or node0.proc.poll() is not None:
            kill_all(node0, node1)
            pytest.fail(f"the pair did not come up:\n{node0.log()[-3000:]}\n{node1.log()[-3000:]}")
        time.sleep(0.05)
    return node0, node1


def kill_all(*servers):
    for srv in servers:
        if srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait()


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


def health_until_not_200(srv, timeout=10.0):
    """Polls /health until it is no longer 200: its status then, or None
    once the port is closed (the process ended). Fails after timeout."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            status = requests.get(srv.base + "/health", timeout=2).status_code
        except requests.ConnectionError:
            return None
        if status != 200:
            return status
        time.sleep(0.01)
    pytest.fail(f"/health still 200 after {timeout} s:\n{srv.log()[-3000:]}")


def stream_first_event(node0, max_tokens=480):
    """A long streamed request, read up to its first token; returns the
    line iterator and the events so far."""
    body = {"model": "tiny", "prompt": "a long story", "max_tokens": max_tokens,
            "ignore_eos": True, "stream": True}
    resp = requests.post(node0.base + "/v1/completions", json=body, stream=True, timeout=60)
    assert resp.status_code == 200
    lines = resp.iter_lines()
    for line in lines:
        if line.startswith(b"data: "):
            return lines, [json.loads(line[6:])]
    pytest.fail("the stream ended before its first token")


def rest_of_stream(lines, events):
    for line in lines:
        if line.startswith(b"data: ") and line[6:] != b"[DONE]":
            events.append(json.loads(line[6:]))
    errors = [ev["error"] for ev in events if "error" in ev]
    reasons = [ch["finish_reason"] for ev in events for ch in ev.get("choices") or []
               if ch.get("finish_reason")]
    return errors, reasons


def assert_matches_one_process(group_node0, single, name):
    """The group's answers (node 0's) against one process's: one request
    at a time, bit-identical; greedy requests all at once (several
    sequences per step), the same tokens and logprobs within rounding."""
    want = answers(single)
    got = answers(group_node0)
    for key, w in want.items():
        assert got[key] == w, f"{name} {key[0]} {key[1][:20]!r}: {got[key]} != {w}"
    prompts = [p for kind, p in want if kind == "greedy"]
    with cf.ThreadPoolExecutor(len(prompts)) as ex:
        together = dict(zip(prompts, ex.map(lambda p: greedy(group_node0, p), prompts)))
    compare({("greedy", p): g for p, g in together.items()},
            {("greedy", p): want[("greedy", p)] for p in prompts}, name + " concurrent")


def assert_hung_node1_left(node0, node1, error_part):
    """A pair whose node 1 hangs in a forward (EVALSERVER_TEST_HANG_STEP):
    a streamed request ends with one error that contains error_part, node 0
    exits 1, then node 1 exits 1 too, having seen node 0's connection close
    during its step; both logs clean. Kills both in any case."""
    try:
        lines, events = stream_first_event(node0)
        errors, reasons = rest_of_stream(lines, events)
        assert len(errors) == 1 and error_part in errors[0]["message"], events[-3:]
        assert reasons == ["error"], events[-3:]
        assert wait_exit(node0, 30) == 1
        assert wait_exit(node1, 10) == 1
        log = node1.log()
        assert "will never return" in log, log[-2000:]
        assert "node 0 closed the control connection while this node's step had run" in log, \
            log[-2000:]
        assert clean(node0) and clean(node1)
    finally:
        kill_all(node0, node1)


def stop_groups(started):
    """Stops the groups of a module's fixture, {name: (node 0, node 1 or
    None)}: node 0 by SIGTERM, which must drain and exit 0; node 1, sent
    STOP by node 0, must then exit 0 with a clean log that says so."""
    for name, (node0, node1) in started.items():
        rc = stop_server(node0)
        assert rc == 0, f"{name} node 0 exited with {rc}:\n{node0.log()[-4000:]}"
        if node1 is not None:
            rc = wait_exit(node1, 30)
            assert rc == 0 and clean(node1), f"{name} node 1: {rc}\n{node1.log()[-4000:]}"
            assert "node 0 said stop" in node1.log()
