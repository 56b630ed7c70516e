/*
 * api_chat.c - POST /v1/chat/completions: messages rendered through the
 * model's chat template (common/chat_template.h), tokenized without adding
 * special tokens again (the template writes BOS itself), one request with
 * n choices; answers in the OpenAI chat shape, streaming as
 * chat.completion.chunk events (role first, then content, then the
 * finish_reason in its own chunk, then [DONE]).
 *
 * continue_final_message renders without the generation prompt and cuts
 * the prompt right after the last occurrence of the final assistant
 * message's stripped content (ct_continue_cut), so the model continues it
 * as transformers' apply_chat_template has it do.
 * A request's own "chat_template" (vLLM's extension) is refused with 400
 * unless the server runs with --trust-request-chat-template; then it is
 * compiled for that request only, rendered with the same variables and
 * limits as the server's template, and freed before the handler returns.
 * logprobs `bytes` are each token's raw bytes, so those of tokens that
 * split a character join into it.
 * With --enable-auto-tool-choice --tool-call-parser, a request with tools
 * (tool_choice absent or "auto") gets its choices' tool calls parsed out
 * of the text (tool_calls.c): message.tool_calls, finish_reason
 * "tool_calls"; streaming holds back what could be a call and sends the
 * calls in one delta when the choice ends.
 * Runs on HTTP threads.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "chat_template.h"
#include "json.h"

static bool chat_bad(struct api_error *e, const char *msg)
{
    api_error_set(e, 400, msg);
    return false;
}

/* A message's content as one string: a string, or the text (and refusal)
 * parts joined with newlines, as vLLM joins them. Returns NULL (and fills
 * e) for anything else: other parts (images, audio) are refused. */
static char *content_text(const cJSON *msg, int idx, const char *role, struct api_error *e)
{
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(msg, "content");
    char what[96];
    if (!content || cJSON_IsNull(content)) {
        if (strcmp(role, "assistant") == 0) return strdup("");
        snprintf(what, sizeof(what), "'messages[%d].content' is required", idx);
        chat_bad(e, what);
        return NULL;
    }
    if (cJSON_IsString(content)) return strdup(content->valuestring);
    if (!cJSON_IsArray(content)) {
        snprintf(what, sizeof(what), "'messages[%d].content' must be a string or an array of parts",
                 idx);
        chat_bad(e, what);
        return NULL;
    }
    struct strbuf sb = {0};
    int j = 0;
    for (const cJSON *part = content->child; part; part = part->next, j++) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
        const char *key = NULL; /* the member holding the part's text */
        if (cJSON_IsObject(part) && cJSON_IsString(type)) {
            if (strcmp(type->valuestring, "text") == 0) {
                key = "text";
            } else if (strcmp(type->valuestring, "refusal") == 0) {
                key = "refusal"; /* an earlier assistant refusal, replayed: text (as vLLM) */
            } else {
                /* image_url, input_audio, file...: refused, never dropped. */
                char why[200];
                snprintf(why, sizeof(why),
                         "'messages[%d].content[%d]' is a \"%.40s\" part; this model takes text "
                         "only ({\"type\": \"text\", \"text\": string})",
                         idx, j, type->valuestring);
                sb_free(&sb);
                chat_bad(e, why);
                return NULL;
            }
        }
        const cJSON *text = key ? cJSON_GetObjectItemCaseSensitive(part, key) : NULL;
        if (!cJSON_IsString(text)) {
            snprintf(what, sizeof(what),
                     "'messages[%d].content[%d]' must be {\"type\": \"text\", \"text\": string}",
                     idx, j);
            sb_free(&sb);
            chat_bad(e, what);
            return NULL;
        }
        if (j > 0) sb_putc(&sb, '\n');
        sb_puts(&sb, text->valuestring);
    }
    return sb_steal(&sb);
}

static bool valid_role(const char *r)
{
    static const char *const roles[] = {"system", "user", "assistant", "tool", "developer"};
    for (size_t i = 0; i < sizeof(roles) / sizeof(roles[0]); i++)
        if (strcmp(r, roles[i]) == 0) return true;
    return false;
}

/* What shapes one chat render, read from the request. */
struct chat_opts {
    bool add_generation_prompt;
    bool continue_final_message; /* cut after the final assistant message */
    bool add_special_tokens;     /* when tokenizing the rendered prompt */
    const cJSON *tools;          /* array or NULL */
    const cJSON *kwargs;         /* chat_template_kwargs object or NULL */
};

static bool chat_opts_parse(const cJSON *body, bool default_add_special, struct chat_opts *o,
                            struct api_error *e)
{
    struct es_err err = {{0}};
    *o = (struct chat_opts){.add_generation_prompt = true,
                            .add_special_tokens = default_add_special};
    if (js_get_bool(body, "add_generation_prompt", false, &o->add_generation_prompt, &err) !=
            ES_OK ||
        js_get_bool(body, "continue_final_message", false, &o->continue_final_message, &err) !=
            ES_OK ||
        js_get_bool(body, "add_special_tokens", false, &o->add_special_tokens, &err) != ES_OK)
        return chat_bad(e, err.msg);
    if (o->continue_final_message && o->add_generation_prompt &&
        js_has(body, "add_generation_prompt"))
        return chat_bad(e, "'continue_final_message' and 'add_generation_prompt' cannot both "
                           "be true");
    if (o->continue_final_message) o->add_generation_prompt = false;
    if (js_get_obj(body, "chat_template_kwargs", false, &o->kwargs, &err) != ES_OK ||
        js_get_arr(body, "tools", false, &o->tools, &err) != ES_OK)
        return chat_bad(e, err.msg);
    return true;
}

/* The template one request renders with: the server's, or with
 * --trust-request-chat-template the request's own "chat_template",
 * compiled for this request only into *owned (the caller ct_frees it).
 * Without the flag such a request is refused, never quietly served with
 * the server's template instead of the one it asked for. The engine reads
 * no file (no include or import) and bounds every render (ct_limits). */
static bool request_template(struct api_server *srv, const cJSON *body,
                             const struct chat_template **ct, struct chat_template **owned,
                             struct api_error *e)
{
    *ct = srv->ct;
    *owned = NULL;
    if (!js_has(body, "chat_template")) return true; /* absent or null */
    if (!srv->cfg.trust_request_chat_template)
        return chat_bad(e, "'chat_template' is refused: the server must be started with "
                           "--trust-request-chat-template to accept a chat template in a "
                           "request");
    struct es_err err = {{0}};
    const char *source = NULL;
    if (js_get_str(body, "chat_template", true, &source, &err) != ES_OK)
        return chat_bad(e, err.msg);
    size_t len = strlen(source);
    char msg[600];
    if (len == 0) return chat_bad(e, "'chat_template' must not be empty");
    if (len > API_MAX_REQUEST_TEMPLATE_BYTES) {
        snprintf(msg, sizeof(msg),
                 "'chat_template' is %zu bytes long, more than the %u bytes a request's "
                 "template may have",
                 len, API_MAX_REQUEST_TEMPLATE_BYTES);
        return chat_bad(e, msg);
    }
    if (ct_compile(source, owned, &err) != ES_OK) {
        snprintf(msg, sizeof(msg), "'chat_template' could not be compiled: %s", err.msg);
        return chat_bad(e, msg);
    }
    *ct = *owned;
    return true;
}

/* One message as the template sees it: a copy whose content is its text
 * (content_text). *content receives that text (the caller frees it). */
static cJSON *message_copy(const cJSON *m, int idx, char **content, struct api_error *e)
{
    char what[96];
    if (!cJSON_IsObject(m)) {
        snprintf(what, sizeof(what), "'messages[%d]' must be an object", idx);
        chat_bad(e, what);
        return NULL;
    }
    const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
    if (!cJSON_IsString(role) || !valid_role(role->valuestring)) {
        snprintf(what, sizeof(what),
                 "'messages[%d].role' must be one of system, user, assistant, tool, developer",
                 idx);
        chat_bad(e, what);
        return NULL;
    }
    *content = content_text(m, idx, role->valuestring, e);
    if (!*content) return NULL;
    cJSON *copy = cJSON_Duplicate(m, true);
    /* Replace only what is there: a failed replace leaks the new item. */
    cJSON *text_item = cJSON_CreateString(*content);
    if (cJSON_GetObjectItemCaseSensitive(copy, "content"))
        cJSON_ReplaceItemInObjectCaseSensitive(copy, "content", text_item);
    else
        cJSON_AddItemToObject(copy, "content", text_item);
    return copy;
}

/* The template's variables: messages, add_generation_prompt, bos_token,
 * eos_token, tools, then chat_template_kwargs over them (but messages).
 * *last_content receives the final message's text (the caller frees it). */
static cJSON *chat_context(struct api_server *srv, const cJSON *messages, const struct chat_opts *o,
                           char **last_content, struct api_error *e)
{
    cJSON *ctx = cJSON_CreateObject();
    cJSON *msgs = cJSON_AddArrayToObject(ctx, "messages");
    int i = 0;
    for (const cJSON *m = messages->child; m; m = m->next, i++) {
        char *content = NULL;
        cJSON *copy = message_copy(m, i, &content, e);
        if (!copy) goto fail;
        cJSON_AddItemToArray(msgs, copy);
        if (m->next) {
            free(content);
            continue;
        }
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        if (o->continue_final_message && strcmp(role->valuestring, "assistant") != 0) {
            free(content);
            chat_bad(e, "'continue_final_message' needs the last message to be from the "
                        "assistant");
            goto fail;
        }
        *last_content = content;
    }
    cJSON_AddBoolToObject(ctx, "add_generation_prompt", o->add_generation_prompt);
    const char *bos = tok_bos_token(srv->tok), *eos = tok_eos_token(srv->tok);
    cJSON_AddStringToObject(ctx, "bos_token", bos ? bos : "");
    cJSON_AddStringToObject(ctx, "eos_token", eos ? eos : "");
    if (o->tools) cJSON_AddItemToObject(ctx, "tools", cJSON_Duplicate(o->tools, true));
    if (o->kwargs)
        for (const cJSON *kv = o->kwargs->child; kv; kv = kv->next) {
            if (strcmp(kv->string, "messages") == 0) continue;
            cJSON_DeleteItemFromObjectCaseSensitive(ctx, kv->string);
            cJSON_AddItemToObject(ctx, kv->string, cJSON_Duplicate(kv, true));
        }
    return ctx;
fail:
    cJSON_Delete(ctx);
    return NULL;
}

/* Renders ctx into text, cut for continue_final_message. from_request: the
 * template is the request's own, as the error says. */
static bool render_prompt(const struct chat_template *ct, bool from_request, const cJSON *ctx,
                          const struct chat_opts *o, const char *last_content, struct strbuf *text,
                          struct api_error *e)
{
    struct es_err err = {{0}};
    char msg[600];
    if (ct_render(ct, ctx, text, &err) != ES_OK) {
        snprintf(msg, sizeof(msg), "'messages' could not be rendered with %s: %s",
                 from_request ? "the request's chat_template" : "the chat template", err.msg);
        return chat_bad(e, msg);
    }
    if (!o->continue_final_message) return true;
    size_t cut = 0;
    if (ct_continue_cut(sb_cstr(text), text->len, last_content, strlen(last_content), &cut, &err) !=
        ES_OK) {
        snprintf(msg, sizeof(msg), "'continue_final_message': %s", err.msg);
        return chat_bad(e, msg);
    }
    text->len = cut;
    text->s[text->len] = '\0';
    return true;
}

bool api_chat_prompt(struct api_server *srv, const cJSON *body, bool default_add_special,
                     struct i32vec *ids, struct strbuf *text, struct api_error *e)
{
    struct es_err err = {{0}};
    const cJSON *messages = NULL;
    if (js_get_arr(body, "messages", true, &messages, &err) != ES_OK) return chat_bad(e, err.msg);
    if (cJSON_GetArraySize(messages) == 0) return chat_bad(e, "'messages' must not be empty");
    struct chat_opts o;
    if (!chat_opts_parse(body, default_add_special, &o, e)) return false;
    const struct chat_template *ct = NULL;
    struct chat_template *owned = NULL; /* the request's own template, if any */
    if (!request_template(srv, body, &ct, &owned, e)) return false;
    if (!ct) return chat_bad(e, "this model has no chat template; use /v1/completions");

    bool ok = false;
    char *last_content = NULL;
    cJSON *ctx = chat_context(srv, messages, &o, &last_content, e);
    if (!ctx || !render_prompt(ct, owned != NULL, ctx, &o, last_content, text, e)) goto out;
    if (tok_encode(srv->tok, sb_cstr(text), text->len, o.add_special_tokens, ids) != ES_OK) {
        chat_bad(e, "'messages' could not be tokenized");
        goto out;
    }
    ok = true;
out:
    free(last_content);
    cJSON_Delete(ctx);
    ct_free(owned);
    return ok;
}

/* ---------------------------------------------------------------- logprobs */

/* `bytes` are the token's own (tok_id_to_bytes), not those of its `token`
 * text: a token that is part of a UTF-8 character has U+FFFD for text, and
 * a client joins the bytes of consecutive tokens to get the character.
 * With return_tokens_as_token_ids the text is "token_id:N" and the bytes
 * are still the token's; only an id the tokenizer does not know gives the
 * bytes of its text. */
static cJSON *token_entry(struct api_job *job, int32_t id, float lp)
{
    struct strbuf t = {0}, raw = {0};
    api_token_text(job->srv, job->opts.return_token_ids, id, &t);
    if (tok_id_to_bytes(job->srv->tok, id, &raw) != ES_OK) {
        sb_clear(&raw);
        sb_append(&raw, sb_cstr(&t), t.len);
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "token", js_create_string_n(t.s, t.len));
    cJSON_AddNumberToObject(o, "logprob", api_clamp_logprob(lp));
    cJSON *bytes = cJSON_AddArrayToObject(o, "bytes");
    for (size_t i = 0; i < raw.len; i++)
        cJSON_AddItemToArray(bytes, cJSON_CreateNumber((unsigned char)raw.s[i]));
    sb_free(&t);
    sb_free(&raw);
    return o;
}

/* {"content": [...]} for generated tokens [from, to) (req->lock held). */
static cJSON *chat_logprobs(struct api_job *job, const struct choice_output *c, size_t from,
                            size_t to)
{
    cJSON *lp = cJSON_CreateObject();
    cJSON *content = cJSON_AddArrayToObject(lp, "content");
    for (size_t t = from; t < to; t++) {
        float v = c->logprobs ? c->logprobs[t] : NAN;
        cJSON *ent = token_entry(job, c->tokens.v[t], v);
        cJSON *tops = cJSON_AddArrayToObject(ent, "top_logprobs");
        if (c->top)
            for (int i = 0; i < c->top[t].n && i < job->opts.top_logprobs; i++)
                cJSON_AddItemToArray(tops,
                                     token_entry(job, c->top[t].ids[i], c->top[t].logprobs[i]));
        cJSON_AddItemToArray(content, ent);
    }
    return lp;
}

/* ---------------------------------------------------------------- final response */

/* A choice whose text held tool calls (tool_calls.h) finishes as such. */
static void set_finish_tool_calls(cJSON *choice)
{
    cJSON_ReplaceItemInObjectCaseSensitive(choice, "finish_reason",
                                           cJSON_CreateString("tool_calls"));
}

char *api_chat_render(struct api_job *job, int *status)
{
    char *err = api_job_error(job, status);
    if (err) return err;
    *status = 200;
    cJSON *resp = api_response_head(job, "chat.completion");
    cJSON *choices = cJSON_AddArrayToObject(resp, "choices");
    struct request *req = job->reqs[0];
    pthread_mutex_lock(&req->lock);
    for (int k = 0; k < job->opts.n; k++) {
        const struct choice_output *c = &req->choices[k];
        cJSON *ch = cJSON_CreateObject();
        cJSON_AddNumberToObject(ch, "index", k);
        cJSON *msg = cJSON_AddObjectToObject(ch, "message");
        cJSON_AddStringToObject(msg, "role", "assistant");
        bool called = tool_calls_message(job->opts.tool_parser, c->text.s, c->text.len, msg);
        if (job->opts.chat_logprobs)
            cJSON_AddItemToObject(ch, "logprobs", chat_logprobs(job, c, 0, c->tokens.n));
        else
            cJSON_AddNullToObject(ch, "logprobs");
        api_add_finish(ch, req, c);
        if (called) set_finish_tool_calls(ch);
        cJSON_AddItemToArray(choices, ch);
    }
    pthread_mutex_unlock(&req->lock);
    api_add_usage(job, resp);
    char *s = cJSON_PrintUnformatted(resp);
    cJSON_Delete(resp);
    return s;
}

/* ---------------------------------------------------------------- streaming */

static void chunk_out(struct api_job *job, cJSON *choice)
{
    cJSON *chunk = api_response_head(job, "chat.completion.chunk");
    cJSON *arr = cJSON_AddArrayToObject(chunk, "choices");
    cJSON_AddItemToArray(arr, choice);
    api_add_chunk_usage(job, chunk);
    sse_event(&job->out, cJSON_PrintUnformatted(chunk));
    cJSON_Delete(chunk);
}

/* How much of a choice's text may go out as content now (req->lock
 * held): all of it, or with a tool call parser what cannot still become
 * a call; once the choice has finished, *calls receives the calls of its
 * whole text (NULL: none). Never less than what was already sent. */
static size_t stream_ready(const struct api_job *job, const struct choice_output *c,
                           const struct stream_cursor *cur, cJSON **calls)
{
    *calls = NULL;
    if (job->opts.tool_parser == TOOL_PARSER_NONE || c->finish == FINISH_ERROR) return c->text.len;
    size_t ready = tool_calls_stream_text(job->opts.tool_parser, c->text.s, c->text.len,
                                          c->finish != FINISH_NONE, calls);
    return ready > cur->text_sent ? ready : cur->text_sent;
}

static bool stream_choice(struct api_job *job, int k)
{
    struct request *req = job->reqs[0];
    struct stream_cursor *cur = &job->cursors[k];
    if (cur->finish_sent) return true;
    if (!cur->started) {
        cJSON *ch = cJSON_CreateObject();
        cJSON_AddNumberToObject(ch, "index", k);
        cJSON *delta = cJSON_AddObjectToObject(ch, "delta");
        cJSON_AddStringToObject(delta, "role", "assistant");
        cJSON_AddStringToObject(delta, "content", "");
        cJSON_AddNullToObject(ch, "logprobs");
        cJSON_AddNullToObject(ch, "finish_reason");
        chunk_out(job, ch);
        cur->started = true;
    }
    cJSON *content_ch = NULL, *finish_ch = NULL, *calls = NULL;
    char errmsg[256] = "";
    pthread_mutex_lock(&req->lock);
    const struct choice_output *c = &req->choices[k];
    size_t ready = stream_ready(job, c, cur, &calls); /* text that may go out now */
    bool new_text = ready > cur->text_sent;
    bool new_tokens = job->opts.chat_logprobs && c->tokens.n > cur->tokens_sent;
    if (new_text || new_tokens) {
        content_ch = cJSON_CreateObject();
        cJSON_AddNumberToObject(content_ch, "index", k);
        cJSON *delta = cJSON_AddObjectToObject(content_ch, "delta");
        const char *from = c->text.s ? c->text.s + cur->text_sent : "";
        cJSON_AddItemToObject(delta, "content", js_create_string_n(from, ready - cur->text_sent));
        if (job->opts.chat_logprobs)
            cJSON_AddItemToObject(content_ch, "logprobs",
                                  chat_logprobs(job, c, cur->tokens_sent, c->tokens.n));
        else
            cJSON_AddNullToObject(content_ch, "logprobs");
        cJSON_AddNullToObject(content_ch, "finish_reason");
        cur->text_sent = ready;
        cur->tokens_sent = c->tokens.n;
    }
    if (c->finish != FINISH_NONE) {
        finish_ch = cJSON_CreateObject();
        cJSON_AddNumberToObject(finish_ch, "index", k);
        cJSON_AddObjectToObject(finish_ch, "delta");
        cJSON_AddNullToObject(finish_ch, "logprobs");
        api_add_finish(finish_ch, req, c);
        if (calls) set_finish_tool_calls(finish_ch);
        if (c->finish == FINISH_ERROR)
            snprintf(errmsg, sizeof(errmsg), "%s",
                     req->error_message[0] ? req->error_message : "engine failed");
        cur->finish_sent = true;
    }
    pthread_mutex_unlock(&req->lock);
    if (content_ch) chunk_out(job, content_ch);
    if (calls) chunk_out(job, tool_calls_stream_choice(k, calls));
    cJSON_Delete(calls);
    if (errmsg[0]) {
        struct api_error e;
        api_error_set(&e, 500, errmsg);
        sse_event(&job->out, api_error_json(&e));
    }
    if (finish_ch) chunk_out(job, finish_ch);
    return cur->finish_sent;
}

void api_chat_stream(struct api_job *job)
{
    bool all = true;
    for (int k = 0; k < job->opts.n; k++)
        if (!stream_choice(job, k)) all = false;
    if (all) api_stream_finish(job, "chat.completion.chunk");
}

/* ---------------------------------------------------------------- handler */

/* Bytes of message text (string contents and text parts): a lower bound
 * on the rendered prompt, known without rendering or tokenizing. */
static size_t messages_text_bytes(const cJSON *body)
{
    const cJSON *messages = cJSON_GetObjectItemCaseSensitive(body, "messages");
    size_t n = 0;
    if (!cJSON_IsArray(messages)) return 0;
    for (const cJSON *m = messages->child; m; m = m->next) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(m, "content");
        if (cJSON_IsString(c)) {
            n += strlen(c->valuestring);
        } else if (cJSON_IsArray(c)) {
            for (const cJSON *part = c->child; part; part = part->next) {
                const cJSON *t = cJSON_GetObjectItemCaseSensitive(part, "text");
                const cJSON *r = cJSON_GetObjectItemCaseSensitive(part, "refusal");
                if (cJSON_IsString(t)) n += strlen(t->valuestring);
                if (cJSON_IsString(r)) n += strlen(r->valuestring);
            }
        }
    }
    return n;
}

/* tool_choice: "none" and "auto" leave the model free (its tool calls
 * stay in the content, or with --enable-auto-tool-choice "auto" parses
 * them out: tool_calls.h); "required" or a named function would need
 * constrained decoding, which there is none of, so they are refused
 * rather than answered with free text (as response_format is, params.c),
 * with the flags or without. */
static bool tool_choice_ok(const cJSON *body, struct api_error *e)
{
    const cJSON *tc = cJSON_GetObjectItemCaseSensitive(body, "tool_choice");
    if (!tc || cJSON_IsNull(tc)) return true;
    if (cJSON_IsString(tc) &&
        (strcmp(tc->valuestring, "none") == 0 || strcmp(tc->valuestring, "auto") == 0))
        return true;
    if (cJSON_IsString(tc) || cJSON_IsObject(tc))
        return chat_bad(e, "'tool_choice': only \"none\" and \"auto\" are supported (with "
                           "--enable-auto-tool-choice, \"auto\" parses the model's tool "
                           "calls); \"required\" and named functions cannot be forced, as "
                           "there is no constrained decoding");
    return chat_bad(e, "'tool_choice' must be a string or an object");
}

int api_chat(struct http_conn *hc, const cJSON *body)
{
    struct api_server *srv = http_server(hc);
    struct api_error e = {0};
    struct request_params p;
    struct job_opts o;
    struct api_job *job = NULL;
    struct i32vec ids = {0};
    struct strbuf text = {0};
    request_params_defaults(&p);

    if (!params_parse_common(srv, body, true, &p, &o, &e)) goto fail;
    if (!tool_choice_ok(body, &e)) goto fail;
    o.tool_parser = tool_parser_for_request(srv->cfg.tool_call_parser, body);
    size_t text_bytes = messages_text_bytes(body);
    if (!params_text_may_fit(srv, text_bytes)) {
        char msg[200];
        snprintf(msg, sizeof(msg),
                 "'messages' hold %zu bytes of text, more than this model's maximum context "
                 "length of %d tokens can hold",
                 text_bytes, srv->max_model_len);
        api_error_set(&e, 400, msg);
        goto fail;
    }
    if (!api_chat_prompt(srv, body, false, &ids, &text, &e)) goto fail;
    if (p.max_tokens < 0) { /* not given: the rest of the context */
        p.max_tokens = srv->max_model_len - (int)ids.n;
        if (p.max_tokens < 1) p.max_tokens = 1; /* params_check_prompt reports it */
        if (p.min_tokens > p.max_tokens) {
            char msg[200];
            snprintf(msg, sizeof(msg),
                     "'min_tokens' (%d) is more than the %d tokens left in this model's "
                     "context after the prompt",
                     p.min_tokens, p.max_tokens);
            api_error_set(&e, 400, msg);
            goto fail;
        }
    }
    if (!params_check_prompt(srv, &ids, p.max_tokens, "messages", &e)) goto fail;

    job = job_create(srv, JOB_CHAT, 1);
    if (!job) {
        api_error_set(&e, 500, "out of memory");
        goto fail;
    }
    job->opts = o;
    if (o.stream) {
        job->cursors = calloc((size_t)o.n, sizeof(*job->cursors));
        if (!job->cursors) {
            api_error_set(&e, 500, "out of memory");
            goto fail;
        }
    }
    job->reqs[0] = req_create(ids.v, (int)ids.n, &p);
    if (!job->reqs[0]) {
        api_error_set(&e, 500, "out of memory");
        goto fail;
    }
    memset(&p, 0, sizeof(p)); /* its arrays belong to the request now */
    if (!job_submit(job, &e)) goto fail;
    iv_free(&ids);
    sb_free(&text);
    return http_run_job(hc, job);

fail:
    iv_free(&ids);
    sb_free(&text);
    request_params_free(&p);
    if (job) job_conn_done(job, false);
    return http_reply_error(hc, &e);
}
