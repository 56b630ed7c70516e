/*
 * task.h - what every task kind provides, and the helpers they share
 * (loading JSONL data, accounting a sample's requests, writing its record).
 *
 * A task kind loads its data, starts one conversation per sample that the
 * samples log does not already hold, and, once the HTTP loop has drained,
 * writes any task-specific output files from the log. Tasks never score from
 * memory: the log is the single source of truth (see results.h).
 */
#ifndef EC_TASK_H
#define EC_TASK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "conversation.h"
#include "http_client.h"
#include "progress.h"
#include "results.h"
#include "status.h"
#include "strbuf.h"

struct task_env {
    struct hc *hc;
    struct conv_sched *sched;
    struct res_log *log;
    struct progress *prog;
    const char *model;
    long limit;       /* first N samples of each task; < 0 = all */
    bool stream;      /* SSE for generation requests */
    int max_tokens;   /* generation cap; 0 = the task's default */
    int judge_server; /* hc server index of the judge, -1 = no judging */
    const char *judge_model;
    int judge_max_tokens;      /* 0 = 2048 */
    const char *judge_prompts; /* FastChat judge_prompts.jsonl, NULL = built-in */
    const char *env_cmd;       /* --env */
    bool discard;              /* setup failed: samples are finished unstarted, and nothing
                                  is logged or written */
};

struct task_kind {
    const char *name;
    const char *example; /* file under data/examples/, NULL if none shipped */
    /* Loads data_path and starts a conversation per sample not yet done.
     * Fills info (total, resumed); *state is handed back to finish(). */
    enum es_status (*start)(struct task_env *env, const char *data_path, void **state,
                            struct res_task_info *info, struct es_err *err);
    /* After the loop: writes task outputs from the log; frees state. */
    enum es_status (*finish)(struct task_env *env, void *state, struct es_err *err);
};

extern const struct task_kind task_mtbench;
extern const struct task_kind task_multiple_choice;
extern const struct task_kind task_generate_until;
extern const struct task_kind task_batch;
extern const struct task_kind task_envloop;

/* One parsed data line: the JSON and its canonical text (for keys). */
struct task_item {
    cJSON *json;
    char *canon;
    long line; /* 1-based line of the data file, for error messages */
};

/* Reads a JSONL file (blank lines skipped), at most `limit` items (< 0: all). */
enum es_status task_load_jsonl(const char *path, long limit, struct task_item **items, size_t *n,
                               struct es_err *err);
void task_free_items(struct task_item *items, size_t n);

/* What a sample's requests cost and how they went. */
struct task_acct {
    int64_t prompt_tokens;
    int64_t completion_tokens;
    double *latency; /* [n_latency] seconds, one per request */
    size_t n_latency;
    char fingerprint[128];
    bool failed;
    char error[320];
};

/* Adds one reply; a failed reply marks the sample failed (first reason kept).
 * Returns true when the reply is usable. */
bool task_acct_add(struct task_acct *a, const struct hc_result *res);
void task_acct_fail(struct task_acct *a, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void task_acct_free(struct task_acct *a);

/* Builds the sample's log record, appends it, counts it in the progress
 * line, and frees metrics/data (taken) and the accounting. Errors writing
 * the log are reported on stderr (the run goes on; the exit code says so). */
void task_commit(struct task_env *env, const char *task, const char *key, size_t index,
                 const cJSON *id, struct task_acct *a, cJSON *metrics, cJSON *data);

/* Generated text of a reply: streamed text, choices[0].message.content, or
 * choices[0].text. Never NULL ("" when absent). */
const char *task_reply_text(const struct hc_result *res);

/* task_acct_add for a generation: also fails the sample when a non-streamed
 * reply has no choices[0] text or message (a 2xx error body, say), so that
 * nothing but a real generation is ever taken as an answer. On true, *text
 * is the generated text (valid during the callback). */
bool task_acct_add_reply(struct task_acct *a, const struct hc_result *res, const char **text);

/* Prints a cJSON object and sends it as part of the conversation's step;
 * frees body. A failed submission marks the accounting failed. */
void task_send_json(struct conv *c, struct task_acct *a, int slot, int server, const char *path,
                    cJSON *body, bool stream);

/* Request-settings string for keys: model and anything else that changes
 * the answer. */
void task_request_desc(const struct task_env *env, const char *extra, struct strbuf *out);

extern int task_commit_errors; /* log write failures */

#endif
