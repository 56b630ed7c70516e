/*
 * api.h - the HTTP API wing of evalserver: shared types of http.c (daemon,
 * routing, limits, auth, suspend/resume), the endpoint handlers
 * (api_completions.c, api_chat.c, api_misc.c), request parsing (params.c),
 * Server-Sent Events (sse.c), jobs (job.c) and metrics (metrics.c); chat
 * tool call parsing is tool_calls.h's.
 *
 * Threading: handlers run on libmicrohttpd's polling threads; they parse,
 * tokenize and submit, then suspend the connection. The engine thread only
 * ever calls job_on_update() (through request.on_update), which takes the
 * job lock and resumes the connection; it never formats JSON or blocks.
 * Lock order: job->lock, then request->lock; MHD's own locks come last.
 */
#ifndef ES_API_H
#define ES_API_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "engine.h"
#include "model_config.h"
#include "request.h"
#include "router.h"
#include "status.h"
#include "strbuf.h"
#include "tokenizer.h"
#include "tool_calls.h"

struct MHD_Connection;
struct MHD_Daemon;
struct chat_template;
struct metrics;

#define API_VERSION "0.1.0"
/* Choices (prompts x n) one HTTP request may ask for. */
#define API_MAX_SEQUENCES 16384
/* Bytes of a request's own chat_template (--trust-request-chat-template). */
#define API_MAX_REQUEST_TEMPLATE_BYTES (256u << 10)

enum api_state {
    API_LOADING = 0, /* /health 503, every other route 503 */
    API_SERVING = 1,
    API_DRAINING = 2, /* shutting down: new work gets 503, running work finishes */
};

struct api_config {
    const char *served_model_name;
    const char *model_dir;
    const char *api_key;     /* NULL or "": no authentication */
    size_t max_body_bytes;   /* request bodies above this get 413 */
    size_t max_header_bytes; /* MHD per-connection memory for headers */
    int max_connections;
    int connection_timeout_s;   /* idle connections (not suspended ones) */
    int max_connections_per_ip; /* 0: no per-IP limit */
    int request_timeout_s;      /* a whole request (line, headers, body) must
                                   arrive within this many seconds of the
                                   connection opening or of the previous
                                   response; 0: no deadline */
    int http_threads;           /* MHD polling threads */
    int max_prompts;            /* prompts in one /v1/completions request */
    int max_stop;               /* stop strings per request */
    int max_stop_len;           /* bytes per stop string */
    int max_logit_bias;         /* logit_bias entries per request */
    /* A request's "chat_template" replaces the server's for that request;
     * false: a request that carries one gets 400. */
    bool trust_request_chat_template;
    /* --enable-auto-tool-choice --tool-call-parser: the tool calls of a
     * chat answer to a request with tools are parsed out of its text
     * (tool_calls.h); TOOL_PARSER_NONE: they stay in content. */
    enum tool_parser tool_call_parser;
};

void api_config_defaults(struct api_config *c);

/* Everything the handlers need; owned by main.c. Fields set while loading
 * are published by api_set_state(API_SERVING) (release/acquire on state). */
struct api_server {
    struct api_config cfg;
    _Atomic int state;     /* enum api_state */
    struct router *router; /* the replicas (--dp); NULL while loading */
    const struct tokenizer *tok;
    const struct chat_template *ct; /* NULL: chat is rejected with 400 */
    const struct model_config *mc;
    int max_model_len;
    int32_t vocab_limit;    /* valid token ids are [0, vocab_limit) */
    size_t max_token_bytes; /* longest vocabulary piece (0: unknown); bounds the
                               text one token can stand for */
    char fingerprint[40];   /* "fp_<16 hex>" */
    long created;           /* unix seconds, for /v1/models */
    struct metrics *metrics;
    struct MHD_Daemon *daemon;
    struct http_watch *watch; /* per-connection request deadlines (http.c) */

    atomic_uint_fast64_t next_id; /* response ids */
    atomic_int http_inflight;     /* generation requests whose response is not sent */
    atomic_bool closing;          /* http_stop is running: connections are never parked again */
    pthread_mutex_t jobs_lock;    /* guards the job list */
    struct api_job *jobs;         /* live jobs, for shutdown */
};

static inline int api_get_state(struct api_server *s)
{
    return atomic_load_explicit(&s->state, memory_order_acquire);
}
static inline void api_set_state(struct api_server *s, int st)
{
    atomic_store_explicit(&s->state, st, memory_order_release);
}

/* ---------- errors (http.c) ---------- */

/* An HTTP error answer in the OpenAI shape. param may be NULL. */
struct api_error {
    int status;
    const char *type;
    char param[64];
    char message[512];
};
/* Fills e; for 400s the param is taken from a leading 'field' in msg. */
void api_error_set(struct api_error *e, int status, const char *msg);
/* Renders {"error": {"message", "type", "param", "code"}}. */
char *api_error_json(const struct api_error *e);

/* ---------- a generation job: one HTTP request, 1..n engine requests ---------- */

enum job_kind { JOB_COMPLETION, JOB_CHAT };

/* Per choice streaming cursors (bytes of text / tokens already sent). */
struct stream_cursor {
    size_t text_sent;
    size_t tokens_sent;
    long text_offset; /* completions logprobs: code points so far */
    bool started;     /* chat: role delta sent; completions: echo sent */
    bool finish_sent;
};

/* Options that shape the response, parsed from the request. */
struct job_opts {
    bool stream;
    bool include_usage;    /* stream_options.include_usage */
    bool echo;             /* completions */
    bool return_token_ids; /* return_tokens_as_token_ids */
    int logprobs;          /* completions: -1 none, else top-k 0..20 */
    bool chat_logprobs;    /* chat: logprobs requested */
    int top_logprobs;      /* chat: 0..20 */
    int n;                 /* choices returned per prompt */
    int best_of;           /* choices generated per prompt (request params.n), >= n;
                              completions return the n with the highest cumulative
                              logprob, best first, when best_of > n */
    /* chat: parse tool calls out of each choice's text (TOOL_PARSER_NONE: not) */
    enum tool_parser tool_parser;
};

struct api_job {
    struct api_server *srv;
    enum job_kind kind;
    char id[48];  /* "cmpl-..." / "chatcmpl-..." */
    long created; /* unix seconds */
    struct job_opts opts;

    pthread_mutex_t lock; /* guards everything below */
    struct MHD_Connection *conn;
    int fd;         /* conn's socket, -1 when unknown */
    bool suspended; /* the connection waits for job_on_update */
    bool conn_done; /* the HTTP side let go of the job */
    int n_reqs;
    struct request **reqs;       /* [n_reqs], one per prompt; the job holds a reference */
    struct strbuf *prompt_texts; /* [n_reqs] the prompts' text for echo (may hold NUL) */
    bool *req_done;              /* [n_reqs] finished and accounted */
    int n_unfinished;            /* submitted requests not yet finished */

    /* streaming */
    struct stream_cursor *cursors; /* [n_reqs * n] */
    struct strbuf out;             /* SSE bytes not yet handed to MHD */
    size_t out_pos;
    bool stream_done; /* [DONE] is in out */
    bool usage_sent;

    struct api_job *next, *prev; /* srv->jobs list */
};

struct api_job *job_create(struct api_server *srv, enum job_kind kind, int n_reqs);
/* Submits every request; on failure aborts those already submitted and
 * fills e (400 / 429 / 503). */
bool job_submit(struct api_job *job, struct api_error *e);
/* Installed as request.on_update; runs on the engine thread. */
void job_on_update(struct request *req, void *ctx);
/* True when every submitted request has finished (takes job->lock). */
bool job_all_finished(struct api_job *job);
/* Suspends job->conn unless the job is already complete (non-streaming);
 * returns true if it suspended. Call from the access handler. */
bool job_suspend_unless_finished(struct api_job *job);
/* The HTTP side is done (response sent or client gone). aborted: abort
 * the engine requests. Frees the job once the engine is done with it. */
void job_conn_done(struct api_job *job, bool aborted);
/* Shutdown: resume every suspended connection; abort requests if asked. */
void job_resume_all(struct api_server *srv, bool abort);
/* MHD does not watch suspended connections: polls their sockets for a
 * hang-up and aborts the jobs of clients that left. Called periodically. */
void job_check_disconnects(struct api_server *srv);

/* ---------- parsing (params.c) ---------- */

/* A "model" field, when given, must name the served model: 404 otherwise
 * (the generation endpoints, /tokenize and /detokenize, as vLLM). */
bool params_check_model(struct api_server *srv, const cJSON *body, struct api_error *e);
/* True when name[0..len) is the served model's name; else a 404 in e. */
bool params_model_served(const struct api_server *srv, const char *name, size_t len,
                         struct api_error *e);
/* Parses the sampling and stop fields common to both endpoints into p (with
 * defaults; p owns its arrays, free with request_params_free) and the
 * response options into o. */
bool params_parse_common(struct api_server *srv, const cJSON *body, bool chat,
                         struct request_params *p, struct job_opts *o, struct api_error *e);
/* Parses "prompt" (string, [string], [int], [[int]]) into token vectors
 * (and texts when given as text; NULL otherwise). */
bool params_parse_prompts(struct api_server *srv, const cJSON *body, bool add_special, int *n_out,
                          struct i32vec **ids_out, char ***texts_out, struct api_error *e);
/* False when text of this many bytes cannot fit in max_model_len tokens
 * whatever it says (so it need not be tokenized to be refused). */
bool params_text_may_fit(const struct api_server *srv, size_t bytes);
/* Checks ids are in the vocabulary and prompt + max_tokens fits. */
bool params_check_prompt(struct api_server *srv, const struct i32vec *ids, int max_tokens,
                         const char *what, struct api_error *e);
/* Deep copy (stop strings, stop ids, logit bias). */
enum es_status params_clone(const struct request_params *src, struct request_params *dst);

/* ---------- rendering helpers (api_completions.c / api_chat.c) ---------- */

const char *finish_reason_str(enum finish_reason f);
/* The text of one token as the API shows it ("token_id:N" or decoded). */
void api_token_text(struct api_server *srv, bool as_id, int32_t id, struct strbuf *out);
/* A logprob as JSON can carry it (no -inf). */
double api_clamp_logprob(float lp);
/* usage + evalserver extension objects for a job (reads requests under their locks). */
void api_add_usage(struct api_job *job, cJSON *resp);
cJSON *api_usage_json(struct api_job *job);
/* "usage": null on a stream chunk when stream_options.include_usage is set
 * (every chunk but the final usage chunk carries it, as in OpenAI's API). */
void api_add_chunk_usage(const struct api_job *job, cJSON *chunk);
/* {"id", "object", "created", "model"} */
cJSON *api_response_head(struct api_job *job, const char *object);
/* finish_reason (null while running) and stop_reason: the stop string, a
 * stop_token_ids id, or null (req->lock held). */
void api_add_finish(cJSON *choice, const struct request *req, const struct choice_output *c);
/* A 500 error body when a request of the job failed in the engine, else NULL. */
char *api_job_error(struct api_job *job, int *status);

/* ---------- endpoints ---------- */

struct http_conn;
/* Each returns an MHD_Result (int) and queues a response or suspends. */
int api_completions(struct http_conn *hc, const cJSON *body);
int api_chat(struct http_conn *hc, const cJSON *body);
/* Renders the final (non-streaming) answer of a finished job. */
char *api_completions_render(struct api_job *job, int *status);
char *api_chat_render(struct api_job *job, int *status);
/* Streaming: appends whatever is new as SSE events to job->out (job->lock
 * held); sets job->stream_done after [DONE]. */
void api_completions_stream(struct api_job *job);
/* Appends the usage chunk (if asked) and [DONE]; sets stream_done. */
void api_stream_finish(struct api_job *job, const char *object);
void api_chat_stream(struct api_job *job);

int api_models(struct http_conn *hc);
/* GET /v1/models/{id}: the model object, or 404 when id is not the served name. */
int api_model(struct http_conn *hc, const char *id, size_t id_len);
int api_health(struct http_conn *hc);
int api_version(struct http_conn *hc);
int api_tokenizer_info(struct http_conn *hc);
int api_tokenize(struct http_conn *hc, const cJSON *body);
int api_detokenize(struct http_conn *hc, const cJSON *body);
int api_metrics(struct http_conn *hc);

/* Chat rendering shared by /v1/chat/completions and /tokenize: the
 * messages through the server's chat template, or through the request's
 * own "chat_template" when cfg.trust_request_chat_template allows it (a
 * request that carries one without it gets 400). */
bool api_chat_prompt(struct api_server *srv, const cJSON *body, bool default_add_special,
                     struct i32vec *ids, struct strbuf *text, struct api_error *e);

/* ---------- http.c services for handlers ---------- */

int http_reply_json(struct http_conn *hc, int status, char *json_owned);
int http_reply_text(struct http_conn *hc, int status, const char *content_type, char *body_owned);
int http_reply_error(struct http_conn *hc, const struct api_error *e);
int http_reply_status(struct http_conn *hc, int status, const char *msg);
struct api_server *http_server(struct http_conn *hc);
/* Client sockets libmicrohttpd holds open now (all its threads). */
unsigned http_open_connections(struct api_server *srv);
/* Hands a job to the connection: streaming starts an SSE response,
 * otherwise the connection is suspended until the job finishes. */
int http_run_job(struct http_conn *hc, struct api_job *job);

enum es_status http_start(struct api_server *srv, const char *host, int port, struct es_err *err);
void http_stop(struct api_server *srv);
/* Cuts connections whose request has not fully arrived within
 * cfg.request_timeout_s (slow-loris clients). Called periodically. */
void http_check_deadlines(struct api_server *srv);

/* ---------- sse.c ---------- */

/* Appends "data: <json>\n\n" and frees json. */
void sse_event(struct strbuf *out, char *json);
void sse_done(struct strbuf *out);
/* An MHD response reading job->out, suspending while nothing is new. */
struct MHD_Response *sse_response(struct api_job *job);

/* ---------- metrics.c ---------- */

struct metrics *metrics_create(void);
void metrics_free(struct metrics *m);
/* Records a finished request (reads its timestamps; takes req->lock). */
void metrics_observe_request(struct metrics *m, struct request *req);
void metrics_count_http(struct metrics *m, int status);
/* Prometheus text exposition of the metrics and the replicas' stats:
 * unlabelled families are totals over the replicas, evalserver_replica_*
 * families carry replica="i". r may be NULL (loading). open_connections
 * is the HTTP layer's count of accepted client sockets. */
char *metrics_render(struct metrics *m, struct router *r, unsigned open_connections);

#endif
