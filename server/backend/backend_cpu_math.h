/*
 * backend_cpu_math.h - the CPU backend's numeric kernels: weight rows of
 * any checkpoint dtype converted to fp32 on the fly, the threaded matmul
 * against them, RMSNorm, RoPE tables (plain, linear and llama3 scaling)
 * and the rotation itself.
 *
 * All math is fp32 (RoPE angles in double); weights stay in the mmap in
 * their own dtype and are never modified.
 */
#ifndef ES_BACKEND_CPU_MATH_H
#define ES_BACKEND_CPU_MATH_H

#include <stdint.h>

#include "backend_cpu_pool.h"
#include "model_config.h"
#include "safetensors.h"

/* A row-major weight matrix [rows][cols] of one dtype, inside the mmap.
 * Row r starts ld elements after row r - 1 (ld == cols for a whole
 * tensor; larger for a column slice of one, as tensor parallelism cuts). */
struct cmat {
    const void *data;
    enum st_dtype dtype;
    int rows;
    int cols;
    int ld;
};

/* Rows [r0, r0 + n) of w, all its columns. */
struct cmat cmat_rows(const struct cmat *w, int r0, int n);
/* Columns [c0, c0 + n) of w, all its rows. */
struct cmat cmat_cols(const struct cmat *w, int c0, int n);

/* Rows of W per matmul task; per-thread scratch holds this many rows. */
#define CMATH_ROWS_PER_TASK 16

/* Converts row r of w (cols elements) to fp32. */
void cmath_row_f32(const struct cmat *w, int r, float *out);
/* Converts n elements of a bf16/f16/f32 array starting at element i0. */
void cmath_to_f32(const void *src, enum st_dtype dtype, int64_t i0, int64_t n, float *out);

/*
 * y[t][r] = sum_k x[t][k] * W[r][k] + bias[r]   (t < n_tok, r < W.rows)
 * x: fp32 [n_tok][W.cols] (row stride ldx), y: fp32 [n_tok][ldy].
 * bias may be NULL. row_bufs: per pool thread, fp32 [CMATH_ROWS_PER_TASK][W.cols]
 * scratch for converted rows.
 */
void cmath_matmul(struct cpool *pool, float *const *row_bufs, const struct cmat *w,
                  const float *bias, const float *x, int ldx, int n_tok, float *y, int ldy);

/* sum_i a[i] * b[i] in fp32 with 8-lane partial sums. */
float cmath_dot(const float *a, const float *b, int n);
/* y[i] += alpha * x[i]. */
void cmath_axpy(float *y, float alpha, const float *x, int n);

/* out[i] = x[i] / sqrt(mean(x^2) + eps) * weight[i], i < n (out may be x). */
void cmath_rmsnorm(const float *x, const float *weight, int n, float eps, float *out);

/* inv_freq[i] for i < head_dim / 2, with the config's rope scaling, as
 * transformers computes it (in double here). */
void cmath_rope_inv_freq(const struct model_config *cfg, double *inv_freq);

/* cos/sin [half] of position pos. */
void cmath_rope_angles(const double *inv_freq, int half, int32_t pos, float *cos_out,
                       float *sin_out);

/* Rotates one head vector x [2 * half] in place, rotate_half style:
 * x1' = x1 cos - x2 sin, x2' = x2 cos + x1 sin. */
void cmath_rope_apply(float *x, const float *cos_v, const float *sin_v, int half);

#endif
