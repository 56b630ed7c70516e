/*
 * nccl_emu_net.cpp - communicators of the emulated NCCL whose ranks live
 * in several processes of one machine: ids handed out where
 * CUDA_EMU_NCCL_PROCESSES=1 (nccl.h says what is modeled).
 *
 * The process that creates such an id serves it: a hub, a listening Unix
 * socket in Linux's abstract namespace (nothing to clean up when the
 * process dies) and a thread accepting on it, whose cliques are
 * nccl_emu.cpp's. The id's bytes name the socket and a token, so any
 * process can join. Every rank, the hub's own process's too, connects to
 * the hub and is stood in for there by two threads: a reader, which takes
 * its requests off the socket and sees the connection end, and a worker,
 * which runs them on the clique with nccl_emu.cpp's code (on a stand-in
 * ncclComm, with copies of the rank's buffers: each process's emulated
 * device memory is its own) and answers with the receive buffers' bytes.
 * A connection that ends before its rank left means its process died: the
 * clique marks the rank gone, so its peers' waits fail at once.
 *
 * Owns the hub (started by this process's first such id, serving until
 * the process exits), its connections and their threads, and on a rank's
 * side that rank's connection (net_link). Never prints or exits.
 */
#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <random>
#include <set>
#include <system_error>
#include <thread>

/* after the standard headers: the emulation poisons some of their names */
#include "nccl_emu_core.h"

namespace nccl_emu
{

/* A rank's connection to its hub. */
struct net_link {
    int fd;
    long hub_pid;         /* the process that created the id, for messages */
    std::string lost_why; /* once the connection is lost: every later call fails with it */
};

namespace
{

const char NET_MAGIC[] = "cuda_emu nccl processes";

/* The 128 bytes of an id across processes. */
struct net_id_bytes {
    char magic[sizeof NET_MAGIC];
    char socket[72]; /* the hub's abstract socket name, NUL-terminated */
    int64_t hub_pid;
    uint64_t token; /* which of the hub's ids */
};
static_assert(sizeof(net_id_bytes) <= NCCL_UNIQUE_ID_BYTES, "an id has 128 bytes");

/* How much longer than its own timeout a rank waits for the hub's answer
 * (the hub times the rank's waits out itself) before it gives up on it. */
const double ANSWER_MARGIN_S = 10.0;
const uint64_t MAX_MESSAGE_BYTES = 1ull << 40;

/* ---- the wire: a header, then its bytes of body ---- */

enum request_kind : uint32_t { REQ_JOIN = 1, REQ_RUN, REQ_DEPOSIT, REQ_WAIT_SEND, REQ_LEAVE };
const uint32_t REPLY = 0;

struct wire_header {
    uint32_t kind; /* a request_kind, or REPLY */
    uint32_t reserved;
    uint64_t bytes;
};

struct wire_join {
    ncclUniqueId id;
    int32_t nranks, rank, device, reserved;
    uint64_t process; /* process_tag() */
    int64_t pid;
    double timeout_s;
};

/* REQ_RUN: a uint32_t count of these, each followed by its send bytes
 * (all-reduce, send); REQ_DEPOSIT: one send. */
struct wire_op {
    int32_t kind, type, red, peer;
    uint64_t count;
};

/* Then why_bytes of text for ncclGetLastError, then (REQ_RUN, success)
 * the receive bytes of each all-reduce and receive, in order. */
struct wire_reply {
    int32_t result;
    uint32_t why_bytes;
    uint64_t token; /* REQ_DEPOSIT: names the send for REQ_WAIT_SEND */
};

using bytes = std::vector<unsigned char>;
using clock_type = std::chrono::steady_clock;
enum io_outcome { IO_OK, IO_CLOSED, IO_TIMED_OUT };

void put_bytes(bytes *out, const void *p, size_t n)
{
    const unsigned char *b = (const unsigned char *)p;
    out->insert(out->end(), b, b + n);
}

template <class T> void put(bytes *out, const T &v)
{
    put_bytes(out, &v, sizeof v);
}

/* Reads a body front to back; a take past its end fails. */
struct body_reader {
    const unsigned char *at, *end;

    const unsigned char *take(uint64_t n)
    {
        if ((uint64_t)(end - at) < n) return nullptr;
        const unsigned char *p = at;
        at += n;
        return p;
    }
    template <class T> bool get(T *v)
    {
        const unsigned char *p = take(sizeof *v);
        if (p) memcpy(v, p, sizeof *v);
        return p != nullptr;
    }
};

body_reader reader_of(const bytes &b)
{
    return body_reader{b.data(), b.data() + b.size()};
}

bool send_all(int fd, const void *p, size_t n)
{
    const char *b = (const char *)p;
    while (n > 0) {
        ssize_t k = send(fd, b, n, MSG_NOSIGNAL); /* a dead peer must not kill us */
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return false;
        b += k;
        n -= (size_t)k;
    }
    return true;
}

/* Waits until fd has bytes to read or deadline passes (no deadline: at
 * once). */
io_outcome await_readable(int fd, const clock_type::time_point *deadline)
{
    while (deadline) {
        auto left =
            std::chrono::duration_cast<std::chrono::milliseconds>(*deadline - clock_type::now());
        if (left.count() <= 0) return IO_TIMED_OUT;
        struct pollfd pfd = {fd, POLLIN, 0};
        int k = poll(&pfd, 1, (int)std::min<long long>(left.count(), INT_MAX));
        if (k > 0) return IO_OK;
        if (k < 0 && errno != EINTR) return IO_CLOSED;
    }
    return IO_OK;
}

io_outcome recv_all(int fd, void *p, size_t n, const clock_type::time_point *deadline)
{
    char *b = (char *)p;
    while (n > 0) {
        io_outcome ready = await_readable(fd, deadline);
        if (ready != IO_OK) return ready;
        ssize_t k = recv(fd, b, n, 0);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return IO_CLOSED;
        b += k;
        n -= (size_t)k;
    }
    return IO_OK;
}

bool send_message(int fd, uint32_t kind, const bytes &body)
{
    wire_header h = {kind, 0, body.size()};
    return send_all(fd, &h, sizeof h) && send_all(fd, body.data(), body.size());
}

io_outcome recv_message(int fd, uint32_t *kind, bytes *body, const clock_type::time_point *deadline)
{
    wire_header h;
    io_outcome o = recv_all(fd, &h, sizeof h, deadline);
    if (o != IO_OK) return o;
    if (h.bytes > MAX_MESSAGE_BYTES) return IO_CLOSED;
    *kind = h.kind;
    body->resize(h.bytes);
    return recv_all(fd, body->data(), body->size(), deadline);
}

/* The address of an abstract-namespace socket: sun_path[0] == 0. */
socklen_t abstract_address(const char *name, struct sockaddr_un *addr)
{
    memset(addr, 0, sizeof *addr);
    addr->sun_family = AF_UNIX;
    size_t n = strnlen(name, sizeof addr->sun_path - 1);
    memcpy(addr->sun_path + 1, name, n);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
}

/* This process, for the duplicate-device check (which only ranks of one
 * process can fail) and the hub's socket name: random, so that no two
 * processes share it, even in different pid namespaces. */
uint64_t process_tag()
{
    static const uint64_t tag = [] {
        std::random_device entropy;
        return (uint64_t)entropy() << 32 ^ (uint64_t)entropy();
    }();
    return tag;
}

std::string process_gone_why(long pid)
{
    return format("its process (pid %ld) exited or closed its connection to the hub", pid);
}

size_t op_bytes(const op &o)
{
    return o.count * type_size(o.type);
}

/* ---- the hub ---- */

struct hub {
    int listen_fd;
    std::string socket_name;
    /* mu guards what follows */
    std::mutex mu;
    std::set<std::string> issued; /* the ids it serves, by their bytes */
    uint64_t tokens = 0;
};

struct request {
    uint32_t kind;
    bytes body;
};

/* One rank's connection to the hub, shared by its reader and its worker;
 * mu guards everything after it. The reader marks the rank gone through
 * c, which the worker clears (under mu) before the rank leaves the
 * clique, so the reader never touches a freed clique. */
struct hub_conn {
    hub *h;
    int fd;
    std::mutex mu;
    std::condition_variable cv;
    std::deque<request> inbox; /* read, not yet run */
    bool ended = false;        /* the reader saw the connection end */
    clique *c = nullptr;       /* while the rank is in it */
    int rank = -1;
    long pid = 0; /* the rank's process */

    hub_conn(hub *owner, int socket_fd) : h(owner), fd(socket_fd) {}
    ~hub_conn()
    {
        close(fd);
    }
};

void read_requests(std::shared_ptr<hub_conn> conn)
{
    for (;;) {
        request q;
        if (recv_message(conn->fd, &q.kind, &q.body, nullptr) != IO_OK) break;
        std::lock_guard<std::mutex> g(conn->mu);
        conn->inbox.push_back(std::move(q));
        conn->cv.notify_all();
    }
    std::lock_guard<std::mutex> g(conn->mu);
    conn->ended = true;
    if (conn->c) mark_gone(conn->c, conn->rank, process_gone_why(conn->pid));
    conn->cv.notify_all();
}

/* The rank leaves its clique: after ncclCommDestroy / ncclCommAbort, or
 * when its process is gone. */
void drop_rank(hub_conn *conn, ncclComm *comm)
{
    {
        std::lock_guard<std::mutex> g(conn->mu);
        conn->c = nullptr;
    }
    cancel_outstanding(comm);
    leave(comm->c, comm->rank, false);
    delete comm;
}

ncclResult_t serve_join(hub_conn *conn, ncclComm **comm, body_reader in)
{
    wire_join j;
    if (!in.get(&j) || *comm || j.nranks < 1 || j.rank < 0 || j.rank >= j.nranks)
        return fail(ncclInternalError, "the hub: a malformed join");
    {
        std::lock_guard<std::mutex> g(conn->h->mu);
        if (!conn->h->issued.count(std::string(j.id.internal, sizeof j.id.internal)))
            return fail(ncclInvalidArgument, "ncclCommInitRank: not an id of process %ld's hub",
                        (long)getpid());
    }
    ncclResult_t r = ncclSuccess;
    clique *c = join(j.id, j.nranks, j.rank, member{j.device, j.process, j.timeout_s}, &r);
    if (!c) return r;
    {
        std::lock_guard<std::mutex> g(conn->mu);
        conn->c = c;
        conn->rank = j.rank;
        conn->pid = (long)j.pid;
        if (conn->ended) mark_gone(c, j.rank, process_gone_why(conn->pid));
    }
    r = await_joined(c, j.rank);
    if (r != ncclSuccess) {
        {
            std::lock_guard<std::mutex> g(conn->mu);
            conn->c = nullptr;
        }
        leave(c, j.rank, true);
        return r;
    }
    *comm = new ncclComm{c, nullptr, j.rank, j.nranks, -1, 0, 0, {}};
    return ncclSuccess;
}

/* One call of a request, its send bytes (if any) pointed into the body. */
bool take_op(ncclComm *comm, body_reader *in, op *o)
{
    wire_op w;
    if (!in->get(&w) || w.kind < OP_ALL_REDUCE || w.kind > OP_RECV) return false;
    *o = op{};
    o->kind = (op_kind)w.kind;
    o->comm = comm;
    o->count = (size_t)w.count;
    o->type = (ncclDataType_t)w.type;
    o->red = (ncclRedOp_t)w.red;
    o->peer = w.peer;
    if (type_size(o->type) == 0 || w.count > MAX_MESSAGE_BYTES) return false;
    if (o->kind != OP_ALL_REDUCE && (o->peer < 0 || o->peer >= comm->nranks)) return false;
    if (o->kind == OP_RECV) return true;
    o->send = in->take(op_bytes(*o));
    return o->send != nullptr;
}

/* A group (or one call) on copies: the receive bytes go to received. */
ncclResult_t serve_run(ncclComm *comm, body_reader in, bytes *received)
{
    uint32_t n = 0;
    if (!in.get(&n) || n > (size_t)(in.end - in.at) / sizeof(wire_op))
        return fail(ncclInternalError, "the hub: a malformed request");
    std::vector<op> ops(n);
    size_t total = 0;
    for (op &o : ops) {
        if (!take_op(comm, &in, &o)) return fail(ncclInternalError, "the hub: a malformed call");
        if (o.kind != OP_SEND) total += op_bytes(o);
    }
    received->resize(total);
    size_t at = 0;
    for (op &o : ops)
        if (o.kind != OP_SEND) {
            o.recv = received->data() + at;
            at += op_bytes(o);
        }
    ncclResult_t r = run_ops(ops);
    if (r != ncclSuccess) received->clear();
    return r;
}

ncclResult_t serve_deposit(ncclComm *comm, body_reader in, uint64_t *token)
{
    op o;
    if (!take_op(comm, &in, &o) || o.kind != OP_SEND)
        return fail(ncclInternalError, "the hub: a malformed send");
    *token = deposit_async(comm, o)->token;
    return ncclSuccess;
}

ncclResult_t serve_wait_send(ncclComm *comm, body_reader in)
{
    uint64_t token = 0;
    if (!in.get(&token)) return fail(ncclInternalError, "the hub: a malformed wait");
    for (const auto &a : comm->outstanding)
        if (a->token == token) {
            std::shared_ptr<async_send> keep = a; /* finish_async drops it from outstanding */
            return finish_async(keep);
        }
    return fail(ncclInternalError, "rank %d: ncclSend: the hub holds no send #%llu", comm->rank,
                (unsigned long long)token);
}

/* Runs one request of the connection's rank; the reply to send back. */
bytes answer(hub_conn *conn, ncclComm **comm, const request &q)
{
    ncclResult_t r = ncclSuccess;
    uint64_t token = 0;
    bytes received;
    body_reader in = reader_of(q.body);
    if (q.kind == REQ_JOIN)
        r = serve_join(conn, comm, in);
    else if (!*comm)
        r = fail(ncclInvalidUsage, "the hub: a call before the rank joined");
    else if (q.kind == REQ_RUN)
        r = serve_run(*comm, in, &received);
    else if (q.kind == REQ_DEPOSIT)
        r = serve_deposit(*comm, in, &token);
    else if (q.kind == REQ_WAIT_SEND)
        r = serve_wait_send(*comm, in);
    else if (q.kind == REQ_LEAVE) {
        drop_rank(conn, *comm);
        *comm = nullptr;
    } else
        r = fail(ncclInternalError, "the hub: request %u", q.kind);
    const char *why = r == ncclSuccess ? "" : ncclGetLastError(nullptr); /* this thread's */
    wire_reply w = {(int32_t)r, (uint32_t)strlen(why), token};
    bytes reply;
    put(&reply, w);
    put_bytes(&reply, why, w.why_bytes);
    put_bytes(&reply, received.data(), received.size());
    return reply;
}

/* The worker: answers the requests in order until the connection ends;
 * a rank still joined then is one whose process died. */
void run_requests(std::shared_ptr<hub_conn> conn)
{
    ncclComm *comm = nullptr; /* the stand-in for the rank, once joined */
    for (;;) {
        request q;
        {
            std::unique_lock<std::mutex> lk(conn->mu);
            conn->cv.wait(lk, [&] { return !conn->inbox.empty() || conn->ended; });
            if (conn->ended) break; /* nobody would read the answers */
            q = std::move(conn->inbox.front());
            conn->inbox.pop_front();
        }
        send_message(conn->fd, REPLY, answer(conn.get(), &comm, q));
    }
    if (comm) drop_rank(conn.get(), comm);
}

/* Starts a connection's worker and reader; on failure the rank sees the
 * connection end. */
void serve_connection(hub *h, int fd)
{
    auto conn = std::make_shared<hub_conn>(h, fd);
    try {
        std::thread(run_requests, conn).detach();
    } catch (const std::system_error &) {
        shutdown(fd, SHUT_RDWR);
        return;
    }
    try {
        std::thread(read_requests, conn).detach();
    } catch (const std::system_error &) {
        shutdown(fd, SHUT_RDWR);
        std::lock_guard<std::mutex> g(conn->mu);
        conn->ended = true;
        conn->cv.notify_all();
    }
}

void accept_connections(hub *h)
{
    for (;;) {
        int fd = accept4(h->listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
        if (fd >= 0)
            serve_connection(h, fd);
        else if (errno != EINTR && errno != ECONNABORTED)
            std::this_thread::sleep_for(std::chrono::milliseconds(10)); /* out of descriptors */
    }
}

/* This process's hub, started by its first id across processes and
 * serving until the process exits; NULL (the error set) if it cannot
 * start. A child forked after it started has none of its threads: it
 * starts its own. */
hub *the_hub(ncclResult_t *r)
{
    static std::mutex mu;
    static hub *running;
    static pid_t running_in;
    std::lock_guard<std::mutex> g(mu);
    if (running && running_in == getpid()) return running;
    std::string name =
        format("cuda_emu_nccl.%ld.%016llx", (long)getpid(), (unsigned long long)process_tag());
    struct sockaddr_un addr;
    socklen_t len = abstract_address(name.c_str(), &addr);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&addr, len) != 0 || listen(fd, 64) != 0) {
        *r = fail(ncclSystemError, "ncclGetUniqueId: the hub's socket @%s: %s", name.c_str(),
                  strerror(errno));
        if (fd >= 0) close(fd);
        return nullptr;
    }
    hub *h = new hub{fd, name, {}, {}, 0};
    try {
        std::thread(accept_connections, h).detach();
    } catch (const std::system_error &e) {
        *r = fail(ncclSystemError, "ncclGetUniqueId: the hub's thread: %s", e.what());
        close(fd);
        delete h;
        return nullptr;
    }
    running = h;
    running_in = getpid();
    return running;
}

/* ---- a rank's side ---- */

/* Sends one request of the rank to its hub and waits for the answer: the
 * hub's verdict (with its text for ncclGetLastError), the token of a
 * deposit, the receive bytes of a run. A connection that ends or goes
 * quiet is lost for good. */
ncclResult_t exchange(net_link *link, int rank, const char *what, uint32_t kind, const bytes &body,
                      uint64_t *token, bytes *received)
{
    if (!link->lost_why.empty())
        return fail(ncclRemoteError, "rank %d: %s: %s", rank, what, link->lost_why.c_str());
    double patience = timeout_s() + ANSWER_MARGIN_S;
    auto deadline = clock_type::now() + std::chrono::duration_cast<clock_type::duration>(
                                            std::chrono::duration<double>(patience));
    uint32_t reply_kind = 0;
    bytes reply;
    io_outcome o = send_message(link->fd, kind, body)
                       ? recv_message(link->fd, &reply_kind, &reply, &deadline)
                       : IO_CLOSED;
    body_reader in = reader_of(reply);
    wire_reply w;
    const unsigned char *why = nullptr;
    if (o == IO_OK && (reply_kind != REPLY || !in.get(&w) || !(why = in.take(w.why_bytes))))
        o = IO_CLOSED;
    if (o == IO_TIMED_OUT) {
        link->lost_why =
            format("the hub in process %ld did not answer in %.0f s", link->hub_pid, patience);
        return fail(ncclInternalError, "rank %d: %s: %s", rank, what, link->lost_why.c_str());
    }
    if (o != IO_OK) {
        link->lost_why = format("the connection to the communicator's hub, in process %ld "
                                "(which created the id), closed: that process exited",
                                link->hub_pid);
        return fail(ncclRemoteError, "rank %d: %s: %s", rank, what, link->lost_why.c_str());
    }
    if (w.result != ncclSuccess)
        return fail((ncclResult_t)w.result, "%.*s", (int)w.why_bytes, (const char *)why);
    if (token) *token = w.token;
    if (received) received->assign(in.at, in.end);
    return ncclSuccess;
}

wire_op wire_of(const op &o)
{
    return wire_op{(int32_t)o.kind, (int32_t)o.type, (int32_t)o.red, (int32_t)o.peer,
                   (uint64_t)o.count};
}

/* A standalone send's wait, deferred on its stream: until the receiver
 * took it (the hub's verdict on the pair). */
ncclResult_t wait_sent(const std::shared_ptr<async_send> &a)
{
    ncclComm_t comm = a->sent.comm;
    bytes body;
    put(&body, a->token);
    ncclResult_t r =
        exchange(comm->link, comm->rank, "ncclSend", REQ_WAIT_SEND, body, nullptr, nullptr);
    auto &v = comm->outstanding;
    for (auto it = v.begin(); it != v.end(); ++it)
        if (*it == a) {
            v.erase(it);
            break;
        }
    return r;
}

} // namespace

bool net_requested()
{
    const char *v = getenv("CUDA_EMU_NCCL_PROCESSES");
    return v && strcmp(v, "1") == 0;
}

bool net_id(const ncclUniqueId &id)
{
    return memcmp(id.internal, NET_MAGIC, sizeof NET_MAGIC) == 0;
}

ncclResult_t net_unique_id(ncclUniqueId *id)
{
    ncclResult_t r = ncclSuccess;
    hub *h = the_hub(&r);
    if (!h) return r;
    net_id_bytes b;
    memset(&b, 0, sizeof b);
    memcpy(b.magic, NET_MAGIC, sizeof NET_MAGIC);
    snprintf(b.socket, sizeof b.socket, "%s", h->socket_name.c_str());
    b.hub_pid = (int64_t)getpid();
    std::lock_guard<std::mutex> g(h->mu);
    b.token = ++h->tokens;
    memset(id, 0, sizeof *id);
    memcpy(id->internal, &b, sizeof b);
    h->issued.insert(std::string(id->internal, sizeof id->internal));
    return ncclSuccess;
}

ncclResult_t net_init_rank(ncclComm_t *comm, int nranks, const ncclUniqueId &id, int rank,
                           int device)
{
    net_id_bytes b;
    memcpy(&b, id.internal, sizeof b);
    b.socket[sizeof b.socket - 1] = 0;
    struct sockaddr_un addr;
    socklen_t len = abstract_address(b.socket, &addr);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, len) != 0) {
        ncclResult_t r = fail(ncclRemoteError,
                              "ncclCommInitRank: rank %d cannot reach the id's hub @%s: %s (has "
                              "process %lld, which created the id, exited?)",
                              rank, b.socket, strerror(errno), (long long)b.hub_pid);
        if (fd >= 0) close(fd);
        return r;
    }
    auto *link = new net_link{fd, (long)b.hub_pid, ""};
    wire_join j = {id, nranks, rank, device, 0, process_tag(), (int64_t)getpid(), timeout_s()};
    bytes body;
    put(&body, j);
    ncclResult_t r = exchange(link, rank, "ncclCommInitRank", REQ_JOIN, body, nullptr, nullptr);
    if (r != ncclSuccess) {
        close(fd);
        delete link;
        return r;
    }
    *comm = new ncclComm{nullptr, link, rank, nranks, device, 0, 0, {}};
    return ncclSuccess;
}

ncclResult_t net_run_ops(const std::vector<op> &ops)
{
    ncclComm_t comm = ops[0].comm;
    bytes body;
    put(&body, (uint32_t)ops.size());
    for (const op &o : ops) {
        put(&body, wire_of(o));
        if (o.kind != OP_RECV) put_bytes(&body, o.send, op_bytes(o));
    }
    const char *what = ops.size() == 1 ? op_name(ops[0].kind) : "ncclGroupEnd";
    bytes received;
    ncclResult_t r = exchange(comm->link, comm->rank, what, REQ_RUN, body, nullptr, &received);
    if (r != ncclSuccess) return r;
    size_t at = 0;
    for (const op &o : ops) {
        if (o.kind == OP_SEND) continue;
        size_t n = op_bytes(o);
        if (received.size() - at < n)
            return fail(ncclInternalError, "rank %d: %s: the hub answered %zu bytes", comm->rank,
                        what, received.size());
        if (n) memcpy(o.recv, received.data() + at, n);
        at += n;
    }
    return ncclSuccess;
}

ncclResult_t net_async_send(const op &o)
{
    ncclComm_t comm = o.comm;
    bytes body;
    put(&body, wire_of(o));
    put_bytes(&body, o.send, op_bytes(o));
    auto a = std::make_shared<async_send>();
    ncclResult_t r =
        exchange(comm->link, comm->rank, "ncclSend", REQ_DEPOSIT, body, &a->token, nullptr);
    if (r != ncclSuccess) return r;
    a->sent = o;
    comm->outstanding.push_back(a);
    cuda_emu::stream_defer(o.stream, [a]() {
        if (a->cancelled) return cudaSuccess;
        return wait_sent(a) == ncclSuccess ? cudaSuccess : cudaErrorLaunchFailure;
    });
    return ncclSuccess;
}

void net_leave(ncclComm_t comm)
{
    for (auto &a : comm->outstanding)
        a->cancelled = true;
    comm->outstanding.clear();
    /* leaving succeeds even where the hub is gone: keep the last error */
    std::string last = ncclGetLastError(nullptr);
    exchange(comm->link, comm->rank, "ncclCommDestroy", REQ_LEAVE, bytes(), nullptr, nullptr);
    fail(ncclSuccess, "%s", last.c_str());
    close(comm->link->fd);
    delete comm->link;
}

} // namespace nccl_emu
