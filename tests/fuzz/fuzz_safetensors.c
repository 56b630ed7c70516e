/*
 * fuzz_safetensors.c - libFuzzer target for st_parse_buffer
 * (common/safetensors.c): the input is a whole .safetensors file image.
 *
 * The bytes are copied into a heap buffer of exactly their size, so any read
 * past the file trips ASan. On success every tensor is checked against the
 * image (data inside the data section, size = numel * dtype size, found by
 * name) and every byte of its data is read; the tensors must tile the data
 * section exactly. The element converters are checked on the data too:
 * f16/bf16 -> f32 -> f16/bf16 gives the same bits for every non-NaN value.
 * Never does: file I/O, mmap.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_safetensors: invariant failed at line %d: %s\n", __LINE__,       \
                    #cond);                                                                        \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static void check_elements(const struct st_tensor *t)
{
    const uint8_t *p = t->data;
    if (t->dtype == ST_F32) {
        for (size_t i = 0; i + 4 <= t->nbytes; i += 4) {
            float f;
            memcpy(&f, p + i, 4);
            uint16_t h = st_f32_to_f16(f), b = st_f32_to_bf16(f);
            float fh = st_f16_to_f32(h), fb = st_bf16_to_f32(b);
            if (isnan(f)) {
                CHECK(isnan(fh) && isnan(fb));
            } else {
                CHECK(!isnan(fh) && !isnan(fb));
                CHECK(signbit(fh) == signbit(f) && signbit(fb) == signbit(f));
            }
        }
        return;
    }
    for (size_t i = 0; i + 2 <= t->nbytes; i += 2) {
        uint16_t v = (uint16_t)(p[i] | (p[i + 1] << 8));
        if (t->dtype == ST_F16) {
            float f = st_f16_to_f32(v);
            if (!isnan(f)) CHECK(st_f32_to_f16(f) == v);
        } else {
            float f = st_bf16_to_f32(v);
            if (!isnan(f)) CHECK(st_f32_to_bf16(f) == v);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    memcpy(buf, data, size);
    struct st_model *m = NULL;
    struct es_err err = {{0}};
    enum es_status st = st_parse_buffer(buf, size, &m, &err);
    if (st != ES_OK) {
        CHECK(m == NULL && err.msg[0] != '\0');
        free(buf);
        return 0;
    }
    CHECK(m != NULL && size >= 8);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | buf[i];
    const uint8_t *section = buf + 8 + hlen, *end = buf + size;
    size_t covered = 0;
    for (size_t i = 0; i < st_count(m); i++) {
        const struct st_tensor *t = st_get(m, i);
        CHECK(t && t->name && t->name[0]);
        CHECK(st_find(m, t->name) == t);
        CHECK(t->ndim >= 0 && t->ndim <= ST_MAX_DIMS);
        uint64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) {
            CHECK(t->shape[d] >= 0);
            numel *= (uint64_t)t->shape[d];
        }
        CHECK(numel * st_dtype_size(t->dtype) == t->nbytes);
        const uint8_t *p = t->data;
        CHECK(t->nbytes == 0 || (p >= section && p + t->nbytes <= end));
        CHECK((uintptr_t)p % st_dtype_size(t->dtype) == 0);
        CHECK(st_dtype_name(t->dtype) != NULL);
        unsigned sum = 0;
        for (size_t k = 0; k < t->nbytes; k++)
            sum += p[k];
        (void)sum;
        check_elements(t);
        covered += t->nbytes;
    }
    CHECK(covered == (size_t)(end - section));
    CHECK(st_get(m, st_count(m)) == NULL);
    CHECK(st_find(m, "\x01 no such tensor") == NULL);
    st_close(m);
    free(buf);
    return 0;
}
