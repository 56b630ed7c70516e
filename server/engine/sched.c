/*
 * sched.c - the continuous-batching scheduler (see scheduler.h for the policy).
 *
 * Owns: the waiting and running lists (both kept sorted by arrival, then
 * choice) and the per-step output array. Allocates KV blocks through the
 * kvcache predicates; never touches requests' outputs, the backend or the
 * tokenizer, and never allocates memory on the step path.
 */
#include <assert.h>
#include <stdlib.h>

#include "log.h"
#include "scheduler.h"

#define LOG_SCHED(...) LOG_D("sched", __VA_ARGS__)

struct seq_list {
    struct seq *head, *tail;
    int n;
};

struct sched {
    struct sched_opts opts;
    struct kvcache *kv;
    struct seq_list waiting, running;
    struct seq **out_seqs; /* [max_num_seqs] */
    int32_t *lookup_buf;   /* [max_blocks_per_seq] */
    uint64_t preemptions;
    int reserved_blocks; /* fork copy blocks promised this step */
};

static bool seq_before(const struct seq *a, const struct seq *b)
{
    if (a->er->arrival != b->er->arrival) return a->er->arrival < b->er->arrival;
    return a->choice < b->choice;
}

static void list_unlink(struct seq_list *l, struct seq *q)
{
    if (q->prev)
        q->prev->next = q->next;
    else
        l->head = q->next;
    if (q->next)
        q->next->prev = q->prev;
    else
        l->tail = q->prev;
    q->prev = q->next = NULL;
    l->n--;
}

/* Sorted insert, scanning from the tail (new arrivals are the newest). */
static void list_insert_sorted(struct seq_list *l, struct seq *q)
{
    struct seq *after = l->tail;
    while (after && seq_before(q, after))
        after = after->prev;
    q->prev = after;
    q->next = after ? after->next : l->head;
    if (q->next)
        q->next->prev = q;
    else
        l->tail = q;
    if (after)
        after->next = q;
    else
        l->head = q;
    l->n++;
}

enum es_status sched_create(const struct sched_opts *opts, struct kvcache *kv, struct sched **out,
                            struct es_err *err)
{
    if (opts->max_num_batched_tokens < 1 || opts->max_num_seqs < 1)
        return es_fail(err, ES_EINVAL,
                       "sched: max_num_batched_tokens and max_num_seqs must be >= 1");
    struct sched *s = calloc(1, sizeof(*s));
    if (!s) return es_fail(err, ES_ENOMEM, "sched: out of memory");
    s->opts = *opts;
    s->kv = kv;
    s->out_seqs = calloc((size_t)opts->max_num_seqs, sizeof(*s->out_seqs));
    s->lookup_buf = calloc((size_t)kvc_max_blocks_per_seq(kv), sizeof(int32_t));
    if (!s->out_seqs || !s->lookup_buf) {
        sched_destroy(s);
        return es_fail(err, ES_ENOMEM, "sched: out of memory");
    }
    *out = s;
    return ES_OK;
}

void sched_destroy(struct sched *s)
{
    if (!s) return;
    free(s->out_seqs);
    free(s->lookup_buf);
    free(s);
}

void sched_add(struct sched *s, struct seq *q)
{
    assert(q->kv.n_blocks == 0);
    q->state = SEQ_WAITING;
    q->n_new = 0;
    list_insert_sorted(&s->waiting, q);
}

void sched_add_forked(struct sched *s, struct seq *child)
{
    child->state = SEQ_RUNNING;
    child->n_new = 0;
    list_insert_sorted(&s->running, child);
}

void sched_remove(struct sched *s, struct seq *q)
{
    if (q->state == SEQ_WAITING)
        list_unlink(&s->waiting, q);
    else if (q->state == SEQ_RUNNING)
        list_unlink(&s->running, q);
    kvc_free(s->kv, &q->kv);
    q->state = SEQ_DONE;
    q->n_new = 0;
}

int sched_num_running(const struct sched *s)
{
    return s->running.n;
}
int sched_num_waiting(const struct sched *s)
{
    return s->waiting.n;
}
uint64_t sched_num_preemptions(const struct sched *s)
{
    return s->preemptions;
}
struct seq *sched_running_first(struct sched *s)
{
    return s->running.head;
}
struct seq *sched_waiting_first(struct sched *s)
{
    return s->waiting.head;
}

/* Budget charge of n_new tokens for q: the tokens plus, when this chunk
 * completes the prompt of a seq that forks, one sampling row per child. */
static int charge_of(const struct seq *q, int n_new)
{
    return n_new + (q->fork_pending > 0 && seq_completes(q, n_new) ? q->fork_pending : 0);
}

/* Copy blocks a fork at the end of this chunk will need. */
static int fork_blocks_of(const struct seq *q, int n_new, int block_size)
{
    if (q->fork_pending <= 0 || !seq_completes(q, n_new)) return 0;
    return (int)q->tokens.n % block_size ? q->fork_pending : 0;
}

/* Largest chunk of q's pending tokens that fits the budget (0 if none). */
static int chunk_for(const struct seq *q, int budget)
{
    int remaining = (int)q->tokens.n - q->n_computed;
    int n_new = remaining < budget ? remaining : budget;
    /* A fork's extra rows must fit too; else stop one token short. */
    while (n_new > 0 && charge_of(q, n_new) > budget)
        n_new--;
    return n_new;
}

static void unschedule(struct sched_out *out, struct seq *q, int *budget)
{
    for (int i = 0; i < out->n_seqs; i++) {
        if (out->seqs[i] != q) continue;
        *budget += charge_of(q, q->n_new);
        out->n_tokens -= q->n_new;
        if (q->fork_now) out->n_rows_extra -= q->fork_pending;
        for (int j = i + 1; j < out->n_seqs; j++)
            out->seqs[j - 1] = out->seqs[j];
        out->n_seqs--;
        break;
    }
    q->n_new = 0;
    q->fork_now = false;
}

static void preempt(struct sched *s, struct sched_out *out, struct seq *q, int *budget)
{
    if (q->n_new > 0) unschedule(out, q, budget);
    list_unlink(&s->running, q);
    kvc_free(s->kv, &q->kv);
    q->n_computed = 0;
    q->state = SEQ_WAITING;
    list_insert_sorted(&s->waiting, q);
    s->preemptions++;
    out->n_preempted++;
    LOG_SCHED("preempted seq of request %llu choice %d (%zu tokens)",
              (unsigned long long)q->er->req->id, q->choice, q->tokens.n);
}

static void add_out(struct sched_out *out, struct seq *q, int n_new, int *budget)
{
    q->n_new = n_new;
    q->fork_now = q->fork_pending > 0 && seq_completes(q, n_new);
    out->seqs[out->n_seqs++] = q;
    out->n_tokens += n_new;
    if (q->fork_now) out->n_rows_extra += q->fork_pending;
    *budget -= charge_of(q, n_new);
}

/* Schedules the running sequences of one kind (decode: exactly one pending
 * token), preempting from the newest end when blocks run out (or stopping
 * there when it may not). */
static void schedule_running(struct sched *s, struct sched_out *out, bool decode, bool may_preempt,
                             int *budget)
{
    int bs = kvc_block_size(s->kv);
    struct seq *q = s->running.head;
    while (q && *budget > 0) {
        struct seq *next = q->next;
        int remaining = (int)q->tokens.n - q->n_computed;
        /* remaining 0: the step in flight computes its next token */
        if (q->n_new > 0 || remaining == 0 || (remaining == 1) != decode) {
            q = next;
            continue;
        }
        int n_new = chunk_for(q, *budget);
        if (n_new == 0) break;
        int fork_blocks = fork_blocks_of(q, n_new, bs);
        bool self_preempted = false;
        if (!may_preempt && !kvc_can_append(s->kv, &q->kv, q->n_computed + n_new,
                                            s->reserved_blocks + fork_blocks)) {
            out->memory_short = true;
            break;
        }
        while (!kvc_can_append(s->kv, &q->kv, q->n_computed + n_new,
                               s->reserved_blocks + fork_blocks)) {
            struct seq *victim = s->running.tail;
            /* The next sequence to visit may be the victim. */
            if (victim == next) next = NULL;
            preempt(s, out, victim, budget);
            if (victim == q) {
                self_preempted = true;
                break;
            }
        }
        /* Only out of memory can fail here (the predicate said yes). */
        if (!self_preempted && kvc_append_slots(s->kv, &q->kv, q->n_computed + n_new) == ES_OK) {
            s->reserved_blocks += fork_blocks;
            add_out(out, q, n_new, budget);
        }
        q = next;
    }
}

static int running_slots(const struct sched *s)
{
    int slots = 0;
    for (const struct seq *q = s->running.head; q; q = q->next)
        slots += 1 + q->fork_pending;
    return slots;
}

static void admit_waiting(struct sched *s, struct sched_out *out, int *budget)
{
    int bs = kvc_block_size(s->kv);
    int slots = running_slots(s);
    while (s->waiting.head && *budget > 0) {
        struct seq *q = s->waiting.head;
        if (slots + 1 + q->fork_pending > s->opts.max_num_seqs) break;
        /* Always compute at least the last token (its logits are sampled),
         * and every position whose prompt logprob is still wanted. */
        int limit = (int)q->tokens.n - 1;
        int n_unref = 0;
        int n_cached = kvc_lookup(s->kv, q->tokens.v, limit, s->lookup_buf, &n_unref);
        if (q->er->plp_next != PLP_DONE) {
            /* Scoring: only blocks whose prompt-logprob rows are cached too. */
            n_cached = kvc_plp_usable(s->kv, s->lookup_buf, n_cached, q->tokens.v, (int)q->tokens.n,
                                      q->er->req->params.prompt_logprobs);
            n_unref = 0;
            for (int i = 0; i < n_cached; i++)
                n_unref += kvc_block_ref(s->kv, s->lookup_buf[i]) == 0;
        }
        q->n_computed = n_cached * bs;
        int n_new = chunk_for(q, *budget);
        if (n_new == 0) {
            q->n_computed = 0;
            break;
        }
        int fork_blocks = fork_blocks_of(q, n_new, bs);
        if (!kvc_can_allocate(s->kv, n_cached, n_unref, q->n_computed + n_new,
                              s->reserved_blocks + fork_blocks)) {
            q->n_computed = 0;
            break; /* FCFS: nobody overtakes the head of the queue */
        }
        if (kvc_allocate(s->kv, &q->kv, s->lookup_buf, n_cached, q->n_computed + n_new) != ES_OK) {
            q->n_computed = 0; /* out of memory: try again next step */
            break;
        }
        kvc_record_lookup(s->kv, (int)q->tokens.n, q->n_computed);
        s->reserved_blocks += fork_blocks;
        list_unlink(&s->waiting, q);
        q->state = SEQ_RUNNING;
        list_insert_sorted(&s->running, q);
        slots += 1 + q->fork_pending;
        add_out(out, q, n_new, budget);
        q->admitted = true;
    }
}

void sched_schedule(struct sched *s, struct sched_out *out, bool may_preempt)
{
    out->seqs = s->out_seqs;
    out->n_seqs = 0;
    out->n_tokens = 0;
    out->n_rows_extra = 0;
    out->n_preempted = 0;
    out->memory_short = false;
    s->reserved_blocks = 0;
    for (struct seq *q = s->running.head; q; q = q->next) {
        q->n_new = 0;
        q->fork_now = false;
        q->admitted = false;
    }
    int budget = s->opts.max_num_batched_tokens;
    schedule_running(s, out, true, may_preempt, &budget);
    schedule_running(s, out, false, may_preempt, &budget);
    /* After a preemption (or where one was due), admitting newer work
     * would only thrash. */
    if (out->n_preempted == 0 && !out->memory_short) admit_waiting(s, out, &budget);
    assert(out->n_tokens + out->n_rows_extra <= s->opts.max_num_batched_tokens);
    assert(out->n_seqs <= s->opts.max_num_seqs);
}
