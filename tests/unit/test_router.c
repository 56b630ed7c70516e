/*
 * test_router.c - data-parallel placement (router.c) over 1-4 real engines,
 * each with its own fake backend (tests/unit/fake_backend.c).
 *
 * Checked: unrelated prompts spread evenly (in a burst and one at a time);
 * the outputs do not depend on the replica (equal to a one-replica run);
 * the turns of a conversation (previous prompt + reply + new user text)
 * stay on their replica and find their prefix in its cache; an overloaded
 * affine replica is bypassed and the table learns the new home; a full
 * queue spills to a sibling; a failed replica gets nothing while the
 * others serve, and no replica left means ES_EDEVICE; the LRU table
 * forgets its oldest prefixes; concurrent submits from several threads
 * keep the counts exact and every load returns to zero.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "fake_backend.h"
#include "router.h"
#include "testing.h"

#define MAX_MODEL_LEN 1024
#define MAX_REPLICAS 4

static uint64_t rng = 0x243f6a8885a308d3ULL;
static int rndn(int n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (int)(rng % (uint64_t)n);
}

static void random_tokens(int32_t *out, int n)
{
    for (int i = 0; i < n; i++)
        out[i] = 10 + rndn(900);
}

static struct request *make_req(const int32_t *prompt, int n_prompt, int max_tokens, uint64_t seed)
{
    struct request_params p;
    request_params_defaults(&p);
    p.max_tokens = max_tokens;
    p.ignore_eos = true;
    p.logprobs = 0;
    p.sampling.temperature = 0.8f;
    p.sampling.seed = seed;
    return req_create(prompt, n_prompt, &p);
}

/* fail_mask bit i: replica i's backend fails at its first step. */
static struct router *make_router(int n, int num_blocks, int max_waiting, unsigned fail_mask,
                                  const struct router_opts *ro, bool start)
{
    struct engine *engines[MAX_REPLICAS];
    for (int i = 0; i < n; i++) {
        struct backend *be = fake_backend_create(num_blocks, (fail_mask >> i) & 1 ? 0 : -1);
        struct engine_opts o;
        engine_opts_defaults(&o);
        o.max_num_batched_tokens = 256;
        o.max_num_seqs = 32;
        o.max_model_len = MAX_MODEL_LEN;
        o.max_waiting = max_waiting;
        o.replica_index = i;
        struct es_err err = {{0}};
        CHECK(engine_create(be, NULL, &o, &engines[i], &err) == ES_OK);
    }
    struct router *r = NULL;
    struct es_err err = {{0}};
    CHECK(router_create(engines, n, ro, &r, &err) == ES_OK);
    if (start) CHECK(router_start(r) == ES_OK);
    return r;
}

static bool wait_finished(struct request *req)
{
    for (int t = 0; !req_is_finished(req); t++) {
        if (t > 60000) {
            fprintf(stderr, "request %s never finished\n", req->request_id);
            test_failures++;
            return false;
        }
        usleep(1000);
    }
    return true;
}

/* Every replica idle and the router's loads back to zero. */
static void check_idle(struct router *r)
{
    for (int i = 0; i < router_num_replicas(r); i++) {
        struct router_replica_stats s;
        for (int t = 0; t < 5000; t++) {
            router_get_stats(r, i, &s);
            if (s.outstanding == 0 && s.engine.running == 0 && s.engine.waiting == 0) break;
            usleep(1000);
        }
        CHECK(s.outstanding == 0);
        CHECK(s.engine.running == 0 && s.engine.waiting == 0);
        CHECK(s.finished_requests == s.placed_requests);
        CHECK(s.engine.free_kv_blocks == s.engine.num_kv_blocks);
    }
}

static bool same_output(struct request *a, struct request *b)
{
    const struct choice_output *x = &a->choices[0], *y = &b->choices[0];
    if (x->tokens.n != y->tokens.n || x->finish != y->finish) return false;
    for (size_t k = 0; k < x->tokens.n; k++)
        if (x->tokens.v[k] != y->tokens.v[k] || x->logprobs[k] != y->logprobs[k]) return false;
    return true;
}

/* ---- unrelated prompts spread evenly; outputs equal a single replica's ---- */

#define N_SPREAD 64

static void test_spread(void)
{
    static int32_t prompts[N_SPREAD][80];
    int lens[N_SPREAD];
    for (int i = 0; i < N_SPREAD; i++) {
        lens[i] = 20 + rndn(60);
        random_tokens(prompts[i], lens[i]);
    }
    /* Engines not started: nothing finishes during the burst, so the
     * placement is exactly the policy's. */
    struct router *r = make_router(4, 512, 4096, 0, NULL, false);
    struct router *one = make_router(1, 512, 4096, 0, NULL, true);
    struct request *reqs[N_SPREAD], *ref[N_SPREAD];
    int count[4] = {0};
    for (int i = 0; i < N_SPREAD; i++) {
        reqs[i] = make_req(prompts[i], lens[i], 10, 1000 + (uint64_t)i);
        ref[i] = make_req(prompts[i], lens[i], 10, 1000 + (uint64_t)i);
        int rep = -1;
        struct es_err err = {{0}};
        CHECK(router_submit(r, reqs[i], &rep, &err) == ES_OK);
        CHECK(rep == i % 4); /* least loaded, ties by fewest placed then index */
        if (rep >= 0 && rep < 4) count[rep]++;
        CHECK(router_submit(one, ref[i], NULL, &err) == ES_OK);
    }
    for (int i = 0; i < 4; i++) {
        CHECK(count[i] == N_SPREAD / 4);
        struct router_replica_stats s;
        router_get_stats(r, i, &s);
        CHECK(s.outstanding == N_SPREAD / 4);
        CHECK(s.placed_requests == N_SPREAD / 4);
        CHECK(s.affinity_hits == 0);
    }
    CHECK(router_start(r) == ES_OK);
    for (int i = 0; i < N_SPREAD; i++) {
        wait_finished(reqs[i]);
        wait_finished(ref[i]);
        CHECK(reqs[i]->choices[0].tokens.n == 10);
        CHECK(same_output(reqs[i], ref[i]));
    }
    check_idle(r);
    /* Every replica did real work: a quarter of the prompt tokens each. */
    uint64_t prompt_tokens[4] = {0};
    for (int i = 0; i < N_SPREAD; i++)
        prompt_tokens[i % 4] += (uint64_t)lens[i];
    for (int i = 0; i < 4; i++) {
        struct router_replica_stats s;
        router_get_stats(r, i, &s);
        CHECK(s.engine.prompt_tokens == prompt_tokens[i]);
        CHECK(s.engine.generation_tokens == 10 * N_SPREAD / 4);
    }
    struct engine_stats total;
    router_get_total(r, &total);
    CHECK(total.generation_tokens == 10 * N_SPREAD);
    CHECK(total.healthy);

    /* One request at a time: every load is zero at each submit, so the
     * fewest-placed tie-break keeps rotating. */
    for (int i = 0; i < 8; i++) {
        int32_t p[40];
        random_tokens(p, 40);
        struct request *q = make_req(p, 40, 3, 7);
        int rep = -1;
        struct es_err err = {{0}};
        CHECK(router_submit(r, q, &rep, &err) == ES_OK);
        CHECK(rep == i % 4);
        wait_finished(q);
        /* The load drops in the on_update after the last output, before
         * the caller's own callback runs: an HTTP client sees its answer
         * only after it. */
        check_idle(r);
        req_release(q);
    }
    check_idle(r);
    for (int i = 0; i < N_SPREAD; i++) {
        req_release(reqs[i]);
        req_release(ref[i]);
    }
    router_destroy(r);
    router_destroy(one);
}

/* ---- conversations stay on their replica and hit its prefix cache ---- */

#define N_CONV 6
#define N_TURNS 4

static void test_conversations(void)
{
    struct router *r = make_router(3, 1024, 4096, 0, NULL, true);
    static int32_t prompt[N_CONV][MAX_MODEL_LEN];
    int len[N_CONV], prev_len[N_CONV], home[N_CONV];
    struct request *cur[N_CONV];
    for (int c = 0; c < N_CONV; c++) {
        len[c] = 30 + rndn(50);
        random_tokens(prompt[c], len[c]);
        prev_len[c] = 0;
        home[c] = -1;
    }
    bool used[3] = {false};
    for (int turn = 0; turn < N_TURNS; turn++) {
        /* All conversations submit their turn, then all wait: turns of
         * different conversations interleave on the replicas. */
        uint64_t hits_before[3];
        for (int i = 0; i < 3; i++) {
            struct router_replica_stats s;
            router_get_stats(r, i, &s);
            hits_before[i] = s.engine.prefix_cache_hits;
        }
        /* A different order every turn, and an unrelated request before
         * each, so that least-loaded alone would scatter the turns. */
        struct request *noise[N_CONV];
        for (int k = 0; k < N_CONV; k++) {
            int c = (k * 5 + turn) % N_CONV;
            int32_t np[30];
            random_tokens(np, 30);
            noise[k] = make_req(np, 30, 2 + turn, 3);
            struct es_err nerr = {{0}};
            CHECK(router_submit(r, noise[k], NULL, &nerr) == ES_OK);
            cur[c] = make_req(prompt[c], len[c], 12, (uint64_t)(c * 100 + turn));
            int rep = -1;
            struct es_err err = {{0}};
            CHECK(router_submit(r, cur[c], &rep, &err) == ES_OK);
            if (turn == 0) {
                home[c] = rep;
                if (rep >= 0 && rep < 3) used[rep] = true;
            } else {
                CHECK(rep == home[c]);
            }
        }
        for (int k = 0; k < N_CONV; k++) {
            wait_finished(noise[k]);
            req_release(noise[k]);
        }
        uint64_t expect_hits[3] = {0};
        for (int c = 0; c < N_CONV; c++) {
            if (!wait_finished(cur[c])) continue;
            const struct choice_output *co = &cur[c]->choices[0];
            CHECK(co->tokens.n == 12);
            /* The previous turn's full prompt blocks are found in the
             * home replica's cache. */
            int want = prev_len[c] / 16 * 16;
            CHECK(cur[c]->n_cached_prompt_tokens >= want);
            if (turn > 0 && cur[c]->n_cached_prompt_tokens < want)
                fprintf(stderr, "conversation %d turn %d: %d cached, want >= %d\n", c, turn,
                        cur[c]->n_cached_prompt_tokens, want);
            if (home[c] >= 0 && home[c] < 3) expect_hits[home[c]] += (uint64_t)want;
            /* Next prompt: this prompt + the reply + new user text. */
            prev_len[c] = len[c];
            for (size_t k = 0; k < co->tokens.n; k++)
                prompt[c][len[c]++] = co->tokens.v[k];
            int extra = 8 + rndn(20);
            random_tokens(prompt[c] + len[c], extra);
            len[c] += extra;
            req_release(cur[c]);
        }
        for (int i = 0; i < 3; i++) {
            struct router_replica_stats s;
            for (int t = 0; t < 1000; t++) { /* stats are published after the step */
                router_get_stats(r, i, &s);
                if (s.engine.prefix_cache_hits - hits_before[i] >= expect_hits[i]) break;
                usleep(1000);
            }
            CHECK(s.engine.prefix_cache_hits - hits_before[i] >= expect_hits[i]);
            if (turn > 0) CHECK(expect_hits[i] > 0);
        }
        /* The table knows every conversation's next prompt (it extends
         * this turn's), pointing at its home. */
        for (int c = 0; c < N_CONV; c++)
            CHECK(router_affinity_lookup(r, prompt[c], len[c]) == home[c]);
    }
    CHECK(used[0] && used[1] && used[2]); /* six first turns over three idle replicas */
    for (int i = 0; i < 3; i++) {
        struct router_replica_stats s;
        router_get_stats(r, i, &s);
        CHECK(s.affinity_hits >= (uint64_t)(N_TURNS - 1));
        CHECK(s.affinity_overrides == 0);
    }
    check_idle(r);
    router_destroy(r);
}

/* ---- an overloaded affine replica is bypassed; a full queue spills ---- */

static void test_overload_and_spill(void)
{
    /* Not started: loads only grow. Defaults: ratio 2, slack 8. */
    struct router *r = make_router(2, 512, 4096, 0, NULL, false);
    int32_t p[64];
    random_tokens(p, 64);
    struct request *reqs[12];
    int rep[12];
    for (int i = 0; i < 12; i++) {
        p[63] = 10 + i; /* same first 3 blocks, different tail */
        reqs[i] = make_req(p, 64, 2, 1);
        struct es_err err = {{0}};
        CHECK(router_submit(r, reqs[i], &rep[i], &err) == ES_OK);
    }
    /* Replica 0 keeps the prefix while load(0) <= 2 * load(1) + 8, i.e.
     * for 9 requests; the 10th goes to replica 1, which becomes the home. */
    for (int i = 0; i < 9; i++)
        CHECK(rep[i] == 0);
    CHECK(rep[9] == 1 && rep[10] == 1 && rep[11] == 1);
    struct router_replica_stats s0, s1;
    router_get_stats(r, 0, &s0);
    router_get_stats(r, 1, &s1);
    CHECK(s0.affinity_overrides == 1 && s1.affinity_overrides == 0);
    CHECK(s0.affinity_hits == 8 && s1.affinity_hits == 2);
    CHECK(router_affinity_lookup(r, p, 64) == 1);
    router_destroy(r); /* aborts the queued requests */
    for (int i = 0; i < 12; i++) {
        CHECK(req_is_finished(reqs[i]));
        CHECK(reqs[i]->choices[0].finish == FINISH_ABORT);
        req_release(reqs[i]);
    }

    /* max_waiting 2 per replica: the affine replica's full queue spills to
     * its sibling; when both are full the router says ES_EFULL. */
    r = make_router(2, 512, 2, 0, NULL, false);
    random_tokens(p, 64);
    struct request *q[5];
    for (int i = 0; i < 5; i++) {
        q[i] = make_req(p, 40, 2, 1);
        struct es_err err = {{0}};
        enum es_status st = router_submit(r, q[i], &rep[i], &err);
        if (i < 4) {
            CHECK(st == ES_OK);
        } else {
            CHECK(st == ES_EFULL);
            CHECK(err.msg[0] != '\0');
            CHECK(q[i]->on_update == NULL); /* untouched on failure */
        }
    }
    CHECK(rep[0] == 0 && rep[1] == 0 && rep[2] == 1 && rep[3] == 1);
    router_get_stats(r, 0, &s0);
    router_get_stats(r, 1, &s1);
    CHECK(s0.rejected == 2 && s1.rejected == 1); /* 3rd: 0 refused; 5th: both */
    CHECK(s0.outstanding == 2 && s1.outstanding == 2);
    CHECK(router_start(r) == ES_OK);
    for (int i = 0; i < 4; i++)
        CHECK(wait_finished(q[i]) && q[i]->choices[0].finish == FINISH_LENGTH);
    check_idle(r);
    for (int i = 0; i < 5; i++)
        req_release(q[i]);
    router_destroy(r);
}

/* ---- a failed replica gets nothing ---- */

static void test_unhealthy(void)
{
    struct router *r = make_router(3, 512, 4096, 1u << 1, NULL, true);
    CHECK(router_healthy(r) && router_num_healthy(r) == 3);
    /* Kill replica 1 with a request of its own. */
    int32_t p[40];
    random_tokens(p, 40);
    struct request *victim = make_req(p, 40, 4, 1);
    struct es_err err = {{0}};
    CHECK(engine_submit(router_engine(r, 1), victim, &err) == ES_OK);
    wait_finished(victim);
    CHECK(victim->choices[0].finish == FINISH_ERROR);
    req_release(victim);
    CHECK(!router_healthy(r));
    CHECK(router_num_healthy(r) == 2);
    struct engine_stats total;
    router_get_total(r, &total);
    CHECK(!total.healthy);

    /* The prefix of a conversation that lived on replica 1 goes elsewhere. */
    struct request *reqs[30];
    for (int i = 0; i < 30; i++) {
        int32_t q[48];
        random_tokens(q, 48);
        if (i == 0) memcpy(q, p, 40 * sizeof(int32_t));
        reqs[i] = make_req(q, 48, 4, (uint64_t)i);
        int rep = -1;
        CHECK(router_submit(r, reqs[i], &rep, &err) == ES_OK);
        CHECK(rep == 0 || rep == 2);
    }
    for (int i = 0; i < 30; i++) {
        wait_finished(reqs[i]);
        CHECK(reqs[i]->choices[0].finish == FINISH_LENGTH);
        req_release(reqs[i]);
    }
    struct router_replica_stats s;
    router_get_stats(r, 1, &s);
    CHECK(s.placed_requests == 0 && s.outstanding == 0);
    router_get_stats(r, 0, &s);
    CHECK(s.placed_requests >= 10);
    router_get_stats(r, 2, &s);
    CHECK(s.placed_requests >= 10);
    router_destroy(r);

    /* No healthy replica left: ES_EDEVICE, request untouched. */
    r = make_router(1, 512, 4096, 1u, NULL, true);
    victim = make_req(p, 40, 4, 1);
    CHECK(router_submit(r, victim, NULL, &err) == ES_OK);
    wait_finished(victim);
    req_release(victim);
    struct request *late = make_req(p, 40, 4, 1);
    struct es_err err2 = {{0}};
    CHECK(router_submit(r, late, NULL, &err2) == ES_EDEVICE);
    CHECK(err2.msg[0] != '\0');
    CHECK(late->on_update == NULL);
    req_release(late);
    router_destroy(r);
}

/* ---- the bounded LRU table forgets the oldest prefixes ---- */

static void test_lru(void)
{
    struct router_opts ro;
    router_opts_defaults(&ro);
    ro.table_entries = 4;
    struct router *r = make_router(2, 512, 4096, 0, &ro, false);
    int32_t p[6][20];
    struct request *reqs[6];
    for (int i = 0; i < 6; i++) {
        random_tokens(p[i], 20); /* one full block: one table entry each */
        reqs[i] = make_req(p[i], 20, 1, 1);
        int rep = -1;
        struct es_err err = {{0}};
        CHECK(router_submit(r, reqs[i], &rep, &err) == ES_OK);
        CHECK(rep == i % 2);
    }
    CHECK(router_affinity_lookup(r, p[0], 20) == -1);
    CHECK(router_affinity_lookup(r, p[1], 20) == -1);
    for (int i = 2; i < 6; i++)
        CHECK(router_affinity_lookup(r, p[i], 20) == i % 2);
    /* A prompt shorter than one block has no prefix to remember. */
    CHECK(router_affinity_lookup(r, p[5], 15) == -1);
    router_destroy(r);
    for (int i = 0; i < 6; i++)
        req_release(reqs[i]);

    /* Affinity off: pure least-loaded. */
    ro.table_entries = 0;
    r = make_router(2, 512, 4096, 0, &ro, false);
    for (int i = 0; i < 4; i++) {
        reqs[i] = make_req(p[0], 20, 1, 1);
        int rep = -1;
        struct es_err err = {{0}};
        CHECK(router_submit(r, reqs[i], &rep, &err) == ES_OK);
        CHECK(rep == i % 2);
    }
    router_destroy(r);
    for (int i = 0; i < 4; i++)
        req_release(reqs[i]);

    struct router *bad = NULL;
    struct es_err err = {{0}};
    CHECK(router_create(NULL, 0, NULL, &bad, &err) == ES_EINVAL);
}

/* ---- concurrent submits from several threads ---- */

#define N_THREADS 4
#define PER_THREAD 50

struct worker {
    struct router *r;
    int index;
    int placed[MAX_REPLICAS];
    int failures;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    uint64_t seed = 0x9e3779b97f4a7c15ULL * (uint64_t)(w->index + 1);
    int32_t conv[600];
    int conv_len = 40, home = -1;
    for (int i = 0; i < conv_len; i++)
        conv[i] = 10 + (int32_t)((seed >> (i % 50)) % 900);
    struct request *inflight[8] = {0};
    for (int k = 0; k < PER_THREAD; k++) {
        /* Odd k: a random prompt; even k: the next turn of this thread's
         * conversation (prompt grows by 16 tokens, reply not awaited). */
        int32_t p[600];
        int n;
        if (k % 2) {
            seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
            n = 20 + (int)((seed >> 33) % 60);
            for (int i = 0; i < n; i++)
                p[i] = 10 + (int32_t)(((seed >> 17) + (uint64_t)i * 2654435761u) % 900);
        } else {
            for (int i = 0; i < 16 && conv_len < 500; i++)
                conv[conv_len++] = 10 + (int32_t)((seed + (uint64_t)(k * 31 + i)) % 900);
            memcpy(p, conv, (size_t)conv_len * sizeof(int32_t));
            n = conv_len;
        }
        struct request *q = make_req(p, n, 4, (uint64_t)k);
        int rep = -1;
        struct es_err err = {{0}};
        if (router_submit(w->r, q, &rep, &err) != ES_OK || rep < 0 || rep >= MAX_REPLICAS) {
            w->failures++;
            req_release(q);
            continue;
        }
        w->placed[rep]++;
        if (k % 2 == 0) {
            if (home >= 0 && rep != home) w->failures++; /* light load: never overloaded */
            home = rep;
        }
        int slot = k % 8;
        if (inflight[slot]) {
            wait_finished(inflight[slot]);
            req_release(inflight[slot]);
        }
        inflight[slot] = q;
    }
    for (int i = 0; i < 8; i++)
        if (inflight[i]) {
            wait_finished(inflight[i]);
            if (inflight[i]->choices[0].finish != FINISH_LENGTH) w->failures++;
            req_release(inflight[i]);
        }
    return NULL;
}

static void test_concurrent(void)
{
    struct router_opts ro;
    router_opts_defaults(&ro);
    ro.affinity_slack = 64; /* 4 threads x 8 in flight never overload a home */
    struct router *r = make_router(3, 1024, 4096, 0, &ro, true);
    struct worker w[N_THREADS];
    pthread_t th[N_THREADS];
    for (int i = 0; i < N_THREADS; i++) {
        memset(&w[i], 0, sizeof(w[i]));
        w[i].r = r;
        w[i].index = i;
        CHECK(pthread_create(&th[i], NULL, worker_main, &w[i]) == 0);
    }
    int placed[MAX_REPLICAS] = {0};
    for (int i = 0; i < N_THREADS; i++) {
        pthread_join(th[i], NULL);
        CHECK(w[i].failures == 0);
        for (int k = 0; k < MAX_REPLICAS; k++)
            placed[k] += w[i].placed[k];
    }
    check_idle(r);
    uint64_t total = 0;
    for (int i = 0; i < 3; i++) {
        struct router_replica_stats s;
        router_get_stats(r, i, &s);
        CHECK(s.placed_requests == (uint64_t)placed[i]);
        CHECK(placed[i] > 0);
        total += s.finished_requests;
    }
    CHECK(total == N_THREADS * PER_THREAD);
    router_destroy(r);
}

/* ---- load counts sequences; the caller's on_update is kept ---- */

struct cb_log {
    atomic_int calls;
    atomic_int finished_calls;
};

static void counting_cb(struct request *req, void *ctx)
{
    struct cb_log *log = ctx;
    atomic_fetch_add(&log->calls, 1);
    if (req_is_finished(req)) atomic_fetch_add(&log->finished_calls, 1);
}

static void test_weights_and_callbacks(void)
{
    struct router *r = make_router(2, 512, 4096, 0, NULL, false);
    int32_t p[40];
    random_tokens(p, 40);
    struct request_params params;
    request_params_defaults(&params);
    params.n = 4;
    params.max_tokens = 3;
    params.ignore_eos = true;
    struct request *big = req_create(p, 40, &params);
    struct cb_log log = {0};
    big->on_update = counting_cb;
    big->on_update_ctx = &log;
    int rep = -1;
    struct es_err err = {{0}};
    CHECK(router_submit(r, big, &rep, &err) == ES_OK && rep == 0);
    struct router_replica_stats s;
    router_get_stats(r, 0, &s);
    CHECK(s.outstanding == 4 && s.placed_sequences == 4);
    /* Four single requests: replica 1 stays the lighter one (0..3 < 4). */
    struct request *small[4];
    for (int i = 0; i < 4; i++) {
        random_tokens(p, 40);
        small[i] = make_req(p, 40, 3, 1);
        CHECK(router_submit(r, small[i], &rep, &err) == ES_OK);
        CHECK(rep == 1);
    }
    CHECK(router_start(r) == ES_OK);
    wait_finished(big);
    for (int i = 0; i < 4; i++)
        wait_finished(small[i]);
    check_idle(r);
    /* The caller's callback ran (the last time on the finished request)
     * and is back in place. */
    CHECK(atomic_load(&log.calls) >= 1);
    CHECK(atomic_load(&log.finished_calls) == 1);
    CHECK(big->on_update == counting_cb && big->on_update_ctx == &log);
    for (int c = 0; c < 4; c++)
        CHECK(big->choices[c].tokens.n == 3);
    req_release(big);
    for (int i = 0; i < 4; i++)
        req_release(small[i]);
    router_destroy(r);
}

int main(void)
{
    test_spread();
    test_conversations();
    test_overload_and_spill();
    test_unhealthy();
    test_lru();
    test_weights_and_callbacks();
    test_concurrent();
    return test_result("test_router");
}
