/*
 * output.c - the output path of the engine thread: from a row result to
 * what the request shows (see output.h).
 *
 * Text: each choice's sequence keeps its full detokenized text (from the
 * incremental tok_stream) and how much of it is committed to the choice.
 * Text that could still be the start of a stop string is held back; when a
 * stop string completes, the text is cut before it (or after it with
 * include_stop_str_in_output) and the choice stops. A token that stops the
 * choice (EOS, stop_token_ids) is recorded among the tokens but not
 * rendered, unless include_stop_str_in_output. min_tokens: the backend
 * bans EOS and stop ids until min_tokens tokens exist, and stop strings
 * are looked for only once more tokens than that exist, in the text after
 * the first min_tokens tokens' (a match may start up to its length - 1
 * bytes earlier), as vLLM does: min_tokens 1 and a stop string in the
 * first token must not answer "". Owns no memory beyond the seq's text
 * state; never allocates besides growing output arrays.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "output.h"

static bool id_in(const int32_t *ids, int n, int32_t id)
{
    for (int i = 0; i < n; i++)
        if (ids[i] == id) return true;
    return false;
}

static void copy_top(struct top_logprobs *dst, const struct row_result *r, int limit)
{
    int n = r->n_top < limit ? r->n_top : limit;
    if (n < 0) n = 0;
    if (n > BACKEND_MAX_TOP_LOGPROBS) n = BACKEND_MAX_TOP_LOGPROBS;
    dst->n = n;
    memcpy(dst->ids, r->top_ids, (size_t)n * sizeof(int32_t));
    memcpy(dst->logprobs, r->top_logprobs, (size_t)n * sizeof(float));
}

void out_prompt_logprob(struct ereq *er, int token_index, const struct row_result *r)
{
    struct request *req = er->req;
    int pos = token_index + 1;
    if (pos >= (int)req->prompt.n || !req->prompt_logprobs) return;
    pthread_mutex_lock(&req->lock);
    req->prompt_logprobs[pos] = r->target_logprob;
    if (req->prompt_top) copy_top(&req->prompt_top[pos], r, req->params.prompt_logprobs);
    pthread_mutex_unlock(&req->lock);
    er->plp_next = pos >= (int)req->prompt.n - 1 ? PLP_DONE : pos;
}

/* Grows the logprob arrays of a choice to hold n entries. */
static enum es_status grow_logprobs(struct choice_output *c, const struct request_params *p,
                                    size_t n)
{
    if (p->logprobs < 0 || n <= c->logprobs_cap) return ES_OK;
    size_t cap = c->logprobs_cap ? c->logprobs_cap * 2 : 16;
    while (cap < n)
        cap *= 2;
    float *lp = realloc(c->logprobs, cap * sizeof(float));
    if (!lp) return ES_ENOMEM;
    c->logprobs = lp;
    if (p->logprobs > 0) {
        struct top_logprobs *top = realloc(c->top, cap * sizeof(*top));
        if (!top) return ES_ENOMEM;
        c->top = top;
    }
    c->logprobs_cap = cap;
    return ES_OK;
}

/* Longest suffix of text[from..len) that is a proper prefix of a stop string. */
static size_t stop_holdback(const struct request_params *p, const char *text, size_t from,
                            size_t len)
{
    size_t best = 0;
    for (int i = 0; i < p->n_stop; i++) {
        size_t sl = strlen(p->stop[i]);
        size_t kmax = sl - 1;
        if (kmax > len - from) kmax = len - from;
        for (size_t k = kmax; k > best; k--) {
            if (memcmp(text + len - k, p->stop[i], k) == 0) {
                best = k;
                break;
            }
        }
    }
    return best;
}

/* Earliest stop string occurrence at or after from that ends after
 * stop_from (the text of the min_tokens tokens): its offset, or -1. */
static long stop_find(const struct request_params *p, const char *text, size_t from,
                      size_t stop_from, size_t len, int *which)
{
    long best = -1;
    for (int i = 0; i < p->n_stop; i++) {
        size_t sl = strlen(p->stop[i]);
        size_t lo = from;
        if (sl > 0 && stop_from >= sl && stop_from - (sl - 1) > lo) lo = stop_from - (sl - 1);
        if (sl == 0 || lo >= len) continue;
        const char *hit = memmem(text + lo, len - lo, p->stop[i], sl);
        if (hit && (best < 0 || hit - text < best)) {
            best = hit - text;
            *which = i;
        }
    }
    return best;
}

/* Moves text[committed..upto) into the choice (req->lock held). */
static void commit_text(struct seq *q, struct choice_output *c, size_t upto)
{
    if (upto <= q->committed) return;
    if (sb_append(&c->text, q->text.s + q->committed, upto - q->committed) != ES_OK)
        LOG_W("output", "out of memory appending text");
    q->committed = upto;
}

/* Marks a choice finished (req->lock held). */
static void finish_locked(struct ereq *er, struct choice_output *c, enum finish_reason reason,
                          const char *message)
{
    struct request *req = er->req;
    if (c->finish != FINISH_NONE) return;
    c->finish = reason;
    if (reason == FINISH_ERROR && message && !req->error_message[0])
        snprintf(req->error_message, sizeof(req->error_message), "%s", message);
    req->n_finished++;
    er->n_live--;
    if (req->n_finished >= req->params.n) req->t_finished = req_now();
}

/* Flushes the detokenizer and commits all remaining text (req->lock held). */
static void flush_text(struct seq *q, struct choice_output *c)
{
    if (q->ts_live && tok_stream_finish(&q->ts, &q->text) != ES_OK)
        LOG_W("output", "detokenizer failed at finish");
    commit_text(q, c, q->text.len);
}

bool out_append_token(const struct out_ctx *oc, struct seq *q, const struct row_result *r,
                      int reserved)
{
    struct ereq *er = q->er;
    struct request *req = er->req;
    const struct request_params *p = &req->params;
    int32_t t = r->token;
    if (reserved < 0 && iv_push(&q->tokens, t) != ES_OK) {
        out_finish_seq(oc, q, FINISH_ERROR, "out of memory");
        return true;
    }
    int n_tokens = reserved >= 0 ? reserved + 1 : (int)q->tokens.n; /* up to t, included */
    int n_gen = n_tokens - q->n_prompt;
    bool may_stop = n_gen >= p->min_tokens;
    bool may_stop_str = n_gen > p->min_tokens;
    bool stop_tok = may_stop && (id_in(er->banned, er->n_eos, t) ||
                                 id_in(p->stop_token_ids, p->n_stop_token_ids, t));

    pthread_mutex_lock(&req->lock);
    struct choice_output *c = &req->choices[q->choice];
    if (c->finish != FINISH_NONE) {
        pthread_mutex_unlock(&req->lock);
        return true;
    }
    bool finished = false;
    if (iv_push(&c->tokens, t) != ES_OK || grow_logprobs(c, p, c->tokens.n) != ES_OK) {
        finish_locked(er, c, FINISH_ERROR, "out of memory");
        pthread_mutex_unlock(&req->lock);
        return true;
    }
    size_t idx = c->tokens.n - 1;
    c->cum_logprob += r->logprob;
    if (p->logprobs >= 0) c->logprobs[idx] = r->logprob;
    if (p->logprobs > 0) copy_top(&c->top[idx], r, p->logprobs);
    if (req->t_first_token == 0) req->t_first_token = req_now();

    if (oc->tok && (!stop_tok || p->include_stop_str_in_output)) {
        if (!q->ts_live) {
            tok_stream_init(&q->ts, oc->tok, p->skip_special_tokens);
            q->ts_live = true;
        }
        if (tok_stream_push(&q->ts, t, &q->text) != ES_OK)
            LOG_W("output", "detokenizer rejected id %d", t);
    }
    if (stop_tok) {
        c->stop_token = t;
        flush_text(q, c);
        finish_locked(er, c, FINISH_STOP, NULL);
        finished = true;
    } else if (p->n_stop > 0 && !may_stop_str && q->text.len > q->committed) {
        /* The first min_tokens tokens: never a stop, but a tail that may
         * begin one is held back. */
        q->stop_from = q->text.len;
        commit_text(q, c, q->text.len - stop_holdback(p, q->text.s, q->committed, q->text.len));
    } else if (p->n_stop > 0 && q->text.len > q->committed) {
        int which = -1;
        long at = stop_find(p, q->text.s, q->committed, q->stop_from, q->text.len, &which);
        if (at >= 0) {
            size_t end = (size_t)at + (p->include_stop_str_in_output ? strlen(p->stop[which]) : 0);
            commit_text(q, c, end);
            c->stop_string_index = which;
            finish_locked(er, c, FINISH_STOP, NULL);
            finished = true;
        } else {
            size_t hold = stop_holdback(p, q->text.s, q->committed, q->text.len);
            commit_text(q, c, q->text.len - hold);
        }
    } else {
        commit_text(q, c, q->text.len);
    }
    if (!finished && (n_gen >= p->max_tokens || n_tokens >= oc->max_model_len)) {
        flush_text(q, c);
        finish_locked(er, c, FINISH_LENGTH, NULL);
        finished = true;
    }
    pthread_mutex_unlock(&req->lock);
    return finished;
}

void out_finish_seq(const struct out_ctx *oc, struct seq *q, enum finish_reason reason,
                    const char *message)
{
    (void)oc;
    struct request *req = q->er->req;
    pthread_mutex_lock(&req->lock);
    struct choice_output *c = &req->choices[q->choice];
    if (c->finish == FINISH_NONE) {
        flush_text(q, c);
        finish_locked(q->er, c, reason, message);
    }
    pthread_mutex_unlock(&req->lock);
}

void out_finish_choice(struct ereq *er, int choice, enum finish_reason reason, const char *message)
{
    struct request *req = er->req;
    pthread_mutex_lock(&req->lock);
    finish_locked(er, &req->choices[choice], reason, message);
    pthread_mutex_unlock(&req->lock);
}

void out_seq_free(struct seq *q)
{
    if (q->ts_live) tok_stream_free(&q->ts);
    q->ts_live = false;
    sb_free(&q->text);
}
