/*
 * scheduler.h - continuous batching for one replica: which sequences run in
 * the next step and how many new tokens each brings. (Prefix sched_,
 * implemented in sched.c; the header is not called sched.h so that it
 * cannot shadow the system <sched.h>.)
 *
 * Each step carries at most max_num_batched_tokens tokens (plus, counted in
 * the same budget, the extra sampling rows of an n > 1 fork) and at most
 * max_num_seqs sequences. Running decodes are scheduled first, then the
 * running prefills (chunked to the budget), then waiting sequences are
 * admitted strictly in arrival order, each after a prefix-cache lookup.
 * When blocks run out, the newest running sequence is preempted: its blocks
 * are freed and it goes back to the waiting queue ahead of everything newer,
 * keeping its generated tokens, to be recomputed later (FCFS: the oldest
 * sequence is never preempted for a newer one, so nothing starves).
 *
 * The engine may schedule a step while the previous one is still on the
 * device (sched_schedule with may_preempt false). A running sequence whose
 * next token that step will produce has nothing to compute yet and is
 * skipped; and since a preempted sequence must not be in flight, such a
 * step preempts nothing: when blocks run out it stops there and says so
 * (memory_short), and the engine schedules the next step only after the
 * one in flight is done.
 */
#ifndef ES_SCHEDULER_H
#define ES_SCHEDULER_H

#include <stdbool.h>
#include <stdint.h>

#include "engine_internal.h"
#include "kvcache.h"

struct sched;

struct sched_opts {
    int max_num_batched_tokens;
    int max_num_seqs;
};

struct sched_out {
    struct seq **seqs; /* [n_seqs] in batch order, each with n_new > 0 */
    int n_seqs;
    int n_tokens;     /* sum of n_new */
    int n_rows_extra; /* extra sampling rows of forks (counted in the budget) */
    int n_preempted;  /* sequences preempted by this step */
    bool memory_short; /* may_preempt was false and blocks ran out */
};

enum es_status sched_create(const struct sched_opts *opts, struct kvcache *kv, struct sched **out,
                            struct es_err *err);
void sched_destroy(struct sched *s);

/* Queues a new sequence (n_computed 0, empty block table) in arrival order. */
void sched_add(struct sched *s, struct seq *q);
/* Chooses the next step; out->seqs stays valid until the next call. Every
 * scheduled sequence has blocks for n_computed + n_new tokens, and forks
 * have their copy blocks reserved. Sequences admitted by this call have
 * admitted set. */
void sched_schedule(struct sched *s, struct sched_out *out, bool may_preempt);
/* Inserts a sequence forked off parent (already holding its blocks) into
 * the running set; parent->fork_pending must already be decremented. */
void sched_add_forked(struct sched *s, struct seq *child);
/* Takes a finished or aborted sequence out (frees its blocks). */
void sched_remove(struct sched *s, struct seq *q);

int sched_num_running(const struct sched *s); /* sequences */
int sched_num_waiting(const struct sched *s); /* sequences */
uint64_t sched_num_preemptions(const struct sched *s);
struct seq *sched_running_first(struct sched *s);
struct seq *sched_waiting_first(struct sched *s);

#endif
