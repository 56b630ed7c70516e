/*
 * comm_tcp.c - collectives between ranks in several processes (comm.h),
 * as a star over TCP through rank 0.
 *
 * Every rank other than 0 holds one socket to rank 0; rank 0 holds one per
 * other rank (several ranks of one process each have their own handle and
 * socket). An all-reduce sends every buffer to rank 0, which sums them in
 * rank order (its own, then rank 1's, 2's, ...: the order of comm_local.c,
 * so results are bit-identical to it) and sends the sum back. Each message
 * starts with a header naming the collective and its size, which both ends
 * check: ranks that drift out of lockstep fail loudly instead of reading
 * each other's data.
 *
 * Owns the sockets and, on rank 0, one staging buffer that only grows.
 * Once any call fails the group is broken: the handle shuts its sockets
 * down, so every rank blocked on it fails too (rank 0 losing one peer
 * takes the others down with it), and every later call fails at once.
 * break_group() does the same for a rank that failed outside a collective.
 * The owner then destroys the handles. It never exits, never retries a
 * collective.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "comm.h"
#include "log.h"
#include "netio.h"

#define LOG_COMM(...) LOG_I("comm", __VA_ARGS__)

#define CT_MAGIC 0x54435345u /* "ESCT" little-endian: also catches a byte-order mismatch */
#define CT_VERSION 1u
#define CT_HELLO_WAIT_S 5.0 /* a connection must say who it is within this */

enum ct_status {
    CT_OK = 0,
    CT_BAD_MAGIC,
    CT_BAD_VERSION,
    CT_BAD_SIZE,
    CT_BAD_RANK,
    CT_DUP_RANK,
    CT_GROUP_FAILED,
};

struct ct_hello {
    uint32_t magic, version, size, rank;
};

struct ct_reply {
    uint32_t magic, version, size, status;
    char msg[240]; /* why, when status != CT_OK */
};

enum ct_op { CT_REDUCE = 1, CT_GATHER, CT_BCAST, CT_BARRIER };

static const char *const op_names[] = {"?", "all_reduce_sum", "all_gather", "broadcast", "barrier"};

/* Precedes every collective message in both directions. */
struct ct_hdr {
    uint32_t op;
    int32_t root;
    uint64_t bytes;
};

struct tcp_rank {
    struct comm comm;
    int *fd;          /* rank 0: [size] socket of rank r (fd[0] = -1); else fd[0] to rank 0 */
    char (*who)[80];  /* [size] on rank 0, [1] elsewhere: how messages name the peer */
    float *stage;     /* rank 0: one rank's incoming vector during an all-reduce */
    size_t stage_cap; /* floats */
    bool broken;
    struct es_err broken_why; /* the first failure, repeated by every later call */
};

static int n_peers(const struct tcp_rank *t)
{
    return t->comm.rank == 0 ? t->comm.size : 1;
}

/* Marks the group broken and wakes every rank blocked on these sockets. */
static enum es_status breakdown(struct tcp_rank *t, enum es_status st, struct es_err *err)
{
    if (!t->broken) {
        t->broken = true;
        if (err) t->broken_why = *err;
        for (int i = 0; i < n_peers(t); i++)
            if (t->fd[i] >= 0) shutdown(t->fd[i], SHUT_RDWR);
    }
    return es_wrap(err, st, "comm_tcp rank %d: ", t->comm.rank);
}

static enum es_status check_usable(struct tcp_rank *t, struct es_err *err)
{
    if (!t->broken) return ES_OK;
    return es_fail(err, ES_EIO, "comm_tcp rank %d: the group broke earlier (%.300s)", t->comm.rank,
                   t->broken_why.msg[0] ? t->broken_why.msg : "?");
}

static enum es_status send_msg(struct tcp_rank *t, int peer, enum ct_op op, int root,
                               const void *data, size_t bytes, struct es_err *err)
{
    struct ct_hdr h = {.op = op, .root = root, .bytes = bytes};
    return nio_write2(t->fd[peer], &h, sizeof(h), data, data ? bytes : 0, t->who[peer], err);
}

/* Reads a header and checks it is the collective this rank is in. */
static enum es_status recv_hdr(struct tcp_rank *t, int peer, enum ct_op op, int root,
                               uint64_t bytes, struct es_err *err)
{
    struct ct_hdr h;
    enum es_status st = nio_read_all(t->fd[peer], &h, sizeof(h), 0, t->who[peer], err);
    if (st != ES_OK) return st;
    if (h.op != op || h.root != root || h.bytes != bytes) {
        const char *name = h.op >= 1 && h.op <= 4 ? op_names[h.op] : "garbage";
        return es_fail(err, ES_EIO,
                       "out of lockstep: %s is in %s(%llu bytes, root %d), this rank in "
                       "%s(%llu bytes, root %d)",
                       t->who[peer], name, (unsigned long long)h.bytes, (int)h.root, op_names[op],
                       (unsigned long long)bytes, root);
    }
    return ES_OK;
}

static enum es_status recv_msg(struct tcp_rank *t, int peer, enum ct_op op, int root, void *data,
                               size_t bytes, struct es_err *err)
{
    enum es_status st = recv_hdr(t, peer, op, root, bytes, err);
    if (st == ES_OK && data && bytes)
        st = nio_read_all(t->fd[peer], data, bytes, 0, t->who[peer], err);
    return st;
}

static enum es_status tcp_all_reduce_sum(struct comm *c, float *buf, size_t n, struct es_err *err)
{
    struct tcp_rank *t = c->impl;
    enum es_status st = check_usable(t, err);
    if (st != ES_OK || c->size == 1 || n == 0) return st;
    size_t bytes = n * sizeof(float);
    if (c->rank != 0) {
        st = send_msg(t, 0, CT_REDUCE, 0, buf, bytes, err);
        if (st == ES_OK) st = recv_msg(t, 0, CT_REDUCE, 0, buf, bytes, err);
        return st == ES_OK ? ES_OK : breakdown(t, st, err);
    }
    if (t->stage_cap < n) {
        float *p = realloc(t->stage, bytes);
        if (!p) {
            es_fail(err, ES_ENOMEM, "out of memory for %zu staging bytes", bytes);
            return breakdown(t, ES_ENOMEM, err);
        }
        t->stage = p;
        t->stage_cap = n;
    }
    for (int r = 1; r < c->size && st == ES_OK; r++) {
        st = recv_msg(t, r, CT_REDUCE, 0, t->stage, bytes, err);
        for (size_t i = 0; st == ES_OK && i < n; i++)
            buf[i] += t->stage[i];
    }
    for (int r = 1; r < c->size && st == ES_OK; r++)
        st = send_msg(t, r, CT_REDUCE, 0, buf, bytes, err);
    return st == ES_OK ? ES_OK : breakdown(t, st, err);
}

static enum es_status tcp_all_gather(struct comm *c, const float *send, float *recv, size_t n,
                                     struct es_err *err)
{
    struct tcp_rank *t = c->impl;
    enum es_status st = check_usable(t, err);
    if (st != ES_OK) return st;
    size_t bytes = n * sizeof(float), total = bytes * (size_t)c->size;
    if (c->size == 1) {
        memmove(recv, send, bytes);
        return ES_OK;
    }
    if (c->rank != 0) {
        st = send_msg(t, 0, CT_GATHER, 0, send, bytes, err);
        if (st == ES_OK) st = recv_msg(t, 0, CT_GATHER, 0, recv, total, err);
        return st == ES_OK ? ES_OK : breakdown(t, st, err);
    }
    memmove(recv, send, bytes);
    for (int r = 1; r < c->size && st == ES_OK; r++)
        st = recv_msg(t, r, CT_GATHER, 0, recv + (size_t)r * n, bytes, err);
    for (int r = 1; r < c->size && st == ES_OK; r++)
        st = send_msg(t, r, CT_GATHER, 0, recv, total, err);
    return st == ES_OK ? ES_OK : breakdown(t, st, err);
}

static enum es_status tcp_broadcast(struct comm *c, void *buf, size_t bytes, int root,
                                    struct es_err *err)
{
    struct tcp_rank *t = c->impl;
    if (root < 0 || root >= c->size)
        return es_fail(err, ES_EINVAL, "comm_tcp: broadcast root %d of %d ranks", root, c->size);
    enum es_status st = check_usable(t, err);
    if (st != ES_OK || c->size == 1) return st;
    if (c->rank != 0) {
        if (c->rank == root)
            st = send_msg(t, 0, CT_BCAST, root, buf, bytes, err);
        else
            st = recv_msg(t, 0, CT_BCAST, root, buf, bytes, err);
        return st == ES_OK ? ES_OK : breakdown(t, st, err);
    }
    if (root != 0) st = recv_msg(t, root, CT_BCAST, root, buf, bytes, err);
    for (int r = 1; r < c->size && st == ES_OK; r++)
        if (r != root) st = send_msg(t, r, CT_BCAST, root, buf, bytes, err);
    return st == ES_OK ? ES_OK : breakdown(t, st, err);
}

static enum es_status tcp_barrier(struct comm *c, struct es_err *err)
{
    struct tcp_rank *t = c->impl;
    enum es_status st = check_usable(t, err);
    if (st != ES_OK || c->size == 1) return st;
    if (c->rank != 0) {
        st = send_msg(t, 0, CT_BARRIER, 0, NULL, 0, err);
        if (st == ES_OK) st = recv_msg(t, 0, CT_BARRIER, 0, NULL, 0, err);
        return st == ES_OK ? ES_OK : breakdown(t, st, err);
    }
    for (int r = 1; r < c->size && st == ES_OK; r++)
        st = recv_msg(t, r, CT_BARRIER, 0, NULL, 0, err);
    for (int r = 1; r < c->size && st == ES_OK; r++)
        st = send_msg(t, r, CT_BARRIER, 0, NULL, 0, err);
    return st == ES_OK ? ES_OK : breakdown(t, st, err);
}

static void tcp_break_group(struct comm *c)
{
    struct tcp_rank *t = c->impl;
    struct es_err why = {{0}};
    es_fail(&why, ES_EIO, "this rank failed outside a collective");
    breakdown(t, ES_EIO, &why);
}

static void tcp_destroy(struct comm *c)
{
    if (!c) return;
    struct tcp_rank *t = c->impl;
    for (int i = 0; t->fd && i < n_peers(t); i++)
        nio_close(t->fd[i]);
    free(t->fd);
    free(t->who);
    free(t->stage);
    free(t);
}

static const struct comm_ops tcp_ops = {
    .all_reduce_sum = tcp_all_reduce_sum,
    .all_gather = tcp_all_gather,
    .broadcast = tcp_broadcast,
    .barrier = tcp_barrier,
    .destroy = tcp_destroy,
    .break_group = tcp_break_group,
};

/* ---------------------------------------------------------------- rendezvous */

static void send_reply(int fd, int size, enum ct_status status, const char *msg)
{
    struct ct_reply rep = {
        .magic = CT_MAGIC, .version = CT_VERSION, .size = (uint32_t)size, .status = status};
    snprintf(rep.msg, sizeof(rep.msg), "%.*s", (int)sizeof(rep.msg) - 1, msg ? msg : "");
    struct es_err ignored = {{0}};
    nio_write_all(fd, &rep, sizeof(rep), "a joining rank", &ignored);
}

/* Tells every rank that joined so far why the group will not form. */
static void fail_joined(struct tcp_rank *t, const char *msg)
{
    for (int r = 1; r < t->comm.size; r++)
        if (t->fd[r] >= 0) send_reply(t->fd[r], t->comm.size, CT_GROUP_FAILED, msg);
}

/* Reads one joining connection's hello and places it. Returns ES_OK with
 * *placed = false for a connection that is not a rank at all (dropped). */
static enum es_status admit(struct tcp_rank *t, int fd, const char *peer, bool *placed,
                            struct es_err *err)
{
    int size = t->comm.size;
    struct ct_hello h;
    struct es_err rerr = {{0}};
    *placed = false;
    if (nio_read_all(fd, &h, sizeof(h), nio_now() + CT_HELLO_WAIT_S, peer, &rerr) != ES_OK ||
        h.magic != CT_MAGIC) {
        LOG_W("comm", "rank 0: ignoring a connection from %s: not an evalserver rank (%s)", peer,
              rerr.msg[0] ? rerr.msg : "wrong magic or byte order");
        if (!rerr.msg[0]) send_reply(fd, size, CT_BAD_MAGIC, "wrong magic or byte order");
        nio_close(fd);
        return ES_OK;
    }
    enum ct_status bad = CT_OK;
    if (h.version != CT_VERSION) {
        bad = CT_BAD_VERSION;
        es_fail(err, ES_EINVAL,
                "the rank at %s speaks comm_tcp protocol %u, rank 0 speaks %u (mixed "
                "evalserver versions?)",
                peer, h.version, CT_VERSION);
    } else if ((int)h.size != size) {
        bad = CT_BAD_SIZE;
        es_fail(err, ES_EINVAL,
                "rank %u at %s belongs to a group of %u ranks, rank 0 to one of %d (is --tp "
                "the same on every node?)",
                h.rank, peer, h.size, size);
    } else if (h.rank < 1 || (int)h.rank >= size) {
        bad = CT_BAD_RANK;
        es_fail(err, ES_EINVAL, "the rank at %s calls itself rank %u of %d", peer, h.rank, size);
    } else if (t->fd[h.rank] >= 0) {
        bad = CT_DUP_RANK;
        es_fail(err, ES_EINVAL,
                "rank %u joined twice, from %s and from %s (is --node-rank unique per node?)",
                h.rank, t->who[h.rank], peer);
    }
    if (bad != CT_OK) {
        send_reply(fd, size, bad, err->msg);
        nio_close(fd);
        return ES_EINVAL;
    }
    t->fd[h.rank] = fd;
    snprintf(t->who[h.rank], sizeof(t->who[h.rank]), "rank %u (%.60s)", h.rank, peer);
    *placed = true;
    return ES_OK;
}

static enum es_status rendezvous_master(struct tcp_rank *t, const char *addr, int port,
                                        double timeout_s, struct es_err *err)
{
    int size = t->comm.size, lfd = -1, joined = 0;
    enum es_status st = nio_listen(addr, port, &lfd, err);
    if (st != ES_OK) return st;
    double deadline = nio_now() + timeout_s;
    LOG_COMM("rank 0: waiting for %d ranks on port %d", size - 1, port);
    while (joined < size - 1) {
        int fd = -1, timed_out = 0;
        char peer[80];
        st = nio_accept(lfd, deadline, &fd, peer, sizeof(peer), &timed_out, err);
        if (st != ES_OK && timed_out) {
            char missing[160] = "";
            size_t len = 0;
            for (int r = 1; r < size && len + 16 < sizeof(missing); r++)
                if (t->fd[r] < 0)
                    len += (size_t)snprintf(missing + len, sizeof(missing) - len, "%s%d",
                                            len ? ", " : "", r);
            st = es_fail(err, ES_EIO,
                         "timed out after %.0f s waiting for rank(s) %s of %d to connect to "
                         "port %d (is every node started, with the same --master-addr and "
                         "--master-port?)",
                         timeout_s, missing, size, port);
        }
        if (st != ES_OK) break;
        bool placed = false;
        st = admit(t, fd, peer, &placed, err);
        if (st != ES_OK) break;
        joined += placed;
    }
    nio_close(lfd);
    if (st != ES_OK) {
        fail_joined(t, err->msg);
        return st;
    }
    for (int r = 1; r < size; r++)
        send_reply(t->fd[r], size, CT_OK, NULL);
    LOG_COMM("rank 0: all %d ranks joined", size);
    return ES_OK;
}

static enum es_status rendezvous_rank(struct tcp_rank *t, const char *addr, int port,
                                      double timeout_s, struct es_err *err)
{
    int size = t->comm.size, rank = t->comm.rank;
    enum es_status st = nio_connect(addr, port, nio_now() + timeout_s, &t->fd[0], err);
    if (st != ES_OK)
        return es_wrap(err, st, "rank %d: rank 0 is not reachable within %.0f s: ", rank,
                       timeout_s);
    struct ct_hello h = {
        .magic = CT_MAGIC, .version = CT_VERSION, .size = (uint32_t)size, .rank = (uint32_t)rank};
    struct ct_reply rep;
    st = nio_write_all(t->fd[0], &h, sizeof(h), t->who[0], err);
    /* Rank 0 answers once the whole group is there, or gives up within
     * its own timeout, which started before this connection. */
    if (st == ES_OK)
        st =
            nio_read_all(t->fd[0], &rep, sizeof(rep), nio_now() + timeout_s + 10.0, t->who[0], err);
    if (st != ES_OK) return st;
    rep.msg[sizeof(rep.msg) - 1] = '\0';
    if (rep.magic != CT_MAGIC)
        return es_fail(err, ES_EIO, "%s is not an evalserver rank 0 (wrong magic)", t->who[0]);
    if (rep.status != CT_OK)
        return es_fail(err, ES_EINVAL, "rank %d: rank 0 refused the group: %s", rank,
                       rep.msg[0] ? rep.msg : "no reason given");
    return ES_OK;
}

enum es_status comm_tcp_create(int rank, int size, const char *master_addr, int port,
                               double timeout_s, struct comm **out, struct es_err *err)
{
    struct es_err local = {{0}};
    if (!err) err = &local; /* the rendezvous forwards its message to the peers */
    if (size < 1 || rank < 0 || rank >= size)
        return es_fail(err, ES_EINVAL, "comm_tcp: rank %d of a group of %d", rank, size);
    if (port <= 0 || port > 65535 || !master_addr || !master_addr[0])
        return es_fail(err, ES_EINVAL, "comm_tcp: bad master address %s:%d",
                       master_addr ? master_addr : "(null)", port);
    struct tcp_rank *t = calloc(1, sizeof(*t));
    if (!t) return es_fail(err, ES_ENOMEM, "comm_tcp: out of memory");
    t->comm = (struct comm){.ops = &tcp_ops, .rank = rank, .size = size, .impl = t};
    int np = n_peers(t);
    t->fd = malloc(sizeof(*t->fd) * (size_t)np);
    t->who = calloc((size_t)np, sizeof(*t->who));
    enum es_status st = ES_ENOMEM;
    if (!t->fd || !t->who) {
        es_fail(err, st, "comm_tcp: out of memory");
        goto err;
    }
    for (int i = 0; i < np; i++)
        t->fd[i] = -1;
    if (rank != 0) snprintf(t->who[0], sizeof(t->who[0]), "rank 0 (%.50s:%d)", master_addr, port);
    if (size > 1) {
        st = rank == 0 ? rendezvous_master(t, master_addr, port, timeout_s, err)
                       : rendezvous_rank(t, master_addr, port, timeout_s, err);
        if (st != ES_OK) {
            es_wrap(err, st, "comm_tcp: ");
            goto err;
        }
    }
    *out = &t->comm;
    return ES_OK;
err:
    tcp_destroy(&t->comm);
    return st;
}
