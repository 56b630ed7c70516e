/*
 * backend_cuda_sample_pack.c - packs one row's sampling settings for
 * kern_sample (kernels/sampling.cu): its parameters (struct
 * kern_sample_row) and its logit edits (struct kern_logit_edit: one record
 * per distinct id touched by logit_bias, banned_ids or the penalties, plus
 * the extra biases of repeated logit_bias ids). The GPU never scans a
 * history: a row's edits cost O(n_history + n_logit_bias + n_banned) here,
 * with two [V] mark arrays that are all zero again after each row.
 *
 * A record's penalty is computed here with the expression sampling.c
 * uses, and the kernel applies the records in sampling.c's order, so the
 * processed logits equal the CPU's bit for bit.
 *
 * Pure C: no CUDA call, no allocation, no state (backend_cuda_sample.c
 * uploads what it writes; tests/emu/ runs the kernel on it without a GPU).
 */
#include "backend_cuda_sample_pack.h"

#include "sampling.h"

static bool repetition_on(const struct sampling_params *sp)
{
    return sp->repetition_penalty != 1.0f && sp->repetition_penalty > 0.0f;
}

static bool presence_frequency_on(const struct sampling_params *sp)
{
    return sp->presence_penalty != 0.0f || sp->frequency_penalty != 0.0f;
}

/* First generated entry of the history. */
static int generated_start(const struct logit_row *row)
{
    return row->n_history_prompt < 0 ? 0 : row->n_history_prompt;
}

size_t cbsm_edit_bound(const struct logit_row *row)
{
    const struct sampling_params *sp = row->sp;
    size_t bias = sp && sp->n_logit_bias > 0 ? (size_t)sp->n_logit_bias : 0;
    size_t n = bias + (row->n_banned > 0 ? (size_t)row->n_banned : 0);
    if (sp && repetition_on(sp) && row->n_history > 0)
        n += (size_t)row->n_history;
    else if (sp && presence_frequency_on(sp) && row->n_history > generated_start(row))
        n += (size_t)(row->n_history - generated_start(row));
    return n;
}

/* The record of `id` among edits[0 .. *n), created on first touch. */
static struct kern_logit_edit *edit_of(int32_t id, struct kern_logit_edit *edits, int *n,
                                       int32_t *slot)
{
    if (!slot[id]) {
        edits[*n] = (struct kern_logit_edit){.id = id};
        slot[id] = ++*n;
    }
    return &edits[slot[id] - 1];
}

/* logit_bias: the first value of each id in its record; returns how many
 * entries repeat an earlier id. */
static int pack_bias(const struct sampling_params *sp, int V, struct kern_logit_edit *edits, int *n,
                     int32_t *slot)
{
    int repeats = 0;
    for (int i = 0; i < sp->n_logit_bias; i++) {
        int32_t id = sp->logit_bias_ids[i];
        if (id < 0 || id >= V) continue;
        struct kern_logit_edit *e = edit_of(id, edits, n, slot);
        if (e->flags & KERN_EDIT_BIAS) {
            e->flags |= KERN_EDIT_MORE_BIAS;
            repeats++;
        } else {
            e->flags |= KERN_EDIT_BIAS;
            e->bias = sp->logit_bias_values[i];
        }
    }
    return repeats;
}

/* The repeated ids' later values, in list order, after the n records. */
static int pack_extra_bias(const struct sampling_params *sp, int V, struct kern_logit_edit *extra,
                           int32_t *seen)
{
    int n_extra = 0;
    for (int i = 0; i < sp->n_logit_bias; i++) {
        int32_t id = sp->logit_bias_ids[i];
        if (id < 0 || id >= V) continue;
        if (seen[id]++)
            extra[n_extra++] = (struct kern_logit_edit){.id = id, .bias = sp->logit_bias_values[i]};
    }
    for (int i = 0; i < sp->n_logit_bias; i++) {
        int32_t id = sp->logit_bias_ids[i];
        if (id >= 0 && id < V) seen[id] = 0;
    }
    return n_extra;
}

/* Presence / frequency over the generated tokens: count, then one record
 * per distinct id with the penalty sampling.c subtracts. */
static void pack_penalties(const struct logit_row *row, const struct sampling_params *sp, int V,
                           struct kern_logit_edit *edits, int *n, int32_t *slot, int32_t *seen)
{
    const int32_t *hist = row->history;
    for (int i = generated_start(row); i < row->n_history; i++)
        if (hist[i] >= 0 && hist[i] < V) seen[hist[i]]++;
    for (int i = generated_start(row); i < row->n_history; i++) {
        int32_t id = hist[i];
        if (id < 0 || id >= V || !seen[id]) continue;
        struct kern_logit_edit *e = edit_of(id, edits, n, slot);
        e->flags |= KERN_EDIT_PENALTY;
        e->penalty = sp->presence_penalty + sp->frequency_penalty * (float)seen[id];
        seen[id] = 0;
    }
}

int cbsm_pack_row(const struct logit_row *row, int V, int32_t logits_row,
                  struct kern_sample_row *out, struct kern_logit_edit *edits, int32_t *slot,
                  int32_t *seen)
{
    const struct sampling_params *sp = row->sp;
    bool draw = sp->temperature >= SMP_GREEDY_EPS;
    *out = (struct kern_sample_row){
        .seed = sp->seed,
        .rng_counter = row->rng_counter,
        .row = logits_row,
        .mode = draw ? KERN_SAMPLE_DRAW : KERN_SAMPLE_ARGMAX,
        .inv_temperature = draw ? 1.0f / sp->temperature : 1.0f,
        .top_k = sp->top_k,
        .top_p = sp->top_p,
        .min_p = sp->min_p,
        .repetition_penalty = sp->repetition_penalty,
    };
    int n = 0;
    int repeats = pack_bias(sp, V, edits, &n, slot);
    for (int i = 0; i < row->n_banned; i++) {
        int32_t id = row->banned_ids[i];
        if (id >= 0 && id < V) edit_of(id, edits, &n, slot)->flags |= KERN_EDIT_BAN;
    }
    if (repetition_on(sp))
        for (int i = 0; i < row->n_history; i++) {
            int32_t id = row->history[i];
            if (id >= 0 && id < V) edit_of(id, edits, &n, slot)->flags |= KERN_EDIT_REPEAT;
        }
    if (presence_frequency_on(sp)) pack_penalties(row, sp, V, edits, &n, slot, seen);
    int n_extra = repeats ? pack_extra_bias(sp, V, edits + n, seen) : 0;
    for (int j = 0; j < n; j++)
        slot[edits[j].id] = 0;
    out->n_edits = n;
    out->n_extra = n_extra;
    return n + n_extra;
}
