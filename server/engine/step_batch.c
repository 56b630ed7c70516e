/*
 * step_batch.c - builds one step's flat batch from the scheduler's choice
 * (step_batch.h).
 *
 * Each scheduled sequence contributes its new tokens (their positions and
 * KV slots), its block table, one prompt-logprob row per prompt position
 * still to score, and one sampling row per choice when its last pending
 * token is computed (all n choices on the step that completes the prompt
 * of a forking sequence). Never allocates after step_batch_create.
 */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "step_batch.h"

enum es_status step_batch_create(const struct step_batch_shape *shape, struct step_batch **out,
                                 struct es_err *err)
{
    struct step_batch *sb = calloc(1, sizeof(*sb));
    if (!sb) return es_fail(err, ES_ENOMEM, "engine: out of memory for a step batch");
    size_t T = (size_t)shape->max_tokens, S = (size_t)shape->max_seqs;
    sb->token_ids = malloc(T * sizeof(int32_t));
    sb->positions = malloc(T * sizeof(int32_t));
    sb->slot_mapping = malloc(T * sizeof(int32_t));
    sb->seq_token_start = malloc((S + 1) * sizeof(int32_t));
    sb->seq_context_len = malloc(S * sizeof(int32_t));
    sb->block_tables = calloc(S * (size_t)shape->stride, sizeof(int32_t));
    sb->rows = calloc(T, sizeof(*sb->rows));
    sb->results = calloc(T, sizeof(*sb->results));
    sb->row_seq = calloc(T, sizeof(*sb->row_seq));
    sb->row_choice = malloc(T * sizeof(int32_t));
    sb->row_pos = malloc(T * sizeof(int32_t));
    sb->row_reserved = malloc(T * sizeof(int32_t));
    sb->seqs = calloc(S, sizeof(*sb->seqs));
    sb->seq_start = malloc(S * sizeof(int32_t));
    sb->seq_n_new = malloc(S * sizeof(int32_t));
    sb->seq_fork_now = calloc(S, sizeof(bool));
    if (!sb->token_ids || !sb->positions || !sb->slot_mapping || !sb->seq_token_start ||
        !sb->seq_context_len || !sb->block_tables || !sb->rows || !sb->results || !sb->row_seq ||
        !sb->row_choice || !sb->row_pos || !sb->row_reserved || !sb->seqs || !sb->seq_start ||
        !sb->seq_n_new || !sb->seq_fork_now) {
        step_batch_free(sb);
        return es_fail(err, ES_ENOMEM, "engine: out of memory for batch buffers");
    }
    sb->result.rows = sb->results;
    *out = sb;
    return ES_OK;
}

void step_batch_free(struct step_batch *sb)
{
    if (!sb) return;
    free(sb->token_ids);
    free(sb->positions);
    free(sb->slot_mapping);
    free(sb->seq_token_start);
    free(sb->seq_context_len);
    free(sb->block_tables);
    free(sb->rows);
    free(sb->results);
    free(sb->row_seq);
    free(sb->row_choice);
    free(sb->row_pos);
    free(sb->row_reserved);
    free(sb->seqs);
    free(sb->seq_start);
    free(sb->seq_n_new);
    free(sb->seq_fork_now);
    free(sb);
}

static void add_row(struct step_batch *sb, int *n_rows, struct seq *q, int choice, int pos,
                    struct logit_row r)
{
    sb->rows[*n_rows] = r;
    sb->row_pos[*n_rows] = pos;
    sb->row_seq[*n_rows] = q;
    sb->row_choice[*n_rows] = choice;
    sb->row_reserved[*n_rows] = -1;
    (*n_rows)++;
}

/* Prompt logprob rows of q's chunk [start, end): the logits at token i
 * score prompt token i + 1. */
static void add_prompt_rows(struct step_batch *sb, const struct step_batch_shape *shape,
                            int *n_rows, struct seq *q, int nt, int start, int end)
{
    struct ereq *er = q->er;
    /* Ask for enough top entries that the rows can be cached. */
    int plp_top = er->req->params.prompt_logprobs;
    if (shape->cache_prompt_rows && plp_top < KVC_PLP_TOP) plp_top = KVC_PLP_TOP;
    int from = start > er->plp_next ? start : er->plp_next;
    int to = end < q->n_prompt - 1 ? end : q->n_prompt - 1;
    for (int i = from; i < to; i++) {
        struct logit_row r = {.token_index = nt + i - start,
                              .sample = false,
                              .target_id = q->tokens.v[i + 1],
                              .n_top = plp_top,
                              .sp = &er->sp[0],
                              .rng_counter = 0,
                              .history = q->tokens.v,
                              .n_history_prompt = q->n_prompt,
                              .n_history = i + 1};
        add_row(sb, n_rows, q, -1, i, r);
    }
}

/* Sampling rows of q's last token: one per choice (all n when forking). */
static void add_sample_rows(struct step_batch *sb, int *n_rows, struct seq *q, int nt, int start,
                            int end)
{
    struct ereq *er = q->er;
    const struct request_params *p = &er->req->params;
    int n_gen = seq_n_generated(q);
    bool banned = n_gen < p->min_tokens && er->n_banned > 0;
    int c0 = q->fork_now ? 0 : q->choice;
    int c1 = q->fork_now ? p->n : q->choice + 1;
    for (int c = c0; c < c1; c++) {
        struct logit_row r = {.token_index = nt + end - 1 - start,
                              .sample = true,
                              .target_id = -1,
                              .n_top = p->logprobs,
                              .sp = &er->sp[c],
                              .rng_counter = (uint64_t)n_gen,
                              .history = q->tokens.v,
                              .n_history_prompt = q->n_prompt,
                              .n_history = (int)q->tokens.n,
                              .banned_ids = banned ? er->banned : NULL,
                              .n_banned = banned ? er->n_banned : 0};
        add_row(sb, n_rows, q, c, end - 1, r);
    }
}

void step_batch_build(struct step_batch *sb, const struct step_batch_shape *shape,
                      const struct sched_out *so)
{
    int bs = shape->block_size, nt = 0, n_rows = 0;
    bool decode_only = true;
    sb->n_seqs = so->n_seqs;
    sb->has_fork = false;
    for (int s = 0; s < so->n_seqs; s++) {
        struct seq *q = so->seqs[s];
        int start = q->n_computed, end = q->n_computed + q->n_new;
        sb->seqs[s] = q;
        sb->seq_start[s] = start;
        sb->seq_n_new[s] = q->n_new;
        sb->seq_fork_now[s] = q->fork_now;
        sb->has_fork |= q->fork_now;
        sb->seq_token_start[s] = nt;
        if (q->n_new != 1) decode_only = false;
        for (int t = start; t < end; t++) {
            sb->token_ids[nt + t - start] = q->tokens.v[t];
            sb->positions[nt + t - start] = t;
            sb->slot_mapping[nt + t - start] = kvc_slot(&q->kv, bs, t);
        }
        sb->seq_context_len[s] = end;
        int32_t *bt = sb->block_tables + (size_t)s * shape->stride;
        /* Entries past n_blocks are stale: no token can address them. */
        memcpy(bt, q->kv.table, (size_t)q->kv.n_blocks * sizeof(int32_t));
        if (q->er->plp_next != PLP_DONE) add_prompt_rows(sb, shape, &n_rows, q, nt, start, end);
        if (end == (int)q->tokens.n && q->er->req->params.max_tokens > 0)
            add_sample_rows(sb, &n_rows, q, nt, start, end);
        nt += q->n_new;
    }
    sb->seq_token_start[so->n_seqs] = nt;
    assert(nt == so->n_tokens);
    assert(n_rows <= shape->max_tokens);
    struct batch *b = &sb->batch;
    memset(b, 0, sizeof(*b));
    b->n_tokens = nt;
    b->token_ids = sb->token_ids;
    b->positions = sb->positions;
    b->slot_mapping = sb->slot_mapping;
    b->n_seqs = so->n_seqs;
    b->seq_token_start = sb->seq_token_start;
    b->seq_context_len = sb->seq_context_len;
    b->block_tables = sb->block_tables;
    b->block_table_stride = shape->stride;
    b->n_rows = n_rows;
    b->rows = sb->rows;
    b->decode_only = decode_only;
}

void step_batch_refresh(struct step_batch *sb)
{
    for (int s = 0; s < sb->n_seqs; s++) {
        const struct seq *q = sb->seqs[s];
        memcpy(sb->token_ids + sb->seq_token_start[s], q->tokens.v + sb->seq_start[s],
               (size_t)sb->seq_n_new[s] * sizeof(int32_t));
    }
    for (int i = 0; i < sb->batch.n_rows; i++)
        sb->rows[i].history = sb->row_seq[i]->tokens.v;
}
