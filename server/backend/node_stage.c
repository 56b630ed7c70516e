/*
 * node_stage.c - a range of pipeline stages run by another node, as a
 * backend (node_stage.h).
 *
 * Owns its encode buffer and decoded answer (grow-only: after the first
 * steps nothing allocates); borrows the channel. One call at a time per
 * instance (backend_pp runs each stage on one thread at a time); calls of
 * different instances go to different nodes and may overlap, which
 * node_remote_call allows. Never retries: a failed call fails the step,
 * and backend_pp then treats the whole group as broken.
 */
#include "node_stage.h"

#include <stdlib.h>
#include <string.h>

#include "node_worker.h"
#include "step_wire.h"

struct node_stage {
    struct node_stage_config cfg;
    int hidden; /* the model's width: the stream's floats per token */
    struct sw_buf msg;
    struct sw_cmd answer;
};

/* The answer's ERROR as this backend's error; anything but `expected` is
 * a protocol failure. */
static enum es_status check_answer(const struct node_stage *ns, enum sw_kind expected,
                                   struct es_err *err)
{
    if (ns->answer.kind == expected) return ES_OK;
    if (ns->answer.kind == SW_ERROR)
        return es_fail(err, ns->answer.error_status, "node %d (stages %d-%d): %s", ns->cfg.node,
                       ns->cfg.first_stage, ns->cfg.first_stage + ns->cfg.n_stages - 1,
                       ns->answer.error_msg[0] ? ns->answer.error_msg : "failed");
    return es_fail(err, ES_EFORMAT, "node %d answered with message kind %d, not %d", ns->cfg.node,
                   (int)ns->answer.kind, (int)expected);
}

static void free_stage(struct node_stage *ns)
{
    sw_buf_free(&ns->msg);
    sw_cmd_free(&ns->answer);
    free(ns);
}

static enum es_status ns_load(struct backend *be, const struct model_config *cfg, const char *dir,
                              const struct backend_opts *opts, struct es_err *err)
{
    (void)dir;
    const struct node_stage_config *c = opts->node_stage;
    if (!c || !c->remote || c->node < 1 || c->n_stages < 1)
        return es_fail(err, ES_EINVAL, "node stage: no node_stage_config, or a bad one");
    struct node_stage *ns = calloc(1, sizeof(*ns));
    if (!ns) return es_fail(err, ES_ENOMEM, "node stage: out of memory");
    ns->cfg = *c;
    ns->hidden = cfg->hidden_size;
    enum es_status st = node_remote_call(c->remote, c->node, NULL, &ns->answer, err);
    if (st == ES_OK) st = check_answer(ns, SW_READY, err);
    if (st == ES_OK && ns->answer.ready_block_size != opts->block_size)
        st = es_fail(err, ES_EINVAL, "node %d uses KV blocks of %d tokens, node 0 of %d", c->node,
                     ns->answer.ready_block_size, opts->block_size);
    if (st == ES_OK && ns->answer.ready_kv_blocks < 1)
        st = es_fail(err, ES_EINVAL, "node %d has %d KV blocks", c->node,
                     ns->answer.ready_kv_blocks);
    if (st != ES_OK) {
        free_stage(ns);
        return st;
    }
    be->impl = ns;
    be->cfg = cfg;
    be->block_size = ns->answer.ready_block_size;
    be->num_kv_blocks = ns->answer.ready_kv_blocks;
    return ES_OK;
}

static enum es_status ns_forward(struct backend *be, const struct batch *batch,
                                 struct batch_result *result, struct es_err *err)
{
    (void)result; /* the node never samples */
    struct node_stage *ns = be->impl;
    if (!batch->hidden_out)
        return es_fail(err, ES_EINVAL, "node %d: its stages cannot be the pipeline's last",
                       ns->cfg.node);
    enum es_status st = sw_encode_stage_forward(&ns->msg, batch, be->block_size, ns->hidden, err);
    if (st == ES_OK)
        st = node_remote_call(ns->cfg.remote, ns->cfg.node, &ns->msg, &ns->answer, err);
    if (st == ES_OK) st = check_answer(ns, SW_HIDDEN, err);
    if (st != ES_OK) return st;
    if (ns->answer.hidden_tokens != batch->n_tokens || ns->answer.hidden != ns->hidden)
        return es_fail(err, ES_EFORMAT, "node %d answered a %d x %d stream for %d x %d",
                       ns->cfg.node, ns->answer.hidden_tokens, ns->answer.hidden, batch->n_tokens,
                       ns->hidden);
    memcpy(batch->hidden_out, ns->answer.hidden_data,
           (size_t)batch->n_tokens * (size_t)ns->hidden * sizeof(float));
    return ES_OK;
}

static enum es_status ns_copy_blocks(struct backend *be, const int32_t *src, const int32_t *dst,
                                     int n, struct es_err *err)
{
    struct node_stage *ns = be->impl;
    enum es_status st = sw_encode_copy_blocks(&ns->msg, src, dst, n, err);
    if (st == ES_OK)
        st = node_remote_call(ns->cfg.remote, ns->cfg.node, &ns->msg, &ns->answer, err);
    return st == ES_OK ? check_answer(ns, SW_DONE, err) : st;
}

static void ns_destroy(struct backend *be)
{
    if (!be || !be->impl) return;
    free_stage(be->impl);
    be->impl = NULL;
}

const struct backend_ops backend_node_stage_ops = {
    .name = "node-stage",
    .load = ns_load,
    .forward = ns_forward,
    .copy_blocks = ns_copy_blocks,
    .destroy = ns_destroy,
};
