/*
 * main.c - evalclient's command line: parses options, wires the HTTP
 * client, the conversation scheduler, the samples log and the tasks
 * together, runs the loop and prints the summary. `evalclient bench ...`
 * goes to bench.c.
 *
 * Owns the process: the only file that calls exit codes into being. Exit
 * status: 0 all samples ok, 1 some samples failed (recorded as errors),
 * 2 bad usage or a setup error (bad data file, unreachable output folder).
 */
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "bench.h"
#include "cli.h"
#include "conversation.h"
#include "http_client.h"
#include "model_name.h"
#include "progress.h"
#include "results.h"
#include "task.h"

#define MAX_URLS 64
#define MAX_TASKS 16

static const struct task_kind *const all_tasks[] = {
    &task_mtbench, &task_multiple_choice, &task_generate_until, &task_batch, &task_envloop};

static void usage(FILE *f)
{
    fputs("usage: evalclient --tasks T[,T...] --url URL [--url URL2 ...] [--model NAME]\n"
          "                  [--out DIR] [--data TASK=FILE ...] [options]\n"
          "       evalclient bench --url URL [--model NAME] --workload W1|W2|W3|W4 [options]\n"
          "                  (evalclient bench --help lists them)\n"
          "\n"
          "Runs evaluation tasks against OpenAI-compatible servers, many conversations in\n"
          "flight, each advancing turn by turn as its replies arrive.\n"
          "\n"
          "tasks: mtbench, multiple_choice, generate_until, batch, env (docs/CLIENT.md)\n"
          "  --tasks LIST          comma-separated task kinds to run (together)\n"
          "  --url URL             server base URL (http://host:port); repeat to spread\n"
          "                        conversations over servers (each stays on one)\n"
          "  --model NAME          model name sent in every request (default: the one\n"
          "                        model the first --url lists under /v1/models)\n"
          "  --task-file FILE      TASK=FILE lines (relative to FILE's folder); adds the\n"
          "                        data, and the tasks when --tasks is not given\n"
          "  --data TASK=FILE      data file of a task; may be left out for tasks with\n"
          "                        shipped example data (mtbench, multiple_choice,\n"
          "                        generate_until, batch)\n"
          "  --out DIR             output folder: samples.jsonl (append-only log; a rerun\n"
          "                        with the same DIR resumes), results.json, task files\n"
          "                        (default: evalclient-results/MODEL)\n"
          "  --judge-url URL       judge server for mtbench (default: first --url when\n"
          "                        --judge-model is given)\n"
          "  --judge-model NAME    judge model for mtbench; without judge options mtbench\n"
          "                        only writes answers\n"
          "  --judge-prompts FILE  FastChat judge_prompts.jsonl (default: built-in prompts)\n"
          "  --judge-max-tokens N  judge generation cap (default 2048, as FastChat)\n"
          "  --env CMD             environment program for the env task (sh -c CMD)\n"
          "  --max-inflight N      requests in flight at once (default 256)\n"
          "  --limit N             only the first N samples of each task\n"
          "  --max-tokens N        generation cap (task defaults: mtbench 1024,\n"
          "                        generate_until 256, env 512)\n"
          "  --api-key KEY         sent as 'Authorization: Bearer KEY' (default: $OPENAI_API_KEY)\n"
          "  --timeout S           per-request timeout in seconds (default 600)\n"
          "  --retries N           retries on connection errors, 429 and 5xx (default 3)\n"
          "  --backoff S           first retry delay in seconds, doubled per retry, with\n"
          "                        jitter (default 0.5)\n"
          "  --sync-turns          barrier between turns (for comparison; default off)\n"
          "  --stream              stream generations (SSE)\n"
          "  --help                this text\n"
          "\n"
          "exit status: 0 all samples ok; 1 some samples failed (recorded as errors);\n"
          "2 usage or setup error\n",
          f);
}

static const struct task_kind *find_task(const char *name)
{
    for (size_t i = 0; i < sizeof(all_tasks) / sizeof(all_tasks[0]); i++)
        if (strcmp(all_tasks[i]->name, name) == 0) return all_tasks[i];
    return NULL;
}

static bool readable(const char *path)
{
    return access(path, R_OK) == 0;
}

/* Finds a shipped example file: $EVALCLIENT_DATA_DIR, the source tree this
 * binary was built from, the install dir, then paths beside the executable. */
static bool find_example(const char *file, char *out, size_t n)
{
    char exe[PATH_MAX] = "";
    ssize_t len = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (len > 0) {
        exe[len] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) *slash = '\0';
    }
    const char *env = getenv("EVALCLIENT_DATA_DIR");
    const char *dirs[] = {env, EC_SOURCE_DIR "/data/examples", EC_DATA_DIR "/examples", NULL, NULL};
    char rel1[PATH_MAX + 32], rel2[PATH_MAX + 32];
    snprintf(rel1, sizeof(rel1), "%s/../data/examples", exe);
    snprintf(rel2, sizeof(rel2), "%s/../share/evalclient/examples", exe);
    dirs[3] = rel1;
    dirs[4] = rel2;
    for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
        if (!dirs[i] || !*exe) continue;
        snprintf(out, n, "%s/%s", dirs[i], file);
        if (readable(out)) return true;
    }
    return false;
}

static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

struct cli {
    const char *tasks[MAX_TASKS];
    int n_tasks;
    const char *urls[MAX_URLS + 1];
    int n_urls;
    const char *data_task[MAX_TASKS];
    const char *data_file[MAX_TASKS];
    int n_data;
    const char *model, *out, *judge_url, *judge_model, *judge_prompts, *env_cmd, *api_key;
    int max_inflight, retries, max_tokens, judge_max_tokens;
    long limit;
    double timeout_s, backoff_s;
    bool sync_turns, stream;
    char *tasks_buf;
    char *owned[2 * MAX_TASKS]; /* strings read from --task-file */
    int n_owned;
};

static void cli_free(struct cli *c)
{
    free(c->tasks_buf);
    for (int i = 0; i < c->n_owned; i++)
        free(c->owned[i]);
}

/* --task-file: "TASK=FILE" lines ('#' comments); a relative FILE is taken
 * from the task file's folder. Adds the data and, unless --tasks lists the
 * tasks, the task. */
static int read_task_file(struct cli *c, const char *path, const char ***file_tasks, int *n_ft)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "evalclient: cannot open task file %s\n", path);
        return 2;
    }
    const char *slash = strrchr(path, '/');
    int dir_len = slash ? (int)(slash - path) : 0;
    char *line = NULL;
    size_t cap = 0;
    int rc = -1;
    while (getline(&line, &cap, f) > 0) {
        char *p = line;
        while (*p == ' ' || *p == '\t')
            p++;
        p[strcspn(p, "\r\n")] = '\0';
        if (!*p || *p == '#') continue;
        char *eq = strchr(p, '=');
        if (!eq || c->n_data == MAX_TASKS || c->n_owned + 2 > 2 * MAX_TASKS) {
            fprintf(stderr, "evalclient: %s: want TASK=FILE lines, got '%s'\n", path, p);
            rc = 2;
            break;
        }
        *eq = '\0';
        struct strbuf file = {0};
        if (eq[1] != '/' && dir_len > 0) sb_printf(&file, "%.*s/", dir_len, path);
        sb_puts(&file, eq + 1);
        char *task = strdup(p);
        c->owned[c->n_owned++] = task;
        c->owned[c->n_owned++] = sb_steal(&file);
        c->data_task[c->n_data] = task;
        c->data_file[c->n_data++] = c->owned[c->n_owned - 1];
        (*file_tasks)[(*n_ft)++] = task;
    }
    free(line);
    fclose(f);
    return rc;
}

static int parse_args(int argc, char **argv, struct cli *c)
{
    enum {
        O_TASKS = 256,
        O_URL,
        O_MODEL,
        O_DATA,
        O_OUT,
        O_JURL,
        O_JMODEL,
        O_JPROMPTS,
        O_INFLIGHT,
        O_LIMIT,
        O_KEY,
        O_TIMEOUT,
        O_RETRIES,
        O_SYNC,
        O_STREAM,
        O_ENV,
        O_MAXTOK,
        O_BACKOFF,
        O_JMAXTOK,
        O_TASKFILE,
        O_HELP
    };
    static const struct option opts[] = {{"tasks", 1, 0, O_TASKS},
                                         {"url", 1, 0, O_URL},
                                         {"model", 1, 0, O_MODEL},
                                         {"data", 1, 0, O_DATA},
                                         {"out", 1, 0, O_OUT},
                                         {"judge-url", 1, 0, O_JURL},
                                         {"judge-model", 1, 0, O_JMODEL},
                                         {"judge-prompts", 1, 0, O_JPROMPTS},
                                         {"max-inflight", 1, 0, O_INFLIGHT},
                                         {"limit", 1, 0, O_LIMIT},
                                         {"api-key", 1, 0, O_KEY},
                                         {"timeout", 1, 0, O_TIMEOUT},
                                         {"retries", 1, 0, O_RETRIES},
                                         {"sync-turns", 0, 0, O_SYNC},
                                         {"stream", 0, 0, O_STREAM},
                                         {"env", 1, 0, O_ENV},
                                         {"max-tokens", 1, 0, O_MAXTOK},
                                         {"help", 0, 0, O_HELP},
                                         {"backoff", 1, 0, O_BACKOFF},
                                         {"judge-max-tokens", 1, 0, O_JMAXTOK},
                                         {"task-file", 1, 0, O_TASKFILE},
                                         {0, 0, 0, 0}};
    c->max_inflight = 256;
    c->retries = 3;
    c->limit = -1;
    c->timeout_s = 600;
    c->backoff_s = 0.5;
    c->api_key = getenv("OPENAI_API_KEY");
    const char *ft_store[MAX_TASKS], **file_tasks = ft_store;
    int n_file_tasks = 0, rc;
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case O_TASKS: {
            free(c->tasks_buf);
            c->tasks_buf = strdup(optarg);
            c->n_tasks = 0;
            for (char *save, *t = strtok_r(c->tasks_buf, ",", &save); t;
                 t = strtok_r(NULL, ",", &save)) {
                if (c->n_tasks == MAX_TASKS) {
                    fprintf(stderr, "evalclient: --tasks takes at most %d tasks\n", MAX_TASKS);
                    return 2;
                }
                c->tasks[c->n_tasks++] = t;
            }
            break;
        }
        case O_URL:
            if (c->n_urls == MAX_URLS) {
                fprintf(stderr, "evalclient: --url may be given at most %d times\n", MAX_URLS);
                return 2;
            }
            c->urls[c->n_urls++] = optarg;
            break;
        case O_MODEL:
            c->model = optarg;
            break;
        case O_DATA: {
            char *eq = strchr(optarg, '=');
            if (!eq || c->n_data == MAX_TASKS) {
                fprintf(stderr, "evalclient: --data wants TASK=FILE\n");
                return 2;
            }
            *eq = '\0';
            c->data_task[c->n_data] = optarg;
            c->data_file[c->n_data++] = eq + 1;
            break;
        }
        case O_OUT:
            c->out = optarg;
            break;
        case O_JURL:
            c->judge_url = optarg;
            break;
        case O_JMODEL:
            c->judge_model = optarg;
            break;
        case O_JPROMPTS:
            c->judge_prompts = optarg;
            break;
        case O_INFLIGHT:
            if (!cli_int("evalclient", "max-inflight", optarg, 1, 1 << 20, &c->max_inflight))
                return 2;
            break;
        case O_LIMIT:
            if (!cli_long("evalclient", "limit", optarg, 0, LONG_MAX, &c->limit)) return 2;
            break;
        case O_KEY:
            c->api_key = optarg;
            break;
        case O_TIMEOUT:
            if (!cli_double("evalclient", "timeout", optarg, 0, 1e7, &c->timeout_s)) return 2;
            break;
        case O_RETRIES:
            if (!cli_int("evalclient", "retries", optarg, 0, 1000, &c->retries)) return 2;
            break;
        case O_SYNC:
            c->sync_turns = true;
            break;
        case O_STREAM:
            c->stream = true;
            break;
        case O_ENV:
            c->env_cmd = optarg;
            break;
        case O_MAXTOK:
            if (!cli_int("evalclient", "max-tokens", optarg, 1, INT_MAX, &c->max_tokens)) return 2;
            break;
        case O_BACKOFF:
            if (!cli_double("evalclient", "backoff", optarg, 0.001, 3600, &c->backoff_s)) return 2;
            break;
        case O_JMAXTOK:
            if (!cli_int("evalclient", "judge-max-tokens", optarg, 1, INT_MAX,
                         &c->judge_max_tokens))
                return 2;
            break;
        case O_TASKFILE:
            if ((rc = read_task_file(c, optarg, &file_tasks, &n_file_tasks)) >= 0) return rc;
            break;
        case O_HELP:
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!c->n_tasks)
        for (int i = 0; i < n_file_tasks; i++)
            c->tasks[c->n_tasks++] = file_tasks[i];
    /* a task named twice runs once: twice would send and log every sample twice */
    int n_unique = 0;
    for (int i = 0; i < c->n_tasks; i++) {
        bool seen = false;
        for (int k = 0; k < n_unique; k++)
            seen |= strcmp(c->tasks[k], c->tasks[i]) == 0;
        if (!seen) c->tasks[n_unique++] = c->tasks[i];
    }
    c->n_tasks = n_unique;
    if (optind < argc) {
        fprintf(stderr, "evalclient: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (!c->n_tasks || !c->n_urls) {
        fprintf(stderr, "evalclient: --tasks (or --task-file) and --url are required\n");
        usage(stderr);
        return 2;
    }
    return -1;
}

static const char *data_path(const struct cli *c, const struct task_kind *k, char *buf, size_t n)
{
    for (int i = 0; i < c->n_data; i++)
        if (strcmp(c->data_task[i], k->name) == 0) return c->data_file[i];
    if (k->example && find_example(k->example, buf, n)) return buf;
    return NULL;
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit(); /* one socket per request in flight */
    if (argc > 1 && strcmp(argv[1], "bench") == 0) return bench_main(argc - 1, argv + 1);
    struct cli c = {0};
    int rc = parse_args(argc, argv, &c);
    if (rc >= 0) {
        cli_free(&c);
        return rc;
    }
    rc = 2;
    const struct task_kind *kinds[MAX_TASKS];
    for (int i = 0; i < c.n_tasks; i++) {
        kinds[i] = find_task(c.tasks[i]);
        if (!kinds[i]) {
            fprintf(stderr, "evalclient: unknown task '%s'\n", c.tasks[i]);
            cli_free(&c);
            return 2;
        }
    }
    for (int i = 0; i < c.n_data; i++) {
        /* a misspelt task would otherwise run on the shipped examples instead */
        if (!find_task(c.data_task[i])) {
            fprintf(stderr, "evalclient: data given for unknown task '%s'\n", c.data_task[i]);
            cli_free(&c);
            return 2;
        }
    }
    int n_urls = c.n_urls, judge_server = -1;
    if (c.judge_url) {
        judge_server = n_urls;
        for (int i = 0; i < n_urls; i++)
            if (strcmp(c.urls[i], c.judge_url) == 0) judge_server = i;
        if (judge_server == n_urls) c.urls[n_urls] = c.judge_url;
    } else if (c.judge_model) {
        judge_server = 0;
    }

    struct es_err err = {{0}};
    struct hc_opts ho = {.urls = c.urls,
                         .n_urls = judge_server == n_urls ? n_urls + 1 : n_urls,
                         .n_balanced = n_urls,
                         .api_key = c.api_key,
                         .max_inflight = c.max_inflight,
                         .timeout_s = c.timeout_s,
                         .retries = c.retries,
                         .backoff_s = c.backoff_s};
    struct hc *hc = hc_create(&ho, &err);
    struct res_log *log = NULL;
    struct conv_sched *sched = NULL;
    void *states[MAX_TASKS] = {0};
    struct res_task_info infos[MAX_TASKS] = {{0}};
    struct progress prog;
    struct task_env env = {0};
    int started = 0;
    bool running = false; /* requests went out: samples are in flight */
    char *found_model = NULL, default_out[PATH_MAX];
    if (!hc) goto fail;
    if (!c.model) { /* the one model the first server lists */
        if (model_name_from_server(hc, 0, &found_model, &err) != ES_OK) goto fail;
        c.model = found_model;
        fprintf(stderr, "evalclient: model '%s' (the one the server lists)\n", c.model);
    }
    if (judge_server >= 0 && !c.judge_model) c.judge_model = c.model;
    if (!c.out) { /* one folder per model, so that a rerun resumes */
        if (!model_name_default_out(c.model, default_out, sizeof(default_out))) {
            es_fail(&err, ES_EINVAL, "no --out given, and model '%s' names no folder", c.model);
            goto fail;
        }
        c.out = default_out;
        fprintf(stderr, "evalclient: results in %s\n", c.out);
    }
    if (res_open(c.out, &log, &err) != ES_OK) goto fail;
    sched = conv_sched_create(hc, c.sync_turns);
    if (!sched) goto fail;
    conv_sched_hold(sched); /* nothing is sent before every task's data has loaded */
    env = (struct task_env){.hc = hc,
                            .sched = sched,
                            .log = log,
                            .prog = &prog,
                            .model = c.model,
                            .limit = c.limit,
                            .stream = c.stream,
                            .max_tokens = c.max_tokens,
                            .judge_server = judge_server,
                            .judge_model = c.judge_model,
                            .judge_max_tokens = c.judge_max_tokens,
                            .judge_prompts = c.judge_prompts,
                            .env_cmd = c.env_cmd};
    prog_init(&prog, 0);
    double t0 = hc_now();
    for (; started < c.n_tasks; started++) {
        char buf[PATH_MAX + 64];
        const char *path = data_path(&c, kinds[started], buf, sizeof(buf));
        if (!path) {
            es_fail(&err, ES_EINVAL, "task %s: no --data %s=FILE given and no example data found",
                    kinds[started]->name, kinds[started]->name);
            goto fail;
        }
        infos[started].name = kinds[started]->name;
        if (kinds[started]->start(&env, path, &states[started], &infos[started], &err) != ES_OK)
            goto fail;
        prog_add_total(&prog, infos[started].total - infos[started].resumed);
    }
    running = true;
    conv_sched_go(sched);
    if (hc_run(hc, &err) != ES_OK) goto fail;
    prog_end(&prog);
    for (int i = 0; i < started; i++) {
        struct es_err terr = {{0}};
        if (kinds[i]->finish(&env, states[i], &terr) != ES_OK)
            fprintf(stderr, "evalclient: %s: %s\n", kinds[i]->name, terr.msg);
        states[i] = NULL;
    }
    struct res_run_info ri = {.model = c.model,
                              .urls = c.urls,
                              .n_urls = n_urls,
                              .wall_s = hc_now() - t0,
                              .tasks = infos,
                              .n_tasks = started};
    size_t failed = 0;
    if (res_report(log, &ri, &failed, &err) != ES_OK) goto fail;
    rc = failed > 0 || task_commit_errors > 0 ? 1 : 0;
    goto done;
fail:
    fprintf(stderr, "evalclient: %s\n", err.msg[0] ? err.msg : "setup failed");
    if (running) {
        started = 0; /* samples are in flight in the client; stop here */
    } else if (sched) {
        env.discard = true; /* setup failed: free what the tasks hold, log nothing */
        conv_sched_drop(sched);
    }
done:
    for (int i = 0; i < started; i++) {
        struct es_err terr = {{0}};
        if (states[i]) kinds[i]->finish(&env, states[i], &terr);
    }
    conv_sched_destroy(sched);
    res_close(log);
    hc_destroy(hc);
    free(found_model);
    cli_free(&c);
    return rc;
}
