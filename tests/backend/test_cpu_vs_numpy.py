"""The CPU backend against an independent NumPy forward pass.

The reference below is written from the Hugging Face modeling code's math
(LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM
and transformers' rope initialisers), in float64, over whole sequences with
no cache. The C side (tests/backend/cpu_forward_main.c) runs the same
tokens through the paged KV cache: several prefill chunks per sequence,
random non-contiguous physical blocks, a second sequence sharing the first
one's prefix blocks (a partial block copied with copy_blocks), then decode
steps batching both sequences. Every position's logits must agree within
1e-4 relative (max|a - b| / max|b|).

Models are written here with numpy + safetensors (so the test does not
depend on tools/mkmodel), plus mkmodel's tiny model when it is built.
"""
import json
import pathlib
import subprocess

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy for safetensors)
import numpy as np
import pytest
import safetensors.numpy

REL_TOL = 1e-4

ARCH_CLASS = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}


# ---------------------------------------------------------------- model files

def write_model(d: pathlib.Path, arch, hidden, layers, heads, kv_heads, inter, vocab,
                head_dim=None, tie=False, dtype="bfloat16", rope_theta=10000.0,
                rope_scaling=None, sliding_window=None, seed=0):
    """A random-weight HF model directory (config.json + model.safetensors)."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    hd = head_dim or hidden // heads
    np_dtype = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16,
                "float32": np.float32}[dtype]

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np_dtype)

    def vec(n, center, spread):
        return (center + spread * rng.standard_normal(n)).astype(np_dtype)

    t = {"model.embed_tokens.weight": rng.standard_normal((vocab, hidden)).astype(np_dtype),
         "model.norm.weight": vec(hidden, 1.0, 0.2)}
    if not tie:
        t["lm_head.weight"] = mat(vocab, hidden)
    for i in range(layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = vec(hidden, 1.0, 0.2)
        t[p + "post_attention_layernorm.weight"] = vec(hidden, 1.0, 0.2)
        t[p + "self_attn.q_proj.weight"] = mat(heads * hd, hidden)
        t[p + "self_attn.k_proj.weight"] = mat(kv_heads * hd, hidden)
        t[p + "self_attn.v_proj.weight"] = mat(kv_heads * hd, hidden)
        t[p + "self_attn.o_proj.weight"] = mat(hidden, heads * hd)
        t[p + "mlp.gate_proj.weight"] = mat(inter, hidden)
        t[p + "mlp.up_proj.weight"] = mat(inter, hidden)
        t[p + "mlp.down_proj.weight"] = mat(hidden, inter)
        if arch == "qwen2":
            t[p + "self_attn.q_proj.bias"] = vec(heads * hd, 0.0, 0.3)
            t[p + "self_attn.k_proj.bias"] = vec(kv_heads * hd, 0.0, 0.3)
            t[p + "self_attn.v_proj.bias"] = vec(kv_heads * hd, 0.0, 0.3)
        if arch == "qwen3":
            t[p + "self_attn.q_norm.weight"] = vec(hd, 1.0, 0.2)
            t[p + "self_attn.k_norm.weight"] = vec(hd, 1.0, 0.2)
    safetensors.numpy.save_file(t, str(d / "model.safetensors"), metadata={"format": "pt"})

    cfg = {
        "architectures": [ARCH_CLASS[arch]],
        "model_type": arch,
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "vocab_size": vocab,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": rope_theta,
        "rope_scaling": rope_scaling,
        "tie_word_embeddings": tie,
        "torch_dtype": dtype,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    if head_dim and arch != "qwen2":
        cfg["head_dim"] = head_dim
    if arch == "mistral":
        cfg["sliding_window"] = sliding_window
    (d / "config.json").write_text(json.dumps(cfg, indent=1))
    return d


# ---------------------------------------------------------- NumPy reference

class Reference:
    """Whole-sequence float64 forward pass of the four architectures."""

    def __init__(self, d: pathlib.Path):
        self.cfg = json.loads((d / "config.json").read_text())
        self.w = {}
        for f in sorted(d.glob("*.safetensors")):
            for k, v in safetensors.numpy.load_file(str(f)).items():
                self.w[k] = v.astype(np.float64)
        c = self.cfg
        self.arch = {v: k for k, v in ARCH_CLASS.items()}[c["architectures"][0]]
        self.heads = c["num_attention_heads"]
        self.kv_heads = c.get("num_key_value_heads", self.heads)
        if self.arch == "qwen2":
            self.hd = c["hidden_size"] // self.heads
        else:
            self.hd = c.get("head_dim") or c["hidden_size"] // self.heads
        self.eps = c.get("rms_norm_eps", 1e-6)
        self.inv_freq = self._inv_freq()
        self.window = c.get("sliding_window") if self.arch == "mistral" else None
        lm = self.w.get("lm_head.weight")
        self.lm_head = self.w["model.embed_tokens.weight"] if c.get("tie_word_embeddings") else lm

    def _inv_freq(self):
        c, dim = self.cfg, self.hd
        base = c.get("rope_theta", 10000.0)
        inv = 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
        rs = c.get("rope_scaling")
        kind = (rs or {}).get("rope_type", (rs or {}).get("type", "default"))
        if kind == "linear":
            inv = inv / rs["factor"]
        elif kind == "llama3":
            factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
            old = rs["original_max_position_embeddings"]
            low_wavelen, high_wavelen = old / lo, old / hi
            wavelen = 2 * np.pi / inv
            scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
            smooth = (old / wavelen - lo) / (hi - lo)
            smoothed = (1 - smooth) * scaled / factor + smooth * scaled
            medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
            inv = np.where(medium, smoothed, scaled)
        return inv

    def _rms(self, x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w

    def _rope(self, x, cos, sin):  # x [n, heads, hd]
        half = self.hd // 2
        rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
        return x * cos[:, None, :] + rot * sin[:, None, :]

    def logits(self, tokens):
        w, n, hd = self.w, len(tokens), self.hd
        x = w["model.embed_tokens.weight"][np.asarray(tokens)]
        freqs = np.outer(np.arange(n, dtype=np.float64), self.inv_freq)
        emb = np.concatenate([freqs, freqs], axis=-1)
        cos, sin = np.cos(emb), np.sin(emb)
        qi, ki = np.arange(n)[:, None], np.arange(n)[None, :]
        allowed = ki <= qi
        if self.window:
            allowed &= ki > qi - self.window
        group = self.heads // self.kv_heads
        for i in range(self.cfg["num_hidden_layers"]):
            p = f"model.layers.{i}."

            def lin(name, h):
                y = h @ w[p + name + ".weight"].T
                b = w.get(p + name + ".bias")
                return y + b if b is not None else y

            h = self._rms(x, w[p + "input_layernorm.weight"])
            q = lin("self_attn.q_proj", h).reshape(n, self.heads, hd)
            k = lin("self_attn.k_proj", h).reshape(n, self.kv_heads, hd)
            v = lin("self_attn.v_proj", h).reshape(n, self.kv_heads, hd)
            if self.arch == "qwen3":
                q = self._rms(q, w[p + "self_attn.q_norm.weight"])
                k = self._rms(k, w[p + "self_attn.k_norm.weight"])
            q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
            k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
            s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd)
            s = np.where(allowed[None], s, -np.inf)
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            s /= s.sum(axis=-1, keepdims=True)
            o = np.einsum("hqk,khd->qhd", s, v).reshape(n, self.heads * hd)
            x = x + lin("self_attn.o_proj", o)
            h = self._rms(x, w[p + "post_attention_layernorm.weight"])
            g, u = lin("mlp.gate_proj", h), lin("mlp.up_proj", h)
            x = x + lin("mlp.down_proj", g / (1 + np.exp(-g)) * u)
        x = self._rms(x, w["model.norm.weight"])
        return x @ self.lm_head.T


# ------------------------------------------------------------------ driver

def run_driver(build, model, out, a, a_chunks, b=None, b_prefix=0, b_chunks=None,
               dec_a=(), dec_b=(), seed=1, threads=2):
    exe = pathlib.Path(build) / "tests" / "backend" / "cpu_forward_main"
    assert exe.exists(), f"{exe} not built"
    ids = lambda xs: ",".join(str(int(x)) for x in xs)  # noqa: E731
    cmd = [str(exe), str(model), str(out), "--a", ids(a), "--a-chunks", ids(a_chunks),
           "--seed", str(seed), "--threads", str(threads)]
    if b is not None:
        cmd += ["--b", ids(b), "--b-prefix", str(b_prefix), "--b-chunks", ids(b_chunks)]
    if len(dec_a):
        cmd += ["--decode-a", ids(dec_a)]
    if len(dec_b):
        cmd += ["--decode-b", ids(dec_b)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    return rows


def rel_err(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def log_softmax(x):
    m = x.max()
    return x - (m + np.log(np.sum(np.exp(x - m))))


def check_model(build, tmp_path, model_dir, vocab, seed=0, a_len=75, a_chunks=(20, 33, 22),
                b_prefix=37, b_len=30, b_chunks=(13, 17), n_decode=3):
    rng = np.random.default_rng(seed)
    ref = Reference(model_dir)
    a = rng.integers(3, vocab, a_len)
    b = rng.integers(3, vocab, b_len)
    dec_a, dec_b = rng.integers(3, vocab, n_decode), rng.integers(3, vocab, n_decode)
    out = tmp_path / "logits.f32"
    rows = run_driver(build, model_dir, out, a, a_chunks, b, b_prefix, b_chunks, dec_a, dec_b,
                      seed=seed + 1)
    got = np.fromfile(out, dtype=np.float32)
    seq_a = list(a) + list(dec_a)
    seq_b = list(a[:b_prefix]) + list(b) + list(dec_b)
    want_a = ref.logits(seq_a)
    want_b = ref.logits(seq_b)[b_prefix:]
    assert got.size == (len(want_a) + len(want_b)) * vocab
    got = got.reshape(-1, vocab)
    got_a, got_b = got[: len(want_a)], got[len(want_a):]
    # first chunk (no cache), later chunks (cached prefix), decode: all positions
    err_a, err_b = rel_err(got_a, want_a), rel_err(got_b, want_b)
    assert err_a <= REL_TOL, f"sequence A: relative error {err_a:.3g}"
    assert err_b <= REL_TOL, f"sequence B (shared prefix): relative error {err_b:.3g}"

    # the sampling path of the last (decode) step: greedy token, logprobs, top 5, target
    assert len(rows) == 2
    for r in rows:
        want = (want_a if r["seq"] == 0 else ref.logits(seq_b))[r["pos"]]
        lp = log_softmax(want)
        target = seq_a[0] if r["seq"] == 0 else seq_b[0]
        assert r["token"] == int(np.argmax(want))
        assert abs(r["logprob"] - lp[r["token"]]) < 1e-3
        assert r["target"] == target
        assert abs(r["target_logprob"] - lp[target]) < 1e-3
        assert r["target_rank"] == 1 + int(np.sum(want > want[target]))
        order = np.argsort(-want, kind="stable")[:5]
        np.testing.assert_allclose(r["top_logprobs"], lp[order], atol=1e-3)
        assert r["top_ids"][0] == int(order[0])
    return err_a, err_b


# ------------------------------------------------------------------- tests

SMALL = dict(hidden=64, layers=2, inter=128, vocab=384)

CASES = {
    # llama3 rope with a short original context, so all three frequency
    # bands (kept, smoothed, scaled) occur in head_dim 16
    "llama3_rope": dict(arch="llama", heads=4, kv_heads=2, head_dim=16, tie=True,
                        rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                      "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                      "original_max_position_embeddings": 256}),
    "llama_linear_f32": dict(arch="llama", heads=4, kv_heads=4, dtype="float32",
                             rope_scaling={"type": "linear", "factor": 2.0}),
    "qwen2": dict(arch="qwen2", heads=4, kv_heads=2, rope_theta=1e6),
    "qwen3": dict(arch="qwen3", heads=4, kv_heads=1, head_dim=32, tie=True, rope_theta=1e6),
    "mistral_window_f16": dict(arch="mistral", heads=4, kv_heads=2, dtype="float16",
                               sliding_window=24),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_architecture(build, tmp_path, name):
    kw = dict(SMALL)
    kw.update(CASES[name])
    model = write_model(tmp_path / name, seed=sum(name.encode()) % 1000, **kw)
    check_model(build, tmp_path, model, kw["vocab"], seed=len(name))


def test_single_chunk_and_block_aligned_prefix(build, tmp_path):
    """One-chunk prefill (no cached prefix at all) and a prefix of exactly
    three blocks (shared by reference, nothing copied)."""
    kw = dict(SMALL)
    kw.update(CASES["llama3_rope"])
    model = write_model(tmp_path / "m", seed=5, **kw)
    check_model(build, tmp_path, model, kw["vocab"], seed=3, a_len=70, a_chunks=(70,),
                b_prefix=48, b_len=21, b_chunks=(21,), n_decode=2)


def test_mkmodel_tiny(build, shared, tmp_path):
    """mkmodel's tiny Llama (llama3 rope, tied, real Llama 3 vocabulary)."""
    mkmodel = pathlib.Path(build) / "tools" / "mkmodel"
    if not mkmodel.exists():
        pytest.skip("mkmodel not built")
    out = tmp_path / "tiny"
    r = subprocess.run([str(mkmodel), "--shape", "tiny", "--tokenizer",
                        str(shared / "tokenizers" / "llama3_1"), "--out", str(out),
                        "--seed", "7"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    vocab = json.loads((out / "config.json").read_text())["vocab_size"]
    check_model(build, tmp_path, out, vocab, seed=11, a_len=68, a_chunks=(16, 31, 21),
                b_prefix=40, b_len=20, b_chunks=(9, 11), n_decode=2)


def test_logits_independent_of_chunking_and_batch(build, tmp_path):
    """Each token's logits are bit-for-bit the same whether its prefix came
    from the cache or the same step, whatever the physical blocks, thread
    count and other sequences in the batch: what makes seeded sampling and
    prompt scoring independent of batching and prefix caching."""
    kw = dict(SMALL)
    kw.update(CASES["qwen2"])
    model = write_model(tmp_path / "m", seed=9, **kw)
    rng = np.random.default_rng(4)
    a = rng.integers(3, kw["vocab"], 70)
    b = rng.integers(3, kw["vocab"], 25)
    runs = [
        dict(a_chunks=(70,), seed=1, threads=1),
        dict(a_chunks=(5, 16, 30, 19), seed=2, threads=2),
        dict(a_chunks=(33, 37), b=b, b_prefix=40, b_chunks=(25,), seed=3, threads=3),
    ]
    outs = []
    for i, r in enumerate(runs):
        out = tmp_path / f"l{i}.f32"
        run_driver(build, model, out, a, **r)
        outs.append(np.fromfile(out, dtype=np.float32)[: 70 * kw["vocab"]])
    for o in outs[1:]:
        assert np.array_equal(o, outs[0])
