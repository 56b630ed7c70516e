/*
 * backend_cuda_sample.c - the host half of sampling on the GPU. For the
 * rows of a logits chunk with non-greedy settings it packs each row's
 * parameters (struct kern_sample_row) and its logit edits (struct
 * kern_logit_edit) into the pinned h_sample with cbsm_pack_row
 * (backend_cuda_sample_pack.c: pure C, also used by the tests), copies
 * them to d_sample with one cudaMemcpyAsync and launches kern_sample
 * (kernels/sampling.cu) on cb->stream.
 *
 * Owns nothing (the buffers belong to struct cuda_backend, allocated by
 * backend_cuda.c); never allocates except to grow h_sample / d_sample,
 * after a stream synchronisation, when a chunk's edits exceed them.
 */
#include "backend_cuda.h"
#include "log.h"

#define CBSM_INITIAL_EDITS ((size_t)CUDA_LOGIT_CHUNK * 256)

size_t cbsm_initial_cap(void)
{
    return CUDA_LOGIT_CHUNK * sizeof(struct kern_sample_row) +
           CBSM_INITIAL_EDITS * sizeof(struct kern_logit_edit);
}

static enum es_status grow_sample(struct cuda_backend *cb, size_t need, struct es_err *err)
{
    enum es_status st = ES_OK;
    size_t cap = need + need / 2;
    LOG_W("cuda", "sampler buffer grows to %zu bytes (logit edits larger than planned)", cap);
    CU(cudaStreamSynchronize(cb->stream));
    cudaFreeHost(cb->h_sample);
    cudaFree(cb->d_sample);
    cb->h_sample = NULL;
    cb->d_sample = NULL;
    cb->sample_cap = 0;
    CU(cudaMallocHost(&cb->h_sample, cap));
    CU(cudaMalloc(&cb->d_sample, cap));
    cb->sample_cap = cap;
err:
    return st;
}

enum es_status cbsm_draw(struct cuda_backend *cb, const struct batch *b, int r0, const int *idx,
                         int n, struct es_err *err)
{
    enum es_status st = ES_OK;
    if (n <= 0) return ES_OK;
    size_t rows_bytes = (size_t)n * sizeof(struct kern_sample_row);
    size_t max_edits = 0;
    for (int j = 0; j < n; j++)
        max_edits += cbsm_edit_bound(&b->rows[r0 + idx[j]]);
    if (max_edits > INT32_MAX)
        return es_fail(err, ES_EINVAL, "cuda: %zu logit edits in one chunk", max_edits);
    size_t need = rows_bytes + max_edits * sizeof(struct kern_logit_edit);
    if (need > cb->sample_cap && (st = grow_sample(cb, need, err)) != ES_OK) return st;

    struct kern_sample_row *rows = cb->h_sample;
    struct kern_logit_edit *edits = (struct kern_logit_edit *)((char *)cb->h_sample + rows_bytes);
    int32_t n_edits = 0;
    for (int j = 0; j < n; j++) {
        int k = cbsm_pack_row(&b->rows[r0 + idx[j]], cb->V, idx[j], &rows[j], edits + n_edits,
                              cb->edit_slot, cb->edit_seen);
        rows[j].edit0 = n_edits;
        n_edits += k;
    }
    size_t bytes = rows_bytes + (size_t)n_edits * sizeof(struct kern_logit_edit);
    CU(cudaMemcpyAsync(cb->d_sample, cb->h_sample, bytes, cudaMemcpyHostToDevice, cb->stream));
    const struct kern_sample_row *d_rows = cb->d_sample;
    const struct kern_logit_edit *d_edits =
        (const struct kern_logit_edit *)((const char *)cb->d_sample + rows_bytes);
    for (int j0 = 0; j0 < n; j0 += CUDA_SAMPLE_ROWS) {
        int m = n - j0 < CUDA_SAMPLE_ROWS ? n - j0 : CUDA_SAMPLE_ROWS;
        CU(kern_sample(cb->logits, cb->V, d_rows + j0, m, d_edits, cb->d_lse, cb->d_token,
                       cb->d_logprob, cb->d_sample_w, cb->stream));
    }
err:
    return st;
}
