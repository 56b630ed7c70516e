#!/usr/bin/env python3
"""Compares a running evalserver (CUDA backend) with Hugging Face transformers
on the same mkmodel directory, position by position. Device only, not in CI.

    python tests/gpu/hf_compare.py --model DIR --url http://127.0.0.1:8000 \
        [--prompts 64 --prompt-len 128 --gen-len 128]

Each of the prompts is a seeded sequence of token ids. The server scores it
(echo + logprobs) and continues it greedily; transformers, in bf16 on the
GPU (or float32 with --hf-dtype), then runs the whole sequence (prompt + the server's continuation) once
and gives the log-probability of every next token. Pass criteria (issue 5):
mean |difference| <= 0.02 nats and max <= 0.1 over all positions, and the
server's greedy token equals transformers' argmax wherever transformers'
top-2 log-probability margin exceeds 0.05. Prints one JSON line; exit 1 on
failure.
"""
import argparse
import json
import sys

import requests
import torch
import transformers
from transformers import AutoModelForCausalLM

DTYPE_KW = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"


def server_run(url, model_name, ids, gen_len):
    body = {"model": model_name, "prompt": ids, "max_tokens": gen_len, "temperature": 0,
            "logprobs": 1, "echo": True, "return_tokens_as_token_ids": True}
    r = requests.post(url + "/v1/completions", json=body, timeout=600)
    r.raise_for_status()
    lp = r.json()["choices"][0]["logprobs"]
    tokens = [int(t.split(":", 1)[1]) for t in lp["tokens"]]
    if tokens[:len(ids)] != ids:
        raise AssertionError("echoed prompt tokens differ from the prompt")
    return tokens, lp["token_logprobs"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--url", required=True)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen-len", type=int, default=128)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--hf-dtype", choices=["bfloat16", "float32"], default="bfloat16",
                    help="transformers' compute dtype (float32: the exact reference)")
    ap.add_argument("--hf-device", default="cuda",
                    help="where transformers runs (cpu: a check against the CUDA emulation)")
    ap.add_argument("--bf16-baseline", action="store_true",
                    help="with --hf-dtype float32: also score the same sequences with "
                         "transformers in bfloat16 and report its distance from float32, the "
                         "scale of bf16 rounding that any bf16 engine shows")
    args = ap.parse_args()

    # the float32 reference in full float32: no TF32 products (torch's
    # default, made certain here: TF32 rounds the inputs to 10 bits, near bf16)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    model_name = requests.get(args.url + "/v1/models", timeout=30).json()["data"][0]["id"]
    hf = AutoModelForCausalLM.from_pretrained(args.model, **{DTYPE_KW: getattr(torch, args.hf_dtype)})
    hf.to(args.hf_device).eval()
    base = None
    if args.bf16_baseline and args.hf_dtype == "float32":
        base = AutoModelForCausalLM.from_pretrained(args.model, **{DTYPE_KW: torch.bfloat16})
        base.to(args.hf_device).eval()
    base_diffs, base_flips = [], 0
    vocab = hf.config.vocab_size
    gen = torch.Generator().manual_seed(args.seed)
    lo, hi = min(1000, vocab // 2), min(vocab, 120000)

    diffs, flips, checked, n_pos, logit_std = [], 0, 0, 0, []
    for p in range(args.prompts):
        ids = torch.randint(lo, hi, (args.prompt_len,), generator=gen).tolist()
        tokens, server_lp = server_run(args.url, model_name, ids, args.gen_len)
        with torch.no_grad():
            logits = hf(torch.tensor([tokens], device=args.hf_device)).logits[0].float()
        logp = torch.log_softmax(logits, dim=-1)
        logit_std.append(float(logits.std(dim=-1).mean()))
        nxt = torch.tensor(tokens[1:], device=args.hf_device)
        ref = logp[:-1].gather(1, nxt[:, None])[:, 0].cpu()
        got = torch.tensor([float(x) for x in server_lp[1:]])
        diffs.append((ref - got).abs())
        if base is not None:
            with torch.no_grad():
                blogp = torch.log_softmax(base(torch.tensor([tokens], device=args.hf_device))
                                          .logits[0].float(), dim=-1)
            base_diffs.append((blogp[:-1].gather(1, nxt[:, None])[:, 0].cpu() - ref).abs())
            bargmax = blogp[:-1].argmax(dim=-1).cpu()
        n_pos += len(tokens) - 1
        # Greedy: each generated token against transformers' argmax where the
        # top-2 margin is clear.
        top2 = torch.topk(logp[:-1], 2, dim=-1)
        for i in range(len(ids) - 1, len(tokens) - 1):
            if float(top2.values[i, 0] - top2.values[i, 1]) > 0.05:
                checked += 1
                if int(top2.indices[i, 0]) != tokens[i + 1]:
                    flips += 1
                if base is not None and int(bargmax[i]) != int(top2.indices[i, 0]):
                    base_flips += 1
    d = torch.cat(diffs)
    per_pos = torch.stack(diffs)  # [prompts][positions]
    quarter = per_pos.shape[1] // 4
    res = {"model": args.model, "prompts": args.prompts, "positions": n_pos,
           "mean_abs_diff": float(d.mean()), "max_abs_diff": float(d.max()),
           "p99_abs_diff": float(torch.quantile(d, 0.99)),
           "mean_by_quarter": [round(float(per_pos[:, i * quarter:(i + 1) * quarter].mean()), 4)
                               for i in range(4)],
           "hf_logit_std": round(sum(logit_std) / len(logit_std), 3),
           "greedy_checked": checked, "greedy_mismatches": flips,
           "hf_dtype": args.hf_dtype, "transformers": transformers.__version__}
    if base is not None:
        bd = torch.cat(base_diffs)
        res["transformers_bf16_vs_fp32"] = {"mean_abs_diff": float(bd.mean()),
                                            "max_abs_diff": float(bd.max()),
                                            "p99_abs_diff": float(torch.quantile(bd, 0.99)),
                                            "greedy_mismatches": base_flips}
    res["pass"] = res["mean_abs_diff"] <= 0.02 and res["max_abs_diff"] <= 0.1 and flips == 0
    print(json.dumps(res), flush=True)
    sys.exit(0 if res["pass"] else 1)


if __name__ == "__main__":
    main()
