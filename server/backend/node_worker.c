/*
 * node_worker.c - the control channel of a multi-node group
 * (node_worker.h): the handshake, node 0's tp_remote and its pipeline
 * calls, and the other nodes' replay loop.
 *
 * Owns the control sockets and node 0's listening control port once they
 * are handed to node_remote_create, the encode buffer of node 0, node 0's
 * watchdog thread and its state, its late-node thread, and the receive
 * buffer, decoded command and scratch results of a worker
 * (all grow-only: after the first steps nothing allocates). Handshake
 * messages are little-endian fields (step_wire.h's accessors). It never
 * exits, and never retries a step: a failed send breaks the remote for
 * good, and the owner tears the group down.
 *
 * Threads on node 0: the engine sends the steps (forwards from its step
 * runner, block copies from the engine thread, never both at once); the watchdog
 * thread sends heartbeats, only while it holds send_mu (taken with
 * trylock, so a step being sent is never waited for and never split) and
 * reads every node's heartbeat answers. In a pipeline over nodes, the
 * stage threads of node 0's backend_pp also call nodes (node_stage.c):
 * each call sends under send_mu and then owns the node's inbox until the
 * answer is in (the watchdog takes an inbox only with trylock and polls
 * no node that a call is reading); heartbeat answers that arrive first
 * are taken on the way. The late-node thread owns the listening socket
 * once the group is complete: it answers each later connection on it
 * (a refusal, or nothing for a stranger) and closes it, and never touches
 * a joined node's socket beyond asking where it connected from. A worker
 * is one thread: it answers a heartbeat when it reads it, in order with
 * the steps.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fault.h"
#include "log.h"
#include "netio.h"
#include "node_step_guard.h"
#include "node_worker.h"
#include "step_wire.h"

#define LOG_NODE(...) LOG_I("node", __VA_ARGS__)

#define NW_MAGIC 0x574e5345u /* "ESNW" */
#define NW_VERSION 3u        /* 2: heartbeats on the step channel; 3: pipeline stages */
#define NW_HELLO_FIELDS                                                                            \
    9 /* magic, version, nnodes, node_rank, tp_size, pp_size, block_size, u64 fp */
#define NW_HELLO_BYTES (4 * NW_HELLO_FIELDS)
#define NW_REPLY_BYTES 256 /* magic, version, status, message */
#define NW_REPLY_MSG (NW_REPLY_BYTES - 12)
#define NW_HELLO_WAIT_S 5.0 /* a connection must say who it is within this */
/* Once the group is complete: a node sends its hello as it connects, and
 * this bounds how long one silent connection holds up the late-node
 * thread (and its join at close()). */
#define NW_LATE_HELLO_WAIT_S 1.0
#define NW_GATE_POLL_S 0.1 /* how often the late-node thread looks at its stop flag */

/* ---------------------------------------------------------------- handshake */

struct hello {
    uint32_t magic, version;
    struct node_shape shape;
};

static void encode_hello(const struct node_shape *s, unsigned char out[NW_HELLO_BYTES])
{
    uint32_t f[NW_HELLO_FIELDS] = {NW_MAGIC,
                                   NW_VERSION,
                                   (uint32_t)s->nnodes,
                                   (uint32_t)s->node_rank,
                                   (uint32_t)s->tp_size,
                                   (uint32_t)s->pp_size,
                                   (uint32_t)s->block_size,
                                   (uint32_t)s->fingerprint,
                                   (uint32_t)(s->fingerprint >> 32)};
    for (int i = 0; i < NW_HELLO_FIELDS; i++)
        sw_put_u32(out + 4 * i, f[i]);
}

static struct hello decode_hello(const unsigned char in[NW_HELLO_BYTES])
{
    uint32_t f[NW_HELLO_FIELDS];
    for (int i = 0; i < NW_HELLO_FIELDS; i++)
        f[i] = sw_get_u32(in + 4 * i);
    return (struct hello){.magic = f[0],
                          .version = f[1],
                          .shape = {.nnodes = (int)f[2],
                                    .node_rank = (int)f[3],
                                    .tp_size = (int)f[4],
                                    .pp_size = (int)f[5],
                                    .block_size = (int)f[6],
                                    .fingerprint = f[7] | (uint64_t)f[8] << 32}};
}

/* Best effort: the node may already be gone. ok = false carries why. */
static void send_verdict(int fd, bool ok, const char *why)
{
    unsigned char rep[NW_REPLY_BYTES] = {0};
    sw_put_u32(rep, NW_MAGIC);
    sw_put_u32(rep + 4, NW_VERSION);
    sw_put_u32(rep + 8, ok ? 0 : 1);
    snprintf((char *)rep + 12, NW_REPLY_MSG, "%.*s", NW_REPLY_MSG - 1, why ? why : "");
    struct es_err ignored = {{0}};
    nio_write_all(fd, rep, sizeof(rep), "a joining node", &ignored);
}

/* "addr:port" of the other end of a connected socket, or "an unknown
 * address" once the connection is gone. */
static void peer_of(int fd, char *out, size_t cap)
{
    struct sockaddr_storage sa;
    socklen_t len = sizeof(sa);
    char host[64], serv[8]; /* numeric: an IPv6 address with its scope, a port */
    if (getpeername(fd, (struct sockaddr *)&sa, &len) != 0 ||
        getnameinfo((struct sockaddr *)&sa, len, host, sizeof(host), serv, sizeof(serv),
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0)
        snprintf(out, cap, "an unknown address");
    else
        snprintf(out, cap, "%s:%s", host, serv);
}

/* ES_OK when hello h fits the group of self (whether its rank is free is
 * the caller's question); otherwise why, naming the node. */
static enum es_status check_hello(const struct node_shape *self, const struct hello *h,
                                  const char *peer, struct es_err *err)
{
    const struct node_shape *o = &h->shape;
    if (h->version != NW_VERSION)
        return es_fail(err, ES_EINVAL,
                       "the node at %s speaks control protocol %u, node 0 speaks %u (mixed "
                       "evalserver versions?)",
                       peer, h->version, NW_VERSION);
    if (o->nnodes != self->nnodes || o->tp_size != self->tp_size || o->pp_size != self->pp_size)
        return es_fail(err, ES_EINVAL,
                       "node %d at %s has %d nodes, %d tensor-parallel ranks and %d pipeline "
                       "stages, node 0 has %d, %d and %d (are --nnodes, --tp and --pp the same "
                       "on every node?)",
                       o->node_rank, peer, o->nnodes, o->tp_size, o->pp_size, self->nnodes,
                       self->tp_size, self->pp_size);
    if (o->block_size != self->block_size || o->fingerprint != self->fingerprint)
        return es_fail(err, ES_EINVAL,
                       "node %d at %s runs a different configuration (block size %d, "
                       "fingerprint %016llx; node 0: %d, %016llx): same model and options "
                       "everywhere?",
                       o->node_rank, peer, o->block_size, (unsigned long long)o->fingerprint,
                       self->block_size, (unsigned long long)self->fingerprint);
    if (o->node_rank < 1 || o->node_rank >= self->nnodes)
        return es_fail(err, ES_EINVAL, "the node at %s calls itself node %d of %d", peer,
                       o->node_rank, self->nnodes);
    return ES_OK;
}

/* Reads one connection's hello within wait_s into *h: false when it is
 * not an evalserver node at all (then it is dropped: logged and closed,
 * nothing sent). */
static bool read_hello(int fd, const char *peer, double wait_s, struct hello *h)
{
    unsigned char buf[NW_HELLO_BYTES] = {0};
    struct es_err rerr = {{0}};
    /* magic and version first: a hello of another version may have
     * another size, and its node must still be told why it is refused */
    double deadline = nio_now() + wait_s;
    enum es_status st = nio_read_all(fd, buf, 8, deadline, peer, &rerr);
    if (st == ES_OK && sw_get_u32(buf) == NW_MAGIC && sw_get_u32(buf + 4) == NW_VERSION)
        st = nio_read_all(fd, buf + 8, sizeof(buf) - 8, deadline, peer, &rerr);
    *h = decode_hello(buf);
    if (st == ES_OK && h->magic == NW_MAGIC) return true;
    LOG_W("node", "node 0: ignoring a connection from %s: not an evalserver node (%s)", peer,
          rerr.msg[0] ? rerr.msg : "wrong magic");
    nio_close(fd);
    return false;
}

/* Reads one connection's hello and places it in fds. ES_OK with
 * *placed = false: not an evalserver node at all, dropped. A node that
 * does not fit, or whose rank has joined already, fails the group: before
 * it is complete no one can tell which of two nodes 1 is the right one,
 * and one of the ranks is then likely missing anyway. */
static enum es_status admit(const struct node_shape *self, int fd, const char *peer, int *fds,
                            bool *placed, struct es_err *err)
{
    struct hello h;
    *placed = false;
    if (!read_hello(fd, peer, NW_HELLO_WAIT_S, &h)) return ES_OK;
    enum es_status st = check_hello(self, &h, peer, err);
    if (st == ES_OK && fds[h.shape.node_rank] >= 0) {
        char first[80];
        peer_of(fds[h.shape.node_rank], first, sizeof(first));
        st = es_fail(err, ES_EINVAL,
                     "node %d joined twice, first from %s, then from %s (is --node-rank unique "
                     "per node?)",
                     h.shape.node_rank, first, peer);
    }
    if (st != ES_OK) {
        send_verdict(fd, false, err->msg);
        nio_close(fd);
        return st;
    }
    fds[h.shape.node_rank] = fd;
    LOG_NODE("node 0: node %d joined from %s", h.shape.node_rank, peer);
    *placed = true;
    return ES_OK;
}

static enum es_status missing_nodes(const struct node_shape *self, const int *fds, int port,
                                    double timeout_s, struct es_err *err)
{
    char missing[160] = "";
    size_t len = 0;
    for (int r = 1; r < self->nnodes && len + 16 < sizeof(missing); r++)
        if (fds[r] < 0)
            len +=
                (size_t)snprintf(missing + len, sizeof(missing) - len, "%s%d", len ? ", " : "", r);
    return es_fail(err, ES_EIO,
                   "timed out after %.0f s waiting for node(s) %s of %d to connect to control "
                   "port %d (is every node started, with the same --master-addr and "
                   "--master-port?)",
                   timeout_s, missing, self->nnodes, port);
}

enum es_status node_control_accept(const struct node_shape *self, const char *addr, int port,
                                   double timeout_s, int *fds_out, int *listen_fd_out,
                                   struct es_err *err)
{
    struct es_err local = {{0}};
    if (!err) err = &local; /* the reason is forwarded to the nodes */
    for (int r = 0; r < self->nnodes; r++)
        fds_out[r] = -1;
    if (listen_fd_out) *listen_fd_out = -1;
    if (self->nnodes <= 1) return ES_OK;
    int lfd = -1, joined = 0;
    enum es_status st = nio_listen(addr, port, &lfd, err);
    if (st != ES_OK) return es_wrap(err, st, "node 0 control channel: ");
    double deadline = nio_now() + timeout_s;
    LOG_NODE("node 0: waiting for %d node(s) on control port %d", self->nnodes - 1, port);
    while (st == ES_OK && joined < self->nnodes - 1) {
        int fd = -1, timed_out = 0;
        char peer[80];
        st = nio_accept(lfd, deadline, &fd, peer, sizeof(peer), &timed_out, err);
        if (st != ES_OK && timed_out) st = missing_nodes(self, fds_out, port, timeout_s, err);
        bool placed = false;
        if (st == ES_OK) st = admit(self, fd, peer, fds_out, &placed, err);
        joined += placed;
    }
    if (st == ES_OK && listen_fd_out)
        *listen_fd_out = lfd; /* kept: later nodes are told why they are too late */
    else
        nio_close(lfd);
    for (int r = 1; r < self->nnodes; r++) {
        if (fds_out[r] < 0) continue;
        send_verdict(fds_out[r], st == ES_OK, st == ES_OK ? NULL : err->msg);
        if (st != ES_OK) {
            nio_close(fds_out[r]);
            fds_out[r] = -1;
        }
    }
    if (st != ES_OK) return es_wrap(err, st, "node 0 control channel: ");
    LOG_NODE("node 0: all %d nodes joined", self->nnodes);
    return ES_OK;
}

enum es_status node_control_connect(const struct node_shape *self, const char *addr, int port,
                                    double timeout_s, int *fd_out, struct es_err *err)
{
    int fd = -1, rank = self->node_rank;
    char who[96];
    snprintf(who, sizeof(who), "node 0 (%.60s:%d)", addr, port);
    enum es_status st = nio_connect(addr, port, nio_now() + timeout_s, &fd, err);
    if (st != ES_OK)
        return es_wrap(err, st, "node %d: node 0 is not reachable within %.0f s: ", rank,
                       timeout_s);
    unsigned char hello[NW_HELLO_BYTES], rep[NW_REPLY_BYTES];
    encode_hello(self, hello);
    st = nio_write_all(fd, hello, sizeof(hello), who, err);
    /* Node 0 answers once every node is there, or gives up within its own
     * timeout, which started before this connection. */
    if (st == ES_OK)
        st = nio_read_all(fd, rep, sizeof(rep), nio_now() + timeout_s + 10.0, who, err);
    if (st == ES_OK && sw_get_u32(rep) != NW_MAGIC)
        st = es_fail(err, ES_EIO, "%s is not an evalserver node 0 (wrong magic)", who);
    if (st == ES_OK && sw_get_u32(rep + 8) != 0) {
        rep[NW_REPLY_BYTES - 1] = '\0';
        const char *why = (const char *)rep + 12;
        st = es_fail(err, ES_EINVAL, "node 0 refused the group: %s",
                     why[0] ? why : "no reason given");
    }
    if (st != ES_OK) {
        nio_close(fd);
        return es_wrap(err, st, "node %d control channel: ", rank);
    }
    *fd_out = fd;
    return ES_OK;
}

/* ---------------------------------------------------------------- node 0 */

static long long now_us(void)
{
    return (long long)(nio_now() * 1e6);
}

/* What travels from one node towards node 0, and who reads it: the
 * watchdog between commands, or a pipeline call (node_remote_call) that
 * waits for the node's answer. A message may be read partly by one and
 * finished by the other: the bytes stay here. */
struct node_inbox {
    pthread_mutex_t mu;  /* one reader: the watchdog (trylock) or a call */
    atomic_bool calling; /* a call waits for an answer: the watchdog keeps off */
    unsigned char *buf;  /* the message being read, prefix included; grow-only */
    size_t len, cap;
    atomic_llong asked_at_us; /* when the unanswered heartbeat went out (nio_now); 0: none */
};

struct watchdog {
    pthread_t thread;
    bool running;
    int wake[2]; /* pipe: close() writes a byte to stop the thread */
    double timeout_s;
    node_lost_fn on_lost;
    void *ctx;
    struct sw_buf heartbeat; /* the encoded HEARTBEAT */
    struct sw_cmd cmd;       /* decodes the answers */
    struct pollfd *polled;   /* [nnodes]: [0] the wake pipe, [r] node r */
};

/* Node 0's control port once the group is complete: a thread answers
 * every later connection and closes it, never admitting one. */
struct late_gate {
    pthread_t thread;
    bool running;
    atomic_bool stop;       /* close(): the thread ends within NW_GATE_POLL_S, or one hello wait */
    int listen_fd;          /* the control port; -1: none was kept */
    struct node_shape self; /* node 0's, to say why a node does not fit */
};

struct node_remote {
    struct tp_remote remote;
    int nnodes, block_size;
    int *fds;                 /* [nnodes]; fds[0] = -1 */
    struct node_inbox *inbox; /* [nnodes]; [0] unused */
    struct sw_buf msg;        /* the command being sent (the engine's) */
    pthread_mutex_t send_mu;  /* one writer on the sockets: steps and heartbeats */
    bool broken;              /* under send_mu: a send failed, the group is torn down */
    double last_send;         /* under send_mu: when the last message went out (nio_now) */
    atomic_bool lost;         /* the watchdog found a node gone */
    /* A command went out and this process's part of it has not ended: the
     * workers answer heartbeats only between commands, and a dead peer
     * breaks the command's collectives anyway, so no answer is due. */
    atomic_bool in_step;
    atomic_llong step_end_us; /* nio_now() in microseconds when the last one ended */
    atomic_int calls;         /* pipeline calls waiting for an answer: as in_step */
    double answer_timeout_s;  /* a call's answer is due within this (0: no limit) */
    char lost_why[256];       /* why: written once, before lost turns true */
    struct watchdog wd;
    struct late_gate gate;
};

/* Writes msg to nodes [from, to) under the send lock. Once the watchdog
 * has found a node gone, fails with its reason (also when that cut a
 * write short); a failure breaks the remote for good. */
static enum es_status send_to(struct node_remote *nr, int from, int to, const struct sw_buf *msg,
                              struct es_err *err)
{
    enum es_status st = ES_OK;
    pthread_mutex_lock(&nr->send_mu);
    if (nr->broken) st = es_fail(err, ES_EIO, "an earlier exchange with the other nodes failed");
    for (int r = from; st == ES_OK && r < to && !atomic_load(&nr->lost); r++) {
        char who[32];
        snprintf(who, sizeof(who), "node %d", r);
        st = nio_write_all(nr->fds[r], msg->data, msg->len, who, err);
    }
    if (atomic_load(&nr->lost)) {
        es_err_clear(err);
        st = es_fail(err, ES_EIO, "%s", nr->lost_why);
    }
    if (st != ES_OK) nr->broken = true;
    nr->last_send = nio_now();
    pthread_mutex_unlock(&nr->send_mu);
    return st;
}

/* The encoded nr->msg to every other node, as a step's command. */
static enum es_status send_all(struct node_remote *nr, struct es_err *err)
{
    atomic_store(&nr->in_step, true);
    enum es_status st = send_to(nr, 1, nr->nnodes, &nr->msg, err);
    return st == ES_OK ? ES_OK : es_wrap(err, st, "node 0: ");
}

static enum es_status remote_forward(struct tp_remote *r, const struct batch *b, struct es_err *err)
{
    struct node_remote *nr = r->impl;
    enum es_status st = sw_encode_forward(&nr->msg, b, nr->block_size, err);
    return st == ES_OK ? send_all(nr, err) : st;
}

static enum es_status remote_copy_blocks(struct tp_remote *r, const int32_t *src,
                                         const int32_t *dst, int n, struct es_err *err)
{
    struct node_remote *nr = r->impl;
    enum es_status st = sw_encode_copy_blocks(&nr->msg, src, dst, n, err);
    return st == ES_OK ? send_all(nr, err) : st;
}

static void watchdog_stop(struct node_remote *nr);
static enum es_status gate_start(struct node_remote *nr, const struct node_shape *self,
                                 int listen_fd, struct es_err *err);
static void gate_stop(struct late_gate *g);

static void remote_step_done(struct tp_remote *r)
{
    struct node_remote *nr = r->impl;
    atomic_store(&nr->step_end_us, now_us());
    atomic_store(&nr->in_step, false);
}

static void free_remote(struct node_remote *nr)
{
    gate_stop(&nr->gate); /* before the sockets close: it reads where they came from */
    for (int r = 1; nr->fds && r < nr->nnodes; r++)
        nio_close(nr->fds[r]);
    for (int r = 1; nr->inbox && r < nr->nnodes; r++) {
        pthread_mutex_destroy(&nr->inbox[r].mu);
        free(nr->inbox[r].buf);
    }
    free(nr->inbox);
    free(nr->fds);
    sw_buf_free(&nr->msg);
    pthread_mutex_destroy(&nr->send_mu);
    free(nr);
}

static void remote_close(struct tp_remote *r)
{
    if (!r) return;
    struct node_remote *nr = r->impl;
    watchdog_stop(nr); /* a node leaving after STOP is no loss */
    struct es_err ignored = {{0}};
    if (!nr->broken && !atomic_load(&nr->lost) && sw_encode_stop(&nr->msg, &ignored) == ES_OK)
        send_all(nr, &ignored);
    free_remote(nr);
}

enum es_status node_remote_create(const struct node_shape *self, const int *fds, int listen_fd,
                                  struct tp_remote **out, struct es_err *err)
{
    int nnodes = self->nnodes;
    struct node_remote *nr = calloc(1, sizeof(*nr));
    int *own = malloc(sizeof(*own) * (size_t)(nnodes > 0 ? nnodes : 1));
    struct node_inbox *inbox = calloc((size_t)(nnodes > 0 ? nnodes : 1), sizeof(*inbox));
    if (!nr || !own || !inbox || nnodes < 1) {
        for (int r = 1; r < nnodes; r++)
            nio_close(fds[r]);
        nio_close(listen_fd);
        free(nr);
        free(own);
        free(inbox);
        return nnodes < 1 ? es_fail(err, ES_EINVAL, "node_remote: %d nodes", nnodes)
                          : es_fail(err, ES_ENOMEM, "node_remote: out of memory");
    }
    own[0] = -1;
    for (int r = 1; r < nnodes; r++)
        own[r] = fds[r];
    *nr = (struct node_remote){.nnodes = nnodes,
                               .block_size = self->block_size,
                               .fds = own,
                               .inbox = inbox,
                               .gate = {.listen_fd = -1}};
    for (int r = 1; r < nnodes; r++) {
        pthread_mutex_init(&inbox[r].mu, NULL);
        atomic_init(&inbox[r].calling, false);
        atomic_init(&inbox[r].asked_at_us, 0);
    }
    pthread_mutex_init(&nr->send_mu, NULL);
    atomic_init(&nr->lost, false);
    atomic_init(&nr->in_step, false);
    atomic_init(&nr->step_end_us, 0);
    atomic_init(&nr->calls, 0);
    nr->last_send = nio_now();
    nr->remote = (struct tp_remote){.send_forward = remote_forward,
                                    .send_copy_blocks = remote_copy_blocks,
                                    .step_done = remote_step_done,
                                    .close = remote_close,
                                    .impl = nr};
    enum es_status st = gate_start(nr, self, listen_fd, err);
    if (st != ES_OK) {
        free_remote(nr);
        return st;
    }
    *out = &nr->remote;
    return ES_OK;
}

/* ---------------------------------------------------------------- node 0's late nodes */

/* Why node 0 turns away the node whose hello h came from peer after the
 * group is complete: what does not fit, as at startup, or else that its
 * rank is taken, and by whom. */
static void late_refusal(const struct node_remote *nr, const struct hello *h, const char *peer,
                         struct es_err *why)
{
    if (check_hello(&nr->gate.self, h, peer, why) != ES_OK) return;
    char first[80];
    peer_of(nr->fds[h->shape.node_rank], first, sizeof(first));
    es_fail(why, ES_EINVAL,
            "the group is already complete: node %d joined from %s at startup (is --node-rank "
            "unique per node?)",
            h->shape.node_rank, first);
}

/* Answers one connection to the control port after the group is complete
 * and closes it: an evalserver node gets a refusal saying why, anything
 * else is dropped. Touches no joined node's socket but to name its peer. */
static void turn_away(const struct node_remote *nr, int fd, const char *peer)
{
    struct hello h;
    if (!read_hello(fd, peer, NW_LATE_HELLO_WAIT_S, &h)) return;
    struct es_err why = {{0}};
    late_refusal(nr, &h, peer, &why);
    LOG_W("node", "node 0: turning away a node from %s: %s", peer, why.msg);
    send_verdict(fd, false, why.msg);
    nio_close(fd);
}

static void *gate_main(void *arg)
{
    struct node_remote *nr = arg;
    struct late_gate *g = &nr->gate;
    bool failing = false; /* accept() failed last time round */
    while (!atomic_load(&g->stop)) {
        int fd = -1, timed_out = 0;
        char peer[80];
        struct es_err err = {{0}};
        enum es_status st = nio_accept(g->listen_fd, nio_now() + NW_GATE_POLL_S, &fd, peer,
                                       sizeof(peer), &timed_out, &err);
        if (st == ES_OK) {
            turn_away(nr, fd, peer);
        } else if (!timed_out) { /* out of descriptors?: said once, tried again shortly */
            if (!failing)
                LOG_W("node", "node 0: cannot take late connections for now: %s", err.msg);
            usleep((useconds_t)(NW_GATE_POLL_S * 1e6));
        }
        failing = st != ES_OK && !timed_out;
    }
    return NULL;
}

static enum es_status gate_start(struct node_remote *nr, const struct node_shape *self,
                                 int listen_fd, struct es_err *err)
{
    struct late_gate *g = &nr->gate;
    g->listen_fd = listen_fd;
    g->self = *self;
    atomic_init(&g->stop, false);
    if (listen_fd < 0) return ES_OK;
    if (pthread_create(&g->thread, NULL, gate_main, nr) != 0)
        return es_fail(err, ES_ERR, "node 0: cannot start the thread that answers late nodes");
    g->running = true;
    return ES_OK;
}

static void gate_stop(struct late_gate *g)
{
    if (g->running) {
        atomic_store(&g->stop, true);
        pthread_join(g->thread, NULL);
        g->running = false;
    }
    nio_close(g->listen_fd);
    g->listen_fd = -1;
}

/* ---------------------------------------------------------------- node 0's watchdog */

/* Milliseconds from now until `when`, for poll(). */
static int poll_ms(double when)
{
    double left = when - nio_now();
    return left <= 0 ? 0 : left > 3600 ? 3600 * 1000 : (int)(left * 1000.0) + 1;
}

/* One HEARTBEAT to node r, without waiting for room in its socket: false
 * (and why, unless the buffer was merely full) when it did not go out. */
static bool send_heartbeat(struct node_remote *nr, int r, char *why, size_t why_cap)
{
    const struct sw_buf *hb = &nr->wd.heartbeat;
    ssize_t w;
    do
        w = send(nr->fds[r], hb->data, hb->len, MSG_NOSIGNAL | MSG_DONTWAIT);
    while (w < 0 && errno == EINTR);
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return false; /* the node is not reading; its last heartbeat's deadline runs */
    if (w < 0) {
        snprintf(why, why_cap, "node %d's control connection failed: %s", r, strerror(errno));
        return false;
    }
    struct es_err err = {{0}}; /* a part went out: the rest must follow, in order */
    char who[32];
    snprintf(who, sizeof(who), "node %d", r);
    if ((size_t)w < hb->len &&
        nio_write_all(nr->fds[r], hb->data + w, hb->len - (size_t)w, who, &err) != ES_OK) {
        snprintf(why, why_cap, "node %d's control connection failed: %.120s", r, err.msg);
        return false;
    }
    return true;
}

/* When nothing went out for an interval, a heartbeat to every node that
 * owes no answer. Returns when to look again. */
static double beat(struct node_remote *nr, char *why, size_t why_cap)
{
    double now = nio_now();
    if (pthread_mutex_trylock(&nr->send_mu) != 0)
        return now + NODE_HEARTBEAT_INTERVAL_S; /* a step is going out */
    double due = nr->last_send + NODE_HEARTBEAT_INTERVAL_S;
    if (now >= due && !nr->broken) {
        for (int r = 1; r < nr->nnodes && !why[0]; r++)
            if (atomic_load(&nr->inbox[r].asked_at_us) == 0 && send_heartbeat(nr, r, why, why_cap))
                atomic_store(&nr->inbox[r].asked_at_us, now_us());
        nr->last_send = now;
        due = now + NODE_HEARTBEAT_INTERVAL_S;
    }
    pthread_mutex_unlock(&nr->send_mu);
    return due;
}

/* Reads node r's next message into its inbox: with a deadline (0: none)
 * until it is whole; without (deadline < 0), what has arrived. *whole
 * says whether it is; the end of the connection is an error naming r. */
static enum es_status inbox_read(struct node_remote *nr, int r, double deadline, bool *whole,
                                 struct es_err *err)
{
    struct node_inbox *in = &nr->inbox[r];
    char who[32];
    snprintf(who, sizeof(who), "node %d", r);
    *whole = false;
    for (;;) {
        size_t total = SW_PREFIX_BYTES, body;
        if (in->len >= SW_PREFIX_BYTES) {
            enum es_status st = sw_frame_length(in->buf, &body, err);
            if (st != ES_OK) return es_wrap(err, st, "%s: ", who);
            total += body;
        }
        if (in->len == total) {
            *whole = true;
            return ES_OK;
        }
        if (in->cap < total) {
            unsigned char *p = realloc(in->buf, total);
            if (!p)
                return es_fail(err, ES_ENOMEM, "out of memory for %s's %zu-byte answer", who,
                               total);
            in->buf = p;
            in->cap = total;
        }
        size_t need = total - in->len;
        if (deadline >= 0) {
            enum es_status st =
                nio_read_all(nr->fds[r], in->buf + in->len, need, deadline, who, err);
            if (st != ES_OK) return st;
            in->len += need;
            continue;
        }
        ssize_t got = recv(nr->fds[r], in->buf + in->len, need, MSG_DONTWAIT);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return ES_OK;
        if (got == 0)
            return es_fail(err, ES_EIO, "node %d closed its control connection (process gone?)", r);
        if (got < 0)
            return es_fail(err, ES_EIO, "node %d's control connection failed: %s", r,
                           strerror(errno));
        in->len += (size_t)got;
    }
}

/* Decodes node r's whole message and empties its inbox. */
static enum es_status inbox_take(struct node_remote *nr, int r, struct sw_cmd *cmd,
                                 struct es_err *err)
{
    struct node_inbox *in = &nr->inbox[r];
    enum es_status st = sw_decode(in->buf, in->len, cmd, err);
    in->len = 0;
    if (st == ES_OK && cmd->kind == SW_HEARTBEAT) atomic_store(&in->asked_at_us, 0);
    return st;
}

/* Takes what node r sent between commands: heartbeat answers, or the end
 * of its connection (then why says so). Leaves the node to a call that
 * is reading it. */
static void read_answers(struct node_remote *nr, int r, char *why, size_t why_cap)
{
    struct node_inbox *in = &nr->inbox[r];
    if (pthread_mutex_trylock(&in->mu) != 0) return;
    while (!why[0]) {
        struct es_err err = {{0}};
        bool whole = false;
        if (inbox_read(nr, r, -1.0, &whole, &err) != ES_OK) {
            snprintf(why, why_cap, "%.180s", err.msg);
            break;
        }
        if (!whole) break;
        if (inbox_take(nr, r, &nr->wd.cmd, &err) != ES_OK || nr->wd.cmd.kind != SW_HEARTBEAT)
            snprintf(why, why_cap, "node %d answered a heartbeat with something else (%.120s)", r,
                     err.msg[0] ? err.msg : "not a heartbeat");
    }
    pthread_mutex_unlock(&in->mu);
}

/* The first unanswered heartbeat past its deadline, in why; otherwise the
 * earliest deadline, or `until` when none is sooner. No answer is due
 * while a command runs (a step may take longer than the timeout), and a
 * deadline counts from the end of the last one at the earliest. */
static double check_deadlines(struct node_remote *nr, double until, char *why, size_t why_cap)
{
    double now = nio_now();
    if (atomic_load(&nr->in_step) || atomic_load(&nr->calls) > 0) return until;
    double step_end = (double)atomic_load(&nr->step_end_us) / 1e6;
    for (int r = 1; r < nr->nnodes; r++) {
        long long asked_us = atomic_load(&nr->inbox[r].asked_at_us);
        if (asked_us == 0) continue;
        double asked = (double)asked_us / 1e6;
        if (asked < step_end) asked = step_end;
        double deadline = asked + nr->wd.timeout_s;
        if (now >= deadline) {
            snprintf(why, why_cap, "node %d did not answer a heartbeat within %.1f s (hung?)", r,
                     nr->wd.timeout_s);
            return now;
        }
        if (deadline < until) until = deadline;
    }
    return until;
}

/* Marks the group lost, cuts every control connection (the other nodes
 * see EOF; a send in progress fails) and tells the owner. */
static void declare_lost(struct node_remote *nr, const char *why)
{
    snprintf(nr->lost_why, sizeof(nr->lost_why), "%s", why);
    atomic_store(&nr->lost, true);
    LOG_E("node", "node 0: %s: failing the multi-node group", why);
    for (int r = 1; r < nr->nnodes; r++)
        shutdown(nr->fds[r], SHUT_RDWR); /* closed by close(), which owns them */
    nr->wd.on_lost(nr->wd.ctx, why);
}

static void *watchdog_main(void *arg)
{
    struct node_remote *nr = arg;
    struct watchdog *wd = &nr->wd;
    char why[200] = "";
    double next_beat = nio_now() + NODE_HEARTBEAT_INTERVAL_S;
    for (;;) {
        if (nio_now() >= next_beat) next_beat = beat(nr, why, sizeof(why));
        double wake_at = why[0] ? 0 : check_deadlines(nr, next_beat, why, sizeof(why));
        if (why[0]) break;
        for (int r = 1; r < nr->nnodes; r++) /* a node a call is reading is the call's */
            wd->polled[r].fd = atomic_load(&nr->inbox[r].calling) ? -1 : nr->fds[r];
        int n = poll(wd->polled, (nfds_t)nr->nnodes, poll_ms(wake_at));
        if (n < 0 && errno != EINTR) {
            LOG_E("node", "node 0: the watchdog stops: poll: %s", strerror(errno));
            return NULL;
        }
        if (n > 0 && wd->polled[0].revents) return NULL; /* close() */
        for (int r = 1; n > 0 && r < nr->nnodes && !why[0]; r++)
            if (wd->polled[r].revents) read_answers(nr, r, why, sizeof(why));
        if (why[0]) break;
    }
    declare_lost(nr, why);
    return NULL;
}

static void watchdog_free(struct watchdog *wd)
{
    if (wd->wake[0] >= 0) close(wd->wake[0]);
    if (wd->wake[1] >= 0) close(wd->wake[1]);
    sw_buf_free(&wd->heartbeat);
    sw_cmd_free(&wd->cmd);
    free(wd->polled);
    *wd = (struct watchdog){.wake = {-1, -1}};
}

static void watchdog_stop(struct node_remote *nr)
{
    if (!nr->wd.running) return;
    char stop = 1;
    while (write(nr->wd.wake[1], &stop, 1) < 0 && errno == EINTR) {
    }
    pthread_join(nr->wd.thread, NULL);
    watchdog_free(&nr->wd);
}

enum es_status node_remote_watch(struct tp_remote *r, double timeout_s, node_lost_fn on_lost,
                                 void *ctx, struct es_err *err)
{
    struct node_remote *nr = r->impl;
    struct watchdog *wd = &nr->wd;
    if (wd->running)
        return es_fail(err, ES_EINVAL, "node 0: the control channel is watched already");
    *wd =
        (struct watchdog){.wake = {-1, -1}, .timeout_s = timeout_s, .on_lost = on_lost, .ctx = ctx};
    wd->polled = calloc((size_t)nr->nnodes, sizeof(*wd->polled));
    enum es_status st = ES_OK;
    if (!wd->polled) st = es_fail(err, ES_ENOMEM, "node 0 watchdog: out of memory");
    if (st == ES_OK) st = sw_encode_heartbeat(&wd->heartbeat, err);
    if (st == ES_OK && pipe2(wd->wake, O_CLOEXEC) != 0)
        st = es_fail(err, ES_EIO, "node 0 watchdog: pipe: %s", strerror(errno));
    if (st != ES_OK) goto err;
    wd->polled[0] = (struct pollfd){.fd = wd->wake[0], .events = POLLIN};
    for (int n = 1; n < nr->nnodes; n++)
        wd->polled[n] = (struct pollfd){.fd = nr->fds[n], .events = POLLIN | POLLRDHUP};
    if (pthread_create(&wd->thread, NULL, watchdog_main, nr) != 0) {
        st = es_fail(err, ES_ERR, "node 0 watchdog: cannot start its thread");
        goto err;
    }
    wd->running = true;
    nr->answer_timeout_s = timeout_s;
    LOG_NODE("node 0: watching %d node(s): a heartbeat after %.0f s of quiet, answered within "
             "%.1f s",
             nr->nnodes - 1, NODE_HEARTBEAT_INTERVAL_S, timeout_s);
    return ES_OK;
err:
    watchdog_free(wd);
    return st;
}

/* ---------------------------------------------------------------- node 0's pipeline calls */

enum es_status node_remote_call(struct tp_remote *rem, int node, const struct sw_buf *msg,
                                struct sw_cmd *answer, struct es_err *err)
{
    struct node_remote *nr = rem->impl;
    if (node < 1 || node >= nr->nnodes)
        return es_fail(err, ES_EINVAL, "node 0: no node %d of %d", node, nr->nnodes);
    struct node_inbox *in = &nr->inbox[node];
    pthread_mutex_lock(&in->mu);
    atomic_store(&in->calling, true);
    atomic_fetch_add(&nr->calls, 1);
    enum es_status st = msg ? send_to(nr, node, node + 1, msg, err) : ES_OK;
    double deadline = msg && nr->answer_timeout_s > 0 ? nio_now() + nr->answer_timeout_s : 0;
    while (st == ES_OK) { /* heartbeat answers sent before this answer come first */
        bool whole = false;
        st = inbox_read(nr, node, deadline, &whole, err);
        if (st == ES_OK) st = inbox_take(nr, node, answer, err);
        if (st != ES_OK || answer->kind != SW_HEARTBEAT) break;
    }
    if (st != ES_OK && atomic_load(&nr->lost)) {
        es_err_clear(err);
        st = es_fail(err, ES_EIO, "%s", nr->lost_why);
    }
    if (st != ES_OK) {
        pthread_mutex_lock(&nr->send_mu);
        nr->broken = true;
        pthread_mutex_unlock(&nr->send_mu);
    }
    atomic_store(&nr->step_end_us, now_us());
    atomic_fetch_sub(&nr->calls, 1);
    atomic_store(&in->calling, false);
    pthread_mutex_unlock(&in->mu);
    if (st != ES_OK && deadline > 0)
        return es_wrap(err, st,
                       "node 0 (answers due within --node-timeout %.0f s): ", nr->answer_timeout_s);
    return st == ES_OK ? ES_OK : es_wrap(err, st, "node 0: ");
}

/* ---------------------------------------------------------------- worker */

struct worker_state {
    unsigned char *msg; /* the message being read, prefix included */
    size_t msg_cap;
    struct sw_cmd cmd;
    struct row_result *rows; /* scratch results, ignored: node 0 samples */
    size_t rows_cap;
    struct sw_buf heartbeat; /* the answer to node 0's heartbeats */
    long steps;              /* forwards done */
    /* NODE_PP_STAGES: every command is answered */
    enum node_role role;
    float *hidden_out; /* the stream after this node's last layer */
    size_t hidden_cap;
    struct sw_buf answer;
    struct backend *be;      /* the local group the steps run on */
    struct fault_plan fault; /* test-only (fault.h): a forward that fails or hangs */
    struct worker_state *next_abandoned;
};

/* Workers whose step was given up on, kept to the end: their step's
 * thread may still read them. */
static struct worker_state *abandoned_workers;
static pthread_mutex_t abandoned_mu = PTHREAD_MUTEX_INITIALIZER;

/* Waits for node 0's next message: it sends one (a step or a heartbeat)
 * at least every NODE_HEARTBEAT_INTERVAL_S while it lives. */
static enum es_status await_node0(int fd, double timeout_s, struct es_err *err)
{
    if (timeout_s <= 0) return ES_OK;
    double silence = NODE_HEARTBEAT_INTERVAL_S + timeout_s;
    int timed_out = 0;
    enum es_status st = nio_wait_readable(fd, nio_now() + silence, &timed_out, err);
    if (st == ES_OK && timed_out)
        st = es_fail(err, ES_EIO,
                     "node 0 sent nothing for %.1f s, not even a heartbeat (hung, or the "
                     "network between the nodes is down)",
                     silence);
    return st;
}

/* Reads one whole message into w->msg and decodes it into w->cmd. */
static enum es_status read_command(struct worker_state *w, int fd, double timeout_s,
                                   struct es_err *err)
{
    unsigned char prefix[SW_PREFIX_BYTES];
    size_t len;
    enum es_status st = await_node0(fd, timeout_s, err);
    if (st == ES_OK) st = nio_read_all(fd, prefix, sizeof(prefix), 0, "node 0", err);
    if (st == ES_OK) st = sw_frame_length(prefix, &len, err);
    if (st != ES_OK) return st;
    size_t total = SW_PREFIX_BYTES + len;
    if (w->msg_cap < total) {
        unsigned char *p = realloc(w->msg, total);
        if (!p) return es_fail(err, ES_ENOMEM, "out of memory for a %zu-byte command", total);
        w->msg = p;
        w->msg_cap = total;
    }
    memcpy(w->msg, prefix, sizeof(prefix));
    st = nio_read_all(fd, w->msg + SW_PREFIX_BYTES, len, 0, "node 0", err);
    return st == ES_OK ? sw_decode(w->msg, total, &w->cmd, err) : st;
}

/* The stream buffer of a pipeline FORWARD, into w->cmd.batch. */
static enum es_status prepare_stream_out(struct worker_state *w, const struct backend *be,
                                         struct es_err *err)
{
    if (!w->cmd.want_hidden) return ES_OK;
    if (w->cmd.hidden != be->cfg->hidden_size)
        return es_fail(err, ES_EINVAL, "node 0 sent a stream %d wide, the model's is %d",
                       w->cmd.hidden, be->cfg->hidden_size);
    size_t need = (size_t)w->cmd.batch.n_tokens * (size_t)w->cmd.hidden;
    need = need > 0 ? need : 1;
    if (w->hidden_cap < need) {
        float *p = realloc(w->hidden_out, need * sizeof(*p));
        if (!p) return es_fail(err, ES_ENOMEM, "out of memory for a %zu-float stream", need);
        w->hidden_out = p;
        w->hidden_cap = need;
    }
    w->cmd.batch.hidden_out = w->hidden_out;
    return ES_OK;
}

static enum es_status run_forward(struct worker_state *w, struct backend *be, struct es_err *err)
{
    size_t need = w->cmd.batch.n_rows > 0 ? (size_t)w->cmd.batch.n_rows : 1;
    if (w->rows_cap < need) {
        struct row_result *p = realloc(w->rows, need * sizeof(*p));
        if (!p) return es_fail(err, ES_ENOMEM, "out of memory for %zu result rows", need);
        w->rows = p;
        w->rows_cap = need;
    }
    if (w->cmd.batch.hidden_in && w->cmd.hidden != be->cfg->hidden_size)
        return es_fail(err, ES_EINVAL, "node 0 sent a stream %d wide, the model's is %d",
                       w->cmd.hidden, be->cfg->hidden_size);
    enum es_status st = prepare_stream_out(w, be, err);
    if (st != ES_OK) return st;
    struct batch_result result = {.rows = w->rows};
    st = fault_forward(&w->fault, (uint64_t)w->steps + 1, be, &w->cmd.batch, &result, err);
    w->steps += st == ES_OK;
    if (st != ES_OK || w->role != NODE_PP_STAGES) return st;
    if (w->cmd.want_hidden)
        st = sw_encode_hidden(&w->answer, w->hidden_out, w->cmd.batch.n_tokens, w->cmd.hidden, err);
    else
        st = sw_encode_done(&w->answer, err);
    return st;
}

/* A pipeline node's answer to a command that ran (w->answer, or DONE when
 * the command left none) or failed (ERROR with why). */
static enum es_status send_answer(struct worker_state *w, int fd, enum es_status ran,
                                  const struct es_err *why, struct es_err *err)
{
    enum es_status st = ran == ES_OK ? ES_OK : sw_encode_error(&w->answer, ran, why->msg, err);
    if (st == ES_OK) st = nio_write_all(fd, w->answer.data, w->answer.len, "node 0", err);
    return st;
}

/* Runs a step command (FORWARD, COPY_BLOCKS), leaving a pipeline node's
 * answer in w->answer. */
static enum es_status run_step(struct worker_state *w, struct backend *be, struct es_err *err)
{
    switch (w->cmd.kind) {
    case SW_FORWARD:
        return run_forward(w, be, err);
    case SW_COPY_BLOCKS: {
        enum es_status st =
            be->ops->copy_blocks(be, w->cmd.copy_src, w->cmd.copy_dst, w->cmd.n_copies, err);
        return st == ES_OK && w->role == NODE_PP_STAGES ? sw_encode_done(&w->answer, err) : st;
    }
    default:
        return es_fail(err, ES_EFORMAT, "node worker: unexpected command kind %d", w->cmd.kind);
    }
}

static enum es_status guarded_step(void *arg, struct es_err *err)
{
    struct worker_state *w = arg;
    return run_step(w, w->be, err);
}

/* Runs the command just read; STOP is the caller's. A step runs under
 * node_step_guard.h, watched for node 0 going away and for the step
 * timeout (*abandoned: it never came back). A pipeline node answers every
 * step command, a failed one with ERROR (and then stops). */
static enum es_status run_command(struct worker_state *w, int fd, double step_timeout_s,
                                  bool *abandoned, struct es_err *err)
{
    if (w->cmd.kind == SW_HEARTBEAT)
        return nio_write_all(fd, w->heartbeat.data, w->heartbeat.len, "node 0", err);
    enum es_status st = nsg_run(fd, step_timeout_s, guarded_step, w, abandoned, err);
    if (w->role != NODE_PP_STAGES || *abandoned) return st;
    struct es_err send_err = {{0}};
    if (send_answer(w, fd, st, err, &send_err) != ES_OK && st == ES_OK) {
        *err = send_err;
        return ES_EIO;
    }
    return st;
}

enum es_status node_worker_report_load(int control_fd, const struct backend *group,
                                       enum es_status load_st, const struct es_err *load_err,
                                       struct es_err *err)
{
    struct sw_buf msg = {0};
    enum es_status st =
        load_st == ES_OK
            ? sw_encode_ready(&msg, group->num_kv_blocks, group->block_size, err)
            : sw_encode_error(&msg, load_st, load_err->msg[0] ? load_err->msg : "load failed", err);
    if (st == ES_OK) st = nio_write_all(control_fd, msg.data, msg.len, "node 0", err);
    sw_buf_free(&msg);
    return st;
}

enum es_status node_worker_run(struct backend *local_group, int control_fd, double timeout_s,
                               double step_timeout_s, enum node_role role, bool *abandoned,
                               struct es_err *err)
{
    *abandoned = false;
    struct worker_state *w = calloc(1, sizeof(*w));
    if (!w) return es_fail(err, ES_ENOMEM, "node worker: out of memory");
    w->role = role;
    w->be = local_group;
    enum es_status st = fault_plan_from_env(0, &w->fault, err);
    if (st == ES_OK) st = sw_encode_heartbeat(&w->heartbeat, err);
    LOG_NODE("worker: replaying node 0's steps");
    while (st == ES_OK) {
        st = read_command(w, control_fd, timeout_s, err);
        if (st != ES_OK || w->cmd.kind == SW_STOP) break;
        st = run_command(w, control_fd, step_timeout_s, abandoned, err);
    }
    long steps = w->steps;
    if (st == ES_OK)
        LOG_NODE("worker: node 0 said stop after %ld steps", steps);
    else
        es_wrap(err, st, "node worker, after %ld steps: ", steps);
    if (*abandoned) { /* its step's thread still reads it */
        pthread_mutex_lock(&abandoned_mu);
        w->next_abandoned = abandoned_workers;
        abandoned_workers = w;
        pthread_mutex_unlock(&abandoned_mu);
        return st;
    }
    free(w->msg);
    free(w->rows);
    free(w->hidden_out);
    sw_cmd_free(&w->cmd);
    sw_buf_free(&w->heartbeat);
    sw_buf_free(&w->answer);
    free(w);
    return st;
}
