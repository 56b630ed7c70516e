/*
 * sample_ref.c - the processed logits of sampling.h's step 2, for tests
 * (sample_ref.h).
 */
#include "sample_ref.h"

#include <math.h>

void sref_process_logits(const float *x, int V, const struct logit_row *row, float *w,
                         int32_t *mark)
{
    const struct sampling_params *sp = row->sp;
    const int32_t *h = row->history;
    for (int i = 0; i < V; i++)
        w[i] = isnan(x[i]) ? -INFINITY : x[i];
    for (int i = 0; i < sp->n_logit_bias; i++) {
        int32_t id = sp->logit_bias_ids[i];
        if (id >= 0 && id < V) w[id] += sp->logit_bias_values[i];
    }
    for (int i = 0; i < row->n_banned; i++) {
        int32_t id = row->banned_ids[i];
        if (id >= 0 && id < V) w[id] = -INFINITY;
    }
    float rp = sp->repetition_penalty;
    if (rp != 1.0f && rp > 0.0f) {
        for (int i = 0; i < row->n_history; i++) {
            int32_t id = h[i];
            if (id < 0 || id >= V || mark[id]) continue;
            mark[id] = 1;
            w[id] = w[id] > 0.0f ? w[id] / rp : w[id] * rp;
        }
        for (int i = 0; i < row->n_history; i++)
            if (h[i] >= 0 && h[i] < V) mark[h[i]] = 0;
    }
    if (sp->presence_penalty == 0.0f && sp->frequency_penalty == 0.0f) return;
    int gen0 = row->n_history_prompt < 0 ? 0 : row->n_history_prompt;
    for (int i = gen0; i < row->n_history; i++)
        if (h[i] >= 0 && h[i] < V) mark[h[i]]++;
    for (int i = gen0; i < row->n_history; i++) {
        int32_t id = h[i];
        if (id < 0 || id >= V || !mark[id]) continue;
        w[id] -= sp->presence_penalty + sp->frequency_penalty * (float)mark[id];
        mark[id] = 0;
    }
}
