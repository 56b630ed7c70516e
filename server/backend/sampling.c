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
 * Cost: a few O(vocab) scans, a heap for small top_k, and no sort of the
 * vocabulary: the nucleus end and the drawn token are found by summing
 * masses per value bucket (buckets follow canonical order), then a
 * quickselect-style search inside the one bucket that holds the crossing
 * (about 3 ms per sampled row over a 128k vocabulary on one core).
 */
#include "sampling.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"

/* A candidate token after processing: w = processed logit, p = exp(w - max). */
struct smp_cand {
    float w;
    float p;
    int32_t id;
};

/* Value buckets of the crossing search (see find_crossing). */
#define SMP_BUCKETS 1024

struct smp_scratch {
    int vocab;
    float *w;              /* [vocab] processed logits */
    float *p;              /* [vocab] exp(w - max w) */
    struct smp_cand *cand; /* [vocab] tokens still in the running */
    struct smp_cand *heap; /* [SMP_HEAP_MAX] top_k selection */
    struct smp_cand *sub;  /* [vocab] candidates of one bucket */
    double bucket_mass[SMP_BUCKETS];
    int32_t *counts; /* [vocab] occurrence counts; all zero between calls */
};

/* top_k up to this uses a heap; larger ones sort. */
#define SMP_HEAP_MAX 1024

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
    s->p = malloc(sizeof(float) * (size_t)vocab_size);
    s->cand = malloc(sizeof(struct smp_cand) * (size_t)vocab_size);
    s->heap = malloc(sizeof(struct smp_cand) * SMP_HEAP_MAX);
    s->sub = malloc(sizeof(struct smp_cand) * (size_t)vocab_size);
    s->counts = calloc((size_t)vocab_size, sizeof(int32_t));
    if (!s->w || !s->p || !s->cand || !s->heap || !s->sub || !s->counts) goto err;
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
    free(s->p);
    free(s->cand);
    free(s->heap);
    free(s->sub);
    free(s->counts);
    free(s);
}

/* exp(x) as 2^n * e^r, |r| <= ln2 / 2, with Cephes' degree-6 polynomial
 * for e^r: within about 1 ulp of expf, eight lanes at a time through
 * GCC/Clang vector extensions (libm's expf is a call per element, which
 * was the bulk of a row's cost over a 128k vocabulary). Below -87.3 (and
 * for -inf) the result is exactly 0: every use is exp(x - max) <= 1,
 * where e^-87 is far below any mass that matters. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi" /* the vectors never cross a non-inline call */
#endif
typedef float smp_vf8 __attribute__((vector_size(32)));
typedef int32_t smp_vi8 __attribute__((vector_size(32)));

static inline smp_vf8 exp8(smp_vf8 x)
{
    const smp_vf8 lo = {-87.3f, -87.3f, -87.3f, -87.3f, -87.3f, -87.3f, -87.3f, -87.3f};
    smp_vi8 under = x < lo; /* -1 where below: the result is 0 there */
    x = (smp_vf8)((under & (smp_vi8)lo) | (~under & (smp_vi8)x));
    const float round_magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    smp_vf8 nf = (x * 1.44269504088896341f + round_magic) - round_magic;
    smp_vf8 r = x - nf * 0.693359375f + nf * 2.12194440e-4f; /* ln2 in two parts */
    smp_vf8 poly = r * 1.9875691500e-4f + 1.3981999507e-3f;
    poly = poly * r + 8.3334519073e-3f;
    poly = poly * r + 4.1665795894e-2f;
    poly = poly * r + 1.6666665459e-1f;
    poly = poly * r + 5.0000001201e-1f;
    smp_vf8 y = poly * r * r + r + 1.0f;
    smp_vi8 bits = (__builtin_convertvector(nf, smp_vi8) + 127) << 23;
    return (smp_vf8)(~under & (smp_vi8)(y * (smp_vf8)bits));
}

/* out[i] = exp(x[i] - shift); the tail goes through the same lanes. */
static void exp_shifted(const float *x, float shift, int n, float *out)
{
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        smp_vf8 v;
        memcpy(&v, x + i, sizeof(v));
        v = exp8(v - shift);
        memcpy(out + i, &v, sizeof(v));
    }
    if (i < n) {
        smp_vf8 v = {0};
        for (int j = 0; j < n - i; j++)
            v[j] = x[i + j] - shift;
        v = exp8(v);
        for (int j = 0; j < n - i; j++)
            out[i + j] = v[j];
    }
}

double smp_logsumexp(const float *logits, int n)
{
    float m = -INFINITY;
    for (int i = 0; i < n; i++)
        if (logits[i] > m) m = logits[i];
    if (m == -INFINITY) return -INFINITY;
    double sum = 0.0;
    float buf[256];
    for (int i0 = 0; i0 < n; i0 += 256) {
        int len = n - i0 < 256 ? n - i0 : 256;
        exp_shifted(logits + i0, m, len, buf);
        for (int j = 0; j < len; j++)
            sum += (double)buf[j];
    }
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

static inline void swap_cand(struct smp_cand *a, struct smp_cand *b)
{
    struct smp_cand t = *a;
    *a = *b;
    *b = t;
}

static inline int cand_before(const struct smp_cand *a, const struct smp_cand *b)
{
    return before(a->w, a->id, b->w, b->id);
}

/* The token where the running sum of p, taken in canonical order over a
 * candidate set, first reaches a target: cum > target, or cum >= target
 * when `reach` is set (sums in double; which side of a boundary a target
 * within round-off of it falls is left to the summation order). */
struct crossing {
    struct smp_cand cand;
    double cum_before; /* mass of every candidate before cand */
};

#define SMP_SORT_BELOW 32

/* Quickselect-style search over c[0..n), every one of which comes after a
 * mass acc0 in canonical order: partition around a pivot, sum the part
 * before it, descend into the side holding the crossing; only the last
 * few are sorted. Expected O(n); reorders c; 0 when the sum stays short. */
static int select_crossing(struct smp_cand *c, int n, double acc0, double target, int reach,
                           struct crossing *out)
{
    int lo = 0, hi = n;
    double acc = acc0; /* mass of everything before c[lo..hi) in canonical order */
    while (hi - lo > SMP_SORT_BELOW) {
        int mid = lo + (hi - lo) / 2;
        /* median of three as the pivot, moved to hi - 1 */
        if (cand_before(&c[mid], &c[lo])) swap_cand(&c[mid], &c[lo]);
        if (cand_before(&c[hi - 1], &c[lo])) swap_cand(&c[hi - 1], &c[lo]);
        if (cand_before(&c[hi - 1], &c[mid])) swap_cand(&c[hi - 1], &c[mid]);
        swap_cand(&c[mid], &c[hi - 1]);
        struct smp_cand pivot = c[hi - 1];
        int i = lo;
        double mass = 0.0;
        for (int j = lo; j < hi - 1; j++) {
            if (cand_before(&c[j], &pivot)) {
                mass += c[j].p;
                swap_cand(&c[i++], &c[j]);
            }
        }
        swap_cand(&c[i], &c[hi - 1]);
        double end_before = acc + mass, end_pivot = end_before + pivot.p;
        if (reach ? end_before >= target : end_before > target) {
            hi = i;
        } else if (reach ? end_pivot >= target : end_pivot > target) {
            out->cand = pivot;
            out->cum_before = end_before;
            return 1;
        } else {
            acc = end_pivot;
            lo = i + 1;
        }
    }
    qsort(c + lo, (size_t)(hi - lo), sizeof(*c), cand_cmp);
    for (int i = lo; i < hi; i++) {
        double next = acc + c[i].p;
        if (reach ? next >= target : next > target) {
            out->cand = c[i];
            out->cum_before = acc;
            return 1;
        }
        acc = next;
    }
    return 0;
}

/* Bucketing by value first: bucket b holds w in a slice of [min w, max w]
 * (larger w, lower b), so buckets follow canonical order; one pass sums
 * their masses, the crossing bucket is found, and only its members go
 * through select_crossing. */
static inline int bucket_of(float w, float wmax, double scale)
{
    int b = (int)(((double)wmax - (double)w) * scale);
    return b < SMP_BUCKETS - 1 ? b : SMP_BUCKETS - 1;
}

static int find_crossing(struct smp_scratch *s, struct smp_cand *c, int n, double target, int reach,
                         struct crossing *out)
{
    float wmax = -INFINITY, wmin = INFINITY;
    for (int i = 0; i < n; i++) {
        wmax = c[i].w > wmax ? c[i].w : wmax;
        wmin = c[i].w < wmin ? c[i].w : wmin;
    }
    if (n <= 4 * SMP_SORT_BELOW || !(wmax > wmin) || !isfinite(wmax - wmin))
        return select_crossing(c, n, 0.0, target, reach, out);
    double scale = (SMP_BUCKETS - 1) / ((double)wmax - (double)wmin);
    double *mass = s->bucket_mass;
    for (int b = 0; b < SMP_BUCKETS; b++)
        mass[b] = 0.0;
    for (int i = 0; i < n; i++)
        mass[bucket_of(c[i].w, wmax, scale)] += c[i].p;
    double acc = 0.0;
    int hit = -1;
    for (int b = 0; b < SMP_BUCKETS && hit < 0; b++) {
        double next = acc + mass[b];
        if (reach ? next >= target : next > target)
            hit = b;
        else
            acc = next;
    }
    if (hit < 0) return 0;
    int m = 0;
    for (int i = 0; i < n; i++)
        if (bucket_of(c[i].w, wmax, scale) == hit) s->sub[m++] = c[i];
    return select_crossing(s->sub, m, acc, target, reach, out);
}

/* The last candidate in canonical order. */
static struct smp_cand last_cand(const struct smp_cand *c, int n)
{
    struct smp_cand worst = c[0];
    for (int i = 1; i < n; i++)
        if (cand_before(&worst, &c[i])) worst = c[i];
    return worst;
}

/* ---- the whole-vocabulary path: arrays w[], p[] indexed by id ---- */

/* With p[i] > 0 only where w[i] >= max - 87.3, a fixed value range maps
 * every live token to a bucket; larger w, lower bucket. */
static inline int live_bucket(float w, float m)
{
    int b = (int)((m - w) * ((SMP_BUCKETS - 1) / 87.3f));
    return b < SMP_BUCKETS - 1 ? b : SMP_BUCKETS - 1;
}

static void live_histogram(struct smp_scratch *s, float m)
{
    double *mass = s->bucket_mass;
    for (int b = 0; b < SMP_BUCKETS; b++)
        mass[b] = 0.0;
    for (int i = 0; i < s->vocab; i++)
        if (s->p[i] > 0.0f) mass[live_bucket(s->w[i], m)] += s->p[i];
}

/* find_crossing over every token with p > 0, the histogram already made. */
static int find_crossing_live(struct smp_scratch *s, float m, double target, int reach,
                              struct crossing *out)
{
    double acc = 0.0;
    int hit = -1;
    for (int b = 0; b < SMP_BUCKETS && hit < 0; b++) {
        double next = acc + s->bucket_mass[b];
        if (reach ? next >= target : next > target)
            hit = b;
        else
            acc = next;
    }
    if (hit < 0) return 0;
    int n = 0;
    for (int32_t i = 0; i < s->vocab; i++)
        if (s->p[i] > 0.0f && live_bucket(s->w[i], m) == hit)
            s->sub[n++] = (struct smp_cand){.w = s->w[i], .p = s->p[i], .id = i};
    return select_crossing(s->sub, n, acc, target, reach, out);
}

/* The last token with p > 0 in canonical order. */
static int32_t last_live(const struct smp_scratch *s)
{
    int32_t worst = -1;
    for (int32_t i = 0; i < s->vocab; i++)
        if (s->p[i] > 0.0f && (worst < 0 || before(s->w[worst], worst, s->w[i], i))) worst = i;
    return worst;
}

/* Steps 4-5 of sampling.h without top_k: no candidate list at all. */
static int32_t draw_live(struct smp_scratch *s, const struct logit_row *row,
                         const struct sampling_params *sp, float m)
{
    int vocab = s->vocab;
    float *p = s->p;
    double z_all = 0.0;
    for (int i = 0; i < vocab; i++)
        z_all += p[i];
    double z_dist = z_all; /* the distribution top_p is measured against */
    if (sp->min_p > 0.0f) {
        z_all = 0.0;
        for (int i = 0; i < vocab; i++) {
            p[i] = p[i] >= sp->min_p ? p[i] : 0.0f;
            z_all += p[i];
        }
    }
    live_histogram(s, m);
    /* Nucleus: the last kept token is where the cumulative mass first
     * reaches top_p; min_p only ever cuts a canonical suffix, so the mass
     * before any kept token is the same with or without it. */
    struct crossing last;
    int have_last = 0;
    double z = z_all;
    if (sp->top_p < 1.0f && find_crossing_live(s, m, (double)sp->top_p * z_dist, 1, &last)) {
        have_last = 1;
        z = last.cum_before + last.cand.p;
    }
    double u = rng_uniform(sp->seed, row->rng_counter);
    struct crossing hit;
    if (find_crossing_live(s, m, u * z, 0, &hit) &&
        !(have_last && cand_before(&last.cand, &hit.cand)))
        return hit.cand.id;
    /* round-off left the draw past the end: the last kept token */
    return have_last ? last.cand.id : last_live(s);
}

/* Steps 4-5 with top_k: a candidate list of the k best. */
static int32_t draw_top_k(struct smp_scratch *s, const struct logit_row *row,
                          const struct sampling_params *sp, int n_live)
{
    struct smp_cand *c = s->cand;
    int n = 0;
    for (int32_t i = 0; i < s->vocab; i++)
        if (s->w[i] != -INFINITY) c[n++] = (struct smp_cand){.w = s->w[i], .p = s->p[i], .id = i};
    (void)n_live;
    keep_top_k(s, n, sp->top_k);
    n = sp->top_k;
    double z_topk = 0.0;
    for (int i = 0; i < n; i++)
        z_topk += c[i].p;
    if (sp->min_p > 0.0f) {
        int kept = 0;
        for (int i = 0; i < n; i++)
            if (c[i].p >= sp->min_p) c[kept++] = c[i];
        n = kept; /* the max (p == 1) stays for any min_p <= 1 */
    }
    double z_all = 0.0;
    for (int i = 0; i < n; i++)
        z_all += c[i].p;
    struct crossing last;
    int have_last = 0;
    double z = z_all;
    if (sp->top_p < 1.0f && find_crossing(s, c, n, (double)sp->top_p * z_topk, 1, &last)) {
        have_last = 1;
        z = last.cum_before + last.cand.p;
    }
    double u = rng_uniform(sp->seed, row->rng_counter);
    struct crossing hit;
    if (find_crossing(s, c, n, u * z, 0, &hit) &&
        !(have_last && cand_before(&last.cand, &hit.cand)))
        return hit.cand.id;
    return have_last ? last.cand.id : last_cand(c, n).id;
}

static int32_t draw(struct smp_scratch *s, const float *raw, const struct logit_row *row,
                    const struct sampling_params *sp)
{
    int vocab = s->vocab;
    float *w = s->w;
    float inv_t = 1.0f / sp->temperature;
    float m = -INFINITY;
    int n_live = 0;
    for (int i = 0; i < vocab; i++) {
        w[i] = w[i] * inv_t;
        if (w[i] > m) m = w[i];
        n_live += w[i] != -INFINITY;
    }
    if (m == -INFINITY) return argmax(raw, vocab); /* everything banned: nothing valid */
    exp_shifted(w, m, vocab, s->p); /* p == 0 exactly for banned and negligible tokens */
    if (sp->min_p > 1.0f) return argmax(w, vocab); /* nothing reaches it: keep the best */
    if (sp->top_k > 0 && sp->top_k < n_live) return draw_top_k(s, row, sp, n_live);
    return draw_live(s, row, sp, m);
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
