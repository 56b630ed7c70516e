/*
 * test_runtime_emu.c - the host runtime and cuBLASLt stand-ins of tests/emu
 * (cuda_emu_runtime.h, cublasLt.h) on their own: cublasLtMatmul under
 * every TRANSA / TRANSB against a double-precision product, bf16 output
 * rounding, beta = 1 accumulation; device memory accounting and range
 * checks; stream capture recording copies and matmuls by value (a replay
 * sees the inputs of its launch, the scalars of its capture) and refusing
 * synchronisation while it records.
 */
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <cublasLt.h>
#include <cuda_runtime.h>

#include "testing.h"

static uint16_t bf16(float f) /* the test's values are exact in bf16 */
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return (uint16_t)(u >> 16);
}

static float from_bf16(uint16_t v)
{
    uint32_t u = (uint32_t)v << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* stored element (r, c) of a column-major rows x cols matrix, small integers */
static float value(int which, int r, int c)
{
    return (float)(((r * 7 + c * 3 + which * 5) % 11) - 5) / 4.0f;
}

struct gemm {
    cublasLtHandle_t lt;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t a, b, d;
};

static void gemm_open(struct gemm *g, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                      int k, cudaDataType_t out)
{
    CHECK(cublasLtCreate(&g->lt) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatmulDescCreate(&g->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F) ==
          CUBLAS_STATUS_SUCCESS);
    cublasLtMatmulDescSetAttribute(g->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
    cublasLtMatmulDescSetAttribute(g->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
    int ar = ta == CUBLAS_OP_N ? m : k, ac = ta == CUBLAS_OP_N ? k : m;
    int br = tb == CUBLAS_OP_N ? k : n, bc = tb == CUBLAS_OP_N ? n : k;
    cublasLtMatrixLayoutCreate(&g->a, CUDA_R_16BF, (uint64_t)ar, (uint64_t)ac, ar + 1);
    cublasLtMatrixLayoutCreate(&g->b, CUDA_R_16BF, (uint64_t)br, (uint64_t)bc, br);
    cublasLtMatrixLayoutCreate(&g->d, out, (uint64_t)m, (uint64_t)n, m);
}

static void gemm_close(struct gemm *g)
{
    cublasLtMatrixLayoutDestroy(g->a);
    cublasLtMatrixLayoutDestroy(g->b);
    cublasLtMatrixLayoutDestroy(g->d);
    cublasLtMatmulDescDestroy(g->desc);
    cublasLtDestroy(g->lt);
}

/* D = op(A) op(B) (+ D): every transpose, fp32 and bf16 out */
static void test_matmul(void)
{
    enum { M = 5, N = 3, K = 7 };
    for (int t = 0; t < 8; t++) {
        cublasOperation_t ta = (t & 1) ? CUBLAS_OP_T : CUBLAS_OP_N;
        cublasOperation_t tb = (t & 2) ? CUBLAS_OP_T : CUBLAS_OP_N;
        bool f32 = !(t & 4);
        struct gemm g;
        gemm_open(&g, ta, tb, M, N, K, f32 ? CUDA_R_32F : CUDA_R_16BF);
        uint16_t *A, *B;
        float *D;
        CHECK(cudaMalloc((void **)&A, 2 * (K + 1) * (M + 1)) == cudaSuccess);
        CHECK(cudaMalloc((void **)&B, 2 * K * N) == cudaSuccess);
        CHECK(cudaMalloc((void **)&D, 4 * M * N) == cudaSuccess);
        int lda = (ta == CUBLAS_OP_N ? M : K) + 1, ldb = tb == CUBLAS_OP_N ? K : N;
        double want[M][N];
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                want[i][j] = 0;
                for (int p = 0; p < K; p++) {
                    float a = value(0, i, p), b = value(1, p, j);
                    want[i][j] += (double)a * b;
                    if (ta == CUBLAS_OP_N)
                        A[i + p * lda] = bf16(a);
                    else
                        A[p + i * lda] = bf16(a);
                    if (tb == CUBLAS_OP_N)
                        B[p + j * ldb] = bf16(b);
                    else
                        B[j + p * ldb] = bf16(b);
                }
            }
        cublasLtMatmulPreference_t pref;
        cublasLtMatmulPreferenceCreate(&pref);
        cublasLtMatmulHeuristicResult_t res[4];
        int n = 0;
        CHECK(cublasLtMatmulAlgoGetHeuristic(g.lt, g.desc, g.a, g.b, g.d, g.d, pref, 4, res, &n) ==
                  CUBLAS_STATUS_SUCCESS &&
              n >= 2);
        cublasLtMatmulPreferenceDestroy(pref);
        cublasLtMatmulHeuristicResult_t chk;
        CHECK(cublasLtMatmulAlgoCheck(g.lt, g.desc, g.a, g.b, g.d, g.d, &res[1].algo, &chk) ==
              CUBLAS_STATUS_SUCCESS);
        float alpha = 1.0f, zero = 0.0f, one = 1.0f;
        for (int acc = 0; acc < (f32 ? 2 : 1); acc++)
            CHECK(cublasLtMatmul(g.lt, g.desc, &alpha, A, g.a, B, g.b, acc ? &one : &zero, D, g.d,
                                 D, g.d, &res[1].algo, NULL, 0, NULL) == CUBLAS_STATUS_SUCCESS);
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                double got = f32 ? D[i + j * M] : from_bf16(((uint16_t *)D)[i + j * M]);
                double w = f32 ? 2 * want[i][j] : from_bf16(bf16((float)want[i][j]));
                if (!f32) { /* round to nearest even: within half a bf16 ulp */
                    CHECK(fabs(got - want[i][j]) <= fabs(want[i][j]) / 256.0 + 1e-30);
                    continue;
                }
                CHECK(got == w);
            }
        /* shapes that disagree with the transposes are refused */
        CHECK(cublasLtMatmul(g.lt, g.desc, &alpha, A, g.b, B, g.a, &zero, D, g.d, D, g.d, NULL,
                             NULL, 0, NULL) == CUBLAS_STATUS_INVALID_VALUE);
        cudaFree(A);
        cudaFree(B);
        cudaFree(D);
        gemm_close(&g);
    }
}

static void test_memory(void)
{
    size_t free0, total, free1;
    CHECK(cudaMemGetInfo(&free0, &total) == cudaSuccess && total == (size_t)8 << 30);
    char *d;
    CHECK(cudaMalloc((void **)&d, 1000) == cudaSuccess);
    CHECK(cudaMemGetInfo(&free1, &total) == cudaSuccess && free1 == free0 - 1024);
    char h[1001] = {0};
    CHECK(cudaMemcpy(d, h, 1000, cudaMemcpyHostToDevice) == cudaSuccess);
    CHECK(cudaMemcpy(d + 1, h, 1000, cudaMemcpyHostToDevice) == cudaSuccess); /* padding */
    CHECK(cudaMemcpy(d + 24, h, 1001, cudaMemcpyHostToDevice) == cudaErrorInvalidValue);
    CHECK(cudaMemcpy(h, h + 1, 10, cudaMemcpyDeviceToHost) == cudaErrorInvalidValue);
    CHECK(cudaFree(d + 1) == cudaErrorInvalidValue);
    CHECK(cudaFree(d) == cudaSuccess);
    CHECK(cudaMalloc((void **)&d, (size_t)9 << 30) == cudaErrorMemoryAllocation);
    struct cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, 0) == cudaSuccess && prop.major == 9 &&
          prop.multiProcessorCount == 132);
}

/* A graph replays its copies and matmuls on the buffers' contents at the
 * launch, with the scalars of the capture; synchronising while capturing
 * breaks the capture. */
static void test_capture(void)
{
    enum { M = 4, N = 2, K = 3 };
    struct gemm g;
    gemm_open(&g, CUBLAS_OP_T, CUBLAS_OP_N, M, N, K, CUDA_R_32F);
    uint16_t *A, *B, *B_src;
    float *D;
    cudaMalloc((void **)&A, 2 * (K + 1) * M);
    cudaMalloc((void **)&B, 2 * K * N);
    cudaMalloc((void **)&B_src, 2 * K * N);
    cudaMalloc((void **)&D, 4 * M * N);
    for (int i = 0; i < (K + 1) * M; i++)
        A[i] = bf16(1.0f);
    cudaStream_t s;
    CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess);
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    float alpha = 2.0f, zero = 0.0f;
    CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) == cudaSuccess);
    CHECK(cudaMemcpyAsync(B, B_src, 2 * K * N, cudaMemcpyDeviceToDevice, s) == cudaSuccess);
    CHECK(cublasLtMatmul(g.lt, g.desc, &alpha, A, g.a, B, g.b, &zero, D, g.d, D, g.d, NULL, NULL, 0,
                         s) == CUBLAS_STATUS_SUCCESS);
    alpha = 100.0f; /* captured by value */
    CHECK(cudaStreamEndCapture(s, &graph) == cudaSuccess);
    CHECK(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess);
    cudaGraphDestroy(graph);
    for (int round = 1; round <= 2; round++) {
        for (int i = 0; i < K * N; i++)
            B_src[i] = bf16((float)round);
        memset(D, 0, 4 * M * N);
        CHECK(cudaGraphLaunch(exec, s) == cudaSuccess);
        for (int i = 0; i < M * N; i++)
            CHECK(D[i] == 2.0f * K * (float)round);
    }
    cudaGraphExecDestroy(exec);
    /* a synchronisation inside the capture invalidates it */
    CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) == cudaSuccess);
    CHECK(cudaStreamSynchronize(s) == cudaErrorStreamCaptureUnsupported);
    CHECK(cudaStreamEndCapture(s, &graph) == cudaErrorStreamCaptureInvalidated && !graph);
    CHECK(cudaStreamSynchronize(s) == cudaSuccess);
    CHECK(cudaStreamDestroy(s) == cudaSuccess);
    cudaFree(A);
    cudaFree(B);
    cudaFree(B_src);
    cudaFree(D);
    gemm_close(&g);
}

int main(void)
{
    test_matmul();
    test_memory();
    test_capture();
    return test_result("runtime_emu");
}
