/*
 * test_sampling.c - unit tests of server/backend/sampling.c: logprobs and
 * top lists against a direct double computation, greedy ties, seeded draws
 * (reproducible per (seed, counter), frequencies matching the expected
 * probabilities), the top_k / top_p / min_p masks, the three penalties,
 * logit_bias and banned ids, and the partial-sort fast paths against a
 * brute-force full-sort sampler written here.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "rng.h"
#include "sampling.h"
#include "testing.h"

static struct logit_row make_row(const struct sampling_params *sp, uint64_t counter)
{
    return (struct logit_row){.token_index = 0,
                              .sample = true,
                              .target_id = -1,
                              .n_top = 0,
                              .sp = sp,
                              .rng_counter = counter};
}

static int32_t sample_once(struct smp_scratch *s, const float *logits, struct logit_row row)
{
    struct row_result r;
    smp_row(s, logits, &row, &r);
    return r.token;
}

static double chi_square(const int *counts, const double *p, int n, int total)
{
    double chi = 0.0;
    for (int i = 0; i < n; i++) {
        double e = p[i] * total;
        if (e == 0.0) {
            if (counts[i] != 0) return INFINITY;
            continue;
        }
        chi += (counts[i] - e) * (counts[i] - e) / e;
    }
    return chi;
}

/* Draws total tokens with counters 0..total-1 and checks the frequencies
 * against p with a chi-square bound (well above the 99.9% quantile for the
 * degrees of freedom used here; the seed is fixed, so this is deterministic). */
static void check_frequencies(struct smp_scratch *s, const float *logits, int vocab,
                              const struct sampling_params *sp, const double *p, double bound)
{
    enum { TOTAL = 20000 };
    int counts[64] = {0};
    for (int i = 0; i < TOTAL; i++) {
        int32_t t = sample_once(s, logits, make_row(sp, (uint64_t)i));
        CHECK(t >= 0 && t < vocab);
        if (t >= 0 && t < vocab) counts[t]++;
    }
    double chi = chi_square(counts, p, vocab, TOTAL);
    if (!(chi < bound)) fprintf(stderr, "chi-square %.2f >= %.2f\n", chi, bound);
    CHECK(chi < bound);
}

static void softmax_t(const float *logits, int n, double temp, double *p)
{
    double m = -INFINITY, z = 0.0;
    for (int i = 0; i < n; i++)
        m = fmax(m, logits[i] / temp);
    for (int i = 0; i < n; i++)
        z += exp(logits[i] / temp - m);
    for (int i = 0; i < n; i++)
        p[i] = exp(logits[i] / temp - m) / z;
}

static void test_logprobs(void)
{
    enum { V = 300 };
    float logits[V];
    for (int i = 0; i < V; i++)
        logits[i] = (float)sin(i * 0.37) * 4.0f;
    logits[17] = logits[5] = 9.0f; /* tie at the top: 5 before 17 */
    struct smp_scratch *s;
    CHECK(smp_scratch_create(V, &s, NULL) == ES_OK);
    double m = 9.0, z = 0.0;
    for (int i = 0; i < V; i++)
        z += exp((double)logits[i] - m);
    double lse = m + log(z);
    CHECK(fabs(smp_logsumexp(logits, V) - lse) < 1e-6); /* expf terms */

    struct sampling_params sp;
    sp_defaults(&sp);
    struct logit_row row = {
        .token_index = 0, .sample = false, .target_id = 123, .n_top = 20, .sp = &sp};
    struct row_result r;
    smp_row(s, logits, &row, &r);
    CHECK(r.token == -1);
    CHECK(r.n_top == 20);
    CHECK(r.top_ids[0] == 5 && r.top_ids[1] == 17);
    for (int j = 0; j < r.n_top; j++) {
        CHECK(fabs(r.top_logprobs[j] - (logits[r.top_ids[j]] - lse)) < 1e-5);
        if (j > 0) CHECK(r.top_logprobs[j] <= r.top_logprobs[j - 1]);
    }
    /* the 20th entry really is the 20th largest */
    int greater = 0;
    for (int i = 0; i < V; i++)
        greater += logits[i] > logits[r.top_ids[19]];
    CHECK(greater <= 19);
    CHECK(fabs(r.target_logprob - (logits[123] - lse)) < 1e-5);
    int rank = 1;
    for (int i = 0; i < V; i++)
        rank += logits[i] > logits[123] || (logits[i] == logits[123] && i < 123);
    CHECK(r.target_rank == rank);
    row.target_id = 17;
    smp_row(s, logits, &row, &r);
    CHECK(r.target_rank == 2);
    row.target_id = 5;
    smp_row(s, logits, &row, &r);
    CHECK(r.target_rank == 1);

    /* a sampled row reports the raw logprob of what it drew, whatever the
     * processing (here a big bias) */
    float bias_v = 50.0f;
    int32_t bias_id = 200;
    sp.temperature = 0.0f;
    sp.n_logit_bias = 1;
    sp.logit_bias_ids = &bias_id;
    sp.logit_bias_values = &bias_v;
    row = make_row(&sp, 0);
    row.n_top = -1;
    smp_row(s, logits, &row, &r);
    CHECK(r.token == 200 && r.n_top == 0);
    CHECK(fabs(r.logprob - (logits[200] - lse)) < 1e-5);
    smp_scratch_destroy(s);
}

static void test_edge_values(void)
{
    enum { V = 40 };
    float logits[V];
    for (int i = 0; i < V; i++)
        logits[i] = i % 3 == 0 ? -INFINITY : (float)i * 0.25f;
    logits[7] = -200.0f; /* far below the max: exp underflows */
    double z = 0.0;
    for (int i = 0; i < V; i++)
        z += exp((double)logits[i] - 9.75);
    double lse = smp_logsumexp(logits, V);
    CHECK(isfinite(lse) && fabs(lse - (9.75 + log(z))) < 1e-6);
    struct smp_scratch *s;
    CHECK(smp_scratch_create(V, &s, NULL) == ES_OK);
    struct sampling_params sp;
    sp_defaults(&sp);
    sp.seed = 5;
    for (uint64_t c = 0; c < 300; c++) {
        int32_t t = sample_once(s, logits, make_row(&sp, c));
        CHECK(t >= 0 && t < V && t % 3 != 0 && t != 7); /* -inf and e^-190 never drawn */
    }
    sp.min_p = 1.5f; /* nothing reaches it: the best token */
    CHECK(sample_once(s, logits, make_row(&sp, 0)) == 38);
    sp.min_p = 1.0f; /* only the max itself */
    CHECK(sample_once(s, logits, make_row(&sp, 1)) == 38);
    sp.min_p = 0.0f;
    sp.top_k = 1;
    CHECK(sample_once(s, logits, make_row(&sp, 2)) == 38);
    /* all banned: still an id in range */
    float all_banned[V];
    for (int i = 0; i < V; i++)
        all_banned[i] = -INFINITY;
    int32_t t = sample_once(s, all_banned, make_row(&sp, 3));
    CHECK(t >= 0 && t < V);
    smp_scratch_destroy(s);
}

static void test_greedy(void)
{
    float logits[6] = {0.5f, 3.0f, -1.0f, 3.0f, 2.9f, -INFINITY};
    struct smp_scratch *s;
    CHECK(smp_scratch_create(6, &s, NULL) == ES_OK);
    struct sampling_params sp;
    sp_defaults(&sp);
    sp.temperature = 0.0f;
    for (uint64_t c = 0; c < 10; c++)
        CHECK(sample_once(s, logits, make_row(&sp, c)) == 1);
    /* banned ids */
    int32_t banned[] = {1, 3};
    struct logit_row row = make_row(&sp, 0);
    row.banned_ids = banned;
    row.n_banned = 2;
    CHECK(sample_once(s, logits, row) == 4);
    /* no sp at all means greedy */
    row = make_row(NULL, 0);
    CHECK(sample_once(s, logits, row) == 1);
    smp_scratch_destroy(s);
}

static void test_seeds(void)
{
    enum { V = 1000 };
    float logits[V];
    for (int i = 0; i < V; i++)
        logits[i] = 0.0f; /* uniform */
    struct smp_scratch *s;
    CHECK(smp_scratch_create(V, &s, NULL) == ES_OK);
    struct sampling_params sp;
    sp_defaults(&sp);
    sp.seed = 1234;
    int32_t first[64];
    for (int c = 0; c < 64; c++)
        first[c] = sample_once(s, logits, make_row(&sp, (uint64_t)c));
    for (int c = 0; c < 64; c++)
        CHECK(sample_once(s, logits, make_row(&sp, (uint64_t)c)) == first[c]);
    int distinct = 0;
    for (int c = 0; c < 64; c++) {
        int seen = 0;
        for (int d = 0; d < c; d++)
            seen |= first[d] == first[c];
        distinct += !seen;
    }
    CHECK(distinct > 50); /* 64 uniform draws from 1000 rarely collide */
    sp.seed = 1235;
    int same = 0;
    for (int c = 0; c < 64; c++)
        same += sample_once(s, logits, make_row(&sp, (uint64_t)c)) == first[c];
    CHECK(same < 5);
    /* the RNG itself */
    CHECK(rng_uniform(7, 3) == rng_uniform(7, 3));
    CHECK(rng_uniform(7, 3) != rng_uniform(7, 4));
    CHECK(rng_uniform(7, 3) != rng_uniform(8, 3));
    double mean = 0.0;
    for (int i = 0; i < 100000; i++) {
        double u = rng_uniform(99, (uint64_t)i);
        CHECK(u >= 0.0 && u < 1.0);
        mean += u;
    }
    CHECK(fabs(mean / 100000 - 0.5) < 0.005);
    smp_scratch_destroy(s);
}

static void test_temperature_frequencies(void)
{
    enum { V = 8 };
    float logits[V] = {1.0f, 0.2f, -0.5f, 2.0f, 0.0f, 1.5f, -2.0f, 0.7f};
    struct smp_scratch *s;
    CHECK(smp_scratch_create(V, &s, NULL) == ES_OK);
    struct sampling_params sp;
    sp_defaults(&sp);
    sp.seed = 42;
    double p[V];
    for (int k = 0; k < 3; k++) {
        double temps[] = {1.0, 0.7, 1.8};
        sp.temperature = (float)temps[k];
        softmax_t(logits, V, temps[k], p);
        check_frequencies(s, logits, V, &sp, p, 35.0); /* df 7: 99.9% at 24.3 */
    }
    smp_scratch_destroy(s);
}

static void test_masks(void)
{
    enum { V = 6 };
    /* probabilities 0.4, 0.25, 0.15, 0.1, 0.06, 0.04 */
    double probs[V] = {0.4, 0.25, 0.15, 0.1, 0.06, 0.04};
    float logits[V];
    int order[V] = {3, 0, 5, 1, 4, 2}; /* token order[i] has probs[i] */
    for (int i = 0; i < V; i++)
        logits[order[i]] = (float)log(probs[i]);
    struct smp_scratch *s;
    CHECK(smp_scratch_create(V, &s, NULL) == ES_OK);
    struct sampling_params sp;
    sp_defaults(&sp);
    sp.seed = 7;
    double p[V] = {0};

    /* top_k 3: tokens 3, 0, 5 renormalised */
    sp.top_k = 3;
    p[3] = 0.4 / 0.8, p[0] = 0.25 / 0.8, p[5] = 0.15 / 0.8;
    check_frequencies(s, logits, V, &sp, p, 25.0);

    /* top_p 0.6: cumulative before token: 0, 0.4, 0.65 -> keeps 3, 0 */
    sp.top_k = 0;
    sp.top_p = 0.6f;
    for (int i = 0; i < V; i++)
        p[i] = 0;
    p[3] = 0.4 / 0.65, p[0] = 0.25 / 0.65;
    check_frequencies(s, logits, V, &sp, p, 25.0);

    /* top_p applies to the top-k distribution: k = 3 -> 0.5, 0.3125, 0.1875;
     * top_p 0.85: before 5 is 0.8125 < 0.85, so all three stay */
    sp.top_k = 3;
    sp.top_p = 0.85f;
    p[3] = 0.4 / 0.8, p[0] = 0.25 / 0.8, p[5] = 0.15 / 0.8;
    check_frequencies(s, logits, V, &sp, p, 25.0);

    /* tiny top_p keeps exactly the best token */
    sp.top_k = 0;
    sp.top_p = 1e-6f;
    for (uint64_t c = 0; c < 50; c++)
        CHECK(sample_once(s, logits, make_row(&sp, c)) == 3);

    /* min_p 0.3: keeps p >= 0.12, tokens 3, 0, 5 */
    sp.top_p = 1.0f;
    sp.min_p = 0.3f;
    for (int i = 0; i < V; i++)
        p[i] = 0;
    p[3] = 0.4 / 0.8, p[0] = 0.25 / 0.8, p[5] = 0.15 / 0.8;
    check_frequencies(s, logits, V, &sp, p, 25.0);
    smp_scratch_destroy(s);
}

static void test_penalties(void)
{
    struct smp_scratch *s;
    CHECK(smp_scratch_create(4, &s, NULL) == ES_OK);
    struct sampling_params sp;
    sp_defaults(&sp);
    sp.temperature = 0.0f;

    /* repetition: positive logits divided, once per distinct token */
    float pos[4] = {0.5f, 1.5f, -3.0f, -3.0f};
    int32_t hist_rep[] = {1, 1, 1};
    struct logit_row row = make_row(&sp, 0);
    row.history = hist_rep;
    row.n_history = 3;
    row.n_history_prompt = 3;     /* prompt tokens count for repetition */
    sp.repetition_penalty = 2.0f; /* 1.5 -> 0.75 (not 0.1875): still the best */
    CHECK(sample_once(s, pos, row) == 1);
    sp.repetition_penalty = 4.0f; /* 1.5 -> 0.375 < 0.5 */
    CHECK(sample_once(s, pos, row) == 0);
    /* negative logits are multiplied */
    float neg[4] = {-1.0f, -1.2f, -5.0f, -5.0f};
    int32_t hist_neg[] = {0};
    row.history = hist_neg;
    row.n_history = 1;
    row.n_history_prompt = 0;
    sp.repetition_penalty = 1.5f; /* -1.0 -> -1.5 < -1.2 */
    CHECK(sample_once(s, neg, row) == 1);
    sp.repetition_penalty = 1.0f;
    CHECK(sample_once(s, neg, row) == 0);

    /* presence / frequency: generated tokens only */
    float lg[4] = {1.0f, 2.0f, -3.0f, -3.0f};
    int32_t hist[] = {1, 1, 1, 2};
    row.history = hist;
    row.n_history = 1;
    row.n_history_prompt = 1; /* the 1 is prompt: no effect */
    sp.presence_penalty = 5.0f;
    CHECK(sample_once(s, lg, row) == 1);
    row.n_history = 2; /* one generated 1: 2 - 0.5 = 1.5 > 1 */
    sp.presence_penalty = 0.5f;
    CHECK(sample_once(s, lg, row) == 1);
    sp.presence_penalty = 1.5f; /* 0.5 < 1 */
    CHECK(sample_once(s, lg, row) == 0);
    sp.presence_penalty = 0.0f;
    sp.frequency_penalty = 0.4f;
    row.n_history = 3; /* two generated: 2 - 0.8 = 1.2 */
    CHECK(sample_once(s, lg, row) == 1);
    row.n_history = 4;
    row.n_history_prompt = 0; /* three generated 1s: 2 - 1.2 = 0.8 */
    CHECK(sample_once(s, lg, row) == 0);
    /* a second call sees the same state (counts were reset) */
    CHECK(sample_once(s, lg, row) == 0);

    /* penalties shape the sampled distribution exactly */
    sp = (struct sampling_params){0};
    sp_defaults(&sp);
    sp.seed = 3;
    sp.frequency_penalty = 0.5f;
    sp.presence_penalty = 0.25f;
    row = make_row(&sp, 0);
    row.history = hist;
    row.n_history = 4;
    row.n_history_prompt = 0;
    float adj[4] = {1.0f, 2.0f - 0.25f - 1.5f, -3.0f - 0.25f - 0.5f, -3.0f};
    double p[4];
    softmax_t(adj, 4, 1.0, p);
    int counts[4] = {0};
    for (int i = 0; i < 20000; i++) {
        row.rng_counter = (uint64_t)i;
        counts[sample_once(s, lg, row)]++;
    }
    CHECK(chi_square(counts, p, 4, 20000) < 25.0);
    smp_scratch_destroy(s);
}

static void test_bias(void)
{
    enum { V = 5 };
    float logits[V] = {0.0f, 1.0f, 2.0f, 0.5f, -1.0f};
    struct smp_scratch *s;
    CHECK(smp_scratch_create(V, &s, NULL) == ES_OK);
    struct sampling_params sp;
    sp_defaults(&sp);
    sp.seed = 11;
    int32_t ids[] = {4, 2};
    float vals[] = {100.0f, -100.0f};
    sp.n_logit_bias = 2;
    sp.logit_bias_ids = ids;
    sp.logit_bias_values = vals;
    for (uint64_t c = 0; c < 200; c++)
        CHECK(sample_once(s, logits, make_row(&sp, c)) == 4);
    /* a bias that only reshapes: +1 on token 0 */
    float v1 = 1.0f;
    int32_t id0 = 0;
    sp.n_logit_bias = 1;
    sp.logit_bias_ids = &id0;
    sp.logit_bias_values = &v1;
    float adj[V] = {1.0f, 1.0f, 2.0f, 0.5f, -1.0f};
    double p[V];
    softmax_t(adj, V, 1.0, p);
    check_frequencies(s, logits, V, &sp, p, 30.0);
    /* banned ids are never drawn */
    int32_t banned[] = {2, 1};
    for (uint64_t c = 0; c < 500; c++) {
        struct logit_row row = make_row(&sp, c);
        row.banned_ids = banned;
        row.n_banned = 2;
        int32_t t = sample_once(s, logits, row);
        CHECK(t != 1 && t != 2);
    }
    smp_scratch_destroy(s);
}

/* ---- brute force reference for the partial-sort paths ---- */

struct ref_cand {
    float w, p;
    int32_t id;
};

static int ref_cmp(const void *a, const void *b)
{
    const struct ref_cand *x = a, *y = b;
    if (x->w != y->w) return x->w > y->w ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* Sorts the candidates of one case once; the draws then only walk them. */
static void ref_prepare(const float *logits, int V, const struct sampling_params *sp,
                        struct ref_cand *c)
{
    float m = -INFINITY;
    for (int i = 0; i < V; i++)
        m = fmaxf(m, logits[i] / sp->temperature);
    for (int i = 0; i < V; i++) {
        float w = logits[i] / sp->temperature;
        c[i] = (struct ref_cand){w, expf(w - m), i};
    }
    qsort(c, (size_t)V, sizeof(*c), ref_cmp);
}

/* Checks a drawn token against the full-sort reference: it must lie in
 * the reference's kept prefix and its cumulative-mass interval must hold
 * u * Z, both up to eps (the sampler's exp and summation order differ from
 * libm's expf and this sequential sum by round-off). Returns 1 when the
 * token is also exactly the reference's own draw. */
static int ref_check(int V, const struct sampling_params *sp, uint64_t counter,
                     const struct ref_cand *c, int32_t got)
{
    int n = sp->top_k > 0 && sp->top_k < V ? sp->top_k : V;
    double zk = 0.0;
    for (int i = 0; i < n; i++)
        zk += c[i].p;
    double eps = 1e-5 * zk;
    int keep = 0;
    double cum = 0.0;
    for (int i = 0; i < n; i++) {
        if (i > 0 && sp->top_p < 1.0f && cum >= (double)sp->top_p * zk) break;
        if (c[i].p < sp->min_p) break;
        cum += c[i].p;
        keep++;
    }
    double target = rng_uniform(sp->seed, counter) * cum, run = 0.0;
    int32_t want = c[keep - 1].id;
    for (int i = 0; i < keep; i++) {
        run += c[i].p;
        if (run > target) {
            want = c[i].id;
            break;
        }
    }
    if (got == want) return 1;
    /* not the same token: only acceptable right at a boundary */
    double before_got = 0.0;
    int idx = -1;
    for (int i = 0; i < n && idx < 0; i++) {
        if (c[i].id == got)
            idx = i;
        else
            before_got += c[i].p;
    }
    CHECK(idx >= 0 && idx <= keep);
    if (idx < 0) return 0;
    if (idx == keep) { /* one past the nucleus: its start must sit on the limit */
        CHECK(fabs(before_got - (double)sp->top_p * zk) < eps);
        return 0;
    }
    CHECK(target > before_got - eps && target < before_got + c[idx].p + eps);
    return 0;
}

static void test_against_full_sort(void)
{
    enum { V = 50000 };
    float *logits = malloc(sizeof(float) * V);
    struct ref_cand *c = malloc(sizeof(*c) * V);
    struct smp_scratch *s;
    CHECK(smp_scratch_create(V, &s, NULL) == ES_OK);
    struct {
        float scale, temp, top_p, min_p;
        int top_k;
    } cases[] = {
        {8.0f, 1.0f, 1.0f, 0.0f, 0},    {8.0f, 0.8f, 0.9f, 0.0f, 0},
        {8.0f, 1.0f, 0.95f, 0.0f, 40},  {1.0f, 1.0f, 1.0f, 0.0f, 0},
        {1.0f, 1.3f, 0.5f, 0.0f, 0},    {0.05f, 1.0f, 0.9f, 0.0f, 0},
        {0.05f, 1.0f, 1.0f, 0.0f, 0},   {3.0f, 1.0f, 1.0f, 0.05f, 0},
        {3.0f, 1.0f, 1.0f, 0.0f, 2000}, {20.0f, 0.5f, 0.99f, 0.0f, 5},
        {3.0f, 1.0f, 0.9f, 0.02f, 100}, {3.0f, 1.0f, 0.8f, 0.01f, 0},
        {0.05f, 0.7f, 0.3f, 0.999f, 0},
    };
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        uint64_t x = 12345 + k;
        for (int i = 0; i < V; i++) {
            x = x * 6364136223846793005ULL + 1442695040888963407ULL;
            double g = ((double)(x >> 11) / 9007199254740992.0) * 2.0 - 1.0;
            logits[i] = (float)(g * g * g * cases[k].scale);
        }
        struct sampling_params sp;
        sp_defaults(&sp);
        sp.seed = 99 + k;
        sp.temperature = cases[k].temp;
        sp.top_p = cases[k].top_p;
        sp.top_k = cases[k].top_k;
        sp.min_p = cases[k].min_p;
        int mismatches = 0;
        ref_prepare(logits, V, &sp, c);
        for (uint64_t ctr = 0; ctr < 16; ctr++) {
            int32_t a = sample_once(s, logits, make_row(&sp, ctr));
            mismatches += !ref_check(V, &sp, ctr, c, a);
        }
        if (mismatches) fprintf(stderr, "case %zu: %d boundary mismatches\n", k, mismatches);
        CHECK(mismatches <= 2); /* each one was checked to sit on a boundary */
    }
    smp_scratch_destroy(s);
    free(c);
    free(logits);
}

int main(void)
{
    test_logprobs();
    test_greedy();
    test_edge_values();
    test_seeds();
    test_temperature_frequencies();
    test_masks();
    test_penalties();
    test_bias();
    test_against_full_sort();
    return test_result("sampling");
}
