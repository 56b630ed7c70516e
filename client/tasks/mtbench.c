/*
 * mtbench.c - the mtbench task: MT-Bench questions (FastChat question.jsonl)
 * answered turn by turn through /v1/chat/completions, then graded by a
 * judge model with FastChat's single-answer prompts.
 *
 * A question is one conversation: step k answers turn k (with the earlier
 * turns and answers in the messages), at the category's temperature as
 * FastChat sets it; the last step sends one judge request per turn (turn 1:
 * single-v1, or single-math-v1 with a reference for math/reasoning/coding;
 * turn 2: the multi-turn prompts). Scores come from "[[rating]]". At the end
 * the answers and judgments are written in FastChat's line formats under
 * OUT/mt_bench/. Owns its samples and the judge prompt set; never blocks.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "json.h"
#include "mtbench_prompts.h"
#include "task.h"

#define MT_NAME "mtbench"
#define MT_DEFAULT_MAX_TOKENS 1024
#define MT_JUDGE_MAX_TOKENS 2048
#define MT_MAX_JUDGED_TURNS 2

struct mt_task {
    struct task_env *env;
    struct task_item *items;
    size_t n;
    struct mtp_set prompts;
};

struct mt_sample {
    struct conv conv;
    struct mt_task *task;
    size_t index;
    char key[17];
    struct task_acct acct;
    const cJSON *item;
    int n_turns;
    char **answers;      /* [n_turns] */
    int answered_before; /* turns taken from an earlier run's record (0 or n_turns) */
    /* what the answer turns cost, taken when judging starts, so that a rerun
     * that only judges accounts the sample as one uninterrupted run would */
    int64_t answer_prompt_tokens, answer_completion_tokens;
    size_t answer_requests; /* the first entries of acct.latency */
    int n_judged;
    char *judgment[MT_MAX_JUDGED_TURNS];
    char *user_prompt[MT_MAX_JUDGED_TURNS];
    const char *prompt_name[MT_MAX_JUDGED_TURNS];
};

/* FastChat's temperature_config; other categories get 0.7 as there. */
static double category_temperature(const char *cat)
{
    static const struct {
        const char *name;
        double t;
    } table[] = {{"writing", 0.7}, {"roleplay", 0.7},   {"extraction", 0.0},
                 {"math", 0.0},    {"coding", 0.0},     {"reasoning", 0.0},
                 {"stem", 0.1},    {"humanities", 0.1}, {"arena-hard-200", 0.0}};
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
        if (strcmp(cat, table[i].name) == 0) return table[i].t;
    return 0.7;
}

static const char *str_field(const cJSON *o, const char *f)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, f);
    return cJSON_IsString(x) ? x->valuestring : "";
}

static const char *turn_text(const cJSON *arr, int i)
{
    const cJSON *x = cJSON_IsArray(arr) ? cJSON_GetArrayItem(arr, i) : NULL;
    return cJSON_IsString(x) ? x->valuestring : "";
}

static bool needs_reference(const cJSON *item)
{
    const char *cat = str_field(item, "category");
    bool ref_cat = strcmp(cat, "math") == 0 || strcmp(cat, "reasoning") == 0 ||
                   strcmp(cat, "coding") == 0 || strcmp(cat, "arena-hard-200") == 0;
    return ref_cat && cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(item, "reference"));
}

static void add_msg(cJSON *msgs, const char *role, const char *content)
{
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "role", role);
    cJSON_AddStringToObject(m, "content", content);
    cJSON_AddItemToArray(msgs, m);
}

static void send_answer_turn(struct mt_sample *s, int turn)
{
    struct task_env *env = s->task->env;
    const cJSON *turns = cJSON_GetObjectItemCaseSensitive(s->item, "turns");
    cJSON *body = cJSON_CreateObject();
    cJSON_AddStringToObject(body, "model", env->model);
    cJSON *msgs = cJSON_AddArrayToObject(body, "messages");
    for (int k = 0; k < turn; k++) {
        add_msg(msgs, "user", turn_text(turns, k));
        add_msg(msgs, "assistant", s->answers[k]);
    }
    add_msg(msgs, "user", turn_text(turns, turn));
    cJSON_AddNumberToObject(body, "temperature",
                            category_temperature(str_field(s->item, "category")));
    cJSON_AddNumberToObject(body, "max_tokens",
                            env->max_tokens > 0 ? env->max_tokens : MT_DEFAULT_MAX_TOKENS);
    task_send_json(&s->conv, &s->acct, turn, -1, "/v1/chat/completions", body, env->stream);
}

static void send_judge(struct mt_sample *s, int turn)
{
    struct task_env *env = s->task->env;
    const cJSON *turns = cJSON_GetObjectItemCaseSensitive(s->item, "turns");
    const cJSON *ref = cJSON_GetObjectItemCaseSensitive(s->item, "reference");
    bool math = needs_reference(s->item);
    enum mtp_kind kind =
        turn == 0 ? (math ? MTP_MATH : MTP_GENERAL) : (math ? MTP_MATH_MULTI : MTP_GENERAL_MULTI);
    const struct mtp_prompt *p = &s->task->prompts.p[kind];
    const char *names[] = {"question",   "answer",   "ref_answer_1", "question_1",
                           "question_2", "answer_1", "answer_2",     "ref_answer_2"};
    const char *values[] = {turn_text(turns, 0),
                            s->answers[0],
                            turn_text(ref, 0),
                            turn_text(turns, 0),
                            turn_text(turns, 1),
                            s->answers[0],
                            s->n_turns > 1 ? s->answers[1] : "",
                            turn_text(ref, 1)};
    struct strbuf user = {0};
    mtp_fill(p->prompt_template, names, values, 8, &user);
    s->user_prompt[turn] = sb_steal(&user);
    s->prompt_name[turn] = p->name;
    cJSON *body = cJSON_CreateObject();
    cJSON_AddStringToObject(body, "model", env->judge_model);
    cJSON *msgs = cJSON_AddArrayToObject(body, "messages");
    add_msg(msgs, "system", p->system_prompt);
    add_msg(msgs, "user", s->user_prompt[turn]);
    cJSON_AddNumberToObject(body, "temperature", 0);
    cJSON_AddNumberToObject(body, "max_tokens",
                            env->judge_max_tokens > 0 ? env->judge_max_tokens
                                                      : MT_JUDGE_MAX_TOKENS);
    task_send_json(&s->conv, &s->acct, MT_MAX_JUDGED_TURNS + turn, env->judge_server,
                   "/v1/chat/completions", body, false);
}

static bool mt_step(struct conv *c)
{
    struct mt_sample *s = c->ud;
    int step = c->step + s->answered_before;
    if (s->acct.failed) return false;
    if (step < s->n_turns) {
        send_answer_turn(s, step);
        return true;
    }
    if (step > s->n_turns || s->task->env->judge_server < 0) return false;
    s->answer_prompt_tokens = s->acct.prompt_tokens;
    s->answer_completion_tokens = s->acct.completion_tokens;
    s->answer_requests = s->acct.n_latency;
    s->n_judged = s->n_turns < MT_MAX_JUDGED_TURNS ? s->n_turns : MT_MAX_JUDGED_TURNS;
    for (int t = 0; t < s->n_judged; t++)
        send_judge(s, t);
    return true;
}

static void mt_reply(struct conv *c, int slot, struct hc_result *res)
{
    struct mt_sample *s = c->ud;
    const char *reply;
    if (!task_acct_add_reply(&s->acct, res, &reply)) return;
    char *text = strdup(reply);
    if (c->step + s->answered_before < s->n_turns)
        s->answers[slot] = text;
    else
        s->judgment[slot - MT_MAX_JUDGED_TURNS] = text;
}

static cJSON *answer_line(struct mt_sample *s)
{
    cJSON *a = cJSON_CreateObject();
    cJSON_AddItemToObject(
        a, "question_id",
        cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(s->item, "question_id"), 1));
    cJSON_AddStringToObject(a, "answer_id", s->key);
    cJSON_AddStringToObject(a, "model_id", s->task->env->model);
    cJSON *choices = cJSON_AddArrayToObject(a, "choices");
    cJSON *ch = cJSON_CreateObject();
    cJSON_AddNumberToObject(ch, "index", 0);
    cJSON *turns = cJSON_AddArrayToObject(ch, "turns");
    for (int t = 0; t < s->n_turns; t++)
        cJSON_AddItemToArray(turns, cJSON_CreateString(s->answers[t] ? s->answers[t] : ""));
    cJSON_AddItemToArray(choices, ch);
    cJSON_AddNumberToObject(a, "tstamp", (double)time(NULL));
    return a;
}

static void mt_finish(struct conv *c)
{
    struct mt_sample *s = c->ud;
    struct task_env *env = s->task->env;
    const cJSON *qid = cJSON_GetObjectItemCaseSensitive(s->item, "question_id");
    const char *cat = str_field(s->item, "category");
    cJSON *metrics = cJSON_CreateObject(), *data = cJSON_CreateObject();
    cJSON_AddStringToObject(data, "category", cat);
    bool answered = true;
    for (int t = 0; t < s->n_turns; t++)
        answered &= s->answers[t] != NULL;
    if (s->acct.failed && answered) { /* judging failed: the answers are kept for a rerun */
        cJSON_AddItemToObject(data, "answer", answer_line(s));
        cJSON *cost = cJSON_AddObjectToObject(data, "answer_cost");
        cJSON_AddNumberToObject(cost, "prompt_tokens", (double)s->answer_prompt_tokens);
        cJSON_AddNumberToObject(cost, "completion_tokens", (double)s->answer_completion_tokens);
        cJSON *lat = cJSON_AddArrayToObject(cost, "latency_s");
        for (size_t k = 0; k < s->answer_requests && k < s->acct.n_latency; k++)
            cJSON_AddItemToArray(lat, cJSON_CreateNumber(s->acct.latency[k]));
    }
    if (!s->acct.failed) {
        cJSON_AddItemToObject(data, "answer", answer_line(s));
        cJSON *js = cJSON_AddArrayToObject(data, "judgments");
        double sum = 0;
        int n_scored = 0;
        for (int t = 0; t < s->n_judged; t++) {
            double score = mtp_rating(s->judgment[t] ? s->judgment[t] : "");
            cJSON *j = cJSON_CreateObject();
            cJSON_AddItemToObject(j, "question_id", cJSON_Duplicate(qid, 1));
            cJSON_AddStringToObject(j, "model", env->model);
            cJSON *judge = cJSON_AddArrayToObject(j, "judge");
            cJSON_AddItemToArray(judge, cJSON_CreateString(env->judge_model));
            cJSON_AddItemToArray(judge, cJSON_CreateString(s->prompt_name[t]));
            cJSON_AddStringToObject(j, "user_prompt", s->user_prompt[t]);
            cJSON_AddStringToObject(j, "judgment", s->judgment[t] ? s->judgment[t] : "");
            cJSON_AddNumberToObject(j, "score", score);
            cJSON_AddNumberToObject(j, "turn", t + 1);
            cJSON_AddNumberToObject(j, "tstamp", (double)time(NULL));
            cJSON_AddItemToArray(js, j);
            if (score < 0) continue; /* FastChat drops unparsed ratings (-1) */
            char name[64];
            snprintf(name, sizeof(name), "score_turn%d", t + 1);
            cJSON_AddNumberToObject(metrics, name, score);
            sum += score;
            n_scored++;
        }
        if (n_scored > 0) {
            char name[96];
            cJSON_AddNumberToObject(metrics, "score", sum / n_scored);
            snprintf(name, sizeof(name), "score/%s", cat);
            cJSON_AddNumberToObject(metrics, name, sum / n_scored);
        }
    }
    task_commit(env, MT_NAME, s->key, s->index, qid, &s->acct, metrics, data);
    for (int t = 0; t < s->n_turns; t++)
        free(s->answers[t]);
    free(s->answers);
    for (int t = 0; t < MT_MAX_JUDGED_TURNS; t++) {
        free(s->judgment[t]);
        free(s->user_prompt[t]);
    }
    free(s);
}

static const struct conv_ops mt_ops = {mt_step, mt_reply, mt_finish};

/* Takes the answers of s's record from an earlier run whose judging failed
 * (an error record that kept every turn's answer), so only judging is redone. */
static void reuse_answers(struct mt_sample *s, cJSON **recs, size_t n_recs)
{
    for (size_t r = 0; r < n_recs; r++) {
        const cJSON *key = cJSON_GetObjectItemCaseSensitive(recs[r], "key");
        if (!cJSON_IsString(key) || strcmp(key->valuestring, s->key) != 0) continue;
        const cJSON *data = cJSON_GetObjectItemCaseSensitive(recs[r], "data");
        const cJSON *ans = cJSON_GetObjectItemCaseSensitive(data, "answer");
        const cJSON *choices = cJSON_GetObjectItemCaseSensitive(ans, "choices");
        const cJSON *turns =
            cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(choices, 0), "turns");
        if (!cJSON_IsArray(turns) || cJSON_GetArraySize(turns) != s->n_turns) return;
        for (int t = 0; t < s->n_turns; t++)
            if (!cJSON_IsString(cJSON_GetArrayItem(turns, t))) return;
        for (int t = 0; t < s->n_turns; t++)
            s->answers[t] = strdup(cJSON_GetArrayItem(turns, t)->valuestring);
        s->answered_before = s->n_turns;
        const cJSON *cost = cJSON_GetObjectItemCaseSensitive(data, "answer_cost");
        const cJSON *pt = cJSON_GetObjectItemCaseSensitive(cost, "prompt_tokens");
        const cJSON *ct = cJSON_GetObjectItemCaseSensitive(cost, "completion_tokens");
        const cJSON *lat = cJSON_GetObjectItemCaseSensitive(cost, "latency_s"), *l;
        if (cJSON_IsNumber(pt)) s->acct.prompt_tokens = (int64_t)pt->valuedouble;
        if (cJSON_IsNumber(ct)) s->acct.completion_tokens = (int64_t)ct->valuedouble;
        size_t n_lat = (size_t)cJSON_GetArraySize(lat);
        s->acct.latency = n_lat ? calloc(n_lat, sizeof(double)) : NULL;
        cJSON_ArrayForEach(l, lat) if (s->acct.latency && cJSON_IsNumber(l))
            s->acct.latency[s->acct.n_latency++] = l->valuedouble;
        return;
    }
}

static enum es_status mt_start(struct task_env *env, const char *path, void **state,
                               struct res_task_info *info, struct es_err *err)
{
    struct mt_task *t = calloc(1, sizeof(*t));
    if (!t) return es_fail(err, ES_ENOMEM, "out of memory");
    t->env = env;
    enum es_status st = mtp_load(env->judge_prompts, &t->prompts, err);
    if (st == ES_OK) st = task_load_jsonl(path, env->limit, &t->items, &t->n, err);
    if (st != ES_OK) {
        mtp_free(&t->prompts);
        free(t);
        return st;
    }
    for (size_t i = 0; i < t->n && st == ES_OK; i++) {
        const cJSON *turns = cJSON_GetObjectItemCaseSensitive(t->items[i].json, "turns");
        const cJSON *turn;
        if (!js_has(t->items[i].json, "question_id") || !cJSON_IsArray(turns) ||
            cJSON_GetArraySize(turns) < 1) {
            st = es_fail(err, ES_EFORMAT, "%s:%ld: needs 'question_id' and 'turns'", path,
                         t->items[i].line);
            break;
        }
        bool strings = true;
        cJSON_ArrayForEach(turn, turns) strings &= cJSON_IsString(turn);
        if (!strings)
            st =
                es_fail(err, ES_EFORMAT, "%s:%ld: 'turns' must be strings", path, t->items[i].line);
    }
    if (st != ES_OK) {
        task_free_items(t->items, t->n);
        mtp_free(&t->prompts);
        free(t);
        return st;
    }
    *state = t;
    info->total = t->n;
    struct strbuf desc = {0};
    char extra[600], keyed[660];
    snprintf(extra, sizeof(extra), "judge=%s;prompts=%s",
             env->judge_server >= 0 ? env->judge_model : "",
             env->judge_server >= 0 ? t->prompts.p[0].prompt_template : "");
    /* the judge's cap changes the judgment; named only when not the default,
     * so that logs written before it was part of the key still resume */
    if (env->judge_server >= 0 && env->judge_max_tokens > 0 &&
        env->judge_max_tokens != MT_JUDGE_MAX_TOKENS)
        snprintf(keyed, sizeof(keyed), "judge_max_tokens=%d;%s", env->judge_max_tokens, extra);
    else
        snprintf(keyed, sizeof(keyed), "%s", extra);
    task_request_desc(env, keyed, &desc);
    char(*keys)[17] = calloc(t->n ? t->n : 1, sizeof(*keys));
    bool *done = calloc(t->n ? t->n : 1, sizeof(*done));
    cJSON **recs = NULL;
    size_t n_recs = 0;
    st = keys && done ? ES_OK : es_fail(err, ES_ENOMEM, "out of memory");
    for (size_t i = 0; i < t->n && st == ES_OK; i++) {
        res_key(MT_NAME, t->items[i].canon, sb_cstr(&desc), keys[i]);
        if (res_select(env->log, keys[i], &done[i]) != ES_OK)
            st = es_fail(err, ES_ENOMEM, "out of memory");
        if (done[i]) info->resumed++;
    }
    sb_free(&desc);
    /* a question whose judging failed in an earlier run keeps its answers */
    if (st == ES_OK && env->judge_server >= 0 && info->resumed < t->n)
        st = res_load_task(env->log, MT_NAME, &recs, &n_recs, err);
    for (size_t i = 0; i < t->n && st == ES_OK; i++) {
        if (done[i]) continue;
        struct mt_sample *s = calloc(1, sizeof(*s));
        if (!s) {
            st = es_fail(err, ES_ENOMEM, "out of memory");
            break;
        }
        s->task = t;
        s->index = i;
        s->item = t->items[i].json;
        s->n_turns = cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(s->item, "turns"));
        s->answers = calloc((size_t)s->n_turns, sizeof(char *));
        memcpy(s->key, keys[i], sizeof(keys[i]));
        reuse_answers(s, recs, n_recs);
        s->conv.ops = &mt_ops;
        s->conv.ud = s;
        conv_start(env->sched, &s->conv, -1);
    }
    res_free_records(recs, n_recs);
    free(keys);
    free(done);
    return st;
}

static int cmp_qid(const void *a, const void *b)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(*(cJSON *const *)a, "id");
    const cJSON *y = cJSON_GetObjectItemCaseSensitive(*(cJSON *const *)b, "id");
    double dx = cJSON_IsNumber(x) ? x->valuedouble : 0, dy = cJSON_IsNumber(y) ? y->valuedouble : 0;
    return (dx > dy) - (dx < dy);
}

static void safe_name(const char *in, char *out, size_t n)
{
    size_t k = 0;
    for (; in[k] && k + 1 < n; k++)
        out[k] = (in[k] == '/' || in[k] == ' ') ? '_' : in[k];
    out[k] = '\0';
}

/* Writes FastChat's model_answer and model_judgment files from the log. */
static enum es_status write_fastchat_files(struct task_env *env, struct es_err *err)
{
    cJSON **recs = NULL;
    size_t n = 0;
    enum es_status st = res_load_task(env->log, MT_NAME, &recs, &n, err);
    if (st != ES_OK) return st;
    if (n) qsort(recs, n, sizeof(*recs), cmp_qid);
    char model[256], judge[256];
    safe_name(env->model, model, sizeof(model));
    safe_name(env->judge_model ? env->judge_model : "judge", judge, sizeof(judge));
    struct strbuf dir = {0}, pa = {0}, pj = {0};
    sb_printf(&dir, "%s/mt_bench", res_dir(env->log));
    mkdir(sb_cstr(&dir), 0777);
    sb_printf(&pa, "%s/model_answer", sb_cstr(&dir));
    mkdir(sb_cstr(&pa), 0777);
    sb_printf(&pa, "/%s.jsonl", model);
    sb_printf(&pj, "%s/model_judgment", sb_cstr(&dir));
    mkdir(sb_cstr(&pj), 0777);
    sb_printf(&pj, "/%s_single.jsonl", judge);
    FILE *fa = fopen(sb_cstr(&pa), "w");
    FILE *fj = env->judge_server >= 0 ? fopen(sb_cstr(&pj), "w") : NULL;
    if (!fa || (env->judge_server >= 0 && !fj))
        st = es_fail(err, ES_EIO, "cannot write mt_bench files");
    for (size_t i = 0; st == ES_OK && i < n; i++) {
        const cJSON *data = cJSON_GetObjectItemCaseSensitive(recs[i], "data");
        const cJSON *ans = cJSON_GetObjectItemCaseSensitive(data, "answer");
        if (!ans || strcmp(str_field(ans, "model_id"), env->model) != 0 ||
            strcmp(str_field(recs[i], "status"), "ok") != 0) /* an error keeps its answers */
            continue;
        char *line = cJSON_PrintUnformatted(ans);
        if (line) fprintf(fa, "%s\n", line);
        free(line);
        const cJSON *j;
        cJSON_ArrayForEach(j, cJSON_GetObjectItemCaseSensitive(data, "judgments"))
        {
            if (!fj) break;
            line = cJSON_PrintUnformatted(j);
            if (line) fprintf(fj, "%s\n", line);
            free(line);
        }
    }
    if (fa) fclose(fa);
    if (fj) fclose(fj);
    sb_free(&dir);
    sb_free(&pa);
    sb_free(&pj);
    res_free_records(recs, n);
    return st;
}

static enum es_status mt_end(struct task_env *env, void *state, struct es_err *err)
{
    struct mt_task *t = state;
    enum es_status st = env->discard ? ES_OK : write_fastchat_files(env, err);
    task_free_items(t->items, t->n);
    mtp_free(&t->prompts);
    free(t);
    return st;
}

const struct task_kind task_mtbench = {MT_NAME, "mtbench.jsonl", mt_start, mt_end};
