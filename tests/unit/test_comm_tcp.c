/*
 * test_comm_tcp.c - unit tests of server/backend/comm_tcp.c on 127.0.0.1,
 * with ranks as threads of this process and as fork()ed processes:
 * all_reduce_sum is bit-identical on every rank and equal to the sum taken
 * in rank order (values chosen so that any other order rounds
 * differently), all_gather, broadcast from rank 0 and from another root,
 * barrier; a rank that never connects fails the group within the timeout
 * with a message naming it, on rank 0 and on the ranks that joined; a
 * group-size mismatch is refused on both sides; ranks out of lockstep, a
 * rank that leaves and a rank process that dies make the others fail with
 * ES_EIO instead of hanging, and a broken handle fails at once afterwards;
 * break_group() (a rank that failed outside a collective) fails the ranks
 * waiting for it while its handle is still open.
 */
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "comm.h"
#include "test_net.h"
#include "testing.h"

#define MAX_RANKS 4
#define TIMEOUT_S 20.0 /* for groups that do form: only a bound, never waited out */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Mixed magnitudes and signs: float addition of these is order-sensitive. */
static float value(int rank, size_t i)
{
    int mag = (int)((i * 3 + (size_t)rank * 5) % 9) - 4;
    float v = (float)(((size_t)rank * 7919 + i * 104729) % 2001) - 1000.0f;
    for (; mag > 0; mag--)
        v *= 10.0f;
    for (; mag < 0; mag++)
        v /= 10.0f;
    return v + 0.1f * (float)rank;
}

static int check_all_reduce(struct comm *c, size_t n)
{
    float *buf = malloc(n * sizeof(float)), *want = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        buf[i] = value(c->rank, i);
        want[i] = value(0, i);
        for (int r = 1; r < c->size; r++)
            want[i] += value(r, i);
    }
    struct es_err err = {{0}};
    int bad = c->ops->all_reduce_sum(c, buf, n, &err) != ES_OK ||
              memcmp(buf, want, n * sizeof(float)) != 0;
    if (bad) fprintf(stderr, "rank %d: all_reduce_sum(%zu) wrong: %s\n", c->rank, n, err.msg);
    free(buf);
    free(want);
    return bad;
}

static int check_all_gather(struct comm *c, size_t n)
{
    float *send = malloc(n * sizeof(float)), *recv = calloc(n * (size_t)c->size, sizeof(float));
    for (size_t i = 0; i < n; i++)
        send[i] = value(c->rank, i);
    struct es_err err = {{0}};
    int bad = c->ops->all_gather(c, send, recv, n, &err) != ES_OK;
    for (int r = 0; !bad && r < c->size; r++)
        for (size_t i = 0; i < n; i++)
            bad |= memcmp(&recv[(size_t)r * n + i], &(float){value(r, i)}, sizeof(float)) != 0;
    if (bad) fprintf(stderr, "rank %d: all_gather(%zu) wrong: %s\n", c->rank, n, err.msg);
    free(send);
    free(recv);
    return bad;
}

static int check_broadcast(struct comm *c, int root, size_t bytes)
{
    unsigned char *buf = calloc(bytes, 1);
    if (c->rank == root)
        for (size_t i = 0; i < bytes; i++)
            buf[i] = (unsigned char)(root * 31 + i * 7);
    struct es_err err = {{0}};
    int bad = c->ops->broadcast(c, buf, bytes, root, &err) != ES_OK;
    for (size_t i = 0; !bad && i < bytes; i++)
        bad |= buf[i] != (unsigned char)(root * 31 + i * 7);
    if (bad) fprintf(stderr, "rank %d: broadcast from %d wrong: %s\n", c->rank, root, err.msg);
    free(buf);
    return bad;
}

/* arrived: a counter shared by thread ranks (NULL for processes). After
 * barrier k every rank has counted k + 1 times. */
static int check_barriers(struct comm *c, atomic_int *arrived)
{
    int bad = 0;
    for (int k = 0; k < 5; k++) {
        if (arrived) atomic_fetch_add(arrived, 1);
        struct es_err err = {{0}};
        bad |= c->ops->barrier(c, &err) != ES_OK;
        if (arrived) bad |= atomic_load(arrived) < (k + 1) * c->size;
    }
    if (bad) fprintf(stderr, "rank %d: barrier wrong\n", c->rank);
    return bad;
}

/* Every collective, several sizes; 0 when all were right. */
static int run_collectives(struct comm *c, atomic_int *arrived)
{
    int bad = 0;
    bad += check_all_reduce(c, 1);
    bad += check_all_reduce(c, 1000);
    bad += check_all_reduce(c, 300000); /* 1.2 MB: many partial socket writes */
    bad += check_all_gather(c, 1);
    bad += check_all_gather(c, 777);
    bad += check_broadcast(c, 0, 10000);
    bad += check_broadcast(c, c->size - 1, 10000);
    bad += check_barriers(c, arrived);
    bad += check_all_reduce(c, 0);
    return bad;
}

/* ------------------------------------------------------------ thread ranks */

enum job_kind {
    JOB_COLLECTIVES, /* run every collective */
    JOB_ALL_REDUCE,  /* one all_reduce_sum of n floats, then one more */
    JOB_LEAVE,       /* join, then destroy the handle at once */
    JOB_BREAK,       /* join, break_group, destroy once the others failed */
};

struct job {
    enum job_kind kind;
    int rank, size, port;
    double timeout_s;
    size_t n; /* JOB_ALL_REDUCE */
    atomic_int *arrived;
    enum es_status create_st, op_st, again_st;
    struct es_err err, again_err;
    int bad;
    double seconds; /* create's duration */
};

static void *job_main(void *arg)
{
    struct job *j = arg;
    struct comm *c = NULL;
    double t0 = now_s();
    j->create_st =
        comm_tcp_create(j->rank, j->size, "127.0.0.1", j->port, j->timeout_s, &c, &j->err);
    j->seconds = now_s() - t0;
    if (j->create_st != ES_OK) return NULL;
    if (j->kind == JOB_COLLECTIVES) j->bad = run_collectives(c, j->arrived);
    if (j->kind == JOB_ALL_REDUCE) {
        float *buf = calloc(j->n, sizeof(float));
        j->op_st = c->ops->all_reduce_sum(c, buf, j->n, &j->err);
        if (j->arrived) atomic_fetch_add(j->arrived, 1);
        j->again_st = c->ops->all_reduce_sum(c, buf, j->n, &j->again_err);
        free(buf);
    }
    if (j->kind == JOB_BREAK) {
        c->ops->break_group(c);
        float x = 1;
        j->again_st = c->ops->all_reduce_sum(c, &x, 1, &j->again_err);
        /* The others must fail from the break alone, this socket open. */
        while (atomic_load(j->arrived) < j->size - 1)
            usleep(1000);
    }
    c->ops->destroy(c);
    return NULL;
}

static void run_jobs(struct job *jobs, int n)
{
    pthread_t th[MAX_RANKS];
    for (int i = 0; i < n; i++)
        pthread_create(&th[i], NULL, job_main, &jobs[i]);
    for (int i = 0; i < n; i++)
        pthread_join(th[i], NULL);
}

static void test_threads(int size)
{
    struct job jobs[MAX_RANKS];
    atomic_int arrived = 0;
    int port = free_port();
    for (int r = 0; r < size; r++)
        jobs[r] = (struct job){.kind = JOB_COLLECTIVES,
                               .rank = r,
                               .size = size,
                               .port = port,
                               .timeout_s = TIMEOUT_S,
                               .arrived = &arrived};
    run_jobs(jobs, size);
    for (int r = 0; r < size; r++) {
        if (jobs[r].create_st != ES_OK) fprintf(stderr, "rank %d: %s\n", r, jobs[r].err.msg);
        CHECK(jobs[r].create_st == ES_OK);
        CHECK(jobs[r].bad == 0);
    }
}

static void test_single_rank(void)
{
    struct comm *c = NULL;
    struct es_err err = {{0}};
    CHECK(comm_tcp_create(0, 1, "127.0.0.1", free_port(), 1.0, &c, &err) == ES_OK);
    if (c) {
        CHECK(run_collectives(c, NULL) == 0);
        c->ops->destroy(c);
    }
}

static void test_missing_rank(void)
{
    struct job jobs[2];
    int port = free_port();
    for (int r = 0; r < 2; r++) /* rank 2 of 3 never starts */
        jobs[r] = (struct job){.rank = r, .size = 3, .port = port, .timeout_s = 1.0};
    run_jobs(jobs, 2);
    for (int r = 0; r < 2; r++) {
        CHECK(jobs[r].create_st != ES_OK);
        CHECK(strstr(jobs[r].err.msg, "rank(s) 2 of 3") != NULL);
        CHECK(jobs[r].seconds < 1.0 + 5.0); /* the timeout, not the reply's grace period */
        fprintf(stderr, "  missing rank, rank %d: %s\n", r, jobs[r].err.msg);
    }
    CHECK(jobs[0].create_st == ES_EIO);
    /* and rank 0 missing: the others say so */
    struct job lone = {.rank = 1, .size = 2, .port = free_port(), .timeout_s = 0.5};
    run_jobs(&lone, 1);
    CHECK(lone.create_st == ES_EIO);
    CHECK(strstr(lone.err.msg, "rank 0 is not reachable") != NULL);
}

static void test_size_mismatch(void)
{
    int port = free_port();
    struct job jobs[2] = {{.rank = 0, .size = 2, .port = port, .timeout_s = 5.0},
                          {.rank = 1, .size = 3, .port = port, .timeout_s = 5.0}};
    run_jobs(jobs, 2);
    CHECK(jobs[0].create_st == ES_EINVAL && jobs[1].create_st == ES_EINVAL);
    CHECK(strstr(jobs[0].err.msg, "group of 3 ranks") != NULL);
    CHECK(strstr(jobs[1].err.msg, "refused") != NULL);
    fprintf(stderr, "  size mismatch: %s\n", jobs[1].err.msg);
}

/* Ranks in different collectives: both sides fail, nobody reads the
 * other's data as its own. */
static void test_out_of_lockstep(void)
{
    int port = free_port();
    struct job jobs[2];
    for (int r = 0; r < 2; r++)
        jobs[r] = (struct job){.kind = JOB_ALL_REDUCE,
                               .rank = r,
                               .size = 2,
                               .port = port,
                               .timeout_s = TIMEOUT_S,
                               .n = r ? 11 : 10};
    run_jobs(jobs, 2);
    for (int r = 0; r < 2; r++) {
        CHECK(jobs[r].create_st == ES_OK);
        CHECK(jobs[r].op_st == ES_EIO);
        CHECK(jobs[r].again_st == ES_EIO);
    }
    CHECK(strstr(jobs[0].err.msg, "out of lockstep") != NULL);
}

/* Rank `leaver` joins and leaves; the others are mid-all_reduce. */
static void test_rank_leaves(int leaver)
{
    int port = free_port();
    struct job jobs[3];
    for (int r = 0; r < 3; r++)
        jobs[r] = (struct job){.kind = r == leaver ? JOB_LEAVE : JOB_ALL_REDUCE,
                               .rank = r,
                               .size = 3,
                               .port = port,
                               .timeout_s = TIMEOUT_S,
                               .n = 5000};
    run_jobs(jobs, 3);
    for (int r = 0; r < 3; r++) {
        CHECK(jobs[r].create_st == ES_OK);
        if (r == leaver) continue;
        CHECK(jobs[r].op_st == ES_EIO);
        CHECK(jobs[r].again_st == ES_EIO); /* broken for good, fails at once */
        CHECK(strstr(jobs[r].again_err.msg, "broke earlier") != NULL);
        fprintf(stderr, "  rank %d left, rank %d: %s\n", leaver, r, jobs[r].err.msg);
    }
}

/* Rank `breaker` joins and breaks the group without entering the
 * all_reduce the others wait in: they fail instead of waiting for it. */
static void test_break_group(int breaker)
{
    int port = free_port();
    atomic_int failed = 0;
    struct job jobs[3];
    for (int r = 0; r < 3; r++)
        jobs[r] = (struct job){.kind = r == breaker ? JOB_BREAK : JOB_ALL_REDUCE,
                               .rank = r,
                               .size = 3,
                               .port = port,
                               .timeout_s = TIMEOUT_S,
                               .n = 100,
                               .arrived = &failed};
    run_jobs(jobs, 3);
    for (int r = 0; r < 3; r++) {
        CHECK(jobs[r].create_st == ES_OK);
        CHECK(jobs[r].again_st == ES_EIO);
        CHECK(strstr(jobs[r].again_err.msg, "broke earlier") != NULL);
        if (r == breaker) continue;
        CHECK(jobs[r].op_st == ES_EIO);
        fprintf(stderr, "  rank %d broke the group, rank %d: %s\n", breaker, r, jobs[r].err.msg);
    }
    CHECK(strstr(jobs[breaker].again_err.msg, "failed outside a collective") != NULL);
}

/* ---------------------------------------------------------- process ranks */

enum child_role {
    CHILD_COLLECTIVES, /* every collective: exit 0 when all were right */
    CHILD_DIE,         /* join, then exit without a word */
    CHILD_SEE_EIO,     /* one all_reduce_sum of 64: exit 0 when it fails with ES_EIO */
};

static void child_rank(int rank, int size, int port, enum child_role role)
{
    struct comm *c = NULL;
    struct es_err err = {{0}};
    if (comm_tcp_create(rank, size, "127.0.0.1", port, TIMEOUT_S, &c, &err) != ES_OK) {
        fprintf(stderr, "child rank %d: %s\n", rank, err.msg);
        _exit(2);
    }
    if (role == CHILD_DIE) _exit(0); /* the kernel closes its socket */
    int bad;
    if (role == CHILD_SEE_EIO) {
        float buf[64] = {0};
        bad = c->ops->all_reduce_sum(c, buf, 64, &err) != ES_EIO;
        fprintf(stderr, "  rank process 2 died, rank %d: %s\n", rank, err.msg);
    } else {
        bad = run_collectives(c, NULL);
    }
    c->ops->destroy(c);
    _exit(bad ? 1 : 0);
}

/* Rank 0 here, ranks 1 and 2 in child processes; one_dies: rank 2 exits
 * right after joining while 0 and 1 are in an all_reduce_sum. */
static void test_processes(bool one_dies)
{
    enum { SIZE = 3 };
    int port = free_port();
    pid_t kids[SIZE];
    for (int r = 1; r < SIZE; r++) {
        enum child_role role = !one_dies ? CHILD_COLLECTIVES : r == 2 ? CHILD_DIE : CHILD_SEE_EIO;
        kids[r] = fork();
        if (kids[r] == 0) child_rank(r, SIZE, port, role);
    }
    struct comm *c = NULL;
    struct es_err err = {{0}};
    CHECK(comm_tcp_create(0, SIZE, "127.0.0.1", port, TIMEOUT_S, &c, &err) == ES_OK);
    if (c && !one_dies) CHECK(run_collectives(c, NULL) == 0);
    if (c && one_dies) {
        float buf[64] = {0};
        CHECK(c->ops->all_reduce_sum(c, buf, 64, &err) == ES_EIO);
        CHECK(strstr(err.msg, "rank 2") != NULL);
        fprintf(stderr, "  rank process 2 died, rank 0: %s\n", err.msg);
    }
    if (c) c->ops->destroy(c);
    for (int r = 1; r < SIZE; r++) {
        int status = -1;
        waitpid(kids[r], &status, 0);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
}

int main(void)
{
    alarm(120); /* a hang is a failure, not a stuck CI job */
    test_single_rank();
    test_threads(2);
    test_threads(4);
    test_processes(false);
    test_processes(true);
    test_missing_rank();
    test_size_mismatch();
    test_out_of_lockstep();
    test_rank_leaves(2);
    test_rank_leaves(0);
    test_rank_leaves(1);
    test_break_group(0);
    test_break_group(2);
    return test_result("test_comm_tcp");
}
