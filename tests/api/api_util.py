"""Helpers of the API tests (imported by name: no other test module may be
called api_util): tests/server_util.py's servers with the API suites'
default flags."""
import server_util
from server_util import LOGS as _SERVER_LOGS  # noqa: F401 (the conftest shows them)
from server_util import Server, free_port, stop_server  # noqa: F401

API_FLAGS = ("--max-model-len", "512", "--kv-cache-gb", "0.0625", "--threads", "2")


def start_server(build, model_dir, log_dir, name, *extra, api_key=None, wait=True, env=None):
    return server_util.start_server(build, model_dir, log_dir, name, *API_FLAGS, *extra,
                                    api_key=api_key, wait=wait, env=env)
