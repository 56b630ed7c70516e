/*
 * bench.c - `evalclient bench`: sends the workloads of BENCH.md to any
 * OpenAI-compatible server and reports what `vllm bench serve` reports:
 * request and token throughput, TTFT, TPOT, ITL and end-to-end latency
 * percentiles, as a table and as JSON.
 *
 * Prompts are token ids from one splitmix64 stream seeded 0, drawn in order,
 * token = 1000 + x mod 119000 (W1 prompt 0 starts 79535, 49700, 111679, ...).
 * W1: N x 512-token prompts, 256 out, ignore_eos, temperature 0, all at once.
 * W2: 10 prefixes of 480 tokens drawn first, then per question 100 tokens
 *     and 4 choices of 8 tokens; question q uses prefix q mod 10; echo,
 *     logprobs 1, max_tokens 1.
 * W3: conversations x turns; each conversation's 128-token user turns are
 *     drawn up front (conversation by conversation, turn by turn); turn k's
 *     prompt = turn k-1's prompt + its 128 reply tokens + 128 new tokens.
 *     Reply token ids come from logprobs with return_tokens_as_token_ids
 *     ("token_id:N", vLLM's extension); a server without it gets the reply
 *     text re-tokenized by POST /tokenize (counted as inexact).
 *     Prefix-cache hit rate = delta of *prefix_cache_hits* over delta of
 *     *prefix_cache_queries* counters on GET /metrics.
 * W4: N x 512 in / 128 out, streamed, Poisson arrivals at --rate (gaps from
 *     a second splitmix64 stream seeded 1).
 * Owns its prompts and statistics; all traffic goes through http_client.
 */
#include "bench.h"

#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "conversation.h"
#include "http_client.h"
#include "model_name.h"
#include "json.h"
#include "progress.h"
#include "results.h"
#include "strbuf.h"

#define BENCH_VOCAB_BASE 1000
#define BENCH_VOCAB_SPAN 119000

#define BENCH_PROG "evalclient bench"

struct bench_opts {
    const char *urls[16];
    int n_urls;
    const char *model, *workload, *json_path, *api_key;
    long num_prompts; /* -1 = the workload's default */
    double rate;      /* W4 requests/s; <= 0 = all at once */
    bool sync_turns;
    int max_inflight;  /* 0 = everything at once */
    long dump_prompts; /* > 0: print that many prompts and exit */
    uint64_t seed;     /* prompt stream seed (BENCH.md: 0); W4 gaps use seed + 1 */
    int turns;
    double timeout_s;
};

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static void draw(uint64_t *state, struct i32vec *out, size_t n)
{
    for (size_t i = 0; i < n; i++)
        iv_push(out, (int32_t)(BENCH_VOCAB_BASE + splitmix64(state) % BENCH_VOCAB_SPAN));
}

/* ---- statistics ---------------------------------------------------------- */

struct dvec {
    double *v;
    size_t n, cap;
};

static void dv_push(struct dvec *d, double x)
{
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 1024;
        double *v = realloc(d->v, cap * sizeof(*v));
        if (!v) return;
        d->v = v;
        d->cap = cap;
    }
    d->v[d->n++] = x;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

struct bench_stats {
    size_t completed, failed;
    double input_tokens, output_tokens;
    double t_first_send, t_last_reply;
    struct dvec ttft, tpot, itl, e2el; /* seconds */
    char first_error[256];
    /* W3 */
    size_t exact_replies, retokenized_replies;
    struct progress *prog; /* live line on a terminal */
};

static void stats_add(struct bench_stats *s, const struct hc_result *r, size_t prompt_len)
{
    if (s->t_first_send == 0 || r->t_start < s->t_first_send) s->t_first_send = r->t_start;
    if (r->t_end > s->t_last_reply) s->t_last_reply = r->t_end;
    if (r->st != ES_OK) {
        s->failed++;
        if (!s->first_error[0]) snprintf(s->first_error, sizeof(s->first_error), "%s", r->error);
        if (s->prog) prog_sample(s->prog, 1, 0);
        return;
    }
    s->completed++;
    double out = r->completion_tokens >= 0 ? (double)r->completion_tokens : (double)r->n_chunks;
    if (s->prog) prog_sample(s->prog, 0, (int64_t)out);
    s->input_tokens += r->prompt_tokens >= 0 ? (double)r->prompt_tokens : (double)prompt_len;
    s->output_tokens += out;
    double e2e = r->t_end - r->t_start;
    dv_push(&s->e2el, e2e);
    if (r->n_chunks > 0) {
        double ttft = r->chunk_t[0] - r->t_start;
        dv_push(&s->ttft, ttft);
        if (out > 1) dv_push(&s->tpot, (e2e - ttft) / (out - 1));
        for (size_t i = 1; i < r->n_chunks; i++)
            dv_push(&s->itl, r->chunk_t[i] - r->chunk_t[i - 1]);
    }
}

static void add_dist(cJSON *o, const char *name, struct dvec *d)
{
    if (d->n) qsort(d->v, d->n, sizeof(double), cmp_d);
    double sum = 0;
    for (size_t i = 0; i < d->n; i++)
        sum += d->v[i];
    char key[64];
    snprintf(key, sizeof(key), "mean_%s_ms", name);
    cJSON_AddNumberToObject(o, key, d->n ? sum / (double)d->n * 1e3 : 0);
    const double ps[] = {50, 90, 99};
    const char *pn[] = {"median", "p90", "p99"};
    for (int i = 0; i < 3; i++) {
        snprintf(key, sizeof(key), "%s_%s_ms", pn[i], name);
        cJSON_AddNumberToObject(o, key, res_percentile(d->v, d->n, ps[i]) * 1e3);
    }
}

static double num(const cJSON *o, const char *k)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(x) ? x->valuedouble : 0;
}

static cJSON *stats_json(struct bench_stats *s, const struct bench_opts *o)
{
    cJSON *j = cJSON_CreateObject();
    double dur = s->t_last_reply - s->t_first_send;
    if (dur <= 0) dur = 1e-9;
    cJSON_AddStringToObject(j, "workload", o->workload);
    cJSON_AddStringToObject(j, "model", o->model);
    cJSON_AddBoolToObject(j, "sync_turns", o->sync_turns);
    cJSON_AddNumberToObject(j, "seed", (double)o->seed);
    cJSON_AddNumberToObject(j, "duration_s", dur);
    cJSON_AddNumberToObject(j, "completed", (double)s->completed);
    cJSON_AddNumberToObject(j, "failed", (double)s->failed);
    cJSON_AddNumberToObject(j, "total_input_tokens", s->input_tokens);
    cJSON_AddNumberToObject(j, "total_output_tokens", s->output_tokens);
    cJSON_AddNumberToObject(j, "request_throughput", (double)s->completed / dur);
    cJSON_AddNumberToObject(j, "input_throughput", s->input_tokens / dur);
    cJSON_AddNumberToObject(j, "output_throughput", s->output_tokens / dur);
    cJSON_AddNumberToObject(j, "total_token_throughput",
                            (s->input_tokens + s->output_tokens) / dur);
    add_dist(j, "ttft", &s->ttft);
    add_dist(j, "tpot", &s->tpot);
    add_dist(j, "itl", &s->itl);
    add_dist(j, "e2el", &s->e2el);
    if (s->first_error[0]) cJSON_AddStringToObject(j, "first_error", s->first_error);
    return j;
}

static void print_table(const cJSON *j)
{
    printf("============ evalclient bench: %s ============\n",
           cJSON_GetObjectItemCaseSensitive(j, "workload")->valuestring);
    printf("%-40s %12.0f\n", "Successful requests:", num(j, "completed"));
    printf("%-40s %12.0f\n", "Failed requests:", num(j, "failed"));
    printf("%-40s %12.3f\n", "Benchmark duration (s):", num(j, "duration_s"));
    printf("%-40s %12.0f\n", "Total input tokens:", num(j, "total_input_tokens"));
    printf("%-40s %12.0f\n", "Total generated tokens:", num(j, "total_output_tokens"));
    printf("%-40s %12.2f\n", "Request throughput (req/s):", num(j, "request_throughput"));
    printf("%-40s %12.2f\n", "Input token throughput (tok/s):", num(j, "input_throughput"));
    printf("%-40s %12.2f\n", "Output token throughput (tok/s):", num(j, "output_throughput"));
    printf("%-40s %12.2f\n", "Total token throughput (tok/s):", num(j, "total_token_throughput"));
    const char *names[] = {"ttft", "tpot", "itl", "e2el"};
    const char *titles[] = {"Time to First Token", "Time per Output Token (excl. 1st token)",
                            "Inter-token Latency", "End-to-end Latency"};
    for (int i = 0; i < 4; i++) {
        printf("---------- %s ----------\n", titles[i]);
        const char *st[] = {"mean", "median", "p90", "p99"};
        for (int k = 0; k < 4; k++) {
            char key[64], label[64];
            snprintf(key, sizeof(key), "%s_%s_ms", st[k], names[i]);
            snprintf(label, sizeof(label), "%s %s (ms):", st[k], names[i]);
            printf("%-40s %12.2f\n", label, num(j, key));
        }
    }
    const cJSON *extra = cJSON_GetObjectItemCaseSensitive(j, "prefix_cache_hit_rate");
    if (cJSON_IsNumber(extra))
        printf("%-40s %12.4f\n", "Prefix cache hit rate:", extra->valuedouble);
    printf("==================================================\n");
    fflush(stdout);
}

/* ---- one-shot workloads (W1, W2, W4) ------------------------------------- */

struct bench_run {
    struct hc *hc;
    const struct bench_opts *o;
    struct bench_stats stats;
    struct i32vec *prompts; /* [n] */
    size_t n;
    size_t next;     /* W4: next request to send */
    double *arrival; /* W4: [n] offsets in seconds */
    double t0;
    int max_tokens;
    bool stream, scoring;
};

struct bench_slot {
    struct bench_run *run;
    size_t index;
};

static char *request_body(const struct bench_run *r, const struct i32vec *prompt)
{
    cJSON *b = cJSON_CreateObject();
    cJSON_AddStringToObject(b, "model", r->o->model);
    cJSON *p = cJSON_AddArrayToObject(b, "prompt");
    for (size_t i = 0; i < prompt->n; i++)
        cJSON_AddItemToArray(p, cJSON_CreateNumber(prompt->v[i]));
    cJSON_AddNumberToObject(b, "max_tokens", r->max_tokens);
    cJSON_AddNumberToObject(b, "temperature", 0);
    if (r->scoring) {
        cJSON_AddBoolToObject(b, "echo", true);
        cJSON_AddNumberToObject(b, "logprobs", 1);
    } else {
        cJSON_AddBoolToObject(b, "ignore_eos", true);
    }
    if (r->stream) {
        cJSON_AddBoolToObject(b, "stream", true);
        cJSON_AddBoolToObject(cJSON_AddObjectToObject(b, "stream_options"), "include_usage", true);
    }
    char *s = cJSON_PrintUnformatted(b);
    cJSON_Delete(b);
    return s;
}

static void on_done(struct hc_result *res, void *ud)
{
    struct bench_slot *sl = ud;
    stats_add(&sl->run->stats, res, sl->run->prompts[sl->index].n);
    free(sl);
}

static void send_one(struct bench_run *r, size_t i)
{
    struct bench_slot *sl = malloc(sizeof(*sl));
    if (sl) *sl = (struct bench_slot){.run = r, .index = i};
    char *body = request_body(r, &r->prompts[i]);
    if (!sl || !body ||
        hc_submit(r->hc, hc_next_server(r->hc), "/v1/completions", body, r->stream, false, on_done,
                  sl) != ES_OK) {
        free(sl);
        r->stats.failed++;
    }
    free(body);
}

static void w4_arrival(void *ud)
{
    struct bench_run *r = ud;
    double now = hc_now();
    while (r->next < r->n && r->t0 + r->arrival[r->next] <= now)
        send_one(r, r->next++);
    if (r->next < r->n) hc_timer(r->hc, r->t0 + r->arrival[r->next], w4_arrival, r);
}

/* ---- W3 --------------------------------------------------------------------- */

#define W3_TURN_TOKENS 128

struct w3_conv {
    struct conv conv;
    struct bench_run *run;
    struct i32vec prompt; /* the conversation so far, token ids */
    const int32_t *user;  /* [turns][W3_TURN_TOKENS] drawn up front */
    int turns_done;
    bool failed;
};

static char *w3_body(const struct bench_run *r, const struct i32vec *prompt)
{
    cJSON *b = cJSON_CreateObject();
    cJSON_AddStringToObject(b, "model", r->o->model);
    cJSON *p = cJSON_AddArrayToObject(b, "prompt");
    for (size_t i = 0; i < prompt->n; i++)
        cJSON_AddItemToArray(p, cJSON_CreateNumber(prompt->v[i]));
    cJSON_AddNumberToObject(b, "max_tokens", W3_TURN_TOKENS);
    cJSON_AddNumberToObject(b, "temperature", 0);
    cJSON_AddBoolToObject(b, "ignore_eos", true);
    cJSON_AddNumberToObject(b, "logprobs", 0);
    cJSON_AddBoolToObject(b, "return_tokens_as_token_ids", true);
    char *s = cJSON_PrintUnformatted(b);
    cJSON_Delete(b);
    return s;
}

static bool w3_step(struct conv *c)
{
    struct w3_conv *w = c->ud;
    if (w->failed || w->turns_done >= w->run->o->turns) return false;
    iv_append(&w->prompt, w->user + (size_t)w->turns_done * W3_TURN_TOKENS, W3_TURN_TOKENS);
    char *s = w3_body(w->run, &w->prompt);
    if (!s || conv_send(c, 0, -1, "/v1/completions", s, false) != ES_OK) w->failed = true;
    free(s);
    return !w->failed;
}

static bool append_ids(struct i32vec *dst, const cJSON *arr, bool token_id_strings)
{
    if (!cJSON_IsArray(arr)) return false;
    const cJSON *t;
    cJSON_ArrayForEach(t, arr)
    {
        if (token_id_strings) {
            if (!cJSON_IsString(t) || strncmp(t->valuestring, "token_id:", 9) != 0) return false;
            iv_push(dst, (int32_t)atol(t->valuestring + 9));
        } else {
            if (!cJSON_IsNumber(t)) return false;
            iv_push(dst, (int32_t)t->valuedouble);
        }
    }
    return true;
}

static void w3_reply(struct conv *c, int slot, struct hc_result *res)
{
    struct w3_conv *w = c->ud;
    struct bench_run *r = w->run;
    if (slot == 1) { /* /tokenize of a reply whose ids the server did not give */
        const cJSON *toks = cJSON_GetObjectItemCaseSensitive(res->json, "tokens");
        if (res->st != ES_OK || !append_ids(&w->prompt, toks, false)) w->failed = true;
        r->stats.retokenized_replies++;
        return;
    }
    stats_add(&r->stats, res, w->prompt.n);
    if (res->st != ES_OK) {
        w->failed = true;
        return;
    }
    w->turns_done++;
    const cJSON *choices = cJSON_GetObjectItemCaseSensitive(res->json, "choices");
    const cJSON *c0 = cJSON_GetArrayItem(choices, 0);
    const cJSON *lp = cJSON_GetObjectItemCaseSensitive(c0, "logprobs");
    size_t before = w->prompt.n;
    if (append_ids(&w->prompt, cJSON_GetObjectItemCaseSensitive(lp, "tokens"), true)) {
        r->stats.exact_replies++;
        return;
    }
    w->prompt.n = before;
    /* same step: the next turn waits until the reply's tokens are known */
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(c0, "text");
    cJSON *b = cJSON_CreateObject();
    cJSON_AddStringToObject(b, "model", r->o->model);
    cJSON_AddStringToObject(b, "prompt", cJSON_IsString(text) ? text->valuestring : "");
    cJSON_AddBoolToObject(b, "add_special_tokens", false);
    char *s = cJSON_PrintUnformatted(b);
    cJSON_Delete(b);
    if (!s || conv_send(c, 1, -1, "/tokenize", s, false) != ES_OK) w->failed = true;
    free(s);
}

static void w3_finish(struct conv *c)
{
    struct w3_conv *w = c->ud;
    iv_free(&w->prompt);
}

static const struct conv_ops w3_ops = {w3_step, w3_reply, w3_finish};

/* Sums every sample of metrics whose name contains `needle`. */
static double metric_sum(const char *text, const char *needle)
{
    double sum = 0;
    for (const char *line = text; line && *line;) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        if (line[0] != '#') {
            const char *sp = memchr(line, ' ', len);
            const char *brace = memchr(line, '{', len);
            const char *name_end = brace && (!sp || brace < sp) ? brace : sp;
            if (name_end) {
                char name[256];
                size_t nl = (size_t)(name_end - line) < sizeof(name) - 1 ? (size_t)(name_end - line)
                                                                         : sizeof(name) - 1;
                memcpy(name, line, nl);
                name[nl] = '\0';
                const char *val = line + len;
                while (val > line && val[-1] != ' ')
                    val--;
                if (strstr(name, needle) && !strstr(name, "_created")) sum += strtod(val, NULL);
            }
        }
        line = end ? end + 1 : NULL;
    }
    return sum;
}

static bool read_prefix_counters(struct hc *hc, double *hits, double *queries)
{
    *hits = *queries = 0;
    bool any = false;
    for (int s = 0; s < hc_n_servers(hc); s++) {
        struct strbuf body = {0};
        if (hc_get_sync(hc, s, "/metrics", &body, NULL) == ES_OK) {
            *hits += metric_sum(sb_cstr(&body), "prefix_cache_hits");
            *queries += metric_sum(sb_cstr(&body), "prefix_cache_queries");
            any = true;
        }
        sb_free(&body);
    }
    return any;
}

/* ---- workloads ----------------------------------------------------------- */

static void bench_usage(FILE *f)
{
    fputs("usage: evalclient bench --url URL [--url URL2 ...] --workload W1|W2|W3|W4\n"
          "                        [--model NAME] [--num-prompts N] [--rate R] [--sync-turns]\n"
          "                        [--json FILE]\n"
          "  --model NAME          model field of every request (default: the one model the\n"
          "                        first --url lists under /v1/models)\n"
          "  --workload W          W1 batch generation, W2 prompt scoring, W3 multi-turn,\n"
          "                        W4 serving (see BENCH.md)\n"
          "  --num-prompts N       requests (W1 1000, W2 2000, W4 300) or conversations\n"
          "                        (W3 200)\n"
          "  --turns N             W3 turns per conversation (default 6)\n"
          "  --rate R              W4 Poisson arrival rate in requests/s (default: all at once)\n"
          "  --sync-turns          W3: barrier after each turn (for comparison)\n"
          "  --max-inflight N      cap on requests in flight (default: no cap)\n"
          "  --json FILE           also write the figures as JSON\n"
          "  --dump-prompts N      print the first N prompts (token ids, one JSON array a\n"
          "                        line) and exit; needs no server\n"
          "  --api-key KEY         Bearer token (default: $OPENAI_API_KEY)\n"
          "  --timeout S           per-request timeout (default 1800)\n"
          "  --seed N              prompt stream seed (default 0, as BENCH.md); e.g. a second\n"
          "                        W3 run with another seed finds no prefix cached by the first\n",
          f);
}

static int parse_bench(int argc, char **argv, struct bench_opts *o)
{
    enum {
        B_URL = 300,
        B_MODEL,
        B_WL,
        B_NUM,
        B_RATE,
        B_SYNC,
        B_JSON,
        B_INFL,
        B_DUMP,
        B_TURNS,
        B_KEY,
        B_TIMEOUT,
        B_SEED,
        B_HELP
    };
    static const struct option opts[] = {{"url", 1, 0, B_URL},
                                         {"model", 1, 0, B_MODEL},
                                         {"workload", 1, 0, B_WL},
                                         {"num-prompts", 1, 0, B_NUM},
                                         {"rate", 1, 0, B_RATE},
                                         {"sync-turns", 0, 0, B_SYNC},
                                         {"json", 1, 0, B_JSON},
                                         {"max-inflight", 1, 0, B_INFL},
                                         {"dump-prompts", 1, 0, B_DUMP},
                                         {"turns", 1, 0, B_TURNS},
                                         {"api-key", 1, 0, B_KEY},
                                         {"timeout", 1, 0, B_TIMEOUT},
                                         {"seed", 1, 0, B_SEED},
                                         {"help", 0, 0, B_HELP},
                                         {0, 0, 0, 0}};
    o->num_prompts = -1;
    o->turns = 6;
    o->timeout_s = 1800;
    o->api_key = getenv("OPENAI_API_KEY");
    optind = 1;
    long seed;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case B_URL:
            if (o->n_urls == 16) {
                fprintf(stderr, "evalclient bench: --url may be given at most 16 times\n");
                return 2;
            }
            o->urls[o->n_urls++] = optarg;
            break;
        case B_MODEL:
            o->model = optarg;
            break;
        case B_WL:
            o->workload = optarg;
            break;
        case B_NUM:
            if (!cli_long(BENCH_PROG, "num-prompts", optarg, 1, 100000000, &o->num_prompts))
                return 2;
            break;
        case B_RATE:
            if (!cli_double(BENCH_PROG, "rate", optarg, 1e-6, 1e9, &o->rate)) return 2;
            break;
        case B_SYNC:
            o->sync_turns = true;
            break;
        case B_JSON:
            o->json_path = optarg;
            break;
        case B_INFL:
            if (!cli_int(BENCH_PROG, "max-inflight", optarg, 1, 1 << 20, &o->max_inflight))
                return 2;
            break;
        case B_DUMP:
            if (!cli_long(BENCH_PROG, "dump-prompts", optarg, 1, LONG_MAX, &o->dump_prompts))
                return 2;
            break;
        case B_TURNS:
            if (!cli_int(BENCH_PROG, "turns", optarg, 1, 1000, &o->turns)) return 2;
            break;
        case B_KEY:
            o->api_key = optarg;
            break;
        case B_SEED:
            if (!cli_long(BENCH_PROG, "seed", optarg, 0, LONG_MAX, &seed)) return 2;
            o->seed = (uint64_t)seed;
            break;
        case B_TIMEOUT:
            if (!cli_double(BENCH_PROG, "timeout", optarg, 0, 1e7, &o->timeout_s)) return 2;
            break;
        case B_HELP:
            bench_usage(stdout);
            return 0;
        default:
            bench_usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "evalclient bench: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!o->workload || strlen(o->workload) != 2 || o->workload[0] != 'W' || o->workload[1] < '1' ||
        o->workload[1] > '4') {
        fprintf(stderr, "evalclient bench: --workload W1|W2|W3|W4 is required\n");
        return 2;
    }
    if (o->dump_prompts <= 0 && !o->n_urls) {
        fprintf(stderr, "evalclient bench: --url is required\n");
        return 2;
    }
    if (o->turns < 1) o->turns = 1;
    return -1;
}

/* Builds the prompts of W1, W2 or W4 (W3 keeps its user turns apart). */
static void build_prompts(struct bench_run *r, int wl, size_t n)
{
    uint64_t state = r->o->seed;
    r->n = n;
    r->prompts = calloc(n ? n : 1, sizeof(struct i32vec));
    if (wl == 2) {
        struct i32vec prefixes[10] = {{0}};
        for (int p = 0; p < 10; p++)
            draw(&state, &prefixes[p], 480);
        for (size_t q = 0; q * 4 < n; q++) {
            struct i32vec question = {0};
            draw(&state, &question, 100);
            for (size_t ch = 0; ch < 4 && q * 4 + ch < n; ch++) {
                struct i32vec *pr = &r->prompts[q * 4 + ch];
                iv_append(pr, prefixes[q % 10].v, prefixes[q % 10].n);
                iv_append(pr, question.v, question.n);
                draw(&state, pr, 8);
            }
            iv_free(&question);
        }
        for (int p = 0; p < 10; p++)
            iv_free(&prefixes[p]);
        return;
    }
    for (size_t i = 0; i < n; i++)
        draw(&state, &r->prompts[i], 512);
}

static void print_ids(const int32_t *v, size_t n)
{
    putchar('[');
    for (size_t k = 0; k < n; k++)
        printf(k ? ", %d" : "%d", v[k]);
    puts("]");
}

int bench_main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    struct bench_opts o = {0};
    int rc = parse_bench(argc, argv, &o);
    if (rc >= 0) return rc;
    int wl = o.workload[1] - '0';
    static const long defaults[] = {0, 1000, 2000, 200, 300};
    size_t n = o.num_prompts > 0 ? (size_t)o.num_prompts : (size_t)defaults[wl];
    struct bench_run r = {.o = &o};
    r.max_tokens = wl == 1 ? 256 : wl == 2 ? 1 : 128;
    r.stream = wl == 1 || wl == 4;
    r.scoring = wl == 2;
    int32_t *w3_user = NULL;
    struct w3_conv *convs = NULL;
    char *found_model = NULL;
    if (wl == 3) {
        uint64_t state = o.seed;
        struct i32vec all = {0};
        draw(&state, &all, n * (size_t)o.turns * W3_TURN_TOKENS);
        w3_user = all.v;
    } else {
        build_prompts(&r, wl, n);
    }
    if (o.dump_prompts > 0) {
        for (size_t i = 0; i < n && (long)i < o.dump_prompts; i++) {
            if (wl == 3)
                print_ids(w3_user + i * (size_t)o.turns * W3_TURN_TOKENS, W3_TURN_TOKENS);
            else
                print_ids(r.prompts[i].v, r.prompts[i].n);
        }
        rc = 0;
        goto done;
    }
    struct es_err err = {{0}};
    struct hc_opts ho = {.urls = o.urls,
                         .n_urls = o.n_urls,
                         .api_key = o.api_key,
                         .max_inflight = o.max_inflight > 0 ? o.max_inflight : 1 << 20,
                         .timeout_s = o.timeout_s,
                         .retries = 0};
    r.hc = hc_create(&ho, &err);
    rc = 2;
    if (!r.hc) {
        fprintf(stderr, "evalclient bench: %s\n", err.msg);
        goto done;
    }
    if (!o.model) { /* the one model the first server lists */
        if (model_name_from_server(r.hc, 0, &found_model, &err) != ES_OK) {
            fprintf(stderr, "evalclient bench: %s\n", err.msg);
            goto done;
        }
        o.model = found_model;
    }
    struct progress prog;
    prog_init(&prog, wl == 3 ? n * (size_t)o.turns : n);
    r.stats.prog = &prog;
    double hits0 = 0, queries0 = 0, hits1 = 0, queries1 = 0;
    bool have_metrics = false;
    struct conv_sched *sched = NULL;
    if (wl == 3) {
        have_metrics = read_prefix_counters(r.hc, &hits0, &queries0);
        sched = conv_sched_create(r.hc, o.sync_turns);
        convs = calloc(n, sizeof(*convs));
        for (size_t i = 0; sched && convs && i < n; i++) {
            convs[i].run = &r;
            convs[i].user = w3_user + i * (size_t)o.turns * W3_TURN_TOKENS;
            convs[i].conv.ops = &w3_ops;
            convs[i].conv.ud = &convs[i];
            conv_start(sched, &convs[i].conv, -1);
        }
    } else if (wl == 4 && o.rate > 0) {
        uint64_t state = o.seed + 1;
        double t = 0;
        r.arrival = calloc(n ? n : 1, sizeof(double));
        for (size_t i = 0; i < n; i++) {
            r.arrival[i] = t;
            double u = (double)(splitmix64(&state) >> 11) * (1.0 / 9007199254740992.0);
            t += -log(1.0 - u) / o.rate;
        }
        r.t0 = hc_now();
        w4_arrival(&r);
    } else {
        for (size_t i = 0; i < n; i++)
            send_one(&r, i);
    }
    if (hc_run(r.hc, &err) != ES_OK) {
        fprintf(stderr, "evalclient bench: %s\n", err.msg);
        conv_sched_destroy(sched);
        goto done;
    }
    prog_end(&prog);
    cJSON *j = stats_json(&r.stats, &o);
    if (wl == 3) {
        cJSON_AddNumberToObject(j, "conversations", (double)n);
        cJSON_AddNumberToObject(j, "turns", o.turns);
        cJSON_AddNumberToObject(j, "barrier_rounds", conv_sched_rounds(sched));
        cJSON_AddNumberToObject(j, "replies_exact_token_ids", (double)r.stats.exact_replies);
        cJSON_AddNumberToObject(j, "replies_retokenized", (double)r.stats.retokenized_replies);
        if (have_metrics && read_prefix_counters(r.hc, &hits1, &queries1) && queries1 > queries0) {
            cJSON_AddNumberToObject(j, "prefix_cache_hit_rate",
                                    (hits1 - hits0) / (queries1 - queries0));
        } else {
            cJSON_AddNullToObject(j, "prefix_cache_hit_rate");
        }
        conv_sched_destroy(sched);
    }
    if (wl == 4) cJSON_AddNumberToObject(j, "request_rate", o.rate);
    print_table(j);
    if (o.json_path) {
        char *s = cJSON_Print(j);
        FILE *f = fopen(o.json_path, "w");
        if (!f || !s || fprintf(f, "%s\n", s) < 0)
            fprintf(stderr, "cannot write %s\n", o.json_path);
        if (f) fclose(f);
        free(s);
    }
    rc = r.stats.failed > 0 ? 1 : 0;
    cJSON_Delete(j);
done:
    hc_destroy(r.hc);
    free(found_model);
    for (size_t i = 0; r.prompts && i < r.n; i++)
        iv_free(&r.prompts[i]);
    free(r.prompts);
    free(r.arrival);
    free(convs);
    free(w3_user);
    free(r.stats.ttft.v);
    free(r.stats.tpot.v);
    free(r.stats.itl.v);
    free(r.stats.e2el.v);
    return rc;
}
