/*
 * engine.h - one replica: a scheduler, a KV cache and a backend, driven by
 * one engine thread.
 *
 * engine_submit() is called from HTTP threads: it validates that the
 * request can ever fit (else ES_EINVAL with a message for a 400) and queues
 * it (ES_EFULL when the waiting queue is at its limit, for a 429). The
 * engine thread loops: drain the inbox, drop aborted requests, schedule a
 * step within the token budget, run the backend, append outputs, notify.
 * It never blocks on HTTP. If the backend fails (or engine_fail() says it
 * has), every running request ends with FINISH_ERROR and engine_healthy()
 * turns false.
 */
#ifndef ES_ENGINE_H
#define ES_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include "backend.h"
#include "request.h"
#include "tokenizer.h"

struct engine;

struct engine_opts {
    int max_num_batched_tokens; /* token budget per step (default 2048) */
    int max_num_seqs;           /* running sequences at most (default 256) */
    int max_model_len;          /* prompt + output tokens at most (0: the model's
                                   max_position_embeddings); pass the backend the same */
    int max_waiting;            /* queued requests before ES_EFULL (default 4096) */
    bool enable_prefix_caching; /* default true */
    bool async_scheduling;      /* schedule and build step N+1 while step N runs (default true) */
    int replica_index;          /* for logs and metrics labels */
    double step_timeout_s;      /* a forward running longer fails the replica (a hung
                                   device or peer); 0: wait forever (default) */
};

/* Counters since start and gauges now; read without stopping the engine. */
struct engine_stats {
    int running;                 /* sequences */
    int waiting;                 /* sequences queued (requests not started, preempted ones) */
    int num_kv_blocks;
    int free_kv_blocks;          /* free or evictable */
    uint64_t prefix_cache_queries;   /* prompt tokens looked up */
    uint64_t prefix_cache_hits;      /* prompt tokens found */
    uint64_t prompt_tokens;          /* prompt tokens of admitted requests */
    uint64_t generation_tokens;
    uint64_t preemptions;
    uint64_t steps;
    uint64_t steps_scheduled_ahead; /* steps built while the previous one ran */
    double step_host_seconds;    /* engine-thread time not spent waiting for a forward
                                    (with async scheduling, mostly hidden behind one) */
    double step_device_seconds;  /* time inside backend->forward */
    double step_gap_seconds;     /* no forward running between two steps while work
                                    waited: the host time the device did see */
    bool healthy;
};

void engine_opts_defaults(struct engine_opts *o);

/* Takes ownership of the loaded backend: engine_destroy calls
 * be->ops->destroy(be) (the struct backend's own memory stays the caller's,
 * as backend_cpu's destroy leaves it). On failure be is untouched. tok must
 * outlive the engine; tok may be NULL (no text, stop strings ignored). */
enum es_status engine_create(struct backend *be, const struct tokenizer *tok,
                             const struct engine_opts *opts, struct engine **out,
                             struct es_err *err);
enum es_status engine_start(struct engine *e); /* starts the engine thread */
/* Queues req (taking a reference). On error the request is untouched:
 * ES_EINVAL (can never fit: prompt + max_tokens over max_model_len or over
 * the KV cache, n too large, empty prompt, id outside the vocabulary; a
 * 400), ES_EFULL (waiting queue full or stopping; 429/503), ES_EDEVICE
 * (the engine has failed; 503). err->msg says why. */
enum es_status engine_submit(struct engine *e, struct request *req, struct es_err *err);
void engine_get_stats(struct engine *e, struct engine_stats *out);
bool engine_healthy(struct engine *e);
/* Fails the replica for a reason found outside a step (a watchdog saw a
 * node of its backend go away), from any thread: exactly as if a forward
 * had failed with why (every request it holds ends with FINISH_ERROR,
 * engine_submit answers ES_EDEVICE, engine_healthy() turns false). Only
 * the first failure's reason is kept. */
void engine_fail(struct engine *e, const char *why);
int engine_max_model_len(const struct engine *e);
/* Stops accepting work (engine_submit then fails with ES_EFULL); lets the
 * queued and running requests finish (drain) or ends them with
 * FINISH_ABORT. Returns at once; a drain may later be cut short with
 * engine_stop(e, false). The engine is idle when engine_get_stats shows
 * running == 0 && waiting == 0. */
void engine_stop(struct engine *e, bool drain);
/* Stops (aborting what is left), joins the engine thread, finishes every
 * remaining request with FINISH_ABORT (on_update is called), destroys the
 * backend. An engine whose forward outlived opts.step_timeout_s is only
 * stopped: it and its backend stay, still in use by the hung thread. */
void engine_destroy(struct engine *e);
/* Whether be belongs to such an engine (its struct must not be freed). */
bool engine_backend_abandoned(const struct backend *be);

#endif
