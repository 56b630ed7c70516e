/*
 * results.c - the samples log (append, resume, reload) and the report:
 * OUT/results.json and the summary table on stdout.
 *
 * Owns the FILE of OUT/samples.jsonl, the set of done keys and the set of
 * keys this run selected (the report and the task files cover only those, so
 * records an earlier run wrote with other settings or data never mix in). A
 * line cut short by a killed process is ignored on reload, and the next
 * append starts on a fresh line, so a kill at any moment loses at most the
 * sample being written and never duplicates one. Never rewrites or truncates
 * the log. Each line goes out in one write(2).
 */
#include "results.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "json.h"
#include "strbuf.h"

/* Open-addressing set of 64-bit keys; 0 marks an empty slot. */
struct keyset {
    uint64_t *keys; /* [cap], cap a power of two */
    size_t cap, n;
};

struct res_log {
    char *dir;
    char *path;
    int fd;                 /* OUT/samples.jsonl, O_APPEND */
    bool cut;               /* the last append was cut short (disk full): seal it first */
    struct keyset done;     /* keys logged with status "ok" */
    struct keyset selected; /* keys of this run's samples (res_select) */
};

static uint64_t fnv1a(uint64_t h, const char *s)
{
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001b3ULL;
    }
    return h;
}

void res_key(const char *task, const char *sample, const char *request, char out[17])
{
    uint64_t h = 0xcbf29ce484222325ULL;
    h = fnv1a(h, task);
    h = fnv1a(h, "\x1f");
    h = fnv1a(h, sample);
    h = fnv1a(h, "\x1f");
    h = fnv1a(h, request);
    snprintf(out, 17, "%016llx", (unsigned long long)h);
}

static uint64_t key_num(const char *key)
{
    uint64_t v = strtoull(key, NULL, 16);
    return v ? v : 1; /* 0 marks an empty slot */
}

static enum es_status set_add(struct keyset *set, uint64_t k)
{
    if ((set->n + 1) * 2 > set->cap) {
        size_t cap = set->cap ? set->cap * 2 : 1024;
        uint64_t *t = calloc(cap, sizeof(*t));
        if (!t) return ES_ENOMEM;
        for (size_t i = 0; i < set->cap; i++) {
            if (!set->keys[i]) continue;
            size_t j = set->keys[i] & (cap - 1);
            while (t[j])
                j = (j + 1) & (cap - 1);
            t[j] = set->keys[i];
        }
        free(set->keys);
        set->keys = t;
        set->cap = cap;
    }
    size_t j = k & (set->cap - 1);
    while (set->keys[j]) {
        if (set->keys[j] == k) return ES_OK;
        j = (j + 1) & (set->cap - 1);
    }
    set->keys[j] = k;
    set->n++;
    return ES_OK;
}

static bool set_has(const struct keyset *set, uint64_t k)
{
    if (!set->cap) return false;
    size_t j = k & (set->cap - 1);
    while (set->keys[j]) {
        if (set->keys[j] == k) return true;
        j = (j + 1) & (set->cap - 1);
    }
    return false;
}

bool res_done(const struct res_log *log, const char *key)
{
    return set_has(&log->done, key_num(key));
}

enum es_status res_select(struct res_log *log, const char *key, bool *done)
{
    *done = res_done(log, key);
    return set_add(&log->selected, key_num(key));
}

static enum es_status mkdir_p(const char *dir, struct es_err *err)
{
    char buf[4096];
    if (snprintf(buf, sizeof(buf), "%s", dir) >= (int)sizeof(buf))
        return es_fail(err, ES_EINVAL, "output path too long");
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(buf, 0777) != 0 && errno != EEXIST)
            return es_fail(err, ES_EIO, "mkdir %s: %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0777) != 0 && errno != EEXIST)
        return es_fail(err, ES_EIO, "mkdir %s: %s", buf, strerror(errno));
    return ES_OK;
}

/* Calls fn on every parseable line of the log. */
static enum es_status scan_log(const char *path, void (*fn)(cJSON *rec, void *ud), void *ud,
                               bool *ends_with_newline, struct es_err *err)
{
    FILE *f = fopen(path, "r");
    if (ends_with_newline) *ends_with_newline = true;
    if (!f) return errno == ENOENT ? ES_OK : es_fail(err, ES_EIO, "%s: %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) > 0) {
        bool complete = line[n - 1] == '\n';
        if (ends_with_newline) *ends_with_newline = complete;
        /* a line cut short by a kill is no JSON object, unless it was cut just
         * before its newline: then it is whole, and res_open seals it */
        cJSON *rec = js_parse(line, (size_t)n - (complete ? 1 : 0), 0, NULL);
        if (rec) fn(rec, ud);
        if (!complete) break;
    }
    free(line);
    fclose(f);
    return ES_OK;
}

static void mark_done(cJSON *rec, void *ud)
{
    struct res_log *log = ud;
    const cJSON *key = cJSON_GetObjectItemCaseSensitive(rec, "key");
    const cJSON *status = cJSON_GetObjectItemCaseSensitive(rec, "status");
    if (cJSON_IsString(key) && cJSON_IsString(status) && strcmp(status->valuestring, "ok") == 0)
        set_add(&log->done, key_num(key->valuestring));
    cJSON_Delete(rec);
}

enum es_status res_open(const char *out_dir, struct res_log **out, struct es_err *err)
{
    enum es_status st = mkdir_p(out_dir, err);
    if (st != ES_OK) return st;
    struct res_log *log = calloc(1, sizeof(*log));
    struct strbuf p = {0};
    if (!log || sb_printf(&p, "%s/samples.jsonl", out_dir) != ES_OK) {
        free(log);
        return es_fail(err, ES_ENOMEM, "out of memory");
    }
    log->fd = -1;
    log->dir = strdup(out_dir);
    log->path = sb_steal(&p);
    bool nl = true;
    st = scan_log(log->path, mark_done, log, &nl, err);
    if (st != ES_OK) goto err;
    log->fd = open(log->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0666);
    if (log->fd < 0) {
        st = es_fail(err, ES_EIO, "%s: %s", log->path, strerror(errno));
        goto err;
    }
    /* seal a line a killed run left unfinished (or with the next append) */
    log->cut = !nl && write(log->fd, "\n", 1) != 1;
    *out = log;
    return ES_OK;
err:
    res_close(log);
    return st;
}

void res_close(struct res_log *log)
{
    if (!log) return;
    if (log->fd >= 0) close(log->fd);
    free(log->done.keys);
    free(log->selected.keys);
    free(log->dir);
    free(log->path);
    free(log);
}

const char *res_dir(const struct res_log *log)
{
    return log->dir;
}

enum es_status res_append(struct res_log *log, const cJSON *rec, struct es_err *err)
{
    struct strbuf line = {0};
    char *s = cJSON_PrintUnformatted(rec);
    /* a line an earlier failed append left cut is sealed first */
    if (!s || (log->cut && sb_putc(&line, '\n') != ES_OK) || sb_puts(&line, s) != ES_OK ||
        sb_putc(&line, '\n') != ES_OK) {
        free(s);
        sb_free(&line);
        return es_fail(err, ES_ENOMEM, "out of memory");
    }
    free(s);
    /* one write(2) of the whole line, not stdio's (which splits a line longer than
     * its buffer), so a kill leaves the line whole or absent, never cut just before
     * its newline, where a later seal would make it whole a second time */
    size_t off = 0;
    while (off < line.len) {
        ssize_t w = write(log->fd, line.s + off, line.len - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        off += (size_t)w;
    }
    bool whole = off == line.len;
    if (whole)
        log->cut = false;
    else if (off > 0)
        log->cut = true; /* an extra newline later costs only a blank line */
    sb_free(&line);
    if (!whole) return es_fail(err, ES_EIO, "writing %s: %s", log->path, strerror(errno));
    const cJSON *key = cJSON_GetObjectItemCaseSensitive(rec, "key");
    const cJSON *status = cJSON_GetObjectItemCaseSensitive(rec, "status");
    if (cJSON_IsString(key) && cJSON_IsString(status) && strcmp(status->valuestring, "ok") == 0)
        return set_add(&log->done, key_num(key->valuestring));
    return ES_OK;
}

struct task_collect {
    const char *task;
    const struct keyset *selected;
    cJSON **recs;
    size_t n, cap;
    uint64_t *slot_key; /* open-addressing index: key -> position in recs */
    size_t *slot_pos;
    size_t n_slots; /* a power of two, at least twice n */
};

/* Position of key in tc->recs, or where to add it (*fresh set). */
static size_t *collect_slot(struct task_collect *tc, uint64_t k, bool *fresh)
{
    size_t j = k & (tc->n_slots - 1);
    while (tc->slot_key[j] && tc->slot_key[j] != k)
        j = (j + 1) & (tc->n_slots - 1);
    *fresh = tc->slot_key[j] == 0;
    tc->slot_key[j] = k;
    return &tc->slot_pos[j];
}

static bool collect_grow(struct task_collect *tc)
{
    size_t cap = tc->cap ? tc->cap * 2 : 64;
    cJSON **r = realloc(tc->recs, cap * sizeof(*r));
    uint64_t *keys = calloc(2 * cap, sizeof(*keys));
    size_t *pos = calloc(2 * cap, sizeof(*pos));
    if (r) tc->recs = r;
    if (!r || !keys || !pos) {
        free(keys);
        free(pos);
        return false;
    }
    free(tc->slot_key);
    free(tc->slot_pos);
    tc->slot_key = keys;
    tc->slot_pos = pos;
    tc->n_slots = 2 * cap;
    tc->cap = cap;
    for (size_t i = 0; i < tc->n; i++) {
        const cJSON *key = cJSON_GetObjectItemCaseSensitive(tc->recs[i], "key");
        bool fresh;
        *collect_slot(tc, key_num(key->valuestring), &fresh) = i;
    }
    return true;
}

static void collect(cJSON *rec, void *ud)
{
    struct task_collect *tc = ud;
    const cJSON *task = cJSON_GetObjectItemCaseSensitive(rec, "task");
    const cJSON *key = cJSON_GetObjectItemCaseSensitive(rec, "key");
    const cJSON *status = cJSON_GetObjectItemCaseSensitive(rec, "status");
    if (!cJSON_IsString(task) || strcmp(task->valuestring, tc->task) != 0 || !cJSON_IsString(key) ||
        !cJSON_IsString(status) ||
        (tc->selected && !set_has(tc->selected, key_num(key->valuestring)))) {
        cJSON_Delete(rec);
        return;
    }
    if (tc->n == tc->cap && !collect_grow(tc)) {
        cJSON_Delete(rec);
        return;
    }
    bool fresh;
    size_t *pos = collect_slot(tc, key_num(key->valuestring), &fresh);
    if (fresh) {
        *pos = tc->n;
        tc->recs[tc->n++] = rec;
        return;
    }
    /* an ok record stays; a later record replaces an earlier error */
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(tc->recs[*pos], "status");
    if (strcmp(s->valuestring, "ok") == 0) {
        cJSON_Delete(rec);
    } else {
        cJSON_Delete(tc->recs[*pos]);
        tc->recs[*pos] = rec;
    }
}

enum es_status res_load_task(const struct res_log *log, const char *task, cJSON ***recs, size_t *n,
                             struct es_err *err)
{
    struct task_collect tc = {.task = task, .selected = &log->selected};
    enum es_status st = scan_log(log->path, collect, &tc, NULL, err);
    free(tc.slot_key);
    free(tc.slot_pos);
    if (st != ES_OK) {
        res_free_records(tc.recs, tc.n);
        return st;
    }
    *recs = tc.recs;
    *n = tc.n;
    return ES_OK;
}

void res_free_records(cJSON **recs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        cJSON_Delete(recs[i]);
    free(recs);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double res_percentile(const double *sorted, size_t n, double p)
{
    if (n == 0) return 0;
    double pos = p / 100.0 * (double)(n - 1);
    size_t lo = (size_t)pos;
    if (lo + 1 >= n) return sorted[n - 1];
    double frac = pos - (double)lo;
    return sorted[lo] + (sorted[lo + 1] - sorted[lo]) * frac;
}

struct metric_acc {
    char name[96];
    double sum, sumsq;
    size_t n;
};

struct dvec {
    double *v;
    size_t n, cap;
};

static void dv_push(struct dvec *d, double x)
{
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 256;
        double *v = realloc(d->v, cap * sizeof(*v));
        if (!v) return;
        d->v = v;
        d->cap = cap;
    }
    d->v[d->n++] = x;
}

/* Summarises one task's records into a JSON object and prints its rows. */
static cJSON *summarise_task(cJSON **recs, size_t n, const struct res_task_info *ti,
                             size_t *n_failed)
{
    struct metric_acc acc[64];
    int n_acc = 0;
    size_t ok = 0, failed = 0;
    double prompt_tokens = 0, completion_tokens = 0;
    struct dvec lat = {0};
    cJSON *fps = cJSON_CreateArray();
    for (size_t i = 0; i < n; i++) {
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(recs[i], "status");
        if (strcmp(st->valuestring, "ok") != 0) {
            failed++;
            continue;
        }
        ok++;
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(recs[i], "metrics");
        const cJSON *it;
        cJSON_ArrayForEach(it, m)
        {
            if (!cJSON_IsNumber(it)) continue;
            int k = 0;
            while (k < n_acc && strcmp(acc[k].name, it->string) != 0)
                k++;
            if (k == n_acc) {
                if (n_acc == 64) continue;
                memset(&acc[k], 0, sizeof(acc[k]));
                snprintf(acc[k].name, sizeof(acc[k].name), "%s", it->string);
                n_acc++;
            }
            acc[k].sum += it->valuedouble;
            acc[k].sumsq += it->valuedouble * it->valuedouble;
            acc[k].n++;
        }
        const cJSON *pt = cJSON_GetObjectItemCaseSensitive(recs[i], "prompt_tokens");
        const cJSON *ct = cJSON_GetObjectItemCaseSensitive(recs[i], "completion_tokens");
        if (cJSON_IsNumber(pt)) prompt_tokens += pt->valuedouble;
        if (cJSON_IsNumber(ct)) completion_tokens += ct->valuedouble;
        const cJSON *l = cJSON_GetObjectItemCaseSensitive(recs[i], "latency_s");
        cJSON_ArrayForEach(it, l) if (cJSON_IsNumber(it)) dv_push(&lat, it->valuedouble);
        const cJSON *fp = cJSON_GetObjectItemCaseSensitive(recs[i], "fingerprint");
        if (cJSON_IsString(fp) && fp->valuestring[0]) {
            bool seen = false;
            cJSON_ArrayForEach(it, fps) seen |= strcmp(it->valuestring, fp->valuestring) == 0;
            if (!seen) cJSON_AddItemToArray(fps, cJSON_CreateString(fp->valuestring));
        }
    }
    *n_failed += failed;
    cJSON *t = cJSON_CreateObject();
    cJSON *metrics = cJSON_AddObjectToObject(t, "metrics");
    for (int k = 0; k < n_acc; k++) {
        double mean = acc[k].sum / (double)acc[k].n;
        double var = acc[k].n > 1
                         ? (acc[k].sumsq - (double)acc[k].n * mean * mean) / (double)(acc[k].n - 1)
                         : 0;
        double se = acc[k].n > 1 ? sqrt(var > 0 ? var : 0) / sqrt((double)acc[k].n) : 0;
        cJSON *mo = cJSON_AddObjectToObject(metrics, acc[k].name);
        cJSON_AddNumberToObject(mo, "value", mean);
        cJSON_AddNumberToObject(mo, "stderr", se);
        cJSON_AddNumberToObject(mo, "n", (double)acc[k].n);
        printf("%-18s %-26s %10.4f %10.4f %7zu\n", ti->name, acc[k].name, mean, se, acc[k].n);
    }
    if (n_acc == 0) printf("%-18s %-26s %10s %10s %7zu\n", ti->name, "(no score)", "-", "-", ok);
    cJSON *counts = cJSON_AddObjectToObject(t, "counts");
    cJSON_AddNumberToObject(counts, "total", (double)ti->total);
    cJSON_AddNumberToObject(counts, "ok", (double)ok);
    cJSON_AddNumberToObject(counts, "error", (double)failed);
    cJSON_AddNumberToObject(counts, "resumed", (double)ti->resumed);
    cJSON *tok = cJSON_AddObjectToObject(t, "tokens");
    cJSON_AddNumberToObject(tok, "prompt", prompt_tokens);
    cJSON_AddNumberToObject(tok, "completion", completion_tokens);
    if (lat.n) qsort(lat.v, lat.n, sizeof(double), cmp_double);
    cJSON *lo = cJSON_AddObjectToObject(t, "latency_s");
    cJSON_AddNumberToObject(lo, "requests", (double)lat.n);
    cJSON_AddNumberToObject(lo, "p50", res_percentile(lat.v, lat.n, 50));
    cJSON_AddNumberToObject(lo, "p90", res_percentile(lat.v, lat.n, 90));
    cJSON_AddNumberToObject(lo, "p99", res_percentile(lat.v, lat.n, 99));
    cJSON_AddItemToObject(t, "server_fingerprint", fps);
    printf("%-18s ok %zu, errors %zu, resumed %zu of %zu; tokens %.0f in / %.0f out; "
           "latency p50 %.3fs p99 %.3fs\n",
           ti->name, ok, failed, ti->resumed, ti->total, prompt_tokens, completion_tokens,
           res_percentile(lat.v, lat.n, 50), res_percentile(lat.v, lat.n, 99));
    free(lat.v);
    return t;
}

enum es_status res_report(const struct res_log *log, const struct res_run_info *info,
                          size_t *n_failed, struct es_err *err)
{
    *n_failed = 0;
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "model", info->model);
    cJSON *urls = cJSON_AddArrayToObject(root, "urls");
    for (int i = 0; i < info->n_urls; i++)
        cJSON_AddItemToArray(urls, cJSON_CreateString(info->urls[i]));
    cJSON_AddNumberToObject(root, "wall_time_s", info->wall_s);
    cJSON_AddNumberToObject(root, "finished_unix", (double)time(NULL));
    cJSON *tasks = cJSON_AddObjectToObject(root, "tasks");
    printf("\n%-18s %-26s %10s %10s %7s\n", "task", "metric", "value", "stderr", "n");
    printf("%.75s\n", "-----------------------------------------------------------------------"
                      "-----------");
    enum es_status st = ES_OK;
    for (int i = 0; i < info->n_tasks; i++) {
        cJSON **recs = NULL;
        size_t n = 0;
        st = res_load_task(log, info->tasks[i].name, &recs, &n, err);
        if (st != ES_OK) goto done;
        cJSON *t = summarise_task(recs, n, &info->tasks[i], n_failed);
        cJSON_AddItemToObject(tasks, info->tasks[i].name, t);
        res_free_records(recs, n);
    }
    cJSON_AddNumberToObject(root, "failed_samples", (double)*n_failed);
    printf("wall time %.2fs, failed samples %zu, results in %s/results.json\n", info->wall_s,
           *n_failed, log->dir);
    fflush(stdout);
    char *s = cJSON_Print(root);
    struct strbuf p = {0};
    sb_printf(&p, "%s/results.json", log->dir);
    FILE *f = fopen(sb_cstr(&p), "w");
    if (!f || !s || fputs(s, f) < 0 || fputc('\n', f) == EOF) {
        st = es_fail(err, ES_EIO, "writing %s", sb_cstr(&p));
    }
    if (f) fclose(f);
    sb_free(&p);
    free(s);
done:
    cJSON_Delete(root);
    return st;
}
