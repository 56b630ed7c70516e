/*
 * test_kvcache.c - the KV block manager: allocation, sharing, prefix-cache
 * hits, LRU eviction order, fork copy-on-write, and every invariant under
 * 200k random operations checked against a simulated KV memory (each slot
 * remembers the token written there, so a wrongly shared or stale block
 * shows up as a content mismatch).
 */
#include <stdlib.h>

#include "kvcache.h"
#include "testing.h"

#define BS 16

static uint64_t rng_state = 88172645463325252ULL;
static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}
static int rndn(int n)
{
    return (int)(rnd() % (uint64_t)n);
}

/* Simulated KV memory: the token id written at each physical slot. */
static int32_t *kvmem;

struct mseq {
    struct kvc_seq kv;
    int32_t tokens[512];
    int n_tokens;   /* tokens known */
    int n_computed; /* tokens written to KV */
    bool live;
};

static void write_kv(struct mseq *m, int from, int to)
{
    for (int t = from; t < to; t++)
        kvmem[kvc_slot(&m->kv, BS, t)] = m->tokens[t];
}

static bool kv_matches(const struct mseq *m, int n)
{
    for (int t = 0; t < n; t++)
        if (kvmem[kvc_slot(&m->kv, BS, t)] != m->tokens[t]) return false;
    return true;
}

static void test_basics(void)
{
    struct kvcache *kv;
    struct es_err err = {{0}};
    CHECK(kvc_create(8, BS, 8, true, &kv, &err) == ES_OK);
    CHECK(kvc_num_free(kv) == 8 && kvc_blocks_for(kv, 17) == 2 && kvc_blocks_for(kv, 16) == 1);
    struct kvc_seq a, b, c;
    kvc_seq_init(kv, &a);
    kvc_seq_init(kv, &b);
    kvc_seq_init(kv, &c);
    int32_t toks[128];
    for (int i = 0; i < 128; i++)
        toks[i] = 1000 + i;
    int32_t found[8];
    int unref = -1;
    CHECK(kvc_lookup(kv, toks, 40, found, &unref) == 0 && unref == 0);
    CHECK(kvc_allocate(kv, &a, found, 0, 40) == ES_OK);
    CHECK(a.n_blocks == 3 && kvc_num_free(kv) == 5);
    /* Not committed yet: nothing is findable. */
    CHECK(kvc_lookup(kv, toks, 40, found, &unref) == 0);
    kvc_commit(kv, &a, toks, 40);
    CHECK(a.n_hashed == 2);
    CHECK(kvc_lookup(kv, toks, 40, found, &unref) == 2 && unref == 0);
    CHECK(found[0] == a.table[0] && found[1] == a.table[1]);
    /* Share: b takes the two cached blocks and one fresh one. */
    CHECK(kvc_allocate(kv, &b, found, 2, 33) == ES_OK);
    CHECK(b.table[0] == a.table[0] && b.table[2] != a.table[2]);
    CHECK(kvc_block_ref(kv, a.table[0]) == 2 && kvc_block_ref(kv, a.table[2]) == 1);
    CHECK(kvc_num_free(kv) == 4);
    /* A different token in block 1 stops the match after block 0. */
    toks[20] = 7;
    CHECK(kvc_lookup(kv, toks, 40, found, &unref) == 1);
    toks[20] = 1020;
    /* Only whole blocks count. */
    CHECK(kvc_lookup(kv, toks, 31, found, &unref) == 1);
    kvc_free(kv, &a);
    CHECK(kvc_num_free(kv) == 5); /* blocks 0,1 still held by b */
    kvc_free(kv, &b);
    CHECK(kvc_num_free(kv) == 8);
    /* Freed cached blocks stay findable, unreferenced. */
    CHECK(kvc_lookup(kv, toks, 40, found, &unref) == 2 && unref == 2);
    CHECK(kvc_can_allocate(kv, 2, 2, 8 * BS, 0));
    CHECK(!kvc_can_allocate(kv, 2, 2, 8 * BS, 1));
    CHECK(!kvc_can_allocate(kv, 0, 0, 9 * BS, 0)); /* over max blocks per seq */
    /* Growing and running out. */
    CHECK(kvc_allocate(kv, &c, found, 0, 1) == ES_OK);
    CHECK(kvc_append_slots(kv, &c, 16) == ES_OK && c.n_blocks == 1);
    CHECK(kvc_append_slots(kv, &c, 17) == ES_OK && c.n_blocks == 2);
    CHECK(kvc_append_slots(kv, &c, 8 * BS + 1) == ES_EFULL && c.n_blocks == 2);
    CHECK(kvc_append_slots(kv, &c, 8 * BS) == ES_OK && kvc_num_free(kv) == 0);
    /* Everything evicted now: nothing cached remains findable. */
    CHECK(kvc_lookup(kv, toks, 40, found, &unref) == 0);
    const struct kvc_seq *all[] = {&c};
    CHECK(kvc_check(kv, all, 1));
    kvc_seq_destroy(kv, &a);
    kvc_seq_destroy(kv, &b);
    kvc_seq_destroy(kv, &c);
    CHECK(kvc_num_free(kv) == 8);
    uint64_t q, h;
    kvc_record_lookup(kv, 40, 32);
    kvc_counters(kv, &q, &h);
    CHECK(q == 40 && h == 32);
    kvc_destroy(kv);
}

/* Released cached blocks are evicted least recently released first, and
 * never-cached blocks before any cached one. */
static void test_lru(void)
{
    struct kvcache *kv;
    struct es_err err = {{0}};
    CHECK(kvc_create(6, BS, 6, true, &kv, &err) == ES_OK);
    int32_t t[3][BS];
    struct kvc_seq s[3], x;
    int32_t found[6];
    int unref;
    for (int i = 0; i < 3; i++) {
        for (int j = 0; j < BS; j++)
            t[i][j] = 100 * i + j;
        kvc_seq_init(kv, &s[i]);
        CHECK(kvc_allocate(kv, &s[i], found, 0, BS) == ES_OK);
        kvc_commit(kv, &s[i], t[i], BS);
    }
    kvc_free(kv, &s[1]);
    kvc_free(kv, &s[0]);
    kvc_free(kv, &s[2]);
    /* Order of release: 1, 0, 2. Three blocks were never used. */
    kvc_seq_init(kv, &x);
    CHECK(kvc_allocate(kv, &x, found, 0, 3 * BS) == ES_OK); /* takes the 3 unused */
    for (int i = 0; i < 3; i++)
        CHECK(kvc_lookup(kv, t[i], BS, found, &unref) == 1);
    CHECK(kvc_append_slots(kv, &x, 4 * BS) == ES_OK); /* evicts 1 */
    CHECK(kvc_lookup(kv, t[1], BS, found, &unref) == 0);
    CHECK(kvc_lookup(kv, t[0], BS, found, &unref) == 1);
    /* A hit refreshes nothing until released again: take 0, release it. */
    struct kvc_seq y;
    kvc_seq_init(kv, &y);
    CHECK(kvc_lookup(kv, t[0], BS, found, &unref) == 1 && unref == 1);
    CHECK(kvc_allocate(kv, &y, found, 1, BS) == ES_OK);
    kvc_free(kv, &y);                                 /* 0 is now the most recently released */
    CHECK(kvc_append_slots(kv, &x, 5 * BS) == ES_OK); /* evicts 2 */
    CHECK(kvc_lookup(kv, t[2], BS, found, &unref) == 0);
    CHECK(kvc_lookup(kv, t[0], BS, found, &unref) == 1);
    /* Block hashes chain over the prefix: t[0] as a second block misses. */
    int32_t two[2 * BS];
    for (int j = 0; j < BS; j++)
        two[j] = 999, two[BS + j] = t[0][j];
    CHECK(kvc_lookup(kv, two, 2 * BS, found, &unref) == 0);
    const struct kvc_seq *all[] = {&x};
    CHECK(kvc_check(kv, all, 1));
    for (int i = 0; i < 3; i++)
        kvc_seq_destroy(kv, &s[i]);
    kvc_seq_destroy(kv, &x);
    kvc_seq_destroy(kv, &y);
    kvc_destroy(kv);
}

static void test_fork(void)
{
    struct kvcache *kv;
    struct es_err err = {{0}};
    CHECK(kvc_create(10, BS, 10, true, &kv, &err) == ES_OK);
    struct kvc_seq p, c1, c2;
    kvc_seq_init(kv, &p);
    kvc_seq_init(kv, &c1);
    kvc_seq_init(kv, &c2);
    int32_t toks[40], found[4], src = -1, dst = -1;
    int nc = -1;
    for (int i = 0; i < 40; i++)
        toks[i] = i;
    CHECK(kvc_allocate(kv, &p, found, 0, 20) == ES_OK);
    kvc_commit(kv, &p, toks, 20);
    CHECK(kvc_fork(kv, &p, &c1, 20, &src, &dst, &nc) == ES_OK);
    CHECK(nc == 1 && src == p.table[1] && dst == c1.table[1] && dst != src);
    CHECK(c1.table[0] == p.table[0] && kvc_block_ref(kv, p.table[0]) == 2);
    CHECK(c1.n_hashed == 1);
    /* A block-aligned fork shares everything and copies nothing. */
    CHECK(kvc_fork(kv, &p, &c2, 16, &src, &dst, &nc) == ES_OK && nc == 0);
    CHECK(c2.n_blocks == 1 && kvc_block_ref(kv, p.table[0]) == 3);
    const struct kvc_seq *all[] = {&p, &c1, &c2};
    CHECK(kvc_check(kv, all, 3));
    kvc_seq_destroy(kv, &p);
    kvc_seq_destroy(kv, &c1);
    kvc_seq_destroy(kv, &c2);
    CHECK(kvc_num_free(kv) == 10);
    kvc_destroy(kv);
}

/* Prompt-logprob rows kept beside cached blocks. */
static void test_plp(void)
{
    struct kvcache *kv;
    struct es_err err = {{0}};
    CHECK(kvc_create(4, BS, 4, true, &kv, &err) == ES_OK);
    int32_t toks[64], found[4], top[KVC_PLP_TOP] = {1, 2, 3, 4, 5}, got_top[KVC_PLP_TOP];
    float top_lp[KVC_PLP_TOP] = {-1, -2, -3, -4, -5}, got_lp[KVC_PLP_TOP], lp;
    int unref, n_top;
    for (int i = 0; i < 64; i++)
        toks[i] = 500 + i;
    struct kvc_seq a, b, x;
    kvc_seq_init(kv, &a);
    kvc_seq_init(kv, &b);
    kvc_seq_init(kv, &x);
    CHECK(kvc_allocate(kv, &a, found, 0, 40) == ES_OK);
    kvc_commit(kv, &a, toks, 40);
    /* Rows for token indices 0..38 (the last index is the sampling row). */
    for (int i = 0; i < 39; i++)
        kvc_plp_store(kv, a.table[i / BS], i % BS, toks[i + 1], -0.5f * (float)i, top, top_lp, 3);
    CHECK(kvc_lookup(kv, toks, 63, found, &unref) == 2);
    CHECK(kvc_plp_usable(kv, found, 2, toks, 64, 3) == 2);
    CHECK(kvc_plp_usable(kv, found, 2, toks, 64, 4) == 0); /* only 3 top entries kept */
    toks[32] = 7;                                          /* block 1's last row scored token 32 */
    CHECK(kvc_plp_usable(kv, found, 2, toks, 64, 1) == 1);
    toks[32] = 532;
    CHECK(kvc_plp_load(kv, a.table[1], 4, &lp, got_top, got_lp, &n_top));
    CHECK(lp == -10.0f && n_top == 3 && got_top[2] == 3 && got_lp[1] == -2.0f);
    CHECK(!kvc_plp_load(kv, a.table[2], 7, &lp, got_top, got_lp, &n_top));
    /* Unhashed blocks are reused first: the cached blocks and rows survive. */
    kvc_free(kv, &a);
    CHECK(kvc_allocate(kv, &x, found, 0, 2 * BS) == ES_OK);
    CHECK(kvc_lookup(kv, toks, 63, found, &unref) == 2);
    kvc_free(kv, &x);
    /* After eviction the rows are gone with the block. */
    CHECK(kvc_allocate(kv, &x, found, 0, 4 * BS) == ES_OK);
    CHECK(kvc_lookup(kv, toks, 63, found, &unref) == 0);
    kvc_free(kv, &x);
    /* Plain KV, then a scoring pass over the same tokens: rows reach the
     * registered blocks through the duplicates. */
    CHECK(kvc_allocate(kv, &a, found, 0, 33) == ES_OK);
    kvc_commit(kv, &a, toks, 33);
    kvc_free(kv, &a);
    CHECK(kvc_allocate(kv, &b, found, 0, 33) == ES_OK);
    kvc_commit(kv, &b, toks, 33);
    for (int i = 0; i < 32; i++)
        kvc_plp_store(kv, b.table[i / BS], i % BS, toks[i + 1], -1.0f, top, top_lp, 5);
    kvc_free(kv, &b);
    CHECK(kvc_lookup(kv, toks, 63, found, &unref) == 2);
    CHECK(kvc_plp_usable(kv, found, 2, toks, 64, 5) == 2);
    kvc_seq_destroy(kv, &a);
    kvc_seq_destroy(kv, &b);
    kvc_seq_destroy(kv, &x);
    kvc_destroy(kv);
}

#define NSEQ 24
#define NBLK 96
#define MAXB 32

static void test_random(int n_ops, bool prefix_caching)
{
    struct kvcache *kv;
    struct es_err err = {{0}};
    CHECK(kvc_create(NBLK, BS, MAXB, prefix_caching, &kv, &err) == ES_OK);
    kvmem = malloc(NBLK * BS * sizeof(int32_t));
    for (int i = 0; i < NBLK * BS; i++)
        kvmem[i] = -1;
    static struct mseq m[NSEQ];
    for (int i = 0; i < NSEQ; i++) {
        kvc_seq_init(kv, &m[i].kv);
        m[i].live = false;
    }
    /* A few base prompts so that prefixes repeat. */
    int32_t base[4][512];
    for (int b = 0; b < 4; b++)
        for (int t = 0; t < 512; t++)
            base[b][t] = b * 7 + t % 5;
    int32_t found[MAXB];
    long hits = 0, fulls = 0, violations = 0;
    for (int op = 0; op < n_ops; op++) {
        int i = rndn(NSEQ);
        struct mseq *s = &m[i];
        int what = rndn(10);
        if (!s->live && what < 6) {
            /* New sequence: a base prefix, then random tokens. */
            int b = rndn(4), shared = rndn(6 * BS), n = 1 + rndn(10 * BS);
            s->n_tokens = n;
            for (int t = 0; t < n; t++)
                s->tokens[t] = t < shared ? base[b][t] : 100 + rndn(1000);
            int unref;
            int nb = kvc_lookup(kv, s->tokens, n - 1, found, &unref);
            int cached = nb * BS;
            int chunk = 1 + rndn(n - cached);
            if (!kvc_can_allocate(kv, nb, unref, cached + chunk, 0)) {
                CHECK(kvc_allocate(kv, &s->kv, found, nb, cached + chunk) == ES_EFULL);
                fulls++;
                continue;
            }
            CHECK(kvc_allocate(kv, &s->kv, found, nb, cached + chunk) == ES_OK);
            hits += nb;
            /* The cached prefix must hold exactly these tokens. */
            if (!kv_matches(s, cached)) violations++;
            write_kv(s, cached, cached + chunk);
            s->n_computed = cached + chunk;
            kvc_commit(kv, &s->kv, s->tokens, s->n_computed);
            s->live = true;
        } else if (s->live && what < 6) {
            /* Compute more: rest of the prompt, or decode new tokens. */
            if (s->n_computed == s->n_tokens) {
                if (s->n_tokens >= MAXB * BS - 1) continue;
                s->tokens[s->n_tokens++] = 100 + rndn(1000);
            }
            int add = 1 + rndn(s->n_tokens - s->n_computed);
            if (kvc_append_slots(kv, &s->kv, s->n_computed + add) != ES_OK) {
                fulls++;
                continue;
            }
            write_kv(s, s->n_computed, s->n_computed + add);
            s->n_computed += add;
            kvc_commit(kv, &s->kv, s->tokens, s->n_computed);
        } else if (s->live && what < 8) {
            kvc_free(kv, &s->kv);
            s->live = false;
        } else if (s->live && what == 8 && s->n_computed > 0) {
            /* Fork into a dead slot. */
            int j = rndn(NSEQ);
            struct mseq *d = &m[j];
            if (d->live) continue;
            int32_t src, dst;
            int nc;
            if (kvc_fork(kv, &s->kv, &d->kv, s->n_computed, &src, &dst, &nc) != ES_OK) {
                fulls++;
                continue;
            }
            for (int k = 0; k < nc; k++)
                for (int t = 0; t < BS; t++)
                    kvmem[dst * BS + t] = kvmem[src * BS + t];
            memcpy(d->tokens, s->tokens, sizeof(s->tokens));
            d->n_tokens = d->n_computed = s->n_computed;
            d->live = true;
            kvc_commit(kv, &d->kv, d->tokens, d->n_computed);
        }
        /* Every live sequence still sees its own tokens. */
        if (op % 97 == 0) {
            const struct kvc_seq *all[NSEQ];
            int n = 0, used = 0;
            for (int k = 0; k < NSEQ; k++) {
                if (!m[k].live) continue;
                all[n++] = &m[k].kv;
                if (!kv_matches(&m[k], m[k].n_computed)) violations++;
            }
            if (!kvc_check(kv, all, n)) violations++;
            /* Free count = blocks nobody holds. */
            bool held[NBLK] = {0};
            for (int k = 0; k < n; k++)
                for (int b = 0; b < all[k]->n_blocks; b++)
                    held[all[k]->table[b]] = true;
            for (int b = 0; b < NBLK; b++)
                used += held[b];
            if (kvc_num_free(kv) != NBLK - used) violations++;
        }
    }
    CHECK(violations == 0);
    CHECK(fulls > 0);                   /* the pool did run out sometimes */
    CHECK(!prefix_caching || hits > 0); /* and prefixes were reused */
    for (int i = 0; i < NSEQ; i++)
        kvc_seq_destroy(kv, &m[i].kv);
    CHECK(kvc_num_free(kv) == NBLK);
    fprintf(stderr, "random(%d ops, prefix %d): %ld block hits, %ld full\n", n_ops, prefix_caching,
            hits, fulls);
    free(kvmem);
    kvc_destroy(kv);
}

int main(void)
{
    test_basics();
    test_lru();
    test_fork();
    test_plp();
    test_random(200000, true);
    test_random(20000, false);
    return test_result("test_kvcache");
}
