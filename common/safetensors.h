/*
 * safetensors.h - read-only mmap access to safetensors checkpoints.
 *
 * Opens model.safetensors, or every shard named by
 * model.safetensors.index.json, maps each file once and indexes its
 * tensors. Every offset and shape in a header is checked against the file
 * size before use: a corrupt file is ES_EFORMAT with a message, never a
 * crash. Tensor data pointers stay valid until st_close().
 *
 * Beyond the format's own rules, the loader requires what the reference
 * implementation requires (tensors cover the data section exactly, no
 * overlaps, no holes, unique names across shards) and that each tensor is
 * aligned to its element size. Known dtypes other than BF16/F16/F32 are
 * ES_EUNSUPPORTED; a missing shard is ES_ENOTFOUND; any other defect is
 * ES_EFORMAT.
 */
#ifndef ES_SAFETENSORS_H
#define ES_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

enum st_dtype { ST_BF16, ST_F16, ST_F32 };

#define ST_MAX_DIMS 8

struct st_tensor {
    const char *name;
    enum st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data; /* inside the mapping; little-endian */
    size_t nbytes;
};

struct st_model;

/* dir: a model directory, or path: one .safetensors file. */
enum es_status st_open_dir(const char *dir, struct st_model **out, struct es_err *err);
enum es_status st_open_file(const char *path, struct st_model **out, struct es_err *err);
void st_close(struct st_model *m);

const struct st_tensor *st_find(const struct st_model *m, const char *name);
size_t st_count(const struct st_model *m);
const struct st_tensor *st_get(const struct st_model *m, size_t i);

size_t st_dtype_size(enum st_dtype dt);
const char *st_dtype_name(enum st_dtype dt);

/* Validates and indexes one in-memory file image (header + data); used by
 * st_open_file and by the fuzzer. On success the tensors point into buf,
 * which must outlive the model. */
enum es_status st_parse_buffer(const uint8_t *buf, size_t len, struct st_model **out,
                               struct es_err *err);

/* Converts one element to float (for the CPU backend and tests). */
float st_bf16_to_f32(uint16_t v);
float st_f16_to_f32(uint16_t v);
uint16_t st_f32_to_bf16(float f); /* round to nearest even */
uint16_t st_f32_to_f16(float f);  /* round to nearest even, overflow to inf */

#endif
