/*
 * test_sample_emu.c - the GPU sampler (kern_sample, kernels/sampling.cu,
 * compiled unmodified for tests/emu's CUDA emulation) against the
 * reference sampler (smp_row, server/backend/sampling.c), token for token
 * and logprob for logprob, on a machine without a GPU.
 *
 * Rows are packed by cbsm_pack_row (server/backend/backend_cuda_sample_pack.c)
 * as backend_cuda_sample.c packs them, and launched at most
 * CUDA_SAMPLE_ROWS at a time, in at least two launches per vocabulary:
 * one with the emulated threads taking turns in thread order, one in a
 * seeded random order (a race-free kernel gives the same tokens under
 * both). Besides token and logprob, the processed logits the kernel leaves
 * in its scratch rows must equal sampling.h step 2 (times 1 / temperature
 * when drawing) bit for bit. Sizes: 600 rows at V 1000, 60 at 50021
 * (several radix passes), 10 at 128256 (17 id bits); ~7 s in a debug
 * build on one core. The rows cover every combination of temperature
 * (0: the argmax of the edited logits), top_k (off, 1, small, large, past
 * the live tokens), top_p and min_p (incl. 1 and > 1), under repetition /
 * presence / frequency penalties over prompt and generated histories (ids
 * out of range too), logit_bias (+-100, ids listed twice), banned ids (the
 * argmax, out of range, every id), on logits that are normal, peaked,
 * tied, half equal, flat, all equal, sprinkled with NaN / -inf, or all
 * -inf / NaN.
 *
 * A different token is tolerated only where a sorting reference (sampling.h
 * steps 2-5 with a full sort, below) puts the top_p or draw target within
 * 1e-6 (relative) of a boundary between two tokens: the kernel sums the
 * masses in another order (sampling.h step 5). At most MAX_TOLERATED such
 * rows; every other difference fails. The reference itself is checked
 * against smp_row on every REF_EVERY-th row.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend_cuda_sample_pack.h"
#include "kernels.h"
#include "rng.h"
#include "sample_ref.h"
#include "sampling.h"
#include "testing.h"

#define SAMPLE_ROWS 256 /* most rows per launch, as CUDA_SAMPLE_ROWS */
#define MAX_HIST 260
#define MAX_BIAS 8
#define N_TOP 16
#define NEAR 1e-6       /* relative gap to a boundary that excuses a different token */
#define MAX_TOLERATED 2 /* such rows over the whole test */
#define REF_EVERY 8

static uint64_t rng_state = 0x5eed0e3u;

static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}

static uint64_t rnd64(void)
{
    return ((uint64_t)rnd() << 32) | rnd();
}

static float rnd_unit(void) /* [-1, 1) */
{
    return (float)rnd() / 2147483648.0f - 1.0f;
}

static float rnd_gauss(void)
{
    double u = ((double)rnd() + 1.0) / 4294967297.0, v = (double)rnd() / 4294967296.0;
    return (float)(sqrt(-2.0 * log(u)) * cos(2.0 * M_PI * v));
}

/* ---- the rows ---- */

/* One row: its parameters and the arrays its logit_row points into. */
struct test_row {
    struct sampling_params sp;
    struct logit_row row;
    int32_t hist[MAX_HIST];
    int32_t bias_ids[MAX_BIAS];
    float bias_vals[MAX_BIAS];
    int32_t banned[4];
    const char *shape;
};

/* Fills x [V] with logits of one of several shapes, chosen by r. */
static const char *make_logits(float *x, int V, int r)
{
    for (int i = 0; i < V; i++)
        x[i] = 3.0f * rnd_gauss();
    if (r % 89 == 44) {
        for (int i = 0; i < V; i++)
            x[i] = -2.25f;
        return "all equal";
    }
    if (r % 89 == 70) {
        for (int i = 0; i < V; i++)
            x[i] = i % 2 ? NAN : -INFINITY;
        return "all -inf / NaN";
    }
    switch (r % 7) {
    case 1:
        x[rnd() % V] = 25.0f;
        x[rnd() % V] = 22.0f;
        return "peaked";
    case 2:
        for (int i = 0; i < V; i++)
            x[i] = roundf(x[i]);
        return "integer ties";
    case 3:
        for (int i = 0; i < V; i++)
            if (rnd() & 1) x[i] = 5.0f;
        return "half equal";
    case 4:
        for (int i = 0; i < V; i++) {
            uint32_t u = rnd() % 16;
            if (u == 0) x[i] = NAN;
            if (u == 1) x[i] = -INFINITY;
        }
        if (r % 3 == 0) x[0] = NAN;
        return "NaN / -inf";
    case 5:
        for (int i = 0; i < V; i++)
            x[i] *= 0.01f;
        return "flat";
    default:
        return "normal(0, 3)";
    }
}

/* The n best ids of x in canonical order (logit descending, id
 * ascending; NaN skipped), padded with small ids. */
static void best_ids(const float *x, int V, int32_t *top, int n)
{
    int have = 0;
    for (int32_t i = 0; i < V; i++) {
        if (isnan(x[i])) continue;
        if (have == n && !(x[i] > x[top[n - 1]])) continue;
        int j = have < n ? have++ : n - 1;
        for (; j > 0 && x[i] > x[top[j - 1]]; j--)
            top[j] = top[j - 1];
        top[j] = i;
    }
    for (int j = have; j < n; j++)
        top[j] = j % V;
}

/* Row r's settings: combination r of temperature x top_k x top_p x min_p
 * (all 400 within 400 consecutive rows), random penalties, history,
 * logit_bias and bans. */
static void make_row(struct test_row *t, const float *x, int V, int r, const int32_t *every_id)
{
    static const float temps[4] = {0.3f, 0.7f, 1.0f, 1.5f};
    static const int top_ks[5] = {0, 1, 7, 60, 100000};
    static const float top_ps[4] = {1.0f, 0.2f, 0.9f, 0.999f};
    static const float min_ps[5] = {0.0f, 0.02f, 0.4f, 1.0f, 1.5f}; /* 1: the tied best */
    static const float reps[4] = {1.0f, 1.15f, 0.85f, 1.4f};
    static const float presences[3] = {0.0f, 0.5f, -0.6f};
    static const float frequencies[3] = {0.0f, 0.25f, 1.75f};
    int32_t top[N_TOP];
    best_ids(x, V, top, N_TOP);
    struct sampling_params *sp = &t->sp;
    sp_defaults(sp);
    sp->temperature = r % 13 == 12 ? 0.0f : temps[r % 4];
    sp->top_k = top_ks[r / 4 % 5];
    sp->top_p = top_ps[r / 20 % 4];
    sp->min_p = min_ps[r / 80 % 5];
    sp->repetition_penalty = reps[rnd() % 4];
    sp->presence_penalty = presences[rnd() % 3];
    sp->frequency_penalty = frequencies[rnd() % 3];
    sp->seed = rnd64();

    int n_prompt = (int)(rnd() % 200), n_gen = (int)(rnd() % 60), n_hist = n_prompt + n_gen;
    for (int i = 0; i < n_hist; i++) {
        uint32_t u = rnd() % 24;
        t->hist[i] = u < 9 ? top[rnd() % N_TOP] : u < 22 ? (int32_t)(rnd() % V) : u == 22 ? -3 : V;
    }

    int n_bias = (int)(rnd() % 5) + (r % 6 == 0 ? 3 : 0);
    for (int i = 0; i < n_bias; i++) {
        uint32_t from = rnd() % 3, kind = rnd() % 4;
        t->bias_ids[i] = from == 0                 ? top[rnd() % 4]
                         : from == 1 && n_hist > 0 ? t->hist[rnd() % n_hist]
                                                   : (int32_t)(rnd() % V);
        t->bias_vals[i] = kind == 0 ? 100.0f : kind == 1 ? -100.0f : 4.0f * rnd_unit();
    }
    if (n_bias >= 2 && r % 5 == 0) t->bias_ids[n_bias - 1] = t->bias_ids[0]; /* listed twice */
    sp->n_logit_bias = n_bias;
    sp->logit_bias_ids = t->bias_ids;
    sp->logit_bias_values = t->bias_vals;

    const int32_t *banned = t->banned;
    int n_banned = 0;
    if (r % 53 == 17) {
        banned = every_id, n_banned = V; /* nothing left: the argmax of the raw logits */
    } else if (r % 6 == 1) {
        t->banned[n_banned++] = top[0];
    } else if (r % 6 == 4) {
        for (; n_banned < 3; n_banned++)
            t->banned[n_banned] = top[n_banned];
        t->banned[n_banned++] = V + 11; /* out of range: ignored */
    }
    t->row = (struct logit_row){.sample = true,
                                .target_id = -1,
                                .n_top = -1,
                                .sp = sp,
                                .rng_counter = rnd() % 4096,
                                .history = t->hist,
                                .n_history_prompt = r % 11 == 3 ? -1 : n_prompt,
                                .n_history = n_hist,
                                .banned_ids = banned,
                                .n_banned = n_banned};
}

/* ---- the sorting reference: sampling.h steps 2-5, written out ---- */

/* sampling.c's exp8 (sampling.h step 4: p = exp(w - max)), rounded step by step */
static float ref_exp(float x)
{
    if (x < -87.3f) return 0.0f;
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float q = r * 1.9875691500e-4f + 1.3981999507e-3f;
    q = q * r + 8.3334519073e-3f;
    q = q * r + 4.1665795894e-2f;
    q = q * r + 1.6666665459e-1f;
    q = q * r + 5.0000001201e-1f;
    float y = q * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return y * scale;
}

static int32_t ref_argmax(const float *v, int V) /* first maximum; NaN never wins */
{
    int32_t best = 0;
    for (int32_t i = 1; i < V; i++)
        if (v[i] > v[best]) best = i;
    return best;
}

struct ref_token {
    float w, p;
    int32_t id;
};

static int ref_canonical(const void *pa, const void *pb)
{
    const struct ref_token *a = pa, *b = pb;
    if (a->w != b->w) return a->w > b->w ? -1 : 1;
    return (a->id > b->id) - (a->id < b->id);
}

/* The first j < n with cum[j] > t (>= with reach), n when none; *gap: the
 * distance of t to that token's boundaries, relative to z. */
static int ref_cross(const double *cum, int n, double t, bool reach, double z, double *gap)
{
    int j = 0;
    while (j < n && !(reach ? cum[j] >= t : cum[j] > t))
        j++;
    if (j == n)
        *gap = n ? (t - cum[n - 1]) / z : INFINITY;
    else
        *gap = fmin(fabs(cum[j] - t), fabs(t - (j ? cum[j - 1] : 0.0))) / z;
    return j;
}

/* Steps 3-5 with a full sort: the token, and the smallest relative gap of
 * the top_p or draw target to a boundary between two tokens. */
static int32_t ref_sample(const float *x, int V, const struct logit_row *row, double *gap)
{
    const struct sampling_params *sp = row->sp;
    float *w = malloc(sizeof(float) * V);
    int32_t *mark = calloc((size_t)V, sizeof(int32_t));
    struct ref_token *c = malloc(sizeof(*c) * V);
    double *cum = malloc(sizeof(double) * V);
    int32_t token;
    *gap = INFINITY;
    sref_process_logits(x, V, row, w, mark);
    if (!(sp->temperature >= SMP_GREEDY_EPS)) {
        token = ref_argmax(w, V);
        goto out;
    }
    float inv_t = 1.0f / sp->temperature, m = -INFINITY;
    int n_live = 0;
    for (int i = 0; i < V; i++) {
        w[i] *= inv_t;
        m = w[i] > m ? w[i] : m;
        n_live += w[i] != -INFINITY;
    }
    if (m == -INFINITY || sp->min_p > 1.0f) {
        token = ref_argmax(m == -INFINITY ? x : w, V);
        goto out;
    }
    bool top_k = sp->top_k > 0 && sp->top_k < n_live;
    int n = 0;
    for (int32_t i = 0; i < V; i++) {
        float p = ref_exp(w[i] - m);
        if (top_k ? w[i] != -INFINITY : p > 0.0f) c[n++] = (struct ref_token){w[i], p, i};
    }
    qsort(c, (size_t)n, sizeof(*c), ref_canonical);
    if (top_k) n = sp->top_k;
    double z_dist = 0.0, acc = 0.0;
    for (int j = 0; j < n; j++)
        z_dist += c[j].p;
    int kept = 0;
    for (int j = 0; j < n; j++)
        if (!(sp->min_p > 0.0f) || c[j].p >= sp->min_p) c[kept++] = c[j];
    for (int j = 0; j < kept; j++)
        cum[j] = acc += c[j].p;
    int last = kept - 1;
    if (sp->top_p < 1.0f) {
        double g;
        int j = ref_cross(cum, kept, (double)sp->top_p * z_dist, true, z_dist, &g);
        *gap = g;
        if (j < kept) last = j;
    }
    double z = cum[last], g;
    int j = ref_cross(cum, last + 1, rng_uniform(sp->seed, row->rng_counter) * z, false, z, &g);
    *gap = fmin(*gap, g);
    token = c[j <= last ? j : last].id;
out:
    free(w), free(mark), free(c), free(cum);
    return token;
}

/* ---- the comparison ---- */

struct tally {
    int rows, same, logprob_differs, tolerated, mismatched, processed_differs, launch_failures;
    int ref_checked, ref_same;
};

/* kern_sample on rows [0, n) of x [n][V] under the emulator, packed as
 * backend_cuda_sample.c does, in two launches: one with the fibers in
 * thread order, one in a random order; token / logprob [n], the processed
 * logits in w [n][V]. */
static bool run_kernel(const float *x, int V, const struct test_row *t, int n, const double *lse,
                       int32_t *token, float *logprob, float *w)
{
    static unsigned launches;
    struct kern_sample_row *rows = malloc(sizeof(*rows) * (size_t)n);
    size_t bound = 0;
    for (int j = 0; j < n; j++)
        bound += cbsm_edit_bound(&t[j].row);
    struct kern_logit_edit *edits = malloc(sizeof(*edits) * (bound + 1));
    int32_t *slot = calloc((size_t)V, sizeof(int32_t)), *seen = calloc((size_t)V, sizeof(int32_t));
    int per_launch = n < 2 * SAMPLE_ROWS ? (n + 1) / 2 : SAMPLE_ROWS;
    int32_t n_edits = 0;
    for (int j = 0; j < n; j++) {
        int k = cbsm_pack_row(&t[j].row, V, j, &rows[j], edits + n_edits, slot, seen);
        rows[j].edit0 = n_edits;
        n_edits += k;
    }
    bool ok = true;
    for (int j0 = 0; j0 < n && ok; j0 += per_launch) {
        int m = n - j0 < per_launch ? n - j0 : per_launch;
        launches++;
        cuda_emu_set_schedule(launches % 2 ? 0 : launches);
        cudaError_t e =
            kern_sample(x, V, rows + j0, m, edits, lse, token, logprob, w + (size_t)j0 * V, NULL);
        if (e != cudaSuccess) {
            fprintf(stderr, "kern_sample: %s: %s\n", cudaGetErrorString(e),
                    cuda_emu_last_failure());
            ok = false;
        }
    }
    free(rows), free(edits), free(slot), free(seen);
    return ok;
}

static void report(const char *what, int V, int r, const struct test_row *t, int32_t cpu,
                   int32_t emu, int32_t ref, double gap)
{
    const struct sampling_params *sp = &t->sp;
    fprintf(stderr,
            "  %s: V %d row %d (%s): T %g top_k %d top_p %g min_p %g rep %g pres %g freq %g "
            "bias %d banned %d history %d (prompt %d) counter %llu: smp_row %d kern_sample %d "
            "reference %d (gap to a boundary %.3g)\n",
            what, V, r, t->shape, sp->temperature, sp->top_k, sp->top_p, sp->min_p,
            sp->repetition_penalty, sp->presence_penalty, sp->frequency_penalty, sp->n_logit_bias,
            t->row.n_banned, t->row.n_history, t->row.n_history_prompt,
            (unsigned long long)t->row.rng_counter, cpu, emu, ref, gap);
}

/* The kernel's processed logits w [V] (scratch) against sampling.h step 2
 * (times 1 / temperature when drawing), bit for bit. */
static bool same_processed(const float *x, int V, const struct test_row *t, const float *w)
{
    float *ref = malloc(sizeof(float) * V);
    int32_t *mark = calloc((size_t)V, sizeof(int32_t));
    sref_process_logits(x, V, &t->row, ref, mark);
    if (t->sp.temperature >= SMP_GREEDY_EPS) {
        float inv_t = 1.0f / t->sp.temperature;
        for (int i = 0; i < V; i++)
            ref[i] *= inv_t;
    }
    bool same = memcmp(ref, w, sizeof(float) * V) == 0;
    free(ref), free(mark);
    return same;
}

/* One row's verdict: the kernel's token and logprob against smp_row's. */
static void judge(const float *x, int V, int r, const struct test_row *t,
                  const struct row_result *cpu, int32_t emu_token, float emu_logprob,
                  const float *emu_w, struct tally *st)
{
    double gap;
    st->rows++;
    if (!same_processed(x, V, t, emu_w)) {
        st->processed_differs++;
        fprintf(stderr, "  processed logits differ: V %d row %d (%s)\n", V, r, t->shape);
    }
    if (cpu->token == emu_token) {
        st->same++;
        /* a NaN logit makes the row's lse NaN on both sides */
        if (cpu->logprob != emu_logprob && !(isnan(cpu->logprob) && isnan(emu_logprob))) {
            st->logprob_differs++;
            fprintf(stderr, "  logprob: V %d row %d: smp_row %.9g kern_sample %.9g\n", V, r,
                    cpu->logprob, emu_logprob);
        }
        if (r % REF_EVERY == 0) {
            int32_t ref = ref_sample(x, V, &t->row, &gap);
            st->ref_checked++;
            st->ref_same += ref == cpu->token;
            if (ref != cpu->token)
                report("reference differs", V, r, t, cpu->token, emu_token, ref, gap);
        }
        return;
    }
    int32_t ref = ref_sample(x, V, &t->row, &gap);
    bool near = gap <= NEAR;
    if (near)
        st->tolerated++;
    else
        st->mismatched++;
    report(near ? "different token at a boundary (tolerated)" : "MISMATCH", V, r, t, cpu->token,
           emu_token, ref, gap);
}

/* n_rows rows of vocabulary V; combinations start at r0. */
static void compare(int V, int n_rows, int r0, struct tally *st)
{
    float *x = malloc(sizeof(float) * (size_t)n_rows * V);
    struct test_row *t = malloc(sizeof(*t) * (size_t)n_rows);
    int32_t *every_id = malloc(sizeof(int32_t) * V), *token = malloc(sizeof(int32_t) * n_rows);
    float *logprob = malloc(sizeof(float) * n_rows);
    float *w = malloc(sizeof(float) * (size_t)n_rows * V);
    double *lse = malloc(sizeof(double) * n_rows);
    for (int i = 0; i < V; i++)
        every_id[i] = i;
    for (int j = 0; j < n_rows; j++) {
        float *xr = x + (size_t)j * V;
        t[j].shape = make_logits(xr, V, r0 + j);
        make_row(&t[j], xr, V, r0 + j, every_id);
        lse[j] = smp_logsumexp(xr, V); /* kern_logprobs' job on the GPU */
    }
    if (!run_kernel(x, V, t, n_rows, lse, token, logprob, w)) {
        st->launch_failures++;
        goto out;
    }
    struct smp_scratch *s;
    struct es_err err = {{0}};
    if (smp_scratch_create(V, &s, &err) != ES_OK) {
        CHECK(!"smp_scratch_create");
        goto out;
    }
    for (int j = 0; j < n_rows; j++) {
        const float *xr = x + (size_t)j * V;
        struct row_result cpu;
        smp_row(s, xr, &t[j].row, &cpu);
        judge(xr, V, r0 + j, &t[j], &cpu, token[j], logprob[j], w + (size_t)j * V, st);
    }
    smp_scratch_destroy(s);
out:
    free(x), free(t), free(every_id), free(token), free(logprob), free(lse), free(w);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(void)
{
    /* small V: every combination (twice); large V: many radix passes, 17 id bits */
    static const int vocabs[3] = {1000, 50021, 128256}, counts[3] = {600, 60, 10},
                     starts[3] = {0, 600, 660};
    struct tally all = {0};
    for (int v = 0; v < 3; v++) {
        struct tally st = {0};
        double t0 = now_s();
        compare(vocabs[v], counts[v], starts[v], &st);
        fprintf(stderr,
                "sample_emu: V %d: %d rows, %d same token, %d tolerated at a boundary, %d "
                "mismatches, %d logprobs and %d processed rows differ; reference = smp_row on "
                "%d / %d (%.1f s)\n",
                vocabs[v], st.rows, st.same, st.tolerated, st.mismatched, st.logprob_differs,
                st.processed_differs, st.ref_same, st.ref_checked, now_s() - t0);
        all.rows += st.rows, all.same += st.same, all.tolerated += st.tolerated;
        all.mismatched += st.mismatched, all.logprob_differs += st.logprob_differs;
        all.processed_differs += st.processed_differs;
        all.launch_failures += st.launch_failures;
        all.ref_checked += st.ref_checked, all.ref_same += st.ref_same;
    }
    CHECK(all.launch_failures == 0);
    CHECK(all.rows == 670);
    CHECK(all.mismatched == 0);
    CHECK(all.tolerated <= MAX_TOLERATED);
    CHECK(all.logprob_differs == 0);
    CHECK(all.processed_differs == 0);
    CHECK(all.ref_same == all.ref_checked);
    return test_result("sample_emu");
}
