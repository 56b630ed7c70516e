/*
 * output.h - turning backend row results into request outputs: generated
 * tokens and their logprobs, incremental text with stop strings, stop
 * tokens, EOS, min/max tokens, prompt logprobs, and finishing choices.
 *
 * Every function here writes the request under req->lock and never calls
 * on_update (the engine notifies once per step, outside the lock).
 */
#ifndef ES_OUTPUT_H
#define ES_OUTPUT_H

#include <stdbool.h>

#include "engine_internal.h"

struct out_ctx {
    const struct tokenizer *tok; /* NULL: no text is produced (tests) */
    int max_model_len;
};

/* Records the prompt logprob given by the row at token_index (the logprob
 * of prompt token token_index + 1) and advances er->plp_next. */
void out_prompt_logprob(struct ereq *er, int token_index, const struct row_result *r);

/* Appends a sampled token to q's choice and applies every stop rule.
 * reserved >= 0: the token already sits at that index of q->tokens (the
 * engine reserved the place when the step launched and wrote the token in
 * when the step ended; q->tokens may hold a further reservation behind
 * it); -1: it is appended to q->tokens here. Returns true when the choice
 * finished (the caller removes q). */
bool out_append_token(const struct out_ctx *oc, struct seq *q, const struct row_result *r,
                      int reserved);

/* Ends q's choice with reason (abort, error, length): the text held back
 * for stop strings is released. No-op if already finished. */
void out_finish_seq(const struct out_ctx *oc, struct seq *q, enum finish_reason reason,
                    const char *message);
/* Ends a choice that has no sequence (not forked yet). */
void out_finish_choice(struct ereq *er, int choice, enum finish_reason reason, const char *message);

/* Releases q's output state (tok_stream, text). */
void out_seq_free(struct seq *q);

#endif
