/*
 * http_client.h - the client's only transport: many HTTP requests in flight
 * over libcurl multi, on one thread, with retries, timers and SSE.
 *
 * A request is submitted with a completion callback; hc_run() drives every
 * transfer, timer and watched file descriptor until nothing is left to do.
 * Callbacks run on the same thread and may submit more requests, which is
 * how a conversation sends its next turn the moment its reply arrives.
 */
#ifndef EC_HTTP_CLIENT_H
#define EC_HTTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "status.h"
#include "strbuf.h"

struct hc_opts {
    const char *const *urls; /* base URLs, e.g. http://127.0.0.1:8000 (no trailing /v1) */
    int n_urls;
    int n_balanced;      /* the first n_balanced urls take conversations (hc_next_server);
                            the rest (a judge) are only addressed by index; 0 = all */
    const char *api_key; /* Bearer token, or NULL */
    int max_inflight;    /* transfers running at once; the rest wait in a queue */
    double timeout_s;    /* per attempt, whole transfer; 0 = none */
    int retries;         /* extra attempts after the first */
    double backoff_s;    /* first retry delay; doubles per attempt, with jitter */
};

/* What a finished request yields. Owned by the client; valid only during the
 * callback (a callback may take `json` and set it to NULL to keep it). */
struct hc_result {
    enum es_status st;      /* ES_OK: 2xx and (non-streamed) a parsed JSON body */
    long http_status;       /* of the last attempt; 0 when no reply came */
    char error[256];        /* reason when st != ES_OK */
    cJSON *json;            /* non-streamed reply, parsed (NULL for non-JSON bodies) */
    struct strbuf body;     /* raw body of the last attempt (non-streamed) */
    struct strbuf text;     /* streamed: concatenated content of every chunk */
    char finish_reason[32]; /* streamed: the last finish_reason seen */
    int64_t prompt_tokens;  /* from usage, -1 when the server gave none */
    int64_t completion_tokens;
    char fingerprint[128]; /* system_fingerprint, "" when absent */
    int attempts;
    int server;      /* index into opts.urls */
    double t_submit; /* seconds (hc_now clock): when first submitted */
    double t_start;  /* when the last attempt started */
    double t_first;  /* first content chunk (streamed) or first body byte */
    double t_end;    /* when the last attempt finished */
    double *chunk_t; /* [n_chunks] arrival time of each content chunk (streamed) */
    size_t n_chunks;
    size_t cap_chunks;
};

typedef void (*hc_done_fn)(struct hc_result *res, void *ud);
typedef void (*hc_event_fn)(void *ud);

struct hc;

struct hc *hc_create(const struct hc_opts *opts, struct es_err *err);
void hc_destroy(struct hc *hc);

/* Monotonic seconds. */
double hc_now(void);
int hc_n_servers(const struct hc *hc);
/* Round-robin choice of a server for a new conversation. */
int hc_next_server(struct hc *hc);
const char *hc_url(const struct hc *hc, int server);

/* Submits a POST (body != NULL, copied) or GET (body == NULL) of
 * url[server] + path. `urgent` puts it at the head of the waiting queue (the
 * next turn of a conversation already under way goes before new ones). The
 * callback runs exactly once, from hc_run. */
enum es_status hc_submit(struct hc *hc, int server, const char *path, const char *body, bool stream,
                         bool urgent, hc_done_fn done, void *ud);

/* Calls fn(ud) from hc_run once hc_now() >= at. */
enum es_status hc_timer(struct hc *hc, double at, hc_event_fn fn, void *ud);

/* Calls fn(ud) from hc_run whenever fd is readable (one watched fd; -1 stops). */
void hc_watch_fd(struct hc *hc, int fd, hc_event_fn fn, void *ud);

/* Calls fn(ud) from hc_run whenever fd is writable (one watched fd; -1 stops):
 * for output to a pipe that must never block the loop. */
void hc_watch_write_fd(struct hc *hc, int fd, hc_event_fn fn, void *ud);

/* Keeps hc_run going while external work (an environment program) is owed. */
void hc_hold(struct hc *hc, int delta);

/* Runs until no transfer, queued request, timer or hold is left. */
enum es_status hc_run(struct hc *hc, struct es_err *err);

/* One blocking GET, for /metrics and similar, outside the loop. */
enum es_status hc_get_sync(struct hc *hc, int server, const char *path, struct strbuf *out,
                           struct es_err *err);

size_t hc_inflight(const struct hc *hc);

#endif
