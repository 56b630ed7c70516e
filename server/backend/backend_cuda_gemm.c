/*
 * backend_cuda_gemm.c - matrix products of the CUDA backend through
 * cuBLASLt: bf16 inputs, fp32 accumulation, bf16 or fp32 output.
 *
 * Owns the cuBLASLt handle, its workspace and a cache of plans (matmul
 * descriptor, layouts, heuristic algorithm), one per (M, N, K, output
 * type), built on first use: the heuristic query runs once per shape, never
 * again on the step path. The cache is a fixed open-addressed table; when
 * it is full a shape is planned, used and released (correct, only slower).
 *
 * Algorithms are chosen per M bucket, not per M: the token count of a
 * mixed prefill + decode step changes almost every step, and timing eight
 * candidates for each new M (a synchronising benchmark) cost more than the
 * best choice saves. The first M seen in a bucket is tuned; later M of the
 * same bucket reuse its algorithm once cublasLtMatmulAlgoCheck accepts it
 * for their layouts (otherwise they take the heuristic's first choice).
 *
 * Batch-invariant plans (cbg_set_invariant) trade that for rows that do
 * not depend on M: one choice per (N, K, output) for every M, the
 * heuristic's first for a reference M among algorithms without split-K
 * (CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK none: each output's sum runs
 * over all of K in one tile, in one order), never timed (timing picks
 * differently from run to run). An M that cuBLASLt refuses it for gets its
 * own, with a warning: that shape is then not invariant.
 */
#include <stdlib.h>
#include <string.h>

#include "backend_cuda.h"
#include "log.h"

struct cbg_plan {
    bool used;
    int M, N, K;
    bool y_f32;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algo;
};

struct cbg_choice {
    bool used;
    int Mb, N, K; /* Mb: cbg_bucket(M) */
    bool y_f32;
    cublasLtMatmulAlgo_t algo;
};

#define CBG_SLOTS 8192
#define CBG_CHOICE_SLOTS 1024
#define CBG_WORKSPACE (32u << 20)
#define CBG_TUNE_MAX_M 512
#define CBG_CANDIDATES 8
#define CBG_TUNE_REPS 3

enum es_status cublas_status(cublasStatus_t s, const char *what, const char *file, int line,
                             struct es_err *err)
{
    if (s == CUBLAS_STATUS_SUCCESS) return ES_OK;
    return es_fail(err, ES_EDEVICE, "%s:%d: %s: cuBLAS status %d (%s)", file, line, what, (int)s,
                   cublasLtGetStatusString(s));
}

enum es_status cbg_init(struct cuda_gemm *g, size_t tune_scratch_bytes, struct es_err *err)
{
    enum es_status st = ES_OK;
    memset(g, 0, sizeof(*g));
    CUBLAS(cublasLtCreate(&g->lt));
    CU(cudaMalloc(&g->workspace, CBG_WORKSPACE));
    if (tune_scratch_bytes) {
        CU(cudaMalloc(&g->tune_scratch, tune_scratch_bytes));
        g->tune_scratch_bytes = tune_scratch_bytes;
        CU(cudaEventCreate(&g->ev0));
        CU(cudaEventCreate(&g->ev1));
    }
    g->workspace_bytes = CBG_WORKSPACE;
    g->plans = calloc(CBG_SLOTS, sizeof(*g->plans));
    if (!g->plans) {
        st = es_fail(err, ES_ENOMEM, "cuda gemm: out of host memory");
        goto err;
    }
    g->n_slots = CBG_SLOTS;
    g->choices = calloc(CBG_CHOICE_SLOTS, sizeof(*g->choices));
    if (!g->choices) {
        st = es_fail(err, ES_ENOMEM, "cuda gemm: out of host memory");
        goto err;
    }
    g->n_choice_slots = CBG_CHOICE_SLOTS;
    return ES_OK;
err:
    cbg_free(g);
    return st;
}

static void plan_release(struct cbg_plan *p)
{
    if (p->desc) cublasLtMatmulDescDestroy(p->desc);
    if (p->a) cublasLtMatrixLayoutDestroy(p->a);
    if (p->b) cublasLtMatrixLayoutDestroy(p->b);
    if (p->c) cublasLtMatrixLayoutDestroy(p->c);
    memset(p, 0, sizeof(*p));
}

void cbg_free(struct cuda_gemm *g)
{
    if (g->plans)
        for (int i = 0; i < g->n_slots; i++)
            if (g->plans[i].used) plan_release(&g->plans[i]);
    free(g->plans);
    free(g->choices);
    if (g->workspace) cudaFree(g->workspace);
    if (g->tune_scratch) cudaFree(g->tune_scratch);
    if (g->ev0) cudaEventDestroy(g->ev0);
    if (g->ev1) cudaEventDestroy(g->ev1);
    if (g->lt) cublasLtDestroy(g->lt);
    memset(g, 0, sizeof(*g));
}

/* Column-major view: W [N][K] row-major is K x N (ld K), used transposed;
 * X [M][K] is K x M (ld K); Y [M][N] is N x M (ld N). */
/* Times each candidate on W and X (output to the scratch buffer) and
 * returns the index of the fastest; 0 when tuning is off or fails. */
static int tune(struct cuda_gemm *g, struct cbg_plan *p, const cublasLtMatmulHeuristicResult_t *res,
                int n, const uint16_t *W, const uint16_t *X, bool accumulate, cudaStream_t stream)
{
    size_t ybytes = (size_t)p->M * (size_t)p->N * (p->y_f32 ? 4 : 2);
    if (n < 2 || !g->tune_scratch || ybytes > g->tune_scratch_bytes || p->M > CBG_TUNE_MAX_M)
        return 0;
    float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    int best = 0;
    float best_ms = 1e30f;
    for (int i = 0; i < n; i++) {
        float ms = 0.0f;
        bool ok = true;
        for (int r = 0; r <= CBG_TUNE_REPS && ok; r++) {
            if (r == 1) ok = cudaEventRecord(g->ev0, stream) == cudaSuccess;
            ok = ok &&
                 cublasLtMatmul(g->lt, p->desc, &alpha, W, p->a, X, p->b, &beta, g->tune_scratch,
                                p->c, g->tune_scratch, p->c, &res[i].algo, g->workspace,
                                g->workspace_bytes, stream) == CUBLAS_STATUS_SUCCESS;
        }
        ok = ok && cudaEventRecord(g->ev1, stream) == cudaSuccess &&
             cudaEventSynchronize(g->ev1) == cudaSuccess &&
             cudaEventElapsedTime(&ms, g->ev0, g->ev1) == cudaSuccess;
        if (ok && ms < best_ms) {
            best_ms = ms;
            best = i;
        }
    }
    cudaGetLastError(); /* a failed candidate must not leak its error */
    return best;
}

/* The bucket of M whose algorithm choice M shares: exact up to 16 rows,
 * then multiples of 32 up to 512, then of 128. */
static int cbg_bucket(int M)
{
    if (M <= 16) return M;
    if (M <= 512) return (M + 31) / 32 * 32;
    return (M + 127) / 128 * 128;
}

static uint64_t shape_hash(int M, int N, int K, bool y_f32)
{
    uint64_t h = ((uint64_t)M * 0x9E3779B97F4A7C15ull) ^ ((uint64_t)N * 0xC2B2AE3D27D4EB4Full) ^
                 ((uint64_t)K * 0x165667B19E3779F9ull) ^ (uint64_t)y_f32;
    return h ^ (h >> 29);
}

/* The slot of bucket Mb's choice for (N, K, y_f32): the used slot that
 * matches, else the first free one on the probe path, else NULL. */
static struct cbg_choice *choice_slot(struct cuda_gemm *g, int Mb, int N, int K, bool y_f32)
{
    uint64_t h = shape_hash(Mb, N, K, y_f32);
    for (int probe = 0; probe < 16; probe++) {
        struct cbg_choice *c = &g->choices[(h + (uint64_t)probe) % (uint64_t)g->n_choice_slots];
        if (!c->used || (c->Mb == Mb && c->N == N && c->K == K && c->y_f32 == y_f32)) return c;
    }
    return NULL;
}

/* Takes the bucket's algorithm for plan p if cuBLASLt accepts it for p's
 * layouts within the workspace. */
static bool reuse_choice(struct cuda_gemm *g, struct cbg_plan *p, const struct cbg_choice *c)
{
    if (!c || !c->used) return false;
    cublasLtMatmulHeuristicResult_t chk;
    if (cublasLtMatmulAlgoCheck(g->lt, p->desc, p->a, p->b, p->c, p->c, &c->algo, &chk) !=
            CUBLAS_STATUS_SUCCESS ||
        chk.workspaceSize > g->workspace_bytes)
        return false;
    p->algo = c->algo;
    return true;
}

void cbg_set_invariant(struct cuda_gemm *g, int ref_m)
{
    g->invariant_m = ref_m > 0 ? ref_m : 1;
}

/* Up to `want` of the heuristic's algorithms into res (*got of them) for
 * plan p's descriptor and A with B and C layouts b and c, within the
 * workspace; unsplit: only algorithms without split-K (no reduction). */
static enum es_status heuristic(struct cuda_gemm *g, const struct cbg_plan *p,
                                cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c, bool unsplit,
                                int want, cublasLtMatmulHeuristicResult_t *res, int *got,
                                struct es_err *err)
{
    enum es_status st = ES_OK;
    cublasLtMatmulPreference_t pref = NULL;
    size_t ws = g->workspace_bytes;
    uint32_t no_reduction = CUBLASLT_REDUCTION_SCHEME_NONE;
    *got = 0;
    CUBLAS(cublasLtMatmulPreferenceCreate(&pref));
    CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                                sizeof(ws)));
    if (unsplit)
        CUBLAS(cublasLtMatmulPreferenceSetAttribute(
            pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &no_reduction, sizeof(no_reduction)));
    CUBLAS(cublasLtMatmulAlgoGetHeuristic(g->lt, p->desc, p->a, b, c, c, pref, want, res, got));
err:
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    return st;
}

/* The heuristic's first algorithm without split-K for plan p's shape with
 * M rows (a layout of its own for B and C). */
static enum es_status unsplit_algo(struct cuda_gemm *g, const struct cbg_plan *p, int M,
                                   cublasLtMatmulAlgo_t *algo, struct es_err *err)
{
    enum es_status st = ES_OK;
    cublasLtMatrixLayout_t b = NULL, c = NULL;
    cublasLtMatmulHeuristicResult_t res;
    int n = 0;
    CUBLAS(cublasLtMatrixLayoutCreate(&b, CUDA_R_16BF, (uint64_t)p->K, (uint64_t)M, p->K));
    CUBLAS(cublasLtMatrixLayoutCreate(&c, p->y_f32 ? CUDA_R_32F : CUDA_R_16BF, (uint64_t)p->N,
                                      (uint64_t)M, p->N));
    if ((st = heuristic(g, p, b, c, true, 1, &res, &n, err)) != ES_OK) goto err;
    if (n < 1)
        st = es_fail(err, ES_EDEVICE, "cuBLASLt: no algorithm without split-K for M=%d N=%d K=%d",
                     M, p->N, p->K);
    else
        *algo = res.algo;
err:
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (b) cublasLtMatrixLayoutDestroy(b);
    return st;
}

/* Plan p's algorithm in batch-invariant mode: its shape's one choice,
 * made at the reference M on first use. */
static enum es_status invariant_choice(struct cuda_gemm *g, struct cbg_plan *p, struct es_err *err)
{
    struct cbg_choice *choice = choice_slot(g, 0, p->N, p->K, p->y_f32);
    if (choice && !choice->used) {
        cublasLtMatmulAlgo_t algo;
        enum es_status st = unsplit_algo(g, p, g->invariant_m, &algo, err);
        if (st != ES_OK) return st;
        *choice = (struct cbg_choice){
            .used = true, .Mb = 0, .N = p->N, .K = p->K, .y_f32 = p->y_f32, .algo = algo};
    }
    if (reuse_choice(g, p, choice)) return ES_OK;
    LOG_W("cuda",
          "batch-invariant: no shared algorithm for the N=%d K=%d products at M=%d (refused, "
          "or the choice table is full): that product may round differently",
          p->N, p->K, p->M);
    return unsplit_algo(g, p, p->M, &p->algo, err);
}

static enum es_status plan_build(struct cuda_gemm *g, struct cbg_plan *p, int M, int N, int K,
                                 bool y_f32, const uint16_t *W, const uint16_t *X, bool accumulate,
                                 cudaStream_t stream, struct es_err *err)
{
    enum es_status st = ES_OK;
    memset(p, 0, sizeof(*p));
    p->M = M;
    p->N = N;
    p->K = K;
    p->y_f32 = y_f32;
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    CUBLAS(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    CUBLAS(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    CUBLAS(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
    CUBLAS(cublasLtMatrixLayoutCreate(&p->a, CUDA_R_16BF, (uint64_t)K, (uint64_t)N, K));
    CUBLAS(cublasLtMatrixLayoutCreate(&p->b, CUDA_R_16BF, (uint64_t)K, (uint64_t)M, K));
    CUBLAS(cublasLtMatrixLayoutCreate(&p->c, y_f32 ? CUDA_R_32F : CUDA_R_16BF, (uint64_t)N,
                                      (uint64_t)M, N));
    if (g->invariant_m > 0) {
        if ((st = invariant_choice(g, p, err)) != ES_OK) goto err;
        p->used = true;
        return ES_OK;
    }
    struct cbg_choice *choice = choice_slot(g, cbg_bucket(M), N, K, y_f32);
    if (reuse_choice(g, p, choice)) {
        p->used = true;
        return ES_OK;
    }
    cublasLtMatmulHeuristicResult_t res[CBG_CANDIDATES];
    int n = 0;
    if ((st = heuristic(g, p, p->b, p->c, false, CBG_CANDIDATES, res, &n, err)) != ES_OK) goto err;
    if (n < 1) {
        st = es_fail(err, ES_EDEVICE, "cuBLASLt: no algorithm for M=%d N=%d K=%d", M, N, K);
        goto err;
    }
    p->algo = res[tune(g, p, res, n, W, X, accumulate, stream)].algo;
    p->used = true;
    if (choice && !choice->used)
        *choice = (struct cbg_choice){
            .used = true, .Mb = cbg_bucket(M), .N = N, .K = K, .y_f32 = y_f32, .algo = p->algo};
    return ES_OK;
err:
    plan_release(p);
    return st;
}

enum es_status cbg_matmul(struct cuda_gemm *g, const uint16_t *W, const uint16_t *X, void *Y, int M,
                          int N, int K, bool y_f32, bool accumulate, cudaStream_t stream,
                          struct es_err *err)
{
    enum es_status st = ES_OK;
    if (M <= 0) return ES_OK;
    if (accumulate && !y_f32)
        return es_fail(err, ES_EINVAL, "cuda gemm: accumulation needs an fp32 output");
    uint64_t h = shape_hash(M, N, K, y_f32);
    struct cbg_plan *p = NULL, tmp;
    bool temporary = false;
    for (int probe = 0; probe < 16; probe++) {
        struct cbg_plan *q = &g->plans[(h + (uint64_t)probe) % (uint64_t)g->n_slots];
        if (q->used && q->M == M && q->N == N && q->K == K && q->y_f32 == y_f32) {
            p = q;
            break;
        }
        if (!q->used) {
            st = plan_build(g, q, M, N, K, y_f32, W, X, accumulate, stream, err);
            if (st != ES_OK) return st;
            p = q;
            break;
        }
    }
    if (!p) {
        st = plan_build(g, &tmp, M, N, K, y_f32, W, X, accumulate, stream, err);
        if (st != ES_OK) return st;
        p = &tmp;
        temporary = true;
    }
    float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    CUBLAS(cublasLtMatmul(g->lt, p->desc, &alpha, W, p->a, X, p->b, &beta, Y, p->c, Y, p->c,
                          &p->algo, g->workspace, g->workspace_bytes, stream));
err:
    if (temporary) plan_release(&tmp);
    return st;
}
