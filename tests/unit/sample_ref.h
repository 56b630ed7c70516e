/*
 * sample_ref.h - an independent host reimplementation of step 2 of
 * server/backend/sampling.h (the processed logits: NaN to -inf, logit_bias,
 * banned ids, repetition, presence and frequency penalties), written from
 * that contract rather than from sampling.c, for the tests that check the
 * GPU sampler's edits (tests/unit/test_cuda_sample_pack.c,
 * tests/emu/test_sample_emu.c, tests/gpu/test_gpu.c). No state.
 */
#ifndef ES_SAMPLE_REF_H
#define ES_SAMPLE_REF_H

#include <stdint.h>

#include "backend.h"

/* w [V] = the processed logits of raw logits x [V] for row (row->sp set).
 * mark [V] must be all zero; it is left so. */
void sref_process_logits(const float *x, int V, const struct logit_row *row, float *w,
                         int32_t *mark);

#endif
