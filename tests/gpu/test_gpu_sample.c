/*
 * test_gpu_sample.c - the GPU sampler's check in test_gpu's `kernels` mode:
 * kern_sample (kernels/sampling.cu), its rows packed by
 * backend_cuda_sample_pack.c exactly as the backend packs them, against
 * server/backend/sampling.c (smp_row) token for token, over every
 * combination of temperature, top_k, top_p and min_p with penalties,
 * logit_bias, bans and awkward logits (ties, NaN, -inf, flat, all equal),
 * on a 128256 and a 1000 vocabulary. Where the two disagree, a sorting
 * reference (steps 2-5 of sampling.h, sample_ref.c's processed logits)
 * tells a round-off tie at a top_p or draw boundary (tolerated, a handful
 * at most) from a bug. Then kern_sample's time per launch over 256 rows of
 * a 128256 vocabulary, per setting. Draws from test_gpu.c's random stream
 * (test_gpu.h); keeps nothing between calls. Its CHECKs count in this
 * file's testing.h counter: tg_check_sampling returns their failures for
 * test_gpu.c's result.
 */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>

#include "backend.h"
#include "backend_cuda_sample_pack.h"
#include "kernels.h"
#include "rng.h"
#include "sample_ref.h"
#include "sampling.h"
#include "test_gpu.h"
#include "testing.h"

#define SAMP_BATCH 256 /* rows per kern_sample launch: its scratch */
#define SAMP_HIST 260
#define SAMP_BIAS 8
#define SAMP_TOP 16

/* One test row: its parameters and the arrays its logit_row points to. */
struct samp_case {
    struct sampling_params sp;
    struct logit_row row;
    int32_t hist[SAMP_HIST];
    int32_t bias_ids[SAMP_BIAS];
    float bias_vals[SAMP_BIAS];
    int32_t banned[4];
    const char *kind; /* the shape of its logits */
};

static float rnd_normal(void)
{
    double u1 = ((double)tg_rnd() + 1.0) / 2147483649.0, u2 = (double)tg_rnd() / 2147483648.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
}

static uint64_t rnd64(void)
{
    return ((uint64_t)tg_rnd() << 33) ^ ((uint64_t)tg_rnd() << 2) ^ tg_rnd();
}

/* The n best non-NaN logits' ids, in canonical order. */
static void samp_top_ids(const float *x, int V, int32_t *top, int n)
{
    float tv[SAMP_TOP];
    int have = 0;
    for (int32_t i = 0; i < V; i++) {
        float v = x[i];
        if (isnan(v) || (have == n && !(v > tv[n - 1]))) continue;
        int j = have < n ? have++ : n - 1;
        while (j > 0 && v > tv[j - 1]) {
            tv[j] = tv[j - 1];
            top[j] = top[j - 1];
            j--;
        }
        tv[j] = v;
        top[j] = i;
    }
    for (int j = have; j < n; j++)
        top[j] = j % V;
}

/* Logits of row r: normal(0, 3) mostly; peaked, integer ties, half of
 * the vocabulary equal, NaN / -inf sprinkled, flat, all equal, all -inf. */
static const char *samp_logits(float *x, int V, int r)
{
    for (int i = 0; i < V; i++)
        x[i] = 3.0f * rnd_normal();
    if (r % 101 == 50) {
        for (int i = 0; i < V; i++)
            x[i] = 1.5f;
        return "all equal";
    }
    if (r % 101 == 77) {
        for (int i = 0; i < V; i++)
            x[i] = i % 3 ? -INFINITY : NAN;
        return "all -inf / NaN";
    }
    switch (tg_rnd() % 8) {
    case 3:
        x[tg_rnd() % V] += 15.0f;
        x[tg_rnd() % V] += 12.0f;
        return "peaked";
    case 4:
        for (int i = 0; i < V; i++)
            x[i] = roundf(x[i]);
        return "integer ties";
    case 5:
        for (int i = 0; i < V; i++)
            if (tg_rnd() % 2) x[i] = 4.0f;
        return "half equal";
    case 6:
        for (int i = 0; i < V; i++) {
            int u = (int)(tg_rnd() % 20);
            if (u == 0) x[i] = NAN;
            if (u == 1 || u == 2) x[i] = -INFINITY;
        }
        if (r % 16 == 6) x[0] = NAN;
        return "NaN / -inf";
    case 7:
        for (int i = 0; i < V; i++)
            x[i] *= 0.02f;
        return "flat";
    default:
        return "normal(0, 3)";
    }
}

/* Row r's settings: temperature, top_k, top_p and min_p cycle through
 * every combination; penalties, history, bias and bans are random. */
static void samp_make_case(struct samp_case *c, const float *x, int V, int r,
                           const int32_t *all_ids)
{
    static const float temps[4] = {0.3f, 0.7f, 1.0f, 1.5f};
    static const int top_ks[5] = {0, 1, 5, 50, 1000};
    static const float top_ps[4] = {1.0f, 0.1f, 0.9f, 0.999f};
    static const float min_ps[4] = {0.0f, 0.05f, 0.5f, 2.0f};
    static const float reps[4] = {1.0f, 1.1f, 0.8f, 1.3f};
    static const float pres[3] = {0.0f, 0.4f, -0.5f};
    static const float freqs[3] = {0.0f, 0.3f, 1.5f};
    int32_t top[SAMP_TOP];
    samp_top_ids(x, V, top, SAMP_TOP);
    struct sampling_params *sp = &c->sp;
    sp_defaults(sp);
    sp->temperature = r % 11 == 10 ? 0.0f : temps[r % 4]; /* 0: argmax of the edited logits */
    sp->top_k = top_ks[(r / 4) % 5];
    sp->top_p = top_ps[(r / 20) % 4];
    sp->min_p = min_ps[(r / 80) % 4];
    sp->repetition_penalty = reps[tg_rnd() % 4];
    sp->presence_penalty = pres[tg_rnd() % 3];
    sp->frequency_penalty = freqs[tg_rnd() % 3];
    sp->seed = rnd64();
    int n_prompt = (int)(tg_rnd() % 200), n_gen = (int)(tg_rnd() % 60);
    for (int i = 0; i < n_prompt + n_gen; i++) {
        int u = (int)(tg_rnd() % 20);
        c->hist[i] = u < 8    ? top[tg_rnd() % SAMP_TOP]
                     : u < 19 ? (int32_t)(tg_rnd() % V)
                     : u % 2  ? -1
                              : V + 3;
    }
    int nb = (int)(tg_rnd() % 5) + (r % 9 == 0 ? 3 : 0);
    for (int i = 0; i < nb; i++) {
        int u = (int)(tg_rnd() % 3), v = (int)(tg_rnd() % 4);
        c->bias_ids[i] = u == 0                           ? top[tg_rnd() % 4]
                         : u == 1 && n_prompt + n_gen > 0 ? c->hist[tg_rnd() % (n_prompt + n_gen)]
                                                          : (int32_t)(tg_rnd() % V);
        c->bias_vals[i] = v == 0 ? 100.0f : v == 1 ? -100.0f : tg_rndf() * 5.0f;
    }
    if (nb >= 2 && r % 7 == 0) c->bias_ids[nb - 1] = c->bias_ids[0]; /* listed twice */
    sp->n_logit_bias = nb;
    sp->logit_bias_ids = c->bias_ids;
    sp->logit_bias_values = c->bias_vals;
    int n_banned = 0;
    const int32_t *banned = c->banned;
    if (r % 97 == 5) {
        banned = all_ids, n_banned = V; /* nothing left: the argmax of the raw logits */
    } else if (r % 5 == 1) {
        c->banned[n_banned++] = top[0];
    } else if (r % 5 == 2) {
        for (; n_banned < 3; n_banned++)
            c->banned[n_banned] = top[n_banned];
        c->banned[n_banned++] = -7; /* out of range: ignored */
    }
    c->row = (struct logit_row){.token_index = 0,
                                .sample = true,
                                .target_id = -1,
                                .n_top = -1,
                                .sp = sp,
                                .rng_counter = tg_rnd() % 5000,
                                .history = c->hist,
                                .n_history_prompt = r % 13 == 0 ? -1 : n_prompt,
                                .n_history = n_prompt + n_gen,
                                .banned_ids = banned,
                                .n_banned = n_banned};
}

/* ---- a sorting reference, to tell a round-off tie from a bug ---- */

/* sampling.c's exp8, one lane, the same operations */
static float samp_exp(float x)
{
    if (x < -87.3f) return 0.0f;
    float nf = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - nf * 0.693359375f + nf * 2.12194440e-4f;
    float poly = r * 1.9875691500e-4f + 1.3981999507e-3f;
    poly = poly * r + 8.3334519073e-3f;
    poly = poly * r + 4.1665795894e-2f;
    poly = poly * r + 1.6666665459e-1f;
    poly = poly * r + 5.0000001201e-1f;
    float y = poly * r * r + r + 1.0f;
    int32_t bits = ((int32_t)nf + 127) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return y * scale;
}

static int32_t samp_seq_argmax(const float *v, int V)
{
    int32_t best = 0;
    for (int32_t i = 1; i < V; i++)
        if (v[i] > v[best]) best = i;
    return best;
}

struct samp_cand {
    float w, p;
    int32_t id;
};

static int samp_cand_cmp(const void *pa, const void *pb)
{
    const struct samp_cand *a = pa, *b = pb;
    if (a->w != b->w) return a->w > b->w ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id;
}

/* sampling.h's steps 2-5 with a full sort: the token, and how close (relative
 * to the mass they are measured against) the top_p and draw targets lie to
 * a boundary between two tokens (INFINITY where no mass crossing decides). */
struct samp_ref {
    int32_t token;
    double near_top_p, near_draw;
};

/* The first j with incl[j] > t (>= when reach); n when none. */
static int samp_cross(const double *incl, int n, double t, bool reach)
{
    for (int j = 0; j < n; j++)
        if (reach ? incl[j] >= t : incl[j] > t) return j;
    return n;
}

static double samp_gap(const double *incl, int n, int j, double t, double z)
{
    if (j == n) return n ? (t - incl[n - 1]) / z : INFINITY;
    double lo = j ? incl[j - 1] : 0.0;
    return fmin(fabs(incl[j] - t), fabs(t - lo)) / z;
}

static void samp_reference(const float *x, int V, const struct logit_row *row, struct samp_ref *o)
{
    const struct sampling_params *sp = row->sp;
    float *w = malloc(sizeof(float) * V);
    int32_t *cnt = calloc((size_t)V, sizeof(int32_t));
    struct samp_cand *c = malloc(sizeof(*c) * V);
    double *incl = malloc(sizeof(double) * V);
    o->near_top_p = o->near_draw = INFINITY;
    sref_process_logits(x, V, row, w, cnt);
    float inv_t = 1.0f / sp->temperature, m = -INFINITY;
    int n_live = 0;
    if (!(sp->temperature >= SMP_GREEDY_EPS)) {
        o->token = samp_seq_argmax(w, V);
        goto done;
    }
    for (int i = 0; i < V; i++) {
        w[i] = w[i] * inv_t;
        if (w[i] > m) m = w[i];
        n_live += w[i] != -INFINITY;
    }
    if (m == -INFINITY || sp->min_p > 1.0f) {
        o->token = samp_seq_argmax(m == -INFINITY ? x : w, V);
        goto done;
    }
    bool top_k = sp->top_k > 0 && sp->top_k < n_live;
    int n = 0;
    for (int32_t i = 0; i < V; i++) {
        float p = samp_exp(w[i] - m);
        if (top_k ? w[i] != -INFINITY : p > 0.0f) c[n++] = (struct samp_cand){w[i], p, i};
    }
    qsort(c, (size_t)n, sizeof(*c), samp_cand_cmp);
    if (top_k) n = sp->top_k;
    double z_dist = 0.0;
    for (int j = 0; j < n; j++)
        z_dist += c[j].p;
    int kept = 0;
    for (int j = 0; j < n; j++)
        if (!(sp->min_p > 0.0f) || c[j].p >= sp->min_p) c[kept++] = c[j];
    double acc = 0.0;
    for (int j = 0; j < kept; j++)
        incl[j] = acc += c[j].p;
    int last = kept - 1;
    double z = kept ? incl[kept - 1] : 0.0;
    if (sp->top_p < 1.0f) {
        double t = (double)sp->top_p * z_dist;
        int j = samp_cross(incl, kept, t, true);
        o->near_top_p = samp_gap(incl, kept, j, t, z_dist);
        if (j < kept) last = j, z = incl[j];
    }
    double t = rng_uniform(sp->seed, row->rng_counter) * z;
    int j = samp_cross(incl, last + 1, t, false);
    o->near_draw = samp_gap(incl, last + 1, j, t, z);
    o->token = c[j <= last ? j : last].id;
done:
    free(w), free(cnt), free(c), free(incl);
}

/* ---- the comparison ---- */

struct samp_stats {
    int rows, same, logprob_diff, tolerated, bad, ref_checked, ref_same;
};

/* kern_sample on rows [0, n) of x (fp32 [n][V]); token / logprob [n]. */
static void samp_gpu(const float *x, int V, const struct samp_case *cs, int n, const double *lse,
                     int32_t *token, float *logprob, float *d_x, float *d_scratch)
{
    struct kern_sample_row rows[SAMP_BATCH];
    size_t bound = 0;
    for (int j = 0; j < n; j++)
        bound += cbsm_edit_bound(&cs[j].row);
    struct kern_logit_edit *ed = malloc(sizeof(*ed) * (bound + 1));
    int32_t *slot = calloc((size_t)V, 4), *seen = calloc((size_t)V, 4);
    int32_t e = 0;
    for (int j = 0; j < n; j++) {
        int k = cbsm_pack_row(&cs[j].row, V, j, &rows[j], ed + e, slot, seen);
        rows[j].edit0 = e;
        e += k;
    }
    CK(cudaMemcpy(d_x, x, sizeof(float) * (size_t)n * V, cudaMemcpyHostToDevice));
    struct kern_sample_row *d_rows = tg_dup_to_dev(rows, sizeof(rows[0]) * n);
    struct kern_logit_edit *d_ed = tg_dup_to_dev(ed, sizeof(*ed) * (e + 1));
    double *d_lse = tg_dup_to_dev(lse, sizeof(double) * n);
    int32_t *d_tok;
    float *d_lp;
    CK(cudaMalloc((void **)&d_tok, 4 * n));
    CK(cudaMalloc((void **)&d_lp, 4 * n));
    CK(kern_sample(d_x, V, d_rows, n, d_ed, d_lse, d_tok, d_lp, d_scratch, 0));
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(token, d_tok, 4 * n, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(logprob, d_lp, 4 * n, cudaMemcpyDeviceToHost));
    cudaFree(d_rows), cudaFree(d_ed), cudaFree(d_lse), cudaFree(d_tok), cudaFree(d_lp);
    free(ed), free(slot), free(seen);
}

static void samp_report(const char *what, int V, int r, const struct samp_case *c, int32_t cpu,
                        int32_t gpu, const struct samp_ref *ref)
{
    const struct sampling_params *sp = &c->sp;
    fprintf(stderr,
            "  %s: V %d row %d (%s): T %g top_k %d top_p %g min_p %g rep %g pres %g freq %g "
            "bias %d banned %d history %d (prompt %d) seed %llu counter %llu: cpu %d gpu %d; "
            "reference %d, gap to a boundary: top_p %.3g draw %.3g\n",
            what, V, r, c->kind, sp->temperature, sp->top_k, sp->top_p, sp->min_p,
            sp->repetition_penalty, sp->presence_penalty, sp->frequency_penalty, sp->n_logit_bias,
            c->row.n_banned, c->row.n_history, c->row.n_history_prompt,
            (unsigned long long)sp->seed, (unsigned long long)c->row.rng_counter, cpu, gpu,
            ref->token, ref->near_top_p, ref->near_draw);
}

/* n_rows rows of vocabulary V against smp_row, SAMP_BATCH at a time. */
static void samp_compare(int V, int n_rows, struct samp_stats *st)
{
    float *x = malloc(sizeof(float) * SAMP_BATCH * (size_t)V);
    struct samp_case *cs = malloc(sizeof(*cs) * SAMP_BATCH);
    int32_t *all_ids = malloc(sizeof(int32_t) * V), tok[SAMP_BATCH];
    float lp[SAMP_BATCH];
    double lse[SAMP_BATCH];
    for (int i = 0; i < V; i++)
        all_ids[i] = i;
    float *d_x, *d_scratch;
    CK(cudaMalloc((void **)&d_x, sizeof(float) * SAMP_BATCH * (size_t)V));
    CK(cudaMalloc((void **)&d_scratch, sizeof(float) * SAMP_BATCH * (size_t)V));
    struct smp_scratch *s;
    struct es_err err = {{0}};
    CHECK(smp_scratch_create(V, &s, &err) == ES_OK);
    for (int r0 = 0; r0 < n_rows; r0 += SAMP_BATCH) {
        int n = n_rows - r0 < SAMP_BATCH ? n_rows - r0 : SAMP_BATCH;
        for (int j = 0; j < n; j++) {
            float *xr = x + (size_t)j * V;
            cs[j].kind = samp_logits(xr, V, r0 + j);
            samp_make_case(&cs[j], xr, V, r0 + j, all_ids);
            lse[j] = smp_logsumexp(xr, V);
        }
        samp_gpu(x, V, cs, n, lse, tok, lp, d_x, d_scratch);
        for (int j = 0; j < n; j++) {
            const float *xr = x + (size_t)j * V;
            struct row_result ref;
            smp_row(s, xr, &cs[j].row, &ref);
            st->rows++;
            struct samp_ref sr;
            bool check_ref = (r0 + j) % 64 == 0; /* the reference itself, now and then */
            if (ref.token == tok[j]) {
                st->same++;
                /* NaN logits make the row's lse NaN on both sides */
                if (ref.logprob != lp[j] && !(isnan(ref.logprob) && isnan(lp[j])))
                    st->logprob_diff++;
                if (check_ref) {
                    samp_reference(xr, V, &cs[j].row, &sr);
                    st->ref_checked++;
                    st->ref_same += sr.token == ref.token;
                    if (sr.token != ref.token)
                        samp_report("reference differs", V, r0 + j, &cs[j], ref.token, tok[j], &sr);
                }
                continue;
            }
            samp_reference(xr, V, &cs[j].row, &sr);
            bool near = fmin(sr.near_top_p, sr.near_draw) <= 1e-6;
            if (near)
                st->tolerated++;
            else
                st->bad++;
            samp_report(near ? "mismatch at a boundary (tolerated)" : "MISMATCH", V, r0 + j, &cs[j],
                        ref.token, tok[j], &sr);
        }
    }
    smp_scratch_destroy(s);
    cudaFree(d_x), cudaFree(d_scratch);
    free(x), free(cs), free(all_ids);
}

/* kern_sample's time over 256 rows of a 128256 vocabulary, per setting. */
static void samp_time(void)
{
    enum { V = 128256, N = 256 };
    float *x = malloc(sizeof(float) * N * (size_t)V);
    for (size_t i = 0; i < (size_t)N * V; i++)
        x[i] = 3.0f * rnd_normal();
    static struct samp_case cs[N];
    float *d_x, *d_scratch;
    CK(cudaMalloc((void **)&d_x, sizeof(float) * N * (size_t)V));
    CK(cudaMalloc((void **)&d_scratch, sizeof(float) * N * (size_t)V));
    CK(cudaMemcpy(d_x, x, sizeof(float) * N * (size_t)V, cudaMemcpyHostToDevice));
    double lse[N];
    for (int j = 0; j < N; j++)
        lse[j] = smp_logsumexp(x + (size_t)j * V, V);
    double *d_lse = tg_dup_to_dev(lse, sizeof lse);
    int32_t *d_tok;
    float *d_lp;
    CK(cudaMalloc((void **)&d_tok, 4 * N));
    CK(cudaMalloc((void **)&d_lp, 4 * N));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    static const char *names[4] = {"T 0.7, top-k 50, top-p 0.9, repetition 1.1 (260-token history)",
                                   "T 1, top-p 0.95", "T 0.8, min-p 0.05", "T 1, no filter"};
    for (int cfg = 0; cfg < 4; cfg++) {
        struct kern_sample_row rows[N];
        struct kern_logit_edit *ed = malloc(sizeof(*ed) * N * SAMP_HIST);
        int32_t *slot = calloc(V, 4), *seen = calloc(V, 4), e = 0;
        for (int j = 0; j < N; j++) {
            struct sampling_params *sp = &cs[j].sp;
            sp_defaults(sp);
            sp->temperature = cfg == 0 ? 0.7f : cfg == 2 ? 0.8f : 1.0f;
            sp->top_k = cfg == 0 ? 50 : 0;
            sp->top_p = cfg == 0 ? 0.9f : cfg == 1 ? 0.95f : 1.0f;
            sp->min_p = cfg == 2 ? 0.05f : 0.0f;
            sp->repetition_penalty = cfg == 0 ? 1.1f : 1.0f;
            sp->seed = rnd64();
            for (int i = 0; i < SAMP_HIST; i++)
                cs[j].hist[i] = (int32_t)(tg_rnd() % V);
            cs[j].row = (struct logit_row){.sample = true,
                                           .sp = sp,
                                           .rng_counter = (uint64_t)j,
                                           .history = cs[j].hist,
                                           .n_history_prompt = SAMP_HIST - 10,
                                           .n_history = SAMP_HIST};
            int k = cbsm_pack_row(&cs[j].row, V, j, &rows[j], ed + e, slot, seen);
            rows[j].edit0 = e;
            e += k;
        }
        struct kern_sample_row *d_rows = tg_dup_to_dev(rows, sizeof rows);
        struct kern_logit_edit *d_ed = tg_dup_to_dev(ed, sizeof(*ed) * (e + 1));
        CK(kern_sample(d_x, V, d_rows, N, d_ed, d_lse, d_tok, d_lp, d_scratch, 0)); /* warm-up */
        CK(cudaEventRecord(e0, 0));
        for (int it = 0; it < 5; it++)
            CK(kern_sample(d_x, V, d_rows, N, d_ed, d_lse, d_tok, d_lp, d_scratch, 0));
        CK(cudaEventRecord(e1, 0));
        CK(cudaEventSynchronize(e1));
        float ms = 0.0f;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        fprintf(stderr, "kernels/sampling: %d rows x %d vocab, %s: %.3f ms per launch\n", N, V,
                names[cfg], ms / 5);
        cudaFree(d_rows), cudaFree(d_ed);
        free(ed), free(slot), free(seen);
    }
    cudaEventDestroy(e0), cudaEventDestroy(e1);
    cudaFree(d_x), cudaFree(d_scratch), cudaFree(d_lse), cudaFree(d_tok), cudaFree(d_lp);
    free(x);
}

/* kern_sample against smp_row: every combination of temperature, top_k,
 * top_p and min_p, with penalties, bias, bans and awkward logits. Token
 * for token, except where smp_row's target lies within 1e-6 (relative) of
 * a boundary between two tokens (summation order), at most a handful.
 * Returns the checks that failed here (testing.h counts per file). */
int tg_check_sampling(void)
{
    int failures_before = test_failures;
    static const int vocabs[2] = {128256, 1000}, counts[2] = {1280, 1024};
    struct samp_stats total = {0};
    for (int v = 0; v < 2; v++) {
        struct samp_stats st = {0};
        double t0 = tg_now_ms();
        samp_compare(vocabs[v], counts[v], &st);
        fprintf(stderr,
                "kernels/sampling: vocab %d: %d rows, %d identical tokens, %d at a boundary "
                "(tolerated), %d mismatches; %d logprobs differ; sorting reference agrees with "
                "smp_row on %d / %d rows (%.1f s)\n",
                vocabs[v], st.rows, st.same, st.tolerated, st.bad, st.logprob_diff, st.ref_same,
                st.ref_checked, (tg_now_ms() - t0) / 1e3);
        total.rows += st.rows, total.same += st.same, total.tolerated += st.tolerated;
        total.bad += st.bad, total.logprob_diff += st.logprob_diff;
    }
    CHECK(total.rows >= 2000);
    CHECK(total.bad == 0);
    CHECK(total.tolerated <= 5);
    CHECK(total.logprob_diff == 0);
    samp_time();
    return test_failures - failures_before;
}
