/*
 * request.c - life cycle of a struct request: creation with empty outputs,
 * reference counting, the abort flag, and the parameter defaults.
 *
 * Owns: the request's prompt copy, its params' owned arrays and every
 * output buffer. Must never touch engine, scheduler or KV state: the engine
 * keeps its own per-request structures and only reaches a request through
 * the fields documented in request.h.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "request.h"

static void choice_free(struct choice_output *c)
{
    iv_free(&c->tokens);
    free(c->logprobs);
    free(c->top);
    sb_free(&c->text);
}

static void req_free(struct request *req)
{
    if (req->choices)
        for (int i = 0; i < req->params.n; i++)
            choice_free(&req->choices[i]);
    free(req->choices);
    free(req->prompt_logprobs);
    free(req->prompt_top);
    iv_free(&req->prompt);
    request_params_free(&req->params);
    pthread_mutex_destroy(&req->lock);
    free(req);
}

struct request *req_create(const int32_t *prompt, int n_prompt, const struct request_params *params)
{
    static atomic_uint_fast64_t next_id = 1;
    if (n_prompt < 0 || !params || params->n < 1 || params->n > REQ_MAX_CHOICES) return NULL;
    struct request *req = calloc(1, sizeof(*req));
    if (!req) return NULL;
    if (pthread_mutex_init(&req->lock, NULL) != 0) {
        free(req);
        return NULL;
    }
    req->id = atomic_fetch_add(&next_id, 1);
    atomic_init(&req->refcount, 1);
    atomic_init(&req->aborted, false);
    req->params = *params;
    req->t_arrival = req_now();
    req->choices = calloc((size_t)params->n, sizeof(*req->choices));
    if (!req->choices) goto err;
    for (int i = 0; i < params->n; i++) {
        req->choices[i].stop_token = -1;
        req->choices[i].stop_string_index = -1;
    }
    if (n_prompt > 0 && iv_append(&req->prompt, prompt, (size_t)n_prompt) != ES_OK) goto err;
    if (params->prompt_logprobs >= 0 && n_prompt > 0) {
        req->prompt_logprobs = malloc((size_t)n_prompt * sizeof(float));
        if (!req->prompt_logprobs) goto err;
        for (int i = 0; i < n_prompt; i++)
            req->prompt_logprobs[i] = NAN;
        if (params->prompt_logprobs > 0) {
            req->prompt_top = calloc((size_t)n_prompt, sizeof(*req->prompt_top));
            if (!req->prompt_top) goto err;
        }
    }
    return req;
err:
    /* The caller keeps ownership of params' arrays when creation fails. */
    memset(&req->params, 0, sizeof(req->params));
    req_free(req);
    return NULL;
}

void req_retain(struct request *req)
{
    atomic_fetch_add(&req->refcount, 1);
}

void req_release(struct request *req)
{
    if (!req) return;
    if (atomic_fetch_sub(&req->refcount, 1) == 1) req_free(req);
}

void req_abort(struct request *req)
{
    atomic_store(&req->aborted, true);
}

bool req_is_finished(struct request *req)
{
    pthread_mutex_lock(&req->lock);
    bool done = req->n_finished >= req->params.n;
    pthread_mutex_unlock(&req->lock);
    return done;
}

double req_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void request_params_defaults(struct request_params *p)
{
    memset(p, 0, sizeof(*p));
    /* Same values as sp_defaults(), kept here so that request.c does not
     * depend on the backend's sampling code. */
    p->sampling.temperature = 1.0f;
    p->sampling.top_p = 1.0f;
    p->sampling.top_k = 0;
    p->sampling.min_p = 0.0f;
    p->sampling.repetition_penalty = 1.0f;
    p->n = 1;
    p->max_tokens = 16;
    p->min_tokens = 0;
    p->logprobs = -1;
    p->prompt_logprobs = -1;
    p->skip_special_tokens = true;
}

void request_params_free(struct request_params *p)
{
    free(p->stop_token_ids);
    p->stop_token_ids = NULL;
    p->n_stop_token_ids = 0;
    if (p->stop)
        for (int i = 0; i < p->n_stop; i++)
            free(p->stop[i]);
    free(p->stop);
    p->stop = NULL;
    p->n_stop = 0;
    /* logit_bias arrays are const in sampling_params; the API that filled
     * them owns them through the request: free them here too. */
    free((void *)p->sampling.logit_bias_ids);
    free((void *)p->sampling.logit_bias_values);
    p->sampling.logit_bias_ids = NULL;
    p->sampling.logit_bias_values = NULL;
    p->sampling.n_logit_bias = 0;
}
