/*
 * http.c - the libmicrohttpd daemon: routing, body accumulation with a size
 * limit, API-key authentication, OpenAI-shaped errors, and the glue that
 * parks a connection (MHD_suspend_connection) while the engine works on its
 * job. Also owns the request deadline: every TCP connection is tracked
 * (MHD_OPTION_NOTIFY_CONNECTION) and one that has not delivered a whole
 * request within --request-timeout of opening (or of its previous
 * response) is shut down by http_check_deadlines(), because MHD's own
 * timeout only counts silence and a byte a second would hold it forever;
 * one whose bytes wait unread in the kernel is spared (the server is
 * behind, not the client). MHD runs on poll(): see http_start.
 *
 * Owns the daemon and the per-connection state (struct http_conn). Runs on
 * MHD's polling threads (a small pool, MHD_ALLOW_SUSPEND_RESUME): a handler
 * never waits for the engine; it submits and suspends, and job.c resumes the
 * connection from the engine's on_update. Must never block a polling thread
 * on anything but parsing and tokenizing the request it is handling.
 */
#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>

#include <microhttpd.h>

#include "api.h"
#include "json.h"
#include "log.h"

#define LOG_HTTP(lvl, ...) log_msg(lvl, "http", __VA_ARGS__)

enum route_kind {
    R_COMPLETIONS,
    R_CHAT,
    R_MODELS,
    R_MODEL, /* GET /v1/models/{id}: the rest of the path is the id */
    R_HEALTH,
    R_VERSION,
    R_METRICS,
    R_TOKENIZE,
    R_DETOKENIZE,
    R_TOKENIZER_INFO,
};

struct route {
    const char *path;
    const char *method; /* the one method allowed (GET routes also answer HEAD) */
    enum route_kind kind;
    bool auth;      /* API key checked */
    bool json_body; /* body parsed as a JSON object */
    bool prefix;    /* path is a prefix followed by at least one byte */
};

static const struct route routes[] = {
    {"/v1/completions", "POST", R_COMPLETIONS, true, true, false},
    {"/v1/chat/completions", "POST", R_CHAT, true, true, false},
    {"/v1/models", "GET", R_MODELS, true, false, false},
    {"/v1/models/", "GET", R_MODEL, true, false, true},
    {"/health", "GET", R_HEALTH, false, false, false},
    {"/version", "GET", R_VERSION, true, false, false},
    {"/metrics", "GET", R_METRICS, true, false, false},
    {"/tokenize", "POST", R_TOKENIZE, true, true, false},
    {"/detokenize", "POST", R_DETOKENIZE, true, true, false},
    {"/tokenizer_info", "GET", R_TOKENIZER_INFO, true, false, false},
};

struct http_conn {
    struct api_server *srv;
    const char *allow; /* the Allow header of a 405 answer */
    struct MHD_Connection *conn;
    struct strbuf body;  /* request body so far */
    bool too_large;      /* body over the limit: the rest is discarded */
    struct api_job *job; /* generation in flight */
};

/* One TCP connection, for the request deadline (guarded by watch->lock). */
struct conn_watch {
    int fd;
    bool busy;        /* a whole request arrived and is being answered */
    bool cut;         /* already shut down */
    bool warned;      /* the HTTP threads were seen behind on it */
    double opened;    /* CLOCK_MONOTONIC seconds */
    double deadline;  /* CLOCK_MONOTONIC seconds */
    double last_call; /* last access-handler call on it (0: none yet) */
    struct conn_watch *prev, *next;
};

struct http_watch {
    pthread_mutex_t lock;
    struct conn_watch *head;
};

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void api_config_defaults(struct api_config *c)
{
    memset(c, 0, sizeof(*c));
    c->served_model_name = "model";
    c->max_body_bytes = 32u << 20;
    c->max_header_bytes = 64u << 10;
    c->max_connections = 4096;
    c->connection_timeout_s = 600;
    c->max_connections_per_ip = 2048;
    c->request_timeout_s = 60;
    c->http_threads = 4;
    c->max_prompts = 4096;
    c->max_stop = REQ_MAX_STOP_STRINGS;
    c->max_stop_len = 1024;
    c->max_logit_bias = 1024;
}

/* ---------------------------------------------------------------- errors */

static const char *error_type(int status)
{
    switch (status) {
    case 400:
        return "invalid_request_error";
    case 401:
        return "authentication_error";
    case 404:
        return "not_found_error";
    case 405:
        return "method_not_allowed_error";
    case 413:
        return "request_too_large_error";
    case 429:
        return "rate_limit_error";
    case 503:
        return "service_unavailable_error";
    default:
        return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

void api_error_set(struct api_error *e, int status, const char *msg)
{
    e->status = status;
    e->type = error_type(status);
    e->param[0] = '\0';
    snprintf(e->message, sizeof(e->message), "%s", msg);
    /* Validation messages start with the field's name in quotes:
     * "'max_tokens' must be ..." or "'prompt[3]' ...". */
    if (status == 400 && msg[0] == '\'') {
        const char *end = strchr(msg + 1, '\'');
        size_t n = end ? (size_t)(end - msg - 1) : 0;
        const char *br = memchr(msg + 1, '[', n); /* 'prompt[3]' -> prompt */
        if (br) n = (size_t)(br - msg - 1);
        if (n > 0 && n < sizeof(e->param)) {
            memcpy(e->param, msg + 1, n);
            e->param[n] = '\0';
        }
    }
}

char *api_error_json(const struct api_error *e)
{
    /* Written with sb_json_str, not cJSON's printer: a message that quotes
     * user input cut at a fixed size may end inside a UTF-8 character, and
     * the body must still be valid JSON (invalid bytes become U+FFFD). */
    struct strbuf sb = {0};
    const char *type = e->type ? e->type : error_type(e->status);
    enum es_status st = sb_puts(&sb, "{\"error\":{\"message\":");
    if (st == ES_OK) st = sb_json_str(&sb, e->message, strnlen(e->message, sizeof e->message));
    if (st == ES_OK) st = sb_puts(&sb, ",\"type\":");
    if (st == ES_OK) st = sb_json_str(&sb, type, strlen(type));
    if (st == ES_OK) st = sb_puts(&sb, ",\"param\":");
    if (st == ES_OK)
        st = e->param[0] ? sb_json_str(&sb, e->param, strnlen(e->param, sizeof e->param))
                         : sb_puts(&sb, "null");
    if (st == ES_OK) st = sb_printf(&sb, ",\"code\":%d}}", e->status);
    if (st != ES_OK) {
        sb_free(&sb);
        return NULL;
    }
    return sb_steal(&sb);
}

/* ---------------------------------------------------------------- replies */

int http_reply_text(struct http_conn *hc, int status, const char *content_type, char *body_owned)
{
    size_t n = body_owned ? strlen(body_owned) : 0;
    struct MHD_Response *r = MHD_create_response_from_buffer(
        n, body_owned ? body_owned : (void *)"",
        body_owned ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (!r) {
        free(body_owned);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    if (status == 405 && hc->allow) MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, hc->allow);
    enum MHD_Result ret = MHD_queue_response(hc->conn, (unsigned)status, r);
    MHD_destroy_response(r);
    metrics_count_http(hc->srv->metrics, status);
    return ret;
}

int http_reply_json(struct http_conn *hc, int status, char *json_owned)
{
    if (!json_owned) {
        struct api_error e;
        api_error_set(&e, 500, "out of memory rendering the response");
        return http_reply_error(hc, &e);
    }
    return http_reply_text(hc, status, "application/json", json_owned);
}

int http_reply_error(struct http_conn *hc, const struct api_error *e)
{
    if (e->status == 500)
        LOG_HTTP(LOG_WARN, "%d: %s", e->status, e->message);
    else
        LOG_D("http", "%d: %s", e->status, e->message);
    char *s = api_error_json(e);
    if (!s) return MHD_NO;
    return http_reply_text(hc, e->status, "application/json", s);
}

int http_reply_status(struct http_conn *hc, int status, const char *msg)
{
    struct api_error e;
    api_error_set(&e, status, msg);
    return http_reply_error(hc, &e);
}

struct api_server *http_server(struct http_conn *hc)
{
    return hc->srv;
}

/* ---------------------------------------------------------------- jobs */

static int reply_finished_job(struct http_conn *hc)
{
    struct api_job *job = hc->job;
    int status = 200;
    char *s = job->kind == JOB_CHAT ? api_chat_render(job, &status)
                                    : api_completions_render(job, &status);
    return http_reply_json(hc, status, s);
}

int http_run_job(struct http_conn *hc, struct api_job *job)
{
    hc->job = job;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(hc->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    pthread_mutex_lock(&job->lock);
    job->conn = hc->conn;
    job->fd = ci ? ci->connect_fd : -1;
    pthread_mutex_unlock(&job->lock);
    if (job->opts.stream) {
        struct MHD_Response *r = sse_response(job);
        if (!r) return MHD_NO;
        /* The charset is said: HTTP/1.1 clients (python requests) read text/
         * types without one as ISO-8859-1 and garble every non-ASCII token. */
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
                                "text/event-stream; charset=utf-8");
        MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
        enum MHD_Result ret = MHD_queue_response(hc->conn, MHD_HTTP_OK, r);
        MHD_destroy_response(r);
        metrics_count_http(hc->srv->metrics, 200);
        return ret;
    }
    if (job_suspend_unless_finished(job)) return MHD_YES;
    return reply_finished_job(hc);
}

/* ---------------------------------------------------------------- auth */

/* Compares in time that depends only on the lengths, not on where the
 * first difference lies. */
static bool ct_equal(const char *a, size_t na, const char *b, size_t nb)
{
    unsigned char diff = (unsigned char)(na != nb);
    size_t n = na > nb ? na : nb;
    for (size_t i = 0; i < n; i++) {
        unsigned char x = i < na ? (unsigned char)a[i] : 0;
        unsigned char y = i < nb ? (unsigned char)b[i] : 0;
        diff |= (unsigned char)(x ^ y);
    }
    return diff == 0;
}

static bool authorized(struct http_conn *hc)
{
    const char *key = hc->srv->cfg.api_key;
    if (!key || !key[0]) return true;
    const char *h =
        MHD_lookup_connection_value(hc->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h) return false;
    if (strncasecmp(h, "Bearer ", 7) != 0) return false;
    h += 7;
    while (*h == ' ')
        h++;
    return ct_equal(h, strlen(h), key, strlen(key));
}

/* ---------------------------------------------------------------- deadlines */

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    struct api_server *srv = cls;
    struct http_watch *w = srv->watch;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        struct conn_watch *cw = calloc(1, sizeof(*cw));
        *socket_context = cw;
        if (!cw) return; /* not tracked: only MHD's idle timeout applies */
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        cw->fd = ci ? ci->connect_fd : -1;
        cw->opened = mono_s();
        cw->deadline = cw->opened + srv->cfg.request_timeout_s;
        pthread_mutex_lock(&w->lock);
        cw->next = w->head;
        if (w->head) w->head->prev = cw;
        w->head = cw;
        pthread_mutex_unlock(&w->lock);
        return;
    }
    struct conn_watch *cw = *socket_context;
    if (!cw) return;
    /* MHD notifies CLOSED before it closes the socket, so the fd of an
     * entry still in the list is never a reused one. */
    pthread_mutex_lock(&w->lock);
    if (cw->prev)
        cw->prev->next = cw->next;
    else
        w->head = cw->next;
    if (cw->next) cw->next->prev = cw->prev;
    pthread_mutex_unlock(&w->lock);
    free(cw);
    *socket_context = NULL;
}

static struct conn_watch *watch_of(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

/* busy: a request has arrived whole (no deadline while it is answered);
 * otherwise the next one must arrive within request_timeout_s. Every call
 * of the access handler is noted, for the deadline's diagnostics. */
static void watch_set_busy(struct api_server *srv, struct MHD_Connection *conn, bool busy)
{
    struct conn_watch *cw = watch_of(conn);
    if (!cw) return;
    pthread_mutex_lock(&srv->watch->lock);
    cw->busy = busy;
    cw->last_call = mono_s();
    if (!busy) cw->deadline = cw->last_call + srv->cfg.request_timeout_s;
    pthread_mutex_unlock(&srv->watch->lock);
}

static void watch_note_call(struct api_server *srv, struct MHD_Connection *conn)
{
    struct conn_watch *cw = watch_of(conn);
    if (!cw) return;
    pthread_mutex_lock(&srv->watch->lock);
    cw->last_call = mono_s();
    pthread_mutex_unlock(&srv->watch->lock);
}

/* Bytes the kernel holds for fd that no HTTP thread has read yet. */
static int unread_bytes(int fd)
{
    int n = 0;
    return ioctl(fd, FIONREAD, &n) == 0 ? n : 0;
}

void http_check_deadlines(struct api_server *srv)
{
    struct http_watch *w = srv->watch;
    if (!w || srv->cfg.request_timeout_s <= 0) return;
    double now = mono_s();
    pthread_mutex_lock(&w->lock);
    for (struct conn_watch *cw = w->head; cw; cw = cw->next) {
        if (cw->busy || cw->cut || cw->fd < 0 || now < cw->deadline) continue;
        /* Bytes waiting in the kernel mean the server is behind, not the
         * client slow: a trickling client's bytes are read as they come. */
        int unread = unread_bytes(cw->fd);
        if (unread > 0) {
            if (!cw->warned)
                LOG_W("http",
                      "connection fd %d: %d request bytes unread %.1f s after it opened (last "
                      "handler call %.1f s ago); the HTTP threads are behind, so it stays open",
                      cw->fd, unread, now - cw->opened,
                      cw->last_call > 0 ? now - cw->last_call : now - cw->opened);
            cw->warned = true;
            cw->deadline = now + srv->cfg.request_timeout_s;
            continue;
        }
        /* MHD sees end-of-file, closes the connection and notifies. */
        shutdown(cw->fd, SHUT_RDWR);
        cw->cut = true;
        LOG_D("http",
              "connection fd %d: no whole request within %d s (opened %.1f s ago, handler last "
              "called %.1f s ago); closed",
              cw->fd, srv->cfg.request_timeout_s, now - cw->opened,
              cw->last_call > 0 ? now - cw->last_call : -1.0);
    }
    pthread_mutex_unlock(&w->lock);
}

/* ---------------------------------------------------------------- dispatch */

static int dispatch(struct http_conn *hc, const char *url, const char *method)
{
    struct api_server *srv = hc->srv;
    const struct route *rt = NULL;
    size_t ulen = strcspn(url, "?");
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
        size_t plen = strlen(routes[i].path);
        bool match = routes[i].prefix ? ulen > plen : ulen == plen;
        if (match && strncmp(routes[i].path, url, plen) == 0) {
            rt = &routes[i];
            break;
        }
    }
    if (!rt) {
        char msg[300];
        snprintf(msg, sizeof(msg), "no route for %.*s", (int)(ulen > 200 ? 200 : ulen), url);
        return http_reply_status(hc, 404, msg);
    }
    /* HEAD is GET without the body (RFC 9110 9.3.2; MHD leaves the body out). */
    bool get_route = strcmp(rt->method, "GET") == 0;
    if (strcmp(method, rt->method) != 0 && !(get_route && strcmp(method, "HEAD") == 0)) {
        char msg[160];
        snprintf(msg, sizeof(msg), "method %.16s not allowed on %s (use %s)", method, rt->path,
                 rt->method);
        hc->allow = get_route ? "GET, HEAD" : rt->method;
        return http_reply_status(hc, 405, msg);
    }
    if (rt->auth && !authorized(hc))
        return http_reply_status(hc, 401, "invalid or missing API key (Authorization: Bearer ...)");
    if (rt->kind == R_HEALTH) return api_health(hc);
    if (rt->kind == R_METRICS) return api_metrics(hc);
    if (rt->kind == R_VERSION) return api_version(hc);

    int state = api_get_state(srv);
    if (state == API_LOADING) return http_reply_status(hc, 503, "the model is still loading");
    if (hc->too_large) {
        char msg[128];
        snprintf(msg, sizeof(msg), "request body over the limit of %zu bytes",
                 srv->cfg.max_body_bytes);
        return http_reply_status(hc, 413, msg);
    }
    /* Work goes on while any replica serves; /health reports a degraded one. */
    if (state == API_DRAINING || router_num_healthy(srv->router) == 0)
        return http_reply_status(hc, 503, "the server is shutting down or its engine has failed");

    switch (rt->kind) {
    case R_MODELS:
        return api_models(hc);
    case R_MODEL:
        return api_model(hc, url + strlen(rt->path), ulen - strlen(rt->path));
    case R_TOKENIZER_INFO:
        return api_tokenizer_info(hc);
    default:
        break;
    }

    if (js_has_nul_escape(sb_cstr(&hc->body), hc->body.len))
        return http_reply_status(hc, 400, "JSON strings must not contain U+0000 (\\u0000)");
    struct es_err err = {{0}};
    cJSON *body = js_parse(sb_cstr(&hc->body), hc->body.len, 0, &err);
    if (!body) {
        char msg[600];
        snprintf(msg, sizeof(msg), "request body is not valid JSON: %s", err.msg);
        return http_reply_status(hc, 400, msg);
    }
    if (!cJSON_IsObject(body)) {
        cJSON_Delete(body);
        return http_reply_status(hc, 400, "request body must be a JSON object");
    }
    int ret;
    switch (rt->kind) {
    case R_COMPLETIONS:
        ret = api_completions(hc, body);
        break;
    case R_CHAT:
        ret = api_chat(hc, body);
        break;
    case R_TOKENIZE:
        ret = api_tokenize(hc, body);
        break;
    case R_DETOKENIZE:
        ret = api_detokenize(hc, body);
        break;
    default:
        ret = http_reply_status(hc, 404, "no such route");
        break;
    }
    cJSON_Delete(body);
    return ret;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version, const char *upload_data,
                                 size_t *upload_data_size, void **con_cls)
{
    struct api_server *srv = cls;
    struct http_conn *hc = *con_cls;
    if (!hc) {
        watch_note_call(srv, conn);
        hc = calloc(1, sizeof(*hc));
        if (!hc) return MHD_NO;
        hc->srv = srv;
        hc->conn = conn;
        *con_cls = hc;
        const char *cl =
            MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > srv->cfg.max_body_bytes) {
            /* Answered before the body is read: MHD then closes the
             * connection instead of swallowing the upload. */
            hc->too_large = true;
            char msg[128];
            snprintf(msg, sizeof(msg), "request body over the limit of %zu bytes",
                     srv->cfg.max_body_bytes);
            return http_reply_status(hc, 413, msg);
        }
        return MHD_YES;
    }
    if (*upload_data_size) {
        if (!hc->too_large) {
            if (hc->body.len + *upload_data_size > srv->cfg.max_body_bytes ||
                sb_append(&hc->body, upload_data, *upload_data_size) != ES_OK) {
                hc->too_large = true;
                sb_free(&hc->body);
            }
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (hc->job) { /* resumed: the job finished (non-streaming) */
        if (job_suspend_unless_finished(hc->job)) return MHD_YES;
        return reply_finished_job(hc);
    }
    watch_set_busy(srv, conn, true);
    return dispatch(hc, url, method);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct api_server *srv = cls;
    watch_set_busy(srv, conn, false);
    struct http_conn *hc = *con_cls;
    if (!hc) return;
    if (hc->job) {
        bool aborted = toe != MHD_REQUEST_TERMINATED_COMPLETED_OK;
        if (aborted) LOG_D("http", "%s: connection ended early (%d)", hc->job->id, (int)toe);
        job_conn_done(hc->job, aborted);
    }
    sb_free(&hc->body);
    free(hc);
    *con_cls = NULL;
}

/* ---------------------------------------------------------------- daemon */

/* Each connection is a descriptor: lift the soft RLIMIT_NOFILE towards the
 * hard one so that --max-connections is reachable, and say so when it is
 * not (libmicrohttpd would then refuse connections below the limit). */
static void raise_fd_limit(int max_connections)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
    rlim_t want = (rlim_t)max_connections + 256; /* model files, sockets, logs */
    if (rl.rlim_cur < want) {
        rlim_t cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > want ? want : rl.rlim_max;
        if (cur > rl.rlim_cur) {
            rl.rlim_cur = cur;
            (void)setrlimit(RLIMIT_NOFILE, &rl);
        }
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < want)
        LOG_W("http",
              "open-file limit %llu is below --max-connections %d + 256: raise it "
              "(ulimit -n) or lower --max-connections",
              (unsigned long long)rl.rlim_cur, max_connections);
}

enum es_status http_start(struct api_server *srv, const char *host, int port, struct es_err *err)
{
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    char portstr[16];
    snprintf(portstr, sizeof(portstr), "%d", port);
    int rc = getaddrinfo(host, portstr, &hints, &res);
    if (rc != 0 || !res) return es_fail(err, ES_EINVAL, "--host %s: %s", host, gai_strerror(rc));

    raise_fd_limit(srv->cfg.max_connections);
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    /* poll(), not epoll: libmicrohttpd 0.9.75's epoll loop asks for more
     * events after a batch of exactly 128 and then sleeps until its next
     * timeout with those 128 connections unread (their edge-triggered
     * events never come again). EVAL_HTTP_EVENT_LOOP=epoll, to compare. */
    const char *loop = getenv("EVAL_HTTP_EVENT_LOOP");
    flags |= loop && strcmp(loop, "epoll") == 0 ? MHD_USE_EPOLL : MHD_USE_POLL;
    if (res->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    unsigned threads = srv->cfg.http_threads > 0 ? (unsigned)srv->cfg.http_threads : 1;
    srv->watch = calloc(1, sizeof(*srv->watch));
    if (!srv->watch) {
        freeaddrinfo(res);
        return es_fail(err, ES_ENOMEM, "out of memory");
    }
    pthread_mutex_init(&srv->watch->lock, NULL);
    srv->daemon = MHD_start_daemon(
        flags, (uint16_t)port, NULL, NULL, on_access, srv, MHD_OPTION_SOCK_ADDR, res->ai_addr,
        MHD_OPTION_THREAD_POOL_SIZE, threads, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)srv->cfg.max_connections, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)srv->cfg.connection_timeout_s, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        srv->cfg.max_header_bytes, MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, srv, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
        (unsigned)(srv->cfg.max_connections_per_ip > 0 ? srv->cfg.max_connections_per_ip : 0),
        MHD_OPTION_LISTENING_ADDRESS_REUSE, 1u, MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024u,
        MHD_OPTION_END);
    freeaddrinfo(res);
    if (!srv->daemon) {
        pthread_mutex_destroy(&srv->watch->lock);
        free(srv->watch);
        srv->watch = NULL;
        return es_fail(err, ES_EIO, "cannot listen on %s:%d", host, port);
    }
    LOG_I("http", "listening on %s:%d (%u threads)", host, port, threads);
    return ES_OK;
}

unsigned http_open_connections(struct api_server *srv)
{
    if (!srv->daemon) return 0;
    const union MHD_DaemonInfo *di =
        MHD_get_daemon_info(srv->daemon, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
    return di ? di->num_connections : 0;
}

void http_stop(struct api_server *srv)
{
    if (!srv->daemon) return;
    /* MHD must not be stopped with suspended connections: from here on
     * none is parked again (checked under each job's lock), and every
     * parked one is resumed. */
    atomic_store(&srv->closing, true);
    job_resume_all(srv, true);
    MHD_stop_daemon(srv->daemon); /* notifies CLOSED for every connection */
    srv->daemon = NULL;
    if (srv->watch) {
        pthread_mutex_destroy(&srv->watch->lock);
        free(srv->watch);
        srv->watch = NULL;
    }
}
