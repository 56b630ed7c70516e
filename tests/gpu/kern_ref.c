/*
 * kern_ref.c - host references of the kernels' contracts, in double where
 * the kernels round (see kern_ref.h for who uses them and the tolerances).
 * Written from kernels.h's contracts, not from the kernels' code: sums in
 * plain order, no tiling, no online softmax.
 */
#include "kern_ref.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "safetensors.h"
#include "sampling.h"

bool kref_bf16_close(uint16_t got, double want, double abs_tol)
{
    double g = st_bf16_to_f32(got);
    if (isnan(g) || isnan(want)) return false;
    double ulp = want == 0.0 ? 0.0 : ldexp(1.0, ilogb(want) - 7); /* 8 significant bits */
    return fabs(g - want) <= ulp + abs_tol;
}

bool kref_bf16_rounded(uint16_t got, double want)
{
    return got == st_f32_to_bf16((float)want);
}

/* ---- attention ---- */

/* element i of a bf16 array and, when lo is given, its remainder */
static double two_term(const uint16_t *hi, const uint16_t *lo, size_t i)
{
    return (double)st_bf16_to_f32(hi[i]) + (lo ? (double)st_bf16_to_f32(lo[i]) : 0.0);
}

void kref_attention(const struct kern_attn_args *a, double *ref)
{
    int hd = a->hd, group = a->nq / a->nkv, bs = a->block_size, max_ctx = 1;
    for (int t = 0; t < a->T; t++)
        max_ctx = a->tok_ctx[t] > max_ctx ? a->tok_ctx[t] : max_ctx;
    double *p = malloc(sizeof(double) * (size_t)max_ctx);
    size_t *rows = malloc(sizeof(*rows) * (size_t)max_ctx);
    for (int t = 0; t < a->T; t++) {
        const int32_t *bt = a->block_tables + (size_t)a->tok_seq[t] * a->bt_stride;
        int ctx = a->tok_ctx[t];
        for (int h = 0; h < a->nq; h++) {
            int kvh = h / group;
            size_t q = (size_t)t * a->q_stride + (size_t)h * hd;
            double mx = -INFINITY, z = 0.0;
            for (int j = 0; j < ctx; j++) {
                rows[j] = (((size_t)bt[j / bs] * a->nkv + kvh) * bs + j % bs) * hd;
                double d = 0.0;
                for (int e = 0; e < hd; e++)
                    d += two_term(a->q, a->q_lo, q + e) *
                         two_term(a->k_cache, a->k_cache_lo, rows[j] + e);
                p[j] = d * a->scale;
                mx = p[j] > mx ? p[j] : mx;
            }
            for (int j = 0; j < ctx; j++)
                z += p[j] = exp(p[j] - mx);
            double *o = ref + ((size_t)t * a->nq + h) * hd;
            for (int e = 0; e < hd; e++) {
                double acc = 0.0;
                for (int j = 0; j < ctx; j++)
                    acc += p[j] * two_term(a->v_cache, a->v_cache_lo, rows[j] + e);
                o[e] = acc / z;
            }
        }
    }
    free(p);
    free(rows);
}

double kref_attention_err(const uint16_t *out, const double *ref, int T, int width,
                          const bool *want)
{
    return kref_attention_err2(out, NULL, ref, T, width, want);
}

double kref_attention_err2(const uint16_t *out, const uint16_t *out_lo, const double *ref, int T,
                           int width, const bool *want)
{
    double worst = 0.0;
    for (int t = 0; t < T; t++) {
        if (want && !want[t]) continue;
        double num = 0.0, den = 0.0;
        for (size_t i = (size_t)t * width; i < (size_t)(t + 1) * width; i++) {
            double g = two_term(out, out_lo, i);
            num += (g - ref[i]) * (g - ref[i]);
            den += ref[i] * ref[i];
        }
        double rel = sqrt(num / den);
        if (isnan(rel)) return rel;
        worst = rel > worst ? rel : worst;
    }
    return worst;
}

/* ---- logits ---- */

static bool near(double got, double want)
{
    return fabs(got - want) <= KREF_LOGPROB_TOL || (isnan(got) && isnan(want)) ||
           (isinf(got) && got == want);
}

int kref_logits_mismatches(const float *logits, int R, int V, const int32_t *n_top,
                           const int32_t *target, const double *lse, const int32_t *top_ids,
                           const float *top_lp, const float *target_lp, const int32_t *target_rank,
                           const int32_t *token, const float *logprob)
{
    struct smp_scratch *s;
    struct es_err err = {{0}};
    if (smp_scratch_create(V, &s, &err) != ES_OK) {
        fprintf(stderr, "kref_logits: %s\n", err.msg);
        return R;
    }
    int bad = 0;
    for (int r = 0; r < R; r++) {
        const float *x = logits + (size_t)r * V;
        struct logit_row row = {.sample = true, .target_id = target[r], .n_top = n_top[r]};
        struct row_result ref;
        smp_row(s, x, &row, &ref);
        int before = bad;
        bad += !near(lse[r], smp_logsumexp(x, V));
        bad += ref.token != token[r] || !near(logprob[r], ref.logprob);
        if (target[r] >= 0)
            bad += ref.target_rank != target_rank[r] || !near(target_lp[r], ref.target_logprob);
        for (int j = 0; j < ref.n_top; j++)
            bad += ref.top_ids[j] != top_ids[(size_t)r * KERN_MAX_TOP + j] ||
                   !near(top_lp[(size_t)r * KERN_MAX_TOP + j], ref.top_logprobs[j]);
        if (bad > before)
            fprintf(stderr,
                    "  logits row %d: lse %.9g (ref %.9g), token %d %.7g (ref %d %.7g), target %d "
                    "rank %d %.7g (ref %d %.7g), top[0] %d (ref %d)\n",
                    r, lse[r], smp_logsumexp(x, V), token[r], logprob[r], ref.token, ref.logprob,
                    target[r], target_rank[r], target_lp[r], ref.target_rank, ref.target_logprob,
                    ref.n_top > 0 ? top_ids[(size_t)r * KERN_MAX_TOP] : -1,
                    ref.n_top > 0 ? ref.top_ids[0] : -1);
    }
    smp_scratch_destroy(s);
    return bad;
}

/* ---- the element-wise kernels ---- */

void kref_embedding(const uint16_t *table, const int32_t *ids, int T, int H, int vocab0,
                    int vocab_n, float *resid)
{
    for (int t = 0; t < T; t++) {
        int row = ids[t] - vocab0;
        for (int i = 0; i < H; i++)
            resid[(size_t)t * H + i] =
                row >= 0 && row < vocab_n ? st_bf16_to_f32(table[(size_t)row * H + i]) : 0.0f;
    }
}

void kref_add_rmsnorm(const float *resid, const uint16_t *add, const uint16_t *w, float eps,
                      const int32_t *rows, int n, int H, float *x, double *out)
{
    for (int i = 0; i < n; i++) {
        int r = rows ? rows[i] : i;
        float *xi = x + (size_t)i * H;
        double ss = 0.0;
        for (int j = 0; j < H; j++) {
            xi[j] =
                resid[(size_t)r * H + j] + (add ? st_bf16_to_f32(add[(size_t)r * H + j]) : 0.0f);
            ss += (double)xi[j] * xi[j];
        }
        double inv = 1.0 / sqrt(ss / H + eps);
        for (int j = 0; j < H; j++)
            out[(size_t)i * H + j] = xi[j] * inv * st_bf16_to_f32(w[j]);
    }
}

/* One head x [hd] (bias added): its norm (nw != NULL) and, when rotate,
 * RoPE at pos; *mag: its largest |value| before the rotation. */
static void rope_head(double *x, int hd, const uint16_t *nw, float eps, bool rotate,
                      const float *inv_freq, int32_t pos, double *mag)
{
    int half = hd / 2;
    if (nw) {
        double ss = 0.0;
        for (int i = 0; i < hd; i++)
            ss += x[i] * x[i];
        double inv = 1.0 / sqrt(ss / hd + eps);
        for (int i = 0; i < hd; i++)
            x[i] *= inv * st_bf16_to_f32(nw[i]);
    }
    *mag = 0.0;
    for (int i = 0; i < hd; i++)
        *mag = fabs(x[i]) > *mag ? fabs(x[i]) : *mag;
    if (!rotate) return;
    for (int i = 0; i < half; i++) {
        float angle = (float)pos * inv_freq[i]; /* the contract: an fp32 product */
        double c = cos((double)angle), s = sin((double)angle), x1 = x[i], x2 = x[i + half];
        x[i] = x1 * c - x2 * s;
        x[i + half] = x2 * c + x1 * s;
    }
}

void kref_rope(const struct kern_rope_args *a, double *q, double *kv, double *mag)
{
    int nh = a->nq + 2 * a->nkv, hd = a->hd;
    for (int t = 0; t < a->T; t++)
        for (int h = 0; h < nh; h++) {
            bool is_q = h < a->nq, is_k = !is_q && h < a->nq + a->nkv;
            double *x = is_q ? q + ((size_t)t * a->nq + h) * hd
                             : kv + ((size_t)t * 2 * a->nkv + (h - a->nq)) * hd;
            for (int i = 0; i < hd; i++) {
                size_t at = ((size_t)t * nh + h) * hd + i;
                x[i] = (double)a->qkv[at] +
                       (a->qkv_bias ? st_bf16_to_f32(a->qkv_bias[(size_t)h * hd + i]) : 0.0);
            }
            const uint16_t *nw = is_q ? a->q_norm : is_k ? a->k_norm : NULL;
            rope_head(x, hd, nw, a->norm_eps, is_q || is_k, a->inv_freq, a->positions[t],
                      &mag[(size_t)t * nh + h]);
        }
}

void kref_silu_mul(const float *gu, int T, int I, double *out)
{
    for (int t = 0; t < T; t++)
        for (int i = 0; i < I; i++) {
            double g = gu[(size_t)t * 2 * I + i], u = gu[(size_t)t * 2 * I + I + i];
            out[(size_t)t * I + i] = g / (1.0 + exp(-g)) * u;
        }
}
