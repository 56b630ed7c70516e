#!/usr/bin/env python3
"""Tensor-parallel CUDA against one GPU, through the server's own API.
Device only, not in CI; tests/gpu/tp_check.sh drives it.

    python tests/gpu/tp_compare.py collect --url http://127.0.0.1:8000 --model DIR \
        --out tp1.json [--prompts 16 --prompt-len 128 --gen-len 64 --seed 1234]
    python tests/gpu/tp_compare.py compare tp1.json tp2.json

collect: each of the prompts is a seeded sequence of token ids; the server
scores it (echo + logprobs, top 2) and continues it greedily (ignore_eos,
so every continuation has gen-len tokens). Writes one JSON file.

compare: the first file is the reference (--tp 1). Position by position,
while the two token sequences agree, |difference| of the chosen token's
logprob (the prompt's positions and the common prefix of the
continuations: the same context on both sides). Where the continuations
part, the reference's top-2 margin there must be <= 0.05 nats (a near tie
that bf16 kernels with another reduction order may flip); a wider margin
is a greedy mismatch. Pass: mean |difference| <= 0.02, max <= 0.1, no
greedy mismatch (--mean-tol, --max-tol and --margin set other bounds, e.g.
for --precision high against the fp32 CPU backend). Prints one JSON line;
exit 1 on failure.
"""
import argparse
import json
import random
import sys

import requests

MEAN_TOL, MAX_TOL, MARGIN = 0.02, 0.1, 0.05


def token_id(s):
    return int(s.split(":", 1)[1])


def server_run(url, model_name, ids, gen_len):
    body = {"model": model_name, "prompt": ids, "max_tokens": gen_len, "temperature": 0,
            "logprobs": 2, "echo": True, "ignore_eos": True, "return_tokens_as_token_ids": True}
    r = requests.post(url + "/v1/completions", json=body, timeout=600)
    r.raise_for_status()
    lp = r.json()["choices"][0]["logprobs"]
    tokens = [token_id(t) for t in lp["tokens"]]
    if tokens[:len(ids)] != ids:
        raise AssertionError("echoed prompt tokens differ from the prompt")
    tops = [None if d is None else sorted(d.values(), reverse=True)[:2]
            for d in lp["top_logprobs"]]
    return {"tokens": tokens, "logprobs": lp["token_logprobs"], "top2": tops}


def collect(args):
    model = requests.get(args.url + "/v1/models", timeout=30).json()["data"][0]
    with open(args.model + "/config.json") as f:
        vocab = json.load(f)["vocab_size"]
    rng = random.Random(args.seed)
    lo, hi = min(1000, vocab // 2), min(vocab, 120000)
    runs = []
    for _ in range(args.prompts):
        ids = [rng.randrange(lo, hi) for _ in range(args.prompt_len)]
        run = server_run(args.url, model["id"], ids, args.gen_len)
        run["prompt_len"] = len(ids)
        runs.append(run)
    with open(args.out, "w") as f:
        json.dump({"url": args.url, "runs": runs}, f)


def compare(args):
    mean_tol = getattr(args, "mean_tol", None) or MEAN_TOL
    max_tol = getattr(args, "max_tol", None) or MAX_TOL
    margin_tol = getattr(args, "margin", None) or MARGIN
    with open(args.reference) as f:
        ref = json.load(f)["runs"]
    with open(args.other) as f:
        got = json.load(f)["runs"]
    if len(ref) != len(got):
        raise SystemExit(f"{len(ref)} reference runs, {len(got)} to compare")
    diffs, mismatches, near_ties, parted = [], 0, 0, 0
    for a, b in zip(ref, got):
        ta, tb = a["tokens"], b["tokens"]
        n = min(len(ta), len(tb))
        common = next((i for i in range(n) if ta[i] != tb[i]), n)
        if common < a["prompt_len"]:
            raise AssertionError("the runs were given different prompts")
        for i in range(1, common):
            diffs.append(abs(float(a["logprobs"][i]) - float(b["logprobs"][i])))
        if common < n or len(ta) != len(tb):
            parted += 1
            top2 = a["top2"][common] if common < len(a["top2"]) else None
            margin = top2[0] - top2[1] if top2 and len(top2) > 1 else float("inf")
            if margin > margin_tol:
                mismatches += 1
            else:
                near_ties += 1
    mean = sum(diffs) / len(diffs) if diffs else float("nan")
    res = {"prompts": len(ref), "positions": len(diffs), "mean_abs_diff": mean,
           "max_abs_diff": max(diffs) if diffs else float("nan"),
           "continuations_parted": parted, "near_tie_flips": near_ties,
           "greedy_mismatches": mismatches, "mean_tol": mean_tol, "max_tol": max_tol,
           "margin": margin_tol}
    res["pass"] = bool(diffs) and mean <= mean_tol and res["max_abs_diff"] <= max_tol and \
        mismatches == 0
    return res


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--url", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--model", required=True, help="the model directory (for its vocab_size)")
    c.add_argument("--prompts", type=int, default=16)
    c.add_argument("--prompt-len", type=int, default=128)
    c.add_argument("--gen-len", type=int, default=64)
    c.add_argument("--seed", type=int, default=1234)
    m = sub.add_parser("compare")
    m.add_argument("reference")
    m.add_argument("other")
    m.add_argument("--label", default="", help="added to the JSON line")
    m.add_argument("--mean-tol", type=float, help=f"default {MEAN_TOL}")
    m.add_argument("--max-tol", type=float, help=f"default {MAX_TOL}")
    m.add_argument("--margin", type=float, help=f"near-tie margin, default {MARGIN}")
    args = ap.parse_args()
    if args.cmd == "collect":
        collect(args)
        return
    res = compare(args)
    if args.label:
        res["label"] = args.label
    print(json.dumps(res), flush=True)
    sys.exit(0 if res["pass"] else 1)


if __name__ == "__main__":
    main()
