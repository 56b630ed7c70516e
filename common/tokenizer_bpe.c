/*
 * tokenizer_bpe.c - the BPE model: hash tables (string -> id, token pair ->
 * merge) and the merge loop for one pre-tokenized word.
 *
 * Words arrive as raw bytes. For byte-level models the vocabulary was
 * converted to raw bytes at load time, so no GPT-2 character mapping happens
 * here; for SentencePiece-style models the word is UTF-8 and characters
 * missing from the vocabulary fall back to <0xNN> tokens or to unk, exactly
 * as `tokenizers` BPE::merge_word does.
 *
 * The merge order is the one of `tokenizers` (lowest rank first, leftmost on
 * ties). Short words use a rank array rescanned after each merge; long words
 * (SentencePiece models see whole sentences as one word, a run of letters is
 * one word for every pre-tokenizer) use a heap over a linked list, so no
 * input is quadratic. Allocates nothing per word: the long-word path uses
 * the caller's struct tkb_scratch, which grows and is reused. Never touches
 * shared state (the tokenizer is read-only here).
 */
#include <stdlib.h>
#include <string.h>

#include "tokenizer_int.h"

/* ------------------------------------------------------------------ */
/* hashing                                                            */
/* ------------------------------------------------------------------ */

static inline uint64_t mix64(uint64_t x)
{
    x ^= x >> 32;
    x *= 0xD6E8FEB86659FD93ull;
    x ^= x >> 32;
    return x;
}

uint32_t tkh_hash(const char *s, size_t n)
{
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xFF51AFD7ED558CCDull);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = mix64(h ^ w) * 0x9E3779B97F4A7C15ull;
        s += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, s, n);
    h = mix64(h ^ w ^ ((uint64_t)n << 56));
    return (uint32_t)(h ^ (h >> 29));
}

enum es_status tkh_strmap_init(struct tkh_strmap *m, uint32_t n_ids)
{
    memset(m, 0, sizeof(*m));
    uint32_t cap = 1024;
    while (cap < n_ids * 2u + 16u)
        cap *= 2;
    m->slots = calloc(cap, sizeof(uint32_t));
    m->hashes = calloc(cap, sizeof(uint32_t));
    m->keys = calloc(n_ids ? n_ids : 1, sizeof(char *));
    m->key_len = calloc(n_ids ? n_ids : 1, sizeof(uint32_t));
    if (!m->slots || !m->hashes || !m->keys || !m->key_len) {
        tkh_strmap_free(m);
        return ES_ENOMEM;
    }
    m->mask = cap - 1;
    m->n_ids = n_ids;
    return ES_OK;
}

enum es_status tkh_strmap_put(struct tkh_strmap *m, uint32_t id, const char *key, uint32_t len)
{
    if (id >= m->n_ids) return ES_ERANGE;
    uint32_t h = tkh_hash(key, len);
    for (uint32_t i = h;; i++) {
        i &= m->mask;
        uint32_t s = m->slots[i];
        if (s == 0) {
            m->slots[i] = id + 1;
            m->hashes[i] = h;
            break;
        }
        uint32_t old = s - 1;
        if (m->hashes[i] == h && m->key_len[old] == len && memcmp(m->keys[old], key, len) == 0) {
            m->keys[old] = NULL; /* the later entry wins, as in a HashMap insert */
            m->slots[i] = id + 1;
            break;
        }
    }
    m->keys[id] = key;
    m->key_len[id] = len;
    return ES_OK;
}

int32_t tkh_strmap_get(const struct tkh_strmap *m, const char *key, size_t len)
{
    uint32_t h = tkh_hash(key, len);
    for (uint32_t i = h;; i++) {
        i &= m->mask;
        uint32_t s = m->slots[i];
        if (s == 0) return -1;
        uint32_t id = s - 1;
        if (m->hashes[i] == h && m->key_len[id] == len && memcmp(m->keys[id], key, len) == 0)
            return (int32_t)id;
    }
}

void tkh_strmap_free(struct tkh_strmap *m)
{
    free(m->slots);
    free(m->hashes);
    free(m->keys);
    free(m->key_len);
    memset(m, 0, sizeof(*m));
}

enum es_status tkh_pairmap_init(struct tkh_pairmap *m, size_t n)
{
    memset(m, 0, sizeof(*m));
    size_t cap = 1024;
    while (cap < n * 2 + 16)
        cap *= 2;
    m->keys = calloc(cap, sizeof(uint64_t));
    m->vals = calloc(cap, sizeof(uint64_t));
    if (!m->keys || !m->vals) {
        tkh_pairmap_free(m);
        return ES_ENOMEM;
    }
    m->mask = cap - 1;
    return ES_OK;
}

void tkh_pairmap_put(struct tkh_pairmap *m, uint32_t a, uint32_t b, uint32_t rank, uint32_t id)
{
    uint64_t key = (((uint64_t)a << 32) | b) + 1;
    uint64_t i = (key * 0x9E3779B97F4A7C15ull) >> 20;
    for (;;) {
        i &= m->mask;
        if (m->keys[i] == 0 || m->keys[i] == key) {
            m->keys[i] = key;
            m->vals[i] = ((uint64_t)rank << 32) | id;
            return;
        }
        i++;
    }
}

void tkh_pairmap_free(struct tkh_pairmap *m)
{
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof(*m));
}

/* ------------------------------------------------------------------ */
/* initial symbols                                                    */
/* ------------------------------------------------------------------ */

#define NO_RANK UINT32_MAX

/* Appends the initial symbols of word to syms (as BPE::merge_word). */
static enum es_status initial_symbols(const struct tokenizer *tok, const char *word, size_t len,
                                      struct i32vec *syms)
{
    if (iv_reserve(syms, len + 1) != ES_OK) return ES_ENOMEM;
    int32_t *out = syms->v + syms->n;
    size_t n = 0;
    if (tok->byte_level) {
        for (size_t i = 0; i < len; i++) {
            int32_t id = tok->byte_id[(unsigned char)word[i]];
            if (id >= 0) out[n++] = id;
        }
        syms->n += n;
        return ES_OK;
    }
    /* SentencePiece style: one symbol per character. A pending unk is held
     * back so that runs of unknown characters fuse (fuse_unk). */
    int32_t unk_pending = 0; /* 1 when an unk waits to be added */
    for (size_t i = 0; i < len;) {
        const unsigned char *u = (const unsigned char *)word + i;
        int cl = utf8_char_len(u, len - i);
        if (cl == 0) cl = 1; /* cannot happen: encode validates UTF-8 */
        int32_t id;
        if (cl == 1)
            id = tok->cp_id[u[0]];
        else if (cl == 2)
            id = tok->cp_id[((u[0] & 0x1Fu) << 6) | (u[1] & 0x3Fu)];
        else if (cl == 3 && u[0] < 0xE3)
            id = tok->cp_id[((u[0] & 0x0Fu) << 12) | ((u[1] & 0x3Fu) << 6) | (u[2] & 0x3Fu)];
        else
            id = tkh_strmap_get(&tok->raw_map, word + i, (size_t)cl);
        if (id >= 0) {
            if (unk_pending) {
                out[n++] = tok->unk_id;
                unk_pending = 0;
            }
            out[n++] = id;
        } else {
            bool done = false;
            if (tok->byte_fallback) {
                bool all = true;
                for (int k = 0; k < cl; k++)
                    if (tok->byte_id[(unsigned char)word[i + k]] < 0) all = false;
                if (all) {
                    for (int k = 0; k < cl; k++)
                        out[n++] = tok->byte_id[(unsigned char)word[i + k]];
                    done = true;
                }
            }
            if (!done && tok->unk_id >= 0) {
                if (unk_pending && !tok->fuse_unk) out[n++] = tok->unk_id;
                unk_pending = 1;
            }
        }
        i += (size_t)cl;
    }
    if (unk_pending) out[n++] = tok->unk_id;
    syms->n += n;
    return ES_OK;
}

/* ------------------------------------------------------------------ */
/* merging                                                            */
/* ------------------------------------------------------------------ */

#define SMALL_WORD 32

/* Rank array rescan: fine for the short words that dominate real text. */
static size_t merge_small(const struct tokenizer *tok, int32_t *sym, size_t n)
{
    uint32_t rank[SMALL_WORD];
    uint32_t nid[SMALL_WORD];
    if (n < 2) return n;
    for (size_t i = 0; i + 1 < n; i++)
        if (!tkh_pairmap_get(&tok->merges, (uint32_t)sym[i], (uint32_t)sym[i + 1], &rank[i],
                             &nid[i]))
            rank[i] = NO_RANK;
    for (;;) {
        size_t best = 0;
        uint32_t best_rank = NO_RANK;
        for (size_t i = 0; i + 1 < n; i++)
            if (rank[i] < best_rank) {
                best_rank = rank[i];
                best = i;
            }
        if (best_rank == NO_RANK) break;
        sym[best] = (int32_t)nid[best];
        /* drop symbol best+1 and pair best+1 */
        memmove(sym + best + 1, sym + best + 2, (n - best - 2) * sizeof(int32_t));
        if (best + 2 < n) {
            memmove(rank + best + 1, rank + best + 2, (n - best - 3) * sizeof(uint32_t));
            memmove(nid + best + 1, nid + best + 2, (n - best - 3) * sizeof(uint32_t));
        }
        n--;
        if (best > 0 && !tkh_pairmap_get(&tok->merges, (uint32_t)sym[best - 1], (uint32_t)sym[best],
                                         &rank[best - 1], &nid[best - 1]))
            rank[best - 1] = NO_RANK;
        if (best + 1 < n && !tkh_pairmap_get(&tok->merges, (uint32_t)sym[best],
                                             (uint32_t)sym[best + 1], &rank[best], &nid[best]))
            rank[best] = NO_RANK;
    }
    return n;
}

/* Long words: a min-heap of (merge rank, position) keys over a doubly
 * linked list of symbols, as `tokenizers` Word::merge_all, O(n log n).
 *
 * A queued key is stale once the pair at its position has changed; it is
 * then skipped when popped. `tokenizers` detects staleness by comparing the
 * merged id of the popped entry with that of the current pair; comparing
 * ranks is the same test, because the pair at a position only ever changes
 * by one of its two symbols growing, so a changed pair spells a longer
 * string and cannot merge into the same id (nor have the same rank);
 * merge_small, which keeps no stale entries at all, rests on the same fact.
 *
 * The heap is 4-ary with 8-byte keys: four children share half a cache
 * line, which about halves the cache misses of a pop on words of a
 * megabyte (figures in docs/BENCHMARKS.md). */
#define NO_POS UINT32_MAX
#define HEAP_ARITY 4

static inline uint64_t heap_key(uint32_t rank, uint32_t pos)
{
    return ((uint64_t)rank << 32) | pos;
}

static void heap_sift_up(uint64_t *heap, size_t i)
{
    uint64_t key = heap[i];
    while (i > 0) {
        size_t parent = (i - 1) / HEAP_ARITY;
        if (heap[parent] <= key) break;
        heap[i] = heap[parent];
        i = parent;
    }
    heap[i] = key;
}

static void heap_sift_down(uint64_t *heap, size_t n, size_t i)
{
    uint64_t key = heap[i];
    for (;;) {
        size_t first = i * HEAP_ARITY + 1;
        if (first >= n) break;
        size_t end = first + HEAP_ARITY < n ? first + HEAP_ARITY : n;
        size_t min = first;
        for (size_t c = first + 1; c < end; c++)
            if (heap[c] < heap[min]) min = c;
        if (heap[min] >= key) break;
        heap[i] = heap[min];
        i = min;
    }
    heap[i] = key;
}

/* Floyd's bottom-up construction of a heap from n keys in any order. */
static void heap_build(uint64_t *heap, size_t n)
{
    if (n < 2) return;
    for (size_t i = (n - 2) / HEAP_ARITY + 1; i-- > 0;)
        heap_sift_down(heap, n, i);
}

static uint64_t heap_pop(uint64_t *heap, size_t *n)
{
    uint64_t top = heap[0];
    heap[0] = heap[--(*n)];
    if (*n) heap_sift_down(heap, *n, 0);
    return top;
}

/* Grows the scratch to hold a word of n symbols (never shrinks). */
static enum es_status scratch_reserve(struct tkb_scratch *sc, size_t n)
{
    if (n > NO_POS - 1) return ES_ERANGE; /* positions are 32-bit */
    if (n > sc->syms_cap) {
        free(sc->syms);
        sc->syms = malloc(n * sizeof(*sc->syms));
        sc->syms_cap = sc->syms ? n : 0;
        if (!sc->syms) return ES_ENOMEM;
    }
    /* n - 1 initial pairs, then at most two new pairs per merge */
    size_t heap_need = 3 * n;
    if (heap_need > sc->heap_cap) {
        free(sc->heap);
        sc->heap = malloc(heap_need * sizeof(*sc->heap));
        sc->heap_cap = sc->heap ? heap_need : 0;
        if (!sc->heap) return ES_ENOMEM;
    }
    return ES_OK;
}

/* Looks up the merge of the pair starting at symbol left, records it there
 * and returns true when there is one. */
static inline bool find_pair(const struct tokenizer *tok, struct tkb_sym *s, uint32_t left)
{
    uint32_t right = s[left].next;
    s[left].pair_rank = NO_RANK;
    if (right == NO_POS) return false;
    return tkh_pairmap_get(&tok->merges, (uint32_t)s[left].id, (uint32_t)s[right].id,
                           &s[left].pair_rank, &s[left].pair_id);
}

static inline void queue_pair(const struct tokenizer *tok, struct tkb_sym *s, uint32_t left,
                              uint64_t *heap, size_t *hn)
{
    if (!find_pair(tok, s, left)) return;
    heap[*hn] = heap_key(s[left].pair_rank, left);
    heap_sift_up(heap, (*hn)++);
}

static enum es_status merge_large(const struct tokenizer *tok, struct tkb_scratch *sc, int32_t *sym,
                                  size_t *np)
{
    size_t n = *np;
    enum es_status st = scratch_reserve(sc, n);
    if (st != ES_OK) return st;
    struct tkb_sym *s = sc->syms;
    uint64_t *heap = sc->heap;
    size_t hn = 0;
    for (size_t i = 0; i < n; i++) {
        s[i].id = sym[i];
        s[i].prev = i > 0 ? (uint32_t)i - 1 : NO_POS;
        s[i].next = i + 1 < n ? (uint32_t)i + 1 : NO_POS;
    }
    for (size_t i = 0; i < n; i++)
        if (find_pair(tok, s, (uint32_t)i)) heap[hn++] = heap_key(s[i].pair_rank, (uint32_t)i);
    heap_build(heap, hn);
    while (hn) {
        uint64_t top = heap_pop(heap, &hn);
        uint32_t p = (uint32_t)top;
        if (s[p].pair_rank != (uint32_t)(top >> 32)) continue; /* stale */
        uint32_t q = s[p].next;
        s[p].id = (int32_t)s[p].pair_id;
        s[p].next = s[q].next;
        if (s[q].next != NO_POS) s[s[q].next].prev = p;
        s[q].pair_rank = NO_RANK; /* q is gone: whatever it queued is stale */
        if (s[p].prev != NO_POS) queue_pair(tok, s, s[p].prev, heap, &hn);
        queue_pair(tok, s, p, heap, &hn);
    }
    /* symbol 0 is never merged away (merges keep the left position) */
    size_t k = 0;
    for (uint32_t i = 0; i != NO_POS; i = s[i].next)
        sym[k++] = s[i].id;
    *np = k;
    return ES_OK;
}

void tkb_scratch_free(struct tkb_scratch *sc)
{
    free(sc->syms);
    free(sc->heap);
    memset(sc, 0, sizeof(*sc));
}

static enum es_status word_uncached(const struct tokenizer *tok, struct tkb_scratch *sc,
                                    const char *word, size_t len, struct i32vec *out)
{
    if (tok->ignore_merges) {
        int32_t id = tkh_strmap_get(&tok->raw_map, word, len);
        if (id >= 0) return iv_push(out, id);
    }
    size_t start = out->n;
    enum es_status st = initial_symbols(tok, word, len, out);
    if (st != ES_OK) return st;
    size_t n = out->n - start;
    if (n <= SMALL_WORD) {
        out->n = start + merge_small(tok, out->v + start, n);
        return ES_OK;
    }
    st = merge_large(tok, sc, out->v + start, &n);
    out->n = start + n;
    return st;
}

enum es_status tkb_word(const struct tokenizer *tok, struct tkb_cache *cache,
                        struct tkb_scratch *sc, const char *word, size_t len, struct i32vec *out)
{
    if (len == 0) return ES_OK;
    if (!cache || len > TKB_CACHE_WORD) return word_uncached(tok, sc, word, len, out);
    uint32_t h = tkh_hash(word, len);
    struct tkb_cache_ent *e = &cache->ent[h & (TKB_CACHE_SLOTS - 1)];
    if (e->len == len && e->hash == h && memcmp(e->word, word, len) == 0)
        return iv_append(out, e->ids, e->n_ids);
    size_t start = out->n;
    enum es_status st = word_uncached(tok, sc, word, len, out);
    if (st == ES_OK && out->n - start <= TKB_CACHE_IDS) {
        e->hash = h;
        e->len = (uint8_t)len;
        e->n_ids = (uint8_t)(out->n - start);
        memcpy(e->word, word, len);
        memcpy(e->ids, out->v + start, e->n_ids * sizeof(int32_t));
    }
    return st;
}
