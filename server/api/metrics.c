/*
 * metrics.c - Prometheus text exposition for GET /metrics.
 *
 * Gauges and token counters come from the router at scrape time: the
 * unlabelled families are totals over the --dp replicas (what dashboards
 * sum), the evalserver_replica_* families repeat them per replica with a
 * replica="i" label, beside the router's placement counters;
 * latency histograms (time to first token, inter-token latency, end-to-end
 * latency, queue time) and request counters are recorded here when a
 * request finishes (job.c calls metrics_observe_request on the engine
 * thread: a few additions under a mutex, nothing else). Inter-token latency
 * is recorded per request as its mean gap, weighted by its number of gaps.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"

#define HIST_MAX_BUCKETS 24

struct histogram {
    const char *name, *help;
    int n_bounds;
    double bounds[HIST_MAX_BUCKETS];       /* upper bounds, seconds, ascending */
    uint64_t counts[HIST_MAX_BUCKETS + 1]; /* per bucket (not cumulative); last = +Inf */
    double sum;
    uint64_t count;
};

enum { H_TTFT, H_ITL, H_E2E, H_QUEUE, H_COUNT };

struct metrics {
    pthread_mutex_t lock;
    struct histogram h[H_COUNT];
    uint64_t finished[5];      /* by enum finish_reason */
    uint64_t http_by_class[6]; /* 1xx..5xx by status / 100 */
};

static void hist_init(struct histogram *h, const char *name, const char *help, const double *b,
                      int n)
{
    h->name = name;
    h->help = help;
    h->n_bounds = n;
    memcpy(h->bounds, b, (size_t)n * sizeof(double));
}

static void hist_observe(struct histogram *h, double v, uint64_t weight)
{
    int i = 0;
    while (i < h->n_bounds && v > h->bounds[i])
        i++;
    h->counts[i] += weight;
    h->sum += v * (double)weight;
    h->count += weight;
}

struct metrics *metrics_create(void)
{
    struct metrics *m = calloc(1, sizeof(*m));
    if (!m) return NULL;
    pthread_mutex_init(&m->lock, NULL);
    static const double lat[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,  0.25, 0.5,
                                 0.75,  1.0,   2.5,  5.0,  7.5,  10.0, 20.0, 40.0, 80.0};
    static const double itl[] = {0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05,
                                 0.075, 0.1,    0.15,  0.2,  0.3,   0.4,  0.5,   0.75, 1.0,  2.5};
    static const double e2e[] = {0.3,  0.5,  0.8,  1.0,  1.5,  2.0,   2.5,   5.0,   10.0, 15.0,
                                 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0};
    hist_init(&m->h[H_TTFT], "evalserver_time_to_first_token_seconds",
              "Time from arrival to the first generated token.", lat,
              (int)(sizeof(lat) / sizeof(lat[0])));
    hist_init(&m->h[H_ITL], "evalserver_inter_token_latency_seconds",
              "Time between generated tokens (per-request mean, weighted by gaps).", itl,
              (int)(sizeof(itl) / sizeof(itl[0])));
    hist_init(&m->h[H_E2E], "evalserver_e2e_request_latency_seconds",
              "Time from arrival to the end of a request.", e2e,
              (int)(sizeof(e2e) / sizeof(e2e[0])));
    hist_init(&m->h[H_QUEUE], "evalserver_request_queue_time_seconds",
              "Time a request waited before its first step.", lat,
              (int)(sizeof(lat) / sizeof(lat[0])));
    return m;
}

void metrics_free(struct metrics *m)
{
    if (!m) return;
    pthread_mutex_destroy(&m->lock);
    free(m);
}

void metrics_observe_request(struct metrics *m, struct request *req)
{
    if (!m) return;
    pthread_mutex_lock(&req->lock);
    double ta = req->t_arrival, ts = req->t_first_scheduled, tf = req->t_first_token,
           te = req->t_finished;
    uint64_t tokens = 0;
    int reasons[REQ_MAX_CHOICES];
    int n = req->params.n;
    for (int c = 0; c < n; c++) {
        tokens += req->choices[c].tokens.n;
        reasons[c] = req->choices[c].finish;
    }
    pthread_mutex_unlock(&req->lock);
    if (te == 0) te = req_now();
    pthread_mutex_lock(&m->lock);
    if (tf > 0 && ta > 0) hist_observe(&m->h[H_TTFT], tf - ta, 1);
    if (ts > 0 && ta > 0) hist_observe(&m->h[H_QUEUE], ts - ta, 1);
    if (ta > 0) hist_observe(&m->h[H_E2E], te - ta, 1);
    /* gaps between tokens: per choice tokens - 1, decoded concurrently */
    uint64_t gaps = tokens > (uint64_t)n ? tokens - (uint64_t)n : 0;
    if (gaps > 0 && tf > 0 && te > tf) {
        double per_choice_gaps = (double)gaps / n;
        hist_observe(&m->h[H_ITL], (te - tf) / per_choice_gaps, gaps);
    }
    for (int c = 0; c < n; c++)
        if (reasons[c] >= 0 && reasons[c] < 5) m->finished[reasons[c]]++;
    pthread_mutex_unlock(&m->lock);
}

void metrics_count_http(struct metrics *m, int status)
{
    if (!m) return;
    int cls = status / 100;
    if (cls < 1 || cls > 5) cls = 5;
    pthread_mutex_lock(&m->lock);
    m->http_by_class[cls]++;
    pthread_mutex_unlock(&m->lock);
}

static void put_hist(struct strbuf *sb, const struct histogram *h)
{
    sb_printf(sb, "# HELP %s %s\n# TYPE %s histogram\n", h->name, h->help, h->name);
    uint64_t cum = 0;
    for (int i = 0; i < h->n_bounds; i++) {
        cum += h->counts[i];
        sb_printf(sb, "%s_bucket{le=\"%g\"} %llu\n", h->name, h->bounds[i],
                  (unsigned long long)cum);
    }
    cum += h->counts[h->n_bounds];
    sb_printf(sb, "%s_bucket{le=\"+Inf\"} %llu\n", h->name, (unsigned long long)cum);
    sb_printf(sb, "%s_sum %.9g\n%s_count %llu\n", h->name, h->sum, h->name,
              (unsigned long long)h->count);
}

static void put_metric(struct strbuf *sb, const char *name, const char *type, const char *help,
                       double v)
{
    sb_printf(sb, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", name, help, name, type, name, v);
}

/* One family with a sample per replica. */
static void put_replica_family(struct strbuf *sb, struct router *r, const char *name,
                               const char *type, const char *help,
                               double (*get)(const struct router_replica_stats *))
{
    sb_printf(sb, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
    for (int i = 0; r && i < router_num_replicas(r); i++) {
        struct router_replica_stats rs;
        router_get_stats(r, i, &rs);
        sb_printf(sb, "%s{replica=\"%d\"} %.17g\n", name, i, get(&rs));
    }
}

static double rs_running(const struct router_replica_stats *s) { return s->engine.running; }
static double rs_waiting(const struct router_replica_stats *s) { return s->engine.waiting; }
static double rs_kv_usage(const struct router_replica_stats *s)
{
    const struct engine_stats *e = &s->engine;
    return e->num_kv_blocks > 0 ? 1.0 - (double)e->free_kv_blocks / e->num_kv_blocks : 0.0;
}
static double rs_pc_queries(const struct router_replica_stats *s)
{
    return (double)s->engine.prefix_cache_queries;
}
static double rs_pc_hits(const struct router_replica_stats *s)
{
    return (double)s->engine.prefix_cache_hits;
}
static double rs_prompt(const struct router_replica_stats *s)
{
    return (double)s->engine.prompt_tokens;
}
static double rs_gen(const struct router_replica_stats *s)
{
    return (double)s->engine.generation_tokens;
}
static double rs_placed(const struct router_replica_stats *s)
{
    return (double)s->placed_requests;
}
static double rs_affinity(const struct router_replica_stats *s)
{
    return (double)s->affinity_hits;
}
static double rs_healthy(const struct router_replica_stats *s) { return s->engine.healthy; }

char *metrics_render(struct metrics *m, struct router *r, unsigned open_connections)
{
    struct strbuf sb = {0};
    struct engine_stats st;
    memset(&st, 0, sizeof(st));
    if (r) router_get_total(r, &st);
    put_metric(&sb, "evalserver_http_connections_open", "gauge", "Client connections open.",
               open_connections);
    put_metric(&sb, "evalserver_num_requests_running", "gauge", "Sequences running.", st.running);
    put_metric(&sb, "evalserver_num_requests_waiting", "gauge", "Requests waiting.", st.waiting);
    double usage =
        st.num_kv_blocks > 0 ? 1.0 - (double)st.free_kv_blocks / (double)st.num_kv_blocks : 0.0;
    put_metric(&sb, "evalserver_kv_cache_usage_perc", "gauge",
               "Fraction of KV blocks in use (1 = full).", usage);
    put_metric(&sb, "evalserver_kv_cache_blocks", "gauge", "KV blocks in total.", st.num_kv_blocks);
    put_metric(&sb, "evalserver_kv_cache_free_blocks", "gauge", "KV blocks free or evictable.",
               st.free_kv_blocks);
    put_metric(&sb, "evalserver_prefix_cache_queries_total", "counter",
               "Prompt tokens looked up in the prefix cache.", (double)st.prefix_cache_queries);
    put_metric(&sb, "evalserver_prefix_cache_hits_total", "counter",
               "Prompt tokens found in the prefix cache.", (double)st.prefix_cache_hits);
    put_metric(&sb, "evalserver_prompt_tokens_total", "counter", "Prompt tokens admitted.",
               (double)st.prompt_tokens);
    put_metric(&sb, "evalserver_generation_tokens_total", "counter", "Tokens generated.",
               (double)st.generation_tokens);
    put_metric(&sb, "evalserver_num_preemptions_total", "counter", "Sequences preempted.",
               (double)st.preemptions);
    put_metric(&sb, "evalserver_engine_steps_total", "counter", "Engine steps.", (double)st.steps);
    put_metric(&sb, "evalserver_engine_steps_scheduled_ahead_total", "counter",
               "Steps scheduled and built while the previous step ran.",
               (double)st.steps_scheduled_ahead);
    put_metric(&sb, "evalserver_engine_step_host_seconds_total", "counter",
               "Engine-thread time not spent waiting for a forward (scheduling, batch building, "
               "output); with async scheduling mostly hidden behind the device.",
               st.step_host_seconds);
    put_metric(&sb, "evalserver_engine_step_device_seconds_total", "counter",
               "Time inside backend forward (the device's share of each step).",
               st.step_device_seconds);
    put_metric(&sb, "evalserver_engine_step_gap_seconds_total", "counter",
               "Time between two forwards while work waited: the host time the device saw.",
               st.step_gap_seconds);
    put_metric(&sb, "evalserver_engine_healthy", "gauge", "1 while every replica works.",
               r && st.healthy ? 1 : 0);
    put_metric(&sb, "evalserver_num_replicas", "gauge", "Data-parallel replicas (--dp).",
               r ? router_num_replicas(r) : 0);
    put_replica_family(&sb, r, "evalserver_replica_num_requests_running", "gauge",
                       "Sequences running, per replica.", rs_running);
    put_replica_family(&sb, r, "evalserver_replica_num_requests_waiting", "gauge",
                       "Sequences waiting, per replica.", rs_waiting);
    put_replica_family(&sb, r, "evalserver_replica_kv_cache_usage_perc", "gauge",
                       "Fraction of KV blocks in use, per replica.", rs_kv_usage);
    put_replica_family(&sb, r, "evalserver_replica_prefix_cache_queries_total", "counter",
                       "Prompt tokens looked up in the prefix cache, per replica.",
                       rs_pc_queries);
    put_replica_family(&sb, r, "evalserver_replica_prefix_cache_hits_total", "counter",
                       "Prompt tokens found in the prefix cache, per replica.", rs_pc_hits);
    put_replica_family(&sb, r, "evalserver_replica_prompt_tokens_total", "counter",
                       "Prompt tokens admitted, per replica.", rs_prompt);
    put_replica_family(&sb, r, "evalserver_replica_generation_tokens_total", "counter",
                       "Tokens generated, per replica.", rs_gen);
    put_replica_family(&sb, r, "evalserver_replica_requests_routed_total", "counter",
                       "Requests the router placed on the replica.", rs_placed);
    put_replica_family(&sb, r, "evalserver_replica_prefix_affinity_hits_total", "counter",
                       "Requests placed by prefix affinity.", rs_affinity);
    put_replica_family(&sb, r, "evalserver_replica_healthy", "gauge",
                       "1 while the replica works.", rs_healthy);

    pthread_mutex_lock(&m->lock);
    static const char *const names[5] = {"none", "stop", "length", "abort", "error"};
    sb_printf(&sb, "# HELP evalserver_request_success_total Finished choices by reason.\n"
                   "# TYPE evalserver_request_success_total counter\n");
    for (int i = 1; i < 5; i++)
        sb_printf(&sb, "evalserver_request_success_total{finished_reason=\"%s\"} %llu\n", names[i],
                  (unsigned long long)m->finished[i]);
    sb_printf(&sb, "# HELP evalserver_http_responses_total HTTP responses by status class.\n"
                   "# TYPE evalserver_http_responses_total counter\n");
    for (int i = 1; i <= 5; i++)
        sb_printf(&sb, "evalserver_http_responses_total{code=\"%dxx\"} %llu\n", i,
                  (unsigned long long)m->http_by_class[i]);
    for (int i = 0; i < H_COUNT; i++)
        put_hist(&sb, &m->h[i]);
    pthread_mutex_unlock(&m->lock);
    return sb_steal(&sb);
}
