/*
 * test_nccl_emu.c - the emulated devices (cuda_emu_runtime.h with
 * CUDA_EMU_DEVICES=4) and the emulated NCCL (nccl.h) on their own, ranks
 * as threads: the current device per thread, memory accounted per device,
 * streams and events tied to their device (launches into another
 * device's stream or on its memory fail), cudaMemcpy2DAsync; all-reduce
 * in rank order and identical on every rank, a grouped gather of
 * point-to-point sends, a send that returns before its receiver comes
 * (the sender's stream waits instead), collectives recorded into graphs
 * and replayed, and the failures NCCL reports (buffers and streams of another device,
 * ranks that disagree, duplicate devices, a peer that left, a peer that
 * never comes: CUDA_EMU_NCCL_TIMEOUT_S=3). meson runs it with both
 * variables set.
 *
 * Then the same rank functions with the ranks in separate processes, on
 * an id made with CUDA_EMU_NCCL_PROCESSES=1: the test re-executes itself
 * (`--ranks FN ID NRANKS RANK:DEVICE...`) as the other processes, each
 * with its own CUDA_EMU_DEVICES and without that variable, and checks
 * what their ranks send back: results bit-identical to the threads', the
 * same failures, and peers killed with SIGKILL (a rank's process, the
 * hub's) failing the others at once.
 */
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cublasLt.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include "testing.h"

#define MAX_RANKS 4
#define N_ELEMS 37

/* One rank's thread: its inputs and everything it saw, checked by main
 * (a rank in another process sends it back whole). */
struct rank_ctx {
    int rank, nranks, device;
    ncclUniqueId id;
    int tell_fd, hear_fd; /* a byte to / from another rank or process; -1: none */
    ncclResult_t r[8];
    char msg[8][256];
    double at[8]; /* when r[i] was noted (CLOCK_MONOTONIC, s) */
    float out[2][N_ELEMS];
    int32_t iout[N_ELEMS];
};

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Lets whoever listens on the rank's tell_fd go on. */
static void tell(struct rank_ctx *c)
{
    char byte = 1;
    if (c->tell_fd >= 0 && write(c->tell_fd, &byte, 1) != 1) c->r[7] = ncclSystemError;
}

/* Waits up to ms for a byte on fd; whether one came. */
static bool hear_on(int fd, int ms)
{
    struct pollfd pfd = {fd, POLLIN, 0};
    char byte;
    return fd >= 0 && poll(&pfd, 1, ms) == 1 && read(fd, &byte, 1) == 1;
}

static bool hear(struct rank_ctx *c, int ms)
{
    return hear_on(c->hear_fd, ms);
}

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
    for (int r = 0; r < n; r++) {
        ctx[r].device = -1;
        ctx[r].tell_fd = ctx[r].hear_fd = -1;
    }
}

static void note(struct rank_ctx *c, int i, ncclResult_t r)
{
    c->r[i] = r;
    c->at[i] = now_s();
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

/* ---- NCCL, ranks as threads ---- */

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

/* What all_reduce_rank must have seen on each of n ranks. */
static void check_all_reduce(const struct rank_ctx *ctx, int n)
{
    for (int r = 0; r < n; r++) {
        for (int k = 0; k <= 4; k++)
            CHECK(ctx[r].r[k] == ncclSuccess);
        for (int i = 0; i < N_ELEMS; i++) {
            float sum = (value(0, i) + value(1, i)) + value(2, i); /* rank order */
            int32_t imax = 0;
            for (int q = 0; q < n; q++) {
                int32_t v = (i * 5 + q * 11) % 23;
                imax = v > imax ? v : imax;
            }
            CHECK(memcmp(&ctx[r].out[0][i], &sum, sizeof sum) == 0);
            CHECK(ctx[r].out[1][i] == sum); /* the max of equal sums */
            CHECK(ctx[r].iout[i] == imax);
        }
    }
}

/* The threads' results, for the same all-reduce across processes. */
static struct rank_ctx all_reduce_threads[3];

static void test_all_reduce(void)
{
    enum { N = 3 };
    struct rank_ctx *ctx = all_reduce_threads;
    fresh_ranks(ctx, N);
    run_ranks(ctx, N, all_reduce_rank);
    check_all_reduce(ctx, N);
}

/* Ranks 1.. send slices of rank + 2 floats to rank 0, in one group. */
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

static void check_gather(const struct rank_ctx *ctx, int n)
{
    for (int r = 0; r < n; r++)
        for (int k = 0; k <= 4; k++)
            CHECK(ctx[r].r[k] == ncclSuccess);
    for (int i = 0; i < N_ELEMS; i++) {
        int slot = i / 10, j = i % 10;
        float want = slot >= 1 && slot < n && j < slot + 2 ? (float)(100 * slot + j) : -1.0f;
        CHECK(ctx[0].out[0][i] == want);
    }
}

static void test_gather(void)
{
    enum { N = 3 };
    struct rank_ctx ctx[N];
    fresh_ranks(ctx, N);
    run_ranks(ctx, N, gather_rank);
    check_gather(ctx, N);
}

/* Each rank captures two all-reduces into a graph (the second sums the
 * first's sums) and replays it twice. */
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
    note(c, 6, ncclAllReduce(buf, buf, N_ELEMS, ncclFloat32, ncclSum, comm, s));
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

/* Two ranks: replay k leaves 2 * ((0 + 10k + i) + (1 + 10k + i)). */
static void check_capture(const struct rank_ctx *ctx)
{
    for (int r = 0; r < 2; r++) {
        for (int k = 0; k <= 6; k++)
            CHECK(ctx[r].r[k] == 0);
        for (int round = 0; round < 2; round++)
            for (int i = 0; i < N_ELEMS; i++)
                CHECK(ctx[r].out[round][i] == (float)(2 * (1 + 20 * round + 2 * i)));
    }
}

static void test_capture(void)
{
    enum { N = 2 };
    struct rank_ctx ctx[N];
    fresh_ranks(ctx, N);
    ctx[0].device = 3; /* any devices will do */
    ctx[1].device = 1;
    run_ranks(ctx, N, capture_rank);
    check_capture(ctx);
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

/* What errors_rank must have seen on rank 0 (on device 2) and rank 1. */
static void check_errors(const struct rank_ctx *ctx)
{
    enum { N = 2 };
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
}

static void test_errors(void)
{
    enum { N = 2 };
    struct rank_ctx ctx[N];
    fresh_ranks(ctx, N);
    ctx[0].device = 2;
    ctx[1].device = 0;
    run_ranks(ctx, N, errors_rank);
    check_errors(ctx);
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
    fresh_ranks(ctx, N);
    ctx[0].device = ctx[1].device = 2;
    run_ranks(ctx, N, init_only_rank);
    for (int r = 0; r < N; r++)
        CHECK(ctx[r].r[0] == ncclInvalidUsage && strstr(ctx[r].msg[0], "duplicate GPU"));
}

/* Rank 1 joins no collective until rank 0's has timed out (3 s) and told
 * it so: rank 0 fails, and the broken communicator fails rank 1's at
 * once. */
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
        tell(c);
    } else {
        c->r[2] = hear(c, 20000) ? ncclSuccess : ncclInternalError;
        note(c, 1, ncclAllReduce(buf, buf, 1, ncclFloat32, ncclSum, comm, s));
    }
    ncclCommAbort(comm);
    cudaFree(buf);
    cudaStreamDestroy(s);
    return NULL;
}

static void check_timeout(const struct rank_ctx *ctx)
{
    CHECK(ctx[0].r[0] == ncclSuccess && ctx[1].r[0] == ncclSuccess && ctx[1].r[2] == ncclSuccess);
    CHECK(ctx[0].r[1] == ncclInternalError && strstr(ctx[0].msg[1], "did not come in 3 s"));
    CHECK(ctx[1].r[1] == ncclInternalError && strstr(ctx[1].msg[1], "broken"));
}

/* A pipe that the child processes do not inherit. */
static bool cloexec_pipe(int fds[2])
{
    return pipe2(fds, O_CLOEXEC) == 0;
}

/* Rank 0 tells rank 1, a thread of this process, through fds. */
static void pipe_ranks(struct rank_ctx *ctx, int fds[2])
{
    CHECK(cloexec_pipe(fds));
    ctx[0].tell_fd = fds[1];
    ctx[1].hear_fd = fds[0];
}

static void test_timeout(void)
{
    enum { N = 2 };
    struct rank_ctx ctx[N];
    int fds[2];
    fresh_ranks(ctx, N);
    pipe_ranks(ctx, fds);
    run_ranks(ctx, N, timeout_rank);
    check_timeout(ctx);
    close(fds[0]);
    close(fds[1]);
}

/* A send outside a group returns before its receiver comes (the pipeline
 * stages of backend_cuda_pp.c rely on it: a stage sends, returns, and
 * only then lets the next one receive); the sender's stream waits. */
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
        tell(c);
        /* done once the receiver took it */
        note(c, 2, cudaStreamSynchronize(s) == cudaSuccess ? ncclSuccess : ncclInternalError);
    } else {
        c->r[3] = hear(c, 5000) ? ncclSuccess : ncclInternalError;
        note(c, 1, ncclRecv(buf, N_ELEMS, ncclFloat32, 0, comm, s));
        note(c, 2, cudaStreamSynchronize(s) == cudaSuccess ? ncclSuccess : ncclInternalError);
        memcpy(c->out[0], buf, sizeof c->out[0]);
    }
    ncclCommDestroy(comm);
    cudaFree(buf);
    cudaStreamDestroy(s);
    return NULL;
}

static void check_async_send(const struct rank_ctx *ctx)
{
    for (int r = 0; r < 2; r++)
        CHECK(ctx[r].r[0] == ncclSuccess && ctx[r].r[1] == ncclSuccess &&
              ctx[r].r[2] == ncclSuccess);
    CHECK(ctx[1].r[3] == ncclSuccess); /* rank 0 returned from ncclSend before any receive */
    for (int i = 0; i < N_ELEMS; i++)
        CHECK(ctx[1].out[0][i] == (float)(7 * i));
}

static void test_async_send(void)
{
    enum { N = 2 };
    struct rank_ctx ctx[N];
    int fds[2];
    fresh_ranks(ctx, N);
    pipe_ranks(ctx, fds);
    run_ranks(ctx, N, async_send_rank);
    check_async_send(ctx);
    close(fds[0]);
    close(fds[1]);
}

/* ---- NCCL, ranks in separate processes ---- */

#define MAX_PROCESSES 4

extern char **environ;

/* Rank 2's process is killed in an all-reduce that ranks 0 and 2 have
 * entered and rank 1 enters only after rank 0 failed: rank 0 must fail
 * at once, rank 1 when it comes. */
static void *kill_rank(void *p)
{
    struct rank_ctx *c = p;
    cudaStream_t s;
    ncclComm_t comm;
    float *buf;
    cudaSetDevice(c->device);
    cudaStreamCreate(&s);
    cudaMalloc((void **)&buf, sizeof(float) * N_ELEMS);
    memset(buf, 0, sizeof(float) * N_ELEMS);
    note(c, 0, ncclCommInitRank(&comm, c->nranks, c->id, c->rank));
    if (c->r[0] != ncclSuccess) return NULL;
    if (c->rank == 1) c->r[2] = hear(c, 20000) ? ncclSuccess : ncclInternalError;
    if (c->rank == 2) tell(c); /* the test may kill this process from now on */
    note(c, 1, ncclAllReduce(buf, buf, N_ELEMS, ncclFloat32, ncclSum, comm, s));
    if (c->rank == 0) tell(c);
    ncclCommAbort(comm);
    cudaFree(buf);
    cudaStreamDestroy(s);
    return NULL;
}

/* One all-reduce, which the peer never enters. */
static void *lone_all_reduce_rank(void *p)
{
    struct rank_ctx *c = p;
    cudaStream_t s;
    ncclComm_t comm;
    float *buf;
    cudaSetDevice(c->device);
    cudaStreamCreate(&s);
    cudaMalloc((void **)&buf, sizeof(float) * N_ELEMS);
    memset(buf, 0, sizeof(float) * N_ELEMS);
    note(c, 0, ncclCommInitRank(&comm, c->nranks, c->id, c->rank));
    if (c->r[0] != ncclSuccess) return NULL;
    note(c, 1, ncclAllReduce(buf, buf, N_ELEMS, ncclFloat32, ncclSum, comm, s));
    ncclCommAbort(comm);
    cudaFree(buf);
    cudaStreamDestroy(s);
    return NULL;
}

typedef void *(*rank_main)(void *);

/* The rank functions a child process may be asked to run, by name. */
static const struct {
    const char *name;
    rank_main fn;
} rank_mains[] = {
    {"all_reduce", all_reduce_rank}, {"gather", gather_rank}, {"async_send", async_send_rank},
    {"capture", capture_rank},       {"errors", errors_rank}, {"timeout", timeout_rank},
    {"init_only", init_only_rank},   {"kill", kill_rank},
};

static rank_main rank_main_named(const char *name)
{
    for (size_t i = 0; i < sizeof rank_mains / sizeof rank_mains[0]; i++)
        if (strcmp(rank_mains[i].name, name) == 0) return rank_mains[i].fn;
    return NULL;
}

static void id_to_hex(const ncclUniqueId *id, char hex[2 * NCCL_UNIQUE_ID_BYTES + 1])
{
    for (size_t i = 0; i < sizeof id->internal; i++)
        snprintf(hex + 2 * i, 3, "%02x", (unsigned)(unsigned char)id->internal[i]);
}

static bool id_from_hex(const char *hex, ncclUniqueId *id)
{
    if (strlen(hex) != 2 * sizeof id->internal) return false;
    for (size_t i = 0; i < sizeof id->internal; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1) return false;
        id->internal[i] = (char)v;
    }
    return true;
}

/* An id whose ranks may live in any process (this one serves it). */
static ncclUniqueId cross_process_id(void)
{
    ncclUniqueId id, plain;
    setenv("CUDA_EMU_NCCL_PROCESSES", "1", 1);
    CHECK(ncclGetUniqueId(&id) == ncclSuccess);
    unsetenv("CUDA_EMU_NCCL_PROCESSES");
    CHECK(ncclGetUniqueId(&plain) == ncclSuccess);
    CHECK(memcmp(id.internal, plain.internal, 16) != 0); /* another kind of id */
    return id;
}

/* Reads n bytes from fd within ms; whether they all came. */
static bool read_within(int fd, void *buf, size_t n, int ms)
{
    char *p = buf;
    double end = now_s() + ms / 1000.0;
    while (n > 0) {
        struct pollfd pfd = {fd, POLLIN, 0};
        int left = (int)((end - now_s()) * 1000.0);
        if (left <= 0 || poll(&pfd, 1, left) != 1) return false;
        ssize_t k = read(fd, p, n);
        if (k <= 0) return false;
        p += k;
        n -= (size_t)k;
    }
    return true;
}

/* A child process (this test, re-executed) and the pipes to it. */
struct child {
    pid_t pid;
    int results_fd; /* its stdout: its ranks' struct rank_ctx, in rank order */
    int told_fd;    /* its fd 3: what its ranks tell the test */
    int hear_fd;    /* its stdin: what the test's ranks tell it */
    int status;     /* from waitpid */
};

/* The environment of a child: this one's without the variables the test
 * gives it, then CUDA_EMU_DEVICES=devices and extra (if any). */
static char **child_env(int devices, const char *extra, char *devices_var, size_t var_bytes)
{
    size_t n = 0, k = 0;
    while (environ[n])
        n++;
    char **env = calloc(n + 3, sizeof *env);
    if (!env) return NULL;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "CUDA_EMU_DEVICES=", 17) != 0 &&
            strncmp(environ[i], "CUDA_EMU_NCCL_PROCESSES=", 24) != 0)
            env[k++] = environ[i];
    snprintf(devices_var, var_bytes, "CUDA_EMU_DEVICES=%d", devices);
    env[k++] = devices_var;
    if (extra) env[k++] = (char *)extra;
    return env;
}

/* Starts this test again with args, in an environment of its own. */
static bool spawn_child(struct child *ch, char *const *args, int devices, const char *extra_env)
{
    int results[2], told[2], heard[2];
    memset(ch, 0, sizeof *ch);
    ch->pid = -1;
    if (!cloexec_pipe(results)) return false;
    if (!cloexec_pipe(told) || !cloexec_pipe(heard)) return false; /* a test: no cleanup */
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, heard[0], 0);
    posix_spawn_file_actions_adddup2(&fa, results[1], 1);
    posix_spawn_file_actions_adddup2(&fa, told[1], 3);
    char devices_var[64];
    char **env = child_env(devices, extra_env, devices_var, sizeof devices_var);
    int e = env ? posix_spawn(&ch->pid, "/proc/self/exe", &fa, NULL, args, env) : -1;
    free(env);
    posix_spawn_file_actions_destroy(&fa);
    close(heard[0]);
    close(results[1]);
    close(told[1]);
    ch->results_fd = results[0];
    ch->told_fd = told[0];
    ch->hear_fd = heard[1];
    return e == 0;
}

/* Where the ranks of a run across processes live: process 0 is the
 * test's own (it makes the id), 1.. are children. */
struct layout {
    int nranks;
    int process[MAX_RANKS]; /* per rank */
    int device[MAX_RANKS];  /* per rank, in its process */
    int nprocesses;
    int devices[MAX_PROCESSES]; /* per child: its CUDA_EMU_DEVICES */
};

/* Starts child process k of where, running fn_name as its ranks. */
static bool spawn_ranks(struct child *ch, const char *fn_name, const ncclUniqueId *id,
                        const struct layout *where, int k)
{
    char hex[2 * NCCL_UNIQUE_ID_BYTES + 1], nranks[16], ranks[MAX_RANKS][24];
    char *args[6 + MAX_RANKS];
    int n = 0;
    id_to_hex(id, hex);
    snprintf(nranks, sizeof nranks, "%d", where->nranks);
    args[n++] = "test_nccl_emu";
    args[n++] = "--ranks";
    args[n++] = (char *)fn_name;
    args[n++] = hex;
    args[n++] = nranks;
    for (int r = 0; r < where->nranks; r++)
        if (where->process[r] == k) {
            snprintf(ranks[r], sizeof ranks[r], "%d:%d", r, where->device[r]);
            args[n++] = ranks[r];
        }
    args[n] = NULL;
    return spawn_child(ch, args, where->devices[k], NULL);
}

/* Collects what child k's ranks sent back (a rank that sent nothing has
 * every result ncclNumResults) and how the child ended. */
static void finish_ranks(struct child *ch, struct rank_ctx *ctx, const struct layout *where, int k)
{
    bool all_came = true;
    for (int r = 0; r < where->nranks; r++) {
        if (where->process[r] != k) continue;
        if (read_within(ch->results_fd, &ctx[r], sizeof ctx[r], 30000)) continue;
        all_came = false;
        for (int i = 0; i < 8; i++)
            ctx[r].r[i] = ncclNumResults;
    }
    if (!all_came && ch->pid > 0) kill(ch->pid, SIGKILL); /* hung, or already dead */
    if (ch->pid > 0) waitpid(ch->pid, &ch->status, 0);
    close(ch->results_fd);
    close(ch->told_fd);
    close(ch->hear_fd);
}

static bool exited_cleanly(const struct child *ch)
{
    return WIFEXITED(ch->status) && WEXITSTATUS(ch->status) == 0;
}

/* A run across processes: every rank's context, the children. */
struct run {
    struct rank_ctx ctx[MAX_RANKS];
    struct child child[MAX_PROCESSES]; /* [1, nprocesses) */
    double killed_at;                  /* when step killed a child, if it did */
};

/* Runs fn_name as every rank of a communicator across processes laid out
 * as where says. A rank of this process tells the next rank's child;
 * the children's ranks tell the test, for step (if any), which runs on
 * the main thread meanwhile. */
static void run_processes(struct run *run, const struct layout *where, const char *fn_name,
                          void (*step)(struct run *, const struct layout *))
{
    pthread_t threads[MAX_RANKS];
    ncclUniqueId id = cross_process_id();
    memset(run, 0, sizeof *run);
    fresh_ranks(run->ctx, where->nranks);
    for (int k = 1; k < where->nprocesses; k++)
        CHECK(spawn_ranks(&run->child[k], fn_name, &id, where, k));
    for (int r = 0; r < where->nranks; r++) {
        struct rank_ctx *c = &run->ctx[r];
        if (where->process[r] != 0) continue;
        c->rank = r;
        c->nranks = where->nranks;
        c->id = id;
        c->device = where->device[r];
        if (r + 1 < where->nranks && where->process[r + 1] != 0)
            c->tell_fd = run->child[where->process[r + 1]].hear_fd;
        pthread_create(&threads[r], NULL, rank_main_named(fn_name), c);
    }
    if (step) step(run, where);
    for (int r = 0; r < where->nranks; r++)
        if (where->process[r] == 0) pthread_join(threads[r], NULL);
    for (int k = 1; k < where->nprocesses; k++)
        finish_ranks(&run->child[k], run->ctx, where, k);
}

static void check_children_exited(const struct run *run, const struct layout *where)
{
    for (int k = 1; k < where->nprocesses; k++)
        CHECK(exited_cleanly(&run->child[k]));
}

/* Three processes, every rank on its process's device 0 (the duplicate
 * GPU check is per process): bit for bit the threads' results. */
static void test_processes_all_reduce(void)
{
    static const struct layout where = {3, {0, 1, 2}, {0, 0, 0}, 3, {0, 1, 1}};
    struct run run;
    run_processes(&run, &where, "all_reduce", NULL);
    check_children_exited(&run, &where);
    check_all_reduce(run.ctx, 3);
    for (int r = 0; r < 3; r++) {
        CHECK(memcmp(run.ctx[r].out, all_reduce_threads[r].out, sizeof run.ctx[r].out) == 0);
        CHECK(memcmp(run.ctx[r].iout, all_reduce_threads[r].iout, sizeof run.ctx[r].iout) == 0);
    }
}

/* Ranks 1 and 2, threads of one child, send to rank 0 here. */
static void test_processes_gather(void)
{
    static const struct layout where = {3, {0, 1, 1}, {0, 0, 1}, 2, {0, 2}};
    struct run run;
    run_processes(&run, &where, "gather", NULL);
    check_children_exited(&run, &where);
    check_gather(run.ctx, 3);
}

/* Runs rank function fn_name laid out as where, then the same check as
 * between threads on what the ranks saw. */
static void processes_case(const char *fn_name, const struct layout *where,
                           void (*check)(const struct rank_ctx *ctx))
{
    struct run run;
    run_processes(&run, where, fn_name, NULL);
    check_children_exited(&run, where);
    check(run.ctx);
}

static void test_processes_async_send(void)
{
    static const struct layout where = {2, {0, 1}, {0, 0}, 2, {0, 1}};
    processes_case("async_send", &where, check_async_send);
}

static void test_processes_capture(void)
{
    static const struct layout where = {2, {0, 1}, {3, 0}, 2, {0, 1}};
    processes_case("capture", &where, check_capture);
}

/* Disagreeing counts, a send and a receive that disagree, a peer that
 * left: the same failures as between threads. */
static void test_processes_errors(void)
{
    static const struct layout where = {2, {0, 1}, {2, 0}, 2, {0, 2}};
    processes_case("errors", &where, check_errors);
}

static void test_processes_timeout(void)
{
    static const struct layout where = {2, {0, 1}, {0, 0}, 2, {0, 1}};
    processes_case("timeout", &where, check_timeout);
}

/* A peer that never joins: the init times out. */
static void test_processes_never_joined(void)
{
    ncclUniqueId id = cross_process_id();
    ncclComm_t comm = NULL;
    double start = now_s();
    ncclResult_t r = ncclCommInitRank(&comm, 2, id, 0);
    CHECK(r == ncclInternalError && strstr(ncclGetLastError(NULL), "did not come in 3 s"));
    CHECK(!comm && now_s() - start > 2.9);
}

/* Rank 1 twice, here first, then in a child: the child's is refused and
 * rank 0 completes the communicator with this process's. */
static void test_processes_duplicate_rank(void)
{
    static const struct layout where = {2, {0, 1}, {0, 0}, 2, {0, 1}};
    struct rank_ctx ctx[2];
    struct child ch;
    pthread_t first;
    fresh_ranks(ctx, 2);
    ctx[0].id = ctx[1].id = cross_process_id();
    ctx[0].nranks = ctx[1].nranks = 2;
    ctx[1].rank = 1;
    ctx[1].device = 1; /* both ranks are in this process */
    pthread_create(&first, NULL, init_only_rank, &ctx[1]);
    usleep(200 * 1000); /* it joins long before the child starts */
    CHECK(spawn_ranks(&ch, "init_only", &ctx[0].id, &where, 1));
    struct rank_ctx back[2];
    finish_ranks(&ch, back, &where, 1);
    CHECK(exited_cleanly(&ch));
    CHECK(back[1].r[0] == ncclInvalidUsage && strstr(back[1].msg[0], "twice"));
    init_only_rank(&ctx[0]);
    pthread_join(first, NULL);
    CHECK(ctx[0].r[0] == ncclSuccess && ctx[1].r[0] == ncclSuccess);
}

/* Kills the process of rank 2 once it is entering its all-reduce. */
static void kill_rank_2(struct run *run, const struct layout *where)
{
    struct child *victim = &run->child[where->process[2]];
    CHECK(hear_on(victim->told_fd, 20000));
    usleep(300 * 1000); /* well into the all-reduce */
    run->killed_at = now_s();
    kill(victim->pid, SIGKILL);
}

static void test_processes_rank_killed(void)
{
    static const struct layout where = {3, {0, 1, 2}, {0, 0, 0}, 3, {0, 1, 1}};
    struct run run;
    run_processes(&run, &where, "kill", kill_rank_2);
    const struct rank_ctx *c0 = &run.ctx[0], *c1 = &run.ctx[1];
    CHECK(WIFSIGNALED(run.child[2].status) && WTERMSIG(run.child[2].status) == SIGKILL);
    CHECK(exited_cleanly(&run.child[1]));
    CHECK(c0->r[0] == ncclSuccess && c1->r[0] == ncclSuccess && c1->r[2] == ncclSuccess);
    CHECK(c0->r[1] == ncclRemoteError && strstr(c0->msg[1], "rank 2 has left") &&
          strstr(c0->msg[1], "exited"));
    /* at once: a wait that ran into the 3 s timeout would end >= 2.7 s
     * after the kill (it began >= 0.3 s before); 2 s leaves room for a
     * loaded machine */
    CHECK(c0->at[1] > run.killed_at && c0->at[1] - run.killed_at < 2.0);
    CHECK(c1->r[1] == ncclRemoteError && strstr(c1->msg[1], "has left"));
}

/* A child that makes the id (CUDA_EMU_NCCL_PROCESSES=1 in its
 * environment only) and so holds the hub: writes the id to the test,
 * joins as rank 0, says so, and stays out of every collective until it
 * is killed. */
static int hub_child_main(void)
{
    ncclUniqueId id;
    ncclComm_t comm = NULL;
    char byte = 1;
    if (ncclGetUniqueId(&id) != ncclSuccess || write(3, &id, sizeof id) != sizeof id) return 2;
    if (ncclCommInitRank(&comm, 2, id, 0) != ncclSuccess) return 3;
    if (write(3, &byte, 1) != 1) return 2;
    sleep(30);
    ncclCommDestroy(comm);
    return 0;
}

/* The hub's process is killed while rank 1, here, waits in an all-reduce. */
static void test_processes_hub_killed(void)
{
    char *args[] = {"test_nccl_emu", "--hub", NULL};
    struct child hub;
    struct rank_ctx ctx;
    pthread_t t;
    fresh_ranks(&ctx, 1);
    ctx.rank = 1;
    ctx.nranks = 2;
    ctx.device = 0;
    CHECK(spawn_child(&hub, args, 1, "CUDA_EMU_NCCL_PROCESSES=1"));
    CHECK(read_within(hub.told_fd, &ctx.id, sizeof ctx.id, 20000));
    pthread_create(&t, NULL, lone_all_reduce_rank, &ctx);
    CHECK(hear_on(hub.told_fd, 20000));
    usleep(300 * 1000); /* well into the all-reduce */
    double killed_at = now_s();
    kill(hub.pid, SIGKILL);
    pthread_join(t, NULL);
    waitpid(hub.pid, &hub.status, 0);
    close(hub.results_fd);
    close(hub.told_fd);
    close(hub.hear_fd);
    CHECK(WIFSIGNALED(hub.status) && WTERMSIG(hub.status) == SIGKILL);
    CHECK(ctx.r[0] == ncclSuccess);
    CHECK(ctx.r[1] == ncclRemoteError && strstr(ctx.msg[1], "hub") && strstr(ctx.msg[1], "exited"));
    CHECK(ctx.at[1] > killed_at && ctx.at[1] - killed_at < 2.0); /* not the 3 s timeout */
}

/* A child process of a run across processes: `--ranks FN ID NRANKS
 * RANK:DEVICE...` runs FN as each RANK (a thread each) and writes their
 * contexts to stdout. */
static int child_main(int argc, char **argv)
{
    struct rank_ctx ctx[MAX_RANKS];
    pthread_t threads[MAX_RANKS];
    ncclUniqueId id;
    int n = argc - 5;
    rank_main fn = argc >= 6 ? rank_main_named(argv[2]) : NULL;
    if (!fn || n > MAX_RANKS || !id_from_hex(argv[3], &id)) return 2;
    fresh_ranks(ctx, n);
    for (int i = 0; i < n; i++) {
        if (sscanf(argv[5 + i], "%d:%d", &ctx[i].rank, &ctx[i].device) != 2) return 2;
        ctx[i].nranks = atoi(argv[4]);
        ctx[i].id = id;
        ctx[i].tell_fd = 3;
        ctx[i].hear_fd = 0;
    }
    for (int i = 0; i < n; i++)
        pthread_create(&threads[i], NULL, fn, &ctx[i]);
    for (int i = 0; i < n; i++)
        pthread_join(threads[i], NULL);
    for (int i = 0; i < n; i++)
        if (write(1, &ctx[i], sizeof ctx[i]) != (ssize_t)sizeof ctx[i]) return 2;
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--ranks") == 0) return child_main(argc, argv);
    if (argc > 1 && strcmp(argv[1], "--hub") == 0) return hub_child_main();
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
    test_processes_all_reduce();
    test_processes_gather();
    test_processes_async_send();
    test_processes_capture();
    test_processes_errors();
    test_processes_duplicate_rank();
    test_processes_rank_killed();
    test_processes_hub_killed();
    test_processes_timeout();
    test_processes_never_joined();
    return test_result("nccl_emu");
}
