/*
 * launch.c - loads the model and builds each replica's backend for the
 * parallel layout asked for (see launch.h), and runs a worker node of a
 * multi-node group.
 *
 * Owns the struct launch it fills until launch_unload(); the router, once
 * created, owns the engines and their backends' contents. Logs under the
 * "main" tag (the messages predate this file). Never exits and never
 * touches HTTP: errors return through es_err.
 */
#include "launch.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend_pp.h"
#include "backend_tp.h"
#include "fingerprint.h"
#include "log.h"
#include "netio.h"
#include "node_worker.h"
#include "textfile.h"

#define LOG_MAIN(...) LOG_I("main", __VA_ARGS__)

/* --pp with --nnodes: whole stages per node, each with all its TP ranks. */
static bool pipeline_over_nodes(const struct options *o)
{
    return o->pp > 1 && o->nnodes > 1;
}

static struct node_shape node_shape_of(const struct options *o)
{
    return (struct node_shape){.nnodes = o->nnodes,
                               .node_rank = o->node_rank,
                               .tp_size = o->tp,
                               .pp_size = o->pp,
                               .block_size = LAUNCH_KV_BLOCK_SIZE,
                               .fingerprint = fingerprint_node(o)};
}

/* A built-in template when the tokenizer ships none, chosen by its
 * special tokens. */
static const char *fallback_template(const struct tokenizer *tok)
{
    if (tok_piece_to_id(tok, "<|start_header_id|>") >= 0) return ct_builtin("llama3");
    if (tok_piece_to_id(tok, "<|im_start|>") >= 0) return ct_builtin("chatml");
    if (tok_piece_to_id(tok, "<s>") >= 0) return ct_builtin("llama2");
    return ct_builtin("plain");
}

static enum es_status check_tp_heads(const struct options *o, const struct model_config *mc,
                                     struct es_err *err)
{
    if (mc->num_heads % o->tp != 0 || mc->num_kv_heads % o->tp != 0)
        return es_fail(err, ES_EINVAL,
                       "--tp %d must divide the model's %d attention heads and %d KV heads", o->tp,
                       mc->num_heads, mc->num_kv_heads);
    return ES_OK;
}

static int resolved_max_model_len(const struct options *o, const struct model_config *mc)
{
    int len = o->max_model_len > 0 ? o->max_model_len : mc->max_position_embeddings;
    return len > 0 ? len : 2048;
}

/* One replica's backend options; with --tp > 1, tpc (this node's ranks of
 * the group) is filled in and hooked into them. */
static void replica_backend_opts(const struct options *o, int max_model_len,
                                 struct backend_opts *bo, struct tp_config *tpc)
{
    *bo = (struct backend_opts){0};
    bo->block_size = LAUNCH_KV_BLOCK_SIZE;
    bo->max_num_batched_tokens = o->max_num_batched_tokens;
    bo->max_num_seqs = o->max_num_seqs;
    bo->max_model_len = max_model_len;
    bo->kv_cache_bytes = (size_t)(o->kv_cache_gb * (double)(1ull << 30));
    bo->gpu_memory_utilization = o->gpu_memory_utilization;
    bo->batch_invariant = o->batch_invariant;
    bo->high_precision = o->high_precision;
    /* --dp: the CPU threads are split between the replicas. */
    int threads = o->threads > 0 ? o->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    bo->num_threads = threads / o->dp > 0 ? threads / o->dp : 1;
    /* --tp: each replica is a group of o->tp ranks, threads of this
     * process, or with --nnodes (and no --pp) spread evenly over the
     * nodes. */
    int local = pipeline_over_nodes(o) ? o->tp : o->tp / o->nnodes;
    *tpc = (struct tp_config){.inner = &backend_cpu_ops,
                              .tp_size = o->tp,
                              .first_rank = pipeline_over_nodes(o) ? 0 : o->node_rank * local,
                              .local_ranks = local,
                              .master_addr = o->master_addr,
                              .master_port = o->master_port + NODE_COMM_PORT_OFFSET,
                              .connect_timeout_s = o->node_timeout};
#ifdef HAVE_CUDA
    if (strcmp(o->device, "cuda") == 0) tpc->inner = &backend_cuda_ops;
#endif
    if (o->tp > 1) bo->tp = tpc;
}

/* Node 0 of a multi-node group: waits for the other nodes and returns
 * the remote that mirrors each step to them (and that keeps turning later
 * nodes away on the control port). */
static enum es_status join_nodes(const struct options *o, struct tp_remote **remote,
                                 struct es_err *err)
{
    struct node_shape shape = node_shape_of(o);
    int fds[1024], listen_fd = -1;
    LOG_MAIN("node 0 of %d: waiting up to %.0f s for the other nodes on %s:%d", o->nnodes,
             o->node_timeout, o->master_addr, o->master_port);
    enum es_status st = node_control_accept(&shape, o->master_addr, o->master_port, o->node_timeout,
                                            fds, &listen_fd, err);
    if (st != ES_OK) return st;
    return node_remote_create(&shape, fds, listen_fd, remote, err);
}

/* --chat-template, else the tokenizer's own, else a built-in one chosen by
 * the tokenizer's special tokens. Only an unusable --chat-template fails;
 * with no usable template at all L->ct stays NULL. */
static enum es_status load_chat_template(const struct options *o, struct launch *L,
                                         struct es_err *err)
{
    char *tmpl_owned = NULL;
    const char *tmpl = NULL;
    if (o->chat_template) {
        tmpl = tmpl_owned = textfile_read(o->chat_template);
        if (!tmpl) return es_fail(err, ES_EIO, "--chat-template %s: cannot read", o->chat_template);
    } else {
        tmpl = tok_chat_template(L->tok);
    }
    if (tmpl) {
        struct es_err cerr = {{0}};
        if (ct_compile(tmpl, &L->ct, &cerr) != ES_OK) {
            if (o->chat_template) {
                free(tmpl_owned);
                return es_fail(err, ES_EFORMAT, "--chat-template: %s", cerr.msg);
            }
            LOG_W("main",
                  "the tokenizer's chat template does not compile (%s); using a "
                  "built-in one",
                  cerr.msg);
            tmpl = NULL;
        }
    }
    free(tmpl_owned);
    if (!L->ct) {
        const char *fb = fallback_template(L->tok);
        if (fb && ct_compile(fb, &L->ct, err) != ES_OK) {
            LOG_W("main", "no usable chat template: /v1/chat/completions will answer 400");
            L->ct = NULL;
            es_err_clear(err);
        }
    }
    return ES_OK;
}

/* The backend ops of one pipeline stage (of the whole replica without
 * --pp): a TP group or a plain backend (the CUDA one for --device cuda
 * without --tp). */
static const struct backend_ops *stage_ops(const struct options *o)
{
    const struct backend_ops *ops = o->tp > 1 ? &backend_tp_ops : &backend_cpu_ops;
#ifdef HAVE_CUDA
    if (strcmp(o->device, "cuda") == 0 && o->tp == 1) ops = &backend_cuda_ops;
#endif
    return ops;
}

static const struct backend_ops *replica_ops(const struct options *o)
{
    return o->pp > 1 ? &backend_pp_ops : stage_ops(o);
}

/* Loads every replica's backend into L->be. */
static enum es_status load_replicas(const struct options *o, int max_model_len, struct launch *L,
                                    struct es_err *err)
{
    enum es_status st = ES_OK;
    struct backend_opts bo;
    struct tp_config tpc;
    replica_backend_opts(o, max_model_len, &bo, &tpc);
    /* --pp: each replica is a pipeline of o->pp stages, each stage a
     * plain backend or (--tp) a TP group. */
    struct pp_config ppc = {.stage_ops = stage_ops(o),
                            .tp = &tpc,
                            .pp_size = o->pp,
                            .micro_batches = o->pp_micro_batches};
    if (o->pp > 1) bo.pp = &ppc;
    /* --nnodes: the group (one replica) owns the remote once loaded: the
     * TP group, or with --pp the pipeline, whose last stages are node 0's. */
    struct tp_remote **remote = pipeline_over_nodes(o) ? &ppc.nodes : &tpc.remote;
    if (o->nnodes > 1 && (st = join_nodes(o, remote, err)) != ES_OK) return st;
    if (pipeline_over_nodes(o)) {
        ppc.stages_per_node = o->pp / o->nnodes;
        ppc.local_stages = ppc.stages_per_node;
        ppc.first_stage = o->pp - ppc.stages_per_node;
    }
    L->n_replicas = o->dp;
    L->be = calloc((size_t)o->dp, sizeof(*L->be));
    L->engines = calloc((size_t)o->dp, sizeof(*L->engines));
    if (!L->be || !L->engines) st = es_fail(err, ES_ENOMEM, "out of memory");
    for (int i = 0; st == ES_OK && i < o->dp; i++) {
        L->be[i] = calloc(1, sizeof(*L->be[i]));
        if (!L->be[i]) {
            st = es_fail(err, ES_ENOMEM, "out of memory");
            break;
        }
        L->be[i]->ops = replica_ops(o);
        /* cuda: replica i's GPUs are [i tp pp, (i + 1) tp pp): stage s of it
         * (backend_pp.c) on device_id + s, or its TP group from first_device +
         * s tp */
        bo.device_id = i * o->pp;
        tpc.first_device = i * tpc.local_ranks * o->pp;
        st = L->be[i]->ops->load(L->be[i], &L->mc, o->model, &bo, err);
        if (st != ES_OK) es_wrap(err, st, "replica %d: ", i);
    }
    if (st != ES_OK && *remote) (*remote)->close(*remote); /* not loaded: still ours */
    if (st == ES_OK) L->node_remote = *remote;
    return st;
}

/* Node 0's watchdog found another node gone: the replica fails as when a
 * step fails (its requests end with errors, /health 503, exit 1). */
static void fail_replica(void *engine, const char *why)
{
    engine_fail(engine, why);
}

/* --async-scheduling auto: on where the forward runs on a device; on the
 * CPU backend only when its threads leave a core to the engine thread
 * (built ahead, the next step's host work would otherwise take a core from
 * the forward's parallel loops, which then wait for it: the tiny model's
 * W1 on two cores ran 15% slower that way). */
static bool async_scheduling_of(const struct options *o)
{
    if (strcmp(o->async_scheduling, "auto") != 0) return strcmp(o->async_scheduling, "on") == 0;
    if (strcmp(o->device, "cpu") != 0) return true;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    long threads = o->threads > 0 ? o->threads : cores;
    long per_replica = threads / o->dp > 0 ? threads / o->dp : 1;
    long busy = per_replica * o->dp * o->tp * o->pp / o->nnodes;
    return busy < cores;
}

/* --step-timeout, or the device's default: a hung forward is normal only
 * on a device (cuda: LAUNCH_CUDA_STEP_TIMEOUT_S; cpu: never). */
static double step_timeout_of(const struct options *o)
{
    if (o->step_timeout >= 0) return o->step_timeout;
    return strcmp(o->device, "cuda") == 0 ? LAUNCH_CUDA_STEP_TIMEOUT_S : 0;
}

/* One engine per replica, handed to a router that is then started; with
 * --nnodes, the watchdog over the other nodes reports to replica 0's. */
static enum es_status start_engines(const struct options *o, int max_model_len, struct launch *L,
                                    struct es_err *err)
{
    struct engine_opts eo;
    engine_opts_defaults(&eo);
    eo.max_num_batched_tokens = o->max_num_batched_tokens;
    eo.max_num_seqs = o->max_num_seqs;
    eo.max_model_len = max_model_len;
    eo.max_waiting = o->max_queue;
    eo.enable_prefix_caching = !o->no_prefix_caching;
    eo.async_scheduling = async_scheduling_of(o);
    eo.step_timeout_s = step_timeout_of(o);
    LOG_MAIN("async scheduling %s (--async-scheduling %s)", eo.async_scheduling ? "on" : "off",
             o->async_scheduling);
    for (int i = 0; i < o->dp; i++) {
        eo.replica_index = i;
        enum es_status st = engine_create(L->be[i], L->tok, &eo, &L->engines[i], err);
        if (st != ES_OK) return st;
    }
    if (L->node_remote) {
        enum es_status st =
            node_remote_watch(L->node_remote, o->node_timeout, fail_replica, L->engines[0], err);
        if (st != ES_OK) return st;
    }
    enum es_status st = router_create(L->engines, o->dp, NULL, &L->router, err);
    if (st != ES_OK) return st;
    memset(L->engines, 0, (size_t)o->dp * sizeof(*L->engines)); /* the router owns them */
    return router_start(L->router);
}

enum es_status launch_load(const struct options *o, struct launch *L, struct es_err *err)
{
    enum es_status st = mc_load(o->model, &L->mc, err);
    if (st != ES_OK) return st;
    if ((st = check_tp_heads(o, &L->mc, err)) != ES_OK) return st;
    st = tok_load(o->model, &L->tok, err);
    if (st != ES_OK) return st;
    if ((st = load_chat_template(o, L, err)) != ES_OK) return st;
    int max_model_len = resolved_max_model_len(o, &L->mc);
    if ((st = load_replicas(o, max_model_len, L, err)) != ES_OK) return st;
    return start_engines(o, max_model_len, L, err);
}

void launch_unload(struct launch *L)
{
    router_destroy(L->router); /* its engines, and their backends' contents */
    for (int i = 0; i < L->n_replicas; i++) {
        if (L->engines && L->engines[i])
            engine_destroy(L->engines[i]); /* created before a failure */
        else if (!L->router && L->be && L->be[i] && L->be[i]->impl && L->be[i]->ops->destroy)
            L->be[i]->ops->destroy(L->be[i]);
        /* a hung forward's thread still uses its backend's struct */
        if (L->be && !engine_backend_abandoned(L->be[i])) free(L->be[i]);
    }
    free(L->engines);
    free(L->be);
    ct_free(L->ct);
    tok_free(L->tok);
}

/* A worker node of a pipeline over nodes: its stages, before node 0's. */
static void worker_stages(const struct options *o, const struct tp_config *tpc,
                          struct pp_config *ppc, struct backend_opts *bo, struct backend *be)
{
    int each = o->pp / o->nnodes;
    *ppc = (struct pp_config){.stage_ops = stage_ops(o),
                              .tp = tpc,
                              .pp_size = o->pp,
                              .first_stage = (o->node_rank - 1) * each,
                              .local_stages = each};
    bo->pp = ppc;
    *be = (struct backend){.ops = &backend_pp_ops};
}

/* Tells node 0 how the load went; a failed load stays the status (and a
 * loaded group whose READY cannot go out is freed here). */
static enum es_status report_load(int control_fd, struct backend *be, enum es_status load_st,
                                  struct es_err *err)
{
    struct es_err send_err = {{0}};
    enum es_status st = node_worker_report_load(control_fd, be, load_st, err, &send_err);
    if (load_st != ES_OK) return load_st;
    if (st != ES_OK) {
        be->ops->destroy(be);
        *err = send_err;
    }
    return st;
}

/* A node other than 0 of a multi-node group: no HTTP, tokenizer or
 * engine. Loads its ranks' shards, replays node 0's steps until node 0
 * says stop, and returns the exit status: 0 after STOP, 1 when anything
 * failed (node 0 gone included: its connection ended, or it sent nothing,
 * not even a heartbeat, for --node-timeout). SIGTERM and SIGINT keep
 * their default action: the process ends, and its peers see it gone. */
int launch_worker_node(const struct options *o)
{
    signal(SIGPIPE, SIG_IGN);
    struct es_err err = {{0}};
    struct model_config mc;
    struct backend be = {.ops = &backend_tp_ops};
    struct backend_opts bo;
    struct tp_config tpc;
    struct pp_config ppc;
    int control_fd = -1;
    if (pipeline_over_nodes(o)) {
        int each = o->pp / o->nnodes;
        LOG_MAIN("node %d of %d: worker for pipeline stages %d-%d of %d of %s (node 0 at %s:%d)",
                 o->node_rank, o->nnodes, (o->node_rank - 1) * each, o->node_rank * each - 1, o->pp,
                 o->model, o->master_addr, o->master_port);
    } else {
        LOG_MAIN("node %d of %d: worker for %d of %d tensor-parallel ranks of %s (node 0 at "
                 "%s:%d)",
                 o->node_rank, o->nnodes, o->tp / o->nnodes, o->tp, o->model, o->master_addr,
                 o->master_port);
    }
    enum es_status st = mc_load(o->model, &mc, &err);
    if (st == ES_OK) st = check_tp_heads(o, &mc, &err);
    if (st == ES_OK) {
        struct node_shape shape = node_shape_of(o);
        st = node_control_connect(&shape, o->master_addr, o->master_port, o->node_timeout,
                                  &control_fd, &err);
    }
    if (st == ES_OK) {
        replica_backend_opts(o, resolved_max_model_len(o, &mc), &bo, &tpc);
        if (pipeline_over_nodes(o)) worker_stages(o, &tpc, &ppc, &bo, &be);
        st = be.ops->load(&be, &mc, o->model, &bo, &err);
        if (pipeline_over_nodes(o)) st = report_load(control_fd, &be, st, &err);
    }
    if (st == ES_OK) {
        enum node_role role = pipeline_over_nodes(o) ? NODE_PP_STAGES : NODE_TP_RANKS;
        bool abandoned = false;
        st = node_worker_run(&be, control_fd, o->node_timeout, step_timeout_of(o), role, &abandoned,
                             &err);
        if (!abandoned) be.ops->destroy(&be); /* else a step's thread still runs in it */
    }
    if (control_fd >= 0) nio_close(control_fd);
    if (st != ES_OK) {
        fprintf(stderr, "evalserver: node %d of %d: %s\n", o->node_rank, o->nnodes, err.msg);
        return 1;
    }
    LOG_MAIN("node %d: bye", o->node_rank);
    return 0;
}
