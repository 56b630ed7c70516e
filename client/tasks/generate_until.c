/*
 * generate_until.c - the generate_until task: one completion per sample,
 * stopped at the sample's stop strings, scored by exact_match of the answer
 * the sample's regex extracts against its target.
 *
 * Data: JSONL {"id", "prompt", "target", "stop": [...], "regex"}, checked
 * on load ("stop" may be one string, "target" a number). The regex
 * (PCRE2) is applied to the generated text; its first capture group (or the
 * whole match when it has none) is the answer; no match scores 0. Without a
 * regex the whole output is the answer. Both sides are compared with
 * surrounding whitespace trimmed. Owns its samples; never blocks.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "task.h"

#define GU_NAME "generate_until"
#define GU_DEFAULT_MAX_TOKENS 256

struct gu_task {
    struct task_env *env;
    struct task_item *items;
    size_t n;
};

struct gu_sample {
    struct conv conv;
    struct gu_task *task;
    size_t index;
    char key[17];
    struct task_acct acct;
    char *output;
};

static void trim(const char *s, size_t n, const char **out, size_t *out_n)
{
    while (n > 0 && (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')) {
        s++;
        n--;
    }
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' || s[n - 1] == '\r'))
        n--;
    *out = s;
    *out_n = n;
}

/* Extracts the answer into *ans (malloc'd); returns false when the regex
 * does not match (or does not compile, reported in err_msg). */
static bool extract(const char *regex, const char *text, char **ans, char *err_msg, size_t n_err)
{
    if (!regex || !*regex) {
        *ans = strdup(text);
        return true;
    }
    int ec;
    PCRE2_SIZE eoff;
    pcre2_code *re =
        pcre2_compile((PCRE2_SPTR)regex, PCRE2_ZERO_TERMINATED, PCRE2_UTF, &ec, &eoff, NULL);
    if (!re) {
        PCRE2_UCHAR buf[128];
        pcre2_get_error_message(ec, buf, sizeof(buf));
        snprintf(err_msg, n_err, "bad regex at %zu: %s", (size_t)eoff, (char *)buf);
        return false;
    }
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    bool ok = false;
    int rc = pcre2_match(re, (PCRE2_SPTR)text, strlen(text), 0, 0, md, NULL);
    if (rc > 0) {
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        int g = rc > 1 ? 1 : 0;
        if (ov[2 * g] != PCRE2_UNSET) {
            size_t len = ov[2 * g + 1] - ov[2 * g];
            *ans = malloc(len + 1);
            if (*ans) {
                memcpy(*ans, text + ov[2 * g], len);
                (*ans)[len] = '\0';
                ok = true;
            }
        }
    }
    pcre2_match_data_free(md);
    pcre2_code_free(re);
    return ok;
}

static bool gu_step(struct conv *c)
{
    struct gu_sample *s = c->ud;
    if (c->step > 0) return false;
    struct task_env *env = s->task->env;
    const cJSON *item = s->task->items[s->index].json;
    const cJSON *prompt = cJSON_GetObjectItemCaseSensitive(item, "prompt");
    const cJSON *stop = cJSON_GetObjectItemCaseSensitive(item, "stop");
    cJSON *body = cJSON_CreateObject();
    cJSON_AddStringToObject(body, "model", env->model);
    cJSON_AddStringToObject(body, "prompt", cJSON_IsString(prompt) ? prompt->valuestring : "");
    cJSON_AddNumberToObject(body, "max_tokens",
                            env->max_tokens > 0 ? env->max_tokens : GU_DEFAULT_MAX_TOKENS);
    cJSON_AddNumberToObject(body, "temperature", 0);
    if (cJSON_IsString(stop)) { /* the API's other form: one stop string */
        cJSON *one = cJSON_AddArrayToObject(body, "stop");
        cJSON_AddItemToArray(one, cJSON_CreateString(stop->valuestring));
    } else if (cJSON_IsArray(stop) && cJSON_GetArraySize(stop) > 0) {
        cJSON_AddItemToObject(body, "stop", cJSON_Duplicate(stop, true));
    }
    task_send_json(c, &s->acct, 0, -1, "/v1/completions", body, env->stream);
    return true;
}

static void gu_reply(struct conv *c, int slot, struct hc_result *res)
{
    struct gu_sample *s = c->ud;
    const char *text;
    if (task_acct_add_reply(&s->acct, res, &text)) s->output = strdup(text);
}

static void gu_finish(struct conv *c)
{
    struct gu_sample *s = c->ud;
    const cJSON *item = s->task->items[s->index].json;
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(item, "id");
    cJSON *metrics = NULL, *data = cJSON_CreateObject();
    if (!s->acct.failed && s->output) {
        const cJSON *target = cJSON_GetObjectItemCaseSensitive(item, "target");
        const cJSON *regex = cJSON_GetObjectItemCaseSensitive(item, "regex");
        char *ans = NULL;
        char rerr[160] = "";
        bool matched = extract(cJSON_IsString(regex) ? regex->valuestring : NULL, s->output, &ans,
                               rerr, sizeof(rerr));
        if (rerr[0]) task_acct_fail(&s->acct, "%s", rerr);
        const char *a = "", *t = "";
        size_t an = 0, tn = 0;
        /* a numeric target (GSM8K-style data) is compared as JSON writes it */
        char *target_num = cJSON_IsNumber(target) ? cJSON_PrintUnformatted(target) : NULL;
        if (matched) trim(ans, strlen(ans), &a, &an);
        if (cJSON_IsString(target)) trim(target->valuestring, strlen(target->valuestring), &t, &tn);
        if (target_num) trim(target_num, strlen(target_num), &t, &tn);
        bool em = matched && an == tn && memcmp(a, t, an) == 0;
        metrics = cJSON_CreateObject();
        cJSON_AddNumberToObject(metrics, "exact_match", em ? 1 : 0);
        cJSON_AddStringToObject(data, "output", s->output);
        if (matched) {
            char *ex = strndup(a, an);
            cJSON_AddStringToObject(data, "extracted", ex ? ex : "");
            free(ex);
        } else {
            cJSON_AddNullToObject(data, "extracted");
        }
        free(ans);
        free(target_num);
    }
    task_commit(s->task->env, GU_NAME, s->key, s->index, id, &s->acct, metrics, data);
    free(s->output);
    free(s);
}

static const struct conv_ops gu_ops = {gu_step, gu_reply, gu_finish};

/* Checks an item's fields before anything is sent: a wrong type would
 * otherwise be ignored (a string "stop") or fail every request alike. */
static enum es_status validate(const struct task_item *it, const char *path, struct es_err *err)
{
    const cJSON *prompt = cJSON_GetObjectItemCaseSensitive(it->json, "prompt");
    const cJSON *target = cJSON_GetObjectItemCaseSensitive(it->json, "target");
    const cJSON *stop = cJSON_GetObjectItemCaseSensitive(it->json, "stop");
    const cJSON *regex = cJSON_GetObjectItemCaseSensitive(it->json, "regex");
    if (!cJSON_IsString(prompt))
        return es_fail(err, ES_EFORMAT, "%s:%ld: needs a string 'prompt'", path, it->line);
    if (target && !cJSON_IsNull(target) && !cJSON_IsString(target) && !cJSON_IsNumber(target))
        return es_fail(err, ES_EFORMAT, "%s:%ld: 'target' must be a string or a number", path,
                       it->line);
    bool stop_ok = !stop || cJSON_IsNull(stop) || cJSON_IsString(stop) || cJSON_IsArray(stop);
    const cJSON *s;
    if (cJSON_IsArray(stop)) cJSON_ArrayForEach(s, stop) stop_ok &= cJSON_IsString(s);
    if (!stop_ok)
        return es_fail(err, ES_EFORMAT, "%s:%ld: 'stop' must be a string or a list of strings",
                       path, it->line);
    if (regex && !cJSON_IsNull(regex) && !cJSON_IsString(regex))
        return es_fail(err, ES_EFORMAT, "%s:%ld: 'regex' must be a string", path, it->line);
    if (cJSON_IsString(regex) && regex->valuestring[0]) {
        int ec;
        PCRE2_SIZE eoff;
        pcre2_code *re = pcre2_compile((PCRE2_SPTR)regex->valuestring, PCRE2_ZERO_TERMINATED,
                                       PCRE2_UTF, &ec, &eoff, NULL);
        if (!re) {
            PCRE2_UCHAR buf[128];
            pcre2_get_error_message(ec, buf, sizeof(buf));
            return es_fail(err, ES_EFORMAT, "%s:%ld: bad 'regex' at offset %zu: %s", path, it->line,
                           (size_t)eoff, (char *)buf);
        }
        pcre2_code_free(re);
    }
    return ES_OK;
}

static enum es_status gu_start(struct task_env *env, const char *path, void **state,
                               struct res_task_info *info, struct es_err *err)
{
    struct gu_task *t = calloc(1, sizeof(*t));
    if (!t) return es_fail(err, ES_ENOMEM, "out of memory");
    t->env = env;
    enum es_status st = task_load_jsonl(path, env->limit, &t->items, &t->n, err);
    if (st != ES_OK) {
        free(t);
        return st;
    }
    for (size_t i = 0; i < t->n && st == ES_OK; i++)
        st = validate(&t->items[i], path, err);
    if (st != ES_OK) {
        task_free_items(t->items, t->n);
        free(t);
        return st;
    }
    *state = t;
    info->total = t->n;
    struct strbuf desc = {0};
    task_request_desc(env, "temperature=0", &desc);
    for (size_t i = 0; i < t->n; i++) {
        char key[17];
        res_key(GU_NAME, t->items[i].canon, sb_cstr(&desc), key);
        bool done = false;
        if (res_select(env->log, key, &done) != ES_OK) {
            sb_free(&desc);
            return es_fail(err, ES_ENOMEM, "out of memory");
        }
        if (done) {
            info->resumed++;
            continue;
        }
        struct gu_sample *s = calloc(1, sizeof(*s));
        if (!s) {
            sb_free(&desc);
            return es_fail(err, ES_ENOMEM, "out of memory");
        }
        s->task = t;
        s->index = i;
        memcpy(s->key, key, sizeof(key));
        s->conv.ops = &gu_ops;
        s->conv.ud = s;
        conv_start(env->sched, &s->conv, -1);
    }
    sb_free(&desc);
    return ES_OK;
}

static enum es_status gu_end(struct task_env *env, void *state, struct es_err *err)
{
    struct gu_task *t = state;
    task_free_items(t->items, t->n);
    free(t);
    return ES_OK;
}

const struct task_kind task_generate_until = {GU_NAME, "generate_until.jsonl", gu_start, gu_end};
