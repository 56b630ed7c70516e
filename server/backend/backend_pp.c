/*
 * backend_pp.c - a pipeline-parallel group of stage backends behind one
 * struct backend (backend_pp.h), the stages being threads of this process.
 *
 * Owns: one stage backend per stage (each a CPU backend or a backend_tp
 * group holding a contiguous range of layers), a pool of exactly one
 * thread per stage, the calling thread (the main thread in load(), the
 * engine's step runner in forward(), never two at once) being one of them (backend_cpu_pool.h), the
 * activation buffers between the stages and the micro-batch plan's
 * buffers, all sized at load(): forward() never allocates. A call (load,
 * forward, copy_blocks, destroy) is one cpool_run in which stage s's part
 * is task s, as in backend_tp.c. Nothing spins. Stage s + 1 waits for
 * stage s (below): as many tasks as threads, the pool starts every task
 * whatever the started ones wait for, so the stages all run at once,
 * each on its own thread, and none waits for a stage that no thread runs.
 * Which OS thread runs a stage may change from call to call; a stage
 * backend relies on none (backend_tp.c says why).
 *
 * A step: the batch is cut by sequences into at most pp_config.
 * micro_batches micro-batches of about equal token counts (contiguous
 * sequence ranges; a batch of one sequence stays whole). Each stage runs
 * the micro-batches in order, and before micro-batch m waits until the
 * stage before it has finished m (progress[], under the mutex): stage s
 * runs m while stage s + 1 runs m - 1. Stage s writes micro-batch m's
 * residual stream to rows [tok0, tok1) of acts[s], which stage s + 1 reads
 * as its hidden_in; the rows of one micro-batch in one buffer are written
 * by one stage and read by the next only after it is done, so no buffer
 * row is read and written at once. The last stage samples each
 * micro-batch's rows (their token_index rebased to the micro-batch) into
 * a scratch result array, which is scattered back into the batch's row
 * order when every stage is done.
 *
 * Over nodes (pp_config.nodes, node 0): the group's first stages are
 * node_stage.h backends, one per other node, each covering that node's
 * stages; to the pipeline they are stages like the others, whose forward
 * sends the micro-batch and its stream and waits for the node's. The
 * other nodes' groups hold their stages alone (first_stage > 0) and take
 * the stream in and give it out through the batch (stream_in/out). Such
 * partial groups skip pp_connect: a device link needs every stage here.
 *
 * Errors: a failing stage sets `aborted` so the stages after it stop
 * waiting for micro-batches that will never come; the lowest failing
 * stage's error is returned, prefixed with its index. Then, as in
 * backend_tp.c, the group is broken and later calls fail at once.
 *
 * Arithmetic: every token goes through the same layers with the same
 * operations as in one whole-model backend, and the CPU backend's
 * per-token results do not depend on what else is in the batch, so a
 * pipeline answers bit-identically.
 */
#include "backend_pp.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend_cpu_pool.h"
#include "backend_tp.h"
#include "log.h"
#include "node_stage.h"

#define LOG_PP(...) LOG_I("pp", __VA_ARGS__)
#define LOG_PP_DEBUG(...) LOG_D("pp", __VA_ARGS__)

#define PP_DEFAULT_MAX_TOKENS 2048 /* as the CPU backend's, when opts leave it 0 */
#define PP_DEFAULT_MAX_SEQS 256

enum pp_job_kind {
    PP_JOB_LOAD,
    PP_JOB_FORWARD,
    PP_JOB_COPY_BLOCKS,
    PP_JOB_CONNECT, /* after every stage loaded: pp_connect, all at once */
    PP_JOB_DESTROY, /* every stage frees its backend, all at once */
};

struct pp_job {
    enum pp_job_kind kind;
    /* PP_JOB_LOAD; opts is the template, each stage fills in its own part */
    const struct model_config *cfg;
    const char *dir;
    const struct backend_opts *opts;
    /* PP_JOB_FORWARD: the micro-batches, in order, and the step's stream
     * in and out (a group of a node's stages; NULL otherwise) */
    const float *stream_in;
    float *stream_out;
    int n_micro;
    const struct batch *micro;          /* [n_micro] */
    const int32_t *micro_tok0;          /* [n_micro] first token in the step's batch */
    struct batch_result *micro_results; /* [n_micro] the last stage's */
    /* PP_JOB_COPY_BLOCKS */
    const int32_t *src, *dst;
    int n;
};

struct pp_group;

/* The rendezvous of backend_pp.h (pp_link_publish / pp_link_fetch). */
struct pp_link {
    pthread_mutex_t mu;
    pthread_cond_t published;
    signed char state[PP_LINK_MAX_COLUMNS]; /* 0: not yet, 1: blob there, -1: failed */
    unsigned char blob[PP_LINK_MAX_COLUMNS][PP_LINK_BLOB_BYTES];
};

struct pp_stage {
    struct pp_group *g;
    int index;                     /* in the group: the thread's task */
    int stage0, stages;            /* the model's pipeline stages it runs */
    struct backend be;             /* holds this stage's layers (or calls the node that does) */
    struct tp_config tp;           /* TP x PP: this stage's group */
    struct node_stage_config node; /* stages another node runs */
    bool loaded;
    enum es_status st; /* of the last job; read by the caller after the run */
    struct es_err err;
    int layer0, layer1; /* the model's layers [layer0, layer1) */
};

struct pp_group {
    struct pp_config cfg;
    int n_stages;            /* in this group: n_nodes node stages, then this process's */
    int n_nodes;             /* node_stage.h backends (node 0 of a pipeline over nodes) */
    bool owns_nodes;         /* loaded: cfg.nodes is the group's to close */
    struct pp_stage *stages; /* [n_stages] */
    struct cpool *pool;      /* n_stages threads, the caller's included */
    struct pp_job job;       /* the current job: set by the caller, read by the stages */
    struct pp_link link;     /* for PP_JOB_CONNECT */
    pthread_mutex_t mu;
    pthread_cond_t progress_cv; /* a stage finished a micro-batch or failed */
    int *progress;              /* [n_stages] micro-batches done this job; guarded by mu */
    bool aborted;               /* a stage failed this job; guarded by mu */
    bool broken;                /* a forward or copy_blocks failed; caller's thread only */

    int hidden;
    float **acts; /* [n_stages - 1] -> fp32 [max_tokens][hidden]: stage s out, s + 1 in */
    /* The micro-batch plan of one step, sized at load. */
    int max_tokens, max_seqs, max_rows, max_micro;
    struct batch *micro;                /* [max_micro] */
    int32_t *micro_tok0;                /* [max_micro] first token in the step's batch */
    struct batch_result *micro_results; /* [max_micro] rows into results */
    int32_t *seq_starts;                /* [max_seqs + max_micro] each micro-batch's, rebased */
    struct logit_row *rows;             /* [max_rows] grouped by micro-batch, token_index rebased */
    int32_t *row_origin;                /* [max_rows] each one's index in the step's rows */
    struct row_result *results;         /* [max_rows] */
    struct batch_result no_result;      /* rows NULL: what stages before the last get */
    struct pp_stats stats;              /* caller's thread only */
};

/* ---- one stage's part of a job ------------------------------------------ */

static enum es_status stage_load(struct pp_stage *sg, const struct pp_job *job)
{
    struct pp_group *g = sg->g;
    struct backend_opts o = *job->opts;
    o.pp = NULL;
    o.tp = NULL;
    o.node_stage = NULL;
    if (sg->index < g->n_nodes) {
        sg->node = (struct node_stage_config){.remote = g->cfg.nodes,
                                              .node = sg->index + 1,
                                              .first_stage = sg->stage0,
                                              .n_stages = sg->stages};
        o.node_stage = &sg->node;
        sg->be = (struct backend){.ops = &backend_node_stage_ops};
        enum es_status st = sg->be.ops->load(&sg->be, job->cfg, job->dir, &o, &sg->err);
        sg->loaded = st == ES_OK;
        return st;
    }
    int local = sg->index - g->n_nodes; /* this process's stages, devices in order */
    o.pp_stage = sg->stage0;
    o.pp_size = g->cfg.pp_size;
    o.device_id = job->opts->device_id + local;
    if (g->cfg.stage_ops == &backend_tp_ops) {
        sg->tp = *g->cfg.tp;
        sg->tp.first_device = g->cfg.tp->first_device + local * g->cfg.tp->local_ranks;
        o.tp = &sg->tp;
    }
    sg->be = (struct backend){.ops = g->cfg.stage_ops};
    enum es_status st = g->cfg.stage_ops->load(&sg->be, job->cfg, job->dir, &o, &sg->err);
    sg->loaded = st == ES_OK;
    return st;
}

/* Waits until stage `before` has finished micro-batch m; false when a
 * stage failed instead. */
static bool wait_for_input(struct pp_group *g, int before, int m)
{
    pthread_mutex_lock(&g->mu);
    while (g->progress[before] <= m && !g->aborted)
        pthread_cond_wait(&g->progress_cv, &g->mu);
    bool ready = g->progress[before] > m;
    pthread_mutex_unlock(&g->mu);
    return ready;
}

static void publish_progress(struct pp_group *g, int stage, int done, bool failed)
{
    pthread_mutex_lock(&g->mu);
    g->progress[stage] = done;
    if (failed) g->aborted = true;
    pthread_cond_broadcast(&g->progress_cv);
    pthread_mutex_unlock(&g->mu);
}

/* Runs the job's micro-batches through this stage, in order. */
static enum es_status stage_forward(struct pp_stage *sg, const struct pp_job *job)
{
    struct pp_group *g = sg->g;
    int s = sg->index;
    bool last = s == g->n_stages - 1;
    for (int m = 0; m < job->n_micro; m++) {
        if (s > 0 && !wait_for_input(g, s - 1, m)) return ES_OK; /* an earlier stage failed */
        struct batch b = job->micro[m];
        size_t row0 = (size_t)job->micro_tok0[m] * (size_t)g->hidden;
        b.hidden_in = s > 0 ? g->acts[s - 1] + row0 : job->stream_in ? job->stream_in + row0 : NULL;
        b.hidden_out = !last ? g->acts[s] + row0 : job->stream_out ? job->stream_out + row0 : NULL;
        struct batch_result *res = last ? &job->micro_results[m] : &g->no_result;
        enum es_status st = sg->be.ops->forward(&sg->be, &b, res, &sg->err);
        publish_progress(g, s, m + 1, st != ES_OK);
        if (st != ES_OK) return st;
    }
    return ES_OK;
}

static void stage_run(struct pp_stage *sg, const struct pp_job *job)
{
    es_err_clear(&sg->err);
    switch (job->kind) {
    case PP_JOB_LOAD:
        sg->st = stage_load(sg, job);
        break;
    case PP_JOB_FORWARD:
        sg->st = stage_forward(sg, job);
        break;
    case PP_JOB_COPY_BLOCKS:
        sg->st = sg->be.ops->copy_blocks(&sg->be, job->src, job->dst, job->n, &sg->err);
        break;
    case PP_JOB_CONNECT:
        sg->st = sg->be.ops->pp_connect ? sg->be.ops->pp_connect(&sg->be, &sg->g->link, &sg->err)
                                        : ES_OK;
        break;
    case PP_JOB_DESTROY:
        if (sg->loaded && sg->be.ops->destroy) sg->be.ops->destroy(&sg->be);
        sg->loaded = false;
        sg->st = ES_OK;
        break;
    }
}

static void stage_task(void *ctx, int task, int thread)
{
    (void)thread;
    struct pp_group *g = ctx;
    stage_run(&g->stages[task], &g->job);
}

/* ---- the group ------------------------------------------------------------ */

/* Runs `job` on every stage at once; returns when all are done. */
static void group_run(struct pp_group *g, const struct pp_job *job)
{
    g->job = *job;
    /* no stage runs between jobs, and cpool_run's lock publishes these */
    g->aborted = false;
    for (int s = 0; s < g->n_stages; s++)
        g->progress[s] = 0;
    cpool_run(g->pool, stage_task, g, g->n_stages);
}

/* The lowest failing stage's status and message, ES_OK when none failed. */
static enum es_status group_status(const struct pp_group *g, struct es_err *err)
{
    for (int s = 0; s < g->n_stages; s++) {
        const struct pp_stage *sg = &g->stages[s];
        const char *why = sg->err.msg[0] ? sg->err.msg : es_status_str(sg->st);
        if (sg->st != ES_OK && s < g->n_nodes)
            return es_fail(err, sg->st, "pp stages %d-%d of %d: %s", sg->stage0,
                           sg->stage0 + sg->stages - 1, g->cfg.pp_size, why);
        if (sg->st != ES_OK)
            return es_fail(err, sg->st, "pp stage %d of %d: %s", sg->stage0, g->cfg.pp_size, why);
    }
    return ES_OK;
}

static void free_buffers(struct pp_group *g)
{
    for (int s = 0; g->acts && s < g->n_stages - 1; s++)
        free(g->acts[s]);
    free(g->acts);
    free(g->micro);
    free(g->micro_tok0);
    free(g->micro_results);
    free(g->seq_starts);
    free(g->rows);
    free(g->row_origin);
    free(g->results);
    free(g->progress);
}

/* Frees the stage backends (all at once, in the pool), the pool's
 * threads, the buffers and g. Safe on a partly built group (a stage is
 * loaded only through the pool). */
static void group_free(struct pp_group *g)
{
    if (!g) return;
    if (g->pool) {
        struct pp_job job = {.kind = PP_JOB_DESTROY};
        group_run(g, &job);
        cpool_destroy(g->pool);
    }
    if (g->owns_nodes) g->cfg.nodes->close(g->cfg.nodes); /* STOP to every other node */
    free_buffers(g);
    pthread_cond_destroy(&g->progress_cv);
    pthread_mutex_destroy(&g->mu);
    pthread_cond_destroy(&g->link.published);
    pthread_mutex_destroy(&g->link.mu);
    free(g->stages);
    free(g);
}

static enum es_status check_config(const struct pp_config *c, const struct model_config *mc,
                                   struct es_err *err)
{
    if (!c || !c->stage_ops)
        return es_fail(err, ES_EINVAL, "pp backend: no pp_config or no stage backend");
    if (c->stage_ops == &backend_tp_ops && !c->tp)
        return es_fail(err, ES_EINVAL, "pp backend: tensor-parallel stages without a tp_config");
    if (c->pp_size < 1 || c->micro_batches < 0)
        return es_fail(err, ES_EINVAL, "pp backend: %d stages, %d micro-batches", c->pp_size,
                       c->micro_batches);
    if (c->pp_size > mc->num_layers)
        return es_fail(err, ES_EINVAL, "--pp %d exceeds the model's %d layers", c->pp_size,
                       mc->num_layers);
    if (c->pp_size > CPOOL_MAX_THREADS) /* one thread per stage, or the group could hang */
        return es_fail(err, ES_EINVAL, "pp backend: %d stages (at most %d)", c->pp_size,
                       CPOOL_MAX_THREADS);
    int local = c->local_stages > 0 ? c->local_stages : c->pp_size;
    if (c->first_stage < 0 || local < 1 || c->first_stage + local > c->pp_size)
        return es_fail(err, ES_EINVAL, "pp backend: stages [%d, %d) of %d", c->first_stage,
                       c->first_stage + local, c->pp_size);
    if (c->nodes && (c->stages_per_node < 1 || c->first_stage % c->stages_per_node != 0 ||
                     c->first_stage + local != c->pp_size))
        return es_fail(err, ES_EINVAL,
                       "pp backend: node 0 runs stages [%d, %d) of %d, the other nodes %d each",
                       c->first_stage, c->first_stage + local, c->pp_size, c->stages_per_node);
    return ES_OK;
}

/* The group's stages: one node stage per other node (node 0 of a
 * pipeline over nodes), then this process's. */
static void lay_out_stages(struct pp_group *g)
{
    const struct pp_config *c = &g->cfg;
    int local = c->local_stages > 0 ? c->local_stages : c->pp_size;
    g->n_nodes = c->nodes ? c->first_stage / c->stages_per_node : 0;
    g->n_stages = g->n_nodes + local;
    for (int s = 0; s < g->n_stages; s++) {
        struct pp_stage *sg = &g->stages[s];
        *sg = (struct pp_stage){.g = g, .index = s, .stages = 1};
        if (s < g->n_nodes) {
            sg->stage0 = s * c->stages_per_node;
            sg->stages = c->stages_per_node;
        } else {
            sg->stage0 = c->first_stage + s - g->n_nodes;
        }
    }
}

/* Whether this group holds every stage of the pipeline (then its stage
 * backends may link to each other: pp_connect). */
static bool holds_whole_pipeline(const struct pp_group *g)
{
    return g->n_nodes == 0 && g->cfg.first_stage == 0 && g->n_stages == g->cfg.pp_size;
}

static void *alloc_array(size_t n, size_t size)
{
    return calloc(n > 0 ? n : 1, size);
}

static enum es_status alloc_buffers(struct pp_group *g, const struct backend_opts *opts,
                                    struct es_err *err)
{
    g->max_tokens =
        opts->max_num_batched_tokens > 0 ? opts->max_num_batched_tokens : PP_DEFAULT_MAX_TOKENS;
    g->max_seqs = opts->max_num_seqs > 0 ? opts->max_num_seqs : PP_DEFAULT_MAX_SEQS;
    g->max_rows = g->max_tokens; /* the engine's bound; a batch with more runs whole */
    g->max_micro = g->cfg.micro_batches > 0 ? g->cfg.micro_batches : g->n_stages;
    g->progress = alloc_array((size_t)g->n_stages, sizeof(int));
    g->acts = alloc_array((size_t)g->n_stages - 1, sizeof(float *));
    g->micro = alloc_array((size_t)g->max_micro, sizeof(struct batch));
    g->micro_tok0 = alloc_array((size_t)g->max_micro, sizeof(int32_t));
    g->micro_results = alloc_array((size_t)g->max_micro, sizeof(struct batch_result));
    g->seq_starts = alloc_array((size_t)(g->max_seqs + g->max_micro), sizeof(int32_t));
    g->rows = alloc_array((size_t)g->max_rows, sizeof(struct logit_row));
    g->row_origin = alloc_array((size_t)g->max_rows, sizeof(int32_t));
    g->results = alloc_array((size_t)g->max_rows, sizeof(struct row_result));
    if (!g->progress || !g->acts || !g->micro || !g->micro_tok0 || !g->micro_results ||
        !g->seq_starts || !g->rows || !g->row_origin || !g->results)
        return es_fail(err, ES_ENOMEM, "pp backend: out of memory");
    for (int s = 0; s < g->n_stages - 1; s++) {
        g->acts[s] = alloc_array((size_t)g->max_tokens * (size_t)g->hidden, sizeof(float));
        if (!g->acts[s])
            return es_fail(err, ES_ENOMEM, "pp backend: out of memory for activations");
    }
    return ES_OK;
}

/* The replica's threads, split between this process's stages, and its
 * KV bytes, between all the pipeline's stages. */
static struct backend_opts stage_opts_template(const struct pp_group *g,
                                               const struct backend_opts *opts)
{
    struct backend_opts o = *opts;
    int threads = opts->num_threads, local = g->n_stages - g->n_nodes;
    if (threads <= 0) {
        long online = sysconf(_SC_NPROCESSORS_ONLN);
        threads = online > 0 ? (int)online : 1;
    }
    o.num_threads = threads / local > 0 ? threads / local : 1;
    o.kv_cache_bytes = opts->kv_cache_bytes / (size_t)g->cfg.pp_size;
    return o;
}

/* ---- the micro-batch plan ----------------------------------------------- */

/* Whether the batch can be cut: enough sequences, within the plan's
 * buffers, and well formed enough to index (a malformed one runs whole,
 * so the stage backend reports it). */
static bool can_split(const struct pp_group *g, const struct batch *b)
{
    if (g->max_micro < 2 || b->n_seqs < 2 || b->n_seqs > g->max_seqs || b->n_rows > g->max_rows)
        return false;
    if (b->seq_token_start[0] != 0 || b->seq_token_start[b->n_seqs] != b->n_tokens) return false;
    for (int s = 0; s < b->n_seqs; s++)
        if (b->seq_token_start[s + 1] < b->seq_token_start[s]) return false;
    for (int r = 0; r < b->n_rows; r++)
        if (b->rows[r].token_index < 0 || b->rows[r].token_index >= b->n_tokens) return false;
    return true;
}

/* The end of micro-batch m of n_micro (a sequence index): the first
 * sequence boundary at or past m + 1 n-ths of the tokens, leaving every
 * micro-batch at least one sequence. */
static int micro_end(const struct batch *b, int m, int n_micro, int seq_from)
{
    if (m == n_micro - 1) return b->n_seqs;
    long target = (long)b->n_tokens * (m + 1) / n_micro;
    int s = seq_from + 1;
    int s_max = b->n_seqs - (n_micro - 1 - m);
    while (s < s_max && b->seq_token_start[s] < target)
        s++;
    return s;
}

/* Micro-batch m: sequences [s0, s1) of b, their tokens and, out of b's
 * rows, those whose token falls in them (rebased). */
static void plan_one(struct pp_group *g, const struct batch *b, int m, int s0, int s1,
                     int32_t *seq_start, int *n_rows_used)
{
    int t0 = b->seq_token_start[s0], t1 = b->seq_token_start[s1];
    for (int s = s0; s <= s1; s++)
        seq_start[s - s0] = b->seq_token_start[s] - t0;
    int r0 = *n_rows_used;
    for (int r = 0; r < b->n_rows; r++) {
        int32_t t = b->rows[r].token_index;
        if (t < t0 || t >= t1) continue;
        g->rows[*n_rows_used] = b->rows[r];
        g->rows[*n_rows_used].token_index = t - t0;
        g->row_origin[*n_rows_used] = r;
        (*n_rows_used)++;
    }
    size_t stride = (size_t)b->block_table_stride;
    g->micro[m] = (struct batch){.n_tokens = t1 - t0,
                                 .token_ids = b->token_ids + t0,
                                 .positions = b->positions + t0,
                                 .slot_mapping = b->slot_mapping + t0,
                                 .n_seqs = s1 - s0,
                                 .seq_token_start = seq_start,
                                 .seq_context_len = b->seq_context_len + s0,
                                 .block_tables = b->block_tables + (size_t)s0 * stride,
                                 .block_table_stride = b->block_table_stride,
                                 .n_rows = *n_rows_used - r0,
                                 .rows = g->rows + r0,
                                 .decode_only = b->decode_only};
    g->micro_tok0[m] = t0;
    g->micro_results[m] = (struct batch_result){.rows = g->results + r0};
}

/* Cuts b into micro-batches in g's plan buffers; returns how many. One
 * means b runs whole, its rows sampled straight into result. */
static int plan_micro_batches(struct pp_group *g, const struct batch *b,
                              struct batch_result *result)
{
    if (!can_split(g, b)) {
        g->micro[0] = *b;
        g->micro_tok0[0] = 0;
        g->micro_results[0] = *result;
        return 1;
    }
    int n_micro = b->n_seqs < g->max_micro ? b->n_seqs : g->max_micro;
    int s0 = 0, n_rows_used = 0;
    int32_t *seq_start = g->seq_starts;
    for (int m = 0; m < n_micro; m++) {
        int s1 = micro_end(b, m, n_micro, s0);
        plan_one(g, b, m, s0, s1, seq_start, &n_rows_used);
        seq_start += s1 - s0 + 1;
        s0 = s1;
    }
    return n_micro;
}

/* The last stage's results of a split step, back into the batch's order. */
static void scatter_results(const struct pp_group *g, const struct batch *b,
                            struct batch_result *result)
{
    if (!result->rows) return;
    for (int i = 0; i < b->n_rows; i++)
        result->rows[g->row_origin[i]] = g->results[i];
}

/* ---- backend_ops ----------------------------------------------------------- */

/* Stage layer ranges, the group's KV block count (the smallest) and block
 * size, into be; ES_EINVAL when the stages disagree on the block size. */
static enum es_status adopt_stages(struct pp_group *g, struct backend *be, struct es_err *err)
{
    const struct backend *first = &g->stages[0].be;
    be->cfg = first->cfg;
    be->block_size = first->block_size;
    be->num_kv_blocks = first->num_kv_blocks;
    for (int s = 0; s < g->n_stages; s++) {
        const struct backend *sb = &g->stages[s].be;
        if (sb->block_size != first->block_size)
            return es_fail(err, ES_EINVAL, "pp backend: the stages disagree on the KV block size");
        if (sb->num_kv_blocks < be->num_kv_blocks) be->num_kv_blocks = sb->num_kv_blocks;
        struct pp_stage *sg = &g->stages[s];
        int lo, hi;
        pp_layer_range(first->cfg->num_layers, sg->stage0, g->cfg.pp_size, &sg->layer0, &hi);
        pp_layer_range(first->cfg->num_layers, sg->stage0 + sg->stages - 1, g->cfg.pp_size, &lo,
                       &sg->layer1);
    }
    return ES_OK;
}

static enum es_status pp_load(struct backend *be, const struct model_config *cfg, const char *dir,
                              const struct backend_opts *opts, struct es_err *err)
{
    enum es_status st = check_config(opts->pp, cfg, err);
    if (st != ES_OK) return st;
    struct pp_group *g = calloc(1, sizeof(*g));
    if (!g) return es_fail(err, ES_ENOMEM, "pp backend: out of memory");
    g->cfg = *opts->pp;
    g->hidden = cfg->hidden_size;
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->progress_cv, NULL);
    pthread_mutex_init(&g->link.mu, NULL);
    pthread_cond_init(&g->link.published, NULL);
    g->stages = calloc((size_t)g->cfg.pp_size, sizeof(*g->stages)); /* at most one each */
    if (!g->stages) {
        st = es_fail(err, ES_ENOMEM, "pp backend: out of memory");
        goto err;
    }
    lay_out_stages(g);
    if ((st = alloc_buffers(g, opts, err)) != ES_OK) goto err;
    if ((st = cpool_create(g->n_stages, &g->pool, err)) != ES_OK) {
        st = es_wrap(err, ES_ERR, "pp backend: "); /* as a failed pthread_create was */
        goto err;
    }

    struct backend_opts tmpl = stage_opts_template(g, opts);
    struct pp_job job = {.kind = PP_JOB_LOAD, .cfg = cfg, .dir = dir, .opts = &tmpl};
    group_run(g, &job);
    if ((st = group_status(g, err)) != ES_OK) goto err;
    /* Only now: a stage that joins a channel blocks until its peers do.
     * Device links need every stage here; otherwise the stream goes
     * through host memory (and the nodes' channel). */
    job = (struct pp_job){.kind = PP_JOB_CONNECT};
    if (holds_whole_pipeline(g)) group_run(g, &job);
    if ((st = group_status(g, err)) != ES_OK) goto err;
    if ((st = adopt_stages(g, be, err)) != ES_OK) goto err;
    be->impl = g;
    g->owns_nodes = g->cfg.nodes != NULL;
    LOG_PP("pipeline-parallel group of %d stages (%s), %d here, up to %d micro-batches, "
           "%d threads each, %d KV blocks",
           g->cfg.pp_size, g->cfg.stage_ops->name, g->n_stages - g->n_nodes, g->max_micro,
           tmpl.num_threads, be->num_kv_blocks);
    for (int s = 0; s < g->n_stages; s++) {
        const struct pp_stage *sg = &g->stages[s];
        if (s < g->n_nodes)
            LOG_PP("stages %d-%d on node %d: layers [%d, %d), %d KV blocks", sg->stage0,
                   sg->stage0 + sg->stages - 1, sg->node.node, sg->layer0, sg->layer1,
                   sg->be.num_kv_blocks);
        else
            LOG_PP("stage %d: layers [%d, %d), %d KV blocks", sg->stage0, sg->layer0, sg->layer1,
                   sg->be.num_kv_blocks);
    }
    return ES_OK;
err:
    group_free(g);
    return st;
}

static enum es_status pp_forward(struct backend *be, const struct batch *batch,
                                 struct batch_result *result, struct es_err *err)
{
    struct pp_group *g = be->impl;
    if (g->broken)
        return es_fail(err, ES_EIO, "pipeline-parallel group broken by an earlier failure");
    if (batch->n_tokens < 0 || batch->n_tokens > g->max_tokens)
        return es_fail(err, ES_EINVAL, "batch: %d tokens (max %d)", batch->n_tokens, g->max_tokens);
    int n_micro = plan_micro_batches(g, batch, result);
    struct pp_job job = {.kind = PP_JOB_FORWARD,
                         .stream_in = batch->hidden_in,
                         .stream_out = batch->hidden_out,
                         .n_micro = n_micro,
                         .micro = g->micro,
                         .micro_tok0 = g->micro_tok0,
                         .micro_results = g->micro_results};
    group_run(g, &job);
    enum es_status st = group_status(g, err);
    if (st != ES_OK) {
        g->broken = true;
        return st;
    }
    if (n_micro > 1) {
        scatter_results(g, batch, result);
        g->stats.split_steps++;
        LOG_PP_DEBUG("step of %d tokens, %d sequences in %d micro-batches", batch->n_tokens,
                     batch->n_seqs, n_micro);
    }
    g->stats.steps++;
    g->stats.micro_batches += (unsigned long)n_micro;
    return ES_OK;
}

static enum es_status pp_copy_blocks(struct backend *be, const int32_t *src, const int32_t *dst,
                                     int n, struct es_err *err)
{
    struct pp_group *g = be->impl;
    if (g->broken)
        return es_fail(err, ES_EIO, "pipeline-parallel group broken by an earlier failure");
    struct pp_job job = {.kind = PP_JOB_COPY_BLOCKS, .src = src, .dst = dst, .n = n};
    group_run(g, &job);
    enum es_status st = group_status(g, err);
    if (st != ES_OK) g->broken = true;
    return st;
}

static void pp_destroy(struct backend *be)
{
    if (!be || !be->impl) return;
    struct pp_group *g = be->impl;
    LOG_PP("pipeline-parallel group of %d stages: %lu steps, %lu split into micro-batches, "
           "%lu micro-batches",
           g->cfg.pp_size, g->stats.steps, g->stats.split_steps, g->stats.micro_batches);
    group_free(g);
    be->impl = NULL;
}

void backend_pp_stats(const struct backend *be, struct pp_stats *out)
{
    const struct pp_group *g = be->impl;
    *out = g ? g->stats : (struct pp_stats){0};
}

void pp_link_publish(struct pp_link *link, int column, const void *blob, size_t n, bool ok)
{
    if (column < 0 || column >= PP_LINK_MAX_COLUMNS) return;
    pthread_mutex_lock(&link->mu);
    ok = ok && n <= PP_LINK_BLOB_BYTES;
    if (ok) memcpy(link->blob[column], blob, n);
    link->state[column] = ok ? 1 : -1;
    pthread_cond_broadcast(&link->published);
    pthread_mutex_unlock(&link->mu);
}

bool pp_link_fetch(struct pp_link *link, int column, void *blob, size_t n)
{
    if (column < 0 || column >= PP_LINK_MAX_COLUMNS || n > PP_LINK_BLOB_BYTES) return false;
    pthread_mutex_lock(&link->mu);
    while (link->state[column] == 0)
        pthread_cond_wait(&link->published, &link->mu);
    bool ok = link->state[column] > 0;
    if (ok) memcpy(blob, link->blob[column], n);
    pthread_mutex_unlock(&link->mu);
    return ok;
}

const struct backend_ops backend_pp_ops = {
    .name = "pp",
    .load = pp_load,
    .forward = pp_forward,
    .copy_blocks = pp_copy_blocks,
    .destroy = pp_destroy,
};
