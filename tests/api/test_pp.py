"""Pipeline parallelism on the CPU backend end to end: evalserver --pp K.

A replica's layers split into K stages (threads of the process), each
holding only its layers and their KV cache; a step's batch streams through
them in micro-batches. PP does not change any token's arithmetic, so every
server must answer exactly as --pp 1 does: prompt logprobs (echo +
logprobs), greedy generation with logprobs, and seeded sampling with a
temperature. Models:

  tiny  (mkmodel's tiny llama, 2 layers) --pp 1, --pp 2, --pp 2 --dp 2;
  qwen3 (4 layers, q/k norm, untied lm_head) --pp 1, --pp 3 (layers split
        2, 1, 1), --pp 2 --tp 2 (two stages, each a TP group of 2 ranks).

Concurrent requests make multi-sequence steps, which the group cuts into
micro-batches (its shutdown summary counts them); they must answer as the
sequential ones. --pp above the layer count fails at startup with a clear
message, and so does a --pp out of range; --pp with --device cuda on a
machine without a GPU fails at load.
"""
import pathlib
import re
import subprocess

import pytest

from api_util import (answers, compare, make_qwen3_model, running_servers, start_server,
                      stop_server, wait_exit)


@pytest.fixture(scope="module")
def qwen_model(build, shared, tmp_path_factory):
    return make_qwen3_model(build, shared, tmp_path_factory.mktemp("model") / "qwen3-pp", 4)


SPECS = {
    "tiny-pp1": ("tiny", ["--pp", "1"]),
    "tiny-pp2": ("tiny", ["--pp", "2"]),
    "tiny-pp2-dp2": ("tiny", ["--pp", "2", "--dp", "2"]),
    "qwen-pp1": ("qwen", ["--pp", "1"]),
    "qwen-pp3": ("qwen", ["--pp", "3"]),
    "qwen-tp2-pp2": ("qwen", ["--tp", "2", "--pp", "2"]),
}


@pytest.fixture(scope="module")
def servers(build, tiny_model, qwen_model, server_logs):
    """name -> running server; stopped (exit status checked) at the end."""
    models = {"tiny": tiny_model, "qwen": qwen_model}
    specs = {name: (models[model], extra) for name, (model, extra) in SPECS.items()}
    with running_servers(build, server_logs, specs) as started:
        yield started


@pytest.fixture(scope="module")
def reference(servers):
    return {"tiny": answers(servers["tiny-pp1"]), "qwen": answers(servers["qwen-pp1"])}


def test_pp_groups_announced(servers):
    log = servers["qwen-pp3"].log()
    assert "pipeline-parallel group of 3 stages (cpu)" in log
    for stage, layers in enumerate(["[0, 2)", "[2, 3)", "[3, 4)"]):
        assert f"stage {stage}: layers {layers}" in log
    log = servers["qwen-tp2-pp2"].log()
    assert "pipeline-parallel group of 2 stages (tp)" in log
    assert log.count("tensor-parallel group of 2 ranks") == 2
    assert servers["tiny-pp2-dp2"].log().count("pipeline-parallel group of 2 stages") == 2
    assert "pipeline-parallel group" not in servers["tiny-pp1"].log()


@pytest.mark.parametrize("name", ["tiny-pp2", "qwen-pp3", "qwen-tp2-pp2"])
def test_pp_matches_one_stage(servers, reference, name):
    got = answers(servers[name])
    ref = reference[name.split("-")[0]]
    compare(got, ref, name)
    if "tp" not in name:
        # Same arithmetic, one request at a time: bit-identical.
        assert got == ref, f"{name}: not bit-identical to --pp 1"


def test_pp_with_dp(servers, reference):
    srv = servers["tiny-pp2-dp2"]
    assert srv.metrics()["evalserver_num_replicas"] == 2
    compare(answers(srv, parallel=6), reference["tiny"], "tiny-pp2-dp2")


def concurrent_pipeline(build, model, logs, name, reference, stages, *extra):
    """A --pp `stages` server answering concurrent requests (those of
    --pp 1 one at a time); after its clean stop, its log and the group's
    shutdown summary: steps, steps split into micro-batches, micro-batches."""
    srv = start_server(build, model, logs, name, "--pp", str(stages), *extra)
    try:
        compare(answers(srv, parallel=12), reference, name + " concurrent")
    finally:
        rc = stop_server(srv)
    log = srv.log()
    assert rc == 0, log[-4000:]
    m = re.search(rf"pipeline-parallel group of {stages} stages: (\d+) steps, (\d+) split "
                  r"into micro-batches, (\d+) micro-batches", log)
    assert m, log[-4000:]
    return log, tuple(map(int, m.groups()))


def test_pp_concurrent_requests_micro_batched(build, qwen_model, server_logs, reference):
    """Concurrent requests share steps, which three stages run as up to
    three micro-batches; the answers are those of --pp 1 one at a time,
    and the group's shutdown summary shows steps that were split."""
    log, (steps, split, micro) = concurrent_pipeline(build, qwen_model, server_logs,
                                                     "qwen-pp3-concurrent", reference["qwen"], 3)
    assert split > 0, log[-4000:]
    assert micro > steps  # some step ran as more than one micro-batch


def test_pp_above_layers_fails_at_startup(build, tiny_model, server_logs):
    srv = start_server(build, tiny_model, server_logs, "tiny-pp3", "--pp", "3", wait=False)
    rc = wait_exit(srv)
    assert rc > 0, srv.log()
    assert "--pp 3 exceeds the model's 2 layers" in srv.log()
    assert "AddressSanitizer" not in srv.log() and "runtime error:" not in srv.log()


def test_pp_bad_values_rejected(build, tiny_model):
    exe = pathlib.Path(build) / "server" / "evalserver"
    for args, message in [(["--pp", "0"], "--pp must be an integer"),
                          (["--pp", "2000"], "--pp must be an integer")]:
        out = subprocess.run([str(exe), "--model", str(tiny_model), *args], capture_output=True,
                             text=True, timeout=30)
        assert out.returncode == 2, out.stderr
        assert message in out.stderr


def test_pp_cuda_without_a_gpu_fails_cleanly(build, tiny_model):
    """--pp with --device cuda is accepted; on a machine without a GPU the
    first stage's load fails with a message naming the stage (a build
    without CUDA refuses the device instead)."""
    exe = pathlib.Path(build) / "server" / "evalserver"
    proc = subprocess.Popen([str(exe), "--model", str(tiny_model), "--device", "cuda", "--pp", "2",
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.skip("the server came up: this machine has a GPU (tests/gpu covers it)")
    if proc.returncode == 2:
        assert "this build has no CUDA backend" in out, out
    else:
        assert proc.returncode == 1, out
        assert "replica 0: pp stage 0 of 2: cuda load" in out, out
    assert "AddressSanitizer" not in out and "runtime error:" not in out


def test_pp_micro_batches_flag(build, qwen_model, server_logs, reference):
    """--pp-micro-batches 6 with two stages: concurrent steps are cut into
    more pieces than stages (some into more than two), with the same
    answers as --pp 1."""
    log, (steps, split, micro) = concurrent_pipeline(build, qwen_model, server_logs,
                                                     "qwen-pp2-m6", reference["qwen"], 2,
                                                     "--pp-micro-batches", "6")
    assert "up to 6 micro-batches" in log
    assert micro - (steps - split) > 2 * split, log[-4000:]  # a split step had 3 or more
