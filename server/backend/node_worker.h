/*
 * node_worker.h - the control channel of a tensor-parallel group spread
 * over several processes ("nodes"): node 0 mirrors every step to the
 * other nodes, and on each other node a loop replays it on that node's
 * local ranks.
 *
 * Node 0 serves HTTP and runs the engine; its backend_tp group calls the
 * struct tp_remote made here before each forward() and copy_blocks().
 * Every other node connects one control socket to node 0, loads its own
 * backend_tp group (local ranks only, no remote) and runs
 * node_worker_run() until node 0 says STOP or goes away. The step data
 * travels as step_wire.h messages; the ranks' collectives travel through
 * comm_tcp on a port of their own (NODE_COMM_PORT_OFFSET). There are no
 * acknowledgements: the collectives of the step keep the nodes in
 * lockstep, and a node that fails or dies breaks them, so every node's
 * step fails instead of hanging.
 *
 * The handshake (node_control_accept / node_control_connect) checks the
 * protocol version and the group's shape (node count, tensor-parallel
 * size, block size, the caller's fingerprint) and that node ranks are
 * unique; a mismatch or a node that never arrives fails on every node
 * with a message naming it.
 */
#ifndef ES_NODE_WORKER_H
#define ES_NODE_WORKER_H

#include <stdint.h>

#include "backend.h"
#include "backend_tp.h"

/* The ranks' comm_tcp group listens on the control port + this. */
#define NODE_COMM_PORT_OFFSET 1

/* What every node of one group must agree on. */
struct node_shape {
    int nnodes;           /* processes in the group; node 0 serves HTTP */
    int node_rank;        /* this process, 0 .. nnodes - 1 */
    int tp_size;          /* tensor-parallel ranks over all nodes */
    int block_size;       /* KV tokens per block (the wire trims block tables by it) */
    uint64_t fingerprint; /* the caller's hash of anything else that must agree
                             (model, context limits); compared as is */
};

/* Node 0: listens on addr:port and admits nnodes - 1 nodes within
 * timeout_s. fds_out[0 .. nnodes) gets node r's socket at r (fds_out[0] =
 * -1). A connection that is not an evalserver node is dropped; a node
 * whose hello disagrees with self, or a node missing at the deadline,
 * fails the whole group, and every node that joined is told why. */
enum es_status node_control_accept(const struct node_shape *self, const char *addr, int port,
                                   double timeout_s, int *fds_out, struct es_err *err);

/* Node r > 0: connects to node 0 (retrying until timeout_s), sends its
 * hello and waits for node 0's verdict on the whole group. */
enum es_status node_control_connect(const struct node_shape *self, const char *addr, int port,
                                    double timeout_s, int *fd_out, struct es_err *err);

/* Node 0: the tp_remote that writes each command to fds[1 .. nnodes).
 * Owns those sockets from this call on, on failure too. Its close()
 * sends STOP to every node and closes them. */
enum es_status node_remote_create(int nnodes, const int *fds, int block_size,
                                  struct tp_remote **out, struct es_err *err);

/* Node r > 0: reads commands from control_fd and runs them on
 * local_group (forward with a scratch result, copy_blocks) until STOP:
 * ES_OK. EOF before STOP, a corrupt message or a failed call return
 * that error. Leaves control_fd open and local_group loaded. */
enum es_status node_worker_run(struct backend *local_group, int control_fd, struct es_err *err);

#endif
