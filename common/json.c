/*
 * json.c - bounded parsing and typed field access over cJSON.
 *
 * The depth check is a single linear scan that tracks string state, so a
 * 100,000-deep document costs one pass and no recursion.
 *
 * Also the length-aware output helpers (js_create_string_n, js_raw_object)
 * for text that cJSON's C strings cannot hold whole; their numbers are
 * printed by cJSON itself, so hand-written JSON matches cJSON's figures.
 */
#include "json.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strbuf.h"

static enum es_status check_depth_and_utf8(const char *buf, size_t len, int max_depth,
                                           struct es_err *err)
{
    int depth = 0;
    bool in_string = false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)buf[i];
        if (in_string) {
            if (c == '\\') {
                i++;
            } else if (c == '"') {
                in_string = false;
            } else if (c >= 0x80) {
                int n = utf8_char_len((const unsigned char *)buf + i, len - i);
                if (n == 0)
                    return es_fail(err, ES_EINVAL, "invalid UTF-8 in JSON string at byte %zu", i);
                i += (size_t)n - 1;
            }
            continue;
        }
        if (c == '"') {
            in_string = true;
        } else if (c == '[' || c == '{') {
            if (++depth > max_depth)
                return es_fail(err, ES_EINVAL, "JSON nested deeper than %d levels", max_depth);
        } else if (c == ']' || c == '}') {
            depth--;
        }
    }
    return ES_OK;
}

cJSON *js_parse(const char *buf, size_t len, int max_depth, struct es_err *err)
{
    if (max_depth <= 0) max_depth = JS_MAX_DEPTH;
    if (len == 0) {
        es_fail(err, ES_EINVAL, "empty JSON document");
        return NULL;
    }
    if (memchr(buf, '\0', len)) {
        es_fail(err, ES_EINVAL, "NUL byte in JSON document");
        return NULL;
    }
    if (check_depth_and_utf8(buf, len, max_depth, err) != ES_OK) return NULL;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(buf, len, &end, false);
    if (!root) {
        size_t at = end && end >= buf ? (size_t)(end - buf) : 0;
        es_fail(err, ES_EINVAL, "invalid JSON near byte %zu", at);
        return NULL;
    }
    while (end && (size_t)(end - buf) < len &&
           (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n'))
        end++;
    if (end && (size_t)(end - buf) < len) {
        es_fail(err, ES_EINVAL, "trailing data after JSON value at byte %zu", (size_t)(end - buf));
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

/* Counts the \u0000 escapes inside JSON strings of buf[0..len), stopping
 * at the first when mask is NULL; with mask (buf itself, writable) each
 * becomes \ufffd. */
static size_t scan_nul_escapes(const char *buf, size_t len, char *mask)
{
    size_t n = 0;
    bool in_string = false;
    for (size_t i = 0; i < len; i++) {
        if (!in_string) {
            in_string = buf[i] == '"';
        } else if (buf[i] == '"') {
            in_string = false;
        } else if (buf[i] == '\\') {
            if (i + 5 < len && memcmp(buf + i + 1, "u0000", 5) == 0) {
                if (!mask) return 1;
                memcpy(mask + i + 1, "ufffd", 5);
                n++;
            }
            i++; /* the escaped character (or the 'u') is no quote */
        }
    }
    return n;
}

bool js_has_nul_escape(const char *buf, size_t len)
{
    return scan_nul_escapes(buf, len, NULL) > 0;
}

size_t js_mask_nul_escapes(char *buf, size_t len)
{
    return scan_nul_escapes(buf, len, buf);
}

cJSON *js_parse_file(const char *path, struct es_err *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        es_fail(err, ES_EIO, "%s: %s", path, strerror(errno));
        return NULL;
    }
    struct strbuf sb = {0};
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (sb_append(&sb, chunk, n) != ES_OK) {
            fclose(f);
            sb_free(&sb);
            es_fail(err, ES_ENOMEM, "%s: out of memory", path);
            return NULL;
        }
    }
    bool failed = ferror(f);
    fclose(f);
    if (failed) {
        sb_free(&sb);
        es_fail(err, ES_EIO, "%s: read error", path);
        return NULL;
    }
    cJSON *root = js_parse(sb_cstr(&sb), sb.len, 0, err);
    sb_free(&sb);
    if (!root) es_wrap(err, ES_EFORMAT, "%s: ", path);
    return root;
}

const char *js_type_name(const cJSON *item)
{
    if (!item) return "nothing";
    if (cJSON_IsString(item)) return "string";
    if (cJSON_IsNumber(item)) return "number";
    if (cJSON_IsBool(item)) return "boolean";
    if (cJSON_IsNull(item)) return "null";
    if (cJSON_IsArray(item)) return "array";
    if (cJSON_IsObject(item)) return "object";
    return "invalid";
}

bool js_has(const cJSON *obj, const char *field)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, field);
    return it && !cJSON_IsNull(it);
}

/* Looks a field up; returns ES_ENOTFOUND when absent or null, with an
 * error only if it was required. */
static enum es_status lookup(const cJSON *obj, const char *field, bool required, const cJSON **item,
                             struct es_err *err)
{
    const cJSON *it = cJSON_IsObject(obj) ? cJSON_GetObjectItemCaseSensitive(obj, field) : NULL;
    if (!it || cJSON_IsNull(it)) {
        if (required) return es_fail(err, ES_EINVAL, "'%s' is required", field);
        return ES_ENOTFOUND;
    }
    *item = it;
    return ES_OK;
}

#define LOOKUP_OR_RETURN(obj, field, required, item, err)                                          \
    do {                                                                                           \
        enum es_status st_ = lookup(obj, field, required, &item, err);                             \
        if (st_ == ES_ENOTFOUND) return ES_OK;                                                     \
        if (st_ != ES_OK) return st_;                                                              \
    } while (0)

enum es_status js_get_str(const cJSON *obj, const char *field, bool required, const char **out,
                          struct es_err *err)
{
    const cJSON *it = NULL;
    LOOKUP_OR_RETURN(obj, field, required, it, err);
    if (!cJSON_IsString(it))
        return es_fail(err, ES_EINVAL, "'%s' must be a string, got %s", field, js_type_name(it));
    *out = it->valuestring;
    return ES_OK;
}

enum es_status js_as_num(const cJSON *item, const char *what, double min, double max, double *out,
                         struct es_err *err)
{
    if (!cJSON_IsNumber(item))
        return es_fail(err, ES_EINVAL, "%s must be a number, got %s", what, js_type_name(item));
    double d = item->valuedouble;
    if (!isfinite(d)) return es_fail(err, ES_EINVAL, "%s must be a finite number", what);
    if (d < min || d > max)
        return es_fail(err, ES_ERANGE, "%s must be between %g and %g, got %g", what, min, max, d);
    *out = d;
    return ES_OK;
}

enum es_status js_as_int(const cJSON *item, const char *what, int64_t min, int64_t max,
                         int64_t *out, struct es_err *err)
{
    if (!cJSON_IsNumber(item))
        return es_fail(err, ES_EINVAL, "%s must be an integer, got %s", what, js_type_name(item));
    double d = item->valuedouble;
    if (!isfinite(d) || d != floor(d))
        return es_fail(err, ES_EINVAL, "%s must be an integer", what);
    /* Compare in double first: casting an out-of-range double is undefined. */
    if (d < (double)min || d > (double)max || d >= 9223372036854775808.0 ||
        d < -9223372036854775808.0)
        return es_fail(err, ES_ERANGE, "%s must be between %lld and %lld", what, (long long)min,
                       (long long)max);
    int64_t v = (int64_t)d;
    if (v < min || v > max)
        return es_fail(err, ES_ERANGE, "%s must be between %lld and %lld", what, (long long)min,
                       (long long)max);
    *out = v;
    return ES_OK;
}

enum es_status js_get_int(const cJSON *obj, const char *field, bool required, int64_t min,
                          int64_t max, int64_t *out, struct es_err *err)
{
    const cJSON *it = NULL;
    LOOKUP_OR_RETURN(obj, field, required, it, err);
    char what[160];
    snprintf(what, sizeof what, "'%s'", field);
    return js_as_int(it, what, min, max, out, err);
}

enum es_status js_get_num(const cJSON *obj, const char *field, bool required, double min,
                          double max, double *out, struct es_err *err)
{
    const cJSON *it = NULL;
    LOOKUP_OR_RETURN(obj, field, required, it, err);
    char what[160];
    snprintf(what, sizeof what, "'%s'", field);
    return js_as_num(it, what, min, max, out, err);
}

enum es_status js_get_bool(const cJSON *obj, const char *field, bool required, bool *out,
                           struct es_err *err)
{
    const cJSON *it = NULL;
    LOOKUP_OR_RETURN(obj, field, required, it, err);
    if (!cJSON_IsBool(it))
        return es_fail(err, ES_EINVAL, "'%s' must be a boolean, got %s", field, js_type_name(it));
    *out = cJSON_IsTrue(it);
    return ES_OK;
}

enum es_status js_get_arr(const cJSON *obj, const char *field, bool required, const cJSON **out,
                          struct es_err *err)
{
    const cJSON *it = NULL;
    LOOKUP_OR_RETURN(obj, field, required, it, err);
    if (!cJSON_IsArray(it))
        return es_fail(err, ES_EINVAL, "'%s' must be an array, got %s", field, js_type_name(it));
    *out = it;
    return ES_OK;
}

enum es_status js_get_obj(const cJSON *obj, const char *field, bool required, const cJSON **out,
                          struct es_err *err)
{
    const cJSON *it = NULL;
    LOOKUP_OR_RETURN(obj, field, required, it, err);
    if (!cJSON_IsObject(it))
        return es_fail(err, ES_EINVAL, "'%s' must be an object, got %s", field, js_type_name(it));
    *out = it;
    return ES_OK;
}

cJSON *js_create_string_n(const char *s, size_t len)
{
    if (len == 0) return cJSON_CreateString("");
    if (!memchr(s, '\0', len)) {
        char *copy = malloc(len + 1);
        if (!copy) return NULL;
        memcpy(copy, s, len);
        copy[len] = '\0';
        cJSON *item = cJSON_CreateString(copy);
        free(copy);
        return item;
    }
    struct strbuf lit = {0};
    cJSON *item = NULL;
    if (sb_json_str(&lit, s, len) == ES_OK) item = cJSON_CreateRaw(sb_cstr(&lit));
    sb_free(&lit);
    return item;
}

enum es_status js_print_number(struct strbuf *out, double v)
{
    /* A number item on the stack, set as cJSON_CreateNumber sets one. */
    cJSON num;
    memset(&num, 0, sizeof(num));
    num.type = cJSON_Number;
    cJSON_SetNumberHelper(&num, v);
    char buf[64]; /* cJSON's number buffer is 26 bytes */
    if (!cJSON_PrintPreallocated(&num, buf, (int)sizeof(buf), false)) return ES_ENOMEM;
    return sb_puts(out, buf);
}

void js_raw_object_add_number(struct js_raw_object *o, const char *key, size_t key_len, double v)
{
    if (o->st != ES_OK) return;
    o->st = sb_putc(&o->text, o->text.len == 0 ? '{' : ',');
    if (o->st == ES_OK) o->st = sb_json_str(&o->text, key ? key : "", key_len);
    if (o->st == ES_OK) o->st = sb_putc(&o->text, ':');
    if (o->st == ES_OK) o->st = js_print_number(&o->text, v);
}

cJSON *js_raw_object_finish(struct js_raw_object *o)
{
    cJSON *item = NULL;
    if (o->st == ES_OK) o->st = o->text.len == 0 ? sb_putc(&o->text, '{') : ES_OK;
    if (o->st == ES_OK) o->st = sb_putc(&o->text, '}');
    if (o->st == ES_OK) item = cJSON_CreateRaw(sb_cstr(&o->text));
    sb_free(&o->text);
    return item;
}
