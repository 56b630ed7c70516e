/*
 * nccl_emu.cpp - the NCCL subset of nccl.h between host threads of one
 * process: communicators (a clique per unique id), the collectives as
 * rendezvous of the ranks' threads, point-to-point sends through per-pair
 * mailboxes, groups, and recording into a capturing stream's graph
 * (cuda_emu::stream_record). nccl.h says what is and is not modeled.
 *
 * Owns the cliques (each freed when its last rank leaves), the table of
 * ids whose ranks are still joining, and per host thread the open group
 * and the last error's text. Never prints or exits: every failure is an
 * ncclResult_t with its reason for ncclGetLastError.
 */
#define CUDA_EMU_IMPLEMENTATION
#include "nccl.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace
{

const char ID_MAGIC[] = "cuda_emu nccl id";

/* CUDA_EMU_NCCL_TIMEOUT_S, once: how long a rank waits for its peers. */
double timeout_s()
{
    static const double seconds = [] {
        const char *env = getenv("CUDA_EMU_NCCL_TIMEOUT_S");
        double t = env ? strtod(env, nullptr) : 0.0;
        return t > 0.0 ? t : 120.0;
    }();
    return seconds;
}

thread_local char last_error[512];

ncclResult_t fail(ncclResult_t r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
ncclResult_t fail(ncclResult_t r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return r;
}

std::string format(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
std::string format(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return buf;
}

size_t type_size(ncclDataType_t t)
{
    switch (t) {
    case ncclInt8:
    case ncclUint8:
        return 1;
    case ncclFloat16:
    case ncclBfloat16:
        return 2;
    case ncclInt32:
    case ncclUint32:
    case ncclFloat32:
        return 4;
    case ncclInt64:
    case ncclUint64:
    case ncclFloat64:
        return 8;
    default:
        return 0;
    }
}

bool reducible(ncclDataType_t t, ncclRedOp_t op)
{
    bool type_ok = t == ncclFloat32 || t == ncclFloat64 || t == ncclInt32 || t == ncclInt64;
    return type_ok && (op == ncclSum || op == ncclProd || op == ncclMax || op == ncclMin);
}

enum op_kind { OP_ALL_REDUCE, OP_SEND, OP_RECV };

/* One call, checked, as it runs (at once, at its group's end, or at each
 * replay of the graph that recorded it). */
struct op {
    op_kind kind;
    ncclComm_t comm;
    const void *send; /* OP_ALL_REDUCE, OP_SEND */
    void *recv;       /* OP_ALL_REDUCE, OP_RECV */
    size_t count;
    ncclDataType_t type;
    ncclRedOp_t red; /* OP_ALL_REDUCE */
    int peer;        /* OP_SEND, OP_RECV */
    cudaStream_t stream;
};

/* A send waiting in its receiver's mailbox until the receiver copies it. */
struct deposit {
    const void *buf;
    size_t count;
    ncclDataType_t type;
    bool taken;
    ncclResult_t outcome; /* the receiver's verdict on the pair */
};

/* The ranks of one unique id. Everything below mu is guarded by it. */
struct clique {
    std::mutex mu;
    std::condition_variable cv;
    int nranks;
    std::vector<int> device; /* per rank, -1 until it joins */
    int joined = 0;
    ncclResult_t init_outcome = ncclSuccess;
    std::string init_why;
    int refs = 0;           /* ranks joined and not yet gone */
    std::vector<bool> left; /* destroyed or aborted */
    bool broken = false;    /* a rank timed out: the ranks are out of step */
    std::string broken_why;
    /* collectives: the k-th of every rank meet in generation k */
    uint64_t generation = 0;
    int arrived = 0;
    std::vector<const op *> posted;     /* per rank, this generation's (NULL: not yet) */
    ncclResult_t outcome = ncclSuccess; /* of the last completed generation */
    std::string why;
    /* point to point: [src * nranks + dst], oldest first */
    std::vector<std::deque<deposit *>> mailbox;

    explicit clique(int n)
        : nranks(n), device((size_t)n, -1), left((size_t)n, false), posted((size_t)n, nullptr),
          mailbox((size_t)n * (size_t)n)
    {
    }
};

/* Ids whose ranks are still joining, by their bytes. */
std::mutex registry_mu;
std::map<std::string, clique *> joining;
std::atomic<unsigned long> ids_issued{0};

/* The calling thread's open group (ncclGroupStart depth) and its calls. */
thread_local int group_depth;
thread_local std::vector<op> group_ops;
thread_local ncclResult_t group_error = ncclSuccess;

} // namespace

struct async_send;

struct ncclComm {
    clique *c;
    int rank;
    int device;
    unsigned long collectives; /* issued: the number of the next, in messages */
    /* standalone sends deposited and not yet known to be taken (see
     * issue_async_send); cancelled when the rank leaves */
    std::vector<std::shared_ptr<async_send>> outstanding;
};

/* A send outside a group: its data copied at the call (the stream would
 * read it before any later work of the stream could change it), left in
 * the receiver's mailbox, the stream blocked until it is taken. */
struct async_send {
    deposit d;
    int peer;
    std::vector<unsigned char> data;
    bool cancelled = false; /* the rank left first: nothing to wait for */
};

namespace
{

const char *op_name(op_kind k)
{
    return k == OP_ALL_REDUCE ? "ncclAllReduce" : k == OP_SEND ? "ncclSend" : "ncclRecv";
}

/* Waits (c->mu held through lk) until ready(). Fails at once when the
 * communicator is broken or gone() names a rank that has left and is
 * needed; after the timeout it breaks the communicator (its ranks are out
 * of step for good) and fails. */
template <class Ready, class Gone>
ncclResult_t await(clique *c, std::unique_lock<std::mutex> &lk, int me, const char *what,
                   Ready ready, Gone gone)
{
    auto deadline = std::chrono::steady_clock::now() +
                    std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                        std::chrono::duration<double>(timeout_s()));
    while (!ready()) {
        if (c->broken)
            return fail(ncclInternalError, "rank %d: %s: the communicator is broken (%s)", me, what,
                        c->broken_why.c_str());
        int g = gone();
        if (g >= 0)
            return fail(ncclRemoteError,
                        "rank %d: %s: rank %d has left the communicator (on a device this "
                        "would hang)",
                        me, what, g);
        if (c->cv.wait_until(lk, deadline) == std::cv_status::timeout && !ready()) {
            c->broken = true;
            c->broken_why = format("rank %d waited %.0f s in %s", me, timeout_s(), what);
            c->cv.notify_all();
            return fail(ncclInternalError,
                        "rank %d: %s: its peers did not come in %.0f s (on a device this hangs)",
                        me, what, timeout_s());
        }
    }
    return ncclSuccess;
}

/* ---- the checks NCCL makes at the call ---- */

ncclResult_t check_buffer(const ncclComm *comm, const void *buf, size_t bytes, const char *what,
                          const char *name)
{
    if (bytes == 0) return ncclSuccess;
    int dev = cuda_emu::device_of(buf, bytes);
    if (dev == comm->device) return ncclSuccess;
    if (dev < 0)
        return fail(ncclInvalidArgument, "rank %d: %s: %s %p (%zu bytes) is not device memory",
                    comm->rank, what, name, buf, bytes);
    return fail(ncclInvalidArgument,
                "rank %d: %s: %s %p is device %d's memory, the communicator's device is %d",
                comm->rank, what, name, buf, dev, comm->device);
}

ncclResult_t check_op(const op &o)
{
    const char *what = op_name(o.kind);
    if (!o.comm) return fail(ncclInvalidArgument, "%s: no communicator", what);
    const ncclComm *comm = o.comm;
    size_t size = type_size(o.type);
    if (size == 0) return fail(ncclInvalidArgument, "%s: data type %d", what, (int)o.type);
    if (o.kind == OP_ALL_REDUCE && !reducible(o.type, o.red))
        return fail(ncclInvalidArgument, "%s: reduction %d of type %d is not emulated", what,
                    (int)o.red, (int)o.type);
    if (o.kind != OP_ALL_REDUCE && (o.peer < 0 || o.peer >= comm->c->nranks))
        return fail(ncclInvalidArgument, "rank %d: %s: peer %d of %d ranks", comm->rank, what,
                    o.peer, comm->c->nranks);
    int stream_dev = cuda_emu::stream_device(o.stream);
    if (stream_dev != comm->device)
        return fail(ncclUnhandledCudaError,
                    "rank %d: %s: a stream of device %d for a communicator on device %d",
                    comm->rank, what, stream_dev, comm->device);
    ncclResult_t r = ncclSuccess;
    if (o.kind != OP_RECV) r = check_buffer(comm, o.send, o.count * size, what, "sendbuff");
    if (r == ncclSuccess && o.kind != OP_SEND)
        r = check_buffer(comm, o.recv, o.count * size, what, "recvbuff");
    return r;
}

/* ---- collectives ---- */

template <class T> T combine(T a, T b, ncclRedOp_t red)
{
    switch (red) {
    case ncclProd:
        return a * b;
    case ncclMax:
        return a < b ? b : a;
    case ncclMin:
        return b < a ? b : a;
    default:
        return a + b;
    }
}

/* Every rank's recv := the ranks' sends reduced in rank order. */
template <class T> void reduce_in_rank_order(clique *c, size_t n, ncclRedOp_t red)
{
    const T *first = (const T *)c->posted[0]->send;
    std::vector<T> acc(first, first + n);
    for (int r = 1; r < c->nranks; r++) {
        const T *x = (const T *)c->posted[r]->send;
        for (size_t i = 0; i < n; i++)
            acc[i] = combine(acc[i], x[i], red);
    }
    for (int r = 0; r < c->nranks; r++)
        if (n) memcpy(c->posted[r]->recv, acc.data(), n * sizeof(T));
}

/* The last rank to arrive: checks that all posted the same call, runs it. */
void complete_collective(clique *c, unsigned long number)
{
    const op &a = *c->posted[0];
    c->outcome = ncclSuccess;
    c->why.clear();
    for (int r = 1; r < c->nranks; r++) {
        const op &b = *c->posted[r];
        if (b.kind != a.kind || b.count != a.count || b.type != a.type || b.red != a.red) {
            c->outcome = ncclInvalidUsage;
            c->why = format("collective #%lu: rank 0 calls %s (count %zu, type %d, op %d), rank "
                            "%d %s (count %zu, type %d, op %d)",
                            number, op_name(a.kind), a.count, (int)a.type, (int)a.red, r,
                            op_name(b.kind), b.count, (int)b.type, (int)b.red);
            return;
        }
    }
    switch (a.type) {
    case ncclFloat32:
        reduce_in_rank_order<float>(c, a.count, a.red);
        break;
    case ncclFloat64:
        reduce_in_rank_order<double>(c, a.count, a.red);
        break;
    case ncclInt32:
        reduce_in_rank_order<int32_t>(c, a.count, a.red);
        break;
    default:
        reduce_in_rank_order<int64_t>(c, a.count, a.red);
        break;
    }
}

ncclResult_t run_collective(const op &o)
{
    clique *c = o.comm->c;
    int me = o.comm->rank;
    unsigned long number = o.comm->collectives++;
    std::unique_lock<std::mutex> lk(c->mu);
    if (c->broken)
        return fail(ncclInternalError, "rank %d: %s: the communicator is broken (%s)", me,
                    op_name(o.kind), c->broken_why.c_str());
    c->posted[(size_t)me] = &o;
    uint64_t gen = c->generation;
    if (++c->arrived == c->nranks) {
        complete_collective(c, number);
        c->arrived = 0;
        for (auto &p : c->posted)
            p = nullptr;
        c->generation++;
        c->cv.notify_all();
    } else {
        ncclResult_t r = await(
            c, lk, me, op_name(o.kind), [&] { return c->generation != gen; },
            [&] {
                for (int r = 0; r < c->nranks; r++)
                    if (!c->posted[(size_t)r] && c->left[(size_t)r]) return r;
                return -1;
            });
        if (r != ncclSuccess) { /* withdraw: the others may still be waiting */
            c->posted[(size_t)me] = nullptr;
            c->arrived--;
            return r;
        }
    }
    /* the next generation needs this rank again: the outcome is still this one's */
    if (c->outcome != ncclSuccess) return fail(c->outcome, "rank %d: %s", me, c->why.c_str());
    return ncclSuccess;
}

/* ---- point to point ---- */

void post_send(const op &o, deposit *d)
{
    clique *c = o.comm->c;
    *d = deposit{o.send, o.count, o.type, false, ncclSuccess};
    std::lock_guard<std::mutex> g(c->mu);
    c->mailbox[(size_t)o.comm->rank * (size_t)c->nranks + (size_t)o.peer].push_back(d);
    c->cv.notify_all();
}

ncclResult_t run_recv(const op &o)
{
    clique *c = o.comm->c;
    int me = o.comm->rank;
    std::unique_lock<std::mutex> lk(c->mu);
    auto &box = c->mailbox[(size_t)o.peer * (size_t)c->nranks + (size_t)me];
    ncclResult_t r = await(
        c, lk, me, "ncclRecv", [&] { return !box.empty(); },
        [&] { return c->left[(size_t)o.peer] ? o.peer : -1; });
    if (r != ncclSuccess) return r;
    deposit *d = box.front();
    box.pop_front();
    d->taken = true;
    c->cv.notify_all();
    if (d->count != o.count || d->type != o.type) {
        d->outcome = ncclInvalidUsage;
        return fail(ncclInvalidUsage,
                    "rank %d: ncclRecv of %zu elements of type %d from rank %d, which sends %zu "
                    "of type %d",
                    me, o.count, (int)o.type, o.peer, d->count, (int)d->type);
    }
    if (o.count) memcpy(o.recv, d->buf, o.count * type_size(o.type));
    return ncclSuccess;
}

/* Waits until the receiver took d; on failure takes d back out of the
 * mailbox if it is still there (it lives in the sender's frame). */
ncclResult_t finish_send(const op &o, deposit *d, bool wait)
{
    clique *c = o.comm->c;
    int me = o.comm->rank;
    std::unique_lock<std::mutex> lk(c->mu);
    ncclResult_t r = ncclSuccess;
    if (wait)
        r = await(
            c, lk, me, "ncclSend", [&] { return d->taken; },
            [&] { return c->left[(size_t)o.peer] ? o.peer : -1; });
    if (!d->taken) {
        auto &box = c->mailbox[(size_t)me * (size_t)c->nranks + (size_t)o.peer];
        for (auto it = box.begin(); it != box.end(); ++it)
            if (*it == d) {
                box.erase(it);
                break;
            }
        return r != ncclSuccess ? r : ncclInternalError;
    }
    if (r == ncclSuccess && d->outcome != ncclSuccess)
        r = fail(d->outcome,
                 "rank %d: ncclSend of %zu elements of type %d to rank %d: the "
                 "receiver expects another count or type",
                 me, o.count, (int)o.type, o.peer);
    return r;
}

/* Runs checked calls in the order that keeps a group deadlock-free: sends
 * deposited, collectives, receives, then the wait for the sends. */
ncclResult_t run_ops(const std::vector<op> &ops)
{
    std::vector<deposit> deposits(ops.size());
    for (size_t i = 0; i < ops.size(); i++)
        if (ops[i].kind == OP_SEND) post_send(ops[i], &deposits[i]);
    ncclResult_t r = ncclSuccess;
    for (size_t i = 0; i < ops.size() && r == ncclSuccess; i++)
        if (ops[i].kind == OP_ALL_REDUCE) r = run_collective(ops[i]);
    for (size_t i = 0; i < ops.size() && r == ncclSuccess; i++)
        if (ops[i].kind == OP_RECV) r = run_recv(ops[i]);
    for (size_t i = 0; i < ops.size(); i++) {
        if (ops[i].kind != OP_SEND) continue;
        ncclResult_t s = finish_send(ops[i], &deposits[i], r == ncclSuccess);
        if (r == ncclSuccess) r = s;
    }
    return r;
}

/* A send outside a group, not captured: as on a device, the call returns
 * at once and the stream waits (cuda_emu::stream_defer) until the
 * receiver has taken the data, so a rank may send, return, and let its
 * peer receive later without either blocking the other's thread. */
ncclResult_t issue_async_send(const op &o)
{
    ncclComm_t comm = o.comm;
    auto a = std::make_shared<async_send>();
    a->peer = o.peer;
    size_t bytes = o.count * type_size(o.type);
    a->data.resize(bytes ? bytes : 1);
    if (bytes) memcpy(a->data.data(), o.send, bytes);
    op copy = o;
    copy.send = a->data.data();
    post_send(copy, &a->d);
    comm->outstanding.push_back(a);
    cuda_emu::stream_defer(o.stream, [comm, a, copy]() {
        if (a->cancelled) return cudaSuccess;
        ncclResult_t r = finish_send(copy, &a->d, true);
        auto &v = comm->outstanding;
        for (auto it = v.begin(); it != v.end(); ++it)
            if (*it == a) {
                v.erase(it);
                break;
            }
        return r == ncclSuccess ? cudaSuccess : cudaErrorLaunchFailure;
    });
    return ncclSuccess;
}

/* The rank leaves: its sends nobody took come out of the mailboxes. */
void cancel_outstanding(ncclComm_t comm)
{
    clique *c = comm->c;
    std::lock_guard<std::mutex> g(c->mu);
    for (auto &a : comm->outstanding) {
        auto &box = c->mailbox[(size_t)comm->rank * (size_t)c->nranks + (size_t)a->peer];
        for (auto it = box.begin(); it != box.end(); ++it)
            if (*it == &a->d) {
                box.erase(it);
                break;
            }
        a->cancelled = true;
    }
    comm->outstanding.clear();
}

/* Runs ops now, or records them into the graph their stream captures. */
ncclResult_t issue(const std::vector<op> &ops)
{
    if (ops.empty()) return ncclSuccess;
    if (ops.size() == 1 && ops[0].kind == OP_SEND && !cuda_emu::stream_capturing(ops[0].stream))
        return issue_async_send(ops[0]);
    cudaStream_t s = ops[0].stream;
    bool capturing = cuda_emu::stream_capturing(s);
    for (const op &o : ops)
        if (cuda_emu::stream_capturing(o.stream) != capturing || (capturing && o.stream != s))
            return fail(ncclInvalidUsage, "a group mixes a capturing stream with other streams");
    if (!capturing) return run_ops(ops);
    cuda_emu::stream_record(
        s, [ops]() { return run_ops(ops) == ncclSuccess ? cudaSuccess : cudaErrorLaunchFailure; });
    return ncclSuccess;
}

/* A call: checked at once; queued inside a group, else issued. */
ncclResult_t submit(const op &o)
{
    ncclResult_t r = check_op(o);
    if (group_depth > 0) {
        if (r == ncclSuccess)
            group_ops.push_back(o);
        else if (group_error == ncclSuccess)
            group_error = r;
        return r;
    }
    if (r != ncclSuccess) return r;
    return issue(std::vector<op>{o});
}

/* A rank is gone: its clique forgets it, and is freed with the last one. */
void leave(clique *c, int rank, bool joined_only)
{
    bool last;
    {
        std::lock_guard<std::mutex> g(c->mu);
        if (!joined_only) c->left[(size_t)rank] = true;
        last = --c->refs == 0;
        c->cv.notify_all();
    }
    if (!last) return;
    {
        std::lock_guard<std::mutex> g(registry_mu);
        for (auto it = joining.begin(); it != joining.end(); ++it)
            if (it->second == c) {
                joining.erase(it);
                break;
            }
    }
    delete c;
}

/* After the last rank joined (c->mu held): two ranks on one device fail
 * the init on all of them, as NCCL's duplicate-GPU check does. */
void check_devices(clique *c)
{
    for (int a = 0; a < c->nranks; a++)
        for (int b = a + 1; b < c->nranks; b++)
            if (c->device[(size_t)a] == c->device[(size_t)b]) {
                c->init_outcome = ncclInvalidUsage;
                c->init_why = format("ranks %d and %d are both on device %d (duplicate GPU)", a, b,
                                     c->device[(size_t)a]);
                return;
            }
}

/* Finds or opens the clique of the id and joins it as rank; NULL (and
 * *r set) when the rank cannot join. */
clique *join(const ncclUniqueId &id, int nranks, int rank, int dev, ncclResult_t *r)
{
    std::string key(id.internal, sizeof id.internal);
    std::lock_guard<std::mutex> g(registry_mu);
    auto it = joining.find(key);
    clique *c = it != joining.end() ? it->second : nullptr;
    if (!c) {
        c = new clique(nranks);
        joining[key] = c;
    }
    std::lock_guard<std::mutex> cg(c->mu);
    if (c->nranks != nranks) {
        *r = fail(ncclInvalidArgument, "rank %d joins a communicator of %d ranks with nranks %d",
                  rank, c->nranks, nranks);
        return nullptr;
    }
    if (c->device[(size_t)rank] != -1) {
        *r = fail(ncclInvalidUsage, "rank %d joined the communicator twice", rank);
        return nullptr;
    }
    c->device[(size_t)rank] = dev;
    c->refs++;
    if (++c->joined == nranks) {
        joining.erase(key); /* an id serves one communicator */
        check_devices(c);
        c->cv.notify_all();
    }
    return c;
}

} // namespace

extern "C" {

ncclResult_t ncclGetVersion(int *version)
{
    if (!version) return fail(ncclInvalidArgument, "ncclGetVersion: version is NULL");
    *version = NCCL_VERSION_CODE;
    return ncclSuccess;
}

ncclResult_t ncclGetUniqueId(ncclUniqueId *uniqueId)
{
    if (!uniqueId) return fail(ncclInvalidArgument, "ncclGetUniqueId: uniqueId is NULL");
    memset(uniqueId, 0, sizeof(*uniqueId));
    memcpy(uniqueId->internal, ID_MAGIC, sizeof ID_MAGIC);
    snprintf(uniqueId->internal + sizeof ID_MAGIC, sizeof(uniqueId->internal) - sizeof ID_MAGIC,
             "%ld:%lu", (long)getpid(), ++ids_issued);
    return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId commId, int rank)
{
    if (!comm) return fail(ncclInvalidArgument, "ncclCommInitRank: comm is NULL");
    *comm = nullptr;
    if (nranks < 1 || rank < 0 || rank >= nranks)
        return fail(ncclInvalidArgument, "ncclCommInitRank: rank %d of %d", rank, nranks);
    if (memcmp(commId.internal, ID_MAGIC, sizeof ID_MAGIC) != 0)
        return fail(ncclInvalidArgument, "ncclCommInitRank: the id is not one of ncclGetUniqueId");
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess)
        return fail(ncclUnhandledCudaError, "ncclCommInitRank: no current device");
    ncclResult_t r = ncclSuccess;
    clique *c = join(commId, nranks, rank, dev, &r);
    if (!c) return r;
    {
        std::unique_lock<std::mutex> lk(c->mu);
        r = await(
            c, lk, rank, "ncclCommInitRank", [&] { return c->joined == c->nranks; },
            [] { return -1; });
        if (r == ncclSuccess && c->init_outcome != ncclSuccess)
            r = fail(c->init_outcome, "ncclCommInitRank: %s", c->init_why.c_str());
    }
    if (r != ncclSuccess) {
        leave(c, rank, true);
        return r;
    }
    *comm = new ncclComm{c, rank, dev, 0, {}};
    return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm)
{
    if (!comm) return fail(ncclInvalidArgument, "ncclCommDestroy: comm is NULL");
    cancel_outstanding(comm);
    leave(comm->c, comm->rank, false);
    delete comm;
    return ncclSuccess;
}

/* Only a standalone send can be in flight here, and destroy cancels it. */
ncclResult_t ncclCommAbort(ncclComm_t comm)
{
    if (!comm) return fail(ncclInvalidArgument, "ncclCommAbort: comm is NULL");
    return ncclCommDestroy(comm);
}

const char *ncclGetErrorString(ncclResult_t result)
{
    switch (result) {
    case ncclSuccess:
        return "no error";
    case ncclUnhandledCudaError:
        return "unhandled cuda error";
    case ncclSystemError:
        return "unhandled system error";
    case ncclInternalError:
        return "internal error";
    case ncclInvalidArgument:
        return "invalid argument";
    case ncclInvalidUsage:
        return "invalid usage";
    case ncclRemoteError:
        return "remote process exited or there was a network error";
    case ncclInProgress:
        return "NCCL operation in progress";
    default:
        return "unknown result code";
    }
}

const char *ncclGetLastError(ncclComm_t comm)
{
    (void)comm;
    return last_error;
}

ncclResult_t ncclAllReduce(const void *sendbuff, void *recvbuff, size_t count,
                           ncclDataType_t datatype, ncclRedOp_t op_, ncclComm_t comm,
                           cudaStream_t stream)
{
    return submit(op{OP_ALL_REDUCE, comm, sendbuff, recvbuff, count, datatype, op_, -1, stream});
}

ncclResult_t ncclSend(const void *sendbuff, size_t count, ncclDataType_t datatype, int peer,
                      ncclComm_t comm, cudaStream_t stream)
{
    return submit(op{OP_SEND, comm, sendbuff, nullptr, count, datatype, ncclSum, peer, stream});
}

ncclResult_t ncclRecv(void *recvbuff, size_t count, ncclDataType_t datatype, int peer,
                      ncclComm_t comm, cudaStream_t stream)
{
    return submit(op{OP_RECV, comm, nullptr, recvbuff, count, datatype, ncclSum, peer, stream});
}

ncclResult_t ncclGroupStart(void)
{
    if (group_depth++ == 0) {
        group_ops.clear();
        group_error = ncclSuccess;
    }
    return ncclSuccess;
}

/* The outermost end issues the group's calls, unless one failed its
 * checks: then none runs and that failure is returned. */
ncclResult_t ncclGroupEnd(void)
{
    if (group_depth == 0) return fail(ncclInvalidUsage, "ncclGroupEnd without ncclGroupStart");
    if (--group_depth > 0) return ncclSuccess;
    std::vector<op> ops;
    ops.swap(group_ops);
    if (group_error != ncclSuccess) return group_error;
    return issue(ops);
}
}
