/*
 * test_json.c - the typed cJSON helpers of common/json.h: parsing limits
 * (depth, UTF-8, trailing data, exact lengths) and every accessor's types,
 * ranges and absent-versus-null behaviour; the length-aware output helpers
 * (strings and keys holding NUL, numbers as cJSON prints them). Buffers
 * handed to js_parse are exactly sized heap copies without a NUL, so ASan
 * sees any over-read.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "json.h"
#include "testing.h"

/* Parses exactly strlen(text) bytes from an unterminated heap copy. */
static cJSON *parse_n(const char *text, size_t len, int depth, enum es_status *st, char *msg)
{
    char *copy = malloc(len ? len : 1);
    memcpy(copy, text, len);
    struct es_err err = {{0}};
    cJSON *root = js_parse(copy, len, depth, &err);
    free(copy);
    if (!root) CHECK(err.msg[0] != '\0');
    if (st) *st = root ? ES_OK : ES_EINVAL;
    if (msg) snprintf(msg, 512, "%s", err.msg);
    return root;
}

static bool parses(const char *text, int depth)
{
    cJSON *r = parse_n(text, strlen(text), depth, NULL, NULL);
    cJSON_Delete(r);
    return r != NULL;
}

static void test_parse_limits(void)
{
    char msg[512];
    CHECK(parses("{\"a\":[1,2,{\"b\":null}]}", 0));
    CHECK(parses("  {\"a\":1}  \n\t", 0));
    CHECK(!parses("", 0));
    CHECK(!parses("   ", 0));
    CHECK(!parses("{\"a\":1} x", 0));
    CHECK(!parses("{\"a\":1}{}", 0));
    CHECK(!parses("[1,2]]", 0));
    CHECK(!parses("{\"a\":}", 0));
    CHECK(!parses("{'a':1}", 0));
    CHECK(!parses("NaN", 0));
    CHECK(!parses("[Infinity]", 0));
    CHECK(!parses("[-Infinity]", 0));
    CHECK(parses("\"plain\"", 0) && parses("42", 0) && parses("null", 0));

    /* Only len bytes count: what follows in memory is ignored. */
    const char *longer = "{\"a\":1}GARBAGE";
    cJSON *r = parse_n(longer, 7, 0, NULL, NULL);
    CHECK(r && cJSON_GetObjectItem(r, "a"));
    cJSON_Delete(r);
    r = parse_n(longer, 6, 0, NULL, msg); /* cut mid-document */
    CHECK(r == NULL);

    /* NUL bytes inside the buffer */
    r = parse_n("{\"a\":\"x\0y\"}", 11, 0, NULL, msg);
    CHECK(r == NULL && strstr(msg, "NUL"));

    /* UTF-8 inside strings */
    CHECK(parses("[\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"]", 0));
    CHECK(parses("[\"\\u00e9\\ud83d\\ude00\"]", 0));
    r = parse_n("[\"\xff\"]", 5, 0, NULL, msg);
    CHECK(r == NULL && strstr(msg, "UTF-8"));
    CHECK(!parses("[\"\xc0\x80\"]", 0));         /* overlong NUL */
    CHECK(!parses("[\"\xed\xa0\x80\"]", 0));     /* encoded surrogate */
    CHECK(!parses("[\"\xe2\x82\"]", 0));         /* truncated sequence */
    CHECK(!parses("[\"\xf4\x90\x80\x80\"]", 0)); /* above U+10FFFF */
    CHECK(!parses("{\"k\x80\":1}", 0));          /* in a key, too */

    /* Depth: exactly the limit passes, one more fails; brackets inside
     * strings and escaped quotes do not count. */
    CHECK(parses("[[[1]]]", 3));
    CHECK(!parses("[[[1]]]", 2));
    CHECK(parses("[\"[[[[[[\"]", 1));
    CHECK(parses("[\"\\\"[[[[[\"]", 1));
    CHECK(parses("{\"a\":{\"b\":{}}}", 3));
    CHECK(!parses("{\"a\":{\"b\":{}}}", 2));
    char deep_ok[2 * JS_MAX_DEPTH + 1];
    memset(deep_ok, '[', JS_MAX_DEPTH);
    memset(deep_ok + JS_MAX_DEPTH, ']', JS_MAX_DEPTH);
    deep_ok[2 * JS_MAX_DEPTH] = 0;
    CHECK(parses(deep_ok, 0));

    /* 100,000-deep documents are refused quickly, without recursion. */
    size_t depth = 100000;
    char *deep = malloc(2 * depth + 8);
    memset(deep, '[', depth);
    memset(deep + depth, ']', depth);
    r = parse_n(deep, 2 * depth, 0, NULL, msg);
    CHECK(r == NULL && strstr(msg, "deeper"));
    for (size_t i = 0; i < depth; i++)
        memcpy(deep + 5 * (i % (depth / 5)), "{\"a\":", 5);
    r = parse_n(deep, depth, 0, NULL, msg); /* unbalanced {"a":{"a":... */
    CHECK(r == NULL);
    free(deep);
}

static cJSON *doc(void)
{
    static const char *text =
        "{\"s\":\"hello\",\"i\":42,\"neg\":-7,\"frac\":1.5,\"big\":1e308,\"huge\":1e999,"
        "\"i64max\":9223372036854775807,\"i64min\":-9223372036854775808,\"exp\":1e2,"
        "\"negzero\":-0,\"t\":true,\"f\":false,\"n\":null,\"a\":[1,\"x\",2.5],\"o\":{\"k\":1},"
        "\"str_num\":\"5\"}";
    cJSON *r = parse_n(text, strlen(text), 0, NULL, NULL);
    CHECK(r != NULL);
    return r;
}

static bool msg_has(const char *msg, const char *needle)
{
    return !needle || strstr(msg, needle) != NULL;
}

#define ERR_IS(call, want, needle)                                                                 \
    do {                                                                                           \
        struct es_err e_ = {{0}};                                                                  \
        enum es_status s_ = (call);                                                                \
        if (s_ != (want) || !msg_has(e_.msg, needle)) {                                            \
            fprintf(stderr, "%s:%d: %s -> %d '%s'\n", __FILE__, __LINE__, #call, s_, e_.msg);      \
            test_failures++;                                                                       \
        }                                                                                          \
    } while (0)

static void test_int(void)
{
    cJSON *d = doc();
    int64_t v = -99;
    ERR_IS(js_get_int(d, "i", true, 0, 100, &v, &e_), ES_OK, NULL);
    CHECK(v == 42);
    ERR_IS(js_get_int(d, "neg", true, -10, 10, &v, &e_), ES_OK, NULL);
    CHECK(v == -7);
    ERR_IS(js_get_int(d, "exp", true, 0, 1000, &v, &e_), ES_OK, NULL);
    CHECK(v == 100);
    ERR_IS(js_get_int(d, "negzero", true, 0, 1, &v, &e_), ES_OK, NULL);
    CHECK(v == 0);
    ERR_IS(js_get_int(d, "i", true, 0, 41, &v, &e_), ES_ERANGE, "'i'");
    ERR_IS(js_get_int(d, "i", true, 43, 50, &v, &e_), ES_ERANGE, "between 43 and 50");
    ERR_IS(js_get_int(d, "frac", true, 0, 10, &v, &e_), ES_EINVAL, "'frac' must be an integer");
    ERR_IS(js_get_int(d, "s", true, 0, 10, &v, &e_), ES_EINVAL, "got string");
    ERR_IS(js_get_int(d, "t", true, 0, 10, &v, &e_), ES_EINVAL, "got boolean");
    ERR_IS(js_get_int(d, "a", true, 0, 10, &v, &e_), ES_EINVAL, "got array");
    ERR_IS(js_get_int(d, "str_num", true, 0, 10, &v, &e_), ES_EINVAL, "'str_num'");
    ERR_IS(js_get_int(d, "big", true, INT64_MIN, INT64_MAX, &v, &e_), ES_ERANGE, "'big'");
    ERR_IS(js_get_int(d, "huge", true, INT64_MIN, INT64_MAX, &v, &e_), ES_EINVAL, "'huge'");
    /* 2^63 - 1 is not representable as a double: it reads as 2^63, out of
     * range rather than silently wrapped. */
    ERR_IS(js_get_int(d, "i64max", true, INT64_MIN, INT64_MAX, &v, &e_), ES_ERANGE, "'i64max'");
    v = 0;
    ERR_IS(js_get_int(d, "i64min", true, INT64_MIN, INT64_MAX, &v, &e_), ES_OK, NULL);
    CHECK(v == INT64_MIN);
    /* absent / null: optional leaves *out alone, required names the field */
    v = 1234;
    ERR_IS(js_get_int(d, "missing", false, 0, 10, &v, &e_), ES_OK, NULL);
    ERR_IS(js_get_int(d, "n", false, 0, 10, &v, &e_), ES_OK, NULL);
    CHECK(v == 1234);
    ERR_IS(js_get_int(d, "missing", true, 0, 10, &v, &e_), ES_EINVAL, "'missing' is required");
    ERR_IS(js_get_int(d, "n", true, 0, 10, &v, &e_), ES_EINVAL, "'n' is required");
    CHECK(v == 1234);
    /* not an object at all */
    const cJSON *arr = cJSON_GetObjectItem(d, "a");
    ERR_IS(js_get_int(arr, "i", false, 0, 10, &v, &e_), ES_OK, NULL);
    ERR_IS(js_get_int(arr, "i", true, 0, 10, &v, &e_), ES_EINVAL, "required");
    ERR_IS(js_get_int(NULL, "i", true, 0, 10, &v, &e_), ES_EINVAL, "required");
    /* array elements */
    ERR_IS(js_as_int(cJSON_GetArrayItem(arr, 0), "'a[0]'", 0, 5, &v, &e_), ES_OK, NULL);
    CHECK(v == 1);
    ERR_IS(js_as_int(cJSON_GetArrayItem(arr, 1), "'a[1]'", 0, 5, &v, &e_), ES_EINVAL, "'a[1]'");
    ERR_IS(js_as_int(cJSON_GetArrayItem(arr, 2), "'a[2]'", 0, 5, &v, &e_), ES_EINVAL, "'a[2]'");
    ERR_IS(js_as_int(NULL, "'x'", 0, 5, &v, &e_), ES_EINVAL, "'x'");
    cJSON_Delete(d);
}

static void test_num(void)
{
    cJSON *d = doc();
    double x = -1;
    ERR_IS(js_get_num(d, "frac", true, 0, 2, &x, &e_), ES_OK, NULL);
    CHECK(x == 1.5);
    ERR_IS(js_get_num(d, "i", true, 0, 100, &x, &e_), ES_OK, NULL);
    CHECK(x == 42.0);
    ERR_IS(js_get_num(d, "big", true, 0, INFINITY, &x, &e_), ES_OK, NULL);
    CHECK(x == 1e308);
    ERR_IS(js_get_num(d, "big", true, 0, 1e300, &x, &e_), ES_ERANGE, "'big'");
    ERR_IS(js_get_num(d, "huge", true, -INFINITY, INFINITY, &x, &e_), ES_EINVAL, "finite");
    ERR_IS(js_get_num(d, "frac", true, 2, 3, &x, &e_), ES_ERANGE, "'frac'");
    ERR_IS(js_get_num(d, "s", true, 0, 1, &x, &e_), ES_EINVAL, "'s' must be a number, got string");
    x = 7;
    ERR_IS(js_get_num(d, "n", false, 0, 1, &x, &e_), ES_OK, NULL);
    ERR_IS(js_get_num(d, "nope", false, 0, 1, &x, &e_), ES_OK, NULL);
    CHECK(x == 7);
    ERR_IS(js_get_num(d, "nope", true, 0, 1, &x, &e_), ES_EINVAL, "'nope'");
    ERR_IS(js_as_num(cJSON_GetObjectItem(d, "o"), "'o'", 0, 1, &x, &e_), ES_EINVAL, "got object");
    cJSON_Delete(d);
}

static void test_other_types(void)
{
    cJSON *d = doc();
    const char *s = NULL;
    bool b = false;
    const cJSON *item = NULL;
    ERR_IS(js_get_str(d, "s", true, &s, &e_), ES_OK, NULL);
    CHECK_STR(s, "hello");
    ERR_IS(js_get_str(d, "i", true, &s, &e_), ES_EINVAL, "'i' must be a string, got number");
    ERR_IS(js_get_str(d, "n", true, &s, &e_), ES_EINVAL, "required");
    s = "keep";
    ERR_IS(js_get_str(d, "n", false, &s, &e_), ES_OK, NULL);
    CHECK_STR(s, "keep");

    ERR_IS(js_get_bool(d, "t", true, &b, &e_), ES_OK, NULL);
    CHECK(b);
    ERR_IS(js_get_bool(d, "f", true, &b, &e_), ES_OK, NULL);
    CHECK(!b);
    ERR_IS(js_get_bool(d, "i", true, &b, &e_), ES_EINVAL, "must be a boolean, got number");
    ERR_IS(js_get_bool(d, "s", true, &b, &e_), ES_EINVAL, "got string");
    b = true;
    ERR_IS(js_get_bool(d, "missing", false, &b, &e_), ES_OK, NULL);
    CHECK(b);

    ERR_IS(js_get_arr(d, "a", true, &item, &e_), ES_OK, NULL);
    CHECK(item && cJSON_GetArraySize(item) == 3);
    ERR_IS(js_get_arr(d, "o", true, &item, &e_), ES_EINVAL, "must be an array, got object");
    ERR_IS(js_get_obj(d, "o", true, &item, &e_), ES_OK, NULL);
    CHECK(item && cJSON_GetObjectItem(item, "k"));
    ERR_IS(js_get_obj(d, "a", true, &item, &e_), ES_EINVAL, "must be an object, got array");
    item = NULL;
    ERR_IS(js_get_obj(d, "n", false, &item, &e_), ES_OK, NULL);
    CHECK(item == NULL);

    CHECK(js_has(d, "s") && js_has(d, "f") && !js_has(d, "n") && !js_has(d, "missing"));
    CHECK(!js_has(NULL, "s"));
    CHECK_STR(js_type_name(cJSON_GetObjectItem(d, "s")), "string");
    CHECK_STR(js_type_name(cJSON_GetObjectItem(d, "i")), "number");
    CHECK_STR(js_type_name(cJSON_GetObjectItem(d, "t")), "boolean");
    CHECK_STR(js_type_name(cJSON_GetObjectItem(d, "n")), "null");
    CHECK_STR(js_type_name(cJSON_GetObjectItem(d, "a")), "array");
    CHECK_STR(js_type_name(cJSON_GetObjectItem(d, "o")), "object");
    CHECK_STR(js_type_name(NULL), "nothing");
    /* field names are case-sensitive */
    ERR_IS(js_get_str(d, "S", true, &s, &e_), ES_EINVAL, "'S'");
    cJSON_Delete(d);
}

static void test_parse_file(void)
{
    char path[] = "/tmp/test_json_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    const char *text = "{\"x\": [1, 2, 3]}\n";
    CHECK(write(fd, text, strlen(text)) == (ssize_t)strlen(text));
    close(fd);
    struct es_err err = {{0}};
    cJSON *r = js_parse_file(path, &err);
    CHECK(r && cJSON_GetArraySize(cJSON_GetObjectItem(r, "x")) == 3);
    cJSON_Delete(r);
    FILE *f = fopen(path, "w");
    fputs("{\"x\": [1, 2", f);
    fclose(f);
    err.msg[0] = 0;
    CHECK(js_parse_file(path, &err) == NULL && strstr(err.msg, path));
    unlink(path);
    err.msg[0] = 0;
    CHECK(js_parse_file(path, &err) == NULL && strstr(err.msg, path));
}

/* What cJSON itself prints for an item (freed here). */
static void cjson_text(cJSON *item, char *out, size_t cap)
{
    char *s = cJSON_PrintUnformatted(item);
    snprintf(out, cap, "%s", s ? s : "<null>");
    cJSON_free(s);
    cJSON_Delete(item);
}

static void test_length_aware_output(void)
{
    /* Numbers: byte for byte what cJSON prints, whichever precision it picks. */
    const double nums[] = {0.0,
                           -0.0,
                           1.0,
                           -9999.0,
                           3.5,
                           2147483648.0,
                           -2147483649.0,
                           1e-7,
                           0.1,
                           -2.0150859355926514,
                           (double)-18.605182f,
                           (double)-3.39245915f,
                           1e300,
                           -1.2345678901234567e-200,
                           123456789012345.0};
    for (size_t i = 0; i < sizeof(nums) / sizeof(nums[0]); i++) {
        char want[128];
        cjson_text(cJSON_CreateNumber(nums[i]), want, sizeof(want));
        struct strbuf got = {0};
        CHECK(js_print_number(&got, nums[i]) == ES_OK);
        CHECK(strcmp(sb_cstr(&got), want) == 0);
        sb_free(&got);
    }

    /* Strings: plain cJSON strings without NUL, escaped raw text with it. */
    char text[128];
    cJSON *item = js_create_string_n("a\"b\n\x01"
                                     "c",
                                     6);
    CHECK(cJSON_IsString(item) && strcmp(item->valuestring, "a\"b\n\x01"
                                                            "c") == 0);
    cjson_text(item, text, sizeof(text));
    CHECK(strcmp(text, "\"a\\\"b\\n\\u0001c\"") == 0);
    item = js_create_string_n("abcdef", 3); /* not NUL-terminated at len */
    CHECK(cJSON_IsString(item) && strcmp(item->valuestring, "abc") == 0);
    cJSON_Delete(item);
    item = js_create_string_n(NULL, 0);
    CHECK(cJSON_IsString(item) && item->valuestring[0] == '\0');
    cJSON_Delete(item);
    item = js_create_string_n("A\0B\x1f\xc3\xa9", 6);
    CHECK(cJSON_IsRaw(item));
    cJSON *arr = cJSON_CreateArray();
    cJSON_AddItemToArray(arr, item);
    cjson_text(arr, text, sizeof(text));
    CHECK(strcmp(text, "[\"A\\u0000B\\u001f\xc3\xa9\"]") == 0);

    /* Objects: the same text cJSON prints, NUL keys included. */
    cJSON *ref = cJSON_CreateObject();
    cJSON_AddNumberToObject(ref, "x", -1.25);
    cJSON_AddNumberToObject(ref, "\"y\"", (double)-3.39245915f);
    char want[128];
    cjson_text(ref, want, sizeof(want));
    struct js_raw_object o = {0};
    js_raw_object_add_number(&o, "x", 1, -1.25);
    js_raw_object_add_number(&o, "\"y\"", 3, (double)-3.39245915f);
    cjson_text(js_raw_object_finish(&o), text, sizeof(text));
    CHECK(strcmp(text, want) == 0);
    struct js_raw_object nul = {0};
    js_raw_object_add_number(&nul, "\0", 1, 2.0);
    js_raw_object_add_number(&nul, "\0\0", 2, 3.0);
    cjson_text(js_raw_object_finish(&nul), text, sizeof(text));
    CHECK(strcmp(text, "{\"\\u0000\":2,\"\\u0000\\u0000\":3}") == 0);
    struct js_raw_object empty = {0};
    cjson_text(js_raw_object_finish(&empty), text, sizeof(text));
    CHECK(strcmp(text, "{}") == 0);
}

static void test_mask_nul_escapes(void)
{
    /* only a \u0000 escape inside a string changes; an escaped backslash
     * followed by "u0000" is text, and so is u0000 outside any escape */
    char doc[] = "{\"a\":\"x\\u0000y\",\"b\":\"\\\\u0000\",\"u0000\":\"\\\"\\u0000\"}";
    const char want[] =
        "{\"a\":\"x\\ufffdy\",\"b\":\"\\\\u0000\",\"u0000\":\"\\\"\\ufffd\"}";
    CHECK(js_mask_nul_escapes(doc, strlen(doc)) == 2);
    CHECK(strcmp(doc, want) == 0);
    cJSON *root = js_parse(doc, strlen(doc), 0, NULL);
    CHECK(root != NULL);
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(root, "a");
    CHECK(cJSON_IsString(a) && strcmp(a->valuestring, "x\xef\xbf\xbdy") == 0);
    cJSON_Delete(root);
    /* an escape cut at the end of the buffer is left alone */
    char cut[] = "\"\\u000";
    CHECK(js_mask_nul_escapes(cut, strlen(cut)) == 0 && strcmp(cut, "\"\\u000") == 0);
}

int main(void)
{
    test_parse_limits();
    test_int();
    test_num();
    test_other_types();
    test_parse_file();
    test_length_aware_output();
    test_mask_nul_escapes();
    return test_result("test_json");
}
