#!/usr/bin/env python3
"""--batch-invariant on the CUDA backend, through the server's API on the
CPU emulation (tests/emu/cuda_invariance_emu.sh runs it in CI).

    python tests/emu/cuda_invariance_emu.py EVALSERVER_EMU WORK_DIR MODEL_DIR ...

One request X (a 150-token prompt scored with echo + top-2 logprobs, then
8 greedy tokens with theirs) must get bit-identical answers however the
server steps it:
  alone    on a server whose step budget takes the prompt whole;
  chunked  alone on a server with --max-num-batched-tokens 73: the prompt
           in chunks of 73, 73 and 4 tokens (the last few below the
           prefill kernel's minimum), other products' row counts;
  crowded  on the first server, sent among three longer requests, so its
           chunks and every step's batch depend on them;
  cached   twice on a server with prefix caching: the second time its
           first 144 tokens come from the cache.
With --batch-invariant all four must equal alone, field for field. Without
it, chunked must differ from alone: the check can see what the mode
removes (the emulated cuBLASLt's algorithms split k differently, and the
prefill kernel and flash-decoding round differently); --contrast report
(on a device, whose default may happen to agree) only prints that. Also
runs on a GPU with the real evalserver (scripts/device-bench.sh
invariance-1b). --extra adds server flags to both modes (--precision high:
the SIMT kernel for every token, GEMMs on both terms). Prints one line per
scenario; exit 1 on failure.
"""
import argparse
import concurrent.futures
import json
import pathlib
import random
import sys

import requests

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "gpu"))
import cuda_tp_emu  # noqa: E402
import tp_compare  # noqa: E402

PROMPT_LEN, GEN_LEN, SEED = 150, 8, 99
BASE = ["--device", "cuda", "--max-model-len", "512", "--max-num-seqs", "8",
        "--gpu-memory-utilization", "0.11", "--threads", "2", "--log-level", "info"]


def prompts(model, n, length, seed):
    with open(pathlib.Path(model) / "config.json") as f:
        vocab = json.load(f)["vocab_size"]
    rng = random.Random(seed)
    lo, hi = min(1000, vocab // 2), min(vocab, 120000)
    return [[rng.randrange(lo, hi) for _ in range(length)] for _ in range(n)]


def served(server, model, work, tag, flags, job):
    """Starts a server with BASE + flags, runs job(url, name), stops it."""
    log = work / f"{pathlib.Path(model).name}-{tag}.log"
    proc, url = cuda_tp_emu.start(server, model, log, flags, {}, True, base_flags=BASE)
    try:
        name = requests.get(url + "/v1/models", timeout=30).json()["data"][0]["id"]
        return job(url, name)
    finally:
        rc = cuda_tp_emu.stop(proc)
        if rc != 0:
            sys.stdout.write(log.read_text(errors="replace")[-3000:])
            raise SystemExit(f"{tag}: evalserver_emu exited with {rc}")


def scenarios(server, model, work, mode_flags, tag):
    x = prompts(model, 1, PROMPT_LEN, SEED)[0]
    others = prompts(model, 3, 3 * PROMPT_LEN, SEED + 1)

    def alone(url, name):
        return tp_compare.server_run(url, name, x, GEN_LEN)

    def crowded(url, name):
        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            busy = [ex.submit(tp_compare.server_run, url, name, o, GEN_LEN) for o in others]
            mine = ex.submit(tp_compare.server_run, url, name, x, GEN_LEN)
            for f in busy:
                f.result()
            return mine.result()

    def twice(url, name):
        first = alone(url, name)
        second = alone(url, name)
        return first, second

    whole = ["--max-num-batched-tokens", "256", "--no-prefix-caching"]
    out = {"alone": served(server, model, work, tag + "-alone", mode_flags + whole, alone)}
    out["chunked"] = served(server, model, work, tag + "-chunked",
                            mode_flags + ["--max-num-batched-tokens", "73", "--no-prefix-caching"],
                            alone)
    out["crowded"] = served(server, model, work, tag + "-crowded", mode_flags + whole, crowded)
    first, out["cached"] = served(server, model, work, tag + "-cached",
                                  mode_flags + ["--max-num-batched-tokens", "256"], twice)
    return out


def first_difference(a, b):
    for key in ("tokens", "logprobs", "top2"):
        for i, (u, v) in enumerate(zip(a[key], b[key])):
            if u != v:
                return f"{key}[{i}]: {u} != {v}"
    return None


def check(server, work, model, contrast, extra):
    ok = True
    inv = scenarios(server, model, work, ["--batch-invariant"] + extra, "invariant")
    for name in ("chunked", "crowded", "cached"):
        diff = first_difference(inv["alone"], inv[name])
        print(json.dumps({"model": pathlib.Path(model).name,
                          "mode": " ".join(["batch-invariant"] + extra),
                          "scenario": name, "identical": diff is None, "first_difference": diff}),
              flush=True)
        ok = ok and diff is None
    plain = scenarios(server, model, work, extra, "default")
    diff = first_difference(plain["alone"], plain["chunked"])
    print(json.dumps({"model": pathlib.Path(model).name, "mode": " ".join(["default"] + extra),
                      "scenario": "chunked",
                      "identical": diff is None, "first_difference": diff,
                      "want": "a difference"}), flush=True)
    return ok and (diff is not None or contrast == "report")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("server")
    ap.add_argument("work")
    ap.add_argument("models", nargs="+")
    ap.add_argument("--contrast", choices=["require", "report"], default="require",
                    help="whether the default mode must differ when chunked")
    ap.add_argument("--extra", default="",
                    help="more server flags for both modes, e.g. '--precision high'")
    args = ap.parse_args()
    extra = args.extra.split()
    ok = all([check(args.server, pathlib.Path(args.work), m, args.contrast, extra)
              for m in args.models])
    print(json.dumps({"cuda_invariance_emu": "pass" if ok else "FAIL"}), flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
