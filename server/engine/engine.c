/*
 * engine.c - one replica's step loop: one engine thread drives a scheduler,
 * a KV block manager and a backend.
 *
 * Owns: the inbox (filled by HTTP threads under e->mu), the engine-side
 * state of every live request (struct ereq / struct seq), the flat batch
 * buffers (allocated once at create; the step path only grows rare
 * bookkeeping arrays), and the stats. Each step: drain the inbox, finish
 * aborted requests, schedule, build the batch, run backend->forward, hand
 * the row results to output.c, fork n > 1 choices when their prompt is
 * done, notify every touched request (outside req->lock) and drop the
 * finished ones. Never blocks on HTTP: the only lock shared with HTTP
 * threads besides req->lock is e->mu, held for O(1) work.
 */
#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "engine_internal.h"
#include "fault.h"
#include "kvcache.h"
#include "log.h"
#include "output.h"
#include "scheduler.h"

struct ereq_vec {
    struct ereq **v;
    int n, cap;
};

struct engine {
    struct backend *be;
    const struct tokenizer *tok;
    struct engine_opts opts;
    struct kvcache *kv;
    struct sched *sched;
    struct out_ctx oc;
    int block_size;
    int stride; /* block table entries per sequence */

    pthread_t thread;
    bool thread_started;
    pthread_mutex_t mu; /* guards the fields down to fail_msg */
    pthread_cond_t cv;
    struct request **inbox, **inbox_spare; /* [inbox_cap] */
    int n_inbox, inbox_cap;
    bool stopping, drain;
    char fail_msg[256]; /* why healthy turned false: written once, under mu, before it */
    atomic_bool healthy;
    atomic_int n_queued; /* submitted, not yet scheduled once */

    /* Engine-thread state. */
    uint64_t next_arrival;
    uint64_t step;
    struct ereq *live;               /* list of live requests */
    struct ereq_vec touched, doomed; /* notify list; requests being aborted */
    struct fault_plan fault;         /* test-only injected failure (fault.h) */

    /* Batch buffers, sized at create. */
    int max_tokens, max_seqs;
    int32_t *token_ids;           /* [max_tokens] */
    int32_t *positions;           /* [max_tokens] */
    int32_t *slot_mapping;        /* [max_tokens] */
    int32_t *seq_token_start;     /* [max_seqs + 1] */
    int32_t *seq_context_len;     /* [max_seqs] */
    int32_t *block_tables;        /* [max_seqs][stride] */
    struct logit_row *rows;       /* [max_tokens] */
    struct row_result *results;   /* [max_tokens] */
    struct seq **row_seq;         /* [max_tokens] sequence that owns each row */
    int32_t *row_choice;          /* [max_tokens] choice of a sample row; -1 for prompt rows */
    int32_t *row_pos;             /* [max_tokens] position in its sequence of the row's token */
    int32_t *copy_src, *copy_dst; /* [max_seqs] fork copies of one step */

    pthread_mutex_t stats_mu;
    struct engine_stats stats;
};

void engine_opts_defaults(struct engine_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->max_num_batched_tokens = 2048;
    o->max_num_seqs = 256;
    o->max_model_len = 0; /* 0: the model's max_position_embeddings */
    o->max_waiting = 4096;
    o->enable_prefix_caching = true;
}

static enum es_status ev_push(struct ereq_vec *v, struct ereq *er)
{
    if (v->n == v->cap) {
        int cap = v->cap ? v->cap * 2 : 64;
        struct ereq **nv = realloc(v->v, (size_t)cap * sizeof(*nv));
        if (!nv) return ES_ENOMEM;
        v->v = nv;
        v->cap = cap;
    }
    v->v[v->n++] = er;
    return ES_OK;
}

/* ---- request state ---- */

static void live_unlink(struct engine *e, struct ereq *er)
{
    if (er->prev_live)
        er->prev_live->next_live = er->next_live;
    else
        e->live = er->next_live;
    if (er->next_live) er->next_live->prev_live = er->prev_live;
    er->prev_live = er->next_live = NULL;
}

static void ereq_free(struct engine *e, struct ereq *er)
{
    if (er->seqs) {
        for (int i = 0; i < er->req->params.n; i++) {
            struct seq *q = &er->seqs[i];
            if (q->state != SEQ_DONE) sched_remove(e->sched, q);
            kvc_seq_destroy(e->kv, &q->kv);
            iv_free(&q->tokens);
            out_seq_free(q);
        }
    }
    free(er->seqs);
    free(er->sp);
    free(er->banned);
    req_release(er->req);
    free(er);
}

static bool has_id(const int32_t *ids, int n, int32_t id)
{
    for (int i = 0; i < n; i++)
        if (ids[i] == id) return true;
    return false;
}

/* Builds the engine state of a request taken from the inbox (which hands
 * over its reference). */
static enum es_status ereq_create(struct engine *e, struct request *req, struct ereq **out)
{
    const struct request_params *p = &req->params;
    int n = p->n;
    struct ereq *er = calloc(1, sizeof(*er));
    if (!er) return ES_ENOMEM;
    er->req = req;
    er->arrival = e->next_arrival++;
    er->n_live = n;
    er->plp_next = p->prompt_logprobs >= 0 && req->prompt.n >= 2 ? 0 : PLP_DONE;
    er->sp = calloc((size_t)n, sizeof(*er->sp));
    er->seqs = calloc((size_t)n, sizeof(*er->seqs));
    int max_banned = MC_MAX_EOS + 1 + p->n_stop_token_ids;
    er->banned = calloc((size_t)max_banned, sizeof(int32_t));
    if (!er->sp || !er->seqs || !er->banned) goto err;
    for (int i = 0; i < n; i++) {
        er->sp[i] = p->sampling;
        er->sp[i].seed = p->sampling.seed + (uint64_t)i;
    }
    if (!p->ignore_eos) {
        int32_t tok_eos = e->tok ? tok_eos_id(e->tok) : -1;
        if (tok_eos >= 0) er->banned[er->n_banned++] = tok_eos;
        const struct model_config *cfg = e->be->cfg;
        for (int i = 0; cfg && i < cfg->n_eos_token_ids; i++)
            if (!has_id(er->banned, er->n_banned, cfg->eos_token_ids[i]))
                er->banned[er->n_banned++] = cfg->eos_token_ids[i];
    }
    er->n_eos = er->n_banned;
    for (int i = 0; i < p->n_stop_token_ids; i++)
        if (!has_id(er->banned, er->n_banned, p->stop_token_ids[i]))
            er->banned[er->n_banned++] = p->stop_token_ids[i];
    for (int i = 0; i < n; i++) {
        struct seq *q = &er->seqs[i];
        q->er = er;
        q->choice = i;
        q->state = SEQ_DONE; /* not in the scheduler until added or forked */
        q->n_prompt = (int)req->prompt.n;
        if (kvc_seq_init(e->kv, &q->kv) != ES_OK) goto err;
    }
    struct seq *q0 = &er->seqs[0];
    if (iv_append(&q0->tokens, req->prompt.v, req->prompt.n) != ES_OK) goto err;
    q0->fork_pending = p->max_tokens > 0 ? n - 1 : 0;
    *out = er;
    return ES_OK;
err:
    req_retain(req); /* ereq_free drops one; the caller still owns its reference */
    ereq_free(e, er);
    return ES_ENOMEM;
}

static void touch(struct engine *e, struct ereq *er)
{
    if (er->touched_step == e->step + 1) return;
    er->touched_step = e->step + 1;
    if (ev_push(&e->touched, er) != ES_OK) LOG_W("engine", "out of memory (notify list)");
}

/* Ends every unfinished choice of er with reason and takes its sequences
 * out of the scheduler. */
static void ereq_finish_all(struct engine *e, struct ereq *er, enum finish_reason reason,
                            const char *msg)
{
    for (int i = 0; i < er->req->params.n; i++) {
        struct seq *q = &er->seqs[i];
        if (q->state != SEQ_DONE) {
            out_finish_seq(&e->oc, q, reason, msg);
            sched_remove(e->sched, q);
        } else {
            out_finish_choice(er, i, reason, msg);
        }
    }
    touch(e, er);
}

/* Calls on_update for the touched requests, then frees the finished ones. */
static void notify_and_reap(struct engine *e)
{
    for (int i = 0; i < e->touched.n; i++) {
        struct request *req = e->touched.v[i]->req;
        e->touched.v[i]->touched_step = 0;
        if (req->on_update) req->on_update(req, req->on_update_ctx);
    }
    for (int i = 0; i < e->touched.n; i++) {
        struct ereq *er = e->touched.v[i];
        if (er->n_live > 0) continue;
        if (!er->scheduled_once) atomic_fetch_sub(&e->n_queued, 1);
        live_unlink(e, er);
        ereq_free(e, er);
    }
    e->touched.n = 0;
}

/* ---- submission ---- */

enum es_status engine_submit(struct engine *e, struct request *req, struct es_err *err)
{
    const struct request_params *p = &req->params;
    int n_prompt = (int)req->prompt.n;
    int max_len = e->opts.max_model_len;
    if (n_prompt < 1) return es_fail(err, ES_EINVAL, "the prompt is empty");
    if (p->n < 1 || p->n > REQ_MAX_CHOICES || p->n > e->opts.max_num_seqs ||
        p->n > e->opts.max_num_batched_tokens)
        return es_fail(err, ES_EINVAL, "n = %d is out of range (1..%d on this server)", p->n,
                       e->opts.max_num_seqs < REQ_MAX_CHOICES ? e->opts.max_num_seqs
                                                              : REQ_MAX_CHOICES);
    if (p->max_tokens < 0) return es_fail(err, ES_EINVAL, "max_tokens must be >= 0");
    if ((long)n_prompt + p->max_tokens > max_len)
        return es_fail(err, ES_EINVAL,
                       "This model's maximum context length is %d tokens. However, you "
                       "requested %ld tokens (%d in the prompt, %d for the completion). Please "
                       "reduce the length of the prompt or of the completion.",
                       max_len, (long)n_prompt + p->max_tokens, n_prompt, p->max_tokens);
    int vocab = e->be->cfg ? e->be->cfg->vocab_size : 0;
    for (int i = 0; vocab > 0 && i < n_prompt; i++)
        if (req->prompt.v[i] < 0 || req->prompt.v[i] >= vocab)
            return es_fail(err, ES_EINVAL, "prompt token id %d is outside the vocabulary (0..%d)",
                           req->prompt.v[i], vocab - 1);
    /* The KV of every token but the last sampled one must fit at once, and
     * a fork needs one copy block per extra choice. */
    int kv_tokens = n_prompt + (p->max_tokens > 0 ? p->max_tokens - 1 : 0);
    int need = kvc_blocks_for(e->kv, kv_tokens);
    int need_fork = kvc_blocks_for(e->kv, n_prompt) + (n_prompt % e->block_size ? p->n - 1 : 0);
    if (need > kvc_num_blocks(e->kv) || (p->max_tokens > 0 && need_fork > kvc_num_blocks(e->kv)))
        return es_fail(err, ES_EINVAL,
                       "the request needs %d tokens of KV cache (n = %d) but this server holds "
                       "%d; reduce the prompt, max_tokens or n",
                       kv_tokens, p->n, kvc_num_blocks(e->kv) * e->block_size);
    if (!atomic_load(&e->healthy))
        return es_fail(err, ES_EDEVICE, "the engine has failed: %s", e->fail_msg);

    pthread_mutex_lock(&e->mu);
    enum es_status st = ES_OK;
    if (e->stopping) {
        st = es_fail(err, ES_EFULL, "the server is shutting down");
    } else if (atomic_load(&e->n_queued) >= e->opts.max_waiting) {
        st = es_fail(err, ES_EFULL, "too many requests waiting (%d)", e->opts.max_waiting);
    } else if (e->n_inbox == e->inbox_cap) {
        int cap = e->inbox_cap * 2;
        struct request **a = realloc(e->inbox, (size_t)cap * sizeof(*a));
        struct request **b = a ? realloc(e->inbox_spare, (size_t)cap * sizeof(*b)) : NULL;
        if (a) e->inbox = a;
        if (b) e->inbox_spare = b;
        if (!a || !b)
            st = es_fail(err, ES_ENOMEM, "out of memory queuing the request");
        else
            e->inbox_cap = cap;
    }
    if (st == ES_OK) {
        req_retain(req);
        e->inbox[e->n_inbox++] = req;
        atomic_fetch_add(&e->n_queued, 1);
        pthread_cond_signal(&e->cv);
    }
    pthread_mutex_unlock(&e->mu);
    return st;
}

/* ---- the step ---- */

/* Moves the inbox into the scheduler. */
static void admit_inbox(struct engine *e, struct request **reqs, int n)
{
    for (int i = 0; i < n; i++) {
        struct ereq *er = NULL;
        if (ereq_create(e, reqs[i], &er) != ES_OK) {
            struct request *req = reqs[i];
            atomic_fetch_sub(&e->n_queued, 1);
            pthread_mutex_lock(&req->lock);
            snprintf(req->error_message, sizeof(req->error_message), "out of memory");
            for (int c = 0; c < req->params.n; c++)
                if (req->choices[c].finish == FINISH_NONE) {
                    req->choices[c].finish = FINISH_ERROR;
                    req->n_finished++;
                }
            req->t_finished = req_now();
            pthread_mutex_unlock(&req->lock);
            if (req->on_update) req->on_update(req, req->on_update_ctx);
            req_release(req);
            continue;
        }
        er->next_live = e->live;
        if (e->live) e->live->prev_live = er;
        e->live = er;
        sched_add(e->sched, &er->seqs[0]);
    }
}

/* Finishes aborted requests (all of them when abort_all). */
static void handle_aborts(struct engine *e, bool abort_all, enum finish_reason reason,
                          const char *msg)
{
    e->doomed.n = 0;
    for (struct ereq *er = e->live; er; er = er->next_live)
        if (abort_all || atomic_load(&er->req->aborted))
            if (ev_push(&e->doomed, er) != ES_OK) break;
    for (int i = 0; i < e->doomed.n; i++)
        ereq_finish_all(e, e->doomed.v[i], reason, msg);
    e->doomed.n = 0;
}

static void add_row(struct engine *e, int *n_rows, struct seq *q, int choice, int pos,
                    struct logit_row r)
{
    e->rows[*n_rows] = r;
    e->row_pos[*n_rows] = pos;
    e->row_seq[*n_rows] = q;
    e->row_choice[*n_rows] = choice;
    (*n_rows)++;
}

/* Fills the batch buffers from the scheduler's choice. */
static void build_batch(struct engine *e, const struct sched_out *so, struct batch *b)
{
    int bs = e->block_size, nt = 0, n_rows = 0;
    bool decode_only = true;
    for (int s = 0; s < so->n_seqs; s++) {
        struct seq *q = so->seqs[s];
        struct ereq *er = q->er;
        const struct request_params *p = &er->req->params;
        e->seq_token_start[s] = nt;
        int start = q->n_computed, end = q->n_computed + q->n_new;
        if (q->n_new != 1) decode_only = false;
        for (int t = start; t < end; t++) {
            e->token_ids[nt + t - start] = q->tokens.v[t];
            e->positions[nt + t - start] = t;
            e->slot_mapping[nt + t - start] = kvc_slot(&q->kv, bs, t);
        }
        e->seq_context_len[s] = end;
        int32_t *bt = e->block_tables + (size_t)s * e->stride;
        /* Entries past n_blocks are stale: no token can address them. */
        memcpy(bt, q->kv.table, (size_t)q->kv.n_blocks * sizeof(int32_t));

        /* Prompt logprob rows: the logits at token i score prompt token i + 1. */
        if (er->plp_next != PLP_DONE) {
            /* Ask for enough top entries that the rows can be cached. */
            int plp_top = p->prompt_logprobs;
            if (e->opts.enable_prefix_caching && plp_top < KVC_PLP_TOP) plp_top = KVC_PLP_TOP;
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
                add_row(e, &n_rows, q, -1, i, r);
            }
        }
        /* Sampling rows: one per choice (all n of them when forking). */
        if (end == (int)q->tokens.n && p->max_tokens > 0) {
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
                add_row(e, &n_rows, q, c, end - 1, r);
            }
        }
        nt += q->n_new;
    }
    e->seq_token_start[so->n_seqs] = nt;
    assert(nt == so->n_tokens);
    assert(n_rows <= e->max_tokens);
    memset(b, 0, sizeof(*b));
    b->n_tokens = nt;
    b->token_ids = e->token_ids;
    b->positions = e->positions;
    b->slot_mapping = e->slot_mapping;
    b->n_seqs = so->n_seqs;
    b->seq_token_start = e->seq_token_start;
    b->seq_context_len = e->seq_context_len;
    b->block_tables = e->block_tables;
    b->block_table_stride = e->stride;
    b->n_rows = n_rows;
    b->rows = e->rows;
    b->decode_only = decode_only;
}

/* Forks the other choices off q, whose prompt has just been computed. */
static enum es_status do_fork(struct engine *e, struct seq *q, struct es_err *err)
{
    struct ereq *er = q->er;
    int n = er->req->params.n, n_copies = 0;
    for (int c = 1; c < n; c++) {
        struct seq *child = &er->seqs[c];
        int nc = 0;
        if (iv_append(&child->tokens, q->tokens.v, (size_t)q->n_prompt) != ES_OK)
            return es_fail(err, ES_ENOMEM, "out of memory forking choices");
        enum es_status st = kvc_fork(e->kv, &q->kv, &child->kv, q->n_prompt, &e->copy_src[n_copies],
                                     &e->copy_dst[n_copies], &nc);
        /* The scheduler reserved the copy blocks: only memory can fail. */
        if (st != ES_OK) return es_fail(err, st, "fork: no KV block table for choice %d", c);
        n_copies += nc;
        child->n_computed = q->n_prompt;
        sched_add_forked(e->sched, child);
    }
    q->fork_pending = 0;
    if (n_copies > 0)
        return e->be->ops->copy_blocks(e->be, e->copy_src, e->copy_dst, n_copies, err);
    return ES_OK;
}

/* Turns the replica unhealthy (from any thread; the first reason wins)
 * and wakes the engine thread, whose loop then ends every request it holds
 * with FINISH_ERROR. */
static void mark_failed(struct engine *e, const char *msg)
{
    pthread_mutex_lock(&e->mu);
    bool first = atomic_load(&e->healthy);
    if (first) {
        snprintf(e->fail_msg, sizeof(e->fail_msg), "%.250s", msg);
        atomic_store(&e->healthy, false);
    }
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    if (first) LOG_E("engine", "replica %d failed: %s", e->opts.replica_index, msg);
}

static void fail_everything(struct engine *e, const char *msg)
{
    mark_failed(e, msg);
    handle_aborts(e, true, FINISH_ERROR, e->fail_msg);
}

/* Applies the results of a successful forward. */
static enum es_status process_results(struct engine *e, const struct sched_out *so,
                                      const struct batch *b, uint64_t *n_generated,
                                      struct es_err *err)
{
    for (int s = 0; s < so->n_seqs; s++) {
        struct seq *q = so->seqs[s];
        q->n_computed += q->n_new;
        kvc_commit(e->kv, &q->kv, q->tokens.v, q->n_computed);
        touch(e, q->er);
    }
    /* Forks first: a parent that finishes right away must not take the
     * shared prompt blocks with it before the children hold them. */
    for (int s = 0; s < so->n_seqs; s++) {
        struct seq *q = so->seqs[s];
        if (q->fork_now) {
            enum es_status st = do_fork(e, q, err);
            if (st != ES_OK) return st;
        }
    }
    for (int i = 0; i < b->n_rows; i++) {
        struct seq *q = e->row_seq[i];
        struct ereq *er = q->er;
        if (e->row_choice[i] < 0) {
            int pos = e->row_pos[i];
            const struct row_result *r = &e->results[i];
            kvc_plp_store(e->kv, q->kv.table[pos / e->block_size], pos % e->block_size,
                          e->rows[i].target_id, r->target_logprob, r->top_ids, r->top_logprobs,
                          r->n_top);
            out_prompt_logprob(er, pos, r);
            continue;
        }
        struct seq *qc = &er->seqs[e->row_choice[i]];
        if (qc->state != SEQ_RUNNING) continue; /* finished meanwhile */
        (*n_generated)++;
        if (out_append_token(&e->oc, qc, &e->results[i])) sched_remove(e->sched, qc);
    }
    /* Prompt scoring (max_tokens 0) ends once the prompt is through. */
    for (int s = 0; s < so->n_seqs; s++) {
        struct seq *q = so->seqs[s];
        if (q->state == SEQ_RUNNING && q->er->req->params.max_tokens == 0 &&
            q->n_computed == (int)q->tokens.n)
            ereq_finish_all(e, q->er, FINISH_LENGTH, NULL);
    }
    return ES_OK;
}

/* Prompt logprobs of positions that came from the prefix cache. */
static void plp_from_cache(struct engine *e, const struct sched_out *so)
{
    for (int s = 0; s < so->n_seqs; s++) {
        struct seq *q = so->seqs[s];
        struct ereq *er = q->er;
        while (er->plp_next != PLP_DONE && er->plp_next < q->n_computed) {
            int i = er->plp_next;
            struct row_result r = {.token = -1};
            bool ok = kvc_plp_load(e->kv, q->kv.table[i / e->block_size], i % e->block_size,
                                   &r.target_logprob, r.top_ids, r.top_logprobs, &r.n_top);
            assert(ok); /* the scheduler only reuses blocks with every row */
            if (!ok) break;
            out_prompt_logprob(er, i, &r);
        }
    }
}

/* First time a request is in a batch: queue time ends, cache hits known. */
static void mark_scheduled(struct engine *e, const struct sched_out *so, uint64_t *prompt_tokens)
{
    for (int s = 0; s < so->n_seqs; s++) {
        struct ereq *er = so->seqs[s]->er;
        if (er->scheduled_once) continue;
        er->scheduled_once = true;
        atomic_fetch_sub(&e->n_queued, 1);
        *prompt_tokens += er->req->prompt.n;
        pthread_mutex_lock(&er->req->lock);
        er->req->t_first_scheduled = req_now();
        er->req->n_cached_prompt_tokens = so->seqs[s]->n_computed;
        pthread_mutex_unlock(&er->req->lock);
    }
}

static void update_stats(struct engine *e, double host, double device, uint64_t prompt_tokens,
                         uint64_t gen_tokens, bool stepped)
{
    pthread_mutex_lock(&e->stats_mu);
    struct engine_stats *st = &e->stats;
    st->running = sched_num_running(e->sched);
    pthread_mutex_lock(&e->mu);
    st->waiting = sched_num_waiting(e->sched) + e->n_inbox;
    pthread_mutex_unlock(&e->mu);
    st->free_kv_blocks = kvc_num_free(e->kv);
    kvc_counters(e->kv, &st->prefix_cache_queries, &st->prefix_cache_hits);
    st->prompt_tokens += prompt_tokens;
    st->generation_tokens += gen_tokens;
    st->preemptions = sched_num_preemptions(e->sched);
    if (stepped) st->steps++;
    st->step_host_seconds += host;
    st->step_device_seconds += device;
    st->healthy = atomic_load(&e->healthy);
    pthread_mutex_unlock(&e->stats_mu);
}

/* One iteration of the loop on live work. */
static void engine_step(struct engine *e)
{
    double t0 = req_now();
    struct sched_out so;
    sched_schedule(e->sched, &so);
    if (so.n_seqs == 0) {
        /* Cannot happen while submit checks capacity; never spin on it. */
        struct seq *head = sched_waiting_first(e->sched);
        if (head && so.n_preempted == 0 && sched_num_running(e->sched) == 0) {
            LOG_E("engine", "request %llu can never be scheduled",
                  (unsigned long long)head->er->req->id);
            ereq_finish_all(e, head->er, FINISH_ERROR, "the request does not fit this server");
        }
        notify_and_reap(e);
        update_stats(e, req_now() - t0, 0, 0, 0, false);
        return;
    }
    uint64_t prompt_tokens = 0, gen_tokens = 0;
    mark_scheduled(e, &so, &prompt_tokens);
    plp_from_cache(e, &so);
    struct batch b;
    build_batch(e, &so, &b);
    struct batch_result res = {.rows = e->results};
    struct es_err err = {{0}};
    double t1 = req_now();
    enum es_status st = fault_forward(&e->fault, e->step + 1, e->be, &b, &res, &err);
    double t2 = req_now();
    if (st == ES_OK) st = process_results(e, &so, &b, &gen_tokens, &err);
    if (st != ES_OK) {
        char msg[300];
        snprintf(msg, sizeof(msg), "backend %.20s failed: %.200s (%.40s)", e->be->ops->name,
                 err.msg[0] ? err.msg : "no message", es_status_str(st));
        fail_everything(e, msg);
    }
    notify_and_reap(e);
    e->step++;
    double t3 = req_now();
    update_stats(e, (t1 - t0) + (t3 - t2), t2 - t1, prompt_tokens, gen_tokens, true);
}

static void *engine_main(void *arg)
{
    struct engine *e = arg;
    for (;;) {
        pthread_mutex_lock(&e->mu);
        bool have_work = e->live != NULL;
        while (!e->stopping && e->n_inbox == 0 && !have_work)
            pthread_cond_wait(&e->cv, &e->mu);
        struct request **batch = e->inbox;
        int n = e->n_inbox;
        e->inbox = e->inbox_spare;
        e->inbox_spare = batch;
        e->n_inbox = 0;
        bool stopping = e->stopping, drain = e->drain;
        pthread_mutex_unlock(&e->mu);

        admit_inbox(e, batch, n);
        if (!atomic_load(&e->healthy))
            handle_aborts(e, true, FINISH_ERROR, e->fail_msg);
        else if (stopping && !drain)
            handle_aborts(e, true, FINISH_ABORT, NULL);
        else
            handle_aborts(e, false, FINISH_ABORT, NULL);
        notify_and_reap(e);
        if (e->live)
            engine_step(e);
        else if (stopping)
            break;
        else
            update_stats(e, 0, 0, 0, 0, false);
    }
    update_stats(e, 0, 0, 0, 0, false);
    return NULL;
}

/* ---- life cycle ---- */

/* Frees what engine_create built (scheduler, KV cache, step buffers,
 * inbox, notify lists); shared by its error path and engine_destroy. */
static void free_owned(struct engine *e)
{
    sched_destroy(e->sched);
    kvc_destroy(e->kv);
    free(e->token_ids);
    free(e->positions);
    free(e->slot_mapping);
    free(e->seq_token_start);
    free(e->seq_context_len);
    free(e->block_tables);
    free(e->rows);
    free(e->results);
    free(e->row_seq);
    free(e->row_choice);
    free(e->row_pos);
    free(e->copy_src);
    free(e->copy_dst);
    free(e->inbox);
    free(e->inbox_spare);
    free(e->touched.v);
    free(e->doomed.v);
}

enum es_status engine_create(struct backend *be, const struct tokenizer *tok,
                             const struct engine_opts *opts, struct engine **out,
                             struct es_err *err)
{
    struct engine *e = calloc(1, sizeof(*e));
    if (!e) return es_fail(err, ES_ENOMEM, "engine: out of memory");
    e->be = be;
    e->tok = tok;
    e->opts = *opts;
    e->block_size = be->block_size > 0 ? be->block_size : 16;
    if (e->opts.max_model_len <= 0 && be->cfg)
        e->opts.max_model_len = be->cfg->max_position_embeddings;
    if (e->opts.max_waiting <= 0) e->opts.max_waiting = 4096;
    enum es_status st = ES_OK;
    if (e->opts.max_model_len <= 0 || e->opts.max_num_batched_tokens <= 0 ||
        e->opts.max_num_seqs <= 0 || be->num_kv_blocks <= 0) {
        st = es_fail(err, ES_EINVAL,
                     "engine: bad options (max_model_len %d, max_num_batched_tokens %d, "
                     "max_num_seqs %d, %d KV blocks)",
                     e->opts.max_model_len, e->opts.max_num_batched_tokens, e->opts.max_num_seqs,
                     be->num_kv_blocks);
        goto err;
    }
    e->stride = (e->opts.max_model_len + e->block_size - 1) / e->block_size;
    e->max_tokens = e->opts.max_num_batched_tokens;
    e->max_seqs = e->opts.max_num_seqs;
    e->oc.tok = tok;
    e->oc.max_model_len = e->opts.max_model_len;
    st = fault_plan_from_env(e->opts.replica_index, &e->fault, err);
    if (st != ES_OK) goto err;
    st = kvc_create(be->num_kv_blocks, e->block_size, e->stride, e->opts.enable_prefix_caching,
                    &e->kv, err);
    if (st != ES_OK) goto err;
    struct sched_opts so = {.max_num_batched_tokens = e->max_tokens, .max_num_seqs = e->max_seqs};
    st = sched_create(&so, e->kv, &e->sched, err);
    if (st != ES_OK) goto err;
    size_t T = (size_t)e->max_tokens, S = (size_t)e->max_seqs;
    e->token_ids = malloc(T * sizeof(int32_t));
    e->positions = malloc(T * sizeof(int32_t));
    e->slot_mapping = malloc(T * sizeof(int32_t));
    e->seq_token_start = malloc((S + 1) * sizeof(int32_t));
    e->seq_context_len = malloc(S * sizeof(int32_t));
    e->block_tables = calloc(S * (size_t)e->stride, sizeof(int32_t));
    e->rows = calloc(T, sizeof(*e->rows));
    e->results = calloc(T, sizeof(*e->results));
    e->row_seq = calloc(T, sizeof(*e->row_seq));
    e->row_choice = malloc(T * sizeof(int32_t));
    e->row_pos = malloc(T * sizeof(int32_t));
    e->copy_src = malloc(S * sizeof(int32_t));
    e->copy_dst = malloc(S * sizeof(int32_t));
    e->inbox_cap = 64;
    e->inbox = malloc((size_t)e->inbox_cap * sizeof(*e->inbox));
    e->inbox_spare = malloc((size_t)e->inbox_cap * sizeof(*e->inbox_spare));
    if (!e->token_ids || !e->positions || !e->slot_mapping || !e->seq_token_start ||
        !e->seq_context_len || !e->block_tables || !e->rows || !e->results || !e->row_seq ||
        !e->row_choice || !e->row_pos || !e->copy_src || !e->copy_dst || !e->inbox ||
        !e->inbox_spare) {
        st = es_fail(err, ES_ENOMEM, "engine: out of memory for batch buffers");
        goto err;
    }
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    pthread_mutex_init(&e->stats_mu, NULL);
    atomic_init(&e->healthy, true);
    atomic_init(&e->n_queued, 0);
    e->stats.num_kv_blocks = be->num_kv_blocks;
    e->stats.free_kv_blocks = be->num_kv_blocks;
    e->stats.healthy = true;
    *out = e;
    return ES_OK;
err:
    e->be = NULL; /* on failure the caller keeps the backend */
    free_owned(e);
    free(e);
    return st;
}

enum es_status engine_start(struct engine *e)
{
    if (e->thread_started) return ES_OK;
    if (pthread_create(&e->thread, NULL, engine_main, e) != 0) return ES_ERR;
    e->thread_started = true;
    return ES_OK;
}

void engine_get_stats(struct engine *e, struct engine_stats *out)
{
    pthread_mutex_lock(&e->stats_mu);
    *out = e->stats;
    pthread_mutex_unlock(&e->stats_mu);
    out->healthy = atomic_load(&e->healthy);
}

void engine_fail(struct engine *e, const char *why)
{
    mark_failed(e, why);
}

bool engine_healthy(struct engine *e)
{
    return atomic_load(&e->healthy);
}

int engine_max_model_len(const struct engine *e)
{
    return e->opts.max_model_len;
}

void engine_stop(struct engine *e, bool drain)
{
    pthread_mutex_lock(&e->mu);
    if (!e->stopping)
        e->drain = drain;
    else if (!drain)
        e->drain = false; /* a drain can be cut short, never resumed */
    e->stopping = true;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

void engine_destroy(struct engine *e)
{
    if (!e) return;
    if (e->thread_started) {
        engine_stop(e, false);
        pthread_join(e->thread, NULL);
    }
    /* Without a thread (never started) the queued requests are dropped here. */
    admit_inbox(e, e->inbox, e->n_inbox);
    e->n_inbox = 0;
    handle_aborts(e, true, FINISH_ABORT, NULL);
    notify_and_reap(e);
    if (e->be && e->be->ops && e->be->ops->destroy) e->be->ops->destroy(e->be);
    free_owned(e);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
    pthread_mutex_destroy(&e->stats_mu);
    free(e);
}
