/*
 * test_strbuf.c - growable strings, int vectors, UTF-8 checks and the JSON
 * string writer.
 */
#include <stdlib.h>

#include "strbuf.h"
#include "testing.h"

int main(void)
{
    struct strbuf sb = {0};
    CHECK_STR(sb_cstr(&sb), "");
    for (int i = 0; i < 1000; i++) CHECK(sb_printf(&sb, "%d,", i) == ES_OK);
    CHECK(sb.len == 3890);
    CHECK(strncmp(sb.s, "0,1,2,", 6) == 0);
    sb_clear(&sb);
    CHECK(sb_json_str(&sb, "a\"b\\\n\x01\xc3\xa9\xff", 9) == ES_OK);
    CHECK_STR(sb_cstr(&sb), "\"a\\\"b\\\\\\n\\u0001\xc3\xa9\xEF\xBF\xBD\"");
    char *s = sb_steal(&sb);
    CHECK(sb.s == NULL && sb.len == 0);
    free(s);

    struct i32vec iv = {0};
    for (int i = 0; i < 10000; i++) CHECK(iv_push(&iv, i) == ES_OK);
    CHECK(iv.n == 10000 && iv.v[9999] == 9999);
    int32_t xs[3] = {7, 8, 9};
    CHECK(iv_append(&iv, xs, 3) == ES_OK && iv.n == 10003 && iv.v[10002] == 9);
    iv_free(&iv);

    const unsigned char euro[] = {0xE2, 0x82, 0xAC};
    CHECK(utf8_char_len(euro, 3) == 3);
    CHECK(utf8_char_len(euro, 2) == 0);
    const unsigned char surrogate[] = {0xED, 0xA0, 0x80};
    CHECK(utf8_char_len(surrogate, 3) == 0);
    const unsigned char overlong[] = {0xC0, 0xAF};
    CHECK(utf8_char_len(overlong, 2) == 0);
    CHECK(utf8_valid_prefix("ab\xE2\x82", 4) == 2);
    CHECK(utf8_valid_prefix("ab\xE2\x82\xAC", 5) == 5);
    return test_result("strbuf");
}
