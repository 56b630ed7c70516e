/*
 * kern_ref.h - host references of the kernels' contracts (kernels/kernels.h)
 * and the tolerances their results are held to, shared by the device test
 * (tests/gpu/test_gpu.c, `kernels`) and the emulated one
 * (tests/emu/test_kernels_emu.c). Plain C on host memory: every pointer,
 * those inside kern_* argument structs included, must be host memory. No
 * CUDA calls, no state.
 *
 * Tolerances, from the device's documented errors (CUDA Programming Guide,
 * math appendix) and the kernels' own arithmetic:
 *   - attention: each token's RMS error relative to the RMS of its
 *     double-precision reference below KREF_ATTN_REL_ERR (bf16 output, P in
 *     bf16 hi + lo on tensor cores, __expf / ex2.approx with their ulps);
 *   - logits: ids, ranks and greedy tokens exact; lse and logprobs within
 *     KREF_LOGPROB_TOL of sampling.c's (expf 2 ulp, summed in double);
 *   - bf16 outputs (norms, RoPE, SiLU): within one bf16 ulp of the exact
 *     value plus a small absolute term for the fp32 arithmetic before the
 *     rounding (kref_bf16_close), and at most KREF_BF16_OFF of them off the
 *     correctly rounded value (the fp32 error flips a rounding now and
 *     then; a systematic error flips many); embedding and the residual sum
 *     exact.
 */
#ifndef ES_KERN_REF_H
#define ES_KERN_REF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels.h"

#define KREF_ATTN_REL_ERR 8e-3
#define KREF_LOGPROB_TOL 1e-5
#define KREF_BF16_OFF 0.01

/* |bf16 got - want| <= one bf16 ulp of want + abs_tol (NaN never close). */
bool kref_bf16_close(uint16_t got, double want, double abs_tol);
/* got is want rounded to bf16 (to nearest even). */
bool kref_bf16_rounded(uint16_t got, double want);

/* ---- attention ---- */

/* Causal attention of every token t < a->T over the first tok_ctx[t]
 * tokens of its sequence, in double: ref [T][nq][hd]. q, K and V are the
 * bf16 values plus their remainders where a has them (q_lo, k_cache_lo,
 * v_cache_lo). */
void kref_attention(const struct kern_attn_args *a, double *ref);

/* The largest, over tokens t < T with want[t] (every one when want is
 * NULL), of the RMS error of token t's bf16 outputs out [T][width]
 * relative to the RMS of its reference ref [T][width]; NaN, which fails
 * any comparison, when one of them is NaN (never written). Per token: in
 * one pooled ratio the large outputs of short contexts would hide the
 * errors of long ones. */
double kref_attention_err(const uint16_t *out, const double *ref, int T, int width,
                          const bool *want);
/* The same for outputs out + out_lo (--precision high's two terms). */
double kref_attention_err2(const uint16_t *out, const uint16_t *out_lo, const double *ref, int T,
                           int width, const bool *want);

/* ---- logits ---- */

/* kern_logprobs (lse, top_ids, top_lp, target_lp, target_rank) and
 * kern_greedy over every row (token, logprob) against smp_row
 * (server/backend/sampling.c) on logits [R][V]: the number of mismatches
 * (each reported on stderr). top_* [R][KERN_MAX_TOP]. */
int kref_logits_mismatches(const float *logits, int R, int V, const int32_t *n_top,
                           const int32_t *target, const double *lse, const int32_t *top_ids,
                           const float *top_lp, const float *target_lp, const int32_t *target_rank,
                           const int32_t *token, const float *logprob);

/* ---- the element-wise kernels: values in double, before the bf16 rounding ---- */

/* kern_embedding: resid [T][H] */
void kref_embedding(const uint16_t *table, const int32_t *ids, int T, int H, int vocab0,
                    int vocab_n, float *resid);

/* kern_add_rmsnorm: x [n][H] the (fp32) sum the kernel stores in resid,
 * out [n][H] the exact normalised rows. */
void kref_add_rmsnorm(const float *resid, const uint16_t *add, const uint16_t *w, float eps,
                      const int32_t *rows, int n, int H, float *x, double *out);

/* kern_rope_kv_write on host memory a: q [T][nq][hd] the rotated queries,
 * kv [T][2 nkv][hd] the k then v heads each token stores (when its slot is
 * >= 0), and mag [T][nq + 2 nkv] each head's largest |value| before the
 * rotation, the scale of the fp32 rounding the kernel does. */
void kref_rope(const struct kern_rope_args *a, double *q, double *kv, double *mag);

/* kern_silu_mul: out [T][I] */
void kref_silu_mul(const float *gu, int T, int I, double *out);

#endif
