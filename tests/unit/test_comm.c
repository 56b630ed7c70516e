/*
 * test_comm.c - the in-process collectives (comm_local.c) with 1..4 ranks,
 * each rank a thread.
 *
 * Checked: all_reduce_sum gives every rank bit-identical results equal to
 * the float sum taken in rank order (0, 1, 2, ...), for sizes below and
 * above COMM_LOCAL_SPLIT_FLOATS (one path each); many consecutive calls of
 * mixed sizes and kinds (the staging buffers alternate and grow);
 * all_gather; broadcast from every root; barrier (no rank leaves before
 * all arrived); a bad broadcast root is refused.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "testing.h"

#define MAX_RANKS 4
#define ROUNDS 40

/* Deterministic values of varied magnitude, so that the summation order
 * changes the rounding: a different order would be caught. */
static float value_of(int rank, size_t i, int round)
{
    uint32_t h = (uint32_t)(rank * 2654435761u) ^ (uint32_t)(i * 40503u) ^ (uint32_t)round * 977u;
    h ^= h >> 13;
    h *= 0x5bd1e995u;
    h ^= h >> 15;
    float mant = (float)(h & 0xffff) / 65536.0f - 0.5f;
    int expo = (int)((h >> 16) % 24) - 12;
    return ldexpf(mant, expo);
}

static float rank_order_sum(int size, size_t i, int round)
{
    float s = value_of(0, i, round);
    for (int r = 1; r < size; r++)
        s += value_of(r, i, round);
    return s;
}

struct shared_state {
    int size;
    struct comm *comms[MAX_RANKS];
    float *reduced[MAX_RANKS]; /* each rank's result of the last checked reduce */
    atomic_int arrived;        /* barrier check */
    atomic_int failures;
};

struct rank_arg {
    struct shared_state *s;
    int rank;
};

#define RANK_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: rank %d of %d: CHECK failed: %s\n", __FILE__, __LINE__, rank,  \
                    s->size, #cond);                                                               \
            atomic_fetch_add(&s->failures, 1);                                                     \
        }                                                                                          \
    } while (0)

/* Sizes the rounds cycle through: tiny, just below and at/above the split,
 * a size that does not divide by the rank count, and zero. */
static size_t round_size(int round)
{
    static const size_t sizes[] = {1,
                                   7,
                                   COMM_LOCAL_SPLIT_FLOATS - 1,
                                   COMM_LOCAL_SPLIT_FLOATS,
                                   3 * COMM_LOCAL_SPLIT_FLOATS + 5,
                                   0,
                                   1000};
    return sizes[round % (int)(sizeof(sizes) / sizeof(sizes[0]))];
}

static void check_reduce(struct shared_state *s, int rank, float *buf, int round)
{
    struct comm *c = s->comms[rank];
    struct es_err err = {{0}};
    size_t n = round_size(round);
    for (size_t i = 0; i < n; i++)
        buf[i] = value_of(rank, i, round);
    RANK_CHECK(c->ops->all_reduce_sum(c, buf, n, &err) == ES_OK);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        float want = rank_order_sum(s->size, i, round);
        if (memcmp(&buf[i], &want, sizeof(float)) != 0) bad++;
    }
    RANK_CHECK(bad == 0);
}

static void check_gather(struct shared_state *s, int rank, float *send, float *recv, int round)
{
    struct comm *c = s->comms[rank];
    struct es_err err = {{0}};
    size_t n = round_size(round + 3);
    for (size_t i = 0; i < n; i++)
        send[i] = value_of(rank, i, round);
    RANK_CHECK(c->ops->all_gather(c, send, recv, n, &err) == ES_OK);
    size_t bad = 0;
    for (int r = 0; r < s->size; r++)
        for (size_t i = 0; i < n; i++)
            if (recv[(size_t)r * n + i] != value_of(r, i, round)) bad++;
    RANK_CHECK(bad == 0);
}

static void check_broadcast(struct shared_state *s, int rank, int round)
{
    struct comm *c = s->comms[rank];
    struct es_err err = {{0}};
    int root = round % s->size;
    char msg[64];
    if (rank == root)
        snprintf(msg, sizeof(msg), "round %d from root %d", round, root);
    else
        memset(msg, 'x', sizeof(msg));
    RANK_CHECK(c->ops->broadcast(c, msg, sizeof(msg), root, &err) == ES_OK);
    char want[64];
    snprintf(want, sizeof(want), "round %d from root %d", round, root);
    RANK_CHECK(strcmp(msg, want) == 0);
}

static void check_barrier(struct shared_state *s, int rank, int round)
{
    struct comm *c = s->comms[rank];
    struct es_err err = {{0}};
    atomic_fetch_add(&s->arrived, 1);
    RANK_CHECK(c->ops->barrier(c, &err) == ES_OK);
    /* Everyone of this round arrived before anyone left. */
    RANK_CHECK(atomic_load(&s->arrived) >= (round + 1) * s->size);
    /* ...and nobody starts the next round's count before all have checked. */
    RANK_CHECK(c->ops->barrier(c, &err) == ES_OK);
}

static void *rank_main(void *argp)
{
    struct rank_arg *a = argp;
    struct shared_state *s = a->s;
    int rank = a->rank;
    size_t cap = 4 * COMM_LOCAL_SPLIT_FLOATS;
    float *buf = malloc(sizeof(float) * cap);
    float *recv = malloc(sizeof(float) * cap * MAX_RANKS);
    RANK_CHECK(buf && recv);
    if (!buf || !recv) abort(); /* the other ranks would wait forever */
    for (int round = 0; round < ROUNDS; round++) {
        check_reduce(s, rank, buf, round);
        check_gather(s, rank, buf, recv, round);
        check_broadcast(s, rank, round);
        check_barrier(s, rank, round);
    }
    /* Keep one large reduce's result for the cross-rank comparison. */
    size_t n = 3 * COMM_LOCAL_SPLIT_FLOATS + 5;
    for (size_t i = 0; i < n; i++)
        buf[i] = value_of(rank, i, 12345);
    struct es_err err = {{0}};
    RANK_CHECK(s->comms[rank]->ops->all_reduce_sum(s->comms[rank], buf, n, &err) == ES_OK);
    s->reduced[rank] = buf;
    free(recv);
    return NULL;
}

static void run_group(int size)
{
    struct shared_state s = {.size = size};
    struct es_err err = {{0}};
    CHECK(comm_local_create(size, s.comms, &err) == ES_OK);
    for (int r = 0; r < size; r++)
        CHECK(s.comms[r]->rank == r && s.comms[r]->size == size);
    pthread_t th[MAX_RANKS];
    struct rank_arg args[MAX_RANKS];
    for (int r = 0; r < size; r++) {
        args[r] = (struct rank_arg){.s = &s, .rank = r};
        CHECK(pthread_create(&th[r], NULL, rank_main, &args[r]) == 0);
    }
    for (int r = 0; r < size; r++)
        pthread_join(th[r], NULL);
    CHECK(atomic_load(&s.failures) == 0);
    size_t n = 3 * COMM_LOCAL_SPLIT_FLOATS + 5;
    for (int r = 1; r < size; r++)
        CHECK(memcmp(s.reduced[0], s.reduced[r], sizeof(float) * n) == 0);
    /* The data is order-sensitive: summing in reverse rank order differs
     * somewhere, so the rank-order checks above have teeth. */
    if (size >= 3) {
        size_t differ = 0;
        for (size_t i = 0; i < n; i++) {
            float rev = value_of(size - 1, i, 12345);
            for (int r = size - 2; r >= 0; r--)
                rev += value_of(r, i, 12345);
            if (rev != s.reduced[0][i]) differ++;
        }
        CHECK(differ > 0);
    }
    /* A root outside the group is refused without waiting for anyone. */
    char byte = 0;
    CHECK(s.comms[0]->ops->broadcast(s.comms[0], &byte, 1, size, &err) == ES_EINVAL);
    for (int r = 0; r < size; r++) {
        free(s.reduced[r]);
        s.comms[r]->ops->destroy(s.comms[r]);
    }
}

int main(void)
{
    for (int size = 1; size <= MAX_RANKS; size++)
        run_group(size);
    struct comm *none[1];
    struct es_err err = {{0}};
    CHECK(comm_local_create(0, none, &err) == ES_EINVAL);
    return test_result("comm");
}
