/*
 * kvcache.c - paged KV block bookkeeping with automatic prefix caching.
 *
 * Owns: per-block reference counts, the free list and the prefix-cache hash
 * table; never the KV memory (the backend's), never requests. Every block
 * is in exactly one of two states: referenced (ref > 0, in some sequence
 * tables) or free (ref == 0, on the free list). The free list is ordered by
 * reuse priority: blocks without a hash at the head (taken first), cached
 * blocks appended at the tail as they are released, so allocation from the
 * head evicts the least recently released cached block first (LRU). A free
 * cached block found by a lookup is unlinked and referenced again.
 *
 * Hashes are chained (block i's hash covers blocks 0..i); a hit is also
 * checked against the stored token ids and parent hash, so a 64-bit
 * collision cannot hand out wrong KV. At most one block per hash is
 * registered: a duplicate computed concurrently simply stays unhashed.
 */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvcache.h"

#define NIL (-1)
#define HASH_SEED 0x9e3779b97f4a7c15ULL

struct kvcache {
    int num_blocks;
    int block_size;
    int max_blocks_per_seq;
    bool prefix_caching;

    int32_t *ref;         /* [num_blocks] sequences holding the block */
    bool *has_hash;       /* [num_blocks] registered in the hash table */
    uint64_t *hash;       /* [num_blocks] chained hash when has_hash */
    uint64_t *parent;     /* [num_blocks] hash of the previous block (chain input) */
    int32_t *tokens;      /* [num_blocks][block_size] token ids when has_hash */
    int32_t *hnext;       /* [num_blocks] hash bucket chain */
    int32_t *buckets;     /* [n_buckets] first block of each bucket, NIL if none */
    uint64_t bucket_mask; /* n_buckets - 1 (power of two) */

    int32_t *fprev, *fnext; /* [num_blocks] free list links */
    bool *is_free;          /* [num_blocks] */
    int32_t fhead, ftail;
    int n_free;

    uint64_t queries, hits; /* prefix-cache counters in tokens */

    /* Prompt-logprob rows per block (see kvcache.h); NULL without prefix caching. */
    uint32_t *plp_mask;       /* [num_blocks] bit j: row j stored */
    int8_t *plp_ntop;         /* [num_blocks] top entries stored (min over rows) */
    int32_t *plp_last_target; /* [num_blocks] target id of row block_size - 1 */
    float *plp_lp;            /* [num_blocks][block_size] */
    int32_t *plp_top_ids;     /* [num_blocks][block_size][KVC_PLP_TOP] */
    float *plp_top_lp;        /* [num_blocks][block_size][KVC_PLP_TOP] */
    int32_t *dup_of;          /* [num_blocks] registered block with the same content, or NIL */
};

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

uint64_t kvc_block_hash(uint64_t prev, const int32_t *ids, int n)
{
    uint64_t h = mix64(prev ^ 0x2545f4914f6cdd1dULL);
    for (int i = 0; i < n; i++)
        h = mix64(h ^ ((uint64_t)(uint32_t)ids[i] + 0x100000000ULL * (uint64_t)i));
    return h;
}

/* ---- free list ---- */

static void free_unlink(struct kvcache *kv, int32_t b)
{
    assert(kv->is_free[b]);
    int32_t p = kv->fprev[b], n = kv->fnext[b];
    if (p != NIL)
        kv->fnext[p] = n;
    else
        kv->fhead = n;
    if (n != NIL)
        kv->fprev[n] = p;
    else
        kv->ftail = p;
    kv->fprev[b] = kv->fnext[b] = NIL;
    kv->is_free[b] = false;
    kv->n_free--;
}

static void free_push(struct kvcache *kv, int32_t b, bool at_tail)
{
    assert(!kv->is_free[b]);
    assert(kv->ref[b] == 0);
    if (at_tail) {
        kv->fprev[b] = kv->ftail;
        kv->fnext[b] = NIL;
        if (kv->ftail != NIL)
            kv->fnext[kv->ftail] = b;
        else
            kv->fhead = b;
        kv->ftail = b;
    } else {
        kv->fnext[b] = kv->fhead;
        kv->fprev[b] = NIL;
        if (kv->fhead != NIL)
            kv->fprev[kv->fhead] = b;
        else
            kv->ftail = b;
        kv->fhead = b;
    }
    kv->is_free[b] = true;
    kv->n_free++;
}

/* ---- hash table ---- */

static int32_t hash_find(const struct kvcache *kv, uint64_t h, uint64_t parent, const int32_t *ids)
{
    for (int32_t b = kv->buckets[h & kv->bucket_mask]; b != NIL; b = kv->hnext[b]) {
        if (kv->hash[b] == h && kv->parent[b] == parent &&
            memcmp(&kv->tokens[(size_t)b * kv->block_size], ids,
                   (size_t)kv->block_size * sizeof(int32_t)) == 0)
            return b;
    }
    return NIL;
}

static void hash_remove(struct kvcache *kv, int32_t b)
{
    assert(kv->has_hash[b]);
    int32_t *pp = &kv->buckets[kv->hash[b] & kv->bucket_mask];
    while (*pp != b) {
        assert(*pp != NIL);
        pp = &kv->hnext[*pp];
    }
    *pp = kv->hnext[b];
    kv->hnext[b] = NIL;
    kv->has_hash[b] = false;
}

static void hash_insert(struct kvcache *kv, int32_t b, uint64_t h, uint64_t parent,
                        const int32_t *ids)
{
    assert(!kv->has_hash[b]);
    kv->hash[b] = h;
    kv->parent[b] = parent;
    memcpy(&kv->tokens[(size_t)b * kv->block_size], ids, (size_t)kv->block_size * sizeof(int32_t));
    int32_t *head = &kv->buckets[h & kv->bucket_mask];
    kv->hnext[b] = *head;
    *head = b;
    kv->has_hash[b] = true;
}

/* Takes the head of the free list for new content (evicting its cache entry). */
static int32_t take_fresh(struct kvcache *kv)
{
    int32_t b = kv->fhead;
    assert(b != NIL);
    free_unlink(kv, b);
    if (kv->has_hash[b]) hash_remove(kv, b);
    if (kv->plp_mask) {
        kv->plp_mask[b] = 0;
        kv->dup_of[b] = NIL;
    }
    assert(kv->ref[b] == 0);
    kv->ref[b] = 1;
    return b;
}

static void release_block(struct kvcache *kv, int32_t b)
{
    assert(kv->ref[b] > 0);
    if (--kv->ref[b] == 0) free_push(kv, b, kv->has_hash[b]);
}

/* ---- public ---- */

enum es_status kvc_create(int num_blocks, int block_size, int max_blocks_per_seq,
                          bool prefix_caching, struct kvcache **out, struct es_err *err)
{
    if (num_blocks <= 0 || block_size <= 0 || max_blocks_per_seq <= 0)
        return es_fail(err, ES_EINVAL, "kvcache: bad geometry (%d blocks of %d, %d per seq)",
                       num_blocks, block_size, max_blocks_per_seq);
    struct kvcache *kv = calloc(1, sizeof(*kv));
    if (!kv) return es_fail(err, ES_ENOMEM, "kvcache: out of memory");
    kv->num_blocks = num_blocks;
    kv->block_size = block_size;
    kv->max_blocks_per_seq = max_blocks_per_seq;
    kv->prefix_caching = prefix_caching;
    size_t nb = (size_t)num_blocks;
    size_t n_buckets = 16;
    while (n_buckets < 2 * nb)
        n_buckets *= 2;
    kv->bucket_mask = n_buckets - 1;
    kv->ref = calloc(nb, sizeof(int32_t));
    kv->has_hash = calloc(nb, sizeof(bool));
    kv->hash = calloc(nb, sizeof(uint64_t));
    kv->parent = calloc(nb, sizeof(uint64_t));
    kv->tokens = calloc(nb * (size_t)block_size, sizeof(int32_t));
    kv->hnext = malloc(nb * sizeof(int32_t));
    kv->buckets = malloc(n_buckets * sizeof(int32_t));
    kv->fprev = malloc(nb * sizeof(int32_t));
    kv->fnext = malloc(nb * sizeof(int32_t));
    kv->is_free = calloc(nb, sizeof(bool));
    if (!kv->ref || !kv->has_hash || !kv->hash || !kv->parent || !kv->tokens || !kv->hnext ||
        !kv->buckets || !kv->fprev || !kv->fnext || !kv->is_free)
        goto err;
    if (prefix_caching && block_size <= 32) {
        size_t rows = nb * (size_t)block_size;
        kv->plp_mask = calloc(nb, sizeof(uint32_t));
        kv->plp_ntop = calloc(nb, sizeof(int8_t));
        kv->plp_last_target = calloc(nb, sizeof(int32_t));
        kv->plp_lp = calloc(rows, sizeof(float));
        kv->plp_top_ids = calloc(rows * KVC_PLP_TOP, sizeof(int32_t));
        kv->plp_top_lp = calloc(rows * KVC_PLP_TOP, sizeof(float));
        kv->dup_of = malloc(nb * sizeof(int32_t));
        if (kv->dup_of)
            for (size_t i = 0; i < nb; i++)
                kv->dup_of[i] = NIL;
        if (!kv->dup_of || !kv->plp_mask || !kv->plp_ntop || !kv->plp_last_target || !kv->plp_lp ||
            !kv->plp_top_ids || !kv->plp_top_lp)
            goto err;
    }
    for (size_t i = 0; i < n_buckets; i++)
        kv->buckets[i] = NIL;
    kv->fhead = kv->ftail = NIL;
    for (int32_t b = 0; b < num_blocks; b++) {
        kv->hnext[b] = NIL;
        kv->fprev[b] = kv->fnext[b] = NIL;
        free_push(kv, b, true);
    }
    *out = kv;
    return ES_OK;
err:
    kvc_destroy(kv);
    return es_fail(err, ES_ENOMEM, "kvcache: out of memory for %d blocks", num_blocks);
}

void kvc_destroy(struct kvcache *kv)
{
    if (!kv) return;
    free(kv->ref);
    free(kv->has_hash);
    free(kv->hash);
    free(kv->parent);
    free(kv->tokens);
    free(kv->hnext);
    free(kv->buckets);
    free(kv->fprev);
    free(kv->fnext);
    free(kv->is_free);
    free(kv->plp_mask);
    free(kv->plp_ntop);
    free(kv->plp_last_target);
    free(kv->plp_lp);
    free(kv->plp_top_ids);
    free(kv->plp_top_lp);
    free(kv->dup_of);
    free(kv);
}

enum es_status kvc_seq_init(struct kvcache *kv, struct kvc_seq *s)
{
    (void)kv;
    memset(s, 0, sizeof(*s));
    s->last_hash = HASH_SEED;
    return ES_OK;
}

/* Grows s's table to hold n entries (the only allocation of this file
 * after create; amortised by doubling). */
static bool ensure_cap(const struct kvcache *kv, struct kvc_seq *s, int n)
{
    if (n <= s->cap) return true;
    int cap = s->cap ? s->cap * 2 : 8;
    if (cap < n) cap = n;
    if (cap > kv->max_blocks_per_seq) cap = kv->max_blocks_per_seq;
    if (cap < n) return false;
    int32_t *t = realloc(s->table, (size_t)cap * sizeof(int32_t));
    if (!t) return false;
    s->table = t;
    s->cap = cap;
    return true;
}

void kvc_seq_destroy(struct kvcache *kv, struct kvc_seq *s)
{
    kvc_free(kv, s);
    free(s->table);
    s->table = NULL;
    s->cap = 0;
}

int kvc_block_size(const struct kvcache *kv)
{
    return kv->block_size;
}
int kvc_num_blocks(const struct kvcache *kv)
{
    return kv->num_blocks;
}
int kvc_max_blocks_per_seq(const struct kvcache *kv)
{
    return kv->max_blocks_per_seq;
}
int kvc_num_free(const struct kvcache *kv)
{
    return kv->n_free;
}
int kvc_blocks_for(const struct kvcache *kv, int n_tokens)
{
    return (n_tokens + kv->block_size - 1) / kv->block_size;
}

int kvc_lookup(const struct kvcache *kv, const int32_t *tokens, int n_tokens, int32_t *blocks_out,
               int *n_unreferenced)
{
    *n_unreferenced = 0;
    if (!kv->prefix_caching) return 0;
    int bs = kv->block_size, n = 0;
    uint64_t prev = HASH_SEED;
    int max_full = n_tokens / bs;
    if (max_full > kv->max_blocks_per_seq) max_full = kv->max_blocks_per_seq;
    for (int i = 0; i < max_full; i++) {
        const int32_t *ids = tokens + (size_t)i * bs;
        uint64_t h = kvc_block_hash(prev, ids, bs);
        int32_t b = hash_find(kv, h, prev, ids);
        if (b == NIL) break;
        blocks_out[n++] = b;
        if (kv->ref[b] == 0) (*n_unreferenced)++;
        prev = h;
    }
    return n;
}

bool kvc_can_allocate(const struct kvcache *kv, int n_cached_blocks, int n_unreferenced,
                      int n_tokens, int extra_blocks)
{
    int need = kvc_blocks_for(kv, n_tokens);
    if (need > kv->max_blocks_per_seq) return false;
    int fresh = need > n_cached_blocks ? need - n_cached_blocks : 0;
    return kv->n_free - n_unreferenced >= fresh + extra_blocks;
}

enum es_status kvc_allocate(struct kvcache *kv, struct kvc_seq *s, const int32_t *cached,
                            int n_cached_blocks, int n_tokens)
{
    assert(s->n_blocks == 0);
    int n_unref = 0;
    for (int i = 0; i < n_cached_blocks; i++)
        n_unref += kv->ref[cached[i]] == 0;
    if (!kvc_can_allocate(kv, n_cached_blocks, n_unref, n_tokens, 0)) return ES_EFULL;
    if (!ensure_cap(kv, s, kvc_blocks_for(kv, n_tokens))) return ES_ENOMEM;
    uint64_t h = HASH_SEED;
    for (int i = 0; i < n_cached_blocks; i++) {
        int32_t b = cached[i];
        assert(kv->has_hash[b]);
        if (kv->ref[b] == 0) free_unlink(kv, b);
        kv->ref[b]++;
        s->table[s->n_blocks++] = b;
        h = kv->hash[b];
    }
    s->n_hashed = n_cached_blocks;
    s->last_hash = h;
    int need = kvc_blocks_for(kv, n_tokens);
    while (s->n_blocks < need)
        s->table[s->n_blocks++] = take_fresh(kv);
    return ES_OK;
}

bool kvc_can_append(const struct kvcache *kv, const struct kvc_seq *s, int n_tokens,
                    int extra_blocks)
{
    int need = kvc_blocks_for(kv, n_tokens);
    if (need > kv->max_blocks_per_seq) return false;
    int fresh = need > s->n_blocks ? need - s->n_blocks : 0;
    return kv->n_free >= fresh + extra_blocks;
}

enum es_status kvc_append_slots(struct kvcache *kv, struct kvc_seq *s, int n_tokens)
{
    if (!kvc_can_append(kv, s, n_tokens, 0)) return ES_EFULL;
    if (!ensure_cap(kv, s, kvc_blocks_for(kv, n_tokens))) return ES_ENOMEM;
    int need = kvc_blocks_for(kv, n_tokens);
    while (s->n_blocks < need)
        s->table[s->n_blocks++] = take_fresh(kv);
    return ES_OK;
}

static void plp_store_one(struct kvcache *kv, int32_t block, int row, int32_t target, float logprob,
                          const int32_t *top_ids, const float *top_logprobs, int n_top);

/* Copies the prompt-logprob rows stored for src into dst (same content). */
static void plp_merge(struct kvcache *kv, int32_t src, int32_t dst)
{
    int bs = kv->block_size;
    for (int row = 0; row < bs; row++) {
        if (!(kv->plp_mask[src] & (1u << row))) continue;
        size_t r = (size_t)src * bs + (size_t)row;
        plp_store_one(kv, dst, row, kv->plp_last_target[src], kv->plp_lp[r],
                      &kv->plp_top_ids[r * KVC_PLP_TOP], &kv->plp_top_lp[r * KVC_PLP_TOP],
                      kv->plp_ntop[src]);
    }
}

void kvc_commit(struct kvcache *kv, struct kvc_seq *s, const int32_t *tokens, int n_computed)
{
    if (!kv->prefix_caching) return;
    int bs = kv->block_size;
    int full = n_computed / bs;
    if (full > s->n_blocks) full = s->n_blocks;
    while (s->n_hashed < full) {
        int i = s->n_hashed;
        const int32_t *ids = tokens + (size_t)i * bs;
        uint64_t h = kvc_block_hash(s->last_hash, ids, bs);
        int32_t b = s->table[i];
        if (kv->has_hash[b]) {
            /* Found by lookup or shared from a parent: same content by construction. */
            assert(kv->hash[b] == h);
        } else {
            int32_t canon = hash_find(kv, h, s->last_hash, ids);
            if (canon == NIL) {
                hash_insert(kv, b, h, s->last_hash, ids);
            } else if (kv->plp_mask) {
                /* A duplicate stays unregistered, but the prompt-logprob
                 * rows computed for it also go to the registered twin. */
                kv->hash[b] = h;
                kv->parent[b] = s->last_hash;
                kv->dup_of[b] = canon;
                plp_merge(kv, b, canon);
            }
        }
        s->last_hash = h;
        s->n_hashed++;
    }
}

void kvc_free(struct kvcache *kv, struct kvc_seq *s)
{
    for (int i = s->n_blocks - 1; i >= 0; i--)
        release_block(kv, s->table[i]);
    s->n_blocks = 0;
    s->n_hashed = 0;
    s->last_hash = HASH_SEED;
}

enum es_status kvc_fork(struct kvcache *kv, const struct kvc_seq *parent, struct kvc_seq *child,
                        int n_tokens, int32_t *copy_src, int32_t *copy_dst, int *n_copies)
{
    assert(child->n_blocks == 0);
    int bs = kv->block_size;
    int used = kvc_blocks_for(kv, n_tokens);
    assert(used <= parent->n_blocks);
    int full = n_tokens / bs;
    bool partial = used > full;
    *n_copies = 0;
    if (partial && kv->n_free < 1) return ES_EFULL;
    if (!ensure_cap(kv, child, used)) return ES_ENOMEM;
    for (int i = 0; i < full; i++) {
        kv->ref[parent->table[i]]++;
        child->table[child->n_blocks++] = parent->table[i];
    }
    if (parent->n_hashed <= full) {
        child->n_hashed = parent->n_hashed;
        child->last_hash = parent->last_hash;
    } else {
        /* kvc_commit recomputes the chain over the shared blocks. */
        child->n_hashed = 0;
        child->last_hash = HASH_SEED;
    }
    if (partial) {
        int32_t b = take_fresh(kv);
        *copy_src = parent->table[full];
        *copy_dst = b;
        *n_copies = 1;
        child->table[child->n_blocks++] = b;
    }
    return ES_OK;
}

static void plp_store_one(struct kvcache *kv, int32_t block, int row, int32_t target, float logprob,
                          const int32_t *top_ids, const float *top_logprobs, int n_top);

void kvc_plp_store(struct kvcache *kv, int32_t block, int row, int32_t target, float logprob,
                   const int32_t *top_ids, const float *top_logprobs, int n_top)
{
    if (!kv->plp_mask) return;
    plp_store_one(kv, block, row, target, logprob, top_ids, top_logprobs, n_top);
    int32_t canon = kv->dup_of[block];
    /* The twin may have been evicted and reused since: check it still is. */
    if (canon != NIL && kv->has_hash[canon] && kv->hash[canon] == kv->hash[block] &&
        kv->parent[canon] == kv->parent[block])
        plp_store_one(kv, canon, row, target, logprob, top_ids, top_logprobs, n_top);
}

static void plp_store_one(struct kvcache *kv, int32_t block, int row, int32_t target, float logprob,
                          const int32_t *top_ids, const float *top_logprobs, int n_top)
{
    assert(block >= 0 && block < kv->num_blocks && row >= 0 && row < kv->block_size);
    if (n_top < 0) n_top = 0;
    if (n_top > KVC_PLP_TOP) n_top = KVC_PLP_TOP;
    size_t r = (size_t)block * kv->block_size + (size_t)row;
    if (kv->plp_mask[block] == 0 || n_top < kv->plp_ntop[block])
        kv->plp_ntop[block] = (int8_t)n_top;
    kv->plp_mask[block] |= 1u << row;
    kv->plp_lp[r] = logprob;
    memcpy(&kv->plp_top_ids[r * KVC_PLP_TOP], top_ids, (size_t)n_top * sizeof(int32_t));
    memcpy(&kv->plp_top_lp[r * KVC_PLP_TOP], top_logprobs, (size_t)n_top * sizeof(float));
    if (row == kv->block_size - 1) kv->plp_last_target[block] = target;
}

bool kvc_plp_load(const struct kvcache *kv, int32_t block, int row, float *logprob,
                  int32_t *top_ids, float *top_logprobs, int *n_top)
{
    if (!kv->plp_mask || !(kv->plp_mask[block] & (1u << row))) return false;
    size_t r = (size_t)block * kv->block_size + (size_t)row;
    *logprob = kv->plp_lp[r];
    *n_top = kv->plp_ntop[block];
    memcpy(top_ids, &kv->plp_top_ids[r * KVC_PLP_TOP], (size_t)*n_top * sizeof(int32_t));
    memcpy(top_logprobs, &kv->plp_top_lp[r * KVC_PLP_TOP], (size_t)*n_top * sizeof(float));
    return true;
}

int kvc_plp_usable(const struct kvcache *kv, const int32_t *blocks, int n_blocks,
                   const int32_t *tokens, int n_tokens, int n_top)
{
    if (!kv->plp_mask || n_top > KVC_PLP_TOP) return 0;
    uint32_t full = kv->block_size == 32 ? 0xffffffffu : (1u << kv->block_size) - 1;
    int h = 0;
    while (h < n_blocks && kv->plp_mask[blocks[h]] == full && kv->plp_ntop[blocks[h]] >= n_top)
        h++;
    /* The last usable block's row 15 must score this prompt's next token. */
    while (h > 0 && (h * kv->block_size >= n_tokens ||
                     kv->plp_last_target[blocks[h - 1]] != tokens[h * kv->block_size]))
        h--;
    return h;
}

void kvc_record_lookup(struct kvcache *kv, int queried_tokens, int hit_tokens)
{
    kv->queries += (uint64_t)queried_tokens;
    kv->hits += (uint64_t)hit_tokens;
}

void kvc_counters(const struct kvcache *kv, uint64_t *queries, uint64_t *hits)
{
    *queries = kv->queries;
    *hits = kv->hits;
}

int kvc_block_ref(const struct kvcache *kv, int32_t block)
{
    return kv->ref[block];
}

bool kvc_block_cached(const struct kvcache *kv, int32_t block)
{
    return kv->has_hash[block];
}

bool kvc_check(const struct kvcache *kv, const struct kvc_seq *const *seqs, int n_seqs)
{
    bool ok = true;
    int32_t *count = calloc((size_t)kv->num_blocks, sizeof(int32_t));
    if (!count) return false;
    for (int s = 0; s < n_seqs; s++)
        for (int i = 0; i < seqs[s]->n_blocks; i++)
            count[seqs[s]->table[i]]++;
    int n_free = 0;
    for (int32_t b = kv->fhead, prev = NIL; b != NIL; prev = b, b = kv->fnext[b]) {
        if (!kv->is_free[b] || kv->fprev[b] != prev) {
            fprintf(stderr, "kvc_check: free list broken at block %d\n", b);
            ok = false;
            break;
        }
        n_free++;
    }
    if (n_free != kv->n_free) {
        fprintf(stderr, "kvc_check: free list length %d != n_free %d\n", n_free, kv->n_free);
        ok = false;
    }
    int n_hashed = 0;
    for (int32_t b = 0; b < kv->num_blocks; b++) {
        if (kv->ref[b] != count[b]) {
            fprintf(stderr, "kvc_check: block %d ref %d but %d holders\n", b, kv->ref[b], count[b]);
            ok = false;
        }
        if ((kv->ref[b] == 0) != kv->is_free[b]) {
            fprintf(stderr, "kvc_check: block %d ref %d free flag %d\n", b, kv->ref[b],
                    kv->is_free[b]);
            ok = false;
        }
        if (kv->has_hash[b]) {
            n_hashed++;
            if (hash_find(kv, kv->hash[b], kv->parent[b],
                          &kv->tokens[(size_t)b * kv->block_size]) != b) {
                fprintf(stderr, "kvc_check: block %d hashed but not findable\n", b);
                ok = false;
            }
        }
    }
    int n_in_table = 0;
    for (uint64_t i = 0; i <= kv->bucket_mask; i++)
        for (int32_t b = kv->buckets[i]; b != NIL; b = kv->hnext[b])
            n_in_table++;
    if (n_in_table != n_hashed) {
        fprintf(stderr, "kvc_check: %d blocks in hash table, %d flagged\n", n_in_table, n_hashed);
        ok = false;
    }
    free(count);
    return ok;
}
