/*
 * kvcache.h - the KV block manager of one replica: which physical KV blocks
 * belong to which sequence, and which finished blocks are kept for reuse.
 *
 * Blocks hold block_size tokens. A sequence owns a block table (logical
 * block i -> physical id). Each block has a reference count (sequences that
 * hold it). A FULL block whose KV has been computed gets a hash chained
 * over its whole prefix, hash(prev_block_hash, its block_size token ids),
 * and is registered in the prefix cache; when its last holder lets go it
 * stays findable, in LRU order, until its memory is needed for another
 * block (eviction). The manager never touches KV memory itself: copies
 * (copy-on-write at fork) are returned to the caller, who asks the backend.
 */
#ifndef ES_KVCACHE_H
#define ES_KVCACHE_H

#include <stdbool.h>
#include <stdint.h>

#include "status.h"

struct kvcache;

/* One sequence's block table; zero-initialise, then kvc_seq_init. */
struct kvc_seq {
    int32_t *table;     /* [cap] physical block ids, grown on demand */
    int cap;            /* allocated entries (at most max_blocks_per_seq) */
    int n_blocks;       /* entries of table in use */
    int n_hashed;       /* leading blocks registered (or found) in the cache */
    uint64_t last_hash; /* hash of block n_hashed - 1 (chain seed when 0 blocks) */
};

enum es_status kvc_create(int num_blocks, int block_size, int max_blocks_per_seq,
                          bool prefix_caching, struct kvcache **out, struct es_err *err);
void kvc_destroy(struct kvcache *kv);
/* The chained hash of one full block: hash(previous block's hash, its ids).
 * The router uses the same function for its prefix-affinity table. */
uint64_t kvc_block_hash(uint64_t prev, const int32_t *ids, int n);

enum es_status kvc_seq_init(struct kvcache *kv, struct kvc_seq *s);
void kvc_seq_destroy(struct kvcache *kv, struct kvc_seq *s); /* frees blocks too */

int kvc_block_size(const struct kvcache *kv);
int kvc_num_blocks(const struct kvcache *kv);
int kvc_max_blocks_per_seq(const struct kvcache *kv);
/* Blocks nobody references (never used, or cached and evictable). */
int kvc_num_free(const struct kvcache *kv);
int kvc_blocks_for(const struct kvcache *kv, int n_tokens); /* ceil(n / block_size) */

/* Prefix lookup: how many leading FULL blocks of tokens[0..n_tokens) are in
 * the cache (only whole blocks count). Writes their ids to blocks_out
 * (room for n_tokens / block_size) and how many of them are currently
 * unreferenced (taking them costs free blocks) to n_unreferenced. No state
 * changes. Returns 0 when prefix caching is off. */
int kvc_lookup(const struct kvcache *kv, const int32_t *tokens, int n_tokens, int32_t *blocks_out,
               int *n_unreferenced);

/* Can an empty sequence take these cached blocks and grow to n_tokens slots
 * with extra_blocks more still free afterwards? */
bool kvc_can_allocate(const struct kvcache *kv, int n_cached_blocks, int n_unreferenced,
                      int n_tokens, int extra_blocks);
/* Gives an empty sequence the cached blocks (from kvc_lookup, reference
 * taken) and fresh blocks up to n_tokens slots. ES_EFULL (nothing changed)
 * when the free blocks do not suffice. */
enum es_status kvc_allocate(struct kvcache *kv, struct kvc_seq *s, const int32_t *cached,
                            int n_cached_blocks, int n_tokens);

/* Can a sequence grow to n_tokens slots, leaving extra_blocks free? */
bool kvc_can_append(const struct kvcache *kv, const struct kvc_seq *s, int n_tokens,
                    int extra_blocks);
/* Grows the table to cover n_tokens slots; ES_EFULL (nothing changed). */
enum es_status kvc_append_slots(struct kvcache *kv, struct kvc_seq *s, int n_tokens);

/* Physical slot of token position pos of s (its block must be allocated). */
static inline int32_t kvc_slot(const struct kvc_seq *s, int block_size, int pos)
{
    return s->table[pos / block_size] * block_size + pos % block_size;
}

/* After the KV of tokens[0..n_computed) is in memory: registers the newly
 * full blocks in the prefix cache. */
void kvc_commit(struct kvcache *kv, struct kvc_seq *s, const int32_t *tokens, int n_computed);

/* Releases every block of s (table emptied). Blocks are released tail
 * first so a sequence's later blocks are evicted before its prefix. */
void kvc_free(struct kvcache *kv, struct kvc_seq *s);

/* n > 1: child (empty) shares parent's blocks covering n_tokens tokens.
 * Full blocks are shared by reference; a partial last block gets a fresh
 * block for the child and the pair is written to copy_src, copy_dst;
 * n_copies = 0 or 1: the caller must copy that KV before the child writes.
 * ES_EFULL (nothing changed) when no free block is left for the copy. */
enum es_status kvc_fork(struct kvcache *kv, const struct kvc_seq *parent, struct kvc_seq *child,
                        int n_tokens, int32_t *copy_src, int32_t *copy_dst, int *n_copies);

/*
 * Prompt-logprob side cache. Scoring requests (echo) need the logprob of
 * every prompt token, i.e. the logits at every position, which a cached
 * prefix never recomputes. So the rows computed for a block's positions are
 * kept beside the block: row j of block i is the logits at token index
 * 16i + j scoring token 16i + j + 1 (its logprob and top KVC_PLP_TOP
 * entries). Rows 0..14 depend only on tokens the block's hash covers; row
 * 15 scores the next block's first token, so its target id is stored and
 * checked. The rows vanish when the block is evicted.
 */
#define KVC_PLP_TOP 5

void kvc_plp_store(struct kvcache *kv, int32_t block, int row, int32_t target, float logprob,
                   const int32_t *top_ids, const float *top_logprobs, int n_top);
/* Reads one stored row; false if absent. top arrays: room for KVC_PLP_TOP. */
bool kvc_plp_load(const struct kvcache *kv, int32_t block, int row, float *logprob,
                  int32_t *top_ids, float *top_logprobs, int *n_top);
/* Of the n_blocks leading cached blocks of tokens (from kvc_lookup), how
 * many can serve a scoring request wanting n_top top entries: every row
 * stored with enough top entries, and the last block's row 15 scoring
 * tokens[16 * h] (which must exist: n_tokens > 16 * h). */
int kvc_plp_usable(const struct kvcache *kv, const int32_t *blocks, int n_blocks,
                   const int32_t *tokens, int n_tokens, int n_top);

/* Prefix-cache counters, in tokens, over all kvc_record_lookup calls. */
void kvc_record_lookup(struct kvcache *kv, int queried_tokens, int hit_tokens);
void kvc_counters(const struct kvcache *kv, uint64_t *queries, uint64_t *hits);

/* Debug: checks every invariant (reference counts against the given
 * tables, free list, hash table); returns false and prints on violation. */
bool kvc_check(const struct kvcache *kv, const struct kvc_seq *const *seqs, int n_seqs);

/* Reference count of a block, cached flag (tests). */
int kvc_block_ref(const struct kvcache *kv, int32_t block);
bool kvc_block_cached(const struct kvcache *kv, int32_t block);

#endif
