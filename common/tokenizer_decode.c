/*
 * tokenizer_decode.c - ids back to text: the decoder chain of tokenizer.json
 * (ByteLevel, Replace, ByteFallback, Fuse, Strip) applied exactly as
 * `tokenizers` applies it, and the incremental stream decoder.
 *
 * The chain works on a list of strings (one per token at first), each step
 * mapping the list to a new one, so any order of supported steps behaves as
 * in `tokenizers`. Invalid UTF-8 becomes U+FFFD the way Rust does it:
 * from_utf8_lossy (one U+FFFD per maximal invalid subpart) for ByteLevel,
 * one U+FFFD per byte for an invalid run of <0xNN> tokens.
 *
 * The stream decoder only emits text at token boundaries that no later
 * token can change (UTF-8 complete, no open byte-fallback run, leading Strip
 * settled), so its output always concatenates to tok_decode of all ids.
 * It assumes Replace steps come before any fusing step (true for every
 * known tokenizer); Strip with stop > 0 only commits at finish.
 *
 * tok_id_to_bytes gives one token's own bytes (OpenAI's logprobs `bytes`):
 * the same steps on that piece alone, minus joining, trimming and the
 * U+FFFD a decode puts for part of a character.
 */
#include <stdlib.h>
#include <string.h>

#include "tokenizer_int.h"

/* A list of strings stored back to back in one buffer. */
struct tlist {
    struct strbuf buf;
    size_t *off;
    size_t *len;
    size_t n, cap;
};

static enum es_status tl_push(struct tlist *l, const char *s, size_t n)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        size_t *o = realloc(l->off, cap * sizeof(size_t));
        if (!o) return ES_ENOMEM;
        l->off = o;
        size_t *q = realloc(l->len, cap * sizeof(size_t));
        if (!q) return ES_ENOMEM;
        l->len = q;
        l->cap = cap;
    }
    l->off[l->n] = l->buf.len;
    l->len[l->n] = n;
    l->n++;
    return sb_append(&l->buf, s, n);
}

/* Starts a new empty item that the caller fills with tl_extend. */
static enum es_status tl_open(struct tlist *l)
{
    return tl_push(l, "", 0);
}

static enum es_status tl_extend(struct tlist *l, const char *s, size_t n)
{
    l->len[l->n - 1] += n;
    return sb_append(&l->buf, s, n);
}

static const char *tl_at(const struct tlist *l, size_t i)
{
    return l->buf.s + l->off[i];
}

static void tl_free(struct tlist *l)
{
    sb_free(&l->buf);
    free(l->off);
    free(l->len);
    memset(l, 0, sizeof(*l));
}

/* ------------------------------------------------------------------ */
/* UTF-8 helpers                                                      */
/* ------------------------------------------------------------------ */

/* One step of from_utf8_lossy: length of the valid character or of the
 * maximal invalid subpart at s; *valid tells which; *cut is set when the
 * bytes end before a possibly valid sequence is complete. */
static size_t utf8_step(const unsigned char *s, size_t n, bool *valid, bool *cut)
{
    unsigned char c = s[0];
    *cut = false;
    if (c < 0x80) {
        *valid = true;
        return 1;
    }
    int need;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF)
        need = 1;
    else if (c == 0xE0)
        need = 2, lo = 0xA0;
    else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF)
        need = 2;
    else if (c == 0xED)
        need = 2, hi = 0x9F;
    else if (c == 0xF0)
        need = 3, lo = 0x90;
    else if (c >= 0xF1 && c <= 0xF3)
        need = 3;
    else if (c == 0xF4)
        need = 3, hi = 0x8F;
    else {
        *valid = false;
        return 1;
    }
    size_t i = 1;
    for (int k = 0; k < need; k++, i++) {
        if (i >= n) {
            *valid = false;
            *cut = true;
            return i;
        }
        unsigned char lo_k = k == 0 ? lo : 0x80, hi_k = k == 0 ? hi : 0xBF;
        if (s[i] < lo_k || s[i] > hi_k) {
            *valid = false;
            return i;
        }
    }
    *valid = true;
    return i;
}

static enum es_status append_lossy(struct strbuf *out, const char *s, size_t n)
{
    size_t i = 0, run = 0;
    while (i < n) {
        bool valid, cut;
        size_t l = utf8_step((const unsigned char *)s + i, n - i, &valid, &cut);
        if (valid) {
            i += l;
            continue;
        }
        if (sb_append(out, s + run, i - run) != ES_OK || sb_puts(out, "\xEF\xBF\xBD") != ES_OK)
            return ES_ENOMEM;
        i += l;
        run = i;
    }
    return sb_append(out, s + run, n - run);
}

/* ------------------------------------------------------------------ */
/* steps                                                              */
/* ------------------------------------------------------------------ */

/* Appends the bytes a ByteLevel token stands for: its GPT-2 characters
 * mapped back, or the token itself if some character is not mapped. */
static enum es_status bytelevel_bytes(const struct tokenizer *tok, const char *s, size_t n,
                                      struct strbuf *out)
{
    size_t start = out->len;
    for (size_t i = 0; i < n;) {
        const unsigned char *u = (const unsigned char *)s + i;
        int l = utf8_char_len(u, n - i);
        uint32_t cp = 0xFFFFFFFF;
        if (l == 1)
            cp = u[0];
        else if (l > 1) {
            cp = u[0] & (0xFF >> (l + 1));
            for (int k = 1; k < l; k++)
                cp = (cp << 6) | (u[k] & 0x3F);
        }
        if (cp >= 512 || tok->cp_to_byte[cp] < 0) {
            out->len = start;
            return sb_append(out, s, n);
        }
        if (sb_putc(out, (char)tok->cp_to_byte[cp]) != ES_OK) return ES_ENOMEM;
        i += (size_t)l;
    }
    return ES_OK;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* "<0xHH>" -> byte (as u8::from_str_radix, which also takes "+H"); -1 if not. */
static int fallback_byte(const char *s, size_t n)
{
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    if (s[3] == '+') return hexval(s[4]);
    int a = hexval(s[3]), b = hexval(s[4]);
    return a < 0 || b < 0 ? -1 : a * 16 + b;
}

/* Appends s[0..n) with every d->a replaced by d->b (a Replace step). */
static enum es_status append_replaced(const struct tkd_step *d, const char *s, size_t n,
                                      struct strbuf *out)
{
    size_t pl = strlen(d->a), p = 0;
    while (pl && p < n) {
        const char *hit = memmem(s + p, n - p, d->a, pl);
        if (!hit) break;
        if (sb_append(out, s + p, (size_t)(hit - (s + p))) != ES_OK || sb_puts(out, d->b) != ES_OK)
            return ES_ENOMEM;
        p = (size_t)(hit - s) + pl;
    }
    return sb_append(out, s + p, n - p);
}

static enum es_status flush_bytes(struct tlist *dst, struct strbuf *bytes)
{
    enum es_status st = ES_OK;
    if (bytes->len == 0) return ES_OK;
    bool ok = true;
    for (size_t i = 0; i < bytes->len && ok;) {
        int l = utf8_char_len((const unsigned char *)bytes->s + i, bytes->len - i);
        if (l == 0) ok = false;
        i += (size_t)(l ? l : 1);
    }
    if (ok) st = tl_push(dst, bytes->s, bytes->len);
    for (size_t i = 0; !ok && i < bytes->len && st == ES_OK; i++)
        st = tl_push(dst, "\xEF\xBF\xBD", 3);
    sb_clear(bytes);
    return st;
}

static enum es_status run_step(const struct tokenizer *tok, const struct tkd_step *d,
                               bool strip_lead, const struct tlist *src, struct tlist *dst)
{
    enum es_status st = ES_OK;
    switch (d->kind) {
    case TKD_BYTELEVEL: {
        struct strbuf bytes = {0};
        for (size_t i = 0; i < src->n && st == ES_OK; i++)
            st = bytelevel_bytes(tok, tl_at(src, i), src->len[i], &bytes);
        if (st == ES_OK) st = tl_open(dst);
        if (st == ES_OK) {
            size_t before = dst->buf.len;
            st = append_lossy(&dst->buf, bytes.s ? bytes.s : "", bytes.len);
            dst->len[dst->n - 1] = dst->buf.len - before;
        }
        sb_free(&bytes);
        return st;
    }
    case TKD_REPLACE:
        for (size_t i = 0; i < src->n && st == ES_OK; i++) {
            st = tl_open(dst);
            if (st != ES_OK) break;
            size_t before = dst->buf.len;
            st = append_replaced(d, tl_at(src, i), src->len[i], &dst->buf);
            dst->len[dst->n - 1] = dst->buf.len - before;
        }
        return st;
    case TKD_BYTEFALLBACK: {
        struct strbuf bytes = {0};
        for (size_t i = 0; i < src->n && st == ES_OK; i++) {
            int b = fallback_byte(tl_at(src, i), src->len[i]);
            if (b >= 0) {
                st = sb_putc(&bytes, (char)b);
                continue;
            }
            st = flush_bytes(dst, &bytes);
            if (st == ES_OK) st = tl_push(dst, tl_at(src, i), src->len[i]);
        }
        if (st == ES_OK) st = flush_bytes(dst, &bytes);
        sb_free(&bytes);
        return st;
    }
    case TKD_FUSE:
        st = tl_open(dst);
        for (size_t i = 0; i < src->n && st == ES_OK; i++)
            st = tl_extend(dst, tl_at(src, i), src->len[i]);
        return st;
    case TKD_STRIP: {
        size_t cl = strlen(d->content);
        for (size_t i = 0; i < src->n && st == ES_OK; i++) {
            const char *s = tl_at(src, i);
            size_t a = 0, b = src->len[i];
            for (int k = 0; k < d->start && (strip_lead || i > 0); k++) {
                if (cl && b - a >= cl && memcmp(s + a, d->content, cl) == 0)
                    a += cl;
                else
                    break;
            }
            for (int k = 0; k < d->stop; k++) {
                if (cl && b - a >= cl && memcmp(s + b - cl, d->content, cl) == 0)
                    b -= cl;
                else
                    break;
            }
            st = tl_push(dst, s + a, b - a);
        }
        return st;
    }
    }
    return ES_EINVAL;
}

enum es_status tkd_decode(const struct tokenizer *tok, const int32_t *ids, size_t n,
                          bool skip_special, bool at_start, struct strbuf *out)
{
    struct tlist a = {0}, b = {0};
    enum es_status st = ES_OK;
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= tok->n_pieces || !tok->pieces[ids[i]]) return ES_ERANGE;
    for (size_t i = 0; i < n && st == ES_OK; i++) {
        if (skip_special && tok->is_special[ids[i]]) continue;
        const char *p = tok->pieces[ids[i]];
        st = tl_push(&a, p, strlen(p));
    }
    if (!tok->has_decoder) { /* pieces joined by spaces */
        for (size_t i = 0; i < a.n && st == ES_OK; i++) {
            if (i > 0 || !at_start) st = sb_putc(out, ' ');
            if (st == ES_OK) st = sb_append(out, tl_at(&a, i), a.len[i]);
        }
        tl_free(&a);
        return st;
    }
    bool fused = false;
    for (int k = 0; k < tok->n_decs && st == ES_OK; k++) {
        const struct tkd_step *d = &tok->decs[k];
        /* after a fusing step, item 0 of a continuation is not the text start */
        st = run_step(tok, d, at_start || !fused, &a, &b);
        if (d->kind == TKD_FUSE || d->kind == TKD_BYTELEVEL) fused = true;
        struct tlist t = a;
        a = b;
        b = t;
        tl_free(&b);
    }
    for (size_t i = 0; i < a.n && st == ES_OK; i++)
        st = sb_append(out, tl_at(&a, i), a.len[i]);
    tl_free(&a);
    tl_free(&b);
    return st;
}

enum es_status tok_decode(const struct tokenizer *tok, const int32_t *ids, size_t n,
                          bool skip_special, struct strbuf *out)
{
    size_t start = out->len;
    enum es_status st = tkd_decode(tok, ids, n, skip_special, true, out);
    if (st != ES_OK && out->s) {
        out->len = start;
        out->s[start] = '\0';
    }
    return st;
}

/* ------------------------------------------------------------------ */
/* the raw bytes of one token                                         */
/* ------------------------------------------------------------------ */

/* One decoder step on one piece alone. Fuse and Strip act between the
 * tokens of a text (joining, trimming its ends), so they leave a piece as
 * it is; ByteFallback gives its byte without the UTF-8 check of a decode,
 * as one token may well be part of a character. */
static enum es_status piece_step(const struct tokenizer *tok, const struct tkd_step *d,
                                 const char *s, size_t n, struct strbuf *out)
{
    switch (d->kind) {
    case TKD_BYTELEVEL:
        return bytelevel_bytes(tok, s, n, out);
    case TKD_REPLACE:
        return append_replaced(d, s, n, out);
    case TKD_BYTEFALLBACK: {
        int b = fallback_byte(s, n);
        return b >= 0 ? sb_putc(out, (char)b) : sb_append(out, s, n);
    }
    case TKD_FUSE:
    case TKD_STRIP:
        return sb_append(out, s, n);
    }
    return ES_EINVAL;
}

enum es_status tok_id_to_bytes(const struct tokenizer *tok, int32_t id, struct strbuf *out)
{
    if (id < 0 || id >= tok->n_pieces || !tok->pieces[id]) return ES_ERANGE;
    const char *piece = tok->pieces[id];
    if (tok->is_added[id]) return sb_puts(out, piece); /* its content, as written */
    struct strbuf cur = {0}, next = {0};
    enum es_status st = sb_puts(&cur, piece);
    for (int k = 0; k < tok->n_decs && st == ES_OK; k++) {
        sb_clear(&next);
        st = piece_step(tok, &tok->decs[k], sb_cstr(&cur), cur.len, &next);
        struct strbuf t = cur;
        cur = next;
        next = t;
    }
    if (st == ES_OK) st = sb_append(out, sb_cstr(&cur), cur.len);
    sb_free(&cur);
    sb_free(&next);
    return st;
}

/* ------------------------------------------------------------------ */
/* stream                                                             */
/* ------------------------------------------------------------------ */

void tok_stream_init(struct tok_stream *ts, const struct tokenizer *tok, bool skip_special)
{
    memset(ts, 0, sizeof(*ts));
    ts->tok = tok;
    ts->skip_special = skip_special;
}

void tok_stream_free(struct tok_stream *ts)
{
    iv_free(&ts->ids);
    memset(ts, 0, sizeof(*ts));
}

static bool chain_has(const struct tokenizer *tok, enum tkd_kind kind, const struct tkd_step **d)
{
    for (int i = 0; i < tok->n_decs; i++)
        if (tok->decs[i].kind == kind) {
            if (d) *d = &tok->decs[i];
            return true;
        }
    return false;
}

static bool visible(const struct tok_stream *ts, int32_t id)
{
    return !(ts->skip_special && ts->tok->is_special[id]);
}

static bool is_fallback_id(const struct tokenizer *tok, int32_t id)
{
    const char *p = tok->pieces[id];
    return fallback_byte(p, strlen(p)) >= 0;
}

/* Largest boundary j in (prefix_start, n] after which no later id can
 * change the decoded text; 0 when there is none. */
static size_t safe_boundary(const struct tok_stream *ts)
{
    const struct tokenizer *tok = ts->tok;
    const struct tkd_step *strip = NULL;
    bool bytelevel = chain_has(tok, TKD_BYTELEVEL, NULL);
    bool fallback = chain_has(tok, TKD_BYTEFALLBACK, NULL);
    chain_has(tok, TKD_STRIP, &strip);
    if (strip && strip->stop > 0) return 0;
    size_t k = ts->prefix_start, n = ts->ids.n, best = 0;
    const int32_t *ids = ts->ids.v;
    struct strbuf pend = {0}; /* byte-level bytes since the last UTF-8 chunk start */
    bool last_vis_fallback = false;
    for (size_t j = k + 1; j <= n; j++) {
        int32_t t = ids[j - 1];
        if (visible(ts, t)) {
            const char *p = tok->pieces[t];
            size_t pl = strlen(p);
            last_vis_fallback = fallback && is_fallback_id(tok, t);
            if (bytelevel) {
                if (bytelevel_bytes(tok, p, pl, &pend) != ES_OK) break;
                /* drop complete chunks, keep a trailing cut one */
                size_t i = 0;
                while (i < pend.len) {
                    bool valid, cut;
                    size_t l =
                        utf8_step((const unsigned char *)pend.s + i, pend.len - i, &valid, &cut);
                    if (cut) break;
                    i += l;
                }
                memmove(pend.s, pend.s + i, pend.len - i);
                pend.len -= i;
            }
        }
        if (bytelevel && pend.len) continue;
        if (last_vis_fallback) {
            size_t m = j;
            while (m < n && !visible(ts, ids[m]))
                m++;
            if (m >= n || is_fallback_id(tok, ids[m])) continue;
        }
        if (strip && !ts->started && strip->start > 0) {
            /* the leading strip must have seen enough text to be settled */
            struct strbuf txt = {0};
            bool ok = tkd_decode(tok, ids + k, j - k, ts->skip_special, false, &txt) == ES_OK &&
                      utf8_valid_prefix(sb_cstr(&txt), txt.len) == txt.len;
            size_t chars = 0;
            for (size_t i = 0; ok && i < txt.len; i++)
                if (((unsigned char)txt.s[i] & 0xC0) != 0x80) chars++;
            sb_free(&txt);
            if (!ok || chars < (size_t)strip->start) continue;
        }
        best = j;
    }
    sb_free(&pend);
    return best;
}

static enum es_status commit(struct tok_stream *ts, size_t j, struct strbuf *out)
{
    size_t k = ts->prefix_start, before = out->len;
    enum es_status st =
        tkd_decode(ts->tok, ts->ids.v + k, j - k, ts->skip_special, !ts->started, out);
    if (st != ES_OK) return st;
    ts->emitted += out->len - before;
    for (size_t i = k; i < j; i++)
        if (visible(ts, ts->ids.v[i])) ts->started = true;
    ts->prefix_start = j;
    return ES_OK;
}

enum es_status tok_stream_push(struct tok_stream *ts, int32_t id, struct strbuf *out)
{
    if (id < 0 || id >= ts->tok->n_pieces || !ts->tok->pieces[id]) return ES_ERANGE;
    enum es_status st = iv_push(&ts->ids, id);
    if (st != ES_OK) return st;
    size_t j = safe_boundary(ts);
    if (j == 0) return ES_OK;
    return commit(ts, j, out);
}

enum es_status tok_stream_finish(struct tok_stream *ts, struct strbuf *out)
{
    if (ts->prefix_start >= ts->ids.n) return ES_OK;
    return commit(ts, ts->ids.n, out);
}
