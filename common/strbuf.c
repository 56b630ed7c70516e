/*
 * strbuf.c - growable strings and int32 vectors, plus the small UTF-8
 * checks that the JSON writer and the streaming decoder rely on.
 */
#include "strbuf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static size_t grow_to(size_t cap, size_t need)
{
    size_t c = cap ? cap : 64;
    while (c < need) c = c * 2;
    return c;
}

enum es_status sb_reserve(struct strbuf *sb, size_t extra)
{
    if (extra > SIZE_MAX / 2 - sb->len) return ES_ENOMEM;
    size_t need = sb->len + extra + 1;
    if (need <= sb->cap) return ES_OK;
    size_t cap = grow_to(sb->cap, need);
    char *p = realloc(sb->s, cap);
    if (!p) return ES_ENOMEM;
    sb->s = p;
    sb->cap = cap;
    return ES_OK;
}

enum es_status sb_append(struct strbuf *sb, const char *data, size_t n)
{
    if (sb_reserve(sb, n) != ES_OK) return ES_ENOMEM;
    if (n) memcpy(sb->s + sb->len, data, n);
    sb->len += n;
    sb->s[sb->len] = '\0';
    return ES_OK;
}

enum es_status sb_puts(struct strbuf *sb, const char *s)
{
    return sb_append(sb, s, strlen(s));
}

enum es_status sb_putc(struct strbuf *sb, char c)
{
    return sb_append(sb, &c, 1);
}

enum es_status sb_vprintf(struct strbuf *sb, const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0) return ES_EINVAL;
    if (sb_reserve(sb, (size_t)n) != ES_OK) return ES_ENOMEM;
    vsnprintf(sb->s + sb->len, (size_t)n + 1, fmt, ap);
    sb->len += (size_t)n;
    return ES_OK;
}

enum es_status sb_printf(struct strbuf *sb, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    enum es_status st = sb_vprintf(sb, fmt, ap);
    va_end(ap);
    return st;
}

enum es_status sb_json_str(struct strbuf *sb, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    if (sb_reserve(sb, n + 2) != ES_OK) return ES_ENOMEM;
    enum es_status st = sb_putc(sb, '"');
    size_t i = 0;
    while (i < n && st == ES_OK) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x80) {
            int len = utf8_char_len((const unsigned char *)s + i, n - i);
            if (len == 0) {
                st = sb_puts(sb, "\xEF\xBF\xBD"); /* U+FFFD */
                i++;
            } else {
                st = sb_append(sb, s + i, (size_t)len);
                i += (size_t)len;
            }
            continue;
        }
        switch (c) {
        case '"': st = sb_puts(sb, "\\\""); break;
        case '\\': st = sb_puts(sb, "\\\\"); break;
        case '\n': st = sb_puts(sb, "\\n"); break;
        case '\r': st = sb_puts(sb, "\\r"); break;
        case '\t': st = sb_puts(sb, "\\t"); break;
        case '\b': st = sb_puts(sb, "\\b"); break;
        case '\f': st = sb_puts(sb, "\\f"); break;
        default:
            if (c < 0x20) {
                char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
                st = sb_append(sb, esc, 6);
            } else {
                st = sb_putc(sb, (char)c);
            }
        }
        i++;
    }
    if (st == ES_OK) st = sb_putc(sb, '"');
    return st;
}

void sb_clear(struct strbuf *sb)
{
    sb->len = 0;
    if (sb->s) sb->s[0] = '\0';
}

void sb_free(struct strbuf *sb)
{
    free(sb->s);
    sb->s = NULL;
    sb->len = sb->cap = 0;
}

char *sb_steal(struct strbuf *sb)
{
    char *s = sb->s;
    if (!s) s = calloc(1, 1);
    sb->s = NULL;
    sb->len = sb->cap = 0;
    return s;
}

enum es_status iv_reserve(struct i32vec *iv, size_t extra)
{
    if (extra > SIZE_MAX / 8 - iv->n) return ES_ENOMEM;
    size_t need = iv->n + extra;
    if (need <= iv->cap) return ES_OK;
    size_t cap = grow_to(iv->cap, need);
    int32_t *p = realloc(iv->v, cap * sizeof *p);
    if (!p) return ES_ENOMEM;
    iv->v = p;
    iv->cap = cap;
    return ES_OK;
}

enum es_status iv_push(struct i32vec *iv, int32_t x)
{
    if (iv->n == iv->cap && iv_reserve(iv, 1) != ES_OK) return ES_ENOMEM;
    iv->v[iv->n++] = x;
    return ES_OK;
}

enum es_status iv_append(struct i32vec *iv, const int32_t *xs, size_t n)
{
    if (iv_reserve(iv, n) != ES_OK) return ES_ENOMEM;
    if (n) memcpy(iv->v + iv->n, xs, n * sizeof *xs);
    iv->n += n;
    return ES_OK;
}

void iv_free(struct i32vec *iv)
{
    free(iv->v);
    iv->v = NULL;
    iv->n = iv->cap = 0;
}

int utf8_encode(uint32_t cp, char out[4])
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

enum es_status sb_put_utf8(struct strbuf *sb, uint32_t cp)
{
    char b[4];
    return sb_append(sb, b, (size_t)utf8_encode(cp, b));
}

int utf8_char_len(const unsigned char *s, size_t avail)
{
    if (avail == 0) return 0;
    unsigned char c = s[0];
    if (c < 0x80) return 1;
    int len;
    unsigned int cp;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
        cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if ((size_t)len > avail) return 0;
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) return 0;
    if (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) return 0;
    return len;
}

size_t utf8_valid_prefix(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        int len = utf8_char_len(u + i, n - i);
        if (len == 0) break;
        i += (size_t)len;
    }
    return i;
}
