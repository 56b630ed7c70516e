/*
 * api_misc.c - the small endpoints, in vLLM's shapes: GET /v1/models,
 * GET /v1/models/{id} (OpenAI's retrieve), GET /health (200 serving; 503
 * loading, draining or engine dead), GET /version, GET /metrics,
 * GET /tokenizer_info (what lm-evaluation-harness's remote tokenizer
 * reads), POST /tokenize ("prompt" or "messages", add_special_tokens,
 * return_token_strs; with "messages" also the chat fields of
 * api_chat_prompt, a request's "chat_template" among them) and
 * POST /detokenize ("tokens"); the last two check a "model" field like
 * the generation endpoints.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "json.h"

static int reply_cjson(struct http_conn *hc, int status, cJSON *obj)
{
    char *s = cJSON_PrintUnformatted(obj);
    cJSON_Delete(obj);
    return http_reply_json(hc, status, s);
}

/* The one model object of /v1/models and /v1/models/{id}. */
static cJSON *model_json(const struct api_server *srv)
{
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "id", srv->cfg.served_model_name);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)srv->created);
    cJSON_AddStringToObject(m, "owned_by", "evalserver");
    cJSON_AddStringToObject(m, "root", srv->cfg.model_dir ? srv->cfg.model_dir : "");
    cJSON_AddNullToObject(m, "parent");
    cJSON_AddNumberToObject(m, "max_model_len", srv->max_model_len);
    return m;
}

int api_models(struct http_conn *hc)
{
    struct api_server *srv = http_server(hc);
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "object", "list");
    cJSON *data = cJSON_AddArrayToObject(root, "data");
    cJSON_AddItemToArray(data, model_json(srv));
    return reply_cjson(hc, 200, root);
}

int api_model(struct http_conn *hc, const char *id, size_t id_len)
{
    struct api_server *srv = http_server(hc);
    struct api_error e;
    if (!params_model_served(srv, id, id_len, &e)) return http_reply_error(hc, &e);
    return reply_cjson(hc, 200, model_json(srv));
}

int api_health(struct http_conn *hc)
{
    struct api_server *srv = http_server(hc);
    int st = api_get_state(srv);
    if (st == API_LOADING) return http_reply_status(hc, 503, "loading");
    if (!router_healthy(srv->router))
        return http_reply_status(hc, 503, "an engine replica has failed");
    if (st == API_DRAINING) return http_reply_status(hc, 503, "shutting down");
    return http_reply_text(hc, 200, "text/plain; charset=utf-8", NULL);
}

int api_version(struct http_conn *hc)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "version", API_VERSION);
    return reply_cjson(hc, 200, o);
}

int api_metrics(struct http_conn *hc)
{
    struct api_server *srv = http_server(hc);
    struct router *r = api_get_state(srv) == API_LOADING ? NULL : srv->router;
    char *text = metrics_render(srv->metrics, r, http_open_connections(srv));
    return http_reply_text(hc, 200, "text/plain; version=0.0.4; charset=utf-8", text);
}

int api_tokenizer_info(struct http_conn *hc)
{
    struct api_server *srv = http_server(hc);
    cJSON *o = cJSON_CreateObject();
    const char *bos = tok_bos_token(srv->tok), *eos = tok_eos_token(srv->tok);
    if (bos)
        cJSON_AddStringToObject(o, "bos_token", bos);
    else
        cJSON_AddNullToObject(o, "bos_token");
    if (eos)
        cJSON_AddStringToObject(o, "eos_token", eos);
    else
        cJSON_AddNullToObject(o, "eos_token");
    cJSON_AddNullToObject(o, "pad_token");
    const char *tmpl = tok_chat_template(srv->tok);
    if (tmpl)
        cJSON_AddStringToObject(o, "chat_template", tmpl);
    else
        cJSON_AddNullToObject(o, "chat_template");
    cJSON_AddNumberToObject(o, "model_max_length", srv->max_model_len);
    cJSON_AddNumberToObject(o, "vocab_size", tok_vocab_size(srv->tok));
    return reply_cjson(hc, 200, o);
}

int api_tokenize(struct http_conn *hc, const cJSON *body)
{
    struct api_server *srv = http_server(hc);
    struct api_error e;
    struct es_err err = {{0}};
    struct i32vec ids = {0};
    struct strbuf text = {0};
    bool want_strs = false;
    if (!params_check_model(srv, body, &e)) return http_reply_error(hc, &e);
    if (js_get_bool(body, "return_token_strs", false, &want_strs, &err) != ES_OK) {
        api_error_set(&e, 400, err.msg);
        return http_reply_error(hc, &e);
    }
    if (js_has(body, "messages")) {
        if (!api_chat_prompt(srv, body, false, &ids, &text, &e)) {
            iv_free(&ids);
            sb_free(&text);
            return http_reply_error(hc, &e);
        }
    } else {
        const char *prompt = NULL;
        bool add_special = true;
        if (js_get_str(body, "prompt", true, &prompt, &err) != ES_OK ||
            js_get_bool(body, "add_special_tokens", false, &add_special, &err) != ES_OK) {
            api_error_set(&e, 400, err.msg);
            return http_reply_error(hc, &e);
        }
        if (tok_encode(srv->tok, prompt, strlen(prompt), add_special, &ids) != ES_OK) {
            iv_free(&ids);
            return http_reply_status(hc, 400, "'prompt' could not be tokenized");
        }
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "count", (double)ids.n);
    cJSON_AddNumberToObject(o, "max_model_len", srv->max_model_len);
    cJSON *arr = cJSON_AddArrayToObject(o, "tokens");
    for (size_t i = 0; i < ids.n; i++)
        cJSON_AddItemToArray(arr, cJSON_CreateNumber(ids.v[i]));
    if (want_strs) {
        cJSON *strs = cJSON_AddArrayToObject(o, "token_strs");
        for (size_t i = 0; i < ids.n; i++) {
            const char *piece = tok_id_to_piece(srv->tok, ids.v[i]);
            cJSON_AddItemToArray(strs, cJSON_CreateString(piece ? piece : ""));
        }
    } else {
        cJSON_AddNullToObject(o, "token_strs");
    }
    iv_free(&ids);
    sb_free(&text);
    return reply_cjson(hc, 200, o);
}

int api_detokenize(struct http_conn *hc, const cJSON *body)
{
    struct api_server *srv = http_server(hc);
    struct api_error e;
    struct es_err err = {{0}};
    const cJSON *arr = NULL;
    if (!params_check_model(srv, body, &e)) return http_reply_error(hc, &e);
    if (js_get_arr(body, "tokens", true, &arr, &err) != ES_OK) {
        api_error_set(&e, 400, err.msg);
        return http_reply_error(hc, &e);
    }
    struct i32vec ids = {0};
    int i = 0;
    for (const cJSON *it = arr->child; it; it = it->next, i++) {
        char what[48];
        snprintf(what, sizeof(what), "'tokens[%d]'", i);
        int64_t v;
        if (js_as_int(it, what, 0, srv->vocab_limit - 1, &v, &err) != ES_OK) {
            iv_free(&ids);
            api_error_set(&e, 400, err.msg);
            return http_reply_error(hc, &e);
        }
        iv_push(&ids, (int32_t)v);
    }
    struct strbuf text = {0};
    enum es_status st = tok_decode(srv->tok, ids.v, ids.n, false, &text);
    iv_free(&ids);
    if (st != ES_OK) {
        sb_free(&text);
        return http_reply_status(hc, 400, "'tokens' could not be decoded");
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "prompt", js_create_string_n(text.s, text.len));
    sb_free(&text);
    return reply_cjson(hc, 200, o);
}
