/*
 * task.c - helpers every task kind shares: JSONL loading, per-sample
 * accounting of requests, the sample record, and reply text extraction.
 *
 * Owns nothing beyond the call; never talks to the network itself.
 */
#include "task.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "json.h"

int task_commit_errors;

struct canon_ref {
    uint64_t hash;
    size_t index;
};

static int cmp_canon_ref(const void *a, const void *b)
{
    const struct canon_ref *x = a, *y = b;
    if (x->hash != y->hash) return x->hash < y->hash ? -1 : 1;
    return (x->index > y->index) - (x->index < y->index);
}

/* A data line that repeats an earlier one verbatim is a distinct sample:
 * its canonical text (hence its key) gets "\x1e#k", k = its occurrence. */
static enum es_status number_duplicates(struct task_item *v, size_t n, struct es_err *err)
{
    if (n < 2) return ES_OK;
    struct canon_ref *refs = malloc(n * sizeof(*refs));
    if (!refs) return es_fail(err, ES_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        uint64_t h = 0xcbf29ce484222325ULL;
        for (const char *p = v[i].canon ? v[i].canon : ""; *p; p++)
            h = (h ^ (unsigned char)*p) * 0x100000001b3ULL;
        refs[i] = (struct canon_ref){h, i};
    }
    qsort(refs, n, sizeof(*refs), cmp_canon_ref);
    size_t *occurrence = calloc(n, sizeof(*occurrence)); /* by item index */
    if (!occurrence) {
        free(refs);
        return es_fail(err, ES_ENOMEM, "out of memory");
    }
    for (size_t g = 0; g < n;) {
        size_t end = g + 1;
        while (end < n && refs[end].hash == refs[g].hash)
            end++;
        for (size_t j = g + 1; j < end; j++)
            for (size_t i = g; i < j; i++)
                occurrence[refs[j].index] +=
                    strcmp(v[refs[i].index].canon, v[refs[j].index].canon) == 0;
        g = end;
    }
    enum es_status st = ES_OK;
    for (size_t i = 0; i < n && st == ES_OK; i++) {
        if (!occurrence[i]) continue;
        struct strbuf sb = {0};
        if (sb_printf(&sb, "%s\x1e#%zu", v[i].canon, occurrence[i]) != ES_OK) {
            st = es_fail(err, ES_ENOMEM, "out of memory");
            break;
        }
        free(v[i].canon);
        v[i].canon = sb_steal(&sb);
    }
    free(occurrence);
    free(refs);
    return st;
}

enum es_status task_load_jsonl(const char *path, long limit, struct task_item **items, size_t *n,
                               struct es_err *err)
{
    FILE *f = fopen(path, "r");
    if (!f) return es_fail(err, ES_ENOTFOUND, "%s: %s", path, strerror(errno));
    struct task_item *v = NULL;
    size_t cnt = 0, cap = 0;
    char *line = NULL;
    size_t lcap = 0;
    ssize_t len;
    long lineno = 0;
    enum es_status st = ES_OK;
    while ((len = getline(&line, &lcap, f)) > 0 && (limit < 0 || (long)cnt < limit)) {
        lineno++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        size_t k = 0;
        while (k < (size_t)len && (line[k] == ' ' || line[k] == '\t'))
            k++;
        if (k == (size_t)len) continue;
        struct es_err jerr = {{0}};
        cJSON *j = js_parse(line, (size_t)len, 0, &jerr);
        if (!j || !cJSON_IsObject(j)) {
            cJSON_Delete(j);
            st = es_fail(err, ES_EFORMAT, "%s:%ld: %s", path, lineno,
                         jerr.msg[0] ? jerr.msg : "not a JSON object");
            break;
        }
        if (cnt == cap) {
            cap = cap ? cap * 2 : 64;
            struct task_item *nv = realloc(v, cap * sizeof(*nv));
            if (!nv) {
                cJSON_Delete(j);
                st = es_fail(err, ES_ENOMEM, "out of memory");
                break;
            }
            v = nv;
        }
        v[cnt].json = j;
        v[cnt].line = lineno;
        v[cnt].canon = cJSON_PrintUnformatted(j);
        cnt++;
        if (!v[cnt - 1].canon) {
            st = es_fail(err, ES_ENOMEM, "out of memory");
            break;
        }
    }
    free(line);
    fclose(f);
    if (st == ES_OK) st = number_duplicates(v, cnt, err);
    if (st != ES_OK) {
        task_free_items(v, cnt);
        return st;
    }
    *items = v;
    *n = cnt;
    return ES_OK;
}

void task_free_items(struct task_item *items, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        cJSON_Delete(items[i].json);
        free(items[i].canon);
    }
    free(items);
}

void task_acct_fail(struct task_acct *a, const char *fmt, ...)
{
    if (a->failed) return;
    a->failed = true;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(a->error, sizeof(a->error), fmt, ap);
    va_end(ap);
}

bool task_acct_add(struct task_acct *a, const struct hc_result *res)
{
    double *l = realloc(a->latency, (a->n_latency + 1) * sizeof(*l));
    if (l) {
        a->latency = l;
        a->latency[a->n_latency++] = res->t_end - res->t_start;
    }
    if (res->prompt_tokens > 0) a->prompt_tokens += res->prompt_tokens;
    if (res->completion_tokens > 0) a->completion_tokens += res->completion_tokens;
    if (res->fingerprint[0])
        snprintf(a->fingerprint, sizeof(a->fingerprint), "%s", res->fingerprint);
    if (res->st != ES_OK) {
        task_acct_fail(a, "%s (after %d attempts)", res->error, res->attempts);
        return false;
    }
    return true;
}

void task_acct_free(struct task_acct *a)
{
    free(a->latency);
    a->latency = NULL;
    a->n_latency = 0;
}

void task_commit(struct task_env *env, const char *task, const char *key, size_t index,
                 const cJSON *id, struct task_acct *a, cJSON *metrics, cJSON *data)
{
    if (env->discard) { /* never sent: nothing to record */
        cJSON_Delete(metrics);
        cJSON_Delete(data);
        task_acct_free(a);
        return;
    }
    cJSON *rec = cJSON_CreateObject();
    cJSON_AddStringToObject(rec, "key", key);
    cJSON_AddStringToObject(rec, "task", task);
    cJSON_AddNumberToObject(rec, "index", (double)index);
    cJSON_AddItemToObject(rec, "id", id ? cJSON_Duplicate(id, true) : cJSON_CreateNull());
    cJSON_AddStringToObject(rec, "status", a->failed ? "error" : "ok");
    if (a->failed) {
        cJSON_AddStringToObject(rec, "error", a->error);
        cJSON_Delete(metrics);
        metrics = NULL;
    }
    cJSON_AddItemToObject(rec, "metrics", metrics ? metrics : cJSON_CreateObject());
    cJSON_AddNumberToObject(rec, "prompt_tokens", (double)a->prompt_tokens);
    cJSON_AddNumberToObject(rec, "completion_tokens", (double)a->completion_tokens);
    cJSON *lat = cJSON_AddArrayToObject(rec, "latency_s");
    for (size_t i = 0; i < a->n_latency; i++)
        cJSON_AddItemToArray(lat, cJSON_CreateNumber(a->latency[i]));
    cJSON_AddStringToObject(rec, "fingerprint", a->fingerprint);
    cJSON_AddNumberToObject(rec, "tstamp", (double)time(NULL));
    cJSON_AddItemToObject(rec, "data", data ? data : cJSON_CreateObject());
    struct es_err err = {{0}};
    if (res_append(env->log, rec, &err) != ES_OK) {
        fprintf(stderr, "evalclient: %s\n", err.msg);
        task_commit_errors++;
    }
    cJSON_Delete(rec);
    prog_sample(env->prog, a->failed, a->completion_tokens);
    task_acct_free(a);
}

const char *task_reply_text(const struct hc_result *res)
{
    if (res->text.len) return sb_cstr(&res->text);
    const cJSON *choices = cJSON_GetObjectItemCaseSensitive(res->json, "choices");
    const cJSON *c0 = cJSON_IsArray(choices) ? cJSON_GetArrayItem(choices, 0) : NULL;
    if (!c0) return "";
    const cJSON *msg = cJSON_GetObjectItemCaseSensitive(c0, "message");
    const cJSON *t = msg ? cJSON_GetObjectItemCaseSensitive(msg, "content")
                         : cJSON_GetObjectItemCaseSensitive(c0, "text");
    return cJSON_IsString(t) ? t->valuestring : "";
}

bool task_acct_add_reply(struct task_acct *a, const struct hc_result *res, const char **text)
{
    if (!task_acct_add(a, res)) return false;
    *text = task_reply_text(res);
    if (res->json) {
        const cJSON *choices = cJSON_GetObjectItemCaseSensitive(res->json, "choices");
        const cJSON *c0 = cJSON_IsArray(choices) ? cJSON_GetArrayItem(choices, 0) : NULL;
        const cJSON *msg = cJSON_GetObjectItemCaseSensitive(c0, "message");
        const cJSON *t = msg ? cJSON_GetObjectItemCaseSensitive(msg, "content")
                             : cJSON_GetObjectItemCaseSensitive(c0, "text");
        /* null content is a real (empty) reply, e.g. one that only called a tool */
        if (!cJSON_IsString(t) && !(msg && cJSON_IsNull(t))) {
            task_acct_fail(a, "HTTP %ld reply without choices[0] text: %.200s", res->http_status,
                           sb_cstr(&res->body));
            return false;
        }
    }
    return true;
}

void task_send_json(struct conv *c, struct task_acct *a, int slot, int server, const char *path,
                    cJSON *body, bool stream)
{
    if (stream) {
        cJSON_AddBoolToObject(body, "stream", true);
        cJSON *so = cJSON_AddObjectToObject(body, "stream_options");
        cJSON_AddBoolToObject(so, "include_usage", true);
    }
    char *s = cJSON_PrintUnformatted(body);
    cJSON_Delete(body);
    if (!s || conv_send(c, slot, server, path, s, stream) != ES_OK)
        task_acct_fail(a, "could not submit a request (out of memory)");
    free(s);
}

void task_request_desc(const struct task_env *env, const char *extra, struct strbuf *out)
{
    sb_clear(out);
    sb_printf(out, "model=%s;max_tokens=%d;%s", env->model, env->max_tokens, extra ? extra : "");
}
