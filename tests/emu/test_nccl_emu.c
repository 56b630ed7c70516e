/*
 * test_nccl_emu.c - the emulated devices (cuda_emu_runtime.h with
 * CUDA_EMU_DEVICES=4) and the emulated NCCL (nccl.h) on their own, ranks
 * as threads: the current device per thread, memory accounted per device,
 * streams and events tied to their device (launches into another
 * device's stream or on its memory fail), cudaMemcpy2DAsync; all-reduce
 * in rank order and identical on every rank, a grouped gather of
 * point-to-point sends, a send that returns before its receiver comes
 * (the sender's stream waits instead), collectives recorded into graphs
 * and replayed,
 * and the failures NCCL reports (buffers and streams of another device,
 * ranks that disagree, duplicate devices, a peer that left, a peer that
 * never comes: CUDA_EMU_NCCL_TIMEOUT_S=3). meson runs it with both
 * variables set.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cublasLt.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include "testing.h"

#define MAX_RANKS 4
#define N_ELEMS 37

/* One rank's thread: its inputs and everything it saw, checked by main. */
struct rank_ctx {
    int rank, nranks, device;
    ncclUniqueId id;
    ncclResult_t r[8];
    char msg[8][256];
    float out[2][N_ELEMS];
    int32_t iout[N_ELEMS];
};

static void run_ranks(struct rank_ctx *ctx, int nranks, void *(*fn)(void *))
{
    pthread_t t[MAX_RANKS];
    ncclUniqueId id;
    CHECK(ncclGetUniqueId(&id) == ncclSuccess);
    for (int r = 0; r < nranks; r++) {
        ctx[r].rank = r;
        ctx[r].nranks = nranks;
        ctx[r].id = id;
        if (ctx[r].device < 0) ctx[r].device = r;
    }
    for (int r = 0; r < nranks; r++)
        pthread_create(&t[r], NULL, fn, &ctx[r]);
    for (int r = 0; r < nranks; r++)
        pthread_join(t[r], NULL);
}

/* Empty contexts for n ranks, each to run on the device of its index. */
static void fresh_ranks(struct rank_ctx *ctx, int n)
{
    memset(ctx, 0, (size_t)n * sizeof(*ctx));
    for (int r = 0; r < n; r++)
        ctx[r].device = -1;
}

static void note(struct rank_ctx *c, int i, ncclResult_t r)
{
    c->r[i] = r;
    snprintf(c->msg[i], sizeof c->msg[i], "%s", r == ncclSuccess ? "" : ncclGetLastError(NULL));
}

static float value(int rank, int i)
{
    /* magnitudes far apart, so that the order of summation shows */
    return (float)((i * 7 + rank * 13) % 17 - 8) * (rank == 1 ? 1e8f : 1.0f) + 0.25f * (float)i;
}

static void *current_device_task(void *p)
{
    cudaGetDevice((int *)p);
    return NULL;
}

/* ---- the devices ---- */

static void test_devices(void)
{
    int n = 0, d = -1;
    CHECK(cudaGetDeviceCount(&n) == cudaSuccess && n == 4);
    CHECK(cudaGetDevice(&d) == cudaSuccess && d == 0);
    CHECK(cudaSetDevice(4) == cudaErrorInvalidDevice &&
          cudaSetDevice(-1) == cudaErrorInvalidDevice);
    struct cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, 3) == cudaSuccess && prop.major == 9);
    CHECK(cudaGetDeviceProperties(&prop, 4) == cudaErrorInvalidDevice);
    size_t free0, free1, total, after0, after1;
    CHECK(cudaMemGetInfo(&free0, &total) == cudaSuccess);
    CHECK(cudaSetDevice(1) == cudaSuccess && cudaGetDevice(&d) == cudaSuccess && d == 1);
    CHECK(cudaMemGetInfo(&free1, &total) == cudaSuccess);
    void *p = NULL;
    CHECK(cudaMalloc(&p, 1 << 20) == cudaSuccess);
    CHECK(cudaMemGetInfo(&after1, &total) == cudaSuccess && after1 == free1 - (1 << 20));
    /* a new thread starts on device 0 */
    int other = -1;
    pthread_t t;
    pthread_create(&t, NULL, current_device_task, &other);
    pthread_join(t, NULL);
    CHECK(other == 0);
    CHECK(cudaSetDevice(0) == cudaSuccess);
    CHECK(cudaMemGetInfo(&after0, &total) == cudaSuccess && after0 == free0);
    CHECK(cudaFree(p) == cudaSuccess); /* another device's pointer */
    CHECK(cudaSetDevice(1) == cudaSuccess);
    CHECK(cudaMemGetInfo(&after1, &total) == cudaSuccess && after1 == free1);
    CHECK(cudaSetDevice(0) == cudaSuccess);
}

/* Streams and events belong to their device: launches and event records
 * into another device's stream fail, copies do not. */
static void test_streams(void)
{
    cudaStream_t s1;
    cudaEvent_t e0, e1;
    CHECK(cudaSetDevice(1) == cudaSuccess);
    CHECK(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking) == cudaSuccess);
    CHECK(cudaEventCreate(&e1) == cudaSuccess);
    float *x = NULL, *y = NULL;
    uint16_t *a = NULL;
    CHECK(cudaMalloc((void **)&x, 4) == cudaSuccess && cudaMalloc((void **)&y, 4) == cudaSuccess);
    CHECK(cudaMalloc((void **)&a, 2) == cudaSuccess);
    CHECK(cudaSetDevice(0) == cudaSuccess);
    CHECK(cudaEventCreate(&e0) == cudaSuccess);
    CHECK(cudaEventRecord(e0, s1) == cudaErrorInvalidResourceHandle);
    CHECK(cudaEventRecord(e1, s1) == cudaSuccess);
    CHECK(cudaEventRecord(e0, NULL) == cudaSuccess);
    float ms;
    CHECK(cudaEventElapsedTime(&ms, e0, e1) == cudaErrorInvalidResourceHandle);
    CHECK(cudaMemcpyAsync(y, x, 4, cudaMemcpyDeviceToDevice, s1) == cudaSuccess);

    /* a 1 x 1 x 1 product, on device 1's stream */
    cublasLtHandle_t lt;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t l16, l32;
    CHECK(cublasLtCreate(&lt) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS);
    cublasLtMatrixLayoutCreate(&l16, CUDA_R_16BF, 1, 1, 1);
    cublasLtMatrixLayoutCreate(&l32, CUDA_R_32F, 1, 1, 1);
    *a = 0x3f80; /* 1.0 */
    float one = 1.0f, zero = 0.0f;
    (void)cudaGetLastError();
    CHECK(cublasLtMatmul(lt, desc, &one, a, l16, a, l16, &zero, y, l32, y, l32, NULL, NULL, 0,
                         s1) == CUBLAS_STATUS_EXECUTION_FAILED);
    CHECK(cudaGetLastError() == cudaErrorInvalidResourceHandle);
    CHECK(cudaSetDevice(1) == cudaSuccess);
    CHECK(cublasLtMatmul(lt, desc, &one, a, l16, a, l16, &zero, y, l32, y, l32, NULL, NULL, 0,
                         s1) == CUBLAS_STATUS_SUCCESS &&
          *y == 1.0f);
    /* an operand on another device than the stream's */
    uint16_t *a0 = NULL;
    CHECK(cudaSetDevice(0) == cudaSuccess && cudaMalloc((void **)&a0, 2) == cudaSuccess);
    CHECK(cudaSetDevice(1) == cudaSuccess);
    CHECK(cublasLtMatmul(lt, desc, &one, a0, l16, a, l16, &zero, y, l32, y, l32, NULL, NULL, 0,
                         s1) == CUBLAS_STATUS_EXECUTION_FAILED);
    CHECK(cudaGetLastError() == cudaErrorIllegalAddress &&
          strstr(cuda_emu_last_failure(), "device 0's memory"));
    CHECK(cudaFree(a0) == cudaSuccess);
    cublasLtMatrixLayoutDestroy(l16);
    cublasLtMatrixLayoutDestroy(l32);
    cublasLtMatmulDescDestroy(desc);
    cublasLtDestroy(lt);
    CHECK(cudaFree(a) == cudaSuccess && cudaFree(x) == cudaSuccess && cudaFree(y) == cudaSuccess);
    CHECK(cudaEventDestroy(e0) == cudaSuccess && cudaEventDestroy(e1) == cudaSuccess);
    CHECK(cudaStreamDestroy(s1) == cudaSuccess);
    CHECK(cudaSetDevice(0) == cudaSuccess);
}

/* Rows of 3 bytes, 8 apart on the host and 5 apart on the device. */
static void test_memcpy_2d(void)
{
    char host[4 * 8], back[4 * 8];
    for (int i = 0; i < (int)sizeof host; i++)
        host[i] = (char)i;
    char *dev = NULL;
    CHECK(cudaMalloc((void **)&dev, 3 * 5 + 3) == cudaSuccess); /* 256 bytes, rounded */
    CHECK(cudaMemcpy2DAsync(dev, 5, host, 8, 3, 4, cudaMemcpyHostToDevice, NULL) == cudaSuccess);
    for (int r = 0; r < 4; r++)
        CHECK(memcmp(dev + 5 * r, host + 8 * r, 3) == 0);
    memset(back, 0, sizeof back);
    CHECK(cudaMemcpy2DAsync(back, 8, dev, 5, 3, 4, cudaMemcpyDeviceToHost, NULL) == cudaSuccess);
    CHECK(memcmp(back + 8, host + 8, 3) == 0 && back[3] == 0);
    CHECK(cudaMemcpy2DAsync(dev, 2, host, 8, 3, 4, cudaMemcpyHostToDevice, NULL) ==
          cudaErrorInvalidPitchValue);
    CHECK(cudaMemcpy2DAsync(dev, 100, host, 8, 3, 4, cudaMemcpyHostToDevice, NULL) ==
          cudaErrorInvalidValue); /* the last row past the allocation */
    CHECK(cudaFree(dev) == cudaSuccess);
}

/* ---- NCCL ---- */

static void *all_reduce_rank(void *p)
{
    struct rank_ctx *c = p;
    cudaStream_t s;
    ncclComm_t comm;
    cudaSetDevice(c->device);
    cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    note(c, 0, ncclCommInitRank(&comm, c->nranks, c->id, c->rank));
    if (c->r[0] != ncclSuccess) return NULL;
    float *buf, *dst;
    int32_t *ibuf;
    cudaMalloc((void **)&buf, sizeof(float) * N_ELEMS);
    cudaMalloc((void **)&dst, sizeof(float) * N_ELEMS);
    cudaMalloc((void **)&ibuf, sizeof(int32_t) * N_ELEMS);
    for (int i = 0; i < N_ELEMS; i++) {
        buf[i] = value(c->rank, i);
        ibuf[i] = (i * 5 + c->rank * 11) % 23;
    }
    note(c, 1, ncclAllReduce(buf, buf, N_ELEMS, ncclFloat32, ncclSum, comm, s));
    memcpy(c->out[0], buf, sizeof c->out[0]);
    note(c, 2, ncclAllReduce(buf, dst, N_ELEMS, ncclFloat32, ncclMax, comm, s));
    memcpy(c->out[1], dst, sizeof c->out[1]);
    note(c, 3, ncclAllReduce(ibuf, ibuf, N_ELEMS, ncclInt32, ncclMax, comm, s));
    memcpy(c->iout, ibuf, sizeof c->iout);
    note(c, 4, ncclCommDestroy(comm));
    cudaFree(buf);
    cudaFree(dst);
    cudaFree(ibuf);
    cudaStreamDestroy(s);
    return NULL;
}

static void test_all_reduce(void)
{
    enum { N = 3 };
    struct rank_ctx ctx[N];
    fresh_ranks(ctx, N);
    run_ranks(ctx, N, all_reduce_rank);
    for (int r = 0; r < N; r++) {
        for (int k = 0; k <= 4; k++)
            CHECK(ctx[r].r[k] == ncclSuccess);
        for (int i = 0; i < N_ELEMS; i++) {
            float sum = (value(0, i) + value(1, i)) + value(2, i); /* rank order */
            int32_t imax = 0;
            for (int q = 0; q < N; q++) {
                int32_t v = (i * 5 + q * 11) % 23;
                imax = v > imax ? v : imax;
            }
            CHECK(memcmp(&ctx[r].out[0][i], &sum, sizeof sum) == 0);
            CHECK(ctx[r].out[1][i] == sum); /* the max of equal sums */
            CHECK(ctx[r].iout[i] == imax);
        }
    }
}

/* Ranks 1 and 2 send slices of rank + 2 floats to rank 0, in one group. */
static void *gather_rank(void *p)
{
    struct rank_ctx *c = p;
    cudaStream_t s;
    ncclComm_t comm;
    cudaSetDevice(c->device);
    cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    note(c, 0, ncclCommInitRank(&comm, c->nranks, c->id, c->rank));
    if (c->r[0] != ncclSuccess) return NULL;
    float *slots;
    cudaMalloc((void **)&slots, sizeof(float) * N_ELEMS);
    for (int i = 0; i < N_ELEMS; i++)
        slots[i] = c->rank == 0 ? -1.0f : (float)(100 * c->rank + i);
    note(c, 1, ncclGroupStart());
    if (c->rank == 0)
        for (int r = 1; r < c->nranks; r++)
            ncclRecv(slots + 10 * r, (size_t)r + 2, ncclFloat32, r, comm, s);
    else
        ncclSend(slots, (size_t)c->rank + 2, ncclFloat32, 0, comm, s);
    note(c, 2, ncclGroupEnd());
    /* as on a device, a send is done once the stream says so: the
     * sender's call returns first (asynchronous send, below) */
    if (cudaStreamSynchronize(s) != cudaSuccess) note(c, 4, ncclInternalError);
    memcpy(c->out[0], slots, sizeof c->out[0]);
    note(c, 3, ncclCommDestroy(comm));
    cudaFree(slots);
    cudaStreamDestroy(s);
    return NULL;
}

static void test_gather(void)
{
    enum { N = 3 };
    struct rank_ctx ctx[N];
    fresh_ranks(ctx, N);
    run_ranks(ctx, N, gather_rank);
    for (int r = 0; r < N; r++)
        for (int k = 0; k <= 4; k++)
            CHECK(ctx[r].r[k] == ncclSuccess);
    for (int i = 0; i < N_ELEMS; i++) {
        int slot = i / 10, j = i % 10;
        float want = slot >= 1 && slot < N && j < slot + 2 ? (float)(100 * slot + j) : -1.0f;
        CHECK(ctx[0].out[0][i] == want);
    }
}

/* Each rank captures an all-reduce into a graph and replays it twice. */
static void *capture_rank(void *p)
{
    struct rank_ctx *c = p;
    cudaStream_t s;
    ncclComm_t comm;
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    cudaSetDevice(c->device);
    cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    note(c, 0, ncclCommInitRank(&comm, c->nranks, c->id, c->rank));
    if (c->r[0] != ncclSuccess) return NULL;
    float *buf;
    cudaMalloc((void **)&buf, sizeof(float) * N_ELEMS);
    cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal);
    note(c, 1, ncclAllReduce(buf, buf, N_ELEMS, ncclFloat32, ncclSum, comm, s));
    c->r[2] = (ncclResult_t)cudaStreamEndCapture(s, &graph);
    cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < N_ELEMS; i++)
            buf[i] = (float)(c->rank + 10 * round + i);
        c->r[3 + round] = (ncclResult_t)cudaGraphLaunch(exec, s);
        memcpy(c->out[round], buf, sizeof c->out[round]);
    }
    cudaGraphExecDestroy(exec);
    note(c, 5, ncclCommDestroy(comm));
    cudaFree(buf);
    cudaStreamDestroy(s);
    return NULL;
}

static void test_capture(void)
{
    enum { N = 2 };
    struct rank_ctx ctx[N];
    memset(ctx, 0, sizeof ctx);
    ctx[0].device = 3; /* any devices will do */
    ctx[1].device = 1;
    run_ranks(ctx, N, capture_rank);
    for (int r = 0; r < N; r++) {
        for (int k = 0; k <= 5; k++)
            CHECK(ctx[r].r[k] == 0);
        for (int round = 0; round < 2; round++)
            for (int i = 0; i < N_ELEMS; i++)
                CHECK(ctx[r].out[round][i] == (float)(1 + 20 * round + 2 * i));
    }
}

/* What NCCL refuses at the call, what the ranks disagree on, a peer that
 * left. */
static void *errors_rank(void *p)
{
    struct rank_ctx *c = p;
    cudaStream_t s, s_other;
    ncclComm_t comm;
    float host[8];
    float *buf, *other_dev;
    int other = (c->device + 1) % 4;
    cudaSetDevice(other);
    cudaMalloc((void **)&other_dev, sizeof(float) * 8);
    cudaStreamCreate(&s_other);
    cudaSetDevice(c->device);
    cudaStreamCreate(&s);
    cudaMalloc((void **)&buf, sizeof(float) * 8);
    note(c, 0, ncclCommInitRank(&comm, c->nranks, c->id, c->rank));
    if (c->r[0] != ncclSuccess) return NULL;
    if (c->rank == 0) { /* local checks: no peer involved */
        note(c, 1, ncclAllReduce(other_dev, other_dev, 8, ncclFloat32, ncclSum, comm, s));
        note(c, 2, ncclAllReduce(host, host, 8, ncclFloat32, ncclSum, comm, s));
        note(c, 3, ncclAllReduce(buf, buf, 8, ncclFloat32, ncclSum, comm, s_other));
    }
    /* the ranks disagree on the count */
    note(c, 4, ncclAllReduce(buf, buf, (size_t)4 + (size_t)c->rank, ncclFloat32, ncclSum, comm, s));
    /* a grouped send and receive of different counts */
    ncclGroupStart();
    if (c->rank == 0)
        ncclSend(buf, 3, ncclFloat32, 1, comm, s);
    else
        ncclRecv(buf, 4, ncclFloat32, 0, comm, s);
    note(c, 5, ncclGroupEnd());
    /* the sender's call returned at once; its stream holds the failure */
    if (c->rank == 0) note(c, 7, cudaStreamSynchronize(s) != cudaSuccess ? ncclInvalidUsage : 0);
    /* rank 1 leaves; rank 0's next collective cannot complete */
    if (c->rank == 1)
        note(c, 6, ncclCommDestroy(comm));
    else
        note(c, 6, ncclAllReduce(buf, buf, 8, ncclFloat32, ncclSum, comm, s));
    if (c->rank == 0) ncclCommAbort(comm);
    cudaFree(buf);
    cudaFree(other_dev);
    cudaStreamDestroy(s);
    cudaStreamDestroy(s_other);
    return NULL;
}

static void test_errors(void)
{
    enum { N = 2 };
    struct rank_ctx ctx[N];
    memset(ctx, 0, sizeof ctx);
    ctx[0].device = 2;
    ctx[1].device = 0;
    run_ranks(ctx, N, errors_rank);
    CHECK(ctx[0].r[0] == ncclSuccess && ctx[1].r[0] == ncclSuccess);
    CHECK(ctx[0].r[1] == ncclInvalidArgument && strstr(ctx[0].msg[1], "device 3's memory"));
    CHECK(ctx[0].r[2] == ncclInvalidArgument && strstr(ctx[0].msg[2], "not device memory"));
    CHECK(ctx[0].r[3] == ncclUnhandledCudaError && strstr(ctx[0].msg[3], "stream of device 3"));
    for (int r = 0; r < N; r++)
        CHECK(ctx[r].r[4] == ncclInvalidUsage && strstr(ctx[r].msg[4], "count 5"));
    CHECK(ctx[0].r[5] == ncclSuccess && ctx[0].r[7] == ncclInvalidUsage);
    CHECK(ctx[1].r[5] == ncclInvalidUsage);
    CHECK(ctx[1].r[6] == ncclSuccess);
    CHECK(ctx[0].r[6] == ncclRemoteError && strstr(ctx[0].msg[6], "rank 1 has left"));
    CHECK(strcmp(ncclGetErrorString(ncclInvalidUsage), "invalid usage") == 0);
    int version = 0;
    CHECK(ncclGetVersion(&version) == ncclSuccess && version == NCCL_VERSION(2, 28, 9));
}

static void *init_only_rank(void *p)
{
    struct rank_ctx *c = p;
    ncclComm_t comm = NULL;
    cudaSetDevice(c->device);
    note(c, 0, ncclCommInitRank(&comm, c->nranks, c->id, c->rank));
    if (comm) ncclCommDestroy(comm);
    return NULL;
}

static void test_duplicate_device(void)
{
    enum { N = 2 };
    struct rank_ctx ctx[N];
    memset(ctx, 0, sizeof ctx);
    ctx[0].device = ctx[1].device = 2;
    run_ranks(ctx, N, init_only_rank);
    for (int r = 0; r < N; r++)
        CHECK(ctx[r].r[0] == ncclInvalidUsage && strstr(ctx[r].msg[0], "duplicate GPU"));
}

/* Rank 1 joins no collective until rank 0's has timed out (3 s): rank 0
 * fails, and the broken communicator fails rank 1's at once. */
static pthread_mutex_t timeout_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t timeout_cv = PTHREAD_COND_INITIALIZER;
static bool rank0_done;

static void *timeout_rank(void *p)
{
    struct rank_ctx *c = p;
    ncclComm_t comm;
    cudaStream_t s;
    float *buf;
    cudaSetDevice(c->device);
    cudaStreamCreate(&s);
    cudaMalloc((void **)&buf, sizeof(float));
    note(c, 0, ncclCommInitRank(&comm, c->nranks, c->id, c->rank));
    if (c->r[0] != ncclSuccess) return NULL;
    if (c->rank == 0) {
        note(c, 1, ncclAllReduce(buf, buf, 1, ncclFloat32, ncclSum, comm, s));
        pthread_mutex_lock(&timeout_mu);
        rank0_done = true;
        pthread_cond_broadcast(&timeout_cv);
        pthread_mutex_unlock(&timeout_mu);
    } else {
        pthread_mutex_lock(&timeout_mu);
        while (!rank0_done)
            pthread_cond_wait(&timeout_cv, &timeout_mu);
        pthread_mutex_unlock(&timeout_mu);
        note(c, 1, ncclAllReduce(buf, buf, 1, ncclFloat32, ncclSum, comm, s));
    }
    ncclCommAbort(comm);
    cudaFree(buf);
    cudaStreamDestroy(s);
    return NULL;
}

static void test_timeout(void)
{
    enum { N = 2 };
    struct rank_ctx ctx[N];
    fresh_ranks(ctx, N);
    run_ranks(ctx, N, timeout_rank);
    CHECK(ctx[0].r[1] == ncclInternalError && strstr(ctx[0].msg[1], "did not come in 3 s"));
    CHECK(ctx[1].r[1] == ncclInternalError && strstr(ctx[1].msg[1], "broken"));
}

/* A send outside a group returns before its receiver comes (the pipeline
 * stages of backend_cuda_pp.c rely on it: a stage sends, returns, and
 * only then lets the next one receive); the sender's stream waits. */
static atomic_int sent_and_returned;

static void *async_send_rank(void *p)
{
    struct rank_ctx *c = p;
    cudaStream_t s;
    ncclComm_t comm;
    cudaSetDevice(c->device);
    cudaStreamCreate(&s);
    note(c, 0, ncclCommInitRank(&comm, c->nranks, c->id, c->rank));
    if (c->r[0] != ncclSuccess) return NULL;
    float *buf;
    cudaMalloc((void **)&buf, sizeof(float) * N_ELEMS);
    for (int i = 0; i < N_ELEMS; i++)
        buf[i] = c->rank == 0 ? (float)(7 * i) : -1.0f;
    if (c->rank == 0) {
        note(c, 1, ncclSend(buf, N_ELEMS, ncclFloat32, 1, comm, s));
        atomic_store(&sent_and_returned, 1);
        /* done once the receiver took it */
        note(c, 2, cudaStreamSynchronize(s) == cudaSuccess ? ncclSuccess : ncclInternalError);
    } else {
        for (int t = 0; t < 5000 && !atomic_load(&sent_and_returned); t++)
            usleep(1000);
        c->r[3] = atomic_load(&sent_and_returned) ? ncclSuccess : ncclInternalError;
        note(c, 1, ncclRecv(buf, N_ELEMS, ncclFloat32, 0, comm, s));
        note(c, 2, cudaStreamSynchronize(s) == cudaSuccess ? ncclSuccess : ncclInternalError);
        memcpy(c->out[0], buf, sizeof c->out[0]);
    }
    ncclCommDestroy(comm);
    cudaFree(buf);
    cudaStreamDestroy(s);
    return NULL;
}

static void test_async_send(void)
{
    enum { N = 2 };
    struct rank_ctx ctx[N];
    fresh_ranks(ctx, N);
    run_ranks(ctx, N, async_send_rank);
    for (int r = 0; r < N; r++)
        CHECK(ctx[r].r[0] == ncclSuccess && ctx[r].r[1] == ncclSuccess &&
              ctx[r].r[2] == ncclSuccess);
    CHECK(ctx[1].r[3] == ncclSuccess); /* rank 0 returned from ncclSend before any receive */
    for (int i = 0; i < N_ELEMS; i++)
        CHECK(ctx[1].out[0][i] == (float)(7 * i));
}

int main(void)
{
    test_devices();
    test_streams();
    test_memcpy_2d();
    test_all_reduce();
    test_gather();
    test_async_send();
    test_capture();
    test_errors();
    test_duplicate_device();
    test_timeout();
    return test_result("nccl_emu");
}
