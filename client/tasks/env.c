/*
 * env.c - the env task: conversations whose next user message comes from an
 * environment program (agentic or self-correcting loops).
 *
 * --env CMD starts ONE program (sh -c CMD) that speaks JSON lines. For each
 * sample (JSONL data, any object; its "id" names the episode, else its line
 * index) the client writes
 *   {"id", "sample": <data line>, "conversation": [messages], "reply": text|null}
 * and the program answers, in any order, {"id", "message": "next user
 * message"} or {"id", "done": true, "reward": R}. Many episodes are in
 * flight, each at its own turn: even steps wait for the program, odd steps
 * ask the model. Owns the child process and its pipes; never blocks on the
 * program: its stdout is polled by the HTTP loop, and lines for its stdin
 * wait in a buffer that is written as the pipe takes them (a program that
 * answers while the client is still writing would otherwise fill both pipes
 * and deadlock with it).
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "json.h"
#include "task.h"

#define EV_NAME "env"
#define EV_MAX_TURNS 64
#define EV_DEFAULT_MAX_TOKENS 512

struct ev_sample;

struct ev_task {
    struct task_env *env;
    struct task_item *items;
    size_t n;
    struct ev_sample **live; /* [n] samples waiting for the program, by index */
    pid_t pid;
    int to_env;           /* program's stdin, non-blocking */
    int from_env;         /* program's stdout, non-blocking */
    struct strbuf inbuf;  /* partial line from the program */
    struct strbuf outbuf; /* lines not yet taken by the program's stdin */
    size_t out_off;       /* bytes of outbuf already written */
    bool dead;            /* the program's stdout closed */
    bool write_failed;    /* its stdin closed: nothing more can be asked */
};

struct ev_sample {
    struct conv conv;
    struct ev_task *task;
    size_t index;
    char key[17];
    struct task_acct acct;
    cJSON *id;           /* wire id */
    cJSON *conversation; /* [messages] */
    char *next_message;  /* from the program, NULL when done */
    bool done;
    double reward;
    int turns;
};

static void ev_fail_live(struct ev_task *t, const char *why)
{
    for (size_t i = 0; i < t->n; i++) {
        struct ev_sample *s = t->live[i];
        if (!s) continue;
        t->live[i] = NULL;
        task_acct_fail(&s->acct, "%s", why);
        conv_release(&s->conv);
    }
}

static void ev_handle_line(struct ev_task *t, const char *line, size_t len)
{
    cJSON *j = js_parse(line, len, 0, NULL);
    const cJSON *id = j ? cJSON_GetObjectItemCaseSensitive(j, "id") : NULL;
    struct ev_sample *s = NULL;
    for (size_t i = 0; id && i < t->n && !s; i++)
        if (t->live[i] && cJSON_Compare(t->live[i]->id, id, true)) s = t->live[i];
    if (!s) {
        fprintf(stderr, "evalclient: env: ignoring a line for no waiting episode: %.200s\n", line);
        cJSON_Delete(j);
        return;
    }
    t->live[s->index] = NULL;
    const cJSON *msg = cJSON_GetObjectItemCaseSensitive(j, "message");
    const cJSON *done = cJSON_GetObjectItemCaseSensitive(j, "done");
    if (cJSON_IsTrue(done)) {
        s->done = true;
        const cJSON *r = cJSON_GetObjectItemCaseSensitive(j, "reward");
        s->reward = cJSON_IsNumber(r) ? r->valuedouble : 0;
    } else if (cJSON_IsString(msg)) {
        s->next_message = strdup(msg->valuestring);
    } else {
        task_acct_fail(&s->acct, "env answered neither 'message' nor 'done'");
    }
    cJSON_Delete(j);
    conv_release(&s->conv);
}

static void ev_readable(void *ud)
{
    struct ev_task *t = ud;
    char buf[65536];
    for (;;) {
        ssize_t n = read(t->from_env, buf, sizeof(buf));
        if (n > 0) {
            sb_append(&t->inbuf, buf, (size_t)n);
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n == 0) {
            t->dead = true;
            hc_watch_fd(t->env->hc, -1, NULL, NULL);
            hc_watch_write_fd(t->env->hc, -1, NULL, NULL);
        }
        break;
    }
    size_t start = 0;
    for (size_t i = 0; i < t->inbuf.len; i++) {
        if (t->inbuf.s[i] != '\n') continue;
        if (i > start) ev_handle_line(t, t->inbuf.s + start, i - start);
        start = i + 1;
    }
    if (start > 0) {
        size_t rest = t->inbuf.len - start;
        memmove(t->inbuf.s, t->inbuf.s + start, rest);
        t->inbuf.len = rest;
        t->inbuf.s[rest] = '\0';
    }
    if (t->dead) ev_fail_live(t, "environment program exited");
}

static void ev_fail_waiting(void *ud)
{
    ev_fail_live(ud, "cannot write to the environment program");
}

static void ev_writable(void *ud);

/* Writes what the program's stdin takes now; the rest waits for the HTTP
 * loop to find the pipe writable. A failed write (the program closed its
 * stdin) fails every waiting episode from a timer, outside any step. */
static void ev_flush(struct ev_task *t)
{
    while (t->out_off < t->outbuf.len && !t->write_failed) {
        ssize_t w = write(t->to_env, t->outbuf.s + t->out_off, t->outbuf.len - t->out_off);
        if (w > 0) {
            t->out_off += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            hc_watch_write_fd(t->env->hc, t->to_env, ev_writable, t);
            return;
        }
        t->write_failed = true;
        hc_timer(t->env->hc, 0, ev_fail_waiting, t);
    }
    sb_clear(&t->outbuf);
    t->out_off = 0;
    hc_watch_write_fd(t->env->hc, -1, NULL, NULL);
}

static void ev_writable(void *ud)
{
    ev_flush(ud);
}

/* Queues the episode's state for the program and holds the step open until
 * the answer comes. Returns false (nothing held) when the program can no
 * longer be asked. */
static bool ask_env(struct ev_sample *s, const char *reply)
{
    struct ev_task *t = s->task;
    cJSON *m = cJSON_CreateObject();
    cJSON_AddItemToObject(m, "id", cJSON_Duplicate(s->id, true));
    cJSON_AddItemToObject(m, "sample", cJSON_Duplicate(t->items[s->index].json, true));
    cJSON_AddItemToObject(m, "conversation", cJSON_Duplicate(s->conversation, true));
    cJSON_AddItemToObject(m, "reply", reply ? cJSON_CreateString(reply) : cJSON_CreateNull());
    char *line = cJSON_PrintUnformatted(m);
    cJSON_Delete(m);
    bool ok = line && !t->dead && !t->write_failed && sb_puts(&t->outbuf, line) == ES_OK &&
              sb_putc(&t->outbuf, '\n') == ES_OK;
    free(line);
    if (!ok) {
        task_acct_fail(&s->acct, "cannot write to the environment program");
        return false;
    }
    /* the answer is only read inside hc_run, so holding after the write is safe */
    conv_hold(&s->conv);
    t->live[s->index] = s;
    ev_flush(t);
    return true;
}

static const char *last_reply(const struct ev_sample *s)
{
    int n = cJSON_GetArraySize(s->conversation);
    if (n == 0) return NULL;
    const cJSON *m = cJSON_GetArrayItem(s->conversation, n - 1);
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(m, "content");
    return cJSON_IsString(c) ? c->valuestring : NULL;
}

static void add_msg(cJSON *msgs, const char *role, const char *content)
{
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "role", role);
    cJSON_AddStringToObject(m, "content", content);
    cJSON_AddItemToArray(msgs, m);
}

static bool ev_step(struct conv *c)
{
    struct ev_sample *s = c->ud;
    if (s->acct.failed || s->done) return false;
    if (c->step % 2 == 0) {
        return ask_env(s, last_reply(s));
    }
    if (s->turns >= EV_MAX_TURNS) {
        task_acct_fail(&s->acct, "episode exceeded %d turns", EV_MAX_TURNS);
        return false;
    }
    add_msg(s->conversation, "user", s->next_message ? s->next_message : "");
    free(s->next_message);
    s->next_message = NULL;
    struct task_env *env = s->task->env;
    cJSON *body = cJSON_CreateObject();
    cJSON_AddStringToObject(body, "model", env->model);
    cJSON_AddItemToObject(body, "messages", cJSON_Duplicate(s->conversation, true));
    cJSON_AddNumberToObject(body, "temperature", 0);
    cJSON_AddNumberToObject(body, "max_tokens",
                            env->max_tokens > 0 ? env->max_tokens : EV_DEFAULT_MAX_TOKENS);
    task_send_json(c, &s->acct, 0, -1, "/v1/chat/completions", body, env->stream);
    return true;
}

static void ev_reply(struct conv *c, int slot, struct hc_result *res)
{
    struct ev_sample *s = c->ud;
    const char *text;
    if (!task_acct_add_reply(&s->acct, res, &text)) return;
    add_msg(s->conversation, "assistant", text);
    s->turns++;
}

static void ev_finish(struct conv *c)
{
    struct ev_sample *s = c->ud;
    cJSON *metrics = cJSON_CreateObject(), *data = cJSON_CreateObject();
    cJSON_AddNumberToObject(metrics, "reward", s->reward);
    cJSON_AddNumberToObject(metrics, "turns", s->turns);
    cJSON_AddItemToObject(data, "conversation", s->conversation);
    cJSON_AddNumberToObject(data, "reward", s->reward);
    task_commit(s->task->env, EV_NAME, s->key, s->index, s->id, &s->acct, metrics, data);
    cJSON_Delete(s->id);
    free(s->next_message);
    free(s);
}

static const struct conv_ops ev_ops = {ev_step, ev_reply, ev_finish};

static enum es_status spawn(struct ev_task *t, const char *cmd, struct es_err *err)
{
    int in[2], out[2];
    if (pipe2(in, O_CLOEXEC) != 0) return es_fail(err, ES_EIO, "pipe: %s", strerror(errno));
    if (pipe2(out, O_CLOEXEC) != 0) {
        close(in[0]);
        close(in[1]);
        return es_fail(err, ES_EIO, "pipe: %s", strerror(errno));
    }
    pid_t pid = fork();
    if (pid < 0) return es_fail(err, ES_EIO, "fork: %s", strerror(errno));
    if (pid == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    t->pid = pid;
    t->to_env = in[1];
    t->from_env = out[0];
    fcntl(t->from_env, F_SETFL, fcntl(t->from_env, F_GETFL) | O_NONBLOCK);
    fcntl(t->to_env, F_SETFL, fcntl(t->to_env, F_GETFL) | O_NONBLOCK);
    return ES_OK;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Episode ids route the program's answers, so each must be a string or a
 * number and no two episodes (an episode without one is its line index)
 * may share one. */
static enum es_status check_ids(const struct ev_task *t, const char *path, struct es_err *err)
{
    char **ids = calloc(t->n ? t->n : 1, sizeof(*ids));
    if (!ids) return es_fail(err, ES_ENOMEM, "out of memory");
    enum es_status st = ES_OK;
    for (size_t i = 0; i < t->n && st == ES_OK; i++) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(t->items[i].json, "id");
        cJSON *num = id ? NULL : cJSON_CreateNumber((double)i);
        if (id && !cJSON_IsString(id) && !cJSON_IsNumber(id))
            st = es_fail(err, ES_EFORMAT, "%s:%ld: 'id' must be a string or a number", path,
                         t->items[i].line);
        else if (!(ids[i] = cJSON_PrintUnformatted(id ? id : num)))
            st = es_fail(err, ES_ENOMEM, "out of memory");
        cJSON_Delete(num);
    }
    if (st == ES_OK && t->n > 1) {
        qsort(ids, t->n, sizeof(*ids), cmp_str);
        for (size_t i = 1; i < t->n && st == ES_OK; i++)
            if (strcmp(ids[i - 1], ids[i]) == 0)
                st = es_fail(err, ES_EFORMAT, "%s: two episodes have the id %s", path, ids[i]);
    }
    for (size_t i = 0; i < t->n; i++)
        free(ids[i]);
    free(ids);
    return st;
}

static enum es_status ev_start(struct task_env *env, const char *path, void **state,
                               struct res_task_info *info, struct es_err *err)
{
    if (!env->env_cmd) return es_fail(err, ES_EINVAL, "the env task needs --env CMD");
    struct ev_task *t = calloc(1, sizeof(*t));
    if (!t) return es_fail(err, ES_ENOMEM, "out of memory");
    t->env = env;
    t->to_env = t->from_env = -1;
    enum es_status st = task_load_jsonl(path, env->limit, &t->items, &t->n, err);
    if (st != ES_OK) {
        free(t);
        return st;
    }
    t->live = calloc(t->n ? t->n : 1, sizeof(*t->live));
    st = t->live ? check_ids(t, path, err) : es_fail(err, ES_ENOMEM, "out of memory");
    if (st == ES_OK) st = spawn(t, env->env_cmd, err);
    if (st != ES_OK) {
        task_free_items(t->items, t->n);
        free(t->live);
        free(t);
        return st;
    }
    hc_watch_fd(env->hc, t->from_env, ev_readable, t);
    *state = t;
    info->total = t->n;
    struct strbuf desc = {0};
    task_request_desc(env, env->env_cmd, &desc);
    for (size_t i = 0; i < t->n; i++) {
        char key[17];
        res_key(EV_NAME, t->items[i].canon, sb_cstr(&desc), key);
        bool done = false;
        if (res_select(env->log, key, &done) != ES_OK) {
            sb_free(&desc);
            return es_fail(err, ES_ENOMEM, "out of memory");
        }
        if (done) {
            info->resumed++;
            continue;
        }
        struct ev_sample *s = calloc(1, sizeof(*s));
        if (!s) {
            sb_free(&desc);
            return es_fail(err, ES_ENOMEM, "out of memory");
        }
        s->task = t;
        s->index = i;
        memcpy(s->key, key, sizeof(key));
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(t->items[i].json, "id");
        s->id = id ? cJSON_Duplicate(id, true) : cJSON_CreateNumber((double)i);
        s->conversation = cJSON_CreateArray();
        s->conv.ops = &ev_ops;
        s->conv.ud = s;
        conv_start(env->sched, &s->conv, -1);
    }
    sb_free(&desc);
    return ES_OK;
}

static enum es_status ev_end(struct task_env *env, void *state, struct es_err *err)
{
    struct ev_task *t = state;
    hc_watch_fd(env->hc, -1, NULL, NULL);
    hc_watch_write_fd(env->hc, -1, NULL, NULL);
    if (t->to_env >= 0) close(t->to_env); /* EOF tells the program to exit */
    if (t->from_env >= 0) close(t->from_env);
    if (t->pid > 0) {
        /* give the program 5 s to exit on EOF, then ask it with SIGTERM */
        int waited_ms = 0;
        while (waitpid(t->pid, NULL, WNOHANG) == 0) {
            if (waited_ms >= 5000) {
                kill(t->pid, SIGTERM);
                waitpid(t->pid, NULL, 0);
                break;
            }
            usleep(10000);
            waited_ms += 10;
        }
    }
    sb_free(&t->inbuf);
    sb_free(&t->outbuf);
    task_free_items(t->items, t->n);
    free(t->live);
    free(t);
    return ES_OK;
}

const struct task_kind task_envloop = {EV_NAME, NULL, ev_start, ev_end};
