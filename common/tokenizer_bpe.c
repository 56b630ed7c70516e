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
 * (SentencePiece models see whole sentences as one word) use a binary heap,
 * so no input is quadratic. Never allocates on the short-word path; never
 * touches shared state (the tokenizer is read-only here).
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

struct heap_ent {
    uint32_t rank;
    uint32_t pos;
    uint32_t nid;
};

static inline bool ent_less(const struct heap_ent *a, const struct heap_ent *b)
{
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(struct heap_ent *h, size_t *n, struct heap_ent e)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!ent_less(&e, &h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = e;
}

static struct heap_ent heap_pop(struct heap_ent *h, size_t *n)
{
    struct heap_ent top = h[0];
    struct heap_ent last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && ent_less(&h[c + 1], &h[c])) c++;
        if (!ent_less(&h[c], &last)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = last;
    return top;
}

/* Heap-driven merge over a linked list (BPE Word::merge_all). */
static enum es_status merge_large(const struct tokenizer *tok, int32_t *sym, size_t *np)
{
    size_t n = *np;
    int32_t *prev = malloc(n * sizeof(int32_t));
    int32_t *next = malloc(n * sizeof(int32_t));
    bool *dead = calloc(n, sizeof(bool));
    /* every merge pushes at most two entries, plus the initial n - 1 */
    struct heap_ent *heap = malloc(3 * n * sizeof(struct heap_ent));
    enum es_status st = ES_ENOMEM;
    if (!prev || !next || !dead || !heap) goto err;
    size_t hn = 0;
    for (size_t i = 0; i < n; i++) {
        prev[i] = (int32_t)i - 1;
        next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    for (size_t i = 0; i + 1 < n; i++) {
        struct heap_ent e = {.pos = (uint32_t)i};
        if (tkh_pairmap_get(&tok->merges, (uint32_t)sym[i], (uint32_t)sym[i + 1], &e.rank, &e.nid))
            heap_push(heap, &hn, e);
    }
    while (hn) {
        struct heap_ent top = heap_pop(heap, &hn);
        size_t p = top.pos;
        if (dead[p] || next[p] < 0) continue;
        size_t q = (size_t)next[p];
        uint32_t r, nid;
        if (!tkh_pairmap_get(&tok->merges, (uint32_t)sym[p], (uint32_t)sym[q], &r, &nid) ||
            nid != top.nid)
            continue;
        sym[p] = (int32_t)nid;
        dead[q] = true;
        next[p] = next[q];
        if (next[q] >= 0) prev[next[q]] = (int32_t)p;
        if (prev[p] >= 0) {
            struct heap_ent e = {.pos = (uint32_t)prev[p]};
            if (tkh_pairmap_get(&tok->merges, (uint32_t)sym[prev[p]], (uint32_t)sym[p], &e.rank,
                                &e.nid))
                heap_push(heap, &hn, e);
        }
        if (next[p] >= 0) {
            struct heap_ent e = {.pos = (uint32_t)p};
            if (tkh_pairmap_get(&tok->merges, (uint32_t)sym[p], (uint32_t)sym[next[p]], &e.rank,
                                &e.nid))
                heap_push(heap, &hn, e);
        }
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (!dead[i]) sym[k++] = sym[i];
    *np = k;
    st = ES_OK;
err:
    free(prev);
    free(next);
    free(dead);
    free(heap);
    return st;
}

static enum es_status word_uncached(const struct tokenizer *tok, const char *word, size_t len,
                                    struct i32vec *out)
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
    st = merge_large(tok, out->v + start, &n);
    out->n = start + n;
    return st;
}

enum es_status tkb_word(const struct tokenizer *tok, struct tkb_cache *cache, const char *word,
                        size_t len, struct i32vec *out)
{
    if (len == 0) return ES_OK;
    if (!cache || len > TKB_CACHE_WORD) return word_uncached(tok, word, len, out);
    uint32_t h = tkh_hash(word, len);
    struct tkb_cache_ent *e = &cache->ent[h & (TKB_CACHE_SLOTS - 1)];
    if (e->len == len && e->hash == h && memcmp(e->word, word, len) == 0)
        return iv_append(out, e->ids, e->n_ids);
    size_t start = out->n;
    enum es_status st = word_uncached(tok, word, len, out);
    if (st == ES_OK && out->n - start <= TKB_CACHE_IDS) {
        e->hash = h;
        e->len = (uint8_t)len;
        e->n_ids = (uint8_t)(out->n - start);
        memcpy(e->word, word, len);
        memcpy(e->ids, out->v + start, e->n_ids * sizeof(int32_t));
    }
    return st;
}
