/*
 * test_kernels_emu.c - the kernels of kernels/ other than the sampler
 * (test_sample_emu.c has that one), compiled unmodified for tests/emu's CUDA
 * emulation, against the host references of tests/gpu/kern_ref.c within
 * the tolerances test_gpu kernels holds the device to (kern_ref.h), on a
 * machine without a GPU:
 *   kern_embedding     16-byte and scalar paths, a vocabulary slice: exact;
 *   kern_add_rmsnorm   the vectorised and the generic kernel, with and
 *                      without the residual add and a row list: the stored
 *                      residual exact, the output within a bf16 ulp;
 *   kern_rope_kv_write hd 16..256, bias (Qwen2), q/k norms (Qwen3), plain
 *                      and llama3 frequencies, positions up to 131000, a
 *                      token that stores nothing: within a bf16 ulp, and
 *                      nothing else of the cache written;
 *   kern_silu_mul      16-byte vectors and the scalar path: within a bf16 ulp;
 *   kern_logprobs, kern_greedy  against smp_row (sampling.c) on rows with
 *                      ties, quantised rows, -inf entries;
 *   kern_paged_attention  SIMT (hd 16..256, groups 1, 2, 4, 8), MMA_TILES,
 *                      ROWS_SIMT, ROWS_MMA, each with one split and with
 *                      several (the combine kernel), with and without a
 *                      token list (unlisted outputs stay unwritten), block
 *                      tables longer than the ROWS kernels' window;
 *   kern_prefill_attention  hd 64 / 128, groups 1 and 4, chunks of one and
 *                      two tiles, beside a decode token through tok_list.
 * The attention cases are test_gpu's with fewer heads and contexts of at
 * most 300 tokens (one of 2100, for the block-table window). Every other
 * case runs its fibers in a seeded random order (a race-free kernel gives
 * the same results). The tensor cores and the device's approximate math
 * (__expf, exp2f, ex2.approx, rsqrtf, ...) are emulated within their
 * documented errors (cuda_emu.h), so results are held to tolerances, not
 * bits, except where the kernels' contracts are exact.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kern_ref.h"
#include "kernels.h"
#include "safetensors.h"
#include "testing.h"

static uint64_t rng_state = 0x12345678;

static uint32_t rnd(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 33);
}

static float rndf(void) /* [-1, 1): rnd() has 31 bits */
{
    return (float)((double)rnd() / 1073741824.0 - 1.0);
}

static uint16_t f2bf(float f)
{
    return st_f32_to_bf16(f);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Every other launch in a random fiber order. */
static void next_schedule(void)
{
    static unsigned launches;
    launches++;
    cuda_emu_set_schedule(launches % 2 ? 0 : 1000 + launches);
}

static bool launched(cudaError_t e, const char *what)
{
    if (e == cudaSuccess) return true;
    fprintf(stderr, "  %s: %s: %s\n", what, cudaGetErrorString(e), cuda_emu_last_failure());
    CHECK(e == cudaSuccess);
    return false;
}

/* bf16 outputs against exact values: none beyond kref_bf16_close, at most
 * KREF_BF16_OFF of them not the correctly rounded value */
struct bf16_tally {
    int n, far, off;
};

static void bf16_compare(struct bf16_tally *s, uint16_t got, double want, double abs_tol)
{
    s->n++;
    s->far += !kref_bf16_close(got, want, abs_tol);
    s->off += !kref_bf16_rounded(got, want);
}

static bool bf16_ok(const struct bf16_tally *s)
{
    return s->far == 0 && s->off <= KREF_BF16_OFF * s->n;
}

static uint16_t *bf16_array(size_t n, float scale, float offset)
{
    uint16_t *a = malloc(sizeof(uint16_t) * n);
    for (size_t i = 0; i < n; i++)
        a[i] = f2bf(offset + scale * rndf());
    return a;
}

/* --precision high's outputs: hi must equal the plain run's bf16 output,
 * and hi + lo must hold the exact value to about 16 bits (the remainder's
 * own rounding loses at most 2^-18 of it; rel_tol adds the kernel's fp32
 * arithmetic). Counts the values outside. */
static int split_misses(const uint16_t *plain, const uint16_t *hi, const uint16_t *lo,
                        const double *ref, int n, double rel_tol)
{
    int misses = 0;
    for (int i = 0; i < n; i++) {
        double sum = (double)st_bf16_to_f32(hi[i]) + (double)st_bf16_to_f32(lo[i]);
        double tol = (ldexp(1.0, -17) + rel_tol) * fabs(ref[i]) + 1e-30;
        misses += hi[i] != plain[i] || !(fabs(sum - ref[i]) <= tol);
    }
    return misses;
}

/* ---------------- embedding ---------------- */

static void test_embedding_case(int H, int vocab0, int vocab_n)
{
    enum { T = 7 };
    uint16_t *table = bf16_array((size_t)vocab_n * H, 2.0f, 0.0f);
    int32_t ids[T] = {vocab0, vocab0 + vocab_n - 1, vocab0 + 3, vocab0 - 1, vocab0 + vocab_n,
                      -5,     vocab0 + vocab_n / 2};
    float *resid = malloc(sizeof(float) * T * H), *ref = malloc(sizeof(float) * T * H);
    memset(resid, 0xff, sizeof(float) * T * H);
    next_schedule();
    if (launched(kern_embedding(table, ids, T, H, vocab0, vocab_n, resid, NULL),
                 "kern_embedding")) {
        kref_embedding(table, ids, T, H, vocab0, vocab_n, ref);
        bool same = memcmp(resid, ref, sizeof(float) * T * H) == 0;
        fprintf(stderr, "kernels_emu: embedding H %d vocab [%d, +%d): %s\n", H, vocab0, vocab_n,
                same ? "exact" : "DIFFERS");
        CHECK(same);
    }
    free(table), free(resid), free(ref);
}

/* ---------------- add + RMSNorm ---------------- */

static void test_rmsnorm_case(int H, bool with_add, bool with_rows)
{
    enum { R = 4 };
    static const int32_t rows[3] = {2, 0, 2};
    int n = with_rows ? 3 : R;
    float *resid = malloc(sizeof(float) * R * H), *before = malloc(sizeof(float) * R * H);
    for (int i = 0; i < R * H; i++)
        resid[i] = before[i] = 3.0f * rndf();
    uint16_t *add = with_add ? bf16_array((size_t)R * H, 1.0f, 0.0f) : NULL;
    uint16_t *w = bf16_array((size_t)H, 0.5f, 1.0f), *out = malloc(sizeof(uint16_t) * n * H);
    float *x = malloc(sizeof(float) * n * H);
    double *ref = malloc(sizeof(double) * n * H);
    const float eps = 1e-6f;
    memset(out, 0xff, sizeof(uint16_t) * n * H);
    next_schedule();
    if (launched(
            kern_add_rmsnorm(resid, add, w, eps, with_rows ? rows : NULL, n, H, out, NULL, NULL),
            "kern_add_rmsnorm")) {
        kref_add_rmsnorm(before, add, w, eps, with_rows ? rows : NULL, n, H, x, ref);
        struct bf16_tally st = {0};
        for (int i = 0; i < n * H; i++)
            bf16_compare(&st, out[i], ref[i], 0.0);
        /* the residual stream: x stored when adding to all rows, else untouched */
        bool stores = with_add && !with_rows;
        bool resid_ok = memcmp(resid, stores ? x : before, sizeof(float) * R * H) == 0;
        fprintf(stderr,
                "kernels_emu: add_rmsnorm H %d%s%s: %d outputs, %d beyond a bf16 ulp, %d not "
                "rounded as the exact value, residual %s\n",
                H, with_add ? " +add" : "", with_rows ? " rows" : "", st.n, st.far, st.off,
                resid_ok ? "exact" : "DIFFERS");
        CHECK(bf16_ok(&st));
        CHECK(resid_ok);
    }
    /* again with the remainder (--precision high), from the same residual */
    uint16_t *hi = malloc(sizeof(uint16_t) * n * H), *lo = malloc(sizeof(uint16_t) * n * H);
    memcpy(resid, before, sizeof(float) * R * H);
    next_schedule();
    if (launched(kern_add_rmsnorm(resid, add, w, eps, with_rows ? rows : NULL, n, H, hi, lo, NULL),
                 "kern_add_rmsnorm (split)")) {
        int misses = split_misses(out, hi, lo, ref, n * H, 1e-6);
        fprintf(stderr, "kernels_emu: add_rmsnorm H %d split: %d of %d not within 2^-16\n", H,
                misses, n * H);
        CHECK(misses == 0);
    }
    free(resid), free(before), free(add), free(w), free(out), free(x), free(ref), free(hi),
        free(lo);
}

/* ---------------- RoPE, q/k norms, KV store ---------------- */

/* transformers' default and llama3 rotary frequencies, rounded to fp32 */
static void rope_inv_freq(int hd, double theta, bool llama3, float *inv_freq)
{
    const double factor = 8.0, low = 1.0, high = 4.0, original = 8192.0;
    for (int i = 0; i < hd / 2; i++) {
        double f = 1.0 / pow(theta, 2.0 * i / hd), wavelen = 2.0 * M_PI / f;
        if (llama3 && wavelen > original / low) {
            f /= factor;
        } else if (llama3 && wavelen >= original / high) {
            double smooth = (original / wavelen - low) / (high - low);
            f = (1.0 - smooth) * f / factor + smooth * f;
        }
        inv_freq[i] = (float)f;
    }
}

struct rope_case {
    int hd, nq, nkv;
    bool bias, norms, llama3;
};

/* kern_rope_kv_write again with the remainders' outputs (--precision
 * high): q and the stored K / V unchanged, each hi + lo within 2^-17 of
 * the exact value plus the fp32 arithmetic's 2e-6 of the head's size. */
static void rope_check_split(struct kern_rope_args *a, const double *q, const double *kv,
                             const double *mag)
{
    int T = a->T, hd = a->hd, nq = a->nq, nkv = a->nkv, nh = nq + 2 * nkv, BS = a->block_size;
    size_t nqe = (size_t)T * nq * hd, cache_elems = 0;
    for (int t = 0; t < T; t++)
        if (a->slot_mapping[t] >= 0 && (size_t)(a->slot_mapping[t] / BS + 1) > cache_elems)
            cache_elems = (size_t)(a->slot_mapping[t] / BS + 1);
    cache_elems *= (size_t)nkv * BS * hd;
    uint16_t *plain_q = a->q_out, *plain_k = a->k_cache, *plain_v = a->v_cache;
    struct kern_rope_args b = *a;
    b.q_out = malloc(sizeof(uint16_t) * nqe);
    b.q_out_lo = malloc(sizeof(uint16_t) * nqe);
    b.k_cache = malloc(sizeof(uint16_t) * cache_elems);
    b.v_cache = malloc(sizeof(uint16_t) * cache_elems);
    b.k_cache_lo = malloc(sizeof(uint16_t) * cache_elems);
    b.v_cache_lo = malloc(sizeof(uint16_t) * cache_elems);
    next_schedule();
    if (launched(kern_rope_kv_write(&b, NULL), "kern_rope_kv_write (split)")) {
        int misses = 0, n = 0;
        for (int t = 0; t < T; t++)
            for (int h = 0; h < nh; h++) {
                bool is_q = h < nq, is_k = !is_q && h < nq + nkv;
                int kvh = is_k ? h - nq : h - nq - nkv;
                double tol = 2e-6 * mag[t * nh + h];
                for (int i = 0; i < hd; i++) {
                    const uint16_t *hi, *lo, *plain;
                    size_t at;
                    double want;
                    if (is_q) {
                        at = ((size_t)t * nq + h) * hd + i;
                        hi = b.q_out, lo = b.q_out_lo, plain = plain_q, want = q[at];
                    } else if (a->slot_mapping[t] >= 0) {
                        int slot = a->slot_mapping[t];
                        at = (((size_t)(slot / BS) * nkv + kvh) * BS + slot % BS) * hd + i;
                        hi = is_k ? b.k_cache : b.v_cache;
                        lo = is_k ? b.k_cache_lo : b.v_cache_lo;
                        plain = is_k ? plain_k : plain_v;
                        want = kv[((size_t)t * 2 * nkv + h - nq) * hd + i];
                    } else {
                        continue;
                    }
                    double sum = (double)st_bf16_to_f32(hi[at]) + st_bf16_to_f32(lo[at]);
                    n++;
                    misses += hi[at] != plain[at] ||
                              !(fabs(sum - want) <= ldexp(fabs(want), -17) + tol + 1e-30);
                }
            }
        fprintf(stderr, "kernels_emu: rope hd %d split: %d of %d not within 2^-16\n", hd, misses,
                n);
        CHECK(misses == 0);
    }
    free(b.q_out), free(b.q_out_lo), free(b.k_cache), free(b.v_cache), free(b.k_cache_lo);
    free(b.v_cache_lo);
}

static void test_rope_case(const struct rope_case *c)
{
    enum { T = 5, BS = 16, N_BLOCKS = 4 };
    int hd = c->hd, nh = c->nq + 2 * c->nkv;
    size_t cache_elems = (size_t)N_BLOCKS * c->nkv * BS * hd;
    float *qkv = malloc(sizeof(float) * T * nh * hd), inv_freq[128];
    for (int i = 0; i < T * nh * hd; i++)
        qkv[i] = 2.0f * rndf();
    int32_t positions[T] = {0, 1, 777, 8191, 131000}, slots[T] = {5, 17, -1, 63, 40};
    rope_inv_freq(hd, c->llama3 ? 500000.0 : 10000.0, c->llama3, inv_freq);
    struct kern_rope_args a = {
        .qkv = qkv,
        .q_out = malloc(sizeof(uint16_t) * T * c->nq * hd),
        .qkv_bias = c->bias ? bf16_array((size_t)nh * hd, 0.5f, 0.0f) : NULL,
        .q_norm = c->norms ? bf16_array((size_t)hd, 0.5f, 1.0f) : NULL,
        .k_norm = c->norms ? bf16_array((size_t)hd, 0.5f, 1.0f) : NULL,
        .norm_eps = 1e-6f,
        .inv_freq = inv_freq,
        .positions = positions,
        .slot_mapping = slots,
        .k_cache = malloc(sizeof(uint16_t) * cache_elems),
        .v_cache = malloc(sizeof(uint16_t) * cache_elems),
        .T = T,
        .nq = c->nq,
        .nkv = c->nkv,
        .hd = hd,
        .block_size = BS,
    };
    memset(a.q_out, 0xff, sizeof(uint16_t) * T * c->nq * hd);
    memset(a.k_cache, 0xff, sizeof(uint16_t) * cache_elems); /* 0xffff: not written */
    memset(a.v_cache, 0xff, sizeof(uint16_t) * cache_elems);
    double *q = malloc(sizeof(double) * T * c->nq * hd),
           *kv = malloc(sizeof(double) * T * 2 * c->nkv * hd);
    double *mag = malloc(sizeof(double) * T * nh);
    next_schedule();
    if (launched(kern_rope_kv_write(&a, NULL), "kern_rope_kv_write")) {
        kref_rope(&a, q, kv, mag);
        struct bf16_tally st = {0};
        int stray = 0;
        for (int t = 0; t < T; t++)
            for (int h = 0; h < nh; h++) {
                double tol = 2e-6 * mag[t * nh + h]; /* fp32 arithmetic before the rounding */
                bool is_q = h < c->nq, is_k = !is_q && h < c->nq + c->nkv;
                int kvh = is_k ? h - c->nq : h - c->nq - c->nkv;
                for (int i = 0; i < hd; i++) {
                    if (is_q) {
                        bf16_compare(&st, a.q_out[((size_t)t * c->nq + h) * hd + i],
                                     q[((size_t)t * c->nq + h) * hd + i], tol);
                    } else if (slots[t] >= 0) {
                        size_t blk = (size_t)(slots[t] / BS), off = (size_t)(slots[t] % BS);
                        size_t at = ((blk * c->nkv + kvh) * BS + off) * hd + i;
                        bf16_compare(&st, (is_k ? a.k_cache : a.v_cache)[at],
                                     kv[((size_t)t * 2 * c->nkv + h - c->nq) * hd + i], tol);
                    }
                }
            }
        /* cache slots of no token, and the token without a slot: untouched */
        for (size_t i = 0; i < cache_elems; i++) {
            int slot = (int)(i / hd / BS / c->nkv * BS + i / hd % BS), owned = 0;
            for (int t = 0; t < T; t++)
                owned |= slots[t] == slot;
            if (!owned) stray += (a.k_cache[i] != 0xffff) + (a.v_cache[i] != 0xffff);
        }
        fprintf(stderr,
                "kernels_emu: rope hd %d nq %d nkv %d%s%s%s: %d values, %d beyond a bf16 ulp, "
                "%d not rounded as the exact value, %d stray cache writes\n",
                hd, c->nq, c->nkv, c->bias ? " bias" : "", c->norms ? " q/k norms" : "",
                c->llama3 ? " llama3" : "", st.n, st.far, st.off, stray);
        CHECK(bf16_ok(&st));
        CHECK(stray == 0);
        rope_check_split(&a, q, kv, mag);
    }
    free(qkv), free(a.q_out), free((void *)a.qkv_bias), free((void *)a.q_norm);
    free((void *)a.k_norm), free(a.k_cache), free(a.v_cache), free(q), free(kv), free(mag);
}

/* ---------------- SiLU x up ---------------- */

static void test_silu_case(int T, int I)
{
    float *gu = malloc(sizeof(float) * T * 2 * I);
    for (int i = 0; i < T * 2 * I; i++)
        gu[i] = i % (2 * I) < I ? 8.0f * rndf() : 2.0f * rndf();
    gu[0] = -100.0f, gu[1] = 100.0f, gu[2] = 0.0f, gu[3] = -0.0f; /* saturated and 0 */
    uint16_t *out = malloc(sizeof(uint16_t) * T * I);
    double *ref = malloc(sizeof(double) * T * I);
    memset(out, 0xff, sizeof(uint16_t) * T * I);
    next_schedule();
    if (launched(kern_silu_mul(gu, T, I, out, NULL, NULL), "kern_silu_mul")) {
        kref_silu_mul(gu, T, I, ref);
        struct bf16_tally st = {0};
        for (int i = 0; i < T * I; i++) /* __expf: 2 + 1.173 |x| ulp, here <= 12 */
            bf16_compare(&st, out[i], ref[i], 2e-6 * fabs(ref[i]) + 1e-30);
        fprintf(stderr,
                "kernels_emu: silu_mul T %d I %d: %d values, %d beyond a bf16 ulp, %d not rounded "
                "as the exact value\n",
                T, I, st.n, st.far, st.off);
        CHECK(bf16_ok(&st));
        uint16_t *hi = malloc(sizeof(uint16_t) * T * I), *lo = malloc(sizeof(uint16_t) * T * I);
        next_schedule();
        if (launched(kern_silu_mul(gu, T, I, hi, lo, NULL), "kern_silu_mul (split)")) {
            int misses = split_misses(out, hi, lo, ref, T * I, 2e-6);
            fprintf(stderr, "kernels_emu: silu_mul T %d I %d split: %d of %d not within 2^-16\n", T,
                    I, misses, T * I);
            CHECK(misses == 0);
        }
        free(hi), free(lo);
    }
    free(gu), free(out), free(ref);
}

/* ---------------- logprobs and greedy ---------------- */

/* test_gpu's rows at a smaller vocabulary: ties at the top, quantised
 * rows, a target among the tied; and rows with -inf entries. */
static void test_logits(void)
{
    enum { R = 23, V = 1000 };
    float *lg = malloc(sizeof(float) * R * V);
    int32_t n_top[R], target[R], rows[R], top_ids[R][KERN_MAX_TOP], rank[R], tok[R];
    float top_lp[R][KERN_MAX_TOP], tlp[R], lp[R];
    double lse[R];
    for (int r = 0; r < R; r++) {
        float *x = lg + (size_t)r * V;
        for (int i = 0; i < V; i++)
            x[i] = rndf() * 8.0f;
        x[7] = x[900] = 9.5f;
        if (r % 3 == 0)
            for (int i = 0; i < V; i++)
                x[i] = roundf(x[i]);
        if (r % 7 == 6)
            for (int i = 0; i < V; i += 3)
                x[i] = -INFINITY;
        n_top[r] = r % 5 == 4 ? -1 : r % KERN_MAX_TOP + 1;
        target[r] = r % 4 == 0 ? -1 : (int32_t)(rnd() % V);
        if (r == 5) target[r] = 900;
        rows[r] = R - 1 - r;
    }
    next_schedule();
    bool ok = launched(kern_logprobs(lg, R, V, n_top, target, KERN_MAX_TOP, lse, &top_ids[0][0],
                                     &top_lp[0][0], tlp, rank, NULL),
                       "kern_logprobs");
    next_schedule();
    ok = ok && launched(kern_greedy(lg, rows, R, V, lse, tok, lp, NULL), "kern_greedy");
    if (ok) {
        int bad = kref_logits_mismatches(lg, R, V, n_top, target, lse, &top_ids[0][0],
                                         &top_lp[0][0], tlp, rank, tok, lp);
        fprintf(stderr, "kernels_emu: logits %d rows x %d vocab, %d mismatches vs sampling.c\n", R,
                V, bad);
        CHECK(bad == 0);
    }
    free(lg);
}

/* ---------------- paged and prefill attention ---------------- */

static const char *const attn_variant_names[KERN_ATTN_N_VARIANTS] = {
    [KERN_ATTN_AUTO] = "auto",           [KERN_ATTN_SIMT] = "simt",
    [KERN_ATTN_MMA_TILES] = "mma-tiles", [KERN_ATTN_ROWS_SIMT] = "rows-simt",
    [KERN_ATTN_ROWS_MMA] = "rows-mma",
};

enum { ATTN_SEQS = 3 };

/* What runs: as test_gpu, sequence 0 is one decode token, 1 and 2 the last
 * qt query tokens of contexts ctx (decode: through kern_paged_attention;
 * prefill: chunks on kern_prefill_attention, token 0 through tok_list);
 * list (decode only): every other token through tok_list, in reverse. */
enum attn_shape { ATTN_DECODE, ATTN_PREFILL, ATTN_LONG };

struct attn_case {
    int hd, nq, nkv, partition, max_splits;
    enum attn_shape shape;
    bool mma, list;
};

/* which variants ran, with one split and with several; prefill runs */
struct attn_coverage {
    int ran[KERN_ATTN_N_VARIANTS][2];
    int prefill;
    int remainders[KERN_ATTN_N_VARIANTS]; /* --precision high's runs per variant */
};

struct attn_inputs {
    int T, n_blocks, stride, bs, q_stride;
    int32_t tok_seq[128], tok_ctx[128], list[64], n_list;
    int32_t tile_seq[8], tile_q0[8], tile_qn[8], n_tiles;
    uint16_t *q, *kc, *vc;
    int32_t *bt;
};

static void attn_make_inputs(const struct attn_case *c, struct attn_inputs *in)
{
    static const int ctxs[3][ATTN_SEQS] = {{1, 150, 300}, {1, 150, 40}, {1, 40, 2100}};
    static const int qts[3][ATTN_SEQS] = {{1, 5, 3}, {1, 80, 40}, {1, 2, 1}};
    const int *ctx = ctxs[c->shape], *qt = qts[c->shape];
    in->bs = 16;
    in->stride = ctx[2] > ctx[1] ? ctx[2] / in->bs + 1 : ctx[1] / in->bs + 1;
    in->n_blocks = in->stride + 40;
    size_t cache_elems = (size_t)in->n_blocks * c->nkv * in->bs * c->hd;
    in->kc = bf16_array(cache_elems, 1.0f, 0.0f);
    in->vc = bf16_array(cache_elems, 1.0f, 0.0f);
    in->bt = malloc(sizeof(int32_t) * ATTN_SEQS * in->stride);
    for (int i = 0; i < ATTN_SEQS * in->stride; i++)
        in->bt[i] = (int32_t)(rnd() % in->n_blocks);
    in->T = 0;
    for (int s = 0; s < ATTN_SEQS; s++)
        for (int j = 0; j < qt[s]; j++, in->T++)
            in->tok_seq[in->T] = s, in->tok_ctx[in->T] = ctx[s] - (qt[s] - 1 - j);
    in->q_stride = (c->nq + 2 * c->nkv) * c->hd;
    in->q = bf16_array((size_t)in->T * in->q_stride, 2.0f, 0.0f);
    in->n_list = 0;
    in->n_tiles = 0;
    if (c->shape == ATTN_PREFILL) {
        in->list[in->n_list++] = 0;
        for (int s = 1, q0 = qt[0]; s < ATTN_SEQS; q0 += qt[s], s++)
            for (int j = 0; j < qt[s]; j += KERN_PREFILL_TILE, in->n_tiles++) {
                in->tile_seq[in->n_tiles] = s;
                in->tile_q0[in->n_tiles] = q0 + j;
                in->tile_qn[in->n_tiles] =
                    qt[s] - j < KERN_PREFILL_TILE ? qt[s] - j : KERN_PREFILL_TILE;
            }
    } else if (c->list) {
        for (int t = in->T - 1; t >= 0; t -= 2)
            in->list[in->n_list++] = t;
    }
}

/* Runs one variant; out [T][nq][hd] is 0xffff (NaN) where nothing wrote;
 * out_lo: NULL, or the remainder's output (--precision high). */
static bool attn_run(struct kern_attn_args *a, const struct attn_inputs *in, bool prefill,
                     uint16_t *out, uint16_t *out_lo)
{
    memset(out, 0xff, sizeof(uint16_t) * (size_t)a->T * a->nq * a->hd);
    a->out = out;
    a->out_lo = out_lo;
    next_schedule();
    if (!launched(kern_paged_attention(a, NULL), "kern_paged_attention")) return false;
    if (!prefill) return true;
    next_schedule();
    return launched(
        kern_prefill_attention(a, in->tile_seq, in->tile_q0, in->tile_qn, in->n_tiles, NULL),
        "kern_prefill_attention");
}

/* The same run with out_lo (--precision high): the bf16 outputs unchanged,
 * and hi + lo nearer the exact values than hi alone (the kernel's own
 * error, bf16 probabilities on the tensor cores included, stays). */
static void attn_check_split(struct kern_attn_args *a, const struct attn_inputs *in, bool prefill,
                             const uint16_t *plain, const double *ref, const bool *computed)
{
    size_t n_out = (size_t)a->T * a->nq * a->hd, row = (size_t)a->nq * a->hd;
    uint16_t *hi = malloc(sizeof(uint16_t) * n_out), *lo = malloc(sizeof(uint16_t) * n_out);
    memset(lo, 0xff, sizeof(uint16_t) * n_out);
    if (attn_run(a, in, prefill, hi, lo)) {
        double err_hi = 0.0, err_sum = 0.0;
        int changed = 0;
        for (size_t i = 0; i < n_out; i++) {
            if (!computed[i / row]) continue;
            double h = st_bf16_to_f32(hi[i]), l = st_bf16_to_f32(lo[i]);
            changed += hi[i] != plain[i];
            err_hi += fabs(h - ref[i]);
            err_sum += fabs(h + l - ref[i]);
        }
        fprintf(stderr,
                "kernels_emu:   split output: mean |err| %.3e -> %.3e with the remainder, %d "
                "bf16 outputs changed\n",
                err_hi / (double)n_out, err_sum / (double)n_out, changed);
        CHECK(changed == 0);
        CHECK(err_sum < 0.75 * err_hi);
    }
    a->out_lo = NULL;
    free(hi), free(lo);
}

/* --precision high's attention: q, K and V given with remainders (random,
 * up to half a bf16 ulp of their values), every token on ROWS_SIMT where it
 * covers the shape (hd 64 / 128, group <= 4), else SIMT, whatever variant
 * is asked for; hi + lo of the output against the reference on the
 * two-term inputs: fp32 math, so within 2e-5 where bf16 outputs alone are
 * held to KREF_ATTN_REL_ERR. */
static void attn_check_remainders(struct kern_attn_args a, const struct attn_inputs *in,
                                  size_t cache_elems, const bool *computed,
                                  struct attn_coverage *cov)
{
    size_t n_q = (size_t)in->T * in->q_stride, n_out = (size_t)a.T * a.nq * a.hd;
    uint16_t *q_lo = malloc(sizeof(uint16_t) * n_q), *k_lo = malloc(sizeof(uint16_t) * cache_elems);
    uint16_t *v_lo = malloc(sizeof(uint16_t) * cache_elems);
    for (size_t i = 0; i < n_q; i++)
        q_lo[i] = f2bf(st_bf16_to_f32(in->q[i]) * ldexpf(rndf(), -9));
    for (size_t i = 0; i < cache_elems; i++) {
        k_lo[i] = f2bf(st_bf16_to_f32(in->kc[i]) * ldexpf(rndf(), -9));
        v_lo[i] = f2bf(st_bf16_to_f32(in->vc[i]) * ldexpf(rndf(), -9));
    }
    a.q_lo = q_lo, a.k_cache_lo = k_lo, a.v_cache_lo = v_lo;
    a.variant = KERN_ATTN_ROWS_MMA; /* asked for, not run: only SIMT reads remainders */
    double *ref = malloc(sizeof(double) * n_out);
    kref_attention(&a, ref);
    uint16_t *hi = malloc(sizeof(uint16_t) * n_out), *lo = malloc(sizeof(uint16_t) * n_out);
    memset(lo, 0xff, sizeof(uint16_t) * n_out);
    bool rows = (a.hd == 64 || a.hd == 128) && a.nq / a.nkv <= 4 && in->bs % 16 == 0 &&
                a.partition % 16 == 0 && a.q_stride % 8 == 0;
    int runs = kern_paged_attention_variant(&a);
    CHECK(runs == (rows ? KERN_ATTN_ROWS_SIMT : KERN_ATTN_SIMT));
    cov->remainders[runs]++;
    if (attn_run(&a, in, false, hi, lo)) {
        double rel = kref_attention_err2(hi, lo, ref, a.T, a.nq * a.hd, computed);
        double rel_hi = kref_attention_err(hi, ref, a.T, a.nq * a.hd, computed);
        fprintf(stderr,
                "kernels_emu:   q, K, V with remainders (%s): rel err %.2e (bf16 output alone "
                "%.2e)\n",
                attn_variant_names[runs], rel, rel_hi);
        CHECK(rel < 2e-5);
    }
    free(q_lo), free(k_lo), free(v_lo), free(ref), free(hi), free(lo);
}

static void test_attention_case(const struct attn_case *c, struct attn_coverage *cov)
{
    struct attn_inputs in;
    attn_make_inputs(c, &in);
    bool prefill = c->shape == ATTN_PREFILL, listed = in.n_list > 0;
    int n = listed ? in.n_list : in.T, hd = c->hd, nq = c->nq;
    struct kern_attn_args a = {.q = in.q,
                               .q_stride = in.q_stride,
                               .k_cache = in.kc,
                               .v_cache = in.vc,
                               .block_tables = in.bt,
                               .bt_stride = in.stride,
                               .tok_seq = in.tok_seq,
                               .tok_ctx = in.tok_ctx,
                               .tok_list = listed ? in.list : NULL,
                               .n_list = in.n_list,
                               .T = in.T,
                               .nq = nq,
                               .nkv = c->nkv,
                               .hd = hd,
                               .block_size = in.bs,
                               .scale = 1.0f / sqrtf((float)hd),
                               .use_mma = c->mma,
                               .partition = c->partition,
                               .max_splits = c->max_splits,
                               .part_acc = malloc(sizeof(float) * n * nq * c->max_splits * hd),
                               .part_ml = malloc(sizeof(float) * n * nq * c->max_splits * 2)};
    size_t n_out = (size_t)in.T * nq * hd;
    double *ref = malloc(sizeof(double) * n_out);
    uint16_t *out = malloc(sizeof(uint16_t) * n_out);
    kref_attention(&a, ref);
    /* the tokens computed: all but the unlisted ones of a decode list */
    bool *computed = calloc((size_t)in.T, sizeof(bool));
    for (int t = 0; t < in.T; t++)
        computed[t] = !c->list || prefill;
    for (int i = 0; c->list && i < in.n_list; i++)
        computed[in.list[i]] = true;

    static const int variants[] = {KERN_ATTN_AUTO, KERN_ATTN_SIMT, KERN_ATTN_ROWS_SIMT,
                                   KERN_ATTN_ROWS_MMA};
    bool checked[KERN_ATTN_N_VARIANTS] = {false};
    for (int vi = 0; vi < (c->mma ? 1 : 4); vi++) {
        a.variant = variants[vi];
        int runs = kern_paged_attention_variant(&a);
        if (vi > 0 && checked[runs]) continue;
        checked[runs] = true;
        if (!attn_run(&a, &in, prefill, out, NULL)) continue;
        double rel = kref_attention_err(out, ref, in.T, nq * hd, computed);
        int unlisted_written = 0;
        for (int t = 0; t < in.T; t++)
            for (int i = 0; !computed[t] && i < nq * hd; i++)
                unlisted_written += out[(size_t)t * nq * hd + i] != 0xffff;
        fprintf(stderr,
                "kernels_emu: attention%s [%s%s%s] hd %d nq %d nkv %d partition %d splits %d%s: "
                "rel err %.2e (worst token)%s\n",
                prefill ? " (prefill tiles)" : "", attn_variant_names[a.variant],
                runs != a.variant ? " -> " : "", runs != a.variant ? attn_variant_names[runs] : "",
                hd, nq, c->nkv, c->partition, c->max_splits, c->list ? " listed" : "", rel,
                unlisted_written ? " UNLISTED TOKENS WRITTEN" : "");
        CHECK(rel < KREF_ATTN_REL_ERR);
        CHECK(unlisted_written == 0);
        cov->ran[runs][c->max_splits > 1]++;
        cov->prefill += prefill;
        if (vi == 0) attn_check_split(&a, &in, prefill, out, ref, computed);
    }
    if (!prefill)
        attn_check_remainders(a, &in, (size_t)in.n_blocks * c->nkv * in.bs * hd, computed, cov);
    free(computed), free(ref), free(out), free(a.part_acc), free(a.part_ml);
    free(in.q), free(in.kc), free(in.vc), free(in.bt);
}

static void test_attention(void)
{
    static const struct attn_case cases[] = {
        /* test_gpu kernels' cases: heads / 4, contexts / 7, partitions to match */
        {128, 8, 2, 320, 1, ATTN_DECODE, false, false},
        {128, 8, 2, 32, 10, ATTN_DECODE, false, false},
        {64, 8, 2, 64, 5, ATTN_DECODE, false, false},
        {16, 4, 2, 32, 10, ATTN_DECODE, false, false},
        {256, 2, 2, 128, 3, ATTN_DECODE, false, false},
        {32, 8, 1, 320, 1, ATTN_DECODE, false, false},
        {128, 16, 2, 32, 10, ATTN_DECODE, false, false}, /* group 8 on the ROWS kernels */
        {64, 4, 2, 320, 1, ATTN_DECODE, false, false},   /* group 2 */
        {128, 8, 2, 320, 1, ATTN_PREFILL, false, false},
        {64, 8, 2, 320, 1, ATTN_PREFILL, false, false},
        {128, 2, 2, 320, 1, ATTN_PREFILL, false, false},
        {128, 8, 2, 320, 1, ATTN_DECODE, true, false},
        {128, 8, 2, 32, 10, ATTN_DECODE, true, false},
        {64, 8, 2, 64, 5, ATTN_DECODE, true, false},
        {64, 8, 1, 320, 1, ATTN_DECODE, true, false},
        {128, 2, 2, 128, 3, ATTN_DECODE, true, false},
        {128, 8, 2, 320, 1, ATTN_PREFILL, true, false},
        /* and here: token lists with splits, group 1 on the ROWS kernels, a
         * context longer than their block-table window (32 blocks) */
        {64, 4, 2, 64, 5, ATTN_DECODE, false, true},
        {128, 8, 2, 64, 5, ATTN_DECODE, true, true},
        {64, 2, 2, 64, 5, ATTN_DECODE, false, false},
        {64, 1, 1, 2112, 1, ATTN_LONG, false, false},
        {64, 2, 1, 768, 3, ATTN_LONG, false, false},
    };
    struct attn_coverage cov = {{{0}}, 0, {0}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        test_attention_case(&cases[i], &cov);
    for (int v = KERN_ATTN_SIMT; v < KERN_ATTN_N_VARIANTS; v++) {
        CHECK(cov.ran[v][0] > 0); /* every variant, with one split and with several */
        CHECK(cov.ran[v][1] > 0);
    }
    CHECK(cov.prefill > 0);
    CHECK(cov.remainders[KERN_ATTN_SIMT] > 0 && cov.remainders[KERN_ATTN_ROWS_SIMT] > 0);
}

int main(void)
{
    double t0 = now_s(), t;
    test_embedding_case(64, 0, 50);   /* 16-byte loads */
    test_embedding_case(36, 0, 50);   /* H % 8 != 0: one element per thread */
    test_embedding_case(520, 20, 15); /* a vocabulary slice: the rest embeds as 0 */
    test_rmsnorm_case(1024, true, false);
    test_rmsnorm_case(4096, false, false);
    test_rmsnorm_case(2048, true, true);
    test_rmsnorm_case(200, true, false);
    test_rmsnorm_case(200, false, true);
    test_rmsnorm_case(328, true, true);
    static const struct rope_case ropes[] = {
        {128, 4, 2, false, false, false}, {128, 4, 2, true, false, false},
        {128, 4, 2, false, true, false},  {64, 4, 1, false, false, true},
        {256, 2, 2, true, true, true},    {16, 2, 2, false, true, false},
    };
    for (size_t i = 0; i < sizeof ropes / sizeof ropes[0]; i++)
        test_rope_case(&ropes[i]);
    test_silu_case(3, 300);   /* 16-byte vectors */
    test_silu_case(2, 20000); /* vectors, more than one grid pass per row */
    test_silu_case(3, 301);   /* scalar: I not a multiple of 4 */
    fprintf(stderr, "kernels_emu: element-wise kernels %.1f s\n", (t = now_s()) - t0);
    test_logits();
    fprintf(stderr, "kernels_emu: logits %.1f s\n", now_s() - t);
    t = now_s();
    test_attention();
    fprintf(stderr, "kernels_emu: attention %.1f s (total %.1f s)\n", now_s() - t, now_s() - t0);
    return test_result("kernels_emu");
}
