/*
 * engine_internal.h - the engine's own per-request and per-sequence state,
 * shared by engine.c, sched.c and output.c (never by the API).
 *
 * A request (request.h) becomes one struct ereq plus one struct seq per
 * choice being computed. Before the prompt is done, a request with n > 1
 * has a single seq (choice 0) with fork_pending = n - 1; when its prompt's
 * last chunk has run, the other choices are forked off it, sharing the
 * prompt's KV blocks. The request's outputs are only written by output.c
 * under req->lock.
 */
#ifndef ES_ENGINE_INTERNAL_H
#define ES_ENGINE_INTERNAL_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>

#include "kvcache.h"
#include "request.h"
#include "strbuf.h"
#include "tokenizer.h"

/* plp_next value when no prompt logprob rows are (still) needed. */
#define PLP_DONE INT_MAX

/* The place of a token in seq.tokens while the step that samples it runs. */
#define ENGINE_TOKEN_PENDING (-1)

struct ereq {
    struct request *req;        /* holds one reference for the engine */
    uint64_t arrival;           /* FCFS order of submission */
    struct sampling_params *sp; /* [n] per choice: request params with seed + choice */
    int32_t *banned; /* [n_banned] EOS ids then stop_token_ids (banned before min_tokens) */
    int n_banned;
    int n_eos;             /* leading entries of banned that are EOS ids (empty with ignore_eos) */
    int n_live;            /* choices not finished yet */
    int plp_next;          /* next token index whose logits give a prompt logprob; PLP_DONE */
    uint64_t touched_step; /* last step that changed outputs (notification dedupe) */
    bool scheduled_once;
    /* Steps launched and not yet processed that hold one of its sequences:
     * the request is freed only at 0 (the backend reads sp and banned, the
     * rows point into the sequences' tokens). */
    int n_inflight;
    uint64_t counted_launch, counted_done; /* last step counted in n_inflight, each way */
    struct seq *seqs;                   /* [n] one per choice; seqs[0] runs the prompt */
    struct ereq *prev_live, *next_live; /* engine's list of live requests */
};

/* SEQ_DONE (zero): in no scheduler list (finished, or a choice not forked yet). */
enum seq_state { SEQ_DONE = 0, SEQ_WAITING, SEQ_RUNNING };

struct seq {
    struct ereq *er;
    int choice; /* index into req->choices */
    enum seq_state state;
    struct i32vec tokens; /* prompt then generated ids; the last may be a reservation
                             for the token a step in flight samples (ENGINE_TOKEN_PENDING) */
    int n_prompt;
    int n_computed;   /* leading tokens whose KV is in the cache, or being written by
                         a step in flight */
    int fork_pending; /* choices to fork off after the prompt (n - 1 on choice 0, else 0) */
    struct kvc_seq kv;
    struct seq *prev, *next; /* in the scheduler's waiting or running list */

    /* Set by the scheduler for the step it last chose (the engine copies
     * them into that step's step_batch before the next schedule). */
    int n_new;     /* tokens this step, 0 when not scheduled */
    bool fork_now; /* this step completes the prompt of a seq with fork_pending */
    bool admitted; /* left the waiting queue for this step (prefix-cache hits known) */

    /* Output state (output.c). */
    struct tok_stream ts;
    bool ts_live;
    struct strbuf text; /* everything detokenized so far */
    size_t committed;   /* bytes of text already in choice->text */
    size_t stop_from;   /* bytes of text of the first min_tokens tokens: a stop
                           string may start at most its length - 1 before */
};

static inline int seq_n_generated(const struct seq *s)
{
    return (int)s->tokens.n - s->n_prompt;
}

/* True for the step that computes the last prompt token (when generation
 * starts and, for n > 1, the fork happens). */
static inline bool seq_completes(const struct seq *s, int n_new)
{
    return s->n_computed + n_new == (int)s->tokens.n;
}

#endif
