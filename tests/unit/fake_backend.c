/*
 * fake_backend.c - see fake_backend.h. Test code only.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fake_backend.h"
#include "sampling.h"

struct fake {
    struct model_config cfg;
    int num_blocks, bs;
    int32_t *kv_tok; /* [num_blocks * bs] token id at each slot */
    int32_t *kv_pos; /* [num_blocks * bs] its position, -1 = never written */
    float *logits;   /* [FAKE_VOCAB] */
    int32_t *ctx;    /* [max context] */
    struct smp_scratch *smp;
    int fail_at;
    int delay_us;        /* each forward takes at least this long */
    atomic_long hold_at; /* this step waits for fake_backend_release (-1: none) */
    atomic_bool released;
    atomic_long forwards_done; /* forwards that ran to their end */
    atomic_int calls;          /* backend calls running now: more than one is a bug */
    struct fake_stats st;
};

static uint64_t mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

void fake_logits(const int32_t *ctx, int n, float *logits)
{
    uint64_t h = 1469598103934665603ULL;
    for (int i = 0; i < n; i++)
        h = mix(h ^ (uint64_t)(uint32_t)ctx[i]) + (uint64_t)i;
    for (int v = 0; v < FAKE_ACTIVE; v++)
        logits[v] =
            (float)(mix(h + (uint64_t)v * 0x9e3779b97f4a7c15ULL) >> 40) / (float)(1 << 24) * 8.0f;
    for (int v = FAKE_ACTIVE; v < FAKE_VOCAB; v++)
        logits[v] = -20.0f;
    /* EOS is likely in one context of eight. */
    logits[FAKE_EOS] = (h & 7) == 0 ? 9.0f : -20.0f;
}

static enum es_status fake_forward(struct backend *be, const struct batch *b,
                                   struct batch_result *res, struct es_err *err)
{
    struct fake *f = be->impl;
    if (f->fail_at >= 0 && f->st.steps == f->fail_at)
        return es_fail(err, ES_EDEVICE, "fake device fell over at step %ld", f->st.steps);
    bool bad = atomic_fetch_add(&f->calls, 1) != 0;
    if (f->delay_us > 0) usleep((useconds_t)f->delay_us);
    if (atomic_load(&f->hold_at) == f->st.steps)
        while (!atomic_load(&f->released))
            usleep(1000);
    f->st.steps++;
    int bs = f->bs;
    bad |= b->seq_token_start[0] != 0 || b->seq_token_start[b->n_seqs] != b->n_tokens;
    for (int t = 0; t < b->n_tokens; t++)
        if (b->token_ids[t] < 0 || b->token_ids[t] >= FAKE_VOCAB) bad = true;
    for (int s = 0; s < b->n_seqs; s++) {
        const int32_t *bt = b->block_tables + (size_t)s * b->block_table_stride;
        int t0 = b->seq_token_start[s], t1 = b->seq_token_start[s + 1];
        if (t1 <= t0 || b->positions[t1 - 1] != b->seq_context_len[s] - 1) bad = true;
        if (b->decode_only && t1 - t0 != 1) bad = true;
        for (int t = t0; t < t1; t++) {
            int p = b->positions[t];
            if (t > t0 && p != b->positions[t - 1] + 1) bad = true;
            int32_t slot = bt[p / bs] * bs + p % bs;
            if (slot != b->slot_mapping[t] || slot < 0 || slot >= f->num_blocks * bs) {
                bad = true;
                continue;
            }
            f->kv_tok[slot] = b->token_ids[t];
            f->kv_pos[slot] = p;
        }
    }
    for (int r = 0; r < b->n_rows; r++) {
        const struct logit_row *row = &b->rows[r];
        int s = 0;
        while (s + 1 < b->n_seqs && b->seq_token_start[s + 1] <= row->token_index)
            s++;
        const int32_t *bt = b->block_tables + (size_t)s * b->block_table_stride;
        int pos = b->positions[row->token_index];
        for (int h = 0; h < row->n_history; h++)
            if (row->history[h] < 0 || row->history[h] >= FAKE_VOCAB) bad = true;
        for (int p = 0; p <= pos; p++) {
            int32_t slot = bt[p / bs] * bs + p % bs;
            if (f->kv_pos[slot] != p) bad = true;
            f->ctx[p] = f->kv_tok[slot];
        }
        fake_logits(f->ctx, pos + 1, f->logits);
        smp_row(f->smp, f->logits, row, &res->rows[r]);
    }
    f->st.rows += b->n_rows;
    if (b->n_rows > f->st.max_rows) f->st.max_rows = b->n_rows;
    if (bad) f->st.bad_batches++;
    atomic_fetch_sub(&f->calls, 1);
    atomic_fetch_add(&f->forwards_done, 1);
    return ES_OK;
}

static enum es_status fake_copy(struct backend *be, const int32_t *src, const int32_t *dst, int n,
                                struct es_err *err)
{
    struct fake *f = be->impl;
    if (atomic_fetch_add(&f->calls, 1) != 0) f->st.bad_batches++;
    for (int i = 0; i < n; i++) {
        memcpy(f->kv_tok + (size_t)dst[i] * f->bs, f->kv_tok + (size_t)src[i] * f->bs,
               (size_t)f->bs * sizeof(int32_t));
        memcpy(f->kv_pos + (size_t)dst[i] * f->bs, f->kv_pos + (size_t)src[i] * f->bs,
               (size_t)f->bs * sizeof(int32_t));
    }
    f->st.copies += n;
    atomic_fetch_sub(&f->calls, 1);
    return ES_OK;
}

static void fake_destroy(struct backend *be)
{
    struct fake *f = be->impl;
    smp_scratch_destroy(f->smp);
    free(f->kv_tok);
    free(f->kv_pos);
    free(f->logits);
    free(f->ctx);
    free(f);
    free(be);
}

static const struct backend_ops fake_ops = {
    .name = "fake", .forward = fake_forward, .copy_blocks = fake_copy, .destroy = fake_destroy};

struct backend *fake_backend_create(int num_kv_blocks, int fail_at_step)
{
    struct backend *be = calloc(1, sizeof(*be));
    struct fake *f = calloc(1, sizeof(*f));
    f->bs = 16;
    f->num_blocks = num_kv_blocks;
    f->fail_at = fail_at_step;
    atomic_init(&f->hold_at, -1);
    atomic_init(&f->released, false);
    atomic_init(&f->forwards_done, 0);
    f->cfg.vocab_size = FAKE_VOCAB;
    f->cfg.max_position_embeddings = 4096;
    f->cfg.eos_token_ids[0] = FAKE_EOS2;
    f->cfg.eos_token_ids[1] = FAKE_EOS;
    f->cfg.n_eos_token_ids = 2;
    f->kv_tok = calloc((size_t)num_kv_blocks * 16, sizeof(int32_t));
    f->kv_pos = malloc((size_t)num_kv_blocks * 16 * sizeof(int32_t));
    for (int i = 0; i < num_kv_blocks * 16; i++)
        f->kv_pos[i] = -1;
    f->logits = malloc(FAKE_VOCAB * sizeof(float));
    f->ctx = malloc(8192 * sizeof(int32_t));
    struct es_err err = {{0}};
    if (smp_scratch_create(FAKE_VOCAB, &f->smp, &err) != ES_OK) {
        fprintf(stderr, "fake backend: %s\n", err.msg);
        abort();
    }
    be->ops = &fake_ops;
    be->impl = f;
    be->cfg = &f->cfg;
    be->block_size = 16;
    be->num_kv_blocks = num_kv_blocks;
    return be;
}

void fake_backend_set_delay(struct backend *be, int delay_us)
{
    ((struct fake *)be->impl)->delay_us = delay_us;
}

void fake_backend_hold(struct backend *be, long step)
{
    atomic_store(&((struct fake *)be->impl)->hold_at, step);
}

void fake_backend_release(struct backend *be)
{
    atomic_store(&((struct fake *)be->impl)->released, true);
}

long fake_backend_forwards_done(struct backend *be)
{
    return atomic_load(&((struct fake *)be->impl)->forwards_done);
}

struct fake_stats *fake_backend_stats(struct backend *be)
{
    return &((struct fake *)be->impl)->st;
}
