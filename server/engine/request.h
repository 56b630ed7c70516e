/*
 * request.h - one generation request as the engine and the API share it.
 *
 * The API (HTTP threads) builds a request: prompt tokens, sampling
 * parameters, stop conditions, what to report. The engine thread fills the
 * outputs under req->lock and calls req->on_update after each step that
 * changed something; the HTTP side reads what is new under the same lock,
 * keeping its own cursors. A request is reference counted: the API holds
 * one reference, the engine another while the request is queued or
 * running; whoever drops the last one frees it. Aborting (client gone) only
 * sets a flag; the engine notices at its next step and releases the KV
 * blocks.
 *
 * Nothing in here belongs to the scheduler or the KV cache: the engine keeps
 * its sequence state in its own structures, pointing back at the request.
 */
#ifndef ES_REQUEST_H
#define ES_REQUEST_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "backend.h"
#include "strbuf.h"

#define REQ_MAX_CHOICES 128
#define REQ_MAX_STOP_STRINGS 64

enum finish_reason {
    FINISH_NONE = 0, /* still running */
    FINISH_STOP,     /* EOS, a stop string or a stop token */
    FINISH_LENGTH,   /* max_tokens or the context length */
    FINISH_ABORT,    /* the client went away or the server is shutting down */
    FINISH_ERROR,    /* the engine failed; error_message says why */
};

/* Top log-probabilities of one position. */
struct top_logprobs {
    int n;
    int32_t ids[BACKEND_MAX_TOP_LOGPROBS];
    float logprobs[BACKEND_MAX_TOP_LOGPROBS];
};

/* What the user asked for, set before engine_submit and then read-only.
 * Ownership: stop_token_ids, stop (and each string) and the two logit_bias
 * arrays of sampling (logit_bias_ids, logit_bias_values) are malloc'd by
 * whoever fills them and freed by request_params_free (req_create takes them
 * over; after a failed req_create they still belong to the caller). */
struct request_params {
    struct sampling_params sampling; /* seed set: per choice i the engine uses seed + i */
    int n;                           /* choices, 1..REQ_MAX_CHOICES, sharing the prompt KV */
    int max_tokens;                  /* >= 0; 0 = no generation (prompt scoring) */
    int min_tokens;                  /* EOS and stop ids suppressed before this many */
    bool ignore_eos;
    int n_stop_token_ids;
    int32_t *stop_token_ids; /* owned */
    int n_stop;
    char **stop; /* owned, NUL-terminated stop strings */
    bool include_stop_str_in_output;
    int logprobs;             /* -1 = none; else top-k count 0..20 for generated tokens */
    int prompt_logprobs;      /* -1 = none; else top-k count 0..20 for prompt tokens */
    bool skip_special_tokens; /* in the detokenized text */
};

/* Output of one choice, written by the engine under req->lock. */
struct choice_output {
    struct i32vec tokens;     /* generated ids (the stop token included if one ended it) */
    float *logprobs;          /* [tokens.n] when params.logprobs >= 0 */
    struct top_logprobs *top; /* [tokens.n] when params.logprobs > 0 */
    size_t logprobs_cap;
    double cum_logprob; /* sum of the generated tokens' logprobs, always kept
                           (best_of ranks the choices by it) */
    struct strbuf text; /* final detokenized text, stop string handled */
    enum finish_reason finish;
    int32_t stop_token;    /* the id that stopped it, -1 otherwise */
    int stop_string_index; /* which stop string matched, -1 otherwise */
};

struct request {
    uint64_t id;
    char request_id[48]; /* "cmpl-..." / "chatcmpl-...", for logs and responses */
    atomic_int refcount;
    atomic_bool aborted; /* set by the API; engine finishes with FINISH_ABORT */

    struct i32vec prompt; /* prompt token ids, owned */
    struct request_params params;

    pthread_mutex_t lock;            /* guards everything below */
    struct choice_output *choices;   /* [params.n] */
    int n_finished;                  /* choices with finish != FINISH_NONE */
    float *prompt_logprobs;          /* [prompt.n] when params.prompt_logprobs >= 0; [0] = NAN */
    struct top_logprobs *prompt_top; /* [prompt.n] when params.prompt_logprobs > 0 */
    int n_cached_prompt_tokens;      /* prompt tokens found in the prefix cache */
    char error_message[256];         /* FINISH_ERROR reason */

    /* Timestamps, CLOCK_MONOTONIC seconds; 0 until reached. */
    double t_arrival;
    double t_first_scheduled;
    double t_first_token;
    double t_finished;

    /* Called by the engine thread (without req->lock held) after it changed
     * the outputs or finished the request. Must not block. */
    void (*on_update)(struct request *req, void *ctx);
    void *on_update_ctx;
};

/* Allocates a request with refcount 1, n choices, empty outputs. params
 * is copied shallowly: its owned arrays now belong to the request. */
struct request *req_create(const int32_t *prompt, int n_prompt,
                           const struct request_params *params);
void req_retain(struct request *req);
void req_release(struct request *req);
void req_abort(struct request *req);
bool req_is_finished(struct request *req); /* all choices finished (takes the lock) */
double req_now(void);                      /* CLOCK_MONOTONIC seconds */
void request_params_defaults(struct request_params *p);
void request_params_free(struct request_params *p);

#endif
