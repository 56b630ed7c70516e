/*
 * conversation.c - drives conversations step by step over the HTTP client.
 *
 * Owns the sync_turns barrier and the small records that route a reply back
 * to its conversation and slot. Never holds a conversation back in the
 * default mode: a completed step is followed at once by the next one, whose
 * requests go to the head of the HTTP queue. The task owns struct conv
 * itself (embedded in its sample state) and frees it in finish().
 */
#include "conversation.h"

#include <stdlib.h>

struct conv_sched {
    struct hc *hc;
    bool sync_turns;
    int in_round;         /* conversations with a step under way (sync_turns) */
    struct conv *waiting; /* finished their step, waiting for the barrier */
    int rounds;
    bool held;                         /* conv_start only queues */
    struct conv *queued, *queued_tail; /* started while held, in order */
};

struct conv_route {
    struct conv *c;
    int slot;
};

struct conv_sched *conv_sched_create(struct hc *hc, bool sync_turns)
{
    struct conv_sched *s = calloc(1, sizeof(*s));
    if (!s) return NULL;
    s->hc = hc;
    s->sync_turns = sync_turns;
    return s;
}

void conv_sched_destroy(struct conv_sched *s)
{
    free(s);
}

struct hc *conv_sched_hc(struct conv_sched *s)
{
    return s->hc;
}

int conv_sched_rounds(const struct conv_sched *s)
{
    return s->rounds;
}

/* Starts the next step, or finishes the conversation when there is none. */
static void advance(struct conv *c)
{
    struct conv_sched *s = c->sched;
    c->pending = 0;
    bool more = c->ops->step(c);
    if (!more || c->pending == 0) {
        c->ops->finish(c);
        return;
    }
    if (s->sync_turns) s->in_round++;
}

static void release_barrier(struct conv_sched *s)
{
    struct conv *list = s->waiting;
    s->waiting = NULL;
    s->rounds++;
    while (list) {
        struct conv *c = list;
        list = c->next_wait;
        c->next_wait = NULL;
        advance(c);
    }
}

static void step_done(struct conv *c)
{
    struct conv_sched *s = c->sched;
    c->step++;
    if (!s->sync_turns) {
        advance(c);
        return;
    }
    c->next_wait = s->waiting;
    s->waiting = c;
    if (--s->in_round == 0) release_barrier(s);
}

void conv_start(struct conv_sched *s, struct conv *c, int server_fixed)
{
    c->sched = s;
    c->step = 0;
    c->next_wait = NULL;
    c->server = server_fixed >= 0 ? server_fixed : hc_next_server(s->hc);
    if (s->held) {
        if (s->queued_tail)
            s->queued_tail->next_wait = c;
        else
            s->queued = c;
        s->queued_tail = c;
        return;
    }
    advance(c);
}

void conv_sched_hold(struct conv_sched *s)
{
    s->held = true;
}

/* Unlinks the queued conversations and hands each to fn. */
static void take_queued(struct conv_sched *s, void (*fn)(struct conv *c))
{
    struct conv *list = s->queued;
    s->queued = s->queued_tail = NULL;
    s->held = false;
    while (list) {
        struct conv *c = list;
        list = c->next_wait;
        c->next_wait = NULL;
        fn(c);
    }
}

static void finish_unstarted(struct conv *c)
{
    c->ops->finish(c);
}

void conv_sched_go(struct conv_sched *s)
{
    take_queued(s, advance);
}

void conv_sched_drop(struct conv_sched *s)
{
    take_queued(s, finish_unstarted);
}

static void on_reply(struct hc_result *res, void *ud)
{
    struct conv_route *rt = ud;
    struct conv *c = rt->c;
    int slot = rt->slot;
    free(rt);
    c->ops->reply(c, slot, res);
    if (--c->pending == 0) step_done(c);
}

enum es_status conv_send(struct conv *c, int slot, int server, const char *path, const char *body,
                         bool stream)
{
    struct conv_route *rt = malloc(sizeof(*rt));
    if (!rt) return ES_ENOMEM;
    rt->c = c;
    rt->slot = slot;
    enum es_status st = hc_submit(c->sched->hc, server >= 0 ? server : c->server, path, body,
                                  stream, c->step > 0, on_reply, rt);
    if (st != ES_OK) {
        free(rt);
        return st;
    }
    c->pending++;
    return ES_OK;
}

void conv_hold(struct conv *c)
{
    c->pending++;
    hc_hold(c->sched->hc, 1);
}

void conv_release(struct conv *c)
{
    hc_hold(c->sched->hc, -1);
    if (--c->pending == 0) step_done(c);
}
