/*
 * router.c - places requests on data-parallel replicas (see router.h for
 * the policy: least loaded, with prefix affinity unless overloaded).
 *
 * Owns: the replicas' engines, the per-replica load counters (atomics,
 * decremented on the engine threads by the on_update trampoline when a
 * request finishes), the placement counters and the prefix-affinity table
 * (a fixed-size hash table of prefix hash -> replica with an LRU list;
 * the least recently used entry is reused once it is full). Both are
 * guarded by r->mu, which is held for O(prompt blocks) table work only and
 * never across engine_submit or any engine call that takes engine locks.
 * Lock order: r->mu may be taken before an engine's locks, never after.
 * Never blocks an engine thread: the trampoline touches atomics only.
 */
#include <assert.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "router.h"
#include "kvcache.h"

#define LOG_ROUTER(...) LOG_D("router", __VA_ARGS__)
#define ROUTER_HASH_SEED 0x6a09e667f3bcc909ULL
#define ROUTER_STACK_HASHES 256

struct replica {
    struct engine *e;
    atomic_int outstanding; /* sequences placed, not finished */
    atomic_uint_fast64_t finished_requests;
    /* guarded by r->mu */
    uint64_t placed_requests, placed_sequences;
    uint64_t affinity_hits, affinity_overrides, rejected;
};

/* One affinity table entry; indices link the hash chains and the LRU list. */
struct aff_entry {
    uint64_t key; /* chained prefix hash */
    int32_t replica;
    int32_t hnext; /* next entry in the same bucket, -1 ends */
    int32_t prev;  /* LRU neighbours (head = most recent), -1 ends */
    int32_t next;
};

struct router {
    struct router_opts opts;
    int n;
    struct replica *reps; /* [n] */
    pthread_mutex_t mu;   /* guards the table and the placement counters */

    struct aff_entry *ent; /* [cap] */
    int32_t *buckets;      /* [bucket_mask + 1] head entry per bucket, -1 empty */
    uint64_t bucket_mask;
    int cap, used;
    int32_t lru_head, lru_tail;
};

/* The wrapper installed as req->on_update while the router tracks req. */
struct placement {
    struct replica *rep;
    int weight; /* sequences: params.n */
    void (*cb)(struct request *req, void *ctx);
    void *cb_ctx;
};

void router_opts_defaults(struct router_opts *o)
{
    o->block_size = 16;
    o->table_entries = 65536;
    o->max_lookup_blocks = 1024;
    o->affinity_ratio = 2.0;
    o->affinity_slack = 8;
}

/* ---- prefix hashes ---- */

/* Chained hashes of the leading full blocks: out[i] covers blocks 0..i.
 * Returns how many (at most max). */
static int prefix_hashes(const struct router_opts *o, const int32_t *prompt, int n_prompt,
                         uint64_t *out, int max)
{
    int nb = n_prompt / o->block_size;
    if (nb > max) nb = max;
    uint64_t h = ROUTER_HASH_SEED;
    for (int i = 0; i < nb; i++) {
        h = kvc_block_hash(h, prompt + (size_t)i * (size_t)o->block_size, o->block_size);
        out[i] = h;
    }
    return nb;
}

/* ---- the affinity table (r->mu held) ---- */

static int32_t aff_find(const struct router *r, uint64_t key)
{
    for (int32_t i = r->buckets[key & r->bucket_mask]; i >= 0; i = r->ent[i].hnext)
        if (r->ent[i].key == key) return i;
    return -1;
}

static void lru_unlink(struct router *r, int32_t i)
{
    struct aff_entry *e = &r->ent[i];
    if (e->prev >= 0)
        r->ent[e->prev].next = e->next;
    else
        r->lru_head = e->next;
    if (e->next >= 0)
        r->ent[e->next].prev = e->prev;
    else
        r->lru_tail = e->prev;
    e->prev = e->next = -1;
}

static void lru_push_front(struct router *r, int32_t i)
{
    struct aff_entry *e = &r->ent[i];
    e->prev = -1;
    e->next = r->lru_head;
    if (r->lru_head >= 0) r->ent[r->lru_head].prev = i;
    r->lru_head = i;
    if (r->lru_tail < 0) r->lru_tail = i;
}

static void bucket_remove(struct router *r, int32_t i)
{
    int32_t *pp = &r->buckets[r->ent[i].key & r->bucket_mask];
    while (*pp != i) {
        assert(*pp >= 0);
        pp = &r->ent[*pp].hnext;
    }
    *pp = r->ent[i].hnext;
}

/* Remembers key -> replica as the most recent entry. */
static void aff_put(struct router *r, uint64_t key, int replica)
{
    int32_t i = aff_find(r, key);
    if (i >= 0) {
        r->ent[i].replica = replica;
        lru_unlink(r, i);
        lru_push_front(r, i);
        return;
    }
    if (r->used < r->cap) {
        i = r->used++;
    } else {
        i = r->lru_tail; /* reuse the least recently used entry */
        lru_unlink(r, i);
        bucket_remove(r, i);
    }
    struct aff_entry *e = &r->ent[i];
    e->key = key;
    e->replica = replica;
    uint64_t b = key & r->bucket_mask;
    e->hnext = r->buckets[b];
    r->buckets[b] = i;
    lru_push_front(r, i);
}

/* Replica of the longest remembered prefix among hashes[0..nh) that is
 * allowed (healthy, not excluded); -1 if none. */
static int aff_lookup(const struct router *r, const uint64_t *hashes, int nh, const bool *allowed)
{
    if (r->cap == 0) return -1;
    for (int i = nh - 1; i >= 0; i--) {
        int32_t k = aff_find(r, hashes[i]);
        if (k >= 0 && allowed[r->ent[k].replica]) return r->ent[k].replica;
    }
    return -1;
}

/* Records the request's prefixes: the power-of-two block counts and the
 * whole prompt's full blocks, so a longer prompt that extends this one
 * finds its last entry. */
static void aff_record(struct router *r, const uint64_t *hashes, int nh, int replica)
{
    if (r->cap == 0) return;
    for (int i = 0; i < nh; i++) {
        int blocks = i + 1;
        if ((blocks & (blocks - 1)) == 0 || i == nh - 1) aff_put(r, hashes[i], replica);
    }
}

/* ---- placement ---- */

/* The least loaded allowed replica: fewest outstanding sequences, then
 * fewest sequences placed so far, then lowest index. -1 if none. */
static int least_loaded(struct router *r, const bool *allowed)
{
    int best = -1, best_load = 0;
    uint64_t best_placed = 0;
    for (int i = 0; i < r->n; i++) {
        if (!allowed[i]) continue;
        int load = atomic_load(&r->reps[i].outstanding);
        uint64_t placed = r->reps[i].placed_sequences;
        if (best < 0 || load < best_load || (load == best_load && placed < best_placed)) {
            best = i;
            best_load = load;
            best_placed = placed;
        }
    }
    return best;
}

/* Chooses a replica (r->mu held). *affinity: 1 placed by affinity, -1 the
 * affine replica was overloaded, 0 no prefix known. */
static int choose(struct router *r, const uint64_t *hashes, int nh, const bool *allowed,
                  int *affinity, int *overloaded_replica)
{
    *affinity = 0;
    *overloaded_replica = -1;
    int least = least_loaded(r, allowed);
    if (least < 0) return -1;
    int a = aff_lookup(r, hashes, nh, allowed);
    if (a < 0) return least;
    double la = atomic_load(&r->reps[a].outstanding);
    double ll = atomic_load(&r->reps[least].outstanding);
    if (a != least && la > r->opts.affinity_ratio * ll + r->opts.affinity_slack) {
        *affinity = -1;
        *overloaded_replica = a;
        return least;
    }
    *affinity = 1;
    return a;
}

static void on_update_trampoline(struct request *req, void *ctx)
{
    struct placement *pl = ctx;
    void (*cb)(struct request *, void *) = pl->cb;
    void *cb_ctx = pl->cb_ctx;
    if (req_is_finished(req)) {
        /* The engine calls on_update from its own thread only, so putting
         * the caller's callback back here races with nobody. */
        req->on_update = cb;
        req->on_update_ctx = cb_ctx;
        atomic_fetch_sub(&pl->rep->outstanding, pl->weight);
        atomic_fetch_add(&pl->rep->finished_requests, 1);
        free(pl);
    }
    if (cb) cb(req, cb_ctx);
}

enum es_status router_submit(struct router *r, struct request *req, int *replica_out,
                             struct es_err *err)
{
    uint64_t stack_hashes[ROUTER_STACK_HASHES];
    uint64_t *hashes = stack_hashes;
    int max_blocks = (int)(req->prompt.n / (size_t)r->opts.block_size);
    if (max_blocks > r->opts.max_lookup_blocks) max_blocks = r->opts.max_lookup_blocks;
    if (r->cap == 0) max_blocks = 0;
    if (max_blocks > ROUTER_STACK_HASHES) {
        hashes = malloc((size_t)max_blocks * sizeof(uint64_t));
        if (!hashes) return es_fail(err, ES_ENOMEM, "router: out of memory");
    }
    int nh = prefix_hashes(&r->opts, req->prompt.v, (int)req->prompt.n, hashes, max_blocks);

    bool stack_allowed[64];
    bool *allowed = r->n <= 64 ? stack_allowed : malloc((size_t)r->n * sizeof(bool));
    struct placement *pl = malloc(sizeof(*pl));
    if (!allowed || !pl) {
        if (allowed != stack_allowed) free(allowed);
        if (hashes != stack_hashes) free(hashes);
        free(pl);
        return es_fail(err, ES_ENOMEM, "router: out of memory");
    }
    int n_healthy = 0;
    for (int i = 0; i < r->n; i++) {
        allowed[i] = engine_healthy(r->reps[i].e);
        n_healthy += allowed[i];
    }
    /* Once engine_submit succeeds, pl belongs to the engine thread (the
     * trampoline frees it when the request finishes, perhaps at once):
     * only these copies are read afterwards. */
    const int weight = req->params.n > 0 ? req->params.n : 1;
    pl->weight = weight;
    pl->cb = req->on_update;
    pl->cb_ctx = req->on_update_ctx;

    enum es_status st = n_healthy ? ES_EFULL : ES_EDEVICE;
    if (!n_healthy) es_fail(err, ES_EDEVICE, "every replica has failed");
    struct es_err first_err = {{0}};
    int chosen = -1;
    for (int attempt = 0; attempt < r->n; attempt++) {
        int affinity, overloaded;
        pthread_mutex_lock(&r->mu);
        int i = choose(r, hashes, nh, allowed, &affinity, &overloaded);
        if (i >= 0) atomic_fetch_add(&r->reps[i].outstanding, weight);
        pthread_mutex_unlock(&r->mu);
        if (i < 0) break;

        pl->rep = &r->reps[i];
        req->on_update = on_update_trampoline;
        req->on_update_ctx = pl;
        struct es_err e = {{0}};
        st = engine_submit(r->reps[i].e, req, &e);
        pthread_mutex_lock(&r->mu);
        if (st == ES_OK) {
            struct replica *rep = &r->reps[i];
            rep->placed_requests++;
            rep->placed_sequences += (uint64_t)weight;
            if (affinity > 0) rep->affinity_hits++;
            if (overloaded >= 0) r->reps[overloaded].affinity_overrides++;
            aff_record(r, hashes, nh, i);
            chosen = i;
        } else {
            atomic_fetch_sub(&r->reps[i].outstanding, weight);
            r->reps[i].rejected++;
        }
        pthread_mutex_unlock(&r->mu);
        if (st == ES_OK) break;

        req->on_update = pl->cb;
        req->on_update_ctx = pl->cb_ctx;
        if (!first_err.msg[0]) first_err = e;
        LOG_ROUTER("replica %d refused request %llu: %s", i, (unsigned long long)req->id, e.msg);
        /* A request that can never fit will not fit on a twin replica;
         * a full queue, a stopping or a failed engine may have a sibling
         * that takes it. */
        if (st != ES_EFULL && st != ES_EDEVICE) break;
        allowed[i] = false;
    }
    if (chosen < 0) {
        free(pl);
        if (first_err.msg[0])
            es_fail(err, st, "%s", first_err.msg);
        else if (st == ES_EFULL)
            es_fail(err, st, "every replica refused the request");
    } else {
        LOG_ROUTER("request %llu -> replica %d (%d prefix blocks hashed)",
                   (unsigned long long)req->id, chosen, nh);
        if (replica_out) *replica_out = chosen;
        st = ES_OK;
    }
    if (allowed != stack_allowed) free(allowed);
    if (hashes != stack_hashes) free(hashes);
    return st;
}

int router_affinity_lookup(struct router *r, const int32_t *prompt, int n_prompt)
{
    int max_blocks = n_prompt / r->opts.block_size;
    if (max_blocks > r->opts.max_lookup_blocks) max_blocks = r->opts.max_lookup_blocks;
    if (r->cap == 0 || max_blocks == 0) return -1;
    uint64_t *hashes = malloc((size_t)max_blocks * sizeof(uint64_t));
    bool *allowed = malloc((size_t)r->n * sizeof(bool));
    int a = -1;
    if (hashes && allowed) {
        for (int i = 0; i < r->n; i++)
            allowed[i] = true;
        int nh = prefix_hashes(&r->opts, prompt, n_prompt, hashes, max_blocks);
        pthread_mutex_lock(&r->mu);
        a = aff_lookup(r, hashes, nh, allowed);
        pthread_mutex_unlock(&r->mu);
    }
    free(hashes);
    free(allowed);
    return a;
}

/* ---- life cycle and stats ---- */

enum es_status router_create(struct engine *const *engines, int n, const struct router_opts *opts,
                             struct router **out, struct es_err *err)
{
    if (n < 1 || !engines) return es_fail(err, ES_EINVAL, "router: need at least one replica");
    for (int i = 0; i < n; i++)
        if (!engines[i]) return es_fail(err, ES_EINVAL, "router: replica %d has no engine", i);
    struct router *r = calloc(1, sizeof(*r));
    if (!r) return es_fail(err, ES_ENOMEM, "router: out of memory");
    if (opts)
        r->opts = *opts;
    else
        router_opts_defaults(&r->opts);
    enum es_status st = ES_OK;
    if (r->opts.block_size < 1 || r->opts.table_entries < 0 || r->opts.max_lookup_blocks < 0 ||
        r->opts.affinity_ratio < 1.0 || r->opts.affinity_slack < 0) {
        st = es_fail(err, ES_EINVAL,
                     "router: bad options (block_size %d, table_entries %d, max_lookup_blocks "
                     "%d, affinity_ratio %g, affinity_slack %d)",
                     r->opts.block_size, r->opts.table_entries, r->opts.max_lookup_blocks,
                     r->opts.affinity_ratio, r->opts.affinity_slack);
        goto err;
    }
    r->n = n;
    r->reps = calloc((size_t)n, sizeof(*r->reps));
    if (!r->reps) goto err_nomem;
    r->cap = r->opts.table_entries;
    r->lru_head = r->lru_tail = -1;
    if (r->cap > 0) {
        uint64_t nbuckets = 1;
        while (nbuckets < (uint64_t)r->cap)
            nbuckets <<= 1;
        r->bucket_mask = nbuckets - 1;
        r->ent = calloc((size_t)r->cap, sizeof(*r->ent));
        r->buckets = malloc((size_t)nbuckets * sizeof(int32_t));
        if (!r->ent || !r->buckets) goto err_nomem;
        for (uint64_t b = 0; b < nbuckets; b++)
            r->buckets[b] = -1;
    }
    for (int i = 0; i < n; i++) {
        r->reps[i].e = engines[i];
        atomic_init(&r->reps[i].outstanding, 0);
        atomic_init(&r->reps[i].finished_requests, 0);
    }
    pthread_mutex_init(&r->mu, NULL);
    *out = r;
    return ES_OK;
err_nomem:
    st = es_fail(err, ES_ENOMEM, "router: out of memory");
err:
    free(r->ent);
    free(r->buckets);
    free(r->reps);
    free(r);
    return st;
}

enum es_status router_start(struct router *r)
{
    for (int i = 0; i < r->n; i++) {
        enum es_status st = engine_start(r->reps[i].e);
        if (st != ES_OK) return st;
    }
    return ES_OK;
}

int router_num_replicas(const struct router *r)
{
    return r->n;
}

struct engine *router_engine(struct router *r, int i)
{
    return i >= 0 && i < r->n ? r->reps[i].e : NULL;
}

void router_get_stats(struct router *r, int i, struct router_replica_stats *out)
{
    memset(out, 0, sizeof(*out));
    if (i < 0 || i >= r->n) return;
    struct replica *rep = &r->reps[i];
    engine_get_stats(rep->e, &out->engine);
    out->outstanding = atomic_load(&rep->outstanding);
    out->finished_requests = atomic_load(&rep->finished_requests);
    pthread_mutex_lock(&r->mu);
    out->placed_requests = rep->placed_requests;
    out->placed_sequences = rep->placed_sequences;
    out->affinity_hits = rep->affinity_hits;
    out->affinity_overrides = rep->affinity_overrides;
    out->rejected = rep->rejected;
    pthread_mutex_unlock(&r->mu);
}

void router_get_total(struct router *r, struct engine_stats *out)
{
    memset(out, 0, sizeof(*out));
    out->healthy = true;
    for (int i = 0; i < r->n; i++) {
        struct engine_stats s;
        engine_get_stats(r->reps[i].e, &s);
        out->running += s.running;
        out->waiting += s.waiting;
        out->num_kv_blocks += s.num_kv_blocks;
        out->free_kv_blocks += s.free_kv_blocks;
        out->prefix_cache_queries += s.prefix_cache_queries;
        out->prefix_cache_hits += s.prefix_cache_hits;
        out->prompt_tokens += s.prompt_tokens;
        out->generation_tokens += s.generation_tokens;
        out->preemptions += s.preemptions;
        out->steps += s.steps;
        out->steps_scheduled_ahead += s.steps_scheduled_ahead;
        out->step_host_seconds += s.step_host_seconds;
        out->step_device_seconds += s.step_device_seconds;
        out->step_gap_seconds += s.step_gap_seconds;
        out->healthy = out->healthy && s.healthy;
    }
}

bool router_healthy(struct router *r)
{
    return router_num_healthy(r) == r->n;
}

int router_num_healthy(struct router *r)
{
    int k = 0;
    for (int i = 0; i < r->n; i++)
        k += engine_healthy(r->reps[i].e);
    return k;
}

int router_max_model_len(const struct router *r)
{
    int m = engine_max_model_len(r->reps[0].e);
    for (int i = 1; i < r->n; i++) {
        int x = engine_max_model_len(r->reps[i].e);
        if (x < m) m = x;
    }
    return m;
}

void router_stop(struct router *r, bool drain)
{
    for (int i = 0; i < r->n; i++)
        engine_stop(r->reps[i].e, drain);
}

void router_destroy(struct router *r)
{
    if (!r) return;
    /* Stop them all first so the replicas wind down in parallel. */
    router_stop(r, false);
    /* engine_destroy finishes every request left (the trampolines run and
     * touch r->reps), so the replicas outlive their engines. */
    for (int i = 0; i < r->n; i++)
        engine_destroy(r->reps[i].e);
    pthread_mutex_destroy(&r->mu);
    free(r->ent);
    free(r->buckets);
    free(r->reps);
    free(r);
}
