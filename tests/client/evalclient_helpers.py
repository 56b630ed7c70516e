"""Helpers shared by evalclient's test files."""
import json
import os
import pathlib
import subprocess

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
EXAMPLES = ROOT / "data" / "examples"


def run_client(exe, *args, timeout=120, check=None, cwd=None):
    p = subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                       env={**os.environ, "EVAL_LOG_LEVEL": "warn"})
    # a sanitizer build reports memory errors on stderr whatever the exit status
    assert "Sanitizer" not in p.stderr and "runtime error:" not in p.stderr, p.stderr
    if check is not None:
        assert p.returncode == check, (p.returncode, p.stdout, p.stderr)
    return p


def read_jsonl(path, bad=None):
    """Complete lines of a JSONL file; unparseable ones go to `bad` when given."""
    out = []
    with open(path) as f:
        for line in f:
            if not (line.endswith("\n") and line.strip()):
                continue
            try:
                out.append(json.loads(line))
            except ValueError:
                if bad is None:
                    raise
                bad.append(line)
    return out
