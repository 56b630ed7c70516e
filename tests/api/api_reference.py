"""The NumPy reference the API tests compare logprobs with: the
independent forward pass of tests/model/llama_np.py (float64, whole
sequence, no cache), turned into per-token prompt log-probabilities."""
import functools
import importlib.util
import pathlib

import numpy as np

_LLAMA_NP = pathlib.Path(__file__).resolve().parent.parent / "model" / "llama_np.py"


@functools.lru_cache(maxsize=None)
def _module():
    spec = importlib.util.spec_from_file_location("llama_np_ref", _LLAMA_NP)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@functools.lru_cache(maxsize=4)
def _model(model_dir: str):
    return _module().load_model_dir(model_dir)


def log_softmax(x):
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def prompt_logprobs_ref(model_dir, ids):
    """log p(ids[j] | ids[:j]) for j = 1..len(ids)-1."""
    cfg, w = _model(str(model_dir))
    logits = _module().forward(cfg, w, list(ids))
    lp = log_softmax(logits)
    return [float(lp[j - 1, ids[j]]) for j in range(1, len(ids))]
