/*
 * fuzz_openai_request.c - libFuzzer target for the server's OpenAI request
 * parsing and validation (server/api/params.c, api_chat_prompt of
 * server/api/api_chat.c), for both /v1/completions and /v1/chat/completions,
 * without a running server.
 *
 * A struct api_server is set up as main.c would for the llama3_1 tokenizer
 * and its chat template (loaded once from the shared folder: the
 * $EVAL_SHARED_DIR, <repo>/../shared, /work/shared), with no engine. Input:
 * byte 0 bit 0 picks the endpoint; the rest is the request body, parsed
 * with js_parse as http.c does, then validated in the handlers' order:
 *   completions: add_special_tokens, params_parse_common,
 *                params_parse_prompts, params_check_prompt per prompt;
 *   chat:        params_parse_common, api_chat_prompt, the max_tokens
 *                default, params_check_prompt.
 * Invariants (abort on violation): a rejection is a 4xx with a message and
 * api_error_json renders it as {"error": {"message": ..., "type": ...}};
 * an accepted request has every field within its documented range, every
 * token id in the vocabulary and prompt + max_tokens within the context;
 * params_clone copies it exactly; nothing leaks (LeakSanitizer).
 * Never does: start the HTTP daemon or an engine.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api.h"
#include "chat_template.h"
#include "json.h"
#include "tokenizer.h"

#ifndef FUZZ_REPO_DIR
#define FUZZ_REPO_DIR "."
#endif

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_openai_request: invariant failed at line %d: %s\n", __LINE__,    \
                    #cond);                                                                        \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define FZ_MAX_MODEL_LEN 2048

static struct api_server srv;
static struct tokenizer *tok;
static struct chat_template *ct;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *cands[3] = {getenv("EVAL_SHARED_DIR"), FUZZ_REPO_DIR "/../shared", "/work/shared"};
    char dir[4096] = "";
    for (int i = 0; i < 3 && !dir[0]; i++) {
        char probe[4096];
        if (!cands[i] || !cands[i][0]) continue;
        snprintf(probe, sizeof probe, "%s/tokenizers/llama3_1/tokenizer.json", cands[i]);
        if (access(probe, R_OK) == 0) snprintf(dir, sizeof dir, "%s/tokenizers/llama3_1", cands[i]);
    }
    struct es_err err = {{0}};
    if (!dir[0] || tok_load(dir, &tok, &err) != ES_OK) {
        fprintf(stderr, "fuzz_openai_request: cannot load the llama3_1 tokenizer (%s); set "
                        "EVAL_SHARED_DIR\n", dir[0] ? err.msg : "no shared dir");
        exit(1);
    }
    if (!tok_chat_template(tok) || ct_compile(tok_chat_template(tok), &ct, &err) != ES_OK) {
        fprintf(stderr, "fuzz_openai_request: llama3_1 chat template: %s\n", err.msg);
        exit(1);
    }
    api_config_defaults(&srv.cfg);
    srv.cfg.served_model_name = "fuzz-model";
    srv.tok = tok;
    srv.ct = ct;
    srv.max_model_len = FZ_MAX_MODEL_LEN;
    srv.vocab_limit = tok_vocab_size(tok);
    api_set_state(&srv, API_SERVING);
    return 0;
}

/* A rejection must be a 4xx that renders as an OpenAI error object. */
static void check_error(const struct api_error *e)
{
    if (getenv("FUZZ_VERBOSE")) fprintf(stderr, "rejected %d: %s\n", e->status, e->message);
    CHECK(e->status >= 400 && e->status < 500);
    CHECK(memchr(e->message, 0, sizeof e->message) && e->message[0]);
    CHECK(memchr(e->param, 0, sizeof e->param));
    char *json = api_error_json(e);
    CHECK(json != NULL);
    struct es_err err = {{0}};
    cJSON *root = js_parse(json, strlen(json), 0, &err);
    if (!root) {
        fprintf(stderr, "api_error_json gave invalid JSON (%s): %s\n", err.msg, json);
        abort();
    }
    const cJSON *obj = cJSON_GetObjectItemCaseSensitive(root, "error");
    CHECK(cJSON_IsObject(obj));
    CHECK(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(obj, "message")));
    CHECK(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(obj, "type")));
    cJSON_Delete(root);
    free(json);
}

static void check_params(const struct request_params *p, const struct job_opts *o, bool chat)
{
    const struct sampling_params *s = &p->sampling;
    CHECK(p->n >= 1 && p->n <= REQ_MAX_CHOICES && o->n == p->n);
    CHECK(isfinite(s->temperature) && s->temperature >= 0 && s->temperature <= 2);
    CHECK(isfinite(s->top_p) && s->top_p > 0 && s->top_p <= 1);
    CHECK(s->top_k >= -1);
    CHECK(isfinite(s->min_p) && s->min_p >= 0 && s->min_p <= 1);
    CHECK(isfinite(s->presence_penalty) && fabsf(s->presence_penalty) <= 2);
    CHECK(isfinite(s->frequency_penalty) && fabsf(s->frequency_penalty) <= 2);
    CHECK(isfinite(s->repetition_penalty) && s->repetition_penalty > 0 &&
          s->repetition_penalty <= 10);
    CHECK(p->min_tokens >= 0);
    CHECK(p->max_tokens >= (chat ? -1 : 0));
    CHECK(p->max_tokens < 0 || p->min_tokens <= p->max_tokens);
    CHECK(p->logprobs >= -1 && p->logprobs <= BACKEND_MAX_TOP_LOGPROBS);
    CHECK(p->prompt_logprobs >= -1 && p->prompt_logprobs <= BACKEND_MAX_TOP_LOGPROBS);
    CHECK(p->n_stop >= 0 && p->n_stop <= srv.cfg.max_stop);
    for (int i = 0; i < p->n_stop; i++)
        CHECK(p->stop[i] && p->stop[i][0] && strlen(p->stop[i]) <= (size_t)srv.cfg.max_stop_len);
    CHECK(p->n_stop_token_ids >= 0 && p->n_stop_token_ids <= 1024);
    for (int i = 0; i < p->n_stop_token_ids; i++)
        CHECK(p->stop_token_ids[i] >= 0 && p->stop_token_ids[i] < srv.vocab_limit);
    CHECK(s->n_logit_bias >= 0 && s->n_logit_bias <= srv.cfg.max_logit_bias);
    for (int i = 0; i < s->n_logit_bias; i++) {
        CHECK(s->logit_bias_ids[i] >= 0 && s->logit_bias_ids[i] < srv.vocab_limit);
        CHECK(isfinite(s->logit_bias_values[i]) && fabsf(s->logit_bias_values[i]) <= 100);
    }
    /* params_clone is what n > 1 and multi-prompt requests rely on. */
    struct request_params c;
    CHECK(params_clone(p, &c) == ES_OK);
    CHECK(c.n_stop == p->n_stop && c.n_stop_token_ids == p->n_stop_token_ids);
    for (int i = 0; i < p->n_stop; i++)
        CHECK(c.stop[i] != p->stop[i] && strcmp(c.stop[i], p->stop[i]) == 0);
    for (int i = 0; i < p->n_stop_token_ids; i++)
        CHECK(c.stop_token_ids[i] == p->stop_token_ids[i]);
    CHECK(c.sampling.n_logit_bias == s->n_logit_bias);
    for (int i = 0; i < s->n_logit_bias; i++)
        CHECK(c.sampling.logit_bias_ids[i] == s->logit_bias_ids[i] &&
              c.sampling.logit_bias_values[i] == s->logit_bias_values[i]);
    request_params_free(&c);
}

static void check_prompt(const struct i32vec *ids, int max_tokens)
{
    CHECK(ids->n >= 1 && ids->n <= FZ_MAX_MODEL_LEN);
    CHECK((long)ids->n + (max_tokens > 0 ? max_tokens : 0) <= FZ_MAX_MODEL_LEN);
    for (size_t i = 0; i < ids->n; i++)
        CHECK(ids->v[i] >= 0 && ids->v[i] < srv.vocab_limit);
}

static void completions(const cJSON *body)
{
    struct api_error e = {0};
    struct request_params p;
    struct job_opts o;
    struct i32vec *ids = NULL;
    char **texts = NULL;
    int n_prompts = 0;
    bool add_special = true, ok = false;
    request_params_defaults(&p);
    struct es_err err = {{0}};
    if (js_get_bool(body, "add_special_tokens", false, &add_special, &err) != ES_OK) {
        api_error_set(&e, 400, err.msg);
        goto out;
    }
    if (!params_parse_common(&srv, body, false, &p, &o, &e)) goto out;
    if (!params_parse_prompts(&srv, body, add_special, &n_prompts, &ids, &texts, &e)) goto out;
    CHECK(n_prompts >= 1 && n_prompts <= srv.cfg.max_prompts);
    for (int i = 0; i < n_prompts; i++) {
        char what[32];
        snprintf(what, sizeof what, n_prompts > 1 ? "prompt[%d]" : "prompt", i);
        if (!params_check_prompt(&srv, &ids[i], p.max_tokens, what, &e)) goto out;
    }
    ok = true;
    if (getenv("FUZZ_VERBOSE")) fprintf(stderr, "accepted completions, %d prompts\n", n_prompts);
    check_params(&p, &o, false);
    for (int i = 0; i < n_prompts; i++)
        check_prompt(&ids[i], p.max_tokens);
out:
    if (!ok) check_error(&e);
    for (int i = 0; ids && i < n_prompts; i++) {
        iv_free(&ids[i]);
        free(texts[i]);
    }
    free(ids);
    free(texts);
    request_params_free(&p);
}

static void chat(const cJSON *body)
{
    struct api_error e = {0};
    struct request_params p;
    struct job_opts o;
    struct i32vec ids = {0};
    struct strbuf text = {0};
    bool ok = false;
    request_params_defaults(&p);
    if (!params_parse_common(&srv, body, true, &p, &o, &e)) goto out;
    if (!api_chat_prompt(&srv, body, false, &ids, &text, &e)) goto out;
    if (p.max_tokens < 0) { /* as api_chat does: the rest of the context */
        p.max_tokens = srv.max_model_len - (int)ids.n;
        if (p.max_tokens < 1) p.max_tokens = 1;
        if (p.min_tokens > p.max_tokens) p.min_tokens = p.max_tokens;
    }
    if (!params_check_prompt(&srv, &ids, p.max_tokens, "messages", &e)) goto out;
    ok = true;
    if (getenv("FUZZ_VERBOSE")) fprintf(stderr, "accepted chat, %zu prompt tokens\n", ids.n);
    check_params(&p, &o, true);
    check_prompt(&ids, p.max_tokens);
    CHECK(p.max_tokens >= 1);
    CHECK(utf8_valid_prefix(sb_cstr(&text), text.len) == text.len);
out:
    if (!ok) check_error(&e);
    iv_free(&ids);
    sb_free(&text);
    request_params_free(&p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) return 0;
    /* An exact-size copy, so a read past the end trips ASan. */
    char *buf = malloc(size - 1);
    if (!buf) return 0;
    memcpy(buf, data + 1, size - 1);
    struct es_err err = {{0}};
    cJSON *body = js_parse(buf, size - 1, 0, &err);
    if (body && cJSON_IsObject(body)) {
        if (data[0] & 1) chat(body);
        else completions(body);
    }
    cJSON_Delete(body);
    free(buf);
    return 0;
}
