/*
 * test_backend_tp.c - unit tests of server/backend/backend_tp.c as a group
 * spread over "nodes" (two backend_tp groups of two local ranks each, in
 * threads of this process, joined by comm_tcp on 127.0.0.1) around a
 * probe inner backend whose forward is one all_reduce of each rank's
 * number: the nodes agree on the smallest KV block count of all four
 * ranks; forward's sum reaches rank 0's result; a rank that fails a
 * forward outside the collective, or fails its load, makes every rank on
 * both nodes fail instead of waiting for it forever, and a broken group
 * then fails at once.
 */
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "backend_tp.h"
#include "comm.h"
#include "test_net.h"
#include "testing.h"

#define TP_SIZE 4
#define LOCAL 2 /* ranks per node */
#define BLOCK 16

/* What the probe does wrong, set before each test's groups load. */
static int fail_load_rank = -1;
static int fail_forward_rank = -1, fail_forward_step = -1;

struct probe {
    int rank;
    struct comm *comm;
    int steps;
};

static int probe_blocks(int rank)
{
    return rank == 3 ? 90 : 100 + rank; /* the smallest is on node 1 */
}

static enum es_status probe_load(struct backend *be, const struct model_config *cfg,
                                 const char *dir, const struct backend_opts *opts,
                                 struct es_err *err)
{
    (void)dir;
    if (opts->tp_rank == fail_load_rank)
        return es_fail(err, ES_ENOMEM, "probe: rank %d cannot load", opts->tp_rank);
    struct probe *p = calloc(1, sizeof(*p));
    if (!p) return es_fail(err, ES_ENOMEM, "probe: out of memory");
    *p = (struct probe){.rank = opts->tp_rank, .comm = opts->comm};
    be->impl = p;
    be->cfg = cfg;
    be->block_size = opts->block_size;
    be->num_kv_blocks = probe_blocks(p->rank);
    return ES_OK;
}

static enum es_status probe_forward(struct backend *be, const struct batch *batch,
                                    struct batch_result *result, struct es_err *err)
{
    (void)batch;
    struct probe *p = be->impl;
    int step = p->steps++;
    if (p->rank == fail_forward_rank && step == fail_forward_step)
        return es_fail(err, ES_EINVAL, "probe: rank %d fails step %d", p->rank, step);
    float x = (float)(p->rank + 1);
    enum es_status st = p->comm->ops->all_reduce_sum(p->comm, &x, 1, err);
    if (st == ES_OK && result->rows) result->rows[0].token = (int32_t)x;
    return st;
}

static enum es_status probe_copy(struct backend *be, const int32_t *src, const int32_t *dst, int n,
                                 struct es_err *err)
{
    (void)be, (void)src, (void)dst, (void)n, (void)err;
    return ES_OK;
}

static void probe_destroy(struct backend *be)
{
    free(be->impl);
    be->impl = NULL;
}

static const struct backend_ops probe_ops = {.name = "probe",
                                             .load = probe_load,
                                             .forward = probe_forward,
                                             .copy_blocks = probe_copy,
                                             .destroy = probe_destroy};

/* One node: loads its group, then runs n_steps forwards. */
struct node {
    int index, port, n_steps;
    struct backend be;
    enum es_status load_st;
    enum es_status step_st[4];
    int32_t token[4]; /* rank 0's result per step (node 0) */
    struct es_err load_err, step_err[4];
};

static void *node_main(void *arg)
{
    struct node *n = arg;
    static const struct model_config cfg;
    struct tp_config tpc = {.inner = &probe_ops,
                            .tp_size = TP_SIZE,
                            .first_rank = n->index * LOCAL,
                            .local_ranks = LOCAL,
                            .master_addr = "127.0.0.1",
                            .master_port = n->port,
                            .connect_timeout_s = 10.0};
    struct backend_opts opts = {.block_size = BLOCK, .num_threads = LOCAL, .tp = &tpc};
    n->be = (struct backend){.ops = &backend_tp_ops};
    n->load_st = n->be.ops->load(&n->be, &cfg, "unused", &opts, &n->load_err);
    if (n->load_st != ES_OK) return NULL;
    for (int s = 0; s < n->n_steps; s++) {
        struct row_result row = {.token = -1};
        struct logit_row want = {.token_index = 0, .n_top = -1, .target_id = -1};
        struct batch b = {.n_rows = 1, .rows = &want};
        struct batch_result res = {.rows = &row};
        n->step_st[s] = n->be.ops->forward(&n->be, &b, &res, &n->step_err[s]);
        n->token[s] = row.token;
    }
    n->be.ops->destroy(&n->be);
    return NULL;
}

static void run_nodes(struct node nodes[2], int n_steps)
{
    int port = free_port();
    pthread_t th[2];
    for (int i = 0; i < 2; i++) {
        nodes[i] = (struct node){.index = i, .port = port, .n_steps = n_steps};
        pthread_create(&th[i], NULL, node_main, &nodes[i]);
    }
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
}

static void test_agree_and_forward(void)
{
    fail_load_rank = fail_forward_rank = fail_forward_step = -1;
    struct node nodes[2];
    run_nodes(nodes, 3);
    for (int i = 0; i < 2; i++) {
        if (nodes[i].load_st != ES_OK) fprintf(stderr, "node %d: %s\n", i, nodes[i].load_err.msg);
        CHECK(nodes[i].load_st == ES_OK);
        CHECK(nodes[i].be.num_kv_blocks == 90); /* rank 3's, on node 1 */
        CHECK(nodes[i].be.block_size == BLOCK);
        for (int s = 0; s < 3; s++)
            CHECK(nodes[i].step_st[s] == ES_OK);
    }
    for (int s = 0; s < 3; s++)
        CHECK(nodes[0].token[s] == 1 + 2 + 3 + 4);
}

/* Rank `rank` fails step 1 before its collective: every rank of both
 * nodes fails that step (no hang), and step 2 fails at once. */
static void test_forward_failure(int rank)
{
    fail_load_rank = -1;
    fail_forward_rank = rank;
    fail_forward_step = 1;
    struct node nodes[2];
    run_nodes(nodes, 3);
    for (int i = 0; i < 2; i++) {
        CHECK(nodes[i].load_st == ES_OK);
        CHECK(nodes[i].step_st[0] == ES_OK);
        CHECK(nodes[i].step_st[1] != ES_OK);
        CHECK(nodes[i].step_st[2] == ES_EIO);
        CHECK(strstr(nodes[i].step_err[2].msg, "broken by an earlier failure") != NULL);
        fprintf(stderr, "  rank %d failed step 1, node %d: %s\n", rank, i,
                nodes[i].step_err[1].msg);
    }
    int failing_node = rank / LOCAL;
    CHECK(strstr(nodes[failing_node].step_err[1].msg, "fails step 1") != NULL);
}

/* Rank `rank` cannot load: both nodes' loads fail. */
static void test_load_failure(int rank)
{
    fail_load_rank = rank;
    fail_forward_rank = fail_forward_step = -1;
    struct node nodes[2];
    run_nodes(nodes, 1);
    for (int i = 0; i < 2; i++) {
        CHECK(nodes[i].load_st != ES_OK);
        fprintf(stderr, "  rank %d cannot load, node %d: %s\n", rank, i, nodes[i].load_err.msg);
    }
    CHECK(strstr(nodes[rank / LOCAL].load_err.msg, "cannot load") != NULL);
}

int main(void)
{
    alarm(120); /* a hang is a failure, not a stuck CI job */
    test_agree_and_forward();
    test_forward_failure(3);
    test_forward_failure(0);
    test_forward_failure(1);
    test_load_failure(2);
    test_load_failure(1);
    return test_result("test_backend_tp");
}
