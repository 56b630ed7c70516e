/*
 * render.c - response pieces shared by the completions and chat endpoints:
 * finish and stop reasons, token text as the API shows it, logprob
 * clamping, and the usage object with the evalserver extension (timings
 * and fingerprint), or its null placeholder in stream chunks.
 *
 * Reads requests under their locks; never writes to them.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "api.h"

const char *finish_reason_str(enum finish_reason f)
{
    switch (f) {
    case FINISH_STOP:
        return "stop";
    case FINISH_LENGTH:
        return "length";
    case FINISH_ABORT:
        return "abort";
    case FINISH_ERROR:
        return "error";
    default:
        return NULL;
    }
}

void api_token_text(struct api_server *srv, bool as_id, int32_t id, struct strbuf *out)
{
    if (as_id) {
        sb_printf(out, "token_id:%d", id);
        return;
    }
    if (tok_decode(srv->tok, &id, 1, false, out) != ES_OK) sb_printf(out, "token_id:%d", id);
}

double api_clamp_logprob(float lp)
{
    if (isnan(lp)) return -9999.0;
    return lp < -9999.0f ? -9999.0 : (double)lp;
}

/* stop_reason as vLLM reports it: the stop string, the stop token id (not
 * for EOS), or null. */
void api_add_finish(cJSON *choice, const struct request *req, const struct choice_output *c)
{
    const char *fr = finish_reason_str(c->finish);
    if (fr)
        cJSON_AddStringToObject(choice, "finish_reason", fr);
    else
        cJSON_AddNullToObject(choice, "finish_reason");
    if (c->finish == FINISH_STOP && c->stop_string_index >= 0 &&
        c->stop_string_index < req->params.n_stop) {
        cJSON_AddStringToObject(choice, "stop_reason", req->params.stop[c->stop_string_index]);
        return;
    }
    if (c->finish == FINISH_STOP && c->stop_token >= 0) {
        for (int i = 0; i < req->params.n_stop_token_ids; i++) {
            if (req->params.stop_token_ids[i] == c->stop_token) {
                cJSON_AddNumberToObject(choice, "stop_reason", c->stop_token);
                return;
            }
        }
    }
    cJSON_AddNullToObject(choice, "stop_reason");
}

cJSON *api_usage_json(struct api_job *job)
{
    long prompt = 0, completion = 0, cached = 0;
    for (int i = 0; i < job->n_reqs; i++) {
        struct request *req = job->reqs[i];
        if (!req) continue;
        pthread_mutex_lock(&req->lock);
        prompt += (long)req->prompt.n;
        cached += req->n_cached_prompt_tokens;
        for (int c = 0; c < req->params.n; c++)
            completion += (long)req->choices[c].tokens.n;
        pthread_mutex_unlock(&req->lock);
    }
    cJSON *u = cJSON_CreateObject();
    cJSON_AddNumberToObject(u, "prompt_tokens", (double)prompt);
    cJSON_AddNumberToObject(u, "completion_tokens", (double)completion);
    cJSON_AddNumberToObject(u, "total_tokens", (double)(prompt + completion));
    cJSON *d = cJSON_AddObjectToObject(u, "prompt_tokens_details");
    cJSON_AddNumberToObject(d, "cached_tokens", (double)cached);
    return u;
}

static cJSON *extension_json(struct api_job *job)
{
    double t_arrival = 0, t_end = 0, queue = 0, prefill = 0, decode = 0;
    for (int i = 0; i < job->n_reqs; i++) {
        struct request *req = job->reqs[i];
        if (!req) continue;
        pthread_mutex_lock(&req->lock);
        double ta = req->t_arrival, ts = req->t_first_scheduled, tf = req->t_first_token,
               te = req->t_finished;
        pthread_mutex_unlock(&req->lock);
        if (t_arrival == 0 || ta < t_arrival) t_arrival = ta;
        if (te > t_end) t_end = te;
        if (ts > 0 && ts - ta > queue) queue = ts - ta;
        if (tf > 0 && ts > 0 && tf - ts > prefill) prefill = tf - ts;
        if (te > 0 && tf > 0 && te - tf > decode) decode = te - tf;
    }
    if (t_end == 0) t_end = req_now();
    cJSON *x = cJSON_CreateObject();
    cJSON *t = cJSON_AddObjectToObject(x, "timings");
    cJSON_AddNumberToObject(t, "queue_s", queue);
    cJSON_AddNumberToObject(t, "prefill_s", prefill);
    cJSON_AddNumberToObject(t, "decode_s", decode);
    cJSON_AddNumberToObject(t, "e2e_s", t_arrival > 0 ? t_end - t_arrival : 0);
    cJSON_AddStringToObject(x, "fingerprint", job->srv->fingerprint);
    if (job->n_reqs > 0 && job->reqs[0]) {
        /* The seed actually used, so a run can be replayed exactly. */
        char seed[32];
        snprintf(seed, sizeof(seed), "%llu",
                 (unsigned long long)job->reqs[0]->params.sampling.seed);
        cJSON_AddStringToObject(x, "seed", seed);
    }
    return x;
}

void api_add_usage(struct api_job *job, cJSON *resp)
{
    cJSON_AddItemToObject(resp, "usage", api_usage_json(job));
    cJSON_AddStringToObject(resp, "system_fingerprint", job->srv->fingerprint);
    cJSON_AddItemToObject(resp, "evalserver", extension_json(job));
}

void api_add_chunk_usage(const struct api_job *job, cJSON *chunk)
{
    if (job->opts.include_usage) cJSON_AddNullToObject(chunk, "usage");
}

/* Common head of every response object and stream chunk. */
cJSON *api_response_head(struct api_job *job, const char *object)
{
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "id", job->id);
    cJSON_AddStringToObject(r, "object", object);
    cJSON_AddNumberToObject(r, "created", (double)job->created);
    cJSON_AddStringToObject(r, "model", job->srv->cfg.served_model_name);
    return r;
}

/* A 500 for a job some request of which failed in the engine; NULL if none did. */
char *api_job_error(struct api_job *job, int *status)
{
    for (int i = 0; i < job->n_reqs; i++) {
        struct request *req = job->reqs[i];
        pthread_mutex_lock(&req->lock);
        bool failed = false;
        for (int c = 0; c < req->params.n; c++)
            if (req->choices[c].finish == FINISH_ERROR) failed = true;
        char msg[300];
        snprintf(msg, sizeof(msg), "the engine failed: %s",
                 req->error_message[0] ? req->error_message : "unknown error");
        pthread_mutex_unlock(&req->lock);
        if (failed) {
            struct api_error e;
            api_error_set(&e, 500, msg);
            *status = 500;
            return api_error_json(&e);
        }
    }
    return NULL;
}
