/*
 * nccl.h - stands in for NCCL's header when the CUDA backend
 * (server/backend/backend_cuda_tp.c, built with HAVE_NCCL) is compiled
 * against the emulation (tests/emu/ first on the include path). NCCL's
 * names, values and signatures for the subset the backend uses (2.28's
 * API); implemented in nccl_emu.cpp over the emulated devices of
 * cuda_emu_runtime.h, and across processes in nccl_emu_net.cpp. C and
 * C++.
 *
 * What it models
 *   - Communicators between host threads of one process, each rank on its
 *     own emulated device (the one current at ncclCommInitRank; two ranks
 *     on one device fail the init on every rank with ncclInvalidUsage, as
 *     NCCL's duplicate-GPU check does). ncclGetUniqueId hands out a fresh
 *     id each call; ncclCommInitRank blocks until all nranks ranks of that
 *     id have joined.
 *   - The emulated streams run work at the call, so every operation runs
 *     at the call too: ncclAllReduce is a rendezvous of the ranks' threads
 *     (every rank's k-th collective meets the others' k-th; they must
 *     agree on the operation, count, type and reduction, else all fail
 *     with ncclInvalidUsage), whose last arrival reduces the ranks' send
 *     buffers in rank order ((r0 + r1) + r2 ...: deterministic) and writes
 *     every rank's receive buffer. ncclSend deposits a copy of its buffer
 *     for the peer and returns at once, as on a device; its stream is then
 *     blocked (cuda_emu::stream_defer): the stream's next operation or
 *     synchronisation waits until the peer's ncclRecv (same count and
 *     type, else ncclInvalidUsage: the receiver's call fails, the sender's
 *     stream reports the failure) has taken it. Between ncclGroupStart and
 *     ncclGroupEnd the calls are checked and queued; ncclGroupEnd runs
 *     them: the sends deposited first, then the collectives in order, the
 *     receives, and the wait for the sends, so a group's send/receive
 *     pairs cannot deadlock. Sum, product, max and min over ncclFloat32,
 *     ncclFloat64, ncclInt32 and ncclInt64.
 *   - The checks NCCL makes at the call: buffers (count > 0) must lie in
 *     live device memory of the communicator's device (ncclInvalidArgument),
 *     the stream must be that device's (ncclUnhandledCudaError, as the
 *     kernel launch into it would be), peers and ranks in range.
 *   - Stream capture: a call (a group: at its end) on a capturing stream is
 *     recorded into the graph, with its arguments by value, and runs at
 *     each graph launch: graphs with collectives replay, every replay a
 *     rendezvous of the ranks replaying theirs. A group whose calls mix
 *     capturing and other streams fails with ncclInvalidUsage.
 *   - A rank waiting for peers that never come would hang on a device:
 *     here the wait fails after CUDA_EMU_NCCL_TIMEOUT_S seconds (default
 *     120) with ncclInternalError and the communicator is broken (its
 *     later calls fail at once), and a wait for a rank that has left the
 *     communicator (ncclCommDestroy / ncclCommAbort) fails at once with
 *     ncclRemoteError. ncclGetLastError (any communicator, or NULL) says
 *     why the calling thread's last call failed.
 *   - ncclGetVersion reports NCCL_VERSION_CODE, or CUDA_EMU_NCCL_VERSION
 *     where that is set: a process that links another NCCL.
 *   - Ranks in several processes of one machine (Linux), opt-in: in a
 *     process where CUDA_EMU_NCCL_PROCESSES=1, ncclGetUniqueId hands out
 *     ids that say where they are served (a magic, an abstract-namespace
 *     Unix socket of that process, a token), and any process that calls
 *     ncclCommInitRank with one joins, no variable needed. The creating
 *     process serves its ids from a hub thread for as long as it lives;
 *     every rank of such a communicator, the creator's own ranks too,
 *     takes part through it, its buffers' bytes copied to and from the
 *     hub (each process's emulated device memory is its own), so the
 *     semantics above hold unchanged: the same checks, rank-order
 *     reduction (bit-identical results), groups, standalone sends,
 *     graph replay, timeout (each rank's own CUDA_EMU_NCCL_TIMEOUT_S) and
 *     error texts. The duplicate-GPU check compares ranks of one process
 *     only (every process has its own device 0). A process that dies (its
 *     connection to the hub closes without ncclCommDestroy) leaves its
 *     ranks' peers failing at once with ncclRemoteError ("rank r has left
 *     the communicator (its process (pid p) exited ...)"); when the
 *     hub's process dies, every other process's ranks fail with
 *     ncclRemoteError ("... the communicator's hub ... closed: that
 *     process exited") in the call they wait in, or at their next.
 *
 * What it does NOT model
 *   - Asynchrony: an operation blocks its host thread until its peers
 *     call theirs, where NCCL only enqueues it, so ranks whose host code
 *     orders NCCL calls and other cross-thread waits differently deadlock
 *     here (then time out) where a device may not.
 *   - Other collectives (broadcast, all-gather, reduce-scatter, ...),
 *     ncclAvg, other data types, non-blocking communicators, splitting,
 *     user buffer registration, ncclCommFinalize; real transports and
 *     their algorithms (the device sums in another, also fixed, order).
 *   - Across processes: ranks on other machines; a group that holds
 *     calls of such a communicator and of another (ncclInvalidUsage);
 *     receive buffers after a failed call, left as they were (between
 *     threads a group's calls before the failure have written theirs).
 */
#ifndef CUDA_EMU_NCCL_H
#define CUDA_EMU_NCCL_H

#include <stddef.h>

#include "cuda_runtime.h"

#ifdef __cplusplus
extern "C" {
#endif

#define NCCL_MAJOR 2
#define NCCL_MINOR 28
#define NCCL_PATCH 9
#define NCCL_SUFFIX ""
#define NCCL_VERSION_CODE 22809
#define NCCL_VERSION(X, Y, Z)                                                                      \
    (((X) <= 2 && (Y) <= 8) ? (X)*1000 + (Y)*100 + (Z) : (X)*10000 + (Y)*100 + (Z))

typedef struct ncclComm *ncclComm_t;

#define NCCL_UNIQUE_ID_BYTES 128
typedef struct {
    char internal[NCCL_UNIQUE_ID_BYTES];
} ncclUniqueId;

typedef enum {
    ncclSuccess = 0,
    ncclUnhandledCudaError = 1,
    ncclSystemError = 2,
    ncclInternalError = 3,
    ncclInvalidArgument = 4,
    ncclInvalidUsage = 5,
    ncclRemoteError = 6,
    ncclInProgress = 7,
    ncclNumResults = 8
} ncclResult_t;

typedef enum {
    ncclSum = 0,
    ncclProd = 1,
    ncclMax = 2,
    ncclMin = 3,
    ncclAvg = 4,
    ncclNumOps = 5,
    ncclMaxRedOp = 0x7fffffff
} ncclRedOp_t;

typedef enum {
    ncclInt8 = 0,
    ncclChar = 0,
    ncclUint8 = 1,
    ncclInt32 = 2,
    ncclInt = 2,
    ncclUint32 = 3,
    ncclInt64 = 4,
    ncclUint64 = 5,
    ncclFloat16 = 6,
    ncclHalf = 6,
    ncclFloat32 = 7,
    ncclFloat = 7,
    ncclFloat64 = 8,
    ncclDouble = 8,
    ncclBfloat16 = 9,
    ncclNumTypes = 10
} ncclDataType_t;

ncclResult_t ncclGetVersion(int *version);
ncclResult_t ncclGetUniqueId(ncclUniqueId *uniqueId);
ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId commId, int rank);
ncclResult_t ncclCommDestroy(ncclComm_t comm);
ncclResult_t ncclCommAbort(ncclComm_t comm);
const char *ncclGetErrorString(ncclResult_t result);
const char *ncclGetLastError(ncclComm_t comm);

ncclResult_t ncclAllReduce(const void *sendbuff, void *recvbuff, size_t count,
                           ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm,
                           cudaStream_t stream);
ncclResult_t ncclSend(const void *sendbuff, size_t count, ncclDataType_t datatype, int peer,
                      ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclRecv(void *recvbuff, size_t count, ncclDataType_t datatype, int peer,
                      ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclGroupStart(void);
ncclResult_t ncclGroupEnd(void);

#ifdef __cplusplus
}
#endif

#endif
