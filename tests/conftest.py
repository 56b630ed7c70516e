"""Shared pytest fixtures: where the build and the shared data live."""
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def shared_dir() -> pathlib.Path:
    """The read-only shared folder (tokenizers, MT-Bench data)."""
    candidates = [os.environ.get("EVAL_SHARED_DIR"), ROOT.parent / "shared", "/work/shared"]
    for c in candidates:
        if c and (pathlib.Path(c) / "tokenizers").is_dir():
            return pathlib.Path(c)
    raise RuntimeError("shared folder with tokenizers/ not found; set EVAL_SHARED_DIR")


def build_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("EVAL_BUILD_DIR", ROOT / "build"))


@pytest.fixture(scope="session")
def shared():
    return shared_dir()


@pytest.fixture(scope="session")
def build():
    return build_dir()
