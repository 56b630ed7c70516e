#!/usr/bin/env python3
"""Loads mkmodel directories with Hugging Face transformers, unchanged, and
checks them. Run on a machine with torch + transformers (the GPU machine);
not part of CI.

    python tests/gpu/hf_load_check.py DIR [DIR ...] [--device cuda]

For each directory: AutoModelForCausalLM.from_pretrained must report no
missing, unexpected or mismatched keys and no error messages; a forward pass
over a tokenized sentence and random ids must give finite logits. Prints the
top-2 logit margin statistics (how often greedy decoding is robust to
numerical noise) and, for small models, the largest difference between the
transformers logits and the numpy reference in tests/model/llama_np.py.
Exits 1 on any failure.
"""
import argparse
import json
import pathlib
import sys

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "model"))
import llama_np  # noqa: E402

# transformers 5 renamed from_pretrained's torch_dtype to dtype.
DTYPE_KW = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"


def margin_stats(logits):
    top = torch.topk(logits.float(), 2, dim=-1).values
    margins = (top[:, 0] - top[:, 1]).cpu().numpy()
    p = torch.softmax(logits.float(), -1)
    ent = -(p * torch.log(p.clamp_min(1e-30))).sum(-1).cpu().numpy()
    return {
        "positions": int(margins.size),
        "margin_gt_0.05": float((margins > 0.05).mean()),
        "margin_gt_0.01": float((margins > 0.01).mean()),
        "margin_median": float(np.median(margins)),
        "margin_min": float(margins.min()),
        "top1_prob_median": float(p.max(-1).values.median()),
        "entropy_median": float(np.median(ent)),
    }


def check(d, device, ref_max_params):
    result = {"dir": str(d), "transformers": transformers.__version__}
    model, info = AutoModelForCausalLM.from_pretrained(d, output_loading_info=True,
                                                       **{DTYPE_KW: torch.bfloat16})
    bad = {k: v for k, v in info.items() if v}
    if bad:
        raise AssertionError(f"{d}: loading info not clean: {bad}")
    model.to(device).eval()
    tok = AutoTokenizer.from_pretrained(d)
    text = "The quick brown fox jumps over the lazy dog. Evaluation servers score prompts."
    ids = tok(text, return_tensors="pt").input_ids
    gen = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    rand = torch.randint(min(1000, vocab // 2), min(vocab, 120000), (1, 48), generator=gen)
    result["params"] = sum(p.numel() for p in model.parameters())
    stats = []
    for x in (ids, rand):
        x = x.clamp_max(vocab - 1)
        with torch.no_grad():
            logits = model(x.to(device)).logits[0]
        if not torch.isfinite(logits).all():
            raise AssertionError(f"{d}: non-finite logits")
        stats.append(margin_stats(logits))
    result["text"], result["random"] = stats

    if result["params"] <= ref_max_params:
        # transformers in float32 against the numpy reference: validates the
        # reference (and with it the CI test that uses it).
        m32 = AutoModelForCausalLM.from_pretrained(d, **{DTYPE_KW: torch.float32}).eval()
        cfg, w = llama_np.load_model_dir(d)
        seq = rand[0, :24].tolist()
        with torch.no_grad():
            hf = m32(torch.tensor([seq])).logits[0].double().numpy()
        ref = llama_np.forward(cfg, w, seq)
        result["max_abs_diff_vs_numpy_ref"] = float(np.abs(hf - ref).max())
        result["argmax_agree_vs_numpy_ref"] = float((hf.argmax(-1) == ref.argmax(-1)).mean())
        if result["max_abs_diff_vs_numpy_ref"] > 1e-2:
            raise AssertionError(f"{d}: transformers and llama_np disagree")
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--ref-max-params", type=int, default=50_000_000)
    args = ap.parse_args()
    failed = False
    for d in args.dirs:
        try:
            print(json.dumps(check(d, args.device, args.ref_max_params)), flush=True)
        except Exception as e:  # report every directory, then fail
            failed = True
            print(json.dumps({"dir": d, "error": f"{type(e).__name__}: {e}"}), flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
