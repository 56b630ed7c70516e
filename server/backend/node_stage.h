/*
 * node_stage.h - pipeline stages that another node runs, behind the
 * ordinary backend interface: node 0's backend_pp holds one such backend
 * per other node of a pipeline over nodes (--pp with --nnodes), beside
 * its own stages.
 *
 * load() waits for the node's READY (its stages loaded: their KV block
 * count and block size) or ERROR; forward() sends the micro-batch and the
 * residual stream coming in (batch.hidden_in; the model's first stage
 * takes none) and writes the node's answer to batch.hidden_out;
 * copy_blocks() runs on the node's KV cache. The node never holds the
 * model's last stage (node 0 does, and samples), so hidden_out must be
 * set. Every call waits for the node's answer; a node's ERROR comes back
 * as this backend's error, naming the node.
 */
#ifndef ES_NODE_STAGE_H
#define ES_NODE_STAGE_H

#include "backend.h"

struct tp_remote;

struct node_stage_config {
    struct tp_remote *remote;  /* node 0's channel (node_worker.h); not owned */
    int node;                  /* the node that runs the stages, >= 1 */
    int first_stage, n_stages; /* the stages it runs, of the model's pipeline */
};

/* load() reads its node_stage_config from opts->node_stage (must be set). */
extern const struct backend_ops backend_node_stage_ops;

#endif
