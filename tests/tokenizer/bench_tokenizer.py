"""Side-by-side encode throughput: the C tokenizer (evaltok --bench) against
the Python `tokenizers` library on one thread, on the same ~10 MB of
deterministic mixed text (corpus.bench_text), same documents, same order.
Used by scripts/bench_tokenizer.sh; not a test.
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["RAYON_NUM_THREADS"] = "1"
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import corpus  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--evaltok", required=True)
    ap.add_argument("--shared", required=True)
    ap.add_argument("--mb", type=float, default=10.0)
    ap.add_argument("--names", default="llama3_1,qwen3,llama2")
    args = ap.parse_args()
    docs = corpus.bench_text(int(args.mb * 1e6))
    nbytes = sum(len(d.encode()) for d in docs)
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
        path = f.name
    print(f"text: {len(docs)} documents, {nbytes / 1e6:.2f} MB (UTF-8)")
    print(f"{'tokenizer':10} {'tokens':>10} {'tokenizers MB/s':>16} {'C MB/s':>8} {'ratio':>6}")
    try:
        for name in args.names.split(","):
            tokdir = pathlib.Path(args.shared) / "tokenizers" / name
            tok = Tokenizer.from_file(str(tokdir / "tokenizer.json"))
            best, ntok = 1e30, 0
            for _ in range(2):
                t0 = time.perf_counter()
                ntok = sum(len(tok.encode(d).ids) for d in docs)
                best = min(best, time.perf_counter() - t0)
            ref_mbs = nbytes / best / 1e6
            out = subprocess.run([args.evaltok, "--tokenizer", str(tokdir), "--bench", path],
                                 check=True, stdout=subprocess.PIPE).stdout
            ours = json.loads(out)
            same = "" if ours["tokens"] == ntok else f"  (token counts differ: {ours['tokens']})"
            print(f"{name:10} {ntok:>10} {ref_mbs:>16.2f} {ours['mb_per_s']:>8.2f} "
                  f"{ours['mb_per_s'] / ref_mbs:>6.2f}{same}", flush=True)
    finally:
        os.unlink(path)


if __name__ == "__main__":
    main()
