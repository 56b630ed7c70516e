/*
 * http_client.c - libcurl multi transport: a waiting queue, up to
 * max_inflight transfers over keep-alive connections, SSE parsing, retries
 * with exponential backoff and jitter, timers, and one fd watched for
 * reading and one for writing.
 *
 * Owns every easy handle and every request record. Retries happen on
 * connection errors, timeouts, 429 and 5xx (waiting at least a Retry-After
 * the server sends; an error event with such a code inside a stream counts
 * the same), and on a stream that ends before "data: [DONE]"; never on
 * another 4xx. A stream cut short is never an answer: a server killed
 * mid-stream ends cleanly a body framed by the connection's close.
 * Callbacks run on the hc_run thread; this file never blocks inside the
 * loop, except in hc_get_sync, which is meant for use outside it.
 */
#include "http_client.h"

#include <curl/curl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "json.h"

struct hc_req {
    struct hc_req *next; /* waiting queue link */
    char *path;
    char *body; /* NULL for GET */
    bool stream;
    hc_done_fn done;
    void *ud;
    CURL *easy;
    struct curl_slist *headers;
    struct strbuf line; /* SSE: bytes of the line being assembled */
    bool sse_done;
    int sse_error_code; /* "code" of a stream's error event; 0: none or not a number */
    struct hc_result res;
};

struct hc_timer_ent {
    double at;
    hc_event_fn fn;
    void *ud;
    struct hc_req *retry; /* when set, the timer re-queues this request */
};

struct hc {
    struct hc_opts opts;
    char **urls; /* [n_urls], trailing '/' removed */
    char *auth_header;
    CURLM *multi;
    struct hc_req *q_head, *q_tail;
    size_t n_queued;
    size_t n_running;
    struct hc_timer_ent *timers;
    size_t n_timers, cap_timers;
    int watch_fd; /* readable: watch_fn(watch_ud) */
    hc_event_fn watch_fn;
    void *watch_ud;
    int wwatch_fd; /* writable: wwatch_fn(wwatch_ud) */
    hc_event_fn wwatch_fn;
    void *wwatch_ud;
    int holds;
    int rr;
    uint64_t jitter_state;
};

double hc_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double jitter01(struct hc *hc)
{
    /* xorshift64*: retries only need decorrelation, not quality */
    uint64_t x = hc->jitter_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    hc->jitter_state = x;
    return (double)((x * 0x2545F4914F6CDD1DULL) >> 11) / 9007199254740992.0;
}

struct hc *hc_create(const struct hc_opts *opts, struct es_err *err)
{
    static bool curl_ready;
    if (!curl_ready) {
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
            es_fail(err, ES_ERR, "curl_global_init failed");
            return NULL;
        }
        curl_ready = true;
    }
    if (opts->n_urls < 1) {
        es_fail(err, ES_EINVAL, "no server URL given");
        return NULL;
    }
    struct hc *hc = calloc(1, sizeof(*hc));
    if (!hc) goto nomem;
    hc->opts = *opts;
    if (hc->opts.max_inflight < 1) hc->opts.max_inflight = 1;
    if (hc->opts.backoff_s <= 0) hc->opts.backoff_s = 0.5;
    hc->watch_fd = -1;
    hc->wwatch_fd = -1;
    hc->jitter_state = 0x9E3779B97F4A7C15ULL ^ (uint64_t)(hc_now() * 1e9);
    hc->urls = calloc((size_t)opts->n_urls, sizeof(char *));
    if (!hc->urls) goto nomem;
    for (int i = 0; i < opts->n_urls; i++) {
        hc->urls[i] = strdup(opts->urls[i]);
        if (!hc->urls[i]) goto nomem;
        size_t n = strlen(hc->urls[i]);
        while (n > 0 && hc->urls[i][n - 1] == '/')
            hc->urls[i][--n] = '\0';
        /* "http://host:8000/v1", as OpenAI clients write it, means the same server */
        if (n >= 3 && strcmp(hc->urls[i] + n - 3, "/v1") == 0) hc->urls[i][n -= 3] = '\0';
    }
    hc->opts.urls = NULL;
    if (opts->api_key && *opts->api_key) {
        struct strbuf sb = {0};
        if (sb_printf(&sb, "Authorization: Bearer %s", opts->api_key) != ES_OK) goto nomem;
        hc->auth_header = sb_steal(&sb);
    }
    hc->multi = curl_multi_init();
    if (!hc->multi) goto nomem;
    curl_multi_setopt(hc->multi, CURLMOPT_MAXCONNECTS, (long)hc->opts.max_inflight + 16);
    return hc;
nomem:
    es_fail(err, ES_ENOMEM, "out of memory creating the HTTP client");
    hc_destroy(hc);
    return NULL;
}

static void req_free(struct hc_req *r)
{
    if (!r) return;
    if (r->easy) curl_easy_cleanup(r->easy);
    curl_slist_free_all(r->headers);
    free(r->path);
    free(r->body);
    sb_free(&r->line);
    cJSON_Delete(r->res.json);
    sb_free(&r->res.body);
    sb_free(&r->res.text);
    free(r->res.chunk_t);
    free(r);
}

void hc_destroy(struct hc *hc)
{
    if (!hc) return;
    while (hc->q_head) {
        struct hc_req *r = hc->q_head;
        hc->q_head = r->next;
        req_free(r);
    }
    for (size_t i = 0; i < hc->n_timers; i++)
        req_free(hc->timers[i].retry);
    free(hc->timers);
    /* transfers still attached belong to an aborted run; the process is ending */
    if (hc->multi) curl_multi_cleanup(hc->multi);
    if (hc->urls)
        for (int i = 0; i < hc->opts.n_urls; i++)
            free(hc->urls[i]);
    free(hc->urls);
    free(hc->auth_header);
    free(hc);
}

int hc_n_servers(const struct hc *hc)
{
    return hc->opts.n_urls;
}

int hc_next_server(struct hc *hc)
{
    int s = hc->rr;
    int n = hc->opts.n_balanced > 0 && hc->opts.n_balanced <= hc->opts.n_urls ? hc->opts.n_balanced
                                                                              : hc->opts.n_urls;
    hc->rr = (hc->rr + 1) % n;
    return s;
}

const char *hc_url(const struct hc *hc, int server)
{
    return hc->urls[server];
}

size_t hc_inflight(const struct hc *hc)
{
    return hc->n_running + hc->n_queued;
}

void hc_hold(struct hc *hc, int delta)
{
    hc->holds += delta;
}

void hc_watch_fd(struct hc *hc, int fd, hc_event_fn fn, void *ud)
{
    hc->watch_fd = fd;
    hc->watch_fn = fn;
    hc->watch_ud = ud;
}

void hc_watch_write_fd(struct hc *hc, int fd, hc_event_fn fn, void *ud)
{
    hc->wwatch_fd = fd;
    hc->wwatch_fn = fn;
    hc->wwatch_ud = ud;
}

static enum es_status timer_push(struct hc *hc, struct hc_timer_ent ent)
{
    if (hc->n_timers == hc->cap_timers) {
        size_t cap = hc->cap_timers ? hc->cap_timers * 2 : 16;
        struct hc_timer_ent *t = realloc(hc->timers, cap * sizeof(*t));
        if (!t) return ES_ENOMEM;
        hc->timers = t;
        hc->cap_timers = cap;
    }
    hc->timers[hc->n_timers++] = ent;
    return ES_OK;
}

enum es_status hc_timer(struct hc *hc, double at, hc_event_fn fn, void *ud)
{
    struct hc_timer_ent ent = {.at = at, .fn = fn, .ud = ud};
    return timer_push(hc, ent);
}

static void enqueue(struct hc *hc, struct hc_req *r, bool urgent)
{
    r->next = NULL;
    if (!hc->q_head) {
        hc->q_head = hc->q_tail = r;
    } else if (urgent) {
        r->next = hc->q_head;
        hc->q_head = r;
    } else {
        hc->q_tail->next = r;
        hc->q_tail = r;
    }
    hc->n_queued++;
}

enum es_status hc_submit(struct hc *hc, int server, const char *path, const char *body, bool stream,
                         bool urgent, hc_done_fn done, void *ud)
{
    struct hc_req *r = calloc(1, sizeof(*r));
    if (!r) return ES_ENOMEM;
    r->path = strdup(path);
    r->body = body ? strdup(body) : NULL;
    if (!r->path || (body && !r->body)) {
        req_free(r);
        return ES_ENOMEM;
    }
    r->stream = stream;
    r->done = done;
    r->ud = ud;
    r->res.server = server < 0 || server >= hc->opts.n_urls ? 0 : server;
    r->res.t_submit = hc_now();
    enqueue(hc, r, urgent);
    return ES_OK;
}

/* ---- SSE ---------------------------------------------------------------- */

/* Token counts of a reply's "usage" object; a value that is not a sane
 * count (negative, fractional, beyond 2^53) is ignored, never converted. */
static void read_usage(const cJSON *usage, struct hc_result *res)
{
    int64_t v;
    if (!cJSON_IsObject(usage)) return;
    if (js_as_int(cJSON_GetObjectItemCaseSensitive(usage, "prompt_tokens"), "prompt_tokens", 0,
                  INT64_C(1) << 53, &v, NULL) == ES_OK)
        res->prompt_tokens = v;
    if (js_as_int(cJSON_GetObjectItemCaseSensitive(usage, "completion_tokens"), "completion_tokens",
                  0, INT64_C(1) << 53, &v, NULL) == ES_OK)
        res->completion_tokens = v;
}

/* Replies are parsed into NUL-terminated strings, so a U+0000 in a reply
 * (a model may generate the byte) is taken as U+FFFD: the text after it is
 * kept, and a conversation can send it back (servers refuse \u0000). */
static void warn_nul(size_t n_masked)
{
    static bool warned; /* the loop runs on one thread */
    if (n_masked && !warned) {
        warned = true;
        fprintf(stderr, "evalclient: a reply held U+0000; it is kept as U+FFFD (said once)\n");
    }
}

static void sse_event(struct hc_req *r, const char *data, size_t n)
{
    if (n == 6 && memcmp(data, "[DONE]", 6) == 0) {
        r->sse_done = true;
        return;
    }
    cJSON *ev = js_parse(data, n, 0, NULL);
    if (!ev) return;
    const cJSON *fp = cJSON_GetObjectItemCaseSensitive(ev, "system_fingerprint");
    if (cJSON_IsString(fp))
        snprintf(r->res.fingerprint, sizeof(r->res.fingerprint), "%s", fp->valuestring);
    const cJSON *error = cJSON_GetObjectItemCaseSensitive(ev, "error");
    if (error && !cJSON_IsNull(error)) {
        const cJSON *msg = cJSON_GetObjectItemCaseSensitive(error, "message");
        const cJSON *code = cJSON_GetObjectItemCaseSensitive(error, "code");
        snprintf(r->res.error, sizeof(r->res.error), "stream error: %s",
                 cJSON_IsString(msg) ? msg->valuestring : "unknown");
        r->res.st = ES_ERR;
        if (cJSON_IsNumber(code)) r->sse_error_code = code->valueint;
    }
    const cJSON *choices = cJSON_GetObjectItemCaseSensitive(ev, "choices");
    const cJSON *c0 = cJSON_IsArray(choices) ? cJSON_GetArrayItem(choices, 0) : NULL;
    if (c0) {
        const cJSON *txt = cJSON_GetObjectItemCaseSensitive(c0, "text");
        if (!cJSON_IsString(txt)) {
            const cJSON *delta = cJSON_GetObjectItemCaseSensitive(c0, "delta");
            txt = delta ? cJSON_GetObjectItemCaseSensitive(delta, "content") : NULL;
        }
        if (cJSON_IsString(txt) && txt->valuestring[0]) {
            double now = hc_now();
            if (r->res.n_chunks == 0) r->res.t_first = now;
            sb_puts(&r->res.text, txt->valuestring);
            if (r->res.n_chunks == r->res.cap_chunks) {
                size_t cap = r->res.cap_chunks ? r->res.cap_chunks * 2 : 64;
                double *t = realloc(r->res.chunk_t, cap * sizeof(*t));
                if (t) {
                    r->res.chunk_t = t;
                    r->res.cap_chunks = cap;
                }
            }
            if (r->res.n_chunks < r->res.cap_chunks) r->res.chunk_t[r->res.n_chunks++] = now;
        }
        const cJSON *fr = cJSON_GetObjectItemCaseSensitive(c0, "finish_reason");
        if (cJSON_IsString(fr))
            snprintf(r->res.finish_reason, sizeof(r->res.finish_reason), "%s", fr->valuestring);
    }
    const cJSON *usage = cJSON_GetObjectItemCaseSensitive(ev, "usage");
    read_usage(usage, &r->res);
    cJSON_Delete(ev);
}

static void sse_feed(struct hc_req *r, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] != '\n') {
            sb_putc(&r->line, p[i]);
            continue;
        }
        size_t len = r->line.len;
        const char *s = sb_cstr(&r->line);
        if (len > 0 && s[len - 1] == '\r') len--;
        if (len >= 5 && memcmp(s, "data:", 5) == 0) {
            size_t off = 5;
            if (off < len && s[off] == ' ') off++;
            warn_nul(js_mask_nul_escapes(r->line.s + off, len - off));
            sse_event(r, s + off, len - off);
        }
        sb_clear(&r->line);
    }
}

static size_t on_body(char *p, size_t size, size_t nmemb, void *ud)
{
    struct hc_req *r = ud;
    size_t n = size * nmemb;
    if (r->res.t_first == 0 && !r->stream) r->res.t_first = hc_now();
    long code = 0;
    curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &code);
    if (r->stream && code >= 200 && code < 300) {
        sse_feed(r, p, n);
    } else if (sb_append(&r->res.body, p, n) != ES_OK) {
        return 0;
    }
    return n;
}

/* ---- attempts ----------------------------------------------------------- */

static void reset_attempt(struct hc_req *r)
{
    cJSON_Delete(r->res.json);
    r->res.json = NULL;
    sb_clear(&r->res.body);
    sb_clear(&r->res.text);
    sb_clear(&r->line);
    r->res.n_chunks = 0;
    r->res.finish_reason[0] = '\0';
    r->res.error[0] = '\0';
    r->res.st = ES_OK;
    r->res.http_status = 0;
    r->res.prompt_tokens = -1;
    r->res.completion_tokens = -1;
    r->res.t_first = 0;
    r->sse_done = false;
    r->sse_error_code = 0;
}

static enum es_status start_attempt(struct hc *hc, struct hc_req *r)
{
    reset_attempt(r);
    if (r->easy) curl_easy_cleanup(r->easy);
    r->easy = curl_easy_init();
    if (!r->easy) return ES_ENOMEM;
    if (!r->headers) {
        r->headers = curl_slist_append(NULL, "Content-Type: application/json");
        if (hc->auth_header) r->headers = curl_slist_append(r->headers, hc->auth_header);
        if (r->stream) r->headers = curl_slist_append(r->headers, "Accept: text/event-stream");
        r->headers = curl_slist_append(r->headers, "Expect:");
    }
    struct strbuf url = {0};
    if (sb_printf(&url, "%s%s", hc->urls[r->res.server], r->path) != ES_OK) return ES_ENOMEM;
    CURL *e = r->easy;
    curl_easy_setopt(e, CURLOPT_URL, sb_cstr(&url));
    sb_free(&url);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->headers);
    if (r->body) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->body);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)strlen(r->body));
    }
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(e, CURLOPT_PRIVATE, r);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
    if (hc->opts.timeout_s > 0)
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(hc->opts.timeout_s * 1000.0));
    r->res.attempts++;
    r->res.t_start = hc_now();
    if (curl_multi_add_handle(hc->multi, e) != CURLM_OK) return ES_ERR;
    hc->n_running++;
    return ES_OK;
}

static void finish(struct hc *hc, struct hc_req *r)
{
    (void)hc;
    r->done(&r->res, r->ud);
    req_free(r);
}

static void fill_from_json(struct hc_req *r)
{
    const cJSON *j = r->res.json;
    const cJSON *fp = cJSON_GetObjectItemCaseSensitive(j, "system_fingerprint");
    if (cJSON_IsString(fp))
        snprintf(r->res.fingerprint, sizeof(r->res.fingerprint), "%s", fp->valuestring);
    const cJSON *usage = cJSON_GetObjectItemCaseSensitive(j, "usage");
    read_usage(usage, &r->res);
}

/* Judges one finished attempt: done, retry later, or failed for good. */
static void attempt_done(struct hc *hc, struct hc_req *r, CURLcode cc)
{
    r->res.t_end = hc_now();
    long code = 0;
    curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &code);
    r->res.http_status = code;
    bool retryable = false;
    if (cc != CURLE_OK) {
        snprintf(r->res.error, sizeof(r->res.error), "transfer failed: %s", curl_easy_strerror(cc));
        r->res.st = ES_EIO;
        retryable = true;
    } else if (code < 200 || code >= 300) {
        snprintf(r->res.error, sizeof(r->res.error), "HTTP %ld: %.200s", code,
                 sb_cstr(&r->res.body));
        r->res.st = ES_ERR;
        retryable = code == 429 || code >= 500;
    } else if (r->stream) {
        if (r->line.len > 0) sse_feed(r, "\n", 1);
        if (r->res.st != ES_OK) {
            retryable = r->sse_error_code == 429 || r->sse_error_code >= 500;
        } else if (!r->sse_done) {
            bool empty = r->res.n_chunks == 0 && r->res.completion_tokens < 0;
            snprintf(r->res.error, sizeof(r->res.error), "%s",
                     empty ? "stream ended without data" : "stream ended before [DONE]");
            r->res.st = ES_EFORMAT;
            retryable = true;
        }
    } else {
        struct es_err jerr = {{0}};
        if (r->res.body.len) warn_nul(js_mask_nul_escapes(r->res.body.s, r->res.body.len));
        r->res.json = js_parse(sb_cstr(&r->res.body), r->res.body.len, 0, &jerr);
        if (!r->res.json) {
            snprintf(r->res.error, sizeof(r->res.error), "bad JSON reply: %.200s", jerr.msg);
            r->res.st = ES_EFORMAT;
        } else {
            fill_from_json(r);
        }
    }
    if (r->res.st != ES_OK && retryable && r->res.attempts <= hc->opts.retries) {
        double delay = hc->opts.backoff_s * pow(2.0, r->res.attempts - 1);
        if (delay > 30.0) delay = 30.0;
        delay *= 0.5 + 0.5 * jitter01(hc); /* jitter keeps retries from arriving in lockstep */
        curl_off_t retry_after = 0;        /* a server's Retry-After (429, 503) is a floor */
        if (curl_easy_getinfo(r->easy, CURLINFO_RETRY_AFTER, &retry_after) == CURLE_OK &&
            retry_after > 0 && (double)retry_after > delay)
            delay = retry_after > 60 ? 60.0 : (double)retry_after;
        struct hc_timer_ent ent = {.at = hc_now() + delay, .retry = r};
        curl_easy_cleanup(r->easy);
        r->easy = NULL;
        if (timer_push(hc, ent) == ES_OK) return;
    }
    finish(hc, r);
}

static void fail_now(struct hc *hc, struct hc_req *r, const char *why)
{
    snprintf(r->res.error, sizeof(r->res.error), "%s", why);
    r->res.st = ES_ERR;
    r->res.t_end = hc_now();
    finish(hc, r);
}

static void start_queued(struct hc *hc)
{
    while (hc->q_head && hc->n_running < (size_t)hc->opts.max_inflight) {
        struct hc_req *r = hc->q_head;
        hc->q_head = r->next;
        if (!hc->q_head) hc->q_tail = NULL;
        hc->n_queued--;
        if (start_attempt(hc, r) != ES_OK) fail_now(hc, r, "could not start the transfer");
    }
}

/* Fires due timers; returns the seconds until the next one (or -1). */
static double run_timers(struct hc *hc)
{
    double now = hc_now();
    double next = -1;
    for (size_t i = 0; i < hc->n_timers;) {
        if (hc->timers[i].at <= now) {
            struct hc_timer_ent t = hc->timers[i];
            hc->timers[i] = hc->timers[--hc->n_timers];
            if (t.retry)
                enqueue(hc, t.retry, true);
            else
                t.fn(t.ud);
            now = hc_now();
            continue; /* the callback may have added timers: rescan from i */
        }
        double d = hc->timers[i].at - now;
        if (next < 0 || d < next) next = d;
        i++;
    }
    return next;
}

enum es_status hc_run(struct hc *hc, struct es_err *err)
{
    for (;;) {
        double next_timer = run_timers(hc);
        start_queued(hc);
        if (hc->n_running == 0 && hc->n_queued == 0 && hc->n_timers == 0 && hc->holds <= 0)
            return ES_OK;
        int still = 0;
        if (curl_multi_perform(hc->multi, &still) != CURLM_OK)
            return es_fail(err, ES_ERR, "curl_multi_perform failed");
        CURLMsg *m;
        int left;
        bool progressed = false;
        while ((m = curl_multi_info_read(hc->multi, &left))) {
            if (m->msg != CURLMSG_DONE) continue;
            struct hc_req *r = NULL;
            curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&r);
            CURLcode cc = m->data.result;
            curl_multi_remove_handle(hc->multi, m->easy_handle);
            hc->n_running--;
            progressed = true;
            attempt_done(hc, r, cc);
        }
        if (progressed) continue;
        int timeout_ms = 100;
        if (next_timer >= 0 && next_timer * 1000.0 < timeout_ms)
            timeout_ms = (int)(next_timer * 1000.0) + 1;
        if (hc->n_queued > 0 && hc->n_running < (size_t)hc->opts.max_inflight) timeout_ms = 0;
        struct curl_waitfd wfd[2];
        unsigned n_wfd = 0;
        int read_slot = -1, write_slot = -1;
        if (hc->watch_fd >= 0) {
            read_slot = (int)n_wfd;
            wfd[n_wfd++] = (struct curl_waitfd){.fd = hc->watch_fd, .events = CURL_WAIT_POLLIN};
        }
        if (hc->wwatch_fd >= 0) {
            write_slot = (int)n_wfd;
            wfd[n_wfd++] = (struct curl_waitfd){.fd = hc->wwatch_fd, .events = CURL_WAIT_POLLOUT};
        }
        int nfd = 0;
        curl_multi_poll(hc->multi, n_wfd ? wfd : NULL, n_wfd, timeout_ms, &nfd);
        /* the callbacks may change the watches: test what this poll saw, call each once */
        hc_event_fn wfn = hc->wwatch_fn, rfn = hc->watch_fn;
        void *wud = hc->wwatch_ud, *rud = hc->watch_ud;
        if (write_slot >= 0 && (wfd[write_slot].revents & CURL_WAIT_POLLOUT) &&
            hc->wwatch_fd == wfd[write_slot].fd)
            wfn(wud);
        if (read_slot >= 0 && (wfd[read_slot].revents & CURL_WAIT_POLLIN) &&
            hc->watch_fd == wfd[read_slot].fd)
            rfn(rud);
    }
}

static size_t sync_body(char *p, size_t size, size_t nmemb, void *ud)
{
    return sb_append(ud, p, size * nmemb) == ES_OK ? size * nmemb : 0;
}

enum es_status hc_get_sync(struct hc *hc, int server, const char *path, struct strbuf *out,
                           struct es_err *err)
{
    CURL *e = curl_easy_init();
    if (!e) return es_fail(err, ES_ENOMEM, "curl_easy_init failed");
    struct strbuf url = {0};
    sb_printf(&url, "%s%s", hc->urls[server], path);
    struct curl_slist *h = NULL;
    if (hc->auth_header) h = curl_slist_append(h, hc->auth_header);
    curl_easy_setopt(e, CURLOPT_URL, sb_cstr(&url));
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, sync_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, out);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 30000L);
    CURLcode cc = curl_easy_perform(e);
    long code = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_cleanup(e);
    curl_slist_free_all(h);
    enum es_status st = ES_OK;
    if (cc != CURLE_OK)
        st = es_fail(err, ES_EIO, "GET %s: %s", sb_cstr(&url), curl_easy_strerror(cc));
    else if (code != 200)
        st = es_fail(err, ES_ERR, "GET %s: HTTP %ld", sb_cstr(&url), code);
    sb_free(&url);
    return st;
}
