/*
 * fuzz_json.c - libFuzzer target for common/json.c and the string helpers
 * of common/strbuf.c that every request and response passes through.
 *
 * The input is a JSON document. The first byte picks js_parse's max_depth
 * (so both the default limit and tiny limits are exercised); the rest is
 * parsed. On success every member of every object is read with every typed
 * accessor, and every array element with js_as_int/js_as_num, over a few
 * ranges. Invariants checked (abort on violation):
 *   - an accessor that says ES_OK wrote a value that satisfies its range;
 *   - a parsed document printed by cJSON parses again to an equal document;
 *   - sb_json_str of any bytes is a JSON string literal that js_parse
 *     accepts, and for valid UTF-8 without NUL decodes to the same bytes;
 *   - utf8_valid_prefix returns a prefix made only of valid characters.
 * Never does: file I/O, global state.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "strbuf.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_json: invariant failed at line %d: %s\n", __LINE__, #cond);    \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static const struct {
    int64_t min, max;
} int_ranges[] = {
    {INT64_MIN, INT64_MAX}, {0, 1}, {-1, 4096}, {0, INT32_MAX}, {INT32_MIN, INT32_MAX},
};
static const struct {
    double min, max;
} num_ranges[] = {{-INFINITY, INFINITY}, {0.0, 2.0}, {-1e308, 1e308}, {0.0, 0.0}};

static void check_item(const cJSON *item, const char *what)
{
    struct es_err err = {{0}};
    for (size_t r = 0; r < sizeof int_ranges / sizeof int_ranges[0]; r++) {
        int64_t v = 12345;
        enum es_status st = js_as_int(item, what, int_ranges[r].min, int_ranges[r].max, &v, &err);
        if (st == ES_OK) CHECK(v >= int_ranges[r].min && v <= int_ranges[r].max);
        else CHECK(v == 12345 && err.msg[0] != '\0');
        es_err_clear(&err);
    }
    for (size_t r = 0; r < sizeof num_ranges / sizeof num_ranges[0]; r++) {
        double d = 0.5;
        enum es_status st = js_as_num(item, what, num_ranges[r].min, num_ranges[r].max, &d, &err);
        if (st == ES_OK) CHECK(isfinite(d) && d >= num_ranges[r].min && d <= num_ranges[r].max);
        else CHECK(d == 0.5 && err.msg[0] != '\0');
        es_err_clear(&err);
    }
}

static void check_fields(const cJSON *obj)
{
    struct es_err err = {{0}};
    const cJSON *m;
    cJSON_ArrayForEach(m, obj)
    {
        const char *field = m->string ? m->string : "";
        bool required = field[0] & 1;
        const char *s = NULL;
        if (js_get_str(obj, field, required, &s, &err) == ES_OK && s) CHECK(strlen(s) < (1u << 30));
        es_err_clear(&err);
        for (size_t r = 0; r < sizeof int_ranges / sizeof int_ranges[0]; r++) {
            int64_t v = -7;
            if (js_get_int(obj, field, required, int_ranges[r].min, int_ranges[r].max, &v, &err) ==
                    ES_OK &&
                v != -7)
                CHECK(v >= int_ranges[r].min && v <= int_ranges[r].max);
            es_err_clear(&err);
        }
        for (size_t r = 0; r < sizeof num_ranges / sizeof num_ranges[0]; r++) {
            double d = -7.5;
            if (js_get_num(obj, field, required, num_ranges[r].min, num_ranges[r].max, &d, &err) ==
                    ES_OK &&
                d != -7.5)
                CHECK(isfinite(d) && d >= num_ranges[r].min && d <= num_ranges[r].max);
            es_err_clear(&err);
        }
        bool b;
        (void)js_get_bool(obj, field, required, &b, &err);
        es_err_clear(&err);
        const cJSON *sub = NULL;
        if (js_get_arr(obj, field, required, &sub, &err) == ES_OK && sub)
            CHECK(cJSON_IsArray(sub));
        es_err_clear(&err);
        sub = NULL;
        if (js_get_obj(obj, field, required, &sub, &err) == ES_OK && sub)
            CHECK(cJSON_IsObject(sub));
        es_err_clear(&err);
        CHECK(js_has(obj, field) == !cJSON_IsNull(m) ||
              cJSON_GetObjectItemCaseSensitive(obj, field) != m); /* duplicate keys */
        (void)js_type_name(m);
    }
    /* An absent field: optional is ES_OK and untouched, required is EINVAL
     * (the fuzzer can put any key in, so check that it really is absent). */
    static const char absent[] = "\x01never-a-key";
    if (!cJSON_GetObjectItemCaseSensitive(obj, absent)) {
        int64_t v = 99;
        CHECK(js_get_int(obj, absent, false, 0, 1, &v, &err) == ES_OK && v == 99);
        CHECK(js_get_int(obj, absent, true, 0, 1, &v, &err) == ES_EINVAL);
    }
}

static void walk(const cJSON *node, int depth)
{
    if (depth > JS_MAX_DEPTH + 2) abort(); /* js_parse let a deeper document through */
    char what[32];
    int i = 0;
    const cJSON *c;
    if (cJSON_IsObject(node)) check_fields(node);
    cJSON_ArrayForEach(c, node)
    {
        snprintf(what, sizeof what, "'x[%d]'", i++);
        check_item(c, what);
        walk(c, depth + 1);
    }
}

static void check_roundtrip(const cJSON *root)
{
    char *text = cJSON_PrintUnformatted(root);
    if (!text) return; /* out of memory inside cJSON */
    struct es_err err = {{0}};
    cJSON *again = js_parse(text, strlen(text), 0, &err);
    if (!again) {
        fprintf(stderr, "reparse failed: %s\n", err.msg);
        abort();
    }
    char *text2 = cJSON_PrintUnformatted(again);
    CHECK(text2 && strcmp(text, text2) == 0);
    free(text2);
    cJSON_Delete(again);
    free(text);
}

static void check_json_str(const uint8_t *data, size_t size)
{
    struct strbuf sb = {0};
    if (sb_json_str(&sb, (const char *)data, size) != ES_OK) return;
    struct es_err err = {{0}};
    cJSON *s = js_parse(sb.s, sb.len, 0, &err);
    if (!s) {
        fprintf(stderr, "sb_json_str output rejected: %s\n", err.msg);
        abort();
    }
    CHECK(cJSON_IsString(s));
    size_t valid = utf8_valid_prefix((const char *)data, size);
    CHECK(valid <= size);
    for (size_t i = 0; i < valid;) {
        int n = utf8_char_len(data + i, valid - i);
        CHECK(n >= 1 && n <= 4);
        i += (size_t)n;
    }
    if (valid == size && !memchr(data, 0, size))
        CHECK(strlen(s->valuestring) == size && memcmp(s->valuestring, data, size) == 0);
    cJSON_Delete(s);
    sb_free(&sb);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) return 0;
    int max_depth = data[0] < 128 ? 0 : data[0] - 127; /* 0 = default limit */
    /* An exact-size copy, so a read past the end trips ASan. */
    char *buf = malloc(size - 1 ? size - 1 : 1);
    if (!buf) return 0;
    memcpy(buf, data + 1, size - 1);
    struct es_err err = {{0}};
    cJSON *root = js_parse(buf, size - 1, max_depth, &err);
    if (root) {
        walk(root, 1);
        check_roundtrip(root);
        cJSON_Delete(root);
    } else {
        CHECK(err.msg[0] != '\0');
    }
    free(buf);
    check_json_str(data + 1, size - 1);
    return 0;
}
