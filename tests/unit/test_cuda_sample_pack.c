/*
 * test_cuda_sample_pack.c - unit tests of the host half of the GPU sampler
 * (server/backend/backend_cuda_sample.c; built with CUDA, needs no GPU):
 * the logit-edit records cbsm_pack_row builds for a row (first-touch
 * order, flags, the penalty's float value, the extra biases of repeated
 * logit_bias ids, out-of-range ids skipped), the row's fields, the bound
 * cbsm_edit_bound gives, the two mark arrays left all zero; and, on random
 * rows, that applying the records the way kern_sample does
 * (kernels/sampling.cu, smp_apply_edit) gives sampling.c's processed
 * logits bit for bit (sampling.h step 2, transcribed here).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend_cuda.h"
#include "sample_ref.h"
#include "sampling.h"
#include "testing.h"

static uint64_t rng_state = 42;
static uint32_t rnd(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 33);
}

static bool all_zero(const int32_t *a, int n)
{
    for (int i = 0; i < n; i++)
        if (a[i]) return false;
    return true;
}

/* What kern_sample does with the records (smp_apply_edit), on the host. */
static void apply_records(const float *x, int V, const struct kern_sample_row *kr,
                          const struct kern_logit_edit *ed, float *w)
{
    for (int i = 0; i < V; i++)
        w[i] = isnan(x[i]) ? -INFINITY : x[i];
    for (int e = 0; e < kr->n_edits; e++) {
        struct kern_logit_edit d = ed[e];
        float v = w[d.id];
        if (d.flags & KERN_EDIT_BIAS) {
            v = v + d.bias;
            if (d.flags & KERN_EDIT_MORE_BIAS)
                for (int j = kr->n_edits; j < kr->n_edits + kr->n_extra; j++)
                    if (ed[j].id == d.id) v = v + ed[j].bias;
        }
        if (d.flags & KERN_EDIT_BAN) v = -INFINITY;
        if (d.flags & KERN_EDIT_REPEAT)
            v = v > 0.0f ? v / kr->repetition_penalty : v * kr->repetition_penalty;
        if (d.flags & KERN_EDIT_PENALTY) v = v - d.penalty;
        w[d.id] = v;
    }
}

static void test_crafted_row(void)
{
    enum { V = 100 };
    int32_t slot[V] = {0}, seen[V] = {0};
    int32_t bias_ids[] = {5, 7, 5, -1, V + 3, 9};
    float bias_vals[] = {1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 6.0f};
    int32_t banned[] = {7, 11, -2};
    /* prompt 5 13 13 20, generated 13 9 9 9 (and one out of range) */
    int32_t hist[] = {5, 13, 13, 20, 13, 9, 9, 9, V};
    struct sampling_params sp;
    sp_defaults(&sp);
    sp.temperature = 0.7f;
    sp.top_k = 40;
    sp.top_p = 0.9f;
    sp.min_p = 0.05f;
    sp.repetition_penalty = 1.2f;
    sp.presence_penalty = 0.5f;
    sp.frequency_penalty = 0.25f;
    sp.seed = 77;
    sp.n_logit_bias = 6;
    sp.logit_bias_ids = bias_ids;
    sp.logit_bias_values = bias_vals;
    struct logit_row row = {.sample = true,
                            .sp = &sp,
                            .rng_counter = 12,
                            .history = hist,
                            .n_history_prompt = 4,
                            .n_history = 9,
                            .banned_ids = banned,
                            .n_banned = 3};
    struct kern_logit_edit ed[32];
    struct kern_sample_row kr;
    int n = cbsm_pack_row(&row, V, 3, &kr, ed, slot, seen);
    CHECK((size_t)n <= cbsm_edit_bound(&row));
    CHECK(kr.seed == 77 && kr.rng_counter == 12 && kr.row == 3 && kr.mode == KERN_SAMPLE_DRAW);
    CHECK(kr.inv_temperature == 1.0f / 0.7f);
    CHECK(kr.top_k == 40 && kr.top_p == 0.9f && kr.min_p == 0.05f);
    CHECK(kr.repetition_penalty == 1.2f && kr.edit0 == 0);
    /* distinct ids in first-touch order: bias 5 7 9, bans 11, history 13 20 */
    CHECK(kr.n_edits == 6 && kr.n_extra == 1 && n == 7);
    int32_t ids[] = {5, 7, 9, 11, 13, 20};
    uint32_t flags[] = {KERN_EDIT_BIAS | KERN_EDIT_MORE_BIAS | KERN_EDIT_REPEAT,
                        KERN_EDIT_BIAS | KERN_EDIT_BAN,
                        KERN_EDIT_BIAS | KERN_EDIT_REPEAT | KERN_EDIT_PENALTY,
                        KERN_EDIT_BAN,
                        KERN_EDIT_REPEAT | KERN_EDIT_PENALTY,
                        KERN_EDIT_REPEAT};
    for (int i = 0; i < 6 && i < kr.n_edits; i++) {
        CHECK(ed[i].id == ids[i]);
        CHECK(ed[i].flags == flags[i]);
    }
    CHECK(ed[0].bias == 1.0f && ed[1].bias == 2.0f && ed[2].bias == 6.0f);
    CHECK(ed[2].penalty == 0.5f + 0.25f * 3.0f); /* 9: generated three times */
    CHECK(ed[4].penalty == 0.5f + 0.25f * 1.0f); /* 13: once after the prompt */
    CHECK(ed[6].id == 5 && ed[6].bias == 3.0f);  /* the second value for 5 */
    CHECK(all_zero(slot, V) && all_zero(seen, V));

    /* greedy: no temperature to apply */
    sp.temperature = 0.0f;
    cbsm_pack_row(&row, V, 0, &kr, ed, slot, seen);
    CHECK(kr.mode == KERN_SAMPLE_ARGMAX);
    /* no penalties, no bias, no bans: nothing to edit */
    struct sampling_params plain;
    sp_defaults(&plain);
    struct logit_row bare = {.sample = true, .sp = &plain, .history = hist, .n_history = 9};
    CHECK(cbsm_pack_row(&bare, V, 0, &kr, ed, slot, seen) == 0);
    CHECK(kr.n_edits == 0 && kr.n_extra == 0 && cbsm_edit_bound(&bare) == 0);
}

/* Random rows: the records reproduce sampling.c's processed logits. */
static void test_random_rows(void)
{
    enum { V = 300, ROWS = 2000, H = 120, B = 10 };
    static const float reps[] = {1.0f, 1.1f, 0.8f, 1.3f, 0.0f};
    static const float pens[] = {0.0f, 0.4f, -0.5f, 1.5f};
    int32_t *slot = calloc(V, sizeof(int32_t)), *seen = calloc(V, sizeof(int32_t));
    float x[V], w_ref[V], w_rec[V];
    int32_t mark[V] = {0};
    int32_t hist[H], bias_ids[B], banned[B];
    float bias_vals[B];
    struct kern_logit_edit ed[V + B];
    int bad_rows = 0, bad_bound = 0, with_extra = 0;
    for (int r = 0; r < ROWS; r++) {
        for (int i = 0; i < V; i++) {
            x[i] = (float)((int)(rnd() % 2001) - 1000) / 97.0f;
            if (rnd() % 50 == 0) x[i] = rnd() % 2 ? NAN : -INFINITY;
            if (rnd() % 40 == 0) x[i] = rnd() % 2 ? 0.0f : -0.0f;
        }
        struct sampling_params sp;
        sp_defaults(&sp);
        sp.temperature = 1.0f;
        sp.repetition_penalty = reps[rnd() % 5];
        sp.presence_penalty = pens[rnd() % 4];
        sp.frequency_penalty = pens[rnd() % 4];
        int nh = (int)(rnd() % H), nb = (int)(rnd() % B), nban = (int)(rnd() % 4);
        for (int i = 0; i < nh; i++)
            hist[i] = rnd() % 15 == 0 ? -1 - (int32_t)(rnd() % 3) : (int32_t)(rnd() % 40);
        for (int i = 0; i < nb; i++) {
            bias_ids[i] = rnd() % 10 == 0 ? V + 1 : (int32_t)(rnd() % 40);
            bias_vals[i] = (float)((int)(rnd() % 401) - 200) / 2.0f;
        }
        for (int i = 0; i < nban; i++)
            banned[i] = (int32_t)(rnd() % 45);
        sp.n_logit_bias = nb;
        sp.logit_bias_ids = bias_ids;
        sp.logit_bias_values = bias_vals;
        struct logit_row row = {.sample = true,
                                .sp = &sp,
                                .history = hist,
                                .n_history_prompt = rnd() % 7 == 0 ? -1 : (int)(rnd() % (H / 2)),
                                .n_history = nh,
                                .banned_ids = banned,
                                .n_banned = nban};
        struct kern_sample_row kr;
        int n = cbsm_pack_row(&row, V, 0, &kr, ed, slot, seen);
        if ((size_t)n > cbsm_edit_bound(&row)) bad_bound++;
        with_extra += kr.n_extra > 0;
        sref_process_logits(x, V, &row, w_ref, mark);
        apply_records(x, V, &kr, ed, w_rec);
        if (memcmp(w_ref, w_rec, sizeof(w_ref)) != 0) bad_rows++;
        CHECK(all_zero(slot, V) && all_zero(seen, V));
    }
    fprintf(stderr,
            "cuda_sample_pack: %d random rows (%d with repeated bias ids): %d differ, %d "
            "over the bound\n",
            ROWS, with_extra, bad_rows, bad_bound);
    CHECK(bad_rows == 0);
    CHECK(bad_bound == 0);
    CHECK(with_extra > 0);
    free(slot);
    free(seen);
}

int main(void)
{
    test_crafted_row();
    test_random_rows();
    return test_result("test_cuda_sample_pack");
}
