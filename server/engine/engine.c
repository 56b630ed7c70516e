/*
 * engine.c - one replica's step loop: one engine thread drives a scheduler,
 * a KV block manager and a step runner (the thread that calls the backend).
 *
 * Owns: the inbox (filled by HTTP threads under e->mu), the engine-side
 * state of every live request (struct ereq / struct seq), two step
 * batches (step_batch.h; allocated once at create) and the stats. Each
 * iteration: drain the inbox, finish aborted requests; then, with a step
 * in flight, schedule and build the next one (async scheduling), wait for
 * the one in flight, write its sampled tokens into the places reserved for
 * them, launch the next, and only then hand the row results to output.c,
 * fork n > 1 choices whose prompt is done, notify every touched request
 * (outside req->lock) and drop the finished ones no step still reads.
 * docs/ARCHITECTURE.md ("Threads") says what scheduling ahead costs and
 * when the engine falls back to one step at a time. Never blocks on HTTP:
 * the only lock shared with HTTP threads besides req->lock is e->mu, held
 * for O(1) work.
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
#include "step_batch.h"
#include "step_runner.h"

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

    /* Steps: two batches, one on the device while the other is built. */
    struct step_batch_shape shape;
    struct step_batch *batches[2];
    struct step_batch *inflight; /* launched, not yet waited; NULL: the device is idle */
    struct step_runner *runner;
    struct engine *next_abandoned; /* engine_destroy of a hung forward's engine */
    uint64_t forwards;             /* steps launched */
    bool memory_short;             /* the last schedule ran out of blocks */
    double device_idle_since;      /* end of the last forward while work waited; 0: none */
    struct ereq_vec reap_later;    /* finished requests still held by a step in flight */
    int32_t *copy_src, *copy_dst;  /* [max_seqs] fork copies of one step */

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
    o->async_scheduling = true;
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

/* Calls on_update for the touched requests, then frees the finished ones
 * (later, for those a step in flight still reads: they leave the live list
 * now, so nothing notifies them again). */
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
        if (er->n_inflight == 0)
            ereq_free(e, er);
        else if (ev_push(&e->reap_later, er) != ES_OK)
            LOG_W("engine", "out of memory (reap list): a finished request is not freed");
    }
    e->touched.n = 0;
    int kept = 0;
    for (int i = 0; i < e->reap_later.n; i++) {
        struct ereq *er = e->reap_later.v[i];
        if (er->n_inflight == 0)
            ereq_free(e, er);
        else
            e->reap_later.v[kept++] = er;
    }
    e->reap_later.n = kept;
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

/* Forks the other choices off q, whose prompt has just been computed. */
static enum es_status do_fork(struct engine *e, struct seq *q, struct es_err *err)
{
    assert(!e->inflight); /* copy_blocks must not meet a forward */
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

/* Whether the token q samples in the step being launched is followed by
 * more: max_tokens and the context length say so in advance; a stop rule
 * can still end q, and then the step after computes one token for nothing. */
static bool continues_after(const struct engine *e, const struct seq *q)
{
    const struct request_params *p = &q->er->req->params;
    int n_tokens = (int)q->tokens.n + 1;
    return n_tokens - q->n_prompt < p->max_tokens && n_tokens < e->opts.max_model_len;
}

/* Hands sb to the runner. From here its tokens count as computed (the
 * scheduler plans the next step on top of them), and each sampling row
 * whose sequence goes on reserves its token's place in the sequence, so
 * the next step can include that token before its value is known. */
static void launch(struct engine *e, struct step_batch *sb)
{
    sb->number = ++e->forwards;
    for (int s = 0; s < sb->n_seqs; s++) {
        struct seq *q = sb->seqs[s];
        q->n_computed += sb->seq_n_new[s];
        if (q->er->counted_launch != sb->number) {
            q->er->counted_launch = sb->number;
            q->er->n_inflight++;
        }
    }
    for (int i = 0; i < sb->batch.n_rows; i++) {
        struct seq *q = sb->row_seq[i];
        /* Prompt rows, and the rows of choices a fork creates afterwards. */
        if (sb->row_choice[i] != q->choice) continue;
        if (continues_after(e, q) && iv_push(&q->tokens, ENGINE_TOKEN_PENDING) == ES_OK)
            sb->row_reserved[i] = (int32_t)q->tokens.n - 1;
    }
    step_batch_refresh(sb);
    double now = req_now();
    if (e->device_idle_since > 0) {
        pthread_mutex_lock(&e->stats_mu);
        e->stats.step_gap_seconds += now - e->device_idle_since;
        pthread_mutex_unlock(&e->stats_mu);
        e->device_idle_since = 0;
    }
    runner_submit(e->runner, sb->number, &sb->batch, &sb->result);
    e->inflight = sb;
}

/* Writes the sampled tokens of a finished step into their reserved places. */
static void fill_reserved(struct step_batch *sb)
{
    for (int i = 0; i < sb->batch.n_rows; i++)
        if (sb->row_reserved[i] >= 0)
            sb->row_seq[i]->tokens.v[sb->row_reserved[i]] = sb->results[i].token;
}

/* Applies the results of a successful forward. A sequence may have been
 * aborted (SEQ_DONE, its blocks freed) while the step ran. */
static enum es_status process_results(struct engine *e, const struct step_batch *sb,
                                      uint64_t *n_generated, struct es_err *err)
{
    for (int s = 0; s < sb->n_seqs; s++) {
        struct seq *q = sb->seqs[s];
        if (q->state == SEQ_DONE) continue;
        kvc_commit(e->kv, &q->kv, q->tokens.v, sb->seq_start[s] + sb->seq_n_new[s]);
        touch(e, q->er);
    }
    /* Forks first: a parent that finishes right away must not take the
     * shared prompt blocks with it before the children hold them. */
    for (int s = 0; s < sb->n_seqs; s++) {
        struct seq *q = sb->seqs[s];
        if (sb->seq_fork_now[s] && q->state == SEQ_RUNNING) {
            enum es_status st = do_fork(e, q, err);
            if (st != ES_OK) return st;
        }
    }
    for (int i = 0; i < sb->batch.n_rows; i++) {
        struct seq *q = sb->row_seq[i];
        struct ereq *er = q->er;
        const struct row_result *r = &sb->results[i];
        if (sb->row_choice[i] < 0) {
            if (q->state == SEQ_DONE) continue;
            int pos = sb->row_pos[i];
            kvc_plp_store(e->kv, q->kv.table[pos / e->block_size], pos % e->block_size,
                          sb->rows[i].target_id, r->target_logprob, r->top_ids, r->top_logprobs,
                          r->n_top);
            out_prompt_logprob(er, pos, r);
            continue;
        }
        struct seq *qc = &er->seqs[sb->row_choice[i]];
        if (qc->state != SEQ_RUNNING) continue; /* finished meanwhile */
        (*n_generated)++;
        if (out_append_token(&e->oc, qc, r, sb->row_reserved[i])) sched_remove(e->sched, qc);
    }
    /* Prompt scoring (max_tokens 0) ends once the prompt is through. */
    for (int s = 0; s < sb->n_seqs; s++) {
        struct seq *q = sb->seqs[s];
        if (q->state == SEQ_RUNNING && q->er->req->params.max_tokens == 0 &&
            sb->seq_start[s] + sb->seq_n_new[s] == (int)q->tokens.n)
            ereq_finish_all(e, q->er, FINISH_LENGTH, NULL);
    }
    return ES_OK;
}

/* The step no longer reads its requests: they may be freed. */
static void release_step(struct step_batch *sb)
{
    for (int s = 0; s < sb->n_seqs; s++) {
        struct ereq *er = sb->seqs[s]->er;
        if (er->counted_done == sb->number) continue;
        er->counted_done = sb->number;
        er->n_inflight--;
    }
}

/* Prompt logprobs of positions that came from the prefix cache (known for
 * the sequences this schedule admitted). */
static void plp_from_cache(struct engine *e, const struct sched_out *so)
{
    for (int s = 0; s < so->n_seqs; s++) {
        struct seq *q = so->seqs[s];
        struct ereq *er = q->er;
        if (!q->admitted) continue;
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

/* What one engine iteration adds to the stats. */
struct step_tally {
    double host, device;
    uint64_t prompt_tokens, gen_tokens;
    bool stepped, ahead;
};

static void update_stats(struct engine *e, const struct step_tally *t)
{
    pthread_mutex_lock(&e->stats_mu);
    struct engine_stats *st = &e->stats;
    st->running = sched_num_running(e->sched);
    pthread_mutex_lock(&e->mu);
    st->waiting = sched_num_waiting(e->sched) + e->n_inbox;
    pthread_mutex_unlock(&e->mu);
    st->free_kv_blocks = kvc_num_free(e->kv);
    kvc_counters(e->kv, &st->prefix_cache_queries, &st->prefix_cache_hits);
    st->prompt_tokens += t->prompt_tokens;
    st->generation_tokens += t->gen_tokens;
    st->preemptions = sched_num_preemptions(e->sched);
    if (t->stepped) st->steps++;
    if (t->ahead) st->steps_scheduled_ahead++;
    st->step_host_seconds += t->host;
    st->step_device_seconds += t->device;
    st->healthy = atomic_load(&e->healthy);
    pthread_mutex_unlock(&e->stats_mu);
}

/* Schedules a step into sb (ahead: while another runs). False when there
 * is nothing to run. */
static bool plan_step(struct engine *e, struct step_batch *sb, bool ahead, uint64_t *prompt_tokens)
{
    struct sched_out so;
    sched_schedule(e->sched, &so, !ahead);
    e->memory_short = so.memory_short;
    if (so.n_seqs == 0) {
        /* Cannot happen while submit checks capacity; never spin on it. */
        struct seq *head = sched_waiting_first(e->sched);
        if (!ahead && head && so.n_preempted == 0 && sched_num_running(e->sched) == 0) {
            LOG_E("engine", "request %llu can never be scheduled",
                  (unsigned long long)head->er->req->id);
            ereq_finish_all(e, head->er, FINISH_ERROR, "the request does not fit this server");
        }
        return false;
    }
    mark_scheduled(e, &so, prompt_tokens);
    plp_from_cache(e, &so);
    step_batch_build(sb, &e->shape, &so);
    return true;
}

/* Waits for the step in flight and applies it; the next step, when it
 * could be scheduled meanwhile, is launched as soon as the device is done. */
static void finish_inflight(struct engine *e, struct step_tally *t)
{
    double t0 = req_now();
    struct step_batch *done = e->inflight;
    struct step_batch *next = done == e->batches[0] ? e->batches[1] : e->batches[0];
    /* A fork copies blocks (a backend call) once the step is done; a
     * memory shortage needs the scheduler free to preempt. */
    bool ahead =
        e->opts.async_scheduling && !done->has_fork && !e->memory_short && atomic_load(&e->healthy);
    t->ahead = ahead && plan_step(e, next, true, &t->prompt_tokens);
    double t1 = req_now();
    struct es_err err = {{0}};
    double fwd_start = 0, fwd_end = 0;
    enum es_status st = runner_wait(e->runner, e->opts.step_timeout_s, &err, &fwd_start, &fwd_end);
    double t2 = req_now();
    e->inflight = NULL;
    e->device_idle_since = fwd_end;
    if (st == ES_OK) {
        fill_reserved(done);
        if (t->ahead) launch(e, next);
        st = process_results(e, done, &t->gen_tokens, &err);
    }
    /* A forward that --step-timeout gave up on may still come back and
     * read its requests' rows (histories, sampling parameters): they stay
     * in flight, so never freed, with the abandoned engine. */
    if (st == ES_OK || !runner_stuck(e->runner)) release_step(done);
    if (st != ES_OK) {
        char msg[300];
        snprintf(msg, sizeof(msg), "backend %.20s failed: %.200s (%.40s)", e->be->ops->name,
                 err.msg[0] ? err.msg : "no message", es_status_str(st));
        fail_everything(e, msg);
    }
    /* Counted before the clients hear of their tokens: a /metrics read
     * right after a response must already include its last token. */
    pthread_mutex_lock(&e->stats_mu);
    e->stats.generation_tokens += t->gen_tokens;
    pthread_mutex_unlock(&e->stats_mu);
    t->gen_tokens = 0;
    notify_and_reap(e);
    e->step++;
    t->stepped = true;
    t->device = fwd_end - fwd_start;
    t->host = (t1 - t0) + (req_now() - t2);
}

/* One iteration of the loop on live work. */
static void engine_step(struct engine *e)
{
    struct step_tally t = {0};
    if (e->inflight) {
        finish_inflight(e, &t);
    } else {
        double t0 = req_now();
        if (plan_step(e, e->batches[0], false, &t.prompt_tokens))
            launch(e, e->batches[0]);
        else
            notify_and_reap(e);
        t.host = req_now() - t0;
    }
    update_stats(e, &t);
}

static void *engine_main(void *arg)
{
    struct engine *e = arg;
    for (;;) {
        pthread_mutex_lock(&e->mu);
        bool have_work = e->live != NULL || e->inflight != NULL;
        if (!e->stopping && e->n_inbox == 0 && !have_work) e->device_idle_since = 0;
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
        if (e->live || e->inflight) {
            engine_step(e);
        } else if (stopping) {
            break;
        } else {
            struct step_tally idle = {0};
            update_stats(e, &idle);
        }
    }
    struct step_tally last = {0};
    update_stats(e, &last);
    return NULL;
}

/* ---- life cycle ---- */

/* Frees what engine_create built (scheduler, KV cache, step buffers,
 * inbox, notify lists); shared by its error path and engine_destroy. */
static void free_owned(struct engine *e)
{
    sched_destroy(e->sched);
    kvc_destroy(e->kv);
    step_batch_free(e->batches[0]);
    step_batch_free(e->batches[1]);
    free(e->reap_later.v);
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
    e->shape = (struct step_batch_shape){.max_tokens = e->opts.max_num_batched_tokens,
                                         .max_seqs = e->opts.max_num_seqs,
                                         .stride = e->stride,
                                         .block_size = e->block_size,
                                         .cache_prompt_rows = e->opts.enable_prefix_caching};
    e->oc.tok = tok;
    e->oc.max_model_len = e->opts.max_model_len;
    st = fault_plan_from_env(e->opts.replica_index, &e->fault, err);
    if (st != ES_OK) goto err;
    st = kvc_create(be->num_kv_blocks, e->block_size, e->stride, e->opts.enable_prefix_caching,
                    &e->kv, err);
    if (st != ES_OK) goto err;
    struct sched_opts so = {.max_num_batched_tokens = e->shape.max_tokens,
                            .max_num_seqs = e->shape.max_seqs};
    st = sched_create(&so, e->kv, &e->sched, err);
    if (st != ES_OK) goto err;
    for (int i = 0; i < 2; i++) {
        st = step_batch_create(&e->shape, &e->batches[i], err);
        if (st != ES_OK) goto err;
    }
    size_t S = (size_t)e->shape.max_seqs;
    e->copy_src = malloc(S * sizeof(int32_t));
    e->copy_dst = malloc(S * sizeof(int32_t));
    e->inbox_cap = 64;
    e->inbox = malloc((size_t)e->inbox_cap * sizeof(*e->inbox));
    e->inbox_spare = malloc((size_t)e->inbox_cap * sizeof(*e->inbox_spare));
    if (!e->copy_src || !e->copy_dst || !e->inbox || !e->inbox_spare) {
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
    struct es_err err = {{0}};
    if (runner_create(e->be, &e->fault, &e->runner, &err) != ES_OK) {
        LOG_E("engine", "%s", err.msg);
        return ES_ERR;
    }
    if (pthread_create(&e->thread, NULL, engine_main, e) != 0) {
        runner_destroy(e->runner);
        e->runner = NULL;
        return ES_ERR;
    }
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

/* Engines whose forward never came back, kept (and reachable, for
 * LeakSanitizer) until the process ends: their runner's thread may still
 * use them. */
static struct engine *abandoned;
static pthread_mutex_t abandoned_mu = PTHREAD_MUTEX_INITIALIZER;

bool engine_backend_abandoned(const struct backend *be)
{
    pthread_mutex_lock(&abandoned_mu);
    const struct engine *e = abandoned;
    while (e && e->be != be)
        e = e->next_abandoned;
    pthread_mutex_unlock(&abandoned_mu);
    return e != NULL;
}

void engine_destroy(struct engine *e)
{
    if (!e) return;
    if (e->thread_started) {
        engine_stop(e, false);
        pthread_join(e->thread, NULL); /* it ends with no step in flight */
    }
    if (e->runner && runner_stuck(e->runner)) {
        /* Its forward never came back: the runner's thread may still use
         * the backend, the fault plan and the step's buffers, so those stay
         * (the process is on its way out), and only the requests end. */
        LOG_W("engine", "replica %d: leaving its hung forward's thread and backend behind",
              e->opts.replica_index);
        admit_inbox(e, e->inbox, e->n_inbox);
        e->n_inbox = 0;
        handle_aborts(e, true, FINISH_ABORT, NULL);
        notify_and_reap(e);
        pthread_mutex_lock(&abandoned_mu);
        e->next_abandoned = abandoned;
        abandoned = e;
        pthread_mutex_unlock(&abandoned_mu);
        return;
    }
    runner_destroy(e->runner);
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
