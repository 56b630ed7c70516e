/*
 * main.c - evalserver's life cycle.
 *
 * Reads the options (options.c), starts HTTP first (so /health answers 503
 * while the model loads), loads the model config, tokenizer, chat
 * template, backends and engines (launch.c), then serves. SIGTERM/SIGINT
 * are taken synchronously by the main thread (blocked everywhere, read
 * with sigtimedwait): the server stops accepting work (503), lets running
 * requests finish within --shutdown-timeout, then aborts the rest and
 * exits 0. Loading runs on a thread of its own so that the main thread
 * keeps reading signals meanwhile (a large model, or node 0 waiting up to
 * --node-timeout for the other nodes): a signal before the model serves
 * exits 0 at once, leaving the unfinished load to the process's exit.
 * If the engine dies the server answers what it can and exits 1.
 * A bad command line exits 2. This is the only file that decides the
 * process's exit status.
 *
 * Multi-node tensor parallelism (--nnodes N): node 0 is the process
 * above, its one replica a backend_tp group whose ranks span the nodes;
 * every other node (--node-rank R > 0) serves no HTTP and runs no engine:
 * it loads its ranks' shards and replays node 0's steps
 * (launch_worker_node) until node 0 says stop (exit 0) or fails (exit 1).
 */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "api.h"
#include "fingerprint.h"
#include "launch.h"
#include "log.h"
#include "options.h"

#define LOG_MAIN(...) LOG_I("main", __VA_ARGS__)

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Waits until no generation request is in flight or the deadline passes. */
static bool wait_idle(struct api_server *srv, double deadline)
{
    while (atomic_load(&srv->http_inflight) > 0) {
        if (mono_now() >= deadline) return false;
        usleep(20 * 1000);
    }
    return true;
}

/* Signals are taken by this thread only, synchronously: SIGTERM and SIGINT
 * are blocked (every thread started later inherits the mask) and sigs
 * receives them for sigtimedwait. */
static void block_signals(sigset_t *sigs)
{
    sigemptyset(sigs);
    sigaddset(sigs, SIGTERM);
    sigaddset(sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
}

/* The HTTP server's configuration and state before it starts (loading). */
static void server_init(struct api_server *srv, const struct options *o)
{
    memset(srv, 0, sizeof(*srv));
    api_config_defaults(&srv->cfg);
    srv->cfg.served_model_name = o->served_model_name ? o->served_model_name : o->model;
    srv->cfg.model_dir = o->model;
    srv->cfg.api_key = o->api_key && o->api_key[0] ? o->api_key : NULL;
    srv->cfg.http_threads = o->http_threads;
    if (o->max_body_bytes > 0) srv->cfg.max_body_bytes = (size_t)o->max_body_bytes;
    if (o->max_header_bytes > 0) srv->cfg.max_header_bytes = (size_t)o->max_header_bytes;
    if (o->max_connections > 0) srv->cfg.max_connections = o->max_connections;
    if (o->max_connections_per_ip >= 0) srv->cfg.max_connections_per_ip = o->max_connections_per_ip;
    if (o->request_timeout >= 0) srv->cfg.request_timeout_s = o->request_timeout;
    srv->cfg.trust_request_chat_template = o->trust_request_chat_template;
    if (o->enable_auto_tool_choice && o->tool_call_parser)
        tool_parser_from_name(o->tool_call_parser, &srv->cfg.tool_call_parser); /* checked */
    srv->created = (long)time(NULL);
    pthread_mutex_init(&srv->jobs_lock, NULL);
    srv->metrics = metrics_create();
    api_set_state(srv, API_LOADING);
}

/* Hands what was loaded to the handlers; api_set_state(API_SERVING)
 * publishes it. */
static void server_publish(struct api_server *srv, struct launch *L, const struct options *o)
{
    srv->router = L->router;
    srv->tok = L->tok;
    srv->ct = L->ct;
    srv->mc = &L->mc;
    srv->max_model_len = router_max_model_len(L->router);
    int32_t tv = tok_vocab_size(L->tok);
    srv->vocab_limit = L->mc.vocab_size < tv ? L->mc.vocab_size : tv;
    for (int32_t id = 0; id < tv; id++) {
        const char *piece = tok_id_to_piece(L->tok, id);
        size_t len = piece ? strlen(piece) : 0;
        if (len > srv->max_token_bytes) srv->max_token_bytes = len;
    }
    snprintf(srv->fingerprint, sizeof(srv->fingerprint), "fp_%016llx",
             (unsigned long long)fingerprint_served(o, LAUNCH_KV_BLOCK_SIZE));
}

/* launch_load on a thread of its own (load_or_signal). */
struct loader {
    const struct options *o;
    struct launch *L;
    struct es_err err;
    enum es_status st;
    atomic_bool done;
};

static void *loader_main(void *arg)
{
    struct loader *ld = arg;
    ld->st = launch_load(ld->o, ld->L, &ld->err);
    atomic_store(&ld->done, true);
    return NULL;
}

/* Loads the model (launch_load) while this thread keeps taking signals.
 * Returns 0 once loaded, -1 when loading failed (the reason in *err), or
 * the number of a SIGTERM/SIGINT that came first: the loader thread is
 * then still running, owns L and must be left to the process's exit. */
static int load_or_signal(struct api_server *srv, const sigset_t *sigs, const struct options *o,
                          struct launch *L, struct es_err *err)
{
    struct loader *ld = calloc(1, sizeof(*ld));
    if (!ld) {
        es_fail(err, ES_ENOMEM, "out of memory");
        return -1;
    }
    ld->o = o;
    ld->L = L;
    atomic_init(&ld->done, false);
    pthread_t th;
    if (pthread_create(&th, NULL, loader_main, ld) != 0) {
        free(ld);
        es_fail(err, ES_ERR, "cannot start the loading thread");
        return -1;
    }
    for (;;) {
        if (atomic_load(&ld->done)) break;
        struct timespec tick = {0, 50 * 1000 * 1000};
        int sig = sigtimedwait(sigs, NULL, &tick);
        if (sig == SIGTERM || sig == SIGINT) {
            pthread_detach(th); /* ld stays with the loader */
            return sig;
        }
        http_check_deadlines(srv);
    }
    pthread_join(th, NULL);
    int result = ld->st == ES_OK ? 0 : -1;
    if (result != 0) *err = ld->err;
    free(ld);
    return result;
}

/* Serves until SIGTERM/SIGINT (returns 0) or a failed replica (returns 1). */
static int serve(struct api_server *srv, const sigset_t *sigs, double shutdown_timeout)
{
    for (;;) {
        struct timespec tick = {0, 100 * 1000 * 1000};
        int sig = sigtimedwait(sigs, NULL, &tick);
        if (sig == SIGTERM || sig == SIGINT) {
            LOG_MAIN("signal %d: draining (up to %.0f s)", sig, shutdown_timeout);
            return 0;
        }
        job_check_disconnects(srv);
        http_check_deadlines(srv);
        /* One failed replica ends the process (exit 1) so that systemd or
         * Kubernetes restarts it whole. The failed replica has already
         * answered its requests with errors; new work gets 503 and the
         * healthy replicas finish theirs within --shutdown-timeout, as on
         * SIGTERM, so that no good answer is cut short. */
        if (!router_healthy(srv->router)) {
            LOG_E("main",
                  "%d of %d engine replicas failed (see above); refusing new work, "
                  "finishing in-flight requests (up to %.0f s), then exiting with status 1",
                  router_num_replicas(srv->router) - router_num_healthy(srv->router),
                  router_num_replicas(srv->router), shutdown_timeout);
            return 1;
        }
    }
}

/* Refuses new work, lets running requests finish within the timeout, then
 * aborts the rest. */
static void drain(struct api_server *srv, double shutdown_timeout)
{
    api_set_state(srv, API_DRAINING);
    double deadline = mono_now() + shutdown_timeout;
    while (atomic_load(&srv->http_inflight) > 0 && mono_now() < deadline) {
        job_check_disconnects(srv);
        http_check_deadlines(srv);
        usleep(20 * 1000);
    }
    if (!wait_idle(srv, mono_now())) {
        LOG_W("main", "%d requests still running after the timeout: aborting them",
              atomic_load(&srv->http_inflight));
        job_resume_all(srv, true);
        wait_idle(srv, mono_now() + 5.0);
    }
}

int main(int argc, char **argv)
{
    struct options o;
    options_defaults(&o);
    enum options_result parsed = options_parse(argc, argv, &o);
    if (parsed == OPTIONS_HELP) {
        options_usage(stdout);
        return 0;
    }
    if (parsed != OPTIONS_RUN || !options_apply_log_level(&o)) return 2;
    if (o.node_rank > 0) return launch_worker_node(&o);
    char *key_from_file = NULL;
    if (!options_resolve_api_key(&o, &key_from_file)) return 2;

    sigset_t sigs;
    block_signals(&sigs);
    struct api_server srv;
    server_init(&srv, &o);
    struct es_err err = {{0}};
    if (http_start(&srv, o.host, o.port, &err) != ES_OK) {
        fprintf(stderr, "evalserver: %s\n", err.msg);
        metrics_free(srv.metrics);
        free(key_from_file);
        return 1;
    }

    struct launch L;
    memset(&L, 0, sizeof(L));
    double t0 = mono_now();
    LOG_MAIN("loading %s on %s (tensor parallel %d, data parallel %d)", o.model, o.device, o.tp,
             o.dp);
    int loaded = load_or_signal(&srv, &sigs, &o, &L, &err);
    if (loaded > 0) {
        /* The loader may be anywhere in launch_load (reading weights,
         * waiting for nodes): nothing it holds can be freed under it, and
         * nothing was served, so the process ends here. */
        LOG_MAIN("signal %d while loading: exiting without serving", loaded);
        http_stop(&srv);
        fflush(NULL);
        _exit(0);
    }
    if (loaded < 0) {
        fprintf(stderr, "evalserver: loading %s failed: %s\n", o.model, err.msg);
        http_stop(&srv);
        launch_unload(&L);
        metrics_free(srv.metrics);
        free(key_from_file);
        return 1;
    }
    server_publish(&srv, &L, &o);
    api_set_state(&srv, API_SERVING);
    LOG_MAIN("serving '%s' on http://%s:%d (loaded in %.1f s, max_model_len %d, %s)",
             srv.cfg.served_model_name, o.host, o.port, mono_now() - t0, srv.max_model_len,
             srv.fingerprint);

    int exit_code = serve(&srv, &sigs, o.shutdown_timeout);
    drain(&srv, o.shutdown_timeout);
    http_stop(&srv);
    router_stop(L.router, false);
    launch_unload(&L);
    metrics_free(srv.metrics);
    pthread_mutex_destroy(&srv.jobs_lock);
    free(key_from_file);
    LOG_MAIN("bye");
    return exit_code;
}
