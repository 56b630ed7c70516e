/*
 * api_completions.c - POST /v1/completions: prompts in four shapes, n
 * choices each (choice index = prompt_index * n + choice), echo and
 * logprobs in the shape lm-evaluation-harness and vLLM use:
 *
 *   "logprobs": {"tokens": [...], "token_logprobs": [null, ...],
 *                "top_logprobs": [null, {"tok": lp, ...}, ...],
 *                "text_offset": [0, ...]}
 *
 * With echo, the prompt's tokens come first (the first has no logprob),
 * then the generated ones; each top_logprobs dict holds the top-k entries
 * plus the token itself. Logprobs are clamped at -9999 (JSON has no -inf).
 * best_of > n generates best_of candidates per prompt (the request's
 * choices) and returns the n with the highest cumulative logprob, best
 * first, indexed 0..n-1 per prompt; usage counts every candidate's tokens.
 * Such requests are not streamed (params.c refuses them).
 * Runs on HTTP threads; reads requests under their locks.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "json.h"

/* The four parallel arrays of a completions logprobs object. */
struct lp_arrays {
    cJSON *obj, *tokens, *token_logprobs, *top_logprobs, *text_offset;
    long offset; /* text_offset of the next token, in code points */
};

static long utf8_count(const char *s, size_t n)
{
    long cps = 0;
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80) cps++;
    return cps;
}

static void lp_init(struct lp_arrays *a, long offset)
{
    a->obj = cJSON_CreateObject();
    a->tokens = cJSON_AddArrayToObject(a->obj, "tokens");
    a->token_logprobs = cJSON_AddArrayToObject(a->obj, "token_logprobs");
    a->top_logprobs = cJSON_AddArrayToObject(a->obj, "top_logprobs");
    a->text_offset = cJSON_AddArrayToObject(a->obj, "text_offset");
    a->offset = offset;
}

/* The top_logprobs dict of one position: the top-k entries, then the token
 * itself, each text once (the first wins: distinct ids can decode alike).
 * Written by hand (js_raw_object) because a key may hold a NUL byte, which
 * a cJSON key cannot. */
static cJSON *lp_top_dict(struct api_job *job, const struct strbuf *t, float lp,
                          const struct top_logprobs *top)
{
    struct strbuf keys[BACKEND_MAX_TOP_LOGPROBS + 1];
    double values[BACKEND_MAX_TOP_LOGPROBS + 1];
    int n_keys = 0;
    int k = job->opts.logprobs;
    int n_top = top ? (top->n < k ? top->n : k) : 0;
    for (int i = 0; i <= n_top; i++) {
        struct strbuf s = {0};
        const struct strbuf *key = t;
        double value = api_clamp_logprob(lp);
        if (i < n_top) { /* a top entry; the last round is the token itself */
            api_token_text(job->srv, job->opts.return_token_ids, top->ids[i], &s);
            key = &s;
            value = api_clamp_logprob(top->logprobs[i]);
        }
        bool dup = false;
        for (int j = 0; j < n_keys && !dup; j++)
            dup = keys[j].len == key->len && memcmp(sb_cstr(&keys[j]), sb_cstr(key), key->len) == 0;
        if (dup || (key == t && sb_append(&s, sb_cstr(t), t->len) != ES_OK)) {
            sb_free(&s);
            continue;
        }
        keys[n_keys] = s;
        values[n_keys++] = value;
    }
    struct js_raw_object dict = {0};
    for (int j = 0; j < n_keys; j++) {
        js_raw_object_add_number(&dict, keys[j].s, keys[j].len, values[j]);
        sb_free(&keys[j]);
    }
    return js_raw_object_finish(&dict);
}

/* One token; has_lp false renders nulls (the first prompt token). */
static void lp_add(struct api_job *job, struct lp_arrays *a, int32_t id, bool has_lp, float lp,
                   const struct top_logprobs *top)
{
    struct strbuf t = {0};
    api_token_text(job->srv, job->opts.return_token_ids, id, &t);
    cJSON_AddItemToArray(a->tokens, js_create_string_n(t.s, t.len));
    cJSON_AddItemToArray(a->text_offset, cJSON_CreateNumber((double)a->offset));
    a->offset += utf8_count(sb_cstr(&t), t.len);
    if (!has_lp || isnan(lp)) {
        cJSON_AddItemToArray(a->token_logprobs, cJSON_CreateNull());
        cJSON_AddItemToArray(a->top_logprobs, cJSON_CreateNull());
    } else {
        cJSON_AddItemToArray(a->token_logprobs, cJSON_CreateNumber(api_clamp_logprob(lp)));
        cJSON_AddItemToArray(a->top_logprobs, lp_top_dict(job, &t, lp, top));
    }
    sb_free(&t);
}

/* Prompt tokens [from, to) of req (req->lock held). */
static void lp_add_prompt(struct api_job *job, struct lp_arrays *a, struct request *req)
{
    for (size_t j = 0; j < req->prompt.n; j++) {
        bool has = j > 0 && req->prompt_logprobs;
        float lp = has ? req->prompt_logprobs[j] : NAN;
        const struct top_logprobs *top = has && req->prompt_top ? &req->prompt_top[j] : NULL;
        lp_add(job, a, req->prompt.v[j], has, lp, top);
    }
}

/* Generated tokens [from, to) of a choice (req->lock held). */
static void lp_add_generated(struct api_job *job, struct lp_arrays *a,
                             const struct choice_output *c, size_t from, size_t to)
{
    for (size_t t = from; t < to; t++) {
        bool has = c->logprobs != NULL;
        lp_add(job, a, c->tokens.v[t], has, has ? c->logprobs[t] : NAN, c->top ? &c->top[t] : NULL);
    }
}

/* ---------------------------------------------------------------- final response */

/* A choice's cumulative logprob as best_of ranks it (NaN last). */
static double rank_logprob(const struct choice_output *c)
{
    return isnan(c->cum_logprob) ? -INFINITY : c->cum_logprob;
}

/* The choices of req to return, in order (req->lock held): all of them
 * without best_of; with best_of > n, the n of highest cumulative logprob,
 * best first (ties keep the lower index). */
static void pick_choices(const struct api_job *job, const struct request *req, int *order)
{
    int n_cand = job->opts.best_of;
    for (int k = 0; k < n_cand; k++) {
        int j = k;
        if (n_cand > job->opts.n) { /* insertion sort, descending, stable */
            double lp = rank_logprob(&req->choices[k]);
            for (; j > 0 && rank_logprob(&req->choices[order[j - 1]]) < lp; j--)
                order[j] = order[j - 1];
        }
        order[j] = k;
    }
}

char *api_completions_render(struct api_job *job, int *status)
{
    char *err = api_job_error(job, status);
    if (err) return err;
    *status = 200;
    cJSON *resp = api_response_head(job, "text_completion");
    cJSON *choices = cJSON_AddArrayToObject(resp, "choices");
    int n = job->opts.n;
    for (int i = 0; i < job->n_reqs; i++) {
        struct request *req = job->reqs[i];
        pthread_mutex_lock(&req->lock);
        int order[REQ_MAX_CHOICES];
        pick_choices(job, req, order);
        for (int k = 0; k < n; k++) {
            const struct choice_output *c = &req->choices[order[k]];
            cJSON *ch = cJSON_CreateObject();
            cJSON_AddNumberToObject(ch, "index", i * n + k);
            struct strbuf text = {0};
            if (job->opts.echo)
                sb_append(&text, sb_cstr(&job->prompt_texts[i]), job->prompt_texts[i].len);
            sb_append(&text, sb_cstr(&c->text), c->text.len);
            cJSON_AddItemToObject(ch, "text", js_create_string_n(text.s, text.len));
            sb_free(&text);
            if (job->opts.logprobs >= 0) {
                struct lp_arrays a;
                lp_init(&a, 0);
                if (job->opts.echo) lp_add_prompt(job, &a, req);
                lp_add_generated(job, &a, c, 0, c->tokens.n);
                cJSON_AddItemToObject(ch, "logprobs", a.obj);
            } else {
                cJSON_AddNullToObject(ch, "logprobs");
            }
            api_add_finish(ch, req, c);
            cJSON_AddItemToArray(choices, ch);
        }
        pthread_mutex_unlock(&req->lock);
    }
    api_add_usage(job, resp);
    char *s = cJSON_PrintUnformatted(resp);
    cJSON_Delete(resp);
    return s;
}

/* ---------------------------------------------------------------- streaming */

/* True once the prompt's logprobs are all known (req->lock held). The
 * engine fills them in order during prefill, so the last one being set
 * means every one is; a finished request has all it will ever have. */
static bool prompt_logprobs_ready(const struct request *req, const struct choice_output *c)
{
    if (!req->prompt_logprobs || req->prompt.n < 2 || c->finish != FINISH_NONE) return true;
    return !isnan(req->prompt_logprobs[req->prompt.n - 1]);
}

/* Emits what is new for choice k of request i; returns true when that
 * choice has sent its finish_reason. job->lock held; takes req->lock. */
static bool stream_choice(struct api_job *job, int i, int k)
{
    struct request *req = job->reqs[i];
    struct stream_cursor *cur = &job->cursors[i * job->opts.n + k];
    if (cur->finish_sent) return true;
    cJSON *chunk = NULL;
    pthread_mutex_lock(&req->lock);
    const struct choice_output *c = &req->choices[k];
    bool echo_now = job->opts.echo && !cur->started;
    if (echo_now && job->opts.logprobs >= 0 && !prompt_logprobs_ready(req, c)) {
        /* The echo chunk carries the prompt's logprobs: wait for prefill. */
        pthread_mutex_unlock(&req->lock);
        return false;
    }
    bool new_text = c->text.len > cur->text_sent;
    bool new_tokens = c->tokens.n > cur->tokens_sent && job->opts.logprobs >= 0;
    bool finish = c->finish != FINISH_NONE;
    if (echo_now || new_text || new_tokens || finish) {
        chunk = api_response_head(job, "text_completion");
        cJSON *ch = cJSON_CreateObject();
        cJSON_AddNumberToObject(ch, "index", i * job->opts.n + k);
        struct strbuf text = {0};
        if (echo_now) sb_append(&text, sb_cstr(&job->prompt_texts[i]), job->prompt_texts[i].len);
        sb_append(&text, c->text.s ? c->text.s + cur->text_sent : "", c->text.len - cur->text_sent);
        cJSON_AddItemToObject(ch, "text", js_create_string_n(text.s, text.len));
        sb_free(&text);
        if (job->opts.logprobs >= 0) {
            struct lp_arrays a;
            lp_init(&a, cur->text_offset);
            if (echo_now) lp_add_prompt(job, &a, req);
            lp_add_generated(job, &a, c, cur->tokens_sent, c->tokens.n);
            cur->text_offset = a.offset;
            cJSON_AddItemToObject(ch, "logprobs", a.obj);
        } else {
            cJSON_AddNullToObject(ch, "logprobs");
        }
        if (finish) {
            api_add_finish(ch, req, c);
        } else {
            cJSON_AddNullToObject(ch, "finish_reason");
        }
        cJSON *arr = cJSON_AddArrayToObject(chunk, "choices");
        cJSON_AddItemToArray(arr, ch);
        api_add_chunk_usage(job, chunk);
        cur->started = true;
        cur->text_sent = c->text.len;
        cur->tokens_sent = c->tokens.n;
        cur->finish_sent = finish;
        if (finish && c->finish == FINISH_ERROR) {
            struct api_error e;
            api_error_set(&e, 500, req->error_message[0] ? req->error_message : "engine failed");
            sse_event(&job->out, api_error_json(&e));
        }
    }
    pthread_mutex_unlock(&req->lock);
    if (chunk) sse_event(&job->out, cJSON_PrintUnformatted(chunk));
    cJSON_Delete(chunk);
    return cur->finish_sent;
}

/* Appends the usage chunk and [DONE] once every choice is finished. */
void api_stream_finish(struct api_job *job, const char *object)
{
    if (job->opts.include_usage && !job->usage_sent) {
        cJSON *chunk = api_response_head(job, object);
        cJSON_AddArrayToObject(chunk, "choices");
        api_add_usage(job, chunk);
        sse_event(&job->out, cJSON_PrintUnformatted(chunk));
        cJSON_Delete(chunk);
        job->usage_sent = true;
    }
    sse_done(&job->out);
    job->stream_done = true;
}

void api_completions_stream(struct api_job *job)
{
    bool all = true;
    for (int i = 0; i < job->n_reqs; i++)
        for (int k = 0; k < job->opts.n; k++)
            if (!stream_choice(job, i, k)) all = false;
    if (all) api_stream_finish(job, "text_completion");
}

/* ---------------------------------------------------------------- handler */

int api_completions(struct http_conn *hc, const cJSON *body)
{
    struct api_server *srv = http_server(hc);
    struct api_error e = {0};
    struct request_params p;
    struct job_opts o;
    struct api_job *job = NULL;
    struct i32vec *ids = NULL;
    char **texts = NULL;
    int n_prompts = 0;
    bool add_special = true;
    request_params_defaults(&p);

    struct es_err err = {{0}};
    if (js_get_bool(body, "add_special_tokens", false, &add_special, &err) != ES_OK) {
        api_error_set(&e, 400, err.msg);
        goto fail;
    }
    if (!params_parse_common(srv, body, false, &p, &o, &e)) goto fail;
    if (!params_parse_prompts(srv, body, add_special, &n_prompts, &ids, &texts, &e)) goto fail;
    if ((long)n_prompts * o.best_of > API_MAX_SEQUENCES) {
        char msg[160];
        snprintf(msg, sizeof(msg),
                 "'%s' times the number of prompts is %ld; at most %d are allowed",
                 o.best_of > o.n ? "best_of" : "n", (long)n_prompts * o.best_of, API_MAX_SEQUENCES);
        api_error_set(&e, 400, msg);
        goto fail;
    }
    for (int i = 0; i < n_prompts; i++) {
        char what[32];
        snprintf(what, sizeof(what), n_prompts > 1 ? "prompt[%d]" : "prompt", i);
        if (!params_check_prompt(srv, &ids[i], p.max_tokens, what, &e)) goto fail;
    }

    job = job_create(srv, JOB_COMPLETION, n_prompts);
    if (!job) {
        api_error_set(&e, 500, "out of memory");
        goto fail;
    }
    job->opts = o;
    if (o.stream) {
        job->cursors = calloc((size_t)n_prompts * (size_t)o.n, sizeof(*job->cursors));
        if (!job->cursors) {
            api_error_set(&e, 500, "out of memory");
            goto fail;
        }
    }
    for (int i = 0; i < n_prompts; i++) {
        struct request_params rp;
        if (params_clone(&p, &rp) != ES_OK) {
            api_error_set(&e, 500, "out of memory");
            goto fail;
        }
        job->reqs[i] = req_create(ids[i].v, (int)ids[i].n, &rp);
        if (!job->reqs[i]) {
            request_params_free(&rp);
            api_error_set(&e, 500, "out of memory");
            goto fail;
        }
        if (o.echo) {
            /* Text prompts echo as given; id prompts as decoded (which may
             * hold NUL bytes: the echo keeps its length). */
            struct strbuf *echo = &job->prompt_texts[i];
            enum es_status st = texts[i] ? sb_puts(echo, texts[i])
                                         : tok_decode(srv->tok, ids[i].v, ids[i].n, false, echo);
            if (st == ES_ENOMEM) {
                api_error_set(&e, 500, "out of memory");
                goto fail;
            }
            /* Ids the tokenizer cannot decode (a model vocabulary larger
             * than the tokenizer's) echo as empty text. */
        }
    }
    if (!job_submit(job, &e)) goto fail;
    for (int i = 0; i < n_prompts; i++) {
        iv_free(&ids[i]);
        free(texts[i]);
    }
    free(ids);
    free(texts);
    request_params_free(&p);
    return http_run_job(hc, job);

fail:
    for (int i = 0; i < n_prompts; i++) {
        iv_free(&ids[i]);
        free(texts[i]);
    }
    free(ids);
    free(texts);
    request_params_free(&p);
    if (job) job_conn_done(job, false);
    return http_reply_error(hc, &e);
}
