/*
 * mkmodel.h - the pieces of the mkmodel tool shared between its files:
 * the model shape it writes, the tensor plan (names, shapes, scales) and the
 * parallel safetensors writer. Internal to tools/; not part of common/.
 */
#ifndef MKMODEL_H
#define MKMODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "model_config.h"
#include "safetensors.h"
#include "status.h"

/* Everything that decides the bytes of a model directory. */
struct mk_shape {
    enum model_arch arch;
    int hidden_size;
    int intermediate_size;
    int num_layers;
    int num_heads;
    int num_kv_heads;
    int head_dim;
    int vocab_size;
    bool tie_word_embeddings;
    int max_position_embeddings;
    double rms_norm_eps;
    double rope_theta;
    bool rope_llama3;   /* llama3 rope_scaling block */
    double rope_factor; /* llama3 factor */
    enum st_dtype dtype;
    uint64_t seed;
};

/* One tensor to write; the data are std * z, z ~ approximately N(0, 1) from
 * a counter-based generator keyed by (seed, tensor index), or the constant
 * `fill` when std == 0. */
struct mk_tensor {
    char name[96];
    int ndim;
    int64_t shape[2];
    double std;
    float fill;
    uint64_t numel;
};

/* Builds the tensor list, in transformers' names, for a shape. *out is
 * malloc'ed. */
enum es_status mk_plan(const struct mk_shape *s, struct mk_tensor **out, int *n_out,
                       struct es_err *err);

/* Writes model.safetensors (or shards + model.safetensors.index.json when
 * the weights exceed shard_bytes) into dir with n_threads threads. */
enum es_status mk_write_weights(const char *dir, const struct mk_shape *s,
                                const struct mk_tensor *plan, int n_tensors, uint64_t shard_bytes,
                                int n_threads, struct es_err *err);

#endif
