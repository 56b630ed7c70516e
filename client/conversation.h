/*
 * conversation.h - the multi-turn state machine every task runs on.
 *
 * A conversation is a sequence of steps; a step is one or more requests (or
 * external work, such as an environment program's answer) whose replies all
 * arrive before the task decides the next step. A conversation starts its
 * next step the moment its current one completes: no barrier, no thread per
 * conversation. With sync_turns, step k+1 of any conversation starts only
 * once every live conversation has finished step k (for comparison).
 */
#ifndef EC_CONVERSATION_H
#define EC_CONVERSATION_H

#include <stdbool.h>

#include "http_client.h"

struct conv;

struct conv_ops {
    /* Starts step c->step (0-based) with conv_send / conv_hold. Returns false
     * (having started nothing) when the conversation is over: once a request
     * is sent, step must return true, since the reply will come. It must not
     * conv_release a hold it took itself. */
    bool (*step)(struct conv *c);
    /* One reply of the current step; slot is the value given to conv_send. */
    void (*reply)(struct conv *c, int slot, struct hc_result *res);
    /* Called once, after step() returned false: record the sample, free it. */
    void (*finish)(struct conv *c);
};

struct conv_sched;

struct conv {
    const struct conv_ops *ops;
    void *ud; /* the task's per-sample state */
    struct conv_sched *sched;
    int server;             /* fixed for the conversation's whole life */
    int step;               /* steps completed so far */
    int pending;            /* replies (and holds) owed by the current step */
    struct conv *next_wait; /* sync_turns: waiting for the barrier; held: queued */
};

struct conv_sched *conv_sched_create(struct hc *hc, bool sync_turns);
void conv_sched_destroy(struct conv_sched *s);
struct hc *conv_sched_hc(struct conv_sched *s);

/* Registers c (ops and ud set by the caller), picks its server unless
 * server_fixed >= 0, and starts step 0. */
void conv_start(struct conv_sched *s, struct conv *c, int server_fixed);

/* While held, conv_start only queues a conversation (nothing is sent):
 * main holds the scheduler until every task has loaded its data, then
 * conv_sched_go starts the queued ones in order, or, when setup failed,
 * conv_sched_drop hands each to ops->finish unstarted. */
void conv_sched_hold(struct conv_sched *s);
void conv_sched_go(struct conv_sched *s);
void conv_sched_drop(struct conv_sched *s);

/* Sends a request as part of the current step, to the conversation's server
 * (or to `server` when >= 0, e.g. a judge). */
enum es_status conv_send(struct conv *c, int slot, int server, const char *path, const char *body,
                         bool stream);

/* External work owed by the current step; conv_release when it is done. */
void conv_hold(struct conv *c);
void conv_release(struct conv *c);

/* Number of barrier rounds passed (sync_turns) - for reports. */
int conv_sched_rounds(const struct conv_sched *s);

#endif
