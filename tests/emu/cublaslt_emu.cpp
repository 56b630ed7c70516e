/*
 * cublaslt_emu.cpp - the cuBLASLt subset of cublasLt.h on the CPU: the
 * descriptor objects, dummy algorithms, and cublasLtMatmul as a plain
 * GEMM (bf16 in, fp32 accumulation in k order, fp32 or bf16 out), run at
 * the call or recorded into the capturing stream's graph
 * (cuda_emu::stream_record).
 *
 * Owns nothing beyond the objects it hands out. Never prints or exits.
 */
#define CUDA_EMU_IMPLEMENTATION
#include "cublasLt.h"

#include <stdlib.h>
#include <string.h>

#include <new>
#include <vector>

struct cublasLtContext {
    int unused;
};

struct cublasLtMatmulDescOpaque_st {
    cublasComputeType_t compute;
    cudaDataType_t scale;
    cublasOperation_t transa, transb;
};

struct cublasLtMatrixLayoutOpaque_st {
    cudaDataType_t type;
    uint64_t rows, cols;
    int64_t ld;
};

struct cublasLtMatmulPreferenceOpaque_st {
    size_t max_workspace;
    uint32_t reduction_mask; /* CUBLASLT_REDUCTION_SCHEME_*: the schemes allowed */
};

namespace
{

const uint64_t ALGO_TAG = 0xc0b1a5e0ull; /* data[0] of the algorithms handed out */
const int N_ALGOS = 3; /* algorithm i splits k into i + 1 parts (a reduction scheme when i > 0) */

float bf16_to_float(uint16_t v)
{
    uint32_t u = (uint32_t)v << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

uint16_t float_to_bf16(float f) /* round to nearest even; NaN stays NaN */
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* Everything one matmul needs, by value. */
struct gemm_call {
    cublasLtMatmulDescOpaque_st desc;
    cublasLtMatrixLayoutOpaque_st a, b, c, d;
    float alpha, beta;
    const void *A, *B, *C;
    void *D;
    int k_parts; /* k summed in this many contiguous parts, then the parts in order */
};

bool valid_layout(const cublasLtMatrixLayoutOpaque_st &l)
{
    return l.rows > 0 && l.cols > 0 && l.ld >= (int64_t)l.rows;
}

/* Rows and columns of op(X) for a stored layout. */
void op_shape(const cublasLtMatrixLayoutOpaque_st &l, cublasOperation_t t, uint64_t *rows,
              uint64_t *cols)
{
    *rows = t == CUBLAS_OP_N ? l.rows : l.cols;
    *cols = t == CUBLAS_OP_N ? l.cols : l.rows;
}

cublasStatus_t check(const cublasLtMatmulDescOpaque_st &desc,
                     const cublasLtMatrixLayoutOpaque_st &a, const cublasLtMatrixLayoutOpaque_st &b,
                     const cublasLtMatrixLayoutOpaque_st &c, const cublasLtMatrixLayoutOpaque_st &d)
{
    if (desc.compute != CUBLAS_COMPUTE_32F || desc.scale != CUDA_R_32F)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    if (desc.transa == CUBLAS_OP_C || desc.transb == CUBLAS_OP_C)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    if (a.type != CUDA_R_16BF || b.type != CUDA_R_16BF) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (c.type != d.type || (d.type != CUDA_R_32F && d.type != CUDA_R_16BF))
        return CUBLAS_STATUS_NOT_SUPPORTED;
    if (!valid_layout(a) || !valid_layout(b) || !valid_layout(c) || !valid_layout(d))
        return CUBLAS_STATUS_INVALID_VALUE;
    uint64_t am, ak, bk, bn;
    op_shape(a, desc.transa, &am, &ak);
    op_shape(b, desc.transb, &bk, &bn);
    if (am != d.rows || bn != d.cols || ak != bk || c.rows != d.rows || c.cols != d.cols)
        return CUBLAS_STATUS_INVALID_VALUE;
    return CUBLAS_STATUS_SUCCESS;
}

/* Element (i, p) of op(X), i < n_out, p < k: X is m x k when k_first is
 * false, k x n when it is true; X's element (r, c) is x[r + c ld]. */
float op_element(const uint16_t *x, const cublasLtMatrixLayoutOpaque_st &l, cublasOperation_t t,
                 bool k_first, uint64_t i, uint64_t p)
{
    bool i_is_col = (t == CUBLAS_OP_N) == k_first;
    uint64_t r = i_is_col ? p : i, col = i_is_col ? i : p;
    return bf16_to_float(x[r + col * (uint64_t)l.ld]);
}

/* Rows of op(A) are taken ROW_BLOCK at a time, transposed, so that the
 * block stays in cache while every column of op(B) passes by (an LM
 * head's A is tens of MB) and the inner loop runs across rows (each
 * output's sum stays in k order and still vectorises). */
const uint64_t ROW_BLOCK = 64;

cublasStatus_t run(const gemm_call &g)
{
    uint64_t m = g.d.rows, n = g.d.cols, k, unused;
    op_shape(g.a, g.desc.transa, &unused, &k);
    uint64_t n_blocks = (m + ROW_BLOCK - 1) / ROW_BLOCK;
    std::vector<float> a_t, bt; /* a_t [n_blocks][k][ROW_BLOCK]; bt [n][k] */
    try {
        a_t.assign(n_blocks * k * ROW_BLOCK, 0.0f);
        bt.resize(n * k);
    } catch (const std::bad_alloc &) {
        return CUBLAS_STATUS_ALLOC_FAILED;
    }
    const uint16_t *A = (const uint16_t *)g.A, *B = (const uint16_t *)g.B;
    for (uint64_t i = 0; i < m; i++)
        for (uint64_t p = 0; p < k; p++)
            a_t[((i / ROW_BLOCK) * k + p) * ROW_BLOCK + i % ROW_BLOCK] =
                op_element(A, g.a, g.desc.transa, false, i, p);
    for (uint64_t j = 0; j < n; j++)
        for (uint64_t p = 0; p < k; p++)
            bt[j * k + p] = op_element(B, g.b, g.desc.transb, true, j, p);
    bool f32 = g.d.type == CUDA_R_32F;
    for (uint64_t blk = 0; blk < n_blocks; blk++) {
        const float *ablk = &a_t[blk * k * ROW_BLOCK];
        uint64_t i0 = blk * ROW_BLOCK, rows = m - i0 < ROW_BLOCK ? m - i0 : ROW_BLOCK;
        for (uint64_t j = 0; j < n; j++) {
            const float *bj = &bt[j * k];
            float acc[ROW_BLOCK] = {0};
            uint64_t parts = (uint64_t)g.k_parts, step = (k + parts - 1) / parts;
            for (uint64_t p0 = 0; p0 < k; p0 += step) {
                float part[ROW_BLOCK] = {0};
                for (uint64_t p = p0; p < k && p < p0 + step; p++)
                    for (uint64_t q = 0; q < ROW_BLOCK; q++)
                        part[q] += ablk[p * ROW_BLOCK + q] * bj[p];
                for (uint64_t q = 0; q < ROW_BLOCK; q++)
                    acc[q] = p0 == 0 ? part[q] : acc[q] + part[q];
            }
            for (uint64_t q = 0; q < rows; q++) {
                float v = g.alpha * acc[q];
                uint64_t ci = i0 + q + j * (uint64_t)g.c.ld, di = i0 + q + j * (uint64_t)g.d.ld;
                if (g.beta != 0.0f) {
                    float c =
                        f32 ? ((const float *)g.C)[ci] : bf16_to_float(((const uint16_t *)g.C)[ci]);
                    v += g.beta * c;
                }
                if (f32)
                    ((float *)g.D)[di] = v;
                else
                    ((uint16_t *)g.D)[di] = float_to_bf16(v);
            }
        }
    }
    return CUBLAS_STATUS_SUCCESS;
}

bool known_algo(const cublasLtMatmulAlgo_t *algo)
{
    return algo && algo->data[0] == ALGO_TAG && algo->data[1] < (uint64_t)N_ALGOS;
}

} // namespace

extern "C" {

cublasStatus_t cublasLtCreate(cublasLtHandle_t *handle)
{
    if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
    *handle = new (std::nothrow) cublasLtContext{0};
    return *handle ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_ALLOC_FAILED;
}

cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle)
{
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    delete handle;
    return CUBLAS_STATUS_SUCCESS;
}

const char *cublasLtGetStatusString(cublasStatus_t status)
{
    switch (status) {
    case CUBLAS_STATUS_SUCCESS:
        return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED:
        return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED:
        return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE:
        return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_EXECUTION_FAILED:
        return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_NOT_SUPPORTED:
        return "CUBLAS_STATUS_NOT_SUPPORTED";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *desc, cublasComputeType_t compute,
                                        cudaDataType_t scale)
{
    if (!desc) return CUBLAS_STATUS_INVALID_VALUE;
    *desc =
        new (std::nothrow) cublasLtMatmulDescOpaque_st{compute, scale, CUBLAS_OP_N, CUBLAS_OP_N};
    return *desc ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_ALLOC_FAILED;
}

cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc)
{
    delete desc;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc,
                                              cublasLtMatmulDescAttributes_t attr, const void *buf,
                                              size_t size)
{
    if (!desc || !buf) return CUBLAS_STATUS_INVALID_VALUE;
    switch (attr) {
    case CUBLASLT_MATMUL_DESC_TRANSA:
    case CUBLASLT_MATMUL_DESC_TRANSB: {
        if (size != sizeof(cublasOperation_t)) return CUBLAS_STATUS_INVALID_VALUE;
        cublasOperation_t op;
        memcpy(&op, buf, size);
        (attr == CUBLASLT_MATMUL_DESC_TRANSA ? desc->transa : desc->transb) = op;
        return CUBLAS_STATUS_SUCCESS;
    }
    case CUBLASLT_MATMUL_DESC_COMPUTE_TYPE:
    case CUBLASLT_MATMUL_DESC_SCALE_TYPE:
    case CUBLASLT_MATMUL_DESC_POINTER_MODE:
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    return CUBLAS_STATUS_INVALID_VALUE;
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *layout, cudaDataType_t type,
                                          uint64_t rows, uint64_t cols, int64_t ld)
{
    if (!layout) return CUBLAS_STATUS_INVALID_VALUE;
    *layout = new (std::nothrow) cublasLtMatrixLayoutOpaque_st{type, rows, cols, ld};
    return *layout ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_ALLOC_FAILED;
}

cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout)
{
    delete layout;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *pref)
{
    if (!pref) return CUBLAS_STATUS_INVALID_VALUE;
    *pref = new (std::nothrow)
        cublasLtMatmulPreferenceOpaque_st{0, (uint32_t)CUBLASLT_REDUCTION_SCHEME_MASK};
    return *pref ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_ALLOC_FAILED;
}

cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref)
{
    delete pref;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr,
                                                    const void *buf, size_t size)
{
    if (!pref || !buf) return CUBLAS_STATUS_INVALID_VALUE;
    if (attr == CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK) {
        if (size != sizeof(uint32_t)) return CUBLAS_STATUS_INVALID_VALUE;
        memcpy(&pref->reduction_mask, buf, size);
        return CUBLAS_STATUS_SUCCESS;
    }
    if (attr != CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (size != sizeof(size_t)) return CUBLAS_STATUS_INVALID_VALUE;
    memcpy(&pref->max_workspace, buf, size);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                                              cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                              cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                              cublasLtMatmulPreference_t pref, int requested,
                                              cublasLtMatmulHeuristicResult_t *results,
                                              int *returned)
{
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!desc || !a || !b || !c || !d || !pref || !results || !returned || requested < 1)
        return CUBLAS_STATUS_INVALID_VALUE;
    cublasStatus_t s = check(*desc, *a, *b, *c, *d);
    if (s != CUBLAS_STATUS_SUCCESS) return s;
    /* the split algorithms reduce their parts: only where a scheme is allowed */
    int available = pref->reduction_mask & CUBLASLT_REDUCTION_SCHEME_MASK ? N_ALGOS : 1;
    int n = requested < available ? requested : available;
    for (int i = 0; i < n; i++) {
        memset(&results[i], 0, sizeof(results[i]));
        results[i].algo.data[0] = ALGO_TAG;
        results[i].algo.data[1] = (uint64_t)i;
        results[i].state = CUBLAS_STATUS_SUCCESS;
        results[i].wavesCount = 1.0f;
    }
    *returned = n;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulAlgoCheck(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                                       cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                       cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                       const cublasLtMatmulAlgo_t *algo,
                                       cublasLtMatmulHeuristicResult_t *result)
{
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!desc || !a || !b || !c || !d || !result || !known_algo(algo))
        return CUBLAS_STATUS_INVALID_VALUE;
    cublasStatus_t s = check(*desc, *a, *b, *c, *d);
    if (s != CUBLAS_STATUS_SUCCESS) return s;
    memset(result, 0, sizeof(*result));
    result->algo = *algo;
    result->state = CUBLAS_STATUS_SUCCESS;
    result->wavesCount = 1.0f;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, const void *alpha,
                              const void *A, cublasLtMatrixLayout_t a, const void *B,
                              cublasLtMatrixLayout_t b, const void *beta, const void *C,
                              cublasLtMatrixLayout_t c, void *D, cublasLtMatrixLayout_t d,
                              const cublasLtMatmulAlgo_t *algo, void *workspace,
                              size_t workspace_bytes, cudaStream_t stream)
{
    (void)workspace;
    (void)workspace_bytes;
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!desc || !alpha || !beta || !A || !a || !B || !b || !C || !c || !D || !d)
        return CUBLAS_STATUS_INVALID_VALUE;
    if (algo && !known_algo(algo)) return CUBLAS_STATUS_INVALID_VALUE;
    cublasStatus_t s = check(*desc, *a, *b, *c, *d);
    if (s != CUBLAS_STATUS_SUCCESS) return s;
    if (!cuda_emu::stream_launch_ok(stream)) return CUBLAS_STATUS_EXECUTION_FAILED;
    for (const void *p : {A, B, C, (const void *)D})
        if (!cuda_emu::pointer_arg_ok(p, stream)) return CUBLAS_STATUS_EXECUTION_FAILED;
    int k_parts = algo ? (int)algo->data[1] + 1 : 1;
    gemm_call g = {*desc, *a, *b, *c, *d,     *(const float *)alpha, *(const float *)beta,
                   A,     B,  C,  D,  k_parts};
    if (cuda_emu::stream_capturing(stream)) {
        cuda_emu::stream_record(stream, [g]() {
            return run(g) == CUBLAS_STATUS_SUCCESS ? cudaSuccess : cudaErrorLaunchFailure;
        });
        return CUBLAS_STATUS_SUCCESS;
    }
    return run(g);
}
}
