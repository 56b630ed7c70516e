/*
 * tokenizer.c - loads a Hugging Face tokenizer.json (BPE model) and its
 * tokenizer_config.json into an immutable struct tokenizer, and owns the
 * public tok_* entry points for encoding and the accessors.
 *
 * Everything tokenizer.json declares is either understood or refused at
 * load time with a message naming the component ("unsupported normalizer
 * 'Lowercase'"), so that a loaded tokenizer never silently disagrees with
 * the Python `tokenizers` library. The text pipeline lives in
 * tokenizer_text.c, the model in tokenizer_bpe.c, decoding in
 * tokenizer_decode.c; this file only builds their tables.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "tokenizer_int.h"

#define MAX_VOCAB (1 << 24)

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

/* GPT-2 bytes_to_unicode: printable Latin-1 bytes map to themselves, the
 * others to 256, 257, ... in byte order. */
static void build_byte_map(struct tokenizer *tok)
{
    int next = 256;
    for (int i = 0; i < 512; i++)
        tok->cp_to_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        bool keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        int cp = keep ? b : next++;
        tok->byte_to_cp[b] = (uint16_t)cp;
        tok->cp_to_byte[cp] = (int16_t)b;
    }
}

/* Converts a vocabulary piece to the raw bytes the model sees. For
 * byte-level models every character must be one of the 256 mapped ones;
 * returns false otherwise. */
static bool piece_to_raw(const struct tokenizer *tok, const char *piece, struct strbuf *out)
{
    sb_clear(out);
    if (!tok->byte_level) return sb_puts(out, piece) == ES_OK;
    size_t n = strlen(piece);
    for (size_t i = 0; i < n;) {
        const unsigned char *u = (const unsigned char *)piece + i;
        int l = utf8_char_len(u, n - i);
        if (l == 0) return false;
        uint32_t cp = l == 1 ? u[0] : (u[0] & (0xFF >> (l + 1)));
        for (int k = 1; k < l; k++)
            cp = (cp << 6) | (u[k] & 0x3F);
        if (cp >= 512 || tok->cp_to_byte[cp] < 0) return false;
        if (sb_putc(out, (char)tok->cp_to_byte[cp]) != ES_OK) return false;
        i += (size_t)l;
    }
    return true;
}

/* ------------------------------------------------------------------ */
/* components                                                         */
/* ------------------------------------------------------------------ */

static const char *type_of(const cJSON *o)
{
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "type");
    return cJSON_IsString(t) ? t->valuestring : "";
}

static const char *str_pattern(const cJSON *o, const char *what, bool *is_regex, struct es_err *err)
{
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "pattern");
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(p, "String");
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(p, "Regex");
    if (cJSON_IsString(s)) {
        *is_regex = false;
        return s->valuestring;
    }
    if (cJSON_IsString(r)) {
        *is_regex = true;
        return r->valuestring;
    }
    es_fail(err, ES_EFORMAT, "%s: 'pattern' must hold a String or a Regex", what);
    return NULL;
}

static enum es_status add_normalizer(struct tokenizer *tok, const cJSON *o, struct es_err *err)
{
    if (!o || cJSON_IsNull(o)) return ES_OK;
    const char *type = type_of(o);
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(o, "normalizers");
        const cJSON *it;
        cJSON_ArrayForEach(it, list)
        {
            enum es_status st = add_normalizer(tok, it, err);
            if (st != ES_OK) return st;
        }
        return ES_OK;
    }
    struct tkt_norm nm = {0};
    if (!strcmp(type, "NFC"))
        nm.kind = TKN_NFC;
    else if (!strcmp(type, "NFD"))
        nm.kind = TKN_NFD;
    else if (!strcmp(type, "NFKC"))
        nm.kind = TKN_NFKC;
    else if (!strcmp(type, "NFKD"))
        nm.kind = TKN_NFKD;
    else if (!strcmp(type, "Prepend")) {
        const char *p;
        if (js_get_str(o, "prepend", true, &p, err) != ES_OK) return ES_EFORMAT;
        nm.kind = TKN_PREPEND;
        nm.a = xstrdup(p);
        if (!nm.a) return ES_ENOMEM;
    } else if (!strcmp(type, "Replace")) {
        bool is_regex;
        const char *pat = str_pattern(o, "Replace normalizer", &is_regex, err);
        const char *content;
        if (!pat) return ES_EFORMAT;
        if (is_regex) return es_fail(err, ES_EUNSUPPORTED, "Replace normalizer with a Regex");
        if (js_get_str(o, "content", true, &content, err) != ES_OK) return ES_EFORMAT;
        nm.kind = TKN_REPLACE;
        nm.a = xstrdup(pat);
        nm.b = xstrdup(content);
        if (!nm.a || !nm.b) {
            free(nm.a);
            free(nm.b);
            return ES_ENOMEM;
        }
    } else {
        return es_fail(err, ES_EUNSUPPORTED, "unsupported normalizer '%s'", type);
    }
#ifndef HAVE_UTF8PROC
    if (nm.kind == TKN_NFKC || nm.kind == TKN_NFKD)
        return es_fail(err, ES_EUNSUPPORTED,
                       "normalizer '%s' needs utf8proc: rebuild with libutf8proc", type);
#endif
    struct tkt_norm *grown = realloc(tok->norms, (size_t)(tok->n_norms + 1) * sizeof(*grown));
    if (!grown) {
        free(nm.a);
        free(nm.b);
        return ES_ENOMEM;
    }
    tok->norms = grown;
    tok->norms[tok->n_norms++] = nm;
    return ES_OK;
}

static enum es_status add_pretokenizer(struct tokenizer *tok, const cJSON *o, struct es_err *err)
{
    if (!o || cJSON_IsNull(o)) return ES_OK;
    const char *type = type_of(o);
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(o, "pretokenizers");
        const cJSON *it;
        cJSON_ArrayForEach(it, list)
        {
            enum es_status st = add_pretokenizer(tok, it, err);
            if (st != ES_OK) return st;
        }
        return ES_OK;
    }
    if (tok->n_pres >= 8) return es_fail(err, ES_EUNSUPPORTED, "more than 8 pre-tokenizers");
    struct tkt_pre pre = {0};
    enum es_status st = ES_OK;
    if (!strcmp(type, "Split")) {
        bool is_regex, invert = false;
        const char *pat = str_pattern(o, "Split", &is_regex, err);
        const char *behavior = "Isolated";
        if (!pat) return ES_EFORMAT;
        if (js_get_str(o, "behavior", false, &behavior, err) != ES_OK ||
            js_get_bool(o, "invert", false, &invert, err) != ES_OK)
            return ES_EFORMAT;
        pre.kind = TKP_SPLIT;
        pre.invert = invert;
        if (!strcmp(behavior, "Isolated"))
            pre.behavior = TKS_ISOLATED;
        else if (!strcmp(behavior, "Removed"))
            pre.behavior = TKS_REMOVED;
        else
            return es_fail(err, ES_EUNSUPPORTED, "Split behavior '%s' is not supported", behavior);
        st = tkt_build_pre(pat, !is_regex, &pre, err);
    } else if (!strcmp(type, "ByteLevel")) {
        bool use_regex = true, prefix = false;
        if (js_get_bool(o, "use_regex", false, &use_regex, err) != ES_OK ||
            js_get_bool(o, "add_prefix_space", false, &prefix, err) != ES_OK)
            return ES_EFORMAT;
        pre.kind = TKP_BYTELEVEL;
        pre.add_prefix_space = prefix;
        tok->byte_level = true;
        if (use_regex) st = tkt_build_pre(NULL, false, &pre, err);
    } else {
        return es_fail(err, ES_EUNSUPPORTED, "unsupported pre-tokenizer '%s'", type);
    }
    if (st != ES_OK) return st;
    tok->pres[tok->n_pres++] = pre;
    return ES_OK;
}

static enum es_status add_decoder(struct tokenizer *tok, const cJSON *o, struct es_err *err)
{
    if (!o || cJSON_IsNull(o)) return ES_OK;
    tok->has_decoder = true;
    const char *type = type_of(o);
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(o, "decoders");
        const cJSON *it;
        cJSON_ArrayForEach(it, list)
        {
            enum es_status st = add_decoder(tok, it, err);
            if (st != ES_OK) return st;
        }
        return ES_OK;
    }
    struct tkd_step d = {0};
    if (!strcmp(type, "ByteLevel"))
        d.kind = TKD_BYTELEVEL;
    else if (!strcmp(type, "ByteFallback"))
        d.kind = TKD_BYTEFALLBACK;
    else if (!strcmp(type, "Fuse"))
        d.kind = TKD_FUSE;
    else if (!strcmp(type, "Replace")) {
        bool is_regex;
        const char *pat = str_pattern(o, "Replace decoder", &is_regex, err);
        const char *content;
        if (!pat) return ES_EFORMAT;
        if (is_regex) return es_fail(err, ES_EUNSUPPORTED, "Replace decoder with a Regex");
        if (js_get_str(o, "content", true, &content, err) != ES_OK) return ES_EFORMAT;
        d.kind = TKD_REPLACE;
        d.a = xstrdup(pat);
        d.b = xstrdup(content);
        if (!d.a || !d.b) {
            free(d.a);
            free(d.b);
            return ES_ENOMEM;
        }
    } else if (!strcmp(type, "Strip")) {
        const char *content;
        int64_t start = 0, stop = 0;
        if (js_get_str(o, "content", true, &content, err) != ES_OK ||
            js_get_int(o, "start", false, 0, 1 << 20, &start, err) != ES_OK ||
            js_get_int(o, "stop", false, 0, 1 << 20, &stop, err) != ES_OK)
            return ES_EFORMAT;
        d.kind = TKD_STRIP;
        d.content = xstrdup(content);
        if (!d.content) return ES_ENOMEM;
        d.start = (int)start;
        d.stop = (int)stop;
    } else {
        return es_fail(err, ES_EUNSUPPORTED, "unsupported decoder '%s'", type);
    }
    struct tkd_step *grown = realloc(tok->decs, (size_t)(tok->n_decs + 1) * sizeof(*grown));
    if (!grown) {
        free(d.a);
        free(d.b);
        free(d.content);
        return ES_ENOMEM;
    }
    tok->decs = grown;
    tok->decs[tok->n_decs++] = d;
    return ES_OK;
}

static enum es_status push_special(int32_t *arr, int *n, int32_t id, struct es_err *err)
{
    if (*n >= 8) return es_fail(err, ES_EUNSUPPORTED, "post-processor adds more than 8 tokens");
    arr[(*n)++] = id;
    return ES_OK;
}

static enum es_status add_postprocessor(struct tokenizer *tok, const cJSON *o, struct es_err *err)
{
    if (!o || cJSON_IsNull(o)) return ES_OK;
    const char *type = type_of(o);
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(o, "processors");
        const cJSON *it;
        cJSON_ArrayForEach(it, list)
        {
            enum es_status st = add_postprocessor(tok, it, err);
            if (st != ES_OK) return st;
        }
        return ES_OK;
    }
    if (!strcmp(type, "ByteLevel")) return ES_OK; /* only adjusts offsets */
    if (!strcmp(type, "TemplateProcessing")) {
        const cJSON *single = cJSON_GetObjectItemCaseSensitive(o, "single");
        const cJSON *specials = cJSON_GetObjectItemCaseSensitive(o, "special_tokens");
        bool after = false;
        const cJSON *it;
        if (!cJSON_IsArray(single))
            return es_fail(err, ES_EFORMAT, "TemplateProcessing: no 'single'");
        cJSON_ArrayForEach(it, single)
        {
            const cJSON *sp = cJSON_GetObjectItemCaseSensitive(it, "SpecialToken");
            if (cJSON_GetObjectItemCaseSensitive(it, "Sequence")) {
                after = true;
                continue;
            }
            const char *name;
            if (!sp || js_get_str(sp, "id", true, &name, err) != ES_OK)
                return es_fail(err, ES_EFORMAT, "TemplateProcessing: bad 'single' item");
            const cJSON *def = cJSON_GetObjectItemCaseSensitive(specials, name);
            const cJSON *ids = cJSON_GetObjectItemCaseSensitive(def, "ids");
            const cJSON *idv;
            if (!cJSON_IsArray(ids))
                return es_fail(err, ES_EFORMAT, "TemplateProcessing: special token '%s' undefined",
                               name);
            cJSON_ArrayForEach(idv, ids)
            {
                int64_t id;
                if (js_as_int(idv, "special token id", 0, MAX_VOCAB - 1, &id, err) != ES_OK)
                    return ES_EFORMAT;
                enum es_status st =
                    after ? push_special(tok->post_ids, &tok->n_post, (int32_t)id, err)
                          : push_special(tok->pre_ids, &tok->n_pre, (int32_t)id, err);
                if (st != ES_OK) return st;
            }
        }
        return ES_OK;
    }
    if (!strcmp(type, "RobertaProcessing") || !strcmp(type, "BertProcessing")) {
        const cJSON *cls = cJSON_GetObjectItemCaseSensitive(o, "cls");
        const cJSON *sep = cJSON_GetObjectItemCaseSensitive(o, "sep");
        const cJSON *cid = cJSON_GetArrayItem(cls, 1), *sid = cJSON_GetArrayItem(sep, 1);
        int64_t c, s;
        if (js_as_int(cid, "cls id", 0, MAX_VOCAB - 1, &c, err) != ES_OK ||
            js_as_int(sid, "sep id", 0, MAX_VOCAB - 1, &s, err) != ES_OK)
            return ES_EFORMAT;
        if (push_special(tok->pre_ids, &tok->n_pre, (int32_t)c, err) != ES_OK)
            return ES_EUNSUPPORTED;
        return push_special(tok->post_ids, &tok->n_post, (int32_t)s, err);
    }
    return es_fail(err, ES_EUNSUPPORTED, "unsupported post-processor '%s'", type);
}

/* ------------------------------------------------------------------ */
/* model and added tokens                                             */
/* ------------------------------------------------------------------ */

static enum es_status load_vocab(struct tokenizer *tok, const cJSON *model, const cJSON *added,
                                 struct es_err *err)
{
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *it;
    if (!cJSON_IsObject(vocab)) return es_fail(err, ES_EFORMAT, "model.vocab must be an object");
    int32_t max_id = -1;
    cJSON_ArrayForEach(it, vocab)
    {
        int64_t id;
        if (js_as_int(it, "vocab id", 0, MAX_VOCAB - 1, &id, err) != ES_OK) return ES_EFORMAT;
        if (id > max_id) max_id = (int32_t)id;
    }
    tok->n_model = max_id + 1;
    int32_t n = tok->n_model;
    int n_added = cJSON_GetArraySize(added);
    cJSON_ArrayForEach(it, added)
    {
        int64_t id;
        if (js_get_int(it, "id", true, 0, MAX_VOCAB - 1, &id, err) != ES_OK) return ES_EFORMAT;
        if (id + 1 > n) n = (int32_t)id + 1;
    }
    tok->n_pieces = n;
    tok->pieces = calloc((size_t)n, sizeof(char *));
    tok->is_special = calloc((size_t)n, sizeof(bool));
    tok->is_added = calloc((size_t)n, sizeof(bool));
    tok->added = calloc((size_t)(n_added ? n_added : 1), sizeof(struct tok_added));
    if (!tok->pieces || !tok->is_special || !tok->is_added || !tok->added) return ES_ENOMEM;

    /* raw forms of the model vocabulary, in one arena */
    struct strbuf raw = {0}, arena = {0};
    size_t *raw_off = malloc((size_t)(n ? n : 1) * sizeof(size_t));
    uint32_t *raw_len = calloc((size_t)(n ? n : 1), sizeof(uint32_t));
    bool *has_raw = calloc((size_t)(n ? n : 1), sizeof(bool));
    enum es_status st = ES_ENOMEM;
    if (!raw_off || !raw_len || !has_raw) goto out;
    cJSON_ArrayForEach(it, vocab)
    {
        int32_t id = (int32_t)it->valuedouble;
        free(tok->pieces[id]);
        tok->pieces[id] = xstrdup(it->string);
        if (!tok->pieces[id]) goto out;
        if (piece_to_raw(tok, it->string, &raw)) {
            raw_off[id] = arena.len;
            raw_len[id] = (uint32_t)raw.len;
            has_raw[id] = true;
            if (sb_append(&arena, raw.s ? raw.s : "", raw.len) != ES_OK) goto out;
        }
    }
    tok->raw_arena = sb_steal(&arena);
    if (!tok->raw_arena) goto out;
    if ((st = tkh_strmap_init(&tok->raw_map, (uint32_t)n)) != ES_OK) goto out;
    for (int32_t id = 0; id < tok->n_model; id++)
        if (has_raw[id])
            tkh_strmap_put(&tok->raw_map, (uint32_t)id, tok->raw_arena + raw_off[id], raw_len[id]);

    /* added tokens */
    cJSON_ArrayForEach(it, added)
    {
        struct tok_added *a = &tok->added[tok->n_added];
        int64_t id;
        const char *content;
        bool special = false, lstrip = false, rstrip = false, single = false, normalized;
        if (js_get_int(it, "id", true, 0, MAX_VOCAB - 1, &id, err) != ES_OK ||
            js_get_str(it, "content", true, &content, err) != ES_OK ||
            js_get_bool(it, "special", false, &special, err) != ES_OK) {
            st = ES_EFORMAT;
            goto out;
        }
        normalized = !special; /* the AddedToken default */
        if (js_get_bool(it, "lstrip", false, &lstrip, err) != ES_OK ||
            js_get_bool(it, "rstrip", false, &rstrip, err) != ES_OK ||
            js_get_bool(it, "single_word", false, &single, err) != ES_OK ||
            js_get_bool(it, "normalized", false, &normalized, err) != ES_OK) {
            st = ES_EFORMAT;
            goto out;
        }
        st = ES_ENOMEM;
        a->id = (int32_t)id;
        a->special = special;
        a->lstrip = lstrip;
        a->rstrip = rstrip;
        a->single_word = single;
        a->normalized = normalized;
        tok->is_special[id] = special;
        tok->is_added[id] = true;
        tok->n_added++;
        /* a normalized token is matched, and decoded, in its normalized form */
        if (normalized) {
            struct strbuf nb = {0};
            if (tkt_normalize_str(tok, content, strlen(content), &nb) != ES_OK) goto out;
            a->content = sb_steal(&nb);
        } else {
            a->content = xstrdup(content);
        }
        if (!a->content) goto out;
        free(tok->pieces[id]);
        tok->pieces[id] = xstrdup(a->content);
        if (!tok->pieces[id]) goto out;
        a->len = (uint32_t)strlen(a->content);
        if (a->len == 0) continue;
        if (normalized) {
            tok->added_first_norm[(unsigned char)a->content[0]] = 1;
            tok->has_normalized_added = true;
        } else {
            tok->added_first[(unsigned char)a->content[0]] = 1;
        }
    }
    if ((st = tkh_strmap_init(&tok->piece_map, (uint32_t)n)) != ES_OK) goto out;
    for (int32_t id = 0; id < n; id++)
        if (tok->pieces[id] && !tok->is_added[id])
            tkh_strmap_put(&tok->piece_map, (uint32_t)id, tok->pieces[id],
                           (uint32_t)strlen(tok->pieces[id]));
    for (int32_t id = 0; id < n; id++)
        if (tok->pieces[id] && tok->is_added[id])
            tkh_strmap_put(&tok->piece_map, (uint32_t)id, tok->pieces[id],
                           (uint32_t)strlen(tok->pieces[id]));
    st = ES_OK;
out:
    free(raw_off);
    free(raw_len);
    free(has_raw);
    sb_free(&raw);
    sb_free(&arena);
    return st;
}

static int32_t raw_lookup(const struct tokenizer *tok, const char *piece, struct strbuf *tmp)
{
    if (!piece_to_raw(tok, piece, tmp)) return -1;
    return tkh_strmap_get(&tok->raw_map, sb_cstr(tmp), tmp->len);
}

static enum es_status load_merges(struct tokenizer *tok, const cJSON *model, struct es_err *err)
{
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    const cJSON *it;
    struct strbuf a = {0}, b = {0}, ab = {0};
    enum es_status st;
    if (merges && !cJSON_IsArray(merges))
        return es_fail(err, ES_EFORMAT, "model.merges must be a list");
    if ((st = tkh_pairmap_init(&tok->merges, (size_t)cJSON_GetArraySize(merges))) != ES_OK)
        return st;
    uint32_t rank = 0;
    cJSON_ArrayForEach(it, merges)
    {
        const char *left, *right;
        char *split = NULL;
        if (cJSON_IsString(it)) {
            split = xstrdup(it->valuestring);
            if (!split) {
                st = ES_ENOMEM;
                goto out;
            }
            char *sp = strchr(split, ' ');
            if (!sp || strchr(sp + 1, ' ')) {
                st = es_fail(err, ES_EFORMAT, "merge %u '%s' is not 'a b'", rank, it->valuestring);
                free(split);
                goto out;
            }
            *sp = '\0';
            left = split;
            right = sp + 1;
        } else if (cJSON_GetArraySize(it) == 2 && cJSON_IsString(cJSON_GetArrayItem(it, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(it, 1))) {
            left = cJSON_GetArrayItem(it, 0)->valuestring;
            right = cJSON_GetArrayItem(it, 1)->valuestring;
        } else {
            st = es_fail(err, ES_EFORMAT, "merge %u is neither 'a b' nor [a, b]", rank);
            goto out;
        }
        int32_t ia = raw_lookup(tok, left, &a), ib = raw_lookup(tok, right, &b);
        sb_clear(&ab);
        int32_t iab = -1;
        if (ia >= 0 && ib >= 0 && sb_append(&ab, sb_cstr(&a), a.len) == ES_OK &&
            sb_append(&ab, sb_cstr(&b), b.len) == ES_OK)
            iab = tkh_strmap_get(&tok->raw_map, sb_cstr(&ab), ab.len);
        if (iab < 0) {
            st = es_fail(err, ES_EFORMAT, "merge %u '%s' '%s': token not in vocabulary", rank, left,
                         right);
            free(split);
            goto out;
        }
        free(split);
        tkh_pairmap_put(&tok->merges, (uint32_t)ia, (uint32_t)ib, rank, (uint32_t)iab);
        rank++;
    }
    st = ES_OK;
out:
    sb_free(&a);
    sb_free(&b);
    sb_free(&ab);
    return st;
}

static enum es_status load_model(struct tokenizer *tok, const cJSON *root, struct es_err *err)
{
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    const char *type = type_of(model);
    enum es_status st;
    if (!cJSON_IsObject(model)) return es_fail(err, ES_EFORMAT, "no 'model' object");
    if (strcmp(type, "BPE") && !(type[0] == '\0' && cJSON_HasObjectItem(model, "merges")))
        return es_fail(err, ES_EUNSUPPORTED, "unsupported model type '%s' (only BPE)", type);
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (cJSON_IsNumber(dropout) && dropout->valuedouble > 0.0)
        return es_fail(err, ES_EUNSUPPORTED, "BPE dropout is not supported");
    const char *prefix = NULL, *suffix = NULL, *unk = NULL;
    if (js_get_str(model, "continuing_subword_prefix", false, &prefix, err) != ES_OK ||
        js_get_str(model, "end_of_word_suffix", false, &suffix, err) != ES_OK ||
        js_get_str(model, "unk_token", false, &unk, err) != ES_OK ||
        js_get_bool(model, "ignore_merges", false, &tok->ignore_merges, err) != ES_OK ||
        js_get_bool(model, "byte_fallback", false, &tok->byte_fallback, err) != ES_OK ||
        js_get_bool(model, "fuse_unk", false, &tok->fuse_unk, err) != ES_OK)
        return ES_EFORMAT;
    if ((prefix && prefix[0]) || (suffix && suffix[0]))
        return es_fail(err, ES_EUNSUPPORTED, "BPE continuing_subword_prefix / end_of_word_suffix");
    if ((st = load_vocab(tok, model, added, err)) != ES_OK) return st;
    /* U+2581 must be a known symbol, or unknown-character runs (fuse_unk)
     * could span the split */
    if (!tok->byte_level && tok->n_pres == 0 &&
        tkh_strmap_get(&tok->raw_map, "\xE2\x96\x81", 3) >= 0) {
        tok->split_metaspace = true;
        for (int32_t id = 0; id < tok->n_model && tok->split_metaspace; id++) {
            const char *p = tok->pieces[id];
            const char *hit = p ? strstr(p, "\xE2\x96\x81") : NULL;
            while (hit && tok->split_metaspace) {
                /* only a run of U+2581 from the start of the piece is allowed */
                for (const char *q = p; q < hit; q += 3)
                    if (memcmp(q, "\xE2\x96\x81", 3) != 0) tok->split_metaspace = false;
                hit = strstr(hit + 3, "\xE2\x96\x81");
            }
        }
    }
    if ((st = load_merges(tok, model, err)) != ES_OK) return st;
    struct strbuf tmp = {0};
    tok->unk_id = unk ? raw_lookup(tok, unk, &tmp) : -1;
    for (int b = 0; b < 256; b++) {
        if (tok->byte_level) {
            char c = (char)b;
            tok->byte_id[b] = tkh_strmap_get(&tok->raw_map, &c, 1);
        } else if (tok->byte_fallback) {
            char name[8];
            snprintf(name, sizeof(name), "<0x%02X>", b);
            tok->byte_id[b] = tkh_strmap_get(&tok->raw_map, name, strlen(name));
        } else {
            tok->byte_id[b] = -1;
        }
    }
    sb_free(&tmp);
    if (!tok->byte_level) {
        tok->cp_id = malloc(TK_CP_DIRECT * sizeof(int32_t));
        if (!tok->cp_id) return ES_ENOMEM;
        for (uint32_t cp = 0; cp < TK_CP_DIRECT; cp++) {
            char b[4];
            int n = utf8_encode(cp, b);
            tok->cp_id[cp] = tkh_strmap_get(&tok->raw_map, b, (size_t)n);
        }
    }
    return ES_OK;
}

/* ------------------------------------------------------------------ */
/* tokenizer_config.json                                              */
/* ------------------------------------------------------------------ */

static enum es_status config_token(const cJSON *cfg, const char *field, char **out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, field);
    if (cJSON_IsObject(v)) v = cJSON_GetObjectItemCaseSensitive(v, "content");
    if (!cJSON_IsString(v)) return ES_OK;
    *out = xstrdup(v->valuestring);
    return *out ? ES_OK : ES_ENOMEM;
}

static enum es_status load_config(struct tokenizer *tok, const char *dir, bool has_post,
                                  struct es_err *err)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/tokenizer_config.json", dir);
    FILE *f = fopen(path, "rb");
    if (!f) return ES_OK; /* optional */
    fclose(f);
    cJSON *cfg = js_parse_file(path, err);
    if (!cfg) return es_wrap(err, ES_EFORMAT, "tokenizer_config.json");
    enum es_status st = ES_ENOMEM;
    if (config_token(cfg, "bos_token", &tok->bos_token) != ES_OK ||
        config_token(cfg, "eos_token", &tok->eos_token) != ES_OK)
        goto out;
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template");
    if (cJSON_IsArray(ct)) { /* [{"name": "default", "template": ...}, ...] */
        const cJSON *it, *pick = NULL;
        cJSON_ArrayForEach(it, ct)
        {
            const cJSON *name = cJSON_GetObjectItemCaseSensitive(it, "name");
            if (!pick || (cJSON_IsString(name) && !strcmp(name->valuestring, "default"))) pick = it;
        }
        ct = cJSON_GetObjectItemCaseSensitive(pick, "template");
    }
    if (cJSON_IsString(ct) && !(tok->chat_template = xstrdup(ct->valuestring))) goto out;
    tok->bos_id = tok->bos_token ? tok_piece_to_id(tok, tok->bos_token) : -1;
    tok->eos_id = tok->eos_token ? tok_piece_to_id(tok, tok->eos_token) : -1;
    if (!has_post) { /* no post-processor: the config's add_bos/add_eos decide */
        bool add_bos = false, add_eos = false;
        js_get_bool(cfg, "add_bos_token", false, &add_bos, NULL);
        js_get_bool(cfg, "add_eos_token", false, &add_eos, NULL);
        if (add_bos && tok->bos_id >= 0) tok->pre_ids[tok->n_pre++] = tok->bos_id;
        if (add_eos && tok->eos_id >= 0) tok->post_ids[tok->n_post++] = tok->eos_id;
    }
    st = ES_OK;
out:
    cJSON_Delete(cfg);
    return st;
}

/* ------------------------------------------------------------------ */
/* public                                                             */
/* ------------------------------------------------------------------ */

enum es_status tok_load(const char *dir, struct tokenizer **out, struct es_err *err)
{
    char path[4096];
    *out = NULL;
    snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
    cJSON *root = js_parse_file(path, err);
    if (!root) return es_wrap(err, ES_EFORMAT, "%s", path);
    enum es_status st = ES_ENOMEM;
    struct tokenizer *tok = calloc(1, sizeof(*tok));
    if (!tok) goto err;
    tok->pres = calloc(8, sizeof(struct tkt_pre));
    if (!tok->pres) goto err;
    tok->unk_id = tok->bos_id = tok->eos_id = -1;
    build_byte_map(tok);
    /* the pre-tokenizer decides byte_level, which the vocabulary needs */
    if ((st = add_normalizer(tok, cJSON_GetObjectItemCaseSensitive(root, "normalizer"), err)) ||
        (st =
             add_pretokenizer(tok, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), err)) ||
        (st = load_model(tok, root, err)) ||
        (st = add_decoder(tok, cJSON_GetObjectItemCaseSensitive(root, "decoder"), err)))
        goto err;
    const cJSON *post = cJSON_GetObjectItemCaseSensitive(root, "post_processor");
    if ((st = add_postprocessor(tok, post, err)) != ES_OK) goto err;
    if ((st = load_config(tok, dir, post && !cJSON_IsNull(post), err)) != ES_OK) goto err;
    for (int i = 0; i < tok->n_pre; i++)
        if (tok->pre_ids[i] >= tok->n_pieces)
            st = es_fail(err, ES_EFORMAT, "post-processor id out of range");
    for (int i = 0; i < tok->n_post; i++)
        if (tok->post_ids[i] >= tok->n_pieces)
            st = es_fail(err, ES_EFORMAT, "post-processor id out of range");
    if (st != ES_OK) goto err;
    cJSON_Delete(root);
    *out = tok;
    return ES_OK;
err:
    if (st == ES_ENOMEM)
        es_fail(err, st, "out of memory loading %s", path);
    else
        es_wrap(err, st, "%s", path);
    cJSON_Delete(root);
    tok_free(tok);
    return st;
}

void tok_free(struct tokenizer *tok)
{
    if (!tok) return;
    for (int32_t i = 0; i < tok->n_pieces && tok->pieces; i++)
        free(tok->pieces[i]);
    free(tok->pieces);
    tkh_strmap_free(&tok->piece_map);
    tkh_strmap_free(&tok->raw_map);
    tkh_pairmap_free(&tok->merges);
    free(tok->raw_arena);
    free(tok->cp_id);
    for (int i = 0; i < tok->n_added; i++)
        free(tok->added[i].content);
    free(tok->added);
    free(tok->is_special);
    free(tok->is_added);
    tkt_free(tok);
    free(tok->norms);
    free(tok->pres);
    for (int i = 0; i < tok->n_decs; i++) {
        free(tok->decs[i].a);
        free(tok->decs[i].b);
        free(tok->decs[i].content);
    }
    free(tok->decs);
    free(tok->chat_template);
    free(tok->bos_token);
    free(tok->eos_token);
    free(tok);
}

/* Length of the longest valid UTF-8 prefix (full characters only). */
static size_t valid_utf8_len(const char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if ((unsigned char)s[i] < 0x80) {
            i++;
            continue;
        }
        int l = utf8_char_len((const unsigned char *)s + i, n - i);
        if (l == 0) break;
        i += (size_t)l;
    }
    return i;
}

enum es_status tok_encode(const struct tokenizer *tok, const char *text, size_t len,
                          bool add_special, struct i32vec *out)
{
    if (len && !text) return ES_EINVAL;
    if (valid_utf8_len(text, len) != len) return ES_EINVAL;
    size_t start = out->n;
    enum es_status st = ES_OK;
    if (add_special) st = iv_append(out, tok->pre_ids, (size_t)tok->n_pre);
    if (st == ES_OK) st = tkt_encode(tok, text ? text : "", len, out);
    if (st == ES_OK && add_special) st = iv_append(out, tok->post_ids, (size_t)tok->n_post);
    if (st != ES_OK) out->n = start;
    return st;
}

enum es_status tok_normalize(const struct tokenizer *tok, const char *text, size_t len,
                             struct strbuf *out)
{
    if (len && !text) return ES_EINVAL;
    if (valid_utf8_len(text, len) != len) return ES_EINVAL;
    return tkt_normalize_str(tok, text ? text : "", len, out);
}

int32_t tok_vocab_size(const struct tokenizer *tok)
{
    return tok->n_pieces;
}

const char *tok_id_to_piece(const struct tokenizer *tok, int32_t id)
{
    if (id < 0 || id >= tok->n_pieces) return NULL;
    return tok->pieces[id];
}

int32_t tok_piece_to_id(const struct tokenizer *tok, const char *piece)
{
    if (!piece) return -1;
    return tkh_strmap_get(&tok->piece_map, piece, strlen(piece));
}

bool tok_is_special(const struct tokenizer *tok, int32_t id)
{
    return id >= 0 && id < tok->n_pieces && tok->is_special[id];
}

const char *tok_chat_template(const struct tokenizer *tok)
{
    return tok->chat_template;
}

const char *tok_bos_token(const struct tokenizer *tok)
{
    return tok->bos_token;
}

const char *tok_eos_token(const struct tokenizer *tok)
{
    return tok->eos_token;
}

int32_t tok_bos_id(const struct tokenizer *tok)
{
    return tok->bos_id;
}

int32_t tok_eos_id(const struct tokenizer *tok)
{
    return tok->eos_id;
}

const char *tok_fallback_template(const struct tokenizer *tok)
{
    if (tok_piece_to_id(tok, "<|im_start|>") >= 0 && tok_piece_to_id(tok, "<|im_end|>") >= 0)
        return "chatml";
    if (tok_piece_to_id(tok, "<|start_header_id|>") >= 0 && tok_piece_to_id(tok, "<|eot_id|>") >= 0)
        return "llama3";
    if (tok_piece_to_id(tok, "<s>") >= 0 && tok_piece_to_id(tok, "</s>") >= 0) return "llama2";
    return "plain";
}
