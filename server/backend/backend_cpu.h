/*
 * backend_cpu.h - extras of the CPU backend beyond backend_cpu_ops, for
 * tests and tools (the engine only needs backend.h).
 *
 * KV cache layout (documented here because tests/gpu compares against it):
 *   float k_cache[num_kv_blocks][num_layers][block_size][num_kv_heads][head_dim]
 *   float v_cache[num_kv_blocks][num_layers][block_size][num_kv_heads][head_dim]
 * (a pipeline stage: num_layers of its own layers only)
 * so one block of all layers is contiguous and copy_blocks is one memcpy per
 * block and cache.
 */
#ifndef ES_BACKEND_CPU_H
#define ES_BACKEND_CPU_H

#include "backend.h"

/* Runs batch like forward() but, instead of sampling, copies each row's raw
 * logits into logits: fp32 [batch->n_rows][vocab_size] (a pipeline stage
 * other than the last writes none). */
enum es_status backend_cpu_forward_logits(struct backend *be, const struct batch *batch,
                                          float *logits, struct es_err *err);

/* The cached K and V of one physical slot in one layer (the model's
 * index), fp32 [num_kv_heads][head_dim] each (RoPE already applied to K),
 * for tests that compare another backend's cache. ES_EINVAL when out of
 * range or, for a pipeline stage, not one of its layers. */
enum es_status backend_cpu_kv_slot(struct backend *be, int layer, int32_t slot, const float **k,
                                   const float **v, struct es_err *err);

#endif
