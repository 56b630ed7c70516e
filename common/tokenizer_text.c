/*
 * tokenizer_text.c - everything between the input text and the BPE model:
 * added-token splitting, normalizers, pre-tokenizers, and the encode driver
 * that ties them together (without the post-processor, which tokenizer.c
 * applies).
 *
 * Order, as in `tokenizers`: added tokens with normalized=false are matched
 * in the raw text (leftmost-longest); each remaining segment is normalized
 * on its own, then split on normalized added tokens; each piece then goes
 * through the pre-tokenizer steps and the model.
 *
 * The Split regexes of tokenizer.json are Oniguruma patterns; they run here
 * on PCRE2 (UTF, UCP, JIT) after a translation of the escapes whose meaning
 * differs: \s becomes Oniguruma's Unicode set (TAB..CR, U+0085, Zs, Zl, Zp;
 * PCRE2's \h would add U+180E), \w becomes letters, marks, Nd and Pc, and
 * \p{L} / \p{N} gain the characters of newer Unicode versions
 * (tokenizer_unicode.c). NFC / NFD come from tokenizer_nfc.c, NFKC / NFKD
 * from utf8proc.
 * Never holds state between calls: scratch buffers live on the caller's
 * stack or in per-call allocations.
 */
#include <stdlib.h>
#include <string.h>

#ifdef HAVE_UTF8PROC
#include <utf8proc.h>
#endif

#include "tokenizer_int.h"

#define MAX_PRE_STEPS 8

/* ------------------------------------------------------------------ */
/* regex translation and compilation                                  */
/* ------------------------------------------------------------------ */

static const char SPACE_ITEMS[] = "\\t\\n\\x0B\\f\\r\\x{85}\\p{Zs}\\p{Zl}\\p{Zp}";
static const char WORD_ITEMS[] = "\\p{L}\\p{M}\\p{Nd}\\p{Pc}";

/* Rewrites an Oniguruma pattern into an equivalent PCRE2 one. */
static enum es_status translate_regex(const char *pat, struct strbuf *out, struct es_err *err)
{
    bool in_class = false;
    size_t class_start = 0; /* index in pat just after '[' or '[^' */
    enum es_status st = ES_OK;
    for (size_t i = 0; pat[i] && st == ES_OK; i++) {
        char c = pat[i];
        if (c == '\\' && pat[i + 1]) {
            char e = pat[i + 1];
            const char *items = NULL;
            bool neg = false;
            if (e == 's' || e == 'S') items = SPACE_ITEMS, neg = e == 'S';
            if (e == 'w' || e == 'W') items = WORD_ITEMS, neg = e == 'W';
            /* \p{L} and \p{N}: add what newer Unicode tables assign */
            size_t plen = 0;
            const char *extra = NULL;
            if (e == 'p' || e == 'P') {
                const char *q = pat + i + 2;
                if (!strncmp(q, "{L}", 3) || !strncmp(q, "{N}", 3))
                    plen = 3;
                else if (*q == 'L' || *q == 'N')
                    plen = 1;
                if (plen) {
                    char cls = plen == 3 ? q[1] : q[0];
                    extra = cls == 'L' ? tk_extra_L : tk_extra_N;
                    neg = e == 'P';
                }
            }
            if (extra) {
                char base = plen == 3 ? pat[i + 3] : pat[i + 2];
                if (in_class && neg)
                    return es_fail(err, ES_EUNSUPPORTED, "regex: \\P inside [] is not supported");
                if (in_class)
                    st = sb_printf(out, "\\p{%c}%s", base, extra);
                else
                    st = sb_printf(out, "[%s\\p{%c}%s]", neg ? "^" : "", base, extra);
                i += 1 + plen;
                continue;
            }
            if (items) {
                if (in_class && neg)
                    return es_fail(err, ES_EUNSUPPORTED,
                                   "regex: negated class escape \\%c inside [] is not supported",
                                   e);
                if (in_class)
                    st = sb_puts(out, items);
                else
                    st = sb_printf(out, "[%s%s]", neg ? "^" : "", items);
            } else {
                st = sb_append(out, pat + i, 2);
            }
            i++;
            continue;
        }
        if (!in_class && c == '[') {
            in_class = true;
            st = sb_putc(out, c);
            if (pat[i + 1] == '^') {
                st = sb_putc(out, '^');
                i++;
            }
            class_start = i + 1;
            continue;
        }
        if (in_class && c == '[' && pat[i + 1] == ':') {
            const char *end = strstr(pat + i, ":]");
            if (!end) return es_fail(err, ES_EFORMAT, "regex: unterminated [: in class");
            st = sb_append(out, pat + i, (size_t)(end + 2 - (pat + i)));
            i = (size_t)(end + 1 - pat);
            continue;
        }
        if (in_class && c == '[')
            return es_fail(err, ES_EUNSUPPORTED,
                           "regex: nested character classes are not supported");
        if (in_class && c == ']' && i != class_start) in_class = false;
        st = sb_putc(out, c);
    }
    if (st == ES_OK && in_class) return es_fail(err, ES_EFORMAT, "regex: unterminated class");
    return st;
}

static const char GPT2_PATTERN[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

enum es_status tkt_build_pre(const char *pattern, bool is_literal, struct tkt_pre *pre,
                             struct es_err *err)
{
    struct strbuf tr = {0};
    enum es_status st;
    if (!pattern) pattern = GPT2_PATTERN;
    if (is_literal) {
        st = sb_puts(&tr, "\\Q");
        if (st == ES_OK) st = sb_puts(&tr, pattern);
        if (st == ES_OK) st = sb_puts(&tr, "\\E");
        if (strstr(pattern, "\\E"))
            st = es_fail(err, ES_EUNSUPPORTED, "Split: literal pattern containing \\E");
    } else {
        st = translate_regex(pattern, &tr, err);
    }
    if (st != ES_OK) goto err;
    int code;
    PCRE2_SIZE off;
    pre->re =
        pcre2_compile((PCRE2_SPTR)sb_cstr(&tr), tr.len, PCRE2_UTF | PCRE2_UCP, &code, &off, NULL);
    if (!pre->re) {
        PCRE2_UCHAR msg[200];
        pcre2_get_error_message(code, msg, sizeof(msg));
        st = es_fail(err, ES_EFORMAT, "regex %s: %s at offset %zu", pattern, (char *)msg,
                     (size_t)off);
        goto err;
    }
    pcre2_jit_compile(pre->re, PCRE2_JIT_COMPLETE); /* falls back to the interpreter */
err:
    sb_free(&tr);
    return st;
}

void tkt_free(struct tokenizer *tok)
{
    for (int i = 0; i < tok->n_pres; i++)
        pcre2_code_free(tok->pres[i].re);
    for (int i = 0; i < tok->n_norms; i++) {
        free(tok->norms[i].a);
        free(tok->norms[i].b);
    }
}

/* ------------------------------------------------------------------ */
/* normalizers                                                        */
/* ------------------------------------------------------------------ */

static bool all_below(const char *s, size_t n, unsigned limit_lead)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] >= limit_lead) return false;
    return true;
}

static enum es_status apply_norm(const struct tkt_norm *nm, const char *s, size_t n,
                                 struct strbuf *out)
{
    switch (nm->kind) {
    case TKN_PREPEND:
        if (n == 0) return ES_OK;
        if (sb_puts(out, nm->a) != ES_OK) return ES_ENOMEM;
        return sb_append(out, s, n);
    case TKN_REPLACE: {
        size_t pl = strlen(nm->a);
        size_t i = 0;
        while (i < n) {
            const char *hit = pl ? memmem(s + i, n - i, nm->a, pl) : NULL;
            if (!hit) break;
            if (sb_append(out, s + i, (size_t)(hit - (s + i))) != ES_OK) return ES_ENOMEM;
            if (sb_puts(out, nm->b) != ES_OK) return ES_ENOMEM;
            i = (size_t)(hit - s) + pl;
        }
        return sb_append(out, s + i, n - i);
    }
    case TKN_NFC:
    case TKN_NFD:
        return tkn_canonical(s, n, nm->kind == TKN_NFC, out);
    case TKN_NFKC:
    case TKN_NFKD: {
        if (all_below(s, n, 0x80)) return sb_append(out, s, n);
#ifdef HAVE_UTF8PROC
        utf8proc_option_t opt = UTF8PROC_STABLE;
        if (nm->kind == TKN_NFKC)
            opt |= UTF8PROC_COMPOSE;
        else
            opt |= UTF8PROC_DECOMPOSE;
        opt |= UTF8PROC_COMPAT;
        utf8proc_uint8_t *dst = NULL;
        utf8proc_ssize_t r =
            utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &dst, opt);
        if (r < 0) {
            free(dst);
            return r == UTF8PROC_ERROR_NOMEM ? ES_ENOMEM : ES_EINVAL;
        }
        enum es_status st = sb_append(out, (const char *)dst, (size_t)r);
        free(dst);
        return st;
#else
        return ES_EUNSUPPORTED; /* tok_load refuses such tokenizers */
#endif
    }
    }
    return ES_EINVAL;
}

/* Runs the normalizer chain on s; the result (*res, *res_len) is
 * is either s itself or the contents of one of the two buffers. */
static enum es_status normalize(const struct tokenizer *tok, const char *s, size_t n,
                                struct strbuf bufs[2], const char **res, size_t *res_len)
{
    const char *cur = s;
    size_t cur_len = n;
    int which = 0;
    for (int i = 0; i < tok->n_norms; i++) {
        struct strbuf *dst = &bufs[which];
        sb_clear(dst);
        enum es_status st = apply_norm(&tok->norms[i], cur, cur_len, dst);
        if (st != ES_OK) return st;
        cur = sb_cstr(dst);
        cur_len = dst->len;
        which ^= 1;
    }
    *res = cur;
    *res_len = cur_len;
    return ES_OK;
}

/* ------------------------------------------------------------------ */
/* pre-tokenizers and the model                                       */
/* ------------------------------------------------------------------ */

struct enc_ctx {
    const struct tokenizer *tok;
    struct i32vec *out;
    pcre2_match_data *md;
    pcre2_match_context *mctx;
    pcre2_jit_stack *jit_stack;
    struct tkb_cache *cache; /* NULL for short texts */
    struct tkb_scratch bpe_scratch;
    struct strbuf tmp[MAX_PRE_STEPS];
};

static enum es_status pre_step(struct enc_ctx *cx, int step, const char *s, size_t n);

/* Hands a pre-tokenized word to the model (split before inner U+2581 where
 * that is exact, see split_metaspace). */
static enum es_status model_word(struct enc_ctx *cx, const char *s, size_t n)
{
    if (!cx->tok->split_metaspace)
        return tkb_word(cx->tok, cx->cache, &cx->bpe_scratch, s, n, cx->out);
    size_t start = 0;
    for (size_t i = 1; i + 2 < n; i++) {
        /* U+2581 is E2 96 81; split where the previous char is not one */
        if ((unsigned char)s[i] == 0xE2 && (unsigned char)s[i + 1] == 0x96 &&
            (unsigned char)s[i + 2] == 0x81 &&
            !(i >= 3 && (unsigned char)s[i - 3] == 0xE2 && (unsigned char)s[i - 2] == 0x96 &&
              (unsigned char)s[i - 1] == 0x81)) {
            enum es_status st =
                tkb_word(cx->tok, cx->cache, &cx->bpe_scratch, s + start, i - start, cx->out);
            if (st != ES_OK) return st;
            start = i;
        }
    }
    return tkb_word(cx->tok, cx->cache, &cx->bpe_scratch, s + start, n - start, cx->out);
}

/* Next match of re in s[0..n) at or after start; false when none. */
static enum es_status next_match(struct enc_ctx *cx, pcre2_code *re, const char *s, size_t n,
                                 size_t start, size_t *ms, size_t *me, bool *found)
{
    int rc = pcre2_match(re, (PCRE2_SPTR)s, n, start, PCRE2_NO_UTF_CHECK, cx->md, cx->mctx);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT && !cx->jit_stack) {
        cx->jit_stack = pcre2_jit_stack_create(64 * 1024, 64 * 1024 * 1024, NULL);
        cx->mctx = pcre2_match_context_create(NULL);
        if (!cx->jit_stack || !cx->mctx) return ES_ENOMEM;
        pcre2_jit_stack_assign(cx->mctx, NULL, cx->jit_stack);
        rc = pcre2_match(re, (PCRE2_SPTR)s, n, start, PCRE2_NO_UTF_CHECK, cx->md, cx->mctx);
    }
    if (rc == PCRE2_ERROR_NOMATCH) {
        *found = false;
        return ES_OK;
    }
    if (rc < 0) return ES_ERR;
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(cx->md);
    *ms = ov[0];
    *me = ov[1];
    *found = true;
    return ES_OK;
}

static enum es_status split_step(struct enc_ctx *cx, int step, const char *s, size_t n)
{
    const struct tkt_pre *pre = &cx->tok->pres[step];
    size_t pos = 0, last = 0;
    while (pos <= n) {
        size_t ms, me;
        bool found;
        enum es_status st = next_match(cx, pre->re, s, n, pos, &ms, &me, &found);
        if (st != ES_OK) return st;
        if (!found) break;
        /* gap before the match, then the match (Isolated / Removed; invert swaps roles) */
        bool keep_gap = pre->invert ? pre->behavior == TKS_ISOLATED : true;
        bool keep_match = pre->invert ? true : pre->behavior == TKS_ISOLATED;
        if (ms > last && keep_gap) {
            st = pre_step(cx, step + 1, s + last, ms - last);
            if (st != ES_OK) return st;
        }
        if (me > ms && keep_match) {
            st = pre_step(cx, step + 1, s + ms, me - ms);
            if (st != ES_OK) return st;
        }
        last = me;
        if (me == ms) { /* empty match: step over one character */
            if (me >= n) break;
            int cl = utf8_char_len((const unsigned char *)s + me, n - me);
            pos = me + (size_t)(cl ? cl : 1);
        } else {
            pos = me;
        }
    }
    bool keep_tail = pre->invert ? pre->behavior == TKS_ISOLATED : true;
    if (last < n && keep_tail) return pre_step(cx, step + 1, s + last, n - last);
    return ES_OK;
}

static enum es_status pre_step(struct enc_ctx *cx, int step, const char *s, size_t n)
{
    if (n == 0) return ES_OK;
    if (step >= cx->tok->n_pres) return model_word(cx, s, n);
    const struct tkt_pre *pre = &cx->tok->pres[step];
    if (pre->kind == TKP_BYTELEVEL) {
        if (pre->add_prefix_space && s[0] != ' ') {
            struct strbuf *t = &cx->tmp[step];
            sb_clear(t);
            if (sb_putc(t, ' ') != ES_OK || sb_append(t, s, n) != ES_OK) return ES_ENOMEM;
            s = t->s;
            n = t->len;
        }
        if (!pre->re) return pre_step(cx, step + 1, s, n);
    }
    return split_step(cx, step, s, n);
}

/* ------------------------------------------------------------------ */
/* added tokens                                                       */
/* ------------------------------------------------------------------ */

static bool is_ws_cp(uint32_t c)
{
    return (c >= 9 && c <= 13) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

static uint32_t decode_cp(const char *s, size_t n, int *len)
{
    const unsigned char *u = (const unsigned char *)s;
    int l = utf8_char_len(u, n);
    *len = l ? l : 1;
    if (l <= 1) return u[0];
    uint32_t c = u[0] & (0xFF >> (l + 1));
    for (int i = 1; i < l; i++)
        c = (c << 6) | (u[i] & 0x3F);
    return c;
}

/* Start of the last char of s[0..n). */
static size_t prev_char(const char *s, size_t n)
{
    size_t i = n - 1;
    while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80)
        i--;
    return i;
}

static bool is_word_cp(uint32_t c)
{
    if (c == '_' || c == 0x200C || c == 0x200D) return true;
    if (c < 0x80) return (c >= '0' && c <= '9') || ((c | 32) >= 'a' && (c | 32) <= 'z');
#ifdef HAVE_UTF8PROC
    utf8proc_category_t cat = utf8proc_category((utf8proc_int32_t)c);
    return (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_ME) ||
           cat == UTF8PROC_CATEGORY_ND || cat == UTF8PROC_CATEGORY_NL ||
           cat == UTF8PROC_CATEGORY_PC;
#else
    return false;
#endif
}

/* Leftmost-longest added token at or after pos, among those with the given
 * normalized flag. Returns its index in tok->added, or -1. */
static int find_added(const struct tokenizer *tok, bool normalized, const char *s, size_t n,
                      size_t pos, size_t *at)
{
    const uint8_t *first = normalized ? tok->added_first_norm : tok->added_first;
    for (size_t i = pos; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!first[c]) continue;
        int best = -1;
        uint32_t best_len = 0;
        for (int k = 0; k < tok->n_added; k++) {
            const struct tok_added *a = &tok->added[k];
            if (a->normalized != normalized || a->len <= best_len || a->len > n - i) continue;
            if ((unsigned char)a->content[0] == c && memcmp(a->content, s + i, a->len) == 0) {
                best = k;
                best_len = a->len;
            }
        }
        if (best >= 0) {
            *at = i;
            return best;
        }
    }
    return -1;
}

typedef enum es_status (*segment_fn)(struct enc_ctx *cx, const char *s, size_t n, int depth);

/* Splits s on added tokens (AddedVocabulary::find_matches); plain segments go
 * to fn, matched tokens straight to the output. */
static enum es_status split_added(struct enc_ctx *cx, bool normalized, const char *s, size_t n,
                                  segment_fn fn, int depth)
{
    const struct tokenizer *tok = cx->tok;
    size_t search = 0, start_offset = 0;
    enum es_status st;
    for (;;) {
        size_t at;
        int k = find_added(tok, normalized, s, n, search, &at);
        if (k < 0) break;
        const struct tok_added *a = &tok->added[k];
        size_t start = at, stop = at + a->len;
        search = stop;
        if (a->single_word) {
            bool start_ok = true, stop_ok = true;
            if (start > 0) {
                int l;
                size_t p = prev_char(s, start);
                start_ok = !is_word_cp(decode_cp(s + p, start - p, &l));
            }
            if (stop < n) {
                int l;
                stop_ok = !is_word_cp(decode_cp(s + stop, n - stop, &l));
            }
            if (!start_ok || !stop_ok) continue;
        }
        if (a->lstrip) {
            size_t ns = start;
            while (ns > 0) {
                int l;
                size_t p = prev_char(s, ns);
                if (!is_ws_cp(decode_cp(s + p, ns - p, &l))) break;
                ns = p;
            }
            start = ns > start_offset ? ns : start_offset;
        }
        if (a->rstrip) {
            while (stop < n) {
                int l;
                uint32_t c = decode_cp(s + stop, n - stop, &l);
                if (!is_ws_cp(c)) break;
                stop += (size_t)l;
            }
        }
        if (start_offset < start) {
            st = fn(cx, s + start_offset, start - start_offset, depth);
            if (st != ES_OK) return st;
        }
        st = iv_push(cx->out, a->id);
        if (st != ES_OK) return st;
        start_offset = stop;
    }
    if (start_offset < n) return fn(cx, s + start_offset, n - start_offset, depth);
    return ES_OK;
}

static enum es_status model_segment(struct enc_ctx *cx, const char *s, size_t n, int depth)
{
    (void)depth;
    return pre_step(cx, 0, s, n);
}

static enum es_status raw_segment(struct enc_ctx *cx, const char *s, size_t n, int depth)
{
    const struct tokenizer *tok = cx->tok;
    struct strbuf bufs[2] = {{0}, {0}};
    const char *ns;
    size_t nn;
    enum es_status st = normalize(tok, s, n, bufs, &ns, &nn);
    if (st == ES_OK) {
        if (tok->has_normalized_added)
            st = split_added(cx, true, ns, nn, model_segment, depth);
        else
            st = pre_step(cx, 0, ns, nn);
    }
    sb_free(&bufs[0]);
    sb_free(&bufs[1]);
    return st;
}

enum es_status tkt_encode(const struct tokenizer *tok, const char *text, size_t len,
                          struct i32vec *out)
{
    struct enc_ctx cx = {.tok = tok, .out = out};
    enum es_status st = ES_ENOMEM;
    for (int i = 0; i < tok->n_pres; i++) {
        if (tok->pres[i].re) {
            cx.md = pcre2_match_data_create(4, NULL);
            if (!cx.md) goto err;
            break;
        }
    }
    if (len >= 2048) cx.cache = calloc(1, sizeof(*cx.cache)); /* optional: NULL is fine */
    st = split_added(&cx, false, text, len, raw_segment, 0);
err:
    free(cx.cache);
    tkb_scratch_free(&cx.bpe_scratch);
    pcre2_match_data_free(cx.md);
    pcre2_match_context_free(cx.mctx);
    pcre2_jit_stack_free(cx.jit_stack);
    for (int i = 0; i < MAX_PRE_STEPS; i++)
        sb_free(&cx.tmp[i]);
    return st;
}

enum es_status tkt_normalize_str(const struct tokenizer *tok, const char *s, size_t n,
                                 struct strbuf *out)
{
    struct strbuf bufs[2] = {{0}, {0}};
    const char *ns;
    size_t nn;
    enum es_status st = normalize(tok, s, n, bufs, &ns, &nn);
    if (st == ES_OK) st = sb_append(out, ns, nn);
    sb_free(&bufs[0]);
    sb_free(&bufs[1]);
    return st;
}
