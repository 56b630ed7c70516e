#!/usr/bin/env python3
"""The CUDA backend's parallel layouts on the CPU emulation, through the
server's own API (tests/emu/cuda_tp_emu.sh runs it in CI).

    python tests/emu/cuda_tp_emu.py EVALSERVER_EMU WORK_DIR MODEL_DIR:LAYOUT,... ...

EVALSERVER_EMU is evalserver built on the emulated CUDA runtime, cuBLASLt
and NCCL (tests/emu/meson.build), started with four emulated devices
(CUDA_EMU_DEVICES=4) once per model and layout: cpu (the CPU backend) and
tp1 (--device cuda --tp 1) always, then those asked for of tp2 (--tp 2:
NCCL between two rank threads), pp2 (--pp 2: two stages, one device
each), dp2 (--dp 2: two replicas, one device each), tp2pp2 (two stages
of two ranks), tp2dp2 (two replicas of two ranks) and tp2graphs (--tp 2
with EVAL_CUDA_GRAPHS=1: decode steps replayed from CUDA graphs that hold
the all-reduces; every rank must log replays), pp2nccl and tp2pp2nccl
(EVAL_CUDA_PP_TRANSPORT=nccl: the stages pass the stream by NCCL send /
recv, device to device, instead of through host memory), pp2nodes (--pp 2
--nnodes 2: two processes, node 1 running stage 0 and node 0 stage 1,
the stream passing through their TCP channel), tp2nodes (--tp 2 --nnodes
2: one rank per process, NCCL between the processes through the emulated
NCCL's cross-process ids, CUDA_EMU_NCCL_PROCESSES=1; and, on the first
model, the same pair with node 1 linking another NCCL version must refuse
to start on both nodes, saying which versions), high and tp2high
(--precision high, alone and with --tp 2: near-fp32 activations and KV
cache). Each scores the
same seeded prompts (echo + logprobs, top 2) and continues them greedily,
all prompts at once so that steps carry several sequences (and --pp cuts
them into micro-batches), through tests/gpu/tp_compare.py's server_run.
Then tp_compare's comparison, with its tolerances (mean |logprob
difference| <= 0.02, max <= 0.1, greedy mismatches only at near ties):
every other layout against tp1, and every CUDA layout against the CPU
backend (--precision high's within 0.001 mean, 0.005 max, greedy agreeing
wherever the margin exceeds 0.002). Each server must also stop cleanly (exit 0) on SIGTERM, and the
logs of tp2 and pp2 must show the layout. tp1 and tp2 run with the default
graph setting, so tp1 must log graph replays and tp2 none (graphs under
--tp wait for EVAL_CUDA_GRAPHS=1); the other layouts run with
EVAL_CUDA_GRAPHS=0. Prints one JSON line per comparison and a summary;
exit 1 on failure.
"""
import argparse
import concurrent.futures
import json
import os
import pathlib
import random
import re
import signal
import socket
import subprocess
import sys
import time

import requests

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "gpu"))
import tp_compare  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
import net_ports  # noqa: E402

PROMPTS, PROMPT_LEN, GEN_LEN, SEED = 4, 32, 12, 1234
# small buffers: the emulated devices are host memory, touched at load
FLAGS = ["--max-model-len", "256", "--max-num-seqs", "4", "--max-num-batched-tokens", "256",
         "--gpu-memory-utilization", "0.11", "--kv-cache-gb", "0.0625",
         "--no-prefix-caching", "--threads", "2", "--log-level", "info"]
LAYOUTS = {
    "cpu": ["--device", "cpu"],
    "tp1": ["--device", "cuda", "--tp", "1"],
    "tp2": ["--device", "cuda", "--tp", "2"],
    "pp2": ["--device", "cuda", "--pp", "2"],
    "dp2": ["--device", "cuda", "--dp", "2"],
    "tp2pp2": ["--device", "cuda", "--tp", "2", "--pp", "2"],
    "tp2dp2": ["--device", "cuda", "--tp", "2", "--dp", "2"],
    "tp2graphs": ["--device", "cuda", "--tp", "2"],
    "pp2nccl": ["--device", "cuda", "--pp", "2"],
    "tp2pp2nccl": ["--device", "cuda", "--tp", "2", "--pp", "2"],
    "pp2nodes": ["--device", "cuda", "--pp", "2", "--nnodes", "2"],
    "tp2nodes": ["--device", "cuda", "--tp", "2", "--nnodes", "2"],
    "high": ["--device", "cuda", "--precision", "high"],
    "tp2high": ["--device", "cuda", "--tp", "2", "--precision", "high"],
}
# layouts held to tighter bounds against the CPU backend (fp32)
HIGH_PRECISION = {"high", "tp2high"}
HIGH_TOLERANCES = {"mean_tol": 0.001, "max_tol": 0.005, "margin": 0.002}
HIGH_MARK = "precision high: activations enter each matrix product as two bf16 terms"
# layouts of two processes ("nodes"): node 1 gets these flags more and
# starts first; each process has its own emulated devices
NODE1_FLAGS = {"pp2nodes": ["--node-rank", "1"], "tp2nodes": ["--node-rank", "1"]}
# environment a layout adds to the server's
NCCL_PP = {"EVAL_CUDA_PP_TRANSPORT": "nccl"}
# tp2nodes: the emulated NCCL's ids reach across processes (nccl.h)
LAYOUT_ENV = {"tp2graphs": {"EVAL_CUDA_GRAPHS": "1"}, "pp2nccl": NCCL_PP, "tp2pp2nccl": NCCL_PP,
              "tp2nodes": {"CUDA_EMU_NCCL_PROCESSES": "1"}}
# layouts run with the default graph setting (on with one GPU, off under
# --tp); the others with EVAL_CUDA_GRAPHS=0, to check the plain path
GRAPH_DEFAULT = {"tp1", "tp2"}
# what each layout's log must show: the layout really ran as asked
LOG_MARKS = {
    "tp2": ["rank 0 of 2 on device 0 joined NCCL", "rank 1 of 2 on device 1 joined NCCL",
            "tensor-parallel group of 2 ranks (cuda)"],
    "pp2": ["pipeline-parallel group of 2 stages (cuda)"],
    "pp2nodes": ["stages 0-0 on node 1: layers [0, 1)", "stage 1: layers [1, 2)"],
    "tp2nodes": ["rank 0 of 2 on device 0 joined NCCL", "node 0: all 2 nodes joined"],
    "tp2graphs": ["tensor-parallel group of 2 ranks (cuda)"],
    "pp2nccl": ["stage 0 of 2 (tp rank 0, device 0) passes its stream over NCCL",
                "stage 1 of 2 (tp rank 0, device 1) passes its stream over NCCL"],
    "tp2pp2nccl": ["stage 1 of 2 (tp rank 0, device 2) passes its stream over NCCL",
                   "stage 1 of 2 (tp rank 1, device 3) passes its stream over NCCL"],
    "high": [HIGH_MARK],
    "tp2high": [HIGH_MARK, "tensor-parallel group of 2 ranks (cuda)"],
}
# layouts whose decode steps must have replayed CUDA graphs (collectives
# inside) on every rank: the "CUDA graphs: N captured, M decode steps
# replayed" line each rank logs when it stops
GRAPH_RANKS = {"tp1": 1, "tp2graphs": 2}
# layouts that must not have captured any: --tp by default
NO_GRAPHS = {"tp2"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(graph_default):
    env = {k: v for k, v in os.environ.items() if k != "EVAL_CUDA_GRAPHS"}
    env["CUDA_EMU_DEVICES"] = "4"
    if not graph_default:
        env["EVAL_CUDA_GRAPHS"] = "0"
    return env


def start_node1(server, model, log_path, name, env, graph_default):
    """Node 1 of a two-process layout, or None; the layout's flags get the
    group's port (node 1 retries until node 0 listens)."""
    if name not in NODE1_FLAGS:
        return None, []
    group = ["--master-addr", "127.0.0.1", "--master-port", str(net_ports.port_pair()),
             "--node-timeout", "60"]
    args = [server, "--model", model, *FLAGS, *LAYOUTS[name], *group, *NODE1_FLAGS[name]]
    with open(log_path.with_suffix(".node1.log"), "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                env={**base_env(graph_default), **env})
    return proc, group


def start(server, model, log_path, flags, env, graph_default, base_flags=FLAGS):
    port = free_port()
    args = [server, "--model", model, "--port", str(port), *base_flags, *flags]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                env={**base_env(graph_default), **env})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"evalserver_emu {' '.join(flags)} exited with {proc.returncode}")
        try:
            if requests.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except requests.RequestException:
            pass
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"evalserver_emu {' '.join(flags)} did not become healthy")


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return -9


def prompts(model):
    with open(os.path.join(model, "config.json")) as f:
        vocab = json.load(f)["vocab_size"]
    rng = random.Random(SEED)
    lo, hi = min(1000, vocab // 2), min(vocab, 120000)
    return [[rng.randrange(lo, hi) for _ in range(PROMPT_LEN)] for _ in range(PROMPTS)]


def collect(url, ids_list):
    name = requests.get(url + "/v1/models", timeout=30).json()["data"][0]["id"]
    with concurrent.futures.ThreadPoolExecutor(len(ids_list)) as ex:
        runs = list(ex.map(lambda ids: tp_compare.server_run(url, name, ids, GEN_LEN), ids_list))
    for run, ids in zip(runs, ids_list):
        run["prompt_len"] = len(ids)
    return runs


def run_layout(server, model, work, tag, name, ids_list):
    """The layout's runs into WORK/TAG-NAME.json; its log checked."""
    log_path = work / f"{tag}-{name}.log"
    t0 = time.time()
    env, graphs = LAYOUT_ENV.get(name, {}), name in GRAPH_DEFAULT
    node1, group = start_node1(server, model, log_path, name, env, graphs)
    try:
        proc, url = start(server, model, log_path, LAYOUTS[name] + group, env, graphs)
        try:
            runs = collect(url, ids_list)
        finally:
            rc = stop(proc)
        if node1 is not None:  # node 0's STOP ends it
            rc = rc or node1.wait(timeout=60)
    except (RuntimeError, requests.RequestException, subprocess.TimeoutExpired) as e:
        if node1 is not None:
            node1.kill()
            node1.wait()
            sys.stdout.write("--- node 1:\n" + log_path.with_suffix(".node1.log")
                             .read_text(errors="replace")[-3000:])
        if log_path.exists():
            sys.stdout.write("--- node 0:\n" + log_path.read_text(errors="replace")[-4000:])
        raise SystemExit(f"{tag} {name}: {e}")
    log = log_path.read_text(errors="replace")
    missing = [m for m in LOG_MARKS.get(name, []) if m not in log]
    replayed = [int(m.group(1)) for m in
                re.finditer(r"CUDA graphs: \d+ captured, (\d+) decode steps replayed", log)]
    if name in GRAPH_RANKS and (len(replayed) != GRAPH_RANKS[name] or min(replayed) == 0):
        missing.append(f"graph replays on each of {GRAPH_RANKS[name]} ranks (got {replayed})")
    if name in NO_GRAPHS and replayed:
        missing.append(f"no CUDA graphs (got replays {replayed})")
    if rc != 0 or missing:
        sys.stdout.write(log[-4000:])
        raise SystemExit(f"{tag} {name}: exit status {rc}, log lacks {missing}")
    out = work / f"{tag}-{name}.json"
    out.write_text(json.dumps({"runs": runs}))
    print(f"{tag} {name}: {PROMPTS} prompts of {PROMPT_LEN} tokens + {GEN_LEN} generated in "
          f"{time.time() - t0:.1f} s", flush=True)
    return out


def check_model(server, work, model, layouts):
    """Runs the model's layouts and compares them; whether all passed."""
    tag = pathlib.Path(model).name
    names = ["cpu", "tp1"] + [n for n in layouts if n not in ("cpu", "tp1")]
    ids_list = prompts(model)
    files = {name: run_layout(server, model, work, tag, name, ids_list) for name in names}
    pairs = [("tp1", other) for other in names[2:]] + [("cpu", other) for other in names[1:]]
    ok = True
    for ref, other in pairs:
        tight = HIGH_TOLERANCES if ref == "cpu" and other in HIGH_PRECISION else {}
        res = tp_compare.compare(argparse.Namespace(reference=files[ref], other=files[other],
                                                    **tight))
        res["label"] = f"{tag}: {other} vs {ref}"
        ok = ok and res["pass"]
        print(json.dumps(res), flush=True)
    return ok


def check_nccl_versions_refused(server, work, model):
    """tp2nodes with node 1 linking another NCCL (the emulation's
    CUDA_EMU_NCCL_VERSION): both nodes must refuse to start, exit 1, and
    say which versions differ; whether they did."""
    log_path = work / "nccl-versions.log"
    env = {**LAYOUT_ENV["tp2nodes"]}
    node1, group = start_node1(server, model, log_path, "tp2nodes",
                               {**env, "CUDA_EMU_NCCL_VERSION": "22805"}, False)
    node0_exit = ""
    try:
        start(server, model, log_path, LAYOUTS["tp2nodes"] + group, env, False)
        raise SystemExit("nccl versions: node 0 started with a node 1 of another NCCL")
    except RuntimeError as e:
        node0_exit = str(e)
    finally:
        rc1 = node1.wait(timeout=60)
    want = "tensor-parallel ranks link different NCCL versions (rank 0 2.28.9, rank 1 2.28.5)"
    logs = [log_path.read_text(errors="replace"),
            log_path.with_suffix(".node1.log").read_text(errors="replace")]
    ok = rc1 == 1 and node0_exit.endswith("exited with 1") and all(want in log for log in logs)
    print(json.dumps({"check": "nccl versions differ", "node0": node0_exit, "node1_exit": rc1,
                      "both_logs_say_why": all(want in log for log in logs), "pass": ok}),
          flush=True)
    if not ok:
        sys.stdout.write(logs[0][-2000:] + logs[1][-2000:])
    return ok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("server")
    ap.add_argument("work")
    ap.add_argument("models", nargs="+", metavar="MODEL_DIR:LAYOUT,...")
    args = ap.parse_args()
    ok = True
    for spec in args.models:
        model, _, layouts = spec.rpartition(":")
        unknown = [n for n in layouts.split(",") if n not in LAYOUTS]
        if not model or unknown:
            raise SystemExit(f"{spec}: expected MODEL_DIR:LAYOUT,... of {', '.join(LAYOUTS)}")
        ok = check_model(args.server, pathlib.Path(args.work), model, layouts.split(",")) and ok
        if "tp2nodes" in layouts.split(",") and model == args.models[0].rpartition(":")[0]:
            ok = check_nccl_versions_refused(args.server, pathlib.Path(args.work), model) and ok
    print(json.dumps({"cuda_tp_emu": "pass" if ok else "FAIL"}), flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
