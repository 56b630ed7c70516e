/*
 * fake_backend.h - a deterministic stand-in for a model, behind the real
 * backend interface, for engine tests.
 *
 * It keeps a "KV cache" of token ids (and their positions) per physical
 * slot, written through slot_mapping and read back through the block
 * tables, so any bookkeeping error of the engine (wrong slot, stale or
 * wrongly shared block, missing copy-on-write) changes the logits. The
 * logits of a position are a hash of every token visible to it; the real
 * sampler (sampling.c) turns them into tokens and logprobs. fake_reference
 * computes the same logits straight from a token list, without any cache.
 * A batch that breaks the backend.h contract (a token id or history entry
 * outside the vocabulary, a bad slot, two backend calls at once) counts in
 * bad_batches.
 */
#ifndef ES_FAKE_BACKEND_H
#define ES_FAKE_BACKEND_H

#include <stdbool.h>

#include "backend.h"

#define FAKE_VOCAB 1024  /* the first ids of the llama-3 vocabulary */
#define FAKE_ACTIVE 1000 /* ids with real mass: 0 .. FAKE_ACTIVE - 1 */
#define FAKE_EOS 1000    /* the model config's EOS ids: FAKE_EOS, FAKE_EOS2 */
#define FAKE_EOS2 1001

struct fake_stats {
    long steps;
    long rows;
    long max_rows;
    long bad_batches; /* batches that broke the backend.h contract */
    long copies;
};

/* num_kv_blocks blocks of 16; fail_at_step >= 0: forward fails at that step. */
struct backend *fake_backend_create(int num_kv_blocks, int fail_at_step);
struct fake_stats *fake_backend_stats(struct backend *be);
/* Makes every forward last at least delay_us (steps in flight long enough
 * for aborts and new requests to arrive meanwhile). */
void fake_backend_set_delay(struct backend *be, int delay_us);
/* Forward number `step` (0-based) waits, before reading its batch, until
 * fake_backend_release: a device that hangs, then comes back. */
void fake_backend_hold(struct backend *be, long step);
void fake_backend_release(struct backend *be);
/* Forwards that have run to their end (any thread may ask). */
long fake_backend_forwards_done(struct backend *be);
/* Logits of the next token after ctx[0..n) into logits[FAKE_VOCAB]. */
void fake_logits(const int32_t *ctx, int n, float *logits);

#endif
