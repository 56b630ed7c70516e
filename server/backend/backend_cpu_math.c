/*
 * backend_cpu_math.c - numeric kernels of the CPU backend (see
 * backend_cpu_math.h): dtype conversion, the threaded matmul over weight
 * rows, RMSNorm and RoPE.
 *
 * The matmul splits W's rows into tasks of CMATH_ROWS_PER_TASK; a task
 * converts its rows to fp32 once (bf16/f16; fp32 rows are read in place),
 * then walks the tokens in blocks that stay in cache, computing 4 rows x 2
 * tokens at a time with 8-lane vector accumulators (GCC/Clang vector
 * extensions: SSE2 everywhere, AVX2+FMA through a function clone where the
 * CPU has it). Summation order differs from NumPy's; fp32 round-off only.
 * Owns nothing; never allocates.
 */
#include "backend_cpu_math.h"

#include <math.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#define CMATH_X86_DISPATCH 1
#endif

/* The 32-byte vectors only travel between helpers that are always inlined
 * (also at -O0, where a plain inline helper is called out of line with the
 * non-AVX ABI from an AVX2 function and crashes), so the ABI note GCC gives
 * for them without AVX does not apply. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
typedef float vf8 __attribute__((vector_size(32)));

static inline __attribute__((always_inline)) vf8 ld8(const float *p)
{
    vf8 v;
    memcpy(&v, p, sizeof(v));
    return v;
}

static inline __attribute__((always_inline)) float hsum8(vf8 v)
{
    return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}

static inline float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t u;
    if (exp == 0) {
        float sub = (float)mant * 5.9604644775390625e-8f; /* mant * 2^-24 */
        memcpy(&u, &sub, sizeof(u));
        u |= sign;
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (mant << 13);
    } else {
        u = sign | ((exp + 112u) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

void cmath_to_f32(const void *src, enum st_dtype dtype, int64_t i0, int64_t n, float *out)
{
    switch (dtype) {
    case ST_F32:
        memcpy(out, (const float *)src + i0, sizeof(float) * (size_t)n);
        break;
    case ST_BF16: {
        const uint16_t *s = (const uint16_t *)src + i0;
        for (int64_t i = 0; i < n; i++) {
            uint32_t u = (uint32_t)s[i] << 16;
            memcpy(&out[i], &u, sizeof(u));
        }
        break;
    }
    case ST_F16: {
        const uint16_t *s = (const uint16_t *)src + i0;
        for (int64_t i = 0; i < n; i++)
            out[i] = f16_to_f32(s[i]);
        break;
    }
    }
}

void cmath_row_f32(const struct cmat *w, int r, float *out)
{
    cmath_to_f32(w->data, w->dtype, (int64_t)r * w->ld, w->cols, out);
}

struct cmat cmat_rows(const struct cmat *w, int r0, int n)
{
    struct cmat s = *w;
    s.data = (const char *)w->data + (size_t)r0 * (size_t)w->ld * st_dtype_size(w->dtype);
    s.rows = n;
    return s;
}

struct cmat cmat_cols(const struct cmat *w, int c0, int n)
{
    struct cmat s = *w;
    s.data = (const char *)w->data + (size_t)c0 * st_dtype_size(w->dtype);
    s.cols = n;
    return s;
}

struct mm_ctx {
    float *const *row_bufs;
    const struct cmat *w;
    const float *bias;
    const float *x;
    int ldx;
    int n_tok;
    float *y;
    int ldy;
    int tok_block;
};

/* Four rows against three tokens (12 accumulators: what AVX2's 16
 * registers hold with the loads); rows/tokens past the end repeat the last
 * valid one and are simply not stored. Every (row, token) sum runs in the
 * same lane order as in dot_4x2_bf16, so a token's result never depends
 * on the tile, the path or its neighbours. */
static inline __attribute__((always_inline)) void
dot_4x3(const float *const w[4], const float *const x[3], int k_len, float out[4][3])
{
    vf8 a[4][3];
    for (int r = 0; r < 4; r++)
        for (int t = 0; t < 3; t++)
            a[r][t] = (vf8){0};
    int k = 0;
    for (; k + 8 <= k_len; k += 8) {
        vf8 xv0 = ld8(x[0] + k), xv1 = ld8(x[1] + k), xv2 = ld8(x[2] + k);
        for (int r = 0; r < 4; r++) {
            vf8 wv = ld8(w[r] + k);
            a[r][0] += wv * xv0;
            a[r][1] += wv * xv1;
            a[r][2] += wv * xv2;
        }
    }
    for (int r = 0; r < 4; r++)
        for (int t = 0; t < 3; t++)
            out[r][t] = hsum8(a[r][t]);
    for (; k < k_len; k++)
        for (int r = 0; r < 4; r++)
            for (int t = 0; t < 3; t++)
                out[r][t] += w[r][k] * x[t][k];
}

typedef uint16_t vu16x8 __attribute__((vector_size(16)));
typedef uint32_t vu32x8 __attribute__((vector_size(32)));

/* 8 bf16 values widened to fp32 in registers (bf16 is the top half of an
 * fp32). */
static inline __attribute__((always_inline)) vf8 ld8_bf16(const uint16_t *p)
{
    vu16x8 h;
    memcpy(&h, p, sizeof(h));
    vu32x8 u = __builtin_convertvector(h, vu32x8) << 16;
    vf8 f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

static inline float bf16_scalar(uint16_t v)
{
    uint32_t u = (uint32_t)v << 16;
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

/* dot_4x2 reading bf16 rows directly: for a few tokens, converting rows
 * through a buffer would cost more than the math. */
static inline __attribute__((always_inline)) void dot_4x2_bf16(const uint16_t *const w[4],
                                                               const float *x0, const float *x1,
                                                               int k_len, float out[4][2])
{
    vf8 a00 = {0}, a01 = {0}, a10 = {0}, a11 = {0}, a20 = {0}, a21 = {0}, a30 = {0}, a31 = {0};
    int k = 0;
    for (; k + 8 <= k_len; k += 8) {
        vf8 xv0 = ld8(x0 + k), xv1 = ld8(x1 + k);
        vf8 w0 = ld8_bf16(w[0] + k), w1 = ld8_bf16(w[1] + k), w2 = ld8_bf16(w[2] + k),
            w3 = ld8_bf16(w[3] + k);
        a00 += w0 * xv0;
        a01 += w0 * xv1;
        a10 += w1 * xv0;
        a11 += w1 * xv1;
        a20 += w2 * xv0;
        a21 += w2 * xv1;
        a30 += w3 * xv0;
        a31 += w3 * xv1;
    }
    out[0][0] = hsum8(a00);
    out[0][1] = hsum8(a01);
    out[1][0] = hsum8(a10);
    out[1][1] = hsum8(a11);
    out[2][0] = hsum8(a20);
    out[2][1] = hsum8(a21);
    out[3][0] = hsum8(a30);
    out[3][1] = hsum8(a31);
    for (; k < k_len; k++)
        for (int r = 0; r < 4; r++) {
            out[r][0] += bf16_scalar(w[r][k]) * x0[k];
            out[r][1] += bf16_scalar(w[r][k]) * x1[k];
        }
}

/* Stores a 4 x 2 tile (rows r0 + g .. of tokens t, t1) with the bias. */
static inline void store_tile(const struct mm_ctx *c, int r_first, int n_valid, int t, int t1,
                              float out[4][2])
{
    for (int i = 0; i < n_valid; i++) {
        int r = r_first + i;
        float b = c->bias ? c->bias[r] : 0.0f;
        c->y[(size_t)t * (size_t)c->ldy + (size_t)r] = out[i][0] + b;
        if (t1 != t) c->y[(size_t)t1 * (size_t)c->ldy + (size_t)r] = out[i][1] + b;
    }
}

/* Up to this many tokens, bf16 rows are read in place. */
#define CMATH_DIRECT_MAX_TOK 16

static inline __attribute__((always_inline)) void mm_task_body(void *ctxp, int task, int thread)
{
    const struct mm_ctx *c = ctxp;
    const struct cmat *w = c->w;
    int k_len = w->cols;
    int r0 = task * CMATH_ROWS_PER_TASK;
    int nr = w->rows - r0 < CMATH_ROWS_PER_TASK ? w->rows - r0 : CMATH_ROWS_PER_TASK;
    if (w->dtype == ST_BF16 && c->n_tok <= CMATH_DIRECT_MAX_TOK) {
        const uint16_t *base = (const uint16_t *)w->data + (size_t)r0 * (size_t)w->ld;
        for (int g = 0; g < nr; g += 4) {
            const uint16_t *wg[4];
            for (int i = 0; i < 4; i++)
                wg[i] = base + (size_t)(g + i < nr ? g + i : nr - 1) * (size_t)w->ld;
            for (int t = 0; t < c->n_tok; t += 2) {
                int t1 = t + 1 < c->n_tok ? t + 1 : t;
                float out[4][2];
                dot_4x2_bf16(wg, c->x + (size_t)t * (size_t)c->ldx,
                             c->x + (size_t)t1 * (size_t)c->ldx, k_len, out);
                store_tile(c, r0 + g, nr - g < 4 ? nr - g : 4, t, t1, out);
            }
        }
        return;
    }
    const float *rows[CMATH_ROWS_PER_TASK];
    for (int r = 0; r < nr; r++) {
        if (w->dtype == ST_F32) {
            rows[r] = (const float *)w->data + (size_t)(r0 + r) * (size_t)w->ld;
        } else {
            float *buf = c->row_bufs[thread] + (size_t)r * (size_t)k_len;
            cmath_row_f32(w, r0 + r, buf);
            rows[r] = buf;
        }
    }
    for (int tb = 0; tb < c->n_tok; tb += c->tok_block) {
        int te = tb + c->tok_block < c->n_tok ? tb + c->tok_block : c->n_tok;
        for (int g = 0; g < nr; g += 4) {
            const float *wg[4];
            for (int i = 0; i < 4; i++)
                wg[i] = rows[g + i < nr ? g + i : nr - 1];
            for (int t = tb; t < te; t += 3) {
                int tt[3] = {t, t + 1 < te ? t + 1 : t, t + 2 < te ? t + 2 : t};
                const float *xs[3];
                for (int j = 0; j < 3; j++)
                    xs[j] = c->x + (size_t)tt[j] * (size_t)c->ldx;
                float out[4][3];
                dot_4x3(wg, xs, k_len, out);
                int n_rows = nr - g < 4 ? nr - g : 4;
                for (int j = 0; j < 3 && t + j < te; j++)
                    for (int i = 0; i < n_rows; i++) {
                        int r = r0 + g + i;
                        float b = c->bias ? c->bias[r] : 0.0f;
                        c->y[(size_t)tt[j] * (size_t)c->ldy + (size_t)r] = out[i][j] + b;
                    }
            }
        }
    }
}

static void mm_task_generic(void *ctxp, int task, int thread)
{
    mm_task_body(ctxp, task, thread);
}

#ifdef CMATH_X86_DISPATCH
/* The same code compiled for AVX2 + FMA: 8-lane vectors in one register
 * and fused multiply-adds. Chosen at run time where the CPU has both. */
__attribute__((target("avx2,fma"))) static void mm_task_avx2(void *ctxp, int task, int thread)
{
    mm_task_body(ctxp, task, thread);
}

static cpool_fn pick_mm_task(void)
{
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return mm_task_avx2;
    return mm_task_generic;
}
#else
static cpool_fn pick_mm_task(void)
{
    return mm_task_generic;
}
#endif

void cmath_matmul(struct cpool *pool, float *const *row_bufs, const struct cmat *w,
                  const float *bias, const float *x, int ldx, int n_tok, float *y, int ldy)
{
    if (n_tok <= 0) return;
    /* Token blocks of about 128 KiB of activations, so they stay in L2
     * while the task's rows sweep over them. */
    int tok_block = (int)(32768 / (w->cols > 0 ? w->cols : 1));
    if (tok_block < 2) tok_block = 2;
    if (tok_block > 64) tok_block = 64;
    struct mm_ctx c = {.row_bufs = row_bufs,
                       .w = w,
                       .bias = bias,
                       .x = x,
                       .ldx = ldx,
                       .n_tok = n_tok,
                       .y = y,
                       .ldy = ldy,
                       .tok_block = tok_block};
    int n_tasks = (w->rows + CMATH_ROWS_PER_TASK - 1) / CMATH_ROWS_PER_TASK;
    cpool_run(pool, pick_mm_task(), &c, n_tasks);
}

float cmath_dot(const float *a, const float *b, int n)
{
    vf8 acc = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        acc += ld8(a + i) * ld8(b + i);
    float s = hsum8(acc);
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

void cmath_axpy(float *y, float alpha, const float *x, int n)
{
    for (int i = 0; i < n; i++)
        y[i] += alpha * x[i];
}

void cmath_rmsnorm(const float *x, const float *weight, int n, float eps, float *out)
{
    double ss = 0.0;
    for (int i = 0; i < n; i++)
        ss += (double)x[i] * (double)x[i];
    float scale = (float)(1.0 / sqrt(ss / n + (double)eps));
    for (int i = 0; i < n; i++)
        out[i] = x[i] * scale * weight[i];
}

void cmath_rope_inv_freq(const struct model_config *cfg, double *inv_freq)
{
    int dim = cfg->head_dim, half = dim / 2;
    for (int i = 0; i < half; i++)
        inv_freq[i] = 1.0 / pow(cfg->rope_theta, (2.0 * i) / dim);
    if (cfg->rope_scaling == ROPE_LINEAR && cfg->rope_factor > 0) {
        for (int i = 0; i < half; i++)
            inv_freq[i] /= cfg->rope_factor;
    } else if (cfg->rope_scaling == ROPE_LLAMA3) {
        double factor = cfg->rope_factor, lo = cfg->rope_low_freq_factor;
        double hi = cfg->rope_high_freq_factor;
        double old_len = cfg->rope_original_max_position_embeddings;
        double low_freq_wavelen = old_len / lo, high_freq_wavelen = old_len / hi;
        for (int i = 0; i < half; i++) {
            double wavelen = 2.0 * M_PI / inv_freq[i];
            if (wavelen > low_freq_wavelen) {
                inv_freq[i] /= factor; /* long wavelengths: fully scaled */
            } else if (wavelen >= high_freq_wavelen) {
                /* medium band: blend between scaled and unscaled */
                double smooth = (old_len / wavelen - lo) / (hi - lo);
                inv_freq[i] = (1.0 - smooth) * inv_freq[i] / factor + smooth * inv_freq[i];
            }
        }
    }
}

void cmath_rope_angles(const double *inv_freq, int half, int32_t pos, float *cos_out,
                       float *sin_out)
{
    for (int i = 0; i < half; i++) {
        double a = (double)pos * inv_freq[i];
        cos_out[i] = (float)cos(a);
        sin_out[i] = (float)sin(a);
    }
}

void cmath_rope_apply(float *x, const float *cos_v, const float *sin_v, int half)
{
    for (int i = 0; i < half; i++) {
        float x1 = x[i], x2 = x[i + half];
        x[i] = x1 * cos_v[i] - x2 * sin_v[i];
        x[i + half] = x2 * cos_v[i] + x1 * sin_v[i];
    }
}
