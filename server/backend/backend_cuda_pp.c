/*
 * backend_cuda_pp.c - pipeline stages of the CUDA backend that pass the
 * residual stream device to device over NCCL (backend_cuda.h, cbp_*).
 *
 * backend_pp.c runs the stages as threads of one process and, once every
 * stage has loaded, calls pp_connect on all of them at once. Here the
 * stages' tp rank r (tp 1: the only rank) join one communicator whose
 * ranks are the stages: stage 0 makes the NCCL id and publishes it in the
 * group's rendezvous (pp_link), the others fetch it, and all call
 * ncclCommInitRank together. A forward then receives micro-batch m's
 * stream from the stage before (every tp rank of a stage holds the whole
 * stream, so rank r talks to rank r) and sends its own to the stage after.
 *
 * Ordering, and why nothing deadlocks: a send completes once the next
 * stage posts the matching receive, which that stage does when it starts
 * micro-batch m, after this stage's forward of m has returned and
 * published its progress (backend_pp.c). So a forward that sent must not
 * wait for its stream before returning; the next forward waits for it
 * first thing (the host metadata buffer is reused), by which time the
 * next stage has been released to receive. The last stage never sends.
 *
 * Opt-in (EVAL_CUDA_PP_TRANSPORT=nccl) until a device with two GPUs has
 * run it (tests/gpu/tp_check.sh); on the CPU emulation, CI runs it
 * (tests/emu/cuda_tp_emu.py, layouts pp2nccl and tp2pp2nccl). Owns the
 * pipeline communicator (cb->pp_nccl).
 */
#include <string.h>

#include "backend_cuda.h"
#include "backend_pp.h"
#include "log.h"

#ifdef HAVE_NCCL
/* nccl.h declares functions without prototypes: keep -Werror happy. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wstrict-prototypes"
#include <nccl.h>
#pragma GCC diagnostic pop

#define NCCL_FAIL(r, what) cbt_nccl_status((int)(r), what, __FILE__, __LINE__, err)

enum es_status cbp_connect(struct cuda_backend *cb, struct pp_link *link, struct es_err *err)
{
    int stage = cb->shard.pp_stage, n = cb->shard.pp_size, column = cb->shard.tp_rank;
    /* the profile synchronises inside a forward, which a pending send forbids */
    if (!cb->pp_nccl_wanted || n <= 1 || cb->prof) return ES_OK;
    ncclUniqueId id;
    memset(&id, 0, sizeof(id));
    if (stage == 0) {
        ncclResult_t r = ncclGetUniqueId(&id);
        pp_link_publish(link, column, &id, sizeof(id), r == ncclSuccess); /* always: they wait */
        if (r != ncclSuccess) return NCCL_FAIL(r, "ncclGetUniqueId");
    } else if (!pp_link_fetch(link, column, &id, sizeof(id))) {
        return es_fail(err, ES_EDEVICE, "cuda: pipeline stage %d: stage 0 has no NCCL id", stage);
    }
    if (cudaSetDevice(cb->device) != cudaSuccess)
        return es_fail(err, ES_EDEVICE, "cuda: pipeline stage %d: cudaSetDevice(%d) failed", stage,
                       cb->device);
    ncclComm_t comm = NULL;
    ncclResult_t r = ncclCommInitRank(&comm, n, id, stage);
    if (r != ncclSuccess) return NCCL_FAIL(r, "ncclCommInitRank");
    cb->pp_nccl = comm;
    LOG_I("cuda-pp", "stage %d of %d (tp rank %d, device %d) passes its stream over NCCL", stage, n,
          column, cb->device);
    return ES_OK;
}

enum es_status cbp_recv(struct cuda_backend *cb, int n_tokens, struct es_err *err)
{
    size_t count = (size_t)n_tokens * (size_t)cb->H;
    ncclResult_t r =
        ncclRecv(cb->resid, count, ncclFloat32, cb->shard.pp_stage - 1, cb->pp_nccl, cb->stream);
    return r == ncclSuccess ? ES_OK : NCCL_FAIL(r, "ncclRecv");
}

enum es_status cbp_send(struct cuda_backend *cb, int n_tokens, struct es_err *err)
{
    size_t count = (size_t)n_tokens * (size_t)cb->H;
    ncclResult_t r =
        ncclSend(cb->resid, count, ncclFloat32, cb->shard.pp_stage + 1, cb->pp_nccl, cb->stream);
    if (r != ncclSuccess) return NCCL_FAIL(r, "ncclSend");
    cb->pp_send_pending = true;
    return ES_OK;
}

void cbp_free(struct cuda_backend *cb)
{
    if (!cb->pp_nccl) return;
    ncclResult_t r = ncclCommAbort(cb->pp_nccl);
    if (r != ncclSuccess)
        LOG_W("cuda-pp", "stage %d: leaving the pipeline's NCCL communicator: %s",
              cb->shard.pp_stage, ncclGetErrorString(r));
    cb->pp_nccl = NULL;
}

#else /* !HAVE_NCCL: the stream always goes through host memory */

enum es_status cbp_connect(struct cuda_backend *cb, struct pp_link *link, struct es_err *err)
{
    (void)link;
    if (!cb->pp_nccl_wanted || cb->shard.pp_size <= 1) return ES_OK;
    return es_fail(err, ES_EUNSUPPORTED,
                   "cuda: EVAL_CUDA_PP_TRANSPORT=nccl needs NCCL, and this build has none");
}

enum es_status cbp_recv(struct cuda_backend *cb, int n_tokens, struct es_err *err)
{
    (void)cb;
    (void)n_tokens;
    return es_fail(err, ES_EUNSUPPORTED, "cuda: this build has no NCCL");
}

enum es_status cbp_send(struct cuda_backend *cb, int n_tokens, struct es_err *err)
{
    (void)cb;
    (void)n_tokens;
    return es_fail(err, ES_EUNSUPPORTED, "cuda: this build has no NCCL");
}

void cbp_free(struct cuda_backend *cb)
{
    (void)cb;
}

#endif
