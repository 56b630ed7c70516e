"""Data parallelism end to end: evalserver --dp 2 on the tiny model.

Checked: both replicas serve a burst of unrelated requests (per-replica
counters in /metrics, and the unlabelled totals are their sums); the turns
of a chat conversation stay on one replica and find the previous turn's
prompt in its prefix cache; seeded outputs (tokens, text, logprobs) equal
those of --dp 1.
"""
import concurrent.futures as cf
import re

import pytest


def replica_values(metrics, name):
    """{replica index: value} of a per-replica family."""
    out = {}
    for key, v in metrics.items():
        m = re.fullmatch(re.escape(name) + r'\{replica="(\d+)"\}', key)
        if m:
            out[int(m.group(1))] = v
    return out


WORDS = ("apple river stone cloud window garden violin copper meadow lantern harbor "
         "falcon pepper marble canyon orchid glacier thunder velvet saddle").split()


def unrelated_prompt(i):
    # Different from the first token on, so no two share a prefix block.
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(12)) + f" number {i}"


def test_both_replicas_serve(spawn):
    srv = spawn("dp2", "--dp", "2")
    m0 = srv.metrics()
    assert m0["evalserver_num_replicas"] == 2

    def one(i):
        r = srv.post("/v1/completions", {"model": "tiny", "prompt": unrelated_prompt(i),
                                         "max_tokens": 4, "temperature": 0, "ignore_eos": True})
        assert r.status_code == 200, r.text
        return r.json()["usage"]["completion_tokens"]

    with cf.ThreadPoolExecutor(8) as ex:
        tokens = list(ex.map(one, range(32)))
    assert tokens == [4] * 32
    m = srv.settled_metrics(lambda m: m["evalserver_generation_tokens_total"] >= 128)
    routed = replica_values(m, "evalserver_replica_requests_routed_total")
    gen = replica_values(m, "evalserver_replica_generation_tokens_total")
    assert sorted(routed) == [0, 1] and sorted(gen) == [0, 1]
    assert routed[0] > 0 and routed[1] > 0, routed
    assert routed[0] + routed[1] == 32
    assert gen[0] > 0 and gen[1] > 0, gen
    # Neither replica idles: least-loaded placement keeps them within 3:1.
    assert min(routed.values()) >= 8, routed
    # The unlabelled families are the totals.
    assert m["evalserver_generation_tokens_total"] == gen[0] + gen[1] == 128
    prompt = replica_values(m, "evalserver_replica_prompt_tokens_total")
    assert m["evalserver_prompt_tokens_total"] == prompt[0] + prompt[1]
    health = replica_values(m, "evalserver_replica_healthy")
    assert health == {0: 1, 1: 1}
    assert srv.get("/health").status_code == 200


def test_conversation_stays_and_hits_prefix_cache(spawn):
    srv = spawn("dp2-chat", "--dp", "2")
    messages = [{"role": "system", "content": "You are a terse assistant who answers every "
                 "question about rivers, mountains and the weather in one short sentence, "
                 "never more, and always politely."},
                {"role": "user", "content": "How long is the Danube?"}]
    follow_ups = ["And the Rhine?", "Which of the two is older?", "Thanks. What about the Po?"]
    prev_prompt_tokens = 0
    homes = []
    for turn in range(len(follow_ups) + 1):
        before = srv.metrics()
        r = srv.post("/v1/chat/completions", {"model": "tiny", "messages": messages,
                                              "max_tokens": 8, "temperature": 0})
        assert r.status_code == 200, r.text
        body = r.json()
        prompt_tokens = body["usage"]["prompt_tokens"]
        want = prev_prompt_tokens // 16 * 16
        after = srv.settled_metrics(lambda m: m["evalserver_prefix_cache_hits_total"] -
                                before["evalserver_prefix_cache_hits_total"] >= want)
        hits_before = replica_values(before, "evalserver_replica_prefix_cache_hits_total")
        hits_after = replica_values(after, "evalserver_replica_prefix_cache_hits_total")
        routed_before = replica_values(before, "evalserver_replica_requests_routed_total")
        routed_after = replica_values(after, "evalserver_replica_requests_routed_total")
        home = [i for i in routed_after if routed_after[i] > routed_before.get(i, 0)]
        assert len(home) == 1
        homes.append(home[0])
        if turn > 0:
            # The previous turn's prompt (its full 16-token blocks) is a
            # prefix of this one and lives on this replica.
            shared = want
            assert shared > 0
            gained = hits_after[home[0]] - hits_before.get(home[0], 0)
            assert gained >= shared, (turn, gained, shared)
            total_gain = (after["evalserver_prefix_cache_hits_total"] -
                          before["evalserver_prefix_cache_hits_total"])
            assert total_gain >= shared
        prev_prompt_tokens = prompt_tokens
        if turn < len(follow_ups):
            messages = messages + [
                {"role": "assistant", "content": body["choices"][0]["message"]["content"]},
                {"role": "user", "content": follow_ups[turn]}]
    # One replica served every turn, although with nothing else running the
    # fewest-placed tie-break alone would have alternated.
    assert len(set(homes)) == 1, homes


def seeded_requests():
    reqs = []
    for i in range(12):
        reqs.append({"model": "tiny", "prompt": unrelated_prompt(100 + i) if i % 3 else
                     "The shared beginning of a few prompts, then " + WORDS[i],
                     "max_tokens": 8, "temperature": 0.9, "top_p": 0.95, "seed": 1234 + i,
                     "logprobs": 2, "ignore_eos": True, "n": 1 + (i % 2)})
    return reqs


def test_outputs_equal_dp1(spawn):
    one = spawn("dp1-ref", "--dp", "1")
    two = spawn("dp2-ref", "--dp", "2")

    def run(srv):
        def call(body):
            r = srv.post("/v1/completions", body)
            assert r.status_code == 200, r.text
            return r.json()
        with cf.ThreadPoolExecutor(6) as ex:
            return list(ex.map(call, seeded_requests()))

    a, b = run(one), run(two)
    assert a[0]["system_fingerprint"] == b[0]["system_fingerprint"]
    for ra, rb in zip(a, b):
        assert len(ra["choices"]) == len(rb["choices"])
        for ca, cb in zip(ra["choices"], rb["choices"]):
            assert ca["text"] == cb["text"]
            assert ca["logprobs"]["tokens"] == cb["logprobs"]["tokens"]
            for x, y in zip(ca["logprobs"]["token_logprobs"], cb["logprobs"]["token_logprobs"]):
                assert x == pytest.approx(y, abs=1e-5)
