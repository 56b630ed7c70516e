/*
 * results.h - the append-only samples log, resume, and the final report.
 *
 * One JSON line per finished sample in OUT/samples.jsonl, flushed as it is
 * written, keyed by a hash of task + sample + request settings. A rerun with
 * the same OUT skips every key already logged with status "ok"; failed
 * samples are tried again. Scores are always computed from the log, so a
 * resumed run reports exactly what one uninterrupted run would.
 */
#ifndef EC_RESULTS_H
#define EC_RESULTS_H

#include <stdbool.h>
#include <stddef.h>

#include <cjson/cJSON.h>

#include "status.h"

struct res_log;

enum es_status res_open(const char *out_dir, struct res_log **out, struct es_err *err);
void res_close(struct res_log *log);
const char *res_dir(const struct res_log *log);

/* 16 lowercase hex digits of a 64-bit FNV-1a over the three parts. */
void res_key(const char *task, const char *sample, const char *request, char out[17]);
bool res_done(const struct res_log *log, const char *key);
/* Marks key as one of this run's samples, which are all that res_load_task
 * (hence the report and the task files) will return; *done tells whether it
 * is already logged as ok. */
enum es_status res_select(struct res_log *log, const char *key, bool *done);
/* Appends rec as one line and flushes it; an "ok" record marks its key done. */
enum es_status res_append(struct res_log *log, const cJSON *rec, struct es_err *err);

/* The task's records of this run's samples (res_select), one per key (the
 * "ok" one if any, else the last error), in the order keys first appear.
 * Free with res_free_records. */
enum es_status res_load_task(const struct res_log *log, const char *task, cJSON ***recs, size_t *n,
                             struct es_err *err);
void res_free_records(cJSON **recs, size_t n);

struct res_task_info {
    const char *name;
    size_t total;   /* samples selected this run (after --limit) */
    size_t resumed; /* of those, already done in the log */
};

struct res_run_info {
    const char *model;
    const char *const *urls;
    int n_urls;
    double wall_s;
    const struct res_task_info *tasks;
    int n_tasks;
};

/* Writes OUT/results.json, prints the summary table on stdout, and returns
 * in *n_failed the number of samples whose record is an error. */
enum es_status res_report(const struct res_log *log, const struct res_run_info *info,
                          size_t *n_failed, struct es_err *err);

/* Linear-interpolated percentile (numpy's default) of sorted v[n]. */
double res_percentile(const double *sorted, size_t n, double p);

#endif
