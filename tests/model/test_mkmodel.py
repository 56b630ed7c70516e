"""mkmodel from the outside: the directory it writes is a Hugging Face model
directory that the `safetensors` package reads, whose names, shapes and
dtypes agree with its config.json, that common/'s own loaders accept
(mkmodel --verify), that is deterministic in the seed, and whose random
weights give finite, non-degenerate next-token distributions (checked with a
numpy reference forward pass)."""
import hashlib
import json
import pathlib
import subprocess

import numpy as np
import pytest
from safetensors import safe_open

import llama_np

TOK = "llama3_1"


def mkmodel(build, *args, check=True):
    exe = build / "tools" / "mkmodel"
    if not exe.exists():
        pytest.skip(f"{exe} not built")
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True,
                          check=check, timeout=300)


def expected_tensors(cfg):
    """name -> shape, as transformers' Llama/Qwen modules name them."""
    h, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    nkv = cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or h // nh
    inter, v = cfg["intermediate_size"], cfg["vocab_size"]
    arch = cfg["architectures"][0]
    out = {"model.embed_tokens.weight": [v, h], "model.norm.weight": [h]}
    if not cfg["tie_word_embeddings"]:
        out["lm_head.weight"] = [v, h]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out.update({
            p + "input_layernorm.weight": [h],
            p + "post_attention_layernorm.weight": [h],
            p + "self_attn.q_proj.weight": [nh * hd, h],
            p + "self_attn.k_proj.weight": [nkv * hd, h],
            p + "self_attn.v_proj.weight": [nkv * hd, h],
            p + "self_attn.o_proj.weight": [h, nh * hd],
            p + "mlp.gate_proj.weight": [inter, h],
            p + "mlp.up_proj.weight": [inter, h],
            p + "mlp.down_proj.weight": [h, inter],
        })
        if arch == "Qwen2ForCausalLM":
            out.update({p + "self_attn.q_proj.bias": [nh * hd],
                        p + "self_attn.k_proj.bias": [nkv * hd],
                        p + "self_attn.v_proj.bias": [nkv * hd]})
        if arch == "Qwen3ForCausalLM":
            out.update({p + "self_attn.q_norm.weight": [hd], p + "self_attn.k_norm.weight": [hd]})
    return out


def check_layout(d, dtype="BF16"):
    cfg = json.loads((d / "config.json").read_text())
    want = expected_tensors(cfg)
    got = {}
    with safe_open(str(d / "model.safetensors"), framework="np") as f:
        assert f.metadata() == {"format": "pt"}
        for name in f.keys():
            sl = f.get_slice(name)
            got[name] = sl.get_shape()
            assert sl.get_dtype() == dtype, name
    assert sorted(got) == sorted(want)
    for name, shape in want.items():
        assert list(got[name]) == shape, name
    return cfg


@pytest.fixture(scope="module")
def tiny(build, shared, tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    mkmodel(build, "--shape", "tiny", "--tokenizer", shared / "tokenizers" / TOK, "--out", d)
    return d


def test_tiny_layout(tiny, shared):
    cfg = check_layout(tiny)
    tok_dir = shared / "tokenizers" / TOK
    tok = json.loads((tok_dir / "tokenizer.json").read_text())
    ids = list(tok["model"]["vocab"].values()) + [t["id"] for t in tok["added_tokens"]]
    assert cfg["vocab_size"] == max(ids) + 1 == 128256
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama"
    assert cfg["hidden_size"] == 64 and cfg["num_hidden_layers"] == 2
    assert cfg["tie_word_embeddings"] is True and cfg["torch_dtype"] == "bfloat16"
    assert cfg["rope_theta"] == 500000.0 and isinstance(cfg["rope_theta"], float)
    assert cfg["rope_scaling"]["rope_type"] == "llama3"
    assert cfg["max_position_embeddings"] == 131072
    assert cfg["bos_token_id"] == 128000 and cfg["eos_token_id"] == 128009
    gen = json.loads((tiny / "generation_config.json").read_text())
    assert 128009 in gen["eos_token_id"] and 128001 in gen["eos_token_id"]
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tiny / name).read_bytes() == (tok_dir / name).read_bytes()
    assert not (tiny / "model.safetensors.index.json").exists()


def test_verify_uses_common_loaders(build, tiny):
    out = mkmodel(build, "--verify", tiny).stdout
    info = json.loads(out)
    assert info["architecture"] == "LlamaForCausalLM"
    assert info["tensors"] == 20 and info["vocab_size"] == 128256 and info["head_dim"] == 16
    assert info["rope_scaling"] == "llama3" and info["tie_word_embeddings"] is True
    assert info["bos_token_id"] == 128000
    assert info["eos_token_ids"][0] == 128009 and 128001 in info["eos_token_ids"]
    # a corrupt copy is rejected by the same loaders, with a message
    bad = tiny.parent / "tiny_corrupt"
    bad.mkdir(exist_ok=True)
    for f in tiny.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    raw = bytearray((bad / "model.safetensors").read_bytes())
    (bad / "model.safetensors").write_bytes(raw[:-10])
    r = mkmodel(build, "--verify", bad, check=False)
    assert r.returncode == 1 and "model.safetensors" in r.stderr


def digest(d):
    return hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()


def test_deterministic_in_seed(build, shared, tiny, tmp_path):
    tok = shared / "tokenizers" / TOK
    mkmodel(build, "--shape", "tiny", "--tokenizer", tok, "--out", tmp_path / "a", "--threads", 1)
    mkmodel(build, "--shape", "tiny", "--tokenizer", tok, "--out", tmp_path / "b", "--seed", 7)
    assert digest(tmp_path / "a") == digest(tiny)  # thread count does not matter
    assert digest(tmp_path / "b") != digest(tiny)


def test_weight_statistics(tiny):
    cfg, w = llama_np.load_model_dir(tiny)
    h = cfg["hidden_size"]
    for name, arr in w.items():
        assert np.isfinite(arr).all(), name
        if "norm" in name:
            assert (arr == 1.0).all(), name
    q = w["model.layers.0.self_attn.q_proj.weight"]
    assert abs(q.std() - 1 / np.sqrt(h)) < 0.01 and abs(q.mean()) < 0.01
    down = w["model.layers.1.mlp.down_proj.weight"]
    assert abs(down.std() - 1 / np.sqrt(cfg["intermediate_size"])) < 0.01
    emb = w["model.embed_tokens.weight"]
    assert abs(emb.std() - 3 / np.sqrt(h)) < 0.01
    assert not np.array_equal(w["model.layers.0.mlp.up_proj.weight"],
                              w["model.layers.1.mlp.up_proj.weight"])


def test_tiny_logits_not_degenerate(tiny):
    """Distributions are neither one-hot nor uniform, and the top-2 margin
    is usually large enough for greedy decoding to be stable across
    implementations."""
    cfg, w = llama_np.load_model_dir(tiny)
    rng = np.random.default_rng(0)
    margins, top1, entropy = [], [], []
    for _ in range(4):
        ids = rng.integers(1000, 120000, size=24)
        logits = llama_np.forward(cfg, w, ids)
        assert np.isfinite(logits).all()
        top = np.sort(logits, axis=-1)
        margins += list(top[:, -1] - top[:, -2])
        p = np.exp(logits - top[:, -1:])
        p /= p.sum(-1, keepdims=True)
        top1 += list(p.max(-1))
        entropy += list(-(p * np.log(p + 1e-30)).sum(-1))
    margins = np.asarray(margins)
    assert (margins > 0.05).mean() >= 0.85
    assert 0.005 < np.median(top1) < 0.5
    assert 2.0 < np.median(entropy) < np.log(cfg["vocab_size"]) - 1.0


@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "mistral"])
def test_custom_arches(build, shared, tmp_path, arch):
    d = tmp_path / arch
    mkmodel(build, "--shape", "custom", "--arch", arch, "--hidden", 64, "--layers", 2,
            "--heads", 4, "--kv-heads", 2, "--intermediate", 96, "--vocab", 1000,
            "--tokenizer", shared / "tokenizers" / "qwen3", "--out", d)
    cfg = check_layout(d)
    assert cfg["vocab_size"] == 1000 and cfg["tie_word_embeddings"] is False
    assert "bos_token_id" not in cfg  # the tokenizer's ids do not fit a 1000 vocabulary
    info = json.loads(mkmodel(build, "--verify", d).stdout)
    assert info["tensors"] == len(expected_tensors(cfg))
    cfg_np, w = llama_np.load_model_dir(d)
    logits = llama_np.forward(cfg_np, w, [1, 5, 9, 200])
    assert np.isfinite(logits).all()


def test_custom_f32_and_head_dim(build, shared, tmp_path):
    d = tmp_path / "f32"
    mkmodel(build, "--shape", "custom", "--arch", "qwen3", "--hidden", 48, "--layers", 1,
            "--heads", 4, "--kv-heads", 1, "--head-dim", 32, "--intermediate", 64, "--tie",
            "--dtype", "f32", "--tokenizer", shared / "tokenizers" / "qwen3", "--out", d)
    cfg = check_layout(d, dtype="F32")
    assert cfg["head_dim"] == 32 and cfg["torch_dtype"] == "float32"
    assert cfg["eos_token_id"] == 151645 and cfg["vocab_size"] == 151669
    gen = json.loads((d / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [151645, 151643]  # special tokens only
    json.loads(mkmodel(build, "--verify", d).stdout)


@pytest.mark.parametrize("args,needle", [
    (["--shape", "llama-9000"], "unknown shape"),
    (["--shape", "custom", "--hidden", "64"], "needs"),
    (["--shape", "custom", "--hidden", "64", "--layers", "1", "--heads", "4", "--kv-heads", "3",
      "--intermediate", "8"], "divide"),
    (["--shape", "tiny", "--seed", "x"], "not an integer"),
    (["--shape", "tiny", "--bogus", "1"], "unknown option"),
])
def test_bad_arguments(build, shared, tmp_path, args, needle):
    r = mkmodel(build, *args, "--tokenizer", shared / "tokenizers" / TOK, "--out", tmp_path / "x",
                check=False)
    assert r.returncode == 1 and needle in r.stderr


def test_unwritable_and_missing(build, shared, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = mkmodel(build, "--shape", "tiny", "--tokenizer", shared / "tokenizers" / TOK,
                "--out", blocker / "sub", check=False)
    assert r.returncode == 1 and "cannot create" in r.stderr
    r = mkmodel(build, "--shape", "tiny", "--tokenizer", tmp_path / "none", "--out",
                tmp_path / "y", check=False)
    assert r.returncode == 1 and "tokenizer" in r.stderr
    r = mkmodel(build, "--verify", tmp_path / "none", check=False)
    assert r.returncode == 1 and "config.json" in r.stderr
