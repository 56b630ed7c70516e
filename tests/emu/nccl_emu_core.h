/*
 * nccl_emu_core.h - what the two halves of the emulated NCCL share (not
 * part of nccl.h's API): nccl_emu.cpp, the calls, their checks and the
 * cliques whose rendezvous run them, and nccl_emu_net.cpp, communicators
 * whose ranks live in several processes (a hub in the id creator's
 * process runs the clique for ranks that reach it over a socket).
 *
 * A clique is touched only under its mutex; an ncclComm only by the
 * thread that uses the rank (as with NCCL, one thread at a time).
 */
#ifndef CUDA_EMU_NCCL_EMU_CORE_H
#define CUDA_EMU_NCCL_EMU_CORE_H

#include "nccl.h"

#include <stdint.h>

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace nccl_emu
{

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

/* Who a rank is, as its clique sees it. */
struct member {
    int device;       /* its emulated device, -1 until it joins */
    uint64_t process; /* its process (0 in a clique of one process) */
    double timeout_s; /* how long it waits for its peers */
};

/* The ranks of one unique id. Everything below mu is guarded by it. */
struct clique {
    std::mutex mu;
    std::condition_variable cv;
    int nranks;
    std::vector<member> members; /* per rank */
    int joined = 0;
    ncclResult_t init_outcome = ncclSuccess;
    std::string init_why;
    int refs = 0;                      /* ranks joined and not yet gone */
    std::vector<bool> left;            /* destroyed, aborted, or its process gone */
    std::vector<std::string> left_why; /* "": ncclCommDestroy / ncclCommAbort */
    bool broken = false;               /* a rank timed out: the ranks are out of step */
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
        : nranks(n), members((size_t)n, member{-1, 0, 0.0}), left((size_t)n, false),
          left_why((size_t)n), posted((size_t)n, nullptr), mailbox((size_t)n * (size_t)n)
    {
    }
};

/* A send outside a group: its data copied at the call (the stream would
 * read it before any later work of the stream could change it), left in
 * the receiver's mailbox, the stream blocked until it is taken. Across
 * processes the sender's side keeps only token and cancelled. */
struct async_send {
    deposit d;
    op sent; /* its send points into data */
    std::vector<unsigned char> data;
    uint64_t token = 0;     /* names it to the hub */
    bool cancelled = false; /* the rank left first: nothing to wait for */
};

struct net_link; /* nccl_emu_net.cpp: a rank's connection to its hub */

} // namespace nccl_emu

struct ncclComm {
    nccl_emu::clique *c;      /* NULL for a rank across processes: its hub holds it */
    nccl_emu::net_link *link; /* a rank across processes: its hub; else NULL */
    int rank;
    int nranks;
    int device;                /* -1 for the hub's stand-in for a remote rank */
    unsigned long collectives; /* issued: the number of the next, in messages */
    uint64_t sends_issued;     /* standalone sends: the token of the last */
    /* standalone sends deposited and not yet known to be taken (see
     * deposit_async); cancelled when the rank leaves */
    std::vector<std::shared_ptr<nccl_emu::async_send>> outstanding;
};

namespace nccl_emu
{

/* ---- nccl_emu.cpp ---- */

/* Sets the calling thread's ncclGetLastError text; returns r. */
ncclResult_t fail(ncclResult_t r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
std::string format(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* CUDA_EMU_NCCL_TIMEOUT_S of this process (default 120). */
double timeout_s();
size_t type_size(ncclDataType_t t);
const char *op_name(op_kind k);

/* Finds or opens the clique of id and enters rank in it; NULL (and *r
 * set) when the rank cannot join. */
clique *join(const ncclUniqueId &id, int nranks, int rank, const member &who, ncclResult_t *r);
/* Waits until all ranks joined; the outcome of the init. */
ncclResult_t await_joined(clique *c, int rank);
/* A rank is gone (joined_only: its init failed); the last frees c. */
void leave(clique *c, int rank, bool joined_only);
/* A rank's process is gone (why says how): waits for it fail at once. */
void mark_gone(clique *c, int rank, const std::string &why);

/* Runs checked calls of clique members: sends deposited, collectives,
 * receives, then the wait for the sends. */
ncclResult_t run_ops(const std::vector<op> &ops);
/* A standalone send: copies o's data into the receiver's mailbox, to be
 * waited for with finish_async; cancel_outstanding drops them all. */
std::shared_ptr<async_send> deposit_async(ncclComm_t comm, const op &o);
ncclResult_t finish_async(const std::shared_ptr<async_send> &a);
void cancel_outstanding(ncclComm_t comm);

/* ---- nccl_emu_net.cpp: communicators across processes ---- */

/* Whether ncclGetUniqueId hands out ids across processes
 * (CUDA_EMU_NCCL_PROCESSES=1). */
bool net_requested();
ncclResult_t net_unique_id(ncclUniqueId *id);
/* Whether id is one that net_unique_id hands out (any process's). */
bool net_id(const ncclUniqueId &id);
ncclResult_t net_init_rank(ncclComm_t *comm, int nranks, const ncclUniqueId &id, int rank,
                           int device);
/* The counterparts of run_ops and of a standalone send for a rank across
 * processes (ops all of one such communicator). */
ncclResult_t net_run_ops(const std::vector<op> &ops);
ncclResult_t net_async_send(const op &o);
/* Leaves the hub's clique and closes the connection (destroy, abort). */
void net_leave(ncclComm_t comm);

} // namespace nccl_emu

#endif
