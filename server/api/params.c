/*
 * params.c - OpenAI request parsing and validation: the sampling, stop and
 * reporting fields shared by /v1/completions and /v1/chat/completions, and
 * the completions prompt in its four shapes.
 *
 * Every field goes through common/json.h so that an error names the field
 * ("'top_p' must be ..."); http.c turns the leading name into the error's
 * "param". Unknown fields are ignored, but vLLM extensions that would
 * change the output and are not implemented (guided decoding, beam search,
 * prompt_logprobs...) are refused. Nothing here touches the engine:
 * the result is a struct request_params plus prompt token vectors. For
 * /v1/completions with best_of, the request's choices (params.n) are the
 * best_of candidates and job_opts.n the number returned.
 */
#include <errno.h>
#include <stdarg.h>
#include <time.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "api.h"
#include "json.h"

/* Runs a json.h accessor; on failure turns its message into a 400. */
#define CHECK(call)                                                                                \
    do {                                                                                           \
        struct es_err err_ = {{0}};                                                                \
        struct es_err *err = &err_;                                                                \
        if ((call) != ES_OK) {                                                                     \
            api_error_set(e, 400, err_.msg);                                                       \
            return false;                                                                          \
        }                                                                                          \
    } while (0)

static bool bad(struct api_error *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static bool bad(struct api_error *e, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    api_error_set(e, 400, msg);
    return false;
}

static uint64_t draw_seed(void)
{
    uint64_t s = 0;
    if (getrandom(&s, sizeof(s), 0) != (ssize_t)sizeof(s)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        s = (uint64_t)ts.tv_nsec * 0x9E3779B97F4A7C15ull ^ (uint64_t)ts.tv_sec;
    }
    return s & 0x7fffffffffffffffull; /* non-negative so it can be shown as a JSON integer */
}

static bool get_float(const cJSON *body, const char *f, double lo, double hi, float *out,
                      struct api_error *e)
{
    double d = *out;
    CHECK(js_get_num(body, f, false, lo, hi, &d, err));
    *out = (float)d;
    return true;
}

static bool get_int(const cJSON *body, const char *f, int64_t lo, int64_t hi, int *out,
                    struct api_error *e)
{
    int64_t v = *out;
    CHECK(js_get_int(body, f, false, lo, hi, &v, err));
    *out = (int)v;
    return true;
}

static bool parse_stop(struct api_server *srv, const cJSON *body, struct request_params *p,
                       struct api_error *e)
{
    const cJSON *stop = cJSON_GetObjectItemCaseSensitive(body, "stop");
    if (!stop || cJSON_IsNull(stop)) return true;
    int n;
    if (cJSON_IsString(stop))
        n = 1;
    else if (cJSON_IsArray(stop))
        n = cJSON_GetArraySize(stop);
    else
        return bad(e, "'stop' must be a string or an array of strings, got %s", js_type_name(stop));
    if (n > srv->cfg.max_stop)
        return bad(e, "'stop' has %d strings; at most %d are allowed", n, srv->cfg.max_stop);
    if (n == 0) return true;
    p->stop = calloc((size_t)n, sizeof(char *));
    if (!p->stop) return bad(e, "out of memory");
    for (int i = 0; i < n; i++) {
        const cJSON *it = cJSON_IsString(stop) ? stop : cJSON_GetArrayItem(stop, i);
        if (!cJSON_IsString(it))
            return bad(e, "'stop[%d]' must be a string, got %s", i, js_type_name(it));
        size_t len = strlen(it->valuestring);
        if (len == 0) return bad(e, "'stop[%d]' must not be empty", i);
        if (len > (size_t)srv->cfg.max_stop_len)
            return bad(e, "'stop[%d]' is %zu bytes long; at most %d are allowed", i, len,
                       srv->cfg.max_stop_len);
        p->stop[i] = strdup(it->valuestring);
        if (!p->stop[i]) return bad(e, "out of memory");
        p->n_stop = i + 1;
    }
    return true;
}

static bool parse_stop_ids(struct api_server *srv, const cJSON *body, struct request_params *p,
                           struct api_error *e)
{
    const cJSON *arr = NULL;
    CHECK(js_get_arr(body, "stop_token_ids", false, &arr, err));
    if (!arr) return true;
    int n = cJSON_GetArraySize(arr);
    if (n > 1024) return bad(e, "'stop_token_ids' has %d ids; at most 1024 are allowed", n);
    if (n == 0) return true;
    p->stop_token_ids = calloc((size_t)n, sizeof(int32_t));
    if (!p->stop_token_ids) return bad(e, "out of memory");
    for (int i = 0; i < n; i++) {
        char what[48];
        snprintf(what, sizeof(what), "'stop_token_ids[%d]'", i);
        int64_t v;
        CHECK(js_as_int(cJSON_GetArrayItem(arr, i), what, 0, srv->vocab_limit - 1, &v, err));
        p->stop_token_ids[i] = (int32_t)v;
        p->n_stop_token_ids = i + 1;
    }
    return true;
}

static bool parse_logit_bias(struct api_server *srv, const cJSON *body, struct request_params *p,
                             struct api_error *e)
{
    const cJSON *obj = NULL;
    CHECK(js_get_obj(body, "logit_bias", false, &obj, err));
    if (!obj) return true;
    int n = cJSON_GetArraySize(obj);
    if (n > srv->cfg.max_logit_bias)
        return bad(e, "'logit_bias' has %d entries; at most %d are allowed", n,
                   srv->cfg.max_logit_bias);
    if (n == 0) return true;
    /* Owned by p from here on (request_params_free frees them). */
    int32_t *ids = calloc((size_t)n, sizeof(int32_t));
    float *values = calloc((size_t)n, sizeof(float));
    p->sampling.logit_bias_ids = ids;
    p->sampling.logit_bias_values = values;
    if (!ids || !values) return bad(e, "out of memory");
    int i = 0;
    for (const cJSON *it = obj->child; it; it = it->next, i++) {
        const char *key = it->string;
        char *end = NULL;
        errno = 0;
        long id = strtol(key, &end, 10);
        if (!key[0] || *end || errno || key[0] == '+' || key[0] == ' ')
            return bad(e, "'logit_bias' keys must be token ids as strings, got \"%.40s\"", key);
        if (id < 0 || id >= srv->vocab_limit)
            return bad(e, "'logit_bias' token id %ld is outside the vocabulary [0, %d)", id,
                       srv->vocab_limit);
        char what[64];
        snprintf(what, sizeof(what), "'logit_bias[%ld]'", id);
        double v;
        CHECK(js_as_num(it, what, -100, 100, &v, err));
        ids[i] = (int32_t)id;
        values[i] = (float)v;
        p->sampling.n_logit_bias = i + 1;
    }
    return true;
}

/* Structured output (JSON mode, JSON schema) would need constrained
 * decoding, which this server does not have: only plain text is accepted,
 * so a client that asks for JSON learns it will not get it. */
static bool parse_response_format(const cJSON *body, struct api_error *e)
{
    const cJSON *rf = NULL;
    CHECK(js_get_obj(body, "response_format", false, &rf, err));
    if (!rf) return true;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(rf, "type");
    if (!cJSON_IsString(type))
        return bad(e, "'response_format' needs a string 'type', got %s", js_type_name(type));
    if (strcmp(type->valuestring, "text") != 0)
        return bad(e,
                   "'response_format' {\"type\": \"%.40s\"}: structured output is not "
                   "supported; only {\"type\": \"text\"} is accepted",
                   type->valuestring);
    return true;
}

/* vLLM's request extensions that change what is generated and that this
 * server does not implement: a request that asks for one is refused, never
 * answered as if it had not asked (as response_format is). Asking is any
 * value but the ones clients send for "off": null, false, [] and {}. */
static const struct {
    const char *field;
    const char *why;
} unsupported_fields[] = {
    {"guided_json", "guided decoding (structured output) is not supported"},
    {"guided_regex", "guided decoding (structured output) is not supported"},
    {"guided_choice", "guided decoding (structured output) is not supported"},
    {"guided_grammar", "guided decoding (structured output) is not supported"},
    {"structured_outputs", "guided decoding (structured output) is not supported"},
    {"use_beam_search", "beam search is not supported"},
    {"prompt_logprobs", "prompt logprobs come only from /v1/completions with 'echo' and "
                        "'logprobs'"},
    {"allowed_token_ids", "restricting the vocabulary is not supported; use 'logit_bias'"},
    {"bad_words", "banning words is not supported; use 'logit_bias'"},
    {"logits_processors", "logits processors are not supported"},
    {"truncate_prompt_tokens", "prompts are never truncated; shorten the prompt"},
};

static bool asks_for(const cJSON *v)
{
    if (!v || cJSON_IsNull(v) || cJSON_IsFalse(v)) return false;
    if (cJSON_IsArray(v) || cJSON_IsObject(v)) return v->child != NULL;
    return true;
}

static bool refuse_unsupported(const cJSON *body, struct api_error *e)
{
    size_t n = sizeof(unsupported_fields) / sizeof(unsupported_fields[0]);
    for (size_t i = 0; i < n; i++) {
        const char *f = unsupported_fields[i].field;
        if (asks_for(cJSON_GetObjectItemCaseSensitive(body, f)))
            return bad(e, "'%s' is refused: %s", f, unsupported_fields[i].why);
    }
    return true;
}

bool params_model_served(const struct api_server *srv, const char *name, size_t len,
                         struct api_error *e)
{
    const char *served = srv->cfg.served_model_name;
    if (strlen(served) == len && memcmp(served, name, len) == 0) return true;
    char msg[300];
    snprintf(msg, sizeof(msg), "The model `%.*s` does not exist.", (int)(len > 200 ? 200 : len),
             name);
    api_error_set(e, 404, msg);
    snprintf(e->param, sizeof(e->param), "model");
    return false;
}

bool params_check_model(struct api_server *srv, const cJSON *body, struct api_error *e)
{
    const char *model = NULL;
    CHECK(js_get_str(body, "model", false, &model, err));
    return !model || params_model_served(srv, model, strlen(model), e);
}

bool params_parse_common(struct api_server *srv, const cJSON *body, bool chat,
                         struct request_params *p, struct job_opts *o, struct api_error *e)
{
    request_params_defaults(p);
    memset(o, 0, sizeof(*o));
    /* OpenAI's defaults, whatever the engine's are. */
    p->sampling.temperature = 1.0f;
    p->sampling.top_p = 1.0f;
    p->sampling.top_k = 0;
    p->sampling.min_p = 0.0f;
    p->sampling.presence_penalty = 0.0f;
    p->sampling.frequency_penalty = 0.0f;
    p->sampling.repetition_penalty = 1.0f;
    o->logprobs = -1;
    p->logprobs = -1;
    p->prompt_logprobs = -1;
    p->skip_special_tokens = true;
    p->n = 1;

    if (!params_check_model(srv, body, e)) return false;

    struct sampling_params *sp = &p->sampling;
    if (!get_float(body, "temperature", 0, 2, &sp->temperature, e)) return false;
    if (!get_float(body, "top_p", 0, 1, &sp->top_p, e)) return false;
    if (sp->top_p <= 0) return bad(e, "'top_p' must be in (0, 1], got %g", sp->top_p);
    if (!get_int(body, "top_k", -1, INT_MAX, &sp->top_k, e)) return false;
    if (!get_float(body, "min_p", 0, 1, &sp->min_p, e)) return false;
    if (!get_float(body, "presence_penalty", -2, 2, &sp->presence_penalty, e)) return false;
    if (!get_float(body, "frequency_penalty", -2, 2, &sp->frequency_penalty, e)) return false;
    if (!get_float(body, "repetition_penalty", 0, 10, &sp->repetition_penalty, e)) return false;
    if (sp->repetition_penalty <= 0)
        return bad(e, "'repetition_penalty' must be in (0, 10], got %g", sp->repetition_penalty);

    if (js_has(body, "seed")) {
        int64_t seed = 0;
        CHECK(js_get_int(body, "seed", false, INT64_MIN, INT64_MAX, &seed, err));
        sp->seed = (uint64_t)seed;
    } else {
        sp->seed = draw_seed();
    }

    if (!get_int(body, "n", 1, REQ_MAX_CHOICES, &p->n, e)) return false;
    o->n = p->n;
    o->best_of = p->n;
    CHECK(js_get_bool(body, "ignore_eos", false, &p->ignore_eos, err));
    if (!get_int(body, "min_tokens", 0, INT_MAX, &p->min_tokens, e)) return false;
    CHECK(js_get_bool(body, "include_stop_str_in_output", false, &p->include_stop_str_in_output,
                      err));
    CHECK(js_get_bool(body, "skip_special_tokens", false, &p->skip_special_tokens, err));
    CHECK(js_get_bool(body, "return_tokens_as_token_ids", false, &o->return_token_ids, err));

    /* max_tokens: completions default 16; chat: the rest of the context
     * (filled in once the prompt length is known, marked by -1). */
    p->max_tokens = chat ? -1 : 16;
    int64_t mt = p->max_tokens;
    const char *mt_field = "max_tokens";
    if (chat && js_has(body, "max_completion_tokens")) mt_field = "max_completion_tokens";
    CHECK(js_get_int(body, mt_field, false, chat ? 1 : 0, INT_MAX, &mt, err));
    p->max_tokens = (int)mt;
    if (p->max_tokens >= 0 && p->min_tokens > p->max_tokens)
        return bad(e, "'min_tokens' (%d) must not exceed '%s' (%d)", p->min_tokens, mt_field,
                   p->max_tokens);

    CHECK(js_get_bool(body, "stream", false, &o->stream, err));
    const cJSON *so = NULL;
    CHECK(js_get_obj(body, "stream_options", false, &so, err));
    if (so) {
        if (!o->stream) return bad(e, "'stream_options' is only allowed when 'stream' is true");
        const cJSON *inner = so;
        CHECK(js_get_bool(inner, "include_usage", false, &o->include_usage, err));
    }

    if (chat) {
        CHECK(js_get_bool(body, "logprobs", false, &o->chat_logprobs, err));
        if (!get_int(body, "top_logprobs", 0, BACKEND_MAX_TOP_LOGPROBS, &o->top_logprobs, e))
            return false;
        if (o->top_logprobs > 0 && !o->chat_logprobs)
            return bad(e, "'top_logprobs' requires 'logprobs' to be true");
        p->logprobs = o->chat_logprobs ? o->top_logprobs : -1;
        o->logprobs = p->logprobs;
        bool echo = false;
        CHECK(js_get_bool(body, "echo", false, &echo, err));
        if (echo) return bad(e, "'echo' is not supported for chat completions");
    } else {
        if (!get_int(body, "logprobs", 0, BACKEND_MAX_TOP_LOGPROBS, &o->logprobs, e)) return false;
        p->logprobs = o->logprobs;
        CHECK(js_get_bool(body, "echo", false, &o->echo, err));
        if (o->echo && o->logprobs >= 0) p->prompt_logprobs = o->logprobs;
        if (js_has(body, "suffix")) return bad(e, "'suffix' is not supported");
        /* best_of candidates run in the engine as choices of the request;
         * the n best are picked when all have finished, so they cannot be
         * streamed as they come. */
        if (!get_int(body, "best_of", 1, REQ_MAX_CHOICES, &o->best_of, e)) return false;
        if (o->best_of < o->n)
            return bad(e, "'best_of' (%d) must be greater than or equal to 'n' (%d)", o->best_of,
                       o->n);
        if (o->stream && o->best_of > o->n)
            return bad(e, "'best_of' greater than 'n' cannot be streamed: the best candidates are "
                          "known only when all have finished");
        p->n = o->best_of;
    }
    if (!parse_response_format(body, e)) return false;
    if (!refuse_unsupported(body, e)) return false;

    if (!parse_stop(srv, body, p, e)) return false;
    if (!parse_stop_ids(srv, body, p, e)) return false;
    if (!parse_logit_bias(srv, body, p, e)) return false;
    return true;
}

bool params_text_may_fit(const struct api_server *srv, size_t bytes)
{
    if (srv->max_token_bytes == 0 || srv->max_model_len <= 0) return true;
    /* A token stands for at most its piece's bytes; x4 leaves room for
     * normalizers that shrink text (NFC composes up to 3:1). */
    double most = (double)srv->max_model_len * (double)srv->max_token_bytes * 4.0;
    return (double)bytes <= most;
}

bool params_check_prompt(struct api_server *srv, const struct i32vec *ids, int max_tokens,
                         const char *what, struct api_error *e)
{
    if (ids->n == 0) return bad(e, "'%s' must not be empty", what);
    for (size_t i = 0; i < ids->n; i++) {
        if (ids->v[i] < 0 || ids->v[i] >= srv->vocab_limit)
            return bad(e, "'%s' has token id %d outside the vocabulary [0, %d)", what, ids->v[i],
                       srv->vocab_limit);
    }
    long total = (long)ids->n + (max_tokens > 0 ? max_tokens : 0);
    if ((long)ids->n > srv->max_model_len || total > srv->max_model_len)
        return bad(e,
                   "'max_tokens': this model's maximum context length is %d tokens. However, "
                   "you requested %ld tokens (%zu in the prompt, %d in the completion). "
                   "Please reduce the length of the prompt or completion.",
                   srv->max_model_len, total, ids->n, max_tokens > 0 ? max_tokens : 0);
    return true;
}

/* A token-id list from a JSON array; `what` names it in errors. */
static bool ids_from_array(struct api_server *srv, const cJSON *arr, const char *what,
                           struct i32vec *out, struct api_error *e)
{
    int n = cJSON_GetArraySize(arr);
    if (iv_reserve(out, (size_t)n) != ES_OK) return bad(e, "out of memory");
    int i = 0;
    for (const cJSON *it = arr->child; it; it = it->next, i++) {
        char w[64];
        snprintf(w, sizeof(w), "'%s[%d]'", what, i);
        int64_t v;
        CHECK(js_as_int(it, w, INT32_MIN, INT32_MAX, &v, err));
        if (v < 0 || v >= srv->vocab_limit)
            return bad(e, "'%s' has token id %lld outside the vocabulary [0, %d)", what,
                       (long long)v, srv->vocab_limit);
        iv_push(out, (int32_t)v);
    }
    return true;
}

bool params_parse_prompts(struct api_server *srv, const cJSON *body, bool add_special, int *n_out,
                          struct i32vec **ids_out, char ***texts_out, struct api_error *e)
{
    const cJSON *pr = cJSON_GetObjectItemCaseSensitive(body, "prompt");
    *n_out = 0;
    *ids_out = NULL;
    *texts_out = NULL;
    if (!pr || cJSON_IsNull(pr)) return bad(e, "'prompt' is required");
    int n = 1;
    enum { ONE_TEXT, TEXTS, ONE_IDS, IDS_LIST } shape;
    if (cJSON_IsString(pr)) {
        shape = ONE_TEXT;
    } else if (cJSON_IsArray(pr)) {
        int len = cJSON_GetArraySize(pr);
        if (len == 0) return bad(e, "'prompt' must not be empty");
        const cJSON *first = pr->child;
        if (cJSON_IsString(first)) {
            shape = TEXTS;
            n = len;
        } else if (cJSON_IsNumber(first)) {
            shape = ONE_IDS;
        } else if (cJSON_IsArray(first)) {
            shape = IDS_LIST;
            n = len;
        } else {
            return bad(e, "'prompt' must be a string, an array of strings, an array of token "
                          "ids or an array of arrays of token ids");
        }
    } else {
        return bad(e, "'prompt' must be a string or an array, got %s", js_type_name(pr));
    }
    if (n > srv->cfg.max_prompts)
        return bad(e, "'prompt' has %d prompts; at most %d are allowed", n, srv->cfg.max_prompts);

    struct i32vec *ids = calloc((size_t)n, sizeof(*ids));
    char **texts = calloc((size_t)n, sizeof(*texts));
    if (!ids || !texts) {
        free(ids);
        free(texts);
        return bad(e, "out of memory");
    }
    *ids_out = ids;
    *texts_out = texts;
    *n_out = n;
    for (int i = 0; i < n; i++) {
        const cJSON *it = shape == ONE_TEXT || shape == ONE_IDS ? pr : cJSON_GetArrayItem(pr, i);
        char what[32];
        if (shape == TEXTS || shape == IDS_LIST)
            snprintf(what, sizeof(what), "prompt[%d]", i);
        else
            snprintf(what, sizeof(what), "prompt");
        if (shape == ONE_TEXT || shape == TEXTS) {
            if (!cJSON_IsString(it))
                return bad(e, "'%s' must be a string, got %s", what, js_type_name(it));
            size_t len = strlen(it->valuestring);
            if (!params_text_may_fit(srv, len))
                return bad(e,
                           "'%s' is %zu bytes long, more than this model's maximum context "
                           "length of %d tokens can hold",
                           what, len, srv->max_model_len);
            texts[i] = strdup(it->valuestring);
            if (!texts[i]) return bad(e, "out of memory");
            if (tok_encode(srv->tok, it->valuestring, strlen(it->valuestring), add_special,
                           &ids[i]) != ES_OK)
                return bad(e, "'%s' could not be tokenized", what);
        } else {
            if (!cJSON_IsArray(it))
                return bad(e, "'%s' must be an array of token ids, got %s", what, js_type_name(it));
            if (!ids_from_array(srv, it, what, &ids[i], e)) return false;
        }
    }
    return true;
}

enum es_status params_clone(const struct request_params *src, struct request_params *dst)
{
    *dst = *src;
    dst->stop = NULL;
    dst->stop_token_ids = NULL;
    dst->n_stop = 0;
    dst->n_stop_token_ids = 0;
    dst->sampling.logit_bias_ids = NULL;
    dst->sampling.logit_bias_values = NULL;
    dst->sampling.n_logit_bias = 0;
    if (src->sampling.n_logit_bias > 0) {
        size_t n = (size_t)src->sampling.n_logit_bias;
        int32_t *ids = malloc(n * sizeof(int32_t));
        float *values = malloc(n * sizeof(float));
        dst->sampling.logit_bias_ids = ids;
        dst->sampling.logit_bias_values = values;
        if (!ids || !values) {
            request_params_free(dst);
            return ES_ENOMEM;
        }
        memcpy(ids, src->sampling.logit_bias_ids, n * sizeof(int32_t));
        memcpy(values, src->sampling.logit_bias_values, n * sizeof(float));
        dst->sampling.n_logit_bias = (int)n;
    }
    if (src->n_stop > 0) {
        dst->stop = calloc((size_t)src->n_stop, sizeof(char *));
        if (!dst->stop) return ES_ENOMEM;
        for (int i = 0; i < src->n_stop; i++) {
            dst->stop[i] = strdup(src->stop[i]);
            if (!dst->stop[i]) {
                request_params_free(dst);
                return ES_ENOMEM;
            }
            dst->n_stop = i + 1;
        }
    }
    if (src->n_stop_token_ids > 0) {
        size_t bytes = (size_t)src->n_stop_token_ids * sizeof(int32_t);
        dst->stop_token_ids = malloc(bytes);
        if (!dst->stop_token_ids) {
            request_params_free(dst);
            return ES_ENOMEM;
        }
        memcpy(dst->stop_token_ids, src->stop_token_ids, bytes);
        dst->n_stop_token_ids = src->n_stop_token_ids;
    }
    return ES_OK;
}
