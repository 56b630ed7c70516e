/*
 * test_sched.c - the continuous-batching scheduler against a simulated
 * engine (no backend): token budget and max_num_seqs respected, decodes
 * scheduled before prefills, chunked prefill, preemption by recompute when
 * KV blocks run out (outputs kept, prompt + output recomputed), FCFS
 * fairness (the oldest running sequence is never preempted, every request
 * finishes), prefix-cache hits at admission, n > 1 fork reservations, and
 * scheduling ahead of a step in flight (sequences waiting for their token
 * skipped, nothing preempted or admitted when blocks run out).
 */
#include <stdlib.h>

#include "kvcache.h"
#include "scheduler.h"
#include "testing.h"

#define BS 16

struct sim {
    struct kvcache *kv;
    struct sched *s;
    struct ereq er[64];
    struct seq q[64];
    int n;
    int max_tokens[64];
    int finished_step[64];
    int preempted[64];
    int first_sched[64];
    long step;
};

static void sim_init(struct sim *m, int num_blocks, int budget, int max_seqs, bool prefix)
{
    memset(m, 0, sizeof(*m));
    struct es_err err = {{0}};
    CHECK(kvc_create(num_blocks, BS, 64, prefix, &m->kv, &err) == ES_OK);
    struct sched_opts o = {.max_num_batched_tokens = budget, .max_num_seqs = max_seqs};
    CHECK(sched_create(&o, m->kv, &m->s, &err) == ES_OK);
}

/* Adds a request with prompt tokens base*1000 + i and max_tokens. */
static struct seq *sim_add(struct sim *m, int n_prompt, int max_tokens, int base)
{
    int i = m->n++;
    struct ereq *er = &m->er[i];
    struct seq *q = &m->q[i];
    static struct request dummy_req[64];
    dummy_req[i].id = (uint64_t)i;
    er->req = &dummy_req[i];
    er->arrival = (uint64_t)i;
    er->plp_next = PLP_DONE;
    er->n_live = 1;
    q->er = er;
    q->choice = 0;
    q->n_prompt = n_prompt;
    for (int t = 0; t < n_prompt; t++)
        iv_push(&q->tokens, base * 1000 + t);
    kvc_seq_init(m->kv, &q->kv);
    m->max_tokens[i] = max_tokens;
    m->finished_step[i] = -1;
    m->first_sched[i] = -1;
    sched_add(m->s, q);
    return q;
}

/* One step: schedule, check the limits, "compute", append a token to every
 * sequence whose chunk reached its end, finish at max_tokens. */
static struct sched_out sim_step(struct sim *m, int budget, int max_seqs)
{
    struct sched_out so;
    int before[64];
    for (int i = 0; i < m->n; i++)
        before[i] = m->q[i].n_computed;
    sched_schedule(m->s, &so, true);
    CHECK(so.n_tokens + so.n_rows_extra <= budget);
    CHECK(so.n_seqs <= max_seqs);
    CHECK(sched_num_running(m->s) <= max_seqs);
    for (int i = 0; i < m->n; i++)
        if (m->q[i].state == SEQ_WAITING && before[i] > 0 && m->q[i].n_computed == 0)
            m->preempted[i]++;
    for (int k = 0; k < so.n_seqs; k++) {
        struct seq *q = so.seqs[k];
        CHECK(q->n_new > 0 && q->state == SEQ_RUNNING);
        if (m->first_sched[q - m->q] < 0) m->first_sched[q - m->q] = (int)m->step;
        CHECK(kvc_blocks_for(m->kv, q->n_computed + q->n_new) <= q->kv.n_blocks);
        q->n_computed += q->n_new;
        kvc_commit(m->kv, &q->kv, q->tokens.v, q->n_computed);
    }
    for (int k = 0; k < so.n_seqs; k++) {
        struct seq *q = so.seqs[k];
        if (q->n_computed != (int)q->tokens.n) continue;
        int i = (int)(q - m->q);
        iv_push(&q->tokens, 7 + (int)q->tokens.n);
        if (seq_n_generated(q) >= m->max_tokens[i]) {
            sched_remove(m->s, q);
            m->finished_step[i] = (int)m->step;
        }
    }
    m->step++;
    return so;
}

static void sim_free(struct sim *m)
{
    for (int i = 0; i < m->n; i++) {
        if (m->q[i].state != SEQ_DONE) sched_remove(m->s, &m->q[i]);
        kvc_seq_destroy(m->kv, &m->q[i].kv);
        iv_free(&m->q[i].tokens);
    }
    CHECK(kvc_num_free(m->kv) == kvc_num_blocks(m->kv));
}

static void sim_destroy(struct sim *m)
{
    sim_free(m);
    sched_destroy(m->s);
    kvc_destroy(m->kv);
}

static bool all_done(const struct sim *m)
{
    for (int i = 0; i < m->n; i++)
        if (m->finished_step[i] < 0) return false;
    return true;
}

static void test_chunked_prefill(void)
{
    struct sim m;
    sim_init(&m, 64, 64, 8, false);
    sim_add(&m, 200, 3, 1);
    int chunks[8], n = 0;
    while (!all_done(&m) && n < 8) {
        struct sched_out so = sim_step(&m, 64, 8);
        chunks[n++] = so.n_tokens;
    }
    CHECK(n == 6);
    CHECK(chunks[0] == 64 && chunks[1] == 64 && chunks[2] == 64 && chunks[3] == 8);
    CHECK(chunks[4] == 1 && chunks[5] == 1);
    sim_destroy(&m);
}

static void test_decode_first(void)
{
    struct sim m;
    sim_init(&m, 128, 32, 8, false);
    struct seq *a = sim_add(&m, 5, 50, 1);
    struct seq *b = sim_add(&m, 6, 50, 2);
    sim_step(&m, 32, 8); /* both prefills in one step: 11 tokens */
    CHECK(a->n_computed == 5 && b->n_computed == 6);
    struct seq *c = sim_add(&m, 100, 5, 3);
    struct sched_out so = sim_step(&m, 32, 8);
    CHECK(so.n_seqs == 3);
    CHECK(so.seqs[0] == a && so.seqs[0]->n_new == 1);
    CHECK(so.seqs[1] == b && so.seqs[1]->n_new == 1);
    CHECK(so.seqs[2] == c && so.seqs[2]->n_new == 30); /* the rest of the budget */
    /* A running prefill is continued before anything new is admitted. */
    struct seq *d = sim_add(&m, 10, 5, 4);
    so = sim_step(&m, 32, 8);
    CHECK(so.seqs[0] == a && so.seqs[1] == b && so.seqs[2] == c && c->n_new == 30);
    CHECK(d->state == SEQ_WAITING);
    while (!all_done(&m))
        sim_step(&m, 32, 8);
    sim_destroy(&m);
}

static void test_budget_and_max_seqs(void)
{
    struct sim m;
    sim_init(&m, 400, 48, 4, true);
    for (int i = 0; i < 20; i++)
        sim_add(&m, 10 + 7 * i, 1 + i % 9, i);
    int guard = 0;
    while (!all_done(&m) && guard++ < 10000)
        sim_step(&m, 48, 4);
    CHECK(all_done(&m));
    /* FCFS: requests are admitted strictly in arrival order. */
    for (int i = 0; i + 1 < m.n; i++)
        CHECK(m.first_sched[i] <= m.first_sched[i + 1]);
    CHECK(m.first_sched[m.n - 1] > 0);
    sim_destroy(&m);
}

/* Under a tiny cache, sequences are preempted, recomputed and all finish;
 * the oldest running one is never the victim; nothing starves. */
static void test_preemption(void)
{
    struct sim m;
    sim_init(&m, 12, 64, 8, true); /* 192 token slots */
    for (int i = 0; i < 10; i++)
        sim_add(&m, 20 + 3 * i, 40, i);
    int guard = 0;
    while (!all_done(&m) && guard++ < 20000) {
        /* The oldest unfinished running sequence must never be preempted. */
        struct seq *oldest = sched_running_first(m.s);
        int oldest_i = oldest ? (int)(oldest - m.q) : -1;
        int prev = oldest_i >= 0 ? m.preempted[oldest_i] : 0;
        /* Only a sequence alone in the cache could preempt itself. */
        bool alone = oldest && !oldest->next;
        sim_step(&m, 64, 8);
        if (oldest_i >= 0 && !alone) CHECK(m.preempted[oldest_i] == prev);
    }
    CHECK(all_done(&m));
    uint64_t preemptions = sched_num_preemptions(m.s);
    CHECK(preemptions > 0);
    /* Outputs survive preemption: each has exactly its max_tokens. */
    for (int i = 0; i < m.n; i++) {
        CHECK(seq_n_generated(&m.q[i]) == 40);
        for (int t = 0; t < seq_n_generated(&m.q[i]); t++)
            CHECK(m.q[i].tokens.v[m.q[i].n_prompt + t] == 7 + m.q[i].n_prompt + t);
    }
    /* Finish order follows arrival order closely (FCFS): request i never
     * finishes after request i + 3. */
    for (int i = 0; i + 3 < m.n; i++)
        CHECK(m.finished_step[i] <= m.finished_step[i + 3]);
    fprintf(stderr, "preemption: %llu preemptions, %ld steps\n", (unsigned long long)preemptions,
            m.step);
    sim_destroy(&m);
}

/* A long-running old request keeps making progress while new short ones
 * keep arriving; a waiting old request is admitted before newer ones. */
static void test_no_starvation(void)
{
    struct sim m;
    sim_init(&m, 20, 32, 4, false);
    struct seq *old = sim_add(&m, 150, 60, 0);
    int added = 1, guard = 0;
    while (m.finished_step[0] < 0 && guard++ < 5000) {
        if (added < 60 && m.step % 3 == 0) {
            sim_add(&m, 30, 5, added);
            added++;
        }
        sim_step(&m, 32, 4);
    }
    CHECK(m.finished_step[0] >= 0);
    CHECK(seq_n_generated(old) == 60);
    while (!all_done(&m) && guard++ < 20000)
        sim_step(&m, 32, 4);
    CHECK(all_done(&m));
    sim_destroy(&m);
}

/* Prefix hits at admission: a second request with the same prompt starts
 * from the cached full blocks and always recomputes its last token. */
static void test_prefix_admission(void)
{
    struct sim m;
    sim_init(&m, 64, 256, 8, true);
    struct seq *a = sim_add(&m, 48, 1, 5);
    while (!all_done(&m))
        sim_step(&m, 256, 8);
    struct seq *b = sim_add(&m, 48, 1, 5); /* same tokens, all 3 blocks full */
    struct sched_out so = sim_step(&m, 256, 8);
    CHECK(so.n_seqs == 1 && so.seqs[0] == b);
    CHECK(so.n_tokens == 16); /* blocks 0, 1 cached; block 2 recomputed for the last token */
    struct seq *c = sim_add(&m, 40, 1, 5);
    so = sim_step(&m, 256, 8);
    CHECK(so.seqs[0] == c && so.n_tokens == 8);
    uint64_t q, h;
    kvc_counters(m.kv, &q, &h);
    CHECK(q == 48 + 48 + 40 && h == 32 + 32);
    (void)a;
    sim_destroy(&m);
}

/* n > 1: the fork's extra sampling rows count against the budget and its
 * copy blocks and sequence slots are reserved at admission. */
static void test_fork_reservation(void)
{
    struct sim m;
    sim_init(&m, 64, 20, 4, false);
    struct seq *a = sim_add(&m, 18, 4, 1);
    a->fork_pending = 3; /* n = 4 */
    struct seq *b = sim_add(&m, 5, 4, 2);
    struct sched_out so = sim_step(&m, 20, 4);
    /* 18 tokens + 3 rows would be 21 > 20: the chunk stops short. */
    CHECK(so.n_seqs == 1 && a->n_new == 17 && so.n_rows_extra == 0);
    /* b can never join: a will need all 4 sequence slots. */
    CHECK(b->state == SEQ_WAITING);
    a->fork_pending = 3;
    sched_schedule(m.s, &so, true);
    CHECK(so.n_seqs == 1 && a->n_new == 1 && a->fork_now && so.n_rows_extra == 3);
    CHECK(b->state == SEQ_WAITING);
    a->fork_pending = 0;
    sim_destroy(&m);
}

/* Scheduling while a step runs (may_preempt false). */
static void test_schedule_ahead(void)
{
    struct sim m;
    sim_init(&m, 3, 64, 4, false);
    struct seq *a = sim_add(&m, 16, 8, 1); /* one block */
    struct seq *b = sim_add(&m, 32, 8, 2); /* two blocks: the cache is full */
    struct sched_out so;
    sched_schedule(m.s, &so, true);
    CHECK(so.n_seqs == 2 && a->admitted && b->admitted);
    /* The step is launched: a's next token has its place reserved, b's
     * step ends its sequence (nothing more to compute until it is done). */
    a->n_computed += a->n_new;
    b->n_computed += b->n_new;
    iv_push(&a->tokens, -1);
    struct seq *c = sim_add(&m, 4, 8, 3);
    /* a needs a third block for position 16: none is free. Ahead of the
     * step, nothing is preempted and nobody is admitted. */
    sched_schedule(m.s, &so, false);
    CHECK(so.n_seqs == 0 && so.memory_short && so.n_preempted == 0);
    CHECK(a->state == SEQ_RUNNING && b->state == SEQ_RUNNING && c->state == SEQ_WAITING);
    CHECK(!a->admitted && !b->admitted);
    /* Once the step is done (b finished), a goes on; c is admitted. */
    sched_remove(m.s, b);
    sched_schedule(m.s, &so, false);
    CHECK(!so.memory_short && so.n_seqs == 2 && so.seqs[0] == a && a->n_new == 1);
    CHECK(so.seqs[1] == c && c->admitted && !a->admitted);
    /* A sequence whose token is in flight has nothing to compute: skipped. */
    a->n_computed += a->n_new;
    c->n_computed += c->n_new;
    iv_push(&c->tokens, -1);
    sched_schedule(m.s, &so, false);
    CHECK(so.n_seqs == 1 && so.seqs[0] == c && a->n_new == 0);
    sim_destroy(&m);
}

int main(void)
{
    test_chunked_prefill();
    test_decode_first();
    test_budget_and_max_seqs();
    test_preemption();
    test_no_starvation();
    test_prefix_admission();
    test_fork_reservation();
    test_schedule_ahead();
    return test_result("test_sched");
}
