/*
 * strbuf.h - a growable byte string (always NUL-terminated) and a growable
 * int32 vector, the two containers every subsystem passes around.
 *
 * Allocation failure is reported through the return value (ES_ENOMEM) and
 * leaves the buffer unchanged; a zero-initialised struct is a valid empty one.
 */
#ifndef ES_STRBUF_H
#define ES_STRBUF_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "status.h"

struct strbuf {
    char *s;     /* NUL-terminated once anything was appended; NULL when empty */
    size_t len;  /* bytes, excluding the NUL */
    size_t cap;
};

enum es_status sb_reserve(struct strbuf *sb, size_t extra);
enum es_status sb_append(struct strbuf *sb, const char *data, size_t n);
enum es_status sb_puts(struct strbuf *sb, const char *s);
enum es_status sb_putc(struct strbuf *sb, char c);
enum es_status sb_printf(struct strbuf *sb, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
enum es_status sb_vprintf(struct strbuf *sb, const char *fmt, va_list ap);
/* Appends s as a JSON string literal, quotes included. Invalid UTF-8 bytes
 * become U+FFFD so the output is always valid JSON. */
enum es_status sb_json_str(struct strbuf *sb, const char *s, size_t n);
void sb_clear(struct strbuf *sb);            /* len = 0, keeps memory */
void sb_free(struct strbuf *sb);
/* Hands the string to the caller (who frees it) and empties sb. Never NULL
 * on success: an empty buffer yields "". */
char *sb_steal(struct strbuf *sb);
static inline const char *sb_cstr(const struct strbuf *sb)
{
    return sb->s ? sb->s : "";
}

struct i32vec {
    int32_t *v;
    size_t n;
    size_t cap;
};

enum es_status iv_reserve(struct i32vec *iv, size_t extra);
enum es_status iv_push(struct i32vec *iv, int32_t x);
enum es_status iv_append(struct i32vec *iv, const int32_t *xs, size_t n);
void iv_free(struct i32vec *iv);

/* Writes code point cp (<= 0x10FFFF) as UTF-8 into out; returns 1..4. */
int utf8_encode(uint32_t cp, char out[4]);
/* Appends code point cp as UTF-8. */
enum es_status sb_put_utf8(struct strbuf *sb, uint32_t cp);

/* Length of the valid UTF-8 sequence starting at s (1..4), or 0 when the
 * bytes at s are not a complete, valid, shortest-form UTF-8 character. */
int utf8_char_len(const unsigned char *s, size_t avail);
/* Length of the longest prefix of s[0..n) that ends on a character boundary
 * of valid UTF-8 (incomplete trailing characters excluded). */
size_t utf8_valid_prefix(const char *s, size_t n);

#endif
