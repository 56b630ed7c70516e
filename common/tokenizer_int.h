/*
 * tokenizer_int.h - the private layout of struct tokenizer, shared by the
 * tokenizer_*.c files and by nothing else.
 *
 * tokenizer.c        loads tokenizer.json / tokenizer_config.json, owns the
 *                    public accessors and the encode driver.
 * tokenizer_text.c   added-token splitting, normalizers, pre-tokenizers
 *                    (PCRE2 Split regex translated to Oniguruma semantics).
 * tokenizer_bpe.c    the hash tables (string -> id, pair -> merge) and the
 *                    BPE merge loop.
 * tokenizer_decode.c decoders and the incremental stream decoder.
 *
 * Internal prefixes: tkh_ (hash tables), tkt_ (text), tkb_ (BPE), tkd_
 * (decode). Everything here is immutable after tok_load returns.
 */
#ifndef ES_TOKENIZER_INT_H
#define ES_TOKENIZER_INT_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "tokenizer.h"

/* ---- string -> id hash table (open addressing, ids index into strs) ---- */
struct tkh_strmap {
    uint32_t *slots;  /* [mask + 1] id + 1, 0 = empty */
    uint32_t *hashes; /* [mask + 1] full hash of the key in the slot */
    uint32_t mask;
    const char **keys; /* [n_ids] key bytes per id (NULL: id not in map) */
    uint32_t *key_len; /* [n_ids] */
    uint32_t n_ids;
};

/* ---- (left id, right id) -> (rank, merged id) ---- */
struct tkh_pairmap {
    uint64_t *keys; /* [mask + 1] (left << 32 | right) + 1, 0 = empty */
    uint64_t *vals; /* [mask + 1] (rank << 32 | merged id) */
    uint64_t mask;
};

uint32_t tkh_hash(const char *s, size_t n);
enum es_status tkh_strmap_init(struct tkh_strmap *m, uint32_t n_ids);
/* Registers key for id (key must outlive the map). Later duplicates win. */
enum es_status tkh_strmap_put(struct tkh_strmap *m, uint32_t id, const char *key, uint32_t len);
int32_t tkh_strmap_get(const struct tkh_strmap *m, const char *key, size_t len);
void tkh_strmap_free(struct tkh_strmap *m);
enum es_status tkh_pairmap_init(struct tkh_pairmap *m, size_t n);
void tkh_pairmap_put(struct tkh_pairmap *m, uint32_t a, uint32_t b, uint32_t rank, uint32_t id);
/* Returns false when the pair has no merge. */
static inline bool tkh_pairmap_get(const struct tkh_pairmap *m, uint32_t a, uint32_t b,
                                   uint32_t *rank, uint32_t *id)
{
    uint64_t key = (((uint64_t)a << 32) | b) + 1;
    uint64_t i = (key * 0x9E3779B97F4A7C15ull) >> 20;
    for (;;) {
        i &= m->mask;
        uint64_t k = m->keys[i];
        if (k == key) {
            *rank = (uint32_t)(m->vals[i] >> 32);
            *id = (uint32_t)m->vals[i];
            return true;
        }
        if (k == 0) return false;
        i++;
    }
}
void tkh_pairmap_free(struct tkh_pairmap *m);

/* ---- normalizers (a flat list of steps) ---- */
enum tkt_norm_kind { TKN_NFC, TKN_NFD, TKN_NFKC, TKN_NFKD, TKN_PREPEND, TKN_REPLACE };
struct tkt_norm {
    enum tkt_norm_kind kind;
    char *a; /* prepend text / replace pattern */
    char *b; /* replacement */
};

/* ---- pre-tokenizer steps ---- */
enum tkt_pre_kind { TKP_SPLIT, TKP_BYTELEVEL };
enum tkt_split_behavior {
    TKS_ISOLATED,
    TKS_REMOVED,
    TKS_MERGED_PREV,
    TKS_MERGED_NEXT,
    TKS_CONTIGUOUS
};
struct tkt_pre {
    enum tkt_pre_kind kind;
    pcre2_code *re; /* Split regex, or the GPT-2 regex for ByteLevel(use_regex) */
    enum tkt_split_behavior behavior;
    bool invert;
    bool add_prefix_space; /* ByteLevel */
};

/* ---- decoder steps ---- */
enum tkd_kind { TKD_BYTELEVEL, TKD_REPLACE, TKD_BYTEFALLBACK, TKD_FUSE, TKD_STRIP };
struct tkd_step {
    enum tkd_kind kind;
    char *a, *b;     /* Replace pattern / content */
    char *content;   /* Strip: the character stripped (UTF-8) */
    int start, stop; /* Strip counts */
};

#define TK_CP_DIRECT 0x3000 /* code points below this get a direct id table */

struct tok_added {
    int32_t id;
    char *content;
    uint32_t len;
    bool special, lstrip, rstrip, single_word, normalized;
};

struct tokenizer {
    /* model vocabulary: id -> piece as written in tokenizer.json */
    char **pieces;               /* [n_pieces] NUL-terminated; NULL for holes */
    int32_t n_pieces;            /* max id + 1 over vocab and added tokens */
    int32_t n_model;             /* max model vocab id + 1 */
    struct tkh_strmap piece_map; /* exact piece string -> id (vocab + added) */

    /* BPE */
    bool byte_level;           /* pieces are GPT-2 byte-mapped */
    uint16_t byte_to_cp[256];  /* GPT-2 bytes_to_unicode */
    int16_t cp_to_byte[512];   /* inverse, -1 where unmapped (all mapped cps < 512) */
    char *raw_arena;           /* raw byte forms of the pieces */
    struct tkh_strmap raw_map; /* raw bytes -> model id */
    struct tkh_pairmap merges;
    int32_t byte_id[256]; /* byte-level: id of each single byte; fallback: <0xNN> */
    int32_t *cp_id;       /* [TK_CP_DIRECT] not byte-level: id of a one-char piece, or -1 */
    bool ignore_merges, byte_fallback, fuse_unk;
    /* SentencePiece style without pre-tokenizer, and no vocabulary piece has
     * a U+2581 after another character: words may be split before each
     * such U+2581 without changing the result (no merge can cross it). */
    bool split_metaspace;
    int32_t unk_id; /* -1 when none */

    /* added tokens, sorted by first byte then length descending */
    struct tok_added *added;
    int n_added;
    uint8_t added_first[256]; /* 1 when some raw-matched token starts with that byte */
    uint8_t added_first_norm[256];
    bool has_normalized_added;
    bool *is_special; /* [n_pieces] */
    bool *is_added;   /* [n_pieces] */

    struct tkt_norm *norms;
    int n_norms;
    struct tkt_pre *pres;
    int n_pres;
    struct tkd_step *decs;
    int n_decs; /* 0 with has_decoder = false: pieces joined by ' ' */
    bool has_decoder;

    /* post-processor: ids added before / after the sequence */
    int32_t pre_ids[8];
    int n_pre;
    int32_t post_ids[8];
    int n_post;

    /* tokenizer_config.json */
    char *chat_template;
    char *bos_token, *eos_token;
    int32_t bos_id, eos_id;
};

/* tokenizer_text.c */
/* Compiles a Split pattern (NULL: the GPT-2 ByteLevel regex) into pre->re. */
enum es_status tkt_build_pre(const char *pattern, bool is_literal, struct tkt_pre *pre,
                             struct es_err *err);
void tkt_free(struct tokenizer *tok);
/* Encodes text (valid UTF-8) without post-processing; appends to out. */
enum es_status tkt_encode(const struct tokenizer *tok, const char *text, size_t len,
                          struct i32vec *out);

/* tokenizer_unicode.c: PCRE2 class items for letters / numbers that the
 * Oniguruma tables of `tokenizers` know and PCRE2's may not. */
extern const char tk_extra_L[];
extern const char tk_extra_N[];
/* Canonical combining classes, decompositions and composites as the Rust
 * `tokenizers` normalizers apply them (sorted by code point / pair). */
struct tk_ccc_range {
    uint32_t lo, hi;
    uint8_t ccc;
};
struct tk_decomp {
    uint32_t cp;
    uint16_t off; /* into tk_decomp_data */
    uint8_t len;
};
struct tk_comp {
    uint32_t a, b, c;
};
extern const struct tk_ccc_range tk_ccc[];
extern const size_t tk_n_ccc;
extern const uint32_t tk_decomp_data[];
extern const struct tk_decomp tk_decomp[];
extern const size_t tk_n_decomp;
extern const struct tk_comp tk_comp[];
extern const size_t tk_n_comp;

/* tokenizer_nfc.c: canonical normalization with the tables above. Appends
 * NFC (compose) or NFD of s to out. */
enum es_status tkn_canonical(const char *s, size_t n, bool compose, struct strbuf *out);

/* tokenizer_bpe.c: BPE on one pre-tokenized word (raw bytes). */
/* An optional per-call memo of short words -> ids (direct mapped). */
#define TKB_CACHE_SLOTS 4096
#define TKB_CACHE_WORD 22
#define TKB_CACHE_IDS 6
struct tkb_cache_ent {
    uint32_t hash;
    uint8_t len; /* 0 = empty */
    uint8_t n_ids;
    char word[TKB_CACHE_WORD];
    int32_t ids[TKB_CACHE_IDS];
};
struct tkb_cache {
    struct tkb_cache_ent ent[TKB_CACHE_SLOTS];
};
/* Scratch for long words, grown as needed and reused across the words of
 * one encode call (start zeroed, release with tkb_scratch_free). */
struct tkb_sym {
    int32_t id;
    uint32_t prev, next; /* linked list over initial positions; UINT32_MAX at the ends */
    uint32_t pair_rank;  /* merge rank of (this, next); UINT32_MAX when none */
    uint32_t pair_id;    /* the id that merge makes */
};
struct tkb_scratch {
    struct tkb_sym *syms; /* [syms_cap] one per initial symbol */
    size_t syms_cap;
    uint64_t *heap; /* [heap_cap] queued pairs, rank << 32 | position */
    size_t heap_cap;
};
void tkb_scratch_free(struct tkb_scratch *sc);
/* cache may be NULL; sc may not. */
enum es_status tkb_word(const struct tokenizer *tok, struct tkb_cache *cache,
                        struct tkb_scratch *sc, const char *word, size_t len, struct i32vec *out);

/* tokenizer_decode.c */
/* Decodes ids; at_start=false decodes a continuation (no leading strip). */
enum es_status tkd_decode(const struct tokenizer *tok, const int32_t *ids, size_t n,
                          bool skip_special, bool at_start, struct strbuf *out);

/* Runs the normalizer chain over s into out (used for normalized added
 * tokens at load time). */
enum es_status tkt_normalize_str(const struct tokenizer *tok, const char *s, size_t n,
                                 struct strbuf *out);

#endif
