/*
 * json.h - typed accessors over cJSON with errors that name the field.
 *
 * Conventions: a field that is absent or JSON null counts as "not given";
 * for an optional field the accessor then returns ES_OK and leaves *out
 * untouched (callers set defaults first). A present field of the wrong type,
 * a non-finite or out-of-range number, or a fractional value where an integer
 * is wanted returns ES_EINVAL with a message such as
 * "'max_tokens' must be an integer, got string".
 *
 * Output of text that may hold NUL bytes: decoded text can contain U+0000
 * (a token may decode to it), but cJSON keeps strings and keys as C strings
 * and would cut them there. js_create_string_n and js_raw_object write the
 * given bytes in full (NUL as \u0000, escaped as cJSON escapes).
 */
#ifndef ES_JSON_H
#define ES_JSON_H

#include <stdbool.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "status.h"
#include "strbuf.h"

/* Deepest nesting js_parse accepts; deeper documents are rejected before
 * cJSON sees them, so no input can exhaust the stack. */
#define JS_MAX_DEPTH 128

/* Parses exactly len bytes (no NUL needed). Rejects trailing garbage,
 * nesting deeper than max_depth (0 = JS_MAX_DEPTH) and invalid UTF-8 in
 * strings. Returns NULL and fills err on failure. */
cJSON *js_parse(const char *buf, size_t len, int max_depth, struct es_err *err);

/* True when a JSON string in buf[0..len) holds the escape \u0000, which
 * cJSON decodes to a NUL at which every C-string consumer would cut. */
bool js_has_nul_escape(const char *buf, size_t len);

/* Rewrites each \u0000 escape inside a JSON string of buf[0..len) as
 * \ufffd (same length, in place), so that a parsed string keeps the text
 * after it: cJSON's strings end at the first NUL. Returns how many. */
size_t js_mask_nul_escapes(char *buf, size_t len);

/* Reads a whole file and parses it. */
cJSON *js_parse_file(const char *path, struct es_err *err);

const char *js_type_name(const cJSON *item);

enum es_status js_get_str(const cJSON *obj, const char *field, bool required, const char **out,
                          struct es_err *err);
enum es_status js_get_int(const cJSON *obj, const char *field, bool required, int64_t min,
                          int64_t max, int64_t *out, struct es_err *err);
enum es_status js_get_num(const cJSON *obj, const char *field, bool required, double min,
                          double max, double *out, struct es_err *err);
enum es_status js_get_bool(const cJSON *obj, const char *field, bool required, bool *out,
                           struct es_err *err);
enum es_status js_get_arr(const cJSON *obj, const char *field, bool required, const cJSON **out,
                          struct es_err *err);
enum es_status js_get_obj(const cJSON *obj, const char *field, bool required, const cJSON **out,
                          struct es_err *err);

/* Value checks on an item already in hand (array elements); `what` names it
 * in the error ("'prompt[3]'"). */
enum es_status js_as_int(const cJSON *item, const char *what, int64_t min, int64_t max,
                         int64_t *out, struct es_err *err);
enum es_status js_as_num(const cJSON *item, const char *what, double min, double max, double *out,
                         struct es_err *err);

/* Returns true when the field is present and not null. */
bool js_has(const cJSON *obj, const char *field);

/* A JSON string item of s[0..len) (s need not be NUL-terminated; NULL with
 * len 0 is ""): a plain cJSON string when there is no NUL byte, else a raw
 * item holding the string literal as sb_json_str writes it. NULL when out of
 * memory. */
cJSON *js_create_string_n(const char *s, size_t len);

/* Appends v exactly as cJSON prints a number item, so that JSON written by
 * hand carries the same figures as cJSON's own output. */
enum es_status js_print_number(struct strbuf *out, double v);

/* An object whose keys may hold NUL bytes, written as text and handed to
 * cJSON as one raw item; printed, it reads as cJSON would print the same
 * object. Zero-initialise; the caller keeps keys unique. */
struct js_raw_object {
    struct strbuf text; /* "{" and the members so far */
    enum es_status st;  /* first failure; the object is then abandoned */
};
void js_raw_object_add_number(struct js_raw_object *o, const char *key, size_t key_len, double v);
/* The finished item (NULL when out of memory); frees o's buffer either way. */
cJSON *js_raw_object_finish(struct js_raw_object *o);

#endif
