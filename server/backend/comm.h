/*
 * comm.h - collectives between the ranks of one tensor-parallel group, on
 * host memory.
 *
 * The CPU backend does its all-reduces through this interface; the CUDA
 * backend uses it only to bootstrap NCCL (rank 0 broadcasts the
 * ncclUniqueId) and then moves its data with NCCL on the device.
 *
 * Two implementations:
 *   comm_local.c  ranks are threads of one process; shared memory and a
 *                 barrier. Deterministic: the sum is taken in rank order,
 *                 so every rank gets bit-identical results.
 *   comm_tcp.c    ranks are threads of several processes (multi-node); a
 *                 star through rank 0 over TCP, also summing in rank order.
 *
 * Every rank must call the same collectives in the same order with the
 * same sizes (the group runs one step's forward in lockstep). A failure on
 * one rank (a peer gone, a short read) is reported to that rank as
 * ES_EIO; the group is then broken and is torn down by its owner.
 */
#ifndef ES_COMM_H
#define ES_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

struct comm;

struct comm_ops {
    /* buf[0..n) := the sum over ranks of each rank's buf[0..n). */
    enum es_status (*all_reduce_sum)(struct comm *c, float *buf, size_t n, struct es_err *err);
    /* recv[r * n .. (r + 1) * n) := rank r's send[0..n), on every rank. */
    enum es_status (*all_gather)(struct comm *c, const float *send, float *recv, size_t n,
                                 struct es_err *err);
    /* buf[0..bytes) := root's buf, on every rank. */
    enum es_status (*broadcast)(struct comm *c, void *buf, size_t bytes, int root,
                                struct es_err *err);
    /* Every rank waits until all ranks arrived. */
    enum es_status (*barrier)(struct comm *c, struct es_err *err);
    /* Frees this rank's handle (each rank destroys its own). */
    void (*destroy)(struct comm *c);
    /* Optional (NULL: the ranks cannot lose each other). Called by a rank
     * that failed outside a collective: breaks the group, so that the
     * ranks waiting for it in a collective fail instead of waiting
     * forever, and so do this rank's later calls. */
    void (*break_group)(struct comm *c);
};

struct comm {
    const struct comm_ops *ops;
    int rank, size;
    void *impl;
};

/* comm_local: below this many floats every rank sums the whole vector
 * itself (one barrier); from it on each rank sums a slice and the others
 * copy it (two barriers). Both sum in rank order. */
#define COMM_LOCAL_SPLIT_FLOATS 16384

/* An in-process group of `size` ranks: out[0..size) get one handle each,
 * to be used by `size` different threads. */
enum es_status comm_local_create(int size, struct comm **out, struct es_err *err);

/* One rank of a group spread over processes: rank 0 listens on
 * master_addr:port and accepts size - 1 connections; other ranks connect
 * (retrying until timeout_s). Handshake: protocol version, group size and
 * rank; a mismatch or a missing rank fails with a clear message. */
enum es_status comm_tcp_create(int rank, int size, const char *master_addr, int port,
                               double timeout_s, struct comm **out, struct es_err *err);

#endif
