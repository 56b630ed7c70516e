/*
 * nccl_emu.cpp - the NCCL subset of nccl.h: communicators (a clique per
 * unique id), the collectives as rendezvous of the ranks' threads,
 * point-to-point sends through per-pair mailboxes, groups, and recording
 * into a capturing stream's graph (cuda_emu::stream_record). nccl.h says
 * what is and is not modeled. A rank across processes
 * (nccl_emu_net.cpp) is checked and recorded here like any other; its
 * calls then run on the same cliques, in the hub of the id's creator,
 * whose threads stand in for the remote ranks.
 *
 * Owns the cliques (each freed when its last rank leaves), the table of
 * ids whose ranks are still joining, and per host thread the open group
 * and the last error's text. Never prints or exits: every failure is an
 * ncclResult_t with its reason for ncclGetLastError.
 */
#define CUDA_EMU_IMPLEMENTATION
#include "nccl_emu_core.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <map>

namespace nccl_emu
{
namespace
{

const char ID_MAGIC[] = "cuda_emu nccl id";

thread_local char last_error[512];

/* Ids whose ranks are still joining, by their bytes. Never destroyed: a
 * hub thread may still leave a clique while the process exits. */
std::mutex registry_mu;
std::map<std::string, clique *> &joining = *new std::map<std::string, clique *>;
std::atomic<unsigned long> ids_issued{0};

/* The calling thread's open group (ncclGroupStart depth) and its calls. */
thread_local int group_depth;
thread_local std::vector<op> group_ops;
thread_local ncclResult_t group_error = ncclSuccess;

} // namespace

double timeout_s()
{
    static const double seconds = [] {
        const char *env = getenv("CUDA_EMU_NCCL_TIMEOUT_S");
        double t = env ? strtod(env, nullptr) : 0.0;
        return t > 0.0 ? t : 120.0;
    }();
    return seconds;
}

ncclResult_t fail(ncclResult_t r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return r;
}

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

const char *op_name(op_kind k)
{
    return k == OP_ALL_REDUCE ? "ncclAllReduce" : k == OP_SEND ? "ncclSend" : "ncclRecv";
}

namespace
{

bool reducible(ncclDataType_t t, ncclRedOp_t op)
{
    bool type_ok = t == ncclFloat32 || t == ncclFloat64 || t == ncclInt32 || t == ncclInt64;
    return type_ok && (op == ncclSum || op == ncclProd || op == ncclMax || op == ncclMin);
}

/* Why rank g is no longer in c (c->mu held). */
const char *left_reason(const clique *c, int g)
{
    const std::string &why = c->left_why[(size_t)g];
    return why.empty() ? "on a device this would hang" : why.c_str();
}

/* Waits (c->mu held through lk) until ready(). Fails at once when the
 * communicator is broken, when the waiting rank's own process is gone (a
 * hub thread waiting for a dead rank), or when gone() names a rank that
 * has left and is needed; after the rank's timeout it breaks the
 * communicator (its ranks are out of step for good) and fails. */
template <class Ready, class Gone>
ncclResult_t await(clique *c, std::unique_lock<std::mutex> &lk, int me, const char *what,
                   Ready ready, Gone gone)
{
    double patience = c->members[(size_t)me].timeout_s;
    auto deadline = std::chrono::steady_clock::now() +
                    std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                        std::chrono::duration<double>(patience));
    while (!ready()) {
        if (c->broken)
            return fail(ncclInternalError, "rank %d: %s: the communicator is broken (%s)", me, what,
                        c->broken_why.c_str());
        if (c->left[(size_t)me])
            return fail(ncclRemoteError, "rank %d: %s: the rank has left (%s)", me, what,
                        left_reason(c, me));
        int g = gone();
        if (g >= 0)
            return fail(ncclRemoteError, "rank %d: %s: rank %d has left the communicator (%s)", me,
                        what, g, left_reason(c, g));
        if (c->cv.wait_until(lk, deadline) == std::cv_status::timeout && !ready()) {
            c->broken = true;
            c->broken_why = format("rank %d waited %.0f s in %s", me, patience, what);
            c->cv.notify_all();
            return fail(ncclInternalError,
                        "rank %d: %s: its peers did not come in %.0f s (on a device this hangs)",
                        me, what, patience);
        }
    }
    return ncclSuccess;
}

/* The first rank of c that has left, or -1 (c->mu held). */
int first_left(const clique *c)
{
    for (int r = 0; r < c->nranks; r++)
        if (c->left[(size_t)r]) return r;
    return -1;
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
    if (o.kind != OP_ALL_REDUCE && (o.peer < 0 || o.peer >= comm->nranks))
        return fail(ncclInvalidArgument, "rank %d: %s: peer %d of %d ranks", comm->rank, what,
                    o.peer, comm->nranks);
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
        const T *x = (const T *)c->posted[(size_t)r]->send;
        for (size_t i = 0; i < n; i++)
            acc[i] = combine(acc[i], x[i], red);
    }
    for (int r = 0; r < c->nranks; r++)
        if (n) memcpy(c->posted[(size_t)r]->recv, acc.data(), n * sizeof(T));
}

/* The last rank to arrive: checks that all posted the same call, runs it. */
void complete_collective(clique *c, unsigned long number)
{
    const op &a = *c->posted[0];
    c->outcome = ncclSuccess;
    c->why.clear();
    for (int r = 1; r < c->nranks; r++) {
        const op &b = *c->posted[(size_t)r];
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
        if (r != ncclSuccess) { /* withdraw: the others may be waiting for a rank that left */
            c->posted[(size_t)me] = nullptr;
            c->arrived--;
            c->cv.notify_all();
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

/* Takes d out of the sender's mailbox to the peer if it is still there
 * (c->mu held). */
void withdraw_deposit(clique *c, int me, int peer, const deposit *d)
{
    auto &box = c->mailbox[(size_t)me * (size_t)c->nranks + (size_t)peer];
    for (auto it = box.begin(); it != box.end(); ++it)
        if (*it == d) {
            box.erase(it);
            return;
        }
}

/* Waits until the receiver took d; on failure takes d back out of the
 * mailbox (it lives with the sender). */
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
        withdraw_deposit(c, me, o.peer, d);
        return r != ncclSuccess ? r : ncclInternalError;
    }
    if (r == ncclSuccess && d->outcome != ncclSuccess)
        r = fail(d->outcome,
                 "rank %d: ncclSend of %zu elements of type %d to rank %d: the "
                 "receiver expects another count or type",
                 me, o.count, (int)o.type, o.peer);
    return r;
}

} // namespace

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

std::shared_ptr<async_send> deposit_async(ncclComm_t comm, const op &o)
{
    auto a = std::make_shared<async_send>();
    size_t bytes = o.count * type_size(o.type);
    a->data.resize(bytes ? bytes : 1);
    if (bytes) memcpy(a->data.data(), o.send, bytes);
    a->sent = o;
    a->sent.send = a->data.data();
    a->token = ++comm->sends_issued;
    post_send(a->sent, &a->d);
    comm->outstanding.push_back(a);
    return a;
}

ncclResult_t finish_async(const std::shared_ptr<async_send> &a)
{
    ncclResult_t r = finish_send(a->sent, &a->d, true);
    auto &v = a->sent.comm->outstanding;
    for (auto it = v.begin(); it != v.end(); ++it)
        if (*it == a) {
            v.erase(it);
            break;
        }
    return r;
}

void cancel_outstanding(ncclComm_t comm)
{
    clique *c = comm->c;
    std::lock_guard<std::mutex> g(c->mu);
    for (auto &a : comm->outstanding) {
        withdraw_deposit(c, comm->rank, a->sent.peer, &a->d);
        a->cancelled = true;
    }
    comm->outstanding.clear();
}

namespace
{

/* A send outside a group, not captured: as on a device, the call returns
 * at once and the stream waits (cuda_emu::stream_defer) until the
 * receiver has taken the data, so a rank may send, return, and let its
 * peer receive later without either blocking the other's thread. */
ncclResult_t issue_async_send(const op &o)
{
    std::shared_ptr<async_send> a = deposit_async(o.comm, o);
    cuda_emu::stream_defer(o.stream, [a]() {
        if (a->cancelled) return cudaSuccess;
        return finish_async(a) == ncclSuccess ? cudaSuccess : cudaErrorLaunchFailure;
    });
    return ncclSuccess;
}

/* Runs ops of one group now: here, or through the hub of a communicator
 * across processes. */
ncclResult_t run_now(const std::vector<op> &ops)
{
    return ops[0].comm->link ? net_run_ops(ops) : run_ops(ops);
}

/* Runs ops now, or records them into the graph their stream captures. */
ncclResult_t issue(const std::vector<op> &ops)
{
    if (ops.empty()) return ncclSuccess;
    for (const op &o : ops)
        if (o.comm != ops[0].comm && (o.comm->link || ops[0].comm->link))
            return fail(ncclInvalidUsage, "a group mixes a communicator across processes with "
                                          "another communicator (not emulated)");
    if (ops.size() == 1 && ops[0].kind == OP_SEND && !cuda_emu::stream_capturing(ops[0].stream))
        return ops[0].comm->link ? net_async_send(ops[0]) : issue_async_send(ops[0]);
    cudaStream_t s = ops[0].stream;
    bool capturing = cuda_emu::stream_capturing(s);
    for (const op &o : ops)
        if (cuda_emu::stream_capturing(o.stream) != capturing || (capturing && o.stream != s))
            return fail(ncclInvalidUsage, "a group mixes a capturing stream with other streams");
    if (!capturing) return run_now(ops);
    cuda_emu::stream_record(
        s, [ops]() { return run_now(ops) == ncclSuccess ? cudaSuccess : cudaErrorLaunchFailure; });
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

/* After the last rank joined (c->mu held): two ranks on one device of one
 * process fail the init on all of them, as NCCL's duplicate-GPU check
 * does. */
void check_devices(clique *c)
{
    for (int a = 0; a < c->nranks; a++)
        for (int b = a + 1; b < c->nranks; b++) {
            const member &ma = c->members[(size_t)a], &mb = c->members[(size_t)b];
            if (ma.process == mb.process && ma.device == mb.device) {
                c->init_outcome = ncclInvalidUsage;
                c->init_why = format("ranks %d and %d are both on device %d (duplicate GPU)", a, b,
                                     ma.device);
                return;
            }
        }
}

} // namespace

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

void mark_gone(clique *c, int rank, const std::string &why)
{
    std::lock_guard<std::mutex> g(c->mu);
    if (!c->left[(size_t)rank]) {
        c->left[(size_t)rank] = true;
        c->left_why[(size_t)rank] = why;
    }
    c->cv.notify_all();
}

clique *join(const ncclUniqueId &id, int nranks, int rank, const member &who, ncclResult_t *r)
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
    if (c->members[(size_t)rank].device != -1) {
        *r = fail(ncclInvalidUsage, "rank %d joined the communicator twice", rank);
        return nullptr;
    }
    c->members[(size_t)rank] = who;
    c->refs++;
    if (++c->joined == nranks) {
        joining.erase(key); /* an id serves one communicator */
        check_devices(c);
        c->cv.notify_all();
    }
    return c;
}

ncclResult_t await_joined(clique *c, int rank)
{
    std::unique_lock<std::mutex> lk(c->mu);
    /* a rank leaves before all joined only when its process is gone */
    ncclResult_t r = await(
        c, lk, rank, "ncclCommInitRank", [&] { return c->joined == c->nranks; },
        [&] { return first_left(c); });
    if (r == ncclSuccess && c->init_outcome != ncclSuccess)
        r = fail(c->init_outcome, "ncclCommInitRank: %s", c->init_why.c_str());
    return r;
}

} // namespace nccl_emu

using namespace nccl_emu;

extern "C" {

ncclResult_t ncclGetVersion(int *version)
{
    if (!version) return fail(ncclInvalidArgument, "ncclGetVersion: version is NULL");
    const char *v = getenv("CUDA_EMU_NCCL_VERSION"); /* a process linking another NCCL */
    *version = v && v[0] ? atoi(v) : NCCL_VERSION_CODE;
    return ncclSuccess;
}

ncclResult_t ncclGetUniqueId(ncclUniqueId *uniqueId)
{
    if (!uniqueId) return fail(ncclInvalidArgument, "ncclGetUniqueId: uniqueId is NULL");
    if (net_requested()) return net_unique_id(uniqueId);
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
    bool across_processes = net_id(commId);
    if (!across_processes && memcmp(commId.internal, ID_MAGIC, sizeof ID_MAGIC) != 0)
        return fail(ncclInvalidArgument, "ncclCommInitRank: the id is not one of ncclGetUniqueId");
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess)
        return fail(ncclUnhandledCudaError, "ncclCommInitRank: no current device");
    if (across_processes) return net_init_rank(comm, nranks, commId, rank, dev);
    ncclResult_t r = ncclSuccess;
    clique *c = join(commId, nranks, rank, member{dev, 0, timeout_s()}, &r);
    if (!c) return r;
    r = await_joined(c, rank);
    if (r != ncclSuccess) {
        leave(c, rank, true);
        return r;
    }
    *comm = new ncclComm{c, nullptr, rank, nranks, dev, 0, 0, {}};
    return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm)
{
    if (!comm) return fail(ncclInvalidArgument, "ncclCommDestroy: comm is NULL");
    if (comm->link) {
        net_leave(comm);
    } else {
        cancel_outstanding(comm);
        leave(comm->c, comm->rank, false);
    }
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
