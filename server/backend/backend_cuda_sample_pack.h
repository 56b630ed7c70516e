/*
 * backend_cuda_sample_pack.h - the pure-C half of the GPU sampler's host
 * side: turning one logit_row's sampling settings into the records
 * kern_sample (kernels/sampling.cu) reads. No CUDA call, no allocation, no
 * state: backend_cuda_sample.c uses it to fill the pinned upload buffer,
 * and the tests (tests/unit/test_cuda_sample_pack.c, tests/emu/) use it to
 * pack rows exactly as the backend does. It needs only the struct
 * definitions of kernels.h (which includes <cuda_runtime.h> for its
 * prototypes: the toolkit's, or tests/emu/'s stand-in).
 */
#ifndef ES_BACKEND_CUDA_SAMPLE_PACK_H
#define ES_BACKEND_CUDA_SAMPLE_PACK_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "kernels.h"

/* Most edit records cbsm_pack_row writes for a row. */
size_t cbsm_edit_bound(const struct logit_row *row);
/* Fills *out (edit0 left 0) and the row's edit records edits[0 .. return
 * value) (at most cbsm_edit_bound) for logits row `logits_row` of
 * vocabulary V: distinct ids in first-touch order (logit_bias, banned,
 * history), then the extra biases of repeated logit_bias ids. row->sp must
 * be set. slot and seen are [V] int32, all zero, and left all zero.
 * O(n_history + n_logit_bias + n_banned). */
int cbsm_pack_row(const struct logit_row *row, int V, int32_t logits_row,
                  struct kern_sample_row *out, struct kern_logit_edit *edits, int32_t *slot,
                  int32_t *seen);

#endif
