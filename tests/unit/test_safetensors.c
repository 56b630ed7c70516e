/*
 * test_safetensors.c - the safetensors loader against valid files, sharded
 * directories and many corrupt variants. Every corrupt image is parsed from
 * an exactly-sized heap copy so that any read past its end trips ASan.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "safetensors.h"
#include "testing.h"

static char tmpdir[] = "/tmp/test_st_XXXXXX";

/* A file image: 8-byte length, header (space-padded to 8), data. */
static uint8_t *image(const char *header, size_t data_len, size_t *len_out)
{
    size_t hlen = strlen(header);
    size_t padded = (hlen + 7) / 8 * 8;
    size_t len = 8 + padded + data_len;
    uint8_t *buf = malloc(len);
    for (int i = 0; i < 8; i++)
        buf[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    memcpy(buf + 8, header, hlen);
    memset(buf + 8 + hlen, ' ', padded - hlen);
    for (size_t i = 0; i < data_len; i++)
        buf[8 + padded + i] = (uint8_t)(i * 7 + 1);
    *len_out = len;
    return buf;
}

static enum es_status parse_status(const uint8_t *img, size_t len, char *msg_out)
{
    uint8_t *copy = malloc(len ? len : 1);
    memcpy(copy, img, len);
    struct st_model *m = NULL;
    struct es_err err = {{0}};
    enum es_status st = st_parse_buffer(copy, len, &m, &err);
    if (st == ES_OK) {
        CHECK(m != NULL);
        /* Touch every tensor byte: an unchecked offset would read out of
         * bounds here. */
        unsigned sum = 0;
        for (size_t i = 0; i < st_count(m); i++) {
            const struct st_tensor *t = st_get(m, i);
            for (size_t b = 0; b < t->nbytes; b++)
                sum += ((const uint8_t *)t->data)[b];
        }
        (void)sum;
    } else {
        CHECK(m == NULL);
        CHECK(err.msg[0] != '\0');
    }
    if (msg_out) snprintf(msg_out, 512, "%s", err.msg);
    st_close(m);
    free(copy);
    return st;
}

/* Parses `header` with data_len data bytes and expects `want`. */
static void expect(const char *header, size_t data_len, enum es_status want, const char *needle,
                   int line)
{
    size_t len;
    uint8_t *img = image(header, data_len, &len);
    char msg[512];
    enum es_status st = parse_status(img, len, msg);
    if (st != want || (needle && !strstr(msg, needle))) {
        fprintf(stderr, "line %d: got %d '%s', wanted %d containing '%s'\n", line, st, msg, want,
                needle ? needle : "");
        test_failures++;
    }
    free(img);
}
#define EXPECT(h, n, want, needle) expect(h, n, want, needle, __LINE__)

static const char *VALID = "{\"__metadata__\":{\"format\":\"pt\"},"
                           "\"a\":{\"dtype\":\"BF16\",\"shape\":[2,3],\"data_offsets\":[0,12]},"
                           "\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[12,28]},"
                           "\"c\":{\"dtype\":\"F16\",\"shape\":[],\"data_offsets\":[28,30]}}";

static void test_valid_buffer(void)
{
    size_t len;
    uint8_t *img = image(VALID, 30, &len);
    struct st_model *m = NULL;
    struct es_err err = {{0}};
    CHECK(st_parse_buffer(img, len, &m, &err) == ES_OK);
    CHECK(st_count(m) == 3);
    const struct st_tensor *a = st_find(m, "a"), *b = st_find(m, "b"), *c = st_find(m, "c");
    CHECK(a && b && c);
    if (a && b && c) {
        CHECK(a->dtype == ST_BF16 && a->ndim == 2 && a->shape[0] == 2 && a->shape[1] == 3);
        CHECK(a->nbytes == 12 && b->nbytes == 16 && c->nbytes == 2);
        CHECK(b->dtype == ST_F32 && b->ndim == 1 && b->shape[0] == 4);
        CHECK(c->dtype == ST_F16 && c->ndim == 0);
        size_t data0 = len - 30;
        CHECK((const uint8_t *)a->data == img + data0);
        CHECK((const uint8_t *)b->data == img + data0 + 12);
        CHECK(((const uint8_t *)c->data)[0] == (uint8_t)(28 * 7 + 1));
        CHECK_STR(a->name, "a");
    }
    CHECK(st_find(m, "__metadata__") == NULL);
    CHECK(st_find(m, "d") == NULL);
    CHECK(st_get(m, 3) == NULL);
    st_close(m);
    free(img);
    /* An empty header is a valid file with no tensors. */
    EXPECT("{}", 0, ES_OK, NULL);
}

static void test_corrupt_headers(void)
{
    /* offsets */
    EXPECT("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8, ES_EFORMAT,
           "beyond");
    EXPECT("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 8, ES_EFORMAT,
           "begin");
    EXPECT("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 8, ES_EFORMAT,
           NULL);
    EXPECT("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 8, ES_EFORMAT,
           "data_offsets");
    EXPECT("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[\"0\",4]}}", 4, ES_EFORMAT,
           NULL);
    EXPECT("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,1e300]}}", 4, ES_EFORMAT,
           NULL);
    EXPECT("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,18446744073709551620]}}", 4,
           ES_EFORMAT, NULL);
    EXPECT("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, ES_EFORMAT, "data_offsets");
    /* overlapping, misordered-but-valid, holes, leftovers */
    EXPECT("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
           "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
           12, ES_EFORMAT, "overlaps");
    EXPECT("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
           "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
           8, ES_EFORMAT, "overlaps");
    EXPECT("{\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]},"
           "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
           16, ES_OK, NULL);
    EXPECT("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, ES_EFORMAT,
           "hole");
    EXPECT("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 12, ES_EFORMAT,
           "after the last");
    /* shapes */
    EXPECT("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, ES_EFORMAT,
           "need");
    EXPECT("{\"a\":{\"dtype\":\"BF16\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}",
           8, ES_EFORMAT, "overflow");
    EXPECT("{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,1073741824],\"data_offsets\":[0,8]}}",
           8, ES_EFORMAT, "overflow");
    EXPECT("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, ES_EFORMAT,
           "shape[0]");
    EXPECT("{\"a\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}", 8, ES_EFORMAT,
           "shape[0]");
    EXPECT("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,2],\"data_offsets\":[0,8]}}", 8,
           ES_EFORMAT, "dimensions");
    EXPECT("{\"a\":{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}}", 8, ES_EFORMAT,
           "shape");
    EXPECT("{\"a\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[0,0]}}", 0, ES_OK, NULL);
    /* dtypes */
    EXPECT("{\"a\":{\"dtype\":\"Q7\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, ES_EFORMAT,
           "unknown dtype");
    EXPECT("{\"a\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8, ES_EUNSUPPORTED,
           "F64");
    EXPECT("{\"a\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,8]}}", 8, ES_EFORMAT, "dtype");
    /* structure */
    EXPECT("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
           "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
           8, ES_EFORMAT, "duplicate");
    EXPECT("{\"a\":[1,2]}", 0, ES_EFORMAT, "object");
    EXPECT("{\"\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, ES_EFORMAT,
           "empty");
    EXPECT("{\"__metadata__\":[1]}", 0, ES_EFORMAT, "__metadata__");
    EXPECT("{\"__metadata__\":{\"x\":\"y\"}}", 0, ES_OK, NULL);
    EXPECT("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}", 4, ES_EFORMAT,
           "JSON");
    EXPECT("{\"a\":{\"b\":{\"c\":{\"d\":{\"e\":{}}}}}}", 0, ES_EFORMAT, "deeper");
    EXPECT("{} trailing", 0, ES_EFORMAT, "JSON");
    EXPECT("[1,2,3]", 0, ES_EFORMAT, "'{'");
    EXPECT("{\"a\xff\":1}", 0, ES_EFORMAT, "UTF-8");
    /* misaligned F32 data (offset 2) */
    EXPECT("{\"a\":{\"dtype\":\"BF16\",\"shape\":[1],\"data_offsets\":[0,2]},"
           "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[2,6]}}",
           6, ES_EFORMAT, "aligned");
}

static void test_corrupt_lengths(void)
{
    size_t len;
    uint8_t *img = image(VALID, 30, &len);
    /* Every truncation of a valid file is an error. */
    int ok_prefixes = 0;
    for (size_t n = 0; n < len; n++)
        if (parse_status(img, n, NULL) == ES_OK) ok_prefixes++;
    CHECK(ok_prefixes == 0);
    char msg[512];
    /* header length larger than the file */
    uint8_t *bad = malloc(len);
    memcpy(bad, img, len);
    bad[0] = (uint8_t)(len & 0xff);
    bad[1] = (uint8_t)(len >> 8);
    CHECK(parse_status(bad, len, msg) == ES_EFORMAT && strstr(msg, "does not fit"));
    /* absurd header length */
    memset(bad, 0xff, 8);
    CHECK(parse_status(bad, len, msg) == ES_EFORMAT && strstr(msg, "absurd"));
    memset(bad, 0, 8);
    CHECK(parse_status(bad, len, msg) == ES_EFORMAT);
    /* a NUL inside the header */
    memcpy(bad, img, len);
    bad[12] = 0;
    CHECK(parse_status(bad, len, msg) == ES_EFORMAT);
    /* Deterministic byte flips across header and data never crash; the
     * loader may accept a flip only where it hits data bytes or spaces. */
    uint64_t x = 88172645463325252ull;
    for (int round = 0; round < 4000; round++) {
        memcpy(bad, img, len);
        for (int k = 0; k < 1 + round % 3; k++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            bad[x % (len - 30)] = (uint8_t)(x >> 32);
        }
        (void)parse_status(bad, len, NULL);
    }
    free(bad);
    free(img);
    CHECK(parse_status((const uint8_t *)"", 0, msg) == ES_EFORMAT);
}

static void write_file(const char *name, const void *data, size_t len)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    if (!f) return;
    fwrite(data, 1, len, f);
    fclose(f);
}

static void write_image(const char *name, const char *header, size_t data_len)
{
    size_t len;
    uint8_t *img = image(header, data_len, &len);
    write_file(name, img, len);
    free(img);
}

static void rm(const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    unlink(path);
}

static enum es_status open_dir_status(char *msg)
{
    struct st_model *m = NULL;
    struct es_err err = {{0}};
    enum es_status st = st_open_dir(tmpdir, &m, &err);
    if (st != ES_OK) CHECK(m == NULL && err.msg[0]);
    if (msg) snprintf(msg, 512, "%s", err.msg);
    st_close(m);
    return st;
}

static void test_files(void)
{
    char path[512], msg[512];
    struct st_model *m = NULL;
    struct es_err err = {{0}};

    CHECK(open_dir_status(msg) == ES_ENOTFOUND);
    write_image("model.safetensors", VALID, 30);
    snprintf(path, sizeof path, "%s/model.safetensors", tmpdir);
    CHECK(st_open_file(path, &m, &err) == ES_OK);
    CHECK(st_count(m) == 3);
    const struct st_tensor *b = st_find(m, "b");
    CHECK(b && ((const uint8_t *)b->data)[0] == (uint8_t)(12 * 7 + 1));
    st_close(m);
    m = NULL;
    CHECK(open_dir_status(msg) == ES_OK);

    /* truncated on disk */
    size_t len;
    uint8_t *img = image(VALID, 30, &len);
    write_file("model.safetensors", img, len - 1);
    CHECK(open_dir_status(msg) == ES_EFORMAT);
    write_file("model.safetensors", img, 5);
    CHECK(open_dir_status(msg) == ES_EFORMAT);
    write_file("model.safetensors", img, 0);
    CHECK(open_dir_status(msg) == ES_EFORMAT);
    free(img);
    err.msg[0] = 0;
    snprintf(path, sizeof path, "%s/nope.safetensors", tmpdir);
    CHECK(st_open_file(path, &m, &err) == ES_ENOTFOUND && m == NULL && strstr(err.msg, "nope"));
    err.msg[0] = 0;
    CHECK(st_open_file(tmpdir, &m, &err) != ES_OK && m == NULL);
    rm("model.safetensors");

    /* sharded */
    write_image("s1.safetensors",
                "{\"x\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[0,8]}}", 8);
    write_image("s2.safetensors",
                "{\"y\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]},"
                "\"z\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[12,16]}}",
                16);
    const char *index =
        "{\"metadata\":{\"total_size\":24},\"weight_map\":{\"x\":\"s1.safetensors\","
        "\"y\":\"s2.safetensors\",\"z\":\"s2.safetensors\"}}";
    write_file("model.safetensors.index.json", index, strlen(index));
    err.msg[0] = 0;
    CHECK(st_open_dir(tmpdir, &m, &err) == ES_OK);
    CHECK(st_count(m) == 3);
    CHECK(st_find(m, "x") && st_find(m, "y") && st_find(m, "z") && !st_find(m, "w"));
    if (st_find(m, "z")) CHECK(st_find(m, "z")->dtype == ST_F16);
    st_close(m);
    m = NULL;

    index = "{\"weight_map\":{\"x\":\"s1.safetensors\",\"y\":\"missing.safetensors\"}}";
    write_file("model.safetensors.index.json", index, strlen(index));
    CHECK(open_dir_status(msg) == ES_ENOTFOUND && strstr(msg, "missing.safetensors"));
    index = "{\"weight_map\":{\"x\":\"s1.safetensors\",\"q\":\"s2.safetensors\"}}";
    write_file("model.safetensors.index.json", index, strlen(index));
    CHECK(open_dir_status(msg) == ES_EFORMAT && strstr(msg, "'q'"));
    index = "{\"weight_map\":{\"x\":\"../s1.safetensors\"}}";
    write_file("model.safetensors.index.json", index, strlen(index));
    CHECK(open_dir_status(msg) == ES_EFORMAT);
    index = "{\"weight_map\":{\"x\":\"/etc/passwd\"}}";
    write_file("model.safetensors.index.json", index, strlen(index));
    CHECK(open_dir_status(msg) == ES_EFORMAT);
    index = "{\"weight_map\":{\"x\":3}}";
    write_file("model.safetensors.index.json", index, strlen(index));
    CHECK(open_dir_status(msg) == ES_EFORMAT);
    index = "{\"weight_map\":{}}";
    write_file("model.safetensors.index.json", index, strlen(index));
    CHECK(open_dir_status(msg) == ES_EFORMAT);
    index = "{\"weight_map\":";
    write_file("model.safetensors.index.json", index, strlen(index));
    CHECK(open_dir_status(msg) == ES_EFORMAT);
    index = "[]";
    write_file("model.safetensors.index.json", index, strlen(index));
    CHECK(open_dir_status(msg) == ES_EFORMAT);
    /* the same name in two shards */
    write_image("s3.safetensors",
                "{\"x\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[0,8]}}", 8);
    index = "{\"weight_map\":{\"x\":\"s1.safetensors\",\"y\":\"s3.safetensors\"}}";
    write_file("model.safetensors.index.json", index, strlen(index));
    CHECK(open_dir_status(msg) == ES_EFORMAT && strstr(msg, "duplicate"));
    /* a corrupt shard */
    write_image("s3.safetensors",
                "{\"w\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[0,9]}}", 8);
    CHECK(open_dir_status(msg) == ES_EFORMAT && strstr(msg, "s3.safetensors"));
    rm("s1.safetensors");
    rm("s2.safetensors");
    rm("s3.safetensors");
    rm("model.safetensors.index.json");
}

static void test_many_tensors(void)
{
    /* 2000 one-element tensors: the hash index must find each. */
    size_t cap = 2000 * 80 + 16, n = 0;
    char *h = malloc(cap);
    n += (size_t)snprintf(h + n, cap - n, "{");
    for (int i = 0; i < 2000; i++)
        n += (size_t)snprintf(h + n, cap - n,
                              "%s\"layer.%d.w\":{\"dtype\":\"F32\",\"shape\":[1],"
                              "\"data_offsets\":[%d,%d]}",
                              i ? "," : "", i, i * 4, i * 4 + 4);
    snprintf(h + n, cap - n, "}");
    size_t len;
    uint8_t *img = image(h, 8000, &len);
    struct st_model *m = NULL;
    struct es_err err = {{0}};
    CHECK(st_parse_buffer(img, len, &m, &err) == ES_OK);
    CHECK(st_count(m) == 2000);
    int found = 0;
    char name[32];
    for (int i = 0; i < 2000; i++) {
        snprintf(name, sizeof name, "layer.%d.w", i);
        const struct st_tensor *t = st_find(m, name);
        if (t && strcmp(t->name, name) == 0 && t->nbytes == 4) found++;
    }
    CHECK(found == 2000);
    CHECK(!st_find(m, "layer.2000.w") && !st_find(m, "") && !st_find(NULL, "x"));
    st_close(m);
    free(img);
    free(h);
}

static void test_conversions(void)
{
    CHECK(st_dtype_size(ST_BF16) == 2 && st_dtype_size(ST_F16) == 2 && st_dtype_size(ST_F32) == 4);
    CHECK_STR(st_dtype_name(ST_BF16), "BF16");
    CHECK(st_f32_to_bf16(1.0f) == 0x3f80);
    CHECK(st_f32_to_bf16(-2.0f) == 0xc000);
    CHECK(st_bf16_to_f32(0x3f80) == 1.0f);
    /* 1 + 2^-8 is halfway between bf16 1.0 and 1.0078125: ties to even (1.0). */
    CHECK(st_f32_to_bf16(1.00390625f) == 0x3f80);
    CHECK(st_f32_to_bf16(1.01171875f) == 0x3f82); /* halfway, rounds up to even */
    CHECK(st_f32_to_bf16(INFINITY) == 0x7f80);
    CHECK(isnan(st_bf16_to_f32(st_f32_to_bf16(NAN))));
    CHECK(st_f32_to_bf16(3.4e38f) == 0x7f80); /* rounds past the largest finite bf16 */
    CHECK(st_f16_to_f32(0x3c00) == 1.0f);
    CHECK(st_f16_to_f32(0x7bff) == 65504.0f);
    CHECK(st_f16_to_f32(0x0001) == ldexpf(1.0f, -24));
    CHECK(st_f16_to_f32(0x8000) == 0.0f && signbit(st_f16_to_f32(0x8000)));
    CHECK(isinf(st_f16_to_f32(0xfc00)) && st_f16_to_f32(0xfc00) < 0);
    CHECK(isnan(st_f16_to_f32(0x7e00)));
    CHECK(st_f32_to_f16(65520.0f) == 0x7c00);
    CHECK(st_f32_to_f16(65519.0f) == 0x7bff);
    CHECK(st_f32_to_f16(ldexpf(1.0f, -25)) == 0x0000); /* tie to even: 0 */
    CHECK(st_f32_to_f16(ldexpf(3.0f, -25)) == 0x0002); /* 1.5 ulp ties to 2 */
    /* Every non-NaN half and bf16 survives a round trip through float. */
    int bad = 0;
    for (uint32_t v = 0; v < 65536; v++) {
        float f = st_f16_to_f32((uint16_t)v);
        if (!isnan(f) && st_f32_to_f16(f) != v) bad++;
        float g = st_bf16_to_f32((uint16_t)v);
        if (!isnan(g) && st_f32_to_bf16(g) != v) bad++;
    }
    CHECK(bad == 0);
}

int main(void)
{
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    test_valid_buffer();
    test_corrupt_headers();
    test_corrupt_lengths();
    test_files();
    test_many_tensors();
    test_conversions();
    rmdir(tmpdir);
    return test_result("test_safetensors");
}
