/*
 * engine.h - one replica: a scheduler, a KV cache and a backend, driven by
 * one engine thread.
 *
 * engine_submit() is called from HTTP threads: it validates that the
 * request can ever fit (else ES_EINVAL with a message for a 400) and queues
 * it (ES_EFULL when the waiting queue is at its limit, for a 429). The
 * engine thread loops: drain the inbox, drop aborted requests, schedule a
 * step within the token budget, run the backend, append outputs, notify.
 * It never blocks on HTTP. If the backend fails, every running request ends
 * with FINISH_ERROR and engine_healthy() turns false.
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
    int max_model_len;          /* prompt + output tokens at most */
    int max_waiting;            /* queued requests before ES_EFULL (default 4096) */
    bool enable_prefix_caching; /* default true */
    int replica_index;          /* for logs and metrics labels */
};

/* Counters since start and gauges now; read without stopping the engine. */
struct engine_stats {
    int running;                 /* sequences */
    int waiting;                 /* requests */
    int num_kv_blocks;
    int free_kv_blocks;          /* free or evictable */
    uint64_t prefix_cache_queries;   /* prompt tokens looked up */
    uint64_t prefix_cache_hits;      /* prompt tokens found */
    uint64_t prompt_tokens;          /* prompt tokens of admitted requests */
    uint64_t generation_tokens;
    uint64_t preemptions;
    uint64_t steps;
    double step_host_seconds;    /* host time spent outside backend->forward */
    double step_device_seconds;  /* time inside backend->forward */
    bool healthy;
};

void engine_opts_defaults(struct engine_opts *o);

/* Takes ownership of be (destroyed with the engine). tok must outlive it. */
enum es_status engine_create(struct backend *be, const struct tokenizer *tok,
                             const struct engine_opts *opts, struct engine **out,
                             struct es_err *err);
enum es_status engine_start(struct engine *e); /* starts the engine thread */
/* Queues req (taking a reference). On error the request is untouched. */
enum es_status engine_submit(struct engine *e, struct request *req, struct es_err *err);
void engine_get_stats(struct engine *e, struct engine_stats *out);
bool engine_healthy(struct engine *e);
int engine_max_model_len(const struct engine *e);
/* Stops accepting work; lets running requests finish (drain) or aborts them. */
void engine_stop(struct engine *e, bool drain);
void engine_destroy(struct engine *e);

#endif
