/*
 * step_batch.h - one engine step as the backend sees it, plus the schedule
 * it came from, in buffers sized once at engine creation.
 *
 * The engine keeps two: while the backend runs one, it builds the next in
 * the other. A step_batch therefore records everything about its step that
 * the scheduler will overwrite meanwhile (which sequences, from which
 * position, how many tokens, whether a fork follows) and, per logit row,
 * whose row it is and where in that sequence's tokens its sampled token
 * goes. Owns only its arrays; the sequences it points to belong to the
 * engine.
 */
#ifndef ES_STEP_BATCH_H
#define ES_STEP_BATCH_H

#include <stdbool.h>
#include <stdint.h>

#include "backend.h"
#include "engine_internal.h"
#include "scheduler.h"

struct step_batch_shape {
    int max_tokens;          /* tokens (and logit rows) per step at most */
    int max_seqs;            /* sequences per step at most */
    int stride;              /* block-table entries per sequence */
    int block_size;          /* tokens per KV block */
    bool cache_prompt_rows;  /* prefix caching: ask prompt rows for KVC_PLP_TOP entries */
};

struct step_batch {
    struct batch batch;          /* points into the arrays below */
    struct batch_result result;  /* rows = results */
    uint64_t number;             /* 1-based forward count of the replica */

    int32_t *token_ids;          /* [max_tokens] */
    int32_t *positions;          /* [max_tokens] */
    int32_t *slot_mapping;       /* [max_tokens] */
    int32_t *seq_token_start;    /* [max_seqs + 1] */
    int32_t *seq_context_len;    /* [max_seqs] */
    int32_t *block_tables;       /* [max_seqs][stride] */
    struct logit_row *rows;      /* [max_tokens] */
    struct row_result *results;  /* [max_tokens] */

    /* Per row: the sequence whose tokens feed it, the choice it samples
     * for (-1: a prompt-logprob row), the position of the row's token,
     * and where the sampled token was reserved in the choice's tokens
     * at launch (-1: appended when the result is processed). */
    struct seq **row_seq;        /* [max_tokens] */
    int32_t *row_choice;         /* [max_tokens] */
    int32_t *row_pos;            /* [max_tokens] */
    int32_t *row_reserved;       /* [max_tokens] */

    /* The schedule, per sequence of the step. */
    int n_seqs;
    struct seq **seqs;           /* [max_seqs] */
    int32_t *seq_start;          /* [max_seqs] first position computed */
    int32_t *seq_n_new;          /* [max_seqs] tokens computed */
    bool *seq_fork_now;          /* [max_seqs] the other choices fork off after the step */
    bool has_fork;               /* any seq_fork_now */
};

enum es_status step_batch_create(const struct step_batch_shape *shape, struct step_batch **out,
                                 struct es_err *err);
void step_batch_free(struct step_batch *sb);

/* Fills sb from the scheduler's choice (token ids as the sequences hold
 * them now; step_batch_refresh rereads them at launch). */
void step_batch_build(struct step_batch *sb, const struct step_batch_shape *shape,
                      const struct sched_out *so);

/* Rereads every token id and history pointer from the sequences: a token
 * reserved when the previous step launched is known only once that step
 * is done, and reserving may have moved a sequence's token array. */
void step_batch_refresh(struct step_batch *sb);

#endif
