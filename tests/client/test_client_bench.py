"""`evalclient bench` against the fake server: the BENCH.md prompt stream,
W1/W2/W4 figures, and the W3 comparison (async vs --sync-turns) run small."""
import json

import fake_server as fs
from evalclient_helpers import run_client


def dump(exe, wl, n, *extra):
    p = run_client(exe, "bench", "--workload", wl, "--dump-prompts", str(n), *extra, check=0)
    return [json.loads(l) for l in p.stdout.splitlines()]


def splitmix_tokens(n):
    s, out = 0, []
    for _ in range(n):
        s = (s + 0x9E3779B97F4A7C15) % 2**64
        z = s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
        out.append(1000 + (z ^ (z >> 31)) % 119000)
    return out


def test_w1_prompts_match_bench_md(evalclient):
    prompts = dump(evalclient, "W1", 3)
    assert prompts[0][:5] == [79535, 49700, 111679, 35444, 81747]  # BENCH.md
    assert [len(p) for p in prompts] == [512] * 3
    assert prompts[0] + prompts[1] + prompts[2] == splitmix_tokens(3 * 512)


def test_w2_prompt_structure(evalclient):
    p = dump(evalclient, "W2", 44)
    stream = splitmix_tokens(10 * 480 + 11 * (100 + 32))
    prefixes = [stream[i * 480:(i + 1) * 480] for i in range(10)]
    assert all(len(x) == 588 for x in p)
    for q in range(11):
        for c in range(4):
            x = p[q * 4 + c]
            assert x[:480] == prefixes[q % 10]
            base = 4800 + q * 132
            assert x[480:580] == stream[base:base + 100]
            assert x[580:] == stream[base + 100 + 8 * c: base + 108 + 8 * c]


def test_w1_w2_w4_figures(evalclient, fake_server, tmp_path):
    srv = fake_server()
    j1 = tmp_path / "w1.json"
    p = run_client(evalclient, "bench", "--url", srv.url, "--model", "tiny", "--workload", "W1",
                   "--num-prompts", "3", "--json", str(j1), check=0)
    assert "Output token throughput" in p.stdout and "p99 ttft" in p.stdout
    r = json.load(open(j1))
    assert r["completed"] == 3 and r["failed"] == 0
    assert r["total_output_tokens"] == 3 * 256 and r["total_input_tokens"] == 3 * 512
    assert r["output_throughput"] > 0 and r["median_ttft_ms"] > 0 and r["mean_tpot_ms"] > 0
    bodies = [json.loads(b) for b in srv.stats()["bodies"]]
    assert all(b["ignore_eos"] and b["max_tokens"] == 256 and b["temperature"] == 0 and b["stream"]
               for b in bodies)

    j2 = tmp_path / "w2.json"
    run_client(evalclient, "bench", "--url", srv.url, "--model", "tiny", "--workload", "W2",
               "--num-prompts", "8", "--json", str(j2), check=0)
    r = json.load(open(j2))
    assert r["completed"] == 8 and r["total_input_tokens"] == 8 * 588 and r["input_throughput"] > 0

    j4 = tmp_path / "w4.json"
    run_client(evalclient, "bench", "--url", srv.url, "--model", "tiny", "--workload", "W4",
               "--num-prompts", "6", "--rate", "30", "--json", str(j4), check=0)
    r = json.load(open(j4))
    assert r["completed"] == 6 and r["total_output_tokens"] == 6 * 128
    assert r["request_rate"] == 30 and r["p99_itl_ms"] >= 0 and r["p90_ttft_ms"] > 0


def test_w3_async_and_sync_turns(evalclient, fake_server, tmp_path):
    figures = {}
    for mode in ("async", "sync"):
        srv = fake_server("--vary-delay", "0.01")
        out = tmp_path / f"{mode}.json"
        extra = ["--sync-turns"] if mode == "sync" else []
        run_client(evalclient, "bench", "--url", srv.url, "--model", "tiny", "--workload", "W3",
                   "--num-prompts", "5", "--turns", "3", "--json", str(out), *extra, check=0)
        r = figures[mode] = json.load(open(out))
        assert r["completed"] == 15 and r["failed"] == 0
        assert r["replies_exact_token_ids"] == 15 and r["replies_retokenized"] == 0
        assert 0.5 < r["prefix_cache_hit_rate"] <= 1
        # each turn = previous prompt + its 128 reply tokens + 128 new user tokens
        prompts = sorted((json.loads(b)["prompt"] for b in srv.stats()["bodies"]), key=len)
        by_start = {}
        for p in prompts:
            by_start.setdefault(tuple(p[:128]), []).append(p)
        assert len(by_start) == 5
        for conv in by_start.values():
            assert [len(p) for p in conv] == [128, 384, 640]
            for a, b in zip(conv, conv[1:]):
                assert b[:len(a)] == a
                assert b[len(a):len(a) + 128] == fs.gen_ids(a, 128)
    assert figures["sync"]["barrier_rounds"] == 3 and figures["async"]["barrier_rounds"] == 0
    first_turns = sorted(tuple(p) for p in dump(evalclient, "W3", 5, "--turns", "3"))
    assert len(first_turns) == 5
