/*
 * sampling.c - the reference sampler: log-probabilities, top logprobs,
 * scoring targets and the seeded draw for one row of logits (semantics in
 * sampling.h), plus sp_defaults().
 *
 * Owns only its scratch buffers, sized once per vocabulary; smp_row never
 * allocates and never touches global state, so the backends call it from
 * any number of threads with one scratch each. It must never depend on
 * anything but the row's own logits, parameters, seed and counter (no
 * batch neighbours, no clocks).
 *
 * Cost: O(vocab) scans, a heap for small top_k, and sorting only the head
 * of the distribution that the nucleus or the draw can reach (a full sort
 * only when the distribution is so flat that the head is everything).
 */
#include "sampling.h"

#include <math.h>
#include <stdlib.h>

#include "rng.h"

/* A candidate token after processing: w = processed logit, p = exp(w - max). */
struct smp_cand {
    float w;
    float p;
    int32_t id;
};

struct smp_scratch {
    int vocab;
    float *w;              /* [vocab] processed logits */
    struct smp_cand *cand; /* [vocab] tokens still in the running */
    struct smp_cand *heap; /* [SMP_HEAP_MAX] top_k selection */
    int32_t *counts;       /* [vocab] occurrence counts; all zero between calls */
};

/* top_k up to this uses a heap; larger ones sort. */
#define SMP_HEAP_MAX 1024
/* Candidate sets up to this size are sorted outright. */
#define SMP_SMALL_SORT 2048

void sp_defaults(struct sampling_params *sp)
{
    *sp = (struct sampling_params){
        .temperature = 1.0f,
        .top_p = 1.0f,
        .top_k = 0,
        .min_p = 0.0f,
        .presence_penalty = 0.0f,
        .frequency_penalty = 0.0f,
        .repetition_penalty = 1.0f,
        .n_logit_bias = 0,
        .logit_bias_ids = NULL,
        .logit_bias_values = NULL,
        .seed = 0,
    };
}

enum es_status smp_scratch_create(int vocab_size, struct smp_scratch **out, struct es_err *err)
{
    *out = NULL;
    if (vocab_size <= 0) return es_fail(err, ES_EINVAL, "sampling: vocab size %d", vocab_size);
    struct smp_scratch *s = calloc(1, sizeof(*s));
    if (!s) goto err;
    s->vocab = vocab_size;
    s->w = malloc(sizeof(float) * (size_t)vocab_size);
    s->cand = malloc(sizeof(struct smp_cand) * (size_t)vocab_size);
    s->heap = malloc(sizeof(struct smp_cand) * SMP_HEAP_MAX);
    s->counts = calloc((size_t)vocab_size, sizeof(int32_t));
    if (!s->w || !s->cand || !s->heap || !s->counts) goto err;
    *out = s;
    return ES_OK;
err:
    smp_scratch_destroy(s);
    return es_fail(err, ES_ENOMEM, "sampling: out of memory for vocab %d", vocab_size);
}

void smp_scratch_destroy(struct smp_scratch *s)
{
    if (!s) return;
    free(s->w);
    free(s->cand);
    free(s->heap);
    free(s->counts);
    free(s);
}

double smp_logsumexp(const float *logits, int n)
{
    float m = -INFINITY;
    for (int i = 0; i < n; i++)
        if (logits[i] > m) m = logits[i];
    if (m == -INFINITY) return -INFINITY;
    double sum = 0.0;
    for (int i = 0; i < n; i++)
        sum += (double)expf(logits[i] - m);
    return (double)m + log(sum);
}

/* The canonical order: larger value first, then lower id. */
static inline int before(float wa, int32_t ida, float wb, int32_t idb)
{
    return wa > wb || (wa == wb && ida < idb);
}

static int cand_cmp(const void *pa, const void *pb)
{
    const struct smp_cand *a = pa, *b = pb;
    if (before(a->w, a->id, b->w, b->id)) return -1;
    if (before(b->w, b->id, a->w, a->id)) return 1;
    return 0;
}

/* The n best raw logits in canonical order, by insertion into a short list. */
static int top_logprobs(const float *logits, int vocab, int n, double lse, struct row_result *out)
{
    int have = 0;
    for (int32_t i = 0; i < vocab; i++) {
        float v = logits[i];
        if (have == n && !before(v, i, out->top_logprobs[n - 1], out->top_ids[n - 1])) continue;
        int j = have < n ? have++ : n - 1;
        while (j > 0 && before(v, i, out->top_logprobs[j - 1], out->top_ids[j - 1])) {
            out->top_logprobs[j] = out->top_logprobs[j - 1];
            out->top_ids[j] = out->top_ids[j - 1];
            j--;
        }
        out->top_logprobs[j] = v; /* raw logit for now */
        out->top_ids[j] = i;
    }
    for (int j = 0; j < have; j++)
        out->top_logprobs[j] = (float)((double)out->top_logprobs[j] - lse);
    return have;
}

static int32_t argmax(const float *w, int vocab)
{
    int32_t best = 0;
    for (int32_t i = 1; i < vocab; i++)
        if (w[i] > w[best]) best = i;
    return best;
}

/* Steps 2 of sampling.h: bias, bans, repetition, presence, frequency. */
static void process_logits(struct smp_scratch *s, const float *logits, const struct logit_row *row,
                           const struct sampling_params *sp)
{
    int vocab = s->vocab;
    float *w = s->w;
    for (int i = 0; i < vocab; i++)
        w[i] = isnan(logits[i]) ? -INFINITY : logits[i];
    for (int i = 0; i < sp->n_logit_bias; i++) {
        int32_t id = sp->logit_bias_ids[i];
        if (id >= 0 && id < vocab) w[id] += sp->logit_bias_values[i];
    }
    for (int i = 0; i < row->n_banned; i++) {
        int32_t id = row->banned_ids[i];
        if (id >= 0 && id < vocab) w[id] = -INFINITY;
    }
    const int32_t *hist = row->history;
    if (sp->repetition_penalty != 1.0f && sp->repetition_penalty > 0.0f) {
        float rp = sp->repetition_penalty;
        for (int i = 0; i < row->n_history; i++) {
            int32_t id = hist[i];
            if (id < 0 || id >= vocab || s->counts[id]) continue;
            s->counts[id] = 1;
            w[id] = w[id] > 0.0f ? w[id] / rp : w[id] * rp;
        }
        for (int i = 0; i < row->n_history; i++)
            if (hist[i] >= 0 && hist[i] < vocab) s->counts[hist[i]] = 0;
    }
    if (sp->presence_penalty != 0.0f || sp->frequency_penalty != 0.0f) {
        int start = row->n_history_prompt < 0 ? 0 : row->n_history_prompt;
        for (int i = start; i < row->n_history; i++)
            if (hist[i] >= 0 && hist[i] < vocab) s->counts[hist[i]]++;
        /* Applying zeroes the count, so each distinct token is hit once. */
        for (int i = start; i < row->n_history; i++) {
            int32_t id = hist[i];
            if (id < 0 || id >= vocab || !s->counts[id]) continue;
            w[id] -= sp->presence_penalty + sp->frequency_penalty * (float)s->counts[id];
            s->counts[id] = 0;
        }
    }
}

/* Max-heap by "worse in canonical order" at the root: the root is the worst
 * of the k kept so far. */
static void heap_sift_down(struct smp_cand *h, int n, int i)
{
    for (;;) {
        int l = 2 * i + 1, r = l + 1, worst = i;
        if (l < n && before(h[worst].w, h[worst].id, h[l].w, h[l].id)) worst = l;
        if (r < n && before(h[worst].w, h[worst].id, h[r].w, h[r].id)) worst = r;
        if (worst == i) return;
        struct smp_cand t = h[i];
        h[i] = h[worst];
        h[worst] = t;
        i = worst;
    }
}

static void heap_sift_up(struct smp_cand *h, int i)
{
    while (i > 0) {
        int parent = (i - 1) / 2;
        if (!before(h[parent].w, h[parent].id, h[i].w, h[i].id)) return;
        struct smp_cand t = h[i];
        h[i] = h[parent];
        h[parent] = t;
        i = parent;
    }
}

/* Keeps in cand[0..k) the first k of cand[0..n) in canonical order. */
static void keep_top_k(struct smp_scratch *s, int n, int k)
{
    struct smp_cand *c = s->cand;
    if (k > SMP_HEAP_MAX) {
        qsort(c, (size_t)n, sizeof(*c), cand_cmp);
        return;
    }
    struct smp_cand *h = s->heap;
    int have = 0;
    for (int i = 0; i < n; i++) {
        if (have < k) {
            h[have] = c[i];
            heap_sift_up(h, have++);
        } else if (before(c[i].w, c[i].id, h[0].w, h[0].id)) {
            h[0] = c[i];
            heap_sift_down(h, k, 0);
        }
    }
    for (int i = 0; i < have; i++)
        c[i] = h[i];
}

/* Moves the candidates with p > t to the front; returns how many. */
static int partition_above(struct smp_cand *c, int n, float t)
{
    int m = 0;
    for (int i = 0; i < n; i++) {
        if (c[i].p > t) {
            struct smp_cand tmp = c[m];
            c[m++] = c[i];
            c[i] = tmp;
        }
    }
    return m;
}

/* Steps 4-5 over the sorted head c[0..n_sorted) of n candidates. Returns
 * the token, or -1 when the head was too short to decide. */
static int32_t walk_sorted(const struct smp_cand *c, int n_sorted, int n, float top_p,
                           double z_topk, double z_all, double u)
{
    int complete = n_sorted == n;
    int n_keep = n_sorted;
    double z = z_all;
    if (top_p < 1.0f) {
        double limit = (double)top_p * z_topk, cum = 0.0;
        int i = 0;
        for (; i < n_sorted; i++) {
            if (i > 0 && cum >= limit) break;
            cum += c[i].p;
        }
        if (i == n_sorted && !complete && cum < limit) return -1;
        n_keep = i;
        z = cum;
    }
    double target = u * z, cum = 0.0;
    for (int i = 0; i < n_keep; i++) {
        cum += c[i].p;
        if (cum > target) return c[i].id;
    }
    if (top_p < 1.0f || complete) return c[n_keep - 1].id;
    return -1;
}

static int32_t draw(struct smp_scratch *s, const float *raw, const struct logit_row *row,
                    const struct sampling_params *sp)
{
    int vocab = s->vocab;
    float *w = s->w;
    float inv_t = 1.0f / sp->temperature;
    float m = -INFINITY;
    for (int i = 0; i < vocab; i++) {
        w[i] = w[i] * inv_t;
        if (w[i] > m) m = w[i];
    }
    if (m == -INFINITY) return argmax(raw, vocab); /* everything banned: nothing valid */

    struct smp_cand *c = s->cand;
    int n = 0;
    for (int32_t i = 0; i < vocab; i++) {
        if (w[i] == -INFINITY) continue;
        c[n++] = (struct smp_cand){.w = w[i], .p = expf(w[i] - m), .id = i};
    }
    int k = sp->top_k;
    if (k > 0 && k < n) {
        keep_top_k(s, n, k);
        n = k;
    }
    double z_topk = 0.0;
    for (int i = 0; i < n; i++)
        z_topk += c[i].p;
    if (sp->min_p > 0.0f) {
        int kept = 0;
        for (int i = 0; i < n; i++)
            if (c[i].p >= sp->min_p) c[kept++] = c[i];
        n = kept; /* the max (p == 1) always stays */
    }
    double z_all = 0.0;
    for (int i = 0; i < n; i++)
        z_all += c[i].p;
    double u = rng_uniform(sp->seed, row->rng_counter);

    /* Sort only the head the nucleus or the draw can reach, widening it if
     * that was not enough; the last attempt sorts everything. */
    static const float heads[] = {1e-4f, 1e-10f};
    if (n > SMP_SMALL_SORT) {
        for (size_t a = 0; a < sizeof(heads) / sizeof(heads[0]); a++) {
            int n_head = partition_above(c, n, heads[a]);
            qsort(c, (size_t)n_head, sizeof(*c), cand_cmp);
            int32_t tok = walk_sorted(c, n_head, n, sp->top_p, z_topk, z_all, u);
            if (tok >= 0) return tok;
        }
    }
    qsort(c, (size_t)n, sizeof(*c), cand_cmp);
    return walk_sorted(c, n, n, sp->top_p, z_topk, z_all, u);
}

void smp_row(struct smp_scratch *s, const float *logits, const struct logit_row *row,
             struct row_result *out)
{
    int vocab = s->vocab;
    double lse = smp_logsumexp(logits, vocab);
    out->n_top = 0;
    if (row->n_top > 0) {
        int n = row->n_top < BACKEND_MAX_TOP_LOGPROBS ? row->n_top : BACKEND_MAX_TOP_LOGPROBS;
        if (n > vocab) n = vocab;
        out->n_top = top_logprobs(logits, vocab, n, lse, out);
    }
    out->target_logprob = 0.0f;
    out->target_rank = 0;
    if (row->target_id >= 0 && row->target_id < vocab) {
        int32_t t = row->target_id;
        float lt = logits[t];
        int32_t rank = 1;
        for (int32_t i = 0; i < vocab; i++)
            rank += before(logits[i], i, lt, t);
        out->target_logprob = (float)((double)lt - lse);
        out->target_rank = rank;
    }
    out->token = -1;
    out->logprob = 0.0f;
    if (!row->sample) return;

    struct sampling_params defaults;
    const struct sampling_params *sp = row->sp;
    if (!sp) {
        sp_defaults(&defaults);
        defaults.temperature = 0.0f;
        sp = &defaults;
    }
    process_logits(s, logits, row, sp);
    int32_t tok;
    if (!(sp->temperature >= SMP_GREEDY_EPS))
        tok = argmax(s->w, vocab);
    else
        tok = draw(s, logits, row, sp);
    out->token = tok;
    out->logprob = (float)((double)logits[tok] - lse);
}
