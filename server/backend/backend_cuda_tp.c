/*
 * backend_cuda_tp.c - tensor parallelism of the CUDA backend over NCCL:
 * the shard plan of one rank, the bootstrap of its communicator, the
 * agreement between ranks at load, and the collectives of a step.
 *
 * Layout (struct cuda_shard): the CPU backend's (backend_cpu_shard.c).
 * A step makes these collectives, the same on every rank and in this
 * order (nothing in them depends on anything but the batch, which every
 * rank is given whole):
 *   - an all-reduce of the embedded rows: an id outside a rank's
 *     vocabulary slice embeds as zeros, so the sum is exact;
 *   - per layer, an all-reduce after o_proj and one after down_proj. Rank
 *     0's GEMM adds its partial product to the residual stream in its
 *     epilogue, the other ranks' write theirs over their copy, so the sum
 *     is the new stream. NCCL reduces each element once and hands every
 *     rank the same bytes, so the copies never drift apart, and its order
 *     of summation is fixed for a given topology and size, so a step is
 *     deterministic (its rounding differs from one GPU's, which adds the
 *     whole product at once: within fp32 rounding, far below bf16's);
 *   - per chunk of logit rows, a gather of the LM-head slices to rank 0
 *     (grouped point-to-point sends, so that the other ranks need no room
 *     for the whole vocabulary), which reassembles [rows][V] and then
 *     computes log-probabilities and draws exactly as with one GPU.
 * With n_rows == 0 there is no gather on any rank; with tp_size == 1
 * nothing here makes an NCCL call.
 *
 * Bootstrap and load: the ranks first agree through the host comm
 * (comm.h) that each is up and links the same NCCL version; rank 0's
 * ncclUniqueId is broadcast through it and every rank joins with
 * ncclCommInitRank on its device. Each later fallible phase of load ends
 * in cbt_agree, which every rank reaches even after a local failure, so a
 * failure on one rank fails all of them instead of leaving the others
 * waiting in a collective.
 *
 * Owns the communicator (cb->nccl); buffers belong to struct
 * cuda_backend. Errors that every rank sees alike (a bad batch) are
 * caught before a step's first collective. A rank that fails mid-step on
 * its own (a CUDA or cuBLAS error) leaves its peers waiting in their next
 * collective, which NCCL does not time out: their stream synchronisation
 * then never returns. After a failed step or load the rank aborts its
 * communicator instead of destroying it, which would wait for the peers.
 */
#include <stdio.h>
#include <string.h>

#include "backend_cuda.h"
#include "backend_tp.h"
#include "comm.h"
#include "log.h"

#ifdef HAVE_NCCL
/* nccl.h declares functions without prototypes: keep -Werror happy. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wstrict-prototypes"
#include <nccl.h>
#pragma GCC diagnostic pop
#endif

#define LOG_CTP(...) LOG_I("cuda-tp", __VA_ARGS__)

#define CBT_MAX_RANKS 1024 /* what --tp accepts */

/* ---- the shard -------------------------------------------------------- */

enum es_status cbt_plan(struct cuda_backend *cb, const struct backend_opts *opts,
                        struct es_err *err)
{
    const struct model_config *c = &cb->cfg;
    int tp = opts->tp_size > 1 ? opts->tp_size : 1;
    int r = tp > 1 ? opts->tp_rank : 0;
    if (tp > CBT_MAX_RANKS || r < 0 || r >= tp)
        return es_fail(err, ES_EINVAL, "cuda: tensor-parallel rank %d of %d", r, tp);
    if (tp > 1 && !opts->comm)
        return es_fail(err, ES_EINVAL, "cuda: tensor-parallel rank %d has no comm", r);
    if (c->num_heads % tp != 0 || c->num_kv_heads % tp != 0)
        return es_fail(err, ES_EINVAL,
                       "cuda: --tp %d must divide the model's %d attention heads and %d KV heads",
                       tp, c->num_heads, c->num_kv_heads);
    if (c->intermediate_size < tp || c->vocab_size < tp)
        return es_fail(err, ES_EINVAL, "cuda: --tp %d exceeds intermediate %d or vocab %d", tp,
                       c->intermediate_size, c->vocab_size);
    cb->host_comm = tp > 1 ? opts->comm : NULL;
    struct cuda_shard *s = &cb->shard;
    s->tp_rank = r;
    s->tp_size = tp;
    s->nq = c->num_heads / tp;
    s->head0 = r * s->nq;
    s->nkv = c->num_kv_heads / tp;
    s->kv_head0 = r * s->nkv;
    int hi;
    tp_slice(c->intermediate_size, r, tp, &s->inter0, &hi);
    s->inter = hi - s->inter0;
    tp_slice(c->vocab_size, r, tp, &s->vocab0, &hi);
    s->vocab_n = hi - s->vocab0;
    int last_lo, last_hi;
    tp_slice(c->vocab_size, tp - 1, tp, &last_lo, &last_hi);
    s->vocab_max = last_hi - last_lo; /* the last rank's slice holds the remainder */
    return ES_OK;
}

/* ---- agreement over the host comm --------------------------------------- */

/* All-gathers (status, value) of every rank: values[r] = rank r's value.
 * Returns this rank's own failure first, then the lowest failing rank's
 * (its own message is in its log), else ES_OK. value < 2^48. */
static enum es_status gather_status(struct cuda_backend *cb, enum es_status local, size_t value,
                                    size_t *values, struct es_err *err)
{
    int tp = cb->shard.tp_size, me = cb->shard.tp_rank;
    float mine[3] = {(float)local, (float)(value >> 24), (float)(value & 0xffffff)};
    float all[3 * CBT_MAX_RANKS]; /* 12 KiB of stack, at load only */
    struct es_err gerr = {{0}};
    if (local != ES_OK)
        LOG_E("cuda-tp", "rank %d of %d: %s", me, tp,
              err && err->msg[0] ? err->msg : es_status_str(local));
    enum es_status st = cb->host_comm->ops->all_gather(cb->host_comm, mine, all, 3, &gerr);
    if (local != ES_OK) return local;
    if (st != ES_OK) return es_fail(err, st, "cuda: tensor-parallel agreement: %s", gerr.msg);
    for (int r = 0; r < tp; r++) {
        enum es_status other = (enum es_status)(int)all[3 * r];
        if (other != ES_OK)
            return es_fail(err, other,
                           "cuda: tensor-parallel rank %d failed (%s; its log says why), so "
                           "rank %d stops too",
                           r, es_status_str(other), me);
        values[r] = ((size_t)all[3 * r + 1] << 24) | (size_t)all[3 * r + 2];
    }
    return ES_OK;
}

enum es_status cbt_agree(struct cuda_backend *cb, enum es_status local, size_t value,
                         size_t *min_value, struct es_err *err)
{
    *min_value = value;
    if (cb->shard.tp_size <= 1) return local;
    size_t values[CBT_MAX_RANKS];
    enum es_status st = gather_status(cb, local, value, values, err);
    if (st != ES_OK) return st;
    for (int r = 0; r < cb->shard.tp_size; r++)
        if (values[r] < *min_value) *min_value = values[r];
    return ES_OK;
}

#ifdef HAVE_NCCL

/* ---- NCCL ------------------------------------------------------------------ */

enum es_status cbt_nccl_status(int result, const char *what, const char *file, int line,
                               struct es_err *err)
{
    ncclResult_t r = (ncclResult_t)result;
    if (r == ncclSuccess) return ES_OK;
    const char *detail = ncclGetLastError(NULL);
    return es_fail(err, ES_EDEVICE, "%s:%d: %s: NCCL error %d (%s)%s%s", file, line, what, (int)r,
                   ncclGetErrorString(r), detail && detail[0] ? ": " : "", detail ? detail : "");
}

#define NC(call)                                                                                   \
    do {                                                                                           \
        st = cbt_nccl_status((call), #call, __FILE__, __LINE__, err);                              \
        if (st != ES_OK) goto err;                                                                 \
    } while (0)

/* "2.28.9" from a version code (NCCL_VERSION's two encodings). */
static void version_str(size_t code, char *out, size_t n)
{
    if (code >= 10000)
        snprintf(out, n, "%zu.%zu.%zu", code / 10000, code / 100 % 100, code % 100);
    else
        snprintf(out, n, "%zu.%zu.%zu", code / 1000, code / 100 % 10, code % 100);
}

enum es_status cbt_start(struct cuda_backend *cb, enum es_status local, struct es_err *err)
{
    enum es_status st = ES_OK;
    int tp = cb->shard.tp_size, me = cb->shard.tp_rank;
    if (tp <= 1) return local;
    int version = 0;
    ncclUniqueId id;
    memset(&id, 0, sizeof(id));
    if (local == ES_OK)
        local =
            cbt_nccl_status(ncclGetVersion(&version), "ncclGetVersion", __FILE__, __LINE__, err);
    if (local == ES_OK && me == 0)
        local = cbt_nccl_status(ncclGetUniqueId(&id), "ncclGetUniqueId", __FILE__, __LINE__, err);
    size_t versions[CBT_MAX_RANKS];
    st = gather_status(cb, local, (size_t)version, versions, err);
    if (st != ES_OK) return st;
    for (int r = 1; r < tp; r++)
        if (versions[r] != versions[0]) {
            char v0[32], vr[32];
            version_str(versions[0], v0, sizeof(v0));
            version_str(versions[r], vr, sizeof(vr));
            return es_fail(err, ES_EUNSUPPORTED,
                           "cuda: tensor-parallel ranks link different NCCL versions (rank 0 "
                           "%s, rank %d %s): every rank must use the same NCCL",
                           v0, r, vr);
        }
    st = cb->host_comm->ops->broadcast(cb->host_comm, &id, sizeof(id), 0, err);
    if (st != ES_OK) return es_wrap(err, st, "cuda: broadcasting the NCCL id: ");
    ncclComm_t comm = NULL;
    NC(ncclCommInitRank(&comm, tp, id, me));
    cb->nccl = comm;
    char v[32];
    version_str((size_t)version, v, sizeof(v));
    LOG_CTP("rank %d of %d on device %d joined NCCL %s: heads [%d, %d), KV heads [%d, %d), MLP "
            "[%d, %d), vocabulary [%d, %d)",
            me, tp, cb->device, v, cb->shard.head0, cb->shard.head0 + cb->shard.nq,
            cb->shard.kv_head0, cb->shard.kv_head0 + cb->shard.nkv, cb->shard.inter0,
            cb->shard.inter0 + cb->shard.inter, cb->shard.vocab0,
            cb->shard.vocab0 + cb->shard.vocab_n);
err:
    return st;
}

enum es_status cbt_all_reduce(struct cuda_backend *cb, float *buf, size_t n, struct es_err *err)
{
    enum es_status st = ES_OK;
    if (cb->shard.tp_size <= 1 || n == 0) return ES_OK;
    cbs_prof_mark(cb, PROF_NCCL);
    NC(ncclAllReduce(buf, buf, n, ncclFloat32, ncclSum, cb->nccl, cb->stream));
    return ES_OK;
err:
    cb->nccl_failed = true;
    return st;
}

/* Rank 0: receives rank r's rows into slot r of logits_part (its own
 * GEMM wrote slot 0); the others send theirs. One NCCL group. */
static enum es_status gather_slices(struct cuda_backend *cb, size_t count, struct es_err *err)
{
    enum es_status st = ES_OK;
    int tp = cb->shard.tp_size;
    size_t slot = (size_t)CUDA_LOGIT_CHUNK * (size_t)cb->shard.vocab_max;
    NC(ncclGroupStart());
    if (cb->shard.tp_rank == 0) {
        for (int r = 1; r < tp && st == ES_OK; r++)
            st = cbt_nccl_status(ncclRecv(cb->logits_part + (size_t)r * slot, count, ncclFloat32, r,
                                          cb->nccl, cb->stream),
                                 "ncclRecv", __FILE__, __LINE__, err);
    } else {
        st = cbt_nccl_status(ncclSend(cb->logits_part, count, ncclFloat32, 0, cb->nccl, cb->stream),
                             "ncclSend", __FILE__, __LINE__, err);
    }
    /* the group is closed even after a failed call in it */
    enum es_status end = cbt_nccl_status(ncclGroupEnd(), "ncclGroupEnd", __FILE__, __LINE__, err);
    return st != ES_OK ? st : end;
err:
    return st;
}

enum es_status cbt_gather_logits(struct cuda_backend *cb, int n, struct es_err *err)
{
    enum es_status st = ES_OK;
    int tp = cb->shard.tp_size, vmax = cb->shard.vocab_max;
    if (tp <= 1 || n <= 0) return ES_OK;
    cbs_prof_mark(cb, PROF_NCCL);
    st = gather_slices(cb, (size_t)n * (size_t)vmax, err);
    if (st != ES_OK) {
        cb->nccl_failed = true;
        return st;
    }
    if (cb->shard.tp_rank != 0) return ES_OK;
    /* slot r holds [n][vmax], of which rank r's slice [lo, hi) is the first
     * hi - lo columns: into columns [lo, hi) of logits [n][V] */
    size_t slot = (size_t)CUDA_LOGIT_CHUNK * (size_t)vmax;
    for (int r = 0; r < tp; r++) {
        int lo, hi;
        tp_slice(cb->V, r, tp, &lo, &hi);
        CU(cudaMemcpy2DAsync(cb->logits + lo, sizeof(float) * (size_t)cb->V,
                             cb->logits_part + (size_t)r * slot, sizeof(float) * (size_t)vmax,
                             sizeof(float) * (size_t)(hi - lo), (size_t)n, cudaMemcpyDeviceToDevice,
                             cb->stream));
    }
err:
    return st;
}

enum es_status cbt_warm_up(struct cuda_backend *cb, struct es_err *err)
{
    enum es_status st = ES_OK;
    if (cb->shard.tp_size <= 1) return ES_OK;
    /* both buffers are zero: the warm-up leaves them so. NCCL connects each
     * algorithm on its first use (NCCL_RUNTIME_CONNECT): one token's
     * all-reduce (a decode step's, likely another algorithm than the
     * largest one's) too, so that neither connects after the KV cache
     * took the memory */
    st = cbt_all_reduce(cb, cb->resid, (size_t)cb->max_tokens * (size_t)cb->H, err);
    if (st != ES_OK) return st;
    st = cbt_all_reduce(cb, cb->resid, (size_t)cb->H, err);
    if (st != ES_OK) return st;
    if (cuda_last_stage(&cb->shard)) { /* the only stage with logits to gather */
        st = cbt_gather_logits(cb, CUDA_LOGIT_CHUNK, err);
        if (st != ES_OK) return st;
    }
    CU(cudaStreamSynchronize(cb->stream));
err:
    return st;
}

void cbt_free(struct cuda_backend *cb)
{
    if (!cb->nccl) return;
    ncclResult_t r = cb->nccl_failed ? ncclCommAbort(cb->nccl) : ncclCommDestroy(cb->nccl);
    if (r != ncclSuccess)
        LOG_W("cuda-tp", "rank %d: leaving the NCCL communicator: %s", cb->shard.tp_rank,
              ncclGetErrorString(r));
    cb->nccl = NULL;
}

#else /* !HAVE_NCCL: one GPU per replica only */

enum es_status cbt_start(struct cuda_backend *cb, enum es_status local, struct es_err *err)
{
    if (cb->shard.tp_size <= 1 || local != ES_OK) return local;
    return es_fail(err, ES_EUNSUPPORTED,
                   "cuda: --tp %d needs NCCL, and this build has none (install NCCL where meson "
                   "finds it: beside nvcc or in the system library path, and rebuild)",
                   cb->shard.tp_size);
}

static enum es_status no_nccl(struct cuda_backend *cb, struct es_err *err)
{
    if (cb->shard.tp_size <= 1) return ES_OK;
    return es_fail(err, ES_EUNSUPPORTED, "cuda: this build has no NCCL");
}

enum es_status cbt_all_reduce(struct cuda_backend *cb, float *buf, size_t n, struct es_err *err)
{
    (void)buf;
    (void)n;
    return no_nccl(cb, err);
}

enum es_status cbt_gather_logits(struct cuda_backend *cb, int n, struct es_err *err)
{
    (void)n;
    return no_nccl(cb, err);
}

enum es_status cbt_warm_up(struct cuda_backend *cb, struct es_err *err)
{
    return no_nccl(cb, err);
}

void cbt_free(struct cuda_backend *cb)
{
    (void)cb;
}

#endif
