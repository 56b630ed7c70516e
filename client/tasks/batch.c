/*
 * batch.c - the batch task: raw request bodies in, one result line per
 * request out, in input order.
 *
 * Data: JSONL, each line a request body for /v1/completions (or, when it
 * has "messages", /v1/chat/completions). "model" defaults to --model;
 * "stream" is removed (the reply is kept whole). Output OUT/batch.jsonl:
 * {"request", "result", "error", "timing": {"latency_s", "attempts",
 * "http_status"}} per input line, written at the end from the samples log,
 * so a resumed run writes the same file. Owns its samples; never blocks.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "task.h"

#define BT_NAME "batch"

struct bt_task {
    struct task_env *env;
    struct task_item *items;
    size_t n;
};

struct bt_sample {
    struct conv conv;
    struct bt_task *task;
    size_t index;
    char key[17];
    struct task_acct acct;
    cJSON *request;
    cJSON *result;
    double latency;
    int attempts;
    long http_status;
};

static bool bt_step(struct conv *c)
{
    struct bt_sample *s = c->ud;
    if (c->step > 0) return false;
    const char *path = cJSON_GetObjectItemCaseSensitive(s->request, "messages")
                           ? "/v1/chat/completions"
                           : "/v1/completions";
    char *body = cJSON_PrintUnformatted(s->request);
    if (!body || conv_send(c, 0, -1, path, body, false) != ES_OK) {
        task_acct_fail(&s->acct, "could not submit the request");
        free(body);
        return false;
    }
    free(body);
    return true;
}

static void bt_reply(struct conv *c, int slot, struct hc_result *res)
{
    struct bt_sample *s = c->ud;
    s->latency = res->t_end - res->t_start;
    s->attempts = res->attempts;
    s->http_status = res->http_status;
    if (task_acct_add(&s->acct, res)) {
        s->result = res->json; /* take ownership */
        res->json = NULL;
    }
}

static void bt_finish(struct conv *c)
{
    struct bt_sample *s = c->ud;
    cJSON *data = cJSON_CreateObject();
    cJSON_AddItemToObject(data, "request", s->request);
    cJSON_AddItemToObject(data, "result", s->result ? s->result : cJSON_CreateNull());
    cJSON *timing = cJSON_AddObjectToObject(data, "timing");
    cJSON_AddNumberToObject(timing, "latency_s", s->latency);
    cJSON_AddNumberToObject(timing, "attempts", s->attempts);
    cJSON_AddNumberToObject(timing, "http_status", (double)s->http_status);
    cJSON *id = cJSON_CreateNumber((double)s->index);
    task_commit(s->task->env, BT_NAME, s->key, s->index, id, &s->acct, cJSON_CreateObject(), data);
    cJSON_Delete(id);
    free(s);
}

static const struct conv_ops bt_ops = {bt_step, bt_reply, bt_finish};

static enum es_status bt_start(struct task_env *env, const char *path, void **state,
                               struct res_task_info *info, struct es_err *err)
{
    struct bt_task *t = calloc(1, sizeof(*t));
    if (!t) return es_fail(err, ES_ENOMEM, "out of memory");
    t->env = env;
    enum es_status st = task_load_jsonl(path, env->limit, &t->items, &t->n, err);
    if (st != ES_OK) {
        free(t);
        return st;
    }
    *state = t;
    info->total = t->n;
    for (size_t i = 0; i < t->n; i++) {
        char key[17], idx[320];
        snprintf(idx, sizeof(idx), "line=%zu;model=%s", i, env->model);
        res_key(BT_NAME, t->items[i].canon, idx, key);
        bool done = false;
        if (res_select(env->log, key, &done) != ES_OK) {
            return es_fail(err, ES_ENOMEM, "out of memory");
        }
        if (done) {
            info->resumed++;
            continue;
        }
        struct bt_sample *s = calloc(1, sizeof(*s));
        if (!s) return es_fail(err, ES_ENOMEM, "out of memory");
        s->task = t;
        s->index = i;
        memcpy(s->key, key, sizeof(key));
        s->request = cJSON_Duplicate(t->items[i].json, true);
        cJSON_DeleteItemFromObjectCaseSensitive(s->request, "stream");
        cJSON_DeleteItemFromObjectCaseSensitive(s->request, "stream_options");
        if (!cJSON_GetObjectItemCaseSensitive(s->request, "model"))
            cJSON_AddStringToObject(s->request, "model", env->model);
        s->conv.ops = &bt_ops;
        s->conv.ud = s;
        conv_start(env->sched, &s->conv, -1);
    }
    return ES_OK;
}

static int cmp_index(const void *a, const void *b)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(*(cJSON *const *)a, "index");
    const cJSON *y = cJSON_GetObjectItemCaseSensitive(*(cJSON *const *)b, "index");
    double dx = cJSON_IsNumber(x) ? x->valuedouble : 0, dy = cJSON_IsNumber(y) ? y->valuedouble : 0;
    return (dx > dy) - (dx < dy);
}

static enum es_status bt_end(struct task_env *env, void *state, struct es_err *err)
{
    struct bt_task *t = state;
    cJSON **recs = NULL;
    size_t n = 0;
    enum es_status st = ES_OK;
    if (!env->discard) st = res_load_task(env->log, BT_NAME, &recs, &n, err);
    if (st == ES_OK && !env->discard) {
        if (n) qsort(recs, n, sizeof(*recs), cmp_index);
        struct strbuf p = {0};
        sb_printf(&p, "%s/batch.jsonl", res_dir(env->log));
        FILE *f = fopen(sb_cstr(&p), "w");
        if (!f) st = es_fail(err, ES_EIO, "cannot write %s", sb_cstr(&p));
        for (size_t i = 0; f && i < n; i++) {
            /* only lines of this run's input: a key names line, content and model */
            const cJSON *idx = cJSON_GetObjectItemCaseSensitive(recs[i], "index");
            const cJSON *key = cJSON_GetObjectItemCaseSensitive(recs[i], "key");
            size_t k = cJSON_IsNumber(idx) ? (size_t)idx->valuedouble : (size_t)-1;
            if (k >= t->n) continue;
            char want[17], tag[320];
            snprintf(tag, sizeof(tag), "line=%zu;model=%s", k, env->model);
            res_key(BT_NAME, t->items[k].canon, tag, want);
            if (strcmp(want, key->valuestring) != 0) continue;
            cJSON *data = cJSON_GetObjectItemCaseSensitive(recs[i], "data");
            const cJSON *e = cJSON_GetObjectItemCaseSensitive(recs[i], "error");
            cJSON_AddItemToObject(data, "error", e ? cJSON_Duplicate(e, true) : cJSON_CreateNull());
            char *line = cJSON_PrintUnformatted(data);
            if (line) fprintf(f, "%s\n", line);
            free(line);
        }
        if (f) fclose(f);
        sb_free(&p);
        res_free_records(recs, n);
    }
    task_free_items(t->items, t->n);
    free(t);
    return st;
}

const struct task_kind task_batch = {BT_NAME, "batch.jsonl", bt_start, bt_end};
