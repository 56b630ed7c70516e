/*
 * test_node_worker.c - unit tests of server/backend/node_worker.c over
 * 127.0.0.1, nodes as threads: node 0's tp_remote delivers every
 * forward() and copy_blocks() to every other node in order, the workers
 * replay them on their (recording) local backend and return ES_OK on
 * close()'s STOP; a node 0 that vanishes without STOP, a corrupt or cut
 * message, and a failing local forward end the worker with an error; the
 * handshake refuses a wrong protocol version, a different --tp, a
 * different configuration and a duplicate node rank, and a node that never
 * arrives is named on node 0 and on the nodes that joined. Heartbeats: a
 * quiet group outlives both sides' silence limits, node 0's watchdog
 * notices (once) a node that hangs up or stops answering and then fails
 * every send with the reason and cuts the other nodes off, and a worker
 * answers a heartbeat and gives up on a silent node 0. Pipeline nodes
 * (NODE_PP_STAGES) say READY, answer each call with their stream or DONE,
 * also with calls to two nodes at once and heartbeats crossing them, and
 * answer a failed forward with ERROR. A step that never returns is left
 * behind when node 0 hangs up or the step timeout passes. Once a group is
 * complete, node 0 turns later nodes away with the reason (a rank taken,
 * another shape) and drops strangers, and the group runs on.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "netio.h"
#include "node_worker.h"
#include "step_wire.h"
#include "test_net.h"
#include "testing.h"

#define BLOCK 16
#define MAX_LOG 64
#define STREAM_WIDTH 4 /* a pipeline node's model width */

static const struct model_config stream_model = {.hidden_size = STREAM_WIDTH};

static uint64_t fnv64(const unsigned char *p, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

/* --------------------------------------------------- a recording backend */

/* Logs a hash of every call as it would be re-encoded on the wire: equal
 * to node 0's hash of the original call exactly when every field the
 * wire carries arrived intact. */
struct recorder {
    struct backend be;
    int node; /* a pipeline node's stream out is 2 x in + node (or token id + node) */
    uint64_t log[MAX_LOG];
    int n_log;
    int fail_at_forward; /* -1: never */
    int hang_at_forward; /* -1: never; else that forward waits for `released` */
    atomic_bool released;
    atomic_int returned; /* forwards that have returned */
    int forwards;
    struct sw_buf buf;
};

static void record(struct recorder *rec)
{
    if (rec->n_log < MAX_LOG) rec->log[rec->n_log++] = fnv64(rec->buf.data, rec->buf.len);
}

static enum es_status rec_forward_body(struct recorder *rec, const struct batch *b,
                                       struct batch_result *result, struct es_err *err);

static enum es_status rec_forward(struct backend *be, const struct batch *b,
                                  struct batch_result *result, struct es_err *err)
{
    struct recorder *rec = be->impl;
    if (rec->forwards == rec->hang_at_forward)
        while (!atomic_load(&rec->released))
            usleep(1000);
    enum es_status st = rec_forward_body(rec, b, result, err);
    atomic_fetch_add(&rec->returned, 1);
    return st;
}

static enum es_status rec_forward_body(struct recorder *rec, const struct batch *b,
                                       struct batch_result *result, struct es_err *err)
{
    if (rec->forwards++ == rec->fail_at_forward)
        return es_fail(err, ES_EDEVICE, "recorder: forward %d fails as asked", rec->forwards - 1);
    for (int r = 0; r < b->n_rows; r++) /* the scratch result must hold every row */
        result->rows[r] = (struct row_result){.token = b->rows[r].token_index};
    for (int t = 0; b->hidden_out && t < b->n_tokens; t++)
        for (int i = 0; i < STREAM_WIDTH; i++) {
            float in = b->hidden_in ? b->hidden_in[t * STREAM_WIDTH + i] : (float)b->token_ids[t];
            b->hidden_out[t * STREAM_WIDTH + i] = 2.0f * in + (float)rec->node;
        }
    enum es_status st = sw_encode_forward(&rec->buf, b, BLOCK, err);
    if (st == ES_OK) record(rec);
    return st;
}

static enum es_status rec_copy_blocks(struct backend *be, const int32_t *src, const int32_t *dst,
                                      int n, struct es_err *err)
{
    struct recorder *rec = be->impl;
    enum es_status st = sw_encode_copy_blocks(&rec->buf, src, dst, n, err);
    if (st == ES_OK) record(rec);
    return st;
}

static const struct backend_ops recorder_ops = {
    .name = "recorder", .forward = rec_forward, .copy_blocks = rec_copy_blocks};

static void recorder_init(struct recorder *rec, int fail_at_forward)
{
    memset(rec, 0, sizeof(*rec));
    rec->be = (struct backend){.ops = &recorder_ops,
                               .impl = rec,
                               .cfg = &stream_model,
                               .block_size = BLOCK,
                               .num_kv_blocks = 100};
    rec->fail_at_forward = fail_at_forward;
    rec->hang_at_forward = -1;
}

/* --------------------------------------------------------------- batches */

struct step {
    struct batch b;
    int32_t tokens[64], positions[64], slots[64], starts[5], context[4], tables[4 * 8];
    struct logit_row rows[4];
    struct sampling_params sp;
};

/* Step k: k % 4 + 1 sequences, prefill (8 tokens each) on even k, decode
 * (1 token each) on odd k; one sampled row per sequence. */
static void make_step(struct step *s, int k)
{
    memset(s, 0, sizeof(*s));
    sp_defaults(&s->sp);
    int ns = k % 4 + 1, len = k % 2 ? 1 : 8, stride = 8, nt = 0;
    for (int q = 0; q < ns; q++) {
        int ctx = len + 5 * q + k;
        s->starts[q] = nt;
        s->context[q] = ctx;
        for (int j = 0; j < stride; j++)
            s->tables[q * stride + j] = 100 * q + j + k;
        for (int i = 0; i < len; i++, nt++) {
            s->tokens[nt] = 1000 * k + nt;
            s->positions[nt] = ctx - len + i;
            s->slots[nt] =
                s->tables[q * stride + s->positions[nt] / BLOCK] * BLOCK + s->positions[nt] % BLOCK;
        }
        s->rows[q] = (struct logit_row){.token_index = nt - 1,
                                        .sample = true,
                                        .target_id = -1,
                                        .sp = &s->sp,
                                        .rng_counter = (uint64_t)k};
    }
    s->starts[ns] = nt;
    s->b = (struct batch){.n_tokens = nt,
                          .token_ids = s->tokens,
                          .positions = s->positions,
                          .slot_mapping = s->slots,
                          .n_seqs = ns,
                          .seq_token_start = s->starts,
                          .seq_context_len = s->context,
                          .block_tables = s->tables,
                          .block_table_stride = stride,
                          .n_rows = ns,
                          .rows = s->rows,
                          .decode_only = k % 2 == 1};
}

/* ------------------------------------------------------------ node threads */

/* What a worker thread does once it has joined. */
enum worker_mode {
    WORKER_HANG_UP, /* closes its connection (zero: the handshake tests) */
    WORKER_RUN,     /* runs node_worker_run, then closes */
    WORKER_HOLD,    /* leaves the connection open in held_fd, never reading */
};

struct worker_job {
    struct node_shape shape;
    int port;
    double timeout_s;
    enum worker_mode mode;
    double run_timeout_s;  /* node_worker_run's silence limit; 0: none */
    double step_timeout_s; /* node_worker_run's step limit; 0: none */
    enum node_role role;   /* NODE_PP_STAGES: says READY first */
    struct recorder rec;
    enum es_status connect_st, run_st;
    bool abandoned; /* node_worker_run gave up on a step */
    double run_ended;
    struct es_err err;
    int held_fd;
};

static void *worker_main(void *arg)
{
    struct worker_job *j = arg;
    int fd = -1;
    j->connect_st =
        node_control_connect(&j->shape, "127.0.0.1", j->port, j->timeout_s, &fd, &j->err);
    if (j->connect_st != ES_OK) return NULL;
    if (j->mode == WORKER_HOLD) {
        j->held_fd = fd;
        return NULL;
    }
    if (j->mode == WORKER_RUN && j->role == NODE_PP_STAGES)
        j->run_st = node_worker_report_load(fd, &j->rec.be, ES_OK, &j->err, &j->err);
    if (j->mode == WORKER_RUN && j->run_st == ES_OK)
        j->run_st = node_worker_run(&j->rec.be, fd, j->run_timeout_s, j->step_timeout_s, j->role,
                                    &j->abandoned, &j->err);
    j->run_ended = nio_now();
    nio_close(fd);
    return NULL;
}

static struct node_shape shape_of(int nnodes, int node_rank, int tp_size)
{
    return (struct node_shape){.nnodes = nnodes,
                               .node_rank = node_rank,
                               .tp_size = tp_size,
                               .block_size = BLOCK,
                               .fingerprint = 0x1234abcdull};
}

static void start_workers(struct worker_job *jobs, pthread_t *th, int n, int port, int nnodes,
                          int fail_at_forward)
{
    for (int i = 0; i < n; i++) {
        jobs[i] = (struct worker_job){.shape = shape_of(nnodes, i + 1, 2 * nnodes),
                                      .port = port,
                                      .timeout_s = 10.0,
                                      .mode = WORKER_RUN};
        recorder_init(&jobs[i].rec, fail_at_forward);
        pthread_create(&th[i], NULL, worker_main, &jobs[i]);
    }
}

static void join_workers(struct worker_job *jobs, pthread_t *th, int n)
{
    for (int i = 0; i < n; i++) {
        pthread_join(th[i], NULL);
        sw_buf_free(&jobs[i].rec.buf);
    }
}

/* ------------------------------------------------------------------- tests */

/* Node 0 sends steps 0..n_steps-1 (a copy after every third) and returns
 * the hashes the workers should log. */
static int send_steps(struct tp_remote *remote, int n_steps, uint64_t *want)
{
    struct step *s = malloc(sizeof(*s));
    struct sw_buf buf = {0};
    struct es_err err = {{0}};
    int n = 0;
    for (int k = 0; k < n_steps; k++) {
        make_step(s, k);
        CHECK(remote->send_forward(remote, &s->b, &err) == ES_OK);
        CHECK(sw_encode_forward(&buf, &s->b, BLOCK, &err) == ES_OK);
        want[n++] = fnv64(buf.data, buf.len);
        if (k % 3 == 2) {
            int32_t src[2] = {k, k + 1}, dst[2] = {50 + k, 60 + k};
            CHECK(remote->send_copy_blocks(remote, src, dst, 2, &err) == ES_OK);
            CHECK(sw_encode_copy_blocks(&buf, src, dst, 2, &err) == ES_OK);
            want[n++] = fnv64(buf.data, buf.len);
        }
    }
    sw_buf_free(&buf);
    free(s);
    return n;
}

static void test_replay(void)
{
    enum { NNODES = 3, STEPS = 12 };
    int port = free_port();
    struct worker_job jobs[NNODES - 1];
    pthread_t th[NNODES - 1];
    start_workers(jobs, th, NNODES - 1, port, NNODES, -1);
    struct node_shape self = shape_of(NNODES, 0, 2 * NNODES);
    int fds[NNODES], listen_fd = -1;
    struct tp_remote *remote = NULL;
    struct es_err err = {{0}};
    CHECK(node_control_accept(&self, "127.0.0.1", port, 10.0, fds, &listen_fd, &err) == ES_OK);
    CHECK(fds[0] == -1 && fds[1] >= 0 && fds[2] >= 0 && listen_fd >= 0);
    CHECK(node_remote_create(&self, fds, listen_fd, &remote, &err) == ES_OK);
    uint64_t want[MAX_LOG];
    int n_want = send_steps(remote, STEPS, want);
    remote->close(remote); /* STOP */
    join_workers(jobs, th, NNODES - 1);
    for (int i = 0; i < NNODES - 1; i++) {
        CHECK(jobs[i].connect_st == ES_OK);
        CHECK(jobs[i].run_st == ES_OK);
        CHECK(jobs[i].rec.n_log == n_want);
        CHECK(memcmp(jobs[i].rec.log, want, sizeof(want[0]) * (size_t)n_want) == 0);
        if (jobs[i].run_st != ES_OK) fprintf(stderr, "node %d: %s\n", i + 1, jobs[i].err.msg);
    }
}

/* One node; node 0 writes raw bytes (or nothing) and hangs up. */
static void run_raw(const unsigned char *bytes, size_t n, int fail_at_forward,
                    struct worker_job *job)
{
    int port = free_port(), fds[2];
    pthread_t th;
    start_workers(job, &th, 1, port, 2, fail_at_forward);
    struct node_shape self = shape_of(2, 0, 4);
    struct es_err err = {{0}};
    CHECK(node_control_accept(&self, "127.0.0.1", port, 10.0, fds, NULL, &err) == ES_OK);
    if (n) CHECK(nio_write_all(fds[1], bytes, n, "node 1", &err) == ES_OK);
    nio_close(fds[1]);
    join_workers(job, &th, 1);
    CHECK(job->connect_st == ES_OK);
    fprintf(stderr, "  worker: %s\n", job->err.msg);
}

static void test_worker_errors(void)
{
    struct worker_job job;
    struct step *s = malloc(sizeof(*s));
    struct sw_buf buf = {0}, two = {0};
    struct es_err err = {{0}};
    make_step(s, 0);
    CHECK(sw_encode_forward(&buf, &s->b, BLOCK, &err) == ES_OK);

    /* node 0 gone after one step, without STOP */
    run_raw(buf.data, buf.len, -1, &job);
    CHECK(job.run_st == ES_EIO && job.rec.n_log == 1);
    CHECK(strstr(job.err.msg, "closed the connection") != NULL);

    /* cut in the middle of a message */
    run_raw(buf.data, buf.len - 7, -1, &job);
    CHECK(job.run_st == ES_EIO && job.rec.n_log == 0);

    /* a whole frame with a broken body */
    unsigned char *bad = malloc(buf.len);
    memcpy(bad, buf.data, buf.len);
    bad[buf.len / 2] ^= 0x40;
    run_raw(bad, buf.len, -1, &job);
    CHECK(job.run_st == ES_EFORMAT && job.rec.n_log == 0);

    /* an impossible length */
    unsigned char huge[4];
    sw_put_u32(huge, 0xffffffffu);
    run_raw(huge, 4, -1, &job);
    CHECK(job.run_st == ES_EFORMAT);

    /* the local forward fails on the second step */
    two.data = malloc(2 * buf.len);
    memcpy(two.data, buf.data, buf.len);
    memcpy(two.data + buf.len, buf.data, buf.len);
    run_raw(two.data, 2 * buf.len, 1, &job);
    CHECK(job.run_st == ES_EDEVICE && job.rec.n_log == 1);
    CHECK(strstr(job.err.msg, "fails as asked") != NULL);

    free(bad);
    sw_buf_free(&two);
    sw_buf_free(&buf);
    free(s);
}

/* node 0 with shape `self`; workers with the given shapes; returns node
 * 0's status and message. */
static enum es_status handshake(struct node_shape self, const struct node_shape *others, int n,
                                double timeout_s, struct worker_job *jobs, struct es_err *err)
{
    int port = free_port(), fds[8];
    pthread_t th[8];
    for (int i = 0; i < n; i++) {
        jobs[i] = (struct worker_job){.shape = others[i], .port = port, .timeout_s = timeout_s};
        pthread_create(&th[i], NULL, worker_main, &jobs[i]);
    }
    int listen_fd = 0; /* accept sets it either way */
    enum es_status st =
        node_control_accept(&self, "127.0.0.1", port, timeout_s, fds, &listen_fd, err);
    CHECK((listen_fd >= 0) == (st == ES_OK));
    nio_close(listen_fd);
    for (int r = 1; st == ES_OK && r < self.nnodes; r++)
        nio_close(fds[r]);
    for (int i = 0; i < n; i++)
        pthread_join(th[i], NULL);
    return st;
}

static void test_handshake_refusals(void)
{
    struct worker_job jobs[2];
    struct es_err err = {{0}};

    struct node_shape other_tp = shape_of(2, 1, 2);
    CHECK(handshake(shape_of(2, 0, 4), &other_tp, 1, 10.0, jobs, &err) == ES_EINVAL);
    CHECK(strstr(err.msg, "--tp") != NULL);
    CHECK(jobs[0].connect_st == ES_EINVAL && strstr(jobs[0].err.msg, "refused") != NULL);
    fprintf(stderr, "  different --tp: %s\n", jobs[0].err.msg);

    es_err_clear(&err);
    struct node_shape other_cfg = shape_of(2, 1, 4);
    other_cfg.fingerprint ^= 1;
    CHECK(handshake(shape_of(2, 0, 4), &other_cfg, 1, 10.0, jobs, &err) == ES_EINVAL);
    CHECK(strstr(err.msg, "different configuration") != NULL);
    CHECK(jobs[0].connect_st == ES_EINVAL);

    es_err_clear(&err);
    struct node_shape twins[2] = {shape_of(3, 1, 6), shape_of(3, 1, 6)};
    CHECK(handshake(shape_of(3, 0, 6), twins, 2, 10.0, jobs, &err) == ES_EINVAL);
    CHECK(strstr(err.msg, "node 1 joined twice, first from 127.0.0.1:") != NULL);
    CHECK(strstr(err.msg, ", then from 127.0.0.1:") != NULL);
    CHECK(jobs[0].connect_st == ES_EINVAL && jobs[1].connect_st == ES_EINVAL);
    CHECK(strstr(jobs[0].err.msg, "joined twice") && strstr(jobs[1].err.msg, "joined twice"));
    fprintf(stderr, "  twins before the group is complete: %s\n", jobs[0].err.msg);

    es_err_clear(&err);
    struct node_shape only_one = shape_of(3, 1, 6); /* node 2 never comes */
    CHECK(handshake(shape_of(3, 0, 6), &only_one, 1, 1.0, jobs, &err) == ES_EIO);
    CHECK(strstr(err.msg, "node(s) 2 of 3") != NULL);
    CHECK(jobs[0].connect_st == ES_EINVAL && strstr(jobs[0].err.msg, "node(s) 2 of 3") != NULL);
    fprintf(stderr, "  missing node: %s\n", jobs[0].err.msg);

    /* node 0 missing */
    es_err_clear(&err);
    struct worker_job lone = {.shape = shape_of(2, 1, 4), .port = free_port(), .timeout_s = 0.5};
    worker_main(&lone);
    CHECK(lone.connect_st == ES_EIO && strstr(lone.err.msg, "not reachable") != NULL);
}

/* A hello from another protocol version, written by hand. */
static void *old_node_main(void *arg)
{
    int port = *(int *)arg, fd = -1;
    struct es_err err = {{0}};
    if (nio_connect("127.0.0.1", port, nio_now() + 10.0, &fd, &err) != ES_OK) return NULL;
    struct node_shape s = shape_of(2, 1, 4);
    uint32_t f[8] = {0x574e5345u, 99, 2, 1, (uint32_t)s.tp_size, BLOCK, (uint32_t)s.fingerprint, 0};
    unsigned char hello[32], reply[256];
    for (int i = 0; i < 8; i++)
        sw_put_u32(hello + 4 * i, f[i]);
    nio_write_all(fd, hello, sizeof(hello), "node 0", &err);
    if (nio_read_all(fd, reply, sizeof(reply), nio_now() + 10.0, "node 0", &err) == ES_OK) {
        reply[255] = '\0';
        *(int *)arg = sw_get_u32(reply + 8) != 0 && strstr((char *)reply + 12, "protocol 99");
    }
    nio_close(fd);
    return NULL;
}

static void test_version_mismatch(void)
{
    int port = free_port(), arg = port, fds[2];
    pthread_t th;
    pthread_create(&th, NULL, old_node_main, &arg);
    struct node_shape self = shape_of(2, 0, 4);
    struct es_err err = {{0}};
    CHECK(node_control_accept(&self, "127.0.0.1", port, 10.0, fds, NULL, &err) == ES_EINVAL);
    pthread_join(th, NULL);
    CHECK(strstr(err.msg, "protocol 99") != NULL);
    CHECK(arg == 1); /* the old node was told why */
    fprintf(stderr, "  version: %s\n", err.msg);
}

/* ------------------------------------------------------------ the watchdog */

struct loss {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int calls;
    char why[256];
};

static void on_lost(void *ctx, const char *why)
{
    struct loss *l = ctx;
    pthread_mutex_lock(&l->mu);
    l->calls++;
    snprintf(l->why, sizeof(l->why), "%s", why);
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
}

static void loss_init(struct loss *l)
{
    memset(l, 0, sizeof(*l));
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cv, NULL);
}

/* Waits up to 20 s (a hang guard, not a speed test) for the first call. */
static int wait_loss(struct loss *l)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 20;
    pthread_mutex_lock(&l->mu);
    while (l->calls == 0 && pthread_cond_timedwait(&l->cv, &l->mu, &until) == 0) {
    }
    int calls = l->calls;
    pthread_mutex_unlock(&l->mu);
    return calls;
}

/* Node 0 of nnodes, its workers jobs[i] (node i + 1, prepared by the
 * caller) started and the remote made. */
static struct tp_remote *joined_group(int nnodes, struct worker_job *jobs, pthread_t *th)
{
    int port = free_port(), fds[8];
    for (int i = 0; i < nnodes - 1; i++) {
        jobs[i].shape = shape_of(nnodes, i + 1, 2 * nnodes);
        jobs[i].port = port;
        pthread_create(&th[i], NULL, worker_main, &jobs[i]);
    }
    struct node_shape self = shape_of(nnodes, 0, 2 * nnodes);
    struct tp_remote *remote = NULL;
    struct es_err err = {{0}};
    int listen_fd = -1;
    CHECK(node_control_accept(&self, "127.0.0.1", port, 10.0, fds, &listen_fd, &err) == ES_OK);
    CHECK(node_remote_create(&self, fds, listen_fd, &remote, &err) == ES_OK);
    return remote;
}

/* The same, and the remote watched with timeout_s. */
static struct tp_remote *watched_group(int nnodes, struct worker_job *jobs, pthread_t *th,
                                       double timeout_s, struct loss *loss)
{
    struct tp_remote *remote = joined_group(nnodes, jobs, th);
    struct es_err err = {{0}};
    CHECK(node_remote_watch(remote, timeout_s, on_lost, loss, &err) == ES_OK);
    CHECK(node_remote_watch(remote, timeout_s, on_lost, loss, &err) == ES_EINVAL); /* once */
    return remote;
}

/* In place: the recorder points at itself. */
static void job_init(struct worker_job *j, enum worker_mode mode, double run_timeout_s)
{
    *j = (struct worker_job){.timeout_s = 10.0, .mode = mode, .run_timeout_s = run_timeout_s};
    recorder_init(&j->rec, -1);
}

/* A quiet group longer than the silence limits of both sides: the
 * heartbeats and their answers keep it up, and the steps after still
 * arrive in order. */
static void test_quiet_group_stays_up(void)
{
    enum { NNODES = 3 };
    struct worker_job jobs[NNODES - 1];
    job_init(&jobs[0], WORKER_RUN, 1.0);
    job_init(&jobs[1], WORKER_RUN, 1.0);
    pthread_t th[NNODES - 1];
    struct loss loss;
    loss_init(&loss);
    struct tp_remote *remote = watched_group(NNODES, jobs, th, 1.0, &loss);
    usleep(3500 * 1000); /* workers give up after 2 s of silence, node 0 after 1 s unanswered */
    uint64_t want[MAX_LOG];
    int n_want = send_steps(remote, 6, want);
    remote->close(remote);
    join_workers(jobs, th, NNODES - 1);
    CHECK(loss.calls == 0);
    for (int i = 0; i < NNODES - 1; i++) {
        CHECK(jobs[i].run_st == ES_OK);
        if (jobs[i].run_st != ES_OK) fprintf(stderr, "node %d: %s\n", i + 1, jobs[i].err.msg);
        CHECK(jobs[i].rec.n_log == n_want);
        CHECK(memcmp(jobs[i].rec.log, want, sizeof(want[0]) * (size_t)n_want) == 0);
    }
    if (loss.calls) fprintf(stderr, "  lost: %s\n", loss.why);
}

/* Node 1 hangs up while node 0 is idle: node 0's watchdog says so (once),
 * later sends fail with that reason, and node 2 is cut off too. */
static void test_closed_node_is_noticed(void)
{
    enum { NNODES = 3 };
    struct worker_job jobs[NNODES - 1];
    job_init(&jobs[0], WORKER_HANG_UP, 0);
    job_init(&jobs[1], WORKER_RUN, 0);
    pthread_t th[NNODES - 1];
    struct loss loss;
    loss_init(&loss);
    struct tp_remote *remote = watched_group(NNODES, jobs, th, 30.0, &loss);
    CHECK(wait_loss(&loss) == 1);
    CHECK(strstr(loss.why, "node 1 closed its control connection") != NULL);
    fprintf(stderr, "  lost: %s\n", loss.why);
    struct step *s = malloc(sizeof(*s));
    struct es_err err = {{0}};
    make_step(s, 0);
    CHECK(remote->send_forward(remote, &s->b, &err) == ES_EIO);
    CHECK(strstr(err.msg, "node 1 closed its control connection") != NULL);
    join_workers(jobs, th, NNODES - 1); /* node 2 ends on its own: EOF */
    CHECK(jobs[1].run_st == ES_EIO && strstr(jobs[1].err.msg, "closed the connection") != NULL);
    remote->close(remote);
    CHECK(loss.calls == 1);
    free(s);
}

/* Node 0 watched with a heartbeat timeout, and node 1, which joins and
 * then holds its connection open without ever reading. Set up in place
 * (the recorder and the loss point into it): never copy one. */
struct held_pair {
    struct worker_job job;
    pthread_t th;
    struct loss loss;
    struct tp_remote *remote;
};

static void held_pair_setup(struct held_pair *p, double timeout_s)
{
    job_init(&p->job, WORKER_HOLD, 0);
    loss_init(&p->loss);
    p->remote = watched_group(2, &p->job, &p->th, timeout_s, &p->loss);
}

static void held_pair_teardown(struct held_pair *p)
{
    p->remote->close(p->remote);
    join_workers(&p->job, &p->th, 1);
    nio_close(p->job.held_fd);
}

/* Node 1 keeps its connection open but never reads: no answer within the
 * timeout. */
static void test_silent_node_is_noticed(void)
{
    struct held_pair pair;
    held_pair_setup(&pair, 0.5);
    CHECK(wait_loss(&pair.loss) == 1);
    CHECK(strstr(pair.loss.why, "node 1 did not answer a heartbeat within 0.5 s") != NULL);
    fprintf(stderr, "  lost: %s\n", pair.loss.why);
    held_pair_teardown(&pair);
}

/* A step that outlasts the timeout (node 1 reads nothing, as a worker busy
 * in a long step does) is no loss while node 0's part of it runs; once
 * that part ended, the unanswered heartbeat's timeout runs from there. */
static void test_long_step_is_no_loss(void)
{
    struct held_pair pair;
    held_pair_setup(&pair, 0.5);
    struct step *s = malloc(sizeof(*s));
    struct es_err err = {{0}};
    make_step(s, 0);
    CHECK(pair.remote->send_forward(pair.remote, &s->b, &err) == ES_OK);
    usleep(2500 * 1000); /* a heartbeat goes out after 1 s and stays unanswered */
    CHECK(pair.loss.calls == 0);
    double ended = nio_now();
    pair.remote->step_done(pair.remote);
    CHECK(wait_loss(&pair.loss) == 1);
    CHECK(nio_now() - ended >= 0.5); /* the deadline counts from the step's end */
    CHECK(strstr(pair.loss.why, "node 1 did not answer a heartbeat within 0.5 s") != NULL);
    fprintf(stderr, "  lost after the step: %s\n", pair.loss.why);
    held_pair_teardown(&pair);
    free(s);
}

/* Node 1 of a two-node group on a thread of its own, running main_fn
 * (worker_main or a scripted node) with run_timeout_s as its silence
 * limit; returns the port node 0 must listen on. */
static int start_node1(struct worker_job *job, pthread_t *th, void *(*main_fn)(void *),
                       double run_timeout_s)
{
    int port = free_port();
    job_init(job, WORKER_RUN, run_timeout_s);
    job->shape = shape_of(2, 1, 4);
    job->port = port;
    pthread_create(th, NULL, main_fn, job);
    return port;
}

/* A worker answers a heartbeat at once, and gives up on a node 0 that
 * sends nothing past its silence limit. */
static void test_worker_heartbeats(void)
{
    int fds[2];
    struct worker_job job;
    pthread_t th;
    int port = start_node1(&job, &th, worker_main, 0.3);
    struct node_shape self = shape_of(2, 0, 4);
    struct es_err err = {{0}};
    struct sw_buf hb = {0};
    struct sw_cmd cmd = {0};
    unsigned char answer[SW_HEADER_BYTES];
    CHECK(node_control_accept(&self, "127.0.0.1", port, 10.0, fds, NULL, &err) == ES_OK);
    CHECK(sw_encode_heartbeat(&hb, &err) == ES_OK);
    CHECK(nio_write_all(fds[1], hb.data, hb.len, "node 1", &err) == ES_OK);
    CHECK(nio_read_all(fds[1], answer, sizeof(answer), nio_now() + 10.0, "node 1", &err) == ES_OK);
    CHECK(sw_decode(answer, sizeof(answer), &cmd, &err) == ES_OK && cmd.kind == SW_HEARTBEAT);
    pthread_join(th, NULL); /* then silence: the worker gives up after 1.3 s */
    CHECK(job.run_st == ES_EIO && strstr(job.err.msg, "sent nothing for 1.3 s") != NULL);
    fprintf(stderr, "  worker: %s\n", job.err.msg);
    nio_close(fds[1]);
    sw_cmd_free(&cmd);
    sw_buf_free(&hb);
}

/* ------------------------------------------------------ pipeline calls */

struct caller {
    struct tp_remote *remote;
    int node, calls, bad; /* answers that were not the expected stream */
};

/* A node's stream of step k: hidden_in on odd k, none (the first stage)
 * on even k; the answer must be 2 x in + node. */
static bool call_stage(struct tp_remote *remote, int node, int k, struct sw_buf *msg,
                       struct sw_cmd *answer)
{
    struct step s;
    make_step(&s, k);
    static _Thread_local float in[64 * STREAM_WIDTH], out[64 * STREAM_WIDTH];
    for (int i = 0; i < s.b.n_tokens * STREAM_WIDTH; i++)
        in[i] = (float)(i * 3 - k);
    s.b.hidden_in = k % 2 ? in : NULL;
    s.b.hidden_out = out;
    struct es_err err = {{0}};
    if (sw_encode_stage_forward(msg, &s.b, BLOCK, STREAM_WIDTH, &err) != ES_OK ||
        node_remote_call(remote, node, msg, answer, &err) != ES_OK) {
        fprintf(stderr, "  call to node %d: %s\n", node, err.msg);
        return false;
    }
    if (answer->kind != SW_HIDDEN || answer->hidden_tokens != s.b.n_tokens ||
        answer->hidden != STREAM_WIDTH)
        return false;
    for (int t = 0; t < s.b.n_tokens; t++)
        for (int i = 0; i < STREAM_WIDTH; i++) {
            float x = k % 2 ? in[t * STREAM_WIDTH + i] : (float)s.tokens[t];
            if (answer->hidden_data[t * STREAM_WIDTH + i] != 2.0f * x + (float)node) return false;
        }
    return true;
}

static void *caller_main(void *arg)
{
    struct caller *c = arg;
    struct sw_buf msg = {0};
    struct sw_cmd answer = {0};
    for (int k = 0; k < c->calls; k++)
        c->bad += !call_stage(c->remote, c->node, k, &msg, &answer);
    sw_cmd_free(&answer);
    sw_buf_free(&msg);
    return NULL;
}

/* Two nodes running pipeline stages: each says READY, answers every
 * micro-batch with its stream (calls to both at once, from two threads)
 * and a block copy with DONE, also after idling long enough for
 * heartbeats to cross the calls; a failing forward comes back as ERROR
 * with the node's reason, and that node's loop ends with it. */
static void test_pipeline_calls(void)
{
    enum { NNODES = 3 };
    struct worker_job jobs[NNODES - 1];
    for (int i = 0; i < NNODES - 1; i++) {
        job_init(&jobs[i], WORKER_RUN, 1.0);
        jobs[i].role = NODE_PP_STAGES;
        jobs[i].rec.node = i + 1;
        jobs[i].rec.be.num_kv_blocks = 100 + i;
        jobs[i].rec.fail_at_forward = i == 1 ? 44 : -1;
    }
    pthread_t th[NNODES - 1];
    struct loss loss;
    loss_init(&loss);
    struct tp_remote *remote = joined_group(NNODES, jobs, th);
    struct sw_cmd answer = {0};
    struct sw_buf msg = {0};
    struct es_err err = {{0}};
    for (int node = 1; node < NNODES; node++) { /* as node_stage.c's load, before the watch */
        CHECK(node_remote_call(remote, node, NULL, &answer, &err) == ES_OK);
        CHECK(answer.kind == SW_READY && answer.ready_kv_blocks == 99 + node);
        CHECK(answer.ready_block_size == BLOCK);
    }
    CHECK(node_remote_watch(remote, 1.0, on_lost, &loss, &err) == ES_OK);
    struct caller callers[2] = {{remote, 1, 40, 0}, {remote, 2, 40, 0}};
    pthread_t ct[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&ct[i], NULL, caller_main, &callers[i]);
    for (int i = 0; i < 2; i++)
        pthread_join(ct[i], NULL);
    CHECK(callers[0].bad == 0 && callers[1].bad == 0);
    usleep(2500 * 1000); /* heartbeats go out and are answered between the calls */
    CHECK(call_stage(remote, 1, 7, &msg, &answer));
    int32_t src[2] = {3, 4}, dst[2] = {5, 6};
    CHECK(sw_encode_copy_blocks(&msg, src, dst, 2, &err) == ES_OK);
    CHECK(node_remote_call(remote, 2, &msg, &answer, &err) == ES_OK && answer.kind == SW_DONE);
    for (int k = 0; k < 4; k++) /* node 2's forwards 40 .. 43 */
        CHECK(call_stage(remote, 2, k, &msg, &answer));
    pthread_mutex_lock(&loss.mu);
    CHECK(loss.calls == 0);
    if (loss.calls) fprintf(stderr, "  lost: %s\n", loss.why);
    pthread_mutex_unlock(&loss.mu);
    CHECK(!call_stage(remote, 2, 0, &msg, &answer)); /* 44 fails */
    CHECK(answer.kind == SW_ERROR && answer.error_status == ES_EDEVICE);
    CHECK(strstr(answer.error_msg, "forward 44 fails as asked") != NULL);
    remote->close(remote);
    join_workers(jobs, th, NNODES - 1);
    CHECK(jobs[0].run_st == ES_OK);
    CHECK(jobs[1].run_st == ES_EDEVICE && strstr(jobs[1].err.msg, "fails as asked") != NULL);
    sw_cmd_free(&answer);
    sw_buf_free(&msg);
}

/* A scripted pipeline node: READY, then for its one FORWARD a heartbeat
 * answer (as one sent just before the call would have) and the stream. */
static void *scripted_node_main(void *arg)
{
    struct worker_job *j = arg;
    int fd = -1;
    j->connect_st =
        node_control_connect(&j->shape, "127.0.0.1", j->port, j->timeout_s, &fd, &j->err);
    if (j->connect_st != ES_OK) return NULL;
    struct sw_buf out = {0};
    struct es_err err = {{0}};
    unsigned char prefix[SW_PREFIX_BYTES], body[4096];
    size_t len = 0;
    j->run_st = node_worker_report_load(fd, &j->rec.be, ES_OK, &err, &err);
    if (j->run_st == ES_OK) j->run_st = nio_read_all(fd, prefix, sizeof(prefix), 0, "0", &err);
    if (j->run_st == ES_OK) j->run_st = sw_frame_length(prefix, &len, &err);
    if (j->run_st == ES_OK && len <= sizeof(body))
        j->run_st = nio_read_all(fd, body, len, 0, "0", &err);
    static const float zeros[64 * STREAM_WIDTH];
    if (j->run_st == ES_OK) j->run_st = sw_encode_heartbeat(&out, &err);
    if (j->run_st == ES_OK) j->run_st = nio_write_all(fd, out.data, out.len, "0", &err);
    if (j->run_st == ES_OK) j->run_st = sw_encode_hidden(&out, zeros, 8, STREAM_WIDTH, &err);
    if (j->run_st == ES_OK) j->run_st = nio_write_all(fd, out.data, out.len, "0", &err);
    nio_read_all(fd, prefix, sizeof(prefix), 0, "0", &err); /* until node 0 ends */
    sw_buf_free(&out);
    nio_close(fd);
    return NULL;
}

/* A heartbeat answer that arrives ahead of a call's answer is taken as
 * such by the call, which then gets its stream. */
static void test_heartbeat_answer_ahead_of_a_call(void)
{
    int fds[2];
    struct worker_job job;
    pthread_t th;
    int port = start_node1(&job, &th, scripted_node_main, 0);
    struct node_shape self = shape_of(2, 0, 4);
    struct tp_remote *remote = NULL;
    struct es_err err = {{0}};
    struct sw_cmd answer = {0};
    struct sw_buf msg = {0};
    CHECK(node_control_accept(&self, "127.0.0.1", port, 10.0, fds, NULL, &err) == ES_OK);
    CHECK(node_remote_create(&self, fds, -1, &remote, &err) == ES_OK);
    CHECK(node_remote_call(remote, 1, NULL, &answer, &err) == ES_OK && answer.kind == SW_READY);
    struct step s;
    make_step(&s, 0); /* 8 tokens, the first stage */
    static float out[64 * STREAM_WIDTH];
    s.b.hidden_out = out;
    CHECK(sw_encode_stage_forward(&msg, &s.b, BLOCK, STREAM_WIDTH, &err) == ES_OK);
    CHECK(node_remote_call(remote, 1, &msg, &answer, &err) == ES_OK);
    CHECK(answer.kind == SW_HIDDEN && answer.hidden_tokens == 8);
    remote->close(remote);
    pthread_join(th, NULL);
    CHECK(job.run_st == ES_OK);
    sw_cmd_free(&answer);
    sw_buf_free(&msg);
}

/* A step that never returns while node 0 hangs up, then one that outlives
 * the step timeout while node 0 waits: the worker gives up on it (error,
 * abandoned) within about a second of either instead of hanging; the step
 * that comes back later still finds its batch and backend. */
static void test_hung_step_is_left_behind(void)
{
    for (int timed = 0; timed < 2; timed++) {
        int port = free_port(), fds[2];
        struct worker_job *job = calloc(1, sizeof(*job));
        pthread_t th;
        start_workers(job, &th, 1, port, 2, -1);
        job->rec.hang_at_forward = 1;
        job->step_timeout_s = timed ? 0.5 : 0.0;
        struct node_shape self = shape_of(2, 0, 4);
        struct tp_remote *remote = NULL;
        struct es_err err = {{0}};
        CHECK(node_control_accept(&self, "127.0.0.1", port, 10.0, fds, NULL, &err) == ES_OK);
        CHECK(node_remote_create(&self, fds, -1, &remote, &err) == ES_OK);
        uint64_t want[MAX_LOG];
        send_steps(remote, 2, want); /* forward 1 hangs */
        usleep(200 * 1000);
        double gone = nio_now();
        if (!timed) remote->close(remote); /* node 0 exits: STOP unread, then EOF */
        pthread_join(th, NULL);
        fprintf(stderr, "  worker (%s): %s\n", timed ? "step timeout" : "node 0 gone",
                job->err.msg);
        CHECK(job->run_st == ES_EIO && job->abandoned);
        CHECK(strstr(job->err.msg, timed ? "--step-timeout" : "closed the control connection"));
        CHECK(job->run_ended - gone < (timed ? 1.5 : 3.0));
        atomic_store(&job->rec.released, true); /* the device comes back */
        for (int t = 0; t < 2000 && atomic_load(&job->rec.returned) < 2; t++)
            usleep(1000);
        CHECK(atomic_load(&job->rec.returned) == 2);
        if (timed) remote->close(remote);
        sw_buf_free(&job->rec.buf);
        free(job);
    }
}

/* ------------------------------------------------------------ late nodes */

/* A connection to node 0's control port that is no evalserver node: it
 * sends `bytes` (none: stays silent) and is left open for the caller. */
static int stranger(int port, const char *bytes)
{
    int fd = -1;
    struct es_err err = {{0}};
    CHECK(nio_connect("127.0.0.1", port, nio_now() + 10.0, &fd, &err) == ES_OK);
    if (bytes[0]) CHECK(nio_write_all(fd, bytes, strlen(bytes), "node 0", &err) == ES_OK);
    return fd;
}

/* A node that comes once the group is complete, connecting with `shape`;
 * returns how long node 0 took to turn it away. */
static double late_node(int port, struct node_shape shape, struct worker_job *late)
{
    *late = (struct worker_job){.shape = shape, .port = port, .timeout_s = 10.0};
    double t0 = nio_now();
    worker_main(late);
    fprintf(stderr, "  late node: %s\n", late->err.msg);
    return nio_now() - t0;
}

/* Once a watched two-node group is complete, node 0 keeps answering its
 * control port: a second node 1 and a node of another shape are refused
 * with why within seconds (a silent stranger ahead of them holds the
 * port for a second at most), strangers get nothing; the group does not
 * notice, replays its steps in order, and close() ends the answering
 * thread promptly. */
static void test_late_nodes_turned_away(void)
{
    int port = free_port(), fds[2], listen_fd = -1;
    struct worker_job job, late;
    pthread_t th;
    job_init(&job, WORKER_RUN, 1.0);
    job.shape = shape_of(2, 1, 4);
    job.port = port;
    pthread_create(&th, NULL, worker_main, &job);
    struct node_shape self = shape_of(2, 0, 4);
    struct tp_remote *remote = NULL;
    struct es_err err = {{0}};
    struct loss loss;
    loss_init(&loss);
    CHECK(node_control_accept(&self, "127.0.0.1", port, 10.0, fds, &listen_fd, &err) == ES_OK);
    CHECK(node_remote_create(&self, fds, listen_fd, &remote, &err) == ES_OK);
    CHECK(node_remote_watch(remote, 1.0, on_lost, &loss, &err) == ES_OK);

    int silent = stranger(port, ""), rude = stranger(port, "GET / HTTP/1.0\r\n\r\n");
    CHECK(late_node(port, shape_of(2, 1, 4), &late) < 5.0);
    CHECK(late.connect_st == ES_EINVAL);
    CHECK(strstr(late.err.msg, "node 0 refused the group: the group is already complete: node 1 "
                               "joined from 127.0.0.1:") != NULL);
    CHECK(strstr(late.err.msg, "(is --node-rank unique per node?)") != NULL);
    CHECK(late_node(port, shape_of(3, 2, 6), &late) < 5.0);
    CHECK(late.connect_st == ES_EINVAL && strstr(late.err.msg, "node 2 at 127.0.0.1:") != NULL);
    CHECK(strstr(late.err.msg, "has 3 nodes, 6 tensor-parallel ranks") != NULL);
    char got[8];
    CHECK(recv(silent, got, sizeof(got), 0) == 0); /* dropped: no verdict, just the end */
    CHECK(recv(rude, got, sizeof(got), 0) <= 0);
    nio_close(silent);
    nio_close(rude);

    usleep(1500 * 1000); /* heartbeats cross the refusals' aftermath */
    uint64_t want[MAX_LOG];
    int n_want = send_steps(remote, 6, want);
    double t0 = nio_now();
    remote->close(remote);
    CHECK(nio_now() - t0 < 1.0);
    join_workers(&job, &th, 1);
    CHECK(job.run_st == ES_OK && job.rec.n_log == n_want);
    CHECK(memcmp(job.rec.log, want, sizeof(want[0]) * (size_t)n_want) == 0);
    CHECK(loss.calls == 0);
    if (loss.calls) fprintf(stderr, "  lost: %s\n", loss.why);
}

int main(void)
{
    alarm(120); /* a hang is a failure */
    test_replay();
    test_worker_errors();
    test_handshake_refusals();
    test_version_mismatch();
    test_quiet_group_stays_up();
    test_closed_node_is_noticed();
    test_silent_node_is_noticed();
    test_long_step_is_no_loss();
    test_worker_heartbeats();
    test_pipeline_calls();
    test_heartbeat_answer_ahead_of_a_call();
    test_hung_step_is_left_behind();
    test_late_nodes_turned_away();
    return test_result("test_node_worker");
}
