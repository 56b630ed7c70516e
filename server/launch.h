/*
 * launch.h - brings up what evalserver serves, for every parallel layout:
 * the model config, the tokenizer and chat template, then one backend per
 * replica (--dp): a plain backend, a --tp group, a --pp pipeline (of plain
 * backends or --tp groups), or on node 0 of --nnodes a --tp group whose
 * ranks span the nodes; then an engine per replica behind one router.
 * Also runs a node other than 0 of a multi-node group (no HTTP, no engine).
 *
 * Owns everything in struct launch until launch_unload(). Never touches
 * HTTP or the process's exit beyond returning a worker node's status.
 */
#ifndef ES_LAUNCH_H
#define ES_LAUNCH_H

#include "backend.h"
#include "chat_template.h"
#include "engine.h"
#include "model_config.h"
#include "options.h"
#include "router.h"
#include "status.h"
#include "tokenizer.h"

struct tp_remote; /* backend_tp.h */

#define LAUNCH_KV_BLOCK_SIZE 16 /* tokens per KV block, every backend */
/* --step-timeout's default with --device cuda: far beyond any step's time
 * (a 2048-token prefill of a 70B stage takes about a second), well within
 * what an evaluation run would wait for a hung GPU or NCCL peer */
#define LAUNCH_CUDA_STEP_TIMEOUT_S 600.0

/* What node 0 loaded. Zero it before launch_load(). */
struct launch {
    struct model_config mc;
    struct tokenizer *tok;
    struct chat_template *ct;      /* NULL: no usable template, chat answers 400 */
    int n_replicas;                /* --dp */
    struct backend **be;           /* [n_replicas], loaded or NULL */
    struct engine **engines;       /* [n_replicas] until the router owns them */
    struct router *router;         /* started; owns the engines */
    struct tp_remote *node_remote; /* node 0 of --nnodes: the channel to the other nodes,
                                      owned by replica 0's group, borrowed to watch it */
};

/* Loads the model, tokenizer, chat template and every replica, and starts
 * the router. On failure L holds what was built: call launch_unload(). */
enum es_status launch_load(const struct options *o, struct launch *L, struct es_err *err);

/* Frees what launch_load() built, after router_stop(). */
void launch_unload(struct launch *L);

/* A node other than 0 of a multi-node group: loads its ranks' shards and
 * replays node 0's steps until node 0 says stop. Returns the process's
 * exit status: 0 after STOP, 1 when anything failed (reported on stderr). */
int launch_worker_node(const struct options *o);

#endif
