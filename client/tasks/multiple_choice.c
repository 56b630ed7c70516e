/*
 * multiple_choice.c - the multiple_choice task: loglikelihood of each
 * choice as a continuation of the context, like lm-evaluation-harness.
 *
 * Data: JSONL {"id", "context", "choices": [...], "gold": index}.
 * Step 0 tokenizes the context and each context+choice through the
 * server's POST /tokenize {"prompt"} -> {"tokens"} (vLLM's shape); trailing
 * whitespace of the context moves to the continuation first, as lm-eval does.
 * The continuation is whole[len(context tokens):], so the boundary is
 * token-exact. Step 1 sends each whole token-id prompt to /v1/completions
 * with echo, logprobs 1, max_tokens 1 and sums the continuation's prompt
 * logprobs. acc = argmax loglikelihood; acc_norm = argmax loglikelihood per
 * character of the choice (lm-eval divides by len(choice)). Owns its
 * samples; never blocks.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "task.h"

#define MC_NAME "multiple_choice"

struct mc_task {
    struct task_env *env;
    struct task_item *items;
    size_t n;
};

struct mc_sample {
    struct conv conv;
    struct mc_task *task;
    size_t index;
    char key[17];
    struct task_acct acct;
    int n_choices;
    char *context;       /* context with trailing spaces removed */
    char **continuation; /* [n_choices] moved spaces + choice text */
    struct i32vec ctx_tokens;
    struct i32vec *whole; /* [n_choices] tokens of context + continuation */
    double *loglik;       /* [n_choices] */
};

static bool parse_tokens(const struct hc_result *res, struct i32vec *out)
{
    const cJSON *toks = cJSON_GetObjectItemCaseSensitive(res->json, "tokens");
    if (!cJSON_IsArray(toks)) return false;
    const cJSON *t;
    cJSON_ArrayForEach(t, toks)
    {
        if (!cJSON_IsNumber(t) || iv_push(out, (int32_t)t->valuedouble) != ES_OK) return false;
    }
    return true;
}

static void send_tokenize(struct mc_sample *s, int slot, const char *a, const char *b)
{
    struct strbuf text = {0};
    sb_puts(&text, a);
    if (b) sb_puts(&text, b);
    cJSON *body = cJSON_CreateObject();
    cJSON_AddStringToObject(body, "model", s->task->env->model);
    cJSON_AddStringToObject(body, "prompt", sb_cstr(&text));
    sb_free(&text);
    task_send_json(&s->conv, &s->acct, slot, -1, "/tokenize", body, false);
}

static bool mc_step(struct conv *c)
{
    struct mc_sample *s = c->ud;
    if (s->acct.failed || c->step > 1) return false;
    if (c->step == 0) {
        send_tokenize(s, -1, s->context, NULL);
        for (int i = 0; i < s->n_choices; i++)
            send_tokenize(s, i, s->context, s->continuation[i]);
        return true;
    }
    for (int i = 0; i < s->n_choices; i++) { /* check all before sending any */
        if (s->whole[i].n <= s->ctx_tokens.n) {
            task_acct_fail(&s->acct, "choice %d adds no token to the context", i);
            return false;
        }
    }
    for (int i = 0; i < s->n_choices; i++) {
        cJSON *body = cJSON_CreateObject();
        cJSON_AddStringToObject(body, "model", s->task->env->model);
        cJSON *p = cJSON_AddArrayToObject(body, "prompt");
        for (size_t k = 0; k < s->whole[i].n; k++)
            cJSON_AddItemToArray(p, cJSON_CreateNumber(s->whole[i].v[k]));
        cJSON_AddBoolToObject(body, "echo", true);
        cJSON_AddNumberToObject(body, "logprobs", 1);
        cJSON_AddNumberToObject(body, "max_tokens", 1);
        cJSON_AddNumberToObject(body, "temperature", 0);
        task_send_json(c, &s->acct, i, -1, "/v1/completions", body, false);
    }
    return true;
}

/* Sums token_logprobs[from, to) of an echoed completion. */
static bool sum_logprobs(const struct hc_result *res, size_t from, size_t to, double *out)
{
    const cJSON *choices = cJSON_GetObjectItemCaseSensitive(res->json, "choices");
    const cJSON *c0 = cJSON_IsArray(choices) ? cJSON_GetArrayItem(choices, 0) : NULL;
    const cJSON *lp = c0 ? cJSON_GetObjectItemCaseSensitive(c0, "logprobs") : NULL;
    const cJSON *tl = lp ? cJSON_GetObjectItemCaseSensitive(lp, "token_logprobs") : NULL;
    if (!cJSON_IsArray(tl) || (size_t)cJSON_GetArraySize(tl) < to) return false;
    double sum = 0;
    for (size_t k = from; k < to; k++) {
        const cJSON *x = cJSON_GetArrayItem(tl, (int)k);
        if (!cJSON_IsNumber(x)) return false;
        sum += x->valuedouble;
    }
    *out = sum;
    return true;
}

static void mc_reply(struct conv *c, int slot, struct hc_result *res)
{
    struct mc_sample *s = c->ud;
    if (!task_acct_add(&s->acct, res)) return;
    if (c->step == 0) {
        struct i32vec *dst = slot < 0 ? &s->ctx_tokens : &s->whole[slot];
        if (!parse_tokens(res, dst)) task_acct_fail(&s->acct, "/tokenize reply has no 'tokens'");
        return;
    }
    if (!sum_logprobs(res, s->ctx_tokens.n, s->whole[slot].n, &s->loglik[slot]))
        task_acct_fail(&s->acct, "completion reply lacks echoed prompt logprobs");
}

/* Characters (code points) of s, which lm-eval's len() counts for acc_norm. */
static size_t utf8_chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80) n++;
    return n;
}

static const char *choice_text(const cJSON *item, int i)
{
    return cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(item, "choices"), i)->valuestring;
}

static void mc_free(struct mc_sample *s)
{
    for (int i = 0; i < s->n_choices; i++) {
        free(s->continuation[i]);
        iv_free(&s->whole[i]);
    }
    free(s->continuation);
    free(s->whole);
    free(s->loglik);
    free(s->context);
    iv_free(&s->ctx_tokens);
    free(s);
}

static void mc_finish(struct conv *c)
{
    struct mc_sample *s = c->ud;
    const cJSON *item = s->task->items[s->index].json;
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(item, "id");
    int64_t gold = 0;
    js_get_int(item, "gold", true, 0, s->n_choices - 1, &gold, NULL);
    cJSON *metrics = NULL, *data = cJSON_CreateObject();
    if (!s->acct.failed) {
        int pred = 0, pred_norm = 0;
        double best = -INFINITY, best_norm = -INFINITY;
        cJSON *ll = cJSON_AddArrayToObject(data, "loglikelihoods");
        for (int i = 0; i < s->n_choices; i++) {
            size_t chars = utf8_chars(choice_text(item, i));
            double norm = s->loglik[i] / (double)(chars ? chars : 1);
            if (s->loglik[i] > best) best = s->loglik[i], pred = i;
            if (norm > best_norm) best_norm = norm, pred_norm = i;
            cJSON_AddItemToArray(ll, cJSON_CreateNumber(s->loglik[i]));
        }
        cJSON_AddNumberToObject(data, "pred", pred);
        cJSON_AddNumberToObject(data, "pred_norm", pred_norm);
        cJSON_AddNumberToObject(data, "gold", (double)gold);
        cJSON_AddNumberToObject(data, "context_tokens", (double)s->ctx_tokens.n);
        metrics = cJSON_CreateObject();
        cJSON_AddNumberToObject(metrics, "acc", pred == gold ? 1 : 0);
        cJSON_AddNumberToObject(metrics, "acc_norm", pred_norm == gold ? 1 : 0);
    }
    task_commit(s->task->env, MC_NAME, s->key, s->index, id, &s->acct, metrics, data);
    mc_free(s);
}

static const struct conv_ops mc_ops = {mc_step, mc_reply, mc_finish};

static enum es_status validate(const cJSON *item, long line, const char *path, struct es_err *err)
{
    const cJSON *ctx = cJSON_GetObjectItemCaseSensitive(item, "context");
    const cJSON *choices = cJSON_GetObjectItemCaseSensitive(item, "choices");
    if (!cJSON_IsString(ctx) || !cJSON_IsArray(choices) || cJSON_GetArraySize(choices) < 1)
        return es_fail(err, ES_EFORMAT, "%s:%ld: needs 'context' and 'choices'", path, line);
    const cJSON *ch;
    cJSON_ArrayForEach(ch, choices) if (!cJSON_IsString(ch)) return es_fail(
        err, ES_EFORMAT, "%s:%ld: choices must be strings", path, line);
    int64_t gold;
    if (js_get_int(item, "gold", true, 0, cJSON_GetArraySize(choices) - 1, &gold, err) != ES_OK)
        return es_wrap(err, ES_EFORMAT, "%s:%ld: ", path, line);
    return ES_OK;
}

static struct mc_sample *mc_new(struct mc_task *t, size_t i)
{
    const cJSON *item = t->items[i].json;
    const char *ctx = cJSON_GetObjectItemCaseSensitive(item, "context")->valuestring;
    const cJSON *choices = cJSON_GetObjectItemCaseSensitive(item, "choices");
    struct mc_sample *s = calloc(1, sizeof(*s));
    if (!s) return NULL;
    s->task = t;
    s->index = i;
    s->n_choices = cJSON_GetArraySize(choices);
    s->continuation = calloc((size_t)s->n_choices, sizeof(char *));
    s->whole = calloc((size_t)s->n_choices, sizeof(struct i32vec));
    s->loglik = calloc((size_t)s->n_choices, sizeof(double));
    size_t clen = strlen(ctx), keep = clen;
    while (keep > 0 && strchr(" \t\n\r\f\v", ctx[keep - 1]))
        keep--; /* lm-eval moves trailing whitespace to the choice */
    s->context = strndup(ctx, keep);
    if (!s->continuation || !s->whole || !s->loglik || !s->context) {
        s->n_choices = 0;
        mc_free(s);
        return NULL;
    }
    for (int k = 0; k < s->n_choices; k++) {
        struct strbuf cont = {0};
        sb_append(&cont, ctx + keep, clen - keep);
        sb_puts(&cont, cJSON_GetArrayItem(choices, k)->valuestring);
        s->continuation[k] = sb_steal(&cont);
    }
    return s;
}

static enum es_status mc_start(struct task_env *env, const char *path, void **state,
                               struct res_task_info *info, struct es_err *err)
{
    struct mc_task *t = calloc(1, sizeof(*t));
    if (!t) return es_fail(err, ES_ENOMEM, "out of memory");
    t->env = env;
    enum es_status st = task_load_jsonl(path, env->limit, &t->items, &t->n, err);
    if (st != ES_OK) {
        free(t);
        return st;
    }
    for (size_t i = 0; i < t->n && st == ES_OK; i++)
        st = validate(t->items[i].json, t->items[i].line, path, err);
    if (st != ES_OK) {
        task_free_items(t->items, t->n);
        free(t);
        return st;
    }
    *state = t;
    info->total = t->n;
    struct strbuf desc = {0};
    task_request_desc(env, "loglikelihood", &desc);
    for (size_t i = 0; i < t->n; i++) {
        char key[17];
        res_key(MC_NAME, t->items[i].canon, sb_cstr(&desc), key);
        bool done = false;
        if (res_select(env->log, key, &done) != ES_OK) {
            sb_free(&desc);
            return es_fail(err, ES_ENOMEM, "out of memory");
        }
        if (done) {
            info->resumed++;
            continue;
        }
        struct mc_sample *s = mc_new(t, i);
        if (!s) {
            sb_free(&desc);
            return es_fail(err, ES_ENOMEM, "out of memory");
        }
        memcpy(s->key, key, sizeof(key));
        s->conv.ops = &mc_ops;
        s->conv.ud = s;
        conv_start(env->sched, &s->conv, -1);
    }
    sb_free(&desc);
    return ES_OK;
}

static enum es_status mc_end(struct task_env *env, void *state, struct es_err *err)
{
    struct mc_task *t = state;
    task_free_items(t->items, t->n);
    free(t);
    return ES_OK;
}

const struct task_kind task_multiple_choice = {MC_NAME, "multiple_choice.jsonl", mc_start, mc_end};
