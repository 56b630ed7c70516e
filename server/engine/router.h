/*
 * router.h - data parallelism: M replicas (each one engine with its own
 * scheduler, KV cache and backend) behind one submit call.
 *
 * router_submit() is called from HTTP threads. It places each request on
 * the least-loaded healthy replica, where load = the sequences (choices)
 * the router has placed there that have not finished yet, i.e. that
 * replica's waiting + running, counted at submit time and never stale
 * (engine_get_stats lags one step, which would send a burst of requests to
 * one replica). Ties go to the replica that has been given the fewest
 * sequences so far, then the lowest index, so that a client sending one
 * request at a time still spreads its prefixes over every KV cache.
 *
 * Prefix affinity: the prompt's leading full blocks (block_size tokens,
 * 16 as the KV cache's) are hashed in a chain (block i's hash covers
 * blocks 0..i, like the KV cache's block hash), and a bounded LRU table
 * remembers, per prefix hash, the replica that last served it. The
 * longest remembered prefix wins, and the request goes there unless that
 * replica is overloaded:
 *
 *     load(affine) > affinity_ratio * load(least) + affinity_slack
 *
 * (defaults 2.0 and 8 sequences), in which case it goes to the least-loaded
 * one and the table learns the new home. So the next turn of a
 * conversation (previous prompt + reply + new user text) lands where its
 * KV blocks are, and a shared few-shot prefix gathers on one replica until
 * that replica gets busy. Only the last full block and the power-of-two
 * block indices of each prompt are recorded (a few entries per request);
 * every full block is looked up.
 *
 * Health: a replica whose engine failed gets no new work; router_submit
 * fails with ES_EDEVICE only when none is left. router_healthy() is true
 * only while EVERY replica is healthy, so that /health reports a degraded
 * process and an orchestrator restarts it; router_num_healthy() says how
 * many still serve.
 *
 * To count finished work, router_submit wraps the request's on_update: it
 * installs a trampoline that calls the caller's callback (set on_update
 * before router_submit and never change it afterwards) and, once the
 * request has finished, puts the caller's callback back. Owns the engines
 * handed to router_create. Never blocks on an engine: its lock is held for
 * table work only, never across engine_submit.
 */
#ifndef ES_ROUTER_H
#define ES_ROUTER_H

#include <stdbool.h>
#include <stdint.h>

#include "engine.h"
#include "request.h"
#include "status.h"

struct router;

struct router_opts {
    int block_size;        /* tokens per hashed block (default 16, the KV cache's) */
    int table_entries;     /* prefix-affinity LRU entries (default 65536; 0 = affinity off) */
    int max_lookup_blocks; /* leading full blocks hashed per prompt (default 1024) */
    double affinity_ratio; /* overload test, see above (default 2.0) */
    int affinity_slack;    /* sequences (default 8) */
};

/* Router-side counters of one replica, beside its engine's own stats. */
struct router_replica_stats {
    struct engine_stats engine;
    int outstanding;           /* sequences placed and not finished (the load) */
    uint64_t placed_requests;  /* requests accepted by this replica */
    uint64_t placed_sequences; /* their choices (sum of n) */
    uint64_t finished_requests;
    uint64_t affinity_hits;      /* placed here because a prefix lived here */
    uint64_t affinity_overrides; /* a prefix lived here but it was overloaded */
    uint64_t rejected;           /* engine_submit refused (full); retried elsewhere */
};

void router_opts_defaults(struct router_opts *o);

/* Takes ownership of the n engines (created, started or not) on success:
 * router_destroy destroys them. On failure they stay the caller's. */
enum es_status router_create(struct engine *const *engines, int n, const struct router_opts *opts,
                             struct router **out, struct es_err *err);
/* Starts every engine thread not started yet. */
enum es_status router_start(struct router *r);

/* Places req (see above) and queues it on that replica (the engine takes a
 * reference). *replica_out (may be NULL) gets the index. Errors as
 * engine_submit's: ES_EINVAL (can never fit; not retried), ES_EFULL (every
 * healthy replica refused: queues full or stopping), ES_EDEVICE (no
 * healthy replica), ES_ENOMEM. On error the request is untouched. */
enum es_status router_submit(struct router *r, struct request *req, int *replica_out,
                             struct es_err *err);

int router_num_replicas(const struct router *r);
struct engine *router_engine(struct router *r, int i);
void router_get_stats(struct router *r, int i, struct router_replica_stats *out);
/* Sum over replicas (gauges and counters added, healthy = all healthy). */
void router_get_total(struct router *r, struct engine_stats *out);
bool router_healthy(struct router *r); /* every replica healthy */
int router_num_healthy(struct router *r);
/* Smallest max_model_len over the replicas. */
int router_max_model_len(const struct router *r);
/* Replica the affinity table would pick for this prompt, -1 if none (tests, logs). */
int router_affinity_lookup(struct router *r, const int32_t *prompt, int n_prompt);

/* engine_stop on every replica. */
void router_stop(struct router *r, bool drain);
/* Destroys every engine (aborting what is left), then the router. */
void router_destroy(struct router *r);

#endif
